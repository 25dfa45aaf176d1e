//! The HTTP every upstream client shares: the one place a [`reqwest::Client`] is built, one
//! exchange with an upstream ([`post`]: sign, send, then read the answer), and how a failed
//! exchange reads in `status`.
//!
//! Invariants:
//! - Redirects are never followed. reqwest's default would turn a POST answered 301, 302 or 303
//!   into a GET without the body, which the next server may well answer 200 — a batch counted
//!   delivered that no upstream got — and would re-POST a 307/308, configured headers (an
//!   `x-api-key`) included, wherever the upstream points. A 3xx is [`Outcome::Held`] instead:
//!   the data stays, the attempt is retried at the slow pace, and `status` says where the
//!   upstream pointed, so the endpoint can be corrected.
//! - At most [`MAX_RESPONSE_BODY`] bytes of an answer are read: a longer (or endless) body is
//!   cut there and its connection dropped. The destination's `timeout` bounds the whole
//!   exchange, body included, so an answer trickling in ends there too.
//! - A certificate the client does not trust is held like a redirect (a setting to fix, or a
//!   TLS-intercepting network to leave, not a fault that backing off cures); every other
//!   transport failure is retried ([`Outcome::Retry`]).
//! - The trusted roots are the built-in ones plus the destination's `ca_file`
//!   ([`crate::tls::ca_certificates`], which the config's validation also runs).
//!
//! Knows HTTP and TLS, not OTLP: what an answer means for a batch is the clients'.

use std::time::Duration;

use reqwest::header::{HeaderMap, CONTENT_TYPE, LOCATION, RETRY_AFTER};
use reqwest::StatusCode;

use super::retry::parse_retry_after;
use super::Outcome;
use crate::aws::sigv4::{SignError, Signer};
use crate::config::{mask_url_credentials, Destination};
use crate::error::error_chain;
use crate::tls::ca_certificates;

/// The most of an answer's body read: an OTLP response with a partial-success message, or an
/// error page, fits many times over.
pub const MAX_RESPONSE_BODY: usize = 64 << 10;

/// The most of an upstream's error message shown in `status` and logs.
const MESSAGE_CHARS: usize = 300;

/// The client of one destination: no redirects, `ca_file` added to the built-in roots, a connect
/// timeout, short-lived idle connections. The per-request `timeout` is set on each request.
pub fn client(config: &Destination) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .user_agent(concat!("otlp-spool/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(config.timeout.min(Duration::from_secs(10)))
        // Idle keep-alive connections die across sleep and network changes; keep them short.
        .pool_idle_timeout(Duration::from_secs(30));
    if let Some(path) = &config.ca_file {
        let certificates =
            ca_certificates(path).map_err(|why| format!("destination {}: {why}", config.name))?;
        for certificate in certificates {
            builder = builder.add_root_certificate(certificate);
        }
    }
    builder.build().map_err(|e| {
        format!(
            "destination {}: building the HTTP client failed: {}",
            config.name,
            error_chain(&e)
        )
    })
}

/// An upstream's answer: its status, the headers the clients use, and at most
/// [`MAX_RESPONSE_BODY`] bytes of its body.
pub struct Answer {
    pub status: StatusCode,
    pub retry_after: Option<Duration>,
    pub is_json: bool,
    /// A redirect's `Location`, for the error (redirects are not followed).
    location: Option<String>,
    pub body: Vec<u8>,
    /// Why `body` is incomplete, if it is: cut at the cap, or the connection failed or timed
    /// out while it was read.
    pub body_cut: Option<String>,
}

/// POSTs `body` with `headers` to `url`, signed by `signer` if any, and reads the answer. `Err`
/// is what a failed exchange comes to: [`Outcome::AuthFailed`] when there is nothing to sign
/// with, [`Outcome::Retry`] for a transport failure, [`Outcome::Held`] for an untrusted
/// certificate. A 401 or 403 makes `signer` fetch its credentials anew before the next attempt
/// (they were revoked or expired upstream).
pub async fn post(
    client: &reqwest::Client,
    url: &str,
    timeout: Duration,
    mut headers: HeaderMap,
    body: Vec<u8>,
    signer: Option<&Signer>,
) -> Result<Answer, Outcome> {
    if let Some(signer) = signer {
        match signer.sign("POST", url, &headers, &body).await {
            Ok(signature) => headers.extend(signature),
            Err(SignError::Credentials(e) | SignError::Request(e)) => {
                return Err(Outcome::AuthFailed(e))
            }
        }
    }
    let request = client
        .post(url)
        .timeout(timeout)
        .headers(headers)
        .body(body);
    let mut response = request
        .send()
        .await
        .map_err(|e| transport_failure(url, e))?;
    let header = |name| {
        response
            .headers()
            .get(name)
            .and_then(|v: &reqwest::header::HeaderValue| v.to_str().ok())
    };
    let retry_after = header(RETRY_AFTER).and_then(parse_retry_after);
    let is_json = header(CONTENT_TYPE).is_some_and(|v| v.starts_with("application/json"));
    // `to_str` admits visible ASCII only: no control characters to clean.
    let location = header(LOCATION).map(|l| l.chars().take(MESSAGE_CHARS).collect());
    let status = response.status();
    if let (401 | 403, Some(signer)) = (status.as_u16(), signer) {
        signer.credentials().invalidate();
    }
    let (body, body_cut) = read_capped(&mut response).await;
    Ok(Answer {
        status,
        retry_after,
        is_json,
        location,
        body,
        body_cut,
    })
}

impl Answer {
    /// What a failed answer from `url` reads as in `status`: the status, the endpoint (its
    /// credentials masked), the upstream's `message` (its first [`MESSAGE_CHARS`] characters,
    /// control characters replaced: it is the upstream's text, bound for logs and terminals),
    /// where a redirect pointed, and whether the body was cut.
    pub fn error(&self, url: &str, message: &str) -> String {
        let message = clean_message(message);
        let message = if message.is_empty() {
            "(empty body)"
        } else {
            &message
        };
        let mut text = format!(
            "HTTP {} from {}: {message}",
            self.status,
            mask_url_credentials(url)
        );
        if self.status.is_redirection() {
            let target = self
                .location
                .as_deref()
                .map_or_else(|| "(no Location)".to_string(), mask_url_credentials);
            text.push_str(&format!(
                "; redirected to {target}, which is not followed (a POST redirected by 301, \
                 302 or 303 arrives as a GET without the data): point the destination at the \
                 URL that takes the data; the data is held until then"
            ));
        }
        if let Some(cut) = &self.body_cut {
            text.push_str(&format!(" (response body {cut})"));
        }
        text
    }
}

/// An upstream's message as `status`, logs and dead letters show it: trimmed, its first
/// [`MESSAGE_CHARS`] characters, control characters replaced (it is the upstream's text, bound
/// for terminals).
pub fn clean_message(message: &str) -> String {
    message
        .trim()
        .chars()
        .take(MESSAGE_CHARS)
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect()
}

/// Reads at most [`MAX_RESPONSE_BODY`] bytes of the body; says why it stopped short, if it did.
async fn read_capped(response: &mut reqwest::Response) -> (Vec<u8>, Option<String>) {
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = MAX_RESPONSE_BODY - body.len();
                if chunk.len() > room {
                    body.extend_from_slice(&chunk[..room]);
                    let cut =
                        format!("longer than {MAX_RESPONSE_BODY} bytes; the rest was not read");
                    return (body, Some(cut));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return (body, None),
            Err(e) => return (body, Some(format!("cut short: {}", error_chain(&e)))),
        }
    }
}

