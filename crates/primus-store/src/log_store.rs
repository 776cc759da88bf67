//! The Raft log and the Raft "hard state" (vote, committed, purged marker).
//!
//! ## Durability
//!
//! openraft's contract is that an `append` callback, and the return of
//! `save_vote`, mean "on disk". Every write below is first applied to sled (so it
//! is immediately readable) and then made durable through the single
//! [`Flusher`](crate::flusher) thread, which `fsync`s once for everything queued
//! so far (group commit) and never runs on a tokio worker.
//!
//! What needs a flush and what does not relies on one property of sled: its
//! write-ahead log is recovered in order, so after a crash the database reflects a
//! *prefix* of the operations that were applied (and each `Batch` entirely or not
//! at all). Hence:
//!
//! * `append`: one batch, callback completed only after a flush that started
//!   after the batch was applied. No hole is possible: the batch is atomic.
//! * `save_vote`: written, then awaited through the flusher before returning
//!   (a vote forgotten after a crash could let this node vote twice in a term).
//! * `save_committed`: written but not flushed. Losing it in a crash only means
//!   the node re-learns the commit index from the leader (openraft treats the
//!   persisted committed id as an optimisation); and by the prefix property it can
//!   never survive without the log entries it points to, which were flushed
//!   before they could be committed.
//! * `truncate`: one atomic batch (no hole), then awaited through the flusher.
//!   Truncation is rare (only after a leader change with conflicting entries), so
//!   paying an fsync keeps the reasoning simple: once it returns, removed entries
//!   cannot reappear.
//! * `purge`: the `last_purged` marker is written first, then the entries are
//!   removed in one batch; not flushed. If a crash loses both, the purged entries
//!   (all already applied and covered by a snapshot) simply come back and will be
//!   purged again. If it keeps only the marker, [`crate::open`] finishes the purge.
//!   It can never keep the removal without the marker (prefix property), so
//!   `get_log_state` never under-reports the purged prefix.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, ErrorSubject, ErrorVerb, OptionalSend, RaftLogReader, StorageError, StorageIOError};
use primus_types::{Entry, LogId, NodeId, TypeConfig, Vote};
use serde::de::DeserializeOwned;

use crate::error::StoreError;
use crate::flusher::{FlushStats, Flusher};
use crate::format::{index_key, key_index, KEY_COMMITTED, KEY_LAST_PURGED, KEY_VOTE};

type StorageResult<T> = Result<T, StorageError<NodeId>>;

/// openraft's [`RaftLogStorage`]: the replicated log plus vote, committed and purge marker.
///
/// Obtained from [`crate::open`]; hand it to `openraft::Raft::new`.
pub struct LogStore {
    log: sled::Tree,
    raft_state: sled::Tree,
    flusher: Flusher,
}

/// A read-only view of the log, used by openraft's replication tasks.
#[derive(Clone)]
pub struct LogReader {
    log: sled::Tree,
}

impl LogStore {
    pub(crate) fn new(log: sled::Tree, raft_state: sled::Tree, flusher: Flusher) -> Self {
        LogStore { log, raft_state, flusher }
    }

    /// True when this node has never taken part in a Raft group: no vote, no log
    /// entry and nothing purged. The server initialises the group only then.
    pub fn is_fresh(&self) -> Result<bool, StoreError> {
        Ok(self.log.is_empty()
            && !self.raft_state.contains_key(KEY_VOTE)?
            && !self.raft_state.contains_key(KEY_LAST_PURGED)?)
    }

    /// How many fsyncs the flusher did and how many waiters they completed.
    pub fn flush_stats(&self) -> FlushStats {
        self.flusher.stats()
    }

    #[cfg(test)]
    pub(crate) fn flusher(&self) -> &Flusher {
        &self.flusher
    }

    fn read_state<T: DeserializeOwned>(&self, key: &[u8], subject: ErrorSubject<NodeId>) -> StorageResult<Option<T>> {
        let raw = self.raft_state.get(key).map_err(|e| io_err(subject.clone(), ErrorVerb::Read, &e))?;
        match raw {
            None => Ok(None),
            Some(raw) => serde_json::from_slice(&raw).map(Some).map_err(|e| io_err(subject, ErrorVerb::Read, &e)),
        }
    }

    fn write_state<T: serde::Serialize>(
        &self,
        key: &[u8],
        value: &T,
        subject: ErrorSubject<NodeId>,
    ) -> StorageResult<()> {
        let raw = serde_json::to_vec(value).map_err(|e| io_err(subject.clone(), ErrorVerb::Write, &e))?;
        self.raft_state.insert(key, raw).map_err(|e| io_err(subject, ErrorVerb::Write, &e))?;
        Ok(())
    }

    async fn flush(&self, subject: ErrorSubject<NodeId>) -> StorageResult<()> {
        self.flusher.flush().await.map_err(|e| io_err(subject, ErrorVerb::Write, &e))
    }
}

