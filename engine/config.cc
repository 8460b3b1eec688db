#include "engine/config.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "engine/json_util.h"
#include "nlohmann/json.hpp"

namespace gdnserve {
namespace {

using Json = nlohmann::json;

// More layers than any model has: a bound so that a typo in num_layers cannot
// make the default layer_types allocate gigabytes.
constexpr int kMaxLayers = 1 << 16;

constexpr const char* kKnownFields[] = {
    "architecture",      "vocab_size",   "hidden_size",  "num_layers",
    "num_heads",         "num_v_heads",  "head_dim",     "expand_v",
    "intermediate_size", "conv_size",    "norm_eps",     "tie_word_embeddings",
    "allow_neg_eigval",  "bos_token_id", "eos_token_id", "layer_types",
};

absl::Status FieldError(absl::string_view field, absl::string_view message) {
  return absl::InvalidArgumentError(absl::StrCat("config.json: field \"", field, "\": ", message));
}


// Reads typed fields of config.json's object and keeps the first error, so
// that ParseModelConfig reads as the list of fields.
class FieldReader {
 public:
  explicit FieldReader(const Json& object) : object_(object) {}

  const absl::Status& status() const { return status_; }

  int Int(const char* name, std::optional<int> fallback) {
    const Json* value = Get(name, fallback.has_value());
    if (value == nullptr) return fallback.value_or(0);
    if (!value->is_number_integer()) {
      Fail(name, "must be an integer", *value);
      return 0;
    }
    const bool fits = value->is_number_unsigned()
                          ? value->get<uint64_t>() <= INT_MAX
                          : value->get<int64_t>() >= INT_MIN && value->get<int64_t>() <= INT_MAX;
    if (!fits) {
      Fail(name, "is out of range", *value);
      return 0;
    }
    return value->get<int>();
  }

  double Number(const char* name, double fallback) {
    const Json* value = Get(name, true);
    if (value == nullptr) return fallback;
    if (!value->is_number()) {
      Fail(name, "must be a number", *value);
      return fallback;
    }
    return value->get<double>();
  }

  bool Bool(const char* name, bool fallback) {
    const Json* value = Get(name, true);
    if (value == nullptr) return fallback;
    if (!value->is_boolean()) {
      Fail(name, "must be true or false", *value);
      return fallback;
    }
    return value->get<bool>();
  }

  std::string String(const char* name) {
    const Json* value = Get(name, false);
    if (value == nullptr) return "";
    if (!value->is_string()) {
      Fail(name, "must be a string", *value);
      return "";
    }
    return value->get<std::string>();
  }

  // Absent: every layer is GDN-2. The count is checked by ValidateModelConfig.
  std::vector<LayerType> LayerTypes(const char* name, int num_layers) {
    const Json* value = Get(name, true);
    if (value == nullptr) {
      if (num_layers <= 0 || num_layers > kMaxLayers) return {};
      return std::vector<LayerType>(num_layers, LayerType::kGdn2);
    }
    if (!value->is_array()) {
      Fail(name, "must be a list of strings", *value);
      return {};
    }
    std::vector<LayerType> types;
    for (size_t i = 0; i < value->size(); ++i) {
      const Json& entry = (*value)[i];
      const std::string where = absl::StrCat("entry ", i, " ");
      if (!entry.is_string()) {
        Fail(name, where + "must be a string", entry);
        return {};
      }
      const std::string& type = entry.get_ref<const std::string&>();
      if (type == LayerTypeName(LayerType::kGdn2)) {
        types.push_back(LayerType::kGdn2);
      } else if (type == "swa") {
        Fail(name, where + "is \"swa\", which is not supported yet");
        return {};
      } else {
        Fail(name, where + "must be \"gdn2\" (\"swa\" is reserved)", entry);
        return {};
      }
    }
    return types;
  }

 private:
  // The field's value, or nullptr when it is absent (an error unless it is
  // optional) or an earlier field already failed.
  const Json* Get(const char* name, bool optional) {
    if (!status_.ok()) return nullptr;
    auto it = object_.find(name);
    if (it != object_.end()) return &*it;
    if (!optional) status_ = FieldError(name, "is required");
    return nullptr;
  }

  void Fail(absl::string_view name, absl::string_view message) {
    status_ = FieldError(name, message);
  }
  void Fail(absl::string_view name, absl::string_view message, const Json& got) {
    Fail(name, absl::StrCat(message, ", got ", DescribeJson(got)));
  }

