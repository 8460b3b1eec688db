#include "server/log.h"

#include <chrono>
#include <cstdio>
#include <ctime>
#include <mutex>

#include "absl/strings/str_format.h"
#include "nlohmann/json.hpp"

namespace gdnserve::server {
namespace {

LogFormat g_format = LogFormat::kText;
std::mutex g_write_mu;  // one line at a time

std::string Timestamp() {
  const auto now = std::chrono::system_clock::now();
  const std::time_t secs = std::chrono::system_clock::to_time_t(now);
  const int ms = static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%S", &tm);
  return absl::StrFormat("%s.%03dZ", buf, ms);
}

void Write(const std::string& line) {
  std::lock_guard<std::mutex> lock(g_write_mu);
  std::fputs(line.c_str(), stderr);
  std::fputc('\n', stderr);
  std::fflush(stderr);
}

}  // namespace

bool ParseLogFormat(std::string_view name, LogFormat* format) {
  if (name == "text") *format = LogFormat::kText;
  else if (name == "json") *format = LogFormat::kJson;
  else return false;
  return true;
}

void SetLogFormat(LogFormat format) { g_format = format; }

void LogInfo(std::string_view message) {
  if (g_format == LogFormat::kJson) {
    nlohmann::json j = {{"ts", Timestamp()}, {"level", "info"}, {"msg", std::string(message)}};
    Write(j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
  } else {
    Write(absl::StrFormat("gdnserve: %s", std::string(message)));
  }
}

void LogRequest(const RequestLogEntry& e) {
  if (g_format == LogFormat::kJson) {
    nlohmann::json j = {{"ts", Timestamp()},          {"level", "info"},
                        {"msg", "request"},           {"id", e.id},
                        {"path", e.path},             {"status", e.status},
                        {"stream", e.stream},         {"prompt_tokens", e.prompt_tokens},
                        {"completion_tokens", e.completion_tokens}, {"seconds", e.seconds},
                        {"finish_reason", e.finish_reason}};
    Write(j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
  } else {
    Write(absl::StrFormat("gdnserve: request %s %s %d%s prompt=%d completion=%d %.3fs %s", e.id, e.path, e.status,
                          e.stream ? " stream" : "", e.prompt_tokens, e.completion_tokens, e.seconds,
                          e.finish_reason));
  }
}

}  // namespace gdnserve::server
