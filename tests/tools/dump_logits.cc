// Test helper: runs the C++ CPU engine on given token ids and writes the
// logits of every position as a float32 .npy [T, vocab], for comparison with
// tools/reference (tests/python/test_agreement.py).
//
//   gdn_dump_logits --model DIR --ids 3,4,5 --out FILE.npy
//                   [--mode prefill|decode] [--split 2,5]
// prefill: one chunkwise prefill of all ids (with --split: pieces ending at
// the given offsets, carrying the state); decode: the first token as a
// prefill, then one recurrent decode step per token.
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "engine/cpu_backend.h"
#include "engine/weights.h"

namespace {

int Fail(const std::string& msg) {
  std::fprintf(stderr, "gdn_dump_logits: %s\n", msg.c_str());
  return 1;
}

bool ParseInts(const std::string& s, std::vector<int32_t>* out) {
  for (absl::string_view part : absl::StrSplit(s, ',', absl::SkipEmpty())) {
    int32_t v;
    if (!absl::SimpleAtoi(part, &v)) return false;
    out->push_back(v);
  }
  return true;
}

void WriteNpy(const std::string& path, const std::vector<float>& data, int64_t rows, int64_t cols) {
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + std::to_string(rows) + ", " +
                       std::to_string(cols) + "), }";
  const size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header.push_back('\n');
  std::ofstream f(path, std::ios::binary);
  f.write("\x93NUMPY\x01\x00", 8);
  const uint16_t len = static_cast<uint16_t>(header.size());
  f.write(reinterpret_cast<const char*>(&len), 2);
  f.write(header.data(), header.size());
  f.write(reinterpret_cast<const char*>(data.data()), data.size() * sizeof(float));
}

}  // namespace

int main(int argc, char** argv) {
  std::string model, ids_arg, out_path, mode = "prefill", split_arg;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string { return i + 1 < argc ? argv[++i] : ""; };
    if (a == "--model") model = next();
    else if (a == "--ids") ids_arg = next();
    else if (a == "--out") out_path = next();
    else if (a == "--mode") mode = next();
    else if (a == "--split") split_arg = next();
    else if (a == "--help" || a == "-h") {
      std::printf("usage: gdn_dump_logits --model DIR --ids 3,4,5 --out FILE.npy [--mode prefill|decode] [--split 2,5]\n");
      return 0;
    } else {
      return Fail("unknown argument " + a);
    }
  }
  std::vector<int32_t> ids, split;
  if (model.empty() || out_path.empty() || !ParseInts(ids_arg, &ids) || ids.empty()) {
    return Fail("need --model, --out and non-empty --ids");
  }
  if (!ParseInts(split_arg, &split)) return Fail("bad --split");
  if (mode != "prefill" && mode != "decode") return Fail("--mode must be prefill or decode");

  auto weights = gdnserve::LoadModelWeights(model);
  if (!weights.ok()) return Fail(std::string(weights.status().message()));
  auto backend = gdnserve::CreateCpuBackend(std::move(*weights), {.num_slots = 1});
  if (!backend.ok()) return Fail(std::string(backend.status().message()));
  gdnserve::Backend& be = **backend;
  const int slot = *be.state_pool().Acquire();

  // Piece boundaries.
  std::vector<size_t> ends;
  if (mode == "decode") {
    for (size_t t = 1; t <= ids.size(); ++t) ends.push_back(t);
  } else {
    for (int32_t s : split) {
      if (s <= 0 || static_cast<size_t>(s) >= ids.size() || (!ends.empty() && static_cast<size_t>(s) <= ends.back())) {
        return Fail("--split offsets must increase within (0, len(ids))");
      }
      ends.push_back(s);
    }
    ends.push_back(ids.size());
  }
  const int64_t vocab = be.config().vocab_size;
  std::vector<float> logits;
  size_t begin = 0;
  gdnserve::ForwardOutput out;
  for (size_t end : ends) {
    gdnserve::SeqPiece piece{slot, absl::MakeConstSpan(ids).subspan(begin, end - begin), true};
    if (absl::Status s = be.Forward({&piece, 1}, &out); !s.ok()) return Fail(std::string(s.message()));
    logits.insert(logits.end(), out.logits.begin(), out.logits.end());
    begin = end;
  }
  WriteNpy(out_path, logits, static_cast<int64_t>(ids.size()), vocab);
  return 0;
}
