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

struct CudaBackendOptions {
  int num_slots = 16;  // state slots (concurrent sequences), in GPU memory
  int device = 0;      // CUDA device ordinal
  bool bf16 = true;    // matrices (projections, MLP, embeddings, lm_head) in bf16; else float32
  bool cuda_graphs = true;  // decode steps replay a CUDA graph per batch size
  // Prefill pieces through the float32 chunkwise kernel; off by default: on
  // an H200 it measured 17K/52K tokens/s (1/8 sequences, 1.3B shape) against
  // the token-by-token kernel's 30K/60K. The tensor-core version is issue 6.
  bool chunked_prefill = false;
  // With chunked_prefill: the three-phase chunkwise kernel (every chunk's
  // key-side work in parallel; kernels/cuda/gdn2_chunk_wy.cu) instead of the
  // one-pass one. Not yet measured on a GPU.
  bool chunked_wy = false;
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
