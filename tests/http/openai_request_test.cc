// OpenAI request parsing and validation: every accepted shape, and errors
// that name the field a client got wrong.
#include "server/http/openai_request.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <memory>

#include "server/http/openai_response.h"

namespace gdnserve::server::http {
namespace {

absl::StatusOr<OpenAIRequest> Completion(const std::string& body, const HttpLimits& limits = {}) {
  return ParseOpenAIRequest(Endpoint::kCompletions, body, limits);
}
absl::StatusOr<OpenAIRequest> Chat(const std::string& body, const HttpLimits& limits = {}) {
  return ParseOpenAIRequest(Endpoint::kChatCompletions, body, limits);
}

// The error's message starts with "field: " and mentions `words`.
void ExpectError(const absl::StatusOr<OpenAIRequest>& r, const std::string& field, const std::string& words = "") {
  ASSERT_FALSE(r.ok()) << "expected an error naming " << field;
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  const std::string msg(r.status().message());
  EXPECT_EQ(msg.rfind(field + ": ", 0), 0u) << msg;
  EXPECT_NE(msg.find(words), std::string::npos) << msg;
  EXPECT_EQ(ErrorFromStatus(r.status()).param, field == "body" ? "" : field) << msg;
}

TEST(ParseOpenAIRequest, PromptShapes) {
  auto r = Completion(R"({"prompt": "hello"})");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->prompt_is_text);
  EXPECT_EQ(r->prompt_text, "hello");
  EXPECT_EQ(r->stop.max_tokens, 16);  // the OpenAI default for completions
  EXPECT_EQ(r->n, 1);
  EXPECT_FALSE(r->stream);
  EXPECT_EQ(r->logprobs, -1);

  r = Completion(R"({"prompt": ["hello"]})");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->prompt_text, "hello");

  r = Completion(R"({"prompt": [5, 6, 7]})");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_FALSE(r->prompt_is_text);
  EXPECT_EQ(r->prompt_ids, (std::vector<int32_t>{5, 6, 7}));

  r = Completion(R"({"prompt": [[5, 6]]})");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->prompt_ids, (std::vector<int32_t>{5, 6}));
}

TEST(ParseOpenAIRequest, PromptErrors) {
  ExpectError(Completion(R"({})"), "prompt", "required");
  ExpectError(Completion(R"({"prompt": null})"), "prompt", "required");
  ExpectError(Completion(R"({"prompt": 5})"), "prompt", "got integer");
  ExpectError(Completion(R"({"prompt": ""})"), "prompt", "empty");
  ExpectError(Completion(R"({"prompt": []})"), "prompt", "empty");
  ExpectError(Completion(R"({"prompt": ["a", "b"]})"), "prompt", "several prompts");
  ExpectError(Completion(R"({"prompt": [[1], [2]]})"), "prompt", "several prompts");
  ExpectError(Completion(R"({"prompt": [1, "x"]})"), "prompt[1]", "token id");
  ExpectError(Completion(R"({"prompt": [1, 2.5]})"), "prompt[1]", "token id");
  ExpectError(Completion(R"({"prompt": [1, 99999999999]})"), "prompt[1]", "out of range");
  ExpectError(Completion(R"({"prompt": [{}]})"), "prompt[0]", "got object");
}

TEST(ParseOpenAIRequest, BodyErrors) {
  ExpectError(Completion(R"({"prompt": "x",)"), "body", "invalid JSON");
  ExpectError(Completion(""), "body", "invalid JSON");
  ExpectError(Completion(R"(["prompt"])"), "body", "JSON object");
  ExpectError(Completion(R"({"prompt": "x", "model": 3})"), "model", "must be a string");
}

