#!/usr/bin/env bash
# A flame graph of one tars-bench part (default: ingress): `perf record` (Debian's
# linux-perf) of tars-bench and its children (the service processes it spawns and
# nats-server), release binaries built with line tables into their own target dir (so
# the benchmarked build keeps its profile), folded and drawn by inferno (pinned,
# installed into the git-ignored .tools/). Writes target/flamegraph/<part>.svg and
# <part>.folded (one line per stack, the process name first: grep it).
#   ./scripts/flamegraph.sh [ingress|e2e|worker|...]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# shellcheck source=scripts/lib/tools.sh
. scripts/lib/tools.sh
part=${1:-ingress}
deb_tool perf linux-perf
deb_tool wrk wrk
inferno=.tools/inferno
if [ ! -x "$inferno/bin/inferno-flamegraph" ]; then
  echo "installing inferno 0.12.3 into $inferno (crates.io)" >&2
  cargo install --quiet --locked inferno --version 0.12.3 --root "$inferno" >&2
fi
NATS_SERVER_BIN=$(./scripts/ensure-nats-server.sh)
export NATS_SERVER_BIN
target=target/flamegraph
CARGO_PROFILE_RELEASE_DEBUG=line-tables-only CARGO_PROFILE_RELEASE_STRIP=none \
  cargo build --release --target-dir "$target/build" -p tars-tests --bin tars-bench \
  -p tars-ingress -p tars-notifier -p tars-decision -p tars-governance-applier --bins
export TARS_BENCH_BIN_DIR=$root/$target/build/release
mkdir -p "$target"
perf record -q -F 499 --call-graph dwarf,8192 -o "$target/$part.data" \
  "$target/build/release/tars-bench" "$part"
perf script -i "$target/$part.data" 2>/dev/null \
  | "$inferno/bin/inferno-collapse-perf" >"$target/$part.folded"
"$inferno/bin/inferno-flamegraph" <"$target/$part.folded" >"$target/$part.svg"
rm -f "$target/$part.data"
echo "flame graph: $target/$part.svg" >&2
