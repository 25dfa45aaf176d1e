//! AWS destinations end to end, on loopback only (README, "AWS CloudWatch"): SigV4 signatures of
//! the `cloudwatch` type and of `otlp_http` + `sigv4`, re-verified by an independent signer
//! (botocore's `SigV4Auth`, run by `tests/aws/verify_sigv4.py`) for all three signals, gzip on and
//! off, with and without a session token, and failing on a flipped body byte; credentials from a
//! `credential_process` whose leases expire in seconds (refreshed ahead, never used expired); a
//! role assumed through a loopback fake STS; failing and missing credentials (data held, `status`
//! says what to run, delivered once they work); 429/503 with `Retry-After`, partial success, a
//! missing log group, the trace batch limits; bearer API keys and API Gateway's `x-api-key`; what
//! `check` says about credentials.
//!
//! Isolation: before any agent starts, [`setup`] points `AWS_CONFIG_FILE`,
//! `AWS_SHARED_CREDENTIALS_FILE` at temporary files holding this file's profiles, sets static
//! `AWS_*` keys, `AWS_EC2_METADATA_DISABLED=true`, and `AWS_ENDPOINT_URL_STS` (and the SSO
//! endpoints) at loopback. Every destination names its profile, and every endpoint is
//! `127.0.0.1`: nothing leaves the machine.

mod support;

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::metrics::v1::{
    metric, number_data_point, Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics,
};
use prost::Message;
use serde_json::{json, Value};
use support::{config_toml, eventually, post_acked, signal_status, skip_or_fail, spans};

// ---------------------------------------------------------------------------------------------
// Environment: profiles, fake STS, AWS_* variables (once per test binary, before any agent).

/// Requests the fake STS answered: (form body, authorization header).
type StsLog = Arc<Mutex<Vec<(String, String)>>>;

struct Setup {
    dir: PathBuf,
    sts: StsLog,
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/aws");
        let (sts, sts_addr) = start_fake_sts();
        let config = format!(
            "[default]\nregion = us-west-2\n\n\
             [profile static]\naws_access_key_id = AKIDSTATIC\naws_secret_access_key = secret-static\n\n\
             [profile session]\naws_access_key_id = ASIASESSION\naws_secret_access_key = secret-session\naws_session_token = token/session+1==\n\n\
             [profile lease]\ncredential_process = sh {lease} {state} 4\n\n\
             [profile flaky]\ncredential_process = sh {flaky} {state}\n\n\
             [profile sso]\nsso_session = otlp-spool-test-never-logged-in\nsso_account_id = 123456789012\nsso_role_name = Writer\n\n\
             [sso-session otlp-spool-test-never-logged-in]\nsso_start_url = http://127.0.0.1:9/start\nsso_region = us-west-2\n",
            lease = scripts.join("lease.sh").display(),
            flaky = scripts.join("flaky.sh").display(),
            state = dir.display(),
        );
        std::fs::write(dir.join("config"), config).unwrap();
        std::fs::write(dir.join("credentials"), "").unwrap();
        let vars = [
            ("AWS_CONFIG_FILE", dir.join("config").display().to_string()),
            (
                "AWS_SHARED_CREDENTIALS_FILE",
                dir.join("credentials").display().to_string(),
            ),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
            ("AWS_ACCESS_KEY_ID", "AKIDFROMENV".into()),
            ("AWS_SECRET_ACCESS_KEY", "secret-env".into()),
            ("AWS_ENDPOINT_URL_STS", format!("http://{sts_addr}")),
            ("AWS_ENDPOINT_URL_SSO", "http://127.0.0.1:9".into()),
            ("AWS_ENDPOINT_URL_SSO_OIDC", "http://127.0.0.1:9".into()),
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:9".into()),
            ("OTLP_SPOOL_TEST_CW_KEY", "cw-logs-api-key".into()),
            ("OTLP_SPOOL_TEST_APIGW_KEY", "apigw-key-123".into()),
        ];
        for (k, v) in vars {
            std::env::set_var(k, v);
        }
        std::env::remove_var("AWS_PROFILE");
        std::env::remove_var("AWS_SESSION_TOKEN");
        Setup { dir, sts }
    })
}

