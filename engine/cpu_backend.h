// The CPU backend: float32 everywhere, OpenBLAS for the linear layers, the
// chunkwise GDN-2 form for prefill pieces and the recurrence for decode tokens,
// (sequence, head) pairs of the mixer spread over OpenMP threads.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "engine/backend.h"
#include "engine/weights.h"

namespace gdnserve {

struct CpuBackendOptions {
  int num_slots = 16;   // state slots (concurrent sequences)
  int num_threads = 0;  // 0: OpenMP/OpenBLAS defaults
};

absl::StatusOr<std::unique_ptr<Backend>> CreateCpuBackend(std::shared_ptr<const ModelWeights> weights,
                                                          const CpuBackendOptions& options);

}  // namespace gdnserve
