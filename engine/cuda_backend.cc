#include "engine/cuda_backend.h"

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "engine/cuda_device.h"
#include "kernels/cuda/ops.h"

namespace gdnserve {
namespace {

using cuda::DType;
using cuda_device::CublasStatus;
using cuda_device::CudaStatus;
using cuda_device::DeviceBuffer;
using cuda_device::LtMatmul;
using cuda_device::RowAlignment;
using cuda_device::ToBf16;

struct DeviceLayer {
  // fg_up: the two low-rank up projections as one block-diagonal matrix
  // [[f_up, 0], [0, g_up]] ((key_dim + value_dim) x 2V): one GEMM from [f0 | g0].
  DeviceBuffer attn_norm, in_proj, conv, fg_up, g_bias, a_log, dt_bias, o_norm, o_proj, mlp_norm, gate_up,
      down;
};

class CudaBackend final : public Backend {
 public:
  CudaBackend(std::shared_ptr<const ModelWeights> weights, const CudaBackendOptions& options)
      : weights_(std::move(weights)),
        cfg_(weights_->config),
        options_(options),
        proj_(InProjLayout::ForConfig(cfg_)),
        layout_(StateLayout::ForConfig(cfg_)),
        wtype_(options.bf16 ? DType::kBF16 : DType::kF32),
        pool_(layout_, options.num_slots,
              SlotStorageOps{[this](int slot) { ZeroSlot(slot); },
                             [this](int src, int dst) { CopySlot(src, dst); }}) {}

  ~CudaBackend() override {
    cudaSetDevice(options_.device);
    if (stream_ != nullptr) cudaStreamSynchronize(stream_);
    DropGraphs();
    if (cublas_ != nullptr) cublasDestroy(cublas_);
    if (lt_ != nullptr) cublasLtDestroy(lt_);
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
    if (host_ints_ != nullptr) cudaFreeHost(host_ints_);
    if (host_logits_ != nullptr) cudaFreeHost(host_logits_);
    if (draw_pinned_ != nullptr) cudaFreeHost(draw_pinned_);
  }

  absl::Status Init();

  std::string name() const override { return options_.bf16 ? "cuda-bf16" : "cuda-f32"; }
  const ModelConfig& config() const override { return cfg_; }
  StatePool& state_pool() override { return pool_; }
  absl::Status Forward(absl::Span<const SeqPiece> batch, ForwardOutput* out) override;
  absl::Status Health() const override { return fatal_; }
  bool SamplesOnDevice() const override { return true; }
  absl::Status Draw(absl::Span<const DeviceDraw> draws, absl::Span<SampleResult> out) override;
  absl::Status ReadSlot(int slot, absl::Span<float> out) override;
  absl::Status WriteSlot(int slot, absl::Span<const float> in) override;

 private:
  absl::Status Upload(DeviceBuffer& buf, const std::vector<float>& host, DType type);
  // c = a . w^T (+ c) over this forward's rows: token rows, or logits rows.
  absl::Status Gemm(const void* a, int64_t lda, int64_t m, int64_t k, const DeviceBuffer& w, int64_t n, float* c,
                    int64_t ldc, bool accumulate, bool logits_rows = false);
  // One run of rows: cuBLAS's own choice, or the fixed algorithm of its class.
  absl::Status GemmRows(const void* a, int64_t lda, int64_t m, int64_t k, const DeviceBuffer& w, int64_t n, float* c,
                        int64_t ldc, bool accumulate);
  absl::Status FixedGemm(const void* a, int64_t lda, int64_t m, int64_t k, const DeviceBuffer& w, int64_t n,
                         float* c, int64_t ldc, bool accumulate, bool prompt_class);
  // Whether a decode run of `rows` rows (not batch_invariant) takes the GEMV
  // rather than cuBLAS, shapes permitting.
  bool DecodeGemvRows(int64_t rows) const {
    return options_.decode_gemv && wtype_ == DType::kBF16 && rows <= kCudaDecodeGemvRows;
  }
  absl::Status Reserve(int64_t T, int64_t R, int num_pieces);
  absl::Status Layer(int layer, int64_t T, const cuda::DevicePieces& pieces);
  // Everything from the embedding to the logits, enqueued on stream_.
  absl::Status Compute(int64_t T, int64_t R, const int32_t* dev_ints, const cuda::DevicePieces& pieces);
  // A decode step of P sequences through its CUDA graph, captured on first use.
  absl::Status ComputeDecodeGraph(int P, const int32_t* dev_ints, const cuda::DevicePieces& pieces);
  void DropGraphs();
  float* SlotPtr(int slot) const { return states_.f() + static_cast<int64_t>(slot) * layout_.floats_per_slot(); }
  void ZeroSlot(int slot);
  void CopySlot(int src, int dst);
  // Runs a Forward or Draw: refused once the GPU broke; an error that leaves
  // the device unable to synchronise breaks it for good (fatal_, Health).
  absl::Status Guarded(const std::function<absl::Status()>& call);
  absl::Status ForwardImpl(absl::Span<const SeqPiece> batch, ForwardOutput* out);
  absl::Status DrawImpl(absl::Span<const DeviceDraw> draws, absl::Span<SampleResult> out);

  std::shared_ptr<const ModelWeights> weights_;  // host copy: dropped once uploaded (Init)
  const ModelConfig cfg_;
  CudaBackendOptions options_;
  InProjLayout proj_;
  StateLayout layout_;
  DType wtype_;      // matrices
  DType act_type_() const { return wtype_; }  // GEMM inputs match the weights
  StatePool pool_;
  absl::Status fatal_;     // a sticky CUDA error: every later call fails with it

