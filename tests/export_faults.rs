//! Export under upstream faults (README, "What it promises, and how": "At least once to every
//! destination" and "Never gives up on a good batch"): an upstream that refuses connections,
//! answers 503 with `Retry-After`, 400, 413, partial success, 401/403, or stalls past the timeout;
//! two destinations of which one fails; JSON without compression with custom headers. Each test
//! drives an in-process agent against the scripted test sink on loopback and checks what arrived
//! (names exact), how often and when the agent tried, and what `/status` says.

mod support;

use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use support::*;

const TRACES: &str = "/v1/traces";

/// A traces-only destination block with an explicit endpoint (which may have no server behind
/// it yet) and timeout; retry 50ms..500ms and linger 20ms like `support::destination`.
fn traces_destination(name: &str, endpoint: &str, timeout: &str, extra: &str) -> String {
    format!(
        "[[destination]]\nname = \"{name}\"\ntype = \"otlp_http\"\nendpoint = \"{endpoint}\"\nsignals = [\"traces\"]\nbatch = {{ linger = \"20ms\" }}\nretry = {{ initial = \"50ms\", max = \"500ms\" }}\ntimeout = \"{timeout}\"\n{extra}\n"
    )
}

/// A trace request with `resources` resources of `spans_each` spans named `<prefix><r>-<i>`.
fn multi_resource(prefix: &str, resources: usize, spans_each: usize) -> Vec<u8> {
    ExportTraceServiceRequest {
        resource_spans: (0..resources)
            .flat_map(|r| {
                let names = (0..spans_each).map(|i| format!("{prefix}{r}-{i}"));
                let mut request = trace_request_named(names);
                request.resource_spans[0].resource = Some(Resource {
                    attributes: vec![kv("service.name", &format!("svc-{r}"))],
                    ..Default::default()
                });
                request.resource_spans
            })
            .collect(),
    }
    .encode_to_vec()
}

/// Upstream down (connection refused), then back answering 503 + `Retry-After: 1` twice, then
/// 200: everything spooled meanwhile arrives exactly once; the refusal phase is paced by the
/// backoff; each 503 is followed by a pause of at least the second the upstream asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_then_retry_after_delivers_everything_with_backoff() {
    let reserved = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream = reserved.local_addr().unwrap();
    drop(reserved);

    let dir = tempfile::tempdir().unwrap();
    let toml = config_toml(
        dir.path(),
        &traces_destination("up", &format!("http://{upstream}"), "2s", ""),
    );
    let agent = start_agent(&toml).await;
    let started = Instant::now();
    for r in 0..3 {
        post_acked(&agent, TRACES, spans(&format!("outage{r}"), 10)).await;
    }
    tokio::time::sleep(Duration::from_millis(1000).saturating_sub(started.elapsed())).await;

    let down = signal_status(&agent, 0, "traces");
    let refused_attempts = num(&down["attempts"]);
    eprintln!("attempts while refused for ~1s: {refused_attempts}; status: {down}");
    // 50ms initial doubling to 500ms, jittered: ~4-6 attempts in a second; a hot loop would
    // make hundreds.
    assert!(
        (3..=10).contains(&refused_attempts),
        "attempts during ~1 s of connection refused: {refused_attempts} (want backoff: 3..=10)"
    );
    assert_eq!(num(&down["failed_attempts"]), refused_attempts);
    assert_eq!(num(&down["sent_items"]), 0);
    assert!(
        down["retry"].get("backoff").is_some(),
        "retry state while refused: {}",
        down["retry"]
    );
    assert!(
        down["last_error"]
            .as_str()
            .is_some_and(|e| e.contains(&upstream.port().to_string())),
        "last_error should name the upstream: {}",
        down["last_error"]
    );
    assert_eq!(num(&down["pending_records"]), 3);

    let sink = Sink::start_on(
        upstream,
        [Reply::Status(503, Some(1)), Reply::Status(503, Some(1))],
    )
    .await;
    let got = sink.wait_items(TRACES, 30, Duration::from_secs(10)).await;
    assert_eq!(got, 30, "items delivered after the outage");
    let want: Vec<String> = sorted(
        (0..3)
            .flat_map(|r| names(&format!("outage{r}"), 10))
            .collect(),
    );
    assert_eq!(sink.names(TRACES), want, "every span exactly once");

    let received = sink.received();
    assert!(!received[0].accepted && !received[1].accepted);
    for i in 0..2 {
        let gap = received[i + 1].at - received[i].at;
        eprintln!("gap after 503 + Retry-After: 1 (#{i}): {gap:?}");
        assert!(
            gap >= Duration::from_millis(950),
            "the attempt after a 503 with Retry-After: 1 came {gap:?} later"
        );
    }
    assert!(
        eventually(Duration::from_secs(2), || agent.spool().usage().records
            == 0)
        .await,
        "spool drains once delivered"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(sink.items(TRACES), 30, "nothing sent twice");
    let up = signal_status(&agent, 0, "traces");
    assert_eq!(up["retry"], "ready", "{up}");
    assert_eq!(num(&up["sent_items"]), 30);
    agent.shutdown().await;
}

