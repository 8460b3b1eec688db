// Element-wise and row-wise CUDA kernels of the GDN-2 block (ops.h).
#include <cuda_bf16.h>

#include <algorithm>
#include <atomic>

#include "kernels/cuda/elementwise.cuh"
#include "kernels/cuda/decode_prep.cuh"
#include "kernels/cuda/ops.h"
#include "kernels/cuda/pdl.cuh"

namespace gdnserve::cuda {
namespace {

__device__ __forceinline__ float Load(const void* in, DType t, int64_t i) {
  return t == DType::kF32 ? static_cast<const float*>(in)[i]
                          : __bfloat162float(static_cast<const __nv_bfloat16*>(in)[i]);
}

// Sum over the block (blockDim.x a multiple of 32, <= 1024); every thread gets it.
__device__ float BlockSum(float v) {
  __shared__ float partial[32];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();  // partial may still be read by a previous call
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  const int warps = blockDim.x / 32;
  v = lane < warps ? partial[lane] : 0.0f;
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

unsigned Blocks(int64_t n, int threads) {
  return static_cast<unsigned>(std::min<int64_t>((n + threads - 1) / threads, int64_t{1} << 20));
}

__global__ void EmbeddingKernel(const void* table, DType tt, const int32_t* ids, int64_t d, float* out) {
  PdlWait();
  PdlLaunchDependents();
  const int64_t t = blockIdx.x;
  const int64_t row = static_cast<int64_t>(ids[t]) * d;
  for (int64_t i = threadIdx.x; i < d; i += blockDim.x) out[t * d + i] = Load(table, tt, row + i);
}

// kPer > 0: the row (d <= kPer * blockDim.x) is read once into registers, all
// loads in flight together; 0: any d, read twice. The same sums in the same
// order either way.
template <int kPer>
__global__ void RmsNormKernel(const float* x, int64_t x_stride, const int32_t* rows, int64_t d,
                              const float* weight, float eps, void* out, DType ot, int64_t out_stride) {
  PdlWait();
  PdlLaunchDependents();
  const int64_t r = blockIdx.x;
  const float* xr = x + (rows ? rows[r] : r) * x_stride;
  float ss = 0.0f;
  if constexpr (kPer > 0) {
    float v[kPer], wv[kPer];
#pragma unroll
    for (int j = 0; j < kPer; ++j) {
      const int64_t i = threadIdx.x + static_cast<int64_t>(j) * blockDim.x;
      v[j] = i < d ? xr[i] : 0.0f;
      wv[j] = i < d ? weight[i] : 0.0f;
    }
#pragma unroll
    for (int j = 0; j < kPer; ++j) ss += v[j] * v[j];
    ss = BlockSum(ss);
    const float inv = 1.0f / sqrtf(ss / static_cast<float>(d) + eps);
#pragma unroll
    for (int j = 0; j < kPer; ++j) {
      const int64_t i = threadIdx.x + static_cast<int64_t>(j) * blockDim.x;
      if (i < d) Store(out, ot, r * out_stride + i, v[j] * inv * wv[j]);
    }
  } else {
    for (int64_t i = threadIdx.x; i < d; i += blockDim.x) ss += xr[i] * xr[i];
    ss = BlockSum(ss);
    const float inv = 1.0f / sqrtf(ss / static_cast<float>(d) + eps);
    for (int64_t i = threadIdx.x; i < d; i += blockDim.x) {
      Store(out, ot, r * out_stride + i, xr[i] * inv * weight[i]);
    }
  }
}

// One thread per (token, channel).
__global__ void ConvSiluKernel(const float* x, int64_t x_stride, const float* w, int64_t C, int W,
                               DevicePieces pieces, LayerStateRef st, float* out, int64_t out_stride) {
  PdlWait();
  PdlLaunchDependents();
  const int64_t n = pieces.num_tokens * C;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = i / C, c = i % C;
    const int p = pieces.token_piece[t];
    const int64_t t0 = pieces.start[p];
    const float* conv = st.base + pieces.slot[p] * st.slot_stride + st.conv_offset;
    float acc = 0.0f;
    for (int j = 0; j < W; ++j) {
      const int64_t pos = t - t0 - (W - 1) + j;  // position within the piece; < 0 reads the state
      const float xv = pos >= 0 ? x[(t0 + pos) * x_stride + c] : conv[(W - 1 + pos) * C + c];
      acc += w[c * W + j] * xv;
    }
    out[t * out_stride + c] = Silu(acc);
  }
}

// One thread per (piece, channel); rows written in increasing order, each
// after the (higher) old row it reads.
__global__ void ConvStateUpdateKernel(const float* x, int64_t x_stride, int64_t C, int W, DevicePieces pieces,
                                      LayerStateRef st) {
  PdlWait();
  PdlLaunchDependents();
  const int64_t n = static_cast<int64_t>(pieces.num_pieces) * C;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int p = static_cast<int>(i / C);
    const int64_t c = i % C;
    const int64_t t0 = pieces.start[p], len = pieces.start[p + 1] - t0;
    float* conv = st.base + pieces.slot[p] * st.slot_stride + st.conv_offset;
    for (int r = 0; r < W - 1; ++r) {
      const int64_t pos = len - (W - 1) + r;
      conv[r * C + c] = pos >= 0 ? x[(t0 + pos) * x_stride + c] : conv[(W - 1 + pos) * C + c];
    }
  }
}

// One thread per (piece, column): decode_prep.cuh.
__global__ void DecodeMixerPrepKernel(MixerPrepArgs a) {
  PdlWait();
  PdlLaunchDependents();
  const int64_t n = static_cast<int64_t>(a.pieces.num_pieces) * (a.C + a.cvt_cols);
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    MixerPrepElement(a, i);
  }
}

