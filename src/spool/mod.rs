//! The spool: durable, bounded storage between the receiver and the export workers.
//!
//! On-disk layout (in `spool.dir`, owner-only: 0700 directories, 0600 files):
//! - `LAYOUT`: `2` (written tmp → fsync → rename → directory fsync). A directory with sled's
//!   files (`db`, `conf`) and no `LAYOUT` is a version-1 spool: [`migrate`] converts it first.
//! - `seg/<stream>/<first_seq:016x>.seg`: payloads, one [`segment`] stream per signal
//!   (`traces`, `metrics`, `logs`) and one for dead letters (`dead_letter`), each a run of
//!   CRC-framed [`record`]s. Sequence numbers are global across streams and only grow.
//! - `index/`: a sled database of small values only (it never holds payloads): `cursors`
//!   (`"<destination>/<signal>"` → the last sequence that destination acknowledged), `floors`
//!   (stream → the newest sequence deleted: acknowledged by all, expired, evicted), `meta`
//!   (`last_seq`: the newest sequence handed out, written before each index flush;
//!   `dead_letters_capped`), `dead_letter_marks` (dead letters purged or to be replayed:
//!   [`dead_letters`]), and `state/<kind>/<destination>`: opaque state a destination keeps
//!   ([`Spool::state_tree`]; today Prometheus remote write's delta totals), dropped with its
//!   cursors when the destination routes nothing. Not counted in `max_bytes`.
//! - `durable-seq`: the [`mark`], the newest sequence known durable, which tells a spool that
//!   lost acknowledged writes at open.
//!
//! Invariants, each with the test that proves it:
//! 1. [`Spool::append`] returns only after its frame is durable: `fdatasync` of the segment
//!    (`F_FULLFSYNC` on macOS) and, for a new segment, of its directory; concurrent appends to a
//!    stream share one sync (`commit.rs`). — `tests/power_cut.rs` (acknowledged items survive
//!    cuts of unsynced data, and are lost when fsync does nothing), `tests/crash.rs` (kill -9),
//!    `tests/crash_points.rs` (killed between write, sync, publish and answer; and in a roll).
//! 2. A reader never sees a frame beyond the published durable length of its segment.
//!    — `a_failed_sync_fails_its_appends_and_the_stream_goes_on_in_a_new_segment` below.
//! 3. Sequence numbers never repeat, across restarts and deletions: they resume above the
//!    newest frame and segment name of every stream, the index's `last_seq`, every cursor and
//!    the durable mark. — `sequence_numbers_resume_above_every_key_and_cursor`,
//!    `tests/spool_props.rs`.
//! 4. A segment is deleted only after every cursor and floor that passed it is durable (the
//!    index flush that carries them unlinks it); deletion is idempotent and re-run at open, and
//!    an index that comes back older (a power cut, deleted by hand) costs duplicates, never
//!    loss: destinations then start from the oldest record held. — `tests/spool_props.rs`,
//!    `drained_segments_are_deleted`, `a_lost_index_costs_duplicates_not_records` below,
//!    `tests/crash_points.rs` (killed after a cursor write, and between flush and unlink).
//! 5. After a failed write or `fdatasync`, that segment is never appended to again; the waiting
//!    appends fail (503, nothing acknowledged) and the stream goes on in a fresh segment.
//!    — `a_failed_sync_fails_its_appends_and_the_stream_goes_on_in_a_new_segment`.
//! 6. A torn tail (bad bytes after the last good frame of the newest segment) is cut at open; a
//!    bad frame anywhere else is damage: logged, counted (`/status` `spool.damaged_records`,
//!    `/metrics`), skipped, and every readable record is still delivered; a spool missing
//!    acknowledged records is reported against the durable mark. —
//!    `damage_is_reported_and_the_rest_is_delivered`, `a_torn_tail_is_cut_and_reported`,
//!    `a_segment_deleted_by_hand_is_reported_and_the_rest_is_delivered`,
//!    `tests/storage_faults.rs`.
//!
//! 7. A purged dead letter, or one whose replay is done, is never listed or offered again,
//!    across restarts; a replay is offered to its destination's worker for its signal only.
//!    — `tests/spool_props.rs`, `src/spool/dead_letters.rs` tests.
//!
//! A version-1 spool is converted first ([`migrate`]; `a_version_1_spool_is_migrated_whole`,
//! and `tests/crash_points.rs` for a migration killed halfway).
//!
//! Caps: a record is deleted when every destination routing its signal has a cursor at or past
//! it, or when it is expired (`max_age`) or evicted for space (`drop_oldest`), which raise the
//! stream's floor (counted). A signal no destination routes is held, bounded by the caps.
//! Logical bytes (frames) stay under `max_bytes`; only the first segment of a stream holds
//! deleted bytes, so disk use stays under `max_bytes` plus one segment per stream (and the
//! small index). Appends are refused while the file system has less than
//! [`FREE_SPACE_RESERVE`] free, so the spool never fills the disk itself ([`free_space`] says
//! how that is known without a `statvfs` per append).
//!
//! Routes ([`Spool::reroute`], and [`Spool::open`] at a start): a destination newly routing a
//! signal has no cursor and starts from the oldest record held; a destination no longer routing a
//! signal has its cursor removed (durable with the next index flush), so if it comes back it
//! starts from the oldest record held too; a signal routed nowhere is held.
//!
//! Storage faults. sled 0.34 latches the first write error (`ENOSPC`, `EIO`) and fails every
//! later write until the database is opened again. So an index error makes the spool refuse
//! appends (503), report unhealthy, and reopen the index in place on its own thread once the
//! file system has the reserve free again; the cursors and floors in memory — the newest — are
//! written back. A failing segment write or sync fails only the appends waiting on it
//! (invariant 5). At open, an index sled reports as corrupt (or panics on) makes the whole
//! directory move aside to `<spool.dir>.quarantine-<UTC timestamp>` and an empty spool start:
//! the agent must come up rather than crash-loop. Other open errors (lock held, permission
//! denied, read-only file system, disk full) stop the start with a message saying what to do.
//!
//! Memory does not grow with what is held: a read is one `pread` of at most a batch, opening
//! reads one seal frame per closed segment (and the newest segment of each stream whole), and
//! sled's cache holds only the index.
//!
//! Receive times (which `max_age` and "oldest pending" read) never go backwards, across restarts
//! too: a wall clock set back stamps records with the newest time already used.
//!
//! The spool knows bytes, sequence numbers and cursors. It does not parse OTLP or speak HTTP.

mod commit;
mod crash;
mod dead_letters;
mod free_space;
mod mark;
mod migrate;
pub mod record;
mod segment;

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::{watch, Notify};

use crate::config::{SpoolConfig, WhenFull};
use crate::otlp::{PerSignal, Signal};
use commit::{DiskSync, GroupCommit, Hooks, IndexFlush};
pub use dead_letters::{DeadLetter, LetterInfo, Purged, Replayed, Selection, StoredLetter};
use free_space::FreeSpace;
use mark::DurableMark;
pub use record::RecordHeader;
use segment::Stream;