/// Removes log entries the purge marker says are gone (a purge interrupted by a crash).
pub(crate) fn finish_interrupted_purge(log: &sled::Tree, raft_state: &sled::Tree) -> Result<(), StoreError> {
    let Some(raw) = raft_state.get(KEY_LAST_PURGED)? else {
        return Ok(());
    };
    let purged: LogId = serde_json::from_slice(&raw).map_err(|e| StoreError::corrupt("raft_state/last_purged", e))?;
    let mut batch = sled::Batch::default();
    let mut n = 0usize;
    for key in log.range(..=index_key(purged.index)).keys() {
        batch.remove(key?);
        n += 1;
    }
    if n > 0 {
        tracing::warn!(upto = purged.index, entries = n, "finishing a log purge interrupted by a crash");
        log.apply_batch(batch)?;
    }
    Ok(())
}

pub(crate) fn io_err(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
    source: impl Into<AnyError>,
) -> StorageError<NodeId> {
    StorageIOError::new(subject, verb, source).into()
}

/// Reads the entries whose index is in `range`, in log order.
fn read_entries<RB: RangeBounds<u64>>(log: &sled::Tree, range: RB) -> StorageResult<Vec<Entry>> {
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => match s.checked_add(1) {
            Some(s) => s,
            None => return Ok(Vec::new()),
        },
        Bound::Unbounded => 0,
    };
    // Exclusive end; `None` means "to the end of the log".
    let end = match range.end_bound() {
        Bound::Included(&e) => e.checked_add(1),
        Bound::Excluded(&e) => Some(e),
        Bound::Unbounded => None,
    };
    let iter = match end {
        Some(end) if end <= start => return Ok(Vec::new()),
        Some(end) => log.range(index_key(start)..index_key(end)),
        None => log.range(index_key(start)..),
    };
    let mut entries = Vec::new();
    for item in iter {
        let (key, value) = item.map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, &e))?;
        entries.push(decode_entry(&key, &value)?);
    }
    Ok(entries)
}

fn decode_entry(key: &[u8], value: &[u8]) -> StorageResult<Entry> {
    let Some(index) = key_index(key) else {
        let msg = format!("log key {key:?} is not an 8-byte index");
        return Err(io_err(ErrorSubject::Logs, ErrorVerb::Read, AnyError::error(msg)));
    };
    let entry: Entry = serde_json::from_slice(value).map_err(|e| {
        tracing::error!(index, error = %e, "undecodable log entry");
        StorageError::from(StorageIOError::read_log_at_index(index, &e))
    })?;
    if entry.log_id.index != index {
        let msg = format!("entry stored at index {index} has log id {}", entry.log_id);
        return Err(StorageIOError::read_log_at_index(index, AnyError::error(msg)).into());
    }
    Ok(entry)
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry>> {
        read_entries(&self.log, range)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry>> {
        read_entries(&self.log, range)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let last_purged_log_id: Option<LogId> = self.read_state(KEY_LAST_PURGED, ErrorSubject::Logs)?;
        let last = self.log.last().map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, &e))?;
        let last_in_log = match last {
            Some((key, value)) => Some(decode_entry(&key, &value)?.log_id),
            None => None,
        };
        // With no entry left (all purged) the last log id is the purged one.
        let last_log_id = last_in_log.or(last_purged_log_id);
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        LogReader { log: self.log.clone() }
    }

    async fn save_vote(&mut self, vote: &Vote) -> StorageResult<()> {
        self.write_state(KEY_VOTE, vote, ErrorSubject::Vote)?;
        self.flush(ErrorSubject::Vote).await?;
        tracing::debug!(%vote, "vote saved");
        Ok(())
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote>> {
        self.read_state(KEY_VOTE, ErrorSubject::Vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> StorageResult<()> {
        // Not flushed: see the module docs for why losing it is harmless.
        match committed {
            Some(committed) => self.write_state(KEY_COMMITTED, &committed, ErrorSubject::Store),
            None => {
                self.raft_state
                    .remove(KEY_COMMITTED)
                    .map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Delete, &e))?;
                Ok(())
            }
        }
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId>> {
        self.read_state(KEY_COMMITTED, ErrorSubject::Store)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = sled::Batch::default();
        let mut last = None;
        for entry in entries {
            let value = serde_json::to_vec(&entry).map_err(|e| StorageIOError::write_log_entry(entry.log_id, &e))?;
            batch.insert(&index_key(entry.log_id.index), value);
            last = Some(entry.log_id);
        }
        // One batch: after a crash either all of these entries are there or none.
        self.log.apply_batch(batch).map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Write, &e))?;
        tracing::trace!(last = ?last, "log entries appended, awaiting flush");
        self.flusher.complete_after_flush(callback).map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Write, &e))
    }

    async fn truncate(&mut self, log_id: LogId) -> StorageResult<()> {
        let mut batch = sled::Batch::default();
        for key in self.log.range(index_key(log_id.index)..).keys() {
            batch.remove(key.map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, &e))?);
        }
        self.log.apply_batch(batch).map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, &e))?;
        self.flush(ErrorSubject::Logs).await?;
        tracing::info!(since = %log_id, "log truncated");
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> StorageResult<()> {
        // Marker first: see the module docs for the crash reasoning.
        self.write_state(KEY_LAST_PURGED, &log_id, ErrorSubject::Logs)?;
        let mut batch = sled::Batch::default();
        for key in self.log.range(..=index_key(log_id.index)).keys() {
            batch.remove(key.map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, &e))?);
        }
        self.log.apply_batch(batch).map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, &e))?;
        tracing::debug!(upto = %log_id, "log purged");
        Ok(())
    }
}
