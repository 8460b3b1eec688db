// Linear layers: the small-batch path (decode) and the sgemm path agree with a
// double-precision reference, with bias and accumulation, strided rows.
#include "kernels/cpu/linear.h"

#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "tests/test_util.h"

namespace gdnserve {
namespace {

TEST(Linear, MatchesReferenceForAllBatchSizes) {
  std::mt19937_64 rng(testing::TestSeed());
  std::normal_distribution<float> d(0.0f, 1.0f);
  for (int64_t T : {1, 2, 3, 4, 5, 7, 8, 9, 16, 31, 32, 33, 63, 64, 65}) {
    for (bool accumulate : {false, true}) {
      const int64_t n_in = 8 + rng() % 300, n_out = 1 + rng() % 200, xs = n_in + rng() % 5, ys = n_out + rng() % 5;
      std::vector<float> x(T * xs), W(n_out * n_in), bias(n_out), y(T * ys);
      for (auto* v : {&x, &W, &bias, &y}) {
        for (auto& e : *v) e = d(rng);
      }
      const bool with_bias = rng() % 2;
      std::vector<double> want(T * n_out);
      for (int64_t t = 0; t < T; ++t) {
        for (int64_t n = 0; n < n_out; ++n) {
          double acc = (accumulate ? y[t * ys + n] : 0.0) + (with_bias ? bias[n] : 0.0);
          for (int64_t i = 0; i < n_in; ++i) acc += static_cast<double>(x[t * xs + i]) * W[n * n_in + i];
          want[t * n_out + n] = acc;
        }
      }
      cpu::Linear(x.data(), xs, T, n_in, W.data(), n_out, with_bias ? bias.data() : nullptr, y.data(), ys,
                  accumulate);
      std::vector<float> got(T * n_out);
      for (int64_t t = 0; t < T; ++t) {
        for (int64_t n = 0; n < n_out; ++n) got[t * n_out + n] = y[t * ys + n];
      }
      EXPECT_LE(testing::RelErr(got, want), 1e-5) << "T=" << T << " n_in=" << n_in << " acc=" << accumulate;
    }
  }
}

}  // namespace
}  // namespace gdnserve
