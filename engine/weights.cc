#include "engine/weights.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "engine/safetensors.h"

namespace gdnserve {

InProjLayout InProjLayout::ForConfig(const ModelConfig& c) {
  InProjLayout l;
  l.q = 0;
  l.k = l.q + c.key_dim;
  l.v = l.k + c.key_dim;
  l.b = l.v + c.value_dim;
  l.w = l.b + c.key_dim;
  l.f0 = l.w + c.value_dim;
  l.g0 = l.f0 + c.head_v_dim;
  l.total = l.g0 + c.head_v_dim;
  return l;
}

int64_t ModelWeights::num_parameters() const {
  int64_t n = embed.size() + final_norm.size() + lm_head.size();
  for (const LayerWeights& l : layers) {
    for (const auto* v : {&l.attn_norm, &l.in_proj, &l.conv, &l.f_up, &l.g_up, &l.g_bias, &l.a_log,
                          &l.dt_bias, &l.o_norm, &l.o_proj, &l.mlp_norm, &l.gate_up, &l.down}) {
      n += v->size();
    }
  }
  return n;
}

namespace {

// Reads tensors by name into float32 buffers, appending to a destination so
// fused matrices are built by consecutive reads. Shapes were checked up front.
class TensorReader {
 public:
  explicit TensorReader(const SafetensorsModel& st) : st_(st) {}

  absl::Status Append(const std::string& name, std::vector<float>& dst) {
    const TensorInfo* t = st_.Find(name);
    if (t == nullptr) return absl::NotFoundError(absl::StrCat("missing tensor ", name));
    int64_t n = 1;
    for (int64_t s : t->shape) n *= s;
    const size_t off = dst.size();
    dst.resize(off + n);
    return CopyToFloat32(*t, dst.data() + off);
  }

 private:
  const SafetensorsModel& st_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<ModelWeights>> LoadModelWeights(const std::string& dir,
                                                               const LoadProgress& progress) {
  absl::StatusOr<ModelConfig> config = LoadModelConfig(dir);
  if (!config.ok()) return config.status();
  absl::StatusOr<SafetensorsModel> st = SafetensorsModel::Open(dir);
  if (!st.ok()) return st.status();
  if (absl::Status s = CheckShapes(*st, ExpectedTensors(*config)); !s.ok()) return s;

  auto w = std::make_unique<ModelWeights>();
  w->config = *config;
  const ModelConfig& c = w->config;
  TensorReader rd(*st);
#define GDN_READ(name, dst)                                      \
  do {                                                           \
    if (absl::Status s_ = rd.Append((name), (dst)); !s_.ok()) return s_; \
  } while (0)

  GDN_READ("model.embeddings.weight", w->embed);
  w->layers.resize(c.num_layers);
  for (int i = 0; i < c.num_layers; ++i) {
    LayerWeights& l = w->layers[i];
    const std::string p = absl::StrCat("model.layers.", i, ".");
    const std::string a = p + "attn.";
    GDN_READ(p + "attn_norm.weight", l.attn_norm);
    for (const char* part : {"q_proj", "k_proj", "v_proj", "b_proj", "w_proj"}) {
      GDN_READ(a + part + ".weight", l.in_proj);
    }
    GDN_READ(a + "f_proj.0.weight", l.in_proj);
    GDN_READ(a + "g_proj.0.weight", l.in_proj);
    for (const char* part : {"q_conv1d", "k_conv1d", "v_conv1d"}) GDN_READ(a + part + ".weight", l.conv);
    GDN_READ(a + "f_proj.1.weight", l.f_up);
    GDN_READ(a + "g_proj.1.weight", l.g_up);
    GDN_READ(a + "g_proj.1.bias", l.g_bias);
    GDN_READ(a + "A_log", l.a_log);
    GDN_READ(a + "dt_bias", l.dt_bias);
    GDN_READ(a + "o_norm.weight", l.o_norm);
    GDN_READ(a + "o_proj.weight", l.o_proj);
    GDN_READ(p + "mlp_norm.weight", l.mlp_norm);
    GDN_READ(p + "mlp.gate_proj.weight", l.gate_up);
    GDN_READ(p + "mlp.up_proj.weight", l.gate_up);
    GDN_READ(p + "mlp.down_proj.weight", l.down);
    if (progress) progress(i + 1, c.num_layers);
  }
  GDN_READ("model.norm.weight", w->final_norm);
  if (!c.tie_word_embeddings) GDN_READ("lm_head.weight", w->lm_head);
#undef GDN_READ
  return w;
}

}  // namespace gdnserve
