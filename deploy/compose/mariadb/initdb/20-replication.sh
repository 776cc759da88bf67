# shellcheck shell=bash
# Sourced once by the mariadb image's entrypoint on a server's first start, after
# 10-primus-users.sql, with docker_process_sql defined (it runs SQL as root on the
# temporary server).
#   PRIMUS_REPLICATE_FROM=HOST  this server is a replica of HOST:3306 (GTID,
#                               slave_pos), replicating as repl;
#   unset                       the primary: it gets the application database and
#                               user (binary-logged, so the replicas get them too).
if [ -n "${PRIMUS_REPLICATE_FROM:-}" ]; then
    mysql_note "primus: replicating from ${PRIMUS_REPLICATE_FROM}:3306 with GTID"
    docker_process_sql <<SQL
CHANGE MASTER TO MASTER_HOST='${PRIMUS_REPLICATE_FROM}', MASTER_PORT=3306,
  MASTER_USER='repl', MASTER_PASSWORD='repl-pass', MASTER_USE_GTID=slave_pos,
  MASTER_HEARTBEAT_PERIOD=0.5, MASTER_CONNECT_RETRY=1;
START SLAVE;
SQL
else
    mysql_note "primus: primary; creating the app database and user"
    docker_process_sql <<'SQL'
CREATE DATABASE IF NOT EXISTS app;
CREATE USER IF NOT EXISTS 'app'@'%' IDENTIFIED BY 'app-pass';
GRANT ALL PRIVILEGES ON app.* TO 'app'@'%';
SQL
fi
