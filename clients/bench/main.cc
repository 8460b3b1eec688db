// gdnserve-bench: load generator for a running gdnserve. Keeps N Generate
// streams in flight with random token-id prompts and reports time to first
// token, inter-token latency, end-to-end latency and throughput.
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "clients/bench/load.h"
#include "clients/bench/stats.h"
#include "clients/common/client_util.h"
#include "gdnserve/v1/generation.grpc.pb.h"

ABSL_FLAG(std::string, addr, "localhost:50051", "server address, host:port");
ABSL_FLAG(int, concurrency, 8, "streams kept in flight");
ABSL_FLAG(int64_t, requests, 0, "requests to run in all (0: 10 x concurrency, unless --duration_s)");
ABSL_FLAG(double, duration_s, 0, "instead of --requests: start requests for this many seconds, then let them finish");
ABSL_FLAG(int, prompt_tokens, 128, "prompt length: random token ids in [3, vocab_size)");
ABSL_FLAG(int, output_tokens, 128, "max_tokens of every request");
ABSL_FLAG(bool, ignore_eos, true, "generate exactly --output_tokens (--noignore_eos: stop at EOS)");
ABSL_FLAG(std::optional<double>, temperature, std::nullopt, "sampling temperature (unset: server default)");
ABSL_FLAG(uint64_t, seed, 0, "seed of the prompts; request i samples with seed + i");
ABSL_FLAG(int64_t, timeout_ms, 0, "deadline of each request in milliseconds (0: none)");
ABSL_FLAG(int, channels, 0,
          "HTTP/2 connections the streams are spread over (0: one per 64 streams, as servers often cap "
          "concurrent streams per connection)");
ABSL_FLAG(std::string, json_out, "", "also write the results as JSON to this file ('-': stdout)");
ABSL_FLAG(bool, progress, true, "a status line on stderr every second, when stderr is a terminal");

namespace {

namespace pb = gdnserve::v1;
namespace gc = gdnserve::client;
namespace gb = gdnserve::bench;

int UsageError(const std::string& message) {
  std::fprintf(stderr, "gdnserve-bench: %s (see --help)\n", message.c_str());
  return 2;
}

std::vector<std::unique_ptr<pb::Generation::Stub>> MakeStubs(const std::string& addr, int channels) {
  std::vector<std::unique_ptr<pb::Generation::Stub>> stubs;
  for (int i = 0; i < channels; ++i) {
    grpc::ChannelArguments args;
    // Each channel its own subchannel pool, hence its own TCP connection.
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    stubs.push_back(pb::Generation::NewStub(grpc::CreateCustomChannel(addr, grpc::InsecureChannelCredentials(), args)));
  }
  return stubs;
}

}  // namespace

