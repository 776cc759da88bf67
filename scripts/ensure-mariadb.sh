#!/usr/bin/env bash
# Make sure MariaDB server binaries (mariadbd, mariadb-install-db) and the client are
# installed, for primus-testkit's sandboxes. Idempotent: does nothing when they are there.
#
# The testkit starts its own mariadbd processes in temporary directories; the system
# service the Debian package would start is not wanted, so it is stopped and disabled.
set -euo pipefail

log() { echo "ensure-mariadb: $*"; }

have_server() {
    command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ] || [ -x /usr/libexec/mariadbd ]
}
have_install_db() {
    command -v mariadb-install-db >/dev/null 2>&1 || [ -x /usr/bin/mariadb-install-db ]
}
have_client() {
    command -v mariadb >/dev/null 2>&1
}

stop_system_service() {
    # Whatever the package did, leave no system mariadb running.
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
        systemctl stop mariadb >/dev/null 2>&1 && log "stopped systemd service mariadb" || true
        systemctl disable mariadb >/dev/null 2>&1 && log "disabled systemd service mariadb" || true
    fi
    if command -v service >/dev/null 2>&1; then
        if service mariadb status >/dev/null 2>&1; then
            service mariadb stop >/dev/null 2>&1 && log "stopped service mariadb" || true
        fi
    fi
    if command -v update-rc.d >/dev/null 2>&1 && [ -e /etc/init.d/mariadb ]; then
        update-rc.d mariadb disable >/dev/null 2>&1 || true
    fi
    # A server started by the package's postinst outside an init system: its pid file.
    for pidfile in /run/mysqld/mysqld.pid /var/run/mysqld/mysqld.pid; do
        if [ -s "$pidfile" ]; then
            pid="$(cat "$pidfile")"
            if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
                kill "$pid" 2>/dev/null || true
                for _ in $(seq 1 50); do
                    kill -0 "$pid" 2>/dev/null || break
                    sleep 0.1
                done
                kill -9 "$pid" 2>/dev/null || true
                log "stopped system mariadbd (pid $pid from $pidfile)"
            fi
        fi
    done
}

if have_server && have_install_db && have_client; then
    log "mariadb server and client already installed: $(command -v mariadbd || echo /usr/sbin/mariadbd)"
    stop_system_service
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    log "not root: run as root (or: sudo apt-get install -y mariadb-server mariadb-client)" >&2
    exit 1
fi

log "installing mariadb-server and mariadb-client with apt-get"
# Keep the package from starting the service where policy-rc.d is honoured (Debian/Ubuntu).
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

apt-get update
DEBIAN_FRONTEND=noninteractive apt-get install -y mariadb-server mariadb-client

stop_system_service

if ! have_server; then
    log "mariadbd still not found after install" >&2
    exit 1
fi
log "installed: $(/usr/sbin/mariadbd --version 2>/dev/null || mariadbd --version)"
