// gdnserve: serves a GDN-2 model over gRPC (gdnserve.v1.Generation, the
// standard grpc.health.v1 health service and server reflection).
//
// Start-up order: bind the port first (a port in use fails in milliseconds,
// not after loading the model), answer health NOT_SERVING while loading, then
// SERVING. SIGTERM/SIGINT: health NOT_SERVING, the engine drains (in-flight
// requests finish or end cancelled within --drain-timeout-ms), the gRPC
// server shuts down, exit 0.
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <limits>
#include <fstream>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "engine/config.h"
#include "engine/backend_factory.h"
#include "engine/cuda_backend.h"
#include "engine/engine.h"
#include "engine/tokenizer.h"
#include "engine/json_util.h"
#include "engine/weights.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "server/http/http_server.h"
#include "server/http/request_metrics.h"
#include "server/metrics.h"
#include "server/log.h"
#include "server/net.h"
#include "server/reflection.h"
#include "server/serving_metrics.h"
#include "server/service.h"

ABSL_FLAG(std::string, model, GDNSERVE_DEFAULT_MODEL,
          "model directory (config.json, model.safetensors, tokenizer.model)");
ABSL_FLAG(std::string, device, "cpu", "compute device: cpu, cuda or cuda:N (an NVIDIA GPU; needs a CUDA build)");
ABSL_FLAG(std::string, dtype, "auto",
          "weights' type for the matrices: auto (cpu: f32, cuda: bf16), f32 or bf16 (cuda only)");
ABSL_FLAG(bool, cuda_graphs, true, "cuda: replay decode steps as CUDA graphs (one per batch size)");
ABSL_FLAG(bool, batch_invariant, false,
          "decode rows through fixed GEMM algorithms too (prompt rows always are), so every sequence's "
          "tokens are independent of what else is in the batch; slower decode (cpu: up to 64 rows of work a "
          "step; cuda: at some batch sizes)");
ABSL_FLAG(std::string, prefill_kernel, "chunk",
          "cuda: GDN-2 kernel for prompts: chunk (tensor-core chunkwise), chunk-simt (float32 chunkwise) or "
          "recurrent (token by token)");
ABSL_FLAG(bool, device_sampling, true,
          "cuda: draw tokens on the GPU (logits reach the host only for top logprobs or prompt logits); "
          "false: every row to the host and the host sampler");
ABSL_FLAG(std::string, host, "0.0.0.0", "address to listen on");
ABSL_FLAG(int, grpc_port, 50051, "gRPC port (0: pick a free one; the log says which)");
ABSL_FLAG(int, http_port, 8000, "HTTP port: OpenAI API, /metrics, /healthz, /readyz (0: no HTTP)");
ABSL_FLAG(std::string, api_key, "", "require \"Authorization: Bearer KEY\" on /v1/* (healthz/readyz stay open)");
ABSL_FLAG(std::string, api_key_file, "", "read the API key from this file (instead of --api-key)");
ABSL_FLAG(bool, metrics_require_auth, false, "/metrics needs the API key too");
ABSL_FLAG(std::string, tls_cert, "", "PEM certificate: serve HTTPS (with --tls-key)");
ABSL_FLAG(std::string, tls_key, "", "PEM private key for --tls-cert");
ABSL_FLAG(int64_t, max_body_bytes, gdnserve::server::http::HttpOptions().max_body_bytes,
          "largest HTTP request body (larger: 413)");
ABSL_FLAG(int64_t, max_header_bytes, gdnserve::server::http::HttpOptions().max_header_bytes,
          "largest HTTP request line + headers (larger: 431)");
ABSL_FLAG(int, http_max_connections, gdnserve::server::http::HttpOptions().max_connections,
          "HTTP connections served at once (worker threads)");
ABSL_FLAG(std::string, chat_template, "", "chat template JSON (default: MODEL/chat_template.json, else built in)");
ABSL_FLAG(int, grpc_max_streams_per_connection, 256,
          "concurrent gRPC streams one client connection may have open (more wait in the client); 0: no limit");
ABSL_FLAG(std::string, log_format, "text", "log lines as text or json (one JSON object per line)");
ABSL_FLAG(int, max_seqs, 16, "state slots: sequences decoded at once (each sample of n > 1 takes one)");
ABSL_FLAG(int, max_prompt_tokens, gdnserve::EngineOptions().max_prompt_tokens, "longest prompt in tokens");
ABSL_FLAG(int, max_tokens_cap, gdnserve::EngineOptions().max_tokens_cap, "largest max_tokens a request may ask");
ABSL_FLAG(int, step_token_budget, gdnserve::EngineOptions().step_token_budget,
          "tokens per engine step (decode tokens + prefill chunks)");
