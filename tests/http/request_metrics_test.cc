// RequestMetrics turns a request's outputs into the serving metrics: phase
// histograms from RequestTimes, tokens, success by finish reason, errors.
#include "server/http/request_metrics.h"

#include <gtest/gtest.h>

#include <chrono>

#include "server/http/output_channel.h"

namespace gdnserve::server {
namespace {

using std::chrono::milliseconds;

RequestOutput Output(int index, int tokens, FinishReason finish = FinishReason::kNone) {
  RequestOutput o;
  SampleDelta d;
  d.index = index;
  d.token_ids.assign(tokens, 7);
  d.finish = finish;
  o.samples.push_back(d);
  return o;
}

TEST(RequestMetrics, FinishedRequest) {
  metrics::Registry r;
  ServingMetrics m(r, "tiny");
  RequestMetrics rec(&m);
  const Clock::time_point t0 = Clock::now();
  rec.OnOutput(Output(0, 1));
  rec.OnOutput(Output(0, 1));
  RequestOutput last = Output(0, 1, FinishReason::kLength);
  last.finished = true;
  last.prompt_tokens = 5;
  last.completion_tokens = 3;
  last.times = {.arrival = t0,
                .scheduled = t0 + milliseconds(100),
                .first_token = t0 + milliseconds(300),
                .finished = t0 + milliseconds(1000)};
  rec.OnOutput(last);
  rec.OnOutput(last);  // nothing after the final output counts

  EXPECT_EQ(m.inter_token_latency_seconds.Count(), 2u);  // 3 tokens, 2 gaps
  EXPECT_EQ(m.e2e_request_latency_seconds.Count(), 1u);
  EXPECT_NEAR(m.e2e_request_latency_seconds.Sum(), 1.0, 1e-9);
  EXPECT_NEAR(m.request_queue_time_seconds.Sum(), 0.1, 1e-9);
  EXPECT_NEAR(m.time_to_first_token_seconds.Sum(), 0.3, 1e-9);
  EXPECT_NEAR(m.request_prefill_time_seconds.Sum(), 0.2, 1e-9);
  EXPECT_NEAR(m.request_decode_time_seconds.Sum(), 0.7, 1e-9);
  EXPECT_EQ(m.prompt_tokens_total.Value(), 5);
  EXPECT_EQ(m.generation_tokens_total.Value(), 3);
  EXPECT_EQ(m.RequestSuccess("length").Value(), 1);
  EXPECT_EQ(m.RequestSuccess("stop").Value(), 0);
}

TEST(RequestMetrics, CancelledWhileWaitingAndErrors) {
  metrics::Registry r;
  ServingMetrics m(r, "tiny");
  {
    RequestMetrics rec(&m);
    RequestOutput o = Output(0, 0, FinishReason::kCancelled);
    o.finished = true;
    o.prompt_tokens = 9;
    o.times.arrival = o.times.finished = Clock::now();
    rec.OnOutput(o);
  }
  EXPECT_EQ(m.RequestSuccess("cancelled").Value(), 1);
  EXPECT_EQ(m.prompt_tokens_total.Value(), 0);  // never admitted: no prompt was run
  EXPECT_EQ(m.time_to_first_token_seconds.Count(), 0u);
  EXPECT_EQ(m.e2e_request_latency_seconds.Count(), 1u);
  {
    RequestMetrics rec(&m);
    RequestOutput o;
    o.finished = true;
    o.error = absl::InternalError("backend failed");
    rec.OnOutput(o);
  }
  RecordRejected(&m, absl::StatusCode::kResourceExhausted);
  RecordRejected(nullptr, absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(m.RequestError(absl::StatusCode::kInternal).Value(), 1);
  EXPECT_EQ(m.RequestError(absl::StatusCode::kResourceExhausted).Value(), 1);
  RequestMetrics none(nullptr);
  none.OnOutput(Output(0, 1));
}

TEST(RefreshEngineGauges, SetsGauges) {
  metrics::Registry r;
  ServingMetrics m(r, "tiny");
  RefreshEngineGauges(m, {.requests_running = 2, .requests_waiting = 3, .slots_used = 4, .slots_total = 8});
  EXPECT_EQ(m.num_requests_running.Value(), 2);
  EXPECT_EQ(m.num_requests_waiting.Value(), 3);
  EXPECT_EQ(m.state_slots_used.Value(), 4);
  EXPECT_EQ(m.state_slots_total.Value(), 8);
}

TEST(OutputChannel, QueuesAndEndsWhenTheEngineDropsTheSink) {
  auto ch = std::make_shared<http::OutputChannel>(nullptr);
  std::vector<RequestOutput> outs;
  EXPECT_FALSE(ch->Wait(milliseconds(1), &outs));
  {
    std::shared_ptr<RequestSink> sink = ch->MakeSink();
    sink->OnOutput(Output(0, 1));
    sink->OnOutput(Output(0, 1));
  }  // dropped without a final output
  ASSERT_TRUE(ch->Wait(milliseconds(1), &outs));
  ASSERT_EQ(outs.size(), 3u);
  EXPECT_TRUE(outs[2].finished);
  EXPECT_EQ(outs[2].error.code(), absl::StatusCode::kInternal);
  EXPECT_TRUE(ch->ended());
}

}  // namespace
}  // namespace gdnserve::server
