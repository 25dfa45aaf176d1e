//! The value types of the schema, each parsed (and refused with what to do) as its key is read:
//! listen addresses, endpoint URLs (credentials masked when printed), secrets, sizes and
//! durations.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};

use super::env::{expand_env, substitute};

use crate::otlp::Signal;

pub(super) fn optional_duration<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Duration>, D::Error> {
    human_duration::deserialize(d).map(Some)
}

pub(super) fn serialize_optional_duration<S: Serializer>(
    value: &Option<Duration>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(d) => human_duration::serialize(d, s),
        None => s.serialize_none(),
    }
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
    pub(super) credentials_in_file: bool,
}

impl Endpoint {
    /// No `endpoint` key was written (the default; [`super::RawConfig::validate`] requires one where the
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
    pub(super) written_in_file: bool,
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
pub(super) mod human_duration {
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
