#!/usr/bin/env bash
# Nsight Compute over the tensor-core chunkwise prefill kernel's phases, on
# the GPU machine (Firecracker runtime: ncu reads the counters there). Builds
# the C ABI library, then profiles one run of each listed shape: per shape the
# report, its summary (ncu_SHAPE.txt) and its SASS with per-instruction
# counters (sass_SHAPE.csv, summarised between barriers by
# bench/gpu/sass_segments.py, printed). Three files a shape (the device
# tool brings back 8); the build logs stay out of $OUT (a failing step
# prints the end of its log).
#   [KERNEL=Phase1] [COUNT=2] bash bench/gpu/profile_prefill.sh [SHAPES]   (default 1x65536,8x8192)
set -uo pipefail
shapes=${1:-1x65536,8x8192}
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
out=${OUT:-$root/bench/out}
mkdir -p "$out"
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
source scripts/device_env.sh > "$logs/env.log" 2>&1 || { cat "$logs/env.log"; exit 1; }
cmake --preset engine-only -DGDNSERVE_CUDA=ON -DGDNSERVE_TESTS=OFF -DGDNSERVE_BENCH=ON \
  -DCMAKE_CUDA_ARCHITECTURES=90a -DCMAKE_CUDA_FLAGS=-lineinfo -DGDNSERVE_PYTHON="$(command -v python3)" > "$logs/configure.log" 2>&1 \
  || { tail -40 "$logs/configure.log"; exit 1; }
cmake --build build/engine-only -j "$(nproc)" --target gdn_cuda_capi > "$logs/build.log" 2>&1 \
  || { grep -E "error" "$logs/build.log" | head -40; exit 1; }
lib=build/engine-only/kernels/cuda/libgdn_cuda_capi.so
for shape in ${shapes//,/ }; do
  echo "== $shape"
  rm -f "$out/ncu_$shape.ncu-rep"
  timeout 300 ncu --clock-control none -k regex:"${KERNEL:-Phase}" -c "${COUNT:-2}" --import-source yes \
    --section SpeedOfLight --section WarpStateStats --section Occupancy --section SourceCounters \
    --section InstructionStats -o "$out/ncu_$shape" \
    python3 bench/gpu/prefill_kernel_bench.py --lib "$lib" --shapes "$shape" --impls tc --reps 1 > /dev/null 2>&1
  [[ -f "$out/ncu_$shape.ncu-rep" ]] || { echo "ncu wrote no report for $shape"; continue; }
  ncu -i "$out/ncu_$shape.ncu-rep" > "$out/ncu_$shape.txt" 2>&1
  grep -E "Phase|Duration|Throughput|Achieved Occupancy|Executed Instructions|Issued" "$out/ncu_$shape.txt" \
    | grep -v "^ *-" | head -40
  # Per SASS instruction: executions and stall samples, cut at the barriers.
  if ncu -i "$out/ncu_$shape.ncu-rep" --page source --csv --print-source sass > "$out/sass_$shape.csv" \
    2> "$logs/sass.txt"; then
    python3 bench/gpu/sass_segments.py "$out/sass_$shape.csv"
  else
    head -c 600 "$logs/sass.txt"
  fi
done
