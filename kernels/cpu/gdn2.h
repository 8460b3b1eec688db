// GDN-2 recurrence on the CPU for one value head: the plain per-token form
// (the definition, DESIGN.md 1.2) and the chunkwise form (DESIGN.md 1.3).
//
// Inputs are already activated: q (L2-normalised and scaled), k
// (L2-normalised), g (log decay, <= 0), b (erase gate), v, w (write gate).
// The state is S transposed, ST: [V][K] float32 (row v is column v of S), so
// every per-row operation is contiguous over K.
#pragma once

#include <cstdint>

namespace gdnserve::cpu {

// Each array holds T rows (K or V floats) with its own row stride in elements,
// so heads can be read in place from packed [T, channels] activations.
struct Gdn2HeadInputs {
  const float* q;  // [T] rows of K
  const float* k;  // [T] rows of K
  const float* g;  // [T] rows of K
  const float* b;  // [T] rows of K
  const float* v;  // [T] rows of V
  const float* w;  // [T] rows of V
  int64_t q_stride, k_stride, g_stride, b_stride, v_stride, w_stride;

  // The same arrays advanced by t0 rows.
  Gdn2HeadInputs Offset(int64_t t0) const {
    return {q + t0 * q_stride, k + t0 * k_stride, g + t0 * g_stride, b + t0 * b_stride,
            v + t0 * v_stride, w + t0 * w_stride, q_stride, k_stride, g_stride, b_stride,
            v_stride, w_stride};
  }
};

// Per token: S <- Diag(exp g) S; u = S^T (b*k); S <- S + k (w*v - u)^T; o = S^T q.
// state: ST [V][K], updated in place. out: [T] rows of V, row stride out_stride.
void Gdn2RecurrentHead(const Gdn2HeadInputs& in, int64_t T, int K, int V, float* state,
                       float* out, int64_t out_stride);

// Same result, computed a chunk of kGdn2Chunk tokens at a time with 16-token
// sub-chunks: off-diagonal sub-blocks factor through a reference position
// between them (both factors <= 1), diagonal sub-blocks are pairwise, the
// triangular solve is a float32 forward substitution, cumulative log decays
// are kept in double so that differences of large sums stay exact.
void Gdn2ChunkedHead(const Gdn2HeadInputs& in, int64_t T, int K, int V, float* state,
                     float* out, int64_t out_stride);

inline constexpr int kGdn2Chunk = 64;
inline constexpr int kGdn2SubChunk = 16;

}  // namespace gdnserve::cpu
