// End-to-end tests of gdnserve under load and abuse: every invalid input is
// INVALID_ARGUMENT naming its field while other streams carry on, 1000 mixed
// requests (streams, unary, n > 1, cancels, deadlines, invalid ones) leave no
// slot behind, and a full queue answers RESOURCE_EXHAUSTED at once.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <functional>
#include <thread>

#include "tests/e2e/client_util.h"

namespace gdnserve::e2e {
namespace {

using ::testing::HasSubstr;

constexpr int kMaxPromptTokens = 256;
constexpr int kMaxTokensCap = 100000;

std::unique_ptr<ServerProcess> StartOrDie(const std::vector<std::string>& args) {
  std::string error;
  std::unique_ptr<ServerProcess> s = ServerProcess::Start(args, &error);
  EXPECT_NE(s, nullptr) << error;
  return s;
}

std::vector<std::string> DefaultArgs() {
  return {"--threads",           "1",
          "--max-seqs",          "16",
          "--max-prompt-tokens", std::to_string(kMaxPromptTokens),
          "--max-tokens-cap",    std::to_string(kMaxTokensCap),
          "--max-queue",         "512"};
}

struct BadCase {
  const char* field;  // must appear in the error message
  std::function<void(pb::GenerateRequest&)> mutate;
};

std::vector<BadCase> BadCases() {
  auto ids = [](std::vector<int32_t> v) {
    return [v](pb::GenerateRequest& r) { r.mutable_token_ids()->mutable_ids()->Assign(v.begin(), v.end()); };
  };
  return {
      {"prompt", [](pb::GenerateRequest& r) { r.clear_prompt(); }},
      {"prompt.text", [](pb::GenerateRequest& r) { r.set_text(""); }},
      {"prompt.token_ids", ids({})},
      {"prompt.token_ids", ids({5, 512})},
      {"prompt.token_ids", ids({-1})},
      {"max-prompt-tokens", ids(std::vector<int32_t>(kMaxPromptTokens + 1, 5))},
      {"stop.max_tokens", [](pb::GenerateRequest& r) { r.mutable_stop()->set_max_tokens(0); }},
      {"stop.max_tokens", [](pb::GenerateRequest& r) { r.mutable_stop()->set_max_tokens(-3); }},
      {"stop.max_tokens", [](pb::GenerateRequest& r) { r.mutable_stop()->set_max_tokens(kMaxTokensCap + 1); }},
      {"n", [](pb::GenerateRequest& r) { r.set_n(-1); }},
      {"n", [](pb::GenerateRequest& r) { r.set_n(17); }},
      {"sampling.temperature", [](pb::GenerateRequest& r) { r.mutable_sampling()->set_temperature(-0.5f); }},
      {"sampling.temperature", [](pb::GenerateRequest& r) { r.mutable_sampling()->set_temperature(NAN); }},
      {"sampling.top_k", [](pb::GenerateRequest& r) { r.mutable_sampling()->set_top_k(-2); }},
      {"sampling.top_k", [](pb::GenerateRequest& r) { r.mutable_sampling()->set_top_k(513); }},
      {"sampling.top_p", [](pb::GenerateRequest& r) { r.mutable_sampling()->set_top_p(0.0f); }},
      {"sampling.top_p", [](pb::GenerateRequest& r) { r.mutable_sampling()->set_top_p(1.5f); }},
      {"sampling.min_p", [](pb::GenerateRequest& r) { r.mutable_sampling()->set_min_p(-0.1f); }},
      {"sampling.min_p", [](pb::GenerateRequest& r) { r.mutable_sampling()->set_min_p(1.1f); }},
      {"sampling.repetition_penalty",
       [](pb::GenerateRequest& r) { r.mutable_sampling()->set_repetition_penalty(0.0f); }},
      {"sampling.presence_penalty", [](pb::GenerateRequest& r) { r.mutable_sampling()->set_presence_penalty(2.5f); }},
      {"sampling.frequency_penalty",
       [](pb::GenerateRequest& r) { r.mutable_sampling()->set_frequency_penalty(-2.5f); }},
      {"sampling.logprobs", [](pb::GenerateRequest& r) { r.mutable_sampling()->set_logprobs(21); }},
      {"sampling.logprobs", [](pb::GenerateRequest& r) { r.mutable_sampling()->set_logprobs(-1); }},
      {"stop.stop[1]",
       [](pb::GenerateRequest& r) {
         r.mutable_stop()->add_stop("ok");
         r.mutable_stop()->add_stop("");
       }},
      {"stop.stop[0]", [](pb::GenerateRequest& r) { r.mutable_stop()->add_stop(std::string(300, 'x')); }},
      {"stop.stop",
       [](pb::GenerateRequest& r) {
         for (int i = 0; i < 17; ++i) r.mutable_stop()->add_stop(std::string(1 + i, 's'));
       }},
      {"stop.stop_token_ids", [](pb::GenerateRequest& r) { r.mutable_stop()->add_stop_token_ids(512); }},
      {"request_id", [](pb::GenerateRequest& r) { r.set_request_id(std::string(300, 'r')); }},
  };
}

TEST(GrpcLoad, EveryInvalidInputNamesItsFieldWhileOthersKeepStreaming) {
  ClientThreads bg;
  std::unique_ptr<ServerProcess> server = StartOrDie(DefaultArgs());
  ASSERT_NE(server, nullptr);
  // A stream that runs through the whole barrage of bad requests.
  CallResult background;
  bg.Add([&] { background = RunStream(server->stub(), GreedyRequest("keep going", 3000)); });

  for (const BadCase& c : BadCases()) {
    pb::GenerateRequest req = GreedyRequest("a valid prompt", 8);
    c.mutate(req);
    const CallResult s = RunStream(server->stub(), req);
    EXPECT_EQ(s.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << c.field << ": " << s.status.error_message();
    EXPECT_THAT(s.status.error_message(), HasSubstr(c.field));
    EXPECT_EQ(s.messages, 0) << c.field;
    const CallResult u = RunComplete(server->stub(), req);
    EXPECT_EQ(u.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << c.field << ": " << u.status.error_message();
    EXPECT_THAT(u.status.error_message(), HasSubstr(c.field));
  }
  // Meanwhile a valid request is served as usual.
  const CallResult ok = RunComplete(server->stub(), GreedyRequest("still serving", 8));
  EXPECT_TRUE(ok.status.ok()) << ok.status.error_message();
  bg.Join();
  ASSERT_TRUE(background.status.ok()) << background.status.error_message();
  EXPECT_EQ(background.samples.at(0).tokens.size(), 3000u);
  EXPECT_EQ(background.samples.at(0).finish, pb::FINISH_REASON_LENGTH);
  EXPECT_TRUE(WaitIdle(server->stub(), milliseconds(2000)).has_value());
}

// One of eight request kinds per index; returns whether the server accepted
// the request into the engine (as far as the client can tell) and checks
// the outcome that kind must have.
bool RunMixed(pb::Generation::Stub& stub, int i) {
  pb::GenerateRequest req = GreedyRequest("mixed " + std::to_string(i), 8);
  switch (i % 8) {
    case 0: {  // greedy stream
      const CallResult r = RunStream(stub, req);
      EXPECT_TRUE(r.status.ok()) << r.status.error_message();
      return true;
    }
    case 1: {  // sampled unary
      req.mutable_sampling()->set_temperature(0.8f);
      req.mutable_sampling()->set_top_p(0.9f);
      req.mutable_sampling()->set_top_k(50);
      req.mutable_sampling()->set_seed(i);
      req.mutable_sampling()->set_repetition_penalty(1.2f);
      const CallResult r = RunComplete(stub, req);
      EXPECT_TRUE(r.status.ok()) << r.status.error_message();
      return true;
    }
    case 2: {  // n > 1 stream
      req.set_n(3);
      req.mutable_sampling()->set_temperature(1.0f);
      const CallResult r = RunStream(stub, req);
      EXPECT_TRUE(r.status.ok()) << r.status.error_message();
      EXPECT_EQ(r.samples.size(), 3u);
      return true;
    }
    case 3: {  // cancelled mid-stream
      req.mutable_stop()->set_max_tokens(kMaxTokensCap);
      StreamOptions o;
      o.cancel_after_messages = 1;
      const CallResult r = RunStream(stub, req, o);
      EXPECT_EQ(r.status.error_code(), grpc::StatusCode::CANCELLED);
      return true;
    }
    case 4: {  // unary deadline (may expire before the server sees it)
      req.mutable_stop()->set_max_tokens(kMaxTokensCap);
      const CallResult r = RunComplete(stub, req, milliseconds(20));
      EXPECT_EQ(r.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
      return false;
    }
    case 5: {  // invalid
      req.mutable_sampling()->set_top_p(2.0f);
      const CallResult r = RunStream(stub, req);
      EXPECT_EQ(r.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
      return false;
    }
    case 6: {  // stop strings, stream
      req.mutable_stop()->add_stop("e");
      req.mutable_stop()->set_max_tokens(16);
      CallResult r = RunStream(stub, req);
      EXPECT_TRUE(r.status.ok()) << r.status.error_message();
      EXPECT_THAT(r.samples[0].text, ::testing::Not(HasSubstr("e")));
      return true;
    }
    default: {  // token-id prompt, logprobs, unary
      for (int32_t id : {1, 100, 200, 300}) req.mutable_token_ids()->add_ids(id);
      req.mutable_sampling()->set_logprobs(3);
      CallResult r = RunComplete(stub, req);
      EXPECT_TRUE(r.status.ok()) << r.status.error_message();
      EXPECT_EQ(r.samples[0].logprobs.size(), r.samples[0].tokens.size());
      return true;
    }
  }
}

TEST(GrpcLoad, ThousandMixedRequestsLeakNoSlot) {
  std::unique_ptr<ServerProcess> server = StartOrDie(DefaultArgs());
  ASSERT_NE(server, nullptr);
  pb::ModelInfo before;
  ASSERT_TRUE(GetInfo(server->stub(), &before).ok());
  constexpr int kRequests = 1000, kClients = 8;
  std::atomic<int> next{0}, accepted{0};
  std::vector<std::thread> clients;
  for (int c = 0; c < kClients; ++c) {
    clients.emplace_back([&] {
      for (int i = next++; i < kRequests; i = next++) {
        if (RunMixed(server->stub(), i)) ++accepted;
      }
    });
  }
  for (std::thread& t : clients) t.join();
  const std::optional<milliseconds> idle = WaitIdle(server->stub(), milliseconds(2000));
  ASSERT_TRUE(idle.has_value()) << "slots still in use after 1000 requests";
  pb::ModelInfo after;
  ASSERT_TRUE(GetInfo(server->stub(), &after).ok());
  EXPECT_EQ(after.slots_used(), 0);
  const int64_t finished = after.requests_finished() - before.requests_finished();
  // Every accepted request finished; deadline ones may or may not have reached the engine.
  EXPECT_GE(finished, accepted.load());
  EXPECT_LE(finished, accepted.load() + kRequests / 8);
}

TEST(GrpcLoad, BeyondTheQueueBoundIsResourceExhaustedQuickly) {
  // One slot, a queue of two: one running request and two waiting fill it.
  std::vector<std::string> args = DefaultArgs();
  args.insert(args.end(), {"--max-seqs", "1", "--max-queue", "2"});
  std::vector<std::unique_ptr<grpc::ClientContext>> ctxs;
  for (int i = 0; i < 3; ++i) ctxs.push_back(std::make_unique<grpc::ClientContext>());
  std::vector<grpc::Status> held(3);
  ClientThreads holders;
  std::unique_ptr<ServerProcess> server = StartOrDie(args);
  ASSERT_NE(server, nullptr);

  for (int i = 0; i < 3; ++i) {
    holders.Add([&, i] {
      pb::CompleteResponse resp;
      held[i] =
          server->stub().Complete(ctxs[i].get(), GreedyRequest("hold " + std::to_string(i), kMaxTokensCap), &resp);
    });
    // In order: the first takes the slot, the next two queue.
    ASSERT_TRUE(WaitFor(
        server->stub(),
        [i](const pb::ModelInfo& info) { return info.requests_running() == 1 && info.requests_waiting() == i; }))
        << "request " << i << " not running/queued";
  }

  for (int i = 0; i < 5; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    const CallResult r = i % 2 ? RunComplete(server->stub(), GreedyRequest("one too many", 8))
                               : RunStream(server->stub(), GreedyRequest("one too many", 8));
    const auto ms = std::chrono::duration_cast<milliseconds>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_EQ(r.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << r.status.error_message();
    EXPECT_THAT(r.status.error_message(), HasSubstr("max-queue"));
    EXPECT_LT(ms, 250) << "RESOURCE_EXHAUSTED should not wait for a slot";
  }
  for (auto& c : ctxs) c->TryCancel();
  holders.Join();
  for (const grpc::Status& s : held) EXPECT_EQ(s.error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_TRUE(WaitIdle(server->stub(), milliseconds(1000)).has_value());
}

}  // namespace
}  // namespace gdnserve::e2e
