#!/usr/bin/env bash
# Runs one libFuzzer target: first every saved regression input (crashes found earlier, each a
# named file), then fuzzing for SECONDS from a scratch copy of the seed corpus. Prints the
# executions; a crash fails the test and leaves the input in ./crash-* for a new regression file.
# The random seed is fixed (PBLLM_FUZZ_SEED, default 1) so a CI run repeats the exploration of the
# last one; set another seed, or 0 for a random one, to explore further.
# Usage: run-fuzzer.sh TARGET SEED_DIR REGRESSION_DIR SECONDS
set -euo pipefail
target="$1" seeds="$2" regressions="$3" seconds="$4"
corpus="$(mktemp -d)"
trap 'rm -rf "$corpus"' EXIT
export TMPDIR="$corpus"
# As in production, a huge malloc (inside HDF5, say) returns NULL for the library to handle.
export ASAN_OPTIONS="allocator_may_return_null=1:${ASAN_OPTIONS:-}"
export LSAN_OPTIONS="suppressions=$(dirname "${BASH_SOURCE[0]}")/lsan.supp:print_suppressions=0"
if [ -d "$regressions" ] && [ -n "$(ls -A "$regressions")" ]; then
  "$target" -malloc_limit_mb=100000000 "$regressions"/* 2>&1 | tail -n 3
fi
mkdir "$corpus/work"
cp -r "$seeds"/. "$corpus/work/"
"$target" "$corpus/work" -artifact_prefix="$PWD/" -max_total_time="$seconds" -seed="${PBLLM_FUZZ_SEED:-1}" -rss_limit_mb=4096 -malloc_limit_mb=100000000 -timeout=20 \
  -print_final_stats=1 2> "$corpus/log" || { tail -n 60 "$corpus/log"; exit 1; }
grep -E "stat::number_of_executed_units|stat::peak_rss_mb|^#[0-9]+.*DONE" "$corpus/log" || tail -n 5 "$corpus/log"
