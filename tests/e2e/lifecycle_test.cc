// End-to-end tests of gdnserve's process lifecycle: SIGTERM drains in-flight
// requests and exits 0 within the drain timeout (health NOT_SERVING and new
// requests UNAVAILABLE meanwhile), and start-up errors are one line on
// stderr and a non-zero exit, never a crash.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <thread>

#include "absl/strings/str_split.h"
#include "tests/e2e/client_util.h"

namespace gdnserve::e2e {
namespace {

using ::testing::AnyOf;
using ::testing::HasSubstr;

constexpr int kLong = 100000;

std::vector<std::string> Args(int drain_ms) {
  return {"--threads",          "1",
          "--max-seqs",         "4",
          "--max-tokens-cap",   std::to_string(kLong),
          "--drain-timeout-ms", std::to_string(drain_ms)};
}

TEST(Lifecycle, SigtermUnderLoadCancelsWhatOutlivesTheDrainAndExitsZero) {
  constexpr int kDrainMs = 800;
  ClientThreads clients;
  std::string error;
  std::unique_ptr<ServerProcess> server = ServerProcess::Start(Args(kDrainMs), &error);
  ASSERT_NE(server, nullptr) << error;
  // Eight long streams: four run, four wait; none could finish within the drain.
  constexpr int kStreams = 8;
  std::vector<CallResult> results(kStreams);
  for (int i = 0; i < kStreams; ++i) {
    clients.Add([&, i] { results[i] = RunStream(server->stub(), GreedyRequest("long " + std::to_string(i), kLong)); });
  }
  ASSERT_TRUE(WaitFor(server->stub(), [](const pb::ModelInfo& info) {
    return info.requests_running() == 4 && info.requests_waiting() == kStreams - 4;
  })) << "expected 4 running and 4 waiting";

  const auto t0 = std::chrono::steady_clock::now();
  kill(server->pid(), SIGTERM);
  std::this_thread::sleep_for(milliseconds(200));
  // Draining: not serving, and new work is refused.
  EXPECT_EQ(HealthStatus(server->NewChannel(), ""), 2);
  const CallResult late = RunComplete(server->stub(), GreedyRequest("too late", 4));
  EXPECT_EQ(late.status.error_code(), grpc::StatusCode::UNAVAILABLE) << late.status.error_message();

  const std::optional<int> code = server->SignalAndWait(0, milliseconds(kDrainMs + 4000));
  const auto ms = std::chrono::duration_cast<milliseconds>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_TRUE(code.has_value()) << "still running " << ms << " ms after SIGTERM\n" << server->log();
  EXPECT_EQ(*code, 0) << server->log();
  std::fprintf(stderr, "exited %lld ms after SIGTERM (drain timeout %d ms)\n", static_cast<long long>(ms), kDrainMs);
  EXPECT_LT(ms, kDrainMs + 1500) << server->log();
  clients.Join();
  for (const CallResult& r : results) {
    // Ended by the drain: a clean end with finish reason cancelled.
    ASSERT_TRUE(r.status.ok()) << r.status.error_message();
    EXPECT_EQ(r.samples.at(0).finish, pb::FINISH_REASON_CANCELLED);
    EXPECT_TRUE(r.has_usage);
  }
  EXPECT_THAT(server->log(), HasSubstr("draining"));
}

TEST(Lifecycle, SigtermLetsShortRequestsFinish) {
  ClientThreads clients;
  std::string error;
  std::unique_ptr<ServerProcess> server = ServerProcess::Start(Args(10000), &error);
  ASSERT_NE(server, nullptr) << error;
  std::vector<CallResult> results(4);
  for (int i = 0; i < 4; ++i) {
    clients.Add([&, i] { results[i] = RunStream(server->stub(), GreedyRequest("short", 3000)); });
  }
  ASSERT_TRUE(WaitFor(server->stub(), [](const pb::ModelInfo& info) { return info.requests_running() == 4; }));
  const std::optional<int> code = server->SignalAndWait(SIGINT, milliseconds(10000));
  ASSERT_TRUE(code.has_value());
  EXPECT_EQ(*code, 0);
  clients.Join();
  for (const CallResult& r : results) {
    ASSERT_TRUE(r.status.ok()) << r.status.error_message();
    EXPECT_EQ(r.samples.at(0).finish, pb::FINISH_REASON_LENGTH) << "finished within the drain";
    EXPECT_EQ(r.samples.at(0).tokens.size(), 3000u);
  }
}

// Runs gdnserve expecting a start-up failure: non-zero exit, soon, with
// exactly one line of output that contains `what`.
void ExpectStartupError(const std::vector<std::string>& args, const std::string& what) {
  char path[] = "/tmp/gdnserve_e2e_err_XXXXXX";
  const int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  close(fd);
  const pid_t pid = Spawn(ServerBinary(), args, path);
  ASSERT_GT(pid, 0);
  const std::optional<int> code = WaitExit(pid, milliseconds(10000));
  const std::string out = ReadFile(path);
  unlink(path);
  ASSERT_TRUE(code.has_value()) << "gdnserve kept running";
  EXPECT_EQ(*code, 1) << out;
  const std::vector<std::string> lines = absl::StrSplit(out, '\n', absl::SkipEmpty());
  EXPECT_EQ(lines.size(), 1u) << out;
  EXPECT_THAT(out, HasSubstr(what));
  EXPECT_THAT(out, HasSubstr("gdnserve: error: "));
}

TEST(Lifecycle, PortInUseIsAOneLineError) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(listen(fd, 1), 0);
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  const std::string port = std::to_string(ntohs(addr.sin_port));
  ExpectStartupError({"--model", TestModelDir("tiny"), "--host", "127.0.0.1", "--grpc-port", port},
                     "Address already in use");
  close(fd);
}

TEST(Lifecycle, BadModelDirIsAOneLineError) {
  ExpectStartupError({"--model", "/nonexistent/model", "--host", "127.0.0.1", "--grpc-port", "0"},
                     "/nonexistent/model");
}

TEST(Lifecycle, BadFlagsAreOneLineErrors) {
  // No GPU here (CI): a CUDA build says so after loading, a CPU-only build at once.
  ExpectStartupError({"--model", TestModelDir("tiny"), "--device", "cuda"}, "--device cuda");
  ExpectStartupError({"--model", TestModelDir("tiny"), "--dtype", "bf16"}, "--dtype bf16 needs --device cuda");
  ExpectStartupError({"--model", TestModelDir("tiny"), "--dtype", "f8"}, "--dtype");
  ExpectStartupError({"--model", TestModelDir("tiny"), "--device", "tpu"}, "--device");
  ExpectStartupError({"--model", TestModelDir("tiny"), "--prefill-kernel", "fast"}, "--prefill-kernel");
  ExpectStartupError({"--model", TestModelDir("tiny"), "--max-seqs", "0"}, "--max-seqs");
  ExpectStartupError({"--model", TestModelDir("tiny"), "--grpc-port", "70000"}, "--grpc-port");
}

TEST(Lifecycle, OtherTestModelsServe) {
  // The grouped-value-head bf16 model and the sharded f16 one load and stream.
  for (const char* model : {"tiny_gva", "tiny_sharded"}) {
    std::string error;
    std::unique_ptr<ServerProcess> server = ServerProcess::Start({"--threads", "1"}, &error, model);
    ASSERT_NE(server, nullptr) << error;
    const CallResult r = RunStream(server->stub(), GreedyRequest("hello", 8));
    ASSERT_TRUE(r.status.ok()) << model << ": " << r.status.error_message();
    EXPECT_EQ(r.samples.at(0).tokens.size(), 8u) << model;
  }
}

}  // namespace
}  // namespace gdnserve::e2e
