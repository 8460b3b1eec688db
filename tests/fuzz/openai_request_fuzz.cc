// Fuzzes the OpenAI request parser: the first byte picks the endpoint, the
// rest is the body. Accepted requests are tokenized with the bundled
// tokenizer and the default chat template, and must respect the limits.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "server/http/openai_request.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace gdnserve::server::http;
  if (size == 0) return 0;
  Endpoint endpoint = (data[0] & 1) ? Endpoint::kChatCompletions : Endpoint::kCompletions;
  std::string_view body(reinterpret_cast<const char*>(data) + 1, size - 1);
  HttpLimits limits;
  limits.max_prompt_tokens = 256;
  limits.max_tokens_cap = 64;
  auto parsed = ParseOpenAIRequest(endpoint, body, limits);
  if (!parsed.ok()) return 0;
  if (parsed->n < 1 || parsed->n > limits.max_n) std::abort();
  if (parsed->stop.max_tokens < 0 || parsed->stop.max_tokens > limits.max_tokens_cap) std::abort();
  if (static_cast<int>(parsed->stop.stop_strings.size()) > limits.max_stop_strings) std::abort();
  auto request = ToGenerationRequest(*parsed, gdnserve::fuzz::FuzzTokenizer(), ChatTemplate::Default(), limits, "fuzz");
  if (request.ok()) {
    if (request->prompt.empty() || static_cast<int>(request->prompt.size()) > limits.max_prompt_tokens) std::abort();
    const int vocab = gdnserve::fuzz::FuzzTokenizer().vocab_size();
    for (int32_t id : request->prompt)
      if (id < 0 || id >= vocab) std::abort();
  }
  return 0;
}
