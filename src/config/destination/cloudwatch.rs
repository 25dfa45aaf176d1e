//! `type = "cloudwatch"`: AWS CloudWatch's OTLP endpoints of one `region` (one URL per signal,
//! each overridable in `endpoints`), signed with SigV4 by the agent itself, or with
//! `auth = "bearer"` a CloudWatch Logs API key for logs only. Logs need `log_group` and
//! `log_stream`. Trace batches are capped at CloudWatch's request limits.

use super::aws::{check_sigv4, valid_region, AwsAccess, AwsCredentials};
use super::{Kind, Refusal, TypeRules, TypeSettings, WrittenSecrets};
use crate::config::schema::{
    AwsAuth, BatchConfig, DestinationConfig, DestinationKind, SignalEndpoints,
};
use crate::config::values::{ByteSize, Secret};
use crate::config::OtlpFormat;
use crate::otlp::Signal;

/// CloudWatch's documented per-request limits for traces: 5 MB uncompressed, 10,000 spans.
pub const CLOUDWATCH_TRACES_MAX_BYTES: u64 = 5_000_000;
pub const CLOUDWATCH_TRACES_MAX_ITEMS: u64 = 10_000;

pub(super) const RULES: TypeRules = TypeRules {
    own_keys: Cloudwatch::own_keys,
    check: Cloudwatch::check,
    from_raw: |raw| Cloudwatch::from_raw(raw).map(Kind::Cloudwatch),
};

#[derive(Debug, Clone, PartialEq)]
pub struct Cloudwatch {
    /// A valid AWS region code.
    pub region: String,
    /// Per-signal URL overrides, each for a signal the destination routes.
    pub endpoints: SignalEndpoints,
    pub format: OtlpFormat,
    /// Set exactly when the destination routes logs.
    pub logs: Option<LogTarget>,
    pub auth: CloudwatchAuth,
}

/// Where CloudWatch puts logs: sent as `x-aws-log-group` / `x-aws-log-stream` (printable ASCII).
#[derive(Debug, Clone, PartialEq)]
pub struct LogTarget {
    pub group: String,
    pub stream: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum CloudwatchAuth {
    /// Every signal signed with SigV4 for its service.
    SigV4(AwsCredentials),
    /// A CloudWatch Logs API key; the destination routes logs only.
    Bearer(Secret),
}

impl Cloudwatch {
    /// The keys only this type takes, and whether `raw` sets each.
    fn own_keys(raw: &DestinationConfig) -> Vec<(&'static str, bool)> {
        vec![
            ("region", raw.region.is_some()),
            ("log_group", raw.log_group.is_some()),
            ("log_stream", raw.log_stream.is_some()),
            ("endpoints", !raw.endpoints.is_empty()),
            ("auth", raw.auth.is_some()),
            ("bearer_token", raw.bearer_token.is_some()),
        ]
    }

