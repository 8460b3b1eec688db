#include "server/service.h"

#include <string_view>

namespace gdnserve::server {
namespace {

const grpc::Status kLoading(grpc::StatusCode::UNAVAILABLE, "the model is still loading");

grpc::ServerUnaryReactor* Done(grpc::CallbackServerContext* ctx, const grpc::Status& status) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  reactor->Finish(status);
  return reactor;
}

// Compares in time independent of where the strings differ.
bool SameSecret(std::string_view a, std::string_view b) {
  unsigned char diff = a.size() != b.size();
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) diff |= a[i] ^ b[i];
  return diff == 0;
}

}  // namespace

grpc::Status GenerationService::Admit(const grpc::CallbackServerContext& ctx) const {
  if (!api_key_.empty()) {
    const auto& md = ctx.client_metadata();
    auto it = md.find("authorization");
    const std::string_view got = it == md.end() ? std::string_view() : std::string_view(it->second.data(), it->second.size());
    if (!SameSecret(got, "Bearer " + api_key_)) {
      return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                          it == md.end() ? "missing authorization metadata (Bearer API key)" : "invalid API key");
    }
  }
  if (model() == nullptr) return kLoading;
  return grpc::Status::OK;
}

grpc::ServerWriteReactor<pb::GenerateResponse>* GenerationService::Generate(grpc::CallbackServerContext* ctx,
                                                                            const pb::GenerateRequest* request) {
  if (grpc::Status s = Admit(*ctx); !s.ok()) return FailedStream(s);
  return StartGenerate(ctx, request, *model());
}

grpc::ServerUnaryReactor* GenerationService::Complete(grpc::CallbackServerContext* ctx,
                                                      const pb::GenerateRequest* request,
                                                      pb::CompleteResponse* response) {
  if (grpc::Status s = Admit(*ctx); !s.ok()) return Done(ctx, s);
  return StartComplete(ctx, request, response, *model());
}

grpc::ServerUnaryReactor* GenerationService::Tokenize(grpc::CallbackServerContext* ctx,
                                                      const pb::TokenizeRequest* request,
                                                      pb::TokenizeResponse* response) {
  if (grpc::Status s = Admit(*ctx); !s.ok()) return Done(ctx, s);
  const ServingModel* m = model();
  const Tokenizer& tok = m->engine->tokenizer();
  const std::vector<int32_t> ids = tok.Encode(request->text(), request->add_bos());
  response->mutable_token_ids()->Add(ids.begin(), ids.end());
  for (int32_t id : ids) response->add_pieces(PieceText(tok, id));
  return Done(ctx, grpc::Status::OK);
}

grpc::ServerUnaryReactor* GenerationService::Detokenize(grpc::CallbackServerContext* ctx,
                                                        const pb::DetokenizeRequest* request,
                                                        pb::DetokenizeResponse* response) {
  if (grpc::Status s = Admit(*ctx); !s.ok()) return Done(ctx, s);
  const ServingModel* m = model();
  const Tokenizer& tok = m->engine->tokenizer();
  if (absl::Status s = tok.CheckIds(request->token_ids()); !s.ok()) {
    return Done(ctx, grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "token_ids: " + std::string(s.message())));
  }
  response->set_text(tok.Decode(request->token_ids()));
  return Done(ctx, grpc::Status::OK);
}

grpc::ServerUnaryReactor* GenerationService::GetModelInfo(grpc::CallbackServerContext* ctx,
                                                          const pb::GetModelInfoRequest* /*request*/,
                                                          pb::ModelInfo* response) {
  if (grpc::Status s = Admit(*ctx); !s.ok()) return Done(ctx, s);
  const ServingModel* m = model();
  const ModelConfig& c = m->engine->backend().config();
  const EngineStats stats = m->engine->Stats();
  response->set_model_name(m->model_name);
  response->set_architecture(c.architecture);
  response->set_config_json(m->config_json);
  response->set_vocab_size(c.vocab_size);
  response->set_bos_token_id(c.bos_token_id);
  response->set_eos_token_id(c.eos_token_id);
  response->set_device(m->device);
  response->set_max_prompt_tokens(m->limits.max_prompt_tokens);
  response->set_max_tokens_cap(m->limits.max_tokens_cap);
  response->set_max_seqs(stats.slots_total);
  response->set_slots_used(stats.slots_used);
  response->set_state_bytes_per_sequence(m->state_bytes_per_sequence);
  response->set_requests_waiting(stats.requests_waiting);
  response->set_requests_running(stats.requests_running);
  response->set_max_queue(m->engine->options().max_queue);
  response->set_requests_finished(stats.requests_finished);
  return Done(ctx, grpc::Status::OK);
}

grpc::ServerUnaryReactor* GenerationService::ExportState(grpc::CallbackServerContext* ctx,
                                                         const pb::ExportStateRequest* request,
                                                         pb::ExportStateResponse* response) {
  if (grpc::Status s = Admit(*ctx); !s.ok()) return Done(ctx, s);
  if (request->session_id().empty()) {
    return Done(ctx, grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "session_id: must not be empty"));
  }
  absl::StatusOr<std::string> blob = model()->engine->ExportSession(request->session_id());
  if (!blob.ok()) return Done(ctx, ToGrpcStatus(blob.status()));
  response->set_state(*std::move(blob));
  return Done(ctx, grpc::Status::OK);
}

grpc::ServerUnaryReactor* GenerationService::ImportState(grpc::CallbackServerContext* ctx,
                                                         const pb::ImportStateRequest* request,
                                                         pb::ImportStateResponse* response) {
  if (grpc::Status s = Admit(*ctx); !s.ok()) return Done(ctx, s);
  absl::StatusOr<int64_t> n = model()->engine->ImportSession(request->session_id(), request->state());
  if (!n.ok()) return Done(ctx, ToGrpcStatus(n.status()));
  response->set_num_tokens(*n);
  return Done(ctx, grpc::Status::OK);
}

}  // namespace gdnserve::server
