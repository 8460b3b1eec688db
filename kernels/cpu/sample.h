// Token sampling from one row of logits, the CPU twin of kernels/cuda's
// SampleRows (and what the engine's SequenceSampler runs on the host).
//
// The rule (vLLM / OpenAI semantics): penalties adjust the logits; with
// temperature 0 the first maximum wins; otherwise the candidates are the
// logits in descending order (ties: lower token id first), cut to the first
// top_k, then to the shortest prefix whose probability (softmax at the
// temperature, over the top_k) reaches top_p, then to those with probability
// >= min_p times the most likely one. The token is then drawn from the kept
// set by inverse CDF over the kept tokens in token-id order with one uniform
// u in [0, 1): the same u picks the same token on any backend, whatever
// sort the backend uses to find the kept set, except where u falls within
// rounding of a cumulative boundary (the GPU sums float32 weights, this
// float64 ones).
#pragma once

#include <cstdint>
#include <vector>

namespace gdnserve::cpu {

struct DrawParams {
  float temperature = 1.0f;  // 0: greedy
  int top_k = 0;             // <= 0 or >= n: no cut
  float top_p = 1.0f;
  float min_p = 0.0f;
};

// Repetition penalty over `repeated` (distinct tokens: logits > 0 divided by
// it, others multiplied), then frequency and presence penalties over the
// distinct output tokens `counted` with their counts. Ids >= n are ignored.
void ApplyPenalties(float* x, int64_t n, float repetition, const int32_t* repeated, int64_t num_repeated,
                    float presence, float frequency, const int32_t* counted, const int32_t* counts,
                    int64_t num_counted);

// Scratch a caller may keep between draws (no allocation in steady state).
struct DrawScratch {
  std::vector<int32_t> order;
  std::vector<double> prob;
  std::vector<uint8_t> kept;
};

// The token drawn from logits x [n] (after penalties) with uniform u.
int32_t DrawToken(const float* x, int64_t n, const DrawParams& p, double u, DrawScratch* scratch);

// log softmax of x at index (float64 sums).
double LogSoftmaxAt(const float* x, int64_t n, int64_t index);

}  // namespace gdnserve::cpu
