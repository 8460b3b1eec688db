// A GDN-2 model's hyperparameters, read from a model directory's config.json
// (DEVELOPERS.md "config.json" is the contract), and the list of tensors they
// imply (DEVELOPERS.md "Tensors").
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace gdnserve {

// What mixes tokens in a layer. config.json reserves "swa" (sliding-window
// attention, DESIGN.md 1.5) but rejects it until a backend implements it, so
// no value here stands for a layer nothing can run.
enum class LayerType { kGdn2 };

// The config.json spelling: "gdn2". (A C string because Debian's Abseil has
// its own string_view, which std::string_view does not convert to.)
const char* LayerTypeName(LayerType type);

struct ModelConfig {
  std::string architecture = "gdn2";
  int vocab_size = 0;
  int hidden_size = 0;        // d
  int num_layers = 0;         // L
  int num_heads = 0;          // H, key heads
  int num_v_heads = 0;        // HV, value heads; a multiple of H
  int head_dim = 0;           // K, key head dim
  double expand_v = 1.0;      // V / K
  int intermediate_size = 0;  // I, SwiGLU hidden size
  int conv_size = 4;          // W, short conv kernel
  double norm_eps = 1e-5;     // every RMSNorm
  bool tie_word_embeddings = false;
  bool allow_neg_eigval = false;
  int bos_token_id = 1;
  int eos_token_id = 2;
  std::vector<LayerType> layer_types;  // [num_layers]

  // Derived, filled in by ValidateModelConfig (so by Parse/LoadModelConfig).
  // Validation keeps each of them, and so every two-factor tensor size, within
  // int range: products of two of them fit in int64_t.
  int head_v_dim = 0;  // V = head_dim * expand_v
  int key_dim = 0;     // H * K
  int value_dim = 0;   // HV * V

  // Canonical config.json: every field (defaults included, derived ones not),
  // keys sorted, no whitespace. ParseModelConfig(ToJson()) == *this.
  std::string ToJson() const;
  // FNV-1a 64 of ToJson(): the same for every config.json that means the same
  // model shape, whatever its key order, spacing or omitted defaults; stable
  // across runs, builds and machines. Identifies the architecture, not weights.
  uint64_t ConfigHash() const;

  bool operator==(const ModelConfig&) const = default;
};

// Parses config.json's text. Unknown fields, wrong JSON types, missing required
// fields and every check of ValidateModelConfig are InvalidArgument errors that
// name the field: `config.json: field "num_v_heads": ...`.
absl::StatusOr<ModelConfig> ParseModelConfig(std::string_view json_text);

// Reads and parses dir/config.json; NotFound when it is missing. Messages
// start with the file's path.
absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& dir);

// Checks a config's values against each other (positive sizes, HV a multiple
// of H, integral V, token ids inside the vocabulary, one layer type per layer)
// and returns it with the derived fields filled in. For configs built in code;
// ParseModelConfig already calls it.
absl::StatusOr<ModelConfig> ValidateModelConfig(ModelConfig config);

struct ExpectedTensor {
  std::string name;
  std::vector<int64_t> shape;  // PyTorch nn.Linear convention: [out, in]

  bool operator==(const ExpectedTensor&) const = default;
};

// Every tensor a model with this (validated) config has, in DEVELOPERS.md
// table order: embeddings, each layer's tensors, final norm, then lm_head
// unless the embeddings are tied.
std::vector<ExpectedTensor> ExpectedTensors(const ModelConfig& config);

}  // namespace gdnserve