  cudaStream_t stream_ = nullptr;
  cublasHandle_t cublas_ = nullptr;
  cublasLtHandle_t lt_ = nullptr;
  // Fixed GEMM algorithms by (n, k, lda, ldc, class): chosen once, used for
  // every row count (a row's result then never depends on its batch), with
  // the row counts checked so far and whether the algorithm takes each.
  struct Pinned {
    cublasLtMatmulAlgo_t algo;
    std::map<int64_t, bool> takes;
  };
  std::map<std::array<int64_t, 5>, Pinned> pinned_;
  // This forward's GEMM row runs (RowRuns): prompt rows take the fixed
  // algorithms, decode rows cuBLAS's choice per size unless batch_invariant.
  std::vector<RowRun> runs_;
  DeviceBuffer embed_, lm_head_, final_norm_, states_;
  std::vector<DeviceLayer> layers_;

  // Per-forward workspace (grown to the largest batch).
  int32_t* host_ints_ = nullptr;  // pinned: ids, token_piece, rows, start, slot, piece lists
  size_t host_ints_cap_ = 0;
  float* host_logits_ = nullptr;  // pinned: the last Forward's logits (ForwardOutput::external)
  size_t host_logits_cap_ = 0;
  int64_t last_rows_ = 0;  // logits rows of the last Forward (Draw reads them)
  // Draw: specs + penalty lists up, tokens + logprobs down (pinned), penalized rows.
  char* draw_pinned_ = nullptr;
  size_t draw_pinned_cap_ = 0;
  DeviceBuffer draw_dev_, draw_work_;
  // fga_: [f0 | g0] in the activation type; fz_: [f | z] (the decay
  // pre-activation and the output gate), float32.
  DeviceBuffer ints_, x_, h_, proj_out_, qkv_, fga_, fz_, o_, oa_, gu_, act_, logits_;
  int64_t cap_T_ = 0, cap_R_ = 0;
  DeviceBuffer cublas_workspace_;  // fixed, so cuBLAS allocates nothing inside a graph capture
  DeviceBuffer chunk_ws_;          // the tensor-core chunk kernel's table and factors
  // Decode graphs by batch size; captured against the workspace of
  // generation workspace_gen_ (a reallocation makes them stale).
  std::map<int, cudaGraphExec_t> graphs_;
  uint64_t workspace_gen_ = 0, graphs_gen_ = 0;

  // Prompt pieces (SeqPiece::is_prompt) go to the chunkwise kernel when it is
  // on and the device has the shared memory for it, decode tokens token by
  // token: the CPU backend's rule, so a prompt restored from a 64-aligned
  // snapshot takes the same kernels over the same chunks as a cold run.
  bool use_chunk_ = false;
  struct Split {
    const int32_t* chunk_list = nullptr;  // device
    const int32_t* rec_list = nullptr;    // device
    int num_chunk = 0, num_rec = 0, rec_max_len = 0;
  } split_;
};

absl::Status CudaBackend::Upload(DeviceBuffer& buf, const std::vector<float>& host, DType type) {
  if (type == DType::kF32) {
    if (absl::Status s = buf.Reserve(host.size() * sizeof(float)); !s.ok()) return s;
    GDN_CUDA_RETURN(cudaMemcpy(buf.get(), host.data(), host.size() * sizeof(float), cudaMemcpyHostToDevice));
    return absl::OkStatus();
  }
  std::vector<uint16_t> tmp(host.size());
  for (size_t i = 0; i < host.size(); ++i) tmp[i] = ToBf16(host[i]);
  if (absl::Status s = buf.Reserve(tmp.size() * 2); !s.ok()) return s;
  GDN_CUDA_RETURN(cudaMemcpy(buf.get(), tmp.data(), tmp.size() * 2, cudaMemcpyHostToDevice));
  return absl::OkStatus();
}

absl::Status CudaBackend::Init() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    cudaGetLastError();
    return absl::FailedPreconditionError("no CUDA device is available (--device cuda needs an NVIDIA GPU)");
  }
  if (options_.device < 0 || options_.device >= count) {
    return absl::InvalidArgumentError(
        absl::StrFormat("CUDA device %d does not exist (this machine has %d)", options_.device, count));
  }
  if (cfg_.head_dim > 256 || cfg_.head_v_dim > 256) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "head_dim %d, head_v_dim %d: the CUDA backend's kernels take both <= 256", cfg_.head_dim, cfg_.head_v_dim));
  }
  if (proj_.g0 != proj_.f0 + cfg_.head_v_dim) {  // the f/g up projection reads [f0 | g0] as one row
    return absl::InternalError("in_proj layout: g0 does not follow f0");
  }
  GDN_CUDA_RETURN(cudaSetDevice(options_.device));
  cuda::SetProgrammaticLaunch(options_.programmatic_launch);
  GDN_CUDA_RETURN(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  GDN_CUBLAS_RETURN(cublasCreate(&cublas_));
  GDN_CUBLAS_RETURN(cublasSetStream(cublas_, stream_));
  GDN_CUBLAS_RETURN(cublasLtCreate(&lt_));
  switch (options_.prefill_kernel) {
    case PrefillKernel::kChunk: use_chunk_ = cuda::Gdn2ChunkedWYSupported(cfg_.head_dim); break;
    case PrefillKernel::kChunkSimt: use_chunk_ = cuda::Gdn2ChunkSupported(cfg_.head_dim); break;
    case PrefillKernel::kRecurrent: use_chunk_ = false; break;
  }
  if (absl::Status s = cublas_workspace_.Reserve(32 << 20); !s.ok()) return s;
  GDN_CUBLAS_RETURN(cublasSetWorkspace(cublas_, cublas_workspace_.get(), cublas_workspace_.bytes()));
  // float32 weights stay float32 all the way (no TF32).
  GDN_CUBLAS_RETURN(cublasSetMathMode(cublas_, options_.bf16 ? CUBLAS_DEFAULT_MATH : CUBLAS_PEDANTIC_MATH));

  const ModelWeights& w = *weights_;
  auto up = [&](DeviceBuffer& b, const std::vector<float>& h, DType t) { return Upload(b, h, t); };
  if (absl::Status s = up(embed_, w.embed, wtype_); !s.ok()) return s;
  if (!w.lm_head.empty()) {
    if (absl::Status s = up(lm_head_, w.lm_head, wtype_); !s.ok()) return s;
  }
  if (absl::Status s = up(final_norm_, w.final_norm, DType::kF32); !s.ok()) return s;
  layers_ = std::vector<DeviceLayer>(cfg_.num_layers);
  for (int l = 0; l < cfg_.num_layers; ++l) {
    const LayerWeights& lw = w.layers[l];
    DeviceLayer& d = layers_[l];
    const std::pair<DeviceBuffer*, const std::vector<float>*> small[] = {
        {&d.attn_norm, &lw.attn_norm}, {&d.conv, &lw.conv},       {&d.g_bias, &lw.g_bias},
        {&d.a_log, &lw.a_log},         {&d.dt_bias, &lw.dt_bias}, {&d.o_norm, &lw.o_norm},
        {&d.mlp_norm, &lw.mlp_norm}};
    for (const auto& [buf, host] : small) {
      if (absl::Status s = up(*buf, *host, DType::kF32); !s.ok()) return s;
    }
    // gate_up's rows as (gate, up) pairs (cuda::SiluMul's order): a decode
    // GEMV tile then holds both halves of its SwiGLU outputs.
    const int64_t I = cfg_.intermediate_size, dm = cfg_.hidden_size;
    std::vector<float> gu(lw.gate_up.size());
    for (int64_t j = 0; j < I; ++j) {
      std::copy_n(&lw.gate_up[j * dm], dm, &gu[2 * j * dm]);
      std::copy_n(&lw.gate_up[(I + j) * dm], dm, &gu[(2 * j + 1) * dm]);
    }
    const std::pair<DeviceBuffer*, const std::vector<float>*> mats[] = {
        {&d.in_proj, &lw.in_proj}, {&d.o_proj, &lw.o_proj}, {&d.gate_up, &gu}, {&d.down, &lw.down}};
    for (const auto& [buf, host] : mats) {
      if (absl::Status s = up(*buf, *host, wtype_); !s.ok()) return s;
    }
    const int64_t V = cfg_.head_v_dim, kd = cfg_.key_dim, vd = cfg_.value_dim;
    std::vector<float> fg(static_cast<size_t>((kd + vd) * 2 * V), 0.0f);
    for (int64_t r = 0; r < kd; ++r) std::copy_n(&lw.f_up[r * V], V, &fg[r * 2 * V]);
    for (int64_t r = 0; r < vd; ++r) std::copy_n(&lw.g_up[r * V], V, &fg[(kd + r) * 2 * V + V]);
    if (absl::Status s = up(d.fg_up, fg, wtype_); !s.ok()) return s;
  }
  if (absl::Status s = states_.Reserve(static_cast<size_t>(options_.num_slots) * layout_.bytes_per_slot());
      !s.ok()) {
    return absl::ResourceExhaustedError(absl::StrFormat("%d state slots of %.1f MB do not fit in GPU memory: %s",
                                                        options_.num_slots, layout_.bytes_per_slot() / 1e6,
                                                        s.message()));
  }
  GDN_CUDA_RETURN(cudaMemsetAsync(states_.get(), 0, states_.bytes(), stream_));
  // The weight uploads went through the legacy stream: order them (and the
  // memset) before anything on stream_.
  GDN_CUDA_RETURN(cudaDeviceSynchronize());
  weights_.reset();  // the float32 host weights (5.8 GB for the 1.3B shape) are no longer needed here
  return absl::OkStatus();
}

