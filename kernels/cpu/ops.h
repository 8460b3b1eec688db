// Element-wise and row-wise CPU ops of the GDN-2 block. Row-major float32,
// shapes in the comments; nothing here allocates.
#pragma once

#include <cstdint>

namespace gdnserve::cpu {

// out[t] = x[t] / sqrt(mean(x[t]^2) + eps) * weight.  x, out: [T, d]. In place OK.
void RmsNorm(const float* x, const float* weight, int64_t T, int64_t d, float eps, float* out);

// Causal depthwise conv1d (kernel W) followed by SiLU, for one sequence.
//   x:     [T, C] pre-conv inputs, row stride x_stride (elements)
//   w:     [C, W] taps; tap W-1 multiplies the current token
//   state: [W-1, C] the previous W-1 inputs (row 0 oldest); updated to the
//          last W-1 inputs of x (or of state+x when T < W-1)
//   out:   [T, C], row stride out_stride. out may not alias x.
void CausalConv1dSilu(const float* x, int64_t x_stride, const float* w, int64_t T, int64_t C,
                      int W, float* state, float* out, int64_t out_stride);

// Per head of width K in rows of [T, H*K]: x <- x / sqrt(|x|^2 + 1e-6) * scale.
void L2NormHeads(float* x, int64_t T, int64_t H, int64_t K, float scale);

// GDN-2 gates, in place, rows of [T, key_dim] / [T, value_dim]:
//   g <- -exp(A_log[h]) * softplus(g + dt_bias)   (per key channel, head h = c / K)
//   b <- sigmoid(b) * (allow_neg_eigval ? 2 : 1)
//   w <- sigmoid(w)
void Gdn2Gates(float* g, float* b, int64_t T, int64_t H, int64_t K, const float* a_log,
               const float* dt_bias, bool allow_neg_eigval, float* w, int64_t value_dim);

// Gated RMSNorm per value head: o <- o / sqrt(mean(o^2) + eps) * weight * silu(z).
//   o, z: [T, HV*V]; weight: [V] shared by all heads.
void GatedRmsNorm(float* o, const float* z, const float* weight, int64_t T, int64_t HV, int64_t V,
                  float eps);

// SwiGLU activation: out[t, j] = silu(gu[t, j]) * gu[t, I + j].  gu: [T, 2I]; out: [T, I].
void SiluMul(const float* gu, int64_t T, int64_t I, float* out);

// y += x, n elements.
void AddInPlace(float* y, const float* x, int64_t n);

float Softplus(float x);

}  // namespace gdnserve::cpu
