#include "engine/backend_factory.h"

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "engine/cpu_backend.h"
#include "engine/cuda_backend.h"

namespace gdnserve {

absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(std::shared_ptr<const ModelWeights> weights,
                                                       const BackendSpec& spec) {
  if (spec.dtype != "auto" && spec.dtype != "f32" && spec.dtype != "bf16") {
    return absl::InvalidArgumentError(absl::StrFormat("--dtype must be auto, f32 or bf16, got '%s'", spec.dtype));
  }
  if (spec.device == "cpu") {
    if (spec.dtype == "bf16") {
      return absl::InvalidArgumentError("--dtype bf16 needs --device cuda (the CPU backend computes in float32)");
    }
    return CreateCpuBackend(std::move(weights), {.num_slots = spec.num_slots, .num_threads = spec.num_threads});
  }
  if (spec.device == "cuda" || absl::StartsWith(spec.device, "cuda:")) {
    int ordinal = 0;
    if (spec.device.size() > 4 && !absl::SimpleAtoi(spec.device.substr(5), &ordinal)) {
      return absl::InvalidArgumentError(absl::StrFormat("--device: bad CUDA device '%s' (cuda or cuda:N)", spec.device));
    }
    return CreateCudaBackend(std::move(weights), {.num_slots = spec.num_slots,
                                                  .device = ordinal,
                                                  .bf16 = spec.dtype != "f32",
                                                  .cuda_graphs = spec.cuda_graphs});
  }
  return absl::InvalidArgumentError(
      absl::StrFormat("--device must be cpu, cuda or cuda:N, got '%s'", spec.device));
}

}  // namespace gdnserve
