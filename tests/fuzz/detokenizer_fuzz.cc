// Fuzzes IncrementalDetokenizer against Tokenizer::Decode over arbitrary id
// sequences (two bytes per id, some out of range): the streamed pieces must
// concatenate to Decode(ids), and each piece must be whole UTF-8 characters
// (byte-fallback runs held, at most 3 bytes). With the first byte odd, the
// stream continues a prompt (starts_text = false) and must equal
// Decode(prompt + ids) minus Decode(prompt) when the prompt's text ends on a
// complete character (tokenizer.h's invariant).
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "engine/tokenizer.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

// Complete, well-formed UTF-8 (U+FFFD included) — what a client may be sent.
bool IsWholeUtf8(const std::string& s) {
  size_t i = 0;
  while (i < s.size()) {
    unsigned char c = s[i];
    int len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
    if (len == 0 || i + len > s.size()) return false;
    for (int k = 1; k < len; ++k)
      if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return false;
    i += len;
  }
  return true;
}

[[noreturn]] void Fail(const char* what, const std::string& want, const std::string& got) {
  std::fprintf(stderr, "detokenizer_fuzz: %s\n  want[%zu] \"%s\"\n  got [%zu] \"%s\"\n", what, want.size(),
               want.c_str(), got.size(), got.c_str());
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const gdnserve::Tokenizer& tok = gdnserve::fuzz::FuzzTokenizer();
  if (size < 1 || size > 4096) return 0;
  const bool continuation = data[0] & 1;
  // Byte 1 (continuation only): how many of the ids form the prompt.
  size_t prompt_len = 0;
  size_t pos = 1;
  if (continuation) {
    if (size < 2) return 0;
    prompt_len = data[1] % 16;
    pos = 2;
  }
  std::vector<int32_t> ids;
  const int32_t vocab = tok.vocab_size();
  for (; pos + 1 < size; pos += 2) {
    // Mostly in range; values >= vocab+8 wrap into range, a few stay outside.
    int32_t raw = static_cast<int32_t>(data[pos] | (data[pos + 1] << 8));
    ids.push_back(raw % (vocab + 8) - 4);
  }
  if (prompt_len > ids.size()) prompt_len = ids.size();
  std::vector<int32_t> prompt(ids.begin(), ids.begin() + prompt_len);
  std::vector<int32_t> gen(ids.begin() + prompt_len, ids.end());

  gdnserve::IncrementalDetokenizer detok(tok, !continuation);
  std::string streamed;
  for (int32_t id : gen) {
    std::string piece = detok.Push(id);
    if (!IsWholeUtf8(piece)) Fail("piece is not whole UTF-8", "", piece);
    if (detok.held_bytes() < 0 || detok.held_bytes() > 3) std::abort();
    streamed += piece;
  }
  std::string tail = detok.Flush();
  if (!IsWholeUtf8(tail)) Fail("flush is not whole UTF-8", "", tail);
  streamed += tail;

  if (!continuation) {
    std::string want = tok.Decode(gen);
    if (streamed != want) Fail("stream != Decode(ids)", want, streamed);
    return 0;
  }
  // The invariant holds for a non-empty prompt text ending on a complete
  // character; SentencePiece renders a trailing partial byte run as U+FFFD,
  // so check that the prompt does not end inside a byte-fallback run.
  std::string prompt_text = tok.Decode(prompt);
  if (prompt_text.empty()) return 0;
  std::vector<int32_t> all = prompt;
  all.insert(all.end(), gen.begin(), gen.end());
  std::string full = tok.Decode(all);
  if (full.compare(0, prompt_text.size(), prompt_text) != 0) return 0;  // prompt ended mid-character
  std::string want = full.substr(prompt_text.size());
  if (streamed != want) Fail("continuation != Decode(prompt+ids) - Decode(prompt)", want, streamed);
  return 0;
}
