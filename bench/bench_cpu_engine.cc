// CPU engine benchmark: prefill tokens/s, decode tokens/s at several batch
// sizes and state bytes per sequence, next to this machine's ceilings measured
// in the same run (sgemm FLOP/s and copy bandwidth), so the numbers say how
// far from the hardware they are.
//
//   bench_cpu_engine --model DIR [--prefill 512] [--decode-steps 32] [--batches 1,16]
//                    [--json FILE]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "nlohmann/json.hpp"
#include "engine/cpu_backend.h"
#include "engine/weights.h"
#include "kernels/cpu/linear.h"

namespace {

using gdnserve::bench::Clock;
using gdnserve::bench::Since;

// Best of several sgemm runs at a size where BLAS is at its peak.
double MeasureGemmFlops() {
  const int n = 1024;
  std::vector<float> a(n * n, 0.5f), b(n * n, 0.25f), c(n * n);
  double best = 0;
  for (int i = 0; i < 5; ++i) {
    const auto t = Clock::now();
    gdnserve::cpu::Linear(a.data(), n, n, n, b.data(), n, nullptr, c.data(), n);
    best = std::max(best, 2.0 * n * n * n / Since(t));
  }
  return best;
}

// Copy bandwidth (bytes read + written per second) on a buffer far above cache.
double MeasureCopyBandwidth() {
  const size_t n = 64 << 20;  // 256 MB of floats each
  std::vector<float> a(n, 1.0f), b(n, 0.0f);
  double best = 0;
  for (int i = 0; i < 5; ++i) {
    const auto t = Clock::now();
    std::memcpy(b.data(), a.data(), n * sizeof(float));
    best = std::max(best, 2.0 * n * sizeof(float) / Since(t));
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  std::string model, json_path;
  int prefill = 512, steps = 32;
  std::vector<int> batches = {1, 16};
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string { return i + 1 < argc ? argv[++i] : ""; };
    if (a == "--model") model = next();
    else if (a == "--prefill") prefill = std::stoi(next());
    else if (a == "--decode-steps") steps = std::stoi(next());
    else if (a == "--json") json_path = next();
    else if (a == "--batches") batches = gdnserve::bench::ParseInts(next());
    else {
      std::printf("usage: bench_cpu_engine --model DIR [--prefill N] [--decode-steps N] [--batches 1,16] [--json FILE]\n");
      return a == "--help" ? 0 : 1;
    }
  }
  if (model.empty()) {
    std::fprintf(stderr, "bench_cpu_engine: --model is required\n");
    return 1;
  }
  auto weights = gdnserve::LoadModelWeights(model);
  if (!weights.ok()) {
    std::fprintf(stderr, "bench_cpu_engine: %s\n", std::string(weights.status().message()).c_str());
    return 1;
  }
  const gdnserve::ModelConfig cfg = (*weights)->config;
  const int64_t params = (*weights)->num_parameters();
  const int64_t embed_params = static_cast<int64_t>(cfg.vocab_size) * cfg.hidden_size;
  const int max_batch = *std::max_element(batches.begin(), batches.end());
  auto backend = gdnserve::CreateCpuBackend(std::move(*weights), {.num_slots = std::max(max_batch, 1)});
  gdnserve::Backend& be = **backend;
  const int64_t state_bytes = be.state_pool().layout().bytes_per_slot();

  std::printf("measuring ceilings...\n");
  const double flops = MeasureGemmFlops();
  const double bw = MeasureCopyBandwidth();
  std::printf("model %s: %.1fM parameters (%.1fM without embeddings), state %lld bytes per sequence\n",
              model.c_str(), params / 1e6, (params - embed_params) / 1e6, static_cast<long long>(state_bytes));
  std::printf("ceilings: sgemm %.1f GFLOP/s, copy %.1f GB/s\n", flops / 1e9, bw / 1e9);
  nlohmann::json report = {{"model", model},
                           {"parameters", params},
                           {"state_bytes_per_sequence", state_bytes},
                           {"sgemm_flops", flops},
                           {"copy_bytes_per_s", bw},
                           {"decode", nlohmann::json::array()}};

  std::mt19937 rng(1234);
  std::uniform_int_distribution<int32_t> tok(0, cfg.vocab_size - 1);
  gdnserve::ForwardOutput out;

  // Prefill: one sequence, logits of the last token only. Matmul FLOPs per
  // token: 2 per weight touched (the lm_head once per sequence, not per token).
  {
    std::vector<int32_t> ids(prefill);
    for (auto& t : ids) t = tok(rng);
    double best = 1e30;
    for (int rep = 0; rep < 3; ++rep) {
      const int slot = *be.state_pool().Acquire();
      gdnserve::SeqPiece p{slot, ids, false};
      const auto t = Clock::now();
      (void)be.Forward({&p, 1}, &out);
      best = std::min(best, Since(t));
      (void)be.state_pool().Release(slot);
    }
    const double layer_params = params - embed_params - (cfg.tie_word_embeddings ? 0 : embed_params);
    const double floor_s = 2.0 * layer_params * prefill / flops;
    std::printf("prefill %d tokens: %.3f s, %.1f tokens/s (linear-layer FLOP floor %.3f s: %.2fx)\n", prefill, best,
                prefill / best, floor_s, best / floor_s);
    report["prefill"] = {{"tokens", prefill}, {"seconds", best}, {"floor_seconds", floor_s}};
  }
  // Decode: B sequences, one token each per step. Memory floor per step: all
  // weights read once + each state read and written once.
  for (int B : batches) {
    std::vector<int> slots(B);
    std::vector<int32_t> toks(B);
    std::vector<gdnserve::SeqPiece> batch(B);
    for (int i = 0; i < B; ++i) {
      slots[i] = *be.state_pool().Acquire();
      toks[i] = tok(rng);
    }
    for (int i = 0; i < B; ++i) batch[i] = {slots[i], {&toks[i], 1}, false};
    (void)be.Forward(batch, &out);  // warm-up
    // Per-step times; the minimum is what the code can do, the median what a
    // (possibly shared) machine gave.
    std::vector<double> times;
    for (int s = 0; s < steps; ++s) {
      const auto t = Clock::now();
      (void)be.Forward(batch, &out);
      times.push_back(Since(t));
    }
    std::sort(times.begin(), times.end());
    const double step_s = times.front(), median_s = times[times.size() / 2];
    const double floor_s = (params * 4.0 + 2.0 * B * state_bytes) / bw;
    std::printf("decode batch %d: %.2f ms/step (median %.2f), %.1f tokens/s (memory floor %.2f ms: %.2fx)\n", B,
                step_s * 1e3, median_s * 1e3, B / step_s, floor_s * 1e3, step_s / floor_s);
    report["decode"].push_back(
        {{"batch", B}, {"step_seconds", step_s}, {"median_step_seconds", median_s}, {"floor_seconds", floor_s}});
    for (int s : slots) (void)be.state_pool().Release(s);
  }
  if (!json_path.empty()) std::ofstream(json_path) << report.dump(2) << "\n";
  return 0;
}
