// GDN-2 chunkwise prefill on tensor cores, in two parallel phases
// (ops.h: Gdn2ChunkedWY). The same result as kernels/cpu/gdn2.cc's
// Gdn2ChunkedHead (DESIGN.md 1.3), reorganised so that everything that
// depends only on a chunk's own inputs runs for all chunks at once, and only
// the state's passage from chunk to chunk is sequential.
//
// Per chunk (C = 64 tokens, sub-chunks of 16) and key head, with G the
// within-chunk inclusive cumulative log decay, A and M as in DESIGN.md 1.3,
// T = (I + A)^-1 and the decayed factors
//   Q~ = q e^G,  E~ = e e^G,  K^ = k e^(G_C - G),  W = T E~,  U = T Z  (Z = w * v)
// the chunk's new values, output and end state are
//   N = U - W S0,  O = Q~ S0 + M N,  S_C = e^(G_C) S0 + K^^T N.
//
// Phase 0 (one thread): the chunk table of the packed pieces.
// Phase 1 (a block per chunk and key head, all chunks at once): gates, norms,
//   G; the diagonal 16 x 16 blocks of A and M pairwise (no positive
//   exponent: a token may have g = -100); the blocks below the diagonal on
//   tensor cores as (e_t e^(G_t - G_r)) . (k_i e^(G_r - G_i)) with r the last
//   token before the row's sub-chunk, both factors <= 1; T by blocked
//   forward substitution in float32; W = T E~ and U = T Z on tensor cores;
//   Q~, K^, W, M, e^(G_C) and U into the workspace.
// Phase 2 (a block per piece, value head and tile of kTV value columns): the
//   state tile stays in shared memory chunk after chunk; P = [W; Q~] S0,
//   N = U - P_W, O = P_Q + M N (written out), S <- e^(G_C) S0 + K^^T N, all on
//   tensor cores, the next chunk's factors loading (cp.async) meanwhile.
//
// Tensor-core products are TF32 (mma.sync m16n8k8, float32 accumulation);
// ChunkMath::kTf32x3 splits each operand in a TF32 head and tail and adds the
// three significant products, for float32 accuracy (float32 models).
#include <cstdint>

#include "kernels/cuda/gdn2_chunk_common.cuh"
#include "kernels/cuda/ops.h"

