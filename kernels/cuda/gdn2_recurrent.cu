// The GDN-2 recurrence on the GPU (ops.h: Gdn2Recurrent), the twin of
// kernels/cpu/gdn2.cc's Gdn2RecurrentHead with the gates and q/k norms fused.
//
// Work split: a block of kWarps warps per (piece, value head, tile of value
// rows); each warp owns kRows rows of the state ST [V][K] (a row is column v
// of S) and keeps them in registers for the whole piece, so state is read and
// written once per piece however many tokens it has. Channel c of a row lives
// in lane c % 32, register c / 32: a warp's loads of one register index are
// 128 contiguous bytes.
//
// Per token, with q^ = q/|q| * scale, k^ = k/|k|, e = b * k^ and decay exp(g):
//   s <- s * exp(g);  u = s.e;  p = s.q^;  d = w*v - u;  s <- s + k^ d;
//   o = s_new.q^ = p + d (k^.q^)
// so the two dot products of a row are reduced together, before the update.
#include <algorithm>

#include "kernels/cuda/elementwise.cuh"
#include "kernels/cuda/ops.h"
#include "kernels/cuda/pdl.cuh"

namespace gdnserve::cuda {
namespace {

constexpr int kWarps = 4;

__device__ __forceinline__ float Softplus(float x) { return x > 20.0f ? x : log1pf(expf(x)); }

template <int N>
__device__ __forceinline__ void WarpAllSum(float (&v)[N]) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
#pragma unroll
    for (int i = 0; i < N; ++i) v[i] += __shfl_xor_sync(0xffffffffu, v[i], o);
  }
}

// Per-token inputs of one warp: its lane's channels of q, k, g, b and the
// value/write inputs of its rows.
template <int KPL, int kRows>
struct TokenInputs {
  float q[KPL], k[KPL], g[KPL], b[KPL];
  float v[kRows], w[kRows];
};

// Channel i of lane `lane`: contiguous per lane when VEC (vector loads of
// the state), else strided by 32 (a warp's loads of one i are 128 contiguous
// bytes whatever K is).
template <int KPL, bool VEC>
__device__ __forceinline__ int Channel(int lane, int i) {
  return VEC ? lane * KPL + i : i * 32 + lane;
}

template <int KPL, int kRows, bool VEC>
__device__ __forceinline__ void LoadToken(const Gdn2RecurrentArgs& a, int64_t t, int hk, int hv, int v0, int lane,
                                          const bool (&ch_ok)[KPL], const bool (&row_ok)[kRows],
                                          TokenInputs<KPL, kRows>& in) {
  const int K = a.K;
  const float* qt = a.q + t * a.qk_stride + hk * K;
  const float* kt = a.k + t * a.qk_stride + hk * K;
  const float* gt = a.g + t * a.g_stride + hk * K;
  const float* bt = a.b + t * a.b_stride + hk * K;
#pragma unroll
  for (int i = 0; i < KPL; ++i) {
    const int c = Channel<KPL, VEC>(lane, i);
    in.q[i] = ch_ok[i] ? __ldg(qt + c) : 0.0f;
    in.k[i] = ch_ok[i] ? __ldg(kt + c) : 0.0f;
    in.g[i] = ch_ok[i] ? __ldg(gt + c) : 0.0f;
    in.b[i] = ch_ok[i] ? __ldg(bt + c) : 0.0f;
  }
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int64_t c = static_cast<int64_t>(hv) * a.V + v0 + r;
    in.v[r] = row_ok[r] ? __ldg(a.v + t * a.v_stride + c) : 0.0f;
    in.w[r] = row_ok[r] ? __ldg(a.w + t * a.w_stride + c) : 0.0f;
  }
}

