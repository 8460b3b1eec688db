#!/usr/bin/env bash
# Generates the Python stubs of proto/gdnserve/v1/generation.proto into
# clients/python/gdnserve_client/_generated/ (git-ignored). Importing
# gdnserve_client does this by itself when the stubs are missing or stale;
# run this ahead of time for a read-only install, or with --force to redo.
# Python: $PYTHON, else the repository's .venv, else python3.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
py=${PYTHON:-}
if [ -z "$py" ]; then
  if [ -x "$root/.venv/bin/python" ]; then py="$root/.venv/bin/python"; else py=python3; fi
fi
exec "$py" "$here/gdnserve_client/_stubs.py" "$@"
