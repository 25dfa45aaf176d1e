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
//! dead-lettered — and is saved before the worker acknowledges the batch (see
//! [`cumulative`]). Labels are sorted by name and samples time-ordered in every series sent.
//! Metrics only: the config refuses other signals for this type, and a batch of another signal
//! is refused here. Touches only its own state tree in the spool.

pub mod cumulative;
pub mod proto;
pub mod translate;

use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use reqwest::header::{HeaderMap, HeaderValue, CONTENT_ENCODING, CONTENT_TYPE};

use super::http;
use super::otlp_http::configured_headers;
use super::{Outcome, Refusal};
use crate::aws::credentials::{CachedCredentials, CredentialSettings};
use crate::aws::sigv4::Signer;
use crate::config::{Destination, RemoteWrite};
use crate::otlp::{ExportMetricsServiceRequest, Signal};
use crate::spool::Spool;
use cumulative::{Cumulative, Txn};
use proto::{Label, WriteRequest};

pub struct PrometheusRemoteWrite {
    client: reqwest::Client,
    url: String,
    headers: HeaderMap,
    signer: Option<Signer>,
    timeout: Duration,
    external: Vec<Label>,
    cumulative: Cumulative,
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
            external,
            cumulative,
        })
    }

    /// Sends one batch once and classifies the answer (see the module docs).
    pub async fn send(&self, signal: Signal, payload: &[u8]) -> Outcome {
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
        let (body, changes, series, ignored) = {
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
            let translated = translate::translate(&request, &self.external, &mut txn);
            let series = translated.series.len();
            let body = WriteRequest {
                timeseries: translated.series,
            }
            .encode_to_vec();
            let ignored = txn.ignored;
            (body, txn.into_changes(), series, ignored)
        };
        if ignored > 0 {
            tracing::info!(
                points = ignored,
                "delta points already counted (a batch sent again) or out of order: ignored"
            );
        }
        let delivered = || Outcome::Delivered {
            rejected_items: 0,
            message: String::new(),
        };
        if series == 0 {
            self.cumulative.commit(changes);
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
                self.cumulative.commit(changes);
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
                    self.cumulative.commit(changes);
                }
                outcome
            }
        }
    }
}
