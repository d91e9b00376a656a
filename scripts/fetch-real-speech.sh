#!/usr/bin/env bash
# Fetches real two-speaker recordings with reference speaker turns (RTTM) for the speaker tests:
# no one here made them, so they check what synthetic voices cannot (docs/design.md, "Testing
# audio faithfully"). Prints the directory on stdout.
#
#   scripts/fetch-real-speech.sh [OUT_DIR]
#
# Source: the sdist of pyannote.audio 4.0.7 on PyPI (MIT), sha256-pinned. It ships three 30 s
# recordings of two people talking, each with its RTTM: `sample.wav` (its tutorial's sample) and
# `tests/data/dev00.wav`, `dev01.wav` (two men of an AMI meeting, MEE009 and MEE012; the AMI
# corpus is CC BY 4.0), written here as real-sample, real-ami00, real-ami01 (.wav, .rttm).
#
# OUT_DIR defaults to ${AUDIO_WORKER_CACHE:-$HOME/.cache/audio-worker}/real-speech. Idempotent:
# does nothing when the files taken from the pinned archive are there unchanged. Needs python3
# (stdlib) and curl.
set -euo pipefail

ARCHIVE="pyannote_audio-4.0.7.tar.gz"
ARCHIVE_SHA256="3a903dfb5ca711d134cc2522561c9158b186836f5d62e8a57c46c6648e8a8229"
ARCHIVE_URL="https://files.pythonhosted.org/packages/6d/d7/03b1d00d431c7be1d98635fefb99c2da64d9b84b4b8a06d5302666a96c88/$ARCHIVE"

out_dir="${1:-${AUDIO_WORKER_CACHE:-$HOME/.cache/audio-worker}/real-speech}"
stamp="$out_dir/.sha256-$ARCHIVE_SHA256"
if [ -f "$stamp" ] && (cd "$out_dir" && sha256sum --quiet -c "$stamp" >/dev/null 2>&1); then
  echo "$out_dir"
  exit 0
fi

mkdir -p "$out_dir"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
curl -fsSL --retry 3 -o "$work/$ARCHIVE" "$ARCHIVE_URL"
got="$(sha256sum "$work/$ARCHIVE" | cut -d' ' -f1)"
if [ "$got" != "$ARCHIVE_SHA256" ]; then
  echo "fetch-real-speech: $ARCHIVE has sha256 $got, expected $ARCHIVE_SHA256" >&2
  exit 1
fi

# Only the named members, under names of our own (no path from the archive is trusted); each
# RTTM keeps its recording's lines, renamed to the file they now describe.
python3 - "$work/$ARCHIVE" "$work" <<'PY'
import shutil, sys, tarfile
archive, dst = sys.argv[1:]
root = "pyannote_audio-4.0.7/"
cases = {
    "real-sample": ("src/pyannote/audio/sample/sample.wav",
                    "src/pyannote/audio/sample/sample.rttm", "sample"),
    "real-ami00": ("tests/data/dev00.wav", "tests/data/debug.development.rttm", "dev00"),
    "real-ami01": ("tests/data/dev01.wav", "tests/data/debug.development.rttm", "dev01"),
}
with tarfile.open(archive, "r:gz") as tar:
    def member(path):
        f = tar.extractfile(root + path)
        if f is None:
            sys.exit(f"{archive}: {path} is not a regular file")
        return f
    for name, (wav, rttm, uri) in cases.items():
        with member(wav) as src, open(f"{dst}/{name}.wav", "wb") as out:
            shutil.copyfileobj(src, out)
        lines = [l.split() for l in member(rttm).read().decode().splitlines()]
        turns = [f for f in lines if len(f) > 7 and f[0] == "SPEAKER" and f[1] == uri]
        if not turns:
            sys.exit(f"{archive}: no turns of {uri} in {rttm}")
        with open(f"{dst}/{name}.rttm", "w") as out:
            for f in turns:
                f[1] = name
                out.write(" ".join(f) + "\n")
PY
(cd "$work" && sha256sum real-*.wav real-*.rttm >"$work/stamp")
mv -f "$work"/real-*.wav "$work"/real-*.rttm "$out_dir/"
rm -f "$out_dir"/.sha256-*
mv -f "$work/stamp" "$stamp"
echo "$out_dir"
