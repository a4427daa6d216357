#!/usr/bin/env bash
# Big-model figures of the README (by hand, not in CI: writes ~15 GB and runs for ~15 minutes):
# synthetic TinyLlama-1.1B (BF16) and LLaMA-7B (F16) folders, then info / eval / generate of each
# with their peak memory: anonymous (what the job allocates) and resident file pages (the mapped
# model, reclaimable), sampled from /proc every 0.25 s. Synthetic weights: speed and memory only,
# never quality. ONLY picks one group: read (info/eval/generate) or quantize (PB-GPTQ 10%,
# 32 x 512 calibration tokens: the 1.1B model, and a 4-layer LLaMA-7B-shaped stand-in; ~40 min).
#   packaging/bench-big-models.sh [BUILD_DIR] [WORK_DIR] [all|read|quantize]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${1:-$root/build/release}"
work="${2:-/tmp/pbllm-big}"
only="${3:-all}"
shared="${PBLLM_SHARED_DIR:-$root/../shared}"
pbllm="$build/bin/pbllm"
tok="$shared/models/llama2-tokenizer/tokenizer.model"
text="$shared/data/tinystories/tinystories_val.txt"
calib="$shared/data/tinystories/tinystories_train_head.txt"
mkdir -p "$work"

measured() { # label, command...: wall time, peak anonymous and file-backed resident memory
  local label=$1; shift
  local start end anon=0 file=0 key value
  start=$(date +%s.%N)
  "$@" > "$work/$label.out" 2> "$work/$label.err" &
  local pid=$!
  while kill -0 "$pid" 2>/dev/null; do # bash built-ins only: a sampler that forks would steal a core
    while read -r key value _; do
      case "$key" in
        RssAnon:) [ "$value" -gt "$anon" ] && anon=$value ;;
        RssFile:) [ "$value" -gt "$file" ] && file=$value ;;
      esac
    done < "/proc/$pid/status" 2>/dev/null || true
    sleep 0.25
  done
  wait "$pid" || { echo "$label: FAILED"; tail -3 "$work/$label.err"; return 1; }
  end=$(date +%s.%N)
  printf '%-30s %8.2f s   peak anonymous %6d MiB, mapped/file resident %6d MiB\n' "$label" \
    "$(awk -v a="$start" -v b="$end" 'BEGIN {print b - a}')" $((anon / 1024)) $((file / 1024))
}

[ -d "$work/tinyllama-1.1b-bf16" ] || "$pbllm" synth --shape tinyllama-1.1b --dtype bf16 --tokenizer "$tok" -o "$work/tinyllama-1.1b-bf16"
[ -d "$work/llama-7b-f16" ] || "$pbllm" synth --shape llama-7b --dtype f16 --tokenizer "$tok" -o "$work/llama-7b-f16"

if [ "$only" = all ] || [ "$only" = read ]; then
for model in tinyllama-1.1b-bf16 llama-7b-f16; do
  sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true # cold page cache, as after a reboot
  measured "$model.info-cold" "$pbllm" info "$work/$model"
  measured "$model.info" "$pbllm" info "$work/$model"
done
measured tinyllama.eval-8x512 "$pbllm" eval "$work/tinyllama-1.1b-bf16" --text "$text" --seqlen 512 --max-windows 8 --json
for run in 1 2 3; do
  measured "tinyllama.generate-$run" "$pbllm" generate "$work/tinyllama-1.1b-bf16" --prompt "Once upon a time" -n 32 --json
  grep tokens_per_second "$work/tinyllama.generate-$run.out"
done
measured llama7b.eval-4x512 "$pbllm" eval "$work/llama-7b-f16" --text "$text" --seqlen 512 --max-windows 4 --json
fi

if [ "$only" = all ] || [ "$only" = quantize ]; then
  [ -d "$work/llama-7b-f16-4layers" ] ||
    "$pbllm" synth --shape llama-7b --layers 4 --dtype f16 --tokenizer "$tok" -o "$work/llama-7b-f16-4layers"
  for model in tinyllama-1.1b-bf16 llama-7b-f16-4layers; do
    rm -rf "$work/$model.pbllm.h5" "$work/$model.pbllm.h5.partial"
    measured "$model.quantize-32x512" "$pbllm" quantize "$work/$model" --calib "$calib" --nsamples 32 --seqlen 512 \
      --salient 0.1 -o "$work/$model.pbllm.h5" --json
    grep -E '"(file_bytes|peak_resident_bytes|planned_working_bytes|seconds)"' "$work/$model.quantize-32x512.out" | tail -4
    grep -E '^layer' "$work/$model.quantize-32x512.err" | tail -3
  done
fi
