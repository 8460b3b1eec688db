// Client-side helpers for the end-to-end tests: build requests, run a
// streaming Generate or a unary Complete, and collect the result per sample.
#pragma once

#include <chrono>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "tests/e2e/server_process.h"

namespace gdnserve::e2e {

struct SampleOut {
  std::vector<int32_t> tokens;
  std::string text;
  std::vector<std::string> deltas;  // streamed text pieces, in order
  std::vector<pb::TokenLogprob> logprobs;
  pb::FinishReason finish = pb::FINISH_REASON_UNSPECIFIED;
  int finish_messages = 0;  // how many messages carried a finish reason (must be 1)
};

struct CallResult {
  grpc::Status status;
  std::string request_id;
  std::map<int, SampleOut> samples;
  int messages = 0;
  bool has_usage = false;
  int usage_messages = 0;
  pb::Usage usage;
};

// Greedy, ignore_eos (so lengths are exact), max_tokens as given.
pb::GenerateRequest GreedyRequest(const std::string& text, int max_tokens);

struct StreamOptions {
  milliseconds deadline{30000};
  int cancel_after_messages = -1;  // TryCancel once this many messages arrived
};
CallResult RunStream(pb::Generation::Stub& stub, const pb::GenerateRequest& request, const StreamOptions& options = {});
CallResult RunComplete(pb::Generation::Stub& stub, const pb::GenerateRequest& request,
                       milliseconds deadline = milliseconds(30000));

// Client threads joined on destruction, so that a failed ASSERT (which
// returns early) cannot destroy a joinable std::thread. Declare it before
// the ServerProcess: the server dies first and the clients' calls then end.
class ClientThreads {
 public:
  ~ClientThreads() { Join(); }
  template <typename F>
  void Add(F&& f) {
    threads_.emplace_back(std::forward<F>(f));
  }
  void Join() {
    for (std::thread& t : threads_) {
      if (t.joinable()) t.join();
    }
  }

 private:
  std::vector<std::thread> threads_;
};

// Polls GetModelInfo until pred(info) holds; false after `timeout`.
template <typename Pred>
bool WaitFor(pb::Generation::Stub& stub, Pred pred, milliseconds timeout = milliseconds(5000)) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    pb::ModelInfo info;
    if (GetInfo(stub, &info).ok() && pred(info)) return true;
    std::this_thread::sleep_for(milliseconds(2));
  }
  return false;
}

}  // namespace gdnserve::e2e
