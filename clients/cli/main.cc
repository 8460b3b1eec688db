// gdnserve-cli: talks to a running gdnserve over gRPC. Streams a completion
// to the terminal as it is generated, or tokenizes, detokenizes, or shows the
// model info.
#include <chrono>
#include <cstdio>
#include <iostream>
#include <iterator>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "clients/common/client_util.h"
#include "gdnserve/v1/generation.grpc.pb.h"
#include "google/protobuf/text_format.h"

ABSL_FLAG(std::string, addr, "localhost:50051", "server address, host:port");
ABSL_FLAG(int64_t, timeout_ms, 0, "deadline of the call in milliseconds (0: none)");
ABSL_FLAG(bool, json, false, "print each response message as one line of JSON instead of text");

ABSL_FLAG(std::optional<int>, max_tokens, std::nullopt, "tokens to generate per sample (server default 16)");
ABSL_FLAG(std::optional<double>, temperature, std::nullopt, "sampling temperature; 0 is greedy (server default 1)");
ABSL_FLAG(std::optional<int>, top_k, std::nullopt, "keep the k most likely tokens (0 or -1: all)");
ABSL_FLAG(std::optional<double>, top_p, std::nullopt, "nucleus sampling mass, (0, 1]");
ABSL_FLAG(std::optional<double>, min_p, std::nullopt, "drop tokens below min_p times the most likely, [0, 1]");
ABSL_FLAG(std::optional<double>, repetition_penalty, std::nullopt, "penalty on tokens already seen (1: off)");
ABSL_FLAG(std::optional<double>, presence_penalty, std::nullopt, "OpenAI presence penalty, [-2, 2]");
ABSL_FLAG(std::optional<double>, frequency_penalty, std::nullopt, "OpenAI frequency penalty, [-2, 2]");
ABSL_FLAG(std::optional<uint64_t>, seed, std::nullopt, "sampling seed (unset: random)");
ABSL_FLAG(std::string, stop, "",
          "stop string; repeat the flag or give a comma list (\\, is a literal comma, \\n a newline, \\t a tab)");
ABSL_FLAG(std::string, stop_token_ids, "", "token ids that end generation, comma list");
ABSL_FLAG(int, n, 1, "parallel samples of the prompt");
ABSL_FLAG(int, logprobs, 0, "top-n alternatives per token, 0..20 (printed to stderr, or in --json)");
ABSL_FLAG(bool, ignore_eos, false, "keep generating after the end-of-sequence token");
ABSL_FLAG(std::string, request_id, "", "request id (echoed back, shows in the server's logs)");
ABSL_FLAG(std::string, prompt_ids, "", "prompt as token ids (comma list), used as given, instead of PROMPT");
ABSL_FLAG(bool, complete, false, "use the unary Complete call: the whole result at once");
ABSL_FLAG(bool, echo, false, "print the prompt before the completion");

ABSL_FLAG(std::optional<std::string>, tokenize, std::nullopt, "print the tokens of TEXT and exit");
ABSL_FLAG(bool, add_bos, false, "with --tokenize: prepend the BOS token");
ABSL_FLAG(std::string, detokenize, "", "print the text of these token ids (comma list) and exit");
ABSL_FLAG(bool, info, false, "print the model and server info (GetModelInfo) and exit");

namespace {

namespace pb = gdnserve::v1;
namespace gc = gdnserve::client;
using Clock = std::chrono::steady_clock;

constexpr int kExitRpcError = 1;
constexpr int kExitUsage = 2;
constexpr int kExitInterrupted = 130;

int UsageError(const std::string& message) {
  std::fprintf(stderr, "gdnserve-cli: %s (see --help)\n", message.c_str());
  return kExitUsage;
}

// Prints a failed call's status; Ctrl-C's own cancellation is not an error.
int RpcError(const grpc::Status& status) {
  if (gc::Interrupted() && status.error_code() == grpc::StatusCode::CANCELLED) {
    std::fprintf(stderr, "gdnserve-cli: cancelled\n");
    return kExitInterrupted;
  }
  std::fprintf(stderr, "gdnserve-cli: %s\n", gc::FormatStatus(status).c_str());
  return kExitRpcError;
}

void PrepareContext(grpc::ClientContext& ctx) {
  if (const int64_t ms = absl::GetFlag(FLAGS_timeout_ms); ms > 0) {
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(ms));
  }
}

