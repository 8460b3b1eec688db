#!/usr/bin/env bash
# Fetches the libraries the engine-only build (GDNSERVE_SERVER=OFF, with tests
# and benchmarks) needs beyond a compiler, CMake and CUDA, as Debian 12
# packages unpacked with `dpkg -x`, for a machine that has none of them and no
# network (the GPU machine). Run here, on Debian 12 with apt; then copy
# .deps/device-deps.tar.xz (or .deps/root) to the GPU machine and there
# `source scripts/device_env.sh` (which unpacks the tarball if needed).
#
# What the engine-only build needs (CMakeLists.txt, tests/, bench/):
#   absl (headers, cmake config, shared libs), nlohmann-json (headers, cmake
#   config), OpenBLAS built for OpenMP (cblas.h, libopenblas.so) with its
#   runtime libgfortran5 + libquadmath0, googletest (static libs, cmake
#   config). libgomp and libstdc++ come with the GPU machine's g++. bench/
#   does not use google-benchmark; gmock is not used without the server.
#
# Result:
#   .deps/root/usr/...            unpacked, pruned tree (CMAKE_PREFIX_PATH=.deps/root/usr)
#   .deps/device-deps.tar.xz      the same tree, compressed (what to carry)
# libgfortran/libquadmath go to usr/lib/x86_64-linux-gnu/gdn-fallback so that
# device_env.sh puts them on LD_LIBRARY_PATH only where the system lacks them.
#
# Idempotent: does nothing if .deps/root was made from the same package list
# by the same version of this script. Versions are pinned (Debian 12
# bookworm); GDN_DEPS_UNPINNED=1 takes whatever apt has now.
# Usage: scripts/fetch_device_deps.sh [--force]
set -euo pipefail

cd "$(dirname "$0")/.."
DEPS="$PWD/.deps"
ROOT="$DEPS/root"
TARBALL="$DEPS/device-deps.tar.xz"
SCRIPT_REV=1

PKGS=(
  libabsl-dev=20220623.1-1+deb12u2
  libabsl20220623=20220623.1-1+deb12u2
  nlohmann-json3-dev=3.11.2-2
  libopenblas-openmp-dev=0.3.21+ds-4
  libopenblas0-openmp=0.3.21+ds-4
  libgfortran5=12.2.0-14+deb12u1
  libquadmath0=12.2.0-14+deb12u1
  libgtest-dev=1.12.1-0.2
)
if [ "${GDN_DEPS_UNPINNED:-0}" = 1 ]; then
  PKGS=("${PKGS[@]%%=*}")
fi

stamp="rev=$SCRIPT_REV ${PKGS[*]}"
if [ "${1:-}" != "--force" ] && [ -f "$ROOT/.stamp" ] && [ "$(cat "$ROOT/.stamp")" = "$stamp" ] \
   && [ -f "$TARBALL" ]; then
  echo "fetch_device_deps: up to date ($ROOT)"
  du -sh "$ROOT" "$TARBALL"
  exit 0
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
(
  cd "$tmp"
  if ! apt-get download -q "${PKGS[@]}" 2>"$tmp/apt.err"; then
    cat "$tmp/apt.err" >&2
    echo "fetch_device_deps: apt-get download failed; try 'apt-get update', or GDN_DEPS_UNPINNED=1 if a version is gone" >&2
    exit 1
  fi
)

rm -rf "$ROOT" "$TARBALL"
mkdir -p "$ROOT"
for deb in "$tmp"/*.deb; do
  dpkg-deb -W --showformat='  ${Package} ${Version}\n' "$deb"
  dpkg -x "$deb" "$ROOT"
done

lib="$ROOT/usr/lib/x86_64-linux-gnu"
# Prune what no build or run here uses: docs, lintian, gtest sources, pkg-config
# files (absolute paths), absl static libs (absl's cmake config names the
# shared ones), OpenBLAS static libs and its BLAS/LAPACK shims.
rm -rf "$ROOT/usr/share/doc" "$ROOT/usr/share/lintian" "$ROOT/usr/src" \
       "$ROOT/usr/share/pkgconfig" "$lib/pkgconfig" "$lib/openblas-openmp/pkgconfig"
find "$lib" -maxdepth 1 -name 'libabsl_*.a' -delete
rm -f "$lib"/openblas-openmp/lib{blas,lapack}.{a,so,so.3} "$lib"/openblas-openmp/libopenblas*.a
# Debian's OpenBLASConfig.cmake hard-codes /usr; make it relative to itself.
# (absl, GTest and nlohmann_json configs are already relocatable.)
cfg="$lib/openblas-openmp/cmake/openblas/OpenBLASConfig.cmake"
if [ -f "$cfg" ]; then
  sed -i -e 's|/usr/include/x86_64-linux-gnu/openblas-openmp/|${CMAKE_CURRENT_LIST_DIR}/../../../../../include/x86_64-linux-gnu/openblas-openmp|' \
         -e 's|/usr/lib/x86_64-linux-gnu/openblas-openmp//|${CMAKE_CURRENT_LIST_DIR}/../../|' "$cfg"
fi
# The Fortran runtime goes where device_env.sh adds it only if the system
# has none (a newer system copy must not be shadowed).
mkdir -p "$lib/gdn-fallback"
mv "$lib"/libgfortran.so.5* "$lib"/libquadmath.so.0* "$lib/gdn-fallback/"

# Nothing may point outside the tree.
bad="$(find "$ROOT" -type l -lname '/*')"
if [ -n "$bad" ]; then
  echo "fetch_device_deps: absolute symlinks left: $bad" >&2
  exit 1
fi
# abslConfig/GTestConfig name their original /usr location only to detect a
# /lib -> /usr/lib link (harmless); any other absolute path is an error.
bad="$(grep -rnE '/usr/(lib|include)' --include='*.cmake' "$ROOT" \
       | grep -vE '^[^:]*:[0-9]+:#|_realOrig|set\(_IMPORT_PREFIX "/usr/lib|set\(PACKAGE_PREFIX_DIR "/usr"\)' || true)"
if [ -n "$bad" ]; then
  echo "fetch_device_deps: absolute /usr paths left in cmake files: $bad" >&2
  exit 1
fi

echo "$stamp" > "$ROOT/.stamp"
# Reproducible tarball: fixed order, owner and mtime.
tar -C "$DEPS" --sort=name --owner=0 --group=0 --numeric-owner --mtime='2024-01-01 00:00Z' \
    -cf - root | xz -T1 -9 > "$TARBALL"
# device_env.sh unpacks the tarball unless .deps/root came from this one.
sha256sum "$TARBALL" | cut -d' ' -f1 > "$ROOT/.extracted"
echo "fetch_device_deps: done"
du -sh "$ROOT" "$TARBALL"
