#!/usr/bin/env bash
# Renders and validates deploy/kubernetes offline (no cluster, no network after the first
# install):
#   1. renders both overlays (production, hpa) with `kubectl kustomize`: with the kubectl on
#      PATH (or $KUBECTL), if any, and always with Debian bookworm's kubernetes-client
#      (kubectl 1.20, kustomize v2.0.3), unpacked into the git-ignored .tools/ (apt-get
#      download, nothing installed system-wide); every renderer must give the same objects;
#   2. validates every rendered object and base/secret.example.yaml with PyPI
#      kubernetes-validate (pinned, into .tools/) against Kubernetes $K8S_VERSION, --strict
#      (unknown fields are errors). CRDs it has no schema for (KEDA ScaledObject,
#      Prometheus Operator PodMonitor) are said to be NOT schema-checked; only the fields
#      TARS relies on are checked for them (below). Any other kind without a schema fails;
#   3. checks what no schema can: selectors and ports that match the Deployments, ConfigMap
#      keys and Secret items that exist, probe ports, termination grace >= drain time, the
#      security context, ScaledObject stream/consumer names against
#      common/jetstream/src/topology.rs, a template Secret with placeholders only.
# Needs python3 with pip and, without a kubectl on PATH, apt (Debian; as root).
set -euo pipefail
KUBERNETES_VALIDATE_VERSION="1.31.0"
K8S_VERSION="1.31.0"
KUBECTL_DEB_VERSION="1.20.5+really1.20.2-1.1+deb12u1"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# shellcheck source=scripts/lib/tools.sh
. "$root/scripts/lib/tools.sh"
start=$SECONDS
overlays=(production hpa)
kdir="deploy/kubernetes"

kv_dir="$root/.tools/kubernetes-validate-$KUBERNETES_VALIDATE_VERSION"
[ -d "$kv_dir/kubernetes_validate" ] \
  || pip_tool "$kv_dir" "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"

# Debian's kubectl 1.20, unpacked (not installed) so it never replaces a system kubectl.
deb_kubectl() {
  local dir="$root/.tools/kubernetes-client-$KUBECTL_DEB_VERSION" tmp version
  if [ ! -x "$dir/usr/bin/kubectl" ]; then
    command -v apt-get >/dev/null 2>&1 || return 1
    tmp="$(mktemp -d)"
    version="$KUBECTL_DEB_VERSION"
    echo "unpacking Debian's kubernetes-client=$version into ${dir#"$root/"} (apt-get download)" >&2
    if ! (cd "$tmp" && { apt-get download -q "kubernetes-client=$version" >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null && apt-get download -q "kubernetes-client=$version" >/dev/null; }; }); then
      # A Debian point release replaces the version: take the current one, say so loudly.
      version="$(apt-cache policy kubernetes-client | awk '/Candidate:/ {print $2}')"
      echo "WARN kubernetes-client=$KUBECTL_DEB_VERSION is no longer served; using $version (update KUBECTL_DEB_VERSION)" >&2
      (cd "$tmp" && apt-get download -q "kubernetes-client=$version" >/dev/null)
    fi
    mkdir -p "$dir"
    dpkg-deb -x "$tmp"/kubernetes-client_*.deb "$dir"
    rm -rf "$tmp"
  fi
  echo "$dir/usr/bin/kubectl"
}

renderers=()
path_kubectl="${KUBECTL:-$(command -v kubectl || true)}"
[ -n "$path_kubectl" ] && renderers+=("$path_kubectl")
if old="$(deb_kubectl)"; then
  renderers+=("$old")