// A slot that cannot be zeroed or copied would hand a sequence someone
// else's state: such a failure breaks the backend for good (Health).
void CudaBackend::ZeroSlot(int slot) {
  cudaError_t e = cudaSetDevice(options_.device);
  if (e == cudaSuccess) e = cudaMemsetAsync(SlotPtr(slot), 0, layout_.bytes_per_slot(), stream_);
  if (e != cudaSuccess && fatal_.ok()) fatal_ = CudaStatus(e, "zeroing a state slot");
}

void CudaBackend::CopySlot(int src, int dst) {
  cudaError_t e = cudaSetDevice(options_.device);
  if (e == cudaSuccess) {
    e = cudaMemcpyAsync(SlotPtr(dst), SlotPtr(src), layout_.bytes_per_slot(), cudaMemcpyDeviceToDevice, stream_);
  }
  if (e != cudaSuccess && fatal_.ok()) fatal_ = CudaStatus(e, "copying a state slot");
}

absl::Status CudaBackend::ReadSlot(int slot, absl::Span<float> out) {
  if (!pool_.InUse(slot) || static_cast<int64_t>(out.size()) != layout_.floats_per_slot()) {
    return absl::InvalidArgumentError("ReadSlot: slot not in use or wrong size");
  }
  if (!fatal_.ok()) return fatal_;
  GDN_CUDA_RETURN(cudaSetDevice(options_.device));
  GDN_CUDA_RETURN(
      cudaMemcpyAsync(out.data(), SlotPtr(slot), out.size() * sizeof(float), cudaMemcpyDeviceToHost, stream_));
  GDN_CUDA_RETURN(cudaStreamSynchronize(stream_));
  return absl::OkStatus();
}

absl::Status CudaBackend::WriteSlot(int slot, absl::Span<const float> in) {
  if (!pool_.InUse(slot) || static_cast<int64_t>(in.size()) != layout_.floats_per_slot()) {
    return absl::InvalidArgumentError("WriteSlot: slot not in use or wrong size");
  }
  if (!fatal_.ok()) return fatal_;
  GDN_CUDA_RETURN(cudaSetDevice(options_.device));
  GDN_CUDA_RETURN(
      cudaMemcpyAsync(SlotPtr(slot), in.data(), in.size() * sizeof(float), cudaMemcpyHostToDevice, stream_));
  GDN_CUDA_RETURN(cudaStreamSynchronize(stream_));
  return absl::OkStatus();
}

static_assert(kCudaDecodeGemvRows <= cuda::kGemvMaxRows, "the GEMV takes at most kGemvMaxRows rows");

