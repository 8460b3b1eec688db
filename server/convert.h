// Conversion between the wire types (gdnserve.v1 protobuf, grpc::Status) and
// the engine's types, with the request validation that names proto fields.
//
// The engine validates again (it is the last line of defence and serves other
// front ends); validating here first lets the messages use the proto field
// paths a client wrote ("sampling.top_p", "stop.max_tokens").
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/request.h"
#include "engine/tokenizer.h"
#include "gdnserve/v1/generation.pb.h"
#include "grpcpp/support/status.h"

namespace gdnserve::server {

namespace pb = ::gdnserve::v1;

// Server-side limits a request is checked against (from the flags).
struct RequestLimits {
  int max_prompt_tokens = 8192;
  int max_tokens_cap = 4096;
  int max_n = 16;  // min(--max-seqs, the engine's max_n): more could never be admitted
  int max_stop_strings = 16;
  int max_stop_bytes = 256;
  int max_request_id_bytes = 256;
};

// absl and gRPC share their status codes one to one (both follow
// google.rpc.Code), so the code is copied as a number.
grpc::Status ToGrpcStatus(const absl::Status& status);

// Validates `in` and builds the engine request: tokenizes a text prompt (BOS
// prepended), fills the defaults of unset fields. Errors are InvalidArgument
// and start with the proto field path. `request_id` is used as given.
absl::StatusOr<GenerationRequest> ToEngineRequest(const pb::GenerateRequest& in, const Tokenizer& tokenizer,
                                                  const RequestLimits& limits, std::string request_id,
                                                  Clock::time_point deadline);

pb::FinishReason ToProto(FinishReason reason);

// Appends an engine delta to a streamed sample delta of the same index (so
// several engine steps can be coalesced into one message).
void AppendDelta(const SampleDelta& in, const Tokenizer& tokenizer, pb::SampleDelta* out);
// Appends an engine delta to a whole sample (unary Complete).
void AppendDelta(const SampleDelta& in, const Tokenizer& tokenizer, pb::Sample* out);

// A token's text for logprobs and Tokenize pieces. Protobuf strings must be
// UTF-8, and a byte-fallback token (or a piece cut inside a character) is not:
// such bytes are written as "<0xAB>", the way SentencePiece names them.
std::string PieceText(const Tokenizer& tokenizer, int32_t id);

// The client's request id if it gave a valid one, else a new unique one
// ("gdn-" + 16 hex digits).
absl::StatusOr<std::string> RequestIdFor(const pb::GenerateRequest& in, const RequestLimits& limits);

}  // namespace gdnserve::server
