//! Memory does not grow with the backlog (the README's "Bounded" guarantee; issue 14's memory
//! test), on the real binary: 256 MiB of 36 KB trace requests held with no destination, a
//! restart with one whose upstream answers, and the drain, with the agent's RSS sampled every
//! 100 ms through all of it; any sample over 64 MB fails. Linux only (RSS from /proc). It checks
//! a bound, not a speed: bench/run.sh's backlog scenario measures the same at 1 GiB.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::process::{agent_command, agent_config, free_port, proc_status_kb, AgentProcess};
use support::{spans, Sink};

/// About 36 KB a request, as a 100-span SDK batch.
const SPANS_PER_REQUEST: usize = 900;
const BACKLOG_BYTES: u64 = 256 << 20;
const RSS_LIMIT_KB: u64 = 64 * 1024;

/// Samples `pid`'s RSS every 100 ms until `stop`; the largest sample.
fn sample_rss(
    pid: u32,
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            if std::fs::metadata(format!("/proc/{pid}")).is_ok() {
                peak.fetch_max(proc_status_kb(&pid.to_string(), "VmRSS"), Ordering::SeqCst);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    })
}

async fn start(dir: &std::path::Path, port: u16, destination: &str) -> AgentProcess {
    let config = dir.join("config.toml");
    let toml = agent_config(
        port,
        None,
        "",
        &dir.join("spool"),
        &format!("max_bytes = \"1GiB\"\n{destination}"),
    );
    std::fs::write(&config, toml).unwrap();
    AgentProcess::start(agent_command(&config), port, &dir.join("agent.log")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holding_restarting_on_and_draining_a_backlog_stays_under_64_mb() {
    let sink = Sink::start().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();

    // Fill, with no destination: everything is held.
    let agent = start(dir.path(), port, "").await;
    let (stop, peak) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let sampler = sample_rss(agent.pid(), Arc::clone(&stop), Arc::clone(&peak));
    let body = spans("backlog", SPANS_PER_REQUEST);
    let requests = BACKLOG_BYTES / body.len() as u64;
    for _ in 0..requests {
        assert_eq!(agent.post("/v1/traces", body.clone()).await, 200);
    }
    let held = agent.status().await["spool"]["bytes"].as_u64().unwrap();
    let filled_kb = peak.load(Ordering::SeqCst);
    stop.store(true, Ordering::SeqCst);
    sampler.join().unwrap();
    drop(agent);

    // Restart with a destination, and drain.
    let up = format!(
        "[[destination]]\nname = \"up\"\ntype = \"otlp_http\"\nendpoint = \"{}\"\n",
        sink.endpoint()
    );
    let started = Instant::now();
    let agent = start(dir.path(), port, &up).await;
    let ready = started.elapsed();
    let (stop, peak) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let sampler = sample_rss(agent.pid(), Arc::clone(&stop), Arc::clone(&peak));
    let expected = requests * SPANS_PER_REQUEST as u64;
    let delivered = sink
        .wait_items("/v1/traces", expected, Duration::from_secs(240))
        .await;
    stop.store(true, Ordering::SeqCst);
    sampler.join().unwrap();
    let drained_kb = peak.load(Ordering::SeqCst);
    println!(
        "backlog memory: {requests} requests ({} MiB held); RSS peak {} MB filling and holding, \
         {} MB restarting and draining; ready after {ready:?}; {delivered} of {expected} spans \
         delivered",
        held >> 20,
        filled_kb / 1024,
        drained_kb / 1024
    );
    assert!(held >= BACKLOG_BYTES * 9 / 10, "held only {held} bytes");
    assert!(
        delivered >= expected,
        "{delivered} of {expected} spans delivered"
    );
    assert!(
        filled_kb <= RSS_LIMIT_KB,
        "RSS reached {} MB while filling and holding {} MiB",
        filled_kb / 1024,
        held >> 20
    );
    assert!(
        drained_kb <= RSS_LIMIT_KB,
        "RSS reached {} MB while restarting on and draining {} MiB",
        drained_kb / 1024,
        held >> 20
    );
}
