//! Group commit: many writers, one sync.
//!
//! A writer writes (into a segment file, or into sled), then calls [`GroupCommit::wait`]. That
//! takes a ticket and waits until a flush that *started after the ticket was taken* has
//! finished. One thread runs flushes back to back: it reads the newest ticket, flushes, and
//! reports that ticket done, so every write made before that ticket is covered. While one flush
//! runs, the next group gathers; under load each flush covers many requests, so durability costs
//! latency, not throughput. What a flush is belongs to its owner ([`Flush`]): each segment
//! stream syncs its files (`segment.rs`), the index syncs sled ([`IndexFlush`]).
//!
//! The index's flush is sled's `flush` *and* [`DiskSync`]: on Linux sled 0.34 writes its log
//! with `sync_file_range`, which neither persists the file's size nor flushes the disk's write
//! cache, and it never syncs the files it writes large values or nodes to (`blobs/`). The index
//! holds small values only, but a tree node can still outgrow sled's blob threshold (a remote
//! write destination with many series), so each flush looks at `blobs/`'s modification time
//! (one `stat`) and lists it when that moved, or is too recent to tell two changes apart.
//! Just before each index flush its `before_flush` hook writes what must be durable with every
//! flush (the newest sequence number); just after a successful one, `after_flush` runs (the
//! spool unlinks the segments that the flushed cursors and floors passed).
//!
//! A failed flush fails the tickets it covered, and every later one, and is reported
//! ([`Flush::failed`]): sled 0.34 latches the first write error, and after a failed `fsync` even
//! a later successful one says nothing about the pages that failed (the spool replaces the index
//! with a reopened one; a segment stream never reports a failure here, but poisons its segment).
//! A waiter never waits longer than [`STUCK_AFTER`]: sled 0.34 can also wedge for good (an
//! `ENOSPC` while writing a blob leaves its log buffer unwritable, and every later flush
//! blocks), and a client must then hear 503, not hang; [`GroupCommit::healthy`] turns false
//! while a flush runs longer than that.
//!
//! The same thread runs its owner's housekeeping ([`Flush::housekeep`]) after flushes, at most
//! once per [`HOUSEKEEPING_EVERY`], once more that long after the last flush of a burst, and at
//! close; never when nothing was written, so an idle spool's threads sleep without a timer.
//! Dropping the [`GroupCommit`] does a final flush and joins the thread.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;

#[derive(Debug, Clone, Default)]
struct Progress {
    /// Every ticket up to this one is covered by a finished flush (successful or not).
    done: u64,
    /// From the first failed flush on: the tickets after `from` all fail, and why.
    failed: Option<(u64, String)>,
    /// When the flush now running started (`None` between flushes).
    flushing_since: Option<Instant>,
}

/// How long a flush may take before its waiters are refused and the spool reports unhealthy.
pub const STUCK_AFTER: Duration = Duration::from_secs(10);

/// What a commit thread does: see the module docs.
pub trait Flush: Send + 'static {
    /// Makes every write made before this call durable.
    fn flush(&mut self) -> Result<(), String>;
    /// After flushes, at most once per [`HOUSEKEEPING_EVERY`] (it must be cheap).
    fn housekeep(&mut self) {}
    /// Whether [`Flush::housekeep`] does anything (if not, the thread never waits on a timer).
    fn has_housekeeping(&self) -> bool {
        false
    }
    /// Told why, after every failed flush.
    fn failed(&mut self, _why: &str) {}
}

/// What the index's commit thread runs for the spool besides flushing.
pub struct Hooks {
    /// Just before each flush, on the thread's `Db`: a write every flush must carry.
    pub before_flush: Box<dyn Fn() -> sled::Result<()> + Send + 'static>,
    /// Just after each successful flush.
    pub after_flush: Box<dyn Fn() + Send + 'static>,
    /// After flushes, at most once per [`HOUSEKEEPING_EVERY`] (it must be cheap and must not
    /// touch the `Db`).
    pub housekeeping: Box<dyn Fn() + Send + 'static>,
    /// Told why, after every failed flush.
    pub on_failure: Box<dyn Fn(String) + Send + 'static>,
}

/// The index's flush: sled's, then the syncs it leaves out, between the spool's hooks.
pub struct IndexFlush {
    pub db: sled::Db,
    pub disk: DiskSync,
    pub hooks: Hooks,
}

