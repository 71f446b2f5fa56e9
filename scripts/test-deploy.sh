#!/usr/bin/env bash
# Checks the shipped Prometheus alert rules and runs their unit tests with promtool
# (Debian's prometheus package, installed with apt-get when missing).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/lib/tools.sh
. "$root/scripts/lib/tools.sh"
deb_tool promtool prometheus
cd "$root/deploy/prometheus"
promtool check rules alerts.yaml
promtool test rules alerts.test.yaml
# Every query of the Grafana dashboard parses as PromQL (checked as recording rules).
rules="$(mktemp --suffix=.yaml)"
trap 'rm -f "$rules"' EXIT
python3 - "$root/deploy/grafana/tars.json" "$rules" <<'PY'
import json, sys
dash = json.load(open(sys.argv[1]))
exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
with open(sys.argv[2], "w") as f:
    f.write("groups:\n  - name: dashboard\n    rules:\n")
    for i, e in enumerate(exprs):
        f.write(f"      - record: tars_dashboard_query_{i}\n        expr: {json.dumps(e)}\n")
print(f"dashboard: {len(exprs)} queries")
PY
promtool check rules "$rules"
