#!/usr/bin/env bash
# CPU engine benchmark: builds release, generates the tiny and ~100M test
# models (fixed seeds), runs bench_cpu_engine on each and plots decode step
# time against the memory floor (bench/cpu_decode.png).
#   bench/run_cpu_bench.sh [build_dir]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build/release}
out=$root/bench/out
mkdir -p "$out"
bash "$root/scripts/setup_python.sh"
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release > /dev/null
cmake --build "$build" --target bench_cpu_engine
py=$root/.venv/bin/python
$py "$root/tools/gen_model.py" --preset tiny --out "$out/tiny" --seed 1
$py "$root/tools/gen_model.py" --preset mid --out "$out/mid" --seed 1
for m in tiny mid; do
  echo "== $m"
  "$build/bench/bench_cpu_engine" --model "$out/$m" --prefill 1024 --batches 1,2,4,8,16,32 \
    --decode-steps 24 --json "$out/cpu_$m.json"
done
$py "$root/bench/plot_cpu.py" "$out/cpu_mid.json" "$root/bench/cpu_decode.png"
