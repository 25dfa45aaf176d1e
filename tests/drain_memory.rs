//! Memory after a backlog drains (design promise 3, issue 8 "bounded memory"), on the real
//! binary: a backlog built while the upstream refuses everything raises the agent's RSS (sled
//! holds the records in memory); once it drains, the memory goes back to the system instead of
//! staying with the allocator. Linux only (RSS from /proc).

mod support;

use std::time::{Duration, Instant};

use support::process::{agent_command, agent_config, free_port, proc_status_kb, AgentProcess};
use support::{spans, Reply, Sink};

/// About 36 KB a request, as a 100-span SDK batch.
const SPANS_PER_REQUEST: usize = 900;
const BACKLOG_BYTES: u64 = 64 << 20;

fn rss_mb(pid: u32) -> f64 {
    proc_status_kb(&pid.to_string(), "VmRSS") as f64 / 1024.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_backlog_gives_its_memory_back() {
    let sink = Sink::start().await;
    sink.set_fallback(Some(Reply::Status(503, None)));
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("config.toml");
    let up = format!(
        "[[destination]]\nname = \"up\"\ntype = \"otlp_http\"\nendpoint = \"{}\"\n\
         retry = {{ initial = \"50ms\", max = \"200ms\" }}\n",
        sink.endpoint()
    );
    let toml = agent_config(port, None, "", &dir.path().join("spool"), &up);
    std::fs::write(&config, toml).unwrap();
    let agent =
        AgentProcess::start(agent_command(&config), port, &dir.path().join("agent.log")).await;
    let before = rss_mb(agent.pid());

    let body = spans("backlog", SPANS_PER_REQUEST);
    let requests = BACKLOG_BYTES / body.len() as u64;
    for _ in 0..requests {
        assert_eq!(agent.post("/v1/traces", body.clone()).await, 200);
    }
    let filled = rss_mb(agent.pid());

    sink.set_fallback(None);
    let deadline = Instant::now() + Duration::from_secs(60);
    while agent.status().await["spool"]["records"] != 0 {
        assert!(
            Instant::now() < deadline,
            "the backlog did not drain; log:\n{}",
            agent.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let drained = rss_mb(agent.pid());
    println!(
        "drain memory: {requests} requests ({} MiB) held; RSS {before:.0} MB before, {filled:.0} MB \
         with the backlog, {drained:.0} MB after it drained",
        BACKLOG_BYTES >> 20
    );
    assert!(
        filled - before > 20.0,
        "the backlog raised RSS by only {:.0} MB: the test no longer measures anything",
        filled - before
    );
    // Without handing memory back, RSS after the drain is at or above the filled figure.
    assert!(
        drained < before + (filled - before) / 2.0,
        "RSS stayed at {drained:.0} MB after the drain (before {before:.0}, with the backlog \
         {filled:.0})"
    );
}
