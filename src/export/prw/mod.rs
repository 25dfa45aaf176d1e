//! The `prometheus_remote_write` destination: OTLP metrics as Prometheus remote write 1.0.
//!
//! One attempt per [`PrometheusRemoteWrite::send`]: decode the batch (canonical OTLP protobuf,
//! concatenated requests merge), translate it ([`translate`]) against the delta state
//! ([`cumulative`]), encode a [`proto::WriteRequest`], compress it as a raw snappy block, and
//! POST it to `endpoint` as written (nothing appended) with `Content-Encoding: snappy`,
//! `Content-Type: application/x-protobuf`, `X-Prometheus-Remote-Write-Version: 0.1.0`, signed
//! with SigV4 when `sigv4` is set (`service = "aps"` for Amazon Managed Service for
//! Prometheus; the signer is [`crate::aws::sigv4`]), through [`super::http`] (no redirects, a
//! capped answer). The answer is classified for the worker: 2xx delivered; 408, 429, 5xx and
//! connection failures retried; 401/403, 3xx and untrusted certificates held; 413 split; any
//! other 4xx refused (dead-lettered). Prometheus answers 400 to samples it will never take
//! (out of order, out of bounds), so retrying those would never end.
//!
//! Invariants: the delta state moves only when a batch is settled — delivered, or refused and
//! dead-lettered — and is saved, with the spool position of the last resource applied, before
//! the worker acknowledges the batch (see [`cumulative`]); the worker says which resources of
//! the batch each record holds ([`Source`]), so each resource's position is known without
//! decoding twice. A replayed dead letter's points were applied when it was refused: they are not
//! added again. Labels are sorted by name and samples time-ordered in every series sent.
//! Metrics only: the config refuses other signals for this type, and a batch of another signal
//! is refused here. Touches only its own state tree in the spool.

pub mod cumulative;
pub mod proto;
pub mod translate;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use reqwest::header::{HeaderMap, HeaderValue, CONTENT_ENCODING, CONTENT_TYPE};

use super::http;
use super::otlp_http::configured_headers;
use super::{Outcome, Refusal, Source};
use crate::aws::credentials::{CachedCredentials, CredentialSettings};
use crate::aws::sigv4::Signer;
use crate::config::{Destination, DropLabelsGauges, RemoteWrite};
use crate::observe::RemoteWriteStats;
use crate::otlp::{entry_offsets, ExportMetricsServiceRequest, Signal};
use crate::spool::Spool;
use cumulative::{Cumulative, Ignored, Position, Txn};
use proto::{Label, WriteRequest};

pub struct PrometheusRemoteWrite {
    client: reqwest::Client,
    url: String,
    headers: HeaderMap,
    signer: Option<Signer>,
    timeout: Duration,
    options: translate::Options,
    cumulative: Cumulative,
    stats: Arc<RemoteWriteStats>,
}

