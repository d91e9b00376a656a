#!/usr/bin/env bash
# The release build. The Dockerfile's builder stage runs this very script (twice: once on stub
# sources to cache the dependencies, once on the real ones), so local/CI builds and the image
# cannot drift apart.
#
#   scripts/build-release.sh [OUT_DIR]      (default: $CARGO_TARGET_DIR/dist, i.e. target/dist)
#
# Writes OUT_DIR/audio-worker (stripped: this is what ships) and OUT_DIR/audio-worker.debug
# (the line tables Cargo.toml keeps, split off, for symbolising a backtrace later).
# Needs: cargo (rust-version in Cargo.toml), cmake + a C compiler (bundled libopus, aws-lc),
# objcopy (binutils, which gcc pulls in).
set -euo pipefail
cd "$(dirname "$0")/.."

target_dir=${CARGO_TARGET_DIR:-target}
out=${1:-$target_dir/dist}

missing=()
for tool in cargo cmake cc objcopy; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "error: build-release.sh needs ${missing[*]} (Debian: apt-get install cmake build-essential)" >&2
  exit 1
fi

start=$(date +%s)
# --locked: the image must build exactly the reviewed Cargo.lock. Profile settings (thin LTO,
# line tables) come from Cargo.toml only, so this and `cargo build --release` share one cache.
cargo build --release --locked --bin audio-worker
built=$(($(date +%s) - start))

bin="$target_dir/release/audio-worker"
mkdir -p "$out"
# Strip a copy, not target/release/audio-worker itself: the shared target dir keeps its
# unstripped binary and cargo does not see a changed artifact.
objcopy --only-keep-debug "$bin" "$out/audio-worker.debug.tmp"
objcopy --strip-all "$bin" "$out/audio-worker.tmp"
mv "$out/audio-worker.debug.tmp" "$out/audio-worker.debug"
(cd "$out" && objcopy --add-gnu-debuglink=audio-worker.debug audio-worker.tmp && mv audio-worker.tmp audio-worker)

size=$(wc -c <"$out/audio-worker")
echo "build-release: cargo build ${built}s; $out/audio-worker $((size / 1024 / 1024)) MiB stripped ($size bytes; unstripped $(wc -c <"$bin"))"
