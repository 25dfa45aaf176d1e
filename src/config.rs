//! The configuration: schema, embedded defaults, `${ENV}` expansion, validation, and where the
//! file is looked for.
//!
//! Invariants: a [`Config`] that exists is valid — every size, duration, address and URL was
//! parsed, every `${VAR}` expanded, every destination name is unique. Unknown keys are errors
//! (serde's `deny_unknown_fields`). A [`ConfigError`] from a file names the file, the dotted key
//! (`spool.max_bytes`, `destination.retry.max`), its line and column (also for the cross-key
//! rules of [`Config::validate`], when the key is written in the file), and what to do.
//! Secrets ([`Secret`], and credentials in an [`Endpoint`] URL) never print: `Debug` and
//! `Serialize` mask them, so `check` and logs can show a resolved config as is. This module reads
//! files and the environment; it opens no sockets and touches no spool.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};

use crate::otlp::Signal;

/// The shortest `auth_token` accepted with `allow_remote`: reachable from other machines, a token
/// must not be guessable.
const MIN_REMOTE_TOKEN: usize = 16;

/// The whole configuration, as resolved from a file or the embedded defaults.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub spool: SpoolConfig,
    #[serde(
        rename = "destination",
        deserialize_with = "unique_destinations",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub destinations: Vec<DestinationConfig>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// OTLP/HTTP listen addresses.
    pub listen: Listen,
    /// OTLP/gRPC listen addresses; empty disables gRPC.
    pub grpc_listen: Listen,
    /// Largest request body accepted on the wire (compressed or not).
    pub max_body: ByteSize,
    /// Largest request body after decompression (the gzip-bomb guard).
    pub max_decompressed: ByteSize,
    /// When set, every request must carry `Authorization: Bearer <token>` or `x-api-key: <token>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_token: Option<Secret>,
    /// Must be `true` (with `auth_token` set) for any listen address other than loopback: a
    /// laptop agent reachable from the café's network is opt-in, twice.
    pub allow_remote: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        let addrs = |port| {
            Listen(vec![
                SocketAddr::from(([127, 0, 0, 1], port)),
                SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)),
            ])
        };
        ServerConfig {
            listen: addrs(4318),
            grpc_listen: addrs(4317),
            max_body: ByteSize(16 << 20),
            max_decompressed: ByteSize(64 << 20),
            auth_token: None,
            allow_remote: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    pub dir: PathBuf,
    /// Cap on the logical bytes held (record payloads and headers).
    pub max_bytes: ByteSize,
    /// Records older than this are expired (counted) whether delivered or not.
    #[serde(with = "human_duration")]
    pub max_age: Duration,
    pub when_full: WhenFull,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            dir: default_spool_dir(),
            max_bytes: ByteSize(1 << 30),
            max_age: Duration::from_secs(7 * 24 * 3600),
            when_full: WhenFull::DropOldest,
        }
    }
}

/// What an append does when the spool is at its cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Delete the oldest records (counted as dropped) to make room.
    DropOldest,
    /// Refuse the request with 503 and `Retry-After`, so the client's SDK backs off.
    Reject,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationConfig {
    pub name: DestinationName,
    #[serde(rename = "type")]
    pub kind: DestinationKind,
    /// Unset: every signal, except `["metrics"]` for `prometheus_remote_write` (filled in by
    /// [`DestinationKind::default_signals`] right after parsing; never empty afterwards).
    #[serde(default, deserialize_with = "signal_list")]
    pub signals: Vec<Signal>,
    /// Base URL; `/v1/<signal>` is appended. Required by every type but `cloudwatch`, whose
    /// URLs follow from `region` (see [`Endpoint::is_unset`]).
    #[serde(default, skip_serializing_if = "Endpoint::is_unset")]
    pub endpoint: Endpoint,
    /// Extra request headers (`x-api-key`, …). Values are secrets: masked when printed.
    #[serde(default)]
    pub headers: BTreeMap<String, Secret>,
    #[serde(default)]
    pub encoding: Encoding,
    #[serde(default)]
    pub compression: Compression,
    #[serde(default)]
    pub batch: BatchConfig,
    #[serde(default)]
    pub retry: RetryConfig,
    /// Per-attempt deadline for one upstream request.
    #[serde(default = "default_timeout", with = "human_duration")]
    pub timeout: Duration,
    /// A PEM file of CA certificates to trust besides the built-in roots when sending to this
    /// destination (an upstream behind a private CA, a corporate TLS proxy); `${VAR}`s expanded.
    /// AWS credential requests (SSO, STS) do not use it. Checked by [`Config::validate`].
    #[serde(
        default,
        deserialize_with = "expanded",
        skip_serializing_if = "Option::is_none"
    )]
    pub ca_file: Option<String>,
    // AWS keys: `sigv4` for `otlp_http` (and `prometheus_remote_write`), the credential keys
    // for anything signed, and the `cloudwatch` type's own. All optional; `Config::validate`
    // says which type wants which. Strings expand `${VAR}`.
    /// `sigv4 = { region = "us-west-2", service = "execute-api" }`: sign every request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sigv4: Option<SigV4Config>,
    /// `cloudwatch`: the AWS region of the three endpoints.
    #[serde(
        default,
        deserialize_with = "expanded",
        skip_serializing_if = "Option::is_none"
    )]
    pub region: Option<String>,
    /// `cloudwatch` logs: sent as `x-aws-log-group` / `x-aws-log-stream`; both must exist.
    #[serde(
        default,
        deserialize_with = "expanded",
        skip_serializing_if = "Option::is_none"
    )]
    pub log_group: Option<String>,
    #[serde(
        default,
        deserialize_with = "expanded",
        skip_serializing_if = "Option::is_none"
    )]
    pub log_stream: Option<String>,
    /// `cloudwatch`: per-signal URL overrides (VPC endpoints, tests), used as given.
    #[serde(default, skip_serializing_if = "SignalEndpoints::is_empty")]
    pub endpoints: SignalEndpoints,
    /// The AWS profile to take credentials from (SSO, credential_process, static keys, role
    /// chains); without it, aws-config's default chain (environment first).
    #[serde(
        default,
        deserialize_with = "expanded",
        skip_serializing_if = "Option::is_none"
    )]
    pub profile: Option<String>,
    /// A role to assume via STS with the base credentials.
    #[serde(
        default,
        deserialize_with = "expanded",
        skip_serializing_if = "Option::is_none"
    )]
    pub role_arn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<Secret>,
    #[serde(
        default,
        deserialize_with = "expanded",
        skip_serializing_if = "Option::is_none"
    )]
    pub session_name: Option<String>,
    /// `cloudwatch`: how the logs endpoint is authenticated (SigV4 unless `"bearer"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AwsAuth>,
    /// `cloudwatch` with `auth = "bearer"`: a CloudWatch Logs API key (`${VAR}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer_token: Option<Secret>,
    /// `prometheus_remote_write`: labels added to every series (`${VAR}`s expanded), such as
    /// the HA pair `cluster` / `__replica__` Amazon Managed Prometheus deduplicates on.
    #[serde(
        default,
        deserialize_with = "expanded_map",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub external_labels: BTreeMap<String, String>,
    /// `prometheus_remote_write`: a DELTA series with no point for this long (in data time) is
    /// forgotten, and starts over at its next point (default 1h).
    #[serde(
        default,
        deserialize_with = "optional_duration",
        serialize_with = "serialize_optional_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub stale_after: Option<Duration>,
}

