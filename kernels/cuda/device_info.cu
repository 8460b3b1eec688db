#include "kernels/cuda/device_info.h"

#include <cuda_runtime.h>

namespace gdnserve::cuda {
namespace {

__global__ void SaxpyKernel(float a, const float* x, float* y, size_t n) {
  const size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x;
  if (i < n) y[i] = a * x[i] + y[i];
}

bool Check(cudaError_t e, const char* what, std::string* error) {
  if (e == cudaSuccess) return true;
  *error = std::string(what) + ": " + cudaGetErrorString(e);
  return false;
}

}  // namespace

int QueryDevices(DeviceInfo* first, std::string* error) {
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) {
    if (e != cudaErrorNoDevice && e != cudaErrorInsufficientDriver) *error = cudaGetErrorString(e);
    cudaGetLastError();  // clear the sticky error of a failed query
    return 0;
  }
  if (count > 0 && first != nullptr) {
    cudaDeviceProp p{};
    if (!Check(cudaGetDeviceProperties(&p, 0), "cudaGetDeviceProperties", error)) return 0;
    first->name = p.name;
    first->sm_major = p.major;
    first->sm_minor = p.minor;
    first->total_bytes = p.totalGlobalMem;
  }
  return count;
}

bool SaxpyOnDevice(float a, const float* x, float* y, size_t n, std::string* error) {
  float* dx = nullptr;
  float* dy = nullptr;
  const size_t bytes = n * sizeof(float);
  bool ok = Check(cudaMalloc(&dx, bytes), "cudaMalloc", error) && Check(cudaMalloc(&dy, bytes), "cudaMalloc", error) &&
            Check(cudaMemcpy(dx, x, bytes, cudaMemcpyHostToDevice), "cudaMemcpy", error) &&
            Check(cudaMemcpy(dy, y, bytes, cudaMemcpyHostToDevice), "cudaMemcpy", error);
  if (ok) {
    const unsigned blocks = static_cast<unsigned>((n + 255) / 256);
    SaxpyKernel<<<blocks, 256>>>(a, dx, dy, n);
    ok = Check(cudaGetLastError(), "SaxpyKernel launch", error) &&
         Check(cudaMemcpy(y, dy, bytes, cudaMemcpyDeviceToHost), "cudaMemcpy", error);
  }
  cudaFree(dx);
  cudaFree(dy);
  return ok;
}

}  // namespace gdnserve::cuda
