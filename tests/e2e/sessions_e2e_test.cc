// End-to-end state reuse over gRPC (issue 10), with real server processes:
// a chat through a session equals the same chat sent as full history; an
// unknown session is NOT_FOUND; a session exported from one server and
// imported into another continues exactly as on the first; corrupt and
// foreign blobs are refused.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <random>

#include "tests/e2e/client_util.h"

namespace gdnserve::e2e {
namespace {

using ::testing::HasSubstr;

std::unique_ptr<ServerProcess> StartOrFail(const std::string& model = "tiny") {
  std::string error;
  auto s = ServerProcess::Start({"--threads", "1", "--max-seqs", "4"}, &error, model);
  EXPECT_NE(s, nullptr) << error;
  return s;
}

pb::GenerateRequest Tokens(const std::vector<int32_t>& ids, int max_tokens) {
  pb::GenerateRequest r = GreedyRequest("x", max_tokens);
  r.mutable_token_ids()->mutable_ids()->Assign(ids.begin(), ids.end());
  return r;
}

std::vector<int32_t> Random(std::mt19937& rng, int n, int vocab) {
  std::uniform_int_distribution<int32_t> d(3, vocab - 1);
  std::vector<int32_t> v(n);
  for (auto& t : v) t = d(rng);
  return v;
}

TEST(SessionsE2E, ChatExportImportAndErrors) {
  auto a = StartOrFail();
  ASSERT_NE(a, nullptr);
  pb::ModelInfo info;
  ASSERT_TRUE(GetInfo(a->stub(), &info).ok());
  const int vocab = info.vocab_size();
  std::mt19937 rng(1234);

  // Unknown session with continue: NOT_FOUND naming it.
  pb::GenerateRequest unknown = Tokens(Random(rng, 5, vocab), 3);
  unknown.set_session_id("no-such-session");
  unknown.set_session_continue(true);
  CallResult nf = RunComplete(a->stub(), unknown);
  EXPECT_EQ(nf.status.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(nf.status.error_message(), HasSubstr("no-such-session"));

  // A 6-turn chat: session (new tokens only) vs full history, turn by turn.
  std::vector<int32_t> history;
  for (int turn = 0; turn < 6; ++turn) {
    SCOPED_TRACE(turn);
    const auto user = Random(rng, 4 + turn * 3, vocab);
    std::vector<int32_t> full_prompt = history;
    full_prompt.insert(full_prompt.end(), user.begin(), user.end());
    CallResult full = RunComplete(a->stub(), Tokens(full_prompt, 6));
    ASSERT_TRUE(full.status.ok()) << full.status.error_message();
    pb::GenerateRequest r = Tokens(user, 6);
    r.set_session_id("chat");
    r.set_session_continue(turn > 0);
    CallResult sess = turn % 2 == 0 ? RunComplete(a->stub(), r) : RunStream(a->stub(), r);
    ASSERT_TRUE(sess.status.ok()) << sess.status.error_message();
    EXPECT_EQ(sess.samples[0].tokens, full.samples[0].tokens);
    EXPECT_EQ(sess.usage.prompt_tokens(), static_cast<int>(full_prompt.size()));
    EXPECT_EQ(sess.usage.cached_prompt_tokens(), turn == 0 ? 0 : static_cast<int>(history.size()) - 1);
    history = full_prompt;
    history.insert(history.end(), full.samples[0].tokens.begin(), full.samples[0].tokens.end());
  }

  // Export from a, import into b (another process), continue on both.
  grpc::ClientContext ectx;
  pb::ExportStateRequest ereq;
  ereq.set_session_id("chat");
  pb::ExportStateResponse blob;
  ASSERT_TRUE(a->stub().ExportState(&ectx, ereq, &blob).ok());
  auto b = StartOrFail();
  ASSERT_NE(b, nullptr);
  grpc::ClientContext ictx;
  pb::ImportStateRequest ireq;
  ireq.set_session_id("moved");
  ireq.set_state(blob.state());
  pb::ImportStateResponse iresp;
  grpc::Status is = b->stub().ImportState(&ictx, ireq, &iresp);
  ASSERT_TRUE(is.ok()) << is.error_message();
  EXPECT_EQ(iresp.num_tokens(), static_cast<int64_t>(history.size()) - 1);
  const auto next = Random(rng, 9, vocab);
  pb::GenerateRequest on_a = Tokens(next, 8);
  on_a.set_session_id("chat");
  on_a.set_session_continue(true);
  pb::GenerateRequest on_b = on_a;
  on_b.set_session_id("moved");
  CallResult ra = RunComplete(a->stub(), on_a), rb = RunComplete(b->stub(), on_b);
  ASSERT_TRUE(ra.status.ok() && rb.status.ok()) << ra.status.error_message() << rb.status.error_message();
  EXPECT_EQ(rb.samples[0].tokens, ra.samples[0].tokens);
  EXPECT_EQ(rb.usage.cached_prompt_tokens(), ra.usage.cached_prompt_tokens());

  // A corrupted blob: INVALID_ARGUMENT.
  std::string bad = blob.state();
  bad[bad.size() / 2] ^= 1;
  grpc::ClientContext cctx;
  ireq.set_state(bad);
  grpc::Status cs = b->stub().ImportState(&cctx, ireq, &iresp);
  EXPECT_EQ(cs.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(cs.error_message(), HasSubstr("checksum"));

  // Another model: FAILED_PRECONDITION.
  auto c = StartOrFail("tiny_gva");
  ASSERT_NE(c, nullptr);
  grpc::ClientContext fctx;
  ireq.set_state(blob.state());
  grpc::Status fs = c->stub().ImportState(&fctx, ireq, &iresp);
  EXPECT_EQ(fs.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(fs.error_message(), HasSubstr("different model"));
}

}  // namespace
}  // namespace gdnserve::e2e
