//! The `otlp-spool` command line: `run` (the default), `check`, `status`, `dead-letters`, `env`.
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
    ///
    /// A table per destination, fitted to the terminal's width ($COLUMNS when set); into a pipe
    /// or file nothing is wrapped, so `grep` finds whole lines. A destination in trouble ends
    /// with what to do.
    Status {
        /// The agent's OTLP/HTTP address; default: the first server.listen address of the config.
        #[arg(long, value_name = "HOST:PORT")]
        addr: Option<String>,
        /// Print the raw /status JSON.
        #[arg(long)]
        json: bool,
    },
    /// What upstreams refused for good (dead letters): list, show, send again, or remove.
    ///
    /// Asks the running agent over its local HTTP endpoint (the config's first server.listen
    /// address, or --addr; with server.auth_token when one is set). With the agent stopped, it
    /// opens the spool directory itself; the spool's lock keeps an agent from starting on it
    /// meanwhile, so there are never two writers.
    #[command(name = "dead-letters")]
    DeadLetters {
        /// The agent's OTLP/HTTP address; default: the first server.listen address of the config.
        #[arg(long, value_name = "HOST:PORT", global = true)]
        addr: Option<String>,
        #[command(subcommand)]
        command: DeadLetterCommand,
    },
    /// Print the shell exports that point a tool at this agent.
    Env {
        tool: Tool,
        #[arg(long, value_enum, default_value = "sh")]
        shell: Shell,
    },
}

#[derive(Subcommand)]
enum DeadLetterCommand {
    /// One row per dead letter, newest first: id, destination, signal, when it was received and
    /// refused (UTC), the HTTP status, items, bytes and the upstream's message.
    List {
        /// Only this destination's.
        #[arg(long, value_name = "NAME")]
        destination: Option<String>,
        /// Only this signal's.
        #[arg(long, value_parser = ["traces", "metrics", "logs"])]
        signal: Option<String>,
        /// Print the JSON document (with each letter's whole error as `reason`).
        #[arg(long)]
        json: bool,
    },
    /// One dead letter: what `list` says, the whole error, and the refused payload as OTLP/JSON
    /// (dead letters keep no request headers; credentials in URLs are masked).
    Show {
        id: u64,
        /// Print the JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Send dead letters again, after fixing what made the upstream refuse them. Each goes to
    /// the worker of its own destination and signal, before that worker's next batch. A piece
    /// refused again becomes one new dead letter; nothing is retried by itself.
    Replay {
        #[command(flatten)]
        pick: Pick,
        /// Print the JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Remove dead letters. Removing all of them, or the oldest, gives their disk back at once;
    /// one removed from among older letters gives its space back when those go.
    Purge {
        #[command(flatten)]
        pick: Pick,
        /// Print the JSON answer.
        #[arg(long)]
        json: bool,
    },
}

/// Which dead letters a replay or purge is about.
#[derive(clap::Args)]
struct Pick {
    /// Dead letter ids (from `dead-letters list`).
    #[arg(
        value_name = "ID",
        required_unless_present = "all",
        conflicts_with = "all"
    )]
    ids: Vec<u64>,
    /// Every dead letter held.
    #[arg(long)]
    all: bool,
}

