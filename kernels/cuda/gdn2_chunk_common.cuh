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
