//! Per-destination redaction: the rules of a `[destination.redact]` table ([`config`]), the
//! `ai-cli` preset, the keyed token, and their application to one batch on its way to one
//! destination ([`Redactor::apply`]).
//!
//! Invariants: a batch no rule touches comes back borrowed, byte for byte as stored; a touched
//! one is decoded and re-encoded once. Metric data point (and exemplar) attributes are never
//! deleted or cut, since that would merge series: the rules that delete elsewhere hash there.
//! A token is `h1:` + 32 hex characters of HMAC-SHA256(key, value); a value that already has a
//! token's shape is left alone, so applying the rules twice (a dead letter replayed) changes
//! nothing, and a cut value is no longer than `max_string`, for the same reason. This module
//! never touches the spool: what it stores stays as the client sent it.

pub mod config;

use std::borrow::Cow;

use hmac::{Hmac, KeyInit, Mac};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{metric, Exemplar};
use prost::Message;
use sha2::Sha256;

pub use config::{KeyPattern, Preset, RedactConfig};

use crate::otlp::{
    ExportLogsServiceRequest, ExportMetricsServiceRequest, ExportTraceServiceRequest, Signal,
};

/// What a rule does to an attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Delete,
    Hash,
}

/// The `ai-cli` preset: what Claude Code, Copilot CLI and Gemini CLI put in their telemetry
/// that is content (prompts, conversations, files, tool arguments, the command line) or
/// identity. README.md's "Privacy" section lists the same keys for users; keep the two equal.
const AI_CLI: &[(&str, Action)] = &[
    // Content: prompts, conversations, files and tool arguments.
    ("prompt", Action::Delete),
    ("prompt_text", Action::Delete),
    ("response", Action::Delete),
    ("user_prompt", Action::Delete),
    ("request_text", Action::Delete),
    ("response_text", Action::Delete),
    ("function_args", Action::Delete),
    ("tool_parameters", Action::Delete),
    ("tool_input", Action::Delete),
    ("file_path", Action::Delete),
    ("body", Action::Delete),
    ("reasoning", Action::Delete),
    ("routing.reasoning", Action::Delete),
    ("gen_ai.input.messages", Action::Delete),
    ("gen_ai.output.messages", Action::Delete),
    ("gen_ai.system_instructions", Action::Delete),
    ("gen_ai.tool.definitions", Action::Delete),
    ("gen_ai.tool.call.arguments", Action::Delete),
    ("gen_ai.tool.call.result", Action::Delete),
    ("workspace.host_paths", Action::Delete),
    ("github.copilot.tool.parameters.*", Action::Delete),
    // The command line (`gemini -p <prompt>`), on resources.
    ("process.command_args", Action::Delete),
    ("process.command_line", Action::Delete),
    ("process.command", Action::Delete),
    ("process.executable.name", Action::Delete),
    ("process.executable.path", Action::Delete),
    // Identities: kept countable, not readable.
    ("user.email", Action::Hash),
    ("user.account_uuid", Action::Hash),
    ("user.account_id", Action::Hash),
    ("enduser.id", Action::Hash),
    ("user.name", Action::Hash),
    ("host.name", Action::Hash),
    ("host.id", Action::Hash),
    ("process.owner", Action::Hash),
    ("vcs.repository.name", Action::Hash),
    ("vcs.repository.url.full", Action::Hash),
    ("vcs.ref.head.name", Action::Hash),
];

/// A preset's keys and what is done to each.
pub fn preset(preset: Preset) -> Vec<(KeyPattern, Action)> {
    let keys = match preset {
        Preset::AiCli => AI_CLI,
    };
    keys.iter()
        .map(|(key, action)| {
            let pattern = KeyPattern::parse(key).expect("a preset's keys are valid patterns");
            (pattern, *action)
        })
        .collect()
}

/// How many values one application deleted, hashed and cut.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub deleted: u64,
    pub hashed: u64,
    pub cut: u64,
}

impl Counts {
    fn touched(&self) -> bool {
        *self != Counts::default()
    }
}

