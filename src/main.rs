//! The `otlp-spool` command line: `run` (the default), `check`, `status`, `env`.
//!
//! Thin: it parses arguments, resolves the config, sets up logging, and calls the library.
//! Exit codes: 0 success, 1 runtime failure, 2 bad configuration or usage.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use otlp_spool::config::{Config, Source};
use otlp_spool::Agent;

#[derive(Parser)]
#[command(
    name = "otlp-spool",
    version,
    about = "A store-and-forward OpenTelemetry agent: one local OTLP endpoint, a durable spool, forwarding with retries."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// The config file; else $OTLP_SPOOL_CONFIG, the user config file, /etc/otlp-spool/config.toml, or the embedded defaults.
    #[arg(long, value_name = "FILE", global = true)]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent (the default).
    Run {
        /// Log format; also OTLP_SPOOL_LOG_FORMAT. The level filter is OTLP_SPOOL_LOG (like RUST_LOG).
        #[arg(long, value_enum)]
        log_format: Option<LogFormat>,
    },
    /// Validate the config and print it resolved, secrets masked.
    Check,
    /// Show the running agent's spool and per-destination state.
    Status {
        /// The agent's OTLP/HTTP address; default: the first server.listen address of the config.
        #[arg(long, value_name = "HOST:PORT")]
        addr: Option<String>,
        /// Print the raw /status JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the shell exports that point a tool at this agent.
    Env {
        tool: Tool,
        #[arg(long, value_enum, default_value = "sh")]
        shell: Shell,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum Tool {
    ClaudeCode,
    Copilot,
    Gemini,
    Otel,
}

#[derive(Clone, Copy, ValueEnum)]
enum Shell {
    Sh,
    Fish,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = cli.config;
    let command = cli.command.unwrap_or(Command::Run { log_format: None });
    if !matches!(command, Command::Run { .. }) {
        // A reporting command piped into `head` should end quietly, as Unix tools do, rather
        // than panic on a closed stdout (Rust ignores SIGPIPE by default).
        // SAFETY: restoring a signal's default disposition before any thread is started.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    match command {
        Command::Run { log_format } => run(config, log_format),
        Command::Check => check(config),
        Command::Status { addr, json } => status(addr, json, config),
        Command::Env { tool, shell } => env(tool, shell, config),
    }
}

fn load(config: Option<PathBuf>) -> Result<(Config, Source), ExitCode> {
    Config::resolve(config.as_deref()).map_err(|e| {
        eprintln!("otlp-spool: {e}");
        ExitCode::from(2)
    })
}

fn exposure_warning(config: &Config, source: &Source) -> Option<String> {
    match source {
        Source::File(path) => config.exposure_warning(path),
        Source::Defaults => None,
    }
}

fn init_logging(format: Option<LogFormat>) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("OTLP_SPOOL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json = match format {
        Some(f) => matches!(f, LogFormat::Json),
        None => {
            std::env::var("OTLP_SPOOL_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"))
        }
    };
    // Colours only for a person at a terminal: journald and log files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn run(explicit: Option<PathBuf>, log_format: Option<LogFormat>) -> ExitCode {
    init_logging(log_format);
    let (config, source) = match load(explicit.clone()) {
        Ok(c) => c,
        Err(code) => return code,
    };
    tracing::info!(config = %source, version = env!("CARGO_PKG_VERSION"), "starting");
    if let Some(warning) = exposure_warning(&config, &source) {
        tracing::warn!("{warning}");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("building the tokio runtime");
    runtime.block_on(async {
        let mut agent = match Agent::start(config).await {
            Ok(a) => a,
            Err(e) => {
                eprintln!("otlp-spool: {e}");
                return ExitCode::from(1);
            }
        };
        serve_until_stopped(&mut agent, explicit.as_deref()).await;
        tracing::info!("stopping: finishing in-flight requests and flushing the spool");
        agent.shutdown().await;
        ExitCode::SUCCESS
    })
}

/// Waits for SIGTERM or Ctrl-C, reloading the config on every SIGHUP meanwhile. The config is
/// found again the way it was at start (`--config`, `$OTLP_SPOOL_CONFIG`, the search path); a
/// config that does not load is reported and the running one kept.
async fn serve_until_stopped(agent: &mut Agent, explicit: Option<&Path>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    let mut hangup = signal(SignalKind::hangup()).expect("installing the SIGHUP handler");
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return,
            _ = term.recv() => return,
            _ = hangup.recv() => {}
        }
        tracing::info!("SIGHUP: reloading the config");
        let (config, source) = match Config::resolve(explicit) {
            Ok(loaded) => loaded,
            Err(e) => {
                tracing::error!("reload failed, keeping the running config: {e}");
                continue;
            }
        };
        if let Some(warning) = exposure_warning(&config, &source) {
            tracing::warn!("{warning}");
        }
        if let Err(e) = agent.reload(config).await {
            tracing::error!("reload failed, keeping the running config: {e}");
        }
    }
}