// c[m, n] (row stride ldc) = a[m, k] (row stride lda) . w[n, k]^T (+ c),
// run by run: rows of prompt pieces (and all rows when batch_invariant)
// through a fixed algorithm, decode runs of up to kCudaDecodeGemvRows rows
// through the GEMV (bf16), longer runs through cuBLAS's choice.
absl::Status CudaBackend::Gemm(const void* a, int64_t lda, int64_t m, int64_t k, const DeviceBuffer& w, int64_t n,
                               float* c, int64_t ldc, bool accumulate, bool logits_rows) {
  if (m == 0) return absl::OkStatus();
  const int64_t elem = wtype_ == DType::kBF16 ? 2 : 4;
  for (const RowRun& run : runs_) {
    const int64_t r0 = logits_rows ? run.r0 : run.t0, r1 = logits_rows ? run.r1 : run.t1;
    if (r1 <= r0) continue;
    const void* ar = static_cast<const char*>(a) + r0 * lda * elem;
    float* cr = c + r0 * ldc;
    if (run.prompt || options_.batch_invariant) {
      if (absl::Status s = FixedGemm(ar, lda, r1 - r0, k, w, n, cr, ldc, accumulate, run.prompt); !s.ok()) return s;
    } else if (DecodeGemvRows(r1 - r0) && cuda::GemvBf16Supported(r1 - r0, k, lda, ar, w.get())) {
      GDN_CUDA_RETURN(cuda::GemvBf16(ar, lda, r1 - r0, k, w.get(), n, cr, ldc, accumulate, stream_));
    } else if (absl::Status s = GemmRows(ar, lda, r1 - r0, k, w, n, cr, ldc, accumulate); !s.ok()) {
      return s;
    }
  }
  return absl::OkStatus();
}

absl::Status CudaBackend::FixedGemm(const void* a, int64_t lda, int64_t m, int64_t k, const DeviceBuffer& w,
                                    int64_t n, float* c, int64_t ldc, bool accumulate, bool prompt_class) {
  const cudaDataType_t t = wtype_ == DType::kBF16 ? CUDA_R_16BF : CUDA_R_32F;
  const int64_t elem = wtype_ == DType::kBF16 ? 2 : 4;
  const std::array<int64_t, 5> key = {n, k, lda, ldc, prompt_class ? 1 : 0};
  auto it = pinned_.find(key);
  if (it == pinned_.end()) {
    // The algorithm cuBLASLt prefers at a representative row count (a
    // prefill chunk for prompt rows, a mid-size decode batch otherwise), for
    // any row start this buffer layout can have.
    const int64_t rep_m = prompt_class ? 1024 : 64;
    LtMatmul d(t, rep_m, n, k, lda, ldc);
    if (!d.ok()) return absl::InternalError("cuBLASLt: cannot describe a matmul");
    cublasLtMatmulPreference_t pref = nullptr;
    GDN_CUBLAS_RETURN(cublasLtMatmulPreferenceCreate(&pref));
    const uint64_t ws = cublas_workspace_.bytes();
    const uint32_t al_a = RowAlignment(k, elem), al_b = RowAlignment(lda, elem), al_c = RowAlignment(ldc, 4);
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al_a, sizeof(al_a));
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al_b, sizeof(al_b));
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al_c, sizeof(al_c));
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al_c, sizeof(al_c));
    cublasLtMatmulHeuristicResult_t results[8] = {};
    int count = 0;
    const cublasStatus_t hs =
        cublasLtMatmulAlgoGetHeuristic(lt_, d.op_, d.a_, d.b_, d.c_, d.c_, pref, 8, results, &count);
    cublasLtMatmulPreferenceDestroy(pref);
    GDN_CUBLAS_RETURN(hs);
    if (count == 0) {
      return absl::InternalError(absl::StrFormat("cuBLASLt has no algorithm for a %d x %d x %d GEMM", rep_m, n, k));
    }
    it = pinned_.emplace(key, Pinned{results[0].algo, {}}).first;
  }
  LtMatmul d(t, m, n, k, lda, ldc);
  if (!d.ok()) return absl::InternalError("cuBLASLt: cannot describe a matmul");
  cublasLtMatmulAlgo_t& algo = it->second.algo;
  auto known = it->second.takes.find(m);
  if (known == it->second.takes.end()) {
    cublasLtMatmulHeuristicResult_t r = {};
    const cublasStatus_t cs = cublasLtMatmulAlgoCheck(lt_, d.op_, d.a_, d.b_, d.c_, d.c_, &algo, &r);
    const bool ok = cs == CUBLAS_STATUS_SUCCESS && r.workspaceSize <= cublas_workspace_.bytes();
    if (!ok) {
      std::fprintf(stderr,
                   "gdnserve: cuBLASLt's fixed algorithm for the %lld x %lld GEMM does not take %lld rows (%s); "
                   "those rows use cuBLAS's own choice (not row-count invariant)\n",
                   static_cast<long long>(n), static_cast<long long>(k), static_cast<long long>(m),
                   cublasGetStatusString(cs));
    }
    known = it->second.takes.emplace(m, ok).first;
  }
  if (!known->second) return GemmRows(a, lda, m, k, w, n, c, ldc, accumulate);
  const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
  GDN_CUBLAS_RETURN(cublasLtMatmul(lt_, d.op_, &alpha, w.get(), d.a_, a, d.b_, &beta, c, d.c_, c, d.c_, &algo,
                                   cublas_workspace_.get(), cublas_workspace_.bytes(), stream_));
  return absl::OkStatus();
}

