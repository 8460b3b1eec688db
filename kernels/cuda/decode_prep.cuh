// One element of a decode step's mixer prep (ops.h: DecodeMixerPrep), shared
// by its own kernel (ops.cu) and the launch that runs it next to the low-rank
// up projection's GEMV (gemv.cu: DecodeMixerPrepGemv).
#pragma once

#include "kernels/cuda/elementwise.cuh"
#include "kernels/cuda/ops.h"

namespace gdnserve::cuda {

constexpr int kDecodeMaxConv = kDecodeMaxConvWidth - 1;  // conv state rows the decode kernel holds in registers

struct MixerPrepArgs {
  const float* x;  // [pieces] rows, stride x_stride: conv inputs at [0, C), columns to convert at cvt0
  int64_t x_stride;
  const float* w;  // [C, W]
  int64_t C;
  int W;
  DevicePieces pieces;
  LayerStateRef st;
  float* out;  // [pieces, C] stride out_stride
  int64_t out_stride;
  int64_t cvt0, cvt_cols;  // cvt_cols may be 0
  void* cvt;
  DType cvt_type;
};

// Element i of the (piece, column) grid of pieces x (C + cvt_cols): conv
// columns first (read the piece's state rows, write the output, shift the
// state: the thread owns those entries), then the columns to convert.
__device__ __forceinline__ void MixerPrepElement(const MixerPrepArgs& a, int64_t i) {
  const int64_t cols = a.C + a.cvt_cols;
  const int64_t t = i / cols, c = i % cols;  // token t is piece t
  if (c >= a.C) {
    Store(a.cvt, a.cvt_type, t * a.cvt_cols + c - a.C, a.x[t * a.x_stride + a.cvt0 + c - a.C]);
    return;
  }
  const int64_t C = a.C;
  const int W = a.W;
  float* conv = a.st.base + a.pieces.slot[t] * a.st.slot_stride + a.st.conv_offset + c;
  // Every load first (one round trip), taps summed oldest first as
  // ConvSilu does (bit-identical results), then the shifted state stored.
  const float xv = a.x[t * a.x_stride + c];
  float hist[kDecodeMaxConv];
#pragma unroll
  for (int j = 0; j < kDecodeMaxConv; ++j) hist[j] = j < W - 1 ? conv[j * C] : 0.0f;
  float acc = 0.0f;
#pragma unroll
  for (int j = 0; j < kDecodeMaxConv; ++j) {
    if (j < W - 1) acc += a.w[c * W + j] * hist[j];
  }
  acc += a.w[c * W + W - 1] * xv;
#pragma unroll
  for (int j = 0; j < kDecodeMaxConv; ++j) {
    if (j < W - 1) conv[j * C] = j + 1 < W - 1 ? hist[j + 1] : xv;
  }
  a.out[t * a.out_stride + c] = Silu(acc);
}

}  // namespace gdnserve::cuda
