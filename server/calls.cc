#include "server/calls.h"

#include "server/http/request_metrics.h"
#include "server/log.h"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <memory>
#include <mutex>
#include <utility>

#include "absl/base/thread_annotations.h"

namespace gdnserve::server {
namespace {

// The gRPC deadline on the engine's clock (steady, so a wall-clock jump
// neither kills nor extends requests). No deadline is a far-future one.
Clock::time_point EngineDeadline(const grpc::CallbackServerContext& ctx) {
  const auto wall = ctx.deadline();
  const auto now = std::chrono::system_clock::now();
  if (wall - now > std::chrono::hours(24 * 365)) return Clock::time_point::max();
  return Clock::now() + std::chrono::duration_cast<Clock::duration>(wall - now);
}

// The engine's reference to a call. Dropping it (the engine destroys the sink
// after the final output, or inside a failed Submit) releases the engine's
// ownership; a sink dropped before any final output ends the call as well, so
// a request the engine lost can never leave its RPC hanging.
// It also records the request's metrics (TTFT, ITL, latencies, tokens,
// finish reason), the same way the HTTP front end does.
// And it writes the request's log line when the request finishes.
template <typename Call>
class CallSink final : public RequestSink {
 public:
  CallSink(Call* call, ServingMetrics* metrics, std::string id, const char* path, bool stream)
      : call_(call), metrics_(metrics) {
    log_.id = std::move(id);
    log_.path = path;
    log_.stream = stream;
  }
  ~CallSink() override { call_->EngineReleased(); }
  void OnOutput(RequestOutput output) override {
    metrics_.OnOutput(output);
    for (const SampleDelta& d : output.samples) {
      if (d.index == 0 && d.finish != FinishReason::kNone) log_.finish_reason = FinishReasonName(d.finish);
    }
    if (output.finished) {
      log_.status = static_cast<int>(output.error.code());
      if (!output.error.ok()) log_.finish_reason = std::string(output.error.message());
      log_.prompt_tokens = output.prompt_tokens;
      log_.completion_tokens = output.completion_tokens;
      log_.seconds = std::chrono::duration<double>(output.times.finished - output.times.arrival).count();
      LogRequest(log_);
    }
    call_->OnEngineOutput(std::move(output));
  }

 private:
  Call* const call_;
  RequestMetrics metrics_;
  RequestLogEntry log_;
};

// State both reactors share: the two owners, the engine handle and
// cancellation. Derived classes hold mu_ for their own fields too.
class EngineCall {
 protected:
  EngineCall(const ServingModel& model, Clock::time_point deadline) : model_(model), deadline_(deadline) {}
  virtual ~EngineCall() = default;

  // The status a finished request ends its RPC with. The engine enforces the
  // deadline too and may get there before gRPC does; a request it cancelled
  // past the deadline is DEADLINE_EXCEEDED, not a short success. (Cancelled
  // before the deadline means the server's drain: a clean end whose samples
  // say FINISH_REASON_CANCELLED.)
  grpc::Status FinalStatusLocked(const RequestOutput& out) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (!out.error.ok()) return ToGrpcStatus(out.error);
    if (saw_cancelled_ && Clock::now() >= deadline_) {
      return grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "deadline exceeded");
    }
    return grpc::Status::OK;
  }
  void NoteSamplesLocked(const RequestOutput& out) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    for (const SampleDelta& d : out.samples) saw_cancelled_ |= d.finish == FinishReason::kCancelled;
  }

  void Unref() {
    if (refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
  }
  // Records the handle, or the Submit error as the call's end. Returns true
  // when the client cancelled before the handle was known (cancel it now).
  bool SetHandleLocked(const absl::StatusOr<uint64_t>& handle) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (!handle.ok()) {
      engine_final_ = true;
      status_ = ToGrpcStatus(handle.status());
      return false;
    }
    handle_ = *handle;
    has_handle_ = true;
    return cancelled_;
  }
  // Marks the call cancelled; returns the handle to cancel (0: none yet).
  uint64_t CancelLocked(const char* why) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (!cancelled_ && !engine_final_) status_ = grpc::Status(grpc::StatusCode::CANCELLED, why);
    cancelled_ = true;
    return has_handle_ && !engine_final_ ? handle_ : 0;
  }
  void CancelInEngine(uint64_t handle) {
    if (handle != 0) model_.engine->Cancel(handle);
  }

  const ServingModel& model_;
  const Clock::time_point deadline_;
  std::atomic<int> refs_{2};  // gRPC (until OnDone) + engine (until the sink dies)
  std::mutex mu_;
  uint64_t handle_ ABSL_GUARDED_BY(mu_) = 0;
  bool has_handle_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;     // client cancel, disconnect, deadline
  bool engine_final_ ABSL_GUARDED_BY(mu_) = false;  // final output (or Submit error) seen
  bool finish_called_ ABSL_GUARDED_BY(mu_) = false;
  bool saw_cancelled_ ABSL_GUARDED_BY(mu_) = false;  // a sample ended with kCancelled
  grpc::Status status_ ABSL_GUARDED_BY(mu_);         // what Finish sends
};

