// Phase 1 of the tensor-core chunkwise kernel: every chunk's own work, all
// chunks at once (gdn2_chunk_wy.cu has the algorithm and the notation).
#include <cstdint>

#include "kernels/cuda/gdn2_chunk_wy.cuh"

namespace gdnserve::cuda::wy {
namespace {

// Phase 1, a block per (chunk, key head), channels in slices of kSl so that
// two blocks fit an SM. Shared memory (floats, Smem1), row strides
// ss = kSl + 4 and as = kC + 4: Q, K, E, G, G' [kC][ss] (one slice); K'
// [6 kSub][ss] (sub-chunk rows 1..3 stacked, later T's scratch; Z goes to
// Q's space); A, M, T [kC][as]; the q/k norm factors [2][kC]; sub-chunk
// decay sums [4][kSl] (double).
//   The cumulative decay G is summed in double and kept as two floats, G (the
// value rounded) and G' (what the rounding left), so that G_t - G_i of two
// nearby tokens after a run of saturated ones (G ~ -1e3 for both) keeps
// float32 accuracy: (G_t - G_i) is exact there and (G'_t - G'_i) adds the rest.
//   Pass 0: the q/k norm factors of the chunk's tokens.
//   Pass 1, per slice: gates; G; Q~, K^, e^(G_C) out, E~ staged in W's
//     place; the diagonal 16 x 16 blocks of A and M pairwise (a thread a
//     pair, sums in registers); the blocks below on tensor cores as
//     (e_t e^(G_t - G_r)) . (k_i e^(G_r - G_i)), r the last token before the
//     row's sub-chunk (accumulators kept in registers).
//   T = (I + A)^-1 by blocked forward substitution, float32 (the diagonal
//     blocks on CUDA cores, the blocks below as TF32 x 3 products); M out.
//   Pass 2, per slice: W = T E~ (E~ read back).
//   U = T Z per value head, kSl value columns at a time.

// A thread's elements of a kSl-column slice: kWidth consecutive columns from
// c (1, or 4 on the four-element paths) in rows tr, tr + kRowStep, ... (kPer
// rows). Every loop over a slice's elements walks it so: a thread's columns
// stay fixed and its rows are compile-time steps apart.
template <int kThreads, int kWidth>
struct SliceThreads {
  static constexpr int kAcross = kSl / kWidth, kRowStep = kThreads / kAcross, kPer = kC / kRowStep;
  static_assert(kThreads % kAcross == 0 && kC % kRowStep == 0, "whole rows of the slice a pass");
  int c = static_cast<int>(threadIdx.x) % kAcross * kWidth, tr = static_cast<int>(threadIdx.x) / kAcross;
};

// One element's gates: e = sigmoid(b) (x 2 with negative eigenvalues) k^,
// the log decay in base-2 units -exp(A_log) softplus(g) log2(e) (g with
// dt_bias added); both zero where `ok` is false (rows past n, channels past
// K). z = sigmoid(w) v, as phase 1's products take it.
struct KeyGates {
  float neg_a, bscale;
  __device__ __forceinline__ float Erase(float b, float kn, bool ok) const {
    return ok ? chunk_common::SigmoidFtz(b) * bscale * kn : 0.0f;
  }
  __device__ __forceinline__ float LogDecay(float g, bool ok) const {
    return ok ? neg_a * chunk_common::SoftplusLog2(g) : 0.0f;
  }
};
template <ChunkMath kMath>
__device__ __forceinline__ float WriteGated(float w, float v) {
  return Round32<kMath>(chunk_common::SigmoidFtz(w) * v);
}

// Whether the key-side inputs can be read four elements at a time: K and the
// row strides multiples of 4, the arrays aligned to four elements (16 bytes
// float32, 8 bf16; a quad of a row is then wholly inside or wholly past K).
template <typename In>
__device__ __forceinline__ bool KeyInputsVec(const Gdn2RecurrentArgs& a) {
  return a.K % 4 == 0 && a.qk_stride % 4 == 0 && a.b_stride % 4 == 0 && a.g_stride % 4 == 0 && IoAligned<In>(a.q) &&
         IoAligned<In>(a.k) && IoAligned<In>(a.b) && IoAligned<In>(a.g) && Aligned16(a.dt_bias);
}

// LoadKeySlice's element pass with four-element loads and 16-byte shared
// stores (KeyInputsVec), a thread's quads as SliceThreads<kThreads, 4> says.
template <int kThreads, typename In>
__device__ __forceinline__ void LoadKeySliceVec(const Gdn2RecurrentArgs& a, int64_t t0, int n, int hk, int c0,
                                                KeyGates gates, const float* rq, const float* rk, float* sQ,
                                                float* sK, float* sE, float* sG) {
  using E = SliceThreads<kThreads, 4>;
  constexpr int ss = Smem1::Ss, kRowStep = E::kRowStep, kPer = E::kPer;
  const E e;
  const int c = e.c, tr = e.tr;
  const bool ch_ok = c0 + c < a.K;
  const int64_t col = static_cast<int64_t>(hk) * a.K + c0 + c, row = t0 + tr;
  const float4 zero = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  const float4 dtb = ch_ok ? Ld4(a.dt_bias, col) : zero;
  float4 q[kPer], k[kPer], b[kPer], g[kPer];
#pragma unroll
  for (int u = 0; u < kPer; ++u) {
    const bool ok = ch_ok && tr + u * kRowStep < n;
    const int64_t r = row + u * kRowStep;
    q[u] = ok ? LoadIo4<In>(a.q, r * a.qk_stride + col) : zero;
    k[u] = ok ? LoadIo4<In>(a.k, r * a.qk_stride + col) : zero;
    b[u] = ok ? LoadIo4<In>(a.b, r * a.b_stride + col) : zero;
    g[u] = ok ? LoadIo4<In>(a.g, r * a.g_stride + col) : zero;
  }
#pragma unroll
  for (int u = 0; u < kPer; ++u) {
    const int t = tr + u * kRowStep;
    const bool ok = ch_ok && t < n;
    const float fq = rq[t], fk = rk[t];
    auto er = [&](float bv, float kn) { return gates.Erase(bv, kn, ok); };
    auto gl = [&](float gv, float d) { return gates.LogDecay(gv + d, ok); };
    const float4 kn = make_float4(k[u].x * fk, k[u].y * fk, k[u].z * fk, k[u].w * fk);
    *reinterpret_cast<float4*>(&sQ[t * ss + c]) = make_float4(q[u].x * fq, q[u].y * fq, q[u].z * fq, q[u].w * fq);
    *reinterpret_cast<float4*>(&sK[t * ss + c]) = kn;
    *reinterpret_cast<float4*>(&sE[t * ss + c]) =
        make_float4(er(b[u].x, kn.x), er(b[u].y, kn.y), er(b[u].z, kn.z), er(b[u].w, kn.w));
    *reinterpret_cast<float4*>(&sG[t * ss + c]) =
        make_float4(gl(g[u].x, dtb.x), gl(g[u].y, dtb.y), gl(g[u].z, dtb.z), gl(g[u].w, dtb.w));
  }
}

// A slice [c0, c0 + kSl) of the chunk's inputs: q^, k^ (norm factors rq, rk),
// e = b * k^, g; then G, G' (inclusive cumulative sums in double, split in
// two floats; rows n.. the total). Rows n.. and channels K.. zero (G: no
// decay). Ends with a barrier.
template <int kThreads, typename In>
__device__ void LoadKeySlice(const Gdn2RecurrentArgs& a, bool vec, int64_t t0, int n, int hk, int c0, const float* rq,
                             const float* rk, float* sQ, float* sK, float* sE, float* sG, float* sGl, double* sSum) {
  constexpr int ss = Smem1::Ss;
  const int K = a.K;
  const KeyGates gates{-expf(a.a_log[hk]), a.allow_neg_eigval ? 2.0f : 1.0f};
  if (vec) {
    LoadKeySliceVec<kThreads, In>(a, t0, n, hk, c0, gates, rq, rk, sQ, sK, sE, sG);
  } else {
    // Every load of the thread in flight at once, then the arithmetic.
    using E = SliceThreads<kThreads, 1>;
    constexpr int kPer = E::kPer, kRowStep = E::kRowStep;
    const E e;
    const int c = e.c, tr = e.tr;
    const bool ch_ok = c0 + c < K;
    const int64_t col = static_cast<int64_t>(hk) * K + c0 + c, row = t0 + tr;
    const int64_t qi = row * a.qk_stride + col, bi = row * a.b_stride + col, gi = row * a.g_stride + col;
    const float dtb = ch_ok ? a.dt_bias[col] : 0.0f;
    float q[kPer], k[kPer], b[kPer], g[kPer];
#pragma unroll
    for (int u = 0; u < kPer; ++u) {
      const bool ok = ch_ok && tr + u * kRowStep < n;
      const int64_t qk_off = u * kRowStep * a.qk_stride;
      q[u] = ok ? LoadIo<In>(a.q, qi + qk_off) : 0.0f;
      k[u] = ok ? LoadIo<In>(a.k, qi + qk_off) : 0.0f;
      b[u] = ok ? LoadIo<In>(a.b, bi + u * kRowStep * a.b_stride) : 0.0f;
      g[u] = ok ? LoadIo<In>(a.g, gi + u * kRowStep * a.g_stride) + dtb : 0.0f;
    }
#pragma unroll
    for (int u = 0; u < kPer; ++u) {
      const int t = tr + u * kRowStep;
      const bool ok = ch_ok && t < n;
      const float kn = k[u] * rk[t];
      sQ[t * ss + c] = q[u] * rq[t];
      sK[t * ss + c] = kn;
      sE[t * ss + c] = gates.Erase(b[u], kn, ok);
      sG[t * ss + c] = gates.LogDecay(g[u], ok);
    }
  }
  __syncthreads();
  // Each sub-chunk's total, then the sums from the chunk's start (a thread per
  // (channel, sub-chunk) both times).
  for (int i = threadIdx.x; i < 4 * kSl; i += kThreads) {
    const int cs = i % kSl, s = i / kSl;
    double acc = 0.0;
    for (int t = s * kSub; t < (s + 1) * kSub; ++t) acc += sG[t * ss + cs];
    sSum[s * kSl + cs] = acc;
  }
  __syncthreads();
  for (int i = threadIdx.x; i < 4 * kSl; i += kThreads) {
    const int cs = i % kSl, s = i / kSl;
    double acc = 0.0;
    for (int r = 0; r < s; ++r) acc += sSum[r * kSl + cs];
    for (int t = s * kSub; t < (s + 1) * kSub; ++t) {
      acc += sG[t * ss + cs];
      const float hi = static_cast<float>(acc);
      sG[t * ss + cs] = hi;
      sGl[t * ss + cs] = static_cast<float>(acc - hi);
    }
  }
  __syncthreads();
}

// e^(G_t - G_i) from the split sums: the difference of the rounded values is
// exact for nearby values, the remainders add what the rounding left.
__device__ __forceinline__ float DecayBetween(const float* sG, const float* sGl, int t, int i) {
  return chunk_common::Exp2Ftz((sG[t] - sG[i]) + (sGl[t] - sGl[i]));
}

// The diagonal 16 x 16 blocks' work, in slots of two rounds of the block's
// threads: slots below 4 x 120 are the pairs i < t of a sub-chunk (true;
// the 120 of sub-chunk s in row order), the 32 after them two rows t, t + 1
// of M's diagonal each (false; i = t).
constexpr int kDiagPairs = kSub * (kSub - 1) / 2;
static_assert(4 * kDiagPairs + kC / 2 == 2 * kThreads1, "two rounds of slots cover the diagonal blocks");
__device__ __forceinline__ bool DiagSlot(int slot, int* t, int* i) {
  if (slot >= 4 * kDiagPairs) {
    *t = *i = 2 * (slot - 4 * kDiagPairs);
    return false;
  }
  const int s = slot / kDiagPairs, q = slot % kDiagPairs;
  // Row tl of the sub-chunk holds pairs [tl (tl - 1) / 2, tl (tl + 1) / 2):
  // the square root is exact at the rows' starts; the checks guard the rest.
  int tl = static_cast<int>((1.0f + sqrtf(8.0f * q + 1.0f)) * 0.5f);
  if (tl * (tl - 1) / 2 > q) --tl;
  if (tl * (tl + 1) / 2 <= q) ++tl;
  *t = s * kSub + tl;
  *i = s * kSub + q - tl * (tl - 1) / 2;
  return true;
}

// Off-diagonal tiles of A and M (16 x 8 each): 12 per matrix, sub-chunk row
// s = 1 (2 tiles), 2 (4), 3 (6). K'(s) rows start at KOff(s) in the K' block.
__device__ __forceinline__ int KOff(int s) { return s == 1 ? 0 : s == 2 ? kSub : 3 * kSub; }
__device__ __forceinline__ void OffTile(int j, bool* is_m, int* s, int* n0) {
  const int jj = j % 12;
  *is_m = j >= 12;
  *s = jj < 2 ? 1 : jj < 6 ? 2 : 3;
  *n0 = (jj - (*s == 1 ? 0 : *s == 2 ? 2 : 6)) * 8;
}

// out[t][j] (row stride ld, global) = (T X)[t][j] for a slice X [kC][Ss] of
// kSl columns in shared memory, T [kC][As] lower triangular, both rounded by
// Round32: a 16 x 8 tile a warp at a time, k only up to the tile's last row.
// kRound: the outputs rounded as Round32 (factors phase 2 only multiplies).
template <int kWarps, ChunkMath kMath, bool kRound>
__device__ void TimesT(const float* sT, const float* sX, float* out, int ld) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane >> 2, tq = lane & 3;
  for (int job = warp; job < 4 * (kSl / 8); job += kWarps) {
    const int m0 = (job % 4) * 16, n0 = (job / 4) * 8;
    float acc[1][4] = {{0.0f, 0.0f, 0.0f, 0.0f}};
    WarpMma<1, false, false, kMath, true, true>(acc, sT, Smem1::As, m0, sX, Smem1::Ss, n0, 0, m0 + 16);
    const int c = n0 + 2 * tq;
    auto r = [](float x) { return kRound ? Round32<kMath>(x) : x; };
    *reinterpret_cast<float2*>(&out[(m0 + g) * ld + c]) = make_float2(r(acc[0][0]), r(acc[0][1]));
    *reinterpret_cast<float2*>(&out[(m0 + g + 8) * ld + c]) = make_float2(r(acc[0][2]), r(acc[0][3]));
  }
}

template <ChunkMath kMath, typename In>
__global__ void __launch_bounds__(kThreads1, 2) Phase1Kernel(Gdn2RecurrentArgs a, Layout l, Table tab) {
  extern __shared__ float smem[];
  const int chunk = blockIdx.x, hk = blockIdx.y;
  if (chunk >= *tab.num_chunks) return;
  constexpr int ss = Smem1::Ss, as = Smem1::As, kWarps = kThreads1 / 32;
  static_assert(kWarps == 8, "three off-diagonal tiles a warp");
  constexpr int kTiles = 24 / kWarps;  // off-diagonal tiles a warp
  const int K = a.K, Kp = l.Kp;
  float* sQ = smem;
  float* sK = sQ + kC * ss;
  float* sE = sK + kC * ss;
  float* sG = sE + kC * ss;
  float* sGl = sG + kC * ss;
  float* sX = sGl + kC * ss;  // K' [6 kSub][ss]
  float* sA = sX + 6 * kSub * ss;
  float* sM = sA + kC * as;
  float* sT = sM + kC * as;
  float* sR = sT + kC * as;  // rq [kC], rk [kC]
  auto* sSum = reinterpret_cast<double*>(sR + 2 * kC);  // 8-byte aligned: every block above is even
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane >> 2, tq = lane & 3;
  // A thread's channel of a slice and first row; its rows kRowStep apart.
  using Elems = SliceThreads<kThreads1, 1>;
  constexpr int kRowStep = Elems::kRowStep;
  const Elems elems;
  const int sc = elems.c, sr = elems.tr;
  const int64_t t0 = tab.chunk_t0[chunk];
  const int n = tab.chunk_n[chunk];

  // Pass 0: norm factors, a warp per token, four tokens' loads in flight at
  // once; A and M zero.
  const bool vec = KeyInputsVec<In>(a);
  static_assert(kC % (4 * kWarps) == 0, "rows in batches of four a warp");
  for (int r0 = 0; r0 < kC / kWarps; r0 += 4) {
    float qv[4][kMaxK / 32], kv[4][kMaxK / 32];
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int t = warp + (r0 + r) * kWarps;
      const int64_t base = (t0 + t) * a.qk_stride + static_cast<int64_t>(hk) * K;
      static_assert(kMaxK / 32 == 4, "a lane's channels are one quad when read four at a time");
      if (vec) {  // lane: channels [4 lane, 4 lane + 4)
        const bool ok = t < n && 4 * lane < K;
        const float4 x = ok ? LoadIo4<In>(a.q, base + 4 * lane) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        const float4 y = ok ? LoadIo4<In>(a.k, base + 4 * lane) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        qv[r][0] = x.x, qv[r][1] = x.y, qv[r][2] = x.z, qv[r][3] = x.w;
        kv[r][0] = y.x, kv[r][1] = y.y, kv[r][2] = y.z, kv[r][3] = y.w;
        continue;
      }
#pragma unroll
      for (int j = 0; j < kMaxK / 32; ++j) {
        const int c = lane + 32 * j;
        const bool ok = t < n && c < K;
        qv[r][j] = ok ? LoadIo<In>(a.q, base + c) : 0.0f;
        kv[r][j] = ok ? LoadIo<In>(a.k, base + c) : 0.0f;
      }
    }
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int t = warp + (r0 + r) * kWarps;
      float qq = 0.0f, kk = 0.0f;
#pragma unroll
      for (int j = 0; j < kMaxK / 32; ++j) {
        qq += qv[r][j] * qv[r][j];
        kk += kv[r][j] * kv[r][j];
      }
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) {
        qq += __shfl_xor_sync(0xffffffffu, qq, o);
        kk += __shfl_xor_sync(0xffffffffu, kk, o);
      }
      if (lane == 0) {
        sR[t] = t < n ? a.scale * rsqrtf(qq + 1e-6f) : 0.0f;
        sR[kC + t] = t < n ? rsqrtf(kk + 1e-6f) : 0.0f;
      }
    }
  }
  for (int i = tid; i < kC * as; i += kThreads1) sA[i] = sM[i] = 0.0f;

  float* out = tab.key + (static_cast<int64_t>(chunk) * l.H + hk) * l.KeyFloats();
  float* oW = out;
  float* oQ = oW + kC * Kp;
  float* oK = oQ + kC * Kp;
  float* oM = oK + kC * Kp;
  float* oD = oM + kC * kC;

  // Pass 1: A and M slice by slice, and the factors that need no T.
  float acc[kTiles][1][4];
