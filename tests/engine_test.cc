// The serving engine on the CPU backend with a generated tiny model:
// concurrent requests equal the same requests run alone, seeded sampling
// ignores batch company, n > 1 forks the prompt state, stop strings, cancel,
// queue bound, validation and shutdown.
#include "engine/engine.h"

#include <gtest/gtest.h>

#include <random>
#include <thread>

#include "engine/cpu_backend.h"
#include "tests/collect_sink.h"
#include "tests/engine_fixture.h"
#include "tests/test_util.h"

namespace gdnserve {
namespace {

using testing::CollectSink;

class EngineTest : public testing::TinyEngineFixture {
 protected:
  EngineTest() : TinyEngineFixture(8) {}
  void StartEngine(EngineOptions options = {}) {
    options.step_token_budget = 256;
    options.max_prefill_chunk = 128;
    engine_ = std::make_unique<Engine>(backend_.get(), tokenizer_.get(), options);
  }
  // Stats are published at the end of the step that delivered the output.
  int SlotsUsedAfterStep() {
    for (int i = 0; i < 1000 && engine_->Stats().slots_used != 0; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    return engine_->Stats().slots_used;
  }
  std::shared_ptr<CollectSink> Run(GenerationRequest r) {
    auto sink = std::make_shared<CollectSink>();
    auto h = engine_->Submit(std::move(r), sink);
    EXPECT_TRUE(h.ok()) << h.status();
    sink->Wait();
    return sink;
  }
};

TEST_F(EngineTest, GreedyMatchesADirectBackendLoop) {
  StartEngine();
  const auto prompt = RandomPrompt(150);
  auto out = Run(Greedy(prompt, 20));
  engine_.reset();  // the engine's thread must not share the backend with us
  ASSERT_TRUE(out->error.ok());
  StatePool& pool = backend_->state_pool();
  const int slot = *pool.Acquire();
  std::vector<int32_t> want;
  ForwardOutput fo;
  SeqPiece p{slot, prompt, false};
  for (int i = 0; i < 20; ++i) {
    ASSERT_TRUE(backend_->Forward({&p, 1}, &fo).ok());
    const float* l = fo.Last(0);
    want.push_back(std::max_element(l, l + fo.vocab) - l);
    p = {slot, {&want.back(), 1}, false};
  }
  EXPECT_EQ(out->samples[0].tokens, want);
  EXPECT_EQ(out->samples[0].finish, FinishReason::kLength);
  // A continuation keeps its leading space (tokenizer_test checks the
  // detokenizer itself against SentencePiece's Decode).
  IncrementalDetokenizer detok(*tokenizer_, /*starts_text=*/false);
  std::string text;
  for (int32_t t : want) text += detok.Push(t);
  EXPECT_EQ(out->samples[0].text, text + detok.Flush());
  EXPECT_EQ(out->completion_tokens, 20);
}

TEST_F(EngineTest, ConcurrentRequestsEqualTheSameRunAlone) {
  StartEngine();
  const int N = 24;
  std::vector<GenerationRequest> reqs;
  for (int i = 0; i < N; ++i) {
    GenerationRequest r = Greedy(RandomPrompt(1 + rng_() % 300), 1 + rng_() % 30);
    if (i % 3 == 1) {  // seeded sampling must not depend on batch company either
      r.sampling.temperature = 0.9f;
      r.sampling.top_p = 0.9f;
      r.sampling.has_seed = true;
      r.sampling.seed = rng_();
    }
    reqs.push_back(r);
  }
  std::vector<std::vector<int32_t>> alone;
  for (const auto& r : reqs) alone.push_back(Run(r)->samples[0].tokens);
  std::vector<std::shared_ptr<CollectSink>> sinks;
  for (const auto& r : reqs) {
    sinks.push_back(std::make_shared<CollectSink>());
    ASSERT_TRUE(engine_->Submit(r, sinks.back()).ok());
  }
  for (int i = 0; i < N; ++i) {
    sinks[i]->Wait();
    EXPECT_EQ(sinks[i]->samples[0].tokens, alone[i]) << "request " << i;
  }
  EXPECT_EQ(SlotsUsedAfterStep(), 0);
}

TEST_F(EngineTest, ParallelSamplesForkThePromptState) {
  StartEngine();
  GenerationRequest r = Greedy(RandomPrompt(100), 12);
  r.sampling.temperature = 1.0f;
  r.sampling.has_seed = true;
  r.sampling.seed = rng_();
  r.n = 3;
  auto out = Run(r);
  ASSERT_EQ(out->samples.size(), 3u);
  for (int i = 0; i < 3; ++i) {
    GenerationRequest one = r;
    one.n = 1;
    one.sampling.seed = r.sampling.seed + i;
    EXPECT_EQ(Run(one)->samples[0].tokens, out->samples[i].tokens) << "sample " << i;
  }
}

TEST_F(EngineTest, StopStringsEndTheTextAndAreNeverEmitted) {
  StartEngine();
  const auto prompt = RandomPrompt(40);
  auto full = Run(Greedy(prompt, 60));
  const std::string text = full->samples[0].text;
  ASSERT_GE(text.size(), 10u) << "model produced too little text to test stops";
  const std::string stop = text.substr(text.size() / 2, 3);
  GenerationRequest r = Greedy(prompt, 60);
  r.stop.stop_strings = {stop};
  auto cut = Run(r);
  EXPECT_EQ(cut->samples[0].text, text.substr(0, text.find(stop)));
  EXPECT_EQ(cut->samples[0].finish, FinishReason::kStop);
}

TEST_F(EngineTest, CancelReleasesTheSlot) {
  StartEngine();
  auto sink = std::make_shared<CollectSink>();
  auto h = engine_->Submit(Greedy(RandomPrompt(20), 4000), sink);
  ASSERT_TRUE(h.ok());
  while (engine_->Stats().requests_running == 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  engine_->Cancel(*h);
  sink->Wait();
  EXPECT_EQ(sink->samples[0].finish, FinishReason::kCancelled);
  EXPECT_LT(sink->samples[0].tokens.size(), 4000u);
  EXPECT_EQ(SlotsUsedAfterStep(), 0);
}

TEST_F(EngineTest, DeadlineEndsTheRequest) {
  StartEngine();
  GenerationRequest r = Greedy(RandomPrompt(20), 4000);
  r.deadline = Clock::now() + std::chrono::milliseconds(50);
  auto out = Run(r);
  EXPECT_EQ(out->samples[0].finish, FinishReason::kCancelled);
}

TEST_F(EngineTest, FullQueueIsResourceExhausted) {
  EngineOptions o;
  o.max_queue = 3;
  StartEngine(o);
  std::vector<std::shared_ptr<CollectSink>> sinks;
  int exhausted = 0;
  for (int i = 0; i < 40; ++i) {
    sinks.push_back(std::make_shared<CollectSink>());
    auto h = engine_->Submit(Greedy(RandomPrompt(10), 2000), sinks.back());
    if (!h.ok()) {
      EXPECT_EQ(h.status().code(), absl::StatusCode::kResourceExhausted);
      ++exhausted;
      sinks.pop_back();
    }
  }
  EXPECT_GT(exhausted, 0);
  engine_->Shutdown(0);  // cancels what is left
  for (auto& s : sinks) s->Wait();
}

TEST_F(EngineTest, InvalidRequestsNameTheField) {
  StartEngine();
  auto sink = std::make_shared<CollectSink>();
  auto expect_bad = [&](GenerationRequest r, const std::string& field) {
    auto h = engine_->Submit(std::move(r), sink);
    ASSERT_FALSE(h.ok()) << field;
    EXPECT_EQ(h.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(h.status().message().find(field), std::string::npos) << h.status();
  };
  expect_bad(Greedy({}, 5), "prompt");
  expect_bad(Greedy({1, backend_->config().vocab_size}, 5), "prompt");
  expect_bad(Greedy({1, 2}, 0), "max_tokens");
  expect_bad(Greedy({1, 2}, 1 << 30), "max_tokens");
  GenerationRequest r = Greedy({1, 2}, 5);
  r.n = 100;
  expect_bad(r, "n");
  r = Greedy({1, 2}, 5);
  r.sampling.top_p = 2;
  expect_bad(r, "top_p");
  r = Greedy({1, 2}, 5);
  r.stop.stop_strings = {""};
  expect_bad(r, "stop");
}

TEST_F(EngineTest, ShutdownDrainsThenRefuses) {
  StartEngine();
  auto sink = std::make_shared<CollectSink>();
  ASSERT_TRUE(engine_->Submit(Greedy(RandomPrompt(10), 5), sink).ok());
  engine_->Shutdown(10000);
  sink->Wait();
  EXPECT_EQ(sink->samples[0].finish, FinishReason::kLength);
  EXPECT_EQ(engine_->Submit(Greedy(RandomPrompt(10), 5), sink).status().code(), absl::StatusCode::kUnavailable);
}

// A backend that breaks for good after `ok_steps` forwards, as a GPU does
// after a sticky CUDA error (illegal address, ECC).
class BreakingBackend : public Backend {
 public:
  BreakingBackend(std::unique_ptr<Backend> inner, int ok_steps) : inner_(std::move(inner)), ok_steps_(ok_steps) {}
  std::string name() const override { return "breaking"; }
  const ModelConfig& config() const override { return inner_->config(); }
  StatePool& state_pool() override { return inner_->state_pool(); }
  absl::Status Forward(absl::Span<const SeqPiece> batch, ForwardOutput* out) override {
    if (steps_++ >= ok_steps_) broken_ = true;
    if (broken_) return absl::InternalError("device fault");
    return inner_->Forward(batch, out);
  }
  absl::Status Health() const override {
    return broken_ ? absl::InternalError("device fault") : absl::OkStatus();
  }

 private:
  std::unique_ptr<Backend> inner_;
  int ok_steps_;
  int steps_ = 0;
  bool broken_ = false;
};

TEST_F(EngineTest, ABrokenBackendFailsItsRequestsAndStopsAdmission) {
  backend_ = std::make_unique<BreakingBackend>(std::move(backend_), 3);
  StartEngine();
  EXPECT_TRUE(engine_->health().ok());
  auto running = Run(Greedy(RandomPrompt(10), 50));  // breaks at its 4th step
  EXPECT_EQ(running->error.code(), absl::StatusCode::kInternal) << running->error;
  EXPECT_FALSE(engine_->accepting());
  EXPECT_EQ(engine_->health().code(), absl::StatusCode::kInternal);
  auto sink = std::make_shared<CollectSink>();
  const auto refused = engine_->Submit(Greedy(RandomPrompt(10), 5), sink);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(refused.status().message().find("compute backend failed: device fault"), std::string::npos)
      << refused.status();
}

}  // namespace
}  // namespace gdnserve
