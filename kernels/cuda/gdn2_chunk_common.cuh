// Shared by the chunkwise GDN-2 kernels (gdn2_chunk.cu, gdn2_chunk_wy.cu):
// the chunk size, gate activations and the shared-memory set-up of a launch.
#pragma once

#include "kernels/cuda/device_attr.cuh"
#include "kernels/cuda/ops.h"

namespace gdnserve::cuda::chunk_common {

constexpr int kC = 64;       // tokens a chunk
constexpr int kMaxK = 128;   // key head size the kernels take

// Fast exponentials (a few ulp: far inside every tolerance) with log1p kept
// for softplus's small values and a correctly rounded reciprocal.
__device__ __forceinline__ float Softplus(float x) { return x > 20.0f ? x : log1pf(__expf(x)); }
__device__ __forceinline__ float Sigmoid(float x) { return __frcp_rn(1.0f + __expf(-x)); }

// The tensor-core kernel's versions (gdn2_chunk_wy.cu), on the MUFU unit
// (2^x, log2 x, 1/x one instruction each; softplus and sigmoid two): denormals
// flushed (a decay or a weight below 2^-126 counts as zero, an absolute 1e-38
// on values <= 1), and softplus in base-2 units, log2(1 + 2^u) for
// u = x log2(e), the log decay G kept in those units so that every decay is
// one 2^x.
constexpr float kLog2e = 1.4426950408889634f;
__device__ __forceinline__ float Exp2Ftz(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}
__device__ __forceinline__ float Log2Ftz(float x) {
  float y;
  asm("lg2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}
__device__ __forceinline__ float RcpFtz(float x) {
  float y;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}
// log2(1 + e^x): x log2(e) past 2^-24 of the result; below 2^-6 the series
// y (1 - y / 2 + y^2 / 3) / ln 2 of y = e^x keeps small values' relative
// accuracy (lg2 of a value near 1 would not); between, lg2.approx (absolute
// error ~2^-22 on a result >= 0.022).
__device__ __forceinline__ float SoftplusLog2(float x) {
  const float u = x * kLog2e;
  if (u > 24.0f) return u;
  const float y = Exp2Ftz(u);
  return y < 0.015625f ? y * kLog2e * (1.0f - y * (0.5f - y * (1.0f / 3.0f))) : Log2Ftz(1.0f + y);
}
// 1 / (1 + e^-x); 0 where e^-x overflows.
__device__ __forceinline__ float SigmoidFtz(float x) { return RcpFtz(1.0f + Exp2Ftz(-x * kLog2e)); }

// The device's opt-in shared memory per block in bytes (0 without a usable
// device).
inline size_t OptinSharedBytes() {
  return static_cast<size_t>(CurrentDeviceAttribute<cudaDevAttrMaxSharedMemoryPerBlockOptin>(0));
}

// Lets `kernel` launch with `bytes` of dynamic shared memory (above 48 KiB).
template <typename Kernel>
cudaError_t AllowSharedBytes(Kernel* kernel, size_t bytes) {
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
}

}  // namespace gdnserve::cuda::chunk_common