  const Json& object_;
  absl::Status status_;
};

}  // namespace

const char* LayerTypeName(LayerType type) {
  switch (type) {
    case LayerType::kGdn2:
      return "gdn2";
  }
  return "unknown";
}

absl::StatusOr<ModelConfig> ParseModelConfig(std::string_view json_text) {
  absl::StatusOr<Json> json = ParseJsonObject(json_text, "config.json");
  if (!json.ok()) return json.status();
  // Unknown fields first: a misspelt field is then reported as such rather
  // than as the required field it was meant to be.
  for (const auto& [key, value] : json->items()) {
    if (std::find(std::begin(kKnownFields), std::end(kKnownFields), key) ==
        std::end(kKnownFields)) {
      return FieldError(key, "is not a known field");
    }
  }
  FieldReader r(*json);
  ModelConfig c;
  c.architecture = r.String("architecture");
  c.vocab_size = r.Int("vocab_size", std::nullopt);
  c.hidden_size = r.Int("hidden_size", std::nullopt);
  c.num_layers = r.Int("num_layers", std::nullopt);
  c.num_heads = r.Int("num_heads", std::nullopt);
  c.num_v_heads = r.Int("num_v_heads", c.num_heads);
  c.head_dim = r.Int("head_dim", std::nullopt);
  c.expand_v = r.Number("expand_v", c.expand_v);
  c.intermediate_size = r.Int("intermediate_size", std::nullopt);
  c.conv_size = r.Int("conv_size", c.conv_size);
  c.norm_eps = r.Number("norm_eps", c.norm_eps);
  c.tie_word_embeddings = r.Bool("tie_word_embeddings", c.tie_word_embeddings);
  c.allow_neg_eigval = r.Bool("allow_neg_eigval", c.allow_neg_eigval);
  c.bos_token_id = r.Int("bos_token_id", c.bos_token_id);
  c.eos_token_id = r.Int("eos_token_id", c.eos_token_id);
  c.layer_types = r.LayerTypes("layer_types", c.num_layers);
  if (!r.status().ok()) return r.status();
  return ValidateModelConfig(std::move(c));
}

absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& dir) {
  const std::string path = (std::filesystem::path(dir) / "config.json").string();
  absl::StatusOr<std::string> text = ReadWholeFile(path);
  if (!text.ok()) return text.status();
  absl::StatusOr<ModelConfig> config = ParseModelConfig(*text);
  if (!config.ok()) {
    return absl::Status(config.status().code(), absl::StrCat(dir, "/", config.status().message()));
  }
  return config;
}

absl::StatusOr<ModelConfig> ValidateModelConfig(ModelConfig c) {
  if (c.architecture != "gdn2") {
    return FieldError("architecture",
                      absl::StrCat("must be \"gdn2\", got \"", c.architecture.substr(0, 40), "\""));
  }
  const std::pair<const char*, int> sizes[] = {
      {"vocab_size", c.vocab_size},
      {"hidden_size", c.hidden_size},
      {"num_layers", c.num_layers},
      {"num_heads", c.num_heads},
      {"num_v_heads", c.num_v_heads},
      {"head_dim", c.head_dim},
      {"intermediate_size", c.intermediate_size},
      {"conv_size", c.conv_size},
  };
  for (const auto& [field, value] : sizes) {
    if (value <= 0) return FieldError(field, absl::StrCat("must be positive, got ", value));
  }
  if (c.num_layers > kMaxLayers) {
    return FieldError("num_layers",
                      absl::StrCat("must be at most ", kMaxLayers, ", got ", c.num_layers));
  }
  if (c.num_v_heads % c.num_heads != 0) {
    return FieldError("num_v_heads", absl::StrCat("must be a multiple of num_heads (", c.num_heads,
                                                  "), got ", c.num_v_heads));
  }
  if (!std::isfinite(c.expand_v) || c.expand_v <= 0) {
    return FieldError("expand_v", absl::StrCat("must be positive, got ", c.expand_v));
  }
  // V = K * expand_v must be a whole number of channels; the tolerance only
  // forgives decimal fractions such as 0.1 that binary cannot hold exactly.
  const double v = c.head_dim * c.expand_v;
  const double v_rounded = std::nearbyint(v);
  if (v_rounded < 1 || v_rounded > INT_MAX || std::abs(v - v_rounded) > 1e-9 * v_rounded) {
    return FieldError(
        "expand_v", absl::StrCat("head_dim (", c.head_dim, ") * expand_v (", c.expand_v, ") = ", v,
                                 " must be a positive integer (the value head dim)"));
  }
  c.head_v_dim = static_cast<int>(v_rounded);
  const int64_t key_dim = int64_t{c.num_heads} * c.head_dim;
  const int64_t value_dim = int64_t{c.num_v_heads} * c.head_v_dim;
  if (key_dim > INT_MAX) {
    return FieldError("head_dim",
                      absl::StrCat("num_heads * head_dim = ", key_dim, " is more than ", INT_MAX));
  }
  if (value_dim > INT_MAX) {
    return FieldError("num_v_heads", absl::StrCat("num_v_heads * head_dim * expand_v = ", value_dim,
                                                  " is more than ", INT_MAX));
  }
  c.key_dim = static_cast<int>(key_dim);
  c.value_dim = static_cast<int>(value_dim);
  if (!std::isfinite(c.norm_eps) || c.norm_eps <= 0) {
    return FieldError("norm_eps", absl::StrCat("must be positive, got ", c.norm_eps));
  }
  const std::pair<const char*, int> token_ids[] = {{"bos_token_id", c.bos_token_id},
                                                   {"eos_token_id", c.eos_token_id}};
  for (const auto& [field, id] : token_ids) {
    if (id < 0 || id >= c.vocab_size) {
      return FieldError(field, absl::StrCat("must be a token id in [0, vocab_size = ", c.vocab_size,
                                            "), got ", id));
    }
  }
  if (c.layer_types.size() != static_cast<size_t>(c.num_layers)) {
    return FieldError("layer_types",
                      absl::StrCat("has ", c.layer_types.size(),
                                   " entries, must have one per layer (", c.num_layers, ")"));
  }
  return c;
}

