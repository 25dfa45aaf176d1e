//! The agent killed at each point where the spool's ordering matters (`src/spool/crash.rs`:
//! `OTLP_SPOOL_CRASH_AT=<point>:<n>` aborts the process the n-th time it passes the point, as
//! `kill -9` there would): append → sync → publish → answer; roll → seal → create → directory
//! sync; cursor → index flush → unlink; and a version-1 spool's migration, copied and not yet
//! marked, marked and not yet cleaned up. After each crash the agent starts again without the
//! crash point, and every acknowledged span must reach the upstream (duplicates allowed), with no
//! damage or loss reported at the start. The random `kill -9` loop is `tests/crash.rs`; power
//! cuts, which `kill -9` cannot show, are `tests/power_cut.rs`.

mod support;

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::process::{agent_command, free_port, try_post, write_agent_config, AgentProcess};
use support::{eventually, span_names, spans, Sink};

/// Spans a request: about 18 KB, so that 1 MiB segments roll every ~55 requests.
const SPANS_PER_REQUEST: usize = 450;
const SENDERS: usize = 4;

/// (point, which pass crashes): late enough that some requests were acknowledged before, and
/// for the roll and deletion points, that segments rolled and were deleted.
const POINTS: &[(&str, u64)] = &[
    ("append.written", 60),
    ("sync.synced", 40),
    ("append.durable", 60),
    ("roll.sealed", 2),
    ("roll.created", 2),
    ("ack.cursor_written", 30),
    ("delete.flushed", 1),
];

/// The config after `[spool]`'s `dir`: small segments (a 32 MiB cap makes them 1 MiB), one
/// destination to `sink`, batches sent at once.
fn small_segments_to(sink: &Sink) -> String {
    format!(
        "max_bytes = \"32MiB\"\nmax_age = \"36500d\"\n\
         [[destination]]\nname = \"up\"\ntype = \"otlp_http\"\nendpoint = \"{}\"\n\
         retry = {{ initial = \"20ms\", max = \"200ms\" }}\n\
         batch = {{ linger = \"10ms\" }}\n",
        sink.endpoint()
    )
}

