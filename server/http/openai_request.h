// OpenAI /v1/completions and /v1/chat/completions request bodies: JSON
// parsing and validation (errors name the field, as the gRPC side's do), then
// tokenization into an engine GenerationRequest.
//
// Parameters follow the OpenAI API and vLLM's extensions: model, prompt
// (a string, a list of one string, token ids, or a list of one token-id list)
// / messages, max_tokens (chat also max_completion_tokens), temperature,
// top_p, n, stop (string or list), seed, presence_penalty, frequency_penalty,
// logprobs (completions: int 0..20; chat: bool with top_logprobs 0..20),
// stream, stream_options.include_usage, echo (false only), and top_k, min_p,
// repetition_penalty, ignore_eos, stop_token_ids. null means "not given".
// Parameters the server cannot honour (batched prompts, echo, suffix,
// logit_bias, tools, a non-text response_format, best_of != n) are a 400
// naming them; other unknown fields are ignored, as vLLM ignores them.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/request.h"
#include "engine/tokenizer.h"
#include "server/http/chat_template.h"

namespace gdnserve::server::http {

enum class Endpoint { kCompletions, kChatCompletions };

// Server-side limits, with the same meaning as the gRPC side's RequestLimits
// (server/convert.h) and the engine's own checks.
struct HttpLimits {
  int max_prompt_tokens = 8192;
  int max_tokens_cap = 4096;  // also the default max_tokens of a chat request
  int max_n = 16;
  int max_stop_strings = 16;
  int max_stop_bytes = 256;
  int max_messages = 4096;
};

// A validated request, before tokenization.
struct OpenAIRequest {
  Endpoint endpoint = Endpoint::kCompletions;
  std::string model;  // "" when omitted
  // Completions: the prompt, as text or as token ids.
  bool prompt_is_text = true;
  std::string prompt_text;
  std::vector<int32_t> prompt_ids;
  // Chat: the conversation.
  std::vector<ChatMessage> messages;

  SamplingParams sampling;  // .logprobs: what the engine computes (>= 1 when logprobs are reported)
  StopConditions stop;      // .max_tokens: the request's or the default (completions 16, chat the cap)
  int n = 1;
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  int logprobs = -1;           // alternatives to report per token; -1: no logprobs
  // gdnserve extension (README "Reusing state"): the engine's session_id.
  // Chat and completions send the whole history (a stored session that is a
  // prefix of the tokenized prompt saves its re-prefill); completions may set
  // session_continue to send only the new prompt (no BOS), appended to the session.
  std::string session_id;
  bool session_continue = false;
};

// Parses and validates a request body. InvalidArgument messages start with
// the field path ("messages[1].content: ...", "stop[0]: ...", "body: ...").
absl::StatusOr<OpenAIRequest> ParseOpenAIRequest(Endpoint endpoint, std::string_view body, const HttpLimits& limits);

// Tokenizes the prompt (chat: renders `chat_template` first; text gets BOS as
// on the gRPC side), checks token ids and the prompt length, and builds the
// engine request. Errors name "prompt" or "messages".
absl::StatusOr<GenerationRequest> ToGenerationRequest(const OpenAIRequest& request, const Tokenizer& tokenizer,
                                                      const ChatTemplate& chat_template, const HttpLimits& limits,
                                                      std::string request_id);

}  // namespace gdnserve::server::http
