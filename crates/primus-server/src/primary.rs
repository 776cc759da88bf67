//! The primary feed: what `GetPrimary`, `WatchPrimary` and the HTTP endpoints say
//! about where each cluster writes.
//!
//! One task per node follows the local state machine (it wakes on every apply),
//! derives each cluster's [`PrimaryState`], and publishes one event per change on a
//! bounded broadcast channel. A watcher subscribes under the same lock the task
//! publishes under, so it gets the current state and then every later change,
//! none twice and none missing. A watcher that falls `[watch] buffer` events
//! behind is cut off with `RESOURCE_EXHAUSTED` instead of slowing anybody down; it
//! reconnects with the last epoch it saw and is replayed what it missed from the
//! replicated failover history.

use primus_proto::v1::{PrimaryEvent, PrimaryEventKind};
use primus_types::state::PrimaryState;
use primus_types::{ClusterName, FailoverOutcome, NodeId, Raft};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::broadcast;
use tonic::Status;

/// Every cluster's primary state as of one applied index.
#[derive(Default)]
struct Current {
    applied: u64,
    clusters: BTreeMap<ClusterName, PrimaryState>,
}

pub struct PrimaryFeed {
    node_id: NodeId,
    state: primus_store::StateHandle,
    tx: broadcast::Sender<Arc<PrimaryEvent>>,
    current: RwLock<Current>,
}

/// Which clusters a watcher wants, and the last epoch it saw of each.
#[derive(Debug, Clone, Default)]
pub struct WatchFilter {
    /// `None`: every cluster.
    pub cluster: Option<ClusterName>,
    pub from_epoch: u64,
    pub from_epochs: HashMap<String, u64>,
}

impl WatchFilter {
    fn wants(&self, cluster: &str) -> bool {
        self.cluster.as_ref().is_none_or(|c| c.as_str() == cluster)
    }
    fn resume_epoch(&self, cluster: &str) -> u64 {
        self.from_epochs.get(cluster).copied().unwrap_or(self.from_epoch)
    }
}

impl PrimaryFeed {
    /// Start following `state`; events go to at most `buffer`-behind watchers.
    pub fn start(node_id: NodeId, state: primus_store::StateHandle, buffer: usize) -> Arc<PrimaryFeed> {
        let (tx, _) = broadcast::channel(buffer.max(1));
        let feed =
            Arc::new(PrimaryFeed { node_id, state: state.clone(), tx, current: RwLock::new(Current::default()) });
        let mut applied = state.subscribe();
        // Seed without events: there was nobody to tell.
        feed.refresh(false);
        let weak = Arc::downgrade(&feed);
        tokio::spawn(async move {
            while applied.changed().await.is_ok() {
                let Some(feed) = weak.upgrade() else { return };
                feed.refresh(true);
            }
        });
        feed
    }

    /// Number of open watch streams on this node.
    pub fn subscribers(&self) -> usize {
        self.tx.receiver_count()
    }

    /// The current state of one cluster and the index it was read at.
    pub fn get(&self, cluster: &ClusterName) -> (u64, Option<PrimaryState>) {
        let cur = self.current.read().unwrap_or_else(|p| p.into_inner());
        (cur.applied, cur.clusters.get(cluster).cloned())
    }

    fn refresh(&self, publish: bool) {
        let (applied, next, outcomes) = self.state.read(|s| {
            let applied = s.last_applied.map(|l| l.index).unwrap_or(0);
            let next: BTreeMap<ClusterName, PrimaryState> =
                s.registry.clusters.iter().map(|(n, c)| (n.clone(), c.primary_state())).collect();
            // How each cluster's most recent failover ended, for FAILOVER_ENDED details.
            let outcomes: BTreeMap<ClusterName, (String, String, u64)> = s
                .registry
                .clusters
                .iter()
                .filter_map(|(n, c)| {
                    let f = c.history.last()?;
                    let o = match f.outcome.as_ref()? {
                        FailoverOutcome::Succeeded => "succeeded".to_string(),
                        FailoverOutcome::Aborted(r) => format!("aborted: {r}"),
                        FailoverOutcome::Failed(r) => format!("failed: {r}"),
                    };
                    Some((n.clone(), (f.id.clone(), o, f.finished_at_ms.unwrap_or(0))))
                })
                .collect();
            (applied, next, outcomes)
        });
        let mut cur = self.current.write().unwrap_or_else(|p| p.into_inner());
        if applied < cur.applied {
            return;
        }
        if publish {
            for ev in diff(&cur.clusters, &next, &outcomes) {
                let (kind, state, detail, at_ms) = ev;
                let event = PrimaryEvent {
                    kind: kind as i32,
                    state: Some(crate::proto_conv::primary_state_view(&state)),
                    applied_index: applied,
                    detail,
                    at_ms,
                    served_by: self.node_id,
                };
                tracing::info!(
                    cluster = %state.cluster,
                    epoch = state.epoch,
                    primary = ?state.primary.as_ref().map(ToString::to_string),
                    kind = ?kind,
                    applied,
                    "primary feed event"
                );
                // No receivers is fine: nobody is watching.
                let _ = self.tx.send(Arc::new(event));
            }
        }
        cur.applied = applied;
        cur.clusters = next;
    }

