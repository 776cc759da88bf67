//! Errors raised while opening a data directory.
//!
//! Once the stores are open, failures are reported to openraft as
//! [`openraft::StorageError`] (which makes the node stop rather than continue on
//! damaged state); [`StoreError`] is for everything that happens before that, when
//! the server can still print a clear message and exit.

/// Why a data directory could not be opened (or a store helper failed).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The embedded database (sled) reported an error, including I/O errors and a
    /// data directory already opened by another process.
    #[error("storage engine error: {0}")]
    Sled(#[from] sled::Error),

    /// The data directory was written by a primus whose on-disk format this build
    /// does not know (usually a newer release). Nothing was changed on disk.
    #[error(
        "data directory format version {found} is not supported by this primusd (it writes version {supported} \
         and reads versions {} to {supported}); run the primusd release that wrote it, or restore the node from \
         its peers into an empty data directory",
        crate::format::OLDEST_READABLE_FORMAT
    )]
    UnsupportedFormat { found: u32, supported: u32 },

    /// The data directory holds Raft data but no format version, so it was not
    /// created by primus-store (or its metadata was lost). Refusing beats guessing.
    #[error(
        "data directory holds data but no primus format version; refusing to open it \
         (was it created by another program?)"
    )]
    MissingFormatVersion,

    /// Something on disk could not be decoded.
    #[error("corrupt data in {what}: {reason}")]
    Corrupt { what: String, reason: String },

    /// The background flusher has stopped, so nothing can be made durable any more.
    #[error("the log flusher thread has stopped")]
    FlusherStopped,
}

impl StoreError {
    pub(crate) fn corrupt(what: impl Into<String>, reason: impl ToString) -> Self {
        StoreError::Corrupt { what: what.into(), reason: reason.to_string() }
    }
}