impl DestinationConfig {
    /// The first credential key that is set (they only make sense for signed requests).
    fn credential_key_set(&self) -> Option<&'static str> {
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
}

/// `sigv4 = { region, service }`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SigV4Config {
    #[serde(deserialize_with = "expanded_required")]
    pub region: String,
    #[serde(deserialize_with = "expanded_required")]
    pub service: String,
}

/// `endpoints = { traces = "…", metrics = "…", logs = "…" }`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SignalEndpoints {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traces: Option<Endpoint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<Endpoint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logs: Option<Endpoint>,
}

impl SignalEndpoints {
    pub fn get(&self, signal: Signal) -> Option<&Endpoint> {
        match signal {
            Signal::Traces => self.traces.as_ref(),
            Signal::Metrics => self.metrics.as_ref(),
            Signal::Logs => self.logs.as_ref(),
        }
    }

    fn is_empty(&self) -> bool {
        Signal::ALL.iter().all(|s| self.get(*s).is_none())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AwsAuth {
    Sigv4,
    Bearer,
}

/// CloudWatch's documented per-request limits for traces: 5 MB uncompressed, 10,000 spans.
pub const CLOUDWATCH_TRACES_MAX_BYTES: u64 = 5_000_000;
pub const CLOUDWATCH_TRACES_MAX_ITEMS: u64 = 10_000;

impl DestinationConfig {
    /// The batch limits of one signal's worker: the configured ones, clamped to what the
    /// upstream accepts (CloudWatch traces: ≤ 5 MB uncompressed, ≤ 10,000 spans).
    pub fn batch_for(&self, signal: Signal) -> BatchConfig {
        let mut batch = self.batch.clone();
        if self.kind == DestinationKind::Cloudwatch && signal == Signal::Traces {
            batch.max_bytes = ByteSize(batch.max_bytes.0.min(CLOUDWATCH_TRACES_MAX_BYTES));
            batch.max_items = batch.max_items.min(CLOUDWATCH_TRACES_MAX_ITEMS);
        }
        batch
    }

    /// What `status` shows as the destination's endpoint (credentials masked).
    pub fn endpoint_display(&self) -> String {
        match (self.kind, &self.region) {
            (DestinationKind::Cloudwatch, Some(region)) => format!("cloudwatch {region}"),
            _ => self.endpoint.masked(),
        }
    }
}

impl DestinationConfig {
    /// `ca_file` names a readable PEM file of usable certificates: `Err((key, why))`, like
    /// [`DestinationConfig::validate_aws`].
    fn validate_ca_file(&self) -> Result<(), (&'static str, String)> {
        let Some(path) = &self.ca_file else {
            return Ok(());
        };
        crate::tls::ca_certificates(path)
            .map(drop)
            .map_err(|why| ("ca_file", why))
    }

    /// The per-type rules of the endpoint and AWS keys: `Err((key, why))`, the key relative to
    /// the destination.
    fn validate_aws(&self) -> Result<(), (&'static str, String)> {
        if self.kind == DestinationKind::PrometheusRemoteWrite {
            if let Some(s) = self.signals.iter().find(|s| **s != Signal::Metrics) {
                return Err((
                    "signals",
                    format!(
                        "type = \"prometheus_remote_write\" carries metrics only, so it cannot route {0}; set signals = [\"metrics\"] (the default for this type) and send {0} to another destination",
                        s.name()
                    ),
                ));
            }
            if let Some(name) = self.external_labels.keys().find(|k| {
                k.as_str() == "__name__"
                    || !k.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                    || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            }) {
                return Err((
                    "external_labels",
                    format!("{name:?} cannot be an external label: a Prometheus label name matches [a-zA-Z_][a-zA-Z0-9_]* and is not __name__"),
                ));
            }
        } else if let Some((key, _)) = [
            ("external_labels", !self.external_labels.is_empty()),
            ("stale_after", self.stale_after.is_some()),
        ]
        .into_iter()
        .find(|(_, set)| *set)
        {
            return Err((
                key,
                format!(
                    "{key} applies to type = \"prometheus_remote_write\" only; remove it (this destination is type = {:?})",
                    self.kind.name()
                ),
            ));
        }
        let cloudwatch_only = [
            ("region", self.region.is_some()),
            ("log_group", self.log_group.is_some()),
            ("log_stream", self.log_stream.is_some()),
            ("endpoints", !self.endpoints.is_empty()),
            ("auth", self.auth.is_some()),
            ("bearer_token", self.bearer_token.is_some()),
        ];
        if let Some(sigv4) = &self.sigv4 {
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
        }
        if self.kind != DestinationKind::Cloudwatch {
            if self.endpoint.is_unset() {
                return Err((
                    "endpoint",
                    format!(
                        "missing field `endpoint`, which is required for type = {:?}; add it (config.example.toml shows every key)",
                        self.kind.name()
                    ),
                ));
            }
            if let Some((key, _)) = cloudwatch_only.iter().find(|(_, set)| *set) {
                return Err((
                    key,
                    format!(
                        "{key} applies to type = \"cloudwatch\" only; remove it (this destination is type = {:?})",
                        self.kind.name()
                    ),
                ));
            }
            if self.sigv4.is_none() {
                if let Some(key) = self.credential_key_set() {
                    return Err((
                        key,
                        format!(
                            "{key} selects AWS credentials, which only signed requests use; add sigv4 = {{ region = \"…\", service = \"…\" }} or remove {key}"
                        ),
                    ));
                }
            }
            return Ok(());
        }
        // type = "cloudwatch"
        if !self.endpoint.is_unset() {
            return Err((
                "endpoint",
                "a cloudwatch destination has one endpoint per signal, derived from region; remove endpoint (to override one, write endpoints = { traces = \"…\" })"
                    .into(),
            ));
        }
        if self.sigv4.is_some() {
            return Err((
                "sigv4",
                "a cloudwatch destination signs with the services xray, logs and monitoring of its region by itself; remove sigv4"
                    .into(),
            ));
        }
        match &self.region {
            None => {
                return Err((
                    "region",
                    "missing field `region`, which type = \"cloudwatch\" requires; add it, such as region = \"us-west-2\""
                        .into(),
                ))
            }
            Some(r) if !valid_region(r) => {
                return Err((
                    "region",
                    format!("{r:?} is not an AWS region: expected a region code such as \"us-west-2\""),
                ))
            }
            Some(_) => {}
        }
        for signal in Signal::ALL {
            if self.endpoints.get(signal).is_some() && !self.signals.contains(&signal) {
                return Err((
                    "endpoints",
                    format!(
                        "endpoints.{} is set but signals does not route {}; add it to signals or remove the override",
                        signal.name(),
                        signal.name()
                    ),
                ));
            }
        }
        let logs = self.signals.contains(&Signal::Logs);
        if logs {
            for (key, value) in [
                ("log_group", &self.log_group),
                ("log_stream", &self.log_stream),
            ] {
                match value {
                    None => {
                        return Err((
                            key,
                            format!(
                                "missing field `{key}`, which CloudWatch needs to route logs (sent as x-aws-{}); add it, or remove \"logs\" from signals",
                                key.replace('_', "-")
                            ),
                        ))
                    }
                    Some(v) if v.is_empty() || HeaderValueCheck::invalid(v) => {
                        return Err((
                            key,
                            format!("{v:?} cannot be sent as an HTTP header value; use printable ASCII"),
                        ))
                    }
                    Some(_) => {}
                }
            }
        } else if let Some((key, _)) = [
            ("log_group", &self.log_group),
            ("log_stream", &self.log_stream),
        ]
        .iter()
        .find(|(_, v)| v.is_some())
        {
            return Err((
                key,
                format!("{key} only applies to logs, which this destination does not route; add \"logs\" to signals or remove {key}"),
            ));
        }
        match (self.auth, &self.bearer_token) {
            (Some(AwsAuth::Bearer), None) => {
                return Err((
                    "bearer_token",
                    "auth = \"bearer\" needs bearer_token, such as bearer_token = \"${CLOUDWATCH_LOGS_API_KEY}\""
                        .into(),
                ))
            }
            (Some(AwsAuth::Bearer), Some(_)) => {
                if self.signals != [Signal::Logs] {
                    return Err((
                        "auth",
                        "auth = \"bearer\" (a CloudWatch Logs API key) works for the logs endpoint only; set signals = [\"logs\"] and send traces and metrics through another destination, signed with SigV4"
                            .into(),
                    ));
                }
                if let Some(key) = self.credential_key_set() {
                    return Err((
                        key,
                        format!("{key} selects AWS credentials, which auth = \"bearer\" does not use; remove it"),
                    ));
                }
            }
            (_, Some(_)) => {
                return Err((
                    "bearer_token",
                    "bearer_token is used only with auth = \"bearer\"; add auth = \"bearer\" or remove bearer_token"
                        .into(),
                ))
            }
            _ => {}
        }
        Ok(())
    }
}

/// Header values the HTTP client would refuse.
struct HeaderValueCheck;

impl HeaderValueCheck {
    fn invalid(v: &str) -> bool {
        v.bytes().any(|b| b < 0x20 || b == 0x7f)
    }
}

/// An optional string with `${VAR}`s expanded.
fn expanded<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    expanded_required(d).map(Some)
}

fn expanded_required<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    expand_env(&String::deserialize(d)?).map_err(de::Error::custom)
}

