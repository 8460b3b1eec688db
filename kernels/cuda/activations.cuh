// The activations of ops.cu's element-wise kernels, shared with the kernels
// that fold those ops into their own loads (gemv.cu) so that both compute the
// same floats.
#pragma once

namespace gdnserve::cuda {

__device__ __forceinline__ float Sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }
__device__ __forceinline__ float Silu(float x) { return x * Sigmoid(x); }

}  // namespace gdnserve::cuda