TEST(ParseOpenAIRequest, SamplingAndTypes) {
  auto r = Completion(R"({"prompt": "x", "temperature": 0, "top_p": 0.5, "top_k": 7, "min_p": 0.1,
                          "repetition_penalty": 1.2, "presence_penalty": -1, "frequency_penalty": 1.5,
                          "seed": -1, "max_tokens": 32.0, "n": 2, "ignore_eos": true, "user": "u",
                          "stop_token_ids": [3]})");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->sampling.temperature, 0.0f);
  EXPECT_FLOAT_EQ(r->sampling.top_p, 0.5f);
  EXPECT_EQ(r->sampling.top_k, 7);
  EXPECT_FLOAT_EQ(r->sampling.min_p, 0.1f);
  EXPECT_FLOAT_EQ(r->sampling.repetition_penalty, 1.2f);
  EXPECT_FLOAT_EQ(r->sampling.presence_penalty, -1.0f);
  EXPECT_FLOAT_EQ(r->sampling.frequency_penalty, 1.5f);
  EXPECT_TRUE(r->sampling.has_seed);
  EXPECT_EQ(r->sampling.seed, ~uint64_t{0});  // negative seeds wrap, as vLLM accepts them
  EXPECT_EQ(r->stop.max_tokens, 32);
  EXPECT_EQ(r->n, 2);
  EXPECT_TRUE(r->stop.ignore_eos);
  EXPECT_EQ(r->stop.stop_token_ids, (std::vector<int32_t>{3}));

  // null is "not given".
  r = Completion(R"({"prompt": "x", "temperature": null, "max_tokens": null, "stop": null, "seed": null})");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->sampling.temperature, 1.0f);
  EXPECT_FALSE(r->sampling.has_seed);

  ExpectError(Completion(R"({"prompt": "x", "temperature": "hot"})"), "temperature", "must be a number, got string");
  ExpectError(Completion(R"({"prompt": "x", "max_tokens": "10"})"), "max_tokens", "must be an integer, got string");
  ExpectError(Completion(R"({"prompt": "x", "max_tokens": 1.5})"), "max_tokens", "integer");
  ExpectError(Completion(R"({"prompt": "x", "max_tokens": 0})"), "max_tokens", "[1, 4096]");
  ExpectError(Completion(R"({"prompt": "x", "max_tokens": 5000})"), "max_tokens", "--max-tokens-cap");
  ExpectError(Completion(R"({"prompt": "x", "n": 0})"), "n", "[1, 16]");
  ExpectError(Completion(R"({"prompt": "x", "n": true})"), "n", "got boolean");
  ExpectError(Completion(R"({"prompt": "x", "stream": "yes"})"), "stream", "boolean");
  ExpectError(Completion(R"({"prompt": "x", "top_k": 0.5})"), "top_k", "integer");
  ExpectError(Completion(R"({"prompt": "x", "seed": "1"})"), "seed", "integer");
  ExpectError(Completion(R"({"prompt": "x", "ignore_eos": 1})"), "ignore_eos", "boolean");
  ExpectError(Completion(R"({"prompt": "x", "user": 1})"), "user", "string");
}

TEST(ParseOpenAIRequest, Stop) {
  auto r = Completion(R"({"prompt": "x", "stop": "\n"})");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->stop.stop_strings, (std::vector<std::string>{"\n"}));
  r = Completion(R"({"prompt": "x", "stop": ["a", "bc"]})");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->stop.stop_strings, (std::vector<std::string>{"a", "bc"}));

  ExpectError(Completion(R"({"prompt": "x", "stop": ["a", 1]})"), "stop[1]", "string");
  ExpectError(Completion(R"({"prompt": "x", "stop": ["a", ""]})"), "stop[1]", "1 to 256 bytes");
  ExpectError(Completion(R"({"prompt": "x", "stop": ""})"), "stop", "1 to 256 bytes");
  ExpectError(Completion(R"({"prompt": "x", "stop": 5})"), "stop", "string or a list");
  std::string many = R"({"prompt": "x", "stop": [)";
  for (int i = 0; i < 17; ++i) many += std::string(i ? "," : "") + "\"s" + std::to_string(i) + "\"";
  ExpectError(Completion(many + "]}"), "stop", "at most 16");
  ExpectError(Completion(R"({"prompt": "x", "stop_token_ids": [1, "a"]})"), "stop_token_ids[1]", "token id");
}

TEST(ParseOpenAIRequest, Logprobs) {
  auto r = Completion(R"({"prompt": "x", "logprobs": 3})");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->logprobs, 3);
  EXPECT_EQ(r->sampling.logprobs, 3);
  r = Completion(R"({"prompt": "x", "logprobs": 0})");  // the chosen token's only: the engine computes one
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->logprobs, 0);
  EXPECT_EQ(r->sampling.logprobs, 1);
  ExpectError(Completion(R"({"prompt": "x", "logprobs": 21})"), "logprobs", "[0, 20]");
  ExpectError(Completion(R"({"prompt": "x", "logprobs": true})"), "logprobs", "integer");

  r = Chat(R"({"messages": [{"role": "user", "content": "hi"}], "logprobs": true, "top_logprobs": 2})");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->logprobs, 2);
  r = Chat(R"({"messages": [{"role": "user", "content": "hi"}], "logprobs": false})");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->logprobs, -1);
  EXPECT_EQ(r->sampling.logprobs, 0);
  ExpectError(Chat(R"({"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2})"), "top_logprobs",
              "logprobs: true");
  ExpectError(Chat(R"({"messages": [{"role": "user", "content": "hi"}], "logprobs": 2})"), "logprobs", "boolean");
}

