// Where serving metrics are recorded (DESIGN.md 5), in one place for every
// front end (HTTP now; gRPC can call the same): per request from the engine's
// outputs, per engine step from a StepObserver, and the scheduler gauges from
// Engine::Stats() when /metrics is scraped.
//
// Per request (RequestMetrics::OnOutput, called from the request's sink):
//   inter_token_latency  gap between consecutive tokens of a sample, at delivery
//   on the final output, from RequestTimes:
//   e2e = finished - arrival         queue   = scheduled - arrival
//   ttft = first_token - arrival     prefill = first_token - scheduled
//   decode = finished - first_token  (phases a request never reached are skipped)
//   prompt_tokens_total (when the request was admitted), generation_tokens_total,
//   request_success_total{finished_reason = sample 0's, by FinishReasonName}
//   or, when output.error is set, request_errors_total{code}.
// Requests refused before the engine ran them (validation, queue full,
// draining) count in request_errors_total{code} through RecordRejected.
#pragma once

#include <vector>

#include "absl/status/status.h"
#include "engine/engine.h"
#include "engine/request.h"
#include "server/serving_metrics.h"

namespace gdnserve::server {

// One request's recorder. Not thread-safe: the engine calls a request's sink
// from its one delivery thread. Every update is an atomic (no lock, no
// allocation after the first output), so it is cheap on that thread.
class RequestMetrics {
 public:
  explicit RequestMetrics(ServingMetrics* metrics) : metrics_(metrics) {}  // null: records nothing
  void OnOutput(const RequestOutput& output);

 private:
  ServingMetrics* metrics_;
  std::vector<Clock::time_point> last_token_;  // per sample index
  FinishReason first_sample_finish_ = FinishReason::kNone;
  bool done_ = false;
};

// A request that failed before or at Submit (null metrics: no-op).
void RecordRejected(ServingMetrics* metrics, absl::StatusCode code);

// Engine step metrics: gdnserve_iteration_tokens_total and
// gdnserve_engine_step_seconds. Pass to the Engine constructor.
class StepMetrics final : public StepObserver {
 public:
  explicit StepMetrics(ServingMetrics& metrics) : metrics_(metrics) {}
  void OnStep(int num_tokens, int num_decode, int num_prefill_tokens, double seconds) override;

 private:
  ServingMetrics& metrics_;
};

// Sets num_requests_running/waiting and state_slots_used/total from the
// engine's counters (cheap; done on each /metrics scrape).
void RefreshEngineGauges(ServingMetrics& metrics, const EngineStats& stats);

}  // namespace gdnserve::server
