#include "engine/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <optional>
#include <set>
#include <sstream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/json_util.h"
#include "nlohmann/json.hpp"

namespace gdnserve {
namespace {

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian; a big-endian host needs byte swaps");

using Json = nlohmann::json;

// The reference implementation's limit; real headers are a few MB at most.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

constexpr const char* kSingleFile = "model.safetensors";
constexpr const char* kIndexFile = "model.safetensors.index.json";

absl::Status HeaderError(absl::string_view message) {
  return absl::InvalidArgumentError(absl::StrCat("safetensors header: ", message));
}

absl::Status TensorError(absl::string_view name, absl::string_view message) {
  return absl::InvalidArgumentError(absl::StrCat("tensor \"", name, "\": ", message));
}

// Same code, message prefixed with where it happened (a path).
absl::Status Annotate(const absl::Status& status, absl::string_view where) {
  return absl::Status(status.code(), absl::StrCat(where, ": ", status.message()));
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}



std::optional<DType> ParseDType(std::string_view name) {
  for (DType dtype : {DType::kF32, DType::kBF16, DType::kF16}) {
    if (name == DTypeName(dtype)) return dtype;
  }
  return std::nullopt;
}

// A JSON integer in [0, max], or nullopt.
std::optional<uint64_t> NonNegativeInteger(const Json& value, uint64_t max) {
  if (value.is_number_unsigned()) {
    if (value.get<uint64_t>() <= max) return value.get<uint64_t>();
  } else if (value.is_number_integer() && value.get<int64_t>() >= 0) {
    if (static_cast<uint64_t>(value.get<int64_t>()) <= max) return value.get<int64_t>();
  }
  return std::nullopt;
}

// product(shape), or nullopt if a dim is negative or it overflows int64_t.
// A zero dim makes the product 0 however large the others are.
std::optional<int64_t> ElementCount(const std::vector<int64_t>& shape) {
  if (std::find(shape.begin(), shape.end(), 0) != shape.end()) return 0;
  int64_t count = 1;
  for (int64_t dim : shape) {
    if (dim < 0 || __builtin_mul_overflow(count, dim, &count)) return std::nullopt;
  }
  return count;
}

// One header entry; `data` is the data region (everything after the header).
absl::StatusOr<TensorInfo> ParseEntry(const std::string& name, const Json& entry,
                                      std::string_view data) {
  if (!entry.is_object()) {
    return TensorError(name, absl::StrCat("entry must be an object, got ", DescribeJson(entry)));
  }
  for (const auto& [key, value] : entry.items()) {
    if (key != "dtype" && key != "shape" && key != "data_offsets") {
      return TensorError(name, absl::StrCat("unknown key \"", key, "\""));
    }
  }
  for (const char* key : {"dtype", "shape", "data_offsets"}) {
    if (!entry.contains(key)) return TensorError(name, absl::StrCat("missing \"", key, "\""));
  }
  TensorInfo tensor;
  tensor.name = name;

  const Json& dtype = entry["dtype"];
  if (!dtype.is_string()) {
    return TensorError(name, absl::StrCat("\"dtype\" must be a string, got ", DescribeJson(dtype)));
  }
  std::optional<DType> parsed_dtype = ParseDType(dtype.get_ref<const std::string&>());
  if (!parsed_dtype) {
    return TensorError(
        name, absl::StrCat("dtype ", DescribeJson(dtype), " is not supported (F32, BF16, F16)"));
  }
  tensor.dtype = *parsed_dtype;

  const Json& shape = entry["shape"];
  if (!shape.is_array()) {
    return TensorError(name, absl::StrCat("\"shape\" must be a list, got ", DescribeJson(shape)));
  }
  for (const Json& dim : shape) {
    std::optional<uint64_t> value = NonNegativeInteger(dim, std::numeric_limits<int64_t>::max());
    if (!value) {
      return TensorError(
          name, absl::StrCat("\"shape\" entries must be integers >= 0, got ", DescribeJson(dim)));
    }
    tensor.shape.push_back(static_cast<int64_t>(*value));
  }
  std::optional<int64_t> count = ElementCount(tensor.shape);
  const int64_t dtype_size = static_cast<int64_t>(DTypeSize(tensor.dtype));
  if (!count || *count > std::numeric_limits<int64_t>::max() / dtype_size) {
    return TensorError(name, absl::StrCat("shape ", ShapeString(tensor.shape), " is too large"));
  }
  tensor.nbytes = static_cast<size_t>(*count * dtype_size);

  const Json& offsets = entry["data_offsets"];
  std::optional<uint64_t> begin, end;
  if (offsets.is_array() && offsets.size() == 2) {
    begin = NonNegativeInteger(offsets[0], std::numeric_limits<uint64_t>::max());
    end = NonNegativeInteger(offsets[1], std::numeric_limits<uint64_t>::max());
  }
  if (!begin || !end) {
    return TensorError(name, "\"data_offsets\" must be two integers >= 0 [begin, end]");
  }
  if (*begin > *end || *end > data.size()) {
    return TensorError(name,
                       absl::StrCat("data_offsets [", *begin, ", ", *end,
                                    "] are not within the data region of ", data.size(), " bytes"));
  }
  if (*end - *begin != tensor.nbytes) {
    return TensorError(
        name, absl::StrCat("data_offsets [", *begin, ", ", *end, "] hold ", *end - *begin,
                           " bytes, but ", DTypeName(tensor.dtype), " ", ShapeString(tensor.shape),
                           " needs ", tensor.nbytes));
  }
  tensor.data = reinterpret_cast<const std::byte*>(data.data()) + *begin;
  return tensor;
}

// Tensors sharing a byte mean at least one of them is not what it claims.
// Empty tensors occupy nothing and cannot overlap.
absl::Status CheckNoOverlap(const std::vector<TensorInfo>& tensors) {
  std::vector<const TensorInfo*> by_address;
  for (const TensorInfo& t : tensors) {
    if (t.nbytes > 0) by_address.push_back(&t);
  }
  std::sort(by_address.begin(), by_address.end(),
            [](const TensorInfo* a, const TensorInfo* b) { return a->data < b->data; });
  // Sorted by start, no overlap at all iff no neighbour overlaps.
  for (size_t i = 1; i < by_address.size(); ++i) {
    const TensorInfo& prev = *by_address[i - 1];
    const TensorInfo& next = *by_address[i];
    if (prev.data + prev.nbytes > next.data) {
      return TensorError(next.name, absl::StrCat("data overlaps tensor \"", prev.name, "\""));
    }
  }
  return absl::OkStatus();
}

uint16_t LoadU16(const std::byte* p) {
  uint16_t value;
  std::memcpy(&value, p, sizeof(value));
  return value;
}

float BFloat16ToFloat(uint16_t bits) {
  return std::bit_cast<float>(static_cast<uint32_t>(bits) << 16);
}

// IEEE binary16 -> binary32, exact for every input: normals rebias the
// exponent (15 -> 127), subnormals (m * 2^-24) are normal in float32, and
// infinities and NaNs keep their payload.
float Float16ToFloat(uint16_t bits) {
  const uint32_t sign = static_cast<uint32_t>(bits & 0x8000u) << 16;
  const uint32_t exponent = (bits >> 10) & 0x1fu;
  const uint32_t mantissa = bits & 0x3ffu;
  if (exponent == 0x1f) return std::bit_cast<float>(sign | 0x7f800000u | (mantissa << 13));
  if (exponent != 0) {
    return std::bit_cast<float>(sign | ((exponent + 127 - 15) << 23) | (mantissa << 13));
  }
  const float magnitude = static_cast<float>(mantissa) * 0x1p-24f;  // exact
  return std::bit_cast<float>(sign | std::bit_cast<uint32_t>(magnitude));
}

}  // namespace

size_t DTypeSize(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return 4;
    case DType::kBF16:
    case DType::kF16:
      return 2;
  }
  return 0;
}

