// CUDA device discovery and a smoke kernel. No exit() on failure: errors come
// back as strings for the caller to turn into a Status.
#pragma once

#include <cstddef>
#include <string>

namespace gdnserve::cuda {

struct DeviceInfo {
  std::string name;
  int sm_major = 0;
  int sm_minor = 0;
  size_t total_bytes = 0;
};

// Number of usable CUDA devices (0 without a driver or GPU); fills *first for
// device 0 when there is one. *error explains a 0 that is not "no GPU".
int QueryDevices(DeviceInfo* first, std::string* error);

// y[i] = a * x[i] + y[i] on device 0 for n host floats; false with *error on
// any CUDA failure. Used by the smoke test that proves the toolchain works.
bool SaxpyOnDevice(float a, const float* x, float* y, size_t n, std::string* error);

}  // namespace gdnserve::cuda