ABSL_FLAG(int, max_queue, gdnserve::EngineOptions().max_queue,
          "requests waiting for a slot beyond which new ones get RESOURCE_EXHAUSTED");
ABSL_FLAG(int64_t, prefix_cache_bytes, int64_t{1} << 30,
          "host memory for the exact prefix state cache (0 disables it)");
ABSL_FLAG(int, prefix_cache_interval, gdnserve::EngineOptions().prefix_cache_interval,
          "prefix cache snapshot every this many prompt tokens (rounded down to a multiple of 64)");
ABSL_FLAG(int64_t, session_bytes, gdnserve::EngineOptions().session_bytes,
          "host memory for session snapshots, LRU (0 disables sessions)");
ABSL_FLAG(int, session_ttl_s, static_cast<int>(gdnserve::EngineOptions().session_ttl_ms / 1000),
          "a session idle this long is dropped");
ABSL_FLAG(int64_t, max_state_message_bytes, 0,
          "largest gRPC message; 0: gRPC's 4 MiB, raised to fit ImportState/ExportState of one state "
          "plus 4 MiB of history tokens");
ABSL_FLAG(int, threads, 0, "CPU threads for the model (0: all cores)");
ABSL_FLAG(int, drain_timeout_ms, 10000, "on SIGTERM/SIGINT, how long in-flight requests may run before cancel");

