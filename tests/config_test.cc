// config.json parsing and validation (DEVELOPERS.md "config.json"), the
// canonical form and hash, and the tensor list a config implies.
#include "engine/config.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <set>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/test_util.h"

namespace gdnserve {
namespace {

using Json = nlohmann::json;
using testing::TestSeed;  // gdnserve::testing: printed, replayable

Json MinimalConfig() {
  return {{"architecture", "gdn2"}, {"vocab_size", 1000}, {"hidden_size", 64},
          {"num_layers", 3},        {"num_heads", 4},     {"head_dim", 16},
          {"intermediate_size", 96}};
}

// The field an error must name, in the form every message uses.
std::string FieldTag(const std::string& field) { return absl::StrCat("field \"", field, "\""); }

TEST(ConfigTest, MinimalConfigGetsDefaults) {
  absl::StatusOr<ModelConfig> c = ParseModelConfig(MinimalConfig().dump());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->architecture, "gdn2");
  EXPECT_EQ(c->vocab_size, 1000);
  EXPECT_EQ(c->hidden_size, 64);
  EXPECT_EQ(c->num_layers, 3);
  EXPECT_EQ(c->num_heads, 4);
  EXPECT_EQ(c->num_v_heads, 4);  // defaults to num_heads
  EXPECT_EQ(c->head_dim, 16);
  EXPECT_EQ(c->expand_v, 1.0);
  EXPECT_EQ(c->intermediate_size, 96);
  EXPECT_EQ(c->conv_size, 4);
  EXPECT_EQ(c->norm_eps, 1e-5);
  EXPECT_FALSE(c->tie_word_embeddings);
  EXPECT_FALSE(c->allow_neg_eigval);
  EXPECT_EQ(c->bos_token_id, 1);
  EXPECT_EQ(c->eos_token_id, 2);
  EXPECT_EQ(c->layer_types, std::vector<LayerType>(3, LayerType::kGdn2));
  EXPECT_EQ(c->head_v_dim, 16);
  EXPECT_EQ(c->key_dim, 64);
  EXPECT_EQ(c->value_dim, 64);
}

TEST(ConfigTest, EveryFieldIsRead) {
  Json j = MinimalConfig();
  j["num_v_heads"] = 8;
  j["expand_v"] = 0.5;
  j["conv_size"] = 3;
  j["norm_eps"] = 1e-6;
  j["tie_word_embeddings"] = true;
  j["allow_neg_eigval"] = true;
  j["bos_token_id"] = 0;
  j["eos_token_id"] = 999;
  j["layer_types"] = {"gdn2", "gdn2", "gdn2"};
  absl::StatusOr<ModelConfig> c = ParseModelConfig(j.dump(2));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->num_v_heads, 8);
  EXPECT_EQ(c->expand_v, 0.5);
  EXPECT_EQ(c->conv_size, 3);
  EXPECT_EQ(c->norm_eps, 1e-6);
  EXPECT_TRUE(c->tie_word_embeddings);
  EXPECT_TRUE(c->allow_neg_eigval);
  EXPECT_EQ(c->bos_token_id, 0);
  EXPECT_EQ(c->eos_token_id, 999);
  EXPECT_EQ(c->head_v_dim, 8);
  EXPECT_EQ(c->key_dim, 4 * 16);
  EXPECT_EQ(c->value_dim, 8 * 8);
}

TEST(ConfigTest, IntegralExpandVInDecimalIsAccepted) {
  // 0.1 is not exact in binary; 30 * 0.1 is 3.0000000000000004.
  Json j = MinimalConfig();
  j["head_dim"] = 30;
  j["expand_v"] = 0.1;
  absl::StatusOr<ModelConfig> c = ParseModelConfig(j.dump());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->head_v_dim, 3);
}

struct ErrorCase {
  std::string description;
  std::function<void(Json&)> mutate;
  std::string field;    // the field the message must name
  std::string message;  // a further substring the message must hold, if any
};

