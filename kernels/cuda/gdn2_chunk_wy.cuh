// Shared by the two phases of the tensor-core chunkwise kernel
// (gdn2_chunk_wy.cu: the algorithm, the chunk table, phase 2 and the entry
// points; gdn2_chunk_wy_phase1.cu: phase 1): the chunk geometry, the TF32
// tensor-core tiles, the workspace's layout and table, the op's I/O element
// access, and phase 1's shared memory and launch.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>
#include <type_traits>

#include "kernels/cuda/gdn2_chunk_common.cuh"
#include "kernels/cuda/ops.h"

namespace gdnserve::cuda::wy {

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

struct Table {
  int32_t* num_chunks;
  int32_t* chunk_t0;
  int32_t* chunk_n;
  int32_t* piece_first;
  int32_t* piece_count;
  float* key;    // [max_chunks][H][KeyFloats]
  float* value;  // [max_chunks][HV][ValueFloats]
};

// Phase 1's shared memory, floats (gdn2_chunk_wy_phase1.cu says what it holds).
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

// Phase 1 for every chunk and key head of the table (gdn2_chunk_wy_phase1.cu;
// Io float or __nv_bfloat16, as Gdn2RecurrentArgs::io).
template <ChunkMath kMath, typename Io>
cudaError_t LaunchPhase1(const Gdn2RecurrentArgs& a, const Layout& l, const Table& t, cudaStream_t stream);

}  // namespace gdnserve::cuda::wy
