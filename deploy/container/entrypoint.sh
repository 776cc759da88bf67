#!/bin/sh
# Entrypoint of the primus image, installed as /usr/local/bin/primus-entrypoint.
#
# 1. When PRIMUS_NODE_ID is unset and the hostname ends in -N (a StatefulSet
#    ordinal: primus-0, primus-1, ...), export PRIMUS_NODE_ID=N+1: node ids start
#    at 1. An explicit PRIMUS_NODE_ID is kept as it is. Otherwise nothing is
#    exported and node_id comes from the config file.
# 2. Exec the arguments: default `primusd --config /etc/primus/primusd.toml`;
#    arguments that start with `-` are passed to that primusd command.
#
# PRIMUS_NODE_ID (like every PRIMUS_<SECTION>__<KEY>) is read by primusd itself;
# this script only derives it. It runs under tini (PID 1) in the image.
set -eu

log() { printf 'primus-entrypoint: %s\n' "$*" >&2; }

if [ -z "${PRIMUS_NODE_ID:-}" ]; then
    # Docker, podman and Kubernetes put HOSTNAME in the environment.
    # shellcheck disable=SC3028
    host="${HOSTNAME:-}"
    if [ -z "$host" ]; then
        host="$(cat /etc/hostname 2>/dev/null || true)"
    fi
    ordinal=""
    case "$host" in
        *-*) ordinal="${host##*-}" ;;
    esac
    case "$ordinal" in
        "" | *[!0-9]*)
            log "PRIMUS_NODE_ID is unset and hostname '$host' does not end in -N (a StatefulSet ordinal): node_id comes from the config file"
            ;;
        ??????????*)
            log "hostname '$host': ordinal '$ordinal' is too long; set PRIMUS_NODE_ID"
            exit 2
            ;;
        *)
            # Leading zeros off: sh arithmetic reads 08 as (bad) octal.
            n="$ordinal"
            while [ "${#n}" -gt 1 ] && [ "${n#0}" != "$n" ]; do n="${n#0}"; done
            PRIMUS_NODE_ID=$((n + 1))
            export PRIMUS_NODE_ID
            log "PRIMUS_NODE_ID=$PRIMUS_NODE_ID (hostname '$host', ordinal $ordinal)"
            ;;
    esac
fi

if [ "$#" -eq 0 ]; then
    set -- primusd --config /etc/primus/primusd.toml
else
    case "$1" in
        -*) set -- primusd --config /etc/primus/primusd.toml "$@" ;;
    esac
fi
exec "$@"
