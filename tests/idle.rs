//! An idle agent uses no CPU, also after a restart over a spool whose signals hold different
//! sequence ranges (a regression: export workers once spun on an empty read after a restart).
//! Its own binary so the test measures this process's CPU time alone.

mod support;

use std::time::Duration;

use support::*;

/// This process's CPU time (user + system) in clock ticks (1/100 s).
fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the ")" that ends the command name: utime and stime are 14th and 15th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_after_restart_uses_no_cpu() {
    let sink = Sink::start().await;
    let dir = tempfile::tempdir().unwrap();
    let toml = config_toml(dir.path(), &destination("up", &sink, ""));
    let agent = start_agent(&toml).await;
    // Traces get the higher sequence numbers; metrics and logs stay below them.
    for i in 0..5 {
        let (status, _) = post(
            agent.http_addrs()[0],
            "/v1/traces",
            &[PROTOBUF],
            spans(&format!("s{i}"), 2),
        )
        .await;
        assert_eq!(status, 200);
    }
    assert_eq!(
        sink.wait_items("/v1/traces", 10, Duration::from_secs(5))
            .await,
        10
    );
    agent.shutdown().await;

    let agent = start_agent(&toml).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = cpu_ticks();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = cpu_ticks() - before;
    assert!(
        used <= 20,
        "an idle agent used {used} ticks (1/100 s) of CPU in 2 s"
    );
    agent.shutdown().await;
}
