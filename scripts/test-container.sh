#!/usr/bin/env bash
# Static and unit checks of the container files (deploy/container, deploy/compose),
# fast (seconds) and offline once shellcheck and PyYAML are installed. No container
# engine is needed and none is run: building the image is too slow for CI (see
# deploy/container/README.md for the real build and run).
#   * shellcheck + `sh -n`/`bash -n` on the entrypoint, the healthcheck, the MariaDB
#     init script and this script;
#   * the entrypoint's contract: PRIMUS_NODE_ID from a StatefulSet hostname
#     (primus-0 -> 1), an explicit one kept, none without an ordinal, default and
#     `-`-prefixed arguments, under dash and bash;
#   * the healthcheck against a throw-away HTTP server answering 200 and 503;
#   * compose.yaml parses, every file or directory it mounts and its build context
#     exist, agents and coordinators agree with the MariaDB names and ordinals;
#   * the Containerfile: its COPY sources exist, its binaries are the workspace's.
# Installs shellcheck / python3-yaml with apt-get when missing; fails (never skips)
# when it cannot.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "test-container: $*"; }
fail() {
    echo "test-container: FAIL: $*" >&2
    exit 1
}

# shellcheck source=scripts/apt-install.sh
source scripts/apt-install.sh
need_apt() { # need_apt COMMAND-TO-CHECK PACKAGE
    if eval "$1" >/dev/null 2>&1; then return 0; fi
    apt_install --no-install-recommends test-container "the container checks" "$2" || fail "cannot install $2"
    eval "$1" >/dev/null 2>&1 || fail "$2 installed but '$1' still fails"
}
need_apt "command -v shellcheck" shellcheck
need_apt "python3 -c 'import yaml'" python3-yaml

ctr=deploy/container
cmp=deploy/compose
entry=$ctr/entrypoint.sh
health=$ctr/healthcheck.sh

# --- shell syntax and lint -----------------------------------------------------
sh -n "$entry" || fail "sh -n $entry"
bash -n "$health" || fail "bash -n $health"
bash -n "$cmp/mariadb/initdb/20-replication.sh" || fail "bash -n 20-replication.sh"
shellcheck -s sh "$entry" || fail "shellcheck $entry"
shellcheck -x -s bash "$health" "$cmp/mariadb/initdb/20-replication.sh" "$ctr/podman-smoke.sh" scripts/test-container.sh ||
    fail "shellcheck"
for f in "$entry" "$health"; do
    [ -x "$f" ] || fail "$f is not executable (the image runs it directly)"
done
log "shell syntax and shellcheck: ok"

# --- entrypoint: PRIMUS_NODE_ID from the hostname --------------------------------
tmp="$(mktemp -d)"
trap 'kill "${srv_pid:-}" 2>/dev/null || true; rm -rf "$tmp"' EXIT
# A stub primusd that prints its arguments, for the default command.
mkdir -p "$tmp/bin"
printf '#!/bin/sh\necho "primusd-stub $*"\n' >"$tmp/bin/primusd"
chmod +x "$tmp/bin/primusd"

