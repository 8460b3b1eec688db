#include "engine/engine.h"

#include <algorithm>
#include <iterator>
#include <unordered_map>
#include <unordered_set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "engine/state_blob.h"
#include "engine/stop_matcher.h"

namespace gdnserve {

std::string_view FinishReasonName(FinishReason reason) {
  switch (reason) {
    case FinishReason::kNone: return "";
    case FinishReason::kLength: return "length";
    case FinishReason::kStop: return "stop";
    case FinishReason::kEos: return "eos";
    case FinishReason::kCancelled: return "cancelled";
  }
  return "";
}

// One sample of a request: its slot, sampler, detokenizer and stop matcher.
struct Sample {
  Sample(int index, const GenerationRequest& r, const Tokenizer& tok)
      : index(index),
        sampler(SeedFor(r.sampling, index), r.prompt),
        detok(tok, /*starts_text=*/false),
        stop(r.stop.stop_strings) {
    delta.index = index;
  }
  static SamplingParams SeedFor(SamplingParams p, int index) {
    p.seed += index;  // sample i of a seeded request draws with seed + i
    return p;
  }
  bool finished() const { return finish != FinishReason::kNone; }

  int index;
  int slot = -1;
  SequenceSampler sampler;
  IncrementalDetokenizer detok;
  StopMatcher stop;
  int32_t last_token = -1;  // fed to the next decode step
  int num_generated = 0;
  std::vector<int32_t> generated;  // sample 0 of a session request: every token drawn
  FinishReason finish = FinishReason::kNone;
  SampleDelta delta;        // output since the last delivery
};

struct Engine::Group {
  uint64_t handle = 0;
  GenerationRequest req;
  std::shared_ptr<RequestSink> sink;
  std::vector<Sample> samples;
  int64_t prefilled = 0;  // prompt tokens already run (or restored)
  int64_t cached = 0;     // prompt tokens restored from a snapshot
  std::shared_ptr<const StateSnapshot> restore;  // written into sample 0's slot at admission
  bool capture = false;   // prefill starts chunk-aligned: snapshots for the prefix cache are exact
  bool from_session = false;  // restored from a session (decode steps ran: not a cold prefill's state)
  std::vector<float> prompt_logits;  // want_prompt_logits, until delivered
  bool cancel = false;
  absl::Status error;  // non-OK: the request ends failed (e.g. its deadline passed)
  int completion_tokens = 0;
  RequestTimes times;