namespace gdnserve::cuda {
namespace {

using chunk_common::kC;
using chunk_common::kMaxK;
constexpr int kSub = 16;  // sub-chunk
constexpr int kThreads1 = 512;
constexpr int kThreads2 = 256;

__host__ __device__ constexpr int RoundUp(int x, int m) { return (x + m - 1) / m * m; }

// ---------------------------------------------------------------------------
// Tensor-core tiles: a warp accumulates a 16 x (8 NT) block of A x B with
// mma.sync.m16n8k8 TF32. A(m, k) = kTA ? A[k * lda + m] : A[m * lda + k];
// B(k, n) = kTB ? B[n * ldb + k] : B[k * ldb + n]. Accumulator fragment:
// acc[j][0..1] at (m0 + g, n0 + 8j + 2t + {0,1}), acc[j][2..3] at row m0 + g + 8
// (g = lane / 4, t = lane % 4).

__device__ __forceinline__ uint32_t Tf32(float x) {
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
  return r;
}

__device__ __forceinline__ void Mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

template <int NT, bool kTA, bool kTB, ChunkMath kMath>
__device__ __forceinline__ void WarpMma(float (&acc)[NT][4], const float* A, int lda, int m0, const float* B,
                                        int ldb, int n0, int k0, int k1) {
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  auto at = [&](int m, int k) { return kTA ? A[k * lda + m] : A[m * lda + k]; };
  auto bt = [&](int k, int n) { return kTB ? B[n * ldb + k] : B[k * ldb + n]; };
  for (int k = k0; k < k1; k += 8) {
    const float af[4] = {at(m0 + g, k + t), at(m0 + g + 8, k + t), at(m0 + g, k + t + 4), at(m0 + g + 8, k + t + 4)};
    uint32_t ah[4], al[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      ah[i] = Tf32(af[i]);
      if constexpr (kMath == ChunkMath::kTf32x3) al[i] = Tf32(af[i] - __uint_as_float(ah[i]));
    }
#pragma unroll
    for (int j = 0; j < NT; ++j) {
      const float b0 = bt(k + t, n0 + 8 * j + g), b1 = bt(k + t + 4, n0 + 8 * j + g);
      const uint32_t bh0 = Tf32(b0), bh1 = Tf32(b1);
      if constexpr (kMath == ChunkMath::kTf32x3) {
        Mma(acc[j], al, bh0, bh1);
        Mma(acc[j], ah, Tf32(b0 - __uint_as_float(bh0)), Tf32(b1 - __uint_as_float(bh1)));
      }
      Mma(acc[j], ah, bh0, bh1);
    }
  }
}

template <int NT>
__device__ __forceinline__ void ZeroAcc(float (&acc)[NT][4]) {
#pragma unroll
  for (int j = 0; j < NT; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.0f;
}

// 16-byte asynchronous copy global -> shared; `ok` false fills zeros.
__device__ __forceinline__ void CpAsync16(float* dst, const float* src, bool ok) {
  const unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(ok ? 16 : 0));
}
__device__ __forceinline__ void CpAsyncCommit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void CpAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// ---------------------------------------------------------------------------
// Workspace: the chunk table (ints), then per (chunk, key head) Q~/W/K^/M/D,
// then per (chunk, value head) U. Kp = K rounded up to 16, Vp = V rounded up
// to 16 (padding columns zero).
struct Layout {
  int64_t max_chunks = 0;
  int P = 0, H = 0, HV = 0, Kp = 0, Vp = 0;
  // Ints: num_chunks [1], chunk_piece, chunk_t0, chunk_n [max], piece_first, piece_count [P].
  __host__ __device__ int64_t IntBytes() const { return ((1 + 3 * max_chunks + 2 * int64_t{P}) * 4 + 255) / 256 * 256; }
  // Per (chunk, key head): W then Q~ [2 kC][Kp], K^ [kC][Kp], M [kC][kC], e^(G_C) [Kp].
  __host__ __device__ int64_t KeyFloats() const { return 3 * kC * int64_t{Kp} + kC * kC + Kp; }
  __host__ __device__ int64_t ValueFloats() const { return kC * int64_t{Vp}; }
  __host__ __device__ int64_t Bytes() const {
    return IntBytes() + max_chunks * (H * KeyFloats() + HV * ValueFloats()) * 4;
  }
};

Layout MakeLayout(int64_t num_tokens, int num_pieces, int H, int HV, int K, int V) {
  Layout l;
  l.P = num_pieces;
  l.max_chunks = (num_tokens + kC - 1) / kC + num_pieces;
  l.H = H;
  l.HV = HV;
  l.Kp = RoundUp(K, 16);
  l.Vp = RoundUp(V, 16);
  return l;
}

struct Table {
  int32_t* num_chunks;
  int32_t* chunk_piece;
  int32_t* chunk_t0;
  int32_t* chunk_n;
  int32_t* piece_first;
  int32_t* piece_count;
  float* key;    // [max_chunks][H][KeyFloats]
  float* value;  // [max_chunks][HV][ValueFloats]
};

Table MakeTable(void* ws, const Layout& l) {
  auto* ints = static_cast<int32_t*>(ws);
  Table t;
  t.num_chunks = ints;
  t.chunk_piece = ints + 1;
  t.chunk_t0 = t.chunk_piece + l.max_chunks;
  t.chunk_n = t.chunk_t0 + l.max_chunks;
  t.piece_first = t.chunk_n + l.max_chunks;
  t.piece_count = t.piece_first + l.P;
  t.key = reinterpret_cast<float*>(static_cast<char*>(ws) + l.IntBytes());
  t.value = t.key + l.max_chunks * l.H * l.KeyFloats();
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

// ---------------------------------------------------------------------------
// Phase 1. Shared memory (floats), ks = Kp + 4, as = kC + 4:
//   Q, K, E, G [kC][ks]; scratch [3 kSub][ks] (K' rows; later Z); A, M, T [kC][as]; G_C, block sums.
struct Smem1 {
  static constexpr int As = kC + 4;
  static constexpr size_t Floats(int Kp) {
    return (4 * kC + 3 * kSub) * static_cast<size_t>(Kp + 4) + 3 * kC * As + Kp + 4 * kMaxK;
  }
};

template <ChunkMath kMath>
__global__ void __launch_bounds__(kThreads1, 1) Phase1Kernel(Gdn2RecurrentArgs a, Layout l, Table tab) {
  extern __shared__ float smem[];
  const int chunk = blockIdx.x, hk = blockIdx.y;
  if (chunk >= *tab.num_chunks) return;
  constexpr int as = Smem1::As;
  constexpr int kWarps = kThreads1 / 32;
  const int K = a.K, Kp = l.Kp, ks = Kp + 4;
  float* sQ = smem;
  float* sK = sQ + kC * ks;
  float* sE = sK + kC * ks;
  float* sG = sE + kC * ks;
  float* sX = sG + kC * ks;  // scratch, 3 kSub rows
  float* sA = sX + 3 * kSub * ks;
  float* sM = sA + kC * as;
  float* sT = sM + kC * as;
  float* sGC = sT + kC * as;
  float* sSum = sGC + Kp;  // [4][kMaxK] sub-chunk decay sums
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int64_t t0 = tab.chunk_t0[chunk];
  const int n = tab.chunk_n[chunk];

  // 1. Gates and norms; rows n.. and columns K.. zero.
  if (K < Kp) {
    for (int i = tid; i < kC * (Kp - K); i += kThreads1) {
      const int t = i / (Kp - K), c = K + i % (Kp - K);
      sQ[t * ks + c] = sK[t * ks + c] = sE[t * ks + c] = sG[t * ks + c] = 0.0f;
    }
  }
  chunk_common::LoadKeySide<kThreads1>(a, t0, n, hk, ks, sQ, sK, sE, sG);
  __syncthreads();

  // 2. G: inclusive cumulative sums, a thread per (channel, sub-chunk).
  for (int i = tid; i < 4 * Kp; i += kThreads1) {
    const int c = i % Kp, s = i / Kp;
    float acc = 0.0f;
    for (int t = s * kSub; t < (s + 1) * kSub; ++t) {
      acc += sG[t * ks + c];
      sG[t * ks + c] = acc;
    }
    sSum[s * kMaxK + c] = acc;
  }
  __syncthreads();
  for (int i = tid; i < 4 * Kp; i += kThreads1) {
    const int c = i % Kp, s = i / Kp;
    float off = 0.0f;
    for (int r = 0; r < s; ++r) off += sSum[r * kMaxK + c];
    if (s > 0) {
      for (int t = s * kSub; t < (s + 1) * kSub; ++t) sG[t * ks + c] += off;
    }
    if (s == 3) sGC[c] = off + sSum[3 * kMaxK + c];
  }
  __syncthreads();

  // 3. Diagonal blocks of A and M, pairwise decays: a warp per row, lanes
  //    over channels, for every i <= t of the row's sub-chunk. Zero the rest.
  for (int i = tid; i < kC * as; i += kThreads1) sA[i] = sM[i] = 0.0f;
  __syncthreads();
  for (int t = warp; t < kC; t += kWarps) {
    const int i0 = t / kSub * kSub;
    for (int i = i0; i <= t; ++i) {
      float av = 0.0f, mv = 0.0f;
      for (int c = lane; c < Kp; c += 32) {
        const float kd = sK[i * ks + c] * __expf(sG[t * ks + c] - sG[i * ks + c]);
        av += sE[t * ks + c] * kd;
        mv += sQ[t * ks + c] * kd;
      }
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) {
        av += __shfl_xor_sync(0xffffffffu, av, o);
        mv += __shfl_xor_sync(0xffffffffu, mv, o);
      }
      if (lane == 0) {
        sA[t * as + i] = i == t ? 0.0f : av;
        sM[t * as + i] = mv;
      }
    }
  }
  __syncthreads();

  // 4. Rows of sub-chunk s >= 1 relative to r = 16 s - 1 (G_r), of s = 0 to
  //    the chunk start: E' = e e^(G_t - G_r), Q' likewise (in place).
  for (int i = tid; i < kC * Kp; i += kThreads1) {
    const int t = i / Kp, c = i % Kp, s = t / kSub;
    const float gr = s == 0 ? 0.0f : sG[(s * kSub - 1) * ks + c];
    const float f = __expf(sG[t * ks + c] - gr);
    sE[t * ks + c] *= f;
    sQ[t * ks + c] *= f;
  }
  // 5. Blocks below the diagonal, sub-chunk row s = 1..3:
  //    A[s][0..s) = E'_s K'^T, M likewise with Q', K'_i = k_i e^(G_r - G_i).
  for (int s = 1; s < 4; ++s) {
    const int r = s * kSub - 1, rows = s * kSub;
    for (int i = tid; i < rows * Kp; i += kThreads1) {
      const int t = i / Kp, c = i % Kp;
      sX[t * ks + c] = sK[t * ks + c] * __expf(sG[r * ks + c] - sG[t * ks + c]);
    }
    __syncthreads();
    // Jobs: (A or M) x column tiles of 8 over [0, rows).
    for (int job = warp; job < 2 * (rows / 8); job += kWarps) {
      const bool is_m = job >= rows / 8;
      const int n0 = (job % (rows / 8)) * 8;
      float acc[1][4];
      ZeroAcc(acc);
      WarpMma<1, false, true, kMath>(acc, is_m ? sQ : sE, ks, rows, sX, ks, n0, 0, Kp);
      float* dst = is_m ? sM : sA;
      const int g = lane >> 2, tq = lane & 3;
      dst[(rows + g) * as + n0 + 2 * tq] = acc[0][0];
      dst[(rows + g) * as + n0 + 2 * tq + 1] = acc[0][1];
      dst[(rows + g + 8) * as + n0 + 2 * tq] = acc[0][2];
      dst[(rows + g + 8) * as + n0 + 2 * tq + 1] = acc[0][3];
    }
    __syncthreads();
  }

  // 6. T = (I + A)^-1, float32. Diagonal blocks by forward substitution, a
  //    thread per (block, column); the columns in registers.
  if (tid < 4 * kSub) {
    const int s = tid / kSub, j = tid % kSub, b = s * kSub;
    float x[kSub];
#pragma unroll
    for (int t = 0; t < kSub; ++t) {
      float v = t == j ? 1.0f : 0.0f;
#pragma unroll
      for (int i = 0; i < t; ++i) v -= sA[(b + t) * as + b + i] * x[i];
      x[t] = t < j ? 0.0f : v;
    }
#pragma unroll
    for (int t = 0; t < kSub; ++t) sT[(b + t) * as + b + j] = x[t];
  }
  for (int i = tid; i < kC * kC; i += kThreads1) {  // above the diagonal blocks: zero
    const int t = i / kC, j = i % kC;
    if (j / kSub > t / kSub) sT[t * as + j] = 0.0f;
  }
  __syncthreads();
  //    Blocks below: T[s][b] = -T[s][s] sum_{c=b}^{s-1} A[s][c] T[c][b], row
  //    block by row block. X [kSub][xs] goes to the scratch (free now).
  constexpr int xs = 3 * kSub + 4;
  for (int s = 1; s < 4; ++s) {
    for (int i = tid; i < s * kSub * kSub; i += kThreads1) {
      const int b = i / (kSub * kSub), t = i / kSub % kSub, j = i % kSub;
      float x = 0.0f;
      for (int c = b * kSub; c < s * kSub; ++c) x += sA[(s * kSub + t) * as + c] * sT[c * as + b * kSub + j];
      sX[t * xs + b * kSub + j] = x;
    }
    __syncthreads();
    for (int i = tid; i < s * kSub * kSub; i += kThreads1) {
      const int b = i / (kSub * kSub), t = i / kSub % kSub, j = i % kSub;
      float v = 0.0f;
      for (int c = 0; c <= t; ++c) v -= sT[(s * kSub + t) * as + s * kSub + c] * sX[c * xs + b * kSub + j];
      sT[(s * kSub + t) * as + b * kSub + j] = v;
    }
    __syncthreads();
  }

  // 7. E~ = E' e^(G_r), Q~ likewise; K^ = k e^(G_C - G).
  for (int i = tid; i < kC * Kp; i += kThreads1) {
    const int t = i / Kp, c = i % Kp, s = t / kSub;
    if (s > 0) {
      const float f = __expf(sG[(s * kSub - 1) * ks + c]);
      sE[t * ks + c] *= f;
      sQ[t * ks + c] *= f;
    }
    sK[t * ks + c] *= __expf(sGC[c] - sG[t * ks + c]);
  }
  __syncthreads();

  // 8. Out: W = T E~ (tensor cores, lower triangular T), then Q~, K^, M, e^(G_C).
  float* out = tab.key + (static_cast<int64_t>(chunk) * l.H + hk) * l.KeyFloats();
  float* oW = out;
  float* oQ = oW + kC * Kp;
  float* oK = oQ + kC * Kp;
  float* oM = oK + kC * Kp;
  float* oD = oM + kC * kC;
  {
    const int g = lane >> 2, tq = lane & 3;
    // Jobs: 4 row tiles x column groups of 32.
    for (int job = warp; job < 4 * (Kp / 32 + (Kp % 32 ? 1 : 0)); job += kWarps) {
      const int m0 = (job % 4) * 16, c0 = (job / 4) * 32;
      if (c0 + 32 <= Kp) {
        float acc[4][4];
        ZeroAcc(acc);
        WarpMma<4, false, false, kMath>(acc, sT, as, m0, sE, ks, c0, 0, m0 + 16);
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const int c = c0 + 8 * j + 2 * tq;
          *reinterpret_cast<float2*>(&oW[(m0 + g) * Kp + c]) = make_float2(acc[j][0], acc[j][1]);
          *reinterpret_cast<float2*>(&oW[(m0 + g + 8) * Kp + c]) = make_float2(acc[j][2], acc[j][3]);
        }
      } else {  // Kp % 32 == 16: the last 16 columns
        float acc[2][4];
        ZeroAcc(acc);
        WarpMma<2, false, false, kMath>(acc, sT, as, m0, sE, ks, c0, 0, m0 + 16);
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          const int c = c0 + 8 * j + 2 * tq;
          *reinterpret_cast<float2*>(&oW[(m0 + g) * Kp + c]) = make_float2(acc[j][0], acc[j][1]);
          *reinterpret_cast<float2*>(&oW[(m0 + g + 8) * Kp + c]) = make_float2(acc[j][2], acc[j][3]);
        }
      }
    }
  }
  for (int i = tid; i < kC * Kp / 4; i += kThreads1) {
    const int t = i / (Kp / 4), c = (i % (Kp / 4)) * 4;
    reinterpret_cast<float4*>(oQ)[i] = make_float4(sQ[t * ks + c], sQ[t * ks + c + 1], sQ[t * ks + c + 2], sQ[t * ks + c + 3]);
    reinterpret_cast<float4*>(oK)[i] = make_float4(sK[t * ks + c], sK[t * ks + c + 1], sK[t * ks + c + 2], sK[t * ks + c + 3]);
  }
  for (int i = tid; i < kC * kC; i += kThreads1) oM[i] = sM[(i / kC) * as + i % kC];
  for (int c = tid; c < Kp; c += kThreads1) oD[c] = c < K ? __expf(sGC[c]) : 0.0f;
  __syncthreads();  // Q is free: it holds Z now

