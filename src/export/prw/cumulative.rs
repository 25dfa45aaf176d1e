//! The state of one `prometheus_remote_write` destination: running totals of DELTA sums and
//! histograms, CUMULATIVE series merged by `drop_labels`, and merged gauges. Remote write
//! carries cumulative counters only, Claude Code exports every metric as DELTA, and a fleet
//! wants series summed across sessions.
//!
//! The accumulation rule:
//! - **A point is applied once, by where it is in the spool, whatever its time.** The state
//!   keeps the [`Position`] (record sequence number, index of the resource in the record) of
//!   the last resource applied, committed with the totals in one atomic write. A resource at
//!   or before it belongs to a batch sent again after a crash: its points are ignored
//!   ([`Ignored::already_applied`]). Every other point is added, even one older than its
//!   series (another session's, or an SDK's late retry): time decides nothing.
//! - **A sample never goes back in time.** A series' sample is at the point's time if that is a
//!   later millisecond than its last sample, else a millisecond after the last one
//!   (Prometheus refuses a whole request with an out-of-order sample, or a second value at one
//!   timestamp).
//! - **Series are summed over the labels `drop_labels` names.** An original series (every
//!   label) goes into the aggregated one (labels dropped). DELTA points add directly.
//!   CUMULATIVE points are first turned into deltas per original series: the state remembers
//!   each original's last value; the delta is the difference, or the whole value for an
//!   original not seen before, after a drop in value or a new start time (a reset: the process
//!   restarted and counts from zero). Histograms likewise, bucket by bucket; exponential ones at
//!   the coarser scale.
//! - **A DELTA interval counts once per original series.** Each original DELTA series remembers
//!   the (start, time) of its last [`RECENT_INTERVALS`] points; the same interval again is a
//!   request a client re-sent after the agent had accepted it ([`Ignored::duplicate_interval`]).
//!   Two sessions sharing labels never send the same nanosecond interval.
//! - **A histogram whose bucket bounds change starts the series over**, which Prometheus sees
//!   as a counter reset: the honest reading of a changed layout.
//! - **Gauges are not summed.** With `drop_labels_gauges = "last"` a merged gauge holds the value
//!   of its newest point (a point not in a later millisecond is ignored,
//!   [`Ignored::older_than_series`]); with `"keep"` it keeps its labels and never comes here.
//!
//! Transactions: [`Txn`] reads through to the committed state and records its changes apart, so
//! an attempt that fails (retry, 401) leaves the state as it was and the same batch can be
//! translated again. [`Cumulative::commit`] applies the changes once the upstream accepted (or
//! refused as malformed) the batch, and writes them, the applied position with them, to the
//! spool's state tree in one batch *before* the worker moves its cursor: a crash between the
//! two re-sends a batch that the position recognises, never a double count; a crash before the
//! write re-sends it against the old state, which yields the same samples again. Entries
//! written become durable with the spool's next group commit (the cursor's, at the latest: sled
//! persists a prefix of its log).
//!
//! The tree holds one entry per aggregated series (its key: metric name and labels), one per
//! original series (prefix `\x01o\x00`) and the applied position (`\x01applied`). A tree
//! written before positions were kept (series entries only) loads as it is: until its first
//! commit writes a position, a point at or before a loaded series' last time counts as applied,
//! the rule that format was written under.
//!
//! Memory is bounded: an aggregated or original series with no point for `stale_after` of
//! *data* time (the newest point time seen, not the wall clock, so a weekend's backlog draining
//! does not evict everything) is dropped from memory and the tree; its next point starts it
//! over (an original CUMULATIVE series then counts its whole value again).
//!
//! Owns the state tree it is given (one per destination); touches no other part of the spool. It
//! looks the tree up on each use ([`StateTree`]) and keeps no handle: a handle would keep the
//! spool's database open, and the spool must be able to close and reopen it after a storage
//! failure. It reads the tree at its first use, not when built: a config reload builds the new
//! destination while the old one's workers may still deliver (and commit) a batch.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One series' running total.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Series {
    pub start_ns: u64,
    pub last_ns: u64,
    pub value: Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Value {
    Sum(#[serde(with = "bits")] f64),
    Histogram {
        #[serde(with = "bits_vec")]
        bounds: Vec<f64>,
        counts: Vec<u64>,
        #[serde(with = "bits")]
        sum: f64,
        count: u64,
    },
    Exponential(Exponential),
}

/// An exponential histogram's buckets, kept in its own form so deltas of different scales and
/// offsets add up: both are brought to the coarser scale (bucket index `i` at scale `s` is
/// bucket `i >> (s - s')` at scale `s'`), then added index by index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Exponential {
    pub scale: i32,
    pub zero_count: u64,
    #[serde(with = "bits")]
    pub zero_threshold: f64,
    pub positive: Buckets,
    pub negative: Buckets,
    #[serde(with = "bits")]
    pub sum: f64,
    pub count: u64,
}

