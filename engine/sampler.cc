#include "engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "absl/strings/str_format.h"

namespace gdnserve {

absl::Status SamplingParams::Validate(int vocab_size) const {
  auto bad = [](const char* field, const std::string& why) {
    return absl::InvalidArgumentError(absl::StrFormat("%s: %s", field, why));
  };
  if (!(temperature >= 0.0f) || !std::isfinite(temperature)) return bad("temperature", "must be >= 0");
  if (top_k < -1 || top_k > vocab_size) return bad("top_k", absl::StrFormat("must be -1, 0 or in [1, %d]", vocab_size));
  if (!(top_p > 0.0f && top_p <= 1.0f)) return bad("top_p", "must be in (0, 1]");
  if (!(min_p >= 0.0f && min_p <= 1.0f)) return bad("min_p", "must be in [0, 1]");
  if (!(repetition_penalty > 0.0f) || !std::isfinite(repetition_penalty)) {
    return bad("repetition_penalty", "must be > 0");
  }
  if (!(presence_penalty >= -2.0f && presence_penalty <= 2.0f)) return bad("presence_penalty", "must be in [-2, 2]");
  if (!(frequency_penalty >= -2.0f && frequency_penalty <= 2.0f)) {
    return bad("frequency_penalty", "must be in [-2, 2]");
  }
  if (logprobs < 0 || logprobs > 20) return bad("logprobs", "must be in [0, 20]");
  return absl::OkStatus();
}

double LogSoftmaxAt(absl::Span<const float> logits, int32_t index) {
  const float mx = *std::max_element(logits.begin(), logits.end());
  double sum = 0.0;
  for (float x : logits) sum += std::exp(static_cast<double>(x) - mx);
  return static_cast<double>(logits[index]) - mx - std::log(sum);
}

SequenceSampler::SequenceSampler(const SamplingParams& params, absl::Span<const int32_t> prompt)
    : params_(params), rng_(params.has_seed ? params.seed : std::random_device{}()) {
  if (params_.repetition_penalty != 1.0f) {
    for (int32_t t : prompt) {
      if (t >= static_cast<int32_t>(seen_mask_.size())) seen_mask_.resize(t + 1, 0);
      if (!seen_mask_[t]) {
        seen_mask_[t] = 1;
        seen_.push_back(t);
      }
    }
  }
}

SampleResult SequenceSampler::Sample(absl::Span<const float> logits) {
  const int n = static_cast<int>(logits.size());
  work_.assign(logits.begin(), logits.end());
  float* x = work_.data();
  if (params_.repetition_penalty != 1.0f) {
    for (int32_t t : seen_) {
      if (t < n) x[t] = x[t] > 0 ? x[t] / params_.repetition_penalty : x[t] * params_.repetition_penalty;
    }
  }
  for (const auto& [t, count] : output_counts_) {
    if (t < n) x[t] -= params_.frequency_penalty * count + params_.presence_penalty;
  }

  int32_t chosen;
  if (params_.greedy()) {
    chosen = static_cast<int32_t>(std::max_element(x, x + n) - x);  // first maximum on ties
  } else if ((params_.top_k <= 0 || params_.top_k >= n) && params_.top_p >= 1.0f && params_.min_p <= 0.0f) {
    // Plain temperature sampling: no truncation, so no sort (O(vocab)).
    const double inv_t = 1.0 / params_.temperature;
    const double mx = *std::max_element(x, x + n);
    probs_.resize(n);
    double sum = 0.0;
    for (int i = 0; i < n; ++i) sum += probs_[i] = std::exp((x[i] - mx) * inv_t);
    const double r = std::uniform_real_distribution<double>(0.0, sum)(rng_);
    double acc = 0.0;
    chosen = n - 1;
    for (int i = 0; i < n; ++i) {
      acc += probs_[i];
      if (r < acc) {
        chosen = i;
        break;
      }
    }
  } else {
    // Candidates sorted by logit, cut by top-k, then turned into probabilities.
    order_.resize(n);
    std::iota(order_.begin(), order_.end(), 0);
    int keep = (params_.top_k > 0 && params_.top_k < n) ? params_.top_k : n;
    auto by_logit = [x](int32_t a, int32_t b) { return x[a] > x[b] || (x[a] == x[b] && a < b); };
    if (keep < n) {
      std::partial_sort(order_.begin(), order_.begin() + keep, order_.end(), by_logit);
    } else {
      std::sort(order_.begin(), order_.end(), by_logit);
    }
    const double inv_t = 1.0 / params_.temperature;
    const double mx = x[order_[0]];
    std::vector<double> p(keep);
    double sum = 0.0;
    for (int i = 0; i < keep; ++i) sum += p[i] = std::exp((x[order_[i]] - mx) * inv_t);
    for (double& v : p) v /= sum;
    // top-p: the smallest prefix whose mass reaches top_p; min-p: drop tokens
    // below min_p times the most likely one.
    int cut = keep;
    if (params_.top_p < 1.0f) {
      double acc = 0.0;
      for (int i = 0; i < keep; ++i) {
        acc += p[i];
        if (acc >= params_.top_p) {
          cut = i + 1;
          break;
        }
      }
    }
    if (params_.min_p > 0.0f) {
      const double floor = params_.min_p * p[0];
      int i = 1;
      while (i < cut && p[i] >= floor) ++i;
      cut = i;
    }
    double mass = 0.0;
    for (int i = 0; i < cut; ++i) mass += p[i];
    const double r = std::uniform_real_distribution<double>(0.0, mass)(rng_);
    double acc = 0.0;
    chosen = order_[cut - 1];
    for (int i = 0; i < cut; ++i) {
      acc += p[i];
      if (r < acc) {
        chosen = order_[i];
        break;
      }
    }
  }

  SampleResult res;
  res.token = chosen;
  {
    // Logprobs of the raw model distribution (as vLLM reports by default).
    const float mx = *std::max_element(logits.begin(), logits.end());
    double sum = 0.0;
    for (float v : logits) sum += std::exp(static_cast<double>(v) - mx);
    const double lse = mx + std::log(sum);
    res.logprob = static_cast<float>(logits[chosen] - lse);
    if (params_.logprobs > 0) {
      const int k = std::min(params_.logprobs, n);
      std::vector<int32_t> idx(n);
      std::iota(idx.begin(), idx.end(), 0);
      std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [&](int32_t a, int32_t b) {
        return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
      });
      for (int i = 0; i < k; ++i) res.top.push_back({idx[i], static_cast<float>(logits[idx[i]] - lse)});
    }
  }
  ++output_counts_[chosen];
  if (params_.repetition_penalty != 1.0f) {
    if (chosen >= static_cast<int32_t>(seen_mask_.size())) seen_mask_.resize(chosen + 1, 0);
    if (!seen_mask_[chosen]) {
      seen_mask_[chosen] = 1;
      seen_.push_back(chosen);
    }
  }
  return res;
}

}  // namespace gdnserve
