// A gtest fixture shared by the engine-level tests: the generated "tiny" test
// model on a single-threaded CPU backend, its tokenizer, a seeded RNG and
// helpers for random prompts and greedy requests.
#pragma once

#include <gtest/gtest.h>

#include <cstdlib>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "engine/cpu_backend.h"
#include "engine/engine.h"
#include "tests/test_util.h"

namespace gdnserve::testing {

class TinyEngineFixture : public ::testing::Test {
 protected:
  explicit TinyEngineFixture(int num_slots) : num_slots_(num_slots) {}

  void SetUp() override {
    const char* dir = std::getenv("GDNSERVE_TEST_MODELS");
    if (dir == nullptr) GTEST_SKIP() << "GDNSERVE_TEST_MODELS is not set (ctest sets it)";
    const std::string model = std::string(dir) + "/tiny";
    auto w = LoadModelWeights(model);
    ASSERT_TRUE(w.ok()) << w.status();
    auto be = CreateCpuBackend(std::move(*w), {.num_slots = num_slots_, .num_threads = 1});
    ASSERT_TRUE(be.ok());
    backend_ = std::move(*be);
    auto tok = Tokenizer::Load(model + "/tokenizer.model");
    ASSERT_TRUE(tok.ok()) << tok.status();
    tokenizer_ = std::move(*tok);
    rng_.seed(TestSeed());
  }

  // n random token ids past the special ones (0-2).
  std::vector<int32_t> RandomPrompt(int n) {
    std::uniform_int_distribution<int32_t> d(3, backend_->config().vocab_size - 1);
    std::vector<int32_t> p(n);
    for (auto& t : p) t = d(rng_);
    return p;
  }

  // Greedy, exactly max_tokens tokens (EOS ignored).
  static GenerationRequest Greedy(std::vector<int32_t> prompt, int max_tokens) {
    GenerationRequest r;
    r.prompt = std::move(prompt);
    r.sampling.temperature = 0;
    r.stop.max_tokens = max_tokens;
    r.stop.ignore_eos = true;
    return r;
  }

  int num_slots_;
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<Engine> engine_;
  std::mt19937_64 rng_;
};

}  // namespace gdnserve::testing
