//! First start with an empty `data_dir` and `initial_members`: initialise the group,
//! join the group that already exists, or refuse to start.
//!
//! A node whose `data_dir` was wiped cannot tell, from its own side, whether it is a
//! founding member starting for the first time (or late) or a member that lost its log
//! and its vote. Coming back as the same voter breaks Raft: it may vote twice in a term,
//! and with its log gone it may help elect a leader that lacks committed entries
//! (committed on {A, B}; B wiped; C, behind, asks for votes; the empty B grants; C leads
//! without the entries). So before it initialises, it asks every other initial member
//! (peer RPC `JoinCheck`, bounded by `raft.connect_timeout_ms` + `raft.rpc_timeout_ms`,
//! over the node's TLS and token), and meanwhile refuses all Raft traffic
//! ([`primus_raft::Admission`]) while still answering other nodes' `JoinCheck`s.
//!
//! The group's own knowledge decides: its leader records, once per node id, every member
//! it sees hold log entries (`Command::MemberSeen`, see [`spawn_recorder`]). From the
//! answers ([`decide`]):
//!
//! 1. a peer says the group recorded this id → refuse (exit 2): the node lost its data
//!    and must rejoin under a new id with `primusctl members add`;
//! 2. a peer's membership lacks this id → refuse too (ids are never reused);
//! 3. a peer runs an older primusd (no `JoinCheck`) → wait: its group records nothing yet;
//! 4. a peer belongs to a group that never saw this id hold entries → join without
//!    initialising (a founding member starting late): the leader replicates to it;
//! 5. nobody knows a group, and this node plus the peers that answered "fresh" are a
//!    majority of `initial_members` → initialise (a first start; every founding member
//!    may call openraft's `initialize` with the same membership);
//! 6. otherwise wait and ask again (after 25 ms, doubling up to [`RETRY`]), logging why: fewer than a majority
//!    could not elect a leader anyway, so waiting costs a first start nothing.
//!
//! Not covered (docs/operations.md, "A coordinator's data_dir was lost"): a majority of
//! the initial members with empty data_dirs while the others are down looks exactly like
//! a first start; a member wiped within the moment between receiving its first entries
//! and the leader recording it; and a node started without `initial_members` (it has no
//! one to ask).

use crate::config::{Config, ConfigError};
use crate::context::NodeCtx;
use crate::ExitError;
use openraft::ServerState;
use primus_proto::raft::raft_client::RaftClient;
use primus_proto::raft::{JoinCheckReply, JoinCheckRequest};
use primus_types::{Command, NodeId, Origin, Request};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How often a waiting node asks its peers again.
pub const RETRY: Duration = Duration::from_millis(500);

/// The first retries come sooner (doubling up to [`RETRY`]): founding members started
/// together are usually all listening a few ms later, and until this node decides it
/// takes no part in Raft.
const FIRST_RETRY: Duration = Duration::from_millis(25);
/// A waiting node repeats an unchanged reason this often.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// What one other initial member answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerView {
    /// No answer: down, not listening yet, refused us (TLS, token), timed out.
    Unreachable(String),
    /// A primusd without `JoinCheck` (an older release).
    Older,
    /// No Raft state, and no group found yet (a founding member starting too).
    Fresh,
    /// A member of a group. `seen`: the group recorded the asking node as holding log
    /// entries. `member`: whether the asking node is in its membership, when it knows one.
    InGroup { seen: bool, member: Option<bool> },
}

impl std::fmt::Display for PeerView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerView::Unreachable(e) => write!(f, "no answer ({e})"),
            PeerView::Older => f.write_str("runs an older primusd without JoinCheck"),
            PeerView::Fresh => f.write_str("empty too, no group yet"),
            PeerView::InGroup { seen, member } => {
                write!(f, "in a group (this node seen with entries: {seen}, a member: ")?;
                match member {
                    Some(m) => write!(f, "{m})"),
                    None => f.write_str("membership not known yet)"),
                }
            }
        }
    }
}

