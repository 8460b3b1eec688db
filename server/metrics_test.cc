// The metrics registry (server/metrics.h) and gdnserve's metric set
// (server/serving_metrics.h).
//
// With GDNSERVE_METRICS_DUMP=path, ServingMetricsDump.KnownWorkload also writes
// its Serialize() output there, for tests/python/test_metrics_format.py to
// check with prometheus-client's parser; the workload below and the one that
// test expects must stay the same.
#include "server/metrics.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <string>
#include <thread>
#include <vector>

#include "server/serving_metrics.h"

namespace gdnserve::metrics {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

TEST(FormatValue, ShortestRoundTripAndSpecials) {
  EXPECT_EQ(FormatValue(0), "0");
  EXPECT_EQ(FormatValue(5), "5");
  EXPECT_EQ(FormatValue(-1.5), "-1.5");
  EXPECT_EQ(FormatValue(0.1), "0.1");
  EXPECT_EQ(FormatValue(2560), "2560");
  EXPECT_EQ(FormatValue(16384), "16384");
  EXPECT_EQ(FormatValue(1e6), "1e+06");
  EXPECT_EQ(FormatValue(0.1 + 0.2), "0.30000000000000004");
  EXPECT_EQ(FormatValue(kInf), "+Inf");
  EXPECT_EQ(FormatValue(-kInf), "-Inf");
  EXPECT_EQ(FormatValue(std::nan("")), "NaN");
  for (double v : {1e-300, 123456789.123, 0.001, 7680.0, 1.0 / 3}) {
    EXPECT_EQ(std::stod(FormatValue(v)), v) << FormatValue(v);
  }
}

TEST(Escape, HelpAndLabelValues) {
  EXPECT_EQ(EscapeHelp("plain"), "plain");
  EXPECT_EQ(EscapeHelp("a\\b\nc\"d"), "a\\\\b\\nc\"d");  // quotes stay in help
  EXPECT_EQ(EscapeLabelValue("a\\b\nc\"d"), "a\\\\b\\nc\\\"d");
  EXPECT_EQ(EscapeLabelValue("gdn2 é {x=1}"), "gdn2 é {x=1}");  // UTF-8 and braces pass through
}

TEST(Names, MetricAndLabelRules) {
  EXPECT_TRUE(IsValidMetricName("gdnserve_requests_total"));
  EXPECT_TRUE(IsValidMetricName("vllm:num_requests_running"));
  EXPECT_TRUE(IsValidMetricName("_x9"));
  EXPECT_FALSE(IsValidMetricName(""));
  EXPECT_FALSE(IsValidMetricName("9x"));
  EXPECT_FALSE(IsValidMetricName("a-b"));
  EXPECT_FALSE(IsValidMetricName("a b"));
  EXPECT_TRUE(IsValidLabelName("model_name"));
  EXPECT_TRUE(IsValidLabelName("_x"));
  EXPECT_FALSE(IsValidLabelName("__name__"));
  EXPECT_FALSE(IsValidLabelName("a:b"));
  EXPECT_FALSE(IsValidLabelName("1a"));
  EXPECT_FALSE(IsValidLabelName(""));
}

TEST(Counter, OnlyGoesUp) {
  Counter c;
  c.Increment();
  c.Increment(2.5);
  c.Increment(-1);
  c.Increment(std::nan(""));
  c.Increment(kInf);
  EXPECT_EQ(c.Value(), 3.5);
}

TEST(Gauge, SetIncrementDecrement) {
  Gauge g;
  g.Set(10);
  g.Increment();
  g.Increment(0.5);
  g.Decrement(3);
  g.Decrement();
  EXPECT_EQ(g.Value(), 7.5);
  g.Set(-2);
  EXPECT_EQ(g.Value(), -2);
}

TEST(Histogram, BucketsAreInclusiveUpperBoundsAndCumulative) {
  Histogram h({1, 2, 5});
  for (double v : {-3.0, 0.5, 1.0, 1.5, 2.0, std::nextafter(2.0, 3.0), 5.0, 5.0000001, 100.0}) h.Observe(v);
  // le=1: -3, 0.5, 1   le=2: +1.5, 2   le=5: +2.0000..1, 5   +Inf: +5.0000001, 100
  EXPECT_EQ(h.CumulativeCounts(), (std::vector<uint64_t>{3, 5, 7, 9}));
  EXPECT_EQ(h.Count(), 9u);
  EXPECT_DOUBLE_EQ(h.Sum(), -3.0 + 0.5 + 1 + 1.5 + 2 + std::nextafter(2.0, 3.0) + 5 + 5.0000001 + 100);
}

TEST(Histogram, InfinitiesAndNaN) {
  Histogram h({1, kInf});  // a trailing +Inf is the implicit bucket
  EXPECT_EQ(h.boundaries(), std::vector<double>{1});
  h.Observe(-kInf);
  h.Observe(kInf);
  EXPECT_EQ(h.CumulativeCounts(), (std::vector<uint64_t>{1, 2}));
  h.Observe(std::nan(""));  // counted in +Inf only, like the Go client; the sum becomes NaN
  EXPECT_EQ(h.CumulativeCounts(), (std::vector<uint64_t>{1, 3}));
  EXPECT_TRUE(std::isnan(h.Sum()));
}

TEST(Histogram, NoBoundariesIsOnlyInf) {
  Histogram h({});
  h.Observe(4);
  h.Observe(0.25);
  EXPECT_EQ(h.CumulativeCounts(), std::vector<uint64_t>{2});
  EXPECT_EQ(h.Sum(), 4.25);
}

TEST(Family, AddReturnsTheSameSeriesForTheSameLabels) {
  Registry r;
  auto& family = BuildCounter().Name("x_total").Help("x").Register(r);
  Counter& a = family.Add({{"model_name", "m"}, {"code", "1"}});
  Counter& b = family.Add({{"code", "1"}, {"model_name", "m"}});
  Counter& c = family.Add({{"model_name", "m"}, {"code", "2"}});
  EXPECT_EQ(&a, &b);
  EXPECT_NE(&a, &c);
  for (int i = 0; i < 100; ++i) family.Add({{"n", std::to_string(i)}});  // map growth moves no series
  EXPECT_EQ(&a, &family.Add({{"model_name", "m"}, {"code", "1"}}));
}

TEST(Registry, SameDefinitionTwiceIsOneFamily) {
  Registry r;
  auto& h1 = BuildHistogram().Name("h_seconds").Help("h").Buckets({1, 2}).Register(r);
  auto& h2 = BuildHistogram().Name("h_seconds").Help("h").Buckets({1, 2, kInf}).Register(r);
  EXPECT_EQ(&h1, &h2);
  h1.Add({{"m", "a"}}).Observe(1);
  h2.Add({{"m", "b"}}).Observe(1);
  const std::string text = r.Serialize();
  EXPECT_EQ(text.find("# TYPE h_seconds histogram"), text.rfind("# TYPE h_seconds histogram"));
}

TEST(Registry, ExactTextFormat) {
  Registry r;
  auto& requests = BuildCounter().Name("app_requests_total").Help("Requests \\ served.\nSecond line.").Register(r);
  requests.Add({{"path", "/a"}, {"code", "200"}}).Increment(3);
  requests.Add({{"code", "500"}, {"path", "/b\"q\"\\\n"}}).Increment();
  BuildGauge().Name("app_temperature").Help("Temperature.").Register(r).Add({}).Set(-1.5);
  BuildGauge().Name("app_unused").Help("No series: not printed.").Register(r);
  auto& latency = BuildHistogram().Name("app_latency_seconds").Help("Latency.").Buckets({0.25, 1, 10}).Register(r);
  Histogram& h = latency.Add({{"model_name", "m"}});
  for (double v : {0.125, 0.25, 2.0, 20.0}) h.Observe(v);
  latency.Add({}).Observe(1);

  EXPECT_EQ(r.Serialize(),
            "# HELP app_requests_total Requests \\\\ served.\\nSecond line.\n"
            "# TYPE app_requests_total counter\n"
            "app_requests_total{code=\"200\",path=\"/a\"} 3\n"
            "app_requests_total{code=\"500\",path=\"/b\\\"q\\\"\\\\\\n\"} 1\n"
            "# HELP app_temperature Temperature.\n"
            "# TYPE app_temperature gauge\n"
            "app_temperature -1.5\n"
            "# HELP app_latency_seconds Latency.\n"
            "# TYPE app_latency_seconds histogram\n"
            "app_latency_seconds_bucket{le=\"0.25\"} 0\n"
            "app_latency_seconds_bucket{le=\"1\"} 1\n"
            "app_latency_seconds_bucket{le=\"10\"} 1\n"
            "app_latency_seconds_bucket{le=\"+Inf\"} 1\n"
            "app_latency_seconds_sum 1\n"
            "app_latency_seconds_count 1\n"
            "app_latency_seconds_bucket{model_name=\"m\",le=\"0.25\"} 2\n"
            "app_latency_seconds_bucket{model_name=\"m\",le=\"1\"} 2\n"
            "app_latency_seconds_bucket{model_name=\"m\",le=\"10\"} 3\n"
            "app_latency_seconds_bucket{model_name=\"m\",le=\"+Inf\"} 4\n"
            "app_latency_seconds_sum{model_name=\"m\"} 22.375\n"
            "app_latency_seconds_count{model_name=\"m\"} 4\n");
}

// Many threads on the same series: no update is lost. Values are dyadic, so
// every sum is exact whatever the order.
TEST(Concurrency, TotalsAreExact) {
  constexpr int kThreads = 8;
  constexpr int kOps = 50000;
  Registry r;
  auto& counters = BuildCounter().Name("c_total").Help("c").Register(r);
  auto& gauges = BuildGauge().Name("g").Help("g").Register(r);
  auto& histograms = BuildHistogram().Name("h").Help("h").Buckets({1, 2}).Register(r);
  Counter& c = counters.Add({{"k", "v"}});
  Gauge& g = gauges.Add({{"k", "v"}});
  Histogram& h = histograms.Add({{"k", "v"}});
  g.Set(1000);

  std::atomic<bool> stop{false};
  std::thread reader([&] {  // serializes and adds label sets while the others write
    int n = 0;
    while (!stop.load()) {
      EXPECT_FALSE(r.Serialize().empty());
      counters.Add({{"reader", std::to_string(n++ % 50)}});
    }
  });
  std::vector<std::thread> writers;
  std::vector<Counter*> seen(kThreads);
  for (int t = 0; t < kThreads; ++t) {
    writers.emplace_back([&, t] {
      seen[t] = &counters.Add({{"k", "v"}});
      for (int i = 0; i < kOps; ++i) {
        c.Increment(0.5);
        g.Increment(2);
        g.Decrement(1.5);
        h.Observe(i % 3 == 0 ? 0.5 : i % 3 == 1 ? 1.5 : 3.0);
      }
    });
  }
  for (auto& w : writers) w.join();
  stop = true;
  reader.join();

  for (Counter* p : seen) EXPECT_EQ(p, &c);
  const double n = double{kThreads} * kOps;
  EXPECT_EQ(c.Value(), 0.5 * n);
  EXPECT_EQ(g.Value(), 1000 + 0.5 * n);
  // Per thread, i % 3 == 0, 1, 2 occur 16667, 16667, 16666 times.
  const uint64_t a = kThreads * 16667ull, b = kThreads * 16667ull, d = kThreads * 16666ull;
  EXPECT_EQ(h.CumulativeCounts(), (std::vector<uint64_t>{a, a + b, a + b + d}));
  EXPECT_EQ(h.Sum(), 0.5 * a + 1.5 * b + 3.0 * d);
}

TEST(RegistryDeathTest, MisuseAbortsAtRegistration) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  Registry r;
  EXPECT_DEATH(BuildGauge().Name("bad-name").Help("x").Register(r), "invalid metric name");
  EXPECT_DEATH(BuildCounter().Name("requests").Help("x").Register(r), "must end in _total");
  EXPECT_DEATH(BuildHistogram().Name("h").Help("x").Buckets({1, 1}).Register(r), "strictly increasing");
  EXPECT_DEATH(BuildHistogram().Name("h").Help("x").Buckets({std::nan("")}).Register(r), "not finite");
  BuildGauge().Name("taken_total").Help("x").Register(r);
  EXPECT_DEATH(BuildCounter().Name("taken_total").Help("x").Register(r), "registered twice");
  EXPECT_DEATH(BuildGauge().Name("taken_total").Help("other help").Register(r), "registered twice");
  EXPECT_DEATH(BuildGauge().Name("taken_total").Help("x").Register(r).Add({{"bad-label", "v"}}), "invalid label name");
  EXPECT_DEATH(BuildHistogram().Name("h2").Help("x").Register(r).Add({{"le", "1"}}), "named le");
}

}  // namespace
}  // namespace gdnserve::metrics

