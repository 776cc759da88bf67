#!/usr/bin/env bash
# Every test of the project, as CI runs it: formatting, lints, unit tests, and the
# integration tests on real primusd processes and real MariaDB servers.
# Installs what it needs (MariaDB via apt when mariadbd is missing; protoc is vendored).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "MariaDB"
bash scripts/ensure-mariadb.sh

step "nftables (the agent's block_port escalation is tested for real)"
bash scripts/ensure-nft.sh

step "Chromium + chromedriver (the web page is tested in a real headless browser)"
bash scripts/ensure-chromium.sh

if ! cargo nextest --version >/dev/null 2>&1; then
    step "installing cargo-nextest"
    cargo install cargo-nextest --locked
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "Prometheus alerting rules: promtool check rules + promtool test rules (scripts/test-alerts.sh)"
bash scripts/test-alerts.sh

step "Kubernetes manifests: kubernetes-validate --strict + each pod's start-up through primusd --check-config (scripts/test-k8s.sh)"
bash scripts/test-k8s.sh
step "container files: entrypoint, healthcheck, Containerfile, compose.yaml (scripts/test-container.sh; builds no image)"
bash scripts/test-container.sh

step "primus-failover is pure: no tokio, no mysql_async among its dependencies"
# The decisions must not be able to do I/O (issue 13). primus-failover uses
# primus-mysql without its `client` feature and primus-types without `raft`
# (openraft brings tokio); a dependency that pulls either back in fails here.
tree="$(cargo tree -p primus-failover -e normal --prefix none --locked)"
impure="$(printf '%s\n' "$tree" | grep -E '^(tokio|mysql_async) v' | sed 's/ (\*)$//' | sort -u || true)"
if [ -n "$impure" ]; then
    {
        echo "FAILED: primus-failover must not depend on tokio or mysql_async, but \`cargo tree -p primus-failover -e normal\` lists:"
        printf '%s\n' "$impure" | sed 's/^/  /'
        echo "Which dependency brings it: cargo tree -p primus-failover -e normal -i tokio (or -i mysql_async)."
        echo "Depend on primus-mysql with default-features = false and on primus-types with default-features = false."
    } >&2
    exit 1
fi
# Its own build (with those features off) must be warning-free too: the workspace
# build above compiles it with every feature the other crates turn on.
cargo clippy -p primus-failover --all-targets --locked -- -D warnings

step "build binaries (the integration tests start them as real processes)"
cargo build --workspace --bins --locked

step "simulation: 1,000 seeded fault schedules against the real decision code (scripts/sim.sh)"
sim_rc=0
bash scripts/sim.sh --schedules 1000 || sim_rc=$?
step "simulation: 40 schedules run twice, which must agree event for event"
bash scripts/sim.sh --schedules 40 --first-seed 5001 --check-determinism || sim_rc=$?

step "nemesis: 3 short random fault schedules on real processes in network namespaces (scripts/nemesis.sh)"
nemesis_rc=0
bash scripts/nemesis.sh --schedules 3 --seconds 20 || nemesis_rc=$?

step "tests"
rc=0
cargo nextest run --workspace --locked --no-fail-fast "$@" || rc=$?
if [ "$rc" -ne 0 ]; then
    junit=target/nextest/default/junit.xml
    [ -f "$junit" ] || junit="${CARGO_TARGET_DIR:-target}/nextest/default/junit.xml"
    step "failing tests: the end of each one's output (full output above)"
    # On stdout and on stderr (whichever a CI log keeps), through the shell's own
    # descriptors: reopening /dev/stderr would overwrite a log both streams share.
    summary="$(python3 scripts/junit-failures.py "$junit" 2>&1 || true)"
    printf '%s\n' "$summary"
    printf '%s\n' "$summary" >&2
fi
if [ "$nemesis_rc" -ne 0 ]; then
    echo "the nemesis found invariant violations on real processes (see its VIOLATION lines, kept logs and replay commands above)" >&2
    [ "$rc" -ne 0 ] || rc=$nemesis_rc
fi
if [ "$sim_rc" -ne 0 ]; then
    echo "the simulation found invariant violations (see its FAILED lines and replay commands above)" >&2
    [ "$rc" -ne 0 ] || rc=$sim_rc
fi
exit "$rc"