#pragma unroll
  for (int j = 0; j < kTiles; ++j) ZeroAcc(acc[j]);
  // The diagonal blocks' sums of the thread's two DiagSlot slots: (A_ti, M_ti)
  // for a pair slot, (M_tt, M_t+1,t+1) for a diagonal one.
  float diag[2][2] = {{0.0f, 0.0f}, {0.0f, 0.0f}};
  for (int c0 = 0; c0 < Kp; c0 += kSl) {
    __syncthreads();  // norms ready; the previous slice done with
    LoadKeySlice<kThreads1, In>(a, vec, t0, n, hk, c0, sR, sR + kC, sQ, sK, sE, sG, sGl, sSum);
    // Q~ = q e^G, K^ = k e^(G_C - G), e^(G_C) out, and E~ = e e^G staged in
    // W's place (W = T E~ once T is known).
    {
      const float gc = sG[(kC - 1) * ss + sc], gcl = sGl[(kC - 1) * ss + sc];
      if (sr == 0) oD[c0 + sc] = c0 + sc < K ? chunk_common::Exp2Ftz(gc) : 0.0f;
#pragma unroll
      for (int t = sr; t < kC; t += kRowStep) {
        const int x = t * ss + sc, o = t * Kp + c0 + sc;
        const float f = chunk_common::Exp2Ftz(sG[x]);
        oQ[o] = Round32<kMath>(sQ[x] * f);
        oK[o] = Round32<kMath>(sK[x] * chunk_common::Exp2Ftz((gc - sG[x]) + (gcl - sGl[x])));
        oW[o] = sE[x] * f;
      }
    }
    // Diagonal blocks, pairwise (DiagSlot: a thread a pair i < t, or two
    // rows of M's diagonal, in each of two rounds), sums kept in registers
    // across the slices.
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      int t, i;
      const bool pair = DiagSlot(tid + r * kThreads1, &t, &i);
      if (pair) {
        float av[4] = {0.0f, 0.0f, 0.0f, 0.0f}, mv[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
        for (int c = 0; c < kSl; c += 4) {
          const float4 gt = Ld4(sG, t * ss + c), lt = Ld4(sGl, t * ss + c), et = Ld4(sE, t * ss + c),
                       qt = Ld4(sQ, t * ss + c), gi = Ld4(sG, i * ss + c), li = Ld4(sGl, i * ss + c),
                       ki = Ld4(sK, i * ss + c);
          auto add = [&](int j, float g_t, float l_t, float e_t, float q_t, float g_i, float l_i, float k_i) {
            const float kd = k_i * chunk_common::Exp2Ftz((g_t - g_i) + (l_t - l_i));
            av[j] += e_t * kd;
            mv[j] += q_t * kd;
          };
          add(0, gt.x, lt.x, et.x, qt.x, gi.x, li.x, ki.x);
          add(1, gt.y, lt.y, et.y, qt.y, gi.y, li.y, ki.y);
          add(2, gt.z, lt.z, et.z, qt.z, gi.z, li.z, ki.z);
          add(3, gt.w, lt.w, et.w, qt.w, gi.w, li.w, ki.w);
        }
        diag[r][0] += (av[0] + av[1]) + (av[2] + av[3]);
        diag[r][1] += (mv[0] + mv[1]) + (mv[2] + mv[3]);
      } else {  // M_tt = q~_t . k_t (no decay), rows t and t + 1
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          float mv[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
          for (int c = 0; c < kSl; c += 4) {
            const float4 qt = Ld4(sQ, (t + h) * ss + c), kt = Ld4(sK, (t + h) * ss + c);
            mv[0] += qt.x * kt.x;
            mv[1] += qt.y * kt.y;
            mv[2] += qt.z * kt.z;
            mv[3] += qt.w * kt.w;
          }
          diag[r][h] += (mv[0] + mv[1]) + (mv[2] + mv[3]);
        }
      }
    }
    __syncthreads();
    // E' = e e^(G_t - G_r), Q' likewise (rows of sub-chunks 1..3, in place);
    // K'(s)_i = k_i e^(G_r - G_i) for i < 16 s; r = 16 s - 1.
    // (Rows sr + kRowStep u: a sub-chunk holds whole steps, so s and r
    // are the unrolled loop's constants.)
    static_assert(kSub % kRowStep == 0, "a sub-chunk in whole row steps");
#pragma unroll
    for (int u = 0; u < 3 * kSub / kRowStep; ++u) {
      const int t = kSub + sr + u * kRowStep, r = (kSub + u * kRowStep) / kSub * kSub - 1;
      const float f = DecayBetween(sG, sGl, t * ss + sc, r * ss + sc);
      sE[t * ss + sc] = Round32<kMath>(sE[t * ss + sc] * f);
      sQ[t * ss + sc] = Round32<kMath>(sQ[t * ss + sc] * f);
    }
#pragma unroll
    for (int u = 0; u < 6 * kSub / kRowStep; ++u) {
      const int row0 = u * kRowStep, row = row0 + sr;
      const int s = row0 < kSub ? 1 : row0 < 3 * kSub ? 2 : 3, t = row - KOff(s), r = s * kSub - 1;
      sX[row * ss + sc] = Round32<kMath>(sK[t * ss + sc] * DecayBetween(sG, sGl, r * ss + sc, t * ss + sc));
    }
    __syncthreads();
#pragma unroll
    for (int j = 0; j < kTiles; ++j) {
      bool is_m;
      int s, n0;
      OffTile(warp + j * kWarps, &is_m, &s, &n0);
      WarpMma<1, false, true, kMath, true, true>(acc[j], is_m ? sQ : sE, ss, s * kSub, sX + KOff(s) * ss, ss, n0, 0,
                                                 kSl);
    }
  }
