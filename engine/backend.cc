#include "engine/backend.h"

#include <vector>

#include "absl/strings/str_format.h"

namespace gdnserve {

absl::Status ValidateBatch(absl::Span<const SeqPiece> batch, const StatePool& pool, int vocab_size) {
  // The piece that took each slot (one pass: decode batches have hundreds).
  thread_local std::vector<int> owner;
  owner.assign(pool.num_slots(), -1);
  for (size_t i = 0; i < batch.size(); ++i) {
    const SeqPiece& p = batch[i];
    if (!pool.InUse(p.slot)) {
      return absl::InvalidArgumentError(absl::StrFormat("piece %d: state slot %d is not in use", i, p.slot));
    }
    if (p.tokens.empty()) return absl::InvalidArgumentError(absl::StrFormat("piece %d: no tokens", i));
    for (size_t j = 0; j < p.tokens.size(); ++j) {
      if (p.tokens[j] < 0 || p.tokens[j] >= vocab_size) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "piece %d: token id %d at position %d is outside the vocabulary [0, %d)", i, p.tokens[j], j,
            vocab_size));
      }
    }
    if (owner[p.slot] >= 0) {
      return absl::InvalidArgumentError(
          absl::StrFormat("pieces %d and %d share state slot %d", owner[p.slot], i, p.slot));
    }
    owner[p.slot] = static_cast<int>(i);
  }
  return absl::OkStatus();
}

std::vector<RowRun> RowRuns(absl::Span<const SeqPiece> batch) {
  std::vector<RowRun> runs;
  int64_t t = 0, r = 0;
  for (const SeqPiece& p : batch) {
    const int64_t n = static_cast<int64_t>(p.tokens.size()), nl = p.all_logits ? n : 1;
    if (!runs.empty() && runs.back().prompt == p.is_prompt()) {
      runs.back().t1 = t + n;
      runs.back().r1 = r + nl;
    } else {
      runs.push_back({p.is_prompt(), t, t + n, r, r + nl});
    }
    t += n;
    r += nl;
  }
  return runs;
}

}  // namespace gdnserve