namespace {

namespace srv = gdnserve::server;
namespace http = gdnserve::server::http;

const char* const kServiceName = gdnserve::v1::Generation::service_full_name();

int Fail(const std::string& message) {
  std::fprintf(stderr, "gdnserve: error: %s\n", message.c_str());
  return 1;
}

void Log(const std::string& message) { srv::LogInfo(message); }

double SecondsSince(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

// The issue and docs spell flags with dashes (--grpc-port); absl names them
// with underscores. Both spellings are accepted: dashes in a flag's name
// (before any '=') become underscores. Values are left alone.
std::vector<char*> NormalizeFlagNames(int argc, char** argv, std::vector<std::string>* storage) {
  storage->assign(argv, argv + argc);
  for (std::string& arg : *storage) {
    if (arg == "--") break;
    if (arg.size() < 3 || arg[0] != '-') continue;
    const size_t start = arg[1] == '-' ? 2 : 1;
    const size_t end = std::min(arg.find('='), arg.size());
    for (size_t i = start; i < end; ++i) {
      if (arg[i] == '-') arg[i] = '_';
    }
  }
  std::vector<char*> out;
  for (std::string& arg : *storage) out.push_back(arg.data());
  return out;
}

using gdnserve::server::HostPort;

gdnserve::BackendSpec SpecFromFlags() {
  return {.device = absl::GetFlag(FLAGS_device),
          .dtype = absl::GetFlag(FLAGS_dtype),
          .num_slots = absl::GetFlag(FLAGS_max_seqs),
          .num_threads = absl::GetFlag(FLAGS_threads),
          .cuda_graphs = absl::GetFlag(FLAGS_cuda_graphs),
          .batch_invariant = absl::GetFlag(FLAGS_batch_invariant),
          .prefill_kernel = absl::GetFlag(FLAGS_prefill_kernel)};
}

absl::Status CheckFlags() {
  auto at_least = [](const char* name, int value, int min) -> absl::Status {
    if (value >= min) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrFormat("--%s must be >= %d, got %d", name, min, value));
  };
  if (absl::Status s = gdnserve::CheckBackendSpec(SpecFromFlags()); !s.ok()) return s;
  for (const auto& [name, port] : {std::pair{"grpc-port", absl::GetFlag(FLAGS_grpc_port)},
                                   std::pair{"http-port", absl::GetFlag(FLAGS_http_port)}}) {
    if (port < 0 || port > 65535)
      return absl::InvalidArgumentError(absl::StrFormat("--%s %d is not a port", name, port));
  }
  for (absl::Status s :
       {at_least("max-seqs", absl::GetFlag(FLAGS_max_seqs), 1),
        at_least("max-prompt-tokens", absl::GetFlag(FLAGS_max_prompt_tokens), 1),
        at_least("max-tokens-cap", absl::GetFlag(FLAGS_max_tokens_cap), 1),
        at_least("step-token-budget", absl::GetFlag(FLAGS_step_token_budget), 1),
        at_least("max-queue", absl::GetFlag(FLAGS_max_queue), 0),
        at_least("prefix-cache-interval", absl::GetFlag(FLAGS_prefix_cache_interval), 64),
        at_least("session-ttl-s", absl::GetFlag(FLAGS_session_ttl_s), 1),
        at_least("threads", absl::GetFlag(FLAGS_threads), 0),
        at_least("drain-timeout-ms", absl::GetFlag(FLAGS_drain_timeout_ms), 0)}) {
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

// SIGTERM and SIGINT are blocked in every thread (the mask is set before any
// thread starts) and taken by sigwait on one thread, so no work happens in a
// signal handler. The first signal starts the drain; a second one, while
// draining, exits at once.
std::shared_future<int> WatchSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  auto promise = std::make_shared<std::promise<int>>();
  std::shared_future<int> future = promise->get_future().share();
  std::thread([set, promise] {
    int sig = 0;
    sigwait(&set, &sig);
    promise->set_value(sig);
    sigwait(&set, &sig);
    std::fprintf(stderr, "gdnserve: second %s: exiting without draining\n", strsignal(sig));
    std::_Exit(1);
  }).detach();
  return future;
}

std::string ModelName(std::string dir) {
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  return dir.substr(dir.find_last_of('/') + 1);
}

struct LoadedModel {
  std::unique_ptr<gdnserve::Tokenizer> tokenizer;
  std::unique_ptr<gdnserve::Backend> backend;
  std::unique_ptr<srv::ServingMetrics> metrics;
  std::unique_ptr<srv::StepMetrics> step_metrics;
  std::unique_ptr<gdnserve::Engine> engine;
  srv::ServingModel serving;
  http::HttpModel http;
};

absl::StatusOr<LoadedModel> LoadModel(const std::string& dir, gdnserve::metrics::Registry& registry,
                                      const http::ChatTemplate& chat_template) {
  const auto t0 = std::chrono::steady_clock::now();
  Log("loading model " + dir);
  auto weights = gdnserve::LoadModelWeights(dir);
  if (!weights.ok()) return weights.status();
  const gdnserve::ModelConfig config = (*weights)->config;
  const int64_t params = (*weights)->num_parameters();
  LoadedModel m;
  auto tokenizer = gdnserve::Tokenizer::Load(dir + "/tokenizer.model");
  if (!tokenizer.ok()) return tokenizer.status();
  m.tokenizer = std::move(*tokenizer);
  const int slots = absl::GetFlag(FLAGS_max_seqs);
  auto backend = gdnserve::CreateBackend(std::move(*weights), SpecFromFlags());
  if (!backend.ok()) return backend.status();
  m.backend = std::move(*backend);

  gdnserve::EngineOptions opts;
  opts.max_prompt_tokens = absl::GetFlag(FLAGS_max_prompt_tokens);
  opts.max_tokens_cap = absl::GetFlag(FLAGS_max_tokens_cap);
  opts.step_token_budget = absl::GetFlag(FLAGS_step_token_budget);
  opts.max_prefill_chunk = std::min(opts.max_prefill_chunk, opts.step_token_budget);
  opts.max_queue = absl::GetFlag(FLAGS_max_queue);
  opts.prefix_cache_bytes = std::max<int64_t>(0, absl::GetFlag(FLAGS_prefix_cache_bytes));
  opts.prefix_cache_interval = absl::GetFlag(FLAGS_prefix_cache_interval);
  opts.session_bytes = std::max<int64_t>(0, absl::GetFlag(FLAGS_session_bytes));
  opts.session_ttl_ms = int64_t{1000} * absl::GetFlag(FLAGS_session_ttl_s);
  opts.device_sampling = absl::GetFlag(FLAGS_device_sampling);
  const int64_t state_bytes = m.backend->state_pool().layout().bytes_per_slot();
  // Metrics exist before the engine: it reports every step to step_metrics.
  m.metrics = std::make_unique<srv::ServingMetrics>(registry, ModelName(dir), srv::BuildInfo{.version = GDNSERVE_VERSION, .device = m.backend->name()});
  m.metrics->state_bytes_per_sequence.Set(static_cast<double>(m.backend->state_pool().layout().bytes_per_slot()));
  m.step_metrics = std::make_unique<srv::StepMetrics>(*m.metrics);
  m.engine = std::make_unique<gdnserve::Engine>(m.backend.get(), m.tokenizer.get(), opts, m.step_metrics.get());

  std::string name = dir;
  while (name.size() > 1 && name.back() == '/') name.pop_back();
  name = name.substr(name.find_last_of('/') + 1);
  m.serving.engine = m.engine.get();
  m.serving.limits = {.max_prompt_tokens = opts.max_prompt_tokens,
                      .max_tokens_cap = opts.max_tokens_cap,
                      .max_n = std::min(opts.max_n, slots)};
  m.serving.model_name = name;
  m.serving.device = m.backend->name();
  m.serving.config_json = config.ToJson();
  m.serving.state_bytes_per_sequence = state_bytes;
  m.serving.metrics = m.metrics.get();
  m.http.engine = m.engine.get();
  m.http.name = m.serving.model_name;
  m.http.limits = {.max_prompt_tokens = m.serving.limits.max_prompt_tokens,
                   .max_tokens_cap = m.serving.limits.max_tokens_cap,
                   .max_n = m.serving.limits.max_n};
  m.http.chat_template = chat_template;
  m.http.metrics = m.metrics.get();
  m.http.created = std::chrono::duration_cast<std::chrono::seconds>(
                       std::chrono::system_clock::now().time_since_epoch()).count();

  Log(
      absl::StrFormat("model %s: %s, %d layers, hidden %d, %d heads x %d (%d value heads), vocab %d, "
                      "%.2fM parameters; loaded in %.2f s",
                      name, config.architecture, config.num_layers, config.hidden_size, config.num_heads,
                      config.head_dim, config.num_v_heads, config.vocab_size, params / 1e6, SecondsSince(t0)));
  std::string threads;  // the CPU backend's thread count
  if (m.backend->name() == "cpu") {
    const int n = absl::GetFlag(FLAGS_threads);
    threads = n == 0 ? " (all threads)" : absl::StrFormat(" (%d threads)", n);
  }
  Log(absl::StrFormat("device %s%s: %d state slots x %.3f MB per sequence = %.2f MB", m.backend->name(), threads,
                      slots, state_bytes / 1e6, slots * state_bytes / 1e6));
  Log(absl::StrFormat("limits: max-prompt-tokens %d, max-tokens-cap %d, step-token-budget %d, max-queue %d, n <= %d",
                      opts.max_prompt_tokens, opts.max_tokens_cap, opts.step_token_budget, opts.max_queue,
                      m.serving.limits.max_n));
  Log(absl::StrFormat("state reuse: prefix cache %.0f MB (every %d tokens), sessions %.0f MB (TTL %d s)",
                      opts.prefix_cache_bytes / 1e6, opts.prefix_cache_interval, opts.session_bytes / 1e6,
                      absl::GetFlag(FLAGS_session_ttl_s)));
  return m;
}

// The gRPC message limit: the flag, or gRPC's 4 MiB default raised so that a
// state blob (ImportState / ExportState) of this model fits, with 4 MiB of
// history tokens. Read before the model loads (the server listens first).
int MaxMessageBytes(const std::string& model_dir) {
  constexpr int64_t kGrpcDefault = 4 << 20;
  int64_t bytes = absl::GetFlag(FLAGS_max_state_message_bytes);
  if (bytes <= 0) {
    bytes = kGrpcDefault;
    if (absl::StatusOr<gdnserve::ModelConfig> c = gdnserve::LoadModelConfig(model_dir); c.ok()) {
      bytes = std::max(bytes, gdnserve::StateLayout::ForConfig(*c).bytes_per_slot() + kGrpcDefault);
    }
  }
  return static_cast<int>(std::min<int64_t>(bytes, std::numeric_limits<int>::max()));
}

void SetHealth(grpc::Server& server, bool serving) {
  grpc::HealthCheckServiceInterface* health = server.GetHealthCheckService();
  if (health == nullptr) return;
  health->SetServingStatus("", serving);
  health->SetServingStatus(kServiceName, serving);
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Serves a GDN-2 model over gRPC: gdnserve.v1.Generation (streaming Generate, Complete, Tokenize,\n"
      "Detokenize, GetModelInfo), grpc.health.v1.Health and server reflection.\n"
      "  gdnserve --model DIR [--device cpu] [--host 0.0.0.0] [--grpc-port 50051] [--max-seqs 16] ...\n"
      "Flags may be written with dashes or underscores (--grpc-port, --grpc_port).\n"
      "SIGTERM/SIGINT drains in-flight requests (up to --drain-timeout-ms) and exits 0.");
  absl::FlagsUsageConfig usage;
  usage.contains_help_flags = [](absl::string_view file) { return !absl::StrContains(file, "absl/"); };
  usage.contains_helpshort_flags = usage.contains_help_flags;
  absl::SetFlagsUsageConfig(usage);
  std::vector<std::string> arg_storage;
  std::vector<char*> args = NormalizeFlagNames(argc, argv, &arg_storage);
  const std::vector<char*> positional = absl::ParseCommandLine(static_cast<int>(args.size()), args.data());
  if (positional.size() > 1) return Fail(std::string("unexpected argument '") + positional[1] + "' (see --help)");
  if (absl::Status s = CheckFlags(); !s.ok()) return Fail(std::string(s.message()));
  srv::LogFormat log_format;
  if (!srv::ParseLogFormat(absl::GetFlag(FLAGS_log_format), &log_format)) {
    return Fail("--log-format must be text or json, got '" + absl::GetFlag(FLAGS_log_format) + "'");
  }
  srv::SetLogFormat(log_format);

  // Before any thread exists, so that every thread inherits the blocked mask.
  std::shared_future<int> signal = WatchSignals();
  // After WatchSignals: the CUDA driver may start threads, which must
  // inherit the blocked signal mask.
  if (absl::StatusOr<int> d = gdnserve::ResolveDevice(SpecFromFlags()); !d.ok()) {
    return Fail(std::string(d.status().message()));
  }

  // A bad model directory is reported before anything else is started.
  const std::string model_dir = absl::GetFlag(FLAGS_model);
  if (absl::StatusOr<gdnserve::ModelConfig> c = gdnserve::LoadModelConfig(model_dir); !c.ok()) {
    return Fail(std::string(c.status().message()));
  }
  if (access((model_dir + "/tokenizer.model").c_str(), R_OK) != 0) {
    return Fail(model_dir + "/tokenizer.model: " + std::strerror(errno));
  }

  absl::StatusOr<std::string> api_key = http::LoadApiKey(absl::GetFlag(FLAGS_api_key), absl::GetFlag(FLAGS_api_key_file));
  if (!api_key.ok()) return Fail(std::string(api_key.status().message()));
  const std::string template_file = absl::GetFlag(FLAGS_chat_template);
  absl::StatusOr<http::ChatTemplate> chat_template =
      template_file.empty() ? http::ChatTemplate::ForModelDir(model_dir) : http::ChatTemplate::FromFile(template_file);
  if (!chat_template.ok()) return Fail(std::string(chat_template.status().message()));

  const std::string host = absl::GetFlag(FLAGS_host);
  const int port = absl::GetFlag(FLAGS_grpc_port);
  // One clear line for "address in use" (gRPC's own bind failure is a multi-line log).
  if (absl::Status s = gdnserve::server::ProbeListen(host, port, ""); !s.ok()) return Fail(std::string(s.message()));

  srv::GenerationService service;
  service.SetApiKey(*api_key);
  // TLS for gRPC from the same PEM files as HTTPS.
  std::shared_ptr<grpc::ServerCredentials> credentials = grpc::InsecureServerCredentials();
  if (const std::string cert = absl::GetFlag(FLAGS_tls_cert), key = absl::GetFlag(FLAGS_tls_key);
      !cert.empty() || !key.empty()) {
    absl::StatusOr<std::string> cert_pem = gdnserve::ReadWholeFile(cert), key_pem = gdnserve::ReadWholeFile(key);
    if (cert.empty() || key.empty()) return Fail("TLS: --tls-cert and --tls-key go together");
    if (!cert_pem.ok()) return Fail("TLS: --tls-cert: " + std::string(cert_pem.status().message()));
    if (!key_pem.ok()) return Fail("TLS: --tls-key: " + std::string(key_pem.status().message()));
    grpc::SslServerCredentialsOptions ssl;
    ssl.pem_key_cert_pairs.push_back({*key_pem, *cert_pem});
    credentials = grpc::SslServerCredentials(ssl);
  }
  srv::ReflectionServices reflection({kServiceName, "grpc.health.v1.Health"});
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  int bound_port = 0;
  builder.AddListeningPort(HostPort(host, port), credentials, &bound_port);
  // gRPC sets SO_REUSEPORT by default on Linux, which lets a second server
  // share the port silently; a port in use must be an error instead.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  // One connection cannot take the whole queue: HTTP/2 makes its extra
  // streams wait in the client until earlier ones end.
  if (const int streams = absl::GetFlag(FLAGS_grpc_max_streams_per_connection); streams > 0) {
    builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, streams);
  }
  const int max_message = MaxMessageBytes(model_dir);
  builder.SetMaxReceiveMessageSize(max_message);
  builder.SetMaxSendMessageSize(max_message);
  builder.RegisterService(&service);
  for (grpc::Service* s : reflection.services()) builder.RegisterService(s);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || bound_port == 0) return Fail("cannot listen on " + HostPort(host, port));
  // The default health service starts SERVING; the model is not loaded yet.
  SetHealth(*server, false);
  Log(absl::StrFormat("listening on %s (gRPC; health NOT_SERVING until the model is loaded)",
                      HostPort(host, bound_port)));