const LAYOUT_VERSION: &str = "2";
const LAYOUT_FILE: &str = "LAYOUT";
const INDEX_DIR: &str = "index";
const SEGMENTS_DIR: &str = "seg";
const DEAD_LETTER_STREAM: &str = "dead_letter";
/// sled's page cache: the index is small.
const CACHE_CAPACITY: u64 = 4 << 20;
/// `meta` key of the index's format marker, its first write.
const FORMAT_KEY: &str = "format";
/// `meta` key of the newest sequence handed out.
const LAST_SEQ: &str = "last_seq";
/// Free space the spool leaves on its file system: appends are refused below it (plus the
/// record), so that cursor moves, the index's own writes and segment rolls still have room.
pub const FREE_SPACE_RESERVE: u64 = 8 << 20;
/// Free space above the reserve below which `/healthz` reports the spool unable to take data:
/// appends are refused within their size of the reserve, so a health check that waited for
/// the reserve itself would say 200 while every request gets 503.
const LOW_SPACE_MARGIN: u64 = 1 << 20;
/// The first and the longest pause between attempts to reopen a failed index.
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
    /// How large a segment grows before the next one starts: a 32nd of the cap, within 1 MiB
    /// and 32 MiB (small enough that deleting whole segments gives disk back in time, large
    /// enough that a stream has few files).
    pub fn segment_size(&self) -> u64 {
        (self.max_bytes / 32).clamp(1 << 20, 32 << 20)
    }

    /// What the spool's files may take on disk: the cap, plus one segment per stream (only a
    /// stream's first segment holds deleted bytes) and the dead letters' own cap.
    pub fn disk_cap(&self) -> u64 {
        self.max_bytes + 4 * self.segment_size() + (self.max_bytes / 16).max(1 << 20)
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
pub type Routes = PerSignal<Vec<String>>;

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
        "spool at {dir} has layout version {found}, this build reads version {LAYOUT_VERSION}; \
         it was written by a newer otlp-spool: upgrade, or move the directory aside"
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

/// Why reading, acknowledging, rerouting or dead-lettering failed on an open spool. The text
/// says what failed and why; it is what logs and `status` show.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// An earlier failure made the index unusable and a reopen is under way: try again later.
    #[error("{0}; the spool is being reopened")]
    Reopening(String),
    /// The index could not be read or written. When that leaves sled unusable the spool is
    /// failed (appends refused) and reopened by itself.
    #[error("{0}")]
    Index(String),
    /// A segment file could not be read, written, synced or deleted.
    #[error("{0}")]
    Segment(String),
}

/// For the callers that report a failure as text (the `dead-letters` documents).
impl From<SpoolError> for String {
    fn from(e: SpoolError) -> String {
        e.to_string()
    }
}

/// One stored record as read back for export.
#[derive(Debug, Clone)]
pub struct Record {
    pub seq: u64,
    pub header: RecordHeader,
    payload: Bytes,
}

impl Record {
    /// The canonical OTLP protobuf payload.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }
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
    /// Damaged frames skipped (the records in them are lost; item counts unknown).
    pub unreadable_records: u64,
}

/// One stream's files and what it holds.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct StreamUsage {
    pub records: u64,
    pub bytes: u64,
    pub segments: u64,
    pub disk_bytes: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Usage {
    pub records: u64,
    pub bytes: u64,
    pub disk_bytes: u64,
    pub max_bytes: u64,
    pub disk_cap: u64,
    /// Dead letters held and their frame bytes (purged and replayed ones not counted, though
    /// their bytes may still be on disk: see [`dead_letters`]).
    pub dead_letter_records: u64,
    pub dead_letter_bytes: u64,
    /// Dead letters waiting for their destination's worker to replay them.
    pub dead_letter_replays_pending: u64,
    /// Dead letters (and their items) the dead-letter cap deleted unpurged, over the spool's
    /// life.
    pub dead_letter_capped_records: u64,
    pub dead_letter_capped_items: u64,
    pub dropped: Dropped,
    /// Per stream: `traces`, `metrics`, `logs`, `dead_letter`.
    pub streams: HashMap<&'static str, StreamUsage>,
    /// Where this start moved a corrupt spool directory, if it did.
    pub quarantined: Option<PathBuf>,
    /// Whether this start found the spool missing writes that were acknowledged.
    pub truncated: Option<Truncated>,
    /// Why storage is failing now (appends get 503 until the index is reopened).
    pub storage_error: Option<String>,
    /// Times the index was reopened after a storage failure since the start.
    pub reopens: u64,
}

/// A spool that opened without its newest acknowledged writes (a segment cut short or
/// damaged). Records with sequences in `found_seq + 1 ..= expected_seq` that were not yet
/// delivered are lost; the rest were kept.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Truncated {
    /// The newest sequence the durable mark says was acknowledged.
    pub expected_seq: u64,
    /// The newest sequence the spool still has.
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

#[derive(Default)]
struct State {
    /// The newest acknowledgement of every routed destination: ahead of the cursors tree until
    /// the next index flush, and written back to it after a reopen.
    cursors: HashMap<String, u64>,
    /// Per stream (signals, then dead letters): the newest sequence deleted (acknowledged by
    /// every routed destination, expired, evicted, capped); ahead of the floors tree likewise.
    floors: [u64; 4],
    routes: Routes,
    dropped: Dropped,
    reopens: u64,
}

/// The open index (a sled database) and its commit thread. Replaced whole by a reopen.
struct Store {
    /// Tells which store a failure report is about (reports from a replaced one are stale).
    generation: u64,
    db: sled::Db,
    cursors: sled::Tree,
    floors: sled::Tree,
    commit: GroupCommit,
}

/// What a freshly opened index holds.
struct Scan {
    max_seq: u64,
    cursors: HashMap<String, u64>,
    floors: [u64; 4],
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

fn stream_name(stream: usize) -> &'static str {
    match stream {
        0..=2 => Signal::ALL[stream].name(),
        _ => DEAD_LETTER_STREAM,
    }
}

fn floor_key(stream: usize) -> &'static [u8] {
    stream_name(stream).as_bytes()
}

