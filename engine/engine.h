// The serving engine: a request queue, admission over the state slot pool,
// the scheduler, the backend's forward pass, sampling, detokenization and
// stop checks, all driven by one engine thread (DESIGN.md 3.1).
//
// Thread-safety: Submit, Cancel, Stats and Shutdown may be called from any
// thread. Sinks are called on the engine's delivery thread, one call at a
// time, each request's outputs in order: the engine thread hands a step's
// outputs over and goes on to the next step while they are delivered (a
// server's per-token work, protobuf and stream writes for hundreds of
// streams, then overlaps the GPU's next step instead of delaying it).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "engine/backend.h"
#include "engine/request.h"
#include "engine/scheduler.h"
#include "engine/state_cache.h"
#include "engine/tokenizer.h"

namespace gdnserve {

// Prefill pieces other than a prompt's last are multiples of this (the GPU
// chunk), so chunk boundaries sit at the same positions however a prompt is split.
inline constexpr int kChunkAlign = 64;

struct EngineOptions {
  int max_prompt_tokens = 8192;
  int max_tokens_cap = 4096;        // largest max_tokens a request may ask for
  int step_token_budget = 512;      // tokens per forward pass; raised to >= slots + kChunkAlign
  int max_prefill_chunk = 512;      // largest prefill piece per step; a multiple of kChunkAlign
  int max_queue = 256;              // waiting requests beyond which Submit fails
  int max_n = 16;                   // largest n (parallel samples)
  // Exact prefix state cache: snapshots every `prefix_cache_interval` tokens
  // (a multiple of kChunkAlign) of prefilled prompts, LRU within
  // prefix_cache_bytes of host memory; 0 disables it.
  int64_t prefix_cache_bytes = 0;
  int prefix_cache_interval = 256;
  // Session snapshots: host memory budget (0 disables sessions) and idle TTL.
  int64_t session_bytes = int64_t{1} << 30;
  int64_t session_ttl_ms = 600'000;
  // Longest history (fed tokens plus the pending one) a session may hold; a
  // snapshot keeps every history token (for the full-history prefix match,
  // usage and export), so one session takes at most one state plus 4 bytes
  // times this. A session request whose prompt (with continue: history plus
  // new tokens) plus max_tokens could exceed it is refused, as is an imported
  // blob with a longer history. 0: max_prompt_tokens + max_tokens_cap, the
  // context length the OpenAI API reports (max_model_len).
  int64_t session_max_tokens = 0;
  // Draw tokens where the logits are when the backend can (a GPU: logits stay
  // on the device unless a request wants top logprobs or prompt logits).
  bool device_sampling = true;
};

// Aggregate counters, readable from any thread.
struct EngineStats {
  int requests_running = 0;  // admitted, holding slots
  int requests_waiting = 0;  // queued for admission
  int slots_used = 0;
  int slots_total = 0;
  int64_t requests_finished = 0;
  int64_t steps = 0;
  int64_t prefill_tokens = 0;              // prompt tokens run through the model
  int64_t prefix_cache_query_tokens = 0;   // prompt tokens of requests that looked up the cache
  int64_t prefix_cache_hit_tokens = 0;     // of those, restored from the cache
  int64_t prefix_cache_bytes = 0;
  int64_t prefix_cache_entries = 0;
  int64_t session_restored_tokens = 0;     // prompt tokens restored from session snapshots
  int64_t sessions = 0;
  int64_t session_bytes = 0;
};

// Observes each engine step (for metrics); called on the engine thread.
class StepObserver {
 public:
  virtual ~StepObserver() = default;
  virtual void OnStep(int num_tokens, int num_decode, int num_prefill_tokens, double seconds) = 0;
};

class Engine {
 public:
  // The backend and tokenizer must outlive the engine. Starts the engine thread.
  Engine(Backend* backend, const Tokenizer* tokenizer, const EngineOptions& options,
         StepObserver* observer = nullptr);
  ~Engine();  // Shutdown(0)

  // Validates and queues a request. InvalidArgument naming the field for bad
  // input, ResourceExhausted when the queue is full, Unavailable once shut
  // down. On success returns a handle for Cancel; the sink then receives every
  // output, ending with one that has finished = true (exactly once).
  absl::StatusOr<uint64_t> Submit(GenerationRequest request, std::shared_ptr<RequestSink> sink);
  // Aborts a request (finish reason cancelled); its slots are released in the
  // next step. Unknown or finished handles are ignored.
  void Cancel(uint64_t handle);