// One warp per (token, value head); the head's V values (<= 32 kPer) in
// registers, every load of a lane in flight together.
template <int kPer>
__global__ void GatedRmsNormKernel(const float* o, const float* z, int64_t z_stride, const float* z_bias,
                                   const float* weight, int64_t T, int HV, int V, float eps, void* out,
                                   DType ot) {
  PdlWait();
  PdlLaunchDependents();
  const int64_t task = blockIdx.x * static_cast<int64_t>(blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (task >= T * HV) return;
  const int64_t t = task / HV, h = task % HV;
  const float* orow = o + t * HV * V + h * V;
  const float* zr = z + t * z_stride + h * V;
  float ov[kPer], zv[kPer], wv[kPer];
#pragma unroll
  for (int j = 0; j < kPer; ++j) {
    const int i = lane + 32 * j;
    const bool ok = i < V;
    ov[j] = ok ? orow[i] : 0.0f;
    zv[j] = ok ? zr[i] + (z_bias ? z_bias[h * V + i] : 0.0f) : 0.0f;
    wv[j] = ok ? weight[i] : 0.0f;
  }
  float ss = 0.0f;
#pragma unroll
  for (int j = 0; j < kPer; ++j) ss += ov[j] * ov[j];
  for (int s = 16; s > 0; s >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, s);
  const float inv = 1.0f / sqrtf(ss / static_cast<float>(V) + eps);
#pragma unroll
  for (int j = 0; j < kPer; ++j) {
    const int i = lane + 32 * j;
    if (i < V) Store(out, ot, t * HV * V + h * V + i, ov[j] * inv * wv[j] * Silu(zv[j]));
  }
}

// kVec: 4 consecutive outputs a thread (I % 4 == 0: two 16-byte loads).
template <int kVec>
__global__ void SiluMulKernel(const float* gu, int64_t T, int64_t I, void* out, DType ot) {
  PdlWait();
  PdlLaunchDependents();
  const int64_t per_row = I / kVec, n = T * per_row;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = i / per_row, j = (i % per_row) * kVec;
    const float* g = gu + t * 2 * I + 2 * j;  // (gate, up) pairs
    if constexpr (kVec == 4) {
      const float4 a = *reinterpret_cast<const float4*>(g), b = *reinterpret_cast<const float4*>(g + 4);
      const float r[4] = {Silu(a.x) * a.y, Silu(a.z) * a.w, Silu(b.x) * b.y, Silu(b.z) * b.w};
      if (ot == DType::kF32) {
        *reinterpret_cast<float4*>(static_cast<float*>(out) + t * I + j) = make_float4(r[0], r[1], r[2], r[3]);
      } else {
        __nv_bfloat162 p[2] = {__floats2bfloat162_rn(r[0], r[1]), __floats2bfloat162_rn(r[2], r[3])};
        *reinterpret_cast<uint2*>(static_cast<__nv_bfloat16*>(out) + t * I + j) = *reinterpret_cast<uint2*>(p);
      }
    } else {
      Store(out, ot, t * I + j, Silu(g[0]) * g[1]);
    }
  }
}

