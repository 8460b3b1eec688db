#include "engine/state_pool.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/strings/str_format.h"

namespace gdnserve {

StateLayout StateLayout::ForConfig(const ModelConfig& c) {
  StateLayout l;
  l.num_layers = c.num_layers;
  l.recurrent_floats = static_cast<int64_t>(c.num_v_heads) * c.head_v_dim * c.head_dim;
  l.conv_channels = 2 * c.key_dim + c.value_dim;
  l.conv_floats = static_cast<int64_t>(c.conv_size - 1) * l.conv_channels;
  return l;
}

StatePool::StatePool(const StateLayout& layout, int num_slots)
    : layout_(layout),
      data_(static_cast<size_t>(num_slots) * layout.floats_per_slot()),
      in_use_(num_slots, false) {
  free_.reserve(num_slots);
  for (int s = num_slots - 1; s >= 0; --s) free_.push_back(s);
}

StatePool::StatePool(const StateLayout& layout, int num_slots, SlotStorageOps external)
    : layout_(layout), external_(std::move(external)), in_use_(num_slots, false) {
  free_.reserve(num_slots);
  for (int s = num_slots - 1; s >= 0; --s) free_.push_back(s);
}

int StatePool::SlotsForBudget(const StateLayout& layout, int64_t budget_bytes) {
  return static_cast<int>(std::max<int64_t>(0, budget_bytes / layout.bytes_per_slot()));
}

absl::StatusOr<int> StatePool::Acquire() {
  if (free_.empty()) {
    return absl::ResourceExhaustedError(absl::StrFormat("all %d state slots are in use", num_slots()));
  }
  const int slot = free_.back();
  free_.pop_back();
  in_use_[slot] = true;
  if (external_.zero) {
    external_.zero(slot);
  } else {
    std::memset(Slot(slot), 0, layout_.bytes_per_slot());
  }
  return slot;
}

absl::Status StatePool::Release(int slot) {
  if (!InUse(slot)) {
    return absl::FailedPreconditionError(absl::StrFormat("state slot %d is not in use", slot));
  }
  in_use_[slot] = false;
  free_.push_back(slot);
  return absl::OkStatus();
}

absl::Status StatePool::Copy(int src, int dst) {
  if (!InUse(src) || !InUse(dst)) {
    return absl::FailedPreconditionError(absl::StrFormat("copy of state slot %d to %d: both must be in use", src, dst));
  }
  if (src == dst) return absl::OkStatus();
  if (external_.copy) {
    external_.copy(src, dst);
  } else {
    std::memcpy(Slot(dst), Slot(src), layout_.bytes_per_slot());
  }
  return absl::OkStatus();
}

absl::Status StatePool::CheckInvariants() const {
  std::vector<int> seen(num_slots(), 0);
  for (int s : free_) {
    if (s < 0 || s >= num_slots()) return absl::InternalError(absl::StrFormat("free list holds bad slot %d", s));
    if (in_use_[s]) return absl::InternalError(absl::StrFormat("slot %d is both free and in use", s));
    if (++seen[s] > 1) return absl::InternalError(absl::StrFormat("slot %d is on the free list twice", s));
  }
  for (int s = 0; s < num_slots(); ++s) {
    if (!in_use_[s] && seen[s] == 0) return absl::InternalError(absl::StrFormat("slot %d leaked", s));
  }
  return absl::OkStatus();
}

}  // namespace gdnserve