shells=(sh bash)
command -v dash >/dev/null 2>&1 && shells=(dash bash)
run_entry() { # run_entry SHELL [VAR=VALUE ...] -- ARGS...   (stdout and stderr together)
    local shell="$1"
    shift
    local vars=()
    while [ "$1" != -- ]; do
        vars+=("$1")
        shift
    done
    shift
    env -i PATH="$tmp/bin:/usr/bin:/bin" "${vars[@]}" "$shell" "$entry" "$@" 2>&1
}
expect_id() { # expect_id SHELL WANT [VAR=VALUE ...]
    local shell="$1" want="$2"
    shift 2
    local got
    # shellcheck disable=SC2016 # expanded by the inner sh, under the entrypoint
    got="$(run_entry "$shell" "$@" -- sh -c 'echo "id=${PRIMUS_NODE_ID-unset}"' | grep '^id=' || true)"
    [ "$got" = "id=$want" ] || fail "$shell entrypoint with $*: PRIMUS_NODE_ID: want $want, got '${got#id=}'"
}
for shell in "${shells[@]}"; do
    expect_id "$shell" 1 HOSTNAME=primus-0
    expect_id "$shell" 3 HOSTNAME=primus-2
    expect_id "$shell" 11 HOSTNAME=primus-10
    expect_id "$shell" 9 HOSTNAME=primus-08
    expect_id "$shell" 1 HOSTNAME=db-primus-0
    expect_id "$shell" 7 HOSTNAME=primus-0 PRIMUS_NODE_ID=7
    expect_id "$shell" unset HOSTNAME=primus
    expect_id "$shell" unset HOSTNAME=primus-a
    expect_id "$shell" unset HOSTNAME=primus-
    out="$(run_entry "$shell" HOSTNAME=coordinator -- true)"
    case "$out" in
        *"hostname 'coordinator' does not end in -N"*"node_id comes from the config file"*) ;;
        *) fail "$shell entrypoint, hostname without ordinal: no clear message (got: $out)" ;;
    esac
    out="$(run_entry "$shell" HOSTNAME=primus-1 --)"
    case "$out" in
        *"PRIMUS_NODE_ID=2 (hostname 'primus-1', ordinal 1)"*"primusd-stub --config /etc/primus/primusd.toml") ;;
        *) fail "$shell entrypoint without arguments: want the default primusd command (got: $out)" ;;
    esac
    out="$(run_entry "$shell" HOSTNAME=x -- --check-config)"
    case "$out" in
        *"primusd-stub --config /etc/primus/primusd.toml --check-config") ;;
        *) fail "$shell entrypoint with '--check-config': want it passed to primusd (got: $out)" ;;
    esac
    if run_entry "$shell" HOSTNAME=primus-12345678901 -- true >/dev/null; then
        fail "$shell entrypoint: an 11-digit ordinal must be refused"
    fi
    # exec, not a child: the command's exit code is the container's.
    set +e
    run_entry "$shell" HOSTNAME=primus-0 -- sh -c 'exit 3' >/dev/null
    rc=$?
    set -e
    [ "$rc" -eq 3 ] || fail "$shell entrypoint: exit code of the command not passed on (want 3, got $rc)"
done
log "entrypoint (${shells[*]}): primus-0 -> 1, primus-2 -> 3, primus-08 -> 9, explicit id kept, no ordinal -> unset with a message, default command, exit code: ok"

# --- healthcheck against a fake /health ----------------------------------------------
cat >"$tmp/fake_health.py" <<'EOF'
import http.server, sys
code = {"ok": 200, "down": 503}
state = {"v": "ok"}
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/toggle":
            state["v"] = "down"
            c = 200
        else:
            c = code[state["v"]] if self.path == "/health" else 404
        body = b'{"status":"%s"}' % state["v"].encode()
        self.send_response(c)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
s = http.server.HTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
EOF
python3 "$tmp/fake_health.py" >"$tmp/port" &
srv_pid=$!
for _ in $(seq 50); do [ -s "$tmp/port" ] && break; sleep 0.1; done
port="$(cat "$tmp/port")"
[ -n "$port" ] || fail "fake /health server did not start"
PRIMUS_HEALTH_ADDR="127.0.0.1:$port" bash "$health" >"$tmp/h.out" || fail "healthcheck on a 200 /health: $(cat "$tmp/h.out")"
python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/toggle')"
if PRIMUS_HEALTH_ADDR="127.0.0.1:$port" bash "$health" >"$tmp/h.out"; then
    fail "healthcheck on a 503 /health said healthy: $(cat "$tmp/h.out")"
fi
grep -q '503' "$tmp/h.out" || fail "healthcheck on a 503 does not say so: $(cat "$tmp/h.out")"
PRIMUS_HEALTHCHECK=off PRIMUS_HEALTH_ADDR="127.0.0.1:$port" bash "$health" || fail "PRIMUS_HEALTHCHECK=off must pass"
kill "$srv_pid" 2>/dev/null || true
wait "$srv_pid" 2>/dev/null || true
if PRIMUS_HEALTH_ADDR="127.0.0.1:$port" bash "$health" >"$tmp/h.out" 2>&1; then
    fail "healthcheck with nothing listening said healthy"
fi
log "healthcheck: 200 -> healthy, 503 -> unhealthy (with the status), refused -> unhealthy: ok"

# --- Containerfile vs the workspace ----------------------------------------------------
cargo metadata --no-deps --format-version 1 --offline >"$tmp/meta.json" 2>"$tmp/meta.err" ||
    cargo metadata --no-deps --format-version 1 >"$tmp/meta.json" ||
    fail "cargo metadata: $(cat "$tmp/meta.err")"
