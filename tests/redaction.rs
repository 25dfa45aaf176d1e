//! `[destination.redact]` end to end, on the real requests of the AI CLIs
//! (`tests/fixtures/ai-cli/`, whose README says how each was made) replayed through an
//! in-process agent to sinks that decode what they get without the agent's code
//! (`tests/support/captures.rs`).
//!
//! - No leak: every capture (Gemini CLI over gRPC protobuf gzip and HTTP JSON, Claude Code over
//!   four transports, Copilot CLI over two) sent through the `ai-cli` preset, protobuf and JSON
//!   out, and to a `cloudwatch` logs destination: no 16-byte piece of any value the preset deletes or hashes, and none of the known
//!   phrases of the prompt and of the file the tools read, reaches the sink; a destination
//!   without rules, fed from the same spool, gets them all (so the check can fail).
//! - Nothing else changes: items and names per signal as `expected.json` lists them, the same
//!   number of distinct (metric, attributes) pairs, every hashed value `h1:` + 32 hex.
//! - Keyed: one `host.name` gives one token across sessions, tools (the test adds it to a Claude
//!   Code request, which has none), transports and output encodings;
//!   another key another token; the token is not the value's plain SHA-256. The email on Claude
//!   Code's metric labels and on Gemini CLI's log records gives one token.
//! - Remote write to a real Prometheus: the same series and values with and without the preset.
//! - A request no rule touches arrives byte for byte as a destination without rules gets it.
//! - A 40 KB string is cut to `max_string` and marked; `/status` counts what was done.

mod support;

