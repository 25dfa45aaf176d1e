//! Secrets stay out of everything the agent shows (`docs/reliability.md`, "Hostile clients and
//! inputs"): the real binary logging at `trace` for every crate (hyper, h2, reqwest, rustls,
//! aws-*), with a secret in each place a config can hold one — the server's token, endpoint
//! credentials, a header, a CloudWatch Logs bearer key, AWS credentials in the environment — and
//! traffic that makes it talk about them: upstream 401s, 403s and 503s, a redirect to a URL with
//! credentials, retries, clients presenting wrong tokens over HTTP and gRPC. None of the secrets
//! may appear in the log, `/status`, `/metrics` or `otlp-spool status`.

mod support;

use std::process::Command;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use support::process::{agent_command, agent_config, free_port, AgentProcess};
use support::{grpc_channel, spans, trace_request, Reply, Sink, JSON, PROTOBUF};

/// Every secret carries this marker, so one search finds any of them.
const MARK: &str = "Sekr3t";

fn secret(what: &str) -> String {
    format!("{what}-{MARK}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_the_log_status_or_metrics() {
    let sink = Sink::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (port, grpc_port) = (free_port(), free_port());
    let token = secret("token");
    let fast = "batch = { linger = \"10ms\" }\nretry = { initial = \"50ms\", max = \"200ms\" }";
    let addr = sink.endpoint().trim_start_matches("http://").to_string();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        agent_config(
            port,
            Some(grpc_port),
            &format!("auth_token = \"{token}\""),
            &dir.path().join("spool"),
            &format!(
            "[[destination]]\nname = \"keyed\"\ntype = \"otlp_http\"\nsignals = [\"traces\"]\n\
             endpoint = \"http://user:{password}@{addr}\"\n\
             headers = {{ \"x-api-key\" = \"{header}\" }}\n{fast}\n\
             [[destination]]\nname = \"cw\"\ntype = \"cloudwatch\"\nregion = \"us-west-2\"\n\
             signals = [\"logs\"]\nlog_group = \"g\"\nlog_stream = \"s\"\nauth = \"bearer\"\n\
             bearer_token = \"{bearer}\"\nendpoints = {{ logs = \"http://{addr}/v1/logs\" }}\n{fast}\n\
             [[destination]]\nname = \"signed\"\ntype = \"otlp_http\"\nsignals = [\"metrics\"]\n\
             endpoint = \"http://{addr}\"\nsigv4 = {{ region = \"us-west-2\", service = \"execute-api\" }}\n{fast}\n",
                password = secret("password"),
                header = secret("header"),
                bearer = secret("bearer"),
            ),
        ),
    )
    .unwrap();
    // Refusals first (each destination's first attempt may meet any of them), then a redirect
    // to a URL with credentials of its own, then 200s.
    sink.script([
        Reply::Status(401, None),
        Reply::Status(403, None),
        Reply::Status(503, Some(0)),
        Reply::Redirect(
            302,
            format!("http://user:{}@{addr}/elsewhere", secret("location")),
        ),
        Reply::Status(401, None),
    ]);
    let mut command = agent_command(&config);
    command
        .env("OTLP_SPOOL_LOG", "trace")
        .env("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
        .env("AWS_SECRET_ACCESS_KEY", secret("aws-secret"))
        .env("AWS_SESSION_TOKEN", secret("aws-session"))
        .env("AWS_EC2_METADATA_DISABLED", "true");
    let agent = AgentProcess::start(command, port, &dir.path().join("agent.log")).await;

    let http = reqwest::Client::new();
    let post = |path: &'static str,
                content_type: (&'static str, &'static str),
                body: Vec<u8>,
                auth: String| {
        http.post(agent.url(path))
            .header(content_type.0, content_type.1)
            .header("authorization", auth)
            .body(body)
            .send()
    };
    let good = format!("Bearer {token}");
    let logs =
        br#"{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"body":{"stringValue":"l"}}]}]}]}"#;
    let metrics = br#"{"resourceMetrics":[{"scopeMetrics":[{"metrics":[{"name":"m","gauge":{"dataPoints":[{"asInt":"1"}]}}]}]}]}"#;
    for i in 0..3 {
        let status = post(
            "/v1/traces",
            PROTOBUF,
            spans(&format!("t{i}"), 1),
            good.clone(),
        )
        .await
        .unwrap()
        .status();
        assert_eq!(status, 200);
        assert_eq!(
            post("/v1/logs", JSON, logs.to_vec(), good.clone())
                .await
                .unwrap()
                .status(),
            200
        );
        assert_eq!(
            post("/v1/metrics", JSON, metrics.to_vec(), good.clone())
                .await
                .unwrap()
                .status(),
            200
        );
        // Wrong tokens: refused, and what they presented is not written down either.
        let wrong = format!("Bearer {}", secret(&format!("wrong{i}")));
        assert_eq!(
            post("/v1/traces", PROTOBUF, spans("x", 1), wrong)
                .await
                .unwrap()
                .status(),
            401
        );
    }
    let wrong_key = http
        .post(agent.url("/v1/traces"))
        .header(PROTOBUF.0, PROTOBUF.1)
        .header("x-api-key", secret("wrong-key"))
        .body(spans("x", 1))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_key.status(), 401);
    let channel = grpc_channel(([127, 0, 0, 1], grpc_port).into()).await;
    let mut request = tonic::Request::new(trace_request("g", 1));
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", secret("wrong-grpc")).parse().unwrap(),
    );
    let refused = TraceServiceClient::new(channel).export(request).await;
    assert_eq!(
        refused.map_err(|s| s.code()).err(),
        Some(tonic::Code::Unauthenticated)
    );

    // Everything gets through once the script is spent: 3 spans, 3 log records, 3 points.
    for (path, n) in [("/v1/traces", 3), ("/v1/logs", 3), ("/v1/metrics", 3)] {
        assert_eq!(
            sink.wait_items(path, n, Duration::from_secs(20)).await,
            n,
            "{path}; log:\n{}",
            agent.log_text()
        );
    }
    let signed = sink
        .received()
        .into_iter()
        .find(|r| r.path == "/v1/metrics")
        .unwrap();
    assert!(
        signed.headers.contains_key("authorization"),
        "the metrics were signed"
    );

    let auth_get = |path: &'static str| http.get(agent.url(path)).bearer_auth(&token).send();
    let status = auth_get("/status").await.unwrap().text().await.unwrap();
    let metrics_text = auth_get("/metrics").await.unwrap().text().await.unwrap();
    let printed = Command::new(env!("CARGO_BIN_EXE_otlp-spool"))
        .args([
            "status",
            "--config",
            config.to_str().unwrap(),
            "--addr",
            &format!("127.0.0.1:{port}"),
        ])
        .output()
        .expect("running otlp-spool status");
    assert!(printed.status.success(), "{printed:?}");
    let printed = String::from_utf8_lossy(&printed.stdout).into_owned();
    let log = agent.log_text();
    // The errors were there to be shown: refusals and the redirect, credentials masked.
    for shown in [
        "HTTP 401",
        "HTTP 403",
        "HTTP 503",
        "redirected to http://***@",
        "refused a request without a valid token",
    ] {
        assert!(log.contains(shown), "{shown:?} is not in the log:\n{log}");
    }
    for (place, text) in [
        ("log", &log),
        ("/status", &status),
        ("/metrics", &metrics_text),
        ("otlp-spool status", &printed),
    ] {
        let leaks: Vec<&str> = text.lines().filter(|l| l.contains(MARK)).collect();
        assert!(
            leaks.is_empty(),
            "a secret in the {place}:\n{}",
            leaks.join("\n")
        );
    }
    println!(
        "secrets: {} log lines at trace, /status {} bytes, /metrics {} bytes, `status` {} lines: no secret",
        log.lines().count(),
        status.len(),
        metrics_text.len(),
        printed.lines().count()
    );
}
