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

if ! cargo nextest --version >/dev/null 2>&1; then
    step "installing cargo-nextest"
    cargo install cargo-nextest --locked
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "build binaries (the integration tests start them as real processes)"
cargo build --workspace --bins --locked

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
exit "$rc"
