# Environment for building the engine-only preset on a machine without the
# Debian packages (the GPU machine), from what scripts/fetch_device_deps.sh put
# in .deps/ (and the wheels in .whl/). Source it from the repo root:
#
#   source scripts/device_env.sh
#   cmake --preset engine-only -DGDNSERVE_CUDA=ON -DGDNSERVE_TESTS=ON -DGDNSERVE_BENCH=ON
#   cmake --build --preset engine-only
#
# It unpacks .deps/device-deps.tar.xz into .deps/root unless .deps/root came
# from that very tarball (its sha256 is in .deps/root/.extracted), unpacks the
# pure-Python wheels in .whl/ into build/pysite (no pip, no network), and
# exports CMAKE_PREFIX_PATH, LD_LIBRARY_PATH, PYTHONPATH (and CUDACXX if nvcc
# is not on PATH but /usr/local/cuda/bin/nvcc exists). Needs bash. Safe to
# source more than once.

_gdn_device_env() {
  local repo deps root tarball sum="" lib fallback need_fallback p
  repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)" || return 1
  deps="$repo/.deps"
  root="$deps/root"
  tarball="$deps/device-deps.tar.xz"

  if [ -f "$tarball" ]; then
    sum="$(sha256sum "$tarball" | cut -d' ' -f1)" || return 1
  fi
  if [ -n "$sum" ] && [ "$(cat "$root/.extracted" 2>/dev/null)" != "$sum" ]; then
    echo "device_env: unpacking $tarball"
    rm -rf "$root"
    if command -v xz >/dev/null 2>&1; then
      tar -C "$deps" -xJf "$tarball" || return 1
    else
      python3 -c 'import sys, tarfile
kw = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
tarfile.open(sys.argv[1]).extractall(sys.argv[2], **kw)' \
        "$tarball" "$deps" || return 1
    fi
    echo "$sum" > "$root/.extracted"
  fi
  if [ ! -d "$root/usr" ]; then
    echo "device_env: $root missing; run scripts/fetch_device_deps.sh where apt works and copy .deps/" >&2
    return 1
  fi
  lib="$root/usr/lib/x86_64-linux-gnu"
  fallback="$lib/gdn-fallback"

  # Drop entries from an earlier source of this script, then prepend ours.
  _gdn_strip() {  # $1: colon list; prints it without our own entries
    local out="" e IFS=:
    for e in $1; do
      case "$e" in "$deps"/*|"$repo/build/pysite"|"") ;; *) out="${out:+$out:}$e" ;; esac
    done
    printf '%s' "$out"
  }
  CMAKE_PREFIX_PATH="$(_gdn_strip "${CMAKE_PREFIX_PATH:-}")"
  LD_LIBRARY_PATH="$(_gdn_strip "${LD_LIBRARY_PATH:-}")"
  PYTHONPATH="$(_gdn_strip "${PYTHONPATH:-}")"

  # libgfortran.so.5 / libquadmath.so.0 (needed by OpenBLAS) only where the
  # system has none, so a newer system copy is never shadowed.
  need_fallback=0
  for p in libgfortran.so.5 libquadmath.so.0; do
    LD_LIBRARY_PATH="$LD_LIBRARY_PATH" python3 -c 'import ctypes, sys; ctypes.CDLL(sys.argv[1])' "$p" \
      2>/dev/null || need_fallback=1
  done

  export CMAKE_PREFIX_PATH="$root/usr${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
  p="$lib:$lib/openblas-openmp"
  [ "$need_fallback" = 1 ] && p="$p:$fallback"
  export LD_LIBRARY_PATH="$p${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

  # fla-core and einops are py3-none-any wheels: unzipping is installing (into
  # build/, so that .whl/ stays just the wheels).
  if ls "$repo"/.whl/*.whl >/dev/null 2>&1; then
    local site="$repo/build/pysite" whl
    for whl in "$repo"/.whl/*.whl; do
      if [ ! -f "$site/.$(basename "$whl").done" ] || [ "$whl" -nt "$site/.$(basename "$whl").done" ]; then
        mkdir -p "$site"
        python3 -m zipfile -e "$whl" "$site" || return 1
        touch "$site/.$(basename "$whl").done"
      fi
    done
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  fi
  [ -n "$PYTHONPATH" ] || unset PYTHONPATH

  if ! command -v nvcc >/dev/null 2>&1 && [ -z "${CUDACXX:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then
    export CUDACXX=/usr/local/cuda/bin/nvcc
  fi

  echo "device_env: CMAKE_PREFIX_PATH=$CMAKE_PREFIX_PATH"
  echo "device_env: LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
  [ -n "${PYTHONPATH:-}" ] && echo "device_env: PYTHONPATH=$PYTHONPATH"
  unset -f _gdn_strip
  return 0
}
_gdn_device_env
_gdn_device_env_rc=$?
unset -f _gdn_device_env
# The status of `source` is that of the last command: fail when setup failed.
if [ "$_gdn_device_env_rc" = 0 ]; then
  unset _gdn_device_env_rc
else
  unset _gdn_device_env_rc
  echo "device_env: FAILED" >&2
  false
fi
