#include "engine/state_blob.h"

#include <array>
#include <cstring>

#include "absl/strings/str_format.h"

namespace gdnserve {
namespace {

constexpr char kMagic[8] = {'G', 'D', 'N', 'S', 'T', 'A', 'T', 'E'};
constexpr size_t kHeader = 48;

std::array<uint32_t, 256> CrcTable() {
  std::array<uint32_t, 256> t{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xedb88320u ^ (c >> 1) : c >> 1;
    t[i] = c;
  }
  return t;
}

// The host is little-endian (x86-64, aarch64), as the format is.
template <typename T>
void Put(std::string* out, T v) {
  out->append(reinterpret_cast<const char*>(&v), sizeof(T));
}
template <typename T>
T Get(std::string_view b, size_t offset) {
  T v;
  std::memcpy(&v, b.data() + offset, sizeof(T));
  return v;
}

}  // namespace

uint32_t Crc32(std::string_view bytes) {
  static const std::array<uint32_t, 256> table = CrcTable();
  uint32_t c = 0xffffffffu;
  for (unsigned char b : bytes) c = table[(c ^ b) & 0xff] ^ (c >> 8);
  return c ^ 0xffffffffu;
}

std::string EncodeStateBlob(const StateSnapshot& s, uint64_t config_hash) {
  std::string out;
  out.reserve(kHeader + 4 * (s.tokens.size() + s.state.size()) + 4);
  out.append(kMagic, sizeof(kMagic));
  Put<uint32_t>(&out, kStateBlobVersion);
  Put<uint32_t>(&out, 0);
  Put<uint64_t>(&out, config_hash);
  Put<uint64_t>(&out, s.tokens.size());
  Put<int32_t>(&out, s.pending);
  Put<uint32_t>(&out, 0);
  Put<uint64_t>(&out, s.state.size());
  out.append(reinterpret_cast<const char*>(s.tokens.data()), s.tokens.size() * sizeof(int32_t));
  out.append(reinterpret_cast<const char*>(s.state.data()), s.state.size() * sizeof(float));
  Put<uint32_t>(&out, Crc32(out));
  return out;
}

absl::StatusOr<StateSnapshot> DecodeStateBlob(std::string_view b, uint64_t config_hash, int64_t floats_per_slot) {
  auto corrupt = [](const std::string& why) { return absl::InvalidArgumentError("state blob: " + why); };
  if (b.size() < kHeader + 4 || std::memcmp(b.data(), kMagic, sizeof(kMagic)) != 0) {
    return corrupt("not a gdnserve state (bad magic or too short)");
  }
  const uint32_t version = Get<uint32_t>(b, 8);
  if (version != kStateBlobVersion) {
    return corrupt(absl::StrFormat("version %d is not supported (this server reads %d)", version, kStateBlobVersion));
  }
  const uint64_t num_tokens = Get<uint64_t>(b, 24);
  const uint64_t num_floats = Get<uint64_t>(b, 40);
  if (num_tokens > (1ull << 32) || num_floats > (1ull << 40) ||
      b.size() != kHeader + 4 * (num_tokens + num_floats) + 4) {
    return corrupt(absl::StrFormat("size %d does not match its header (truncated?)", b.size()));
  }
  const uint32_t stored = Get<uint32_t>(b, b.size() - 4);
  if (Crc32(b.substr(0, b.size() - 4)) != stored) return corrupt("checksum mismatch (corrupted)");
  const uint64_t hash = Get<uint64_t>(b, 16);
  if (hash != config_hash) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "state blob: made by a different model (config hash %016x, this server's model is %016x)", hash,
        config_hash));
  }
  if (static_cast<int64_t>(num_floats) != floats_per_slot) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "state blob: %d state floats, this model's state has %d", num_floats, floats_per_slot));
  }
  StateSnapshot s;
  s.pending = Get<int32_t>(b, 32);
  s.tokens.resize(num_tokens);
  s.state.resize(num_floats);
  std::memcpy(s.tokens.data(), b.data() + kHeader, num_tokens * 4);
  std::memcpy(s.state.data(), b.data() + kHeader + num_tokens * 4, num_floats * 4);
  return s;
}

}  // namespace gdnserve
