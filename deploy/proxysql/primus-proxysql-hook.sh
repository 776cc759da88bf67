#!/usr/bin/env bash
# primus-proxysql-hook.sh: keep ProxySQL's hostgroups in line with primus.
#
# Run by primusd as a post_failover and post_switchover hook (see README.md):
#
#   [hooks]
#   post_failover   = ["/usr/local/bin/primus-proxysql-hook.sh"]
#   post_switchover = ["/usr/local/bin/primus-proxysql-hook.sh"]
#
# It reads what happened from the PRIMUS_* environment primusd sets for every hook
# (PRIMUS_HOOK, PRIMUS_FAILURE_CLUSTER, PRIMUS_FAILED_HOST/PORT,
# PRIMUS_SUCCESSOR_HOST/PORT, PRIMUS_EPOCH), and on every ProxySQL listed in its
# config, through the admin interface:
#
#   * the new primary becomes the only server of the writer hostgroup, and
#     leaves the reader hostgroup;
#   * after a switchover the old primary (now a replica) joins the readers;
#     after a failover it is removed from both hostgroups (primus demoted it:
#     its data may have diverged, it must not serve reads either);
#   * LOAD MYSQL SERVERS TO RUNTIME (ProxySQL closes connections to servers it
#     no longer has) and SAVE MYSQL SERVERS TO DISK.
#
# Configuration: /etc/primus/proxysql-hook.conf (or $PRIMUS_PROXYSQL_CONF), a
# shell file:
#
#   PROXYSQL_ADMINS="10.1.0.21:6032 10.2.0.21:6032"   # every ProxySQL to update
#   PROXYSQL_USER="radmin"
#   PROXYSQL_PASSWORD_FILE="/etc/primus/proxysql.password"
#   PROXYSQL_TIMEOUT_S=3                              # connect timeout per ProxySQL
#   # per cluster: "WRITER_HOSTGROUP READER_HOSTGROUP"
#   HOSTGROUPS_c="10 20"
#   HOSTGROUPS_orders="30 40"                         # cluster names: '-' and '.' become '_'
#
# PROXYSQL_DRY_RUN=1 prints the SQL instead of running it.
#
# Exit status: 0 when every ProxySQL was updated, 1 otherwise (primusd logs a
# failed post hook; the failover itself is already done). Every ProxySQL is tried
# even when one fails. Idempotent: running it twice changes nothing more.

set -euo pipefail

log() { printf 'primus-proxysql-hook: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

conf="${PRIMUS_PROXYSQL_CONF:-/etc/primus/proxysql-hook.conf}"
if [[ -r "$conf" ]]; then
    # shellcheck source=/dev/null
    . "$conf"
elif [[ "${PROXYSQL_DRY_RUN:-0}" != 1 ]]; then
    die "cannot read $conf"
fi

hook="${PRIMUS_HOOK:-}"
cluster="${PRIMUS_FAILURE_CLUSTER:-}"
old_host="${PRIMUS_FAILED_HOST:-}"
old_port="${PRIMUS_FAILED_PORT:-}"
new_host="${PRIMUS_SUCCESSOR_HOST:-}"
new_port="${PRIMUS_SUCCESSOR_PORT:-}"

case "$hook" in
    post_failover | post_switchover) ;;
    *) die "run me as a post_failover or post_switchover hook (PRIMUS_HOOK=${hook:-unset})" ;;
esac

# Values end up in SQL: accept only what primus itself accepts as instance names.
host_ok() { [[ "$1" =~ ^[A-Za-z0-9._:-]{1,255}$ ]]; }
port_ok() { [[ "$1" =~ ^[0-9]{1,5}$ ]] && ((10#$1 >= 1 && 10#$1 <= 65535)); }
if ! host_ok "$new_host" || ! port_ok "$new_port"; then die "bad successor ${new_host}:${new_port}"; fi
if ! host_ok "$old_host" || ! port_ok "$old_port"; then die "bad failed instance ${old_host}:${old_port}"; fi
if ! [[ "$cluster" =~ ^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$ ]]; then die "bad cluster name ${cluster}"; fi

var="HOSTGROUPS_${cluster//[.-]/_}"
groups="${!var:-}"
if [[ -z "$groups" ]]; then
    log "no $var in $conf: cluster $cluster is not behind ProxySQL; nothing to do"
    exit 0
fi
read -r writer reader <<<"$groups"
[[ "$writer" =~ ^[0-9]+$ && "$reader" =~ ^[0-9]+$ ]] || die "$var must be \"WRITER READER\" hostgroup numbers"

sql="DELETE FROM mysql_servers WHERE hostgroup_id = $writer AND NOT (hostname = '$new_host' AND port = $new_port);
INSERT OR IGNORE INTO mysql_servers (hostgroup_id, hostname, port) VALUES ($writer, '$new_host', $new_port);
DELETE FROM mysql_servers WHERE hostgroup_id = $reader AND hostname = '$new_host' AND port = $new_port;"
if [[ "$hook" == post_switchover ]]; then
    sql+="
INSERT OR IGNORE INTO mysql_servers (hostgroup_id, hostname, port) VALUES ($reader, '$old_host', $old_port);"
else
    sql+="
DELETE FROM mysql_servers WHERE hostname = '$old_host' AND port = $old_port AND hostgroup_id IN ($writer, $reader);"
fi
sql+="
LOAD MYSQL SERVERS TO RUNTIME;
SAVE MYSQL SERVERS TO DISK;"

if [[ "${PROXYSQL_DRY_RUN:-0}" == 1 ]]; then
    printf '%s\n' "$sql"
    exit 0
fi

[[ -n "${PROXYSQL_ADMINS:-}" ]] || die "PROXYSQL_ADMINS is empty in $conf"
[[ -r "${PROXYSQL_PASSWORD_FILE:-}" ]] || die "cannot read PROXYSQL_PASSWORD_FILE (${PROXYSQL_PASSWORD_FILE:-unset})"
client="$(command -v mysql || command -v mariadb)" || die "no mysql/mariadb client installed"

# The password goes through a defaults file readable only by us, never argv.
defaults="$(mktemp)"
trap 'rm -f "$defaults"' EXIT
chmod 600 "$defaults"
{
    printf '[client]\nuser=%s\npassword=%s\n' "${PROXYSQL_USER:-admin}" "$(head -n1 "$PROXYSQL_PASSWORD_FILE")"
} >"$defaults"

failed=0
for admin in $PROXYSQL_ADMINS; do
    host="${admin%:*}" port="${admin##*:}"
    if "$client" --defaults-extra-file="$defaults" --protocol=TCP -h "$host" -P "$port" \
        --connect-timeout="${PROXYSQL_TIMEOUT_S:-3}" --batch --skip-column-names -e "$sql"; then
        log "$admin: $cluster writer hostgroup $writer -> $new_host:$new_port (${hook#post_}, epoch ${PRIMUS_EPOCH:-?})"
    else
        log "$admin: update FAILED for $cluster ($new_host:$new_port)"
        failed=1
    fi
done
exit "$failed"
