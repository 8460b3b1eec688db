#include "server/http/openai_request.h"

#include <cmath>
#include <limits>
#include <utility>

#include "absl/strings/str_format.h"
#include "nlohmann/json.hpp"

namespace gdnserve::server::http {
namespace {

using Json = nlohmann::json;

absl::Status Bad(const std::string& field, const std::string& why) {
  return absl::InvalidArgumentError(field + ": " + why);
}

std::string TypeName(const Json& v) {
  if (v.is_number_integer()) return "integer";
  return v.type_name();
}

absl::Status WrongType(const std::string& field, const std::string& want, const Json& got) {
  return Bad(field, "must be " + want + ", got " + TypeName(got));
}

// The value of `key`, or nullptr when it is absent or null ("not given").
const Json* Field(const Json& obj, const char* key) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return nullptr;
  return &*it;
}

// An integer; a float with an integral value (16.0) counts, as it does for
// the OpenAI API's own validation.
absl::Status ToInt64(const Json& v, const std::string& field, int64_t* out) {
  if (v.is_number_unsigned()) {
    if (v.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return Bad(field, "is out of range");
    }
    *out = static_cast<int64_t>(v.get<uint64_t>());
  } else if (v.is_number_integer()) {
    *out = v.get<int64_t>();
  } else if (v.is_number_float()) {
    const double d = v.get<double>();
    if (std::floor(d) != d || std::fabs(d) > 9.0e15) return WrongType(field, "an integer", v);
    *out = static_cast<int64_t>(d);
  } else {
    return WrongType(field, "an integer", v);
  }
  return absl::OkStatus();
}

absl::Status ToInt32(const Json& v, const std::string& field, int* out) {
  int64_t x = 0;
  if (absl::Status s = ToInt64(v, field, &x); !s.ok()) return s;
  if (x < std::numeric_limits<int32_t>::min() || x > std::numeric_limits<int32_t>::max()) {
    return Bad(field, absl::StrFormat("%d is out of range", x));
  }
  *out = static_cast<int>(x);
  return absl::OkStatus();
}

absl::Status OptInt(const Json& obj, const char* key, int* out, bool* given = nullptr) {
  const Json* v = Field(obj, key);
  if (given != nullptr) *given = v != nullptr;
  return v == nullptr ? absl::OkStatus() : ToInt32(*v, key, out);
}

absl::Status OptFloat(const Json& obj, const char* key, float* out) {
  const Json* v = Field(obj, key);
  if (v == nullptr) return absl::OkStatus();
  if (!v->is_number()) return WrongType(key, "a number", *v);
  *out = static_cast<float>(v->get<double>());
  return absl::OkStatus();
}

absl::Status OptBool(const Json& obj, const char* key, bool* out) {
  const Json* v = Field(obj, key);
  if (v == nullptr) return absl::OkStatus();
  if (!v->is_boolean()) return WrongType(key, "a boolean", *v);
  *out = v->get<bool>();
  return absl::OkStatus();
}

absl::Status ReadIds(const Json& arr, const std::string& field, std::vector<int32_t>* out) {
  out->clear();
  out->reserve(arr.size());
  for (size_t i = 0; i < arr.size(); ++i) {
    const std::string f = absl::StrFormat("%s[%d]", field, i);
    if (!arr[i].is_number_integer()) return WrongType(f, "a token id (integer)", arr[i]);
    int id = 0;
    if (absl::Status s = ToInt32(arr[i], f, &id); !s.ok()) return s;
    out->push_back(id);
  }
  return absl::OkStatus();
}

absl::Status ParsePrompt(const Json& body, OpenAIRequest* r) {
  const Json* p = Field(body, "prompt");
  if (p == nullptr) return Bad("prompt", "is required");
  const char* kWant = "a string, a list of one string or a list of token ids";
  const char* kBatch = "a list of several prompts is not supported; send one request per prompt";
  if (p->is_string()) {
    r->prompt_text = p->get<std::string>();
  } else if (p->is_array()) {
    if (p->empty()) return Bad("prompt", "must not be empty");
    const Json& first = (*p)[0];
    if (first.is_string()) {
      if (p->size() > 1) return Bad("prompt", kBatch);
      r->prompt_text = first.get<std::string>();
    } else if (first.is_array()) {
      if (p->size() > 1) return Bad("prompt", kBatch);
      if (first.empty()) return Bad("prompt[0]", "must not be empty");
      r->prompt_is_text = false;
      return ReadIds(first, "prompt[0]", &r->prompt_ids);
    } else if (first.is_number()) {
      r->prompt_is_text = false;
      return ReadIds(*p, "prompt", &r->prompt_ids);
    } else {
      return WrongType("prompt[0]", "a string or a token id", first);
    }
  } else {
    return WrongType("prompt", kWant, *p);
  }
  if (r->prompt_text.empty()) return Bad("prompt", "must not be empty");
  return absl::OkStatus();
}

// content: a string, or a list of {"type": "text", "text": ...} parts
// (joined with newlines, as vLLM joins them); null only for assistant turns.
absl::Status ParseContent(const Json& m, const std::string& field, const std::string& role, std::string* out) {
  const Json* c = Field(m, "content");
  if (c == nullptr) {
    if (role == "assistant") return absl::OkStatus();
    return Bad(field + ".content", "is required");
  }
  if (c->is_string()) {
    *out = c->get<std::string>();
    return absl::OkStatus();
  }
  if (!c->is_array()) return WrongType(field + ".content", "a string or a list of content parts", *c);
  for (size_t k = 0; k < c->size(); ++k) {
    const std::string pf = absl::StrFormat("%s.content[%d]", field, k);
    const Json& part = (*c)[k];
    if (!part.is_object()) return WrongType(pf, "an object", part);
    const Json* type = Field(part, "type");
    if (type == nullptr || !type->is_string()) return Bad(pf + ".type", "must be a string");
    if (type->get<std::string>() != "text") {
      return Bad(pf + ".type", "only \"text\" parts are supported, got \"" + type->get<std::string>() + "\"");
    }
    const Json* text = Field(part, "text");
    if (text == nullptr || !text->is_string()) return Bad(pf + ".text", "must be a string");
    if (k > 0) out->push_back('\n');
    *out += text->get<std::string>();
  }
  return absl::OkStatus();
}

absl::Status ParseMessages(const Json& body, const HttpLimits& limits, OpenAIRequest* r) {
  const Json* ms = Field(body, "messages");
  if (ms == nullptr) return Bad("messages", "is required");
  if (!ms->is_array()) return WrongType("messages", "a list of messages", *ms);
  if (ms->empty()) return Bad("messages", "must not be empty");
  if (static_cast<int64_t>(ms->size()) > limits.max_messages) {
    return Bad("messages", absl::StrFormat("at most %d messages, got %d", limits.max_messages, ms->size()));
  }
  for (size_t i = 0; i < ms->size(); ++i) {
    const std::string field = absl::StrFormat("messages[%d]", i);
    const Json& m = (*ms)[i];
    if (!m.is_object()) return WrongType(field, "an object", m);
    const Json* role = Field(m, "role");
    if (role == nullptr) return Bad(field + ".role", "is required");
    if (!role->is_string()) return WrongType(field + ".role", "a string", *role);
    ChatMessage msg;
    msg.role = role->get<std::string>();
    if (msg.role != "system" && msg.role != "developer" && msg.role != "user" && msg.role != "assistant") {
      return Bad(field + ".role", "must be system, developer, user or assistant, got \"" + msg.role + "\"");
    }
    if (const Json* tc = Field(m, "tool_calls"); tc != nullptr && !(tc->is_array() && tc->empty())) {
      return Bad(field + ".tool_calls", "tool calls are not supported");
    }
    if (absl::Status s = ParseContent(m, field, msg.role, &msg.content); !s.ok()) return s;
    r->messages.push_back(std::move(msg));
  }
  return absl::OkStatus();
}

absl::Status ParseStop(const Json& body, const HttpLimits& limits, StopConditions* stop) {
  if (const Json* s = Field(body, "stop"); s != nullptr) {
    std::vector<const Json*> items;
    std::vector<std::string> fields;
    if (s->is_string()) {
      items.push_back(s);
      fields.push_back("stop");
    } else if (s->is_array()) {
      if (static_cast<int64_t>(s->size()) > limits.max_stop_strings) {
        return Bad("stop", absl::StrFormat("at most %d stop strings, got %d", limits.max_stop_strings, s->size()));
      }
      for (size_t i = 0; i < s->size(); ++i) {
        items.push_back(&(*s)[i]);
        fields.push_back(absl::StrFormat("stop[%d]", i));
      }
    } else {
      return WrongType("stop", "a string or a list of strings", *s);
    }
    for (size_t i = 0; i < items.size(); ++i) {
      if (!items[i]->is_string()) return WrongType(fields[i], "a string", *items[i]);
      std::string str = items[i]->get<std::string>();
      if (str.empty() || static_cast<int64_t>(str.size()) > limits.max_stop_bytes) {
        return Bad(fields[i], absl::StrFormat("must have 1 to %d bytes, got %d", limits.max_stop_bytes, str.size()));
      }
      stop->stop_strings.push_back(std::move(str));
    }
  }
  if (const Json* ids = Field(body, "stop_token_ids"); ids != nullptr) {
    if (!ids->is_array()) return WrongType("stop_token_ids", "a list of token ids", *ids);
    if (absl::Status s = ReadIds(*ids, "stop_token_ids", &stop->stop_token_ids); !s.ok()) return s;
  }
  return OptBool(body, "ignore_eos", &stop->ignore_eos);
}

absl::Status ParseSampling(const Json& body, SamplingParams* s) {
  for (auto [key, out] :
       {std::pair{"temperature", &s->temperature}, std::pair{"top_p", &s->top_p}, std::pair{"min_p", &s->min_p},
        std::pair{"repetition_penalty", &s->repetition_penalty}, std::pair{"presence_penalty", &s->presence_penalty},
        std::pair{"frequency_penalty", &s->frequency_penalty}}) {
    if (absl::Status st = OptFloat(body, key, out); !st.ok()) return st;
  }
  if (absl::Status st = OptInt(body, "top_k", &s->top_k); !st.ok()) return st;
  if (const Json* seed = Field(body, "seed"); seed != nullptr) {
    // Any 64-bit integer, negative ones wrapping (vLLM accepts [-2^63, 2^64)).
    if (seed->is_number_unsigned()) {
      s->seed = seed->get<uint64_t>();
    } else {
      int64_t v = 0;
      if (absl::Status st = ToInt64(*seed, "seed", &v); !st.ok()) return st;
      s->seed = static_cast<uint64_t>(v);
    }
    s->has_seed = true;
  }
  return absl::OkStatus();
}

// logprobs: completions take the number of alternatives (0..20); chat takes
// a boolean and top_logprobs (0..20).
absl::Status ParseLogprobs(const Json& body, OpenAIRequest* r) {
  constexpr int kMaxLogprobs = 20;
  if (r->endpoint == Endpoint::kCompletions) {
    bool given = false;
    int k = 0;
    if (absl::Status s = OptInt(body, "logprobs", &k, &given); !s.ok()) return s;
    if (!given) return absl::OkStatus();
    if (k < 0 || k > kMaxLogprobs)
      return Bad("logprobs", absl::StrFormat("must be in [0, %d], got %d", kMaxLogprobs, k));
    r->logprobs = k;
  } else {
    bool want = false;
    if (absl::Status s = OptBool(body, "logprobs", &want); !s.ok()) return s;
    bool given = false;
    int k = 0;
    if (absl::Status s = OptInt(body, "top_logprobs", &k, &given); !s.ok()) return s;
    if (given && (k < 0 || k > kMaxLogprobs)) {
      return Bad("top_logprobs", absl::StrFormat("must be in [0, %d], got %d", kMaxLogprobs, k));
    }
    if (given && k > 0 && !want) return Bad("top_logprobs", "requires logprobs: true");
    if (want) r->logprobs = k;
  }
  // The engine reports logprobs when asked for at least one alternative; the
  // chosen token's logprob comes with it (extra alternatives are dropped).
  r->sampling.logprobs = std::max(r->logprobs, r->logprobs >= 0 ? 1 : 0);
  return absl::OkStatus();
}

// Parameters of the OpenAI API this server does not implement: a 400 naming
// them unless they hold their neutral value.
absl::Status RejectUnsupported(const Json& body, const OpenAIRequest& r) {
  if (const Json* lb = Field(body, "logit_bias"); lb != nullptr && !(lb->is_object() && lb->empty())) {
    return Bad("logit_bias", "is not supported");
  }
  if (r.endpoint == Endpoint::kCompletions) {
    bool echo = false;
    if (absl::Status s = OptBool(body, "echo", &echo); !s.ok()) return s;
    if (echo) return Bad("echo", "only false is supported");
    if (const Json* sfx = Field(body, "suffix");
        sfx != nullptr && !(sfx->is_string() && sfx->get<std::string>().empty())) {
      return Bad("suffix", "is not supported");
    }
    bool given = false;
    int best_of = 0;
    if (absl::Status s = OptInt(body, "best_of", &best_of, &given); !s.ok()) return s;
    if (given && best_of != r.n) return Bad("best_of", "is not supported (it must equal n)");
  } else {
    for (const char* key : {"tools", "functions"}) {
      if (const Json* t = Field(body, key); t != nullptr && !(t->is_array() && t->empty())) {
        return Bad(key, "tool calling is not supported");
      }
    }
    if (const Json* rf = Field(body, "response_format"); rf != nullptr) {
      const Json* type = rf->is_object() ? Field(*rf, "type") : nullptr;
      if (type == nullptr || !type->is_string() || type->get<std::string>() != "text") {
        return Bad("response_format", "only {\"type\": \"text\"} is supported");
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<OpenAIRequest> ParseOpenAIRequest(Endpoint endpoint, std::string_view body_text,
                                                 const HttpLimits& limits) {
  Json body;
  try {
    body = Json::parse(body_text.begin(), body_text.end());
  } catch (const Json::exception& e) {
    // parse_error, or out_of_range for a number that overflows a double (-1e999).
    // e.what(): "[json.exception.parse_error.101] parse error at line 1, ..."
    std::string what = e.what();
    if (size_t p = what.find("] "); p != std::string::npos) what = what.substr(p + 2);
    return Bad("body", "invalid JSON: " + what);
  }
  if (!body.is_object()) return WrongType("body", "a JSON object", body);

  OpenAIRequest r;
  r.endpoint = endpoint;
  if (const Json* m = Field(body, "model"); m != nullptr) {
    if (!m->is_string()) return WrongType("model", "a string", *m);
    r.model = m->get<std::string>();
  }
  absl::Status s = endpoint == Endpoint::kCompletions ? ParsePrompt(body, &r) : ParseMessages(body, limits, &r);
  if (!s.ok()) return s;

  // max_tokens; chat's newer max_completion_tokens wins when both are given.
  bool given = false;
  if (s = OptInt(body, "max_tokens", &r.stop.max_tokens, &given); !s.ok()) return s;
  const char* max_field = "max_tokens";
  if (endpoint == Endpoint::kChatCompletions) {
    bool mct = false;
    int v = 0;
    if (s = OptInt(body, "max_completion_tokens", &v, &mct); !s.ok()) return s;
    if (mct) {
      r.stop.max_tokens = v;
      max_field = "max_completion_tokens";
      given = true;
    }
  }
  if (!given) {
    r.stop.max_tokens =
        endpoint == Endpoint::kCompletions ? std::min(16, limits.max_tokens_cap) : limits.max_tokens_cap;
  } else if (r.stop.max_tokens < 1 || r.stop.max_tokens > limits.max_tokens_cap) {
    return Bad(max_field, absl::StrFormat("must be in [1, %d] (--max-tokens-cap), got %d", limits.max_tokens_cap,
                                          r.stop.max_tokens));
  }

  if (s = OptInt(body, "n", &r.n, &given); !s.ok()) return s;
  if (r.n < 1 || r.n > limits.max_n) return Bad("n", absl::StrFormat("must be in [1, %d], got %d", limits.max_n, r.n));
  if (s = ParseSampling(body, &r.sampling); !s.ok()) return s;
  if (s = ParseStop(body, limits, &r.stop); !s.ok()) return s;
  if (s = ParseLogprobs(body, &r); !s.ok()) return s;

  if (s = OptBool(body, "stream", &r.stream); !s.ok()) return s;
  if (const Json* so = Field(body, "stream_options"); so != nullptr) {
    if (!so->is_object()) return WrongType("stream_options", "an object", *so);
    if (!r.stream) return Bad("stream_options", "is only allowed when stream is true");
    if (const Json* iu = Field(*so, "include_usage"); iu != nullptr) {
      if (!iu->is_boolean()) return WrongType("stream_options.include_usage", "a boolean", *iu);
      r.include_usage = iu->get<bool>();
    }
  }
  if (const Json* u = Field(body, "user"); u != nullptr && !u->is_string()) return WrongType("user", "a string", *u);
  if (const Json* sid = Field(body, "session_id"); sid != nullptr) {
    if (!sid->is_string()) return WrongType("session_id", "a string", *sid);
    r.session_id = sid->get<std::string>();
    if (r.session_id.size() > 256) return Bad("session_id", "at most 256 bytes");
  }
  if (s = OptBool(body, "session_continue", &r.session_continue); !s.ok()) return s;
  if (r.session_continue && r.session_id.empty()) return Bad("session_continue", "needs a session_id");
  if (r.session_continue && r.endpoint == Endpoint::kChatCompletions) {
    return Bad("session_continue", "is for /v1/completions; chat sends the whole conversation with session_id");
  }
  if (s = RejectUnsupported(body, r); !s.ok()) return s;
  return r;
}

absl::StatusOr<GenerationRequest> ToGenerationRequest(const OpenAIRequest& r, const Tokenizer& tokenizer,
                                                      const ChatTemplate& chat_template, const HttpLimits& limits,
                                                      std::string request_id) {
  GenerationRequest g;
  g.request_id = std::move(request_id);
  const char* field = r.endpoint == Endpoint::kChatCompletions ? "messages" : "prompt";
  if (r.endpoint == Endpoint::kChatCompletions) {
    g.prompt = tokenizer.Encode(chat_template.Render(r.messages), /*add_bos=*/true);
  } else if (r.prompt_is_text) {
    g.prompt = tokenizer.Encode(r.prompt_text, /*add_bos=*/!r.session_continue);
  } else {
    if (absl::Status s = tokenizer.CheckIds(r.prompt_ids); !s.ok()) {
      return Bad("prompt", std::string(s.message()));
    }
    g.prompt = r.prompt_ids;
  }
  if (g.prompt.empty()) return Bad(field, "has no tokens");
  if (static_cast<int64_t>(g.prompt.size()) > limits.max_prompt_tokens) {
    return Bad(field, absl::StrFormat("%d tokens exceed the limit of %d (--max-prompt-tokens)", g.prompt.size(),
                                      limits.max_prompt_tokens));
  }
  if (absl::Status s = tokenizer.CheckIds(r.stop.stop_token_ids); !s.ok()) {
    return Bad("stop_token_ids", std::string(s.message()));
  }
  // Messages name the fields as the OpenAI API does ("top_p: ...").
  if (absl::Status s = r.sampling.Validate(tokenizer.vocab_size()); !s.ok()) return s;
  g.sampling = r.sampling;
  g.stop = r.stop;
  g.n = r.n;
  g.session_id = r.session_id;
  g.session_continue = r.session_continue;
  return g;
}

}  // namespace gdnserve::server::http
