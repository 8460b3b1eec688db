#!/usr/bin/env bash
# Server overhead on the CPU: output tokens/s and TTFT/ITL percentiles of the
# real gdnserve under gdnserve-bench at several concurrencies, next to the
# engine's raw decode step throughput at the same batch (bench_cpu_engine).
#   bench/run_server_bench.sh [build_dir] [model_dir]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build/release}
out=$root/bench/out
model=${2:-$out/mid}
mkdir -p "$out"
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release > /dev/null
cmake --build "$build" --target gdnserve gdnserve-bench bench_cpu_engine
[ -d "$model" ] || "$root/.venv/bin/python" "$root/tools/gen_model.py" --preset mid --out "$model" --seed 1
conc=(1 8 32)
prompt=16
gen=128

"$build/bench/bench_cpu_engine" --model "$model" --prefill 16 --batches "$(IFS=,; echo "${conc[*]}")" \
  --decode-steps 8 --json "$out/engine_raw.json"

log=$out/server.log
"$build/server/gdnserve" --model "$model" --grpc-port 0 --max-seqs 32 --step-token-budget 512 > "$log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
for _ in $(seq 1 600); do grep -q "serving on" "$log" && break; sleep 0.1; done
addr=$(grep -o "listening on [^ ]*" "$log" | head -1 | awk '{print $3}')
addr=localhost:${addr##*:}
for c in "${conc[@]}"; do
  echo "== concurrency $c"
  "$build/clients/gdnserve-bench" --addr "$addr" --concurrency "$c" --requests $((2 * c)) \
    --prompt_tokens $prompt --output_tokens $gen --seed 1 --json_out "$out/server_c$c.json"
done
"$root/.venv/bin/python" "$root/bench/summarize_server.py" "$out"
