//! The spool: durable, bounded storage between the receiver and the export workers.
//!
//! On-disk layout (one sled `Db` in `spool.dir`, opened once; sled's file lock is the
//! single-instance guard):
//! - `traces`, `metrics`, `logs`: key = big-endian `u64` sequence number, value = a
//!   [`record`] (header + canonical OTLP protobuf). Sequence numbers are global across the
//!   three trees and only grow, also across restarts (they resume above every key and cursor).
//! - `cursors`: `"<destination>/<signal>"` → the last sequence that destination acknowledged.
//! - `dead_letter`: records an upstream refused as malformed (JSON description, newline, payload).
//! - `meta`: `format` → the layout version.
//! - `state/<name>`: opaque state a destination keeps ([`Spool::state_tree`]; today
//!   `state/prw/<destination>`, Prometheus remote write's delta totals). Not counted in
//!   `max_bytes`.
//!
//! The directory and everything sled puts in it are owner-only (0700 / 0600): set at open, and
//! re-applied by the commit thread after writes, since sled keeps creating files (blobs for
//! large values, snapshots) with the process umask.
//!
//! Invariants:
//! - [`Spool::append`] returns only after the record is fsynced (`commit.rs` shares one flush
//!   among concurrent appenders). Callers acknowledge their client only after it returns.
//! - A record is deleted only when every destination routing its signal has a cursor at or past
//!   it, or when it is expired (`max_age`) or evicted for space (`drop_oldest`) — both counted.
//!   A signal no destination routes is held (bounded by the caps) until one does.
//! - Logical bytes (headers + payloads) stay under `max_bytes`; sled's on-disk size, which never
//!   shrinks by itself, is checked against [`Limits::disk_cap`] too.
//!
//! The spool knows bytes, sequence numbers and cursors. It does not parse OTLP or speak HTTP.

mod commit;
pub mod record;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{watch, Notify};

use crate::config::{SpoolConfig, WhenFull};
use crate::otlp::Signal;
use commit::{DiskSync, GroupCommit};
pub use record::RecordHeader;

const LAYOUT_VERSION: &[u8] = b"1";
/// sled's page cache: small, because the spool is mostly written once and read once.
const CACHE_CAPACITY: u64 = 16 << 20;
/// Values above this may go to sled's separate blob files (sled inlines up to ~128 KiB with its
/// default segment size); the commit thread then looks for new blob files to sync.
const LARGE_VALUE: u64 = 64 << 10;
/// How often the on-disk size is re-read (it costs a few syscalls).
const DISK_CHECK_EVERY: Duration = Duration::from_secs(1);

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

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot create spool directory {dir}: {source}")]
    CreateDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "spool directory {0} is in use by another otlp-spool process (its lock is held); stop \
         that agent, or give this one its own spool.dir"
    )]
    Locked(PathBuf),
    #[error("cannot open spool at {dir}: {message}")]
    Storage { dir: PathBuf, message: String },
    #[error(
        "spool at {dir} has layout version {found}, this build reads version 1; it was written \
         by a newer otlp-spool: upgrade, or move the directory aside"
    )]
    Layout { dir: PathBuf, found: String },
}

#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error("spool is full ({used} of {cap} bytes) and spool.when_full = \"reject\"")]
    Full { used: u64, cap: u64 },
    #[error("request of {size} bytes is larger than the whole spool (spool.max_bytes = {cap})")]
    TooLarge { size: u64, cap: u64 },
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
    cursors: HashMap<String, u64>,
    dead_letter: TreeUsage,
    dropped: Dropped,
    disk_bytes: u64,
    disk_checked: Option<Instant>,
}

