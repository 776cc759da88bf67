//! Tests that need the flusher's test hook (so they live inside the crate).

use std::time::Duration;

use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use openraft::{CommittedLeaderId, EntryPayload, RaftLogReader};
use primus_types::{Entry, LogId};

fn blank(index: u64) -> Entry {
    Entry { log_id: LogId::new(CommittedLeaderId::new(1, 1), index), payload: EntryPayload::Blank }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_callback_fires_only_after_flush() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let (mut log, _sm) = crate::open(dir.path())?;
    let flusher = log.flusher().clone();
    let mut reader = log.get_log_reader().await;
    let before = flusher.stats();

    flusher.pause();
    let append = tokio::spawn(async move { log.blocking_append([blank(1), blank(2)]).await.map(|()| log) });
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The entries are readable as soon as `append` has run...
    assert_eq!(reader.try_get_log_entries(..).await?.len(), 2);
    // ...but the callback must wait for the fsync, which the gate holds back.
    assert!(!append.is_finished(), "append callback fired before the flush");
    assert_eq!(flusher.stats().flushes, before.flushes, "no flush may have completed yet");

    flusher.resume();
    let log = tokio::time::timeout(Duration::from_secs(10), append).await???;
    let after = flusher.stats();
    assert_eq!(after.flushes, before.flushes + 1, "exactly one fsync acknowledged the append");
    assert_eq!(after.completed, before.completed + 1);
    drop(log);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_waiters_share_one_flush() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let (log, _sm) = crate::open(dir.path())?;
    let flusher = log.flusher().clone();
    let before = flusher.stats();

    flusher.pause();
    let mut waiters = Vec::new();
    for _ in 0..10 {
        let f = flusher.clone();
        waiters.push(tokio::spawn(async move { f.flush().await }));
        // Let each waiter reach the queue; the first one is taken and held at the gate.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    flusher.resume();
    for w in waiters {
        tokio::time::timeout(Duration::from_secs(10), w).await???;
    }
    let after = flusher.stats();
    assert_eq!(after.completed - before.completed, 10);
    assert_eq!(after.flushes - before.flushes, 2, "the first flush, then one for the nine queued behind it");
    Ok(())
}
