#include "server/http/request_metrics.h"

#include <chrono>
#include <mutex>

namespace gdnserve::server {
namespace {

bool Set(Clock::time_point t) { return t != Clock::time_point(); }

double Seconds(Clock::time_point from, Clock::time_point to) {
  return std::chrono::duration<double>(to - from).count();
}

}  // namespace

void RequestMetrics::OnOutput(const RequestOutput& out) {
  if (metrics_ == nullptr || done_) return;
  ServingMetrics& m = *metrics_;
  const Clock::time_point now = Clock::now();
  for (const SampleDelta& d : out.samples) {
    if (d.index < 0) continue;
    if (static_cast<size_t>(d.index) >= last_token_.size()) last_token_.resize(d.index + 1);
    if (d.index == 0 && d.finish != FinishReason::kNone) first_sample_finish_ = d.finish;
    const int k = static_cast<int>(d.token_ids.size());
    if (k == 0) continue;
    Clock::time_point& last = last_token_[d.index];
    // A sample's first token has no predecessor (that gap is the TTFT); more
    // than one token in a delivery shares the gap since the previous one.
    if (Set(last)) {
      const double gap = Seconds(last, now) / k;
      for (int i = 0; i < k; ++i) m.inter_token_latency_seconds.Observe(gap);
    } else {
      for (int i = 1; i < k; ++i) m.inter_token_latency_seconds.Observe(0.0);
    }
    last = now;
  }
  if (!out.finished) return;
  done_ = true;
  if (!out.error.ok()) {
    m.RequestError(out.error.code()).Increment();
    return;
  }
  const RequestTimes& t = out.times;
  if (Set(t.arrival) && Set(t.finished)) m.e2e_request_latency_seconds.Observe(Seconds(t.arrival, t.finished));
  if (Set(t.arrival) && Set(t.scheduled)) m.request_queue_time_seconds.Observe(Seconds(t.arrival, t.scheduled));
  if (Set(t.arrival) && Set(t.first_token)) m.time_to_first_token_seconds.Observe(Seconds(t.arrival, t.first_token));
  if (Set(t.scheduled) && Set(t.first_token)) {
    m.request_prefill_time_seconds.Observe(Seconds(t.scheduled, t.first_token));
  }
  if (Set(t.first_token) && Set(t.finished)) m.request_decode_time_seconds.Observe(Seconds(t.first_token, t.finished));
  if (Set(t.scheduled)) m.prompt_tokens_total.Increment(out.prompt_tokens);
  m.generation_tokens_total.Increment(out.completion_tokens);
  const FinishReason reason =
      first_sample_finish_ != FinishReason::kNone ? first_sample_finish_ : FinishReason::kCancelled;
  m.RequestSuccess(FinishReasonName(reason)).Increment();
}

void RecordRejected(ServingMetrics* metrics, absl::StatusCode code) {
  if (metrics != nullptr) metrics->RequestError(code).Increment();
}

void StepMetrics::OnStep(int num_tokens, int num_decode, int num_prefill_tokens, double seconds) {
  metrics_.iteration_tokens_total.Observe(num_tokens);
  metrics_.engine_step_seconds.Observe(seconds);
}

void RefreshEngineGauges(ServingMetrics& m, const EngineStats& s) {
  m.num_requests_running.Set(s.requests_running);
  m.num_requests_waiting.Set(s.requests_waiting);
  m.state_slots_used.Set(s.slots_used);
  m.state_slots_total.Set(s.slots_total);
  m.prefix_cache_bytes.Set(static_cast<double>(s.prefix_cache_bytes));
  m.sessions.Set(static_cast<double>(s.sessions));
  m.session_bytes.Set(static_cast<double>(s.session_bytes));
  // The engine's totals are cumulative: add what is new since the last scrape.
  static std::mutex mu;
  std::lock_guard<std::mutex> lock(mu);
  m.prefix_cache_queries_total.Increment(static_cast<double>(s.prefix_cache_query_tokens) -
                                         m.prefix_cache_queries_total.Value());
  m.prefix_cache_hits_total.Increment(static_cast<double>(s.prefix_cache_hit_tokens) -
                                      m.prefix_cache_hits_total.Value());
}

}  // namespace gdnserve::server