impl Pick {
    fn selection(&self) -> otlp_spool::spool::Selection {
        if self.all {
            otlp_spool::spool::Selection::All
        } else {
            otlp_spool::spool::Selection::Ids(self.ids.clone())
        }
    }
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
        Command::DeadLetters { addr, command } => dead_letters(addr, command, config),
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
        if let Some(rules) = &d.redact {
            // `load` validated the table, so it compiles.
            if let Ok(redactor) = otlp_spool::redact::Redactor::new(rules) {
                for line in redactor.describe() {
                    println!("# destination {}: redact {line}", d.name);
                }
            }
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

/// Why a request to the running agent got no answer to use.
enum AgentError {
    /// Nothing listens at the address: the agent is not running (or listens elsewhere).
    NotRunning(String),
    Failed(String),
}

/// Sends `method path` (with a JSON `body`) to the agent at `addr`, with `server.auth_token` if
/// the config sets one; the answer's status and JSON document.
async fn agent_request(
    config: &Config,
    addr: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Result<(u16, serde_json::Value), AgentError> {
    let url = format!("http://{addr}{path}");
    let mut request = reqwest::Client::new()
        .request(method, &url)
        .timeout(std::time::Duration::from_secs(30));
    if let Some(token) = &config.server.auth_token {
        request = request.bearer_auth(token.expose());
    }
    if let Some(body) = body {
        request = request
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string());
    }
    let failed = |e: String| AgentError::Failed(format!("cannot get {url}: {e}"));
    let response = request.send().await.map_err(|e| {
        let text = format!("cannot get {url}: {}", otlp_spool::error::error_chain(&e));
        if e.is_connect() {
            AgentError::NotRunning(text)
        } else {
            AgentError::Failed(text)
        }
    })?;
    let code = response.status();
    let text = response.text().await.map_err(|e| failed(e.to_string()))?;
    match serde_json::from_str(&text) {
        Ok(doc) => Ok((code.as_u16(), doc)),
        Err(_) if !code.is_success() => Err(failed(format!("HTTP {code}: {text}"))),
        Err(e) => Err(failed(format!("the answer is not JSON ({e})"))),
    }
}

fn current_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("building the tokio runtime")
}

/// The width tables are fitted to: `$COLUMNS`, else the terminal's; output that is not a
/// terminal is not wrapped at all (a script grepping `status` must see whole lines).
fn output_width() -> u16 {
    if let Some(columns) = std::env::var("COLUMNS").ok().and_then(|c| c.parse().ok()) {
        return columns;
    }
    // SAFETY: `winsize` is plain data, and TIOCGWINSZ writes one into it or fails.
    let mut size: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: an ioctl on stdout's descriptor with a valid pointer to a `winsize`.
    let asked = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut size) };
    if asked == 0 && size.ws_col > 0 {
        size.ws_col
    } else {
        u16::MAX
    }
}

fn status(addr: Option<String>, json: bool, config: Option<PathBuf>) -> ExitCode {
    let (config, _) = match load(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let addr = addr.unwrap_or_else(|| local_http_addr(&config).to_string());
    let fetched = current_thread_runtime().block_on(agent_request(
        &config,
        &addr,
        reqwest::Method::GET,
        "/status",
        None,
    ));
    let doc = match fetched {
        Ok((200, doc)) => doc,
        Ok((code, doc)) => {
            eprintln!("otlp-spool: http://{addr}/status answered {code}: {doc}");
            return ExitCode::from(1);
        }
        Err(AgentError::NotRunning(e) | AgentError::Failed(e)) => {
            eprintln!("otlp-spool: {e}\nIs the agent running? Start it with `otlp-spool run`, or pass --addr HOST:PORT.");
            return ExitCode::from(1);
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&doc).expect("json"));
    } else {
        print!("{}", otlp_spool::tables::status(&doc, output_width()));
    }
    ExitCode::SUCCESS
}