/// An AWS region's shape: `us-west-2`, `eu-central-1`, `us-gov-west-1`, `cn-north-1`.
pub fn valid_region(region: &str) -> bool {
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
pub fn valid_service(service: &str) -> bool {
    !service.is_empty()
        && service.len() <= 64
        && service.starts_with(|c: char| c.is_ascii_lowercase())
        && service
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// A destination's name: it keys the destination's cursors in the spool, so it is restricted to
/// characters that are safe there and in logs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct DestinationName(String);

impl DestinationName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DestinationName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for DestinationName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        let ok = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
        if !ok {
            return Err(de::Error::custom(format!(
                "invalid destination name {name:?}: use 1-64 characters from a-z, A-Z, 0-9, '-', '_', '.'"
            )));
        }
        Ok(DestinationName(name))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DestinationKind {
    OtlpHttp,
    Cloudwatch,
    PrometheusRemoteWrite,
}

impl DestinationKind {
    /// The `type` value in the config.
    pub fn name(self) -> &'static str {
        match self {
            DestinationKind::OtlpHttp => "otlp_http",
            DestinationKind::Cloudwatch => "cloudwatch",
            DestinationKind::PrometheusRemoteWrite => "prometheus_remote_write",
        }
    }

    /// The signals a destination of this type routes when `signals` is not written.
    pub fn default_signals(self) -> Vec<Signal> {
        match self {
            DestinationKind::PrometheusRemoteWrite => vec![Signal::Metrics],
            _ => Signal::ALL.to_vec(),
        }
    }
}

impl<'de> Deserialize<'de> for DestinationKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match String::deserialize(d)?.as_str() {
            "otlp_http" => Ok(DestinationKind::OtlpHttp),
            "cloudwatch" => Ok(DestinationKind::Cloudwatch),
            "prometheus_remote_write" => Ok(DestinationKind::PrometheusRemoteWrite),
            other => Err(de::Error::custom(format!(
                "unknown destination type {other:?}, expected one of \"otlp_http\", \"cloudwatch\", \
                 \"prometheus_remote_write\""
            ))),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    #[default]
    Protobuf,
    Json,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    #[default]
    Gzip,
    None,
}

/// How a destination's worker groups stored records into one upstream request.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    /// Uncompressed payload bytes per request (a single larger record is still sent alone).
    pub max_bytes: ByteSize,
    /// Items (spans, data points, log records) per request.
    pub max_items: u64,
    /// How long a worker waits for a partial batch to fill before sending it.
    #[serde(with = "human_duration")]
    pub linger: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_bytes: ByteSize(4 << 20),
            max_items: 10_000,
            linger: Duration::from_secs(1),
        }
    }
}

/// Backoff bounds for retryable failures: exponential from `initial` to `max`, with jitter.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    #[serde(with = "human_duration")]
    pub initial: Duration,
    #[serde(with = "human_duration")]
    pub max: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(300),
        }
    }
}

fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

/// A map of strings, each with `${VAR}`s expanded.
fn expanded_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    BTreeMap::<String, String>::deserialize(d)?
        .into_iter()
        .map(|(k, v)| expand_env(&v).map(|v| (k, v)))
        .collect::<Result<_, _>>()
        .map_err(de::Error::custom)
}

fn optional_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    human_duration::deserialize(d).map(Some)
}

fn serialize_optional_duration<S: Serializer>(
    value: &Option<Duration>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(d) => human_duration::serialize(d, s),
        None => s.serialize_none(),
    }
}