__global__ void ConvertKernel(const float* x, int64_t rows, int64_t cols, int64_t x_stride, void* out, DType ot,
                              int64_t out_stride) {
  PdlWait();
  PdlLaunchDependents();
  const int64_t n = rows * cols;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / cols, c = i % cols;
    Store(out, ot, r * out_stride + c, x[r * x_stride + c]);
  }
}

__global__ void ZeroKernel(float* x, int64_t n) {
  PdlWait();
  PdlLaunchDependents();
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    x[i] = 0.0f;
  }
}

// -1 off; 0 on, the device not asked yet; 1 on and the device can.
std::atomic<int> programmatic_launch{0};

}  // namespace

void SetProgrammaticLaunch(bool on) { programmatic_launch.store(on ? 0 : -1, std::memory_order_relaxed); }

// On, and the device current at the first launch is a Hopper or later
// (compute capability >= 9; asked once, not per launch): older devices launch
// the ordinary way.
bool ProgrammaticLaunchOn() {
  int mode = programmatic_launch.load(std::memory_order_relaxed);
  if (mode == 0) {
    int dev = 0, major = 0;
    mode = cudaGetDevice(&dev) == cudaSuccess &&
                   cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess &&
                   major >= 9
               ? 1
               : -1;
    int expected = 0;  // a concurrent SetProgrammaticLaunch wins
    programmatic_launch.compare_exchange_strong(expected, mode, std::memory_order_relaxed);
  }
  return mode > 0;
}

cudaError_t EmbeddingLookup(const void* table, DType table_type, const int32_t* ids, int64_t T, int64_t d,
                            float* out, cudaStream_t stream) {
  if (T == 0) return cudaSuccess;
  return LaunchPdl(EmbeddingKernel, static_cast<unsigned>(T), 256, 0, stream, table, table_type, ids, d, out);
}

cudaError_t RmsNorm(const float* x, int64_t x_stride, const int32_t* rows, int64_t R, int64_t d, const float* weight,
                    float eps, void* out, DType out_type, int64_t out_stride, cudaStream_t stream) {
  if (R == 0) return cudaSuccess;
  const int threads = d >= 1024 ? 512 : (d >= 256 ? 256 : 64);
  const int64_t per = (d + threads - 1) / threads;
  auto* kernel = per <= 1 ? RmsNormKernel<1>
                 : per <= 2 ? RmsNormKernel<2>
                 : per <= 4 ? RmsNormKernel<4>
                 : per <= 8 ? RmsNormKernel<8>
                            : RmsNormKernel<0>;
  return LaunchPdl(kernel, static_cast<unsigned>(R), threads, 0, stream, x, x_stride, rows, d, weight, eps, out,
                   out_type, out_stride);
}