int main(int argc, char** argv) {
  gc::SetUsage(
      "Load generator for a running gdnserve: keeps N Generate streams in flight.\n"
      "  gdnserve-bench [--addr localhost:50051] --concurrency N (--requests M | --duration_s S)\n"
      "                 --prompt_tokens P --output_tokens O [--json_out FILE]\n"
      "Prompts are P random token ids from [3, vocab_size) (vocab_size from GetModelInfo).\n"
      "Reports TTFT (start to first token), ITL (gap between token-bearing messages), TPOT\n"
      "(per request: (E2E - TTFT) / (tokens - 1)), E2E latency, output tokens/s and requests/s;\n"
      "latencies of successful requests only, errors counted by status code. Ctrl-C cancels the\n"
      "streams in flight and reports what finished. Flag names may use - for _.");
  std::vector<std::string> normalized = gc::NormalizeFlagNames(argc, argv);
  std::vector<char*> normalized_argv;
  for (std::string& s : normalized) normalized_argv.push_back(s.data());
  gc::WatchInterrupts();  // before gRPC starts its threads
  std::vector<char*> positional = absl::ParseCommandLine(argc, normalized_argv.data());
  if (positional.size() > 1) return UsageError(std::string("unexpected argument ") + positional[1]);

  const std::string addr = absl::GetFlag(FLAGS_addr);
  gb::LoadOptions opt;
  opt.concurrency = absl::GetFlag(FLAGS_concurrency);
  opt.requests = absl::GetFlag(FLAGS_requests);
  opt.duration_s = absl::GetFlag(FLAGS_duration_s);
  opt.prompt_tokens = absl::GetFlag(FLAGS_prompt_tokens);
  opt.output_tokens = absl::GetFlag(FLAGS_output_tokens);
  opt.ignore_eos = absl::GetFlag(FLAGS_ignore_eos);
  opt.seed = absl::GetFlag(FLAGS_seed);
  opt.timeout_ms = absl::GetFlag(FLAGS_timeout_ms);
  if (auto t = absl::GetFlag(FLAGS_temperature)) opt.temperature = static_cast<float>(*t);
  if (opt.concurrency < 1) return UsageError("--concurrency must be >= 1");
  if (opt.prompt_tokens < 1) return UsageError("--prompt_tokens must be >= 1");
  if (opt.output_tokens < 1) return UsageError("--output_tokens must be >= 1");
  if (opt.requests < 0 || opt.duration_s < 0) return UsageError("--requests and --duration_s must be >= 0");
  if (opt.requests > 0 && opt.duration_s > 0) return UsageError("give --requests or --duration_s, not both");
  if (opt.requests == 0 && opt.duration_s == 0) opt.requests = 10LL * opt.concurrency;
  int channels = absl::GetFlag(FLAGS_channels);
  if (channels < 0) return UsageError("--channels must be >= 0");
  if (channels == 0) channels = (opt.concurrency + 63) / 64;

  std::vector<std::unique_ptr<pb::Generation::Stub>> stubs = MakeStubs(addr, channels);

  // The vocabulary bounds the prompt ids; the limits catch a bad run early.
  pb::ModelInfo info;
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    ctx.set_wait_for_ready(true);  // the server may still be starting
    gc::SetOnInterrupt([&ctx] { ctx.TryCancel(); });
    grpc::Status status = stubs[0]->GetModelInfo(&ctx, pb::GetModelInfoRequest(), &info);
    gc::SetOnInterrupt(nullptr);
    if (!status.ok()) {
      std::fprintf(stderr, "gdnserve-bench: GetModelInfo: %s\n", gc::FormatStatus(status).c_str());
      return 1;
    }
  }
  opt.vocab_size = info.vocab_size();
  if (opt.vocab_size <= gb::kFirstPromptId) {
    std::fprintf(stderr, "gdnserve-bench: vocab_size %d leaves no prompt ids\n", opt.vocab_size);
    return 1;
  }
  if (info.max_prompt_tokens() > 0 && opt.prompt_tokens > info.max_prompt_tokens()) {
    std::fprintf(stderr, "gdnserve-bench: warning: --prompt_tokens %d > the server's max_prompt_tokens %d\n",
                 opt.prompt_tokens, info.max_prompt_tokens());
  }
  if (info.max_tokens_cap() > 0 && opt.output_tokens > info.max_tokens_cap()) {
    std::fprintf(stderr, "gdnserve-bench: warning: --output_tokens %d > the server's max_tokens_cap %d\n",
                 opt.output_tokens, info.max_tokens_cap());
  }
  std::fprintf(stderr, "gdnserve-bench: %s (%s, vocab %d, %d slots) over %d connection%s\n", info.model_name().c_str(),
               info.device().c_str(), info.vocab_size(), info.max_seqs(), channels, channels == 1 ? "" : "s");

  gb::LoadDriver driver(std::move(stubs), opt);
  gc::SetOnInterrupt([&driver] { driver.Stop(); });
  const bool show_progress = absl::GetFlag(FLAGS_progress) && isatty(STDERR_FILENO);
  const int64_t total = opt.requests;
  gb::LoadResult result = driver.Run([&](const gb::LoadDriver::Progress& p) {
    if (!show_progress) return;
    std::fprintf(stderr, "\r%6.1f s: %lld%s%lld done, %lld failed, %lld in flight, %.1f tokens/s   ", p.elapsed_s,
                 static_cast<long long>(p.finished), total > 0 ? "/" : "",
                 static_cast<long long>(total > 0 ? total : 0), static_cast<long long>(p.failed),
                 static_cast<long long>(p.in_flight), p.elapsed_s > 0 ? p.output_tokens / p.elapsed_s : 0.0);
  });
  gc::SetOnInterrupt(nullptr);
  if (show_progress) std::fprintf(stderr, "\r%80s\r", "");

  const gb::RunDescription run{.addr = addr,
                               .concurrency = opt.concurrency,
                               .prompt_tokens = opt.prompt_tokens,
                               .output_tokens = opt.output_tokens,
                               .ignore_eos = opt.ignore_eos};
  std::printf("%s", gb::FormatTable(run, result).c_str());
  std::fflush(stdout);
  if (const std::string path = absl::GetFlag(FLAGS_json_out); !path.empty()) {
    const std::string json = gb::FormatJson(run, result);
    if (path == "-") {
      std::printf("%s", json.c_str());
    } else {
      std::ofstream f(path);
      f << json;
      if (!f) {
        std::fprintf(stderr, "gdnserve-bench: cannot write %s\n", path.c_str());
        return 1;
      }
    }
  }
  if (result.interrupted) return 130;
  return result.ok == 0 ? 1 : 0;  // some errors are a result (overload runs), none succeeding is not
}