const char* DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return "F32";
    case DType::kBF16:
      return "BF16";
    case DType::kF16:
      return "F16";
  }
  return "unknown";
}

int64_t TensorInfo::num_elements() const { return ElementCount(shape).value_or(-1); }

absl::StatusOr<SafetensorsHeader> ParseSafetensorsHeader(std::string_view file_bytes) {
  if (file_bytes.size() < 8) {
    return HeaderError(absl::StrCat("file is ", file_bytes.size(),
                                    " bytes, too short for the 8-byte header length"));
  }
  uint64_t header_size;
  std::memcpy(&header_size, file_bytes.data(), sizeof(header_size));
  if (header_size > kMaxHeaderBytes || header_size > file_bytes.size() - 8) {
    return HeaderError(absl::StrCat("header length ", header_size, " does not fit in the ",
                                    file_bytes.size(), "-byte file"));
  }
  absl::StatusOr<Json> json =
      ParseJsonObject(file_bytes.substr(8, header_size), "safetensors header");
  if (!json.ok()) return json.status();
  const std::string_view data = file_bytes.substr(8 + header_size);

  SafetensorsHeader header;
  // Object iteration is in key order, so `tensors` comes out sorted by name.
  for (const auto& [name, entry] : json->items()) {
    if (name == "__metadata__") {
      if (!entry.is_object()) {
        return HeaderError(
            absl::StrCat("\"__metadata__\" must be an object, got ", DescribeJson(entry)));
      }
      for (const auto& [key, value] : entry.items()) {
        if (!value.is_string()) {
          return HeaderError(absl::StrCat("\"__metadata__\" value of \"", key,
                                          "\" must be a string, got ", DescribeJson(value)));
        }
        header.metadata.emplace(key, value.get<std::string>());
      }
      continue;
    }
    absl::StatusOr<TensorInfo> tensor = ParseEntry(name, entry, data);
    if (!tensor.ok()) return tensor.status();
    header.tensors.push_back(*std::move(tensor));
  }
  if (absl::Status status = CheckNoOverlap(header.tensors); !status.ok()) return status;
  return header;
}