impl PeerView {
    pub fn of(reply: &JoinCheckReply) -> PeerView {
        if !reply.in_group {
            return PeerView::Fresh;
        }
        PeerView::InGroup { seen: reply.seen, member: reply.membership_known.then_some(reply.member) }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The group recorded this id as holding log entries: its data was lost.
    Seen,
    /// The group's membership does not hold this id.
    NotMember,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// A first start: call `initialize` with `initial_members`.
    Initialise,
    /// A group exists and never saw this node hold entries: take part without initialising.
    Join { by: NodeId },
    /// Exit with code 2.
    Refuse { by: NodeId, reason: Refusal },
    /// Ask again later.
    Wait { unanswered: Vec<NodeId>, older: Vec<NodeId> },
}

/// What a node with an empty `data_dir` does, from the answers of the other initial
/// members (`founders` lists every initial member, `me` included; a founder missing from
/// `answers` did not answer). See the module docs for the rules.
pub fn decide(me: NodeId, founders: &[NodeId], answers: &BTreeMap<NodeId, PeerView>) -> Decision {
    let in_group = |pick: &dyn Fn(bool, Option<bool>) -> bool| {
        answers.iter().find_map(|(id, v)| match v {
            PeerView::InGroup { seen, member } if pick(*seen, *member) => Some(*id),
            _ => None,
        })
    };
    // A removed member is told it is not one (it has nothing left to remove).
    if let Some(by) = in_group(&|seen, member| seen && member != Some(false)) {
        return Decision::Refuse { by, reason: Refusal::Seen };
    }
    if let Some(by) = in_group(&|_, member| member == Some(false)) {
        return Decision::Refuse { by, reason: Refusal::NotMember };
    }
    let others = || founders.iter().copied().filter(|id| *id != me);
    let older: Vec<NodeId> = others().filter(|id| answers.get(id) == Some(&PeerView::Older)).collect();
    let unanswered: Vec<NodeId> =
        others().filter(|id| matches!(answers.get(id), None | Some(PeerView::Unreachable(_)))).collect();
    if !older.is_empty() {
        return Decision::Wait { unanswered, older };
    }
    if let Some(by) = in_group(&|_, _| true) {
        return Decision::Join { by };
    }
    let fresh = 1 + others().filter(|id| answers.get(id) == Some(&PeerView::Fresh)).count();
    if fresh * 2 > founders.len() {
        return Decision::Initialise;
    }
    Decision::Wait { unanswered, older }
}

/// How a first start goes on after [`first_start`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    Initialise,
    Join { by: NodeId },
}

/// Ask the other initial members until [`decide`] says something other than wait.
/// Returns the configuration error to exit with (code 2) when the node must not start.
pub async fn first_start(ctx: &NodeCtx, config_path: &Path) -> Result<Start, ExitError> {
    let me = ctx.id;
    let founders: Vec<NodeId> = ctx.cfg.initial_members.iter().map(|m| m.id).collect();
    let peers: Vec<(NodeId, String)> =
        ctx.cfg.initial_members.iter().filter(|m| m.id != me).map(|m| (m.id, m.addr.clone())).collect();
    let mut logged: Option<(Instant, Decision)> = None;
    let mut retry = FIRST_RETRY;
    loop {
        let asked = peers.iter().map(|(id, addr)| async move { (*id, ask(ctx, *id, addr).await) });
        let answers: BTreeMap<NodeId, PeerView> = futures::future::join_all(asked).await.into_iter().collect();
        let decision = decide(me, &founders, &answers);
        let described = describe(&answers);
        match decision {
            Decision::Initialise => {
                tracing::info!(answers = %described, "empty data_dir: no initial member knows a group; initialising it");
                return Ok(Start::Initialise);
            }
            Decision::Join { by } => {
                tracing::info!(
                    by,
                    answers = %described,
                    "empty data_dir: the group exists and never saw this node hold log entries; taking part without \
                     initialising (a founding member starting late), waiting to be replicated to"
                );
                return Ok(Start::Join { by });
            }
            Decision::Refuse { by, reason } => {
                tracing::error!(by, answers = %described, "empty data_dir, but the group knows this node: refusing to start");
                return Err(refusal(&ctx.cfg, config_path, by, reason));
            }
            Decision::Wait { ref older, .. } => {
                let repeat = logged.as_ref().is_some_and(|(at, d)| *d == decision && at.elapsed() < LOG_EVERY);
                if !repeat {
                    if older.is_empty() {
                        tracing::warn!(
                            answers = %described,
                            "empty data_dir: waiting for a majority of initial_members to answer (or one that knows \
                             the group) before taking part in Raft"
                        );
                    } else {
                        tracing::warn!(
                            answers = %described,
                            "empty data_dir: waiting before taking part in Raft: an initial member runs an older \
                             primusd, which cannot say whether it saw this node hold log entries; upgrade it"
                        );
                    }
                    logged = Some((Instant::now(), decision));
                }
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(RETRY);
            }
        }
    }
}

