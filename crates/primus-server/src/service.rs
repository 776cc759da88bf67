//! The client-facing `Coordinator` gRPC service.
//!
//! Writes and linearizable reads must run on the leader. A follower that receives
//! one forwards it to the leader it knows (once: a forwarded request is marked and
//! never forwarded again, so a stale leader view cannot make a loop). When no leader
//! is known the call fails with `UNAVAILABLE` and the client tries another endpoint.
//! A forwarded request carries the caller's `authorization` (the leader checks it
//! again: see crate::auth) and goes over TLS when `[tls]` is set.

use crate::context::NodeCtx;
use crate::proto_conv::{failover_view, fence_view, primary_state_view};
use openraft::error::{ChangeMembershipError, CheckIsLeaderError, ClientWriteError, ForwardToLeader, RaftError};
use openraft::{ChangeMembers, ServerState};
use primus_proto::v1::coordinator_client::CoordinatorClient;
use primus_proto::v1::coordinator_server::Coordinator;
use primus_proto::v1::*;
use primus_types::{
    ClusterName, Command, FailoverKind, FailoverOutcome, InstanceAddr, Maintenance, Member, NodeId, Origin,
    PromotionRule, Rejection,
};
use std::collections::BTreeSet;
use std::sync::Arc;
use tonic::{Request, Response, Status};

const FORWARDED: &str = "x-primus-forwarded";
const LEADER_HINT: &str = "x-primus-leader";

pub struct CoordinatorService {
    node: Arc<NodeCtx>,
}

impl CoordinatorService {
    pub fn new(node: Arc<NodeCtx>) -> Self {
        CoordinatorService { node }
    }
}

/// How a request came in, as far as forwarding it goes: whether a follower
/// already forwarded it, and the caller's credentials to pass on.
pub(crate) struct Inbound {
    forwarded: bool,
    authorization: Option<tonic::metadata::AsciiMetadataValue>,
}

/// Why a leader-only operation did not happen here.
enum NotHere {
    /// Another node leads (or nobody does, `None`).
    Forward(Option<(NodeId, String)>),
    Failed(Status),
}

impl From<Status> for NotHere {
    fn from(s: Status) -> Self {
        NotHere::Failed(s)
    }
}

fn forward_target(f: &ForwardToLeader<NodeId, Member>) -> Option<(NodeId, String)> {
    match (f.leader_id, &f.leader_node) {
        (Some(id), Some(node)) => Some((id, node.addr.clone())),
        _ => None,
    }
}

fn rejection_status(r: Rejection) -> Status {
    let msg = r.to_string();
    match r {
        Rejection::ClusterExists(_) => Status::already_exists(msg),
        Rejection::ClusterNotFound(_) => Status::not_found(msg),
        Rejection::NoSeeds => Status::invalid_argument(msg),
        Rejection::UnsupportedFormat { .. } => Status::failed_precondition(msg),
        Rejection::FailoverInProgress(..) | Rejection::StaleEpoch { .. } => Status::aborted(msg),
        Rejection::NoSuchFailover { .. } | Rejection::UnknownInstance { .. } | Rejection::NoSuchSplitFence { .. } => {
            Status::not_found(msg)
        }
        Rejection::IsPrimary { .. }
        | Rejection::NotPrimary { .. }
        | Rejection::PrimaryMovesWithoutFailover { .. }
        | Rejection::AgentNotRegistered { .. }
        | Rejection::InstanceInUse { .. } => Status::failed_precondition(msg),
        Rejection::BadSetting { .. } => Status::invalid_argument(msg),
    }
}

fn no_leader(me: NodeId) -> Status {
    Status::unavailable(format!(
        "node {me} knows no leader: the group is electing one or has lost its quorum; retry or try another endpoint"
    ))
}

/// For a status that this node made up from a failed connection (it carries the
/// error as its source), whether the request certainly never left: the connection
/// could not be established, or closed before the request was handed to it (hyper's
/// "canceled"). `None`: the status is the other side's answer.
fn transport_failure(s: &Status) -> Option<bool> {
    let mut cur = std::error::Error::source(s)?;
    loop {
        if cur.downcast_ref::<tonic::ConnectError>().is_some()
            || cur.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_canceled)
        {
            return Some(true);
        }
        match cur.source() {
            Some(next) => cur = next,
            None => return Some(false),
        }
    }
}

fn cluster_not_found(name: impl std::fmt::Display) -> Status {
    Status::not_found(format!("cluster {name} is not registered"))
}

/// The gRPC code of each [`FailoverError`](crate::failover::FailoverError), by what a
/// client may do about it. The client library repeats a write only on `UNAVAILABLE`
/// (nothing was done: another coordinator may lead); every other code is final.
fn failover_status(e: crate::failover::FailoverError) -> Status {
    use crate::failover::FailoverError as E;
    let msg = e.to_string();
    match e {
        E::NotLeader(_) => Status::unavailable(msg),
        E::UnknownCluster(n) => cluster_not_found(n),
        E::UnknownInstance { .. } => Status::not_found(msg),
        E::InvalidRequest(_) => Status::invalid_argument(msg),
        // Retry when the other operation is done.
        E::Busy(_) => Status::aborted(msg),
        E::Refused(_) => Status::failed_precondition(msg),
        E::Rejected(r) => {
            let code = rejection_status(r).code();
            Status::new(code, msg)
        }
        // Aborted: nothing irreversible happened, another attempt may work. Failed: the
        // cluster is half-changed; not to be asked again before an operator looked.
        E::Stopped { outcome: FailoverOutcome::Aborted(_), .. } => Status::aborted(msg),
        E::Stopped { .. } => Status::failed_precondition(msg),
        // It may still commit: check before asking again.
        E::CommitTimeout(_) => Status::deadline_exceeded(msg),
        E::Raft(_) | E::Internal(_) => Status::internal(msg),
        // Started, so it may not be asked for again: the outcome is not known here.
        E::Interrupted { .. } => Status::unknown(msg),
        // Answered with the failover the request started (see `answer_repeat`); only
        // if that record is gone from the history by then does this reach the client.
        E::Repeated { .. } => Status::already_exists(msg),
    }
}

/// The longest account an agent may give when it releases its lease.
const MAX_RELEASE_REASON: usize = 1024;

/// The longest request id a client may send with a failover.
const MAX_REQUEST_ID: usize = 128;

/// A failover request's id: `None` when empty; at most [`MAX_REQUEST_ID`] printable
/// ASCII characters.
fn parse_request_id(id: &str) -> Result<Option<String>, Status> {
    if id.is_empty() {
        return Ok(None);
    }
    if id.len() > MAX_REQUEST_ID || !id.chars().all(|c| c.is_ascii_graphic()) {
        return Err(Status::invalid_argument(format!(
            "request_id must be 1 to {MAX_REQUEST_ID} printable ASCII characters without spaces, got {} bytes",
            id.len()
        )));
    }
    Ok(Some(id.to_string()))
}

