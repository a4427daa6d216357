#!/usr/bin/env bash
# Regenerates the README's screenshots from the release build (offscreen, real runs on the
# default model): bash packaging/screenshots.sh
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="$root/docs/screenshots"
mkdir -p "$out"
for page in model distributions tuning run export compare; do
  "$root/build/release/bin/pbllm-studio" --screenshot "$out/$page.png" --page "$page"
done
