//! The real `otlp-spool` binary as a child process, for tests that need what only a process
//! has: signals (SIGHUP, SIGTERM, SIGKILL), its own clock (libfaketime), its /proc entries.
//! Dropping an [`AgentProcess`] SIGKILLs and reaps it, so a failing test leaves no process (and
//! no spool lock) behind. Also here: the config file such a process reads, and what a test
//! shows of a finished command or of the agent's log when it fails.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct AgentProcess {
    child: Child,
    /// The OTLP/HTTP port, as written in the config.
    pub port: u16,
    pub log: PathBuf,
    /// For requests to the agent (see [`AgentProcess::http`]).
    http: reqwest::Client,
}

/// A `run --config <config>` command of the binary under test, logging at info.
pub fn agent_command(config: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_otlp-spool"));
    command
        .arg("run")
        .arg("--config")
        .arg(config)
        .env("OTLP_SPOOL_LOG", "info");
    command
}

/// A finished command's exit status, stdout and stderr, for assertion messages.
pub fn describe_output(out: &std::process::Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A finished command's stdout, as text.
pub fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("binding an ephemeral port")
        .local_addr()
        .unwrap()
        .port()
}

/// The config of a process agent: OTLP/HTTP on `port`, gRPC on `grpc_port` (or off), `server`
/// keys such as `auth_token`, the spool in `spool`, then `rest`. `rest` follows `dir` inside
/// `[spool]`, so it may open with spool keys before its destinations.
pub fn agent_config(
    port: u16,
    grpc_port: Option<u16>,
    server: &str,
    spool: &Path,
    rest: &str,
) -> String {
    let grpc = grpc_port.map_or(String::new(), |p| format!("127.0.0.1:{p}"));
    format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\ngrpc_listen = \"{grpc}\"\n{server}\n\
         [spool]\ndir = \"{}\"\n{rest}\n",
        spool.display()
    )
}

/// The last 40 lines of the agent log at `log` (empty if there is none yet), for a failure
/// message.
pub fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Writes an [`agent_config`] without `server` keys to `dir/config.toml`, where
/// `run --config` reads it; that path.
pub fn write_agent_config(
    dir: &Path,
    port: u16,
    grpc_port: Option<u16>,
    spool: &Path,
    rest: &str,
) -> PathBuf {
    let config = dir.join("config.toml");
    std::fs::write(&config, agent_config(port, grpc_port, "", spool, rest))
        .unwrap_or_else(|e| panic!("writing {}: {e}", config.display()));
    config
}

/// POSTs an OTLP/HTTP protobuf `body` to `url` with `http`. An error is the caller's to count:
/// a sender that outlives agents sees one whenever the agent is down or killed mid-request.
pub async fn try_post(
    http: &reqwest::Client,
    url: &str,
    body: Vec<u8>,
) -> reqwest::Result<reqwest::Response> {
    http.post(url)
        .header(super::PROTOBUF.0, super::PROTOBUF.1)
        .body(body)
        .send()
        .await
}

