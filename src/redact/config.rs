//! The `[destination.redact]` table as written: its schema (serde, unknown keys refused), the
//! shape of key patterns, and the rules that span its keys ([`RedactConfig::validate`]). It
//! only describes; [`super::Redactor`] compiles it into what the worker applies.

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};

use crate::config::{ByteSize, Secret};

/// The shortest HMAC key accepted: a shorter one could be guessed, and with it every token
/// tested against candidate emails.
pub const MIN_HMAC_KEY_BYTES: usize = 32;

/// The smallest `max_string`: a cut value ends with its marker, which must fit.
pub const MIN_MAX_STRING: u64 = 64;

/// `[destination.redact]`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RedactConfig {
    /// A named list of keys (see [`super::preset`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<Preset>,
    /// The HMAC-SHA256 key tokens are made with (`${VAR}` expanded); the same on every machine
    /// of a fleet, so that one value gives one token everywhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hmac_key: Option<Secret>,
    /// More keys to remove.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub delete: Vec<KeyPattern>,
    /// More keys whose values are replaced by a token.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hash: Vec<KeyPattern>,
    /// Keys taken out of the preset.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keep: Vec<KeyPattern>,
    /// Longer string values of log records (body included), spans and span events are cut.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_string: Option<ByteSize>,
}

/// A named list of keys to delete and to hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Preset {
    /// The AI coding CLIs' content and identity keys.
    #[serde(rename = "ai-cli")]
    AiCli,
}

impl Preset {
    pub fn name(self) -> &'static str {
        match self {
            Preset::AiCli => "ai-cli",
        }
    }
}

impl<'de> Deserialize<'de> for Preset {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match String::deserialize(d)?.as_str() {
            "ai-cli" => Ok(Preset::AiCli),
            other => Err(de::Error::custom(format!(
                "unknown redact preset {other:?}, expected \"ai-cli\" (or no preset, and the keys \
                 in delete and hash)"
            ))),
        }
    }
}

/// An attribute key, exactly (`user.email`), or every key under a prefix (`internal.*` matches
/// `internal.token` and `internal.a.b`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPattern {
    Exact(String),
    /// The prefix with its dot: `internal.`.
    Prefix(String),
}

impl KeyPattern {
    pub fn parse(text: &str) -> Result<KeyPattern, String> {
        let invalid = |why: &str| {
            format!(
                "invalid attribute key {text:?}: {why}; write a key exactly (\"user.email\") or a \
                 prefix ending in .* (\"internal.*\")"
            )
        };
        if text.is_empty() {
            return Err(invalid("it is empty"));
        }
        match text.strip_suffix('*') {
            Some(prefix) if prefix.ends_with('.') && prefix.len() > 1 && !prefix.contains('*') => {
                Ok(KeyPattern::Prefix(prefix.to_string()))
            }
            Some(_) => Err(invalid("a * may only end a prefix, after a dot")),
            None if text.contains('*') => Err(invalid("a * may only end a prefix, after a dot")),
            None => Ok(KeyPattern::Exact(text.to_string())),
        }
    }

    pub fn matches(&self, key: &str) -> bool {
        match self {
            KeyPattern::Exact(k) => k == key,
            KeyPattern::Prefix(p) => key.starts_with(p.as_str()),
        }
    }

    /// Whether every key this pattern matches is matched by `other` too.
    pub fn within(&self, other: &KeyPattern) -> bool {
        match self {
            KeyPattern::Exact(k) => other.matches(k),
            KeyPattern::Prefix(p) => {
                matches!(other, KeyPattern::Prefix(q) if p.starts_with(q.as_str()))
            }
        }
    }
}

impl std::fmt::Display for KeyPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyPattern::Exact(k) => f.write_str(k),
            KeyPattern::Prefix(p) => write!(f, "{p}*"),
        }
    }
}

impl<'de> Deserialize<'de> for KeyPattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        KeyPattern::parse(&String::deserialize(d)?).map_err(de::Error::custom)
    }
}

impl Serialize for KeyPattern {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl RedactConfig {
    /// The rules that span keys: `Err((key, why))`, the key relative to the destination
    /// (`redact.hmac_key`), like the destination's other checks.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let preset_keys = self.preset.map(super::preset).unwrap_or_default();
        // Delete rules hash too: on metric data points, where deleting would merge series.
        let hashes = self.preset.is_some() || !self.hash.is_empty() || !self.delete.is_empty();
        if self.preset.is_none()
            && self.delete.is_empty()
            && self.hash.is_empty()
            && self.max_string.is_none()
        {
            return Err((
                "redact",
                "the redact table has no rule; set preset = \"ai-cli\", or list keys in delete or \
                 hash, or set max_string (or remove the table)"
                    .into(),
            ));
        }
        match &self.hmac_key {
            None if hashes => {
                return Err((
                    "redact.hmac_key",
                    format!(
                        "missing field `hmac_key`, which hashing needs (delete rules hash metric \
                         data point attributes); add hmac_key = \
                         \"${{OTLP_SPOOL_REDACT_KEY}}\" and set OTLP_SPOOL_REDACT_KEY to at least \
                         {MIN_HMAC_KEY_BYTES} random bytes (`openssl rand -hex 32`), the same on \
                         every machine of the fleet"
                    ),
                ))
            }
            Some(key) if key.expose().len() < MIN_HMAC_KEY_BYTES => {
                return Err((
                    "redact.hmac_key",
                    format!(
                        "the key is {} bytes long (is the variable it names set?); it must be at \
                         least {MIN_HMAC_KEY_BYTES}, or a guess could be tested against the \
                         tokens; use `openssl rand -hex 32`",
                        key.expose().len()
                    ),
                ))
            }
            _ => {}
        }
        for pattern in &self.hash {
            if let Some(other) = self
                .delete
                .iter()
                .find(|d| pattern.within(d) || d.within(pattern))
            {
                return Err((
                    "redact.hash",
                    format!(
                        "{pattern} is to be hashed but delete lists {other}; a key is either \
                         deleted or hashed, so remove it from one list"
                    ),
                ));
            }
        }
        for pattern in &self.keep {
            if !preset_keys
                .iter()
                .any(|(p, _)| pattern.within(p) || p.within(pattern))
            {
                let preset = self.preset.map_or("no preset is set", Preset::name);
                return Err((
                    "redact.keep",
                    format!(
                        "{pattern} matches no key of the preset ({preset}); keep takes keys out \
                         of the preset (the README lists them), so remove it"
                    ),
                ));
            }
        }
        if let Some(max) = self.max_string {
            if max.0 < MIN_MAX_STRING {
                return Err((
                    "redact.max_string",
                    format!(
                        "{max} is too small: a cut value keeps its marker, so max_string must be \
                         at least {MIN_MAX_STRING}B"
                    ),
                ));
            }
        }
        Ok(())
    }
}
