// Fuzzes StopMatcher against a reference: concatenate all pushed text, cut at
// the earliest occurrence of any stop string. The emitted text (every Push,
// plus Flush when no stop fired) must equal that prefix, a stop must fire
// exactly when some stop string occurs, and nothing may be emitted that a
// later chunk could turn into a stop string.
//
// Input: byte 0 = number of stops (0..4); then stops and chunks separated by
// 0xFF bytes (stops first). Chunks must be whole UTF-8 per the contract, but
// the matcher works on bytes, so arbitrary bytes are fine.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "engine/stop_matcher.h"

namespace {

[[noreturn]] void Fail(const char* what, const std::string& want, const std::string& got) {
  std::fprintf(stderr, "stop_matcher_fuzz: %s\n  want \"%s\"\n  got  \"%s\"\n", what, want.c_str(), got.c_str());
  std::abort();
}

// Earliest end-free cut: the smallest position where some stop string starts
// and is complete within `text`; npos when none.
size_t ReferenceCut(const std::string& text, const std::vector<std::string>& stops) {
  size_t cut = std::string::npos;
  for (const auto& s : stops) {
    if (s.empty()) continue;
    size_t p = text.find(s);
    if (p != std::string::npos && p < cut) cut = p;
  }
  return cut;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1 || size > 2048) return 0;
  const size_t nstops = data[0] % 5;
  std::vector<std::string> parts(1);
  for (size_t i = 1; i < size; ++i) {
    if (data[i] == 0xFF) {
      parts.emplace_back();
    } else {
      parts.back().push_back(static_cast<char>(data[i]));
    }
  }
  std::vector<std::string> stops;
  size_t i = 0;
  for (; i < parts.size() && stops.size() < nstops; ++i) {
    if (!parts[i].empty()) stops.push_back(parts[i]);
  }
  std::vector<std::string> chunks(parts.begin() + i, parts.end());

  gdnserve::StopMatcher matcher(stops);
  std::string all, emitted;
  bool stopped = false;
  for (const auto& chunk : chunks) {
    all += chunk;
    std::string out = matcher.Push(chunk, &stopped);
    emitted += out;
    const size_t cut = ReferenceCut(all, stops);
    if (stopped) {
      if (cut == std::string::npos) Fail("stopped without a stop string", all, emitted);
      if (emitted != all.substr(0, cut)) Fail("text before the stop", all.substr(0, cut), emitted);
      return 0;
    }
    if (cut != std::string::npos) Fail("missed a stop string", all.substr(0, cut), emitted);
    // Emitted text is a prefix of the input and never holds back more than
    // the longest stop string can still need.
    if (all.compare(0, emitted.size(), emitted) != 0) Fail("emitted is not a prefix", all, emitted);
    size_t longest = 0;
    for (const auto& s : stops) longest = std::max(longest, s.size());
    if (matcher.held_bytes() != all.size() - emitted.size()) Fail("held bytes disagree", all, emitted);
    if (!stops.empty() && matcher.held_bytes() >= longest) Fail("held back a whole stop length", all, emitted);
    if (stops.empty() && matcher.held_bytes() != 0) Fail("held text with no stops", all, emitted);
  }
  emitted += matcher.Flush();
  if (emitted != all) Fail("flush lost text", all, emitted);
  return 0;
}
