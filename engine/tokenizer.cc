#include "engine/tokenizer.h"

// sentencepiece_processor.h (0.1.9x) declares `namespace absl { using
// std::string_view; }`, which collides with Abseil's absl::string_view (its
// own class where ABSL_OPTION_USE_STD_STRING_VIEW is 0, as in Debian's
// build). Renaming that namespace while the header is parsed leaves its
// declarations unchanged for the linker: the alias names std::string_view.
#define absl gdnserve_sentencepiece_absl
#include <sentencepiece_processor.h>
#undef absl

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <system_error>
#include <type_traits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"

namespace gdnserve {
namespace {

// SentencePiece's ids are int; the engine's are int32_t. Same type on every
// platform we build for, which lets ids pass through without copies.
static_assert(std::is_same_v<int, int32_t>);

// Plain char arrays: Abseil's string_view (see above) is not std's and does
// not convert from it.
constexpr char kSpaceSymbol[] = "\xE2\x96\x81";      // U+2581
constexpr char kReplacementChar[] = "\xEF\xBF\xBD";  // U+FFFD

// SentencePiece's status codes are numbered as absl's (both mirror
// google.rpc.Code), so the code carries over unchanged.
absl::Status FromSentencePiece(const sentencepiece::util::Status& status, const std::string& path) {
  return absl::Status(static_cast<absl::StatusCode>(status.code()),
                      absl::StrCat("tokenizer ", path, ": ", status.message()));
}

// The file is read here rather than by SentencePieceProcessor::Load, whose
// reader throws an uncaught std::ios_base::failure for a directory (0.1.97).
absl::StatusOr<std::string> ReadModelFile(const std::string& path) {
  std::error_code error;
  const auto status = std::filesystem::status(path, error);
  if (!std::filesystem::exists(status)) {
    return absl::NotFoundError(absl::StrCat("tokenizer ", path, ": no such file"));
  }
  if (!std::filesystem::is_regular_file(status)) {
    return absl::InvalidArgumentError(absl::StrCat("tokenizer ", path, ": not a regular file"));
  }
  std::ifstream in(path, std::ios::binary);
  if (!in.is_open()) {
    return absl::PermissionDeniedError(
        absl::StrCat("tokenizer ", path, ": cannot open: ", std::strerror(errno)));
  }
  std::string contents((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) {
    return absl::DataLossError(absl::StrCat("tokenizer ", path, ": read error"));
  }
  if (contents.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("tokenizer ", path, ": empty file"));
  }
  return contents;
}

// "<0xAB>" -> 0xAB; -1 when the piece is not of that form.
int ParseBytePiece(std::string_view piece) {
  if (piece.size() != 6 || piece.substr(0, 3) != "<0x" || piece[5] != '>') {
    return -1;
  }
  int value = 0;
  for (const char c : piece.substr(3, 2)) {
    value *= 16;
    if (c >= '0' && c <= '9') {
      value += c - '0';
    } else if (c >= 'A' && c <= 'F') {
      value += c - 'A' + 10;
    } else if (c >= 'a' && c <= 'f') {
      value += c - 'a' + 10;
    } else {
      return -1;
    }
  }
  return value;
}

// Well-formed UTF-8 (Unicode Table 3-7). For the lead byte `b0` gives the
// sequence length and the allowed range of the second byte (later bytes are
// always 0x80..0xBF); length 0 for a byte that cannot start a character.
// SentencePiece's decoder accepts exactly these sequences: its checks (trail
// bytes, no overlong form, no surrogate, at most U+10FFFF) are this table.
struct LeadInfo {
  int length;
  uint8_t second_lo;
  uint8_t second_hi;
};

LeadInfo ClassifyLead(uint8_t b0) {
  if (b0 < 0x80) return {1, 0, 0};
  if (b0 >= 0xC2 && b0 <= 0xDF) return {2, 0x80, 0xBF};
  if (b0 == 0xE0) return {3, 0xA0, 0xBF};
  if (b0 == 0xED) return {3, 0x80, 0x9F};
  if (b0 >= 0xE1 && b0 <= 0xEF) return {3, 0x80, 0xBF};
  if (b0 == 0xF0) return {4, 0x90, 0xBF};
  if (b0 == 0xF4) return {4, 0x80, 0x8F};
  if (b0 >= 0xF1 && b0 <= 0xF3) return {4, 0x80, 0xBF};
  return {0, 0, 0};
}

bool IsWellFormedUtf8(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    const LeadInfo lead = ClassifyLead(static_cast<uint8_t>(s[i]));
    if (lead.length == 0 || i + lead.length > s.size()) return false;
    for (int k = 1; k < lead.length; ++k) {
      const auto b = static_cast<uint8_t>(s[i + k]);
      const uint8_t lo = k == 1 ? lead.second_lo : 0x80, hi = k == 1 ? lead.second_hi : 0xBF;
      if (b < lo || b > hi) return false;
    }
    i += lead.length;
  }
  return true;
}

}  // namespace

