#!/usr/bin/env bash
# Builds everything and runs the whole test suite (C++ gtest suites, the
# Python reference/agreement tests), as CI does. Needs the Debian packages of
# scripts/install_deps.sh.
#   scripts/test.sh [extra ctest args]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash scripts/setup_python.sh
cmake --preset ci -DGDNSERVE_PYTHON="$root/.venv/bin/python" > /dev/null
cmake --build --preset ci -j "$(nproc)"
ctest --preset ci -j "$(nproc)" "$@"