impl Flush for IndexFlush {
    fn flush(&mut self) -> Result<(), String> {
        let dir = self.disk.dir().to_path_buf();
        let failed = |what: &str, e: &dyn std::fmt::Display| {
            format!("{what} the spool index in {} failed: {e}", dir.display())
        };
        (self.hooks.before_flush)().map_err(|e| failed("writing to", &e))?;
        self.db.flush().map_err(|e| failed("flushing", &e))?;
        self.disk.sync().map_err(|e| failed("syncing", &e))?;
        (self.hooks.after_flush)();
        Ok(())
    }

    /// A full look at `blobs/` (catching anything a flush's quick look could not), then the
    /// spool's hook.
    fn housekeep(&mut self) {
        if let Err(e) = self.disk.sync_blobs() {
            tracing::warn!(error = %e, "syncing spool index blob files failed");
        }
        (self.hooks.housekeeping)();
    }

    fn has_housekeeping(&self) -> bool {
        true
    }

    fn failed(&mut self, why: &str) {
        (self.hooks.on_failure)(why.to_string());
    }
}

/// The longest a file sled created may wait for its housekeeping pass while the spool is written.
pub const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(1);

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
    /// The flushing thread; joined on drop so the last flush is done and the thread's `Db`
    /// handle (which holds sled's directory lock) is released when the spool is dropped.
    flusher: Option<std::thread::JoinHandle<()>>,
}

impl GroupCommit {
    /// Starts the thread `name` that runs `flush` for the waiters (see the module docs).
    pub fn start(name: &str, flush: Box<dyn Flush>) -> GroupCommit {
        let shared = Arc::new(Shared {
            requests: Mutex::new(Requests {
                newest: 0,
                closed: false,
            }),
            wake: Condvar::new(),
        });
        let (report, progress) = watch::channel(Progress::default());
        let flusher = Arc::clone(&shared);
        let flusher = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || flush_loop(&flusher, flush, &report))
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

    /// Waits until everything written before this call is durable on disk; an error if the flush
    /// failed or did not finish within [`STUCK_AFTER`] (the data may still become durable).
    pub async fn wait(&self) -> Result<(), String> {
        let ticket = self.take_ticket();
        let mut progress = self.progress.clone();
        let waited = tokio::time::timeout(STUCK_AFTER, progress.wait_for(|p| p.done >= ticket));
        let state = match waited.await {
            Ok(state) => state.map_err(|_| {
                "the spool's commit thread has stopped (see the log for why); restart the agent \
                 (acknowledged data is safe)"
                    .to_string()
            })?,
            Err(_) => {
                return Err(format!(
                    "the spool's flush did not finish within {STUCK_AFTER:?}: its disk is very \
                     slow, or sled wedged after a write error; if this goes on, restart the \
                     agent (acknowledged data is safe)"
                ))
            }
        };
        match &state.failed {
            Some((from, why)) if *from < ticket => Err(why.clone()),
            _ => Ok(()),
        }
    }

    /// Whether no flush has failed and none has been running for [`STUCK_AFTER`].
    pub fn healthy(&self) -> bool {
        let progress = self.progress.borrow();
        progress.failed.is_none()
            && progress
                .flushing_since
                .is_none_or(|since| since.elapsed() < STUCK_AFTER)
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

/// How close to a listing a modification time must be to hide a later change: file systems stamp
/// files with a coarse clock (a tick of a few milliseconds), so a file made just after a listing
/// can leave `blobs/`'s time as it was, and a blob written just after its `fsync` can leave its
/// own. Far more than any tick, and than the moment sled takes to write a blob (one go: create,
/// three writes).
const TIMESTAMP_SLACK: Duration = Duration::from_secs(1);

/// The syncs sled's flush leaves out (see the module docs).
///
/// sled writes blob files on whichever thread inserts, while flushes of earlier appends list
/// `blobs/`; so a listing can find a blob half written. A file whose time was within
/// [`TIMESTAMP_SLACK`] of its sync is "unsettled": every later flush looks at it (one `stat`)
/// and syncs it again if it grew or changed since, until its time is that old.
pub struct DiskSync {
    log: File,
    blobs: PathBuf,
    /// Blob files `fsync`ed at least once, their directory entry with them.
    synced_blobs: HashSet<OsString>,
    /// Synced files that may still be written to (see above), as they were when synced.
    unsettled_blobs: HashMap<OsString, Written>,
    /// `blobs/`'s modification time when it was last listed (`None`: it did not exist).
    listed_mtime: Option<SystemTime>,
    /// Whether that time was too close to the listing to show a file made just after it.
    listing_ambiguous: bool,
}

/// A file's length and modification time.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Written {
    len: u64,
    mtime: SystemTime,
}

impl Written {
    fn of(meta: &std::fs::Metadata) -> std::io::Result<Written> {
        Ok(Written {
            len: meta.len(),
            mtime: meta.modified()?,
        })
    }
}

impl DiskSync {
    /// For the sled database in `dir`, once it is open (its files exist). Syncs `dir` itself so
    /// the files' directory entries are durable.
    pub fn open(dir: &Path) -> std::io::Result<DiskSync> {
        File::open(dir)?.sync_all()?;
        let blobs = dir.join("blobs");
        Ok(DiskSync {
            log: File::open(dir.join("db"))?,
            listed_mtime: modified(&blobs)?,
            // What a previous run left: what it acknowledged was synced before.
            synced_blobs: blob_names(&blobs)?.into_iter().collect(),
            unsettled_blobs: HashMap::new(),
            // Until a flush lists it, with a time to compare.
            listing_ambiguous: true,
            blobs,
        })
    }

