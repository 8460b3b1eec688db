// Session state over HTTP (README "Reusing state"), the counterparts of gRPC
// ExportState / ImportState plus a delete:
//
//   GET    /v1/sessions/{id}/state   the session as a state blob (application/octet-stream);
//                                    404 when unknown, expired or evicted
//   PUT    /v1/sessions/{id}/state   stores the request body (a blob from any replica of the
//                                    same model) as session {id}, replacing one of that id:
//                                    {"id": ..., "object": "session", "num_tokens": N}
//   DELETE /v1/sessions/{id}         drops the session: {"id": ..., "object": "session", "deleted": true}; 404 if unknown
//
// The blob is engine/state_blob.h's, byte for byte the one gRPC carries. A
// corrupt blob is a 400 with code invalid_state, another model's (or one whose
// history exceeds this server's session limit) a 400 with code
// incompatible_state, each message saying what is wrong; a blob over the
// session budget is a 413. The body is limited by --max-body-bytes like every
// other request's. {id} is URL-decoded and at most 256 bytes, as the
// session_id field of the generation endpoints.
#pragma once

#include <string>

#include "server/http/completions.h"

namespace gdnserve::server::http {

void ServeExportState(const std::string& session_id, httplib::Response& res, const HttpModel& model);
void ServeImportState(const std::string& session_id, const httplib::Request& req, httplib::Response& res,
                      const HttpModel& model);
void ServeDeleteSession(const std::string& session_id, httplib::Response& res, const HttpModel& model);

}  // namespace gdnserve::server::http