fn signal_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Signal>, D::Error> {
    let names = Vec::<String>::deserialize(d)?;
    if names.is_empty() {
        return Err(de::Error::custom(
            "signals is empty: list at least one of \"traces\", \"metrics\", \"logs\"",
        ));
    }
    let mut signals = Vec::new();
    for name in names {
        let signal = Signal::ALL
            .into_iter()
            .find(|s| s.name() == name)
            .ok_or_else(|| {
                de::Error::custom(format!(
                    "unknown signal {name:?}, expected \"traces\", \"metrics\" or \"logs\""
                ))
            })?;
        if !signals.contains(&signal) {
            signals.push(signal);
        }
    }
    Ok(signals)
}

impl Serialize for Signal {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

fn unique_destinations<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Vec<DestinationConfig>, D::Error> {
    let mut destinations = Vec::<DestinationConfig>::deserialize(d)?;
    for dest in &mut destinations {
        if dest.signals.is_empty() {
            dest.signals = dest.kind.default_signals();
        }
    }
    for (i, dest) in destinations.iter().enumerate() {
        if destinations[..i].iter().any(|d| d.name == dest.name) {
            return Err(de::Error::custom(format!(
                "two destinations are named {:?}; each destination needs its own name (it keys \
                 the destination's place in the spool)",
                dest.name.as_str()
            )));
        }
    }
    Ok(destinations)
}

/// One address or a list of them; `""` or `[]` means none (disabled).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen(pub Vec<SocketAddr>);

impl<'de> Deserialize<'de> for Listen {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(String),
            Many(Vec<String>),
        }
        let list = match OneOrMany::deserialize(d)? {
            OneOrMany::One(s) if s.is_empty() => Vec::new(),
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        };
        list.iter()
            .map(|s| {
                s.parse::<SocketAddr>().map_err(|_| {
                    de::Error::custom(format!(
                        "invalid listen address {s:?}: expected HOST:PORT with a numeric IP, \
                         such as \"127.0.0.1:4318\" or \"[::1]:4318\""
                    ))
                })
            })
            .collect::<Result<_, _>>()
            .map(Listen)
    }
}

impl Serialize for Listen {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|a| a.to_string()))
    }
}

/// An `http://` or `https://` base URL, with `${VAR}`s expanded and no trailing slash.
/// `Debug` and `Serialize` mask credentials in the URL (`https://user:key@host` prints as
/// `https://***@host`).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Endpoint {
    url: String,
    /// Whether `user:password@` is written in the file rather than coming from `${VAR}`s.
    credentials_in_file: bool,
}

impl Endpoint {
    /// No `endpoint` key was written (the default; [`Config::validate`] requires one where the
    /// destination type needs it).
    pub fn is_unset(&self) -> bool {
        self.url.is_empty()
    }

    /// The URL as written (with `${VAR}`s expanded); credentials included.
    pub fn as_str(&self) -> &str {
        &self.url
    }

    /// The URL with any `user:password@` replaced by `***@`.
    pub fn masked(&self) -> String {
        mask_url_credentials(&self.url)
    }

    /// The URL for one signal: the base with `/v1/<signal>` appended.
    pub fn signal_url(&self, signal: Signal) -> String {
        format!("{}/v1/{}", self.url, signal.name())
    }
}

/// Where a `user:password@` is in `url`: after the scheme, up to the last `@` before the first of
/// `ends`.
fn credentials_before(url: &str, ends: &[char]) -> Option<std::ops::Range<usize>> {
    let start = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[start..];
    let scope = &rest[..rest.find(ends).unwrap_or(rest.len())];
    scope.rfind('@').map(|at| start..start + at)
}

/// Where the `user:password` of a well-formed URL is: in its authority (endpoints are parsed at
/// load, so every one in a config is well formed).
fn url_credentials(url: &str) -> Option<std::ops::Range<usize>> {
    credentials_before(url, &['/', '?', '#'])
}

/// In text that failed to parse as a URL, what may be credentials: up to the last `@` before any
/// query (a password with an unencoded `/` ends the authority early).
fn possible_credentials(text: &str) -> Option<std::ops::Range<usize>> {
    credentials_before(text, &['?', '#'])
}

fn masked(text: &str, credentials: Option<std::ops::Range<usize>>) -> String {
    match credentials {
        Some(at) => format!("{}***{}", &text[..at.start], &text[at.end..]),
        None => text.to_string(),
    }
}

/// `url` with any `user:password@` replaced by `***@`, for logs, errors and `status`.
pub fn mask_url_credentials(url: &str) -> String {
    masked(url, url_credentials(url))
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Endpoint({:?})", self.masked())
    }
}

impl Serialize for Endpoint {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.masked())
    }
}

impl<'de> Deserialize<'de> for Endpoint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        let credentials_in_file =
            url_credentials(&raw).is_some_and(|at| holds_literal_secret(&raw[at]));
        let url = expand_env(&raw).map_err(de::Error::custom)?;
        // Errors show the URL as written (`${VAR}` names, not their values), credentials masked.
        let shown = masked(&raw, possible_credentials(&raw));
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"));
        if !rest.is_some_and(|host| !host.is_empty() && !host.starts_with('/')) {
            return Err(de::Error::custom(format!(
                "invalid endpoint {shown:?}: expected an http:// or https:// URL such as \
                 \"https://collector.example.com:4318\" (/v1/<signal> is appended)"
            )));
        }
        if let Err(e) = reqwest::Url::parse(&url) {
            let hint = if possible_credentials(&url).is_some() {
                "; a user name or password in it must be percent-encoded (/ as %2F, @ as %40, \
                 : as %3A)"
            } else {
                ""
            };
            return Err(de::Error::custom(format!(
                "invalid endpoint {shown:?}: {e}{hint}"
            )));
        }
        Ok(Endpoint {
            url: url.trim_end_matches('/').to_string(),
            credentials_in_file,
        })
    }
}

/// A string that must not be printed: a token, a key, a header value. `${VAR}`s are expanded.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    value: String,
    /// Whether the file holds the secret itself rather than only `${VAR}` references (then the
    /// file's permissions matter: [`Config::exposure_warning`]).
    written_in_file: bool,
}

impl Secret {
    pub fn expose(&self) -> &str {
        &self.value
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("***")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Ok(Secret {
            value: expand_env(&raw).map_err(de::Error::custom)?,
            written_in_file: holds_literal_secret(&raw),
        })
    }
}

/// Whether `raw` (a config string before `${VAR}` expansion) holds secret text of its own:
/// anything but `${VAR}` references and an authorization scheme word (`Bearer ${TOKEN}`).
fn holds_literal_secret(raw: &str) -> bool {
    // An unterminated reference fails the load anyway: then the whole text counts.
    let literal = substitute(raw, |_| Ok(" ".into())).unwrap_or_else(|_| raw.to_string());
    // Separators between references (`${USER}:${PASS}`) are not secrets.
    literal.split_whitespace().any(|word| {
        word.chars().any(char::is_alphanumeric)
            && !["bearer", "basic", "token", "apikey"]
                .iter()
                .any(|scheme| word.eq_ignore_ascii_case(scheme))
    })
}

