//! The spool: durable, bounded storage between the receiver and the export workers.
//!
//! On-disk layout (one sled `Db` in `spool.dir`, opened once; sled's file lock is the
//! single-instance guard):
//! - `traces`, `metrics`, `logs`: key = big-endian `u64` sequence number, value = a
//!   [`record`] (header + canonical OTLP protobuf). Sequence numbers are global across the
//!   three trees and only grow, also across restarts (they resume above `meta`'s `last_seq`).
//! - `cursors`: `"<destination>/<signal>"` → the last sequence that destination acknowledged.
//! - `dead_letter`: records an upstream refused as malformed, and records that no longer decode
//!   (JSON description, newline, payload).
//! - `meta`: `format` → the layout version; `last_seq` → the newest sequence handed out (written
//!   by the commit thread just before each flush, so it covers every append that flush makes
//!   durable), so numbers are never reused after every record and cursor that named them is
//!   gone.
//! - Beside sled's files, `durable-seq`: the [`mark`] that tells a database which lost
//!   acknowledged writes at open.
//! - `state/<kind>/<destination>`: opaque state a destination keeps ([`Spool::state_tree`];
//!   today `state/prw/<destination>`, Prometheus remote write's delta totals), dropped with its
//!   cursors when the destination routes nothing. Not counted in `max_bytes`.
//!
//! The directory and everything sled puts in it are owner-only (0700 / 0600): set at open, and
//! re-applied by the commit thread after writes, since sled keeps creating files (blobs for
//! large values, snapshots) with the process umask.
//!
//! Invariants:
//! - [`Spool::append`] returns only after the record is fsynced (`commit.rs` shares one flush
//!   among concurrent appenders). Callers acknowledge their client only after it returns.
//! - A record is deleted only when every destination routing its signal has a cursor at or past
//!   it, or when it is expired (`max_age`), evicted for space (`drop_oldest`) or unreadable — all
//!   counted. A signal no destination routes is held (bounded by the caps) until one does.
//! - Logical bytes (headers + payloads) stay under `max_bytes`; sled's on-disk size, which never
//!   shrinks by itself, is checked against [`Limits::disk_cap`] too; and an append is refused
//!   while the file system has less than [`FREE_SPACE_RESERVE`] free, so the spool never fills
//!   the disk itself and acknowledgements (whose deletions write, sled being log-structured) keep
//!   working on a full spool.
//! - Memory a drained backlog took is handed back to the system when the spool empties (sled
//!   keeps a backlog's records in memory, and glibc would keep what their removal freed).
//! - Receive times (which `max_age` and "oldest pending" read) never go backwards, across
//!   restarts too: a wall clock set back stamps records with the newest time already used, so
//!   they do not look old, and expire early, once the clock is set right.
//!
//! Routes ([`Spool::reroute`], and [`Spool::open`] at a start): a destination newly routing a
//! signal has no cursor and starts from the oldest record held; a destination no longer routing a
//! signal has its cursor removed (durable with the next flush), so if it comes back it starts
//! from the oldest record held too; after a change, records every routed destination has
//! acknowledged are deleted, as [`Spool::ack`] does; a signal routed nowhere is held.
//!
//! Storage faults. sled 0.34 latches the first write error (`ENOSPC`, `EIO`) and fails every
//! later write, and the flush with it, until the database is opened again. So any such error
//! (from an operation or a flush) makes the spool refuse appends at once (503), report unhealthy,
//! and reopen the database in place on its own thread once the file system has the reserve free
//! again. Only durable data survives a reopen, which is exactly what was acknowledged (nothing
//! is acknowledged before a successful flush); the usage counts are rebuilt from the reopened
//! files; sequence numbers keep growing from their in-memory value (a worker may have sent, and
//! moved past, a record that never became durable); and the cursors in memory — the newest
//! acknowledgements — are written back, so at worst a batch is sent twice. sled can also wedge
//! for good (an `ENOSPC` while writing a blob file leaves a log buffer that is never written):
//! flushes then block, waiters are refused after `commit::STUCK_AFTER`, and only a restart
//! recovers — the reserve exists to keep the spool from getting there.
//!
//! At open, files sled reports as corrupt (or panics on) are moved aside to a sibling directory
//! `<spool.dir>.quarantine-<UTC timestamp>` and an empty spool starts: the agent must come up
//! rather than crash-loop. Other open errors (lock held, permission denied, read-only file
//! system, disk full) are not corruption and stop the start with a message saying what to do.
//! sled does not detect every damage: a truncated or overwritten log tail reads as a torn write,
//! and the records in it are silently gone.
//!
//! The spool knows bytes, sequence numbers and cursors. It does not parse OTLP or speak HTTP.

mod commit;
mod mark;
pub mod record;

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{watch, Notify};

use crate::config::{SpoolConfig, WhenFull};
use crate::otlp::Signal;
use commit::{DiskSync, GroupCommit, Hooks};
use mark::DurableMark;
pub use record::RecordHeader;

const LAYOUT_VERSION: &[u8] = b"1";
/// sled's page cache: small, because the spool is mostly written once and read once.
const CACHE_CAPACITY: u64 = 16 << 20;
/// `meta` key of the newest sequence handed out.
const LAST_SEQ: &str = "last_seq";
/// How often the on-disk size is re-read (it costs a few syscalls).
const DISK_CHECK_EVERY: Duration = Duration::from_secs(1);
/// Free space the spool leaves on its file system: appends are refused below it (plus twice the
/// record, which sled writes once in its log and again when it rewrites the node), so that
/// deletions, cursor moves and sled's own segment and node rewrites still have room.
pub const FREE_SPACE_RESERVE: u64 = 8 << 20;
/// A spool that drains empty after holding this many record bytes at once hands the memory they
/// took back to the system ([`release_free_memory`]).
const RELEASE_AFTER_BYTES: u64 = 32 << 20;
/// Free space above the reserve below which `/healthz` reports the spool unable to take data:
/// appends are refused within twice their size of the reserve, so a health check that waited
/// for the reserve itself would say 200 while every request gets 503.
const LOW_SPACE_MARGIN: u64 = 1 << 20;
/// The first and the longest pause between attempts to reopen a failed database.
const REOPEN_FIRST: Duration = Duration::from_millis(200);
const REOPEN_MAX: Duration = Duration::from_secs(5);

/// Caps on what the spool holds.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_bytes: u64,
    pub max_age: Duration,
    pub when_full: WhenFull,
}

impl Limits {
    /// The hard cap on sled's files: twice the logical cap (sled's files run 1.4–1.8× the data
    /// they hold), and never below 64 MiB so small spools have room for sled's own overhead.
    pub fn disk_cap(&self) -> u64 {
        (self.max_bytes.saturating_mul(2)).max(64 << 20)
    }
}

impl From<&SpoolConfig> for Limits {
    fn from(c: &SpoolConfig) -> Self {
        Limits {
            max_bytes: c.max_bytes.0,
            max_age: c.max_age,
            when_full: c.when_full,
        }
    }
}

/// Which destinations read each signal; a record is deleted once all of them have it.
pub type Routes = [Vec<String>; 3];

const PERMISSION_HINT: &str = "set spool.dir to a directory this user can write, or make this \
     user the owner of the directory (otlp-spool keeps it at mode 0700)";
const READ_ONLY_HINT: &str =
    "its file system is mounted read-only: set spool.dir to a directory on a writable file system";

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot use spool directory {dir}: {source}; {hint}")]
    Unwritable {
        dir: PathBuf,
        source: std::io::Error,
        hint: &'static str,
    },
    #[error(
        "spool directory {0} is in use by another otlp-spool process (its lock is held); stop \
         that agent, or give this one its own spool.dir"
    )]
    Locked(PathBuf),
    #[error(
        "cannot open spool at {0}: the disk is full; free some space on it, or set spool.dir to \
         a directory on another disk"
    )]
    NoSpace(PathBuf),
    #[error("cannot open spool at {dir}: {message}")]
    Storage { dir: PathBuf, message: String },
    #[error(
        "spool at {dir} is corrupt ({why}) and could not be moved aside to {aside}: {source}; \
         move or delete the directory by hand, or set spool.dir to another directory"
    )]
    Quarantine {
        dir: PathBuf,
        aside: PathBuf,
        why: String,
        source: std::io::Error,
    },
    #[error(
        "spool at {dir} has layout version {found}, this build reads version {expected}; it was \
         written by a newer otlp-spool: upgrade, or move the directory aside",
        expected = String::from_utf8_lossy(LAYOUT_VERSION)
    )]
    Layout { dir: PathBuf, found: String },
}

#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error("spool is full ({used} of {cap} bytes) and spool.when_full = \"reject\"")]
    Full { used: u64, cap: u64 },
    #[error("request of {size} bytes is larger than the whole spool (spool.max_bytes = {cap})")]
    TooLarge { size: u64, cap: u64 },
    #[error(
        "the disk holding the spool ({dir}) has {free} bytes free, less than this request needs \
         on top of the {reserve} bytes the spool keeps free for its own bookkeeping; free some \
         space on it, or set spool.dir to a larger disk",
        dir = .dir.display(),
        reserve = FREE_SPACE_RESERVE
    )]
    NoSpace { dir: PathBuf, free: u64 },
    #[error("spool storage failed: {0}")]
    Storage(String),
}

/// One stored record as read back for export.
#[derive(Debug, Clone)]
pub struct Record {
    pub seq: u64,
    pub header: RecordHeader,
    value: sled::IVec,
}

impl Record {
    /// The canonical OTLP protobuf payload.
    pub fn payload(&self) -> &[u8] {
        &self.value[record::HEADER_LEN..]
    }
}

/// Data an upstream refused as malformed, to be kept for inspection: a JSON description line,
/// then the refused canonical protobuf.
pub struct DeadLetter<'a> {
    /// The spool records the data came from (first and last sequence).
    pub seqs: std::ops::RangeInclusive<u64>,
    pub items: u64,
    pub payload: &'a [u8],
    pub reason: &'a str,
}

