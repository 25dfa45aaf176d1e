//! Captured requests of real tools (`tests/fixtures/ai-cli/`, `tests/fixtures/otlp-http/`, each
//! folder with the `expected.json` an independent decoder wrote): replaying a folder through an
//! agent as the tool sent it, and reading OTLP as a JSON tree, decoded without the agent's code
//! (serde_json for OTLP/JSON, prost-reflect's proto3 JSON mapping for protobuf), so tests can walk
//! every attribute of any signal the same way.

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use prost_reflect::{DescriptorPool, DynamicMessage};
use serde_json::Value;

use super::{post, Received};

/// A folder of `tests/fixtures/`.
pub fn fixture_folder(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(relative)
}

/// The capture folders of one set (`otlp-http`, `ai-cli`: each README says what produced its
/// folders), those with an `expected.json`, sorted; panics on fewer than `at_least`, so a test
/// cannot pass on a checkout that lost some.
pub fn capture_folders(set: &str, at_least: usize) -> Vec<PathBuf> {
    let root = fixture_folder(set);
    let mut folders: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("reading the captures in {}: {e}", root.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("expected.json").is_file())
        .collect();
    folders.sort();
    assert!(
        folders.len() >= at_least,
        "expected at least {at_least} capture folders in {}, found {folders:?}",
        root.display()
    );
    folders
}

/// A folder's `expected.json`.
pub fn expected(folder: &Path) -> Value {
    let path = folder.join("expected.json");
    serde_json::from_slice(&std::fs::read(&path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// POSTs every request of `folder` to the agent at `addr`, in `expected.json`'s order, with the
/// tool's own headers (minus hop-by-hop framing); panics unless each is answered 200.
pub async fn replay_capture(addr: SocketAddr, folder: &Path) {
    for req in expected(folder)["requests"].as_array().unwrap() {
        let id = req["request"].as_str().unwrap();
        let (headers, body) = captured_request(folder, id);
        let headers: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let path = req["path"].as_str().unwrap();
        let (status, text) = post(addr, path, &headers, body).await;
        assert_eq!(
            status,
            200,
            "{}/{id}: agent answered {status}: {text}",
            folder.display()
        );
    }
}

/// Request `id` of `folder`: its headers as sent (hop-by-hop framing left out) and its body.
pub fn captured_request(folder: &Path, id: &str) -> (Vec<(String, String)>, Vec<u8>) {
    let meta: Value =
        serde_json::from_slice(&std::fs::read(folder.join(format!("{id}.json"))).unwrap()).unwrap();
    let headers = meta["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h[0].as_str().unwrap().to_string(),
                h[1].as_str().unwrap().to_string(),
            )
        })
        .filter(|(k, _)| {
            !["host", "content-length", "transfer-encoding", "connection"]
                .contains(&k.to_ascii_lowercase().as_str())
        })
        .collect();
    (
        headers,
        std::fs::read(folder.join(format!("{id}.req"))).unwrap(),
    )
}

/// Request `id` of `folder` as an OTLP JSON tree.
pub fn captured_tree(folder: &Path, id: &str) -> Value {
    let (headers, body) = captured_request(folder, id);
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    let path = expected(folder)["requests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["request"] == id)
        .map(|r| r["path"].as_str().unwrap().to_string())
        .unwrap();
    otlp_tree(
        &path,
        header("content-type").unwrap_or(""),
        header("content-encoding") == Some("gzip"),
        &body,
    )
}

/// The body of a request the sink received, decompressed.
pub fn plain_body(r: &Received) -> Vec<u8> {
    gunzip_if(
        r.headers
            .get("content-encoding")
            .is_some_and(|v| v == "gzip"),
        &r.body,
    )
}

/// A request the sink received as an OTLP JSON tree.
pub fn received_tree(r: &Received) -> Value {
    let content_type = r
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    otlp_tree(&r.path, content_type, false, &plain_body(r))
}

fn gunzip_if(gzip: bool, body: &[u8]) -> Vec<u8> {
    if !gzip {
        return body.to_vec();
    }
    let mut raw = Vec::new();
    flate2::read::MultiGzDecoder::new(body)
        .read_to_end(&mut raw)
        .expect("bad gzip");
    raw
}

/// An OTLP request on `path` (`/v1/logs`, …) as a JSON tree: OTLP/JSON as sent, protobuf through
/// prost-reflect's proto3 JSON mapping (field names in lowerCamelCase, like OTLP/JSON).
pub fn otlp_tree(path: &str, content_type: &str, gzip: bool, body: &[u8]) -> Value {
    let raw = gunzip_if(gzip, body);
    if content_type.starts_with("application/json") {
        return serde_json::from_slice(&raw).expect("bad OTLP/JSON");
    }
    let message = match path {
        "/v1/traces" => "opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest",
        "/v1/metrics" => "opentelemetry.proto.collector.metrics.v1.ExportMetricsServiceRequest",
        "/v1/logs" => "opentelemetry.proto.collector.logs.v1.ExportLogsServiceRequest",
        other => panic!("not an OTLP path: {other}"),
    };
    let pool = DescriptorPool::decode(opentelemetry_proto::DESCRIPTORS).unwrap();
    let desc = pool.get_message_by_name(message).unwrap();
    let msg = DynamicMessage::decode(desc, &raw[..]).expect("bad OTLP protobuf");
    serde_json::to_value(&msg).unwrap()
}

/// One attribute of an OTLP tree: where it sits, its key and its value (`{"stringValue": …}`).
#[derive(Debug, Clone)]
pub struct Attribute {
    /// The object fields leading to it, such as `resourceLogs.resource.attributes` or
    /// `resourceMetrics.scopeMetrics.metrics.sum.dataPoints.attributes`.
    pub path: String,
    pub key: String,
    pub value: Value,
}

impl Attribute {
    /// Whether it is a metric data point's (or an exemplar's) attribute.
    pub fn on_data_point(&self) -> bool {
        self.path.contains(".dataPoints.")
    }

    /// Every string in the value (array and kvlist elements included).
    pub fn strings(&self) -> Vec<String> {
        let mut out = Vec::new();
        strings_in(&self.value, &mut out);
        out
    }

    /// The value when it is a string.
    pub fn string(&self) -> Option<&str> {
        self.value.get("stringValue").and_then(Value::as_str)
    }
}

/// Every string in a JSON tree (keys excluded).
pub fn strings_in(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|e| strings_in(e, out)),
        Value::Object(o) => o.values().for_each(|e| strings_in(e, out)),
        _ => {}
    }
}

/// Every attribute of an OTLP tree, nested kvlist entries included.
pub fn attributes(tree: &Value) -> Vec<Attribute> {
    fn walk(v: &Value, path: &mut Vec<String>, out: &mut Vec<Attribute>) {
        match v {
            Value::Array(a) => a.iter().for_each(|e| walk(e, path, out)),
            Value::Object(o) => {
                if let (Some(Value::String(key)), Some(value)) = (o.get("key"), o.get("value")) {
                    out.push(Attribute {
                        path: path.join("."),
                        key: key.clone(),
                        value: value.clone(),
                    });
                }
                for (field, e) in o {
                    path.push(field.clone());
                    walk(e, path, out);
                    path.pop();
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(tree, &mut Vec::new(), &mut out);
    out
}