    /// The rules this type adds to what its fields need: a well-formed region, overrides and
    /// log keys for routed signals only, header-safe log keys, and the bearer key for logs
    /// alone.
    fn check(raw: &DestinationConfig) -> Result<(), Refusal> {
        if let Some(sigv4) = &raw.sigv4 {
            check_sigv4(sigv4)?;
        }
        if !raw.endpoint.is_unset() {
            return Err((
                "endpoint",
                "a cloudwatch destination has one endpoint per signal, derived from region; remove endpoint (to override one, write endpoints = { traces = \"…\" })"
                    .into(),
            ));
        }
        if raw.sigv4.is_some() {
            return Err((
                "sigv4",
                "a cloudwatch destination signs with the services xray, logs and monitoring of its region by itself; remove sigv4"
                    .into(),
            ));
        }
        if let Some(r) = raw.region.as_ref().filter(|r| !valid_region(r)) {
            return Err((
                "region",
                format!("{r:?} is not an AWS region: expected a region code such as \"us-west-2\""),
            ));
        }
        for signal in Signal::ALL {
            if raw.endpoints.get(signal).is_some() && !raw.signals.contains(&signal) {
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
        LogTarget::check(raw)?;
        CloudwatchAuth::check(raw)
    }

    fn from_raw(raw: &DestinationConfig) -> Result<Cloudwatch, Refusal> {
        let Some(region) = raw.region.clone() else {
            return Err((
                "region",
                "missing field `region`, which type = \"cloudwatch\" requires; add it, such as region = \"us-west-2\""
                    .into(),
            ));
        };
        Ok(Cloudwatch {
            region,
            endpoints: raw.endpoints.clone(),
            format: OtlpFormat::from_raw(raw),
            logs: LogTarget::from_raw(raw)?,
            auth: CloudwatchAuth::from_raw(raw)?,
        })
    }
}

impl TypeSettings for Cloudwatch {
    fn kind_name(&self) -> DestinationKind {
        DestinationKind::Cloudwatch
    }

    fn write_raw(&self, raw: &mut DestinationConfig) {
        raw.region = Some(self.region.clone());
        raw.endpoints = self.endpoints.clone();
        self.format.write_raw(raw);
        if let Some(logs) = &self.logs {
            raw.log_group = Some(logs.group.clone());
            raw.log_stream = Some(logs.stream.clone());
        }
        match &self.auth {
            CloudwatchAuth::SigV4(credentials) => credentials.write_raw(raw),
            CloudwatchAuth::Bearer(token) => {
                raw.auth = Some(AwsAuth::Bearer);
                raw.bearer_token = Some(token.clone());
            }
        }
    }

    fn secrets_written_in_file(&self) -> WrittenSecrets {
        let mut written = WrittenSecrets::default();
        for signal in Signal::ALL {
            if let Some(endpoint) = self.endpoints.get(signal) {
                written.endpoint(&format!("endpoints.{}", signal.name()), endpoint);
            }
        }
        match &self.auth {
            CloudwatchAuth::SigV4(credentials) => credentials.note_secrets(&mut written),
            CloudwatchAuth::Bearer(token) => written.key("bearer_token", Some(token)),
        }
        written
    }

    fn endpoint_display(&self) -> String {
        format!("cloudwatch {}", self.region)
    }

    fn aws_access(&self) -> Option<AwsAccess<'_>> {
        Some(match &self.auth {
            CloudwatchAuth::SigV4(credentials) => AwsAccess::SigV4 {
                credentials,
                region: &self.region,
            },
            CloudwatchAuth::Bearer(_) => AwsAccess::LogsApiKey,
        })
    }

    /// Traces capped at CloudWatch's request limits.
    fn batch_for(&self, batch: &BatchConfig, signal: Signal) -> BatchConfig {
        let mut batch = batch.clone();
        if signal == Signal::Traces {
            batch.max_bytes = ByteSize(batch.max_bytes.0.min(CLOUDWATCH_TRACES_MAX_BYTES));
            batch.max_items = batch.max_items.min(CLOUDWATCH_TRACES_MAX_ITEMS);
        }
        batch
    }
}

impl LogTarget {
    /// `log_group` and `log_stream` only with logs routed, and each printable ASCII.
    fn check(raw: &DestinationConfig) -> Result<(), Refusal> {
        let keys = [
            ("log_group", &raw.log_group),
            ("log_stream", &raw.log_stream),
        ];
        for (key, value) in keys {
            match value {
                Some(_) if !raw.signals.contains(&Signal::Logs) => {
                    return Err((
                        key,
                        format!("{key} only applies to logs, which this destination does not route; add \"logs\" to signals or remove {key}"),
                    ))
                }
                Some(v) if v.is_empty() || v.bytes().any(|b| b < 0x20 || b == 0x7f) => {
                    return Err((
                        key,
                        format!("{v:?} cannot be sent as an HTTP header value; use printable ASCII"),
                    ))
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Both keys when logs are routed (`None` when they are not).
    fn from_raw(raw: &DestinationConfig) -> Result<Option<LogTarget>, Refusal> {
        if !raw.signals.contains(&Signal::Logs) {
            return Ok(None);
        }
        let required = |key: &'static str, value: &Option<String>| {
            value.clone().ok_or_else(|| {
                (
                    key,
                    format!(
                        "missing field `{key}`, which CloudWatch needs to route logs (sent as x-aws-{}); add it, or remove \"logs\" from signals",
                        key.replace('_', "-")
                    ),
                )
            })
        };
        Ok(Some(LogTarget {
            group: required("log_group", &raw.log_group)?,
            stream: required("log_stream", &raw.log_stream)?,
        }))
    }
}

impl CloudwatchAuth {
    /// `auth = "bearer"` routes logs only and takes no credential keys; `bearer_token` only
    /// with it.
    fn check(raw: &DestinationConfig) -> Result<(), Refusal> {
        match (raw.auth, &raw.bearer_token) {
            (Some(AwsAuth::Bearer), Some(_)) => {
                if raw.signals != [Signal::Logs] {
                    return Err((
                        "auth",
                        "auth = \"bearer\" (a CloudWatch Logs API key) works for the logs endpoint only; set signals = [\"logs\"] and send traces and metrics through another destination, signed with SigV4"
                            .into(),
                    ));
                }
                match AwsCredentials::from_raw(raw).first_key_set() {
                    Some(key) => Err((
                        key,
                        format!("{key} selects AWS credentials, which auth = \"bearer\" does not use; remove it"),
                    )),
                    None => Ok(()),
                }
            }
            (Some(AwsAuth::Bearer), None) => Ok(()),
            (_, Some(_)) => Err((
                "bearer_token",
                "bearer_token is used only with auth = \"bearer\"; add auth = \"bearer\" or remove bearer_token"
                    .into(),
            )),
            (_, None) => Ok(()),
        }
    }

    fn from_raw(raw: &DestinationConfig) -> Result<CloudwatchAuth, Refusal> {
        match (raw.auth, &raw.bearer_token) {
            (Some(AwsAuth::Bearer), None) => Err((
                "bearer_token",
                "auth = \"bearer\" needs bearer_token, such as bearer_token = \"${CLOUDWATCH_LOGS_API_KEY}\""
                    .into(),
            )),
            (Some(AwsAuth::Bearer), Some(token)) => Ok(CloudwatchAuth::Bearer(token.clone())),
            _ => Ok(CloudwatchAuth::SigV4(AwsCredentials::from_raw(raw))),
        }
    }
}