/// A 400 dead-letters its batch (counted in three places, sent once, never retried), and later
/// data still flows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_request_is_dead_lettered_once_and_later_data_flows() {
    let sink = Sink::start().await;
    sink.script([Reply::Status(400, None)]);
    let dir = tempfile::tempdir().unwrap();
    let agent = start_agent(&config_toml(dir.path(), &destination("up", &sink, ""))).await;

    post_acked(&agent, TRACES, spans("bad", 10)).await;
    assert!(
        eventually(Duration::from_secs(5), || num(&signal_status(
            &agent, 0, "traces"
        )["dead_lettered_items"])
            == 10)
        .await,
        "the 400 batch is dead-lettered: {}",
        signal_status(&agent, 0, "traces")
    );
    post_acked(&agent, TRACES, spans("good", 10)).await;
    assert_eq!(
        sink.wait_items(TRACES, 10, Duration::from_secs(5)).await,
        10
    );
    tokio::time::sleep(Duration::from_millis(300)).await;

    let received = sink.received();
    let bad: Vec<_> = received
        .iter()
        .filter(|r| r.names.iter().any(|n| n.starts_with("bad-")))
        .collect();
    assert_eq!(bad.len(), 1, "the refused batch was sent exactly once");
    assert!(!bad[0].accepted);
    assert_eq!(sorted(bad[0].names.clone()), names("bad", 10));
    assert_eq!(sink.names(TRACES), names("good", 10));
    assert_eq!(received.len(), 2, "{received:?}");

    let status = agent.status();
    let t = &status["destinations"][0]["signals"]["traces"];
    assert_eq!(num(&t["dead_lettered_items"]), 10);
    assert_eq!(num(&t["sent_items"]), 10);
    assert_eq!(num(&status["dropped"]["dead_letter_items"]), 10);
    assert_eq!(num(&status["dropped"]["dead_letter_records"]), 1);
    assert_eq!(num(&status["spool"]["dead_letter_records"]), 1);
    assert!(
        t["last_error"].as_str().is_some_and(|e| e.contains("400")),
        "{}",
        t["last_error"]
    );
    assert!(
        eventually(Duration::from_secs(2), || agent.spool().usage().records
            == 0)
        .await
    );
    agent.shutdown().await;
}

/// A 413 on a four-resource batch: the agent halves it at a resource boundary and the two halves
/// (smaller, byte-exact pieces of the original) carry every item exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_large_splits_at_resource_boundaries() {
    let sink = Sink::start().await;
    sink.script([Reply::Status(413, None)]);
    let dir = tempfile::tempdir().unwrap();
    let agent = start_agent(&config_toml(
        dir.path(),
        &destination("up", &sink, "compression = \"none\""),
    ))
    .await;

    post_acked(&agent, TRACES, multi_resource("r", 4, 5)).await;
    assert_eq!(
        sink.wait_items(TRACES, 20, Duration::from_secs(5)).await,
        20
    );
    tokio::time::sleep(Duration::from_millis(200)).await;

    let received = sink.received();
    assert_eq!(received.len(), 3, "one 413, then two halves: {received:?}");
    let (whole, a, b) = (&received[0], &received[1], &received[2]);
    assert!(!whole.accepted && a.accepted && b.accepted);
    assert_eq!(whole.items, 20);
    assert_eq!((a.items, b.items), (10, 10));
    assert!(a.body_len < whole.body_len && b.body_len < whole.body_len);
    assert_eq!(
        a.body_len + b.body_len,
        whole.body_len,
        "uncompressed protobuf halves are exact pieces of the batch"
    );
    let want = sorted(
        (0..4)
            .flat_map(|r| (0..5).map(move |i| format!("r{r}-{i}")))
            .collect(),
    );
    assert_eq!(sorted(whole.names.clone()), want);
    assert_eq!(
        sink.names(TRACES),
        want,
        "every item once, across the halves"
    );

    let t = signal_status(&agent, 0, "traces");
    assert_eq!(num(&t["sent_items"]), 20, "{t}");
    assert_eq!(num(&t["attempts"]), 3, "{t}");
    assert_eq!(num(&t["failed_attempts"]), 1, "{t}");
    assert_eq!(num(&t["dead_lettered_items"]), 0, "{t}");
    assert!(
        eventually(Duration::from_secs(2), || agent.spool().usage().records
            == 0)
        .await
    );
    agent.shutdown().await;
}

