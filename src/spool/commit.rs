//! Group commit: many appenders, one `fsync`.
//!
//! An appender inserts into sled (in memory, not yet durable), then calls [`GroupCommit::wait`].
//! That takes a ticket and waits until a flush that *started after the ticket was taken* has
//! finished. One thread runs flushes back to back: it reads the newest ticket, flushes, and
//! reports that ticket done, so every insert made before that ticket is covered. While one flush
//! runs, the next group gathers; under load each flush covers many requests, so durability costs
//! latency, not throughput.
//!
//! "Flush" here is sled's `flush` *and* [`DiskSync`]: on Linux sled 0.34 writes its log with
//! `sync_file_range`, which neither persists the file's size nor flushes the disk's write cache,
//! and it never syncs the files it writes large values to (`blobs/`). That survives a killed
//! process but not a power cut, so after each sled flush we `fdatasync` the log, and — when an
//! appender said a large value was written ([`GroupCommit::note_large_value`]) — `fsync` new blob
//! files and their directory first. Blobs written by other trees (dead letters, export state)
//! are synced by the housekeeping pass, within [`HOUSEKEEPING_EVERY`].
//!
//! Just before each flush the thread runs the spool's `before_flush` hook ([`Hooks`]): writes
//! that must be durable with every flush (the spool's newest sequence number), made once per
//! flush rather than once per append.
//!
//! A failed flush fails the tickets it covered and is reported to the spool (the `on_failure`
//! hook), which reopens the database: sled 0.34 latches the first write error and fails every
//! later operation. A waiter never waits longer than [`STUCK_AFTER`]: sled 0.34 can also wedge
//! for good (an `ENOSPC` while writing a blob leaves its log buffer unwritable, and every later
//! flush blocks), and a client must then hear 503, not hang; [`GroupCommit::healthy`] turns false
//! while a flush runs longer than that.
//!
//! The same thread runs the spool's file housekeeping (a callback: owner-only permissions on the
//! files sled creates as it goes) after flushes, at most once per [`HOUSEKEEPING_EVERY`], once
//! more that long after the last flush of a burst, and at close; never when nothing was written.
//! Dropping the [`GroupCommit`] does a final flush and joins the thread. This file knows nothing
//! of records or signals.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

#[derive(Debug, Clone, Default)]
struct Progress {
    /// Every ticket up to this one is covered by a finished flush (successful or not).
    done: u64,
    /// The tickets `(from, to]` covered by the most recent flush, if it failed, and why.
    failed: Option<(u64, u64, String)>,
    /// When the flush now running started (`None` between flushes).
    flushing_since: Option<Instant>,
}

/// How long a flush may take before its waiters are refused and the spool reports unhealthy.
pub const STUCK_AFTER: Duration = Duration::from_secs(10);

/// What the commit thread runs for the spool besides flushing.
pub struct Hooks {
    /// Just before each flush, on the thread's `Db`: a write every flush must carry.
    pub before_flush: Box<dyn Fn() -> sled::Result<()> + Send + 'static>,
    /// After flushes, at most once per [`HOUSEKEEPING_EVERY`] (it must be cheap and must not
    /// touch the `Db`).
    pub housekeeping: Box<dyn Fn() + Send + 'static>,
    /// Told why, after every failed flush.
    pub on_failure: Box<dyn Fn(String) + Send + 'static>,
}

/// The longest a file sled created may wait for its housekeeping pass while the spool is written.
pub const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(1);

struct Requests {
    newest: u64,
    closed: bool,
}

struct Shared {
    /// Set by [`GroupCommit::note_large_value`]: the next flush must look for new blob files.
    large_value_written: AtomicBool,
    requests: Mutex<Requests>,
    wake: Condvar,
}

pub struct GroupCommit {
    shared: Arc<Shared>,
    progress: watch::Receiver<Progress>,
    /// The flushing thread; joined on drop so the last flush is done and the thread's `Db`
    /// handle (which holds sled's directory lock) is released when the spool is dropped.
    flusher: Option<std::thread::JoinHandle<()>>,
}

