#!/usr/bin/env bash
# Make sure the nft command (package nftables) is installed: primus-agent's
# escalation = "block_port" drops mysqld's TCP port with it, and its test runs it
# for real. Idempotent: does nothing when nft is there. Needs root to install.
set -euo pipefail

log() { echo "ensure-nft: $*"; }

if command -v nft >/dev/null 2>&1 || [ -x /usr/sbin/nft ]; then
    log "nft already installed: $(command -v nft || echo /usr/sbin/nft)"
    exit 0
fi
# shellcheck source=scripts/apt-install.sh
source "$(dirname "$0")/apt-install.sh"
apt_install ensure-nft "primus-agent's block_port escalation" nftables
command -v nft >/dev/null 2>&1 || [ -x /usr/sbin/nft ] || { log "nft still not found after install" >&2; exit 1; }
log "installed: $(nft --version)"