elif [ ${#renderers[@]} -eq 0 ]; then
  echo "FAIL no kubectl on PATH and no apt-get to fetch Debian's kubernetes-client" >&2
  exit 1
else
  echo "NOTE no apt-get: not rendering with the old kustomize (kubectl 1.20)" >&2
fi

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
rendered=()
for i in "${!renderers[@]}"; do
  k="${renderers[$i]}"
  kver="$("$k" version --client 2>/dev/null | grep -o -m1 -E 'v[0-9]+\.[0-9]+\.[0-9]+[^", ]*' || true)"
  # kubectl before 1.21 does not print its kustomize: 1.14-1.20 embed v2.0.3.
  kz="$("$k" version --client 2>/dev/null | sed -n 's/^Kustomize Version: //p' || true)"
  echo "render with ${k#"$root/"} (kubectl ${kver:-?}, kustomize ${kz:-v2.0.3})"
  : >"$out/warn"
  for o in "${overlays[@]}"; do
    f="$out/$o.$i.yaml"
    if ! "$k" kustomize "$kdir/overlays/$o" >"$f" 2>"$out/err"; then
      cat "$out/err" >&2
      echo "FAIL $k kustomize $kdir/overlays/$o" >&2
      exit 1
    fi
    cat "$out/err" >>"$out/warn"
    echo "  overlays/$o: $(grep -c '^kind:' "$f") objects"
    rendered+=("$o=$f")
  done
  # kustomize v5 warns about `bases` and `patchesStrategicMerge`, kept for kustomize v2.
  if [ -s "$out/warn" ]; then sort -u "$out/warn" | sed 's/^/  (kustomize) /'; fi
done

PYTHONPATH="$kv_dir" python3 - "$K8S_VERSION" "$kdir/base/secret.example.yaml" "${rendered[@]}" <<'PY'
import re
import sys

import yaml
import kubernetes_validate
from kubernetes_validate.utils import SchemaNotFoundError, ValidationError

k8s, secret_template, rendered = sys.argv[1], sys.argv[2], sys.argv[3:]
errors = []


def fail(where, msg):
    errors.append(f"{where}: {msg}")
    print(f"  FAIL {where}: {msg}")


def load(path):
    return [d for d in yaml.safe_load_all(open(path)) if d]


def name(d):
    return f"{d['kind']}/{d['metadata']['name']}"


def duration(s):
    m = re.fullmatch(r"(\d+)(ms|s|m|h|d)", str(s).strip())
    if not m:
        raise ValueError(f"not a duration: {s!r}")
    n, unit = int(m.group(1)), m.group(2)
    return n * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[unit]


# What the code says: stream and durable consumer names, default drain times.
topology = open("common/jetstream/src/topology.rs").read()
stream = re.search(r'pub const EVENTS_STREAM: &str = "([^"]+)"', topology).group(1)
consumers = set(re.findall(r'pub const \w+: WorkerKind = WorkerKind \{\s*name: "([^"]+)"', topology))
config = open("common/jetstream/src/config.rs").read()
default_grace = re.search(r'env = "WORKER_SHUTDOWN_GRACE", default_value = "([^"]+)"', config).group(1)
ingress_src = open("services/ingress/src/lib.rs").read()
default_timeout = re.search(r'env = "REQUEST_TIMEOUT", default_value = "([^"]+)"', ingress_src).group(1)
binaries = {"tars-ingress", "tars-notifier", "tars-decision", "tars-governance-applier"}
print(f"code: stream {stream}, consumers {sorted(consumers)}, "
      f"WORKER_SHUTDOWN_GRACE default {default_grace}, REQUEST_TIMEOUT default {default_timeout}")

# CRDs kubernetes-validate has no schema for, and what is checked of them by hand.
CRDS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "scaleTargetRef, replica bounds, nats-jetstream trigger metadata",
    ("monitoring.coreos.com/v1", "PodMonitor"): "selector, jobLabel, podMetricsEndpoints[].port",
}
schema_checked = crd_noted = 0


def schema(where, d):
    global schema_checked, crd_noted
    try:
        kubernetes_validate.validate(d, k8s, strict=True)
        schema_checked += 1
        return
    except ValidationError as e:
        path = ".".join(str(p) for p in e.path)
        fail(where, f"{name(d)} does not validate against Kubernetes {k8s} (strict): {path}: {e.message}")
    except SchemaNotFoundError:
        key = (d.get("apiVersion"), d.get("kind"))
        if key in CRDS:
            crd_noted += 1
            print(f"  NOTE {where}: {name(d)} ({key[0]}) is NOT schema-checked "
                  f"(no CRD schema offline); checked by hand: {CRDS[key]}")
        else:
            fail(where, f"{name(d)}: no schema for {key[0]} {key[1]} in Kubernetes {k8s}")


def matches(selector, labels):
    ml = (selector or {}).get("matchLabels", {})
    return bool(ml) and all(labels.get(k) == v for k, v in ml.items())


