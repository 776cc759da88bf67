#!/usr/bin/env bash
# Rolling-upgrade rehearsal (docs/operations.md, "Upgrading"), outside CI: a 3-node
# group of the primusd built at an older commit (default 3315362, the release before
# the feature gate) watching a MariaDB sandbox is upgraded node by node to this
# working tree's primusd, with switchovers and kill -9 failovers before, during and
# after, under an application writer; it checks that nothing acknowledged is lost,
# that one server is writable, that no node met an entry it could not decode, and
# that the group's feature level rises only once every node is upgraded.
#   scripts/upgrade-test.sh                 # from 3315362
#   OLD_COMMIT=abc1234 scripts/upgrade-test.sh
#   scripts/upgrade-test.sh --no-gate       # the counterfactual: the new nodes run
#                                           # without the feature gate (must fail)
# The old release is built once (release profile) in a git worktree under /var/tmp.
set -euo pipefail
cd "$(dirname "$0")/.."
old_commit="$(git rev-parse --verify "${OLD_COMMIT:-3315362}^{commit}")"
short="${old_commit:0:7}"
old_src="${OLD_SRC:-/var/tmp/primus-$short}"
old_target="${OLD_TARGET:-/var/tmp/primus-old-target}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/primus-target}"

bash scripts/ensure-mariadb.sh

if [ "$(cat "$old_target/built-from" 2>/dev/null || true)" != "$old_commit" ] || [ ! -x "$old_target/release/primusd" ]; then
    if [ ! -e "$old_src/Cargo.toml" ]; then
        echo "==> git worktree for $short at $old_src"
        git worktree add --force --detach "$old_src" "$old_commit" >/dev/null
    fi
    echo "==> building primusd at $short (release; once)"
    (cd "$old_src" && git checkout -q --detach "$old_commit" && CARGO_TARGET_DIR="$old_target" cargo build --release --locked --bins)
    echo "$old_commit" > "$old_target/built-from"
fi

echo "==> building this tree's binaries and the rehearsal"
cargo build --workspace --bins --locked
cargo build -p primus-integration-tests --example upgrade --locked

echo "==> rolling upgrade $short -> $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . 2>/dev/null || echo '+changes')"
exec "$CARGO_TARGET_DIR/debug/examples/upgrade" --old-bin "$old_target/release" --new-bin "$CARGO_TARGET_DIR/debug" "$@"
