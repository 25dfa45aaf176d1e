//! The configuration: schema, embedded defaults, `${ENV}` expansion, validation, and where the
//! file is looked for.
//!
//! Two layers: [`RawConfig`] is what a file says, as serde reads it; [`RawConfig::validate`]
//! applies the rules that span keys and makes the typed [`Config`] the agent runs with, each
//! destination a [`Destination`] whose [`Kind`] holds only its type's settings.
//!
//! Invariants: in a [`Config`] every size, duration, address and URL was parsed, every `${VAR}`
//! expanded, every destination name is unique, and every destination has what its type needs;
//! one that was loaded ([`Config::load`], [`Config::resolve`]) also passed every cross-key rule.
//! Unknown keys are errors (serde's `deny_unknown_fields`). A [`ConfigError`] from a file names
//! the file, the dotted key (`spool.max_bytes`, `destination.retry.max`), its line and column
//! (also for the cross-key rules, when the key is written in the file), and what to do.
//! Secrets ([`Secret`], and credentials in an [`Endpoint`] URL) never print: `Debug` and
//! `Serialize` mask them, so `check` and logs can show a resolved config as is. This module reads
//! files and the environment; it opens no sockets and touches no spool.
//!
//! Files: `schema` (what a file may say, as serde reads it), `values` (sizes, durations,
//! secrets, endpoints, listen addresses), `env` (`${VAR}` expansion), `load` (finding and
//! reading a file, [`ConfigError`]), `span` (where a key is written in the TOML text) and
//! `destination/` (the typed destinations, one file per type).

mod destination;
mod env;
mod load;
mod schema;
mod span;
mod values;

pub use destination::*;
pub use env::*;
pub use load::*;
pub use schema::*;
pub use values::*;

/// The shortest `auth_token` accepted with `allow_remote`: reachable from other machines, a token
/// must not be guessable.
const MIN_REMOTE_TOKEN: usize = 16;

/// The configuration the agent runs with, each destination typed.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Config {
    pub server: ServerConfig,
    pub spool: SpoolConfig,
    pub destinations: Vec<Destination>,
}

impl RawConfig {
    /// Reads config text; only what one key's parser sees is checked.
    pub fn parse(text: &str) -> Result<RawConfig, toml::de::Error> {
        toml::from_str(text)
    }

    /// Checks the rules that span several keys (one key's parser cannot see them) and makes the
    /// typed configuration.
    pub fn validate(&self, source_name: &str) -> Result<Config, ConfigError> {
        let rule = |key: &str, message: String| ConfigError::Invalid {
            source_name: source_name.to_string(),
            position: None,
            key: Some(key.to_string()),
            message,
        };
        let token = self.server.auth_token.as_ref().map(|t| t.expose());
        if token == Some("") {
            // An empty token would let in every client that sends an empty x-api-key.
            return Err(rule(
                "server.auth_token",
                "auth_token is empty (is the variable it names set, and not empty?); set it to \
                 a secret, or remove the key to accept clients without a token"
                    .into(),
            ));
        }
        if self.server.allow_remote && token.is_none_or(|t| t.chars().count() < MIN_REMOTE_TOKEN) {
            return Err(rule(
                "server.allow_remote",
                format!(
                    "allow_remote = true needs server.auth_token set to at least \
                     {MIN_REMOTE_TOKEN} characters, so that only clients holding it can write; set \
                     server.auth_token (for example auth_token = \"${{OTLP_SPOOL_TOKEN}}\", with \
                     OTLP_SPOOL_TOKEN=$(openssl rand -hex 16))"
                ),
            ));
        }
        let listens = [
            ("server.listen", &self.server.listen),
            ("server.grpc_listen", &self.server.grpc_listen),
        ];
        for (key, listen) in listens {
            let remote = listen.0.iter().find(|a| !a.ip().is_loopback());
            if let (Some(remote), false) = (remote, self.server.allow_remote) {
                return Err(rule(
                    key,
                    format!(
                        "{remote} is reachable from other machines; that needs \
                         server.allow_remote = true and server.auth_token set, so that only \
                         clients holding the token can write; set both, or listen on 127.0.0.1 \
                         and [::1] only"
                    ),
                ));
            }
        }
        if self.server.listen.0.is_empty() && self.server.grpc_listen.0.is_empty() {
            return Err(rule(
                "server.listen",
                "no listen address: set server.listen or server.grpc_listen".into(),
            ));
        }
        let mut destinations = Vec::with_capacity(self.destinations.len());
        for (i, d) in self.destinations.iter().enumerate() {
            let typed = Destination::check(d).and_then(|()| Destination::from_raw(d));
            destinations.push(typed.map_err(|refusal| refused(source_name, i, d, refusal))?);
        }
        if self.server.max_decompressed < self.server.max_body {
            return Err(rule(
                "server.max_decompressed",
                format!(
                    "{} is smaller than server.max_body ({}); it must be at least as large",
                    self.server.max_decompressed, self.server.max_body
                ),
            ));
        }
        Ok(Config {
            server: self.server.clone(),
            spool: self.spool.clone(),
            destinations,
        })
    }

