#!/usr/bin/env bash
# Installs every Debian 12 package PB-LLM Studio needs to build, test and run. Idempotent: only
# missing packages are installed. Works as root or through sudo.
set -euo pipefail

packages=(
  # toolchain; clang and its runtime for the libFuzzer + ASan/UBSan build
  g++ cmake ninja-build ccache pkg-config git clang libclang-rt-14-dev
  # Qt 6 (Widgets, Concurrent, Test, PrintSupport) and QCustomPlot's Qt 6 build
  qt6-base-dev qt6-base-dev-tools libqcustomplot-dev libqcustomplot2.1-qt6
  # libtorch; OpenBLAS explicitly (libtorch only recommends it; the reference BLAS is 20-30x
  # slower). The OpenMP flavour shares libtorch's thread pool and is what pbllm prefers.
  libtorch-dev libopenblas0-pthread libopenblas0-openmp
  # tokenizer, checkpoints
  libsentencepiece-dev sentencepiece libhdf5-dev hdf5-tools
  # default-model download, offscreen/X11 GUI tests, desktop metadata checks, .deb building
  curl ca-certificates xvfb xauth desktop-file-utils appstream dpkg-dev file
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all ${#packages[@]} required Debian packages are installed."
  exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
  sudo=()
elif command -v sudo >/dev/null 2>&1; then
  sudo=(sudo)
else
  echo "setup: need root (or sudo) to install: ${missing[*]}" >&2
  exit 1
fi

echo "setup: installing ${#missing[@]} Debian package(s): ${missing[*]}"
echo "setup: (libtorch pulls in about 500 MB of libraries on a fresh machine; this takes a few minutes)"
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -q
"${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
echo "setup: done."