/// One rule in force: a key pattern and its action; none for a `keep`, which shields the keys
/// it matches from the preset's rules after it.
#[derive(Debug, Clone)]
struct Rule {
    pattern: KeyPattern,
    action: Option<Action>,
}

/// A destination's compiled redaction rules.
pub struct Redactor {
    /// In order of precedence: the table's own `delete` and `hash`, its `keep`, then the
    /// preset's keys. The first rule that matches a key decides.
    rules: Vec<Rule>,
    key: Option<Hmac<Sha256>>,
    max_string: Option<usize>,
    preset: Option<Preset>,
}

/// Where an attribute list sits, which decides what the rules may do to it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Place {
    /// Resource and scope attributes: deleted or hashed, never cut.
    Envelope,
    /// Log record, span, span event and link attributes (and log bodies): also cut.
    Record,
    /// Metric data point and exemplar attributes: hashed only (they identify a series).
    DataPoint,
}

impl Redactor {
    /// Compiles a table; `Err` when it has key rules but no `hmac_key` (which
    /// [`RedactConfig::validate`] refuses first, naming the key).
    pub fn new(config: &RedactConfig) -> Result<Redactor, String> {
        let own = |patterns: &[KeyPattern], action| {
            patterns
                .iter()
                .map(move |pattern| Rule {
                    pattern: pattern.clone(),
                    action,
                })
                .collect::<Vec<_>>()
        };
        let mut rules = own(&config.delete, Some(Action::Delete));
        rules.extend(own(&config.hash, Some(Action::Hash)));
        rules.extend(own(&config.keep, None));
        rules.extend(
            config
                .preset
                .map(preset)
                .unwrap_or_default()
                .into_iter()
                .map(|(pattern, action)| Rule {
                    pattern,
                    action: Some(action),
                }),
        );
        let key = match &config.hmac_key {
            Some(k) => Some(
                Hmac::<Sha256>::new_from_slice(k.expose().as_bytes())
                    .map_err(|e| format!("redact.hmac_key cannot key HMAC-SHA256: {e}"))?,
            ),
            None if rules.iter().any(|r| r.action.is_some()) => return Err(
                "redact: key rules need hmac_key (delete rules hash metric data point attributes)"
                    .into(),
            ),
            None => None,
        };
        Ok(Redactor {
            rules,
            key,
            max_string: config.max_string.map(|m| m.0 as usize),
            preset: config.preset,
        })
    }

    /// The rules in force, in one line each, for `check`.
    pub fn describe(&self) -> Vec<String> {
        let list = |action: Option<Action>| {
            // A rule an earlier one covers whole (a preset key under `keep`) is not in force.
            let keys: Vec<String> = self
                .rules
                .iter()
                .enumerate()
                .filter(|(i, r)| {
                    r.action == action
                        && !self.rules[..*i]
                            .iter()
                            .any(|earlier| r.pattern.within(&earlier.pattern))
                })
                .map(|(_, r)| r.pattern.to_string())
                .collect();
            if keys.is_empty() {
                "nothing".to_string()
            } else {
                keys.join(", ")
            }
        };
        vec![
            format!("preset: {}", self.preset.map_or("none", Preset::name)),
            format!(
                "delete (metric data point attributes are hashed instead): {}",
                list(Some(Action::Delete))
            ),
            format!("hash (h1: + HMAC-SHA256): {}", list(Some(Action::Hash))),
            format!("keep (out of the preset): {}", list(None)),
            match self.max_string {
                Some(max) => format!(
                    "cut: log, span and event strings longer than {}",
                    crate::config::ByteSize(max as u64)
                ),
                None => "cut: nothing (no max_string)".into(),
            },
        ]
    }

