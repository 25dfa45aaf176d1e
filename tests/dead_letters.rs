//! `otlp-spool dead-letters` end to end: the real binary as the agent, the scripted sink as an
//! upstream that refuses logs with a 400 and is then fixed, and the real binary as the CLI —
//! against the running agent (over its loopback endpoint, with `server.auth_token`) and on a
//! stopped agent's spool directory. Checked: `list` shows each letter with its status and the
//! upstream's message; `show` prints OTLP/JSON that decodes to the refused items; `replay`
//! delivers every item exactly once after the fix, and a replay refused again comes back as one
//! dead letter, not a loop; `purge` empties the store, its segment files go, and `status`
//! agrees.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use support::process::{
    agent_command, agent_config, describe_output as show, free_port, stdout, AgentProcess,
};
use support::{destination, logs, names, wait_until, Reply, Sink};

const BIN: &str = env!("CARGO_BIN_EXE_otlp-spool");
const LOGS: &str = "/v1/logs";
const TOKEN: &str = "dead-letter-test-token";

/// An agent on a free port, spooling in `dir/spool`, with one logs destination `up` at `sink`
/// and a server token; its config file and port.
fn setup(dir: &Path, sink: &Sink) -> (PathBuf, u16) {
    let port = free_port();
    let config = dir.join("config.toml");
    let toml = agent_config(
        port,
        None,
        &format!("auth_token = \"{TOKEN}\""),
        &dir.join("spool"),
        &destination("up", sink, "signals = [\"logs\"]"),
    );
    std::fs::write(&config, toml).unwrap();
    (config, port)
}

async fn start(config: &Path, port: u16, dir: &Path) -> AgentProcess {
    AgentProcess::start(agent_command(config), port, &dir.join("agent.log")).await
}

/// A running agent whose upstream refused `prefix`'s `n` logs: one dead letter.
struct Scene {
    sink: Sink,
    dir: tempfile::TempDir,
    config: PathBuf,
    port: u16,
    agent: AgentProcess,
}

async fn scene(prefix: &str, n: usize) -> Scene {
    let sink = Sink::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (config, port) = setup(dir.path(), &sink);
    let agent = start(&config, port, dir.path()).await;
    refuse(&config, &agent, &sink, prefix, n).await;
    Scene {
        sink,
        dir,
        config,
        port,
        agent,
    }
}

/// `otlp-spool <args> --config <config>`, run to the end.
fn cli(config: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .expect("running otlp-spool")
}

