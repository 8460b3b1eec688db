// Tokenizer and IncrementalDetokenizer against SentencePiece's own decoder.
// Randomized (seed printed, GDNSERVE_TEST_SEED replays): random texts over
// many scripts and random id sequences heavy in byte-fallback tokens,
// including ones that form invalid UTF-8.

#include "engine/tokenizer.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "tests/test_util.h"

namespace gdnserve {
namespace {

using ::gdnserve::testing::EnvOr;
using ::gdnserve::testing::TestSeed;

constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD

// ---------------------------------------------------------------------------
// The test model: $GDNSERVE_TEST_MODELS/tiny/tokenizer.model under ctest,
// otherwise one trained here (tools/train_tokenizer.sh, ~seconds).

// A fresh directory under the system temp dir, removed with its contents.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "gdn_tok_XXXXXX").string();
    if (mkdtemp(tmpl.data()) != nullptr) path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ignored;
    if (!path_.empty()) std::filesystem::remove_all(path_, ignored);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

std::unique_ptr<TempDir>& TrainedDir() {
  static auto* dir = new std::unique_ptr<TempDir>;
  return *dir;
}

std::string ModelPath() {
  static const auto* path = new std::string([]() -> std::string {
    if (const char* models = std::getenv("GDNSERVE_TEST_MODELS")) {
      return absl::StrCat(models, "/tiny/tokenizer.model");
    }
    TrainedDir() = std::make_unique<TempDir>();
    const std::string& dir = TrainedDir()->path();
    const std::string script = EnvOr("GDNSERVE_SOURCE_DIR", ".") + "/tools/train_tokenizer.sh";
    const std::string cmd = absl::StrCat("'", script, "' '", dir, "' 512 > /dev/null");
    if (dir.empty() || std::system(cmd.c_str()) != 0) {
      std::fprintf(stderr, "training a test tokenizer failed: %s\n", cmd.c_str());
    }
    return dir + "/tokenizer.model";
  }());
  return *path;
}

class Environment : public ::testing::Environment {
 public:
  void SetUp() override {
    TestSeed();  // prints the seed once
    std::fprintf(stderr, "tokenizer: %s\n", ModelPath().c_str());
  }
  void TearDown() override { TrainedDir().reset(); }
};
const auto* const kEnvironment = ::testing::AddGlobalTestEnvironment(new Environment);

// ---------------------------------------------------------------------------
// Helpers.

// Independent of the implementation's table: decodes code points and checks
// their ranges.
bool IsValidUtf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto b = static_cast<uint8_t>(s[i]);
    int n;
    uint32_t cp;
    if (b < 0x80) {
      n = 1, cp = b;
    } else if ((b & 0xE0) == 0xC0) {
      n = 2, cp = b & 0x1F;
    } else if ((b & 0xF0) == 0xE0) {
      n = 3, cp = b & 0x0F;
    } else if ((b & 0xF8) == 0xF0) {
      n = 4, cp = b & 0x07;
    } else {
      return false;
    }
    if (i + n > s.size()) return false;
    for (int j = 1; j < n; ++j) {
      const auto c = static_cast<uint8_t>(s[i + j]);
      if ((c & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (c & 0x3F);
    }
    static constexpr uint32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < kMin[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += n;
  }
  return true;
}

std::string AppendUtf8(std::string s, uint32_t cp) {
  if (cp < 0x80) {
    s += static_cast<char>(cp);
  } else if (cp < 0x800) {
    s += static_cast<char>(0xC0 | (cp >> 6));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    s += static_cast<char>(0xE0 | (cp >> 12));
    s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    s += static_cast<char>(0xF0 | (cp >> 18));
    s += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  }
  return s;
}

// Readable failure messages: non-ASCII bytes as \xNN.
std::string Escape(std::string_view s) {
  std::string out;
  for (const char c : s) {
    const auto b = static_cast<uint8_t>(c);
    if (b >= 0x20 && b < 0x7F) {
      out += c;
    } else {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02X", b);
      out += buf;
    }
  }
  return out;
}

std::string IdsString(absl::Span<const int32_t> ids) {
  return absl::StrCat("[", absl::StrJoin(ids, " "), "]");
}

class TokenizerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto loaded = Tokenizer::Load(ModelPath());
    if (loaded.ok()) tokenizer_ = std::move(*loaded).release();
  }
  static void TearDownTestSuite() {
    delete tokenizer_;
    tokenizer_ = nullptr;
  }