// ---------------------------------------------------------------- Generate

// Engine outputs are coalesced into one pending message while a write is in
// flight, so a slow reader costs one message of memory, not one per token,
// and the engine's delivery thread never waits for the network. All gRPC operations
// (StartWrite, Finish) are chosen under mu_ and started after unlocking, as
// the last thing a method does: once Finish is started the reactor may be
// deleted on another thread.
class GenerateCall final : public EngineCall, public grpc::ServerWriteReactor<pb::GenerateResponse> {
 public:
  GenerateCall(const ServingModel& model, Clock::time_point deadline, std::string request_id)
      : EngineCall(model, deadline), request_id_(std::move(request_id)) {}

  void Submitted(const absl::StatusOr<uint64_t>& handle) {
    std::unique_lock<std::mutex> lock(mu_);
    const bool cancel_now = SetHandleLocked(handle);
    const Action action = NextLocked();
    lock.unlock();
    if (cancel_now) CancelInEngine(*handle);
    Perform(action);
  }

  // Engine thread: queue and return.
  void OnEngineOutput(RequestOutput out) {
    std::unique_lock<std::mutex> lock(mu_);
    if (out.finished) engine_final_ = true;
    if (cancelled_ || finish_called_) return;  // nobody is listening any more
    NoteSamplesLocked(out);
    for (const SampleDelta& d : out.samples) AppendDelta(d, model_.engine->tokenizer(), PendingSample(d.index));
    if (out.finished) {
      status_ = FinalStatusLocked(out);
      if (status_.ok()) {
        pb::Usage* usage = Pending()->mutable_usage();
        usage->set_prompt_tokens(out.prompt_tokens);
        usage->set_completion_tokens(out.completion_tokens);
        usage->set_cached_prompt_tokens(out.cached_prompt_tokens);
      }
    }
    const Action action = NextLocked();
    lock.unlock();
    Perform(action);
  }

  void EngineReleased() {
    std::unique_lock<std::mutex> lock(mu_);
    Action action = Action::kNone;
    if (!engine_final_) {
      engine_final_ = true;
      status_ = grpc::Status(grpc::StatusCode::INTERNAL, "the engine dropped the request");
      action = NextLocked();
    }
    lock.unlock();
    Perform(action);
    Unref();
  }

  void OnWriteDone(bool ok) override {
    std::unique_lock<std::mutex> lock(mu_);
    write_in_flight_ = false;
    // A failed write means the stream is broken (the client went away).
    const uint64_t cancel = ok ? 0 : CancelLocked("the stream broke");
    const Action action = NextLocked();
    lock.unlock();
    CancelInEngine(cancel);
    Perform(action);
  }

  void OnCancel() override {
    std::unique_lock<std::mutex> lock(mu_);
    const uint64_t cancel = CancelLocked("cancelled by the client");
    const Action action = NextLocked();
    lock.unlock();
    CancelInEngine(cancel);
    Perform(action);
  }

  void OnDone() override { Unref(); }

 private:
  enum class Action { kNone, kWrite, kFinish };

