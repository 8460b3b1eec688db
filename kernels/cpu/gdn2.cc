#include "kernels/cpu/gdn2.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace gdnserve::cpu {
namespace {

inline float Dot(const float* a, const float* b, int n) {
  float s = 0.0f;
#pragma omp simd reduction(+ : s)
  for (int i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

inline void Axpy(float alpha, const float* x, float* y, int n) {
#pragma omp simd
  for (int i = 0; i < n; ++i) y[i] += alpha * x[i];
}

// Scratch for one chunk of one head; thread_local so heads can run in parallel.
struct ChunkScratch {
  std::vector<double> G;     // [C][K] inclusive cumulative log decay
  std::vector<float> E;      // [C][K] b * k
  std::vector<float> Et;     // [C][K] e * exp(G)
  std::vector<float> Qt;     // [C][K] q * exp(G)
  std::vector<float> R;      // [S][K] right factors of an off-diagonal block
  std::vector<float> L;      // [K]    left factor scratch
  std::vector<float> A;      // [C][C] strictly lower
  std::vector<float> M;      // [C][C] lower incl. diagonal
  std::vector<float> N;      // [C][V] new values
  std::vector<float> O;      // [C][V] Q~ S0
  std::vector<float> Kh;     // [C][K] k_i * exp(G_C - G_i)
  std::vector<float> decay;  // [K]    exp(G_C)
  void Resize(int K, int V) {
    constexpr int C = kGdn2Chunk;
    G.resize(C * K);
    E.resize(C * K);
    Et.resize(C * K);
    Qt.resize(C * K);
    R.resize(kGdn2SubChunk * K);
    L.resize(2 * K);
    A.resize(C * C);
    M.resize(C * C);
    N.resize(C * V);
    O.resize(C * V);
    Kh.resize(C * K);
    decay.resize(K);
  }
};

// One chunk of c <= kGdn2Chunk tokens starting at the rows the pointers point to.
void Chunk(const Gdn2HeadInputs& in, int c, int K, int V, float* ST, float* out,
           int64_t out_stride, ChunkScratch& s) {
  constexpr int C = kGdn2Chunk;
  constexpr int SC = kGdn2SubChunk;
  auto q = [&](int t) { return in.q + t * in.q_stride; };
  auto k = [&](int t) { return in.k + t * in.k_stride; };
  auto g = [&](int t) { return in.g + t * in.g_stride; };
  auto b = [&](int t) { return in.b + t * in.b_stride; };
  auto v = [&](int t) { return in.v + t * in.v_stride; };
  auto w = [&](int t) { return in.w + t * in.w_stride; };
  double* G = s.G.data();
  float* E = s.E.data();
  float* A = s.A.data();
  float* M = s.M.data();

  for (int t = 0; t < c; ++t) {
    double* Gt = G + t * K;
    const float* gt = g(t);
    for (int i = 0; i < K; ++i) Gt[i] = (t == 0 ? 0.0 : Gt[i - K]) + gt[i];
    const float* bt = b(t);
    const float* kt = k(t);
    for (int i = 0; i < K; ++i) E[t * K + i] = bt[i] * kt[i];
  }
  std::fill(A, A + C * C, 0.0f);
  std::fill(M, M + C * C, 0.0f);

  const int ns = (c + SC - 1) / SC;
  // Diagonal sub-blocks: pairwise, exp(G_t - G_i) <= 1 directly.
  for (int sb = 0; sb < ns; ++sb) {
    const int lo = sb * SC, hi = std::min(lo + SC, c);
    for (int t = lo; t < hi; ++t) {
      const double* Gt = G + t * K;
      const float* et = E + t * K;
      const float* qt = q(t);
      for (int i = lo; i <= t; ++i) {
        const double* Gi = G + i * K;
        const float* ki = k(i);
        float a = 0.0f, m = 0.0f;
#pragma omp simd reduction(+ : a, m)
        for (int x = 0; x < K; ++x) {
          const float kx = ki[x] * std::exp(static_cast<float>(Gt[x] - Gi[x]));
          a += et[x] * kx;
          m += qt[x] * kx;
        }
        if (i < t) A[t * C + i] = a;
        M[t * C + i] = m;
      }
    }
  }
  // Off-diagonal sub-blocks (row block ra > column block cb): factor through
  // r = the last position of block cb, which lies between every i and t.
  float* R = s.R.data();
  float* Le = s.L.data();
  float* Lq = Le + K;
  for (int cb = 0; cb + 1 < ns; ++cb) {
    const int lo = cb * SC;
    const int r = lo + SC - 1;
    const double* Gr = G + r * K;
    for (int i = lo; i <= r; ++i) {
      const double* Gi = G + i * K;
      const float* ki = k(i);
      for (int x = 0; x < K; ++x) R[(i - lo) * K + x] = ki[x] * std::exp(static_cast<float>(Gr[x] - Gi[x]));
    }
    for (int t = r + 1; t < c; ++t) {
      const double* Gt = G + t * K;
      const float* et = E + t * K;
      const float* qt = q(t);
      for (int x = 0; x < K; ++x) {
        const float f = std::exp(static_cast<float>(Gt[x] - Gr[x]));
        Le[x] = et[x] * f;
        Lq[x] = qt[x] * f;
      }
      for (int i = lo; i <= r; ++i) {
        A[t * C + i] = Dot(Le, R + (i - lo) * K, K);
        M[t * C + i] = Dot(Lq, R + (i - lo) * K, K);
      }
    }
  }

  // E~ = e * exp(G), Q~ = q * exp(G): decays from the chunk start.
  float* Et = s.Et.data();
  float* Qt = s.Qt.data();
  for (int t = 0; t < c; ++t) {
    const double* Gt = G + t * K;
    const float* qt = q(t);
    for (int x = 0; x < K; ++x) {
      const float f = std::exp(static_cast<float>(Gt[x]));
      Et[t * K + x] = E[t * K + x] * f;
      Qt[t * K + x] = qt[x] * f;
    }
  }
  // N rows start as Z - E~ S0; O rows as Q~ S0 (S0 = ST^T: products with ST
  // transposed, one sgemm each; inside the engine's per-head OpenMP loop
  // OpenBLAS runs them on the calling thread).
  float* N = s.N.data();
  float* O = s.O.data();
  for (int t = 0; t < c; ++t) {
    const float* vt = v(t);
    const float* wt = w(t);
    for (int j = 0; j < V; ++j) N[t * V + j] = wt[j] * vt[j];
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, c, V, K, -1.0f, Et, K, ST, K, 1.0f, N, V);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, c, V, K, 1.0f, Qt, K, ST, K, 0.0f, O, V);
  // (I + A) N = Z - E~ S0 by forward substitution (float32).
  for (int t = 1; t < c; ++t) {
    float* nt = N + t * V;
    for (int i = 0; i < t; ++i) Axpy(-A[t * C + i], N + i * V, nt, V);
  }
  // O += M N (M is zero above its diagonal).
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, c, V, c, 1.0f, M, C, N, V, 1.0f, O, V);
  for (int t = 0; t < c; ++t) std::copy(O + t * V, O + (t + 1) * V, out + t * out_stride);
  // S_C = Diag(exp(G_C)) S0 + K^^T N, with K^ rows k_i * exp(G_C - G_i).
  const double* GC = G + (c - 1) * K;
  float* Kh = s.Kh.data();
  for (int i = 0; i < c; ++i) {
    const double* Gi = G + i * K;
    const float* ki = k(i);
    for (int x = 0; x < K; ++x) Kh[i * K + x] = ki[x] * std::exp(static_cast<float>(GC[x] - Gi[x]));
  }
  float* decay = s.decay.data();
  for (int x = 0; x < K; ++x) decay[x] = std::exp(static_cast<float>(GC[x]));
  for (int j = 0; j < V; ++j) {
    float* row = ST + static_cast<int64_t>(j) * K;
#pragma omp simd
    for (int x = 0; x < K; ++x) row[x] *= decay[x];
  }
  // ST += N^T K^.
  cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, V, K, c, 1.0f, N, V, Kh, K, 1.0f, ST, K);
}

}  // namespace

