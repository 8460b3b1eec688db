// CUDA engine benchmark: the GPU's two ceilings measured in the same run
// (device copy bandwidth, bf16 GEMM rate), then on a model (a directory, or a
// random one of a named shape built in memory):
//   - decode step time at several batch sizes next to the memory floor
//     (weight bytes read once + each sequence's state read and written once);
//   - prefill tokens/s at several prompt lengths, one sequence and several;
//   - GPU memory per sequence after a short and a long context.
//
//   bench_cuda_engine [--model DIR | --shape gdn2_1.3b] [--f32] [--batches 1,4,8,16,64,256]
//                     [--prefill 2048,8192] [--prefill-seqs 1,8] [--chunk 8192] [--steps 30] [--json FILE]
//                     [--only decode|prefill] [--prefill-kernels recurrent,chunked,chunked_wy]
//                     [--profile-step]
//
// --profile-step: after each decode batch is timed (with the default
// configuration: CUDA graphs on, the GEMV for small batches), one more step runs between
// cudaProfilerStart and cudaProfilerStop, so that `ncu --profile-from-start off`
// (bench/gpu/profile_decode.sh) times exactly one step's kernels; with the
// prefill runs, one forward of --chunk tokens of one sequence after each
// kernel's warm-up (bench/gpu/profile_decode.sh prefill).
#include <cublas_v2.h>
#include <cuda_profiler_api.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "bench/bench_util.h"
#include "bench/random_weights.h"
#include "engine/cuda_backend.h"
#include "engine/weights.h"
#include "nlohmann/json.hpp"