TEST(ConfigTest, EachErrorNamesItsField) {
  std::vector<ErrorCase> cases = {
      {"unknown field", [](Json& j) { j["num_head"] = 4; }, "num_head", "not a known field"},
      {"HF extra field", [](Json& j) { j["torch_dtype"] = "bfloat16"; }, "torch_dtype", ""},
      {"string for int", [](Json& j) { j["vocab_size"] = "1000"; }, "vocab_size", "integer"},
      {"float for int", [](Json& j) { j["hidden_size"] = 64.5; }, "hidden_size", "64.5"},
      {"integral float for int", [](Json& j) { j["hidden_size"] = 64.0; }, "hidden_size", ""},
      {"bool for int", [](Json& j) { j["num_layers"] = true; }, "num_layers", ""},
      {"null for int", [](Json& j) { j["head_dim"] = nullptr; }, "head_dim", ""},
      {"int too large", [](Json& j) { j["vocab_size"] = 1LL << 40; }, "vocab_size", "range"},
      {"int too small", [](Json& j) { j["conv_size"] = -(1LL << 40); }, "conv_size", "range"},
      {"string for number", [](Json& j) { j["expand_v"] = "2"; }, "expand_v", "number"},
      {"null for number", [](Json& j) { j["norm_eps"] = nullptr; }, "norm_eps", ""},
      {"int for bool", [](Json& j) { j["tie_word_embeddings"] = 1; }, "tie_word_embeddings", ""},
      {"string for bool", [](Json& j) { j["allow_neg_eigval"] = "true"; }, "allow_neg_eigval", ""},
      {"int for string", [](Json& j) { j["architecture"] = 2; }, "architecture", ""},
      {"wrong architecture", [](Json& j) { j["architecture"] = "llama"; }, "architecture", "llama"},
      {"num_v_heads not a multiple", [](Json& j) { j["num_v_heads"] = 6; }, "num_v_heads",
       "multiple"},
      {"num_v_heads zero", [](Json& j) { j["num_v_heads"] = 0; }, "num_v_heads", "positive"},
      {"non-integer V", [](Json& j) { j["expand_v"] = 0.3; }, "expand_v", "integer"},
      {"V below one", [](Json& j) { j["expand_v"] = 0.01; }, "expand_v", ""},
      {"expand_v zero", [](Json& j) { j["expand_v"] = 0; }, "expand_v", "positive"},
      {"expand_v negative", [](Json& j) { j["expand_v"] = -2; }, "expand_v", "positive"},
      {"expand_v huge", [](Json& j) { j["expand_v"] = 1e300; }, "expand_v", ""},
      {"norm_eps zero", [](Json& j) { j["norm_eps"] = 0.0; }, "norm_eps", "positive"},
      {"norm_eps negative", [](Json& j) { j["norm_eps"] = -1e-5; }, "norm_eps", "positive"},
      {"bos out of vocab", [](Json& j) { j["bos_token_id"] = 1000; }, "bos_token_id", "1000"},
      {"bos negative", [](Json& j) { j["bos_token_id"] = -1; }, "bos_token_id", ""},
      {"eos out of vocab", [](Json& j) { j["eos_token_id"] = 5000; }, "eos_token_id", ""},
      {"layer_types too short",
       [](Json& j) {
         j["layer_types"] = {"gdn2", "gdn2"};
       },
       "layer_types", "one per layer"},
      {"layer_types too long",
       [](Json& j) {
         j["layer_types"] = Json::array({"gdn2", "gdn2", "gdn2", "gdn2"});
       },
       "layer_types", ""},
      {"layer_types empty", [](Json& j) { j["layer_types"] = Json::array(); }, "layer_types", ""},
      {"layer_types swa",
       [](Json& j) {
         j["layer_types"] = {"gdn2", "swa", "gdn2"};
       },
       "layer_types", "not supported yet"},
      {"layer_types unknown",
       [](Json& j) {
         j["layer_types"] = {"gdn2", "gdn2", "mamba"};
       },
       "layer_types", "mamba"},
      {"layer_types not a list", [](Json& j) { j["layer_types"] = "gdn2"; }, "layer_types", ""},
      {"layer_types entry not a string",
       [](Json& j) {
         j["layer_types"] = {"gdn2", 2, "gdn2"};
       },
       "layer_types", "entry 1"},
      {"too many layers", [](Json& j) { j["num_layers"] = 1 << 30; }, "num_layers", ""},
      {"key_dim past int",
       [](Json& j) {
         j["num_heads"] = 1 << 16;
         j["head_dim"] = 1 << 16;
       },
       "head_dim", ""},
      {"value_dim past int",
       [](Json& j) {
         j["num_v_heads"] = 1 << 16;
         j["expand_v"] = 1 << 12;
       },
       "num_v_heads", ""},
  };
  for (const char* field : {"architecture", "vocab_size", "hidden_size", "num_layers", "num_heads",
                            "head_dim", "intermediate_size"}) {
    cases.push_back(
        {absl::StrCat(field, " missing"), [field](Json& j) { j.erase(field); }, field, "required"});
  }
  for (const char* field : {"vocab_size", "hidden_size", "num_layers", "num_heads", "head_dim",
                            "intermediate_size", "conv_size"}) {
    for (int value : {0, -3}) {
      cases.push_back({absl::StrCat(field, " = ", value),
                       [field, value](Json& j) { j[field] = value; }, field, "positive"});
    }
  }
  for (const ErrorCase& c : cases) {
    SCOPED_TRACE(c.description);
    Json j = MinimalConfig();
    c.mutate(j);
    absl::StatusOr<ModelConfig> config = ParseModelConfig(j.dump());
    ASSERT_FALSE(config.ok());
    EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
    const std::string message(config.status().message());
    EXPECT_TRUE(absl::StartsWith(message, "config.json: ")) << message;
    EXPECT_TRUE(absl::StrContains(message, FieldTag(c.field))) << message;
    EXPECT_TRUE(absl::StrContains(message, c.message)) << message;
  }
}

