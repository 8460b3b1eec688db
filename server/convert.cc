#include "server/convert.h"

#include <atomic>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace gdnserve::server {
namespace {

absl::Status Bad(absl::string_view field, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", why));
}

// Prefixes an InvalidArgument from engine helpers (which name their own
// field, "top_p: ...") with the proto path of its message ("sampling.").
absl::Status Prefixed(absl::string_view prefix, const absl::Status& s) {
  if (s.ok()) return s;
  return absl::Status(s.code(), absl::StrCat(prefix, s.message()));
}


void AppendLogprobs(const SampleDelta& in, const Tokenizer& tok,
                    google::protobuf::RepeatedPtrField<pb::TokenLogprob>* out) {
  for (const TokenLogprobs& lp : in.logprobs) {
    pb::TokenLogprob* t = out->Add();
    t->set_token_id(lp.token);
    t->set_logprob(lp.logprob);
    for (const TokenLogprob& alt : lp.top) {
      pb::TopLogprob* a = t->add_top();
      a->set_token_id(alt.token);
      a->set_logprob(alt.logprob);
      a->set_token(PieceText(tok, alt.token));
    }
  }
}

}  // namespace

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

absl::StatusOr<GenerationRequest> ToEngineRequest(const pb::GenerateRequest& in, const Tokenizer& tokenizer,
                                                  const RequestLimits& limits, std::string request_id,
                                                  Clock::time_point deadline) {
  GenerationRequest r;
  r.request_id = std::move(request_id);
  r.deadline = deadline;

  switch (in.prompt_case()) {
    case pb::GenerateRequest::kText:
      if (in.text().empty()) return Bad("prompt.text", "must not be empty");
      r.prompt = tokenizer.Encode(in.text(), /*add_bos=*/!in.session_continue());
      break;
    case pb::GenerateRequest::kTokenIds:
      if (in.token_ids().ids().empty()) return Bad("prompt.token_ids", "must not be empty");
      if (absl::Status s = tokenizer.CheckIds(in.token_ids().ids()); !s.ok()) {
        return Prefixed("prompt.token_ids: ", s);
      }
      r.prompt.assign(in.token_ids().ids().begin(), in.token_ids().ids().end());
      break;
    case pb::GenerateRequest::PROMPT_NOT_SET: return Bad("prompt", "set text or token_ids");
  }
  if (r.prompt.empty()) return Bad("prompt.text", "has no tokens");
  if (static_cast<int64_t>(r.prompt.size()) > limits.max_prompt_tokens) {
    return Bad("prompt", absl::StrFormat("%d tokens exceed the limit of %d (--max-prompt-tokens)", r.prompt.size(),
                                         limits.max_prompt_tokens));
  }

  if (in.session_continue() && in.session_id().empty()) return Bad("session_continue", "needs a session_id");
  if (in.session_id().size() > static_cast<size_t>(limits.max_request_id_bytes)) {
    return Bad("session_id", absl::StrFormat("at most %d bytes", limits.max_request_id_bytes));
  }
  r.session_id = in.session_id();
  r.session_continue = in.session_continue();

  const pb::SamplingParams& sp = in.sampling();
  SamplingParams& s = r.sampling;
  if (sp.has_temperature()) s.temperature = sp.temperature();
  if (sp.has_top_k()) s.top_k = sp.top_k();
  if (sp.has_top_p()) s.top_p = sp.top_p();
  if (sp.has_min_p()) s.min_p = sp.min_p();
  if (sp.has_repetition_penalty()) s.repetition_penalty = sp.repetition_penalty();
  if (sp.has_presence_penalty()) s.presence_penalty = sp.presence_penalty();
  if (sp.has_frequency_penalty()) s.frequency_penalty = sp.frequency_penalty();
  if (sp.has_seed()) {
    s.has_seed = true;
    s.seed = sp.seed();
  }
  s.logprobs = sp.logprobs();
  if (absl::Status st = s.Validate(tokenizer.vocab_size()); !st.ok()) return Prefixed("sampling.", st);

  const pb::StopConditions& stop = in.stop();
  r.stop.max_tokens = stop.has_max_tokens() ? stop.max_tokens() : std::min(16, limits.max_tokens_cap);
  if (r.stop.max_tokens < 1 || r.stop.max_tokens > limits.max_tokens_cap) {
    return Bad("stop.max_tokens", absl::StrFormat("must be in [1, %d] (--max-tokens-cap), got %d",
                                                  limits.max_tokens_cap, r.stop.max_tokens));
  }
  if (stop.stop_size() > limits.max_stop_strings) {
    return Bad("stop.stop",
               absl::StrFormat("at most %d stop strings, got %d", limits.max_stop_strings, stop.stop_size()));
  }
  for (int i = 0; i < stop.stop_size(); ++i) {
    const std::string& str = stop.stop(i);
    if (str.empty() || static_cast<int>(str.size()) > limits.max_stop_bytes) {
      return Bad(absl::StrFormat("stop.stop[%d]", i),
                 absl::StrFormat("must have 1 to %d bytes, got %d", limits.max_stop_bytes, str.size()));
    }
    r.stop.stop_strings.push_back(str);
  }
  if (absl::Status st = tokenizer.CheckIds(stop.stop_token_ids()); !st.ok()) {
    return Prefixed("stop.stop_token_ids: ", st);
  }
  r.stop.stop_token_ids.assign(stop.stop_token_ids().begin(), stop.stop_token_ids().end());
  r.stop.ignore_eos = stop.ignore_eos();

  r.n = in.n() == 0 ? 1 : in.n();
  if (r.n < 1 || r.n > limits.max_n) {
    return Bad("n", absl::StrFormat("must be in [1, %d], got %d", limits.max_n, in.n()));
  }
  return r;
}

