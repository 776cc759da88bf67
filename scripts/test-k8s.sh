#!/usr/bin/env bash
# Check the Kubernetes manifests (deploy/kubernetes/):
#
# 1. Schema: every YAML file (subdirectories included) validated strictly — unknown
#    fields are errors — against the Kubernetes OpenAPI schemas of 1.29 and 1.37,
#    with PyPI's `kubernetes-validate` (it bundles the schemas: no cluster, no network
#    once installed). A resource of a kind it has no schema for is a failure too.
# 2. Config: each pod's start-up as the StatefulSet runs it — its shell script, the
#    ConfigMap's primusd.toml and node-ids, the environment of the manifest — ending
#    in the real `primusd --check-config`, for the founding pods primus-0..2, the
#    scale-up pods primus-3 and primus-4, and a pod mapped to a new id by node-ids.
#
# Installs kubernetes-validate into a virtualenv (K8S_VALIDATE_VENV, default
# ~/.cache/primus/kubernetes-validate) when it is missing. Fails when it cannot be
# installed: this is not a skip. Usage: scripts/test-k8s.sh [DIR] (default
# deploy/kubernetes).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "test-k8s: $*"; }
fail() {
    echo "test-k8s: FAILED: $*" >&2
    exit 1
}

dir="${1:-deploy/kubernetes}"
version=1.37.0
venv="${K8S_VALIDATE_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/primus/kubernetes-validate}"
validate="$venv/bin/kubernetes-validate"

if [ "$("$validate" --version 2>/dev/null || true)" != "$version" ]; then
    log "installing kubernetes-validate $version into $venv"
    command -v python3 >/dev/null 2>&1 || fail "python3 is missing: install python3 (with venv) and run again"
    rm -rf "$venv"
    mkdir -p "$(dirname "$venv")"
    python3 -m venv "$venv" ||
        fail "cannot create a virtualenv at $venv (Debian: apt-get install python3-venv) to install kubernetes-validate"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$version" ||
        fail "pip could not install kubernetes-validate==$version from PyPI into $venv; the manifests were NOT checked"
    [ "$("$validate" --version 2>/dev/null || true)" = "$version" ] ||
        fail "kubernetes-validate $version does not run after installing it into $venv"
fi
log "kubernetes-validate $("$validate" --version)"

mapfile -t files < <(find "$dir" -type f \( -name '*.yaml' -o -name '*.yml' \) | sort)
[ "${#files[@]}" -gt 0 ] || fail "no YAML files under $dir"

# 1. Schemas, strictly. kubernetes-validate exits 0 with a WARN for a kind it has no
# schema for (a misspelt kind or apiVersion): count WARN and ERROR lines as failures.
bad=0
for k in 1.29.0 "$version"; do
    out="$("$validate" --strict --kubernetes-version "$k" "${files[@]}" 2>&1)" && rc=0 || rc=$?
    printf '%s\n' "$out" | sed 's/^/  /'
    if [ "$rc" -ne 0 ] || printf '%s\n' "$out" | grep -qE '^(ERROR|WARN)|[Cc]ould(n.t| not) '; then
        bad=1
    fi
    for f in "${files[@]}"; do
        printf '%s\n' "$out" | grep -q "^INFO $f passed" || {
            echo "  $f: no resource in it passed against $k" >&2
            bad=1
        }
    done
done
[ "$bad" -eq 0 ] || fail "manifests under $dir do not validate against the Kubernetes schemas (lines above)"
log "${#files[@]} files valid against Kubernetes 1.29 and $version (strict)"

# 2. The pods' start-up, ending in the real primusd --check-config.
sts="$dir/statefulset.yaml"
cm="$dir/configmap.yaml"
if [ ! -f "$sts" ] || [ ! -f "$cm" ]; then
    log "no statefulset.yaml and configmap.yaml in $dir: start-up not checked"
    exit 0
fi
target="${CARGO_TARGET_DIR:-target}"
# A no-op when primusd is up to date (test.sh builds every binary later anyway).
cargo build -p primus-server --bin primusd --locked
primusd_dir="$(cd "$target/debug" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$venv/bin/python" - "$sts" "$cm" "$work" <<'EOF'
import sys, yaml
sts, cm, work = sys.argv[1:4]
docs = [d for d in yaml.safe_load_all(open(sts)) if d and d.get("kind") == "StatefulSet"]
c = docs[0]["spec"]["template"]["spec"]["containers"][0]
args = c["args"]
assert args[:2] == ["/bin/sh", "-c"], f"statefulset args do not start with /bin/sh -c: {args[:2]}"
open(f"{work}/script.sh", "w").write(args[2])
with open(f"{work}/env", "w") as out:
    for e in c.get("env", []):
        if "value" in e:
            out.write(f"{e['name']}={e['value']}\n")
data = [d for d in yaml.safe_load_all(open(cm)) if d and d.get("kind") == "ConfigMap"][0]["data"]
open(f"{work}/primusd.toml", "w").write(data["primusd.toml"])
open(f"{work}/node-ids", "w").write(data.get("node-ids", ""))
EOF
mkdir -p "$work/data"
# check_pod POD NODE_IDS LABEL NODE RC [TEXT]: the pod's script says "is node NODE", and
# primusd --check-config exits RC (printing TEXT).
check_pod() {
    local pod="$1" ids="$2" label="$3" want_node="$4" want_rc="$5" want_text="${6:-}"
    printf '%s\n' "$ids" >"$work/node-ids.$pod"
    local -a envs=()
    while IFS= read -r line; do envs+=("$line"); done <"$work/env"
    local out rc
    out="$(env -i PATH="$primusd_dir:/usr/bin:/bin" HOME="$work" "${envs[@]}" \
        HOSTNAME="$pod" PRIMUS_CONFIG="$work/primusd.toml" NODE_IDS_FILE="$work/node-ids.$pod" \
        PRIMUS_DATA_DIR="$work/data" MYSQL_PASSWORD=x MYSQL_REPLICATION_PASSWORD=y \
        ${FOUNDING:+FOUNDING_MEMBERS=$FOUNDING} \
        /bin/sh -c "$(cat "$work/script.sh")" primusd --check-config 2>&1)" && rc=0 || rc=$?
    if [ "$rc" -ne "$want_rc" ] || ! printf '%s\n' "$out" | grep -q "is node $want_node\$" ||
        ! printf '%s\n' "$out" | grep -qF -- "$want_text"; then
        printf '%s\n' "$out" | sed 's/^/    /' >&2
        fail "pod $pod ($label): expected node $want_node and exit $want_rc from primusd --check-config${want_text:+ saying \"$want_text\"}, got exit $rc"
    fi
    log "pod $pod ($label): node $want_node, primusd --check-config exit $rc as expected"
}
for i in 0 1 2 3 4; do
    check_pod "primus-$i" "$(cat "$work/node-ids")" "ConfigMap as shipped" $((i + 1)) 0 "is valid"
done
check_pod primus-1 "primus-1=6" "node-ids primus-1=6" 6 0 "is valid"
# The check is real: node 4 taken for a founding pod but missing from initial_members.
FOUNDING=5 check_pod primus-3 "" "FOUNDING_MEMBERS=5" 4 2 "node_id 4 is not among initial_members"
log "ok"