impl GroupCommit {
    /// Starts the flushing thread for `db`, which also runs the spool's `hooks` (see the module
    /// docs).
    pub fn start(db: sled::Db, disk: DiskSync, hooks: Hooks) -> GroupCommit {
        let shared = Arc::new(Shared {
            requests: Mutex::new(Requests {
                newest: 0,
                closed: false,
            }),
            wake: Condvar::new(),
            large_value_written: AtomicBool::new(false),
        });
        let (report, progress) = watch::channel(Progress::default());
        let flusher = Arc::clone(&shared);
        let flusher = std::thread::Builder::new()
            .name("spool-commit".into())
            .spawn(move || flush_loop(&flusher, &db, disk, &report, &hooks))
            .expect("spawning the spool commit thread");
        GroupCommit {
            shared,
            progress,
            flusher: Some(flusher),
        }
    }

    fn take_ticket(&self) -> u64 {
        let mut requests = self.shared.requests.lock().expect("commit lock poisoned");
        requests.newest += 1;
        self.shared.wake.notify_one();
        requests.newest
    }

    /// Waits until everything inserted before this call is durable on disk; an error if the flush
    /// failed or did not finish within [`STUCK_AFTER`] (the data may still become durable).
    pub async fn wait(&self) -> Result<(), String> {
        let ticket = self.take_ticket();
        let mut progress = self.progress.clone();
        let waited = tokio::time::timeout(STUCK_AFTER, progress.wait_for(|p| p.done >= ticket));
        let state = match waited.await {
            Ok(state) => state.map_err(|_| "the spool commit thread has stopped".to_string())?,
            Err(_) => {
                return Err(format!(
                    "the spool's flush did not finish within {STUCK_AFTER:?}: its disk is very \
                     slow, or sled wedged after a write error; if this goes on, restart the \
                     agent (acknowledged data is safe)"
                ))
            }
        };
        match &state.failed {
            Some((from, to, why)) if *from < ticket && ticket <= *to => Err(why.clone()),
            _ => Ok(()),
        }
    }

    /// Whether the most recent flush succeeded and none has been running for [`STUCK_AFTER`].
    pub fn healthy(&self) -> bool {
        let progress = self.progress.borrow();
        progress.failed.is_none()
            && progress
                .flushing_since
                .is_none_or(|since| since.elapsed() < STUCK_AFTER)
    }

    /// Says that a value large enough for sled to put in a blob file is about to be written, so
    /// the flush that covers it syncs new blob files (listing `blobs/` on every flush would cost
    /// every request; other writers' blobs are synced by the housekeeping pass within a second).
    pub fn note_large_value(&self) {
        self.shared.large_value_written.store(true, SeqCst);
    }

    /// Asks for a flush soon without waiting for it (cursor moves, deletions: losing them in a
    /// crash only means resending, never loss).
    pub fn flush_soon(&self) {
        self.take_ticket();
    }
}

impl Drop for GroupCommit {
    /// Stops the thread after a final flush and waits for it: once the spool is dropped its
    /// directory can be opened again at once (a restart in the same process).
    fn drop(&mut self) {
        {
            let mut requests = self.shared.requests.lock().expect("commit lock poisoned");
            requests.closed = true;
            self.shared.wake.notify_one();
        }
        if let Some(flusher) = self.flusher.take() {
            let _ = flusher.join();
        }
    }
}

/// The syncs sled's flush leaves out (see the module docs).
pub struct DiskSync {
    log: File,
    blobs: PathBuf,
    synced_blobs: HashSet<OsString>,
}

impl DiskSync {
    /// For the sled database in `dir`, once it is open (its files exist). Syncs `dir` itself so
    /// the files' directory entries are durable.
    pub fn open(dir: &Path) -> std::io::Result<DiskSync> {
        File::open(dir)?.sync_all()?;
        let blobs = dir.join("blobs");
        Ok(DiskSync {
            log: File::open(dir.join("db"))?,
            synced_blobs: blob_names(&blobs)?.into_iter().collect(),
            blobs,
        })
    }

