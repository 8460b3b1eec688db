// gdnserve-generate: offline text generation and perplexity with the CPU or CUDA
// engine, for people trying a model and for benchmarks.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "absl/strings/str_format.h"
#include "engine/backend_factory.h"
#include "engine/sampler.h"
#include "engine/tokenizer.h"
#include "engine/weights.h"

ABSL_FLAG(std::string, model, GDNSERVE_DEFAULT_MODEL, "model directory (config.json, model.safetensors, tokenizer.model)");
ABSL_FLAG(std::string, prompt, "", "prompt text");
ABSL_FLAG(int, max_tokens, 64, "tokens to generate");
ABSL_FLAG(double, temperature, 0.0, "sampling temperature; 0 is greedy");
ABSL_FLAG(int, top_k, 0, "keep the k most likely tokens (0: all)");
ABSL_FLAG(double, top_p, 1.0, "nucleus sampling mass");
ABSL_FLAG(double, min_p, 0.0, "drop tokens below min_p times the most likely");
ABSL_FLAG(double, repetition_penalty, 1.0, "penalty on tokens already seen (1: off)");
ABSL_FLAG(int64_t, seed, -1, "sampling seed (-1: random)");
ABSL_FLAG(bool, ignore_eos, false, "keep generating after the end-of-sequence token");
ABSL_FLAG(int, threads, 0, "CPU threads (0: all cores)");
ABSL_FLAG(std::string, device, "cpu", "compute device: cpu, cuda or cuda:N");
ABSL_FLAG(std::string, dtype, "auto", "matrices' type: auto (cpu: f32, cuda: bf16), f32 or bf16 (cuda only)");
ABSL_FLAG(std::string, perplexity, "", "instead of generating, print the perplexity of this text file");
ABSL_FLAG(int, chunk, 512, "prefill piece length in tokens for --perplexity");