/// Sends from `SENDERS` tasks until the agent stops answering (or `limit` passes); the prefixes
/// of the requests it acknowledged.
async fn send_until_it_dies(agent: &AgentProcess, limit: Duration) -> Vec<String> {
    let acked = Arc::new(Mutex::new(Vec::new()));
    let deadline = Instant::now() + limit;
    let tasks: Vec<_> = (0..SENDERS)
        .map(|sender| {
            let (http, url, acked) = (
                agent.http().clone(),
                agent.url("/v1/traces"),
                Arc::clone(&acked),
            );
            tokio::spawn(async move {
                for n in 0.. {
                    if Instant::now() > deadline {
                        return;
                    }
                    let prefix = format!("s{sender}r{n}");
                    let body = spans(&prefix, SPANS_PER_REQUEST);
                    match try_post(&http, &url, body).await {
                        Ok(response) if response.status() == 200 => {
                            acked.lock().unwrap().push(prefix)
                        }
                        Ok(_) => {}
                        Err(_) => return, // the agent is gone
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    acked
}

/// Waits until the sink has every span of `prefixes`; the names still missing.
async fn wait_delivered(sink: &Sink, prefixes: &[String], within: Duration) -> Vec<String> {
    let want = span_names(prefixes, SPANS_PER_REQUEST);
    sink.wait_names("/v1/traces", &want, within).await
}

/// What a start must not report after a crash at a point the spool is built to survive.
fn assert_no_damage(log: &str, point: &str) {
    for needle in ["lost its newest writes", "damaged", "missing", "quarantine"] {
        assert!(
            !log.contains(needle),
            "{point}: the restart reported {needle:?}; log:\n{log}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_each_ordering_point_loses_nothing_acknowledged() {
    for &(point, nth) in POINTS {
        // The upstream answers slowly enough at first that records are held, rolled and then
        // deleted while the senders go on.
        let sink = Sink::start().await;
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = write_agent_config(
            dir.path(),
            port,
            None,
            &dir.path().join("spool"),
            &small_segments_to(&sink),
        );
        let log = dir.path().join("agent.log");
        let mut command = agent_command(&config);
        command.env("OTLP_SPOOL_CRASH_AT", format!("{point}:{nth}"));
        let mut agent = AgentProcess::start(command, port, &log).await;
        let acked = send_until_it_dies(&agent, Duration::from_secs(30)).await;
        eventually(Duration::from_secs(5), || !agent.running()).await;
        assert!(
            !agent.running(),
            "{point}:{nth} was never reached; log:\n{}",
            agent.log_text()
        );
        assert!(
            agent
                .log_text()
                .contains(&format!("crash point {point} reached")),
            "{point}: the agent died otherwise; log:\n{}",
            agent.log_text()
        );
        drop(agent);

        let agent = AgentProcess::start_retrying(|| agent_command(&config), port, &log).await;
        let missing = wait_delivered(&sink, &acked, Duration::from_secs(30)).await;
        println!(
            "{point}:{nth}: {} requests acknowledged before the crash, {} spans missing after \
             the restart",
            acked.len(),
            missing.len()
        );
        assert!(
            missing.is_empty(),
            "{point}: {} acknowledged spans lost, e.g. {:?}; log:\n{}",
            missing.len(),
            &missing[..missing.len().min(5)],
            agent.log_text()
        );
        assert_no_damage(&agent.log_text(), point);
        drop(agent);
    }
}

/// A version-1 spool (tests/fixtures/spool-v1) whose migration is killed after the copy and
/// after `LAYOUT`: the next start finishes it, and every record the two destinations had not
/// acknowledged reaches them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_killed_halfway_starts_again_and_loses_nothing() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/spool-v1/spool");
    for point in ["migrate.copied", "migrate.layout_written"] {
        let sinks = [Sink::start().await, Sink::start().await];
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().join("spool");
        let copied = Command::new("cp")
            .arg("-r")
            .arg(&fixture)
            .arg(&spool)
            .status()
            .unwrap();
        assert!(copied.success());
        let port = free_port();
        let destinations: String = ["a", "b"]
            .iter()
            .zip(&sinks)
            .map(|(name, sink)| {
                format!(
                    "[[destination]]\nname = \"{name}\"\ntype = \"otlp_http\"\nendpoint = \"{}\"\n",
                    sink.endpoint()
                )
            })
            .collect();
        let rest = format!("max_age = \"36500d\"\n{destinations}");
        let config = write_agent_config(dir.path(), port, None, &spool, &rest);
        let log = dir.path().join("agent.log");
        let mut crashing = agent_command(&config);
        crashing.env("OTLP_SPOOL_CRASH_AT", point);
        let status = crashing
            .stderr(std::fs::File::create(&log).unwrap())
            .status()
            .unwrap();
        assert!(!status.success(), "{point}: the migration did not crash");
        assert!(
            std::fs::read_to_string(&log)
                .unwrap()
                .contains("crash point"),
            "{point}"
        );

        let agent = AgentProcess::start_retrying(|| agent_command(&config), port, &log).await;
        // tests/fixtures/spool-v1/README.md: a has traces 8 (3 spans), metrics 7 (7 points) and
        // logs 6 (1 record) to send; b everything (traces 9, metrics 17, logs 5).
        for (sink, path, want) in [
            (&sinks[0], "/v1/traces", 3),
            (&sinks[0], "/v1/metrics", 7),
            (&sinks[0], "/v1/logs", 1),
            (&sinks[1], "/v1/traces", 9),
            (&sinks[1], "/v1/metrics", 17),
            (&sinks[1], "/v1/logs", 5),
        ] {
            let got = sink.wait_items(path, want, Duration::from_secs(20)).await;
            assert!(
                got >= want,
                "{point}: {path}: {got} of {want}; log:\n{}",
                agent.log_text()
            );
        }
        assert!(
            !spool.join("db").exists(),
            "{point}: the version-1 files stay"
        );
        assert_no_damage(&agent.log_text(), point);
        println!("{point}: the migration finished at the next start, nothing lost");
    }
}