namespace gdnserve::server {
namespace {

using metrics::Registry;

TEST(ServingMetrics, ExposesEveryFamilyWithModelName) {
  Registry r;
  ServingMetrics m(r, "tiny", {.version = "0.1.0", .device = "cpu"});
  m.RequestError(absl::StatusCode::kInvalidArgument).Increment();
  const std::string text = r.Serialize();
  for (const char* family :
       {"gdnserve_num_requests_running gauge", "gdnserve_num_requests_waiting gauge", "gdnserve_state_slots_used gauge",
        "gdnserve_state_slots_total gauge", "gdnserve_state_bytes_per_sequence gauge",
        "gdnserve_time_to_first_token_seconds histogram", "gdnserve_inter_token_latency_seconds histogram",
        "gdnserve_e2e_request_latency_seconds histogram", "gdnserve_request_queue_time_seconds histogram",
        "gdnserve_request_prefill_time_seconds histogram", "gdnserve_request_decode_time_seconds histogram",
        "gdnserve_iteration_tokens_total histogram", "gdnserve_engine_step_seconds histogram",
        "gdnserve_prompt_tokens_total counter", "gdnserve_generation_tokens_total counter", "gdnserve_build_info gauge",
        "gdnserve_request_success_total counter", "gdnserve_request_errors_total counter"}) {
    EXPECT_NE(text.find(std::string("# TYPE ") + family + "\n"), std::string::npos) << family;
  }
  EXPECT_NE(text.find("gdnserve_build_info{device=\"cpu\",model_name=\"tiny\",version=\"0.1.0\"} 1\n"),
            std::string::npos);
  EXPECT_NE(text.find("gdnserve_request_errors_total{code=\"INVALID_ARGUMENT\",model_name=\"tiny\"} 1\n"),
            std::string::npos);
  for (const char* reason : {"length", "stop", "eos", "cancelled"}) {  // exist at 0 before the first request
    EXPECT_NE(text.find(std::string("gdnserve_request_success_total{finished_reason=\"") + reason +
                        "\",model_name=\"tiny\"} 0\n"),
              std::string::npos)
        << reason;
  }
  // Every sample line carries the model.
  size_t start = 0;
  while (start < text.size()) {
    const size_t end = text.find('\n', start);
    const std::string line = text.substr(start, end - start);
    if (line[0] != '#') {
      EXPECT_NE(line.find("model_name=\"tiny\""), std::string::npos) << line;
    }
    start = end + 1;
  }
}

TEST(ServingMetrics, VllmBucketBoundaries) {
  Registry r;
  ServingMetrics m(r, "tiny");
  EXPECT_EQ(m.time_to_first_token_seconds.boundaries(),
            (std::vector<double>{0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1,  0.25,  0.5,   0.75,
                                 1.0,   2.5,   5.0,  7.5,  10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0}));
  EXPECT_EQ(m.inter_token_latency_seconds.boundaries(),
            (std::vector<double>{0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                                 10.0, 20.0, 40.0, 80.0}));
  const std::vector<double> request = {0.3,  0.5,  0.8,  1.0,  1.5,   2.0,   2.5,   5.0,   10.0,   15.0,  20.0,
                                       30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0};
  EXPECT_EQ(m.e2e_request_latency_seconds.boundaries(), request);
  EXPECT_EQ(m.request_queue_time_seconds.boundaries(), request);
  EXPECT_EQ(m.request_prefill_time_seconds.boundaries(), request);
  EXPECT_EQ(m.request_decode_time_seconds.boundaries(), request);
  EXPECT_EQ(m.iteration_tokens_total.boundaries(),
            (std::vector<double>{1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384}));
  EXPECT_FALSE(m.engine_step_seconds.boundaries().empty());
}

TEST(ServingMetrics, RequestSuccessAndErrorsAreStableSeries) {
  Registry r;
  ServingMetrics m(r, "tiny");
  EXPECT_EQ(&m.RequestSuccess("stop"), &m.RequestSuccess("stop"));
  EXPECT_NE(&m.RequestSuccess("stop"), &m.RequestSuccess("length"));
  EXPECT_EQ(&m.RequestSuccess("abort"), &m.RequestSuccess("abort"));  // an unknown reason, made on first use
  EXPECT_EQ(&m.RequestError(absl::StatusCode::kInternal), &m.RequestError(absl::StatusCode::kInternal));
  EXPECT_EQ(m.build_info.Value(), 1);
}

TEST(ServingMetrics, TwoModelsShareOneRegistry) {
  Registry r;
  ServingMetrics a(r, "a");
  ServingMetrics b(r, "b");
  a.prompt_tokens_total.Increment(5);
  b.prompt_tokens_total.Increment(7);
  const std::string text = r.Serialize();
  EXPECT_NE(text.find("gdnserve_prompt_tokens_total{model_name=\"a\"} 5\n"), std::string::npos);
  EXPECT_NE(text.find("gdnserve_prompt_tokens_total{model_name=\"b\"} 7\n"), std::string::npos);
  EXPECT_EQ(text.find("# TYPE gdnserve_prompt_tokens_total"), text.rfind("# TYPE gdnserve_prompt_tokens_total"));
}

// The workload tests/python/test_metrics_format.py expects (keep the two equal).
// Model name and device exercise label escaping.
constexpr char kDumpModel[] = "gdn2 \"tiny\" \\ é\nv1";
constexpr double kSeconds[] = {0.0009765625, 0.0078125, 0.03125, 0.25, 0.5, 1.0, 3.0, 1024.0, 4096.0};

void RunKnownWorkload(ServingMetrics& m) {
  m.num_requests_running.Set(3);
  m.num_requests_waiting.Set(2);
  m.state_slots_used.Set(3);
  m.state_slots_total.Set(8);
  m.state_bytes_per_sequence.Set(1572864);
  // The i-th seconds histogram takes the first 9 - i values of kSeconds.
  metrics::Histogram* seconds[] = {&m.time_to_first_token_seconds,  &m.inter_token_latency_seconds,
                                   &m.e2e_request_latency_seconds,  &m.request_queue_time_seconds,
                                   &m.request_prefill_time_seconds, &m.request_decode_time_seconds,
                                   &m.engine_step_seconds};
  for (int i = 0; i < 7; ++i) {
    for (int j = 0; j < 9 - i; ++j) seconds[i]->Observe(kSeconds[j]);
  }
  for (double tokens : {1, 7, 64, 100, 20000}) m.iteration_tokens_total.Observe(tokens);
  m.prompt_tokens_total.Increment(1000);
  m.prompt_tokens_total.Increment(234);
  m.generation_tokens_total.Increment(500);
  m.generation_tokens_total.Increment(67);
  for (int i = 0; i < 3; ++i) m.RequestSuccess("stop").Increment();
  for (int i = 0; i < 2; ++i) m.RequestSuccess("length").Increment();
  m.RequestSuccess("cancelled").Increment();
  m.RequestError(absl::StatusCode::kInvalidArgument).Increment();
  m.RequestError(absl::StatusCode::kInvalidArgument).Increment();
  m.RequestError(absl::StatusCode::kResourceExhausted).Increment();
}

TEST(ServingMetricsDump, KnownWorkload) {
  Registry r;
  ServingMetrics m(r, kDumpModel, {.version = "0.1.0", .device = "cpu"});
  RunKnownWorkload(m);
  const std::string text = r.Serialize();
  const std::string model = "model_name=\"gdn2 \\\"tiny\\\" \\\\ é\\nv1\"";
  EXPECT_NE(text.find("gdnserve_time_to_first_token_seconds_count{" + model + "} 9\n"), std::string::npos);
  EXPECT_NE(text.find("gdnserve_engine_step_seconds_sum{" + model + "} 0.0400390625\n"), std::string::npos);
  EXPECT_NE(text.find("gdnserve_request_success_total{finished_reason=\"eos\"," + model + "} 0\n"), std::string::npos);

  if (const char* path = std::getenv("GDNSERVE_METRICS_DUMP"); path != nullptr && *path != '\0') {
    std::ofstream out(path, std::ios::binary);
    out << text;
    out.close();
    ASSERT_TRUE(out.good()) << "cannot write " << path;
  }
}

}  // namespace
}  // namespace gdnserve::server
