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
# With --server, also what the full build (GDNSERVE_SERVER=ON: gdnserve,
# gdnserve-bench, the gtest/gmock suites) needs: gRPC C++ 1.51 (libs, headers,
# grpc_cpp_plugin), protobuf 3.21 (protoc + libprotoc, headers, libprotobuf.so
# and the libprotobuf.a that gdnserve links statically), SentencePiece,
# cpp-httplib, c-ares, re2, OpenSSL, zlib, brotli (headers + libs), gmock, the
# absl pkg-config files (grpc++.pc requires them) and pkgconf (as
# pkg-config). They go into a SECOND tarball, .deps/device-deps-server.tar.xz,
# whose tree lies over .deps/root (same paths; device_env.sh unpacks the base
# one first, then this one), so the base tarball stays as it is:
#   .deps/server/root/usr/...          the server tree alone (staging)
#   .deps/device-deps-server.tar.xz    it, compressed (carry it with the base one)
# The .pc files are made relocatable (prefix=${pcfiledir}/../../..). OpenSSL,
# zlib and brotli's runtime libraries go to gdn-fallback-{ssl,zlib,brotli}
# (used only where the system has no copy, like libgfortran above); their
# development symlinks (libssl.so ...) point there, for linking.
#
# Idempotent: does nothing if .deps/root (.deps/server) was made from the same
# package list by the same version of this script. Versions are pinned
# (Debian 12 bookworm); GDN_DEPS_UNPINNED=1 takes whatever apt has now.
# Usage: scripts/fetch_device_deps.sh [--force] [--server]
set -euo pipefail

cd "$(dirname "$0")/.."
DEPS="$PWD/.deps"
ROOT="$DEPS/root"
TARBALL="$DEPS/device-deps.tar.xz"
SCRIPT_REV=1
SERVER_DIR="$DEPS/server"
SERVER_TARBALL="$DEPS/device-deps-server.tar.xz"
SERVER_REV=2

force=0
server=0
for a in "$@"; do
  case "$a" in
    --force) force=1 ;;
    --server) server=1 ;;
    *) echo "usage: scripts/fetch_device_deps.sh [--force] [--server]" >&2; exit 2 ;;
  esac
done

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
SERVER_PKGS=(
  libgrpc++-dev=1.51.1-3+b1
  libgrpc++1.51=1.51.1-3+b1
  libgrpc-dev=1.51.1-3+b1
  libgrpc29=1.51.1-3+b1
  protobuf-compiler-grpc=1.51.1-3+b1
  libprotobuf-dev=3.21.12-3+deb12u1
  libprotobuf32=3.21.12-3+deb12u1
  libprotoc32=3.21.12-3+deb12u1
  protobuf-compiler=3.21.12-3+deb12u1
  libsentencepiece-dev=0.1.97-3+b1
  libsentencepiece0=0.1.97-3+b1
  libcpp-httplib-dev=0.11.4+ds-1+deb12u1
  libcpp-httplib0.11=0.11.4+ds-1+deb12u1
  libc-ares-dev=1.18.1-3
  libc-ares2=1.18.1-3
  libre2-dev=20220601+dfsg-1+b1
  libre2-9=20220601+dfsg-1+b1
  libssl-dev=3.0.22-1~deb12u2
  libssl3=3.0.22-1~deb12u2
  zlib1g-dev=1:1.2.13.dfsg-1
  zlib1g=1:1.2.13.dfsg-1
  libbrotli-dev=1.0.9-2+deb12u1
  libbrotli1=1.0.9-2+deb12u1
  libgmock-dev=1.12.1-0.2
  libabsl-dev=20220623.1-1+deb12u2
  pkgconf-bin=1.8.1-1
  libpkgconf3=1.8.1-1
)
if [ "${GDN_DEPS_UNPINNED:-0}" = 1 ]; then
  PKGS=("${PKGS[@]%%=*}")
  SERVER_PKGS=("${SERVER_PKGS[@]%%=*}")
fi

# apt-get download PKGS... into directory $1 (fails with apt's message).
download() {
  local dir=$1
  shift
  if ! (cd "$dir" && apt-get download -q "$@" 2>"$dir/apt.err"); then
    cat "$dir/apt.err" >&2
    echo "fetch_device_deps: apt-get download failed; try 'apt-get update', or GDN_DEPS_UNPINNED=1 if a version is gone" >&2
    return 1
  fi
}

