//! Handing leadership over to a caught-up follower (Raft thesis 3.10): before this node
//! stops on SIGTERM, and on an operator's `primusctl members transfer-leader ID`.
//!
//! openraft 0.9 has no transfer of its own. The leader waits until the target holds its
//! whole log, then asks it (peer RPC `TimeoutNow`) to start an election at once. The
//! target wins with the old leader's vote (a leader grants one once its own leader lease,
//! `election_timeout_max` after it was elected, has passed) and, in larger groups, the
//! others'. The group is then without a leader for a vote round, not for a whole
//! election timeout plus leader lease (1-2 s across datacenters, longer than an agent's
//! lease).

use crate::context::NodeCtx;
use primus_proto::raft::raft_client::RaftClient;
use primus_proto::raft::TimeoutNowRequest;
use primus_types::NodeId;
use std::time::Duration;
use tokio::time::Instant;

/// Hand leadership to `to` (or to the most caught-up voter) and wait until another node
/// leads; returns the new leader and its term. When the election this starts is lost
/// (this node elected again, e.g. it had led for less than its leader lease and refused
/// its vote), it tries again until `timeout`.
pub async fn transfer(ctx: &NodeCtx, to: Option<NodeId>, timeout: Duration) -> Result<(NodeId, u64), String> {
    let deadline = Instant::now() + timeout;
    loop {
        match attempt(ctx, to, deadline).await {
            Attempt::Done(leader, term) => return Ok((leader, term)),
            Attempt::Failed(e) => return Err(e),
            Attempt::LeadingAgain(term) if Instant::now() < deadline => {
                tracing::info!(term, "leadership transfer: this node was elected again; trying once more");
            }
            Attempt::LeadingAgain(term) => {
                return Err(format!("this node was elected again (term {term}) within {} ms", timeout.as_millis()))
            }
        }
    }
}

enum Attempt {
    Done(NodeId, u64),
    /// The target lost; this node leads again in a later term.
    LeadingAgain(u64),
    Failed(String),
}

async fn attempt(ctx: &NodeCtx, to: Option<NodeId>, deadline: Instant) -> Attempt {
    match attempt_inner(ctx, to, deadline).await {
        Ok(a) => a,
        Err(e) => Attempt::Failed(e),
    }
}

async fn attempt_inner(ctx: &NodeCtx, to: Option<NodeId>, deadline: Instant) -> Result<Attempt, String> {
    let me = ctx.id;
    let timeout = deadline.saturating_duration_since(Instant::now());
    // This node grants the target's vote only once its own leader lease (openraft's:
    // `election_timeout_max` after it was elected) has passed; before that the target's
    // election fails and leadership goes to whoever wins the next one.
    let lease_end = ctx.leases.leader_since() + Duration::from_millis(ctx.cfg.raft.election_timeout_max_ms + 20);
    if lease_end > deadline {
        return Err(format!(
            "node {me} was elected less than raft.election_timeout_max_ms ago and cannot hand over within {} ms",
            timeout.as_millis()
        ));
    }
    tokio::time::sleep_until(lease_end).await;
    let (term, target, addr) = loop {
        let m = ctx.raft.metrics().borrow().clone();
        if m.current_leader != Some(me) || m.state != openraft::ServerState::Leader {
            return Err(format!("node {me} is not the leader (leader {:?})", m.current_leader));
        }
        let timeout = deadline.saturating_duration_since(Instant::now());
        let last = m.last_log_index.unwrap_or(0);
        let membership = m.membership_config.membership();
        let voters: Vec<NodeId> = membership.voter_ids().filter(|v| *v != me).collect();
        let matched =
            |v: NodeId| m.replication.as_ref().and_then(|r| r.get(&v).cloned().flatten()).map_or(0, |l| l.index);
        let target = match to {
            Some(t) if t == me => return Err(format!("node {me} already leads")),
            Some(t) if !voters.contains(&t) => return Err(format!("node {t} is not a voter of the group")),
            Some(t) => t,
            None => *voters
                .iter()
                .max_by_key(|v| (matched(**v), std::cmp::Reverse(**v)))
                .ok_or_else(|| "no other voter to hand leadership to".to_string())?,
        };
        if matched(target) >= last {
            let addr = membership
                .get_node(&target)
                .map(|n| n.addr.clone())
                .ok_or_else(|| format!("node {target} has no address"))?;
            break (m.current_term, target, addr);
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "node {target} did not catch up with log index {last} within {} ms (it holds {})",
                timeout.as_millis(),
                matched(target)
            ));
        }
        let _ = ctx.raft.trigger().heartbeat().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let last = ctx.raft.metrics().borrow().last_log_index.unwrap_or(0);
    let ch = ctx.channel_to(&addr).map_err(|s| s.message().to_string())?;
    let mut req = tonic::Request::new(TimeoutNowRequest { from: me, term, last_log_index: last });
    req.set_timeout(Duration::from_millis(ctx.cfg.raft.rpc_timeout_ms));
    ctx.peer.authorize(&mut req);
    let reply = RaftClient::new(ch)
        .timeout_now(req)
        .await
        .map_err(|s| format!("node {target} at {addr}: {}", primus_raft::security::status_detail(&s)))?
        .into_inner();
    if !reply.started {
        return Err(format!("node {target} refused: {}", reply.reason));
    }
    tracing::info!(to = target, term, "leadership transfer: the target started an election");
    let mut rx = ctx.raft.metrics();
    loop {
        {
            let m = rx.borrow();
            if let Some(l) = m.current_leader.filter(|l| *l != me) {
                return Ok(Attempt::Done(l, m.current_term));
            }
            if m.current_leader == Some(me) && m.current_term > term && m.state == openraft::ServerState::Leader {
                return Ok(Attempt::LeadingAgain(m.current_term));
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || tokio::time::timeout(left, rx.changed()).await.is_err() {
            return Err(format!("no new leader within {} ms", timeout.as_millis()));
        }
    }
}