  // HTTP binds before the model loads too: /healthz answers at once, /readyz
  // says 503 until SetModel.
  gdnserve::metrics::Registry registry;
  http::HttpOptions http_options;
  http_options.api_key = *api_key;
  http_options.metrics_require_auth = absl::GetFlag(FLAGS_metrics_require_auth);
  http_options.tls_cert_file = absl::GetFlag(FLAGS_tls_cert);
  http_options.tls_key_file = absl::GetFlag(FLAGS_tls_key);
  http_options.max_body_bytes = absl::GetFlag(FLAGS_max_body_bytes);
  http_options.max_header_bytes = absl::GetFlag(FLAGS_max_header_bytes);
  http_options.max_connections = absl::GetFlag(FLAGS_http_max_connections);
  http_options.generation.request_log = srv::LogRequest;
  http::HttpContext http_context;
  http_context.registry = &registry;
  http::HttpServer http_server(http_options, http_context);
  if (const int http_port = absl::GetFlag(FLAGS_http_port); http_port != 0) {
    if (absl::Status s = http_server.Start(host, http_port); !s.ok()) {
      server->Shutdown();
      return Fail(std::string(s.message()));
    }
    Log(absl::StrFormat("listening on %s (%s: OpenAI API, /metrics, /healthz, /readyz%s)",
                        HostPort(host, http_server.port()), http_server.tls() ? "HTTPS" : "HTTP",
                        http_options.api_key.empty() ? "" : "; API key required"));
  }

