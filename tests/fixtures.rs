//! Every real SDK request in `tests/fixtures/otlp-http/` goes through the agent, and the
//! upstream sink receives exactly the items `expected.json` lists (count and names), with
//! protobuf and with JSON as the outgoing encoding.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::Value;
use support::captures::{capture_folders, replay_capture};
use support::*;

async fn replay_all(encoding: &str) {
    for folder in capture_folders("otlp-http", 9) {
        replay_folder(&folder, encoding).await;
    }
}

async fn replay_folder(folder: &std::path::Path, encoding: &str) {
    let name = folder.file_name().unwrap().to_string_lossy().into_owned();
    let expected: Value =
        serde_json::from_slice(&std::fs::read(folder.join("expected.json")).unwrap()).unwrap();
    let sink = Sink::start().await;
    let dir = tempfile::tempdir().unwrap();
    let toml = config_toml(
        dir.path(),
        &destination("up", &sink, &format!("encoding = \"{encoding}\"")),
    );
    let agent = start_agent(&toml).await;
    let addr = agent.http_addrs()[0];

    let mut want_items: BTreeMap<String, u64> = BTreeMap::new();
    let mut want_names: BTreeMap<String, Vec<String>> = BTreeMap::new();
    // Each request with the exporter's own headers (case as sent).
    replay_capture(addr, folder).await;
    for req in expected["requests"].as_array().unwrap() {
        let path = req["path"].as_str().unwrap();
        *want_items.entry(path.to_string()).or_default() += req["items"].as_u64().unwrap();
        want_names.entry(path.to_string()).or_default().extend(
            req["names"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n.as_str().unwrap().to_string()),
        );
    }
    for (path, items) in &want_items {
        let got = sink.wait_items(path, *items, Duration::from_secs(10)).await;
        assert_eq!(got, *items, "{name} ({encoding} out): items on {path}");
        let mut want = want_names[path].clone();
        let mut got = sink.names(path);
        if path == "/v1/metrics" {
            // expected.json lists each metric name once per request; the sink one per data point.
            let set = |v: &Vec<String>| v.iter().cloned().collect::<BTreeSet<_>>();
            assert_eq!(
                set(&got),
                set(&want),
                "{name} ({encoding} out): metric names"
            );
        } else {
            want.sort();
            got.sort();
            assert_eq!(got, want, "{name} ({encoding} out): names on {path}");
        }
    }
    // Nothing beyond the expected items arrives, and the spool drains.
    tokio::time::sleep(Duration::from_millis(100)).await;
    for (path, items) in &want_items {
        assert_eq!(sink.items(path), *items, "{name}: extra items on {path}");
    }
    let content_type = if encoding == "json" {
        "application/json"
    } else {
        "application/x-protobuf"
    };
    assert!(sink
        .received()
        .iter()
        .all(|r| r.headers["content-type"] == content_type));
    assert!(sink
        .received()
        .iter()
        .all(|r| r.headers["content-encoding"] == "gzip"));
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixtures_forwarded_as_protobuf() {
    replay_all("protobuf").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixtures_forwarded_as_json() {
    replay_all("json").await;
}