#pragma unroll
  for (int j = 0; j < kTiles; ++j) {
    bool is_m;
    int s, n0;
    OffTile(warp + j * kWarps, &is_m, &s, &n0);
    float* dst = is_m ? sM : sA;
    const int r = s * kSub + g, c = n0 + 2 * tq;
    dst[r * as + c] = acc[j][0][0];
    dst[r * as + c + 1] = acc[j][0][1];
    dst[(r + 8) * as + c] = acc[j][0][2];
    dst[(r + 8) * as + c + 1] = acc[j][0][3];
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    int t, i;
    if (DiagSlot(tid + r * kThreads1, &t, &i)) {
      sA[t * as + i] = diag[r][0];
      sM[t * as + i] = diag[r][1];
    } else {
      sM[t * as + t] = diag[r][0];
      sM[(t + 1) * as + t + 1] = diag[r][1];
    }
  }
  __syncthreads();

  // T = (I + A)^-1, float32. Diagonal blocks by forward substitution, a
  // thread per (block, column), the column in registers; zero above.
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
  for (int i = tid; i < kC * kC; i += kThreads1) {
    const int t = i / kC, j = i % kC;
    if (j / kSub > t / kSub) sT[t * as + j] = 0.0f;
  }
  __syncthreads();
  // Blocks below, row block by row block: X = A[s][0, 16 s) T[0, 16 s)[0, 16 s)
  // (T's blocks above the diagonal are zero), then T[s][0, 16 s) = -T[s][s] X;
  // a warp an 8-column tile of the 16 s columns, both products on tensor
  // cores in float32 accuracy (TF32 x 3), the warp's X tile in the K' space
  // (free now).
  constexpr int xs = 3 * kSub + 4;
  static_assert(2 * 3 <= kWarps, "a warp a tile of the widest row block");
  for (int s = 1; s < 4; ++s) {
    if (warp < 2 * s) {
      const int n0 = 8 * warp, c = n0 + 2 * tq;
      float x[1][4] = {{0.0f, 0.0f, 0.0f, 0.0f}};
      WarpMma<1, false, false, ChunkMath::kTf32x3>(x, sA, as, s * kSub, sT, as, n0, 0, s * kSub);
      sX[g * xs + c] = x[0][0];
      sX[g * xs + c + 1] = x[0][1];
      sX[(g + 8) * xs + c] = x[0][2];
      sX[(g + 8) * xs + c + 1] = x[0][3];
      __syncwarp();
      float y[1][4] = {{0.0f, 0.0f, 0.0f, 0.0f}};
      WarpMma<1, false, false, ChunkMath::kTf32x3>(y, sT + s * kSub, as, s * kSub, sX, xs, n0, 0, kSub);
      const int r = s * kSub + g;
      sT[r * as + c] = -y[0][0];
      sT[r * as + c + 1] = -y[0][1];
      sT[(r + 8) * as + c] = -y[0][2];
      sT[(r + 8) * as + c + 1] = -y[0][3];
    }
    __syncthreads();
  }

  // T from here on only multiplies (W and U): rounded once (the barrier
  // before the first product is pass 2's).
  for (int i = tid; i < kC * kC; i += kThreads1) {
    const int r = i / kC, c = i % kC;
    oM[i] = Round32<kMath>(sM[r * as + c]);
    sT[r * as + c] = Round32<kMath>(sT[r * as + c]);
  }

  // Pass 2: W = T E~, E~ read back from W's place (this block wrote it).
  for (int c0 = 0; c0 < Kp; c0 += kSl) {
    constexpr int kPer = kC / kRowStep;
    float e[kPer];
#pragma unroll
    for (int u = 0; u < kPer; ++u) e[u] = oW[(sr + u * kRowStep) * Kp + c0 + sc];
#pragma unroll
    for (int u = 0; u < kPer; ++u) sE[(sr + u * kRowStep) * ss + sc] = Round32<kMath>(e[u]);
    __syncthreads();
    TimesT<kWarps, kMath, true>(sT, sE, oW + c0, Kp);
    __syncthreads();  // E free for the next slice
  }

  // U = T Z for each value head of the group, kSl value columns at a time
  // (Z in Q's space).
  const int group = a.HV / a.H;
  float* sZ = sQ;
  const bool vvec =
      a.V % 4 == 0 && a.w_stride % 4 == 0 && a.v_stride % 4 == 0 && IoAligned<In>(a.w) && IoAligned<In>(a.v);
  for (int hv = hk * group; hv < (hk + 1) * group; ++hv) {
    float* oU = tab.value + (static_cast<int64_t>(chunk) * l.HV + hv) * l.ValueFloats();
    for (int v0 = 0; v0 < l.Vp; v0 += kSl) {
      if (vvec) {  // a thread a quad of columns in every kStep4-th row
        using Quads = SliceThreads<kThreads1, 4>;
        constexpr int kStep4 = Quads::kRowStep, kPer4 = Quads::kPer;
        const Quads quads;
        const int c = quads.c, tr = quads.tr;
        const bool v_ok = v0 + c < a.V;
        const int64_t col = static_cast<int64_t>(hv) * a.V + v0 + c;
        const float4 zero = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        float4 wv[kPer4], vv[kPer4];
#pragma unroll
        for (int u = 0; u < kPer4; ++u) {
          const bool ok = v_ok && tr + u * kStep4 < n;
          const int64_t r = t0 + tr + u * kStep4;
          wv[u] = ok ? LoadIo4<In>(a.w, r * a.w_stride + col) : zero;
          vv[u] = ok ? LoadIo4<In>(a.v, r * a.v_stride + col) : zero;
        }
#pragma unroll
        for (int u = 0; u < kPer4; ++u) {
          *reinterpret_cast<float4*>(&sZ[(tr + u * kStep4) * ss + c]) =
              make_float4(WriteGated<kMath>(wv[u].x, vv[u].x), WriteGated<kMath>(wv[u].y, vv[u].y),
                          WriteGated<kMath>(wv[u].z, vv[u].z), WriteGated<kMath>(wv[u].w, vv[u].w));
        }
      } else {
        constexpr int kPer = kC / kRowStep;
        const bool v_ok = v0 + sc < a.V;
        const int64_t col = static_cast<int64_t>(hv) * a.V + v0 + sc;
        const int64_t wi = (t0 + sr) * a.w_stride + col, vi = (t0 + sr) * a.v_stride + col;
        float wv[kPer], vv[kPer];
#pragma unroll
        for (int u = 0; u < kPer; ++u) {
          const bool ok = v_ok && sr + u * kRowStep < n;
          wv[u] = ok ? LoadIo<In>(a.w, wi + u * kRowStep * a.w_stride) : 0.0f;
          vv[u] = ok ? LoadIo<In>(a.v, vi + u * kRowStep * a.v_stride) : 0.0f;
        }
#pragma unroll
        for (int u = 0; u < kPer; ++u) {
          sZ[(sr + u * kRowStep) * ss + sc] = WriteGated<kMath>(wv[u], vv[u]);
        }
      }
      __syncthreads();
      TimesT<kWarps, kMath, false>(sT, sZ, oU + v0, l.Vp);
      __syncthreads();
    }
  }
}

}  // namespace

