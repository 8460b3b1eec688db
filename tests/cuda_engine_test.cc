// The engine on the CUDA backend (skips without a GPU): tokens drawn on the
// device equal those drawn on the host from the same logits (greedy and
// seeded sampling with every cut and penalties), and a prefix-cache hit gives
// prompt logits and tokens bit-identical to a cold run (issue 10's promise
// on the GPU), whatever prefill chunk the cold run used.
#include <gtest/gtest.h>

#include <cstdlib>
#include <random>
#include <string>
#include <thread>

#include "engine/cuda_backend.h"
#include "engine/engine.h"
#include "engine/weights.h"
#include "tests/collect_sink.h"
#include "tests/cuda_test_util.h"
#include "tests/test_util.h"

namespace gdnserve {
namespace {

using Sink = testing::CollectSink;

class CudaEngineTest : public ::testing::TestWithParam<bool> {  // bf16?
 protected:
  void SetUp() override {
    if (!testing::HaveGpu()) GTEST_SKIP() << "no CUDA device";
    const char* dir = std::getenv("GDNSERVE_TEST_MODELS");
    if (dir == nullptr) GTEST_SKIP() << "GDNSERVE_TEST_MODELS is not set (ctest sets it)";
    const std::string model = std::string(dir) + "/tiny";
    auto w = LoadModelWeights(model);
    ASSERT_TRUE(w.ok()) << w.status();
    auto be = CreateCudaBackend(std::move(*w), {.num_slots = 8, .bf16 = GetParam()});
    ASSERT_TRUE(be.ok()) << be.status();
    backend_ = std::move(*be);
    auto tok = Tokenizer::Load(model + "/tokenizer.model");
    ASSERT_TRUE(tok.ok()) << tok.status();
    tokenizer_ = std::move(*tok);
    rng_.seed(testing::TestSeed() + GetParam());
  }
  void Start(EngineOptions o) {
    engine_.reset();  // one engine at a time drives the backend
    engine_ = std::make_unique<Engine>(backend_.get(), tokenizer_.get(), o);
  }
  std::vector<int32_t> Random(int n) {
    std::uniform_int_distribution<int32_t> d(3, backend_->config().vocab_size - 1);
    std::vector<int32_t> p(n);
    for (auto& t : p) t = d(rng_);
    return p;
  }
  // Submits all, waits for all.
  std::vector<std::shared_ptr<Sink>> RunAll(std::vector<GenerationRequest> reqs) {
    std::vector<std::shared_ptr<Sink>> sinks;
    for (auto& r : reqs) {
      sinks.push_back(std::make_shared<Sink>());
      auto h = engine_->Submit(std::move(r), sinks.back());
      EXPECT_TRUE(h.ok()) << h.status();
    }
    for (auto& s : sinks) s->Wait();
    return sinks;
  }

  std::unique_ptr<Backend> backend_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<Engine> engine_;
  std::mt19937_64 rng_;
};

// Concurrent requests (greedy, seeded sampling with cuts and penalties, n=2)
// through one engine drawing on the device and one drawing on the host.
TEST_P(CudaEngineTest, DeviceDrawsEqualHostDraws) {
  std::vector<GenerationRequest> reqs;
  for (int i = 0; i < 6; ++i) {
    GenerationRequest r;
    r.prompt = Random(5 + 23 * i);
    r.stop.max_tokens = 24;
    r.stop.ignore_eos = true;
    SamplingParams& s = r.sampling;
    s.has_seed = true;
    s.seed = 1000 + i;
    switch (i) {
      case 0: s.temperature = 0; break;
      case 1: s.temperature = 0.9f; break;
      case 2: s.top_k = 12, s.temperature = 0.7f; break;
      case 3: s.top_p = 0.8f, s.min_p = 0.02f; break;
      case 4: s.repetition_penalty = 1.2f, s.presence_penalty = 0.3f, s.frequency_penalty = 0.2f; break;
      default: s.top_k = 30, s.top_p = 0.9f, r.n = 2; break;
    }
    reqs.push_back(r);
  }
  EngineOptions device;
  device.step_token_budget = 256;
  device.max_prefill_chunk = 64;
  EngineOptions host = device;
  host.device_sampling = false;
  Start(device);
  const auto a = RunAll(reqs);
  Start(host);
  const auto b = RunAll(reqs);
  for (size_t i = 0; i < reqs.size(); ++i) {
    ASSERT_TRUE(a[i]->error.ok()) << a[i]->error;
    ASSERT_TRUE(b[i]->error.ok()) << b[i]->error;
    ASSERT_EQ(a[i]->samples.size(), b[i]->samples.size()) << "request " << i;
    for (const auto& [index, sample] : a[i]->samples) {
      EXPECT_EQ(sample.tokens, b[i]->samples[index].tokens) << "request " << i << " sample " << index;
    }
    EXPECT_EQ(a[i]->tokens().size(), 24u);
  }
}

TEST_P(CudaEngineTest, PrefixCacheHitIsBitIdenticalToAColdRun) {
  const auto system = Random(300);
  auto prompt = system;
  const auto tail = Random(50);
  prompt.insert(prompt.end(), tail.begin(), tail.end());
  auto greedy = [](std::vector<int32_t> p) {
    GenerationRequest r;
    r.prompt = std::move(p);
    r.sampling.temperature = 0;
    r.stop.max_tokens = 8;
    r.stop.ignore_eos = true;
    r.want_prompt_logits = true;
    return r;
  };
  EngineOptions o;
  o.step_token_budget = 256;
  o.max_prefill_chunk = 128;
  o.prefix_cache_bytes = 256 << 20;
  o.prefix_cache_interval = 64;
  Start(o);
  auto first = system;
  first.push_back(7);
  ASSERT_TRUE(RunAll({greedy(first)})[0]->error.ok());
  const auto hit = RunAll({greedy(prompt)})[0];
  ASSERT_TRUE(hit->error.ok());
  EXPECT_EQ(hit->cached, 256);
  for (const int cold_chunk : {64, 512}) {
    EngineOptions c = o;
    c.prefix_cache_bytes = 0;
    c.max_prefill_chunk = cold_chunk;
    c.step_token_budget = std::max(256, cold_chunk);
    Start(c);
    const auto cold = RunAll({greedy(prompt)})[0];
    ASSERT_TRUE(cold->error.ok());
    EXPECT_EQ(cold->cached, 0);
    ASSERT_FALSE(cold->logits.empty());
    double worst = 0;
    for (size_t i = 0; i < cold->logits.size(); ++i) {
      worst = std::max(worst, static_cast<double>(std::abs(cold->logits[i] - hit->logits[i])));
    }
    EXPECT_TRUE(cold->logits == hit->logits) << "cold chunk " << cold_chunk << ": largest difference " << worst;
    EXPECT_EQ(cold->tokens(), hit->tokens()) << "cold chunk " << cold_chunk;
  }
}

INSTANTIATE_TEST_SUITE_P(Types, CudaEngineTest, ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool>& i) { return i.param ? "bf16" : "f32"; });

}  // namespace
}  // namespace gdnserve