/// Counts of what left the spool without being delivered.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct Dropped {
    pub full_records: u64,
    pub full_items: u64,
    pub expired_records: u64,
    pub expired_items: u64,
    pub dead_letter_records: u64,
    pub dead_letter_items: u64,
    /// Records whose header no longer decodes, moved to the dead-letter tree (item count unknown).
    pub unreadable_records: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Usage {
    pub records: u64,
    pub bytes: u64,
    pub disk_bytes: u64,
    pub max_bytes: u64,
    pub disk_cap: u64,
    pub dead_letter_records: u64,
    pub dead_letter_bytes: u64,
    pub dropped: Dropped,
    /// Where this start moved a corrupt spool directory, if it did.
    pub quarantined: Option<PathBuf>,
    /// Whether this start found the database missing writes that were acknowledged.
    pub truncated: Option<Truncated>,
    /// Why storage is failing now (appends get 503 until the spool is reopened).
    pub storage_error: Option<String>,
    /// Times the database was reopened after a storage failure since the start.
    pub reopens: u64,
}

/// A database that opened without its newest acknowledged writes: its log was truncated or its
/// tail damaged (sled reads either as a torn write). Records with sequences in
/// `found_seq + 1 ..= expected_seq` that were not yet delivered are lost; the rest were kept.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Truncated {
    /// The newest sequence the durable mark says was acknowledged.
    pub expected_seq: u64,
    /// The newest sequence the database still knows.
    pub found_seq: u64,
}

/// What one destination still has to send of one signal.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Pending {
    pub records: u64,
    pub bytes: u64,
    /// Receive time of the oldest record not yet acknowledged, ms since the epoch.
    pub oldest_ms: Option<u64>,
}

#[derive(Debug, Default, Clone, Copy)]
struct TreeUsage {
    records: u64,
    bytes: u64,
}

#[derive(Default)]
struct State {
    trees: [TreeUsage; 3],
    /// The newest acknowledgement of every routed destination: ahead of the cursors tree until
    /// the next flush, and written back to it after a reopen.
    cursors: HashMap<String, u64>,
    routes: Routes,
    dead_letter: TreeUsage,
    dropped: Dropped,
    disk_bytes: u64,
    disk_checked: Option<Instant>,
    reopens: u64,
    /// The most record bytes held at once since memory was last handed back
    /// ([`release_free_memory`]).
    peak_since_release: u64,
}

impl State {
    /// Record bytes held (headers and payloads).
    fn held_bytes(&self) -> u64 {
        self.trees.iter().map(|t| t.bytes).sum()
    }

    fn note_held(&mut self) {
        self.peak_since_release = self.peak_since_release.max(self.held_bytes());
    }

    /// Whether the spool has just drained empty after holding a backlog large enough to be worth
    /// handing the freed memory back (a spool that keeps up holds a few records at a time, and
    /// is not trimmed however much flows through it); if so, starts watching again.
    fn drained_enough_to_release(&mut self) -> bool {
        let empty = self.trees.iter().all(|t| t.records == 0);
        let due = empty && self.peak_since_release >= RELEASE_AFTER_BYTES;
        if due {
            self.peak_since_release = 0;
        }
        due
    }
}

/// One open sled database with its trees and its commit thread. Replaced whole by a reopen.
struct Store {
    /// Tells which store a failure report is about (reports from a replaced one are stale).
    generation: u64,
    db: sled::Db,
    records: [sled::Tree; 3],
    cursors: sled::Tree,
    dead_letter: sled::Tree,
    commit: GroupCommit,
}

/// What a scan of a freshly opened database found.
struct Scan {
    trees: [TreeUsage; 3],
    dead_letter: TreeUsage,
    max_seq: u64,
    /// The latest receive time of any record (see [`Spool::receive_time`]).
    newest_received_ms: u64,
    cursors: HashMap<String, u64>,
}

enum StoreError {
    /// The files are damaged: sled reported corruption, or panicked reading them.
    Corrupt(String),
    Other(OpenError),
}

impl StoreError {
    /// For errors past the point where corruption means quarantine.
    fn into_open_error(self, dir: &Path) -> OpenError {
        match self {
            StoreError::Other(e) => e,
            StoreError::Corrupt(why) => OpenError::Storage {
                dir: dir.to_path_buf(),
                message: why,
            },
        }
    }
}

/// A storage failure reported to the reopening thread.
struct Failure {
    generation: u64,
    why: String,
}

impl Store {
    /// Opens the database in `dir`, checks its layout, scans it, and starts its commit thread,
    /// which reports failed flushes on `failures`. A panic inside sled counts as corruption.
    fn open(dir: &Path, generation: u64, links: &Links) -> Result<(Store, Scan), StoreError> {
        let opened = std::panic::catch_unwind(AssertUnwindSafe(|| {
            Store::open_unguarded(dir, generation, links)
        }));
        opened.unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".into());
            Err(StoreError::Corrupt(format!(
                "sled failed reading its files: {what}"
            )))
        })
    }

    fn open_unguarded(
        dir: &Path,
        generation: u64,
        links: &Links,
    ) -> Result<(Store, Scan), StoreError> {
        // sled takes much damage for a torn write and opens what it can read, maybe nothing.
        // The layout marker is the first thing written: a database file that existed without
        // it lost its beginning.
        let existed = std::fs::metadata(dir.join("db")).is_ok_and(|m| m.len() > 0);
        let db = open_db(dir)?;
        let fail = |e| sled_error(dir, e);
        let meta = db.open_tree("meta").map_err(fail)?;
        match meta.get("format").map_err(fail)? {
            None if existed => {
                return Err(StoreError::Corrupt(
                    "sled opened the database without its layout marker: the start of its log \
                     is damaged, and the records in it are lost"
                        .into(),
                ))
            }
            None => {
                meta.insert("format", LAYOUT_VERSION).map_err(fail)?;
            }
            Some(v) if v.as_ref() == LAYOUT_VERSION => {}
            Some(v) => {
                return Err(StoreError::Other(OpenError::Layout {
                    dir: dir.to_path_buf(),
                    found: String::from_utf8_lossy(&v).into_owned(),
                }))
            }
        }
        let [t, m, l] = Signal::ALL.map(|s| db.open_tree(s.name()));
        let records = [t.map_err(fail)?, m.map_err(fail)?, l.map_err(fail)?];
        let cursors = db.open_tree("cursors").map_err(fail)?;
        let dead_letter = db.open_tree("dead_letter").map_err(fail)?;

        let mut scan = Scan {
            trees: Default::default(),
            dead_letter: TreeUsage::default(),
            max_seq: 0,
            newest_received_ms: 0,
            cursors: HashMap::new(),
        };
        for (i, tree) in records.iter().enumerate() {
            for entry in tree.iter() {
                let (key, value) = entry.map_err(fail)?;
                scan.trees[i].records += 1;
                scan.trees[i].bytes += value.len() as u64;
                scan.max_seq = scan.max_seq.max(seq_of(&key));
                if let Ok((header, _)) = RecordHeader::decode(&value) {
                    scan.newest_received_ms = scan.newest_received_ms.max(header.received_ms);
                }
            }
        }
        for entry in dead_letter.iter() {
            let (_, value) = entry.map_err(fail)?;
            scan.dead_letter.records += 1;
            scan.dead_letter.bytes += value.len() as u64;
        }
        if let Some(last) = meta.get(LAST_SEQ).map_err(fail)? {
            scan.max_seq = scan.max_seq.max(seq_of(&last));
        }
        for entry in cursors.iter() {
            let (key, value) = entry.map_err(fail)?;
            let seq = seq_of(&value);
            scan.max_seq = scan.max_seq.max(seq);
            scan.cursors
                .insert(String::from_utf8_lossy(&key).into_owned(), seq);
        }
        set_private_files(dir);

        let disk = DiskSync::open(dir).map_err(|e| {
            StoreError::Other(OpenError::Storage {
                dir: dir.to_path_buf(),
                message: format!("syncing the spool's files: {e}"),
            })
        })?;
        let (last_seq, written) = (meta.clone(), AtomicU64::new(0));
        let next_seq = Arc::clone(&links.next_seq);
        // Every append's sequence is taken before its commit ticket, so the newest one handed
        // out when a flush starts covers every append that flush makes durable.
        let before_flush = move || {
            let newest = next_seq.load(Ordering::SeqCst).saturating_sub(1);
            if newest > written.load(Ordering::SeqCst) {
                last_seq.insert(LAST_SEQ, &newest.to_be_bytes())?;
                written.store(newest, Ordering::SeqCst);
            }
            Ok(())
        };
        // sled creates files as it goes (blobs for large values, snapshots): keep them private.
        let private = dir.to_path_buf();
        let mark = Arc::clone(&links.mark);
        let housekeeping = move || {
            set_private_files(&private);
            if let Err(e) = mark.save() {
                tracing::warn!(error = %e, "saving the spool's durable mark failed");
            }
        };
        let failures = links.failures.clone();
        let commit = GroupCommit::start(
            db.clone(),
            disk,
            Hooks {
                before_flush: Box::new(before_flush),
                housekeeping: Box::new(housekeeping),
                on_failure: Box::new(move |why| {
                    let _ = failures.send(Failure { generation, why });
                }),
            },
        );
        let store = Store {
            generation,
            db,
            records,
            cursors,
            dead_letter,
            commit,
        };
        Ok((store, scan))
    }

    /// Removes one record, keeping the accounting; `None` if it was already gone.
    fn remove(
        &self,
        state: &mut State,
        tree: usize,
        seq: u64,
    ) -> sled::Result<Option<RecordHeader>> {
        let removed = self.records[tree].remove(seq.to_be_bytes())?;
        Ok(removed.map(|value| {
            state.trees[tree].records -= 1;
            state.trees[tree].bytes -= value.len() as u64;
            RecordHeader::decode(&value)
                .map(|(h, _)| h)
                .unwrap_or(RecordHeader {
                    items: 0,
                    received_ms: 0,
                })
        }))
    }

    /// Deletes the records of `signal` that every destination routing it has acknowledged.
    fn delete_acknowledged(&self, state: &mut State, signal: Signal) -> sled::Result<()> {
        let floor = state.routes[signal.index()]
            .iter()
            .map(|d| {
                state
                    .cursors
                    .get(&cursor_key(d, signal))
                    .copied()
                    .unwrap_or(0)
            })
            .min()
            .unwrap_or(0);
        let tree = &self.records[signal.index()];
        while let Some((k, _)) = tree.first()? {
            let first = seq_of(&k);
            if first > floor {
                break;
            }
            self.remove(state, signal.index(), first)?;
        }
        Ok(())
    }

    /// Removes the cursors of destinations that no longer route their signal, so a destination
    /// that comes back starts from the oldest record held.
    fn forget_unrouted(&self, state: &mut State) -> sled::Result<()> {
        let wanted: Vec<String> = Signal::ALL
            .iter()
            .flat_map(|s| {
                state.routes[s.index()]
                    .iter()
                    .map(move |d| cursor_key(d, *s))
            })
            .collect();
        let unwanted: Vec<String> = state
            .cursors
            .keys()
            .filter(|k| !wanted.contains(k))
            .cloned()
            .collect();
        for name in unwanted {
            self.cursors.remove(name.as_bytes())?;
            state.cursors.remove(&name);
            tracing::info!(cursor = %name, "forgot the cursor of a destination that no longer routes its signal");
        }
        // A destination routing nothing starts over if it comes back: its state goes too.
        let routed = |destination: &[u8]| {
            state
                .routes
                .iter()
                .flatten()
                .any(|d| d.as_bytes() == destination)
        };
        for tree in self.db.tree_names() {
            let Some(rest) = tree.strip_prefix(b"state/") else {
                continue;
            };
            let destination = rest.rsplit(|&b| b == b'/').next().unwrap_or(rest);
            if !routed(destination) {
                self.db.drop_tree(&tree)?;
                tracing::info!(tree = %String::from_utf8_lossy(&tree), "dropped the state of a destination that no longer routes anything");
            }
        }
        Ok(())
    }

    /// Adds a dead letter (`description`, newline, `payload`), then trims the tree to `cap` bytes
    /// from the oldest.
    fn put_dead_letter(
        &self,
        state: &mut State,
        description: serde_json::Value,
        payload: &[u8],
        cap: u64,
    ) -> sled::Result<()> {
        let mut value = serde_json::to_vec(&description).expect("json");
        value.push(b'\n');
        value.extend_from_slice(payload);
        let tree = &self.dead_letter;
        let key = tree.last()?.map_or(1, |(k, _)| seq_of(&k) + 1);
        state.dead_letter.records += 1;
        state.dead_letter.bytes += value.len() as u64;
        tree.insert(key.to_be_bytes(), value)?;
        while state.dead_letter.bytes > cap {
            let Some((_, v)) = tree.pop_min()? else {
                break;
            };
            state.dead_letter.records -= 1;
            state.dead_letter.bytes -= v.len() as u64;
        }
        Ok(())
    }
}