TEST(ConfigTest, MalformedJsonIsAnError) {
  const std::string texts[] = {"", "{", "[1, 2]", "\"gdn2\"", "null", "{\"vocab_size\": }",
                               "{} trailing", "\xff\xfe",
                               // nlohmann alone would stop reading at the NUL.
                               MinimalConfig().dump() + std::string("\0junk", 5)};
  for (const std::string& text : texts) {
    SCOPED_TRACE(text);
    absl::StatusOr<ModelConfig> c = ParseModelConfig(text);
    ASSERT_FALSE(c.ok());
    EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_TRUE(absl::StartsWith(c.status().message(), "config.json: ")) << c.status();
  }
}

TEST(ConfigTest, RepeatedFieldIsAnError) {
  std::string text = MinimalConfig().dump();
  text.insert(1, "\"num_heads\": 2, ");
  absl::StatusOr<ModelConfig> c = ParseModelConfig(text);
  ASSERT_FALSE(c.ok());
  EXPECT_TRUE(absl::StrContains(c.status().message(), FieldTag("num_heads"))) << c.status();
}

// A random valid config: each optional field present or absent at random.
Json RandomConfig(std::mt19937_64& rng) {
  auto uniform = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  auto coin = [&] { return uniform(0, 1) == 1; };
  const int heads = uniform(1, 8);
  const int head_dim = 8 * uniform(1, 16);
  const int vocab = uniform(3, 100000);
  const int layers = uniform(1, 40);
  Json j = {{"architecture", "gdn2"},
            {"vocab_size", vocab},
            {"hidden_size", uniform(1, 4096)},
            {"num_layers", layers},
            {"num_heads", heads},
            {"head_dim", head_dim},
            {"intermediate_size", uniform(1, 16384)}};
  if (coin()) j["num_v_heads"] = heads * uniform(1, 4);
  if (coin()) j["expand_v"] = std::vector<double>{0.5, 1.0, 2.0, 1.5, 0.25}[uniform(0, 4)];
  if (coin()) j["conv_size"] = uniform(1, 8);
  if (coin()) j["norm_eps"] = std::uniform_real_distribution<double>(1e-8, 1e-3)(rng);
  if (coin()) j["tie_word_embeddings"] = coin();
  if (coin()) j["allow_neg_eigval"] = coin();
  if (coin()) j["bos_token_id"] = uniform(0, vocab - 1);
  if (coin()) j["eos_token_id"] = uniform(0, vocab - 1);
  if (coin()) j["layer_types"] = std::vector<std::string>(layers, "gdn2");
  return j;
}

TEST(ConfigTest, RandomConfigsRoundTripThroughToJson) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE(absl::StrCat("GDNSERVE_TEST_SEED=", seed));
  std::mt19937_64 rng(seed);
  for (int i = 0; i < 300; ++i) {
    const Json j = RandomConfig(rng);
    SCOPED_TRACE(j.dump());
    absl::StatusOr<ModelConfig> c = ParseModelConfig(j.dump(rng() % 2 == 0 ? -1 : 4));
    ASSERT_TRUE(c.ok()) << c.status();
    for (const auto& [key, value] : j.items()) {
      // Every value given is the value read, through the canonical form.
      EXPECT_EQ(Json::parse(c->ToJson())[key], value) << key;
    }
    absl::StatusOr<ModelConfig> again = ParseModelConfig(c->ToJson());
    ASSERT_TRUE(again.ok()) << again.status();
    EXPECT_EQ(*again, *c);
    EXPECT_EQ(again->ToJson(), c->ToJson());
    EXPECT_EQ(again->ConfigHash(), c->ConfigHash());
  }
}