impl Store {
    /// Opens the index in `dir/index` and starts its commit thread, which reports failed flushes
    /// on `links.failures`. A panic inside sled counts as corruption.
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
                "sled failed reading the spool index: {what}"
            )))
        })
    }

    fn open_unguarded(
        dir: &Path,
        generation: u64,
        links: &Links,
    ) -> Result<(Store, Scan), StoreError> {
        let index = dir.join(INDEX_DIR);
        // sled takes much damage for a torn write and opens what it can read, maybe nothing.
        // The format marker is the first thing written: an index file that existed without it
        // lost its beginning. (An index that is missing whole starts empty: destinations then
        // start from the oldest record held.)
        let existed = std::fs::metadata(index.join("db")).is_ok_and(|m| m.len() > 0);
        create_private_dir(&index).map_err(StoreError::Other)?;
        let db = open_db(&index)?;
        let fail = |e| sled_error(&index, e);
        let meta = db.open_tree("meta").map_err(fail)?;
        match meta.get(FORMAT_KEY).map_err(fail)? {
            Some(_) => {}
            None if existed => {
                return Err(StoreError::Corrupt(
                    "sled opened the spool index without its format marker: the start of its \
                     log is damaged"
                        .into(),
                ))
            }
            None => {
                meta.insert(FORMAT_KEY, LAYOUT_VERSION).map_err(fail)?;
            }
        }
        let cursors = db.open_tree("cursors").map_err(fail)?;
        let floors = db.open_tree("floors").map_err(fail)?;
        let mut scan = Scan {
            max_seq: 0,
            cursors: HashMap::new(),
            floors: [0; 4],
        };
        if let Some(last) = meta.get(LAST_SEQ).map_err(fail)? {
            scan.max_seq = seq_of(&last);
        }
        for entry in cursors.iter() {
            let (key, value) = entry.map_err(fail)?;
            let seq = seq_of(&value);
            scan.max_seq = scan.max_seq.max(seq);
            scan.cursors
                .insert(String::from_utf8_lossy(&key).into_owned(), seq);
        }
        for (i, floor) in scan.floors.iter_mut().enumerate() {
            if let Some(v) = floors.get(floor_key(i)).map_err(fail)? {
                *floor = seq_of(&v);
            }
        }
        set_private_files(&index);

        let disk = DiskSync::open(&index).map_err(|e| {
            StoreError::Other(OpenError::Storage {
                dir: dir.to_path_buf(),
                message: format!("syncing the spool index's files: {e}"),
            })
        })?;
        let (last_seq, written) = (meta.clone(), AtomicU64::new(0));
        let next_seq = Arc::clone(&links.next_seq);
        let deletions = Arc::clone(&links.deletions);
        // Segments queued for deletion before this flush are unlinked after it: the cursors and
        // floors that passed them were written before they were queued.
        let before_flush = move || {
            let newest = next_seq.load(Ordering::SeqCst).saturating_sub(1);
            if newest > written.load(Ordering::SeqCst) {
                last_seq.insert(LAST_SEQ, &newest.to_be_bytes())?;
                written.store(newest, Ordering::SeqCst);
            }
            deletions.start_flush();
            Ok(())
        };
        let deletions = Arc::clone(&links.deletions);
        let private = index.clone();
        let failures = links.failures.clone();
        let commit = GroupCommit::start(
            "spool-index",
            Box::new(IndexFlush {
                db: db.clone(),
                disk,
                hooks: Hooks {
                    before_flush: Box::new(before_flush),
                    after_flush: Box::new(move || deletions.flushed()),
                    // sled creates files as it goes (snapshots, blobs): keep them private.
                    housekeeping: Box::new(move || set_private_files(&private)),
                    on_failure: Box::new(move |why| {
                        let _ = failures.send(Failure { generation, why });
                    }),
                },
            }),
        );
        let store = Store {
            generation,
            db,
            cursors,
            floors,
            commit,
        };
        Ok((store, scan))
    }

    /// Removes the cursors of destinations that no longer route their signal, so a destination
    /// that comes back starts from the oldest record held, and the state of destinations that
    /// route nothing.
    fn forget_unrouted(&self, state: &mut State) -> sled::Result<()> {
        let wanted: Vec<String> = state
            .routes
            .iter()
            .flat_map(|(s, destinations)| destinations.iter().map(move |d| cursor_key(d, s)))
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
                .values()
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

    /// Writes back what memory holds ahead of a (re)opened index: every cursor (and no other)
    /// and every floor.
    fn write_back(&self, state: &State, on_disk: &HashMap<String, u64>) -> sled::Result<()> {
        for name in on_disk.keys() {
            if !state.cursors.contains_key(name) {
                self.cursors.remove(name.as_bytes())?;
            }
        }
        for (name, seq) in &state.cursors {
            self.cursors.insert(name.as_bytes(), &seq.to_be_bytes())?;
        }
        for (i, floor) in state.floors.iter().enumerate() {
            self.floors.insert(floor_key(i), &floor.to_be_bytes())?;
        }
        Ok(())
    }
}

/// Segment files waiting for an index flush to make what deleted them durable.
#[derive(Default)]
struct Deletions {
    /// (queued since the last flush started, covered by the flush under way)
    files: Mutex<(Vec<PathBuf>, Vec<PathBuf>)>,
}

impl Deletions {
    fn queue(&self, paths: Vec<PathBuf>) {
        if !paths.is_empty() {
            self.files.lock().expect("deletions lock").0.extend(paths);
        }
    }

    /// A flush is starting: what is queued now is covered by it.
    fn start_flush(&self) {
        let mut files = self.files.lock().expect("deletions lock");
        let queued = std::mem::take(&mut files.0);
        files.1.extend(queued);
    }

    /// The flush succeeded: unlink what it covered.
    fn flushed(&self) {
        let covered = std::mem::take(&mut self.files.lock().expect("deletions lock").1);
        if !covered.is_empty() {
            crash::point("delete.flushed");
        }
        for path in covered {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                // Deleted again at the next open (its records are all before the head).
                Err(e) => {
                    tracing::warn!(segment = %path.display(), error = %e, "deleting a spool segment failed")
                }
            }
        }
    }
}

struct Inner {
    dir: PathBuf,
    limits: Limits,
    free_space: FreeSpace,
    /// The open index; `None` while a reopen is under way (also between its attempts).
    store: RwLock<Option<Arc<Store>>>,
    /// Why storage is failing, from the first report until a reopen succeeds.
    failure: Mutex<Option<String>>,
    links: Links,
    /// Signals' streams (by [`Signal::index`]), then dead letters.
    streams: [Stream; 4],
    quarantined: Option<PathBuf>,
    truncated: Option<Truncated>,
    /// The newest receive time stamped on a record: stamps never go below it.
    newest_received_ms: AtomicU64,
    state: Mutex<State>,
    /// Per signal: the newest durable sequence, which export workers wait on.
    durable: PerSignal<watch::Sender<u64>>,
    appended: Notify,
    /// Which dead letters are purged or to be replayed ([`dead_letters`]).
    marks: Mutex<dead_letters::Marks>,
    /// Bumped when a replay is asked for, to wake the export workers.
    replays: watch::Sender<u64>,
}

