#include "clients/bench/stats.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "clients/common/client_util.h"
#include "nlohmann/json.hpp"

namespace gdnserve::bench {

void LoadResult::Add(RequestRecord&& r, int64_t prompt, int64_t expected_tokens, bool stopped) {
  output_tokens += r.output_tokens;
  token_messages += r.token_messages;
  if (stopped && r.status.error_code() == grpc::StatusCode::CANCELLED) {
    // Cut short by Ctrl-C: what it measured before that still counts.
    ++cancelled;
    if (r.ttft_s >= 0) ttft_s.push_back(r.ttft_s);
    itl_s.insert(itl_s.end(), r.itl_s.begin(), r.itl_s.end());
    return;
  }
  if (!r.status.ok()) {
    ++failed;
    ErrorCount& e = errors[std::string(client::StatusCodeName(r.status.error_code()))];
    if (e.count++ == 0) e.first_message = r.status.error_message();
    return;
  }
  ++ok;
  prompt_tokens += prompt;
  if (r.output_tokens < expected_tokens) ++short_outputs;
  e2e_s.push_back(r.e2e_s);
  if (r.ttft_s >= 0) {
    ttft_s.push_back(r.ttft_s);
    // Time per output token after the first: the decode speed one user sees.
    if (r.output_tokens > 1) tpot_s.push_back((r.e2e_s - r.ttft_s) / static_cast<double>(r.output_tokens - 1));
  }
  itl_s.insert(itl_s.end(), r.itl_s.begin(), r.itl_s.end());
}

Distribution Summarize(std::vector<double> v) {
  Distribution d;
  d.count = v.size();
  if (v.empty()) return d;
  std::sort(v.begin(), v.end());
  auto at = [&v](double q) {
    const double pos = q * static_cast<double>(v.size() - 1);
    const size_t lo = static_cast<size_t>(std::floor(pos));
    const size_t hi = std::min(lo + 1, v.size() - 1);
    return v[lo] + (v[hi] - v[lo]) * (pos - static_cast<double>(lo));
  };
  d.mean = std::accumulate(v.begin(), v.end(), 0.0) / static_cast<double>(v.size());
  d.min = v.front();
  d.max = v.back();
  d.p50 = at(0.50);
  d.p90 = at(0.90);
  d.p99 = at(0.99);
  return d;
}

namespace {

double PerSecond(double count, double seconds) { return seconds > 0 ? count / seconds : 0.0; }

std::string Row(const char* name, const std::vector<double>& values_s) {
  const Distribution d = Summarize(values_s);
  if (d.count == 0) return absl::StrFormat("%-6s %10s\n", name, "-");
  return absl::StrFormat("%-6s %10.2f %10.2f %10.2f %10.2f %10.2f %10.2f %9zu\n", name, d.mean * 1e3, d.min * 1e3,
                         d.p50 * 1e3, d.p90 * 1e3, d.p99 * 1e3, d.max * 1e3, d.count);
}

nlohmann::ordered_json DistributionMs(const std::vector<double>& values_s) {
  const Distribution d = Summarize(values_s);
  return {{"count", d.count},   {"mean", d.mean * 1e3}, {"min", d.min * 1e3}, {"p50", d.p50 * 1e3},
          {"p90", d.p90 * 1e3}, {"p99", d.p99 * 1e3},   {"max", d.max * 1e3}};
}

}  // namespace

std::string FormatTable(const RunDescription& run, const LoadResult& r) {
  std::string out = absl::StrFormat("gdnserve-bench %s: concurrency %d, prompt %d tokens, output %d tokens%s%s\n",
                                    run.addr, run.concurrency, run.prompt_tokens, run.output_tokens,
                                    run.ignore_eos ? " (ignore_eos)" : "", r.interrupted ? ", INTERRUPTED" : "");
  absl::StrAppendFormat(&out, "requests   %lld ok, %lld failed%s in %.2f s: %.2f requests/s\n",
                        static_cast<long long>(r.ok), static_cast<long long>(r.failed),
                        r.cancelled > 0 ? absl::StrCat(", ", r.cancelled, " cancelled by Ctrl-C") : "", r.wall_s,
                        PerSecond(static_cast<double>(r.ok), r.wall_s));
  absl::StrAppendFormat(
      &out, "tokens     %lld output: %.1f tokens/s; %lld prompt: %.1f tokens/s\n",
      static_cast<long long>(r.output_tokens), PerSecond(static_cast<double>(r.output_tokens), r.wall_s),
      static_cast<long long>(r.prompt_tokens), PerSecond(static_cast<double>(r.prompt_tokens), r.wall_s));
  if (r.token_messages > 0) {
    absl::StrAppendFormat(&out, "messages   %lld with tokens: %.2f tokens/message (ITL is the gap between them)\n",
                          static_cast<long long>(r.token_messages),
                          static_cast<double>(r.output_tokens) / static_cast<double>(r.token_messages));
  }
  absl::StrAppendFormat(&out, "%-6s %10s %10s %10s %10s %10s %10s %9s\n", "ms", "mean", "min", "p50", "p90", "p99",
                        "max", "samples");
  out += Row("TTFT", r.ttft_s);
  out += Row("ITL", r.itl_s);
  out += Row("TPOT", r.tpot_s);
  out += Row("E2E", r.e2e_s);
  if (r.short_outputs > 0) {
    absl::StrAppendFormat(&out, "warning: %lld ok requests returned fewer than %d tokens\n",
                          static_cast<long long>(r.short_outputs), run.output_tokens);
  }
  for (const auto& [code, e] : r.errors) {
    absl::StrAppendFormat(&out, "error %s: %lld (first: %s)\n", code, static_cast<long long>(e.count),
                          e.first_message.empty() ? "no message" : e.first_message);
  }
  return out;
}

std::string FormatJson(const RunDescription& run, const LoadResult& r) {
  nlohmann::ordered_json errors = nlohmann::ordered_json::object();
  for (const auto& [code, e] : r.errors) errors[code] = {{"count", e.count}, {"first_message", e.first_message}};
  nlohmann::ordered_json j = {
      {"addr", run.addr},
      {"concurrency", run.concurrency},
      {"prompt_tokens", run.prompt_tokens},
      {"output_tokens", run.output_tokens},
      {"ignore_eos", run.ignore_eos},
      {"interrupted", r.interrupted},
      {"wall_s", r.wall_s},
      {"requests_ok", r.ok},
      {"requests_failed", r.failed},
      {"requests_cancelled", r.cancelled},
      {"short_outputs", r.short_outputs},
      {"total_output_tokens", r.output_tokens},
      {"token_messages", r.token_messages},
      {"total_prompt_tokens", r.prompt_tokens},
      {"requests_per_s", PerSecond(static_cast<double>(r.ok), r.wall_s)},
      {"output_tokens_per_s", PerSecond(static_cast<double>(r.output_tokens), r.wall_s)},
      {"prompt_tokens_per_s", PerSecond(static_cast<double>(r.prompt_tokens), r.wall_s)},
      {"ttft_ms", DistributionMs(r.ttft_s)},
      {"itl_ms", DistributionMs(r.itl_s)},
      {"tpot_ms", DistributionMs(r.tpot_s)},
      {"e2e_ms", DistributionMs(r.e2e_s)},
      {"errors", errors},
  };
  return j.dump(2) + "\n";
}

}  // namespace gdnserve::bench