SafetensorsFile::SafetensorsFile(std::string path, void* mapping, size_t mapping_size,
                                 SafetensorsHeader header)
    : path_(std::move(path)),
      mapping_(mapping),
      mapping_size_(mapping_size),
      header_(std::move(header)) {}

SafetensorsFile::SafetensorsFile(SafetensorsFile&& other) noexcept
    : path_(std::move(other.path_)),
      mapping_(std::exchange(other.mapping_, nullptr)),
      mapping_size_(std::exchange(other.mapping_size_, 0)),
      header_(std::move(other.header_)) {}

SafetensorsFile& SafetensorsFile::operator=(SafetensorsFile&& other) noexcept {
  if (this != &other) {
    Unmap();
    path_ = std::move(other.path_);
    mapping_ = std::exchange(other.mapping_, nullptr);
    mapping_size_ = std::exchange(other.mapping_size_, 0);
    header_ = std::move(other.header_);
  }
  return *this;
}

SafetensorsFile::~SafetensorsFile() { Unmap(); }

void SafetensorsFile::Unmap() {
  if (mapping_ != nullptr) munmap(mapping_, mapping_size_);
  mapping_ = nullptr;
  mapping_size_ = 0;
}

absl::StatusOr<SafetensorsFile> SafetensorsFile::Open(const std::string& path) {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return absl::ErrnoToStatus(errno, absl::StrCat(path, ": cannot open"));
  struct stat st;
  if (fstat(fd, &st) != 0) {
    const int error = errno;
    close(fd);
    return absl::ErrnoToStatus(error, absl::StrCat(path, ": cannot stat"));
  }
  if (!S_ISREG(st.st_mode)) {
    close(fd);
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a regular file"));
  }
  const size_t size = static_cast<size_t>(st.st_size);
  void* mapping = nullptr;  // mmap cannot map 0 bytes; the parser rejects them
  if (size > 0) {
    mapping = mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (mapping == MAP_FAILED) {
      const int error = errno;
      close(fd);
      return absl::ErrnoToStatus(error, absl::StrCat(path, ": cannot mmap"));
    }
  }
  close(fd);  // the mapping keeps the file alive
  // Owns the mapping from here on, so every error path below unmaps it.
  SafetensorsFile file(path, mapping, size, {});
  absl::StatusOr<SafetensorsHeader> header =
      ParseSafetensorsHeader(std::string_view(static_cast<const char*>(mapping), size));
  if (!header.ok()) return Annotate(header.status(), path);
  file.header_ = *std::move(header);
  return file;
}

const TensorInfo* SafetensorsFile::Find(std::string_view name) const {
  auto it = std::lower_bound(
      header_.tensors.begin(), header_.tensors.end(), name,
      [](const TensorInfo& tensor, std::string_view key) { return tensor.name < key; });
  return it != header_.tensors.end() && it->name == name ? &*it : nullptr;
}

namespace {

// The shards `index` lists, each opened once, in shard-name order; the index
// and the shards must agree exactly.
absl::StatusOr<std::vector<SafetensorsFile>> OpenIndexedShards(const std::string& dir,
                                                               const std::string& index) {
  namespace fs = std::filesystem;
  absl::StatusOr<std::string> text = ReadWholeFile(index);
  if (!text.ok()) return text.status();
  absl::StatusOr<Json> json = ParseJsonObject(*text, index);
  if (!json.ok()) return json.status();
  auto weight_map = json->find("weight_map");
  if (weight_map == json->end() || !weight_map->is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(index, ": \"weight_map\" must be an object of tensor name -> shard"));
  }
  std::map<std::string, std::vector<std::string>> names_by_shard;
  for (const auto& [name, shard] : weight_map->items()) {
    // A shard is a file beside the index, never a path elsewhere.
    if (!shard.is_string() || shard == "" || shard == "." || shard == ".." ||
        shard.get_ref<const std::string&>().find_first_of(std::string("/\0", 2)) !=
            std::string::npos) {
      return absl::InvalidArgumentError(absl::StrCat(
          index, ": tensor \"", name, "\": shard must be a file name, got ", DescribeJson(shard)));
    }
    names_by_shard[shard.get<std::string>()].push_back(name);
  }
  std::vector<SafetensorsFile> shards;
  for (const auto& [shard, names] : names_by_shard) {
    absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Open((fs::path(dir) / shard).string());
    if (!file.ok()) return file.status();
    for (const std::string& name : names) {
      if (file->Find(name) == nullptr) {
        return absl::InvalidArgumentError(absl::StrCat(
            index, ": tensor \"", name, "\" is mapped to shard ", shard, ", which lacks it"));
      }
    }
    shards.push_back(*std::move(file));
  }
  // Each tensor lives in exactly one shard: an unlisted one, or one the index
  // places elsewhere, would be a second copy nobody checks. (After all shards
  // open, so that a misplaced tensor is first reported as missing from the
  // shard it was mapped to.)
  for (const SafetensorsFile& file : shards) {
    const std::string shard = fs::path(file.path()).filename().string();
    for (const TensorInfo& tensor : file.tensors()) {
      auto entry = weight_map->find(tensor.name);
      if (entry == weight_map->end() || *entry != shard) {
        return absl::InvalidArgumentError(absl::StrCat(file.path(), ": tensor \"", tensor.name,
                                                       "\" is not mapped to this shard by ",
                                                       kIndexFile));
      }
    }
  }
  return shards;
}

}  // namespace