    /// The events a new watcher starts with (history it missed, then the current
    /// state), and a receiver for every change after them.
    pub fn subscribe(&self, filter: &WatchFilter) -> (Vec<PrimaryEvent>, broadcast::Receiver<Arc<PrimaryEvent>>) {
        let cur = self.current.read().unwrap_or_else(|p| p.into_inner());
        let rx = self.tx.subscribe();
        let mut initial = Vec::new();
        for (name, st) in cur.clusters.iter().filter(|(n, _)| filter.wants(n.as_str())) {
            let from = filter.resume_epoch(name.as_str());
            if from > 0 && st.epoch >= from {
                initial.extend(self.replay(name, from, cur.applied));
            }
            initial.push(PrimaryEvent {
                kind: PrimaryEventKind::Current as i32,
                state: Some(crate::proto_conv::primary_state_view(st)),
                applied_index: cur.applied,
                detail: String::new(),
                at_ms: 0,
                served_by: self.node_id,
            });
        }
        (initial, rx)
    }

    /// Finished failovers of `name` with epoch >= `from`, oldest first. The epoch a
    /// client last saw is included: it may have seen the start and not the end.
    fn replay(&self, name: &ClusterName, from: u64, applied: u64) -> Vec<PrimaryEvent> {
        self.state.read(|s| {
            let Some(c) = s.registry.clusters.get(name) else { return Vec::new() };
            c.history
                .iter()
                .filter(|f| f.epoch >= from && f.outcome.is_some())
                .map(|f| {
                    let ok = f.outcome == Some(FailoverOutcome::Succeeded);
                    let primary = if ok { f.candidate.clone() } else { f.old_primary.clone() };
                    let detail = match &f.outcome {
                        Some(FailoverOutcome::Succeeded) => {
                            format!("{} {}: {} -> {} succeeded", f.kind, f.id, f.old_primary, f.candidate)
                        }
                        Some(FailoverOutcome::Aborted(r)) => format!("{} {} aborted: {r}", f.kind, f.id),
                        Some(FailoverOutcome::Failed(r)) => format!("{} {} failed: {r}", f.kind, f.id),
                        None => String::new(),
                    };
                    let state = PrimaryState {
                        cluster: name.clone(),
                        datacenter: c.datacenters.get(&primary).cloned(),
                        primary: Some(primary),
                        epoch: f.epoch,
                        failover: None,
                        demoted: Vec::new(),
                    };
                    PrimaryEvent {
                        kind: PrimaryEventKind::Replayed as i32,
                        state: Some(crate::proto_conv::primary_state_view(&state)),
                        applied_index: applied,
                        detail,
                        at_ms: f.finished_at_ms.unwrap_or(0),
                        served_by: self.node_id,
                    }
                })
                .collect()
        })
    }
}

type Event = (PrimaryEventKind, PrimaryState, String, u64);

