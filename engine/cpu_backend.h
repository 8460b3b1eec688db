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
  // Decode rows through the prompt rows' row-invariant sgemm path too (runs
  // of under 64 rows padded to 64): every row's logits independent of the
  // batch it ran in, at the cost of up to 64 rows of work per decode step.
  bool batch_invariant = false;
};

absl::StatusOr<std::unique_ptr<Backend>> CreateCpuBackend(std::shared_ptr<const ModelWeights> weights,
                                                          const CpuBackendOptions& options);

}  // namespace gdnserve
