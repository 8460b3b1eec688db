// Small-batch linear layer for decode steps (ops.h: GemvBf16): y[m, n] (+)=
// x[m, :] . w[n, :] for up to kGemvMaxRows input rows, bf16 weights and
// inputs, float32 accumulation and output. kernels/cpu/linear.h's Linear is
// its CPU twin.
//
// Memory bound: each weight byte is read once, so the kernel's job is to keep
// enough loads in flight and spend few instructions per byte. Two kernels:
//
// One x row (RowKernel): a block owns 4 weight rows and its 256 threads stride
// over their length together in 16-byte pieces (float32 FMAs: 8 per 16 bytes
// of weights, no tensor core needed), so even a matrix of 2304 rows fills the
// GPU; the block asks for its rows into L2 before it waits (below).
//
// 2-8 x rows (TcKernel): float32 FMAs would cost m times as much, so the
// products run on tensor cores (mma.sync m16n8k16, bf16 in, float32
// accumulation). A block owns a tile of 16 weight rows (the 16-row operand;
// the x rows are the 8 columns); its 8 warps take the tile's 32-wide k blocks
// in turn, four blocks' loads in flight a warp. Each lane loads 16 bytes of two
// weight rows and 16 bytes of one x row at the same k offset, and the products
// read those registers as they are: the k order inside a 32-block is permuted
// the same way for both operands, so the dot products are unchanged and
// nothing is shuffled. Matrices of few tiles (fewer than two a
// multiprocessor: o_proj, down) also load a warp's next four blocks before
// multiplying the current ones; with many tiles that costs more than it gains.
//
// Input stages (ops.h: GemvIn): instead of bf16 x rows a kernel may read the
// float32 rows an element-wise or norm kernel would have turned into them
// (RmsNorm, SiluMul, GatedRmsNorm) and apply that op as it loads each
// 8-element piece, so a decode step skips that kernel's launch and its
// dependency wait. The norms first sum each row's (or head's) squares: every
// block reads its x rows once more for that, from L2 (the rows are small and
// stay there; the second reads in the main loop mostly hit L1), and adds the
// pieces' sums in a fixed order. The weights' first loads are in flight
// during those sums.
//
// Partial sums are added in a fixed order; one thread writes each output, no
// atomics; for 2-8 rows a row's result does not depend on m or on the other
// rows. Launched as programmatic dependents (pdl.cuh), both start their
// weight stream before they wait for the kernel that writes x (weights are
// written by no kernel of a step). Measured on an H100 against cuBLAS and
// variants (bench/RESULTS.md).
#include <cuda_bf16.h>

#include <cstdint>

#include "kernels/cuda/activations.cuh"
#include "kernels/cuda/device_attr.cuh"
#include "kernels/cuda/ops.h"
#include "kernels/cuda/pdl.cuh"

namespace gdnserve::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kTile = 16;   // weight rows a block
constexpr int kUnroll = 4;  // k blocks in flight a warp
constexpr int kMaxHeads = 64;     // kGatedRmsNorm: heads a row
constexpr int kMaxKBlocks = 256;  // kGatedRmsNorm: 32-wide k blocks a row (k <= 8192)

// D = A (16 x 16, row) B (16 x 8, col) + D, bf16 inputs, float32 accumulation.
__device__ __forceinline__ void Mma(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                                    uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
#endif
}

// One 32-wide k block. Lane (g, t) = (lane / 4, lane % 4) holds elements
// [8t, 8t + 8) of the block in weight rows g (wa) and g + 8 (wb) and of x row
// g (xv). The first product takes the pairs 8t + {0,1} and 8t + {2,3} as its
// k = 2t + {0,1} and 2t + 8 + {0,1} (the fragment layout of m16n8k16), the
// second 8t + {4..7}: every k of the block once, the same for both operands.
__device__ __forceinline__ void MmaBlock(float (&d)[4], const uint4& wa, const uint4& wb, const uint4& xv) {
  Mma(d, wa.x, wb.x, wa.y, wb.y, xv.x, xv.y);
  Mma(d, wa.z, wb.z, wa.w, wb.w, xv.z, xv.w);
}

__device__ __forceinline__ void Load8(const float* p, float (&v)[8]) {
  const float4 a = __ldg(reinterpret_cast<const float4*>(p)), b = __ldg(reinterpret_cast<const float4*>(p + 4));
  v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
}

__device__ __forceinline__ uint32_t PackBf16(float lo, float hi) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&h);
}

