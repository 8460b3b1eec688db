// End-to-end tests of gdnserve's gRPC API against one shared server process
// (the real binary, a generated tiny model, loopback): streaming and unary
// agreement, tokenizer round trip, model info, batching equivalence,
// cancellation, deadlines, disconnects, slot accounting under load, input
// validation, stop strings and n > 1.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <thread>

#include "absl/strings/str_cat.h"
#include "tests/e2e/client_util.h"

namespace gdnserve::e2e {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

constexpr int kSlots = 64;
constexpr int kMaxPromptTokens = 256;
constexpr int kMaxTokensCap = 100000;  // long enough that a "long" request outlives any test step
constexpr int kLong = kMaxTokensCap;

class GrpcE2E : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    std::string error;
    // One model thread: the tests' own client threads share the 2 cores.
    server_ = ServerProcess::Start({"--threads", "1", "--max-seqs", std::to_string(kSlots), "--max-prompt-tokens",
                                    std::to_string(kMaxPromptTokens), "--max-tokens-cap", std::to_string(kMaxTokensCap),
                                    "--max-queue", "512"},
                                   &error)
                  .release();
    if (server_ == nullptr) start_error_ = new std::string(error);
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
  }
  void SetUp() override { ASSERT_NE(server_, nullptr) << *start_error_; }
  void TearDown() override {
    // Every test leaves the server idle: nothing leaks into the next one.
    if (server_ != nullptr) {
      EXPECT_TRUE(WaitIdle(stub(), milliseconds(2000)).has_value()) << "slots still in use after the test";
    }
  }
  pb::Generation::Stub& stub() { return server_->stub(); }

  static ServerProcess* server_;
  static std::string* start_error_;
};
ServerProcess* GrpcE2E::server_ = nullptr;
std::string* GrpcE2E::start_error_ = nullptr;

// A prompt per index, of varied length (prefills of different sizes share steps).
std::string PromptFor(int i) {
  std::string p = absl::StrCat("request ", i, ":");
  for (int k = 0; k < i % 7; ++k) absl::StrAppend(&p, " the quick brown fox");
  return p;
}

TEST_F(GrpcE2E, StreamedDeltasConcatenateToCompleteText) {
  pb::GenerateRequest req = GreedyRequest("The quick brown fox jumps", 40);
  req.set_request_id("e2e-stream-1");
  const CallResult s = RunStream(stub(), req);
  const CallResult c = RunComplete(stub(), req);
  ASSERT_TRUE(s.status.ok()) << s.status.error_message();
  ASSERT_TRUE(c.status.ok()) << c.status.error_message();
  EXPECT_EQ(s.request_id, "e2e-stream-1");
  EXPECT_EQ(c.request_id, "e2e-stream-1");
  ASSERT_EQ(s.samples.size(), 1u);
  ASSERT_EQ(c.samples.size(), 1u);
  const SampleOut& st = s.samples.at(0);
  const SampleOut& ct = c.samples.at(0);
  EXPECT_EQ(st.tokens.size(), 40u);
  EXPECT_EQ(st.tokens, ct.tokens);
  EXPECT_EQ(st.text, ct.text);
  EXPECT_FALSE(st.text.empty());
  EXPECT_EQ(st.finish, pb::FINISH_REASON_LENGTH);
  EXPECT_EQ(st.finish_messages, 1);
  EXPECT_EQ(ct.finish, pb::FINISH_REASON_LENGTH);
  EXPECT_EQ(s.usage_messages, 1) << "usage belongs on the last message only";
  EXPECT_EQ(s.usage.completion_tokens(), 40);
  EXPECT_EQ(c.usage.completion_tokens(), 40);
  EXPECT_GT(s.usage.prompt_tokens(), 1);
  EXPECT_EQ(s.usage.prompt_tokens(), c.usage.prompt_tokens());

  // Without a request id the server makes one.
  req.clear_request_id();
  EXPECT_THAT(RunStream(stub(), req).request_id, StartsWith("gdn-"));
}

