//! The Raft node's network: how primusd peers talk to each other.
//!
//! * [`network::PeerNetwork`] implements openraft's `RaftNetworkFactory` over tonic:
//!   one lazily-connected, reused channel per peer; every RPC bounded by a timeout;
//!   failures mapped to what openraft should do about them (`Unreachable` → back off,
//!   `Timeout`, `Network` → retry). Replication to each peer runs in its own openraft
//!   task, so a dead peer only ever costs its own task time.
//! * [`service::RaftService`] is the receiving half: decodes, checks the envelope,
//!   hands the request to the local `Raft`. Garbage gets `INVALID_ARGUMENT`, never a panic.
//!   Until its [`service::Admission`] opens (a node with an empty data_dir checking with
//!   its peers) it refuses Raft traffic, and it answers `JoinCheck` through a
//!   [`service::JoinCheckAnswer`] the server provides.
//! * [`security::PeerSecurity`] is how every outgoing channel to a peer is built:
//!   `https` with this node's certificate when `[tls]` is set, and the shared bearer
//!   token on every request when `[auth]` is set (checked by primusd's auth layer).
//! * [`faults::Faults`] is the test-only switch that drops traffic to and from chosen
//!   peers, on both halves, so partitions can be made between real processes.

pub mod faults;
pub mod network;
pub mod security;
pub mod service;

pub use faults::Faults;
pub use network::{NetworkConfig, PeerAnswers, PeerNetwork};
pub use security::{PeerSecurity, PeerTls};
pub use service::{Admission, JoinCheckAnswer, ObservationSink, RaftService};
