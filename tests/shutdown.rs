//! SIGTERM under load (`docs/reliability.md`, "Shutdown and reload"), on the real binary: HTTP and
//! gRPC clients sending as fast as they are answered, and an upstream that accepts each delivery
//! and never answers (so a worker is mid-request at the stop). The agent must stop accepting,
//! answer what it took (only once it is durable), flush, and exit 0 within 5 s; every request
//! answered 200 / OK — before or during the stop — must be delivered after a restart.

mod support;

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use support::process::{agent_command, free_port, try_post, write_agent_config, AgentProcess};
use support::{grpc_endpoint, span_names, spans, trace_request, Reply, Sink};

const HTTP_SENDERS: usize = 8;
const GRPC_SENDERS: usize = 4;
const SPANS_PER_REQUEST: usize = 5;
/// From SIGTERM to exit at the most (`docs/reliability.md`, "Shutdown and reload").
const STOP_WITHIN: Duration = Duration::from_secs(5);

/// What the senders saw: the requests answered 200 / OK, and when.
#[derive(Default)]
struct Answers {
    acked: Vec<(String, Instant)>,
    refused_or_failed: u64,
}

/// One traces destination to `sink`, with a 60 s timeout: against a sink that never answers, a
/// delivery is still in flight when SIGTERM comes.
fn traces_to(sink: &Sink) -> String {
    format!(
        "[[destination]]\nname = \"up\"\ntype = \"otlp_http\"\nendpoint = \"{}\"\n\
         signals = [\"traces\"]\nbatch = {{ linger = \"10ms\" }}\n\
         retry = {{ initial = \"50ms\", max = \"500ms\" }}\ntimeout = \"60s\"\n",
        sink.endpoint()
    )
}

async fn http_sender(id: usize, port: u16, stop: Arc<AtomicBool>, answers: Arc<Mutex<Answers>>) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/v1/traces");
    let mut n = 0;
    while !stop.load(SeqCst) {
        let prefix = format!("h{id}-{n}");
        n += 1;
        let body = spans(&prefix, SPANS_PER_REQUEST);
        match try_post(&http, &url, body).await {
            Ok(r) if r.status() == 200 => {
                answers.lock().unwrap().acked.push((prefix, Instant::now()))
            }
            _ => {
                answers.lock().unwrap().refused_or_failed += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn grpc_sender(id: usize, port: u16, stop: Arc<AtomicBool>, answers: Arc<Mutex<Answers>>) {
    let mut client: Option<TraceServiceClient<tonic::transport::Channel>> = None;
    let mut n = 0;
    while !stop.load(SeqCst) {
        if client.is_none() {
            client = grpc_endpoint(([127, 0, 0, 1], port).into())
                .connect()
                .await
                .ok()
                .map(TraceServiceClient::new);
        }
        let Some(c) = client.as_mut() else {
            answers.lock().unwrap().refused_or_failed += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let prefix = format!("g{id}-{n}");
        n += 1;
        match c.export(trace_request(&prefix, SPANS_PER_REQUEST)).await {
            Ok(_) => answers.lock().unwrap().acked.push((prefix, Instant::now())),
            Err(_) => {
                answers.lock().unwrap().refused_or_failed += 1;
                client = None;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_under_load_answers_what_it_took_and_exits_within_5_s() {
    let sink = Sink::start().await;
    // Every delivery is read and never answered: the worker is mid-request when the stop comes.
    sink.set_fallback(Some(Reply::Hang));
    let dir = tempfile::tempdir().unwrap();
    let (port, grpc_port) = (free_port(), free_port());
    let config = write_agent_config(
        dir.path(),
        port,
        Some(grpc_port),
        &dir.path().join("spool"),
        &traces_to(&sink),
    );
    let log = dir.path().join("agent.log");
    let mut agent = AgentProcess::start(agent_command(&config), port, &log).await;

    let stop = Arc::new(AtomicBool::new(false));
    let answers = Arc::new(Mutex::new(Answers::default()));
    let mut senders = Vec::new();
    for id in 0..HTTP_SENDERS {
        senders.push(tokio::spawn(http_sender(
            id,
            port,
            stop.clone(),
            answers.clone(),
        )));
    }
    for id in 0..GRPC_SENDERS {
        senders.push(tokio::spawn(grpc_sender(
            id,
            grpc_port,
            stop.clone(),
            answers.clone(),
        )));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !sink.received().is_empty(),
        "no delivery started before the stop; log:\n{}",
        agent.log_text()
    );

    let term = Instant::now();
    agent.signal(libc::SIGTERM);
    let status = tokio::task::spawn_blocking(move || {
        let status = agent.wait(Duration::from_secs(20));
        (agent, status)
    });
    let (agent, status) = status.await.unwrap();
    let took = term.elapsed();
    stop.store(true, SeqCst);
    for s in senders {
        s.await.unwrap();
    }
    assert_eq!(
        status.code(),
        Some(0),
        "exit status; log:\n{}",
        agent.log_text()
    );
    assert!(
        took < STOP_WITHIN,
        "SIGTERM to exit took {took:?}; log:\n{}",
        agent.log_text()
    );
    let log_text = agent.log_text();
    assert!(log_text.contains("stopping"), "{log_text}");
    // Nothing listens any more: a new request is refused at once, not left hanging.
    let refused = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/v1/traces"))
        .timeout(Duration::from_secs(2))
        .send()
        .await;
    assert!(
        refused.is_err_and(|e| e.is_connect()),
        "the listener is gone"
    );

    // Every answered request was durable: a restart with a healthy upstream delivers it all.
    let answers = std::mem::take(&mut *answers.lock().unwrap());
    let during_stop = answers.acked.iter().filter(|(_, at)| *at >= term).count();
    assert!(
        answers.acked.len() >= 50,
        "too few requests answered to mean anything"
    );
    sink.set_fallback(None);
    drop(agent);
    let agent = AgentProcess::start(agent_command(&config), port, &log).await;
    let prefixes: Vec<String> = answers.acked.iter().map(|(p, _)| p.clone()).collect();
    let want = span_names(&prefixes, SPANS_PER_REQUEST);
    let missing = sink
        .wait_names("/v1/traces", &want, Duration::from_secs(20))
        .await
        .len();
    println!(
        "SIGTERM under load: exit 0 after {took:?}; {} requests answered ({during_stop} of them \
         after the signal), {} refused or cut off; {} acknowledged spans, {missing} missing after \
         a restart",
        answers.acked.len(),
        answers.refused_or_failed,
        want.len()
    );
    assert_eq!(
        missing,
        0,
        "acknowledged spans lost; log:\n{}",
        agent.log_text()
    );
}
