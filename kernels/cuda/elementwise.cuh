// Element helpers of the element-wise kernels (ops.cu), shared with the
// kernels that do the same work inside their own (the decode recurrence,
// decode_prep.cuh, gemv.cu): one definition, the same floats and roundings
// everywhere.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "kernels/cuda/ops.h"

namespace gdnserve::cuda {

__device__ __forceinline__ float Sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }
__device__ __forceinline__ float Silu(float x) { return x * Sigmoid(x); }

// out[i] = v as `t` (bf16: rounded to nearest even).
__device__ __forceinline__ void Store(void* out, DType t, int64_t i, float v) {
  if (t == DType::kF32) {
    static_cast<float*>(out)[i] = v;
  } else {
    static_cast<__nv_bfloat16*>(out)[i] = __float2bfloat16_rn(v);
  }
}

}  // namespace gdnserve::cuda
