//! The OTLP/HTTP receiver at its edges: malformed and hostile input, size limits, auth, the
//! non-OTLP endpoints, concurrency, and data held without a destination.
//!
//! Every refusal is checked for its status, a `google.rpc.Status` body in the request's content
//! type whose message says what was wrong, nothing stored in the spool, and the refusal counted.
//! Requests go over a raw TCP socket where the framing matters (header case, chunked bodies,
//! bodies larger than the limit) so that no client library smooths anything over.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends `head` (request line and headers, without the blank line) and `body` raw, with
/// `Connection: close`, and reads the whole response. Writing runs beside reading, so a server
/// that answers before reading the body (413) is heard even if it then resets the connection.
async fn raw(addr: SocketAddr, head: &str, body: Vec<u8>) -> Answer {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut rd, mut wr) = stream.into_split();
    let mut request = format!("{head}\r\nHost: {addr}\r\nConnection: close\r\n\r\n").into_bytes();
    request.extend_from_slice(&body);
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&request).await;
        let _ = wr.flush().await;
        wr // keep the write half open until the response is read
    });
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rd.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => panic!("no complete response within 10 s; got {buf:?}"),
        }
        if complete(&buf) {
            break;
        }
    }
    writer.abort();
    parse_response(&buf)
}

fn split_head(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let at = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    Some((&buf[..at], &buf[at + 4..]))
}

fn content_length(head: &[u8]) -> Option<usize> {
    String::from_utf8_lossy(head).lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse().ok())?
    })
}

fn complete(buf: &[u8]) -> bool {
    split_head(buf)
        .is_some_and(|(head, body)| content_length(head).is_some_and(|n| body.len() >= n))
}

fn parse_response(buf: &[u8]) -> Answer {
    let (head, body) = split_head(buf).unwrap_or_else(|| {
        panic!(
            "no HTTP response head in {:?}",
            String::from_utf8_lossy(buf)
        )
    });
    let head = String::from_utf8_lossy(head).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let mut headers = reqwest::header::HeaderMap::new();
    for (name, value) in lines.filter_map(|l| l.split_once(':')) {
        headers.append(
            reqwest::header::HeaderName::from_bytes(name.trim().as_bytes())
                .unwrap_or_else(|e| panic!("header name {name:?}: {e}")),
            reqwest::header::HeaderValue::from_str(value.trim())
                .unwrap_or_else(|e| panic!("header {name}'s value {value:?}: {e}")),
        );
    }
    let n = content_length(head.as_bytes()).unwrap_or(body.len());
    Answer {
        status,
        headers,
        body: body[..n.min(body.len())].to_vec(),
    }
}

/// A POST with `headers` and a `Content-Length` body.
async fn post_raw(addr: SocketAddr, path: &str, headers: &[&str], body: Vec<u8>) -> Answer {
    let mut head = format!("POST {path} HTTP/1.1\r\nContent-Length: {}", body.len());
    for h in headers {
        head.push_str("\r\n");
        head.push_str(h);
    }
    raw(addr, &head, body).await
}

/// A POST with `Transfer-Encoding: chunked` and no `Content-Length`, in chunks of `chunk` bytes.
async fn post_chunked(
    addr: SocketAddr,
    path: &str,
    headers: &[&str],
    body: &[u8],
    chunk: usize,
) -> Answer {
    let mut head = format!("POST {path} HTTP/1.1\r\nTransfer-Encoding: chunked");
    for h in headers {
        head.push_str("\r\n");
        head.push_str(h);
    }
    let mut framed = Vec::new();
    for c in body.chunks(chunk) {
        framed.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        framed.extend_from_slice(c);
        framed.extend_from_slice(b"\r\n");
    }
    framed.extend_from_slice(b"0\r\n\r\n");
    raw(addr, &head, framed).await
}

async fn get(addr: SocketAddr, path: &str, headers: &[&str]) -> Answer {
    let mut head = format!("GET {path} HTTP/1.1");
    for h in headers {
        head.push_str("\r\n");
        head.push_str(h);
    }
    raw(addr, &head, Vec::new()).await
}

const CT_PB: &str = "Content-Type: application/x-protobuf";
const CT_JSON: &str = "Content-Type: application/json";

fn records(agent: &otlp_spool::Agent) -> u64 {
    agent.spool().usage().records
}

fn refused_total(agent: &otlp_spool::Agent) -> u64 {
    agent.status()["refused_requests"]
        .as_object()
        .expect("refused_requests")
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum()
}

async fn agent_with(dir: &std::path::Path, extra: &str) -> otlp_spool::Agent {
    start_agent(&config_toml(dir, extra)).await
}

