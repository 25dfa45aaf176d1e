//! `type = "prometheus_remote_write"`: metrics only, as Prometheus remote write 1.0 to
//! `endpoint` as given, optionally signed with SigV4 (Amazon Managed Prometheus), with
//! `external_labels` added to every series and DELTA series forgotten after `stale_after`.

use std::collections::BTreeMap;
use std::time::Duration;

use super::aws::SigV4;
use super::{required_endpoint, Refusal, WrittenSecrets};
use crate::config::schema::DestinationConfig;
use crate::config::values::Endpoint;
use crate::otlp::Signal;

#[derive(Debug, Clone, PartialEq)]
pub struct RemoteWrite {
    /// The remote-write URL, used as given.
    pub endpoint: Endpoint,
    pub sigv4: Option<SigV4>,
    /// Names are Prometheus label names, not `__name__`.
    pub external_labels: BTreeMap<String, String>,
    /// Unset: the exporter's default.
    pub stale_after: Option<Duration>,
}

impl RemoteWrite {
    /// The keys only this type takes, and whether `raw` sets each.
    pub(super) fn own_keys(raw: &DestinationConfig) -> Vec<(&'static str, bool)> {
        vec![
            ("external_labels", !raw.external_labels.is_empty()),
            ("stale_after", raw.stale_after.is_some()),
        ]
    }

    /// The rules this type adds to what its fields need: metrics only, and AWS's.
    pub(super) fn check(raw: &DestinationConfig) -> Result<(), Refusal> {
        if let Some(s) = raw.signals.iter().find(|s| **s != Signal::Metrics) {
            return Err((
                "signals",
                format!(
                    "type = \"prometheus_remote_write\" carries metrics only, so it cannot route {0}; set signals = [\"metrics\"] (the default for this type) and send {0} to another destination",
                    s.name()
                ),
            ));
        }
        SigV4::check(raw)
    }

    /// Refuses an external label name the exporter could not send (the one place this rule
    /// is checked: the exporter relies on it).
    pub(super) fn from_raw(raw: &DestinationConfig) -> Result<RemoteWrite, Refusal> {
        if let Some(name) = raw.external_labels.keys().find(|k| !valid_label_name(k)) {
            return Err((
                "external_labels",
                format!("{name:?} cannot be an external label: a Prometheus label name matches [a-zA-Z_][a-zA-Z0-9_]* and is not __name__"),
            ));
        }
        Ok(RemoteWrite {
            endpoint: required_endpoint(raw)?,
            sigv4: SigV4::from_raw(raw),
            external_labels: raw.external_labels.clone(),
            stale_after: raw.stale_after,
        })
    }

    pub(super) fn write_raw(&self, raw: &mut DestinationConfig) {
        raw.endpoint = self.endpoint.clone();
        if let Some(sigv4) = &self.sigv4 {
            sigv4.write_raw(raw);
        }
        raw.external_labels = self.external_labels.clone();
        raw.stale_after = self.stale_after;
    }

    pub(super) fn secrets_written_in_file(&self) -> WrittenSecrets {
        WrittenSecrets::of_signed_endpoint(&self.endpoint, self.sigv4.as_ref())
    }
}

/// A name an external label may have: Prometheus's label-name syntax, and not `__name__` (the
/// metric name, which the exporter sets).
fn valid_label_name(name: &str) -> bool {
    name != "__name__"
        && name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}
