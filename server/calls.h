// The two RPCs that run a generation in the engine: Generate (server
// streaming) and Complete (unary). Each call is one callback-API reactor that
// submits the request with a sink and turns the engine's outputs into
// responses.
//
// Lifetime. A reactor has two owners: gRPC, until OnDone, and the engine,
// through the sink it holds (a shared_ptr) until it drops it after the final
// output. The reactor deletes itself when both have let go, so neither a late
// engine output nor a late gRPC reaction ever touches freed memory.
#pragma once

#include <cstdint>
#include <string>

#include "engine/engine.h"
#include "gdnserve/v1/generation.grpc.pb.h"
#include "server/convert.h"
#include "server/serving_metrics.h"

namespace gdnserve::server {

// What the RPCs serve: set once the model is loaded, then immutable; the
// engine must outlive every call (main shuts the gRPC server down first).
struct ServingModel {
  Engine* engine = nullptr;
  RequestLimits limits;
  std::string model_name;
  std::string device;
  std::string config_json;
  int64_t state_bytes_per_sequence = 0;
  ServingMetrics* metrics = nullptr;  // null: no metrics recorded
};

grpc::ServerWriteReactor<pb::GenerateResponse>* StartGenerate(grpc::CallbackServerContext* ctx,
                                                              const pb::GenerateRequest* request,
                                                              const ServingModel& model);

grpc::ServerUnaryReactor* StartComplete(grpc::CallbackServerContext* ctx, const pb::GenerateRequest* request,
                                        pb::CompleteResponse* response, const ServingModel& model);

// A streaming call that fails at once (no model yet, bad request).
grpc::ServerWriteReactor<pb::GenerateResponse>* FailedStream(grpc::Status status);

}  // namespace gdnserve::server
