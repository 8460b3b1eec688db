// A RequestSink for engine tests that keeps a request's whole output: each
// sample's tokens, text and finish reason, the prompt logits, the final
// status and usage. Wait() blocks until the final output arrives.
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "engine/engine.h"

namespace gdnserve::testing {

class CollectSink : public RequestSink {
 public:
  struct Sample {
    std::vector<int32_t> tokens;
    std::string text;
    FinishReason finish = FinishReason::kNone;
  };

  void OnOutput(RequestOutput o) override {
    std::lock_guard<std::mutex> lock(mu_);
    ASSERT_FALSE(finished) << "output after the final one";
    for (SampleDelta& d : o.samples) {
      Sample& s = samples[d.index];
      s.tokens.insert(s.tokens.end(), d.token_ids.begin(), d.token_ids.end());
      s.text += d.text;
      if (d.finish != FinishReason::kNone) s.finish = d.finish;
    }
    if (!o.prompt_logits.empty()) logits = std::move(o.prompt_logits);
    ++deliveries;
    if (o.finished) {
      finished = true;
      error = o.error;
      prompt_tokens = o.prompt_tokens;
      cached = o.cached_prompt_tokens;
      completion_tokens = o.completion_tokens;
      cv_.notify_all();
    }
  }
  void Wait(std::chrono::seconds limit = std::chrono::seconds(120)) {
    std::unique_lock<std::mutex> lock(mu_);
    ASSERT_TRUE(cv_.wait_for(lock, limit, [this] { return finished; })) << "request never finished";
  }
  // Sample 0's tokens (read after Wait).
  const std::vector<int32_t>& tokens() { return samples[0].tokens; }

  std::map<int, Sample> samples;
  std::vector<float> logits;  // the prompt's last logits, when asked for
  bool finished = false;
  absl::Status error;
  int deliveries = 0;
  int prompt_tokens = 0;
  int cached = 0;
  int completion_tokens = 0;

 private:
  std::mutex mu_;
  std::condition_variable cv_;
};

}  // namespace gdnserve::testing
