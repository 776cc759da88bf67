//! The single thread that makes writes durable (group commit).
//!
//! sled's `flush` is a blocking `fsync`: calling it on a tokio worker would stall
//! every task on that worker, and sled 0.34's `flush_async` can deadlock when
//! called concurrently. So exactly one dedicated OS thread ever calls
//! `Db::flush` on our behalf. Writers first apply their change to sled (which
//! makes it visible to readers at once), then queue a *waiter* here. The thread
//! takes every waiter queued so far, calls `flush` once, and only then completes
//! them all. Since a waiter is queued after its write was applied, and the flush
//! starts after the waiter was taken, that flush covers the write; and one fsync
//! acknowledges every append that arrived while the previous one was running,
//! which is what makes hundreds of commits per second possible on one disk.
//!
//! The thread is a plain `std::thread`, not a tokio task: openraft may drive the
//! stores from different runtimes over their life (tests do), and the flusher
//! must outlive none of them. It stops when the last store handle is dropped;
//! that drop joins it so that the database is closed (and its lock released)
//! by the time the stores are gone.

use primus_types::TypeConfig;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

use openraft::storage::LogFlushed;

use crate::error::StoreError;

/// Something to complete once the writes queued before it are on disk.
enum Waiter {
    /// An openraft `append` callback.
    Log(LogFlushed<TypeConfig>),
    /// An async caller (`save_vote`, `truncate`, snapshots) awaiting durability.
    Notify(tokio::sync::oneshot::Sender<Result<(), String>>),
}

/// Counters that show the flusher at work (and that group commit happens).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlushStats {
    /// How many times `fsync` (sled `flush`) was called.
    pub flushes: u64,
    /// How many waiters (append callbacks, vote saves, ...) those flushes completed.
    pub completed: u64,
}

#[derive(Default)]
struct Counters {
    flushes: AtomicU64,
    completed: AtomicU64,
}

/// A cheap, cloneable handle to the flusher thread.
#[derive(Clone)]
pub(crate) struct Flusher {
    inner: Arc<Inner>,
}

struct Inner {
    tx: Option<mpsc::Sender<Waiter>>,
    thread: Option<JoinHandle<()>>,
    counters: Arc<Counters>,
    #[cfg(test)]
    gate: Arc<Gate>,
}

/// Test hook that holds the flusher before its fsync.
#[cfg(test)]
#[derive(Default)]
pub(crate) struct Gate {
    paused: std::sync::Mutex<bool>,
    opened: std::sync::Condvar,
}

#[cfg(test)]
impl Gate {
    fn set(&self, paused: bool) {
        *self.paused.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = paused;
        self.opened.notify_all();
    }

    fn wait_open(&self) {
        let mut paused = self.paused.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        while *paused {
            paused = self.opened.wait(paused).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }
}

impl Flusher {
    pub(crate) fn start(db: sled::Db) -> Result<Self, StoreError> {
        let (tx, rx) = mpsc::channel();
        let counters = Arc::new(Counters::default());
        #[cfg(test)]
        let gate = Arc::new(Gate::default());
        let thread = {
            let counters = counters.clone();
            #[cfg(test)]
            let gate = gate.clone();
            std::thread::Builder::new()
                .name("primus-store-flusher".into())
                .spawn(move || {
                    run(
                        db,
                        rx,
                        &counters,
                        #[cfg(test)]
                        &gate,
                    )
                })
                .map_err(|e| StoreError::Sled(sled::Error::Io(e)))?
        };
        Ok(Flusher {
            inner: Arc::new(Inner {
                tx: Some(tx),
                thread: Some(thread),
                counters,
                #[cfg(test)]
                gate,
            }),
        })
    }

    /// Completes `callback` once everything written so far is on disk. Never blocks.
    pub(crate) fn complete_after_flush(&self, callback: LogFlushed<TypeConfig>) -> Result<(), StoreError> {
        self.send(Waiter::Log(callback))
    }

    /// Waits (asynchronously) until everything written so far is on disk.
    pub(crate) async fn flush(&self) -> Result<(), StoreError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send(Waiter::Notify(tx))?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(StoreError::Sled(sled::Error::Io(io::Error::other(reason)))),
            Err(_) => Err(StoreError::FlusherStopped),
        }
    }

    pub(crate) fn stats(&self) -> FlushStats {
        FlushStats {
            flushes: self.inner.counters.flushes.load(Ordering::Acquire),
            completed: self.inner.counters.completed.load(Ordering::Acquire),
        }
    }

    /// Test hook: until [`Self::resume`], the flusher cannot start an fsync.
    #[cfg(test)]
    pub(crate) fn pause(&self) {
        self.inner.gate.set(true);
    }

    #[cfg(test)]
    pub(crate) fn resume(&self) {
        self.inner.gate.set(false);
    }

    fn send(&self, waiter: Waiter) -> Result<(), StoreError> {
        match &self.inner.tx {
            Some(tx) => tx.send(waiter).map_err(|_| StoreError::FlusherStopped),
            None => Err(StoreError::FlusherStopped),
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the channel ends the thread's loop after it has served every
        // waiter already queued; joining makes sure its `Db` handle is gone.
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the log flusher thread panicked");
            }
        }
    }
}

fn run(db: sled::Db, rx: mpsc::Receiver<Waiter>, counters: &Counters, #[cfg(test)] gate: &Gate) {
    tracing::debug!("log flusher started");
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        batch.extend(rx.try_iter());
        #[cfg(test)]
        gate.wait_open();
        let result = db.flush();
        // Counted before the waiters learn of it, so a woken waiter sees its flush.
        counters.flushes.fetch_add(1, Ordering::AcqRel);
        counters.completed.fetch_add(batch.len() as u64, Ordering::AcqRel);
        if let Err(e) = &result {
            tracing::error!(error = %e, waiters = batch.len(), "flushing the store to disk failed");
        }
        for waiter in batch {
            let outcome = result.as_ref().map(|_| ()).map_err(|e| e.to_string());
            match waiter {
                Waiter::Log(callback) => callback.log_io_completed(outcome.map_err(io::Error::other)),
                Waiter::Notify(tx) => {
                    // The waiting caller may have given up (e.g. its task was cancelled).
                    let _ = tx.send(outcome);
                }
            }
        }
    }
    tracing::debug!("log flusher stopped");
}
