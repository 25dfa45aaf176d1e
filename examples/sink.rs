//! A fast OTLP/HTTP upstream for the benchmark harness (`bench/run.sh`): acknowledges every
//! `POST /v1/{traces,metrics,logs}` with an empty 200, and counts requests, items (spans, metric
//! data points, log records; protobuf is walked, not decoded), bytes on the wire and bytes of
//! OTLP after gunzip. A malformed body gets a 400 and is counted as `bad_requests`.
//!
//! `GET /count` answers the counts as JSON. The process exits by itself after `--seconds`
//! (default one hour), so a forgotten sink does not outlive its run. One thread: it competes
//! with the agent and the load generator for the machine's cores as little as it can.
//!
//! An upstream that fails on a schedule (for soak runs, `bench/soak.sh`): with `--fail-every P
//! --fail-for F` (seconds), every export in the first F seconds of each P-second period since
//! the sink started gets `503` with `Retry-After: 1` and is counted as `refused`, not as
//! delivered; the agent's backlog grows during the window and drains after it.
//!
//! ```sh
//! cargo run --release --example sink -- --listen 127.0.0.1:14318 --seconds 600
//! cargo run --release --example sink -- --listen 127.0.0.1:14318 --fail-every 60 --fail-for 15
//! curl -s 127.0.0.1:14318/count
//! ```

use std::convert::Infallible;
use std::io::Read as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

/// When the sink refuses: the first `fail_for` of every `every` since `started`.
struct Schedule {
    started: Instant,
    every: Duration,
    fail_for: Duration,
}

impl Schedule {
    fn failing(&self) -> bool {
        if self.every.is_zero() || self.fail_for.is_zero() {
            return false;
        }
        let into = self.started.elapsed().as_nanos() % self.every.as_nanos();
        into < self.fail_for.as_nanos()
    }
}

#[derive(Default)]
struct Counts {
    requests: AtomicU64,
    bad_requests: AtomicU64,
    /// Exports answered 503 inside a failure window (their items are not counted).
    refused: AtomicU64,
    items: [AtomicU64; 3],
    wire_bytes: AtomicU64,
    otlp_bytes: AtomicU64,
    first_ms: AtomicU64,
    last_ms: AtomicU64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Reads a protobuf varint at `*at`.
fn varint(buf: &[u8], at: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*at)?;
        *at += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Some(v);
        }
    }
    None
}

/// Calls `f(field, bytes)` for every length-delimited field of the message `buf`, skipping the
/// others; `None` if the message is malformed.
fn each_len_field(buf: &[u8], mut f: impl FnMut(u64, &[u8]) -> Option<()>) -> Option<()> {
    let mut at = 0;
    while at < buf.len() {
        let key = varint(buf, &mut at)?;
        match key & 7 {
            0 => {
                varint(buf, &mut at)?;
            }
            1 => at += 8,
            5 => at += 4,
            2 => {
                let len = varint(buf, &mut at)? as usize;
                let end = at.checked_add(len).filter(|e| *e <= buf.len())?;
                f(key >> 3, &buf[at..end])?;
                at = end;
            }
            _ => return None,
        }
    }
    (at == buf.len()).then_some(())
}

/// Items in an OTLP protobuf request of `signal` (spans, metric data points, log records),
/// counted by walking the wire format without decoding (no allocation: the sink must be cheap,
/// it shares the machine with the agent). `None` if the request is malformed.
///
/// Export*ServiceRequest: 1 = resource_*; Resource*: 2 = scope_*; Scope*: 2 = spans / metrics /
/// log_records; Metric: 5 gauge, 7 sum, 9 histogram, 10 exponential_histogram, 11 summary, each
/// with 1 = data_points.
fn count_items(signal: usize, body: &[u8]) -> Option<u64> {
    let mut n = 0u64;
    each_len_field(body, |f, resource| {
        if f != 1 {
            return Some(());
        }
        each_len_field(resource, |f, scope| {
            if f != 2 {
                return Some(());
            }
            each_len_field(scope, |f, item| {
                if f != 2 {
                    return Some(());
                }
                if signal != 1 {
                    n += 1;
                    return Some(());
                }
                each_len_field(item, |f, data| {
                    if matches!(f, 5 | 7 | 9 | 10 | 11) {
                        each_len_field(data, |f, _| {
                            n += u64::from(f == 1);
                            Some(())
                        })?;
                    }
                    Some(())
                })
            })
        })
    })?;
    Some(n)
}

/// Items in an OTLP/JSON request (the agent forwards JSON when a destination says so).
fn count_json_items(signal: usize, body: &[u8]) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let (outer, inner, leaf) = match signal {
        0 => ("resourceSpans", "scopeSpans", "spans"),
        1 => ("resourceMetrics", "scopeMetrics", "metrics"),
        _ => ("resourceLogs", "scopeLogs", "logRecords"),
    };
    let mut n = 0;
    for r in v.get(outer)?.as_array()? {
        for s in r
            .get(inner)
            .and_then(|s| s.as_array())
            .into_iter()
            .flatten()
        {
            for x in s.get(leaf).and_then(|l| l.as_array()).into_iter().flatten() {
                n += if signal == 1 {
                    [
                        "gauge",
                        "sum",
                        "histogram",
                        "exponentialHistogram",
                        "summary",
                    ]
                    .iter()
                    .filter_map(|k| x.get(*k)?.get("dataPoints")?.as_array())
                    .map(|a| a.len() as u64)
                    .sum()
                } else {
                    1
                };
            }
        }
    }
    Some(n)
}

