// State reuse (issue 10) on the CPU backend with a generated tiny model:
// a prefix-cache hit gives logits bit-identical to a cold run; a chat through
// sessions equals the same chat sent as full history while prefilling only
// the new tokens; export/import moves a session between engines; budgets,
// TTLs and corrupt or foreign state blobs.
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <thread>

#include "engine/cpu_backend.h"
#include "engine/engine.h"
#include "engine/state_blob.h"
#include "engine/state_cache.h"
#include "tests/collect_sink.h"
#include "tests/engine_fixture.h"
#include "tests/test_util.h"

namespace gdnserve {
namespace {

using Sink = testing::CollectSink;

class StateReuseTest : public testing::TinyEngineFixture {
 protected:
  StateReuseTest() : TinyEngineFixture(4) {}
  // One engine at a time shares the backend.
  Engine& Start(EngineOptions o) {
    engine_.reset();
    engine_ = std::make_unique<Engine>(backend_.get(), tokenizer_.get(), o);
    return *engine_;
  }
  static EngineOptions Options(int64_t prefix_bytes, int chunk = 128) {
    EngineOptions o;
    o.step_token_budget = 256;
    o.max_prefill_chunk = chunk;
    o.prefix_cache_bytes = prefix_bytes;
    o.prefix_cache_interval = 64;
    return o;
  }
  std::vector<int32_t> Random(int n) { return RandomPrompt(n); }
  // Greedy with the prompt's logits too (compared on hits and cold runs).
  static GenerationRequest Greedy(std::vector<int32_t> prompt, int max_tokens) {
    GenerationRequest r = TinyEngineFixture::Greedy(std::move(prompt), max_tokens);
    r.want_prompt_logits = true;
    return r;
  }
  std::shared_ptr<Sink> Run(GenerationRequest r) {
    auto sink = std::make_shared<Sink>();
    auto h = engine_->Submit(std::move(r), sink);
    EXPECT_TRUE(h.ok()) << h.status();
    if (h.ok()) sink->Wait();
    return sink;
  }
  // Stats are published at the end of the step that delivered the output.
  EngineStats SettledStats() {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    return engine_->Stats();
  }
  static std::vector<int32_t> Cat(std::vector<int32_t> a, const std::vector<int32_t>& b) {
    a.insert(a.end(), b.begin(), b.end());
    return a;
  }
};

TEST_F(StateReuseTest, PrefixCacheHitIsBitIdenticalToAColdRun) {
  const auto system = Random(300);
  const auto b = Cat(system, Random(50));
  for (int chunk : {64, 128, 512}) {
    SCOPED_TRACE(chunk);
    Start(Options(64 << 20, chunk));
    auto first = Run(Greedy(Cat(system, Random(40)), 8));
    ASSERT_TRUE(first->error.ok());
    EXPECT_EQ(first->cached, 0);
    auto hit = Run(Greedy(b, 8));
    ASSERT_TRUE(hit->error.ok());
    EXPECT_EQ(hit->cached, 256);  // the longest cached 64-multiple inside the shared 300 tokens
    const EngineStats st = SettledStats();
    EXPECT_EQ(st.prefix_cache_hit_tokens, 256);
    EXPECT_EQ(st.prefix_cache_query_tokens, 340 + 350);
    EXPECT_EQ(st.prefill_tokens, 340 + 350 - 256);
    EXPECT_GT(st.prefix_cache_bytes, 0);
    // The same prompt again hits its own longest interval (320) below its length.
    EXPECT_EQ(Run(Greedy(b, 8))->cached, 320);

    for (int cold_chunk : {64, 512}) {
      Start(Options(0, cold_chunk));  // no cache: a cold prefill
      auto cold = Run(Greedy(b, 8));
      EXPECT_EQ(cold->cached, 0);
      ASSERT_EQ(cold->logits.size(), hit->logits.size());
      ASSERT_FALSE(cold->logits.empty());
      EXPECT_TRUE(cold->logits == hit->logits) << "logits differ on a hit (cold chunk " << cold_chunk << ")";
      EXPECT_EQ(cold->tokens(), hit->tokens());
    }
  }
}

// Hits that leave a tail of 1 or 5 prompt tokens (the chunk form and the
// row-invariant GEMMs even for so few rows, as in the cold run's longer
// pieces) next to a cold run with 64- and 512-token chunks.
TEST_F(StateReuseTest, PrefixCacheHitWithAShortTailIsBitIdentical) {
  const auto system = Random(320);
  for (int tail : {1, 5}) {
    SCOPED_TRACE(tail);
    const auto prompt = Cat(system, Random(tail));
    Start(Options(64 << 20, 64));
    ASSERT_TRUE(Run(Greedy(Cat(system, Random(3)), 4))->error.ok());
    auto hit = Run(Greedy(prompt, 6));
    ASSERT_TRUE(hit->error.ok());
    EXPECT_EQ(hit->cached, 320);
    for (int cold_chunk : {64, 512}) {
      Start(Options(0, cold_chunk));
      auto cold = Run(Greedy(prompt, 6));
      ASSERT_FALSE(cold->logits.empty());
      EXPECT_TRUE(cold->logits == hit->logits) << "logits differ on a hit (cold chunk " << cold_chunk << ")";
      EXPECT_EQ(cold->tokens(), hit->tokens());
    }
  }
}

TEST_F(StateReuseTest, PrefixCacheEvictsLeastRecentlyUsedWithinItsBudget) {
  auto snap = [](std::vector<int32_t> tokens) {
    auto s = std::make_shared<StateSnapshot>();
    s->tokens = std::move(tokens);
    s->state.assign(1000, 1.0f);
    return s;
  };
  const int64_t each = snap({1})->bytes() + 4 * 63;
  PrefixCache cache(2 * each + 10, 64);
  std::vector<int32_t> a(64, 5), b(64, 6), c(64, 7);
  cache.Insert(snap(a));
  cache.Insert(snap(b));
  EXPECT_EQ(cache.size(), 2u);
  EXPECT_TRUE(cache.Contains(a));  // a is now the most recent
  cache.Insert(snap(c));           // evicts b
  EXPECT_TRUE(cache.Contains(a));
  EXPECT_FALSE(cache.Contains(b));
  EXPECT_TRUE(cache.Contains(c));
  EXPECT_LE(cache.bytes_used(), 2 * each + 10);
  // Lookup: strictly shorter than the prompt, tokens compared.
  EXPECT_EQ(cache.Lookup(a), nullptr);
  EXPECT_NE(cache.Lookup(Cat(a, {9})), nullptr);
  auto other = a;
  other[3] = 99;
  EXPECT_EQ(cache.Lookup(Cat(other, {9})), nullptr);
  PrefixCache off(0, 64);
  off.Insert(snap(a));
  EXPECT_EQ(off.size(), 0u);
}

TEST_F(StateReuseTest, SessionStoreTtlAndBudget) {
  auto snap = [] {
    auto s = std::make_shared<StateSnapshot>();
    s->state.assign(1000, 0.0f);
    return s;
  };
  const int64_t each = snap()->bytes();
  SessionStore store(2 * each, std::chrono::milliseconds(50));
  EXPECT_TRUE(store.Put("a", snap()));
  EXPECT_TRUE(store.Put("b", snap()));
  EXPECT_NE(store.Get("a"), nullptr);  // b is least recent
  EXPECT_TRUE(store.Put("c", snap()));
  EXPECT_EQ(store.Get("b"), nullptr);
  EXPECT_NE(store.Get("a"), nullptr);
  EXPECT_EQ(store.size(), 2u);
  std::this_thread::sleep_for(std::chrono::milliseconds(120));
  EXPECT_EQ(store.Get("a"), nullptr);
  EXPECT_EQ(store.size(), 0u);
  EXPECT_EQ(store.bytes_used(), 0);
}

// The chat through a session and as full history, turn by turn.
TEST_F(StateReuseTest, TwentyTurnSessionChatEqualsFullHistory) {
  Start(Options(0));
  std::vector<int32_t> history;  // everything said so far, both sides
  int64_t session_prefill = 0, session_new = 0;
  for (int turn = 0; turn < 20; ++turn) {
    SCOPED_TRACE(turn);
    const auto user = Random(5 + rng_() % 40);
    const int max_tokens = 1 + rng_() % 12;
    // Full history, no session: the reference.
    auto full = Run(Greedy(Cat(history, user), max_tokens));
    ASSERT_TRUE(full->error.ok());
    // Through the session: only the new tokens.
    GenerationRequest r = Greedy(user, max_tokens);
    r.session_id = "chat-1";
    r.session_continue = turn > 0;
    const int64_t before = SettledStats().prefill_tokens;
    auto sess = Run(r);
    ASSERT_TRUE(sess->error.ok()) << sess->error;
    const int64_t prefilled = SettledStats().prefill_tokens - before;
    EXPECT_EQ(sess->tokens(), full->tokens());
    EXPECT_EQ(sess->prompt_tokens, static_cast<int>(history.size() + user.size()));
    // The new tokens plus the previous turn's last token (drawn, never fed).
    EXPECT_EQ(prefilled, static_cast<int64_t>(user.size()) + (turn > 0 ? 1 : 0));
    EXPECT_EQ(sess->cached, turn > 0 ? static_cast<int>(history.size()) - 1 : 0);
    session_prefill += prefilled;
    session_new += user.size();
    history = Cat(Cat(history, user), full->tokens());
  }
  EXPECT_EQ(session_prefill, session_new + 19);
  EXPECT_EQ(engine_->Stats().sessions, 1);
}

TEST_F(StateReuseTest, UnknownSessionIsNotFoundAndFullHistoryFallsBack) {
  Start(Options(0));
  GenerationRequest r = Greedy(Random(10), 4);
  r.session_id = "nope";
  r.session_continue = true;
  auto h = engine_->Submit(r, std::make_shared<Sink>());
  ASSERT_EQ(h.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(h.status().message().find("\"nope\""), std::string::npos) << h.status();

  // Without continue the prompt is the whole history: a stored session that
  // is its prefix is reused, anything else is prefilled in full.
  const auto u1 = Random(30);
  GenerationRequest t1 = Greedy(u1, 6);
  t1.session_id = "s";
  auto o1 = Run(t1);
  const auto history = Cat(Cat(u1, o1->tokens()), Random(7));
  GenerationRequest t2 = Greedy(history, 6);
  t2.session_id = "s";
  auto o2 = Run(t2);
  EXPECT_EQ(o2->cached, static_cast<int>(u1.size() + o1->tokens().size() - 1));
  EXPECT_EQ(o2->tokens(), Run(Greedy(history, 6))->tokens());
  GenerationRequest t3 = Greedy(Random(20), 3);  // a different history
  t3.session_id = "s";
  EXPECT_EQ(Run(t3)->cached, 0);
}

TEST_F(StateReuseTest, SessionsExpireAfterTheirTtl) {
  EngineOptions o = Options(0);
  o.session_ttl_ms = 50;
  Start(o);
  GenerationRequest r = Greedy(Random(10), 2);
  r.session_id = "short";
  Run(r);
  EXPECT_EQ(SettledStats().sessions, 1);
  std::this_thread::sleep_for(std::chrono::milliseconds(120));
  r.session_continue = true;
  EXPECT_EQ(engine_->Submit(r, std::make_shared<Sink>()).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(StateReuseTest, ExportImportMovesASessionBetweenEngines) {
  Start(Options(0));
  GenerationRequest t1 = Greedy(Random(40), 5);
  t1.session_id = "a";
  Run(t1);
  auto blob = engine_->ExportSession("a");
  ASSERT_TRUE(blob.ok()) << blob.status();
  GenerationRequest t2 = Greedy(Random(9), 7);
  t2.session_id = "a";
  t2.session_continue = true;
  auto stay = Run(t2);

  Start(Options(0));  // a fresh engine: nothing stored
  t2.session_id = "b";
  EXPECT_EQ(engine_->Submit(t2, std::make_shared<Sink>()).status().code(), absl::StatusCode::kNotFound);
  auto n = engine_->ImportSession("b", *blob);
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_EQ(*n, 44);  // 40 prompt + 5 drawn - the pending one
  auto moved = Run(t2);
  EXPECT_EQ(moved->tokens(), stay->tokens());
  EXPECT_TRUE(moved->logits == stay->logits);
  EXPECT_EQ(engine_->ExportSession("zzz").status().code(), absl::StatusCode::kNotFound);

  // Corrupt: every single flipped byte is caught (magic, header, checksum).
  for (size_t pos : {size_t{0}, size_t{9}, size_t{30}, blob->size() / 2, blob->size() - 1}) {
    std::string bad = *blob;
    bad[pos] ^= 0x40;
    auto s = engine_->ImportSession("c", bad);
    EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument) << pos << ": " << s.status();
  }
  EXPECT_EQ(engine_->ImportSession("c", blob->substr(0, blob->size() - 8)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(engine_->ImportSession("c", "").status().code(), absl::StatusCode::kInvalidArgument);
  // Another model's state: a valid blob with another config hash.
  auto snap = DecodeStateBlob(*blob, backend_->config().ConfigHash(),
                              backend_->state_pool().layout().floats_per_slot());
  ASSERT_TRUE(snap.ok());
  auto foreign = engine_->ImportSession("c", EncodeStateBlob(*snap, backend_->config().ConfigHash() ^ 1));
  EXPECT_EQ(foreign.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(foreign.status().message().find("different model"), std::string::npos) << foreign.status();
}

TEST(StateBlob, RoundTripsAndChecksTheState) {
  StateSnapshot s;
  s.tokens = {1, 2, 3};
  s.pending = 4;
  s.state = {0.5f, -1.0f};
  const std::string b = EncodeStateBlob(s, 77);
  auto d = DecodeStateBlob(b, 77, 2);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->tokens, s.tokens);
  EXPECT_EQ(d->pending, 4);
  EXPECT_EQ(d->state, s.state);
  EXPECT_EQ(DecodeStateBlob(b, 77, 3).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(Crc32("123456789"), 0xcbf43926u);  // the CRC-32 check value
}

}  // namespace
}  // namespace gdnserve