TEST(ParseOpenAIRequest, StreamOptions) {
  auto r = Completion(R"({"prompt": "x", "stream": true, "stream_options": {"include_usage": true}})");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->stream);
  EXPECT_TRUE(r->include_usage);
  ExpectError(Completion(R"({"prompt": "x", "stream_options": {"include_usage": true}})"), "stream_options",
              "stream is true");
  ExpectError(Completion(R"({"prompt": "x", "stream": true, "stream_options": {"include_usage": 1}})"),
              "stream_options.include_usage", "boolean");
}

TEST(ParseOpenAIRequest, Unsupported) {
  ExpectError(Completion(R"({"prompt": "x", "echo": true})"), "echo", "only false");
  EXPECT_TRUE(Completion(R"({"prompt": "x", "echo": false, "best_of": 1, "logit_bias": {}})").ok());
  ExpectError(Completion(R"({"prompt": "x", "best_of": 2})"), "best_of");
  ExpectError(Completion(R"({"prompt": "x", "suffix": "end"})"), "suffix");
  ExpectError(Completion(R"({"prompt": "x", "logit_bias": {"1": 5}})"), "logit_bias");
  const std::string msgs = R"("messages": [{"role": "user", "content": "hi"}])";
  ExpectError(Chat("{" + msgs + R"(, "tools": [{"type": "function"}]})"), "tools");
  ExpectError(Chat("{" + msgs + R"(, "response_format": {"type": "json_object"}})"), "response_format");
  EXPECT_TRUE(Chat("{" + msgs + R"(, "response_format": {"type": "text"}, "tools": []})").ok());
  // Unknown fields are ignored, as vLLM ignores them.
  EXPECT_TRUE(Completion(R"({"prompt": "x", "some_future_field": 1})").ok());
}

TEST(ParseOpenAIRequest, Messages) {
  auto r = Chat(R"({"model": "tiny", "messages": [
      {"role": "system", "content": "be brief"},
      {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
      {"role": "assistant", "content": null},
      {"role": "developer", "content": "d", "name": "x"}]})");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->model, "tiny");
  ASSERT_EQ(r->messages.size(), 4u);
  EXPECT_EQ(r->messages[0].role, "system");
  EXPECT_EQ(r->messages[1].content, "a\nb");
  EXPECT_EQ(r->messages[2].content, "");
  EXPECT_EQ(r->stop.max_tokens, 4096);  // chat: up to the cap

  r = Chat(R"({"messages": [{"role": "user", "content": "x"}], "max_tokens": 5, "max_completion_tokens": 7})");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->stop.max_tokens, 7);
  ExpectError(Chat(R"({"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 0})"),
              "max_completion_tokens", "[1, 4096]");

  ExpectError(Chat(R"({})"), "messages", "required");
  ExpectError(Chat(R"({"messages": "hi"})"), "messages", "list");
  ExpectError(Chat(R"({"messages": []})"), "messages", "empty");
  ExpectError(Chat(R"({"messages": [1]})"), "messages[0]", "object");
  ExpectError(Chat(R"({"messages": [{"content": "x"}]})"), "messages[0].role", "required");
  ExpectError(Chat(R"({"messages": [{"role": "robot", "content": "x"}]})"), "messages[0].role", "robot");
  ExpectError(Chat(R"({"messages": [{"role": "user"}]})"), "messages[0].content", "required");
  ExpectError(Chat(R"({"messages": [{"role": "user", "content": 5}]})"), "messages[0].content", "got integer");
  ExpectError(Chat(R"({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]})"),
              "messages[0].content[0].type", "only \"text\"");
  ExpectError(Chat(R"({"messages": [{"role": "user", "content": [{"type": "text"}]}]})"), "messages[0].content[0].text",
              "string");
  ExpectError(Chat(R"({"messages": [{"role": "assistant", "content": "x", "tool_calls": [{}]}]})"),
              "messages[0].tool_calls", "not supported");
}

