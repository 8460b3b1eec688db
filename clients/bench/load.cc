#include "clients/bench/load.h"

#include <chrono>
#include <random>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace gdnserve::bench {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

}  // namespace

class StreamCall;

class LoadDriver::Impl : public std::enable_shared_from_this<LoadDriver::Impl> {
 public:
  Impl(std::vector<std::unique_ptr<v1::Generation::Stub>> stubs, LoadOptions options)
      : stubs_(std::move(stubs)), options_(std::move(options)), rng_(options_.seed) {}

  LoadResult Run(const std::function<void(const Progress&)>& tick);
  void Stop();

  // From a stream's OnDone: records it and starts the next request. Returns
  // the driver's reference to the stream, for the caller to drop last.
  std::shared_ptr<StreamCall> Finished(StreamCall* call, RequestRecord&& record);

 private:
  struct Pending {
    std::shared_ptr<StreamCall> call;
    v1::Generation::Stub* stub;
  };
  // The next request to start, or nothing when the run is over.
  std::optional<Pending> NextLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Start(Pending p);
  Progress ProgressLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::vector<std::unique_ptr<v1::Generation::Stub>> stubs_;
  const LoadOptions options_;

  mutable absl::Mutex mu_;
  absl::CondVar all_done_;
  std::mt19937_64 rng_ ABSL_GUARDED_BY(mu_);
  Clock::time_point start_ ABSL_GUARDED_BY(mu_), end_ ABSL_GUARDED_BY(mu_);
  int64_t started_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  absl::flat_hash_map<StreamCall*, std::shared_ptr<StreamCall>> live_ ABSL_GUARDED_BY(mu_);
  LoadResult result_ ABSL_GUARDED_BY(mu_);
};

// One Generate stream. Its reactions run on gRPC's threads, one at a time
// (one read in flight), so its own fields need no lock.
class StreamCall : public grpc::ClientReadReactor<v1::GenerateResponse> {
 public:
  StreamCall(std::shared_ptr<LoadDriver::Impl> driver, v1::GenerateRequest request, int64_t timeout_ms)
      : driver_(std::move(driver)), request_(std::move(request)) {
    if (timeout_ms > 0) ctx_.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(timeout_ms));
  }

  void Start(v1::Generation::Stub* stub) {
    start_ = Clock::now();
    stub->async()->Generate(&ctx_, &request_, this);
    StartRead(&response_);
    StartCall();
  }

  void Cancel() { ctx_.TryCancel(); }

  void OnReadDone(bool ok) override {
    if (!ok) return;  // the stream ended; OnDone follows
    const double t = Seconds(start_, Clock::now());
    int tokens = 0;
    for (const v1::SampleDelta& d : response_.samples()) tokens += d.token_ids_size();
    if (tokens > 0) {
      if (record_.ttft_s < 0) {
        record_.ttft_s = t;
      } else {
        record_.itl_s.push_back(t - last_token_s_);
      }
      last_token_s_ = t;
      record_.output_tokens += tokens;
      ++record_.token_messages;
    }
    StartRead(&response_);
  }

  void OnDone(const grpc::Status& status) override {
    record_.e2e_s = Seconds(start_, Clock::now());
    record_.status = status;
    // Holds this object until the end of OnDone, after the driver forgot it.
    std::shared_ptr<StreamCall> self = driver_->Finished(this, std::move(record_));
  }

 private:
  // Declared first, so released last (LoadDriver::Impl::Run waits for that).
  const std::shared_ptr<LoadDriver::Impl> driver_;
  grpc::ClientContext ctx_;
  v1::GenerateRequest request_;
  v1::GenerateResponse response_;
  Clock::time_point start_;
  double last_token_s_ = 0;  // since start_
  RequestRecord record_;
};

