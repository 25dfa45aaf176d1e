//! Storage faults against the real binary: a disk that fills up (a small tmpfs in a private mount
//! namespace, filled by the agent and then by another writer, and grown again), a corrupt spool
//! (quarantined, the agent starts), and a spool directory it may not write (a read-only mount, a
//! directory owned by someone else): a clear start error. Needs root (mount namespaces, setpriv).
//!
//! Each agent runs as the only process of its own mount namespace (`unshare -m` execs it), so
//! its mounts vanish with it; the [`AgentProcess`] guard kills and reaps it on every exit path.

mod support;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use support::process::{free_port, write_agent_config, AgentProcess};
use support::{
    destination, grpc_channel, skip_or_fail, span_names, spans, trace_request, Reply, Sink,
    PROTOBUF,
};

const BIN: &str = env!("CARGO_BIN_EXE_otlp-spool");
const SPANS_PER_REQUEST: usize = 40;

/// Starts `script` (a shell command line ending in `exec otlp-spool …`, with the binary in
/// `$BIN` and the config in `$CONFIG`) as the only process of a private mount namespace, logging
/// to `dir/agent.log`, and waits for `/healthz`. Dropping the agent kills it, and its mounts go
/// with its namespace.
async fn start_in_namespace(dir: &Path, config: &str, script: &str, port: u16) -> AgentProcess {
    let mut command = Command::new("unshare");
    command
        .args(["-m", "--propagation", "private", "sh", "-c", script])
        .env("OTLP_SPOOL_LOG", "info")
        .env("CONFIG", config)
        .env("BIN", BIN);
    AgentProcess::start(command, port, &dir.join("agent.log")).await
}

