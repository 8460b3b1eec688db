#include "server/http/openai_response.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_format.h"
#include "nlohmann/json.hpp"

namespace gdnserve::server::http {
namespace {

// Insertion-ordered, so bodies read id, object, created, model, choices, usage.
using Json = nlohmann::ordered_json;

// Text is valid UTF-8 by construction (the detokenizer only emits whole
// characters); replace keeps a bug from turning into an exception.
std::string Dump(const Json& j) { return j.dump(-1, ' ', false, Json::error_handler_t::replace); }


// JSON has no -inf; vLLM reports impossible tokens as -9999.0 too.
double Logprob(float v) { return std::isfinite(v) ? static_cast<double>(v) : -9999.0; }

Json Bytes(const Tokenizer& tok, int32_t id) {
  Json b = Json::array();
  for (char c : tok.TokenBytes(id)) b.push_back(static_cast<unsigned char>(c));
  return b;
}

Json Nullable(const std::string& s) { return s.empty() ? Json(nullptr) : Json(s); }

Json FinishJson(FinishReason r) {
  return r == FinishReason::kNone ? Json(nullptr) : Json(std::string(OpenAIFinishReason(r)));
}

// Legacy completions: {"tokens", "token_logprobs", "top_logprobs", "text_offset"};
// top_logprobs maps token text to logprob for the k alternatives and, as in
// vLLM, the chosen token.
Json CompletionLogprobs(const ChoiceDelta& d, int k, const Tokenizer& tok) {
  Json tokens = Json::array(), token_logprobs = Json::array(), top = Json::array(), offsets = Json::array();
  for (size_t i = 0; i < d.logprobs.size(); ++i) {
    const TokenLogprobs& lp = d.logprobs[i];
    tokens.push_back(tok.TokenDisplayText(lp.token));
    token_logprobs.push_back(Logprob(lp.logprob));
    Json alts = Json::object();
    for (size_t j = 0; j < lp.top.size() && static_cast<int>(j) < k; ++j) {
      alts[tok.TokenDisplayText(lp.top[j].token)] = Logprob(lp.top[j].logprob);
    }
    alts[tok.TokenDisplayText(lp.token)] = Logprob(lp.logprob);
    top.push_back(std::move(alts));
    offsets.push_back(i < d.text_offsets.size() ? d.text_offsets[i] : 0);
  }
  return Json{{"tokens", tokens}, {"token_logprobs", token_logprobs}, {"top_logprobs", top}, {"text_offset", offsets}};
}

// Chat: {"content": [{"token", "logprob", "bytes", "top_logprobs": [{"token", "logprob", "bytes"}]}]}.
Json ChatLogprobs(const ChoiceDelta& d, int k, const Tokenizer& tok) {
  Json content = Json::array();
  for (const TokenLogprobs& lp : d.logprobs) {
    Json top = Json::array();
    for (size_t j = 0; j < lp.top.size() && static_cast<int>(j) < k; ++j) {
      top.push_back(Json{{"token", tok.TokenDisplayText(lp.top[j].token)},
                         {"logprob", Logprob(lp.top[j].logprob)},
                         {"bytes", Bytes(tok, lp.top[j].token)}});
    }
    content.push_back(Json{{"token", tok.TokenDisplayText(lp.token)},
                           {"logprob", Logprob(lp.logprob)},
                           {"bytes", Bytes(tok, lp.token)},
                           {"top_logprobs", std::move(top)}});
  }
  return Json{{"content", std::move(content)}};
}

Json LogprobsJson(const ResponseMeta& meta, const ChoiceDelta& d, const Tokenizer& tok) {
  if (meta.logprobs < 0) return nullptr;
  return meta.endpoint == Endpoint::kCompletions ? CompletionLogprobs(d, meta.logprobs, tok)
                                                 : ChatLogprobs(d, meta.logprobs, tok);
}

Json UsageJson(const Usage& u) {
  return Json{{"prompt_tokens", u.prompt_tokens},
              {"completion_tokens", u.completion_tokens},
              {"total_tokens", u.prompt_tokens + u.completion_tokens},
              {"prompt_tokens_details", {{"cached_tokens", u.cached_tokens}}}};
}

Json Head(const ResponseMeta& meta, bool chunk) {
  const char* object = meta.endpoint == Endpoint::kCompletions ? "text_completion"
                       : chunk                                 ? "chat.completion.chunk"
                                                               : "chat.completion";
  return Json{{"id", meta.id}, {"object", object}, {"created", meta.created}, {"model", meta.model}};
}

}  // namespace

ApiError ErrorFromStatus(const absl::Status& status) {
  ApiError e;
  e.message = std::string(status.message());
  switch (status.code()) {
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kOutOfRange:
      e.status = 400;
      e.code = "invalid_value";
      break;
    case absl::StatusCode::kNotFound:
      e.status = 404;
      e.code = "not_found";
      break;
    case absl::StatusCode::kUnauthenticated:
      e.status = 401;
      e.code = "invalid_api_key";
      break;
    case absl::StatusCode::kPermissionDenied:
      e.status = 403;
      e.code = "permission_denied";
      break;
    case absl::StatusCode::kResourceExhausted:
      e.status = 429;
      e.type = "rate_limit_error";
      e.code = "overloaded";
      break;
    case absl::StatusCode::kUnavailable:
      e.status = 503;
      e.type = "server_error";
      e.code = "unavailable";
      break;
    case absl::StatusCode::kDeadlineExceeded:
      e.status = 504;
      e.type = "server_error";
      e.code = "timeout";
      break;
    default:
      e.status = 500;
      e.type = "server_error";
      e.code = "internal_error";
      break;
  }
  // "field.path[3]: why" -> param "field.path[3]"; "body: ..." has no param.
  const size_t colon = e.message.find(": ");
  if (colon != std::string::npos && colon > 0) {
    const std::string head = e.message.substr(0, colon);
    const bool is_path = std::all_of(head.begin(), head.end(), [](char c) {
      return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '.' || c == '[' || c == ']';
    });
    if (is_path && head != "body") e.param = head;
  }
  return e;
}

ApiError MakeApiError(int status, std::string message, std::string code, std::string param) {
  ApiError e;
  e.status = status;
  e.type = status == 429 ? "rate_limit_error" : status >= 500 ? "server_error" : "invalid_request_error";
  e.message = std::move(message);
  e.code = std::move(code);
  e.param = std::move(param);
  return e;
}

std::string ErrorBody(const ApiError& error) {
  return Dump(Json{{"error",
                    {{"message", error.message},
                     {"type", error.type},
                     {"param", Nullable(error.param)},
                     {"code", Nullable(error.code)}}}});
}

std::string_view OpenAIFinishReason(FinishReason reason) {
  switch (reason) {
    case FinishReason::kNone:
      return "";
    case FinishReason::kLength:
      return "length";
    case FinishReason::kStop:
    case FinishReason::kEos:
      return "stop";
    case FinishReason::kCancelled:
      return "abort";
  }
  return "";
}


ChoiceAssembler::ChoiceAssembler(int index, bool strip_leading_space, bool keep_total)
    : strip_(strip_leading_space), keep_total_(keep_total) {
  total_.index = index;
}

ChoiceDelta ChoiceAssembler::Apply(const SampleDelta& in) {
  ChoiceDelta d;
  d.index = total_.index;
  d.text = in.text;
  if (!started_ && !d.text.empty()) {
    started_ = true;
    if (strip_ && d.text[0] == ' ') d.text.erase(0, 1);
  }
  // Tokens of one engine delta share its text's start (the engine delivers
  // one token per sample per step, so in practice each token has its own).
  d.logprobs = in.logprobs;
  d.text_offsets.assign(d.logprobs.size(), text_bytes_);
  d.finish = in.finish;
  text_bytes_ += static_cast<int64_t>(d.text.size());
  if (keep_total_) {
    total_.text += d.text;
    total_.logprobs.insert(total_.logprobs.end(), d.logprobs.begin(), d.logprobs.end());
    total_.text_offsets.insert(total_.text_offsets.end(), d.text_offsets.begin(), d.text_offsets.end());
  }
  if (d.finish != FinishReason::kNone) total_.finish = d.finish;
  return d;
}

std::string CompletionBody(const ResponseMeta& meta, const std::vector<ChoiceDelta>& choices, const Usage& usage,
                           const Tokenizer& tokenizer) {
  Json out = Head(meta, /*chunk=*/false);
  Json list = Json::array();
  for (const ChoiceDelta& c : choices) {
    if (meta.endpoint == Endpoint::kCompletions) {
      list.push_back(Json{{"index", c.index},
                          {"text", c.text},
                          {"logprobs", LogprobsJson(meta, c, tokenizer)},
                          {"finish_reason", FinishJson(c.finish)}});
    } else {
      list.push_back(Json{{"index", c.index},
                          {"message", {{"role", "assistant"}, {"content", c.text}}},
                          {"logprobs", LogprobsJson(meta, c, tokenizer)},
                          {"finish_reason", FinishJson(c.finish)}});
    }
  }
  out["choices"] = std::move(list);
  out["usage"] = UsageJson(usage);
  return Dump(out);
}

std::string ChunkBody(const ResponseMeta& meta, const ChoiceDelta& d, bool role, bool usage_null,
                      const Tokenizer& tokenizer) {
  Json out = Head(meta, /*chunk=*/true);
  Json choice;
  if (meta.endpoint == Endpoint::kCompletions) {
    choice = Json{{"index", d.index}, {"text", d.text}};
  } else {
    Json delta = Json::object();
    if (role) delta["role"] = "assistant";
    if (role || !d.text.empty()) delta["content"] = d.text;
    choice = Json{{"index", d.index}, {"delta", std::move(delta)}};
  }
  choice["logprobs"] = d.logprobs.empty() ? Json(nullptr) : LogprobsJson(meta, d, tokenizer);
  choice["finish_reason"] = FinishJson(d.finish);
  out["choices"] = Json::array({std::move(choice)});
  if (usage_null) out["usage"] = nullptr;
  return Dump(out);
}

std::string UsageChunkBody(const ResponseMeta& meta, const Usage& usage) {
  Json out = Head(meta, /*chunk=*/true);
  out["choices"] = Json::array();
  out["usage"] = UsageJson(usage);
  return Dump(out);
}

std::string StreamErrorBody(const ApiError& error) { return ErrorBody(error); }

std::string ModelBody(const std::string& model, int64_t created, int max_model_len) {
  return Dump(Json{{"id", model},
                   {"object", "model"},
                   {"created", created},
                   {"owned_by", "gdnserve"},
                   {"root", model},
                   {"parent", nullptr},
                   {"max_model_len", max_model_len}});
}

std::string ModelListBody(const std::string& model, int64_t created, int max_model_len) {
  return Dump(Json{{"object", "list"}, {"data", Json::array({Json::parse(ModelBody(model, created, max_model_len))})}});
}

}  // namespace gdnserve::server::http