  bool prefill_done() const { return prefilled == static_cast<int64_t>(req.prompt.size()); }
  bool finished() const {
    return std::all_of(samples.begin(), samples.end(), [](const Sample& s) { return s.finished(); });
  }
  int num_decoding() const {
    if (!prefill_done()) return 0;
    return static_cast<int>(std::count_if(samples.begin(), samples.end(),
                                          [](const Sample& s) { return !s.finished(); }));
  }
};

Engine::Engine(Backend* backend, const Tokenizer* tokenizer, const EngineOptions& options,
               StepObserver* observer)
    : backend_(backend), tokenizer_(tokenizer), options_(Normalized(options, backend->state_pool().num_slots())),
      observer_(observer),
      floats_per_slot_(backend->state_pool().layout().floats_per_slot()),
      sessions_(options_.session_bytes, std::chrono::milliseconds(options_.session_ttl_ms)),
      prefix_cache_(options_.prefix_cache_bytes, options_.prefix_cache_interval) {
  stats_.slots_total = backend_->state_pool().num_slots();
  deliver_thread_ = std::thread([this] { DeliverLoop(); });
  thread_ = std::thread([this] { Loop(); });
}

Engine::~Engine() { Shutdown(0); }

EngineOptions Engine::Normalized(EngineOptions o, int num_slots) {
  // Every slot decoding must still leave one aligned prefill chunk, or a long
  // prompt could wait forever; pieces are whole chunks.
  o.max_prefill_chunk = std::max<int>(kChunkAlign, o.max_prefill_chunk / kChunkAlign * kChunkAlign);
  o.step_token_budget = std::max(o.step_token_budget, num_slots + kChunkAlign);
  o.prefix_cache_interval = std::max(kChunkAlign, o.prefix_cache_interval / kChunkAlign * kChunkAlign);
  if (o.session_max_tokens <= 0) o.session_max_tokens = int64_t{o.max_prompt_tokens} + o.max_tokens_cap;
  return o;
}

absl::Status Engine::Validate(const GenerationRequest& r) const {
  auto bad = [](const std::string& msg) { return absl::InvalidArgumentError(msg); };
  if (r.prompt.empty() && !r.session_continue) return bad("prompt: must not be empty");
  if (r.session_continue && r.session_id.empty()) return bad("session_continue: needs a session_id");
  if (static_cast<int64_t>(r.prompt.size()) > options_.max_prompt_tokens) {
    return bad(absl::StrFormat("prompt: %d tokens exceed the limit of %d (--max-prompt-tokens)", r.prompt.size(),
                               options_.max_prompt_tokens));
  }
  const int vocab = backend_->config().vocab_size;
  for (size_t i = 0; i < r.prompt.size(); ++i) {
    if (r.prompt[i] < 0 || r.prompt[i] >= vocab) {
      return bad(absl::StrFormat("prompt: token id %d at position %d is outside the vocabulary [0, %d)", r.prompt[i],
                                 i, vocab));
    }
  }
  if (r.stop.max_tokens < 1 || r.stop.max_tokens > options_.max_tokens_cap) {
    return bad(absl::StrFormat("max_tokens: must be in [1, %d], got %d", options_.max_tokens_cap, r.stop.max_tokens));
  }
  const int max_n = std::min(options_.max_n, backend_->state_pool().num_slots());
  if (r.n < 1 || r.n > max_n) return bad(absl::StrFormat("n: must be in [1, %d], got %d", max_n, r.n));
  for (int32_t t : r.stop.stop_token_ids) {
    if (t < 0 || t >= vocab) return bad(absl::StrFormat("stop_token_ids: %d is outside the vocabulary", t));
  }
  if (r.stop.stop_strings.size() > 16) return bad("stop: at most 16 stop strings");
  for (const std::string& s : r.stop.stop_strings) {
    if (s.empty() || s.size() > 256) return bad("stop: each stop string must have 1 to 256 bytes");
  }
  return r.sampling.Validate(vocab);
}

absl::StatusOr<uint64_t> Engine::Submit(GenerationRequest request, std::shared_ptr<RequestSink> sink) {
  if (absl::Status s = Validate(request); !s.ok()) return s;
  auto g = std::make_unique<Group>();
  g->times.arrival = Clock::now();
  g->req = std::move(request);
  g->sink = std::move(sink);
  if (!g->req.session_id.empty()) {
    if (absl::Status s = AttachSession(*g); !s.ok()) return s;
  }
  g->samples.reserve(g->req.n);
  for (int i = 0; i < g->req.n; ++i) g->samples.emplace_back(i, g->req, *tokenizer_);
  std::lock_guard<std::mutex> lock(mu_);
  if (!backend_failure_.ok()) {
    return absl::UnavailableError(absl::StrCat("the compute backend failed: ", backend_failure_.message()));
  }
  if (!accepting_.load() || stop_) return absl::UnavailableError("the server is shutting down");
  if (waiting_ >= options_.max_queue) {
    return absl::ResourceExhaustedError(
        absl::StrFormat("%d requests are already waiting (--max-queue); retry later", waiting_));
  }
  g->handle = next_handle_++;
  if (g->restore != nullptr) stats_.session_restored_tokens += g->cached;
  const uint64_t handle = g->handle;
  inbox_.push_back(std::move(g));
  ++waiting_;
  stats_.requests_waiting = waiting_;
  wake_.notify_one();
  return handle;
}

absl::Status Engine::health() const {
  std::lock_guard<std::mutex> lock(mu_);
  return backend_failure_;
}

void Engine::Cancel(uint64_t handle) {
  std::lock_guard<std::mutex> lock(mu_);
  cancels_.push_back(handle);
  wake_.notify_one();
}

void Engine::Shutdown(int drain_ms) {
  accepting_.store(false);
  const auto deadline = Clock::now() + std::chrono::milliseconds(std::max(0, drain_ms));
  std::unique_lock<std::mutex> lock(mu_);
  if (!thread_.joinable()) return;
  // Let running and queued requests finish until the deadline, then cancel the rest.
  wake_.wait_until(lock, deadline, [this] { return stats_.requests_running == 0 && waiting_ == 0; });
  cancel_all_ = true;
  stop_ = true;
  wake_.notify_all();
  lock.unlock();
  thread_.join();
  // Every output the engine produced reaches its sink before Shutdown returns.
  {
    std::lock_guard<std::mutex> dlock(deliver_mu_);
    deliver_stop_ = true;
  }
  deliver_cv_.notify_all();
  deliver_thread_.join();
}

void Engine::DeliverLoop() {
  std::vector<Delivery> batch;
  while (true) {
    {
      std::unique_lock<std::mutex> lock(deliver_mu_);
      deliver_cv_.wait(lock, [this] { return deliver_stop_ || !deliveries_.empty(); });
      if (deliveries_.empty()) break;  // stopped and drained
      batch.assign(std::make_move_iterator(deliveries_.begin()), std::make_move_iterator(deliveries_.end()));
      deliveries_.clear();
    }
    deliver_cv_.notify_all();  // the engine may wait for room
    for (Delivery& d : batch) d.sink->OnOutput(std::move(d.output));
    batch.clear();  // a finished request's sink may be destroyed here
  }
}

EngineStats Engine::Stats() const {
  EngineStats stats;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stats = stats_;
  }
  stats.sessions = static_cast<int64_t>(sessions_.size());
  stats.session_bytes = sessions_.bytes_used();
  return stats;
}