fn describe(answers: &BTreeMap<NodeId, PeerView>) -> String {
    let parts: Vec<String> = answers.iter().map(|(id, v)| format!("node {id}: {v}")).collect();
    if parts.is_empty() {
        "no other initial member".into()
    } else {
        parts.join("; ")
    }
}

/// The one-line error a refused node exits with: what happened and how to rejoin.
pub fn refusal(cfg: &Config, config_path: &Path, by: NodeId, reason: Refusal) -> ExitError {
    let me = cfg.node_id;
    let dir = cfg.data_dir.display();
    let rejoin = "rejoin as a new member: set a new node_id that was never used, remove [[initial_members]] from \
                  this config, start primusd, then run `primusctl members add NEW_ID ADDR`";
    let message = match reason {
        Refusal::Seen => format!(
            "data_dir {dir} holds no Raft state, but node {by} says the group recorded node {me} as holding log \
             entries: its log and its vote were lost, and coming back as node {me} could lose committed entries; \
             {rejoin} and `primusctl members remove {me}` (see docs/operations.md, \"A coordinator's data_dir was \
             lost\")"
        ),
        Refusal::NotMember => format!(
            "data_dir {dir} holds no Raft state, and node {me} is not a member of the group node {by} belongs to \
             (node ids are never reused); {rejoin} (see docs/operations.md, \"A coordinator's data_dir was lost\")"
        ),
    };
    ExitError::config(ConfigError::Invalid { path: config_path.to_path_buf(), key: "node_id".into(), message })
}

/// One `JoinCheck` of peer `id` at `addr`, bounded by the connect and RPC timeouts.
async fn ask(ctx: &NodeCtx, id: NodeId, addr: &str) -> PeerView {
    match join_check(ctx, id, addr).await {
        Ok(reply) if reply.node_id != id => {
            PeerView::Unreachable(format!("{addr} answered as node {}, not node {id}", reply.node_id))
        }
        Ok(reply) => PeerView::of(&reply),
        Err(status) if status.code() == tonic::Code::Unimplemented => PeerView::Older,
        Err(status) => PeerView::Unreachable(primus_raft::security::status_detail(&status)),
    }
}

pub(crate) async fn join_check(ctx: &NodeCtx, id: NodeId, addr: &str) -> Result<JoinCheckReply, tonic::Status> {
    let rpc = Duration::from_millis(ctx.cfg.raft.rpc_timeout_ms);
    let bound = rpc + Duration::from_millis(ctx.cfg.raft.connect_timeout_ms);
    let ch = ctx.channel_to(addr)?;
    let mut req = tonic::Request::new(JoinCheckRequest { from: ctx.id, to: id });
    req.set_timeout(rpc);
    ctx.peer.authorize(&mut req);
    match tokio::time::timeout(bound, RaftClient::new(ch).join_check(req)).await {
        Ok(r) => r.map(tonic::Response::into_inner),
        Err(_) => Err(tonic::Status::deadline_exceeded(format!("no answer within {} ms", bound.as_millis()))),
    }
}

/// This node's answer to other nodes' `JoinCheck`.
pub struct Answerer {
    ctx: Arc<NodeCtx>,
    /// Set once this node is part of a group: it recovered from its data_dir, or its
    /// own first start decided to initialise or to join.
    joined: Arc<AtomicBool>,
}

impl Answerer {
    pub fn new(ctx: Arc<NodeCtx>, joined: Arc<AtomicBool>) -> Self {
        Answerer { ctx, joined }
    }
}