  void SetUp() override {
    ASSERT_NE(tokenizer_, nullptr) << Tokenizer::Load(ModelPath()).status();
    const std::string name = ::testing::UnitTest::GetInstance()->current_test_info()->name();
    rng_.seed(TestSeed() + std::hash<std::string>{}(name));
    for (int32_t id = 0; id < tok().vocab_size(); ++id) {
      if (tok().IsByte(id)) byte_id_[static_cast<uint8_t>(tok().TokenBytes(id)[0])] = id;
      if (!tok().IsByte(id) && tok().TokenBytes(id) == " ") space_id_ = id;
    }
  }

  const Tokenizer& tok() const { return *tokenizer_; }
  int Uniform(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng_); }

  // Streams `ids` and checks what every step may and may not return.
  // With `check_prefixes`, after each Push the text so far plus a Flush of a
  // copy must equal Decode of the ids so far, i.e. nothing is held back that
  // is already decided (only for streams that start the text).
  std::string Stream(absl::Span<const int32_t> ids, bool starts_text, bool check_prefixes = false) {
    IncrementalDetokenizer detok(tok(), starts_text);
    std::string text;
    for (size_t i = 0; i < ids.size(); ++i) {
      const std::string piece = detok.Push(ids[i]);
      EXPECT_TRUE(IsValidUtf8(piece)) << "step " << i << " returned " << Escape(piece);
      EXPECT_LE(detok.held_bytes(), 3);
      text += piece;
      if (check_prefixes) {
        IncrementalDetokenizer copy = detok;
        const std::string prefix_text = text + copy.Flush();
        const std::string expected = tok().Decode(ids.subspan(0, i + 1));
        if (prefix_text != expected) {
          ADD_FAILURE() << "after " << i + 1 << " of " << IdsString(ids) << ": streamed "
                        << Escape(prefix_text) << ", Decode " << Escape(expected);
          check_prefixes = false;  // one report per sequence
        }
      }
    }
    const std::string tail = detok.Flush();
    EXPECT_TRUE(IsValidUtf8(tail)) << Escape(tail);
    EXPECT_EQ(detok.held_bytes(), 0);
    return text + tail;
  }

  void ExpectStreamEqualsDecode(absl::Span<const int32_t> ids, bool check_prefixes = false) {
    const std::string decoded = tok().Decode(ids);
    EXPECT_TRUE(IsValidUtf8(decoded)) << Escape(decoded);
    EXPECT_EQ(Escape(Stream(ids, /*starts_text=*/true, check_prefixes)), Escape(decoded))
        << "ids " << IdsString(ids);
  }

  // A random word of characters NFKC leaves alone (SentencePiece's default
  // normalizer would otherwise change them and no round trip is exact).
  std::string RandomWord() {
    struct Range {
      uint32_t lo, hi;
    };
    static constexpr Range kScripts[] = {
        {'a', 'z'},         {'A', 'Z'},       {'0', '9'},       {0x00C0, 0x00FF},
        {0x03B1, 0x03C9},   {0x0430, 0x044F}, {0x05D0, 0x05EA}, {0x0627, 0x064A},
        {0x4E00, 0x9FA5},   {0x3042, 0x3093}, {0xAC00, 0xD7A3}, {0x1F600, 0x1F64F},
        {0x1F300, 0x1F5FF}, {0x0915, 0x0939}, {0x0E01, 0x0E2E},
    };
    static constexpr char kPunct[] = ".,!?;:'\"()-";
    const Range script = kScripts[Uniform(0, static_cast<int>(std::size(kScripts)) - 1)];
    std::string word;
    const int len = Uniform(1, 8);
    for (int i = 0; i < len; ++i) {
      word = AppendUtf8(std::move(word), Uniform(script.lo, script.hi));
      // Combining marks with no precomposed form: Devanagari and Thai vowel
      // signs, and U+0332 COMBINING LOW LINE after Latin letters.
      uint32_t mark = 0;
      if (script.lo == 0x0915 && Uniform(0, 1)) mark = Uniform(0x093E, 0x094C);
      if (script.lo == 0x0E01 && Uniform(0, 2) == 0) mark = Uniform(0x0E34, 0x0E37);
      if (script.lo == 'a' && Uniform(0, 5) == 0) mark = 0x0332;
      if (mark != 0) word = AppendUtf8(std::move(word), mark);
    }
    if (Uniform(0, 4) == 0) word += kPunct[Uniform(0, static_cast<int>(std::size(kPunct)) - 2)];
    return word;
  }