impl CoordinatorService {
    /// The answer to a repeated failover request: the failover its first attempt
    /// started with request id `rid`, once finished (waiting while it is in progress and
    /// this node leads), or `None` when no failover of `name` was started with that id.
    async fn answer_repeat(&self, name: &ClusterName, rid: &str) -> Option<Result<FailoverResponse, Status>> {
        let mut said = false;
        loop {
            let f =
                self.node.read_state(|s| s.clusters.get(name).and_then(|c| c.failover_of_request(rid).cloned())).1?;
            match &f.outcome {
                Some(FailoverOutcome::Succeeded) => {
                    tracing::info!(cluster = %name, failover_id = %f.id, epoch = f.epoch, request_id = rid,
                        "a repeated failover request: answered with the failover its first attempt started");
                    return Some(Ok(FailoverResponse { failover: Some(failover_view(&f)) }));
                }
                Some(outcome @ (FailoverOutcome::Aborted(reason) | FailoverOutcome::Failed(reason))) => {
                    return Some(Err(failover_status(crate::failover::FailoverError::Stopped {
                        id: f.id.clone(),
                        outcome: outcome.clone(),
                        reason: format!("failover {} (request {rid}) stopped: {reason}", f.id),
                    })));
                }
                None if !self.node.is_leader() => {
                    return Some(Err(Status::unavailable(format!(
                        "node {} is not the leader any more: failover {} (request {rid}) is carried on by the next \
                         leader; retry there",
                        self.node.id, f.id
                    ))));
                }
                None => {
                    if !said {
                        said = true;
                        tracing::info!(cluster = %name, failover_id = %f.id, epoch = f.epoch, request_id = rid,
                            "a repeated failover request: waiting for the failover its first attempt started");
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// `f` of the cluster's record in this node's state machine, or NOT_FOUND.
    fn with_cluster<R>(
        &self,
        name: &ClusterName,
        f: impl FnOnce(&primus_types::state::ClusterRecord) -> R,
    ) -> Result<R, Status> {
        self.node.read_state(|s| s.clusters.get(name).map(|c| f(c))).1.ok_or_else(|| cluster_not_found(name))
    }

    /// The request's cluster; when it names none (`primusctl … HOST:PORT`), the one
    /// registered cluster whose topology lists `instance` in this node's state machine
    /// (a forwarded request is looked up again by the leader; the state machine checks
    /// the instance when the command applies).
    fn cluster_named_or_of(&self, cluster: &str, instance: Option<&InstanceAddr>) -> Result<ClusterName, Status> {
        match (cluster.is_empty(), instance) {
            (false, _) => parse_name(cluster),
            (true, Some(i)) => self.cluster_of_instance(i),
            (true, None) => Err(Status::invalid_argument("name a cluster or an instance HOST:PORT")),
        }
    }

    /// The one registered cluster whose topology lists `instance`, from this node's
    /// state machine: NOT_FOUND when none does, INVALID_ARGUMENT when several do.
    fn cluster_of_instance(&self, instance: &InstanceAddr) -> Result<ClusterName, Status> {
        let names: Vec<ClusterName> = self
            .node
            .read_state(|s| {
                s.clusters
                    .iter()
                    .filter(|(_, c)| c.topology.instances.contains_key(instance))
                    .map(|(n, _)| n.clone())
                    .collect()
            })
            .1;
        match names.as_slice() {
            [one] => Ok(one.clone()),
            [] => Err(Status::not_found(format!("instance {instance} is in no registered cluster"))),
            many => Err(Status::invalid_argument(format!(
                "instance {instance} is in several clusters ({}): name the cluster too",
                many.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(", ")
            ))),
        }
    }

    /// The cluster's shared record in this node's state machine (no copy), or NOT_FOUND.
    fn cluster_record(&self, name: &ClusterName) -> Result<Arc<primus_types::state::ClusterRecord>, Status> {
        self.node.read_state(|s| s.clusters.get(name).cloned()).1.ok_or_else(|| cluster_not_found(name))
    }

    fn engine(&self) -> Result<Arc<crate::failover::Engine>, Status> {
        self.node.engine.clone().ok_or_else(|| {
            Status::failed_precondition(format!(
                "node {} has no [mysql] section: it cannot fail anything over",
                self.node.id
            ))
        })
    }

    /// Read before `into_inner`: whether the request was already forwarded once,
    /// and the caller's `authorization`, which a forwarded copy must carry.
    fn is_forwarded<T>(req: &Request<T>) -> Inbound {
        let authorization = req.metadata().get(primus_raft::security::AUTHORIZATION).cloned().map(|mut v| {
            v.set_sensitive(true);
            v
        });
        Inbound { forwarded: req.metadata().contains_key(FORWARDED), authorization }
    }

    async fn leader_client(&self, addr: &str) -> Result<CoordinatorClient<tonic::transport::Channel>, Status> {
        let ch = self.node.channel_to(addr)?;
        Ok(CoordinatorClient::new(ch))
    }

    /// Resolve a `NotHere` into a forwarded call, or a final status.
    async fn forward<Req, Resp, F, Fut>(
        &self,
        not_here: NotHere,
        inbound: Inbound,
        req: Req,
        call: F,
    ) -> Result<Resp, Status>
    where
        F: FnOnce(CoordinatorClient<tonic::transport::Channel>, Request<Req>) -> Fut,
        Fut: std::future::Future<Output = Result<Response<Resp>, Status>>,
    {
        match not_here {
            NotHere::Failed(s) => Err(s),
            NotHere::Forward(None) => Err(no_leader(self.node.id)),
            NotHere::Forward(Some((leader, addr))) => {
                if inbound.forwarded {
                    let mut s = Status::unavailable(format!(
                        "node {} is not the leader (node {leader} at {addr} is, as far as it knows)",
                        self.node.id
                    ));
                    if let Ok(v) = addr.parse() {
                        s.metadata_mut().insert(LEADER_HINT, v);
                    }
                    return Err(s);
                }
                tracing::debug!(leader, %addr, "forwarding request to leader");
                let client = self.leader_client(&addr).await?;
                let mut request = Request::new(req);
                // Membership changes may legitimately take as long as a snapshot transfer.
                let rc = &self.node.cfg.raft;
                request
                    .set_timeout(rc.write_timeout().max(rc.membership_timeout()) + std::time::Duration::from_secs(1));
                request.metadata_mut().insert(FORWARDED, tonic::metadata::MetadataValue::from(self.node.id));
                if let Some(auth) = inbound.authorization {
                    request.metadata_mut().insert(primus_raft::security::AUTHORIZATION, auth);
                }
                call(client, request).await.map(Response::into_inner).map_err(|s| {
                    let detail = primus_raft::security::status_detail(&s);
                    match transport_failure(&s) {
                        // Nothing reached the leader: the caller may try again.
                        Some(true) => Status::unavailable(format!(
                            "leader node {leader} at {addr} is unreachable from node {}: {detail}",
                            self.node.id
                        )),
                        // The leader may have acted on it: the caller must not blindly
                        // repeat a write (clients repeat only UNAVAILABLE writes).
                        Some(false) => Status::unknown(format!(
                            "the connection from node {} to leader node {leader} at {addr} failed during the \
                             request, which may or may not have taken effect: {detail}",
                            self.node.id
                        )),
                        // The leader's own answer.
                        None => s,
                    }
                })
            }
        }
    }

    async fn write(&self, command: Command, actor: String) -> Result<u64, NotHere> {
        // The leader decides (a follower's applied level may lag): it forwards.
        if self.node.is_leader() {
            let (_, group) = self.node.read_state(|r| r.group_feature_level());
            command
                .check_feature_level(crate::features::gate_level(group))
                .map_err(|e| Status::failed_precondition(e.to_string()))?;
        }
        let req = primus_types::Request::new(command, Origin { actor, via_node: self.node.id });
        let timeout = self.node.cfg.raft.write_timeout();
        match tokio::time::timeout(timeout, self.node.raft.client_write(req)).await {
            Err(_) => Err(Status::deadline_exceeded(format!(
                "not committed within {} ms: the leader may have lost its quorum; the write may still commit later",
                timeout.as_millis()
            ))
            .into()),
            Ok(Ok(resp)) => match resp.data.into_result() {
                Ok(()) => Ok(resp.log_id.index),
                Err(r) => Err(rejection_status(r).into()),
            },
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                Err(NotHere::Forward(forward_target(&f)))
            }
            Ok(Err(e)) => Err(Status::internal(format!("write failed: {e}")).into()),
        }
    }

    /// Commit `command` (this node leads) or forward `req` to the leader with `call`:
    /// the shape of every write RPC that answers with a log index.
    async fn commit_or_forward<Req, F, Fut>(
        &self,
        command: Command,
        actor: String,
        inbound: Inbound,
        req: Req,
        call: F,
    ) -> Result<Response<LogIndexResponse>, Status>
    where
        F: FnOnce(CoordinatorClient<tonic::transport::Channel>, Request<Req>) -> Fut,
        Fut: std::future::Future<Output = Result<Response<LogIndexResponse>, Status>>,
    {
        match self.write(command, actor).await {
            Ok(log_index) => Ok(Response::new(LogIndexResponse { log_index })),
            Err(nh) => self.forward(nh, inbound, req, call).await.map(Response::new),
        }
    }

    /// A fencing agent's timings must work with this group: its TTL no longer than
    /// `[fencing] max_lease_ttl_ms`, and long enough that a leader change (the worst
    /// leaderless window, plus two renewals: one may go to the dead leader) does not
    /// fence a healthy primary. Older agents send no timings: not checked.
    fn check_agent_timings(
        &self,
        r: &RegisterAgentRequest,
        name: &ClusterName,
        instance: &InstanceAddr,
    ) -> Result<(), Status> {
        if r.ttl_ms == 0 {
            return Ok(());
        }
        // A TTL an earlier leader accepted for this instance stays accepted (the new
        // leader waits it out in any case): the group's maximum, as renewals count it.
        let max = self
            .node
            .read_state(|s| {
                let agent = s.clusters.get(name).and_then(|c| c.agents.get(instance));
                crate::lease::longest_ttl(self.node.leases.limits(), agent)
            })
            .1
            .as_millis() as u64;
        if r.ttl_ms > max {
            return Err(Status::failed_precondition(format!(
                "lease.ttl_ms {} is longer than the coordinators' [fencing] max_lease_ttl_ms {max}: lower it to at \
                 most {max}",
                r.ttl_ms
            )));
        }
        let window = self.node.cfg.raft.worst_leaderless_ms();
        let need = window + 2 * r.renew_interval_ms;
        if r.ttl_ms <= need {
            return Err(Status::failed_precondition(format!(
                "lease.ttl_ms {} does not outlast a leader change: the coordinators can be without a leader for up to \
                 {window} ms (2 x raft.election_timeout_max_ms {} + a vote round), and two renewals take {} ms \
                 (lease.renew_interval_ms {}); every leader change would fence the primary. Set lease.ttl_ms above \
                 {need} (and at most {max}, [fencing] max_lease_ttl_ms), or shorten the coordinators' election timeouts",
                r.ttl_ms,
                self.node.cfg.raft.election_timeout_max_ms,
                2 * r.renew_interval_ms,
                r.renew_interval_ms
            )));
        }
        Ok(())
    }

    /// For a linearizable status: confirm with a quorum that this node leads.
    async fn confirm_leadership(&self) -> Result<(), Status> {
        match self.linearizable().await {
            Ok(()) => Ok(()),
            Err(NotHere::Failed(s)) => Err(s),
            Err(NotHere::Forward(_)) => Err(no_leader(self.node.id)),
        }
    }

    async fn linearizable(&self) -> Result<(), NotHere> {
        // A leader that has not heard from a quorum for longer than an election timeout
        // has probably been replaced: say so at once rather than after write_timeout.
        let m = self.node.raft.metrics().borrow().clone();
        if m.state == ServerState::Leader
            && m.millis_since_quorum_ack.is_some_and(|ms| ms > self.node.cfg.raft.election_timeout_max_ms)
        {
            return Err(Status::unavailable(format!(
                "node {} calls itself leader but has not heard from a quorum for {} ms: it may have been replaced; \
                 retry or try another endpoint",
                self.node.id,
                m.millis_since_quorum_ack.unwrap_or(0)
            ))
            .into());
        }
        let timeout = self.node.cfg.raft.write_timeout();
        match tokio::time::timeout(timeout, self.node.raft.ensure_linearizable()).await {
            Err(_) => Err(Status::deadline_exceeded(format!(
                "could not confirm leadership with a quorum within {} ms",
                timeout.as_millis()
            ))
            .into()),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
                Err(NotHere::Forward(forward_target(&f)))
            }
            Ok(Err(e)) => Err(Status::unavailable(format!("cannot confirm leadership: {e}")).into()),
        }
    }

    /// Run in its own task: openraft drives the second step of a joint change inside
    /// the caller's future, so a cancelled request must not be able to stop it midway.
    async fn change_membership(&self, change: ChangeMembers<NodeId, Member>) -> Result<u64, NotHere> {
        let timeout = self.node.cfg.raft.membership_timeout();
        let raft = self.node.raft.clone();
        let task =
            tokio::spawn(async move { tokio::time::timeout(timeout, raft.change_membership(change, false)).await });
        match task.await {
            Ok(r) => membership_result(r, timeout),
            Err(e) => Err(Status::internal(format!("membership task failed: {e}")).into()),
        }
    }

    /// Add `id` as a learner, wait until it holds everything committed when it
    /// joined, then make it a voter, all in one task that outlives the request.
    async fn add_member_steps(&self, id: NodeId, node: Member) -> Result<u64, NotHere> {
        let timeout = self.node.cfg.raft.membership_timeout();
        let raft = self.node.raft.clone();
        let ctx = self.node.clone();
        let task = tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + timeout;
            let r = tokio::time::timeout(timeout, raft.add_learner(id, node, true)).await;
            membership_result(r, timeout)?;
            // openraft's own "caught up" allows a lag of thousands of entries and
            // counts an unknown position as caught up; insist on the real thing.
            let target = ctx.committed_index().unwrap_or(0);
            loop {
                let m = raft.metrics().borrow().clone();
                let matched = m.replication.as_ref().and_then(|r| r.get(&id).cloned().flatten()).map(|l| l.index);
                if matched.is_some_and(|i| i >= target) {
                    break;
                }
                if tokio::time::Instant::now() > deadline {
                    return Err(NotHere::Failed(Status::deadline_exceeded(format!(
                        "node {id} joined as a learner but did not catch up to index {target} within {} ms \
                         (it holds {matched:?}); it stays a learner: check it, then retry or remove it",
                        timeout.as_millis()
                    ))));
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let change = ChangeMembers::AddVoterIds([id].into());
            let r = tokio::time::timeout(left, raft.change_membership(change, false)).await;
            membership_result(r, timeout)
        });
        match task.await {
            Ok(r) => r,
            Err(e) => Err(Status::internal(format!("membership task failed: {e}")).into()),
        }
    }

    /// Ask the would-be member who it is before letting it into the group.
    async fn check_newcomer(&self, id: NodeId, addr: &str) -> Result<(), Status> {
        let ch = self.node.channel_to(addr)?;
        let mut c = CoordinatorClient::new(ch);
        let mut req = Request::new(GetStatusRequest::default());
        req.set_timeout(std::time::Duration::from_millis(self.node.cfg.raft.rpc_timeout_ms.max(1000)));
        // Our own token: the newcomer may require one for reads.
        self.node.peer.authorize(&mut req);
        let s = c.get_status(req).await.map_err(|e| {
            Status::failed_precondition(format!(
                "no primusd answers at {addr} ({}); start it first, with an empty data_dir and no initial_members",
                primus_raft::security::status_detail(&e)
            ))
        })?;
        let s = s.into_inner();
        if s.node_id != id {
            return Err(Status::failed_precondition(format!("{addr} is node {}, not node {id}", s.node_id)));
        }
        // A release older than the group's level could not decode the log it would be sent.
        let (_, group) = self.node.read_state(|r| r.group_feature_level());
        let knows = s.feature_level.max(primus_types::BASE_FEATURE_LEVEL);
        if knows < group {
            return Err(Status::failed_precondition(format!(
                "node {id} at {addr} runs primusd {} (feature level {knows}), older than the group's feature level \
                 {group}: it could not decode the group's log; run the group's release on it (`primusctl status` \
                 shows each node's version)",
                if s.version.is_empty() { "of an unknown version" } else { &s.version }
            )));
        }
        Ok(())
    }
}

type MembershipResult = Result<
    Result<
        openraft::raft::ClientWriteResponse<primus_types::TypeConfig>,
        RaftError<NodeId, ClientWriteError<NodeId, Member>>,
    >,
    tokio::time::error::Elapsed,
>;

fn membership_result(r: MembershipResult, timeout: std::time::Duration) -> Result<u64, NotHere> {
    match r {
        Err(_) => {
            Err(Status::deadline_exceeded(format!("membership change not done within {} ms", timeout.as_millis()))
                .into())
        }
        Ok(Ok(resp)) => Ok(resp.log_id.index),
        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => Err(NotHere::Forward(forward_target(&f))),
        Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => {
            let msg = e.to_string();
            Err(match e {
                ChangeMembershipError::InProgress(_) => Status::aborted(format!("{msg}; retry when it is done")),
                _ => Status::failed_precondition(msg),
            }
            .into())
        }
        Ok(Err(e)) => Err(Status::unavailable(format!("membership change failed: {e}")).into()),
    }
}

fn role_of(state: ServerState) -> Role {
    match state {
        ServerState::Leader => Role::Leader,
        ServerState::Follower => Role::Follower,
        ServerState::Learner => Role::Learner,
        ServerState::Candidate => Role::Candidate,
        ServerState::Shutdown => Role::Unspecified,
    }
}

fn parse_seeds(seeds: &[String]) -> Result<Vec<InstanceAddr>, Status> {
    if seeds.is_empty() {
        return Err(Status::invalid_argument("a cluster needs at least one seed (--seed HOST:PORT)"));
    }
    seeds.iter().map(|s| s.parse::<InstanceAddr>().map_err(|e| Status::invalid_argument(e.to_string()))).collect()
}

/// A cluster's failovers, refusals and fences, as `History` answers them.
/// (`applied_index` and `served_by` are the caller's to set.)
pub(crate) fn history_response(c: &primus_types::state::ClusterRecord) -> HistoryResponse {
    HistoryResponse {
        applied_index: 0,
        served_by: 0,
        failovers: c.history.iter().map(failover_view).collect(),
        refusals: c
            .refusals
            .iter()
            .map(|r| RefusalView {
                at_ms: r.at_ms,
                analysis_code: r.analysis_code.to_string(),
                evidence: r.evidence.clone(),
                reason: r.reason.clone(),
            })
            .collect(),
        split_fences: c.split_fences.iter().map(fence_view).collect(),
        unfences: c.unfences.iter().map(fence_view).collect(),
    }
}

fn parse_name(name: &str) -> Result<ClusterName, Status> {
    name.parse().map_err(|e: primus_types::NameError| Status::invalid_argument(e.to_string()))
}

#[tonic::async_trait]
impl Coordinator for CoordinatorService {
    async fn get_status(&self, req: Request<GetStatusRequest>) -> Result<Response<GetStatusResponse>, Status> {
        // A leader asked for a linearizable answer confirms its leadership first: a
        // leader cut off in a minority must not tell clients it leads.
        let linearizable = req.get_ref().linearizable && self.node.is_leader();
        if linearizable {
            self.confirm_leadership().await?;
        }
        let m = self.node.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let initialized = m.membership_config.log_id().is_some() || !voters.is_empty();
        let role = if !initialized { Role::Uninitialized } else { role_of(m.state) };
        let matched = m.replication.clone().unwrap_or_default();
        let members = membership
            .nodes()
            .map(|(id, node)| {
                let role = if !voters.contains(id) {
                    Role::Learner
                } else if m.current_leader == Some(*id) {
                    Role::Leader
                } else {
                    Role::Follower
                };
                let matched_index = if *id == m.id && m.state == ServerState::Leader {
                    m.last_log_index
                } else {
                    matched.get(id).and_then(|l| l.map(|l| l.index))
                };
                // Only the leader hears from every member.
                let millis_since_last_contact = (m.state == ServerState::Leader).then(|| {
                    if *id == m.id {
                        0
                    } else {
                        u64::try_from(self.node.peer_answers.since(*id).as_millis()).unwrap_or(u64::MAX)
                    }
                });
                MemberStatus {
                    id: *id,
                    addr: node.addr.clone(),
                    datacenter: node.datacenter.clone(),
                    role: role as i32,
                    matched_index,
                    millis_since_last_contact,
                }
            })
            .collect();
        // A node that calls itself leader but has not heard from a quorum for longer than
        // an election timeout may well have been replaced: it names no leader.
        let quorum_lost = m.state == ServerState::Leader
            && m.millis_since_quorum_ack.is_none_or(|ms| ms > self.node.cfg.raft.election_timeout_max_ms);
        let current_leader = m.current_leader.filter(|_| !quorum_lost);
        let leader_addr =
            current_leader.and_then(|l| membership.get_node(&l).map(|n| n.addr.clone())).unwrap_or_default();
        let applied = m.last_applied.map(|l| l.index);
        let committed = self.node.committed_index().max(applied);
        // One read of the state: both facts as of the same applied index.
        let (_, (group_feature_level, automatic_off)) =
            self.node.read_state(|r| (r.group_feature_level(), r.automatic_off.clone()));
        Ok(Response::new(GetStatusResponse {
            node_id: m.id,
            role: role as i32,
            term: m.current_term,
            leader_id: current_leader,
            leader_addr,
            commit_index: committed,
            applied_index: applied,
            last_log_index: m.last_log_index,
            snapshot_index: m.snapshot.map(|l| l.index),
            members,
            datacenter: self.node.cfg.datacenter.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            millis_since_quorum_ack: m.millis_since_quorum_ack,
            linearizable,
            feature_level: crate::features::known_level(),
            group_feature_level,
            automatic_off: automatic_off.map(|a| AutomaticOff {
                reason: a.reason,
                actor: a.actor,
                at_ms: a.at_ms,
                log_index: a.index,
            }),
        }))
    }

    async fn add_member(&self, req: Request<AddMemberRequest>) -> Result<Response<AddMemberResponse>, Status> {
        let forwarded = Self::is_forwarded(&req);
        let r = req.into_inner();
        if r.id == 0 {
            return Err(Status::invalid_argument("member id must be greater than 0"));
        }
        crate::config::check_host_port(&r.addr).map_err(Status::invalid_argument)?;
        let node = Member { addr: r.addr.clone(), datacenter: r.datacenter.clone() };
        let result = if !self.node.is_leader() {
            Err(NotHere::Forward(self.node.leader_target()))
        } else {
            let m = self.node.raft.metrics().borrow().clone();
            let membership = m.membership_config.membership();
            let existing = membership.get_node(&r.id).cloned();
            let is_voter = membership.voter_ids().any(|v| v == r.id);
            match existing {
                Some(n) if n.addr != r.addr => Err(NotHere::Failed(Status::already_exists(format!(
                    "node {} is already a member at {}; remove it first to change its address",
                    r.id, n.addr
                )))),
                Some(_) if is_voter => Ok(m.membership_config.log_id().map(|l| l.index).unwrap_or(0)),
                _ => match self.check_newcomer(r.id, &r.addr).await {
                    Err(s) => Err(NotHere::Failed(s)),
                    Ok(()) => self.add_member_steps(r.id, node).await,
                },
            }
        };
        match result {
            Ok(log_index) => {
                tracing::info!(member = r.id, addr = %r.addr, log_index, "member added as voter");
                Ok(Response::new(AddMemberResponse { log_index }))
            }
            Err(nh) => {
                self.forward(nh, forwarded, r, |mut c, q| async move { c.add_member(q).await }).await.map(Response::new)
            }
        }
    }

    async fn remove_member(&self, req: Request<RemoveMemberRequest>) -> Result<Response<RemoveMemberResponse>, Status> {
        let forwarded = Self::is_forwarded(&req);
        let r = req.into_inner();
        let m = self.node.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let is_voter = membership.voter_ids().any(|v| v == r.id);
        let known = membership.get_node(&r.id).is_some();
        let result = if !known {
            Err(NotHere::Failed(Status::not_found(format!("node {} is not a member of the group", r.id))))
        } else if is_voter {
            self.change_membership(ChangeMembers::RemoveVoters([r.id].into())).await
        } else {
            self.change_membership(ChangeMembers::RemoveNodes([r.id].into())).await
        };
        match result {
            Ok(log_index) => {
                tracing::info!(member = r.id, log_index, "member removed");
                Ok(Response::new(RemoveMemberResponse { log_index }))
            }
            Err(nh) => self
                .forward(nh, forwarded, r, |mut c, q| async move { c.remove_member(q).await })
                .await
                .map(Response::new),
        }
    }

    async fn transfer_leader(
        &self,
        req: Request<TransferLeaderRequest>,
    ) -> Result<Response<TransferLeaderResponse>, Status> {
        let forwarded = Self::is_forwarded(&req);
        let r = req.into_inner();
        if !self.node.is_leader() {
            let nh = NotHere::Forward(self.node.leader_target());
            return self
                .forward(nh, forwarded, r, |mut c, q| async move { c.transfer_leader(q).await })
                .await
                .map(Response::new);
        }
        let bound = std::time::Duration::from_millis(2 * self.node.cfg.raft.election_timeout_max_ms + 2000);
        match crate::leadership::transfer(&self.node, Some(r.to), bound).await {
            Ok((leader_id, term)) => {
                tracing::info!(to = r.to, leader_id, term, "leadership handed over on request");
                Ok(Response::new(TransferLeaderResponse { leader_id, term }))
            }
            Err(e) => Err(Status::failed_precondition(format!("leadership not handed to node {}: {e}", r.to))),
        }
    }

    async fn register_cluster(
        &self,
        req: Request<RegisterClusterRequest>,
    ) -> Result<Response<RegisterClusterResponse>, Status> {
        let forwarded = Self::is_forwarded(&req);
        let r = req.into_inner();
        let name = parse_name(&r.name)?;
        let seeds = parse_seeds(&r.seeds)?;
        let settings = primus_types::ClusterSettings {
            automatic_failover: r.settings.as_ref().and_then(|s| s.automatic_failover),
            semi_sync: r.settings.as_ref().and_then(|s| s.semi_sync),
            failover: Default::default(),
        };
        // Discovery runs on the leader, right before it commits what it found.
        let topology = match &self.node.monitor {
            Some(mon) => {
                if !self.node.is_leader() {
                    let target = NotHere::Forward(self.node.leader_target());
                    return self
                        .forward(target, forwarded, r, |mut c, q| async move { c.register_cluster(q).await })
                        .await
                        .map(Response::new);
                }
                if self.node.read_state(|s| s.clusters.contains_key(&name)).1 {
                    return Err(rejection_status(Rejection::ClusterExists(name)));
                }
                let timeout = self.node.cfg.mysql.as_ref().map(|m| m.discovery_timeout()).unwrap_or_default();
                let found = crate::discovery::discover(&seeds, mon.connector.as_ref(), timeout)
                    .await
                    .map_err(|e| Status::failed_precondition(format!("cannot register {name}: {e}")))?;
                for (addr, err) in &found.unreachable {
                    tracing::warn!(cluster = %name, instance = %addr, error = %err, "discovered instance not reachable");
                }
                tracing::info!(cluster = %name, topology = %found.topology.summary(), "discovered");
                Some(found.topology)
            }
            None => None,
        };
        let cmd = Command::RegisterCluster { name, seeds, settings, topology };
        match self.write(cmd, r.actor.clone()).await {
            Ok(log_index) => Ok(Response::new(RegisterClusterResponse { log_index })),
            Err(nh) => self
                .forward(nh, forwarded, r, |mut c, q| async move { c.register_cluster(q).await })
                .await
                .map(Response::new),
        }
    }

    async fn unregister_cluster(
        &self,
        req: Request<UnregisterClusterRequest>,
    ) -> Result<Response<UnregisterClusterResponse>, Status> {
        let forwarded = Self::is_forwarded(&req);
        let r = req.into_inner();
        let name = parse_name(&r.name)?;
        match self.write(Command::UnregisterCluster { name }, r.actor.clone()).await {
            Ok(log_index) => Ok(Response::new(UnregisterClusterResponse { log_index })),
            Err(nh) => self
                .forward(nh, forwarded, r, |mut c, q| async move { c.unregister_cluster(q).await })
                .await
                .map(Response::new),
        }
    }

    async fn list_clusters(&self, req: Request<ListClustersRequest>) -> Result<Response<ListClustersResponse>, Status> {
        let forwarded = Self::is_forwarded(&req);
        let r = req.into_inner();
        if r.consistency() == ReadConsistency::Linearizable {
            if let Err(nh) = self.linearizable().await {
                return self
                    .forward(nh, forwarded, r, |mut c, q| async move { c.list_clusters(q).await })
                    .await
                    .map(Response::new);
            }
        }
        let (applied, clusters) = self.node.read_state(|s| {
            s.clusters
                .values()
                .map(|c| ClusterInfo {
                    name: c.name.to_string(),
                    seeds: c.seeds.iter().map(ToString::to_string).collect(),
                    settings: Some(primus_proto::v1::ClusterSettings {
                        automatic_failover: c.settings.automatic_failover,
                        semi_sync: c.settings.semi_sync,
                        failover: c.settings.failover.entries().into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
                    }),
                    registered_at_index: c.registered_at_index,
                    registered_at_ms: c.registered_at_ms,
                    registered_by: c.registered_by.clone(),
                })
                .collect()
        });
        Ok(Response::new(ListClustersResponse { clusters, applied_index: applied, served_by: self.node.id }))
    }

    async fn get_topology(&self, req: Request<GetTopologyRequest>) -> Result<Response<GetTopologyResponse>, Status> {
        let forwarded = Self::is_forwarded(&req);
        let r = req.into_inner();
        let name = parse_name(&r.cluster)?;
        let linearizable = r.consistency() == ReadConsistency::Linearizable;
        if linearizable {
            if let Err(nh) = self.linearizable().await {
                return self
                    .forward(nh, forwarded, r, |mut c, q| async move { c.get_topology(q).await })
                    .await
                    .map(Response::new);
            }
        }
        let rec = self.cluster_record(&name)?;
        let mon = self.node.monitor.as_ref().ok_or_else(|| {
            Status::failed_precondition(format!("node {} has no [mysql] section: it probes nothing", self.node.id))
        })?;
        let mut view = mon.view(&rec, linearizable);
        view.linearizable = linearizable;
        Ok(Response::new(view))
    }

    async fn audit(&self, req: Request<AuditRequest>) -> Result<Response<AuditResponse>, Status> {
        let forwarded = Self::is_forwarded(&req);
        let r = req.into_inner();
        if r.consistency() == ReadConsistency::Linearizable {
            if let Err(nh) = self.linearizable().await {
                return self
                    .forward(nh, forwarded, r, |mut c, q| async move { c.audit(q).await })
                    .await
                    .map(Response::new);
            }
        }
        let limit = if r.limit == 0 { 100 } else { r.limit as usize };
        let (_, mut records): (u64, Vec<primus_proto::v1::AuditRecord>) = self.node.read_state(|s| {
            s.audit
                .values()
                .rev()
                .take(limit)
                .map(|a| primus_proto::v1::AuditRecord {
                    index: a.index,
                    term: a.term,
                    time_ms: a.time_ms,
                    actor: a.actor.clone(),
                    via_node: a.via_node,
                    summary: a.summary.clone(),
                    outcome: a.outcome.clone(),
                })
                .collect()
        });
        records.reverse();
        Ok(Response::new(AuditResponse { records }))
    }

    async fn failover(&self, req: Request<FailoverRequest>) -> Result<Response<FailoverResponse>, Status> {
        let forwarded = Self::is_forwarded(&req);
        let r = req.into_inner();
        let name = parse_name(&r.cluster)?;
        let to = if r.to.is_empty() {
            None
        } else {
            Some(r.to.parse::<InstanceAddr>().map_err(|e| Status::invalid_argument(e.to_string()))?)
        };
        let request_id = parse_request_id(&r.request_id)?;
        let engine = self.engine()?;
        if !self.node.is_leader() {
            let nh = NotHere::Forward(self.node.leader_target());
            return self
                .forward(nh, forwarded, r, |mut c, q| async move { c.failover(q).await })
                .await
                .map(Response::new);
        }
        if let Some(rid) = &request_id {
            // A repeat must see what its first attempt committed: confirming leadership
            // also waits until this node has applied everything committed before.
            if let Err(nh) = self.linearizable().await {
                return self
                    .forward(nh, forwarded, r, |mut c, q| async move { c.failover(q).await })
                    .await
                    .map(Response::new);
            }
            if let Some(answer) = self.answer_repeat(&name, rid).await {
                return answer.map(Response::new);
            }
        }
        let kind = if r.switchover { FailoverKind::Switchover } else { FailoverKind::Manual };
        let ask = crate::failover::FailoverAsk {
            kind,
            to,
            actor: r.actor.clone(),
            accept_loss: r.accept_loss,
            request_id: request_id.clone(),
        };
        let result = engine.request(&name, ask).await;
        let rec = self.node.read_state(|s| s.clusters.get(&name).and_then(|c| c.history.last().cloned())).1;
        match result {
            Ok(id) => match rec.filter(|f| f.id == id) {
                Some(f) => Ok(Response::new(FailoverResponse { failover: Some(failover_view(&f)) })),
                None => Err(Status::internal(format!("failover {id} finished but its record is missing"))),
            },
            Err(e) => {
                // A repeat that overtook its first attempt (still deciding on this
                // leader, or its start proposed and committed only now): answer with
                // the failover the first attempt started.
                use crate::failover::FailoverError as E;
                let raced = matches!(
                    e,
                    E::Repeated { .. }
                        | E::Busy(_)
                        | E::Rejected(Rejection::FailoverInProgress(..) | Rejection::StaleEpoch { .. })
                );
                if let (true, Some(rid)) = (raced, &request_id) {
                    if let Some(answer) = self.answer_repeat(&name, rid).await {
                        return answer.map(Response::new);
                    }
                }
                Err(failover_status(e))
            }
        }
    }

    async fn history(&self, req: Request<HistoryRequest>) -> Result<Response<HistoryResponse>, Status> {
        let name = parse_name(&req.get_ref().cluster)?;
        let forwarded = Self::is_forwarded(&req);
        let r = req.into_inner();
        if let Err(nh) = self.linearizable().await {
            return self
                .forward(nh, forwarded, r, |mut c, q| async move { c.history(q).await })
                .await
                .map(Response::new);
        }
        let (applied, h) = self.node.read_state(|s| s.clusters.get(&name).map(|c| history_response(c)));
        let h = h.ok_or_else(|| cluster_not_found(&name))?;
        Ok(Response::new(HistoryResponse { applied_index: applied, served_by: self.node.id, ..h }))
    }

    async fn analysis(&self, req: Request<AnalysisRequest>) -> Result<Response<AnalysisResponse>, Status> {
        let forwarded = Self::is_forwarded(&req);
        let r = req.into_inner();
        let name = parse_name(&r.cluster)?;
        let engine = self.engine()?;
        // The leader's analysis is the one that decides: it sees every coordinator's view,
        // and it answers once it has confirmed with a quorum that it still leads.
        let linearizable = r.consistency() == ReadConsistency::Linearizable;
        if linearizable {
            if let Err(nh) = self.linearizable().await {
                return self
                    .forward(nh, forwarded, r, |mut c, q| async move { c.analysis(q).await })
                    .await
                    .map(Response::new);
            }
        }
        self.with_cluster(&name, |_| ())?;
        let (at_ms, epoch, a) = engine
            .analysis_now(&name)
            .ok_or_else(|| Status::unavailable(format!("no analysis of {name} yet; retry in a moment")))?;
        Ok(Response::new(AnalysisResponse {
            code: a.code.to_string(),
            subject: a.subject.map(|s| s.to_string()).unwrap_or_default(),
            evidence: a.evidence,
            actionable: a.actionable,
            at_ms,
            served_by: self.node.id,
            epoch,
            linearizable,
        }))
    }

    async fn ack(&self, req: Request<AckRequest>) -> Result<Response<LogIndexResponse>, Status> {
        let forwarded = Self::is_forwarded(&req);
        let r = req.into_inner();
        let name = parse_name(&r.cluster)?;
        let id = if r.id.is_empty() { None } else { Some(r.id.clone()) };
        let actor = r.actor.clone();
        self.commit_or_forward(Command::AckFailover { name, id }, actor, forwarded, r, |mut c, q| async move {
            c.ack(q).await
        })
        .await
    }

    async fn set_promotion_rule(
        &self,
        req: Request<SetPromotionRuleRequest>,
    ) -> Result<Response<LogIndexResponse>, Status> {
        let forwarded = Self::is_forwarded(&req);
        let r = req.into_inner();
        let instance = r.instance.parse::<InstanceAddr>().map_err(|e| Status::invalid_argument(e.to_string()))?;
        let name = self.cluster_named_or_of(&r.cluster, Some(&instance))?;
        let rule = r.rule.parse::<PromotionRule>().map_err(Status::invalid_argument)?;
        let actor = r.actor.clone();
        self.commit_or_forward(
            Command::SetPromotionRule { name, instance, rule },
            actor,
            forwarded,
            r,
            |mut c, q| async move { c.set_promotion_rule(q).await },
        )
        .await
    }

    async fn maintenance(&self, req: Request<MaintenanceRequest>) -> Result<Response<LogIndexResponse>, Status> {
        let forwarded = Self::is_forwarded(&req);
        let r = req.into_inner();
        let instance = if r.instance.is_empty() {
            None
        } else {
            Some(r.instance.parse::<InstanceAddr>().map_err(|e| Status::invalid_argument(e.to_string()))?)
        };
        let name = self.cluster_named_or_of(&r.cluster, instance.as_ref())?;
        let maintenance = if r.start {
            if r.reason.trim().is_empty() {
                return Err(Status::invalid_argument("maintenance needs a --reason"));
            }
            if r.duration_ms == 0 {
                return Err(Status::invalid_argument("maintenance needs a --duration"));
            }
            let now = crate::clock::now_ms();
            Some(Maintenance {
                reason: r.reason.clone(),
                by: r.actor.clone(),
                since_ms: now,
                until_ms: now + r.duration_ms,
            })
        } else {
            None
        };
        let actor = r.actor.clone();
        self.commit_or_forward(
            Command::SetMaintenance { name, instance, maintenance },
            actor,
            forwarded,
            r,
            |mut c, q| async move { c.maintenance(q).await },
        )
        .await
    }

    async fn rejoin(&self, req: Request<RejoinRequest>) -> Result<Response<RejoinResponse>, Status> {
        let forwarded = Self::is_forwarded(&req);
        let r = req.into_inner();
        let name = parse_name(&r.cluster)?;
        let addr = r.instance.parse::<InstanceAddr>().map_err(|e| Status::invalid_argument(e.to_string()))?;
        let engine = self.engine()?;
        if !self.node.is_leader() {
            let nh = NotHere::Forward(self.node.leader_target());
            return self
                .forward(nh, forwarded, r, |mut c, q| async move { c.rejoin(q).await })
                .await
                .map(Response::new);
        }
        match engine.rejoin(&name, &addr, &r.actor, r.discard_divergent).await {
            Ok(done) => Ok(Response::new(RejoinResponse {
                log_index: done.log_index,
                message: done.message,
                discarded_count: done.discarded.as_ref().map(|d| d.count()).unwrap_or(0),
                discarded_gtids: done.discarded.map(|d| d.gtids()).unwrap_or_default(),
            })),
            Err(e) => Err(failover_status(e)),
        }
    }

    async fn set_cluster_settings(
        &self,
        req: Request<SetClusterSettingsRequest>,
    ) -> Result<Response<LogIndexResponse>, Status> {
        let forwarded = Self::is_forwarded(&req);
        let r = req.into_inner();
        let name = parse_name(&r.cluster)?;
        if r.settings.is_empty() {
            return Err(Status::invalid_argument("no setting given: KEY=VALUE (an empty VALUE clears the key)"));
        }
        let settings: std::collections::BTreeMap<String, Option<String>> = r
            .settings
            .iter()
            .map(|(k, v)| (k.trim().to_string(), (!v.trim().is_empty()).then(|| v.trim().to_string())))
            .collect();
        // Checked here too, so that a typo is answered without a log entry.
        let mut check = primus_types::ClusterSettings::default();
        for (k, v) in &settings {
            check.set(k, v.as_deref()).map_err(Status::invalid_argument)?;
        }
        let actor = r.actor.clone();
        self.commit_or_forward(
            Command::SetClusterSettings { name, settings },
            actor,
            forwarded,
            r,
            |mut c, q| async move { c.set_cluster_settings(q).await },
        )
        .await
    }

    async fn relocate(&self, req: Request<RelocateRequest>) -> Result<Response<RelocateResponse>, Status> {
        let forwarded = Self::is_forwarded(&req);
        let r = req.into_inner();
        let addr = r.instance.parse::<InstanceAddr>().map_err(|e| Status::invalid_argument(e.to_string()))?;
        let below = r.below.parse::<InstanceAddr>().map_err(|e| Status::invalid_argument(e.to_string()))?;
        let name = self.cluster_named_or_of(&r.cluster, Some(&addr))?;
        let engine = self.engine()?;
        if !self.node.is_leader() {
            let nh = NotHere::Forward(self.node.leader_target());
            return self
                .forward(nh, forwarded, r, |mut c, q| async move { c.relocate(q).await })
                .await
                .map(Response::new);
        }
        // Refused before anything is proposed when the group cannot take the record yet.
        let (_, group) = self.node.read_state(|s| s.group_feature_level());
        let probe =
            Command::RelocateReplica { name: name.clone(), instance: addr.clone(), below: below.clone(), from: None };
        probe
            .check_feature_level(crate::features::gate_level(group))
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        match engine.relocate(&name, &addr, &below, &r.actor).await {
            Ok(done) => Ok(Response::new(RelocateResponse { log_index: done.log_index, message: done.message })),
            Err(e) => Err(failover_status(e)),
        }
    }

    async fn divergence(&self, req: Request<DivergenceRequest>) -> Result<Response<DivergenceResponse>, Status> {
        let forwarded = Self::is_forwarded(&req);
        let r = req.into_inner();
        let name = parse_name(&r.cluster)?;
        let addr = r.instance.parse::<InstanceAddr>().map_err(|e| Status::invalid_argument(e.to_string()))?;
        if r.consistency() == ReadConsistency::Linearizable {
            if let Err(nh) = self.linearizable().await {
                return self
                    .forward(nh, forwarded, r, |mut c, q| async move { c.divergence(q).await })
                    .await
                    .map(Response::new);
            }
        }
        let rec = self.cluster_record(&name)?;
        if !rec.topology.instances.contains_key(&addr) {
            return Err(Status::not_found(format!("{addr} is not an instance of {name}")));
        }
        let mut resp = DivergenceResponse { instance: addr.to_string(), served_by: self.node.id, ..Default::default() };
        let Some(f) = crate::divergence::replaced_by(&rec, &addr) else {
            return Ok(Response::new(resp));
        };
        resp.former_primary = true;
        resp.failover_id = f.id.clone();
        resp.epoch = f.epoch;
        resp.new_primary = f.candidate.to_string();
        resp.promotion_gtid = f.promotion_gtid.clone().unwrap_or_default();
        let mon = self.node.monitor.as_ref().ok_or_else(|| {
            Status::failed_precondition(format!("node {} has no [mysql] section: it probes nothing", self.node.id))
        })?;
        let probed = mon.probe_fresh(std::slice::from_ref(&addr)).await;
        let obs = match probed.into_iter().next().map(|p| p.result) {
            Some(Ok(o)) => o,
            Some(Err(e)) => return Err(Status::unavailable(format!("{addr} cannot be probed right now: {e}"))),
            None => return Err(Status::unavailable(format!("{addr} cannot be probed right now"))),
        };
        resp.executed = obs.gtid.executed().to_string();
        resp.observed_at_ms = obs.taken_at_ms;
        resp.flavor = obs.server.flavor.to_string().to_lowercase();
        match crate::divergence::check(&rec, &addr, &obs) {
            Some(Ok(d)) => {
                resp.divergent = !d.divergence.is_empty();
                resp.count = d.divergence.count();
                resp.count_exact = d.divergence.exact();
                resp.gtids = d.divergence.gtids();
            }
            Some(Err(e)) => return Err(Status::failed_precondition(e)),
            None => {}
        }
        Ok(Response::new(resp))
    }

    async fn forget_instance(&self, req: Request<ForgetInstanceRequest>) -> Result<Response<LogIndexResponse>, Status> {
        let forwarded = Self::is_forwarded(&req);
        let r = req.into_inner();
        let instance = r.instance.parse::<InstanceAddr>().map_err(|e| Status::invalid_argument(e.to_string()))?;
        let name = self.cluster_named_or_of(&r.cluster, Some(&instance))?;
        // The leader's own probe decides (followers forward): an instance that still
        // replicates would be discovered again at once, and it may be a replica that
        // was meant to stay.
        if self.node.is_leader() {
            if let Some(o) = self.node.monitor.as_ref().and_then(|m| m.own_observation(&instance)) {
                let running: Vec<String> = o
                    .replication
                    .iter()
                    .filter(|c| c.sql_running || c.io_running != primus_mysql::IoThreadState::No)
                    .map(|c| format!("{}:{}", c.source_host, c.source_port))
                    .collect();
                if !running.is_empty() {
                    return Err(Status::failed_precondition(format!(
                        "{instance} still replicates from {}: it would be found again at once; stop replication on \
                         it (STOP REPLICA; RESET REPLICA ALL) or shut it down, then forget it",
                        running.join(", ")
                    )));
                }
            }
        }
        let actor = r.actor.clone();
        self.commit_or_forward(Command::ForgetInstance { name, instance }, actor, forwarded, r, |mut c, q| async move {
            c.forget_instance(q).await
        })
        .await
    }

    async fn set_instance_datacenter(
        &self,
        req: Request<SetInstanceDatacenterRequest>,
    ) -> Result<Response<LogIndexResponse>, Status> {
        let forwarded = Self::is_forwarded(&req);
        let r = req.into_inner();
        let instance = r.instance.parse::<InstanceAddr>().map_err(|e| Status::invalid_argument(e.to_string()))?;
        let name = self.cluster_named_or_of(&r.cluster, Some(&instance))?;
        let dc = r.datacenter.trim();
        let datacenter = if dc.is_empty() { None } else { Some(dc.to_string()) };
        let actor = r.actor.clone();
        self.commit_or_forward(
            Command::SetInstanceDatacenter { name, instance, datacenter },
            actor,
            forwarded,
            r,
            |mut c, q| async move { c.set_instance_datacenter(q).await },
        )
        .await
    }

    async fn get_primary(&self, req: Request<GetPrimaryRequest>) -> Result<Response<GetPrimaryResponse>, Status> {
        let forwarded = Self::is_forwarded(&req);
        let r = req.into_inner();
        let name = parse_name(&r.cluster)?;
        let consistency = r.consistency();
        if consistency == ReadConsistency::Linearizable {
            if let Err(nh) = self.linearizable().await {
                return self
                    .forward(nh, forwarded, r, |mut c, q| async move { c.get_primary(q).await })
                    .await
                    .map(Response::new);
            }
        }
        let (applied_index, state) = self.node.read_state(|s| s.clusters.get(&name).map(|c| c.primary_state()));
        let state = state.ok_or_else(|| cluster_not_found(&name))?;
        let leader = self.node.leader_target();
        Ok(Response::new(GetPrimaryResponse {
            state: Some(primary_state_view(&state)),
            applied_index,
            served_by: self.node.id,
            leader_id: leader.as_ref().map(|l| l.0),
            leader_addr: leader.map(|l| l.1).unwrap_or_default(),
            consistency: consistency as i32,
        }))
    }

    type WatchPrimaryStream =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<PrimaryEvent, Status>> + Send + 'static>>;

    async fn watch_primary(
        &self,
        req: Request<WatchPrimaryRequest>,
    ) -> Result<Response<Self::WatchPrimaryStream>, Status> {
        let r = req.into_inner();
        let cluster = if r.cluster.is_empty() { None } else { Some(parse_name(&r.cluster)?) };
        if let Some(name) = &cluster {
            if self.node.feed.get(name).1.is_none() {
                return Err(cluster_not_found(name));
            }
        }
        let filter = crate::primary::WatchFilter {
            cluster,
            from_epoch: r.from_epoch,
            from_epochs: r.from_epochs.into_iter().collect(),
        };
        let (initial, rx) = self.node.feed.subscribe(&filter);
        tracing::debug!(cluster = ?filter.cluster.as_ref().map(|c| c.to_string()), from_epoch = filter.from_epoch,
            subscribers = self.node.feed.subscribers(), "watch opened");
        let stream = crate::primary::watch_stream(
            initial,
            rx,
            filter,
            self.node.raft.clone(),
            std::time::Duration::from_millis(self.node.cfg.watch.leaderless_close_ms),
        );
        Ok(Response::new(Box::pin(stream)))
    }

    async fn register_agent(&self, req: Request<RegisterAgentRequest>) -> Result<Response<LogIndexResponse>, Status> {
        let inbound = Self::is_forwarded(&req);
        let r = req.into_inner();
        let name = parse_name(&r.cluster)?;
        let instance = r.instance.parse::<InstanceAddr>().map_err(|e| Status::invalid_argument(e.to_string()))?;
        if r.agent_id.trim().is_empty() {
            return Err(Status::invalid_argument("agent_id must not be empty"));
        }
        if r.release.len() > MAX_RELEASE_REASON {
            return Err(Status::invalid_argument(format!(
                "release must be at most {MAX_RELEASE_REASON} bytes, got {}",
                r.release.len()
            )));
        }
        let release = (!r.release.is_empty()).then(|| r.release.clone());
        // Checked where it is committed (the leader, whose configuration decides). A
        // release changes no lease settings.
        if self.node.is_leader() && release.is_none() {
            self.check_agent_timings(&r, &name, &instance)?;
        }
        let opt = |v: u64| (v > 0).then_some(v);
        let cmd = Command::RegisterAgent {
            name,
            instance,
            agent_id: r.agent_id.clone(),
            ttl_ms: opt(r.ttl_ms),
            fence_timeout_ms: opt(r.fence_timeout_ms),
            // This leader grants leases only under a margin Raft records (lease.rs).
            margin_ms: Some(self.node.cfg.fencing.lease_margin_ms),
            of_registration: release.as_ref().map(|_| r.registration_index),
            release,
        };
        let actor = r.actor.clone();
        self.commit_or_forward(cmd, actor, inbound, r, |mut c, q| async move { c.register_agent(q).await }).await
    }

    async fn renew_lease(&self, req: Request<RenewLeaseRequest>) -> Result<Response<RenewLeaseResponse>, Status> {
        let received_at = tokio::time::Instant::now();
        let inbound = Self::is_forwarded(&req);
        let r = req.into_inner();
        let name = parse_name(&r.cluster)?;
        let instance = r.instance.parse::<InstanceAddr>().map_err(|e| Status::invalid_argument(e.to_string()))?;
        if r.ttl_ms == 0 {
            return Err(Status::invalid_argument("ttl_ms must be greater than 0"));
        }
        if !self.node.is_leader() {
            let nh = NotHere::Forward(self.node.leader_target());
            return self
                .forward(nh, inbound, r, |mut c, q| async move { c.renew_lease(q).await })
                .await
                .map(Response::new);
        }
        let answer = |granted: bool, ttl_ms: u64, epoch: u64, primary: String, reason: &str, fence_now: bool| {
            Ok(Response::new(RenewLeaseResponse {
                granted,
                ttl_ms,
                epoch,
                primary,
                reason: reason.to_string(),
                fence_now,
                served_by: self.node.id,
            }))
        };
        // A leader cut off from its quorum may already have been replaced: it must
        // not extend anybody's right to take writes.
        if !crate::context::NodeCtx::leads_with_quorum(
            &self.node.raft,
            self.node.id,
            self.node.cfg.raft.election_timeout_min_ms,
        ) {
            return answer(false, 0, 0, String::new(), "not_leader", false);
        }
        let ttl = std::time::Duration::from_millis(r.ttl_ms);
        let limits = self.node.leases.limits();
        // Decide under the state lock from the few fields that matter: a renewal comes
        // every few hundred ms per agent, so the cluster record is not copied.
        let decided = self.node.read_state(|s| crate::lease::verdict(s, &name, &instance, &r.agent_id, ttl, limits)).1;
        let Some((epoch, primary, verdict)) = decided else {
            return answer(false, 0, 0, String::new(), "unknown_cluster", false);
        };
        if let crate::lease::LeaseVerdict::FailoverInProgress(id) = &verdict {
            tracing::warn!(cluster = %name, instance = %instance, epoch, failover_id = %id,
                agent = %r.agent_id, "lease refused: a failover of this primary is in progress");
        }
        let a = self.node.leases.answer(&name, &instance, ttl, received_at, &verdict);
        answer(a.granted, a.ttl_ms, epoch, primary, a.reason, a.fence_now)
    }

    async fn set_semi_sync(&self, req: Request<SetSemiSyncRequest>) -> Result<Response<LogIndexResponse>, Status> {
        let inbound = Self::is_forwarded(&req);
        let r = req.into_inner();
        let name = parse_name(&r.cluster)?;
        let actor = r.actor.clone();
        self.commit_or_forward(
            Command::SetSemiSync { name, enabled: r.enabled },
            actor,
            inbound,
            r,
            |mut c, q| async move { c.set_semi_sync(q).await },
        )
        .await
    }

    async fn set_automatic_failover(
        &self,
        req: Request<SetAutomaticFailoverRequest>,
    ) -> Result<Response<LogIndexResponse>, Status> {
        let forwarded = Self::is_forwarded(&req);
        let r = req.into_inner();
        let actor = r.actor.clone();
        let name = parse_name(&r.cluster)?;
        self.commit_or_forward(
            Command::SetAutomaticFailover { name, enabled: r.enabled },
            actor,
            forwarded,
            r,
            |mut c, q| async move { c.set_automatic_failover(q).await },
        )
        .await
    }

    async fn set_global_automatic_failover(
        &self,
        req: Request<SetGlobalAutomaticFailoverRequest>,
    ) -> Result<Response<LogIndexResponse>, Status> {
        let forwarded = Self::is_forwarded(&req);
        let r = req.into_inner();
        let reason = r.reason.trim().to_string();
        if !r.enabled && reason.is_empty() {
            return Err(Status::invalid_argument(
                "switching automatic failover off for every cluster needs a reason (--reason): it is shown in status \
                 and the audit until someone switches it back on",
            ));
        }
        let actor = r.actor.clone();
        self.commit_or_forward(
            Command::SetGlobalAutomaticFailover { enabled: r.enabled, reason: (!reason.is_empty()).then_some(reason) },
            actor,
            forwarded,
            r,
            |mut c, q| async move { c.set_global_automatic_failover(q).await },
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused() -> Status {
        Status::from_error(Box::new(tonic::ConnectError(Box::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        )))))
    }

    #[test]
    fn only_a_forward_that_never_left_is_unavailable_to_the_caller() {
        // Never reached the leader: the caller may repeat it.
        assert_eq!(transport_failure(&refused()), Some(true));
        // Broke with the request sent: the leader may have acted on it.
        let broken = Status::from_error(Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionReset)));
        assert_eq!(transport_failure(&broken), Some(false));
        // The leader's own answers pass through as they are.
        assert_eq!(transport_failure(&Status::unavailable("node 3 knows no leader")), None);
        assert_eq!(transport_failure(&Status::not_found("cluster c is not registered")), None);
    }

    #[test]
    fn a_failover_interrupted_after_its_start_is_not_one_to_ask_for_again() {
        use crate::failover::FailoverError;
        let s = failover_status(FailoverError::NotLeader("no quorum answered".into()));
        assert_eq!(s.code(), tonic::Code::Unavailable, "nothing was started: retry elsewhere");
        let s = failover_status(FailoverError::Interrupted { id: "c-e2".into(), reason: "no quorum answered".into() });
        assert_eq!(s.code(), tonic::Code::Unknown, "{s:?}");
        assert!(s.message().contains("c-e2") && s.message().contains("the new leader resumes it"), "{s:?}");
    }

    #[test]
    fn each_failover_error_answers_with_the_code_of_what_a_client_may_do() {
        use crate::failover::FailoverError as E;
        use tonic::Code;
        let c: ClusterName = "c".parse().unwrap();
        let i: InstanceAddr = "h:1".parse().unwrap();
        let cases = [
            (E::NotLeader("not the leader (leader: Some(2))".into()), Code::Unavailable),
            (E::UnknownCluster(c.clone()), Code::NotFound),
            (E::UnknownInstance { cluster: c.clone(), instance: i.clone() }, Code::NotFound),
            (E::InvalidRequest("h:1 is the primary of c: name a replica to promote".into()), Code::InvalidArgument),
            (E::Busy("failover c-e2 is already in progress".into()), Code::Aborted),
            (E::Refused("no safe candidate: no replica can be promoted".into()), Code::FailedPrecondition),
            (
                E::Refused("no-loss mode: promoting h:2 could lose acknowledged transactions".into()),
                Code::FailedPrecondition,
            ),
            (E::Rejected(Rejection::StaleEpoch { name: c.clone(), got: 3, want: 4 }), Code::Aborted),
            (E::Rejected(Rejection::ClusterNotFound(c.clone())), Code::NotFound),
            (
                E::Stopped {
                    id: "c-e2".into(),
                    outcome: FailoverOutcome::Aborted("fence: cannot fence h:1".into()),
                    reason: "fence: cannot fence h:1".into(),
                },
                Code::Aborted,
            ),
            (
                E::Stopped {
                    id: "c-e2".into(),
                    outcome: FailoverOutcome::Failed("repoint: refused".into()),
                    reason: "repoint: refused".into(),
                },
                Code::FailedPrecondition,
            ),
            (E::CommitTimeout(5000), Code::DeadlineExceeded),
            (E::Raft("raft stopped".into()), Code::Internal),
            (E::Internal("failover task failed: panicked".into()), Code::Internal),
            (E::Interrupted { id: "c-e2".into(), reason: "no quorum answered".into() }, Code::Unknown),
        ];
        for (e, code) in cases {
            let text = e.to_string();
            let s = failover_status(e);
            assert_eq!(s.code(), code, "{text}");
            assert_eq!(s.message(), text, "the message is the error's");
        }
        // The refusals keep their wording ("refused: …"), which operators and scripts read.
        let s = failover_status(E::Busy("failover c-e2 is already in progress".into()));
        assert_eq!(s.message(), "refused: failover c-e2 is already in progress");
        // Only "not the leader" is an answer the client library retries a write on.
        let s = failover_status(E::NotLeader("no quorum answered".into()));
        assert!(s.message().contains("is not the leader"), "the client's no-leader wording: {s:?}");
    }
}
