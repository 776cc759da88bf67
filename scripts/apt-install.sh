#!/usr/bin/env bash
# Shared by the scripts/ensure-*.sh and scripts/test-*.sh installers: install Debian
# packages with apt-get, keeping any service a package ships from starting.
#
#   source scripts/apt-install.sh
#   apt_install [--no-install-recommends] LOG_PREFIX WHAT_FOR PACKAGE...
#
# Fails (returns 1, with a message naming the packages and the manual command) when
# this is not root, when there is no apt-get, or when apt-get fails: a missing tool
# fails the run, it is never a skip. Callers stop the package's service afterwards if
# one may still have started (where policy-rc.d is not honoured).

apt_install() {
    local opts=()
    if [ "${1:-}" = --no-install-recommends ]; then
        opts+=("$1")
        shift
    fi
    local prefix="$1" what_for="$2"
    shift 2
    if [ "$(id -u)" -ne 0 ]; then
        echo "$prefix: $what_for needs $* and this is not root: run as root, or: sudo apt-get install -y $*" >&2
        return 1
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "$prefix: $what_for needs $* and there is no apt-get: install them and run again" >&2
        return 1
    fi
    echo "$prefix: installing $* with apt-get ($what_for)"
    # Keep the packages from starting their services where policy-rc.d is honoured.
    local policy=/usr/sbin/policy-rc.d created_policy=0 rc=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod +x "$policy"
        created_policy=1
    fi
    if ! apt-get update || ! DEBIAN_FRONTEND=noninteractive apt-get install -y "${opts[@]}" "$@"; then
        echo "$prefix: FAILED: apt-get could not install $*; install them and run again" >&2
        rc=1
    fi
    if [ "$created_policy" = 1 ]; then rm -f "$policy"; fi
    return "$rc"
}

# Stop and disable the system service NAME a package may have started anyway (tests
# start their own processes; a system copy would hold ports and files).
stop_service() {
    local prefix="$1" name="$2"
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
        if systemctl stop "$name" >/dev/null 2>&1; then echo "$prefix: stopped systemd service $name"; fi
        if systemctl disable "$name" >/dev/null 2>&1; then echo "$prefix: disabled systemd service $name"; fi
    fi
    if command -v service >/dev/null 2>&1 && service "$name" status >/dev/null 2>&1; then
        if service "$name" stop >/dev/null 2>&1; then echo "$prefix: stopped service $name"; fi
    fi
}
