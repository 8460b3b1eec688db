// safetensors reading: files written here by a tiny independent writer, read
// back exactly; every malformed header a named error; random corruption an
// error or a valid parse, never a crash; sharded model directories; shape
// checks against a config.
#include "engine/safetensors.h"

#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/test_util.h"

namespace gdnserve {
namespace {

using Json = nlohmann::json;
using testing::TestSeed;  // gdnserve::testing: printed, replayable

// ---- The writer: independent of the reader, straight from the format. ----

struct TestTensor {
  std::string name;
  std::string dtype;  // "F32", "BF16", "F16"
  std::vector<int64_t> shape;
  std::string bytes;  // little-endian raw data
};

size_t TestDTypeSize(const std::string& dtype) { return dtype == "F32" ? 4 : 2; }

std::string LengthPrefixed(const std::string& header, std::string_view data) {
  std::string file(8, '\0');
  const uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) file[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return file + header + std::string(data);
}

// Tensors laid out in the given order with `gap` unused bytes before each
// (real writers pad for alignment), the header padded with spaces to 8 bytes.
std::string Serialize(const std::vector<TestTensor>& tensors, const Json& metadata = nullptr,
                      size_t gap = 0) {
  Json header = Json::object();
  std::string data;
  for (const TestTensor& t : tensors) {
    data.append(gap, '\x5a');
    header[t.name] = {{"dtype", t.dtype},
                      {"shape", t.shape},
                      {"data_offsets", {data.size(), data.size() + t.bytes.size()}}};
    data += t.bytes;
  }
  if (!metadata.is_null()) header["__metadata__"] = metadata;
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  return LengthPrefixed(text, data);
}

TestTensor RandomTensor(std::mt19937_64& rng, const std::string& name) {
  static const char* kDTypes[] = {"F32", "BF16", "F16"};
  TestTensor t{name, kDTypes[rng() % 3], {}, ""};
  const int rank = static_cast<int>(rng() % 5);  // 0 is a scalar
  int64_t count = 1;
  for (int i = 0; i < rank; ++i) {
    t.shape.push_back(rng() % 10 == 0 ? 0 : 1 + static_cast<int64_t>(rng() % 7));
    count *= t.shape.back();
  }
  // Every bit pattern, so NaNs, infinities and subnormals come up.
  t.bytes.resize(count * TestDTypeSize(t.dtype));
  for (char& byte : t.bytes) byte = static_cast<char>(rng());
  return t;
}

std::vector<TestTensor> RandomTensors(std::mt19937_64& rng, int count) {
  std::vector<TestTensor> tensors;
  for (int i = 0; i < count; ++i) {
    tensors.push_back(RandomTensor(rng, absl::StrCat("layers.", i, ".w", rng() % 1000)));
  }
  return tensors;
}

// ---- Reference conversions: arithmetic on the fields, no bit tricks. ----

float ReferenceHalf(uint16_t h) {
  const float sign = (h & 0x8000) ? -1.0f : 1.0f;
  const int exponent = (h >> 10) & 0x1f;
  const int mantissa = h & 0x3ff;
  if (exponent == 31) return mantissa == 0 ? sign * INFINITY : NAN;
  if (exponent == 0) return sign * std::ldexp(static_cast<float>(mantissa), -24);
  return sign * std::ldexp(static_cast<float>(1024 + mantissa), exponent - 25);
}

float ReferenceBFloat16(uint16_t h) {
  const float sign = (h & 0x8000) ? -1.0f : 1.0f;
  const int exponent = (h >> 7) & 0xff;
  const int mantissa = h & 0x7f;
  if (exponent == 255) return mantissa == 0 ? sign * INFINITY : NAN;
  if (exponent == 0) return sign * std::ldexp(static_cast<float>(mantissa), -133);
  return sign * std::ldexp(static_cast<float>(128 + mantissa), exponent - 134);
}

// Bitwise equality, except that any NaN matches any NaN.
bool SameFloat(float a, float b) {
  if (std::isnan(a) || std::isnan(b)) return std::isnan(a) && std::isnan(b);
  return std::bit_cast<uint32_t>(a) == std::bit_cast<uint32_t>(b);
}

// Checks `got` against the tensor the writer wrote, via CopyToFloat32 too.
void ExpectSameTensor(const TestTensor& want, const TensorInfo& got) {
  SCOPED_TRACE(want.name);
  EXPECT_EQ(got.name, want.name);
  EXPECT_EQ(DTypeName(got.dtype), want.dtype);
  EXPECT_EQ(got.shape, want.shape);
  ASSERT_EQ(got.nbytes, want.bytes.size());
  EXPECT_EQ(std::memcmp(got.data, want.bytes.data(), got.nbytes), 0);
  const int64_t count = got.num_elements();
  ASSERT_EQ(static_cast<size_t>(count) * TestDTypeSize(want.dtype), want.bytes.size());
  std::vector<float> floats(count);
  ASSERT_TRUE(CopyToFloat32(got, floats.data()).ok());
  for (int64_t i = 0; i < count; ++i) {
    float expected;
    if (want.dtype == "F32") {
      std::memcpy(&expected, want.bytes.data() + 4 * i, 4);
    } else {
      uint16_t bits;
      std::memcpy(&bits, want.bytes.data() + 2 * i, 2);
      expected = want.dtype == "F16" ? ReferenceHalf(bits) : ReferenceBFloat16(bits);
    }
    ASSERT_TRUE(SameFloat(floats[i], expected))
        << "element " << i << ": " << floats[i] << " vs " << expected;
  }
}

class TempDir {
 public:
  TempDir() {
    std::string pattern =
        (std::filesystem::path(::testing::TempDir()) / "safetensors_test_XXXXXX").string();
    if (mkdtemp(pattern.data()) != nullptr) path_ = pattern;
  }
  ~TempDir() {
    if (!path_.empty()) std::filesystem::remove_all(path_);
  }
  const std::string& path() const { return path_; }
  std::string Write(const std::string& name, std::string_view bytes) const {
    const std::string file = path_ + "/" + name;
    std::ofstream(file, std::ios::binary).write(bytes.data(), bytes.size());
    return file;
  }

