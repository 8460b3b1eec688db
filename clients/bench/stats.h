// What gdnserve-bench measures and how it reports it: per-request records
// are merged into one LoadResult, then summarized as percentiles.
#ifndef GDNSERVE_CLIENTS_BENCH_STATS_H_
#define GDNSERVE_CLIENTS_BENCH_STATS_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "grpcpp/grpcpp.h"

namespace gdnserve::bench {

// One finished stream, times in seconds from the call's start.
struct RequestRecord {
  grpc::Status status;
  double ttft_s = -1;          // first token-bearing message; -1: none came
  double e2e_s = 0;            // until the status
  int64_t output_tokens = 0;   // token ids received
  int64_t token_messages = 0;  // messages that carried them (the server may batch several in one)
  std::vector<double> itl_s;   // gap before each later token-bearing message
};

struct ErrorCount {
  int64_t count = 0;
  std::string first_message;
};

// Everything measured in one run. Latencies of successful requests (and
// TTFT/ITL of those Ctrl-C cut short); token counts of all.
struct LoadResult {
  double wall_s = 0;  // first call started .. last call finished
  int64_t ok = 0;
  int64_t failed = 0;
  int64_t cancelled = 0;      // by Ctrl-C; not failures
  int64_t short_outputs = 0;  // ok, but fewer tokens than asked (with ignore_eos)
  int64_t output_tokens = 0;
  int64_t token_messages = 0;
  int64_t prompt_tokens = 0;
  std::vector<double> ttft_s, itl_s, tpot_s, e2e_s;
  std::map<std::string, ErrorCount> errors;  // by status code name
  bool interrupted = false;

  // `stopped`: the run was interrupted, so CANCELLED is the bench's own doing.
  void Add(RequestRecord&& r, int64_t prompt_tokens, int64_t expected_tokens, bool stopped);
};

// Percentiles by linear interpolation between closest ranks (numpy's default).
struct Distribution {
  size_t count = 0;
  double mean = 0, min = 0, p50 = 0, p90 = 0, p99 = 0, max = 0;
};
Distribution Summarize(std::vector<double> values);

// The settings a report states next to its numbers.
struct RunDescription {
  std::string addr;
  int concurrency = 0;
  int prompt_tokens = 0;
  int output_tokens = 0;
  bool ignore_eos = true;
};

std::string FormatTable(const RunDescription& run, const LoadResult& result);
// Times in milliseconds, rates per second.
std::string FormatJson(const RunDescription& run, const LoadResult& result);

}  // namespace gdnserve::bench

#endif  // GDNSERVE_CLIENTS_BENCH_STATS_H_
