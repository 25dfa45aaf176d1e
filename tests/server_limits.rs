//! The receiver's locked-down defaults against clients that misbehave at the HTTP level
//! (`docs/reliability.md`, "Hostile clients and inputs"): too many or too large headers, slow-loris
//! heads and bodies, oversized gRPC metadata, and a non-loopback listener that only works with
//! `allow_remote` and a token. Requests are written by hand on raw sockets where a real client
//! library would refuse to misbehave.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Writes `head` (and `body`) on a fresh connection and returns what the agent answered before
/// closing, as text.
async fn raw_exchange(addr: SocketAddr, head: &str, body: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    // The agent may answer and close before it has read everything: a failed write is fine.
    let _ = stream.write_all(body).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

fn status_line(answer: &str) -> &str {
    answer.lines().next().unwrap_or("")
}

#[tokio::test]
async fn too_many_or_too_large_headers_are_refused_with_431() {
    let dir = tempfile::tempdir().unwrap();
    let agent = start_agent(&config_toml(dir.path(), "")).await;
    let addr = agent.http_addrs()[0];
    let body = spans("h", 1);
    let post = |extra: String| {
        format!(
            "POST /v1/traces HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: application/x-protobuf\r\ncontent-length: {}\r\n{extra}\r\n",
            body.len()
        )
    };

    let many: String = (0..150).map(|i| format!("x-h{i}: v\r\n")).collect();
    let answer = raw_exchange(addr, &post(many), &body).await;
    assert!(
        status_line(&answer).starts_with("HTTP/1.1 431"),
        "150 headers: {answer:?}"
    );

    let large = format!("x-large: {}\r\n", "a".repeat(100 << 10));
    let answer = raw_exchange(addr, &post(large), &body).await;
    assert!(
        status_line(&answer).starts_with("HTTP/1.1 431"),
        "a 100 KiB header: {answer:?}"
    );

    // Within the limits the same request is taken.
    let some: String = (0..40).map(|i| format!("x-h{i}: v\r\n")).collect();
    let answer = raw_exchange(addr, &post(some), &body).await;
    assert!(
        status_line(&answer).starts_with("HTTP/1.1 200"),
        "40 headers: {answer:?}"
    );
    assert_eq!(
        agent.spool().usage().records,
        1,
        "only the good request was stored"
    );
}

/// A client that trickles its head or its body is cut off after the 30 s read timeouts, and
/// meanwhile everyone else is served.
#[tokio::test]
async fn slow_loris_heads_and_bodies_are_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let agent = start_agent(&config_toml(dir.path(), "")).await;
    let addr = agent.http_addrs()[0];

    let trickle = |prefix: String, then: &'static [u8]| async move {
        let started = Instant::now();
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(prefix.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        // One byte a second, forever; stop when the agent answers or closes.
        for &b in then.iter().cycle() {
            tokio::select! {
                read = stream.read(&mut buf) => match read {
                    Ok(0) | Err(_) => break,
                    Ok(n) => answer.extend_from_slice(&buf[..n]),
                },
                _ = tokio::time::sleep(Duration::from_secs(1)) => {
                    if stream.write_all(&[b]).await.is_err() {
                        break;
                    }
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "a trickling client was not cut off"
            );
        }
        (
            started.elapsed(),
            String::from_utf8_lossy(&answer).into_owned(),
        )
    };
    let head = trickle(
        "POST /v1/traces HTTP/1.1\r\n".into(),
        b"x-slow: aaaaaaaaaaaaaaaaaaaa\r\n",
    );
    let body = trickle(
        "POST /v1/traces HTTP/1.1\r\nhost: x\r\ncontent-type: application/x-protobuf\r\ncontent-length: 100000\r\n\r\n".into(),
        b"\x0a",
    );
    let silent = async {
        let started = Instant::now();
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(60), stream.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "a silent connection is closed: {read:?}"
        );
        started.elapsed()
    };
    let others = async {
        // Served normally while the two slow clients hang on.
        for i in 0..10 {
            let (status, text) = post(addr, "/v1/traces", &[PROTOBUF], spans("ok", 1)).await;
            assert_eq!(status, 200, "request {i}: {text}");
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    };
    let ((head_after, head_answer), (body_after, body_answer), silent_after, ()) =
        tokio::join!(head, body, silent, others);
    assert!(
        silent_after >= Duration::from_secs(29) && silent_after < Duration::from_secs(40),
        "a connection that sends nothing is closed after the header timeout, not {silent_after:?}"
    );

    assert!(
        head_after >= Duration::from_secs(29) && head_after < Duration::from_secs(40),
        "a trickled head is dropped after the 30 s header timeout, not {head_after:?}"
    );
    assert!(
        head_answer.is_empty() || status_line(&head_answer).starts_with("HTTP/1.1 408"),
        "{head_answer:?}"
    );
    assert!(
        body_after >= Duration::from_secs(29) && body_after < Duration::from_secs(40),
        "a trickled body is refused after the 30 s body timeout, not {body_after:?}"
    );
    assert!(
        status_line(&body_answer).starts_with("HTTP/1.1 408"),
        "a trickled body gets 408 (clients retry it): {body_answer:?}"
    );
    assert!(
        body_answer.contains("did not arrive within 30s"),
        "{body_answer:?}"
    );
    assert_eq!(
        agent.spool().usage().records,
        10,
        "only the well-behaved requests were stored"
    );
}

#[tokio::test]
async fn grpc_metadata_over_the_limit_is_refused() {
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;

    let dir = tempfile::tempdir().unwrap();
    let agent = start_agent(
        &config_toml(dir.path(), "").replace("grpc_listen = \"\"", "grpc_listen = \"127.0.0.1:0\""),
    )
    .await;
    let mut client = TraceServiceClient::new(grpc_channel(agent.grpc_addrs()[0]).await);
    let request = || tonic::Request::new(trace_request("g", 1));

    let mut big = request();
    big.metadata_mut()
        .insert("x-large", "a".repeat(100 << 10).parse().unwrap());
    let refused = client.export(big).await;
    assert!(refused.is_err(), "100 KiB of metadata: {refused:?}");

    // The agent is still serving (a fresh connection: the refused one may be gone).
    let mut client = TraceServiceClient::new(grpc_channel(agent.grpc_addrs()[0]).await);
    client.export(request()).await.expect("a normal call");
    assert_eq!(agent.spool().usage().records, 1);
}

/// A wildcard listener is reachable from other machines: the config needs `allow_remote` and a
/// token, and then every request needs the token (tried over loopback; nothing leaves it).
#[tokio::test]
async fn a_remote_listener_needs_allow_remote_and_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let server = |extra: &str| {
        format!(
            "[server]\nlisten = \"0.0.0.0:0\"\ngrpc_listen = \"\"\n{extra}\n[spool]\ndir = \"{}\"\n",
            dir.path().display()
        )
    };
    let validated = |toml: &str| {
        let config = otlp_spool::config::RawConfig::parse(toml).unwrap();
        config.validate("test")
    };
    for extra in ["", "auth_token = \"s3cret\"", "allow_remote = true"] {
        let err = validated(&server(extra)).unwrap_err().to_string();
        assert!(
            err.contains("allow_remote = true") && err.contains("auth_token"),
            "{extra:?}: {err}"
        );
    }
    let config = validated(&server(
        "allow_remote = true\nauth_token = \"s3cret-long-enough\"",
    ))
    .unwrap();
    let agent = otlp_spool::Agent::start(config).await.unwrap();
    let port = agent.http_addrs()[0].port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let (status, _) = post(addr, "/v1/traces", &[PROTOBUF], spans("r", 1)).await;
    assert_eq!(status, 401, "no token");
    let (status, _) = post(
        addr,
        "/v1/traces",
        &[PROTOBUF, ("authorization", "Bearer s3cret-long-enough")],
        spans("r", 1),
    )
    .await;
    assert_eq!(status, 200, "with the token");
    assert_eq!(agent.spool().usage().records, 1);
}
