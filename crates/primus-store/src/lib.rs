//! Durable storage for primus's Raft group: openraft 0.9 storage-v2 on sled.
//!
//! Why this shape:
//! * **One sled database, several trees** (`raft_log`, `raft_state`,
//!   `state_machine`, `snapshot`, `meta`; layout in `src/format.rs`): one
//!   write-ahead log means one `fsync` makes everything durable, and sled
//!   recovers its operations in order, which the crash reasoning in
//!   `src/log_store.rs` and `src/state_machine.rs` relies on.
//! * **One flusher thread** (`src/flusher.rs`): openraft's `append` callback
//!   must fire only once entries are on disk. A dedicated thread calls sled's
//!   blocking `flush` for every append queued so far (group commit), so no
//!   tokio worker ever waits for a disk and many commits share one fsync.
//! * **A format version** written at creation: a directory written by a newer
//!   primus is refused with [`StoreError::UnsupportedFormat`] rather than misread.
//!
//! Usage by the server:
//!
//! ```no_run
//! # fn main() -> Result<(), primus_store::StoreError> {
//! let (log_store, sm_store) = primus_store::open(std::path::Path::new("/var/lib/primus"))?;
//! let must_initialise = log_store.is_fresh()?;
//! let state = sm_store.state(); // for stale reads, after the store is moved into openraft
//! // openraft::Raft::new(id, config, network, log_store, sm_store).await
//! # let _ = (must_initialise, state); Ok(()) }
//! ```

// openraft's trait methods return `StorageError` (over 200 bytes); our helpers return
// the same type so `?` works, and it only ever travels on the (fatal) error path.
#![allow(clippy::result_large_err)]

mod error;
mod flusher;
mod format;
mod log_store;
mod state_machine;
#[cfg(test)]
mod tests;

use std::path::Path;

pub use error::StoreError;
pub use flusher::FlushStats;
pub use format::{FORMAT_VERSION, OLDEST_READABLE_FORMAT};
pub use log_store::{LogReader, LogStore};
pub use state_machine::{AppliedState, SnapshotBuilder, StateHandle, StateMachineStore};

/// Opens (creating if needed) the data directory at `path`.
///
/// Refuses directories of an unknown or newer data format
/// ([`StoreError::UnsupportedFormat`]) and directories that hold data but no
/// format version ([`StoreError::MissingFormatVersion`]); a directory already open
/// (in this or another process) fails with [`StoreError::Sled`].
///
/// Blocking (it reads the state machine and may fsync once): call it before
/// starting Raft, or from `spawn_blocking`.
pub fn open(path: &Path) -> Result<(LogStore, StateMachineStore), StoreError> {
    let db = sled::Config::new().path(path).open()?;
    let format = format::check_or_init_format(&db)?;
    let log = db.open_tree(format::TREE_LOG)?;
    let raft_state = db.open_tree(format::TREE_RAFT_STATE)?;
    let sm = db.open_tree(format::TREE_STATE_MACHINE)?;
    let snapshot = db.open_tree(format::TREE_SNAPSHOT)?;

    log_store::finish_interrupted_purge(&log, &raft_state)?;
    let flusher = flusher::Flusher::start(db.clone())?;
    // Rewrites an older layout (format 1: history inside the cluster records) in one
    // batch; only then is the directory marked with the new version. A crash between
    // the two leaves a version-1 mark on a version-2 layout, which loads the same.
    let sm_store = StateMachineStore::open(sm, snapshot, flusher.clone())?;
    if format < format::FORMAT_VERSION {
        format::mark_current_format(&db)?;
    }
    let log_store = LogStore::new(log, raft_state, flusher);
    tracing::info!(path = %path.display(), "store opened");
    Ok((log_store, sm_store))
}
