// Fixed pool of per-sequence state slots (DESIGN.md 3.2), allocated once.
//
// A slot holds, for every layer, the GDN-2 recurrent state [HV][V][K] float32
// (S transposed) followed by the conv state [W-1][conv_channels] float32.
// Slots are contiguous (slot-major), so copying one (fork, snapshot) is one
// memcpy and kernels address a layer's state by (slot, layer).
//
// Not thread-safe: the engine loop owns the pool.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/config.h"

namespace gdnserve {

struct StateLayout {
  int num_layers = 0;
  int64_t recurrent_floats = 0;  // per layer: HV * V * K
  int64_t conv_floats = 0;       // per layer: (W - 1) * conv_channels
  int64_t conv_channels = 0;     // 2 * key_dim + value_dim

  static StateLayout ForConfig(const ModelConfig& config);
  int64_t floats_per_layer() const { return recurrent_floats + conv_floats; }
  int64_t floats_per_slot() const { return floats_per_layer() * num_layers; }
  int64_t bytes_per_slot() const { return floats_per_slot() * static_cast<int64_t>(sizeof(float)); }
};

// How a pool whose slots live outside host memory (a device backend's)
// zeroes a slot on Acquire and copies one slot to another.
struct SlotStorageOps {
  std::function<void(int slot)> zero;
  std::function<void(int src, int dst)> copy;
};

class StatePool {
 public:
  // num_slots >= 1. Memory: num_slots * layout.bytes_per_slot() of host memory.
  StatePool(const StateLayout& layout, int num_slots);
  // The same bookkeeping over storage owned by someone else (no host copy):
  // Slot()/Recurrent()/Conv() must not be used.
  StatePool(const StateLayout& layout, int num_slots, SlotStorageOps external);
  // The largest pool that fits in budget_bytes (at least 0 slots).
  static int SlotsForBudget(const StateLayout& layout, int64_t budget_bytes);

  bool CanAcquire() const { return !free_.empty(); }
  // Takes a free slot and zeroes it; ResourceExhausted when none is free.
  absl::StatusOr<int> Acquire();
  // Returns a slot to the pool; FailedPrecondition if it is not in use.
  absl::Status Release(int slot);
  // Copies the whole state of src into dst (both in use).
  absl::Status Copy(int src, int dst);

  float* Slot(int slot) { return data_.data() + static_cast<int64_t>(slot) * layout_.floats_per_slot(); }
  const float* Slot(int slot) const {
    return data_.data() + static_cast<int64_t>(slot) * layout_.floats_per_slot();
  }
  float* Recurrent(int slot, int layer) { return Slot(slot) + layer * layout_.floats_per_layer(); }
  float* Conv(int slot, int layer) { return Recurrent(slot, layer) + layout_.recurrent_floats; }

  bool InUse(int slot) const { return slot >= 0 && slot < num_slots() && in_use_[slot]; }
  int num_slots() const { return static_cast<int>(in_use_.size()); }
  int num_used() const { return num_slots() - num_free(); }
  int num_free() const { return static_cast<int>(free_.size()); }
  const StateLayout& layout() const { return layout_; }
  bool host_storage() const { return !external_.zero; }

  // Debug invariant (as llama.cpp's recurrent memory checks): every slot is
  // either in use or on the free list, exactly once.
  absl::Status CheckInvariants() const;

 private:
  StateLayout layout_;
  std::vector<float> data_;
  SlotStorageOps external_;
  std::vector<bool> in_use_;
  std::vector<int> free_;  // stack; lowest slot index on top
};

}  // namespace gdnserve
