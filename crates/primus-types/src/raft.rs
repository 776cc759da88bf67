//! openraft's type configuration for the whole project, and the openraft types every
//! crate names through it (feature `raft`).

use crate::{Member, NodeId, Request, Response};
use std::io::Cursor;

openraft::declare_raft_types!(
    /// openraft type configuration shared by store, network and server.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = Member,
        SnapshotData = Cursor<Vec<u8>>,
);

pub type LogId = openraft::LogId<NodeId>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type Vote = openraft::Vote<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, Member>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Member>;
pub type Raft = openraft::Raft<TypeConfig>;