absl::Status Engine::AttachSession(Group& g) {
  GenerationRequest& r = g.req;
  if (!sessions_.enabled()) {
    if (r.session_continue) {
      return absl::FailedPreconditionError("session_continue: sessions are disabled (--session-bytes 0)");
    }
    return absl::OkStatus();
  }
  std::shared_ptr<const StateSnapshot> snap = sessions_.Get(r.session_id);
  if (r.session_continue) {
    if (snap == nullptr) {
      return absl::NotFoundError(absl::StrFormat(
          "session \"%s\" not found (unknown, expired or evicted); send the whole history without continue",
          r.session_id));
    }
    std::vector<int32_t> prompt = snap->tokens;
    if (snap->pending >= 0) prompt.push_back(snap->pending);
    prompt.insert(prompt.end(), r.prompt.begin(), r.prompt.end());
    if (prompt.size() == snap->tokens.size()) {
      return absl::InvalidArgumentError("prompt: empty, and the session has no pending token to run");
    }
    r.prompt = std::move(prompt);
  }
  // The history this request leaves behind is at most its prompt plus
  // max_tokens: refuse what could outgrow the per-session bound up front, so
  // a stored session never exceeds it (and the session keeps its last state).
  const int64_t most = static_cast<int64_t>(r.prompt.size()) + r.stop.max_tokens;
  if (most > options_.session_max_tokens) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "max_tokens: session \"%s\" would hold up to %d tokens (a prompt of %d with the history, plus max_tokens "
        "%d), more than the session limit of %d (--max-prompt-tokens + --max-tokens-cap); lower max_tokens or start "
        "a new session",
        r.session_id, most, r.prompt.size(), r.stop.max_tokens, options_.session_max_tokens));
  }
  if (!r.session_continue &&
      (snap == nullptr || snap->tokens.size() >= r.prompt.size() ||
       !std::equal(snap->tokens.begin(), snap->tokens.end(), r.prompt.begin()))) {
    return absl::OkStatus();  // a different history: prefill it all
  }
  g.restore = std::move(snap);
  g.from_session = true;
  g.prefilled = g.cached = static_cast<int64_t>(g.restore->tokens.size());
  return absl::OkStatus();
}

