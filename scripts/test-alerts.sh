#!/usr/bin/env bash
# Check and unit-test the Prometheus alerting rules (deploy/prometheus/alerts.yml) with
# promtool: `promtool check rules` (syntax, PromQL) and `promtool test rules`
# (deploy/prometheus/alerts_test.yml: every rule firing and not firing on made-up series).
# Installs Debian's `prometheus` package (which ships promtool) when promtool is missing;
# the service the package would start is not wanted, so it is kept from starting.
# Fails when promtool is missing and cannot be installed: this is not a skip.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "test-alerts: $*"; }

rules=deploy/prometheus/alerts.yml
tests=deploy/prometheus/alerts_test.yml

stop_system_service() {
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
        systemctl stop prometheus >/dev/null 2>&1 && log "stopped systemd service prometheus" || true
        systemctl disable prometheus >/dev/null 2>&1 && log "disabled systemd service prometheus" || true
    fi
    if command -v service >/dev/null 2>&1 && service prometheus status >/dev/null 2>&1; then
        service prometheus stop >/dev/null 2>&1 && log "stopped service prometheus" || true
    fi
}

if ! command -v promtool >/dev/null 2>&1; then
    if [ "$(id -u)" -ne 0 ]; then
        log "promtool is missing and this is not root: run as root, or: sudo apt-get install -y prometheus" >&2
        exit 1
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        log "promtool is missing and there is no apt-get: install promtool (Prometheus 2.x) and run again" >&2
        exit 1
    fi
    log "installing Debian's prometheus package (for promtool) with apt-get"
    # Keep the package from starting the service where policy-rc.d is honoured.
    policy=/usr/sbin/policy-rc.d
    created_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod +x "$policy"
        created_policy=1
    fi
    cleanup_policy() {
        if [ "$created_policy" = 1 ]; then rm -f "$policy"; fi
    }
    trap cleanup_policy EXIT
    if ! apt-get update || ! DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus; then
        log "FAILED: apt-get could not install prometheus (for promtool); install promtool and run again" >&2
        exit 1
    fi
    stop_system_service
    if ! command -v promtool >/dev/null 2>&1; then
        log "FAILED: promtool still not found after installing prometheus" >&2
        exit 1
    fi
fi
log "$(promtool --version 2>&1 | head -1)"

promtool check rules "$rules"
promtool test rules "$tests"
log "ok: $rules checked, $tests passed"
