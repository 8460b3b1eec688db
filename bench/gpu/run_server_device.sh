#!/usr/bin/env bash
# One GPU-machine call for issue 5's last benchmark: the real gdnserve on the
# GPU under gdnserve-bench (output tokens/s at 64 and 256 gRPC streams, fixed
# 128-token prompts and 256 output tokens, ignore_eos) next to the engine's raw
# decode step throughput at the same batch (bench_cuda_engine, same model
# directory, CUDA graphs on as in the server), on the GDN-2 1.3B shape with
# random bf16 weights. Logs, JSON and summary.md go to $OUT (or
# bench/out/gpu-server).
#
# Steps: source scripts/device_env.sh (unpacks both .deps tarballs); build
# gdnserve, gdnserve-bench and bench_cuda_engine in build/gpu-server (CUDA +
# server, Release, sm_90a) while tools/gen_model.py writes the model into
# /tmp (numpy only, with the carried tokenizer: the machine has no spm_train);
# bench_cuda_engine --batches 64,256 --prefill "" (decode only); then
# gdnserve --device cuda --max-seqs 256, /readyz, and per concurrency a short
# warm-up run (CUDA graph capture) and the measured run. About 5 minutes.
#
# Needs, carried with the tree (bench/RESULTS.md, GPU, "What is not there yet"):
#   .deps/device-deps.tar.xz .deps/device-deps-server.tar.xz   (scripts/fetch_device_deps.sh --server)
#   tests/out/tokenizer-32k/tokenizer.model   (tools/gen_model.py --preset gdn2_1.3b --tokenizer-only
#                                              --out tests/out/tokenizer-32k)
#   bash bench/gpu/run_server_device.sh
# Knobs (environment): CONCURRENCY ("64 256"), PROMPT_TOKENS (128),
# OUTPUT_TOKENS (256), WAVES (4: requests = WAVES x concurrency),
# STEP_TOKEN_BUDGET (8192), MODEL_DIR (/tmp/gdn2_1.3b), PRESET (gdn2_1.3b),
# TOKENIZER, DEVICE (cuda; cpu runs the same flow on the CPU with
# bench_cpu_engine, for trying the script without a GPU).
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
out=${OUT:-$root/bench/out/gpu-server}
mkdir -p "$out"
t_start=$(date +%s)
say() { echo "[$(( $(date +%s) - t_start )) s] $*"; }
# Every step's timeout is capped so that the whole run ends by DEADLINE_S
# (under the machine's 10-minute limit), summary included.
DEADLINE_S=${DEADLINE_S:-530}
cap() {  # $1: a step's own limit in seconds -> min($1, seconds left), at least 1
  local left=$(( DEADLINE_S - ($(date +%s) - t_start) ))
  (( left < $1 )) && echo $(( left > 1 ? left : 1 )) || echo "$1"
}

CONCURRENCY=${CONCURRENCY:-"64 256"}
PROMPT_TOKENS=${PROMPT_TOKENS:-128}
OUTPUT_TOKENS=${OUTPUT_TOKENS:-256}
WAVES=${WAVES:-4}
STEP_TOKEN_BUDGET=${STEP_TOKEN_BUDGET:-8192}
PRESET=${PRESET:-gdn2_1.3b}
MODEL_DIR=${MODEL_DIR:-/tmp/$PRESET}
TOKENIZER=${TOKENIZER:-$root/tests/out/tokenizer-32k/tokenizer.model}
DEVICE=${DEVICE:-cuda}
GRPC_PORT=${GRPC_PORT:-50151}
HTTP_PORT=${HTTP_PORT:-18151}
build=$root/build/gpu-server
max_c=0
for c in $CONCURRENCY; do (( c > max_c )) && max_c=$c; done

source scripts/device_env.sh > "$out/env.log" 2>&1 || { cat "$out/env.log"; say "device_env failed"; exit 1; }
say "environment ready ($(grep -c unpacking "$out/env.log") tarball(s) unpacked)"
if [[ $DEVICE == cuda* ]]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader | tee "$out/gpu.txt"
fi
echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)" > "$out/run.txt"

# The model, in the background while the build runs (one core; numpy only).
gen_pid=
if [[ -f $MODEL_DIR/model.safetensors && -f $MODEL_DIR/config.json && -f $MODEL_DIR/tokenizer.model ]]; then
  say "model: $MODEL_DIR exists, reused"
