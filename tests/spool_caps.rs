//! The spool's caps, end to end through the HTTP receiver: `max_bytes` under `drop_oldest` and
//! under `reject`, `max_age` expiry (which must wake by itself), a request larger than the whole
//! spool, and owner-only permissions on the spool's directory and files.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use otlp_spool::otlp::Signal;
use prost::Message;
use serde_json::Value;
use support::*;

async fn send(addr: SocketAddr, path: &str, content_type: (&str, &str), body: Vec<u8>) -> Answer {
    let resp = reqwest::Client::new()
        .post(format!("http://{addr}{path}"))
        .header(content_type.0, content_type.1)
        .body(body)
        .send()
        .await
        .expect("agent reachable");
    Answer::read(resp).await
}

/// Span names of what the spool holds for `signal`, oldest first.
fn held_names(agent: &otlp_spool::Agent) -> Vec<String> {
    agent
        .spool()
        .read(Signal::Traces, 0, u64::MAX, u64::MAX)
        .unwrap()
        .iter()
        .flat_map(|r| {
            ExportTraceServiceRequest::decode(r.payload())
                .unwrap()
                .resource_spans
                .into_iter()
                .flat_map(|rs| rs.scope_spans)
                .flat_map(|ss| ss.spans)
                .map(|s| s.name)
        })
        .collect()
}

const PER_REQUEST: usize = 20;

