#include "server/http/output_channel.h"

#include <utility>

namespace gdnserve::server::http {

class OutputChannel::Sink final : public RequestSink {
 public:
  explicit Sink(std::shared_ptr<OutputChannel> channel) : channel_(std::move(channel)) {}
  ~Sink() override { channel_->Released(); }
  void OnOutput(RequestOutput output) override { channel_->Push(std::move(output)); }

 private:
  const std::shared_ptr<OutputChannel> channel_;
};

std::shared_ptr<RequestSink> OutputChannel::MakeSink() { return std::make_shared<Sink>(shared_from_this()); }

void OutputChannel::Push(RequestOutput output) {
  recorder_.OnOutput(output);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (ended_) return;
    ended_ = output.finished;
    queue_.push_back(std::move(output));
  }
  cv_.notify_one();
}

void OutputChannel::Released() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (ended_) return;
    ended_ = true;
    RequestOutput lost;
    lost.finished = true;
    lost.error = absl::InternalError("the engine dropped the request");
    queue_.push_back(std::move(lost));
  }
  cv_.notify_one();
}

bool OutputChannel::Wait(std::chrono::milliseconds timeout, std::vector<RequestOutput>* out) {
  std::unique_lock<std::mutex> lock(mu_);
  if (!cv_.wait_for(lock, timeout, [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !queue_.empty(); })) {
    return false;
  }
  while (!queue_.empty()) {
    out->push_back(std::move(queue_.front()));
    queue_.pop_front();
  }
  return true;
}

bool OutputChannel::ended() const {
  std::lock_guard<std::mutex> lock(mu_);
  return ended_;
}

}  // namespace gdnserve::server::http
