//! Real parts for tests and the sandbox: MariaDB servers with GTID replication
//! (`mariadb`), TCP proxies whose links a test can cut and heal (`proxy`), and
//! groups of real `primusd` processes (`coordinator`).
//!
//! Everything started here is cleaned up on drop: processes are killed and
//! temporary directories removed. A missing `mariadbd` is an error that says how to
//! install it — never a silent skip.

pub mod coordinator;
pub mod mariadb;
pub mod ports;
pub mod proxy;