impl primus_raft::JoinCheckAnswer for Answerer {
    fn join_check(&self, from: NodeId) -> JoinCheckReply {
        let ctx = &self.ctx;
        let (_, members_seen) = ctx.read_state(|r| r.members_seen.clone());
        let rx = ctx.raft.metrics();
        let m = rx.borrow();
        let membership = m.membership_config.membership();
        let membership_known = membership.nodes().next().is_some();
        // The leader knows what it replicated before the group recorded it.
        let replicated = m.state == ServerState::Leader
            && m.current_leader == Some(ctx.id)
            && m.replication.as_ref().and_then(|r| r.get(&from).copied().flatten()).is_some_and(|l| l.index > 0);
        JoinCheckReply {
            node_id: ctx.id,
            in_group: self.joined.load(Ordering::SeqCst) || membership_known || m.last_log_index.is_some(),
            seen: replicated || members_seen.contains(&from),
            membership_known,
            member: membership.get_node(&from).is_some(),
            leader_id: m.current_leader.unwrap_or(0),
            last_log_index: m.last_log_index.unwrap_or(0),
            members_seen: members_seen.into_iter().collect(),
            feature_level: crate::features::known_level(),
            group_feature_level: ctx.read_state(|r| r.feature_level).1,
        }
    }
}

/// The members (voters and learners) the leader sees holding log entries that the group
/// has not recorded yet: a follower whose matched index is above 0, or the leader itself
/// with entries past the initial membership (index 0).
pub fn unrecorded_holders(
    me: NodeId,
    my_last_index: Option<u64>,
    matched: &BTreeMap<NodeId, u64>,
    members: &BTreeSet<NodeId>,
    recorded: &BTreeSet<NodeId>,
) -> Vec<NodeId> {
    members
        .iter()
        .copied()
        .filter(|id| !recorded.contains(id))
        .filter(|id| if *id == me { my_last_index.unwrap_or(0) > 0 } else { matched.get(id).copied().unwrap_or(0) > 0 })
        .collect()
}

/// On every node: while it leads, record each member it sees holding log entries
/// (`MemberSeen`, once per node id), so that the member is recognised if it ever starts
/// again with an empty data_dir.
pub fn spawn_recorder(ctx: Arc<NodeCtx>) {
    tokio::spawn(async move {
        let tick = Duration::from_millis(ctx.cfg.raft.heartbeat_ms.max(10));
        loop {
            tokio::time::sleep(tick).await;
            record(&ctx).await;
        }
    });
}