  // 9. U = T Z for each value head of the group, up to 128 value columns at
  //    a time, Z [kC][zs] over Q, K, E, G and the scratch (free now).
  const int group = a.HV / a.H;
  float* sZ = sQ;
  const int free_cols = (4 * kC + 3 * kSub) * ks / kC - 8;
  const int kVt = free_cols >= 128 ? 128 : free_cols / 16 * 16;
  for (int hv = hk * group; hv < (hk + 1) * group; ++hv) {
    float* oU = tab.value + (static_cast<int64_t>(chunk) * l.HV + hv) * l.ValueFloats();
    for (int v0 = 0; v0 < l.Vp; v0 += kVt) {
      const int vt = l.Vp - v0 < kVt ? l.Vp - v0 : kVt;  // multiple of 16
      const int zs = vt + 8;
      for (int i = tid; i < kC * vt; i += kThreads1) {
        const int t = i / vt, j = i % vt, v = v0 + j;
        float z = 0.0f;
        if (t < n && v < a.V) {
          const int64_t col = static_cast<int64_t>(hv) * a.V + v;
          z = chunk_common::Sigmoid(a.w[(t0 + t) * a.w_stride + col]) * a.v[(t0 + t) * a.v_stride + col];
        }
        sZ[t * zs + j] = z;
      }
      __syncthreads();
      const int g = lane >> 2, tq = lane & 3;
      for (int job = warp; job < 4 * (vt / 16); job += kWarps) {
        const int m0 = (job % 4) * 16, c0 = (job / 4) * 16;
        float acc[2][4];
        ZeroAcc(acc);
        WarpMma<2, false, false, kMath>(acc, sT, as, m0, sZ, zs, c0, 0, m0 + 16);
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          const int c = v0 + c0 + 8 * j + 2 * tq;
          *reinterpret_cast<float2*>(&oU[(m0 + g) * l.Vp + c]) = make_float2(acc[j][0], acc[j][1]);
          *reinterpret_cast<float2*>(&oU[(m0 + g + 8) * l.Vp + c]) = make_float2(acc[j][2], acc[j][3]);
        }
      }
      __syncthreads();
    }
  }
}

