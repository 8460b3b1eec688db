// The sigmoid and SiLU of ops.cu's element-wise kernels and of the decode
// recurrence (gdn2_recurrent.cu): one definition, the same floats in both.
#pragma once

namespace gdnserve::cuda {

__device__ __forceinline__ float Sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }
__device__ __forceinline__ float Silu(float x) { return x * Sigmoid(x); }

}  // namespace gdnserve::cuda