impl PrometheusRemoteWrite {
    /// Builds the client; the delta state lives in the spool tree `state/prw/<destination>`, read at
    /// the first send.
    pub fn new(
        config: &Destination,
        settings: &RemoteWrite,
        spool: &Spool,
    ) -> Result<PrometheusRemoteWrite, String> {
        // The names were checked when the config was loaded.
        let external = settings
            .external_labels
            .iter()
            .map(|(k, v)| Label {
                name: k.clone(),
                value: v.clone(),
            })
            .collect();
        let (spool, destination) = (spool.clone(), config.name.to_string());
        let tree = Box::new(move || spool.state_tree(&destination, "prw"));
        let stale_after = settings
            .stale_after
            .unwrap_or(cumulative::DEFAULT_STALE_AFTER);
        let cumulative = Cumulative::new(Some(tree), stale_after);
        let mut headers = configured_headers(config)?;
        headers.insert(CONTENT_ENCODING, HeaderValue::from_static("snappy"));
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-protobuf"),
        );
        headers.insert(
            "x-prometheus-remote-write-version",
            HeaderValue::from_static("0.1.0"),
        );
        let signer = settings.sigv4.as_ref().map(|sigv4| {
            let credentials = Arc::new(CachedCredentials::new(CredentialSettings::new(
                &sigv4.credentials,
                &sigv4.region,
            )));
            Signer::new(&sigv4.region, &sigv4.service, credentials)
        });
        let client = http::client(config)?;
        Ok(PrometheusRemoteWrite {
            client,
            url: settings.endpoint.as_str().to_string(),
            headers,
            signer,
            timeout: config.timeout,
            options: translate::Options {
                external,
                drop_labels: settings
                    .drop_labels
                    .as_ref()
                    .map_or_else(Vec::new, |drop| drop.labels.clone()),
                merge_gauges: settings
                    .drop_labels
                    .as_ref()
                    .is_some_and(|drop| drop.gauges == DropLabelsGauges::Last),
            },
            cumulative,
            stats: Arc::default(),
        })
    }

    /// The counters `/status` shows for this destination.
    pub fn stats(&self) -> Arc<RemoteWriteStats> {
        Arc::clone(&self.stats)
    }

    /// Sends one batch once and classifies the answer (see the module docs).
    pub async fn send(&self, signal: Signal, payload: &[u8], source: Source<'_>) -> Outcome {
        if signal != Signal::Metrics {
            return Outcome::Refused(Refusal::local(format!(
                "prometheus_remote_write carries metrics only, not {}",
                signal.name()
            )));
        }
        let request = match ExportMetricsServiceRequest::decode(payload) {
            Ok(r) => r,
            Err(e) => {
                return Outcome::Refused(Refusal::local(format!(
                    "stored batch is not OTLP metrics: {e}"
                )))
            }
        };
        let Some(positions) = positions(payload, source) else {
            return Outcome::Refused(Refusal::local(
                "stored batch is not OTLP metrics: not a sequence of resources".to_string(),
            ));
        };
        let (body, changes, series, ignored, kept_labels) = {
            let state = match self.cumulative.lock() {
                Ok(state) => state,
                Err(e) => {
                    return Outcome::Retry {
                        retry_after: None,
                        error: format!("reading the delta state from the spool: {e}"),
                    }
                }
            };
            let mut txn = Txn::new(&state);
            let translated = translate::translate(&request, &positions, &self.options, &mut txn);
            let series = translated.series.len();
            let body = WriteRequest {
                timeseries: translated.series,
            }
            .encode_to_vec();
            let ignored = txn.ignored;
            let kept = translated.gauge_points_kept_labels;
            (body, txn.into_changes(), series, ignored, kept)
        };
        if ignored.already_applied + ignored.duplicate_interval > 0 {
            tracing::info!(
                resent_by_the_agent = ignored.already_applied,
                resent_by_a_client = ignored.duplicate_interval,
                "delta points already counted (a batch sent again): ignored"
            );
        }
        if ignored.older_than_series > 0 {
            tracing::info!(
                points = ignored.older_than_series,
                "cumulative or merged gauge points older than their series' last point: ignored"
            );
        }
        // Counted when the batch is settled (its changes committed), not per attempt.
        let settle = |changes| {
            self.cumulative.commit(changes);
            self.count(series, &ignored, kept_labels);
        };
        let delivered = || Outcome::Delivered {
            rejected_items: 0,
            message: String::new(),
        };
        if series == 0 {
            settle(changes);
            return delivered();
        }
        let body = match snap::raw::Encoder::new().compress_vec(&body) {
            Ok(b) => b,
            Err(e) => {
                return Outcome::Refused(Refusal::local(format!("snappy compression failed: {e}")))
            }
        };
        let headers = self.headers.clone();
        let signer = self.signer.as_ref();
        let answer =
            match http::post(&self.client, &self.url, self.timeout, headers, body, signer).await {
                Ok(answer) => answer,
                Err(failure) => return failure,
            };
        let message = String::from_utf8_lossy(&answer.body);
        let error = || answer.error(&self.url, &message);
        match answer.status.as_u16() {
            200..=299 => {
                settle(changes);
                delivered()
            }
            code => {
                let outcome = Outcome::from_failure_status(
                    code,
                    answer.retry_after,
                    http::clean_message(&message),
                    error(),
                );
                if matches!(outcome, Outcome::Refused(_)) {
                    // Refused for good and dead-lettered: the deltas still happened, so the
                    // running totals keep them.
                    settle(changes);
                }
                outcome
            }
        }
    }
}

impl PrometheusRemoteWrite {
    /// Updates the `/status` counters after a settled batch.
    fn count(&self, series: usize, ignored: &Ignored, gauge_points_kept_labels: u64) {
        let s = &self.stats;
        s.series_written.store(series as u64, Relaxed);
        if let Ok(state) = self.cumulative.lock() {
            let away = state.aggregated_away() as u64;
            s.series_aggregated_away.store(away, Relaxed);
        }
        s.ignored_already_applied
            .fetch_add(ignored.already_applied, Relaxed);
        s.ignored_duplicate_interval
            .fetch_add(ignored.duplicate_interval, Relaxed);
        s.ignored_older_than_series
            .fetch_add(ignored.older_than_series, Relaxed);
        s.ignored_stale_marker_of_merged_series
            .fetch_add(ignored.stale_marker_of_merged_series, Relaxed);
        s.gauge_points_kept_labels
            .fetch_add(gauge_points_kept_labels, Relaxed);
    }
}

/// The spool position of each resource of `payload` (see [`Source`]); `None` for each of a
/// replay's. `None` when the payload is not a sequence of resources.
pub(super) fn positions(payload: &[u8], source: Source<'_>) -> Option<Vec<Option<Position>>> {
    let resources = entry_offsets(payload)?.len();
    let Source::Stream {
        records,
        first_resource,
    } = source
    else {
        return Some(vec![None; resources]);
    };
    let position = |at: usize| {
        // The record the resource is in: the last one whose first resource is at or before it.
        let i = records.partition_point(|(_, first)| *first <= at);
        let (seq, first) = records[i.checked_sub(1)?];
        Some((seq, (at - first) as u64))
    };
    let batch_indexes = first_resource..first_resource + resources;
    Some(batch_indexes.map(position).collect())
}
