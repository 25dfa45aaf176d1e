//! `type = "prometheus_remote_write"`: metrics only, as Prometheus remote write 1.0 to
//! `endpoint` as given, optionally signed with SigV4 (Amazon Managed Prometheus), with
//! `external_labels` added to every series, DELTA series forgotten after `stale_after`, and the
//! point attributes `drop_labels` names removed (series that then match are summed).

use std::collections::BTreeMap;
use std::time::Duration;

use super::aws::{AwsAccess, SigV4};
use super::{required_endpoint, Kind, Refusal, TypeRules, TypeSettings, WrittenSecrets};
use crate::config::schema::{DestinationConfig, DestinationKind, DropLabelsGauges};
use crate::config::values::Endpoint;
use crate::otlp::Signal;

pub(super) const RULES: TypeRules = TypeRules {
    own_keys: RemoteWrite::own_keys,
    check: RemoteWrite::check,
    from_raw: |raw| RemoteWrite::from_raw(raw).map(Kind::PrometheusRemoteWrite),
};

#[derive(Debug, Clone, PartialEq)]
pub struct RemoteWrite {
    /// The remote-write URL, used as given.
    pub endpoint: Endpoint,
    pub sigv4: Option<SigV4>,
    /// Names are Prometheus label names, not `__name__`.
    pub external_labels: BTreeMap<String, String>,
    /// Unset: the exporter's default.
    pub stale_after: Option<Duration>,
    /// Unset: every point attribute becomes a label.
    pub drop_labels: Option<DropLabels>,
}

/// `drop_labels` with the `drop_labels_gauges` choice it requires.
#[derive(Debug, Clone, PartialEq)]
pub struct DropLabels {
    /// Point attribute keys; none is empty, `__name__`, `le` or `quantile`.
    pub labels: Vec<String>,
    pub gauges: DropLabelsGauges,
}

impl RemoteWrite {
    /// The keys only this type takes, and whether `raw` sets each.
    fn own_keys(raw: &DestinationConfig) -> Vec<(&'static str, bool)> {
        vec![
            ("external_labels", !raw.external_labels.is_empty()),
            ("stale_after", raw.stale_after.is_some()),
            ("drop_labels", !raw.drop_labels.is_empty()),
            ("drop_labels_gauges", raw.drop_labels_gauges.is_some()),
        ]
    }

    /// The rules this type adds to what its fields need: metrics only, no label the translation
    /// makes in `drop_labels`, no `drop_labels_gauges` without `drop_labels`, and AWS's.
    fn check(raw: &DestinationConfig) -> Result<(), Refusal> {
        if let Some(s) = raw.signals.iter().find(|s| **s != Signal::Metrics) {
            return Err((
                "signals",
                format!(
                    "type = \"prometheus_remote_write\" carries metrics only, so it cannot route {0}; set signals = [\"metrics\"] (the default for this type) and send {0} to another destination",
                    s.name()
                ),
            ));
        }
        if let Some(name) = raw
            .drop_labels
            .iter()
            .find(|k| k.is_empty() || ["__name__", "le", "quantile"].contains(&k.as_str()))
        {
            return Err((
                "drop_labels",
                format!("{name:?} cannot be dropped: drop_labels names point attributes (such as \"session.id\"), and __name__, le and quantile are made by the translation"),
            ));
        }
        if raw.drop_labels.is_empty() && raw.drop_labels_gauges.is_some() {
            return Err((
                "drop_labels_gauges",
                "drop_labels_gauges applies with drop_labels only; remove it or set drop_labels"
                    .to_string(),
            ));
        }
        SigV4::check(raw)
    }

    /// Refuses an external label name the exporter could not send (the one place this rule
    /// is checked: the exporter relies on it), and `drop_labels` without the gauge choice.
    fn from_raw(raw: &DestinationConfig) -> Result<RemoteWrite, Refusal> {
        if let Some(name) = raw.external_labels.keys().find(|k| !valid_label_name(k)) {
            return Err((
                "external_labels",
                format!("{name:?} cannot be an external label: a Prometheus label name matches [a-zA-Z_][a-zA-Z0-9_]* and is not __name__"),
            ));
        }
        let drop_labels = match (raw.drop_labels.is_empty(), raw.drop_labels_gauges) {
            (true, _) => None,
            (false, Some(gauges)) => Some(DropLabels {
                labels: raw.drop_labels.clone(),
                gauges,
            }),
            (false, None) => return Err((
                "drop_labels_gauges",
                "drop_labels needs drop_labels_gauges: gauges cannot be summed, so say whether a gauge keeps the dropped labels (\"keep\") or is merged keeping the newest value (\"last\")".to_string(),
            )),
        };
        Ok(RemoteWrite {
            endpoint: required_endpoint(raw)?,
            sigv4: SigV4::from_raw(raw),
            external_labels: raw.external_labels.clone(),
            stale_after: raw.stale_after,
            drop_labels,
        })
    }
}

impl TypeSettings for RemoteWrite {
    fn kind_name(&self) -> DestinationKind {
        DestinationKind::PrometheusRemoteWrite
    }

    fn write_raw(&self, raw: &mut DestinationConfig) {
        raw.endpoint = self.endpoint.clone();
        if let Some(sigv4) = &self.sigv4 {
            sigv4.write_raw(raw);
        }
        raw.external_labels = self.external_labels.clone();
        raw.stale_after = self.stale_after;
        if let Some(drop) = &self.drop_labels {
            raw.drop_labels = drop.labels.clone();
            raw.drop_labels_gauges = Some(drop.gauges);
        }
    }

    fn secrets_written_in_file(&self) -> WrittenSecrets {
        WrittenSecrets::of_signed_endpoint(&self.endpoint, self.sigv4.as_ref())
    }

    fn endpoint_display(&self) -> String {
        self.endpoint.masked()
    }

    fn aws_access(&self) -> Option<AwsAccess<'_>> {
        self.sigv4.as_ref().map(SigV4::access)
    }
}

/// A name an external label may have: Prometheus's label-name syntax, and not `__name__` (the
/// metric name, which the exporter sets).
fn valid_label_name(name: &str) -> bool {
    name != "__name__"
        && name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}
