// Response bodies have the OpenAI shapes; stream deltas concatenate to the
// whole; chat templates load, validate and render.
#include "server/http/openai_response.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <limits>
#include <memory>

#include "nlohmann/json.hpp"
#include "server/http/chat_template.h"

namespace gdnserve::server::http {
namespace {

using Json = nlohmann::json;

ChoiceDelta Choice(int index, std::string text, FinishReason finish = FinishReason::kNone) {
  ChoiceDelta c;
  c.index = index;
  c.text = std::move(text);
  c.finish = finish;
  return c;
}

SampleDelta Delta(int index, std::string text, std::vector<int32_t> ids, FinishReason finish = FinishReason::kNone) {
  SampleDelta d;
  d.index = index;
  d.text = std::move(text);
  d.token_ids = std::move(ids);
  d.finish = finish;
  return d;
}

TEST(ErrorBody, OpenAIShape) {
  const Json j = Json::parse(ErrorBody(ErrorFromStatus(absl::InvalidArgumentError("n: must be in [1, 16], got 0"))));
  EXPECT_EQ(j["error"]["message"], "n: must be in [1, 16], got 0");
  EXPECT_EQ(j["error"]["type"], "invalid_request_error");
  EXPECT_EQ(j["error"]["param"], "n");
  EXPECT_EQ(j["error"]["code"], "invalid_value");
  const Json k = Json::parse(ErrorBody(MakeApiError(500, "x")));
  EXPECT_EQ(k["error"]["type"], "server_error");
  EXPECT_TRUE(k["error"]["param"].is_null());
  EXPECT_TRUE(k["error"]["code"].is_null());
}

TEST(FinishReason, OpenAINames) {
  EXPECT_EQ(OpenAIFinishReason(FinishReason::kLength), "length");
  EXPECT_EQ(OpenAIFinishReason(FinishReason::kStop), "stop");
  EXPECT_EQ(OpenAIFinishReason(FinishReason::kEos), "stop");
  EXPECT_EQ(OpenAIFinishReason(FinishReason::kCancelled), "abort");
}

TEST(ChoiceAssembler, StripsOneLeadingSpaceWholeOrStreamed) {
  for (bool strip : {true, false}) {
    ChoiceAssembler whole(0, strip, /*keep_total=*/true);
    ChoiceAssembler streamed(0, strip, /*keep_total=*/false);
    std::string concatenated;
    // The first delta may carry no text (a control token): the strip waits.
    for (const SampleDelta& d :
         {Delta(0, "", {1}), Delta(0, "  Hi", {2}), Delta(0, " there", {3}), Delta(0, "", {4}, FinishReason::kEos)}) {
      whole.Apply(d);
      concatenated += streamed.Apply(d).text;
    }
    EXPECT_EQ(whole.total().text, strip ? " Hi there" : "  Hi there");
    EXPECT_EQ(concatenated, whole.total().text);
    EXPECT_EQ(whole.total().finish, FinishReason::kEos);
  }
}

TEST(ChoiceAssembler, TextOffsets) {
  ChoiceAssembler a(1, /*strip=*/false, /*keep_total=*/true);
  SampleDelta d1 = Delta(1, "ab", {7});
  d1.logprobs = {{7, -0.5f, {}}};
  SampleDelta d2 = Delta(1, "cde", {8});
  d2.logprobs = {{8, -1.5f, {}}};
  a.Apply(d1);
  const ChoiceDelta second = a.Apply(d2);
  EXPECT_EQ(second.text_offsets, (std::vector<int64_t>{2}));
  EXPECT_EQ(a.total().text_offsets, (std::vector<int64_t>{0, 2}));
  EXPECT_EQ(a.total().index, 1);
}

class ResponseTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* dir = std::getenv("GDNSERVE_TEST_MODELS");
    if (dir == nullptr) GTEST_SKIP() << "GDNSERVE_TEST_MODELS is not set (tools/gen_model.py --suite tests)";
    auto t = Tokenizer::Load(std::string(dir) + "/tiny/tokenizer.model");
    ASSERT_TRUE(t.ok()) << t.status();
    tok_ = std::move(*t);
  }
  ResponseMeta Meta(Endpoint e, int logprobs = -1) {
    return {.endpoint = e, .id = "id-1", .created = 123, .model = "tiny", .logprobs = logprobs};
  }
  // The first byte-fallback token of the vocabulary (there are 256).
  int32_t ByteToken() const {
    for (int32_t id = 0; id < tok_->vocab_size(); ++id) {
      if (tok_->IsByte(id) && static_cast<unsigned char>(tok_->TokenBytes(id)[0]) >= 0x80) return id;
    }
    return -1;
  }
  std::unique_ptr<Tokenizer> tok_;
};

TEST_F(ResponseTest, CompletionBody) {
  ChoiceDelta c = Choice(0, "hello", FinishReason::kLength);
  const Json j = Json::parse(CompletionBody(Meta(Endpoint::kCompletions), {c}, {3, 4, 2}, *tok_));
  EXPECT_EQ(j["id"], "id-1");
  EXPECT_EQ(j["object"], "text_completion");
  EXPECT_EQ(j["created"], 123);
  EXPECT_EQ(j["model"], "tiny");
  EXPECT_EQ(j["choices"][0]["text"], "hello");
  EXPECT_EQ(j["choices"][0]["finish_reason"], "length");
  EXPECT_TRUE(j["choices"][0]["logprobs"].is_null());
  EXPECT_EQ(j["usage"], (Json{{"prompt_tokens", 3},
                              {"completion_tokens", 4},
                              {"total_tokens", 7},
                              {"prompt_tokens_details", {{"cached_tokens", 2}}}}));
}