    /// `fsync`s blob files new since the last look (if `blobs/` may have any) or changed since
    /// their sync, then `fdatasync`s the log.
    pub fn sync(&mut self) -> std::io::Result<()> {
        self.resync_unsettled()?;
        if self.listing_ambiguous || modified(&self.blobs)? != self.listed_mtime {
            self.sync_blobs()?;
        }
        self.log.sync_data()
    }

    /// Syncs the unsettled files that changed since their sync; forgets those now old enough.
    fn resync_unsettled(&mut self) -> std::io::Result<()> {
        if self.unsettled_blobs.is_empty() {
            return Ok(());
        }
        let settled_by = SystemTime::now() - TIMESTAMP_SLACK;
        let mut settled = Vec::new();
        for (name, synced) in &mut self.unsettled_blobs {
            let path = self.blobs.join(name);
            let now = match std::fs::metadata(&path) {
                Ok(meta) => Written::of(&meta)?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    settled.push(name.clone());
                    continue;
                }
                Err(e) => return Err(e),
            };
            if now != *synced {
                *synced = sync_file(&path)?.unwrap_or(now);
            }
            if synced.mtime <= settled_by {
                settled.push(name.clone());
            }
        }
        for name in settled {
            self.unsettled_blobs.remove(&name);
        }
        Ok(())
    }

    /// Lists `blobs/` and `fsync`s the files not synced before, then the directory if any is
    /// new.
    fn sync_blobs(&mut self) -> std::io::Result<()> {
        // Taken first: a change while listing shows as a newer time at the next look.
        let mtime = modified(&self.blobs)?;
        let settled_by = SystemTime::now() - TIMESTAMP_SLACK;
        let present: HashSet<OsString> = blob_names(&self.blobs)?.into_iter().collect();
        let mut new = false;
        for name in present.difference(&self.synced_blobs) {
            // `None`: sled deleted it meanwhile (its segment was reclaimed).
            if let Some(written) = sync_file(&self.blobs.join(name))? {
                if written.mtime > settled_by {
                    self.unsettled_blobs.insert(name.clone(), written);
                }
                new = true;
            }
        }
        if new {
            File::open(&self.blobs)?.sync_all()?;
        }
        self.unsettled_blobs
            .retain(|name, _| present.contains(name));
        self.synced_blobs = present;
        self.listed_mtime = mtime;
        self.listing_ambiguous = mtime.is_some_and(|m| m > settled_by);
        Ok(())
    }
}

/// `fdatasync`s the file at `path`; how it was just before (`None`: it no longer exists).
fn sync_file(path: &Path) -> std::io::Result<Option<Written>> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let written = Written::of(&file.metadata()?)?;
    file.sync_data()?;
    Ok(Some(written))
}

impl DiskSync {
    /// The spool directory.
    fn dir(&self) -> &Path {
        self.blobs.parent().unwrap_or(&self.blobs)
    }
}