/// An agent with extra `[server]` keys (which `config_toml` cannot add).
async fn agent_with_server(dir: &std::path::Path, server: &str) -> otlp_spool::Agent {
    start_agent(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ngrpc_listen = \"\"\n{server}\n[spool]\ndir = \"{}\"\n",
        dir.display()
    ))
    .await
}

/// Asserts a refusal: status, message (in `content_type`) containing every `needles`, and one
/// more refusal counted under `reason` with nothing stored.
async fn expect_refusal(
    agent: &otlp_spool::Agent,
    resp: Answer,
    status: u16,
    content_type: &str,
    reason: &str,
    before: u64,
    needles: &[&str],
) {
    assert_eq!(resp.status, status, "status; body: {}", resp.text());
    let message = resp.rpc_message(content_type);
    for n in needles {
        assert!(
            message.to_lowercase().contains(&n.to_lowercase()),
            "message {message:?} should mention {n:?}"
        );
    }
    assert_eq!(records(agent), 0, "nothing stored after a {status}");
    assert_eq!(
        refused(agent, reason),
        before + 1,
        "refusal counted as {reason}"
    );
}

/// One gzip member that inflates to `mib` MiB of zeros, about 1000:1, built without running the
/// compressor over all of it: a 1 MiB deflate segment, sync-flushed so it ends byte-aligned and
/// refers only to its own output, repeated; then a final empty block and the gzip trailer.
fn gzip_bomb(mib: u32) -> Vec<u8> {
    let zeros = vec![0u8; 1 << 20];
    let mut deflate = flate2::Compress::new(flate2::Compression::best(), false);
    let mut segment = Vec::with_capacity(64 << 10);
    deflate
        .compress_vec(&zeros, &mut segment, flate2::FlushCompress::Sync)
        .unwrap();
    assert_eq!(deflate.total_in(), 1 << 20, "segment holds the whole MiB");
    let mut crc = flate2::Crc::new();
    let mut bomb = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    for _ in 0..mib {
        bomb.extend_from_slice(&segment);
        crc.update(&zeros);
    }
    bomb.extend_from_slice(&[0x03, 0x00]); // final fixed-Huffman block, end-of-block only
    bomb.extend_from_slice(&crc.sum().to_le_bytes());
    bomb.extend_from_slice(&(mib << 20).to_le_bytes());
    bomb
}

