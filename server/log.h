// The server's log: start-up lines and one line per finished request, to
// stderr, as text or as JSON lines (--log-format). Configured once at start-up,
// before any other thread logs; safe to call from any thread after that.
#pragma once

#include <string>
#include <string_view>

namespace gdnserve::server {

enum class LogFormat { kText, kJson };

// Parses "text" or "json"; false for anything else.
bool ParseLogFormat(std::string_view name, LogFormat* format);
void SetLogFormat(LogFormat format);

// One finished request, whichever front end served it.
struct RequestLogEntry {
  std::string id;               // request id (gRPC: the client's or gdn-...; HTTP: cmpl-... / chatcmpl-...)
  std::string path;             // "/gdnserve.v1.Generation/Generate", "/v1/completions", ...
  int status = 0;               // gRPC status code or HTTP status
  bool stream = false;
  int prompt_tokens = 0;
  int completion_tokens = 0;
  double seconds = 0;           // arrival to the last output
  std::string finish_reason;    // sample 0's ("length", "stop", "eos", "cancelled"); error text on failure
};

void LogInfo(std::string_view message);
void LogRequest(const RequestLogEntry& entry);

}  // namespace gdnserve::server
