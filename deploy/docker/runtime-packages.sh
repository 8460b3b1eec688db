#!/bin/bash
# runtime-packages.sh BINARY...: prints, one per line and sorted, the Debian
# or Ubuntu packages that own the shared libraries the binaries load (from
# ldd, resolved through dpkg), less those every glibc system has.
#
# Dockerfile.cuda installs this list in its runtime stage (Ubuntu's package
# names differ from Debian's: the 64-bit time_t "t64" renames). The CPU
# Dockerfile lists its packages by hand, and tests/deploy checks that list
# against this script's output for a fresh build.
set -euo pipefail
if [ $# -eq 0 ]; then
  echo "usage: $0 BINARY..." >&2
  exit 2
fi

# The CUDA toolkit's runtime libraries (cudart, cuBLAS) come with the CUDA
# base image of Dockerfile.cuda, installed or not through a package there.
libs=$(ldd "$@" | awk '$2 == "=>" && $3 ~ /^\// && $3 !~ /^\/usr\/local\/cuda/ {print $3}' | sort -u)
# The NVIDIA driver's libraries come from the host (NVIDIA container toolkit),
# not from a package in the image.
missing=$(ldd "$@" | grep 'not found' | grep -vE 'libcuda\.so|libnvidia-ml\.so' || true)
if [ -n "$missing" ]; then
  echo "runtime-packages: unresolved libraries:" >&2
  echo "$missing" >&2
  exit 1
fi

owner() {
  # dpkg records a file under the path its package shipped it at: /lib or
  # /usr/lib (merged /usr), through a symlink or not. Try each spelling.
  local f=$1 real
  real=$(readlink -f "$f")
  for p in "$f" "$real" "/usr$f" "/usr$real" "${f#/usr}" "${real#/usr}"; do
    if out=$(dpkg-query -S "$p" 2>/dev/null); then
      # "pkg:arch, pkg2: /path" -> pkg, pkg2
      echo "${out%%: /*}" | tr ',' '\n' | sed 's/^ *//; s/:.*//'
      return 0
    fi
  done
  echo "runtime-packages: no package owns $f" >&2
  return 1
}

for lib in $libs; do
  owner "$lib"
done | grep -vxE 'libc6|libgcc-s1|libstdc\+\+6' | sort -u
