#!/usr/bin/env bash
# The whole test suite: install what is needed, build (dev preset), run every Qt Test through ctest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash packaging/setup-debian.sh
cmake --preset dev
cmake --build --preset dev
ctest --preset dev