absl::StatusOr<SafetensorsModel> SafetensorsModel::Open(const std::string& dir) {
  const std::string single = (std::filesystem::path(dir) / kSingleFile).string();
  const std::string index = (std::filesystem::path(dir) / kIndexFile).string();
  std::error_code error;
  SafetensorsModel model;
  // As transformers does: the single file wins when both are present.
  if (std::filesystem::exists(single, error)) {
    absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Open(single);
    if (!file.ok()) return file.status();
    model.shards_.push_back(*std::move(file));
  } else if (std::filesystem::exists(index, error)) {
    absl::StatusOr<std::vector<SafetensorsFile>> shards = OpenIndexedShards(dir, index);
    if (!shards.ok()) return shards.status();
    model.shards_ = *std::move(shards);
  } else {
    return absl::NotFoundError(
        absl::StrCat(dir, ": has neither ", kSingleFile, " nor ", kIndexFile));
  }
  for (const SafetensorsFile& shard : model.shards_) {
    for (const TensorInfo& tensor : shard.tensors()) model.tensors_.emplace(tensor.name, &tensor);
  }
  return model;
}

const TensorInfo* SafetensorsModel::Find(std::string_view name) const {
  auto it = tensors_.find(name);
  return it != tensors_.end() ? it->second : nullptr;
}

std::vector<std::string> SafetensorsModel::names() const {
  std::vector<std::string> names;
  names.reserve(tensors_.size());
  for (const auto& [name, tensor] : tensors_) names.push_back(name);
  return names;
}

absl::Status CopyToFloat32(const TensorInfo& tensor, float* out) {
  const int64_t count = tensor.num_elements();
  if (count < 0 || tensor.nbytes != static_cast<uint64_t>(count) * DTypeSize(tensor.dtype)) {
    return TensorError(tensor.name,
                       absl::StrCat(tensor.nbytes, " bytes do not hold ", DTypeName(tensor.dtype),
                                    " ", ShapeString(tensor.shape)));
  }
  switch (tensor.dtype) {
    case DType::kF32:
      if (count > 0) std::memcpy(out, tensor.data, tensor.nbytes);
      break;
    case DType::kBF16:
      for (int64_t i = 0; i < count; ++i) out[i] = BFloat16ToFloat(LoadU16(tensor.data + 2 * i));
      break;
    case DType::kF16:
      for (int64_t i = 0; i < count; ++i) out[i] = Float16ToFloat(LoadU16(tensor.data + 2 * i));
      break;
  }
  return absl::OkStatus();
}

absl::Status CheckShapes(const SafetensorsModel& model,
                         const std::vector<ExpectedTensor>& expected) {
  std::set<std::string_view> expected_names;
  for (const ExpectedTensor& want : expected) {
    expected_names.insert(want.name);
    const TensorInfo* got = model.Find(want.name);
    if (got == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(
          "missing tensor \"", want.name, "\" (expected shape ", ShapeString(want.shape), ")"));
    }
    if (got->shape != want.shape) {
      return TensorError(want.name, absl::StrCat("expected shape ", ShapeString(want.shape),
                                                 ", got ", ShapeString(got->shape)));
    }
  }
  for (const std::string& name : model.names()) {
    if (!expected_names.contains(name)) {
      return absl::InvalidArgumentError(absl::StrCat("unexpected tensor \"", name, "\" (shape ",
                                                     ShapeString(model.Find(name)->shape),
                                                     "), which this config does not have"));
    }
  }
  return absl::OkStatus();
}

}  // namespace gdnserve
