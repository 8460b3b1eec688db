// The chunkwise GDN-2 form equals the recurrence (DESIGN.md 1.4 item 1) and
// prefill in pieces equals prefill in one go (item 2), on fresh random inputs
// including extreme gates.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/gdn2.h"
#include "tests/test_util.h"

namespace gdnserve {
namespace {

using testing::RelErr;
using testing::TestSeed;

// kHeavyThenLight: the first third of the tokens decay by up to -100 a
// channel, the rest barely: nearby light tokens late in a chunk then sit at a
// large cumulative decay, where a float32 running sum would lose their small
// differences (the CPU twin keeps it in double).
enum class Gates { kTypical, kExtreme, kHeavyThenLight };

struct HeadData {
  int64_t T;
  int K, V;
  std::vector<float> q, k, g, b, v, w;
  cpu::Gdn2HeadInputs Inputs(int64_t t0 = 0) const {
    return {q.data() + t0 * K, k.data() + t0 * K, g.data() + t0 * K, b.data() + t0 * K,
            v.data() + t0 * V, w.data() + t0 * V, K, K, K, K, V, V};
  }
};

void Normalize(float* x, int n, float scale) {
  double ss = 0;
  for (int i = 0; i < n; ++i) ss += x[i] * x[i];
  const float f = scale / std::sqrt(static_cast<float>(ss) + 1e-6f);
  for (int i = 0; i < n; ++i) x[i] *= f;
}

HeadData MakeHead(int64_t T, int K, int V, Gates gates, bool neg_eig, std::mt19937_64& rng) {
  HeadData d{T, K, V, {}, {}, {}, {}, {}, {}};
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> unif(0.0f, 1.0f);
  d.q.resize(T * K);
  d.k.resize(T * K);
  d.g.resize(T * K);
  d.b.resize(T * K);
  d.v.resize(T * V);
  d.w.resize(T * V);
  for (auto& x : d.q) x = normal(rng);
  for (auto& x : d.k) x = normal(rng);
  for (auto& x : d.v) x = normal(rng);
  for (int64_t t = 0; t < T; ++t) {
    Normalize(&d.q[t * K], K, 1.0f / std::sqrt(static_cast<float>(K)));
    Normalize(&d.k[t * K], K, 1.0f);
  }
  const float bmax = neg_eig ? 2.0f : 1.0f;
  for (int64_t i = 0; i < T * K; ++i) {
    if (gates == Gates::kHeavyThenLight) {
      d.g[i] = i / K < T / 3 ? -100.0f * (0.5f + 0.5f * unif(rng)) : -0.05f * unif(rng);
      d.b[i] = bmax * unif(rng);
    } else if (gates == Gates::kTypical) {
      d.g[i] = -std::exp(-5.0f + 5.0f * unif(rng));  // [-1, -0.007]
      d.b[i] = bmax * unif(rng);
    } else {
      // Mix of no decay, tiny decay and decays down to -100; gates at 0 and 1.
      const float u = unif(rng);
      d.g[i] = u < 0.3f ? -1e-7f * unif(rng) : (u < 0.6f ? -100.0f * unif(rng) : -0.05f * unif(rng));
      const float ub = unif(rng);
      d.b[i] = bmax * (ub < 0.4f ? 1e-6f * unif(rng) : (ub < 0.8f ? 1.0f - 1e-6f * unif(rng) : unif(rng)));
    }
  }
  for (auto& x : d.w) {
    const float u = unif(rng);
    x = gates != Gates::kExtreme ? u : (u < 0.3f ? 1e-6f : (u < 0.6f ? 1.0f - 1e-6f : unif(rng)));
  }
  return d;
}

std::vector<float> RandomState(int K, int V, std::mt19937_64& rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> s(static_cast<size_t>(K) * V);
  for (auto& x : s) x = normal(rng);
  return s;
}

struct Case {
  int64_t T;
  int K, V;
  Gates gates;
  bool initial_state;
  bool neg_eig;
};

class ChunkVsRecurrent : public ::testing::TestWithParam<Case> {};

TEST_P(ChunkVsRecurrent, OutputsAndFinalStateMatch) {
  const Case c = GetParam();
  std::mt19937_64 rng(TestSeed() + c.T * 7919 + c.K * 31 + c.V + static_cast<int>(c.gates) * 3 +
                      c.initial_state * 5 + c.neg_eig * 11);
  HeadData d = MakeHead(c.T, c.K, c.V, c.gates, c.neg_eig, rng);
  std::vector<float> s_rec = c.initial_state ? RandomState(c.K, c.V, rng)
                                             : std::vector<float>(static_cast<size_t>(c.K) * c.V, 0.0f);
  std::vector<float> s_chunk = s_rec;
  std::vector<float> o_rec(c.T * c.V), o_chunk(c.T * c.V);
  cpu::Gdn2RecurrentHead(d.Inputs(), c.T, c.K, c.V, s_rec.data(), o_rec.data(), c.V);
  cpu::Gdn2ChunkedHead(d.Inputs(), c.T, c.K, c.V, s_chunk.data(), o_chunk.data(), c.V);
  // Outputs: error relative to their norm, floored at 1% of the size a
  // token's output has without cancellation (|w * v| |q|, q of norm
  // K^-1/2): with one or two tokens, q . k ~ 0 can shrink every output
  // thousands of times, and float rounding then dominates their own relative
  // error (seen: 1.5e-5 at T = 1).
  double wv = 0;
  for (int64_t j = 0; j < c.T * c.V; ++j) wv += static_cast<double>(d.w[j]) * d.v[j] * d.w[j] * d.v[j];
  const double floor_token = 1e-2 * std::sqrt(wv / static_cast<double>(c.T) / c.K);
  double no = 0, ndo = 0;
  for (size_t j = 0; j < o_rec.size(); ++j) {
    no += static_cast<double>(o_rec[j]) * o_rec[j];
    ndo += (static_cast<double>(o_chunk[j]) - o_rec[j]) * (static_cast<double>(o_chunk[j]) - o_rec[j]);
  }
  const double eo = std::sqrt(ndo) / std::max(std::sqrt(no), std::sqrt(static_cast<double>(c.T)) * floor_token);
  const double es = RelErr(s_chunk, s_rec);
  EXPECT_LE(eo, 1e-5) << "outputs";
  EXPECT_LE(es, 1e-5) << "final state";
  for (float x : o_chunk) ASSERT_TRUE(std::isfinite(x));
  // Per-token check too, so one bad token cannot hide in a long sequence:
  // error relative to the token's norm, or to 1% of the sequence's rms token
  // norm for a token whose output nearly cancels (q . k ~ 0 gives outputs
  // thousands of times smaller than the rest; float rounding then dominates
  // their own relative error).
  double total = 0;
  for (float x : o_rec) total += static_cast<double>(x) * x;
  const double rms = std::sqrt(total / static_cast<double>(c.T));
  for (int64_t t = 0; t < c.T; ++t) {
    double nb = 0, nd = 0;
    for (int64_t j = t * c.V; j < (t + 1) * c.V; ++j) {
      nb += static_cast<double>(o_rec[j]) * o_rec[j];
      nd += (static_cast<double>(o_chunk[j]) - o_rec[j]) * (static_cast<double>(o_chunk[j]) - o_rec[j]);
    }
    if (nb > 1e-20) {
      ASSERT_LE(std::sqrt(nd) / std::max({std::sqrt(nb), 1e-2 * rms, floor_token}), 1e-4) << "token " << t;
    }
  }
}

std::vector<Case> Cases() {
  std::vector<Case> cases;
  for (int64_t T : {1, 15, 16, 17, 63, 64, 65, 128, 200})
    for (Gates gates : {Gates::kTypical, Gates::kExtreme})
      for (bool init : {false, true}) cases.push_back({T, 32, 32, gates, init, false});
  for (int64_t T : {48, 64, 200}) cases.push_back({T, 32, 32, Gates::kHeavyThenLight, true, false});
  // Other head shapes (K != V) and allow_neg_eigval.
  for (int64_t T : {1, 64, 130}) {
    cases.push_back({T, 16, 64, Gates::kExtreme, true, false});
    cases.push_back({T, 128, 128, Gates::kTypical, true, true});
    cases.push_back({T, 64, 32, Gates::kExtreme, true, true});
  }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Shapes, ChunkVsRecurrent, ::testing::ValuesIn(Cases()),
                         [](const ::testing::TestParamInfo<Case>& i) {
                           const Case& c = i.param;
                           const char* gates = c.gates == Gates::kExtreme   ? "_extreme"
                                               : c.gates == Gates::kTypical ? "_typical"
                                                                            : "_heavy_light";
                           // Appended piece by piece: GCC 12's -Wrestrict misfires on "a" + string.
                           std::string name = "T";
                           name += std::to_string(c.T);
                           name += "_K";
                           name += std::to_string(c.K);
                           name += "_V";
                           name += std::to_string(c.V);
                           name += gates;
                           name += c.initial_state ? "_s0" : "";
                           name += c.neg_eig ? "_neg" : "";
                           return name;
                         });

// Invariant 2: chunked prefill in pieces (any split, carrying state) equals
// one go, for random splits.
TEST(ChunkedPieces, AnySplitEqualsOneGo) {
  std::mt19937_64 rng(TestSeed() ^ 0x5eed);
  const int K = 32, V = 48;
  for (int trial = 0; trial < 20; ++trial) {
    const int64_t T = 1 + rng() % 300;
    HeadData d = MakeHead(T, K, V, trial % 2 ? Gates::kExtreme : Gates::kTypical, trial % 3 == 0, rng);
    std::vector<float> s_one = RandomState(K, V, rng), s_pieces = s_one;
    std::vector<float> o_one(T * V), o_pieces(T * V);
    cpu::Gdn2ChunkedHead(d.Inputs(), T, K, V, s_one.data(), o_one.data(), V);
    int64_t t0 = 0;
    while (t0 < T) {
      const int64_t n = std::min<int64_t>(T - t0, 1 + rng() % 90);
      cpu::Gdn2ChunkedHead(d.Inputs(t0), n, K, V, s_pieces.data(), o_pieces.data() + t0 * V, V);
      t0 += n;
    }
    EXPECT_LE(RelErr(o_pieces, o_one), 1e-5) << "trial " << trial << " T=" << T;
    EXPECT_LE(RelErr(s_pieces, s_one), 1e-5) << "trial " << trial << " T=" << T;
  }
}

// The definition itself, against an independent double-precision loop over
// the explicit matrix form S_t = (I - k (b*k)^T) D S_{t-1} + k (w*v)^T.
TEST(Recurrence, MatchesExplicitMatrixForm) {
  std::mt19937_64 rng(TestSeed() ^ 0xabc);
  const int K = 8, V = 12;
  const int64_t T = 50;
  HeadData d = MakeHead(T, K, V, Gates::kTypical, true, rng);
  std::vector<float> s0 = RandomState(K, V, rng);
  std::vector<double> S(K * V);  // S[k][v]
  for (int x = 0; x < K; ++x)
    for (int j = 0; j < V; ++j) S[x * V + j] = s0[j * K + x];
  std::vector<double> o_ref(T * V);
  for (int64_t t = 0; t < T; ++t) {
    const float* k = &d.k[t * K];
    std::vector<double> DS(K * V), S2(K * V);
    for (int x = 0; x < K; ++x)
      for (int j = 0; j < V; ++j) DS[x * V + j] = std::exp(static_cast<double>(d.g[t * K + x])) * S[x * V + j];
    for (int x = 0; x < K; ++x)
      for (int j = 0; j < V; ++j) {
        double erase = 0;
        for (int y = 0; y < K; ++y) erase += k[x] * d.b[t * K + y] * k[y] * DS[y * V + j];
        S2[x * V + j] = DS[x * V + j] - erase + k[x] * d.w[t * V + j] * d.v[t * V + j];
      }
    S = S2;
    for (int j = 0; j < V; ++j) {
      double acc = 0;
      for (int x = 0; x < K; ++x) acc += S[x * V + j] * d.q[t * K + x];
      o_ref[t * V + j] = acc;
    }
  }
  std::vector<float> s = s0, o(T * V);
  cpu::Gdn2RecurrentHead(d.Inputs(), T, K, V, s.data(), o.data(), V);
  EXPECT_LE(RelErr(o, o_ref), 1e-5);
}

}  // namespace
}  // namespace gdnserve
