#!/usr/bin/env bash
# Make sure MariaDB server binaries (mariadbd, mariadb-install-db) and the client are
# installed, for primus-testkit's sandboxes. Idempotent: does nothing when they are there.
#
# The testkit starts its own mariadbd processes in temporary directories; the system
# service the Debian package would start is not wanted, so it is stopped and disabled.
set -euo pipefail

log() { echo "ensure-mariadb: $*"; }
# shellcheck source=scripts/apt-install.sh
source "$(dirname "$0")/apt-install.sh"

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
    stop_service ensure-mariadb mariadb
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

apt_install ensure-mariadb "primus-testkit's sandboxes" mariadb-server mariadb-client

stop_system_service

if ! have_server; then
    log "mariadbd still not found after install" >&2
    exit 1
fi
log "installed: $(/usr/sbin/mariadbd --version 2>/dev/null || mariadbd --version)"
