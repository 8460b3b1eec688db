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
// A decode step's chain of dependent kernels costs about 2-3 us a link on an
// H100 (bench/RESULTS.md), so two more entry points take a link out each
// without adding work: GemvBf16SwiGlu (gate_up's rows in (gate, up) pairs, a
// tile writes silu(gate) * up instead of both halves: the SwiGLU kernel
// after it goes) and DecodeMixerPrepGemv (the low-rank up projection's tiles
// and the conv prep's elements, which need only in_proj's output, on
// disjoint blocks of one launch; that GEMV reads its float32 inputs and
// rounds them to bf16 as the conversion it replaces did). Folding the norms
// in instead (each block recomputing its x rows' norm) was measured slower.
//
// Partial sums are added in a fixed order; one thread writes each output, no
// atomics; for 2-8 rows a row's result does not depend on m or on the other
// rows. Launched as programmatic dependents (pdl.cuh), both start their
// weight stream before they wait for the kernel that writes x (weights are
// written by no kernel of a step). Measured on an H100 against cuBLAS and
// variants (bench/RESULTS.md).
#include <cuda_bf16.h>

#include <cstdint>

#include "kernels/cuda/elementwise.cuh"
#include "kernels/cuda/decode_prep.cuh"
#include "kernels/cuda/device_attr.cuh"
#include "kernels/cuda/ops.h"
#include "kernels/cuda/pdl.cuh"

namespace gdnserve::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kTile = 16;   // weight rows a block
constexpr int kUnroll = 4;  // k blocks in flight a warp

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

__device__ __forceinline__ uint32_t PackBf16(float lo, float hi) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&h);
}

