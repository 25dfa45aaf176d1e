//! An idle agent uses no CPU, also after a restart over a spool whose signals hold different
//! sequence ranges (a regression: export workers once spun on an empty read after a restart).
//! Its own binary so the test measures this process's CPU time alone.
//!
//! And an idle agent does not wake at all (README, "Quiet when idle"): no thread of the real
//! binary is scheduled while nothing arrives and nothing is to be sent, so a laptop's CPU can stay
//! in deep sleep.

mod support;

use std::time::Duration;

use support::*;

/// The tests of this file one at a time: the CPU test measures this whole process.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

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
    let _serial = SERIAL.lock().await;
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

/// Context switches come from /proc.
#[cfg(target_os = "linux")]
mod wakeups {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::support::process::{agent_command, agent_config, free_port, AgentProcess};
    use super::support::*;
    use super::SERIAL;

    /// Each thread of `pid`: its name and its context switches so far (voluntary + involuntary).
    fn thread_switches(pid: u32) -> BTreeMap<u32, (String, u64)> {
        let mut threads = BTreeMap::new();
        for task in
            std::fs::read_dir(format!("/proc/{pid}/task")).expect("listing the agent's threads")
        {
            let task = task.unwrap().path();
            let tid: u32 = task.file_name().unwrap().to_str().unwrap().parse().unwrap();
            // A thread that exits between the listing and the reads is simply not there.
            let (Ok(comm), Ok(status)) = (
                std::fs::read_to_string(task.join("comm")),
                std::fs::read_to_string(task.join("status")),
            ) else {
                continue;
            };
            let switches = status
                .lines()
                .filter_map(|l| {
                    l.strip_prefix("voluntary_ctxt_switches:")
                        .or_else(|| l.strip_prefix("nonvoluntary_ctxt_switches:"))
                })
                .map(|v| v.trim().parse::<u64>().unwrap())
                .sum();
            threads.insert(tid, (comm.trim().to_string(), switches));
        }
        threads
    }

    /// An idle agent over an empty spool, with a destination whose upstream is healthy, is never
    /// scheduled: 0 context switches of all its threads over 10 s (`bench/` measures 60 s). Every
    /// periodic wake (a timed wait, an interval) shows up here by thread name.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_idle_agent_does_not_wake() {
        let _serial = SERIAL.lock().await;
        let sink = Sink::start().await;
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = dir.path().join("config.toml");
        let toml = agent_config(
            port,
            Some(free_port()),
            "",
            &dir.path().join("spool"),
            &destination("up", &sink, ""),
        );
        std::fs::write(&config, toml).unwrap();
        let agent =
            AgentProcess::start(agent_command(&config), port, &dir.path().join("log")).await;
        // Start-up settles: the spool's first flush and the housekeeping pass a second after it.
        // (The health checks' keep-alive connection stays open but idle; the agent times it out
        // only after 30 s.)
        tokio::time::sleep(Duration::from_secs(4)).await;
        let before = thread_switches(agent.pid());
        tokio::time::sleep(Duration::from_secs(10)).await;
        let after = thread_switches(agent.pid());

        let mut woke = Vec::new();
        for (tid, (name, then)) in &before {
            match after.get(tid) {
                Some((_, now)) if now > then => {
                    woke.push(format!("{name} ({tid}): {}", now - then))
                }
                Some(_) => {}
                None => woke.push(format!("{name} ({tid}): exited")),
            }
        }
        for (tid, (name, _)) in after.iter().filter(|(tid, _)| !before.contains_key(tid)) {
            woke.push(format!("{name} ({tid}): started"));
        }
        assert!(
            woke.is_empty(),
            "an idle agent woke in 10 s; context switches by thread ({} threads):\n{}\nlog:\n{}",
            after.len(),
            woke.join("\n"),
            agent.log_text()
        );
    }
}
