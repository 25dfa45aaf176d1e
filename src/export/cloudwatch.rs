//! The `cloudwatch` destination: AWS CloudWatch's OTLP endpoints, as an [`OtlpHttp`] client
//! with one route per signal (no second HTTP client):
//!
//! | signal  | URL                                                    | SigV4 service | extra headers |
//! |---------|--------------------------------------------------------|---------------|---------------|
//! | traces  | `https://xray.{region}.amazonaws.com/v1/traces`        | `xray`        | |
//! | logs    | `https://logs.{region}.amazonaws.com/v1/logs`          | `logs`        | `x-aws-log-group`, `x-aws-log-stream` |
//! | metrics | `https://monitoring.{region}.amazonaws.com/v1/metrics` | `monitoring`  | |
//!
//! `endpoints = { … }` replaces a signal's URL as given (VPC endpoints, tests). With
//! `auth = "bearer"` the logs route carries `Authorization: Bearer <bearer_token>` (a CloudWatch
//! Logs API key) instead of a signature. The trace limits (5 MB uncompressed, 10,000 spans per
//! request) are applied by the worker's batch limits ([`Destination::batch_for`]).
//!
//! [`explain`] turns CloudWatch's common errors into advice in `status`: a missing log group or
//! stream (held and retried, not dead-lettered: it is a setting to fix, not bad data),
//! Transaction Search not enabled for traces, missing IAM permissions. The typed
//! [`Cloudwatch`] settings guarantee a valid region, log headers when logs are routed, and one
//! way to authenticate.

use std::sync::Arc;

use reqwest::header::{HeaderValue, AUTHORIZATION};

use super::otlp_http::{configured_headers, Advice, OtlpHttp, Route};
use crate::aws::credentials::{CachedCredentials, CredentialSettings};
use crate::aws::sigv4::Signer;
use crate::config::{Cloudwatch, CloudwatchAuth, Destination};
use crate::otlp::{PerSignal, Signal};

/// The host prefix and SigV4 service of a signal's CloudWatch endpoint.
pub fn service(signal: Signal) -> &'static str {
    match signal {
        Signal::Traces => "xray",
        Signal::Logs => "logs",
        Signal::Metrics => "monitoring",
    }
}

/// The default URL of a signal in a region.
pub fn default_url(region: &str, signal: Signal) -> String {
    format!(
        "https://{}.{region}.amazonaws.com/v1/{}",
        service(signal),
        signal.name()
    )
}

pub fn new(config: &Destination, settings: &Cloudwatch) -> Result<OtlpHttp, String> {
    let region = settings.region.as_str();
    let base = configured_headers(config)?;
    let (credentials, bearer_token) = match &settings.auth {
        CloudwatchAuth::SigV4(credentials) => (
            Some(Arc::new(CachedCredentials::new(CredentialSettings::new(
                credentials,
                region,
            )))),
            None,
        ),
        CloudwatchAuth::Bearer(token) => (None, Some(token)),
    };
    let header = |name: &str, value: &str| {
        HeaderValue::from_str(value).map_err(|_| {
            format!(
                "destination {}: {name} is not a valid HTTP header value",
                config.name
            )
        })
    };
    let route = |signal: Signal| {
        let url = match settings.endpoints.get(signal) {
            Some(endpoint) => endpoint.as_str().to_string(),
            None => default_url(region, signal),
        };
        let mut headers = base.clone();
        let signer = credentials
            .as_ref()
            .map(|c| Signer::new(region, service(signal), Arc::clone(c)));
        if let (Signal::Logs, Some(logs)) = (signal, &settings.logs) {
            headers.insert("x-aws-log-group", header("log_group", &logs.group)?);
            headers.insert("x-aws-log-stream", header("log_stream", &logs.stream)?);
            if let Some(token) = bearer_token {
                let mut value = header("bearer_token", &format!("Bearer {}", token.expose()))?;
                value.set_sensitive(true);
                headers.insert(AUTHORIZATION, value);
            }
        }
        Ok::<_, String>(Route {
            url,
            headers,
            signer,
        })
    };
    let routes = PerSignal::from([
        route(Signal::Traces)?,
        route(Signal::Metrics)?,
        route(Signal::Logs)?,
    ]);
    OtlpHttp::with_routes(config, settings.format, routes, explain)
}

/// Advice for CloudWatch's common errors (see the module docs).
pub fn explain(signal: Signal, status: u16, message: &str) -> Option<Advice> {
    let lower = message.to_ascii_lowercase();
    if lower.contains("resourcenotfound")
        || (signal == Signal::Logs && lower.contains("log group") && lower.contains("not exist"))
        || (signal == Signal::Logs && lower.contains("log stream") && lower.contains("not exist"))
    {
        return Some(Advice {
            hint: "the log group or log stream does not exist: create them with `aws logs \
                   create-log-group --log-group-name <log_group>` and `aws logs \
                   create-log-stream --log-group-name <log_group> --log-stream-name \
                   <log_stream>` (the data is held until then)",
            hold: true,
        });
    }
    if signal == Signal::Traces
        && (lower.contains("transaction search")
            || lower.contains("trace segment destination")
            || lower.contains("tracesegmentdestination"))
    {
        return Some(Advice {
            hint: "CloudWatch Transaction Search is not enabled in this account and region: \
                   enable it (CloudWatch console, Application Signals, Transaction Search, or \
                   `aws xray update-trace-segment-destination --destination CloudWatchLogs`); \
                   the data is held until then",
            hold: true,
        });
    }
    if status == 403 && (lower.contains("not authorized") || lower.contains("accessdenied")) {
        return Some(Advice {
            hint: match signal {
                Signal::Traces => {
                    "the credentials lack permission: allow xray:PutTraceSegments (and \
                     xray:PutSpans) for them"
                }
                Signal::Logs => {
                    "the credentials lack permission: allow logs:PutLogEvents on the log group"
                }
                Signal::Metrics => {
                    "the credentials lack permission: allow cloudwatch:PutMetricData for them"
                }
            },
            hold: false,
        });
    }
    if lower.contains("expiredtoken")
        || lower.contains("security token included in the request is expired")
    {
        return Some(Advice {
            hint: "the session has expired",
            hold: false,
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_services() {
        assert_eq!(
            default_url("us-west-2", Signal::Traces),
            "https://xray.us-west-2.amazonaws.com/v1/traces"
        );
        assert_eq!(
            default_url("eu-central-1", Signal::Logs),
            "https://logs.eu-central-1.amazonaws.com/v1/logs"
        );
        assert_eq!(
            default_url("us-west-2", Signal::Metrics),
            "https://monitoring.us-west-2.amazonaws.com/v1/metrics"
        );
    }

    #[test]
    fn known_errors_get_advice() {
        let a = explain(
            Signal::Logs,
            400,
            "ResourceNotFoundException: The specified log group does not exist.",
        )
        .unwrap();
        assert!(a.hold && a.hint.contains("create-log-group"));
        let a = explain(
            Signal::Traces,
            400,
            "Transaction Search is not enabled for this account",
        )
        .unwrap();
        assert!(a.hold && a.hint.contains("update-trace-segment-destination"));
        assert!(explain(Signal::Metrics, 400, "bad data point").is_none());
    }
}
