#!/usr/bin/env bash
# cargo-deny against deny.toml: licenses, bans and sources always; advisories where the
# RustSec database (on GitHub) can be fetched, with a loud line where it cannot.
# Installs cargo-deny (pinned, from crates.io, --locked) into the git-ignored .tools/.
set -euo pipefail
CARGO_DENY_VERSION="0.20.2"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="$root/.tools/cargo-deny/bin/cargo-deny"
cd "$root"

if [ ! -x "$bin" ] || ! "$bin" --version | grep -qF "$CARGO_DENY_VERSION"; then
  echo "installing cargo-deny $CARGO_DENY_VERSION into .tools/cargo-deny (crates.io, about 3 minutes)" >&2
  cargo install --quiet --locked --version "$CARGO_DENY_VERSION" --root "$root/.tools/cargo-deny" cargo-deny
fi

"$bin" --log-level error check bans licenses sources

if timeout 15 git ls-remote --exit-code https://github.com/rustsec/advisory-db HEAD >/dev/null 2>&1; then
  "$bin" --log-level error check advisories
else
  echo "cargo deny: advisories NOT CHECKED: the RustSec database (github.com/rustsec/advisory-db) is unreachable from this network" >&2
fi
