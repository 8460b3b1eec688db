// The bridge from the engine's delivery thread to the HTTP thread that serves
// a request. The engine calls the sink on its one delivery thread, which must
// never wait for a client: OnOutput queues the output and notifies; the HTTP thread waits on
// the condition variable and takes everything queued at once (so a slow
// client costs memory for its queued deltas, never engine time).
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "engine/request.h"
#include "server/http/request_metrics.h"
#include "server/serving_metrics.h"

namespace gdnserve::server::http {

class OutputChannel : public std::enable_shared_from_this<OutputChannel> {
 public:
  // metrics may be null. Create with std::make_shared.
  explicit OutputChannel(ServingMetrics* metrics) : recorder_(metrics) {}

  // The sink to hand to Engine::Submit. If the engine drops it without a
  // final output (it never should), the channel ends with an Internal error,
  // so a waiting handler cannot hang.
  std::shared_ptr<RequestSink> MakeSink();

  // Waits until something is queued or the channel has ended, at most
  // `timeout`; moves what is queued into *out (appending). Returns false on
  // timeout with nothing queued.
  bool Wait(std::chrono::milliseconds timeout, std::vector<RequestOutput>* out);
  // True once the final output has been queued (it may not be taken yet).
  bool ended() const;

 private:
  class Sink;
  void Push(RequestOutput output);  // the engine's delivery thread
  void Released();                  // the engine let go of the sink

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<RequestOutput> queue_ ABSL_GUARDED_BY(mu_);
  bool ended_ ABSL_GUARDED_BY(mu_) = false;
  server::RequestMetrics recorder_;  // the engine's delivery thread only
};

}  // namespace gdnserve::server::http
