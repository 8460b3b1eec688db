// Shared by the CUDA tests: whether this machine has a usable GPU (the tests
// skip cleanly where it has none, as in CI).
#pragma once

#include <cuda_runtime.h>

namespace gdnserve::testing {

inline bool HaveGpu() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no device" error
    return false;
  }
  return n > 0;
}

}  // namespace gdnserve::testing
