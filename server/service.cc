#include "server/service.h"

namespace gdnserve::server {
namespace {

const grpc::Status kLoading(grpc::StatusCode::UNAVAILABLE, "the model is still loading");

grpc::ServerUnaryReactor* Done(grpc::CallbackServerContext* ctx, const grpc::Status& status) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  reactor->Finish(status);
  return reactor;
}

}  // namespace

grpc::ServerWriteReactor<pb::GenerateResponse>* GenerationService::Generate(grpc::CallbackServerContext* ctx,
                                                                            const pb::GenerateRequest* request) {
  const ServingModel* m = model();
  if (m == nullptr) return FailedStream(kLoading);
  return StartGenerate(ctx, request, *m);
}

grpc::ServerUnaryReactor* GenerationService::Complete(grpc::CallbackServerContext* ctx,
                                                      const pb::GenerateRequest* request,
                                                      pb::CompleteResponse* response) {
  const ServingModel* m = model();
  if (m == nullptr) return Done(ctx, kLoading);
  return StartComplete(ctx, request, response, *m);
}

grpc::ServerUnaryReactor* GenerationService::Tokenize(grpc::CallbackServerContext* ctx,
                                                      const pb::TokenizeRequest* request,
                                                      pb::TokenizeResponse* response) {
  const ServingModel* m = model();
  if (m == nullptr) return Done(ctx, kLoading);
  const Tokenizer& tok = m->engine->tokenizer();
  const std::vector<int32_t> ids = tok.Encode(request->text(), request->add_bos());
  response->mutable_token_ids()->Add(ids.begin(), ids.end());
  for (int32_t id : ids) response->add_pieces(PieceText(tok, id));
  return Done(ctx, grpc::Status::OK);
}

grpc::ServerUnaryReactor* GenerationService::Detokenize(grpc::CallbackServerContext* ctx,
                                                        const pb::DetokenizeRequest* request,
                                                        pb::DetokenizeResponse* response) {
  const ServingModel* m = model();
  if (m == nullptr) return Done(ctx, kLoading);
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
  const ServingModel* m = model();
  if (m == nullptr) return Done(ctx, kLoading);
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

}  // namespace gdnserve::server
