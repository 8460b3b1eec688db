#include "kernels/cpu/linear.h"

#include <cblas.h>

#include <algorithm>
#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace gdnserve::cpu {
namespace {

// Decode-sized batches: y = x W^T for a few rows. sgemm would pack (copy) the
// whole weight matrix first, tripling the memory traffic of a step that is
// bound by reading the weights; here each weight row is read once and used
// for every input row while it sits in L1.
constexpr int64_t kSmallBatch = 8;

#if defined(__AVX2__) && defined(__FMA__)
inline float HorizontalSum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
#endif

// dot(x_k, w) for R input rows x_k (R <= 4), one pass over w.
template <int R>
inline void DotRows(const float* const* xs, const float* w, int64_t n, float* out) {
  int64_t i = 0;
  float tail[4] = {0, 0, 0, 0};
#if defined(__AVX2__) && defined(__FMA__)
  __m256 acc[R];
  for (int k = 0; k < R; ++k) acc[k] = _mm256_setzero_ps();
  for (; i + 8 <= n; i += 8) {
    const __m256 wv = _mm256_loadu_ps(w + i);
    for (int k = 0; k < R; ++k) acc[k] = _mm256_fmadd_ps(_mm256_loadu_ps(xs[k] + i), wv, acc[k]);
  }
  for (int k = 0; k < R; ++k) tail[k] = HorizontalSum(acc[k]);
#endif
  for (; i < n; ++i) {
    for (int k = 0; k < R; ++k) tail[k] += xs[k][i] * w[i];
  }
  for (int k = 0; k < R; ++k) out[k] = tail[k];
}

void SmallBatchLinear(const float* x, int64_t x_stride, int64_t T, int64_t n_in, const float* W,
                      int64_t n_out, float* y, int64_t y_stride, bool accumulate) {
  const bool parallel = n_out * n_in >= (1 << 16);
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t n = 0; n < n_out; ++n) {
    const float* w = W + n * n_in;
    for (int64_t t = 0; t < T; t += 4) {
      const int r = static_cast<int>(std::min<int64_t>(4, T - t));
      const float* xs[4];
      for (int k = 0; k < r; ++k) xs[k] = x + (t + k) * x_stride;
      float acc[4];
      switch (r) {
        case 1: DotRows<1>(xs, w, n_in, acc); break;
        case 2: DotRows<2>(xs, w, n_in, acc); break;
        case 3: DotRows<3>(xs, w, n_in, acc); break;
        default: DotRows<4>(xs, w, n_in, acc); break;
      }
      for (int k = 0; k < r; ++k) {
        float& out = y[(t + k) * y_stride + n];
        out = accumulate ? out + acc[k] : acc[k];
      }
    }
  }
}

}  // namespace

void Linear(const float* x, int64_t x_stride, int64_t T, int64_t n_in, const float* W,
            int64_t n_out, const float* bias, float* y, int64_t y_stride, bool accumulate, bool row_invariant) {
  if (T == 0) return;
  float beta = accumulate ? 1.0f : 0.0f;
  if (bias != nullptr) {
    for (int64_t t = 0; t < T; ++t) {
      float* yr = y + t * y_stride;
      for (int64_t j = 0; j < n_out; ++j) yr[j] = accumulate ? yr[j] + bias[j] : bias[j];
    }
    beta = 1.0f;
  }
  if (T <= kSmallBatch && !row_invariant) {
    SmallBatchLinear(x, x_stride, T, n_in, W, n_out, y, y_stride, beta != 0.0f);
    return;
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(T), static_cast<int>(n_out),
              static_cast<int>(n_in), 1.0f, x, static_cast<int>(x_stride), W,
              static_cast<int>(n_in), beta, y, static_cast<int>(y_stride));
}

void SetBlasThreads(int n) {
  if (n > 0) openblas_set_num_threads(n);
}

}  // namespace gdnserve::cpu
