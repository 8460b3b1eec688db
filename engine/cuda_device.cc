#include "engine/cuda_device.h"

#include <cstring>
#include <string>

#include "absl/strings/str_format.h"

namespace gdnserve::cuda_device {

absl::Status CudaStatus(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return absl::OkStatus();
  const std::string msg = absl::StrFormat("CUDA error in %s: %s (%s)", what, cudaGetErrorName(e), cudaGetErrorString(e));
  return e == cudaErrorMemoryAllocation ? absl::ResourceExhaustedError(msg) : absl::InternalError(msg);
}

absl::Status CublasStatus(cublasStatus_t e, const char* what) {
  if (e == CUBLAS_STATUS_SUCCESS) return absl::OkStatus();
  return absl::InternalError(absl::StrFormat("cuBLAS error in %s: %s", what, cublasGetStatusString(e)));
}

uint16_t ToBf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

LtMatmul::LtMatmul(cudaDataType_t t, int64_t m, int64_t n, int64_t k, int64_t lda, int64_t ldc) {
  ok_ = cublasLtMatmulDescCreate(&op_, CUBLAS_COMPUTE_32F, CUDA_R_32F) == CUBLAS_STATUS_SUCCESS;
  const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  ok_ = ok_ && cublasLtMatmulDescSetAttribute(op_, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)) == CUBLAS_STATUS_SUCCESS;
  ok_ = ok_ && cublasLtMatmulDescSetAttribute(op_, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)) == CUBLAS_STATUS_SUCCESS;
  ok_ = ok_ && cublasLtMatrixLayoutCreate(&a_, t, k, n, k) == CUBLAS_STATUS_SUCCESS;
  ok_ = ok_ && cublasLtMatrixLayoutCreate(&b_, t, k, m, lda) == CUBLAS_STATUS_SUCCESS;
  ok_ = ok_ && cublasLtMatrixLayoutCreate(&c_, CUDA_R_32F, n, m, ldc) == CUBLAS_STATUS_SUCCESS;
}

LtMatmul::~LtMatmul() {
  if (c_ != nullptr) cublasLtMatrixLayoutDestroy(c_);
  if (b_ != nullptr) cublasLtMatrixLayoutDestroy(b_);
  if (a_ != nullptr) cublasLtMatrixLayoutDestroy(a_);
  if (op_ != nullptr) cublasLtMatmulDescDestroy(op_);
}

uint32_t RowAlignment(int64_t ld, int64_t elem) {
  const int64_t bytes = ld * elem;
  uint32_t a = 256;
  while (a > 1 && bytes % a != 0) a >>= 1;
  return a;
}

DeviceBuffer::~DeviceBuffer() {
  if (ptr_ != nullptr) cudaFree(ptr_);
}

absl::Status DeviceBuffer::Reserve(size_t bytes) {
  if (bytes <= bytes_) return absl::OkStatus();
  if (ptr_ != nullptr) cudaFree(ptr_);
  ptr_ = nullptr;
  bytes_ = 0;
  GDN_CUDA_RETURN(cudaMalloc(&ptr_, bytes));
  bytes_ = bytes;
  return absl::OkStatus();
}

}  // namespace gdnserve::cuda_device