else
  tok_arg=()
  if [[ -f $TOKENIZER ]]; then
    tok_arg=(--tokenizer "$TOKENIZER")
  elif ! command -v spm_train > /dev/null; then
    say "no tokenizer: $TOKENIZER is missing and spm_train is absent (carry it; see the header)"
    exit 1
  fi
  say "model: generating $PRESET into $MODEL_DIR (log: gen_model.log)"
  python3 tools/gen_model.py --preset "$PRESET" --out "$MODEL_DIR" --seed 1 "${tok_arg[@]}" \
    > "$out/gen_model.log" 2>&1 &
  gen_pid=$!
fi

# Build (CUDA + server); the first errors if it fails.
if [[ $DEVICE == cuda* ]]; then raw_bench=bench_cuda_engine; else raw_bench=bench_cpu_engine; fi
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGDNSERVE_SERVER=ON -DGDNSERVE_CUDA=ON \
  -DCMAKE_CUDA_ARCHITECTURES=90a -DGDNSERVE_TESTS=ON -DGDNSERVE_BENCH=ON \
  -DGDNSERVE_PYTHON="$(command -v python3)" > "$out/configure.log" 2>&1 \
  || { tail -40 "$out/configure.log"; say "configure failed"; [[ -n $gen_pid ]] && kill "$gen_pid"; exit 1; }
say "configured; building gdnserve gdnserve-bench $raw_bench (log: build.log)"
tests=()
[[ $DEVICE == cuda* && -d $root/tests/out/models ]] && tests=(cuda_engine_test cuda_backend_test)
if ! timeout "$(cap 420)" cmake --build "$build" -j "$(nproc)" --target gdnserve gdnserve-bench "$raw_bench" "${tests[@]}" \
    > "$out/build.log" 2>&1; then
  grep -E -m 40 "error|Error|FAILED|undefined reference" "$out/build.log" || tail -20 "$out/build.log"
  say "build failed (or timed out)"
  [[ -n $gen_pid ]] && kill "$gen_pid"
  exit 1
fi
say "built"

# The engine on the GPU (device vs host draws, prefix-cache exactness), when
# the test models were carried (tests/out/models).
for t in "${tests[@]}"; do
  GDNSERVE_TEST_MODELS=$root/tests/out/models timeout "$(cap 120)" "$build/tests/$t" > "$out/$t.log" 2>&1
  r=$?
  say "$t: exit $r; $(grep -E '^\[  (PASSED|FAILED) ' "$out/$t.log" | tr '\n' ' ')"
  grep -E "Failure|differ|FAILED" "$out/$t.log" | head -20
  [[ $r == 0 ]] || rc_tests=1
done

if [[ -n $gen_pid ]]; then
  say "waiting for the model"
  if ! wait "$gen_pid"; then
    tail -20 "$out/gen_model.log"
    say "gen_model failed"
    exit 1
  fi
  grep -E "parameters|written in" "$out/gen_model.log"
  say "model ready"
fi

# Raw engine decode step throughput at the same batches (decode only).
batches=$(echo $CONCURRENCY | tr ' ' ',')
if [[ $DEVICE == cuda* ]]; then
  timeout "$(cap 240)" "$build/bench/bench_cuda_engine" --model "$MODEL_DIR" --batches "$batches" --prefill "" \
    --steps 30 --json "$out/engine_raw.json" > "$out/engine_raw.log" 2>&1
else
  timeout "$(cap 240)" "$build/bench/bench_cpu_engine" --model "$MODEL_DIR" --prefill 16 --batches "$batches" \
    --decode-steps 8 --json "$out/engine_raw.json" > "$out/engine_raw.log" 2>&1
fi
r=$?
cat "$out/engine_raw.log"
[[ $r == 0 ]] || say "raw engine benchmark failed (exit $r); going on with the server"
say "raw engine done"

# The server.
server_log=$out/server.log
OMP_WAIT_POLICY=PASSIVE "$build/server/gdnserve" --model "$MODEL_DIR" --device "$DEVICE" --max-seqs "$max_c" \
  --max-queue "$(( 2 * max_c ))" --step-token-budget "$STEP_TOKEN_BUDGET" --host 127.0.0.1 \
  --grpc-port "$GRPC_PORT" --http-port "$HTTP_PORT" > "$server_log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null' EXIT
say "server starting (pid $server, log: server.log)"
ready=0
for _ in $(seq 1 360); do
  if ! kill -0 "$server" 2>/dev/null || (( $(cap 600) < 40 )); then break; fi
  if python3 -c 'import sys, urllib.request
