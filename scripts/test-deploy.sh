#!/usr/bin/env bash
# Checks the shipped deployment files offline: the Prometheus scrape configuration and
# alert rules (promtool from Debian's prometheus package, which also gives the tests in
# tests/it/deploy.rs a real Prometheus), the alerts' unit tests, the dashboard's queries,
# docker-compose.yaml against the Compose specification's JSON schema (PyPI
# check-jsonschema, which vendors it) and the Kubernetes manifests
# (scripts/check-manifests.sh). Installs what it needs; prints what it checked.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/lib/tools.sh
. "$root/scripts/lib/tools.sh"
deb_tool promtool prometheus
cd "$root/deploy/prometheus"
promtool check config prometheus.yml
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

# docker-compose.yaml against the Compose specification (Docker itself is not here).
jsonschema="$root/.tools/check-jsonschema"
[ -x "$jsonschema/bin/check-jsonschema" ] || pip_tool "$jsonschema" check-jsonschema==0.35.0
PYTHONPATH="$jsonschema" "$jsonschema/bin/check-jsonschema" --builtin-schema vendor.compose-spec \
  "$root/docker-compose.yaml"

# The Kubernetes overlays rendered (two kustomize versions) and schema-checked.
"$root/scripts/check-manifests.sh"
