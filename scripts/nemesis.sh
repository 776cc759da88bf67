#!/usr/bin/env bash
# Randomized faults on real processes (crates/primus-nemesis): three MariaDB servers with
# their primus-agents, three (or five) primusd and two application clients, each in its
# own network namespace on a bridge; seeded fault schedules (kill -9, SIGSTOP, silent and
# one-way partitions, clock steps, operator actions); every write the clients tried is
# recorded and the history is judged by a checker after each schedule. Needs root.
#
#   scripts/nemesis.sh                                  # 3 schedules of 20 s (seeds 1..=3)
#   scripts/nemesis.sh --schedules 100 --seconds 30 --jobs 2 --report /tmp/nemesis.md
#   scripts/nemesis.sh --seed 17 --seconds 30           # replay one schedule
#   scripts/nemesis.sh --coordinators 5                 # five coordinators
#   scripts/nemesis.sh --help                           # every option
#
# A failing schedule keeps its logs, history and result under target/nemesis/seed-N/
# and prints the command that replays it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-mariadb.sh >&2
bash scripts/ensure-nft.sh >&2
bash scripts/ensure-faketime.sh >&2
cargo build --locked -p primus-daemon -p primus-agent -p primus-nemesis --bins >&2
args=("$@")
if [ ${#args[@]} -eq 0 ]; then
    args=(--schedules 3 --seconds 20)
fi
exec "${CARGO_TARGET_DIR:-target}/debug/primus-nemesis" run "${args[@]}"
