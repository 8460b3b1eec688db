// Random GDN-2 weights of any shape, built in memory (benchmarks of shapes
// too large to keep as files, e.g. the 1.3B shape). Scales follow
// tools/gen_model.py: matrices uniform with variance 1/fan_in, norms 1,
// decays in the usual range, so activations stay finite through the layers.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <vector>

#include "engine/weights.h"

namespace gdnserve::bench {

inline void FillUniform(std::vector<float>& v, size_t n, float bound, uint64_t seed) {
  v.resize(n);
#pragma omp parallel for schedule(static)
  for (int64_t block = 0; block < static_cast<int64_t>((n + 4095) / 4096); ++block) {
    uint64_t s = seed * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(block) * 0xBF58476D1CE4E5B9ull + 1;
    const size_t end = std::min(n, static_cast<size_t>(block + 1) * 4096);
    for (size_t i = static_cast<size_t>(block) * 4096; i < end; ++i) {
      s ^= s << 13;
      s ^= s >> 7;
      s ^= s << 17;
      v[i] = bound * (2.0f * static_cast<float>(s >> 40) / static_cast<float>(1ull << 24) - 1.0f);
    }
  }
}

inline std::unique_ptr<ModelWeights> RandomModelWeights(const ModelConfig& c, uint64_t seed) {
  auto w = std::make_unique<ModelWeights>();
  w->config = c;
  const int64_t d = c.hidden_size, V = c.head_v_dim, I = c.intermediate_size;
  const int64_t conv_ch = 2 * c.key_dim + c.value_dim;
  const int64_t P = InProjLayout::ForConfig(c).total;
  auto mat = [&](std::vector<float>& v, int64_t rows, int64_t fan_in) {
    FillUniform(v, rows * fan_in, std::sqrt(3.0f / fan_in), ++seed);
  };
  auto ones = [](std::vector<float>& v, int64_t n) { v.assign(n, 1.0f); };
  mat(w->embed, c.vocab_size, d);
  ones(w->final_norm, d);
  if (!c.tie_word_embeddings) mat(w->lm_head, c.vocab_size, d);
  w->layers.resize(c.num_layers);
  for (LayerWeights& l : w->layers) {
    ones(l.attn_norm, d);
    mat(l.in_proj, P, d);
    mat(l.conv, conv_ch, c.conv_size);
    mat(l.f_up, c.key_dim, V);
    mat(l.g_up, c.value_dim, V);
    l.g_bias.assign(c.value_dim, 0.0f);
    l.a_log.resize(c.num_heads);
    for (int h = 0; h < c.num_heads; ++h) l.a_log[h] = std::log(1.0f + 15.0f * (h + 0.5f) / c.num_heads);
    l.dt_bias.assign(c.key_dim, -2.0f);
    ones(l.o_norm, V);
    mat(l.o_proj, d, c.value_dim);
    ones(l.mlp_norm, d);
    mat(l.gate_up, 2 * I, d);
    mat(l.down, d, I);
  }
  return w;
}

}  // namespace gdnserve::bench
