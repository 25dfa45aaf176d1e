//! OTLP metrics → Prometheus time series, following OpenTelemetry's "Prometheus and OpenMetrics
//! compatibility" specification (the rules OpenTelemetry Collector's `prometheusremotewrite`
//! exporter implements with metric suffixes on).
//!
//! Names
//! - Metric names: every character outside `[a-zA-Z0-9_:]` becomes `_`; a leading digit gets a
//!   `_` prefix. `claude_code.token.usage` → `claude_code_token_usage`.
//! - Unit suffix (skipped when the name already ends with it); `{…}` annotations are dropped
//!   first, `a/b` becomes `<a>_per_<b>`, an unknown unit is appended sanitised (`USD` → `_USD`):
//!
//!   | unit | suffix | unit | suffix | unit | suffix |
//!   |---|---|---|---|---|---|
//!   | `d` | `days` | `By` | `bytes` | `m` | `meters` |
//!   | `h` | `hours` | `KBy` `MBy` `GBy` `TBy` | `kilobytes` … `terabytes` | `V` | `volts` |
//!   | `min` | `minutes` | `KiBy` `MiBy` `GiBy` `TiBy` | `kibibytes` … `tebibytes` | `A` | `amperes` |
//!   | `s` | `seconds` | `%` | `percent` | `J` | `joules` |
//!   | `ms` | `milliseconds` | `Cel` | `celsius` | `W` | `watts` |
//!   | `us` | `microseconds` | `Hz` | `hertz` | `g` | `grams` |
//!   | `ns` | `nanoseconds` | `1` | none (`ratio` on a gauge) | | |
//!
//!   After `/`: `s` → `second`, `m` → `minute`, `h` → `hour`, `d` → `day`, `w` → `week`,
//!   `mo` → `month`, `y` → `year`.
//! - `_total` on monotonic sums (counters); non-monotonic sums are gauges.
//! - Label names: characters outside `[a-zA-Z0-9_]` become `_`, a leading digit gets `key_`;
//!   attributes that collide after sanitising are joined with `;` in key order. Values: strings
//!   as is, other scalars as text, arrays and maps as JSON.
//!
//! Series
//! - `job` = `service.namespace/service.name` (or `service.name`), `instance` =
//!   `service.instance.id`; they override point attributes of those names. Every other
//!   resource attribute goes on one `target_info` series per resource (value 1, at the newest
//!   point time of the resource), not on each series.
//! - External labels are added to every series unless the series already has that label.
//! - Gauge → one series; sum → one series; histogram → `_bucket{le}` (cumulative counts,
//!   `+Inf` included), `_sum` (when the point has one), `_count`; summary → `{quantile}`, `_sum`,
//!   `_count`. Bounds and quantiles print as Go's `strconv.FormatFloat(v, 'f', -1, 64)`.
//! - Exponential histograms are converted to classic buckets at their own boundaries (every
//!   bucket of the point, empty ones included: negative buckets, the zero bucket up to
//!   `zero_threshold`, positive buckets; `le` = each bucket's upper bound, `base^(index+1)` with
//!   `base = 2^(2^-scale)`). DELTA ones are accumulated in exponential form first (see
//!   [`super::cumulative::Exponential`]); when a delta of a coarser scale arrives the running
//!   total moves to that scale, and the `le` series change with it (the old ones go stale).
//!   Nothing is dropped.
//! - DELTA sums and histograms go through [`super::cumulative`] (its rules: applied once by
//!   spool position, samples never back in time), in spool order, not time order: the samples
//!   of a batch then depend only on the state and the points before them, so a batch sent again
//!   after a crash that lost its state yields the very samples Prometheus already holds, even
//!   with newer (or older) points batched behind it. A point the state ignores produces no
//!   sample. `target_info` goes there too (its newest sample wins): the resources of many
//!   processes share it.
//! - `drop_labels` removes the point and resource attributes it names (OpenTelemetry keys, so
//!   `service.instance.id` removes `instance`) before series are formed. Then CUMULATIVE
//!   monotonic sums and histograms go through [`super::cumulative`] too (turned into deltas per
//!   original series, summed); so do gauges and non-monotonic sums with
//!   `drop_labels_gauges = "last"` (the newest value wins), while with `"keep"` they keep every
//!   label, as summaries always do (quantiles cannot be merged); such points are counted. A
//!   `NoRecordedValue` point of a merged series is dropped: the other originals still report.
//! - A point flagged `NoRecordedValue` becomes Prometheus's stale marker (NaN with bits
//!   `0x7ff0000000000002`) on each of its series.
//! - Timestamps are milliseconds (the point's `time_unix_nano` / 10⁶). Within a series samples
//!   are sorted by time; two samples at one millisecond keep the later-translated one.
//! - Not sent: exemplars, metadata, `otel_scope_*` labels, created timestamps.
//!
//! Owns nothing: a pure function of the request, the resources' spool positions, the options
//! and the delta state.

use std::collections::BTreeMap;

use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_proto::tonic::metrics::v1::number_data_point::Value as Number;
use opentelemetry_proto::tonic::metrics::v1::{
    exponential_histogram_data_point::Buckets, AggregationTemporality,
    ExponentialHistogramDataPoint, Metric, NumberDataPoint,
};

