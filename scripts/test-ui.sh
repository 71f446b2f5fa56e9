#!/usr/bin/env bash
# Drives the tars-dev Slack page in headless Chromium (tests/ui/dev_page.py): Debian's
# chromium (installed with apt-get when missing) and PyPI playwright (pinned, into the
# git-ignored .tools/). Runs tars-dev on spare ports with a throw-away data folder.
set -euo pipefail
PLAYWRIGHT_VERSION="1.49.0"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
if ! command -v chromium >/dev/null 2>&1; then
  echo "installing Debian's chromium (apt-get)" >&2
  apt-get install -y -q chromium >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }
fi
pw_dir="$root/.tools/playwright"
if [ ! -d "$pw_dir/playwright" ]; then
  echo "installing playwright $PLAYWRIGHT_VERSION into .tools/playwright (PyPI)" >&2
  python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
    --target "$pw_dir" "playwright==$PLAYWRIGHT_VERSION" >&2
fi
export NATS_SERVER_BIN="${NATS_SERVER_BIN:-$(./scripts/ensure-nats-server.sh)}"
cargo build --quiet -p tars-dev
data="$(mktemp -d)"
port=18200
TARS_DEV_DATA="$data" TARS_DEV_PORT=$port TARS_DEV_NATS_PORT=14323 TARS_DEV_STANDIN_PORT=18301 \
  EXPIRY_SWEEP_INTERVAL=1s REMINDER_INTERVAL=3s \
  ./target/debug/tars-dev >"$data/tars-dev.log" 2>&1 &
dev=$!
trap 'kill $dev 2>/dev/null; wait $dev 2>/dev/null; rm -rf "$data"' EXIT
base="http://127.0.0.1:$port"
deadline=$((SECONDS + 60))
until curl -sf "$base/readyz" >/dev/null; do
  if [ $SECONDS -ge $deadline ] || ! kill -0 $dev 2>/dev/null; then
    echo "tars-dev did not become ready:" >&2; cat "$data/tars-dev.log" >&2; exit 1
  fi
  sleep 0.2
done
if ! BASE="$base" SLACK="http://127.0.0.1:18302/" PYTHONPATH="$pw_dir" python3 tests/ui/dev_page.py; then
  echo "--- tars-dev log" >&2; tail -50 "$data/tars-dev.log" >&2; exit 1
fi
