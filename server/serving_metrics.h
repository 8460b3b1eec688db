// gdnserve's metric set (DESIGN.md 5): vLLM's stems under the prefix
// `gdnserve_`, with vLLM's bucket boundaries, so a vLLM dashboard ports by
// swapping `vllm:` for `gdnserve_`; plus what a state-slot server adds (slots,
// state bytes, engine step time, errors by code) and a build-info gauge.
// Every series carries model_name.
//
// The members are references into the Registry (which must outlive this), so
// hot paths touch only atomics:
//   metrics.num_requests_running.Set(n);
//   metrics.time_to_first_token_seconds.Observe(seconds);
//   metrics.RequestSuccess("stop").Increment();
//
// Timings (seconds), from engine/request.h's RequestTimes:
//   queue   = scheduled - arrival        prefill = first_token - scheduled
//   ttft    = first_token - arrival      decode  = finished - first_token
//   e2e     = finished - arrival         inter-token = between consecutive tokens of a sample
#pragma once

#include <array>
#include <string>
#include <string_view>
#include <utility>

#include "absl/status/status.h"
#include "server/metrics.h"

namespace gdnserve::server {

struct BuildInfo {
  std::string version = "unknown";
  std::string device = "unknown";  // "cpu", "cuda:0 (NVIDIA H100)", ...
};

class ServingMetrics {
 public:
  // Registers the families (or joins them, for a second model in the same
  // registry) and creates this model's series.
  ServingMetrics(metrics::Registry& registry, std::string_view model_name, const BuildInfo& build = {});
  ServingMetrics(const ServingMetrics&) = delete;
  ServingMetrics& operator=(const ServingMetrics&) = delete;

  // Scheduler and state pool, set every engine step.
  metrics::Gauge& num_requests_running;      // gdnserve_num_requests_running
  metrics::Gauge& num_requests_waiting;      // gdnserve_num_requests_waiting
  metrics::Gauge& state_slots_used;          // gdnserve_state_slots_used
  metrics::Gauge& state_slots_total;         // gdnserve_state_slots_total
  metrics::Gauge& state_bytes_per_sequence;  // gdnserve_state_bytes_per_sequence

  // Per request (vLLM's buckets).
  metrics::Histogram& time_to_first_token_seconds;   // gdnserve_time_to_first_token_seconds
  metrics::Histogram& inter_token_latency_seconds;   // gdnserve_inter_token_latency_seconds
  metrics::Histogram& e2e_request_latency_seconds;   // gdnserve_e2e_request_latency_seconds
  metrics::Histogram& request_queue_time_seconds;    // gdnserve_request_queue_time_seconds
  metrics::Histogram& request_prefill_time_seconds;  // gdnserve_request_prefill_time_seconds
  metrics::Histogram& request_decode_time_seconds;   // gdnserve_request_decode_time_seconds

  // Per engine step: tokens run (prompt + generated; a histogram, named as
  // vLLM names it) and wall time of the step.
  metrics::Histogram& iteration_tokens_total;  // gdnserve_iteration_tokens_total
  metrics::Histogram& engine_step_seconds;     // gdnserve_engine_step_seconds

  metrics::Counter& prompt_tokens_total;      // gdnserve_prompt_tokens_total
  metrics::Counter& generation_tokens_total;  // gdnserve_generation_tokens_total

  // State reuse (issue 10), refreshed from EngineStats at scrape time. The
  // prefix cache counts tokens, as vLLM's prefix_cache_queries/hits do.
  metrics::Counter& prefix_cache_queries_total;  // gdnserve_prefix_cache_queries_total
  metrics::Counter& prefix_cache_hits_total;     // gdnserve_prefix_cache_hits_total
  metrics::Gauge& prefix_cache_bytes;            // gdnserve_prefix_cache_bytes
  metrics::Gauge& sessions;                      // gdnserve_sessions
  metrics::Gauge& session_bytes;                 // gdnserve_session_bytes

  // gdnserve_build_info{version, device, model_name} = 1.
  metrics::Gauge& build_info;

  // gdnserve_request_success_total{finished_reason}: a request that finished
  // without error, by engine/request.h's FinishReasonName ("length", "stop",
  // "eos", "cancelled"; those four exist from the start, at 0, and cost no
  // lock; another reason is created on first use).
  metrics::Counter& RequestSuccess(std::string_view finished_reason);
  // gdnserve_request_errors_total{code}: a failed request, by its status code
  // name ("INVALID_ARGUMENT", "RESOURCE_EXHAUSTED", ...; gRPC's names).
  // Created on first use (takes the family's mutex; errors are rare).
  metrics::Counter& RequestError(absl::StatusCode code);

 private:
  std::string model_name_;
  metrics::Family<metrics::Counter>& request_success_;
  metrics::Family<metrics::Counter>& request_errors_;
  std::array<std::pair<std::string_view, metrics::Counter*>, 4> known_reasons_;
};

}  // namespace gdnserve::server