struct Inner {
    dir: PathBuf,
    db: sled::Db,
    records: [sled::Tree; 3],
    cursors: sled::Tree,
    dead_letter: sled::Tree,
    commit: GroupCommit,
    limits: Limits,
    routes: Routes,
    next_seq: AtomicU64,
    state: Mutex<State>,
    /// Per signal: the newest durable sequence, which export workers wait on.
    durable: [watch::Sender<u64>; 3],
    appended: Notify,
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
    /// forgotten, so a destination added later starts from the oldest held record.
    pub fn open(dir: &Path, limits: Limits, routes: Routes) -> Result<Spool, OpenError> {
        create_private_dir(dir)?;
        let db = open_db(dir)?;
        let storage = |e: sled::Error| OpenError::Storage {
            dir: dir.to_path_buf(),
            message: e.to_string(),
        };
        let meta = db.open_tree("meta").map_err(storage)?;
        match meta.get("format").map_err(storage)? {
            None => {
                meta.insert("format", LAYOUT_VERSION).map_err(storage)?;
            }
            Some(v) if v.as_ref() == LAYOUT_VERSION => {}
            Some(v) => {
                return Err(OpenError::Layout {
                    dir: dir.to_path_buf(),
                    found: String::from_utf8_lossy(&v).into_owned(),
                })
            }
        }
        let records = Signal::ALL.map(|s| db.open_tree(s.name()));
        let [t, m, l] = records;
        let records = [
            t.map_err(storage)?,
            m.map_err(storage)?,
            l.map_err(storage)?,
        ];
        let cursors = db.open_tree("cursors").map_err(storage)?;
        let dead_letter = db.open_tree("dead_letter").map_err(storage)?;

        let mut state = State::default();
        let mut max_seq = 0;
        for (i, tree) in records.iter().enumerate() {
            for entry in tree.iter() {
                let (key, value) = entry.map_err(storage)?;
                state.trees[i].records += 1;
                state.trees[i].bytes += value.len() as u64;
                max_seq = max_seq.max(seq_of(&key));
            }
        }
        for entry in dead_letter.iter() {
            let (_, value) = entry.map_err(storage)?;
            state.dead_letter.records += 1;
            state.dead_letter.bytes += value.len() as u64;
        }
        let wanted: Vec<String> = Signal::ALL
            .iter()
            .flat_map(|s| routes[s.index()].iter().map(move |d| cursor_key(d, *s)))
            .collect();
        for entry in cursors.iter() {
            let (key, value) = entry.map_err(storage)?;
            let name = String::from_utf8_lossy(&key).into_owned();
            let seq = seq_of(&value);
            max_seq = max_seq.max(seq);
            if wanted.contains(&name) {
                state.cursors.insert(name, seq);
            } else {
                cursors.remove(key).map_err(storage)?;
                tracing::info!(cursor = %name, "forgot the cursor of a destination no longer configured");
            }
        }
        state.disk_bytes = db.size_on_disk().unwrap_or(0);
        set_private_files(dir);

        // sled creates files as it goes (blobs for large values, snapshots): keep them private.
        let private = dir.to_path_buf();
        let disk = DiskSync::open(dir).map_err(|e| OpenError::Storage {
            dir: dir.to_path_buf(),
            message: format!("syncing the spool's files: {e}"),
        })?;
        let commit = GroupCommit::start(
            db.clone(),
            disk,
            Box::new(move || set_private_files(&private)),
        );
        let durable = Signal::ALL.map(|s| {
            let last = records[s.index()].last().ok().flatten();
            watch::channel(last.map_or(0, |(k, _)| seq_of(&k))).0
        });
        let spool = Spool {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                db,
                records,
                cursors,
                dead_letter,
                commit,
                limits,
                routes,
                next_seq: AtomicU64::new(max_seq + 1),
                state: Mutex::new(state),
                durable,
                appended: Notify::new(),
            }),
        };
        // Make forgotten cursors and the layout marker durable before anything else happens.
        spool.inner.commit.flush_soon();
        Ok(spool)
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// A tree for a destination's own state, named `state/<name>` (used by
    /// `prometheus_remote_write` for its delta totals). The spool neither reads nor caps it;
    /// its writes become durable with the next group commit (an `ack`'s, at the latest).
    pub fn state_tree(&self, name: &str) -> Result<sled::Tree, String> {
        self.inner
            .db
            .open_tree(format!("state/{name}"))
            .map_err(|e| format!("opening spool tree state/{name}: {e}"))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().expect("spool state lock poisoned")
    }

    /// Stores one request's payload and returns its sequence number once it is durable.
    pub async fn append(
        &self,
        signal: Signal,
        items: u32,
        payload: &[u8],
    ) -> Result<u64, AppendError> {
        let header = RecordHeader {
            items,
            received_ms: now_ms(),
        };
        let value = header.encode(payload);
        let size = value.len() as u64;
        if size > LARGE_VALUE {
            self.inner.commit.note_large_value();
        }
        let seq = {
            let mut state = self.state();
            self.make_room(&mut state, size)?;
            let seq = self.inner.next_seq.fetch_add(1, Ordering::SeqCst);
            self.inner.records[signal.index()]
                .insert(seq.to_be_bytes(), value)
                .map_err(|e| AppendError::Storage(e.to_string()))?;
            let tree = &mut state.trees[signal.index()];
            tree.records += 1;
            tree.bytes += size;
            seq
        };
        self.inner
            .commit
            .wait()
            .await
            .map_err(AppendError::Storage)?;
        self.inner.durable[signal.index()].send_if_modified(|newest| {
            let advanced = seq > *newest;
            *newest = (*newest).max(seq);
            advanced
        });
        self.inner.appended.notify_one();
        Ok(seq)
    }

    /// Applies the caps before an append of `size` bytes, evicting under `drop_oldest`.
    fn make_room(&self, state: &mut State, size: u64) -> Result<(), AppendError> {
        let limits = &self.inner.limits;
        if size > limits.max_bytes {
            return Err(AppendError::TooLarge {
                size,
                cap: limits.max_bytes,
            });
        }
        let checked_recently = state
            .disk_checked
            .is_some_and(|at| at.elapsed() < DISK_CHECK_EVERY);
        if !checked_recently {
            state.disk_bytes = self.inner.db.size_on_disk().unwrap_or(state.disk_bytes);
            state.disk_checked = Some(Instant::now());
        }
        let used = |s: &State| s.trees.iter().map(|t| t.bytes).sum::<u64>();
        // Over the on-disk cap, free half the logical cap so sled can reuse its segments.
        let target = if state.disk_bytes > limits.disk_cap() {
            tracing::warn!(
                disk_bytes = state.disk_bytes,
                disk_cap = limits.disk_cap(),
                "spool files are over their on-disk cap"
            );
            limits.max_bytes / 2
        } else {
            limits.max_bytes
        };
        if used(state) + size <= target {
            return Ok(());
        }
        if limits.when_full == WhenFull::Reject {
            return Err(AppendError::Full {
                used: used(state),
                cap: limits.max_bytes,
            });
        }
        while used(state) + size > target {
            let oldest = self
                .inner
                .records
                .iter()
                .enumerate()
                .filter_map(|(i, t)| t.first().ok().flatten().map(|(k, _)| (seq_of(&k), i)))
                .min();
            let Some((seq, i)) = oldest else { break };
            if let Some(header) = self.remove(state, i, seq).map_err(AppendError::Storage)? {
                state.dropped.full_records += 1;
                state.dropped.full_items += u64::from(header.items);
            }
        }
        // Even an empty spool may be over the disk cap; sled reuses the space, so go ahead.
        Ok(())
    }

    /// Removes one record, keeping the accounting; `None` if it was already gone.
    fn remove(
        &self,
        state: &mut State,
        tree: usize,
        seq: u64,
    ) -> Result<Option<RecordHeader>, String> {
        let removed = self.inner.records[tree]
            .remove(seq.to_be_bytes())
            .map_err(|e| e.to_string())?;
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

    /// The last sequence `destination` acknowledged for `signal` (0: none yet).
    pub fn cursor(&self, destination: &str, signal: Signal) -> u64 {
        self.state()
            .cursors
            .get(&cursor_key(destination, signal))
            .copied()
            .unwrap_or(0)
    }

    /// Records of `signal` after sequence `after`: at least one if any exist, then more while
    /// they fit in `max_bytes` payload bytes and `max_items` items.
    pub fn read(
        &self,
        signal: Signal,
        after: u64,
        max_bytes: u64,
        max_items: u64,
    ) -> Result<Vec<Record>, String> {
        let mut out = Vec::new();
        let (mut bytes, mut items) = (0u64, 0u64);
        for entry in self.inner.records[signal.index()].range((after + 1).to_be_bytes()..) {
            let (key, value) =
                entry.map_err(|e| format!("reading the {} spool: {e}", signal.name()))?;
            let header = match RecordHeader::decode(&value) {
                Ok((h, _)) => h,
                Err(e) => {
                    tracing::error!(seq = seq_of(&key), error = %e, "skipping an unreadable spool record");
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
        Ok(out)
    }

    /// Wakes when new durable records of `signal` exist; the value is the newest sequence.
    pub fn subscribe(&self, signal: Signal) -> watch::Receiver<u64> {
        self.inner.durable[signal.index()].subscribe()
    }

    /// Records that `destination` has everything of `signal` up to `seq`, and deletes what every
    /// routed destination now has.
    pub fn ack(&self, destination: &str, signal: Signal, seq: u64) -> Result<(), String> {
        let key = cursor_key(destination, signal);
        self.inner
            .cursors
            .insert(key.as_bytes(), &seq.to_be_bytes())
            .map_err(|e| format!("saving cursor {key}: {e}"))?;
        let mut state = self.state();
        state.cursors.insert(key, seq);
        let floor = self.inner.routes[signal.index()]
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
        let tree = &self.inner.records[signal.index()];
        while let Some((k, _)) = tree.first().map_err(|e| e.to_string())? {
            let first = seq_of(&k);
            if first > floor {
                break;
            }
            self.remove(&mut state, signal.index(), first)?;
        }
        drop(state);
        self.inner.commit.flush_soon();
        Ok(())
    }

    /// Keeps data that `destination` refused as malformed, with the reason, in the capped
    /// dead-letter tree (the oldest dead letters go first once it holds `max_bytes / 16`).
    pub fn dead_letter(
        &self,
        destination: &str,
        signal: Signal,
        letter: DeadLetter<'_>,
    ) -> Result<(), String> {
        let cap = (self.inner.limits.max_bytes / 16).max(1 << 20);
        let tree = &self.inner.dead_letter;
        let description = serde_json::json!({
            "destination": destination,
            "signal": signal.name(),
            "seqs": [letter.seqs.start(), letter.seqs.end()],
            "items": letter.items,
            "dead_lettered_ms": now_ms(),
            "reason": letter.reason,
        });
        let mut value = serde_json::to_vec(&description).expect("json");
        value.push(b'\n');
        value.extend_from_slice(letter.payload);
        let mut state = self.state();
        let key = tree
            .last()
            .map_err(|e| e.to_string())?
            .map_or(1, |(k, _)| seq_of(&k) + 1);
        state.dead_letter.records += 1;
        state.dead_letter.bytes += value.len() as u64;
        tree.insert(key.to_be_bytes(), value)
            .map_err(|e| e.to_string())?;
        state.dropped.dead_letter_records += 1;
        state.dropped.dead_letter_items += letter.items;
        while state.dead_letter.bytes > cap {
            let Some((_, v)) = tree.pop_min().map_err(|e| e.to_string())? else {
                break;
            };
            state.dead_letter.records -= 1;
            state.dead_letter.bytes -= v.len() as u64;
        }
        drop(state);
        self.inner.commit.flush_soon();
        Ok(())
    }

    /// What `destination` still has to send of `signal`. Cheap when the destination is the
    /// slowest reader of the signal (the usual case); otherwise it scans the records it is ahead by.
    pub fn pending(&self, destination: &str, signal: Signal) -> Pending {
        let cursor = self.cursor(destination, signal);
        let total = self.state().trees[signal.index()];
        let tree = &self.inner.records[signal.index()];
        let (mut done_records, mut done_bytes) = (0, 0);
        for (_, value) in tree.range(..=cursor.to_be_bytes()).flatten() {
            done_records += 1;
            done_bytes += value.len() as u64;
        }
        let oldest_ms = tree
            .range((cursor + 1).to_be_bytes()..)
            .flatten()
            .next()
            .and_then(|(_, v)| RecordHeader::decode(&v).ok().map(|(h, _)| h.received_ms));
        Pending {
            records: total.records.saturating_sub(done_records),
            bytes: total.bytes.saturating_sub(done_bytes),
            oldest_ms,
        }
    }

    pub fn usage(&self) -> Usage {
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
        }
    }

    /// Whether the last flush succeeded (for `/healthz`).
    pub fn healthy(&self) -> bool {
        self.inner.commit.healthy()
    }

    /// Deletes records older than `max_age`, sleeping until the oldest one is due; with an empty
    /// spool it sleeps until an append. Runs for the life of the agent.
    pub async fn expire_forever(self) {
        let max_age_ms = self.inner.limits.max_age.as_millis() as u64;
        loop {
            let oldest = self
                .inner
                .records
                .iter()
                .filter_map(|t| t.first().ok().flatten())
                .filter_map(|(_, v)| RecordHeader::decode(&v).ok().map(|(h, _)| h.received_ms))
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
        let mut state = self.state();
        let (mut records, mut items) = (0, 0);
        for (i, tree) in self.inner.records.iter().enumerate() {
            while let Some((k, v)) = tree.first().map_err(|e| e.to_string())? {
                let received = RecordHeader::decode(&v)
                    .map(|(h, _)| h.received_ms)
                    .unwrap_or(0);
                if received > cutoff_ms {
                    break;
                }
                if let Some(h) = self.remove(&mut state, i, seq_of(&k))? {
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
            self.inner.commit.flush_soon();
        }
        Ok(())
    }
}

/// How long [`Spool::open`] waits for another holder of the directory to let go: a restarting
/// agent's predecessor may still be exiting, and sled's own threads release their handles a
/// moment after the `Db` is dropped.
const LOCK_WAIT: Duration = Duration::from_secs(1);

fn open_db(dir: &Path) -> Result<sled::Db, OpenError> {
    let started = Instant::now();
    loop {
        let opened = sled::Config::new()
            .path(dir)
            .cache_capacity(CACHE_CAPACITY)
            .flush_every_ms(None)
            .open()
            .map_err(|e| open_error(dir, e));
        match opened {
            Err(OpenError::Locked(_)) if started.elapsed() < LOCK_WAIT => {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

fn open_error(dir: &Path, e: sled::Error) -> OpenError {
    match &e {
        sled::Error::Io(io)
            if io.kind() == std::io::ErrorKind::WouldBlock || io.raw_os_error() == Some(11) =>
        {
            OpenError::Locked(dir.to_path_buf())
        }
        sled::Error::Io(io) if io.to_string().contains("lock") => {
            OpenError::Locked(dir.to_path_buf())
        }
        _ => OpenError::Storage {
            dir: dir.to_path_buf(),
            message: e.to_string(),
        },
    }
}

/// The spool holds other people's prompts and telemetry: owner-only.
fn create_private_dir(dir: &Path) -> Result<(), OpenError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let err = |source| OpenError::CreateDir {
        dir: dir.to_path_buf(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(err)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)
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
        assert_eq!(spool.append(Signal::Traces, 1, b"t").await.unwrap(), 5);
        assert_eq!(*spool.subscribe(Signal::Traces).borrow(), 5);
        drop(spool);

        // Every record gone: the cursor alone keeps the sequence from going back.
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
        assert_eq!(spool.append(Signal::Traces, 1, b"t").await.unwrap(), 3);
        let read = spool.read(Signal::Traces, 2, u64::MAX, u64::MAX).unwrap();
        assert_eq!(read.iter().map(|r| r.seq).collect::<Vec<_>>(), [3]);
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
        assert_eq!(spool.append(Signal::Traces, 1, b"t").await.unwrap(), 3);
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
}
