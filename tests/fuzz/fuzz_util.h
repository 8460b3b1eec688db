// Shared by the fuzz targets: the tokenizer they use, found without flags
// (libFuzzer owns argv): $GDNSERVE_FUZZ_TOKENIZER, else the bundled model.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>

#include "engine/tokenizer.h"

namespace gdnserve::fuzz {

inline const Tokenizer& FuzzTokenizer() {
  static const Tokenizer* tokenizer = [] {
    const char* env = std::getenv("GDNSERVE_FUZZ_TOKENIZER");
    std::string path = env != nullptr ? env : GDNSERVE_FUZZ_DEFAULT_TOKENIZER;
    auto loaded = Tokenizer::Load(path);
    if (!loaded.ok()) {
      std::fprintf(stderr, "fuzz: cannot load tokenizer %s: %s\n", path.c_str(),
                   std::string(loaded.status().message()).c_str());
      std::abort();
    }
    return loaded->release();
  }();
  return *tokenizer;
}

}  // namespace gdnserve::fuzz
