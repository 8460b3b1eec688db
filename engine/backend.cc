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

}  // namespace gdnserve
