// A gdnserve with only the HTTP front end, for tests/http until the real
// binary serves --http-port: CPU backend, tokenizer, engine, metrics and
// HttpServer, wired the way server/main.cc is expected to wire them. Flags
// use gdnserve's names (dashes or underscores).
//
// Start-up: bind (a port in use fails at once), "listening" on stderr, load
// the model (after --load-delay-ms, so tests can see /readyz 503), "ready".
// SIGTERM/SIGINT: the engine drains (/readyz 503), then the server stops.
#include <signal.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "engine/cpu_backend.h"
#include "engine/engine.h"
#include "engine/tokenizer.h"
#include "engine/weights.h"
#include "server/http/http_server.h"
#include "server/http/request_metrics.h"
#include "server/metrics.h"
#include "server/serving_metrics.h"

ABSL_FLAG(std::string, model, "", "model directory");
ABSL_FLAG(std::string, host, "127.0.0.1", "address to listen on");
ABSL_FLAG(int, http_port, 8000, "HTTP port (0: any; the log says which)");
ABSL_FLAG(int, max_seqs, 4, "state slots");
ABSL_FLAG(int, max_queue, gdnserve::EngineOptions().max_queue, "waiting requests beyond which Submit fails");
ABSL_FLAG(int, max_prompt_tokens, gdnserve::EngineOptions().max_prompt_tokens, "longest prompt");
ABSL_FLAG(int, max_tokens_cap, gdnserve::EngineOptions().max_tokens_cap, "largest max_tokens");
ABSL_FLAG(int, threads, 1, "CPU threads for the model");
ABSL_FLAG(int64_t, prefix_cache_bytes, gdnserve::EngineOptions().prefix_cache_bytes,
          "host memory for the prefix state cache (0, the default here, disables it; gdnserve's is 1 GiB)");
ABSL_FLAG(int, prefix_cache_interval, gdnserve::EngineOptions().prefix_cache_interval,
          "prefix cache snapshot every this many prompt tokens");
ABSL_FLAG(int64_t, session_bytes, gdnserve::EngineOptions().session_bytes, "host memory for sessions (0: none)");
ABSL_FLAG(int, session_ttl_s, static_cast<int>(gdnserve::EngineOptions().session_ttl_ms / 1000),
          "a session idle this long is dropped");
ABSL_FLAG(std::string, api_key, "", "require Authorization: Bearer KEY on /v1/*");
ABSL_FLAG(std::string, api_key_file, "", "read the API key from this file");
ABSL_FLAG(bool, metrics_require_auth, false, "/metrics needs the API key too");
ABSL_FLAG(std::string, tls_cert, "", "PEM certificate for HTTPS");
ABSL_FLAG(std::string, tls_key, "", "PEM private key for HTTPS");
ABSL_FLAG(int64_t, max_body_bytes, gdnserve::server::http::HttpOptions().max_body_bytes, "largest request body");
ABSL_FLAG(int64_t, max_header_bytes, gdnserve::server::http::HttpOptions().max_header_bytes, "largest request headers");
ABSL_FLAG(int, http_max_connections, gdnserve::server::http::HttpOptions().max_connections,
          "HTTP worker threads (concurrent connections)");
ABSL_FLAG(std::string, chat_template, "", "chat template JSON file (default: MODEL/chat_template.json if present)");
ABSL_FLAG(int, load_delay_ms, 0, "wait this long before loading the model (tests /readyz while loading)");
ABSL_FLAG(int, drain_timeout_ms, 5000, "on SIGTERM, how long requests may run before cancel");