fn dead_letters(
    addr: Option<String>,
    command: DeadLetterCommand,
    config: Option<PathBuf>,
) -> ExitCode {
    let (config, _) = match load(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let addr = addr.unwrap_or_else(|| local_http_addr(&config).to_string());
    let (method, path, body) = match &command {
        DeadLetterCommand::List { .. } => (reqwest::Method::GET, "/dead-letters".to_string(), None),
        DeadLetterCommand::Show { id, .. } => {
            (reqwest::Method::GET, format!("/dead-letters/{id}"), None)
        }
        DeadLetterCommand::Replay { pick, .. } => (
            reqwest::Method::POST,
            "/dead-letters/replay".into(),
            Some(otlp_spool::dead_letters::selection_body(&pick.selection())),
        ),
        DeadLetterCommand::Purge { pick, .. } => (
            reqwest::Method::POST,
            "/dead-letters/purge".into(),
            Some(otlp_spool::dead_letters::selection_body(&pick.selection())),
        ),
    };
    let runtime = current_thread_runtime();
    let answered = runtime.block_on(async {
        match agent_request(&config, &addr, method.clone(), &path, body.as_ref()).await {
            Ok(answer) => Ok((answer, true)),
            Err(AgentError::Failed(e)) => Err(e),
            // With the agent stopped, the same answer from the spool itself.
            Err(AgentError::NotRunning(_)) => {
                let spool = open_stopped_spool(&config, &addr)?;
                let body = body.map(|b| b.to_string()).unwrap_or_default();
                let answer = otlp_spool::dead_letters::serve(
                    &spool,
                    method.as_str(),
                    &path,
                    body.as_bytes(),
                )
                .await;
                Ok((answer, false))
            }
        }
    });
    let ((code, doc), running) = match answered {
        Ok(answered) => answered,
        Err(e) => {
            eprintln!("otlp-spool: {e}");
            return ExitCode::from(1);
        }
    };
    if code != 200 {
        let error = doc["error"]
            .as_str()
            .map_or(doc.to_string(), str::to_string);
        eprintln!("otlp-spool: {error}");
        return ExitCode::from(1);
    }
    print_dead_letters(&command, doc, running)
}

/// The spool of a stopped agent, opened as the agent would open it (the spool's lock keeps an
/// agent from starting on it meanwhile).
fn open_stopped_spool(config: &Config, addr: &str) -> Result<otlp_spool::spool::Spool, String> {
    use otlp_spool::spool::{Limits, OpenError, Spool};
    let dir = &config.spool.dir;
    if !dir.exists() {
        return Err(format!(
            "no agent answers at {addr}, and there is no spool at {}: nothing was dead-lettered \
             here (pass --addr HOST:PORT if the agent listens elsewhere)",
            dir.display()
        ));
    }
    Spool::open(dir, Limits::from(&config.spool), otlp_spool::routes(config)).map_err(|e| match e {
        OpenError::Locked(_) => format!(
            "the spool at {} is in use by an agent that does not answer at {addr}: pass --addr \
             with the address it listens on",
            dir.display()
        ),
        e => e.to_string(),
    })
}

/// Prints a dead-letter command's answer (`running`: the agent's, else the spool's own).
fn print_dead_letters(
    command: &DeadLetterCommand,
    mut doc: serde_json::Value,
    running: bool,
) -> ExitCode {
    let print_json = |doc: &serde_json::Value| {
        println!("{}", serde_json::to_string_pretty(doc).expect("json"));
    };
    let ids = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .map(|id| id.to_string())
            .collect()
    };
    match command {
        DeadLetterCommand::List {
            destination,
            signal,
            json,
        } => {
            if let Some(letters) = doc["dead_letters"].as_array_mut() {
                letters.retain(|l| {
                    destination
                        .as_ref()
                        .is_none_or(|d| l["destination"] == d.as_str())
                        && signal.as_ref().is_none_or(|s| l["signal"] == s.as_str())
                });
            }
            if *json {
                print_json(&doc);
                return ExitCode::SUCCESS;
            }
            let letters = doc["dead_letters"].as_array().cloned().unwrap_or_default();
            if letters.is_empty() {
                println!("no dead letters");
            } else {
                print!(
                    "{}",
                    otlp_spool::tables::dead_letters(&letters, output_width())
                );
            }
            if let Some(capped) = doc["capped_records"].as_u64().filter(|&n| n > 0) {
                println!(
                    "the dead-letter bound (spool.max_bytes / 16) deleted {capped} older letters \
                     ({} items) before they were purged or replayed",
                    doc["capped_items"]
                );
            }
            ExitCode::SUCCESS
        }
        DeadLetterCommand::Show { json: true, .. } => {
            print_json(&doc);
            ExitCode::SUCCESS
        }
        DeadLetterCommand::Show { .. } => {
            print!("{}", otlp_spool::tables::dead_letter(&doc));
            ExitCode::SUCCESS
        }
        DeadLetterCommand::Replay { json, .. } => {
            if *json {
                print_json(&doc);
            } else {
                let replayed = ids(&doc["replayed"]);
                let when = if running {
                    "their destinations' workers send them now (see `otlp-spool status`)"
                } else {
                    "the agent is not running: they are sent when it starts"
                };
                println!("replaying {} dead letters: {when}", replayed.len());
            }
            let unknown = ids(&doc["unknown"]);
            let not_routed = ids(&doc["not_routed"]);
            if !unknown.is_empty() {
                eprintln!(
                    "otlp-spool: no dead letter {} (purged, replayed, pushed out by the bound, or \
                     never there)",
                    unknown.join(", ")
                );
            }
            if !not_routed.is_empty() {
                eprintln!(
                    "otlp-spool: not replayed: {}: their destination no longer sends their \
                     signal (add it back to the config, or purge them)",
                    not_routed.join(", ")
                );
            }
            if unknown.is_empty() && not_routed.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        DeadLetterCommand::Purge { json, .. } => {
            if *json {
                print_json(&doc);
            } else {
                println!(
                    "purged {} dead letters ({} bytes)",
                    ids(&doc["purged"]).len(),
                    doc["bytes"]
                );
            }
            let unknown = ids(&doc["unknown"]);
            if unknown.is_empty() {
                return ExitCode::SUCCESS;
            }
            eprintln!(
                "otlp-spool: no dead letter {} (purged, replayed, pushed out by the bound, or \
                 never there)",
                unknown.join(", ")
            );
            ExitCode::from(1)
        }
    }
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
