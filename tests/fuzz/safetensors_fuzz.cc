// Fuzzes ParseSafetensorsHeader (whole-file bytes: u64 length + JSON header +
// data) and ParseModelConfig. The first input byte picks the parser so one
// corpus covers both; every accepted header must describe tensors that lie
// inside the file.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "engine/config.h"
#include "engine/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  std::string_view bytes(reinterpret_cast<const char*>(data) + 1, size - 1);
  if (data[0] & 1) {
    auto config = gdnserve::ParseModelConfig(bytes);
    if (config.ok()) {
      // ToJson round-trips (config.h's contract).
      auto again = gdnserve::ParseModelConfig(config->ToJson());
      if (!again.ok() || again->ToJson() != config->ToJson()) std::abort();
    }
  } else {
    auto header = gdnserve::ParseSafetensorsHeader(bytes);
    if (header.ok()) {
      const auto* begin = reinterpret_cast<const std::byte*>(bytes.data());
      for (const auto& t : header->tensors) {
        if (t.nbytes != static_cast<size_t>(t.num_elements()) * gdnserve::DTypeSize(t.dtype)) std::abort();
        if (t.nbytes > 0 && (t.data < begin || t.data + t.nbytes > begin + bytes.size())) std::abort();
        // Touch both ends so ASan checks the range.
        if (t.nbytes > 0) {
          volatile std::byte first = t.data[0];
          volatile std::byte last = t.data[t.nbytes - 1];
          (void)first;
          (void)last;
        }
      }
    }
  }
  return 0;
}