/// `args` with `--json`, which must succeed; its document.
fn cli_json(config: &Path, args: &[&str]) -> Value {
    let out = cli(config, &[args, &["--json"]].concat());
    assert!(out.status.success(), "{args:?}: {}", show(&out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{args:?}: {e}: {}", show(&out)))
}

fn letters(config: &Path) -> Vec<Value> {
    cli_json(config, &["dead-letters", "list"])["dead_letters"]
        .as_array()
        .unwrap()
        .clone()
}

/// Posts `n` log records named `<prefix>-<i>` to the agent, with the token.
async fn post_logs(agent: &AgentProcess, prefix: &str, n: usize) {
    let answer = agent
        .http()
        .post(agent.url(LOGS))
        .header("content-type", "application/x-protobuf")
        .header("x-api-key", TOKEN)
        .body(logs(prefix, n))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir.join("spool/seg/dead_letter"))
        .map(|entries| entries.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default()
}

/// Refuses `prefix`'s `n` logs with a 400 and waits for the dead letter.
async fn refuse(config: &Path, agent: &AgentProcess, sink: &Sink, prefix: &str, n: usize) {
    sink.set_fallback(Some(Reply::Status(400, None)));
    let before = letters(config).len();
    post_logs(agent, prefix, n).await;
    wait_until(
        || letters(config).len() == before + 1,
        Duration::from_secs(10),
        "the dead letter",
    )
    .await;
}

/// What `show` prints for dead letter `id` as OTLP/JSON, decoded independently of the agent:
/// the log bodies.
fn shown_names(config: &Path, id: u64) -> Vec<String> {
    let doc = cli_json(config, &["dead-letters", "show", &id.to_string()]);
    let body = serde_json::to_vec(&doc["payload"]).unwrap();
    let mut headers = hyper::HeaderMap::new();
    headers.insert("content-type", "application/json".parse().unwrap());
    let (items, mut names) = support::decode(LOGS, &headers, &body);
    assert_eq!(items, names.len() as u64);
    names.sort();
    names
}

/// Against the running agent: list, show, replay after the fix (every item once), purge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_logs_are_listed_shown_replayed_once_and_purged_on_the_running_agent() {
    let Scene {
        sink,
        dir,
        config,
        agent,
        ..
    } = scene("bad", 4).await;

    // list: one line with the status, the upstream's message, the items.
    let out = cli(&config, &["dead-letters", "list"]);
    assert!(out.status.success(), "{}", show(&out));
    let table = stdout(&out);
    let row = table
        .lines()
        .find(|l| l.contains(" up ") && l.contains("logs"))
        .unwrap_or_else(|| panic!("no row for the letter:\n{table}"));
    for want in ["400", "sink says 400", " 4 "] {
        assert!(row.contains(want), "{want:?} not in {row:?}\n{table}");
    }
    let letter = &letters(&config)[0];
    assert_eq!(letter["status"], 400, "{letter}");
    assert_eq!(letter["message"], "sink says 400", "{letter}");
    assert_eq!(letter["items"], 4, "{letter}");
    assert!(letter["bytes"].as_u64().unwrap() > 0, "{letter}");
    assert!(letter["received_ms"].as_u64() <= letter["dead_lettered_ms"].as_u64());
    assert!(
        letter["reason"].as_str().unwrap().contains("HTTP 400"),
        "{letter}"
    );
    let id = letter["id"].as_u64().unwrap();

    // show: the payload as OTLP/JSON, the four refused records.
    assert_eq!(shown_names(&config, id), names("bad", 4));
    let out = cli(&config, &["dead-letters", "show", &id.to_string()]);
    let text = stdout(&out);
    assert!(text.contains("payload (OTLP/JSON):"), "{}", show(&out));
    assert!(!text.contains(TOKEN), "no secret in what show prints");

    // Filters.
    let by = |args: &[&str]| {
        cli_json(&config, &[&["dead-letters", "list"], args].concat())["dead_letters"]
            .as_array()
            .unwrap()
            .len()
    };
    assert_eq!(by(&["--destination", "up", "--signal", "logs"]), 1);
    assert_eq!(by(&["--destination", "other"]), 0);
    assert_eq!(by(&["--signal", "traces"]), 0);

    // The endpoint wants the token.
    let anonymous = agent
        .http()
        .get(agent.url("/dead-letters"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);

    // Fixed upstream: replay delivers the four once; the letter is gone.
    sink.set_fallback(None);
    let refused_attempts = sink.received().len();
    let out = cli(&config, &["dead-letters", "replay", "--all"]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        stdout(&out).contains("replaying 1 dead letters"),
        "{}",
        show(&out)
    );
    assert_eq!(sink.wait_items(LOGS, 4, Duration::from_secs(10)).await, 4);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(sink.names(LOGS), names("bad", 4), "every item exactly once");
    assert_eq!(sink.received().len(), refused_attempts + 1);
    assert!(letters(&config).is_empty());

    // Purge: the store empties, its files go, and status agrees.
    refuse(&config, &agent, &sink, "worse", 2).await;
    assert!(!segment_files(dir.path()).is_empty());
    let out = cli(&config, &["dead-letters", "purge", "--all"]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        stdout(&out).starts_with("purged 1 dead letters"),
        "{}",
        show(&out)
    );
    assert!(letters(&config).is_empty());
    assert_eq!(segment_files(dir.path()), Vec::<PathBuf>::new());
    let status = cli_json(&config, &["status"]);
    assert_eq!(status["spool"]["dead_letter_records"], 0, "{status}");
    assert_eq!(status["spool"]["dead_letter_bytes"], 0, "{status}");
    assert_eq!(
        status["spool"]["streams"]["dead_letter"]["disk_bytes"], 0,
        "{status}"
    );
    let out = cli(&config, &["status"]);
    let words = stdout(&out)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        words.contains("MiB), dead letters 0 spool files:"),
        "{}",
        show(&out)
    );

    // Ids that are not there: said, and a failure.
    let out = cli(&config, &["dead-letters", "purge", &id.to_string()]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("no dead letter {id}")),
        "{}",
        show(&out)
    );
}

