#include "clients/common/client_util.h"

#include <pthread.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <iterator>
#include <mutex>
#include <thread>

#include "absl/flags/commandlineflag.h"
#include "absl/flags/reflection.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "google/protobuf/util/json_util.h"

namespace gdnserve::client {

absl::string_view StatusCodeName(grpc::StatusCode code) {
  // Indexed by the code's value, 0..16, as in grpc/impl/codegen/status.h.
  static constexpr absl::string_view kNames[] = {
      "OK",        "CANCELLED",      "UNKNOWN",           "INVALID_ARGUMENT",   "DEADLINE_EXCEEDED",
      "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
      "ABORTED",   "OUT_OF_RANGE",   "UNIMPLEMENTED",     "INTERNAL",           "UNAVAILABLE",
      "DATA_LOSS", "UNAUTHENTICATED"};
  const int i = static_cast<int>(code);
  return i >= 0 && i < static_cast<int>(std::size(kNames)) ? kNames[i] : "UNKNOWN_CODE";
}

std::string FinishReasonName(gdnserve::v1::FinishReason reason) {
  if (reason == gdnserve::v1::FINISH_REASON_UNSPECIFIED) return "unfinished";
  const std::string& name = gdnserve::v1::FinishReason_Name(reason);
  if (name.empty()) return absl::StrCat("finish_reason_", static_cast<int>(reason));
  return absl::AsciiStrToLower(absl::StripPrefix(name, "FINISH_REASON_"));
}

std::string FormatStatus(const grpc::Status& status) {
  if (status.error_message().empty()) return std::string(StatusCodeName(status.error_code()));
  return absl::StrCat(StatusCodeName(status.error_code()), ": ", status.error_message());
}

std::vector<std::string> RepeatedFlagValues(int argc, char** argv, absl::string_view name) {
  std::vector<std::string> values;
  const std::string single = absl::StrCat("-", name), dashed = absl::StrCat("--", name);
  for (int i = 1; i < argc; ++i) {
    absl::string_view arg = argv[i];
    if (arg == "--") break;
    for (const std::string& form : {dashed, single}) {
      if (arg == form) {
        if (i + 1 < argc) values.emplace_back(argv[++i]);
        break;
      }
      if (absl::StartsWith(arg, form + "=")) {
        values.emplace_back(arg.substr(form.size() + 1));
        break;
      }
    }
  }
  return values;
}

std::vector<std::string> NormalizeFlagNames(int argc, char** argv) {
  std::vector<std::string> out(argv, argv + argc);
  for (int i = 1; i < argc; ++i) {
    std::string& arg = out[i];
    if (arg == "--") break;
    const size_t begin = absl::StartsWith(arg, "--") ? 2 : 1;
    if (arg.size() <= begin || arg[0] != '-' || !absl::ascii_isalpha(arg[begin])) continue;
    const size_t eq = arg.find('=');
    const size_t end = eq == std::string::npos ? arg.size() : eq;
    for (size_t j = begin; j < end; ++j) {
      if (arg[j] == '-') arg[j] = '_';
    }
    if (eq == std::string::npos) {
      const absl::CommandLineFlag* flag = absl::FindCommandLineFlag(absl::string_view(arg).substr(begin));
      if (flag != nullptr && !flag->IsOfType<bool>()) ++i;  // the next argument is its value
    }
  }
  return out;
}

absl::StatusOr<std::vector<std::string>> SplitEscapedList(absl::string_view list) {
  std::vector<std::string> items;
  std::string cur;
  for (size_t i = 0; i < list.size(); ++i) {
    const char c = list[i];
    if (c == ',') {
      if (!cur.empty()) items.push_back(std::move(cur));
      cur.clear();
    } else if (c == '\\') {
      if (i + 1 == list.size()) return absl::InvalidArgumentError(absl::StrCat("trailing backslash in '", list, "'"));
      const char e = list[++i];
      switch (e) {
        case ',':
          cur += ',';
          break;
        case 'n':
          cur += '\n';
          break;
        case 't':
          cur += '\t';
          break;
        case '\\':
          cur += '\\';
          break;
        default:
          return absl::InvalidArgumentError(
              absl::StrCat("unknown escape '\\", std::string(1, e), "' in '", list, "' (known: \\, \\n \\t \\\\)"));
      }
    } else {
      cur += c;
    }
  }
  if (!cur.empty()) items.push_back(std::move(cur));
  return items;
}

absl::StatusOr<std::vector<int32_t>> ParseIdList(absl::string_view list) {
  std::vector<int32_t> ids;
  for (absl::string_view piece : absl::StrSplit(list, absl::ByAnyChar(", "), absl::SkipEmpty())) {
    int32_t id = 0;
    if (!absl::SimpleAtoi(piece, &id)) return absl::InvalidArgumentError(absl::StrCat("not a token id: '", piece, "'"));
    ids.push_back(id);
  }
  return ids;
}

std::string ToJsonLine(const google::protobuf::Message& message) {
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  std::string out;
  if (!google::protobuf::util::MessageToJsonString(message, &out, options).ok()) {
    return absl::StrCat("{\"error\": \"cannot print ", message.GetTypeName(), " as JSON\"}");
  }
  return out;
}

void SetUsage(const char* usage) {
  absl::SetProgramUsageMessage(usage);
  absl::FlagsUsageConfig config;
  config.contains_help_flags = [](absl::string_view file) { return !absl::StrContains(file, "absl/"); };
  config.contains_helpshort_flags = config.contains_help_flags;
  absl::SetFlagsUsageConfig(config);
}

namespace {

// The watcher thread owns signal delivery; these are its handler and state.
std::mutex& HandlerMutex() {
  static std::mutex mu;
  return mu;
}
std::function<void()>& Handler() {
  static std::function<void()> handler;
  return handler;
}
std::atomic<bool> interrupted{false};

}  // namespace

void WatchInterrupts() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  std::thread([set] {
    for (;;) {
      int sig = 0;
      if (sigwait(&set, &sig) != 0) continue;
      if (interrupted.exchange(true)) _exit(130);  // second Ctrl-C: give up on a clean cancel
      // Run under the lock, so that SetOnInterrupt(nullptr) returns only once
      // no handler still touches what the caller is about to destroy.
      std::lock_guard<std::mutex> lock(HandlerMutex());
      if (Handler()) Handler()();
    }
  }).detach();
}

void SetOnInterrupt(std::function<void()> on_signal) {
  std::lock_guard<std::mutex> lock(HandlerMutex());
  Handler() = std::move(on_signal);
  // A signal that came before the handler was set still cancels.
  if (interrupted.load() && Handler()) Handler()();
}

bool Interrupted() { return interrupted.load(); }

}  // namespace gdnserve::client
