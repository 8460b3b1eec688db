#include "server/http/sessions.h"

#include "absl/strings/match.h"
#include "httplib.h"
#include "nlohmann/json.hpp"

namespace gdnserve::server::http {
namespace {

using Json = nlohmann::ordered_json;

constexpr size_t kMaxSessionIdBytes = 256;  // as OpenAIRequest's session_id

// The id from the path: non-empty (the route guarantees it) and not too long.
bool CheckId(const std::string& id, httplib::Response& res) {
  if (id.size() <= kMaxSessionIdBytes) return true;
  SendError(res, MakeApiError(400, "session id: at most 256 bytes", "invalid_value"));
  return false;
}

// Errors about the blob itself get codes a client can branch on: the bytes
// are damaged (invalid_state) or fine but not for this server (incompatible_state).
ApiError BlobError(const absl::Status& status) {
  ApiError e = ErrorFromStatus(status);
  if (absl::StartsWith(status.message(), "state blob:")) {
    e.code = status.code() == absl::StatusCode::kInvalidArgument ? "invalid_state" : "incompatible_state";
  }
  if (status.code() == absl::StatusCode::kResourceExhausted) {
    // Over the session budget: retrying cannot help, unlike a full queue (429).
    e = MakeApiError(413, std::string(status.message()), "state_too_large");
  }
  return e;
}

std::string SessionBody(const std::string& id, const char* key, const Json& value) {
  return Json{{"id", id}, {"object", "session"}, {key, value}}.dump(-1, ' ', false, Json::error_handler_t::replace);
}

}  // namespace

void ServeExportState(const std::string& session_id, httplib::Response& res, const HttpModel& model) {
  if (!CheckId(session_id, res)) return;
  absl::StatusOr<std::string> blob = model.engine->ExportSession(session_id);
  if (!blob.ok()) return SendError(res, ErrorFromStatus(blob.status()));
  res.set_content(*std::move(blob), "application/octet-stream");
}

void ServeImportState(const std::string& session_id, const httplib::Request& req, httplib::Response& res,
                      const HttpModel& model) {
  if (!CheckId(session_id, res)) return;
  absl::StatusOr<int64_t> n = model.engine->ImportSession(session_id, req.body);
  if (!n.ok()) return SendError(res, BlobError(n.status()));
  res.set_content(SessionBody(session_id, "num_tokens", *n), "application/json");
}

void ServeDeleteSession(const std::string& session_id, httplib::Response& res, const HttpModel& model) {
  if (!CheckId(session_id, res)) return;
  if (!model.engine->DropSession(session_id)) {
    return SendError(res, MakeApiError(404,
                                       "session \"" + session_id + "\" not found (unknown, expired or evicted)",
                                       "not_found"));
  }
  res.set_content(SessionBody(session_id, "deleted", true), "application/json");
}

}  // namespace gdnserve::server::http
