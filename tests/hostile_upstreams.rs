//! Hostile upstreams (`docs/reliability.md`, "Hostile upstreams"; README, "What it promises, and
//! how"): an upstream that stalls after accepting the connection or after reading the request,
//! resets the connection before or in the middle of its answer, trickles its answer a byte a
//! second, sends an endless body, storms 429 (with and without `Retry-After`) or 5xx, redirects
//! (301, 302, 303, 307, 308), or presents a TLS certificate the agent must not trust.
//!
//! Each scenario runs an in-process agent against the scripted sink of `support` on loopback and
//! checks four things: no loss (every acknowledged span reaches the upstream, exactly once, once
//! it behaves; for TLS, once the agent restarts on the same spool trusting the right CA), a
//! bounded attempt rate (the attempts the upstream saw over a window stay within what
//! `retry.initial`/`retry.max` allow, and never stop), bounded memory (the sink counts what it
//! wrote: the agent cannot have buffered more; and the process's RSS does not grow), and a
//! `/status` `last_error` that names the endpoint (with a password in its URL, masked) and says
//! what went wrong.

mod support;

use std::time::{Duration, Instant};

use support::*;

const TRACES: &str = "/v1/traces";
/// `retry = { initial, max }` of every destination here.
const INITIAL: Duration = Duration::from_millis(50);
const MAX: Duration = Duration::from_millis(500);
/// The per-attempt `timeout` of every destination here.
const TIMEOUT: Duration = Duration::from_millis(500);
/// How long each upstream misbehaves before it is checked on.
const WINDOW: Duration = Duration::from_secs(2);
/// Scheduling slack for the gap checks (two test threads share two CPUs with the agents).
const SLACK: Duration = Duration::from_millis(400);
/// Requests posted per scenario, and spans per request.
const POSTS: usize = 3;
const SPANS: usize = 10;
/// What one attempt may leave a client holding of a raw reply: the socket buffers of loopback
/// (a few MiB each way) plus the agent's response-body cap. A client that read an endless body
/// until its timeout would take gigabytes.
const RAW_BYTES_PER_ATTEMPT: u64 = 16 << 20;

/// How the agent should space its attempts.
#[derive(Clone, Copy, Debug)]
enum Pace {
    /// Jittered exponential backoff from `INITIAL` to `MAX`.
    Backoff,
    /// Backoff, but never sooner than the upstream's `Retry-After`.
    RetryAfter(Duration),
    /// The slow pace of failures a person must fix: `retry.max` between attempts.
    Slow,
}

impl Pace {
    /// The least delay before attempt `k + 1` (k = 0 after the first failure): equal jitter
    /// draws from `[b/2, b)` of the exponential step `b`, never below `INITIAL` (retry.rs).
    fn least_delay(self, k: u32) -> Duration {
        let step = INITIAL.saturating_mul(2u32.saturating_pow(k)).min(MAX);
        let backoff = (step / 2).max(INITIAL);
        match self {
            Pace::Backoff => backoff,
            Pace::RetryAfter(asked) => backoff.max(asked),
            Pace::Slow => MAX,
        }
    }

    /// The longest the agent may wait between attempts (beyond the attempt itself).
    fn most_delay(self) -> Duration {
        match self {
            Pace::Backoff | Pace::Slow => MAX,
            Pace::RetryAfter(asked) => asked.max(MAX),
        }
    }

    /// The most attempts that fit in `window` when each failed attempt lasts at least
    /// `least_attempt`. A hot loop would make thousands.
    fn most_attempts(self, window: Duration, least_attempt: Duration) -> usize {
        // The sink times arrivals; a timeout starts when the agent sends, a little earlier.
        let least_attempt = least_attempt.saturating_sub(Duration::from_millis(20));
        let (mut elapsed, mut n) = (Duration::ZERO, 1);
        loop {
            elapsed += self.least_delay(n as u32 - 1) + least_attempt;
            if elapsed > window {
                return n;
            }
            n += 1;
        }
    }
}

