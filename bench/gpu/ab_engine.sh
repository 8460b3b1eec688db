#!/usr/bin/env bash
# A/B on the GPU machine: bench_cuda_engine of this tree next to the same
# bench built from a baseline source tree, in the same call, on the same card.
#   bash scripts/make_baseline.sh REV         (here: the baseline's sources into .baseline/, carry it)
#   [ROUNDS=2] bash bench/gpu/ab_engine.sh [BENCH ARGS]  (there; default: --only decode)
# Runs baseline, this tree, baseline again, this tree again: the pairs show
# the card's drift. Needs this tree's engine-only build (run_device.sh builds it).
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
out=${OUT:-$root/bench/out}
mkdir -p "$out"
args=("$@")
[[ ${#args[@]} -gt 0 ]] || args=(--only decode)
source scripts/device_env.sh > /dev/null 2>&1 || { echo "ab_engine: device_env failed"; exit 1; }
[[ -d .baseline ]] || { echo "ab_engine: no .baseline/ (scripts/make_baseline.sh REV, then carry it)"; exit 1; }
echo "baseline: $(cat .baseline/REV 2>/dev/null)"
(cd .baseline && cmake --preset engine-only -DGDNSERVE_CUDA=ON -DGDNSERVE_BENCH=ON -DCMAKE_CUDA_ARCHITECTURES=90a \
   -DGDNSERVE_PYTHON="$(command -v python3)" > "$out/baseline_configure.log" 2>&1 &&
 cmake --build build/engine-only -j "$(nproc)" --target bench_cuda_engine > "$out/baseline_build.log" 2>&1) \
  || { grep -E "error" "$out/baseline_build.log" "$out/baseline_configure.log" | head -20; exit 1; }
cmake --build build/engine-only -j "$(nproc)" --target bench_cuda_engine > /dev/null 2>&1 || exit 1
for round in $(seq 1 "${ROUNDS:-2}"); do
  for side in baseline this; do
    bin=build/engine-only/bench/bench_cuda_engine
    [[ $side == baseline ]] && bin=.baseline/$bin
    echo "== $side (round $round)"
    timeout 300 "$bin" "${args[@]}" --json "$out/ab_${side}_$round.json" 2>&1 | grep -vE "^random|^device|^ceilings"
  done
done