python3 - "$ctr/Containerfile" "$tmp/meta.json" <<'EOF' || fail "Containerfile checks"
import json, os, re, shlex, sys
path, meta = sys.argv[1], json.load(open(sys.argv[2]))
text = open(path).read().replace("\\\n", " ")
bins = {t["name"]: p["name"] for p in meta["packages"] for t in p["targets"] if "bin" in t["kind"]}
errors = []
want = {"primusd", "primusctl", "primus-agent"}
for b in want:
    if b not in bins:
        errors.append(f"the workspace has no binary {b}")
m = re.search(r"cargo build ([^&]*)", text)
if not m:
    errors.append("no `cargo build` in the build stage")
else:
    args = shlex.split(m.group(1))
    if "--release" not in args or "--locked" not in args:
        errors.append("cargo build must be --release --locked")
    pkgs = {args[i + 1] for i, a in enumerate(args) if a == "-p"}
    need = {bins[b] for b in want if b in bins}
    if pkgs != need:
        errors.append(f"cargo build -p {sorted(pkgs)}: the binaries' packages are {sorted(need)}")
copied = set(re.findall(r"target/release/([\w-]+)", text))
if copied != want:
    errors.append(f"copies target/release/{sorted(copied)}, want {sorted(want)}")
fromb = set()
for line in text.splitlines():
    w = line.split()
    if not w or w[0] != "COPY":
        continue
    opts = [x for x in w[1:] if x.startswith("--")]
    srcs = [x for x in w[1:] if not x.startswith("--")][:-1]
    if any(o.startswith("--from=") for o in opts):
        fromb |= {os.path.basename(s) for s in srcs}
        continue
    for s in srcs:
        if s != "." and not os.path.exists(s):
            errors.append(f"COPY source {s} does not exist")
if fromb != want:
    errors.append(f"runtime stage copies {sorted(fromb)} from the build stage, want {sorted(want)}")
for needle in ("USER 10001", "VOLUME", "/var/lib/primus", "EXPOSE 7101 7201", "HEALTHCHECK",
               "/usr/local/bin/primus-entrypoint", "/usr/local/bin/primus-healthcheck"):
    if needle not in text:
        errors.append(f"Containerfile lacks {needle!r}")
if "primus-healthcheck" in text and not re.search(r"COPY deploy/container/healthcheck.sh /usr/local/bin/primus-healthcheck", text):
    errors.append("healthcheck.sh is not installed as /usr/local/bin/primus-healthcheck")
if not re.search(r"COPY deploy/container/entrypoint.sh /usr/local/bin/primus-entrypoint", text):
    errors.append("entrypoint.sh is not installed as /usr/local/bin/primus-entrypoint")
for ign in (".containerignore", ".dockerignore"):
    if not os.path.exists(ign) or "target/" not in open(ign).read().split():
        errors.append(f"{ign} must exist and leave out target/")
for e in errors:
    print("Containerfile:", e, file=sys.stderr)
sys.exit(1 if errors else 0)
EOF
log "Containerfile: COPY sources exist, binaries primusd/primusctl/primus-agent match the workspace: ok"

# --- compose.yaml ---------------------------------------------------------------------
python3 - "$cmp/compose.yaml" <<'EOF' || fail "compose.yaml checks"
import os, re, sys, tomllib, yaml
path = sys.argv[1]
base = os.path.dirname(path)
doc = yaml.safe_load(open(path))
errors = []
svcs = doc.get("services") or {}
named = set((doc.get("volumes") or {}).keys())
def arg(cmd, name):
    for a in cmd or []:
        if isinstance(a, str) and a.startswith(f"--{name}="):
            return a.split("=", 1)[1]
mariadb = {n: s for n, s in svcs.items() if str(s.get("image", "")).startswith("docker.io/library/mariadb:10.11")}
if len(mariadb) != 3:
    errors.append(f"want 3 mariadb:10.11 services, got {sorted(mariadb)}")
coord = {n: s for n, s in svcs.items() if "primus-agent" not in str(s.get("command")) and n.startswith("primus-")}
if len(coord) != 3:
    errors.append(f"want 3 coordinators primus-0..2, got {sorted(coord)}")
