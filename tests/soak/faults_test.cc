// Start-up faults, limits and isolation that tests/e2e does not cover yet:
//  - a model dir that is empty, a truncated or garbled model.safetensors, a
//    config.json whose shapes disagree with the tensors (hidden_size, layer
//    count), a malformed config.json, a missing tokenizer: one line on
//    stderr/stdout ("gdnserve: error: ..."), exit code 1, never a signal;
//  - a gRPC request past the 4 MiB message limit is RESOURCE_EXHAUSTED and
//    the server keeps serving;
//  - 200 concurrent streams on ONE HTTP/2 connection all complete (the
//    server sets no per-connection stream limit; admission is the queue's);
//  - isolation by content: concurrent seeded sampling requests (n = 1..3,
//    temperature 1, distinct prompts and seeds) equal their solo runs sample
//    for sample.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>

#include "absl/strings/str_split.h"
#include "tests/e2e/client_util.h"
#include "tests/soak/soak_util.h"

namespace gdnserve::soak {
namespace {

namespace fs = std::filesystem;
using e2e::CallResult;
using e2e::milliseconds;
using ::testing::HasSubstr;

// A scratch copy of the tiny test model that each case may break.
class ModelCopy {
 public:
  ModelCopy() {
    char tmpl[] = "/tmp/gdnserve_fault_model_XXXXXX";
    dir_ = mkdtemp(tmpl);
    for (const auto& e : fs::directory_iterator(e2e::TestModelDir("tiny"))) {
      fs::copy_file(e.path(), dir_ / e.path().filename());
    }
  }
  ~ModelCopy() { fs::remove_all(dir_); }
  std::string dir() const { return dir_.string(); }
  fs::path file(const std::string& name) const { return dir_ / name; }

  std::string Read(const std::string& name) const { return e2e::ReadFile(file(name).string()); }
  void Write(const std::string& name, const std::string& bytes) const {
    std::ofstream(file(name), std::ios::binary | std::ios::trunc) << bytes;
  }
  void ReplaceInConfig(const std::string& pattern, const std::string& with) const {
    Write("config.json", std::regex_replace(Read("config.json"), std::regex(pattern), with));
  }

