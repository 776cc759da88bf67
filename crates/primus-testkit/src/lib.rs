//! Real parts for tests and the sandbox: fencing agents beside instances
//! (`agent`), MariaDB servers with GTID replication
//! (`mariadb`), TCP proxies whose links a test can cut and heal (`proxy`),
//! groups of real `primusd` processes (`coordinator`), a raw HTTP client for
//! primusd's HTTP endpoint (`http`), and throw-away TLS certificates (`pki`).
//!
//! Everything started here is cleaned up on drop: processes are killed and
//! temporary directories removed. A missing `mariadbd` is an error that says how to
//! install it — never a silent skip.

pub mod agent;
pub mod coordinator;
pub mod http;
pub mod mariadb;
pub mod netns;
pub mod pki;
pub mod ports;
pub mod proxy;

/// A raw peer-protocol client, for tests that send malformed Raft messages.
pub fn raft_client(
    ch: tonic::transport::Channel,
) -> primus_proto::raft::raft_client::RaftClient<tonic::transport::Channel> {
    primus_proto::raft::raft_client::RaftClient::new(ch)
}

/// A Raft envelope addressed to `to` with an arbitrary payload.
pub fn raft_request(to: u64, payload: Vec<u8>) -> primus_proto::raft::RaftRequest {
    primus_proto::raft::RaftRequest { from: 999, to, payload }
}
