//! The group's feature level: a command kind added after a release is written to the
//! Raft log only once every member runs a release that decodes it.
//!
//! An older primusd that receives an entry it cannot decode stops catching up (it logs
//! `undecodable AppendEntries payload`) until it is upgraded: during a rolling upgrade
//! the leader, often already upgraded, must keep to the commands every member knows.
//! Each command has the level that introduced it ([`Command::feature_level`]); the
//! group's level is in the replicated state ([`Command::SetFeatureLevel`], never
//! lowered); the leader proposes only commands of the group's level and below (the
//! gate of [`crate::consensus::RaftConsensus::with_feature_gate`], the client-facing
//! writes of `service` and the member recorder of `bootstrap`).
//!
//! The leader raises the level ([`spawn_finalizer`]): every second it asks each member
//! (voters and learners) which level its release knows (`JoinCheck`; a release before
//! the gate answers UNIMPLEMENTED or leaves the field 0: level 1), and once *every*
//! member has answered within the last few seconds, it commits the lowest of the answers
//! if that is above the group's level ([`raise`]). A member that is down, or was never
//! started, holds the level back: it could come up with an older release. A new member
//! whose release knows less than the group's level is refused by `members add`.
//!
//! Once raised, the level stays: an older release cannot decode the log any more, so a
//! downgrade means replacing the node (docs/operations.md, "Upgrading").

use crate::context::NodeCtx;
use openraft::ServerState;
use primus_types::{Command, NodeId, Origin, Request, BASE_FEATURE_LEVEL, FEATURE_LEVEL};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How often the leader asks each member again while the group is below this build's level.
pub const ASK_EVERY: Duration = Duration::from_secs(1);

/// An answer older than this no longer counts (the member may have been restarted
/// with another release since).
pub const ANSWER_TTL: Duration = Duration::from_secs(3);

/// The newest level this node says its release knows: [`FEATURE_LEVEL`], or under
/// fault injection `PRIMUS_FEATURE_LEVEL` (tests stand in for an older release).
pub fn known_level() -> u32 {
    crate::faults::get().feature_level().unwrap_or(FEATURE_LEVEL)
}

/// The level the gate holds commands to: the group's, or — under fault injection with
/// the failpoint `features.no_gate` — no limit at all, so that a rehearsal can show
/// what an older member does with entries it cannot decode (`scripts/upgrade-test.sh
/// --no-gate`).
pub fn gate_level(group: u32) -> u32 {
    if crate::faults::get().active("features.no_gate") {
        u32::MAX
    } else {
        group
    }
}

/// What the leader may do with the group's level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Raise {
    /// Commit `SetFeatureLevel` at this level.
    To(u32),
    /// The group already holds every level its members know.
    Nothing,
    /// Members whose answer is missing or old (down, unreachable, restarting).
    Waiting { unanswered: Vec<NodeId> },
}

/// A member's latest answer: the level its release knows, and whether it came
/// within [`ANSWER_TTL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    pub level: u32,
    pub fresh: bool,
}

/// The level to raise the group to: the lowest level a member knows, once every member
/// (voters and learners) has answered recently and that is above `group`.
///
/// Strictly every member: a member that is down may come back with an older release,
/// one never started may be started with one, and a leader elected a moment ago cannot
/// tell a member that has held entries from one that never started (its replication
/// progress starts empty). A member that is gone for good holds the level back until it
/// is removed (`primusctl members remove`).
pub fn raise(group: u32, members: &[NodeId], answers: &BTreeMap<NodeId, Answer>) -> Raise {
    let unanswered: Vec<NodeId> =
        members.iter().copied().filter(|id| !answers.get(id).is_some_and(|a| a.fresh)).collect();
    if !unanswered.is_empty() {
        return Raise::Waiting { unanswered };
    }
    match members.iter().filter_map(|id| answers.get(id)).map(|a| a.level).min() {
        Some(l) if l > group.max(BASE_FEATURE_LEVEL) => Raise::To(l),
        _ => Raise::Nothing,
    }
}

