#!/usr/bin/env bash
# The main job on a local default: a MariaDB replication sandbox (1 primary, 2
# replicas, GTID) watched by 3 primusd coordinators, left running in the background.
#   scripts/sandbox.sh          start it (or show it, if it already runs)
#   scripts/sandbox.sh status   show processes and topology
#   scripts/sandbox.sh down     stop everything and delete .sandbox/
# Installs MariaDB if mariadbd is missing; protoc is vendored.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-mariadb.sh
echo "building primus (release)…"
cargo build --release --locked --bins -q
bin="${CARGO_TARGET_DIR:-target}/release"
exec "$bin/primus-sandbox" --dir "${PRIMUS_SANDBOX_DIR:-$PWD/.sandbox}" "${@:-up}"
