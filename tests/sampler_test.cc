// Sampler: parameter validation, greedy, seeded reproducibility, the
// truncations (top-k/top-p/min-p), penalties, logprobs, and that sampled
// frequencies follow the softmax.
#include "engine/sampler.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "tests/test_util.h"

namespace gdnserve {
namespace {

std::vector<float> RandomLogits(int n, std::mt19937_64& rng) {
  std::normal_distribution<float> d(0.0f, 2.0f);
  std::vector<float> x(n);
  for (auto& v : x) v = d(rng);
  return x;
}

int Argmax(const std::vector<float>& x) { return std::max_element(x.begin(), x.end()) - x.begin(); }

TEST(SamplingParams, ValidationNamesTheField) {
  struct Bad {
    const char* field;
    SamplingParams p;
  };
  std::vector<Bad> cases;
  SamplingParams p;
  p.temperature = -1;
  cases.push_back({"temperature", p});
  p = {};
  p.top_p = 0;
  cases.push_back({"top_p", p});
  p = {};
  p.top_k = -5;
  cases.push_back({"top_k", p});
  p = {};
  p.min_p = 1.5;
  cases.push_back({"min_p", p});
  p = {};
  p.repetition_penalty = 0;
  cases.push_back({"repetition_penalty", p});
  p = {};
  p.presence_penalty = 3;
  cases.push_back({"presence_penalty", p});
  p = {};
  p.frequency_penalty = -3;
  cases.push_back({"frequency_penalty", p});
  p = {};
  p.logprobs = 21;
  cases.push_back({"logprobs", p});
  for (const Bad& b : cases) {
    absl::Status s = b.p.Validate(100);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << b.field;
    EXPECT_NE(s.message().find(b.field), std::string::npos) << s;
  }
  EXPECT_TRUE(SamplingParams{}.Validate(100).ok());
}

TEST(Sampler, GreedyAndDegenerateTruncationsPickTheArgmax) {
  std::mt19937_64 rng(testing::TestSeed());
  for (int trial = 0; trial < 50; ++trial) {
    const auto logits = RandomLogits(64, rng);
    SamplingParams greedy;
    greedy.temperature = 0;
    SamplingParams k1;
    k1.top_k = 1;
    SamplingParams p_small;
    p_small.top_p = 1e-6f;
    for (const SamplingParams& p : {greedy, k1, p_small}) {
      SequenceSampler s(p, {});
      EXPECT_EQ(s.Sample(logits).token, Argmax(logits));
    }
  }
}

TEST(Sampler, SameSeedSameTokens) {
  std::mt19937_64 rng(testing::TestSeed());
  std::vector<std::vector<float>> rows;
  for (int i = 0; i < 40; ++i) rows.push_back(RandomLogits(50, rng));
  SamplingParams p;
  p.temperature = 1.3f;
  p.top_p = 0.9f;
  p.has_seed = true;
  p.seed = rng();
  SequenceSampler a(p, {}), b(p, {});
  for (const auto& r : rows) EXPECT_EQ(a.Sample(r).token, b.Sample(r).token);
}

TEST(Sampler, FrequenciesFollowSoftmaxAndTruncations) {
  std::mt19937_64 rng(testing::TestSeed());
  const std::vector<float> logits = {2.0f, 1.0f, 0.5f, 0.0f, -1.0f, -3.0f};
  SamplingParams p;
  p.temperature = 0.8f;
  p.has_seed = true;
  p.seed = rng();
  p.top_k = 4;
  SequenceSampler s(p, {});
  const int draws = 40000;
  std::vector<int> counts(logits.size());
  for (int i = 0; i < draws; ++i) ++counts[s.Sample(logits).token];
  std::vector<double> want(4);
  double z = 0;
  for (int i = 0; i < 4; ++i) z += want[i] = std::exp(logits[i] / 0.8);
  for (int i = 0; i < 4; ++i) {
    const double expect = want[i] / z;
    const double sd = std::sqrt(expect * (1 - expect) / draws);
    EXPECT_NEAR(counts[i] / static_cast<double>(draws), expect, 5 * sd) << "token " << i;
  }
  EXPECT_EQ(counts[4] + counts[5], 0) << "top_k=4 must never pick tokens 4, 5";
}

TEST(Sampler, PlainTemperatureFollowsSoftmax) {
  // No truncation: the sampler skips sorting; the distribution must not change.
  const std::vector<float> logits = {2.0f, 1.0f, 0.5f, 0.0f, -1.0f, -3.0f};
  SamplingParams p;
  p.temperature = 1.3f;
  p.has_seed = true;
  p.seed = testing::TestSeed();
  SequenceSampler s(p, {});
  const int draws = 40000;
  std::vector<int> counts(logits.size());
  for (int i = 0; i < draws; ++i) ++counts[s.Sample(logits).token];
  double z = 0;
  for (float l : logits) z += std::exp(l / 1.3);
  for (size_t i = 0; i < logits.size(); ++i) {
    const double expect = std::exp(logits[i] / 1.3) / z;
    EXPECT_NEAR(counts[i] / static_cast<double>(draws), expect, 5 * std::sqrt(expect * (1 - expect) / draws))
        << "token " << i;
  }
}

TEST(Sampler, MinPDropsUnlikelyTokens) {
  const std::vector<float> logits = {3.0f, 2.9f, 0.0f, -2.0f};
  SamplingParams p;
  p.min_p = 0.5f;
  p.has_seed = true;
  p.seed = testing::TestSeed();
  SequenceSampler s(p, {});
  for (int i = 0; i < 2000; ++i) EXPECT_LT(s.Sample(logits).token, 2);
}

TEST(Sampler, PenaltiesSteerAwayFromSeenTokens) {
  const std::vector<float> logits = {5.0f, 4.0f, 3.0f};
  SamplingParams rep;
  rep.temperature = 0;
  rep.repetition_penalty = 2.0f;  // 5/2 < 4: token 1 wins when 0 is in the prompt
  const std::vector<int32_t> prompt = {0};
  SequenceSampler a(rep, prompt);
  EXPECT_EQ(a.Sample(logits).token, 1);
  SamplingParams freq;
  freq.temperature = 0;
  freq.frequency_penalty = 1.5f;
  SequenceSampler b(freq, {});
  EXPECT_EQ(b.Sample(logits).token, 0);  // first pick: 0 (5.0)
  EXPECT_EQ(b.Sample(logits).token, 1);  // 0 now at 3.5 < 4.0
}

TEST(Sampler, LogprobsAreLogSoftmaxOfRawLogits) {
  std::mt19937_64 rng(testing::TestSeed());
  const auto logits = RandomLogits(30, rng);
  SamplingParams p;
  p.temperature = 0;
  p.logprobs = 5;
  SequenceSampler s(p, {});
  const SampleResult r = s.Sample(logits);
  ASSERT_EQ(r.top.size(), 5u);
  EXPECT_EQ(r.top[0].token, r.token);
  for (size_t i = 1; i < r.top.size(); ++i) EXPECT_GE(r.top[i - 1].logprob, r.top[i].logprob);
  double z = 0;
  for (float x : logits) z += std::exp(static_cast<double>(x));
  for (const auto& t : r.top) EXPECT_NEAR(t.logprob, logits[t.token] - std::log(z), 1e-5);
  EXPECT_NEAR(LogSoftmaxAt(logits, 3), logits[3] - std::log(z), 1e-9);
}

}  // namespace
}  // namespace gdnserve