Tokenizer::~Tokenizer() = default;

std::string Tokenizer::TokenDisplayText(int32_t id) const {
  const std::string_view bytes = TokenBytes(id);
  if (IsWellFormedUtf8(bytes)) return std::string(bytes);
  std::string out;
  for (char c : bytes) {
    char buf[8];
    std::snprintf(buf, sizeof(buf), "<0x%02X>", static_cast<unsigned char>(c));
    out += buf;
  }
  return out;
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::Load(const std::string& path) {
  std::unique_ptr<Tokenizer> tokenizer(new Tokenizer());
  if (absl::Status status = tokenizer->Init(path); !status.ok()) return status;
  return tokenizer;
}

absl::Status Tokenizer::Init(const std::string& path) {
  absl::StatusOr<std::string> serialized = ReadModelFile(path);
  if (!serialized.ok()) return serialized.status();
  processor_ = std::make_unique<sentencepiece::SentencePieceProcessor>();
  try {
    if (const auto status = processor_->LoadFromSerializedProto(*serialized); !status.ok()) {
      return FromSentencePiece(status, path);
    }
  } catch (const std::exception& e) {
    // A corrupt model can make the protobuf parser ask for absurd sizes;
    // that is a bad file, not a reason to take the server down.
    return absl::InvalidArgumentError(absl::StrCat("tokenizer ", path, ": ", e.what()));
  }
  const int size = processor_->GetPieceSize();
  if (size <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("tokenizer ", path, ": the model has no pieces"));
  }
  bos_id_ = processor_->bos_id();
  eos_id_ = processor_->eos_id();

  // Decoding the unknown token alone gives its surface, whichever
  // unk_surface the model was trained with.
  std::string unk_surface;
  if (const int unk = processor_->unk_id(); unk >= 0) {
    if (const auto status = processor_->Decode(std::vector<int>{unk}, &unk_surface); !status.ok()) {
      return FromSentencePiece(status, path);
    }
  }

  tokens_.resize(size);
  for (int id = 0; id < size; ++id) {
    TokenInfo& token = tokens_[id];
    const std::string& piece = processor_->IdToPiece(id);
    if (processor_->IsControl(id)) {
      token.kind = Kind::kControl;
    } else if (processor_->IsUnknown(id)) {
      token.kind = Kind::kUnknown;
      token.bytes = unk_surface;
    } else if (processor_->IsByte(id)) {
      const int byte = ParseBytePiece(piece);
      if (byte < 0) {
        return absl::InvalidArgumentError(absl::StrCat("tokenizer ", path, ": byte token ", id,
                                                       " has malformed piece '", piece, "'"));
      }
      token.kind = Kind::kByte;
      token.bytes.assign(1, static_cast<char>(byte));
    } else {
      token.kind = Kind::kText;
      token.leading_space = std::string_view(piece).starts_with(kSpaceSymbol);
      token.bytes = absl::StrReplaceAll(piece, {{kSpaceSymbol, " "}});
    }
  }
  return DetectLeadingSpaceRule(path);
}

// The leading-space rule depends on the normalizer spec (not reachable
// without protobuf headers) and on the SentencePiece version, so ask the
// library itself: decode a U+2581 piece alone, then two "▁" pieces.
absl::Status Tokenizer::DetectLeadingSpaceRule(const std::string& path) {
  auto decode = [&](std::vector<int> ids, std::string* text) {
    const auto status = processor_->Decode(ids, text);
    return status.ok() ? absl::OkStatus() : FromSentencePiece(status, path);
  };
  for (int id = 0; id < vocab_size(); ++id) {
    const TokenInfo& token = tokens_[id];
    if (token.kind != Kind::kText || !token.leading_space) continue;
    std::string text;
    if (absl::Status status = decode({id}, &text); !status.ok()) return status;
    strip_leading_space_ = text != token.bytes;
    break;
  }
  // Only a bare "▁" piece, whose stripped surface is empty, can tell the
  // versions apart; without one they decode every sequence alike.
  const int space_id = processor_->PieceToId(kSpaceSymbol);
  if (strip_leading_space_ && space_id >= 0 && space_id < vocab_size() &&
      tokens_[space_id].kind == Kind::kText && tokens_[space_id].bytes == " ") {
    std::string text;
    if (absl::Status status = decode({space_id, space_id}, &text); !status.ok()) {
      return status;
    }
    strip_only_first_space_piece_ = !text.empty();
  }
  return absl::OkStatus();
}

