// Host-memory copies of sequence state (DESIGN.md 3.2, issue 10): the exact
// prefix state cache and the session store.
//
// A snapshot is one slot's state (every layer's recurrent [HV][V][K] and conv
// state, float32, StateLayout order) together with the tokens whose effect it
// holds. float32 copies taken at the chunk-aligned positions a cold prefill
// also passes through, so restoring one and prefilling the rest gives logits
// bit-identical to a cold run on the same backend.
#pragma once

#include <chrono>
#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/types/span.h"

namespace gdnserve {

struct StateSnapshot {
  std::vector<int32_t> tokens;  // fed into the state, in order
  int32_t pending = -1;         // sessions: the last generated token, not fed yet (-1: none)
  std::vector<float> state;     // one slot, StateLayout order

  int64_t bytes() const {
    return static_cast<int64_t>(state.size() * sizeof(float) + tokens.size() * sizeof(int32_t)) + 64;
  }
};

// A 64-bit hash of a token sequence, computed incrementally (splitmix64
// finalizer per step). Lookups still compare the tokens, so a collision can
// only cost a miss, never a wrong state.
class TokenHasher {
 public:
  void Update(int32_t token) {
    uint64_t z = h_ ^ (static_cast<uint64_t>(static_cast<uint32_t>(token)) + 0x9e3779b97f4a7c15ull + (h_ << 6));
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    h_ = z ^ (z >> 31);
  }
  uint64_t value() const { return h_; }

 private:
  uint64_t h_ = 0x243f6a8885a308d3ull;
};

// Prefix snapshots at multiples of `interval` tokens, LRU under a byte budget.
// Not thread-safe: the engine thread owns it.
class PrefixCache {
 public:
  // budget_bytes 0 disables the cache; interval > 0 (a multiple of the chunk).
  PrefixCache(int64_t budget_bytes, int interval) : budget_(budget_bytes), interval_(interval) {}

  bool enabled() const { return budget_ > 0 && interval_ > 0; }
  int interval() const { return interval_; }
  // The longest cached prefix of `prompt` strictly shorter than it (so the
  // last prompt token still runs to produce logits); null when none.
  std::shared_ptr<const StateSnapshot> Lookup(absl::Span<const int32_t> prompt);
  // Whether `prefix` is cached (touches it as recently used).
  bool Contains(absl::Span<const int32_t> prefix);
  // Adds a snapshot (its tokens are the key), evicting least recently used
  // entries to stay within the budget; one larger than the budget is dropped.
  void Insert(std::shared_ptr<const StateSnapshot> snapshot);

  int64_t bytes_used() const { return bytes_; }
  size_t size() const { return lru_.size(); }

 private:
  using Entry = std::pair<uint64_t, std::shared_ptr<const StateSnapshot>>;
  static uint64_t Hash(absl::Span<const int32_t> tokens);
  std::shared_ptr<const StateSnapshot> Find(uint64_t hash, absl::Span<const int32_t> tokens);

  int64_t budget_;
  int interval_;
  int64_t bytes_ = 0;
  std::list<Entry> lru_;  // front: most recently used
  std::unordered_map<uint64_t, std::list<Entry>::iterator> index_;
};

// Session snapshots by id, with a TTL and an LRU byte budget. Thread-safe
// (Submit reads on the caller's thread, the engine writes on its own).
class SessionStore {
 public:
  using Clock = std::chrono::steady_clock;
  // budget_bytes 0 disables sessions; ttl counts from the last use.
  SessionStore(int64_t budget_bytes, std::chrono::milliseconds ttl) : budget_(budget_bytes), ttl_(ttl) {}

  bool enabled() const { return budget_ > 0; }
  // The session's snapshot (touching it), or null when unknown, expired or evicted.
  std::shared_ptr<const StateSnapshot> Get(const std::string& id);
  // Stores (or replaces) a session; false when it alone exceeds the budget.
  bool Put(const std::string& id, std::shared_ptr<const StateSnapshot> snapshot);
  bool Erase(const std::string& id);

  int64_t bytes_used() const;
  size_t size() const;

 private:
  struct Entry {
    std::string id;
    std::shared_ptr<const StateSnapshot> snapshot;
    Clock::time_point last_used;
  };
  void EvictLocked(Clock::time_point now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void RemoveLocked(std::list<Entry>::iterator it) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const int64_t budget_;
  const std::chrono::milliseconds ttl_;
  mutable std::mutex mu_;
  int64_t bytes_ ABSL_GUARDED_BY(mu_) = 0;
  std::list<Entry> lru_ ABSL_GUARDED_BY(mu_);  // front: most recently used
  std::unordered_map<std::string, std::list<Entry>::iterator> index_ ABSL_GUARDED_BY(mu_);
};

}  // namespace gdnserve