/// How the upstream misbehaves, and what the agent must make of it.
struct Misbehaviour {
    /// Makes the sink misbehave until `behave` is called.
    start: Box<dyn Fn(&Sink) + Send + Sync>,
    pace: Pace,
    /// The least time one failed attempt takes (the timeout, for what never answers).
    least_attempt: Duration,
    /// Whether the upstream sees attempts as connections (it never reads a request) or requests.
    counted_by_connections: bool,
    /// What `last_error` must say besides the endpoint (lowercase).
    says: Vec<String>,
}

impl Misbehaviour {
    fn new(
        start: impl Fn(&Sink) + Send + Sync + 'static,
        pace: Pace,
        says: &[&str],
    ) -> Misbehaviour {
        Misbehaviour {
            start: Box::new(start),
            pace,
            least_attempt: Duration::ZERO,
            counted_by_connections: false,
            says: says.iter().map(|s| s.to_lowercase()).collect(),
        }
    }

    /// Each failed attempt lasts the whole timeout.
    fn until_timeout(mut self) -> Misbehaviour {
        self.least_attempt = TIMEOUT;
        self
    }

    fn counted_by_connections(mut self) -> Misbehaviour {
        self.counted_by_connections = true;
        self
    }
}

/// A traces-only destination for `endpoint` with the retry, timeout and linger of this file.
fn destination_to(endpoint: &str, extra: &str) -> String {
    format!(
        "[[destination]]\nname = \"up\"\ntype = \"otlp_http\"\nendpoint = \"{endpoint}\"\nsignals = [\"traces\"]\nbatch = {{ linger = \"20ms\" }}\nretry = {{ initial = \"{}ms\", max = \"{}ms\" }}\ntimeout = \"{}ms\"\n{extra}\n",
        INITIAL.as_millis(),
        MAX.as_millis(),
        TIMEOUT.as_millis()
    )
}

/// The test process's resident set, in bytes: the agent runs in-process.
fn rss_bytes() -> u64 {
    support::process::proc_status_kb("self", "VmRSS") << 10
}

/// The span names of scenario `tag`, sorted: what the upstream must end up with, once each.
fn all_names(tag: &str) -> Vec<String> {
    let mut names: Vec<String> = (0..POSTS)
        .flat_map(|p| (0..SPANS).map(move |i| format!("{tag}{p}-{i}")))
        .collect();
    names.sort();
    names
}

async fn post_all(agent: &otlp_spool::Agent, tag: &str) {
    for p in 0..POSTS {
        let body = spans(&format!("{tag}{p}"), SPANS);
        let (status, text) = post(agent.http_addrs()[0], TRACES, &[PROTOBUF], body).await;
        assert_eq!(status, 200, "{tag}: the agent answered {status}: {text}");
    }
}

/// The password in every endpoint URL here: `status` must never show it.
const PASSWORD: &str = "s3cret";

/// `sink`'s endpoint with credentials in it (`scheme://agent:s3cret@host:port`).
fn endpoint_with_credentials(sink: &Sink) -> String {
    sink.endpoint()
        .replacen("://", &format!("://agent:{PASSWORD}@"), 1)
}

/// An agent spooling in `dir`, its one destination at `sink` (credentials in the URL).
async fn agent_for(dir: &std::path::Path, sink: &Sink, extra: &str) -> otlp_spool::Agent {
    let endpoint = endpoint_with_credentials(sink);
    start_agent(&config_toml(dir, &destination_to(&endpoint, extra))).await
}

