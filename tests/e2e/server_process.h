// Runs the real gdnserve binary for end-to-end tests: on a free loopback port
// (--grpc-port 0; the port is read from its log), with a generated test model,
// and waits until grpc.health.v1 says SERVING.
//
// Environment (set by tests/e2e/CMakeLists.txt): GDNSERVE_BIN, the server
// binary; GDNSERVE_TEST_MODELS, the generated models (fixture test_models).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "gdnserve/v1/generation.grpc.pb.h"
#include "grpcpp/grpcpp.h"

namespace gdnserve::e2e {

namespace pb = ::gdnserve::v1;
using std::chrono::milliseconds;

std::string ServerBinary();
std::string TestModelDir(const std::string& name);  // $GDNSERVE_TEST_MODELS/name

// Spawns `program args...` with stdout and stderr appended to `log_path`.
// Returns the pid, or -1 (errno set).
pid_t Spawn(const std::string& program, const std::vector<std::string>& args, const std::string& log_path);
// Waits for pid to exit; returns its exit code (128 + signal when killed), or
// nullopt on timeout.
std::optional<int> WaitExit(pid_t pid, milliseconds timeout);
std::string ReadFile(const std::string& path);

class ServerProcess {
 public:
  // Starts gdnserve with --model <tiny> --host 127.0.0.1 --grpc-port 0
  // --http-port 0 plus `args` (later flags win), then waits for SERVING.
  // On failure returns nullptr and the reason (with the server's log).
  static std::unique_ptr<ServerProcess> Start(const std::vector<std::string>& args, std::string* error,
                                              const std::string& model = "tiny");
  ~ServerProcess();  // SIGKILL if still running

  const std::string& address() const { return address_; }
  pid_t pid() const { return pid_; }
  std::string log() const { return ReadFile(log_path_); }
  std::shared_ptr<grpc::Channel> NewChannel() const;  // a fresh connection
  pb::Generation::Stub& stub() { return *stub_; }

  // Sends a signal and waits for the exit code (nullopt: still running).
  std::optional<int> SignalAndWait(int sig, milliseconds timeout);

 private:
  ServerProcess() = default;
  pid_t pid_ = -1;
  bool exited_ = false;
  std::string log_path_;
  std::string address_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<pb::Generation::Stub> stub_;
};

// grpc.health.v1.Health/Check through a generic stub (the C++ health proto is
// not shipped; the two messages are one field each and hand-encoded).
// Returns 0 UNKNOWN, 1 SERVING, 2 NOT_SERVING, 3 SERVICE_UNKNOWN, or -1 when
// the call failed.
int HealthStatus(const std::shared_ptr<grpc::Channel>& channel, const std::string& service,
                 milliseconds timeout = milliseconds(500));

// GetModelInfo; fails the test's expectations via the returned status.
grpc::Status GetInfo(pb::Generation::Stub& stub, pb::ModelInfo* info);
// Polls GetModelInfo until no slot is used and nothing runs or waits;
// returns how long that took, or nullopt after `timeout`.
std::optional<milliseconds> WaitIdle(pb::Generation::Stub& stub, milliseconds timeout);

}  // namespace gdnserve::e2e
