// Token sampling from one row of logits: penalties, temperature, top-k,
// top-p, min-p, a per-sequence seeded generator, and logprobs. Parameters and
// their meaning follow vLLM / the OpenAI API.
#pragma once

#include <cstdint>
#include <random>
#include <unordered_map>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "kernels/cpu/sample.h"

namespace gdnserve {

struct SamplingParams {
  float temperature = 1.0f;         // 0: greedy
  int top_k = 0;                    // 0 or -1: all tokens
  float top_p = 1.0f;               // (0, 1]
  float min_p = 0.0f;               // [0, 1]
  float repetition_penalty = 1.0f;  // > 0; prompt and output tokens
  float presence_penalty = 0.0f;    // [-2, 2]; output tokens
  float frequency_penalty = 0.0f;   // [-2, 2]; output tokens
  int logprobs = 0;                 // top-n alternatives to report, 0..20
  bool has_seed = false;
  uint64_t seed = 0;

  // InvalidArgument naming the first out-of-range field.
  absl::Status Validate(int vocab_size) const;
  bool greedy() const { return temperature == 0.0f; }
};

struct TokenLogprob {
  int32_t token;
  float logprob;
};

struct SampleResult {
  int32_t token = -1;
  float logprob = 0.0f;             // of the chosen token, under the raw model distribution
  std::vector<TokenLogprob> top;    // top-n alternatives (params.logprobs)
};

// Per-sequence sampling state: its generator and the token counts penalties
// need. Seeded sequences draw the same tokens whatever else is in the batch,
// and on either backend (kernels/cpu/sample.h: one uniform per draw picks the
// token from the kept set in token-id order).
class SequenceSampler {
 public:
  SequenceSampler(const SamplingParams& params, absl::Span<const int32_t> prompt);
  // Picks the next token from logits [vocab] and records it as output.
  SampleResult Sample(absl::Span<const float> logits);
  const SamplingParams& params() const { return params_; }

  // For a draw made elsewhere (a device backend): the uniform it uses (call
  // once per draw, unless greedy), the penalty inputs, then Record(token).
  double NextUniform();
  bool has_penalties() const;
  absl::Span<const int32_t> repeated() const { return seen_; }  // repetition penalty tokens
  absl::Span<const int32_t> counted() const { return counted_; }  // distinct output tokens
  absl::Span<const int32_t> counts() const { return counts_; }    // their counts
  void Record(int32_t token);

 private:
  void Remember(int32_t token);

  SamplingParams params_;
  std::mt19937_64 rng_;
  std::vector<int32_t> counted_, counts_;
  std::unordered_map<int32_t, int32_t> count_index_;  // token -> index in counted_
  std::vector<int32_t> seen_;  // distinct prompt + output tokens (repetition penalty)
  std::vector<uint8_t> seen_mask_;
  std::vector<float> work_;
  cpu::DrawScratch scratch_;
};

// log softmax of row at index; used for logprobs and perplexity.
double LogSoftmaxAt(absl::Span<const float> logits, int32_t index);

}  // namespace gdnserve
