#!/usr/bin/env bash
# Make sure Debian's Chromium and its WebDriver (chromedriver) are installed: the
# operator page's tests (tests/web.rs) look at it in a real headless browser.
# Idempotent: does nothing when both are there. Needs root to install.
set -euo pipefail

log() { echo "ensure-chromium: $*"; }

if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
    log "already installed: $(/usr/bin/chromium --version 2>/dev/null || echo chromium), $(/usr/bin/chromedriver --version 2>/dev/null | head -1)"
    exit 0
fi
# shellcheck source=scripts/apt-install.sh
source "$(dirname "$0")/apt-install.sh"
apt_install ensure-chromium "the web page's browser tests" chromium chromium-driver
[ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] || {
    log "chromium or chromedriver still missing after install (apt-get install -y chromium chromium-driver)" >&2
    exit 1
}
log "installed: $(/usr/bin/chromium --version 2>/dev/null), $(/usr/bin/chromedriver --version 2>/dev/null | head -1)"