std::string ModelConfig::ToJson() const {
  Json types = Json::array();
  for (LayerType type : layer_types) types.push_back(LayerTypeName(type));
  // nlohmann's default object is a std::map, so keys come out sorted.
  const Json json = {
      {"architecture", architecture},
      {"vocab_size", vocab_size},
      {"hidden_size", hidden_size},
      {"num_layers", num_layers},
      {"num_heads", num_heads},
      {"num_v_heads", num_v_heads},
      {"head_dim", head_dim},
      {"expand_v", expand_v},
      {"intermediate_size", intermediate_size},
      {"conv_size", conv_size},
      {"norm_eps", norm_eps},
      {"tie_word_embeddings", tie_word_embeddings},
      {"allow_neg_eigval", allow_neg_eigval},
      {"bos_token_id", bos_token_id},
      {"eos_token_id", eos_token_id},
      {"layer_types", std::move(types)},
  };
  return json.dump(-1, ' ', false, Json::error_handler_t::replace);
}

uint64_t ModelConfig::ConfigHash() const {
  uint64_t hash = 14695981039346656037ull;  // FNV-1a 64 offset basis
  for (unsigned char byte : ToJson()) {
    hash ^= byte;
    hash *= 1099511628211ull;  // FNV-1a 64 prime
  }
  return hash;
}

std::vector<ExpectedTensor> ExpectedTensors(const ModelConfig& c) {
  const int64_t vocab = c.vocab_size, d = c.hidden_size, inter = c.intermediate_size;
  const int64_t heads = c.num_heads, v = c.head_v_dim, w = c.conv_size;
  const int64_t key_dim = c.key_dim, value_dim = c.value_dim;
  std::vector<ExpectedTensor> tensors;
  tensors.push_back({"model.embeddings.weight", {vocab, d}});
  // Every layer is GDN-2 (the only LayerType), so every layer has one list.
  for (int i = 0; i < c.num_layers; ++i) {
    const std::string prefix = absl::StrCat("model.layers.", i, ".");
    auto add = [&](const char* suffix, std::vector<int64_t> shape) {
      tensors.push_back({absl::StrCat(prefix, suffix), std::move(shape)});
    };
    add("attn_norm.weight", {d});
    add("attn.q_proj.weight", {key_dim, d});
    add("attn.k_proj.weight", {key_dim, d});
    add("attn.v_proj.weight", {value_dim, d});
    add("attn.b_proj.weight", {key_dim, d});
    add("attn.w_proj.weight", {value_dim, d});
    add("attn.f_proj.0.weight", {v, d});
    add("attn.f_proj.1.weight", {key_dim, v});
    add("attn.g_proj.0.weight", {v, d});
    add("attn.g_proj.1.weight", {value_dim, v});
    add("attn.g_proj.1.bias", {value_dim});
    add("attn.q_conv1d.weight", {key_dim, 1, w});
    add("attn.k_conv1d.weight", {key_dim, 1, w});
    add("attn.v_conv1d.weight", {value_dim, 1, w});
    add("attn.A_log", {heads});
    add("attn.dt_bias", {key_dim});
    add("attn.o_norm.weight", {v});
    add("attn.o_proj.weight", {d, value_dim});
    add("mlp_norm.weight", {d});
    add("mlp.gate_proj.weight", {inter, d});
    add("mlp.up_proj.weight", {inter, d});
    add("mlp.down_proj.weight", {d, inter});
  }
  tensors.push_back({"model.norm.weight", {d}});
  if (!c.tie_word_embeddings) tensors.push_back({"lm_head.weight", {vocab, d}});
  return tensors;
}

}  // namespace gdnserve
