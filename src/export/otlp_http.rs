//! The `otlp_http` destination: one POST of an `Export*ServiceRequest` to `<endpoint>/v1/<signal>`,
//! encoded (protobuf or JSON), compressed (gzip or none), with the configured headers; the
//! answer classified into an [`Outcome`] per the OTLP/HTTP spec. Sent and read through
//! [`super::http`]: redirects are not followed, at most a capped prefix of an answer is read.
//!
//! One attempt per call: retrying, splitting and acknowledging are the worker's. Header values
//! are secrets and never logged.
//!
//! The client is generic over where each signal goes: a [`Route`] per signal (URL, extra
//! headers, an optional SigV4 [`Signer`]) and an optional `explain` hook that adds the fix to
//! an upstream's known errors. `otlp_http` routes every signal to `<endpoint>/v1/<signal>`
//! (signed when `sigv4` is set); the `cloudwatch` type ([`super::cloudwatch`]) builds the same
//! client with its three AWS endpoints. A request is signed after it is encoded and compressed,
//! over the exact bytes sent, on every attempt.

use std::borrow::Cow;
use std::io::Write;
use std::time::Duration;

use flate2::write::GzEncoder;
use prost::Message;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_ENCODING, CONTENT_TYPE};

use super::{http, Outcome, Refusal};
use crate::aws::credentials::{CachedCredentials, CredentialSettings};
use crate::aws::sigv4::Signer;
use crate::config::{
    mask_url_credentials, Compression, Destination, Encoding, OtlpFormat, OtlpHttp as Settings,
};
use crate::observe::with_advice;
use crate::otlp::{json, PerSignal, RpcStatus, Signal};

pub struct OtlpHttp {
    client: reqwest::Client,
    /// Indexed by [`Signal::index`].
    routes: PerSignal<Route>,
    encoding: Encoding,
    compression: Compression,
    timeout: Duration,
    explain: Explain,
}

/// Where one signal's requests go and how they are authenticated.
pub struct Route {
    pub url: String,
    /// Sent with every request of this signal (the configured headers included).
    pub headers: HeaderMap,
    pub signer: Option<Signer>,
}

/// Adds what to do to an upstream's error: `(signal, HTTP status, error text)` → the advice,
/// and whether the batch should be held and retried (a missing log group is a setting to fix,
/// not bad data to dead-letter).
pub type Explain = fn(Signal, u16, &str) -> Option<Advice>;

pub struct Advice {
    pub hint: &'static str,
    pub hold: bool,
}

impl OtlpHttp {
    pub fn new(config: &Destination, settings: &Settings) -> Result<OtlpHttp, String> {
        let headers = configured_headers(config)?;
        let credentials = settings.sigv4.as_ref().map(|sigv4| {
            std::sync::Arc::new(CachedCredentials::new(CredentialSettings::new(
                &sigv4.credentials,
                &sigv4.region,
            )))
        });
        let routes = PerSignal::from_fn(|s| Route {
            url: settings.endpoint.signal_url(s),
            headers: headers.clone(),
            signer: settings
                .sigv4
                .as_ref()
                .zip(credentials.clone())
                .map(|(sigv4, c)| Signer::new(&sigv4.region, &sigv4.service, c)),
        });
        OtlpHttp::with_routes(config, settings.format, routes, |_, _, _| None)
    }

    /// A client sending each signal along its route, with `format`'s encoding and compression
    /// and `config`'s timeout.
    pub fn with_routes(
        config: &Destination,
        format: OtlpFormat,
        routes: PerSignal<Route>,
        explain: Explain,
    ) -> Result<OtlpHttp, String> {
        let client = http::client(config)?;
        Ok(OtlpHttp {
            client,
            routes,
            encoding: format.encoding,
            compression: format.compression,
            timeout: config.timeout,
            explain,
        })
    }

    /// Sends `payload` (canonical protobuf) once and classifies the answer.
    pub async fn send(&self, signal: Signal, payload: &[u8]) -> Outcome {
        // Borrowed as is for protobuf: gzip reads it directly, and only an uncompressed body
        // is copied (reqwest owns what it sends).
        let (body, content_type) = match self.encoding {
            Encoding::Protobuf => (Cow::Borrowed(payload), "application/x-protobuf"),
            Encoding::Json => match json::protobuf_to_json(signal, payload) {
                Ok(body) => (Cow::Owned(body), "application/json"),
                Err(e) => {
                    return Outcome::Refused(Refusal::local(format!(
                        "could not render the batch as OTLP/JSON: {e}"
                    )))
                }
            },
        };
        let route = &self.routes[signal];
        let mut headers = route.headers.clone();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        let body = match self.compression {
            Compression::None => body.into_owned(),
            Compression::Gzip => {
                headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
                gzip(&body)
            }
        };
        let signer = route.signer.as_ref();
        let answer = match http::post(
            &self.client,
            &route.url,
            self.timeout,
            headers,
            body,
            signer,
        )
        .await
        {
            Ok(answer) => answer,
            Err(failure) => return failure,
        };
        let code = answer.status.as_u16();
        if let (200..=299, Some(cut)) = (code, &answer.body_cut) {
            // The upstream answered 2xx, so it has the data; only its details were lost.
            tracing::debug!(url = %mask_url_credentials(&route.url), "2xx response body {cut}");
        }
        if let 200..=299 = code {
            let (rejected, message) = partial_success(signal, &answer.body, answer.is_json);
            return Outcome::Delivered {
                rejected_items: rejected,
                message,
            };
        }
        let message = error_message(&answer.body, answer.is_json);
        let advice = (self.explain)(signal, code, &message);
        let signed = match (code, &route.signer) {
            (401 | 403, Some(signer)) => Some(format!(
                "signed with {}",
                signer.credentials().refused_hint()
            )),
            _ => None,
        };
        let text = answer.error(&route.url, &message);
        let error = match (advice.as_ref().map(|a| a.hint), signed) {
            (Some(hint), Some(signed)) => with_advice(&text, &format!("{hint}; {signed}")),
            (Some(hint), None) => with_advice(&text, hint),
            (None, Some(signed)) => with_advice(&text, &signed),
            (None, None) => text,
        };
        match code {
            400..=499 if advice.is_some_and(|a| a.hold) => Outcome::Held(error),
            _ => Outcome::from_failure_status(
                code,
                answer.retry_after,
                http::clean_message(&message),
                error,
            ),
        }
    }
}

/// The configured `headers`, checked, values marked sensitive.
pub fn configured_headers(config: &Destination) -> Result<HeaderMap, String> {
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
    Ok(headers)
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

/// The human part of an error body: a `google.rpc.Status` message if it is one, else its text
/// (shortened and cleaned by [`http::Answer::error`]).
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
    String::from_utf8_lossy(body).into_owned()
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