  // Normalized text: words of mixed scripts, single spaces, no spaces at the
  // ends.
  std::string RandomText() {
    std::string text = RandomWord();
    const int words = Uniform(0, 12);
    for (int i = 0; i < words; ++i) {
      text += ' ';
      text += RandomWord();
    }
    return text;
  }

  // Any text: random code points from all planes, runs of spaces, tabs,
  // newlines.
  std::string RandomRawText() {
    std::string text;
    const int len = Uniform(0, 40);
    for (int i = 0; i < len; ++i) {
      uint32_t cp;
      switch (Uniform(0, 4)) {
        case 0:
          cp = " \t\n"[Uniform(0, 2)];
          break;
        case 1:
          cp = Uniform(0x20, 0x7E);
          break;
        case 2:
          cp = Uniform(0x80, 0xFFFF);
          break;
        case 3:
          cp = Uniform(0x10000, 0x10FFFF);
          break;
        default:
          cp = Uniform(0x1F300, 0x1FAFF);
          break;
      }
      if (cp >= 0xD800 && cp <= 0xDFFF) cp = 0xFFFD;
      text = AppendUtf8(std::move(text), cp);
    }
    return text;
  }

  // Ids weighted toward what breaks streaming: byte tokens of whole, split,
  // truncated and invalid UTF-8, control tokens between bytes, and bare
  // U+2581 pieces at the start.
  std::vector<int32_t> RandomIds(int max_len) {
    std::vector<int32_t> ids;
    const int len = Uniform(0, max_len);
    auto push_bytes = [&](std::string_view bytes) {
      for (const char c : bytes) ids.push_back(byte_id_[static_cast<uint8_t>(c)]);
    };
    while (static_cast<int>(ids.size()) < len) {
      switch (Uniform(0, 9)) {
        case 0:
        case 1:
          ids.push_back(Uniform(0, tok().vocab_size() - 1));
          break;
        case 2:
          ids.push_back(std::vector<int32_t>{tok().bos_id(), tok().eos_id(), 0}[Uniform(0, 2)]);
          break;
        case 3:
        case 4:
          push_bytes(AppendUtf8(
              "", Uniform(0, 3) == 0 ? Uniform(0x10000, 0x10FFFF) : Uniform(0x80, 0xD7FF)));
          break;
        case 5: {  // a character cut short
          const std::string c = AppendUtf8("", Uniform(0x800, 0x10FFFF));
          push_bytes(std::string_view(c).substr(0, Uniform(1, c.size() - 1)));
          break;
        }
        case 6:
          ids.push_back(byte_id_[Uniform(0x80, 0xFF)]);
          break;
        case 7:
          ids.push_back(byte_id_[Uniform(0, 0xFF)]);
          break;
        case 8:
          if (space_id_ >= 0) ids.push_back(space_id_);
          break;
        default: {
          const auto word = tok().Encode(RandomWord(), false);
          ids.insert(ids.end(), word.begin(), word.end());
        }
      }
    }
    return ids;
  }

  static inline Tokenizer* tokenizer_ = nullptr;
  std::mt19937_64 rng_;
  int32_t byte_id_[256] = {};
  int32_t space_id_ = -1;  // the bare U+2581 piece, if the model has one
};

// ---------------------------------------------------------------------------
// Load errors.

TEST(TokenizerLoadTest, MissingFileIsAnErrorNamingThePath) {
  const std::string path = absl::StrCat("/nonexistent/", TestSeed(), "/tokenizer.model");
  const auto loaded = Tokenizer::Load(path);
  ASSERT_FALSE(loaded.ok());
  EXPECT_NE(loaded.status().message().find(path), std::string::npos) << loaded.status();
  EXPECT_FALSE(Tokenizer::Load("").ok());
}

