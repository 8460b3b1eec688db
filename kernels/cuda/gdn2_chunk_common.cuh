// Shared by the chunkwise GDN-2 kernels (gdn2_chunk.cu, gdn2_chunk_wy.cu):
// activations and the loading of a chunk's key-side inputs.
#pragma once

#include "kernels/cuda/ops.h"

namespace gdnserve::cuda::chunk_common {

constexpr int kC = 64;       // tokens a chunk
constexpr int kMaxK = 128;   // key head size the kernels take

// Fast exponentials (a few ulp: far inside every tolerance) with log1p kept
// for softplus's small values and a correctly rounded reciprocal.
__device__ __forceinline__ float Softplus(float x) { return x > 20.0f ? x : log1pf(__expf(x)); }
__device__ __forceinline__ float Sigmoid(float x) { return __frcp_rn(1.0f + __expf(-x)); }

// A chunk of n <= kC tokens from t0, key head hk, into shared rows of stride
// ks: the per-token log decays g (not yet summed) into sG, q^ (L2-normalised,
// scaled) into sQ, k^ into sK, e = b * k^ into sE; rows n..kC-1 zero. Every
// thread of the kThreads-thread block calls it; no synchronisation inside.
template <int kThreads>
__device__ void LoadKeySide(const Gdn2RecurrentArgs& a, int64_t t0, int n, int hk, int ks, float* sQ, float* sK,
                            float* sE, float* sG) {
  const int K = a.K, tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const float neg_a = -expf(a.a_log[hk]);
  const float bscale = a.allow_neg_eigval ? 2.0f : 1.0f;
  for (int i = tid; i < kC * K; i += kThreads) {
    const int t = i / K, c = i % K;
    float g = 0.0f;
    if (t < n) g = neg_a * Softplus(a.g[(t0 + t) * a.g_stride + hk * K + c] + a.dt_bias[hk * K + c]);
    sG[t * ks + c] = g;
  }
  for (int t = warp; t < kC; t += kThreads / 32) {
    float q[kMaxK / 32], k[kMaxK / 32], b[kMaxK / 32];
    float qq = 0.0f, kk = 0.0f;
#pragma unroll
    for (int r = 0; r < kMaxK / 32; ++r) {
      const int c = r * 32 + lane;
      const bool ok = t < n && c < K;
      q[r] = ok ? a.q[(t0 + t) * a.qk_stride + hk * K + c] : 0.0f;
      k[r] = ok ? a.k[(t0 + t) * a.qk_stride + hk * K + c] : 0.0f;
      b[r] = ok ? Sigmoid(a.b[(t0 + t) * a.b_stride + hk * K + c]) * bscale : 0.0f;
      qq += q[r] * q[r];
      kk += k[r] * k[r];
    }
    for (int o = 16; o > 0; o >>= 1) {
      qq += __shfl_xor_sync(0xffffffffu, qq, o);
      kk += __shfl_xor_sync(0xffffffffu, kk, o);
    }
    const float rq = a.scale / sqrtf(qq + 1e-6f), rk = 1.0f / sqrtf(kk + 1e-6f);
#pragma unroll
    for (int r = 0; r < kMaxK / 32; ++r) {
      const int c = r * 32 + lane;
      if (c < K) {
        sQ[t * ks + c] = q[r] * rq;
        sK[t * ks + c] = k[r] * rk;
        sE[t * ks + c] = b[r] * k[r] * rk;
      }
    }
  }
}

// Z = sigmoid(w) * v for the chunk's n tokens from t0, value head hv,
// columns [v0, v0 + nv), into sZ [kC][zs]; other entries zero.
template <int kThreads, int kTileV>
__device__ void LoadValues(const Gdn2RecurrentArgs& a, int64_t t0, int n, int hv, int v0, int nv, float* sZ,
                           int zs) {
  for (int i = threadIdx.x; i < kC * kTileV; i += kThreads) {
    const int t = i / kTileV, j = i % kTileV;
    float z = 0.0f;
    if (t < n && j < nv) {
      const int64_t col = static_cast<int64_t>(hv) * a.V + v0 + j;
      z = Sigmoid(a.w[(t0 + t) * a.w_stride + col]) * a.v[(t0 + t) * a.v_stride + col];
    }
    sZ[t * zs + j] = z;
  }
}

// sG rows (stride ks) <- the inclusive cumulative sum over the chunk's n
// tokens, rows n..kC-1 the total; sGC <- the total (G_C).
template <int kThreads>
__device__ void CumulativeDecay(float* sG, int ks, int n, int K, float* sGC) {
  for (int c = threadIdx.x; c < K; c += kThreads) {
    float acc = 0.0f;
    for (int t = 0; t < n; ++t) {
      acc += sG[t * ks + c];
      sG[t * ks + c] = acc;
    }
    for (int t = n; t < kC; ++t) sG[t * ks + c] = acc;
    sGC[c] = acc;
  }
}

// A (strictly lower) and M (lower with the diagonal), row stride as, from
// the chunk's q^, k^, e and cumulative decays G, each decay taken pairwise
// (exp(G_t - G_i), never a positive exponent: a token may have g = -100).
// Rows n..kC-1 zero.
template <int kThreads>
__device__ void PairwiseAM(const float* sQ, const float* sK, const float* sE, const float* sG, int ks, int n, int K,
                           float* sA, float* sM, int as) {
  for (int p = threadIdx.x; p < kC * kC; p += kThreads) {
    const int t = p / kC, i = p % kC;
    float av = 0.0f, mv = 0.0f;
    if (i <= t && t < n) {
      const float* qt = sQ + t * ks;
      const float* et = sE + t * ks;
      const float* gt = sG + t * ks;
      const float* ki = sK + i * ks;
      const float* gi = sG + i * ks;
      for (int c = 0; c < K; ++c) {
        // Exponents are <= 0 (>= -100 per token): the fast exp's error,
        // ~|x| * 2^-24 relative, stays far below the 1e-4 budget.
        const float kd = ki[c] * __expf(gt[c] - gi[c]);
        av += et[c] * kd;
        mv += qt[c] * kd;
      }
      if (i == t) av = 0.0f;
    }
    sA[t * as + i] = av;
    sM[t * as + i] = mv;
  }
}

// A block's tile of kTileV value rows [v0, v0 + nv) of a head's state S
// ([V][K] in its slot) into shared rows of stride ks (rows past nv zero),
// and back.
template <int kThreads, int kTileV>
__device__ void LoadStateTile(const float* S, int K, int v0, int nv, float* sS, int ks) {
  for (int i = threadIdx.x; i < kTileV * K; i += kThreads) {
    const int j = i / K, c = i % K;
    sS[j * ks + c] = j < nv ? S[static_cast<int64_t>(v0 + j) * K + c] : 0.0f;
  }
}
template <int kThreads>
__device__ void StoreStateTile(const float* sS, int ks, int K, int v0, int nv, float* S) {
  for (int i = threadIdx.x; i < nv * K; i += kThreads) {
    const int j = i / K, c = i % K;
    S[static_cast<int64_t>(v0 + j) * K + c] = sS[j * ks + c];
  }
}

// The end of a chunk of n tokens from t0 for value head hv, columns
// [v0, v0 + nv): O = O1 + M N written out, then S <- Diag(decay) S + K^^T N
// (decay = e^(G_C)). sO, sN: [kC][zs]; sM: [kC][as]; sK, sS: rows of stride
// ks. The two loops touch different buffers: no synchronisation between them.
template <int kThreads, int kTileV>
__device__ void FinishChunk(const Gdn2RecurrentArgs& a, int64_t t0, int n, int hv, int v0, int nv, const float* sM,
                            int as, const float* sO, const float* sN, int zs, const float* sK, int ks,
                            const float* decay, float* sS) {
  const int K = a.K;
  for (int i = threadIdx.x; i < n * kTileV; i += kThreads) {
    const int t = i / kTileV, j = i % kTileV;
    if (j >= nv) continue;
    const float* mt = sM + t * as;
    float o = sO[t * zs + j];
    for (int s = 0; s <= t; ++s) o += mt[s] * sN[s * zs + j];
    a.out[(t0 + t) * a.out_stride + static_cast<int64_t>(hv) * a.V + v0 + j] = o;
  }
  for (int i = threadIdx.x; i < kTileV * K; i += kThreads) {
    const int j = i / K, c = i % K;
    float s = sS[j * ks + c] * decay[c];
    for (int t = 0; t < n; ++t) s += sK[t * ks + c] * sN[t * zs + j];
    sS[j * ks + c] = s;
  }
}

}  // namespace gdnserve::cuda::chunk_common