cudaError_t ConvSilu(const float* x, int64_t x_stride, const float* w, int64_t C, int W, const DevicePieces& pieces,
                     const LayerStateRef& state, float* out, int64_t out_stride, cudaStream_t stream) {
  const int64_t n = pieces.num_tokens * C;
  if (n == 0) return cudaSuccess;
  return LaunchPdl(ConvSiluKernel, Blocks(n, 256), 256, 0, stream, x, x_stride, w, C, W, pieces, state, out,
                   out_stride);
}

cudaError_t ConvStateUpdate(const float* x, int64_t x_stride, int64_t C, int W, const DevicePieces& pieces,
                            const LayerStateRef& state, cudaStream_t stream) {
  const int64_t n = static_cast<int64_t>(pieces.num_pieces) * C;
  if (n == 0 || W < 2) return cudaSuccess;
  return LaunchPdl(ConvStateUpdateKernel, Blocks(n, 256), 256, 0, stream, x, x_stride, C, W, pieces, state);
}

cudaError_t DecodeMixerPrep(const float* x, int64_t x_stride, const float* w, int64_t C, int W,
                            const DevicePieces& pieces, const LayerStateRef& state, float* out, int64_t out_stride,
                            int64_t cvt0, int64_t cvt_cols, void* cvt, DType cvt_type, cudaStream_t stream) {
  const int64_t n = static_cast<int64_t>(pieces.num_pieces) * (C + cvt_cols);
  if (n == 0) return cudaSuccess;
  if (pieces.num_tokens != pieces.num_pieces || W < 1 || W - 1 > kDecodeMaxConv) return cudaErrorInvalidValue;
  const MixerPrepArgs a = {x, x_stride, w, C, W, pieces, state, out, out_stride, cvt0, cvt_cols, cvt, cvt_type};
  return LaunchPdl(DecodeMixerPrepKernel, Blocks(n, 256), 256, 0, stream, a);
}

cudaError_t GatedRmsNorm(const float* o, const float* z, int64_t z_stride, const float* z_bias, const float* weight,
                         int64_t T, int HV, int V, float eps, void* out, DType out_type, cudaStream_t stream) {
  const int64_t tasks = T * HV;
  if (tasks == 0) return cudaSuccess;
  if (V > 256) return cudaErrorInvalidValue;
  auto* kernel = V <= 32 ? GatedRmsNormKernel<1>
                 : V <= 64 ? GatedRmsNormKernel<2>
                 : V <= 128 ? GatedRmsNormKernel<4>
                            : GatedRmsNormKernel<8>;
  return LaunchPdl(kernel, static_cast<unsigned>((tasks + 3) / 4), 128, 0, stream, o, z, z_stride, z_bias, weight, T,
                   HV, V, eps, out, out_type);
}

cudaError_t SiluMul(const float* gu, int64_t T, int64_t I, void* out, DType out_type, cudaStream_t stream) {
  if (T * I == 0) return cudaSuccess;
  const bool vec = I % 4 == 0 && reinterpret_cast<uintptr_t>(gu) % 16 == 0 &&
                   reinterpret_cast<uintptr_t>(out) % (out_type == DType::kF32 ? 16 : 8) == 0;
  if (vec) return LaunchPdl(SiluMulKernel<4>, Blocks(T * I / 4, 256), 256, 0, stream, gu, T, I, out, out_type);
  return LaunchPdl(SiluMulKernel<1>, Blocks(T * I, 256), 256, 0, stream, gu, T, I, out, out_type);
}

cudaError_t Convert(const float* x, int64_t rows, int64_t cols, int64_t x_stride, void* out, DType out_type,
                    int64_t out_stride, cudaStream_t stream) {
  if (rows * cols == 0) return cudaSuccess;
  return LaunchPdl(ConvertKernel, Blocks(rows * cols, 256), 256, 0, stream, x, rows, cols, x_stride, out, out_type,
                   out_stride);
}

cudaError_t Zero(float* x, int64_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  return LaunchPdl(ZeroKernel, Blocks(n, 256), 256, 0, stream, x, n);
}

}  // namespace gdnserve::cuda