/// What `otlp-spool status` prints about `agent`.
fn status_command(agent: &AgentProcess) -> String {
    let out = Command::new(BIN)
        .args(["status", "--addr", &format!("127.0.0.1:{}", agent.port)])
        .output()
        .expect("running otlp-spool status");
    assert!(out.status.success(), "otlp-spool status: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// POSTs one trace request of `SPANS_PER_REQUEST` spans to `agent`; the status and its
/// `Retry-After`.
async fn send(agent: &AgentProcess, prefix: &str) -> (u16, Option<String>) {
    let response = agent
        .http()
        .post(agent.url("/v1/traces"))
        .header(PROTOBUF.0, PROTOBUF.1)
        .body(spans(prefix, SPANS_PER_REQUEST))
        .timeout(Duration::from_secs(15))
        .send()
        .await
        .expect("the agent answers");
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    (response.status().as_u16(), retry_after)
}

/// Runs `command` in `agent`'s mount namespace.
fn in_namespace(agent: &AgentProcess, command: &str) -> std::process::Output {
    Command::new("nsenter")
        .args(["-t", &agent.pid().to_string(), "-m", "sh", "-c", command])
        .output()
        .expect("running nsenter")
}

/// Whether this process may make private mount namespaces (root, or CAP_SYS_ADMIN); `false`
/// with a loud SKIP outside CI, a failure under CI.
fn mount_namespaces(test: &str) -> bool {
    let probe = Command::new("unshare")
        .args(["-m", "--propagation", "private", "true"])
        .stderr(Stdio::piped())
        .output();
    let why = match probe {
        Ok(out) if out.status.success() => return true,
        Ok(out) => String::from_utf8_lossy(&out.stderr).trim().to_string(),
        Err(e) => format!("running unshare (util-linux): {e}"),
    };
    skip_or_fail(
        test,
        &format!("needs private mount namespaces (run as root): {why}"),
    );
    false
}

/// The disk fills: first with the agent's own data (it refuses before the file system is full,
/// keeping room for deletions), then to the last byte by another writer while the agent holds a
/// backlog and its worker acknowledges deliveries (each moves a cursor in the sled index). Clients get
/// 503 + Retry-After and gRPC UNAVAILABLE, `/healthz` says 503, the process lives on; once the
/// space is back it accepts again by itself, and every acknowledged span reaches the sink.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_data_then_recovers_by_itself_and_loses_nothing_acknowledged() {
    if !mount_namespaces("the full-disk test") {
        return;
    }
    let began = Instant::now();
    let sink = Sink::start().await;
    // Hold everything in the spool while the disk fills.
    sink.set_fallback(Some(Reply::Status(503, None)));
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let spool = mnt.join("spool");
    let (port, grpc_port) = (free_port(), free_port());
    // max_bytes far above the tmpfs: the disk, not the cap, runs out.
    let config = write_agent_config(
        dir.path(),
        port,
        Some(grpc_port),
        &spool,
        // "amp" keeps delta state in the spool: that must not keep the database from reopening.
        &format!(
            "max_bytes = \"1GiB\"\n{}\n[[destination]]\nname = \"amp\"\n\
             type = \"prometheus_remote_write\"\nendpoint = \"{}/api/v1/write\"\n",
            destination("up", &sink, "signals = [\"traces\"]"),
            sink.endpoint()
        ),
    );
    let script = format!(
        "mount -t tmpfs -o size=16m tmpfs {mnt} && exec \"$BIN\" run --config \"$CONFIG\"",
        mnt = mnt.display()
    );
    let mut agent = start_in_namespace(dir.path(), &config.to_string_lossy(), &script, port).await;

    // 1. The agent's own data fills the disk until it refuses.
    let mut acked: Vec<String> = Vec::new();
    let (mut refused, mut consecutive, mut n) = (0u64, 0u64, 0u64);
    while consecutive < 10 {
        let prefix = format!("a{n}");
        n += 1;
        let (status, retry_after) = send(&agent, &prefix).await;
        match status {
            200 => {
                acked.push(prefix);
                consecutive = 0;
            }
            503 => {
                assert!(retry_after.is_some(), "a 503 without Retry-After");
                refused += 1;
                consecutive += 1;
            }
            other => panic!("unexpected status {other}; log:\n{}", agent.log_text()),
        }
        assert!(
            n < 20_000,
            "the agent never refused; log:\n{}",
            agent.log_text()
        );
    }
    assert_eq!(
        agent.healthz().await,
        Some(503),
        "/healthz while the disk is full; status {}; log:\n{}",
        agent.status().await,
        agent.log_text()
    );
    let channel = grpc_channel(([127, 0, 0, 1], grpc_port).into()).await;
    let grpc = TraceServiceClient::new(channel)
        .export(trace_request("g0", 3))
        .await;
    assert_eq!(
        grpc.as_ref().map_err(|s| s.code()).err(),
        Some(tonic::Code::Unavailable),
        "gRPC on a full disk: {grpc:?}"
    );
    let filled = agent.status().await;
    println!(
        "disk full: {} requests acknowledged ({} spans), then {refused} refused; spool {} records, \
         {} bytes, {} on disk",
        acked.len(),
        acked.len() * SPANS_PER_REQUEST,
        filled["spool"]["records"],
        filled["spool"]["bytes"],
        filled["spool"]["disk_bytes"]
    );

    // 2. Another writer takes the rest, to the last byte; the upstream takes data again, so the
    // worker delivers and acknowledges (deleting, which writes) on a disk with no room at all.
    let out = in_namespace(
        &agent,
        &format!(
            "dd if=/dev/zero of={}/filler bs=64k 2>&1; df -k {}",
            mnt.display(),
            mnt.display()
        ),
    );
    println!("filler: {}", String::from_utf8_lossy(&out.stdout).trim());
    sink.set_fallback(None);
    let delivered =
        |sink: &Sink| -> HashSet<String> { sink.names("/v1/traces").into_iter().collect() };
    let want: Vec<String> = span_names(&acked, SPANS_PER_REQUEST);
    sink.wait_names("/v1/traces", &want, Duration::from_secs(15))
        .await;
    let during = agent.status().await;
    let (status, retry_after) = send(&agent, "full").await;
    assert_eq!(status, 503, "an append with no space at all");
    assert!(retry_after.is_some());
    assert_eq!(agent.healthz().await, Some(503));
    assert!(
        agent.running(),
        "the agent died on a full disk; log:\n{}",
        agent.log_text()
    );
    // Cursor moves write to the spool's sled index, which latches an ENOSPC it meets: the spool
    // then fails (and must reopen). The index writes little (payloads are in segment files,
    // and deleting those frees space), so on a full disk it may not meet one at all.
    let storage_error = during["spool"]["storage_error"]
        .as_str()
        .unwrap_or_default();
    let index_failed = !storage_error.is_empty();
    assert!(
        !index_failed || storage_error.contains("No space left on device"),
        "an unexpected storage error on a completely full disk: {during}"
    );
    println!(
        "on a completely full disk: storage_error {}, spool {} records",
        during["spool"]["storage_error"], during["spool"]["records"]
    );

    // 3. Space comes back: the agent recovers by itself.
    let out = in_namespace(
        &agent,
        &format!(
            "rm {m}/filler && mount -o remount,size=64m {m}",
            m = mnt.display()
        ),
    );
    assert!(out.status.success(), "growing the tmpfs: {out:?}");
    let deadline = Instant::now() + Duration::from_secs(15);
    while agent.healthz().await != Some(200) {
        assert!(
            Instant::now() < deadline,
            "the agent did not recover by itself; status {}; log:\n{}",
            agent.status().await,
            agent.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for i in 0..20 {
        let prefix = format!("b{i}");
        let (status, _) = send(&agent, &prefix).await;
        assert_eq!(status, 200, "accepting again after recovery");
        acked.push(prefix);
    }

    // Every acknowledged span reaches the sink, and the spool drains.
    let want = span_names(&acked, SPANS_PER_REQUEST);
    let deadline = Instant::now() + Duration::from_secs(20);
    let missing = loop {
        let got = delivered(&sink);
        let missing: Vec<&String> = want.iter().filter(|s| !got.contains(*s)).collect();
        let drained = agent.status().await["spool"]["records"] == 0;
        if (missing.is_empty() && drained) || Instant::now() > deadline {
            break missing;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let last = agent.status().await;
    println!(
        "recovered: {} requests acknowledged in all ({} spans), {} distinct spans delivered, {} \
         deliveries, {} missing; reopens {}; refused for storage {}; {:.1?}",
        acked.len(),
        want.len(),
        delivered(&sink).len(),
        sink.items("/v1/traces"),
        missing.len(),
        last["spool"]["reopens"],
        last["refused_requests"]["storage"],
        began.elapsed()
    );
    assert!(
        missing.is_empty(),
        "{} acknowledged spans never reached the sink, e.g. {:?}; log:\n{}",
        missing.len(),
        &missing[..missing.len().min(5)],
        agent.log_text()
    );
    assert_eq!(last["spool"]["records"], 0, "the spool drained: {last}");
    assert!(last["refused_requests"]["storage"].as_u64() >= Some(refused));
    if index_failed {
        assert!(last["spool"]["reopens"].as_u64() >= Some(1), "{last}");
    }
    assert_eq!(last["spool"]["storage_error"], serde_json::Value::Null);
    assert!(agent.running());
}

/// Writes a spool with `records` trace records through the library, then lets `corrupt` damage it.
async fn damaged_spool(spool: &Path, records: u32, corrupt: impl Fn(&Path)) {
    let routes: otlp_spool::spool::Routes = [vec!["up".to_string()], Vec::new(), Vec::new()].into();
    let limits = otlp_spool::spool::Limits {
        max_bytes: 1 << 30,
        max_age: Duration::from_secs(3600),
        when_full: otlp_spool::config::WhenFull::DropOldest,
    };
    {
        let opened = otlp_spool::spool::Spool::open(spool, limits, routes).unwrap();
        for i in 0..records {
            let payload = spans(&format!("old{i}"), 2);
            opened
                .append(otlp_spool::otlp::Signal::Traces, 2, &payload)
                .await
                .unwrap();
        }
    }
    corrupt(spool);
}

/// The agent (destination "up" → `sink`, traces only) started on a spool in `dir/spool` of
/// `records` trace records that `corrupt` damaged first.
async fn start_on_damaged_spool(
    dir: &Path,
    sink: &Sink,
    records: u32,
    corrupt: impl Fn(&Path),
) -> (AgentProcess, PathBuf) {
    let spool = dir.join("spool");
    damaged_spool(&spool, records, corrupt).await;
    let (port, grpc_port) = (free_port(), free_port());
    let config = write_agent_config(
        dir,
        port,
        Some(grpc_port),
        &spool,
        &destination("up", sink, "signals = [\"traces\"]"),
    );
    let agent = start_in_namespace(
        dir,
        &config.to_string_lossy(),
        "exec \"$BIN\" run --config \"$CONFIG\"",
        port,
    )
    .await;
    (agent, spool)
}

/// A corrupt spool is moved aside (a sibling `spool.quarantine-<UTC>`, still 0700), counted in
/// `/status` and `/metrics`, logged at error level with both paths, and an empty spool starts:
/// the agent comes up and takes data.
#[tokio::test]
async fn a_corrupt_spool_is_quarantined_and_the_agent_starts() {
    use std::os::unix::fs::PermissionsExt;
    if !mount_namespaces("the corrupt-spool test") {
        return;
    }
    for (case, corrupt) in [
        (
            "garbled conf",
            Box::new(|s: &Path| {
                std::fs::write(s.join("index/conf"), b"garbage garbage garbage").unwrap()
            }) as Box<dyn Fn(&Path)>,
        ),
        (
            "garbage over the start of the log",
            Box::new(|s: &Path| {
                use std::io::Write;
                let mut db = std::fs::OpenOptions::new()
                    .write(true)
                    .open(s.join("index/db"))
                    .unwrap();
                db.write_all(&[0xA5; 8192]).unwrap();
            }),
        ),
    ] {
        let sink = Sink::start().await;
        let dir = tempfile::tempdir().unwrap();
        let (agent, spool) = start_on_damaged_spool(dir.path(), &sink, 50, corrupt).await;
        let aside: Vec<PathBuf> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("spool.quarantine-")
            })
            .collect();
        assert_eq!(
            aside.len(),
            1,
            "{case}: one quarantine directory: {aside:?}"
        );
        let mode = std::fs::metadata(&aside[0]).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{case}: the quarantine stays private");
        let status = agent.status().await;
        assert_eq!(
            status["spool"]["quarantined"],
            aside[0].to_string_lossy().as_ref(),
            "{case}"
        );
        assert_eq!(status["spool"]["quarantines"], 1);
        assert!(agent
            .metrics()
            .await
            .contains("otlp_spool_spool_quarantines 1"));
        let log = agent.log_text();
        let line = log
            .lines()
            .find(|l| l.contains("ERROR") && l.contains("corrupt"))
            .unwrap_or_else(|| panic!("{case}: no error logged:\n{log}"));
        for needle in [
            &*spool.to_string_lossy(),
            &*aside[0].to_string_lossy(),
            "delete it",
        ] {
            assert!(line.contains(needle), "{case}: {needle:?} not in {line}");
        }
        let printed = status_command(&agent);
        assert!(
            printed.contains(&format!(
                "CORRUPT SPOOL moved aside at this start, to {}",
                aside[0].display()
            )),
            "{case}: `status` does not say so:\n{printed}"
        );
        let (code, _) = send(&agent, "fresh").await;
        assert_eq!(code, 200, "{case}: the fresh spool takes data");
        assert_eq!(
            sink.wait_items(
                "/v1/traces",
                SPANS_PER_REQUEST as u64,
                Duration::from_secs(10)
            )
            .await,
            SPANS_PER_REQUEST as u64
        );
        println!("{case}: quarantined to {}; log: {line}", aside[0].display());
    }
}

/// A log cut short (sled opens it, taking the cut for a torn write): the agent starts, says at
/// error level, in `/status`, `/metrics` and `otlp-spool status` that acknowledged writes were
/// lost, and delivers every record that survived.
#[tokio::test]
async fn a_truncated_spool_is_reported_and_what_survived_is_delivered() {
    if !mount_namespaces("the truncated-spool test") {
        return;
    }
    let sink = Sink::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (agent, spool) = start_on_damaged_spool(dir.path(), &sink, 200, |s| {
        // The traces segment (one file: 200 small records) cut in half.
        let segment = std::fs::read_dir(s.join("seg/traces"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .next()
            .unwrap();
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&segment)
            .unwrap();
        let len = file.metadata().unwrap().len();
        file.set_len(len / 2).unwrap();
    })
    .await;
    let status = agent.status().await;
    let truncated = &status["spool"]["truncated"];
    assert_eq!(truncated["expected_seq"], 200, "{status:#}");
    let found = truncated["found_seq"].as_u64().unwrap();
    assert!((1..200).contains(&found), "{status:#}");
    assert!(agent
        .metrics()
        .await
        .contains("otlp_spool_spool_truncations 1"));
    let line = agent
        .log_text()
        .lines()
        .find(|l| l.contains("ERROR") && l.contains("lost its newest writes"))
        .map(str::to_string)
        .unwrap_or_else(|| panic!("no error logged:\n{}", agent.log_text()));
    assert!(line.contains(&*spool.to_string_lossy()), "{line}");
    let printed = status_command(&agent);
    assert!(
        printed.contains(&format!("SPOOL LOST WRITES before this start (log truncated or damaged): sequences after {found} up to 200")),
        "`status` does not say so:\n{printed}"
    );
    // What survived goes out: the requests up to `found` (the newest may be the torn one).
    let delivered = sink
        .wait_items("/v1/traces", 2 * (found - 1), Duration::from_secs(10))
        .await;
    assert!(delivered >= 2 * (found - 1), "{delivered} spans delivered");
    let mut prefixes: Vec<String> = sink
        .names("/v1/traces")
        .iter()
        .map(|n| n.rsplit_once('-').unwrap().0.to_string())
        .collect();
    prefixes.sort();
    prefixes.dedup();
    let survived = prefixes.len() as u64;
    assert!(survived + 1 >= found && survived <= found, "{prefixes:?}");
    assert!(
        prefixes
            .iter()
            .all(|p| p.strip_prefix("old").unwrap().parse::<u64>().unwrap() < found),
        "{prefixes:?}"
    );
    let (code, _) = send(&agent, "after").await;
    assert_eq!(code, 200, "the spool takes data");
    println!("truncated log: {survived} records of 200 kept and delivered; log: {line}");
}

/// Runs the agent to its start error; its exit code and the `otlp-spool: …` line.
fn start_error(dir: &Path, script: &str) -> (Option<i32>, String) {
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", script])
        .env("CONFIG", dir.join("config.toml"))
        .env("BIN", BIN)
        .stdin(Stdio::null())
        .output()
        .expect("running unshare");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr
        .lines()
        .find(|l| l.starts_with("otlp-spool: "))
        .unwrap_or_else(|| panic!("no start error; stderr:\n{stderr}"))
        .to_string();
    (out.status.code(), line)
}

/// A spool directory on a read-only mount, or one the agent's user cannot write, stops the start
/// with one line naming the directory, what failed and what to do (exit 1; no quarantine).
#[test]
fn an_unwritable_spool_directory_is_a_clear_start_error() {
    use std::os::unix::fs::PermissionsExt;
    if !mount_namespaces("the unwritable-spool test") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Readable by the unprivileged user below: the config and the way to the spool.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let ro = dir.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    std::fs::create_dir(ro.join("existing")).unwrap();
    for spool in [ro.join("new"), ro.join("existing")] {
        write_agent_config(dir.path(), free_port(), Some(free_port()), &spool, "");
        let script = format!(
            "mount --bind {ro} {ro} && mount -o remount,bind,ro {ro} && exec \"$BIN\" run --config \"$CONFIG\"",
            ro = ro.display()
        );
        let (code, line) = start_error(dir.path(), &script);
        assert_eq!(code, Some(1), "{line}");
        assert_eq!(
            line,
            format!(
                "otlp-spool: cannot use spool directory {}: Read-only file system (os error 30); \
                 its file system is mounted read-only: set spool.dir to a directory on a writable \
                 file system",
                spool.display()
            )
        );
    }

    // Owned by root, mode 0700, and the agent runs as nobody.
    let theirs = dir.path().join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o700)).unwrap();
    let config = write_agent_config(dir.path(), free_port(), Some(free_port()), &theirs, "");
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let script =
        "exec setpriv --reuid=65534 --regid=65534 --clear-groups \"$BIN\" run --config \"$CONFIG\"";
    let (code, line) = start_error(dir.path(), script);
    assert_eq!(code, Some(1), "{line}");
    assert_eq!(
        line,
        format!(
            "otlp-spool: cannot use spool directory {}: Operation not permitted (os error 1); set \
             spool.dir to a directory this user can write, or make this user the owner of the \
             directory (otlp-spool keeps it at mode 0700)",
            theirs.display()
        )
    );
    let entries = std::fs::read_dir(dir.path()).unwrap().flatten();
    assert!(
        entries
            .into_iter()
            .all(|e| !e.file_name().to_string_lossy().contains("quarantine")),
        "nothing was quarantined"
    );
}