/// The events that lead from `old` to `new`, in the order a client should see them.
fn diff(
    old: &BTreeMap<ClusterName, PrimaryState>,
    new: &BTreeMap<ClusterName, PrimaryState>,
    outcomes: &BTreeMap<ClusterName, (String, String, u64)>,
) -> Vec<Event> {
    let mut out = Vec::new();
    for (name, o) in old {
        if !new.contains_key(name) {
            let gone =
                PrimaryState { primary: None, failover: None, demoted: Vec::new(), datacenter: None, ..o.clone() };
            out.push((PrimaryEventKind::ClusterRemoved, gone, "cluster unregistered".into(), 0));
        }
    }
    for (name, n) in new {
        let Some(o) = old.get(name) else {
            out.push((PrimaryEventKind::ClusterAdded, n.clone(), "cluster registered".into(), 0));
            continue;
        };
        if o == n {
            continue;
        }
        let ended = o.failover.as_ref().filter(|f| n.failover.as_ref().is_none_or(|nf| nf.id != f.id));
        let ended_detail = |id: &str| match outcomes.get(name) {
            Some((oid, outcome, at)) if oid == id => (format!("failover {id} {outcome}"), *at),
            _ => (format!("failover {id} ended"), 0),
        };
        let mut emitted = false;
        let primary_changed = o.primary != n.primary;
        if primary_changed {
            let (detail, at) = match ended {
                Some(f) => ended_detail(&f.id),
                None => (String::new(), 0),
            };
            let from = o.primary.as_ref().map(ToString::to_string).unwrap_or_else(|| "(none)".into());
            let to = n.primary.as_ref().map(ToString::to_string).unwrap_or_else(|| "(none)".into());
            let detail =
                if detail.is_empty() { format!("{from} -> {to}") } else { format!("{from} -> {to}: {detail}") };
            out.push((PrimaryEventKind::PrimaryChanged, n.clone(), detail, at));
            emitted = true;
        } else if let Some(f) = ended {
            let (detail, at) = ended_detail(&f.id);
            out.push((PrimaryEventKind::FailoverEnded, n.clone(), detail, at));
            emitted = true;
        }
        if let Some(f) = n.failover.as_ref().filter(|f| o.failover.as_ref().is_none_or(|of| of.id != f.id)) {
            let detail = format!("{} {}: promoting {} (epoch {})", f.kind, f.id, f.candidate, f.epoch);
            out.push((PrimaryEventKind::FailoverStarted, n.clone(), detail, 0));
            emitted = true;
        }
        // A failover demotes the old primary in the same step: PRIMARY_CHANGED says it all.
        if o.demoted != n.demoted && !primary_changed {
            let list: Vec<String> = n.demoted.iter().map(ToString::to_string).collect();
            out.push((PrimaryEventKind::DemotedChanged, n.clone(), format!("demoted: [{}]", list.join(", ")), 0));
            emitted = true;
        }
        if !emitted {
            out.push((PrimaryEventKind::Updated, n.clone(), String::new(), 0));
        }
    }
    out
}

/// A `WatchPrimary` stream: `initial`, then every change for `filter`, ended with a
/// clear status when the watcher falls behind, the node shuts down, or the node has
/// known no leader for `leaderless_close`.
pub fn watch_stream(
    initial: Vec<PrimaryEvent>,
    rx: broadcast::Receiver<Arc<PrimaryEvent>>,
    filter: WatchFilter,
    raft: Raft,
    leaderless_close: Duration,
) -> impl futures::Stream<Item = Result<PrimaryEvent, Status>> + Send + 'static {
    struct St {
        initial: VecDeque<PrimaryEvent>,
        rx: broadcast::Receiver<Arc<PrimaryEvent>>,
        filter: WatchFilter,
        raft: Raft,
        leaderless_close: Duration,
        last_epoch: HashMap<String, u64>,
        done: bool,
    }
    let st =
        St { initial: initial.into(), rx, filter, raft, leaderless_close, last_epoch: HashMap::new(), done: false };
    futures::stream::unfold(st, |mut st| async move {
        if st.done {
            return None;
        }
        if let Some(ev) = st.initial.pop_front() {
            note_epoch(&mut st.last_epoch, &ev);
            return Some((Ok(ev), st));
        }
        let mut check = tokio::time::interval(Duration::from_millis(250));
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut leaderless_since: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                r = st.rx.recv() => match r {
                    Ok(ev) => {
                        let cluster = ev.state.as_ref().map(|s| s.cluster.as_str()).unwrap_or_default();
                        if !st.filter.wants(cluster) {
                            continue;
                        }
                        let ev = (*ev).clone();
                        note_epoch(&mut st.last_epoch, &ev);
                        return Some((Ok(ev), st));
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        st.done = true;
                        let resume = resume_hint(&st.last_epoch);
                        let s = Status::resource_exhausted(format!(
                            "this watch fell {n} events behind (the consumer is too slow); reconnect with {resume}"
                        ));
                        return Some((Err(s), st));
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        st.done = true;
                        return Some((Err(Status::unavailable("the coordinator is shutting down; reconnect elsewhere")), st));
                    }
                },
                _ = check.tick() => {
                    let leader = st.raft.metrics().borrow().current_leader;
                    match (leader, leaderless_since) {
                        (Some(_), _) => leaderless_since = None,
                        (None, None) => leaderless_since = Some(tokio::time::Instant::now()),
                        (None, Some(t)) if t.elapsed() >= st.leaderless_close => {
                            st.done = true;
                            let s = Status::unavailable(format!(
                                "this coordinator has known no leader for {} ms and may be cut off from the group; \
                                 reconnect to another one with {}",
                                t.elapsed().as_millis(),
                                resume_hint(&st.last_epoch)
                            ));
                            return Some((Err(s), st));
                        }
                        (None, Some(_)) => {}
                    }
                }
            }
        }
    })
}