/// Lets `sink` misbehave while an agent (destination extras `extra`) holds `POSTS` acknowledged
/// requests for it, for `WINDOW`; checks the attempt rate, the memory bound and `/status`.
/// Returns the agent (still running) and its spool directory.
async fn provoke(
    tag: &str,
    sink: &Sink,
    m: &Misbehaviour,
    extra: &str,
) -> (otlp_spool::Agent, tempfile::TempDir) {
    (m.start)(sink);
    let dir = tempfile::tempdir().unwrap();
    let agent = agent_for(dir.path(), sink, extra).await;
    let rss_before = rss_bytes();
    post_all(&agent, tag).await;
    tokio::time::sleep(WINDOW).await;
    let end = Instant::now();

    let mut attempts: Vec<Instant> = if m.counted_by_connections {
        sink.connections()
    } else {
        sink.received().iter().map(|r| r.at).collect()
    };
    attempts.retain(|at| *at <= end);
    assert!(
        attempts.len() >= 2,
        "{tag}: the upstream saw {} attempts in {WINDOW:?}; the agent must keep trying",
        attempts.len()
    );
    let window = end - attempts[0];
    let most = m.pace.most_attempts(window, m.least_attempt);
    let gaps: Vec<Duration> = attempts.windows(2).map(|w| w[1] - w[0]).collect();
    let longest_gap = m.pace.most_delay() + TIMEOUT + SLACK;
    let raw = sink.raw_bytes_sent();
    let rss_growth = rss_bytes().saturating_sub(rss_before);
    eprintln!(
        "{tag}: {} attempts in {window:?} (policy allows at most {most}); gaps {gaps:?}; raw bytes written {raw}; RSS growth {rss_growth} bytes",
        attempts.len()
    );
    assert!(
        attempts.len() <= most,
        "{tag}: {} attempts in {window:?}, more than retry {INITIAL:?}..{MAX:?} ({:?}) allows ({most}): {gaps:?}",
        attempts.len(),
        m.pace
    );
    if let Pace::Slow | Pace::RetryAfter(_) = m.pace {
        let least = m.pace.least_delay(0);
        assert!(
            gaps.iter().all(|g| *g >= least),
            "{tag}: attempts closer than {least:?}: {gaps:?}"
        );
    }
    assert!(
        gaps.iter().all(|g| *g <= longest_gap),
        "{tag}: a gap over {longest_gap:?} between attempts: {gaps:?}"
    );
    assert!(
        raw <= RAW_BYTES_PER_ATTEMPT * attempts.len() as u64,
        "{tag}: the sink wrote {raw} bytes in {} attempts: the agent read a response without limit",
        attempts.len()
    );
    assert!(
        rss_growth < 64 << 20,
        "{tag}: the process grew by {rss_growth} bytes while the upstream misbehaved"
    );

    let t = signal_status(&agent, 0, "traces");
    let error = t["last_error"].as_str().unwrap_or_default().to_lowercase();
    eprintln!("{tag}: last_error: {error}");
    let masked = format!("://***@127.0.0.1:{}/", sink.addr.port());
    assert!(
        error.contains(&masked) && !error.contains(PASSWORD),
        "{tag}: last_error should name the endpoint, its password masked: {error:?}"
    );
    for needle in &m.says {
        assert!(
            error.contains(needle),
            "{tag}: last_error should say {needle:?}: {error:?}"
        );
    }
    assert_eq!(num(&t["sent_items"]), 0, "{tag}: {t}");
    assert_eq!(num(&t["dead_lettered_items"]), 0, "{tag}: {t}");
    assert_eq!(num(&t["pending_records"]), POSTS as u64, "{tag}: {t}");
    // A slow pace is a failure a person must fix (a redirect, an untrusted certificate):
    // status says the data is held rather than backing off.
    let state = match m.pace {
        Pace::Slow => "held",
        Pace::Backoff | Pace::RetryAfter(_) => "backoff",
    };
    assert!(t["retry"].get(state).is_some(), "{tag}: {t}");
    (agent, dir)
}

