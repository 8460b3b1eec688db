// CUDA kernels of the GDN-2 block (kernels/cpu/ops.h and gdn2.h are their CPU
// twins). Raw device pointers, row-major, shapes in the comments; every
// function enqueues on `stream` and returns the launch's cudaError_t (no
// synchronisation, nothing allocated). Activations are float32; `DType` names
// the element type of tensors that feed bf16 GEMMs or come from bf16 weights.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace gdnserve::cuda {

enum class DType { kF32, kBF16 };
inline int64_t DTypeBytes(DType t) { return t == DType::kF32 ? 4 : 2; }

// A packed batch of sequence pieces (device arrays): piece p owns token rows
// [start[p], start[p+1]) and the state slot slot[p]; token_piece[t] is the
// piece of row t.
struct DevicePieces {
  const int32_t* start = nullptr;        // [num_pieces + 1]
  const int32_t* slot = nullptr;         // [num_pieces]
  const int32_t* token_piece = nullptr;  // [num_tokens]
  int num_pieces = 0;
  int64_t num_tokens = 0;
};

// Where a layer's state lives inside the slot pool: slot s's recurrent state
// of value head hv is base + s * slot_stride + recurrent_offset + hv * V * K
// ([V][K], S transposed), its conv state base + s * slot_stride + conv_offset
// ([W-1][C], row 0 oldest).
struct LayerStateRef {
  float* base = nullptr;
  int64_t slot_stride = 0;
  int64_t recurrent_offset = 0;
  int64_t conv_offset = 0;
};

// out[t] = table[ids[t]] (as float32). table: [vocab, d] of `table_type`.
cudaError_t EmbeddingLookup(const void* table, DType table_type, const int32_t* ids, int64_t T, int64_t d,
                            float* out, cudaStream_t stream);

// out[r] = x[row r] / sqrt(mean(x^2) + eps) * weight, row r = rows ? rows[r] : r.
// x: rows of d floats, stride x_stride; out: R rows of `out_type`, stride out_stride.
cudaError_t RmsNorm(const float* x, int64_t x_stride, const int32_t* rows, int64_t R, int64_t d,
                    const float* weight, float eps, void* out, DType out_type, int64_t out_stride,
                    cudaStream_t stream);

// Causal depthwise conv (W taps, tap W-1 on the current token) + SiLU over a
// packed batch, reading each piece's history from its conv state. x: [T, C]
// stride x_stride; w: [C, W]; out: [T, C] stride out_stride. Leaves the state
// alone: ConvStateUpdate (enqueued after) advances it.
cudaError_t ConvSilu(const float* x, int64_t x_stride, const float* w, int64_t C, int W,
                     const DevicePieces& pieces, const LayerStateRef& state, float* out,
                     int64_t out_stride, cudaStream_t stream);

// Each piece's conv state <- the last W-1 inputs of [state; piece rows of x].
cudaError_t ConvStateUpdate(const float* x, int64_t x_stride, int64_t C, int W, const DevicePieces& pieces,
                            const LayerStateRef& state, cudaStream_t stream);

// A decode step's mixer inputs in one launch (every piece exactly one token,
// so T = pieces.num_pieces): ConvSilu and ConvStateUpdate for the C conv
// channels, and x's columns [cvt0, cvt0 + cvt_cols) converted to cvt_type
// into cvt (row stride cvt_cols) as Convert does. Same results as those three.
// W <= kDecodeMaxConvWidth (cudaErrorInvalidValue otherwise).
inline constexpr int kDecodeMaxConvWidth = 8;
cudaError_t DecodeMixerPrep(const float* x, int64_t x_stride, const float* w, int64_t C, int W,
                            const DevicePieces& pieces, const LayerStateRef& state, float* out, int64_t out_stride,
                            int64_t cvt0, int64_t cvt_cols, void* cvt, DType cvt_type, cudaStream_t stream);

// DecodeMixerPrep's conv part (nothing converted) and a decode GEMV on other
// columns of the same rows, y[m, n] = bf16(x[:, gemv_col + (0..k)]) . w^T
// (m = pieces.num_pieces, as GemvBf16 on those columns converted to bf16:
// the same bits), as one launch: two independent jobs on disjoint blocks, so
// a decode step has one kernel fewer in its chain. Needs
// DecodeMixerPrepGemvSupported (x + gemv_col 16-byte aligned, x_stride a
// multiple of 4, k of 8, m <= kGemvMaxRows); cudaErrorInvalidValue otherwise.
bool DecodeMixerPrepGemvSupported(int64_t m, int64_t k, int64_t ldx, const float* x, const void* w);
cudaError_t DecodeMixerPrepGemv(const float* x, int64_t x_stride, const float* conv_w, int64_t C, int W,
                                const DevicePieces& pieces, const LayerStateRef& state, float* out, int64_t out_stride,
                                int64_t gemv_col, int64_t k, const void* w, int64_t n, float* y, int64_t ldy,
                                cudaStream_t stream);

