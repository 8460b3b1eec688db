// The load generator: keeps `concurrency` Generate streams in flight on
// gRPC's callback API (one ClientReadReactor per stream, run on gRPC's own
// fixed thread pool, no thread per stream), starting a new request whenever
// one finishes, until the request count or the duration is reached.
#ifndef GDNSERVE_CLIENTS_BENCH_LOAD_H_
#define GDNSERVE_CLIENTS_BENCH_LOAD_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <vector>

#include "clients/bench/stats.h"
#include "gdnserve/v1/generation.grpc.pb.h"

namespace gdnserve::bench {

struct LoadOptions {
  int concurrency = 1;
  int64_t requests = 0;   // stop starting after this many; 0: use duration_s
  double duration_s = 0;  // stop starting after this long (in-flight streams finish)
  int prompt_tokens = 1;
  int output_tokens = 1;  // max_tokens
  bool ignore_eos = true;
  uint64_t seed = 0;   // prompts and per-request sampling seeds
  int vocab_size = 0;  // prompt ids are uniform in [kFirstPromptId, vocab_size)
  std::optional<float> temperature;
  int64_t timeout_ms = 0;  // per-request deadline; 0: none
};

// Ids below this are special (pad/BOS/EOS in the bundled models).
inline constexpr int kFirstPromptId = 3;

// Built once; Run may be called once.
class LoadDriver {
 public:
  // Streams are spread round-robin over the stubs (one per channel, i.e.
  // per HTTP/2 connection).
  LoadDriver(std::vector<std::unique_ptr<v1::Generation::Stub>> stubs, LoadOptions options);
  ~LoadDriver();

  // A snapshot for a status line.
  struct Progress {
    int64_t finished = 0, failed = 0, in_flight = 0, output_tokens = 0;
    double elapsed_s = 0;
  };

  // Blocks until every started stream has finished; calls `tick` on this
  // thread about once a second meanwhile.
  LoadResult Run(const std::function<void(const Progress&)>& tick = nullptr);
  // From any thread (Ctrl-C): starts no more requests, cancels those in flight.
  void Stop();

  class Impl;  // in load.cc; public so that its streams can name it

 private:
  std::shared_ptr<Impl> impl_;
};

}  // namespace gdnserve::bench

#endif  // GDNSERVE_CLIENTS_BENCH_LOAD_H_
