//! Sleep, wake and clock changes (`docs/reliability.md`, "Sleep, wake, clocks and networks"), on
//! the real binary under libfaketime, which moves the wall clock of one process while its monotonic
//! clock runs on (`DONT_FAKE_MONOTONIC=1`): exactly what a suspended laptop sees on waking, or what
//! an NTP step or a user setting the date does.
//!
//! - A wall clock that jumps ahead of the monotonic clock (the machine slept) ends a long
//!   backoff: waiting data goes within seconds, not after the backoff.
//! - A wall clock set back does not strand a record behind its batching linger, does not
//!   expire anything (records are never stamped earlier than the one before, so they do not
//!   look old once the clock is set right again), and resends nothing.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::process::{agent_command, agent_config, free_port, AgentProcess};
use support::{skip_or_fail, spans, Reply, Sink};

/// libfaketime's preload library: `$OTLP_SPOOL_TEST_FAKETIME` (set by the test script), else
/// Debian's path. `None` (and a loud SKIP) when missing outside CI; a failure under CI.
fn faketime_library() -> Option<PathBuf> {
    let path = std::env::var_os("OTLP_SPOOL_TEST_FAKETIME")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1".into());
    if path.is_file() {
        return Some(path);
    }
    let message = format!(
        "libfaketime not found at {} (Debian package libfaketime; scripts/install-test-deps.sh installs it)",
        path.display()
    );
    skip_or_fail("clock tests", &message);
    None
}

/// The agent under libfaketime; the wall-clock offset is whatever `offset_file` says
/// (`+0`, `+2h`, `-1d`), re-read every second.
async fn start_faked(
    dir: &Path,
    library: &Path,
    destination: &str,
    spool: &str,
) -> (AgentProcess, PathBuf) {
    let offset_file = dir.join("faketime");
    std::fs::write(&offset_file, "+0\n").unwrap();
    let port = free_port();
    let config = dir.join("config.toml");
    let rest = format!("{spool}\n{destination}");
    let toml = agent_config(port, None, "", &dir.join("spool"), &rest);
    std::fs::write(&config, toml).unwrap();
    let mut command = agent_command(&config);
    command
        .env("LD_PRELOAD", library)
        .env("FAKETIME_TIMESTAMP_FILE", &offset_file)
        .env("FAKETIME_CACHE_DURATION", "1")
        .env("DONT_FAKE_MONOTONIC", "1");
    let agent = AgentProcess::start(command, port, &dir.join("agent.log")).await;
    (agent, offset_file)
}

/// A logs request with one record whose event name is `name`.
fn log_record(name: &str) -> Vec<u8> {
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    use prost::Message;
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            scope_logs: vec![ScopeLogs {
                log_records: vec![LogRecord {
                    event_name: name.to_string(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

fn otlp_destination(sink: &Sink, batch: &str, retry: &str) -> String {
    format!(
        "[[destination]]\nname = \"up\"\ntype = \"otlp_http\"\nendpoint = \"{}\"\nbatch = {batch}\nretry = {retry}\ntimeout = \"2s\"\n",
        sink.endpoint()
    )
}

/// Sends one span named `<prefix>-0`, or with `log:<name>` one log record named `<name>`.
async fn send(agent: &AgentProcess, prefix: &str) {
    let (path, body) = match prefix.strip_prefix("log:") {
        Some(body) => ("/v1/logs", log_record(body)),
        None => ("/v1/traces", spans(prefix, 1)),
    };
    assert_eq!(agent.post(path, body).await, 200);
}

#[tokio::test]
async fn waking_from_sleep_ends_a_long_backoff() {
    let Some(library) = faketime_library() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start_on("127.0.0.1:0".parse().unwrap(), [Reply::Status(503, None)]).await;
    let destination = otlp_destination(
        &sink,
        "{ linger = \"10ms\" }",
        "{ initial = \"10m\", max = \"1h\" }",
    );
    let (agent, offset) = start_faked(dir.path(), &library, &destination, "").await;
    // Under libfaketime the agent's clock is still the real one here.
    send(&agent, "before-sleep").await;
    sink.wait_first_attempt(Duration::from_secs(10)).await;
    // The 503 put the worker into a backoff of at least 10 minutes. Two hours pass on the wall
    // clock and none on the monotonic one: the machine slept.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(sink.items("/v1/traces"), 0);
    std::fs::write(&offset, "+2h\n").unwrap();
    let woke = Instant::now();
    assert_eq!(
        sink.wait_items("/v1/traces", 1, Duration::from_secs(20))
            .await,
        1,
        "delivered soon after the wake, not after the backoff; log:\n{}",
        agent.log_text()
    );
    let took = woke.elapsed();
    assert!(took < Duration::from_secs(15), "{took:?}");
    agent
        .wait_log("the machine was asleep", 1, Duration::from_secs(1))
        .await;
    eprintln!("delivered {took:?} after the wall clock jumped 2 h ahead");
}

#[tokio::test]
async fn a_clock_set_back_strands_expires_and_resends_nothing() {
    let Some(library) = faketime_library() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start().await;
    let destination = otlp_destination(
        &sink,
        "{ linger = \"3s\" }",
        "{ initial = \"200ms\", max = \"1s\" }",
    );
    let (agent, offset) = start_faked(dir.path(), &library, &destination, "max_age = \"1h\"").await;

    // A lone record waits out its 3 s linger; a day goes back meanwhile. It must still go
    // within the linger, not a day later.
    send(&agent, "lingering").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    std::fs::write(&offset, "-1d\n").unwrap();
    let set_back = Instant::now();
    assert_eq!(
        sink.wait_items("/v1/traces", 1, Duration::from_secs(10))
            .await,
        1,
        "log:\n{}",
        agent.log_text()
    );
    assert!(set_back.elapsed() < Duration::from_secs(6));

    // With the upstream down, a span received at the real time and a log record received after
    // the clock went back a day are held (in two trees, so the log record is the oldest of its
    // own and expiry looks at it). Nothing expires, neither now nor once the clock is set
    // right again (which makes the second record look a day old: an hour past max_age).
    sink.set_fallback(Some(Reply::Status(503, None)));
    std::fs::write(&offset, "+0\n").unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    send(&agent, "real-time").await;
    std::fs::write(&offset, "-1d\n").unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    send(&agent, "log:set-back").await;
    std::fs::write(&offset, "+0\n").unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let status = agent.status().await;
    assert_eq!(status["spool"]["records"], 2, "{status:#}");
    assert_eq!(status["dropped"]["expired_records"], 0, "{status:#}");
    // Receive times never go back: the log record is stamped no earlier than the span before
    // it, so now that the clock is right again it is seconds old, not a day (which would have
    // expired it at the next expiry check).
    let age = status["destinations"][0]["signals"]["logs"]["oldest_pending_age_seconds"]
        .as_f64()
        .unwrap();
    assert!(age < 60.0, "the log record looks {age} s old: {status:#}");

    // Delivered once each; what was acknowledged before is not sent again.
    sink.set_fallback(None);
    assert_eq!(
        sink.wait_items("/v1/traces", 2, Duration::from_secs(10))
            .await,
        2
    );
    assert_eq!(
        sink.wait_items("/v1/logs", 1, Duration::from_secs(10))
            .await,
        1
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut names: Vec<String> = sink
        .received()
        .into_iter()
        .filter(|r| r.accepted)
        .flat_map(|r| r.names)
        .collect();
    names.sort();
    assert_eq!(names, ["lingering-0", "real-time-0", "set-back"]);
}