  // Stops accepting requests, lets running ones finish for up to drain_ms,
  // cancels what is left, and stops the engine thread. Idempotent.
  void Shutdown(int drain_ms);
  bool accepting() const { return accepting_.load(); }
  // OK unless the backend broke for good (Backend::Health); then the engine
  // admits nothing more and this says why.
  absl::Status health() const;

  EngineStats Stats() const;

  // A session's snapshot as a portable blob (engine/state_blob.h); NotFound
  // naming the session when it is unknown, expired or evicted.
  absl::StatusOr<std::string> ExportSession(const std::string& session_id) const;
  // Stores a blob as the session's snapshot (replacing one of the same id);
  // returns its token count. InvalidArgument for a corrupt blob,
  // FailedPrecondition for another model's, ResourceExhausted over budget.
  absl::StatusOr<int64_t> ImportSession(const std::string& session_id, std::string_view blob);
  bool DropSession(const std::string& session_id) { return sessions_.Erase(session_id); }
  // One sequence's state (all layers), as a snapshot or blob holds it.
  int64_t state_bytes_per_sequence() const { return floats_per_slot_ * static_cast<int64_t>(sizeof(float)); }
  const EngineOptions& options() const { return options_; }
  const Backend& backend() const { return *backend_; }
  const Tokenizer& tokenizer() const { return *tokenizer_; }

 private:
  struct Group;  // one request: its samples, slots and sinks (engine.cc)

  static EngineOptions Normalized(EngineOptions o, int num_slots);
  void Loop();
  bool Step();  // one schedule -> forward -> postprocess; false when idle
  void DeliverLoop();  // the delivery thread: calls sinks with queued outputs
  absl::Status Validate(const GenerationRequest& r) const;
  // Restores a session (Submit) or the longest cached prefix (intake) into the group's plan.
  absl::Status AttachSession(Group& g);
  void LookupPrefix(Group& g);
  // After a forward: snapshots a prefill that ended at a cache interval.
  void MaybeSnapshotPrefix(Group& g);
  // After a failed backend call: if the backend is broken for good
  // (Backend::Health), remember why and stop admitting requests.
  void CheckBackendHealth();
  void SaveSession(Group& g);

  Backend* backend_;
  const Tokenizer* tokenizer_;
  const EngineOptions options_;
  StepObserver* observer_;

  mutable std::mutex mu_;
  std::condition_variable wake_;
  std::deque<std::unique_ptr<Group>> inbox_ ABSL_GUARDED_BY(mu_);
  std::vector<uint64_t> cancels_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  bool cancel_all_ ABSL_GUARDED_BY(mu_) = false;
  int waiting_ ABSL_GUARDED_BY(mu_) = 0;  // inbox + engine-side queue
  EngineStats stats_ ABSL_GUARDED_BY(mu_);
  std::atomic<bool> accepting_{true};
  absl::Status backend_failure_;  // guarded by mu_
  uint64_t next_handle_ ABSL_GUARDED_BY(mu_) = 1;

  const int64_t floats_per_slot_;
  mutable SessionStore sessions_;  // thread-safe
  // Engine-thread state.
  PrefixCache prefix_cache_;
  int64_t prefill_tokens_ = 0;
  int64_t prefix_query_tokens_ = 0;
  int64_t prefix_hit_tokens_ = 0;
  std::deque<std::unique_ptr<Group>> waiting_groups_;
  std::vector<std::unique_ptr<Group>> running_;

  // Outputs on their way to sinks (the sink's reference keeps it alive until
  // its last output is delivered).
  struct Delivery {
    std::shared_ptr<RequestSink> sink;
    RequestOutput output;
  };
  std::mutex deliver_mu_;
  std::condition_variable deliver_cv_;
  std::deque<Delivery> deliveries_ ABSL_GUARDED_BY(deliver_mu_);
  bool deliver_stop_ ABSL_GUARDED_BY(deliver_mu_) = false;
  std::thread deliver_thread_;
  std::thread thread_;
};

}  // namespace gdnserve
