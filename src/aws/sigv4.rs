//! SigV4 for one request: given the method, URL, headers and the exact body bytes that will be
//! sent (after compression), the headers to add (`authorization`, `x-amz-date`, and
//! `x-amz-security-token` with session credentials). Signed by `aws-sigv4`, the AWS SDK's
//! signer, with its default settings (every header given is signed except `user-agent` and
//! hop-by-hop ones; no `x-amz-content-sha256`).
//!
//! Invariants: a signature is computed per attempt, with the time of that attempt, over the
//! body as sent; the caller must send exactly the headers it passed (plus any of the returned
//! ones) and the body it passed. Credentials come from [`CachedCredentials`] and are never
//! logged; the returned header values are marked sensitive.

use std::sync::Arc;
use std::time::SystemTime;

use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use super::credentials::CachedCredentials;

/// Why a request could not be signed. Either way the batch is kept and retried slowly.
#[derive(Debug)]
pub enum SignError {
    /// No usable credentials; the text says from where and what to run.
    Credentials(String),
    /// The request itself could not be signed (a header value that is not text, say).
    Request(String),
}

/// Signs requests to one AWS service in one region.
pub struct Signer {
    region: String,
    service: String,
    credentials: Arc<CachedCredentials>,
}

impl Signer {
    pub fn new(region: &str, service: &str, credentials: Arc<CachedCredentials>) -> Signer {
        Signer {
            region: region.to_string(),
            service: service.to_string(),
            credentials,
        }
    }

    pub fn credentials(&self) -> &CachedCredentials {
        &self.credentials
    }

    /// The headers that sign a request of `method` to `url` with `headers` and `body`.
    pub async fn sign(
        &self,
        method: &str,
        url: &str,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Vec<(HeaderName, HeaderValue)>, SignError> {
        let credentials = self
            .credentials
            .get()
            .await
            .map_err(SignError::Credentials)?;
        sign_with(
            &credentials.into(),
            &self.region,
            &self.service,
            SystemTime::now(),
            method,
            url,
            headers,
            body,
        )
    }
}

/// Signs with the given identity and time (the seam for unit tests).
#[allow(clippy::too_many_arguments)]
fn sign_with(
    identity: &Identity,
    region: &str,
    service: &str,
    time: SystemTime,
    method: &str,
    url: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Vec<(HeaderName, HeaderValue)>, SignError> {
    let request_error = |e: &dyn std::fmt::Display| SignError::Request(format!("SigV4: {e}"));
    let params = v4::SigningParams::builder()
        .identity(identity)
        .region(region)
        .name(service)
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| request_error(&e))?
        .into();
    let mut pairs = Vec::with_capacity(headers.len());
    for (name, value) in headers {
        let value = value.to_str().map_err(|_| {
            SignError::Request(format!(
                "SigV4: the value of header {name} is not visible ASCII and cannot be signed"
            ))
        })?;
        pairs.push((name.as_str(), value));
    }
    let signable = SignableRequest::new(method, url, pairs.into_iter(), SignableBody::Bytes(body))
        .map_err(|e| request_error(&e))?;
    let (instructions, _signature) = sign(signable, &params)
        .map_err(|e| request_error(&e))?
        .into_parts();
    let (added, _query) = instructions.into_parts();
    added
        .into_iter()
        .map(|h| {
            let name = HeaderName::try_from(h.name()).map_err(|e| request_error(&e))?;
            let mut value = HeaderValue::from_str(h.value()).map_err(|e| request_error(&e))?;
            value.set_sensitive(true);
            Ok((name, value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_credential_types::Credentials;

    /// The published AWS SigV4 test suite's `post-x-www-form-urlencoded` case (2015 suite,
    /// without `x-amz-content-sha256`).
    #[test]
    fn matches_the_published_test_vector() {
        let identity: Identity = Credentials::new(
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            None,
            None,
            "test",
        )
        .into();
        let mut headers = HeaderMap::new();
        headers.insert(
            "content-type",
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        headers.insert("host", HeaderValue::from_static("example.amazonaws.com"));
        let time = httpdate::parse_http_date("Sun, 30 Aug 2015 12:36:00 GMT").unwrap();
        let added = sign_with(
            &identity,
            "us-east-1",
            "service",
            time,
            "POST",
            "https://example.amazonaws.com/",
            &headers,
            b"Param1=value1",
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        let auth = added
            .iter()
            .find(|(n, _)| n == "authorization")
            .map(|(_, v)| v.to_str().unwrap().to_string())
            .unwrap();
        assert_eq!(
            auth,
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date, \
             Signature=ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a"
        );
    }
}