use super::cumulative::{self, Exponential, Position, Txn, Value};
use super::proto::{Label, Sample, TimeSeries};
use crate::otlp::ExportMetricsServiceRequest;

/// Prometheus's staleness marker.
pub const STALE_NAN: u64 = 0x7ff0000000000002;
const NO_RECORDED_VALUE: u32 = 1;
const DELTA: i32 = AggregationTemporality::Delta as i32;

/// What one request came to.
#[derive(Debug, Default)]
pub struct Translated {
    pub series: Vec<TimeSeries>,
    /// Gauge and summary points written with a label `drop_labels` names
    /// (`drop_labels_gauges = "keep"`, and summaries always).
    pub gauge_points_kept_labels: u64,
}

/// How a destination translates: its external labels (already valid names) and what
/// `drop_labels` / `drop_labels_gauges` say.
pub struct Options {
    pub external: Vec<Label>,
    pub drop_labels: Vec<String>,
    pub merge_gauges: bool,
}

type Labels = BTreeMap<String, String>;

struct Out<'a> {
    options: &'a Options,
    series: BTreeMap<Vec<Label>, Vec<(i64, f64)>>,
    deferred: Vec<Deferred>,
    /// The resource being walked: its position in the spool, and its `job`/`instance` with
    /// (`full`) and without (`kept`) the dropped attributes.
    position: Option<Position>,
    identity: Labels,
    identity_full: Labels,
    gauge_points_kept_labels: u64,
    stale_markers_of_merged_series: u64,
}

impl Out<'_> {
    fn push(
        &mut self,
        name: &str,
        labels: &Labels,
        extra: Option<(&str, String)>,
        ts: i64,
        v: f64,
    ) {
        let mut all: Labels = labels.clone();
        for l in &self.options.external {
            all.entry(l.name.clone()).or_insert_with(|| l.value.clone());
        }
        if let Some((k, v)) = extra {
            all.insert(k.to_string(), v);
        }
        all.insert("__name__".into(), name.to_string());
        let key: Vec<Label> = all
            .into_iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(name, value)| Label { name, value })
            .collect();
        self.series.entry(key).or_default().push((ts, v));
    }

    fn merging(&self) -> bool {
        !self.options.drop_labels.is_empty()
    }

    fn kept<'k>(&self, attrs: &'k [KeyValue]) -> Vec<&'k KeyValue> {
        attrs
            .iter()
            .filter(|a| !self.options.drop_labels.contains(&a.key))
            .collect()
    }

    /// A point's labels: without the dropped attributes, and, when `drop_labels` is set, with
    /// them (its original series).
    fn point_labels(&self, attrs: &[KeyValue]) -> (Labels, Option<Labels>) {
        let with_identity = |mut labels: Labels, identity: &Labels| {
            labels.extend(identity.iter().map(|(k, v)| (k.clone(), v.clone())));
            labels
        };
        if !self.merging() {
            return (with_identity(attribute_labels(attrs), &self.identity), None);
        }
        let kept = with_identity(attribute_labels(self.kept(attrs)), &self.identity);
        let full = with_identity(attribute_labels(attrs), &self.identity_full);
        (kept, Some(full))
    }
}

/// Translates a request whose resource `i` lies at `positions[i]` in the spool (`None`: its
/// points were applied already, a dead letter replayed). `txn` holds the delta state.
pub fn translate(
    req: &ExportMetricsServiceRequest,
    positions: &[Option<Position>],
    options: &Options,
    txn: &mut Txn,
) -> Translated {
    let mut out = Out {
        options,
        series: BTreeMap::new(),
        deferred: Vec::new(),
        position: None,
        identity: Labels::new(),
        identity_full: Labels::new(),
        gauge_points_kept_labels: 0,
        stale_markers_of_merged_series: 0,
    };
    for (i, rm) in req.resource_metrics.iter().enumerate() {
        let resource_attrs: &[KeyValue] = rm
            .resource
            .as_ref()
            .map(|r| r.attributes.as_slice())
            .unwrap_or(&[]);
        let (identity, info) = resource_labels(out.kept(resource_attrs));
        out.identity_full = resource_labels(resource_attrs.iter()).0;
        out.identity = identity;
        out.position = positions.get(i).copied().flatten();
        let mut newest: Option<u64> = None;
        for sm in &rm.scope_metrics {
            for metric in &sm.metrics {
                let t = translate_metric(metric, &mut out);
                newest = newest.max(t);
            }
        }
        if let (Some(time_ns), false) = (newest, info.is_empty()) {
            let mut labels = info;
            labels.extend(out.identity.clone());
            // Resources of many processes (sessions) share one target_info series: its sample
            // must not go back in time (Prometheus refuses the whole request then).
            out.defer(
                "target_info",
                (labels, None),
                0,
                time_ns,
                Accumulate::Info,
                false,
            );
        }
    }
    out.accumulate(txn);
    txn.ignored.stale_marker_of_merged_series += out.stale_markers_of_merged_series;
    let gauge_points_kept_labels = out.gauge_points_kept_labels;
    let series = out
        .series
        .into_iter()
        .map(|(labels, mut samples)| {
            // Stable: of two samples at one millisecond the later-translated one stays.
            samples.sort_by_key(|(t, _)| *t);
            let mut deduped: Vec<Sample> = Vec::with_capacity(samples.len());
            for (timestamp, value) in samples {
                match deduped.last_mut() {
                    Some(last) if last.timestamp == timestamp => last.value = value,
                    _ => deduped.push(Sample { value, timestamp }),
                }
            }
            TimeSeries {
                labels,
                samples: deduped,
            }
        })
        .collect();
    Translated {
        series,
        gauge_points_kept_labels,
    }
}

