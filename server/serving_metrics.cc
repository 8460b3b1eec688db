#include "server/serving_metrics.h"

#include <span>
#include <vector>

namespace gdnserve::server {
namespace {

using metrics::Counter;
using metrics::Gauge;
using metrics::Histogram;
using metrics::Labels;
using metrics::Registry;

// vLLM v1's boundaries (vllm/v1/metrics/loggers.py, PrometheusStatLogger).
// time_to_first_token_seconds:
constexpr double kTtftBuckets[] = {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1,  0.25,  0.5,   0.75,
                                   1.0,   2.5,   5.0,  7.5,  10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0};
// inter_token_latency_seconds (and the older time_per_output_token_seconds):
constexpr double kInterTokenBuckets[] = {0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2,  0.3,  0.4, 0.5,
                                         0.75, 1.0,   2.5,  5.0,   7.5, 10.0, 20.0, 40.0, 80.0};
// e2e_request_latency, request_queue_time, request_prefill_time, request_decode_time:
constexpr double kRequestLatencyBuckets[] = {0.3,  0.5,  0.8,  1.0,  1.5,   2.0,   2.5,   5.0,   10.0,   15.0,  20.0,
                                             30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0};
// iteration_tokens_total:
constexpr double kIterationTokenBuckets[] = {1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384};
// gdnserve's own: a decode step of a small batch takes ~1 ms on a GPU and
// tens of ms on a CPU; a long chunked prefill step up to seconds.
constexpr double kEngineStepBuckets[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075,
                                         0.1,    0.25,  0.5,    1.0,   2.5,  5.0,   10.0};

constexpr std::array<std::string_view, 4> kKnownFinishReasons = {"length", "stop", "eos", "cancelled"};

Labels ModelLabels(std::string_view model_name) { return {{"model_name", std::string(model_name)}}; }

Gauge& AddGauge(Registry& r, std::string_view model, std::string name, std::string help) {
  return metrics::BuildGauge().Name(std::move(name)).Help(std::move(help)).Register(r).Add(ModelLabels(model));
}

Counter& AddCounter(Registry& r, std::string_view model, std::string name, std::string help) {
  return metrics::BuildCounter().Name(std::move(name)).Help(std::move(help)).Register(r).Add(ModelLabels(model));
}

Histogram& AddHistogram(Registry& r, std::string_view model, std::string name, std::string help,
                        std::span<const double> buckets) {
  return metrics::BuildHistogram()
      .Name(std::move(name))
      .Help(std::move(help))
      .Buckets({buckets.begin(), buckets.end()})
      .Register(r)
      .Add(ModelLabels(model));
}

Gauge& AddBuildInfo(Registry& r, std::string_view model, const BuildInfo& build) {
  Gauge& g = metrics::BuildGauge()
                 .Name("gdnserve_build_info")
                 .Help("Build and model information; the value is always 1.")
                 .Register(r)
                 .Add({{"version", build.version}, {"device", build.device}, {"model_name", std::string(model)}});
  g.Set(1);
  return g;
}

}  // namespace

// Families register in member order, which is the order /metrics lists them.
ServingMetrics::ServingMetrics(Registry& r, std::string_view model, const BuildInfo& build)
    : num_requests_running(
          AddGauge(r, model, "gdnserve_num_requests_running", "Number of requests in model execution batches.")),
      num_requests_waiting(
          AddGauge(r, model, "gdnserve_num_requests_waiting", "Number of requests waiting to be processed.")),
      state_slots_used(AddGauge(r, model, "gdnserve_state_slots_used", "Recurrent-state slots in use.")),
      state_slots_total(AddGauge(r, model, "gdnserve_state_slots_total", "Recurrent-state slots in the pool.")),
      state_bytes_per_sequence(AddGauge(r, model, "gdnserve_state_bytes_per_sequence",
                                        "Bytes of recurrent state (all layers) one sequence holds.")),
      time_to_first_token_seconds(AddHistogram(r, model, "gdnserve_time_to_first_token_seconds",
                                               "Histogram of time to first token in seconds.", kTtftBuckets)),
      inter_token_latency_seconds(AddHistogram(r, model, "gdnserve_inter_token_latency_seconds",
                                               "Histogram of inter-token latency in seconds.", kInterTokenBuckets)),
      e2e_request_latency_seconds(AddHistogram(r, model, "gdnserve_e2e_request_latency_seconds",
                                               "Histogram of e2e request latency in seconds.", kRequestLatencyBuckets)),
      request_queue_time_seconds(AddHistogram(r, model, "gdnserve_request_queue_time_seconds",
                                              "Histogram of time spent in WAITING phase for request.",
                                              kRequestLatencyBuckets)),
      request_prefill_time_seconds(AddHistogram(r, model, "gdnserve_request_prefill_time_seconds",
                                                "Histogram of time spent in PREFILL phase for request.",
                                                kRequestLatencyBuckets)),
      request_decode_time_seconds(AddHistogram(r, model, "gdnserve_request_decode_time_seconds",
                                               "Histogram of time spent in DECODE phase for request.",
                                               kRequestLatencyBuckets)),
      iteration_tokens_total(AddHistogram(r, model, "gdnserve_iteration_tokens_total",
                                          "Histogram of number of tokens per engine_step.", kIterationTokenBuckets)),
      engine_step_seconds(AddHistogram(r, model, "gdnserve_engine_step_seconds",
                                       "Histogram of engine step wall time in seconds.", kEngineStepBuckets)),
      prompt_tokens_total(AddCounter(r, model, "gdnserve_prompt_tokens_total", "Number of prefill tokens processed.")),
      generation_tokens_total(
          AddCounter(r, model, "gdnserve_generation_tokens_total", "Number of generation tokens processed.")),
      prefix_cache_queries_total(AddCounter(r, model, "gdnserve_prefix_cache_queries_total",
                                            "Prompt tokens looked up in the prefix state cache.")),
      prefix_cache_hits_total(AddCounter(r, model, "gdnserve_prefix_cache_hits_total",
                                         "Prompt tokens restored from the prefix state cache.")),
      prefix_cache_bytes(
          AddGauge(r, model, "gdnserve_prefix_cache_bytes", "Host memory held by the prefix state cache.")),
      sessions(AddGauge(r, model, "gdnserve_sessions", "Session snapshots stored.")),
      session_bytes(AddGauge(r, model, "gdnserve_session_bytes", "Host memory held by session snapshots.")),
      build_info(AddBuildInfo(r, model, build)),
      model_name_(model),
      request_success_(metrics::BuildCounter()
                           .Name("gdnserve_request_success_total")
                           .Help("Count of successfully processed requests.")
                           .Register(r)),
      request_errors_(metrics::BuildCounter()
                          .Name("gdnserve_request_errors_total")
                          .Help("Count of failed requests, by status code.")
                          .Register(r)) {
  for (size_t i = 0; i < kKnownFinishReasons.size(); ++i) {
    const std::string_view reason = kKnownFinishReasons[i];
    known_reasons_[i] = {
        reason, &request_success_.Add({{"model_name", model_name_}, {"finished_reason", std::string(reason)}})};
  }
}

Counter& ServingMetrics::RequestSuccess(std::string_view finished_reason) {
  for (const auto& [reason, counter] : known_reasons_) {
    if (reason == finished_reason) return *counter;
  }
  return request_success_.Add({{"model_name", model_name_}, {"finished_reason", std::string(finished_reason)}});
}

Counter& ServingMetrics::RequestError(absl::StatusCode code) {
  return request_errors_.Add({{"model_name", model_name_}, {"code", absl::StatusCodeToString(code)}});
}

}  // namespace gdnserve::server