/// A size: a whole number of bytes, or a string such as `"64MiB"`, `"1GiB"`, `"512KB"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn parse(text: &str) -> Result<ByteSize, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(text.len());
        let (number, unit) = (&text[..split], text[split..].trim());
        let multiplier: u64 = match unit.to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "kb" => 1_000,
            "kib" | "k" => 1 << 10,
            "mb" => 1_000_000,
            "mib" | "m" => 1 << 20,
            "gb" => 1_000_000_000,
            "gib" | "g" => 1 << 30,
            "tb" => 1_000_000_000_000,
            "tib" | "t" => 1 << 40,
            _ => return Err(format!("invalid size {text:?}: unknown unit {unit:?}; use B, KiB, MiB, GiB, TiB (or KB, MB, GB, TB)")),
        };
        let value: f64 = number.parse().map_err(|_| {
            format!("invalid size {text:?}: expected a number and a unit, such as \"64MiB\"")
        })?;
        Ok(ByteSize((value * multiplier as f64) as u64))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u64, &str); 4] = [
            (1 << 40, "TiB"),
            (1 << 30, "GiB"),
            (1 << 20, "MiB"),
            (1 << 10, "KiB"),
        ];
        for (size, unit) in UNITS {
            if self.0 >= size && self.0.is_multiple_of(size) {
                return write!(f, "{}{unit}", self.0 / size);
            }
        }
        write!(f, "{}B", self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) => Ok(ByteSize(n)),
            Raw::Text(t) => ByteSize::parse(&t).map_err(de::Error::custom),
        }
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Durations as humane strings: `"500ms"`, `"5s"`, `"5m"`, `"7d"`.
mod human_duration {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(|e| {
            de::Error::custom(format!(
                "invalid duration {text:?} ({e}): expected a number and a unit, such as \"500ms\", \"5s\", \"5m\", \"7d\""
            ))
        })
    }

    pub fn serialize<S: Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*value))
    }
}

/// Expands every `${VAR}` in `text` from the environment. `HOSTNAME` and `USER`, which shells
/// set but often do not export (and services do not have), fall back to the system's values.
pub fn expand_env(text: &str) -> Result<String, String> {
    substitute(text, |var| {
        std::env::var(var)
            .ok()
            .or_else(|| match var {
                "HOSTNAME" => gethostname::gethostname().into_string().ok(),
                "USER" => std::env::var("LOGNAME").ok(),
                _ => None,
            })
            .ok_or_else(|| {
                format!(
                    "environment variable {var} is not set (referenced as ${{{var}}}); set it \
                     in the agent's environment or write the value in the file"
                )
            })
    })
}

/// `text` with each `${VAR}` replaced by `value_of(VAR)`.
fn substitute(
    text: &str,
    mut value_of: impl FnMut(&str) -> Result<String, String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unterminated ${{ in {text:?}: write ${{VAR}}"))?;
        out.push_str(&value_of(&after[..end])?);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The spool directory when the config names none: systemd's `StateDirectory` for the system
/// service, else the platform's per-user state directory.
fn default_spool_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("STATE_DIRECTORY") {
        // systemd may pass several, colon-separated; ours declares one.
        let first = std::env::split_paths(&dir).next();
        if let Some(first) = first {
            return first;
        }
    }
    dirs::state_dir()
        .or_else(dirs::data_local_dir)
        .unwrap_or_else(std::env::temp_dir)
        .join("otlp-spool")
}

/// Where a configuration came from, for `check` and the startup log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    File(PathBuf),
    Defaults,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::File(p) => write!(f, "{}", p.display()),
            Source::Defaults => f.write_str("embedded defaults (no config file found)"),
        }
    }
}

/// Why a configuration could not be used. Every variant names the file (or "embedded
/// defaults"); [`ConfigError::Invalid`] also names the key and, when the key is written in the
/// file, its line and column.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read; `origin` says who named it (`--config`, `$OTLP_SPOOL_CONFIG`,
    /// or the search path).
    Read {
        path: PathBuf,
        origin: &'static str,
        source: std::io::Error,
    },
    /// The file is not a valid configuration: TOML syntax, an unknown key, a bad value, or a rule
    /// that spans several keys.
    Invalid {
        source_name: String,
        /// 1-based line and column (in characters), when known.
        position: Option<(usize, usize)>,
        /// The dotted key path, such as `spool.max_bytes` or `destination.endpoint`, when known.
        key: Option<String>,
        message: String,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read {
                path,
                origin,
                source,
            } => {
                write!(
                    f,
                    "cannot read config file {} ({origin}): {source}",
                    path.display()
                )?;
                if source.kind() == std::io::ErrorKind::NotFound {
                    if origin.contains("OTLP_SPOOL_CONFIG") {
                        f.write_str(
                            "; fix the path, or unset OTLP_SPOOL_CONFIG to use the default locations",
                        )?;
                    } else {
                        f.write_str("; check the path")?;
                    }
                }
                Ok(())
            }
            ConfigError::Invalid {
                source_name,
                position,
                key,
                message,
            } => {
                write!(f, "invalid config {source_name}")?;
                if let Some((line, column)) = position {
                    write!(f, ", line {line}, column {column}")?;
                }
                if let Some(key) = key {
                    write!(f, ", key {key}")?;
                }
                write!(f, ": {message}")
            }
        }
    }
}

impl Config {
    /// Finds and loads the configuration: `explicit` (from `--config`), else
    /// `$OTLP_SPOOL_CONFIG` (unless empty), else the user config file, else
    /// `/etc/otlp-spool/config.toml`, else the embedded defaults. A file named by `--config` or
    /// `$OTLP_SPOOL_CONFIG` must exist.
    pub fn resolve(explicit: Option<&Path>) -> Result<(Config, Source), ConfigError> {
        let named = match explicit {
            Some(path) => Some((path.to_path_buf(), "given with --config")),
            None => std::env::var_os("OTLP_SPOOL_CONFIG")
                .filter(|v| !v.is_empty())
                .map(|v| (PathBuf::from(v), "named by $OTLP_SPOOL_CONFIG")),
        };
        if let Some((path, origin)) = named {
            return Ok((Config::load_from(&path, origin)?, Source::File(path)));
        }
        for path in search_paths() {
            if path.is_file() {
                let config = Config::load_from(&path, "found on the config search path")?;
                return Ok((config, Source::File(path)));
            }
        }
        Ok((Config::default(), Source::Defaults))
    }

