// Stop strings across token boundaries: the emitted text equals the full
// text cut before the first stop string, whatever the split.
#include "engine/stop_matcher.h"

#include <gtest/gtest.h>

#include <random>

#include "tests/test_util.h"

namespace gdnserve {
namespace {

// Feeds text in the given pieces; returns what was emitted and whether it stopped.
std::pair<std::string, bool> RunStops(const std::vector<std::string>& stops, const std::vector<std::string>& pieces) {
  StopMatcher m(stops);
  std::string out;
  for (const std::string& p : pieces) {
    bool stopped = false;
    out += m.Push(p, &stopped);
    if (stopped) return {out, true};
  }
  return {out + m.Flush(), false};
}

// The definition: after each piece, if the text so far contains a stop
// string, the output is the text before its earliest occurrence.
std::string Expected(const std::vector<std::string>& stops, const std::vector<std::string>& pieces,
                     bool* stopped) {
  std::string text;
  for (const std::string& p : pieces) {
    text += p;
    size_t first = std::string::npos;
    for (const auto& s : stops) first = std::min(first, text.find(s));
    if (first != std::string::npos) {
      *stopped = true;
      return text.substr(0, first);
    }
  }
  *stopped = false;
  return text;
}

TEST(StopMatcher, Basics) {
  EXPECT_EQ(RunStops({"END"}, {"hello E", "N", "D world"}), std::make_pair(std::string("hello "), true));
  EXPECT_EQ(RunStops({"END"}, {"hello E", "N"}), std::make_pair(std::string("hello EN"), false));
  EXPECT_EQ(RunStops({}, {"a", "b"}), std::make_pair(std::string("ab"), false));
  EXPECT_EQ(RunStops({"\n\n", "###"}, {"x\n", "#", "\n", "\n"}), std::make_pair(std::string("x\n#"), true));
  EXPECT_EQ(RunStops({"é!"}, {"caf", "é", "!"}), std::make_pair(std::string("caf"), true));
}

TEST(StopMatcher, NothingOfAStopStringIsEverEmitted) {
  StopMatcher m({"STOP"});
  bool stopped = false;
  EXPECT_EQ(m.Push("abc S", &stopped), "abc ");
  EXPECT_EQ(m.Push("T", &stopped), "");
  EXPECT_EQ(m.Push("x", &stopped), "STx");
  EXPECT_FALSE(stopped);
}

TEST(StopMatcher, RandomSplitsMatchTheDefinition) {
  std::mt19937_64 rng(testing::TestSeed());
  const std::string alphabet = "ab\n#";
  for (int trial = 0; trial < 3000; ++trial) {
    std::vector<std::string> stops;
    for (int i = 0, n = rng() % 3; i < n; ++i) {
      std::string s;
      for (int j = 0, len = 1 + rng() % 4; j < len; ++j) s += alphabet[rng() % alphabet.size()];
      stops.push_back(s);
    }
    std::string text;
    for (int j = 0, len = rng() % 40; j < len; ++j) text += alphabet[rng() % alphabet.size()];
    std::vector<std::string> pieces;
    for (size_t p = 0; p < text.size();) {
      const size_t n = 1 + rng() % 5;
      pieces.push_back(text.substr(p, n));
      p += n;
    }
    bool want_stopped = false;
    const std::string want = Expected(stops, pieces, &want_stopped);
    const auto [got, stopped] = RunStops(stops, pieces);
    ASSERT_EQ(got, want) << "text '" << text << "'";
    ASSERT_EQ(stopped, want_stopped) << "text '" << text << "'";
  }
}

}  // namespace
}  // namespace gdnserve
