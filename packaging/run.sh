#!/usr/bin/env bash
# The newcomer's first command: install what is needed, build (release), and run the main job on
# the default model (stories260K): its description, perplexity on the TinyStories validation
# text when ../shared is present, and a sample generation.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash packaging/setup-debian.sh
cmake --preset release
cmake --build --preset release
pbllm=build/release/bin/pbllm
"$pbllm" info
val="$root/../shared/data/tinystories/tinystories_val.txt"
if [ -f "$val" ]; then
  echo
  "$pbllm" eval --text "$val"
fi
echo
"$pbllm" generate --prompt "Once upon a time" -n 120
