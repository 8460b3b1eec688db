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
#
# With .deps/device-deps-server.tar.xz too (fetch_device_deps.sh --server) it
# unpacks that over .deps/root after the base one (.extracted then holds both
# sums), and the full build works as well:
#   cmake --preset release -DGDNSERVE_CUDA=ON && cmake --build --preset release
# It then also puts .deps/root/usr/bin first on PATH (protoc, grpc_cpp_plugin,
# pkg-config) and its pkgconfig directory on PKG_CONFIG_PATH. Runtime
# libraries in .deps/root/usr/lib/x86_64-linux-gnu/gdn-fallback* (libgfortran,
# OpenSSL, zlib, brotli) go on LD_LIBRARY_PATH only for the directories with a
# library the system lacks.

_gdn_device_env() {
  local repo deps root tarball server_tarball sum="" server_sum="" want lib dir p sonames f
  repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)" || return 1
  deps="$repo/.deps"
  root="$deps/root"
  tarball="$deps/device-deps.tar.xz"
  server_tarball="$deps/device-deps-server.tar.xz"

  _gdn_untar() {  # $1: tarball to unpack into .deps (its top directory is root/)
    echo "device_env: unpacking $1"
    if command -v xz >/dev/null 2>&1; then
      tar -C "$deps" -xJf "$1"
    else
      python3 -c 'import sys, tarfile
kw = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
tarfile.open(sys.argv[1]).extractall(sys.argv[2], **kw)' "$1" "$deps"
    fi
  }
  if [ -f "$tarball" ]; then
    sum="$(sha256sum "$tarball" | cut -d' ' -f1)" || return 1
  fi
  if [ -f "$server_tarball" ]; then
    server_sum="$(sha256sum "$server_tarball" | cut -d' ' -f1)" || return 1
  fi
  want="$sum${server_sum:+ $server_sum}"
  if [ -n "$sum" ] && [ "$(cat "$root/.extracted" 2>/dev/null)" != "$want" ]; then
    rm -rf "$root"
    _gdn_untar "$tarball" || return 1
    if [ -n "$server_sum" ]; then
      _gdn_untar "$server_tarball" || return 1
    fi
    echo "$want" > "$root/.extracted"
  fi
  unset -f _gdn_untar
  if [ ! -d "$root/usr" ]; then
    echo "device_env: $root missing; run scripts/fetch_device_deps.sh where apt works and copy .deps/" >&2
    return 1
  fi
  lib="$root/usr/lib/x86_64-linux-gnu"

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
  PATH="$(_gdn_strip "${PATH:-}")"
  PKG_CONFIG_PATH="$(_gdn_strip "${PKG_CONFIG_PATH:-}")"

  export CMAKE_PREFIX_PATH="$root/usr${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
  p="$lib:$lib/openblas-openmp"
  # A fallback directory (libgfortran.so.5 + libquadmath.so.0 for OpenBLAS;
  # with the server part also OpenSSL, zlib, brotli) only where the system
  # lacks one of its libraries, so that a newer system copy is never shadowed.
  for dir in "$lib"/gdn-fallback*; do
    [ -d "$dir" ] || continue
    sonames=""
    for f in "$dir"/*.so.*; do
      f="$(basename "$f")"
      f="${f%%.so.*}.so.$(printf '%s' "${f#*.so.}" | cut -d. -f1)"   # libz.so.1.2.13 -> libz.so.1
      case " $sonames " in *" $f "*) ;; *) sonames="$sonames $f" ;; esac
    done
    # shellcheck disable=SC2086
    LD_LIBRARY_PATH="$LD_LIBRARY_PATH" python3 -c 'import ctypes, sys
for n in sys.argv[1:]: ctypes.CDLL(n)' $sonames 2>/dev/null || p="$p:$dir"
  done
  export LD_LIBRARY_PATH="$p${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  if [ -d "$root/usr/bin" ]; then
    export PATH="$root/usr/bin${PATH:+:$PATH}"
  fi
  if [ -d "$lib/pkgconfig" ]; then
    export PKG_CONFIG_PATH="$lib/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
  fi
  [ -n "$PKG_CONFIG_PATH" ] || unset PKG_CONFIG_PATH

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
  [ -d "$root/usr/bin" ] && echo "device_env: PATH=$root/usr/bin:..."
  [ -n "${PKG_CONFIG_PATH:-}" ] && echo "device_env: PKG_CONFIG_PATH=$PKG_CONFIG_PATH"
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
