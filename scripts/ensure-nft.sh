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
if [ "$(id -u)" -ne 0 ]; then
    log "not root: run as root (or: sudo apt-get install -y nftables)" >&2
    exit 1
fi
log "installing nftables with apt-get"
apt-get update
DEBIAN_FRONTEND=noninteractive apt-get install -y nftables
command -v nft >/dev/null 2>&1 || [ -x /usr/sbin/nft ] || { log "nft still not found after install" >&2; exit 1; }
log "installed: $(nft --version)"
