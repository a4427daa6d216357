#!/usr/bin/env bash
# Big-model figures of the README (by hand, not in CI: writes ~15 GB and runs for ~30 minutes):
# synthetic TinyLlama-1.1B (BF16) and LLaMA-7B (F16) folders, then info / eval / generate of each
# inside memory caps (../shared/tools/memcap.sh prints the cgroup's peak). Synthetic weights:
# speed and memory only, never quality.
#   packaging/bench-big-models.sh [BUILD_DIR] [WORK_DIR]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${1:-$root/build/release}"
work="${2:-/tmp/pbllm-big}"
shared="${PBLLM_SHARED_DIR:-$root/../shared}"
pbllm="$build/bin/pbllm"
memcap="$shared/tools/memcap.sh"
tok="$shared/models/llama2-tokenizer/tokenizer.model"
text="$shared/data/tinystories/tinystories_val.txt"
mkdir -p "$work"

timed() { # label, cap (GiB), command...
  local label=$1 cap=$2; shift 2
  local start end
  start=$(date +%s.%N)
  bash "$memcap" "$cap" "$@" > "$work/$label.out" 2> "$work/$label.err" || { echo "$label: FAILED"; tail -3 "$work/$label.err"; return 1; }
  end=$(date +%s.%N)
  printf '%-28s %8.2f s   %s\n' "$label" "$(awk -v a="$start" -v b="$end" 'BEGIN {print b - a}')" "$(grep cgroup: "$work/$label.err")"
}

[ -d "$work/tinyllama-1.1b-bf16" ] || "$pbllm" synth --shape tinyllama-1.1b --dtype bf16 --tokenizer "$tok" -o "$work/tinyllama-1.1b-bf16"
[ -d "$work/llama-7b-f16" ] || "$pbllm" synth --shape llama-7b --dtype f16 --tokenizer "$tok" -o "$work/llama-7b-f16"

for model in tinyllama-1.1b-bf16 llama-7b-f16; do
  sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true # cold page cache, as after a reboot
  timed "$model.info-cold" 0.5 "$pbllm" info "$work/$model"
  timed "$model.info" 0.5 "$pbllm" info "$work/$model"
done
timed tinyllama.eval-8x512 2 "$pbllm" eval "$work/tinyllama-1.1b-bf16" --text "$text" --seqlen 512 --max-windows 8 --json
for run in 1 2 3; do
  timed "tinyllama.generate-$run" 3 "$pbllm" generate "$work/tinyllama-1.1b-bf16" --prompt "Once upon a time" -n 32 --json
  grep tokens_per_second "$work/tinyllama.generate-$run.out"
done
timed llama7b.eval-4x512 3 "$pbllm" eval "$work/llama-7b-f16" --text "$text" --seqlen 512 --max-windows 4 --json
