#!/usr/bin/env bash
# Fetches the GE2E speaker encoder (resemblyzer 0.1.4, Apache-2.0) and converts it once to
# safetensors for src/speakers/embed. Prints the model's path on stdout.
#
#   scripts/fetch-speaker-model.sh [OUT_DIR]
#
# OUT_DIR defaults to ${AUDIO_WORKER_CACHE:-$HOME/.cache/audio-worker}/models. Idempotent: does
# nothing when the output already exists with the pinned sha256. Needs python3 (stdlib only) and
# either pip or curl. No weights are kept in git.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

WHEEL="Resemblyzer-0.1.4-py3-none-any.whl"
WHEEL_SHA256="8f12eb2f1a9982d32e8db7856de754709b59c93a77bcf0ff536584b619a9dd1f"
WHEEL_URL="https://files.pythonhosted.org/packages/d9/b5/d897d5de5b2123a1ad5d32e8e007d83f76582f5c32c60992577263bd7c7e/$WHEEL"
MODEL="ge2e-resemblyzer-0.1.4.safetensors"
# sha256 of scripts/convert_ge2e.py's output (it is deterministic).
MODEL_SHA256="978122c3555d56dd84c000691bed0cb167cb698bfd6a20eba0dd19e0276753ad"

out_dir="${1:-${AUDIO_WORKER_CACHE:-$HOME/.cache/audio-worker}/models}"
out="$out_dir/$MODEL"

sha() { sha256sum "$1" | cut -d' ' -f1; }

if [ -f "$out" ] && [ "$(sha "$out")" = "$MODEL_SHA256" ]; then
  echo "$out"
  exit 0
fi

mkdir -p "$out_dir"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

if command -v pip3 >/dev/null 2>&1 || python3 -m pip --version >/dev/null 2>&1; then
  python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --dest "$work" "resemblyzer==0.1.4" >&2 ||
    curl -fsSL --retry 3 -o "$work/$WHEEL" "$WHEEL_URL"
else
  curl -fsSL --retry 3 -o "$work/$WHEEL" "$WHEEL_URL"
fi

got="$(sha "$work/$WHEEL")"
if [ "$got" != "$WHEEL_SHA256" ]; then
  echo "fetch-speaker-model: $WHEEL has sha256 $got, expected $WHEEL_SHA256" >&2
  exit 1
fi

python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract("resemblyzer/pretrained.pt", sys.argv[2])' \
  "$work/$WHEEL" "$work"
python3 "$here/convert_ge2e.py" "$work/resemblyzer/pretrained.pt" "$work/$MODEL" 2>/dev/null

got="$(sha "$work/$MODEL")"
if [ "$got" != "$MODEL_SHA256" ]; then
  echo "fetch-speaker-model: converted model has sha256 $got, expected $MODEL_SHA256" >&2
  exit 1
fi
mv -f "$work/$MODEL" "$out"
echo "$out"
