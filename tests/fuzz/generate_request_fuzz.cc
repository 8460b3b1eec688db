// Fuzzes request validation from the wire: any bytes that parse as a
// gdnserve.v1.GenerateRequest go through ToEngineRequest (with the bundled
// tokenizer). An accepted request must respect the limits it was checked
// against.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "server/convert.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  namespace pb = gdnserve::server::pb;
  pb::GenerateRequest request;
  if (!request.ParseFromArray(data, static_cast<int>(size))) return 0;
  gdnserve::server::RequestLimits limits;
  limits.max_prompt_tokens = 64;
  limits.max_tokens_cap = 32;
  limits.max_n = 4;
  auto out = gdnserve::server::ToEngineRequest(request, gdnserve::fuzz::FuzzTokenizer(), limits, "fuzz",
                                               gdnserve::Clock::now());
  if (out.ok()) {
    const auto& r = *out;
    if (r.prompt.empty() || static_cast<int>(r.prompt.size()) > limits.max_prompt_tokens) std::abort();
    if (r.stop.max_tokens < 1 || r.stop.max_tokens > limits.max_tokens_cap) std::abort();
    if (r.n < 1 || r.n > limits.max_n) std::abort();
    if (static_cast<int>(r.stop.stop_strings.size()) > limits.max_stop_strings) std::abort();
    const int vocab = gdnserve::fuzz::FuzzTokenizer().vocab_size();
    for (int32_t id : r.prompt)
      if (id < 0 || id >= vocab) std::abort();
  }
  return 0;
}
