#!/usr/bin/env bash
# Builds the binaries the container image ships, exactly as the Dockerfile does (it runs
# this script), so CI, which has no Docker engine, builds and checks the same thing:
# the `image` profile (release, thin LTO, symbols stripped), the default features, the
# locked dependency versions. Prints each binary's size.
set -euo pipefail
cd "$(dirname "$0")/.."
BINS=(tars-ingress tars-notifier tars-decision tars-governance-applier tars-standins)
args=()
for b in "${BINS[@]}"; do args+=(--bin "$b"); done
cargo build --locked --profile image "${args[@]}"
dir="${CARGO_TARGET_DIR:-target}/image"
for b in "${BINS[@]}"; do
  test -x "$dir/$b" || { echo "build-binaries: $dir/$b is missing" >&2; exit 1; }
done
du -b "${BINS[@]/#/$dir/}" | awk '{ printf "  %-40s %6.1f MB\n", $2, $1 / 1e6; total += $1 } END { printf "  %-40s %6.1f MB\n", "all binaries", total / 1e6 }'