  pb::GenerateResponse* Pending() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (!has_pending_) {
      pending_.Clear();
      pending_.set_request_id(request_id_);
      has_pending_ = true;
    }
    return &pending_;
  }
  pb::SampleDelta* PendingSample(int index) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    pb::GenerateResponse* p = Pending();
    for (pb::SampleDelta& s : *p->mutable_samples()) {
      if (s.index() == index) return &s;
    }
    return p->add_samples();
  }

  // One write in flight: the next write starts from OnWriteDone; Finish once
  // nothing is in flight and nothing more will come (or nobody listens).
  Action NextLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finish_called_ || write_in_flight_) return Action::kNone;
    if (has_pending_ && !cancelled_) {
      writing_.Swap(&pending_);
      has_pending_ = false;
      write_in_flight_ = true;
      return Action::kWrite;
    }
    if (cancelled_ || engine_final_) {
      finish_called_ = true;
      finish_status_ = status_;
      return Action::kFinish;
    }
    return Action::kNone;
  }

  // writing_ and finish_status_ are not touched by others once the action is
  // chosen (write_in_flight_ / finish_called_ guard them).
  void Perform(Action action) ABSL_NO_THREAD_SAFETY_ANALYSIS {
    if (action == Action::kWrite) StartWrite(&writing_);
    if (action == Action::kFinish) Finish(finish_status_);
  }

  const std::string request_id_;
  bool write_in_flight_ ABSL_GUARDED_BY(mu_) = false;
  bool has_pending_ ABSL_GUARDED_BY(mu_) = false;
  pb::GenerateResponse pending_ ABSL_GUARDED_BY(mu_);  // coalesced, not yet written
  pb::GenerateResponse writing_;                       // in flight; lives until OnWriteDone
  grpc::Status finish_status_;
};

// ---------------------------------------------------------------- Complete

class CompleteCall final : public EngineCall, public grpc::ServerUnaryReactor {
 public:
  CompleteCall(const ServingModel& model, Clock::time_point deadline, std::string request_id, int n,
               pb::CompleteResponse* response)
      : EngineCall(model, deadline), response_(response) {
    result_.set_request_id(std::move(request_id));
    for (int i = 0; i < n; ++i) result_.add_samples()->set_index(i);
  }

  void Submitted(const absl::StatusOr<uint64_t>& handle) {
    std::unique_lock<std::mutex> lock(mu_);
    const bool cancel_now = SetHandleLocked(handle);
    const bool finish = FinishLocked();
    lock.unlock();
    if (cancel_now) CancelInEngine(*handle);
    if (finish) Finish(finish_status_);
  }

  void OnEngineOutput(RequestOutput out) {
    std::unique_lock<std::mutex> lock(mu_);
    if (out.finished) engine_final_ = true;
    if (cancelled_ || finish_called_) return;
    NoteSamplesLocked(out);
    for (const SampleDelta& d : out.samples) {
      if (d.index >= 0 && d.index < result_.samples_size()) {
        AppendDelta(d, model_.engine->tokenizer(), result_.mutable_samples(d.index));
      }
    }
    if (out.finished) {
      status_ = FinalStatusLocked(out);
      result_.mutable_usage()->set_prompt_tokens(out.prompt_tokens);
      result_.mutable_usage()->set_completion_tokens(out.completion_tokens);
      result_.mutable_usage()->set_cached_prompt_tokens(out.cached_prompt_tokens);
    }
    const bool finish = FinishLocked();
    lock.unlock();
    if (finish) Finish(finish_status_);
  }

  void EngineReleased() {
    std::unique_lock<std::mutex> lock(mu_);
    bool finish = false;
    if (!engine_final_) {
      engine_final_ = true;
      status_ = grpc::Status(grpc::StatusCode::INTERNAL, "the engine dropped the request");
      finish = FinishLocked();
    }
    lock.unlock();
    if (finish) Finish(finish_status_);
    Unref();
  }

  void OnCancel() override {
    std::unique_lock<std::mutex> lock(mu_);
    const uint64_t cancel = CancelLocked("cancelled by the client");
    const bool finish = FinishLocked();
    lock.unlock();
    CancelInEngine(cancel);
    if (finish) Finish(finish_status_);
  }

  void OnDone() override { Unref(); }