TEST(TokenizerLoadTest, CorruptFilesAreErrorsNotCrashes) {
  std::mt19937_64 rng(TestSeed());
  const TempDir temp;
  ASSERT_FALSE(temp.path().empty());
  const std::filesystem::path dir = temp.path();
  auto write = [&](const std::string& name, const std::string& bytes) {
    const std::string path = (dir / name).string();
    std::ofstream(path, std::ios::binary) << bytes;
    return path;
  };
  std::string garbage(std::uniform_int_distribution<int>(1, 5000)(rng), '\0');
  for (char& c : garbage) c = static_cast<char>(rng());

  std::vector<std::string> bad = {
      write("empty.model", ""), write("garbage.model", garbage),
      write("text.model", "this is not a sentencepiece model\n"),
      dir.string(),  // a directory
  };
  for (const std::string& path : bad) {
    const auto loaded = Tokenizer::Load(path);
    ASSERT_FALSE(loaded.ok()) << path;
    EXPECT_NE(loaded.status().message().find(path), std::string::npos) << loaded.status();
  }

  // A truncated model mostly fails to parse; a cut that happens to fall on a
  // field boundary may leave a smaller valid model. Either is fine, a crash
  // is not.
  std::ifstream in(ModelPath(), std::ios::binary);
  const std::string model((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  ASSERT_FALSE(model.empty());
  int failed = 0;
  for (int i = 0; i < 20; ++i) {
    const size_t cut = std::uniform_int_distribution<size_t>(1, model.size() - 1)(rng);
    const std::string path = write("truncated.model", model.substr(0, cut));
    const auto loaded = Tokenizer::Load(path);
    if (loaded.ok()) {
      (*loaded)->Decode((*loaded)->Encode("still works?", true));
    } else {
      ++failed;
      EXPECT_NE(loaded.status().message().find(path), std::string::npos) << loaded.status();
    }
  }
  EXPECT_GT(failed, 0);
}

// ---------------------------------------------------------------------------
// Vocabulary.

TEST_F(TokenizerTest, VocabularyAndSpecialTokens) {
  EXPECT_GT(tok().vocab_size(), 3 + 256);  // unk, bos, eos and the byte pieces at least
  EXPECT_EQ(tok().bos_id(), 1);
  EXPECT_EQ(tok().eos_id(), 2);
  EXPECT_TRUE(tok().IsSpecial(0));  // <unk>
  EXPECT_TRUE(tok().IsSpecial(1));
  EXPECT_TRUE(tok().IsSpecial(2));
  EXPECT_FALSE(tok().IsSpecial(-1));
  EXPECT_FALSE(tok().IsSpecial(tok().vocab_size()));
  int bytes = 0;
  for (int32_t id = 0; id < tok().vocab_size(); ++id) {
    if (tok().IsByte(id)) {
      ++bytes;
      EXPECT_FALSE(tok().IsSpecial(id));
      EXPECT_EQ(tok().TokenBytes(id).size(), 1u);
    }
  }
  EXPECT_EQ(bytes, 256);
  for (int b = 0; b < 256; ++b)
    EXPECT_EQ(static_cast<uint8_t>(tok().TokenBytes(byte_id_[b])[0]), b);
  EXPECT_EQ(tok().TokenBytes(1), "");
  EXPECT_EQ(tok().TokenBytes(-5), "");
}

TEST_F(TokenizerTest, TokenBytesAreWhatAPieceAddsMidText) {
  // A text piece with no leading space, so the next piece keeps its own.
  int32_t anchor = -1;
  for (int32_t id = 0; id < tok().vocab_size() && anchor < 0; ++id) {
    const std::string_view bytes = tok().TokenBytes(id);
    if (!tok().IsSpecial(id) && !tok().IsByte(id) && !bytes.empty() && bytes[0] != ' ') {
      anchor = id;
    }
  }
  ASSERT_GE(anchor, 0);
  const std::string prefix = tok().Decode(std::vector<int32_t>{anchor});
  for (int32_t id = 0; id < tok().vocab_size(); ++id) {
    if (tok().IsByte(id)) continue;  // alone a byte may not be a character
    EXPECT_EQ(tok().Decode(std::vector<int32_t>{anchor, id}),
              prefix + std::string(tok().TokenBytes(id)))
        << "id " << id;
  }
}

TEST_F(TokenizerTest, CheckIdsNamesFirstOutOfRangeIdAndPosition) {
  EXPECT_TRUE(tok().CheckIds({}).ok());
  std::vector<int32_t> ids(Uniform(1, 50));
  for (auto& id : ids) id = Uniform(0, tok().vocab_size() - 1);
  EXPECT_TRUE(tok().CheckIds(ids).ok());
  const size_t pos = Uniform(0, ids.size() - 1);
  const int32_t bad = Uniform(0, 1) ? tok().vocab_size() + Uniform(0, 1000) : -Uniform(1, 1000);
  ids[pos] = bad;
  ids.push_back(-7);  // a later bad id is not the one reported
  const absl::Status status = tok().CheckIds(ids);
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find(absl::StrCat("token id ", bad, " at position ", pos)),
            std::string::npos)
      << status;
  // Decode skips what CheckIds rejects rather than crashing.
  std::vector<int32_t> valid = ids;
  std::erase_if(valid, [&](int32_t id) { return id < 0 || id >= tok().vocab_size(); });
  EXPECT_EQ(tok().Decode(ids), tok().Decode(valid));
  EXPECT_EQ(Stream(ids, true), tok().Decode(valid));
}

// ---------------------------------------------------------------------------
// Round trips.

const std::vector<std::string>& FixedTexts() {
  static const auto* texts = new std::vector<std::string>{
      "Hello, world! The quick brown fox jumps over the lazy dog. 0123456789",
      "~`!@#$%^&*()_+-=[]{}|\\;':\",./<>?",
      "I \xF0\x9F\x98\x80 love \xF0\x9F\x9A\x80 rockets \xF0\x9F\x91\x8D\xF0\x9F\x8F\xBD and "
      "\xF0\x9F\x87\xAF\xF0\x9F\x87\xB5 flags",  // 😀 🚀 👍🏽 🇯🇵
      "\xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E\xE3\x81\xAE\xE3\x83\x86\xE3\x82\xAD\xE3\x82\xB9"
      "\xE3\x83\x88\xE3\x80\x81\xE4\xB8\xAD\xE6\x96\x87\xE3\x80\x82 "
      "\xED\x95\x9C\xEA\xB5\xAD\xEC\x96\xB4",  // 日本語のテキスト、中文。 한국어
      // Combining marks with no precomposed form: हिन्दी, สวัสดี, a̲b̲.
      "\xE0\xA4\xB9\xE0\xA4\xBF\xE0\xA4\xA8\xE0\xA5\x8D\xE0\xA4\xA6\xE0\xA5\x80 "
      "\xE0\xB8\xAA\xE0\xB8\xA7\xE0\xB8\xB1\xE0\xB8\xAA\xE0\xB8\x94\xE0\xB8\xB5 "
      "a\xCC\xB2"
      "b\xCC\xB2",
      // Grüße — Привет, мир! Γειά σου κόσμε. مرحبا שלום 🌍 東京
      "Gr\xC3\xBC\xC3\x9F"
      "e \xE2\x80\x94 \xD0\x9F\xD1\x80\xD0\xB8\xD0\xB2\xD0\xB5\xD1\x82, "
      "\xD0\xBC\xD0\xB8\xD1\x80! \xCE\x93\xCE\xB5\xCE\xB9\xCE\xAC \xCF\x83\xCE\xBF\xCF\x85 "
      "\xCE\xBA\xCF\x8C\xCF\x83\xCE\xBC\xCE\xB5. \xD9\x85\xD8\xB1\xD8\xAD\xD8\xA8\xD8\xA7 "
      "\xD7\xA9\xD7\x9C\xD7\x95\xD7\x9D \xF0\x9F\x8C\x8D \xE6\x9D\xB1\xE4\xBA\xAC",
  };
  return *texts;
}

TEST_F(TokenizerTest, RoundTripFixedTexts) {
  for (const std::string& text : FixedTexts()) {
    for (const bool add_bos : {false, true}) {
      const std::vector<int32_t> ids = tok().Encode(text, add_bos);
      ASSERT_FALSE(ids.empty());
      EXPECT_EQ(ids[0] == tok().bos_id(), add_bos);
      EXPECT_TRUE(tok().CheckIds(ids).ok());
      EXPECT_EQ(Escape(tok().Decode(ids)), Escape(text));
    }
  }
}

TEST_F(TokenizerTest, RoundTripRandomTexts) {
  for (int i = 0; i < 500; ++i) {
    const std::string text = RandomText();
    EXPECT_EQ(Escape(tok().Decode(tok().Encode(text, Uniform(0, 1)))), Escape(text));
  }
}

// SentencePiece's normalizer (NFKC, whitespace folding) makes Encode lossy
// for text outside that form. Its table-driven "NFKC" is not even
// idempotent: "h" U+0344 -> "h" U+0308 U+0301 -> U+1E27 U+0301, so only
// validity is checked for arbitrary text.
TEST_F(TokenizerTest, EncodeNormalizes) {
  EXPECT_EQ(tok().Decode(tok().Encode("  two   spaces  ", false)), "two spaces");
  EXPECT_EQ(tok().Decode(tok().Encode("e\xCC\x81", false)), "\xC3\xA9");  // e + U+0301 -> é
  for (int i = 0; i < 300; ++i) {
    const std::string text = RandomRawText();
    const std::string normalized = tok().Decode(tok().Encode(text, false));
    EXPECT_TRUE(IsValidUtf8(normalized)) << Escape(normalized) << " from " << Escape(text);
  }
}

// ---------------------------------------------------------------------------
// Streaming from the start of a text: Push* + Flush == Decode.

TEST_F(TokenizerTest, StreamingEncodedTextsEqualsDecode) {
  std::vector<std::string> texts = FixedTexts();
  for (int i = 0; i < 300; ++i) texts.push_back(RandomText());
  for (int i = 0; i < 300; ++i) texts.push_back(RandomRawText());
  for (const std::string& text : texts) {
    std::vector<int32_t> ids = tok().Encode(text, Uniform(0, 1));
    if (Uniform(0, 1)) ids.push_back(tok().eos_id());
    ExpectStreamEqualsDecode(ids, /*check_prefixes=*/true);
  }
}

TEST_F(TokenizerTest, StreamingRandomIdsEqualsDecode) {
  for (int i = 0; i < 3000; ++i) ExpectStreamEqualsDecode(RandomIds(40), /*check_prefixes=*/true);
}

TEST_F(TokenizerTest, StreamingHoldsSplitCharactersAndRendersInvalidBytesAsSentencePiece) {
  auto bytes = [&](std::initializer_list<int> values) {
    std::vector<int32_t> ids;
    for (const int b : values) ids.push_back(byte_id_[b]);
    return ids;
  };
  // 😀 = F0 9F 98 80 over four tokens: nothing until the last.
  IncrementalDetokenizer detok(tok(), true);
  const auto emoji = bytes({0xF0, 0x9F, 0x98, 0x80});
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(detok.Push(emoji[i]), "");
    EXPECT_EQ(detok.held_bytes(), i + 1);
  }
  EXPECT_EQ(detok.Push(emoji[3]), "\xF0\x9F\x98\x80");
  EXPECT_EQ(detok.held_bytes(), 0);

  // Bytes that can no longer form a character come out at once as U+FFFD,
  // one per byte: E0 80 (overlong), C0, a lone continuation byte.
  const std::string two = std::string(kReplacement) + std::string(kReplacement);
  EXPECT_EQ(detok.Push(byte_id_[0xE0]), "");
  EXPECT_EQ(detok.Push(byte_id_[0x80]), two);
  EXPECT_EQ(detok.Push(byte_id_[0xC0]), kReplacement);
  EXPECT_EQ(detok.Push(byte_id_[0xBF]), kReplacement);
  // A non-byte token ends the byte run, even an invisible one.
  EXPECT_EQ(detok.Push(byte_id_[0xE2]), "");
  EXPECT_EQ(detok.Push(byte_id_[0x82]), "");
  EXPECT_EQ(detok.Push(tok().eos_id()), two);
  EXPECT_EQ(detok.Push(byte_id_[0xC3]), "");
  EXPECT_EQ(detok.Flush(), kReplacement);

  for (const auto& ids :
       {emoji, bytes({0xE0, 0x80, 0xC0, 0xBF}), bytes({0xE2, 0x82}), bytes({0xED, 0xA0, 0x80}),
        bytes({0xF4, 0x90, 0x80, 0x80}), bytes({0xEF, 0xBF, 0xBD}), bytes({0xE2, 0x82, 0x41})}) {
    ExpectStreamEqualsDecode(ids, true);
    std::vector<int32_t> split = ids;
    split.insert(split.begin() + 1, tok().bos_id());
    ExpectStreamEqualsDecode(split, true);
  }
}

