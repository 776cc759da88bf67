//! The simulated coordinators' storage: a log and vote kept in memory in a [`Disk`]
//! that outlives the node (a simulated crash drops the node, not its disk), and a
//! state machine that applies entries through the same `Registry` calls as the sled
//! store (`StateHandle::apply_*`).
//!
//! Everything written is "flushed" at once: the simulator checks primus' decisions,
//! not sled's durability (the real-process crash tests cover that). After a restart
//! the state machine starts empty and openraft re-applies the log up to the saved
//! committed index.
//!
//! primusd instead restarts from the key/value pairs its store wrote after each
//! apply (the keys `Registry::apply` says it touched). The disk keeps those pairs too
//! ([`KeyImage`]), and [`Disk::persisted_state_differs`] compares them with the state
//! in memory: the run checks it whenever a coordinator crashes and at the end, so an
//! apply that forgot a key it changed (lost at primusd's next restart) is a
//! violation here.

use super::SimConfig;
use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftSnapshotBuilder, StorageError, StorageIOError,
};
use primus_store::{AppliedState, StateHandle};
use primus_types::state::{KeyImage, Registry};
use primus_types::{LogId, Member, NodeId, Response, SnapshotMeta, StoredMembership, Vote};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io::Cursor;
use std::ops::RangeBounds;
use std::sync::{Arc, Mutex, PoisonError};

type Entry = openraft::Entry<SimConfig>;
type StorageResult<T> = Result<T, StorageError<NodeId>>;

#[derive(Debug, Default)]
struct DiskInner {
    vote: Option<Vote>,
    committed: Option<LogId>,
    last_purged: Option<LogId>,
    log: BTreeMap<u64, Entry>,
    snapshot: Option<(SnapshotMeta, Vec<u8>)>,
    /// What primusd's store would hold for this incarnation's applied state.
    image: KeyImage,
    /// An encoding failed (reported by the check).
    image_error: Option<String>,
}

/// One coordinator's durable storage; survives the node's crash and restart.
#[derive(Debug, Clone, Default)]
pub struct Disk(Arc<Mutex<DiskInner>>);

impl Disk {
    fn with<R>(&self, f: impl FnOnce(&mut DiskInner) -> R) -> R {
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// The stored vote (for checks: a vote's term never goes back).
    pub fn vote(&self) -> Option<Vote> {
        self.with(|d| d.vote)
    }

    /// Entries stored in the log (for checks).
    pub fn log_len(&self) -> usize {
        self.with(|d| d.log.len())
    }

    /// How the state primusd would load from the pairs it wrote differs from `state`
    /// (the registry in memory), if it does.
    pub fn persisted_state_differs(&self, state: &Registry) -> Option<String> {
        self.with(|d| {
            if let Some(e) = &d.image_error {
                return Some(e.clone());
            }
            match d.image.load() {
                Err(e) => Some(format!("the pairs written do not load: {e}")),
                Ok(loaded) if loaded != *state => Some(describe_difference(&loaded, state)),
                Ok(_) => None,
            }
        })
    }
}

/// The log side of a simulated node.
#[derive(Debug, Clone)]
pub struct SimLog {
    disk: Disk,
}

impl SimLog {
    pub fn new(disk: Disk) -> SimLog {
        SimLog { disk }
    }
}

impl RaftLogReader<SimConfig> for SimLog {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry>> {
        Ok(self.disk.with(|d| d.log.range(range).map(|(_, e)| e.clone()).collect()))
    }
}

impl RaftLogStorage<SimConfig> for SimLog {
    type LogReader = SimLog;