std::vector<int32_t> Tokenizer::Encode(std::string_view text, bool add_bos) const {
  std::vector<int32_t> ids;
  if (add_bos && bos_id_ >= 0) ids.push_back(bos_id_);
  std::vector<int> encoded;
  // Fails only on a processor that did not load, which Load() rules out.
  processor_->Encode(text, &encoded).IgnoreError();
  ids.insert(ids.end(), encoded.begin(), encoded.end());
  return ids;
}

std::string Tokenizer::Decode(absl::Span<const int32_t> ids) const {
  std::vector<int> valid;
  valid.reserve(ids.size());
  for (const int32_t id : ids) {
    if (id >= 0 && id < vocab_size()) valid.push_back(id);
  }
  std::string text;
  // Fails only on out-of-range ids (filtered above) or an unloaded processor.
  processor_->Decode(valid, &text).IgnoreError();
  return text;
}

bool Tokenizer::IsSpecial(int32_t id) const {
  if (id < 0 || id >= vocab_size()) return false;
  const Kind kind = tokens_[id].kind;
  return kind == Kind::kControl || kind == Kind::kUnknown;
}

bool Tokenizer::IsByte(int32_t id) const {
  return id >= 0 && id < vocab_size() && tokens_[id].kind == Kind::kByte;
}

absl::Status Tokenizer::CheckIds(absl::Span<const int32_t> ids) const {
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= vocab_size()) {
      return absl::InvalidArgumentError(absl::StrCat("token id ", ids[i], " at position ", i,
                                                     " is out of range [0, ", vocab_size(), ")"));
    }
  }
  return absl::OkStatus();
}

std::string_view Tokenizer::TokenBytes(int32_t id) const {
  if (id < 0 || id >= vocab_size()) return {};
  return tokens_[id].bytes;
}

IncrementalDetokenizer::IncrementalDetokenizer(const Tokenizer& tokenizer, bool starts_text)
    : tokenizer_(&tokenizer), at_text_start_(starts_text) {}

std::string IncrementalDetokenizer::Push(int32_t id) {
  std::string out;
  if (id < 0 || id >= tokenizer_->vocab_size()) return out;
  const Tokenizer::TokenInfo& token = tokenizer_->tokens_[id];

  if (token.kind == Tokenizer::Kind::kByte) {
    // Every byte renders as something (its character or U+FFFD), so the
    // text is no longer empty for the pieces that follow.
    at_text_start_ = false;
    held_ += token.bytes;
    DrainHeld(/*run_ended=*/false, &out);
    return out;
  }

  DrainHeld(/*run_ended=*/true, &out);
  std::string_view surface = token.bytes;
  bool dropped_space = false;
  if (token.kind == Tokenizer::Kind::kText && token.leading_space && at_text_start_ &&
      tokenizer_->strip_leading_space_) {
    surface.remove_prefix(1);
    dropped_space = true;
  }
  out.append(surface);
  if (!surface.empty() || (dropped_space && tokenizer_->strip_only_first_space_piece_)) {
    at_text_start_ = false;
  }
  return out;
}

std::string IncrementalDetokenizer::Flush() {
  std::string out;
  DrainHeld(/*run_ended=*/true, &out);
  return out;
}

// Mirrors SentencePiece's decoding of a byte run: at each position, a
// well-formed character is taken whole; anything else turns one byte into
// U+FFFD and decoding resumes at the next byte. A well-formed proper prefix
// is the only case that may still go either way, so it waits for more bytes
// unless the run has ended.
void IncrementalDetokenizer::DrainHeld(bool run_ended, std::string* out) {
  size_t pos = 0;
  while (pos < held_.size()) {
    const uint8_t b0 = static_cast<uint8_t>(held_[pos]);
    const LeadInfo lead = ClassifyLead(b0);
    const size_t avail = held_.size() - pos;
    bool well_formed = lead.length > 0;
    for (size_t j = 1; well_formed && j < avail && j < static_cast<size_t>(lead.length); ++j) {
      const uint8_t b = static_cast<uint8_t>(held_[pos + j]);
      const uint8_t lo = j == 1 ? lead.second_lo : 0x80;
      const uint8_t hi = j == 1 ? lead.second_hi : 0xBF;
      well_formed = b >= lo && b <= hi;
    }
    if (well_formed && avail >= static_cast<size_t>(lead.length)) {
      out->append(held_, pos, lead.length);
      pos += lead.length;
    } else if (well_formed && !run_ended) {
      break;
    } else {
      out->append(kReplacementChar);
      ++pos;
    }
  }
  held_.erase(0, pos);
}

}  // namespace gdnserve