// KPL: state registers per lane per row (K <= 32 * KPL); kRows: rows per
// warp; VEC: K == 32 * KPL and 16-byte aligned rows (vector state access).
// The next token's inputs are loaded while the current one is computed.
// kDecode: every piece is one token (a decode batch): no second input buffer.
template <int KPL, int kRows, bool VEC, int kMinBlocks, bool kDecode>
__global__ void __launch_bounds__(kWarps * 32, kMinBlocks) Gdn2RecurrentKernel(Gdn2RecurrentArgs a) {
  // Programmatic dependent launch (pdl.cuh): the piece table (copied before
  // the step) and the gate parameters are read before the wait, the state too
  // when the caller says no kernel in flight writes it (early_state_read);
  // the token inputs after it.
  if (!a.early_state_read) PdlWait();
  const int piece = a.piece_list ? a.piece_list[blockIdx.z] : static_cast<int>(blockIdx.z);
  const int hv = blockIdx.y;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int v0 = (blockIdx.x * kWarps + warp) * kRows;
  if (v0 >= a.V) return;  // no block-level synchronisation below
  const int K = a.K, V = a.V;
  const int hk = hv / (a.HV / a.H);
  const int64_t t0 = a.pieces.start[piece];
  const int64_t t1 = kDecode ? t0 + 1 : a.pieces.start[piece + 1];
  float* S = a.state.base + a.pieces.slot[piece] * a.state.slot_stride + a.state.recurrent_offset +
             static_cast<int64_t>(hv) * V * K;

  bool ch_ok[KPL];
#pragma unroll
  for (int i = 0; i < KPL; ++i) ch_ok[i] = VEC || Channel<KPL, VEC>(lane, i) < K;
  bool row_ok[kRows];
#pragma unroll
  for (int r = 0; r < kRows; ++r) row_ok[r] = v0 + r < V;

  float s[kRows][KPL];
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    float* row = S + static_cast<int64_t>(v0 + r) * K;
    if constexpr (VEC && KPL % 4 == 0) {
#pragma unroll
      for (int i = 0; i < KPL; i += 4) {
        // Streaming (evict-first): the state is read once and written once.
        const float4 x = row_ok[r] ? __ldcs(reinterpret_cast<const float4*>(row + lane * KPL + i)) : float4{0, 0, 0, 0};
        s[r][i] = x.x, s[r][i + 1] = x.y, s[r][i + 2] = x.z, s[r][i + 3] = x.w;
      }
    } else if constexpr (VEC && KPL == 2) {
      const float2 x = row_ok[r] ? *reinterpret_cast<const float2*>(row + lane * 2) : float2{0, 0};
      s[r][0] = x.x, s[r][1] = x.y;
    } else {
#pragma unroll
      for (int i = 0; i < KPL; ++i) s[r][i] = row_ok[r] && ch_ok[i] ? row[Channel<KPL, VEC>(lane, i)] : 0.0f;
    }
  }
  const float neg_a = -expf(a.a_log[hk]);
  float dtb[KPL];
#pragma unroll
  for (int i = 0; i < KPL; ++i) dtb[i] = ch_ok[i] ? a.dt_bias[hk * K + Channel<KPL, VEC>(lane, i)] : 0.0f;
  const float bscale = a.allow_neg_eigval ? 2.0f : 1.0f;

  // Loading the first token's inputs before the loop (with the state) was
  // measured faster for decode too (0.90x vs 0.66x fla at batch 256, H200).
  constexpr bool kPrefetch = true;
  if (a.early_state_read) PdlWait();
  PdlLaunchDependents();
  TokenInputs<KPL, kRows> next;
  if constexpr (kPrefetch) {
    if (t0 < t1) LoadToken<KPL, kRows, VEC>(a, t0, hk, hv, v0, lane, ch_ok, row_ok, next);
  }
  for (int64_t t = t0; t < t1; ++t) {
    TokenInputs<KPL, kRows> cur;
    if constexpr (kPrefetch) {
      cur = next;
      if (!kDecode && t + 1 < t1) LoadToken<KPL, kRows, VEC>(a, t + 1, hk, hv, v0, lane, ch_ok, row_ok, next);
    } else {
      LoadToken<KPL, kRows, VEC>(a, t, hk, hv, v0, lane, ch_ok, row_ok, cur);
    }
    float q[KPL], k[KPL], decay[KPL], e[KPL];
    float norms[3] = {0.0f, 0.0f, 0.0f};  // |q|^2, |k|^2, q.k
#pragma unroll
    for (int i = 0; i < KPL; ++i) {
      q[i] = cur.q[i];
      k[i] = cur.k[i];
      norms[0] += q[i] * q[i];
      norms[1] += k[i] * k[i];
      norms[2] += q[i] * k[i];
      decay[i] = ch_ok[i] ? expf(neg_a * Softplus(cur.g[i] + dtb[i])) : 1.0f;
      e[i] = ch_ok[i] ? Sigmoid(cur.b[i]) * bscale : 0.0f;
    }
    WarpAllSum(norms);
    const float rq = a.scale / sqrtf(norms[0] + 1e-6f);
    const float rk = 1.0f / sqrtf(norms[1] + 1e-6f);
    const float kq = norms[2] * rq * rk;
#pragma unroll
    for (int i = 0; i < KPL; ++i) {
      q[i] *= rq;
      k[i] *= rk;
      e[i] *= k[i];
    }
    float dots[2 * kRows];
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      float u = 0.0f, p = 0.0f;
#pragma unroll
      for (int i = 0; i < KPL; ++i) {
        s[r][i] *= decay[i];
        u += s[r][i] * e[i];
        p += s[r][i] * q[i];
      }
      dots[2 * r] = u;
      dots[2 * r + 1] = p;
    }
    WarpAllSum(dots);
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const float d = Sigmoid(cur.w[r]) * cur.v[r] - dots[2 * r];
#pragma unroll
      for (int i = 0; i < KPL; ++i) s[r][i] += k[i] * d;
      if (lane == r && row_ok[r]) a.out[t * a.out_stride + hv * V + v0 + r] = dots[2 * r + 1] + d * kq;
    }
  }

