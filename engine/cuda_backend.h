// The CUDA backend: weights and state slots in GPU memory, linear layers on
// cuBLAS (bf16 or float32 weights, float32 accumulation), the GDN-2 block in
// kernels/cuda. Built when GDNSERVE_CUDA is on; otherwise CreateCudaBackend
// answers Unimplemented.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "engine/backend.h"
#include "engine/weights.h"

namespace gdnserve {

// The GDN-2 kernel for prompt pieces: the tensor-core chunkwise one
// (gdn2_chunk_wy.cu: 108K / 116K tokens/s for 1 / 8 sequences on the 1.3B
// shape, H100), the float32 one-pass chunkwise one (16K / 50K) or token by
// token (30K / 60K). A chunk kernel the device cannot run falls back to token
// by token.
enum class PrefillKernel { kChunk, kChunkSimt, kRecurrent };

// Decode runs of this many rows or fewer take the GEMV when
// CudaBackendOptions::decode_gemv is on. Measured on an H100 (1.3B shape,
// bench/RESULTS.md): 2-8 rows 8% faster a step than cuBLAS, one row 13%;
// 9-16 rows on tensor cores were slower than cuBLAS.
inline constexpr int kCudaDecodeGemvRows = 8;

struct CudaBackendOptions {
  int num_slots = 16;  // state slots (concurrent sequences), in GPU memory
  int device = 0;      // CUDA device ordinal
  bool bf16 = true;    // matrices (projections, MLP, embeddings, lm_head) in bf16; else float32
  bool cuda_graphs = true;  // decode steps replay a CUDA graph per batch size
  PrefillKernel prefill_kernel = PrefillKernel::kChunk;
  // Decode steps of up to kCudaDecodeGemvRows rows through kernels/cuda/gemv.cu
  // instead of cuBLAS (bf16 weights; not with batch_invariant).
  bool decode_gemv = true;
  // With decode_gemv: a decode step's conv prep and low-rank up projection
  // run as one launch (cuda::DecodeMixerPrepGemv) instead of two.
  bool fuse_decode_prep = true;
  // With decode_gemv: a decode step's gate_up GEMV applies SwiGLU to its
  // outputs (cuda::GemvBf16SwiGlu) instead of a SwiGLU kernel after it.
  bool fuse_decode_swiglu = true;
  // Kernels launch as programmatic dependents (Hopper+): each may start while
  // the one before it finishes (kernels/cuda/pdl.cuh). Process-wide setting.
  bool programmatic_launch = true;
  // Decode rows through fixed GEMM algorithms too (prompt rows always are):
  // every row's logits independent of the batch it ran in, at some cost in
  // decode speed at batch sizes the fixed algorithm does not suit.
  bool batch_invariant = false;
};

// FailedPrecondition when there is no usable GPU, Unimplemented when built
// without CUDA, ResourceExhausted when weights + slots do not fit.
absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(std::shared_ptr<const ModelWeights> weights,
                                                           const CudaBackendOptions& options);

// Whether this build has the CUDA backend.
bool CudaBackendBuilt();
// CUDA devices this process can use (0 without a GPU, a driver or CUDA).
int CudaDeviceCount();

}  // namespace gdnserve
