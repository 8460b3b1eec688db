// GDN-2 chunkwise prefill on the GPU (ops.h: Gdn2Chunked), float32 SIMT.
// The twin of kernels/cpu/gdn2.cc's Gdn2ChunkedHead, with the gates and q/k
// norms fused. DESIGN.md 1.3, per chunk of c <= 64 tokens with S0 the state
// at its start and G the within-chunk inclusive cumulative log decay:
//   A_ti = sum_c e_t k_i exp(G_t - G_i)  (i < t),  M_ti = sum_c q_t k_i exp(G_t - G_i)  (i <= t)
//   N = (I + A)^-1 (Z - E~ S0),  O = Q~ S0 + M N,  S_C = exp(G_C) S0 + K^^T N
// A and M take their decays pairwise, so no exponent is ever positive (a
// token may have g = -100). The engine's default is the tensor-core kernel
// (gdn2_chunk_wy.cu); this one stays as `--prefill-kernel chunk-simt`.
//
// A block per (piece, value head, tile of kTileV value rows) keeps its state
// tile in shared memory across the piece's chunks; the key-side work (A, M)
// is repeated by the V / kTileV tiles of a head.
#include <algorithm>

#include "kernels/cuda/gdn2_chunk_common.cuh"
#include "kernels/cuda/ops.h"

