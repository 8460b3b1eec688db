// The scheduler alone, no model: decode is never starved, the budget holds,
// admission is FCFS over free slots, pieces are chunk-aligned, and a random
// simulation finishes every request without exceeding slots.
#include "engine/scheduler.h"

#include <gtest/gtest.h>

#include <map>
#include <random>

#include "tests/test_util.h"

namespace gdnserve {
namespace {

TEST(Scheduler, DecodeAlwaysRunsAndPrefillGetsTheRest) {
  SchedulerInput in;
  in.token_budget = 100;
  in.max_prefill_chunk = 1000;
  in.chunk_align = 16;
  in.running = {{1, 0, 3}, {2, 5000, 0}, {3, 0, 1}};
  const SchedulerPlan p = Schedule(in);
  EXPECT_EQ(p.decode, (std::vector<uint64_t>{1, 3}));
  ASSERT_EQ(p.prefill.size(), 1u);
  EXPECT_EQ(p.prefill[0].id, 2u);
  EXPECT_EQ(p.prefill[0].num_tokens, 96);  // 100 - 4 decode, rounded down to 16
  EXPECT_EQ(p.num_tokens, 100);
}

TEST(Scheduler, LongPromptNeverStallsDecode) {
  SchedulerInput in;
  in.token_budget = 64;
  in.max_prefill_chunk = 64;
  in.running = {{1, 100000, 0}};
  for (uint64_t id = 2; id < 40; ++id) in.running.push_back({id, 0, 1});
  const SchedulerPlan p = Schedule(in);
  EXPECT_EQ(p.decode.size(), 38u);
  // 26 tokens left: less than one aligned chunk of the long prompt, so it waits.
  EXPECT_TRUE(p.prefill.empty());
}

TEST(Scheduler, LastPieceNeedNotBeAligned) {
  SchedulerInput in;
  in.token_budget = 512;
  in.max_prefill_chunk = 512;
  in.running = {{1, 37, 0}};
  in.waiting = {{2, 1, 600}};
  in.free_slots = 4;
  const SchedulerPlan p = Schedule(in);
  ASSERT_EQ(p.prefill.size(), 2u);
  EXPECT_EQ(p.prefill[0].num_tokens, 37);
  EXPECT_EQ(p.prefill[1].num_tokens, 448);  // 475 rounded down to 64
  EXPECT_EQ(p.admit, (std::vector<uint64_t>{2}));
}

TEST(Scheduler, AdmissionIsFcfsOverFreeSlots) {
  SchedulerInput in;
  in.token_budget = 10000;
  in.max_prefill_chunk = 128;
  in.free_slots = 3;
  in.waiting = {{1, 2, 10}, {2, 2, 10}, {3, 1, 10}};
  const SchedulerPlan p = Schedule(in);
  // Request 2 needs 2 slots, only 1 is left: 3 must not overtake it.
  EXPECT_EQ(p.admit, (std::vector<uint64_t>{1}));
}

// A random simulation of the engine's use of the scheduler.
TEST(Scheduler, RandomSimulationFinishesEverything) {
  std::mt19937_64 rng(testing::TestSeed());
  for (int trial = 0; trial < 20; ++trial) {
    const int slots = 1 + rng() % 16;
    SchedulerInput in;
    // The engine guarantees budget >= slots + one aligned chunk (EngineOptions).
    in.token_budget = slots + 64 + rng() % 600;
    in.max_prefill_chunk = 64 + rng() % 512;
    in.chunk_align = 64;
    struct Req { int64_t prompt; int out; int n; int64_t done = 0; int generated = 0; };
    std::map<uint64_t, Req> reqs;
    std::vector<uint64_t> waiting, running;
    const int total = 60;
    for (uint64_t id = 1; id <= total; ++id) {
      reqs[id] = {1 + static_cast<int64_t>(rng() % 2000), 1 + static_cast<int>(rng() % 20),
                  1 + static_cast<int>(rng() % std::min(slots, 3))};
      waiting.push_back(id);
    }
    int free_slots = slots, finished = 0;
    for (int step = 0; finished < total; ++step) {
      ASSERT_LT(step, 100000) << "no progress";
      in.running.clear();
      in.waiting.clear();
      in.free_slots = free_slots;
      for (uint64_t id : running) {
        const Req& r = reqs[id];
        in.running.push_back({id, r.prompt - r.done, r.done == r.prompt ? r.n : 0});
      }
      for (uint64_t id : waiting) in.waiting.push_back({id, reqs[id].n, reqs[id].prompt});
      const SchedulerPlan p = Schedule(in);
      int64_t decode_tokens = 0;
      for (uint64_t id : p.decode) decode_tokens += reqs[id].n;
      EXPECT_LE(p.num_tokens, std::max(in.token_budget, decode_tokens));
      for (uint64_t id : p.admit) {
        ASSERT_EQ(id, waiting.front()) << "admission out of order";
        waiting.erase(waiting.begin());
        free_slots -= reqs[id].n;
        ASSERT_GE(free_slots, 0);
        running.push_back(id);
      }
      for (const PrefillPiece& piece : p.prefill) {
        Req& r = reqs[piece.id];
        r.done += piece.num_tokens;
        ASSERT_LE(r.done, r.prompt);
        if (r.done < r.prompt) {
          ASSERT_EQ(r.done % 64, 0) << "non-final piece not aligned";
        }
      }
      for (uint64_t id : p.decode) ++reqs[id].generated;
      for (auto it = running.begin(); it != running.end();) {
        Req& r = reqs[*it];
        if (r.done == r.prompt && r.generated >= r.out) {
          free_slots += r.n;
          ++finished;
          it = running.erase(it);
        } else {
          ++it;
        }
      }
    }
    EXPECT_EQ(free_slots, slots);
  }
}

}  // namespace
}  // namespace gdnserve
