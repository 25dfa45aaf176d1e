//! Counters and the two views of them: `/status` (JSON, also behind `otlp-spool status`) and
//! `/metrics` (Prometheus text).
//!
//! The receiver and the export workers bump counters here; the spool keeps its own usage and
//! drop counts, which are read at render time. Nothing here changes data or decides anything:
//! it only counts and renders. Counters are plain atomics so the hot paths never wait.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::otlp::{PerSignal, Signal};
use crate::spool::Spool;

/// How a request reached the agent.
#[derive(Debug, Clone, Copy)]
pub enum Transport {
    Http,
    Grpc,
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy)]
pub enum Refusal {
    /// Malformed body, bad content type or encoding, wrong path or method.
    Invalid,
    /// Over `max_body` / `max_decompressed`, or larger than the spool.
    TooLarge,
    Unauthorized,
    /// Spool full under `when_full = "reject"`.
    Full,
    /// The spool could not store it (disk failure).
    Storage,
}

#[derive(Default)]
struct SignalCounters {
    http_requests: AtomicU64,
    grpc_requests: AtomicU64,
    items: AtomicU64,
    bytes: AtomicU64,
}

#[derive(Default)]
struct RefusalCounters {
    invalid: AtomicU64,
    too_large: AtomicU64,
    unauthorized: AtomicU64,
    full: AtomicU64,
    storage: AtomicU64,
}

/// What one export worker (one destination, one signal) is doing now.
#[derive(Debug, Clone, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RetryState {
    /// Nothing to send, or sending.
    #[default]
    Ready,
    /// Waiting out a backoff after a retryable failure.
    Backoff {
        consecutive_failures: u64,
        next_attempt_ms: u64,
    },
    /// The upstream refused the credentials (401/403): retrying slowly, data kept.
    AuthFailed {
        consecutive_failures: u64,
        next_attempt_ms: u64,
    },
    /// The upstream cannot be used as configured (it redirects, or its certificate is not
    /// trusted): retrying slowly, data kept, until the config or the upstream changes.
    Held {
        consecutive_failures: u64,
        next_attempt_ms: u64,
    },
}

/// Counters of one export worker.
#[derive(Default)]
pub struct WorkerStats {
    pub sent_items: AtomicU64,
    pub sent_requests: AtomicU64,
    pub attempts: AtomicU64,
    pub failed_attempts: AtomicU64,
    pub partial_rejected_items: AtomicU64,
    pub dead_lettered_items: AtomicU64,
    pub last_success_ms: AtomicU64,
    /// Values the destination's redact rules deleted, hashed and cut in what was sent.
    redacted_deleted: AtomicU64,
    redacted_hashed: AtomicU64,
    redacted_cut: AtomicU64,
    last_error: Mutex<Option<String>>,
    retry: Mutex<RetryState>,
}

impl WorkerStats {
    pub fn set_last_error(&self, error: String) {
        *self.last_error.lock().expect("stats lock") = Some(error);
    }

    pub fn set_retry(&self, state: RetryState) {
        *self.retry.lock().expect("stats lock") = state;
    }

    /// Counts what redaction did to a batch that was sent.
    pub fn redacted(&self, counts: crate::redact::Counts) {
        self.redacted_deleted.fetch_add(counts.deleted, Relaxed);
        self.redacted_hashed.fetch_add(counts.hashed, Relaxed);
        self.redacted_cut.fetch_add(counts.cut, Relaxed);
    }
}

pub struct DestinationStats {
    pub name: String,
    pub kind: &'static str,
    pub endpoint: String,
    pub workers: Vec<(Signal, Arc<WorkerStats>)>,
    /// `prometheus_remote_write` only.
    pub remote_write: Option<Arc<RemoteWriteStats>>,
}

/// What a `prometheus_remote_write` destination's translations came to (`src/export/prw/`).
#[derive(Default)]
pub struct RemoteWriteStats {
    /// Series in the last request sent.
    pub series_written: AtomicU64,
    /// Original series (labels before `drop_labels`) the delta state holds beyond the series
    /// they were summed into.
    pub series_aggregated_away: AtomicU64,
    /// Points that produced no sample, by reason (see `cumulative::Ignored`).
    pub ignored_already_applied: AtomicU64,
    pub ignored_duplicate_interval: AtomicU64,
    pub ignored_older_than_series: AtomicU64,
    pub ignored_stale_marker_of_merged_series: AtomicU64,
    /// Gauge and summary points written with a label `drop_labels` names.
    pub gauge_points_kept_labels: AtomicU64,
}