/// A fake STS on its own thread (it outlives every test's runtime): answers `AssumeRole` with
/// fixed session credentials valid for an hour, recording each request.
fn start_fake_sts() -> (StsLog, SocketAddr) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    let shared = Arc::clone(&seen);
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let seen = Arc::clone(&shared);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let seen = Arc::clone(&seen);
                        async move {
                            let auth = header_str(req.headers(), "authorization");
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let form = String::from_utf8_lossy(&body).into_owned();
                            seen.lock().unwrap().push((form.clone(), auth));
                            let expiry = httpdate_iso(SystemTime::now() + Duration::from_secs(3600));
                            let xml = format!(
                                "<AssumeRoleResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">\
                                 <AssumeRoleResult><Credentials>\
                                 <AccessKeyId>ASIAASSUMED</AccessKeyId>\
                                 <SecretAccessKey>secret-assumed</SecretAccessKey>\
                                 <SessionToken>token-assumed</SessionToken>\
                                 <Expiration>{expiry}</Expiration>\
                                 </Credentials><AssumedRoleUser>\
                                 <AssumedRoleId>AROATEST:otlp-spool-test</AssumedRoleId>\
                                 <Arn>arn:aws:sts::123456789012:assumed-role/otlp-writer/otlp-spool-test</Arn>\
                                 </AssumedRoleUser></AssumeRoleResult>\
                                 <ResponseMetadata><RequestId>1</RequestId></ResponseMetadata>\
                                 </AssumeRoleResponse>"
                            );
                            let mut resp = Response::new(Full::new(Bytes::from(xml)));
                            resp.headers_mut()
                                .insert("content-type", "text/xml".parse().unwrap());
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
    });
    (seen, addr)
}

