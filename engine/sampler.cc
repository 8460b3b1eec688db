#include "engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "absl/strings/str_format.h"
#include "kernels/cpu/sample.h"

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
  return cpu::LogSoftmaxAt(logits.data(), static_cast<int64_t>(logits.size()), index);
}

SequenceSampler::SequenceSampler(const SamplingParams& params, absl::Span<const int32_t> prompt)
    : params_(params), rng_(params.has_seed ? params.seed : std::random_device{}()) {
  if (params_.repetition_penalty != 1.0f) {
    for (int32_t t : prompt) Remember(t);
  }
}

void SequenceSampler::Remember(int32_t token) {
  if (token < 0) return;
  if (token >= static_cast<int32_t>(seen_mask_.size())) seen_mask_.resize(token + 1, 0);
  if (!seen_mask_[token]) {
    seen_mask_[token] = 1;
    seen_.push_back(token);
  }
}

double SequenceSampler::NextUniform() { return std::uniform_real_distribution<double>(0.0, 1.0)(rng_); }

bool SequenceSampler::has_penalties() const {
  return params_.repetition_penalty != 1.0f ||
         ((params_.presence_penalty != 0.0f || params_.frequency_penalty != 0.0f) && !counted_.empty());
}

void SequenceSampler::Record(int32_t token) {
  const auto [it, inserted] = count_index_.try_emplace(token, static_cast<int32_t>(counted_.size()));
  if (inserted) {
    counted_.push_back(token);
    counts_.push_back(0);
  }
  ++counts_[it->second];
  if (params_.repetition_penalty != 1.0f) Remember(token);
}

SampleResult SequenceSampler::Sample(absl::Span<const float> logits) {
  const int64_t n = static_cast<int64_t>(logits.size());
  const float* x = logits.data();
  if (has_penalties()) {
    work_.assign(logits.begin(), logits.end());
    cpu::ApplyPenalties(work_.data(), n, params_.repetition_penalty, seen_.data(), static_cast<int64_t>(seen_.size()),
                        params_.presence_penalty, params_.frequency_penalty, counted_.data(), counts_.data(),
                        static_cast<int64_t>(counted_.size()));
    x = work_.data();
  }
  const cpu::DrawParams dp{params_.temperature, params_.top_k, params_.top_p, params_.min_p};
  const double u = params_.greedy() ? 0.0 : NextUniform();
  SampleResult res;
  res.token = cpu::DrawToken(x, n, dp, u, &scratch_);
  {
    // Logprobs of the raw model distribution (as vLLM reports by default).
    const float mx = *std::max_element(logits.begin(), logits.end());
    double sum = 0.0;
    for (float v : logits) sum += std::exp(static_cast<double>(v) - mx);
    const double lse = mx + std::log(sum);
    res.logprob = static_cast<float>(logits[res.token] - lse);
    if (params_.logprobs > 0) {
      const int k = static_cast<int>(std::min<int64_t>(params_.logprobs, n));
      std::vector<int32_t> idx(n);
      std::iota(idx.begin(), idx.end(), 0);
      std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [&](int32_t a, int32_t b) {
        return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
      });
      for (int i = 0; i < k; ++i) res.top.push_back({idx[i], static_cast<float>(logits[idx[i]] - lse)});
    }
  }
  Record(res.token);
  return res;
}

}  // namespace gdnserve