// Runs a unary call that Ctrl-C cancels.
template <typename Call>
grpc::Status CancellableUnary(Call call) {
  grpc::ClientContext ctx;
  PrepareContext(ctx);
  gc::SetOnInterrupt([&ctx] { ctx.TryCancel(); });
  grpc::Status status = call(&ctx);
  gc::SetOnInterrupt(nullptr);
  return status;
}

void PrintJson(const google::protobuf::Message& m) {
  std::printf("%s\n", gc::ToJsonLine(m).c_str());
  std::fflush(stdout);
}

int Info(pb::Generation::Stub& stub) {
  pb::ModelInfo info;
  grpc::Status status = CancellableUnary(
      [&](grpc::ClientContext* ctx) { return stub.GetModelInfo(ctx, pb::GetModelInfoRequest(), &info); });
  if (!status.ok()) return RpcError(status);
  if (absl::GetFlag(FLAGS_json)) {
    PrintJson(info);
    return 0;
  }
  // Every field but the config, by reflection, so fields the server adds show up.
  const google::protobuf::Descriptor* d = info.GetDescriptor();
  for (int i = 0; i < d->field_count(); ++i) {
    const google::protobuf::FieldDescriptor* f = d->field(i);
    if (f->name() == "config_json") continue;
    std::string value;
    google::protobuf::TextFormat::PrintFieldValueToString(info, f, -1, &value);
    std::printf("%-26s %s\n", f->name().c_str(), value.c_str());
  }
  std::printf("config_json\n%s\n", info.config_json().c_str());
  return 0;
}

int Tokenize(pb::Generation::Stub& stub, const std::string& text) {
  pb::TokenizeRequest req;
  req.set_text(text);
  req.set_add_bos(absl::GetFlag(FLAGS_add_bos));
  pb::TokenizeResponse resp;
  grpc::Status status = CancellableUnary([&](grpc::ClientContext* ctx) { return stub.Tokenize(ctx, req, &resp); });
  if (!status.ok()) return RpcError(status);
  if (absl::GetFlag(FLAGS_json)) {
    PrintJson(resp);
    return 0;
  }
  std::printf("%d tokens: %s\n", resp.token_ids_size(), absl::StrJoin(resp.token_ids(), ",").c_str());
  for (int i = 0; i < resp.token_ids_size(); ++i) {
    const std::string piece = i < resp.pieces_size() ? resp.pieces(i) : "";
    std::printf("%8d  %s\n", resp.token_ids(i), absl::CEscape(piece).c_str());
  }
  return 0;
}

int Detokenize(pb::Generation::Stub& stub, const std::string& list) {
  auto ids = gc::ParseIdList(list);
  if (!ids.ok()) return UsageError(absl::StrCat("--detokenize: ", ids.status().message()));
  pb::DetokenizeRequest req;
  req.mutable_token_ids()->Assign(ids->begin(), ids->end());
  pb::DetokenizeResponse resp;
  grpc::Status status = CancellableUnary([&](grpc::ClientContext* ctx) { return stub.Detokenize(ctx, req, &resp); });
  if (!status.ok()) return RpcError(status);
  if (absl::GetFlag(FLAGS_json)) {
    PrintJson(resp);
  } else {
    std::printf("%s\n", resp.text().c_str());
  }
  return 0;
}