/// What the spool shares with every index it opens (the first, and each after a reopen).
struct Links {
    /// Where an index's commit thread reports failed flushes.
    failures: mpsc::Sender<Failure>,
    /// The newest sequence known durable, kept beside the index ([`mark`]).
    mark: Arc<DurableMark>,
    /// The next sequence number to hand out (the index's commit thread saves the one before it).
    next_seq: Arc<AtomicU64>,
    deletions: Arc<Deletions>,
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

/// An I/O error on the spool's files at open.
fn files_error(dir: &Path, what: &str, e: std::io::Error) -> OpenError {
    match io_error(dir, e) {
        OpenError::Storage { dir, message } => OpenError::Storage {
            dir,
            message: format!("{what}: {message}"),
        },
        other => other,
    }
}

impl Spool {
    /// Opens (or creates) the spool in `dir`, migrating a version-1 spool first. Cursors of
    /// destinations no longer in `routes` are forgotten, so a destination added later starts
    /// from the oldest held record. A corrupt index is quarantined and a spool missing
    /// acknowledged writes is reported (see the module docs); other failures are returned.
    pub fn open(dir: &Path, limits: Limits, routes: Routes) -> Result<Spool, OpenError> {
        create_private_dir(dir)?;
        migrate::to_current(dir)?;
        let (failures, reports) = mpsc::channel();
        let mut links = Links {
            failures,
            mark: Arc::new(DurableMark::open(dir)),
            next_seq: Arc::new(AtomicU64::new(0)),
            deletions: Arc::default(),
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
                    "the spool's index is corrupt: moved the spool aside and started an empty \
                     one; records not yet delivered stay in the quarantined directory, which \
                     otlp-spool does not read again: keep it for a bug report, then delete it"
                );
                create_private_dir(dir)?;
                migrate::to_current(dir)?;
                // The old mark went aside with the files it described.
                links.mark = Arc::new(DurableMark::open(dir));
                let (store, scan) =
                    Store::open(dir, 1, &links).map_err(|e| e.into_open_error(dir))?;
                (store, scan, Some(aside))
            }
        };
        let mut state = State {
            cursors: scan.cursors,
            floors: scan.floors,
            routes,
            ..State::default()
        };
        store
            .forget_unrouted(&mut state)
            .map_err(|e| sled_error(dir, e).into_open_error(dir))?;
        // What the routed destinations have all acknowledged is deleted now, and stays deleted
        // whatever the routes become (as `delete_acknowledged` does).
        for i in 0..3 {
            let through = deleted_through(&state, i);
            if through > state.floors[i] {
                state.floors[i] = through;
                store
                    .floors
                    .insert(floor_key(i), &through.to_be_bytes())
                    .map_err(|e| sled_error(dir, e).into_open_error(dir))?;
            }
        }
        let segment_size = limits.segment_size();
        let mut max_seq = scan.max_seq;
        let mut newest_received_ms = 0;
        let mut damaged = 0;
        let mut open_stream = |i: usize| -> Result<Stream, OpenError> {
            let name = stream_name(i);
            let path = dir.join(SEGMENTS_DIR).join(name);
            let mark = Arc::clone(&links.mark);
            let (stream, opened) = Stream::open(
                path,
                name,
                segment_size,
                deleted_through(&state, i),
                Box::new(move || {
                    if let Err(e) = mark.save() {
                        tracing::warn!(error = %e, "saving the spool's durable mark failed");
                    }
                }),
            )
            .map_err(|e| files_error(dir, &format!("opening the {name} segments"), e))?;
            max_seq = max_seq.max(opened.max_seq);
            newest_received_ms = newest_received_ms.max(opened.newest_received_ms);
            damaged += opened.damaged;
            Ok(stream)
        };
        let streams = [
            open_stream(0)?,
            open_stream(1)?,
            open_stream(2)?,
            open_stream(3)?,
        ];
        state.dropped.unreadable_records = damaged;
        // The newest sequence the spool still accounts for: a record, or a cursor or floor that
        // deleted it (not `last_seq`, which counts numbers handed out).
        let found_seq = streams
            .iter()
            .filter_map(Stream::last_seq)
            .chain(state.cursors.values().copied())
            .chain(state.floors)
            .max()
            .unwrap_or(0);
        let truncated = detect_truncation(dir, &links.mark, found_seq)?;
        // Above the lost writes too: their numbers may be in upstreams' logs.
        let resume = truncated.as_ref().map_or(0, |t| t.expected_seq);
        links
            .next_seq
            .store(resume.max(max_seq) + 1, Ordering::SeqCst);
        let durable =
            PerSignal::from_fn(|s| watch::channel(streams[s.index()].last_seq().unwrap_or(0)).0);
        let marks = dead_letters::Marks::load(&store.db, state.floors[3])
            .map_err(|e| sled_error(dir, e).into_open_error(dir))?;
        // Make forgotten cursors durable before anything else happens.
        store.commit.flush_soon();
        let inner = Arc::new(Inner {
            dir: dir.to_path_buf(),
            limits,
            free_space: FreeSpace::new(dir),
            store: RwLock::new(Some(Arc::new(store))),
            failure: Mutex::new(None),
            links,
            streams,
            quarantined,
            truncated,
            newest_received_ms: AtomicU64::new(newest_received_ms),
            state: Mutex::new(state),
            durable,
            appended: Notify::new(),
            marks: Mutex::new(marks),
            replays: watch::channel(0).0,
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
    /// cursors. Its writes become durable with the next index flush (an `ack`'s, at the
    /// latest). Look it up for each use and drop it after: a tree keeps the index it came
    /// from open, and a reopen after a storage failure waits (retrying) until no one holds one.
    pub fn state_tree(&self, destination: &str, kind: &str) -> Result<sled::Tree, String> {
        let name = format!("state/{kind}/{destination}");
        self.store()?
            .db
            .open_tree(&name)
            .map_err(|e| format!("opening spool tree {name}: {e}"))
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().expect("spool state lock poisoned")
    }

    /// The open index, or why there is none (a reopen is under way).
    fn store(&self) -> Result<Arc<Store>, SpoolError> {
        let store = self.inner.store.read().expect("spool store lock poisoned");
        store.clone().ok_or_else(|| {
            let failure = self.inner.failure();
            SpoolError::Reopening(
                failure
                    .as_deref()
                    .unwrap_or("spool storage failed")
                    .to_string(),
            )
        })
    }

    /// Describes a sled error, and when it means sled is unusable until reopened (I/O errors,
    /// corruption), fails the spool: appends are refused from now on and a reopen is asked for.
    fn fail_on_index_error(&self, store: &Store, what: &str, e: sled::Error) -> SpoolError {
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
        SpoolError::Index(why)
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
        let header = RecordHeader {
            items,
            received_ms: self.receive_time(),
        };
        let size = (record::HEADER_LEN + payload.len()) as u64;
        self.make_room(size)?;
        let stream = &self.inner.streams[signal.index()];
        let written = stream
            .write(&self.inner.links.next_seq, header, payload)
            .map_err(|e| {
                AppendError::Storage(format!(
                    "writing to the {} spool in {}: {e}",
                    signal.name(),
                    self.inner.dir.display()
                ))
            })?;
        stream
            .wait_durable(&written)
            .await
            .map_err(AppendError::Storage)?;
        let seq = written.seq;
        crash::point("append.durable");
        self.inner.links.mark.advance(seq);
        self.inner.durable[signal].send_if_modified(|newest| {
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

    /// Record bytes held in the signals' streams.
    fn held_bytes(&self) -> u64 {
        self.inner.streams[..3].iter().map(|s| s.live().1).sum()
    }

    /// Applies the caps before an append of `size` bytes, evicting under `drop_oldest`.
    fn make_room(&self, size: u64) -> Result<(), AppendError> {
        let limits = &self.inner.limits;
        if size > limits.max_bytes {
            return Err(AppendError::TooLarge {
                size,
                cap: limits.max_bytes,
            });
        }
        if let Err(free) = self.inner.free_space.take(size) {
            return Err(AppendError::NoSpace {
                dir: self.inner.dir.clone(),
                free,
            });
        }
        if self.held_bytes() + size <= limits.max_bytes {
            return Ok(());
        }
        if limits.when_full == WhenFull::Reject {
            return Err(AppendError::Full {
                used: self.held_bytes(),
                cap: limits.max_bytes,
            });
        }
        let store = self.store().map_err(|e| AppendError::Storage(e.into()))?;
        let mut state = self.state();
        let (mut records, mut items) = (0, 0);
        while self.held_bytes() + size > limits.max_bytes {
            // The oldest record of any signal.
            let oldest = (0..3)
                .filter_map(|i| {
                    self.inner.streams[i]
                        .first()
                        .ok()
                        .flatten()
                        .map(|(seq, _)| (seq, i))
                })
                .min();
            let Some((_, i)) = oldest else { break };
            let evicted = self
                .delete_first(&store, &mut state, i)
                .map_err(|e| AppendError::Storage(e.into()))?;
            let Some(header) = evicted else { break };
            records += 1;
            items += u64::from(header.items);
        }
        state.dropped.full_records += records;
        state.dropped.full_items += items;
        drop(state);
        store.commit.flush_soon();
        Ok(())
    }

    /// Deletes the oldest record of stream `i` (eviction, expiry, the dead-letter cap), raising
    /// its floor; what it was.
    fn delete_first(
        &self,
        store: &Store,
        state: &mut State,
        i: usize,
    ) -> Result<Option<RecordHeader>, SpoolError> {
        let stream = &self.inner.streams[i];
        let deleted = stream.delete_first().map_err(|e| {
            SpoolError::Segment(format!("deleting from the {} spool: {e}", stream_name(i)))
        })?;
        let Some((seq, header)) = deleted else {
            return Ok(None);
        };
        state.floors[i] = state.floors[i].max(seq);
        store
            .floors
            .insert(floor_key(i), &state.floors[i].to_be_bytes())
            .map_err(|e| self.fail_on_index_error(store, "saving a spool floor", e))?;
        self.inner.links.deletions.queue(stream.take_deletable());
        Ok(Some(header))
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
    /// they fit in `max_bytes` payload bytes and `max_items` items. A damaged record is
    /// skipped and counted (`unreadable_records`), so no reader stops on it.
    pub fn read(
        &self,
        signal: Signal,
        after: u64,
        max_bytes: u64,
        max_items: u64,
    ) -> Result<Vec<Record>, SpoolError> {
        let (records, damaged) = self.inner.streams[signal.index()]
            .read(after, max_bytes, max_items)
            .map_err(|e| {
                SpoolError::Segment(format!(
                    "reading the {} spool in {}: {e}",
                    signal.name(),
                    self.inner.dir.display()
                ))
            })?;
        if damaged > 0 {
            self.state().dropped.unreadable_records += damaged;
        }
        Ok(records)
    }

    /// Wakes when new durable records of `signal` exist; the value is the newest sequence.
    pub fn subscribe(&self, signal: Signal) -> watch::Receiver<u64> {
        self.inner.durable[signal].subscribe()
    }

    /// Records that `destination` has everything of `signal` up to `seq`, and deletes what every
    /// routed destination now has.
    pub fn ack(&self, destination: &str, signal: Signal, seq: u64) -> Result<(), SpoolError> {
        let key = cursor_key(destination, signal);
        let mut state = self.state();
        // In memory first: if saving fails, or a reopen is under way, the reopen writes it back
        // (it holds the state while it does, and while it installs the new store).
        state.cursors.insert(key.clone(), seq);
        let store = self.store()?;
        store
            .cursors
            .insert(key.as_bytes(), &seq.to_be_bytes())
            .map_err(|e| self.fail_on_index_error(&store, &format!("saving cursor {key}"), e))?;
        crash::point("ack.cursor_written");
        self.delete_acknowledged(&store, &mut state, signal)?;
        drop(state);
        store.commit.flush_soon();
        Ok(())
    }

    /// Deletes the records of `signal` that every destination routing it has acknowledged, and
    /// raises its floor to match: a destination added later (with no cursor) starts after them.
    fn delete_acknowledged(
        &self,
        store: &Store,
        state: &mut State,
        signal: Signal,
    ) -> Result<(), SpoolError> {
        let i = signal.index();
        let through = deleted_through(state, i);
        if through > state.floors[i] {
            state.floors[i] = through;
            store
                .floors
                .insert(floor_key(i), &through.to_be_bytes())
                .map_err(|e| self.fail_on_index_error(store, "saving a spool floor", e))?;
        }
        let stream = &self.inner.streams[i];
        stream.delete_through(through).map_err(|e| {
            SpoolError::Segment(format!(
                "deleting acknowledged {} records: {e}",
                signal.name()
            ))
        })?;
        self.inner.links.deletions.queue(stream.take_deletable());
        Ok(())
    }

    /// Changes which destinations read each signal, at run time (a config reload): see the
    /// module docs for what happens to cursors and records. The changes become durable with the
    /// next index flush, started here. Workers of a destination that no longer routes a signal
    /// should be stopped first: an acknowledgement from one afterwards re-creates its cursor
    /// (which the next reroute or restart forgets again).
    pub fn reroute(&self, routes: Routes) -> Result<(), SpoolError> {
        let mut state = self.state();
        // In memory first, as for `ack`: deletion follows the new routes even if the index is
        // being reopened now (forgetting cursors then waits for the next reroute or restart).
        state.routes = routes;
        let store = self.store()?;
        store
            .forget_unrouted(&mut state)
            .map_err(|e| self.fail_on_index_error(&store, "forgetting cursors", e))?;
        for signal in Signal::ALL {
            self.delete_acknowledged(&store, &mut state, signal)?;
        }
        drop(state);
        store.commit.flush_soon();
        Ok(())
    }

    /// What `destination` still has to send of `signal`.
    pub fn pending(&self, destination: &str, signal: Signal) -> Pending {
        let cursor = self.cursor(destination, signal);
        let stream = &self.inner.streams[signal.index()];
        match stream.pending_after(cursor) {
            Ok((records, bytes, oldest_ms)) => Pending {
                records,
                bytes,
                oldest_ms,
            },
            Err(_) => {
                let (records, bytes) = stream.live();
                Pending {
                    records,
                    bytes,
                    oldest_ms: None,
                }
            }
        }
    }

    pub fn usage(&self) -> Usage {
        let storage_error = self.inner.failure().clone();
        let streams: HashMap<&'static str, StreamUsage> = self
            .inner
            .streams
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let (records, bytes) = s.live();
                let (segments, disk_bytes) = s.files();
                (
                    stream_name(i),
                    StreamUsage {
                        records,
                        bytes,
                        segments,
                        disk_bytes,
                    },
                )
            })
            .collect();
        let index_bytes = self
            .store()
            .ok()
            .and_then(|s| s.db.size_on_disk().ok())
            .unwrap_or(0);
        let signals = Signal::ALL.map(|s| streams[s.name()]);
        let dead = streams[DEAD_LETTER_STREAM];
        let letters = self.letter_usage();
        let state = self.state();
        Usage {
            records: signals.iter().map(|s| s.records).sum(),
            bytes: signals.iter().map(|s| s.bytes).sum(),
            disk_bytes: streams.values().map(|s| s.disk_bytes).sum::<u64>() + index_bytes,
            max_bytes: self.inner.limits.max_bytes,
            disk_cap: self.inner.limits.disk_cap(),
            dead_letter_records: dead.records.saturating_sub(letters.hidden_records),
            dead_letter_bytes: dead.bytes.saturating_sub(letters.hidden_bytes),
            dead_letter_replays_pending: letters.replays_pending,
            dead_letter_capped_records: letters.capped_records,
            dead_letter_capped_items: letters.capped_items,
            dropped: state.dropped,
            streams,
            quarantined: self.inner.quarantined.clone(),
            truncated: self.inner.truncated.clone(),
            storage_error,
            reopens: state.reopens,
        }
    }

    /// Whether the spool can take data now (for `/healthz`): storage is not failing, no sync
    /// failed or is stuck, and the disk has the reserve and a margin free.
    pub fn healthy(&self) -> bool {
        let failing = self.inner.failure().is_some();
        let low = self
            .inner
            .free_space
            .now()
            .is_some_and(|free| free < FREE_SPACE_RESERVE + LOW_SPACE_MARGIN);
        !failing
            && !low
            && self.store().is_ok_and(|s| s.commit.healthy())
            && self.inner.streams.iter().all(Stream::healthy)
    }

    /// Deletes records older than `max_age`, sleeping until the oldest one is due; with an empty
    /// spool it sleeps until an append. Runs for the life of the agent.
    pub async fn expire_forever(self) {
        let max_age_ms = self.inner.limits.max_age.as_millis() as u64;
        loop {
            let oldest = self.inner.streams[..3]
                .iter()
                .filter_map(|s| s.first().ok().flatten())
                .map(|(_, h)| h.received_ms)
                .min();
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
        let mut state = self.state();
        let (mut records, mut items) = (0, 0);
        for i in 0..3 {
            let stream = &self.inner.streams[i];
            while let Some((_, header)) = stream
                .first()
                .map_err(|e| format!("reading the {} spool: {e}", stream_name(i)))?
            {
                if header.received_ms > cutoff_ms {
                    break;
                }
                if let Some(h) = self.delete_first(&store, &mut state, i)? {
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

    /// Replaces a failed index with a freshly opened one (see the module docs), once the file
    /// system has the reserve free. Appends are refused meanwhile.
    fn reopen(&self) -> Result<(), String> {
        let inner = &self.inner;
        if let Some(free) = inner.free_space.now().filter(|&f| f < FREE_SPACE_RESERVE) {
            return Err(format!(
                "waiting for free space on the disk holding {}: {free} bytes free, \
                 {FREE_SPACE_RESERVE} needed; free some space on it",
                inner.dir.display()
            ));
        }
        // Empty while a previous attempt failed after letting go of the old store.
        let old = inner.store.write().expect("spool store lock").take();
        if let Some(mut old) = old {
            // Operations in flight hold the store for moments; sled's lock is free only once
            // the last handle is gone.
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
                StoreError::Other(OpenError::Locked(_)) => "sled's lock on the spool index is \
                    still held by this process (a state tree in use); retrying"
                    .into(),
                StoreError::Other(e) => e.to_string(),
            })?;
        let mut state = self.state();
        inner
            .links
            .next_seq
            .fetch_max(scan.max_seq + 1, Ordering::SeqCst);
        // The cursors and floors in memory are the newest; the files may lack the last moves,
        // or still hold a cursor that was being forgotten.
        for (i, floor) in scan.floors.iter().enumerate() {
            state.floors[i] = state.floors[i].max(*floor);
        }
        store
            .write_back(&state, &scan.cursors)
            .map_err(|e| format!("writing the cursors back: {e}"))?;
        state.reopens += 1;
        store.commit.flush_soon();
        *inner.store.write().expect("spool store lock") = Some(Arc::new(store));
        *inner.failure() = None;
        Ok(())
    }
}

/// The newest sequence of stream `i` that may be deleted: its floor, or the oldest cursor of
/// the destinations routing it, whichever is newer (a signal routed nowhere: its floor).
fn deleted_through(state: &State, i: usize) -> u64 {
    let acknowledged = if i < 3 {
        let signal = Signal::ALL[i];
        state.routes[signal]
            .iter()
            .map(|d| {
                state
                    .cursors
                    .get(&cursor_key(d, signal))
                    .copied()
                    .unwrap_or(0)
            })
            .min()
            .unwrap_or(0)
    } else {
        0
    };
    acknowledged.max(state.floors[i])
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

/// Compares the spool with its durable mark: a spool whose newest sequence is below the mark
/// lost acknowledged writes. Reported once (the mark is set back to what was found), and the
/// surviving records are kept.
fn detect_truncation(
    dir: &Path,
    mark: &DurableMark,
    found_seq: u64,
) -> Result<Option<Truncated>, OpenError> {
    let Some(expected_seq) = mark.recorded().filter(|&seq| seq > found_seq) else {
        return Ok(None);
    };
    tracing::error!(
        spool = %dir.display(),
        expected_seq,
        found_seq,
        "the spool lost its newest writes (a segment was truncated or damaged): records \
         with sequences after found_seq, up to expected_seq, that were not yet delivered are \
         lost; the records still there are kept and will be sent. Check the disk, and whether \
         anything else writes in the spool directory"
    );
    mark.reset(found_seq).map_err(|e| OpenError::Storage {
        dir: dir.to_path_buf(),
        message: format!("resetting the durable mark: {e}"),
    })?;
    Ok(Some(Truncated {
        expected_seq,
        found_seq,
    }))
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

/// Replaces the file at `path` with `contents` so that after any crash it holds the old contents
/// or the new, whole: a temporary file written and synced, renamed over it, the directory
/// synced. Owner-only, like everything in the spool directory.
fn replace_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(contents)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    match path.parent() {
        Some(dir) => std::fs::File::open(dir)?.sync_all(),
        None => Ok(()),
    }
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

    fn limits() -> Limits {
        Limits {
            max_bytes: 1 << 20,
            max_age: Duration::from_secs(3600),
            when_full: WhenFull::DropOldest,
        }
    }

    fn routes(traces: &[&str]) -> Routes {
        Routes::from([
            traces.iter().map(|d| d.to_string()).collect(),
            Vec::new(),
            Vec::new(),
        ])
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

    /// The traces segment cut short (a torn tail, as a power cut leaves one, or a disk that lost
    /// writes): the spool opens with what is left, the durable mark says acknowledged records
    /// are missing, once, and what survived is kept and readable.
    #[tokio::test]
    async fn a_torn_tail_is_cut_and_reported() {
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
            let segments = segment_files(&dir, "traces");
            assert_eq!(segments.len(), 1, "{segments:?}");
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(&segments[0])
                .unwrap();
            let len = file.metadata().unwrap().len();
            file.set_len((len as f64 * cut) as u64).unwrap();

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
            assert_eq!(kept, (1..=usage.records).collect::<Vec<_>>(), "cut {cut}");
            assert_eq!(
                usage.dropped.unreadable_records, 0,
                "cut {cut}: a torn tail is no damage"
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

    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap().flatten() {
            if entry.file_type().unwrap().is_dir() {
                copy_dir(&entry.path(), &to.join(entry.file_name()));
            } else {
                std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
            }
        }
    }

    fn segment_files(dir: &Path, stream: &str) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join(SEGMENTS_DIR).join(stream))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        files.sort();
        files
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

    /// Requests as large as Gemini's prompts, and larger than a read's byte budget, read back
    /// whole, also after a reopen.
    #[tokio::test]
    async fn large_records_read_back_whole_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        {
            let spool = Spool::open(dir.path(), limits(), routes(&["a"])).unwrap();
            spool.append(Signal::Logs, 1, &big).await.unwrap();
            spool.append(Signal::Logs, 1, b"small").await.unwrap();
        }
        let spool = Spool::open(dir.path(), limits(), routes(&["a"])).unwrap();
        let read = spool.read(Signal::Logs, 0, 1000, u64::MAX).unwrap();
        assert_eq!(read.len(), 1, "one record over the budget still reads");
        assert_eq!(read[0].payload(), &big[..]);
        let rest = spool
            .read(Signal::Logs, read[0].seq, 1000, u64::MAX)
            .unwrap();
        assert_eq!(
            rest.iter().map(|r| r.payload()).collect::<Vec<_>>(),
            [b"small"]
        );
    }

    fn all_routes(traces: &[&str]) -> Routes {
        let names: Vec<String> = traces.iter().map(|d| d.to_string()).collect();
        Routes::from([names.clone(), names.clone(), names])
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

    /// A flipped byte in a closed segment: the damaged record is skipped and counted once, the
    /// records after it (in that segment and the next) are delivered, and acknowledging past it
    /// deletes everything.
    #[tokio::test]
    async fn damage_is_reported_and_the_rest_is_delivered() {
        let dir = tempfile::tempdir().unwrap();
        {
            let spool = Spool::open(dir.path(), limits(), routes(&["a"])).unwrap();
            for i in 0..3u8 {
                spool.append(Signal::Traces, 2, &[i; 100]).await.unwrap();
            }
        }
        {
            // A second run writes a second segment.
            let spool = Spool::open(dir.path(), limits(), routes(&["a"])).unwrap();
            spool.append(Signal::Traces, 2, b"later").await.unwrap();
        }
        let segments = segment_files(dir.path(), "traces");
        assert_eq!(segments.len(), 2, "{segments:?}");
        let mut bytes = std::fs::read(&segments[0]).unwrap();
        // The second record's payload.
        let at = 2 * (record::HEADER_LEN + 100) - 10;
        bytes[at] ^= 0x40;
        std::fs::write(&segments[0], &bytes).unwrap();

        let spool = Spool::open(dir.path(), limits(), routes(&["a"])).unwrap();
        assert_eq!(spool.usage().dropped.unreadable_records, 1, "found at open");
        let read = spool.read(Signal::Traces, 0, u64::MAX, u64::MAX).unwrap();
        assert_eq!(read.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 3, 4]);
        assert_eq!(read[1].payload(), &[2u8; 100]);
        // Read again (another destination): counted once.
        spool.read(Signal::Traces, 0, u64::MAX, u64::MAX).unwrap();
        assert!(spool.usage().dropped.unreadable_records <= 2);
        spool.ack("a", Signal::Traces, 4).unwrap();
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

    /// What sled does with a damaged index, and what the spool makes of it: an error it reports
    /// as corruption (a garbled `conf`), a panic, or an index without its format marker (garbage
    /// over the log's start) means quarantine and a fresh spool.
    #[test]
    fn corrupt_files_are_quarantined_and_a_fresh_spool_starts() {
        use std::os::unix::fs::PermissionsExt;
        // (A `conf` of 8 bytes or fewer is taken as missing, and rewritten.)
        let garbled_conf = |dir: &Path| {
            std::fs::write(dir.join("index/conf"), b"garbage garbage garbage").unwrap()
        };
        // Garbage over the log's first segment: sled opens an empty database (or, with other
        // contents, panics); the missing format marker tells.
        let garbage_at_start = |dir: &Path| {
            use std::io::Write;
            let mut db = std::fs::OpenOptions::new()
                .write(true)
                .open(dir.join("index/db"))
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
                aside[0].join("index/db").exists() && aside[0].join(SEGMENTS_DIR).exists(),
                "{name}: the files were moved whole"
            );
            assert!(dir.join("index/db").exists());
        }
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

    /// The index deleted by hand (or come back empty): every destination starts from the oldest
    /// record held. Duplicates, no loss.
    #[tokio::test]
    async fn a_lost_index_costs_duplicates_not_records() {
        let dir = tempfile::tempdir().unwrap();
        {
            let spool = Spool::open(dir.path(), limits(), routes(&["a", "b"])).unwrap();
            for _ in 0..5 {
                spool.append(Signal::Traces, 1, b"t").await.unwrap();
            }
            spool.ack("a", Signal::Traces, 5).unwrap();
            spool.ack("b", Signal::Traces, 2).unwrap();
            assert_eq!(seqs(&spool, Signal::Traces), [3, 4, 5]);
        }
        std::fs::remove_dir_all(dir.path().join(INDEX_DIR)).unwrap();
        let spool = Spool::open(dir.path(), limits(), routes(&["a", "b"])).unwrap();
        assert_eq!(spool.cursor("a", Signal::Traces), 0);
        let held = seqs(&spool, Signal::Traces);
        assert!(held.ends_with(&[3, 4, 5]), "{held:?}");
        assert_eq!(
            spool.pending("a", Signal::Traces).records,
            held.len() as u64
        );
        assert!(spool.append(Signal::Traces, 1, b"t").await.unwrap() > 5);
    }

    /// A backlog that drains gives its disk back: segments roll at their size, and once every
    /// record in them is acknowledged (and the index flush carrying that is done) they are
    /// deleted, down to one segment smaller than a roll when the stream is empty.
    #[tokio::test]
    async fn drained_segments_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), limits(), routes(&["a"])).unwrap();
        let payload = vec![7u8; 20_000];
        let mut last = 0;
        for _ in 0..200 {
            last = spool.append(Signal::Traces, 1, &payload).await.unwrap();
        }
        // limits(): 1 MiB segments; 200 × 20 KB rolled into several, and the cap evicted some.
        let before = segment_files(dir.path(), "traces").len();
        assert!(before >= 2, "{before} segments");
        let usage = spool.usage();
        assert!(usage.bytes <= limits().max_bytes, "{usage:?}");
        assert!(usage.disk_bytes <= limits().disk_cap(), "{usage:?}");
        let mut after = 0;
        while after < last {
            let batch = spool
                .read(Signal::Traces, after, 100_000, u64::MAX)
                .unwrap();
            after = batch.last().unwrap().seq;
            spool.ack("a", Signal::Traces, after).unwrap();
        }
        assert_eq!(spool.usage().records, 0);
        let deadline = Instant::now() + Duration::from_secs(5);
        let left = |dir: &Path| -> u64 {
            let files = segment_files(dir, "traces");
            files
                .iter()
                .map(|f| std::fs::metadata(f).map_or(0, |m| m.len()))
                .sum::<u64>()
                + if files.len() > 1 { u64::MAX / 2 } else { 0 }
        };
        while left(dir.path()) >= 1 << 20 {
            assert!(
                Instant::now() < deadline,
                "{:?}",
                segment_files(dir.path(), "traces")
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(spool.append(Signal::Traces, 1, b"t").await.unwrap() > last);
    }

    /// Dead letters are kept durably in their own stream, capped from the oldest.
    #[tokio::test]
    async fn dead_letters_are_kept_and_capped() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), limits(), routes(&["a"])).unwrap();
        let payload = vec![1u8; 100_000];
        for i in 0..30u64 {
            let letter = dead_letters::tests::letter(i, &payload);
            spool.dead_letter("a", Signal::Logs, letter).await.unwrap();
        }
        let usage = spool.usage();
        assert_eq!(usage.dropped.dead_letter_records, 30);
        assert!(usage.dead_letter_bytes <= 1 << 20, "{usage:?}");
        assert!(
            usage.dead_letter_records < 30 && usage.dead_letter_records > 5,
            "{usage:?}"
        );
        assert_eq!(
            usage.dead_letter_capped_records,
            30 - usage.dead_letter_records,
            "the letters the cap deleted are counted"
        );
        assert_eq!(
            usage.dead_letter_capped_items,
            2 * usage.dead_letter_capped_records
        );
        drop(spool);
        let spool = Spool::open(dir.path(), limits(), routes(&["a"])).unwrap();
        let reopened = spool.usage();
        assert_eq!(reopened.dead_letter_records, usage.dead_letter_records);
        assert_eq!(
            reopened.dead_letter_capped_records, usage.dead_letter_capped_records,
            "and the count survives a restart"
        );
    }

    /// A version-1 spool (records as sled values) made by the version-1 release build, with two
    /// destinations at different cursors, a dead letter, a blob-sized record and a remote-write
    /// state tree (tests/fixtures/spool-v1): migrated on first start, every held record, cursor,
    /// dead letter and state entry survives with its sequence number.
    #[tokio::test]
    async fn a_version_1_spool_is_migrated_whole() {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/spool-v1");
        let expected: serde_json::Value =
            serde_json::from_slice(&std::fs::read(fixture.join("expected.json")).unwrap()).unwrap();
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("spool");
        copy_dir(&fixture.join("spool"), &dir);
        let limits = Limits {
            max_age: Duration::from_secs(100 * 365 * 86400),
            ..limits()
        };
        let every = Routes::from([
            vec!["a".into(), "b".into()],
            vec!["a".into(), "b".into(), "p".into()],
            vec!["a".into(), "b".into()],
        ]);
        let spool = Spool::open(&dir, limits.clone(), every.clone()).unwrap();
        assert!(!dir.join("db").exists(), "the version-1 files are gone");
        assert_eq!(
            std::fs::read_to_string(dir.join(LAYOUT_FILE))
                .unwrap()
                .trim(),
            "2"
        );
        check_migrated(&spool, &expected).await;
        drop(spool);
        let spool = Spool::open(&dir, limits, every).unwrap();
        check_migrated(&spool, &expected).await;
    }

    async fn check_migrated(spool: &Spool, expected: &serde_json::Value) {
        for signal in Signal::ALL {
            let want = expected["records"][signal.name()].as_array().unwrap();
            let read = spool.read(signal, 0, u64::MAX, u64::MAX).unwrap();
            // A trace appended after the first check may follow.
            let read = &read[..want.len().min(read.len())];
            assert_eq!(read.len(), want.len(), "{}", signal.name());
            for (r, w) in read.iter().zip(want) {
                assert_eq!(r.seq, w["seq"].as_u64().unwrap());
                assert_eq!(u64::from(r.header.items), w["items"].as_u64().unwrap());
                assert_eq!(r.header.received_ms, w["received_ms"].as_u64().unwrap());
                let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(r.payload()));
                assert_eq!(
                    digest,
                    w["payload_sha256"].as_str().unwrap(),
                    "seq {}",
                    r.seq
                );
            }
        }
        for (name, seq) in expected["cursors"].as_object().unwrap() {
            let (destination, signal) = name.split_once('/').unwrap();
            let signal = Signal::ALL
                .into_iter()
                .find(|s| s.name() == signal)
                .unwrap();
            assert_eq!(
                spool.cursor(destination, signal),
                seq.as_u64().unwrap(),
                "{name}"
            );
        }
        let usage = spool.usage();
        assert_eq!(usage.dead_letter_records, 1);
        let letters = spool.dead_letters().unwrap();
        let want = &expected["dead_letters"]["entries"][0];
        assert_eq!(letters.len(), 1, "{letters:?}");
        let letter = &letters[0].info;
        assert_eq!(
            serde_json::to_value(letter).unwrap()["reason"],
            want["description"]["reason"]
        );
        assert_eq!(
            (letter.destination.as_str(), letter.signal()),
            ("a", Some(Signal::Logs))
        );
        assert_eq!(letter.seqs, [3, 3]);
        assert_eq!(letter.items, 4);
        assert_eq!(letter.status, Some(400), "read from the reason");
        let (_, payload) = spool.dead_letter_payload(letters[0].id).unwrap().unwrap();
        assert_eq!(
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&payload)),
            want["payload_sha256"].as_str().unwrap()
        );
        assert_eq!(spool.state_tree("p", "prw").unwrap().len(), 5);
        assert!(spool.append(Signal::Traces, 1, b"t").await.unwrap() > 8);
    }

    /// A failed sync fails the appends waiting on it (nothing acknowledged, nothing readable),
    /// the segment takes no more appends, and the stream goes on in a new one.
    #[tokio::test]
    async fn a_failed_sync_fails_its_appends_and_the_stream_goes_on_in_a_new_segment() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), limits(), routes(&["a"])).unwrap();
        let first = spool.append(Signal::Traces, 1, b"before").await.unwrap();
        spool.inner.streams[0].fail_next_sync();
        let failed = spool.append(Signal::Traces, 1, b"lost").await;
        assert!(
            matches!(&failed, Err(AppendError::Storage(m)) if m.contains("syncing")),
            "{failed:?}"
        );
        assert!(!spool.healthy(), "a poisoned segment is reported");
        let read = spool.read(Signal::Traces, 0, u64::MAX, u64::MAX).unwrap();
        assert_eq!(read.iter().map(|r| r.seq).collect::<Vec<_>>(), [first]);
        let after = spool.append(Signal::Traces, 1, b"after").await.unwrap();
        assert!(spool.healthy());
        assert_eq!(
            segment_files(dir.path(), "traces").len(),
            2,
            "a new segment"
        );
        let read = spool.read(Signal::Traces, 0, u64::MAX, u64::MAX).unwrap();
        let payloads: Vec<&[u8]> = read.iter().map(|r| r.payload()).collect();
        assert_eq!(payloads, [&b"before"[..], b"after"]);
        assert_eq!(read[1].seq, after);
        drop(spool);
        let spool = Spool::open(dir.path(), limits(), routes(&["a"])).unwrap();
        assert_eq!(
            seqs(&spool, Signal::Traces),
            [first, after],
            "after a restart too"
        );
    }

    /// A segment in the middle deleted by hand: the segment before it names it in its seal, so
    /// the start reports it (counted with the damaged records), and the rest is delivered.
    #[tokio::test]
    async fn a_segment_deleted_by_hand_is_reported_and_the_rest_is_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits {
            max_bytes: 64 << 20, // 2 MiB segments
            ..limits()
        };
        let payload = vec![5u8; 30_000];
        {
            let spool = Spool::open(dir.path(), limits.clone(), routes(&["a"])).unwrap();
            for _ in 0..200 {
                spool.append(Signal::Traces, 1, &payload).await.unwrap();
            }
        }
        let segments = segment_files(dir.path(), "traces");
        assert!(segments.len() >= 3, "{segments:?}");
        std::fs::remove_file(&segments[1]).unwrap();
        let spool = Spool::open(dir.path(), limits, routes(&["a"])).unwrap();
        assert_eq!(spool.usage().dropped.unreadable_records, 1);
        let held = seqs(&spool, Signal::Traces);
        assert!(held.len() < 200 && held.len() > 100, "{}", held.len());
        assert_eq!(held.first(), Some(&1));
        assert_eq!(held.last(), Some(&200));
    }
}
