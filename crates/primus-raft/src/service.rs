//! Incoming half of the peer network: the `Raft` gRPC service.

use crate::faults::Faults;
use primus_proto::raft::raft_server::Raft as RaftRpc;
use primus_proto::raft::{
    FaultReply, FaultRequest, JoinCheckReply, JoinCheckRequest, ObservationAck, ObservationReport, RaftReply,
    RaftRequest, TimeoutNowReply, TimeoutNowRequest,
};
use primus_types::{NodeId, Raft};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// Receives followers' observation reports (implemented by the server's monitor).
pub trait ObservationSink: Send + Sync + 'static {
    /// `Ok(true)` when accepted, `Ok(false)` when ignored (not leader, old term),
    /// `Err` for an undecodable report.
    /// `sent_at_ms`: the sender's wall clock when it sent the report (0: unknown).
    fn accept(&self, from: NodeId, term: u64, sent_at_ms: u64, payload: &[u8]) -> Result<bool, String>;
}

/// Answers `JoinCheck` (implemented by the server, which knows the replicated state).
pub trait JoinCheckAnswer: Send + Sync + 'static {
    /// What this node knows about the group and about node `from`.
    fn join_check(&self, from: NodeId) -> JoinCheckReply;
}

/// Whether this node takes part in Raft yet. A node that starts with an empty data_dir
/// first asks its peers whether it may (see primus-server's `bootstrap`); until then it
/// must not grant a vote or accept entries, as it may be a member that lost its log and
/// its vote. Cheap to clone; clones share the state.
#[derive(Clone, Debug)]
pub struct Admission(Arc<AtomicBool>);