// ---------------------------------------------------------------------------
// Phase 2. Shared memory (floats), ks = Kp + 4 (rows read as A), kh = Kp + 8
// (K^ read transposed), us = kTV + 8:
//   WQ [2 kC][ks], U [kC][us] (set A); K^ [kC][kh], M [kC][as], D [Kp] (set B);
//   S [Kp][us], N [kC][us].
template <int kTV>
struct Smem2 {
  static constexpr int As = kC + 4, Us = kTV + 8;
  static constexpr size_t Floats(int Kp) {
    return 2 * kC * static_cast<size_t>(Kp + 4) + kC * Us + kC * static_cast<size_t>(Kp + 8) + kC * As + Kp +
           static_cast<size_t>(Kp) * Us + kC * Us;
  }
};

template <int kTV, ChunkMath kMath>
__global__ void __launch_bounds__(kThreads2, 1) Phase2Kernel(Gdn2RecurrentArgs a, Layout l, Table tab) {
  extern __shared__ float smem[];
  constexpr int as = Smem2<kTV>::As, us = Smem2<kTV>::Us, NT = kTV / 8;
  const int K = a.K, V = a.V, Kp = l.Kp, ks = Kp + 4, kh = Kp + 8;
  float* sWQ = smem;
  float* sU = sWQ + 2 * kC * ks;
  float* sKh = sU + kC * us;
  float* sM = sKh + kC * kh;
  float* sD = sM + kC * as;
  float* sS = sD + Kp;
  float* sN = sS + Kp * us;
  const int piece = a.piece_list ? a.piece_list[blockIdx.z] : static_cast<int>(blockIdx.z);
  const int hv = blockIdx.y;
  const int hk = hv / (a.HV / a.H);
  const int v0 = blockIdx.x * kTV;
  const int nv = min(kTV, V - v0);
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane >> 2, tq = lane & 3;
  float* S = a.state.base + a.pieces.slot[piece] * a.state.slot_stride + a.state.recurrent_offset +
             static_cast<int64_t>(hv) * V * K;
  const int first = tab.piece_first[piece], count = tab.piece_count[piece];

  auto key_in = [&](int chunk) { return tab.key + (static_cast<int64_t>(chunk) * l.H + hk) * l.KeyFloats(); };
  // Set A of a chunk: W, Q~ rows and the U tile.
  auto load_a = [&](int chunk) {
    const float* in = key_in(chunk);
    const int q4 = Kp / 4;
    for (int i = tid; i < 2 * kC * q4; i += kThreads2) {
      const int r = i / q4, c = (i % q4) * 4;
      CpAsync16(&sWQ[r * ks + c], in + r * Kp + c, true);
    }
    const float* u = tab.value + (static_cast<int64_t>(chunk) * l.HV + hv) * l.ValueFloats();
    for (int i = tid; i < kC * (kTV / 4); i += kThreads2) {
      const int r = i / (kTV / 4), c = (i % (kTV / 4)) * 4;
      const bool ok = v0 + c < l.Vp;
      CpAsync16(&sU[r * us + c], u + r * l.Vp + (ok ? v0 + c : 0), ok);
    }
    CpAsyncCommit();
  };
  // Set B: K^, M, e^(G_C).
  auto load_b = [&](int chunk) {
    const float* in = key_in(chunk) + 2 * kC * Kp;
    const int q4 = Kp / 4;
    for (int i = tid; i < kC * q4; i += kThreads2) {
      const int r = i / q4, c = (i % q4) * 4;
      CpAsync16(&sKh[r * kh + c], in + r * Kp + c, true);
    }
    const float* m = in + kC * Kp;
    for (int i = tid; i < kC * kC / 4; i += kThreads2) {
      const int r = i / (kC / 4), c = (i % (kC / 4)) * 4;
      CpAsync16(&sM[r * as + c], m + r * kC + c, true);
    }
    const float* d = m + kC * kC;
    for (int i = tid; i < q4; i += kThreads2) CpAsync16(&sD[i * 4], d + i * 4, true);
    CpAsyncCommit();
  };

  if (count > 0) {
    load_a(first);
    load_b(first);
  }
  // The state tile, S0[c][j] = slot[(v0 + j) K + c]; zero padding.
  for (int i = tid; i < Kp * kTV; i += kThreads2) {
    const int j = i / Kp, c = i % Kp;
    sS[c * us + j] = j < nv && c < K ? S[static_cast<int64_t>(v0 + j) * K + c] : 0.0f;
  }
  for (int ci = 0; ci < count; ++ci) {
    const int chunk = first + ci;
    const int64_t t0 = tab.chunk_t0[chunk];
    const int n = tab.chunk_n[chunk];
    const bool more = ci + 1 < count;
    CpAsyncWait<1>();  // set A of this chunk (set B may still be in flight)
    __syncthreads();
    // P = [W; Q~] S0: warp w the rows [16 w, 16 w + 16).
    float acc[NT][4];
    ZeroAcc(acc);
    WarpMma<NT, false, false, kMath>(acc, sWQ, ks, 16 * warp, sS, us, 0, 0, Kp);
    if (warp < 4) {  // N = U - P_W
#pragma unroll
      for (int j = 0; j < NT; ++j) {
        const int c = 8 * j + 2 * tq, r = 16 * warp + g;
        sN[r * us + c] = sU[r * us + c] - acc[j][0];
        sN[r * us + c + 1] = sU[r * us + c + 1] - acc[j][1];
        sN[(r + 8) * us + c] = sU[(r + 8) * us + c] - acc[j][2];
        sN[(r + 8) * us + c + 1] = sU[(r + 8) * us + c + 1] - acc[j][3];
      }
    }
    CpAsyncWait<0>();  // set B of this chunk
    __syncthreads();   // N written; set A free
    if (more) load_a(chunk + 1);
    if (warp >= 4) {  // O = P_Q + M N, written out
      const int m0 = 16 * (warp - 4);
      WarpMma<NT, false, false, kMath>(acc, sM, as, m0, sN, us, 0, 0, m0 + 16);
#pragma unroll
      for (int j = 0; j < NT; ++j) {
        const int c = 8 * j + 2 * tq;
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int t = m0 + g + 8 * h;
          if (t >= n) continue;
          float* o = a.out + (t0 + t) * a.out_stride + static_cast<int64_t>(hv) * V + v0;
          if (c < nv) o[c] = acc[j][2 * h];
          if (c + 1 < nv) o[c + 1] = acc[j][2 * h + 1];
        }
      }
    }
    // S <- e^(G_C) S0 + K^^T N: warp w the state rows [16 w, 16 w + 16) (its own).
    for (int m0 = 16 * warp; m0 < Kp; m0 += 16 * (kThreads2 / 32)) {
      float st[NT][4];
#pragma unroll
      for (int j = 0; j < NT; ++j) {
        const int c = 8 * j + 2 * tq;
        st[j][0] = sD[m0 + g] * sS[(m0 + g) * us + c];
        st[j][1] = sD[m0 + g] * sS[(m0 + g) * us + c + 1];
        st[j][2] = sD[m0 + g + 8] * sS[(m0 + g + 8) * us + c];
        st[j][3] = sD[m0 + g + 8] * sS[(m0 + g + 8) * us + c + 1];
      }
      WarpMma<NT, true, false, kMath>(st, sKh, kh, m0, sN, us, 0, 0, RoundUp(n, 8));
#pragma unroll
      for (int j = 0; j < NT; ++j) {
        const int c = 8 * j + 2 * tq;
        sS[(m0 + g) * us + c] = st[j][0];
        sS[(m0 + g) * us + c + 1] = st[j][1];
        sS[(m0 + g + 8) * us + c] = st[j][2];
        sS[(m0 + g + 8) * us + c + 1] = st[j][3];
      }
    }
    __syncthreads();  // S, N, set B done with
    if (more) load_b(chunk + 1);
  }
  __syncthreads();
  for (int i = tid; i < nv * K; i += kThreads2) {
    const int j = i / K, c = i % K;
    S[static_cast<int64_t>(v0 + j) * K + c] = sS[c * us + j];
  }
}