TEST_F(GrpcE2E, TokenizeDetokenizeRoundTrip) {
  const std::string text = "hello world, this is a round trip";
  pb::TokenizeRequest treq;
  treq.set_text(text);
  treq.set_add_bos(true);
  pb::TokenizeResponse tresp;
  grpc::ClientContext ctx1;
  ASSERT_TRUE(stub().Tokenize(&ctx1, treq, &tresp).ok());
  pb::ModelInfo info;
  ASSERT_TRUE(GetInfo(stub(), &info).ok());
  ASSERT_GT(tresp.token_ids_size(), 2);
  EXPECT_EQ(tresp.token_ids(0), info.bos_token_id());
  EXPECT_EQ(tresp.pieces_size(), tresp.token_ids_size());

  pb::DetokenizeRequest dreq;
  *dreq.mutable_token_ids() = tresp.token_ids();
  pb::DetokenizeResponse dresp;
  grpc::ClientContext ctx2;
  ASSERT_TRUE(stub().Detokenize(&ctx2, dreq, &dresp).ok());
  EXPECT_EQ(dresp.text(), text);

  dreq.add_token_ids(info.vocab_size());
  grpc::ClientContext ctx3;
  const grpc::Status bad = stub().Detokenize(&ctx3, dreq, &dresp);
  EXPECT_EQ(bad.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(bad.error_message(), HasSubstr("token_ids"));
}

TEST_F(GrpcE2E, ModelInfoAndHealth) {
  pb::ModelInfo info;
  ASSERT_TRUE(GetInfo(stub(), &info).ok());
  EXPECT_EQ(info.model_name(), "tiny");
  EXPECT_EQ(info.architecture(), "gdn2");
  EXPECT_EQ(info.device(), "cpu");
  EXPECT_EQ(info.vocab_size(), 512);
  EXPECT_THAT(info.config_json(), HasSubstr("\"hidden_size\":64"));
  EXPECT_EQ(info.max_seqs(), kSlots);
  EXPECT_EQ(info.slots_used(), 0);
  EXPECT_EQ(info.max_prompt_tokens(), kMaxPromptTokens);
  EXPECT_EQ(info.max_tokens_cap(), kMaxTokensCap);
  EXPECT_EQ(info.max_queue(), 512);
  EXPECT_GT(info.state_bytes_per_sequence(), 0);

  EXPECT_EQ(HealthStatus(server_->NewChannel(), ""), 1);
  EXPECT_EQ(HealthStatus(server_->NewChannel(), "gdnserve.v1.Generation"), 1);
}

// Tokens equal to the request run alone; a divergence is accepted only at a
// near-tie of the solo run (its top two logprobs within 1e-4), where batched
// floating-point sums may legitimately pick the other token.
void ExpectSameGeneration(const SampleOut& solo, const SampleOut& batched, const std::string& what) {
  ASSERT_EQ(solo.tokens.size(), batched.tokens.size()) << what;
  ASSERT_EQ(solo.logprobs.size(), solo.tokens.size()) << what;
  ASSERT_EQ(batched.logprobs.size(), batched.tokens.size()) << what;
  for (size_t i = 0; i < solo.tokens.size(); ++i) {
    if (solo.tokens[i] == batched.tokens[i]) {
      EXPECT_NEAR(solo.logprobs[i].logprob(), batched.logprobs[i].logprob(), 1e-4) << what << " token " << i;
      continue;
    }
    const auto& top = solo.logprobs[i].top();
    ASSERT_GE(top.size(), 2) << what;
    EXPECT_LT(std::abs(top[0].logprob() - top[1].logprob()), 1e-4)
        << what << ": token " << i << " differs (" << solo.tokens[i] << " alone, " << batched.tokens[i]
        << " batched) without a near-tie";
    std::fprintf(stderr, "%s: diverged at a near-tie at token %zu\n", what.c_str(), i);
    return;
  }
  EXPECT_EQ(solo.text, batched.text) << what;
}

TEST_F(GrpcE2E, SixtyFourConcurrentGreedyStreamsEqualSoloRuns) {
  constexpr int kStreams = 64, kTokens = 128;
  std::vector<pb::GenerateRequest> reqs;
  std::vector<CallResult> solo;
  for (int i = 0; i < kStreams; ++i) {
    pb::GenerateRequest r = GreedyRequest(PromptFor(i), kTokens);
    r.mutable_sampling()->set_logprobs(2);
    reqs.push_back(r);
    solo.push_back(RunComplete(stub(), r));
    ASSERT_TRUE(solo.back().status.ok()) << solo.back().status.error_message();
  }
  std::vector<CallResult> batched(kStreams);
  std::atomic<int> done{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < kStreams; ++i) {
    threads.emplace_back([&, i] {
      batched[i] = RunStream(stub(), reqs[i]);
      ++done;
    });
  }
  // The point is that they share engine steps: watch how many run at once.
  int max_running = 0;
  while (done.load() < kStreams) {
    pb::ModelInfo info;
    if (GetInfo(stub(), &info).ok()) max_running = std::max(max_running, info.requests_running());
    std::this_thread::sleep_for(milliseconds(1));
  }
  for (std::thread& t : threads) t.join();
  std::fprintf(stderr, "at most %d of %d streams ran in one batch\n", max_running, kStreams);
  EXPECT_GE(max_running, 8) << "the streams barely overlapped; the test did not exercise batching";
  for (int i = 0; i < kStreams; ++i) {
    ASSERT_TRUE(batched[i].status.ok()) << batched[i].status.error_message();
    ExpectSameGeneration(solo[i].samples.at(0), batched[i].samples.at(0), "stream " + std::to_string(i));
  }
}

TEST_F(GrpcE2E, CancelMidStreamFreesTheSlot) {
  StreamOptions opts;
  opts.cancel_after_messages = 3;
  const CallResult r = RunStream(stub(), GreedyRequest("cancel me", kLong), opts);
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::CANCELLED);
  const std::optional<milliseconds> idle = WaitIdle(stub(), milliseconds(1000));
  ASSERT_TRUE(idle.has_value()) << "slot not released after cancel";
  std::fprintf(stderr, "slot free %lld ms after cancel\n", static_cast<long long>(idle->count()));
}