// The request from the flags; an error names the bad flag.
absl::StatusOr<pb::GenerateRequest> BuildRequest(const std::vector<std::string>& stop_flags,
                                                 const std::optional<std::string>& prompt) {
  pb::GenerateRequest req;
  if (!absl::GetFlag(FLAGS_prompt_ids).empty()) {
    if (prompt) return absl::InvalidArgumentError("give either PROMPT or --prompt_ids, not both");
    auto ids = gc::ParseIdList(absl::GetFlag(FLAGS_prompt_ids));
    if (!ids.ok()) return absl::InvalidArgumentError(absl::StrCat("--prompt_ids: ", ids.status().message()));
    req.mutable_token_ids()->mutable_ids()->Assign(ids->begin(), ids->end());
  } else if (prompt) {
    req.set_text(*prompt);
  } else {
    return absl::InvalidArgumentError("no PROMPT");
  }
  pb::SamplingParams& sp = *req.mutable_sampling();
  if (auto v = absl::GetFlag(FLAGS_temperature)) sp.set_temperature(static_cast<float>(*v));
  if (auto v = absl::GetFlag(FLAGS_top_k)) sp.set_top_k(*v);
  if (auto v = absl::GetFlag(FLAGS_top_p)) sp.set_top_p(static_cast<float>(*v));
  if (auto v = absl::GetFlag(FLAGS_min_p)) sp.set_min_p(static_cast<float>(*v));
  if (auto v = absl::GetFlag(FLAGS_repetition_penalty)) sp.set_repetition_penalty(static_cast<float>(*v));
  if (auto v = absl::GetFlag(FLAGS_presence_penalty)) sp.set_presence_penalty(static_cast<float>(*v));
  if (auto v = absl::GetFlag(FLAGS_frequency_penalty)) sp.set_frequency_penalty(static_cast<float>(*v));
  if (auto v = absl::GetFlag(FLAGS_seed)) sp.set_seed(*v);
  sp.set_logprobs(absl::GetFlag(FLAGS_logprobs));
  pb::StopConditions& stop = *req.mutable_stop();
  if (auto v = absl::GetFlag(FLAGS_max_tokens)) stop.set_max_tokens(*v);
  for (const std::string& flag : stop_flags) {
    auto items = gc::SplitEscapedList(flag);
    if (!items.ok()) return absl::InvalidArgumentError(absl::StrCat("--stop: ", items.status().message()));
    for (std::string& s : *items) stop.add_stop(std::move(s));
  }
  auto stop_ids = gc::ParseIdList(absl::GetFlag(FLAGS_stop_token_ids));
  if (!stop_ids.ok())
    return absl::InvalidArgumentError(absl::StrCat("--stop_token_ids: ", stop_ids.status().message()));
  stop.mutable_stop_token_ids()->Assign(stop_ids->begin(), stop_ids->end());
  stop.set_ignore_eos(absl::GetFlag(FLAGS_ignore_eos));
  req.set_n(absl::GetFlag(FLAGS_n));
  req.set_request_id(absl::GetFlag(FLAGS_request_id));
  return req;
}

// What the terminal shows of one sample; with n > 1 samples are buffered and
// each is printed whole once it finishes, since interleaved deltas are unreadable.
struct SampleOutput {
  std::string text;
  int tokens = 0;
  pb::FinishReason finish = pb::FINISH_REASON_UNSPECIFIED;
  std::vector<pb::TokenLogprob> logprobs;
};

void PrintLogprobs(const std::map<int, SampleOutput>& samples) {
  for (const auto& [index, s] : samples) {
    if (s.logprobs.empty()) continue;
    std::fprintf(stderr, "logprobs of sample %d (token_id logprob | top alternatives):\n", index);
    for (const pb::TokenLogprob& lp : s.logprobs) {
      std::string top;
      for (const pb::TopLogprob& t : lp.top()) {
        absl::StrAppendFormat(&top, "  %d '%s' %.4f", t.token_id(), absl::CEscape(t.token()), t.logprob());
      }
      std::fprintf(stderr, "%8d %9.4f |%s\n", lp.token_id(), lp.logprob(), top.c_str());
    }
  }
}