/// Peak resident set size of this process, from /proc (kB).
fn peak_rss_kb() -> u64 {
    support::process::proc_status_kb("self", "VmHWM")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_protobuf_is_400_in_protobuf_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let agent = agent_with(dir.path(), "").await;
    let addr = agent.http_addrs()[0];
    // A length prefix promising 5 bytes with 2 behind it, and bytes that are no protobuf at all.
    for (i, body) in [b"\x0a\x05ab".to_vec(), b"\xff\xff\xff\xff".to_vec()]
        .into_iter()
        .enumerate()
    {
        let resp = post_raw(addr, "/v1/traces", &[CT_PB], body).await;
        expect_refusal(
            &agent,
            resp,
            400,
            "application/x-protobuf",
            "invalid",
            i as u64,
            &["invalid OTLP protobuf", "ExportTraceServiceRequest"],
        )
        .await;
    }
    // The right bytes for the wrong signal are still checked against the route's message type.
    let resp = post_raw(addr, "/v1/logs", &[CT_PB], b"\x0a\x03\x0a\x01".to_vec()).await;
    expect_refusal(
        &agent,
        resp,
        400,
        "application/x-protobuf",
        "invalid",
        2,
        &["ExportLogsServiceRequest"],
    )
    .await;
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_is_400_naming_the_problem_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let agent = agent_with(dir.path(), "").await;
    let addr = agent.http_addrs()[0];
    let span = |trace_id: &str| {
        format!(
            r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{{"name":"s","traceId":"{trace_id}","spanId":"0102030405060708"}}]}}]}}]}}"#
        )
    };
    let cases: Vec<(String, Vec<&str>)> = vec![
        ("this is not json".into(), vec!["not valid JSON"]),
        (r#"{"resourceSpans": [ "#.into(), vec!["not valid JSON"]),
        ("[1, 2]".into(), vec!["must be a JSON object"]),
        (r#"{"resourceSpans": 5}"#.into(), vec!["resourceSpans"]),
        (
            r#"{"resourceSpans": [{"scopeSpans": [{"spans": [{"name": 7}]}]}]}"#.into(),
            vec!["resourceSpans[0].scopeSpans[0].spans[0].name"],
        ),
        (
            span("zz0102030405060708090a0b0c0d0e0f"),
            vec!["traceId", "hex"],
        ),
        (span("0102"), vec!["traceId", "32 hex characters"]),
    ];
    for (i, (body, needles)) in cases.into_iter().enumerate() {
        let resp = post_raw(addr, "/v1/traces", &[CT_JSON], body.clone().into_bytes()).await;
        assert_eq!(resp.status, 400, "{body}: {}", resp.text());
        expect_refusal(
            &agent,
            resp,
            400,
            "application/json",
            "invalid",
            i as u64,
            &needles,
        )
        .await;
    }
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_content_type_or_encoding_is_415() {
    let dir = tempfile::tempdir().unwrap();
    let agent = agent_with(dir.path(), "").await;
    let addr = agent.http_addrs()[0];
    let resp = post_raw(
        addr,
        "/v1/traces",
        &["Content-Type: text/plain"],
        spans("t", 1),
    )
    .await;
    expect_refusal(
        &agent,
        resp,
        415,
        "application/json",
        "invalid",
        0,
        &["Content-Type", "text/plain", "application/x-protobuf"],
    )
    .await;
    // No Content-Type at all.
    let resp = post_raw(addr, "/v1/traces", &[], spans("t", 1)).await;
    expect_refusal(
        &agent,
        resp,
        415,
        "application/json",
        "invalid",
        1,
        &["Content-Type"],
    )
    .await;
    // An encoding other than gzip: the answer is in the request's (known) format.
    let resp = post_raw(
        addr,
        "/v1/traces",
        &[CT_PB, "Content-Encoding: br"],
        spans("t", 1),
    )
    .await;
    expect_refusal(
        &agent,
        resp,
        415,
        "application/x-protobuf",
        "invalid",
        2,
        &["Content-Encoding", "br"],
    )
    .await;
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_that_is_not_gzip_is_400() {
    let dir = tempfile::tempdir().unwrap();
    let agent = agent_with(dir.path(), "").await;
    let addr = agent.http_addrs()[0];
    let resp = post_raw(
        addr,
        "/v1/traces",
        &[CT_PB, "Content-Encoding: gzip"],
        spans("t", 3),
    )
    .await;
    expect_refusal(
        &agent,
        resp,
        400,
        "application/x-protobuf",
        "invalid",
        0,
        &["gzip"],
    )
    .await;
    // A gzip stream cut short.
    let mut cut = gzip(&spans("t", 50));
    cut.truncate(cut.len() / 2);
    let resp = post_raw(
        addr,
        "/v1/traces",
        &[CT_JSON, "Content-Encoding: gzip"],
        cut,
    )
    .await;
    expect_refusal(
        &agent,
        resp,
        400,
        "application/json",
        "invalid",
        1,
        &["gzip"],
    )
    .await;
    // Control: the same request properly gzipped is taken.
    let resp = post_raw(
        addr,
        "/v1/traces",
        &[CT_PB, "Content-Encoding: gzip"],
        gzip(&spans("t", 3)),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(agent.status()["received"]["traces"]["items"], 3);
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_bomb_is_413_without_inflating_it() {
    let dir = tempfile::tempdir().unwrap();
    let agent = agent_with_server(
        dir.path(),
        "max_body = \"1MiB\"\nmax_decompressed = \"1MiB\"",
    )
    .await;
    let addr = agent.http_addrs()[0];
    let bomb = gzip_bomb(100);
    assert!(bomb.len() < 200 << 10, "bomb is {} bytes", bomb.len());
    // It is a real gzip stream of zeros (checked on its first 2 MiB only).
    let mut head = Vec::new();
    std::io::Read::read_to_end(
        &mut std::io::Read::take(flate2::read::GzDecoder::new(&bomb[..]), 2 << 20),
        &mut head,
    )
    .unwrap();
    assert!(head.len() == 2 << 20 && head.iter().all(|&b| b == 0));
    let peak_before = peak_rss_kb();
    let resp = post_raw(addr, "/v1/traces", &[CT_PB, "Content-Encoding: gzip"], bomb).await;
    let grew_mib = (peak_rss_kb().saturating_sub(peak_before)) / 1024;
    eprintln!("peak RSS grew by {grew_mib} MiB refusing the bomb");
    expect_refusal(
        &agent,
        resp,
        413,
        "application/x-protobuf",
        "too_large",
        0,
        &["decompressed", "server.max_decompressed"],
    )
    .await;
    assert!(
        grew_mib < 40,
        "peak RSS grew by {grew_mib} MiB while refusing a 100 MiB gzip bomb"
    );
    // Many small members that add up past the limit are caught too (MultiGzDecoder).
    let member = gzip(&vec![0u8; 256 << 10]);
    let many: Vec<u8> = std::iter::repeat_n(member, 8).flatten().collect();
    let resp = post_raw(
        addr,
        "/v1/traces",
        &[CT_JSON, "Content-Encoding: gzip"],
        many,
    )
    .await;
    expect_refusal(
        &agent,
        resp,
        413,
        "application/json",
        "too_large",
        1,
        &["server.max_decompressed"],
    )
    .await;
    agent.shutdown().await;
}

/// OTLP/JSON takes many times its size in memory to transcode: it is held to 8 MiB once
/// decompressed even when `max_decompressed` is larger, and told so; protobuf of that size is
/// accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_over_its_own_limit_is_413_and_says_use_protobuf() {
    let dir = tempfile::tempdir().unwrap();
    let agent = agent_with_server(dir.path(), "").await; // max_body 16 MiB, max_decompressed 64 MiB
    let addr = agent.http_addrs()[0];
    let limit = otlp_spool::receiver::decode::MAX_JSON_BODY as usize;
    // Valid JSON, one byte over the limit: an unknown field padded with spaces.
    let mut json = br#"{"resourceSpans":[],"future":""#.to_vec();
    json.resize(limit - 1, b' ');
    json.extend_from_slice(b"\"}");
    assert_eq!(json.len(), limit + 1);
    for (before, headers, body) in [
        (0, vec![CT_JSON], json.clone()),
        (1, vec![CT_JSON, "Content-Encoding: gzip"], gzip(&json)),
    ] {
        let resp = post_raw(addr, "/v1/traces", &headers, body).await;
        expect_refusal(
            &agent,
            resp,
            413,
            "application/json",
            "too_large",
            before,
            &["OTLP/JSON", "use OTLP/protobuf"],
        )
        .await;
    }
    // The same size in protobuf is fine (a 9 MiB span name).
    let big = spans(&"n".repeat(limit + 1), 1);
    let resp = post_raw(addr, "/v1/traces", &[CT_PB], big).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_over_max_body_is_413_with_or_without_content_length() {
    let dir = tempfile::tempdir().unwrap();
    let agent = agent_with_server(dir.path(), "max_body = \"64KiB\"").await;
    let addr = agent.http_addrs()[0];
    let big = spans("a-rather-long-span-name-to-take-room", 4000);
    assert!(big.len() > 128 << 10, "{} bytes", big.len());
    // Declared too large: refused from the header.
    let resp = post_raw(addr, "/v1/traces", &[CT_PB], big.clone()).await;
    expect_refusal(
        &agent,
        resp,
        413,
        "application/x-protobuf",
        "too_large",
        0,
        &["server.max_body", "65536"],
    )
    .await;
    // Chunked: found too large while reading.
    let resp = post_chunked(addr, "/v1/traces", &[CT_PB], &big, 8 << 10).await;
    expect_refusal(
        &agent,
        resp,
        413,
        "application/x-protobuf",
        "too_large",
        1,
        &["server.max_body"],
    )
    .await;
    // A JSON client hears it in JSON.
    let resp = post_chunked(addr, "/v1/traces", &[CT_JSON], &[b' '; 100 << 10], 4096).await;
    expect_refusal(
        &agent,
        resp,
        413,
        "application/json",
        "too_large",
        2,
        &["server.max_body"],
    )
    .await;
    // Control: just under the limit, chunked, is taken.
    let ok = spans("s", 500);
    assert!(ok.len() < 64 << 10);
    let resp = post_chunked(addr, "/v1/traces", &[CT_PB], &ok, 1000).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(records(&agent), 1);
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_path_is_404_and_wrong_method_is_405_with_allow() {
    let dir = tempfile::tempdir().unwrap();
    let agent = agent_with(dir.path(), "").await;
    let addr = agent.http_addrs()[0];
    let mut invalid = 0;
    for path in ["/v1/spans", "/v1/traces/", "/", "/v2/traces"] {
        let resp = post_raw(addr, path, &[CT_JSON], b"{}".to_vec()).await;
        expect_refusal(
            &agent,
            resp,
            404,
            "application/json",
            "invalid",
            invalid,
            &["no such path", "/v1/traces"],
        )
        .await;
        invalid += 1;
    }
    // A protobuf client hears its 404 in protobuf.
    let resp = post_raw(addr, "/v1/span", &[CT_PB], spans("t", 1)).await;
    expect_refusal(
        &agent,
        resp,
        404,
        "application/x-protobuf",
        "invalid",
        invalid,
        &["no such path"],
    )
    .await;
    invalid += 1;
    let resp = get(addr, "/v1/traces", &[]).await;
    assert_eq!(resp.header("allow"), Some("POST"));
    expect_refusal(
        &agent,
        resp,
        405,
        "application/json",
        "invalid",
        invalid,
        &["GET", "POST"],
    )
    .await;
    invalid += 1;
    for path in ["/healthz", "/status", "/metrics"] {
        let resp = post_raw(addr, path, &[CT_JSON], b"{}".to_vec()).await;
        assert_eq!(resp.header("allow"), Some("GET, HEAD"), "{path}");
        expect_refusal(
            &agent,
            resp,
            405,
            "application/json",
            "invalid",
            invalid,
            &["POST", "GET"],
        )
        .await;
        invalid += 1;
    }
    let resp = raw(addr, "PUT /v1/logs HTTP/1.1\r\nContent-Length: 0", vec![]).await;
    assert_eq!(resp.status, 405);
    assert_eq!(resp.header("allow"), Some("POST"));
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn success_answers_in_the_request_format_whatever_the_framing() {
    let dir = tempfile::tempdir().unwrap();
    let agent = agent_with(dir.path(), "").await;
    let addr = agent.http_addrs()[0];

    let resp = post_raw(addr, "/v1/traces", &[CT_PB], spans("pb", 2)).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.header("content-type"), Some("application/x-protobuf"));
    assert!(
        resp.body.is_empty(),
        "protobuf success body {:?}",
        resp.body
    );

    let json = r#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"name":"j","traceId":"0102030405060708090a0b0c0d0e0f10","spanId":"0102030405060708"}]}]}]}"#;
    let resp = post_raw(addr, "/v1/traces", &[CT_JSON], json.into()).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.header("content-type"), Some("application/json"));
    assert_eq!(resp.text(), "{}");

    // Header names in any case, media-type parameters, upper-case media type.
    let resp = post_raw(
        addr,
        "/v1/traces",
        &["CONTENT-TYPE: application/x-protobuf; charset=utf-8"],
        spans("upper", 1),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let resp = post_raw(
        addr,
        "/v1/traces",
        &["content-type: Application/JSON ; charset=UTF-8"],
        json.into(),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.text(), "{}");
    let resp = post_raw(
        addr,
        "/v1/traces",
        &[CT_PB, "CONTENT-ENCODING: GZIP"],
        gzip(&spans("gz", 4)),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());

    // Chunked, in small pieces, gzipped and not.
    let resp = post_chunked(addr, "/v1/traces", &[CT_PB], &spans("chunk", 5), 7).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let resp = post_chunked(
        addr,
        "/v1/traces",
        &[CT_JSON, "Content-Encoding: gzip"],
        &gzip(json.as_bytes()),
        16,
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.text(), "{}");

    assert_eq!(records(&agent), 7);
    assert_eq!(
        agent.status()["received"]["traces"]["items"],
        2 + 1 + 1 + 1 + 4 + 5 + 1
    );

    // Empty export requests: accepted, nothing stored.
    for (ct, body) in [
        (CT_PB, Vec::new()),
        (CT_JSON, b"{}".to_vec()),
        (CT_JSON, br#"{"resourceSpans":[]}"#.to_vec()),
        (
            CT_JSON,
            br#"{"resourceSpans":[{"scopeSpans":[]}]}"#.to_vec(),
        ),
    ] {
        let resp = post_raw(addr, "/v1/traces", &[ct], body.clone()).await;
        assert_eq!(resp.status, 200, "{:?}: {}", body, resp.text());
    }
    let resp = post_raw(addr, "/v1/logs", &[CT_PB], Vec::new()).await;
    assert_eq!(resp.status, 200);
    assert_eq!(records(&agent), 7, "empty requests store nothing");
    assert_eq!(refused_total(&agent), 0);
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_token_is_required_except_for_healthz() {
    let dir = tempfile::tempdir().unwrap();
    let agent = agent_with_server(dir.path(), "auth_token = \"s3cret-t0ken\"").await;
    let addr = agent.http_addrs()[0];

    let mut unauthorized = 0;
    for creds in [
        None,
        Some("Authorization: Bearer wrong"),
        Some("x-api-key: wrong"),
        Some("Authorization: Bearer s3cret-t0ke"),
        Some("Authorization: Basic s3cret-t0ken"),
        Some("Authorization: s3cret-t0ken"),
    ] {
        let headers: Vec<&str> = [CT_JSON].into_iter().chain(creds).collect();
        let resp = post_raw(addr, "/v1/traces", &headers, b"{}".to_vec()).await;
        expect_refusal(
            &agent,
            resp,
            401,
            "application/json",
            "unauthorized",
            unauthorized,
            &["token", "Authorization: Bearer", "x-api-key"],
        )
        .await;
        unauthorized += 1;
    }
    // A protobuf client hears its 401 in protobuf.
    let resp = post_raw(addr, "/v1/traces", &[CT_PB], spans("t", 1)).await;
    expect_refusal(
        &agent,
        resp,
        401,
        "application/x-protobuf",
        "unauthorized",
        unauthorized,
        &["token"],
    )
    .await;
    unauthorized += 1;
    assert!(
        !format!("{:?}", agent.status()).contains("s3cret-t0ken"),
        "the token shows in /status"
    );

    for creds in [
        "Authorization: Bearer s3cret-t0ken",
        "authorization: bearer s3cret-t0ken",
        "x-api-key: s3cret-t0ken",
        "X-API-KEY: s3cret-t0ken",
    ] {
        let resp = post_raw(addr, "/v1/traces", &[CT_PB, creds], spans("ok", 2)).await;
        assert_eq!(resp.status, 200, "{creds}: {}", resp.text());
    }
    assert_eq!(records(&agent), 4);

    assert_eq!(get(addr, "/healthz", &[]).await.status, 200);
    for path in ["/status", "/metrics"] {
        let resp = get(addr, path, &[]).await;
        assert_eq!(resp.status, 401, "{path} without token");
        unauthorized += 1;
        let resp = get(addr, path, &["x-api-key: s3cret-t0ken"]).await;
        assert_eq!(resp.status, 200, "{path} with token");
    }
    assert_eq!(refused(&agent, "unauthorized"), unauthorized);
    agent.shutdown().await;
}

/// Checks every line of a Prometheus text exposition: comments are `# HELP name text` or
/// `# TYPE name kind`, samples are `name{label="value",...} number`, every sample's family was
/// declared by a preceding `# TYPE`, and no family is declared twice.
fn check_exposition(text: &str) {
    fn is_name(s: &str) -> bool {
        let mut chars = s.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    }
    fn is_value(s: &str) -> bool {
        s.parse::<f64>().is_ok() || ["NaN", "+Inf", "-Inf"].contains(&s)
    }
    fn labels_ok(mut s: &str) -> bool {
        // s is the inside of {...}
        while !s.is_empty() {
            let Some((name, rest)) = s.split_once("=\"") else {
                return false;
            };
            if !is_name(name) || name.starts_with("__") {
                return false;
            }
            // value up to an unescaped quote
            let mut end = None;
            let mut escaped = false;
            for (i, c) in rest.char_indices() {
                match (escaped, c) {
                    (true, _) => escaped = false,
                    (false, '\\') => escaped = true,
                    (false, '"') => {
                        end = Some(i);
                        break;
                    }
                    (false, '\n') => return false,
                    _ => {}
                }
            }
            let Some(end) = end else { return false };
            s = &rest[end + 1..];
            if let Some(r) = s.strip_prefix(',') {
                s = r;
            } else if !s.is_empty() {
                return false;
            }
        }
        true
    }
    let mut typed = std::collections::HashSet::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kw, name, tail) = (parts.next(), parts.next(), parts.next());
            let name = name.unwrap_or_else(|| panic!("bad comment line {line:?}"));
            assert!(is_name(name), "bad metric name in {line:?}");
            match kw {
                Some("HELP") => {}
                Some("TYPE") => {
                    assert!(
                        ["counter", "gauge", "histogram", "summary", "untyped"]
                            .contains(&tail.unwrap_or("")),
                        "bad TYPE line {line:?}"
                    );
                    assert!(typed.insert(name.to_string()), "{name} typed twice");
                }
                _ => panic!("unknown comment {line:?}"),
            }
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value in {line:?}"));
        assert!(is_value(value), "bad value in {line:?}");
        let name = match series.split_once('{') {
            Some((name, labels)) => {
                let inner = labels
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("unclosed labels in {line:?}"));
                assert!(labels_ok(inner), "bad labels in {line:?}");
                name
            }
            None => series,
        };
        assert!(is_name(name), "bad metric name in {line:?}");
        assert!(typed.contains(name), "{name} has no # TYPE before it");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_status_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start().await;
    // The sink refuses, so the data stays pending for the destination.
    sink.set_fallback(Some(Reply::Status(503, None)));
    let agent = agent_with(
        dir.path(),
        &destination("up", &sink, "signals = [\"traces\"]"),
    )
    .await;
    let addr = agent.http_addrs()[0];
    for n in [3, 4] {
        let resp = post_raw(addr, "/v1/traces", &[CT_PB], spans("m", n)).await;
        assert_eq!(resp.status, 200);
    }
    let resp = post_raw(addr, "/v1/logs", &[CT_PB], b"garbage".to_vec()).await;
    assert_eq!(resp.status, 400);

    let resp = get(addr, "/healthz", &[]).await;
    assert_eq!(resp.status, 200);

    let resp = get(addr, "/status", &[]).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-type"), Some("application/json"));
    let status: Value = serde_json::from_slice(&resp.body).expect("status is JSON");
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    assert!(status["uptime_seconds"].is_u64());
    assert_eq!(status["spool"]["records"], 2);
    assert!(status["spool"]["bytes"].as_u64().unwrap() > 0);
    assert!(status["spool"]["disk_bytes"].is_u64());
    assert!(status["spool"]["max_bytes"].is_u64());
    // Per stream: the two trace records in one segment file; nothing else written.
    let traces = &status["spool"]["streams"]["traces"];
    assert_eq!(traces["records"], 2);
    assert_eq!(traces["segments"], 1);
    assert!(traces["disk_bytes"].as_u64().unwrap() >= traces["bytes"].as_u64().unwrap());
    assert_eq!(status["spool"]["streams"]["logs"]["segments"], 0);
    assert_eq!(status["spool"]["damaged_records"], 0);
    assert_eq!(status["received"]["traces"]["items"], 7);
    assert_eq!(status["received"]["traces"]["http_requests"], 2);
    assert_eq!(status["received"]["logs"]["items"], 0);
    assert_eq!(status["refused_requests"]["invalid"], 1);
    assert!(status["dropped"].is_object());
    let dest = &status["destinations"][0];
    assert_eq!(dest["name"], "up");
    assert_eq!(dest["endpoint"].as_str().unwrap(), sink.endpoint());
    assert_eq!(dest["signals"]["traces"]["pending_records"], 2);
    assert!(
        status.get("holding").is_none(),
        "holding with a destination"
    );

    let resp = get(addr, "/metrics", &[]).await;
    assert_eq!(resp.status, 200);
    assert!(resp
        .header("content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = resp.text();
    check_exposition(&text);
    let sample = |series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no sample {series} in\n{text}"))
    };
    assert_eq!(
        sample("otlp_spool_received_items_total{signal=\"traces\"}"),
        7.0
    );
    assert_eq!(
        sample("otlp_spool_received_items_total{signal=\"logs\"}"),
        0.0
    );
    assert_eq!(sample("otlp_spool_spool_records"), 2.0);
    assert_eq!(
        sample("otlp_spool_spool_stream_segments{stream=\"traces\"}"),
        1.0
    );
    assert_eq!(
        sample("otlp_spool_refused_requests_total{reason=\"invalid\"}"),
        1.0
    );
    assert_eq!(
        sample("otlp_spool_destination_pending_records{destination=\"up\",signal=\"traces\"}"),
        2.0
    );

    // HEAD answers without a body.
    let resp = raw(addr, "HEAD /healthz HTTP/1.1", vec![]).await;
    assert_eq!(resp.status, 200);
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_requests_are_all_durable() {
    let dir = tempfile::tempdir().unwrap();
    let agent = agent_with(dir.path(), "").await;
    let addr = agent.http_addrs()[0];
    let started = Instant::now();
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            tokio::spawn(post(
                addr,
                "/v1/traces",
                &[PROTOBUF],
                spans(&format!("c{i}"), 3),
            ))
        })
        .collect();
    for t in tasks {
        let (status, body) = t.await.unwrap();
        assert_eq!(status, 200, "{body}");
    }
    let took = started.elapsed();
    // Every acknowledged request is in the spool (append returns after the fsync).
    assert_eq!(records(&agent), 50);
    assert_eq!(agent.status()["received"]["traces"]["items"], 150);
    let stored = agent
        .spool()
        .read(otlp_spool::otlp::Signal::Traces, 0, u64::MAX, u64::MAX)
        .unwrap();
    assert_eq!(stored.len(), 50);
    assert_eq!(
        stored
            .iter()
            .map(|r| u64::from(r.header.items))
            .sum::<u64>(),
        150
    );
    eprintln!("50 concurrent requests acknowledged in {took:?}");
    agent.shutdown().await;
    // And after a restart, still there.
    let agent = agent_with(dir.path(), "").await;
    assert_eq!(records(&agent), 50);
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_data_is_delivered_once_a_destination_is_configured() {
    let dir = tempfile::tempdir().unwrap();
    let agent = agent_with(dir.path(), "").await;
    let addr = agent.http_addrs()[0];
    for i in 0..3 {
        let resp = post_raw(addr, "/v1/traces", &[CT_PB], spans(&format!("held{i}"), 5)).await;
        assert_eq!(resp.status, 200);
    }
    let resp = post_raw(addr, "/v1/logs", &[CT_PB], logs("log", 4)).await;
    assert_eq!(resp.status, 200);
    let status = agent.status();
    assert!(
        status["holding"]
            .as_str()
            .is_some_and(|s| s.contains("holding")),
        "status says it is holding: {status}"
    );
    assert_eq!(records(&agent), 4);
    agent.shutdown().await;

    let sink = Sink::start().await;
    let agent = agent_with(dir.path(), &destination("late", &sink, "")).await;
    assert!(agent.status().get("holding").is_none());
    assert_eq!(
        sink.wait_items("/v1/traces", 15, Duration::from_secs(10))
            .await,
        15
    );
    assert_eq!(
        sink.wait_items("/v1/logs", 4, Duration::from_secs(10))
            .await,
        4
    );
    wait_until(
        || records(&agent) == 0,
        Duration::from_secs(10),
        "spool drains",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(sink.items("/v1/traces"), 15, "exactly the held spans");
    assert_eq!(sink.items("/v1/logs"), 4, "exactly the held logs");
    let names = sink.names("/v1/traces");
    assert_eq!(names.len(), 15);
    assert!(names.iter().any(|n| n == "held0-0") && names.iter().any(|n| n == "held2-4"));
    agent.shutdown().await;
}

/// What "a destination added later starts from the oldest held record" means in practice:
/// "held" is what is still in the spool. A record every configured destination already
/// acknowledged is deleted, so a destination added afterwards never sees it; a record still
/// pending for some destination (or for none configured) goes to the newcomer from the oldest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destination_added_later_starts_from_the_oldest_held_record() {
    let dir = tempfile::tempdir().unwrap();
    let sink_a = Sink::start().await;
    let sink_b = Sink::start().await;

    // Phase 1: only A, which takes everything: delivered, acknowledged, deleted.
    let agent = agent_with(dir.path(), &destination("a", &sink_a, "")).await;
    let addr = agent.http_addrs()[0];
    let resp = post_raw(addr, "/v1/traces", &[CT_PB], spans("gone", 3)).await;
    assert_eq!(resp.status, 200);
    assert_eq!(
        sink_a
            .wait_items("/v1/traces", 3, Duration::from_secs(10))
            .await,
        3
    );
    wait_until(
        || records(&agent) == 0,
        Duration::from_secs(10),
        "A's delivery deletes the record",
    )
    .await;
    // Phase 1b: A refuses (503) so the next records stay held, pending for A.
    sink_a.set_fallback(Some(Reply::Status(503, None)));
    for i in 0..2 {
        let resp = post_raw(addr, "/v1/traces", &[CT_PB], spans(&format!("kept{i}"), 2)).await;
        assert_eq!(resp.status, 200);
    }
    assert_eq!(records(&agent), 2);
    agent.shutdown().await;

    // Phase 2: A (working again) and a new B.
    sink_a.set_fallback(None);
    let both = format!(
        "{}{}",
        destination("a", &sink_a, ""),
        destination("b", &sink_b, "")
    );
    let agent = agent_with(dir.path(), &both).await;
    let addr = agent.http_addrs()[0];
    assert_eq!(
        sink_b
            .wait_items("/v1/traces", 4, Duration::from_secs(10))
            .await,
        4
    );
    assert_eq!(
        sink_a
            .wait_items("/v1/traces", 7, Duration::from_secs(10))
            .await,
        7
    );
    let resp = post_raw(addr, "/v1/traces", &[CT_PB], spans("new", 1)).await;
    assert_eq!(resp.status, 200);
    assert_eq!(
        sink_b
            .wait_items("/v1/traces", 5, Duration::from_secs(10))
            .await,
        5
    );
    wait_until(
        || records(&agent) == 0,
        Duration::from_secs(10),
        "both acknowledged everything",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(
        sink_b.names("/v1/traces"),
        vec!["kept0-0", "kept0-1", "kept1-0", "kept1-1", "new-0"],
        "B gets the held records (oldest first) and new ones, not what A had already taken"
    );
    assert_eq!(sink_a.items("/v1/traces"), 8);
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_agent_on_the_same_spool_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let agent = agent_with(dir.path(), "").await;
    let config = otlp_spool::config::Config::parse(&config_toml(dir.path(), "")).unwrap();
    let err = match otlp_spool::Agent::start(config).await {
        Ok(_) => panic!("a second agent started on the same spool directory"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("in use by another otlp-spool"), "error: {err}");
    assert!(err.contains(&dir.path().display().to_string()), "{err}");
    // The first one is unharmed.
    let resp = post_raw(agent.http_addrs()[0], "/v1/traces", &[CT_PB], spans("x", 1)).await;
    assert_eq!(resp.status, 200);
    agent.shutdown().await;
}
