// gdnserve.v1.Generation on gRPC's callback API. Generate and Complete run in
// the engine (server/calls.h); Tokenize, Detokenize and GetModelInfo answer
// inline, since they are cheap and never wait.
#pragma once

#include <atomic>
#include <string>

#include "gdnserve/v1/generation.grpc.pb.h"
#include "server/calls.h"

namespace gdnserve::server {

class GenerationService final : public pb::Generation::CallbackService {
 public:
  // The server starts listening before the model is loaded (so health says
  // NOT_SERVING meanwhile); until SetModel every RPC is UNAVAILABLE.
  void SetModel(const ServingModel* model) { model_.store(model, std::memory_order_release); }
  // When non-empty, every Generation RPC needs metadata "authorization:
  // Bearer KEY" (health and reflection stay open). Set before serving.
  void SetApiKey(std::string key) { api_key_ = std::move(key); }

  grpc::ServerWriteReactor<pb::GenerateResponse>* Generate(grpc::CallbackServerContext* ctx,
                                                           const pb::GenerateRequest* request) override;
  grpc::ServerUnaryReactor* Complete(grpc::CallbackServerContext* ctx, const pb::GenerateRequest* request,
                                     pb::CompleteResponse* response) override;
  grpc::ServerUnaryReactor* Tokenize(grpc::CallbackServerContext* ctx, const pb::TokenizeRequest* request,
                                     pb::TokenizeResponse* response) override;
  grpc::ServerUnaryReactor* Detokenize(grpc::CallbackServerContext* ctx, const pb::DetokenizeRequest* request,
                                       pb::DetokenizeResponse* response) override;
  grpc::ServerUnaryReactor* GetModelInfo(grpc::CallbackServerContext* ctx, const pb::GetModelInfoRequest* request,
                                         pb::ModelInfo* response) override;
  grpc::ServerUnaryReactor* ExportState(grpc::CallbackServerContext* ctx, const pb::ExportStateRequest* request,
                                        pb::ExportStateResponse* response) override;
  grpc::ServerUnaryReactor* ImportState(grpc::CallbackServerContext* ctx, const pb::ImportStateRequest* request,
                                        pb::ImportStateResponse* response) override;

 private:
  const ServingModel* model() const { return model_.load(std::memory_order_acquire); }
  // OK, or UNAVAILABLE while loading, or UNAUTHENTICATED without the key.
  grpc::Status Admit(const grpc::CallbackServerContext& ctx) const;

  std::atomic<const ServingModel*> model_{nullptr};
  std::string api_key_;
};

}  // namespace gdnserve::server
