//! The AWS keys signed destinations share: `sigv4 = { region, service }` (for `otlp_http` and
//! `prometheus_remote_write`) and the credential keys (`profile`, `role_arn`, `external_id`,
//! `session_name`), which only signed requests use.

use super::{Refusal, WrittenSecrets};
use crate::config::schema::{DestinationConfig, SigV4Config};
use crate::config::values::Secret;

/// What a destination authenticates to AWS with, for `check`'s description of it
/// (`crate::aws::credentials::describe`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AwsAccess<'a> {
    /// Requests signed with SigV4 in `region`, with credentials from these keys.
    SigV4 {
        credentials: &'a AwsCredentials,
        region: &'a str,
    },
    /// A CloudWatch Logs API key (`bearer_token`), no AWS credentials.
    LogsApiKey,
}

/// Every request is signed with SigV4 for `service` in `region`.
#[derive(Debug, Clone, PartialEq)]
pub struct SigV4 {
    pub region: String,
    pub service: String,
    pub credentials: AwsCredentials,
}

/// Where a signed destination's AWS credentials come from; all unset means aws-config's
/// default chain.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AwsCredentials {
    pub profile: Option<String>,
    pub role_arn: Option<String>,
    pub external_id: Option<Secret>,
    pub session_name: Option<String>,
}

impl SigV4 {
    /// The `sigv4` table with the credential keys; `None` without `sigv4`.
    pub(super) fn from_raw(raw: &DestinationConfig) -> Option<SigV4> {
        raw.sigv4.as_ref().map(|sigv4| SigV4 {
            region: sigv4.region.clone(),
            service: sigv4.service.clone(),
            credentials: AwsCredentials::from_raw(raw),
        })
    }

    /// The rules of a type that may sign (`otlp_http`, `prometheus_remote_write`): `sigv4`
    /// well formed, and credential keys only with it.
    pub(super) fn check(raw: &DestinationConfig) -> Result<(), Refusal> {
        match &raw.sigv4 {
            Some(sigv4) => check_sigv4(sigv4),
            None => match AwsCredentials::from_raw(raw).first_key_set() {
                Some(key) => Err((
                    key,
                    format!(
                        "{key} selects AWS credentials, which only signed requests use; add sigv4 = {{ region = \"…\", service = \"…\" }} or remove {key}"
                    ),
                )),
                None => Ok(()),
            },
        }
    }

    pub(super) fn access(&self) -> AwsAccess<'_> {
        AwsAccess::SigV4 {
            credentials: &self.credentials,
            region: &self.region,
        }
    }

    pub(super) fn write_raw(&self, raw: &mut DestinationConfig) {
        raw.sigv4 = Some(SigV4Config {
            region: self.region.clone(),
            service: self.service.clone(),
        });
        self.credentials.write_raw(raw);
    }
}

/// `sigv4`'s region and service have the shapes AWS uses.
pub(super) fn check_sigv4(sigv4: &SigV4Config) -> Result<(), Refusal> {
    if !valid_region(&sigv4.region) {
        return Err((
            "sigv4.region",
            format!(
                "{:?} is not an AWS region: expected a region code such as \"us-west-2\"",
                sigv4.region
            ),
        ));
    }
    if !valid_service(&sigv4.service) {
        return Err((
            "sigv4.service",
            format!(
                "{:?} is not a SigV4 service name: expected the signing name of the service, such as \"execute-api\" (API Gateway), \"aps\" (Managed Prometheus), \"logs\", \"xray\", \"monitoring\"",
                sigv4.service
            ),
        ));
    }
    Ok(())
}

impl AwsCredentials {
    pub(super) fn from_raw(raw: &DestinationConfig) -> AwsCredentials {
        AwsCredentials {
            profile: raw.profile.clone(),
            role_arn: raw.role_arn.clone(),
            external_id: raw.external_id.clone(),
            session_name: raw.session_name.clone(),
        }
    }

    /// The first credential key that is set.
    pub(super) fn first_key_set(&self) -> Option<&'static str> {
        [
            ("profile", self.profile.is_some()),
            ("role_arn", self.role_arn.is_some()),
            ("external_id", self.external_id.is_some()),
            ("session_name", self.session_name.is_some()),
        ]
        .into_iter()
        .find(|(_, set)| *set)
        .map(|(key, _)| key)
    }

    pub(super) fn write_raw(&self, raw: &mut DestinationConfig) {
        raw.profile = self.profile.clone();
        raw.role_arn = self.role_arn.clone();
        raw.external_id = self.external_id.clone();
        raw.session_name = self.session_name.clone();
    }

    pub(super) fn note_secrets(&self, written: &mut WrittenSecrets) {
        written.key("external_id", self.external_id.as_ref());
    }
}

/// An AWS region's shape: `us-west-2`, `eu-central-1`, `us-gov-west-1`, `cn-north-1`.
pub(super) fn valid_region(region: &str) -> bool {
    let parts: Vec<&str> = region.split('-').collect();
    parts.len() >= 3
        && parts[0].len() == 2
        && parts[..parts.len() - 1]
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase()))
        && parts[parts.len() - 1]
            .parse::<u8>()
            .is_ok_and(|n| n > 0 && !parts[parts.len() - 1].starts_with('0'))
}

/// A SigV4 service name's shape (`execute-api`, `aps`, `logs`, `xray`, `monitoring`).
fn valid_service(service: &str) -> bool {
    !service.is_empty()
        && service.len() <= 64
        && service.starts_with(|c: char| c.is_ascii_lowercase())
        && service
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}
