//! A destination as the agent uses it: the keys every type has ([`Destination`]), and one
//! [`Kind`] per type, each in its own file with its validation, its batch caps, its display in
//! `status` and its secrets. [`Destination::from_raw`] is the one place a raw
//! [`DestinationConfig`] becomes typed. This file dispatches on the type in two `match`es only:
//! `TypeRules::of` (a raw destination's type → its file's `RULES`) and `Kind::settings` (a
//! typed one → its settings as a `TypeSettings`); code elsewhere that needs a type's own
//! settings `match`es on [`Kind`], so the compiler lists every place a new type must fill in.
//!
//! Two steps, so that tests can build destinations a file could not have: [`Destination::check`]
//! refuses what contradicts the type (keys of other types, malformed values, keys that would go
//! unused), [`Destination::from_raw`] takes what the type needs and refuses a config without
//! it. A loaded config passed both. Reads files only to check `ca_file`.

mod aws;
mod cloudwatch;
mod otlp_http;
mod prometheus_remote_write;

use std::collections::BTreeMap;
use std::time::Duration;

use super::schema::{
    BatchConfig, DestinationConfig, DestinationKind, DestinationName, RetryConfig,
};
use super::values::{Endpoint, Secret};
use crate::otlp::Signal;
use crate::redact::RedactConfig;
pub use aws::{AwsAccess, AwsCredentials, SigV4};
pub use cloudwatch::{
    Cloudwatch, CloudwatchAuth, LogTarget, CLOUDWATCH_TRACES_MAX_BYTES, CLOUDWATCH_TRACES_MAX_ITEMS,
};
pub use otlp_http::{OtlpFormat, OtlpHttp};
pub use prometheus_remote_write::{DropLabels, RemoteWrite};

/// Why a destination's keys do not go together: the key (relative to the destination, such as
/// `sigv4.region`) and what to do.
pub(super) type Refusal = (&'static str, String);

#[derive(Debug, Clone, PartialEq)]
pub struct Destination {
    pub name: DestinationName,
    /// Never empty.
    pub signals: Vec<Signal>,
    pub batch: BatchConfig,
    pub retry: RetryConfig,
    /// Per-attempt deadline for one upstream request.
    pub timeout: Duration,
    /// Extra request headers; values are secrets.
    pub headers: BTreeMap<String, Secret>,
    /// A readable PEM file of usable CA certificates (checked when the config was loaded).
    pub ca_file: Option<String>,
    /// What is deleted, hashed and cut from what this destination is sent; the table passed
    /// [`RedactConfig::validate`].
    pub redact: Option<RedactConfig>,
    pub kind: Kind,
}

/// The destination types, each with the keys of its own.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    OtlpHttp(OtlpHttp),
    Cloudwatch(Cloudwatch),
    PrometheusRemoteWrite(RemoteWrite),
}

impl Kind {
    /// The type's settings, as what [`Destination`] asks of every type.
    fn settings(&self) -> &dyn TypeSettings {
        match self {
            Kind::OtlpHttp(k) => k,
            Kind::Cloudwatch(k) => k,
            Kind::PrometheusRemoteWrite(k) => k,
        }
    }
}

/// What a type does with a raw destination, as its file's `RULES`: the keys only it takes (and
/// whether `raw` sets each), the rules it adds to what its fields need, and its typed settings
/// (or the first key it needs that `raw` lacks).
struct TypeRules {
    own_keys: fn(&DestinationConfig) -> Vec<(&'static str, bool)>,
    check: fn(&DestinationConfig) -> Result<(), Refusal>,
    from_raw: fn(&DestinationConfig) -> Result<Kind, Refusal>,
}

impl TypeRules {
    fn of(kind: DestinationKind) -> TypeRules {
        match kind {
            DestinationKind::OtlpHttp => otlp_http::RULES,
            DestinationKind::Cloudwatch => cloudwatch::RULES,
            DestinationKind::PrometheusRemoteWrite => prometheus_remote_write::RULES,
        }
    }
}

/// What [`Destination`] asks of a type's settings, whichever the type.
trait TypeSettings {
    /// The `type` value in the config.
    fn kind_name(&self) -> DestinationKind;

    /// Sets the type's keys in `raw` (for `check`).
    fn write_raw(&self, raw: &mut DestinationConfig);

    /// The type's keys whose secrets are written in the file.
    fn secrets_written_in_file(&self) -> WrittenSecrets;

    /// What `status` shows as the endpoint (credentials masked).
    fn endpoint_display(&self) -> String;

    /// What the destination authenticates to AWS with; `None` if it sends no AWS credentials.
    fn aws_access(&self) -> Option<AwsAccess<'_>>;

    /// The batch limits of one signal's worker, from the configured ones: those, unless the
    /// upstream accepts less.
    fn batch_for(&self, batch: &BatchConfig, _signal: Signal) -> BatchConfig {
        batch.clone()
    }
}

impl Destination {
    /// The rules of `raw`'s type beyond what its fields need (no keys of other types, values
    /// of the right shape, no key that would go unused), and a usable `ca_file`: the first key
    /// that breaks one.
    pub(super) fn check(raw: &DestinationConfig) -> Result<(), Refusal> {
        for other in DestinationKind::ALL.into_iter().filter(|k| *k != raw.kind) {
            refuse_keys_of(other, raw, &(TypeRules::of(other).own_keys)(raw))?;
        }
        (TypeRules::of(raw.kind).check)(raw)?;
        if let Some(path) = &raw.ca_file {
            crate::tls::ca_certificates(path).map_err(|why| ("ca_file", why))?;
        }
        Ok(())
    }

