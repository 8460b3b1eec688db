// A GDN-2 model's weights in float32, loaded from a model directory
// (DEVELOPERS.md "Model directory") and laid out for the forward pass: the
// seven input projections of a mixer are fused into one matrix so that a
// layer's input side is a single GEMM, and gate/up of the MLP likewise.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/config.h"

namespace gdnserve {

struct LayerWeights {
  std::vector<float> attn_norm;  // [d]
  // Rows [q (key_dim) | k (key_dim) | v (value_dim) | b (key_dim) |
  //       w (value_dim) | f0 (V) | g0 (V)] x d.
  std::vector<float> in_proj;
  std::vector<float> conv;     // [2*key_dim + value_dim, W]: q, k, v channels
  std::vector<float> f_up;     // [key_dim, V]    f_proj.1
  std::vector<float> g_up;     // [value_dim, V]  g_proj.1
  std::vector<float> g_bias;   // [value_dim]
  std::vector<float> a_log;    // [H]
  std::vector<float> dt_bias;  // [key_dim]
  std::vector<float> o_norm;   // [V]
  std::vector<float> o_proj;   // [d, value_dim]
  std::vector<float> mlp_norm; // [d]
  std::vector<float> gate_up;  // [2I, d]: gate rows then up rows
  std::vector<float> down;     // [d, I]
};

// Column offsets of the fused input projection's outputs.
struct InProjLayout {
  int64_t q, k, v, b, w, f0, g0, total;
  static InProjLayout ForConfig(const ModelConfig& c);
};

struct ModelWeights {
  ModelConfig config;
  std::vector<float> embed;       // [vocab, d]
  std::vector<LayerWeights> layers;
  std::vector<float> final_norm;  // [d]
  std::vector<float> lm_head;     // [vocab, d]; empty when tied to embed

  const float* lm_head_data() const { return lm_head.empty() ? embed.data() : lm_head.data(); }
  int64_t num_parameters() const;
};

// Called after each tensor group is loaded: (layers done, layers total).
using LoadProgress = std::function<void(int, int)>;

// Loads and validates dir/config.json and the safetensors weights (single file
// or sharded), upcasting bf16/f16 to float32. Errors name the field or tensor.
absl::StatusOr<std::unique_ptr<ModelWeights>> LoadModelWeights(const std::string& dir,
                                                               const LoadProgress& progress = {});

}  // namespace gdnserve