    /// The typed configuration, checking only what the types need (such as a `cloudwatch`
    /// destination's `region`), none of [`RawConfig::validate`]'s other rules.
    pub fn typed(&self, source_name: &str) -> Result<Config, ConfigError> {
        let destinations = self
            .destinations
            .iter()
            .enumerate()
            .map(|(i, d)| {
                Destination::from_raw(d).map_err(|refusal| refused(source_name, i, d, refusal))
            })
            .collect::<Result<_, _>>()?;
        Ok(Config {
            server: self.server.clone(),
            spool: self.spool.clone(),
            destinations,
        })
    }
}

/// The error of destination `i` (`raw`) breaking a rule: the key located in the file as
/// `destination.<i>.<key>`.
fn refused(
    source_name: &str,
    i: usize,
    raw: &DestinationConfig,
    (key, message): destination::Refusal,
) -> ConfigError {
    ConfigError::Invalid {
        source_name: source_name.to_string(),
        position: None,
        key: Some(format!("destination.{i}.{key}")),
        message: format!("destination {:?}: {message}", raw.name.as_str()),
    }
}

impl Config {
    /// Reads config text and types it with [`RawConfig::typed`], not [`RawConfig::validate`]:
    /// tests build configs no file could pass, such as per-signal overrides for signals a
    /// destination does not route. Errors name the source `text`.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_text(text, "text", RawConfig::typed)
    }

    /// The resolved configuration as TOML, secrets masked: what a file saying the same would
    /// hold.
    pub fn to_masked_toml(&self) -> String {
        let raw = RawConfig {
            server: self.server.clone(),
            spool: self.spool.clone(),
            destinations: self.destinations.iter().map(Destination::to_raw).collect(),
        };
        toml::to_string_pretty(&raw).expect("the config schema always serializes")
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use super::span::line_column;
    use super::*;
    use crate::otlp::Signal;

    /// What serde says of `text`, with the line.
    fn err(text: &str) -> String {
        let e = RawConfig::parse(text).unwrap_err();
        let (line, _) = line_column(text, e.span().unwrap().start);
        format!("line {line}: {}", e.message())
    }

    /// The settings of an `otlp_http` destination.
    fn otlp(d: &Destination) -> &OtlpHttp {
        match &d.kind {
            Kind::OtlpHttp(k) => k,
            other => panic!("not otlp_http: {other:?}"),
        }
    }

    #[test]
    fn defaults_listen_on_both_loopbacks() {
        let c = Config::parse("").unwrap();
        assert_eq!(
            c.server.listen.0,
            vec![
                "127.0.0.1:4318".parse::<SocketAddr>().unwrap(),
                "[::1]:4318".parse().unwrap()
            ]
        );
        assert_eq!(c.spool.max_bytes, ByteSize(1 << 30));
        assert_eq!(c.spool.max_age, Duration::from_secs(7 * 86400));
        assert!(c.destinations.is_empty());
    }

    #[test]
    fn full_destination_parses() {
        std::env::set_var("OTLP_SPOOL_TEST_KEY", "k3y");
        let c = Config::parse(
            r#"
            [server]
            listen = "127.0.0.1:9999"
            grpc_listen = ""
            [spool]
            max_bytes = "64MiB"
            max_age = "2h"
            when_full = "reject"
            [[destination]]
            name = "apigw"
            type = "otlp_http"
            endpoint = "http://127.0.0.1:1/prod/"
            signals = ["metrics", "logs"]
            headers = { "x-api-key" = "${OTLP_SPOOL_TEST_KEY}" }
            encoding = "json"
            compression = "none"
            batch = { max_bytes = "1MiB", max_items = 10, linger = "10ms" }
            retry = { initial = "100ms", max = "2s" }
            timeout = "5s"
            "#,
        )
        .unwrap();
        assert!(c.server.grpc_listen.0.is_empty());
        assert_eq!(c.spool.when_full, WhenFull::Reject);
        let d = &c.destinations[0];
        assert_eq!(
            otlp(d).endpoint.signal_url(Signal::Logs),
            "http://127.0.0.1:1/prod/v1/logs"
        );
        assert_eq!(d.headers["x-api-key"].expose(), "k3y");
        assert_eq!(d.signals, vec![Signal::Metrics, Signal::Logs]);
        assert_eq!(d.batch.linger, Duration::from_millis(10));
        let shown = c.to_masked_toml();
        assert!(!shown.contains("k3y"), "{shown}");
        assert!(shown.contains("\"***\""), "{shown}");
    }

    /// `check` prints the typed config through [`Destination::to_raw`]: every key of every
    /// type comes back as the file said it.
    #[test]
    fn typed_destinations_print_as_the_file_says() {
        let text = "[[destination]]\nname = \"gw\"\ntype = \"otlp_http\"\nendpoint = \"https://u:p@h/x\"\n\
             encoding = \"json\"\ncompression = \"none\"\nheaders = { k = \"v\" }\n\
             sigv4 = { region = \"us-west-2\", service = \"execute-api\" }\nprofile = \"p\"\n\
             role_arn = \"arn:aws:iam::1:role/r\"\nexternal_id = \"e\"\nsession_name = \"s\"\n\
             [[destination]]\nname = \"cw\"\ntype = \"cloudwatch\"\nregion = \"eu-west-1\"\n\
             signals = [\"logs\", \"traces\"]\nlog_group = \"g\"\nlog_stream = \"s\"\n\
             endpoints = { traces = \"http://h/v1/traces\" }\nprofile = \"p\"\n\
             [[destination]]\nname = \"key\"\ntype = \"cloudwatch\"\nregion = \"eu-west-1\"\n\
             signals = [\"logs\"]\nlog_group = \"g\"\nlog_stream = \"s\"\nauth = \"bearer\"\n\
             bearer_token = \"t\"\n\
             [[destination]]\nname = \"amp\"\ntype = \"prometheus_remote_write\"\n\
             endpoint = \"https://h/api/v1/write\"\nexternal_labels = { cluster = \"c\" }\n\
             stale_after = \"30m\"\nsigv4 = { region = \"us-east-1\", service = \"aps\" }\n\
             drop_labels = [\"session.id\"]\ndrop_labels_gauges = \"last\"\n";
        let raw = RawConfig::parse(text).unwrap();
        let typed = raw.validate("test").unwrap();
        assert_eq!(
            typed.to_masked_toml(),
            toml::to_string_pretty(&raw).unwrap()
        );
    }

    /// The exporter sends external labels as they are: their names are checked on every way to
    /// a typed destination, [`Config::parse`]'s included.
    #[test]
    fn external_label_names_are_checked_whenever_a_destination_is_typed() {
        let text = "[[destination]]\nname = \"amp\"\ntype = \"prometheus_remote_write\"\n\
                    endpoint = \"http://127.0.0.1:9/w\"\nexternal_labels = { __name__ = \"x\" }\n";
        let e = Config::parse(text).unwrap_err().to_string();
        assert!(
            e.contains("\"__name__\" cannot be an external label"),
            "{e}"
        );
        assert!(
            e.contains("line 5") && e.contains("key destination.external_labels"),
            "{e}"
        );
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let e = err("[server]\nlisten = \"127.0.0.1:1\"\nlisen = 3\n");
        assert!(e.starts_with("line 3"), "{e}");
        assert!(e.contains("lisen"), "{e}");
    }

    #[test]
    fn bad_values_say_why() {
        assert!(err("[spool]\nmax_bytes = \"12 parsecs\"").contains("unknown unit"));
        assert!(err("[spool]\nmax_age = \"soon\"").contains("invalid duration"));
        assert!(err("[server]\nlisten = \"localhost:4318\"").contains("numeric IP"));
        let e = err("[[destination]]\nname = \"a\"\ntype = \"otlp_http\"\nendpoint = \"ftp://x\"");
        assert!(e.contains("http:// or https://"), "{e}");
        let e = err("[[destination]]\nname = \"a\"\ntype = \"otlp_http\"\nendpoint = \"http://x\"\nsignals = [\"spans\"]");
        assert!(e.contains("unknown signal \"spans\""), "{e}");
        let e = err("[[destination]]\nname = \"a\"\ntype = \"otlp_http\"\nendpoint = \"http://${OTLP_SPOOL_SURELY_UNSET}\"");
        assert!(e.contains("OTLP_SPOOL_SURELY_UNSET is not set"), "{e}");
    }

    #[test]
    fn endpoint_credentials_are_masked() {
        let c = Config::parse(
            "[[destination]]\nname = \"a\"\ntype = \"otlp_http\"\nendpoint = \"https://u:k3y@host:1/p@x\"\n",
        )
        .unwrap();
        let d = &c.destinations[0];
        assert_eq!(
            otlp(d).endpoint.signal_url(Signal::Logs),
            "https://u:k3y@host:1/p@x/v1/logs"
        );
        assert_eq!(otlp(d).endpoint.masked(), "https://***@host:1/p@x");
        assert!(!format!("{d:?}").contains("k3y"));
        assert!(!c.to_masked_toml().contains("k3y"));
        let plain = Config::parse(
            "[[destination]]\nname = \"a\"\ntype = \"otlp_http\"\nendpoint = \"http://h/a@b\"\n",
        )
        .unwrap();
        assert_eq!(
            otlp(&plain.destinations[0]).endpoint.masked(),
            "http://h/a@b"
        );
    }

    /// The config-permission warning names secrets written in the file, not `${VAR}` references
    /// (nor the `:` between two of them), in `endpoint` and in per-signal `endpoints` alike.
    #[test]
    fn secrets_written_in_the_file_are_told_from_references() {
        std::env::set_var("OTLP_SPOOL_TEST_USER", "u");
        std::env::set_var("OTLP_SPOOL_TEST_PASS", "p");
        let c = Config::parse(
            "[[destination]]\nname = \"cw\"\ntype = \"cloudwatch\"\nregion = \"us-west-2\"\n\
             signals = [\"logs\", \"traces\"]\nlog_group = \"g\"\nlog_stream = \"s\"\n\
             endpoints = { logs = \"https://${OTLP_SPOOL_TEST_USER}:${OTLP_SPOOL_TEST_PASS}@h/v1/logs\", \
             traces = \"https://user:literal@h/v1/traces\" }\n",
        )
        .unwrap();
        assert_eq!(
            c.secrets_written_in_file(),
            ["destination \"cw\" endpoints.traces credentials"]
        );
    }

    /// A password with an unencoded `/` ends the URL's authority early: such an endpoint is
    /// refused at load, and the error shows none of the password (nor any `${VAR}` value).
    #[test]
    fn an_unparsable_endpoint_is_refused_with_its_credentials_masked() {
        std::env::set_var("OTLP_SPOOL_TEST_PASSWORD", "ab/cd-Zq90");
        for endpoint in [
            "https://user:pw/Zq91@host/prod",
            "htps://user:${OTLP_SPOOL_TEST_PASSWORD}@host",
            "https://user:${OTLP_SPOOL_TEST_PASSWORD}@host",
        ] {
            let e = err(&format!(
                "[[destination]]\nname = \"a\"\ntype = \"otlp_http\"\nendpoint = \"{endpoint}\"\n"
            ));
            assert!(e.contains("invalid endpoint"), "{e}");
            assert!(
                !e.contains("Zq9"),
                "{endpoint}: a password in the error: {e}"
            );
        }
        let e = err(
            "[[destination]]\nname = \"a\"\ntype = \"otlp_http\"\nendpoint = \"https://u:a/b@h\"\n",
        );
        assert!(e.contains("must be percent-encoded (/ as %2F"), "{e}");
    }

    #[test]
    fn duplicate_destination_names_are_refused() {
        let one = "[[destination]]\nname = \"a\"\ntype = \"otlp_http\"\nendpoint = \"http://x\"\n";
        let e = err(&format!("{one}{one}"));
        assert!(e.contains("two destinations are named \"a\""), "{e}");
    }

    #[test]
    fn sizes() {
        assert_eq!(ByteSize::parse("64MiB").unwrap(), ByteSize(64 << 20));
        assert_eq!(ByteSize::parse("1.5 KiB").unwrap(), ByteSize(1536));
        assert_eq!(ByteSize::parse("10MB").unwrap(), ByteSize(10_000_000));
        assert_eq!(ByteSize(64 << 20).to_string(), "64MiB");
        assert_eq!(ByteSize(1000).to_string(), "1000B");
    }

    #[test]
    fn ca_file_is_expanded_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let ca = rcgen::generate_simple_self_signed(vec!["ca.example".to_string()]).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.cert.pem()).unwrap();
        std::env::set_var("OTLP_SPOOL_TEST_CA_DIR", dir.path());
        let config_file = dir.path().join("config.toml");
        let write = |ca_file: &str| {
            let text = format!(
                "[[destination]]\nname = \"a\"\ntype = \"otlp_http\"\nendpoint = \"https://h\"\nca_file = \"{ca_file}\"\n"
            );
            std::fs::write(&config_file, text).unwrap();
        };
        write("${OTLP_SPOOL_TEST_CA_DIR}/ca.pem");
        let c = Config::load(&config_file).unwrap();
        let want = dir.path().join("ca.pem").display().to_string();
        assert_eq!(c.destinations[0].ca_file.as_deref(), Some(want.as_str()));

        write("${OTLP_SPOOL_TEST_CA_DIR}/nope.pem");
        let e = Config::load(&config_file).unwrap_err().to_string();
        let missing = dir.path().join("nope.pem").display().to_string();
        for part in [
            config_file.display().to_string(),
            "line 5".into(),
            "key destination.ca_file".into(),
            format!("destination \"a\": ca_file {missing:?} cannot be read: "),
            "; fix the file or remove ca_file".into(),
        ] {
            assert!(e.contains(&part), "{part:?} not in {e}");
        }
    }

    #[test]
    fn example_config_is_valid() {
        let text = include_str!("../../config.example.toml");
        std::env::set_var("OTLP_API_KEY", "example");
        Config::parse(text).unwrap();
    }
}
