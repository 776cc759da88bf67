//! The coordinators' Raft in the simulator: the real openraft, with a type
//! configuration of its own ([`SimConfig`]: the seeded [`runtime::SimRuntime`]), an
//! in-memory log and vote that survive a simulated crash ([`store::Disk`]), a state
//! machine that applies entries through the very `Registry::apply` primusd uses
//! (`StateHandle::apply_*`), and a network ([`net::SimNet`]) whose links the fault
//! schedule cuts, delays and heals.
//!
//! openraft rather than a model of Raft: the simulator then checks primus on the
//! consensus it really runs (elections, leader leases, `ensure_linearizable`,
//! `millis_since_quorum_ack`), and a bug in how primus uses it shows up too. The price
//! is openraft's own tasks in every run; snapshots are off (logs are never purged in a
//! run of minutes).

pub mod net;
pub mod runtime;
pub mod store;

use primus_types::{Member, Request, Response};
use std::io::Cursor;

openraft::declare_raft_types!(
    /// primus' Raft types on the simulator's runtime.
    pub SimConfig:
        D = Request,
        R = Response,
        NodeId = u64,
        Node = Member,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = runtime::SimRuntime,
);

pub type SimRaft = openraft::Raft<SimConfig>;