/// With the agent stopped: the CLI reads and changes the spool itself; a replay marked then is
/// sent once when the agent starts; a purge empties the store. While the agent runs, the spool
/// directory is never opened a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_work_on_a_stopped_agents_spool() {
    let Scene {
        sink,
        dir,
        config,
        port,
        mut agent,
    } = scene("held", 3).await;

    // The agent holds the spool: asked at a wrong address, the CLI does not open it too.
    let elsewhere = format!("127.0.0.1:{}", free_port());
    let out = cli(&config, &["dead-letters", "--addr", &elsewhere, "list"]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is in use by an agent that does not answer"),
        "{}",
        show(&out)
    );

    agent.signal(libc::SIGTERM);
    assert!(agent.wait(Duration::from_secs(10)).success());
    drop(agent);

    let letter = &letters(&config)[0];
    assert_eq!(
        (letter["status"].as_u64(), letter["items"].as_u64()),
        (Some(400), Some(3))
    );
    let id = letter["id"].as_u64().unwrap();
    assert_eq!(shown_names(&config, id), names("held", 3));
    let out = cli(&config, &["dead-letters", "replay", &id.to_string()]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        stdout(&out).contains("sent when it starts"),
        "{}",
        show(&out)
    );
    assert_eq!(letters(&config)[0]["replay_pending"], true);

    // Fixed, and started: sent once.
    sink.set_fallback(None);
    let agent = start(&config, port, dir.path()).await;
    assert_eq!(sink.wait_items(LOGS, 3, Duration::from_secs(10)).await, 3);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        sink.names(LOGS),
        names("held", 3),
        "every item exactly once"
    );
    assert!(letters(&config).is_empty());

    refuse(&config, &agent, &sink, "again", 2).await;
    drop(agent); // SIGKILL: the stopped agent's spool as a crash leaves it
    assert_eq!(letters(&config).len(), 1);
    let out = cli(&config, &["dead-letters", "purge", "--all"]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(letters(&config).is_empty());
    assert_eq!(segment_files(dir.path()), Vec::<PathBuf>::new());
    let _agent = start(&config, port, dir.path()).await;
    let status = cli_json(&config, &["status"]);
    assert_eq!(status["spool"]["dead_letter_records"], 0, "{status}");
    assert_eq!(
        status["spool"]["streams"]["dead_letter"]["disk_bytes"], 0,
        "{status}"
    );
}

/// An upstream still refusing: the replayed letter is sent once, refused, and kept as one new
/// dead letter that says so; nothing is sent again by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_refused_again_comes_back_once_not_in_a_loop() {
    // The agent and the directory live to the end of the test.
    let Scene {
        sink,
        dir: _dir,
        config,
        agent: _agent,
        ..
    } = scene("stubborn", 2).await;
    let first = letters(&config)[0]["id"].as_u64().unwrap();
    let attempts = sink.received().len();

    let out = cli(&config, &["dead-letters", "replay", "--all"]);
    assert!(out.status.success(), "{}", show(&out));
    sink.wait_attempts(attempts + 1, Duration::from_secs(10))
        .await;
    // retry.max is 500 ms: a loop would have tried again several times by now.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        sink.received().len(),
        attempts + 1,
        "sent once more, not again"
    );
    let held = letters(&config);
    assert_eq!(held.len(), 1, "{held:?}");
    let again = &held[0];
    assert_ne!(again["id"].as_u64(), Some(first));
    assert_eq!(again["replay_of"].as_u64(), Some(first), "{again}");
    assert_eq!(again["replays"], 1, "{again}");
    assert_eq!(again["replay_pending"], false, "{again}");
    assert_eq!(again["items"], 2, "{again}");
    let status = cli_json(&config, &["status"]);
    assert_eq!(status["spool"]["dead_letter_records"], 1, "{status}");
    assert_eq!(
        status["spool"]["dead_letter_replays_pending"], 0,
        "{status}"
    );
    let advice = status["destinations"][0]["signals"]["logs"]["advice"]
        .as_str()
        .unwrap_or_default();
    assert!(
        advice.contains("otlp-spool dead-letters list --destination up"),
        "{status}"
    );
}