/// Floats are saved as their bits: a running total read back after a restart is the very same
/// number (serde_json's default float parsing may be off by one unit in the last place).
mod bits {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(v.to_bits())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        u64::deserialize(d).map(f64::from_bits)
    }
}

mod bits_vec {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[f64], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|f| f.to_bits()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
        Vec::<u64>::deserialize(d).map(|v| v.into_iter().map(f64::from_bits).collect())
    }
}

/// Dense bucket counts from `offset` on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Buckets {
    pub offset: i64,
    pub counts: Vec<u64>,
}

impl Buckets {
    fn downscale(&self, by: i32) -> Buckets {
        if by <= 0 || self.counts.is_empty() {
            return self.clone();
        }
        let first = self.offset >> by;
        let last = (self.offset + self.counts.len() as i64 - 1) >> by;
        let mut counts = vec![0; (last - first + 1) as usize];
        for (i, c) in self.counts.iter().enumerate() {
            counts[(((self.offset + i as i64) >> by) - first) as usize] += c;
        }
        Buckets {
            offset: first,
            counts,
        }
    }

    fn add(&self, other: &Buckets) -> Buckets {
        if self.counts.is_empty() {
            return other.clone();
        }
        if other.counts.is_empty() {
            return self.clone();
        }
        let first = self.offset.min(other.offset);
        let end =
            (self.offset + self.counts.len() as i64).max(other.offset + other.counts.len() as i64);
        let mut counts = vec![0; (end - first) as usize];
        for b in [self, other] {
            for (i, c) in b.counts.iter().enumerate() {
                counts[(b.offset + i as i64 - first) as usize] += c;
            }
        }
        Buckets {
            offset: first,
            counts,
        }
    }
}

impl Exponential {
    fn add(&mut self, other: &Exponential) {
        let scale = self.scale.min(other.scale);
        let (a, b) = (self.scale - scale, other.scale - scale);
        self.positive = self.positive.downscale(a).add(&other.positive.downscale(b));
        self.negative = self.negative.downscale(a).add(&other.negative.downscale(b));
        self.scale = scale;
        self.zero_count += other.zero_count;
        self.zero_threshold = self.zero_threshold.max(other.zero_threshold);
        self.sum += other.sum;
        self.count += other.count;
    }
}

impl Value {
    fn add(&mut self, delta: &Value) -> bool {
        match (self, delta) {
            (Value::Sum(total), Value::Sum(d)) => {
                *total += d;
                true
            }
            (
                Value::Histogram {
                    bounds,
                    counts,
                    sum,
                    count,
                },
                Value::Histogram {
                    bounds: b,
                    counts: c,
                    sum: s,
                    count: n,
                },
            ) if bounds == b && counts.len() == c.len() => {
                for (total, d) in counts.iter_mut().zip(c) {
                    *total += d;
                }
                *sum += s;
                *count += n;
                true
            }
            (Value::Exponential(total), Value::Exponential(d)) => {
                total.add(d);
                true
            }
            _ => false,
        }
    }
}