TEST_F(TokenizerTest, SpecialTokensProduceNoText) {
  for (const bool starts_text : {true, false}) {
    IncrementalDetokenizer detok(tok(), starts_text);
    EXPECT_EQ(detok.Push(tok().bos_id()), "");
    EXPECT_EQ(detok.Push(tok().eos_id()), "");
    EXPECT_EQ(detok.Flush(), "");
  }
  EXPECT_EQ(tok().Decode(std::vector<int32_t>{tok().bos_id(), tok().eos_id()}), "");
  // The unknown token is special but visible, as in SentencePiece.
  EXPECT_EQ(Stream(std::vector<int32_t>{0}, true), tok().Decode(std::vector<int32_t>{0}));
  EXPECT_FALSE(tok().Decode(std::vector<int32_t>{0}).empty());
}

TEST_F(TokenizerTest, LeadingSpaceOfFirstPieceIsDroppedOnlyAtTextStart) {
  const std::vector<int32_t> the = tok().Encode("the", false);  // "▁the"
  ASSERT_EQ(tok().TokenBytes(the[0]).substr(0, 1), " ");
  std::vector<int32_t> with_bos = {tok().bos_id()};
  with_bos.insert(with_bos.end(), the.begin(), the.end());
  EXPECT_EQ(Stream(the, true), "the");
  EXPECT_EQ(Stream(with_bos, true), "the");  // bos renders nothing, so still the start
  EXPECT_EQ(Stream(the, false), " the");
  EXPECT_EQ(Stream(with_bos, false), " the");
}