# The Secret template: valid, and placeholders only.
template = load(secret_template)
print(f"{secret_template}: {len(template)} object")
for d in template:
    schema(secret_template, d)
    if d["kind"] != "Secret":
        fail(secret_template, f"{name(d)} is not a Secret")
    values = {**d.get("stringData", {}), **d.get("data", {})}
    real = [k for k, v in values.items() if v != "REPLACE_ME"]
    if real:
        fail(secret_template, f"keys {real} hold something other than REPLACE_ME")
secret_keys = {k for d in template for k in {**d.get("stringData", {}), **d.get("data", {})}}
secret_name = template[0]["metadata"]["name"]

renders = {}
for arg in rendered:
    overlay, path = arg.split("=", 1)
    docs = load(path)
    key = sorted((name(d), yaml.safe_dump(d, sort_keys=True)) for d in docs)
    if overlay in renders and renders[overlay] != key:
        fail(f"overlays/{overlay}", "the kubectl versions render different objects")
    if overlay in renders:
        continue
    renders[overlay] = key
    where = f"overlays/{overlay}"
    print(f"{where}: {len(docs)} objects")
    for d in docs:
        schema(where, d)

    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    deps = {d["metadata"]["name"]: d for d in by_kind.get("Deployment", [])}
    cms = {d["metadata"]["name"]: d.get("data", {}) for d in by_kind.get("ConfigMap", [])}
    pod_labels = {n: d["spec"]["template"]["metadata"]["labels"] for n, d in deps.items()}
    pod_ports = {n: {p["name"]: p["containerPort"] for c in d["spec"]["template"]["spec"]["containers"]
                     for p in c.get("ports", [])} for n, d in deps.items()}
    autoscaled = set()

    if {d.get("metadata", {}).get("namespace") for d in docs} != {"tars"}:
        fail(where, "not every object is in namespace tars")
    if set(deps) != binaries:
        fail(where, f"Deployments {sorted(deps)}, expected {sorted(binaries)}")

    for n, d in deps.items():
        w = f"{where} Deployment/{n}"
        pod = d["spec"]["template"]["spec"]
        if not matches(d["spec"]["selector"], pod_labels[n]):
            fail(w, "selector does not match its pod labels")
        if pod.get("automountServiceAccountToken") is not False:
            fail(w, "automountServiceAccountToken is not false")
        psc = pod.get("securityContext", {})
        if not (psc.get("runAsNonRoot") and psc.get("runAsUser") == 65532
                and psc.get("seccompProfile", {}).get("type") == "RuntimeDefault"):
            fail(w, "pod securityContext: runAsNonRoot, runAsUser 65532, seccomp RuntimeDefault")
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for c in pod["containers"]:
            cw = f"{w} container {c['name']}"
            image = c.get("image", "")
            if ":" not in image.split("/")[-1] and "@" not in image or image.endswith(":latest"):
                fail(cw, f"image {image!r} is not pinned")
            cmd = c.get("command", [])
            if len(cmd) != 1 or cmd[0] != f"/usr/local/bin/{n}":
                fail(cw, f"command {cmd} does not run /usr/local/bin/{n}")
            sc = c.get("securityContext", {})
            if not (sc.get("readOnlyRootFilesystem") is True and sc.get("allowPrivilegeEscalation") is False
                    and sc.get("capabilities", {}).get("drop") == ["ALL"] and sc.get("runAsNonRoot") is True):
                fail(cw, "securityContext: readOnlyRootFilesystem, no privilege escalation, drop ALL, non-root")
            res = c.get("resources", {})
            for part, what in (("requests", "cpu"), ("requests", "memory"), ("limits", "memory")):
                if what not in res.get(part, {}):
                    fail(cw, f"no resources.{part}.{what}")
            if "envFrom" in c:
                fail(cw, "envFrom hides which variables the service gets: list them under env")
            env = {}
            for e in c.get("env", []):
                if e["name"] in env:
                    fail(cw, f"{e['name']} set twice")
                if "value" in e:
                    env[e["name"]] = e["value"]
                    continue
                ref = e.get("valueFrom", {}).get("configMapKeyRef")
                if not ref:
                    fail(cw, f"{e['name']}: neither a value nor a configMapKeyRef")
                    continue
                if ref["name"] not in cms or ref["key"] not in cms[ref["name"]]:
                    fail(cw, f"{e['name']}: ConfigMap {ref['name']} has no key {ref['key']}")
                else:
                    env[e["name"]] = cms[ref["name"]][ref["key"]]
            mounts = {m["mountPath"]: volumes.get(m["name"]) for m in c.get("volumeMounts", [])}
            for var, path in env.items():
                if not var.endswith("_FILE"):
                    continue
                folder, _, file = path.rpartition("/")
                vol = mounts.get(folder)
                sec = (vol or {}).get("secret")
                if not sec or sec.get("secretName") != secret_name:
                    fail(cw, f"{var}={path} is not in a mounted Secret {secret_name}")
                    continue
                items = {i["path"]: i["key"] for i in sec.get("items", [])}
                if file not in items:
                    fail(cw, f"{var}={path}: the Secret volume projects no {file}")
                elif items[file] not in secret_keys:
                    fail(cw, f"{var}: key {items[file]} is not in {secret_template}")
            ports = {p["name"] for p in c.get("ports", [])}
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                g = c.get(probe, {}).get("httpGet")
                if not g:
                    if probe != "startupProbe":
                        fail(cw, f"no httpGet {probe}")
                    continue
                if g["port"] not in ports:
                    fail(cw, f"{probe} port {g['port']} is not a container port")
                want = "/readyz" if probe == "readinessProbe" else "/livez"
                if g["path"] != want:
                    fail(cw, f"{probe} path {g['path']}, expected {want}")
            addr = env.get("METRICS_ADDR")
            if addr is None or not addr.endswith(f":{pod_ports[n].get('metrics')}"):
                fail(cw, f"METRICS_ADDR {addr!r} is not the container port `metrics`")
            if n == "tars-ingress":
                if not env.get("LISTEN_ADDR", "").endswith(f":{pod_ports[n].get('http')}"):
                    fail(cw, "LISTEN_ADDR is not the container port `http`")
                sleep = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
                drain = duration(env.get("REQUEST_TIMEOUT", default_timeout)) + sleep
            else:
                drain = duration(env.get("WORKER_SHUTDOWN_GRACE", default_grace))
            grace = pod.get("terminationGracePeriodSeconds", 30)
            if grace < drain + 5:
                fail(w, f"terminationGracePeriodSeconds {grace} < drain {drain:g} s + 5 s margin")
        print(f"  ok  Deployment/{n}: {len(c.get('env', []))} env, grace {grace} s >= drain {drain:g} s + margin")

    def one_target(w, ref):
        if ref.get("kind") != "Deployment" or ref.get("name") not in deps:
            fail(w, f"scaleTargetRef {ref} is not a Deployment here")
            return None
        return ref["name"]

    for d in by_kind.get("ScaledObject", []):
        w = f"{where} {name(d)}"
        t = one_target(w, d["spec"].get("scaleTargetRef", {}))
        if t:
            autoscaled.add(t)
        if not 1 <= d["spec"].get("minReplicaCount", 0) <= d["spec"].get("maxReplicaCount", 0):
            fail(w, "needs 1 <= minReplicaCount <= maxReplicaCount")
        for trig in d["spec"].get("triggers", []):
            md = trig.get("metadata", {})
            if trig.get("type") != "nats-jetstream":
                fail(w, f"trigger type {trig.get('type')}, expected nats-jetstream")
            missing = [k for k in ("natsServerMonitoringEndpoint", "account", "stream", "consumer", "lagThreshold") if k not in md]
            if missing:
                fail(w, f"trigger metadata lacks {missing}")
            if not all(isinstance(v, str) for v in md.values()):
                fail(w, "trigger metadata values must be strings")
            if md.get("stream") != stream:
                fail(w, f"stream {md.get('stream')!r}, the code's is {stream}")
            if t and md.get("consumer") != t.removeprefix("tars-"):
                fail(w, f"consumer {md.get('consumer')!r} is not the durable of {t}")
            if md.get("consumer") not in consumers:
                fail(w, f"consumer {md.get('consumer')!r} is not a durable in topology.rs")
            if not md.get("natsServerMonitoringEndpoint", "").endswith(":8222"):
                fail(w, "natsServerMonitoringEndpoint is not a monitoring port (8222)")
    for d in by_kind.get("HorizontalPodAutoscaler", []):
        t = one_target(f"{where} {name(d)}", d["spec"].get("scaleTargetRef", {}))
        if t:
            autoscaled.add(t)
    workers = binaries - {"tars-ingress"}
    if autoscaled != workers:
        fail(where, f"autoscaled {sorted(autoscaled)}, expected every worker {sorted(workers)}")
    if by_kind.get("ScaledObject") and by_kind.get("HorizontalPodAutoscaler"):
        fail(where, "both KEDA ScaledObjects and HPAs")
    for t in autoscaled:
        if "replicas" in deps[t]["spec"]:
            fail(where, f"Deployment/{t} sets replicas although an autoscaler owns them")

    for d in by_kind.get("PodDisruptionBudget", []):
        hit = [n for n in deps if matches(d["spec"]["selector"], pod_labels[n])]
        if len(hit) != 1:
            fail(f"{where} {name(d)}", f"selects {hit}, expected one Deployment")
    if {n for d in by_kind.get("PodDisruptionBudget", []) for n in deps
            if matches(d["spec"]["selector"], pod_labels[n])} != set(deps):
        fail(where, "not every Deployment has a PodDisruptionBudget")
    for d in by_kind.get("Service", []):
        hit = [n for n in deps if all(pod_labels[n].get(k) == v for k, v in d["spec"]["selector"].items())]
        if not hit:
            fail(f"{where} {name(d)}", "selects no Deployment")
        for p in d["spec"]["ports"]:
            for n in hit:
                if p["targetPort"] not in pod_ports[n] and p["targetPort"] not in pod_ports[n].values():
                    fail(f"{where} {name(d)}", f"targetPort {p['targetPort']} is not a port of {n}")
    for d in by_kind.get("PodMonitor", []):
        hit = {n for n in deps if matches(d["spec"]["selector"], pod_labels[n])}
        if hit != set(deps):
            fail(f"{where} {name(d)}", f"scrapes {sorted(hit)}, expected all four")
        # The alert rules select on job=tars-<service>; the job is the value of jobLabel.
        jl = d["spec"].get("jobLabel")
        jobs = {pod_labels[n].get(jl) for n in hit} if jl else set()
        if jobs != set(deps):
            fail(f"{where} {name(d)}", f"jobLabel {jl!r} gives jobs {sorted(map(str, jobs))}, the alert rules expect {sorted(deps)}")
        for ep in d["spec"].get("podMetricsEndpoints", []):
            for n in hit:
                if ep.get("port") not in pod_ports[n]:
                    fail(f"{where} {name(d)}", f"port {ep.get('port')} is not a port of {n}")
    deny = [d for d in by_kind.get("NetworkPolicy", [])
            if set(d["spec"].get("policyTypes", [])) == {"Ingress", "Egress"}
            and not d["spec"].get("ingress") and not d["spec"].get("egress")]
    for n in deps:
        if not any(matches(d["spec"]["podSelector"], pod_labels[n]) for d in deny):
            fail(where, f"no default-deny NetworkPolicy selects Deployment/{n}")
        allowed = set()
        for d in by_kind.get("NetworkPolicy", []):
            if matches(d["spec"]["podSelector"], pod_labels[n]):
                allowed |= {p.get("port") for r in d["spec"].get("ingress", []) for p in r.get("ports", [])}
        exposed = set(pod_ports[n].values())
        if allowed != exposed:
            fail(where, f"Deployment/{n}: NetworkPolicies admit ports {sorted(allowed)}, it listens on {sorted(exposed)}")
    kinds = ", ".join(f"{len(v)} {k}" for k, v in sorted(by_kind.items()))
    print(f"  ok  cross-checks ({kinds})")

print(f"schema-checked (Kubernetes {k8s}, strict): {schema_checked} objects; "
      f"NOT schema-checked (CRDs, fields checked by hand): {crd_noted}")
if errors:
    print(f"FAIL {len(errors)} problem(s):")
    for e in errors:
        print(f"  - {e}")
    sys.exit(1)
PY
echo "check-manifests: ok in $((SECONDS - start)) s"
