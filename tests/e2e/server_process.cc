#include "tests/e2e/server_process.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <future>
#include <regex>
#include <sstream>
#include <thread>

#include "grpcpp/generic/generic_stub.h"

extern char** environ;

namespace gdnserve::e2e {
namespace {

std::string Env(const char* name) {
  const char* v = std::getenv(name);
  return v == nullptr ? std::string() : std::string(v);
}

std::string TempLogPath() {
  std::string dir = Env("TMPDIR");
  if (dir.empty()) dir = "/tmp";
  std::string path = dir + "/gdnserve_e2e_XXXXXX";
  const int fd = mkstemp(path.data());
  if (fd >= 0) close(fd);
  return path;
}

}  // namespace

std::string ServerBinary() { return Env("GDNSERVE_BIN"); }

std::string TestModelDir(const std::string& name) { return Env("GDNSERVE_TEST_MODELS") + "/" + name; }

std::string ReadFile(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// posix_spawn rather than fork: this process already runs gRPC's threads,
// and a forked child of a threaded process may only call async-signal-safe
// functions anyway.
pid_t Spawn(const std::string& program, const std::vector<std::string>& args, const std::string& log_path) {
  std::vector<std::string> argv_storage = {program};
  argv_storage.insert(argv_storage.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (std::string& a : argv_storage) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
  posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO);
  // The child must not inherit a blocked SIGTERM/SIGINT mask from us.
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t none;
  sigemptyset(&none);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK);
  pid_t pid = -1;
  const int rc = posix_spawn(&pid, program.c_str(), &actions, &attr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  if (rc != 0) {
    errno = rc;
    return -1;
  }
  return pid;
}

std::optional<int> WaitExit(pid_t pid, milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (true) {
    int status = 0;
    const pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid) {
      if (WIFEXITED(status)) return WEXITSTATUS(status);
      if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
    }
    if (r < 0) return -1;
    if (std::chrono::steady_clock::now() > deadline) return std::nullopt;
    std::this_thread::sleep_for(milliseconds(5));
  }
}

std::unique_ptr<ServerProcess> ServerProcess::Start(const std::vector<std::string>& args, std::string* error,
                                                    const std::string& model) {
  std::unique_ptr<ServerProcess> p(new ServerProcess());
  p->log_path_ = TempLogPath();
  std::vector<std::string> all = {"--model", TestModelDir(model), "--host", "127.0.0.1", "--grpc-port",
                                  "0",       "--http-port",       "0"};
  all.insert(all.end(), args.begin(), args.end());
  p->pid_ = Spawn(ServerBinary(), all, p->log_path_);
  if (p->pid_ < 0) {
    *error = "cannot start " + ServerBinary() + ": " + std::strerror(errno);
    return nullptr;
  }
  // The port: "listening on 127.0.0.1:PORT" is logged once bound.
  const std::regex listening("listening on (127\\.0\\.0\\.1:[0-9]+)");
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (p->address_.empty()) {
    std::smatch m;
    const std::string log = p->log();
    if (std::regex_search(log, m, listening)) {
      p->address_ = m[1];
      break;
    }
    if (std::optional<int> code = WaitExit(p->pid_, milliseconds(0))) {
      p->exited_ = true;
      *error = "gdnserve exited with " + std::to_string(*code) + " before listening:\n" + log;
      return nullptr;
    }
    if (std::chrono::steady_clock::now() > deadline) {
      *error = "gdnserve did not report its port:\n" + log;
      return nullptr;
    }
    std::this_thread::sleep_for(milliseconds(10));
  }
  p->channel_ = p->NewChannel();
  p->stub_ = pb::Generation::NewStub(p->channel_);
  while (HealthStatus(p->channel_, "") != 1) {
    if (std::chrono::steady_clock::now() > deadline) {
      *error = "gdnserve never became SERVING:\n" + p->log();
      return nullptr;
    }
    std::this_thread::sleep_for(milliseconds(20));
  }
  return p;
}

ServerProcess::~ServerProcess() {
  if (pid_ > 0 && !exited_) {
    kill(pid_, SIGKILL);
    WaitExit(pid_, milliseconds(5000));
  }
  if (!log_path_.empty()) unlink(log_path_.c_str());
}

std::shared_ptr<grpc::Channel> ServerProcess::NewChannel() const {
  grpc::ChannelArguments args;
  // A distinct argument set gives a distinct connection (gRPC shares
  // subchannels between channels with equal arguments).
  static std::atomic<int> n{0};
  args.SetInt("gdnserve.e2e.channel", n++);
  return grpc::CreateCustomChannel(address_, grpc::InsecureChannelCredentials(), args);
}

std::optional<int> ServerProcess::SignalAndWait(int sig, milliseconds timeout) {
  kill(pid_, sig);
  std::optional<int> code = WaitExit(pid_, timeout);
  if (code) exited_ = true;
  return code;
}

int HealthStatus(const std::shared_ptr<grpc::Channel>& channel, const std::string& service, milliseconds timeout) {
  // HealthCheckRequest { string service = 1; }
  std::string request;
  if (!service.empty()) {
    request.push_back(0x0A);
    request.push_back(static_cast<char>(service.size()));  // names here are < 128 bytes
    request += service;
  }
  grpc::Slice slice(request);
  grpc::ByteBuffer req(&slice, 1);
  grpc::ByteBuffer resp;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + timeout);
  grpc::GenericStub stub(channel);
  std::promise<grpc::Status> done;
  stub.UnaryCall(&ctx, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &req, &resp,
                 [&done](grpc::Status s) { done.set_value(std::move(s)); });
  const grpc::Status status = done.get_future().get();
  if (!status.ok()) return -1;
  // HealthCheckResponse { ServingStatus status = 1; }: 0x08 <varint>, or
  // nothing for UNKNOWN (0).
  std::vector<grpc::Slice> slices;
  if (!resp.Dump(&slices).ok()) return -1;
  std::string bytes;
  for (const grpc::Slice& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  if (bytes.empty()) return 0;
  if (bytes.size() == 2 && bytes[0] == 0x08) return bytes[1];
  return -1;
}

grpc::Status GetInfo(pb::Generation::Stub& stub, pb::ModelInfo* info) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  return stub.GetModelInfo(&ctx, pb::GetModelInfoRequest(), info);
}

std::optional<milliseconds> WaitIdle(pb::Generation::Stub& stub, milliseconds timeout) {
  const auto t0 = std::chrono::steady_clock::now();
  while (true) {
    pb::ModelInfo info;
    const bool idle = GetInfo(stub, &info).ok() && info.slots_used() == 0 && info.requests_running() == 0 &&
                      info.requests_waiting() == 0;
    const auto spent = std::chrono::duration_cast<milliseconds>(std::chrono::steady_clock::now() - t0);
    if (idle) return spent;
    if (spent > timeout) return std::nullopt;
    std::this_thread::sleep_for(milliseconds(2));
  }
}

}  // namespace gdnserve::e2e