namespace {

int Fail(const absl::Status& s) {
  std::fprintf(stderr, "gdnserve-generate: %s\n", std::string(s.message()).c_str());
  return 1;
}

double Seconds(std::chrono::steady_clock::time_point a, std::chrono::steady_clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

int Perplexity(gdnserve::Backend& be, const gdnserve::Tokenizer& tok, const std::string& path) {
  std::ifstream f(path);
  if (!f) return Fail(absl::NotFoundError("cannot read " + path));
  std::stringstream ss;
  ss << f.rdbuf();
  std::vector<int32_t> ids = tok.Encode(ss.str(), /*add_bos=*/true);
  if (ids.size() < 2) return Fail(absl::InvalidArgumentError(path + " has fewer than 2 tokens"));
  const int slot = *be.state_pool().Acquire();
  const size_t chunk = std::max(1, absl::GetFlag(FLAGS_chunk));
  double nll = 0.0;
  gdnserve::ForwardOutput out;
  const auto t0 = std::chrono::steady_clock::now();
  // Logits at position t predict token t+1; the last token predicts nothing.
  for (size_t begin = 0; begin + 1 < ids.size(); begin += chunk) {
    const size_t end = std::min(ids.size() - 1, begin + chunk);
    gdnserve::SeqPiece p{slot, absl::MakeConstSpan(ids).subspan(begin, end - begin), true};
    if (absl::Status s = be.Forward({&p, 1}, &out); !s.ok()) return Fail(s);
    for (size_t t = begin; t < end; ++t) {
      nll -= gdnserve::LogSoftmaxAt({out.Row(t - begin), static_cast<size_t>(out.vocab)}, ids[t + 1]);
    }
    std::fprintf(stderr, "\rperplexity: %zu/%zu tokens", end + 1, ids.size());
  }
  const double secs = Seconds(t0, std::chrono::steady_clock::now());
  const size_t n = ids.size() - 1;
  std::fprintf(stderr, "\n");
  std::printf("tokens %zu  nll/token %.6f  perplexity %.4f  (%.1f tokens/s)\n", n, nll / n, std::exp(nll / n),
              n / secs);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Generates text from a GDN-2 model on the CPU (or a GPU: --device cuda), streaming it to stdout.\n"
      "  gdnserve-generate --model DIR --prompt TEXT [--max_tokens N] [--temperature T ...]\n"
      "  gdnserve-generate --model DIR --perplexity FILE\n"
      "Statistics (prefill and decode tokens/s) go to stderr.");
  absl::FlagsUsageConfig usage;
  usage.contains_help_flags = [](absl::string_view file) { return !absl::StrContains(file, "absl/"); };
  usage.contains_helpshort_flags = usage.contains_help_flags;
  absl::SetFlagsUsageConfig(usage);
  absl::ParseCommandLine(argc, argv);

  const std::string dir = absl::GetFlag(FLAGS_model);
  const auto t_load = std::chrono::steady_clock::now();
  auto weights = gdnserve::LoadModelWeights(dir, [](int done, int total) {
    std::fprintf(stderr, "\rloading: layer %d/%d", done, total);
    if (done == total) std::fprintf(stderr, "\n");
  });
  if (!weights.ok()) return Fail(weights.status());
  const int64_t params = (*weights)->num_parameters();
  auto tokenizer = gdnserve::Tokenizer::Load(dir + "/tokenizer.model");
  if (!tokenizer.ok()) return Fail(tokenizer.status());
  auto backend = gdnserve::CreateBackend(std::move(*weights), {.device = absl::GetFlag(FLAGS_device),
                                                               .dtype = absl::GetFlag(FLAGS_dtype),
                                                               .num_slots = 1,
                                                               .num_threads = absl::GetFlag(FLAGS_threads)});
  if (!backend.ok()) return Fail(backend.status());
  gdnserve::Backend& be = **backend;
  const gdnserve::Tokenizer& tok = **tokenizer;
  std::fprintf(stderr, "model %s: %.1fM parameters, state %.2f MB per sequence, loaded in %.2f s\n", dir.c_str(),
               params / 1e6, be.state_pool().layout().bytes_per_slot() / 1e6,
               Seconds(t_load, std::chrono::steady_clock::now()));

  if (!absl::GetFlag(FLAGS_perplexity).empty()) return Perplexity(be, tok, absl::GetFlag(FLAGS_perplexity));

  gdnserve::SamplingParams sp;
  sp.temperature = static_cast<float>(absl::GetFlag(FLAGS_temperature));
  sp.top_k = absl::GetFlag(FLAGS_top_k);
  sp.top_p = static_cast<float>(absl::GetFlag(FLAGS_top_p));
  sp.min_p = static_cast<float>(absl::GetFlag(FLAGS_min_p));
  sp.repetition_penalty = static_cast<float>(absl::GetFlag(FLAGS_repetition_penalty));
  if (absl::GetFlag(FLAGS_seed) >= 0) {
    sp.has_seed = true;
    sp.seed = static_cast<uint64_t>(absl::GetFlag(FLAGS_seed));
  }
  if (absl::Status s = sp.Validate(be.config().vocab_size); !s.ok()) return Fail(s);
  const int max_tokens = absl::GetFlag(FLAGS_max_tokens);
  if (max_tokens < 1) return Fail(absl::InvalidArgumentError("--max_tokens must be >= 1"));

  const std::string prompt = absl::GetFlag(FLAGS_prompt);
  std::vector<int32_t> ids = tok.Encode(prompt, /*add_bos=*/true);
  gdnserve::SequenceSampler sampler(sp, ids);
  gdnserve::IncrementalDetokenizer detok(tok, /*starts_text=*/false);
  const int slot = *be.state_pool().Acquire();
  gdnserve::ForwardOutput out;

  std::printf("%s", prompt.c_str());
  std::fflush(stdout);
  const auto t0 = std::chrono::steady_clock::now();
  gdnserve::SeqPiece piece{slot, ids, false};
  if (absl::Status s = be.Forward({&piece, 1}, &out); !s.ok()) return Fail(s);
  const auto t1 = std::chrono::steady_clock::now();
  int generated = 0;
  int32_t token = 0;
  for (; generated < max_tokens; ++generated) {
    token = sampler.Sample({out.Last(0), static_cast<size_t>(out.vocab)}).token;
    if (token == be.config().eos_token_id && !absl::GetFlag(FLAGS_ignore_eos)) break;
    std::printf("%s", detok.Push(token).c_str());
    std::fflush(stdout);
    if (generated + 1 == max_tokens) {
      ++generated;
      break;
    }
    piece = {slot, {&token, 1}, false};
    if (absl::Status s = be.Forward({&piece, 1}, &out); !s.ok()) return Fail(s);
  }
  std::printf("%s\n", detok.Flush().c_str());
  const auto t2 = std::chrono::steady_clock::now();
  std::fprintf(stderr, "prompt %zu tokens in %.3f s (%.1f tokens/s); generated %d tokens in %.3f s (%.1f tokens/s)\n",
               ids.size(), Seconds(t0, t1), ids.size() / Seconds(t0, t1), generated, Seconds(t1, t2),
               generated / std::max(1e-9, Seconds(t1, t2)));
  return 0;
}
