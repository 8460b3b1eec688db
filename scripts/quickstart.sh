#!/usr/bin/env bash
# First run: installs the build dependencies, builds gdnserve, starts the
# server on the bundled model (CPU), streams one completion from it with
# gdnserve-cli, and keeps serving until Ctrl-C.
#   bash scripts/quickstart.sh ["prompt"]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
prompt=${1:-"And God said"}
bash scripts/install_deps.sh
cmake --preset release > /dev/null
cmake --build --preset release --target gdnserve gdnserve-cli
bin=build/release
log=$(mktemp)
"$bin/server/gdnserve" --grpc-port 50051 --http-port 8000 > "$log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -f "$log"' EXIT
echo "quickstart: waiting for the server (log: $log)"
for _ in $(seq 1 300); do
  grep -q "listening on" "$log" && "$bin/clients/gdnserve-cli" --info > /dev/null 2>&1 && break
  kill -0 $server 2>/dev/null || { cat "$log"; exit 1; }
  sleep 0.2
done
cat "$log"
echo
echo "\$ gdnserve-cli --echo --max_tokens 64 --temperature 0.8 --seed 1 \"$prompt\""
"$bin/clients/gdnserve-cli" --echo --max_tokens 64 --temperature 0.8 --seed 1 "$prompt"
echo
echo "quickstart: gdnserve is serving gRPC on localhost:50051 and HTTP on localhost:8000 (Ctrl-C to stop). Try:"
echo "  $bin/clients/gdnserve-cli --max_tokens 100 \"your prompt\""
echo "  curl localhost:8000/v1/completions -H 'Content-Type: application/json' -d '{\"prompt\": \"$prompt\", \"max_tokens\": 32}'"
wait $server
