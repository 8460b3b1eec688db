// Helper process for the disconnect test: starts a long Generate stream,
// waits for its first message, then dies without cancelling or closing the
// channel (_exit skips every destructor), as a crashed client would.
//   e2e_abrupt_client HOST:PORT MAX_TOKENS
#include <unistd.h>

#include <cstdlib>
#include <memory>
#include <string>

#include "gdnserve/v1/generation.grpc.pb.h"
#include "grpcpp/grpcpp.h"

int main(int argc, char** argv) {
  if (argc != 3) return 2;
  auto stub = gdnserve::v1::Generation::NewStub(grpc::CreateChannel(argv[1], grpc::InsecureChannelCredentials()));
  gdnserve::v1::GenerateRequest req;
  req.set_text("a client that vanishes");
  req.mutable_sampling()->set_temperature(0.0f);
  req.mutable_stop()->set_max_tokens(std::atoi(argv[2]));
  req.mutable_stop()->set_ignore_eos(true);
  auto* ctx = new grpc::ClientContext();  // never destroyed: destruction would cancel the call
  ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  auto reader = stub->Generate(ctx, req);
  gdnserve::v1::GenerateResponse msg;
  const bool got = reader->Read(&msg);
  reader.release();
  _exit(got ? 0 : 3);
}
