#!/usr/bin/env bash
# Fuzzes the two parsers of untrusted input for a bounded time, on stable Rust:
#   prepare    any bytes -> audio::prepare (decode, resample, VAD, chunking)
#   job_parse  any bytes -> Job::parse (+ wire round trip and signature checks)
#
# Usage: scripts/fuzz.sh [SECONDS_PER_TARGET]   (default 60)
#   FUZZ_TARGETS   targets to run, default "prepare job_parse"
#   TOOLS          where cargo-fuzz is installed, default ${XDG_CACHE_HOME:-$HOME/.cache}/audio-worker-tools
#
# Exits non-zero when a target finds a crash, a timeout (10 s per input) or an out-of-memory
# (2 GB); the input is left in fuzz/artifacts/TARGET/. Minimise it with
#   cargo fuzz tmin --sanitizer none TARGET fuzz/artifacts/TARGET/crash-...
# (in fuzz/, with RUSTC_BOOTSTRAP=1), fix the bug, and add it to fixtures/fuzz/ (see
# tests/fuzz_regressions.rs).
#
# Stable Rust has no -Zsanitizer, so this builds with `--sanitizer none`: libFuzzer's coverage
# instrumentation (-Cpasses=sancov-module) works on stable, and our code is safe Rust apart from
# the libopus FFI, which no Rust sanitizer would instrument anyway. cargo-fuzz still passes a few
# -Z flags, hence RUSTC_BOOTSTRAP=1 (for this build only, in its own target dir fuzz/target).
set -euo pipefail

SECONDS_PER_TARGET=${1:-60}
TARGETS=${FUZZ_TARGETS:-prepare job_parse}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TOOLS=${TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/audio-worker-tools}
export PATH="$TOOLS/bin:$PATH"
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz into $TOOLS"
  cargo install cargo-fuzz --locked --root "$TOOLS"
fi

cd "$ROOT/fuzz"
FUZZ_FLAGS=(--sanitizer none --debug-assertions --target-dir "$ROOT/fuzz/target")
echo "building the fuzz targets (fuzz/target)"
cargo fuzz build "${FUZZ_FLAGS[@]}"

# Extra seed corpora, read only: libFuzzer writes what it finds into the first directory only.
seeds_for() {
  case "$1" in
    prepare) echo "$ROOT/fixtures/audio $ROOT/fixtures/bad $ROOT/fixtures/fuzz" ;;
    job_parse) echo "" ;;
  esac
}
# Largest input tried: the compressed fixtures are at most ~140 kB; larger WAV seeds are cut.
max_len_for() {
  case "$1" in
    prepare) echo 160000 ;;
    job_parse) echo 20000 ;;
  esac
}

LOGS=$(mktemp -d)
trap 'rm -rf "$LOGS"' EXIT
failed=()
for target in $TARGETS; do
  corpus="$ROOT/fuzz/corpus/$target"
  mkdir -p "$corpus" "$ROOT/fuzz/artifacts/$target"
  extra=()
  for d in $(seeds_for "$target"); do
    [ -d "$d" ] && extra+=("$d")
  done
  echo "fuzzing $target for ${SECONDS_PER_TARGET}s"
  status=0
  cargo fuzz run "${FUZZ_FLAGS[@]}" "$target" "$corpus" "${extra[@]}" -- \
    -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -rss_limit_mb=2048 \
    -max_len="$(max_len_for "$target")" -print_final_stats=1 \
    -artifact_prefix="$ROOT/fuzz/artifacts/$target/" \
    >"$LOGS/$target.log" 2>&1 || status=$?
  [ "$status" -eq 0 ] || failed+=("$target")
  cp "$LOGS/$target.log" "$ROOT/fuzz/artifacts/$target/last-run.log"
  if [ "$status" -ne 0 ]; then
    grep -E "panicked at|ERROR: libFuzzer|SUMMARY|Test unit written" "$LOGS/$target.log" | head -20 || true
  fi
done

echo
echo "summary (logs in fuzz/artifacts/TARGET/last-run.log)"
printf '%-10s %-8s %12s %10s %8s %8s %8s %8s\n' target result execs execs/s cov ft corpus rss_mb
for target in $TARGETS; do
  log="$ROOT/fuzz/artifacts/$target/last-run.log"
  stat() { sed -n "s/^stat::$1: *//p" "$log" | tail -1; }
  # The last status line: "#N  DONE|pulse|NEW  cov: C ft: F corp: U/SIZE ...".
  last=$(grep -E '^#[0-9]+' "$log" | tail -1 || true)
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
  corp=$(sed -n 's/.* corp: \([0-9]*\/[0-9A-Za-z]*\).*/\1/p' <<<"$last")
  result=ok
  for f in "${failed[@]}"; do [ "$f" = "$target" ] && result=FOUND; done
  printf '%-10s %-8s %12s %10s %8s %8s %8s %8s\n' "$target" "$result" \
    "$(stat number_of_executed_units)" "$(stat average_exec_per_sec)" \
    "${cov:-?}" "${ft:-?}" "${corp:-?}" "$(stat peak_rss_mb)"
done

if [ "${#failed[@]}" -gt 0 ]; then
  echo "found crashes/timeouts/oom in: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
  exit 1
fi
