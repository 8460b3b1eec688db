// Read-only, memory-mapped safetensors files and model directories.
//
// File layout (https://huggingface.co/docs/safetensors): an 8-byte
// little-endian header length N, N bytes of JSON header, then the data region.
// The header maps each tensor name to {"dtype", "shape", "data_offsets":
// [begin, end]} with offsets relative to the data region; an optional
// "__metadata__" maps strings to strings.
//
// Everything the header claims is checked before any tensor byte is touched,
// so a truncated or corrupt file is an error, never a crash. (A file that is
// truncated by someone else while mapped can still raise SIGBUS; nothing in a
// process can prevent that.)
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/config.h"

namespace gdnserve {

// The dtypes a model may be stored in (DEVELOPERS.md "Tensors").
enum class DType { kF32, kBF16, kF16 };

size_t DTypeSize(DType dtype);
// The header's spelling: "F32", "BF16", "F16". (A C string because Debian's
// Abseil has its own string_view, which std::string_view does not convert to.)
const char* DTypeName(DType dtype);

struct TensorInfo {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;  // [] is a scalar (one element)
  // Into the mapped file; in general NOT aligned for the dtype (the header
  // length is arbitrary), so read with memcpy or CopyToFloat32.
  const std::byte* data = nullptr;
  size_t nbytes = 0;  // == num_elements() * DTypeSize(dtype), checked on parse

  int64_t num_elements() const;
};

// What a safetensors header describes, with `data` pointing into the bytes it
// was parsed from.
struct SafetensorsHeader {
  std::vector<TensorInfo> tensors;              // sorted by name
  std::map<std::string, std::string> metadata;  // "__metadata__"; may be empty
};

// Parses and checks the header of a whole safetensors file held in
// `file_bytes`: the length field is sane and within the file, the header is a
// JSON object without repeated keys, each entry has exactly dtype (supported),
// shape (integers >= 0) and data_offsets ([begin <= end] inside the data
// region), its byte count equals product(shape) * dtype size without overflow,
// and no two tensors share a byte. Any input gives a value or an
// InvalidArgument error naming the tensor or field; it never crashes (the
// entry point for fuzzing).
absl::StatusOr<SafetensorsHeader> ParseSafetensorsHeader(std::string_view file_bytes);

// One mapped .safetensors file. Move-only; tensor data stays valid (and at
// the same address) for the object's lifetime, including across moves.
class SafetensorsFile {
 public:
  // Maps `path` read-only and parses its header. Errors start with the path.
  static absl::StatusOr<SafetensorsFile> Open(const std::string& path);

  SafetensorsFile(SafetensorsFile&& other) noexcept;
  SafetensorsFile& operator=(SafetensorsFile&& other) noexcept;
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;
  ~SafetensorsFile();

  // nullptr when the file has no tensor of that name.
  const TensorInfo* Find(std::string_view name) const;
  const std::vector<TensorInfo>& tensors() const { return header_.tensors; }
  const std::map<std::string, std::string>& metadata() const { return header_.metadata; }
  const std::string& path() const { return path_; }

 private:
  SafetensorsFile(std::string path, void* mapping, size_t mapping_size, SafetensorsHeader header);
  void Unmap();

  std::string path_;
  void* mapping_ = nullptr;  // mmap'ed whole file; nullptr for an empty one
  size_t mapping_size_ = 0;
  SafetensorsHeader header_;
};

// A model directory's weights: `model.safetensors`, or else the shards listed
// by `model.safetensors.index.json` ({"weight_map": {tensor: shard file}}).
// Each shard is mapped once; the index and the shards must agree exactly (a
// name mapped to a shard that lacks it, or a shard tensor the index does not
// map to that shard, is an error). Move-only.
class SafetensorsModel {
 public:
  static absl::StatusOr<SafetensorsModel> Open(const std::string& dir);

  // nullptr when the model has no tensor of that name.
  const TensorInfo* Find(std::string_view name) const;
  // Every tensor name, sorted.
  std::vector<std::string> names() const;
  size_t num_tensors() const { return tensors_.size(); }
  const std::vector<SafetensorsFile>& shards() const { return shards_; }

 private:
  SafetensorsModel() = default;

  std::vector<SafetensorsFile> shards_;
  // Points into shards_[i].tensors(), whose storage never moves once parsed.
  std::map<std::string, const TensorInfo*, std::less<>> tensors_;
};

// Converts a tensor to float32: F32 is copied, BF16 and F16 are widened
// exactly (F16 subnormals, infinities and NaNs included). `out` must hold
// tensor.num_elements() floats. InvalidArgument if nbytes does not match.
absl::Status CopyToFloat32(const TensorInfo& tensor, float* out);

// Checks that `model` holds exactly `expected` (see ExpectedTensors): the
// first missing tensor, wrong shape, or unexpected extra tensor is an
// InvalidArgument error naming the tensor, with expected and actual shapes.
absl::Status CheckShapes(const SafetensorsModel& model,
                         const std::vector<ExpectedTensor>& expected);

}  // namespace gdnserve