/// `job`/`instance` from the resource, and the other resource attributes (for `target_info`).
fn resource_labels<'a>(attrs: impl IntoIterator<Item = &'a KeyValue>) -> (Labels, Labels) {
    let attrs: Vec<&KeyValue> = attrs.into_iter().collect();
    let get = |k: &str| {
        attrs
            .iter()
            .find(|a| a.key == k)
            .map(|a| any_text(a.value.as_ref()))
    };
    let mut identity = Labels::new();
    if let Some(name) = get("service.name") {
        let job = match get("service.namespace") {
            Some(ns) if !ns.is_empty() => format!("{ns}/{name}"),
            _ => name,
        };
        identity.insert("job".into(), job);
    }
    if let Some(id) = get("service.instance.id") {
        identity.insert("instance".into(), id);
    }
    let rest = attrs.iter().copied().filter(|a| {
        !matches!(
            a.key.as_str(),
            "service.name" | "service.namespace" | "service.instance.id"
        )
    });
    (identity, attribute_labels(rest))
}

fn attribute_labels<'a>(attrs: impl IntoIterator<Item = &'a KeyValue>) -> Labels {
    let mut sorted: Vec<&KeyValue> = attrs.into_iter().collect();
    sorted.sort_by(|a, b| a.key.cmp(&b.key));
    let mut labels = Labels::new();
    for a in sorted {
        let name = label_name(&a.key);
        let value = any_text(a.value.as_ref());
        labels
            .entry(name)
            .and_modify(|v| {
                v.push(';');
                v.push_str(&value);
            })
            .or_insert(value);
    }
    labels
}

/// An attribute value as label text.
pub fn any_text(v: Option<&AnyValue>) -> String {
    match v.and_then(|v| v.value.as_ref()) {
        None => String::new(),
        Some(Any::StringValue(s)) => s.clone(),
        Some(Any::BoolValue(b)) => b.to_string(),
        Some(Any::IntValue(i)) => i.to_string(),
        Some(Any::DoubleValue(d)) => format_float(*d),
        Some(Any::BytesValue(b)) => hex::encode(b),
        Some(other) => any_json(other).to_string(),
    }
}

fn any_json(v: &Any) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        Any::StringValue(s) => J::String(s.clone()),
        Any::BoolValue(b) => J::Bool(*b),
        Any::IntValue(i) => J::from(*i),
        Any::DoubleValue(d) => serde_json::Number::from_f64(*d).map_or(J::Null, J::Number),
        Any::BytesValue(b) => J::String(hex::encode(b)),
        Any::ArrayValue(a) => J::Array(
            a.values
                .iter()
                .map(|v| v.value.as_ref().map_or(J::Null, any_json))
                .collect(),
        ),
        Any::KvlistValue(kv) => J::Object(
            kv.values
                .iter()
                .map(|kv| {
                    let v = kv.value.as_ref().and_then(|v| v.value.as_ref());
                    (kv.key.clone(), v.map_or(J::Null, any_json))
                })
                .collect(),
        ),
        // A string-table index (profiles only); metrics carry no string table.
        Any::StringValueStrindex(i) => J::from(*i),
    }
}

/// Go's `strconv.FormatFloat(v, 'f', -1, 64)`, and `+Inf`/`-Inf`/`NaN`.
pub fn format_float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

/// A label name: `[a-zA-Z0-9_]`, not starting with a digit.
pub fn label_name(key: &str) -> String {
    let s: String = key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.starts_with(|c: char| c.is_ascii_digit()) {
        format!("key_{s}")
    } else if s.is_empty() {
        "key_".into()
    } else {
        s
    }
}

#[derive(Clone, Copy, PartialEq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
    Summary,
}

/// The Prometheus metric name of an OTLP metric (see the module docs).
pub fn metric_name(name: &str, unit: &str, kind: Kind) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    let suffix = match unit_suffix(unit) {
        None if unit.trim() == "1" && kind == Kind::Gauge => Some("ratio".to_string()),
        s => s,
    };
    if let Some(suffix) = suffix {
        if !out.ends_with(&format!("_{suffix}")) {
            out.push('_');
            out.push_str(&suffix);
        }
    }
    if kind == Kind::Counter && !out.ends_with("_total") {
        out.push_str("_total");
    }
    out
}

