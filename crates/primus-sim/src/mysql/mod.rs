//! Simulated MySQL/MariaDB servers behind primus' `MysqlConn`/`Connector` seam.

// The statement executor using it comes with the servers.
#[allow(dead_code)]
mod sql;
