#!/usr/bin/env bash
# The sources of a git revision in .baseline/ (ignored; carried to the GPU
# machine for bench/gpu/ab_engine.sh): models/ and test data left out.
#   bash scripts/make_baseline.sh REV
set -euo pipefail
rev=${1:?usage: make_baseline.sh REV}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
rm -rf .baseline
mkdir .baseline
git archive "$rev" -- . ':!models' ':!tests/data' | tar -x -C .baseline
git rev-parse --short "$rev" > .baseline/REV
du -sh .baseline
