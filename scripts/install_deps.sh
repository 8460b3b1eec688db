#!/usr/bin/env bash
# Installs the Debian packages gdnserve builds and tests with. Idempotent:
# packages already present are skipped by apt. Used by .ci/run, the README and
# the Dockerfiles, so there is one list to keep.
set -euo pipefail

PKGS=(
  build-essential cmake ninja-build pkg-config git
  libabsl-dev nlohmann-json3-dev libopenblas-openmp-dev
  libsentencepiece-dev sentencepiece
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  googletest libgtest-dev libgmock-dev libbenchmark-dev
  libcpp-httplib-dev libssl-dev zlib1g-dev
  python3-venv base-files curl openssl
  clang libclang-rt-14-dev
)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install_deps: all ${#PKGS[@]} packages present"
  exit 0
fi
echo "install_deps: installing ${missing[*]}"
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