// Elements [e, e + 8) of x row `row` as the GEMV multiplies them (bf16, the
// order of memory); inv: 1 / rms of the row (kRmsNorm) or of e's head
// (kGatedRmsNorm). The arithmetic of ops.cu's kernels for those ops.
template <GemvInKind kKind>
__device__ __forceinline__ uint4 XPiece(const GemvIn& in, int64_t k, int row, int64_t e, float inv) {
  if constexpr (kKind == GemvInKind::kBf16) {
    return __ldg(reinterpret_cast<const uint4*>(static_cast<const __nv_bfloat16*>(in.x) + row * in.ldx + e));
  } else {
    const float* xr = static_cast<const float*>(in.x) + row * in.ldx;
    float v[8], a[8];
    Load8(xr + e, v);
    if constexpr (kKind == GemvInKind::kRmsNorm) {
      Load8(in.weight + e, a);
#pragma unroll
      for (int i = 0; i < 8; ++i) v[i] = v[i] * inv * a[i];
    } else if constexpr (kKind == GemvInKind::kSiluMul) {
      Load8(xr + k + e, a);
#pragma unroll
      for (int i = 0; i < 8; ++i) v[i] = Silu(v[i]) * a[i];
    } else {
      float z[8];
      Load8(in.z + row * in.ldz + e, z);
      if (in.z_bias != nullptr) {
        Load8(in.z_bias + e, a);
#pragma unroll
        for (int i = 0; i < 8; ++i) z[i] += a[i];
      }
      Load8(in.weight + e % in.V, a);
#pragma unroll
      for (int i = 0; i < 8; ++i) v[i] = v[i] * inv * a[i] * Silu(z[i]);
    }
    return make_uint4(PackBf16(v[0], v[1]), PackBf16(v[2], v[3]), PackBf16(v[4], v[5]), PackBf16(v[6], v[7]));
  }
}

// Sum of squares of x row `row`'s elements [e, e + 8) (float32 inputs).
__device__ __forceinline__ float SumSq8(const GemvIn& in, int row, int64_t e) {
  float v[8];
  Load8(static_cast<const float*>(in.x) + row * in.ldx + e, v);
  float s = 0.0f;
#pragma unroll
  for (int i = 0; i < 8; ++i) s += v[i] * v[i];
  return s;
}

// The norms' 1 / rms, as ops.cu computes it.
__device__ __forceinline__ float InvRms(float sum_sq, int64_t n, float eps) {
  return 1.0f / sqrtf(sum_sq / static_cast<float>(n) + eps);
}

__device__ __forceinline__ void Dot8(const uint4& w, const float (&x)[8], float& acc) {
  const auto* wp = reinterpret_cast<const __nv_bfloat162*>(&w);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 a = __bfloat1622float2(wp[i]);
    acc = fmaf(a.x, x[2 * i], acc);
    acc = fmaf(a.y, x[2 * i + 1], acc);
  }
}

