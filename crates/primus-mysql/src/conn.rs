//! The seam between the coordinators and the servers they watch: what they do to one
//! MySQL/MariaDB instance ([`MysqlConn`]) and how they reach one ([`Connector`]).
//! [`Prober`](crate::Prober) is the real implementation; a simulator supplies another,
//! so that the decision and execution code runs unchanged against simulated servers.

use crate::flavor::ServerInfo;
use crate::probe::{Observation, ProbeError};
use crate::status::StatusRow;
use primus_types::InstanceAddr;
use std::sync::Arc;
use std::time::Duration;

/// One instance over one reused connection. Every call is bounded (by the configured
/// timeouts, or the `timeout` given); an error leaves the connection closed.
#[async_trait::async_trait]
pub trait MysqlConn: Send + Sync {
    /// Everything one probe learns about the instance (see [`Observation`]).
    async fn probe(&self) -> Result<Observation, ProbeError>;

    /// Flavor and version of the instance (connecting if needed).
    async fn server_info(&self) -> Result<ServerInfo, ProbeError>;

    /// Writes the heartbeat row `(cluster, epoch, ts_ms, coordinator)`; `Ok(false)` when a
    /// newer epoch owns it.
    async fn write_heartbeat(
        &self,
        cluster: &str,
        epoch: u64,
        ts_ms: u64,
        coordinator: u64,
    ) -> Result<bool, ProbeError>;

    /// Executes `statements` in order within `timeout`, stopping at the first failure. A
    /// statement may take effect on the server although the call timed out.
    async fn execute(&self, statements: &[String], timeout: Duration) -> Result<(), ProbeError>;

    /// Runs one query within `timeout` and returns its rows.
    async fn query_rows(&self, sql: &str, timeout: Duration) -> Result<Vec<StatusRow>, ProbeError>;

    /// Closes the connection (if any); the next call reconnects.
    async fn disconnect(&self);
}

/// Opens connections to instances.
pub trait Connector: Send + Sync {
    /// A connection to `addr` (not opened until first used).
    fn connect(&self, addr: &InstanceAddr) -> Arc<dyn MysqlConn>;

    /// A bound on one probe, whatever the server does.
    fn probe_deadline(&self) -> Duration;
}

#[async_trait::async_trait]
impl MysqlConn for crate::Prober {
    async fn probe(&self) -> Result<Observation, ProbeError> {
        crate::Prober::probe(self).await
    }

    async fn server_info(&self) -> Result<ServerInfo, ProbeError> {
        crate::Prober::server_info(self).await
    }

    async fn write_heartbeat(
        &self,
        cluster: &str,
        epoch: u64,
        ts_ms: u64,
        coordinator: u64,
    ) -> Result<bool, ProbeError> {
        crate::Prober::write_heartbeat(self, cluster, epoch, ts_ms, coordinator).await
    }

    async fn execute(&self, statements: &[String], timeout: Duration) -> Result<(), ProbeError> {
        crate::Prober::execute(self, statements, timeout).await
    }

    async fn query_rows(&self, sql: &str, timeout: Duration) -> Result<Vec<StatusRow>, ProbeError> {
        crate::Prober::query_rows(self, sql, timeout).await
    }

    async fn disconnect(&self) {
        crate::Prober::disconnect(self).await
    }
}
