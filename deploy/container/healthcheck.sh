#!/bin/bash
# HEALTHCHECK of the primus image, installed as /usr/local/bin/primus-healthcheck:
# exit 0 when primusd's `GET /health` answers 200 (this node is in a group with a
# leader; docs/http.md), 1 otherwise. Bash's /dev/tcp speaks plain HTTP without
# curl or wget in the image. With [tls] the endpoint serves HTTPS only: override
# the HEALTHCHECK then (e.g. `primusctl --endpoints … status --stale`).
#   PRIMUS_HEALTH_ADDR   IP:PORT of http_listen as reached from inside (default 127.0.0.1:7201)
#   PRIMUS_HEALTHCHECK   "off": always healthy (agent containers from this image)
set -u
[ "${PRIMUS_HEALTHCHECK:-on}" = off ] && exit 0
addr="${PRIMUS_HEALTH_ADDR:-127.0.0.1:7201}"
host="${addr%:*}"
port="${addr##*:}"
host="${host#[}"
host="${host%]}"
if ! exec 3<>"/dev/tcp/$host/$port"; then
    echo "primus-healthcheck: cannot connect to $addr"
    exit 1
fi
printf 'GET /health HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n' "$addr" >&3
if ! IFS= read -r -t "${PRIMUS_HEALTH_TIMEOUT_S:-3}" status <&3; then
    echo "primus-healthcheck: no answer from $addr within ${PRIMUS_HEALTH_TIMEOUT_S:-3} s"
    exit 1
fi
status="${status%$'\r'}"
body=""
# The body is one short JSON object; print it to say why.
while IFS= read -r -t 1 line <&3; do body="$line"; done
exec 3<&-
case "$status" in
    "HTTP/1."?" 200"*) echo "$status $body"; exit 0 ;;
esac
echo "primus-healthcheck: GET http://$addr/health: $status $body"
exit 1