    /// The typed destination, or the first key its type needs that `raw` lacks (a `redact`
    /// table is checked whole here: the worker compiles it, and must not meet a table that
    /// would not do what it says).
    pub(super) fn from_raw(raw: &DestinationConfig) -> Result<Destination, Refusal> {
        let kind = (TypeRules::of(raw.kind).from_raw)(raw)?;
        if let Some(redact) = &raw.redact {
            redact.validate()?;
        }
        Ok(Destination {
            name: raw.name.clone(),
            signals: raw.signals.clone(),
            batch: raw.batch.clone(),
            retry: raw.retry.clone(),
            timeout: raw.timeout,
            headers: raw.headers.clone(),
            ca_file: raw.ca_file.clone(),
            redact: raw.redact.clone(),
            kind,
        })
    }

    /// The destination as a file would say it (for `check`): every key of its type, the other
    /// types' keys unset.
    pub(super) fn to_raw(&self) -> DestinationConfig {
        let settings = self.kind.settings();
        let mut raw = DestinationConfig {
            signals: self.signals.clone(),
            headers: self.headers.clone(),
            batch: self.batch.clone(),
            retry: self.retry.clone(),
            timeout: self.timeout,
            ca_file: self.ca_file.clone(),
            redact: self.redact.clone(),
            ..DestinationConfig::unset(self.name.clone(), settings.kind_name())
        };
        settings.write_raw(&mut raw);
        raw
    }

    /// The `type` value in the config.
    pub fn type_name(&self) -> &'static str {
        self.kind.settings().kind_name().name()
    }

    /// The batch limits of one signal's worker: the configured ones, clamped to what the
    /// upstream accepts.
    pub fn batch_for(&self, signal: Signal) -> BatchConfig {
        self.kind.settings().batch_for(&self.batch, signal)
    }

    /// What `status` shows as the destination's endpoint (credentials masked).
    pub fn endpoint_display(&self) -> String {
        self.kind.settings().endpoint_display()
    }

    /// What the destination authenticates to AWS with; `None` if it sends no AWS credentials.
    pub fn aws_access(&self) -> Option<AwsAccess<'_>> {
        self.kind.settings().aws_access()
    }

    /// The keys of this destination whose secrets are written in the file itself (not `${VAR}`
    /// references): credentials in endpoint URLs, then headers, then the type's secret keys,
    /// then the redact table's key.
    pub(super) fn secrets_written_in_file(&self) -> Vec<String> {
        let mut written = self.kind.settings().secrets_written_in_file();
        if let Some(redact) = &self.redact {
            written.key("redact.hmac_key", redact.hmac_key.as_ref());
        }
        let headers = self
            .headers
            .iter()
            .filter(|(_, v)| v.written_in_file)
            .map(|(h, _)| format!("headers.{h}"));
        written
            .in_endpoints
            .into_iter()
            .chain(headers)
            .chain(written.in_keys)
            .collect()
    }
}

/// The keys of a destination type that hold secrets written in the file.
#[derive(Default)]
struct WrittenSecrets {
    /// Such as `endpoint credentials`, `endpoints.traces credentials`.
    in_endpoints: Vec<String>,
    /// Such as `external_id`, `bearer_token`.
    in_keys: Vec<String>,
}

impl WrittenSecrets {
    /// The secrets of a type with one `endpoint`, signed or not.
    fn of_signed_endpoint(endpoint: &Endpoint, sigv4: Option<&SigV4>) -> WrittenSecrets {
        let mut written = WrittenSecrets::default();
        written.endpoint("endpoint", endpoint);
        if let Some(sigv4) = sigv4 {
            sigv4.credentials.note_secrets(&mut written);
        }
        written
    }

    fn endpoint(&mut self, key: &str, endpoint: &Endpoint) {
        if endpoint.credentials_in_file {
            self.in_endpoints.push(format!("{key} credentials"));
        }
    }

    fn key(&mut self, key: &str, secret: Option<&Secret>) {
        if secret.is_some_and(|s| s.written_in_file) {
            self.in_keys.push(key.to_string());
        }
    }
}

/// Refuses the first of `keys` that is set: it belongs to type `owner` only, and this
/// destination is of another type.
fn refuse_keys_of(
    owner: DestinationKind,
    raw: &DestinationConfig,
    keys: &[(&'static str, bool)],
) -> Result<(), Refusal> {
    match keys.iter().find(|(_, set)| *set) {
        Some((key, _)) => Err((
            key,
            format!(
                "{key} applies to type = {:?} only; remove it (this destination is type = {:?})",
                owner.name(),
                raw.kind.name()
            ),
        )),
        None => Ok(()),
    }
}

/// The `endpoint` of a type that requires one.
fn required_endpoint(raw: &DestinationConfig) -> Result<Endpoint, Refusal> {
    if raw.endpoint.is_unset() {
        return Err((
            "endpoint",
            format!(
                "missing field `endpoint`, which is required for type = {:?}; add it (config.example.toml shows every key)",
                raw.kind.name()
            ),
        ));
    }
    Ok(raw.endpoint.clone())
}
