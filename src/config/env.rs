//! `${VAR}` expansion of config strings from the agent's environment. Reads the environment only.

use std::collections::BTreeMap;

use serde::de::{self, Deserializer};
use serde::Deserialize;

/// An optional string with `${VAR}`s expanded.
pub(super) fn expanded<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    expanded_required(d).map(Some)
}

pub(super) fn expanded_required<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    expand_env(&String::deserialize(d)?).map_err(de::Error::custom)
}

/// A map of strings, each with `${VAR}`s expanded.
pub(super) fn expanded_map<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    BTreeMap::<String, String>::deserialize(d)?
        .into_iter()
        .map(|(k, v)| expand_env(&v).map(|v| (k, v)))
        .collect::<Result<_, _>>()
        .map_err(de::Error::custom)
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
pub(super) fn substitute(
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