namespace {

namespace http = gdnserve::server::http;

int Fail(const std::string& message) {
  std::fprintf(stderr, "http_test_server: error: %s\n", message.c_str());
  return 1;
}

void Log(const std::string& message) {
  std::fprintf(stderr, "http_test_server: %s\n", message.c_str());
  std::fflush(stderr);
}

std::vector<char*> NormalizeFlagNames(int argc, char** argv, std::vector<std::string>* storage) {
  storage->assign(argv, argv + argc);
  for (std::string& arg : *storage) {
    if (arg == "--") break;
    if (arg.size() < 3 || arg[0] != '-') continue;
    const size_t end = std::min(arg.find('='), arg.size());
    for (size_t i = 2; i < end; ++i) {
      if (arg[i] == '-') arg[i] = '_';
    }
  }
  std::vector<char*> out;
  for (std::string& arg : *storage) out.push_back(arg.data());
  return out;
}

std::string BaseName(std::string dir) {
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  return dir.substr(dir.find_last_of('/') + 1);
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> storage;
  std::vector<char*> args = NormalizeFlagNames(argc, argv, &storage);
  absl::ParseCommandLine(static_cast<int>(args.size()), args.data());
  const std::string dir = absl::GetFlag(FLAGS_model);
  if (dir.empty()) return Fail("--model is required");

  // Blocked before any thread starts, so every thread inherits the mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  absl::StatusOr<std::string> key = http::LoadApiKey(absl::GetFlag(FLAGS_api_key), absl::GetFlag(FLAGS_api_key_file));
  if (!key.ok()) return Fail(std::string(key.status().message()));
  absl::StatusOr<http::ChatTemplate> chat_template =
      absl::GetFlag(FLAGS_chat_template).empty() ? http::ChatTemplate::ForModelDir(dir)
                                                 : http::ChatTemplate::FromFile(absl::GetFlag(FLAGS_chat_template));
  if (!chat_template.ok()) return Fail(std::string(chat_template.status().message()));

  http::HttpOptions options;
  options.api_key = *key;
  options.metrics_require_auth = absl::GetFlag(FLAGS_metrics_require_auth);
  options.tls_cert_file = absl::GetFlag(FLAGS_tls_cert);
  options.tls_key_file = absl::GetFlag(FLAGS_tls_key);
  options.max_body_bytes = absl::GetFlag(FLAGS_max_body_bytes);
  options.max_header_bytes = absl::GetFlag(FLAGS_max_header_bytes);
  options.max_connections = absl::GetFlag(FLAGS_http_max_connections);
  options.generation.request_log = [](const http::RequestLogEntry& e) {
    std::fprintf(stderr, "http_test_server: %s %s %d %s prompt=%d completion=%d %.3fs %s\n", e.id.c_str(),
                 e.path.c_str(), e.status, e.stream ? "stream" : "unary", e.prompt_tokens, e.completion_tokens,
                 e.seconds, e.finish_reason.c_str());
  };

  gdnserve::metrics::Registry registry;
  http::HttpContext context;
  context.registry = &registry;
  http::HttpServer server(options, context);
  if (absl::Status s = server.Start(absl::GetFlag(FLAGS_host), absl::GetFlag(FLAGS_http_port)); !s.ok()) {
    return Fail(std::string(s.message()));
  }
  Log("listening on " + std::string(server.tls() ? "https" : "http") + "://" + absl::GetFlag(FLAGS_host) + ":" +
      std::to_string(server.port()));

  std::this_thread::sleep_for(std::chrono::milliseconds(absl::GetFlag(FLAGS_load_delay_ms)));
  auto weights = gdnserve::LoadModelWeights(dir);
  if (!weights.ok()) return Fail(std::string(weights.status().message()));
  auto tokenizer = gdnserve::Tokenizer::Load(dir + "/tokenizer.model");
  if (!tokenizer.ok()) return Fail(std::string(tokenizer.status().message()));
  const int slots = absl::GetFlag(FLAGS_max_seqs);
  auto backend = gdnserve::CreateCpuBackend(std::move(*weights),
                                            {.num_slots = slots, .num_threads = absl::GetFlag(FLAGS_threads)});
  if (!backend.ok()) return Fail(std::string(backend.status().message()));

  const std::string name = BaseName(dir);
  gdnserve::server::ServingMetrics metrics(registry, name, {.version = "test", .device = "cpu"});
  metrics.state_bytes_per_sequence.Set(static_cast<double>((*backend)->state_pool().layout().bytes_per_slot()));
  gdnserve::server::StepMetrics step_metrics(metrics);
  gdnserve::EngineOptions eopts;
  eopts.max_queue = absl::GetFlag(FLAGS_max_queue);
  eopts.max_prompt_tokens = absl::GetFlag(FLAGS_max_prompt_tokens);
  eopts.max_tokens_cap = absl::GetFlag(FLAGS_max_tokens_cap);
  eopts.prefix_cache_bytes = std::max<int64_t>(0, absl::GetFlag(FLAGS_prefix_cache_bytes));
  eopts.prefix_cache_interval = absl::GetFlag(FLAGS_prefix_cache_interval);
  eopts.session_bytes = std::max<int64_t>(0, absl::GetFlag(FLAGS_session_bytes));
  eopts.session_ttl_ms = int64_t{1000} * absl::GetFlag(FLAGS_session_ttl_s);
  gdnserve::Engine engine(backend->get(), tokenizer->get(), eopts, &step_metrics);

  http::HttpModel model;
  model.engine = &engine;
  model.name = name;
  model.limits = {.max_prompt_tokens = eopts.max_prompt_tokens,
                  .max_tokens_cap = eopts.max_tokens_cap,
                  .max_n = std::min(eopts.max_n, slots)};
  model.chat_template = *chat_template;
  model.metrics = &metrics;
  model.created =
      std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
  server.SetModel(&model);
  Log("ready: model " + name);

  int sig = 0;
  sigwait(&signals, &sig);
  Log(std::string("draining on ") + strsignal(sig));
  engine.Shutdown(absl::GetFlag(FLAGS_drain_timeout_ms));
  server.Stop();
  Log("stopped");
  return 0;
}
