#include "kernels/cpu/linear.h"

#include <cblas.h>

namespace gdnserve::cpu {

void Linear(const float* x, int64_t x_stride, int64_t T, int64_t n_in, const float* W,
            int64_t n_out, const float* bias, float* y, int64_t y_stride, bool accumulate) {
  if (T == 0) return;
  float beta = accumulate ? 1.0f : 0.0f;
  if (bias != nullptr) {
    for (int64_t t = 0; t < T; ++t) {
      float* yr = y + t * y_stride;
      for (int64_t j = 0; j < n_out; ++j) yr[j] = accumulate ? yr[j] + bias[j] : bias[j];
    }
    beta = 1.0f;
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(T), static_cast<int>(n_out),
              static_cast<int>(n_in), 1.0f, x, static_cast<int>(x_stride), W,
              static_cast<int>(n_in), beta, y, static_cast<int>(y_stride));
}

void SetBlasThreads(int n) {
  if (n > 0) openblas_set_num_threads(n);
}

}  // namespace gdnserve::cpu