// y[n0 .. n0 + kRowTile) for one x row.
constexpr int kRowTile = 4;
template <GemvInKind kKind>
__global__ void __launch_bounds__(kThreads) RowKernel(const GemvIn in, const __nv_bfloat16* __restrict__ w,
                                                      int64_t n, int64_t k, float* __restrict__ y, bool accumulate) {
  __shared__ float partial[kWarps][kRowTile];
  __shared__ float head_inv[kKind == GemvInKind::kGatedRmsNorm ? kMaxHeads : 1];
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kRowTile;
  const int rows = static_cast<int>(n - n0 < kRowTile ? n - n0 : kRowTile);
  const __nv_bfloat16* wr[kRowTile];
#pragma unroll
  for (int r = 0; r < kRowTile; ++r) wr[r] = w + (n0 + (r < rows ? r : 0)) * k;  // a missing row re-reads row 0
  const int64_t pieces = k / 8;
  for (int64_t q = tid; q < pieces; q += kThreads) {
#pragma unroll
    for (int r = 0; r < kRowTile; ++r) asm volatile("prefetch.global.L2 [%0];" ::"l"(wr[r] + q * 8));
  }
  PdlWait();
  PdlLaunchDependents();
  float row_inv = 0.0f;
  if constexpr (kKind == GemvInKind::kRmsNorm) {
    float ss = 0.0f;
    for (int64_t q = tid; q < pieces; q += 2 * kThreads) {  // two pieces' loads in flight
      const float a = SumSq8(in, 0, q * 8);
      ss += q + kThreads < pieces ? a + SumSq8(in, 0, (q + kThreads) * 8) : a;
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
    if (lane == 0) partial[warp][0] = ss;
    __syncthreads();
    ss = 0.0f;
#pragma unroll
    for (int q = 0; q < kWarps; ++q) ss += partial[q][0];
    row_inv = InvRms(ss, k, in.eps);
    __syncthreads();  // partial is written again below
  } else if constexpr (kKind == GemvInKind::kGatedRmsNorm) {
    // A head's V / 8 pieces (a power of two <= 32) sit on consecutive lanes.
    const int per = in.V / 8;
    for (int64_t q0 = 0; q0 < pieces; q0 += kThreads) {
      const int64_t q = q0 + tid;
      float ss = q < pieces ? SumSq8(in, 0, q * 8) : 0.0f;
      for (int o = per / 2; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
      if (q < pieces && q % per == 0) head_inv[q / per] = InvRms(ss, in.V, in.eps);
    }
    __syncthreads();
  }
  float acc[kRowTile] = {};
  auto step = [&](const uint4 (&wv)[kRowTile], int64_t j) {
    float inv = row_inv;
    if constexpr (kKind == GemvInKind::kGatedRmsNorm) inv = head_inv[j * 8 / in.V];
    const uint4 xv = XPiece<kKind>(in, k, 0, j * 8, inv);
    const auto* p = reinterpret_cast<const __nv_bfloat162*>(&xv);
    float xf[8];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float2 f = __bfloat1622float2(p[i]);
      xf[2 * i] = f.x;
      xf[2 * i + 1] = f.y;
    }
#pragma unroll
    for (int r = 0; r < kRowTile; ++r) Dot8(wv[r], xf, acc[r]);
  };
  int64_t j = tid;
  for (; j + kThreads < pieces; j += 2 * kThreads) {  // two steps in flight
    uint4 a[kRowTile], b[kRowTile];
#pragma unroll
    for (int r = 0; r < kRowTile; ++r) {
      a[r] = __ldcs(reinterpret_cast<const uint4*>(wr[r] + j * 8));
      b[r] = __ldcs(reinterpret_cast<const uint4*>(wr[r] + (j + kThreads) * 8));
    }
    step(a, j);
    step(b, j + kThreads);
  }
  if (j < pieces) {
    uint4 a[kRowTile];
#pragma unroll
    for (int r = 0; r < kRowTile; ++r) a[r] = __ldcs(reinterpret_cast<const uint4*>(wr[r] + j * 8));
    step(a, j);
  }
#pragma unroll
  for (int r = 0; r < kRowTile; ++r) {
    float v = acc[r];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (lane == 0) partial[warp][r] = v;
  }
  __syncthreads();
  if (tid < rows) {
    float s = 0.0f;
#pragma unroll
    for (int q = 0; q < kWarps; ++q) s += partial[q][tid];
    y[n0 + tid] = accumulate ? y[n0 + tid] + s : s;
  }
}

// Weights are read once: no L1 allocation, L2 fetches in 256-byte pieces.
__device__ __forceinline__ uint4 LoadWeights(const __nv_bfloat16* p, bool ok) {
  uint4 r = make_uint4(0, 0, 0, 0);
  if (ok) {
    asm volatile("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
                 : "l"(p));
  }
  return r;
}

// 2 <= m <= 8; kPipe: the next batch's loads before the current batch's
// products.
template <bool kPipe, GemvInKind kKind>
__global__ void __launch_bounds__(kThreads) TcKernel(const GemvIn in, int m, const __nv_bfloat16* __restrict__ w,
                                                       int64_t n, int64_t k, float* __restrict__ y, int64_t ldy,
                                                       bool accumulate) {
  constexpr bool kGated = kKind == GemvInKind::kGatedRmsNorm;
  __shared__ float partial[kWarps][8][kTile];
  __shared__ float inv_s[8][kGated ? kMaxHeads : 1];  // 1 / rms a row (and head)
  __shared__ float block_sq[kGated ? kMaxKBlocks : 1][8];
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32, g = lane >> 2, t = lane & 3;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kTile;
  const int rows = static_cast<int>(n - n0 < kTile ? n - n0 : kTile);
  // Rows past n re-read the tile's last row (their outputs are dropped).
  const __nv_bfloat16* ra = w + (n0 + (g < rows ? g : rows - 1)) * k + 8 * t;
  const __nv_bfloat16* rb = w + (n0 + (g + 8 < rows ? g + 8 : rows - 1)) * k + 8 * t;
  // This warp's k blocks are warp, warp + kWarps, ...: `mine` of them.
  const int64_t blocks = (k + 31) / 32;
  const int64_t mine = blocks > warp ? (blocks - warp + kWarps - 1) / kWarps : 0;
  uint4 wa[kUnroll], wb[kUnroll];
  auto load = [&](int64_t i0) {  // this warp's blocks i0 .. i0 + kUnroll - 1
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t i = i0 + u, kk = (warp + i * kWarps) * 32;
      const bool ok = i < mine && kk + 8 * t < k;
      wa[u] = LoadWeights(ra + kk, ok);
      wb[u] = LoadWeights(rb + kk, ok);
    }
  };
  load(0);  // weights: no kernel of the step writes them
  PdlWait();
  PdlLaunchDependents();
  // x rows past m are zeros.
  const bool xok = g < m;
  if constexpr (kKind == GemvInKind::kRmsNorm) {
    float ss = 0.0f;
    for (int64_t i0 = 0; i0 < mine; i0 += kUnroll) {
      float sq[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t e = (warp + (i0 + u) * kWarps) * 32 + 8 * t;
        sq[u] = xok && i0 + u < mine && e < k ? SumSq8(in, g, e) : 0.0f;
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) ss += sq[u];
    }
    ss += __shfl_xor_sync(0xffffffffu, ss, 1);
    ss += __shfl_xor_sync(0xffffffffu, ss, 2);
    if (t == 0) partial[warp][0][g] = ss;
    __syncthreads();
    if (tid < m) {
      float s = 0.0f;
#pragma unroll
      for (int q = 0; q < kWarps; ++q) s += partial[q][0][tid];
      inv_s[tid][0] = InvRms(s, k, in.eps);
    }
    __syncthreads();
  } else if constexpr (kGated) {
    for (int64_t i = 0; i < mine; ++i) {
      const int64_t b = warp + i * kWarps, e = b * 32 + 8 * t;
      float ss = xok && e < k ? SumSq8(in, g, e) : 0.0f;
      ss += __shfl_xor_sync(0xffffffffu, ss, 1);
      ss += __shfl_xor_sync(0xffffffffu, ss, 2);
      if (t == 0) block_sq[b][g] = ss;
    }
    __syncthreads();
    const int heads = static_cast<int>(k / in.V), per = in.V / 32;  // k blocks a head
    for (int i = tid; i < m * heads; i += kThreads) {
      const int r = i / heads, h = i % heads;
      float s = 0.0f;
      for (int b = h * per; b < (h + 1) * per; ++b) s += block_sq[b][r];
      inv_s[r][h] = InvRms(s, in.V, in.eps);
    }
    __syncthreads();
  }
  float acc[4] = {};
  for (int64_t i0 = 0; i0 < mine; i0 += kUnroll) {
    uint4 ca[kUnroll], cb[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) ca[u] = wa[u], cb[u] = wb[u];
    if (kPipe && i0 + kUnroll < mine) load(i0 + kUnroll);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t i = i0 + u, e = (warp + i * kWarps) * 32 + 8 * t;
      const bool ok = i < mine && e < k;
      uint4 xv = make_uint4(0, 0, 0, 0);
      if (ok && xok) {
        float inv = 0.0f;
        if constexpr (kKind == GemvInKind::kRmsNorm) inv = inv_s[g][0];
        if constexpr (kGated) inv = inv_s[g][e / in.V];
        xv = XPiece<kKind>(in, k, g, e, inv);
      }
      MmaBlock(acc, ca[u], cb[u], xv);
    }
    if (!kPipe && i0 + kUnroll < mine) load(i0 + kUnroll);
  }
  // Accumulator (g, 2t + {0,1}) and (g + 8, 2t + {0,1}): weight row, x row.
  partial[warp][2 * t][g] = acc[0];
  partial[warp][2 * t + 1][g] = acc[1];
  partial[warp][2 * t][g + 8] = acc[2];
  partial[warp][2 * t + 1][g + 8] = acc[3];
  __syncthreads();
  for (int i = tid; i < 8 * kTile; i += kThreads) {
    const int col = i / kTile, row = i % kTile;  // consecutive threads, consecutive outputs
    if (col < m && row < rows) {
      float s = 0.0f;
#pragma unroll
      for (int q = 0; q < kWarps; ++q) s += partial[q][col][row];
      float* out = y + col * ldy + n0 + row;
      *out = accumulate ? *out + s : s;
    }
  }
}