#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    if (!row_ok[r]) continue;
    float* row = S + static_cast<int64_t>(v0 + r) * K;
    if constexpr (VEC && KPL % 4 == 0) {
#pragma unroll
      for (int i = 0; i < KPL; i += 4) {
        __stcs(reinterpret_cast<float4*>(row + lane * KPL + i), float4{s[r][i], s[r][i + 1], s[r][i + 2], s[r][i + 3]});
      }
    } else if constexpr (VEC && KPL == 2) {
      *reinterpret_cast<float2*>(row + lane * 2) = float2{s[r][0], s[r][1]};
    } else {
#pragma unroll
      for (int i = 0; i < KPL; ++i) {
        if (ch_ok[i]) row[Channel<KPL, VEC>(lane, i)] = s[r][i];
      }
    }
  }
}

template <int KPL, int kRows, int kMinBlocks = 4, bool kDecode = false>
cudaError_t LaunchRows(const Gdn2RecurrentArgs& a, cudaStream_t stream) {
  const dim3 grid((a.V + kWarps * kRows - 1) / (kWarps * kRows), a.HV,
                  a.piece_list ? a.num_listed : a.pieces.num_pieces);
  // Vector state access needs whole 16-byte (8-byte for KPL 2) rows.
  const int align = KPL == 2 ? 2 : 4;
  const bool vec = KPL >= 2 && a.K == 32 * KPL && a.state.slot_stride % align == 0 &&
                   a.state.recurrent_offset % align == 0 &&
                   reinterpret_cast<uintptr_t>(a.state.base) % (align * sizeof(float)) == 0;
  if (vec)
    return LaunchPdl(Gdn2RecurrentKernel<KPL, kRows, true, kMinBlocks, kDecode>, grid, kWarps * 32, 0, stream, a);
  return LaunchPdl(Gdn2RecurrentKernel<KPL, kRows, false, kMinBlocks, kDecode>, grid, kWarps * 32, 0, stream, a);
}

// Longer pieces take 4 rows a warp (2 for K > 128), leaving registers for the
// prefetch within the 128 that 4 blocks an SM allow.
// Decode launches (one token a piece), without the second input buffer:
// rows_per_warp 2 or 4 (8 blocks an SM, <= 64 registers) or 8 (5 blocks, 96
// registers). 0 takes 4: on an H100 with the states coming from DRAM (as in
// the engine) 4 rows was the fastest or within 1% at every batch from 1 to
// 256 (bench/RESULTS.md; 8 rows, the earlier pick above 4 sequences from an
// H200 run with L2-resident states, was 6-32% slower at 8-64).
template <int KPL>
cudaError_t Launch(const Gdn2RecurrentArgs& a, cudaStream_t stream) {
  if constexpr (KPL <= 4) {
    if (a.max_len == 1) {
      const int rows = a.rows_per_warp != 0 ? a.rows_per_warp : 4;
      switch (rows) {
        case 2: return LaunchRows<KPL, 2, 8, true>(a, stream);
        case 4: return LaunchRows<KPL, 4, 8, true>(a, stream);
        default: return LaunchRows<KPL, 8, 5, true>(a, stream);
      }
    }
    return LaunchRows<KPL, 4>(a, stream);
  } else {
    if (a.max_len == 1) return LaunchRows<KPL, 4, 4, true>(a, stream);
    return LaunchRows<KPL, 2>(a, stream);
  }
}

}  // namespace

cudaError_t Gdn2Recurrent(const Gdn2RecurrentArgs& a, cudaStream_t stream) {
  const int blocks_z = a.piece_list ? a.num_listed : a.pieces.num_pieces;
  if (blocks_z == 0) return cudaSuccess;
  if (a.io != DType::kF32 || a.H <= 0 || a.HV % a.H != 0 || a.V <= 0 || blocks_z > 65535 || a.HV > 65535) {
    return cudaErrorInvalidValue;
  }
  if (a.K <= 32) return Launch<1>(a, stream);
  if (a.K <= 64) return Launch<2>(a, stream);
  if (a.K <= 128) return Launch<4>(a, stream);
  if (a.K <= 256) return Launch<8>(a, stream);
  return cudaErrorInvalidValue;
}

}  // namespace gdnserve::cuda