impl RemoteWriteStats {
    fn status(&self) -> Value {
        json!({
            "series_written": self.series_written.load(Relaxed),
            "series_aggregated_away": self.series_aggregated_away.load(Relaxed),
            "points_ignored": {
                "already_applied": self.ignored_already_applied.load(Relaxed),
                "duplicate_interval": self.ignored_duplicate_interval.load(Relaxed),
                "older_than_series": self.ignored_older_than_series.load(Relaxed),
                "stale_marker_of_merged_series": self.ignored_stale_marker_of_merged_series.load(Relaxed),
            },
            "gauge_points_kept_labels": self.gauge_points_kept_labels.load(Relaxed),
        })
    }
}

/// What an agent without destinations says, in its log and in `/status`.
pub const HOLDING: &str = "no destination is configured: holding received data in the spool \
                           (bounded by spool.max_bytes and spool.max_age) until one is added";

/// How an error and what to do about it are joined in the text `status` shows, so that
/// [`split_advice`] can tell them apart again.
const ADVICE_SEPARATOR: &str = " — ";

/// `error`, followed by what to do about it.
pub fn with_advice(error: &str, advice: &str) -> String {
    format!("{error}{ADVICE_SEPARATOR}{advice}")
}

/// An error text as [`with_advice`] made it: the error, and the advice if it has one.
pub fn split_advice(text: &str) -> (&str, Option<&str>) {
    match text.split_once(ADVICE_SEPARATOR) {
        Some((error, advice)) => (error, Some(advice)),
        None => (text, None),
    }
}

/// What to do about a worker's state, for `status`: the advice its last error carries (an
/// upstream's known error, an untrusted certificate, where SigV4 credentials came from), else
/// what the state itself calls for; for a worker that is fine, where to see the dead letters it
/// made while some are held. `None` when there is nothing to do.
fn advice(
    destination: &str,
    retry: &RetryState,
    last_error: Option<&str>,
    dead_letters_held: bool,
) -> Option<String> {
    let carried = last_error.and_then(|e| split_advice(e).1);
    let fallback = match retry {
        RetryState::Backoff { .. } => {
            "the upstream cannot be reached or is failing: check its endpoint and the network; \
             the data is kept and retried with backoff until spool.max_age"
        }
        RetryState::AuthFailed { .. } => {
            "the upstream refuses the credentials: fix this destination's headers or \
             credentials, then reload (SIGHUP, or `systemctl reload otlp-spool`); the data is \
             kept and retried every retry.max"
        }
        RetryState::Held { .. } => {
            "the upstream cannot be used as configured (see the error): fix this destination's \
             settings, then reload; the data is held and retried every retry.max"
        }
        RetryState::Ready if dead_letters_held => {
            return Some(format!(
                "the upstream refused data for good: `otlp-spool dead-letters list --destination \
                 {destination}` shows it and why; after a fix, `otlp-spool dead-letters replay \
                 --all` sends it again"
            ))
        }
        RetryState::Ready => return None,
    };
    Some(carried.unwrap_or(fallback).to_string())
}

/// Everything the agent counts.
pub struct Stats {
    started: Instant,
    received: PerSignal<SignalCounters>,
    refused: RefusalCounters,
    /// Replaced as a whole when a config reload changes the destinations.
    destinations: Mutex<Vec<DestinationStats>>,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Default for Stats {
    /// Counting from now, with no destinations yet.
    fn default() -> Stats {
        Stats {
            started: Instant::now(),
            received: Default::default(),
            refused: Default::default(),
            destinations: Mutex::new(Vec::new()),
        }
    }
}

impl Stats {
    pub fn set_destinations(&self, destinations: Vec<DestinationStats>) {
        *self.destinations.lock().expect("stats lock") = destinations;
    }

