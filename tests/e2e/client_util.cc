#include "tests/e2e/client_util.h"

namespace gdnserve::e2e {

pb::GenerateRequest GreedyRequest(const std::string& text, int max_tokens) {
  pb::GenerateRequest r;
  r.set_text(text);
  r.mutable_sampling()->set_temperature(0.0f);
  r.mutable_stop()->set_max_tokens(max_tokens);
  r.mutable_stop()->set_ignore_eos(true);
  return r;
}

CallResult RunStream(pb::Generation::Stub& stub, const pb::GenerateRequest& request, const StreamOptions& options) {
  CallResult out;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + options.deadline);
  std::unique_ptr<grpc::ClientReader<pb::GenerateResponse>> reader = stub.Generate(&ctx, request);
  pb::GenerateResponse msg;
  while (reader->Read(&msg)) {
    ++out.messages;
    out.request_id = msg.request_id();
    for (const pb::SampleDelta& d : msg.samples()) {
      SampleOut& s = out.samples[d.index()];
      s.tokens.insert(s.tokens.end(), d.token_ids().begin(), d.token_ids().end());
      s.text += d.text();
      s.deltas.push_back(d.text());
      s.logprobs.insert(s.logprobs.end(), d.logprobs().begin(), d.logprobs().end());
      if (d.finish_reason() != pb::FINISH_REASON_UNSPECIFIED) {
        s.finish = d.finish_reason();
        ++s.finish_messages;
      }
    }
    if (msg.has_usage()) {
      out.has_usage = true;
      ++out.usage_messages;
      out.usage = msg.usage();
    }
    if (out.messages == options.cancel_after_messages) ctx.TryCancel();
  }
  out.status = reader->Finish();
  return out;
}

CallResult RunComplete(pb::Generation::Stub& stub, const pb::GenerateRequest& request, milliseconds deadline) {
  CallResult out;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + deadline);
  pb::CompleteResponse resp;
  out.status = stub.Complete(&ctx, request, &resp);
  out.request_id = resp.request_id();
  for (const pb::Sample& s : resp.samples()) {
    SampleOut& o = out.samples[s.index()];
    o.tokens.assign(s.token_ids().begin(), s.token_ids().end());
    o.text = s.text();
    o.logprobs.assign(s.logprobs().begin(), s.logprobs().end());
    o.finish = s.finish_reason();
    o.finish_messages = 1;
  }
  out.has_usage = resp.has_usage();
  out.usage = resp.usage();
  out.messages = 1;
  return out;
}

}  // namespace gdnserve::e2e
