#include "server/http/completions.h"

#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <random>
#include <utility>
#include <vector>

#include "absl/strings/str_format.h"
#include "httplib.h"
#include "server/http/output_channel.h"
#include "server/http/request_metrics.h"

namespace gdnserve::server::http {
namespace {

using std::chrono::milliseconds;

constexpr char kJson[] = "application/json";

std::string NewRequestId(Endpoint endpoint) {
  // A random start per process keeps ids unique across restarts in logs; the
  // counter keeps them unique within one.
  static std::atomic<uint64_t> next{std::random_device{}() * 0x9E3779B97F4A7C15ull};
  return absl::StrFormat("%s-%016x", endpoint == Endpoint::kCompletions ? "cmpl" : "chatcmpl", next.fetch_add(1));
}

int64_t UnixNow() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

double SecondsSince(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

std::string Event(const std::string& json) { return "data: " + json + "\n\n"; }

void Merge(ChoiceDelta& into, ChoiceDelta&& d) {
  into.text += d.text;
  into.logprobs.insert(into.logprobs.end(), d.logprobs.begin(), d.logprobs.end());
  into.text_offsets.insert(into.text_offsets.end(), d.text_offsets.begin(), d.text_offsets.end());
  if (d.finish != FinishReason::kNone) into.finish = d.finish;
}

// The state one request shares between its handler and its stream provider.
struct Generation {
  Generation(const HttpModel& model, Endpoint endpoint, const OpenAIRequest& request, InFlight& in_flight)
      : model(model), in_flight(in_flight), channel(std::make_shared<OutputChannel>(model.metrics)) {
    meta.endpoint = endpoint;
    meta.id = NewRequestId(endpoint);
    meta.created = UnixNow();
    meta.model = model.name;
    meta.logprobs = request.logprobs;
    const bool strip = endpoint == Endpoint::kChatCompletions && model.chat_template.strip_leading_space;
    for (int i = 0; i < request.n; ++i) choices.emplace_back(i, strip, /*keep_total=*/!request.stream);
    log.id = meta.id;
    log.stream = request.stream;
  }
  ~Generation() {
    // Torn down before the final output (client gone, write failed, server
    // stopping): nobody will read the rest.
    if (submitted && !finished) model.engine->Cancel(handle);
    if (submitted) in_flight.Remove(handle);
  }

  // Takes what the engine queued; returns the new text per choice, in index
  // order, with consecutive deltas of a choice merged.
  std::map<int, ChoiceDelta> Take(std::vector<RequestOutput>& outs) {
    std::map<int, ChoiceDelta> deltas;
    for (RequestOutput& o : outs) {
      for (const SampleDelta& d : o.samples) {
        if (d.index < 0 || d.index >= static_cast<int>(choices.size())) continue;
        if (d.index == 0 && d.finish != FinishReason::kNone) first_finish = d.finish;
        ChoiceDelta cd = choices[d.index].Apply(d);
        auto [it, inserted] = deltas.try_emplace(d.index, std::move(cd));
        if (!inserted) Merge(it->second, std::move(cd));
      }
      if (o.finished) {
        finished = true;
        error = o.error;
        usage = {o.prompt_tokens, o.completion_tokens, o.cached_prompt_tokens};
      }
    }
    outs.clear();
    return deltas;
  }

  void Log(int status) {
    if (!request_log) return;
    log.status = status;
    log.prompt_tokens = usage.prompt_tokens;
    log.completion_tokens = usage.completion_tokens;
    log.seconds = SecondsSince(start);
    log.finish_reason = error.ok() ? std::string(FinishReasonName(first_finish)) : std::string(error.message());
    request_log(log);
  }

  const HttpModel& model;
  InFlight& in_flight;
  std::shared_ptr<OutputChannel> channel;
  ResponseMeta meta;
  std::vector<ChoiceAssembler> choices;
  Clock::time_point start = Clock::now();
  RequestLogger request_log;
  RequestLogEntry log;

  bool submitted = false;
  uint64_t handle = 0;
  bool finished = false;
  absl::Status error;
  Usage usage;
  FinishReason first_finish = FinishReason::kNone;
};

// One call of cpp-httplib's chunked content provider: waits for output (at
// most one heartbeat), writes it as SSE events, and ends the stream after the
// final output. Returning false aborts the response (the write failed).
bool Pump(Generation& g, bool include_usage, int heartbeat_ms, bool& roles_sent, httplib::DataSink& sink) {
  const Tokenizer& tok = g.model.engine->tokenizer();
  std::string buf;
  if (!roles_sent) {
    // Chat streams open each choice with its role, as OpenAI's do.
    roles_sent = true;
    if (g.meta.endpoint == Endpoint::kChatCompletions) {
      for (size_t i = 0; i < g.choices.size(); ++i) {
        ChoiceDelta open;
        open.index = static_cast<int>(i);
        buf += Event(ChunkBody(g.meta, open, /*role=*/true, include_usage, tok));
      }
    }
  }
  std::vector<RequestOutput> outs;
  const int wait_ms = heartbeat_ms > 0 ? heartbeat_ms : 1000;
  if (!buf.empty() || g.channel->Wait(milliseconds(wait_ms), &outs)) {
    for (auto& [index, delta] : g.Take(outs)) {
      if (delta.text.empty() && delta.logprobs.empty() && delta.finish == FinishReason::kNone) continue;
      buf += Event(ChunkBody(g.meta, delta, /*role=*/false, include_usage, tok));
    }
  } else if (heartbeat_ms > 0) {
    buf += ": keep-alive\n\n";  // an SSE comment: clients ignore it; a gone client fails the write
  }
  if (g.finished) {
    if (!g.error.ok()) {
      buf += Event(StreamErrorBody(ErrorFromStatus(g.error)));
    } else if (include_usage) {
      buf += Event(UsageChunkBody(g.meta, g.usage));
    }
    buf += "data: [DONE]\n\n";
  }
  if (!buf.empty() && !sink.write(buf.data(), buf.size())) {
    g.Log(499);  // nginx's "client closed request"; ~Generation cancels
    return false;
  }
  if (g.finished) {
    g.Log(200);
    sink.done();
  }
  return true;
}

}  // namespace

void InFlight::Add(Engine* engine, uint64_t handle) {
  std::lock_guard<std::mutex> lock(mu_);
  handles_[handle] = engine;
  if (cancel_all_) engine->Cancel(handle);
}

void InFlight::Remove(uint64_t handle) {
  std::lock_guard<std::mutex> lock(mu_);
  handles_.erase(handle);
  if (handles_.empty()) empty_.notify_all();
}

bool InFlight::WaitEmpty(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  return empty_.wait_for(lock, timeout, [this] { return handles_.empty(); });
}

void InFlight::CancelAll() {
  std::lock_guard<std::mutex> lock(mu_);
  cancel_all_ = true;
  for (const auto& [handle, engine] : handles_) engine->Cancel(handle);
}

void SendError(httplib::Response& res, const ApiError& error) {
  res.status = error.status;
  if (error.status == 429) res.set_header("Retry-After", "1");
  res.set_content(ErrorBody(error), kJson);
}

void ServeGeneration(Endpoint endpoint, const httplib::Request& req, httplib::Response& res, const HttpModel& model,
                     InFlight& in_flight, const GenerationOptions& options) {
  auto fail = [&](const absl::Status& status) {
    RecordRejected(model.metrics, status.code());
    SendError(res, ErrorFromStatus(status));
  };
  absl::StatusOr<OpenAIRequest> parsed = ParseOpenAIRequest(endpoint, req.body, model.limits);
  if (!parsed.ok()) return fail(parsed.status());
  if (!parsed->model.empty() && parsed->model != model.name) {
    RecordRejected(model.metrics, absl::StatusCode::kInvalidArgument);
    // 400 naming the field, as for any other bad value (GET /v1/models/{id}
    // of an unknown model is a 404: there the model is the resource).
    return SendError(res, MakeApiError(400,
                                       "model: the model `" + parsed->model + "` does not exist; this server serves `" +
                                           model.name + "`",
                                       "model_not_found", "model"));
  }
  auto g = std::make_shared<Generation>(model, endpoint, *parsed, in_flight);
  g->request_log = options.request_log;
  g->log.path = req.path;
  absl::StatusOr<GenerationRequest> request =
      ToGenerationRequest(*parsed, model.engine->tokenizer(), model.chat_template, model.limits, g->meta.id);
  if (!request.ok()) return fail(request.status());

  absl::StatusOr<uint64_t> handle = model.engine->Submit(std::move(*request), g->channel->MakeSink());
  if (!handle.ok()) return fail(handle.status());
  g->submitted = true;
  g->handle = *handle;
  in_flight.Add(model.engine, *handle);

  if (!parsed->stream) {
    std::vector<RequestOutput> outs;
    while (!g->finished) {
      g->channel->Wait(milliseconds(1000), &outs);
      g->Take(outs);
    }
    if (!g->error.ok()) {
      const ApiError e = ErrorFromStatus(g->error);
      g->Log(e.status);
      return SendError(res, e);
    }
    std::vector<ChoiceDelta> totals;
    for (const ChoiceAssembler& c : g->choices) totals.push_back(c.total());
    res.set_content(CompletionBody(g->meta, totals, g->usage, model.engine->tokenizer()), kJson);
    g->Log(200);
    return;
  }

  res.set_header("Cache-Control", "no-cache");
  res.set_header("X-Accel-Buffering", "no");  // no proxy buffering of the event stream
  const bool include_usage = parsed->include_usage;
  const int heartbeat_ms = options.sse_heartbeat_ms;
  auto roles_sent = std::make_shared<bool>(false);
  res.set_chunked_content_provider(
      "text/event-stream",
      [g, include_usage, heartbeat_ms, roles_sent](size_t /*offset*/, httplib::DataSink& sink) {
        return Pump(*g, include_usage, heartbeat_ms, *roles_sent, sink);
      },
      // Runs when the response is destroyed; the last reference to g goes
      // with it (cancelling an unfinished request).
      [g](bool /*success*/) mutable { g.reset(); });
}

}  // namespace gdnserve::server::http