    /// The counters of a running worker, so that a worker restarted by a reload keeps counting
    /// where it left off.
    pub fn worker(&self, destination: &str, signal: Signal) -> Option<Arc<WorkerStats>> {
        let destinations = self.destinations.lock().expect("stats lock");
        let d = destinations.iter().find(|d| d.name == destination)?;
        let (_, w) = d.workers.iter().find(|(s, _)| *s == signal)?;
        Some(Arc::clone(w))
    }

    /// A running `prometheus_remote_write` destination's counters (kept across a reload).
    pub fn remote_write(&self, destination: &str) -> Option<Arc<RemoteWriteStats>> {
        let destinations = self.destinations.lock().expect("stats lock");
        let d = destinations.iter().find(|d| d.name == destination)?;
        d.remote_write.clone()
    }

    pub fn received(&self, signal: Signal, transport: Transport, items: u64, bytes: u64) {
        let c = &self.received[signal];
        match transport {
            Transport::Http => c.http_requests.fetch_add(1, Relaxed),
            Transport::Grpc => c.grpc_requests.fetch_add(1, Relaxed),
        };
        c.items.fetch_add(items, Relaxed);
        c.bytes.fetch_add(bytes, Relaxed);
    }

    pub fn refused(&self, why: Refusal) {
        let r = &self.refused;
        match why {
            Refusal::Invalid => &r.invalid,
            Refusal::TooLarge => &r.too_large,
            Refusal::Unauthorized => &r.unauthorized,
            Refusal::Full => &r.full,
            Refusal::Storage => &r.storage,
        }
        .fetch_add(1, Relaxed);
    }

    /// The `/status` document.
    pub fn status(&self, spool: &Spool) -> Value {
        let now = now_ms();
        let usage = spool.usage();
        let received: serde_json::Map<String, Value> = self
            .received
            .iter()
            .map(|(s, c)| {
                (
                    s.name().to_string(),
                    json!({
                        "http_requests": c.http_requests.load(Relaxed),
                        "grpc_requests": c.grpc_requests.load(Relaxed),
                        "items": c.items.load(Relaxed),
                        "bytes": c.bytes.load(Relaxed),
                    }),
                )
            })
            .collect();
        let destinations: Vec<Value> = self
            .destinations
            .lock()
            .expect("stats lock")
            .iter()
            .map(|d| {
                let signals: serde_json::Map<String, Value> = d
                    .workers
                    .iter()
                    .map(|(signal, w)| {
                        let pending = spool.pending(&d.name, *signal);
                        let last_success = w.last_success_ms.load(Relaxed);
                        let last_error = w.last_error.lock().expect("stats lock").clone();
                        let retry = w.retry.lock().expect("stats lock").clone();
                        let dead_lettered = w.dead_lettered_items.load(Relaxed);
                        let advice = advice(
                            &d.name,
                            &retry,
                            last_error.as_deref(),
                            dead_lettered > 0 && usage.dead_letter_records > 0,
                        );
                        (
                            signal.name().to_string(),
                            json!({
                                "pending_records": pending.records,
                                "pending_bytes": pending.bytes,
                                "oldest_pending_age_seconds": pending.oldest_ms.map(|t| now.saturating_sub(t) as f64 / 1000.0),
                                "sent_items": w.sent_items.load(Relaxed),
                                "sent_requests": w.sent_requests.load(Relaxed),
                                "attempts": w.attempts.load(Relaxed),
                                "failed_attempts": w.failed_attempts.load(Relaxed),
                                "partial_rejected_items": w.partial_rejected_items.load(Relaxed),
                                "dead_lettered_items": dead_lettered,
                                "redacted_deleted": w.redacted_deleted.load(Relaxed),
                                "redacted_hashed": w.redacted_hashed.load(Relaxed),
                                "redacted_cut": w.redacted_cut.load(Relaxed),
                                "last_success_ms": (last_success > 0).then_some(last_success),
                                "last_error": last_error,
                                "retry": retry,
                                "advice": advice,
                            }),
                        )
                    })
                    .collect();
                let mut destination = json!({
                    "name": d.name,
                    "type": d.kind,
                    "endpoint": d.endpoint,
                    "signals": signals,
                });
                if let Some(rw) = &d.remote_write {
                    destination["remote_write"] = rw.status();
                }
                destination
            })
            .collect();
        let r = &self.refused;
        let mut status = json!({
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_seconds": self.started.elapsed().as_secs(),
            "spool": {
                "dir": spool.dir(),
                "records": usage.records,
                "bytes": usage.bytes,
                "disk_bytes": usage.disk_bytes,
                "max_bytes": usage.max_bytes,
                "disk_cap": usage.disk_cap,
                "dead_letter_records": usage.dead_letter_records,
                "dead_letter_bytes": usage.dead_letter_bytes,
                "dead_letter_replays_pending": usage.dead_letter_replays_pending,
                "dead_letter_capped_records": usage.dead_letter_capped_records,
                "dead_letter_capped_items": usage.dead_letter_capped_items,
                "damaged_records": usage.dropped.unreadable_records,
                "streams": usage.streams,
                "healthy": spool.healthy(),
                "storage_error": usage.storage_error,
                "reopens": usage.reopens,
                "quarantined": usage.quarantined,
                "quarantines": u64::from(usage.quarantined.is_some()),
                "truncated": usage.truncated,
                "truncations": u64::from(usage.truncated.is_some()),
            },
            "received": received,
            "refused_requests": {
                "invalid": r.invalid.load(Relaxed),
                "too_large": r.too_large.load(Relaxed),
                "unauthorized": r.unauthorized.load(Relaxed),
                "full": r.full.load(Relaxed),
                "storage": r.storage.load(Relaxed),
            },
            "dropped": usage.dropped,
            "destinations": destinations,
        });
        if destinations.is_empty() {
            status["holding"] = json!(HOLDING);
        }
        status
    }

