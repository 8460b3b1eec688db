// Helpers shared by gdnserve-cli and gdnserve-bench: naming gRPC status
// codes, list flags, JSON output, and Ctrl-C that cancels calls instead of
// killing the process.
#ifndef GDNSERVE_CLIENTS_COMMON_CLIENT_UTIL_H_
#define GDNSERVE_CLIENTS_COMMON_CLIENT_UTIL_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "gdnserve/v1/generation.pb.h"
#include "google/protobuf/message.h"
#include "grpcpp/grpcpp.h"

namespace gdnserve::client {

// "INVALID_ARGUMENT", "UNAVAILABLE", ... (the names grpc.StatusCode uses).
absl::string_view StatusCodeName(grpc::StatusCode code);

// FINISH_REASON_LENGTH -> "length"; UNSPECIFIED -> "unfinished".
std::string FinishReasonName(gdnserve::v1::FinishReason reason);

// "CODE: message", or "CODE" when the message is empty.
std::string FormatStatus(const grpc::Status& status);

// absl keeps only the last value of a flag given twice; this collects every
// value of --NAME=V, --NAME V, -NAME=V and -NAME V before "--", in order.
std::vector<std::string> RepeatedFlagValues(int argc, char** argv, absl::string_view name);

// Lets flags be written with dashes, as gdnserve's own (--max-tokens for
// --max_tokens): rewrites the name part of each "--a-b[=v]" / "-a-b[=v]"
// argument before "--", skipping the value that follows a non-boolean flag
// given without "=" (so "--stop -x-" keeps its value).
std::vector<std::string> NormalizeFlagNames(int argc, char** argv);

// Splits at commas that are not escaped, then unescapes: "\," is a comma,
// "\n" a newline, "\t" a tab, "\\" a backslash. Empty items are dropped.
absl::StatusOr<std::vector<std::string>> SplitEscapedList(absl::string_view list);

// "1,2, 3" -> {1, 2, 3}; also accepts spaces as separators.
absl::StatusOr<std::vector<int32_t>> ParseIdList(absl::string_view list);

// One line of JSON (proto field names, as in the .proto file).
std::string ToJsonLine(const google::protobuf::Message& message);

// Installs absl's usage config so that --help lists this program's flags
// (not absl's own) under `usage`.
void SetUsage(const char* usage);

// Ctrl-C (SIGINT) and SIGTERM run the handler set with SetOnInterrupt on a
// watcher thread, where it may cancel calls (ClientContext::TryCancel is
// thread-safe); a second signal exits at once with 130. The handler runs under
// a lock that SetOnInterrupt also takes, so once SetOnInterrupt(nullptr)
// returns no handler touches the caller's objects any more; a handler must not
// call SetOnInterrupt itself. WatchInterrupts must be called before any other
// thread starts (before the first channel is created) so that every thread
// inherits the blocked signal mask.
void WatchInterrupts();
void SetOnInterrupt(std::function<void()> on_signal);
bool Interrupted();

}  // namespace gdnserve::client

#endif  // GDNSERVE_CLIENTS_COMMON_CLIENT_UTIL_H_