/// `2026-11-22T05:00:00Z` for a time.
fn httpdate_iso(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Seconds since the epoch of an `x-amz-date` (`20261122T050000Z`).
fn amz_date_epoch(amz: &str) -> u64 {
    let n = |r: std::ops::Range<usize>| amz[r].parse::<i64>().unwrap();
    let (y, m, d) = (n(0..4), n(4..6), n(6..8));
    let (hh, mm, ss) = (n(9..11), n(11..13), n(13..15));
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    (days * 86400 + hh * 3600 + mm * 60 + ss) as u64
}

fn header_str(headers: &hyper::HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

// ---------------------------------------------------------------------------------------------
// A CloudWatch-shaped upstream that keeps every request whole (raw body included).

#[derive(Clone, Debug)]
struct RawReply {
    status: u16,
    retry_after: Option<u64>,
    content_type: &'static str,
    body: Vec<u8>,
}

impl RawReply {
    fn status(status: u16, retry_after: Option<u64>) -> RawReply {
        RawReply {
            status,
            retry_after,
            content_type: "application/json",
            body: format!("{{\"message\":\"sink says {status}\"}}").into_bytes(),
        }
    }

    fn json(status: u16, body: Value) -> RawReply {
        RawReply {
            status,
            retry_after: None,
            content_type: "application/json",
            body: body.to_string().into_bytes(),
        }
    }
}

#[derive(Clone, Debug)]
struct RawRequest {
    method: String,
    path: String,
    headers: hyper::HeaderMap,
    body: Vec<u8>,
    items: u64,
    status: u16,
    at: Instant,
}

impl RawRequest {
    fn header(&self, name: &str) -> String {
        header_str(&self.headers, name)
    }
}

#[derive(Default)]
struct RawState {
    received: Vec<RawRequest>,
    /// Scripted replies per path; afterwards 200.
    scripts: HashMap<String, VecDeque<RawReply>>,
}

struct RawSink {
    addr: SocketAddr,
    state: Arc<Mutex<RawState>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawSink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawSink {
    async fn start() -> RawSink {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(RawState::default()));
        let shared = Arc::clone(&state);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = Arc::clone(&shared);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let state = Arc::clone(&state);
                        async move { Ok::<_, Infallible>(raw_handle(state, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        RawSink { addr, state, task }
    }

    /// The full URL of `path` on this sink (`/cw/v1/traces`).
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn script(&self, path: &str, replies: impl IntoIterator<Item = RawReply>) {
        self.state
            .lock()
            .unwrap()
            .scripts
            .entry(path.to_string())
            .or_default()
            .extend(replies);
    }

    fn received(&self) -> Vec<RawRequest> {
        self.state.lock().unwrap().received.clone()
    }

    fn accepted_items(&self, path: &str) -> u64 {
        self.received()
            .iter()
            .filter(|r| r.path == path && r.status == 200)
            .map(|r| r.items)
            .sum()
    }

    async fn wait_items(&self, path: &str, n: u64, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.accepted_items(path);
            if got >= n || Instant::now() > deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn raw_handle(
    state: Arc<Mutex<RawState>>,
    req: Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let headers = req.headers().clone();
    let body = req.into_body().collect().await.unwrap().to_bytes().to_vec();
    let signal_path = ["/v1/traces", "/v1/metrics", "/v1/logs"]
        .into_iter()
        .find(|p| path.ends_with(p))
        .unwrap_or("/v1/logs");
    let (items, _) = support::decode(signal_path, &headers, &body);
    let reply = {
        let mut s = state.lock().unwrap();
        let reply = s
            .scripts
            .get_mut(&path)
            .and_then(|q| q.pop_front())
            .unwrap_or(RawReply {
                status: 200,
                retry_after: None,
                content_type: "application/x-protobuf",
                body: Vec::new(),
            });
        s.received.push(RawRequest {
            method,
            path,
            headers,
            body,
            items,
            status: reply.status,
            at: Instant::now(),
        });
        reply
    };
    let mut response = Response::new(Full::new(Bytes::from(reply.body)));
    *response.status_mut() = hyper::StatusCode::from_u16(reply.status).unwrap();
    response
        .headers_mut()
        .insert("content-type", reply.content_type.parse().unwrap());
    if let Some(secs) = reply.retry_after {
        response.headers_mut().insert("retry-after", secs.into());
    }
    response
}

// ---------------------------------------------------------------------------------------------
// botocore, the independent signer.

/// The Python with botocore, or `None` after a loud SKIP (outside CI); under CI its absence
/// fails the test.
fn botocore_python() -> Option<String> {
    let python = std::env::var("OTLP_SPOOL_TEST_PYTHON")
        .ok()
        .filter(|p| !p.is_empty());
    let works = python.as_ref().is_some_and(|p| {
        std::process::Command::new(p)
            .args(["-c", "import botocore.auth"])
            .status()
            .is_ok_and(|s| s.success())
    });
    if works {
        return python;
    }
    let why =
        "OTLP_SPOOL_TEST_PYTHON is unset or has no botocore (run scripts/install-test-deps.sh \
               and source .cache/test-env.sh)";
    skip_or_fail("SigV4 re-verification with botocore", why);
    None
}

/// What botocore needs besides the request: the secret (and token) of its access key.
struct Signing<'a> {
    secret_key: &'a str,
    token: Option<&'a str>,
    region: &'a str,
    service: &'a str,
}

/// Runs `tests/aws/verify_sigv4.py` on `requests`; returns whether every one matched, and the
/// script's report.
fn botocore_verifies(
    python: &str,
    sink: &RawSink,
    requests: &[(RawRequest, Signing)],
) -> (bool, Value) {
    let docs: Vec<Value> = requests
        .iter()
        .map(|(r, s)| {
            let auth = r.header("authorization");
            let access_key = auth
                .split("Credential=")
                .nth(1)
                .and_then(|c| c.split('/').next())
                .unwrap_or_default()
                .to_string();
            json!({
                "method": r.method,
                "url": sink.url(&r.path),
                "headers": r.headers.iter().map(|(k, v)| json!([k.as_str(), v.to_str().unwrap_or_default()])).collect::<Vec<_>>(),
                "body_hex": hex::encode(&r.body),
                "access_key": access_key,
                "secret_key": s.secret_key,
                "token": s.token,
                "region": s.region,
                "service": s.service,
            })
        })
        .collect();
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), serde_json::to_vec(&docs).unwrap()).unwrap();
    let out = std::process::Command::new(python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/aws/verify_sigv4.py"))
        .arg(file.path())
        .output()
        .expect("running verify_sigv4.py");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "verify_sigv4.py printed no report: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.success(), report)
}

// ---------------------------------------------------------------------------------------------
// Payloads and agent helpers.

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

fn metrics(prefix: &str, n: usize) -> Vec<u8> {
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            scope_metrics: vec![ScopeMetrics {
                metrics: (0..n)
                    .map(|i| Metric {
                        name: format!("{prefix}-{i}"),
                        data: Some(metric::Data::Gauge(Gauge {
                            data_points: vec![NumberDataPoint {
                                time_unix_nano: now_nanos(),
                                value: Some(number_data_point::Value::AsInt(i as i64)),
                                ..Default::default()
                            }],
                        })),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

/// [`support::logs`] with every record timed now, as a live SDK sends them.
fn timestamped_logs(prefix: &str, n: usize) -> Vec<u8> {
    let mut request = support::logs_request(prefix, n);
    for record in &mut request.resource_logs[0].scope_logs[0].log_records {
        record.time_unix_nano = now_nanos();
    }
    request.encode_to_vec()
}

/// A `cloudwatch` destination whose three endpoints are `<sink>/<name>/v1/<signal>`.
fn cloudwatch(name: &str, sink: &RawSink, extra: &str) -> String {
    format!(
        "[[destination]]\nname = \"{name}\"\ntype = \"cloudwatch\"\nregion = \"us-west-2\"\n\
         log_group = \"otlp-logs\"\nlog_stream = \"laptop-1\"\n\
         endpoints = {{ traces = \"{}\", metrics = \"{}\", logs = \"{}\" }}\n\
         batch = {{ linger = \"20ms\" }}\nretry = {{ initial = \"50ms\", max = \"500ms\" }}\ntimeout = \"5s\"\n{extra}\n",
        sink.url(&format!("/{name}/v1/traces")),
        sink.url(&format!("/{name}/v1/metrics")),
        sink.url(&format!("/{name}/v1/logs")),
    )
}

async fn start(dir: &Path, destinations: &str) -> otlp_spool::Agent {
    setup();
    support::start_agent(&config_toml(dir, destinations)).await
}

async fn send_all_signals(agent: &otlp_spool::Agent, prefix: &str) {
    post_acked(agent, "/v1/traces", spans(&format!("{prefix}-span"), 3)).await;
    post_acked(
        agent,
        "/v1/metrics",
        metrics(&format!("{prefix}-metric"), 2),
    )
    .await;
    post_acked(
        agent,
        "/v1/logs",
        timestamped_logs(&format!("{prefix}-log"), 4),
    )
    .await;
}

fn signed_headers(r: &RawRequest) -> Vec<String> {
    r.header("authorization")
        .split("SignedHeaders=")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or_default()
        .split(';')
        .map(str::to_string)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Tests.

/// All three CloudWatch signals, gzip on and off, static and session credentials, plus an
/// `otlp_http` + `sigv4` (API Gateway, JSON): every `Authorization` is recomputed by botocore
/// and matches; the right headers are signed; one flipped body byte makes the check fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures_verify_with_botocore_for_every_signal_and_variant() {
    let sink = RawSink::start().await;
    let dir = tempfile::tempdir().unwrap();
    let apigw = format!(
        "[[destination]]\nname = \"apigw\"\ntype = \"otlp_http\"\nendpoint = \"{}\"\n\
         encoding = \"json\"\nheaders = {{ \"x-api-key\" = \"${{OTLP_SPOOL_TEST_APIGW_KEY}}\" }}\n\
         sigv4 = {{ region = \"eu-central-1\", service = \"execute-api\" }}\nprofile = \"session\"\n\
         batch = {{ linger = \"20ms\" }}\n",
        sink.url("/apigw/prod")
    );
    let destinations = [
        cloudwatch("gz-static", &sink, "profile = \"static\""),
        cloudwatch(
            "raw-static",
            &sink,
            "profile = \"static\"\ncompression = \"none\"",
        ),
        cloudwatch("gz-session", &sink, "profile = \"session\""),
        cloudwatch(
            "raw-session",
            &sink,
            "profile = \"session\"\ncompression = \"none\"\nencoding = \"json\"",
        ),
        apigw,
    ]
    .concat();
    let agent = start(dir.path(), &destinations).await;
    send_all_signals(&agent, "sig").await;
    for name in ["gz-static", "raw-static", "gz-session", "raw-session"] {
        for (signal, n) in [("traces", 3), ("metrics", 2), ("logs", 4)] {
            let path = format!("/{name}/v1/{signal}");
            assert_eq!(
                sink.wait_items(&path, n, Duration::from_secs(10)).await,
                n,
                "{path}"
            );
        }
    }
    for (signal, n) in [("traces", 3), ("metrics", 2), ("logs", 4)] {
        let path = format!("/apigw/prod/v1/{signal}");
        assert_eq!(
            sink.wait_items(&path, n, Duration::from_secs(10)).await,
            n,
            "{path}"
        );
    }
    let received = sink.received();
    assert_eq!(received.len(), 15, "one request per destination and signal");

    let mut checks = Vec::new();
    for r in &received {
        let name = r.path.split('/').nth(1).unwrap();
        let signal = r.path.rsplit('/').next().unwrap();
        let session = name.contains("session") || name == "apigw";
        let (service, region) = match (name, signal) {
            ("apigw", _) => ("execute-api", "eu-central-1"),
            (_, "traces") => ("xray", "us-west-2"),
            (_, "logs") => ("logs", "us-west-2"),
            _ => ("monitoring", "us-west-2"),
        };
        let auth = r.header("authorization");
        let key = if session { "ASIASESSION" } else { "AKIDSTATIC" };
        assert!(
            auth.starts_with(&format!("AWS4-HMAC-SHA256 Credential={key}/"))
                && auth.contains(&format!("/{region}/{service}/aws4_request")),
            "{} signed for the wrong key or scope: {auth}",
            r.path
        );
        let signed = signed_headers(r);
        let mut want = vec!["content-type", "host", "x-amz-date"];
        if !name.starts_with("raw") {
            want.push("content-encoding");
        }
        if session {
            want.push("x-amz-security-token");
            assert_eq!(r.header("x-amz-security-token"), "token/session+1==");
        }
        if signal == "logs" && name != "apigw" {
            want.extend(["x-aws-log-group", "x-aws-log-stream"]);
            assert_eq!(r.header("x-aws-log-group"), "otlp-logs");
            assert_eq!(r.header("x-aws-log-stream"), "laptop-1");
        }
        if name == "apigw" {
            want.push("x-api-key");
            assert_eq!(r.header("x-api-key"), "apigw-key-123");
        }
        for h in want {
            assert!(
                signed.iter().any(|s| s == h),
                "{}: {h} not signed: {signed:?}",
                r.path
            );
        }
        assert_eq!(
            r.header("content-encoding") == "gzip",
            !name.starts_with("raw"),
            "{}",
            r.path
        );
        checks.push((
            r.clone(),
            Signing {
                secret_key: if session {
                    "secret-session"
                } else {
                    "secret-static"
                },
                token: session.then_some("token/session+1=="),
                region,
                service,
            },
        ));
    }
    agent.shutdown().await;

    let Some(python) = botocore_python() else {
        return;
    };
    let (ok, report) = botocore_verifies(&python, &sink, &checks);
    assert!(ok, "botocore disagrees: {report:#}");
    eprintln!("botocore re-verified {} signatures", checks.len());

    // Tampering: one flipped body byte (gzip and plain), and a wrong secret, must fail.
    for i in [0, 1] {
        let (mut r, s) = (checks[i].0.clone(), &checks[i].1);
        let mid = r.body.len() / 2;
        r.body[mid] ^= 0x01;
        let tampered = [(r, Signing { ..*s })];
        let (ok, report) = botocore_verifies(&python, &sink, &tampered);
        assert!(!ok, "a flipped body byte passed the check: {report}");
    }
    let wrong = [(
        checks[0].0.clone(),
        Signing {
            secret_key: "not-the-secret",
            ..checks[0].1
        },
    )];
    assert!(
        !botocore_verifies(&python, &sink, &wrong).0,
        "a wrong secret passed the check"
    );
}

/// A `credential_process` hands out 4-second leases: the agent renews them ahead of expiry and
/// every request is signed with a lease that is still live (and botocore agrees with each
/// signature, computed with that lease's secret).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_credential_leases_are_refreshed_ahead_of_expiry() {
    let state = &setup().dir;
    let sink = RawSink::start().await;
    let dir = tempfile::tempdir().unwrap();
    let agent = start(
        dir.path(),
        &cloudwatch(
            "lease",
            &sink,
            "profile = \"lease\"\nsignals = [\"traces\"]",
        ),
    )
    .await;
    let started = Instant::now();
    let mut sent = 0u64;
    while started.elapsed() < Duration::from_secs(9) {
        post_acked(&agent, "/v1/traces", spans("lease", 1)).await;
        sent += 1;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let path = "/lease/v1/traces";
    assert_eq!(
        sink.wait_items(path, sent, Duration::from_secs(10)).await,
        sent
    );
    agent.shutdown().await;

    let leases: HashMap<u32, u64> = std::fs::read_to_string(state.join("lease.log"))
        .unwrap()
        .lines()
        .map(|l| {
            let (n, exp) = l.split_once(' ').unwrap();
            (n.parse().unwrap(), exp.parse().unwrap())
        })
        .collect();
    let received = sink.received();
    let mut used = std::collections::BTreeSet::new();
    let mut checks = Vec::new();
    let secrets: Vec<(String, String)> = received
        .iter()
        .map(|r| {
            let auth = r.header("authorization");
            let key = auth
                .split("Credential=")
                .nth(1)
                .unwrap()
                .split('/')
                .next()
                .unwrap()
                .to_string();
            let n: u32 = key
                .trim_start_matches("AKIDLEASE")
                .parse()
                .unwrap_or_else(|_| panic!("unexpected key {key}"));
            let signed_at = amz_date_epoch(&r.header("x-amz-date"));
            let expiry = leases[&n];
            assert!(
                signed_at < expiry,
                "request signed at {signed_at} with lease {n}, which expired at {expiry}"
            );
            assert_eq!(r.header("x-amz-security-token"), format!("token-lease-{n}"));
            used.insert(n);
            (format!("secret-lease-{n}"), format!("token-lease-{n}"))
        })
        .collect();
    eprintln!(
        "{} requests over 9 s signed with leases {used:?} ({} fetched)",
        received.len(),
        leases.len()
    );
    assert!(used.len() >= 3, "the 4 s leases were not renewed: {used:?}");
    assert!(
        leases.len() <= 9,
        "fetched far more leases than needed: {}",
        leases.len()
    );
    for (r, (secret, token)) in received.iter().zip(&secrets) {
        checks.push((
            r.clone(),
            Signing {
                secret_key: secret,
                token: Some(token),
                region: "us-west-2",
                service: "xray",
            },
        ));
    }
    if let Some(python) = botocore_python() {
        let (ok, report) = botocore_verifies(&python, &sink, &checks);
        assert!(ok, "botocore disagrees: {report:#}");
    }
}

/// `role_arn` + `external_id`: the base profile's keys call the loopback STS (signed by them),
/// and the assumed session credentials are the ones that sign the upstream requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assumed_role_credentials_sign_the_requests() {
    let sts = &setup().sts;
    let sink = RawSink::start().await;
    let dir = tempfile::tempdir().unwrap();
    let agent = start(
        dir.path(),
        &cloudwatch(
            "role",
            &sink,
            "profile = \"static\"\nrole_arn = \"arn:aws:iam::123456789012:role/otlp-writer\"\n\
             external_id = \"ext-42\"\nsession_name = \"otlp-spool-test\"",
        ),
    )
    .await;
    send_all_signals(&agent, "role").await;
    for (signal, n) in [("traces", 3), ("metrics", 2), ("logs", 4)] {
        let path = format!("/role/v1/{signal}");
        assert_eq!(
            sink.wait_items(&path, n, Duration::from_secs(10)).await,
            n,
            "{path}"
        );
    }
    agent.shutdown().await;

    let calls: Vec<(String, String)> = sts
        .lock()
        .unwrap()
        .iter()
        .filter(|(form, _)| form.contains("otlp-writer"))
        .cloned()
        .collect();
    assert_eq!(
        calls.len(),
        1,
        "one AssumeRole for the three signals (cached): {calls:?}"
    );
    let (form, auth) = &calls[0];
    assert!(form.contains("Action=AssumeRole"), "{form}");
    assert!(form.contains("ExternalId=ext-42"), "{form}");
    assert!(form.contains("RoleSessionName=otlp-spool-test"), "{form}");
    assert!(
        auth.contains("Credential=AKIDSTATIC/") && auth.contains("/sts/aws4_request"),
        "STS was not called with the base profile's keys: {auth}"
    );
    let mut checks = Vec::new();
    for r in sink.received() {
        let auth = r.header("authorization");
        assert!(auth.contains("Credential=ASIAASSUMED/"), "{auth}");
        assert_eq!(r.header("x-amz-security-token"), "token-assumed");
        let service = match r.path.rsplit('/').next().unwrap() {
            "traces" => "xray",
            "logs" => "logs",
            _ => "monitoring",
        };
        checks.push((
            r,
            Signing {
                secret_key: "secret-assumed",
                token: Some("token-assumed"),
                region: "us-west-2",
                service,
            },
        ));
    }
    if let Some(python) = botocore_python() {
        let (ok, report) = botocore_verifies(&python, &sink, &checks);
        assert!(ok, "botocore disagrees: {report:#}");
    }
}

/// Credentials that fail (a credential_process whose login expired), an SSO profile never
/// logged in, and a profile that does not exist: data is held, `status` is `auth_failed` with
/// what to run; once the process works again everything is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_credentials_hold_the_data_and_say_what_to_run() {
    let state = &setup().dir;
    std::fs::write(state.join("fail"), "").unwrap();
    let sink = RawSink::start().await;
    let dir = tempfile::tempdir().unwrap();
    let destinations = [
        cloudwatch(
            "flaky",
            &sink,
            "profile = \"flaky\"\nsignals = [\"traces\"]",
        ),
        cloudwatch("sso", &sink, "profile = \"sso\"\nsignals = [\"traces\"]"),
        cloudwatch(
            "ghost",
            &sink,
            "profile = \"ghost\"\nsignals = [\"traces\"]",
        ),
    ]
    .concat();
    let agent = start(dir.path(), &destinations).await;
    for i in 0..3 {
        post_acked(&agent, "/v1/traces", spans(&format!("held{i}"), 5)).await;
    }
    let auth_failed = |i: usize| {
        signal_status(&agent, i, "traces")["retry"]
            .get("auth_failed")
            .is_some()
    };
    assert!(
        eventually(Duration::from_secs(10), || (0..3).all(auth_failed)).await,
        "{:#}",
        agent.status()["destinations"]
    );
    // Several slow retries, nothing sent, nothing dropped.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let flaky = signal_status(&agent, 0, "traces");
    let error = flaky["last_error"].as_str().unwrap_or_default().to_string();
    eprintln!("flaky: {error}");
    assert!(error.contains("profile \"flaky\""), "{error}");
    assert!(
        error.contains("credential_process --profile flaky"),
        "{error}"
    );
    assert!(flaky["failed_attempts"].as_u64().unwrap() >= 2, "{flaky}");
    assert_eq!(flaky["pending_records"], 3, "{flaky}");
    let sso = signal_status(&agent, 1, "traces")["last_error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    eprintln!("sso: {sso}");
    assert!(sso.contains("aws sso login --profile sso"), "{sso}");
    let ghost = signal_status(&agent, 2, "traces")["last_error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    eprintln!("ghost: {ghost}");
    assert!(
        ghost.contains("profile \"ghost\"") && ghost.contains("aws configure sso --profile ghost"),
        "{ghost}"
    );
    assert!(sink.received().is_empty(), "nothing may be sent unsigned");

    // The login works again: everything held is delivered.
    std::fs::remove_file(state.join("fail")).unwrap();
    assert_eq!(
        sink.wait_items("/flaky/v1/traces", 15, Duration::from_secs(10))
            .await,
        15
    );
    assert!(
        eventually(Duration::from_secs(5), || signal_status(
            &agent, 0, "traces"
        )["retry"]
            == "ready")
        .await
    );
    assert_eq!(signal_status(&agent, 0, "traces")["pending_records"], 0);
    agent.shutdown().await;
}

/// The CloudWatch-shaped upstream answers 429 and 503 with `Retry-After`, then a partial
/// success; logs first meet a missing log group (400 ResourceNotFoundException), which is held
/// with the fix in `status` rather than dead-lettered; traces batches respect 10,000 spans.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_missing_log_group_partial_success_and_trace_limits() {
    let sink = RawSink::start().await;
    sink.script(
        "/cw/v1/traces",
        [
            RawReply::status(429, Some(1)),
            RawReply::status(503, Some(1)),
            RawReply::json(
                200,
                json!({"partialSuccess": {"rejectedSpans": "2", "errorMessage": "2 spans too old"}}),
            ),
        ],
    );
    sink.script(
        "/cw/v1/logs",
        vec![
            RawReply::json(
                400,
                json!({"__type": "ResourceNotFoundException", "message": "ResourceNotFoundException: The specified log group does not exist."}),
            );
            2
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let agent = start(
        dir.path(),
        &cloudwatch(
            "cw",
            &sink,
            "profile = \"static\"\nsignals = [\"traces\", \"logs\"]",
        ),
    )
    .await;
    post_acked(&agent, "/v1/traces", spans("throttled", 5)).await;
    post_acked(&agent, "/v1/logs", timestamped_logs("lost-group", 3)).await;

    // Logs: held while the group is missing, with the fix shown.
    assert!(
        eventually(Duration::from_secs(5), || {
            signal_status(&agent, 0, "logs")["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("create-log-group"))
        })
        .await,
        "{:#}",
        signal_status(&agent, 0, "logs")
    );
    assert_eq!(
        sink.wait_items("/cw/v1/logs", 3, Duration::from_secs(10))
            .await,
        3
    );
    let logs_status = signal_status(&agent, 0, "logs");
    assert_eq!(logs_status["dead_lettered_items"], 0, "{logs_status}");

    // Traces: 429, 503 (each honouring Retry-After: 1), then accepted in part.
    assert_eq!(
        sink.wait_items("/cw/v1/traces", 5, Duration::from_secs(10))
            .await,
        5
    );
    let attempts: Vec<RawRequest> = sink
        .received()
        .into_iter()
        .filter(|r| r.path == "/cw/v1/traces")
        .collect();
    let tries: Vec<Instant> = attempts.iter().map(|r| r.at).collect();
    assert_eq!(tries.len(), 3);
    // Each attempt is signed afresh: its own x-amz-date, so its own signature.
    let (first, last) = (&attempts[0], &attempts[2]);
    assert!(
        amz_date_epoch(&last.header("x-amz-date")) > amz_date_epoch(&first.header("x-amz-date"))
            && first.header("authorization") != last.header("authorization"),
        "a retry reused the first attempt's signature"
    );
    for w in tries.windows(2) {
        assert!(
            w[1] - w[0] >= Duration::from_millis(900),
            "Retry-After: 1 not honoured: {:?}",
            w[1] - w[0]
        );
    }
    assert!(
        eventually(Duration::from_secs(5), || {
            signal_status(&agent, 0, "traces")["partial_rejected_items"] == 2
        })
        .await
    );
    let traces = signal_status(&agent, 0, "traces");
    eprintln!("traces after 429, 503, partial success: {traces}");
    assert_eq!(traces["sent_items"], 3, "{traces}");
    assert!(
        traces["last_error"]
            .as_str()
            .unwrap()
            .contains("2 spans too old"),
        "{traces}"
    );

    // Trace batches: a configured 50,000 is clamped to CloudWatch's 10,000 spans per request.
    let dir2 = tempfile::tempdir().unwrap();
    let big = RawSink::start().await;
    let agent2 = start(
        dir2.path(),
        &cloudwatch("big", &big, "profile = \"static\"\nsignals = [\"traces\"]").replace(
            "batch = { linger = \"20ms\" }",
            "batch = { linger = \"2s\", max_items = 50000 }",
        ),
    )
    .await;
    for i in 0..3 {
        post_acked(&agent2, "/v1/traces", spans(&format!("bulk{i}"), 6000)).await;
    }
    assert_eq!(
        big.wait_items("/big/v1/traces", 18000, Duration::from_secs(15))
            .await,
        18000
    );
    let sizes: Vec<u64> = big.received().iter().map(|r| r.items).collect();
    assert!(sizes.iter().all(|&n| n <= 10_000), "{sizes:?}");
    agent2.shutdown().await;
    agent.shutdown().await;
}

/// `auth = "bearer"` sends a CloudWatch Logs API key instead of a signature; an API Gateway
/// `otlp_http` destination with `x-api-key` (the documented example) delivers with the header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_api_key_for_logs_and_api_gateway_x_api_key() {
    setup();
    let sink = RawSink::start().await;
    let apigw = support::Sink::start().await;
    let dir = tempfile::tempdir().unwrap();
    let destinations = format!(
        "{}{}",
        cloudwatch(
            "bearer",
            &sink,
            "signals = [\"logs\"]\nauth = \"bearer\"\nbearer_token = \"${OTLP_SPOOL_TEST_CW_KEY}\"",
        )
        .replace(
            &format!(
                "endpoints = {{ traces = \"{}\", metrics = \"{}\", logs",
                sink.url("/bearer/v1/traces"),
                sink.url("/bearer/v1/metrics")
            ),
            "endpoints = { logs",
        ),
        support::destination(
            "apigw",
            &apigw,
            "headers = { \"x-api-key\" = \"${OTLP_SPOOL_TEST_APIGW_KEY}\" }\nencoding = \"json\"",
        ),
    );
    let agent = start(dir.path(), &destinations).await;
    post_acked(&agent, "/v1/logs", timestamped_logs("keyed", 2)).await;
    assert_eq!(
        sink.wait_items("/bearer/v1/logs", 2, Duration::from_secs(10))
            .await,
        2
    );
    let r = &sink.received()[0];
    assert_eq!(r.header("authorization"), "Bearer cw-logs-api-key");
    assert!(
        r.header("x-amz-date").is_empty(),
        "a bearer request is not signed"
    );
    assert_eq!(r.header("x-aws-log-group"), "otlp-logs");
    assert_eq!(
        apigw
            .wait_items("/v1/logs", 2, Duration::from_secs(10))
            .await,
        2
    );
    for got in apigw.received() {
        assert_eq!(got.headers.get("x-api-key").unwrap(), "apigw-key-123");
        assert_eq!(got.headers.get("content-type").unwrap(), "application/json");
    }
    agent.shutdown().await;
}

/// `check` validates the AWS keys and says which credential source each destination would
/// use, without contacting anything.
#[test]
fn check_validates_aws_keys_and_names_the_credential_source() {
    let setup = setup();
    let check = |toml: &str| {
        let file = setup.dir.join(format!("check-{}.toml", now_nanos()));
        std::fs::write(&file, format!("[server]\nlisten = \"127.0.0.1:0\"\n{toml}")).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_otlp-spool"))
            .args(["check", "--config"])
            .arg(&file)
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let cw = "[[destination]]\nname = \"cw\"\ntype = \"cloudwatch\"\n";
    let (ok, out) = check(&format!(
        "{cw}region = \"us-west-2\"\nlog_group = \"g\"\nlog_stream = \"s\"\nprofile = \"sso\"\n\
         role_arn = \"arn:aws:iam::123456789012:role/otlp-writer\""
    ));
    assert!(ok, "{out}");
    assert!(
        out.contains("# destination cw: credentials from profile \"sso\" (AWS SSO")
            && out.contains("then role arn:aws:iam::123456789012:role/otlp-writer assumed via STS"),
        "{out}"
    );
    let (ok, out) = check(&format!(
        "{cw}region = \"us-west-2\"\nsignals = [\"traces\"]"
    ));
    assert!(ok, "{out}");
    assert!(
        out.contains("credentials from environment variables AWS_ACCESS_KEY_ID"),
        "{out}"
    );
    for (bad, why) in [
        ("region = \"Oregon\"", "is not an AWS region"),
        ("region = \"us-west-2\"", "missing field `log_group`"),
        ("signals = [\"traces\"]", "missing field `region`"),
        (
            "region = \"us-west-2\"\nsignals = [\"traces\", \"logs\"]\nlog_group = \"g\"\nlog_stream = \"s\"\nauth = \"bearer\"\nbearer_token = \"k\"",
            "works for the logs endpoint only",
        ),
    ] {
        let (ok, out) = check(&format!("{cw}{bad}"));
        assert!(!ok && out.contains(why), "{bad}: {out}");
        assert!(out.contains(", line ") && out.contains(", key destination."), "{out}");
    }
    let http =
        "[[destination]]\nname = \"gw\"\ntype = \"otlp_http\"\nendpoint = \"https://x.example\"\n";
    let (ok, out) = check(&format!(
        "{http}sigv4 = {{ region = \"us-west-2\", service = \"Execute API\" }}"
    ));
    assert!(!ok && out.contains("is not a SigV4 service name"), "{out}");
    let (ok, out) = check(&format!("{http}log_group = \"g\""));
    assert!(
        !ok && out.contains("applies to type = \"cloudwatch\" only"),
        "{out}"
    );
    let (ok, out) = check(&format!(
        "{http}sigv4 = {{ region = \"us-west-2\", service = \"execute-api\" }}\nprofile = \"static\""
    ));
    assert!(
        ok && out.contains("credentials from profile \"static\" (access keys"),
        "{out}"
    );
}
