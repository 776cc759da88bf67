//! Simulated MySQL/MariaDB servers behind primus' `MysqlConn`/`Connector` seam.