// One stderr line: why each sample ended, the usage and the timings.
void PrintSummary(const std::map<int, SampleOutput>& samples, const pb::Usage& usage, std::optional<double> ttft_s,
                  double total_s) {
  std::vector<std::string> reasons;
  for (const auto& [index, s] : samples) {
    reasons.push_back(samples.size() == 1 ? gc::FinishReasonName(s.finish)
                                          : absl::StrCat(index, "=", gc::FinishReasonName(s.finish)));
  }
  if (reasons.empty()) reasons.push_back("unfinished");
  std::string line =
      absl::StrFormat("[finish: %s | prompt %d tokens, completion %d tokens | %.3f s", absl::StrJoin(reasons, " "),
                      usage.prompt_tokens(), usage.completion_tokens(), total_s);
  if (ttft_s) {
    absl::StrAppendFormat(&line, ", first token %.1f ms", *ttft_s * 1e3);
    if (usage.completion_tokens() > 1 && total_s > *ttft_s) {
      absl::StrAppendFormat(&line, ", %.1f tokens/s after it",
                            (usage.completion_tokens() - static_cast<int>(samples.size())) / (total_s - *ttft_s));
    }
  }
  std::fprintf(stderr, "%s]\n", line.c_str());
}

void EchoPrompt(const pb::GenerateRequest& req) {
  if (absl::GetFlag(FLAGS_echo) && !absl::GetFlag(FLAGS_json) && req.has_text() && req.n() <= 1) {
    std::printf("%s", req.text().c_str());
    std::fflush(stdout);
  }
}

int Generate(pb::Generation::Stub& stub, const pb::GenerateRequest& req) {
  const bool json = absl::GetFlag(FLAGS_json);
  const bool live = req.n() <= 1;  // sample 0 goes straight to the terminal
  grpc::ClientContext ctx;
  PrepareContext(ctx);
  gc::SetOnInterrupt([&ctx] { ctx.TryCancel(); });
  EchoPrompt(req);
  const auto t0 = Clock::now();
  std::optional<double> ttft_s;
  std::map<int, SampleOutput> samples;
  pb::Usage usage;
  bool text_ends_with_newline = true;  // whether the terminal's cursor is at a line start
  std::unique_ptr<grpc::ClientReader<pb::GenerateResponse>> reader = stub.Generate(&ctx, req);
  pb::GenerateResponse resp;
  while (reader->Read(&resp)) {
    if (json) PrintJson(resp);
    for (const pb::SampleDelta& d : resp.samples()) {
      if (!ttft_s && d.token_ids_size() > 0) ttft_s = std::chrono::duration<double>(Clock::now() - t0).count();
      SampleOutput& s = samples[d.index()];
      s.tokens += d.token_ids_size();
      s.logprobs.insert(s.logprobs.end(), d.logprobs().begin(), d.logprobs().end());
      if (!json && live && !d.text().empty()) {
        std::fwrite(d.text().data(), 1, d.text().size(), stdout);
        std::fflush(stdout);
        text_ends_with_newline = d.text().back() == '\n';
      } else {
        s.text += d.text();
      }
      if (d.finish_reason() != pb::FINISH_REASON_UNSPECIFIED) {
        s.finish = d.finish_reason();
        if (!json && !live) {
          std::printf("--- sample %d ---\n%s\n", d.index(), s.text.c_str());
          std::fflush(stdout);
        }
      }
    }
    if (resp.has_usage()) usage = resp.usage();
  }
  const grpc::Status status = reader->Finish();
  gc::SetOnInterrupt(nullptr);
  const double total_s = std::chrono::duration<double>(Clock::now() - t0).count();
  if (!json && live && !text_ends_with_newline) std::printf("\n");
  std::fflush(stdout);
  if (!status.ok()) return RpcError(status);
  if (!json) {
    PrintLogprobs(samples);
    PrintSummary(samples, usage, ttft_s, total_s);
  }
  return 0;
}