fn request(i: usize) -> Vec<u8> {
    spans(&format!("r{i:03}"), PER_REQUEST)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_oldest_keeps_the_newest_under_max_bytes_and_counts_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let max_bytes = 64 * 1024;
    let caps = "max_bytes = \"64KiB\"\nwhen_full = \"drop_oldest\"\n";
    let agent = start_agent(&config_toml(dir.path(), caps)).await;
    let addr = agent.http_addrs()[0];
    // The oldest record of all is a log record: eviction goes by age across signals.
    let logs =
        br#"{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"body":{"stringValue":"first"}}]}]}]}"#;
    assert_eq!(
        send(addr, "/v1/logs", JSON, logs.to_vec()).await.status,
        200
    );
    let sent = 200;
    let size = request(0).len();
    assert!(sent * size > 2 * max_bytes, "the test overfills the spool");
    for i in 0..sent {
        let resp = send(addr, "/v1/traces", PROTOBUF, request(i)).await;
        assert_eq!(resp.status, 200, "request {i}: {}", resp.text());
        let usage = agent.spool().usage();
        assert!(
            usage.bytes <= max_bytes as u64,
            "after request {i}: {} bytes held",
            usage.bytes
        );
    }
    let usage = agent.spool().usage();
    let kept = usage.records as usize;
    assert!(kept > 10 && kept < sent, "{kept} records kept");
    eprintln!(
        "drop_oldest: {sent} requests of {size} bytes, {kept} kept in {} bytes",
        usage.bytes
    );
    // Exactly the newest requests are held, whole and in order.
    let want: Vec<String> = (sent - kept..sent)
        .flat_map(|i| (0..PER_REQUEST).map(move |j| format!("r{i:03}-{j}")))
        .collect();
    assert_eq!(
        held_names(&agent),
        want,
        "the newest {kept} requests are kept"
    );
    // Every dropped item is counted, the log record among them.
    let dropped = &agent.status()["dropped"];
    assert_eq!(dropped["full_records"], (sent - kept + 1) as u64);
    assert_eq!(
        dropped["full_items"],
        ((sent - kept) * PER_REQUEST + 1) as u64
    );
    assert_eq!(dropped["expired_items"], 0);
    assert_eq!(status_u64(&agent, "/refused_requests/full"), 0);
    assert_eq!(
        status_u64(&agent, "/received/traces/items"),
        (sent * PER_REQUEST) as u64
    );
    agent.shutdown().await;

    // A destination configured now gets exactly what was kept.
    let sink = Sink::start().await;
    let toml = config_toml(
        dir.path(),
        &format!("{caps}{}", destination("up", &sink, "")),
    );
    let agent = start_agent(&toml).await;
    let n = (kept * PER_REQUEST) as u64;
    assert_eq!(
        sink.wait_items("/v1/traces", n, Duration::from_secs(10))
            .await,
        n
    );
    wait_until(
        || agent.spool().usage().records == 0,
        Duration::from_secs(5),
        "spool drains",
    )
    .await;
    let mut want = want;
    want.sort();
    assert_eq!(sink.names("/v1/traces"), want);
    assert_eq!(sink.items("/v1/logs"), 0, "the evicted log record is gone");
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_answers_503_with_retry_after_and_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start().await;
    // The upstream is down, so the spool fills.
    sink.set_fallback(Some(Reply::Status(503, None)));
    let toml = config_toml(
        dir.path(),
        &format!(
            "max_bytes = \"16KiB\"\nwhen_full = \"reject\"\n{}",
            destination("up", &sink, "")
        ),
    );
    let agent = start_agent(&toml).await;
    let addr = agent.http_addrs()[0];
    let mut accepted = Vec::new();
    let mut refusal = None;
    for i in 0..100 {
        let resp = send(addr, "/v1/traces", PROTOBUF, request(i)).await;
        match resp.status {
            200 => accepted.push(i),
            503 => {
                refusal = Some(resp);
                break;
            }
            other => panic!("request {i}: {other} {}", resp.text()),
        }
    }
    let refusal = refusal.expect("the spool filled up and refused");
    assert!(accepted.len() > 5, "{} accepted", accepted.len());
    eprintln!(
        "reject: {} requests accepted before the first 503",
        accepted.len()
    );
    let retry_after: u64 = refusal
        .headers
        .get("retry-after")
        .expect("Retry-After on a 503")
        .to_str()
        .unwrap()
        .parse()
        .expect("Retry-After in seconds");
    assert!(retry_after > 0);
    assert_eq!(refusal.content_type(), "application/x-protobuf");
    let message = refusal.rpc_message("application/x-protobuf");
    assert!(
        message.contains("full") && message.contains("reject"),
        "{message}"
    );
    let held = agent.spool().usage();
    assert!(held.bytes <= 16 * 1024);
    // Still full: a JSON client hears it in JSON, and nothing held is touched.
    // As large as the protobuf request that was refused.
    let late: Vec<Value> = (0..PER_REQUEST)
        .map(|j| serde_json::json!({"name": format!("late-{j}"), "traceId": "01010101010101010101010101010101", "spanId": "0202020202020202"}))
        .collect();
    let json = serde_json::json!({"resourceSpans": [{"scopeSpans": [{"spans": late}]}]})
        .to_string()
        .into_bytes();
    let resp = send(addr, "/v1/traces", JSON, json.clone()).await;
    assert_eq!(resp.status, 503, "{}", resp.text());
    assert!(resp.headers.contains_key("retry-after"));
    assert!(resp.rpc_message("application/json").contains("full"));
    assert_eq!(agent.spool().usage().records, held.records);
    assert_eq!(status_u64(&agent, "/dropped/full_items"), 0);
    assert_eq!(status_u64(&agent, "/refused_requests/full"), 2);

    // The upstream comes back: everything acknowledged arrives, and room returns.
    sink.set_fallback(None);
    let n = (accepted.len() * PER_REQUEST) as u64;
    assert_eq!(
        sink.wait_items("/v1/traces", n, Duration::from_secs(10))
            .await,
        n
    );
    wait_until(
        || agent.spool().usage().records == 0,
        Duration::from_secs(5),
        "spool drains",
    )
    .await;
    let mut want: Vec<String> = accepted
        .iter()
        .flat_map(|i| (0..PER_REQUEST).map(move |j| format!("r{i:03}-{j}")))
        .collect();
    want.sort();
    assert_eq!(sink.names("/v1/traces"), want, "every acknowledged span");
    let resp = send(addr, "/v1/traces", JSON, json).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(status_u64(&agent, "/dropped/full_items"), 0);
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_age_expires_old_records_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let agent = start_agent(&config_toml(dir.path(), "max_age = \"1s\"\n")).await;
    let addr = agent.http_addrs()[0];
    let t0 = Instant::now();
    assert_eq!(
        send(addr, "/v1/traces", PROTOBUF, spans("old", 3))
            .await
            .status,
        200
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        send(addr, "/v1/traces", PROTOBUF, spans("new", 4))
            .await
            .status,
        200
    );
    if t0.elapsed() < Duration::from_millis(900) {
        assert_eq!(
            status_u64(&agent, "/dropped/expired_items"),
            0,
            "nothing is 1 s old yet"
        );
    }
    // No more requests: the expiry task must wake on its own.
    wait_until(
        || status_u64(&agent, "/dropped/expired_items") == 3,
        Duration::from_secs(3),
        "the first record expires",
    )
    .await;
    let first = t0.elapsed();
    assert!(
        first >= Duration::from_millis(950),
        "expired after {first:?}"
    );
    assert_eq!(held_names(&agent), ["new-0", "new-1", "new-2", "new-3"]);
    assert_eq!(status_u64(&agent, "/dropped/expired_records"), 1);
    wait_until(
        || status_u64(&agent, "/dropped/expired_items") == 7,
        Duration::from_secs(3),
        "the second record expires",
    )
    .await;
    assert_eq!(agent.spool().usage().records, 0);
    assert_eq!(agent.spool().usage().bytes, 0);
    assert_eq!(status_u64(&agent, "/dropped/full_items"), 0);
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_held_across_a_restart_expire_without_new_requests() {
    let dir = tempfile::tempdir().unwrap();
    let agent = start_agent(&config_toml(dir.path(), "max_age = \"1h\"\n")).await;
    let addr = agent.http_addrs()[0];
    assert_eq!(
        send(addr, "/v1/traces", PROTOBUF, spans("kept", 5))
            .await
            .status,
        200
    );
    agent.shutdown().await;
    let agent = start_agent(&config_toml(dir.path(), "max_age = \"1s\"\n")).await;
    assert_eq!(agent.spool().usage().records, 1);
    wait_until(
        || status_u64(&agent, "/dropped/expired_items") == 5,
        Duration::from_secs(3),
        "the held record expires under the new max_age",
    )
    .await;
    assert_eq!(agent.spool().usage().records, 0);
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_larger_than_the_whole_spool_is_413() {
    for when_full in ["drop_oldest", "reject"] {
        let dir = tempfile::tempdir().unwrap();
        let caps = format!("max_bytes = \"4KiB\"\nwhen_full = \"{when_full}\"\n");
        let agent = start_agent(&config_toml(dir.path(), &caps)).await;
        let addr = agent.http_addrs()[0];
        assert_eq!(
            send(addr, "/v1/traces", PROTOBUF, spans("small", 2))
                .await
                .status,
            200
        );
        let big = spans("big", 200);
        assert!(big.len() > 4096);
        let resp = send(addr, "/v1/traces", PROTOBUF, big).await;
        assert_eq!(resp.status, 413, "{when_full}: {}", resp.text());
        let message = resp.rpc_message("application/x-protobuf");
        assert!(
            message.contains("larger than the whole spool") && message.contains("spool.max_bytes"),
            "{message}"
        );
        // Nothing was evicted to make room for it, and it is counted.
        assert_eq!(held_names(&agent), ["small-0", "small-1"], "{when_full}");
        assert_eq!(status_u64(&agent, "/dropped/full_records"), 0);
        assert_eq!(status_u64(&agent, "/refused_requests/too_large"), 1);
        agent.shutdown().await;
    }
}

/// Entries under `dir` that are not owner-only: directories other than 0700, files other
/// than 0600 (as "path mode"); and how many files there are.
fn loose_entries(dir: &std::path::Path) -> (Vec<String>, usize) {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let (mut loose, mut files) = (Vec::new(), 0);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if mode(&d) != 0o700 {
            loose.push(format!("{}/ {:o}", d.display(), mode(&d)));
        }
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files += 1;
                if mode(&path) != 0o600 {
                    loose.push(format!("{} {:o}", path.display(), mode(&path)));
                }
            }
        }
    }
    (loose, files)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spool_directory_is_0700_and_its_files_0600() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("state").join("otlp-spool");
    let agent = start_agent(&config_toml(&dir, "")).await;
    let addr = agent.http_addrs()[0];
    for i in 0..20 {
        let resp = send(addr, "/v1/traces", PROTOBUF, spans(&format!("p{i}"), 10)).await;
        assert_eq!(resp.status, 200);
    }
    // A large record (over 128 KiB, as Gemini CLI's prompts can be).
    let resp = send(addr, "/v1/traces", PROTOBUF, spans("large", 30_000)).await;
    assert_eq!(resp.status, 200);
    // While the agent runs and is idle: private within a second or so, with no more requests.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let (loose, _) = loose_entries(&dir);
        if loose.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "while running, not owner-only: {loose:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    agent.shutdown().await;
    let (loose, files) = loose_entries(&dir);
    assert!(loose.is_empty(), "after shutdown: {loose:?}");
    assert!(files >= 3, "{files} files");
    // Reopening writes more of sled's files (snapshots).
    let agent = start_agent(&config_toml(&dir, "")).await;
    let resp = send(agent.http_addrs()[0], "/v1/traces", PROTOBUF, spans("q", 1)).await;
    assert_eq!(resp.status, 200);
    agent.shutdown().await;
    let (loose, _) = loose_entries(&dir);
    assert!(loose.is_empty(), "after a restart: {loose:?}");
}