    /// Reads, parses and validates one file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::load_from(path, "given")
    }

    fn load_from(path: &Path, origin: &'static str) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            origin,
            source,
        })?;
        let source_name = path.display().to_string();
        let invalid =
            |offset: Option<usize>, key: Option<String>, message: String| ConfigError::Invalid {
                source_name: source_name.clone(),
                position: offset.map(|o| line_column(&text, o)),
                key,
                message,
            };
        // The spanned document locates what serde's errors cannot: the second of two
        // destinations with one name, and the keys of cross-key rules.
        let doc = toml::de::DeTable::parse(&text).ok();
        if let Some(doc) = &doc {
            if let Some((name, first, second)) = duplicate_destination(doc.get_ref()) {
                return Err(invalid(
                    Some(second),
                    Some("destination.name".into()),
                    format!(
                        "two destinations are named {name:?} (the other one is at line {}); \
                         each destination needs its own name (it keys the destination's place \
                         in the spool)",
                        line_column(&text, first).0
                    ),
                ));
            }
        }
        let config = Config::parse(&text).map_err(|e| {
            let offset = e.span().map(|span| span.start);
            let key = match (&doc, offset) {
                (Some(doc), Some(offset)) => key_path_at(doc.get_ref(), offset),
                _ => None,
            };
            invalid(offset, key, explain(e.message().trim()))
        })?;
        config.validate(&source_name).map_err(|e| match e {
            ConfigError::Invalid {
                key: Some(key),
                message,
                ..
            } => {
                let offset = doc
                    .as_ref()
                    .and_then(|doc| span_of_key(doc.get_ref(), &key))
                    .map(|span| span.start);
                // `destination.1.region` locates the second destination's key; it is shown as
                // `destination.region`, like serde's errors.
                let shown = key
                    .split('.')
                    .filter(|p| p.parse::<usize>().is_err())
                    .collect::<Vec<_>>()
                    .join(".");
                invalid(offset, Some(shown), message)
            }
            other => other,
        })?;
        Ok(config)
    }

    /// The keys whose secrets are written in the file itself (not `${VAR}` references).
    fn secrets_written_in_file(&self) -> Vec<String> {
        let mut keys = Vec::new();
        if self
            .server
            .auth_token
            .as_ref()
            .is_some_and(|t| t.written_in_file)
        {
            keys.push("server.auth_token".to_string());
        }
        for d in &self.destinations {
            let name = d.name.as_str();
            if d.endpoint.credentials_in_file {
                keys.push(format!("destination {name:?} endpoint credentials"));
            }
            for signal in Signal::ALL {
                if d.endpoints
                    .get(signal)
                    .is_some_and(|e| e.credentials_in_file)
                {
                    keys.push(format!(
                        "destination {name:?} endpoints.{} credentials",
                        signal.name()
                    ));
                }
            }
            let secrets = d
                .headers
                .iter()
                .map(|(h, v)| (format!("headers.{h}"), v))
                .chain(d.external_id.iter().map(|v| ("external_id".to_string(), v)))
                .chain(
                    d.bearer_token
                        .iter()
                        .map(|v| ("bearer_token".to_string(), v)),
                );
            for (key, secret) in secrets {
                if secret.written_in_file {
                    keys.push(format!("destination {name:?} {key}"));
                }
            }
        }
        keys
    }

    /// A warning when the file at `path`, which this config was read from, holds secrets and
    /// other users of the machine may read it.
    pub fn exposure_warning(&self, path: &Path) -> Option<String> {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
        let keys = self.secrets_written_in_file();
        if mode & 0o044 == 0 || keys.is_empty() {
            return None;
        }
        Some(format!(
            "config {} holds secrets ({}) and other users of this machine can read it \
             (mode {mode:04o}); run `chmod 600 {}`, or write them as ${{VAR}} references and \
             set the variables in the agent's environment",
            path.display(),
            keys.join(", "),
            path.display()
        ))
    }

    /// Rules that span several keys (one key's parser cannot see them).
    pub fn validate(&self, source_name: &str) -> Result<(), ConfigError> {
        let rule = |key: &str, message: String| ConfigError::Invalid {
            source_name: source_name.to_string(),
            position: None,
            key: Some(key.to_string()),
            message,
        };
        let token = self.server.auth_token.as_ref().map(|t| t.expose());
        if token == Some("") {
            // An empty token would let in every client that sends an empty x-api-key.
            return Err(rule(
                "server.auth_token",
                "auth_token is empty (is the variable it names set, and not empty?); set it to \
                 a secret, or remove the key to accept clients without a token"
                    .into(),
            ));
        }
        if self.server.allow_remote && token.is_none_or(|t| t.chars().count() < MIN_REMOTE_TOKEN) {
            return Err(rule(
                "server.allow_remote",
                format!(
                    "allow_remote = true needs server.auth_token set to at least \
                     {MIN_REMOTE_TOKEN} characters, so that only clients holding it can write; set \
                     server.auth_token (for example auth_token = \"${{OTLP_SPOOL_TOKEN}}\", with \
                     OTLP_SPOOL_TOKEN=$(openssl rand -hex 16))"
                ),
            ));
        }
        let listens = [
            ("server.listen", &self.server.listen),
            ("server.grpc_listen", &self.server.grpc_listen),
        ];
        for (key, listen) in listens {
            let remote = listen.0.iter().find(|a| !a.ip().is_loopback());
            if let (Some(remote), false) = (remote, self.server.allow_remote) {
                return Err(rule(
                    key,
                    format!(
                        "{remote} is reachable from other machines; that needs \
                         server.allow_remote = true and server.auth_token set, so that only \
                         clients holding the token can write; set both, or listen on 127.0.0.1 \
                         and [::1] only"
                    ),
                ));
            }
        }
        if self.server.listen.0.is_empty() && self.server.grpc_listen.0.is_empty() {
            return Err(rule(
                "server.listen",
                "no listen address: set server.listen or server.grpc_listen".into(),
            ));
        }
        for (i, d) in self.destinations.iter().enumerate() {
            d.validate_aws()
                .and_then(|()| d.validate_ca_file())
                .map_err(|(key, message)| {
                    rule(
                        &format!("destination.{i}.{key}"),
                        format!("destination {:?}: {message}", d.name.as_str()),
                    )
                })?;
        }
        if self.server.max_decompressed < self.server.max_body {
            return Err(rule(
                "server.max_decompressed",
                format!(
                    "{} is smaller than server.max_body ({}); it must be at least as large",
                    self.server.max_decompressed, self.server.max_body
                ),
            ));
        }
        Ok(())
    }

    pub fn parse(text: &str) -> Result<Config, toml::de::Error> {
        toml::from_str(text)
    }

    /// The resolved configuration as TOML, secrets masked.
    pub fn to_masked_toml(&self) -> String {
        toml::to_string_pretty(self).expect("the config schema always serializes")
    }
}

