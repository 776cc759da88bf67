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
# shellcheck source=scripts/apt-install.sh
source "$(dirname "$0")/apt-install.sh"
apt_install ensure-faketime "the nemesis's clock steps" libfaketime
[ -e "$lib" ] || { log "$lib still not found after install" >&2; exit 1; }
log "installed: $lib"
