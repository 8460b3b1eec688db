// Small-batch linear layer for decode steps (ops.h: GemvBf16), the twin of
// kernels/cpu/linear.h's Linear: y[m, n] (+)= x[m, :] . w[n, :] for up to
// kGemvMaxRows input rows, bf16 weights and inputs, float32 accumulation and
// output.
//
// Memory bound: every weight byte is read once. Each warp owns kRowsPerWarp
// weight rows and streams them with 16-byte loads (8 bf16 per lane, 256 per
// warp per step, kUnroll steps in flight); the few input rows come through
// the read-only cache. A warp reduces its partial sums with shuffles at the
// end, so one thread writes each output: no atomics, and the result is the
// same every run.
#include <cuda_bf16.h>

#include "kernels/cuda/ops.h"

namespace gdnserve::cuda {
namespace {

constexpr int kWarps = 8;
constexpr int kRowsPerWarp = 2;
constexpr int kUnroll = 2;
constexpr unsigned kFull = 0xffffffffu;

__device__ __forceinline__ void Dot8(const uint4& w, const uint4& x, float& acc) {
  const auto* wp = reinterpret_cast<const __nv_bfloat162*>(&w);
  const auto* xp = reinterpret_cast<const __nv_bfloat162*>(&x);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 a = __bfloat1622float2(wp[i]);
    const float2 b = __bfloat1622float2(xp[i]);
    acc = fmaf(a.x, b.x, acc);
    acc = fmaf(a.y, b.y, acc);
  }
}

template <int M>
__global__ void __launch_bounds__(kWarps * 32) GemvKernel(const __nv_bfloat16* __restrict__ x, int64_t ldx,
                                                         const __nv_bfloat16* __restrict__ w, int64_t n, int64_t k,
                                                         float* __restrict__ y, int64_t ldy, bool accumulate) {
  const int lane = threadIdx.x % 32;
  const int64_t row0 = (static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32) * kRowsPerWarp;
  if (row0 >= n) return;
  float acc[kRowsPerWarp][M] = {};
  const int64_t step = 32 * 8;  // elements a warp covers per load
  for (int64_t k0 = lane * 8; k0 < k; k0 += step * kUnroll) {
    uint4 wv[kUnroll][kRowsPerWarp];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t kk = k0 + u * step;
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; ++r) {
        wv[u][r] = kk < k && row0 + r < n ? __ldcs(reinterpret_cast<const uint4*>(w + (row0 + r) * k + kk))
                                          : uint4{0, 0, 0, 0};
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t kk = k0 + u * step;
      if (kk >= k) break;
#pragma unroll
      for (int m = 0; m < M; ++m) {
        const uint4 xv = __ldg(reinterpret_cast<const uint4*>(x + m * ldx + kk));
#pragma unroll
        for (int r = 0; r < kRowsPerWarp; ++r) Dot8(wv[u][r], xv, acc[r][m]);
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
#pragma unroll
    for (int m = 0; m < M; ++m) {
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) acc[r][m] += __shfl_xor_sync(kFull, acc[r][m], o);
    }
  }
  // Lane (r * M + m) writes output (m, row0 + r).
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
#pragma unroll
    for (int m = 0; m < M; ++m) {
      if (lane == r * M + m && row0 + r < n) {
        float* out = y + m * ldy + row0 + r;
        *out = accumulate ? *out + acc[r][m] : acc[r][m];
      }
    }
  }
}

template <int M>
cudaError_t Launch(const void* x, int64_t ldx, const void* w, int64_t n, int64_t k, float* y, int64_t ldy,
                   bool accumulate, cudaStream_t stream) {
  const int64_t rows_per_block = kWarps * kRowsPerWarp;
  const int64_t blocks = (n + rows_per_block - 1) / rows_per_block;
  GemvKernel<M><<<static_cast<unsigned>(blocks), kWarps * 32, 0, stream>>>(
      static_cast<const __nv_bfloat16*>(x), ldx, static_cast<const __nv_bfloat16*>(w), n, k, y, ldy, accumulate);
  return cudaGetLastError();
}

}  // namespace

bool GemvBf16Supported(int64_t m, int64_t k, int64_t ldx, const void* x, const void* w) {
  return m >= 1 && m <= kGemvMaxRows && k % 8 == 0 && ldx % 8 == 0 &&
         reinterpret_cast<uintptr_t>(x) % 16 == 0 && reinterpret_cast<uintptr_t>(w) % 16 == 0;
}

cudaError_t GemvBf16(const void* x, int64_t ldx, int64_t m, int64_t k, const void* w, int64_t n, float* y,
                     int64_t ldy, bool accumulate, cudaStream_t stream) {
  if (!GemvBf16Supported(m, k, ldx, x, w) || n <= 0) return cudaErrorInvalidValue;
  if (n > int64_t{65535} * 65535) return cudaErrorInvalidValue;
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
