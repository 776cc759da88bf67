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

if ! command -v promtool >/dev/null 2>&1; then
    # shellcheck source=scripts/apt-install.sh
    source scripts/apt-install.sh
    apt_install --no-install-recommends test-alerts "promtool (Prometheus 2.x)" prometheus
    stop_service test-alerts prometheus
    if ! command -v promtool >/dev/null 2>&1; then
        log "FAILED: promtool still not found after installing prometheus" >&2
        exit 1
    fi
fi
log "$(promtool --version 2>&1 | head -1)"

promtool check rules "$rules"
promtool test rules "$tests"
log "ok: $rules checked, $tests passed"
