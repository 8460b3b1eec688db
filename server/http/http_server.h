// gdnserve's HTTP front end (cpp-httplib): the OpenAI-compatible API,
// Prometheus metrics and health probes, on --http-port.
//
//   GET  /healthz               200 "ok" while the process is up (never needs a key)
//   GET  /readyz                200 when a model is loaded and the server is not draining, else 503
//   GET  /metrics               Registry::Serialize(), text format 0.0.4 (key only with metrics_require_auth)
//   GET  /v1/models[/{id}]      the served model
//   POST /v1/completions        OpenAI completions, streamed (SSE) or not
//   POST /v1/chat/completions   OpenAI chat completions, streamed (SSE) or not
//   GET|PUT /v1/sessions/{id}/state, DELETE /v1/sessions/{id}
//                               session state export / import / drop (sessions.h)
//
// Errors are OpenAI error objects: 400 naming the field (bad JSON, wrong
// types, out-of-range values), 401 for a missing or wrong API key, 404 for an
// unknown model (code model_not_found) or session, 413 for a body over max_body_bytes,
// 431 for headers over max_header_bytes, 429 when the engine queue is full,
// 503 while loading or draining.
//
// Threads: cpp-httplib's accept loop on one thread plus a pool of
// max_connections workers, each serving one connection at a time (so it caps
// concurrent connections; more wait in the accept backlog). A non-streamed
// generation holds its worker until the engine finishes it.
//
//   HttpServer http(options, {.registry = &registry});
//   RETURN_IF_ERROR(http.Start(host, port));   // binds now: a port in use fails here
//   ... load the model ...
//   http.SetModel(&model);                      // /readyz turns 200
//   ... SIGTERM: engine->Shutdown(drain_ms) (readyz 503 at once) ...
//   http.Stop();
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "server/http/completions.h"
#include "server/metrics.h"

namespace gdnserve::server::http {

struct HttpOptions {
  // API key: when set, /v1/* (and /metrics with metrics_require_auth) need
  // "Authorization: Bearer <key>"; /healthz and /readyz never do.
  std::string api_key;
  bool metrics_require_auth = false;
  // TLS: both or neither (PEM files).
  std::string tls_cert_file;
  std::string tls_key_file;
  size_t max_body_bytes = 4 << 20;     // larger bodies get 413
  size_t max_header_bytes = 16 << 10;  // request line + headers; larger get 431 (cpp-httplib also caps a line at 8 KiB)
  int max_connections = 64;            // worker threads
  int read_timeout_s = 10;             // receiving a request
  int write_timeout_s = 10;            // a client not reading for this long is dropped
  int keep_alive_timeout_s = 5;        // an idle connection is closed after this; Stop() may wait as long
  int keep_alive_max_requests = 1000;  // requests per connection
  int listen_backlog = 1024;
  GenerationOptions generation;
};

// The API key from --api-key or --api-key-file (at most one of them; the
// file's surrounding whitespace is dropped; an empty key is an error).
absl::StatusOr<std::string> LoadApiKey(const std::string& key, const std::string& key_file);

struct HttpContext {
  metrics::Registry* registry = nullptr;  // for /metrics (null: 404)
  // Readiness beyond "a model is set" (e.g. main's own draining flag). Null:
  // ready when a model is set and its engine accepts requests.
  std::function<bool()> ready;
  const HttpModel* model = nullptr;  // or set later with SetModel
};

class HttpServer {
 public:
  HttpServer(HttpOptions options, HttpContext context);
  ~HttpServer();  // Stop()
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Binds host:port (0: any free port; see port()) and starts serving.
  // Errors: a port in use or an unknown host (Unavailable / InvalidArgument,
  // one line naming host:port), unreadable TLS files (InvalidArgument).
  absl::Status Start(const std::string& host, int port);
  int port() const { return port_; }
  bool tls() const { return !options_.tls_cert_file.empty(); }

  // The model to serve, once loaded; it must outlive Stop().
  void SetModel(const HttpModel* model) { model_.store(model, std::memory_order_release); }

  // Cancels the generations in flight, stops listening, lets workers finish
  // their responses and joins them. Idempotent.
  void Stop();

 private:
  class Impl;
  bool Ready() const;
  void InstallRoutes();

  const HttpOptions options_;
  const HttpContext context_;
  std::atomic<const HttpModel*> model_{nullptr};
  std::unique_ptr<Impl> impl_;
  InFlight in_flight_;
  std::thread listener_;
  int port_ = 0;
};

}  // namespace gdnserve::server::http