template <int kTV, ChunkMath kMath>
cudaError_t LaunchPhase2(const Gdn2RecurrentArgs& a, const Layout& l, const Table& t, int blocks_z,
                         cudaStream_t stream) {
  const size_t bytes = Smem2<kTV>::Floats(l.Kp) * sizeof(float);
  auto* kernel = Phase2Kernel<kTV, kMath>;
  if (cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(bytes));
      e != cudaSuccess) {
    return e;
  }
  kernel<<<dim3((a.V + kTV - 1) / kTV, a.HV, blocks_z), kThreads2, bytes, stream>>>(a, l, t);
  return cudaGetLastError();
}

template <ChunkMath kMath>
cudaError_t Launch(const Gdn2RecurrentArgs& a, const Layout& l, const Table& t, int blocks_z, cudaStream_t stream) {
  const size_t b1 = Smem1::Floats(l.Kp) * sizeof(float);
  if (cudaError_t e = cudaFuncSetAttribute(Phase1Kernel<kMath>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(b1));
      e != cudaSuccess) {
    return e;
  }
  Phase1Kernel<kMath><<<dim3(static_cast<unsigned>(l.max_chunks), a.H), kThreads1, b1, stream>>>(a, l, t);
  if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
  // The widest value tile that still gives every SM a block: the state tile
  // chain is the sequential part, so a long lone sequence splits finer.
  int dev = 0, sms = 132;
  if (cudaGetDevice(&dev) == cudaSuccess) cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
  const int64_t heads = static_cast<int64_t>(blocks_z) * a.HV;
  if (heads * ((a.V + 63) / 64) >= sms) return LaunchPhase2<64, kMath>(a, l, t, blocks_z, stream);
  if (heads * ((a.V + 31) / 32) >= sms) return LaunchPhase2<32, kMath>(a, l, t, blocks_z, stream);
  return LaunchPhase2<16, kMath>(a, l, t, blocks_z, stream);
}

}  // namespace

