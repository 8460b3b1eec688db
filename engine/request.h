// What a client asks of the engine and what the engine hands back, in engine
// types (the server converts from and to the wire formats).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "engine/sampler.h"

namespace gdnserve {

using Clock = std::chrono::steady_clock;

enum class FinishReason { kNone, kLength, kStop, kEos, kCancelled };
// "length", "stop", "eos", "cancelled" ("" for kNone).
std::string_view FinishReasonName(FinishReason reason);

struct StopConditions {
  int max_tokens = 16;
  std::vector<std::string> stop_strings;  // never emitted
  std::vector<int32_t> stop_token_ids;    // finish after such a token; no text for it
  bool ignore_eos = false;
};

struct GenerationRequest {
  std::string request_id;        // for logs and responses; the engine does not need it unique
  std::vector<int32_t> prompt;   // token ids, at least one
  SamplingParams sampling;
  StopConditions stop;
  int n = 1;                     // parallel samples
  Clock::time_point deadline = Clock::time_point::max();
  // Sessions (issue 10). With a session_id, the finished request's state
  // (sample 0) is kept as the session's snapshot. session_continue: `prompt`
  // holds only the new tokens, appended to the session's history (NotFound
  // when the session is unknown, expired or evicted). Without it, `prompt` is
  // the whole history, and a stored session that is a prefix of it saves the
  // re-prefill of that prefix (else the prompt is prefilled as usual).
  std::string session_id;
  bool session_continue = false;
  bool want_prompt_logits = false;  // tests: deliver the last prompt token's logits (sample 0)
};

// Per-token logprob data (when sampling.logprobs > 0 it includes the top-n).
struct TokenLogprobs {
  int32_t token = 0;
  float logprob = 0.0f;
  std::vector<TokenLogprob> top;
};

// One sample's new output since the previous delivery.
struct SampleDelta {
  int index = 0;
  std::vector<int32_t> token_ids;
  std::string text;
  std::vector<TokenLogprobs> logprobs;  // filled when sampling.logprobs > 0
  FinishReason finish = FinishReason::kNone;
};

// Timing of a request, for metrics and logs (set when known).
struct RequestTimes {
  Clock::time_point arrival;
  Clock::time_point scheduled;    // admitted into a slot
  Clock::time_point first_token;
  Clock::time_point finished;
};

struct RequestOutput {
  std::vector<SampleDelta> samples;  // only samples with something new
  bool finished = false;             // every sample is finished: the last delivery
  absl::Status error;                // non-OK: the request failed (also finished)
  int prompt_tokens = 0;             // with session_continue: the session's history plus the new tokens
  int cached_prompt_tokens = 0;      // of those, restored from a snapshot (session or prefix cache), not run
  int completion_tokens = 0;         // over all samples, so far
  std::vector<float> prompt_logits;  // want_prompt_logits: on the first delivery with tokens
  RequestTimes times;
};

// Receives a request's output. Called on the engine's delivery thread (one
// call at a time, in order) once per step that produced something for the
// request; must not block (queue and return): a slow sink delays every
// request's outputs, and past a bound the engine's next steps.
class RequestSink {
 public:
  virtual ~RequestSink() = default;
  virtual void OnOutput(RequestOutput output) = 0;
};

}  // namespace gdnserve