async fn record(ctx: &NodeCtx) {
    let me = ctx.id;
    let (last, matched, members) = {
        let rx = ctx.raft.metrics();
        let m = rx.borrow();
        if m.state != ServerState::Leader || m.current_leader != Some(me) {
            return;
        }
        let matched: BTreeMap<NodeId, u64> = m
            .replication
            .as_ref()
            .map(|r| r.iter().filter_map(|(id, l)| l.map(|l| (*id, l.index))).collect())
            .unwrap_or_default();
        let members: BTreeSet<NodeId> = m.membership_config.membership().nodes().map(|(id, _)| *id).collect();
        (m.last_log_index, matched, members)
    };
    let (_, (recorded, group_level)) = ctx.read_state(|r| (r.members_seen.clone(), r.group_feature_level()));
    let todo = unrecorded_holders(me, last, &matched, &members, &recorded);
    // Until every member runs a release that decodes MemberSeen (the group's feature
    // level, raised by crate::features), nothing is recorded: an older member would stop
    // catching up at the entry.
    let gate = crate::features::gate_level(group_level);
    if todo.is_empty() || (Command::MemberSeen { id: me }).check_feature_level(gate).is_err() {
        return;
    }
    for id in todo {
        let req = Request::new(Command::MemberSeen { id }, Origin { actor: "primusd".into(), via_node: me });
        match tokio::time::timeout(ctx.cfg.raft.write_timeout(), ctx.raft.client_write(req)).await {
            Ok(Ok(_)) => tracing::info!(node = id, "recorded: member holds Raft log entries"),
            Ok(Err(e)) => {
                tracing::debug!(node = id, error = %e, "member not recorded (will retry)");
                return;
            }
            Err(_) => {
                tracing::debug!(node = id, "member not recorded in time (will retry)");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answers(list: &[(NodeId, PeerView)]) -> BTreeMap<NodeId, PeerView> {
        list.iter().cloned().collect()
    }
    fn down() -> PeerView {
        PeerView::Unreachable("connection refused".into())
    }
    fn group(seen: bool, member: Option<bool>) -> PeerView {
        PeerView::InGroup { seen, member }
    }

    #[test]
    fn a_first_start_initialises_once_a_majority_is_fresh() {
        let three = [1, 2, 3];
        // Everyone up at once.
        let all = answers(&[(2, PeerView::Fresh), (3, PeerView::Fresh)]);
        assert_eq!(decide(1, &three, &all), Decision::Initialise);
        // Node 3 not started yet: 1 and 2 are a majority (a group needs no more to elect).
        let two = answers(&[(2, PeerView::Fresh), (3, down())]);
        assert_eq!(decide(1, &three, &two), Decision::Initialise);
        // Alone: wait (it could not elect a leader either), naming who did not answer.
        let alone = answers(&[(2, down()), (3, down())]);
        assert_eq!(decide(1, &three, &alone), Decision::Wait { unanswered: vec![2, 3], older: vec![] });
        assert_eq!(decide(1, &three, &BTreeMap::new()), Decision::Wait { unanswered: vec![2, 3], older: vec![] });
        // Five nodes: three fresh ones are needed.
        let five = [1, 2, 3, 4, 5];
        let two_of_five = answers(&[(2, PeerView::Fresh), (3, down()), (4, down()), (5, down())]);
        assert!(matches!(decide(1, &five, &two_of_five), Decision::Wait { .. }));
        let three_of_five = answers(&[(2, PeerView::Fresh), (3, PeerView::Fresh), (4, down()), (5, down())]);
        assert_eq!(decide(1, &five, &three_of_five), Decision::Initialise);
        // A single-node group has nobody to ask.
        assert_eq!(decide(1, &[1], &BTreeMap::new()), Decision::Initialise);
    }

    #[test]
    fn a_member_the_group_saw_with_entries_is_refused_whatever_the_others_say() {
        let three = [1, 2, 3];
        let seen = answers(&[(2, group(true, Some(true))), (3, down())]);
        assert_eq!(decide(1, &three, &seen), Decision::Refuse { by: 2, reason: Refusal::Seen });
        // One peer lagging behind the record, another knows it: refused.
        let mixed = answers(&[(2, group(false, Some(true))), (3, group(true, Some(true)))]);
        assert_eq!(decide(1, &three, &mixed), Decision::Refuse { by: 3, reason: Refusal::Seen });
        // A fresh peer does not outvote the group's record.
        let fresh_and_seen = answers(&[(2, PeerView::Fresh), (3, group(true, None))]);
        assert_eq!(decide(1, &three, &fresh_and_seen), Decision::Refuse { by: 3, reason: Refusal::Seen });
    }

    #[test]
    fn an_id_outside_the_group_is_refused() {
        let outside = answers(&[(2, group(false, Some(false))), (3, group(false, Some(true)))]);
        assert_eq!(decide(1, &[1, 2, 3], &outside), Decision::Refuse { by: 2, reason: Refusal::NotMember });
        // A removed member, wiped and started again with its old config.
        let removed = answers(&[(2, group(true, Some(false))), (3, group(true, Some(false)))]);
        assert_eq!(decide(1, &[1, 2, 3], &removed), Decision::Refuse { by: 2, reason: Refusal::NotMember });
    }

    #[test]
    fn a_founding_member_the_group_never_saw_joins_without_initialising() {
        let three = [1, 2, 3];
        let late = answers(&[(1, group(false, Some(true))), (2, group(false, Some(true)))]);
        assert_eq!(decide(3, &three, &late), Decision::Join { by: 1 });
        // One peer knowing the group is enough, the other may be down...
        let one = answers(&[(1, down()), (2, group(false, Some(true)))]);
        assert_eq!(decide(3, &three, &one), Decision::Join { by: 2 });
        // ...or a founding member that has just decided to join (no membership yet).
        let joining = answers(&[(1, down()), (2, group(false, None))]);
        assert_eq!(decide(3, &three, &joining), Decision::Join { by: 2 });
        // A group beats a fresh majority: never initialise next to an existing group.
        let five = [1, 2, 3, 4, 5];
        let fresh_majority =
            answers(&[(1, PeerView::Fresh), (2, PeerView::Fresh), (3, group(false, Some(true))), (4, down())]);
        assert_eq!(decide(5, &five, &fresh_majority), Decision::Join { by: 3 });
    }

    #[test]
    fn an_older_peer_makes_the_node_wait_unless_the_group_already_refuses_it() {
        let three = [1, 2, 3];
        let older = answers(&[(2, PeerView::Older), (3, group(false, Some(true)))]);
        assert_eq!(decide(1, &three, &older), Decision::Wait { unanswered: vec![], older: vec![2] });
        let older_fresh = answers(&[(2, PeerView::Older), (3, PeerView::Fresh)]);
        assert_eq!(decide(1, &three, &older_fresh), Decision::Wait { unanswered: vec![], older: vec![2] });
        let older_seen = answers(&[(2, PeerView::Older), (3, group(true, Some(true)))]);
        assert_eq!(decide(1, &three, &older_seen), Decision::Refuse { by: 3, reason: Refusal::Seen });
    }

    #[test]
    fn replies_map_to_views() {
        let mut r = JoinCheckReply { node_id: 2, ..Default::default() };
        assert_eq!(PeerView::of(&r), PeerView::Fresh);
        r.in_group = true;
        assert_eq!(PeerView::of(&r), group(false, None));
        r.membership_known = true;
        r.seen = true;
        assert_eq!(PeerView::of(&r), group(true, Some(false)));
    }

    #[test]
    fn the_leader_records_members_holding_entries_once() {
        let members: BTreeSet<NodeId> = [1, 2, 3].into();
        let matched: BTreeMap<NodeId, u64> = [(2, 7), (3, 0)].into();
        // Node 3 only holds the initial membership (index 0): not yet.
        assert_eq!(unrecorded_holders(1, Some(7), &matched, &members, &BTreeSet::new()), vec![1, 2]);
        assert_eq!(unrecorded_holders(1, Some(7), &matched, &members, &[1].into()), vec![2]);
        assert!(unrecorded_holders(1, Some(7), &matched, &members, &[1, 2].into()).is_empty());
        // A founding member never started has no matched index at all.
        let matched: BTreeMap<NodeId, u64> = [(2, 7)].into();
        assert_eq!(unrecorded_holders(1, Some(7), &matched, &members, &[1, 2].into()), Vec::<NodeId>::new());
        // Learners count too.
        let with_learner: BTreeSet<NodeId> = [1, 2, 3, 4].into();
        let matched: BTreeMap<NodeId, u64> = [(2, 7), (3, 7), (4, 3)].into();
        assert_eq!(unrecorded_holders(1, Some(7), &matched, &with_learner, &[1, 2, 3].into()), vec![4]);
    }

    #[test]
    fn the_refusal_is_one_line_and_says_how_to_rejoin() {
        let text = "node_id = 2\nlisten = \"127.0.0.1:7102\"\ndata_dir = \"/var/lib/primus\"\n\
                    [[initial_members]]\nid = 1\naddr = \"127.0.0.1:7101\"\n\
                    [[initial_members]]\nid = 2\naddr = \"127.0.0.1:7102\"\n";
        let cfg = Config::parse(Path::new("/etc/primus/primusd.toml"), text).unwrap();
        for reason in [Refusal::Seen, Refusal::NotMember] {
            let e = refusal(&cfg, Path::new("/etc/primus/primusd.toml"), 1, reason);
            let s = e.to_string();
            assert_eq!(e.code, 2);
            assert!(!s.contains('\n'), "{s}");
            assert!(s.starts_with("config error: /etc/primus/primusd.toml: key `node_id`: data_dir /var/lib/primus"));
            assert!(s.contains("new node_id") && s.contains("primusctl members add NEW_ID ADDR"), "{s}");
        }
        let s = refusal(&cfg, Path::new("c.toml"), 1, Refusal::Seen).to_string();
        assert!(s.contains("node 1 says the group recorded node 2") && s.contains("members remove 2"), "{s}");
    }
}