absl::Status CudaBackend::GemmRows(const void* a, int64_t lda, int64_t m, int64_t k, const DeviceBuffer& w,
                                   int64_t n, float* c, int64_t ldc, bool accumulate) {
  const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
  const cudaDataType_t t = wtype_ == DType::kBF16 ? CUDA_R_16BF : CUDA_R_32F;
  // Column-major view: C^T [n, m] = W [n, k] (stored k-major: op T) . A^T [k, m].
  GDN_CUBLAS_RETURN(cublasGemmEx(cublas_, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(n), static_cast<int>(m),
                                 static_cast<int>(k), &alpha, w.get(), t, static_cast<int>(k), a, t,
                                 static_cast<int>(lda), &beta, c, CUDA_R_32F, static_cast<int>(ldc),
                                 CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  return absl::OkStatus();
}

absl::Status CudaBackend::Reserve(int64_t T, int64_t R, int num_pieces) {
  const size_t ints = static_cast<size_t>(2 * T + R + 4 * num_pieces + 1);
  if (ints > host_ints_cap_) {
    ++workspace_gen_;
    if (host_ints_ != nullptr) cudaFreeHost(host_ints_);
    host_ints_ = nullptr;
    host_ints_cap_ = 0;
    GDN_CUDA_RETURN(cudaMallocHost(&host_ints_, ints * sizeof(int32_t)));
    host_ints_cap_ = ints;
  }
  if (absl::Status s = ints_.Reserve(ints * sizeof(int32_t)); !s.ok()) return s;
  if (T <= cap_T_ && R <= cap_R_) return absl::OkStatus();
  ++workspace_gen_;
  T = std::max(T, cap_T_);
  R = std::max(R, cap_R_);
  const int64_t d = cfg_.hidden_size, a = DTypeBytes(act_type_());
  const int64_t key_dim = cfg_.key_dim, value_dim = cfg_.value_dim, V = cfg_.head_v_dim;
  const int64_t I = cfg_.intermediate_size;
  const std::pair<DeviceBuffer*, int64_t> sizes[] = {
      {&x_, T * d * 4},
      {&h_, std::max(T, R) * d * a},
      {&proj_out_, T * proj_.total * 4},
      {&qkv_, T * layout_.conv_channels * 4},
      {&fga_, T * 2 * V * a},
      {&fz_, T * (key_dim + value_dim) * 4},
      {&o_, T * value_dim * 4},
      {&oa_, T * value_dim * a},
      {&gu_, T * 2 * I * 4},
      {&act_, T * I * a},
      {&logits_, R * static_cast<int64_t>(cfg_.vocab_size) * 4},
  };
  for (const auto& [buf, bytes] : sizes) {
    if (absl::Status s = buf->Reserve(static_cast<size_t>(bytes)); !s.ok()) {
      cap_T_ = cap_R_ = 0;  // some buffers are gone: the next call reallocates them all
      return s;
    }
  }
  cap_T_ = T;
  cap_R_ = R;
  return absl::OkStatus();
}

absl::Status CudaBackend::Guarded(const std::function<absl::Status()>& call) {
  if (!fatal_.ok()) return fatal_;
  GDN_CUDA_RETURN(cudaSetDevice(options_.device));  // the engine loop's thread
  absl::Status s = call();
  if (!s.ok() && s.code() != absl::StatusCode::kInvalidArgument) {
    // A kernel fault (illegal address, launch failure, ECC) poisons the
    // context: the device then fails every call. A configuration error does
    // not; tell them apart by whether the device still synchronises.
    if (cudaDeviceSynchronize() != cudaSuccess) {
      fatal_ = absl::InternalError(absl::StrCat("the GPU failed and needs a restart of the server: ", s.message()));
    }
  }
  return s;
}

absl::Status CudaBackend::Forward(absl::Span<const SeqPiece> batch, ForwardOutput* out) {
  return Guarded([&] { return ForwardImpl(batch, out); });
}

absl::Status CudaBackend::ForwardImpl(absl::Span<const SeqPiece> batch, ForwardOutput* out) {
  last_rows_ = 0;
  if (absl::Status s = ValidateBatch(batch, pool_, cfg_.vocab_size); !s.ok()) return s;
  const int P = static_cast<int>(batch.size());
  int64_t T = 0, R = 0;
  for (const SeqPiece& p : batch) {
    T += p.tokens.size();
    R += p.all_logits ? p.tokens.size() : 1;
  }
  out->vocab = cfg_.vocab_size;
  out->external = nullptr;
  out->first_row.assign(P + 1, 0);
  if (P == 0) {
    out->logits.clear();
    return absl::OkStatus();
  }
  if (T > INT32_MAX / 2) return absl::InvalidArgumentError("batch too large");
  if (absl::Status s = Reserve(T, R, P); !s.ok()) return s;

  // Host-side index arrays, one upload: ids [T], token_piece [T], rows [R],
  // start [P+1], slot [P].
  int32_t* ids = host_ints_;
  int32_t* token_piece = ids + T;
  int32_t* rows = token_piece + T;
  int32_t* start = rows + R;
  int32_t* slot = start + P + 1;
  int64_t t = 0, r = 0;
  for (int i = 0; i < P; ++i) {
    const SeqPiece& p = batch[i];
    start[i] = static_cast<int32_t>(t);
    slot[i] = p.slot;
    const int64_t n = p.tokens.size();
    for (int64_t j = 0; j < n; ++j) {
      ids[t + j] = p.tokens[j];
      token_piece[t + j] = i;
    }
    const int64_t nl = p.all_logits ? n : 1;
    for (int64_t j = n - nl; j < n; ++j) rows[r++] = static_cast<int32_t>(t + j);
    out->first_row[i + 1] = out->first_row[i] + nl;
    t += n;
  }
  start[P] = static_cast<int32_t>(T);
  runs_ = RowRuns(batch);
  // Pieces for the chunkwise kernel (prefill) and for the token-by-token one.
  int32_t* chunk_list = slot + P;
  int32_t* rec_list = chunk_list + P;
  split_ = {};
  for (int i = 0; i < P; ++i) {
    const int n = static_cast<int>(batch[i].tokens.size());
    if (use_chunk_ && batch[i].is_prompt()) {
      chunk_list[split_.num_chunk++] = i;
    } else {
      rec_list[split_.num_rec++] = i;
      split_.rec_max_len = std::max(split_.rec_max_len, n);
    }
  }
  if (options_.prefill_kernel == PrefillKernel::kChunk && split_.num_chunk > 0) {
    const size_t bytes = cuda::Gdn2ChunkedWYWorkspaceBytes(T, P, cfg_.num_heads, cfg_.num_v_heads, cfg_.head_dim,
                                                           cfg_.head_v_dim);
    if (bytes > chunk_ws_.bytes()) ++workspace_gen_;  // captured graphs hold the old pointer
    if (absl::Status s = chunk_ws_.Reserve(bytes); !s.ok()) return s;
  }
  const size_t nints = static_cast<size_t>(2 * T + R + 4 * P + 1);
  GDN_CUDA_RETURN(cudaMemcpyAsync(ints_.get(), host_ints_, nints * sizeof(int32_t), cudaMemcpyHostToDevice, stream_));
  const int32_t* dev = ints_.get<int32_t>();
  cuda::DevicePieces pieces;
  pieces.start = dev + 2 * T + R;
  pieces.slot = pieces.start + P + 1;
  pieces.token_piece = dev + T;
  pieces.num_pieces = P;
  pieces.num_tokens = T;
  split_.chunk_list = pieces.slot + P;
  split_.rec_list = split_.chunk_list + P;

  // A decode graph replays this step's row runs and kernel split as they were
  // at capture: only pure decode steps (no prompt piece) take one.
  const bool decode = runs_.size() == 1 && !runs_[0].prompt;
  if (absl::Status s = decode && options_.cuda_graphs ? ComputeDecodeGraph(P, dev, pieces) : Compute(T, R, dev, pieces);
      !s.ok()) {
    return s;
  }
  last_rows_ = R;
  // Logits land in a pinned buffer the output points at (no pageable copy):
  // the rows of pieces that want them on the host, one copy per run of such
  // pieces (the others stay on the device for Draw).
  const int64_t vocab = cfg_.vocab_size;
  const size_t floats = static_cast<size_t>(R) * vocab;
  if (floats > host_logits_cap_) {
    if (host_logits_ != nullptr) cudaFreeHost(host_logits_);
    host_logits_ = nullptr;
    host_logits_cap_ = 0;
    GDN_CUDA_RETURN(cudaMallocHost(&host_logits_, floats * sizeof(float)));
    host_logits_cap_ = floats;
  }
  for (int i = 0; i < P;) {
    if (!batch[i].host_logits) {
      ++i;
      continue;
    }
    int j = i;
    while (j < P && batch[j].host_logits) ++j;
    const int64_t r0 = out->first_row[i], r1 = out->first_row[j];
    GDN_CUDA_RETURN(cudaMemcpyAsync(host_logits_ + r0 * vocab, logits_.f() + r0 * vocab,
                                    (r1 - r0) * vocab * sizeof(float), cudaMemcpyDeviceToHost, stream_));
    i = j;
  }
  GDN_CUDA_RETURN(cudaStreamSynchronize(stream_));
  out->logits.clear();
  out->external = host_logits_;
  return absl::OkStatus();
}

absl::Status CudaBackend::Draw(absl::Span<const DeviceDraw> draws, absl::Span<SampleResult> out) {
  return Guarded([&] { return DrawImpl(draws, out); });
}

absl::Status CudaBackend::DrawImpl(absl::Span<const DeviceDraw> draws, absl::Span<SampleResult> out) {
  const int D = static_cast<int>(draws.size());
  if (out.size() != draws.size()) return absl::InvalidArgumentError("Draw: one output per draw");
  if (D == 0) return absl::OkStatus();
  // Layout of the upload: specs [D], then the penalty lists (int32).
  std::vector<cuda::DrawSpec> specs(D);
  std::vector<int32_t> lists;
  bool penalties = false;
  for (int i = 0; i < D; ++i) {
    const DeviceDraw& d = draws[i];
    if (d.params == nullptr || d.row < 0 || d.row >= last_rows_) {
      return absl::InvalidArgumentError(absl::StrFormat("Draw %d: row %d is not a row of the last forward (%d rows)",
                                                        i, d.row, last_rows_));
    }
    const SamplingParams& p = *d.params;
    cuda::DrawSpec& c = specs[i];
    c.row = static_cast<int32_t>(d.row);
    c.top_k = p.top_k;
    c.temperature = p.temperature;
    c.top_p = p.top_p;
    c.min_p = p.min_p;
    c.repetition = p.repetition_penalty;
    c.presence = p.presence_penalty;
    c.frequency = p.frequency_penalty;
    c.uniform = d.uniform;
    if (p.repetition_penalty != 1.0f && !d.repeated.empty()) {
      c.repeated_begin = static_cast<int32_t>(lists.size());
      c.num_repeated = static_cast<int32_t>(d.repeated.size());
      lists.insert(lists.end(), d.repeated.begin(), d.repeated.end());
    }
    if ((p.presence_penalty != 0.0f || p.frequency_penalty != 0.0f) && !d.counted.empty()) {
      if (d.counts.size() != d.counted.size()) return absl::InvalidArgumentError("Draw: counted/counts sizes differ");
      c.counted_begin = static_cast<int32_t>(lists.size());
      c.num_counted = static_cast<int32_t>(d.counted.size());
      lists.insert(lists.end(), d.counted.begin(), d.counted.end());
      lists.insert(lists.end(), d.counts.begin(), d.counts.end());
    }
    penalties = penalties || p.repetition_penalty != 1.0f || c.num_counted > 0;
  }
  const size_t spec_bytes = D * sizeof(cuda::DrawSpec), list_bytes = lists.size() * sizeof(int32_t);
  const size_t result_bytes = D * (sizeof(int32_t) + sizeof(float));
  const size_t up = spec_bytes + list_bytes;
  const size_t pinned = std::max(up, result_bytes);
  if (pinned > draw_pinned_cap_) {
    if (draw_pinned_ != nullptr) cudaFreeHost(draw_pinned_);
    draw_pinned_ = nullptr;
    draw_pinned_cap_ = 0;
    GDN_CUDA_RETURN(cudaMallocHost(&draw_pinned_, pinned));
    draw_pinned_cap_ = pinned;
  }
  std::memcpy(draw_pinned_, specs.data(), spec_bytes);
  if (list_bytes > 0) std::memcpy(draw_pinned_ + spec_bytes, lists.data(), list_bytes);
  if (absl::Status s = draw_dev_.Reserve(up + result_bytes); !s.ok()) return s;
  const int64_t vocab = cfg_.vocab_size;
  if (penalties) {
    if (absl::Status s = draw_work_.Reserve(static_cast<size_t>(D) * vocab * sizeof(float)); !s.ok()) return s;
  }
  char* dev = draw_dev_.get<char>();
  GDN_CUDA_RETURN(cudaMemcpyAsync(dev, draw_pinned_, up, cudaMemcpyHostToDevice, stream_));
  auto* tokens = reinterpret_cast<int32_t*>(dev + up);
  auto* logprobs = reinterpret_cast<float*>(tokens + D);
  GDN_CUDA_RETURN(cuda::SampleRows(logits_.f(), vocab, reinterpret_cast<const cuda::DrawSpec*>(dev), D,
                                   reinterpret_cast<const int32_t*>(dev + spec_bytes),
                                   penalties ? draw_work_.f() : nullptr, tokens, logprobs, stream_));
  // The upload above reads draw_pinned_: the download may reuse it only after.
  GDN_CUDA_RETURN(cudaMemcpyAsync(draw_pinned_, tokens, result_bytes, cudaMemcpyDeviceToHost, stream_));
  GDN_CUDA_RETURN(cudaStreamSynchronize(stream_));
  const auto* tok = reinterpret_cast<const int32_t*>(draw_pinned_);
  const auto* lp = reinterpret_cast<const float*>(tok + D);
  for (int i = 0; i < D; ++i) {
    if (tok[i] < 0 || tok[i] >= vocab) {
      return absl::InternalError(absl::StrFormat("Draw %d: the device drew token %d (vocab %d)", i, tok[i], vocab));
    }
    out[i].token = tok[i];
    out[i].logprob = lp[i];
    out[i].top.clear();
  }
  return absl::OkStatus();
}

absl::Status CudaBackend::Compute(int64_t T, int64_t R, const int32_t* dev, const cuda::DevicePieces& pieces) {
  const int64_t d = cfg_.hidden_size;
  GDN_CUDA_RETURN(cuda::EmbeddingLookup(embed_.get(), wtype_, dev, T, d, x_.f(), stream_));
  for (int l = 0; l < cfg_.num_layers; ++l) {
    if (absl::Status s = Layer(l, T, pieces); !s.ok()) return s;
  }
  GDN_CUDA_RETURN(cuda::RmsNorm(x_.f(), d, dev + 2 * T, R, d, final_norm_.f(), cfg_.norm_eps, h_.get(), act_type_(), d,
                                stream_));
  return Gemm(h_.get(), d, R, d, lm_head_.bytes() ? lm_head_ : embed_, cfg_.vocab_size, logits_.f(), cfg_.vocab_size,
              false, /*logits_rows=*/true);
}

void CudaBackend::DropGraphs() {
  for (auto& [batch, exec] : graphs_) cudaGraphExecDestroy(exec);
  graphs_.clear();
}

absl::Status CudaBackend::ComputeDecodeGraph(int P, const int32_t* dev, const cuda::DevicePieces& pieces) {
  if (graphs_gen_ != workspace_gen_) {
    DropGraphs();
    graphs_gen_ = workspace_gen_;
  }
  auto it = graphs_.find(P);
  if (it == graphs_.end()) {
    GDN_CUDA_RETURN(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
    const absl::Status computed = Compute(P, P, dev, pieces);
    cudaGraph_t graph = nullptr;
    const cudaError_t ended = cudaStreamEndCapture(stream_, &graph);
    if (!computed.ok()) {
      if (graph != nullptr) cudaGraphDestroy(graph);
      return computed;
    }
    GDN_CUDA_RETURN(ended);
    cudaGraphExec_t exec = nullptr;
    const cudaError_t inst = cudaGraphInstantiate(&exec, graph, 0);
    cudaGraphDestroy(graph);
    GDN_CUDA_RETURN(inst);
    it = graphs_.emplace(P, exec).first;
  }
  GDN_CUDA_RETURN(cudaGraphLaunch(it->second, stream_));
  return absl::OkStatus();
}

absl::Status CudaBackend::Layer(int layer, int64_t T, const cuda::DevicePieces& pieces) {
  const DeviceLayer& lw = layers_[layer];
  const int64_t d = cfg_.hidden_size, V = cfg_.head_v_dim, P = proj_.total;
  const int64_t key_dim = cfg_.key_dim, value_dim = cfg_.value_dim, I = cfg_.intermediate_size;
  const int64_t C = layout_.conv_channels;
  const DType at = act_type_();
  cuda::LayerStateRef st;
  st.base = states_.f();
  st.slot_stride = layout_.floats_per_slot();
  st.recurrent_offset = layer * layout_.floats_per_layer();
  st.conv_offset = st.recurrent_offset + layout_.recurrent_floats;

  // Mixer.
  GDN_CUDA_RETURN(cuda::RmsNorm(x_.f(), d, nullptr, T, d, lw.attn_norm.f(), cfg_.norm_eps, h_.get(), at, d, stream_));
  if (absl::Status s = Gemm(h_.get(), d, T, d, lw.in_proj, P, proj_out_.f(), P, false); !s.ok()) return s;
  float* proj = proj_out_.f();
  const int64_t FZ = key_dim + value_dim;
  // A pure decode step whose matrices take the GEMV (Gemm's rule): the conv
  // prep shares a launch with the up projection's GEMV (on the float32
  // [f0 | g0] columns), and gate_up's GEMV applies SwiGLU (MLP below).
  const bool gemv_step = runs_.size() == 1 && !runs_[0].prompt && !options_.batch_invariant && DecodeGemvRows(T);
  bool up_done = false;
  if (T == pieces.num_pieces && cfg_.conv_size <= cuda::kDecodeMaxConvWidth) {  // a decode step: one launch
    if (gemv_step && options_.fuse_decode_prep &&
        cuda::DecodeMixerPrepGemvSupported(T, 2 * V, P, proj + proj_.f0, lw.fg_up.get())) {
      GDN_CUDA_RETURN(cuda::DecodeMixerPrepGemv(proj + proj_.q, P, lw.conv.f(), C, cfg_.conv_size, pieces, st,
                                                qkv_.f(), C, proj_.f0 - proj_.q, 2 * V, lw.fg_up.get(), FZ, fz_.f(),
                                                FZ, stream_));
      up_done = true;
    } else {
      GDN_CUDA_RETURN(cuda::DecodeMixerPrep(proj + proj_.q, P, lw.conv.f(), C, cfg_.conv_size, pieces, st, qkv_.f(),
                                            C, proj_.f0 - proj_.q, 2 * V, fga_.get(), at, stream_));
    }
  } else {
    GDN_CUDA_RETURN(
        cuda::ConvSilu(proj + proj_.q, P, lw.conv.f(), C, cfg_.conv_size, pieces, st, qkv_.f(), C, stream_));
    GDN_CUDA_RETURN(cuda::ConvStateUpdate(proj + proj_.q, P, C, cfg_.conv_size, pieces, st, stream_));
    GDN_CUDA_RETURN(cuda::Convert(proj + proj_.f0, T, 2 * V, P, fga_.get(), at, 2 * V, stream_));
  }
  if (!up_done) {
    if (absl::Status s = Gemm(fga_.get(), 2 * V, T, 2 * V, lw.fg_up, FZ, fz_.f(), FZ, false); !s.ok()) return s;
  }

  cuda::Gdn2RecurrentArgs g;
  g.q = qkv_.f();
  g.k = qkv_.f() + key_dim;
  g.qk_stride = C;
  g.v = qkv_.f() + 2 * key_dim;
  g.v_stride = C;
  g.g = fz_.f();
  g.g_stride = FZ;
  g.b = proj + proj_.b;
  g.b_stride = P;
  g.w = proj + proj_.w;
  g.w_stride = P;
  g.a_log = lw.a_log.f();
  g.dt_bias = lw.dt_bias.f();
  g.allow_neg_eigval = cfg_.allow_neg_eigval;
  g.scale = 1.0f / std::sqrt(static_cast<float>(cfg_.head_dim));
  g.H = cfg_.num_heads;
  g.HV = cfg_.num_v_heads;
  g.K = cfg_.head_dim;
  g.V = cfg_.head_v_dim;
  g.state = st;
  g.pieces = pieces;
  g.out = o_.f();
  g.out_stride = value_dim;
  // The kernels just before (this layer's projections) never write the state.
  g.early_state_read = true;
  // Each kernel takes its list, or the whole batch when the other has none.
  if (split_.num_rec > 0) {
    cuda::Gdn2RecurrentArgs r = g;
    if (split_.num_chunk > 0) {
      r.piece_list = split_.rec_list;
      r.num_listed = split_.num_rec;
    }
    r.max_len = split_.rec_max_len;
    GDN_CUDA_RETURN(cuda::Gdn2Recurrent(r, stream_));
  }
  if (split_.num_chunk > 0) {
    cuda::Gdn2RecurrentArgs c = g;
    if (split_.num_rec > 0) {
      c.piece_list = split_.chunk_list;
      c.num_listed = split_.num_chunk;
    }
    if (options_.prefill_kernel == PrefillKernel::kChunk) {
      // bf16 weights: TF32 products are well inside the bf16 model's error;
      // float32 weights keep float32 accuracy (three TF32 products).
      const cuda::ChunkMath math = options_.bf16 ? cuda::ChunkMath::kTf32 : cuda::ChunkMath::kTf32x3;
      GDN_CUDA_RETURN(cuda::Gdn2ChunkedWY(c, math, chunk_ws_.get(), chunk_ws_.bytes(), stream_));
    } else {
      GDN_CUDA_RETURN(cuda::Gdn2Chunked(c, stream_));
    }
  }
  GDN_CUDA_RETURN(cuda::GatedRmsNorm(o_.f(), fz_.f() + key_dim, FZ, lw.g_bias.f(), lw.o_norm.f(), T, cfg_.num_v_heads,
                                     cfg_.head_v_dim, cfg_.norm_eps, oa_.get(), at, stream_));
  if (absl::Status s = Gemm(oa_.get(), value_dim, T, value_dim, lw.o_proj, d, x_.f(), d, true); !s.ok()) return s;

  // MLP.
  GDN_CUDA_RETURN(cuda::RmsNorm(x_.f(), d, nullptr, T, d, lw.mlp_norm.f(), cfg_.norm_eps, h_.get(), at, d, stream_));
  if (gemv_step && options_.fuse_decode_swiglu && at == DType::kBF16 &&
      cuda::GemvBf16Supported(T, d, d, h_.get(), lw.gate_up.get())) {
    GDN_CUDA_RETURN(cuda::GemvBf16SwiGlu(h_.get(), d, T, d, lw.gate_up.get(), 2 * I, act_.get(), I, stream_));
  } else {
    if (absl::Status s = Gemm(h_.get(), d, T, d, lw.gate_up, 2 * I, gu_.f(), 2 * I, false); !s.ok()) return s;
    GDN_CUDA_RETURN(cuda::SiluMul(gu_.f(), T, I, act_.get(), at, stream_));
  }
  if (absl::Status s = Gemm(act_.get(), I, T, I, lw.down, d, x_.f(), d, true); !s.ok()) return s;
  return absl::OkStatus();
}

}  // namespace

bool CudaBackendBuilt() { return true; }

int CudaDeviceCount() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(std::shared_ptr<const ModelWeights> weights,
                                                           const CudaBackendOptions& options) {
  if (options.num_slots < 1) {
    return absl::InvalidArgumentError(absl::StrFormat("num_slots must be >= 1, got %d", options.num_slots));
  }
  auto backend = std::make_unique<CudaBackend>(std::move(weights), options);
  if (absl::Status s = backend->Init(); !s.ok()) return s;
  return backend;
}

}  // namespace gdnserve