struct Inner {
    dir: PathBuf,
    limits: Limits,
    /// The open database; `None` while a reopen is under way (also between its attempts).
    store: RwLock<Option<Arc<Store>>>,
    /// Why storage is failing, from the first report until a reopen succeeds.
    failure: Mutex<Option<String>>,
    links: Links,
    quarantined: Option<PathBuf>,
    truncated: Option<Truncated>,
    /// The newest receive time stamped on a record: stamps never go below it.
    newest_received_ms: AtomicU64,
    state: Mutex<State>,
    /// Per signal: the newest durable sequence, which export workers wait on.
    durable: [watch::Sender<u64>; 3],
    appended: Notify,
}

/// What the spool shares with every store it opens (the first, and each after a reopen).
struct Links {
    /// Where a store's commit thread reports failed flushes.
    failures: mpsc::Sender<Failure>,
    /// The newest sequence known durable, kept beside the database ([`mark`]).
    mark: Arc<DurableMark>,
    /// The next sequence number to hand out (the commit thread saves the one before it).
    next_seq: Arc<AtomicU64>,
}

impl Inner {
    /// Why storage is failing, if it is (see [`Inner::failure`]'s field).
    fn failure(&self) -> MutexGuard<'_, Option<String>> {
        self.failure.lock().expect("spool failure lock poisoned")
    }
}

/// A cheap, clonable handle on the one open spool.
#[derive(Clone)]
pub struct Spool {
    inner: Arc<Inner>,
}

