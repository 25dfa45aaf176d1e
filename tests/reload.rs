//! SIGHUP reloads the config of a running agent (`docs/reliability.md`, "Shutdown and reload"):
//! destinations are added, removed and changed without a restart, with the cursor semantics of
//! `Agent::reload`, and a config that does not load changes nothing.

mod support;

use std::path::Path;
use std::time::Duration;

use support::process::{agent_command, agent_config, free_port, AgentProcess};
use support::{destination, spans, Reply, Sink};

fn write_config(path: &Path, port: u16, spool: &Path, destinations: &str) {
    write_config_with(path, port, spool, "", destinations)
}

fn write_config_with(path: &Path, port: u16, spool: &Path, server: &str, destinations: &str) {
    std::fs::write(path, agent_config(port, None, server, spool, destinations)).unwrap();
}

async fn send(agent: &AgentProcess, prefix: &str, requests: usize) {
    for i in 0..requests {
        let body = spans(&format!("{prefix}{i}"), 1);
        assert_eq!(agent.post("/v1/traces", body).await, 200);
    }
}

fn destination_names(status: &serde_json::Value) -> Vec<String> {
    status["destinations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn sighup_adds_removes_and_changes_destinations_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (config, spool, log) = (
        dir.path().join("config.toml"),
        dir.path().join("spool"),
        dir.path().join("agent.log"),
    );
    let port = free_port();
    let (a, b, c) = (
        Sink::start().await,
        Sink::start().await,
        Sink::start().await,
    );
    c.set_fallback(Some(Reply::Status(503, None)));
    let timeout = Duration::from_secs(10);

    // A delivers; C refuses everything, so the spool holds what C has not taken.
    let a_block = destination("a", &a, "");
    write_config(
        &config,
        port,
        &spool,
        &format!("{a_block}{}", destination("c", &c, "")),
    );
    let mut agent = AgentProcess::start(agent_command(&config), port, &log).await;
    let pid_before = agent.pid();
    send(&agent, "first", 10).await;
    assert_eq!(a.wait_items("/v1/traces", 10, timeout).await, 10);
    assert_eq!(agent.status().await["spool"]["records"], 10, "held for c");

    // C goes, B comes: B starts from the oldest held record, so it gets all ten; C's cursor
    // is forgotten and, with A and B done, the records are deleted.
    write_config(
        &config,
        port,
        &spool,
        &format!("{a_block}{}", destination("b", &b, "")),
    );
    agent.signal(libc::SIGHUP);
    agent.wait_log("config reloaded", 1, timeout).await;
    assert_eq!(b.wait_items("/v1/traces", 10, timeout).await, 10);
    // C's workers were stopped before the reload was logged: it hears nothing from now on.
    let c_requests = c.received().len();
    assert!(c_requests > 0, "C was tried before it was removed");
    let status = agent.status().await;
    assert_eq!(destination_names(&status), ["a", "b"]);
    assert_eq!(
        a.items("/v1/traces"),
        10,
        "A was left running: nothing resent"
    );
    let deadline = tokio::time::Instant::now() + timeout;
    while agent.status().await["spool"]["records"] != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "records not deleted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A changes (a new header): its workers restart from its cursor, so only new data goes,
    // with the header.
    write_config(
        &config,
        port,
        &spool,
        &format!(
            "{}{}",
            destination("a", &a, "headers = { \"x-reloaded\" = \"yes\" }"),
            destination("b", &b, "")
        ),
    );
    agent.signal(libc::SIGHUP);
    agent.wait_log("config reloaded", 2, timeout).await;
    send(&agent, "second", 5).await;
    assert_eq!(b.wait_items("/v1/traces", 15, timeout).await, 15);
    assert_eq!(a.wait_items("/v1/traces", 15, timeout).await, 15);
    let after_change: Vec<_> = a
        .received()
        .into_iter()
        .filter(|r| r.names.iter().any(|n| n.starts_with("second")))
        .collect();
    assert!(!after_change.is_empty());
    assert!(
        after_change
            .iter()
            .all(|r| r.headers.get("x-reloaded").is_some_and(|v| v == "yes")),
        "the changed destination sends with its new config"
    );

    // A broken config is reported and the running one kept; a server change is deferred.
    std::fs::write(&config, "[server]\nlisten = 42\n").unwrap();
    agent.signal(libc::SIGHUP);
    agent
        .wait_log("reload failed, keeping the running config", 1, timeout)
        .await;
    send(&agent, "third", 1).await;
    assert_eq!(a.wait_items("/v1/traces", 16, timeout).await, 16);
    assert_eq!(b.wait_items("/v1/traces", 16, timeout).await, 16);
    write_config_with(
        &config,
        port,
        &spool,
        "max_body = \"1MiB\"",
        &format!(
            "{}{}",
            destination("a", &a, "headers = { \"x-reloaded\" = \"yes\" }"),
            destination("b", &b, "")
        ),
    );
    agent.signal(libc::SIGHUP);
    agent.wait_log("config reloaded", 3, timeout).await;
    agent
        .wait_log("take effect only at the next restart", 1, timeout)
        .await;

    // Still the same process, and SIGTERM still stops it cleanly.
    assert_eq!(agent.pid(), pid_before);
    agent.signal(libc::SIGTERM);
    assert!(agent.wait(Duration::from_secs(5)).success());
    assert_eq!(c.received().len(), c_requests, "C was removed");
}

/// A changed destination's new workers start with a clean retry state: the state its old
/// workers reported (a backoff, a hold) is not shown once the new config delivers.
#[tokio::test]
async fn a_changed_destination_does_not_keep_the_old_retry_state() {
    let dir = tempfile::tempdir().unwrap();
    let (config, spool) = (dir.path().join("config.toml"), dir.path().join("spool"));
    let port = free_port();
    let (refusing, working) = (Sink::start().await, Sink::start().await);
    refusing.set_fallback(Some(Reply::Status(503, None)));
    let timeout = Duration::from_secs(10);
    // "ready", or an object naming the state ({"backoff": {…}}).
    let retry_state =
        |status: serde_json::Value| status["destinations"][0]["signals"]["traces"]["retry"].clone();

    write_config(&config, port, &spool, &destination("up", &refusing, ""));
    let agent =
        AgentProcess::start(agent_command(&config), port, &dir.path().join("agent.log")).await;
    send(&agent, "held", 1).await;
    refusing.wait_first_attempt(timeout).await;
    let deadline = tokio::time::Instant::now() + timeout;
    while retry_state(agent.status().await) == "ready" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no backoff reported"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    write_config(&config, port, &spool, &destination("up", &working, ""));
    agent.signal(libc::SIGHUP);
    agent.wait_log("config reloaded", 1, timeout).await;
    assert_eq!(working.wait_items("/v1/traces", 1, timeout).await, 1);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let state = retry_state(agent.status().await);
        if state == "ready" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "delivered with the new config, but the retry state is still {state}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
