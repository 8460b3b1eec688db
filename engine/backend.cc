#include "engine/backend.h"

#include "absl/strings/str_format.h"

namespace gdnserve {

absl::Status ValidateBatch(absl::Span<const SeqPiece> batch, const StatePool& pool, int vocab_size) {
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
    for (size_t k = 0; k < i; ++k) {
      if (batch[k].slot == p.slot) {
        return absl::InvalidArgumentError(absl::StrFormat("pieces %d and %d share state slot %d", k, i, p.slot));
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace gdnserve
