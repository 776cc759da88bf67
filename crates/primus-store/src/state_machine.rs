//! The state machine ([`Registry`] + last applied log id + membership) and snapshots.
//!
//! ## Persistence
//!
//! The state lives in memory (for reads) and, key by key, in the `state_machine`
//! tree. After each `apply` call the keys the registry reports as touched, plus
//! the `m/applied` meta record (last applied log id and membership), are written
//! in **one** sled batch, so the tree always holds the state as of some applied
//! log id. These writes are *not* flushed: every applied entry is already durable
//! in the log, and sled recovers a prefix of its operations, so after a crash the
//! tree holds the state as of an earlier `last_applied` and openraft re-applies
//! the entries after it from the log (they cannot have been purged: a purge is
//! written after the snapshot and state it relies on). Flushing here would only
//! double the fsyncs on the commit path.
//!
//! The keys are fine-grained so that the write stays small as the state grows: a
//! failover step rewrites its own failover record (`h/…`), not the cluster's record
//! with its hundred-failover history (format 1 did, up to 258 KiB per step).
//!
//! ## Snapshots
//!
//! A snapshot is the JSON of [`SnapshotData`] (the whole state); it is stored in
//! the `snapshot` tree (meta and bytes in one batch) and flushed, so
//! `get_current_snapshot` survives a restart. Installing a snapshot replaces the
//! `state_machine` tree in one batch (deleting keys the snapshot lacks), then
//! stores the snapshot, then waits for a flush. Serialising and replacing run in
//! `spawn_blocking` because a state can hold thousands of audit records.
//!
//! `apply` never panics on data and is deterministic: it only calls the pure
//! [`Registry`] methods with the entry and its log id.

use std::collections::BTreeSet;
use std::io::Cursor;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, EntryPayload, ErrorSubject, ErrorVerb, Membership, OptionalSend, RaftSnapshotBuilder, StorageError,
    StorageIOError,
};
use primus_types::state::{Loaded, Registry, StateKey};
use primus_types::{Entry, LogId, Member, NodeId, Response, SnapshotMeta, StoredMembership, TypeConfig};
use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::flusher::Flusher;
use crate::format::{AppliedMeta, KEY_SM_META, KEY_SNAPSHOT_COUNTER, KEY_SNAPSHOT_DATA, KEY_SNAPSHOT_META};
use crate::log_store::io_err;

type StorageResult<T> = Result<T, StorageError<NodeId>>;

/// Version of the snapshot payload; a node refuses snapshots newer than it knows.
const SNAPSHOT_FORMAT: u32 = 1;

/// The applied state, as the server reads it for stale reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppliedState {
    /// The last log entry applied to `registry`.
    pub last_applied: Option<LogId>,
    /// The last membership config applied (with the log id that carried it).
    pub membership: StoredMembership,
    /// The replicated registry itself.
    pub registry: Registry,
}

/// A shared, read-only handle to the applied state; cheap to clone.
///
/// Take it with [`StateMachineStore::state`] before handing the store to
/// openraft. Reads never wait for disk; they may briefly wait for an `apply`.
#[derive(Clone)]
pub struct StateHandle {
    inner: Arc<RwLock<AppliedState>>,
    /// The last applied index, published after every `apply` and snapshot install.
    applied_tx: Arc<tokio::sync::watch::Sender<u64>>,
}

impl StateHandle {
    /// Runs `f` on the current state under a read lock (keep `f` short; don't block in it).
    pub fn read<R>(&self, f: impl FnOnce(&AppliedState) -> R) -> R {
        let guard = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        f(&guard)
    }

    /// A copy of the whole current state.
    pub fn cloned(&self) -> AppliedState {
        self.read(Clone::clone)
    }

    /// The last applied log id and membership, without copying the registry.
    pub fn applied(&self) -> (Option<LogId>, StoredMembership) {
        self.read(|s| (s.last_applied, s.membership.clone()))
    }

