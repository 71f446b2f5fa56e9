#!/usr/bin/env bash
# Checks the shipped Prometheus alert rules and runs their unit tests with promtool
# (Debian's prometheus package, installed with apt-get when missing).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root/deploy/prometheus"
if ! command -v promtool >/dev/null 2>&1; then
  echo "installing Debian's prometheus (for promtool; apt-get)" >&2
  apt-get install -y -q prometheus >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q prometheus >/dev/null; }
fi
promtool check rules alerts.yaml
promtool test rules alerts.test.yaml