namespace {

using gdnserve::bench::Clock;
using gdnserve::bench::ParseInts;
using gdnserve::bench::Since;

#define CHECK_CUDA(x)                                                                 \
  do {                                                                                \
    cudaError_t e_ = (x);                                                             \
    if (e_ != cudaSuccess) {                                                          \
      std::fprintf(stderr, "%s: %s\n", #x, cudaGetErrorString(e_));                   \
      std::exit(1);                                                                   \
    }                                                                                 \
  } while (0)

// Seconds of the fastest of 10 runs of `enqueue` (after 2 warm-ups), by CUDA events.
template <typename F>
double BestSeconds(F enqueue) {
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  float best = 1e30f;
  for (int i = 0; i < 12; ++i) {
    cudaEventRecord(e0);
    enqueue();
    cudaEventRecord(e1);
    cudaEventSynchronize(e1);
    float ms;
    cudaEventElapsedTime(&ms, e0, e1);
    if (i >= 2) best = std::min(best, ms);
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  return best * 1e-3;
}

// Device-to-device copy of 1 GiB: bytes read + written per second, best of 10.
double MeasureCopyBandwidth() {
  const size_t bytes = size_t{1} << 30;
  void *a, *b;
  CHECK_CUDA(cudaMalloc(&a, bytes));
  CHECK_CUDA(cudaMalloc(&b, bytes));
  CHECK_CUDA(cudaMemset(a, 1, bytes));
  const double s = BestSeconds([&] { CHECK_CUDA(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice)); });
  cudaFree(a);
  cudaFree(b);
  return 2.0 * bytes / s;
}

// 8192^3 bf16 GEMM with float32 accumulation on random data, best of 10.
double MeasureBf16GemmFlops() {
  const int n = 8192;
  std::vector<uint16_t> h(static_cast<size_t>(n) * n);
  std::mt19937 rng(7);
  for (auto& x : h) x = static_cast<uint16_t>(0x3c00 + (rng() & 0x3ff)) ^ ((rng() & 1) << 15);  // +-[0.0078, 0.0156)
  void *a, *b, *c;
  CHECK_CUDA(cudaMalloc(&a, h.size() * 2));
  CHECK_CUDA(cudaMalloc(&b, h.size() * 2));
  CHECK_CUDA(cudaMalloc(&c, h.size() * 2));
  CHECK_CUDA(cudaMemcpy(a, h.data(), h.size() * 2, cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(b, h.data(), h.size() * 2, cudaMemcpyHostToDevice));
  cublasHandle_t handle;
  if (cublasCreate(&handle) != CUBLAS_STATUS_SUCCESS) {
    std::fprintf(stderr, "bench_cuda_engine: cublasCreate failed\n");
    std::exit(1);
  }
  const float alpha = 1, beta = 0;
  const double s = BestSeconds([&] {
    if (cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, n, n, n, &alpha, a, CUDA_R_16BF, n, b, CUDA_R_16BF, n, &beta,
                     c, CUDA_R_16BF, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT) != CUBLAS_STATUS_SUCCESS) {
      std::fprintf(stderr, "bench_cuda_engine: the ceiling GEMM failed\n");
      std::exit(1);
    }
  });
  cublasDestroy(handle);
  cudaFree(a);
  cudaFree(b);
  cudaFree(c);
  return 2.0 * n * n * n / s;
}

size_t DeviceUsed() {
  size_t free_b = 0, total = 0;
  cudaMemGetInfo(&free_b, &total);
  return total - free_b;
}

const char* kUsage =
    "usage: bench_cuda_engine [--model DIR | --shape gdn2_1.3b] [--f32] [--batches 1,4,8,16,64,256]\n"
    "                         [--prefill 2048,8192,32768,65536] [--prefill-seqs 1,8] [--chunk 8192]\n"
    "                         [--steps 30] [--json FILE] [--only decode|prefill]\n"
    "                         [--prefill-kernels recurrent,chunked,chunked_wy] [--profile-step]\n"
    "Times the CUDA backend against this GPU's measured copy bandwidth and bf16 GEMM rate.\n";

}  // namespace

int main(int argc, char** argv) {
  std::string model, shape = "gdn2_1.3b", json_path, only, prefill_kernels = "recurrent,chunked,chunked_wy";
  bool f32 = false, profile_step = false;
  std::vector<int> batches = {1, 4, 8, 16, 64, 256}, prefill = {2048, 8192, 32768, 65536}, prefill_seqs = {1, 8};
  int chunk = 8192, steps = 30;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string { return i + 1 < argc ? argv[++i] : ""; };
    if (a == "--model") model = next();
    else if (a == "--shape") shape = next();
    else if (a == "--f32") f32 = true;
    else if (a == "--batches") batches = ParseInts(next());
    else if (a == "--prefill") prefill = ParseInts(next());
    else if (a == "--prefill-seqs") prefill_seqs = ParseInts(next());
    else if (a == "--chunk") chunk = std::stoi(next());
    else if (a == "--steps") steps = std::stoi(next());
    else if (a == "--json") json_path = next();
    else if (a == "--only") only = next();
    else if (a == "--prefill-kernels") prefill_kernels = next();
    else if (a == "--profile-step") profile_step = true;
    else {
      std::fputs(kUsage, a == "--help" ? stdout : stderr);
      return a == "--help" ? 0 : 1;
    }
  }
  if (!only.empty() && only != "decode" && only != "prefill") {
    std::fprintf(stderr, "bench_cuda_engine: --only takes decode or prefill, not %s\n", only.c_str());
    return 1;
  }
  if (only == "prefill") batches = {1};
  int ndev = 0;
  if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev == 0) {
    std::fprintf(stderr, "bench_cuda_engine: no CUDA device\n");
    return 1;
  }
  cudaDeviceProp prop;
  cudaGetDeviceProperties(&prop, 0);
  std::printf("device: %s, %d SMs, %.1f GiB\n", prop.name, prop.multiProcessorCount, prop.totalGlobalMem / 1073741824.0);
  const double bw = MeasureCopyBandwidth();
  const double flops = MeasureBf16GemmFlops();
  std::printf("ceilings: device copy %.0f GB/s (read + write), bf16 GEMM %.0f TFLOP/s\n", bw / 1e9, flops / 1e12);

  std::shared_ptr<const gdnserve::ModelWeights> weights;
  if (!model.empty()) {
    auto w = gdnserve::LoadModelWeights(model, [](int done, int total) {
      std::fprintf(stderr, "\rloading %d/%d layers", done, total);
    });
    std::fprintf(stderr, "\n");
    if (!w.ok()) {
      std::fprintf(stderr, "bench_cuda_engine: %s\n", std::string(w.status().message()).c_str());
      return 1;
    }
    weights = std::move(*w);
  } else if (shape == "gdn2_1.3b") {
    auto cfg = gdnserve::ParseModelConfig(
        R"({"architecture":"gdn2","vocab_size":32000,"hidden_size":2304,"num_layers":18,"num_heads":16,)"
        R"("head_dim":128,"intermediate_size":6208,"tie_word_embeddings":false})");
    if (!cfg.ok()) {
      std::fprintf(stderr, "bench_cuda_engine: %s\n", std::string(cfg.status().message()).c_str());
      return 1;
    }
    const auto t = Clock::now();
    weights = gdnserve::bench::RandomModelWeights(*cfg, 1234);
    std::printf("random %s weights built in %.1f s\n", shape.c_str(), Since(t));
    model = "random " + shape;
  } else {
    std::fprintf(stderr, "bench_cuda_engine: unknown --shape %s (gdn2_1.3b)\n", shape.c_str());
    return 1;
  }
  const gdnserve::ModelConfig cfg = weights->config;
  const int64_t params = weights->num_parameters();
  const int64_t embed_params = static_cast<int64_t>(cfg.vocab_size) * cfg.hidden_size;
  const int64_t wbytes_per = f32 ? 4 : 2;
  // Read per decode step: every matrix but the embedding table (B rows of it),
  // the lm_head in full (the tied table counts once, as the lm_head).
  const int64_t step_weight_bytes = (params - (cfg.tie_word_embeddings ? 0 : embed_params)) * wbytes_per;

  const int max_batch = std::max(*std::max_element(batches.begin(), batches.end()),
                                 *std::max_element(prefill_seqs.begin(), prefill_seqs.end()));
  const size_t used0 = DeviceUsed();
  nlohmann::json report = {{"device", prop.name},
                           {"model", model},
                           {"parameters", params},
                           {"copy_bytes_per_s", bw},
                           {"bf16_gemm_flops", flops},
                           {"decode", nlohmann::json::array()},
                           {"prefill", nlohmann::json::array()}};
  std::mt19937 rng(1234);
  std::uniform_int_distribution<int32_t> tok(3, cfg.vocab_size - 1);
  gdnserve::ForwardOutput out;
  auto fail = [&](const absl::Status& s) {
    std::fprintf(stderr, "bench_cuda_engine: %s\n", std::string(s.message()).c_str());
    std::exit(1);
  };

  // Decode steps as the server runs them: the forward (logits stay on the
  // device) and the tokens drawn on the device (temperature 1), without and
  // then with CUDA graphs (the default), then (the GEMV's batches, bf16) with
  // graphs and cuBLAS for every GEMM, the default without programmatic
  // dependent launch, and (the GEMV's batches) the default with the conv prep
  // and the up projection as two launches, and with SwiGLU as a kernel of its
  // own after the gate_up GEMV.
  std::unique_ptr<gdnserve::Backend> backend;
  int64_t state_bytes = 0;
  gdnserve::SamplingParams sampling;  // temperature 1, no cuts
  struct DecodeRun {
    bool graphs, gemv, pdl, fuse_prep, fuse_swiglu;
  };
  for (const DecodeRun& dr :
       {DecodeRun{false, true, true, true, true}, DecodeRun{true, true, true, true, true},
        DecodeRun{true, false, true, true, true}, DecodeRun{true, true, false, true, true},
        DecodeRun{true, true, true, false, true}, DecodeRun{true, true, true, true, false}}) {
    if (only == "prefill") break;
    const bool graphs = dr.graphs;
    std::vector<int> run_batches;
    for (int B : batches) {
      // cuBLAS only, two launches: the batches the default takes the GEMV for.
      const bool gemv_batch = !f32 && B <= gdnserve::kCudaDecodeGemvRows;
      if ((dr.gemv && dr.fuse_prep && dr.fuse_swiglu) || gemv_batch) run_batches.push_back(B);
    }
    if (run_batches.empty()) continue;
    backend.reset();
    auto created = gdnserve::CreateCudaBackend(weights, {.num_slots = max_batch,
                                                         .bf16 = !f32,
                                                         .cuda_graphs = graphs,
                                                         .decode_gemv = dr.gemv,
                                                         .fuse_decode_prep = dr.fuse_prep,
                                                         .fuse_decode_swiglu = dr.fuse_swiglu,
                                                         .programmatic_launch = dr.pdl});
    if (!created.ok()) fail(created.status());
    backend = std::move(*created);
    gdnserve::Backend& be = *backend;
    state_bytes = be.state_pool().layout().bytes_per_slot();
    std::printf(
        "\nmodel %s (%s, CUDA graphs %s%s%s%s%s): %.2fB parameters, %.1f MB state per sequence, %d slots; "
        "%.2f GB on the GPU\n",
        model.c_str(), be.name().c_str(), graphs ? "on" : "off", dr.gemv ? "" : ", cuBLAS for every GEMM",
        dr.pdl ? "" : ", no programmatic launch", dr.fuse_prep ? "" : ", conv prep and up projection apart",
        dr.fuse_swiglu ? "" : ", SwiGLU after the GEMV", params / 1e9, state_bytes / 1e6, max_batch,
        (DeviceUsed() - used0) / 1e9);
    report["backend"] = be.name();
    report["state_bytes_per_sequence"] = state_bytes;
    std::printf("%6s %12s %12s %8s %14s\n", "batch", "step ms", "floor ms", "x floor", "tokens/s");
    for (int B : run_batches) {
      std::vector<int> slots(B);
      std::vector<std::vector<int32_t>> prompts(B);
      std::vector<gdnserve::SeqPiece> batch(B);
      for (int i = 0; i < B; ++i) {
        slots[i] = *be.state_pool().Acquire();
        prompts[i].resize(16);
        for (auto& t : prompts[i]) t = tok(rng);
        batch[i] = {slots[i], prompts[i], false};
      }
      if (absl::Status s = be.Forward(batch, &out); !s.ok()) fail(s);
      std::vector<int32_t> next(B);
      std::vector<gdnserve::DeviceDraw> draws(B);
      std::vector<gdnserve::SampleResult> drawn(B);
      for (int i = 0; i < B; ++i) {
        next[i] = tok(rng);
        batch[i] = {slots[i], absl::MakeConstSpan(&next[i], 1), false, /*host_logits=*/false};
        draws[i].row = i;
        draws[i].params = &sampling;
        draws[i].uniform = (i + 0.5) / B;
      }
      auto step = [&]() {
        if (absl::Status s = be.Forward(batch, &out); !s.ok()) fail(s);
        if (absl::Status s = be.Draw(draws, absl::MakeSpan(drawn)); !s.ok()) fail(s);
      };
      for (int w = 0; w < 3; ++w) step();
      std::vector<double> times;
      for (int s = 0; s < steps; ++s) {
        const auto t = Clock::now();
        step();
        times.push_back(Since(t));
      }
      const bool default_config = graphs && dr.gemv && dr.pdl && dr.fuse_prep && dr.fuse_swiglu;
      if (profile_step && default_config) {
        CHECK_CUDA(cudaDeviceSynchronize());
        CHECK_CUDA(cudaProfilerStart());
        step();
        CHECK_CUDA(cudaDeviceSynchronize());
        CHECK_CUDA(cudaProfilerStop());
      }
      std::sort(times.begin(), times.end());
      const double med = times[times.size() / 2];
      const double floor_s = (step_weight_bytes + 2.0 * B * state_bytes) / bw;
      std::printf("%6d %12.3f %12.3f %8.2f %14.0f\n", B, med * 1e3, floor_s * 1e3, med / floor_s, B / med);
      const char* config = !graphs          ? "graphs_off"
                           : !dr.gemv        ? "cublas_only"
                           : !dr.pdl         ? "no_pdl"
                           : !dr.fuse_prep   ? "prep_apart"
                           : !dr.fuse_swiglu ? "swiglu_apart"
                                             : "default";
      report["decode"].push_back({{"batch", B}, {"config", config}, {"cuda_graphs", graphs},
                                  {"gemv", dr.gemv && !f32 && B <= gdnserve::kCudaDecodeGemvRows},
                                  {"programmatic_launch", dr.pdl}, {"fused_prep", dr.fuse_prep},
                                  {"fused_swiglu", dr.fuse_swiglu},
                                  {"sampling", "device"}, {"step_seconds", med},
                                  {"floor_seconds", floor_s}, {"min_step_seconds", times.front()}});
      for (int s : slots) (void)be.state_pool().Release(s);
    }
  }
  // Prefill: S sequences of n tokens each, fed `chunk` tokens per forward
  // (split evenly over the sequences, as the scheduler does), with the
  // token-by-token recurrence kernel and with the chunkwise one.
  const double layer_flops_per_token =
      2.0 * (params - embed_params - (cfg.tie_word_embeddings ? 0 : embed_params));
  // The JSON names are those of earlier reports (bench/gpu_results/).
  struct PrefillRun {
    gdnserve::PrefillKernel kernel;
    const char* name;
    const char* label;
  };
  for (const PrefillRun& run : {PrefillRun{gdnserve::PrefillKernel::kRecurrent, "recurrent", "token-by-token"},
                                PrefillRun{gdnserve::PrefillKernel::kChunkSimt, "chunked", "one-pass chunkwise"},
                                PrefillRun{gdnserve::PrefillKernel::kChunk, "chunked_wy", "tensor-core chunkwise"}}) {
    if (only == "decode" || prefill.empty()) break;
    const char* name = run.name;
    if (!absl::StrContains("," + prefill_kernels + ",", absl::StrCat(",", name, ","))) continue;
    backend.reset();
    auto created = gdnserve::CreateCudaBackend(
        weights, {.num_slots = max_batch, .bf16 = !f32, .cuda_graphs = true, .prefill_kernel = run.kernel});
    if (!created.ok()) fail(created.status());
    backend = std::move(*created);
    gdnserve::Backend& be = *backend;
    report["state_bytes_per_sequence"] = be.state_pool().layout().bytes_per_slot();
    std::printf("\nprefill, %s GDN-2 kernel (GEMM FLOP floor %.0f tokens/s)\n", run.label,
                flops / layer_flops_per_token);
    std::printf("%6s %8s %10s %14s %10s %10s\n", "seqs", "tokens", "seconds", "tokens/s", "x floor", "GPU GB");
    {
      // Warm-up at the largest forward size: workspace, pinned buffers and
      // kernel loading are paid here, not in the first timed row.
      const int slot = *be.state_pool().Acquire();
      std::vector<int32_t> ids(std::max(1, chunk));
      for (auto& t : ids) t = tok(rng);
      gdnserve::SeqPiece p{slot, ids, false};
      if (absl::Status s = be.Forward({&p, 1}, &out); !s.ok()) fail(s);
      if (profile_step) {  // one more forward of that size, for ncu (see --profile-step)
        CHECK_CUDA(cudaDeviceSynchronize());
        CHECK_CUDA(cudaProfilerStart());
        if (absl::Status s = be.Forward({&p, 1}, &out); !s.ok()) fail(s);
        CHECK_CUDA(cudaDeviceSynchronize());
        CHECK_CUDA(cudaProfilerStop());
      }
      (void)be.state_pool().Release(slot);
    }
    for (int S : prefill_seqs) {
      for (int n : prefill) {
        std::vector<int> slots(S);
        std::vector<std::vector<int32_t>> ids(S);
        for (int i = 0; i < S; ++i) {
          slots[i] = *be.state_pool().Acquire();
          ids[i].resize(n);
          for (auto& t : ids[i]) t = tok(rng);
        }
        const int per = std::max(1, chunk / S);
        const auto t = Clock::now();
        for (int pos = 0; pos < n; pos += per) {
          std::vector<gdnserve::SeqPiece> batch;
          for (int i = 0; i < S; ++i) {
            batch.push_back({slots[i], absl::MakeConstSpan(ids[i]).subspan(pos, std::min(per, n - pos)), false});
          }
          if (absl::Status s = be.Forward(batch, &out); !s.ok()) fail(s);
        }
        const double sec = Since(t);
        const double tps = static_cast<double>(S) * n / sec;
        const double floor_s = layer_flops_per_token * S * n / flops;
        std::printf("%6d %8d %10.3f %14.0f %10.2f %10.2f\n", S, n, sec, tps, sec / floor_s, DeviceUsed() / 1e9);
        report["prefill"].push_back({{"kernel", name}, {"sequences", S}, {"tokens", n},
                                     {"seconds", sec}, {"gemm_floor_seconds", floor_s},
                                     {"device_bytes_used", DeviceUsed()}});
        for (int s : slots) (void)be.state_pool().Release(s);
      }
    }
  }
  if (!json_path.empty()) std::ofstream(json_path) << report.dump(2) << "\n";
  return 0;
}