TEST_F(GrpcE2E, DeadlineFreesTheSlot) {
  StreamOptions opts;
  opts.deadline = milliseconds(150);
  const CallResult s = RunStream(stub(), GreedyRequest("deadline stream", kLong), opts);
  EXPECT_EQ(s.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_GT(s.messages, 0) << "the request should have been streaming before its deadline";
  ASSERT_TRUE(WaitIdle(stub(), milliseconds(1000)).has_value()) << "slot not released after a stream's deadline";

  const CallResult c = RunComplete(stub(), GreedyRequest("deadline unary", kLong), milliseconds(150));
  EXPECT_EQ(c.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  ASSERT_TRUE(WaitIdle(stub(), milliseconds(1000)).has_value()) << "slot not released after a unary deadline";
}

TEST_F(GrpcE2E, AbruptClientDisconnectFreesTheSlot) {
  pb::ModelInfo before;
  ASSERT_TRUE(GetInfo(stub(), &before).ok());
  // A separate process streams a long request, reads one message and dies
  // with _exit: no cancel, no HTTP/2 goodbye, just a closed socket.
  const char* client = std::getenv("GDNSERVE_E2E_ABRUPT_CLIENT");
  ASSERT_NE(client, nullptr);
  const pid_t pid = Spawn(client, {server_->address(), std::to_string(kLong)}, "/dev/null");
  ASSERT_GT(pid, 0);
  const std::optional<int> code = WaitExit(pid, milliseconds(10000));
  ASSERT_EQ(code, 0) << "the abrupt client did not get its first message";
  // The request had ~100k tokens to go (seconds of work): being idle within
  // a second means the disconnect cancelled it.
  const std::optional<milliseconds> idle = WaitIdle(stub(), milliseconds(1000));
  ASSERT_TRUE(idle.has_value()) << "slot not released after the client vanished";
  pb::ModelInfo after;
  ASSERT_TRUE(GetInfo(stub(), &after).ok());
  EXPECT_EQ(after.requests_finished(), before.requests_finished() + 1);
  std::fprintf(stderr, "slot free %lld ms after the client died\n", static_cast<long long>(idle->count()));
}

TEST_F(GrpcE2E, StopStringsAreNeverEmitted) {
  // A stop string from the middle of a greedy text: two printable ASCII
  // characters (the models are random, so look through a few prompts).
  std::string prompt, text, stop;
  CallResult full;
  for (const char* p : {"Once upon a time", "The weather today", "In the beginning", "A B C D"}) {
    full = RunComplete(stub(), GreedyRequest(p, 64));
    ASSERT_TRUE(full.status.ok());
    prompt = p;
    text = full.samples.at(0).text;
    for (size_t i = 1; i + 2 <= text.size() && stop.empty(); ++i) {
      if (std::isgraph(static_cast<unsigned char>(text[i])) && std::isgraph(static_cast<unsigned char>(text[i + 1]))) {
        stop = text.substr(i, 2);
      }
    }
    if (!stop.empty()) break;
  }
  ASSERT_FALSE(stop.empty()) << "no printable ASCII pair in: " << text;
  const std::string expected = text.substr(0, text.find(stop));

  pb::GenerateRequest req = GreedyRequest(prompt, 64);
  req.mutable_stop()->add_stop(stop);
  req.mutable_stop()->add_stop("\xE2\x82\xAC never");  // another, never matched
  const CallResult s = RunStream(stub(), req);
  const CallResult c = RunComplete(stub(), req);
  ASSERT_TRUE(s.status.ok() && c.status.ok());
  const SampleOut& st = s.samples.at(0);
  EXPECT_EQ(st.text, expected) << "stop string '" << stop << "'";
  EXPECT_EQ(c.samples.at(0).text, expected);
  EXPECT_EQ(st.finish, pb::FINISH_REASON_STOP);
  EXPECT_EQ(c.samples.at(0).finish, pb::FINISH_REASON_STOP);
  for (const std::string& d : st.deltas) EXPECT_THAT(d, ::testing::Not(HasSubstr(stop)));

  // A stop token id: generation ends after it; it is in token_ids, not text.
  const std::vector<int32_t>& tokens = full.samples.at(0).tokens;
  pb::GenerateRequest treq = GreedyRequest(prompt, 64);
  treq.mutable_stop()->add_stop_token_ids(tokens[10]);
  const CallResult t = RunComplete(stub(), treq);
  ASSERT_TRUE(t.status.ok());
  const size_t end = std::find(tokens.begin(), tokens.end(), tokens[10]) - tokens.begin() + 1;
  EXPECT_EQ(t.samples.at(0).tokens, std::vector<int32_t>(tokens.begin(), tokens.begin() + end));
  EXPECT_EQ(t.samples.at(0).finish, pb::FINISH_REASON_STOP);
}

TEST_F(GrpcE2E, NSamplesAreReturnedAndSeedsReproduce) {
  pb::GenerateRequest req;
  req.set_text("Parallel samples of one prompt");
  req.set_n(4);
  req.mutable_sampling()->set_temperature(1.0f);
  req.mutable_sampling()->set_seed(1234);
  req.mutable_stop()->set_max_tokens(12);
  req.mutable_stop()->set_ignore_eos(true);
  const CallResult s = RunStream(stub(), req);
  const CallResult c = RunComplete(stub(), req);
  ASSERT_TRUE(s.status.ok() && c.status.ok());
  ASSERT_EQ(s.samples.size(), 4u);
  ASSERT_EQ(c.samples.size(), 4u);
  int total = 0;
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(s.samples.at(i).tokens.size(), 12u);
    EXPECT_EQ(s.samples.at(i).finish, pb::FINISH_REASON_LENGTH);
    EXPECT_EQ(s.samples.at(i).finish_messages, 1);
    // Seeded sampling: the same request gives the same tokens, streamed or not.
    EXPECT_EQ(s.samples.at(i).tokens, c.samples.at(i).tokens) << "sample " << i;
    EXPECT_EQ(s.samples.at(i).text, c.samples.at(i).text) << "sample " << i;
    total += static_cast<int>(s.samples.at(i).tokens.size());
  }
  EXPECT_EQ(s.usage.completion_tokens(), total);
  EXPECT_NE(s.samples.at(0).tokens, s.samples.at(1).tokens) << "samples of n > 1 should differ";
}

}  // namespace
}  // namespace gdnserve::e2e
