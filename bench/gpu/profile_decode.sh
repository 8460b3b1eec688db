#!/usr/bin/env bash
# Where a decode step's time goes, kernel by kernel, on the GPU machine
# (Firecracker runtime: ncu reads the counters there). Builds bench_cuda_engine,
# then for each batch runs it with --profile-step under Nsight Compute, which
# times each kernel of one step alone (duration, DRAM bytes), and summarizes:
# per kernel kind, its time, its achieved bandwidth, and the sum of all kernels
# against the step's wall time (the rest is launch gaps and host work).
#   bash bench/gpu/profile_decode.sh [BATCHES]   (default 1,64,256)
#   bash bench/gpu/profile_decode.sh prefill     (one 8192-token forward, tensor-core chunk kernel)
set -uo pipefail
batches=${1:-1,64,256}
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
out=${OUT:-$root/bench/out}
mkdir -p "$out"
source scripts/device_env.sh > "$out/env.log" 2>&1 || { cat "$out/env.log"; exit 1; }
if [[ ! -x build/engine-only/bench/bench_cuda_engine ]]; then
  cmake --preset engine-only -DGDNSERVE_CUDA=ON -DGDNSERVE_BENCH=ON \
    -DCMAKE_CUDA_ARCHITECTURES=90a -DGDNSERVE_PYTHON="$(command -v python3)" > "$out/configure.log" 2>&1 \
    || { tail -40 "$out/configure.log"; exit 1; }
fi
cmake --build build/engine-only -j "$(nproc)" --target bench_cuda_engine > "$out/build_profile.log" 2>&1 \
  || { grep -E "error" "$out/build_profile.log" | head -40; exit 1; }
# The raw logs go to one tarball ($OUT/ncu_decode.tar): only a few files come back from the GPU machine.
logs=$(mktemp -d)
if [[ $batches == prefill ]]; then
  timeout 400 ncu --clock-control none --profile-from-start off --csv \
    --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum \
    build/engine-only/bench/bench_cuda_engine --only prefill --prefill-kernels chunked_wy --prefill 8192 \
    --prefill-seqs 1 --chunk 8192 --profile-step > "$logs/ncu_prefill.csv" 2> "$logs/ncu_prefill.err"
  echo "ncu prefill: exit $?"
  python3 bench/gpu/summarize_ncu.py "$logs/ncu_prefill.csv" --labels "prefill forward, 8192 tokens" --first 24 \
    | tee "$logs/ncu_prefill.txt"
  batches=""
fi
for b in ${batches//,/ }; do
  timeout 400 ncu --clock-control none --profile-from-start off --csv \
    --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum \
    build/engine-only/bench/bench_cuda_engine --only decode --batches "$b" --steps 5 --profile-step \
    > "$logs/ncu_decode_$b.csv" 2> "$logs/ncu_decode_$b.err"
  echo "ncu batch $b: exit $?"
  python3 bench/gpu/summarize_ncu.py "$logs/ncu_decode_$b.csv" --labels "batch $b, CUDA graphs on" --first 24 \
    | tee "$logs/ncu_decode_$b.txt"
done
