#include "server/http/http_server.h"

#include <netdb.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string_view>
#include <utility>

#include "httplib.h"
#include "server/http/request_metrics.h"
#include "server/http/sessions.h"
#include "server/net.h"

namespace gdnserve::server::http {

// cpp-httplib's server with access to its listening socket (protected), to
// raise the accept backlog above the 5 the Debian build compiles in.
template <typename Base>
class ServerWithSocket final : public Base {
 public:
  using Base::Base;
  int listen_fd() const { return this->svr_sock_.load(); }
};

class HttpServer::Impl {
 public:
  template <typename Base, typename... Args>
  static std::unique_ptr<Impl> Make(Args&&... args) {
    auto impl = std::make_unique<Impl>();
    auto* server = new ServerWithSocket<Base>(std::forward<Args>(args)...);
    impl->server.reset(server);
    impl->listen_fd = [server] { return server->listen_fd(); };
    return impl;
  }
  std::unique_ptr<httplib::Server> server;
  std::function<int()> listen_fd;
};

namespace {

using httplib::Request;
using httplib::Response;
using HandlerResponse = httplib::Server::HandlerResponse;

bool ConstantTimeEquals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

// "Authorization: Bearer <key>" (scheme case-insensitive, as RFC 7235 says).
bool HasKey(const Request& req, const std::string& key) {
  const std::string h = req.get_header_value("Authorization");
  constexpr std::string_view kScheme = "bearer ";
  if (h.size() <= kScheme.size()) return false;
  for (size_t i = 0; i < kScheme.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(h[i])) != kScheme[i]) return false;
  }
  std::string_view token(h);
  token.remove_prefix(kScheme.size());
  while (!token.empty() && token.front() == ' ') token.remove_prefix(1);
  while (!token.empty() && token.back() == ' ') token.remove_suffix(1);
  return ConstantTimeEquals(token, key);
}

size_t HeaderBytes(const Request& req) {
  size_t n = req.method.size() + req.target.size() + req.version.size() + 4;
  for (const auto& [k, v] : req.headers) n += k.size() + v.size() + 4;
  return n;
}

void SendText(Response& res, int status, const std::string& text) {
  res.status = status;
  res.set_content(text, "text/plain; charset=utf-8");
}

}  // namespace

absl::StatusOr<std::string> LoadApiKey(const std::string& key, const std::string& key_file) {
  if (!key.empty() && !key_file.empty()) {
    return absl::InvalidArgumentError("--api-key and --api-key-file: give one of them");
  }
  if (key_file.empty()) return key;
  std::ifstream in(key_file);
  if (!in) return absl::InvalidArgumentError("--api-key-file " + key_file + ": " + std::strerror(errno));
  std::stringstream ss;
  ss << in.rdbuf();
  std::string k = ss.str();
  const size_t b = k.find_first_not_of(" \t\r\n");
  const size_t e = k.find_last_not_of(" \t\r\n");
  k = b == std::string::npos ? "" : k.substr(b, e - b + 1);
  if (k.empty()) return absl::InvalidArgumentError("--api-key-file " + key_file + ": the file is empty");
  return k;
}

HttpServer::HttpServer(HttpOptions options, HttpContext context)
    : options_(std::move(options)), context_(std::move(context)) {
  model_.store(context_.model, std::memory_order_release);
}

HttpServer::~HttpServer() { Stop(); }

bool HttpServer::Ready() const {
  const HttpModel* m = model_.load(std::memory_order_acquire);
  if (m == nullptr || !m->engine->accepting()) return false;
  return !context_.ready || context_.ready();
}