TEST_F(ResponseTest, ChatBodyAndChunks) {
  ChoiceDelta c = Choice(0, "hi", FinishReason::kStop);
  const Json j = Json::parse(CompletionBody(Meta(Endpoint::kChatCompletions), {c}, {1, 1}, *tok_));
  EXPECT_EQ(j["object"], "chat.completion");
  EXPECT_EQ(j["choices"][0]["message"], (Json{{"role", "assistant"}, {"content", "hi"}}));
  EXPECT_EQ(j["choices"][0]["finish_reason"], "stop");

  const Json open = Json::parse(ChunkBody(Meta(Endpoint::kChatCompletions), Choice(0, ""), true, true, *tok_));
  EXPECT_EQ(open["object"], "chat.completion.chunk");
  EXPECT_EQ(open["choices"][0]["delta"], (Json{{"role", "assistant"}, {"content", ""}}));
  EXPECT_TRUE(open["choices"][0]["finish_reason"].is_null());
  EXPECT_TRUE(open.contains("usage") && open["usage"].is_null());

  const Json last = Json::parse(ChunkBody(Meta(Endpoint::kChatCompletions), c, false, false, *tok_));
  EXPECT_EQ(last["choices"][0]["delta"], (Json{{"content", "hi"}}));
  EXPECT_EQ(last["choices"][0]["finish_reason"], "stop");
  EXPECT_FALSE(last.contains("usage"));

  const Json usage = Json::parse(UsageChunkBody(Meta(Endpoint::kChatCompletions), {2, 5}));
  EXPECT_TRUE(usage["choices"].empty());
  EXPECT_EQ(usage["usage"]["total_tokens"], 7);
  EXPECT_EQ(usage["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
}

TEST_F(ResponseTest, Logprobs) {
  const int32_t byte = ByteToken();
  ASSERT_GE(byte, 0);
  ChoiceDelta c = Choice(0, "x");
  c.logprobs = {{byte, -std::numeric_limits<float>::infinity(), {{byte, -0.25f}, {5, -1.0f}, {6, -2.0f}}}};
  c.text_offsets = {0};
  // Completions: top_logprobs is a map of the k alternatives plus the chosen token.
  Json j = Json::parse(CompletionBody(Meta(Endpoint::kCompletions, 1), {c}, {1, 1}, *tok_));
  const Json& lp = j["choices"][0]["logprobs"];
  const std::string name = tok_->TokenDisplayText(byte);
  EXPECT_EQ(name.substr(0, 3), "<0x");  // a lone high byte is not UTF-8
  EXPECT_EQ(lp["tokens"], Json::array({name}));
  EXPECT_EQ(lp["token_logprobs"][0], -9999.0);  // -inf is not JSON
  EXPECT_EQ(lp["top_logprobs"][0].size(), 1u);
  EXPECT_EQ(lp["text_offset"], Json::array({0}));
  // Chat: content entries with bytes and top_logprobs (k of them).
  j = Json::parse(CompletionBody(Meta(Endpoint::kChatCompletions, 2), {c}, {1, 1}, *tok_));
  const Json& entry = j["choices"][0]["logprobs"]["content"][0];
  EXPECT_EQ(entry["token"], name);
  EXPECT_EQ(entry["bytes"].size(), 1u);
  EXPECT_EQ(entry["top_logprobs"].size(), 2u);
  EXPECT_EQ(entry["top_logprobs"][1]["logprob"], -1.0);
}

TEST_F(ResponseTest, Models) {
  const Json j = Json::parse(ModelListBody("tiny", 5, 100));
  EXPECT_EQ(j["object"], "list");
  EXPECT_EQ(j["data"][0]["id"], "tiny");
  EXPECT_EQ(j["data"][0]["object"], "model");
  EXPECT_EQ(j["data"][0]["max_model_len"], 100);
}

TEST(ChatTemplate, DefaultRender) {
  const ChatTemplate t = ChatTemplate::Default();
  EXPECT_EQ(t.Render({{"system", "s"}, {"user", "u"}, {"assistant", "a"}, {"developer", "d"}}),
            "system: s\nuser: u\nassistant: a\ndeveloper: d\nassistant:");
  EXPECT_TRUE(t.strip_leading_space);
}

TEST(ChatTemplate, FromJson) {
  auto t = ChatTemplate::FromJson(R"({"roles": {"user": {"prefix": "<u>", "suffix": "</u>"},
                                                "system": {"prefix": "<s>"}},
                                      "generation_prompt": "<a>", "strip_leading_space": false})");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->Render({{"system", "x"}, {"developer", "y"}, {"user", "z"}}), "<s>x\n<s>y\n<u>z</u><a>");
  EXPECT_FALSE(t->strip_leading_space);

  for (const auto& [text, words] :
       std::vector<std::pair<std::string, std::string>>{{"{", "not valid JSON"},
                                                        {R"({"roles": {"bot": {}}})", "roles.bot"},
                                                        {R"({"roles": {"user": {"prefix": 1}}})", "roles.user.prefix"},
                                                        {R"({"roles": {"user": {"pre": ""}}})", "roles.user.pre"},
                                                        {R"({"generation_prompt": 3})", "generation_prompt"},
                                                        {R"({"other": 1})", "other: unknown field"}}) {
    auto bad = ChatTemplate::FromJson(text);
    ASSERT_FALSE(bad.ok()) << text;
    EXPECT_NE(bad.status().message().find(words), std::string::npos) << bad.status();
  }
}

}  // namespace
}  // namespace gdnserve::server::http