fn check(config: Option<PathBuf>) -> ExitCode {
    let (config, source) = match load(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if let Some(warning) = exposure_warning(&config, &source) {
        eprintln!("otlp-spool: warning: {warning}");
    }
    println!("# config: {source}");
    println!("# spool directory: {}", config.spool.dir.display());
    println!(
        "# logs: stderr (systemd: journalctl [--user] -u otlp-spool; brew services: \
         $(brew --prefix)/var/log/otlp-spool.log; LaunchAgent: ~/Library/Logs/otlp-spool.log)"
    );
    if config.destinations.is_empty() {
        println!("# no destination: received data is held in the spool until one is added");
    }
    for d in &config.destinations {
        // Read from the environment and the AWS config files only; nothing contacts AWS.
        if let Some(source) = otlp_spool::aws::credentials::describe(d) {
            println!("# destination {}: credentials from {}", d.name, source.text);
        }
    }
    print!("{}", config.to_masked_toml());
    ExitCode::SUCCESS
}

/// The address a local client should use: the first configured OTLP/HTTP address, with an
/// unspecified IP replaced by the loopback of its family (0.0.0.0 by 127.0.0.1, :: by ::1).
fn local_http_addr(config: &Config) -> SocketAddr {
    let first = config.server.listen.0.first().copied();
    local_addr(first.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 4318))))
}

/// `addr` as a local client should dial it: an unspecified IP (0.0.0.0, ::) becomes loopback.
fn local_addr(mut addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => addr.set_ip(Ipv4Addr::LOCALHOST.into()),
        IpAddr::V6(ip) if ip.is_unspecified() => addr.set_ip(Ipv6Addr::LOCALHOST.into()),
        _ => {}
    }
    addr
}

fn status(addr: Option<String>, json: bool, config: Option<PathBuf>) -> ExitCode {
    let (config, _) = match load(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let addr = addr.unwrap_or_else(|| local_http_addr(&config).to_string());
    let url = format!("http://{addr}/status");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let fetched = runtime.block_on(async {
        let mut request = reqwest::Client::new()
            .get(&url)
            .timeout(std::time::Duration::from_secs(5));
        if let Some(token) = &config.server.auth_token {
            request = request.bearer_auth(token.expose());
        }
        let response = request.send().await.map_err(|e| e.to_string())?;
        let code = response.status();
        let body = response.text().await.map_err(|e| e.to_string())?;
        if !code.is_success() {
            return Err(format!("HTTP {code}: {body}"));
        }
        Ok(body)
    });
    let body = match fetched {
        Ok(b) => b,
        Err(e) => {
            eprintln!("otlp-spool: cannot get {url}: {e}\nIs the agent running? Start it with `otlp-spool run`, or pass --addr HOST:PORT.");
            return ExitCode::from(1);
        }
    };
    if json {
        println!("{body}");
        return ExitCode::SUCCESS;
    }
    match serde_json::from_str::<serde_json::Value>(&body) {
        Ok(v) => {
            print!("{}", render_status(&v));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("otlp-spool: {url} did not answer JSON ({e})");
            ExitCode::from(1)
        }
    }
}

fn render_status(v: &serde_json::Value) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let s = &v["spool"];
    let mib = |x: &serde_json::Value| x.as_f64().unwrap_or(0.0) / (1 << 20) as f64;
    let _ = writeln!(
        out,
        "otlp-spool {}  up {}s",
        v["version"].as_str().unwrap_or("?"),
        v["uptime_seconds"]
    );
    let _ = writeln!(
        out,
        "spool {}: {} records, {:.1} MiB of {:.0} MiB (on disk {:.1} MiB), dead letters {}",
        s["dir"].as_str().unwrap_or("?"),
        s["records"],
        mib(&s["bytes"]),
        mib(&s["max_bytes"]),
        mib(&s["disk_bytes"]),
        s["dead_letter_records"]
    );
    let streams: Vec<String> = ["traces", "metrics", "logs", "dead_letter"]
        .iter()
        .map(|name| {
            let st = &s["streams"][name];
            format!(
                "{name} {} segments {:.1} MiB",
                st["segments"],
                mib(&st["disk_bytes"])
            )
        })
        .collect();
    let _ = writeln!(out, "spool files: {}", streams.join(", "));
    if let Some(damaged) = s["damaged_records"].as_u64().filter(|&n| n > 0) {
        let _ = writeln!(
            out,
            "SPOOL DAMAGE: {damaged} damaged records skipped (their data is lost; the rest is \
             delivered); check the disk"
        );
    }
    if let Some(error) = s["storage_error"].as_str() {
        let _ = writeln!(
            out,
            "STORAGE FAILING: {error}; refusing new data (503) until the spool reopens by itself"
        );
    }
    if let Some(aside) = s["quarantined"].as_str() {
        let _ = writeln!(
            out,
            "CORRUPT SPOOL moved aside at this start, to {aside} (not read again: keep it for a \
             bug report, then delete it)"
        );
    }
    let t = &s["truncated"];
    if t.is_object() {
        let _ = writeln!(
            out,
            "SPOOL LOST WRITES before this start (log truncated or damaged): sequences after {} \
             up to {} that were not yet delivered are gone",
            t["found_seq"], t["expected_seq"]
        );
    }
    let r = &v["received"];
    let _ = writeln!(
        out,
        "received items: traces {}  metrics {}  logs {}",
        r["traces"]["items"], r["metrics"]["items"], r["logs"]["items"]
    );
    let d = &v["dropped"];
    let _ = writeln!(
        out,
        "dropped items: full {}  expired {}  dead-lettered {}",
        d["full_items"], d["expired_items"], d["dead_letter_items"]
    );
    if let Some(holding) = v["holding"].as_str() {
        let _ = writeln!(out, "\n{holding}");
    }
    for dest in v["destinations"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "\ndestination {} ({}) {}",
            dest["name"].as_str().unwrap_or("?"),
            dest["type"].as_str().unwrap_or("?"),
            dest["endpoint"].as_str().unwrap_or("")
        );
        let _ = writeln!(
            out,
            "  {:<8} {:>9} {:>11} {:>10} {:>10}  {:<10} last error",
            "signal", "pending", "oldest age", "sent", "attempts", "state"
        );
        for (signal, w) in dest["signals"].as_object().into_iter().flatten() {
            let age = w["oldest_pending_age_seconds"]
                .as_f64()
                .map_or("-".to_string(), |a| format!("{a:.0}s"));
            let state = match w["retry"]
                .as_object()
                .and_then(|o| o.keys().next().cloned())
            {
                Some(k) => k,
                None => w["retry"].as_str().unwrap_or("ready").to_string(),
            };
            let _ = writeln!(
                out,
                "  {:<8} {:>9} {:>11} {:>10} {:>10}  {:<10} {}",
                signal,
                w["pending_records"],
                age,
                w["sent_items"],
                w["attempts"],
                state,
                w["last_error"].as_str().unwrap_or("-")
            );
        }
    }
    out
}