absl::Status HttpServer::Start(const std::string& host, int port) {
  if (impl_ != nullptr) return absl::FailedPreconditionError("the HTTP server is already started");
  if (options_.tls_cert_file.empty() != options_.tls_key_file.empty()) {
    return absl::InvalidArgumentError("--tls-cert and --tls-key: give both or neither");
  }
  std::unique_ptr<Impl> impl =
      tls() ? Impl::Make<httplib::SSLServer>(options_.tls_cert_file.c_str(), options_.tls_key_file.c_str())
            : Impl::Make<httplib::Server>();
  if (!impl->server->is_valid()) {
    return absl::InvalidArgumentError("cannot load the TLS certificate " + options_.tls_cert_file + " and key " +
                                      options_.tls_key_file + " (PEM files that match)");
  }
  // A write to a client that has gone must be an error, not a signal that
  // kills the process (cpp-httplib sends without MSG_NOSIGNAL).
  signal(SIGPIPE, SIG_IGN);
  httplib::Server& svr = *impl->server;
  // cpp-httplib's default socket options add SO_REUSEPORT, which lets a
  // second server share the port silently; a port in use must be an error.
  svr.set_socket_options([](int fd) {
    const int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  });
  const int threads = std::max(1, options_.max_connections);
  svr.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  svr.set_payload_max_length(options_.max_body_bytes);
  svr.set_read_timeout(options_.read_timeout_s, 0);
  svr.set_write_timeout(options_.write_timeout_s, 0);
  svr.set_keep_alive_timeout(options_.keep_alive_timeout_s);
  svr.set_keep_alive_max_count(std::max(1, options_.keep_alive_max_requests));
  svr.set_tcp_nodelay(true);  // SSE events go out as they are written
  impl_ = std::move(impl);
  InstallRoutes();

  const bool bound = port == 0 ? (port = svr.bind_to_any_port(host)) > 0 : svr.bind_to_port(host, port);
  if (!bound) {
    impl_.reset();
    // cpp-httplib only says false: bind once more to say why.
    absl::Status why = server::ProbeListen(host, port, "HTTP");
    return why.ok() ? absl::UnavailableError("cannot listen on " + server::HostPort(host, port) + " (HTTP)") : why;
  }
  port_ = port;
  const int fd = impl_->listen_fd();
  if (fd >= 0) listen(fd, options_.listen_backlog);  // again: raises the backlog

  listener_ = std::thread([&svr] { svr.listen_after_bind(); });
  // stop() only takes effect once the accept loop runs; wait for it so that
  // an early Stop() cannot miss it.
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (!svr.is_running() && std::chrono::steady_clock::now() < give_up) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return absl::OkStatus();
}

void HttpServer::Stop() {
  if (impl_ == nullptr) return;
  in_flight_.CancelAll();
  // Let cancelled streams write their last event and [DONE] before the
  // sockets close (bounded: a stuck client cannot hold the shutdown).
  in_flight_.WaitEmpty(std::chrono::seconds(3));
  impl_->server->stop();
  if (listener_.joinable()) listener_.join();  // joins the workers too (the task queue's shutdown)
  impl_.reset();
}

