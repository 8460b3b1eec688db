// One place that turns the user's --device / --dtype choice into a backend,
// so every binary (server, generate, tools) accepts the same spelling.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "engine/backend.h"
#include "engine/weights.h"

namespace gdnserve {

struct BackendSpec {
  std::string device = "cpu";  // "cpu", "cuda" or "cuda:N"
  std::string dtype = "auto";  // "auto" (cpu: f32, cuda: bf16), "f32" or "bf16" (cuda only)
  int num_slots = 16;
  int num_threads = 0;         // cpu: 0 = OpenMP/OpenBLAS default
  bool cuda_graphs = true;
  bool batch_invariant = false;  // decode rows through fixed GEMM algorithms too (cpu and cuda)
  // cuda: the GDN-2 kernel for prompt pieces (PrefillKernel): "chunk",
  // "chunk-simt" or "recurrent".
  std::string prefill_kernel = "chunk";
};

// The spelling of spec.device and spec.dtype and their pairing (bf16 needs
// CUDA; CUDA needs a CUDA build): InvalidArgument naming the flag. Touches
// no device, so it can run before anything starts.
absl::Status CheckBackendSpec(const BackendSpec& spec);

// Whether spec.device names a usable GPU (after CheckBackendSpec): the CUDA
// ordinal, or FailedPrecondition / InvalidArgument. Initialises the CUDA
// driver (which may start threads). 0 for "cpu".
absl::StatusOr<int> ResolveDevice(const BackendSpec& spec);

// CheckBackendSpec, then the backend; the backend's own errors otherwise (no
// GPU, no memory).
absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(std::shared_ptr<const ModelWeights> weights,
                                                       const BackendSpec& spec);

}  // namespace gdnserve
