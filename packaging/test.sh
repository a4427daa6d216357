#!/usr/bin/env bash
# The whole test suite: install what is needed, build (dev preset), run every Qt Test through
# ctest; then the same suite built with AddressSanitizer + UBSan (asan preset, LeakSanitizer on);
# then the fuzz build (clang, ASan + UBSan) replays every saved regression input and runs each
# libFuzzer target for PBLLM_FUZZ_SECONDS (default 45: CI stays near 50 minutes).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash packaging/setup-debian.sh
cmake --preset dev
cmake --build --preset dev
ctest --preset dev
cmake --preset asan
cmake --build --preset asan
ctest --preset asan
cmake --preset fuzz -DPBLLM_FUZZ_SECONDS="${PBLLM_FUZZ_SECONDS:-45}"
cmake --build --preset fuzz
ctest --preset fuzz
