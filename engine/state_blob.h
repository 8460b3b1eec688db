// The portable form of a session snapshot (gRPC ExportState / ImportState):
//
//   offset  size  field (little-endian)
//   0       8     magic "GDNSTATE"
//   8       4     version (1)
//   12      4     reserved (0)
//   16      8     ModelConfig::ConfigHash() of the model that produced it
//   24      8     number of fed tokens T
//   32      4     pending token (the last generated one, not fed yet; -1: none)
//   36      4     reserved (0)
//   40      8     number of state floats F (StateLayout::floats_per_slot)
//   48      4*T   fed token ids, int32
//   ...     4*F   state, float32, StateLayout order
//   end-4   4     CRC-32 (IEEE) of every byte before it
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "engine/state_cache.h"

namespace gdnserve {

inline constexpr uint32_t kStateBlobVersion = 1;

uint32_t Crc32(std::string_view bytes);

std::string EncodeStateBlob(const StateSnapshot& snapshot, uint64_t config_hash);
// Checks magic, version, size, checksum, the model (config_hash) and the
// state size; InvalidArgument for a corrupt blob, FailedPrecondition for
// another model's state, each saying which.
absl::StatusOr<StateSnapshot> DecodeStateBlob(std::string_view blob, uint64_t config_hash,
                                              int64_t floats_per_slot);

}  // namespace gdnserve
