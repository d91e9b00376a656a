#!/usr/bin/env bash
# Compare what two audio-worker binaries write for the same inputs, byte for byte.
#
# Usage: scripts/compare-prepare.sh OLD_BIN NEW_BIN [--pcm] FILE...
#
# Runs `prepare` with each binary on each FILE and compares every output file (chunks,
# manifest.json, audio16k.wav with --pcm), or the error line when both refuse the input.
# Prints one line per input; exits 1 when any input differs. For changes that must not change
# the output (speed work): scripts/compare-prepare.sh old new fixtures/audio/* fixtures/bad/*
set -uo pipefail
[[ $# -ge 3 ]] || { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
old="$1" new="$2"; shift 2
extra=()
[[ "${1:-}" == --pcm ]] && { extra=(--pcm); shift; }
fail=0
for f in "$@"; do
  a=$(mktemp -d) b=$(mktemp -d)
  "$old" prepare "$f" --out "$a/out" "${extra[@]}" >/dev/null 2>"$a/err"; ra=$?
  "$new" prepare "$f" --out "$b/out" "${extra[@]}" >/dev/null 2>"$b/err"; rb=$?
  if [[ $ra != "$rb" ]]; then
    echo "DIFF $f: exit $ra vs $rb: $(cat "$a/err") | $(cat "$b/err")"; fail=1
  elif [[ $ra != 0 ]]; then
    if cmp -s "$a/err" "$b/err"; then echo "same $f (refused: $(cat "$a/err"))"
    else echo "DIFF $f: $(cat "$a/err") | $(cat "$b/err")"; fail=1; fi
  elif diff -r "$a/out" "$b/out" >/dev/null; then
    echo "same $f ($(find "$a/out" -type f | wc -l) files)"
  else
    echo "DIFF $f:"; diff -rq "$a/out" "$b/out" | head -5; fail=1
  fi
  rm -rf "$a" "$b"
done
exit $fail