/// User config path, then the system one. macOS's is `~/Library/Application Support`.
fn search_paths() -> Vec<PathBuf> {
    let mut paths = Vec::new();
    if let Some(dir) = dirs::config_dir() {
        paths.push(dir.join("otlp-spool").join("config.toml"));
    }
    // XDG's ~/.config is also honoured on macOS, where many users keep dotfiles.
    if let Some(home) = dirs::home_dir() {
        let xdg = home.join(".config").join("otlp-spool").join("config.toml");
        if !paths.contains(&xdg) {
            paths.push(xdg);
        }
    }
    paths.push(PathBuf::from("/etc/otlp-spool/config.toml"));
    paths
}

/// Adds what to do to serde's terse messages.
fn explain(message: &str) -> String {
    if message.starts_with("unknown field") {
        format!("{message}; remove it or correct its spelling")
    } else if message.starts_with("missing field") {
        format!("{message}, which is required here; add it (config.example.toml shows every key)")
    } else {
        message.to_string()
    }
}

/// 1-based line and column (counted in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

type DeTable<'i> = toml::de::DeTable<'i>;
type DeSpanned<'i> = toml::Spanned<toml::de::DeValue<'i>>;

fn entry<'a, 'i>(table: &'a DeTable<'i>, key: &str) -> Option<&'a DeSpanned<'i>> {
    table
        .iter()
        .find(|(k, _)| k.get_ref() == key)
        .map(|(_, v)| v)
}

/// The dotted path of the deepest key whose name or value covers `offset` (array elements add
/// no segment: `destination.endpoint`).
fn key_path_at(doc: &DeTable<'_>, offset: usize) -> Option<String> {
    fn covers(span: std::ops::Range<usize>, offset: usize) -> bool {
        span.contains(&offset) || span.start == offset
    }
    fn in_table(t: &DeTable<'_>, offset: usize, path: &mut Vec<String>, best: &mut Vec<String>) {
        for (k, v) in t.iter() {
            path.push(k.get_ref().to_string());
            if (covers(k.span(), offset) || covers(v.span(), offset)) && path.len() > best.len() {
                *best = path.clone();
            }
            in_value(v, offset, path, best);
            path.pop();
        }
    }
    fn in_value(v: &DeSpanned<'_>, offset: usize, path: &mut Vec<String>, best: &mut Vec<String>) {
        match v.get_ref() {
            toml::de::DeValue::Table(t) => in_table(t, offset, path, best),
            toml::de::DeValue::Array(a) => {
                for e in a.iter() {
                    if covers(e.span(), offset) && path.len() > best.len() {
                        *best = path.clone();
                    }
                    in_value(e, offset, path, best);
                }
            }
            _ => {}
        }
    }
    let mut best = Vec::new();
    in_table(doc, offset, &mut Vec::new(), &mut best);
    (!best.is_empty()).then(|| best.join("."))
}

/// Where the value of a dotted key (`server.listen`) is written, if it is.
/// A numeric segment indexes an array (`destination.1.region`); when such a key is not written
/// (a missing required key), the span of the table that should hold it is returned.
fn span_of_key(doc: &DeTable<'_>, key: &str) -> Option<std::ops::Range<usize>> {
    let mut parts = key.split('.');
    let mut value = entry(doc, parts.next()?)?;
    let mut indexed = false;
    for part in parts {
        let next = match (part.parse::<usize>(), value.get_ref()) {
            (Ok(i), toml::de::DeValue::Array(a)) => {
                indexed = true;
                a.get(i)
            }
            _ => value.get_ref().as_table().and_then(|t| entry(t, part)),
        };
        match next {
            Some(v) => value = v,
            None if indexed => break,
            None => return None,
        }
    }
    Some(value.span())
}