    /// `fdatasync`s the log, and first `fsync`s blob files new since the last look when asked.
    fn sync(&mut self, blobs: bool) -> std::io::Result<()> {
        if blobs {
            self.sync_blobs()?;
        }
        self.log.sync_data()
    }

    fn sync_blobs(&mut self) -> std::io::Result<()> {
        let present = blob_names(&self.blobs)?;
        let mut new = false;
        for name in &present {
            if !self.synced_blobs.contains(name) {
                File::open(self.blobs.join(name))?.sync_data()?;
                new = true;
            }
        }
        if new {
            File::open(&self.blobs)?.sync_all()?;
        }
        self.synced_blobs = present.into_iter().collect();
        Ok(())
    }
}

fn blob_names(dir: &Path) -> std::io::Result<Vec<OsString>> {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries.map(|e| e.map(|e| e.file_name())).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// sled's flush, then the syncs it leaves out.
fn flush(db: &sled::Db, disk: &mut DiskSync, blobs: bool, hooks: &Hooks) -> Result<(), String> {
    (hooks.before_flush)().map_err(|e| format!("spool write before a flush failed: {e}"))?;
    db.flush().map_err(|e| format!("spool flush failed: {e}"))?;
    disk.sync(blobs)
        .map_err(|e| format!("spool fsync failed: {e}"))
}

fn flush_loop(
    shared: &Shared,
    db: &sled::Db,
    mut disk: DiskSync,
    report: &watch::Sender<Progress>,
    hooks: &Hooks,
) {
    let mut done = 0;
    let mut last_housekeeping = Instant::now();
    // Whether anything was flushed since the last housekeeping pass.
    let mut untidy = false;
    loop {
        let (target, closed) = {
            let mut requests = shared.requests.lock().expect("commit lock poisoned");
            while requests.newest == done && !requests.closed {
                if !untidy {
                    requests = shared.wake.wait(requests).expect("commit lock poisoned");
                    continue;
                }
                let left = HOUSEKEEPING_EVERY.saturating_sub(last_housekeeping.elapsed());
                if left.is_zero() {
                    break;
                }
                requests = shared
                    .wake
                    .wait_timeout(requests, left)
                    .expect("commit lock poisoned")
                    .0;
            }
            (requests.newest, requests.closed)
        };
        if target == done {
            if closed {
                // Closed with nothing pending: flush once more so a clean stop leaves nothing dirty.
                let _ = flush(db, &mut disk, true, hooks);
                (hooks.housekeeping)();
                return;
            }
            // Woken only for the housekeeping that follows a burst of writes.
            if let Err(e) = disk.sync_blobs() {
                tracing::warn!(error = %e, "syncing spool blob files failed");
            }
            (hooks.housekeeping)();
            last_housekeeping = Instant::now();
            untidy = false;
            continue;
        }
        let blobs = shared.large_value_written.swap(false, SeqCst);
        // Without waking anyone: waiters look at `done`, which does not change here.
        report.send_if_modified(|p| {
            p.flushing_since = Some(Instant::now());
            false
        });
        let failed = match flush(db, &mut disk, blobs, hooks) {
            Ok(()) => None,
            Err(e) => {
                tracing::error!(error = %e, "requests waiting on this flush get 503");
                (hooks.on_failure)(e.clone());
                Some((done, target, e))
            }
        };
        done = target;
        report.send_replace(Progress {
            done,
            failed,
            flushing_since: None,
        });
        untidy = true;
        if last_housekeeping.elapsed() >= HOUSEKEEPING_EVERY {
            if let Err(e) = disk.sync_blobs() {
                tracing::warn!(error = %e, "syncing spool blob files failed");
            }
            (hooks.housekeeping)();
            last_housekeeping = Instant::now();
            untidy = false;
        }
    }
}
