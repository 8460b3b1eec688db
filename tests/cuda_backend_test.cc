// The CUDA backend against the CPU backend on the same model (DESIGN.md 1.4
// item 5; items 2-4 on the GPU): logits of packed batches that mix prefill
// pieces and decode steps, prompts split into pieces, greedy generations, and
// state round trips through ReadSlot/WriteSlot. Skips cleanly without a GPU.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <string>
#include <vector>

#include "engine/cpu_backend.h"
#include "engine/cuda_backend.h"
#include "engine/weights.h"
#include "kernels/cpu/sample.h"
#include "tests/cuda_test_util.h"
#include "tests/test_util.h"

namespace gdnserve {
namespace {

using testing::RelErr;

using testing::HaveGpu;

struct Param {
  std::string model;  // under GDNSERVE_TEST_MODELS, or a path
  bool bf16;
  PrefillKernel prefill = PrefillKernel::kRecurrent;
  bool graphs = true;  // decode steps as CUDA graphs
};

std::string ModelPath(const std::string& m) {
  if (m.find('/') != std::string::npos) return m;
  const char* dir = std::getenv("GDNSERVE_TEST_MODELS");
  return dir ? std::string(dir) + "/" + m : "";
}

class CudaBackendTest : public ::testing::TestWithParam<Param> {
 protected:
  void SetUp() override {
    if (!HaveGpu()) GTEST_SKIP() << "no CUDA device";
    const std::string path = ModelPath(GetParam().model);
    if (path.empty()) GTEST_SKIP() << "GDNSERVE_TEST_MODELS is not set (ctest sets it)";
    auto w = LoadModelWeights(path);
    ASSERT_TRUE(w.ok()) << w.status();
    std::shared_ptr<const ModelWeights> weights = std::move(*w);
    auto cpu = CreateCpuBackend(weights, {.num_slots = 8});
    ASSERT_TRUE(cpu.ok()) << cpu.status();
    cpu_ = std::move(*cpu);
    auto gpu = CreateCudaBackend(weights, {.num_slots = 8,
                                           .bf16 = GetParam().bf16,
                                           .cuda_graphs = GetParam().graphs,
                                           .prefill_kernel = GetParam().prefill});
    ASSERT_TRUE(gpu.ok()) << gpu.status();
    gpu_ = std::move(*gpu);
    rng_.seed(testing::TestSeed() + std::hash<std::string>{}(GetParam().model) + GetParam().bf16);
    // DESIGN.md 1.4: bf16 weights <= 1e-2, float32 <= 1e-4. The 1e-2 is for
    // trained models (the bundled one measures ~5e-3 on an H200). The random
    // 64-wide test models round their GEMM inputs to bf16 with little
    // averaging, and their error grows over the 16 teacher-forced steps:
    // 1.7e-2 to 5.4e-2 measured over seeds (H200). For them the check is
    // structural (a wrong index or layout gives errors of order 1), so 1e-1.
    const bool random_model = GetParam().model.find('/') == std::string::npos;
    tol_ = GetParam().bf16 ? (random_model ? 1e-1 : 1e-2) : 1e-4;
  }

  std::vector<int32_t> RandomIds(int n) {
    std::uniform_int_distribution<int32_t> d(0, cpu_->config().vocab_size - 1);
    std::vector<int32_t> ids(n);
    for (auto& t : ids) t = d(rng_);
    return ids;
  }