int Complete(pb::Generation::Stub& stub, const pb::GenerateRequest& req) {
  const bool json = absl::GetFlag(FLAGS_json);
  EchoPrompt(req);
  const auto t0 = Clock::now();
  pb::CompleteResponse resp;
  grpc::Status status = CancellableUnary([&](grpc::ClientContext* ctx) { return stub.Complete(ctx, req, &resp); });
  const double total_s = std::chrono::duration<double>(Clock::now() - t0).count();
  if (!status.ok()) {
    if (!json && req.n() <= 1 && absl::GetFlag(FLAGS_echo)) std::printf("\n");
    return RpcError(status);
  }
  if (json) {
    PrintJson(resp);
    return 0;
  }
  std::map<int, SampleOutput> samples;
  for (const pb::Sample& s : resp.samples()) {
    SampleOutput& out = samples[s.index()];
    out.text = s.text();
    out.tokens = s.token_ids_size();
    out.finish = s.finish_reason();
    out.logprobs.assign(s.logprobs().begin(), s.logprobs().end());
    if (resp.samples_size() == 1) {
      std::printf("%s\n", s.text().c_str());
    } else {
      std::printf("--- sample %d ---\n%s\n", s.index(), s.text().c_str());
    }
  }
  std::fflush(stdout);
  PrintLogprobs(samples);
  PrintSummary(samples, resp.usage(), std::nullopt, total_s);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  gc::SetUsage(
      "Streams a completion from a running gdnserve to the terminal.\n"
      "  gdnserve-cli [--addr localhost:50051] [sampling flags] PROMPT   (PROMPT '-' reads stdin)\n"
      "  gdnserve-cli --prompt_ids 1,534,99 [sampling flags]\n"
      "  gdnserve-cli --json PROMPT          one JSON line per response message\n"
      "  gdnserve-cli --complete PROMPT      unary Complete call\n"
      "  gdnserve-cli --tokenize TEXT | --detokenize IDS | --info\n"
      "Text goes to stdout as it arrives; the finish reason, usage and timings go to stderr.\n"
      "Exit status: 0 ok, 1 the server returned an error (its code and message are printed),\n"
      "2 bad usage, 130 interrupted (Ctrl-C cancels the call). Flag names may use - for _.");
  std::vector<std::string> normalized = gc::NormalizeFlagNames(argc, argv);
  std::vector<char*> normalized_argv;
  for (std::string& s : normalized) normalized_argv.push_back(s.data());
  // --stop may be given several times; absl keeps only the last, so collect first.
  const std::vector<std::string> stop_flags = gc::RepeatedFlagValues(argc, normalized_argv.data(), "stop");
  gc::WatchInterrupts();  // before gRPC starts its threads
  std::vector<char*> args = absl::ParseCommandLine(argc, normalized_argv.data());

  std::optional<std::string> prompt;
  if (args.size() == 2 && std::string(args[1]) == "-") {
    prompt = std::string(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
  } else if (args.size() >= 2) {
    prompt = absl::StrJoin(args.begin() + 1, args.end(), " ");
  }

  auto channel = grpc::CreateChannel(absl::GetFlag(FLAGS_addr), grpc::InsecureChannelCredentials());
  auto stub = pb::Generation::NewStub(channel);

  const int modes =
      absl::GetFlag(FLAGS_info) + absl::GetFlag(FLAGS_tokenize).has_value() + !absl::GetFlag(FLAGS_detokenize).empty();
  if (modes > 1) return UsageError("give at most one of --info, --tokenize, --detokenize");
  if (modes == 1 && prompt) return UsageError("unexpected PROMPT with --info/--tokenize/--detokenize");
  if (absl::GetFlag(FLAGS_info)) return Info(*stub);
  if (auto text = absl::GetFlag(FLAGS_tokenize)) return Tokenize(*stub, *text);
  if (!absl::GetFlag(FLAGS_detokenize).empty()) return Detokenize(*stub, absl::GetFlag(FLAGS_detokenize));

  absl::StatusOr<pb::GenerateRequest> req = BuildRequest(stop_flags, prompt);
  if (!req.ok()) return UsageError(std::string(req.status().message()));
  return absl::GetFlag(FLAGS_complete) ? Complete(*stub, *req) : Generate(*stub, *req);
}