/// A single-resource batch the upstream keeps refusing with 413 cannot be split: it is
/// dead-lettered after one attempt, not retried forever, and later data flows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_large_single_resource_is_dead_lettered() {
    let sink = Sink::start().await;
    sink.set_fallback(Some(Reply::Status(413, None)));
    let dir = tempfile::tempdir().unwrap();
    let agent = start_agent(&config_toml(dir.path(), &destination("up", &sink, ""))).await;

    post_acked(&agent, TRACES, spans("huge", 10)).await;
    assert!(
        eventually(Duration::from_secs(5), || num(&signal_status(
            &agent, 0, "traces"
        )["dead_lettered_items"])
            == 10)
        .await,
        "{}",
        signal_status(&agent, 0, "traces")
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        sink.received().len(),
        1,
        "413 on one resource: one attempt, then dead-lettered"
    );
    let status = agent.status();
    assert_eq!(num(&status["dropped"]["dead_letter_items"]), 10);
    assert_eq!(num(&status["spool"]["dead_letter_records"]), 1);
    assert!(
        status["destinations"][0]["signals"]["traces"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("413")),
        "{status}"
    );

    sink.set_fallback(None);
    post_acked(&agent, TRACES, spans("after", 3)).await;
    assert_eq!(sink.wait_items(TRACES, 3, Duration::from_secs(5)).await, 3);
    assert_eq!(sink.names(TRACES), names("after", 3));
    agent.shutdown().await;
}

