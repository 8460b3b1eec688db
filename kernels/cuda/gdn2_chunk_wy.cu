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
// three significant products, for float32 accuracy (float32 models). In TF32
// operands are rounded to TF32 once, where they are written (phase 2's W,
// Q~, K^, M, N; phase 1's scaled key rows, T and the slices T multiplies), so
// the inner loops convert only phase 2's state: the same products as
// rounding at every load.
//
// The op's inputs (q, k, v, g, b, w) and output are float32 or bf16
// (Gdn2RecurrentArgs::io: the Io / In / Out template parameters), read into
// float32 where they are loaded and rounded where the output is stored; the
// workspace and the state are float32 either way.
#include <cuda_bf16.h>

#include <cstdint>
#include <type_traits>

#include "kernels/cuda/gdn2_chunk_common.cuh"
#include "kernels/cuda/ops.h"

namespace gdnserve::cuda {
namespace {

using chunk_common::kC;
using chunk_common::kMaxK;
constexpr int kSub = 16;  // sub-chunk
constexpr int kSl = 32;   // phase 1's channel slice; K and V are padded to multiples of it
constexpr int kThreads1 = 256;
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

// kARounded / kBRounded: that operand's values are TF32 already (Round32
// below), so TF32 products (not TF32 x 3, which splits them) take their bits
// as they are: the same products, fewer instructions in the inner loop.
template <int NT, bool kTA, bool kTB, ChunkMath kMath, bool kARounded = false, bool kBRounded = false>
__device__ __forceinline__ void WarpMma(float (&acc)[NT][4], const float* A, int lda, int m0, const float* B, int ldb,
                                        int n0, int k0, int k1) {
  constexpr bool kARaw = kARounded && kMath == ChunkMath::kTf32, kBRaw = kBRounded && kMath == ChunkMath::kTf32;
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  auto at = [&](int m, int k) { return kTA ? A[k * lda + m] : A[m * lda + k]; };
  auto bt = [&](int k, int n) { return kTB ? B[n * ldb + k] : B[k * ldb + n]; };
  for (int k = k0; k < k1; k += 8) {
    const float af[4] = {at(m0 + g, k + t), at(m0 + g + 8, k + t), at(m0 + g, k + t + 4), at(m0 + g + 8, k + t + 4)};
    uint32_t ah[4], al[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      ah[i] = kARaw ? __float_as_uint(af[i]) : Tf32(af[i]);
      if constexpr (kMath == ChunkMath::kTf32x3) al[i] = Tf32(af[i] - __uint_as_float(ah[i]));
    }
#pragma unroll
    for (int j = 0; j < NT; ++j) {
      const float b0 = bt(k + t, n0 + 8 * j + g), b1 = bt(k + t + 4, n0 + 8 * j + g);
      const uint32_t bh0 = kBRaw ? __float_as_uint(b0) : Tf32(b0), bh1 = kBRaw ? __float_as_uint(b1) : Tf32(b1);
      if constexpr (kMath == ChunkMath::kTf32x3) {
        Mma(acc[j], al, bh0, bh1);
        Mma(acc[j], ah, Tf32(b0 - __uint_as_float(bh0)), Tf32(b1 - __uint_as_float(bh1)));
      }
      Mma(acc[j], ah, bh0, bh1);
    }
  }
}

// x as a TF32 product will see it (cvt.rna), for values written once and
// multiplied many times; float32 (TF32 x 3) keeps every bit.
template <ChunkMath kMath>
__device__ __forceinline__ float Round32(float x) {
  return kMath == ChunkMath::kTf32 ? __uint_as_float(Tf32(x)) : x;
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
// then per (chunk, value head) U. Kp = K rounded up to kSl, Vp = V rounded up
// to kSl (padding columns zero).
struct Layout {
  int64_t max_chunks = 0;
  int P = 0, H = 0, HV = 0, Kp = 0, Vp = 0;
  // Ints: num_chunks [1], chunk_t0, chunk_n [max], piece_first, piece_count [P].
  __host__ __device__ int64_t IntBytes() const { return ((1 + 2 * max_chunks + 2 * int64_t{P}) * 4 + 255) / 256 * 256; }
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
  l.Kp = RoundUp(K, kSl);
  l.Vp = RoundUp(V, kSl);
  return l;
}

struct Table {
  int32_t* num_chunks;
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
  t.chunk_t0 = ints + 1;
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
    // max_chunks bounds the pieces' chunks (ceil(T / kC) + P); a list that
    // names a piece twice could pass it: such chunks are dropped, not written
    // past the table.
    for (int64_t t0 = s; t0 < e && c < l.max_chunks; t0 += kC) {
      t.chunk_t0[c] = static_cast<int32_t>(t0);
      t.chunk_n[c] = static_cast<int32_t>(e - t0 < kC ? e - t0 : kC);
      ++c;
    }
    t.piece_count[p] = c - t.piece_first[p];
  }
  *t.num_chunks = c;
}

// ---------------------------------------------------------------------------
// Phase 1, a block per (chunk, key head), channels in slices of kSl so that
// two blocks fit an SM. Shared memory (floats), row strides ss = kSl + 4 and
// as = kC + 4: Q, K, E, G, G' [kC][ss] (one slice); K' [6 kSub][ss] (sub-chunk
// rows 1..3 stacked, later T's scratch; Z goes to Q's space); A, M, T [kC][as]; the q/k
// norm factors [2][kC]; sub-chunk decay sums [4][kSl] (double).
//   The cumulative decay G is summed in double and kept as two floats, G (the
// value rounded) and G' (what the rounding left), so that G_t - G_i of two
// nearby tokens after a run of saturated ones (G ~ -1e3 for both) keeps
// float32 accuracy: (G_t - G_i) is exact there and (G'_t - G'_i) adds the rest.
// The comments write e^G with G the natural-log cumulative decay; the code
// keeps G log2(e) instead (base-2 units: chunk_common::SoftplusLog2), so that
// every e^(...) above is one 2^(...) (Exp2Ftz).
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
struct Smem1 {
  static constexpr int Ss = kSl + 4, As = kC + 4;
  static constexpr size_t Floats() { return (5 * kC + 6 * kSub) * Ss + 3 * kC * As + 2 * kC + 2 * 4 * kSl; }
};

__device__ __forceinline__ float4 Ld4(const float* base, int64_t i) {
  return *reinterpret_cast<const float4*>(base + i);
}
__device__ __forceinline__ bool Aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// The op's inputs and output as stored (Gdn2RecurrentArgs::io: T float or
// __nv_bfloat16), element i of an array whose pointer is typed float.
template <typename T>
__device__ __forceinline__ float LoadIo(const float* p, int64_t i) {
  if constexpr (std::is_same_v<T, float>) {
    return p[i];
  } else {
    return __bfloat162float(reinterpret_cast<const __nv_bfloat16*>(p)[i]);
  }
}
// Elements i .. i + 3 (IoAligned arrays, i a multiple of 4).
template <typename T>
__device__ __forceinline__ float4 LoadIo4(const float* p, int64_t i) {
  if constexpr (std::is_same_v<T, float>) {
    return Ld4(p, i);
  } else {
    const uint2 u = *reinterpret_cast<const uint2*>(reinterpret_cast<const __nv_bfloat16*>(p) + i);
    const float2 lo = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u.x));
    const float2 hi = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u.y));
    return make_float4(lo.x, lo.y, hi.x, hi.y);
  }
}
template <typename T>
__device__ __forceinline__ void StoreIo(float* p, int64_t i, float v) {
  if constexpr (std::is_same_v<T, float>) {
    p[i] = v;
  } else {
    reinterpret_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(v);
  }
}
template <typename T>
__device__ __forceinline__ bool IoAligned(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % (4 * sizeof(T)) == 0;
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
// stores (KeyInputsVec):
// a thread a quad of channels in every (kThreads / (kSl / 4))-th row.
template <int kThreads, typename In>
__device__ __forceinline__ void LoadKeySliceVec(const Gdn2RecurrentArgs& a, int64_t t0, int n, int hk, int c0,
                                                float neg_a, float bscale, const float* rq, const float* rk, float* sQ,
                                                float* sK, float* sE, float* sG) {
  constexpr int ss = Smem1::Ss, kQuads = kSl / 4, kRowStep = kThreads / kQuads, kPer = kC / kRowStep;
  static_assert(kThreads % kQuads == 0 && kC % kRowStep == 0, "whole rows of quads a pass");
  const int c = static_cast<int>(threadIdx.x) % kQuads * 4, tr = static_cast<int>(threadIdx.x) / kQuads;
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
    auto e = [&](float bv, float kn) { return ok ? chunk_common::SigmoidFtz(bv) * bscale * kn : 0.0f; };
    auto gl = [&](float gv, float d) { return ok ? neg_a * chunk_common::SoftplusLog2(gv + d) : 0.0f; };
    const float4 kn = make_float4(k[u].x * fk, k[u].y * fk, k[u].z * fk, k[u].w * fk);
    *reinterpret_cast<float4*>(&sQ[t * ss + c]) = make_float4(q[u].x * fq, q[u].y * fq, q[u].z * fq, q[u].w * fq);
    *reinterpret_cast<float4*>(&sK[t * ss + c]) = kn;
    *reinterpret_cast<float4*>(&sE[t * ss + c]) =
        make_float4(e(b[u].x, kn.x), e(b[u].y, kn.y), e(b[u].z, kn.z), e(b[u].w, kn.w));
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
  const float neg_a = -expf(a.a_log[hk]);
  const float bscale = a.allow_neg_eigval ? 2.0f : 1.0f;
  if (vec) {
    LoadKeySliceVec<kThreads, In>(a, t0, n, hk, c0, neg_a, bscale, rq, rk, sQ, sK, sE, sG);
  } else {
    // Every load of the thread in flight at once, then the arithmetic. A
    // thread's channel is fixed, its rows kRowStep apart.
    constexpr int kPer = kC * kSl / kThreads, kRowStep = kThreads / kSl;
    static_assert(kThreads % kSl == 0 && kC % kRowStep == 0, "whole rows of the slice a pass");
    const int c = static_cast<int>(threadIdx.x) % kSl, tr = static_cast<int>(threadIdx.x) / kSl;
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
      sE[t * ss + c] = ok ? chunk_common::SigmoidFtz(b[u]) * bscale * kn : 0.0f;
      sG[t * ss + c] = ok ? neg_a * chunk_common::SoftplusLog2(g[u]) : 0.0f;
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
  constexpr int kRowStep = kThreads1 / kSl;
  const int sc = tid % kSl, sr = tid / kSl;
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
      if (vvec) {  // a thread a quad of columns in every 32nd row
        constexpr int kQuads = kSl / 4, kStep4 = kThreads1 / kQuads, kPer4 = kC / kStep4;
        const int c = tid % kQuads * 4, tr = tid / kQuads;
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
          auto z = [](float w, float v) { return Round32<kMath>(chunk_common::SigmoidFtz(w) * v); };
          *reinterpret_cast<float4*>(&sZ[(tr + u * kStep4) * ss + c]) =
              make_float4(z(wv[u].x, vv[u].x), z(wv[u].y, vv[u].y), z(wv[u].z, vv[u].z), z(wv[u].w, vv[u].w));
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
          sZ[(sr + u * kRowStep) * ss + sc] = Round32<kMath>(chunk_common::SigmoidFtz(wv[u]) * vv[u]);
        }
      }
      __syncthreads();
      TimesT<kWarps, kMath, false>(sT, sZ, oU + v0, l.Vp);
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

template <int kTV, ChunkMath kMath, typename Out>
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
    if (lane < Kp / 4) {  // a warp a row, a lane 4 floats (Kp <= 128)
      for (int r = warp; r < 2 * kC; r += kThreads2 / 32)
        CpAsync16(&sWQ[r * ks + 4 * lane], in + r * Kp + 4 * lane, true);
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
    if (lane < Kp / 4) {
      for (int r = warp; r < kC; r += kThreads2 / 32) CpAsync16(&sKh[r * kh + 4 * lane], in + r * Kp + 4 * lane, true);
    }
    const float* m = in + kC * Kp;
    for (int i = tid; i < kC * kC / 4; i += kThreads2) {
      const int r = i / (kC / 4), c = (i % (kC / 4)) * 4;
      CpAsync16(&sM[r * as + c], m + r * kC + c, true);
    }
    const float* d = m + kC * kC;
    if (tid < Kp / 4) CpAsync16(&sD[tid * 4], d + tid * 4, true);
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
    WarpMma<NT, false, false, kMath, true>(acc, sWQ, ks, 16 * warp, sS, us, 0, 0, Kp);
    if (warp < 4) {  // N = U - P_W
#pragma unroll
      for (int j = 0; j < NT; ++j) {
        const int c = 8 * j + 2 * tq, r = 16 * warp + g;
        sN[r * us + c] = Round32<kMath>(sU[r * us + c] - acc[j][0]);
        sN[r * us + c + 1] = Round32<kMath>(sU[r * us + c + 1] - acc[j][1]);
        sN[(r + 8) * us + c] = Round32<kMath>(sU[(r + 8) * us + c] - acc[j][2]);
        sN[(r + 8) * us + c + 1] = Round32<kMath>(sU[(r + 8) * us + c + 1] - acc[j][3]);
      }
    }
    CpAsyncWait<0>();  // set B of this chunk
    __syncthreads();   // N written; set A free
    if (more) load_a(chunk + 1);
    if (warp >= 4) {  // O = P_Q + M N, written out
      const int m0 = 16 * (warp - 4);
      WarpMma<NT, false, false, kMath, true, true>(acc, sM, as, m0, sN, us, 0, 0, m0 + 16);
#pragma unroll
      for (int j = 0; j < NT; ++j) {
        const int c = 8 * j + 2 * tq;
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int t = m0 + g + 8 * h;
          if (t >= n) continue;
          const int64_t o = (t0 + t) * a.out_stride + static_cast<int64_t>(hv) * V + v0;
          if (c < nv) StoreIo<Out>(a.out, o + c, acc[j][2 * h]);
          if (c + 1 < nv) StoreIo<Out>(a.out, o + c + 1, acc[j][2 * h + 1]);
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
      WarpMma<NT, true, false, kMath, true, true>(st, sKh, kh, m0, sN, us, 0, 0, RoundUp(n, 8));
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

template <int kTV, ChunkMath kMath, typename Io>
cudaError_t LaunchPhase2(const Gdn2RecurrentArgs& a, const Layout& l, const Table& t, int blocks_z,
                         cudaStream_t stream) {
  const size_t bytes = Smem2<kTV>::Floats(l.Kp) * sizeof(float);
  auto* kernel = Phase2Kernel<kTV, kMath, Io>;
  if (cudaError_t e = chunk_common::AllowSharedBytes(kernel, bytes); e != cudaSuccess) return e;
  kernel<<<dim3((a.V + kTV - 1) / kTV, a.HV, blocks_z), kThreads2, bytes, stream>>>(a, l, t);
  return cudaGetLastError();
}

// Io: the inputs' and the output's element type (float or __nv_bfloat16).
template <ChunkMath kMath, typename Io>
cudaError_t Launch(const Gdn2RecurrentArgs& a, const Layout& l, const Table& t, int blocks_z, cudaStream_t stream) {
  const size_t b1 = Smem1::Floats() * sizeof(float);
  if (cudaError_t e = chunk_common::AllowSharedBytes(Phase1Kernel<kMath, Io>, b1); e != cudaSuccess) return e;
  Phase1Kernel<kMath, Io><<<dim3(static_cast<unsigned>(l.max_chunks), a.H), kThreads1, b1, stream>>>(a, l, t);
  if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
  // The widest value tile that still gives every SM a block (the state tile
  // chain is the sequential part, so a long lone sequence splits finer) and
  // fits the device's shared memory (an A100 takes 16 and 32 columns only).
  const int sms = CurrentDeviceAttribute<cudaDevAttrMultiProcessorCount>(132);
  const size_t optin = chunk_common::OptinSharedBytes();
  auto fits = [&](size_t floats) { return floats * sizeof(float) <= optin; };
  const int64_t heads = static_cast<int64_t>(blocks_z) * a.HV;
  switch (a.value_tile) {
    case 0: break;
    case 16: return LaunchPhase2<16, kMath, Io>(a, l, t, blocks_z, stream);
    case 32: return LaunchPhase2<32, kMath, Io>(a, l, t, blocks_z, stream);
    case 64: return LaunchPhase2<64, kMath, Io>(a, l, t, blocks_z, stream);
    default: return cudaErrorInvalidValue;
  }
  if (heads * ((a.V + 63) / 64) >= sms && fits(Smem2<64>::Floats(l.Kp))) {
    return LaunchPhase2<64, kMath, Io>(a, l, t, blocks_z, stream);
  }
  if (heads * ((a.V + 31) / 32) >= sms && fits(Smem2<32>::Floats(l.Kp))) {
    return LaunchPhase2<32, kMath, Io>(a, l, t, blocks_z, stream);
  }
  return LaunchPhase2<16, kMath, Io>(a, l, t, blocks_z, stream);
}

}  // namespace

size_t Gdn2ChunkedWYWorkspaceBytes(int64_t num_tokens, int num_pieces, int H, int HV, int K, int V) {
  return static_cast<size_t>(MakeLayout(num_tokens, num_pieces, H, HV, K, V).Bytes());
}

bool Gdn2ChunkedWYSupported(int K) {
  if (K < 1 || K > kMaxK) return false;
  // Phase 1 and the narrowest state tile must fit; wider tiles are taken
  // where they fit too.
  const int Kp = RoundUp(K, kSl);
  const size_t need = Smem1::Floats() > Smem2<16>::Floats(Kp) ? Smem1::Floats() : Smem2<16>::Floats(Kp);
  return chunk_common::OptinSharedBytes() >= need * sizeof(float);
}

cudaError_t Gdn2ChunkedWY(const Gdn2RecurrentArgs& a, ChunkMath math, void* workspace, size_t workspace_bytes,
                          cudaStream_t stream) {
  const int blocks_z = a.piece_list ? a.num_listed : a.pieces.num_pieces;
  if (blocks_z == 0) return cudaSuccess;
  if (a.H <= 0 || a.HV < a.H || a.HV % a.H != 0 || a.V <= 0 || a.K < 1 || a.K > kMaxK || blocks_z > 65535 ||
      a.HV > 65535 || a.H > 65535) {
    return cudaErrorInvalidValue;
  }
  const Layout l = MakeLayout(a.pieces.num_tokens, a.pieces.num_pieces, a.H, a.HV, a.K, a.V);
  if (workspace == nullptr || workspace_bytes < static_cast<size_t>(l.Bytes()) || l.max_chunks > INT32_MAX ||
      reinterpret_cast<uintptr_t>(workspace) % 256 != 0) {
    return cudaErrorInvalidValue;
  }
  const Table t = MakeTable(workspace, l);
  TableKernel<<<1, 1, 0, stream>>>(a, l, t);
  if (a.io == DType::kBF16) {
    return math == ChunkMath::kTf32x3 ? Launch<ChunkMath::kTf32x3, __nv_bfloat16>(a, l, t, blocks_z, stream)
                                      : Launch<ChunkMath::kTf32, __nv_bfloat16>(a, l, t, blocks_z, stream);
  }
  return math == ChunkMath::kTf32x3 ? Launch<ChunkMath::kTf32x3, float>(a, l, t, blocks_z, stream)
                                    : Launch<ChunkMath::kTf32, float>(a, l, t, blocks_z, stream);
}

}  // namespace gdnserve::cuda