template <ChunkMath kMath, typename Io>
cudaError_t LaunchPhase1(const Gdn2RecurrentArgs& a, const Layout& l, const Table& t, cudaStream_t stream) {
  const size_t bytes = Smem1::Floats() * sizeof(float);
  if (cudaError_t e = chunk_common::AllowSharedBytes(Phase1Kernel<kMath, Io>, bytes); e != cudaSuccess) return e;
  Phase1Kernel<kMath, Io><<<dim3(static_cast<unsigned>(l.max_chunks), a.H), kThreads1, bytes, stream>>>(a, l, t);
  return cudaGetLastError();
}

template cudaError_t LaunchPhase1<ChunkMath::kTf32, float>(const Gdn2RecurrentArgs&, const Layout&, const Table&,
                                                           cudaStream_t);
template cudaError_t LaunchPhase1<ChunkMath::kTf32x3, float>(const Gdn2RecurrentArgs&, const Layout&, const Table&,
                                                             cudaStream_t);
template cudaError_t LaunchPhase1<ChunkMath::kTf32, __nv_bfloat16>(const Gdn2RecurrentArgs&, const Layout&,
                                                                   const Table&, cudaStream_t);
template cudaError_t LaunchPhase1<ChunkMath::kTf32x3, __nv_bfloat16>(const Gdn2RecurrentArgs&, const Layout&,
                                                                     const Table&, cudaStream_t);

}  // namespace gdnserve::cuda::wy