// The GDN-2 recurrence (DESIGN.md 1.2) over every token of every piece, state
// read from and written back to the pieces' slots in place. Gate activations
// and the q/k L2 norms are fused: inputs are raw (pre-activation).
struct Gdn2RecurrentArgs {
  const float* q = nullptr;  // [T] rows; head hk at q + hk*K (post-conv, pre-norm)
  const float* k = nullptr;  // same layout as q
  int64_t qk_stride = 0;
  const float* v = nullptr;  // [T] rows; value head hv at v + hv*V
  int64_t v_stride = 0;
  const float* g = nullptr;  // [T, key_dim] raw decay input (before + dt_bias, softplus)
  int64_t g_stride = 0;
  const float* b = nullptr;  // [T, key_dim] raw erase gate (before sigmoid)
  int64_t b_stride = 0;
  const float* w = nullptr;  // [T, value_dim] raw write gate (before sigmoid)
  int64_t w_stride = 0;
  const float* a_log = nullptr;    // [H]
  const float* dt_bias = nullptr;  // [key_dim]
  bool allow_neg_eigval = false;
  float scale = 0.0f;  // q scale, usually K^-1/2
  int H = 0, HV = 0, K = 0, V = 0;
  LayerStateRef state;
  DevicePieces pieces;
  // Optional: run only pieces piece_list[0, num_listed) (device array).
  const int32_t* piece_list = nullptr;
  int num_listed = 0;
  int max_len = 0;  // longest piece run, when known (1: a decode batch); 0 = unknown
  // Decode launches (max_len 1, K <= 128): state rows per warp, 2, 4 or 8;
  // 0 picks by batch size (measured, bench/RESULTS.md).
  int rows_per_warp = 0;
  // Chunkwise prefill (Gdn2ChunkedWY): state columns a block carries, 16, 32
  // or 64; 0 picks by the number of blocks (the widest that fills the GPU).
  int value_tile = 0;
  float* out = nullptr;  // [T] rows; value head hv at out + hv*V
  int64_t out_stride = 0;
  // Element type of q, k, v, g, b, w and out (strides count elements). With
  // kBF16 those seven pointers hold bf16 values and the kernel reads them as
  // such; only Gdn2ChunkedWY takes it (the others return
  // cudaErrorInvalidValue). a_log, dt_bias and the state stay float32.
  DType io = DType::kF32;
  // Gdn2Recurrent as a programmatic dependent (pdl.cuh): true lets it read the
  // slots' state before waiting for the kernel launched just before it. Only
  // when that kernel (and anything still in flight) cannot write this layer's
  // state, as in the engine (the layer's own projections come just before);
  // two launches on the same state back to back need false.
  bool early_state_read = false;
};
// Token by token: best for decode and short pieces. K <= 256; any V.
cudaError_t Gdn2Recurrent(const Gdn2RecurrentArgs& args, cudaStream_t stream);

// The same result a chunk of 64 tokens at a time (DESIGN.md 1.3), float32
// throughout: for prefill pieces. K <= 128; any V. Needs up to ~211 KiB of
// shared memory per block (K = 128): Hopper has it, A100 (163 KiB) does not;
// Gdn2ChunkSupported() says whether the device and shape allow it.
cudaError_t Gdn2Chunked(const Gdn2RecurrentArgs& args, cudaStream_t stream);
bool Gdn2ChunkSupported(int K);

// The same result on tensor cores in two parallel phases
// (kernels/cuda/gdn2_chunk_wy.cu): the work that depends only on a chunk's
// own inputs for every chunk at once (the WY factors W = T E~, U = T Z), then
// only the state's passage from chunk to chunk, split over tiles of value
// columns, so that one long sequence fills the GPU. K <= 128, any V; 111 KiB
// of shared memory per block in the first phase, 144-194 KiB in the second
// (16-64 state columns a block; Gdn2ChunkedWYSupported says whether the
// narrowest fits, the launch takes wider ones where they fit). `workspace`
// (256-byte aligned, device) holds the chunk table and the per-chunk factors:
// Gdn2ChunkedWYWorkspaceBytes. Products in TF32 (relative error ~1e-4..1e-3)
// or, with kTf32x3, split in three TF32 products for float32 accuracy.
// Inputs and output float32 or bf16 (args.io); the state and the products'
// accumulation float32 either way.
enum class ChunkMath { kTf32, kTf32x3 };
cudaError_t Gdn2ChunkedWY(const Gdn2RecurrentArgs& args, ChunkMath math, void* workspace, size_t workspace_bytes,
                          cudaStream_t stream);