void HttpServer::InstallRoutes() {
  httplib::Server& svr = *impl_->server;

  // Every route checks the header size, then (if it needs one) the key. In
  // the handler, after cpp-httplib has read the body (at most
  // max_body_bytes): a pre-routing handler answers before the body is read,
  // and cpp-httplib would then parse the unread body as the connection's
  // next request.
  auto guarded = [this](bool needs_key, httplib::Server::Handler handler) -> httplib::Server::Handler {
    return [this, needs_key, handler = std::move(handler)](const Request& req, Response& res) {
      if (HeaderBytes(req) > options_.max_header_bytes) {
        return SendError(res, MakeApiError(431,
                                           "request headers exceed " + std::to_string(options_.max_header_bytes) +
                                               " bytes (--max-header-bytes)",
                                           "headers_too_large"));
      }
      if (needs_key && !options_.api_key.empty() && !HasKey(req, options_.api_key)) {
        const bool missing = !req.has_header("Authorization");
        SendError(res, MakeApiError(
                           401, missing ? "missing API key: send \"Authorization: Bearer <key>\"" : "invalid API key",
                           missing ? "missing_api_key" : "invalid_api_key"));
        res.set_header("WWW-Authenticate", "Bearer");
        return;
      }
      handler(req, res);
    };
  };

  // Statuses cpp-httplib sets itself (no route, body too large, bad request)
  // get an OpenAI error body too; our own errors already have one.
  svr.set_error_handler(httplib::Server::HandlerWithResponse([this](const Request& req, Response& res) {
    if (!res.body.empty() || res.is_chunked_content_provider_) return HandlerResponse::Unhandled;
    ApiError e = MakeApiError(res.status, "");
    if (res.status == 404) {
      e.message = "no route for " + req.method + " " + req.path;
      e.code = "not_found";
    } else if (res.status == 413) {
      e.message = "the request body exceeds " + std::to_string(options_.max_body_bytes) + " bytes (--max-body-bytes)";
      e.code = "request_too_large";
      const HttpModel* m = model_.load(std::memory_order_acquire);
      if (m != nullptr && req.path.rfind("/v1/sessions/", 0) == 0) {
        // A state blob is one state plus 4 bytes per history token: say how
        // large this model's are, so the operator knows what to allow.
        e.message += "; a state blob of this model is " +
                     std::to_string(m->engine->state_bytes_per_sequence()) +
                     " bytes plus 4 per history token";
      }
    } else {
      e.message = "HTTP " + std::to_string(res.status);
    }
    SendError(res, e);
    return HandlerResponse::Handled;
  }));
  svr.set_exception_handler([](const Request&, Response& res, std::exception_ptr ep) {
    std::string what = "internal error";
    try {
      if (ep) std::rethrow_exception(ep);
    } catch (const std::exception& ex) {
      what = ex.what();
    } catch (...) {
    }
    SendError(res, MakeApiError(500, what, "internal_error"));
  });

  svr.Get("/healthz", guarded(false, [](const Request&, Response& res) { SendText(res, 200, "ok\n"); }));
  svr.Get("/readyz", guarded(false, [this](const Request&, Response& res) {
            if (Ready()) return SendText(res, 200, "ready\n");
            SendText(res, 503, model_.load() == nullptr ? "loading\n" : "not ready\n");
          }));
  svr.Get("/metrics", guarded(options_.metrics_require_auth, [this](const Request&, Response& res) {
            if (context_.registry == nullptr) return SendText(res, 404, "no metrics\n");
            if (const HttpModel* m = model_.load(std::memory_order_acquire); m != nullptr && m->metrics != nullptr) {
              RefreshEngineGauges(*m->metrics, m->engine->Stats());
            }
            res.set_content(context_.registry->Serialize(), std::string(metrics::kContentType));
          }));

  auto unavailable = [](Response& res, const HttpModel* m) {
    if (m != nullptr) RecordRejected(m->metrics, absl::StatusCode::kUnavailable);
    SendError(res, MakeApiError(503, m == nullptr ? "the model is still loading" : "the server is not ready (draining)",
                                "unavailable"));
  };
  auto max_model_len = [](const HttpModel& m) { return m.limits.max_prompt_tokens + m.limits.max_tokens_cap; };
  svr.Get("/v1/models", guarded(true, [this, unavailable, max_model_len](const Request&, Response& res) {
            const HttpModel* m = model_.load(std::memory_order_acquire);
            if (m == nullptr) return unavailable(res, m);
            res.set_content(ModelListBody(m->name, m->created, max_model_len(*m)), "application/json");
          }));
  svr.Get(R"(/v1/models/(.+))", guarded(true, [this, unavailable, max_model_len](const Request& req, Response& res) {
            const HttpModel* m = model_.load(std::memory_order_acquire);
            if (m == nullptr) return unavailable(res, m);
            if (req.matches[1] != m->name) {
              return SendError(res, MakeApiError(404, "the model `" + std::string(req.matches[1]) + "` does not exist",
                                                 "model_not_found", "model"));
            }
            res.set_content(ModelBody(m->name, m->created, max_model_len(*m)), "application/json");
          }));
  // Session state: available once the model is loaded, also while draining
  // (moving sessions off a replica that is shutting down), as over gRPC.
  svr.Get(R"(/v1/sessions/(.+)/state)", guarded(true, [this, unavailable](const Request& req, Response& res) {
            const HttpModel* m = model_.load(std::memory_order_acquire);
            if (m == nullptr) return unavailable(res, m);
            ServeExportState(req.matches[1], res, *m);
          }));
  svr.Put(R"(/v1/sessions/(.+)/state)", guarded(true, [this, unavailable](const Request& req, Response& res) {
            const HttpModel* m = model_.load(std::memory_order_acquire);
            if (m == nullptr) return unavailable(res, m);
            ServeImportState(req.matches[1], req, res, *m);
          }));
  svr.Delete(R"(/v1/sessions/(.+))", guarded(true, [this, unavailable](const Request& req, Response& res) {
               const HttpModel* m = model_.load(std::memory_order_acquire);
               if (m == nullptr) return unavailable(res, m);
               ServeDeleteSession(req.matches[1], res, *m);
             }));
  for (const auto& [path, endpoint] : {std::pair{"/v1/completions", Endpoint::kCompletions},
                                       std::pair{"/v1/chat/completions", Endpoint::kChatCompletions}}) {
    svr.Post(path, guarded(true, [this, unavailable, endpoint = endpoint](const Request& req, Response& res) {
               const HttpModel* m = model_.load(std::memory_order_acquire);
               if (m == nullptr || !Ready()) return unavailable(res, m);
               ServeGeneration(endpoint, req, res, *m, in_flight_, options_.generation);
             }));
  }
}

}  // namespace gdnserve::server::http