TEST(ConfigTest, HashIgnoresSpellingButNotMeaning) {
  const ModelConfig base = *ParseModelConfig(MinimalConfig().dump());
  // Defaults written out, keys in another order, other whitespace.
  const std::string spelled_out =
      "{\n  \"layer_types\": [\"gdn2\", \"gdn2\", \"gdn2\"], \"norm_eps\": 0.00001,\n"
      "  \"intermediate_size\": 96, \"head_dim\": 16, \"num_heads\": 4, \"num_v_heads\": 4,\n"
      "  \"num_layers\": 3, \"hidden_size\": 64, \"vocab_size\": 1000, \"expand_v\": 1,\n"
      "  \"conv_size\": 4, \"bos_token_id\": 1, \"eos_token_id\": 2,\n"
      "  \"tie_word_embeddings\": false, \"allow_neg_eigval\": false, \"architecture\": \"gdn2\"}";
  absl::StatusOr<ModelConfig> same = ParseModelConfig(spelled_out);
  ASSERT_TRUE(same.ok()) << same.status();
  EXPECT_EQ(same->ConfigHash(), base.ConfigHash());

  std::set<uint64_t> hashes = {base.ConfigHash()};
  const std::vector<std::pair<const char*, Json>> changes = {{"vocab_size", 1001},
                                                             {"hidden_size", 65},
                                                             {"num_layers", 4},
                                                             {"num_heads", 2},
                                                             {"num_v_heads", 8},
                                                             {"head_dim", 32},
                                                             {"expand_v", 2.0},
                                                             {"intermediate_size", 97},
                                                             {"conv_size", 3},
                                                             {"norm_eps", 1e-6},
                                                             {"tie_word_embeddings", true},
                                                             {"allow_neg_eigval", true},
                                                             {"bos_token_id", 0},
                                                             {"eos_token_id", 3}};
  for (const auto& [field, value] : changes) {
    Json j = MinimalConfig();
    j[field] = value;
    absl::StatusOr<ModelConfig> c = ParseModelConfig(j.dump());
    ASSERT_TRUE(c.ok()) << field << ": " << c.status();
    EXPECT_TRUE(hashes.insert(c->ConfigHash()).second) << field << " does not change the hash";
  }
}

TEST(ConfigTest, HashIsStableAcrossBuilds) {
  // Pinned: the hash names a model shape outside this process (caches, logs).
  // If this changes, every stored identity changes with it.
  const ModelConfig c = *ParseModelConfig(MinimalConfig().dump());
  EXPECT_EQ(c.ToJson(),
            "{\"allow_neg_eigval\":false,\"architecture\":\"gdn2\",\"bos_token_id\":1,"
            "\"conv_size\":4,\"eos_token_id\":2,\"expand_v\":1.0,\"head_dim\":16,"
            "\"hidden_size\":64,\"intermediate_size\":96,\"layer_types\":[\"gdn2\",\"gdn2\","
            "\"gdn2\"],\"norm_eps\":1e-05,\"num_heads\":4,\"num_layers\":3,\"num_v_heads\":4,"
            "\"tie_word_embeddings\":false,\"vocab_size\":1000}");
  EXPECT_EQ(c.ConfigHash(), 18426905905282587234ull);
}

TEST(ConfigTest, ValidateFillsDerivedFieldsOfAHandBuiltConfig) {
  ModelConfig c;
  c.vocab_size = 10;
  c.hidden_size = 8;
  c.num_layers = 2;
  c.num_heads = 2;
  c.num_v_heads = 4;
  c.head_dim = 4;
  c.expand_v = 2;
  c.intermediate_size = 16;
  c.layer_types.assign(2, LayerType::kGdn2);
  absl::StatusOr<ModelConfig> v = ValidateModelConfig(c);
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->head_v_dim, 8);
  EXPECT_EQ(v->key_dim, 8);
  EXPECT_EQ(v->value_dim, 32);
  EXPECT_EQ(*ParseModelConfig(v->ToJson()), *v);

  c.layer_types.clear();
  EXPECT_TRUE(
      absl::StrContains(ValidateModelConfig(c).status().message(), FieldTag("layer_types")));
}