/// Once the upstream behaves, everything acknowledged arrives exactly once and the spool drains.
async fn expect_everything(tag: &str, sink: &Sink, agent: &otlp_spool::Agent) {
    let want = (POSTS * SPANS) as u64;
    let got = sink.wait_items(TRACES, want, Duration::from_secs(10)).await;
    assert_eq!(
        got, want,
        "{tag}: spans delivered once the upstream behaves"
    );
    eventually(Duration::from_secs(5), || {
        agent.spool().usage().records == 0
    })
    .await;
    assert_eq!(agent.spool().usage().records, 0, "{tag}: the spool drains");
    assert_eq!(sink.names(TRACES), all_names(tag), "{tag}: every span once");
    let t = signal_status(agent, 0, "traces");
    assert_eq!(num(&t["sent_items"]), want, "{tag}: {t}");
    assert_eq!(t["retry"], "ready", "{tag}: {t}");
    eprintln!("{tag}: delivered {got} of {want} acknowledged spans");
}

/// The whole scenario on a plain sink: misbehave, check, behave, check delivery.
async fn scenario(tag: &str, m: Misbehaviour) {
    let sink = Sink::start().await;
    let (agent, _dir) = provoke(tag, &sink, &m, "").await;
    sink.set_deaf(false);
    sink.set_fallback(None);
    expect_everything(tag, &sink, &agent).await;
    agent.shutdown().await;
}

/// The upstream accepts connections and never reads them: each attempt ends at `timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stall_after_accepting_the_connection() {
    let m = Misbehaviour::new(|s| s.set_deaf(true), Pace::Backoff, &["timed out"])
        .until_timeout()
        .counted_by_connections();
    scenario("deaf", m).await;
}

/// The upstream reads the request and never answers: each attempt ends at `timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stall_after_reading_the_request() {
    let m = Misbehaviour::new(
        |s| s.set_fallback(Some(Reply::Hang)),
        Pace::Backoff,
        &["timed out"],
    )
    .until_timeout();
    scenario("hang", m).await;
}

/// The upstream resets the connection (RST) right after reading the request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_reset_before_the_answer() {
    let m = Misbehaviour::new(
        |s| s.set_fallback(Some(Reply::Reset(None))),
        Pace::Backoff,
        &["reset"],
    );
    scenario("reset", m).await;
}

/// The upstream sends a 503's headers and part of its body, then resets the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_reset_in_the_middle_of_the_body() {
    let m = Misbehaviour::new(
        |s| s.set_fallback(Some(Reply::Reset(Some(503)))),
        Pace::Backoff,
        &["503", "body"],
    );
    scenario("midbody", m).await;
}

/// The upstream trickles its answer a byte a second from the status line on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickled_status_line() {
    let m = Misbehaviour::new(
        |s| s.set_fallback(Some(Reply::Trickle)),
        Pace::Backoff,
        &["timed out"],
    )
    .until_timeout();
    scenario("trickle", m).await;
}

/// The upstream sends a 503's headers at once, then its body a byte a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickled_body() {
    let m = Misbehaviour::new(
        |s| s.set_fallback(Some(Reply::TrickleBody(503))),
        Pace::Backoff,
        &["503", "timed out"],
    )
    .until_timeout();
    scenario("tricklebody", m).await;
}

/// The upstream answers 503 with an endless body: the agent reads a capped prefix, not the
/// stream (the sink's byte count and the RSS check in `provoke` bound it), and backs off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_error_body() {
    let m = Misbehaviour::new(
        |s| s.set_fallback(Some(Reply::EndlessBody(503))),
        Pace::Backoff,
        &["503", "not read"],
    );
    scenario("endless", m).await;
}

/// A storm of 429 without `Retry-After`: the backoff paces it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm_of_429_without_retry_after() {
    let m = Misbehaviour::new(
        |s| s.set_fallback(Some(Reply::Status(429, None))),
        Pace::Backoff,
        &["429"],
    );
    scenario("storm", m).await;
}

/// A storm of 429 with `Retry-After: 1`: never sooner than a second apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm_of_429_with_retry_after() {
    let m = Misbehaviour::new(
        |s| s.set_fallback(Some(Reply::Status(429, Some(1)))),
        Pace::RetryAfter(Duration::from_secs(1)),
        &["429"],
    );
    scenario("stormafter", m).await;
}

