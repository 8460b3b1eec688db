// State slot pool: acquire zeroes, release/copy checks, no leaks under a
// random acquire/release workload, budget sizing.
#include "engine/state_pool.h"

#include <gtest/gtest.h>

#include <random>
#include <set>

#include "tests/test_util.h"

namespace gdnserve {
namespace {

StateLayout SmallLayout() {
  StateLayout l;
  l.num_layers = 3;
  l.recurrent_floats = 2 * 8 * 4;
  l.conv_channels = 24;
  l.conv_floats = 3 * 24;
  return l;
}

TEST(StatePool, AcquireZeroesAndReleaseReturns) {
  StatePool pool(SmallLayout(), 4);
  EXPECT_EQ(pool.num_free(), 4);
  const int a = *pool.Acquire();
  float* s = pool.Slot(a);
  for (int64_t i = 0; i < pool.layout().floats_per_slot(); ++i) s[i] = 1.5f + i;
  ASSERT_TRUE(pool.Release(a).ok());
  // The same slot comes back zeroed.
  const int b = *pool.Acquire();
  EXPECT_EQ(a, b);
  for (int64_t i = 0; i < pool.layout().floats_per_slot(); ++i) ASSERT_EQ(pool.Slot(b)[i], 0.0f);
  EXPECT_EQ(pool.Release(b).code(), absl::StatusCode::kOk);
  EXPECT_EQ(pool.Release(b).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(pool.Release(99).code(), absl::StatusCode::kFailedPrecondition);
}

TEST(StatePool, ExhaustionIsResourceExhausted) {
  StatePool pool(SmallLayout(), 2);
  ASSERT_TRUE(pool.Acquire().ok());
  ASSERT_TRUE(pool.Acquire().ok());
  EXPECT_FALSE(pool.CanAcquire());
  EXPECT_EQ(pool.Acquire().status().code(), absl::StatusCode::kResourceExhausted);
}

TEST(StatePool, LayerAddressingAndCopy) {
  StatePool pool(SmallLayout(), 3);
  const StateLayout& l = pool.layout();
  const int a = *pool.Acquire(), b = *pool.Acquire();
  EXPECT_EQ(pool.Recurrent(a, 1) - pool.Slot(a), l.floats_per_layer());
  EXPECT_EQ(pool.Conv(a, 2) - pool.Slot(a), 2 * l.floats_per_layer() + l.recurrent_floats);
  EXPECT_EQ(pool.Slot(b) - pool.Slot(a), (b - a) * l.floats_per_slot());
  std::mt19937 rng(testing::TestSeed());
  for (int64_t i = 0; i < l.floats_per_slot(); ++i) pool.Slot(a)[i] = static_cast<float>(rng());
  ASSERT_TRUE(pool.Copy(a, b).ok());
  for (int64_t i = 0; i < l.floats_per_slot(); ++i) ASSERT_EQ(pool.Slot(a)[i], pool.Slot(b)[i]);
  EXPECT_EQ(pool.Copy(a, 2).code(), absl::StatusCode::kFailedPrecondition);
}

TEST(StatePool, RandomWorkloadNeverLeaks) {
  std::mt19937_64 rng(testing::TestSeed());
  StatePool pool(SmallLayout(), 7);
  std::set<int> held;
  for (int step = 0; step < 5000; ++step) {
    if (rng() % 2 && pool.CanAcquire()) {
      const int s = *pool.Acquire();
      ASSERT_TRUE(held.insert(s).second) << "slot handed out twice";
    } else if (!held.empty()) {
      auto it = held.begin();
      std::advance(it, rng() % held.size());
      ASSERT_TRUE(pool.Release(*it).ok());
      held.erase(it);
    }
    ASSERT_EQ(pool.num_used(), static_cast<int>(held.size()));
    if (step % 97 == 0) {
      ASSERT_TRUE(pool.CheckInvariants().ok());
    }
  }
  for (int s : held) ASSERT_TRUE(pool.Release(s).ok());
  EXPECT_EQ(pool.num_free(), 7);
  EXPECT_TRUE(pool.CheckInvariants().ok());
}

TEST(StatePool, SlotsForBudget) {
  const StateLayout l = SmallLayout();
  EXPECT_EQ(StatePool::SlotsForBudget(l, 10 * l.bytes_per_slot() + 5), 10);
  EXPECT_EQ(StatePool::SlotsForBudget(l, l.bytes_per_slot() - 1), 0);
}

}  // namespace
}  // namespace gdnserve