fn respond(status: u16, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(body.into()))
        .expect("response")
}

async fn handle(
    counts: Arc<Counts>,
    schedule: Arc<Schedule>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    if req.method() == hyper::Method::GET && path == "/count" {
        let c = &counts;
        let body = serde_json::json!({
            "requests": c.requests.load(Relaxed),
            "bad_requests": c.bad_requests.load(Relaxed),
            "refused": c.refused.load(Relaxed),
            "traces": c.items[0].load(Relaxed),
            "metrics": c.items[1].load(Relaxed),
            "logs": c.items[2].load(Relaxed),
            "wire_bytes": c.wire_bytes.load(Relaxed),
            "otlp_bytes": c.otlp_bytes.load(Relaxed),
            "first_ms": c.first_ms.load(Relaxed),
            "last_ms": c.last_ms.load(Relaxed),
        });
        return Ok(respond(200, "application/json", body.to_string()));
    }
    let signal = match path.as_str() {
        "/v1/traces" => 0,
        "/v1/metrics" => 1,
        "/v1/logs" => 2,
        _ => return Ok(respond(404, "text/plain", "not found")),
    };
    let gzip = req
        .headers()
        .get("content-encoding")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
    let json = req
        .headers()
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    let Ok(wire) = req.into_body().collect().await.map(|b| b.to_bytes()) else {
        counts.bad_requests.fetch_add(1, Relaxed);
        return Ok(respond(400, "text/plain", "body"));
    };
    // After reading the body, so the connection stays usable, as a real upstream's would.
    if schedule.failing() {
        counts.refused.fetch_add(1, Relaxed);
        let mut refusal = respond(503, "text/plain", "sink: scheduled failure window");
        refusal
            .headers_mut()
            .insert("retry-after", hyper::header::HeaderValue::from_static("1"));
        return Ok(refusal);
    }
    let otlp = if gzip {
        let mut out = Vec::with_capacity(wire.len() * 8);
        if flate2::read::GzDecoder::new(&wire[..])
            .read_to_end(&mut out)
            .is_err()
        {
            counts.bad_requests.fetch_add(1, Relaxed);
            return Ok(respond(400, "text/plain", "bad gzip"));
        }
        Bytes::from(out)
    } else {
        wire.clone()
    };
    let items = if json {
        count_json_items(signal, &otlp).ok_or(())
    } else {
        count_items(signal, &otlp).ok_or(())
    };
    let Ok(items) = items else {
        counts.bad_requests.fetch_add(1, Relaxed);
        return Ok(respond(400, "text/plain", "undecodable OTLP"));
    };
    let now = now_ms();
    let _ = counts.first_ms.compare_exchange(0, now, Relaxed, Relaxed);
    counts.last_ms.store(now, Relaxed);
    counts.requests.fetch_add(1, Relaxed);
    counts.items[signal].fetch_add(items, Relaxed);
    counts.wire_bytes.fetch_add(wire.len() as u64, Relaxed);
    counts.otlp_bytes.fetch_add(otlp.len() as u64, Relaxed);
    Ok(if json {
        respond(200, "application/json", "{}")
    } else {
        respond(200, "application/x-protobuf", Bytes::new())
    })
}

fn main() {
    let listen = arg("--listen", "127.0.0.1:14318");
    let seconds: u64 = arg("--seconds", "3600").parse().expect("--seconds N");
    let secs = |name: &str| -> Duration {
        let v = arg(name, "0");
        Duration::from_secs_f64(v.parse().unwrap_or_else(|_| {
            eprintln!("sink: {name} wants seconds, got {v:?}");
            std::process::exit(2)
        }))
    };
    let schedule = Arc::new(Schedule {
        started: Instant::now(),
        every: secs("--fail-every"),
        fail_for: secs("--fail-for"),
    });
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(async move {
            let listener = tokio::net::TcpListener::bind(&listen)
                .await
                .unwrap_or_else(|e| {
                    eprintln!("sink: cannot listen on {listen}: {e}");
                    std::process::exit(1)
                });
            eprintln!("sink: listening on {listen} for {seconds}s");
            let counts = Arc::new(Counts::default());
            let until = Instant::now() + Duration::from_secs(seconds);
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = tokio::time::sleep_until(until.into()) => {
                        eprintln!("sink: --seconds {seconds} elapsed; exiting");
                        return;
                    }
                };
                let Ok((stream, _)) = accepted else { continue };
                let (counts, schedule) = (counts.clone(), schedule.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        handle(counts.clone(), schedule.clone(), req)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
}
