#include "engine/backend_factory.h"

#include <optional>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "engine/cpu_backend.h"
#include "engine/cuda_backend.h"

namespace gdnserve {

namespace {

bool IsCuda(const std::string& device) { return device == "cuda" || absl::StartsWith(device, "cuda:"); }

std::optional<PrefillKernel> ParsePrefillKernel(const std::string& name) {
  if (name == "chunk") return PrefillKernel::kChunk;
  if (name == "chunk-simt") return PrefillKernel::kChunkSimt;
  if (name == "recurrent") return PrefillKernel::kRecurrent;
  return std::nullopt;
}

}  // namespace

absl::Status CheckBackendSpec(const BackendSpec& spec) {
  if (spec.device != "cpu" && !IsCuda(spec.device)) {
    return absl::InvalidArgumentError(absl::StrFormat("--device must be cpu, cuda or cuda:N, got %s", spec.device));
  }
  if (IsCuda(spec.device) && !CudaBackendBuilt()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "--device %s: this gdnserve was built without CUDA (configure with -DGDNSERVE_CUDA=ON)", spec.device));
  }
  if (spec.dtype != "auto" && spec.dtype != "f32" && spec.dtype != "bf16") {
    return absl::InvalidArgumentError(absl::StrFormat("--dtype must be auto, f32 or bf16, got %s", spec.dtype));
  }
  if (!ParsePrefillKernel(spec.prefill_kernel)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "--prefill-kernel must be chunk, chunk-simt or recurrent, got %s", spec.prefill_kernel));
  }
  if (spec.device == "cpu" && spec.dtype == "bf16") {
    return absl::InvalidArgumentError("--dtype bf16 needs --device cuda (the CPU backend computes in float32)");
  }
  return absl::OkStatus();
}

absl::StatusOr<int> ResolveDevice(const BackendSpec& spec) {
  if (spec.device == "cpu") return 0;
  int ordinal = 0;
  if (spec.device.size() > 4 && !absl::SimpleAtoi(spec.device.substr(5), &ordinal)) {
    return absl::InvalidArgumentError(absl::StrFormat("--device %s: bad CUDA device (cuda or cuda:N)", spec.device));
  }
  const int count = CudaDeviceCount();
  if (count == 0) {
    return absl::FailedPreconditionError(absl::StrFormat("--device %s: no CUDA device is available", spec.device));
  }
  if (ordinal < 0 || ordinal >= count) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "--device %s: this machine has %d CUDA device(s) (cuda:0..cuda:%d)", spec.device, count, count - 1));
  }
  return ordinal;
}

absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(std::shared_ptr<const ModelWeights> weights,
                                                       const BackendSpec& spec) {
  if (absl::Status s = CheckBackendSpec(spec); !s.ok()) return s;
  if (spec.device == "cpu") {
    return CreateCpuBackend(std::move(weights), {.num_slots = spec.num_slots,
                                                 .num_threads = spec.num_threads,
                                                 .batch_invariant = spec.batch_invariant});
  }
  absl::StatusOr<int> ordinal = ResolveDevice(spec);
  if (!ordinal.ok()) return ordinal.status();
  return CreateCudaBackend(std::move(weights), {.num_slots = spec.num_slots,
                                                .device = *ordinal,
                                                .bf16 = spec.dtype != "f32",
                                                .cuda_graphs = spec.cuda_graphs,
                                                .prefill_kernel = *ParsePrefillKernel(spec.prefill_kernel),
                                                .batch_invariant = spec.batch_invariant});
}

}  // namespace gdnserve