    /// The same numbers as `/status`, in Prometheus text exposition format.
    pub fn prometheus(&self, spool: &Spool) -> String {
        let status = self.status(spool);
        let mut out = String::new();
        let mut metric = |name: &str, help: &str, kind: &str, samples: Vec<(String, f64)>| {
            let _ = writeln!(
                out,
                "# HELP otlp_spool_{name} {help}\n# TYPE otlp_spool_{name} {kind}"
            );
            for (labels, value) in samples {
                let _ = writeln!(out, "otlp_spool_{name}{labels} {value}");
            }
        };
        let num = |v: &Value| v.as_f64().unwrap_or(0.0);
        let spool_s = &status["spool"];
        metric(
            "uptime_seconds",
            "Seconds since the agent started.",
            "gauge",
            vec![(String::new(), num(&status["uptime_seconds"]))],
        );
        for (key, help) in [
            ("records", "Records held in the spool."),
            ("bytes", "Logical bytes held in the spool."),
            ("disk_bytes", "Bytes the spool's files take on disk."),
            ("max_bytes", "The spool's logical byte cap."),
            ("dead_letter_records", "Dead letters held."),
            (
                "dead_letter_capped_records",
                "Dead letters the dead-letter cap deleted before they were purged or replayed, over the spool's life.",
            ),
            (
                "damaged_records",
                "Damaged spool records skipped since the start (their data is lost).",
            ),
            (
                "reopens",
                "Times the spool was reopened after a storage failure since the start.",
            ),
            (
                "quarantines",
                "1 if this start moved a corrupt spool directory aside (see /status spool.quarantined).",
            ),
            (
                "truncations",
                "1 if this start found the spool's database without acknowledged writes (see /status spool.truncated).",
            ),
        ] {
            metric(
                &format!("spool_{key}"),
                help,
                "gauge",
                vec![(String::new(), num(&spool_s[key]))],
            );
        }
        for (key, help) in [
            ("segments", "Segment files of each spool stream."),
            (
                "disk_bytes",
                "Bytes each spool stream's segment files take.",
            ),
        ] {
            let samples = ["traces", "metrics", "logs", "dead_letter"]
                .iter()
                .map(|stream| {
                    (
                        format!("{{stream=\"{stream}\"}}"),
                        num(&spool_s["streams"][stream][key]),
                    )
                })
                .collect();
            metric(&format!("spool_stream_{key}"), help, "gauge", samples);
        }
        for (key, help) in [
            ("items", "Items (spans, data points, log records) accepted."),
            ("http_requests", "OTLP/HTTP requests accepted."),
            ("grpc_requests", "OTLP/gRPC requests accepted."),
            (
                "bytes",
                "Request payload bytes accepted (canonical protobuf).",
            ),
        ] {
            let samples = Signal::ALL
                .iter()
                .map(|s| {
                    (
                        format!("{{signal=\"{}\"}}", s.name()),
                        num(&status["received"][s.name()][key]),
                    )
                })
                .collect();
            metric(&format!("received_{key}_total"), help, "counter", samples);
        }
        let refused = status["refused_requests"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        metric(
            "refused_requests_total",
            "Requests refused, by reason.",
            "counter",
            refused
                .iter()
                .map(|(k, v)| (format!("{{reason=\"{k}\"}}"), num(v)))
                .collect(),
        );
        let dropped = status["dropped"].as_object().cloned().unwrap_or_default();
        metric(
            "dropped_total",
            "Records and items that left the spool undelivered, by reason and unit.",
            "counter",
            dropped
                .iter()
                .map(|(k, v)| {
                    let (reason, unit) = k.rsplit_once('_').unwrap_or((k, ""));
                    (format!("{{reason=\"{reason}\",unit=\"{unit}\"}}"), num(v))
                })
                .collect(),
        );
        for (key, kind, help) in [
            (
                "pending_records",
                "gauge",
                "Records a destination has yet to send.",
            ),
            (
                "pending_bytes",
                "gauge",
                "Bytes a destination has yet to send.",
            ),
            (
                "oldest_pending_age_seconds",
                "gauge",
                "Age in seconds of the oldest record a destination has yet to send.",
            ),
            ("sent_items", "counter", "Items a destination acknowledged."),
            (
                "sent_requests",
                "counter",
                "Requests a destination acknowledged.",
            ),
            ("attempts", "counter", "Upstream requests attempted."),
            (
                "failed_attempts",
                "counter",
                "Upstream requests that failed.",
            ),
            (
                "partial_rejected_items",
                "counter",
                "Items an upstream rejected in a partial success.",
            ),
            (
                "dead_lettered_items",
                "counter",
                "Items an upstream refused as malformed (dead-lettered).",
            ),
            (
                "redacted_deleted",
                "counter",
                "Attribute values the destination's redact rules deleted from what it was sent.",
            ),
            (
                "redacted_hashed",
                "counter",
                "Attribute values the destination's redact rules replaced by a keyed token.",
            ),
            (
                "redacted_cut",
                "counter",
                "String values the destination's redact rules cut to max_string.",
            ),
        ] {
            let mut samples = Vec::new();
            for d in status["destinations"].as_array().into_iter().flatten() {
                for (signal, w) in d["signals"].as_object().into_iter().flatten() {
                    let labels = format!(
                        "{{destination=\"{}\",signal=\"{signal}\"}}",
                        d["name"].as_str().unwrap_or("")
                    );
                    samples.push((labels, num(&w[key])));
                }
            }
            let name = if kind == "counter" {
                format!("destination_{key}_total")
            } else {
                format!("destination_{key}")
            };
            metric(&name, help, kind, samples);
        }
        let remote_writes: Vec<(&str, &Value)> = status["destinations"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|d| Some((d["name"].as_str()?, d.get("remote_write")?)))
            .collect();
        if remote_writes.is_empty() {
            return out;
        }
        for (key, help, kind) in [
            (
                "series_written",
                "Series in the last remote-write request.",
                "gauge",
            ),
            (
                "series_aggregated_away",
                "Original series summed into another by drop_labels.",
                "gauge",
            ),
            (
                "gauge_points_kept_labels",
                "Gauge and summary points written with a label drop_labels names.",
                "counter",
            ),
        ] {
            let samples = remote_writes
                .iter()
                .map(|(d, rw)| (format!("{{destination=\"{d}\"}}"), num(&rw[key])))
                .collect();
            let name = match kind {
                "counter" => format!("remote_write_{key}_total"),
                _ => format!("remote_write_{key}"),
            };
            metric(&name, help, kind, samples);
        }
        let mut ignored = Vec::new();
        for (d, rw) in &remote_writes {
            for (reason, n) in rw["points_ignored"].as_object().into_iter().flatten() {
                let labels = format!("{{destination=\"{d}\",reason=\"{reason}\"}}");
                ignored.push((labels, num(n)));
            }
        }
        metric(
            "remote_write_points_ignored_total",
            "Points that produced no remote-write sample, by reason.",
            "counter",
            ignored,
        );
        out
    }
}
