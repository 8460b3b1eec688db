// GDN-2 chunkwise prefill in three phases (ops.h: Gdn2ChunkedWY), float32.
// The same result as Gdn2Chunked and kernels/cpu/gdn2.cc's Gdn2ChunkedHead
// (DESIGN.md 1.3), reorganised so that a long sequence keeps the GPU busy:
// everything that depends only on a chunk's own key-side inputs runs for all
// chunks at once, and only the state's passage from chunk to chunk is
// sequential, split over tiles of value columns.
//
// Per chunk (C = 64 tokens) and key head, with G the within-chunk inclusive
// cumulative log decay, A and M as in DESIGN.md 1.3 (pairwise decays: no
// positive exponent), T = (I + A)^-1 and the decayed factors
//   Q~ = q e^G,  E~ = e e^G,  K^ = k e^(G_C - G),  W = T E~
// the chunk's new values, output and end state are (Z = w * v)
//   N = T Z - W S0,  O = Q~ S0 + M N,  S_C = e^(G_C) S0 + K^^T N.
//
// Phase 0 (one thread): the chunk table of the packed pieces.
// Phase 1 (a block per chunk and key head, all in parallel): gates, norms,
//   G, A, M, T, Q~, K^, W into the workspace.
// Phase 2 (a block per piece, value head and tile of kTileV value columns):
//   the state tile in shared memory, chunk after chunk: U = T Z, N = U - W S0,
//   O = Q~ S0 + M N (written out), S <- e^(G_C) S0 + K^^T N.
#include <cstdint>

#include "kernels/cuda/gdn2_chunk_common.cuh"
#include "kernels/cuda/ops.h"

