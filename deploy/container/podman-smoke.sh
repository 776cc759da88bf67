#!/usr/bin/env bash
# What deploy/compose/compose.yaml does, with plain `podman` commands: for a host
# with podman but no `docker compose` (podman-compose 1.0.3, Debian 12's, turns
# `network_mode: service:X` into `--network service:X` and drops `pid:`, so it
# cannot run the agents). Uses the compose directory's config files unchanged.
#   deploy/container/podman-smoke.sh up      3 coordinators, 3 MariaDB (GTID), agents, cluster "sandbox"
#   deploy/container/podman-smoke.sh down    remove every container, pod, volume and the network
# Needs the images localhost/primus:local and docker.io/library/mariadb:10.11
# (see deploy/container/README.md). Each mariadb runs in a pod with its agent,
# sharing network and PID namespaces, as the compose file's network_mode/pid do.
#   AGENT_USER   uid:gid of mysql in the mariadb image (999:999 in the official one)
set -euo pipefail
cd "$(dirname "$0")/../compose"
net=primus-smoke
image=localhost/primus:local
mariadb=docker.io/library/mariadb:10.11
agent_user="${AGENT_USER:-999:999}"
endpoints=primus-0:7101,primus-1:7101,primus-2:7101

log() { printf '\n==> %s\n' "$*"; }
ctl() { podman exec primus-0 primusctl --endpoints "$endpoints" "$@"; }

down() {
    for n in 1 2 3; do podman pod rm -f "mariadb$n" >/dev/null 2>&1 || true; done
    for i in 0 1 2; do podman rm -f "primus-$i" >/dev/null 2>&1 || true; done
    for v in primus-{0,1,2}-data mariadb{1,2,3}-{data,run}; do podman volume rm -f "smoke-$v" >/dev/null 2>&1 || true; done
    podman network rm -f "$net" >/dev/null 2>&1 || true
}

up() {
    podman network exists "$net" || podman network create "$net" >/dev/null
    log "3 coordinators (hostnames primus-0..2: the entrypoint exports PRIMUS_NODE_ID=1..3)"
    for i in 0 1 2; do
        podman run -d --name "primus-$i" --hostname "primus-$i" --network "$net" \
            -p "127.0.0.1:710$((i + 1)):7101" -p "127.0.0.1:720$((i + 1)):7201" \
            -v "$PWD/primusd/primus-$i.toml:/etc/primus/primusd.toml:ro" \
            -v "$PWD/secrets:/etc/primus/secrets:ro" \
            -v "smoke-primus-$i-data:/var/lib/primus" "$image" >/dev/null
    done
    for _ in $(seq 60); do ctl --timeout 2s status >/dev/null 2>&1 && break; sleep 1; done
    ctl status
    for i in 0 1 2; do
        podman healthcheck run "primus-$i" >/dev/null && echo "primus-$i: HEALTHCHECK healthy (GET /health 200)"
    done

    log "MariaDB 10.11: mariadb1 primary, mariadb2/3 GTID replicas (mariadb/initdb/)"
    for n in 1 2 3; do
        if [ "$n" = 1 ]; then ro=OFF; from=(); else ro=ON; from=(-e PRIMUS_REPLICATE_FROM=mariadb1); fi
        podman pod create --name "mariadb$n" --hostname "mariadb$n" --network "$net" \
            --network-alias "mariadb$n" --share net,ipc,uts,pid -p "127.0.0.1:3306$n:3306" >/dev/null
        podman run -d --pod "mariadb$n" --name "mariadb$n-db" \
            -e MARIADB_ROOT_PASSWORD=root-pass -e MARIADB_INITDB_SKIP_TZINFO=1 "${from[@]}" \
            -v "$PWD/mariadb/initdb:/docker-entrypoint-initdb.d:ro" \
            -v "smoke-mariadb$n-data:/var/lib/mysql" -v "smoke-mariadb$n-run:/run/mysqld" \
            "$mariadb" --server-id="$n" --report-host="mariadb$n" --read-only="$ro" \
            --log-bin=mariadb-bin --log-slave-updates=ON --binlog-format=ROW --gtid-strict-mode=ON \
            --gtid-domain-id=0 --report-port=3306 --skip-name-resolve --pid-file=/run/mysqld/mysqld.pid \
            --socket=/run/mysqld/mysqld.sock >/dev/null
    done
    for n in 1 2 3; do
        for _ in $(seq 90); do
            podman exec "mariadb$n-db" mariadb -uroot -proot-pass -h127.0.0.1 -e 'SELECT 1' >/dev/null 2>&1 && break
            sleep 1
        done
    done
    sleep 2
    for n in 2 3; do
        podman exec "mariadb$n-db" mariadb -uroot -proot-pass -h127.0.0.1 -e 'SHOW SLAVE STATUS\G' |
            grep -E 'Slave_(IO|SQL)_Running:|Using_Gtid|Gtid_IO_Pos' | sed "s/^ */mariadb$n: /"
    done

    log "register the cluster (as compose.yaml's register job does)"
    # The first probes of a just-started server can time out here (seen: "timed out
    # after 1001 ms during connect", then fine): retry, as compose's restart: on-failure does.
    for _ in $(seq 30); do
        ctl cluster list | grep -qw sandbox && break
        ctl cluster add sandbox --seed mariadb1:3306 && break
        sleep 2
    done

    log "one primus-agent per mariadbd, in its pod (uid $agent_user)"
    for n in 1 2 3; do
        podman run -d --pod "mariadb$n" --name "agent-mariadb$n" --user "$agent_user" \
            -e PRIMUS_HEALTHCHECK=off --tmpfs /run/primus-agent:mode=1777 \
            -v "$PWD/agent/mariadb$n.toml:/etc/primus/primus-agent.toml:ro" \
            -v "smoke-mariadb$n-run:/run/mysqld" \
            "$image" primus-agent --config /etc/primus/primus-agent.toml >/dev/null
    done
    sleep 4
    ctl topology sandbox
}

case "${1:-up}" in
    up) up ;;
    down) down ;;
    *)
        echo "usage: $0 [up|down]" >&2
        exit 2
        ;;
esac
