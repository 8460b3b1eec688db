// A C ABI over the GDN-2 recurrence kernels, so Python (ctypes + PyTorch
// tensors) can run them side by side with other implementations on
// identical device buffers (bench/gpu/decode_kernel_bench.py,
// prefill_kernel_bench.py). Pointers are device pointers; each call returns a
// cudaError_t as int.
#include <cstdint>

#include "kernels/cuda/ops.h"

namespace {

// The arguments every entry point shares: packed pieces of float32 inputs
// (raw gates), states in a slot pool [slot][HV][V][K].
gdnserve::cuda::Gdn2RecurrentArgs Args(const float* q, const float* k, int64_t qk_stride, const float* v,
                                       int64_t v_stride, const float* g, int64_t g_stride, const float* b,
                                       int64_t b_stride, const float* w, int64_t w_stride, const float* a_log,
                                       const float* dt_bias, float scale, int H, int HV, int K, int V, float* state,
                                       int64_t slot_stride, const int32_t* piece_start, const int32_t* piece_slot,
                                       int num_pieces, int64_t num_tokens, float* out, int64_t out_stride) {
  gdnserve::cuda::Gdn2RecurrentArgs a;
  a.q = q;
  a.k = k;
  a.qk_stride = qk_stride;
  a.v = v;
  a.v_stride = v_stride;
  a.g = g;
  a.g_stride = g_stride;
  a.b = b;
  a.b_stride = b_stride;
  a.w = w;
  a.w_stride = w_stride;
  a.a_log = a_log;
  a.dt_bias = dt_bias;
  a.scale = scale;
  a.H = H;
  a.HV = HV;
  a.K = K;
  a.V = V;
  a.state = {state, slot_stride, 0, 0};
  a.pieces.start = piece_start;
  a.pieces.slot = piece_slot;
  a.pieces.num_pieces = num_pieces;
  a.pieces.num_tokens = num_tokens;
  a.out = out;
  a.out_stride = out_stride;
  return a;
}

}  // namespace

// The C ABI's version, for scripts that load libraries of several revisions
// (bench/gpu/ab_prefill_op.sh): 2 = gdn2_cuda_prefill takes bf16_io (1: the
// libraries before it, which have no such symbol).
extern "C" int gdn2_cuda_abi_version() { return 2; }

// Token by token (decode batches take the decode launch). rows_per_warp: the
// decode launch's variant (Gdn2RecurrentArgs::rows_per_warp; 0: the engine's
// choice).
extern "C" int gdn2_cuda_recurrent(const float* q, const float* k, int64_t qk_stride, const float* v,
                                   int64_t v_stride, const float* g, int64_t g_stride, const float* b,
                                   int64_t b_stride, const float* w, int64_t w_stride, const float* a_log,
                                   const float* dt_bias, int allow_neg_eigval, float scale, int H, int HV, int K,
                                   int V, float* state, int64_t slot_stride, const int32_t* piece_start,
                                   const int32_t* piece_slot, int num_pieces, int64_t num_tokens, float* out,
                                   int64_t out_stride, void* stream, int rows_per_warp) {
  gdnserve::cuda::Gdn2RecurrentArgs a =
      Args(q, k, qk_stride, v, v_stride, g, g_stride, b, b_stride, w, w_stride, a_log, dt_bias, scale, H, HV, K, V,
           state, slot_stride, piece_start, piece_slot, num_pieces, num_tokens, out, out_stride);
  a.allow_neg_eigval = allow_neg_eigval != 0;
  a.max_len = num_tokens == num_pieces ? 1 : 0;  // a decode batch takes the decode launch
  a.rows_per_warp = rows_per_warp;
  return static_cast<int>(gdnserve::cuda::Gdn2Recurrent(a, static_cast<cudaStream_t>(stream)));
}

// Prefill: kernel 0 token by token (Gdn2Recurrent), 1 the one-pass chunkwise
// kernel (Gdn2Chunked), 2 / 3 the tensor-core one (Gdn2ChunkedWY) in TF32 /
// split TF32 x 3, with `workspace` of gdn2_cuda_chunked_wy_workspace_bytes
// and `value_tile` (Gdn2RecurrentArgs::value_tile; 0 picks). bf16_io != 0:
// q, k, v, g, b, w and out hold bf16 (Gdn2RecurrentArgs::io; kernels 2 and 3
// only, the others return cudaErrorInvalidValue).
extern "C" int gdn2_cuda_prefill(int kernel, const float* q, const float* k, int64_t qk_stride, const float* v,
                                 int64_t v_stride, const float* g, int64_t g_stride, const float* b,
                                 int64_t b_stride, const float* w, int64_t w_stride, const float* a_log,
                                 const float* dt_bias, float scale, int H, int HV, int K, int V, float* state,
                                 int64_t slot_stride, const int32_t* piece_start, const int32_t* piece_slot,
                                 int num_pieces, int64_t num_tokens, float* out, int64_t out_stride,
                                 void* workspace, int64_t workspace_bytes, void* stream, int value_tile,
                                 int bf16_io) {
  gdnserve::cuda::Gdn2RecurrentArgs a =
      Args(q, k, qk_stride, v, v_stride, g, g_stride, b, b_stride, w, w_stride, a_log, dt_bias, scale, H, HV, K, V,
           state, slot_stride, piece_start, piece_slot, num_pieces, num_tokens, out, out_stride);
  a.value_tile = value_tile;
  a.io = bf16_io ? gdnserve::cuda::DType::kBF16 : gdnserve::cuda::DType::kF32;
  const auto s = static_cast<cudaStream_t>(stream);
  switch (kernel) {
    case 0: return static_cast<int>(gdnserve::cuda::Gdn2Recurrent(a, s));
    case 1: return static_cast<int>(gdnserve::cuda::Gdn2Chunked(a, s));
    case 2:
    case 3:
      return static_cast<int>(gdnserve::cuda::Gdn2ChunkedWY(
          a, kernel == 2 ? gdnserve::cuda::ChunkMath::kTf32 : gdnserve::cuda::ChunkMath::kTf32x3, workspace,
          static_cast<size_t>(workspace_bytes), s));
    default: return static_cast<int>(cudaErrorInvalidValue);
  }
}

extern "C" int64_t gdn2_cuda_chunked_wy_workspace_bytes(int64_t num_tokens, int num_pieces, int H, int HV, int K,
                                                        int V) {
  return static_cast<int64_t>(gdnserve::cuda::Gdn2ChunkedWYWorkspaceBytes(num_tokens, num_pieces, H, HV, K, V));
}