  absl::StatusOr<LoadedModel> model = absl::InternalError("not loaded");
  try {
    model = LoadModel(model_dir, registry, *chat_template);
  } catch (const std::exception& e) {  // e.g. bad_alloc for a --max-seqs that does not fit
    model = absl::ResourceExhaustedError(absl::StrCat("loading ", model_dir, ": ", e.what()));
  }
  if (!model.ok()) {
    server->Shutdown();
    return Fail(std::string(model.status().message()));
  }
  service.SetModel(&model->serving);
  http_server.SetModel(&model->http);
  SetHealth(*server, true);
  Log(absl::StrFormat("serving on %s", HostPort(host, bound_port)));

  // Wait for SIGTERM/SIGINT; meanwhile a backend that broke for good (a
  // sticky GPU error) turns gRPC health NOT_SERVING (HTTP /readyz follows the
  // engine by itself), so an orchestrator restarts the process.
  bool reported_failure = false;
  while (signal.wait_for(std::chrono::seconds(1)) != std::future_status::ready) {
    if (absl::Status h = model->engine->health(); !h.ok() && !reported_failure) {
      reported_failure = true;
      Log("backend failed, not ready any more: " + std::string(h.message()));
      SetHealth(*server, false);
    }
  }
  const int sig = signal.get();
  const auto t_drain = std::chrono::steady_clock::now();
  const int drain_ms = absl::GetFlag(FLAGS_drain_timeout_ms);
  const gdnserve::EngineStats at_signal = model->engine->Stats();
  Log(absl::StrFormat("%s: draining %d running and %d waiting requests (up to %d ms)", strsignal(sig),
                      at_signal.requests_running, at_signal.requests_waiting, drain_ms));
  SetHealth(*server, false);
  // New requests now get UNAVAILABLE from the engine; each running one ends
  // with its final output, which finishes its RPC.
  model->engine->Shutdown(drain_ms);
  http_server.Stop();  // before the engine goes: it may cancel requests in flight
  // Every call has had its final output; what is left are writes to slow
  // clients and health watches. Give them a moment, then cancel.
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  server->Wait();
  Log(absl::StrFormat("stopped after %.2f s (%lld requests served)", SecondsSince(t_drain),
                      static_cast<long long>(model->engine->Stats().requests_finished)));
  return 0;
}
