#include "engine/cpu_backend.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "absl/strings/str_format.h"
#include "kernels/cpu/gdn2.h"
#include "kernels/cpu/linear.h"
#include "kernels/cpu/ops.h"

namespace gdnserve {
namespace {

class CpuBackend final : public Backend {
 public:
  CpuBackend(std::shared_ptr<const ModelWeights> weights, const CpuBackendOptions& options)
      : weights_(std::move(weights)),
        cfg_(weights_->config),
        proj_(InProjLayout::ForConfig(cfg_)),
        pool_(StateLayout::ForConfig(cfg_), options.num_slots),
        batch_invariant_(options.batch_invariant) {
    if (options.num_threads > 0) {
      omp_set_num_threads(options.num_threads);
      cpu::SetBlasThreads(options.num_threads);
    }
  }

  std::string name() const override { return "cpu"; }
  const ModelConfig& config() const override { return cfg_; }
  StatePool& state_pool() override { return pool_; }

  absl::Status Forward(absl::Span<const SeqPiece> batch, ForwardOutput* out) override;

 private:
  void Mixer(int layer, absl::Span<const SeqPiece> batch, int64_t T);
  void Mlp(int layer, int64_t T);
  // cpu::Linear over this forward's token rows (or logits rows), one call per
  // run of pieces of one class: prompt rows (pieces marked prompt or longer
  // than one token) row-invariant, decode rows free to take the small-batch
  // kernel (unless batch_invariant_).
  void Linear(bool logits_rows, const float* x, int64_t x_stride, int64_t n_in, const float* W, int64_t n_out,
              const float* bias, float* y, int64_t y_stride, bool accumulate = false);

  std::shared_ptr<const ModelWeights> weights_;
  const ModelConfig& cfg_;
  InProjLayout proj_;
  StatePool pool_;
  const bool batch_invariant_;