template <GemvInKind kKind>
cudaError_t Launch(const GemvIn& in, int64_t m, int64_t k, const __nv_bfloat16* w, int64_t n, float* y,
                   int64_t ldy, bool accumulate, cudaStream_t stream) {
  if (m == 1) {
    const int64_t blocks = (n + kRowTile - 1) / kRowTile;
    if (blocks > 2147483647) return cudaErrorInvalidValue;
    return LaunchPdl(RowKernel<kKind>, static_cast<unsigned>(blocks), kThreads, 0, stream, in, w, n, k, y,
                     accumulate);
  }
  const int64_t blocks = (n + kTile - 1) / kTile;
  if (blocks > 2147483647) return cudaErrorInvalidValue;
  const int64_t sms = CurrentDeviceAttribute<cudaDevAttrMultiProcessorCount>(132);
  const bool pipe = blocks < 2 * sms;
  return LaunchPdl(pipe ? TcKernel<true, kKind> : TcKernel<false, kKind>, static_cast<unsigned>(blocks), kThreads,
                   0, stream, in, static_cast<int>(m), w, n, k, y, ldy, accumulate);
}

bool Aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace

bool GemvSupported(const GemvIn& in, int64_t m, int64_t k, const void* w) {
  if (m < 1 || m > kGemvMaxRows || k < 8 || k % 8 != 0 || in.x == nullptr || !Aligned16(in.x) || !Aligned16(w)) {
    return false;
  }
  // Float32 rows: 16-byte loads of every row's pieces.
  const bool f32_rows = in.ldx % 4 == 0;
  switch (in.kind) {
    case GemvInKind::kBf16:
      return in.ldx % 8 == 0;
    case GemvInKind::kRmsNorm:
      return f32_rows && in.ldx >= k && in.weight != nullptr && Aligned16(in.weight);
    case GemvInKind::kSiluMul:
      return f32_rows && in.ldx >= 2 * k;
    case GemvInKind::kGatedRmsNorm:
      return f32_rows && in.ldx >= k && (in.V == 32 || in.V == 64 || in.V == 128 || in.V == 256) && k % in.V == 0 &&
             k / in.V <= kMaxHeads && k / 32 <= kMaxKBlocks && in.weight != nullptr && Aligned16(in.weight) &&
             in.z != nullptr && Aligned16(in.z) && in.ldz % 4 == 0 && in.ldz >= k &&
             (in.z_bias == nullptr || Aligned16(in.z_bias));
  }
  return false;
}

