#!/usr/bin/env bash
# Builds the libFuzzer targets of tests/fuzz with clang (ASan+UBSan, coverage
# on the engine/server code they reach) in build/fuzz, replays each target's
# committed corpus, then fuzzes each for a bounded time.
#   scripts/fuzz.sh [SECONDS_PER_TARGET=20] [TARGET...]
# New inputs go to build/fuzz/corpus/<target> (not the committed corpus);
# crashes to build/fuzz/artifacts/. A crash fails the script: minimize it
# (<target> -minimize_crash=1 FILE), fix, and commit it as
# tests/fuzz/corpus/<target>/crash-<what> so it runs as a regression.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
secs=${1:-20}
shift || true
all=(safetensors_fuzz generate_request_fuzz openai_request_fuzz detokenizer_fuzz stop_matcher_fuzz)
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=("${all[@]}")
dir=build/fuzz
jobs=${JOBS:-$(nproc)}
cxx=${FUZZ_CXX:-clang++}
cc=${FUZZ_CC:-clang}
command -v "$cxx" > /dev/null || { echo "fuzz: $cxx not found (apt-get install clang libclang-rt-dev)" >&2; exit 2; }
python=$root/.venv/bin/python
[[ -x $python ]] || python=$(command -v python3)

flags="-O1 -g -fno-omit-frame-pointer -fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined"
t0=$(date +%s)
cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_COMPILER="$cxx" -DCMAKE_C_COMPILER="$cc" \
  -DCMAKE_CXX_FLAGS="$flags" -DCMAKE_C_FLAGS="$flags" \
  -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined" \
  -DGDNSERVE_CUDA=OFF -DGDNSERVE_BENCH=OFF -DGDNSERVE_FUZZ=ON -DGDNSERVE_PYTHON="$python" > /dev/null
cmake --build "$dir" -j "$jobs" --target "${targets[@]}"
t1=$(date +%s)
echo "fuzz: build $((t1 - t0)) s"

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
# One OpenMP thread: the targets are single-threaded and libFuzzer's leak
# check dislikes idle pool threads.
export OMP_NUM_THREADS=1
mkdir -p "$dir/artifacts"
failed=()
for t in "${targets[@]}"; do
  seeds=tests/fuzz/corpus/$t
  work=$dir/corpus/$t
  mkdir -p "$work"
  dict=()
  [[ -f tests/fuzz/$t.dict ]] && dict=(-dict="tests/fuzz/$t.dict")
  echo "== $t: ${secs} s"
  # Seeds and past crashes first (also catches regressions without fuzzing),
  # then fuzz; -max_len keeps inputs to what the targets can meaningfully use.
  if ! "$dir/tests/fuzz/$t" -runs=0 "$seeds" > "$dir/$t.replay.log" 2>&1; then
    echo "fuzz: $t fails on its committed corpus:"; tail -30 "$dir/$t.replay.log"; failed+=("$t"); continue
  fi
  if ! "$dir/tests/fuzz/$t" "${dict[@]}" -max_total_time="$secs" -max_len=4096 -timeout=10 -rss_limit_mb=2048 \
       -artifact_prefix="$dir/artifacts/$t-" -print_final_stats=1 "$work" "$seeds" > "$dir/$t.log" 2>&1; then
    echo "fuzz: $t CRASHED:"; tail -40 "$dir/$t.log"; failed+=("$t")
  fi
  grep -E '^stat::number_of_executed_units|^#[0-9]+.*DONE' "$dir/$t.log" | tail -2 || true
done
echo "fuzz: ${#targets[@]} targets x ${secs} s, total $(( $(date +%s) - t0 )) s, failed: ${failed[*]:-none}"
[[ ${#failed[@]} -eq 0 ]]