size_t Gdn2ChunkedWYWorkspaceBytes(int64_t num_tokens, int num_pieces, int H, int HV, int K, int V);
bool Gdn2ChunkedWYSupported(int K);

// out = o / sqrt(mean(o^2) + eps) * weight * silu(z + z_bias), per value head
// of V (<= 256). o: [T, HV*V]; z: rows of HV*V, stride z_stride; out: `out_type` [T, HV*V].
cudaError_t GatedRmsNorm(const float* o, const float* z, int64_t z_stride, const float* z_bias,
                         const float* weight, int64_t T, int HV, int V, float eps, void* out,
                         DType out_type, cudaStream_t stream);

// out[t, j] = silu(gu[t, 2j]) * gu[t, 2j + 1]: gu [T, 2I] holds (gate, up)
// pairs, the order of the GPU backend's gate_up rows (interleaved at upload,
// so that a decode GEMV's tile owns both halves: GemvBf16SwiGlu); out:
// `out_type` [T, I].
cudaError_t SiluMul(const float* gu, int64_t T, int64_t I, void* out, DType out_type, cudaStream_t stream);

// out = x (rows x cols, strides in elements) converted to out_type.
cudaError_t Convert(const float* x, int64_t rows, int64_t cols, int64_t x_stride, void* out, DType out_type,
                    int64_t out_stride, cudaStream_t stream);

// Decode-size linear layer: y[m, n] (+)= x[m, :] . w[n, :] (row strides ldx,
// ldy; w rows of k), bf16 x and w, float32 accumulation and y, for
// 1 <= m <= kGemvMaxRows (one row on CUDA cores, 2-8 on tensor cores). For
// 2 <= m <= 8 each output's sum runs in the same order whatever m is (m = 1
// takes the other kernel). Needs k and ldx multiples of 8 and 16-byte
// aligned x and w (GemvBf16Supported); cudaErrorInvalidValue otherwise.
inline constexpr int kGemvMaxRows = 8;
bool GemvBf16Supported(int64_t m, int64_t k, int64_t ldx, const void* x, const void* w);
cudaError_t GemvBf16(const void* x, int64_t ldx, int64_t m, int64_t k, const void* w, int64_t n, float* y,
                     int64_t ldy, bool accumulate, cudaStream_t stream);

// The decode GEMV of gate_up with SwiGLU on the way out: w's rows are
// (gate, up) pairs (SiluMul's order), y = x . w^T is never stored, and
// act[:, j] = bf16(silu(y[:, 2j]) * y[:, 2j + 1]) (row stride ld_act): the
// bits of GemvBf16 followed by SiluMul to bf16. n even; else as GemvBf16.
cudaError_t GemvBf16SwiGlu(const void* x, int64_t ldx, int64_t m, int64_t k, const void* w, int64_t n, void* act,
                           int64_t ld_act, cudaStream_t stream);

// Kernels of this library launch with programmatic dependent launch
// (pdl.cuh: each may start while the one before it finishes) on Hopper and
// later devices unless this is off. Process-wide; on by default; the device
// is asked once, at the first launch after this is (re)set.
void SetProgrammaticLaunch(bool on);

// Fills n floats with zeros (state slots).
cudaError_t Zero(float* x, int64_t n, cudaStream_t stream);

// One token draw from a row of logits (kernels/cpu/sample.h's rule and its
// float32 twin): penalties, temperature (0: greedy), top_k, top_p, min_p,
// then inverse CDF over the kept tokens in id order with `uniform` in [0, 1).
// Penalty inputs live in SampleRows' `lists`: repeated tokens at
// [repeated_begin, +num_repeated); counted tokens at [counted_begin,
// +num_counted) followed by their counts.
struct DrawSpec {
  int32_t row = 0;
  int32_t top_k = 0;
  float temperature = 1.0f, top_p = 1.0f, min_p = 0.0f;
  float repetition = 1.0f, presence = 0.0f, frequency = 0.0f;
  double uniform = 0.0;
  int32_t repeated_begin = 0, num_repeated = 0;
  int32_t counted_begin = 0, num_counted = 0;
};

// out_token[i], out_logprob[i] (of the token under the raw logits) for
// specs[i] over logits [rows, vocab]. work: [num_draws, vocab] floats for the
// penalized copies (may be null when no draw has penalties). One block per
// draw; specs, lists and outputs are device memory.
cudaError_t SampleRows(const float* logits, int64_t vocab, const DrawSpec* specs, int num_draws,
                       const int32_t* lists, float* work, int32_t* out_token, float* out_logprob,
                       cudaStream_t stream);

}  // namespace gdnserve::cuda
