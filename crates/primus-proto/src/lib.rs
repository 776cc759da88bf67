//! Generated protobuf and gRPC code. Nothing hand-written lives here: the client
//! API is `primus.v1` (`Coordinator`), the peer API is `primus.raft.v1` (`Raft`).

#[allow(clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("primus.v1");
}

#[allow(clippy::all, clippy::pedantic)]
pub mod raft {
    tonic::include_proto!("primus.raft.v1");
}