TEST(ConfigTest, ExpectedTensorsFollowTheTable) {
  Json j = MinimalConfig();
  j["num_layers"] = 2;
  j["num_heads"] = 2;
  j["num_v_heads"] = 4;
  j["head_dim"] = 8;
  j["expand_v"] = 2;
  j["conv_size"] = 3;
  const ModelConfig c = *ParseModelConfig(j.dump());
  const std::vector<ExpectedTensor> tensors = ExpectedTensors(c);
  ASSERT_EQ(tensors.size(), 1 + 2 * 22 + 1 + 1);
  std::map<std::string, std::vector<int64_t>> by_name;
  for (const ExpectedTensor& t : tensors) {
    EXPECT_TRUE(by_name.emplace(t.name, t.shape).second) << "repeated " << t.name;
  }
  const int64_t d = 64, key_dim = 16, value_dim = 64, v = 16;
  EXPECT_EQ(tensors.front().name, "model.embeddings.weight");
  EXPECT_EQ(tensors.back().name, "lm_head.weight");
  EXPECT_EQ(by_name["model.embeddings.weight"], (std::vector<int64_t>{1000, d}));
  EXPECT_EQ(by_name["model.layers.1.attn.q_proj.weight"], (std::vector<int64_t>{key_dim, d}));
  EXPECT_EQ(by_name["model.layers.1.attn.v_proj.weight"], (std::vector<int64_t>{value_dim, d}));
  EXPECT_EQ(by_name["model.layers.0.attn.b_proj.weight"], (std::vector<int64_t>{key_dim, d}));
  EXPECT_EQ(by_name["model.layers.0.attn.w_proj.weight"], (std::vector<int64_t>{value_dim, d}));
  EXPECT_EQ(by_name["model.layers.0.attn.f_proj.0.weight"], (std::vector<int64_t>{v, d}));
  EXPECT_EQ(by_name["model.layers.0.attn.f_proj.1.weight"], (std::vector<int64_t>{key_dim, v}));
  EXPECT_EQ(by_name["model.layers.0.attn.g_proj.1.weight"], (std::vector<int64_t>{value_dim, v}));
  EXPECT_EQ(by_name["model.layers.0.attn.g_proj.1.bias"], (std::vector<int64_t>{value_dim}));
  EXPECT_EQ(by_name["model.layers.0.attn.k_conv1d.weight"], (std::vector<int64_t>{key_dim, 1, 3}));
  EXPECT_EQ(by_name["model.layers.0.attn.v_conv1d.weight"],
            (std::vector<int64_t>{value_dim, 1, 3}));
  EXPECT_EQ(by_name["model.layers.0.attn.A_log"], (std::vector<int64_t>{2}));
  EXPECT_EQ(by_name["model.layers.0.attn.dt_bias"], (std::vector<int64_t>{key_dim}));
  EXPECT_EQ(by_name["model.layers.0.attn.o_norm.weight"], (std::vector<int64_t>{v}));
  EXPECT_EQ(by_name["model.layers.0.attn.o_proj.weight"], (std::vector<int64_t>{d, value_dim}));
  EXPECT_EQ(by_name["model.layers.1.mlp.gate_proj.weight"], (std::vector<int64_t>{96, d}));
  EXPECT_EQ(by_name["model.layers.1.mlp.down_proj.weight"], (std::vector<int64_t>{d, 96}));
  EXPECT_EQ(by_name["model.norm.weight"], (std::vector<int64_t>{d}));

  j["tie_word_embeddings"] = true;
  const std::vector<ExpectedTensor> tied = ExpectedTensors(*ParseModelConfig(j.dump()));
  EXPECT_EQ(tied.size(), tensors.size() - 1);
  EXPECT_EQ(tied.back().name, "model.norm.weight");
}

class ConfigDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = (std::filesystem::path(::testing::TempDir()) / "config_test_XXXXXX");
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  void Write(const std::string& text) { std::ofstream(dir_ + "/config.json") << text; }

  std::string dir_;
};

TEST_F(ConfigDirTest, LoadsConfigJson) {
  Write(MinimalConfig().dump(2));
  absl::StatusOr<ModelConfig> c = LoadModelConfig(dir_);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(*c, *ParseModelConfig(MinimalConfig().dump()));
}

TEST_F(ConfigDirTest, MissingFileIsNotFound) {
  absl::StatusOr<ModelConfig> c = LoadModelConfig(dir_);
  EXPECT_EQ(c.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(absl::StrContains(c.status().message(), dir_)) << c.status();
  std::filesystem::create_directory(dir_ + "/config.json");
  EXPECT_EQ(LoadModelConfig(dir_).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(ConfigDirTest, ErrorsNameThePathAndField) {
  Json j = MinimalConfig();
  j["num_v_heads"] = 5;
  Write(j.dump());
  absl::StatusOr<ModelConfig> c = LoadModelConfig(dir_);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(c.status().message(),
                                absl::StrCat(dir_, "/config.json: field \"num_v_heads\"")))
      << c.status();
}

}  // namespace
}  // namespace gdnserve