    async fn get_log_state(&mut self) -> StorageResult<LogState<SimConfig>> {
        Ok(self.disk.with(|d| {
            let last = d.log.values().next_back().map(|e| e.log_id).or(d.last_purged);
            LogState { last_purged_log_id: d.last_purged, last_log_id: last }
        }))
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> StorageResult<()> {
        self.disk.with(|d| d.vote = Some(*vote));
        Ok(())
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote>> {
        Ok(self.disk.vote())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> StorageResult<()> {
        self.disk.with(|d| d.committed = committed);
        Ok(())
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId>> {
        Ok(self.disk.with(|d| d.committed))
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<SimConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.disk.with(|d| {
            for e in entries {
                d.log.insert(e.log_id.index, e);
            }
        });
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> StorageResult<()> {
        self.disk.with(|d| {
            d.log.split_off(&log_id.index);
        });
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> StorageResult<()> {
        self.disk.with(|d| {
            d.last_purged = Some(log_id);
            d.log = d.log.split_off(&(log_id.index + 1));
        });
        Ok(())
    }
}

/// What a snapshot's bytes hold (the whole applied state).
#[derive(Serialize, Deserialize)]
struct SnapshotData {
    last_applied: Option<LogId>,
    membership: StoredMembership,
    registry: Registry,
}

fn sm_err(verb: ErrorVerb, e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageError::IO { source: StorageIOError::new(ErrorSubject::StateMachine, verb, AnyError::new(&e)) }
}

/// The state machine side of a simulated node: primusd's state machine in memory.
#[derive(Clone)]
pub struct SimStateMachine {
    state: StateHandle,
    disk: Disk,
}

impl SimStateMachine {
    /// A fresh (empty) state machine over `disk`'s snapshot, applying into `state`.
    pub fn new(disk: Disk, state: StateHandle) -> SimStateMachine {
        // The state starts empty and is applied again: so do the pairs.
        disk.with(|d| {
            d.image = KeyImage::default();
            d.image_error = None;
        });
        SimStateMachine { state, disk }
    }

    fn persist(&self, touched: &[primus_types::state::StateKey]) {
        self.state.read(|s| {
            self.disk.with(|d| {
                if let Err(e) = d.image.write(&s.registry, touched) {
                    d.image_error.get_or_insert_with(|| e.to_string());
                }
            })
        });
    }

    #[allow(clippy::result_large_err)] // openraft's error type
    fn snapshot_of(&self) -> StorageResult<(SnapshotMeta, Vec<u8>)> {
        let s = self.state.cloned();
        let meta = SnapshotMeta {
            last_log_id: s.last_applied,
            last_membership: s.membership.clone(),
            snapshot_id: format!("{:?}", s.last_applied.map(|l| l.index)),
        };
        let data = SnapshotData { last_applied: s.last_applied, membership: s.membership, registry: s.registry };
        let bytes = serde_json::to_vec(&data).map_err(|e| sm_err(ErrorVerb::Write, e))?;
        Ok((meta, bytes))
    }
}

impl RaftSnapshotBuilder<SimConfig> for SimStateMachine {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<SimConfig>> {
        let (meta, bytes) = self.snapshot_of()?;
        self.disk.with(|d| d.snapshot = Some((meta.clone(), bytes.clone())));
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(bytes)) })
    }
}

impl RaftStateMachine<SimConfig> for SimStateMachine {
    type SnapshotBuilder = SimStateMachine;

    async fn applied_state(&mut self) -> StorageResult<(Option<LogId>, StoredMembership)> {
        Ok(self.state.applied())
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<Response>>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut out = Vec::new();
        for e in entries {
            match &e.payload {
                EntryPayload::Blank => {
                    self.state.apply_blank(e.log_id);
                    out.push(Response::Internal);
                }
                EntryPayload::Normal(req) => {
                    let (response, touched) = self.state.apply_request(e.log_id, req);
                    self.persist(&touched);
                    out.push(response);
                }
                EntryPayload::Membership(m) => {
                    let touched = self.state.apply_membership(e.log_id, m);
                    self.persist(&touched);
                    out.push(Response::Internal);
                }
            }
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: Box<Cursor<Vec<u8>>>) -> StorageResult<()> {
        let bytes = snapshot.into_inner();
        let data: SnapshotData = serde_json::from_slice(&bytes).map_err(|e| sm_err(ErrorVerb::Read, e))?;
        let image = KeyImage::of(&data.registry);
        self.state.replace(AppliedState {
            last_applied: data.last_applied,
            membership: data.membership,
            registry: data.registry,
        });
        self.disk.with(|d| match image {
            Ok(image) => d.image = image,
            Err(e) => d.image_error = Some(e.to_string()),
        });
        self.disk.with(|d| d.snapshot = Some((meta.clone(), bytes)));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<SimConfig>>> {
        Ok(self
            .disk
            .with(|d| d.snapshot.clone())
            .map(|(meta, bytes)| Snapshot { meta, snapshot: Box::new(Cursor::new(bytes)) }))
    }
}

/// Where two registries differ first: a cluster (and whether in its history), the
/// audit trail, or the members seen.
fn describe_difference(loaded: &Registry, applied: &Registry) -> String {
    for (name, c) in &applied.clusters {
        match loaded.clusters.get(name) {
            None => return format!("cluster {name} is missing from the persisted pairs"),
            Some(l) if l.history != c.history => {
                let first = c.history.iter().find(|f| l.failover_started_at(f.started_index) != Some(*f));
                return match first {
                    Some(f) => match l.failover_started_at(f.started_index) {
                        Some(p) => format!(
                            "cluster {name}'s failover {} differs: {} steps and outcome {:?} persisted, \
                             {} steps and outcome {:?} applied",
                            f.id,
                            p.steps.len(),
                            p.outcome,
                            f.steps.len(),
                            f.outcome
                        ),
                        None => format!("cluster {name}'s failover {} is not persisted", f.id),
                    },
                    None => format!(
                        "cluster {name}'s history differs: {} failovers persisted, {} applied",
                        l.history.len(),
                        c.history.len()
                    ),
                };
            }
            Some(l) if l != c => return format!("cluster {name}'s record differs from the applied one"),
            Some(_) => {}
        }
    }
    if let Some(extra) = loaded.clusters.keys().find(|n| !applied.clusters.contains_key(*n)) {
        return format!("cluster {extra} is persisted but not applied");
    }
    if loaded.audit != applied.audit {
        return "the audit trail differs".into();
    }
    "the members seen differ".into()
}

/// A member record for node `id` (the simulator needs no real address).
pub fn member(id: NodeId) -> Member {
    Member { addr: format!("sim-coordinator-{id}"), ..Default::default() }
}