/// 413 all the way down to one oversized resource: that resource is dead-lettered, and the
/// other resources of the same batch are still delivered (README: "Never gives up on a good
/// batch").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_large_resource_does_not_sink_the_rest_of_its_batch() {
    let sink = Sink::start().await;
    // [r0 r1 r2 r3] 413 -> [r0 r1] 413 -> [r0] 413 (cannot split) ; [r1] 200 ; [r2 r3] 200
    sink.script([
        Reply::Status(413, None),
        Reply::Status(413, None),
        Reply::Status(413, None),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let agent = start_agent(&config_toml(dir.path(), &destination("up", &sink, ""))).await;

    post_acked(&agent, TRACES, multi_resource("m", 4, 5)).await;
    let got = sink.wait_items(TRACES, 15, Duration::from_secs(3)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let want = sorted(
        (1..4)
            .flat_map(|r| (0..5).map(move |i| format!("m{r}-{i}")))
            .collect(),
    );
    assert_eq!(got, 15, "received: {:?}", sink.received());
    assert_eq!(sink.names(TRACES), want);
    assert_eq!(sink.received().len(), 5, "{:?}", sink.received());
    let t = signal_status(&agent, 0, "traces");
    assert_eq!(num(&t["sent_items"]), 15, "{t}");
    assert_eq!(num(&t["dead_lettered_items"]), 5, "{t}");
    assert!(agent.status()["spool"]["dead_letter_records"].as_u64() >= Some(1));
    assert!(
        eventually(Duration::from_secs(2), || agent.spool().usage().records
            == 0)
        .await
    );
    agent.shutdown().await;
}

/// OTLP partial success: counted, reported in `last_error`, and the batch is acknowledged (not
/// sent again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_success_is_counted_and_acked() {
    let sink = Sink::start().await;
    sink.script([Reply::Partial(2, "bad spans")]);
    let dir = tempfile::tempdir().unwrap();
    let agent = start_agent(&config_toml(dir.path(), &destination("up", &sink, ""))).await;

    post_acked(&agent, TRACES, spans("p", 10)).await;
    assert_eq!(
        sink.wait_items(TRACES, 10, Duration::from_secs(5)).await,
        10
    );
    assert!(
        eventually(Duration::from_secs(2), || num(&signal_status(
            &agent, 0, "traces"
        )["partial_rejected_items"])
            == 2)
        .await,
        "{}",
        signal_status(&agent, 0, "traces")
    );
    assert!(
        eventually(Duration::from_secs(2), || agent.spool().usage().records
            == 0)
        .await
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sink.received().len(), 1, "a partial success is not resent");
    let t = signal_status(&agent, 0, "traces");
    assert_eq!(num(&t["sent_items"]), 8, "{t}");
    assert_eq!(num(&t["dead_lettered_items"]), 0, "{t}");
    let err = t["last_error"].as_str().unwrap_or_default();
    assert!(
        err.contains("bad spans") && err.contains('2'),
        "last_error: {err:?}"
    );
    assert_eq!(num(&t["pending_records"]), 0);
    agent.shutdown().await;
}

/// 401/403 keep the data: retried at the slow pace (`retry.max`), status says `auth_failed`,
/// and everything arrives once the credentials are accepted again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_failures_keep_data_and_retry_slowly() {
    let sink = Sink::start().await;
    sink.script([
        Reply::Status(401, None),
        Reply::Status(403, None),
        Reply::Status(401, None),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let agent = start_agent(&config_toml(dir.path(), &destination("up", &sink, ""))).await;

    post_acked(&agent, TRACES, spans("auth", 10)).await;
    let mut seen_auth_failed = None;
    let delivered = eventually(Duration::from_secs(5), || {
        let retry = signal_status(&agent, 0, "traces")["retry"].clone();
        if let Some(state) = retry.get("auth_failed") {
            seen_auth_failed = Some(state.clone());
        }
        sink.items(TRACES) == 10
    })
    .await;
    assert!(delivered, "received: {:?}", sink.received());
    let state = seen_auth_failed.expect("status showed retry = auth_failed while failing");
    assert!(num(&state["consecutive_failures"]) >= 1, "{state}");

    let received = sink.received();
    assert_eq!(received.len(), 4, "three refusals then one success");
    for w in received.windows(2) {
        let gap = w[1].at - w[0].at;
        eprintln!("gap after an auth failure: {gap:?}");
        // retry.max = 500ms; the ordinary backoff would start at 50-100ms.
        assert!(
            gap >= Duration::from_millis(450),
            "retried {gap:?} after a 401/403"
        );
    }
    assert_eq!(sink.names(TRACES), names("auth", 10));
    // The sink logs a request before it answers: the worker records the success just after.
    eventually(Duration::from_secs(2), || {
        signal_status(&agent, 0, "traces")["retry"] == "ready"
    })
    .await;
    let t = signal_status(&agent, 0, "traces");
    assert_eq!(t["retry"], "ready", "{t}");
    assert_eq!(num(&t["failed_attempts"]), 3, "{t}");
    assert_eq!(num(&t["dead_lettered_items"]), 0, "{t}");
    agent.shutdown().await;
}

/// An upstream that stalls past the destination's timeout: the attempt is abandoned and retried,
/// and the data arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_is_retried() {
    let sink = Sink::start().await;
    sink.script([Reply::Stall(Duration::from_millis(1200))]);
    let dir = tempfile::tempdir().unwrap();
    let agent = start_agent(&config_toml(
        dir.path(),
        &traces_destination("up", &sink.endpoint(), "300ms", ""),
    ))
    .await;

    let sent = Instant::now();
    post_acked(&agent, TRACES, spans("slow", 10)).await;
    assert_eq!(
        sink.wait_items(TRACES, 10, Duration::from_secs(5)).await,
        10
    );
    // The first request stalls 1.2 s; the agent gives up on it at 300 ms (the sink never logs
    // it: hyper drops its handler when the agent closes the connection) and sends it again,
    // which is answered at once. So the accepted request is a second attempt, well before the
    // stall would have ended.
    let received = sink.received();
    let accepted_at = received[0].at - sent;
    eprintln!("retried request answered {accepted_at:?} after the post");
    assert!(
        accepted_at >= Duration::from_millis(300) && accepted_at < Duration::from_millis(1200),
        "the accepted request came {accepted_at:?} after the post (timeout 300ms, stall 1.2s)"
    );
    assert_eq!(sink.names(TRACES), names("slow", 10));
    assert!(received
        .iter()
        .all(|r| sorted(r.names.clone()) == names("slow", 10)));
    // As above: the worker counts the accepted attempt just after the sink logged it.
    eventually(Duration::from_secs(2), || {
        num(&signal_status(&agent, 0, "traces")["sent_items"]) == 10
    })
    .await;
    let t = signal_status(&agent, 0, "traces");
    assert_eq!(num(&t["attempts"]), 2, "{t}");
    assert_eq!(num(&t["failed_attempts"]), 1, "{t}");
    assert_eq!(num(&t["sent_items"]), 10, "{t}");
    let err = t["last_error"].as_str().unwrap_or_default().to_lowercase();
    assert!(
        err.contains("time"),
        "last_error should say it timed out: {err:?}"
    );
    assert!(
        eventually(Duration::from_secs(2), || agent.spool().usage().records
            == 0)
        .await
    );
    agent.shutdown().await;
}

/// Two destinations: the healthy one gets everything at once; the records stay in the spool
/// until the failing one has them too, then go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_destination_gets_everything_and_records_wait_for_the_slowest() {
    let healthy = Sink::start().await;
    let failing = Sink::start().await;
    failing.set_fallback(Some(Reply::Status(503, None)));
    let dir = tempfile::tempdir().unwrap();
    let toml = config_toml(
        dir.path(),
        &format!(
            "{}{}",
            destination("healthy", &healthy, "signals = [\"traces\"]"),
            destination("failing", &failing, "signals = [\"traces\"]")
        ),
    );
    let agent = start_agent(&toml).await;

    let posted = Instant::now();
    for r in 0..3 {
        post_acked(&agent, TRACES, spans(&format!("multi{r}"), 10)).await;
    }
    assert_eq!(
        healthy.wait_items(TRACES, 30, Duration::from_secs(2)).await,
        30
    );
    eprintln!(
        "healthy destination had everything after {:?}",
        posted.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let records = agent.spool().usage().records;
    assert!(
        records > 0,
        "records deleted before the failing destination had them"
    );
    let status = agent.status();
    let h = &status["destinations"][0]["signals"]["traces"];
    let f = &status["destinations"][1]["signals"]["traces"];
    assert_eq!(num(&h["pending_records"]), 0, "{h}");
    assert_eq!(num(&f["pending_records"]), records, "{f}");
    assert!(num(&f["failed_attempts"]) >= 2, "{f}");
    assert!(failing.received().iter().all(|r| !r.accepted));

    failing.set_fallback(None);
    assert_eq!(
        failing.wait_items(TRACES, 30, Duration::from_secs(5)).await,
        30
    );
    assert!(
        eventually(Duration::from_secs(2), || agent.spool().usage().records
            == 0)
        .await,
        "records deleted once both destinations have them"
    );
    let want: Vec<String> = sorted(
        (0..3)
            .flat_map(|r| names(&format!("multi{r}"), 10))
            .collect(),
    );
    assert_eq!(healthy.names(TRACES), want);
    assert_eq!(failing.names(TRACES), want);
    assert_eq!(
        healthy.items(TRACES),
        30,
        "the healthy one got nothing twice"
    );
    agent.shutdown().await;
}

/// `encoding = "json"`, `compression = "none"`, custom headers: the upstream gets plain
/// OTLP/JSON with the header and exactly the items.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_uncompressed_with_custom_headers() {
    let sink = Sink::start().await;
    let dir = tempfile::tempdir().unwrap();
    let agent = start_agent(&config_toml(
        dir.path(),
        &destination(
            "up",
            &sink,
            "encoding = \"json\"\ncompression = \"none\"\nheaders = { \"x-api-key\" = \"k\" }",
        ),
    ))
    .await;

    post_acked(&agent, TRACES, spans("j", 7)).await;
    post_acked(&agent, TRACES, multi_resource("jm", 2, 3)).await;
    assert_eq!(
        sink.wait_items(TRACES, 13, Duration::from_secs(5)).await,
        13
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let want = sorted(
        names("j", 7)
            .into_iter()
            .chain((0..2).flat_map(|r| (0..3).map(move |i| format!("jm{r}-{i}"))))
            .collect(),
    );
    assert_eq!(sink.names(TRACES), want);
    let received = sink.received();
    assert!(!received.is_empty());
    for r in &received {
        assert_eq!(r.path, TRACES);
        assert_eq!(r.headers["content-type"], "application/json");
        assert!(
            r.headers.get("content-encoding").is_none(),
            "{:?}",
            r.headers
        );
        assert_eq!(r.headers["x-api-key"], "k");
    }
    agent.shutdown().await;
}