use std::collections::{BTreeSet, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use otlp_spool::redact::{preset, Action, Preset};
use prost::Message;
use serde_json::Value;
use sha2::{Digest, Sha256};
use support::captures::*;
use support::prometheus::{Labels, Prometheus};
use support::*;

const FLEET_KEY: &str = "fleet-key-0123456789abcdef0123456789";
const OTHER_KEY: &str = "other-key-0123456789abcdef0123456789";
/// The shortest piece of a removed value the sinks must not get.
const PIECE: usize = 16;

/// Every capture folder of `tests/fixtures/ai-cli/` (Claude Code, Copilot CLI, Gemini CLI; its
/// README says how each was made), sorted; Gemini CLI's, whose size the test measures, first.
fn ai_cli_folders() -> Vec<PathBuf> {
    let mut folders = capture_folders("ai-cli", 8);
    folders.sort_by_key(|f| (!is_gemini(f), f.clone()));
    folders
}

fn is_gemini(folder: &std::path::Path) -> bool {
    folder
        .file_name()
        .unwrap()
        .to_string_lossy()
        .starts_with("gemini-cli-")
}

/// A destination block for `sink` with the `ai-cli` preset keyed with `key`, and `extra` keys
/// of its own.
fn redacted(name: &str, sink: &Sink, extra: &str, key: &str) -> String {
    destination(
        name,
        sink,
        &format!("{extra}\n[destination.redact]\npreset = \"ai-cli\"\nhmac_key = \"{key}\"\nmax_string = \"2KiB\""),
    )
}

/// Waits until `sink` holds every item `expected` lists per signal; the totals per path.
async fn wait_all(sink: &Sink, expected: &[Value]) -> Vec<(String, u64)> {
    let mut totals: Vec<(String, u64)> = Vec::new();
    for req in expected {
        let path = req["path"].as_str().unwrap().to_string();
        let items = req["items"].as_u64().unwrap();
        match totals.iter_mut().find(|(p, _)| *p == path) {
            Some((_, n)) => *n += items,
            None => totals.push((path, items)),
        }
    }
    for (path, items) in &totals {
        let got = sink.wait_items(path, *items, Duration::from_secs(15)).await;
        assert_eq!(got, *items, "items on {path}");
    }
    totals
}

/// Every request the sink accepted, as OTLP JSON trees.
fn trees(sink: &Sink) -> Vec<(String, Value)> {
    sink.received()
        .iter()
        .filter(|r| r.accepted)
        .map(|r| (r.path.clone(), received_tree(r)))
        .collect()
}

/// Every string a sink was sent (values of every field, keys excluded), joined by NULs.
fn sent_text(trees: &[(String, Value)]) -> String {
    let mut strings = Vec::new();
    for (_, t) in trees {
        strings_in(t, &mut strings);
    }
    strings.join("\0")
}

/// Every `PIECE`-byte window of `text`.
fn pieces(text: &[u8]) -> HashSet<&[u8]> {
    text.windows(PIECE).collect()
}

/// The distinct (metric name, data point attributes) pairs of metric trees.
fn series(trees: &[(String, Value)]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (path, t) in trees.iter().filter(|(p, _)| p == "/v1/metrics") {
        assert_eq!(path, "/v1/metrics");
        for rm in t["resourceMetrics"].as_array().into_iter().flatten() {
            for sm in rm["scopeMetrics"].as_array().into_iter().flatten() {
                for m in sm["metrics"].as_array().into_iter().flatten() {
                    for kind in [
                        "gauge",
                        "sum",
                        "histogram",
                        "exponentialHistogram",
                        "summary",
                    ] {
                        for p in m[kind]["dataPoints"].as_array().into_iter().flatten() {
                            let mut attrs: Vec<String> = p["attributes"]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .map(|a| a.to_string())
                                .collect();
                            attrs.sort();
                            out.insert(format!("{} {}", m["name"], attrs.join(",")));
                        }
                    }
                }
            }
        }
    }
    out
}

/// `tree` without the attributes whose keys the `ai-cli` preset deletes or hashes.
fn without_preset_keys(tree: &Value) -> Value {
    let rules = preset(Preset::AiCli);
    let listed = |v: &Value| {
        v["key"]
            .as_str()
            .is_some_and(|k| rules.iter().any(|(r, _)| r.matches(k)))
    };
    match tree {
        Value::Array(a) => Value::Array(
            a.iter()
                .filter(|e| !listed(e))
                .map(without_preset_keys)
                .collect(),
        ),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| (k.clone(), without_preset_keys(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn is_token(s: &str) -> bool {
    s.len() == 35
        && s.starts_with("h1:")
        && s[3..]
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The tokens a sink got for `key`, wherever it sits.
fn tokens_of(trees: &[(String, Value)], key: &str) -> BTreeSet<String> {
    trees
        .iter()
        .flat_map(|(_, t)| attributes(t))
        .filter(|a| a.key == key)
        .map(|a| a.string().unwrap_or_default().to_string())
        .collect()
}

/// The string values of `key` on `path` under resources whose `service.name` is `service`.
fn values_of(trees: &[(String, Value)], path: &str, service: &str, key: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (_, t) in trees.iter().filter(|(p, _)| p == path) {
        for resource in t
            .as_object()
            .unwrap()
            .values()
            .flat_map(|v| v.as_array().unwrap())
        {
            let attrs = attributes(resource);
            let ours = attrs
                .iter()
                .any(|a| a.key == "service.name" && a.string() == Some(service));
            if ours {
                out.extend(
                    attrs
                        .iter()
                        .filter(|a| a.key == key)
                        .filter_map(|a| a.string().map(str::to_string)),
                );
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ai_cli_captures_leak_nothing_and_lose_nothing() {
    let (plain, pb, json, other, cw) = (
        Sink::start().await,
        Sink::start().await,
        Sink::start().await,
        Sink::start().await,
        Sink::start().await,
    );
    // CloudWatch Logs with an API key (no AWS credentials to set up), the preset on it too.
    let cloudwatch = format!(
        "[[destination]]\nname = \"cw\"\ntype = \"cloudwatch\"\nregion = \"us-west-2\"\nsignals = [\"logs\"]\nlog_group = \"g\"\nlog_stream = \"s\"\nauth = \"bearer\"\nbearer_token = \"test-logs-api-key\"\nendpoints = {{ logs = \"{}/v1/logs\" }}\nbatch = {{ linger = \"20ms\" }}\n[destination.redact]\npreset = \"ai-cli\"\nhmac_key = \"{FLEET_KEY}\"\nmax_string = \"2KiB\"\n",
        cw.endpoint()
    );
    let dir = tempfile::tempdir().unwrap();
    let toml = config_toml(
        dir.path(),
        &[
            destination("plain", &plain, ""),
            redacted("pb", &pb, "", FLEET_KEY),
            redacted("json", &json, "encoding = \"json\"", FLEET_KEY),
            redacted("other", &other, "", OTHER_KEY),
            cloudwatch,
        ]
        .concat(),
    );
    let agent = start_agent(&toml).await;
    let addr = agent.http_addrs()[0];
    let folders = ai_cli_folders();
    // Gemini CLI's first, alone, for the size of its logs (README "Privacy").
    let mut expected_requests = Vec::new();
    for folder in folders.iter().filter(|f| is_gemini(f)) {
        replay_capture(addr, folder).await;
        expected_requests.extend(expected(folder)["requests"].as_array().unwrap().clone());
    }
    wait_all(&plain, &expected_requests).await;
    wait_all(&pb, &expected_requests).await;
    let logs_bytes = |sink: &Sink| -> usize {
        sink.received()
            .iter()
            .filter(|r| r.path == "/v1/logs")
            .map(|r| plain_body(r).len())
            .sum()
    };
    let (before, after) = (logs_bytes(&plain), logs_bytes(&pb));
    println!(
        "gemini logs, protobuf uncompressed: {before} bytes plain, {after} with the preset ({:.1}x smaller)",
        before as f64 / after as f64
    );
    assert!(after * 5 < before, "{before} → {after} bytes");
    for folder in folders.iter().filter(|f| !is_gemini(f)) {
        replay_capture(addr, folder).await;
        expected_requests.extend(expected(folder)["requests"].as_array().unwrap().clone());
    }
    // Claude Code sends no host name: this test adds Gemini CLI's (`vm`) to the resource of one
    // of its captured metric requests, to see one host give one token across the two tools.
    let claude = fixture_folder("ai-cli/claude-code-2.1.332-http-protobuf");
    let mut request =
        ExportMetricsServiceRequest::decode(&captured_request(&claude, "003").1[..]).unwrap();
    let resource = request.resource_metrics[0].resource.as_mut().unwrap();
    resource.attributes.push(KeyValue {
        key: "host.name".into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue("vm".into())),
        }),
        ..Default::default()
    });
    let (status, text) = post(addr, "/v1/metrics", &[PROTOBUF], request.encode_to_vec()).await;
    assert_eq!(status, 200, "{text}");
    expected_requests.push(expected(&claude)["requests"][2].clone());

    // What the preset removes, as the captures hold it (decoded here, not by the agent), and
    // the prompt's known phrases.
    let rules = preset(Preset::AiCli);
    let mut removed: BTreeSet<String> = BTreeSet::new();
    let mut hashed_keys_seen = BTreeSet::new();
    // What the tools sent under the keys the preset keeps: a piece of a removed value found
    // there too (the fake model API's response id inside `response_text`) is not a leak.
    let mut kept = Vec::new();
    for folder in &folders {
        for req in expected(folder)["requests"].as_array().unwrap() {
            let tree = captured_tree(folder, req["request"].as_str().unwrap());
            strings_in(&without_preset_keys(&tree), &mut kept);
            for a in attributes(&tree) {
                if let Some((_, action)) = rules.iter().find(|(k, _)| k.matches(&a.key)) {
                    removed.extend(a.strings().into_iter().filter(|s| !s.is_empty()));
                    if *action == Action::Hash {
                        hashed_keys_seen.insert(a.key.clone());
                    }
                }
            }
        }
    }
    let phrases: Value =
        serde_json::from_slice(&std::fs::read(fixture_folder("ai-cli/phrases.json")).unwrap())
            .unwrap();
    let phrases: Vec<&str> = ["prompt_phrases", "file_phrases"]
        .iter()
        .flat_map(|list| phrases[list].as_array().unwrap())
        .map(|p| p.as_str().unwrap())
        .collect();
    assert!(phrases.len() >= 7, "{phrases:?}");
    assert!(
        removed.iter().any(|v| v.contains("ZEBRA-QUARTZ-4417")) && removed.len() > 20,
        "the captures hold the prompt in keys the preset removes: {} values",
        removed.len()
    );
    for key in ["user.email", "host.name", "process.owner"] {
        assert!(hashed_keys_seen.contains(key), "the captures carry {key}");
    }

    let mut got = Vec::new();
    for sink in [&plain, &pb, &json, &other] {
        wait_all(sink, &expected_requests).await;
        got.push(trees(sink));
    }
    let [plain_trees, pb_trees, json_trees, other_trees] = <[_; 4]>::try_from(got).unwrap();
    let logs: Vec<Value> = expected_requests
        .iter()
        .filter(|r| r["path"] == "/v1/logs")
        .cloned()
        .collect();
    wait_all(&cw, &logs).await;
    let cw_trees = trees(&cw);

    // The destination without rules gets what the tools sent: the check below can fail.
    let plain_text = sent_text(&plain_trees);
    for phrase in &phrases {
        assert!(
            plain_text.contains(phrase),
            "plain destination lacks {phrase:?}"
        );
    }
    for (name, trees) in [("pb", &pb_trees), ("json", &json_trees), ("cw", &cw_trees)] {
        let text = sent_text(trees);
        for phrase in &phrases {
            assert!(
                !text.contains(phrase),
                "{name}: the prompt phrase {phrase:?} was sent"
            );
        }
        let sent = pieces(text.as_bytes());
        let kept = kept.join("\0");
        let kept = pieces(kept.as_bytes());
        for value in removed.iter().filter(|v| v.len() >= PIECE) {
            let leaked = |w: &&[u8]| sent.contains(w) && !kept.contains(w);
            if let Some(piece) = value.as_bytes().windows(PIECE).find(leaked) {
                panic!(
                    "{name}: {:?}, a piece of a removed value ({}…), was sent",
                    String::from_utf8_lossy(piece),
                    value.chars().take(60).collect::<String>()
                );
            }
        }
        // Deleted keys are gone except on data points; hashed ones (and deleted ones on data
        // points) are tokens; nothing else is.
        for a in trees.iter().flat_map(|(_, t)| attributes(t)) {
            let action = rules
                .iter()
                .find(|(k, _)| k.matches(&a.key))
                .map(|(_, x)| *x);
            match action {
                Some(Action::Delete) if !a.on_data_point() => {
                    panic!("{name}: deleted key {} was sent at {}", a.key, a.path)
                }
                Some(_) => assert!(
                    a.string().is_some_and(is_token),
                    "{name}: {} at {} is not a token: {}",
                    a.key,
                    a.path,
                    a.value
                ),
                None => {}
            }
        }
    }

    // Nothing else changes: items and names per signal, and the series.
    for (name, sink) in [("pb", &pb), ("json", &json)] {
        for path in ["/v1/traces", "/v1/logs"] {
            let mut want: Vec<String> = expected_requests
                .iter()
                .filter(|r| r["path"] == path)
                .flat_map(|r| r["names"].as_array().unwrap().clone())
                .map(|n| n.as_str().unwrap().to_string())
                .collect();
            want.sort();
            assert_eq!(sink.names(path), want, "{name}: names on {path}");
        }
        let want: BTreeSet<String> = expected_requests
            .iter()
            .filter(|r| r["path"] == "/v1/metrics")
            .flat_map(|r| r["names"].as_array().unwrap().clone())
            .map(|n| n.as_str().unwrap().to_string())
            .collect();
        let got: BTreeSet<String> = sink.names("/v1/metrics").into_iter().collect();
        assert_eq!(got, want, "{name}: metric names");
    }
    let plain_series = series(&plain_trees).len();
    assert!(plain_series > 20, "{plain_series} series");
    assert_eq!(series(&pb_trees).len(), plain_series, "pb: distinct series");
    assert_eq!(
        series(&json_trees).len(),
        plain_series,
        "json: distinct series"
    );

    // Keyed: one host.name, one token across sessions, tools, transports and output
    // encodings; another key, another token; not the plain SHA-256.
    let host = tokens_of(&pb_trees, "host.name");
    assert_eq!(host.len(), 1, "host.name tokens: {host:?}");
    for service in ["claude-code", "gemini-cli"] {
        let on = values_of(&pb_trees, "/v1/metrics", service, "host.name");
        assert_eq!(on, host, "host.name on {service} metrics");
    }
    assert_eq!(tokens_of(&json_trees, "host.name"), host);
    let other_host = tokens_of(&other_trees, "host.name");
    assert_eq!(other_host.len(), 1);
    assert_ne!(other_host, host, "another key gives another token");
    let unkeyed = format!("h1:{}", &hex::encode(Sha256::digest(b"vm"))[..32]);
    assert!(
        !host.contains(&unkeyed),
        "the token is not the plain SHA-256"
    );
    let email = tokens_of(&pb_trees, "user.email");
    assert_eq!(email.len(), 1, "user.email tokens: {email:?}");
    assert_eq!(tokens_of(&json_trees, "user.email"), email);
    // The same email as a Claude Code metric label and on Gemini CLI log records: one token.
    for (trees, want) in [
        (
            &plain_trees,
            BTreeSet::from(["dev.one@example.com".to_string()]),
        ),
        (&pb_trees, email),
    ] {
        let claude = values_of(trees, "/v1/metrics", "claude-code", "user.email");
        assert_eq!(claude, want, "Claude Code metric labels");
        assert_eq!(
            values_of(trees, "/v1/logs", "gemini-cli", "user.email"),
            want,
            "Gemini CLI logs"
        );
    }

    // /status counts per destination; none for the destination without rules.
    let status = agent.status();
    let count = |dest: &str, what: &str| -> u64 {
        status["destinations"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["name"] == dest)
            .unwrap()["signals"]
            .as_object()
            .unwrap()
            .values()
            .map(|s| s[what].as_u64().unwrap())
            .sum()
    };
    for what in ["redacted_deleted", "redacted_hashed"] {
        assert_eq!(count("plain", what), 0, "plain {what}");
        assert!(count("pb", what) > 0, "pb {what}");
        assert_eq!(count("pb", what), count("json", what), "{what}");
    }
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untouched_request_goes_byte_for_byte() {
    let (plain, pb) = (Sink::start().await, Sink::start().await);
    let dir = tempfile::tempdir().unwrap();
    let toml = config_toml(
        dir.path(),
        &[
            destination("plain", &plain, ""),
            redacted("pb", &pb, "", FLEET_KEY),
        ]
        .concat(),
    );
    let agent = start_agent(&toml).await;
    // A real SDK's request that carries none of the preset's keys.
    let folder = fixture_folder("otlp-http/otel-python-http-protobuf");
    let requests = expected(&folder)["requests"].as_array().unwrap().clone();
    replay_capture(agent.http_addrs()[0], &folder).await;
    wait_all(&plain, &requests).await;
    wait_all(&pb, &requests).await;
    let bodies = |sink: &Sink| -> Vec<(String, Vec<u8>)> {
        let mut b: Vec<_> = sink
            .received()
            .iter()
            .map(|r| (r.path.clone(), plain_body(r)))
            .collect();
        b.sort();
        b
    };
    assert_eq!(bodies(&pb), bodies(&plain), "the bytes sent differ");
    let status = agent.status();
    let pb_status = &status["destinations"][1];
    assert_eq!(pb_status["name"], "pb");
    for s in pb_status["signals"].as_object().unwrap().values() {
        assert_eq!(s["redacted_deleted"], 0);
        assert_eq!(s["redacted_hashed"], 0);
    }
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_string_is_cut_to_max_string_and_marked() {
    let sink = Sink::start().await;
    let dir = tempfile::tempdir().unwrap();
    let agent = start_agent(&config_toml(
        dir.path(),
        &redacted("pb", &sink, "", FLEET_KEY),
    ))
    .await;
    let long = "0123456789".repeat(4096);
    let string = |s: &str| AnyValue {
        value: Some(any_value::Value::StringValue(s.into())),
    };
    let request = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            scope_logs: vec![ScopeLogs {
                log_records: vec![LogRecord {
                    event_name: "synthetic".into(),
                    body: Some(string("short body")),
                    attributes: vec![KeyValue {
                        key: "tool.output".into(),
                        value: Some(string(&long)),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let (status, text) = post(
        agent.http_addrs()[0],
        "/v1/logs",
        &[PROTOBUF],
        request.encode_to_vec(),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        sink.wait_items("/v1/logs", 1, Duration::from_secs(10))
            .await,
        1
    );
    let tree = received_tree(&sink.received()[0]);
    let got = attributes(&tree);
    let cut = got.iter().find(|a| a.key == "tool.output").unwrap();
    let cut = cut.string().unwrap();
    assert!(cut.len() <= 2048, "{} bytes", cut.len());
    assert!(cut.starts_with("0123456789"), "{cut}");
    assert!(cut.ends_with("…[cut: 40960 bytes]"), "{cut}");
    let body = tree["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0]["body"].clone();
    assert_eq!(body["stringValue"], "short body");
    let logs = &agent.status()["destinations"][0]["signals"]["logs"];
    assert_eq!(logs["redacted_cut"], 1);
    let metrics = reqwest::get(format!("http://{}/metrics", agent.http_addrs()[0]))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            "otlp_spool_destination_redacted_cut_total{destination=\"pb\",signal=\"logs\"} 1"
        ),
        "{metrics}"
    );
    agent.shutdown().await;
}

/// The newest data point time in metric trees, in milliseconds.
fn newest_point_ms(trees: &[Value]) -> i64 {
    fn walk(v: &Value, newest: &mut u64) {
        match v {
            Value::Object(o) => {
                if let Some(t) = o.get("timeUnixNano").and_then(Value::as_str) {
                    *newest = (*newest).max(t.parse().unwrap());
                }
                o.values().for_each(|e| walk(e, newest));
            }
            Value::Array(a) => a.iter().for_each(|e| walk(e, newest)),
            _ => {}
        }
    }
    let mut newest = 0;
    trees.iter().for_each(|t| walk(t, &mut newest));
    (newest / 1_000_000) as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_write_gets_the_same_series_and_totals_with_tokens_for_labels() {
    let test = "remote_write_gets_the_same_series_and_totals_with_tokens_for_labels";
    let Some(prom) = Prometheus::start_for(test).await else {
        return;
    };
    let prw = |name: &str, redact: &str| {
        format!(
            "[[destination]]\nname = \"{name}\"\ntype = \"prometheus_remote_write\"\nendpoint = \"{}\"\nbatch = {{ linger = \"20ms\" }}\nretry = {{ initial = \"50ms\", max = \"500ms\" }}\nexternal_labels = {{ dest = \"{name}\" }}\n{redact}\n",
            prom.write_url()
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let toml = config_toml(
        dir.path(),
        &[
            prw("plain", ""),
            prw(
                "red",
                &format!("[destination.redact]\npreset = \"ai-cli\"\nhmac_key = \"{FLEET_KEY}\""),
            ),
        ]
        .concat(),
    );
    let agent = start_agent(&toml).await;
    let mut sent = Vec::new();
    for folder in ai_cli_folders() {
        replay_capture(agent.http_addrs()[0], &folder).await;
        for req in expected(&folder)["requests"].as_array().unwrap() {
            if req["path"] == "/v1/metrics" {
                sent.push(captured_tree(&folder, req["request"].as_str().unwrap()));
            }
        }
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    for dest in ["plain", "red"] {
        while agent
            .spool()
            .pending(dest, otlp_spool::otlp::Signal::Metrics)
            .records
            > 0
        {
            assert!(std::time::Instant::now() < deadline, "{:#}", agent.status());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    agent.shutdown().await;
    // Every series' last value within the captures' hour (the sessions are minutes apart).
    let at = newest_point_ms(&sent) + 1000;
    let series = |dest: &str| {
        let prom = &prom;
        let query = format!("last_over_time({{dest=\"{dest}\"}}[1h])");
        async move { prom.query(&query, at).await }
    };
    let (plain, red) = (series("plain").await, series("red").await);
    assert!(plain.len() > 20, "{} series in Prometheus", plain.len());
    assert_eq!(red.len(), plain.len(), "series with and without redaction");
    let values = |got: &[(Labels, f64)]| {
        let mut v: Vec<f64> = got.iter().map(|(_, v)| *v).collect();
        v.sort_by(f64::total_cmp);
        v
    };
    assert_eq!(values(&red), values(&plain), "each series' value");
    let emails = |got: &[(Labels, f64)]| -> BTreeSet<String> {
        got.iter()
            .filter_map(|(l, _)| l.get("user_email").cloned())
            .collect()
    };
    assert_eq!(
        emails(&plain),
        BTreeSet::from(["dev.one@example.com".to_string()])
    );
    let red_emails = emails(&red);
    assert_eq!(red_emails.len(), 1, "{red_emails:?}");
    assert!(red_emails.iter().all(|e| is_token(e)), "{red_emails:?}");
}

#[test]
fn check_prints_the_rules_in_force_and_refuses_a_short_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        "[[destination]]\nname = \"central\"\ntype = \"otlp_http\"\nendpoint = \"http://127.0.0.1:9\"\nredact = { preset = \"ai-cli\", hmac_key = \"${OTLP_SPOOL_REDACT_KEY}\", keep = [\"host.name\"] }\n",
    )
    .unwrap();
    let check = |key: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_otlp-spool"))
            .args(["check", "--config"])
            .arg(&config)
            .env("OTLP_SPOOL_REDACT_KEY", key)
            .output()
            .unwrap()
    };
    let out = check(FLEET_KEY);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        support::process::describe_output(&out)
    );
    let rules: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("# destination central: redact "))
        .collect();
    assert_eq!(rules.len(), 5, "{stdout}");
    assert!(rules[1].contains(": prompt, prompt_text,"), "{}", rules[1]);
    assert!(
        rules[2].contains(": user.email,") && !rules[2].contains("host.name"),
        "{}",
        rules[2]
    );
    assert!(
        rules[3].ends_with("keep (out of the preset): host.name"),
        "{}",
        rules[3]
    );
    assert!(!stdout.contains(FLEET_KEY), "the key is masked: {stdout}");

    let out = check("too-short");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("line 5, column ")
            && stderr.contains("key destination.redact.hmac_key")
            && stderr.contains("the key is 9 bytes long"),
        "{stderr}"
    );
}