 private:
  // True when Finish is to be called now; the response is filled first (it
  // belongs to gRPC and is valid until OnDone).
  bool FinishLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finish_called_ || !(cancelled_ || engine_final_)) return false;
    finish_called_ = true;
    finish_status_ = status_;
    if (status_.ok()) response_->Swap(&result_);
    return true;
  }

  pb::CompleteResponse* const response_;
  pb::CompleteResponse result_ ABSL_GUARDED_BY(mu_);
  grpc::Status finish_status_;
};

class FailedStreamReactor final : public grpc::ServerWriteReactor<pb::GenerateResponse> {
 public:
  explicit FailedStreamReactor(grpc::Status status) { Finish(std::move(status)); }
  void OnDone() override { delete this; }
};

// Validation and Submit shared by both RPCs. Returns the engine request or
// the error to finish the call with.
absl::StatusOr<GenerationRequest> BuildRequest(grpc::CallbackServerContext* ctx, const pb::GenerateRequest& in,
                                               const ServingModel& model, std::string request_id) {
  return ToEngineRequest(in, model.engine->tokenizer(), model.limits, std::move(request_id), EngineDeadline(*ctx));
}

template <typename Call>
void Submit(Call* call, GenerationRequest request, const ServingModel& model, const char* path, bool stream) {
  // Our copy of the sink keeps the engine's ownership alive until Submitted
  // has recorded the outcome, even if Submit fails and drops its copy.
  auto sink = std::make_shared<CallSink<Call>>(call, model.metrics, request.request_id, path, stream);
  const absl::StatusOr<uint64_t> handle = model.engine->Submit(std::move(request), sink);
  if (!handle.ok()) RecordRejected(model.metrics, handle.status().code());
  call->Submitted(handle);
  // Bad input, a full queue and shutdown are the client's to see, and under
  // overload would flood the log; anything else is worth a line.
  const absl::StatusCode code = handle.status().code();
  if (!handle.ok() && code != absl::StatusCode::kInvalidArgument && code != absl::StatusCode::kResourceExhausted &&
      code != absl::StatusCode::kUnavailable) {
    std::fprintf(stderr, "gdnserve: request refused: %s\n", handle.status().ToString().c_str());
  }
}

}  // namespace

grpc::ServerWriteReactor<pb::GenerateResponse>* FailedStream(grpc::Status status) {
  return new FailedStreamReactor(std::move(status));
}

grpc::ServerWriteReactor<pb::GenerateResponse>* StartGenerate(grpc::CallbackServerContext* ctx,
                                                              const pb::GenerateRequest* request,
                                                              const ServingModel& model) {
  absl::StatusOr<std::string> id = RequestIdFor(*request, model.limits);
  absl::StatusOr<GenerationRequest> r =
      id.ok() ? BuildRequest(ctx, *request, model, *id) : absl::StatusOr<GenerationRequest>(id.status());
  if (!r.ok()) {
    RecordRejected(model.metrics, r.status().code());
    return FailedStream(ToGrpcStatus(r.status()));
  }
  auto* call = new GenerateCall(model, r->deadline, std::move(*id));
  Submit(call, std::move(*r), model, "/gdnserve.v1.Generation/Generate", /*stream=*/true);
  return call;
}

grpc::ServerUnaryReactor* StartComplete(grpc::CallbackServerContext* ctx, const pb::GenerateRequest* request,
                                        pb::CompleteResponse* response, const ServingModel& model) {
  absl::StatusOr<std::string> id = RequestIdFor(*request, model.limits);
  absl::StatusOr<GenerationRequest> r =
      id.ok() ? BuildRequest(ctx, *request, model, *id) : absl::StatusOr<GenerationRequest>(id.status());
  if (!r.ok()) {
    RecordRejected(model.metrics, r.status().code());
    grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
    reactor->Finish(ToGrpcStatus(r.status()));
    return reactor;
  }
  auto* call = new CompleteCall(model, r->deadline, std::move(*id), r->n, response);
  Submit(call, std::move(*r), model, "/gdnserve.v1.Generation/Complete", /*stream=*/false);
  return call;
}

}  // namespace gdnserve::server