fn env(tool: Tool, shell: Shell, config: Option<PathBuf>) -> ExitCode {
    let (config, _) = match load(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let endpoint = format!("http://{}", local_http_addr(&config));
    let token = config
        .server
        .auth_token
        .as_ref()
        .map(|t| t.expose().to_string());
    let mut vars: Vec<(&str, String)> = Vec::new();
    // The OTel spec's header list is W3C-baggage-like: values are percent-decoded by the SDKs.
    let otel_headers = token.as_ref().map(|t| {
        (
            "OTEL_EXPORTER_OTLP_HEADERS",
            format!("x-api-key={}", percent_encode(t)),
        )
    });
    match tool {
        Tool::ClaudeCode => {
            vars.push(("CLAUDE_CODE_ENABLE_TELEMETRY", "1".into()));
            vars.push(("OTEL_METRICS_EXPORTER", "otlp".into()));
            vars.push(("OTEL_LOGS_EXPORTER", "otlp".into()));
            vars.push(("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".into()));
            vars.push(("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint));
            vars.extend(otel_headers);
        }
        Tool::Copilot => {
            vars.push(("COPILOT_OTEL_ENABLED", "true".into()));
            vars.push(("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".into()));
            vars.push(("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint));
            vars.extend(otel_headers);
        }
        Tool::Gemini => {
            vars.push(("GEMINI_TELEMETRY_ENABLED", "true".into()));
            vars.push(("GEMINI_TELEMETRY_TARGET", "local".into()));
            // Gemini's own default, gRPC to localhost:4317, is what the agent serves by default;
            // over HTTP Gemini can only send OTLP/JSON, so gRPC is preferred when enabled.
            match config.server.grpc_listen.0.first() {
                Some(&grpc) => {
                    vars.push(("GEMINI_TELEMETRY_OTLP_PROTOCOL", "grpc".into()));
                    let grpc_endpoint = format!("http://{}", local_addr(grpc));
                    vars.push(("GEMINI_TELEMETRY_OTLP_ENDPOINT", grpc_endpoint));
                }
                None => {
                    vars.push(("GEMINI_TELEMETRY_OTLP_PROTOCOL", "http".into()));
                    vars.push(("GEMINI_TELEMETRY_OTLP_ENDPOINT", endpoint));
                }
            }
        }
        Tool::Otel => {
            vars.push(("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".into()));
            vars.push(("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint));
            vars.extend(otel_headers);
        }
    }
    if matches!(tool, Tool::Gemini) && token.is_some() {
        println!("# note: Gemini CLI cannot send custom headers; with server.auth_token set its data is refused (401)");
    }
    for (name, value) in vars {
        match shell {
            Shell::Sh => println!("export {name}={}", sh_quote(&value)),
            Shell::Fish => println!("set -gx {name} {}", fish_quote(&value)),
        }
    }
    ExitCode::SUCCESS
}

/// A POSIX shell single-quoted word: `'` is written as `'\''`.
fn sh_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// A fish single-quoted word: inside, only `\\` and `\'` are escapes.
fn fish_quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', r"\\").replace('\'', r"\'"))
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn percent_encode(value: &str) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}
