// Shared helpers for the C++ tests: a per-run random seed (printed, replayable
// with GDNSERVE_TEST_SEED) and norm-wise relative error.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

namespace gdnserve::testing {

// One seed per test process: fresh each run unless GDNSERVE_TEST_SEED is set.
inline uint64_t TestSeed() {
  static const uint64_t seed = [] {
    uint64_t s;
    if (const char* env = std::getenv("GDNSERVE_TEST_SEED")) {
      s = std::strtoull(env, nullptr, 10);
    } else {
      s = std::random_device{}();
    }
    std::fprintf(stderr, "test seed: %llu (replay with GDNSERVE_TEST_SEED=%llu)\n",
                 static_cast<unsigned long long>(s), static_cast<unsigned long long>(s));
    return s;
  }();
  return seed;
}

// ||a - b||_2 / ||b||_2 (0 when both are zero).
template <typename A, typename B>
double RelErr(const A& a, const B& b) {
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < b.size(); ++i) {
    const double d = static_cast<double>(a[i]) - static_cast<double>(b[i]);
    num += d * d;
    den += static_cast<double>(b[i]) * static_cast<double>(b[i]);
  }
  if (den == 0.0) return num == 0.0 ? 0.0 : INFINITY;
  return std::sqrt(num / den);
}

inline std::string EnvOr(const char* name, const std::string& fallback) {
  const char* v = std::getenv(name);
  return v ? std::string(v) : fallback;
}

}  // namespace gdnserve::testing