impl Value {
    /// `self - previous` for one original CUMULATIVE series: the delta since its last point, or
    /// `None` when it went down or changed layout (a reset: the new value is the delta).
    fn minus(&self, previous: &Value) -> Option<Value> {
        match (self, previous) {
            (Value::Sum(v), Value::Sum(p)) => (v >= p).then(|| Value::Sum(v - p)),
            (
                Value::Histogram {
                    bounds,
                    counts,
                    sum,
                    count,
                },
                Value::Histogram {
                    bounds: b,
                    counts: c,
                    sum: s,
                    count: n,
                },
            ) if bounds == b && counts.len() == c.len() && count >= n => {
                let counts = counts
                    .iter()
                    .zip(c)
                    .map(|(v, p)| v.checked_sub(*p))
                    .collect::<Option<Vec<u64>>>()?;
                Some(Value::Histogram {
                    bounds: bounds.clone(),
                    counts,
                    sum: sum - s,
                    count: count - n,
                })
            }
            (Value::Exponential(v), Value::Exponential(p)) if v.count >= p.count => {
                let scale = v.scale.min(p.scale);
                let minus = |a: &Buckets, b: &Buckets| -> Option<Buckets> {
                    let (a, b) = (a.downscale(v.scale - scale), b.downscale(p.scale - scale));
                    let mut out = a.clone();
                    for (i, c) in b.counts.iter().enumerate() {
                        let index = b.offset + i as i64 - a.offset;
                        let slot = usize::try_from(index)
                            .ok()
                            .and_then(|i| out.counts.get_mut(i));
                        match slot {
                            Some(slot) => *slot = slot.checked_sub(*c)?,
                            None if *c == 0 => {}
                            None => return None,
                        }
                    }
                    Some(out)
                };
                Some(Value::Exponential(Exponential {
                    scale,
                    zero_count: v.zero_count.checked_sub(p.zero_count)?,
                    zero_threshold: v.zero_threshold,
                    positive: minus(&v.positive, &p.positive)?,
                    negative: minus(&v.negative, &p.negative)?,
                    sum: v.sum - p.sum,
                    count: v.count - p.count,
                }))
            }
            _ => None,
        }
    }
}

const MS: u64 = 1_000_000;

/// The time of a series' next sample, given its last one and the point's: the point's time
/// when it is in a later millisecond, else the millisecond after the last sample. Samples
/// never go back in time (Prometheus refuses them: out of order), nor repeat a timestamp with
/// another value (refused too: a duplicate sample).
fn after(last_ns: u64, time_ns: u64) -> u64 {
    if time_ns / MS > last_ns / MS {
        time_ns
    } else {
        (last_ns / MS + 1) * MS
    }
}

/// Where a resource of a batch lies in the spool: its record's sequence number and its index
/// among the record's resources. Positions only grow along a signal's stream. An index, not a
/// byte offset: redaction re-encodes a batch but keeps every resource in its order, so a
/// resource has the same position whatever rules were in force when it was sent (they may
/// change on a reload between the state's commit and the cursor's).
pub type Position = (u64, u64);

/// What the state remembers of one original series (labels before `drop_labels`): the
/// aggregated series it goes into, its last point time, for a CUMULATIVE series its last
/// value (to turn the next one into a delta), and for a DELTA series the intervals of its last
/// [`RECENT_INTERVALS`] points (to know one sent again).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Original {
    pub into: String,
    pub start_ns: u64,
    pub last_ns: u64,
    pub value: Option<Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recent: Vec<(u64, u64)>,
}

/// How many DELTA intervals an original series remembers: a client retries its latest
/// requests, not old ones.
pub const RECENT_INTERVALS: usize = 8;

/// Why points produced no sample (counted per destination, shown by `/status`).
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Ignored {
    /// In a record at or before the applied position: a batch sent again.
    pub already_applied: u64,
    /// A DELTA point whose original series had a point of the very same interval (start and
    /// time, to the nanosecond): a client sent a request again that the agent had accepted.
    pub duplicate_interval: u64,
    /// A CUMULATIVE point older than its original series' last point, or a merged gauge point
    /// older than its merged series' newest.
    pub older_than_series: u64,
    /// A `NoRecordedValue` point of a merged series: the other original series still report.
    pub stale_marker_of_merged_series: u64,
}

/// The committed state.
pub struct State {
    series: HashMap<String, Series>,
    originals: HashMap<String, Original>,
    /// The position of the last resource whose points were applied; `None` before the first.
    applied: Option<Position>,
    /// Series read from a tree written before positions were kept (no mark): until the first
    /// commit their points at or before `last_ns` count as applied, the rule of that format.
    legacy: bool,
    /// The newest point time seen (ns): the clock `stale_after` is measured on.
    watermark_ns: u64,
    last_sweep_ns: u64,
}