std::optional<LoadDriver::Impl::Pending> LoadDriver::Impl::NextLocked() {
  if (stopping_) return std::nullopt;
  if (options_.requests > 0 && started_ >= options_.requests) return std::nullopt;
  if (options_.requests <= 0 && Seconds(start_, Clock::now()) >= options_.duration_s) return std::nullopt;
  v1::GenerateRequest req;
  std::uniform_int_distribution<int32_t> id(kFirstPromptId, options_.vocab_size - 1);
  auto* ids = req.mutable_token_ids()->mutable_ids();
  ids->Reserve(options_.prompt_tokens);
  for (int i = 0; i < options_.prompt_tokens; ++i) ids->Add(id(rng_));
  if (options_.temperature) req.mutable_sampling()->set_temperature(*options_.temperature);
  req.mutable_sampling()->set_seed(options_.seed + static_cast<uint64_t>(started_));
  req.mutable_stop()->set_max_tokens(options_.output_tokens);
  req.mutable_stop()->set_ignore_eos(options_.ignore_eos);
  req.set_request_id("bench-" + std::to_string(started_));
  v1::Generation::Stub* stub = stubs_[static_cast<size_t>(started_) % stubs_.size()].get();
  ++started_;
  auto call = std::make_shared<StreamCall>(shared_from_this(), std::move(req), options_.timeout_ms);
  live_.emplace(call.get(), call);
  return Pending{std::move(call), stub};
}

// Outside mu_: gRPC may run reactions inline from StartCall.
void LoadDriver::Impl::Start(Pending p) { p.call->Start(p.stub); }

std::shared_ptr<StreamCall> LoadDriver::Impl::Finished(StreamCall* call, RequestRecord&& record) {
  std::shared_ptr<StreamCall> self;
  std::optional<Pending> next;
  {
    absl::MutexLock lock(&mu_);
    result_.Add(std::move(record), options_.prompt_tokens, options_.ignore_eos ? options_.output_tokens : 0, stopping_);
    auto it = live_.find(call);
    self = std::move(it->second);
    live_.erase(it);
    next = NextLocked();
    if (live_.empty()) {
      end_ = Clock::now();
      all_done_.SignalAll();
    }
  }
  if (next) Start(std::move(*next));
  return self;
}

LoadDriver::Progress LoadDriver::Impl::ProgressLocked() const {
  return {.finished = result_.ok + result_.failed + result_.cancelled,
          .failed = result_.failed,
          .in_flight = static_cast<int64_t>(live_.size()),
          .output_tokens = result_.output_tokens,
          .elapsed_s = Seconds(start_, Clock::now())};
}

LoadResult LoadDriver::Impl::Run(const std::function<void(const Progress&)>& tick) {
  std::vector<Pending> first;
  {
    absl::MutexLock lock(&mu_);
    start_ = end_ = Clock::now();
    for (int i = 0; i < options_.concurrency; ++i) {
      std::optional<Pending> p = NextLocked();
      if (!p) break;
      first.push_back(std::move(*p));
    }
  }
  for (Pending& p : first) Start(std::move(p));
  first.clear();
  LoadResult result;
  {
    absl::MutexLock lock(&mu_);
    while (!live_.empty()) {
      all_done_.WaitWithTimeout(&mu_, absl::Seconds(1));
      if (tick && !live_.empty()) {
        const Progress p = ProgressLocked();
        mu_.Unlock();
        tick(p);
        mu_.Lock();
      }
    }
    result_.wall_s = Seconds(start_, end_);
    result = std::move(result_);
  }
  // Each stream holds a reference to this driver and drops it as the last
  // step of its destruction, just after OnDone. Waiting for those lets the
  // driver, its mutex and its channels die on the caller's thread, after
  // every reaction has returned.
  while (weak_from_this().use_count() > 1) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  return result;
}

void LoadDriver::Impl::Stop() {
  std::vector<std::shared_ptr<StreamCall>> calls;
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    result_.interrupted = true;
    for (auto& [ptr, call] : live_) calls.push_back(call);
  }
  // Outside mu_: a cancelled stream's OnDone may run inline and take it.
  for (auto& call : calls) call->Cancel();
}

LoadDriver::LoadDriver(std::vector<std::unique_ptr<v1::Generation::Stub>> stubs, LoadOptions options)
    : impl_(std::make_shared<Impl>(std::move(stubs), std::move(options))) {}

LoadDriver::~LoadDriver() = default;

LoadResult LoadDriver::Run(const std::function<void(const Progress&)>& tick) { return impl_->Run(tick); }

void LoadDriver::Stop() { impl_->Stop(); }

}  // namespace gdnserve::bench