fn unit_suffix(unit: &str) -> Option<String> {
    // Drop `{annotations}`.
    let mut plain = String::new();
    let mut depth = 0;
    for c in unit.chars() {
        match c {
            '{' => depth += 1,
            '}' if depth > 0 => depth -= 1,
            _ if depth == 0 => plain.push(c),
            _ => {}
        }
    }
    let plain = plain.trim();
    let (main, per) = match plain.split_once('/') {
        Some((m, p)) => (m.trim(), Some(p.trim())),
        None => (plain, None),
    };
    let main = match main {
        "" | "1" => String::new(),
        m => sanitize_unit(UNITS.iter().find(|(k, _)| *k == m).map_or(m, |(_, v)| v)),
    };
    let per = per.filter(|p| !p.is_empty()).map(|p| {
        sanitize_unit(
            PER_UNITS
                .iter()
                .find(|(k, _)| *k == p)
                .map_or(p, |(_, v)| v),
        )
    });
    let s = match (main.is_empty(), per) {
        (true, None) => return None,
        (false, None) => main,
        (true, Some(p)) => format!("per_{p}"),
        (false, Some(p)) => format!("{main}_per_{p}"),
    };
    (!s.trim_matches('_').is_empty()).then_some(s)
}

fn sanitize_unit(u: &str) -> String {
    u.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

const UNITS: &[(&str, &str)] = &[
    ("d", "days"),
    ("h", "hours"),
    ("min", "minutes"),
    ("s", "seconds"),
    ("ms", "milliseconds"),
    ("us", "microseconds"),
    ("ns", "nanoseconds"),
    ("By", "bytes"),
    ("KiBy", "kibibytes"),
    ("MiBy", "mebibytes"),
    ("GiBy", "gibibytes"),
    ("TiBy", "tebibytes"),
    ("KBy", "kilobytes"),
    ("MBy", "megabytes"),
    ("GBy", "gigabytes"),
    ("TBy", "terabytes"),
    ("m", "meters"),
    ("V", "volts"),
    ("A", "amperes"),
    ("J", "joules"),
    ("W", "watts"),
    ("g", "grams"),
    ("Cel", "celsius"),
    ("Hz", "hertz"),
    ("%", "percent"),
];

const PER_UNITS: &[(&str, &str)] = &[
    ("s", "second"),
    ("m", "minute"),
    ("h", "hour"),
    ("d", "day"),
    ("w", "week"),
    ("mo", "month"),
    ("y", "year"),
];

fn ms(ns: u64) -> i64 {
    (ns / 1_000_000) as i64
}

fn stale() -> f64 {
    f64::from_bits(STALE_NAN)
}

/// A series' delta-state key: the metric's Prometheus name and its labels (no external ones).
fn state_key(name: &str, labels: &Labels) -> String {
    let mut key = name.to_string();
    for (k, v) in labels {
        key.push('\u{0}');
        key.push_str(k);
        key.push('=');
        key.push_str(v);
    }
    key
}

/// How a point's value goes into its series.
enum Accumulate {
    /// A DELTA point: added to the running total.
    Delta(Value),
    /// A CUMULATIVE point of a merged series: turned into the delta since its original
    /// series' previous point, then added.
    Cumulative(Value),
    /// A gauge point of a merged series: the newest point (by data time) wins.
    Newest(f64),
    /// A resource's `target_info` sample (value 1): written unless the series has one as new.
    Info,
}

/// A point that goes through the state, handled once the whole request is walked, in the order
/// it was walked (the spool's).
struct Deferred {
    name: String,
    /// The series' labels, and its original series' (before `drop_labels`) when that is set.
    labels: Labels,
    original: Option<Labels>,
    start_ns: u64,
    time_ns: u64,
    what: Accumulate,
    has_sum: bool,
    position: Option<Position>,
}

/// Whether a point is a DELTA, a CUMULATIVE counter or histogram, or a gauge.
#[derive(Clone, Copy, PartialEq)]
enum Temporality {
    Delta,
    Cumulative,
    Gauge,
}

impl Temporality {
    fn of(aggregation_temporality: i32) -> Temporality {
        if aggregation_temporality == DELTA {
            Temporality::Delta
        } else {
            Temporality::Cumulative
        }
    }
}

impl Out<'_> {
    fn defer(
        &mut self,
        name: &str,
        (labels, original): (Labels, Option<Labels>),
        start_ns: u64,
        time_ns: u64,
        what: Accumulate,
        has_sum: bool,
    ) {
        self.deferred.push(Deferred {
            name: name.to_string(),
            labels,
            original,
            start_ns,
            time_ns,
            what,
            has_sum,
            position: self.position,
        });
    }

    /// Whether a point with these labels goes through the state merged (`drop_labels`).
    /// Counts a gauge that keeps a dropped label instead.
    fn merges(&mut self, labels: &(Labels, Option<Labels>), temporality: Temporality) -> bool {
        let Some(original) = &labels.1 else {
            return false;
        };
        if temporality == Temporality::Gauge && !self.options.merge_gauges {
            if *original != labels.0 {
                self.gauge_points_kept_labels += 1;
            }
            return false;
        }
        true
    }

    /// Runs the deferred points through the state, in spool order, and emits their series'
    /// samples, at the series' time (which never goes back).
    fn accumulate(&mut self, txn: &mut Txn) {
        for d in std::mem::take(&mut self.deferred) {
            let key = state_key(&d.name, &d.labels);
            let original = d.original.as_ref().map(|l| state_key(&d.name, l));
            let (start, time) = (d.start_ns, d.time_ns);
            let delta = match d.what {
                Accumulate::Newest(_) | Accumulate::Info => {
                    let (v, counted) = match d.what {
                        Accumulate::Newest(v) => (v, true),
                        _ => (1.0, false),
                    };
                    if let Some(o) = &original {
                        txn.remember(o, &key, start, time, None);
                    }
                    if let Some(series) = txn.newest(&key, time, v, counted) {
                        let ts = ms(series.last_ns);
                        self.push(&d.name, &d.labels, None, ts, v);
                    }
                    continue;
                }
                _ if !txn.fresh(d.position) => continue,
                Accumulate::Delta(v) => {
                    let o = original.as_deref().unwrap_or(&key);
                    if !txn.new_interval(o, &key, start, time) {
                        continue;
                    }
                    v
                }
                Accumulate::Cumulative(v) => {
                    let o = original.as_deref().unwrap_or(&key);
                    match txn.cumulative_delta(o, &key, start, time, v) {
                        Some(delta) => delta,
                        None => continue,
                    }
                }
            };
            let Some(series) = txn.add(&key, start, time, delta) else {
                continue;
            };
            let ts = ms(series.last_ns);
            match series.value.clone() {
                Value::Sum(v) => self.push(&d.name, &d.labels, None, ts, v),
                Value::Histogram {
                    bounds,
                    counts,
                    sum,
                    count,
                } => {
                    let sum = d.has_sum.then_some(sum);
                    histogram(&d.name, &d.labels, &bounds, &counts, sum, count, ts, self);
                }
                Value::Exponential(e) => {
                    let (bounds, counts) = exponential_buckets(&e);
                    let sum = d.has_sum.then_some(e.sum);
                    histogram(&d.name, &d.labels, &bounds, &counts, sum, e.count, ts, self);
                }
            }
        }
    }
}

