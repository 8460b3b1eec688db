// POST /v1/completions and /v1/chat/completions: parse, tokenize, submit to
// the engine with an OutputChannel as the sink, then either wait for the
// final output (one JSON body) or stream Server-Sent Events:
//
//   data: {"id": "cmpl-...", "object": "text_completion", "choices": [{"text": "..."}], ...}\n\n
//   ...
//   data: [DONE]\n\n
//
// Streaming runs in cpp-httplib's chunked content provider on the handler's
// thread. A failed write (the client went away) cancels the engine request at
// once; so does a response torn down before the final output. While nothing
// is produced (queued, long prefill) an SSE comment line is sent every
// heartbeat so a vanished client is noticed then too. A non-streamed request
// whose client disconnects runs to its end (bounded by max_tokens):
// cpp-httplib 0.11 gives the handler no socket to watch.
#pragma once

#include <cstdint>
#include <functional>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <string>
#include <unordered_map>

#include "server/log.h"
#include "absl/base/thread_annotations.h"
#include "engine/engine.h"
#include "server/http/chat_template.h"
#include "server/http/openai_request.h"
#include "server/http/openai_response.h"
#include "server/serving_metrics.h"

namespace httplib {  // cpp-httplib; only completions.cc and http_server.cc include it
struct Request;
struct Response;
}  // namespace httplib

namespace gdnserve::server::http {

// What the generation endpoints serve: set once the model is loaded, then
// immutable. The engine must stay alive until HttpServer::Stop() returns.
struct HttpModel {
  Engine* engine = nullptr;
  std::string name;  // the served model name: a request's "model" must equal it or be omitted
  HttpLimits limits;
  ChatTemplate chat_template = ChatTemplate::Default();
  ServingMetrics* metrics = nullptr;  // per-request metrics; may be null
  int64_t created = 0;                // unix seconds, for /v1/models
};

// One line of the request log, handed to HttpOptions::request_log.
using RequestLogEntry = server::RequestLogEntry;
using RequestLogger = std::function<void(const RequestLogEntry&)>;

// Engine requests being served, so Stop() can cancel them all.
class InFlight {
 public:
  // After CancelAll, a request added (one that raced with it) is cancelled at once.
  void Add(Engine* engine, uint64_t handle);
  void Remove(uint64_t handle);
  void CancelAll();
  // Waits until every request has been removed (its last bytes written or
  // its client gone), at most `timeout`; false on timeout.
  bool WaitEmpty(std::chrono::milliseconds timeout);

 private:
  std::mutex mu_;
  std::condition_variable empty_;
  std::unordered_map<uint64_t, Engine*> handles_ ABSL_GUARDED_BY(mu_);
  bool cancel_all_ ABSL_GUARDED_BY(mu_) = false;
};

struct GenerationOptions {
  int sse_heartbeat_ms = 2000;  // 0: none
  RequestLogger request_log;    // may be null
};

// Serves one request (the model is set and ready; auth has been checked).
void ServeGeneration(Endpoint endpoint, const httplib::Request& req, httplib::Response& res, const HttpModel& model,
                     InFlight& in_flight, const GenerationOptions& options);

// Writes an OpenAI error object (and Retry-After for 429).
void SendError(httplib::Response& res, const ApiError& error);

}  // namespace gdnserve::server::http
