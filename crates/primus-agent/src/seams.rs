//! What the agent's loop touches, behind traits, so that the one loop in this crate
//! (renewer, guard, refusal confirmation, hand-back) runs both in the real agent and in
//! the deterministic simulator (`primus-sim`), which supplies simulated servers, a
//! simulated network and simulated time (issue 13).
//!
//! The real implementations are thin: [`LocalMysql`] over mysql_async, [`ClientCoordinators`]
//! over the gRPC client, [`RealHost`] over SIGKILL and nftables, and the sentinel's
//! [`Publisher`] for the lease file.

use crate::config::{Config, FenceSection};
use crate::fence::{Escalated, FenceError, FenceReport, LocalMysql, Writability};
use crate::sentinel::Publisher;
use crate::AgentError;
use primus_client::{AgentTimings, Client, ClientError, RenewLeaseResponse};
use std::time::Duration;
use tokio::time::Instant;

/// The local mysqld, over one persistent privileged connection.
#[async_trait::async_trait]
pub trait LocalServer: Send + 'static {
    /// `read_only` as the server reports it now.
    async fn writability(&mut self) -> Result<Writability, FenceError>;
    /// One attempt to make the server read-only and kill its clients, each statement
    /// bounded by the query timeout.
    async fn fence(&mut self) -> Result<FenceReport, FenceError>;
    /// Drop the connection (a timed-out statement may still be running on it).
    fn reset(&mut self);

    /// [`LocalServer::fence`] until confirmed within `bound`: statement timeouts are
    /// shorter than the fence's own bound, so a timed-out statement is retried on a fresh
    /// connection until then. `Err(Timeout)` means mysqld did not confirm the fence in
    /// time (the caller escalates).
    async fn fence_within(&mut self, bound: Duration) -> Result<FenceReport, FenceError> {
        let attempt = async {
            loop {
                match self.fence().await {
                    Err(FenceError::Timeout { .. }) => continue,
                    other => return other,
                }
            }
        };
        match tokio::time::timeout(bound, attempt).await {
            Ok(r) => r,
            Err(_) => {
                self.reset();
                Err(FenceError::Timeout { what: "the fence".into(), after_ms: bound.as_millis() })
            }
        }
    }
}

/// The coordinators, addressed one endpoint at a time (`i` modulo [`Coordinators::count`]):
/// a frozen coordinator costs one call, then the caller tries the next one. Every call is
/// about this agent's own cluster and instance.
#[async_trait::async_trait]
pub trait Coordinators: Send + Sync + 'static {
    fn count(&self) -> usize;
    /// For logs.
    fn name(&self, i: usize) -> String;
    /// RegisterAgent; the log index the registration was committed at.
    async fn register(&self, i: usize, agent_id: &str, timings: AgentTimings) -> Result<u64, ClientError>;
    async fn renew(&self, i: usize, agent_id: &str, ttl_ms: u64) -> Result<RenewLeaseResponse, ClientError>;
    /// Hand the lease of registration `registration` back; the log index of the release.
    async fn release(&self, i: usize, agent_id: &str, registration: u64, reason: &str) -> Result<u64, ClientError>;
}

/// What the agent does to the host beyond SQL: the escalation when mysqld does not
/// answer a fence, and the port block.
#[async_trait::async_trait]
pub trait Host: Send + Sync + 'static {
    async fn escalate(&self, port: Option<u16>) -> Result<Escalated, String>;
    async fn unblock_port(&self, port: u16) -> Result<(), String>;
    async fn port_blocked(&self, port: u16) -> bool;
}

/// Where the agent publishes its lease end for its sentinel.
pub trait LeasePublisher: Send + Sync + 'static {
    fn publish(&self, until: Option<Instant>);
    fn publish_fenced(&self, until: Instant);
}

#[async_trait::async_trait]
impl LocalServer for LocalMysql {
    async fn writability(&mut self) -> Result<Writability, FenceError> {
        LocalMysql::writability(self).await
    }

    async fn fence(&mut self) -> Result<FenceReport, FenceError> {
        LocalMysql::fence(self).await
    }

    fn reset(&mut self) {
        LocalMysql::reset(self)
    }
}

impl LeasePublisher for Publisher {
    fn publish(&self, until: Option<Instant>) {
        Publisher::publish(self, until)
    }

    fn publish_fenced(&self, until: Instant) {
        Publisher::publish_fenced(self, until)
    }
}

/// The coordinators over gRPC: one client per endpoint (a single multi-endpoint client
/// would keep waiting on the endpoint that answered last), registrations bounded by
/// `lease.register_timeout_ms`, renewals and hand-backs by one renewal interval.
pub struct ClientCoordinators {
    cluster: String,
    instance: String,
    register: Vec<(String, Client)>,
    renew: Vec<(String, Client)>,
}

impl ClientCoordinators {
    pub fn new(cfg: &Config) -> Result<ClientCoordinators, AgentError> {
        Ok(ClientCoordinators {
            cluster: cfg.cluster.clone(),
            instance: cfg.instance.clone(),
            register: endpoint_clients(cfg, cfg.lease.register_timeout())?,
            renew: endpoint_clients(cfg, cfg.lease.renew_interval())?,
        })
    }
}

fn endpoint_clients(cfg: &Config, timeout: Duration) -> Result<Vec<(String, Client)>, AgentError> {
    let opts = cfg.client_options().map_err(|(k, e)| AgentError::Task(format!("{k}: {e}")))?;
    let opts = primus_client::ClientOptions { timeout, connect_timeout: timeout.min(opts.connect_timeout), ..opts };
    let mut out = Vec::new();
    for e in cfg.coordinators.iter().flat_map(|e| e.split(',')).map(str::trim).filter(|e| !e.is_empty()) {
        out.push((e.to_string(), Client::new(&[e.to_string()], opts.clone())?));
    }
    if out.is_empty() {
        return Err(AgentError::Client(ClientError::NoEndpoints));
    }
    Ok(out)
}

#[async_trait::async_trait]
impl Coordinators for ClientCoordinators {
    fn count(&self) -> usize {
        self.renew.len()
    }

    fn name(&self, i: usize) -> String {
        self.renew[i % self.renew.len()].0.clone()
    }

    async fn register(&self, i: usize, agent_id: &str, timings: AgentTimings) -> Result<u64, ClientError> {
        let c = &self.register[i % self.register.len()].1;
        c.register_agent_with(&self.cluster, &self.instance, agent_id, timings).await.map(|r| r.log_index)
    }

    async fn renew(&self, i: usize, agent_id: &str, ttl_ms: u64) -> Result<RenewLeaseResponse, ClientError> {
        self.renew[i % self.renew.len()].1.renew_lease(&self.cluster, &self.instance, agent_id, ttl_ms).await
    }

    async fn release(&self, i: usize, agent_id: &str, registration: u64, reason: &str) -> Result<u64, ClientError> {
        let c = &self.renew[i % self.renew.len()].1;
        c.release_lease(&self.cluster, &self.instance, agent_id, registration, reason).await.map(|r| r.log_index)
    }
}

/// SIGKILL from the pid file, or nftables for the port block (`fence` module).
pub struct RealHost(pub FenceSection);

#[async_trait::async_trait]
impl Host for RealHost {
    async fn escalate(&self, port: Option<u16>) -> Result<Escalated, String> {
        crate::fence::escalate(&self.0, port).await
    }

    async fn unblock_port(&self, port: u16) -> Result<(), String> {
        crate::fence::unblock_port(&self.0, port).await
    }

    async fn port_blocked(&self, port: u16) -> bool {
        crate::fence::port_blocked(&self.0, port).await
    }
}
