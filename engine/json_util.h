// Strict JSON reading shared by the model-file parsers (config.json, the
// safetensors header, the shard index).
#pragma once

#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"

namespace gdnserve {

// Parses text that must be one JSON object. Stricter than nlohmann's default:
// a repeated key (which nlohmann resolves silently to the last value) and a
// raw NUL byte (where nlohmann stops as at the end of input) are errors.
// Messages start with `what` and name the repeated key.
absl::StatusOr<nlohmann::json> ParseJsonObject(std::string_view text, absl::string_view what);

// The whole of a regular file. NotFound (naming the path) when it is missing
// or not a regular file, DataLoss on a read error.
absl::StatusOr<std::string> ReadWholeFile(const std::string& path);

// A JSON value for an error message: scalars as written (long strings cut
// short), containers by kind. Never throws, even on bad UTF-8.
std::string DescribeJson(const nlohmann::json& value);

}  // namespace gdnserve