/// Endless 500s: the backoff grows to `retry.max` and stays there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_5xx() {
    let m = Misbehaviour::new(
        |s| s.set_fallback(Some(Reply::Status(500, None))),
        Pace::Backoff,
        &["500"],
    );
    scenario("fivehundred", m).await;
}

/// Every redirect status, to a healthy upstream on another port: the agent does not follow it
/// (a 301/302/303 would turn the POST into a GET without the data, and the batch would count
/// as delivered), keeps the data, reports where the upstream pointed, and retries at the slow
/// pace until the configured upstream takes the data itself. Nothing reaches the redirect's
/// target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_not_followed() {
    let mut runs = tokio::task::JoinSet::new();
    for code in [301u16, 302, 303, 307, 308] {
        runs.spawn(async move {
            let tag = format!("redirect{code}");
            let target = Sink::start().await;
            let location = format!("{}{TRACES}", endpoint_with_credentials(&target));
            let shown = format!("redirected to http://***@{}{TRACES}", target.addr);
            let says = [code.to_string(), shown];
            let says: Vec<&str> = says.iter().map(String::as_str).collect();
            let m = Misbehaviour::new(
                move |s| s.set_fallback(Some(Reply::Redirect(code, location.clone()))),
                Pace::Slow,
                &says,
            );
            let sink = Sink::start().await;
            let (agent, _dir) = provoke(&tag, &sink, &m, "").await;
            sink.set_fallback(None);
            expect_everything(&tag, &sink, &agent).await;
            agent.shutdown().await;
            assert!(
                target.received().is_empty(),
                "{tag}: the redirect's target got requests: {:?}",
                target.received()
            );
        });
    }
    while let Some(run) = runs.join_next().await {
        run.expect("a redirect scenario");
    }
}

/// Answers whose status is 2xx but whose body breaks — reset mid-body, trickled, endless — are
/// delivered (the status is the upstream's word that it has the data), each in one attempt,
/// and the endless one without reading it to the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_bodies_of_2xx_answers_count_as_delivered_once() {
    let sink = Sink::start().await;
    let dir = tempfile::tempdir().unwrap();
    let agent = agent_for(dir.path(), &sink, "").await;
    let replies = [
        Reply::Reset(Some(200)),
        Reply::TrickleBody(200),
        Reply::EndlessBody(200),
    ];
    for (i, reply) in replies.into_iter().enumerate() {
        sink.script([reply.clone()]);
        let posted = Instant::now();
        let (status, _) = post(
            agent.http_addrs()[0],
            TRACES,
            &[PROTOBUF],
            spans(&format!("broken{i}"), SPANS),
        )
        .await;
        assert_eq!(status, 200);
        let want = ((i + 1) * SPANS) as u64;
        let deadline = Instant::now() + Duration::from_secs(5);
        while num(&signal_status(&agent, 0, "traces")["sent_items"]) < want
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let took = posted.elapsed();
        eprintln!(
            "{reply:?}: delivered after {took:?}; raw bytes written so far {}",
            sink.raw_bytes_sent()
        );
        let t = signal_status(&agent, 0, "traces");
        assert_eq!(num(&t["sent_items"]), want, "{reply:?}: {t}");
        assert_eq!(num(&t["attempts"]), (i + 1) as u64, "{reply:?}: {t}");
        assert_eq!(num(&t["failed_attempts"]), 0, "{reply:?}: {t}");
        match reply {
            // Read until the timeout gives up on the body, then settled.
            Reply::TrickleBody(_) => assert!(
                took >= TIMEOUT && took < TIMEOUT + SLACK * 2,
                "{reply:?}: took {took:?}"
            ),
            // Read up to the cap, then settled, long before the timeout.
            _ => assert!(took < TIMEOUT, "{reply:?}: took {took:?}"),
        }
    }
    assert!(
        sink.raw_bytes_sent() <= RAW_BYTES_PER_ATTEMPT,
        "the sink wrote {} bytes: the agent read an endless body without limit",
        sink.raw_bytes_sent()
    );
    assert_eq!(sink.items(TRACES), (3 * SPANS) as u64);
    agent.shutdown().await;
}