impl State {
    /// Original series held beyond the series they are summed into (`drop_labels`).
    pub fn aggregated_away(&self) -> usize {
        let into: std::collections::HashSet<&str> =
            self.originals.values().map(|o| o.into.as_str()).collect();
        self.originals.len() - into.len()
    }
}

/// Tree keys. A series key starts with its metric name (`[a-zA-Z0-9_:]`), so the other
/// entries start with a byte no series key can start with.
const APPLIED_KEY: &[u8] = b"\x01applied";
const ORIGINAL_PREFIX: &[u8] = b"\x01o\x00";

/// Finds the destination's state tree when it is used (the spool's, or a test's).
pub type StateTree = Box<dyn Fn() -> Result<sled::Tree, String> + Send + Sync>;

pub struct Cumulative {
    /// Loaded from `tree` at the first use.
    state: OnceLock<Mutex<State>>,
    tree: Option<StateTree>,
    stale_after_ns: u64,
}

/// The default of `stale_after`.
pub const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(3600);

impl Cumulative {
    /// The totals kept in `tree` (in memory only without one), read at the first use.
    pub fn new(tree: Option<StateTree>, stale_after: Duration) -> Cumulative {
        Cumulative {
            state: OnceLock::new(),
            tree,
            stale_after_ns: stale_after.as_nanos().min(u64::MAX as u128) as u64,
        }
    }

    /// The committed state; the first call reads every entry held in the tree.
    pub fn lock(&self) -> Result<MutexGuard<'_, State>, String> {
        let state = match self.state.get() {
            Some(state) => state,
            None => {
                let loaded = self.load()?;
                self.state.get_or_init(|| Mutex::new(loaded))
            }
        };
        Ok(state.lock().expect("delta state lock poisoned"))
    }

    fn load(&self) -> Result<State, String> {
        let mut state = State {
            series: HashMap::new(),
            originals: HashMap::new(),
            applied: None,
            legacy: false,
            watermark_ns: 0,
            last_sweep_ns: 0,
        };
        let Some(tree) = &self.tree else {
            return Ok(state);
        };
        for entry in tree()?.iter() {
            let (k, v) = entry.map_err(|e| format!("reading delta state: {e}"))?;
            let read = if *k == *APPLIED_KEY {
                serde_json::from_slice(&v).map(|p| state.applied = Some(p))
            } else if let Some(key) = k.strip_prefix(ORIGINAL_PREFIX) {
                serde_json::from_slice::<Original>(&v).map(|o| {
                    state.watermark_ns = state.watermark_ns.max(o.last_ns);
                    let key = String::from_utf8_lossy(key).into_owned();
                    state.originals.insert(key, o);
                })
            } else {
                serde_json::from_slice::<Series>(&v).map(|s| {
                    state.watermark_ns = state.watermark_ns.max(s.last_ns);
                    let key = String::from_utf8_lossy(&k).into_owned();
                    state.series.insert(key, s);
                })
            };
            if let Err(e) = read {
                let key = String::from_utf8_lossy(&k);
                tracing::warn!(entry = %key, error = %e, "unreadable delta state entry; its series starts over");
            }
        }
        state.legacy = state.applied.is_none() && !state.series.is_empty();
        state.last_sweep_ns = state.watermark_ns;
        Ok(state)
    }

    /// Applies a transaction's changes (made on [`Self::lock`]'s state), evicts idle series,
    /// and writes it all to the tree in one atomic batch: the totals and the applied position
    /// are never saved one without the other.
    pub fn commit(&self, changes: Changes) {
        let mut state = match self.lock() {
            Ok(state) => state,
            Err(e) => unreachable!("a transaction's state was loaded: {e}"),
        };
        let mut batch = sled::Batch::default();
        for (key, series) in changes.series {
            state.watermark_ns = state.watermark_ns.max(series.last_ns);
            batch.insert(key.as_bytes(), json(&series));
            state.series.insert(key, series);
        }
        for (key, original) in changes.originals {
            state.watermark_ns = state.watermark_ns.max(original.last_ns);
            batch.insert([ORIGINAL_PREFIX, key.as_bytes()].concat(), json(&original));
            state.originals.insert(key, original);
        }
        if let Some(applied) = changes.applied {
            state.applied = Some(applied);
            batch.insert(APPLIED_KEY, json(&applied));
        }
        state.legacy &= changes.applied.is_none();
        let sweep_every = (self.stale_after_ns / 4).max(1);
        if state.watermark_ns.saturating_sub(state.last_sweep_ns) >= sweep_every {
            let cutoff = state.watermark_ns.saturating_sub(self.stale_after_ns);
            state.last_sweep_ns = state.watermark_ns;
            let before = (state.series.len(), state.originals.len());
            state.series.retain(|key, s| {
                let keep = s.last_ns >= cutoff;
                if !keep {
                    batch.remove(key.as_bytes());
                }
                keep
            });
            state.originals.retain(|key, o| {
                let keep = o.last_ns >= cutoff;
                if !keep {
                    batch.remove([ORIGINAL_PREFIX, key.as_bytes()].concat());
                }
                keep
            });
            let evicted = before.0 - state.series.len() + before.1 - state.originals.len();
            if evicted > 0 {
                tracing::debug!(evicted, "evicted idle delta series (stale_after)");
            }
        }
        let Some(tree) = &self.tree else { return };
        if let Err(e) = tree().and_then(|tree| {
            tree.apply_batch(batch)
                .map_err(|e| format!("writing the delta state: {e}"))
        }) {
            tracing::error!(error = %e, "saving delta state failed; after a restart the series in this batch start over");
        }
    }
}