# Reproducible tarball of directory $1/root: fixed order, owner and mtime.
make_tarball() {
  tar -C "$1" --sort=name --owner=0 --group=0 --numeric-owner --mtime='2024-01-01 00:00Z' \
      -cf - root | xz -T1 -9 > "$2"
}

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# up_to_date STAMP_FILE STAMP TREE TARBALL: true (and says so) when TREE was
# made from the same packages by this revision and its tarball exists.
up_to_date() {
  if [ "$force" = 0 ] && [ -f "$1" ] && [ "$(cat "$1")" = "$2" ] && [ -f "$4" ]; then
    echo "fetch_device_deps: up to date ($3)"
    du -sh "$3" "$4"
    return 0
  fi
  return 1
}

fetch_base() {
  stamp="rev=$SCRIPT_REV ${PKGS[*]}"
  up_to_date "$ROOT/.stamp" "$stamp" "$ROOT" "$TARBALL" && return 0

  mkdir -p "$tmp/base"
  download "$tmp/base" "${PKGS[@]}"

  rm -rf "$ROOT" "$TARBALL"
  mkdir -p "$ROOT"
  for deb in "$tmp"/base/*.deb; do
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
    return 1
  fi
  # abslConfig/GTestConfig name their original /usr location only to detect a
  # /lib -> /usr/lib link (harmless); any other absolute path is an error.
  bad="$(grep -rnE '/usr/(lib|include)' --include='*.cmake' "$ROOT" \
         | grep -vE '^[^:]*:[0-9]+:#|_realOrig|set\(_IMPORT_PREFIX "/usr/lib|set\(PACKAGE_PREFIX_DIR "/usr"\)' || true)"
  if [ -n "$bad" ]; then
    echo "fetch_device_deps: absolute /usr paths left in cmake files: $bad" >&2
    return 1
  fi

  echo "$stamp" > "$ROOT/.stamp"
  make_tarball "$DEPS" "$TARBALL"
  # device_env.sh unpacks the tarball unless .deps/root came from this one.
  sha256sum "$TARBALL" | cut -d' ' -f1 > "$ROOT/.extracted"
  echo "fetch_device_deps: done"
  du -sh "$ROOT" "$TARBALL"
}

fetch_server() {
  local sroot="$SERVER_DIR/root" lib stamp deb name f so bad dir ext missing
  stamp="rev=$SERVER_REV ${SERVER_PKGS[*]}"
  up_to_date "$SERVER_DIR/.stamp" "$stamp" "$sroot" "$SERVER_TARBALL" && return 0

  mkdir -p "$tmp/server" "$tmp/absl"
  download "$tmp/server" "${SERVER_PKGS[@]}"
  rm -rf "$SERVER_DIR" "$SERVER_TARBALL"
  mkdir -p "$sroot"
  for deb in "$tmp"/server/*.deb; do
    name="$(dpkg-deb -W --showformat='${Package}' "$deb")"
    dpkg-deb -W --showformat='  ${Package} ${Version}\n' "$deb"
    if [ "$name" = libabsl-dev ]; then
      # absl itself is in the base tree; only its .pc files are wanted here.
      dpkg -x "$deb" "$tmp/absl"
      mkdir -p "$sroot/usr/lib/x86_64-linux-gnu/pkgconfig"
      cp "$tmp"/absl/usr/lib/x86_64-linux-gnu/pkgconfig/absl_*.pc "$sroot/usr/lib/x86_64-linux-gnu/pkgconfig/"
    else
      dpkg -x "$deb" "$sroot"
    fi
  done

  lib="$sroot/usr/lib/x86_64-linux-gnu"
  # zlib1g installs into /lib (merged-/usr systems): move it under usr/.
  if [ -d "$sroot/lib/x86_64-linux-gnu" ]; then
    mv "$sroot"/lib/x86_64-linux-gnu/* "$lib/"
    rm -rf "$sroot/lib"
  fi
  # OpenSSL's two arch-specific headers (opensslconf.h, configuration.h) sit in
  # the multiarch include dir, which only the system's /usr is searched for:
  # merge it into include/ (openssl.pc says -I${includedir}).
  if [ -d "$sroot/usr/include/x86_64-linux-gnu" ]; then
    bad="$(cd "$sroot/usr/include/x86_64-linux-gnu" && find . -type f | while read -r f; do
             [ ! -e "$sroot/usr/include/$f" ] || echo "$f"; done)"
    if [ -n "$bad" ]; then
      echo "fetch_device_deps: multiarch headers clash with include/: $bad" >&2
      return 1
    fi
    cp -a "$sroot/usr/include/x86_64-linux-gnu/." "$sroot/usr/include/"
    rm -rf "$sroot/usr/include/x86_64-linux-gnu"
  fi
  # Prune: docs, man pages, lintian, gRPC's cmake config (the build uses
  # pkg-config) and root certificates, the other languages' protoc plugins,
  # OpenSSL engines/providers, and every static library but libprotobuf.a
  # (gdnserve links it, server/CMakeLists.txt) and gmock's.
  rm -rf "$sroot/usr/share/doc" "$sroot/usr/share/doc-base" "$sroot/usr/share/man" "$sroot/usr/share/lintian" \
         "$sroot/usr/share/grpc" "$sroot/usr/share/pkgconfig" "$lib/cmake/grpc" "$lib/engines-3" "$lib/ossl-modules" \
         "$sroot"/usr/bin/grpc_{php,python,ruby}_plugin
  find "$lib" -maxdepth 1 -name '*.a' ! -name libprotobuf.a ! -name 'libgmock*.a' -delete
  # gRPC libraries nothing here links (reflection is served by server/reflection.cc).
  for name in libgrpc++_alts libgrpc++_error_details libgrpc++_reflection libgrpc++_unsecure libgrpc_unsecure \
              libgrpcpp_channelz libprotobuf-lite; do
    rm -f "$lib/$name".so*
  done
  rm -f "$lib"/pkgconfig/{grpc++_unsecure,grpc_unsecure,protobuf-lite,gmock,gmock_main}.pc
  ln -s pkgconf "$sroot/usr/bin/pkg-config"

  # OpenSSL, zlib and brotli: runtime libraries most systems have go to
  # fallback directories (device_env.sh adds one only if the system lacks a
  # library in it); the development symlinks point into them for linking.
  for dir in ssl:libssl:libcrypto zlib:libz brotli:libbrotlicommon:libbrotlidec:libbrotlienc; do
    ext="$lib/gdn-fallback-${dir%%:*}"
    mkdir -p "$ext"
    IFS=: read -r -a names <<< "${dir#*:}"
    for name in "${names[@]}"; do
      mv "$lib/$name".so.* "$ext/"
      so="$(cd "$ext" && ls "$name".so.* | sort | head -1)"   # the soname link (libz.so.1) or file (libssl.so.3)
      rm -f "$lib/$name.so"
      ln -s "gdn-fallback-${dir%%:*}/$so" "$lib/$name.so"
    done
  done

  # pkg-config files: relocatable prefix; gRPC's name lib/ for the multiarch dir.
  for f in "$lib"/pkgconfig/*.pc; do
    sed -i -E -e 's#^([A-Za-z_]+)=/usr(/|$)#\1=${pcfiledir}/../../..\2#' \
              -e 's#^libdir=\$\{exec_prefix\}/lib$#libdir=${exec_prefix}/lib/x86_64-linux-gnu#' "$f"
  done
  bad="$(grep -nE '/usr(/|$| )' "$lib"/pkgconfig/*.pc | grep -v ':[0-9]*:#' || true)"
  if [ -n "$bad" ]; then
    echo "fetch_device_deps: absolute /usr paths left in .pc files: $bad" >&2
    return 1
  fi
  bad="$(find "$sroot" -type l -lname '/*'; find -L "$sroot" -type l)"
  if [ -n "$bad" ]; then
    echo "fetch_device_deps: absolute or dangling symlinks left: $bad" >&2
    return 1
  fi
  # Every library an ELF file here needs is here, in the base tree, or the
  # C/C++ runtime that comes with the compiler.
  missing=""
  while IFS= read -r f; do
    for so in $(readelf -d "$f" 2>/dev/null | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
      case "$so" in
        libc.so.*|libm.so.*|libstdc++.so.*|libgcc_s.so.*|ld-linux*|libpthread.so.*|libdl.so.*|librt.so.*) continue ;;
      esac
      [ -n "$(find "$lib" "$ROOT/usr/lib/x86_64-linux-gnu" -name "$so" -print -quit)" ] || missing="$missing $(basename "$f"):$so"
    done
  done < <(find "$sroot/usr/bin" "$lib" -type f \( -perm -u+x -o -name '*.so*' \))
  if [ -n "$missing" ]; then
    echo "fetch_device_deps: libraries needed but not in the trees:$missing" >&2
    return 1
  fi

  make_tarball "$SERVER_DIR" "$SERVER_TARBALL"
  echo "$stamp" > "$SERVER_DIR/.stamp"
  echo "fetch_device_deps: server part done"
  du -sh "$sroot" "$SERVER_TARBALL"
}

fetch_base
if [ "$server" = 1 ]; then
  fetch_server
fi