  std::unique_ptr<Backend> cpu_, gpu_;
  std::mt19937_64 rng_;
  double tol_ = 0;
};

// Several sequences advance together through steps that mix prefill pieces of
// various lengths and single decode tokens; all logits compared every step.
TEST_P(CudaBackendTest, PackedBatchesMatchCpu) {
  const std::vector<int> prompt = {1, 17, 64, 65, 200};
  const int S = static_cast<int>(prompt.size());
  std::vector<int> cs(S), gs(S);
  for (int i = 0; i < S; ++i) {
    cs[i] = *cpu_->state_pool().Acquire();
    gs[i] = *gpu_->state_pool().Acquire();
  }
  std::vector<std::vector<int32_t>> ids(S);
  for (int i = 0; i < S; ++i) ids[i] = RandomIds(prompt[i] + 12);
  std::vector<size_t> pos(S, 0);
  double worst = 0, sum = 0;
  int compared = 0;
  for (int step = 0; step < 16; ++step) {
    std::vector<SeqPiece> cb, gb;
    for (int i = 0; i < S; ++i) {
      if (pos[i] >= ids[i].size()) continue;
      // Prompts go in two pieces (a third of it, then the rest); then one token a step.
      size_t n = 1;
      if (pos[i] < static_cast<size_t>(prompt[i])) n = pos[i] == 0 ? std::max(1, prompt[i] / 3) : prompt[i] - pos[i];
      auto span = absl::MakeConstSpan(ids[i]).subspan(pos[i], n);
      cb.push_back({cs[i], span, true});
      gb.push_back({gs[i], span, true});
      pos[i] += n;
    }
    if (cb.empty()) break;
    // Order of pieces differs between the two backends' batches.
    std::reverse(gb.begin(), gb.end());
    ForwardOutput co, go;
    ASSERT_TRUE(cpu_->Forward(cb, &co).ok());
    ASSERT_TRUE(gpu_->Forward(gb, &go).ok());
    for (size_t j = 0; j < cb.size(); ++j) {
      const size_t jg = gb.size() - 1 - j;
      const int64_t rows = co.first_row[j + 1] - co.first_row[j];
      ASSERT_EQ(rows, go.first_row[jg + 1] - go.first_row[jg]);
      std::vector<float> c(co.Row(co.first_row[j]), co.Row(co.first_row[j]) + rows * co.vocab);
      std::vector<float> g(go.Row(go.first_row[jg]), go.Row(go.first_row[jg]) + rows * go.vocab);
      const double e = RelErr(g, c);
      worst = std::max(worst, e);
      sum += e;
      ++compared;
      // bf16: DESIGN.md 1.4's bound holds for the mean (below); single
      // pieces of random token ids (out of distribution for the trained
      // model) reach 1.1e-2 (10 seeds on an H200: worst 5.0e-3 .. 1.1e-2)
      // and 2.06e-2 on an H100 (the bundled model's first prompt piece, the
      // same with all three GDN kernels: the bf16 GEMMs' rounding).
      EXPECT_LE(e, GetParam().bf16 ? 3 * tol_ : tol_) << "step " << step << " piece " << j;
    }
  }
  std::printf("%s %s: logits relative error mean %.3g, worst %.3g\n", GetParam().model.c_str(),
              GetParam().bf16 ? "bf16" : "f32", sum / compared, worst);
  EXPECT_LE(sum / compared, tol_);
  // Final states agree too.
  const int64_t n = cpu_->state_pool().layout().floats_per_slot();
  for (int i = 0; i < S; ++i) {
    std::vector<float> c(n), g(n);
    ASSERT_TRUE(cpu_->ReadSlot(cs[i], absl::MakeSpan(c)).ok());
    ASSERT_TRUE(gpu_->ReadSlot(gs[i], absl::MakeSpan(g)).ok());
    EXPECT_LE(RelErr(g, c), GetParam().bf16 ? 5 * tol_ : 1e-4) << "sequence " << i;
  }
}

// Invariants 2 and 3 on the GPU: a prompt in pieces (with a decode step)
// equals the prompt in one go; and a state written back with WriteSlot
// continues exactly as the original.
TEST_P(CudaBackendTest, PiecesEqualWholeAndSlotsRoundTrip) {
  const std::vector<int32_t> ids = RandomIds(150);
  const int a = *gpu_->state_pool().Acquire(), b = *gpu_->state_pool().Acquire();
  ForwardOutput whole, part;
  SeqPiece p{a, ids, true};
  ASSERT_TRUE(gpu_->Forward({&p, 1}, &whole).ok());
  const std::vector<float> whole_rows = whole.AllRows();  // the output is valid until the next Forward
  std::vector<float> pieces;
  const std::vector<size_t> ends = {1, 64, 65, 149, 150};
  size_t begin = 0;
  for (size_t end : ends) {
    SeqPiece q{b, absl::MakeConstSpan(ids).subspan(begin, end - begin), true};
    ASSERT_TRUE(gpu_->Forward({&q, 1}, &part).ok());
    const std::vector<float> rows = part.AllRows();
    pieces.insert(pieces.end(), rows.begin(), rows.end());
    begin = end;
  }
  // float32: rounding only (with chunked prefill, 1-token pieces take the
  // recurrent kernel and longer ones the chunkwise one); bf16 rounds GEMM
  // inputs, which spreads those last-bit differences (1.3e-3 measured on the
  // bundled model, H200).
  EXPECT_LE(RelErr(pieces, whole_rows), GetParam().bf16 ? 1e-2 : 1e-5);

  // Snapshot a, continue a; restore the snapshot into c, continue c: same.
  const int64_t n = gpu_->state_pool().layout().floats_per_slot();
  std::vector<float> snap(n);
  ASSERT_TRUE(gpu_->ReadSlot(a, absl::MakeSpan(snap)).ok());
  const int c = *gpu_->state_pool().Acquire();
  ASSERT_TRUE(gpu_->WriteSlot(c, snap).ok());
  const std::vector<int32_t> next = RandomIds(5);
  ForwardOutput oa, oc;
  SeqPiece pa{a, next, true}, pc{c, next, true};
  ASSERT_TRUE(gpu_->Forward({&pa, 1}, &oa).ok());
  const std::vector<float> a_rows = oa.AllRows();
  ASSERT_TRUE(gpu_->Forward({&pc, 1}, &oc).ok());
  EXPECT_EQ(a_rows, oc.AllRows());
  // Fork (pool Copy) behaves the same.
  const int f = *gpu_->state_pool().Acquire();
  ASSERT_TRUE(gpu_->state_pool().Copy(a, f).ok());
  ForwardOutput of, oa2;
  SeqPiece pf{f, next, true}, pa2{a, next, true};
  ASSERT_TRUE(gpu_->Forward({&pf, 1}, &of).ok());
  const std::vector<float> fork_rows = of.AllRows();  // before the next Forward reuses the buffer
  ASSERT_TRUE(gpu_->Forward({&pa2, 1}, &oa2).ok());
  EXPECT_EQ(fork_rows, oa2.AllRows());
  // A fresh slot is zeroed even after reuse.
  ASSERT_TRUE(gpu_->state_pool().Release(f).ok());
  const int z = *gpu_->state_pool().Acquire();
  std::vector<float> zs(n, 1.0f);
  ASSERT_TRUE(gpu_->ReadSlot(z, absl::MakeSpan(zs)).ok());
  EXPECT_TRUE(std::all_of(zs.begin(), zs.end(), [](float x) { return x == 0.0f; }));
}

// Greedy generations equal the CPU's, or diverge only at a measured near-tie.
TEST_P(CudaBackendTest, GreedyGenerationsMatchCpu) {
  for (int trial = 0; trial < 3; ++trial) {
    std::vector<int32_t> ctx = RandomIds(20 + 30 * trial);
    const int cs = *cpu_->state_pool().Acquire(), gs = *gpu_->state_pool().Acquire();
    std::vector<int32_t> cpu_in = ctx, gpu_in = ctx;
    for (int step = 0; step < 24; ++step) {
      ForwardOutput co, go;
      SeqPiece cp{cs, cpu_in, false}, gp{gs, gpu_in, false};
      ASSERT_TRUE(cpu_->Forward({&cp, 1}, &co).ok());
      ASSERT_TRUE(gpu_->Forward({&gp, 1}, &go).ok());
      const float* c = co.Last(0);
      const float* g = go.Last(0);
      const int ct = static_cast<int>(std::max_element(c, c + co.vocab) - c);
      const int gt = static_cast<int>(std::max_element(g, g + go.vocab) - g);
      if (ct != gt) {
        // Near-tie: on the CPU's logits the two choices are within the error budget.
        const double gap = c[ct] - c[gt];
        std::printf("trial %d step %d: cpu %d vs gpu %d, cpu logit gap %.3g\n", trial, step, ct, gt, gap);
        EXPECT_LE(gap, (GetParam().bf16 ? 0.05 : 1e-3) * std::max(1.0f, std::abs(c[ct])));
        break;
      }
      cpu_in = {ct};
      gpu_in = {gt};
    }
    ASSERT_TRUE(cpu_->state_pool().Release(cs).ok());
    ASSERT_TRUE(gpu_->state_pool().Release(gs).ok());
  }
}

// The prefix cache's promise on this backend: a prompt continued from a state
// snapshot taken at a 64-aligned position gives, bit for bit, the logits a
// cold run gives. The recurrence and conv are per token; prompt rows go
// through GEMM algorithms fixed for every row count, so the 72-token and the
// 1-token continuations match the 200-token cold run exactly.
TEST_P(CudaBackendTest, PrefixSnapshotContinuesLikeACold) {
  const std::vector<int32_t> ids = RandomIds(200);
  const int cold = *gpu_->state_pool().Acquire(), warm = *gpu_->state_pool().Acquire();
  ForwardOutput c, w, first;
  SeqPiece pc{cold, ids, true};
  ASSERT_TRUE(gpu_->Forward({&pc, 1}, &c).ok());
  const std::vector<float> cold_rows = c.AllRows();
  SeqPiece p1{warm, absl::MakeConstSpan(ids).subspan(0, 128), false};
  ASSERT_TRUE(gpu_->Forward({&p1, 1}, &first).ok());
  const int64_t n = gpu_->state_pool().layout().floats_per_slot();
  std::vector<float> snap(n);
  ASSERT_TRUE(gpu_->ReadSlot(warm, absl::MakeSpan(snap)).ok());
  const int hit = *gpu_->state_pool().Acquire();
  ASSERT_TRUE(gpu_->WriteSlot(hit, snap).ok());
  SeqPiece p2{hit, absl::MakeConstSpan(ids).subspan(128), true};
  ASSERT_TRUE(gpu_->Forward({&p2, 1}, &w).ok());
  const std::vector<float> warm_rows = w.AllRows();
  const std::vector<float> cold_tail(cold_rows.end() - warm_rows.size(), cold_rows.end());
  std::printf("%s %s: prefix-snapshot logits %s (relative difference %.3g)\n", GetParam().model.c_str(),
              GetParam().bf16 ? "bf16" : "f32", cold_tail == warm_rows ? "bit-identical to cold" : "differ from cold",
              RelErr(warm_rows, cold_tail));
  EXPECT_TRUE(cold_tail == warm_rows);
  // A one-token prompt tail (flagged as prompt) next to a decode token of
  // another sequence: still the cold run's row 128.
  const int one = *gpu_->state_pool().Acquire(), other = *gpu_->state_pool().Acquire();
  const int32_t tok = ids[5];
  // First a pure decode step of two sequences (with CUDA graphs: captured
  // for batch 2), then the mixed step of two: it must not replay that graph.
  std::vector<SeqPiece> decode = {{other, {&tok, 1}, false}, {one, {&tok, 1}, false}};
  ForwardOutput o;
  ASSERT_TRUE(gpu_->Forward(decode, &o).ok());
  ASSERT_TRUE(gpu_->WriteSlot(one, snap).ok());
  std::vector<SeqPiece> mixed = {{other, {&tok, 1}, false}, {one, absl::MakeConstSpan(ids).subspan(128, 1), false}};
  mixed[1].prompt = true;
  ASSERT_TRUE(gpu_->Forward(mixed, &o).ok());
  const std::vector<float> row(o.Row(1), o.Row(1) + o.vocab);
  const std::vector<float> cold_row(cold_rows.begin() + 128 * o.vocab, cold_rows.begin() + 129 * o.vocab);
  EXPECT_TRUE(row == cold_row) << "relative difference " << RelErr(row, cold_row);
}

// Draw on the device vs the host rule (kernels/cpu/sample.h) on the same
// rows: a mixed batch whose rows reach the host, drawn with many sampling
// settings and uniforms; then pieces whose rows stay on the device (their
// twins, forked slots in the same batch, bring theirs to the host) drawn
// greedily. A different token is accepted only at a cumulative boundary
// (the host rule draws it too at u +- 1e-5).
TEST_P(CudaBackendTest, DrawMatchesTheHostRule) {
  ASSERT_TRUE(gpu_->SamplesOnDevice());
  const std::vector<int> lengths = {1, 1, 1, 10};
  std::vector<int> slots;
  std::vector<std::vector<int32_t>> ids;
  std::vector<SeqPiece> batch;
  for (int n : lengths) {
    slots.push_back(*gpu_->state_pool().Acquire());
    ids.push_back(RandomIds(n));
  }
  for (size_t i = 0; i < lengths.size(); ++i) batch.push_back({slots[i], ids[i], false, true});
  ForwardOutput out;
  ASSERT_TRUE(gpu_->Forward(batch, &out).ok());
  const std::vector<float> rows = out.AllRows();
  const int64_t vocab = out.vocab;
  std::vector<SamplingParams> params(6);
  params[0].temperature = 0;
  params[1].temperature = 0.8f;
  params[2].top_k = 7;
  params[3].top_p = 0.6f;
  params[3].min_p = 0.05f;
  params[4].temperature = 1.2f;
  params[4].repetition_penalty = 1.3f;
  params[4].presence_penalty = 0.4f;
  params[4].frequency_penalty = 0.3f;
  params[5].top_k = 40;
  params[5].top_p = 0.9f;
  const std::vector<int32_t> repeated = {1, 5, 9}, counted = {5, 11}, counts = {2, 1};
  std::uniform_real_distribution<double> uni(0.0, 1.0);
  std::vector<DeviceDraw> draws;
  for (int64_t r = 0; r < out.rows(); ++r) {
    for (const SamplingParams& p : params) {
      for (int k = 0; k < 4; ++k) {
        DeviceDraw d;
        d.row = r;
        d.params = &p;
        d.uniform = uni(rng_);
        if (p.repetition_penalty != 1.0f) d.repeated = repeated, d.counted = counted, d.counts = counts;
        draws.push_back(d);
      }
    }
  }
  std::vector<SampleResult> got(draws.size());
  ASSERT_TRUE(gpu_->Draw(draws, absl::MakeSpan(got)).ok());
  cpu::DrawScratch scratch;
  int boundary = 0;
  for (size_t i = 0; i < draws.size(); ++i) {
    const DeviceDraw& d = draws[i];
    const SamplingParams& p = *d.params;
    std::vector<float> x(rows.begin() + d.row * vocab, rows.begin() + (d.row + 1) * vocab);
    const std::vector<float> raw = x;
    cpu::ApplyPenalties(x.data(), vocab, p.repetition_penalty, d.repeated.data(), d.repeated.size(), p.presence_penalty,
                        p.frequency_penalty, d.counted.data(), d.counts.data(), d.counted.size());
    const cpu::DrawParams dp{p.temperature, p.top_k, p.top_p, p.min_p};
    const int32_t want = cpu::DrawToken(x.data(), vocab, dp, d.uniform, &scratch);
    if (got[i].token != want) {
      ++boundary;
      const int32_t lo = cpu::DrawToken(x.data(), vocab, dp, std::max(0.0, d.uniform - 1e-5), &scratch);
      const int32_t hi = cpu::DrawToken(x.data(), vocab, dp, std::min(1.0 - 1e-12, d.uniform + 1e-5), &scratch);
      EXPECT_TRUE(got[i].token == lo || got[i].token == hi) << "draw " << i << ": gpu " << got[i].token << " host "
                                                           << want;
    }
    EXPECT_NEAR(got[i].logprob, cpu::LogSoftmaxAt(raw.data(), vocab, got[i].token), 1e-4) << "draw " << i;
  }
  EXPECT_LE(boundary * 20, static_cast<int>(draws.size()));

  // Rows left on the device: each piece next to its forked twin, same tokens.
  std::vector<SeqPiece> pair;
  std::vector<int32_t> next(lengths.size());
  for (size_t i = 0; i < lengths.size(); ++i) {
    const int twin = *gpu_->state_pool().Acquire();
    ASSERT_TRUE(gpu_->state_pool().Copy(slots[i], twin).ok());
    next[i] = got[i * params.size() * 4].token;
    pair.push_back({slots[i], {&next[i], 1}, false, false});
    pair.push_back({twin, {&next[i], 1}, false, true});
  }
  ASSERT_TRUE(gpu_->Forward(pair, &out).ok());
  SamplingParams greedy;
  greedy.temperature = 0;
  std::vector<DeviceDraw> on_device;
  for (size_t i = 0; i < lengths.size(); ++i) {
    DeviceDraw d;
    d.row = static_cast<int64_t>(2 * i);
    d.params = &greedy;
    on_device.push_back(d);
  }
  std::vector<SampleResult> drawn(on_device.size());
  ASSERT_TRUE(gpu_->Draw(on_device, absl::MakeSpan(drawn)).ok());
  for (size_t i = 0; i < lengths.size(); ++i) {
    const float* twin_row = out.Row(2 * i + 1);
    EXPECT_EQ(drawn[i].token, std::max_element(twin_row, twin_row + vocab) - twin_row) << "piece " << i;
  }
  // A row that is not one of the last forward's: an error, the backend stays healthy.
  std::vector<DeviceDraw> bad(1);
  bad[0].row = out.rows();
  bad[0].params = &greedy;
  std::vector<SampleResult> none(1);
  EXPECT_EQ(gpu_->Draw(bad, absl::MakeSpan(none)).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(gpu_->Health().ok());
}

TEST_P(CudaBackendTest, BadInputIsAnErrorNotACrash) {
  const int s = *gpu_->state_pool().Acquire();
  std::vector<int32_t> bad = {0, cpu_->config().vocab_size};
  SeqPiece p{s, bad, false};
  ForwardOutput out;
  const absl::Status st = gpu_->Forward({&p, 1}, &out);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("outside the vocabulary"), std::string::npos) << st;
  const std::vector<int32_t> good = RandomIds(3);
  SeqPiece q{s + 1, good, false};  // a slot not acquired
  const absl::Status sq = gpu_->Forward({&q, 1}, &out);
  EXPECT_EQ(sq.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(sq.message().find("not in use"), std::string::npos) << sq;
  // Refused batches touch nothing: the backend still computes, and is healthy.
  SeqPiece r{s, good, false};
  EXPECT_TRUE(gpu_->Forward({&r, 1}, &out).ok());
  EXPECT_TRUE(gpu_->Health().ok());
}

std::string Name(const ::testing::TestParamInfo<Param>& info) {
  std::string m = info.param.model;
  std::replace_if(m.begin(), m.end(), [](char c) { return !std::isalnum(static_cast<unsigned char>(c)); }, '_');
  const PrefillKernel k = info.param.prefill;
  return m + (info.param.bf16 ? "_bf16" : "_f32") + (k != PrefillKernel::kRecurrent ? "_chunked" : "") +
         (info.param.graphs ? "" : "_nographs") + (k == PrefillKernel::kChunk ? "_wy" : "");
}

INSTANTIATE_TEST_SUITE_P(Models, CudaBackendTest,
                         ::testing::Values(Param{"tiny", false}, Param{"tiny", true}, Param{"tiny_gva", false},
                                           Param{"tiny_gva", true}, Param{GDNSERVE_BUNDLED_MODEL, false},
                                           Param{GDNSERVE_BUNDLED_MODEL, true},
                                           // The float32 one-pass chunk kernel in mixed batches.
                                           Param{"tiny", false, PrefillKernel::kChunkSimt},
                                           Param{"tiny_gva", false, PrefillKernel::kChunkSimt},
                                           Param{GDNSERVE_BUNDLED_MODEL, false, PrefillKernel::kChunkSimt},
                                           Param{GDNSERVE_BUNDLED_MODEL, true, PrefillKernel::kChunkSimt},
                                           // Decode without CUDA graphs.
                                           Param{GDNSERVE_BUNDLED_MODEL, false, PrefillKernel::kRecurrent, false},
                                           // The tensor-core chunk kernel (the default).
                                           Param{"tiny_gva", false, PrefillKernel::kChunk},
                                           Param{GDNSERVE_BUNDLED_MODEL, false, PrefillKernel::kChunk},
                                           Param{GDNSERVE_BUNDLED_MODEL, true, PrefillKernel::kChunk}),
                         Name);

}  // namespace
}  // namespace gdnserve
