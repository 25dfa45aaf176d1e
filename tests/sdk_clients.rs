//! Real OpenTelemetry SDK exporters (Python and JS, installed by `scripts/install-test-deps.sh`)
//! send through the agent over OTLP/HTTP (protobuf and JSON, gzip and not) and OTLP/gRPC (gzip
//! and not); the upstream sink must receive exactly the items they sent.
//!
//! Without the clients installed this prints a loud SKIP, or fails under `CI`.

mod support;

use std::time::Duration;

use support::*;

const SPANS: u64 = 7;
const POINTS: u64 = 5;
const LOGS: u64 = 3;

/// The command that runs one emitter, or `None` (after the SKIP/CI policy) if not installed.
fn emitter(language: &str) -> Option<(String, String)> {
    let (bin, script) = match language {
        "python" => ("OTLP_SPOOL_TEST_PYTHON", "OTLP_SPOOL_TEST_PY_EMIT"),
        _ => ("OTLP_SPOOL_TEST_NODE", "OTLP_SPOOL_TEST_JS_EMIT"),
    };
    match (std::env::var(bin), std::env::var(script)) {
        (Ok(b), Ok(s)) => Some((b, s)),
        _ => {
            skip_or_fail(
                &format!("the {language} OpenTelemetry SDK client"),
                &format!(
                    "not installed ({bin}/{script} unset); run scripts/test.sh, which installs \
                     the SDK clients (or scripts/install-test-deps.sh and source .cache/test-env.sh)"
                ),
            );
            None
        }
    }
}

/// Runs one emitter against a fresh agent and checks the sink's counts.
async fn round_trip(language: &str, protocol: &str, compression: &str) {
    let Some((bin, script)) = emitter(language) else {
        return;
    };
    let sink = Sink::start().await;
    let dir = tempfile::tempdir().unwrap();
    let toml = config_toml(dir.path(), &destination("up", &sink, ""))
        .replace("grpc_listen = \"\"", "grpc_listen = \"127.0.0.1:0\"");
    let agent = start_agent(&toml).await;
    let endpoint = if protocol == "grpc" {
        format!("http://{}", agent.grpc_addrs()[0])
    } else {
        format!("http://{}", agent.http_addrs()[0])
    };
    let counts = [SPANS, POINTS, LOGS].map(|n| n.to_string());
    let output = tokio::process::Command::new(&bin)
        .arg(&script)
        .args([
            "--endpoint",
            &endpoint,
            "--protocol",
            protocol,
            "--compression",
            compression,
        ])
        .args([
            "--spans",
            &counts[0],
            "--metric-points",
            &counts[1],
            "--logs",
            &counts[2],
        ])
        .args([
            "--service-name",
            &format!("{language}-{protocol}-{compression}"),
            "--timeout",
            "10",
        ])
        .output()
        .await
        .expect("running the SDK emitter");
    let what = format!("{language} {protocol} {compression}");
    assert!(
        output.status.success(),
        "{what}: emitter failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    for (path, want) in [
        ("/v1/traces", SPANS),
        ("/v1/metrics", POINTS),
        ("/v1/logs", LOGS),
    ] {
        let got = sink.wait_items(path, want, Duration::from_secs(10)).await;
        assert_eq!(got, want, "{what}: items on {path}");
    }
    let names = sink.names("/v1/traces");
    let want: Vec<String> = {
        let mut v: Vec<String> = (0..SPANS).map(|i| format!("span-{i}")).collect();
        v.sort();
        v
    };
    assert_eq!(names, want, "{what}: span names");
    let status = agent.status();
    let counter = if protocol == "grpc" {
        "grpc_requests"
    } else {
        "http_requests"
    };
    assert!(
        status["received"]["traces"][counter].as_u64().unwrap() >= 1,
        "{what}: {counter} counted: {status}"
    );
    agent.shutdown().await;
}

macro_rules! sdk_test {
    ($name:ident, $lang:expr, $proto:expr, $comp:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            round_trip($lang, $proto, $comp).await;
        }
    };
}

sdk_test!(python_http_protobuf, "python", "http/protobuf", "none");
sdk_test!(python_http_protobuf_gzip, "python", "http/protobuf", "gzip");
sdk_test!(python_http_json, "python", "http/json", "none");
sdk_test!(python_http_json_gzip, "python", "http/json", "gzip");
sdk_test!(python_grpc, "python", "grpc", "none");
sdk_test!(python_grpc_gzip, "python", "grpc", "gzip");
sdk_test!(js_http_protobuf, "js", "http/protobuf", "none");
sdk_test!(js_http_protobuf_gzip, "js", "http/protobuf", "gzip");
sdk_test!(js_http_json, "js", "http/json", "none");
sdk_test!(js_http_json_gzip, "js", "http/json", "gzip");
sdk_test!(js_grpc, "js", "grpc", "none");
sdk_test!(js_grpc_gzip, "js", "grpc", "gzip");

/// `eval "$(otlp-spool env otel)"` is all an SDK needs: a Python SDK exporter configured only by
/// the printed environment (endpoint, protocol, and the token header) reaches the agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_output_configures_a_real_sdk() {
    let Some((python, _)) = emitter("python") else {
        return;
    };
    let sink = Sink::start().await;
    let dir = tempfile::tempdir().unwrap();
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let toml = config_toml(dir.path(), &destination("up", &sink, ""))
        .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"))
        .replace("[spool]", "auth_token = \"t0k,en%\"\n[spool]");
    let config = dir.path().join("config.toml");
    std::fs::write(&config, &toml).unwrap();
    let agent = start_agent(&toml).await;
    let script = "from opentelemetry.sdk.trace import TracerProvider\n\
                  from opentelemetry.sdk.trace.export import SimpleSpanProcessor\n\
                  from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter\n\
                  p = TracerProvider(); p.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter()))\n\
                  t = p.get_tracer('env-test')\n\
                  [t.start_span(f'env-{i}').end() for i in range(3)]\n\
                  p.shutdown()\n";
    let shell = format!(
        "eval \"$('{}' env otel --config '{}')\" && exec '{python}' -c \"$SCRIPT\"",
        env!("CARGO_BIN_EXE_otlp-spool"),
        config.display()
    );
    let output = tokio::process::Command::new("sh")
        .args(["-c", &shell])
        .env("SCRIPT", script)
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_HEADERS")
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        sink.wait_items("/v1/traces", 3, Duration::from_secs(10))
            .await,
        3
    );
    assert_eq!(
        agent.status()["refused_requests"]["unauthorized"],
        0,
        "the token header was accepted"
    );
    agent.shutdown().await;
}