namespace gdnserve::cuda {
namespace {

using chunk_common::kC;
using chunk_common::kMaxK;
using chunk_common::Sigmoid;
using chunk_common::Softplus;
constexpr int kTileV = 64;    // value rows per block (a lane per row solves them)
constexpr int kThreads = 256;

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

struct Smem {
  // Row strides padded by one float: rows map to different banks.
  // G's space also holds O1 [kC][kTileV + 1] later.
  static constexpr size_t GFloats(int K) { return kC * static_cast<size_t>(K + 1 > kTileV + 1 ? K + 1 : kTileV + 1); }
  static constexpr size_t Floats(int K) {
    const size_t ks = K + 1;
    return 3 * kC * ks          // Q, Kk, E
           + GFloats(K)         // G, later O1
           + 2 * kC * (kC + 1)  // A, M
           + kTileV * ks        // S tile, [v][c]
           + kC * (kTileV + 1)  // Z, then R, then N
           + ks;                // G_C
  }
};

__global__ void __launch_bounds__(kThreads, 1) Gdn2ChunkKernel(Gdn2RecurrentArgs a) {
  extern __shared__ float smem[];
  const int K = a.K, V = a.V, ks = K + 1;
  float* sQ = smem;
  float* sK = sQ + kC * ks;
  float* sE = sK + kC * ks;
  float* sG = sE + kC * ks;
  float* sA = sG + Smem::GFloats(K);
  float* sM = sA + kC * (kC + 1);
  float* sS = sM + kC * (kC + 1);
  float* sZ = sS + kTileV * ks;
  float* sGC = sZ + kC * (kTileV + 1);
  float* sO = sG;  // O1 = Q~ S0 reuses G once the decays are applied
  constexpr int zs = kTileV + 1;

  const int piece = a.piece_list ? a.piece_list[blockIdx.z] : static_cast<int>(blockIdx.z);
  const int hv = blockIdx.y;
  const int v0 = blockIdx.x * kTileV;
  const int nv = min(kTileV, V - v0);
  const int hk = hv / (a.HV / a.H);
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int64_t p0 = a.pieces.start[piece], p1 = a.pieces.start[piece + 1];
  float* S = a.state.base + a.pieces.slot[piece] * a.state.slot_stride + a.state.recurrent_offset +
             static_cast<int64_t>(hv) * V * K;

  LoadStateTile<kThreads, kTileV>(S, K, v0, nv, sS, ks);

  for (int64_t t0 = p0; t0 < p1; t0 += kC) {
    const int n = static_cast<int>(p1 - t0 < kC ? p1 - t0 : kC);
    // 1. Inputs of the chunk, activated; rows n..63 zero.
    LoadKeySide<kThreads>(a, t0, n, hk, ks, sQ, sK, sE, sG);
    LoadValues<kThreads, kTileV>(a, t0, n, hv, v0, nv, sZ, zs);
    __syncthreads();
    // Inclusive cumulative decay per channel.
    CumulativeDecay<kThreads>(sG, ks, n, K, sGC);
    __syncthreads();

    // 2. A (strictly lower) and M (lower with the diagonal), pairwise decays.
    PairwiseAM<kThreads>(sQ, sK, sE, sG, ks, n, K, sA, sM, kC + 1);
    __syncthreads();

    // 3. Decays into the factors: Q~ = q e^G, E~ = e e^G, K^ = k e^(G_C - G).
    for (int i = tid; i < kC * K; i += kThreads) {
      const int t = i / K, c = i % K;
      const float g = sG[t * ks + c];
      const float eg = expf(g);
      sQ[t * ks + c] *= eg;
      sE[t * ks + c] *= eg;
      sK[t * ks + c] *= expf(sGC[c] - g);
    }
    __syncthreads();

    // 4. R = Z - E~ S0 (into Z) and O1 = Q~ S0 (into the G space).
    for (int i = tid; i < kC * kTileV; i += kThreads) {
      const int t = i / kTileV, j = i % kTileV;
      const float* et = sE + t * ks;
      const float* qt = sQ + t * ks;
      const float* sj = sS + j * ks;
      float r = 0.0f, o = 0.0f;
      for (int c = 0; c < K; ++c) {
        r += et[c] * sj[c];
        o += qt[c] * sj[c];
      }
      sZ[t * zs + j] -= r;
      sO[t * zs + j] = o;
    }
    for (int c = tid; c < K; c += kThreads) sGC[c] = expf(sGC[c]);  // G_C's last use: e^(G_C) from here
    __syncthreads();

    // 5. N = (I + A)^-1 R by forward substitution, a lane per value row.
    if (warp < kTileV / 32) {
      const int j = warp * 32 + lane;
      for (int t = 1; t < n; ++t) {
        const float* at = sA + t * (kC + 1);
        float acc0 = 0.0f, acc1 = 0.0f;
        int i = 0;
        for (; i + 1 < t; i += 2) {
          acc0 += at[i] * sZ[i * zs + j];
          acc1 += at[i + 1] * sZ[(i + 1) * zs + j];
        }
        if (i < t) acc0 += at[i] * sZ[i * zs + j];
        sZ[t * zs + j] -= acc0 + acc1;
      }
    }
    __syncthreads();

    // 6. O = O1 + M N, written out; 7. S <- e^(G_C) S + K^^T N.
    FinishChunk<kThreads, kTileV>(a, t0, n, hv, v0, nv, sM, kC + 1, sO, sZ, zs, sK, ks, sGC, sS);
    __syncthreads();
  }

  StoreStateTile<kThreads>(sS, ks, K, v0, nv, S);
}

}  // namespace

bool Gdn2ChunkSupported(int K) {
  return K >= 1 && K <= kMaxK && chunk_common::OptinSharedBytes() >= Smem::Floats(K) * sizeof(float);
}

cudaError_t Gdn2Chunked(const Gdn2RecurrentArgs& a, cudaStream_t stream) {
  const int blocks_z = a.piece_list ? a.num_listed : a.pieces.num_pieces;
  if (blocks_z == 0) return cudaSuccess;
  if (a.io != DType::kF32 || a.H <= 0 || a.HV % a.H != 0 || a.V <= 0 || a.K < 1 || a.K > kMaxK || blocks_z > 65535 ||
      a.HV > 65535) {
    return cudaErrorInvalidValue;
  }
  const size_t bytes = Smem::Floats(a.K) * sizeof(float);
  if (cudaError_t e = chunk_common::AllowSharedBytes(Gdn2ChunkKernel, bytes); e != cudaSuccess) return e;
  const dim3 grid((a.V + kTileV - 1) / kTileV, a.HV, blocks_z);
  Gdn2ChunkKernel<<<grid, kThreads, bytes, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace gdnserve::cuda
