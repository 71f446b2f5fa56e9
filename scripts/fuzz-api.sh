#!/usr/bin/env bash
# Fuzzes the live ingress from its own /openapi.json with schemathesis (pinned, installed
# into the git-ignored .tools/), as a user and as an admin: no server error, every refusal
# the documented JSON body, every status code documented, valid input accepted and
# invalid input refused. Runs tars-dev on spare ports with a throw-away data folder.
set -euo pipefail
SCHEMATHESIS_VERSION="4.32.5"
EXAMPLES="${FUZZ_EXAMPLES:-30}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
st_dir="$root/.tools/schemathesis"
if [ ! -x "$st_dir/bin/st" ]; then
  echo "installing schemathesis $SCHEMATHESIS_VERSION into .tools/schemathesis (PyPI)" >&2
  python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
    --target "$st_dir" "schemathesis==$SCHEMATHESIS_VERSION" >&2
fi
export NATS_SERVER_BIN="${NATS_SERVER_BIN:-$(./scripts/ensure-nats-server.sh)}"
cargo build --quiet -p tars-dev
data="$(mktemp -d)"
port=18000
TARS_DEV_DATA="$data" TARS_DEV_PORT=$port TARS_DEV_NATS_PORT=14223 TARS_DEV_STANDIN_PORT=18101 \
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
for token in dev-user-token dev-admin-token; do
  echo "schemathesis as ${token%-token}: $EXAMPLES examples per operation"
  PYTHONPATH="$st_dir" "$st_dir/bin/st" run "$base/openapi.json" --checks all \
    --max-examples "$EXAMPLES" --seed 1 -H "Authorization: Bearer $token"
done
