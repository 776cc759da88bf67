#!/usr/bin/env bash
# Every test of the project, as CI runs it: formatting, lints, unit tests, and the
# integration tests on real primusd processes and real MariaDB servers.
# Installs what it needs (MariaDB via apt when mariadbd is missing; protoc is vendored).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "MariaDB"
bash scripts/ensure-mariadb.sh

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
cargo nextest run --workspace --locked --no-fail-fast "$@"
