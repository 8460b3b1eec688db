// Small helpers the engine benchmarks share.
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"

namespace gdnserve::bench {

using Clock = std::chrono::steady_clock;

// Seconds since t.
inline double Since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// "1,16,64" -> {1, 16, 64}; entries that are not integers are skipped.
inline std::vector<int> ParseInts(const std::string& s) {
  std::vector<int> out;
  for (absl::string_view p : absl::StrSplit(s, ',')) {
    int v;
    if (absl::SimpleAtoi(p, &v)) out.push_back(v);
  }
  return out;
}

}  // namespace gdnserve::bench