 private:
  std::string path_;
};

// ---- Reading valid files. ----

TEST(SafetensorsTest, RandomFilesReadBackExactly) {
  std::mt19937_64 rng(TestSeed());
  TempDir dir;
  for (int round = 0; round < 30; ++round) {
    const std::vector<TestTensor> tensors = RandomTensors(rng, 1 + rng() % 12);
    const Json metadata = {{"format", "pt"}, {"round", absl::StrCat(round)}};
    const std::string path = dir.Write("t.safetensors", Serialize(tensors, metadata, rng() % 9));
    absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Open(path);
    ASSERT_TRUE(file.ok()) << file.status();
    ASSERT_EQ(file->tensors().size(), tensors.size());
    EXPECT_EQ(file->metadata().at("round"), absl::StrCat(round));
    EXPECT_TRUE(
        std::is_sorted(file->tensors().begin(), file->tensors().end(),
                       [](const TensorInfo& a, const TensorInfo& b) { return a.name < b.name; }));
    for (const TestTensor& t : tensors) {
      const TensorInfo* got = file->Find(t.name);
      ASSERT_NE(got, nullptr) << t.name;
      ExpectSameTensor(t, *got);
    }
    EXPECT_EQ(file->Find("absent"), nullptr);
    // Moving keeps the mapping, and so every data pointer, valid.
    const std::byte* data = file->tensors().front().data;
    SafetensorsFile moved = *std::move(file);
    EXPECT_EQ(moved.tensors().front().data, data);
    ExpectSameTensor(
        *std::find_if(tensors.begin(), tensors.end(),
                      [&](const TestTensor& t) { return t.name == moved.tensors().front().name; }),
        moved.tensors().front());
  }
}

TEST(SafetensorsTest, EveryHalfAndBFloat16ValueConverts) {
  TempDir dir;
  std::string all_bits(2 * 65536, '\0');
  for (uint32_t i = 0; i < 65536; ++i) {
    const uint16_t bits = static_cast<uint16_t>(i);
    std::memcpy(all_bits.data() + 2 * i, &bits, 2);
  }
  const std::vector<TestTensor> tensors = {{"f16", "F16", {256, 256}, all_bits},
                                           {"bf16", "BF16", {65536}, all_bits}};
  absl::StatusOr<SafetensorsFile> file =
      SafetensorsFile::Open(dir.Write("all.safetensors", Serialize(tensors)));
  ASSERT_TRUE(file.ok()) << file.status();
  ExpectSameTensor(tensors[0], *file->Find("f16"));
  ExpectSameTensor(tensors[1], *file->Find("bf16"));

  // Spot checks of the special values by meaning, not by the reference.
  std::vector<float> f16(65536);
  ASSERT_TRUE(CopyToFloat32(*file->Find("f16"), f16.data()).ok());
  EXPECT_EQ(f16[0x0001], std::ldexp(1.0f, -24));     // smallest subnormal
  EXPECT_EQ(f16[0x03ff], std::ldexp(1023.0f, -24));  // largest subnormal
  EXPECT_EQ(f16[0x0400], std::ldexp(1.0f, -14));     // smallest normal
  EXPECT_EQ(f16[0x3c00], 1.0f);
  EXPECT_EQ(f16[0xc000], -2.0f);
  EXPECT_EQ(f16[0x7bff], 65504.0f);
  EXPECT_EQ(f16[0x7c00], INFINITY);
  EXPECT_EQ(f16[0xfc00], -INFINITY);
  EXPECT_TRUE(std::isnan(f16[0x7e00]));
  EXPECT_TRUE(std::isnan(f16[0xfc01]));
  EXPECT_TRUE(std::signbit(f16[0x8000]) && f16[0x8000] == 0.0f);
  std::vector<float> bf16(65536);
  ASSERT_TRUE(CopyToFloat32(*file->Find("bf16"), bf16.data()).ok());
  EXPECT_EQ(bf16[0x3f80], 1.0f);
  EXPECT_EQ(bf16[0x0001], std::ldexp(1.0f, -133));
  EXPECT_EQ(bf16[0x7f80], INFINITY);
  EXPECT_TRUE(std::isnan(bf16[0xffc0]));
}

TEST(SafetensorsTest, EmptyHeaderAndEmptyTensorsAreValid) {
  absl::StatusOr<SafetensorsHeader> empty = ParseSafetensorsHeader(LengthPrefixed("{}", ""));
  ASSERT_TRUE(empty.ok()) << empty.status();
  EXPECT_TRUE(empty->tensors.empty());
  // Zero-element tensors take no bytes, so they may sit anywhere, even on
  // each other or on another tensor's bytes.
  const std::string header = R"({"a":{"dtype":"F32","shape":[0,5],"data_offsets":[4,4]},)"
                             R"("b":{"dtype":"F16","shape":[3,0],"data_offsets":[4,4]},)"
                             R"("c":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                             R"("s":{"dtype":"BF16","shape":[],"data_offsets":[8,10]}})";
  absl::StatusOr<SafetensorsHeader> parsed =
      ParseSafetensorsHeader(LengthPrefixed(header, std::string(10, '\0')));
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  ASSERT_EQ(parsed->tensors.size(), 4u);
  EXPECT_EQ(parsed->tensors[0].num_elements(), 0);
  EXPECT_EQ(parsed->tensors[3].num_elements(), 1);
  EXPECT_EQ(parsed->tensors[3].nbytes, 2u);
}

// ---- Malformed headers: each an InvalidArgument naming what is wrong. ----

struct BadFile {
  std::string description;
  std::string bytes;
  std::vector<std::string> message_parts;  // each must appear in the message
};

std::string Entry(const std::string& dtype, const std::string& shape, const std::string& offsets) {
  return absl::StrCat(R"({"dtype":)", dtype, R"(,"shape":)", shape, R"(,"data_offsets":)", offsets,
                      "}");
}

std::string OneTensor(const std::string& name, const std::string& entry, size_t data_bytes = 8) {
  return LengthPrefixed(absl::StrCat("{\"", name, "\":", entry, "}"),
                        std::string(data_bytes, '\0'));
}

TEST(SafetensorsTest, EachMalformedHeaderIsANamedError) {
  std::string huge_length = LengthPrefixed("{}", "");
  huge_length[7] = '\x80';  // 2^63 + 2
  std::string past_end = LengthPrefixed("{}", "");
  past_end[0] = 3;  // one byte more than there is
  const std::string ok_entry = Entry(R"("F32")", "[2]", "[0,8]");
  const std::vector<BadFile> cases = {
      {"empty file", "", {"too short"}},
      {"seven bytes", std::string(7, '\0'), {"too short"}},
      {"header length past the end", past_end, {"header length 3"}},
      {"header length 2^63", huge_length, {"header length"}},
      {"header not JSON", LengthPrefixed("{\"a\":", ""), {"not valid JSON"}},
      {"header not UTF-8", LengthPrefixed("{\"\xff\":1}", ""), {"not valid JSON"}},
      {"header an array", LengthPrefixed("[]", ""), {"JSON object"}},
      {"header trailing bytes", LengthPrefixed(std::string("{}\0\0", 4), ""), {"not valid JSON"}},
      {"entry not an object", OneTensor("w", "[1,2]"), {"tensor \"w\"", "object"}},
      {"missing dtype",
       OneTensor("w", R"({"shape":[2],"data_offsets":[0,8]})"),
       {"tensor \"w\"", "missing \"dtype\""}},
      {"missing shape",
       OneTensor("w", R"({"dtype":"F32","data_offsets":[0,8]})"),
       {"tensor \"w\"", "missing \"shape\""}},
      {"missing offsets",
       OneTensor("w", R"({"dtype":"F32","shape":[2]})"),
       {"tensor \"w\"", "missing \"data_offsets\""}},
      {"unknown key",
       OneTensor("w", R"({"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":1})"),
       {"tensor \"w\"", "unknown key \"x\""}},
      {"dtype not a string", OneTensor("w", Entry("4", "[2]", "[0,8]")), {"tensor \"w\"", "dtype"}},
      {"dtype I64",
       OneTensor("w", Entry(R"("I64")", "[1]", "[0,8]")),
       {"tensor \"w\"", "\"I64\"", "not supported"}},
      {"dtype F64",
       OneTensor("emb", Entry(R"("F64")", "[1]", "[0,8]")),
       {"tensor \"emb\"", "\"F64\""}},
      {"dtype lower case", OneTensor("w", Entry(R"("f32")", "[2]", "[0,8]")), {"\"f32\""}},
      {"shape not a list",
       OneTensor("w", Entry(R"("F32")", "2", "[0,8]")),
       {"tensor \"w\"", "shape"}},
      {"shape negative",
       OneTensor("w", Entry(R"("F32")", "[-2]", "[0,8]")),
       {"tensor \"w\"", "-2"}},
      {"shape float", OneTensor("w", Entry(R"("F32")", "[2.0]", "[0,8]")), {"tensor \"w\""}},
      {"shape string", OneTensor("w", Entry(R"("F32")", R"(["2"])", "[0,8]")), {"tensor \"w\""}},
      {"shape overflows",
       OneTensor("w", Entry(R"("F32")", "[4294967296,4294967296]", "[0,8]")),
       {"tensor \"w\"", "too large"}},
      {"shape times dtype overflows",
       OneTensor("w", Entry(R"("F32")", "[4611686018427387904]", "[0,8]")),
       {"tensor \"w\"", "too large"}},
      {"offsets not a list",
       OneTensor("w", Entry(R"("F32")", "[2]", "8")),
       {"tensor \"w\"", "data_offsets"}},
      {"offsets one number",
       OneTensor("w", Entry(R"("F32")", "[2]", "[8]")),
       {"tensor \"w\"", "data_offsets"}},
      {"offsets three numbers",
       OneTensor("w", Entry(R"("F32")", "[2]", "[0,8,8]")),
       {"tensor \"w\"", "data_offsets"}},
      {"offsets negative",
       OneTensor("w", Entry(R"("F32")", "[2]", "[-8,0]")),
       {"tensor \"w\"", "data_offsets"}},
      {"offsets begin after end",
       OneTensor("w", Entry(R"("F32")", "[0]", "[8,0]")),
       {"tensor \"w\"", "[8, 0]"}},
      {"offsets past the data",
       OneTensor("w", Entry(R"("F32")", "[2]", "[4,12]")),
       {"tensor \"w\"", "data region of 8 bytes"}},
      {"offsets far past the data",
       OneTensor("w", Entry(R"("F32")", "[2]", "[18446744073709551608,18446744073709551615]")),
       {"tensor \"w\""}},
      {"size mismatch",
       OneTensor("w", Entry(R"("F32")", "[3]", "[0,8]")),
       {"tensor \"w\"", "needs 12"}},
      {"size mismatch bf16",
       OneTensor("w", Entry(R"("BF16")", "[2]", "[0,8]")),
       {"tensor \"w\"", "BF16"}},
      {"overlap",
       LengthPrefixed(absl::StrCat(R"({"a":)", Entry(R"("F32")", "[2]", "[0,8]"), R"(,"b":)",
                                   Entry(R"("F16")", "[2]", "[6,10]"), "}"),
                      std::string(10, '\0')),
       {"tensor \"b\"", "overlaps tensor \"a\""}},
      {"same bytes twice",
       LengthPrefixed(absl::StrCat(R"({"a":)", ok_entry, R"(,"b":)", ok_entry, "}"),
                      std::string(8, '\0')),
       {"\"a\"", "\"b\"", "overlaps"}},
      {"repeated tensor name",
       LengthPrefixed(
           absl::StrCat(R"({"a":)", ok_entry, R"(,"a":)", Entry(R"("F32")", "[1]", "[8,12]"), "}"),
           std::string(12, '\0')),
       {"\"a\"", "more than once"}},
      {"metadata not an object", LengthPrefixed(R"({"__metadata__":[1]})", ""), {"__metadata__"}},
      {"metadata value not a string",
       LengthPrefixed(R"({"__metadata__":{"format":1}})", ""),
       {"__metadata__", "format"}},
  };
  for (const BadFile& c : cases) {
    SCOPED_TRACE(c.description);
    absl::StatusOr<SafetensorsHeader> header = ParseSafetensorsHeader(c.bytes);
    ASSERT_FALSE(header.ok());
    EXPECT_EQ(header.status().code(), absl::StatusCode::kInvalidArgument);
    for (const std::string& part : c.message_parts) {
      EXPECT_TRUE(absl::StrContains(header.status().message(), part))
          << header.status() << "\nshould contain: " << part;
    }
  }
}

TEST(SafetensorsTest, OpenErrorsNameThePath) {
  TempDir dir;
  const std::string missing = dir.path() + "/missing.safetensors";
  EXPECT_EQ(SafetensorsFile::Open(missing).status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(absl::StrContains(SafetensorsFile::Open(missing).status().message(), missing));
  EXPECT_FALSE(SafetensorsFile::Open(dir.path()).ok());  // a directory
  const std::string empty = dir.Write("empty.safetensors", "");
  absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Open(empty);
  ASSERT_FALSE(file.ok());
  EXPECT_TRUE(absl::StartsWith(file.status().message(), empty)) << file.status();
  const std::string bad =
      dir.Write("bad.safetensors", OneTensor("w", Entry(R"("I8")", "[8]", "[0,8]")));
  file = SafetensorsFile::Open(bad);
  ASSERT_FALSE(file.ok());
  EXPECT_TRUE(absl::StrContains(file.status().message(), bad)) << file.status();
  EXPECT_TRUE(absl::StrContains(file.status().message(), "tensor \"w\"")) << file.status();
}

TEST(SafetensorsTest, CopyToFloat32RejectsInconsistentTensorInfo) {
  const float values[2] = {1, 2};
  TensorInfo t{"x", DType::kF32, {3}, reinterpret_cast<const std::byte*>(values), 8};
  float out[3];
  absl::Status status = CopyToFloat32(t, out);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(status.message(), "tensor \"x\"")) << status;
  t.shape = {-1};
  EXPECT_FALSE(CopyToFloat32(t, out).ok());
  t.shape = {2};
  ASSERT_TRUE(CopyToFloat32(t, out).ok());
  EXPECT_EQ(out[1], 2.0f);
}

// ---- Corruption: any bytes give an error or a parse that is safe to use. ----

// A successful parse of `bytes` must only point inside them, at consistent
// sizes, and convert without complaint.
void ExpectSafe(const SafetensorsHeader& header, std::string_view bytes) {
  const std::byte* begin = reinterpret_cast<const std::byte*>(bytes.data());
  const std::byte* end = begin + bytes.size();
  for (const TensorInfo& t : header.tensors) {
    ASSERT_GE(t.num_elements(), 0);
    ASSERT_EQ(t.nbytes, static_cast<size_t>(t.num_elements()) * DTypeSize(t.dtype));
    if (t.nbytes == 0) continue;
    ASSERT_TRUE(t.data >= begin + 8 && t.data + t.nbytes <= end) << t.name;
    std::vector<float> out(t.num_elements());
    ASSERT_TRUE(CopyToFloat32(t, out.data()).ok());
  }
}

// Changes one number, dtype or key of the JSON header: lying offsets, shapes
// and dtypes that still parse as JSON.
std::string MutateHeaderJson(std::mt19937_64& rng, const std::string& file) {
  uint64_t header_size;
  std::memcpy(&header_size, file.data(), 8);
  Json header = Json::parse(file.substr(8, header_size));
  std::vector<std::string> names;
  for (const auto& [name, entry] : header.items()) names.push_back(name);
  Json& entry = header[names[rng() % names.size()]];
  const int64_t deltas[] = {-9, -4, -2, -1, 1, 2, 4, 9, 1 << 20, int64_t{1} << 40};
  const int64_t delta = deltas[rng() % std::size(deltas)];
  if (!entry.is_object()) return file;
  switch (rng() % 6) {
    case 0:
    case 1: {
      Json& offset = entry["data_offsets"][rng() % 2];
      offset = offset.get<int64_t>() + delta;
      break;
    }
    case 2:
      if (!entry["shape"].empty()) {
        Json& dim = entry["shape"][rng() % entry["shape"].size()];
        dim = dim.get<int64_t>() + delta;
      } else {
        entry["shape"].push_back(rng() % 4);
      }
      break;
    case 3:
      entry["dtype"] = std::vector<std::string>{"F32", "BF16", "F16", "I64", "U8", ""}[rng() % 6];
      break;
    case 4:
      entry.erase(std::vector<std::string>{"dtype", "shape", "data_offsets"}[rng() % 3]);
      break;
    case 5:
      header[names[rng() % names.size()]] = entry;  // a copy: same bytes twice
      break;
  }
  std::string text = header.dump();
  // Sometimes keep the old length field: the header then lies about its size.
  return rng() % 4 == 0 ? file.substr(0, 8) + text + file.substr(8 + header_size)
                        : LengthPrefixed(text, file.substr(8 + header_size));
}

TEST(SafetensorsTest, RandomCorruptionNeverCrashes) {
  std::mt19937_64 rng(TestSeed());
  TempDir dir;
  int parsed_ok = 0, rejected = 0;
  for (int round = 0; round < 20; ++round) {
    const std::string original = Serialize(RandomTensors(rng, 1 + rng() % 6), nullptr, rng() % 5);
    uint64_t header_size;
    std::memcpy(&header_size, original.data(), 8);
    for (int i = 0; i < 300; ++i) {
      std::string bytes = original;
      switch (rng() % 4) {
        case 0:  // truncated anywhere
          bytes.resize(rng() % (bytes.size() + 1));
          break;
        case 1:  // random bytes of the length field or header replaced
          for (int n = 1 + rng() % 4; n > 0; --n) {
            bytes[rng() % (8 + header_size)] = static_cast<char>(rng());
          }
          break;
        case 2:  // one bit of the length field flipped
          bytes[rng() % 8] ^= static_cast<char>(1 << (rng() % 8));
          break;
        case 3:  // a lying but well-formed header
          bytes = MutateHeaderJson(rng, original);
          break;
      }
      absl::StatusOr<SafetensorsHeader> header = ParseSafetensorsHeader(bytes);
      if (header.ok()) {
        ++parsed_ok;
        ExpectSafe(*header, bytes);
      } else {
        ++rejected;
        EXPECT_EQ(header.status().code(), absl::StatusCode::kInvalidArgument);
      }
      if (i % 25 == 0) {  // and the same through a real mapped file
        absl::StatusOr<SafetensorsFile> file =
            SafetensorsFile::Open(dir.Write("c.safetensors", bytes));
        EXPECT_EQ(file.ok(), header.ok());
      }
      if (HasFatalFailure()) return;
    }
  }
  std::printf("corruption: %d parsed, %d rejected\n", parsed_ok, rejected);
  EXPECT_GT(rejected, 0);
}

// ---- Model directories: single file, sharded index. ----

// Writes `tensors` into `num_shards` shards plus an index; returns the index.
Json WriteSharded(const TempDir& dir, const std::vector<TestTensor>& tensors, int num_shards) {
  std::vector<std::vector<TestTensor>> shards(num_shards);
  Json index = {{"metadata", {{"total_size", 0}}}, {"weight_map", Json::object()}};
  for (size_t i = 0; i < tensors.size(); ++i) {
    const int shard = static_cast<int>(i % num_shards);
    shards[shard].push_back(tensors[i]);
    index["weight_map"][tensors[i].name] =
        absl::StrCat("model-", shard + 1, "-of-", num_shards, ".safetensors");
  }
  for (int s = 0; s < num_shards; ++s) {
    dir.Write(absl::StrCat("model-", s + 1, "-of-", num_shards, ".safetensors"),
              Serialize(shards[s]));
  }
  dir.Write("model.safetensors.index.json", index.dump(2));
  return index;
}

std::vector<std::string> SortedNames(const std::vector<TestTensor>& tensors) {
  std::vector<std::string> names;
  for (const TestTensor& t : tensors) names.push_back(t.name);
  std::sort(names.begin(), names.end());
  return names;
}

TEST(SafetensorsModelTest, SingleFile) {
  std::mt19937_64 rng(TestSeed());
  TempDir dir;
  const std::vector<TestTensor> tensors = RandomTensors(rng, 10);
  dir.Write("model.safetensors", Serialize(tensors));
  absl::StatusOr<SafetensorsModel> model = SafetensorsModel::Open(dir.path());
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ(model->names(), SortedNames(tensors));
  EXPECT_EQ(model->shards().size(), 1u);
  for (const TestTensor& t : tensors) ExpectSameTensor(t, *model->Find(t.name));
  EXPECT_EQ(model->Find("nope"), nullptr);
}

TEST(SafetensorsModelTest, ShardedIndex) {
  std::mt19937_64 rng(TestSeed());
  TempDir dir;
  const std::vector<TestTensor> tensors = RandomTensors(rng, 11);
  WriteSharded(dir, tensors, 3);
  absl::StatusOr<SafetensorsModel> opened = SafetensorsModel::Open(dir.path());
  ASSERT_TRUE(opened.ok()) << opened.status();
  const SafetensorsModel model = *std::move(opened);  // lookups survive a move
  EXPECT_EQ(model.shards().size(), 3u);
  EXPECT_EQ(model.names(), SortedNames(tensors));
  EXPECT_EQ(model.num_tensors(), tensors.size());
  for (const TestTensor& t : tensors) ExpectSameTensor(t, *model.Find(t.name));
}

TEST(SafetensorsModelTest, SingleFileWinsOverIndex) {
  std::mt19937_64 rng(TestSeed());
  TempDir dir;
  const std::vector<TestTensor> tensors = RandomTensors(rng, 3);
  dir.Write("model.safetensors", Serialize(tensors));
  dir.Write("model.safetensors.index.json", "not even JSON");
  absl::StatusOr<SafetensorsModel> model = SafetensorsModel::Open(dir.path());
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ(model->names(), SortedNames(tensors));
}

TEST(SafetensorsModelTest, IndexErrorsNameTheTensorOrShard) {
  std::mt19937_64 rng(TestSeed());
  const std::vector<TestTensor> tensors = RandomTensors(rng, 6);
  struct Case {
    std::string description;
    std::function<void(const TempDir&, Json&)> corrupt;  // edits files and/or the index
    absl::StatusCode code;
    std::vector<std::string> message_parts;
  };
  const std::string name0 = tensors[0].name;
  const std::vector<Case> cases = {
      {"tensor mapped to a shard that lacks it",
       [&](const TempDir&, Json& index) {
         index["weight_map"][name0] = "model-2-of-2.safetensors";
       },
       absl::StatusCode::kInvalidArgument,
       {name0, "model-2-of-2.safetensors", "lacks"}},
      {"tensor the index does not list",
       [&](const TempDir&, Json& index) { index["weight_map"].erase(name0); },
       absl::StatusCode::kInvalidArgument,
       {name0, "model-1-of-2.safetensors", "not mapped"}},
      {"missing shard file",
       [&](const TempDir&, Json& index) { index["weight_map"][name0] = "gone.safetensors"; },
       absl::StatusCode::kNotFound,
       {"gone.safetensors"}},
      {"shard path outside the directory",
       [&](const TempDir&, Json& index) {
         index["weight_map"][name0] = "../model-1-of-2.safetensors";
       },
       absl::StatusCode::kInvalidArgument,
       {name0, "file name"}},
      {"shard not a string",
       [&](const TempDir&, Json& index) { index["weight_map"][name0] = 1; },
       absl::StatusCode::kInvalidArgument,
       {name0}},
      {"no weight_map",
       [&](const TempDir&, Json& index) { index.erase("weight_map"); },
       absl::StatusCode::kInvalidArgument,
       {"weight_map"}},
      {"corrupt shard",
       [&](const TempDir& dir, Json&) { dir.Write("model-2-of-2.safetensors", "garbage!!"); },
       absl::StatusCode::kInvalidArgument,
       {"model-2-of-2.safetensors", "header"}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.description);
    TempDir dir;
    Json index = WriteSharded(dir, tensors, 2);
    c.corrupt(dir, index);
    dir.Write("model.safetensors.index.json", index.dump());
    absl::StatusOr<SafetensorsModel> model = SafetensorsModel::Open(dir.path());
    ASSERT_FALSE(model.ok());
    EXPECT_EQ(model.status().code(), c.code) << model.status();
    for (const std::string& part : c.message_parts) {
      EXPECT_TRUE(absl::StrContains(model.status().message(), part))
          << model.status() << "\nshould contain: " << part;
    }
  }
  TempDir dir;
  dir.Write("model.safetensors.index.json", R"({"weight_map": {"a": "x", "a": "y"}})");
  EXPECT_TRUE(
      absl::StrContains(SafetensorsModel::Open(dir.path()).status().message(), "more than once"));
}

TEST(SafetensorsModelTest, EmptyDirectoryIsNotFound) {
  TempDir dir;
  absl::StatusOr<SafetensorsModel> model = SafetensorsModel::Open(dir.path());
  EXPECT_EQ(model.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(absl::StrContains(model.status().message(), "model.safetensors")) << model.status();
}

// ---- Shapes against a config. ----

class CheckShapesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* text =
        R"({"architecture": "gdn2", "vocab_size": 50, "hidden_size": 16, "num_layers": 2,
            "num_heads": 2, "num_v_heads": 4, "head_dim": 4, "expand_v": 2,
            "intermediate_size": 24, "conv_size": 3})";
    absl::StatusOr<ModelConfig> config = ParseModelConfig(text);
    ASSERT_TRUE(config.ok()) << config.status();
    expected_ = ExpectedTensors(*config);
  }

  // Writes the model with `edit` applied to the tensors and checks its shapes.
  absl::Status Check(const std::function<void(std::vector<TestTensor>&)>& edit) {
    std::mt19937_64 rng(TestSeed());
    std::vector<TestTensor> tensors;
    for (const ExpectedTensor& e : expected_) {
      TestTensor t = RandomTensor(rng, e.name);
      t.shape = e.shape;
      int64_t count = 1;
      for (int64_t dim : e.shape) count *= dim;
      t.bytes.resize(count * TestDTypeSize(t.dtype));
      tensors.push_back(t);
    }
    edit(tensors);
    TempDir dir;
    WriteSharded(dir, tensors, 2);
    absl::StatusOr<SafetensorsModel> model = SafetensorsModel::Open(dir.path());
    if (!model.ok()) return model.status();
    return CheckShapes(*model, expected_);
  }

  std::vector<ExpectedTensor> expected_;
};

