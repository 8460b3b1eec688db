#!/usr/bin/env bash
# A/B of the prefill op on the GPU machine: bench/gpu/prefill_kernel_bench.py
# with this tree's C ABI library next to the one built from .baseline/, in the
# same call, on the same card, alternating the two (the pairs show drift).
#   bash scripts/make_baseline.sh REV         (here; carry .baseline)
#   [ROUNDS=2] [IMPLS=recurrent,tc,tc3] bash bench/gpu/ab_prefill_op.sh [BENCH ARGS]   (there)
# BENCH ARGS go to prefill_kernel_bench.py (e.g. --shapes 8x8192 --reps 5);
# IMPLS may name tcbf16: a baseline library without bf16 I/O skips that row;
# JSON per side and round in $OUT (or bench/out) as op_SIDE_ROUND.json.
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
out=${OUT:-$root/bench/out}
mkdir -p "$out"
source scripts/device_env.sh > /dev/null 2>&1 || { echo "ab_prefill_op: device_env failed"; exit 1; }
[[ -d .baseline ]] || { echo "ab_prefill_op: no .baseline/ (scripts/make_baseline.sh REV, then carry it)"; exit 1; }
echo "baseline: $(cat .baseline/REV 2>/dev/null)"
build() {  # build DIR: the engine-only tree's C ABI library in DIR (configured unless it is already)
  (cd "$1" && { [[ -f build/engine-only/CMakeCache.txt ]] ||
     cmake --preset engine-only -DGDNSERVE_CUDA=ON -DGDNSERVE_TESTS=OFF -DCMAKE_CUDA_ARCHITECTURES=90a \
       -DGDNSERVE_PYTHON="$(command -v python3)" > "$out/ab_configure.log" 2>&1; } &&
   cmake --build build/engine-only -j "$(nproc)" --target gdn_cuda_capi > "$out/ab_build.log" 2>&1) \
    || { grep -E "error" "$out/ab_build.log" "$out/ab_configure.log" | head -20; return 1; }
}
build .baseline || exit 1
build . || exit 1
lib=build/engine-only/kernels/cuda/libgdn_cuda_capi.so
rc=0
for round in $(seq 1 "${ROUNDS:-2}"); do
  for side in baseline this; do
    path=$lib
    [[ $side == baseline ]] && path=.baseline/$lib
    echo "== $side (round $round)"
    timeout 300 python3 -u bench/gpu/prefill_kernel_bench.py --lib "$path" --impls "${IMPLS:-recurrent,tc,tc3}" \
      --reps 3 "$@" --json "$out/op_${side}_$round.json" 2>&1 | grep -vE "^H=|running"
    r=${PIPESTATUS[0]}
    [[ $r == 0 ]] || { echo "ab_prefill_op: $side round $round: exit $r"; rc=1; }
  done
done
exit $rc