/// Translates one metric (points that go through the state are deferred); returns its newest
/// point time (ns).
fn translate_metric(metric: &Metric, out: &mut Out) -> Option<u64> {
    let mut newest = None;
    match &metric.data {
        None => {}
        Some(Data::Gauge(g)) => {
            let name = metric_name(&metric.name, &metric.unit, Kind::Gauge);
            for p in &g.data_points {
                newest = newest.max(Some(p.time_unix_nano));
                number_point(&name, p, Temporality::Gauge, out);
            }
        }
        Some(Data::Sum(s)) => {
            let kind = if s.is_monotonic {
                Kind::Counter
            } else {
                Kind::Gauge
            };
            let name = metric_name(&metric.name, &metric.unit, kind);
            let temporality = match Temporality::of(s.aggregation_temporality) {
                Temporality::Cumulative if !s.is_monotonic => Temporality::Gauge,
                t => t,
            };
            for p in &s.data_points {
                newest = newest.max(Some(p.time_unix_nano));
                number_point(&name, p, temporality, out);
            }
        }
        Some(Data::Histogram(h)) => {
            let name = metric_name(&metric.name, &metric.unit, Kind::Histogram);
            let temporality = Temporality::of(h.aggregation_temporality);
            for p in &h.data_points {
                newest = newest.max(Some(p.time_unix_nano));
                let value = Value::Histogram {
                    bounds: p.explicit_bounds.clone(),
                    counts: p.bucket_counts.clone(),
                    sum: p.sum.unwrap_or(0.0),
                    count: p.count,
                };
                let times = (p.start_time_unix_nano, p.time_unix_nano);
                let point = Point::new(out, &p.attributes, times, p.flags, p.sum.is_some());
                histogram_point(&name, point, temporality, value, out);
            }
        }
        Some(Data::ExponentialHistogram(h)) => {
            let name = metric_name(&metric.name, &metric.unit, Kind::Histogram);
            let temporality = Temporality::of(h.aggregation_temporality);
            for p in &h.data_points {
                newest = newest.max(Some(p.time_unix_nano));
                let times = (p.start_time_unix_nano, p.time_unix_nano);
                let point = Point::new(out, &p.attributes, times, p.flags, p.sum.is_some());
                let value = Value::Exponential(exponential(p));
                histogram_point(&name, point, temporality, value, out);
            }
        }
        Some(Data::Summary(s)) => {
            let name = metric_name(&metric.name, &metric.unit, Kind::Summary);
            for p in &s.data_points {
                // Quantiles cannot be merged: a summary keeps every label (counted).
                let labels = match out.point_labels(&p.attributes) {
                    (kept, Some(original)) => {
                        out.gauge_points_kept_labels += u64::from(original != kept);
                        original
                    }
                    (labels, None) => labels,
                };
                let ts = ms(p.time_unix_nano);
                let no_value = p.flags & NO_RECORDED_VALUE != 0;
                let v = |x: f64| if no_value { stale() } else { x };
                for q in &p.quantile_values {
                    let quantile = Some(("quantile", format_float(q.quantile)));
                    out.push(&name, &labels, quantile, ts, v(q.value));
                }
                out.push(&format!("{name}_sum"), &labels, None, ts, v(p.sum));
                let count = v(p.count as f64);
                out.push(&format!("{name}_count"), &labels, None, ts, count);
                newest = newest.max(Some(p.time_unix_nano));
            }
        }
    }
    newest
}