    /// Wakes up whenever entries were applied (or a snapshot installed); the value
    /// is the last applied index. Cheap; any number of subscribers.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.applied_tx.subscribe()
    }

    /// A handle to a state kept only in memory, for in-memory state machines
    /// (simulations): [`StateHandle::apply_entry`] and [`StateHandle::replace`] change it.
    pub fn in_memory() -> StateHandle {
        StateHandle {
            inner: Arc::new(RwLock::new(AppliedState::default())),
            applied_tx: Arc::new(tokio::sync::watch::channel(0).0),
        }
    }

    /// Apply one entry's request exactly as [`StateMachineStore`] does (the same pure
    /// [`Registry`] call), without persisting anything; its response and the keys the
    /// store would write.
    pub fn apply_request(&self, log_id: LogId, request: &primus_types::Request) -> (Response, Vec<StateKey>) {
        let applied = {
            let mut guard = self.write();
            guard.last_applied = Some(log_id);
            guard.registry.apply(&log_id, request)
        };
        self.published();
        applied
    }

    /// Apply a membership entry (recorded in the audit trail, as the store does); the
    /// keys the store would write.
    pub fn apply_membership(&self, log_id: LogId, membership: &Membership<NodeId, Member>) -> Vec<StateKey> {
        let touched = {
            let mut guard = self.write();
            guard.last_applied = Some(log_id);
            let touched = guard.registry.apply_internal(&log_id, membership_summary(membership));
            guard.membership = StoredMembership::new(Some(log_id), membership.clone());
            touched
        };
        self.published();
        touched
    }

    /// Apply a blank entry (a new leader's first).
    pub fn apply_blank(&self, log_id: LogId) {
        self.write().last_applied = Some(log_id);
        self.published();
    }

    /// Replace the whole state (an installed snapshot).
    pub fn replace(&self, state: AppliedState) {
        *self.write() = state;
        self.published();
    }

    fn published(&self) {
        let idx = self.read(|s| s.last_applied.map(|l| l.index).unwrap_or(0));
        self.applied_tx.send_replace(idx);
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, AppliedState> {
        self.inner.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What a snapshot's bytes hold: the whole applied state.
#[derive(Debug, Serialize, Deserialize)]
struct SnapshotData {
    format: u32,
    last_applied: Option<LogId>,
    membership: StoredMembership,
    registry: Registry,
}

/// The `snapshot` tree, shared by the store and its snapshot builders.
#[derive(Clone)]
struct SnapshotTree {
    tree: sled::Tree,
    /// Serialises writers so that an older build cannot overwrite a newer install.
    write_lock: Arc<Mutex<()>>,
}

impl SnapshotTree {
    fn current(&self) -> Result<Option<(SnapshotMeta, Vec<u8>)>, StoreError> {
        let (Some(meta), Some(data)) = (self.tree.get(KEY_SNAPSHOT_META)?, self.tree.get(KEY_SNAPSHOT_DATA)?) else {
            return Ok(None);
        };
        let meta: SnapshotMeta = serde_json::from_slice(&meta).map_err(|e| StoreError::corrupt("snapshot/meta", e))?;
        Ok(Some((meta, data.to_vec())))
    }

    fn next_counter(&self) -> Result<u64, StoreError> {
        let _w = self.write_lock.lock().unwrap_or_else(PoisonError::into_inner);
        let current = match self.tree.get(KEY_SNAPSHOT_COUNTER)? {
            Some(raw) => <[u8; 8]>::try_from(raw.as_ref())
                .map(u64::from_be_bytes)
                .map_err(|_| StoreError::corrupt("snapshot/counter", "not 8 bytes"))?,
            None => 0,
        };
        let next = current.wrapping_add(1);
        self.tree.insert(KEY_SNAPSHOT_COUNTER, &next.to_be_bytes())?;
        Ok(next)
    }

    /// Stores `meta` + `data` as the current snapshot unless the stored one is newer.
    fn store(&self, meta: &SnapshotMeta, data: &[u8]) -> Result<bool, StoreError> {
        let _w = self.write_lock.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(raw) = self.tree.get(KEY_SNAPSHOT_META)? {
            let current: SnapshotMeta =
                serde_json::from_slice(&raw).map_err(|e| StoreError::corrupt("snapshot/meta", e))?;
            if current.last_log_id > meta.last_log_id {
                tracing::info!(kept = %current, skipped = %meta, "a newer snapshot is already stored");
                return Ok(false);
            }
        }
        let meta_raw = serde_json::to_vec(meta).map_err(|e| StoreError::corrupt("snapshot/meta", e))?;
        let mut batch = sled::Batch::default();
        batch.insert(KEY_SNAPSHOT_META, meta_raw);
        batch.insert(KEY_SNAPSHOT_DATA, data);
        self.tree.apply_batch(batch)?;
        Ok(true)
    }
}

/// openraft's [`RaftStateMachine`] over the primus [`Registry`].
///
/// Obtained from [`crate::open`]; take a [`StateHandle`] with [`Self::state`],
/// then hand the store to `openraft::Raft::new`.
pub struct StateMachineStore {
    state: StateHandle,
    tree: sled::Tree,
    snapshots: SnapshotTree,
    flusher: Flusher,
}

/// Builds snapshots of the state machine (openraft runs it in its own task).
pub struct SnapshotBuilder {
    state: StateHandle,
    snapshots: SnapshotTree,
    flusher: Flusher,
}

impl StateMachineStore {
    /// Loads the state from the `state_machine` tree (restoring it from the stored
    /// snapshot if, against the ordering rules, the snapshot is ahead of it).
    pub(crate) fn open(tree: sled::Tree, snapshot_tree: sled::Tree, flusher: Flusher) -> Result<Self, StoreError> {
        let snapshots = SnapshotTree { tree: snapshot_tree, write_lock: Arc::default() };
        let (mut state, legacy) = load_state(&tree)?;
        if legacy {
            // The next write of such a cluster's record would drop its history from
            // disk: rewrite the whole state in the current layout first.
            replace_tree(&tree, &state)?;
            tracing::info!(
                clusters = state.registry.clusters.len(),
                "state machine rewritten with each failover record under its own key (data format 1 -> 2)"
            );
        }
        if let Some((meta, data)) = snapshots.current()? {
            if meta.last_log_id > state.last_applied {
                tracing::warn!(snapshot = %meta, applied = ?state.last_applied,
                    "state machine is behind the stored snapshot; restoring from the snapshot");
                state = decode_snapshot(&meta, &data).map_err(|e| StoreError::corrupt("snapshot/data", e))?;
                replace_tree(&tree, &state)?;
            }
        }
        tracing::info!(last_applied = ?state.last_applied, clusters = state.registry.clusters.len(),
            "state machine loaded");
        let applied = state.last_applied.map(|l| l.index).unwrap_or(0);
        let handle = StateHandle {
            inner: Arc::new(RwLock::new(state)),
            applied_tx: Arc::new(tokio::sync::watch::Sender::new(applied)),
        };
        Ok(StateMachineStore { state: handle, tree, snapshots, flusher })
    }

    /// A handle for reading the applied state (for stale reads); stays valid after
    /// the store is moved into openraft.
    pub fn state(&self) -> StateHandle {
        self.state.clone()
    }
}

/// Reads the whole `state_machine` tree; whether it holds pairs of an older layout.
fn load_state(tree: &sled::Tree) -> Result<(AppliedState, bool), StoreError> {
    let mut state = AppliedState::default();
    let mut legacy = false;
    for item in tree.iter() {
        let (key, value) = item?;
        if key.as_ref() == KEY_SM_META {
            let meta: AppliedMeta =
                serde_json::from_slice(&value).map_err(|e| StoreError::corrupt("state_machine/m/applied", e))?;
            state.last_applied = meta.last_applied;
            state.membership = meta.membership;
        } else {
            let loaded = state.registry.load(&key, &value).map_err(|e| StoreError::corrupt("state_machine", e))?;
            legacy |= loaded == Loaded::Legacy;
        }
    }
    Ok((state, legacy))
}

/// Makes the tree hold exactly `state`, in one atomic batch.
fn replace_tree(tree: &sled::Tree, state: &AppliedState) -> Result<(), StoreError> {
    let meta = AppliedMeta { last_applied: state.last_applied, membership: state.membership.clone() };
    let meta = serde_json::to_vec(&meta).map_err(|e| StoreError::corrupt("state_machine/m/applied", e))?;
    let mut wanted: std::collections::BTreeMap<Vec<u8>, Vec<u8>> =
        state.registry.encode_all().map_err(|e| StoreError::corrupt("state_machine", e))?.into_iter().collect();
    wanted.insert(KEY_SM_META.to_vec(), meta);
    let mut batch = sled::Batch::default();
    for key in tree.iter().keys() {
        let key = key?;
        if !wanted.contains_key(key.as_ref()) {
            batch.remove(key);
        }
    }
    for (k, v) in wanted {
        batch.insert(k, v);
    }
    tree.apply_batch(batch)?;
    Ok(())
}

fn decode_snapshot(meta: &SnapshotMeta, data: &[u8]) -> Result<AppliedState, String> {
    let payload: SnapshotData = serde_json::from_slice(data).map_err(|e| e.to_string())?;
    if payload.format > SNAPSHOT_FORMAT {
        return Err(format!(
            "snapshot format {} is newer than this primusd understands ({SNAPSHOT_FORMAT})",
            payload.format
        ));
    }
    if payload.last_applied != meta.last_log_id || payload.membership != meta.last_membership {
        return Err(format!(
            "snapshot content (last applied {:?}) does not match its meta {meta}",
            payload.last_applied
        ));
    }
    Ok(AppliedState { last_applied: payload.last_applied, membership: payload.membership, registry: payload.registry })
}

fn membership_summary(m: &Membership<NodeId, Member>) -> String {
    let voters: BTreeSet<NodeId> = m.voter_ids().collect();
    let learners: BTreeSet<NodeId> = m.learner_ids().collect();
    let joint = if m.get_joint_config().len() > 1 { " (joint)" } else { "" };
    format!("membership changed{joint}: voters {voters:?} learners {learners:?}")
}

fn join_err(subject: ErrorSubject<NodeId>, e: tokio::task::JoinError) -> StorageError<NodeId> {
    io_err(subject, ErrorVerb::Write, AnyError::error(format!("background task failed: {e}")))
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        // A consistent cut: last_applied, membership and registry from one moment.
        let state = self.state.cloned();
        let snapshots = self.snapshots.clone();
        let built = tokio::task::spawn_blocking(move || -> StorageResult<(SnapshotMeta, Vec<u8>)> {
            let store_err = |e: StoreError| io_err(ErrorSubject::Snapshot(None), ErrorVerb::Write, &e);
            let counter = snapshots.next_counter().map_err(store_err)?;
            let snapshot_id = match &state.last_applied {
                Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, counter),
                None => format!("--{counter}"),
            };
            let meta = SnapshotMeta {
                last_log_id: state.last_applied,
                last_membership: state.membership.clone(),
                snapshot_id,
            };
            let payload = SnapshotData {
                format: SNAPSHOT_FORMAT,
                last_applied: state.last_applied,
                membership: state.membership,
                registry: state.registry,
            };
            let data =
                serde_json::to_vec(&payload).map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
            snapshots.store(&meta, &data).map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
            Ok((meta, data))
        })
        .await
        .map_err(|e| join_err(ErrorSubject::Snapshot(None), e))??;
        let (meta, data) = built;
        self.flusher.flush().await.map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        tracing::info!(snapshot = %meta, bytes = data.len(), "snapshot built");
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> StorageResult<(Option<LogId>, StoredMembership)> {
        Ok(self.state.applied())
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<Response>>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // An entry from a newer primus must stop this node, not be "rejected": the
        // upgraded nodes apply it, and a different result here would fork the state.
        let entries: Vec<Entry> = entries.into_iter().collect();
        for e in &entries {
            if let EntryPayload::Normal(req) = &e.payload {
                if let Err(rejection) = req.check_format() {
                    tracing::error!(log_id = %e.log_id, %rejection, "cannot apply a log entry from a newer primus");
                    return Err(StorageIOError::apply(e.log_id, AnyError::error(rejection)).into());
                }
            }
        }
        let mut responses = Vec::new();
        let mut touched: BTreeSet<StateKey> = BTreeSet::new();
        let batch = {
            let mut guard = self.state.write();
            let state = &mut *guard;
            for entry in entries {
                let log_id = entry.log_id;
                state.last_applied = Some(log_id);
                let response = match entry.payload {
                    EntryPayload::Blank => Response::Internal,
                    EntryPayload::Normal(request) => {
                        let (response, keys) = state.registry.apply(&log_id, &request);
                        touched.extend(keys);
                        response
                    }
                    EntryPayload::Membership(membership) => {
                        let keys = state.registry.apply_internal(&log_id, membership_summary(&membership));
                        touched.extend(keys);
                        state.membership = StoredMembership::new(Some(log_id), membership);
                        Response::Internal
                    }
                };
                responses.push(response);
            }
            if responses.is_empty() {
                return Ok(responses);
            }
            let mut batch = sled::Batch::default();
            for key in &touched {
                match state
                    .registry
                    .encode(key)
                    .map_err(|e| io_err(ErrorSubject::StateMachine, ErrorVerb::Write, &e))?
                {
                    (k, Some(v)) => batch.insert(k, v),
                    (k, None) => batch.remove(k),
                }
            }
            let meta = AppliedMeta { last_applied: state.last_applied, membership: state.membership.clone() };
            let meta =
                serde_json::to_vec(&meta).map_err(|e| io_err(ErrorSubject::StateMachine, ErrorVerb::Write, &e))?;
            batch.insert(KEY_SM_META, meta);
            batch
        };
        // One batch, not flushed: see the module docs.
        self.tree.apply_batch(batch).map_err(|e| io_err(ErrorSubject::StateMachine, ErrorVerb::Write, &e))?;
        self.state.published();
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder { state: self.state.clone(), snapshots: self.snapshots.clone(), flusher: self.flusher.clone() }
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: Box<Cursor<Vec<u8>>>) -> StorageResult<()> {
        let data = snapshot.into_inner();
        let tree = self.tree.clone();
        let snapshots = self.snapshots.clone();
        let meta_owned = meta.clone();
        let new_state = tokio::task::spawn_blocking(move || -> StorageResult<AppliedState> {
            let meta = meta_owned;
            let state = decode_snapshot(&meta, &data)
                .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), AnyError::error(e)))?;
            replace_tree(&tree, &state).map_err(|e| io_err(ErrorSubject::StateMachine, ErrorVerb::Write, &e))?;
            snapshots.store(&meta, &data).map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
            Ok(state)
        })
        .await
        .map_err(|e| join_err(ErrorSubject::Snapshot(Some(meta.signature())), e))??;
        *self.state.write() = new_state;
        self.state.published();
        self.flusher.flush().await.map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        tracing::info!(snapshot = %meta, "snapshot installed");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        let current =
            self.snapshots.current().map_err(|e| io_err(ErrorSubject::Snapshot(None), ErrorVerb::Read, &e))?;
        Ok(current.map(|(meta, data)| Snapshot { meta, snapshot: Box::new(Cursor::new(data)) }))
    }
}
