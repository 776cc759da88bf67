//! primusd: configuration, node wiring and the client-facing gRPC service.

pub mod api;
pub mod auth;
pub mod bootstrap;
pub mod clock;
pub mod config;
pub mod consensus;
pub mod context;
pub mod discovery;
pub mod divergence;
pub mod failover;
pub mod faults;
pub mod features;
pub mod hooks;
pub mod http;
pub mod leadership;
pub mod lease;
pub mod metrics;
pub mod monitor;
pub mod node;
pub mod primary;
pub mod proto_conv;
pub mod service;
pub mod tasks;
pub mod tls;
pub mod web;

/// An error that decides the process exit code: 2 for configuration errors, 1 otherwise.
#[derive(Debug, thiserror::Error)]
#[error("{inner}")]
pub struct ExitError {
    pub code: i32,
    inner: String,
}

impl ExitError {
    pub fn config(e: config::ConfigError) -> Self {
        ExitError { code: 2, inner: e.to_string() }
    }
}
