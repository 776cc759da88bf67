//! On-disk layout: tree names, keys and the data-format version.
//!
//! One sled database holds everything, split into trees so that each kind of data
//! can be scanned and cleared on its own while sharing a single write-ahead log
//! (one `flush` makes all of them durable, and sled recovers its log in order):
//!
//! | tree            | key                                  | value                                      |
//! |-----------------|--------------------------------------|--------------------------------------------|
//! | `meta`          | `format_version`                     | `u32`, big-endian                          |
//! | `raft_log`      | log index, `u64` big-endian          | JSON `openraft::Entry<TypeConfig>`         |
//! | `raft_state`    | `vote`, `committed`, `last_purged`   | JSON `Vote` / `LogId`                      |
//! | `state_machine` | `Registry::encode` keys, `m/applied` | registry JSON / JSON [`AppliedMeta`]       |
//!
//! `Registry::encode` keys: `c/NAME` a cluster's record without its history,
//! `h/NAME/INDEX` one failover record of it (INDEX: the log index that started it,
//! big-endian), `a/INDEX` an audit record, `n/members_seen`, `n/feature_level`.
//! | `snapshot`      | `meta`, `data`, `counter`            | JSON `SnapshotMeta`, raw bytes, `u64` BE   |
//!
//! Indexes are big-endian so that sled's byte order is numeric order: range scans
//! over the log are log order and `last()` is the newest entry.
//!
//! The format version is written when a directory is created. A directory with a
//! version this build does not know (typically a newer release after a downgrade)
//! is refused instead of being misread; so is one that holds data but no version.
//!
//! Versions: **1** kept each cluster's failover history inside its `c/` record, so
//! every failover step rewrote up to 100 failover records; **2** (this build) keeps
//! each failover record under its own `h/` key. A version-1 directory is rewritten
//! in the version-2 layout once, at open (one batch), and then marked 2; a
//! version-1 primusd refuses a version-2 directory with a clear error.

use crate::error::StoreError;
use primus_types::{LogId, StoredMembership};
use serde::{Deserialize, Serialize};

/// The data-format version this build writes.
pub const FORMAT_VERSION: u32 = 2;
/// The oldest version this build reads (and migrates to [`FORMAT_VERSION`] at open).
pub const OLDEST_READABLE_FORMAT: u32 = 1;

pub(crate) const TREE_META: &str = "meta";
pub(crate) const TREE_LOG: &str = "raft_log";
pub(crate) const TREE_RAFT_STATE: &str = "raft_state";
pub(crate) const TREE_STATE_MACHINE: &str = "state_machine";
pub(crate) const TREE_SNAPSHOT: &str = "snapshot";

pub(crate) const KEY_FORMAT_VERSION: &[u8] = b"format_version";

pub(crate) const KEY_VOTE: &[u8] = b"vote";
pub(crate) const KEY_COMMITTED: &[u8] = b"committed";
pub(crate) const KEY_LAST_PURGED: &[u8] = b"last_purged";

/// Must not start with a `Registry` key prefix (`c/`, `a/`) nor be one of its keys (`n/members_seen`, `n/feature_level`).
pub(crate) const KEY_SM_META: &[u8] = b"m/applied";

pub(crate) const KEY_SNAPSHOT_META: &[u8] = b"meta";
pub(crate) const KEY_SNAPSHOT_DATA: &[u8] = b"data";
pub(crate) const KEY_SNAPSHOT_COUNTER: &[u8] = b"counter";

/// What the state machine records next to the registry, in the same batch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct AppliedMeta {
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
}

/// The sled key of log index `index`.
pub(crate) fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

/// The log index a sled key stands for, if it is one.
pub(crate) fn key_index(key: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(key).ok().map(u64::from_be_bytes)
}

/// Checks (or, on a new directory, writes) the data-format version; the version found.
pub(crate) fn check_or_init_format(db: &sled::Db) -> Result<u32, StoreError> {
    let meta = db.open_tree(TREE_META)?;
    match meta.get(KEY_FORMAT_VERSION)? {
        Some(raw) => {
            let bytes = <[u8; 4]>::try_from(raw.as_ref())
                .map_err(|_| StoreError::corrupt("meta/format_version", format!("{} bytes, expected 4", raw.len())))?;
            let found = u32::from_be_bytes(bytes);
            if !(OLDEST_READABLE_FORMAT..=FORMAT_VERSION).contains(&found) {
                return Err(StoreError::UnsupportedFormat { found, supported: FORMAT_VERSION });
            }
            Ok(found)
        }
        None => {
            if holds_data(db)? {
                return Err(StoreError::MissingFormatVersion);
            }
            meta.insert(KEY_FORMAT_VERSION, &FORMAT_VERSION.to_be_bytes())?;
            // Once, at creation: the version must be on disk before any Raft data is.
            db.flush()?;
            tracing::info!(version = FORMAT_VERSION, "initialised new data directory");
            Ok(FORMAT_VERSION)
        }
    }
}

/// Marks the directory as written in [`FORMAT_VERSION`]'s layout, durably (after the
/// state machine was migrated to it).
pub(crate) fn mark_current_format(db: &sled::Db) -> Result<(), StoreError> {
    db.open_tree(TREE_META)?.insert(KEY_FORMAT_VERSION, &FORMAT_VERSION.to_be_bytes())?;
    db.flush()?;
    tracing::info!(version = FORMAT_VERSION, "data directory format upgraded");
    Ok(())
}

/// Whether any tree (including sled's default tree) has a key.
fn holds_data(db: &sled::Db) -> Result<bool, StoreError> {
    if !db.is_empty() {
        return Ok(true);
    }
    for name in db.tree_names() {
        if name.as_ref() == TREE_META.as_bytes() {
            continue;
        }
        if !db.open_tree(&name)?.is_empty() {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_keys_sort_numerically() {
        let mut keys: Vec<[u8; 8]> = [300u64, 2, u64::MAX, 0, 256].iter().map(|i| index_key(*i)).collect();
        keys.sort();
        let back: Vec<Option<u64>> = keys.iter().map(|k| key_index(k)).collect();
        assert_eq!(back, vec![Some(0), Some(2), Some(256), Some(300), Some(u64::MAX)]);
        assert_eq!(key_index(b"short"), None);
    }
}