void Gdn2RecurrentHead(const Gdn2HeadInputs& in, int64_t T, int K, int V, float* state,
                       float* out, int64_t out_stride) {
  std::vector<float> scratch(2 * K);
  float* decay = scratch.data();
  float* e = decay + K;
  for (int64_t t = 0; t < T; ++t) {
    const float* q = in.q + t * in.q_stride;
    const float* k = in.k + t * in.k_stride;
    const float* g = in.g + t * in.g_stride;
    const float* b = in.b + t * in.b_stride;
    const float* v = in.v + t * in.v_stride;
    const float* w = in.w + t * in.w_stride;
    for (int x = 0; x < K; ++x) {
      decay[x] = std::exp(g[x]);
      e[x] = b[x] * k[x];
    }
    float* o = out + t * out_stride;
    for (int j = 0; j < V; ++j) {
      float* row = state + static_cast<int64_t>(j) * K;
      float u = 0.0f;
#pragma omp simd reduction(+ : u)
      for (int x = 0; x < K; ++x) {
        row[x] *= decay[x];
        u += row[x] * e[x];
      }
      const float delta = w[j] * v[j] - u;
      float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
      for (int x = 0; x < K; ++x) {
        row[x] += k[x] * delta;
        acc += row[x] * q[x];
      }
      o[j] = acc;
    }
  }
}

void Gdn2ChunkedHead(const Gdn2HeadInputs& in, int64_t T, int K, int V, float* state,
                     float* out, int64_t out_stride) {
  thread_local ChunkScratch scratch;
  scratch.Resize(K, V);
  for (int64_t t0 = 0; t0 < T; t0 += kGdn2Chunk) {
    const int c = static_cast<int>(std::min<int64_t>(kGdn2Chunk, T - t0));
    Chunk(in.Offset(t0), c, K, V, state, out + t0 * out_stride, out_stride, scratch);
  }
}

}  // namespace gdnserve::cpu