// x[0, 8) as bf16 (16-byte aligned); float32 inputs rounded as Convert does.
__device__ __forceinline__ uint4 LoadX8(const __nv_bfloat16* p) { return __ldg(reinterpret_cast<const uint4*>(p)); }
__device__ __forceinline__ uint4 LoadX8(const float* p) {
  const float4 a = __ldg(reinterpret_cast<const float4*>(p)), b = __ldg(reinterpret_cast<const float4*>(p + 4));
  return make_uint4(PackBf16(a.x, a.y), PackBf16(a.z, a.w), PackBf16(b.x, b.y), PackBf16(b.z, b.w));
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

// y[n0 .. n0 + kRowTile) for one x row (bf16, or float32 rounded to bf16);
// the block's tile is `tile`.
constexpr int kRowTile = 4;
// kSwiGlu: rows are (gate, up) pairs; act[j] = bf16(silu(gate) * up) instead of y.
template <typename XT, bool kSwiGlu = false>
__device__ __forceinline__ void RowTile(const XT* __restrict__ x, const __nv_bfloat16* __restrict__ w, int64_t n,
                                        int64_t k, float* __restrict__ y, bool accumulate, int64_t tile,
                                        __nv_bfloat16* __restrict__ act = nullptr) {
  __shared__ float partial[kWarps][kRowTile];
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int64_t n0 = tile * kRowTile;
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
  float acc[kRowTile] = {};
  auto step = [&](const uint4 (&wv)[kRowTile], int64_t j) {
    const uint4 xv = LoadX8(x + j * 8);
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
  if constexpr (kSwiGlu) {
    if (2 * tid < rows) {  // rows is even
      float gate = 0.0f, up = 0.0f;
#pragma unroll
      for (int q = 0; q < kWarps; ++q) gate += partial[q][2 * tid];
#pragma unroll
      for (int q = 0; q < kWarps; ++q) up += partial[q][2 * tid + 1];
      act[n0 / 2 + tid] = __float2bfloat16_rn(Silu(gate) * up);
    }
  } else if (tid < rows) {
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
// products. x bf16, or float32 rounded to bf16; the block's tile is `tile`.
// kSwiGlu: as RowTile's; act rows of stride ldy.
template <bool kPipe, typename XT, bool kSwiGlu = false>
__device__ __forceinline__ void TcTile(const XT* __restrict__ x, int64_t ldx, int m,
                                       const __nv_bfloat16* __restrict__ w, int64_t n, int64_t k,
                                       float* __restrict__ y, int64_t ldy, bool accumulate, int64_t tile,
                                       __nv_bfloat16* __restrict__ act = nullptr) {
  __shared__ float partial[kWarps][8][kTile];
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32, g = lane >> 2, t = lane & 3;
  const int64_t n0 = tile * kTile;
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
  const XT* xr = x + (xok ? g : 0) * ldx + 8 * t;
  float acc[4] = {};
  for (int64_t i0 = 0; i0 < mine; i0 += kUnroll) {
    uint4 ca[kUnroll], cb[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) ca[u] = wa[u], cb[u] = wb[u];
    if (kPipe && i0 + kUnroll < mine) load(i0 + kUnroll);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t i = i0 + u, kk = (warp + i * kWarps) * 32;
      const bool ok = i < mine && kk + 8 * t < k;
      const uint4 xv = ok && xok ? LoadX8(xr + kk) : make_uint4(0, 0, 0, 0);
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
  if constexpr (kSwiGlu) {
    for (int i = tid; i < 8 * (kTile / 2); i += kThreads) {
      const int col = i / (kTile / 2), pair = i % (kTile / 2);
      if (col < m && 2 * pair < rows) {
        float gate = 0.0f, up = 0.0f;
#pragma unroll
        for (int q = 0; q < kWarps; ++q) gate += partial[q][col][2 * pair];
#pragma unroll
        for (int q = 0; q < kWarps; ++q) up += partial[q][col][2 * pair + 1];
        act[col * ldy + n0 / 2 + pair] = __float2bfloat16_rn(Silu(gate) * up);
      }
    }
  } else {
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
}

template <bool kSwiGlu>
__global__ void __launch_bounds__(kThreads) RowKernel(const __nv_bfloat16* __restrict__ x,
                                                      const __nv_bfloat16* __restrict__ w, int64_t n, int64_t k,
                                                      float* __restrict__ y, bool accumulate,
                                                      __nv_bfloat16* __restrict__ act) {
  RowTile<__nv_bfloat16, kSwiGlu>(x, w, n, k, y, accumulate, blockIdx.x, act);
}

template <bool kPipe, bool kSwiGlu>
__global__ void __launch_bounds__(kThreads) TcKernel(const __nv_bfloat16* __restrict__ x, int64_t ldx, int m,
                                                       const __nv_bfloat16* __restrict__ w, int64_t n, int64_t k,
                                                       float* __restrict__ y, int64_t ldy, bool accumulate,
                                                       __nv_bfloat16* __restrict__ act) {
  TcTile<kPipe, __nv_bfloat16, kSwiGlu>(x, ldx, m, w, n, k, y, ldy, accumulate, blockIdx.x, act);
}

// A GEMV launch's grid: tiles of kRowTile weight rows for one x row
// (RowTile), else of kTile (TcTile), which pipelines its loads when there are
// fewer tiles than two a multiprocessor.
struct GemvGrid {
  int64_t tiles;
  bool tc, pipe;
};
GemvGrid PlanGemv(int64_t m, int64_t n) {
  const bool tc = m > 1;
  const int64_t tile = tc ? kTile : kRowTile, tiles = (n + tile - 1) / tile;
  return {tiles, tc, tc && tiles < 2 * CurrentDeviceAttribute<cudaDevAttrMultiProcessorCount>(132)};
}

// GemvBf16 and GemvBf16SwiGlu (act set: y unused, ldy is act's row stride).
cudaError_t LaunchGemv(const void* x, int64_t ldx, int64_t m, int64_t k, const void* w, int64_t n, float* y,
                       int64_t ldy, bool accumulate, __nv_bfloat16* act, cudaStream_t stream) {
  const auto* xb = static_cast<const __nv_bfloat16*>(x);
  const auto* wb = static_cast<const __nv_bfloat16*>(w);
  const bool swiglu = act != nullptr;
  const GemvGrid g = PlanGemv(m, n);
  if (g.tiles > 2147483647) return cudaErrorInvalidValue;
  const auto blocks = static_cast<unsigned>(g.tiles);
  if (!g.tc) {
    return LaunchPdl(swiglu ? RowKernel<true> : RowKernel<false>, blocks, kThreads, 0, stream, xb, wb, n, k, y,
                     accumulate, act);
  }
  auto* kernel = g.pipe ? (swiglu ? TcKernel<true, true> : TcKernel<true, false>)
                        : (swiglu ? TcKernel<false, true> : TcKernel<false, false>);
  return LaunchPdl(kernel, blocks, kThreads, 0, stream, xb, ldx, static_cast<int>(m), wb, n, k, y, ldy, accumulate,
                   act);
}

// DecodeMixerPrepGemv: blocks [0, gemv_blocks) the GEMV's tiles (first, so
// that its weight stream starts first), the rest the mixer prep's elements.
// kTc: m >= 2 (TcTile, kPipe), else RowTile.
template <bool kTc, bool kPipe>
__global__ void __launch_bounds__(kThreads) PrepGemvKernel(MixerPrepArgs p, const float* __restrict__ x,
                                                             int64_t ldx, int m, const __nv_bfloat16* __restrict__ w,
                                                             int64_t n, int64_t k, float* __restrict__ y, int64_t ldy,
                                                             unsigned gemv_blocks) {
  if (blockIdx.x < gemv_blocks) {
    if constexpr (kTc) {
      TcTile<kPipe>(x, ldx, m, w, n, k, y, ldy, false, blockIdx.x);
    } else {
      RowTile(x, w, n, k, y, false, blockIdx.x);
    }
    return;
  }
  PdlWait();
  PdlLaunchDependents();
  const int64_t total = static_cast<int64_t>(p.pieces.num_pieces) * (p.C + p.cvt_cols);
  const int64_t i = static_cast<int64_t>(blockIdx.x - gemv_blocks) * kThreads + threadIdx.x;
  if (i < total) MixerPrepElement(p, i);
}

}  // namespace

bool DecodeMixerPrepGemvSupported(int64_t m, int64_t k, int64_t ldx, const float* x, const void* w) {
  return m >= 1 && m <= kGemvMaxRows && k >= 8 && k % 8 == 0 && ldx % 4 == 0 &&
         reinterpret_cast<uintptr_t>(x) % 16 == 0 && reinterpret_cast<uintptr_t>(w) % 16 == 0;
}

cudaError_t DecodeMixerPrepGemv(const float* x, int64_t x_stride, const float* conv_w, int64_t C, int W,
                                const DevicePieces& pieces, const LayerStateRef& state, float* out, int64_t out_stride,
                                int64_t gemv_col, int64_t k, const void* w, int64_t n, float* y, int64_t ldy,
                                cudaStream_t stream) {
  const int64_t m = pieces.num_pieces;
  const float* gx = x + gemv_col;
  if (pieces.num_tokens != m || W < 1 || W - 1 > kDecodeMaxConv || n <= 0 ||
      !DecodeMixerPrepGemvSupported(m, k, x_stride, gx, w)) {
    return cudaErrorInvalidValue;
  }
  const MixerPrepArgs p = {x, x_stride, conv_w, C, W, pieces, state, out, out_stride, 0, 0, nullptr, DType::kF32};
  const int64_t prep_blocks = (m * C + kThreads - 1) / kThreads;
  const auto* wb = static_cast<const __nv_bfloat16*>(w);
  const GemvGrid g = PlanGemv(m, n);
  if (g.tiles + prep_blocks > 2147483647) return cudaErrorInvalidValue;
  const unsigned blocks = static_cast<unsigned>(g.tiles + prep_blocks), gb = static_cast<unsigned>(g.tiles);
  auto* kernel = !g.tc    ? PrepGemvKernel<false, false>
                 : g.pipe ? PrepGemvKernel<true, true>
                          : PrepGemvKernel<true, false>;
  return LaunchPdl(kernel, blocks, kThreads, 0, stream, p, gx, x_stride, static_cast<int>(m), wb, n, k, y, ldy, gb);
}

bool GemvBf16Supported(int64_t m, int64_t k, int64_t ldx, const void* x, const void* w) {
  return m >= 1 && m <= kGemvMaxRows && k >= 8 && k % 8 == 0 && ldx % 8 == 0 &&
         reinterpret_cast<uintptr_t>(x) % 16 == 0 && reinterpret_cast<uintptr_t>(w) % 16 == 0;
}

cudaError_t GemvBf16(const void* x, int64_t ldx, int64_t m, int64_t k, const void* w, int64_t n, float* y,
                     int64_t ldy, bool accumulate, cudaStream_t stream) {
  if (!GemvBf16Supported(m, k, ldx, x, w) || n <= 0) return cudaErrorInvalidValue;
  return LaunchGemv(x, ldx, m, k, w, n, y, ldy, accumulate, nullptr, stream);
}

cudaError_t GemvBf16SwiGlu(const void* x, int64_t ldx, int64_t m, int64_t k, const void* w, int64_t n, void* act,
                           int64_t ld_act, cudaStream_t stream) {
  if (!GemvBf16Supported(m, k, ldx, x, w) || n <= 0 || n % 2 != 0 || act == nullptr) return cudaErrorInvalidValue;
  return LaunchGemv(x, ldx, m, k, w, n, nullptr, ld_act, false, static_cast<__nv_bfloat16*>(act), stream);
}

}  // namespace gdnserve::cuda