// ---------------------------------------------------------------------------
// Streaming a continuation after a prompt.

TEST_F(TokenizerTest, ContinuationEqualsDecodeOfWholeMinusPrompt) {
  int checked = 0;
  for (int i = 0; i < 2000; ++i) {
    std::vector<int32_t> prompt =
        Uniform(0, 1) ? tok().Encode(RandomText(), Uniform(0, 1)) : RandomIds(20);
    std::vector<int32_t> generated =
        Uniform(0, 1) ? tok().Encode(RandomText(), false) : RandomIds(30);
    const std::string prompt_text = tok().Decode(prompt);
    IncrementalDetokenizer probe(tok(), true);
    for (const int32_t id : prompt) probe.Push(id);
    // The invariant needs a prompt whose text is non-empty (else the
    // continuation is the start of the text) and complete (else its held
    // bytes may join the continuation's).
    if (prompt_text.empty() || probe.held_bytes() > 0) continue;
    ++checked;
    std::vector<int32_t> all = prompt;
    all.insert(all.end(), generated.begin(), generated.end());
    const std::string all_text = tok().Decode(all);
    ASSERT_EQ(all_text.substr(0, prompt_text.size()), prompt_text) << IdsString(all);
    EXPECT_EQ(Escape(Stream(generated, /*starts_text=*/false)),
              Escape(all_text.substr(prompt_text.size())))
        << "prompt " << IdsString(prompt) << " generated " << IdsString(generated);
  }
  EXPECT_GT(checked, 1000);
}

// Per-token cost does not grow with the text: a long stream costs about as
// much per token as a short one (a quadratic detokenizer would take minutes).
TEST_F(TokenizerTest, LongStreamEqualsDecode) {
  std::vector<int32_t> ids;
  while (ids.size() < 200000) {
    const auto more = RandomIds(64);
    ids.insert(ids.end(), more.begin(), more.end());
  }
  const auto start = std::chrono::steady_clock::now();
  const std::string streamed = Stream(ids, true);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::fprintf(stderr, "streamed %zu tokens in %.3f s\n", ids.size(), seconds);
  EXPECT_EQ(streamed, tok().Decode(ids));
}

}  // namespace
}  // namespace gdnserve