/// One histogram point, its labels and times.
struct Point {
    labels: (Labels, Option<Labels>),
    start_ns: u64,
    time_ns: u64,
    no_value: bool,
    has_sum: bool,
}

impl Point {
    fn new(
        out: &Out,
        attributes: &[KeyValue],
        (start_ns, time_ns): (u64, u64),
        flags: u32,
        has_sum: bool,
    ) -> Point {
        Point {
            labels: out.point_labels(attributes),
            start_ns,
            time_ns,
            no_value: flags & NO_RECORDED_VALUE != 0,
            has_sum,
        }
    }
}

fn number_point(name: &str, p: &NumberDataPoint, temporality: Temporality, out: &mut Out) {
    let labels = out.point_labels(&p.attributes);
    let value = match p.value {
        Some(Number::AsDouble(d)) => d,
        Some(Number::AsInt(i)) => i as f64,
        None => 0.0,
    };
    let no_value = p.flags & NO_RECORDED_VALUE != 0;
    let (start, time) = (p.start_time_unix_nano, p.time_unix_nano);
    if out.merges(&labels, temporality) {
        let what = match temporality {
            _ if no_value => {
                out.stale_markers_of_merged_series += 1;
                return;
            }
            Temporality::Delta => Accumulate::Delta(Value::Sum(value)),
            Temporality::Cumulative => Accumulate::Cumulative(Value::Sum(value)),
            Temporality::Gauge => Accumulate::Newest(value),
        };
        out.defer(name, labels, start, time, what, false);
        return;
    }
    let labels = labels.1.unwrap_or(labels.0);
    let ts = ms(time);
    if no_value {
        out.push(name, &labels, None, ts, stale());
    } else if temporality == Temporality::Delta {
        let what = Accumulate::Delta(Value::Sum(value));
        out.defer(name, (labels, None), start, time, what, false);
    } else {
        out.push(name, &labels, None, ts, value);
    }
}