/// The level a member's `JoinCheck` answer says its release knows.
pub fn level_of(answer: &Result<primus_proto::raft::JoinCheckReply, tonic::Status>) -> Option<u32> {
    match answer {
        Ok(reply) => Some(reply.feature_level.max(BASE_FEATURE_LEVEL)),
        // A release before JoinCheck existed.
        Err(s) if s.code() == tonic::Code::Unimplemented => Some(BASE_FEATURE_LEVEL),
        Err(_) => None,
    }
}

/// On every node: while it leads and the group is below this build's level, raise the
/// level as far as every member allows.
pub fn spawn_finalizer(ctx: Arc<NodeCtx>) {
    tokio::spawn(async move {
        let tick = Duration::from_millis(ctx.cfg.raft.heartbeat_ms.clamp(10, 1000));
        let mut answers: BTreeMap<NodeId, (u32, Instant)> = BTreeMap::new();
        let mut asked: BTreeMap<NodeId, Instant> = BTreeMap::new();
        let mut said = String::new();
        loop {
            tokio::time::sleep(tick).await;
            finalize(&ctx, &mut answers, &mut asked, &mut said).await;
        }
    });
}

async fn finalize(
    ctx: &NodeCtx,
    answers: &mut BTreeMap<NodeId, (u32, Instant)>,
    asked: &mut BTreeMap<NodeId, Instant>,
    said: &mut String,
) {
    let me = ctx.id;
    let addrs: BTreeMap<NodeId, String> = {
        let rx = ctx.raft.metrics();
        let m = rx.borrow();
        if m.state != ServerState::Leader || m.current_leader != Some(me) {
            return;
        }
        m.membership_config.membership().nodes().map(|(id, n)| (*id, n.addr.clone())).collect()
    };
    let (_, group) = ctx.read_state(|r| r.group_feature_level());
    let mine = known_level();
    if group >= mine {
        return;
    }
    let due: Vec<(NodeId, String)> = addrs
        .iter()
        .filter(|(id, _)| **id != me && asked.get(id).is_none_or(|at| at.elapsed() >= ASK_EVERY))
        .map(|(id, a)| (*id, a.clone()))
        .collect();
    let checks = due.iter().map(|(id, addr)| async move { (*id, crate::bootstrap::join_check(ctx, *id, addr).await) });
    for (id, answer) in futures::future::join_all(checks).await {
        asked.insert(id, Instant::now());
        let answer = answer.and_then(|r| {
            if r.node_id == id {
                Ok(r)
            } else {
                Err(tonic::Status::failed_precondition(format!("answered as node {}", r.node_id)))
            }
        });
        match level_of(&answer) {
            Some(level) => {
                answers.insert(id, (level, Instant::now()));
            }
            None => tracing::debug!(node = id, "cannot tell which feature level a member's release knows"),
        }
    }
    answers.insert(me, (mine, Instant::now()));
    // The latest answer of every member stays (an older release's holds the level back
    // while its node is down); only its freshness changes.
    answers.retain(|id, _| addrs.contains_key(id));
    let known: BTreeMap<NodeId, Answer> = answers
        .iter()
        .map(|(id, (level, at))| (*id, Answer { level: *level, fresh: at.elapsed() < ANSWER_TTL }))
        .collect();
    let members: Vec<NodeId> = addrs.keys().copied().collect();
    let why = match raise(group, &members, &known) {
        Raise::To(level) => {
            let req =
                Request::new(Command::SetFeatureLevel { level }, Origin { actor: "primusd".into(), via_node: me });
            match tokio::time::timeout(ctx.cfg.raft.write_timeout(), ctx.raft.client_write(req)).await {
                Ok(Ok(_)) => {
                    tracing::info!(from = group, to = level, "group feature level raised: every member knows it");
                    said.clear();
                    return;
                }
                Ok(Err(e)) => format!("raising the group feature level to {level} failed (will retry): {e}"),
                Err(_) => format!("raising the group feature level to {level} did not commit in time (will retry)"),
            }
        }
        Raise::Nothing => {
            let older: Vec<String> = known
                .iter()
                .filter(|(_, a)| a.level <= group)
                .map(|(id, a)| format!("node {id} (level {})", a.level))
                .collect();
            format!(
                "group feature level stays at {group} (this build knows {mine}): {} run an older primusd; \
                 commands added since are not written until every member is upgraded",
                older.join(", ")
            )
        }
        Raise::Waiting { unanswered } => format!(
            "group feature level stays at {group} until every member says which it knows; no answer from node(s) \
             {unanswered:?}"
        ),
    };
    if *said != why {
        tracing::info!("{why}");
        *said = why;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answers(list: &[(NodeId, u32, bool)]) -> BTreeMap<NodeId, Answer> {
        list.iter().map(|(id, level, fresh)| (*id, Answer { level: *level, fresh: *fresh })).collect()
    }

    #[test]
    fn the_level_rises_only_to_what_every_member_knows() {
        let three = [1, 2, 3];
        // All upgraded: raise to the common level (a group that never recorded one is at 1).
        let all = answers(&[(1, 2, true), (2, 2, true), (3, 2, true)]);
        assert_eq!(raise(1, &three, &all), Raise::To(2));
        assert_eq!(raise(0, &three, &all), Raise::To(2));
        // One member still on an older release: stay.
        assert_eq!(raise(1, &three, &answers(&[(1, 2, true), (2, 2, true), (3, 1, true)])), Raise::Nothing);
        // ...also once it is down: it may come back with the older release.
        let older_down = answers(&[(1, 2, true), (2, 2, true), (3, 1, false)]);
        assert_eq!(raise(1, &three, &older_down), Raise::Waiting { unanswered: vec![3] });
        // A member that does not answer (down, or never started, or unknown to a leader
        // elected a moment ago) is not assumed upgraded.
        assert_eq!(raise(1, &three, &answers(&[(1, 2, true), (2, 2, true)])), Raise::Waiting { unanswered: vec![3] });
        assert_eq!(
            raise(1, &three, &answers(&[(1, 2, true), (2, 2, true), (3, 2, false)])),
            Raise::Waiting { unanswered: vec![3] }
        );
        // Members on different newer releases: the lowest they all know.
        assert_eq!(raise(1, &three, &answers(&[(1, 4, true), (2, 3, true), (3, 5, true)])), Raise::To(3));
        // Already there, or an answer below the group's level (never lowered).
        assert_eq!(raise(2, &three, &all), Raise::Nothing);
        assert_eq!(raise(2, &three, &answers(&[(1, 2, true), (2, 2, true), (3, 1, true)])), Raise::Nothing);
        // Learners count like voters (they are sent the log too).
        let learner_older = answers(&[(1, 2, true), (2, 2, true), (3, 2, true), (4, 1, true)]);
        assert_eq!(raise(1, &[1, 2, 3, 4], &learner_older), Raise::Nothing);
    }

    #[test]
    fn an_answer_says_the_level_and_an_older_release_is_level_1() {
        use primus_proto::raft::JoinCheckReply;
        let reply = |feature_level| Ok(JoinCheckReply { node_id: 2, feature_level, ..Default::default() });
        assert_eq!(level_of(&reply(2)), Some(2));
        // A release with JoinCheck but before the gate leaves the field 0.
        assert_eq!(level_of(&reply(0)), Some(BASE_FEATURE_LEVEL));
        // A release before JoinCheck (3315362).
        assert_eq!(level_of(&Err(tonic::Status::unimplemented("no JoinCheck"))), Some(BASE_FEATURE_LEVEL));
        // No answer: unknown, never assumed.
        assert_eq!(level_of(&Err(tonic::Status::unavailable("connection refused"))), None);
        assert_eq!(level_of(&Err(tonic::Status::deadline_exceeded("no answer"))), None);
    }
}