cudaError_t Gemv(const GemvIn& in, int64_t m, int64_t k, const void* w, int64_t n, float* y, int64_t ldy,
                 bool accumulate, cudaStream_t stream) {
  if (!GemvSupported(in, m, k, w) || n <= 0) return cudaErrorInvalidValue;
  const auto* wb = static_cast<const __nv_bfloat16*>(w);
  switch (in.kind) {
    case GemvInKind::kBf16:
      return Launch<GemvInKind::kBf16>(in, m, k, wb, n, y, ldy, accumulate, stream);
    case GemvInKind::kRmsNorm:
      return Launch<GemvInKind::kRmsNorm>(in, m, k, wb, n, y, ldy, accumulate, stream);
    case GemvInKind::kSiluMul:
      return Launch<GemvInKind::kSiluMul>(in, m, k, wb, n, y, ldy, accumulate, stream);
    case GemvInKind::kGatedRmsNorm:
      return Launch<GemvInKind::kGatedRmsNorm>(in, m, k, wb, n, y, ldy, accumulate, stream);
  }
  return cudaErrorInvalidValue;
}

bool GemvBf16Supported(int64_t m, int64_t k, int64_t ldx, const void* x, const void* w) {
  GemvIn in;
  in.x = x;
  in.ldx = ldx;
  return GemvSupported(in, m, k, w);
}

cudaError_t GemvBf16(const void* x, int64_t ldx, int64_t m, int64_t k, const void* w, int64_t n, float* y,
                     int64_t ldy, bool accumulate, cudaStream_t stream) {
  GemvIn in;
  in.x = x;
  in.ldx = ldx;
  return Gemv(in, m, k, w, n, y, ldy, accumulate, stream);
}

}  // namespace gdnserve::cuda