fn histogram_point(
    name: &str,
    point: Point,
    temporality: Temporality,
    value: Value,
    out: &mut Out,
) {
    let (start, time, has_sum) = (point.start_ns, point.time_ns, point.has_sum);
    let ts = ms(time);
    let merged = out.merges(&point.labels, temporality);
    if point.no_value {
        if merged {
            out.stale_markers_of_merged_series += 1;
            return;
        }
        let bounds = match &value {
            Value::Exponential(e) => exponential_buckets(e).0,
            Value::Histogram { bounds, .. } => bounds.clone(),
            Value::Sum(_) => unreachable!("a histogram point"),
        };
        histogram_stale(name, &point.labels.0, &bounds, ts, out);
        return;
    }
    match temporality {
        Temporality::Cumulative if merged => {
            let what = Accumulate::Cumulative(value);
            out.defer(name, point.labels, start, time, what, has_sum);
        }
        Temporality::Delta => {
            let what = Accumulate::Delta(value);
            out.defer(name, point.labels, start, time, what, has_sum);
        }
        _ => {
            let labels = &point.labels.0;
            let sum = has_sum.then_some(match &value {
                Value::Histogram { sum, .. } => *sum,
                Value::Exponential(e) => e.sum,
                Value::Sum(_) => unreachable!("a histogram point"),
            });
            let (bounds, counts, count) = match value {
                Value::Histogram {
                    bounds,
                    counts,
                    count,
                    ..
                } => (bounds, counts, count),
                Value::Exponential(e) => {
                    let (bounds, counts) = exponential_buckets(&e);
                    (bounds, counts, e.count)
                }
                Value::Sum(_) => unreachable!("a histogram point"),
            };
            histogram(name, labels, &bounds, &counts, sum, count, ts, out);
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn histogram(
    name: &str,
    labels: &Labels,
    bounds: &[f64],
    counts: &[u64],
    sum: Option<f64>,
    count: u64,
    ts: i64,
    out: &mut Out,
) {
    let bucket = format!("{name}_bucket");
    let mut cumulative = 0u64;
    for (i, bound) in bounds.iter().enumerate() {
        cumulative += counts.get(i).copied().unwrap_or(0);
        out.push(
            &bucket,
            labels,
            Some(("le", format_float(*bound))),
            ts,
            cumulative as f64,
        );
    }
    out.push(
        &bucket,
        labels,
        Some(("le", "+Inf".into())),
        ts,
        count as f64,
    );
    if let Some(sum) = sum {
        out.push(&format!("{name}_sum"), labels, None, ts, sum);
    }
    out.push(&format!("{name}_count"), labels, None, ts, count as f64);
}

fn histogram_stale(name: &str, labels: &Labels, bounds: &[f64], ts: i64, out: &mut Out) {
    let bucket = format!("{name}_bucket");
    for bound in bounds
        .iter()
        .map(|b| format_float(*b))
        .chain(["+Inf".into()])
    {
        out.push(&bucket, labels, Some(("le", bound)), ts, stale());
    }
    out.push(&format!("{name}_sum"), labels, None, ts, stale());
    out.push(&format!("{name}_count"), labels, None, ts, stale());
}

/// An OTLP exponential histogram point in the form the delta state keeps.
fn exponential(p: &ExponentialHistogramDataPoint) -> Exponential {
    let buckets = |b: &Option<Buckets>| {
        b.as_ref()
            .map(|b| cumulative::Buckets {
                offset: i64::from(b.offset),
                counts: b.bucket_counts.clone(),
            })
            .unwrap_or_default()
    };
    Exponential {
        scale: p.scale,
        zero_count: p.zero_count,
        zero_threshold: p.zero_threshold,
        positive: buckets(&p.positive),
        negative: buckets(&p.negative),
        sum: p.sum.unwrap_or(0.0),
        count: p.count,
    }
}

/// An exponential histogram as classic buckets: `(upper bounds, count per bucket)`, without the
/// `+Inf` bucket (its count is the point's count). See the module docs.
pub fn exponential_buckets(e: &Exponential) -> (Vec<f64>, Vec<u64>) {
    let factor = 2f64.powi(-e.scale);
    let bound = |index: i64| (index as f64 * factor).exp2();
    let mut bounds = Vec::new();
    let mut counts = Vec::new();
    // Most negative first: bucket i covers [-base^(i+1), -base^i), upper bound -base^i.
    for (i, c) in e.negative.counts.iter().enumerate().rev() {
        bounds.push(-bound(e.negative.offset + i as i64));
        counts.push(*c);
    }
    bounds.push(e.zero_threshold.max(0.0));
    counts.push(e.zero_count);
    for (i, c) in e.positive.counts.iter().enumerate() {
        bounds.push(bound(e.positive.offset + i as i64 + 1));
        counts.push(*c);
    }
    (bounds, counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_compatibility_spec() {
        assert_eq!(
            metric_name("claude_code.token.usage", "tokens", Kind::Counter),
            "claude_code_token_usage_tokens_total"
        );
        assert_eq!(
            metric_name("claude_code.cost.usage", "USD", Kind::Counter),
            "claude_code_cost_usage_USD_total"
        );
        assert_eq!(
            metric_name("http.server.duration", "ms", Kind::Histogram),
            "http_server_duration_milliseconds"
        );
        assert_eq!(
            metric_name("sent", "By/s", Kind::Gauge),
            "sent_bytes_per_second"
        );
        assert_eq!(metric_name("cpu.util", "1", Kind::Gauge), "cpu_util_ratio");
        assert_eq!(
            metric_name("requests", "{request}", Kind::Counter),
            "requests_total"
        );
        assert_eq!(metric_name("x_total", "1", Kind::Counter), "x_total");
        assert_eq!(metric_name("up_seconds", "s", Kind::Gauge), "up_seconds");
        assert_eq!(metric_name("2xx", "", Kind::Gauge), "_2xx");
        assert_eq!(label_name("http.method"), "http_method");
        assert_eq!(label_name("9lives"), "key_9lives");
        assert_eq!(format_float(0.5), "0.5");
        assert_eq!(format_float(10.0), "10");
        assert_eq!(format_float(1e-7), "0.0000001");
    }

    fn kv(k: &str, v: &str) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue {
                value: Some(Any::StringValue(v.into())),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn labels_resource_identity_target_info_and_stale_points() {
        use opentelemetry_proto::tonic::metrics::v1::{Gauge, ResourceMetrics, ScopeMetrics};
        use opentelemetry_proto::tonic::resource::v1::Resource;
        let point = |time, flags| NumberDataPoint {
            attributes: vec![kv("a.b", "1"), kv("a_b", "2"), kv("job", "ignored")],
            time_unix_nano: time,
            flags,
            value: Some(Number::AsInt(7)),
            ..Default::default()
        };
        let req = ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(Resource {
                    attributes: vec![
                        kv("service.name", "svc"),
                        kv("service.namespace", "ns"),
                        kv("service.instance.id", "i-9"),
                        kv("host.name", "h"),
                    ],
                    ..Default::default()
                }),
                scope_metrics: vec![ScopeMetrics {
                    metrics: vec![Metric {
                        name: "g".into(),
                        data: Some(Data::Gauge(Gauge {
                            data_points: vec![point(2_000_000, 1), point(1_000_000, 0)],
                        })),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let options = Options {
            external: vec![
                Label {
                    name: "cluster".into(),
                    value: "c".into(),
                },
                Label {
                    name: "instance".into(),
                    value: "not-this".into(),
                },
            ],
            drop_labels: Vec::new(),
            merge_gauges: false,
        };
        let state = super::super::cumulative::Cumulative::new(None, Default::default());
        let guard = state.lock().unwrap();
        let mut txn = Txn::new(&guard);
        let t = translate(&req, &[Some((1, 0))], &options, &mut txn);
        let show = |ts: &TimeSeries| {
            ts.labels
                .iter()
                .map(|l| format!("{}={}", l.name, l.value))
                .collect::<Vec<_>>()
                .join(",")
        };
        assert_eq!(t.series.len(), 2);
        let g = &t.series[0];
        assert_eq!(
            show(g),
            "__name__=g,a_b=1;2,cluster=c,instance=i-9,job=ns/svc",
            "colliding attributes joined in key order; identity over attributes and external labels"
        );
        assert_eq!(g.samples.len(), 2);
        assert_eq!(g.samples[0].timestamp, 1, "time order");
        assert_eq!(g.samples[0].value, 7.0);
        assert_eq!(g.samples[1].value.to_bits(), STALE_NAN);
        let info = &t.series[1];
        assert_eq!(
            show(info),
            "__name__=target_info,cluster=c,host_name=h,instance=i-9,job=ns/svc"
        );
        assert_eq!((info.samples[0].timestamp, info.samples[0].value), (2, 1.0));
    }

    #[test]
    fn drop_labels_merges_counters_and_gauges_as_told_and_keeps_summaries() {
        use opentelemetry_proto::tonic::metrics::v1::{
            Gauge, ResourceMetrics, ScopeMetrics, Sum, Summary, SummaryDataPoint,
        };
        use opentelemetry_proto::tonic::resource::v1::Resource;
        const MS: u64 = 1_000_000;
        let number = |session: &str, time, v, flags| NumberDataPoint {
            attributes: vec![kv("session.id", session), kv("k", "v")],
            start_time_unix_nano: MS,
            time_unix_nano: time,
            flags,
            value: Some(Number::AsInt(v)),
            ..Default::default()
        };
        let metric = |name: &str, data| Metric {
            name: name.into(),
            data: Some(data),
            ..Default::default()
        };
        let sum = |points, temporality: AggregationTemporality| {
            Data::Sum(Sum {
                data_points: points,
                aggregation_temporality: temporality as i32,
                is_monotonic: true,
            })
        };
        let req = ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(Resource {
                    attributes: vec![
                        kv("service.name", "svc"),
                        kv("session.id", "r"),
                        kv("host.arch", "arm64"),
                    ],
                    ..Default::default()
                }),
                scope_metrics: vec![ScopeMetrics {
                    metrics: vec![
                        metric(
                            "g",
                            Data::Gauge(Gauge {
                                data_points: vec![number("a", MS, 1, 0), number("b", 2 * MS, 2, 0)],
                            }),
                        ),
                        metric(
                            "c",
                            sum(
                                vec![number("a", MS, 5, 0), number("b", 2 * MS, 7, 0)],
                                AggregationTemporality::Cumulative,
                            ),
                        ),
                        metric(
                            "d",
                            sum(vec![number("a", MS, 0, 1)], AggregationTemporality::Delta),
                        ),
                        metric(
                            "q",
                            Data::Summary(Summary {
                                data_points: vec![SummaryDataPoint {
                                    attributes: vec![kv("session.id", "a")],
                                    time_unix_nano: MS,
                                    ..Default::default()
                                }],
                            }),
                        ),
                    ],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        for merge_gauges in [false, true] {
            let options = Options {
                external: Vec::new(),
                drop_labels: vec!["session.id".into()],
                merge_gauges,
            };
            let state = super::super::cumulative::Cumulative::new(None, Default::default());
            let guard = state.lock().unwrap();
            let mut txn = Txn::new(&guard);
            let t = translate(&req, &[Some((1, 0))], &options, &mut txn);
            let show: Vec<String> = t
                .series
                .iter()
                .map(|ts| {
                    let labels: Vec<String> = ts
                        .labels
                        .iter()
                        .map(|l| format!("{}={}", l.name, l.value))
                        .collect();
                    let samples: Vec<String> = ts
                        .samples
                        .iter()
                        .map(|s| format!("{}@{}", s.value, s.timestamp))
                        .collect();
                    format!("{} {}", labels.join(","), samples.join(" "))
                })
                .filter(|s| !s.starts_with("__name__=q"))
                .collect();
            let gauges = if merge_gauges {
                vec!["__name__=g,job=svc,k=v 1@1 2@2"]
            } else {
                vec![
                    "__name__=g,job=svc,k=v,session_id=a 1@1",
                    "__name__=g,job=svc,k=v,session_id=b 2@2",
                ]
            };
            let mut want = vec!["__name__=c_total,job=svc,k=v 5@1 12@2"];
            want.extend(gauges);
            want.push("__name__=target_info,host_arch=arm64,job=svc 1@2");
            assert_eq!(show, want, "merge_gauges = {merge_gauges}");
            let q = t
                .series
                .iter()
                .find(|ts| ts.labels[0].value == "q_count")
                .unwrap();
            assert!(q.labels.iter().any(|l| l.name == "session_id"), "{q:?}");
            let kept = if merge_gauges { 1 } else { 3 };
            assert_eq!(
                t.gauge_points_kept_labels, kept,
                "the summary, and unmerged gauges"
            );
            assert_eq!(
                txn.ignored.stale_marker_of_merged_series, 1,
                "d's stale point"
            );
        }
    }

    #[test]
    fn exponential_buckets_have_their_own_boundaries() {
        let p = ExponentialHistogramDataPoint {
            scale: 0,
            zero_count: 1,
            zero_threshold: 0.0,
            positive: Some(Buckets {
                offset: 0,
                bucket_counts: vec![2, 3],
            }),
            negative: Some(Buckets {
                offset: 1,
                bucket_counts: vec![4],
            }),
            count: 10,
            ..Default::default()
        };
        let (bounds, counts) = exponential_buckets(&exponential(&p));
        assert_eq!(bounds, vec![-2.0, 0.0, 2.0, 4.0]);
        assert_eq!(counts, vec![4, 1, 2, 3]);
    }
}