namespace gdnserve::cuda {
namespace {

using chunk_common::kC;
using chunk_common::kMaxK;
constexpr int kTileV = 32;
constexpr int kThreads1 = 256;
constexpr int kThreads2 = 256;

// Workspace layout: the chunk table (ints), then per chunk slot and key head
// the phase-1 results (floats).
struct Layout {
  int64_t max_chunks = 0;
  int P = 0, H = 0, K = 0;
  // Ints: num_chunks [1], chunk_piece [max], chunk_t0 [max], chunk_n [max],
  // piece_first [P], piece_count [P].
  __host__ __device__ int64_t Ints() const { return 1 + 3 * max_chunks + 2 * static_cast<int64_t>(P); }
  __host__ __device__ int64_t IntBytes() const { return (Ints() * 4 + 255) / 256 * 256; }
  // Floats per (chunk, key head): Q~, K^, W [kC][K]; M, T [kC][kC]; e^(G_C) [K].
  __host__ __device__ int64_t PerChunk() const { return 3 * kC * static_cast<int64_t>(K) + 2 * kC * kC + K; }
  __host__ __device__ int64_t Bytes() const { return IntBytes() + max_chunks * H * PerChunk() * 4; }
};

Layout MakeLayout(const Gdn2RecurrentArgs& a) {
  Layout l;
  l.P = a.pieces.num_pieces;
  l.max_chunks = (a.pieces.num_tokens + kC - 1) / kC + l.P;
  l.H = a.H;
  l.K = a.K;
  return l;
}

struct Table {
  int32_t* num_chunks;
  int32_t* chunk_piece;
  int32_t* chunk_t0;
  int32_t* chunk_n;
  int32_t* piece_first;
  int32_t* piece_count;
  float* data;
};

__host__ __device__ Table MakeTable(void* ws, const Layout& l) {
  auto* ints = static_cast<int32_t*>(ws);
  Table t;
  t.num_chunks = ints;
  t.chunk_piece = ints + 1;
  t.chunk_t0 = t.chunk_piece + l.max_chunks;
  t.chunk_n = t.chunk_t0 + l.max_chunks;
  t.piece_first = t.chunk_n + l.max_chunks;
  t.piece_count = t.piece_first + l.P;
  t.data = reinterpret_cast<float*>(static_cast<char*>(ws) + l.IntBytes());
  return t;
}

// Phase 0: chunks of the listed (or all) pieces, in order.
__global__ void TableKernel(Gdn2RecurrentArgs a, Layout l, Table t) {
  if (threadIdx.x != 0 || blockIdx.x != 0) return;
  for (int p = 0; p < l.P; ++p) t.piece_first[p] = 0, t.piece_count[p] = 0;
  const int count = a.piece_list ? a.num_listed : l.P;
  int c = 0;
  for (int i = 0; i < count; ++i) {
    const int p = a.piece_list ? a.piece_list[i] : i;
    const int64_t s = a.pieces.start[p], e = a.pieces.start[p + 1];
    t.piece_first[p] = c;
    for (int64_t t0 = s; t0 < e; t0 += kC) {
      t.chunk_piece[c] = p;
      t.chunk_t0[c] = static_cast<int32_t>(t0);
      t.chunk_n[c] = static_cast<int32_t>(e - t0 < kC ? e - t0 : kC);
      ++c;
    }
    t.piece_count[p] = c - t.piece_first[p];
  }
  *t.num_chunks = c;
}

struct Smem1 {
  static constexpr size_t Floats(int K) {
    return 4 * kC * static_cast<size_t>(K + 1)  // Q, Kk, E, G
           + 3 * kC * (kC + 1)                 // A, M, T
           + K;                                // G_C
  }
};

// Phase 1: a block per (chunk, key head).
__global__ void __launch_bounds__(kThreads1, 1) Phase1Kernel(Gdn2RecurrentArgs a, Layout l, Table tab) {
  extern __shared__ float smem[];
  const int chunk = blockIdx.x, hk = blockIdx.y;
  if (chunk >= *tab.num_chunks) return;
  const int K = a.K, ks = K + 1, as = kC + 1;
  float* sQ = smem;
  float* sK = sQ + kC * ks;
  float* sE = sK + kC * ks;
  float* sG = sE + kC * ks;
  float* sA = sG + kC * ks;
  float* sM = sA + kC * as;
  float* sT = sM + kC * as;
  float* sGC = sT + kC * as;
  const int tid = threadIdx.x;
  const int64_t t0 = tab.chunk_t0[chunk];
  const int n = tab.chunk_n[chunk];

  // 1. Gates, norms; rows n..63 zero.
  chunk_common::LoadKeySide<kThreads1>(a, t0, n, hk, ks, sQ, sK, sE, sG);
  __syncthreads();
  chunk_common::CumulativeDecay<kThreads1>(sG, ks, n, K, sGC);
  __syncthreads();

  // 2. A (strictly lower) and M (lower with the diagonal), pairwise decays.
  chunk_common::PairwiseAM<kThreads1>(sQ, sK, sE, sG, ks, n, K, sA, sM, as);
  __syncthreads();

  // 3. T = (I + A)^-1 by forward substitution, a thread per column; the
  //    decayed factors meanwhile.
  if (tid < kC) {
    const int j = tid;
    for (int t = 0; t < kC; ++t) {
      float v = t == j ? 1.0f : 0.0f;
      if (t > j) {
        const float* at = sA + t * as;
        for (int i = j; i < t; ++i) v -= at[i] * sT[i * as + j];
      }
      sT[t * as + j] = v;
    }
  }
  for (int i = tid; i < kC * K; i += kThreads1) {
    const int t = i / K, c = i % K;
    const float g = sG[t * ks + c];
    const float eg = expf(g);
    sQ[t * ks + c] *= eg;
    sE[t * ks + c] *= eg;
    sK[t * ks + c] *= expf(sGC[c] - g);
  }
  __syncthreads();

  // 4. Out: Q~, K^, W = T E~, M, T, e^(G_C).
  float* out = tab.data + (static_cast<int64_t>(chunk) * l.H + hk) * l.PerChunk();
  float* oQ = out;
  float* oK = oQ + kC * K;
  float* oW = oK + kC * K;
  float* oM = oW + kC * K;
  float* oT = oM + kC * kC;
  float* oD = oT + kC * kC;
  for (int i = tid; i < kC * K; i += kThreads1) {
    const int t = i / K, c = i % K;
    oQ[i] = sQ[t * ks + c];
    oK[i] = sK[t * ks + c];
    const float* tt = sT + t * as;
    float w = 0.0f;
    for (int s = 0; s <= t; ++s) w += tt[s] * sE[s * ks + c];
    oW[i] = w;
  }
  for (int i = tid; i < kC * kC; i += kThreads1) {
    const int t = i / kC, s = i % kC;
    oM[i] = sM[t * as + s];
    oT[i] = sT[t * as + s];
  }
  for (int c = tid; c < K; c += kThreads1) oD[c] = expf(sGC[c]);
}

struct Smem2 {
  static constexpr size_t Floats(int K) {
    return 3 * kC * static_cast<size_t>(K + 1)  // Q~, K^, W
           + 2 * kC * (kC + 1)                 // M, T
           + kTileV * static_cast<size_t>(K + 1)  // S tile [v][c]
           + 3 * kC * (kTileV + 1)             // Z, N, O1
           + K;                                // e^(G_C)
  }
};

// Phase 2: a block per (piece, value head, tile of kTileV value columns).
__global__ void __launch_bounds__(kThreads2, 1) Phase2Kernel(Gdn2RecurrentArgs a, Layout l, Table tab) {
  extern __shared__ float smem[];
  const int K = a.K, V = a.V, ks = K + 1, as = kC + 1, zs = kTileV + 1;
  float* sQ = smem;
  float* sK = sQ + kC * ks;
  float* sW = sK + kC * ks;
  float* sM = sW + kC * ks;
  float* sT = sM + kC * as;
  float* sS = sT + kC * as;
  float* sZ = sS + kTileV * ks;
  float* sN = sZ + kC * zs;
  float* sO = sN + kC * zs;
  float* sD = sO + kC * zs;
  const int piece = a.piece_list ? a.piece_list[blockIdx.z] : static_cast<int>(blockIdx.z);
  const int hv = blockIdx.y;
  const int hk = hv / (a.HV / a.H);
  const int v0 = blockIdx.x * kTileV;
  const int nv = min(kTileV, V - v0);
  const int tid = threadIdx.x;
  float* S = a.state.base + a.pieces.slot[piece] * a.state.slot_stride + a.state.recurrent_offset +
             static_cast<int64_t>(hv) * V * K;
  chunk_common::LoadStateTile<kThreads2, kTileV>(S, K, v0, nv, sS, ks);
  const int first = tab.piece_first[piece], count = tab.piece_count[piece];
  for (int ci = 0; ci < count; ++ci) {
    const int chunk = first + ci;
    const int64_t t0 = tab.chunk_t0[chunk];
    const int n = tab.chunk_n[chunk];
    const float* in = tab.data + (static_cast<int64_t>(chunk) * l.H + hk) * l.PerChunk();
    const float* iQ = in;
    const float* iK = iQ + kC * K;
    const float* iW = iK + kC * K;
    const float* iM = iW + kC * K;
    const float* iT = iM + kC * kC;
    const float* iD = iT + kC * kC;
    __syncthreads();  // the previous chunk is done with the buffers
    for (int i = tid; i < kC * K; i += kThreads2) {
      const int t = i / K, c = i % K;
      sQ[t * ks + c] = iQ[i];
      sK[t * ks + c] = iK[i];
      sW[t * ks + c] = iW[i];
    }
    for (int i = tid; i < kC * kC; i += kThreads2) {
      const int t = i / kC, s = i % kC;
      sM[t * as + s] = iM[i];
      sT[t * as + s] = iT[i];
    }
    for (int c = tid; c < K; c += kThreads2) sD[c] = iD[c];
    chunk_common::LoadValues<kThreads2, kTileV>(a, t0, n, hv, v0, nv, sZ, zs);
    __syncthreads();
    // N = T Z - W S0 and O1 = Q~ S0.
    for (int i = tid; i < kC * kTileV; i += kThreads2) {
      const int t = i / kTileV, j = i % kTileV;
      const float* tt = sT + t * as;
      const float* wt = sW + t * ks;
      const float* qt = sQ + t * ks;
      const float* sj = sS + j * ks;
      float u = 0.0f, ws = 0.0f, o = 0.0f;
      for (int s = 0; s <= t; ++s) u += tt[s] * sZ[s * zs + j];
      for (int c = 0; c < K; ++c) {
        ws += wt[c] * sj[c];
        o += qt[c] * sj[c];
      }
      sN[t * zs + j] = u - ws;
      sO[t * zs + j] = o;
    }
    __syncthreads();
    // O = O1 + M N, written out; S <- e^(G_C) S0 + K^^T N.
    chunk_common::FinishChunk<kThreads2, kTileV>(a, t0, n, hv, v0, nv, sM, as, sO, sN, zs, sK, ks, sD, sS);
  }
  __syncthreads();
  chunk_common::StoreStateTile<kThreads2>(sS, ks, K, v0, nv, S);
}

}  // namespace

size_t Gdn2ChunkedWYWorkspaceBytes(int64_t num_tokens, int num_pieces, int H, int K) {
  Layout l;
  l.P = num_pieces;
  l.max_chunks = (num_tokens + kC - 1) / kC + num_pieces;
  l.H = H;
  l.K = K;
  return static_cast<size_t>(l.Bytes());
}

bool Gdn2ChunkedWYSupported(int K) {
  if (K < 1 || K > kMaxK) return false;
  int dev = 0, optin = 0;
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  const size_t need = (Smem1::Floats(K) > Smem2::Floats(K) ? Smem1::Floats(K) : Smem2::Floats(K)) * sizeof(float);
  return static_cast<size_t>(optin) >= need;
}

cudaError_t Gdn2ChunkedWY(const Gdn2RecurrentArgs& a, void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  const int blocks_z = a.piece_list ? a.num_listed : a.pieces.num_pieces;
  if (blocks_z == 0) return cudaSuccess;
  if (a.H <= 0 || a.HV % a.H != 0 || a.V <= 0 || a.K < 1 || a.K > kMaxK || blocks_z > 65535 || a.HV > 65535) {
    return cudaErrorInvalidValue;
  }
  const Layout l = MakeLayout(a);
  if (workspace == nullptr || workspace_bytes < static_cast<size_t>(l.Bytes()) || l.max_chunks > INT32_MAX ||
      reinterpret_cast<uintptr_t>(workspace) % 256 != 0) {
    return cudaErrorInvalidValue;
  }
  const Table t = MakeTable(workspace, l);
  TableKernel<<<1, 1, 0, stream>>>(a, l, t);
  const size_t b1 = Smem1::Floats(a.K) * sizeof(float), b2 = Smem2::Floats(a.K) * sizeof(float);
  if (cudaError_t e = cudaFuncSetAttribute(Phase1Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(b1));
      e != cudaSuccess) {
    return e;
  }
  if (cudaError_t e = cudaFuncSetAttribute(Phase2Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(b2));
      e != cudaSuccess) {
    return e;
  }
  if (l.max_chunks > 2147483647 || a.H > 65535) return cudaErrorInvalidValue;
  Phase1Kernel<<<dim3(static_cast<unsigned>(l.max_chunks), a.H), kThreads1, b1, stream>>>(a, l, t);
  Phase2Kernel<<<dim3((a.V + kTileV - 1) / kTileV, a.HV, blocks_z), kThreads2, b2, stream>>>(a, l, t);
  return cudaGetLastError();
}

}  // namespace gdnserve::cuda
