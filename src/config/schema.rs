//! The raw schema: what a config file may say, as serde reads it (`deny_unknown_fields`, one
//! key's parse error at a time, with its line and column), and the embedded defaults. A
//! destination is one flat [`DestinationConfig`] holding the keys of every type; the rules that
//! span several keys (which type takes which key) are checked afterwards, when
//! [`RawConfig::validate`] turns it into a typed [`super::Destination`].

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};

use super::env::{expanded, expanded_map, expanded_required};
use super::values::{
    human_duration, optional_duration, serialize_optional_duration, ByteSize, Endpoint, Listen,
    Secret,
};

use crate::otlp::Signal;

/// The whole configuration as the file says it (or the embedded defaults), before the rules that
/// span several keys: [`RawConfig::validate`] checks those and makes the [`super::Config`] the agent
/// runs with.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
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
    /// AWS credential requests (SSO, STS) do not use it. Checked by [`RawConfig::validate`].
    #[serde(
        default,
        deserialize_with = "expanded",
        skip_serializing_if = "Option::is_none"
    )]
    pub ca_file: Option<String>,
    // AWS keys: `sigv4` for `otlp_http` (and `prometheus_remote_write`), the credential keys
    // for anything signed, and the `cloudwatch` type's own. All optional; `RawConfig::validate`
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
    /// `prometheus_remote_write`: point attributes (OpenTelemetry keys, such as `session.id`)
    /// removed before series are formed; series that then share labels are summed into one
    /// (see `src/export/prw/cumulative.rs`). Requires `drop_labels_gauges`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drop_labels: Vec<String>,
    /// `prometheus_remote_write` with `drop_labels`: what a gauge carrying a dropped label does.
    /// Gauges cannot be summed, and which metrics are gauges is known only from the data, so
    /// `check` asks for the choice up front instead of guessing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop_labels_gauges: Option<DropLabelsGauges>,
    /// `[destination.redact]`: what is deleted, hashed and cut from what this destination is
    /// sent (see `crate::redact`). Checked when the destination is typed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redact: Option<crate::redact::RedactConfig>,
}

impl DestinationConfig {
    /// A destination named `name` of type `kind` with every other key at its unset value (no
    /// signals; the default batch, retry and timeout): what a typed destination's keys are
    /// written into for `check`.
    pub(super) fn unset(name: DestinationName, kind: DestinationKind) -> DestinationConfig {
        DestinationConfig {
            name,
            kind,
            signals: Vec::new(),
            endpoint: Endpoint::default(),
            headers: BTreeMap::new(),
            encoding: Encoding::default(),
            compression: Compression::default(),
            batch: BatchConfig::default(),
            retry: RetryConfig::default(),
            timeout: default_timeout(),
            ca_file: None,
            sigv4: None,
            region: None,
            log_group: None,
            log_stream: None,
            endpoints: SignalEndpoints::default(),
            profile: None,
            role_arn: None,
            external_id: None,
            session_name: None,
            auth: None,
            bearer_token: None,
            external_labels: BTreeMap::new(),
            stale_after: None,
            drop_labels: Vec::new(),
            drop_labels_gauges: None,
            redact: None,
        }
    }
}

/// `drop_labels_gauges`: a gauge (or non-monotonic sum, or summary) point carrying a dropped
/// label either keeps it (its series are not merged) or is merged keeping the newest value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DropLabelsGauges {
    /// The gauge keeps the labels `drop_labels` names: no merge, no cardinality saved for it.
    Keep,
    /// The gauge loses them like the counters, and the merged series holds the value of the
    /// newest point (by data time) of any of its original series.
    Last,
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

    pub fn is_empty(&self) -> bool {
        Signal::ALL.iter().all(|s| self.get(*s).is_none())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AwsAuth {
    Sigv4,
    Bearer,
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
    pub const ALL: [DestinationKind; 3] = [
        DestinationKind::OtlpHttp,
        DestinationKind::Cloudwatch,
        DestinationKind::PrometheusRemoteWrite,
    ];

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

/// The `type` whose [`DestinationKind::name`] it is.
impl<'de> Deserialize<'de> for DestinationKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        DestinationKind::ALL
            .into_iter()
            .find(|kind| kind.name() == name)
            .ok_or_else(|| {
                let names: Vec<String> = DestinationKind::ALL
                    .iter()
                    .map(|kind| format!("{:?}", kind.name()))
                    .collect();
                de::Error::custom(format!(
                    "unknown destination type {name:?}, expected one of {}",
                    names.join(", ")
                ))
            })
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
