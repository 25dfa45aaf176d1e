//! Delta → cumulative: the running totals of DELTA sums and histograms, per series, for one
//! `prometheus_remote_write` destination. Remote write carries cumulative counters only, and
//! Claude Code exports every metric as DELTA.
//!
//! A series is keyed by its Prometheus identity (metric name and labels, external labels
//! excepted; see [`super::translate`]). Its state is a stable start time (the first delta's
//! start), the time of the last point added, and the running value (a sum, or a histogram's
//! bucket counts, sum and count).
//!
//! Rules, as OpenTelemetry Collector's `deltatocumulative` processor has them:
//! - a point whose time is at or before the series' last time is a duplicate (a batch sent again
//!   after a crash) or arrived out of order: it is ignored, counted, and produces no sample;
//! - a point that starts before the series' start belongs to an older run: ignored, counted;
//! - a histogram whose bucket bounds change starts the series over (the new start is the point's
//!   start), which Prometheus sees as a counter reset — the honest reading of a changed layout.
//!
//! Transactions: [`Txn`] reads through to the committed state and records its changes apart, so
//! an attempt that fails (retry, 401) leaves the state as it was and the same batch can be
//! translated again. [`Cumulative::commit`] applies the changes once the upstream accepted (or
//! refused as malformed) the batch, and writes them to the spool's state tree *before* the
//! worker moves its cursor: a crash between the two re-sends a batch whose points are then
//! duplicates, never a double count. Entries written to the tree become durable with the
//! spool's next group commit (the cursor's, at the latest: sled persists a prefix of its log).
//!
//! Memory is bounded: a series with no point for `stale_after` of *data* time (the newest point
//! time seen, not the wall clock, so a weekend's backlog draining does not evict everything) is
//! dropped from memory and the tree; its next point starts it over.
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

/// The committed state.
pub struct State {
    series: HashMap<String, Series>,
    /// The newest point time seen (ns): the clock `stale_after` is measured on.
    watermark_ns: u64,
    last_sweep_ns: u64,
}

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

    /// The committed state; the first call reads every series held in the tree.
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
        let mut series = HashMap::new();
        let mut watermark_ns = 0;
        if let Some(tree) = &self.tree {
            for entry in tree()?.iter() {
                let (k, v) = entry.map_err(|e| format!("reading delta state: {e}"))?;
                let key = String::from_utf8_lossy(&k).into_owned();
                match serde_json::from_slice::<Series>(&v) {
                    Ok(s) => {
                        watermark_ns = watermark_ns.max(s.last_ns);
                        series.insert(key, s);
                    }
                    Err(e) => {
                        tracing::warn!(series = %key, error = %e, "unreadable delta state; the series starts over");
                    }
                }
            }
        }
        Ok(State {
            series,
            watermark_ns,
            last_sweep_ns: watermark_ns,
        })
    }

    /// Applies a transaction's changes (made on [`Self::lock`]'s state), persists them, and
    /// evicts idle series.
    pub fn commit(&self, changes: Changes) {
        let mut state = match self.lock() {
            Ok(state) => state,
            Err(e) => unreachable!("a transaction's state was loaded: {e}"),
        };
        let tree = self.tree.as_ref().and_then(|tree| {
            tree()
                .inspect_err(|e| tracing::error!(error = %e, "saving delta state failed; after a restart the series in this batch start over"))
                .ok()
        });
        for (key, series) in changes.series {
            state.watermark_ns = state.watermark_ns.max(series.last_ns);
            if let Some(tree) = &tree {
                let value = serde_json::to_vec(&series).expect("series serialize");
                if let Err(e) = tree.insert(key.as_bytes(), value) {
                    tracing::error!(error = %e, "saving delta state failed; after a restart this series starts over");
                }
            }
            state.series.insert(key, series);
        }
        let sweep_every = (self.stale_after_ns / 4).max(1);
        if state.watermark_ns.saturating_sub(state.last_sweep_ns) >= sweep_every {
            let cutoff = state.watermark_ns.saturating_sub(self.stale_after_ns);
            state.last_sweep_ns = state.watermark_ns;
            let stale: Vec<String> = state
                .series
                .iter()
                .filter(|(_, s)| s.last_ns < cutoff)
                .map(|(k, _)| k.clone())
                .collect();
            for key in &stale {
                state.series.remove(key);
                if let Some(tree) = &tree {
                    let _ = tree.remove(key.as_bytes());
                }
            }
            if !stale.is_empty() {
                tracing::debug!(
                    evicted = stale.len(),
                    "evicted idle delta series (stale_after)"
                );
            }
        }
    }
}