TEST_F(CheckShapesTest, ExactModelPasses) {
  absl::Status status = Check([](std::vector<TestTensor>&) {});
  EXPECT_TRUE(status.ok()) << status;
}

TEST_F(CheckShapesTest, MissingTensorIsNamed) {
  absl::Status status = Check([](std::vector<TestTensor>& t) {
    std::erase_if(t, [](const TestTensor& x) { return x.name == "model.layers.1.attn.A_log"; });
  });
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(
      status.message(), "missing tensor \"model.layers.1.attn.A_log\" (expected shape [2])"))
      << status;
}

TEST_F(CheckShapesTest, WrongShapeIsNamedWithBothShapes) {
  absl::Status status = Check([](std::vector<TestTensor>& t) {
    for (TestTensor& x : t) {
      if (x.name == "model.layers.0.attn.o_proj.weight") x.shape = {32, 16};  // transposed
    }
  });
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(
      status.message(),
      "tensor \"model.layers.0.attn.o_proj.weight\": expected shape [16, 32], got [32, 16]"))
      << status;
}

TEST_F(CheckShapesTest, ExtraTensorIsNamed) {
  absl::Status status = Check([](std::vector<TestTensor>& t) {
    t.push_back({"model.layers.0.attn.q_proj.bias", "F32", {8}, std::string(32, '\0')});
  });
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(
      absl::StrContains(status.message(), "unexpected tensor \"model.layers.0.attn.q_proj.bias\""))
      << status;
}

}  // namespace
}  // namespace gdnserve
