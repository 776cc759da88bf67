#!/usr/bin/env bash
# Deterministic simulation of primus (crates/primus-sim): N coordinators running the real
# engine, monitor, state machine and lease code over simulated MySQL/MariaDB servers,
# networks and clocks, under seeded random fault schedules; invariants checked every
# 10 simulated ms. No MariaDB, no root, no network needed.
#
#   scripts/sim.sh                          # 1,000 schedules (seeds 1..=1000)
#   scripts/sim.sh --schedules 20000 --first-seed 1000001
#   scripts/sim.sh --minutes 10             # as many as fit in 10 minutes
#   scripts/sim.sh --seed 42 --trace        # replay one seed, event for event, with its trace
#   scripts/sim.sh --seed 42 --shrink       # and shrink a failing schedule
#   scripts/sim.sh --seed 42 --schedule '@100 crash db1; @3000 restart db1'
#   scripts/sim.sh --help                   # every option
#
# Builds with the `sim` profile (optimised; see Cargo.toml) unless SIM_PROFILE says otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
profile="${SIM_PROFILE:-sim}"
cargo build --locked --profile "$profile" -p primus-sim --bin primus-sim >&2
dir="$profile"
[ "$profile" = dev ] && dir=debug
args=("$@")
if [ ${#args[@]} -eq 0 ]; then
    args=(--schedules 1000)
fi
exec "${CARGO_TARGET_DIR:-target}/$dir/primus-sim" "${args[@]}"
