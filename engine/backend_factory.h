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
};

// InvalidArgument naming the flag for a bad spelling or an unsupported pair
// (bf16 on the CPU); the backend's own errors otherwise (no GPU, no memory).
absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(std::shared_ptr<const ModelWeights> weights,
                                                       const BackendSpec& spec);

}  // namespace gdnserve
