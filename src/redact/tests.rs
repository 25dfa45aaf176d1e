use std::borrow::Cow;

use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{
    metric, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
};
use opentelemetry_proto::tonic::resource::v1::Resource;

use super::*;
use crate::config::{Config, RawConfig};

const KEY: &str = "0123456789abcdef0123456789abcdef";

fn table(rules: &str) -> RedactConfig {
    toml::from_str(rules).unwrap()
}

fn redactor(rules: &str) -> Redactor {
    let config = table(rules);
    config.validate().unwrap();
    Redactor::new(&config).unwrap()
}

fn text(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

fn string_of(kv: &KeyValue) -> &str {
    match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s,
        other => panic!("{} is not a string: {other:?}", kv.key),
    }
}

fn logs(resource: Vec<KeyValue>, record: Vec<KeyValue>, body: &str) -> Vec<u8> {
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: resource,
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs {
                log_records: vec![LogRecord {
                    attributes: record,
                    body: Some(AnyValue {
                        value: Some(any_value::Value::StringValue(body.into())),
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

fn sum(points: Vec<Vec<KeyValue>>) -> Vec<u8> {
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![text("process.command_args", "gemini -p secret")],
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![Metric {
                    name: "m".into(),
                    data: Some(metric::Data::Sum(Sum {
                        data_points: points
                            .into_iter()
                            .map(|attributes| NumberDataPoint {
                                attributes,
                                ..Default::default()
                            })
                            .collect(),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

#[test]
fn the_token_is_hmac_sha256_of_the_value() {
    // RFC 4231, test case 1: HMAC-SHA256(0x0b * 20, "Hi There").
    let key = Hmac::<Sha256>::new_from_slice(&[0x0b; 20]).unwrap();
    assert_eq!(
        token(&key, b"Hi There"),
        "h1:b0344c61d8db38535ca8afceaf0bf12b"
    );
    assert!(is_token("h1:b0344c61d8db38535ca8afceaf0bf12b"));
    assert!(!is_token("h1:B0344C61D8DB38535CA8AFCEAF0BF12B"));
    assert!(!is_token("h1:b0344c61d8db38535ca8afceaf0bf12"));
}

#[test]
fn an_untouched_request_is_borrowed_as_is() {
    let r = redactor(&format!("preset = \"ai-cli\"\nhmac_key = \"{KEY}\""));
    let payload = logs(vec![text("service.name", "x")], vec![text("a", "b")], "hi");
    let (out, counts) = r.apply(Signal::Logs, &payload).unwrap();
    assert!(matches!(out, Cow::Borrowed(_)));
    assert_eq!(counts, Counts::default());
}

#[test]
fn the_preset_deletes_content_and_hashes_identities() {
    let r = redactor(&format!(
        "preset = \"ai-cli\"\nhmac_key = \"{KEY}\"\nmax_string = \"1KiB\"\ndelete = [\"internal.*\"]\nkeep = [\"host.name\"]"
    ));
    let long = "é".repeat(20_000);
    let payload = logs(
        vec![
            text("process.command_args", "gemini -p secret"),
            text("host.name", "laptop-7"),
            text("service.name", "gemini-cli"),
        ],
        vec![
            text("prompt", "secret"),
            text("user.email", "a@example.com"),
            text("internal.x.y", "z"),
            text("internal", "kept: the prefix needs its dot"),
            text("big", &long),
        ],
        &long,
    );
    let (out, counts) = r.apply(Signal::Logs, &payload).unwrap();
    assert_eq!(
        counts,
        Counts {
            deleted: 3,
            hashed: 1,
            cut: 2
        }
    );
    let request = ExportLogsServiceRequest::decode(&*out).unwrap();
    let resource = &request.resource_logs[0]
        .resource
        .as_ref()
        .unwrap()
        .attributes;
    let keys: Vec<&str> = resource.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["host.name", "service.name"]);
    assert_eq!(
        string_of(&resource[0]),
        "laptop-7",
        "kept out of the preset"
    );
    let record = &request.resource_logs[0].scope_logs[0].log_records[0];
    let keys: Vec<&str> = record.attributes.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["user.email", "internal", "big"]);
    let email = string_of(&record.attributes[0]);
    assert!(is_token(email), "{email}");
    let cut = string_of(&record.attributes[2]);
    assert!(
        cut.len() <= 1024 && cut.ends_with("…[cut: 40000 bytes]"),
        "{cut}"
    );
    assert!(cut.starts_with("éé"));
    // Applying the rules again (a dead letter replayed) changes nothing.
    let (again, counts) = r.apply(Signal::Logs, &out).unwrap();
    assert!(matches!(again, Cow::Borrowed(_)));
    assert_eq!(counts, Counts::default());
}

#[test]
fn metric_data_points_are_hashed_never_deleted() {
    let r = redactor(&format!("preset = \"ai-cli\"\nhmac_key = \"{KEY}\""));
    let payload = sum(vec![
        vec![text("routing.reasoning", "because A"), text("model", "m1")],
        vec![text("routing.reasoning", "because B"), text("model", "m1")],
        vec![text("user.email", "a@example.com")],
    ]);
    let (out, counts) = r.apply(Signal::Metrics, &payload).unwrap();
    assert_eq!(
        counts,
        Counts {
            deleted: 1,
            hashed: 3,
            cut: 0
        }
    );
    let request = ExportMetricsServiceRequest::decode(&*out).unwrap();
    let rm = &request.resource_metrics[0];
    assert!(rm.resource.as_ref().unwrap().attributes.is_empty());
    let Some(metric::Data::Sum(s)) = &rm.scope_metrics[0].metrics[0].data else {
        panic!("not a sum")
    };
    let reasons: Vec<&str> = s.data_points[..2]
        .iter()
        .map(|p| string_of(&p.attributes[0]))
        .collect();
    assert!(reasons.iter().all(|r| is_token(r)));
    assert_ne!(reasons[0], reasons[1], "two series stay two");
}

#[test]
fn one_value_gives_one_token_per_key() {
    let payload = sum(vec![vec![text("user.email", "a@example.com")]]);
    let token_with = |key: &str| {
        let r = redactor(&format!("hash = [\"user.email\"]\nhmac_key = \"{key}\""));
        let (out, _) = r.apply(Signal::Metrics, &payload).unwrap();
        let request = ExportMetricsServiceRequest::decode(&*out).unwrap();
        let Some(metric::Data::Sum(s)) =
            &request.resource_metrics[0].scope_metrics[0].metrics[0].data
        else {
            panic!("not a sum")
        };
        string_of(&s.data_points[0].attributes[0]).to_string()
    };
    assert_eq!(token_with(KEY), token_with(KEY));
    assert_ne!(token_with(KEY), token_with(&KEY.replace('0', "1")));
}

#[test]
fn cut_strings_keep_within_the_limit_on_a_char_boundary() {
    for max in [64, 65, 66, 100] {
        let cut = cut_string(&"€".repeat(1000), max);
        assert!(cut.len() <= max, "{max}: {cut}");
        assert!(cut.ends_with("…[cut: 3000 bytes]"));
    }
}

/// The first error `check` reports for a destination with `rules` as its redact table.
fn check_error(rules: &str) -> String {
    let text = format!(
        "[[destination]]\nname = \"up\"\ntype = \"otlp_http\"\nendpoint = \"http://127.0.0.1:1\"\n[destination.redact]\n{rules}\n"
    );
    match RawConfig::parse(&text) {
        Err(e) => e.message().to_string(),
        Ok(raw) => raw.validate("test").unwrap_err().to_string(),
    }
}

#[test]
fn check_refuses_tables_that_would_not_do_what_they_say() {
    let short = check_error("preset = \"ai-cli\"\nhmac_key = \"short\"");
    assert!(
        short.contains("key destination.0.redact.hmac_key") && short.contains("5 bytes"),
        "{short}"
    );
    let missing = check_error("delete = [\"x\"]");
    assert!(missing.contains("missing field `hmac_key`"), "{missing}");
    let both = check_error(&format!(
        "hmac_key = \"{KEY}\"\ndelete = [\"a.*\"]\nhash = [\"a.b\"]"
    ));
    assert!(
        both.contains("a.b is to be hashed but delete lists a.*"),
        "{both}"
    );
    let keep = check_error(&format!(
        "preset = \"ai-cli\"\nhmac_key = \"{KEY}\"\nkeep = [\"nope\"]"
    ));
    assert!(keep.contains("nope matches no key of the preset"), "{keep}");
    let star = check_error("delete = [\"a*\"]");
    assert!(star.contains("a * may only end a prefix"), "{star}");
    let preset = check_error("preset = \"ai\"");
    assert!(preset.contains("unknown redact preset \"ai\""), "{preset}");
    let empty = check_error("");
    assert!(empty.contains("has no rule"), "{empty}");
    let tiny = check_error("max_string = 10");
    assert!(tiny.contains("at least 64B"), "{tiny}");
    let unknown = check_error("presets = \"ai-cli\"");
    assert!(unknown.contains("unknown field `presets`"), "{unknown}");
}

#[test]
fn the_example_config_shows_a_valid_table() {
    let example = include_str!("../../config.example.toml");
    let start = example
        .find("# [destination.redact]\n")
        .expect("config.example.toml shows [destination.redact]");
    let text: String = example[start..]
        .lines()
        .skip(1)
        .take_while(|l| l.starts_with("# "))
        .map(|l| format!("{}\n", &l[2..]))
        .collect();
    std::env::set_var("OTLP_SPOOL_REDACT_KEY", KEY);
    let config = table(&text);
    assert_eq!(config.preset, Some(Preset::AiCli));
    assert_eq!(config.max_string, Some(crate::config::ByteSize(2048)));
    config.validate().unwrap();
}

#[test]
fn a_key_written_in_a_readable_file_is_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    let destination = "[[destination]]\nname = \"up\"\ntype = \"otlp_http\"\nendpoint = \"http://127.0.0.1:1\"\n[destination.redact]\npreset = \"ai-cli\"\n";
    std::env::set_var("OTLP_SPOOL_TEST_REDACT_KEY", KEY);
    for (key, warned) in [
        (KEY.to_string(), true),
        ("${OTLP_SPOOL_TEST_REDACT_KEY}".to_string(), false),
    ] {
        std::fs::write(&path, format!("{destination}hmac_key = \"{key}\"\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let config = Config::load(&path).unwrap();
        let warning = config.exposure_warning(&path);
        assert_eq!(
            warning
                .as_deref()
                .is_some_and(|w| w.contains("destination \"up\" redact.hmac_key")),
            warned,
            "{key}: {warning:?}"
        );
    }
}

#[test]
fn keep_shields_one_key_of_a_preset_prefix() {
    let r = redactor(&format!(
        "preset = \"ai-cli\"\nhmac_key = \"{KEY}\"\nkeep = [\"github.copilot.tool.parameters.timeout\"]"
    ));
    let payload = logs(
        vec![],
        vec![
            text("github.copilot.tool.parameters.command", "rm -rf build"),
            text("github.copilot.tool.parameters.timeout", "30"),
        ],
        "x",
    );
    let (out, counts) = r.apply(Signal::Logs, &payload).unwrap();
    assert_eq!(counts.deleted, 1);
    let request = ExportLogsServiceRequest::decode(&*out).unwrap();
    let record = &request.resource_logs[0].scope_logs[0].log_records[0];
    let keys: Vec<&str> = record.attributes.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["github.copilot.tool.parameters.timeout"]);
}

#[test]
fn the_readme_lists_the_preset_as_the_code_applies_it() {
    let readme = include_str!("../../README.md");
    let start = readme
        .find("**The `ai-cli` preset**")
        .expect("README.md has the preset's table");
    let mut listed = Vec::new();
    for row in readme[start..]
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
    {
        // | what | keys | done |
        let columns: Vec<&str> = row.split('|').map(str::trim).collect();
        let action = match columns[3] {
            "deleted" => Action::Delete,
            "hashed" => Action::Hash,
            _ => continue,
        };
        let keys = columns[2].split('`').skip(1).step_by(2);
        listed.extend(keys.map(|k| (k.to_string(), action)));
    }
    let applied: Vec<(String, Action)> = preset(Preset::AiCli)
        .into_iter()
        .map(|(p, a)| (p.to_string(), a))
        .collect();
    assert_eq!(listed, applied);
}
