#!/usr/bin/env bash
# Drives the tars-dev Slack page in headless Chromium (tests/ui/dev_page.py): Debian's
# chromium (installed with apt-get when missing) and PyPI playwright (pinned, into the
# git-ignored .tools/), against tars-dev on spare ports (scripts/lib/tars-dev.sh).
set -euo pipefail
PLAYWRIGHT_VERSION="1.49.0"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# shellcheck source=scripts/lib/tools.sh
. "$root/scripts/lib/tools.sh"
deb_tool chromium chromium
pw_dir="$root/.tools/playwright"
[ -d "$pw_dir/playwright" ] || pip_tool "$pw_dir" "playwright==$PLAYWRIGHT_VERSION"
# shellcheck source=scripts/lib/tars-dev.sh
. "$root/scripts/lib/tars-dev.sh"
port=18200
EXPIRY_SWEEP_INTERVAL=1s REMINDER_INTERVAL=3s start_tars_dev $port 14323 18301
base="http://127.0.0.1:$port"
if ! BASE="$base" SLACK="http://127.0.0.1:18302/" PYTHONPATH="$pw_dir" python3 tests/ui/dev_page.py; then
  echo "--- tars-dev log" >&2; tail -50 "$TARS_DEV_RUN/tars-dev.log" >&2; exit 1
fi
