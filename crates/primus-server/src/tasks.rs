//! The background tasks of one component (the monitor, the engine, the lease table),
//! so that they can all be stopped at once: a simulator stops a "killed" coordinator's
//! tasks this way (a process that dies takes its tasks with it; tokio tasks do not
//! end with their spawner).

use std::future::Future;
use std::sync::Mutex;
use tokio::task::{AbortHandle, JoinHandle};

#[derive(Default)]
pub struct Tasks {
    handles: Mutex<Vec<AbortHandle>>,
    stopped: std::sync::atomic::AtomicBool,
}

impl Tasks {
    /// Spawn `fut` as one of this component's tasks (aborted at once if stopped).
    pub fn spawn<F>(&self, fut: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let h = tokio::spawn(fut);
        let mut handles = self.handles.lock().unwrap_or_else(|p| p.into_inner());
        if self.stopped.load(std::sync::atomic::Ordering::SeqCst) {
            h.abort();
        } else {
            handles.retain(|h| !h.is_finished());
            handles.push(h.abort_handle());
        }
        h
    }

    /// Abort every task spawned so far, and every one spawned from now on.
    pub fn stop(&self) {
        self.stopped.store(true, std::sync::atomic::Ordering::SeqCst);
        for h in self.handles.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            h.abort();
        }
    }
}
