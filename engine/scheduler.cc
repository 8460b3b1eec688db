#include "engine/scheduler.h"

#include <algorithm>

namespace gdnserve {
namespace {

// The piece of a prompt with `remaining` tokens that fits in `budget`: the
// whole rest if it fits, else a multiple of align (0 if not even one fits).
int64_t PieceSize(int64_t remaining, int64_t budget, int64_t max_chunk, int64_t align) {
  const int64_t cap = std::min(budget, max_chunk);
  if (remaining <= cap) return remaining;
  return align > 1 ? cap / align * align : cap;
}

}  // namespace

SchedulerPlan Schedule(const SchedulerInput& in) {
  SchedulerPlan plan;
  for (const RunningGroup& g : in.running) {
    if (g.num_decoding > 0) {
      plan.decode.push_back(g.id);
      plan.num_tokens += g.num_decoding;
    }
  }
  int64_t budget = std::max<int64_t>(0, in.token_budget - plan.num_tokens);
  for (const RunningGroup& g : in.running) {
    if (g.prefill_remaining <= 0 || budget <= 0) continue;
    const int64_t n = PieceSize(g.prefill_remaining, budget, in.max_prefill_chunk, in.chunk_align);
    if (n <= 0) continue;
    plan.prefill.push_back({g.id, n});
    plan.num_tokens += n;
    budget -= n;
  }
  int free_slots = in.free_slots;
  for (const WaitingGroup& w : in.waiting) {
    // Strict FCFS: the head of the queue is never overtaken, so it cannot starve.
    if (w.slots_needed > free_slots || budget <= 0) break;
    const int64_t n = PieceSize(w.prompt_tokens, budget, in.max_prefill_chunk, in.chunk_align);
    if (n <= 0) break;
    plan.admit.push_back(w.id);
    plan.prefill.push_back({w.id, n});
    plan.num_tokens += n;
    budget -= n;
    free_slots -= w.slots_needed;
  }
  return plan;
}

}  // namespace gdnserve
