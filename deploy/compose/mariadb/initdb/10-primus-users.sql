-- Run once by the mariadb image's entrypoint on every server's first start
-- (/docker-entrypoint-initdb.d). Not binary-logged: no server starts with GTID
-- history of its own, so the replicas' GTID positions stay those of mariadb1.
-- The passwords are the sandbox's (secrets/*.pass); this is a demo, not production.
SET SESSION sql_log_bin = 0;

-- What primusd probes and acts with (same privileges as scripts/sandbox.sh's
-- coordinator user: crates/primus-testkit/src/mariadb.rs).
CREATE USER 'primus'@'%' IDENTIFIED BY 'primus-pass';
GRANT SELECT, RELOAD, PROCESS, SUPER, REPLICATION SLAVE, BINLOG MONITOR, SLAVE MONITOR,
      REPLICATION SLAVE ADMIN, REPLICATION MASTER ADMIN, BINLOG ADMIN, READ_ONLY ADMIN,
      CONNECTION ADMIN ON *.* TO 'primus'@'%';
GRANT ALL PRIVILEGES ON `primus`.* TO 'primus'@'%';

-- What replicas replicate as, now and after primus repoints them.
CREATE USER 'repl'@'%' IDENTIFIED BY 'repl-pass';
GRANT REPLICATION SLAVE ON *.* TO 'repl'@'%';

-- primus-agent over the unix socket as OS user mysql (docs/fencing.md#deployment).
CREATE USER IF NOT EXISTS 'mysql'@'localhost' IDENTIFIED VIA unix_socket;
GRANT READ_ONLY ADMIN, CONNECTION ADMIN, PROCESS ON *.* TO 'mysql'@'localhost';