void Engine::LookupPrefix(Group& g) {
  if (!prefix_cache_.enabled()) return;
  prefix_query_tokens_ += static_cast<int64_t>(g.req.prompt.size());
  std::shared_ptr<const StateSnapshot> snap = prefix_cache_.Lookup(g.req.prompt);
  if (snap == nullptr) return;
  g.restore = std::move(snap);
  g.prefilled = g.cached = static_cast<int64_t>(g.restore->tokens.size());
  prefix_hit_tokens_ += g.cached;
}

void Engine::CheckBackendHealth() {
  absl::Status h = backend_->Health();
  if (h.ok()) return;
  std::lock_guard<std::mutex> lock(mu_);
  if (backend_failure_.ok()) backend_failure_ = std::move(h);
  accepting_.store(false);
}

void Engine::MaybeSnapshotPrefix(Group& g) {
  if (!g.capture || g.prefilled % prefix_cache_.interval() != 0) return;
  const auto prefix = absl::MakeConstSpan(g.req.prompt).subspan(0, g.prefilled);
  if (prefix_cache_.Contains(prefix)) return;
  auto snap = std::make_shared<StateSnapshot>();
  snap->tokens.assign(prefix.begin(), prefix.end());
  snap->state.resize(floats_per_slot_);
  if (!backend_->ReadSlot(g.samples[0].slot, absl::MakeSpan(snap->state)).ok()) return;
  prefix_cache_.Insert(std::move(snap));
}

void Engine::SaveSession(Group& g) {
  const Sample& s = g.samples[0];
  if (s.generated.empty()) return;
  auto snap = std::make_shared<StateSnapshot>();
  snap->tokens = g.req.prompt;
  snap->tokens.insert(snap->tokens.end(), s.generated.begin(), s.generated.end() - 1);
  snap->pending = s.generated.back();  // drawn, never fed: the next turn feeds it first
  snap->state.resize(floats_per_slot_);
  if (!backend_->ReadSlot(s.slot, absl::MakeSpan(snap->state)).ok()) return;
  sessions_.Put(g.req.session_id, std::move(snap));
}

absl::StatusOr<std::string> Engine::ExportSession(const std::string& session_id) const {
  std::shared_ptr<const StateSnapshot> snap = sessions_.Get(session_id);
  if (snap == nullptr) {
    return absl::NotFoundError(absl::StrFormat("session \"%s\" not found (unknown, expired or evicted)", session_id));
  }
  return EncodeStateBlob(*snap, backend_->config().ConfigHash());
}

absl::StatusOr<int64_t> Engine::ImportSession(const std::string& session_id, std::string_view blob) {
  if (session_id.empty()) return absl::InvalidArgumentError("session_id: must not be empty");
  if (!sessions_.enabled()) return absl::FailedPreconditionError("sessions are disabled (--session-bytes 0)");
  absl::StatusOr<StateSnapshot> snap = DecodeStateBlob(blob, backend_->config().ConfigHash(), floats_per_slot_);
  if (!snap.ok()) return snap.status();
  const int vocab = backend_->config().vocab_size;
  auto bad_token = [vocab](int32_t t) { return t < 0 || t >= vocab; };
  if (std::any_of(snap->tokens.begin(), snap->tokens.end(), bad_token) ||
      (snap->pending != -1 && bad_token(snap->pending))) {
    return absl::InvalidArgumentError("state blob: a token id is outside the vocabulary");
  }
  const int64_t n = static_cast<int64_t>(snap->tokens.size());
  if (n + (snap->pending >= 0 ? 1 : 0) > options_.session_max_tokens) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "state blob: its history of %d tokens exceeds this server's session limit of %d "
        "(--max-prompt-tokens + --max-tokens-cap)",
        n + (snap->pending >= 0 ? 1 : 0), options_.session_max_tokens));
  }
  if (!sessions_.Put(session_id, std::make_shared<const StateSnapshot>(*std::move(snap)))) {
    return absl::ResourceExhaustedError("state: larger than the session budget (--session-bytes)");
  }
  return n;
}