for name, s in svcs.items():
    b = s.get("build")
    if b:
        ctx = os.path.join(base, b["context"] if isinstance(b, dict) else b)
        if not os.path.isdir(ctx):
            errors.append(f"{name}: build context {ctx} missing")
        df = os.path.join(ctx, b.get("dockerfile", "Dockerfile")) if isinstance(b, dict) else None
        if df and not os.path.isfile(df):
            errors.append(f"{name}: {df} missing")
    for v in s.get("volumes") or []:
        src = v.split(":")[0] if isinstance(v, str) else v.get("source")
        if src.startswith((".", "/")):
            if not os.path.exists(os.path.join(base, src)):
                errors.append(f"{name}: mounts {src}, which does not exist")
        elif src not in named:
            errors.append(f"{name}: named volume {src} is not declared")
    for dep in s.get("depends_on") or []:
        if dep not in svcs:
            errors.append(f"{name}: depends on unknown service {dep}")
    for k in ("network_mode", "pid"):
        v = s.get(k)
        if isinstance(v, str) and v.startswith("service:") and v[8:] not in svcs:
            errors.append(f"{name}: {k} {v}: no such service")
# Coordinators: node_id = hostname ordinal + 1 (what the entrypoint exports), one membership.
members = set()
for name, s in coord.items():
    host = s.get("hostname", name)
    m = re.search(r"-(\d+)$", host)
    conf = [v.split(":")[0] for v in s.get("volumes", []) if v.split(":")[1] == "/etc/primus/primusd.toml"]
    if not m or len(conf) != 1:
        errors.append(f"{name}: hostname with an ordinal and a mounted primusd.toml expected")
        continue
    c = tomllib.load(open(os.path.join(base, conf[0]), "rb"))
    if c.get("node_id") != int(m.group(1)) + 1:
        errors.append(f"{name}: node_id {c.get('node_id')} but the entrypoint exports {int(m.group(1)) + 1}")
    mem = tuple(sorted((x["id"], x["addr"]) for x in c.get("initial_members", [])))
    members.add(mem)
    for x in c.get("initial_members", []):
        if x["id"] == c.get("node_id") and x["addr"].split(":")[0] != host:
            errors.append(f"{name}: its initial_members entry is {x['addr']}")
    for k in ("password_file", "replication_password_file"):
        f = c.get("mysql", {}).get(k, "")
        local = f.replace("/etc/primus/secrets", os.path.join(base, "secrets"))
        if not os.path.isfile(local):
            errors.append(f"{name}: [mysql] {k} {f} is not in secrets/")
if len(members) != 1:
    errors.append("initial_members differ between the coordinators' files")
# Agents: one per mariadb, in its namespaces, naming it as the topology does.
agents = {n: s for n, s in svcs.items() if "primus-agent" in str(s.get("command"))}
for name, s in agents.items():
    db = (s.get("network_mode") or "")[8:]
    if db not in mariadb or s.get("pid") != f"service:{db}":
        errors.append(f"{name}: must share a mariadb service's network and pid namespaces")
        continue
    conf = [v.split(":")[0] for v in s.get("volumes", []) if v.split(":")[1] == "/etc/primus/primus-agent.toml"]
    if len(conf) != 1:
        errors.append(f"{name}: no /etc/primus/primus-agent.toml mounted")
        continue
    c = tomllib.load(open(os.path.join(base, conf[0]), "rb"))
    want = f"{arg(mariadb[db].get('command'), 'report-host')}:{arg(mariadb[db].get('command'), 'report-port')}"
    if c.get("instance") != want:
        errors.append(f"{name}: instance {c.get('instance')}, but {db} reports itself as {want}")
    run = [v for v in mariadb[db].get("volumes", []) if v.endswith(":/run/mysqld")]
    if not run or run[0] not in s.get("volumes", []):
        errors.append(f"{name}: does not share {db}'s /run/mysqld")
    for k in ("socket",):
        if not c.get("mysql", {}).get(k, "").startswith("/run/mysqld/"):
            errors.append(f"{name}: [mysql] {k} not under /run/mysqld")
if sorted(a[8:] for a in (s.get("network_mode") for s in agents.values())) != sorted(mariadb):
    errors.append("want exactly one agent per mariadb")
ids = sorted(arg(s.get("command"), "server-id") for s in mariadb.values())
if len(set(ids)) != 3:
    errors.append(f"server ids not unique: {ids}")
for e in errors:
    print("compose.yaml:", e, file=sys.stderr)
sys.exit(1 if errors else 0)
EOF
if docker compose version >/dev/null 2>&1; then
    docker compose -f "$cmp/compose.yaml" config -q || fail "docker compose config"
    log "docker compose config: ok"
else
    log "(docker compose is not installed: compose.yaml checked with PyYAML only)"
fi
log "compose.yaml: parses, mounts exist, 3 coordinators (node_id = ordinal + 1), 3 mariadb, one agent each: ok"
log "all container checks passed"