/// A private CA and certificates it signs, for HTTPS upstreams on 127.0.0.1.
struct Pki {
    ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl Pki {
    fn new() -> Pki {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "otlp-spool test CA");
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let ca = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap())
            .unwrap();
        Pki { ca }
    }

    /// Writes the CA certificate as a PEM file in `dir`.
    fn ca_file(&self, dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join("ca.pem");
        std::fs::write(&path, self.ca.pem()).unwrap();
        path
    }

    /// A TLS acceptor presenting a certificate for `names`, expired if `expired`.
    fn server(&self, names: &[&str], expired: bool) -> tokio_rustls::TlsAcceptor {
        use tokio_rustls::rustls::{pki_types, ServerConfig};
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names).unwrap();
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let key = pki_types::PrivatePkcs8KeyDer::from(key.serialize_der());
        let config = ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], key.into())
            .unwrap();
        tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config))
    }
}

/// With the private CA in `ca_file`, an HTTPS upstream it signed takes the data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstream_signed_by_the_ca_file_gets_everything() {
    let pki = Pki::new();
    let sink = Sink::start_tls(pki.server(&["127.0.0.1", "localhost"], false)).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = pki.ca_file(dir.path());
    let agent = agent_for(
        dir.path(),
        &sink,
        &format!("ca_file = \"{}\"", ca.display()),
    )
    .await;
    post_all(&agent, "tls").await;
    expect_everything("tls", &sink, &agent).await;
    let t = signal_status(&agent, 0, "traces");
    assert_eq!(num(&t["failed_attempts"]), 0, "{t}");
    agent.shutdown().await;
}

/// Without `ca_file`, a certificate from a private CA is refused: the data is kept, the
/// attempts go at the slow pace, `last_error` says the issuer is unknown and what to set; an
/// agent restarted on the same spool with `ca_file` delivers everything, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_issuer_is_held_until_the_agent_trusts_the_ca() {
    let pki = Pki::new();
    let sink = Sink::start_tls(pki.server(&["127.0.0.1"], false)).await;
    let m = Misbehaviour::new(|_| {}, Pace::Slow, &["unknownissuer", "ca_file"])
        .counted_by_connections();
    let (agent, dir) = provoke("untrusted", &sink, &m, "").await;
    agent.shutdown().await;
    assert!(sink.received().is_empty(), "nothing was sent in the clear");

    let ca = pki.ca_file(dir.path());
    let agent = agent_for(
        dir.path(),
        &sink,
        &format!("ca_file = \"{}\"", ca.display()),
    )
    .await;
    expect_everything("untrusted", &sink, &agent).await;
    agent.shutdown().await;
}

/// A certificate from the trusted CA but for another name, or expired, is refused the same way
/// (held, slow, reported with the reason), whatever `ca_file` says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_name_or_expired_certificates_are_refused_and_the_data_kept() {
    let pki = Pki::new();
    let cases = [
        (
            "wrongname",
            &["other.example"][..],
            false,
            "not valid for name",
        ),
        ("expired", &["127.0.0.1"][..], true, "expired"),
    ];
    for (tag, names, expired, reason) in cases {
        let sink = Sink::start_tls(pki.server(names, expired)).await;
        let ca_dir = tempfile::tempdir().unwrap();
        let ca = pki.ca_file(ca_dir.path());
        let m = Misbehaviour::new(|_| {}, Pace::Slow, &[reason]).counted_by_connections();
        let (agent, _dir) =
            provoke(tag, &sink, &m, &format!("ca_file = \"{}\"", ca.display())).await;
        assert!(sink.received().is_empty(), "{tag}: nothing was sent");
        agent.shutdown().await;
    }
}