/// A directory's modification time; `None` if it does not exist (sled makes `blobs/` when it
/// first needs it).
fn modified(dir: &Path) -> std::io::Result<Option<SystemTime>> {
    match std::fs::metadata(dir) {
        Ok(meta) => meta.modified().map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn blob_names(dir: &Path) -> std::io::Result<Vec<OsString>> {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries.map(|e| e.map(|e| e.file_name())).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

fn flush_loop(shared: &Shared, mut flush: Box<dyn Flush>, report: &watch::Sender<Progress>) {
    let housekeeping = flush.has_housekeeping();
    let mut done = 0;
    // Sticky: see the module docs.
    let mut failed: Option<(u64, String)> = None;
    let mut last_housekeeping = Instant::now();
    // Whether anything was flushed since the last housekeeping pass.
    let mut untidy = false;
    loop {
        let (target, closed) = {
            let mut requests = shared.requests.lock().expect("commit lock poisoned");
            while requests.newest == done && !requests.closed {
                if !untidy || !housekeeping {
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
                let _ = flush.flush();
                flush.housekeep();
                return;
            }
            // Woken only for the housekeeping that follows a burst of writes.
            flush.housekeep();
            last_housekeeping = Instant::now();
            untidy = false;
            continue;
        }
        // Without waking anyone: waiters look at `done`, which does not change here.
        report.send_if_modified(|p| {
            p.flushing_since = Some(Instant::now());
            false
        });
        if let Err(e) = flush.flush() {
            tracing::error!(error = %e, "requests waiting on this flush, and all later ones, get 503");
            flush.failed(&e);
            failed.get_or_insert((done, e));
        }
        done = target;
        report.send_replace(Progress {
            done,
            failed: failed.clone(),
            flushing_since: None,
        });
        untidy = true;
        if housekeeping && last_housekeeping.elapsed() >= HOUSEKEEPING_EVERY {
            flush.housekeep();
            last_housekeeping = Instant::now();
            untidy = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;
    use std::fs::FileTimes;

    use super::*;

    /// A `DiskSync` over a bare directory (a `db` file, as sled leaves one) and its `blobs/`.
    fn disk_sync(dir: &Path) -> (DiskSync, PathBuf) {
        std::fs::write(dir.join("db"), b"").unwrap();
        let blobs = dir.join("blobs");
        std::fs::create_dir(&blobs).unwrap();
        (DiskSync::open(dir).unwrap(), blobs)
    }

    fn synced(disk: &DiskSync, name: &str) -> bool {
        disk.synced_blobs.contains(OsStr::new(name))
    }

    /// A file made in the same timestamp tick as the last listing leaves the directory's time as
    /// it was: the next flush's quick look still finds it, the time being too recent to trust.
    #[test]
    fn a_blob_file_made_in_the_tick_of_the_last_listing_is_synced() {
        let dir = tempfile::tempdir().unwrap();
        let (mut disk, blobs) = disk_sync(dir.path());
        std::fs::write(blobs.join("1"), b"node").unwrap();
        disk.sync().unwrap();
        assert!(synced(&disk, "1"));
        let listed = disk.listed_mtime.expect("blobs/ exists");
        std::fs::write(blobs.join("2"), b"node").unwrap();
        File::open(&blobs)
            .unwrap()
            .set_times(FileTimes::new().set_modified(listed))
            .unwrap();
        assert_eq!(modified(&blobs).unwrap(), Some(listed), "the same tick");
        disk.sync().unwrap();
        assert!(synced(&disk, "2"), "a blob of the same tick was missed");
    }

    /// A directory whose time has not moved since it was listed, and is old enough to trust, is
    /// not listed again; the housekeeping pass lists it anyway.
    #[test]
    fn an_unchanged_blobs_directory_is_not_listed_by_flushes() {
        let dir = tempfile::tempdir().unwrap();
        let (mut disk, blobs) = disk_sync(dir.path());
        let old = SystemTime::now() - Duration::from_secs(3600);
        std::fs::write(blobs.join("late"), b"node").unwrap();
        // As if this file had come in the same tick as an old listing.
        File::open(&blobs)
            .unwrap()
            .set_times(FileTimes::new().set_modified(old))
            .unwrap();
        disk.listed_mtime = modified(&blobs).unwrap();
        disk.listing_ambiguous = false;
        disk.sync().unwrap();
        assert!(!synced(&disk, "late"), "the quick look listed anyway");
        disk.sync_blobs().unwrap();
        assert!(synced(&disk, "late"));
    }

    /// A listing made within a tick's reach of `blobs/`'s time cannot see a file made just after
    /// it in the same tick: the next flush lists again, however much later it comes.
    #[test]
    fn a_listing_too_close_to_the_directory_time_is_repeated_by_a_late_flush() {
        let dir = tempfile::tempdir().unwrap();
        let (mut disk, blobs) = disk_sync(dir.path());
        let tick = SystemTime::now() - Duration::from_millis(500);
        let set_tick = || {
            File::open(&blobs)
                .unwrap()
                .set_times(FileTimes::new().set_modified(tick))
                .unwrap()
        };
        set_tick();
        disk.sync().unwrap();
        std::fs::write(blobs.join("same-tick"), b"node").unwrap();
        set_tick();
        // The next flush comes when the directory's time no longer looks recent.
        std::thread::sleep(TIMESTAMP_SLACK - Duration::from_millis(400));
        disk.sync().unwrap();
        assert!(
            synced(&disk, "same-tick"),
            "a late flush trusted an ambiguous listing"
        );
    }

    /// A blob file listed while sled may still be writing it is synced again by a later flush
    /// once it changed, and forgotten once its time is old enough.
    #[test]
    fn a_blob_file_listed_while_it_may_be_written_is_synced_again() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let (mut disk, blobs) = disk_sync(dir.path());
        std::fs::write(blobs.join("1"), b"half a node").unwrap();
        disk.sync().unwrap();
        assert!(synced(&disk, "1"));
        let unsettled = |disk: &DiskSync| disk.unsettled_blobs.get(OsStr::new("1")).map(|w| w.len);
        assert_eq!(unsettled(&disk), Some(11));
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(blobs.join("1"))
            .unwrap();
        file.write_all(b" and the rest").unwrap();
        disk.sync().unwrap();
        assert_eq!(
            unsettled(&disk),
            Some(24),
            "the rest of the blob was not synced"
        );
        let old = SystemTime::now() - Duration::from_secs(3600);
        file.set_times(FileTimes::new().set_modified(old)).unwrap();
        disk.sync().unwrap();
        assert!(
            disk.unsettled_blobs.is_empty(),
            "a blob written long before its sync stays unsettled"
        );
    }

    /// sled deletes blob files as it reclaims segments, also between a listing and the open.
    #[test]
    fn a_blob_file_gone_before_its_sync_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let (mut disk, blobs) = disk_sync(dir.path());
        // A dangling link lists like a file and fails to open with NotFound.
        std::os::unix::fs::symlink(blobs.join("nowhere"), blobs.join("gone")).unwrap();
        disk.sync().expect("a vanished blob is not a failed flush");
    }

    /// After a failed flush, every later waiter fails too, also once flushes succeed again: the
    /// pages that failed may be lost whatever later `fsync`s say.
    #[tokio::test]
    async fn a_failed_flush_fails_every_later_waiter() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new()
            .path(dir.path())
            .flush_every_ms(None)
            .open()
            .unwrap();
        let disk = DiskSync::open(dir.path()).unwrap();
        let calls = Arc::new(Mutex::new(0));
        let counted = Arc::clone(&calls);
        let reports = Arc::new(Mutex::new(Vec::new()));
        let reported = Arc::clone(&reports);
        let commit = GroupCommit::start(
            "spool-test",
            Box::new(IndexFlush {
                db: db.clone(),
                disk,
                hooks: Hooks {
                    before_flush: Box::new(move || {
                        let mut calls = counted.lock().unwrap();
                        *calls += 1;
                        if *calls == 1 {
                            return Err(sled::Error::Unsupported("injected".into()));
                        }
                        Ok(())
                    }),
                    after_flush: Box::new(|| {}),
                    housekeeping: Box::new(|| {}),
                    on_failure: Box::new(move |why| reported.lock().unwrap().push(why)),
                },
            }),
        );
        assert!(commit.wait().await.is_err(), "the failed flush");
        for _ in 0..3 {
            db.insert("k", "v").unwrap();
            let later = commit.wait().await;
            assert!(
                later.as_ref().is_err_and(|e| e.contains("injected")),
                "{later:?}"
            );
        }
        assert!(
            *calls.lock().unwrap() >= 2,
            "later flushes ran, and succeeded"
        );
        assert!(!commit.healthy());
        assert_eq!(reports.lock().unwrap().len(), 1, "reported once");
    }
}
