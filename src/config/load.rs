//! Where a config comes from and how it fails: the search path, reading and parsing one file,
//! [`ConfigError`] (file, key, line and column, what to do), and the warning about secrets
//! written in a file others can read.

use std::fmt;
use std::path::{Path, PathBuf};

use super::span::{duplicate_destination, key_path_at, line_column, span_of_key};
use super::{Config, RawConfig};

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
        Config::from_text(&text, &path.display().to_string(), RawConfig::validate)
    }

    /// Parses `text`, read from `source_name`, and makes it a [`Config`] with `finish`
    /// ([`RawConfig::validate`] or [`RawConfig::typed`]): errors carry the line and column of the
    /// key at fault.
    pub(super) fn from_text(
        text: &str,
        source_name: &str,
        finish: fn(&RawConfig, &str) -> Result<Config, ConfigError>,
    ) -> Result<Config, ConfigError> {
        let invalid =
            |offset: Option<usize>, key: Option<String>, message: String| ConfigError::Invalid {
                source_name: source_name.to_string(),
                position: offset.map(|o| line_column(text, o)),
                key,
                message,
            };
        // The spanned document locates what serde's errors cannot: the second of two
        // destinations with one name, and the keys of cross-key rules.
        let doc = toml::de::DeTable::parse(text).ok();
        if let Some(doc) = &doc {
            if let Some((name, first, second)) = duplicate_destination(doc.get_ref()) {
                return Err(invalid(
                    Some(second),
                    Some("destination.name".into()),
                    format!(
                        "two destinations are named {name:?} (the other one is at line {}); \
                         each destination needs its own name (it keys the destination's place \
                         in the spool)",
                        line_column(text, first).0
                    ),
                ));
            }
        }
        let raw = RawConfig::parse(text).map_err(|e| {
            let offset = e.span().map(|span| span.start);
            let key = match (&doc, offset) {
                (Some(doc), Some(offset)) => key_path_at(doc.get_ref(), offset),
                _ => None,
            };
            invalid(offset, key, explain(e.message().trim()))
        })?;
        finish(&raw, source_name).map_err(|e| match e {
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
        })
    }

    /// The keys whose secrets are written in the file itself (not `${VAR}` references).
    pub(super) fn secrets_written_in_file(&self) -> Vec<String> {
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
            keys.extend(
                d.secrets_written_in_file()
                    .into_iter()
                    .map(|key| format!("destination {name:?} {key}")),
            );
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