pb::FinishReason ToProto(FinishReason reason) {
  switch (reason) {
    case FinishReason::kNone: return pb::FINISH_REASON_UNSPECIFIED;
    case FinishReason::kLength: return pb::FINISH_REASON_LENGTH;
    case FinishReason::kStop: return pb::FINISH_REASON_STOP;
    case FinishReason::kEos: return pb::FINISH_REASON_EOS;
    case FinishReason::kCancelled: return pb::FINISH_REASON_CANCELLED;
  }
  return pb::FINISH_REASON_UNSPECIFIED;
}

void AppendDelta(const SampleDelta& in, const Tokenizer& tokenizer, pb::SampleDelta* out) {
  out->set_index(in.index);
  out->mutable_token_ids()->Add(in.token_ids.begin(), in.token_ids.end());
  out->mutable_text()->append(in.text);
  AppendLogprobs(in, tokenizer, out->mutable_logprobs());
  if (in.finish != FinishReason::kNone) out->set_finish_reason(ToProto(in.finish));
}

void AppendDelta(const SampleDelta& in, const Tokenizer& tokenizer, pb::Sample* out) {
  out->set_index(in.index);
  out->mutable_token_ids()->Add(in.token_ids.begin(), in.token_ids.end());
  out->mutable_text()->append(in.text);
  AppendLogprobs(in, tokenizer, out->mutable_logprobs());
  if (in.finish != FinishReason::kNone) out->set_finish_reason(ToProto(in.finish));
}

std::string PieceText(const Tokenizer& tokenizer, int32_t id) { return tokenizer.TokenDisplayText(id); }

absl::StatusOr<std::string> RequestIdFor(const pb::GenerateRequest& in, const RequestLimits& limits) {
  if (!in.request_id().empty()) {
    if (static_cast<int>(in.request_id().size()) > limits.max_request_id_bytes) {
      return Bad("request_id",
                 absl::StrFormat("at most %d bytes, got %d", limits.max_request_id_bytes, in.request_id().size()));
    }
    return in.request_id();
  }
  // A random start per process keeps ids unique across restarts in logs; the
  // counter keeps them unique within one.
  static std::atomic<uint64_t> next{std::random_device{}() * 0x9E3779B97F4A7C15ull};
  return absl::StrFormat("gdn-%016x", next.fetch_add(1));
}

}  // namespace gdnserve::server