/// An entry as the tree holds it.
fn json<T: Serialize>(entry: &T) -> Vec<u8> {
    serde_json::to_vec(entry).expect("delta state entries serialize")
}

/// Changes made by one translation, to commit once the batch is accepted.
#[derive(Default)]
pub struct Changes {
    series: HashMap<String, Series>,
    originals: HashMap<String, Original>,
    applied: Option<Position>,
}

/// A translation's view of the state: committed series, overlaid with its own changes.
pub struct Txn<'a> {
    base: &'a State,
    changes: Changes,
    /// Points that produced no sample, by reason.
    pub ignored: Ignored,
}

impl<'a> Txn<'a> {
    pub fn new(base: &'a State) -> Txn<'a> {
        Txn {
            base,
            changes: Changes::default(),
            ignored: Ignored::default(),
        }
    }

    pub fn get(&self, key: &str) -> Option<&Series> {
        self.changes
            .series
            .get(key)
            .or_else(|| self.base.series.get(key))
    }

    fn original(&self, key: &str) -> Option<&Original> {
        self.changes
            .originals
            .get(key)
            .or_else(|| self.base.originals.get(key))
    }

    /// Whether a point of the resource at `position` is still to be applied (`None`: a dead
    /// letter replayed, whose points were applied when it was refused). Counts it if not; the
    /// applied position moves to the newest fresh one at commit.
    pub fn fresh(&mut self, position: Option<Position>) -> bool {
        let fresh = position.is_some_and(|p| self.base.applied.is_none_or(|mark| p > mark));
        if fresh {
            self.changes.applied = self.changes.applied.max(position);
        } else {
            self.ignored.already_applied += 1;
        }
        fresh
    }

    /// Adds one delta point to the aggregated series `key`; its new running total, or `None`
    /// when a tree of the old format says the point was applied already. The series' time is
    /// the point's, or a millisecond after its own when that is not earlier (`after`).
    pub fn add(&mut self, key: &str, start_ns: u64, time_ns: u64, delta: Value) -> Option<&Series> {
        let start_ns = if start_ns == 0 || start_ns > time_ns {
            time_ns
        } else {
            start_ns
        };
        let next = match self.get(key) {
            None => Series {
                start_ns,
                last_ns: time_ns,
                value: delta,
            },
            Some(s)
                if self.base.legacy
                    && !self.changes.series.contains_key(key)
                    && time_ns <= s.last_ns =>
            {
                self.ignored.already_applied += 1;
                return None;
            }
            Some(s) => {
                let mut next = s.clone();
                next.last_ns = after(s.last_ns, time_ns);
                if !next.value.add(&delta) {
                    // The layout changed (histogram bounds): start over.
                    next = Series {
                        start_ns,
                        last_ns: next.last_ns,
                        value: delta,
                    };
                }
                next
            }
        };
        self.changes.series.insert(key.to_string(), next);
        self.changes.series.get(key)
    }

    /// Turns one point of the original CUMULATIVE series `original` (aggregated into `into`)
    /// into the delta since its previous point: the whole value for a series not seen before or
    /// after a reset (the value went down, or the start time moved). `None` for a point older
    /// than the series' last one.
    pub fn cumulative_delta(
        &mut self,
        original: &str,
        into: &str,
        start_ns: u64,
        time_ns: u64,
        value: Value,
    ) -> Option<Value> {
        let delta = match self.original(original) {
            Some(o) if time_ns < o.last_ns => {
                self.ignored.older_than_series += 1;
                return None;
            }
            Some(Original {
                start_ns: s,
                value: Some(previous),
                ..
            }) if *s == start_ns => value.minus(previous).unwrap_or_else(|| value.clone()),
            _ => value.clone(),
        };
        self.remember(original, into, start_ns, time_ns, Some(value));
        Some(delta)
    }

    /// Notes a point of the original series `original` (for the counts `/status` shows and
    /// for `stale_after`).
    pub fn remember(
        &mut self,
        original: &str,
        into: &str,
        start_ns: u64,
        time_ns: u64,
        value: Option<Value>,
    ) {
        let last_ns = self
            .original(original)
            .map_or(0, |o| o.last_ns)
            .max(time_ns);
        let next = Original {
            into: into.to_string(),
            start_ns,
            last_ns,
            value,
            recent: Vec::new(),
        };
        self.changes.originals.insert(original.to_string(), next);
    }

    /// Notes a DELTA point of the original series `original`; `false` (counted) when that
    /// series had a point of this very interval already.
    pub fn new_interval(
        &mut self,
        original: &str,
        into: &str,
        start_ns: u64,
        time_ns: u64,
    ) -> bool {
        let mut recent = self
            .original(original)
            .map_or(Vec::new(), |o| o.recent.clone());
        if recent.contains(&(start_ns, time_ns)) {
            self.ignored.duplicate_interval += 1;
            return false;
        }
        if recent.len() == RECENT_INTERVALS {
            recent.remove(0);
        }
        recent.push((start_ns, time_ns));
        self.remember(original, into, start_ns, time_ns, None);
        if let Some(o) = self.changes.originals.get_mut(original) {
            o.recent = recent;
        }
        true
    }

    /// Sets the merged gauge series `key` to `value` unless it holds a point of the same
    /// millisecond or a newer one; the series, or `None` when the point is ignored (`counted`
    /// in [`Ignored::older_than_series`], or not: a `target_info` sample is no data point).
    pub fn newest(
        &mut self,
        key: &str,
        time_ns: u64,
        value: f64,
        counted: bool,
    ) -> Option<&Series> {
        // Not a later millisecond: Prometheus would refuse a second value at one timestamp.
        if self
            .get(key)
            .is_some_and(|s| time_ns / MS <= s.last_ns / MS)
        {
            self.ignored.older_than_series += u64::from(counted);
            return None;
        }
        let next = Series {
            start_ns: time_ns,
            last_ns: time_ns,
            value: Value::Sum(value),
        };
        self.changes.series.insert(key.to_string(), next);
        self.changes.series.get(key)
    }

    pub fn into_changes(self) -> Changes {
        self.changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn total(c: &Cumulative, key: &str) -> Option<f64> {
        match c.lock().unwrap().series.get(key).map(|s| s.value.clone()) {
            Some(Value::Sum(v)) => Some(v),
            _ => None,
        }
    }

    fn state_tree(tree: &sled::Tree) -> StateTree {
        let tree = tree.clone();
        Box::new(move || Ok(tree.clone()))
    }

    /// Runs `f` in a transaction on `c`'s state and commits it; what it ignored.
    fn commit_with(c: &Cumulative, f: impl FnOnce(&mut Txn)) -> Ignored {
        let state = c.lock().unwrap();
        let mut txn = Txn::new(&state);
        f(&mut txn);
        let ignored = txn.ignored;
        let changes = txn.into_changes();
        drop(state);
        c.commit(changes);
        ignored
    }

    #[test]
    fn deduplicates_by_position_not_time_and_survives_reopen() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree("t").unwrap();
        let c = Cumulative::new(Some(state_tree(&tree)), DEFAULT_STALE_AFTER);
        let changes = {
            let state = c.lock().unwrap();
            let mut txn = Txn::new(&state);
            assert!(txn.fresh(Some((1, 0))));
            assert!(txn.add("a", 10 * MS, 20 * MS, Value::Sum(1.0)).is_some());
            assert!(txn.fresh(Some((2, 0))));
            assert!(txn.add("a", 20 * MS, 30 * MS, Value::Sum(2.0)).is_some());
            txn.into_changes()
        };
        // Not committed yet: nothing visible.
        assert_eq!(total(&c, "a"), None);
        c.commit(changes);
        assert_eq!(total(&c, "a"), Some(3.0));
        let ignored = commit_with(&c, |txn| {
            // The batch again (a crash before the cursor moved), and a replayed dead letter.
            assert!(!txn.fresh(Some((2, 0))));
            assert!(!txn.fresh(Some((1, 7))));
            assert!(!txn.fresh(None));
            // A new record whose point is older than the series (another session, or an SDK
            // retrying late): added, and the series' sample moves a millisecond on, neither back
            // in time nor onto the last sample's timestamp.
            assert!(txn.fresh(Some((2, 1))));
            let s = txn.add("a", 5 * MS, 15 * MS, Value::Sum(4.0)).unwrap();
            assert_eq!((s.last_ns, s.value.clone()), (31 * MS, Value::Sum(7.0)));
        });
        assert_eq!(ignored.already_applied, 3);
        let awkward = 1.8084509999999994_f64;
        commit_with(&c, |txn| {
            assert!(txn.fresh(Some((3, 0))));
            txn.add("b", 1, 2, Value::Sum(awkward));
        });
        drop(c);
        let c = Cumulative::new(Some(state_tree(&tree)), DEFAULT_STALE_AFTER);
        assert_eq!(total(&c, "a"), Some(7.0));
        assert_eq!(
            total(&c, "b").map(f64::to_bits),
            Some(awkward.to_bits()),
            "saved totals read back bit for bit"
        );
        let s = c.lock().unwrap().series["a"].clone();
        assert_eq!((s.start_ns, s.last_ns), (10 * MS, 31 * MS));
        assert_eq!(c.lock().unwrap().applied, Some((3, 0)));
    }

    #[test]
    fn a_tree_of_the_old_format_loads_and_keeps_its_duplicate_rule_until_the_first_commit() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree("t").unwrap();
        // As the format before positions wrote it: series entries only.
        let old = br#"{"start_ns":10,"last_ns":30,"value":{"Sum":4613937818241073152}}"#;
        tree.insert("a", &old[..]).unwrap();
        let c = Cumulative::new(Some(state_tree(&tree)), DEFAULT_STALE_AFTER);
        assert_eq!(total(&c, "a"), Some(3.0));
        let ignored = commit_with(&c, |txn| {
            assert!(txn.fresh(Some((9, 0))));
            assert!(
                txn.add("a", 20, 30, Value::Sum(2.0)).is_none(),
                "sent before"
            );
            assert!(txn.add("a", 30, 40, Value::Sum(1.0)).is_some());
        });
        assert_eq!(ignored.already_applied, 1);
        assert_eq!(total(&c, "a"), Some(4.0));
        commit_with(&c, |txn| {
            assert!(txn.fresh(Some((10, 0))));
            assert!(
                txn.add("a", 20, 30, Value::Sum(2.0)).is_some(),
                "with a position saved, time no longer decides"
            );
        });
        assert_eq!(total(&c, "a"), Some(6.0));
    }

