#!/usr/bin/env bash
# Make sure libfaketime is installed: the nemesis (scripts/nemesis.sh) steps the wall
# clock of one primusd or primus-agent at a time with it (network namespaces share the
# kernel's clock). Idempotent: does nothing when it is there. Needs root to install.
set -euo pipefail

lib=/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1
log() { echo "ensure-faketime: $*"; }

if [ -e "$lib" ]; then
    log "libfaketime already installed: $lib"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    log "not root: run as root (or: sudo apt-get install -y libfaketime)" >&2
    exit 1
fi
log "installing libfaketime with apt-get"
apt-get update
DEBIAN_FRONTEND=noninteractive apt-get install -y libfaketime
[ -e "$lib" ] || { log "$lib still not found after install" >&2; exit 1; }
log "installed: $lib"