fn note_epoch(last: &mut HashMap<String, u64>, ev: &PrimaryEvent) {
    if let Some(s) = &ev.state {
        let e = last.entry(s.cluster.clone()).or_default();
        *e = (*e).max(s.epoch);
    }
}

fn resume_hint(last: &HashMap<String, u64>) -> String {
    let mut v: Vec<String> = last.iter().map(|(c, e)| format!("{c}={e}")).collect();
    v.sort();
    if v.len() > 5 {
        let n = v.len();
        v.truncate(5);
        v.push(format!("… {} more", n - 5));
    }
    format!("from_epoch per cluster [{}]", v.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use primus_types::state::InFlight;

    fn st(primary: &str, epoch: u64) -> PrimaryState {
        PrimaryState {
            cluster: "c".parse().unwrap_or_else(|_| unreachable!()),
            primary: Some(primary.parse().unwrap_or_else(|_| unreachable!())),
            epoch,
            datacenter: None,
            failover: None,
            demoted: Vec::new(),
        }
    }

    fn map(s: PrimaryState) -> BTreeMap<ClusterName, PrimaryState> {
        [(s.cluster.clone(), s)].into()
    }

    fn kinds(ev: &[Event]) -> Vec<PrimaryEventKind> {
        ev.iter().map(|e| e.0).collect()
    }

    fn inflight(epoch: u64) -> Option<InFlight> {
        Some(InFlight {
            id: format!("c-e{epoch}"),
            kind: "automatic".into(),
            old_primary: "10.0.0.1:3306".parse().unwrap_or_else(|_| unreachable!()),
            candidate: "10.0.0.2:3306".parse().unwrap_or_else(|_| unreachable!()),
            epoch,
        })
    }

    #[test]
    fn a_failover_is_started_then_the_primary_changes() {
        let a = st("10.0.0.1:3306", 1);
        let b = PrimaryState { epoch: 2, failover: inflight(2), ..a.clone() };
        let c = PrimaryState {
            demoted: vec!["10.0.0.1:3306".parse().unwrap_or_else(|_| unreachable!())],
            ..st("10.0.0.2:3306", 2)
        };
        let none = BTreeMap::new();
        assert_eq!(kinds(&diff(&map(a.clone()), &map(b.clone()), &none)), vec![PrimaryEventKind::FailoverStarted]);
        let ev = diff(&map(b), &map(c), &none);
        assert_eq!(kinds(&ev), vec![PrimaryEventKind::PrimaryChanged], "the demotion is part of the change");
        assert!(ev[0].2.contains("10.0.0.1:3306 -> 10.0.0.2:3306"), "{}", ev[0].2);
    }

    #[test]
    fn an_aborted_failover_ends_without_a_primary_change() {
        let b = PrimaryState { epoch: 2, failover: inflight(2), ..st("10.0.0.1:3306", 1) };
        let c = st("10.0.0.1:3306", 2);
        let outcomes = [(b.cluster.clone(), ("c-e2".to_string(), "aborted: primary is back".to_string(), 7))].into();
        let ev = diff(&map(b), &map(c), &outcomes);
        assert_eq!(kinds(&ev), vec![PrimaryEventKind::FailoverEnded]);
        assert_eq!(ev[0].2, "failover c-e2 aborted: primary is back");
        assert_eq!(ev[0].3, 7);
    }

    #[test]
    fn registration_removal_and_label_changes_are_events() {
        let a = st("10.0.0.1:3306", 1);
        let none = BTreeMap::new();
        let no_outcomes = BTreeMap::new();
        assert_eq!(kinds(&diff(&none, &map(a.clone()), &no_outcomes)), vec![PrimaryEventKind::ClusterAdded]);
        assert_eq!(kinds(&diff(&map(a.clone()), &none, &no_outcomes)), vec![PrimaryEventKind::ClusterRemoved]);
        let labelled = PrimaryState { datacenter: Some("eu".into()), ..a.clone() };
        assert_eq!(kinds(&diff(&map(a.clone()), &map(labelled), &no_outcomes)), vec![PrimaryEventKind::Updated]);
        assert!(diff(&map(a.clone()), &map(a), &no_outcomes).is_empty(), "no change, no event");
    }
}