size_t Gdn2ChunkedWYWorkspaceBytes(int64_t num_tokens, int num_pieces, int H, int HV, int K, int V) {
  return static_cast<size_t>(MakeLayout(num_tokens, num_pieces, H, HV, K, V).Bytes());
}

bool Gdn2ChunkedWYSupported(int K) {
  if (K < 1 || K > kMaxK) return false;
  int dev = 0, optin = 0;
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  const int Kp = RoundUp(K, 16);
  size_t need = Smem1::Floats(Kp);
  for (const size_t s : {Smem2<16>::Floats(Kp), Smem2<32>::Floats(Kp), Smem2<64>::Floats(Kp)}) {
    if (s > need) need = s;
  }
  return static_cast<size_t>(optin) >= need * sizeof(float);
}

cudaError_t Gdn2ChunkedWY(const Gdn2RecurrentArgs& a, ChunkMath math, void* workspace, size_t workspace_bytes,
                          cudaStream_t stream) {
  const int blocks_z = a.piece_list ? a.num_listed : a.pieces.num_pieces;
  if (blocks_z == 0) return cudaSuccess;
  if (a.H <= 0 || a.HV % a.H != 0 || a.V <= 0 || a.K < 1 || a.K > kMaxK || blocks_z > 65535 || a.HV > 65535 ||
      a.H > 65535) {
    return cudaErrorInvalidValue;
  }
  const Layout l = MakeLayout(a.pieces.num_tokens, a.pieces.num_pieces, a.H, a.HV, a.K, a.V);
  if (workspace == nullptr || workspace_bytes < static_cast<size_t>(l.Bytes()) || l.max_chunks > INT32_MAX ||
      reinterpret_cast<uintptr_t>(workspace) % 256 != 0) {
    return cudaErrorInvalidValue;
  }
  const Table t = MakeTable(workspace, l);
  TableKernel<<<1, 1, 0, stream>>>(a, l, t);
  return math == ChunkMath::kTf32x3 ? Launch<ChunkMath::kTf32x3>(a, l, t, blocks_z, stream)
                                    : Launch<ChunkMath::kTf32>(a, l, t, blocks_z, stream);
}

}  // namespace gdnserve::cuda
