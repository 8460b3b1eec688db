#include "kernels/cpu/sample.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace gdnserve::cpu {

void ApplyPenalties(float* x, int64_t n, float repetition, const int32_t* repeated, int64_t num_repeated,
                    float presence, float frequency, const int32_t* counted, const int32_t* counts,
                    int64_t num_counted) {
  if (repetition != 1.0f) {
    for (int64_t i = 0; i < num_repeated; ++i) {
      const int32_t t = repeated[i];
      if (t >= 0 && t < n) x[t] = x[t] > 0 ? x[t] / repetition : x[t] * repetition;
    }
  }
  if (presence != 0.0f || frequency != 0.0f) {
    for (int64_t i = 0; i < num_counted; ++i) {
      const int32_t t = counted[i];
      if (t >= 0 && t < n) x[t] -= frequency * static_cast<float>(counts[i]) + presence;
    }
  }
}

int32_t DrawToken(const float* x, int64_t n, const DrawParams& p, double u, DrawScratch* s) {
  if (p.temperature == 0.0f) return static_cast<int32_t>(std::max_element(x, x + n) - x);  // first maximum
  const double inv_t = 1.0 / p.temperature;
  const float mx = *std::max_element(x, x + n);
  auto weight = [&](int64_t i) { return std::exp((static_cast<double>(x[i]) - mx) * inv_t); };
  const bool cut_k = p.top_k > 0 && p.top_k < n;
  if (!cut_k && p.top_p >= 1.0f && p.min_p <= 0.0f) {  // no truncation: no sort
    s->prob.resize(n);
    double mass = 0.0;
    for (int64_t i = 0; i < n; ++i) mass += s->prob[i] = weight(i);
    const double target = u * mass;
    double acc = 0.0;
    for (int64_t i = 0; i < n; ++i) {
      acc += s->prob[i];
      if (target < acc) return static_cast<int32_t>(i);
    }
    return static_cast<int32_t>(n - 1);
  }
  // The kept set: a prefix of the logits in descending order (ties by id).
  s->order.resize(n);
  std::iota(s->order.begin(), s->order.end(), 0);
  auto by_logit = [x](int32_t a, int32_t b) { return x[a] > x[b] || (x[a] == x[b] && a < b); };
  const int64_t keep = cut_k ? p.top_k : n;
  if (keep < n) {
    std::partial_sort(s->order.begin(), s->order.begin() + keep, s->order.end(), by_logit);
  } else {
    std::sort(s->order.begin(), s->order.end(), by_logit);
  }
  s->prob.resize(keep);
  double total = 0.0;
  for (int64_t i = 0; i < keep; ++i) total += s->prob[i] = weight(s->order[i]);
  int64_t cut = keep;
  if (p.top_p < 1.0f) {  // the shortest prefix whose mass reaches top_p
    const double target = static_cast<double>(p.top_p) * total;
    double acc = 0.0;
    for (int64_t i = 0; i < keep; ++i) {
      acc += s->prob[i];
      if (acc >= target) {
        cut = i + 1;
        break;
      }
    }
  }
  if (p.min_p > 0.0f) {  // prob[0] is the most likely token's weight, 1
    int64_t i = 1;
    while (i < cut && s->prob[i] >= p.min_p) ++i;
    cut = i;
  }
  // Inverse CDF over the kept tokens in id order.
  std::sort(s->order.begin(), s->order.begin() + cut);
  double mass = 0.0;
  for (int64_t i = 0; i < cut; ++i) mass += weight(s->order[i]);
  const double target = u * mass;
  double acc = 0.0;
  for (int64_t i = 0; i < cut; ++i) {
    acc += weight(s->order[i]);
    if (target < acc) return s->order[i];
  }
  return s->order[cut - 1];
}

double LogSoftmaxAt(const float* x, int64_t n, int64_t index) {
  const float mx = *std::max_element(x, x + n);
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) sum += std::exp(static_cast<double>(x[i]) - mx);
  return static_cast<double>(x[index]) - mx - std::log(sum);
}

}  // namespace gdnserve::cpu