TEST(ErrorFromStatus, StatusCodesAndParam) {
  EXPECT_EQ(ErrorFromStatus(absl::InvalidArgumentError("top_p: must be in (0, 1]")).status, 400);
  EXPECT_EQ(ErrorFromStatus(absl::InvalidArgumentError("top_p: must be in (0, 1]")).param, "top_p");
  EXPECT_EQ(ErrorFromStatus(absl::InvalidArgumentError("messages[2].content: x")).param, "messages[2].content");
  EXPECT_EQ(ErrorFromStatus(absl::InvalidArgumentError("no field here")).param, "");
  EXPECT_EQ(ErrorFromStatus(absl::InvalidArgumentError("a sentence: with colon")).param, "");
  EXPECT_EQ(ErrorFromStatus(absl::ResourceExhaustedError("full")).status, 429);
  EXPECT_EQ(ErrorFromStatus(absl::UnavailableError("down")).status, 503);
  EXPECT_EQ(ErrorFromStatus(absl::InternalError("bug")).status, 500);
  EXPECT_EQ(ErrorFromStatus(absl::InternalError("bug")).type, "server_error");
}

// ToGenerationRequest needs a real tokenizer: the generated test model's.
class ToGenerationRequestTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* dir = std::getenv("GDNSERVE_TEST_MODELS");
    if (dir == nullptr) GTEST_SKIP() << "GDNSERVE_TEST_MODELS is not set (tools/gen_model.py --suite tests)";
    auto t = Tokenizer::Load(std::string(dir) + "/tiny/tokenizer.model");
    ASSERT_TRUE(t.ok()) << t.status();
    tok_ = std::move(*t);
  }
  absl::StatusOr<GenerationRequest> Build(Endpoint e, const std::string& body, const HttpLimits& limits = {}) {
    absl::StatusOr<OpenAIRequest> r = ParseOpenAIRequest(e, body, limits);
    if (!r.ok()) return r.status();
    return ToGenerationRequest(*r, *tok_, ChatTemplate::Default(), limits, "id-1");
  }
  std::unique_ptr<Tokenizer> tok_;
};

TEST_F(ToGenerationRequestTest, TextPromptGetsBos) {
  auto g = Build(Endpoint::kCompletions, R"({"prompt": "hello world", "max_tokens": 3, "seed": 5})");
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_EQ(g->prompt, tok_->Encode("hello world", /*add_bos=*/true));
  EXPECT_EQ(g->request_id, "id-1");
  EXPECT_EQ(g->stop.max_tokens, 3);
  EXPECT_EQ(g->sampling.seed, 5u);
}

TEST_F(ToGenerationRequestTest, ChatRendersTheTemplate) {
  auto g = Build(Endpoint::kChatCompletions,
                 R"({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]})");
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_EQ(g->prompt, tok_->Encode("system: s\nuser: u\nassistant:", /*add_bos=*/true));
}

TEST_F(ToGenerationRequestTest, Errors) {
  auto g = Build(Endpoint::kCompletions, R"({"prompt": [1, 100000]})");
  ASSERT_FALSE(g.ok());
  EXPECT_EQ(ErrorFromStatus(g.status()).param, "prompt") << g.status();
  g = Build(Endpoint::kCompletions, R"({"prompt": "x", "stop_token_ids": [100000]})");
  ASSERT_FALSE(g.ok());
  EXPECT_EQ(ErrorFromStatus(g.status()).param, "stop_token_ids") << g.status();
  g = Build(Endpoint::kCompletions, R"({"prompt": "x", "top_p": 0})");
  ASSERT_FALSE(g.ok());
  EXPECT_EQ(ErrorFromStatus(g.status()).param, "top_p") << g.status();
  g = Build(Endpoint::kCompletions, R"({"prompt": "x", "temperature": -1})");
  ASSERT_FALSE(g.ok());
  EXPECT_EQ(ErrorFromStatus(g.status()).param, "temperature") << g.status();
  g = Build(Endpoint::kChatCompletions, R"({"messages": [{"role": "user", "content": "a b c d e f g h"}]})",
            {.max_prompt_tokens = 4});
  ASSERT_FALSE(g.ok());
  EXPECT_EQ(ErrorFromStatus(g.status()).param, "messages") << g.status();
  EXPECT_NE(g.status().message().find("--max-prompt-tokens"), std::string::npos) << g.status();
}

}  // namespace
}  // namespace gdnserve::server::http