fn cursor_key(destination: &str, signal: Signal) -> String {
    format!("{destination}/{}", signal.name())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn seq_of(key: &[u8]) -> u64 {
    u64::from_be_bytes(key.try_into().unwrap_or([0; 8]))
}

impl Spool {
    /// Opens (or creates) the spool in `dir`. Cursors of destinations no longer in `routes` are
    /// forgotten, so a destination added later starts from the oldest held record. Corrupt files
    /// are quarantined and a database missing acknowledged writes is reported (see the module
    /// docs); other failures are returned.
    pub fn open(dir: &Path, limits: Limits, routes: Routes) -> Result<Spool, OpenError> {
        create_private_dir(dir)?;
        let (failures, reports) = mpsc::channel();
        let mut links = Links {
            failures,
            mark: Arc::new(DurableMark::open(dir)),
            next_seq: Arc::new(AtomicU64::new(0)),
        };
        let (store, scan, quarantined) = match Store::open(dir, 1, &links) {
            Ok((store, scan)) => (store, scan, None),
            Err(StoreError::Other(e)) => return Err(e),
            Err(StoreError::Corrupt(why)) => {
                let aside = quarantine(dir, &why)?;
                tracing::error!(
                    spool = %dir.display(),
                    quarantine = %aside.display(),
                    error = %why,
                    "the spool's files are corrupt: moved them aside and started an empty spool; \
                     records not yet delivered stay in the quarantined directory, which \
                     otlp-spool does not read again: keep it for a bug report, then delete it"
                );
                create_private_dir(dir)?;
                // The old mark went aside with the files it described.
                links.mark = Arc::new(DurableMark::open(dir));
                let (store, scan) =
                    Store::open(dir, 1, &links).map_err(|e| e.into_open_error(dir))?;
                (store, scan, Some(aside))
            }
        };
        let truncated = detect_truncation(dir, &links.mark, &scan)?;
        // Above the lost writes too: their numbers may be in upstreams' logs.
        let resume = truncated.as_ref().map_or(0, |t| t.expected_seq);
        links
            .next_seq
            .store(resume.max(scan.max_seq) + 1, Ordering::SeqCst);
        let mut state = State {
            trees: scan.trees,
            cursors: scan.cursors,
            routes,
            dead_letter: scan.dead_letter,
            disk_bytes: store.db.size_on_disk().unwrap_or(0),
            ..State::default()
        };
        state.note_held();
        store
            .forget_unrouted(&mut state)
            .map_err(|e| sled_error(dir, e).into_open_error(dir))?;
        let durable = Signal::ALL.map(|s| {
            let last = store.records[s.index()].last().ok().flatten();
            watch::channel(last.map_or(0, |(k, _)| seq_of(&k))).0
        });
        // Make forgotten cursors and the layout marker durable before anything else happens.
        store.commit.flush_soon();
        let inner = Arc::new(Inner {
            dir: dir.to_path_buf(),
            limits,
            store: RwLock::new(Some(Arc::new(store))),
            failure: Mutex::new(None),
            links,
            quarantined,
            truncated,
            newest_received_ms: AtomicU64::new(scan.newest_received_ms),
            state: Mutex::new(state),
            durable,
            appended: Notify::new(),
        });
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("spool-reopen".into())
            .spawn(move || reopen_on_failure(&weak, &reports))
            .map_err(|e| OpenError::Storage {
                dir: dir.to_path_buf(),
                message: format!("starting the spool's recovery thread: {e}"),
            })?;
        Ok(Spool { inner })
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// A tree for `destination`'s own state of some `kind`, named `state/<kind>/<destination>`
    /// (used by `prometheus_remote_write` for its delta totals). The spool neither reads nor
    /// caps it, and drops it when `destination` routes no signal any more, as it forgets its
    /// cursors. Its writes become durable with the next group commit (an `ack`'s, at the
    /// latest). Look it up for each use and drop it after: a tree keeps the database it came
    /// from open, and a reopen after a storage failure waits (retrying) until no one holds one.
    pub fn state_tree(&self, destination: &str, kind: &str) -> Result<sled::Tree, String> {
        let name = format!("state/{kind}/{destination}");
        self.store()?
            .db
            .open_tree(&name)
            .map_err(|e| format!("opening spool tree {name}: {e}"))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().expect("spool state lock poisoned")
    }

    /// The open database, or why there is none (a reopen is under way).
    fn store(&self) -> Result<Arc<Store>, String> {
        let store = self.inner.store.read().expect("spool store lock poisoned");
        store.clone().ok_or_else(|| {
            let failure = self.inner.failure();
            format!(
                "{}; the spool is being reopened",
                failure.as_deref().unwrap_or("spool storage failed")
            )
        })
    }

    /// Describes a sled error, and when it means sled is unusable until reopened (I/O errors,
    /// corruption), refuses appends from now on and asks for a reopen.
    fn storage_error(&self, store: &Store, what: &str, e: sled::Error) -> String {
        let why = format!("{what}: {e}");
        let unusable = matches!(
            e,
            sled::Error::Io(_) | sled::Error::Corruption { .. } | sled::Error::ReportableBug(_)
        );
        if unusable {
            self.inner.failure().get_or_insert_with(|| why.clone());
            let _ = self.inner.links.failures.send(Failure {
                generation: store.generation,
                why: why.clone(),
            });
        }
        why
    }

    /// Stores one request's payload and returns its sequence number once it is durable.
    pub async fn append(
        &self,
        signal: Signal,
        items: u32,
        payload: &[u8],
    ) -> Result<u64, AppendError> {
        if let Some(why) = self.inner.failure().clone() {
            return Err(AppendError::Storage(format!(
                "{why}; refusing data until the spool is reopened, which happens by itself once \
                 the disk is healthy and has room"
            )));
        }
        let store = self.store().map_err(AppendError::Storage)?;
        let header = RecordHeader {
            items,
            received_ms: self.receive_time(),
        };
        let value = header.encode(payload);
        let size = value.len() as u64;
        let seq = {
            let mut state = self.state();
            self.make_room(&store, &mut state, size)?;
            let seq = self.inner.links.next_seq.fetch_add(1, Ordering::SeqCst);
            store.records[signal.index()]
                .insert(seq.to_be_bytes(), value)
                .map_err(|e| AppendError::Storage(self.storage_error(&store, "storing", e)))?;
            let tree = &mut state.trees[signal.index()];
            tree.records += 1;
            tree.bytes += size;
            state.note_held();
            seq
        };
        store.commit.wait().await.map_err(AppendError::Storage)?;
        self.inner.links.mark.advance(seq);
        self.inner.durable[signal.index()].send_if_modified(|newest| {
            let advanced = seq > *newest;
            *newest = (*newest).max(seq);
            advanced
        });
        self.inner.appended.notify_one();
        Ok(seq)
    }

    /// Now, on the wall clock, but never earlier than a time already stamped on a record. A clock
    /// set back (by hand, or NTP stepping a fast clock) would otherwise stamp records in the
    /// past, and once the clock is right again they would look old and expire early (`max_age`)
    /// or be reported as stranded. A clock set ahead and back makes stamps lag behind for that
    /// long instead, which only delays expiry: the byte cap still holds.
    fn receive_time(&self) -> u64 {
        let now = now_ms();
        let newest = self
            .inner
            .newest_received_ms
            .fetch_max(now, Ordering::SeqCst);
        newest.max(now)
    }

    /// Applies the caps before an append of `size` bytes, evicting under `drop_oldest`.
    fn make_room(&self, store: &Store, state: &mut State, size: u64) -> Result<(), AppendError> {
        let limits = &self.inner.limits;
        if size > limits.max_bytes {
            return Err(AppendError::TooLarge {
                size,
                cap: limits.max_bytes,
            });
        }
        // Checked on every append (one statfs): a burst could otherwise fill the disk between
        // two checks.
        if let Some(free) = free_space(&self.inner.dir) {
            if free < FREE_SPACE_RESERVE + 2 * size {
                return Err(AppendError::NoSpace {
                    dir: self.inner.dir.clone(),
                    free,
                });
            }
        }
        let checked_recently = state
            .disk_checked
            .is_some_and(|at| at.elapsed() < DISK_CHECK_EVERY);
        let over_disk_cap = |state: &State| state.disk_bytes > limits.disk_cap();
        if !checked_recently {
            state.disk_bytes = store.db.size_on_disk().unwrap_or(state.disk_bytes);
            state.disk_checked = Some(Instant::now());
            // Said at each check (once a second at most), not at each append.
            if over_disk_cap(state) {
                tracing::warn!(
                    disk_bytes = state.disk_bytes,
                    disk_cap = limits.disk_cap(),
                    "spool files are over their on-disk cap"
                );
            }
        }
        // Over the on-disk cap, free half the logical cap so sled can reuse its segments.
        let target = if over_disk_cap(state) {
            limits.max_bytes / 2
        } else {
            limits.max_bytes
        };
        if state.held_bytes() + size <= target {
            return Ok(());
        }
        if limits.when_full == WhenFull::Reject {
            return Err(AppendError::Full {
                used: state.held_bytes(),
                cap: limits.max_bytes,
            });
        }
        let evict_failed =
            |e| AppendError::Storage(self.storage_error(store, "evicting for space", e));
        while state.held_bytes() + size > target {
            let oldest = store
                .records
                .iter()
                .enumerate()
                .filter_map(|(i, t)| t.first().ok().flatten().map(|(k, _)| (seq_of(&k), i)))
                .min();
            let Some((seq, i)) = oldest else { break };
            if let Some(header) = store.remove(state, i, seq).map_err(evict_failed)? {
                state.dropped.full_records += 1;
                state.dropped.full_items += u64::from(header.items);
            }
        }
        // Even an empty spool may be over the disk cap; sled reuses the space, so go ahead.
        Ok(())
    }

    /// The last sequence `destination` acknowledged for `signal` (0: none yet).
    pub fn cursor(&self, destination: &str, signal: Signal) -> u64 {
        self.state()
            .cursors
            .get(&cursor_key(destination, signal))
            .copied()
            .unwrap_or(0)
    }

    /// Records of `signal` after sequence `after`: at least one if any exist, then more while
    /// they fit in `max_bytes` payload bytes and `max_items` items. A record whose header does
    /// not decode is moved to the dead-letter tree and counted (`unreadable_records`), so no
    /// reader stops on it.
    pub fn read(
        &self,
        signal: Signal,
        after: u64,
        max_bytes: u64,
        max_items: u64,
    ) -> Result<Vec<Record>, String> {
        let store = self.store()?;
        let mut out = Vec::new();
        let mut unreadable = Vec::new();
        let (mut bytes, mut items) = (0u64, 0u64);
        for entry in store.records[signal.index()].range((after + 1).to_be_bytes()..) {
            let (key, value) = entry.map_err(|e| {
                self.storage_error(&store, &format!("reading the {} spool", signal.name()), e)
            })?;
            let header = match RecordHeader::decode(&value) {
                Ok((h, _)) => h,
                Err(e) => {
                    unreadable.push((seq_of(&key), e));
                    continue;
                }
            };
            let size = (value.len() - record::HEADER_LEN) as u64;
            if !out.is_empty()
                && (bytes + size > max_bytes || items + u64::from(header.items) > max_items)
            {
                break;
            }
            bytes += size;
            items += u64::from(header.items);
            out.push(Record {
                seq: seq_of(&key),
                header,
                value,
            });
        }
        if !unreadable.is_empty() {
            self.set_aside_unreadable(&store, signal, unreadable)?;
        }
        Ok(out)
    }

    /// Moves unreadable records of `signal` to the dead-letter tree; each is counted once, by
    /// whichever reader removes it.
    fn set_aside_unreadable(
        &self,
        store: &Store,
        signal: Signal,
        records: Vec<(u64, record::RecordError)>,
    ) -> Result<(), String> {
        let failed = |e| self.storage_error(store, "setting aside an unreadable record", e);
        let mut state = self.state();
        for (seq, error) in records {
            let tree = &store.records[signal.index()];
            let Some(value) = tree.get(seq.to_be_bytes()).map_err(failed)? else {
                continue;
            };
            if store
                .remove(&mut state, signal.index(), seq)
                .map_err(failed)?
                .is_none()
            {
                continue;
            }
            state.dropped.unreadable_records += 1;
            tracing::error!(
                signal = signal.name(),
                seq,
                %error,
                "moved an unreadable spool record to the dead-letter tree; it will not be sent"
            );
            let description = serde_json::json!({
                "signal": signal.name(),
                "seqs": [seq, seq],
                "dead_lettered_ms": now_ms(),
                "reason": format!("unreadable spool record: {error}"),
            });
            store
                .put_dead_letter(&mut state, description, &value, self.dead_letter_cap())
                .map_err(failed)?;
        }
        drop(state);
        store.commit.flush_soon();
        Ok(())
    }

    /// Wakes when new durable records of `signal` exist; the value is the newest sequence.
    pub fn subscribe(&self, signal: Signal) -> watch::Receiver<u64> {
        self.inner.durable[signal.index()].subscribe()
    }

    /// Records that `destination` has everything of `signal` up to `seq`, and deletes what every
    /// routed destination now has.
    pub fn ack(&self, destination: &str, signal: Signal, seq: u64) -> Result<(), String> {
        let key = cursor_key(destination, signal);
        let mut state = self.state();
        // In memory first: if saving fails, or a reopen is under way, the reopen writes it back
        // (it holds the state while it does, and while it installs the new store).
        state.cursors.insert(key.clone(), seq);
        let store = self.store()?;
        store
            .cursors
            .insert(key.as_bytes(), &seq.to_be_bytes())
            .map_err(|e| self.storage_error(&store, &format!("saving cursor {key}"), e))?;
        store
            .delete_acknowledged(&mut state, signal)
            .map_err(|e| self.storage_error(&store, "deleting acknowledged records", e))?;
        let release = state.drained_enough_to_release();
        drop(state);
        store.commit.flush_soon();
        if release {
            release_free_memory();
        }
        Ok(())
    }

    /// Changes which destinations read each signal, at run time (a config reload): see the
    /// module docs for what happens to cursors and records. The changes become durable with the
    /// next flush, started here. Workers of a destination that no longer routes a signal should
    /// be stopped first: an acknowledgement from one afterwards re-creates its cursor (which the
    /// next reroute or restart forgets again).
    pub fn reroute(&self, routes: Routes) -> Result<(), String> {
        let mut state = self.state();
        // In memory first, as for `ack`: deletion follows the new routes even if the store is
        // being reopened now (forgetting cursors then waits for the next reroute or restart).
        state.routes = routes;
        let store = self.store()?;
        store
            .forget_unrouted(&mut state)
            .map_err(|e| self.storage_error(&store, "forgetting cursors", e))?;
        for signal in Signal::ALL {
            store
                .delete_acknowledged(&mut state, signal)
                .map_err(|e| self.storage_error(&store, "deleting acknowledged records", e))?;
        }
        drop(state);
        store.commit.flush_soon();
        Ok(())
    }

    /// The dead-letter tree's cap: a sixteenth of the spool, at least 1 MiB.
    fn dead_letter_cap(&self) -> u64 {
        (self.inner.limits.max_bytes / 16).max(1 << 20)
    }

    /// Keeps data that `destination` refused as malformed, with the reason, in the capped
    /// dead-letter tree (the oldest dead letters go first once it holds `max_bytes / 16`).
    pub fn dead_letter(
        &self,
        destination: &str,
        signal: Signal,
        letter: DeadLetter<'_>,
    ) -> Result<(), String> {
        let store = self.store()?;
        let description = serde_json::json!({
            "destination": destination,
            "signal": signal.name(),
            "seqs": [letter.seqs.start(), letter.seqs.end()],
            "items": letter.items,
            "dead_lettered_ms": now_ms(),
            "reason": letter.reason,
        });
        let mut state = self.state();
        store
            .put_dead_letter(
                &mut state,
                description,
                letter.payload,
                self.dead_letter_cap(),
            )
            .map_err(|e| self.storage_error(&store, "storing a dead letter", e))?;
        state.dropped.dead_letter_records += 1;
        state.dropped.dead_letter_items += letter.items;
        drop(state);
        store.commit.flush_soon();
        Ok(())
    }

    /// What `destination` still has to send of `signal`. Cheap when the destination is the
    /// slowest reader of the signal (the usual case); otherwise it scans the records it is ahead by.
    pub fn pending(&self, destination: &str, signal: Signal) -> Pending {
        let cursor = self.cursor(destination, signal);
        let total = self.state().trees[signal.index()];
        let Ok(store) = self.store() else {
            return Pending {
                records: total.records,
                bytes: total.bytes,
                oldest_ms: None,
            };
        };
        let tree = &store.records[signal.index()];
        // Up to the first error only: on a failed database sled's iterator can return the same
        // error for ever without moving on, and this runs for every `/status`.
        let (mut done_records, mut done_bytes) = (0, 0);
        for (_, value) in tree.range(..=cursor.to_be_bytes()).map_while(Result::ok) {
            done_records += 1;
            done_bytes += value.len() as u64;
        }
        let oldest_ms = tree
            .range((cursor + 1).to_be_bytes()..)
            .next()
            .and_then(Result::ok)
            .and_then(|(_, v)| RecordHeader::decode(&v).ok().map(|(h, _)| h.received_ms));
        Pending {
            records: total.records.saturating_sub(done_records),
            bytes: total.bytes.saturating_sub(done_bytes),
            oldest_ms,
        }
    }

    pub fn usage(&self) -> Usage {
        let storage_error = self.inner.failure().clone();
        let state = self.state();
        Usage {
            records: state.trees.iter().map(|t| t.records).sum(),
            bytes: state.trees.iter().map(|t| t.bytes).sum(),
            disk_bytes: state.disk_bytes,
            max_bytes: self.inner.limits.max_bytes,
            disk_cap: self.inner.limits.disk_cap(),
            dead_letter_records: state.dead_letter.records,
            dead_letter_bytes: state.dead_letter.bytes,
            dropped: state.dropped,
            quarantined: self.inner.quarantined.clone(),
            truncated: self.inner.truncated.clone(),
            storage_error,
            reopens: state.reopens,
        }
    }

    /// Whether the spool can take data now (for `/healthz`): storage is not failing, the last
    /// flush succeeded and none is stuck, and the disk has the reserve and a margin free.
    pub fn healthy(&self) -> bool {
        let failing = self.inner.failure().is_some();
        let low = free_space(&self.inner.dir)
            .is_some_and(|free| free < FREE_SPACE_RESERVE + LOW_SPACE_MARGIN);
        !failing && !low && self.store().is_ok_and(|s| s.commit.healthy())
    }

    /// Deletes records older than `max_age`, sleeping until the oldest one is due; with an empty
    /// spool it sleeps until an append. Runs for the life of the agent.
    pub async fn expire_forever(self) {
        let max_age_ms = self.inner.limits.max_age.as_millis() as u64;
        loop {
            let Ok(store) = self.store() else {
                // A reopen is under way (storage failed); it takes seconds at most.
                tokio::time::sleep(REOPEN_MAX).await;
                continue;
            };
            let oldest = store
                .records
                .iter()
                .filter_map(|t| t.first().ok().flatten())
                .filter_map(|(_, v)| RecordHeader::decode(&v).ok().map(|(h, _)| h.received_ms))
                .min();
            drop(store);
            let Some(oldest) = oldest else {
                self.inner.appended.notified().await;
                continue;
            };
            let due = oldest.saturating_add(max_age_ms);
            let now = now_ms();
            if now < due {
                // If the oldest record goes earlier (acked, evicted), waking at its due time
                // only re-evaluates: cheaper than waking on every append.
                tokio::time::sleep(Duration::from_millis(due - now)).await;
                continue;
            }
            if let Err(e) = self.expire_older_than(now.saturating_sub(max_age_ms)) {
                tracing::error!(error = %e, "expiring old spool records failed; retrying in a minute");
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
        }
    }

    fn expire_older_than(&self, cutoff_ms: u64) -> Result<(), String> {
        let store = self.store()?;
        let failed = |e| self.storage_error(&store, "expiring records", e);
        let mut state = self.state();
        let (mut records, mut items) = (0, 0);
        for (i, tree) in store.records.iter().enumerate() {
            while let Some((k, v)) = tree.first().map_err(failed)? {
                let received = RecordHeader::decode(&v)
                    .map(|(h, _)| h.received_ms)
                    .unwrap_or(0);
                if received > cutoff_ms {
                    break;
                }
                if let Some(h) = store.remove(&mut state, i, seq_of(&k)).map_err(failed)? {
                    records += 1;
                    items += u64::from(h.items);
                }
            }
        }
        state.dropped.expired_records += records;
        state.dropped.expired_items += items;
        drop(state);
        if records > 0 {
            tracing::warn!(
                records,
                items,
                "expired spool records older than spool.max_age"
            );
            store.commit.flush_soon();
        }
        Ok(())
    }

    /// Replaces a failed database with a freshly opened one (see the module docs), once the
    /// file system has the reserve free. Appends are refused meanwhile.
    fn reopen(&self) -> Result<(), String> {
        let inner = &self.inner;
        if let Some(free) = free_space(&inner.dir).filter(|&f| f < FREE_SPACE_RESERVE) {
            return Err(format!(
                "waiting for free space on the disk holding {}: {free} bytes free, \
                 {FREE_SPACE_RESERVE} needed; free some space on it",
                inner.dir.display()
            ));
        }
        // Empty while a previous attempt failed after letting go of the old store.
        let old = inner.store.write().expect("spool store lock").take();
        if let Some(mut old) = old {
            // Operations in flight hold the store for moments (an append's flush fails fast on
            // a failed database); sled's lock is free only once the last handle is gone.
            loop {
                match Arc::try_unwrap(old) {
                    Ok(store) => break drop(store),
                    Err(shared) => old = shared,
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        // Stores are numbered from 1 at open, one more per successful reopen.
        let generation = self.state().reopens + 2;
        let (store, scan) =
            Store::open(&inner.dir, generation, &inner.links).map_err(|e| match e {
                StoreError::Corrupt(why) => why,
                StoreError::Other(OpenError::Locked(_)) => "sled's lock on the spool is still \
                    held by this process (a state tree in use); retrying"
                    .into(),
                StoreError::Other(e) => e.to_string(),
            })?;
        let mut state = self.state();
        state.trees = scan.trees;
        state.dead_letter = scan.dead_letter;
        state.disk_checked = None;
        inner
            .links
            .next_seq
            .fetch_max(scan.max_seq + 1, Ordering::SeqCst);
        inner
            .newest_received_ms
            .fetch_max(scan.newest_received_ms, Ordering::SeqCst);
        // The cursors in memory are the newest acknowledgements; the files may lack the last
        // moves, or still hold a cursor that was being forgotten.
        let write_back = || -> sled::Result<()> {
            for name in scan.cursors.keys() {
                if !state.cursors.contains_key(name) {
                    store.cursors.remove(name.as_bytes())?;
                }
            }
            for (name, seq) in &state.cursors {
                store.cursors.insert(name.as_bytes(), &seq.to_be_bytes())?;
            }
            Ok(())
        };
        write_back().map_err(|e| format!("writing the cursors back: {e}"))?;
        state.reopens += 1;
        store.commit.flush_soon();
        *inner.store.write().expect("spool store lock") = Some(Arc::new(store));
        *inner.failure() = None;
        Ok(())
    }
}

/// The spool's recovery thread: on a failure report about the current database, reopens it,
/// retrying with backoff until it works. Ends when the spool is dropped.
fn reopen_on_failure(spool: &Weak<Inner>, reports: &mpsc::Receiver<Failure>) {
    while let Ok(report) = reports.recv() {
        let Some(inner) = spool.upgrade() else { return };
        let current = inner
            .store
            .read()
            .expect("spool store lock")
            .as_ref()
            .map(|s| s.generation);
        if current != Some(report.generation) {
            continue; // about a database already replaced
        }
        inner.failure().get_or_insert_with(|| report.why.clone());
        tracing::error!(
            spool = %inner.dir.display(),
            error = %report.why,
            "spool storage failed: refusing new data (503) and reopening the spool once its disk \
             has {FREE_SPACE_RESERVE} bytes free; acknowledged data is safe"
        );
        drop(inner);
        let mut pause = REOPEN_FIRST;
        let mut attempts = 0u64;
        loop {
            std::thread::sleep(pause);
            let Some(inner) = spool.upgrade() else { return };
            attempts += 1;
            match (Spool { inner }).reopen() {
                Ok(()) => {
                    tracing::info!(attempts, "spool reopened: accepting data again");
                    break;
                }
                // Every attempt at first, then every tenth: a full disk can last hours.
                Err(e) if attempts < 5 || attempts.is_multiple_of(10) => {
                    tracing::warn!(error = %e, attempts, "reopening the spool failed; retrying");
                }
                Err(_) => {}
            }
            pause = (pause * 2).min(REOPEN_MAX);
        }
    }
}

/// How long [`Spool::open`] waits for another holder of the directory to let go: a restarting
/// agent's predecessor may still be exiting, and sled's own threads release their handles a
/// moment after the `Db` is dropped.
const LOCK_WAIT: Duration = Duration::from_secs(1);

fn open_db(dir: &Path) -> Result<sled::Db, StoreError> {
    let started = Instant::now();
    loop {
        let opened = sled::Config::new()
            .path(dir)
            .cache_capacity(CACHE_CAPACITY)
            .flush_every_ms(None)
            .open()
            .map_err(|e| sled_error(dir, e));
        match opened {
            Err(StoreError::Other(OpenError::Locked(_))) if started.elapsed() < LOCK_WAIT => {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// Sorts a sled error at open: corruption (quarantined) or a failure to report.
fn sled_error(dir: &Path, e: sled::Error) -> StoreError {
    match e {
        sled::Error::Corruption { .. } | sled::Error::ReportableBug(_) => {
            StoreError::Corrupt(e.to_string())
        }
        sled::Error::Io(io) => StoreError::Other(io_error(dir, io)),
        other => StoreError::Other(OpenError::Storage {
            dir: dir.to_path_buf(),
            message: other.to_string(),
        }),
    }
}

/// Names what an I/O error at open means for the user: the lock, access, a full disk.
fn io_error(dir: &Path, e: std::io::Error) -> OpenError {
    let dir = dir.to_path_buf();
    match e.raw_os_error() {
        _ if e.kind() == std::io::ErrorKind::WouldBlock || e.to_string().contains("lock") => {
            OpenError::Locked(dir)
        }
        Some(libc::EACCES | libc::EPERM) => OpenError::Unwritable {
            dir,
            source: e,
            hint: PERMISSION_HINT,
        },
        Some(libc::EROFS) => OpenError::Unwritable {
            dir,
            source: e,
            hint: READ_ONLY_HINT,
        },
        Some(libc::ENOSPC | libc::EDQUOT) => OpenError::NoSpace(dir),
        _ => OpenError::Storage {
            dir,
            message: e.to_string(),
        },
    }
}

/// Compares the database with its durable mark: a database whose newest sequence is below the
/// mark lost acknowledged writes. Reported once (the mark is set back to what was found), and the
/// surviving records are kept: sled opened a consistent earlier state of the spool, and moving it
/// aside would lose them too.
fn detect_truncation(
    dir: &Path,
    mark: &DurableMark,
    scan: &Scan,
) -> Result<Option<Truncated>, OpenError> {
    let Some(expected_seq) = mark.recorded().filter(|&seq| seq > scan.max_seq) else {
        return Ok(None);
    };
    let truncated = Truncated {
        expected_seq,
        found_seq: scan.max_seq,
    };
    tracing::error!(
        spool = %dir.display(),
        expected_seq,
        found_seq = scan.max_seq,
        records_kept = scan.trees.iter().map(|t| t.records).sum::<u64>(),
        "the spool's database lost its newest writes (its log was truncated or damaged): records \
         with sequences after found_seq, up to expected_seq, that were not yet delivered are \
         lost; the records still there are kept and will be sent. Check the disk, and whether \
         anything else writes in the spool directory"
    );
    mark.reset(scan.max_seq).map_err(|e| OpenError::Storage {
        dir: dir.to_path_buf(),
        message: format!("resetting the durable mark: {e}"),
    })?;
    Ok(Some(truncated))
}

/// Moves a corrupt spool directory aside to `<dir>.quarantine-<UTC timestamp>` (a sibling: a
/// rename on the same file system, which keeps its 0700 mode and contents as they were).
fn quarantine(dir: &Path, why: &str) -> Result<PathBuf, OpenError> {
    let stamp: String = humantime::format_rfc3339_seconds(SystemTime::now())
        .to_string()
        .chars()
        .filter(|c| !matches!(c, '-' | ':'))
        .collect();
    let name = dir
        .file_name()
        .map_or("spool".into(), |n| n.to_string_lossy().into_owned());
    let mut aside = dir.with_file_name(format!("{name}.quarantine-{stamp}"));
    let mut n = 1;
    while aside.exists() {
        n += 1;
        aside = dir.with_file_name(format!("{name}.quarantine-{stamp}-{n}"));
    }
    std::fs::rename(dir, &aside).map_err(|source| OpenError::Quarantine {
        dir: dir.to_path_buf(),
        aside: aside.clone(),
        why: why.to_string(),
        source,
    })?;
    Ok(aside)
}

/// Hands the allocator's free memory back to the system. glibc keeps what a drained backlog freed
/// (sled held the records in memory): a 512 MiB backlog left 331 MB resident after its drain,
/// 65 MB after this (bench/RESULTS.md, "Drain memory"). Elsewhere a no-op.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks and trims glibc's own heap; it takes no pointers.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Bytes available to this user on the file system holding `dir` (`None` if it cannot be asked).
fn free_space(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: `statvfs` is plain data, for which all zeroes is a valid value.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and `stat` is a valid place to write the result.
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return None;
    }
    // The field types differ by platform (u32 on macOS): widen them all.
    #[allow(clippy::useless_conversion)]
    Some(u64::from(stat.f_bavail).saturating_mul(u64::from(stat.f_frsize)))
}

/// The spool holds other people's prompts and telemetry: owner-only.
fn create_private_dir(dir: &Path) -> Result<(), OpenError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .and_then(|()| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)))
        .map_err(|e| io_error(dir, e))
}
/// Makes every file under `dir` 0600 and every directory 0700 (sled creates them with the
/// process umask). Only entries with other modes are changed, so a pass over a tidy spool costs
/// a directory listing and a `stat` per file.
fn set_private_files(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        // Not following symbolic links (sled makes none): only the spool's own entries change.
        let Ok(meta) = entry.metadata() else { continue };
        let mode = if meta.is_dir() {
            set_private_files(&entry.path());
            0o700
        } else if meta.is_file() {
            0o600
        } else {
            continue;
        };
        if meta.permissions().mode() & 0o777 != mode {
            let _ = std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(mode));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A spool that keeps up holds little however much flows through it: no trimming (a
    /// `malloc_trim` walks the whole heap). One that drained a backlog is trimmed, once.
    #[test]
    fn memory_is_handed_back_after_a_backlog_not_after_throughput() {
        let mut state = State::default();
        let hold = |state: &mut State, bytes: u64| {
            state.trees[0] = TreeUsage {
                records: u64::from(bytes > 0),
                bytes,
            };
            state.note_held();
        };
        for _ in 0..100 {
            hold(&mut state, 1 << 20);
            hold(&mut state, 0);
            assert!(
                !state.drained_enough_to_release(),
                "trimmed while keeping up"
            );
        }
        hold(&mut state, RELEASE_AFTER_BYTES);
        assert!(!state.drained_enough_to_release(), "not drained yet");
        hold(&mut state, 0);
        assert!(state.drained_enough_to_release());
        assert!(
            !state.drained_enough_to_release(),
            "trimmed twice for one backlog"
        );
    }

    fn limits() -> Limits {
        Limits {
            max_bytes: 1 << 20,
            max_age: Duration::from_secs(3600),
            when_full: WhenFull::DropOldest,
        }
    }

    fn routes(traces: &[&str]) -> Routes {
        [
            traces.iter().map(|d| d.to_string()).collect(),
            Vec::new(),
            Vec::new(),
        ]
    }

    #[tokio::test]
    async fn sequence_numbers_resume_above_every_key_and_cursor() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), limits(), routes(&["a"])).unwrap();
        let mut seqs = Vec::new();
        for _ in 0..3 {
            seqs.push(spool.append(Signal::Traces, 1, b"t").await.unwrap());
        }
        // Logs are routed nowhere: held.
        seqs.push(spool.append(Signal::Logs, 1, b"l").await.unwrap());
        assert_eq!(seqs, [1, 2, 3, 4]);
        spool.ack("a", Signal::Traces, 3).unwrap();
        assert_eq!(spool.usage().records, 1, "acknowledged traces are deleted");
        drop(spool);

        // The highest key (the held log record, 4) is above every cursor.
        let spool = Spool::open(dir.path(), limits(), routes(&["a"])).unwrap();
        assert_eq!(spool.cursor("a", Signal::Traces), 3);
        let next = spool.append(Signal::Traces, 1, b"t").await.unwrap();
        assert!(next > 4, "{next}");
        assert_eq!(*spool.subscribe(Signal::Traces).borrow(), next);
        drop(spool);

        // Every record gone: the sequence still does not go back.
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), limits(), routes(&["a"])).unwrap();
        for _ in 0..2 {
            spool.append(Signal::Traces, 1, b"t").await.unwrap();
        }
        spool.ack("a", Signal::Traces, 2).unwrap();
        assert_eq!(spool.usage().records, 0);
        drop(spool);
        let spool = Spool::open(dir.path(), limits(), routes(&["a"])).unwrap();
        assert_eq!(spool.usage().records, 0);
        assert_eq!(spool.cursor("a", Signal::Traces), 2);
        let next = spool.append(Signal::Traces, 1, b"t").await.unwrap();
        assert!(next > 2, "{next}");
        let read = spool.read(Signal::Traces, 2, u64::MAX, u64::MAX).unwrap();
        assert_eq!(read.iter().map(|r| r.seq).collect::<Vec<_>>(), [next]);
    }

    /// A destination that comes back after it routed nothing starts over: remote write's totals
    /// kept from before would count the records it is sent again twice.
    #[tokio::test]
    async fn the_state_of_a_destination_routing_nothing_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), limits(), routes(&["a", "b"])).unwrap();
        for d in ["a", "b"] {
            spool
                .state_tree(d, "prw")
                .unwrap()
                .insert("series", "1")
                .unwrap();
        }
        spool.reroute(routes(&["b"])).unwrap();
        assert!(
            spool.state_tree("a", "prw").unwrap().is_empty(),
            "a's state kept"
        );
        assert_eq!(spool.state_tree("b", "prw").unwrap().len(), 1);
        drop(spool);
        // At a start, too: b is gone from the config.
        let spool = Spool::open(dir.path(), limits(), routes(&["a"])).unwrap();
        assert!(
            spool.state_tree("b", "prw").unwrap().is_empty(),
            "b's state kept"
        );
    }

    #[tokio::test]
    async fn the_cursor_of_a_removed_destination_is_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), limits(), routes(&["a", "b"])).unwrap();
        for _ in 0..2 {
            spool.append(Signal::Traces, 1, b"t").await.unwrap();
        }
        spool.ack("a", Signal::Traces, 2).unwrap();
        assert_eq!(spool.usage().records, 2, "b has not acknowledged them");
        assert_eq!(spool.pending("a", Signal::Traces).records, 0);
        assert_eq!(spool.pending("b", Signal::Traces).records, 2);
        drop(spool);

        // a is no longer configured: its cursor goes, and b alone decides deletion.
        let spool = Spool::open(dir.path(), limits(), routes(&["b"])).unwrap();
        assert_eq!(spool.cursor("a", Signal::Traces), 0);
        assert_eq!(spool.usage().records, 2);
        spool.ack("b", Signal::Traces, 1).unwrap();
        assert_eq!(spool.usage().records, 1);
        drop(spool);

        // a comes back: it starts from the oldest record still held, not where it left off.
        let spool = Spool::open(dir.path(), limits(), routes(&["a", "b"])).unwrap();
        assert_eq!(spool.cursor("a", Signal::Traces), 0);
        assert_eq!(spool.cursor("b", Signal::Traces), 1);
        let read = spool.read(Signal::Traces, 0, u64::MAX, u64::MAX).unwrap();
        assert_eq!(read.iter().map(|r| r.seq).collect::<Vec<_>>(), [2]);
        assert_eq!(spool.pending("a", Signal::Traces).records, 1);
        // The sequence still resumes above the forgotten cursor's old value.
        assert!(spool.append(Signal::Traces, 1, b"t").await.unwrap() > 2);
    }

    /// A log cut short opens (sled takes the cut for a torn write) without its newest records:
    /// the durable mark says so, once, and what survived is kept and readable. A log cut to
    /// nothing opens as an empty database: reported the same way. (Where a cut leaves something
    /// sled reports as corrupt, or panics on, the spool is quarantined instead: see
    /// `corrupt_files_are_quarantined_and_a_fresh_spool_starts`.)
    #[tokio::test]
    async fn a_database_that_lost_acknowledged_writes_is_reported_and_keeps_the_rest() {
        for cut in [0.0, 0.02, 0.5, 0.98] {
            let parent = tempfile::tempdir().unwrap();
            let dir = parent.path().join("spool");
            let spool = Spool::open(&dir, limits(), routes(&["a"])).unwrap();
            for i in 0..400u32 {
                spool
                    .append(Signal::Traces, 1, &[(i % 251) as u8; 300])
                    .await
                    .unwrap();
            }
            drop(spool);
            // sled's file runs on past its data, in space it preallocated.
            let bytes = std::fs::read(dir.join("db")).unwrap();
            let end = bytes.iter().rposition(|&b| b != 0).unwrap() + 1;
            let db = std::fs::OpenOptions::new()
                .write(true)
                .open(dir.join("db"))
                .unwrap();
            db.set_len((end as f64 * cut) as u64).unwrap();

            let spool = Spool::open(&dir, limits(), routes(&["a"])).unwrap();
            let usage = spool.usage();
            let truncated = usage.truncated.clone().unwrap_or_else(|| {
                panic!("cut {cut}: the loss is not reported: {usage:?}");
            });
            assert_eq!(truncated.expected_seq, 400, "cut {cut}");
            assert!(truncated.found_seq < 400, "cut {cut}: {truncated:?}");
            assert!(usage.records < 400, "cut {cut}");
            let kept = seqs(&spool, Signal::Traces);
            assert_eq!(
                kept.len() as u64,
                usage.records,
                "cut {cut}: what is left reads"
            );
            // New numbers go above the lost ones.
            let next = spool.append(Signal::Traces, 1, b"t").await.unwrap();
            assert!(next > 400, "cut {cut}: {next}");
            drop(spool);
            let again = Spool::open(&dir, limits(), routes(&["a"])).unwrap();
            assert!(
                again.usage().truncated.is_none(),
                "cut {cut}: reported once"
            );
        }
    }

    /// The mark never runs ahead of the database: reopening intact spools (after a clean close,
    /// or with writes since the last reopen, acknowledged and deleted ones included) reports
    /// nothing.
    #[tokio::test]
    async fn an_intact_spool_is_never_reported_as_truncated() {
        let dir = tempfile::tempdir().unwrap();
        for round in 0..4u64 {
            let spool = Spool::open(dir.path(), limits(), routes(&["a"])).unwrap();
            assert!(spool.usage().truncated.is_none(), "round {round}");
            let mut last = 0;
            for _ in 0..50 {
                last = spool.append(Signal::Traces, 1, b"t").await.unwrap();
            }
            if round % 2 == 1 {
                spool.ack("a", Signal::Traces, last).unwrap();
            }
            // Give the housekeeping pass time to save the mark mid-run once.
            tokio::time::sleep(commit::HOUSEKEEPING_EVERY + Duration::from_millis(200)).await;
        }
        let marked = std::fs::read_to_string(dir.path().join("durable-seq")).unwrap();
        assert_eq!(marked.trim(), "200");
    }

    #[tokio::test]
    async fn a_dropped_spool_can_be_reopened_at_once_and_a_second_open_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..20u32 {
            let spool = Spool::open(dir.path(), limits(), routes(&[])).unwrap();
            spool.append(Signal::Logs, i, b"l").await.unwrap();
            drop(spool);
        }
        let spool = Spool::open(dir.path(), limits(), routes(&[])).unwrap();
        assert_eq!(spool.usage().records, 20);
        let waited = Instant::now();
        let second = Spool::open(dir.path(), limits(), routes(&[]));
        assert!(
            matches!(second, Err(OpenError::Locked(_))),
            "a second open while the first is held"
        );
        assert!(
            waited.elapsed() >= LOCK_WAIT,
            "it waited for the holder first"
        );
    }

    /// A value over sled's inline limit (~128 KiB) goes to a file under `blobs/`, which sled
    /// never syncs; DiskSync must pick it up, and it must read back whole after a reopen.
    #[tokio::test]
    async fn large_records_go_to_synced_blob_files_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        {
            let spool = Spool::open(dir.path(), limits(), routes(&["a"])).unwrap();
            spool.append(Signal::Logs, 1, &big).await.unwrap();
        }
        let blobs = std::fs::read_dir(dir.path().join("blobs")).unwrap().count();
        assert!(blobs >= 1, "the large value went to a blob file");
        let spool = Spool::open(dir.path(), limits(), routes(&["a"])).unwrap();
        let read = spool.read(Signal::Logs, 0, u64::MAX, u64::MAX).unwrap();
        assert_eq!(read.len(), 1);
        assert_eq!(read[0].payload(), &big[..]);
    }

    fn all_routes(traces: &[&str]) -> Routes {
        let names: Vec<String> = traces.iter().map(|d| d.to_string()).collect();
        [names.clone(), names.clone(), names]
    }

    fn seqs(spool: &Spool, signal: Signal) -> Vec<u64> {
        let read = spool.read(signal, 0, u64::MAX, u64::MAX).unwrap();
        read.iter().map(|r| r.seq).collect()
    }

    #[tokio::test]
    async fn reroute_adds_starts_from_the_oldest_forgets_and_deletes_what_all_have() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), limits(), routes(&["a", "b"])).unwrap();
        for _ in 0..4 {
            spool.append(Signal::Traces, 1, b"t").await.unwrap();
        }
        spool.append(Signal::Logs, 1, b"l").await.unwrap(); // seq 5, logs routed nowhere
        spool.ack("a", Signal::Traces, 3).unwrap();
        spool.ack("b", Signal::Traces, 1).unwrap();
        assert_eq!(seqs(&spool, Signal::Traces), [2, 3, 4], "b holds 2 and 3");

        // b leaves: its cursor goes, and what a alone has acknowledged is deleted at once.
        spool.reroute(routes(&["a", "c"])).unwrap();
        assert_eq!(
            spool.cursor("b", Signal::Traces),
            0,
            "b's cursor is forgotten"
        );
        assert_eq!(
            spool.cursor("c", Signal::Traces),
            0,
            "c starts from the oldest"
        );
        assert_eq!(
            seqs(&spool, Signal::Traces),
            [2, 3, 4],
            "c has none of them yet"
        );
        assert_eq!(spool.pending("c", Signal::Traces).records, 3);
        spool.ack("c", Signal::Traces, 4).unwrap();
        assert_eq!(
            seqs(&spool, Signal::Traces),
            [4],
            "a has 2 and 3, c everything"
        );

        // c leaves: a alone decides, and the records a has go.
        spool.reroute(routes(&["a"])).unwrap();
        assert_eq!(seqs(&spool, Signal::Traces), [4]);
        spool.ack("a", Signal::Traces, 4).unwrap();
        assert!(seqs(&spool, Signal::Traces).is_empty());
        // Logs were routed nowhere all along: held.
        assert_eq!(seqs(&spool, Signal::Logs), [5]);

        // b comes back for logs: it starts from the oldest held log record.
        spool.reroute(all_routes(&["b"])).unwrap();
        assert_eq!(
            spool.cursor("a", Signal::Traces),
            0,
            "a no longer routes traces"
        );
        assert_eq!(spool.pending("b", Signal::Logs).records, 1);
        spool.ack("b", Signal::Logs, 5).unwrap();
        assert_eq!(spool.usage().records, 0);
        drop(spool);

        // Durable: the forgotten cursors stay forgotten across a restart with every route.
        let spool = Spool::open(dir.path(), limits(), all_routes(&["a", "b", "c"])).unwrap();
        assert_eq!(spool.cursor("a", Signal::Traces), 0);
        assert_eq!(spool.cursor("c", Signal::Traces), 0);
        assert_eq!(spool.cursor("b", Signal::Logs), 5);
    }

    /// A config reload or an acknowledgement that comes while a reopen has the store out: both
    /// are kept in memory (the reopen writes cursors back), so a new destination's records are
    /// not deleted by the others' acknowledgements.
    #[tokio::test]
    async fn routes_and_acknowledgements_during_a_reopen_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), limits(), routes(&["a"])).unwrap();
        for _ in 0..3 {
            spool.append(Signal::Traces, 1, b"t").await.unwrap();
        }
        let store = spool.inner.store.write().unwrap().take().unwrap(); // as a reopen does
        assert!(spool.reroute(routes(&["a", "b"])).is_err());
        assert!(spool.ack("a", Signal::Traces, 3).is_err());
        *spool.inner.store.write().unwrap() = Some(store);
        assert_eq!(
            spool.cursor("a", Signal::Traces),
            3,
            "a's acknowledgement is kept"
        );
        spool.ack("a", Signal::Traces, 3).unwrap();
        assert_eq!(
            seqs(&spool, Signal::Traces),
            [1, 2, 3],
            "b has none of them yet"
        );
        spool.ack("b", Signal::Traces, 3).unwrap();
        assert!(seqs(&spool, Signal::Traces).is_empty());
    }

    #[tokio::test]
    async fn an_unreadable_record_is_set_aside_counted_and_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), limits(), routes(&["a"])).unwrap();
        spool.append(Signal::Traces, 2, b"good-1").await.unwrap(); // 1
        let store = spool.store().unwrap();
        // What a newer format, or damage inside a value, looks like: 2 is unreadable.
        let bad_seq = spool.inner.links.next_seq.fetch_add(1, Ordering::SeqCst);
        let mut bad = RecordHeader {
            items: 3,
            received_ms: now_ms(),
        }
        .encode(b"from the future");
        bad[0] = 9;
        store.records[0].insert(bad_seq.to_be_bytes(), bad).unwrap();
        spool.state().trees[0].records += 1;
        spool.state().trees[0].bytes += 29;
        spool.append(Signal::Traces, 2, b"good-3").await.unwrap(); // 3

        let read = spool.read(Signal::Traces, 0, u64::MAX, u64::MAX).unwrap();
        assert_eq!(read.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 3]);
        let usage = spool.usage();
        assert_eq!(usage.dropped.unreadable_records, 1);
        assert_eq!(
            usage.records, 2,
            "the unreadable record left the records tree"
        );
        assert_eq!(usage.dead_letter_records, 1, "kept for inspection");
        let (_, letter) = store.dead_letter.first().unwrap().unwrap();
        let text = String::from_utf8_lossy(&letter);
        assert!(text.contains("unreadable spool record"), "{text}");
        assert!(text.ends_with("from the future"), "{text}");

        // Read again (another destination, or after a restart): counted once.
        let read = spool.read(Signal::Traces, 0, u64::MAX, u64::MAX).unwrap();
        assert_eq!(read.len(), 2);
        assert_eq!(spool.usage().dropped.unreadable_records, 1);
        // The cursor moves past it with the batch, and everything is deleted.
        spool.ack("a", Signal::Traces, 3).unwrap();
        assert_eq!(spool.usage().records, 0);
    }

    /// A report of a storage failure makes the spool refuse appends and reopen its database in
    /// place; what was durable survives, and the cursors in memory win over the files.
    #[tokio::test]
    async fn a_storage_failure_reopens_the_database_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), limits(), routes(&["a"])).unwrap();
        for _ in 0..3 {
            spool.append(Signal::Traces, 1, b"t").await.unwrap();
        }
        spool.ack("a", Signal::Traces, 1).unwrap();
        let generation = spool.store().unwrap().generation;
        *spool.inner.failure.lock().unwrap() = Some("injected failure".into());
        spool
            .inner
            .links
            .failures
            .send(Failure {
                generation,
                why: "injected failure".into(),
            })
            .unwrap();
        let refused = spool.append(Signal::Traces, 1, b"t").await;
        assert!(
            matches!(&refused, Err(AppendError::Storage(m)) if m.contains("injected failure")),
            "{refused:?}"
        );
        assert!(!spool.healthy());
        assert_eq!(
            spool.usage().storage_error.as_deref(),
            Some("injected failure")
        );

        let deadline = Instant::now() + Duration::from_secs(10);
        while !spool.healthy() {
            assert!(Instant::now() < deadline, "the spool did not reopen");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let usage = spool.usage();
        assert_eq!((usage.reopens, usage.storage_error), (1, None));
        assert_eq!(spool.store().unwrap().generation, generation + 1);
        assert_eq!(usage.records, 2);
        assert_eq!(spool.cursor("a", Signal::Traces), 1);
        assert_eq!(seqs(&spool, Signal::Traces), [2, 3]);
        // Accepting again (the refused append took no sequence number); a stale report about
        // the old database is ignored.
        assert_eq!(spool.append(Signal::Traces, 1, b"t").await.unwrap(), 4);
        spool
            .inner
            .links
            .failures
            .send(Failure {
                generation,
                why: "stale".into(),
            })
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(spool.healthy());
        assert_eq!(spool.usage().reopens, 1);
    }

    fn corrupt_spool(
        corrupt: impl Fn(&Path),
    ) -> (tempfile::TempDir, PathBuf, Result<Spool, OpenError>) {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("spool");
        {
            let spool = Spool::open(&dir, limits(), routes(&["a"])).unwrap();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            for i in 0..1000u32 {
                rt.block_on(spool.append(Signal::Traces, i, &[(i % 251) as u8; 300]))
                    .unwrap();
            }
        }
        corrupt(&dir);
        let opened = Spool::open(&dir, limits(), routes(&["a"]));
        (parent, dir, opened)
    }

    fn quarantines(parent: &Path) -> Vec<PathBuf> {
        std::fs::read_dir(parent)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.to_string_lossy().contains("spool.quarantine-"))
            .collect()
    }

    /// What sled does with damaged files, and what the spool makes of it: an error it reports as
    /// corruption (a garbled `conf`), a panic, or a database without its layout marker (garbage
    /// over the log's start) means quarantine and a fresh spool. A truncated log reads as a torn
    /// write: sled opens it with the tail gone, which the durable mark detects (see
    /// `a_database_that_lost_acknowledged_writes_is_reported_and_keeps_the_rest`).
    #[test]
    fn corrupt_files_are_quarantined_and_a_fresh_spool_starts() {
        use std::os::unix::fs::PermissionsExt;
        // (A `conf` of 8 bytes or fewer is taken as missing, and rewritten.)
        let garbled_conf =
            |dir: &Path| std::fs::write(dir.join("conf"), b"garbage garbage garbage").unwrap();
        // A large record lives in a blob file, which sled checks (CRC) when it reads it.
        // Garbage over the log's first segment: sled opens an empty database (or, with other
        // contents, panics); the missing layout marker tells.
        let garbage_at_start = |dir: &Path| {
            use std::io::Write;
            let mut db = std::fs::OpenOptions::new()
                .write(true)
                .open(dir.join("db"))
                .unwrap();
            db.write_all(&[0xA5; 4096]).unwrap();
        };
        for (name, corrupt) in [
            ("garbled conf", &garbled_conf as &dyn Fn(&Path)),
            ("garbage at the start of the log", &garbage_at_start),
        ] {
            let (parent, dir, opened) = corrupt_spool(corrupt);
            let spool = opened.unwrap_or_else(|e| panic!("{name}: the spool must open: {e}"));
            let aside = quarantines(parent.path());
            assert_eq!(
                aside.len(),
                1,
                "{name}: one quarantine directory: {aside:?}"
            );
            assert_eq!(spool.usage().quarantined.as_ref(), Some(&aside[0]));
            assert_eq!(spool.usage().records, 0, "{name}: a fresh spool");
            let mode = std::fs::metadata(&aside[0]).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700, "{name}: the quarantine stays private");
            assert!(
                aside[0].join("db").exists(),
                "{name}: the files were moved whole"
            );
            assert!(dir.join("db").exists());
        }

        // A log cut in half: depending on where the cut falls, sled panics (quarantined) or
        // takes it for a torn write and opens what is left, reported. Either way: it opens.
        let (parent, _dir, opened) = corrupt_spool(|dir| {
            let db = std::fs::OpenOptions::new()
                .write(true)
                .open(dir.join("db"))
                .unwrap();
            let len = db.metadata().unwrap().len();
            db.set_len(len / 2).unwrap();
        });
        let spool = opened.expect("a truncated spool opens");
        let quarantined = quarantines(parent.path()).len();
        let usage = spool.usage();
        assert!(
            quarantined == 1
                || (quarantined == 0 && usage.records < 1000 && usage.truncated.is_some()),
            "quarantined {quarantined}, usage {usage:?}"
        );
    }

    #[test]
    fn open_errors_that_are_not_corruption_are_reported_not_quarantined() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("spool");
        let _held = Spool::open(&dir, limits(), routes(&[])).unwrap();
        let second = Spool::open(&dir, limits(), routes(&[]));
        assert!(matches!(second, Err(OpenError::Locked(_))));
        assert!(quarantines(parent.path()).is_empty());

        let io = |errno| std::io::Error::from_raw_os_error(errno);
        for (errno, expected) in [
            (
                libc::EACCES,
                "Permission denied (os error 13); set spool.dir to a directory this user can write",
            ),
            (
                libc::EROFS,
                "Read-only file system (os error 30); its file system is mounted read-only",
            ),
            (libc::ENOSPC, "the disk is full"),
        ] {
            let message = io_error(&dir, io(errno)).to_string();
            assert!(message.contains(expected), "{message}");
            assert!(message.contains(&*dir.to_string_lossy()), "{message}");
        }
        assert!(matches!(
            sled_error(&dir, sled::Error::Io(io(libc::EIO))),
            StoreError::Other(OpenError::Storage { .. })
        ));
    }
}
