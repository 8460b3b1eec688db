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
constexpr int kTileV = 64;    // value rows per block (a lane per row solves them)
constexpr int kThreads = 256;

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

  chunk_common::LoadStateTile<kThreads, kTileV>(S, K, v0, nv, sS, ks);

  for (int64_t t0 = p0; t0 < p1; t0 += kC) {
    const int n = static_cast<int>(p1 - t0 < kC ? p1 - t0 : kC);
    // 1. Inputs of the chunk, activated; rows n..63 zero.
    chunk_common::LoadKeySide<kThreads>(a, t0, n, hk, ks, sQ, sK, sE, sG);
    chunk_common::LoadValues<kThreads, kTileV>(a, t0, n, hv, v0, nv, sZ, zs);
    __syncthreads();
    // Inclusive cumulative decay per channel.
    chunk_common::CumulativeDecay<kThreads>(sG, ks, n, K, sGC);
    __syncthreads();

    // 2. A (strictly lower) and M (lower with the diagonal), pairwise decays.
    chunk_common::PairwiseAM<kThreads>(sQ, sK, sE, sG, ks, n, K, sA, sM, kC + 1);
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
    chunk_common::FinishChunk<kThreads, kTileV>(a, t0, n, hv, v0, nv, sM, kC + 1, sO, sZ, zs, sK, ks, sGC, sS);
    __syncthreads();
  }

  chunk_common::StoreStateTile<kThreads>(sS, ks, K, v0, nv, S);
}

}  // namespace

bool Gdn2ChunkSupported(int K) {
  if (K < 1 || K > kMaxK) return false;
  int dev = 0, optin = 0;
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return static_cast<size_t>(optin) >= Smem::Floats(K) * sizeof(float);
}

cudaError_t Gdn2Chunked(const Gdn2RecurrentArgs& a, cudaStream_t stream) {
  const int blocks_z = a.piece_list ? a.num_listed : a.pieces.num_pieces;
  if (blocks_z == 0) return cudaSuccess;
  if (a.H <= 0 || a.HV % a.H != 0 || a.V <= 0 || a.K < 1 || a.K > kMaxK || blocks_z > 65535 || a.HV > 65535) {
    return cudaErrorInvalidValue;
  }
  const size_t bytes = Smem::Floats(a.K) * sizeof(float);
  if (cudaError_t e = cudaFuncSetAttribute(Gdn2ChunkKernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(bytes));
      e != cudaSuccess) {
    return e;
  }
  const dim3 grid((a.V + kTileV - 1) / kTileV, a.HV, blocks_z);
  Gdn2ChunkKernel<<<grid, kThreads, bytes, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace gdnserve::cuda