    /// `payload` (an `Export*ServiceRequest` of `signal`) with the rules applied, and what they
    /// did. Borrowed when no rule touched it.
    pub fn apply<'a>(
        &self,
        signal: Signal,
        payload: &'a [u8],
    ) -> Result<(Cow<'a, [u8]>, Counts), prost::DecodeError> {
        let mut counts = Counts::default();
        let encoded = match signal {
            Signal::Logs => {
                let mut request = ExportLogsServiceRequest::decode(payload)?;
                self.logs(&mut request, &mut counts);
                counts.touched().then(|| request.encode_to_vec())
            }
            Signal::Traces => {
                let mut request = ExportTraceServiceRequest::decode(payload)?;
                self.traces(&mut request, &mut counts);
                counts.touched().then(|| request.encode_to_vec())
            }
            Signal::Metrics => {
                let mut request = ExportMetricsServiceRequest::decode(payload)?;
                self.metrics(&mut request, &mut counts);
                counts.touched().then(|| request.encode_to_vec())
            }
        };
        Ok((encoded.map_or(Cow::Borrowed(payload), Cow::Owned), counts))
    }

    fn logs(&self, request: &mut ExportLogsServiceRequest, counts: &mut Counts) {
        for resource in &mut request.resource_logs {
            if let Some(r) = &mut resource.resource {
                self.attributes(&mut r.attributes, Place::Envelope, counts);
            }
            for scope in &mut resource.scope_logs {
                if let Some(s) = &mut scope.scope {
                    self.attributes(&mut s.attributes, Place::Envelope, counts);
                }
                for record in &mut scope.log_records {
                    self.attributes(&mut record.attributes, Place::Record, counts);
                    if let Some(body) = &mut record.body {
                        self.cut(body, counts);
                    }
                }
            }
        }
    }

    fn traces(&self, request: &mut ExportTraceServiceRequest, counts: &mut Counts) {
        for resource in &mut request.resource_spans {
            if let Some(r) = &mut resource.resource {
                self.attributes(&mut r.attributes, Place::Envelope, counts);
            }
            for scope in &mut resource.scope_spans {
                if let Some(s) = &mut scope.scope {
                    self.attributes(&mut s.attributes, Place::Envelope, counts);
                }
                for span in &mut scope.spans {
                    self.attributes(&mut span.attributes, Place::Record, counts);
                    for event in &mut span.events {
                        self.attributes(&mut event.attributes, Place::Record, counts);
                    }
                    for link in &mut span.links {
                        self.attributes(&mut link.attributes, Place::Record, counts);
                    }
                }
            }
        }
    }

    fn metrics(&self, request: &mut ExportMetricsServiceRequest, counts: &mut Counts) {
        for resource in &mut request.resource_metrics {
            if let Some(r) = &mut resource.resource {
                self.attributes(&mut r.attributes, Place::Envelope, counts);
            }
            for scope in &mut resource.scope_metrics {
                if let Some(s) = &mut scope.scope {
                    self.attributes(&mut s.attributes, Place::Envelope, counts);
                }
                for m in &mut scope.metrics {
                    self.data_points(m.data.as_mut(), counts);
                }
            }
        }
    }

    fn data_points(&self, data: Option<&mut metric::Data>, counts: &mut Counts) {
        let mut point = |attributes: &mut Vec<KeyValue>, exemplars: &mut Vec<Exemplar>| {
            self.attributes(attributes, Place::DataPoint, counts);
            for e in exemplars {
                self.attributes(&mut e.filtered_attributes, Place::DataPoint, counts);
            }
        };
        match data {
            Some(metric::Data::Gauge(g)) => g
                .data_points
                .iter_mut()
                .for_each(|p| point(&mut p.attributes, &mut p.exemplars)),
            Some(metric::Data::Sum(s)) => s
                .data_points
                .iter_mut()
                .for_each(|p| point(&mut p.attributes, &mut p.exemplars)),
            Some(metric::Data::Histogram(h)) => h
                .data_points
                .iter_mut()
                .for_each(|p| point(&mut p.attributes, &mut p.exemplars)),
            Some(metric::Data::ExponentialHistogram(h)) => h
                .data_points
                .iter_mut()
                .for_each(|p| point(&mut p.attributes, &mut p.exemplars)),
            Some(metric::Data::Summary(s)) => s
                .data_points
                .iter_mut()
                .for_each(|p| point(&mut p.attributes, &mut Vec::new())),
            None => {}
        }
    }

    fn action(&self, key: &str) -> Option<Action> {
        self.rules
            .iter()
            .find(|r| r.pattern.matches(key))
            .and_then(|r| r.action)
    }

    fn attributes(&self, attributes: &mut Vec<KeyValue>, place: Place, counts: &mut Counts) {
        attributes.retain_mut(|kv| {
            match (self.action(&kv.key), place) {
                (Some(Action::Delete), Place::Envelope | Place::Record) => {
                    counts.deleted += 1;
                    return false;
                }
                (Some(_), _) => {
                    if let Some(value) = &mut kv.value {
                        self.hash(value, counts);
                    }
                }
                (None, Place::Record) => {
                    if let Some(value) = &mut kv.value {
                        self.cut(value, counts);
                    }
                }
                (None, _) => {}
            }
            true
        });
    }

    /// Replaces `value` by its token (a string), unless it is one already or empty.
    fn hash(&self, value: &mut AnyValue, counts: &mut Counts) {
        // `new` refuses key rules without a key: then no rule matches and this is not reached.
        let Some(key) = &self.key else {
            return;
        };
        let text;
        let bytes: &[u8] = match &value.value {
            None => return,
            Some(any_value::Value::StringValue(s)) if is_token(s) => return,
            Some(any_value::Value::StringValue(s)) => s.as_bytes(),
            Some(any_value::Value::BytesValue(b)) => b,
            Some(any_value::Value::BoolValue(b)) => {
                text = b.to_string();
                text.as_bytes()
            }
            Some(any_value::Value::IntValue(i)) => {
                text = i.to_string();
                text.as_bytes()
            }
            Some(any_value::Value::DoubleValue(d)) => {
                text = d.to_string();
                text.as_bytes()
            }
            Some(
                any_value::Value::ArrayValue(_)
                | any_value::Value::KvlistValue(_)
                | any_value::Value::StringValueStrindex(_),
            ) => {
                text = hex::encode(value.encode_to_vec());
                text.as_bytes()
            }
        };
        let token = token(key, bytes);
        value.value = Some(any_value::Value::StringValue(token));
        counts.hashed += 1;
    }

    /// Cuts every string in `value` (nested ones too) longer than `max_string`.
    fn cut(&self, value: &mut AnyValue, counts: &mut Counts) {
        let Some(max) = self.max_string else {
            return;
        };
        match &mut value.value {
            Some(any_value::Value::StringValue(s)) if s.len() > max => {
                *s = cut_string(s, max);
                counts.cut += 1;
            }
            Some(any_value::Value::ArrayValue(a)) => {
                a.values.iter_mut().for_each(|v| self.cut(v, counts));
            }
            Some(any_value::Value::KvlistValue(l)) => {
                l.values
                    .iter_mut()
                    .filter_map(|kv| kv.value.as_mut())
                    .for_each(|v| self.cut(v, counts));
            }
            _ => {}
        }
    }
}

/// `h1:` + the first 32 hex characters (128 bits) of HMAC-SHA256(key, value).
fn token(key: &Hmac<Sha256>, value: &[u8]) -> String {
    let mut mac = key.clone();
    mac.update(value);
    let digest = mac.finalize().into_bytes();
    format!("h1:{}", hex::encode(&digest[..16]))
}

/// Whether `s` has a token's shape: `h1:` and 32 lower-case hex digits.
pub fn is_token(s: &str) -> bool {
    s.len() == 35
        && s.starts_with("h1:")
        && s[3..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `s` cut to at most `max` bytes, its end marked with how long it was:
/// `…[cut: 40960 bytes]`. The result is never longer than `max`, so cutting it again does
/// nothing.
fn cut_string(s: &str, max: usize) -> String {
    let marker = format!("…[cut: {} bytes]", s.len());
    let mut end = max.saturating_sub(marker.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{marker}", &s[..end])
}

#[cfg(test)]
mod tests;
