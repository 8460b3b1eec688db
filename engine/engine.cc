#include "engine/engine.h"

#include <algorithm>

#include "absl/strings/str_format.h"
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
  FinishReason finish = FinishReason::kNone;
  SampleDelta delta;        // output since the last delivery
};

struct Engine::Group {
  uint64_t handle = 0;
  GenerationRequest req;
  std::shared_ptr<RequestSink> sink;
  std::vector<Sample> samples;
  int64_t prefilled = 0;  // prompt tokens already run
  bool cancel = false;
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
      observer_(observer) {
  stats_.slots_total = backend_->state_pool().num_slots();
  thread_ = std::thread([this] { Loop(); });
}

Engine::~Engine() { Shutdown(0); }

EngineOptions Engine::Normalized(EngineOptions o, int num_slots) {
  // Every slot decoding must still leave one aligned prefill chunk, or a long
  // prompt could wait forever; pieces are whole chunks.
  o.max_prefill_chunk = std::max<int>(kChunkAlign, o.max_prefill_chunk / kChunkAlign * kChunkAlign);
  o.step_token_budget = std::max(o.step_token_budget, num_slots + kChunkAlign);
  return o;
}

absl::Status Engine::Validate(const GenerationRequest& r) const {
  auto bad = [](const std::string& msg) { return absl::InvalidArgumentError(msg); };
  if (r.prompt.empty()) return bad("prompt: must not be empty");
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
  g->samples.reserve(g->req.n);
  for (int i = 0; i < g->req.n; ++i) g->samples.emplace_back(i, g->req, *tokenizer_);
  std::lock_guard<std::mutex> lock(mu_);
  if (!accepting_.load() || stop_) return absl::UnavailableError("the server is shutting down");
  if (waiting_ >= options_.max_queue) {
    return absl::ResourceExhaustedError(
        absl::StrFormat("%d requests are already waiting (--max-queue); retry later", waiting_));
  }
  g->handle = next_handle_++;
  const uint64_t handle = g->handle;
  inbox_.push_back(std::move(g));
  ++waiting_;
  stats_.requests_waiting = waiting_;
  wake_.notify_one();
  return handle;
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
}

EngineStats Engine::Stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
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
    }
    cancels.swap(cancels_);
    cancel_all = cancel_all_;
  }
  const auto now = Clock::now();
  auto should_cancel = [&](const Group& g) {
    return cancel_all || g.cancel || now > g.req.deadline ||
           std::find(cancels.begin(), cancels.end(), g.handle) != cancels.end();
  };
  std::vector<std::unique_ptr<Group>> done;
  for (auto it = waiting_groups_.begin(); it != waiting_groups_.end();) {
    if (should_cancel(**it)) {
      for (Sample& s : (*it)->samples) Finish(s, FinishReason::kCancelled);
      done.push_back(std::move(*it));
      it = waiting_groups_.erase(it);
    } else {
      ++it;
    }
  }
  for (auto& g : running_) {
    if (should_cancel(*g)) {
      for (Sample& s : g->samples) Finish(s, FinishReason::kCancelled);
    }
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
    in.waiting.push_back({g->handle, g->req.n, static_cast<int64_t>(g->req.prompt.size())});
  }
  const SchedulerPlan plan = Schedule(in);

  // 3. Admit: every sample of an admitted group gets its slot now.
  for (uint64_t id : plan.admit) {
    auto it = std::find_if(waiting_groups_.begin(), waiting_groups_.end(),
                           [id](const auto& g) { return g->handle == id; });
    Group& g = **it;
    for (Sample& s : g.samples) s.slot = *pool.Acquire();
    g.times.scheduled = now;
    running_.push_back(std::move(*it));
    waiting_groups_.erase(it);
  }
  auto find_running = [this](uint64_t id) -> Group* {
    for (auto& g : running_) {
      if (g->handle == id) return g.get();
    }
    return nullptr;
  };

  // 4. Run the packed batch: decode tokens, then prefill pieces.
  std::vector<SeqPiece> batch;
  std::vector<std::pair<Group*, Sample*>> decode_samples;
  int num_prefill_tokens = 0;
  for (uint64_t id : plan.decode) {
    Group* g = find_running(id);
    for (Sample& s : g->samples) {
      if (s.finished()) continue;
      batch.push_back({s.slot, {&s.last_token, 1}, false});
      decode_samples.push_back({g, &s});
    }
  }
  for (const PrefillPiece& p : plan.prefill) {
    Group* g = find_running(p.id);
    batch.push_back({g->samples[0].slot, absl::MakeConstSpan(g->req.prompt).subspan(g->prefilled, p.num_tokens),
                     false});
    num_prefill_tokens += p.num_tokens;
  }
  ForwardOutput out;
  const auto t_forward = Clock::now();
  absl::Status status = batch.empty() ? absl::OkStatus() : backend_->Forward(batch, &out);
  const auto t_after = Clock::now();
  if (observer_ != nullptr && !batch.empty()) {
    observer_->OnStep(static_cast<int>(plan.num_tokens), static_cast<int>(decode_samples.size()), num_prefill_tokens,
                      std::chrono::duration<double>(t_after - t_forward).count());
  }

  // 5. Sample, detokenize, check stops.
  const int eos = backend_->config().eos_token_id;
  auto take_token = [&](Group& g, Sample& s, const float* logits) {
    const SampleResult r = s.sampler.Sample({logits, static_cast<size_t>(out.vocab)});
    if (g.times.first_token == Clock::time_point()) g.times.first_token = t_after;
    s.last_token = r.token;
    ++s.num_generated;
    ++g.completion_tokens;
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
    for (size_t i = 0; i < decode_samples.size(); ++i) {
      take_token(*decode_samples[i].first, *decode_samples[i].second, out.Last(i));
    }
    for (size_t j = 0; j < plan.prefill.size(); ++j) {
      Group* g = find_running(plan.prefill[j].id);
      g->prefilled += plan.prefill[j].num_tokens;
      if (!g->prefill_done()) continue;
      // Prompt done: fork the state to the other samples, then each draws its first token.
      for (size_t k = 1; k < g->samples.size(); ++k) (void)pool.Copy(g->samples[0].slot, g->samples[k].slot);
      for (Sample& s : g->samples) {
        if (!s.finished()) take_token(*g, s, out.Last(decode_samples.size() + j));
      }
    }
  }

  // 6. Release the slots of finished samples, publish the stats, then deliver,
  // so a client that sees its final message also sees its slot free.
  std::vector<absl::Status> errors(running_.size());
  for (size_t i = 0; i < running_.size(); ++i) {
    Group& g = *running_[i];
    const bool in_batch = std::find(plan.decode.begin(), plan.decode.end(), g.handle) != plan.decode.end() ||
                          std::any_of(plan.prefill.begin(), plan.prefill.end(),
                                      [&](const PrefillPiece& p) { return p.id == g.handle; });
    if (in_batch && !status.ok()) {
      errors[i] = status;
      for (Sample& s : g.samples) Finish(s, FinishReason::kCancelled);
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
  }
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
    o.completion_tokens = g.completion_tokens;
    if (finished) g.times.finished = t_after;
    o.times = g.times;
    if (!o.samples.empty() || finished) g.sink->OnOutput(std::move(o));
  };
  for (size_t i = 0; i < running_.size(); ++i) deliver(*running_[i], errors[i]);
  for (auto& g : done) deliver(*g, absl::OkStatus());
  running_.erase(std::remove_if(running_.begin(), running_.end(), [](const auto& g) { return g->finished(); }),
                 running_.end());
  wake_.notify_all();  // Shutdown waits for the engine to drain
  return !batch.empty();
}

}  // namespace gdnserve
