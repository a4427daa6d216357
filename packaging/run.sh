#!/usr/bin/env bash
# The newcomer's first command: install what is needed, build (release), and start the studio
# on the default model (stories260K). Without a display (a server, CI) it renders the Model page
# to build/release/studio.png instead and prints the model's description with the CLI.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash packaging/setup-debian.sh
cmake --preset release
cmake --build --preset release
bin=build/release/bin
if [ -n "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ]; then
  exec "$bin/pbllm-studio" "$@"
fi
echo "No display: rendering the studio's Model page to build/release/studio.png"
"$bin/pbllm-studio" --screenshot build/release/studio.png --page model "$@"
"$bin/pbllm" info "$@"
