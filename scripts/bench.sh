#!/usr/bin/env bash
# Run benchmarks with release binaries. Usage: scripts/bench.sh [BENCH_NAME...]
# With no name, runs every benchmark. Each prints its figures on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-mariadb.sh >/dev/null
cargo build --release --workspace --bins --locked
if [ $# -eq 0 ]; then
    cargo bench -p primus-benches --locked
else
    for b in "$@"; do cargo bench -p primus-benches --locked --bench "$b"; done
fi
