// SentencePiece tokenizer and the streaming detokenizer that turns generated
// ids into text one token at a time.
//
// Decode() is SentencePiece's own decoder. IncrementalDetokenizer reproduces
// it piece by piece (see the invariant on that class) so that a streamed
// response is byte for byte the text a non-streamed one would return.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace sentencepiece {
class SentencePieceProcessor;
}  // namespace sentencepiece

namespace gdnserve {

// Immutable after Load(); every method is const and safe to call from many
// threads at once.
class Tokenizer {
 public:
  // Loads a SentencePiece model file (tokenizer.model). A missing, unreadable
  // or corrupt file is an error naming `path`.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Load(const std::string& path);

  ~Tokenizer();
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  // SentencePiece encoding (the model's normalizer applies: NFKC for models
  // trained with the default rule, leading/trailing/repeated spaces removed).
  // With `add_bos`, bos_id() is prepended when the model has one.
  std::vector<int32_t> Encode(std::string_view text, bool add_bos) const;

  // The whole text of `ids`, exactly as SentencePiece decodes it: control
  // tokens render as nothing, the unknown token as its surface (" \u2047 "),
  // byte-fallback runs as UTF-8 with each invalid byte as U+FFFD, and the
  // leading space of the first text piece is dropped. Ids outside
  // [0, vocab_size()) are skipped as if absent; use CheckIds() to reject them.
  std::string Decode(absl::Span<const int32_t> ids) const;

  int32_t vocab_size() const { return static_cast<int32_t>(tokens_.size()); }
  // -1 when the model defines no such token.
  int32_t bos_id() const { return bos_id_; }
  int32_t eos_id() const { return eos_id_; }

  // Control tokens (<s>, </s>, ...), which decode to nothing, and the unknown
  // token, which decodes to a placeholder rather than text of its own.
  // False for out-of-range ids.
  bool IsSpecial(int32_t id) const;
  // A byte-fallback token (<0xAB>).
  bool IsByte(int32_t id) const;

  // OK when every id is in [0, vocab_size()); otherwise InvalidArgument naming
  // the first bad id and its position.
  absl::Status CheckIds(absl::Span<const int32_t> ids) const;

  // The bytes a token contributes in the middle of a text: its piece with
  // U+2581 as ' ', one raw byte for <0xAB>, "" for control tokens, the
  // unknown surface for <unk>, "" for out-of-range ids. A byte token's byte
  // alone may be part of a UTF-8 character, so this is not always valid
  // UTF-8. The view lives as long as the Tokenizer.
  std::string_view TokenBytes(int32_t id) const;

  // TokenBytes as text to show a person (logprobs, tokenize responses):
  // the bytes when they are valid UTF-8, else each byte as "<0xAB>".
  std::string TokenDisplayText(int32_t id) const;

 private:
  friend class IncrementalDetokenizer;

  enum class Kind : uint8_t { kText, kByte, kControl, kUnknown };
  struct TokenInfo {
    Kind kind = Kind::kText;
    // kText: the piece starts with U+2581 (bytes then starts with ' ').
    bool leading_space = false;
    std::string bytes;  // what TokenBytes() returns
  };

  Tokenizer() = default;
  absl::Status Init(const std::string& path);
  absl::Status DetectLeadingSpaceRule(const std::string& path);

  std::unique_ptr<sentencepiece::SentencePieceProcessor> processor_;
  // Indexed by id; precomputed so that streaming costs O(bytes of the token).
  std::vector<TokenInfo> tokens_;
  int32_t bos_id_ = -1;
  int32_t eos_id_ = -1;
  // SentencePiece drops the U+2581 of the first piece of a text, but only for
  // models that add a dummy prefix or remove extra whitespace...
  bool strip_leading_space_ = true;
  // ...and, up to 0.1.9x, keeps dropping it from every piece while the text
  // is still empty ("▁ ▁the" -> "the"); later versions stop after the first
  // piece whose U+2581 was dropped when the model keeps extra whitespace.
  // Detected from the linked library at load time.
  bool strip_only_first_space_piece_ = false;
};

// Streams the text of generated ids. Push() returns the text each id
// completes; Flush() the rest at the end of the stream.
//
// Invariant: the concatenation of every Push() and the final Flush() equals
//  - Decode(ids) when constructed with starts_text = true;
//  - Decode(prompt + ids) minus its prefix Decode(prompt) when
//    starts_text = false and the prompt's text is non-empty and ends on a
//    complete character (no trailing partial byte-fallback sequence). A
//    continuation then keeps the leading space of its first piece, as vLLM's
//    and llama.cpp's servers do.
//
// Only complete UTF-8 characters are returned: bytes of a character split
// across byte-fallback tokens are held (at most 3) until the character is
// complete, and are released as U+FFFD, one per byte exactly as SentencePiece
// renders them, as soon as they can no longer form a valid character, when a
// non-byte token arrives (SentencePiece ends a byte run there, even at an
// invisible control token) or at Flush(). Each call costs O(bytes of the
// token). Ids outside [0, vocab_size()) are ignored, as Decode() skips them.
//
// Copyable and cheap; the Tokenizer must outlive it. Not thread-safe.
class IncrementalDetokenizer {
 public:
  IncrementalDetokenizer(const Tokenizer& tokenizer, bool starts_text);

  std::string Push(int32_t id);
  std::string Flush();

  // Bytes of an incomplete character waiting for the next token (0..3).
  int held_bytes() const { return static_cast<int>(held_.size()); }

 private:
  // Appends to `out` every held character whose rendering is decided;
  // with `run_ended` nothing more can join the held bytes, so all of them
  // are decided.
  void DrainHeld(bool run_ended, std::string* out);

  const Tokenizer* tokenizer_;
  // True while the leading-space rule still applies to the next text piece.
  bool at_text_start_;
  std::string held_;  // at most 3 bytes, so never allocates (SSO)
};

}  // namespace gdnserve