  // Workspace, grown to the largest batch seen ([T, ...] row-major).
  std::vector<int64_t> piece_start_;  // first token row of each piece
  std::vector<RowRun> runs_;  // this forward's (RowRuns)
  static constexpr int64_t kMinPromptRows = 64;
  std::vector<float> pad_x_, pad_y_;
  std::vector<float> x_, h_, proj_out_, qkv_, f_, z_, b_, w_, o_, mlp_;
};

absl::Status CpuBackend::Forward(absl::Span<const SeqPiece> batch, ForwardOutput* out) {
  if (absl::Status s = ValidateBatch(batch, pool_, cfg_.vocab_size); !s.ok()) return s;
  const int64_t d = cfg_.hidden_size;
  piece_start_.assign(batch.size() + 1, 0);
  for (size_t i = 0; i < batch.size(); ++i) piece_start_[i + 1] = piece_start_[i] + batch[i].tokens.size();
  const int64_t T = piece_start_.back();
  runs_ = RowRuns(batch);

  x_.resize(T * d);
  h_.resize(T * d);
  for (size_t i = 0; i < batch.size(); ++i) {
    for (size_t j = 0; j < batch[i].tokens.size(); ++j) {
      std::memcpy(&x_[(piece_start_[i] + j) * d], &weights_->embed[batch[i].tokens[j] * d], d * sizeof(float));
    }
  }
  for (int l = 0; l < cfg_.num_layers; ++l) {
    Mixer(l, batch, T);
    Mlp(l, T);
  }

  // Final norm and lm_head on the rows that need logits only.
  out->vocab = cfg_.vocab_size;
  out->external = nullptr;
  out->first_row.assign(batch.size() + 1, 0);
  std::vector<int64_t> rows;
  for (size_t i = 0; i < batch.size(); ++i) {
    const int64_t n = batch[i].all_logits ? static_cast<int64_t>(batch[i].tokens.size()) : 1;
    for (int64_t j = batch[i].tokens.size() - n; j < static_cast<int64_t>(batch[i].tokens.size()); ++j) {
      rows.push_back(piece_start_[i] + j);
    }
    out->first_row[i + 1] = out->first_row[i] + n;
  }
  const int64_t R = rows.size();
  for (int64_t r = 0; r < R; ++r) {
    cpu::RmsNorm(&x_[rows[r] * d], weights_->final_norm.data(), 1, d, cfg_.norm_eps, &h_[r * d]);
  }
  out->logits.resize(R * cfg_.vocab_size);
  Linear(true, h_.data(), d, d, weights_->lm_head_data(), cfg_.vocab_size, nullptr, out->logits.data(),
         cfg_.vocab_size);
  return absl::OkStatus();
}

void CpuBackend::Linear(bool logits_rows, const float* x, int64_t x_stride, int64_t n_in, const float* W,
                        int64_t n_out, const float* bias, float* y, int64_t y_stride, bool accumulate) {
  for (const RowRun& run : runs_) {
    const int64_t r0 = logits_rows ? run.r0 : run.t0, r1 = logits_rows ? run.r1 : run.t1, m = r1 - r0;
    if (m <= 0) continue;
    const bool fixed = run.prompt || batch_invariant_;
    if (!fixed || m >= kMinPromptRows) {
      cpu::Linear(x + r0 * x_stride, x_stride, m, n_in, W, n_out, bias, y + r0 * y_stride, y_stride, accumulate,
                  /*row_invariant=*/fixed);
      continue;
    }
    // A short prompt (or batch-invariant decode) run: padded to
    // kMinPromptRows rows, so sgemm takes the path it takes for a cold run's
    // longer pieces (OpenBLAS treats very small products differently: with
    // the 64-wide test models, 8 and 16 rows gave other results than 350, 32
    // did not; 64 leaves a margin). The cost: a run of under 64 rows computes
    // 64 rows.
    pad_x_.assign(kMinPromptRows * n_in, 0.0f);
    pad_y_.assign(kMinPromptRows * n_out, 0.0f);
    for (int64_t i = 0; i < m; ++i) {
      std::memcpy(&pad_x_[i * n_in], x + (r0 + i) * x_stride, n_in * sizeof(float));
      if (accumulate) std::memcpy(&pad_y_[i * n_out], y + (r0 + i) * y_stride, n_out * sizeof(float));
    }
    cpu::Linear(pad_x_.data(), n_in, kMinPromptRows, n_in, W, n_out, bias, pad_y_.data(), n_out, accumulate,
                /*row_invariant=*/true);
    for (int64_t i = 0; i < m; ++i) std::memcpy(y + (r0 + i) * y_stride, &pad_y_[i * n_out], n_out * sizeof(float));
  }
}

void CpuBackend::Mixer(int layer, absl::Span<const SeqPiece> batch, int64_t T) {
  const LayerWeights& lw = weights_->layers[layer];
  const int64_t d = cfg_.hidden_size, K = cfg_.head_dim, V = cfg_.head_v_dim;
  const int64_t H = cfg_.num_heads, HV = cfg_.num_v_heads;
  const int64_t key_dim = cfg_.key_dim, value_dim = cfg_.value_dim;
  const int64_t conv_ch = 2 * key_dim + value_dim;
  const int64_t P = proj_.total;

  cpu::RmsNorm(x_.data(), lw.attn_norm.data(), T, d, cfg_.norm_eps, h_.data());
  proj_out_.resize(T * P);
  Linear(false, h_.data(), d, d, lw.in_proj.data(), P, nullptr, proj_out_.data(), P);

  // Short conv + SiLU on q, k, v, per piece with the slot's conv state.
  qkv_.resize(T * conv_ch);
  for (size_t i = 0; i < batch.size(); ++i) {
    const int64_t t0 = piece_start_[i], n = batch[i].tokens.size();
    cpu::CausalConv1dSilu(&proj_out_[t0 * P + proj_.q], P, lw.conv.data(), n, conv_ch, cfg_.conv_size,
                          pool_.Conv(batch[i].slot, layer), &qkv_[t0 * conv_ch], conv_ch);
  }
  // Low-rank decay and output gate.
  f_.resize(T * key_dim);
  z_.resize(T * value_dim);
  Linear(false, &proj_out_[proj_.f0], P, V, lw.f_up.data(), key_dim, nullptr, f_.data(), key_dim);
  Linear(false, &proj_out_[proj_.g0], P, V, lw.g_up.data(), value_dim, lw.g_bias.data(), z_.data(), value_dim);
  b_.resize(T * key_dim);
  w_.resize(T * value_dim);
  for (int64_t t = 0; t < T; ++t) {
    std::memcpy(&b_[t * key_dim], &proj_out_[t * P + proj_.b], key_dim * sizeof(float));
    std::memcpy(&w_[t * value_dim], &proj_out_[t * P + proj_.w], value_dim * sizeof(float));
  }
  cpu::Gdn2Gates(f_.data(), b_.data(), T, H, K, lw.a_log.data(), lw.dt_bias.data(), cfg_.allow_neg_eigval,
                 w_.data(), value_dim);
  // q and k are the first 2*key_dim channels of each qkv row; normalise per head.
  for (int64_t t = 0; t < T; ++t) {
    cpu::L2NormHeads(&qkv_[t * conv_ch], 1, H, K, 1.0f / std::sqrt(static_cast<float>(K)));
    cpu::L2NormHeads(&qkv_[t * conv_ch + key_dim], 1, H, K, 1.0f);
  }

  // The recurrence, one task per (piece, value head).
  o_.resize(T * value_dim);
  const int64_t group = HV / H;
  const int64_t tasks = static_cast<int64_t>(batch.size()) * HV;
  // Below ~1M state-element updates a parallel region costs more than it saves.
  const bool parallel = T * HV * K * V >= (1 << 20);
#pragma omp parallel for schedule(dynamic, 1) if (parallel)
  for (int64_t task = 0; task < tasks; ++task) {
    const size_t i = task / HV;
    const int64_t hv = task % HV, hk = hv / group;
    const int64_t t0 = piece_start_[i], n = batch[i].tokens.size();
    cpu::Gdn2HeadInputs in{&qkv_[t0 * conv_ch + hk * K],
                           &qkv_[t0 * conv_ch + key_dim + hk * K],
                           &f_[t0 * key_dim + hk * K],
                           &b_[t0 * key_dim + hk * K],
                           &qkv_[t0 * conv_ch + 2 * key_dim + hv * V],
                           &w_[t0 * value_dim + hv * V],
                           conv_ch, conv_ch, key_dim, key_dim, conv_ch, value_dim};
    float* state = pool_.Recurrent(batch[i].slot, layer) + hv * V * K;
    float* o = &o_[t0 * value_dim + hv * V];
    if (!batch[i].is_prompt()) {  // prompt tokens take the chunk form, as in a cold run
      cpu::Gdn2RecurrentHead(in, n, K, V, state, o, value_dim);
    } else {
      cpu::Gdn2ChunkedHead(in, n, K, V, state, o, value_dim);
    }
  }
  cpu::GatedRmsNorm(o_.data(), z_.data(), lw.o_norm.data(), T, HV, V, cfg_.norm_eps);
  Linear(false, o_.data(), value_dim, value_dim, lw.o_proj.data(), d, nullptr, x_.data(), d,
              /*accumulate=*/true);
}

void CpuBackend::Mlp(int layer, int64_t T) {
  const LayerWeights& lw = weights_->layers[layer];
  const int64_t d = cfg_.hidden_size, I = cfg_.intermediate_size;
  cpu::RmsNorm(x_.data(), lw.mlp_norm.data(), T, d, cfg_.norm_eps, h_.data());
  mlp_.resize(T * 3 * I);
  float* gu = mlp_.data();
  float* act = gu + T * 2 * I;
  Linear(false, h_.data(), d, d, lw.gate_up.data(), 2 * I, nullptr, gu, 2 * I);
  cpu::SiluMul(gu, T, I, act);
  Linear(false, act, I, I, lw.down.data(), d, nullptr, x_.data(), d, /*accumulate=*/true);
}

}  // namespace

absl::StatusOr<std::unique_ptr<Backend>> CreateCpuBackend(std::shared_ptr<const ModelWeights> weights,
                                                          const CpuBackendOptions& options) {
  if (options.num_slots < 1) {
    return absl::InvalidArgumentError(absl::StrFormat("num_slots must be >= 1, got %d", options.num_slots));
  }
  return std::make_unique<CpuBackend>(std::move(weights), options);
}

}  // namespace gdnserve