 private:
  fs::path dir_;
};

// Runs gdnserve on `model_dir`, expecting a start-up error: exit code 1 (no
// signal, so no core dump) within 20 s and exactly one error line, the last
// one. (gdnserve listens before it loads the model, so its "listening" and
// "loading model" lines may come first.)
void ExpectStartupError(const std::string& model_dir, const std::string& what) {
  SCOPED_TRACE(what);
  char path[] = "/tmp/gdnserve_fault_log_XXXXXX";
  const int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  close(fd);
  const pid_t pid = e2e::Spawn(
      e2e::ServerBinary(),
      {"--model", model_dir, "--host", "127.0.0.1", "--grpc-port", "0", "--http-port", "0", "--threads", "1"}, path);
  ASSERT_GT(pid, 0);
  const std::optional<int> code = e2e::WaitExit(pid, milliseconds(20000));
  const std::string out = e2e::ReadFile(path);
  unlink(path);
  if (!code.has_value()) kill(pid, SIGKILL);
  ASSERT_TRUE(code.has_value()) << "gdnserve kept running:\n" << out;
  EXPECT_EQ(*code, 1) << out;  // 128+N would be a signal (abort, segfault)
  const std::vector<std::string> lines = absl::StrSplit(out, '\n', absl::SkipEmpty());
  ASSERT_FALSE(lines.empty());
  int error_lines = 0;
  for (const std::string& line : lines) error_lines += line.find("error") != std::string::npos;
  EXPECT_EQ(error_lines, 1) << out;
  EXPECT_THAT(lines.back(), ::testing::StartsWith("gdnserve: error: ")) << out;
  EXPECT_THAT(lines.back(), HasSubstr(what));
}

TEST(StartupFaults, EmptyModelDir) {
  char tmpl[] = "/tmp/gdnserve_fault_empty_XXXXXX";
  const std::string dir = mkdtemp(tmpl);
  ExpectStartupError(dir, "config.json");
  fs::remove_all(dir);
}

TEST(StartupFaults, TruncatedSafetensors) {
  ModelCopy m;
  const std::string bytes = m.Read("model.safetensors");
  m.Write("model.safetensors", bytes.substr(0, bytes.size() / 2));
  ExpectStartupError(m.dir(), "model.safetensors");
}

TEST(StartupFaults, GarbledSafetensorsHeader) {
  ModelCopy m;
  std::string bytes = m.Read("model.safetensors");
  for (size_t i = 8; i < 40 && i < bytes.size(); ++i) bytes[i] = '\xff';
  m.Write("model.safetensors", bytes);
  ExpectStartupError(m.dir(), "model.safetensors");
}

TEST(StartupFaults, HugeHeaderLength) {
  ModelCopy m;
  std::string bytes = m.Read("model.safetensors");
  for (int i = 0; i < 8; ++i) bytes[i] = '\x7f';
  m.Write("model.safetensors", bytes);
  ExpectStartupError(m.dir(), "model.safetensors");
}

TEST(StartupFaults, ConfigHiddenSizeDisagreesWithTensors) {
  ModelCopy m;
  m.ReplaceInConfig("\"hidden_size\": *64", "\"hidden_size\": 96");
  ExpectStartupError(m.dir(), "");
}

TEST(StartupFaults, ConfigHasMoreLayersThanTensors) {
  ModelCopy m;
  m.ReplaceInConfig("\"num_layers\": *2", "\"num_layers\": 3");
  ExpectStartupError(m.dir(), "");
}

TEST(StartupFaults, MalformedConfigJson) {
  ModelCopy m;
  m.Write("config.json", "{\"vocab_size\": 512, ");
  ExpectStartupError(m.dir(), "config.json");
}

TEST(StartupFaults, MissingTokenizer) {
  ModelCopy m;
  fs::remove(m.file("tokenizer.model"));
  ExpectStartupError(m.dir(), "tokenizer");
}

std::unique_ptr<e2e::ServerProcess> StartOrFail(const std::vector<std::string>& args) {
  std::string error;
  auto s = e2e::ServerProcess::Start(args, &error);
  EXPECT_NE(s, nullptr) << error;
  return s;
}

TEST(Limits, OversizedGrpcMessageIsRejectedAndServerKeepsServing) {
  auto server = StartOrFail({"--threads", "1"});
  ASSERT_NE(server, nullptr);
  const CallResult big = e2e::RunStream(server->stub(), e2e::GreedyRequest(std::string(5 << 20, 'a'), 1));
  EXPECT_EQ(big.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << big.status.error_message();
  const CallResult ok = e2e::RunStream(server->stub(), e2e::GreedyRequest("still here", 4));
  ASSERT_TRUE(ok.status.ok()) << ok.status.error_message();
  EXPECT_EQ(ok.samples.at(0).tokens.size(), 4u);
}

TEST(Limits, ManyStreamsOnOneConnectionAllComplete) {
  // With the per-connection cap off every stream is admitted to the engine's
  // queue (bounded by --max-queue, covered in e2e grpc_load).
  auto server = StartOrFail({"--threads", "1", "--max-seqs", "16", "--max-queue", "512",
                             "--grpc-max-streams-per-connection", "0"});
  ASSERT_NE(server, nullptr);
  constexpr int kStreams = 200;
  std::vector<CallResult> results(kStreams);
  {
    e2e::ClientThreads clients;
    for (int i = 0; i < kStreams; ++i) {
      clients.Add([&, i] { results[i] = e2e::RunStream(server->stub(), e2e::GreedyRequest("one conn", 4)); });
    }
  }
  for (const CallResult& r : results) {
    ASSERT_TRUE(r.status.ok()) << r.status.error_message();
    EXPECT_EQ(r.samples.at(0).tokens.size(), 4u);
  }
  EXPECT_TRUE(e2e::WaitIdle(server->stub(), milliseconds(10000)).has_value());
}

TEST(Limits, StreamsPerConnectionAreCapped) {
  // --grpc-max-streams-per-connection 2: of 5 long streams on one connection
  // only 2 reach the server at a time; the rest wait in the client and run
  // as the first ones end.
  auto server = StartOrFail({"--threads", "1", "--max-seqs", "8", "--grpc-max-streams-per-connection", "2"});
  ASSERT_NE(server, nullptr);
  // A second connection to watch the server while the first is saturated.
  auto watch_channel = grpc::CreateChannel(server->address(), grpc::InsecureChannelCredentials());
  auto watch = e2e::pb::Generation::NewStub(watch_channel);
  constexpr int kStreams = 5;
  std::vector<CallResult> results(kStreams);
  {
    e2e::ClientThreads clients;
    for (int i = 0; i < kStreams; ++i) {
      clients.Add([&, i] {
        results[i] = e2e::RunStream(server->stub(), e2e::GreedyRequest("capped " + std::to_string(i), 400));
      });
    }
    ASSERT_TRUE(e2e::WaitFor(*watch, [](const e2e::pb::ModelInfo& m) { return m.requests_running() == 2; },
                             milliseconds(10000)));
    // Held at two for a while: the others never reach the engine's queue.
    for (int i = 0; i < 50; ++i) {
      e2e::pb::ModelInfo info;
      ASSERT_TRUE(e2e::GetInfo(*watch, &info).ok());
      ASSERT_LE(info.requests_running() + info.requests_waiting(), 2);
      std::this_thread::sleep_for(milliseconds(2));
    }
  }
  for (const CallResult& r : results) {
    ASSERT_TRUE(r.status.ok()) << r.status.error_message();
    EXPECT_EQ(r.samples.at(0).tokens.size(), 400u);
  }
}

TEST(Isolation, ConcurrentSeededSamplesEqualSoloRuns) {
  auto server = StartOrFail({"--threads", "1", "--max-seqs", "24", "--max-queue", "512"});
  ASSERT_NE(server, nullptr);
  constexpr int kRequests = 48;
  std::vector<e2e::pb::GenerateRequest> requests(kRequests);
  for (int i = 0; i < kRequests; ++i) {
    auto& r = requests[i];
    r.set_text("request " + std::to_string(i) + (i % 2 ? " the lord said" : " a fool and his money"));
    r.mutable_sampling()->set_temperature(1.0f);
    r.mutable_sampling()->set_seed(1000 + i);
    r.mutable_stop()->set_max_tokens(8 + i % 17);
    r.mutable_stop()->set_ignore_eos(true);
    r.set_n(1 + i % 3);
  }
  std::vector<CallResult> together(kRequests);
  {
    e2e::ClientThreads clients;
    for (int i = 0; i < kRequests; ++i) {
      clients.Add([&, i] {
        auto stub = e2e::pb::Generation::NewStub(server->NewChannel());
        together[i] = e2e::RunStream(*stub, requests[i]);
      });
    }
  }
  // Batched and solo forward passes are not bit-identical (BLAS blocking
  // depends on the batch; model_test allows 1e-5 relative error), and at
  // temperature 1 a seeded draw near a CDF boundary can flip a token and
  // diverge from there. So: a sample must equal its solo run, or, when it
  // diverges, be its solo run up to the divergence and never another
  // request's output. A mix-up shows as a first token or a whole output from
  // another request; most samples must match exactly.
  std::vector<CallResult> solo(kRequests);
  for (int i = 0; i < kRequests; ++i) {
    ASSERT_TRUE(together[i].status.ok()) << together[i].status.error_message();
    solo[i] = e2e::RunStream(server->stub(), requests[i]);
    ASSERT_TRUE(solo[i].status.ok());
    ASSERT_EQ(solo[i].samples.size(), together[i].samples.size());
  }
  int samples = 0, exact = 0, diverged = 0;
  std::set<std::vector<int32_t>> seen;
  for (int i = 0; i < kRequests; ++i) {
    for (const auto& [index, s] : solo[i].samples) {
      ++samples;
      seen.insert(s.tokens);
      const std::vector<int32_t>& got = together[i].samples.at(index).tokens;
      ASSERT_EQ(got.size(), s.tokens.size()) << "request " << i << " sample " << index;
      if (got == s.tokens) {
        ++exact;
        EXPECT_EQ(together[i].samples.at(index).text, s.text) << "request " << i << " sample " << index;
        continue;
      }
      ++diverged;
      EXPECT_EQ(got[0], s.tokens[0]) << "request " << i << " sample " << index << " starts with another's token";
      for (int j = 0; j < kRequests; ++j) {
        for (const auto& [k, other] : solo[j].samples) {
          if (j != i) {
            EXPECT_NE(got, other.tokens) << "request " << i << " got request " << j << "'s output";
          }
        }
      }
    }
  }
  std::printf("isolation: %d samples, %d equal to solo, %d diverged after a sampled token\n", samples, exact,
              diverged);
  EXPECT_GE(exact * 10, samples * 9) << "too many samples differ from their solo runs";
  // The check is only meaningful if the outputs differ from each other.
  EXPECT_GT(static_cast<int>(seen.size()), kRequests) << "outputs are not distinct enough to detect a mix-up";
}

// Known bug (server/calls.cc vs server/http/request_metrics.cc): a stream
// that the engine ends at its deadline returns DEADLINE_EXCEEDED to the
// client, but /metrics counts it as
// gdnserve_request_success_total{finished_reason="cancelled"} instead of
// gdnserve_request_errors_total{code="DEADLINE_EXCEEDED"}.
TEST(Regression, DeadlineExceededIsCountedAsAnError) {
  auto server =
      StartOrFail({"--threads", "1", "--max-tokens-cap", "100000", "--http-port", std::to_string(FreePort())});
  ASSERT_NE(server, nullptr);
  const std::string http = HttpAddress(*server);
  ASSERT_FALSE(http.empty()) << server->log();
  const CallResult r =
      e2e::RunStream(server->stub(), e2e::GreedyRequest("never finishes", 100000), {.deadline = milliseconds(300)});
  ASSERT_EQ(r.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  ASSERT_TRUE(e2e::WaitIdle(server->stub(), milliseconds(10000)).has_value());
  int status = 0;
  const std::string metrics = HttpGet(http, "/metrics", &status);
  ASSERT_EQ(status, 200);
  auto errors = CounterByLabel(metrics, "gdnserve_request_errors_total", "code");
  auto successes = CounterByLabel(metrics, "gdnserve_request_success_total", "finished_reason");
  EXPECT_EQ(errors["DEADLINE_EXCEEDED"], 1);
  EXPECT_EQ(successes["cancelled"], 0);
}

}  // namespace
}  // namespace gdnserve::soak
