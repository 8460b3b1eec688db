// Small-batch linear layer for decode steps (ops.h: GemvBf16): y[m, n] (+)=
// x[m, :] . w[n, :] for up to kGemvMaxRows input rows, bf16 weights and
// inputs, float32 accumulation and output. kernels/cpu/linear.h's Linear is
// its CPU twin.
//
// Memory bound: each weight byte is read once, so the kernel's job is to keep
// enough loads in flight on every SM. A block owns R consecutive weight rows
// and all 256 threads stride over their length together in 16-byte pieces
// (8 bf16 a thread, R rows at once, two steps in flight), so a matrix of only
// a few thousand rows (o_proj: 2304) still fills the GPU. The x rows are tiny
// and come through the read-only cache. Partial sums are reduced by warp
// shuffles, then across the 8 warps in a fixed order: one thread writes each
// output, no atomics, and the result does not depend on m or on other rows.
// Launched as a programmatic dependent (pdl.cuh), a block asks for its
// weights into L2 before it waits for the kernel that writes x: the weight
// stream starts while that kernel finishes.
#include <cuda_bf16.h>

#include "kernels/cuda/ops.h"
#include "kernels/cuda/pdl.cuh"

namespace gdnserve::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr unsigned kFull = 0xffffffffu;

__device__ __forceinline__ void Dot8(const uint4& w, const float (&x)[8], float& acc) {
  const auto* wp = reinterpret_cast<const __nv_bfloat162*>(&w);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 a = __bfloat1622float2(wp[i]);
    acc = fmaf(a.x, x[2 * i], acc);
    acc = fmaf(a.y, x[2 * i + 1], acc);
  }
}

__device__ __forceinline__ void Unpack8(const uint4& v, float (&x)[8]) {
  const auto* p = reinterpret_cast<const __nv_bfloat162*>(&v);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 f = __bfloat1622float2(p[i]);
    x[2 * i] = f.x;
    x[2 * i + 1] = f.y;
  }
}

// Piece j (8 elements) of every one of the block's R rows times the M x rows.
template <int M, int R>
__device__ __forceinline__ void Step(const uint4 (&wv)[R], const __nv_bfloat16* __restrict__ x, int64_t ldx,
                                     int64_t kk, float (&acc)[R][M]) {
#pragma unroll
  for (int m = 0; m < M; ++m) {
    float xf[8];
    Unpack8(__ldg(reinterpret_cast<const uint4*>(x + m * ldx + kk)), xf);
#pragma unroll
    for (int r = 0; r < R; ++r) Dot8(wv[r], xf, acc[r][m]);
  }
}

template <int M, int R>
__global__ void __launch_bounds__(kThreads) GemvKernel(const __nv_bfloat16* __restrict__ x, int64_t ldx,
                                                       const __nv_bfloat16* __restrict__ w, int64_t n, int64_t k,
                                                       float* __restrict__ y, int64_t ldy, bool accumulate) {
  __shared__ float partial[kWarps][R * M];
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * R;
  const int rows = static_cast<int>(n - n0 < R ? n - n0 : R);
  const __nv_bfloat16* wr[R];
#pragma unroll
  for (int r = 0; r < R; ++r) wr[r] = w + (n0 + (r < rows ? r : 0)) * k;  // a missing row re-reads row 0
  const int64_t pieces = k / 8;
  for (int64_t q = tid; q < pieces; q += kThreads) {
#pragma unroll
    for (int r = 0; r < R; ++r) asm volatile("prefetch.global.L2 [%0];" ::"l"(wr[r] + q * 8));
  }
  PdlWait();
  PdlLaunchDependents();
  float acc[R][M] = {};
  int64_t j = tid;
  for (; j + kThreads < pieces; j += 2 * kThreads) {  // two steps in flight
    uint4 a[R], b[R];
#pragma unroll
    for (int r = 0; r < R; ++r) {
      a[r] = __ldcs(reinterpret_cast<const uint4*>(wr[r] + j * 8));
      b[r] = __ldcs(reinterpret_cast<const uint4*>(wr[r] + (j + kThreads) * 8));
    }
    Step<M, R>(a, x, ldx, j * 8, acc);
    Step<M, R>(b, x, ldx, (j + kThreads) * 8, acc);
  }
  if (j < pieces) {
    uint4 a[R];
#pragma unroll
    for (int r = 0; r < R; ++r) a[r] = __ldcs(reinterpret_cast<const uint4*>(wr[r] + j * 8));
    Step<M, R>(a, x, ldx, j * 8, acc);
  }
#pragma unroll
  for (int r = 0; r < R; ++r) {
#pragma unroll
    for (int m = 0; m < M; ++m) {
      float v = acc[r][m];
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
      if (lane == 0) partial[warp][r * M + m] = v;
    }
  }
  __syncthreads();
  if (tid < R * M) {
    const int r = tid / M, m = tid % M;
    if (r < rows) {
      float s = 0.0f;
#pragma unroll
      for (int q = 0; q < kWarps; ++q) s += partial[q][tid];
      float* out = y + m * ldy + n0 + r;
      *out = accumulate ? *out + s : s;
    }
  }
}

template <int M>
cudaError_t Launch(const void* x, int64_t ldx, const void* w, int64_t n, int64_t k, float* y, int64_t ldy,
                   bool accumulate, cudaStream_t stream) {
  // Four rows a block for one to four x rows, two above (registers).
  constexpr int R = M <= 4 ? 4 : 2;
  const int64_t blocks = (n + R - 1) / R;
  if (blocks > 2147483647) return cudaErrorInvalidValue;
  return LaunchPdl(GemvKernel<M, R>, static_cast<unsigned>(blocks), kThreads, 0, stream,
                   static_cast<const __nv_bfloat16*>(x), ldx, static_cast<const __nv_bfloat16*>(w), n, k, y, ldy,
                   accumulate);
}

}  // namespace

bool GemvBf16Supported(int64_t m, int64_t k, int64_t ldx, const void* x, const void* w) {
  return m >= 1 && m <= kGemvMaxRows && k >= 8 && k % 8 == 0 && ldx % 8 == 0 &&
         reinterpret_cast<uintptr_t>(x) % 16 == 0 && reinterpret_cast<uintptr_t>(w) % 16 == 0;
}

cudaError_t GemvBf16(const void* x, int64_t ldx, int64_t m, int64_t k, const void* w, int64_t n, float* y,
                     int64_t ldy, bool accumulate, cudaStream_t stream) {
  if (!GemvBf16Supported(m, k, ldx, x, w) || n <= 0) return cudaErrorInvalidValue;
  switch (m) {
    case 1: return Launch<1>(x, ldx, w, n, k, y, ldy, accumulate, stream);
    case 2: return Launch<2>(x, ldx, w, n, k, y, ldy, accumulate, stream);
    case 3: return Launch<3>(x, ldx, w, n, k, y, ldy, accumulate, stream);
    case 4: return Launch<4>(x, ldx, w, n, k, y, ldy, accumulate, stream);
    case 5: return Launch<5>(x, ldx, w, n, k, y, ldy, accumulate, stream);
    case 6: return Launch<6>(x, ldx, w, n, k, y, ldy, accumulate, stream);
    case 7: return Launch<7>(x, ldx, w, n, k, y, ldy, accumulate, stream);
    default: return Launch<8>(x, ldx, w, n, k, y, ldy, accumulate, stream);
  }
}

}  // namespace gdnserve::cuda
