#include "kernels/cpu/ops.h"

#include <cmath>
#include <cstring>

namespace gdnserve::cpu {
namespace {

inline float SigmoidF(float x) { return 1.0f / (1.0f + std::exp(-x)); }
inline float SiluF(float x) { return x * SigmoidF(x); }

}  // namespace

float Softplus(float x) { return x > 20.0f ? x : std::log1p(std::exp(x)); }

void RmsNorm(const float* x, const float* weight, int64_t T, int64_t d, float eps, float* out) {
  for (int64_t t = 0; t < T; ++t) {
    const float* xr = x + t * d;
    float* yr = out + t * d;
    float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
    for (int64_t i = 0; i < d; ++i) ss += xr[i] * xr[i];
    const float inv = 1.0f / std::sqrt(ss / static_cast<float>(d) + eps);
#pragma omp simd
    for (int64_t i = 0; i < d; ++i) yr[i] = xr[i] * inv * weight[i];
  }
}

void CausalConv1dSilu(const float* x, int64_t x_stride, const float* w, int64_t T, int64_t C,
                      int W, float* state, float* out, int64_t out_stride) {
  const int hist = W - 1;
  // Input row at position p (p < 0 reads the conv state).
  auto row = [&](int64_t p) -> const float* {
    return p >= 0 ? x + p * x_stride : state + (hist + p) * C;
  };
  for (int64_t t = 0; t < T; ++t) {
    float* y = out + t * out_stride;
    for (int64_t c = 0; c < C; ++c) y[c] = 0.0f;
    for (int j = 0; j < W; ++j) {
      const float* xr = row(t - W + 1 + j);
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) y[c] += w[c * W + j] * xr[c];
    }
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) y[c] = SiluF(y[c]);
  }
  // New state: the last `hist` inputs of [state; x].
  if (T >= hist) {
    for (int i = 0; i < hist; ++i) std::memcpy(state + i * C, x + (T - hist + i) * x_stride, C * sizeof(float));
  } else {
    const int64_t keep = hist - T;  // old rows that stay, shifted up
    std::memmove(state, state + T * C, keep * C * sizeof(float));
    for (int64_t i = 0; i < T; ++i) std::memcpy(state + (keep + i) * C, x + i * x_stride, C * sizeof(float));
  }
}

void L2NormHeads(float* x, int64_t T, int64_t H, int64_t K, float scale) {
  for (int64_t r = 0; r < T * H; ++r) {
    float* v = x + r * K;
    float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
    for (int64_t i = 0; i < K; ++i) ss += v[i] * v[i];
    const float f = scale / std::sqrt(ss + 1e-6f);
#pragma omp simd
    for (int64_t i = 0; i < K; ++i) v[i] *= f;
  }
}

void Gdn2Gates(float* g, float* b, int64_t T, int64_t H, int64_t K, const float* a_log,
               const float* dt_bias, bool allow_neg_eigval, float* w, int64_t value_dim) {
  const int64_t key_dim = H * K;
  const float bscale = allow_neg_eigval ? 2.0f : 1.0f;
  for (int64_t t = 0; t < T; ++t) {
    float* gr = g + t * key_dim;
    float* br = b + t * key_dim;
    for (int64_t h = 0; h < H; ++h) {
      const float a = -std::exp(a_log[h]);
      for (int64_t i = h * K; i < (h + 1) * K; ++i) gr[i] = a * Softplus(gr[i] + dt_bias[i]);
    }
    for (int64_t i = 0; i < key_dim; ++i) br[i] = SigmoidF(br[i]) * bscale;
    float* wr = w + t * value_dim;
    for (int64_t i = 0; i < value_dim; ++i) wr[i] = SigmoidF(wr[i]);
  }
}

void GatedRmsNorm(float* o, const float* z, const float* weight, int64_t T, int64_t HV, int64_t V,
                  float eps) {
  for (int64_t r = 0; r < T * HV; ++r) {
    float* orow = o + r * V;
    const float* zr = z + r * V;
    float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
    for (int64_t i = 0; i < V; ++i) ss += orow[i] * orow[i];
    const float inv = 1.0f / std::sqrt(ss / static_cast<float>(V) + eps);
    for (int64_t i = 0; i < V; ++i) orow[i] = orow[i] * inv * weight[i] * SiluF(zr[i]);
  }
}

void SiluMul(const float* gu, int64_t T, int64_t I, float* out) {
  for (int64_t t = 0; t < T; ++t) {
    const float* gate = gu + t * 2 * I;
    const float* up = gate + I;
    float* y = out + t * I;
    for (int64_t j = 0; j < I; ++j) y[j] = SiluF(gate[j]) * up[j];
  }
}

void AddInPlace(float* y, const float* x, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] += x[i];
}

}  // namespace gdnserve::cpu
