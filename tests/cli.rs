//! The `otlp-spool` binary as a user runs it: `--version`, `check` (resolved config, masked
//! secrets, precise errors), config resolution, `env` output for each tool and shell, `run` on the
//! embedded defaults (both loopbacks, gRPC, `/healthz`, spool directory 0700, `status`, SIGTERM),
//! and `run` on a port that is taken.
//!
//! Every command runs in a sandbox: `HOME`, `XDG_CONFIG_HOME` and `XDG_STATE_HOME` point into a
//! temporary directory, and `OTLP_SPOOL_CONFIG` / `STATE_DIRECTORY` are removed, so the user's
//! real config and spool are never read or written. Network use is 127.0.0.1 and [::1] only.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_otlp-spool");

/// A temporary HOME with its own XDG config and state directories.
struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Sandbox {
        let dir = tempfile::tempdir().expect("tempdir");
        Sandbox { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn config_home(&self) -> PathBuf {
        self.path().join("config")
    }

    fn state_home(&self) -> PathBuf {
        self.path().join("state")
    }

    /// The command with the sandbox's environment and nothing of the user's config.
    fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .current_dir(self.path())
            .env("HOME", self.path())
            .env("XDG_CONFIG_HOME", self.config_home())
            .env("XDG_STATE_HOME", self.state_home())
            .env("OTLP_SPOOL_LOG", "info")
            .env_remove("OTLP_SPOOL_CONFIG")
            .env_remove("OTLP_SPOOL_LOG_FORMAT")
            .env_remove("STATE_DIRECTORY")
            .env_remove("OTLP_API_KEY")
            .env_remove("OTLP_SPOOL_TOKEN")
            .env_remove("COLUMNS")
            .stdin(Stdio::null());
        cmd
    }

    fn run(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = self.cmd(args);
        cmd.envs(env.iter().copied());
        cmd.output().expect("running otlp-spool")
    }

    /// Writes `text` to `name` (relative to the sandbox, parents created); returns the path.
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        path
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

use support::process::{describe_output as show, stdout};

/// Kills the child if a test fails before it stopped on its own.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

impl Running {
    /// Waits up to `timeout` for the process to exit; `None` if it is still running.
    fn wait_for(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.0.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stderr(&mut self) -> String {
        let mut text = String::new();
        if let Some(mut e) = self.0.stderr.take() {
            let _ = e.read_to_string(&mut text);
        }
        text
    }
}

/// A plain HTTP/1.1 GET: the status code and body, or the connection error.
fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(1)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let code = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not an HTTP response: {text:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    Ok((code, body))
}

// ---------------------------------------------------------------------------------------------
// 1. --version

#[test]
fn version_prints_name_and_version() {
    let sb = Sandbox::new();
    let out = sb.run(&["--version"], &[]);
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(stdout(&out), "otlp-spool 0.1.0\n");
    assert_eq!(
        env!("CARGO_PKG_VERSION"),
        "0.1.0",
        "update this test with the version"
    );
}

// ---------------------------------------------------------------------------------------------
// 2. check: the resolved config, secrets masked

#[test]
fn check_prints_the_resolved_example_config() {
    let sb = Sandbox::new();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.toml");
    let out = sb.run(&["check", "--config", example.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", show(&out));
    let text = stdout(&out);
    let spool = sb.state_home().join("otlp-spool");
    for want in [
        format!("# config: {}\n", example.display()),
        format!("# spool directory: {}\n", spool.display()),
        "# no destination: received data is held in the spool until one is added\n".into(),
        "[server]\nlisten = [\n    \"127.0.0.1:4318\",\n    \"[::1]:4318\",\n]\n".into(),
        "grpc_listen = [\n    \"127.0.0.1:4317\",\n    \"[::1]:4317\",\n]\n".into(),
        "max_body = \"16MiB\"\nmax_decompressed = \"64MiB\"\n".into(),
        format!("[spool]\ndir = \"{}\"\n", spool.display()),
        "max_bytes = \"1GiB\"\n".into(),
        "when_full = \"drop_oldest\"\n".into(),
    ] {
        assert!(text.contains(&want), "missing {want:?} in:\n{text}");
    }
    assert!(!text.contains("[[destination]]"), "{text}");

    // What check prints is itself a valid config that resolves to the same thing.
    let printed = sb.write("printed.toml", &text);
    let again = sb.run(&["check", "--config", printed.to_str().unwrap()], &[]);
    assert!(again.status.success(), "{}", show(&again));
    let body = |t: &str| t.lines().skip(1).collect::<Vec<_>>().join("\n");
    assert_eq!(body(&stdout(&again)), body(&text));
}

#[test]
fn check_masks_secrets() {
    let sb = Sandbox::new();
    let config = sb.write(
        "secret.toml",
        r#"[server]
listen = "127.0.0.1:4318"
auth_token = "tok-Zq81-literal"

[[destination]]
name = "apigw"
type = "otlp_http"
endpoint = "https://user:pw-Zq83@collector.example.com/prod"
headers = { "x-api-key" = "${OTLP_API_KEY}", "x-other" = "hdr-Zq82-literal" }
"#,
    );
    let out = sb.run(
        &["check", "--config", config.to_str().unwrap()],
        &[("OTLP_API_KEY", "key-Zq80-from-env")],
    );
    assert!(out.status.success(), "{}", show(&out));
    let text = stdout(&out);
    for secret in ["Zq80", "Zq81", "Zq82", "Zq83"] {
        assert!(!text.contains(secret), "secret {secret} printed:\n{text}");
        assert!(!stderr(&out).contains(secret), "{}", show(&out));
    }
    for want in [
        "auth_token = \"***\"",
        "x-api-key = \"***\"",
        "x-other = \"***\"",
        "endpoint = \"https://***@collector.example.com/prod\"",
        "name = \"apigw\"",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }

    // The file holds secrets of its own and others may read it: a warning that names the keys
    // written in the file (not x-api-key, which comes from the environment) and the fix.
    let run = |mode| {
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(mode)).unwrap();
        sb.run(
            &["check", "--config", config.to_str().unwrap()],
            &[("OTLP_API_KEY", "key-Zq80-from-env")],
        )
    };
    let out = run(0o644);
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(
        stderr(&out),
        format!(
            "otlp-spool: warning: config {path} holds secrets (server.auth_token, destination \
             \"apigw\" endpoint credentials, destination \"apigw\" headers.x-other) and other \
             users of this machine can read it (mode 0644); run `chmod 600 {path}`, or write \
             them as ${{VAR}} references and set the variables in the agent's environment\n",
            path = config.display()
        )
    );
    let out = run(0o600);
    assert_eq!(stderr(&out), "", "an owner-only file: no warning");

    // Only references to the environment: nothing to protect in the file.
    let referenced = sb.write(
        "referenced.toml",
        "[server]\nauth_token = \"${OTLP_API_KEY}\"\n[[destination]]\nname = \"a\"\ntype = \"otlp_http\"\nendpoint = \"http://127.0.0.1:1\"\nheaders = { authorization = \"Bearer ${OTLP_API_KEY}\" }\n",
    );
    std::fs::set_permissions(&referenced, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = sb.run(
        &["check", "--config", referenced.to_str().unwrap()],
        &[("OTLP_API_KEY", "k")],
    );
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(stderr(&out), "", "{}", show(&out));
}

// ---------------------------------------------------------------------------------------------
// 3. check: errors name the file, the line, the key and the reason; exit code 2

#[test]
fn check_errors_are_precise() {
    let sb = Sandbox::new();
    let one =
        "[[destination]]\nname = \"a\"\ntype = \"otlp_http\"\nendpoint = \"http://127.0.0.1:1\"\n";
    // (file name, contents, expected line, expected fragments of the message)
    let cases: &[(&str, String, &str, &[&str])] = &[
        (
            "unknown-key.toml",
            "[server]\nlisten = \"127.0.0.1:4318\"\nlisen = \"127.0.0.1:4319\"\n".into(),
            "line 3, column 1",
            &["key server.lisen", "unknown field `lisen`", "expected one of `listen`", "remove it or correct its spelling"],
        ),
        (
            "bad-size.toml",
            "# sizes\n[spool]\nmax_bytes = \"12 parsecs\"\n".into(),
            "line 3, column 13",
            &["key spool.max_bytes", "invalid size \"12 parsecs\"", "unknown unit \"parsecs\"", "MiB"],
        ),
        (
            "bad-duration.toml",
            format!("{one}retry = {{ initial = \"1s\", max = \"soon\" }}\n"),
            "line 5, column 33",
            &["key destination.retry.max", "invalid duration \"soon\"", "such as \"500ms\""],
        ),
        (
            "unset-var.toml",
            "[[destination]]\nname = \"a\"\ntype = \"otlp_http\"\nendpoint = \"http://${OTLP_SPOOL_CLI_TEST_UNSET}\"\n".into(),
            "line 4, column 12",
            &["key destination.endpoint", "environment variable OTLP_SPOOL_CLI_TEST_UNSET is not set", "set it in the agent's environment"],
        ),
        (
            "duplicate.toml",
            format!("[server]\nlisten = \"127.0.0.1:4318\"\n\n{one}\n{one}"),
            "line 10, column 8",
            &["key destination.name", "two destinations are named \"a\"", "the other one is at line 5", "needs its own name"],
        ),
        (
            "remote.toml",
            "[server]\nlisten = [\"127.0.0.1:4318\", \"0.0.0.0:4318\"]\ngrpc_listen = \"\"\n".into(),
            "line 2, column 10",
            &["key server.listen", "0.0.0.0:4318 is reachable from other machines", "server.auth_token", "listen on 127.0.0.1"],
        ),
        (
            "remote-with-token.toml",
            "[server]\nauth_token = \"t\"\nlisten = \"[::]:4318\"\n".into(),
            "line 3, column 10",
            &["key server.listen", "needs server.allow_remote = true and server.auth_token"],
        ),
        (
            "remote-without-token.toml",
            "[server]\nallow_remote = true\nlisten = \"0.0.0.0:4318\"\n".into(),
            "line 2, column 1",
            &["key server.allow_remote", "needs server.auth_token set"],
        ),
        (
            "remote-short-token.toml",
            "[server]\nallow_remote = true\nauth_token = \"s3cret\"\nlisten = \"0.0.0.0:4318\"\n".into(),
            "line 2, column 1",
            &["key server.allow_remote", "at least 16 characters"],
        ),
        (
            "empty-token.toml",
            "[server]\nauth_token = \"\"\n".into(),
            "line 2, column 1",
            &["key server.auth_token", "auth_token is empty"],
        ),
        (
            "remote-grpc.toml",
            "[server]\ngrpc_listen = \"[::]:4317\"\n".into(),
            "line 2, column 15",
            &["key server.grpc_listen", "[::]:4317 is reachable from other machines", "server.auth_token"],
        ),
    ];
    for (name, text, line, fragments) in cases {
        let path = sb.write(name, text);
        let out = sb.run(&["check", "--config", path.to_str().unwrap()], &[]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{name}: {}", show(&out));
        assert_eq!(stdout(&out), "", "{name}: nothing is printed as if valid");
        assert!(
            err.starts_with(&format!(
                "otlp-spool: invalid config {}, {line}",
                path.display()
            )),
            "{name}: want file and {line}: {err}"
        );
        for f in *fragments {
            assert!(err.contains(f), "{name}: want {f:?} in: {err}");
        }
        assert_eq!(err.lines().count(), 1, "{name}: one line: {err}");
        // `run` refuses the same file the same way, before it opens anything.
        if *name == "remote.toml" {
            let run = sb.run(&["run", "--config", path.to_str().unwrap()], &[]);
            assert_eq!(run.status.code(), Some(2), "{}", show(&run));
            assert!(stderr(&run).contains(err.trim()), "{}", show(&run));
            assert!(
                !sb.state_home().exists(),
                "run created the spool for a bad config"
            );
        }
    }

    let missing = sb.path().join("no-such-config.toml");
    let out = sb.run(&["check", "--config", missing.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert_eq!(
        stderr(&out),
        format!(
            "otlp-spool: cannot read config file {} (given with --config): No such file or directory (os error 2); check the path\n",
            missing.display()
        )
    );

    // A usage error is also 2.
    let out = sb.run(&["env", "vim"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(
        stderr(&out).contains("invalid value 'vim'"),
        "{}",
        show(&out)
    );
}

// ---------------------------------------------------------------------------------------------
// 4. config resolution: --config, $OTLP_SPOOL_CONFIG, the user config path, embedded defaults

#[test]
fn config_resolution_order() {
    let sb = Sandbox::new();
    let cfg = |max: &str| format!("[spool]\nmax_bytes = \"{max}\"\n");
    let explicit = sb.write("explicit.toml", &cfg("2MiB"));
    let from_env = sb.write("from-env.toml", &cfg("3MiB"));
    let xdg = sb.write("config/otlp-spool/config.toml", &cfg("4MiB"));
    let check = |args: &[&str], env: &[(&str, &str)]| {
        let out = sb.run(args, env);
        assert!(out.status.success(), "{}", show(&out));
        stdout(&out)
    };
    let header = |p: &Path| format!("# config: {}\n", p.display());
    let env_var = [("OTLP_SPOOL_CONFIG", from_env.to_str().unwrap())];

    let out = check(&["check", "--config", explicit.to_str().unwrap()], &env_var);
    assert!(
        out.starts_with(&header(&explicit)) && out.contains("max_bytes = \"2MiB\""),
        "{out}"
    );

    let out = check(&["check"], &env_var);
    assert!(
        out.starts_with(&header(&from_env)) && out.contains("max_bytes = \"3MiB\""),
        "{out}"
    );

    // An empty $OTLP_SPOOL_CONFIG counts as unset.
    for env in [&[][..], &[("OTLP_SPOOL_CONFIG", "")][..]] {
        let out = check(&["check"], env);
        assert!(
            out.starts_with(&header(&xdg)) && out.contains("max_bytes = \"4MiB\""),
            "{out}"
        );
    }

    // ~/.config is searched too when XDG_CONFIG_HOME points elsewhere.
    std::fs::remove_file(&xdg).unwrap();
    let dot_config = sb.write(".config/otlp-spool/config.toml", &cfg("5MiB"));
    let out = check(&["check"], &[]);
    assert!(
        out.starts_with(&header(&dot_config)) && out.contains("max_bytes = \"5MiB\""),
        "{out}"
    );
    std::fs::remove_file(&dot_config).unwrap();

    // A file found on the search path that is invalid is an error, not a silent fallback.
    let bad = sb.write(
        "config/otlp-spool/config.toml",
        "[spool]\nmax_bytes = \"lots\"\n",
    );
    let out = sb.run(&["check"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(
        stderr(&out).contains(&format!("invalid config {}, line 2", bad.display())),
        "{}",
        show(&out)
    );
    std::fs::remove_file(&bad).unwrap();

    let etc = Path::new("/etc/otlp-spool/config.toml");
    if etc.exists() {
        println!(
            "NOTE: {} exists on this machine; not asserting the embedded defaults",
            etc.display()
        );
        return;
    }
    let out = check(&["check"], &[]);
    assert!(
        out.starts_with("# config: embedded defaults (no config file found)\n"),
        "{out}"
    );
    assert!(out.contains("max_bytes = \"1GiB\""), "{out}");
    assert!(
        out.contains(&format!(
            "dir = \"{}\"",
            sb.state_home().join("otlp-spool").display()
        )),
        "{out}"
    );
}

// ---------------------------------------------------------------------------------------------
// 5. env: exact exports per tool and shell

#[test]
fn env_prints_exact_exports() {
    let sb = Sandbox::new();
    let golden: &[(&str, &str, &str)] = &[
        (
            "claude-code",
            "sh",
            "\
export CLAUDE_CODE_ENABLE_TELEMETRY='1'
export OTEL_METRICS_EXPORTER='otlp'
export OTEL_LOGS_EXPORTER='otlp'
export OTEL_EXPORTER_OTLP_PROTOCOL='http/protobuf'
export OTEL_EXPORTER_OTLP_ENDPOINT='http://127.0.0.1:4318'
",
        ),
        (
            "claude-code",
            "fish",
            "\
set -gx CLAUDE_CODE_ENABLE_TELEMETRY '1'
set -gx OTEL_METRICS_EXPORTER 'otlp'
set -gx OTEL_LOGS_EXPORTER 'otlp'
set -gx OTEL_EXPORTER_OTLP_PROTOCOL 'http/protobuf'
set -gx OTEL_EXPORTER_OTLP_ENDPOINT 'http://127.0.0.1:4318'
",
        ),
        (
            "copilot",
            "sh",
            "\
export COPILOT_OTEL_ENABLED='true'
export OTEL_EXPORTER_OTLP_PROTOCOL='http/protobuf'
export OTEL_EXPORTER_OTLP_ENDPOINT='http://127.0.0.1:4318'
",
        ),
        (
            "copilot",
            "fish",
            "\
set -gx COPILOT_OTEL_ENABLED 'true'
set -gx OTEL_EXPORTER_OTLP_PROTOCOL 'http/protobuf'
set -gx OTEL_EXPORTER_OTLP_ENDPOINT 'http://127.0.0.1:4318'
",
        ),
        (
            "gemini",
            "sh",
            "\
export GEMINI_TELEMETRY_ENABLED='true'
export GEMINI_TELEMETRY_TARGET='local'
export GEMINI_TELEMETRY_OTLP_PROTOCOL='grpc'
export GEMINI_TELEMETRY_OTLP_ENDPOINT='http://127.0.0.1:4317'
",
        ),
        (
            "gemini",
            "fish",
            "\
set -gx GEMINI_TELEMETRY_ENABLED 'true'
set -gx GEMINI_TELEMETRY_TARGET 'local'
set -gx GEMINI_TELEMETRY_OTLP_PROTOCOL 'grpc'
set -gx GEMINI_TELEMETRY_OTLP_ENDPOINT 'http://127.0.0.1:4317'
",
        ),
        (
            "otel",
            "sh",
            "\
export OTEL_EXPORTER_OTLP_PROTOCOL='http/protobuf'
export OTEL_EXPORTER_OTLP_ENDPOINT='http://127.0.0.1:4318'
",
        ),
        (
            "otel",
            "fish",
            "\
set -gx OTEL_EXPORTER_OTLP_PROTOCOL 'http/protobuf'
set -gx OTEL_EXPORTER_OTLP_ENDPOINT 'http://127.0.0.1:4318'
",
        ),
    ];
    for (tool, shell, want) in golden {
        let out = sb.run(&["env", tool, "--shell", shell], &[]);
        assert!(out.status.success(), "{tool} {shell}: {}", show(&out));
        assert_eq!(stdout(&out), *want, "{tool} --shell {shell}");
    }
    // sh is the default shell.
    let out = sb.run(&["env", "otel"], &[]);
    assert_eq!(stdout(&out), golden[6].2);
}

#[test]
fn env_follows_listen_and_auth_token() {
    let sb = Sandbox::new();
    // A token with characters that need quoting in both shells and encoding in the header list.
    let token = r"t0k'en,x%y\z";
    let config = sb.write(
        "token.toml",
        "[server]\nlisten = [\"127.0.0.1:14318\", \"[::1]:14318\"]\ngrpc_listen = \"\"\nauth_token = \"${OTLP_SPOOL_TOKEN}\"\n",
    );
    let env = [("OTLP_SPOOL_TOKEN", token)];
    let run = |tool: &str, shell: &str| {
        let out = sb.run(
            &[
                "env",
                tool,
                "--shell",
                shell,
                "--config",
                config.to_str().unwrap(),
            ],
            &env,
        );
        assert!(out.status.success(), "{}", show(&out));
        stdout(&out)
    };
    let headers = "x-api-key=t0k%27en%2Cx%25y%5Cz";
    assert_eq!(
        run("otel", "sh"),
        format!(
            "export OTEL_EXPORTER_OTLP_PROTOCOL='http/protobuf'\n\
             export OTEL_EXPORTER_OTLP_ENDPOINT='http://127.0.0.1:14318'\n\
             export OTEL_EXPORTER_OTLP_HEADERS='{headers}'\n"
        )
    );
    assert_eq!(
        run("otel", "fish"),
        format!(
            "set -gx OTEL_EXPORTER_OTLP_PROTOCOL 'http/protobuf'\n\
             set -gx OTEL_EXPORTER_OTLP_ENDPOINT 'http://127.0.0.1:14318'\n\
             set -gx OTEL_EXPORTER_OTLP_HEADERS '{headers}'\n"
        )
    );
    assert_eq!(
        run("copilot", "sh"),
        format!(
            "export COPILOT_OTEL_ENABLED='true'\n\
             export OTEL_EXPORTER_OTLP_PROTOCOL='http/protobuf'\n\
             export OTEL_EXPORTER_OTLP_ENDPOINT='http://127.0.0.1:14318'\n\
             export OTEL_EXPORTER_OTLP_HEADERS='{headers}'\n"
        )
    );
    assert!(run("claude-code", "sh").ends_with(&format!(
        "export OTEL_EXPORTER_OTLP_ENDPOINT='http://127.0.0.1:14318'\n\
         export OTEL_EXPORTER_OTLP_HEADERS='{headers}'\n"
    )));
    assert_eq!(
        run("gemini", "fish"),
        "# note: Gemini CLI cannot send custom headers; with server.auth_token set its data is refused (401)\n\
         set -gx GEMINI_TELEMETRY_ENABLED 'true'\n\
         set -gx GEMINI_TELEMETRY_TARGET 'local'\n\
         set -gx GEMINI_TELEMETRY_OTLP_PROTOCOL 'http'\n\
         set -gx GEMINI_TELEMETRY_OTLP_ENDPOINT 'http://127.0.0.1:14318'\n"
    );

    // Sourced by a real sh, the exports set exactly these values.
    for tool in ["claude-code", "copilot", "gemini", "otel"] {
        let script = run(tool, "sh");
        let vars = source_in_sh(&script);
        let endpoint_var = if tool == "gemini" {
            "GEMINI_TELEMETRY_OTLP_ENDPOINT"
        } else {
            "OTEL_EXPORTER_OTLP_ENDPOINT"
        };
        assert_eq!(
            vars.get(endpoint_var).map(String::as_str),
            Some("http://127.0.0.1:14318"),
            "{tool}: {vars:?}"
        );
        if tool == "gemini" {
            assert_eq!(
                vars.get("GEMINI_TELEMETRY_ENABLED").map(String::as_str),
                Some("true")
            );
            assert!(!vars.contains_key("OTEL_EXPORTER_OTLP_HEADERS"), "{vars:?}");
        } else {
            assert_eq!(
                vars.get("OTEL_EXPORTER_OTLP_HEADERS").map(String::as_str),
                Some(headers),
                "{tool}"
            );
            assert_eq!(
                vars.get("OTEL_EXPORTER_OTLP_PROTOCOL").map(String::as_str),
                Some("http/protobuf")
            );
        }
        // Every line of the script became a variable (or is a comment).
        let exports = script.lines().filter(|l| l.starts_with("export ")).count();
        let ours = vars
            .keys()
            .filter(|k| script.contains(&format!("export {k}=")))
            .count();
        assert_eq!(ours, exports, "{tool}: {script}\n{vars:?}");
    }
    // Without a token there is no header variable.
    let vars = source_in_sh(&stdout(&sb.run(&["env", "claude-code"], &[])));
    assert_eq!(
        vars.get("CLAUDE_CODE_ENABLE_TELEMETRY").map(String::as_str),
        Some("1")
    );
    assert_eq!(
        vars.get("OTEL_METRICS_EXPORTER").map(String::as_str),
        Some("otlp")
    );
    assert_eq!(
        vars.get("OTEL_LOGS_EXPORTER").map(String::as_str),
        Some("otlp")
    );
    assert!(!vars.contains_key("OTEL_EXPORTER_OTLP_HEADERS"), "{vars:?}");

    // A wildcard listen address is reached through the loopback of its family.
    for (listen, endpoint) in [
        ("0.0.0.0:4999", "http://127.0.0.1:4999"),
        ("[::]:4999", "http://[::1]:4999"),
    ] {
        let config = sb.write(
            "wild.toml",
            &format!(
                "[server]\nlisten = \"{listen}\"\ngrpc_listen = \"\"\nauth_token = \"x-long-enough-token\"\nallow_remote = true\n"
            ),
        );
        let out = sb.run(&["env", "otel", "--config", config.to_str().unwrap()], &[]);
        assert!(
            stdout(&out).contains(&format!(
                "export OTEL_EXPORTER_OTLP_ENDPOINT='{endpoint}'\n"
            )),
            "{listen}: {}",
            show(&out)
        );
    }
}

/// Runs `sh -c '. /dev/stdin; env'` with `script` on stdin, in an empty environment; returns the
/// variables it ends with.
fn source_in_sh(script: &str) -> std::collections::BTreeMap<String, String> {
    let mut child = Command::new("sh")
        .args(["-c", ". /dev/stdin; env"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running sh");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "sh failed on:\n{script}\n{}",
        show(&out)
    );
    assert_eq!(stderr(&out), "", "sh complained about:\n{script}");
    stdout(&out)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// 6. run on the embedded defaults

/// Whether `addr` can be bound now: `Ok(true)` free, `Ok(false)` in use, `Err` address missing.
fn port_free(addr: &str) -> Result<bool, std::io::Error> {
    match TcpListener::bind(addr) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Ok(false),
        Err(e) => Err(e),
    }
}

#[test]
fn run_on_embedded_defaults() {
    let etc = Path::new("/etc/otlp-spool/config.toml");
    if etc.exists() {
        println!(
            "SKIP run_on_embedded_defaults: {} exists, so the defaults are not in use",
            etc.display()
        );
        return;
    }
    let mut ipv6 = true;
    for addr in [
        "127.0.0.1:4318",
        "127.0.0.1:4317",
        "[::1]:4318",
        "[::1]:4317",
    ] {
        match port_free(addr) {
            Ok(true) => {}
            Ok(false) => {
                support::skip_or_fail(
                    "run_on_embedded_defaults",
                    &format!(
                        "{addr} is already in use on this machine \
                         (another otlp-spool or OpenTelemetry Collector?)"
                    ),
                );
                return;
            }
            Err(e) if addr.starts_with("[::1]") => {
                println!("NOTE: {addr} cannot be bound ({e}); not checking IPv6 loopback");
                ipv6 = false;
            }
            Err(e) => panic!("cannot bind {addr}: {e}"),
        }
    }

    let sb = Sandbox::new();
    let started = Instant::now();
    let mut agent = Running(
        sb.cmd(&["run"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting the agent"),
    );
    let v4: SocketAddr = "127.0.0.1:4318".parse().unwrap();
    loop {
        if let Ok((200, _)) = http_get(v4, "/healthz") {
            break;
        }
        if let Some(status) = agent.wait_for(Duration::ZERO) {
            panic!("the agent exited with {status}: {}", agent.stderr());
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the agent did not answer /healthz within 5 s"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
    if ipv6 {
        let v6: SocketAddr = "[::1]:4318".parse().unwrap();
        assert_eq!(http_get(v6, "/healthz").map(|r| r.0), Ok(200), "[::1]:4318");
    }
    assert_eq!(http_get(v4, "/nope").map(|r| r.0), Ok(404));

    // gRPC: an HTTP/2 server answers the client preface with a SETTINGS frame.
    let mut grpc = TcpStream::connect("127.0.0.1:4317").expect("gRPC on 127.0.0.1:4317");
    grpc.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    grpc.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .unwrap();
    let mut frame = [0u8; 9];
    grpc.read_exact(&mut frame).expect("an HTTP/2 frame");
    assert_eq!(frame[3], 4, "first frame is SETTINGS: {frame:?}");
    drop(grpc);

    // The spool is in the sandbox's state dir, private.
    let spool = sb.state_home().join("otlp-spool");
    let meta = std::fs::metadata(&spool).expect("spool directory created");
    assert!(meta.is_dir());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o700,
        "{}",
        spool.display()
    );

    // status, default address, as a table and as JSON.
    let out = sb.run(&["status"], &[]);
    assert!(out.status.success(), "{}", show(&out));
    let printed = stdout(&out);
    assert!(printed.starts_with("otlp-spool 0.1.0  up "), "{printed}");
    // Not a terminal and no $COLUMNS: nothing is wrapped, so each line greps whole.
    for line in [
        format!("spool {}: 0 records, 0.0 MiB of 1024 MiB", spool.display()),
        "spool files: traces 0 segments 0.0 MiB, metrics 0 segments 0.0 MiB, logs 0 segments \
         0.0 MiB, dead_letter 0 segments 0.0 MiB"
            .to_string(),
        "received items: traces 0  metrics 0  logs 0".to_string(),
        "no destination is configured: holding received data in the spool (bounded by \
         spool.max_bytes and spool.max_age) until one is added"
            .to_string(),
    ] {
        assert!(
            printed.lines().any(|l| l.contains(&line)),
            "{line:?} not on one line:\n{printed}"
        );
    }
    let out = sb.run(&["status", "--json"], &[]);
    assert!(out.status.success(), "{}", show(&out));
    let doc: serde_json::Value =
        serde_json::from_str(&stdout(&out)).expect("status --json is JSON");
    assert_eq!(doc["version"], "0.1.0");
    assert_eq!(doc["spool"]["dir"], spool.to_str().unwrap());
    assert_eq!(doc["destinations"], serde_json::json!([]));
    assert!(
        doc["holding"]
            .as_str()
            .is_some_and(|h| h.contains("no destination")),
        "{doc}"
    );

    // SIGTERM: a clean stop, exit 0, within 5 s.
    let pid = agent.0.id().to_string();
    let kill = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(kill.success());
    let status = agent.wait_for(Duration::from_secs(5));
    let log = agent.stderr();
    assert_eq!(
        status.map(|s| s.code()),
        Some(Some(0)),
        "exit after SIGTERM; log:\n{log}"
    );
    assert!(log.contains("no destination is configured"), "{log}");
    assert!(log.contains("stopping"), "{log}");
    assert!(
        !log.contains('\x1b'),
        "colour codes in a log that is not a terminal:\n{log}"
    );
    assert!(
        http_get(v4, "/healthz").is_err(),
        "still answering after exit"
    );
}

// ---------------------------------------------------------------------------------------------
// 7. run on a port that is taken; status with no agent

#[test]
fn run_fails_when_the_port_is_taken() {
    let sb = Sandbox::new();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let config = sb.write(
        "taken.toml",
        &format!(
            "[server]\nlisten = \"{addr}\"\ngrpc_listen = \"\"\n[spool]\ndir = \"{}\"\n",
            sb.path().join("spool").display()
        ),
    );
    let mut agent = Running(
        sb.cmd(&["run", "--config", config.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let status = agent.wait_for(Duration::from_secs(10));
    let err = agent.stderr();
    assert_eq!(status.map(|s| s.code()), Some(Some(1)), "{err}");
    let want = format!("otlp-spool: cannot listen on {addr}: Address already in use");
    assert!(
        err.lines().any(|l| l.starts_with(&want)),
        "want {want:?} in:\n{err}"
    );
    assert!(err.contains("change server.listen"), "{err}");
    drop(taken);
}

/// `dead-letters --help` names its commands and says how the agent is found; each command's
/// help says what it does.
#[test]
fn dead_letters_help_names_its_commands() {
    let sb = Sandbox::new();
    let out = sb.run(&["dead-letters", "--help"], &[]);
    assert!(out.status.success(), "{}", show(&out));
    let help = stdout(&out);
    for want in [
        "list",
        "show",
        "replay",
        "purge",
        "--addr",
        "server.auth_token",
    ] {
        assert!(help.contains(want), "{want:?} not in:\n{help}");
    }
    let out = sb.run(&["dead-letters", "replay", "--help"], &[]);
    let help = stdout(&out);
    assert!(help.contains("--all") && help.contains("[ID]..."), "{help}");
    let out = sb.run(&["dead-letters", "replay"], &[]);
    assert_eq!(out.status.code(), Some(2), "ids or --all: {}", show(&out));
}

#[test]
fn status_without_an_agent_says_so() {
    let sb = Sandbox::new();
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let out = sb.run(&["status", "--addr", &addr.to_string()], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let err = stderr(&out);
    assert!(
        err.starts_with(&format!("otlp-spool: cannot get http://{addr}/status: ")),
        "{err}"
    );
    assert!(
        err.contains("Is the agent running? Start it with `otlp-spool run`"),
        "{err}"
    );
}
