#!/usr/bin/env bash
# One GPU-machine call: build the engine-only tree with CUDA, run the CUDA
# tests (kernels vs CPU twins, backend vs CPU backend), then the benchmarks
# (engine decode/prefill on the 1.3B shape; the decode kernel alone vs
# flash-linear-attention). Logs and JSON go to $OUT (or bench/out).
#
# Needs, carried with the tree: .deps (scripts/fetch_device_deps.sh), .whl
# (fla-core 0.6.0 + einops wheels) and tests/out/models (tools/gen_model.py
# --suite tests --out tests/out/models: the machine has no spm_train).
# Optional: .triton-cache (from an earlier call's $OUT/triton-cache.tar).
# GPU_TESTS="cuda_kernels_test ..." runs only the named test binaries in mode tests.
#   bash bench/gpu/run_device.sh [MODE[,MODE...]]   (default all)
# Modes: tests; bench (engine decode + prefill, both kernel benches); kernel / prefill (the decode / prefill
# kernel vs fla); engine-decode / engine-prefill (one half of the engine bench); all.
set -uo pipefail
what=${1:-all}
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
out=${OUT:-$root/bench/out}
mkdir -p "$out"
source scripts/device_env.sh > "$out/env.log" 2>&1 || { cat "$out/env.log"; exit 1; }
# Triton's compiled kernels (fla's chunk_gdn2 compiles and autotunes many
# configurations: minutes on a fresh machine) live in the tree: carry
# .triton-cache to the next call (unpack $OUT/triton-cache.tar into the tree).
export TRITON_CACHE_DIR=$root/.triton-cache
mkdir -p "$TRITON_CACHE_DIR"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader | tee "$out/gpu.txt"
t0=$(date +%s)
cmake --preset engine-only -DGDNSERVE_CUDA=ON -DGDNSERVE_TESTS=ON -DGDNSERVE_BENCH=ON \
  -DCMAKE_CUDA_ARCHITECTURES=90a -DGDNSERVE_PYTHON="$(command -v python3)" > "$out/configure.log" 2>&1 \
  || { tail -40 "$out/configure.log"; exit 1; }
cmake --build build/engine-only -j "$(nproc)" --target cuda_smoke_test cuda_kernels_test cuda_backend_test \
  bench_cuda_engine gdn_cuda_capi > "$out/build.log" 2>&1 || { grep -E "error|Error" "$out/build.log" | head -40; exit 1; }
echo "build: $(( $(date +%s) - t0 )) s"
rc=0
want() {  # want MODE...: true when any named mode (or all) was asked for
  local m
  for m in all "$@"; do [[ ",$what," == *",$m,"* ]] && return 0; done
  return 1
}
if want tests; then
  export GDNSERVE_TEST_MODELS=$root/tests/out/models
  for t in ${GPU_TESTS:-cuda_smoke_test cuda_kernels_test cuda_backend_test}; do
    timeout 300 build/engine-only/tests/$t > "$out/$t.log" 2>&1
    r=$?
    echo "$t: exit $r; $(grep -E '^\[  (PASSED|FAILED) ' "$out/$t.log" | tr '\n' ' ')"
    grep -E "Failure|error|worst|FAILED|gap" "$out/$t.log" | head -30
    [[ $r == 0 ]] || rc=1
  done
fi
if want bench || { want engine-decode && want engine-prefill; }; then
  timeout 420 build/engine-only/bench/bench_cuda_engine --json "$out/engine_bench.json" 2>&1 | tee "$out/engine_bench.log"
elif want engine-decode engine-prefill; then
  only=$(want engine-decode && echo decode || echo prefill)
  timeout 420 build/engine-only/bench/bench_cuda_engine --only "$only" --json "$out/engine_$only.json" 2>&1 \
    | tee "$out/engine_$only.log"
fi
if want bench kernel; then
  timeout 120 python3 -u bench/gpu/decode_kernel_bench.py --lib build/engine-only/kernels/cuda/libgdn_cuda_capi.so \
    --batches 1,4,16,64,256 --json "$out/decode_kernel.json" 2>&1 | tee "$out/decode_kernel.log"
fi
if want bench prefill; then
  timeout 420 python3 -u bench/gpu/prefill_kernel_bench.py --lib build/engine-only/kernels/cuda/libgdn_cuda_capi.so \
    --impls "${PREFILL_IMPLS:-all}" --json "$out/prefill_kernel.json" 2>&1 | tee "$out/prefill_kernel.log"
fi
if [[ -n "$(ls -A "$TRITON_CACHE_DIR" 2>/dev/null)" ]]; then
  tar -C "$root" -cf "$out/triton-cache.tar" .triton-cache
fi
exit $rc
