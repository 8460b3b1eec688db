// Stop strings in streamed text: finds them across token boundaries and
// never lets any part of one reach the client. Text that could still be the
// start of a stop string is held back until it no longer can be.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace gdnserve {

class StopMatcher {
 public:
  explicit StopMatcher(std::vector<std::string> stops);

  // Adds newly generated text (complete UTF-8). Returns the text that can be
  // emitted now. When a stop string completes, returns the text before it,
  // sets *stopped and drops everything from the stop string on.
  std::string Push(std::string_view text, bool* stopped);
  // At the end of generation (not by a stop string): the held-back text.
  std::string Flush();

  size_t held_bytes() const { return held_.size(); }

 private:
  std::vector<std::string> stops_;
  std::string held_;
};

}  // namespace gdnserve
