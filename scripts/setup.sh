#!/usr/bin/env bash
# Install the Debian packages the build needs, only those that are missing.
# Needs root (or sudo) the first time on a fresh machine; a no-op afterwards.
set -euo pipefail
# clang and its runtimes: the sanitizer and fuzzing build (AddressSanitizer, UBSan, libFuzzer);
# Open MPI: data-parallel training on several processes (mpirun; docs/training.md) and its tests;
# oneDNN: the CPU's float32 convolutions (optional; without it the im2col + BLAS reference)
pkgs=(cmake g++ make catch2 nlohmann-json3-dev libstb-dev libopenblas-dev pkg-config clang
      libclang-rt-14-dev openmpi-bin libopenmpi-dev libdnnl-dev)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "setup: all build packages present"
fi
