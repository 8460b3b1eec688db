// Device-side plumbing of the CUDA backend (engine/cuda_backend.cc): CUDA and
// cuBLAS errors as Status, a grow-only device buffer, the descriptors of one
// cuBLASLt matmul, bf16 conversion for uploads. Internal to the engine.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"

namespace gdnserve::cuda_device {

// A failed CUDA call as a Status naming it (ResourceExhausted for an
// allocation failure, Internal otherwise); Ok on success.
absl::Status CudaStatus(cudaError_t e, const char* what);
absl::Status CublasStatus(cublasStatus_t e, const char* what);

// Returns the Status of a failed CUDA / cuBLAS call from the enclosing function.
#define GDN_CUDA_RETURN(expr)                                                                      \
  do {                                                                                             \
    if (absl::Status s_ = ::gdnserve::cuda_device::CudaStatus((expr), #expr); !s_.ok()) return s_; \
  } while (0)
#define GDN_CUBLAS_RETURN(expr)                                                                      \
  do {                                                                                               \
    if (absl::Status s_ = ::gdnserve::cuda_device::CublasStatus((expr), #expr); !s_.ok()) return s_; \
  } while (0)

// float32 -> bf16 bits, round to nearest even (NaN stays NaN).
uint16_t ToBf16(float f);

// The descriptors of one cuBLASLt matmul c[m, n] = a[m, k] . w[n, k]^T
// (column-major view: C^T [n, m] = W^T' [n, k] . A^T [k, m]).
class LtMatmul {
 public:
  LtMatmul(cudaDataType_t t, int64_t m, int64_t n, int64_t k, int64_t lda, int64_t ldc);
  LtMatmul(const LtMatmul&) = delete;
  LtMatmul& operator=(const LtMatmul&) = delete;
  ~LtMatmul();
  bool ok() const { return ok_; }
  cublasLtMatmulDesc_t op_ = nullptr;
  cublasLtMatrixLayout_t a_ = nullptr, b_ = nullptr, c_ = nullptr;

 private:
  bool ok_ = false;
};

// The alignment every row of a matrix with `ld` elements of `elem` bytes
// keeps (its base from cudaMalloc is 256-byte aligned).
uint32_t RowAlignment(int64_t ld, int64_t elem);

// A grow-only device allocation.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer();
  absl::Status Reserve(size_t bytes);
  template <typename T = void>
  T* get() const {
    return static_cast<T*>(ptr_);
  }
  float* f() const { return static_cast<float*>(ptr_); }
  size_t bytes() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

}  // namespace gdnserve::cuda_device