sys.exit(0 if urllib.request.urlopen(sys.argv[1], timeout=2).status == 200 else 1)' \
      "http://127.0.0.1:$HTTP_PORT/readyz" 2>/dev/null; then
    ready=1
    break
  fi
  sleep 0.5
done
rc=${rc_tests:-0}
runs=$CONCURRENCY
if [[ $ready == 1 ]]; then
  say "server ready"
else
  tail -30 "$server_log"
  say "server not ready: no server runs"
  rc=1
  runs=
fi
scrape() { python3 -c 'import sys, urllib.request
print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())' "http://127.0.0.1:$HTTP_PORT/metrics" \
  > "$1" 2>/dev/null; }

for c in $runs; do
  if (( $(cap 600) < 30 )); then say "out of time: concurrency $c skipped"; rc=1; continue; fi
  # Warm-up: one wave of short requests (captures the CUDA graphs of the batch sizes it meets).
  timeout "$(cap 120)" "$build/clients/gdnserve-bench" --addr "127.0.0.1:$GRPC_PORT" --concurrency "$c" --requests "$c" \
    --prompt_tokens "$PROMPT_TOKENS" --output_tokens 32 --seed 7 --progress=false > "$out/warmup_c$c.log" 2>&1 \
    || say "warm-up at $c streams failed: $(tail -3 "$out/warmup_c$c.log")"
  say "concurrency $c: $(( WAVES * c )) requests, $PROMPT_TOKENS prompt + $OUTPUT_TOKENS output tokens"
  t=$(cap 240)
  timeout "$(( t > 15 ? t - 10 : 5 ))" "$build/clients/gdnserve-bench" --addr "127.0.0.1:$GRPC_PORT" --concurrency "$c" \
    --requests "$(( WAVES * c ))" --prompt_tokens "$PROMPT_TOKENS" --output_tokens "$OUTPUT_TOKENS" --seed 1 \
    --progress=false --json_out "$out/server_c$c.json" > "$out/server_c$c.log" 2>&1
  r=$?
  cat "$out/server_c$c.log"
  [[ $r == 0 ]] || { say "gdnserve-bench at $c streams: exit $r"; rc=1; }
  scrape "$out/metrics_after_c$c.txt"
done
kill -0 "$server" 2>/dev/null || { tail -30 "$server_log"; say "the server died"; rc=1; }

python3 - "$out" "$PROMPT_TOKENS" "$OUTPUT_TOKENS" "$STEP_TOKEN_BUDGET" <<'EOF' | tee "$out/summary.md"
import glob, json, os, sys
out, prompt, gen, budget = sys.argv[1:5]
raw_path = os.path.join(out, "engine_raw.json")
raw = json.load(open(raw_path)) if os.path.exists(raw_path) else {"decode": []}
# bench_cuda_engine reports several configurations; the server runs the default one.
decode = [d for d in raw["decode"] if d.get("config", "default" if d.get("cuda_graphs", True) else "graphs_off") == "default"]
raw_tps = {d["batch"]: d["batch"] / d["step_seconds"] for d in decode}
runs = sorted((json.load(open(p)) for p in glob.glob(os.path.join(out, "server_c*.json"))),
              key=lambda r: r["concurrency"])
gpu = open(os.path.join(out, "gpu.txt")).read().strip() if os.path.exists(os.path.join(out, "gpu.txt")) else "cpu"
print(f"device: {gpu}; model: {raw.get('model', '?')} ({raw.get('parameters', 0) / 1e9:.2f}B parameters), "
      f"{prompt} prompt + {gen} output tokens, ignore_eos, step token budget {budget}\n")
print("| streams | requests ok/failed | server output tok/s | engine raw tok/s (same batch) | server / raw "
      "| TTFT p50 / p99 ms | ITL p50 / p99 ms |")
print("|---|---|---|---|---|---|---|")
for r in runs:
    c, t, i = r["concurrency"], r["ttft_ms"], r["itl_ms"]
    rt = raw_tps.get(c, float("nan"))
    print(f"| {c} | {r['requests_ok']}/{r['requests_failed']} | {r['output_tokens_per_s']:.0f} | {rt:.0f} | "
          f"{r['output_tokens_per_s'] / rt:.2f} | {t['p50']:.0f} / {t['p99']:.0f} | {i['p50']:.2f} / {i['p99']:.2f} |")
if not runs:
    print("(no server runs)")
EOF
say "done (exit $rc); files in $out"
exit $rc