    #[test]
    fn cumulative_points_become_deltas_per_original_series_with_resets() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree("t").unwrap();
        let c = Cumulative::new(Some(state_tree(&tree)), Duration::from_nanos(1000));
        let mut deltas = Vec::new();
        commit_with(&c, |txn| {
            for (original, start, time, v) in [
                ("s1", 1, 10, 5.0),
                ("s2", 2, 10, 7.0),
                ("s1", 1, 20, 8.0),
                ("s1", 1, 15, 6.0), // older than s1's last point
                ("s2", 2, 30, 2.0), // went down: a reset, 2 is the delta
            ] {
                deltas.push(txn.cumulative_delta(original, "m", start, time, Value::Sum(v)));
            }
            assert_eq!(txn.ignored.older_than_series, 1);
        });
        let sums = [Some(5.0), Some(7.0), Some(3.0), None, Some(2.0)].map(|v| v.map(Value::Sum));
        assert_eq!(deltas, sums);
        assert_eq!(
            c.lock().unwrap().aggregated_away(),
            1,
            "s1 and s2 go into m"
        );
        drop(c);
        // The memory survives a restart: s1 continues from 8, and a new start time is a reset.
        let c = Cumulative::new(Some(state_tree(&tree)), Duration::from_nanos(1000));
        commit_with(&c, |txn| {
            let d = txn.cumulative_delta("s1", "m", 1, 40, Value::Sum(9.5));
            assert_eq!(d, Some(Value::Sum(1.5)));
            let d = txn.cumulative_delta("s2", "m", 35, 40, Value::Sum(1.0));
            assert_eq!(d, Some(Value::Sum(1.0)));
        });
        // Idle for longer than stale_after (data time): forgotten, in memory and in the tree.
        commit_with(&c, |txn| {
            txn.cumulative_delta("s3", "m", 1, 5000, Value::Sum(1.0));
        });
        assert_eq!(c.lock().unwrap().originals.len(), 1);
        drop(c);
        let c = Cumulative::new(Some(state_tree(&tree)), Duration::from_nanos(1000));
        assert_eq!(c.lock().unwrap().originals.len(), 1);
    }

    #[test]
    fn histogram_bounds_change_starts_over_and_idle_series_are_evicted() {
        let c = Cumulative::new(None, Duration::from_millis(100));
        let h = |bounds: Vec<f64>, counts: Vec<u64>| Value::Histogram {
            sum: 1.0,
            count: counts.iter().sum(),
            bounds,
            counts,
        };
        let changes = {
            let state = c.lock().unwrap();
            let mut txn = Txn::new(&state);
            txn.add("h", MS, 2 * MS, h(vec![1.0], vec![1, 1]));
            let s = txn
                .add("h", 2 * MS, 3 * MS, h(vec![1.0], vec![0, 2]))
                .unwrap();
            assert_eq!(
                s.value,
                Value::Histogram {
                    bounds: vec![1.0],
                    counts: vec![1, 3],
                    sum: 2.0,
                    count: 4
                }
            );
            let s = txn
                .add("h", 3 * MS, 4 * MS, h(vec![2.0], vec![5, 0]))
                .unwrap();
            assert_eq!(s.start_ns, 3 * MS, "new bounds: a new start");
            txn.add("old", MS, 5 * MS, Value::Sum(1.0));
            txn.into_changes()
        };
        c.commit(changes);
        assert_eq!(c.lock().unwrap().series.len(), 2);
        let changes = {
            let state = c.lock().unwrap();
            let mut txn = Txn::new(&state);
            txn.add("h", 4 * MS, 500 * MS, h(vec![2.0], vec![1, 0]));
            txn.into_changes()
        };
        c.commit(changes);
        assert_eq!(
            c.lock().unwrap().series.len(),
            1,
            "'old' was idle for more than stale_after"
        );
    }

    #[test]
    fn exponential_deltas_add_at_the_coarser_scale() {
        let e = |scale, offset, counts: Vec<u64>| {
            Value::Exponential(Exponential {
                scale,
                zero_count: 1,
                zero_threshold: 0.0,
                count: counts.iter().sum::<u64>() + 1,
                positive: Buckets { offset, counts },
                negative: Buckets::default(),
                sum: 1.0,
            })
        };
        let mut total = e(1, 2, vec![1, 1, 1]); // indexes 2, 3, 4 at scale 1
        assert!(total.add(&e(0, -1, vec![5]))); // index -1 at scale 0
        let Value::Exponential(x) = total else {
            unreachable!()
        };
        assert_eq!(x.scale, 0);
        // Scale 1 → 0: 2→1, 3→1, 4→2.
        assert_eq!(x.positive.offset, -1);
        assert_eq!(x.positive.counts, vec![5, 0, 2, 1]);
        assert_eq!((x.zero_count, x.count, x.sum), (2, 10, 2.0));
    }
}
