// Attributes of the current CUDA device for launch decisions, asked once per
// device and thread instead of on every launch.
#pragma once

#include <cuda_runtime.h>

namespace gdnserve::cuda {

// kAttr of the current device; `fallback` when there is no usable device or
// the query fails (the error is cleared, nothing is cached then).
template <cudaDeviceAttr kAttr>
int CurrentDeviceAttribute(int fallback) {
  thread_local int cached_dev = -1, cached = 0;
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) {
    cudaGetLastError();
    return fallback;
  }
  if (dev != cached_dev) {
    int value = 0;
    if (cudaDeviceGetAttribute(&value, kAttr, dev) != cudaSuccess) {
      cudaGetLastError();
      return fallback;
    }
    cached_dev = dev;
    cached = value;
  }
  return cached;
}

}  // namespace gdnserve::cuda
