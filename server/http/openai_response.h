// OpenAI response bodies: completions and chat completions (whole and as
// stream chunks), the model list, and error objects.
//
//   {"error": {"message": "top_p: must be in (0, 1]", "type": "invalid_request_error",
//              "param": "top_p", "code": "invalid_value"}}
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "engine/request.h"
#include "engine/tokenizer.h"
#include "server/http/openai_request.h"

namespace gdnserve::server::http {

// An error as the OpenAI API reports it; empty param / code print as null.
struct ApiError {
  int status = 400;
  std::string type = "invalid_request_error";
  std::string message;
  std::string param;
  std::string code;
};

// HTTP status, type and code for a Status: InvalidArgument 400, NotFound 404,
// Unauthenticated 401, PermissionDenied 403, ResourceExhausted 429,
// Unavailable 503, DeadlineExceeded 504, others 500. The param is the field
// path the message starts with ("stop[1]: ..." -> "stop[1]"), if any.
ApiError ErrorFromStatus(const absl::Status& status);
// An error with the type that goes with its status (429 rate_limit_error,
// 5xx server_error, else invalid_request_error).
ApiError MakeApiError(int status, std::string message, std::string code = "", std::string param = "");
std::string ErrorBody(const ApiError& error);

// "stop" for stop strings, stop tokens and EOS; "length"; "abort" for a
// cancelled request (vLLM's word); null while running.
std::string_view OpenAIFinishReason(FinishReason reason);

// The new output of one choice, or (ChoiceAssembler::total) all of it.
struct ChoiceDelta {
  int index = 0;
  std::string text;
  std::vector<TokenLogprobs> logprobs;  // when logprobs were asked for
  std::vector<int64_t> text_offsets;    // per logprobs entry: where its text starts in the whole text
  FinishReason finish = FinishReason::kNone;
};

// Turns one sample's engine deltas into what the client sees: for chat, the
// template's strip_leading_space drops one space at the start of the answer,
// the same way whether streamed or not, so chunks concatenate to the whole.
class ChoiceAssembler {
 public:
  ChoiceAssembler(int index, bool strip_leading_space, bool keep_total);
  ChoiceDelta Apply(const SampleDelta& delta);
  const ChoiceDelta& total() const { return total_; }

 private:
  bool strip_;
  bool keep_total_;
  bool started_ = false;  // some text has been seen
  int64_t text_bytes_ = 0;
  ChoiceDelta total_;
};

// usage.prompt_tokens_details.cached_tokens: prompt tokens restored from the
// prefix cache or a session snapshot rather than run (0 on a cold request).
struct Usage {
  int prompt_tokens = 0;
  int completion_tokens = 0;
  int cached_tokens = 0;
};

// What every body of one request shares.
struct ResponseMeta {
  Endpoint endpoint = Endpoint::kCompletions;
  std::string id;  // "cmpl-..." / "chatcmpl-..."
  int64_t created = 0;
  std::string model;
  int logprobs = -1;  // alternatives to report per token; -1: none
};

// The non-streamed response: one choice per sample, in index order.
std::string CompletionBody(const ResponseMeta& meta, const std::vector<ChoiceDelta>& choices, const Usage& usage,
                           const Tokenizer& tokenizer);

// One stream chunk (the JSON of one SSE event) for one choice. Chat: with
// `role`, the delta carries "role": "assistant". `usage_null` adds
// "usage": null (stream_options.include_usage).
std::string ChunkBody(const ResponseMeta& meta, const ChoiceDelta& delta, bool role, bool usage_null,
                      const Tokenizer& tokenizer);
// The last chunk of an include_usage stream: no choices, the usage.
std::string UsageChunkBody(const ResponseMeta& meta, const Usage& usage);
// An error inside a stream (after the 200 was sent).
std::string StreamErrorBody(const ApiError& error);

// GET /v1/models.
std::string ModelListBody(const std::string& model, int64_t created, int max_model_len);
std::string ModelBody(const std::string& model, int64_t created, int max_model_len);

}  // namespace gdnserve::server::http