impl Admission {
    /// Taking part from the start (a node that recovered from its data_dir).
    pub fn open() -> Self {
        Admission(Arc::new(AtomicBool::new(true)))
    }
    /// Refusing Raft traffic until [`Admission::admit`].
    pub fn closed() -> Self {
        Admission(Arc::new(AtomicBool::new(false)))
    }
    pub fn admit(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    pub fn is_open(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

pub struct RaftService {
    me: NodeId,
    raft: Raft,
    faults: Arc<Faults>,
    sink: Option<Arc<dyn ObservationSink>>,
    admission: Admission,
    join: Option<Arc<dyn JoinCheckAnswer>>,
}

impl RaftService {
    pub fn new(me: NodeId, raft: Raft, faults: Arc<Faults>, sink: Option<Arc<dyn ObservationSink>>) -> Self {
        RaftService { me, raft, faults, sink, admission: Admission::open(), join: None }
    }

    /// Refuse AppendEntries, Vote, InstallSnapshot and TimeoutNow while `admission` is closed.
    pub fn with_admission(mut self, admission: Admission) -> Self {
        self.admission = admission;
        self
    }

    /// Answer `JoinCheck` with `answer` (without one: UNIMPLEMENTED, as an older release).
    pub fn with_join_check(mut self, answer: Arc<dyn JoinCheckAnswer>) -> Self {
        self.join = Some(answer);
        self
    }

    /// `UNAVAILABLE` (the sender backs off and retries) while this node is not admitted.
    fn admitted(&self, what: &str) -> Result<(), Status> {
        if self.admission.is_open() {
            return Ok(());
        }
        Err(Status::unavailable(format!(
            "{what} refused: node {} started with an empty data_dir and is asking its peers whether it may join",
            self.me
        )))
    }

    /// Checks the envelope and decodes the openraft request inside it.
    fn open<T: DeserializeOwned>(&self, req: Request<RaftRequest>, what: &str) -> Result<T, Status> {
        let req = req.into_inner();
        if req.to != self.me {
            return Err(Status::failed_precondition(format!(
                "{what} for node {} reached node {}: peer address map is wrong",
                req.to, self.me
            )));
        }
        if self.faults.is_dropped(req.from) {
            return Err(Status::unavailable(format!("fault injection: traffic from node {} dropped", req.from)));
        }
        serde_json::from_slice(&req.payload).map_err(|e| {
            tracing::warn!(from = req.from, error = %e, "undecodable {what} payload");
            Status::invalid_argument(format!("undecodable {what} payload: {e}"))
        })
    }
}

fn reply<T: Serialize>(value: &T) -> Result<Response<RaftReply>, Status> {
    serde_json::to_vec(value)
        .map(|payload| Response::new(RaftReply { payload }))
        .map_err(|e| Status::internal(format!("cannot encode reply: {e}")))
}

#[tonic::async_trait]
impl RaftRpc for RaftService {
    async fn append_entries(&self, req: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        self.admitted("AppendEntries")?;
        let rpc = self.open(req, "AppendEntries")?;
        reply(&self.raft.append_entries(rpc).await)
    }

    async fn vote(&self, req: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        self.admitted("Vote")?;
        let rpc = self.open(req, "Vote")?;
        reply(&self.raft.vote(rpc).await)
    }

    async fn install_snapshot(&self, req: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        self.admitted("InstallSnapshot")?;
        let rpc = self.open(req, "InstallSnapshot")?;
        reply(&self.raft.install_snapshot(rpc).await)
    }

    async fn report_observations(&self, req: Request<ObservationReport>) -> Result<Response<ObservationAck>, Status> {
        let r = req.into_inner();
        if self.faults.is_dropped(r.from) {
            return Err(Status::unavailable(format!("fault injection: traffic from node {} dropped", r.from)));
        }
        let Some(sink) = &self.sink else {
            return Ok(Response::new(ObservationAck { accepted: false }));
        };
        match sink.accept(r.from, r.term, r.sent_at_ms, &r.payload) {
            Ok(accepted) => Ok(Response::new(ObservationAck { accepted })),
            Err(e) => {
                tracing::warn!(from = r.from, error = %e, "undecodable observation report");
                Err(Status::invalid_argument(e))
            }
        }
    }

    async fn timeout_now(&self, req: Request<TimeoutNowRequest>) -> Result<Response<TimeoutNowReply>, Status> {
        self.admitted("TimeoutNow")?;
        let r = req.into_inner();
        if self.faults.is_dropped(r.from) {
            return Err(Status::unavailable(format!("fault injection: traffic from node {} dropped", r.from)));
        }
        let refuse = |reason: String| {
            tracing::info!(from = r.from, term = r.term, %reason, "leadership transfer refused");
            Ok(Response::new(TimeoutNowReply { started: false, reason }))
        };
        let (leader, term, last, voter) = {
            let m = self.raft.metrics().borrow().clone();
            let voter = m.membership_config.membership().voter_ids().any(|v| v == self.me);
            (m.current_leader, m.current_term, m.last_log_index.unwrap_or(0), voter)
        };
        if leader != Some(r.from) || term != r.term {
            return refuse(format!(
                "node {} is not the leader this node knows (leader {leader:?}, term {term}; asked by {} in term {})",
                r.from, r.from, r.term
            ));
        }
        if !voter {
            return refuse(format!("node {} is not a voter", self.me));
        }
        if last < r.last_log_index {
            return refuse(format!("node {} holds log index {last}, the leader {}", self.me, r.last_log_index));
        }
        if let Err(e) = self.raft.trigger().elect().await {
            return refuse(format!("cannot start an election: {e}"));
        }
        tracing::info!(from = r.from, term, "leadership transfer: election started");
        Ok(Response::new(TimeoutNowReply { started: true, reason: String::new() }))
    }

    async fn join_check(&self, req: Request<JoinCheckRequest>) -> Result<Response<JoinCheckReply>, Status> {
        let r = req.into_inner();
        if r.to != self.me {
            return Err(Status::failed_precondition(format!(
                "JoinCheck for node {} reached node {}: the address in initial_members is wrong",
                r.to, self.me
            )));
        }
        if self.faults.is_dropped(r.from) {
            return Err(Status::unavailable(format!("fault injection: traffic from node {} dropped", r.from)));
        }
        match &self.join {
            Some(answer) => Ok(Response::new(answer.join_check(r.from))),
            None => Err(Status::unimplemented("JoinCheck is not served by this node")),
        }
    }

    async fn set_faults(&self, req: Request<FaultRequest>) -> Result<Response<FaultReply>, Status> {
        let req = req.into_inner();
        if !self.faults.set_dropped(req.drop_peers) {
            return Err(Status::permission_denied(
                "fault injection is disabled (start primusd with PRIMUS_FAULT_INJECTION=1 to enable it in tests)",
            ));
        }
        Ok(Response::new(FaultReply { drop_peers: self.faults.dropped() }))
    }
}