/// A request to `url` that got no answer: retried, unless the upstream's certificate was
/// refused (held, with what to do about it).
fn transport_failure(url: &str, e: reqwest::Error) -> Outcome {
    let error = format!(
        "sending to {}: {}",
        mask_url_credentials(url),
        error_chain(&e.without_url())
    );
    match certificate_advice(&error) {
        Some(advice) => Outcome::Held(crate::observe::with_advice(&error, advice)),
        None => Outcome::Retry {
            retry_after: None,
            error,
        },
    }
}

/// What to do about a certificate rustls refused. Matched on rustls's text ("invalid peer
/// certificate: …"), the one view of it reqwest gives without a direct dependency on rustls;
/// a refusal not recognised here is retried like any transport failure (the data is kept
/// either way).
fn certificate_advice(error: &str) -> Option<&'static str> {
    let (_, reason) = error.split_once("invalid peer certificate: ")?;
    Some(if reason.starts_with("UnknownIssuer") {
        "the upstream's certificate is signed by a CA this agent does not trust: if the \
         upstream uses a private CA, set ca_file = \"/path/to/ca.pem\" on this destination; the \
         data is held and retried at the slow pace (retry.max)"
    } else if reason.contains("not valid for name") {
        "the upstream's certificate is for another host name: check the host in the \
         destination's endpoint; the data is held and retried at the slow pace (retry.max)"
    } else if reason.contains("expired") || reason.contains("not valid yet") {
        "the upstream's certificate is outside its validity period: it must be renewed, or this \
         machine's clock is wrong; the data is held and retried at the slow pace (retry.max)"
    } else {
        "the upstream's certificate is refused; the data is held and retried at the slow pace \
         (retry.max)"
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_refusals_get_advice_and_other_failures_none() {
        let e = "sending to https://h:1/v1/traces: error sending request: client error \
                 (Connect): invalid peer certificate: UnknownIssuer";
        assert!(certificate_advice(e).unwrap().contains("ca_file"));
        let e = "…: invalid peer certificate: certificate not valid for name \"127.0.0.1\"; \
                 certificate is only valid for DnsName(\"other.example\")";
        assert!(certificate_advice(e).unwrap().contains("host name"));
        let e = "…: invalid peer certificate: certificate expired: verification time 1";
        assert!(certificate_advice(e).unwrap().contains("validity"));
        assert!(certificate_advice("…: Connection refused (os error 111)").is_none());
    }
}