void Engine::Loop() {
  while (true) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      wake_.wait(lock, [this] {
        return stop_ || !inbox_.empty() || !cancels_.empty() || !running_.empty() || !waiting_groups_.empty();
      });
      if (stop_ && inbox_.empty() && running_.empty() && waiting_groups_.empty()) break;
    }
    Step();
  }
}

namespace {

// Ends a sample's text: flushes the detokenizer through the stop matcher.
void FlushText(Sample& s) {
  bool stopped = false;
  s.delta.text += s.stop.Push(s.detok.Flush(), &stopped);
  if (!stopped) s.delta.text += s.stop.Flush();
}

void Finish(Sample& s, FinishReason reason) {
  if (s.finished()) return;
  s.finish = reason;
  s.delta.finish = reason;
  if (reason != FinishReason::kStop) FlushText(s);
}

}  // namespace

bool Engine::Step() {
  StatePool& pool = backend_->state_pool();
  // 1. Take new requests and cancellations.
  std::vector<uint64_t> cancels;
  bool cancel_all;
  {
    std::lock_guard<std::mutex> lock(mu_);
    while (!inbox_.empty()) {
      waiting_groups_.push_back(std::move(inbox_.front()));
      inbox_.pop_front();
      Group& g = *waiting_groups_.back();
      if (g.restore == nullptr) LookupPrefix(g);
      g.capture = prefix_cache_.enabled() && !g.from_session && g.prefilled % kChunkAlign == 0;
    }
    cancels.swap(cancels_);
    cancel_all = cancel_all_;
  }
  const auto now = Clock::now();
  auto should_cancel = [&](const Group& g) {
    return cancel_all || g.cancel || now > g.req.deadline ||
           std::find(cancels.begin(), cancels.end(), g.handle) != cancels.end();
  };
  // A request ended at or past its deadline failed, whoever noticed first
  // (the engine's clock here, or the front end's cancel): the client sees
  // DEADLINE_EXCEEDED and the metrics count an error, not a success. A
  // client's cancel that arrives just before our deadline is the client's
  // own deadline firing: its timer started before the request reached us
  // (gRPC sends the time left), so it runs ahead of ours by the request's
  // transit time — kClientDeadlineSlack of it is taken as the deadline.
  constexpr auto kClientDeadlineSlack = std::chrono::milliseconds(250);
  auto cancel_group = [&](Group& g) {
    const bool by_client = std::find(cancels.begin(), cancels.end(), g.handle) != cancels.end();
    for (Sample& s : g.samples) Finish(s, FinishReason::kCancelled);
    const auto slack = by_client ? Clock::duration(kClientDeadlineSlack) : Clock::duration::zero();
    if (now >= g.req.deadline - slack && g.error.ok()) g.error = absl::DeadlineExceededError("deadline exceeded");
  };
  std::vector<std::unique_ptr<Group>> done;
  for (auto it = waiting_groups_.begin(); it != waiting_groups_.end();) {
    if (should_cancel(**it)) {
      cancel_group(**it);
      done.push_back(std::move(*it));
      it = waiting_groups_.erase(it);
    } else {
      ++it;
    }
  }
  for (auto& g : running_) {
    if (should_cancel(*g)) cancel_group(*g);
  }

  // 2. Plan the step.
  SchedulerInput in;
  in.free_slots = pool.num_free();
  in.token_budget = options_.step_token_budget;
  in.max_prefill_chunk = options_.max_prefill_chunk;
  in.chunk_align = kChunkAlign;
  for (const auto& g : running_) {
    if (g->finished()) continue;
    in.running.push_back({g->handle, static_cast<int64_t>(g->req.prompt.size()) - g->prefilled, g->num_decoding()});
  }
  for (const auto& g : waiting_groups_) {
    in.waiting.push_back({g->handle, g->req.n, static_cast<int64_t>(g->req.prompt.size()) - g->prefilled});
  }
  SchedulerPlan plan = Schedule(in);

  // 3. Admit: every sample of an admitted group gets its slot now.
  for (uint64_t id : plan.admit) {
    auto it = std::find_if(waiting_groups_.begin(), waiting_groups_.end(),
                           [id](const auto& g) { return g->handle == id; });
    Group& g = **it;
    for (Sample& s : g.samples) s.slot = *pool.Acquire();
    if (g.restore != nullptr) {
      if (!backend_->WriteSlot(g.samples[0].slot, g.restore->state).ok()) {
        (void)pool.Release(g.samples[0].slot);  // start cold from a zeroed slot
        g.samples[0].slot = *pool.Acquire();
        g.prefilled = g.cached = 0;
      }
      g.restore.reset();
    }
    g.times.scheduled = now;
    running_.push_back(std::move(*it));
    waiting_groups_.erase(it);
  }
  // Handle -> running group, and the handles in this step's batch: lookups
  // in O(1) (hundreds of streams would make them quadratic per step).
  std::unordered_map<uint64_t, Group*> by_handle;
  by_handle.reserve(running_.size());
  for (auto& g : running_) by_handle.emplace(g->handle, g.get());
  auto find_running = [&by_handle](uint64_t id) -> Group* {
    const auto it = by_handle.find(id);
    return it == by_handle.end() ? nullptr : it->second;
  };
  std::unordered_set<uint64_t> batched(plan.decode.begin(), plan.decode.end());
  for (const PrefillPiece& p : plan.prefill) batched.insert(p.id);

  // 4. Run the packed batch: decode tokens, then prefill pieces.
  std::vector<SeqPiece> batch;
  std::vector<std::pair<Group*, Sample*>> decode_samples;
  int num_prefill_tokens = 0;
  const bool device_sampling = options_.device_sampling && backend_->SamplesOnDevice();
  // A group's draws run on the device unless it wants top logprobs (those
  // need the whole row on the host).
  auto draws_on_device = [&](const Group& g) { return device_sampling && g.req.sampling.logprobs == 0; };
  for (uint64_t id : plan.decode) {
    Group* g = find_running(id);
    const bool host = !draws_on_device(*g);
    for (Sample& s : g->samples) {
      if (s.finished()) continue;
      batch.push_back({s.slot, {&s.last_token, 1}, false, host});
      decode_samples.push_back({g, &s});
    }
  }
  for (PrefillPiece& p : plan.prefill) {
    Group* g = find_running(p.id);
    if (g->capture) {  // end the piece at the last cache interval inside it, to snapshot there
      const int64_t interval = prefix_cache_.interval();
      const int64_t end = (g->prefilled + p.num_tokens) / interval * interval;
      if (end > g->prefilled && end < g->prefilled + p.num_tokens) {
        plan.num_tokens -= g->prefilled + p.num_tokens - end;
        p.num_tokens = end - g->prefilled;
      }
    }
    // Logits on the host only where the prompt ends and someone reads them there.
    const bool ends = g->prefilled + p.num_tokens == static_cast<int64_t>(g->req.prompt.size());
    const bool host = !device_sampling || (ends && (g->req.want_prompt_logits || !draws_on_device(*g)));
    batch.push_back({g->samples[0].slot, absl::MakeConstSpan(g->req.prompt).subspan(g->prefilled, p.num_tokens),
                     false, host, /*prompt=*/true});
    num_prefill_tokens += p.num_tokens;
  }
  ForwardOutput out;
  const auto t_forward = Clock::now();
  absl::Status status = batch.empty() ? absl::OkStatus() : backend_->Forward(batch, &out);
  if (!status.ok()) CheckBackendHealth();
  const auto t_after = Clock::now();
  if (observer_ != nullptr && !batch.empty()) {
    observer_->OnStep(static_cast<int>(plan.num_tokens), static_cast<int>(decode_samples.size()), num_prefill_tokens,
                      std::chrono::duration<double>(t_after - t_forward).count());
  }

  // 5. Sample, detokenize, check stops.
  const int eos = backend_->config().eos_token_id;
  auto take_token = [&](Group& g, Sample& s, const SampleResult& r) {
    if (g.times.first_token == Clock::time_point()) g.times.first_token = t_after;
    s.last_token = r.token;
    ++s.num_generated;
    ++g.completion_tokens;
    if (s.index == 0 && !g.req.session_id.empty()) s.generated.push_back(r.token);
    s.delta.token_ids.push_back(r.token);
    if (g.req.sampling.logprobs > 0) s.delta.logprobs.push_back({r.token, r.logprob, r.top});
    const StopConditions& stop = g.req.stop;
    if (r.token == eos && !stop.ignore_eos) {
      Finish(s, FinishReason::kEos);
    } else if (std::find(stop.stop_token_ids.begin(), stop.stop_token_ids.end(), r.token) !=
               stop.stop_token_ids.end()) {
      Finish(s, FinishReason::kStop);
      FlushText(s);  // text before the stop token is not a stop string: emit it
    } else {
      bool stopped = false;
      s.delta.text += s.stop.Push(s.detok.Push(r.token), &stopped);
      if (stopped) Finish(s, FinishReason::kStop);
    }
    if (!s.finished() && s.num_generated >= stop.max_tokens) Finish(s, FinishReason::kLength);
  };
  if (status.ok() && !batch.empty()) {
    // The draws of this step, in delivery order: decode samples, then the
    // samples of prompts that finished.
    struct PendingDraw {
      Group* g;
      Sample* s;
      int64_t row;
    };
    std::vector<PendingDraw> draws;
    draws.reserve(decode_samples.size());
    for (size_t i = 0; i < decode_samples.size(); ++i) {
      draws.push_back({decode_samples[i].first, decode_samples[i].second, out.first_row[i + 1] - 1});
    }
    for (size_t j = 0; j < plan.prefill.size(); ++j) {
      Group* g = find_running(plan.prefill[j].id);
      g->prefilled += plan.prefill[j].num_tokens;
      MaybeSnapshotPrefix(*g);
      if (!g->prefill_done()) continue;
      const int64_t row = out.first_row[decode_samples.size() + j + 1] - 1;
      if (g->req.want_prompt_logits) g->prompt_logits.assign(out.Row(row), out.Row(row) + out.vocab);
      // Prompt done: fork the state to the other samples, then each draws its first token.
      for (size_t k = 1; k < g->samples.size(); ++k) (void)pool.Copy(g->samples[0].slot, g->samples[k].slot);
      for (Sample& s : g->samples) {
        if (!s.finished()) draws.push_back({g, &s, row});
      }
    }
    // Host draws from host rows; device draws in one batch.
    std::vector<SampleResult> results(draws.size());
    std::vector<DeviceDraw> device;
    std::vector<size_t> device_index;
    for (size_t k = 0; k < draws.size(); ++k) {
      Sample& s = *draws[k].s;
      if (!draws_on_device(*draws[k].g)) {
        results[k] = s.sampler.Sample({out.Row(draws[k].row), static_cast<size_t>(out.vocab)});
        continue;
      }
      DeviceDraw d;
      d.row = draws[k].row;
      d.params = &s.sampler.params();
      d.uniform = d.params->greedy() ? 0.0 : s.sampler.NextUniform();
      if (s.sampler.has_penalties()) {
        d.repeated = s.sampler.repeated();
        d.counted = s.sampler.counted();
        d.counts = s.sampler.counts();
      }
      device.push_back(d);
      device_index.push_back(k);
    }
    if (!device.empty()) {
      std::vector<SampleResult> drawn(device.size());
      status = backend_->Draw(device, absl::MakeSpan(drawn));
      if (status.ok()) {
        for (size_t j = 0; j < device.size(); ++j) {
          draws[device_index[j]].s->sampler.Record(drawn[j].token);
          results[device_index[j]] = std::move(drawn[j]);
        }
      } else {
        CheckBackendHealth();
      }
    }
    if (status.ok()) {
      for (size_t k = 0; k < draws.size(); ++k) take_token(*draws[k].g, *draws[k].s, results[k]);
    }
  }

  // 6. Release the slots of finished samples, publish the stats, then deliver,
  // so a client that sees its final message also sees its slot free.
  std::vector<absl::Status> errors(running_.size());
  for (size_t i = 0; i < running_.size(); ++i) {
    Group& g = *running_[i];
    const bool in_batch = batched.count(g.handle) > 0;
    if (in_batch && !status.ok()) {
      errors[i] = status;
      for (Sample& s : g.samples) Finish(s, FinishReason::kCancelled);
    } else if (!g.error.ok()) {
      errors[i] = g.error;
    }
    Sample& s0 = g.samples[0];
    if (!g.req.session_id.empty() && s0.finished() && s0.slot >= 0 && s0.finish != FinishReason::kCancelled &&
        errors[i].ok()) {
      SaveSession(g);
    }
    for (Sample& s : g.samples) {
      if (s.finished() && s.slot >= 0) {
        (void)pool.Release(s.slot);
        s.slot = -1;
      }
    }
  }
  int64_t finished_now = static_cast<int64_t>(done.size());
  for (const auto& g : running_) finished_now += g->finished();
  {
    std::lock_guard<std::mutex> lock(mu_);
    waiting_ = static_cast<int>(inbox_.size() + waiting_groups_.size());
    stats_.requests_waiting = waiting_;
    stats_.requests_running = static_cast<int>(running_.size() - (finished_now - done.size()));
    stats_.slots_used = pool.num_used();
    stats_.requests_finished += finished_now;
    ++stats_.steps;
    if (status.ok()) prefill_tokens_ += num_prefill_tokens;
    stats_.prefill_tokens = prefill_tokens_;
    stats_.prefix_cache_query_tokens = prefix_query_tokens_;
    stats_.prefix_cache_hit_tokens = prefix_hit_tokens_;
    stats_.prefix_cache_bytes = prefix_cache_.bytes_used();
    stats_.prefix_cache_entries = static_cast<int64_t>(prefix_cache_.size());
  }
  std::vector<Delivery> outputs;
  auto deliver = [&](Group& g, const absl::Status& error) {
    const bool finished = g.finished();
    RequestOutput o;
    for (Sample& s : g.samples) {
      if (!s.delta.token_ids.empty() || !s.delta.text.empty() || s.delta.finish != FinishReason::kNone) {
        o.samples.push_back(std::move(s.delta));
        s.delta = SampleDelta();
        s.delta.index = s.index;
      }
    }
    o.finished = finished;
    o.error = error;
    o.prompt_tokens = static_cast<int>(g.req.prompt.size());
    o.cached_prompt_tokens = static_cast<int>(g.cached);
    if (!g.prompt_logits.empty() && !o.samples.empty()) o.prompt_logits = std::move(g.prompt_logits);
    o.completion_tokens = g.completion_tokens;
    if (finished) g.times.finished = t_after;
    o.times = g.times;
    if (!o.samples.empty() || finished) outputs.push_back({g.sink, std::move(o)});
  };
  for (size_t i = 0; i < running_.size(); ++i) deliver(*running_[i], errors[i]);
  for (auto& g : done) deliver(*g, g->error);
  if (!outputs.empty()) {
    // Hand the step's outputs to the delivery thread; if it has fallen far
    // behind (slow sinks), wait for room rather than queue without bound.
    constexpr size_t kMaxQueued = 1 << 16;
    std::unique_lock<std::mutex> lock(deliver_mu_);
    deliver_cv_.wait(lock, [this] { return deliveries_.size() < kMaxQueued; });
    for (Delivery& d : outputs) deliveries_.push_back(std::move(d));
    lock.unlock();
    deliver_cv_.notify_all();
  }
  running_.erase(std::remove_if(running_.begin(), running_.end(), [](const auto& g) { return g->finished(); }),
                 running_.end());
  wake_.notify_all();  // Shutdown waits for the engine to drain
  return !batch.empty();
}

}  // namespace gdnserve