/// A field of `/proc/<pid>/status` in kB (`VmRSS`, `VmHWM`); `pid` may be `"self"`.
pub fn proc_status_kb(pid: &str, field: &str) -> u64 {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {path} (is the process still running?): {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in {path}"))
}

impl AgentProcess {
    /// Spawns `command` (stderr appended to `log`) and returns once `GET /healthz` on `port`
    /// answers 200.
    pub async fn start(command: Command, port: u16, log: &Path) -> AgentProcess {
        Self::try_start(command, port, log, true)
            .await
            .unwrap_or_else(|status| {
                panic!(
                    "the agent exited at startup ({status}); log:\n{}",
                    std::fs::read_to_string(log).unwrap_or_default()
                )
            })
    }

    /// [`Self::start`], retrying a start that exits at once: after a SIGKILL the port or the
    /// spool lock may not be free yet. Gives up after 20 s.
    pub async fn start_retrying(
        command: impl Fn() -> Command,
        port: u16,
        log: &Path,
    ) -> AgentProcess {
        Self::start_retrying_until(command, port, log, true).await
    }

    /// [`Self::start_retrying`], returning once `/healthz` answers at all when `healthy` is
    /// false: an agent whose spool failed answers 503 and may stay so (tests/power_cut.rs).
    pub async fn start_retrying_until(
        command: impl Fn() -> Command,
        port: u16,
        log: &Path,
        healthy: bool,
    ) -> AgentProcess {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut early_exits = 0;
        loop {
            match Self::try_start(command(), port, log, healthy).await {
                Ok(agent) => return agent,
                Err(status) => {
                    early_exits += 1;
                    assert!(
                        Instant::now() < deadline,
                        "the agent kept exiting at startup ({early_exits} times, last {status}); log:\n{}",
                        std::fs::read_to_string(log).unwrap_or_default()
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// [`Self::start`] (any answer counts unless `healthy`), or the exit status of a process
    /// that exited before it answered.
    async fn try_start(
        mut command: Command,
        port: u16,
        log: &Path,
        healthy: bool,
    ) -> Result<AgentProcess, std::process::ExitStatus> {
        let stderr = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("opening the agent log");
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawning otlp-spool");
        let mut agent = AgentProcess {
            child,
            port,
            log: log.to_path_buf(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .expect("building an HTTP client"),
        };
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = agent.child.try_wait() {
                return Err(status);
            }
            let up = agent
                .http
                .get(agent.url("/healthz"))
                .timeout(Duration::from_millis(500))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200 || !healthy);
            if up {
                return Ok(agent);
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the agent did not answer /healthz within 20 s; log:\n{}",
                agent.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running (not exited, or exited but not yet reaped by us).
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// A client for requests to the agent: each times out after 20 s (unless the request sets
    /// its own), so a hung agent fails the test instead of hanging it.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// POSTs an OTLP/HTTP protobuf `body` to `path` (`/v1/traces`…); returns the status.
    pub async fn post(&self, path: &str, body: Vec<u8>) -> u16 {
        let response = try_post(&self.http, &self.url(path), body)
            .await
            .unwrap_or_else(|e| panic!("posting to the agent's {path}: {e}"));
        response.status().as_u16()
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid; the child is not reaped before Drop.
        let rc = unsafe { libc::kill(self.child.id() as i32, signal) };
        assert_eq!(rc, 0, "kill({signal}) failed");
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log has `needle` at least `count` times.
    pub async fn wait_log(&self, needle: &str, count: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.log_text().matches(needle).count() < count {
            assert!(
                Instant::now() < deadline,
                "{needle:?} did not appear {count} time(s) in the agent log within {timeout:?}:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `GET /status` as JSON.
    pub async fn status(&self) -> serde_json::Value {
        let body = self
            .http
            .get(self.url("/status"))
            .send()
            .await
            .expect("agent reachable")
            .bytes()
            .await
            .unwrap();
        serde_json::from_slice(&body).expect("/status is JSON")
    }

    /// `GET /status` as JSON, or `None` if the agent does not answer within 2 s (it may have
    /// been killed, or its spool failed).
    pub async fn try_status(&self) -> Option<serde_json::Value> {
        let response = self
            .http
            .get(self.url("/status"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?;
        serde_json::from_slice(&response.bytes().await.ok()?).ok()
    }

    /// The status `GET /healthz` answers, or `None` if it does not answer.
    pub async fn healthz(&self) -> Option<u16> {
        let response = self.http.get(self.url("/healthz")).send().await.ok()?;
        Some(response.status().as_u16())
    }

    /// `GET /metrics`, the Prometheus text.
    pub async fn metrics(&self) -> String {
        self.http
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("agent reachable")
            .text()
            .await
            .unwrap()
    }

    /// Waits for the process to exit (after a signal); its exit status.
    pub fn wait(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for the agent") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the agent did not exit within {timeout:?}; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