/// Changes made by one translation, to commit once the batch is accepted.
#[derive(Default)]
pub struct Changes {
    series: HashMap<String, Series>,
}

/// A translation's view of the state: committed series, overlaid with its own changes.
pub struct Txn<'a> {
    base: &'a State,
    changes: Changes,
    /// Points ignored as duplicates, out of order, or older than their series.
    pub ignored: u64,
}

impl<'a> Txn<'a> {
    pub fn new(base: &'a State) -> Txn<'a> {
        Txn {
            base,
            changes: Changes::default(),
            ignored: 0,
        }
    }

    pub fn get(&self, key: &str) -> Option<&Series> {
        self.changes
            .series
            .get(key)
            .or_else(|| self.base.series.get(key))
    }

    /// Adds one delta point; the series' new running total, or `None` if the point is ignored.
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
            Some(s) if time_ns <= s.last_ns || start_ns < s.start_ns => {
                self.ignored += 1;
                return None;
            }
            Some(s) => {
                let mut next = s.clone();
                next.last_ns = time_ns;
                if !next.value.add(&delta) {
                    // The layout changed (histogram bounds): start over.
                    next = Series {
                        start_ns,
                        last_ns: time_ns,
                        value: delta,
                    };
                }
                next
            }
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

    #[test]
    fn accumulates_ignores_duplicates_and_survives_reopen() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree("t").unwrap();
        let c = Cumulative::new(Some(state_tree(&tree)), DEFAULT_STALE_AFTER);
        let changes = {
            let state = c.lock().unwrap();
            let mut txn = Txn::new(&state);
            assert!(txn.add("a", 10, 20, Value::Sum(1.0)).is_some());
            assert!(txn.add("a", 20, 30, Value::Sum(2.0)).is_some());
            // Same interval again, and an older one: ignored.
            assert!(txn.add("a", 20, 30, Value::Sum(2.0)).is_none());
            assert!(txn.add("a", 10, 20, Value::Sum(1.0)).is_none());
            assert_eq!(txn.ignored, 2);
            txn.into_changes()
        };
        // Not committed yet: nothing visible.
        assert_eq!(total(&c, "a"), None);
        c.commit(changes);
        assert_eq!(total(&c, "a"), Some(3.0));
        let awkward = 1.8084509999999994_f64;
        let changes = {
            let state = c.lock().unwrap();
            let mut txn = Txn::new(&state);
            txn.add("b", 1, 2, Value::Sum(awkward));
            txn.into_changes()
        };
        c.commit(changes);
        drop(c);
        let c = Cumulative::new(Some(state_tree(&tree)), DEFAULT_STALE_AFTER);
        assert_eq!(total(&c, "a"), Some(3.0));
        assert_eq!(
            total(&c, "b").map(f64::to_bits),
            Some(awkward.to_bits()),
            "saved totals read back bit for bit"
        );
        let s = c.lock().unwrap().series["a"].clone();
        assert_eq!((s.start_ns, s.last_ns), (10, 30));
    }

    #[test]
    fn histogram_bounds_change_starts_over_and_idle_series_are_evicted() {
        let c = Cumulative::new(None, Duration::from_nanos(100));
        let h = |bounds: Vec<f64>, counts: Vec<u64>| Value::Histogram {
            sum: 1.0,
            count: counts.iter().sum(),
            bounds,
            counts,
        };
        let changes = {
            let state = c.lock().unwrap();
            let mut txn = Txn::new(&state);
            txn.add("h", 1, 2, h(vec![1.0], vec![1, 1]));
            let s = txn.add("h", 2, 3, h(vec![1.0], vec![0, 2])).unwrap();
            assert_eq!(
                s.value,
                Value::Histogram {
                    bounds: vec![1.0],
                    counts: vec![1, 3],
                    sum: 2.0,
                    count: 4
                }
            );
            let s = txn.add("h", 3, 4, h(vec![2.0], vec![5, 0])).unwrap();
            assert_eq!(s.start_ns, 3, "new bounds: a new start");
            txn.add("old", 1, 5, Value::Sum(1.0));
            txn.into_changes()
        };
        c.commit(changes);
        assert_eq!(c.lock().unwrap().series.len(), 2);
        let changes = {
            let state = c.lock().unwrap();
            let mut txn = Txn::new(&state);
            txn.add("h", 4, 500, h(vec![2.0], vec![1, 0]));
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