/// The first destination name used twice: the name, and where its first and second uses are.
fn duplicate_destination(doc: &DeTable<'_>) -> Option<(String, usize, usize)> {
    let destinations = entry(doc, "destination")?.get_ref().as_array()?;
    let mut seen: Vec<(&str, usize)> = Vec::new();
    for d in destinations.iter() {
        let Some(name) = d.get_ref().as_table().and_then(|t| entry(t, "name")) else {
            continue;
        };
        let Some(text) = name.get_ref().as_str() else {
            continue;
        };
        if let Some(&(_, first)) = seen.iter().find(|(n, _)| *n == text) {
            return Some((text.to_string(), first, name.span().start));
        }
        seen.push((text, name.span().start));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        let e = Config::parse(text).unwrap_err();
        let (line, _) = line_column(text, e.span().unwrap().start);
        format!("line {line}: {}", e.message())
    }

    #[test]
    fn defaults_listen_on_both_loopbacks() {
        let c = Config::parse("").unwrap();
        assert_eq!(
            c.server.listen.0,
            vec![
                "127.0.0.1:4318".parse::<SocketAddr>().unwrap(),
                "[::1]:4318".parse().unwrap()
            ]
        );
        assert_eq!(c.spool.max_bytes, ByteSize(1 << 30));
        assert_eq!(c.spool.max_age, Duration::from_secs(7 * 86400));
        assert!(c.destinations.is_empty());
    }

    #[test]
    fn full_destination_parses() {
        std::env::set_var("OTLP_SPOOL_TEST_KEY", "k3y");
        let c = Config::parse(
            r#"
            [server]
            listen = "127.0.0.1:9999"
            grpc_listen = ""
            [spool]
            max_bytes = "64MiB"
            max_age = "2h"
            when_full = "reject"
            [[destination]]
            name = "apigw"
            type = "otlp_http"
            endpoint = "http://127.0.0.1:1/prod/"
            signals = ["metrics", "logs"]
            headers = { "x-api-key" = "${OTLP_SPOOL_TEST_KEY}" }
            encoding = "json"
            compression = "none"
            batch = { max_bytes = "1MiB", max_items = 10, linger = "10ms" }
            retry = { initial = "100ms", max = "2s" }
            timeout = "5s"
            "#,
        )
        .unwrap();
        assert!(c.server.grpc_listen.0.is_empty());
        assert_eq!(c.spool.when_full, WhenFull::Reject);
        let d = &c.destinations[0];
        assert_eq!(
            d.endpoint.signal_url(Signal::Logs),
            "http://127.0.0.1:1/prod/v1/logs"
        );
        assert_eq!(d.headers["x-api-key"].expose(), "k3y");
        assert_eq!(d.signals, vec![Signal::Metrics, Signal::Logs]);
        assert_eq!(d.batch.linger, Duration::from_millis(10));
        let shown = c.to_masked_toml();
        assert!(!shown.contains("k3y"), "{shown}");
        assert!(shown.contains("\"***\""), "{shown}");
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let e = err("[server]\nlisten = \"127.0.0.1:1\"\nlisen = 3\n");
        assert!(e.starts_with("line 3"), "{e}");
        assert!(e.contains("lisen"), "{e}");
    }

    #[test]
    fn bad_values_say_why() {
        assert!(err("[spool]\nmax_bytes = \"12 parsecs\"").contains("unknown unit"));
        assert!(err("[spool]\nmax_age = \"soon\"").contains("invalid duration"));
        assert!(err("[server]\nlisten = \"localhost:4318\"").contains("numeric IP"));
        let e = err("[[destination]]\nname = \"a\"\ntype = \"otlp_http\"\nendpoint = \"ftp://x\"");
        assert!(e.contains("http:// or https://"), "{e}");
        let e = err("[[destination]]\nname = \"a\"\ntype = \"otlp_http\"\nendpoint = \"http://x\"\nsignals = [\"spans\"]");
        assert!(e.contains("unknown signal \"spans\""), "{e}");
        let e = err("[[destination]]\nname = \"a\"\ntype = \"otlp_http\"\nendpoint = \"http://${OTLP_SPOOL_SURELY_UNSET}\"");
        assert!(e.contains("OTLP_SPOOL_SURELY_UNSET is not set"), "{e}");
    }

    #[test]
    fn endpoint_credentials_are_masked() {
        let c = Config::parse(
            "[[destination]]\nname = \"a\"\ntype = \"otlp_http\"\nendpoint = \"https://u:k3y@host:1/p@x\"\n",
        )
        .unwrap();
        let d = &c.destinations[0];
        assert_eq!(
            d.endpoint.signal_url(Signal::Logs),
            "https://u:k3y@host:1/p@x/v1/logs"
        );
        assert_eq!(d.endpoint.masked(), "https://***@host:1/p@x");
        assert!(!format!("{d:?}").contains("k3y"));
        assert!(!c.to_masked_toml().contains("k3y"));
        let plain = Config::parse(
            "[[destination]]\nname = \"a\"\ntype = \"otlp_http\"\nendpoint = \"http://h/a@b\"\n",
        )
        .unwrap();
        assert_eq!(plain.destinations[0].endpoint.masked(), "http://h/a@b");
    }

    /// The config-permission warning names secrets written in the file, not `${VAR}` references
    /// (nor the `:` between two of them), in `endpoint` and in per-signal `endpoints` alike.
    #[test]
    fn secrets_written_in_the_file_are_told_from_references() {
        std::env::set_var("OTLP_SPOOL_TEST_USER", "u");
        std::env::set_var("OTLP_SPOOL_TEST_PASS", "p");
        let c = Config::parse(
            "[[destination]]\nname = \"cw\"\ntype = \"cloudwatch\"\nregion = \"us-west-2\"\n\
             signals = [\"logs\", \"traces\"]\nlog_group = \"g\"\nlog_stream = \"s\"\n\
             endpoints = { logs = \"https://${OTLP_SPOOL_TEST_USER}:${OTLP_SPOOL_TEST_PASS}@h/v1/logs\", \
             traces = \"https://user:literal@h/v1/traces\" }\n",
        )
        .unwrap();
        assert_eq!(
            c.secrets_written_in_file(),
            ["destination \"cw\" endpoints.traces credentials"]
        );
    }

    /// A password with an unencoded `/` ends the URL's authority early: such an endpoint is
    /// refused at load, and the error shows none of the password (nor any `${VAR}` value).
    #[test]
    fn an_unparsable_endpoint_is_refused_with_its_credentials_masked() {
        std::env::set_var("OTLP_SPOOL_TEST_PASSWORD", "ab/cd-Zq90");
        for endpoint in [
            "https://user:pw/Zq91@host/prod",
            "htps://user:${OTLP_SPOOL_TEST_PASSWORD}@host",
            "https://user:${OTLP_SPOOL_TEST_PASSWORD}@host",
        ] {
            let e = err(&format!(
                "[[destination]]\nname = \"a\"\ntype = \"otlp_http\"\nendpoint = \"{endpoint}\"\n"
            ));
            assert!(e.contains("invalid endpoint"), "{e}");
            assert!(
                !e.contains("Zq9"),
                "{endpoint}: a password in the error: {e}"
            );
        }
        let e = err(
            "[[destination]]\nname = \"a\"\ntype = \"otlp_http\"\nendpoint = \"https://u:a/b@h\"\n",
        );
        assert!(e.contains("must be percent-encoded (/ as %2F"), "{e}");
    }

    #[test]
    fn duplicate_destination_names_are_refused() {
        let one = "[[destination]]\nname = \"a\"\ntype = \"otlp_http\"\nendpoint = \"http://x\"\n";
        let e = err(&format!("{one}{one}"));
        assert!(e.contains("two destinations are named \"a\""), "{e}");
    }

    #[test]
    fn sizes() {
        assert_eq!(ByteSize::parse("64MiB").unwrap(), ByteSize(64 << 20));
        assert_eq!(ByteSize::parse("1.5 KiB").unwrap(), ByteSize(1536));
        assert_eq!(ByteSize::parse("10MB").unwrap(), ByteSize(10_000_000));
        assert_eq!(ByteSize(64 << 20).to_string(), "64MiB");
        assert_eq!(ByteSize(1000).to_string(), "1000B");
    }

    #[test]
    fn ca_file_is_expanded_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let ca = rcgen::generate_simple_self_signed(vec!["ca.example".to_string()]).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.cert.pem()).unwrap();
        std::env::set_var("OTLP_SPOOL_TEST_CA_DIR", dir.path());
        let config_file = dir.path().join("config.toml");
        let write = |ca_file: &str| {
            let text = format!(
                "[[destination]]\nname = \"a\"\ntype = \"otlp_http\"\nendpoint = \"https://h\"\nca_file = \"{ca_file}\"\n"
            );
            std::fs::write(&config_file, text).unwrap();
        };
        write("${OTLP_SPOOL_TEST_CA_DIR}/ca.pem");
        let c = Config::load(&config_file).unwrap();
        let want = dir.path().join("ca.pem").display().to_string();
        assert_eq!(c.destinations[0].ca_file.as_deref(), Some(want.as_str()));

        write("${OTLP_SPOOL_TEST_CA_DIR}/nope.pem");
        let e = Config::load(&config_file).unwrap_err().to_string();
        let missing = dir.path().join("nope.pem").display().to_string();
        for part in [
            config_file.display().to_string(),
            "line 5".into(),
            "key destination.ca_file".into(),
            format!("destination \"a\": ca_file {missing:?} cannot be read: "),
            "; fix the file or remove ca_file".into(),
        ] {
            assert!(e.contains(&part), "{part:?} not in {e}");
        }
    }

    #[test]
    fn example_config_is_valid() {
        let text = include_str!("../config.example.toml");
        std::env::set_var("OTLP_API_KEY", "example");
        Config::parse(text).unwrap();
    }
}
