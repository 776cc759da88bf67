//! Deterministic simulation of primus (issue 13): primus' real decision and execution code
//! run against simulated servers under seeded fault schedules, on a single-threaded tokio
//! runtime with a paused clock.
//!
//! * [`mysql`]: simulated MySQL/MariaDB servers behind the `primus_mysql::MysqlConn` seam.

pub mod agent;
pub mod agentlog;
pub mod coord;
pub mod mysql;
pub mod raft;
pub mod run;
pub mod schedule;
