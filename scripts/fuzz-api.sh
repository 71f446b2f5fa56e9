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
# shellcheck source=scripts/lib/tools.sh
. "$root/scripts/lib/tools.sh"
st_dir="$root/.tools/schemathesis"
[ -x "$st_dir/bin/st" ] || pip_tool "$st_dir" "schemathesis==$SCHEMATHESIS_VERSION"
# shellcheck source=scripts/lib/tars-dev.sh
. "$root/scripts/lib/tars-dev.sh"
port=18000
start_tars_dev $port 14223 18101
base="http://127.0.0.1:$port"
for token in dev-user-token dev-admin-token; do
  echo "schemathesis as ${token%-token}: $EXAMPLES examples per operation"
  PYTHONPATH="$st_dir" "$st_dir/bin/st" run "$base/openapi.json" --checks all \
    --max-examples "$EXAMPLES" --seed 1 -H "Authorization: Bearer $token"
done
