//! The `otlp_http` destination: one POST of an `Export*ServiceRequest` to `<endpoint>/v1/<signal>`,
//! encoded (protobuf or JSON), compressed (gzip or none), with the configured headers; the
//! answer classified into an [`Outcome`] per the OTLP/HTTP spec.
//!
//! One attempt per call: retrying, splitting and acknowledging are the worker's. Header values
//! are secrets and never logged.

use std::io::Write;
use std::time::Duration;

use flate2::write::GzEncoder;
use prost::Message;
use reqwest::header::{
    HeaderMap, HeaderName, HeaderValue, CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER,
};

use super::retry::parse_retry_after;
use super::Outcome;
use crate::config::{Compression, DestinationConfig, Encoding};
use crate::otlp::{json, RpcStatus, Signal};

pub struct OtlpHttp {
    client: reqwest::Client,
    urls: [String; 3],
    headers: HeaderMap,
    encoding: Encoding,
    compression: Compression,
    timeout: Duration,
}

impl OtlpHttp {
    pub fn new(config: &DestinationConfig) -> Result<OtlpHttp, String> {
        let mut headers = HeaderMap::new();
        for (name, value) in &config.headers {
            let name = HeaderName::try_from(name.as_str()).map_err(|e| {
                format!(
                    "destination {}: header name {name:?} is invalid: {e}",
                    config.name
                )
            })?;
            let mut value = HeaderValue::from_str(value.expose()).map_err(|_| {
                format!(
                    "destination {}: the value of header {name} is not a valid header value",
                    config.name
                )
            })?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        let client = reqwest::Client::builder()
            .user_agent(concat!("otlp-spool/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(config.timeout.min(Duration::from_secs(10)))
            // Idle keep-alive connections die across sleep and network changes; keep them short.
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| {
                format!(
                    "destination {}: building the HTTP client failed: {e}",
                    config.name
                )
            })?;
        Ok(OtlpHttp {
            client,
            urls: Signal::ALL.map(|s| config.endpoint.signal_url(s)),
            headers,
            encoding: config.encoding,
            compression: config.compression,
            timeout: config.timeout,
        })
    }

    pub fn url(&self, signal: Signal) -> &str {
        &self.urls[signal.index()]
    }

    /// Sends `payload` (canonical protobuf) once and classifies the answer.
    pub async fn send(&self, signal: Signal, payload: &[u8]) -> Outcome {
        let (body, content_type) = match self.encoding {
            Encoding::Protobuf => (payload.to_vec(), "application/x-protobuf"),
            Encoding::Json => match json::protobuf_to_json(signal, payload) {
                Ok(body) => (body, "application/json"),
                Err(e) => {
                    return Outcome::Refused(format!(
                        "could not render the batch as OTLP/JSON: {e}"
                    ))
                }
            },
        };
        let mut request = self
            .client
            .post(self.url(signal))
            .timeout(self.timeout)
            .headers(self.headers.clone())
            .header(CONTENT_TYPE, content_type);
        let body = match self.compression {
            Compression::None => body,
            Compression::Gzip => {
                request = request.header(CONTENT_ENCODING, "gzip");
                gzip(&body)
            }
        };
        let response = match request.body(body).send().await {
            Ok(r) => r,
            Err(e) => {
                return Outcome::Retry {
                    retry_after: None,
                    error: describe(&e),
                }
            }
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| parse_retry_after(v.to_str().ok()?));
        let is_json = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        let body = match response.bytes().await {
            Ok(b) => b,
            Err(e) if status.is_success() => {
                // The upstream answered 2xx, so it has the data; only its details were lost.
                tracing::debug!(error = %e, "reading a 2xx response body failed");
                Default::default()
            }
            Err(e) => {
                return Outcome::Retry {
                    retry_after,
                    error: describe(&e),
                }
            }
        };
        let code = status.as_u16();
        let error = || {
            format!(
                "HTTP {status} from {}: {}",
                self.url(signal),
                error_message(&body, is_json)
            )
        };
        match code {
            200..=299 => {
                let (rejected, message) = partial_success(signal, &body, is_json);
                Outcome::Delivered {
                    rejected_items: rejected,
                    message,
                }
            }
            401 | 403 => Outcome::AuthFailed(error()),
            413 => Outcome::TooLarge(error()),
            408 | 429 | 500..=599 => Outcome::Retry {
                retry_after,
                error: error(),
            },
            _ => Outcome::Refused(error()),
        }
    }
}

fn gzip(body: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(
        Vec::with_capacity(body.len() / 4),
        flate2::Compression::fast(),
    );
    encoder
        .write_all(body)
        .expect("writing to a Vec cannot fail");
    encoder.finish().expect("writing to a Vec cannot fail")
}

/// A transport error with its cause chain (reqwest's top level says only "error sending request").
fn describe(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The human part of an error body: a `google.rpc.Status` message if it is one, else its text.
fn error_message(body: &[u8], is_json: bool) -> String {
    if is_json {
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
            if let Some(m) = v.get("message").and_then(|m| m.as_str()) {
                return m.to_string();
            }
        }
    } else if let Ok(status) = RpcStatus::decode(body) {
        if !status.message.is_empty() {
            return status.message;
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        "(empty body)".to_string()
    } else {
        text.chars().take(300).collect()
    }
}

/// Rejected items and the upstream's message from a 2xx `Export*ServiceResponse`.
fn partial_success(signal: Signal, body: &[u8], is_json: bool) -> (u64, String) {
    use opentelemetry_proto::tonic::collector::{logs, metrics, trace};
    if body.is_empty() {
        return (0, String::new());
    }
    let parsed = if is_json {
        json::parse_partial_success_json(signal, body).ok()
    } else {
        match signal {
            Signal::Traces => trace::v1::ExportTraceServiceResponse::decode(body)
                .ok()
                .map(|r| {
                    r.partial_success
                        .map(|p| (p.rejected_spans, p.error_message))
                }),
            Signal::Metrics => metrics::v1::ExportMetricsServiceResponse::decode(body)
                .ok()
                .map(|r| {
                    r.partial_success
                        .map(|p| (p.rejected_data_points, p.error_message))
                }),
            Signal::Logs => logs::v1::ExportLogsServiceResponse::decode(body)
                .ok()
                .map(|r| {
                    r.partial_success
                        .map(|p| (p.rejected_log_records, p.error_message))
                }),
        }
        .map(|p| p.unwrap_or_default())
    };
    match parsed {
        Some((rejected, message)) => (rejected.max(0) as u64, message),
        None => (0, String::new()),
    }
}
