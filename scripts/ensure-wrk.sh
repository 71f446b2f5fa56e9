#!/usr/bin/env bash
# Installs Debian's wrk, the load generator of tars-bench's ingress part, when it is
# missing (apt-get, as the other scripts install their Debian tools: scripts/lib/tools.sh).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/lib/tools.sh
. "$root/scripts/lib/tools.sh"
deb_tool wrk wrk
