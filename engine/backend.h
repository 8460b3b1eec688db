// The compute interface the engine drives: one forward pass over a packed
// batch of sequence pieces, each reading and writing its own state slot.
// Implemented by the CPU backend (cpu_backend.h) and the CUDA backend.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "engine/config.h"
#include "engine/sampler.h"
#include "engine/state_pool.h"

namespace gdnserve {

// A run of consecutive tokens of one sequence. One token is a decode step
// (recurrent form); more is a prefill piece (chunkwise form). The piece
// continues from whatever state the slot holds.
struct SeqPiece {
  int slot = -1;
  absl::Span<const int32_t> tokens;
  bool all_logits = false;  // logits for every token; else only for the last
  // The rows must reach the host. A backend that samples on the device
  // (Backend::SamplesOnDevice) may leave rows of pieces without it on the
  // device: ForwardOutput's rows for them are then undefined, and Draw reads
  // them. Host backends ignore it.
  bool host_logits = true;
  // A prompt (prefill) piece even when it is one token long. Rows of prompt
  // pieces (and of every piece longer than one token) go through GEMMs whose
  // algorithm is fixed whatever the row count, so a prompt's logits do not
  // depend on how it was split or what ran beside it (the prefix cache's
  // bit-exactness on a GPU).
  bool prompt = false;
  // Prompt rows: this flag, or more than one token (the chunk form and the
  // fixed GEMM algorithms); else a decode token.
  bool is_prompt() const { return prompt || tokens.size() > 1; }
};

// A batch's pieces as runs of consecutive pieces of one class (prompt or
// decode): token rows [t0, t1) and logits rows [r0, r1) (ForwardOutput's
// numbering). Backends run each run's linear layers as one call, so a row's
// result depends only on its class, not on what ran beside it.
struct RowRun {
  bool prompt;
  int64_t t0, t1, r0, r1;
};
std::vector<RowRun> RowRuns(absl::Span<const SeqPiece> batch);

// Logits rows, piece by piece: piece i owns rows [first_row[i], first_row[i+1]).
// A host backend fills `logits`; a device backend may instead point
// `external` at its own (pinned) host buffer, valid until its next Forward.
struct ForwardOutput {
  int64_t vocab = 0;
  std::vector<float> logits;        // [rows, vocab] unless `external` is set
  const float* external = nullptr;  // [rows, vocab] owned by the backend
  std::vector<int64_t> first_row;   // size pieces + 1
  const float* data() const { return external != nullptr ? external : logits.data(); }
  int64_t rows() const { return first_row.empty() ? 0 : first_row.back(); }
  const float* Row(int64_t row) const { return data() + row * vocab; }
  // The logits of the last token of piece i.
  const float* Last(size_t piece) const { return Row(first_row[piece + 1] - 1); }
  // A copy of every row (tests, tools).
  std::vector<float> AllRows() const { return std::vector<float>(data(), data() + rows() * vocab); }
};

// A token to draw on the device from row `row` of the last Forward's logits
// (kernels/cpu/sample.h's rule). The sequence's own generator supplies
// `uniform` (SequenceSampler::NextUniform; unused when greedy), so seeded
// requests draw the same tokens on every backend. Penalty inputs as in
// SequenceSampler (repeated: distinct prompt + output tokens; counted/counts:
// distinct output tokens and how often each was drawn).
struct DeviceDraw {
  int64_t row = 0;
  const SamplingParams* params = nullptr;
  double uniform = 0.0;
  absl::Span<const int32_t> repeated, counted, counts;
};

// Checks a batch against a pool and vocabulary: every slot in use and used
// once, every piece non-empty, every token id in range; InvalidArgument naming
// the piece otherwise. Backends call it before touching any state.
absl::Status ValidateBatch(absl::Span<const SeqPiece> batch, const StatePool& pool, int vocab_size);

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  virtual const ModelConfig& config() const = 0;
  virtual StatePool& state_pool() = 0;
  // Runs the batch; InvalidArgument for a bad token id or slot, naming it.
  virtual absl::Status Forward(absl::Span<const SeqPiece> batch, ForwardOutput* out) = 0;

  // Whether Draw works: tokens picked where the logits are, so they need not
  // cross to the host (pieces with host_logits = false).
  virtual bool SamplesOnDevice() const { return false; }
  // Draws one token per entry from the last Forward's rows: out[i] gets the
  // token and its logprob under the raw logits (no top alternatives).
  virtual absl::Status Draw(absl::Span<const DeviceDraw> /*draws*/, absl::Span<SampleResult> /*out*/) {
    return absl::UnimplementedError("this backend samples on the host");
  }

  // OK while the backend can compute. A device backend returns the error
  // that broke it for good (a sticky CUDA error: the process must restart);
  // the engine then stops admitting requests and the server reports not ready.
  virtual absl::Status Health() const { return absl::OkStatus(); }

  // Copies a slot's whole state (StateLayout order, float32) to or from host
  // memory (snapshots: prefix cache, sessions). The defaults serve a pool in
  // host memory; a device backend overrides them with device copies.
  virtual absl::Status ReadSlot(int slot, absl::Span<float> out) {
    StatePool& pool = state_pool();
    if (!pool.InUse(slot) || static_cast<int64_t>(out.size()) != pool.layout().floats_per_slot()) {
      return absl::InvalidArgumentError("ReadSlot: slot not in use or wrong size");
    }
    std::memcpy(out.data(), pool.Slot(slot), out.size() * sizeof(float));
    return absl::OkStatus();
  }
  virtual absl::Status WriteSlot(int slot, absl::Span<const float> in) {
    StatePool& pool = state_pool();
    if (!pool.InUse(slot) || static_cast<int64_t>(in.size()) != pool.layout().floats_per_slot()) {
      return absl::InvalidArgumentError("WriteSlot: slot not in use or wrong size");
    }
    std::memcpy(pool.Slot(slot), in.data(), in.size() * sizeof(float));
    return absl::OkStatus();
  }
};

}  // namespace gdnserve
