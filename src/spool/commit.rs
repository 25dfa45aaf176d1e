//! Group commit: many appenders, one `fsync`.
//!
//! An appender inserts into sled (in memory, not yet durable), then calls [`GroupCommit::wait`].
//! That takes a ticket and waits until a flush that *started after the ticket was taken* has
//! finished. One thread runs flushes back to back: it reads the newest ticket, flushes, and
//! reports that ticket done, so every insert made before that ticket is covered. While one flush
//! runs, the next group gathers; under load each flush covers many requests, so durability costs
//! latency, not throughput.
//!
//! A failed flush fails the tickets it covered; a later successful flush also covers them (sled
//! flushes everything dirty), so a waiter that wakes after a later success is durable. This file
//! knows nothing of records or signals.

use std::sync::{Arc, Condvar, Mutex};

use tokio::sync::watch;

#[derive(Debug, Clone, Default)]
struct Progress {
    /// Every ticket up to this one is covered by a finished flush (successful or not).
    done: u64,
    /// The tickets `(from, to]` covered by the most recent flush, if it failed, and why.
    failed: Option<(u64, u64, String)>,
}

struct Requests {
    newest: u64,
    closed: bool,
}

struct Shared {
    requests: Mutex<Requests>,
    wake: Condvar,
}

pub struct GroupCommit {
    shared: Arc<Shared>,
    progress: watch::Receiver<Progress>,
}

impl GroupCommit {
    /// Starts the flushing thread for `db`.
    pub fn start(db: sled::Db) -> GroupCommit {
        let shared = Arc::new(Shared {
            requests: Mutex::new(Requests {
                newest: 0,
                closed: false,
            }),
            wake: Condvar::new(),
        });
        let (report, progress) = watch::channel(Progress::default());
        let flusher = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("spool-commit".into())
            .spawn(move || flush_loop(&flusher, &db, &report))
            .expect("spawning the spool commit thread");
        GroupCommit { shared, progress }
    }

    fn take_ticket(&self) -> u64 {
        let mut requests = self.shared.requests.lock().expect("commit lock poisoned");
        requests.newest += 1;
        self.shared.wake.notify_one();
        requests.newest
    }

    /// Waits until everything inserted before this call is durable on disk.
    pub async fn wait(&self) -> Result<(), String> {
        let ticket = self.take_ticket();
        let mut progress = self.progress.clone();
        let state = progress
            .wait_for(|p| p.done >= ticket)
            .await
            .map_err(|_| "the spool commit thread has stopped".to_string())?;
        match &state.failed {
            Some((from, to, why)) if *from < ticket && ticket <= *to => Err(why.clone()),
            _ => Ok(()),
        }
    }

    /// Whether the most recent flush succeeded.
    pub fn healthy(&self) -> bool {
        self.progress.borrow().failed.is_none()
    }

    /// Asks for a flush soon without waiting for it (cursor moves, deletions: losing them in a
    /// crash only means resending, never loss).
    pub fn flush_soon(&self) {
        self.take_ticket();
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        let mut requests = self.shared.requests.lock().expect("commit lock poisoned");
        requests.closed = true;
        self.shared.wake.notify_one();
    }
}

fn flush_loop(shared: &Shared, db: &sled::Db, report: &watch::Sender<Progress>) {
    let mut done = 0;
    loop {
        let target = {
            let mut requests = shared.requests.lock().expect("commit lock poisoned");
            while requests.newest == done && !requests.closed {
                requests = shared.wake.wait(requests).expect("commit lock poisoned");
            }
            if requests.newest == done {
                // Closed with nothing pending: flush once more so a clean stop leaves nothing dirty.
                let _ = db.flush();
                return;
            }
            requests.newest
        };
        let failed = match db.flush() {
            Ok(_) => None,
            Err(e) => {
                tracing::error!(error = %e, "spool flush (fsync) failed; requests waiting on it get 503");
                Some((done, target, format!("spool flush failed: {e}")))
            }
        };
        done = target;
        report.send_replace(Progress { done, failed });
    }
}
