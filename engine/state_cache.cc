#include "engine/state_cache.h"

#include <algorithm>

namespace gdnserve {

uint64_t PrefixCache::Hash(absl::Span<const int32_t> tokens) {
  TokenHasher h;
  for (int32_t t : tokens) h.Update(t);
  return h.value();
}

std::shared_ptr<const StateSnapshot> PrefixCache::Find(uint64_t hash, absl::Span<const int32_t> tokens) {
  auto it = index_.find(hash);
  if (it == index_.end()) return nullptr;
  const auto& snap = it->second->second;
  if (!std::equal(snap->tokens.begin(), snap->tokens.end(), tokens.begin(), tokens.end())) return nullptr;
  lru_.splice(lru_.begin(), lru_, it->second);
  return snap;
}

std::shared_ptr<const StateSnapshot> PrefixCache::Lookup(absl::Span<const int32_t> prompt) {
  if (!enabled() || lru_.empty()) return nullptr;
  // Hashes of every candidate prefix in one pass, then the longest first.
  std::vector<uint64_t> hashes;
  TokenHasher h;
  for (size_t i = 0; i + 1 < prompt.size(); ++i) {
    h.Update(prompt[i]);
    if ((i + 1) % interval_ == 0) hashes.push_back(h.value());
  }
  for (size_t k = hashes.size(); k > 0; --k) {
    if (auto snap = Find(hashes[k - 1], prompt.subspan(0, k * interval_))) return snap;
  }
  return nullptr;
}

bool PrefixCache::Contains(absl::Span<const int32_t> prefix) { return Find(Hash(prefix), prefix) != nullptr; }

void PrefixCache::Insert(std::shared_ptr<const StateSnapshot> snapshot) {
  if (!enabled() || snapshot->bytes() > budget_) return;
  const uint64_t hash = Hash(snapshot->tokens);
  if (auto it = index_.find(hash); it != index_.end()) {  // same prefix (or a collision): replace
    bytes_ -= it->second->second->bytes();
    lru_.erase(it->second);
    index_.erase(it);
  }
  bytes_ += snapshot->bytes();
  lru_.emplace_front(hash, std::move(snapshot));
  index_[hash] = lru_.begin();
  while (bytes_ > budget_ && !lru_.empty()) {
    bytes_ -= lru_.back().second->bytes();
    index_.erase(lru_.back().first);
    lru_.pop_back();
  }
}

std::shared_ptr<const StateSnapshot> SessionStore::Get(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  const auto now = Clock::now();
  EvictLocked(now);
  auto it = index_.find(id);
  if (it == index_.end()) return nullptr;
  it->second->last_used = now;
  lru_.splice(lru_.begin(), lru_, it->second);
  return it->second->snapshot;
}

bool SessionStore::Put(const std::string& id, std::shared_ptr<const StateSnapshot> snapshot) {
  std::lock_guard<std::mutex> lock(mu_);
  if (auto it = index_.find(id); it != index_.end()) RemoveLocked(it->second);
  if (!enabled() || snapshot->bytes() > budget_) return false;
  bytes_ += snapshot->bytes();
  lru_.push_front({id, std::move(snapshot), Clock::now()});
  index_[id] = lru_.begin();
  EvictLocked(Clock::now());
  return true;
}

bool SessionStore::Erase(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = index_.find(id);
  if (it == index_.end()) return false;
  RemoveLocked(it->second);
  return true;
}

void SessionStore::RemoveLocked(std::list<Entry>::iterator it) {
  bytes_ -= it->snapshot->bytes();
  index_.erase(it->id);
  lru_.erase(it);
}

void SessionStore::EvictLocked(Clock::time_point now) {
  // Least recently used first: over budget, or idle past the TTL.
  while (!lru_.empty() && (bytes_ > budget_ || now - lru_.back().last_used > ttl_)) RemoveLocked(std::prev(lru_.end()));
}

int64_t SessionStore::bytes_used() const {
  std::lock_guard<std::mutex> lock(mu_);
  return bytes_;
}

size_t SessionStore::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return lru_.size();
}

}  // namespace gdnserve
