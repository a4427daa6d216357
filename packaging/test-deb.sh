#!/usr/bin/env bash
# Package test: builds the .deb with CPack from BUILD_DIR, unpacks it into a scratch root, checks
# its metadata, validates the desktop entry and AppStream metainfo, and runs the installed
# programs on the default model from the installed files only.
# Usage: test-deb.sh BUILD_DIR SHARED_DIR
set -euo pipefail
build="$(cd "$1" && pwd)"
shared="$(cd "$2" && pwd)"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
fail() { echo "test-deb: $*" >&2; exit 1; }

(cd "$build" && cpack -G DEB -B "$scratch/pkg" > "$scratch/cpack.log" 2>&1) || { cat "$scratch/cpack.log" >&2; fail "cpack failed"; }
deb="$(ls "$scratch"/pkg/*.deb)"
info="$(dpkg-deb --info "$deb")"
for dep in libtorch libqt6widgets6 libhdf5 libsentencepiece libopenblas0-openmp; do
  grep -q "Depends:.*$dep" <<<"$info" || fail "$deb does not depend on $dep: $info"
done
dpkg-deb -x "$deb" "$scratch/root"
root="$scratch/root"
for f in usr/bin/pbllm usr/bin/pbllm-studio; do [ -x "$root/$f" ] || fail "$f missing"; done
plugin="$(find "$root/usr/lib" -name libpbllm_spm.so)"
[ -n "$plugin" ] || fail "tokenizer plugin missing"
for size in 16 32 48 64 128 256; do
  [ -s "$root/usr/share/icons/hicolor/${size}x${size}/apps/io.github.pbllm.Studio.png" ] || fail "${size}px icon missing"
done
desktop-file-validate "$root/usr/share/applications/io.github.pbllm.Studio.desktop"
appstreamcli validate --no-net "$root/usr/share/metainfo/io.github.pbllm.Studio.metainfo.xml" > /dev/null

# The installed programs, with nothing from the build tree: the plugin must come from the root.
unset PBLLM_SPM_PLUGIN
"$root/usr/bin/pbllm" --help | grep -q quantize || fail "pbllm --help does not list quantize"
out="$(PBLLM_MODEL="$shared/models/stories260K/stories260K.bin" "$root/usr/bin/pbllm" info --json)"
grep -q '"dim": 64' <<<"$out" || fail "pbllm info on stories260K: $out"
gen="$(PBLLM_MODEL="$shared/models/stories260K/stories260K.bin" "$root/usr/bin/pbllm" generate --prompt "Once upon a time" -n 8)"
grep -q "Once upon a time" <<<"$gen" || fail "pbllm generate from the installed files: $gen"
QT_QPA_PLATFORM=offscreen "$root/usr/bin/pbllm-studio" --version | grep -q "0\." || fail "pbllm-studio --version"
echo "test-deb: $(basename "$deb") ($(du -h "$deb" | cut -f1)) installs and runs"
