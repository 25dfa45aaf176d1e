//! `type = "prometheus_remote_write"` end to end, against a real Prometheus server (Debian
//! package `prometheus`, installed by `scripts/install-test-deps.sh`) started on a free
//! loopback port with `--web.enable-remote-write-receiver` and a temporary TSDB.
//!
//! Every check compares what Prometheus answers on `/api/v1/query` with what the test computes
//! on its own from the OTLP it sent (decoded with prost / prost-reflect, not the agent's code):
//! metric names from a table written here, labels, and values.
//!
//! - the metric requests of every fixture in `tests/fixtures/otlp-http/` (cumulative and
//!   DELTA, gauges, sums, histograms, exponential histograms), one agent per fixture folder,
//!   told apart by an external label;
//! - a DELTA stream shaped like Claude Code's (`claude_code.token.usage` by `type` and `model`,
//!   `claude_code.cost.usage`), with an agent restart mid-way and a batch sent twice:
//!   totals exact, `resets()` = 0;
//! - two Claude Code sessions whose batches arrive out of order (and one late): every delta
//!   summed, with shared labels and with `session.id` dropped by `drop_labels`;
//! - CUMULATIVE sessions merged by `drop_labels` across a process restart (a reset) and an agent
//!   restart; batches sent again after their state was saved: counted once;
//! - the captured metrics of Claude Code, Copilot CLI and Gemini CLI (`tests/fixtures/ai-cli/`,
//!   three sessions each) with and without `drop_labels`: series counts and every merged total
//!   as `expected.json` computed them, bit for bit; the same through the real binary
//!   SIGKILLed nine times;
//! - the real binary SIGKILLed at random moments mid-stream: totals bit-exact, no resets;
//! - histograms, summaries, exponential histograms and a stale (`NoRecordedValue`) gauge;
//! - retries (503, 429) and dead letters (400) against the fault-injecting sink, with the wire
//!   format (snappy, headers, sorted labels) decoded here;
//! - SigV4 with `service = "aps"`, recomputed by botocore (`tests/aws/verify_sigv4.py`);
//! - the config rules of the type.
//!
//! Without a `prometheus` binary the Prometheus tests print a loud SKIP, and fail under CI.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    exponential_histogram_data_point::Buckets, metric::Data, number_data_point,
    AggregationTemporality, ExponentialHistogram, ExponentialHistogramDataPoint, Gauge, Histogram,
    HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, Summary,
    SummaryDataPoint,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use serde_json::Value;
use support::captures::{capture_folders, expected, fixture_folder};
use support::process::{agent_command, agent_config, free_port, AgentProcess};
use support::prometheus::{Labels, Prometheus};
use support::*;

/// Series (all labels, `__name__` included) → value.
type Expected = BTreeMap<Labels, f64>;

const DELTA: i32 = AggregationTemporality::Delta as i32;
const CUMULATIVE: i32 = AggregationTemporality::Cumulative as i32;

// ---------------------------------------------------------------------------------------------
// Prometheus

fn prw_destination(url: &str, extra: &str) -> String {
    format!(
        "[[destination]]\nname = \"prom\"\ntype = \"prometheus_remote_write\"\nendpoint = \"{url}\"\nbatch = {{ linger = \"20ms\" }}\nretry = {{ initial = \"50ms\", max = \"500ms\" }}\ntimeout = \"5s\"\n{extra}\n"
    )
}

/// Waits until the destination has acknowledged every metrics record.
async fn drained(agent: &otlp_spool::Agent) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let pending = agent
            .spool()
            .pending("prom", otlp_spool::otlp::Signal::Metrics);
        if pending.records == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the agent did not deliver: {:#}",
            agent.status()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn assert_matches(got: Vec<(Labels, f64)>, want: &Expected, what: &str) {
    let got: Expected = got.into_iter().collect();
    let missing: Vec<_> = want.keys().filter(|k| !got.contains_key(*k)).collect();
    let extra: Vec<_> = got.keys().filter(|k| !want.contains_key(*k)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{what}: series differ\nmissing: {missing:#?}\nunexpected: {extra:#?}"
    );
    for (labels, w) in want {
        let g = got[labels];
        let close = g == *w || (g - w).abs() <= 1e-9 * w.abs().max(1.0);
        assert!(close, "{what}: {labels:?} is {g}, expected {w}");
    }
}

// ---------------------------------------------------------------------------------------------
// The independent expectation: OTLP → the series Prometheus should hold (latest value each).

/// Prometheus names of the metrics the tests send, written out by hand from the compatibility
/// spec's rules (unit suffix, `_total` on monotonic sums).
fn prometheus_name(otel: &str) -> &'static str {
    match otel {
        "fixture.active" => "fixture_active",
        // The name already ends with the unit: no second `_bytes` (the spec says so).
        "fixture.bytes" => "fixture_bytes_total",
        "fixture.requests" => "fixture_requests_total",
        "fixture.memory" => "fixture_memory_bytes",
        "fixture.temperature" => "fixture_temperature_celsius",
        "fixture.latency" => "fixture_latency_milliseconds",
        "fixture.exp_histogram" => "fixture_exp_histogram_seconds",
        "claude_code.token.usage" => "claude_code_token_usage_tokens_total",
        "claude_code.cost.usage" => "claude_code_cost_usage_USD_total",
        "room.temperature" => "room_temperature_celsius",
        "rpc.duration" => "rpc_duration_seconds",
        "rpc.delta_duration" => "rpc_delta_duration_seconds",
        "queue.wait" => "queue_wait_milliseconds",
        "payload.size" => "payload_size_bytes",
        other => panic!("no expected Prometheus name for {other}"),
    }
}

fn text(v: &Option<AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        other => panic!("unexpected attribute value {other:?}"),
    }
}

fn label_set(attrs: &[KeyValue]) -> Labels {
    attrs
        .iter()
        .map(|kv| (kv.key.replace('.', "_"), text(&kv.value)))
        .collect()
}

/// Go's FormatFloat(v, 'f', -1, 64) for the bounds used here.
fn le(v: f64) -> String {
    format!("{v}")
}

#[derive(Default)]
struct Model {
    /// Running DELTA totals by series (name + labels).
    sums: HashMap<Labels, f64>,
    /// DELTA histogram totals by series: bucket counts, sum, count.
    hists: HashMap<Labels, (Vec<u64>, f64, u64)>,
    /// DELTA exponential histogram totals by series: index → count, zero count, sum, count.
    expos: HashMap<Labels, (BTreeMap<i64, u64>, u64, f64, u64)>,
    latest: Expected,
    /// Series → time of the sample `latest` holds, so an older point cannot overwrite it.
    at: HashMap<Labels, u64>,
}

impl Model {
    fn set(&mut self, labels: Labels, time: u64, v: f64) {
        if self.at.get(&labels).is_some_and(|t| *t > time) {
            return;
        }
        self.at.insert(labels.clone(), time);
        self.latest.insert(labels, v);
    }

    fn series(base: &Labels, name: &str, extra: Option<(&str, String)>) -> Labels {
        let mut l = base.clone();
        l.insert("__name__".into(), name.into());
        if let Some((k, v)) = extra {
            l.insert(k.into(), v);
        }
        l
    }

    #[allow(clippy::too_many_arguments)]
    fn histogram(
        &mut self,
        base: &Labels,
        name: &str,
        bounds: &[String],
        counts: &[u64],
        sum: f64,
        count: u64,
        t: u64,
    ) {
        let mut running = 0;
        for (b, c) in bounds.iter().zip(counts) {
            running += c;
            let l = Model::series(base, &format!("{name}_bucket"), Some(("le", b.clone())));
            self.set(l, t, running as f64);
        }
        let inf = Model::series(base, &format!("{name}_bucket"), Some(("le", "+Inf".into())));
        self.set(inf, t, count as f64);
        self.set(Model::series(base, &format!("{name}_sum"), None), t, sum);
        self.set(
            Model::series(base, &format!("{name}_count"), None),
            t,
            count as f64,
        );
    }

    /// Adds one request; `common` is added to every series (external labels).
    fn add(&mut self, req: &ExportMetricsServiceRequest, common: &Labels) {
        for rm in &req.resource_metrics {
            let attrs = &rm.resource.as_ref().unwrap().attributes;
            let mut identity = common.clone();
            let mut info = Labels::new();
            for kv in attrs {
                match kv.key.as_str() {
                    "service.name" => {
                        identity.insert("job".into(), text(&kv.value));
                    }
                    "service.instance.id" => {
                        identity.insert("instance".into(), text(&kv.value));
                    }
                    k => {
                        info.insert(k.replace('.', "_"), text(&kv.value));
                    }
                }
            }
            let mut newest = 0;
            for sm in &rm.scope_metrics {
                for m in &sm.metrics {
                    let name = prometheus_name(&m.name);
                    newest = newest.max(self.metric(m, name, &identity));
                }
            }
            if !info.is_empty() {
                info.extend(identity.clone());
                info.insert("__name__".into(), "target_info".into());
                self.set(info, newest / 1_000_000 * 1_000_000, 1.0);
            }
        }
    }

    fn metric(&mut self, m: &Metric, name: &str, identity: &Labels) -> u64 {
        let mut newest = 0;
        let base = |attrs: &[KeyValue]| {
            let mut l = label_set(attrs);
            l.extend(identity.clone());
            l
        };
        match m.data.as_ref().unwrap() {
            Data::Gauge(Gauge { data_points }) => {
                for p in data_points {
                    newest = newest.max(p.time_unix_nano);
                    let l = Model::series(&base(&p.attributes), name, None);
                    self.set(l, p.time_unix_nano, number(p));
                }
            }
            Data::Sum(Sum {
                data_points,
                aggregation_temporality,
                ..
            }) => {
                for p in data_points {
                    newest = newest.max(p.time_unix_nano);
                    let l = Model::series(&base(&p.attributes), name, None);
                    let v = if *aggregation_temporality == DELTA {
                        let total = self.sums.entry(l.clone()).or_default();
                        *total += number(p);
                        *total
                    } else {
                        number(p)
                    };
                    self.set(l, p.time_unix_nano, v);
                }
            }
            Data::Histogram(Histogram {
                data_points,
                aggregation_temporality,
            }) => {
                for p in data_points {
                    newest = newest.max(p.time_unix_nano);
                    let l = base(&p.attributes);
                    let (counts, sum, count) = if *aggregation_temporality == DELTA {
                        let e = self
                            .hists
                            .entry(l.clone())
                            .or_insert_with(|| (vec![0; p.bucket_counts.len()], 0.0, 0));
                        for (t, c) in e.0.iter_mut().zip(&p.bucket_counts) {
                            *t += c;
                        }
                        e.1 += p.sum.unwrap();
                        e.2 += p.count;
                        e.clone()
                    } else {
                        (p.bucket_counts.clone(), p.sum.unwrap(), p.count)
                    };
                    let bounds: Vec<String> = p.explicit_bounds.iter().map(|b| le(*b)).collect();
                    self.histogram(&l, name, &bounds, &counts, sum, count, p.time_unix_nano);
                }
            }
            Data::ExponentialHistogram(ExponentialHistogram {
                data_points,
                aggregation_temporality,
            }) => {
                for p in data_points {
                    newest = newest.max(p.time_unix_nano);
                    let l = base(&p.attributes);
                    let neg = p.negative.clone().unwrap_or_default();
                    let pos = p.positive.clone().unwrap_or_default();
                    // Bucket index → count, for each side.
                    let mut buckets: BTreeMap<i64, u64> = BTreeMap::new();
                    for (i, c) in pos.bucket_counts.iter().enumerate() {
                        *buckets.entry(pos.offset as i64 + i as i64).or_default() += c;
                    }
                    let mut negative: BTreeMap<i64, u64> = BTreeMap::new();
                    for (i, c) in neg.bucket_counts.iter().enumerate() {
                        *negative.entry(neg.offset as i64 + i as i64).or_default() += c;
                    }
                    if *aggregation_temporality == DELTA {
                        assert!(
                            negative.is_empty(),
                            "no negative DELTA values in the fixtures"
                        );
                    }
                    let (buckets, zero, sum, count) = if *aggregation_temporality == DELTA {
                        let e = self.expos.entry(l.clone()).or_default();
                        for (i, c) in buckets {
                            *e.0.entry(i).or_default() += c;
                        }
                        e.1 += p.zero_count;
                        e.2 += p.sum.unwrap();
                        e.3 += p.count;
                        e.clone()
                    } else {
                        (buckets, p.zero_count, p.sum.unwrap(), p.count)
                    };
                    // Classic buckets: negative ones, the zero bucket, then every positive bucket
                    // from the lowest index to the highest, at upper bound 2^((i+1) / 2^scale).
                    let mut bounds = Vec::new();
                    let mut counts = Vec::new();
                    // Negative buckets, most negative first: index i covers
                    // [-base^(i+1), -base^i), so its upper bound is -base^i.
                    if let (Some(lo), Some(hi)) = (negative.keys().next(), negative.keys().last()) {
                        for i in (*lo..=*hi).rev() {
                            bounds.push(le(-(i as f64 / 2f64.powi(p.scale)).exp2()));
                            counts.push(negative.get(&i).copied().unwrap_or(0));
                        }
                    }
                    bounds.push(le(p.zero_threshold));
                    counts.push(zero);
                    if let (Some(lo), Some(hi)) = (buckets.keys().next(), buckets.keys().last()) {
                        for i in *lo..=*hi {
                            let upper = ((i + 1) as f64 / 2f64.powi(p.scale)).exp2();
                            bounds.push(le(upper));
                            counts.push(buckets.get(&i).copied().unwrap_or(0));
                        }
                    }
                    self.histogram(&l, name, &bounds, &counts, sum, count, p.time_unix_nano);
                }
            }
            Data::Summary(Summary { data_points }) => {
                for p in data_points {
                    newest = newest.max(p.time_unix_nano);
                    let b = base(&p.attributes);
                    for q in &p.quantile_values {
                        let l = Model::series(&b, name, Some(("quantile", le(q.quantile))));
                        self.set(l, p.time_unix_nano, q.value);
                    }
                    let t = p.time_unix_nano;
                    self.set(Model::series(&b, &format!("{name}_sum"), None), t, p.sum);
                    self.set(
                        Model::series(&b, &format!("{name}_count"), None),
                        t,
                        p.count as f64,
                    );
                }
            }
        }
        newest
    }
}

fn number(p: &NumberDataPoint) -> f64 {
    match p.value.unwrap() {
        number_data_point::Value::AsDouble(d) => d,
        number_data_point::Value::AsInt(i) => i as f64,
    }
}

// ---------------------------------------------------------------------------------------------
// Fixtures

/// A fixture request body as OTLP protobuf, decoded without the agent: gunzip, then prost, or
/// prost-reflect's proto3 JSON mapping for OTLP/JSON.
fn fixture_request(body: &[u8], gzip: bool, json: bool) -> ExportMetricsServiceRequest {
    let mut raw = body.to_vec();
    if gzip {
        use std::io::Read;
        raw.clear();
        flate2::read::MultiGzDecoder::new(body)
            .read_to_end(&mut raw)
            .unwrap();
    }
    if !json {
        return ExportMetricsServiceRequest::decode(&raw[..]).unwrap();
    }
    let pool = prost_reflect::DescriptorPool::decode(opentelemetry_proto::DESCRIPTORS).unwrap();
    let desc = pool
        .get_message_by_name("opentelemetry.proto.collector.metrics.v1.ExportMetricsServiceRequest")
        .unwrap();
    let mut de = serde_json::Deserializer::from_slice(&raw);
    let options = prost_reflect::DeserializeOptions::new().deny_unknown_fields(false);
    let msg =
        prost_reflect::DynamicMessage::deserialize_with_options(desc, &mut de, &options).unwrap();
    ExportMetricsServiceRequest::decode(&msg.encode_to_vec()[..]).unwrap()
}

/// One metrics request of a capture folder (`tests/fixtures/*/`): its body as sent, the
/// headers to send it with, and what it holds.
struct Captured {
    name: String,
    body: Vec<u8>,
    headers: Vec<(&'static str, &'static str)>,
    request: ExportMetricsServiceRequest,
}

impl Captured {
    async fn post(&self, addr: std::net::SocketAddr) {
        let (status, text) = post(addr, "/v1/metrics", &self.headers, self.body.clone()).await;
        assert_eq!(status, 200, "{}: {text}", self.name);
    }

    fn newest_ns(&self) -> u64 {
        let metrics = self.request.resource_metrics.iter();
        let metrics = metrics.flat_map(|rm| rm.scope_metrics.iter().flat_map(|sm| &sm.metrics));
        let times = metrics.flat_map(|m| -> Vec<u64> {
            match m.data.as_ref().unwrap() {
                Data::Gauge(g) => g.data_points.iter().map(|p| p.time_unix_nano).collect(),
                Data::Sum(s) => s.data_points.iter().map(|p| p.time_unix_nano).collect(),
                Data::Histogram(h) => h.data_points.iter().map(|p| p.time_unix_nano).collect(),
                Data::ExponentialHistogram(h) => {
                    h.data_points.iter().map(|p| p.time_unix_nano).collect()
                }
                Data::Summary(s) => s.data_points.iter().map(|p| p.time_unix_nano).collect(),
            }
        });
        times.max().unwrap()
    }
}

/// A capture folder's `expected.json` and its metrics requests, in order.
fn captured_metrics(folder: &Path) -> (Value, Vec<Captured>) {
    let expected = expected(folder);
    let folder_name = folder.file_name().unwrap().to_string_lossy();
    let mut requests = Vec::new();
    for req in expected["requests"].as_array().unwrap() {
        if req["path"] != "/v1/metrics" {
            continue;
        }
        let id = req["request"].as_str().unwrap();
        let body = std::fs::read(folder.join(format!("{id}.req"))).unwrap();
        let gzip = req["content_encoding"] == "gzip";
        let json = req["content_type"]
            .as_str()
            .unwrap()
            .starts_with("application/json");
        let mut headers = vec![if json { JSON } else { PROTOBUF }];
        if gzip {
            headers.push(("content-encoding", "gzip"));
        }
        requests.push(Captured {
            name: format!("{folder_name}/{id}"),
            request: fixture_request(&body, gzip, json),
            body,
            headers,
        });
    }
    (expected, requests)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixture_metrics_arrive_in_prometheus_as_computed() {
    let Some(prom) =
        Prometheus::start_for("fixture_metrics_arrive_in_prometheus_as_computed").await
    else {
        return;
    };
    let mut series_checked = 0;
    for folder in capture_folders("otlp-http", 9) {
        let name = folder.file_name().unwrap().to_string_lossy().into_owned();
        let dir = tempfile::tempdir().unwrap();
        let toml = config_toml(
            dir.path(),
            &prw_destination(
                &prom.write_url(),
                &format!("external_labels = {{ fixture = \"{name}\" }}"),
            ),
        );
        let agent = start_agent(&toml).await;
        let mut model = Model::default();
        let common: Labels = [("fixture".to_string(), name.clone())].into();
        let (_, requests) = captured_metrics(&folder);
        for captured in &requests {
            model.add(&captured.request, &common);
            captured.post(agent.http_addrs()[0]).await;
        }
        drained(&agent).await;
        agent.shutdown().await;
        let newest_ms = (*model.at.values().max().unwrap() / 1_000_000) as i64;
        let got = prom
            .query(&format!("{{fixture=\"{name}\"}}"), newest_ms + 1000)
            .await;
        assert_matches(got, &model.latest, &name);
        series_checked += model.latest.len();
    }
    eprintln!("fixtures: {series_checked} series compared with Prometheus");
    assert!(series_checked > 100);
}

// ---------------------------------------------------------------------------------------------
// Claude Code's DELTA stream, across a restart

fn request(resource: Vec<KeyValue>, metrics: Vec<Metric>) -> ExportMetricsServiceRequest {
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: resource,
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn claude_resource() -> Vec<KeyValue> {
    vec![
        kv("service.name", "claude-code"),
        kv("service.version", "2.1.197"),
        kv("os.type", "linux"),
        kv("os.version", "6.1.0"),
        kv("host.arch", "amd64"),
    ]
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// One export interval of Claude Code: a DELTA point per (type, model) with activity, and cost.
fn claude_interval(start: u64, end: u64, rng: &mut impl rand::Rng) -> ExportMetricsServiceRequest {
    let mut tokens = Vec::new();
    let mut cost = Vec::new();
    for model in ["claude-sonnet-4-5", "claude-haiku-4-5"] {
        for kind in ["input", "output", "cacheRead", "cacheCreation"] {
            if rng.random_bool(0.2) {
                continue; // no activity: a delta exporter sends nothing for the series
            }
            tokens.push(NumberDataPoint {
                attributes: vec![
                    kv("type", kind),
                    kv("model", model),
                    kv("session.id", "9f1c2a"),
                    kv("terminal.type", "vscode"),
                ],
                start_time_unix_nano: start,
                time_unix_nano: end,
                value: Some(number_data_point::Value::AsDouble(
                    rng.random_range(1..5000) as f64,
                )),
                ..Default::default()
            });
        }
        cost.push(NumberDataPoint {
            attributes: vec![kv("model", model), kv("session.id", "9f1c2a")],
            start_time_unix_nano: start,
            time_unix_nano: end,
            value: Some(number_data_point::Value::AsDouble(
                rng.random_range(1..100_000) as f64 / 1e6,
            )),
            ..Default::default()
        });
    }
    let sum = |name: &str, unit: &str, points| Metric {
        name: name.into(),
        unit: unit.into(),
        data: Some(Data::Sum(Sum {
            data_points: points,
            aggregation_temporality: DELTA,
            is_monotonic: true,
        })),
        ..Default::default()
    };
    request(
        claude_resource(),
        vec![
            sum("claude_code.token.usage", "tokens", tokens),
            sum("claude_code.cost.usage", "USD", cost),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_code_delta_stream_is_cumulative_in_prometheus_across_a_restart() {
    let Some(prom) = Prometheus::start_for("claude_code_delta_stream").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let toml = config_toml(
        dir.path(),
        &prw_destination(
            &prom.write_url(),
            "external_labels = { cluster = \"laptops\", __replica__ = \"${OTLP_SPOOL_TEST_REPLICA}\" }",
        ),
    );
    std::env::set_var("OTLP_SPOOL_TEST_REPLICA", "host-a");
    let mut rng = rand::rng();
    let step = 15_000_000_000u64;
    let t0 = now_ns() - 30 * step;
    let intervals: Vec<ExportMetricsServiceRequest> = (0..24)
        .map(|i| claude_interval(t0 + i * step, t0 + (i + 1) * step, &mut rng))
        .collect();
    let common: Labels = [
        ("cluster".to_string(), "laptops".to_string()),
        ("__replica__".to_string(), "host-a".to_string()),
    ]
    .into();
    let mut model = Model::default();
    let mut points: HashMap<Labels, u64> = HashMap::new();
    for r in &intervals {
        model.add(r, &common);
        for rm in &r.resource_metrics {
            for m in &rm.scope_metrics[0].metrics {
                if let Some(Data::Sum(s)) = &m.data {
                    for p in &s.data_points {
                        let mut l = label_set(&p.attributes);
                        l.insert("__name__".into(), prometheus_name(&m.name).into());
                        *points.entry(l).or_default() += 1;
                    }
                }
            }
        }
    }

    let send = |agent: &otlp_spool::Agent, r: &ExportMetricsServiceRequest| {
        let addr = agent.http_addrs()[0];
        let body = r.encode_to_vec();
        async move {
            let (status, text) = post(addr, "/v1/metrics", &[PROTOBUF], body).await;
            assert_eq!(status, 200, "{text}");
        }
    };
    let agent = start_agent(&toml).await;
    for r in &intervals[..12] {
        send(&agent, r).await;
    }
    drained(&agent).await;
    agent.shutdown().await;

    // A new agent on the same spool: the totals continue. The last interval is sent again (a
    // client retrying after a timeout): its points are duplicates and change nothing.
    let agent = start_agent(&toml).await;
    send(&agent, &intervals[11]).await;
    for r in &intervals[12..] {
        send(&agent, r).await;
    }
    drained(&agent).await;
    agent.shutdown().await;

    let end_ms = ((t0 + 24 * step) / 1_000_000) as i64;
    let with_common = |l: &Labels| {
        let mut l = l.clone();
        l.extend(common.clone());
        l.insert("job".into(), "claude-code".into());
        l
    };
    for name in [
        "claude_code_token_usage_tokens_total",
        "claude_code_cost_usage_USD_total",
    ] {
        let want: Expected = model
            .latest
            .iter()
            .filter(|(l, _)| l["__name__"] == name)
            .map(|(l, v)| (l.clone(), *v))
            .collect();
        assert!(!want.is_empty());
        assert_matches(prom.query(name, end_ms + 1000).await, &want, name);

        // No counter reset anywhere in the window, and exactly one sample per delta point.
        let resets = prom
            .query(&format!("resets({name}[1h])"), end_ms + 1000)
            .await;
        assert_eq!(resets.len(), want.len(), "{name}: resets() per series");
        assert!(
            resets.iter().all(|(_, v)| *v == 0.0),
            "{name}: counter resets seen: {resets:?}"
        );
        let counts = prom
            .query(&format!("count_over_time({name}[1h])"), end_ms + 1000)
            .await;
        let want_counts: Expected = points
            .iter()
            .filter(|(l, _)| l["__name__"] == name)
            .map(|(l, n)| {
                let mut l = with_common(l);
                l.remove("__name__");
                (l, *n as f64)
            })
            .collect();
        assert_matches(counts, &want_counts, &format!("count_over_time({name})"));
    }
    // The resource's other attributes are on target_info, not on each series.
    let info = prom.query("target_info", end_ms + 1000).await;
    let want: Labels = [
        ("__name__", "target_info"),
        ("job", "claude-code"),
        ("service_version", "2.1.197"),
        ("os_type", "linux"),
        ("os_version", "6.1.0"),
        ("host_arch", "amd64"),
        ("cluster", "laptops"),
        ("__replica__", "host-a"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(info, vec![(want, 1.0)]);
}

// ---------------------------------------------------------------------------------------------
// Fleet scale: several sessions in one series (issue 17)

/// Sets `session.id` on every point of `r` (`None`: removes it, as Claude Code does with
/// `OTEL_METRICS_INCLUDE_SESSION_ID=false`).
fn with_session(
    mut r: ExportMetricsServiceRequest,
    session: Option<&str>,
) -> ExportMetricsServiceRequest {
    for rm in &mut r.resource_metrics {
        for sm in &mut rm.scope_metrics {
            for m in &mut sm.metrics {
                if let Some(Data::Sum(s)) = &mut m.data {
                    for p in &mut s.data_points {
                        p.attributes.retain(|a| a.key != "session.id");
                        p.attributes.extend(session.map(|id| kv("session.id", id)));
                    }
                }
            }
        }
    }
    r
}

/// Every delta of `requests` summed per series, `session.id` left out: what Prometheus must
/// hold once the sessions share series.
fn delta_sums(requests: &[&ExportMetricsServiceRequest], common: &Labels) -> Expected {
    let mut want = Expected::new();
    for r in requests {
        for m in &r.resource_metrics[0].scope_metrics[0].metrics {
            let Some(Data::Sum(s)) = &m.data else {
                unreachable!("Claude Code's metrics are sums")
            };
            for p in &s.data_points {
                let mut l = label_set(&p.attributes);
                l.remove("session_id");
                l.extend(common.clone());
                l.insert("job".into(), "claude-code".into());
                l.insert("__name__".into(), prometheus_name(&m.name).into());
                *want.entry(l).or_default() += number(p);
            }
        }
    }
    want
}

/// Two Claude Code sessions (two terminals) whose points share series, sent so that each
/// batch of one is older than the other's batch before it, and one batch of the first
/// arrives last (its SDK's first attempt never reached the agent, and it retried late).
/// Prometheus must hold the sum of every delta: today's rule (a point at or before its
/// series' last time is a duplicate) dropped half of them. Run twice against one Prometheus:
/// sessions that share labels (`OTEL_METRICS_INCLUDE_SESSION_ID=false`), and sessions told
/// apart by `session.id` that `drop_labels` removes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_out_of_order_delta_sessions_sum_exactly() {
    let Some(prom) =
        Prometheus::start_for("concurrent_out_of_order_delta_sessions_sum_exactly").await
    else {
        return;
    };
    let mut rng = rand::rng();
    let step = 10_000_000_000u64;
    let n = 8;
    let t0 = now_ns() - (n + 2) * step;
    // Session b's intervals end half a step before session a's.
    let a: Vec<_> = (0..n)
        .map(|i| claude_interval(t0 + i * step, t0 + (i + 1) * step, &mut rng))
        .collect();
    let b: Vec<_> = (0..n)
        .map(|i| {
            claude_interval(
                t0 + i * step - step / 2,
                t0 + (i + 1) * step - step / 2,
                &mut rng,
            )
        })
        .collect();
    let late = 2;
    for (run, session_ids, extra) in [
        ("shared", [None, None], ""),
        (
            "dropped",
            [Some("a-5e1f"), Some("b-07c3")],
            "drop_labels = [\"session.id\"]\ndrop_labels_gauges = \"keep\"\n",
        ),
    ] {
        let a: Vec<_> = a
            .iter()
            .map(|r| with_session(r.clone(), session_ids[0]))
            .collect();
        let b: Vec<_> = b
            .iter()
            .map(|r| with_session(r.clone(), session_ids[1]))
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let destination = format!("external_labels = {{ run = \"{run}\" }}\n{extra}");
        let toml = config_toml(
            dir.path(),
            &prw_destination(&prom.write_url(), &destination),
        );
        let agent = start_agent(&toml).await;
        let addr = agent.http_addrs()[0];
        let mut order = Vec::new();
        for i in 0..n as usize {
            if i != late {
                order.push(&a[i]);
            }
            order.push(&b[i]);
        }
        order.push(&a[late]);
        for r in &order {
            let (status, text) = post(addr, "/v1/metrics", &[PROTOBUF], r.encode_to_vec()).await;
            assert_eq!(status, 200, "{text}");
            // One batch each: out of order across batches, which is where time decided.
            drained(&agent).await;
        }
        let common: Labels = [("run".to_string(), run.to_string())].into();
        let want = delta_sums(&order, &common);
        let end_ms = ((t0 + n * step) / 1_000_000) as i64;
        let query = format!("{{__name__=~\"claude_code_.*\",run=\"{run}\"}}");
        assert_matches(prom.query(&query, end_ms + 1000).await, &want, run);
        let resets = prom
            .query(&format!("resets({query}[1h])"), end_ms + 1000)
            .await;
        assert!(
            resets.iter().all(|(_, v)| *v == 0.0),
            "{run}: counter resets: {resets:?}"
        );
        let status = agent.status();
        let rw = &status["destinations"][0]["remote_write"];
        assert_eq!(rw["points_ignored"]["already_applied"], 0, "{run}: {rw}");
        let metrics = &status["destinations"][0]["signals"]["metrics"];
        assert_eq!(metrics["dead_lettered_items"], 0, "{run}: {metrics}");
        let away = rw["series_aggregated_away"].as_u64().unwrap();
        if run == "dropped" {
            // Each session's series that the other session also has are merged away.
            assert!(away > 0, "{run}: {rw}");
        } else {
            assert_eq!(away, 0, "{run}: {rw}");
        }
        agent.shutdown().await;
    }
}

/// The state saved, the cursor not (the crash `kill -9` rarely hits: between the two writes):
/// the batches go again and are recognised by their spool position. Made exact here: another
/// destination that never delivers keeps the records, the cursor is set back, and a reload
/// restarts the worker from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_sent_again_after_the_state_was_saved_count_once() {
    let Some(prom) =
        Prometheus::start_for("batches_sent_again_after_the_state_was_saved_count_once").await
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let witness = "[[destination]]\nname = \"witness\"\ntype = \"otlp_http\"\nendpoint = \"http://127.0.0.1:9\"\nsignals = [\"metrics\"]\n";
    let toml = |extra: &str| {
        let prw = prw_destination(&prom.write_url(), extra);
        config_toml(dir.path(), &format!("{prw}{witness}"))
    };
    let mut rng = rand::rng();
    let step = 10_000_000_000u64;
    let t0 = now_ns() - 10 * step;
    let intervals: Vec<_> = (0..6)
        .map(|i| {
            let r = claude_interval(t0 + i * step, t0 + (i + 1) * step, &mut rng);
            with_session(r, None)
        })
        .collect();
    let mut agent = start_agent(&toml("")).await;
    for r in &intervals {
        let addr = agent.http_addrs()[0];
        let (status, text) = post(addr, "/v1/metrics", &[PROTOBUF], r.encode_to_vec()).await;
        assert_eq!(status, 200, "{text}");
        drained(&agent).await;
    }
    let metrics = otlp_spool::otlp::Signal::Metrics;
    agent.spool().ack("prom", metrics, 0).unwrap();
    let config = otlp_spool::config::Config::parse(&toml("stale_after = \"2h\"")).unwrap();
    agent.reload(config).await.unwrap();
    drained(&agent).await;
    let points: u64 = intervals
        .iter()
        .flat_map(|r| &r.resource_metrics[0].scope_metrics[0].metrics)
        .map(|m| match &m.data {
            Some(Data::Sum(s)) => s.data_points.len() as u64,
            _ => 0,
        })
        .sum();
    let rw = &agent.status()["destinations"][0]["remote_write"];
    assert_eq!(rw["points_ignored"]["already_applied"], points, "{rw}");
    let end_ms = ((t0 + 6 * step) / 1_000_000) as i64;
    let want = delta_sums(&intervals.iter().collect::<Vec<_>>(), &Labels::new());
    let query = "{__name__=~\"claude_code_.*\"}";
    assert_matches(prom.query(query, end_ms + 1000).await, &want, "sent again");
    agent.shutdown().await;
}

/// A Copilot-CLI-shaped CUMULATIVE counter and histogram from two sessions, merged by
/// `drop_labels = ["session.id"]`; one session's process restarts mid-stream (new start time,
/// values from zero again). The merged series keeps rising by exactly what the sessions
/// counted, with no reset, and a restart of the agent in between keeps each session's last
/// value (the original-series memory is in the spool).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cumulative_sessions_merged_by_drop_labels_survive_a_reset() {
    let Some(prom) =
        Prometheus::start_for("cumulative_sessions_merged_by_drop_labels_survive_a_reset").await
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let toml = config_toml(
        dir.path(),
        &prw_destination(
            &prom.write_url(),
            "drop_labels = [\"session.id\"]\ndrop_labels_gauges = \"last\"\n",
        ),
    );
    let step = 10_000_000_000u64;
    let t0 = now_ns() - 20 * step;
    let bounds = vec![100.0, 1000.0];
    // (session, process start, time, requests so far, latency bucket counts so far)
    let mut points: Vec<(&str, u64, u64, f64, Vec<u64>)> = Vec::new();
    let (mut a, mut a_buckets) = (0.0, vec![0u64; 3]);
    let (mut b, mut b_buckets) = (0.0, vec![0u64; 3]);
    let mut b_start = t0;
    for i in 1..=12u64 {
        a += 3.0;
        a_buckets[(i % 3) as usize] += 1;
        points.push(("a", t0, t0 + i * step, a, a_buckets.clone()));
        if i == 7 {
            // Session b's process restarts: a new start time, counting from zero.
            b_start = t0 + i * step - step / 2;
            (b, b_buckets) = (0.0, vec![0; 3]);
        }
        b += 5.0;
        b_buckets[((i + 1) % 3) as usize] += 2;
        points.push(("b", b_start, t0 + i * step - step / 4, b, b_buckets.clone()));
    }
    // What the sessions counted: a's last value, and b's last value before the restart plus
    // its last value after it.
    let want_requests = 12.0 * 3.0 + 6.0 * 5.0 + 6.0 * 5.0;
    let want_count = 12 + 6 * 2 + 6 * 2;
    let request = |(session, start, time, requests, buckets): &(&str, u64, u64, f64, Vec<u64>)| {
        let attrs = vec![kv("model", "gpt-5"), kv("session.id", session)];
        let sum = Metric {
            name: "copilot.requests".into(),
            data: Some(Data::Sum(Sum {
                data_points: vec![NumberDataPoint {
                    attributes: attrs.clone(),
                    start_time_unix_nano: *start,
                    time_unix_nano: *time,
                    value: Some(number_data_point::Value::AsDouble(*requests)),
                    ..Default::default()
                }],
                aggregation_temporality: CUMULATIVE,
                is_monotonic: true,
            })),
            ..Default::default()
        };
        let histogram = Metric {
            name: "copilot.latency".into(),
            unit: "ms".into(),
            data: Some(Data::Histogram(Histogram {
                data_points: vec![HistogramDataPoint {
                    attributes: attrs,
                    start_time_unix_nano: *start,
                    time_unix_nano: *time,
                    count: buckets.iter().sum(),
                    sum: Some(buckets.iter().sum::<u64>() as f64 * 10.0),
                    bucket_counts: buckets.clone(),
                    explicit_bounds: bounds.clone(),
                    ..Default::default()
                }],
                aggregation_temporality: CUMULATIVE,
            })),
            ..Default::default()
        };
        request(
            vec![kv("service.name", "copilot-cli")],
            vec![sum, histogram],
        )
    };
    let mut agent = start_agent(&toml).await;
    for (i, p) in points.iter().enumerate() {
        if i == points.len() / 2 {
            agent.shutdown().await;
            agent = start_agent(&toml).await;
        }
        let addr = agent.http_addrs()[0];
        let (status, text) =
            post(addr, "/v1/metrics", &[PROTOBUF], request(p).encode_to_vec()).await;
        assert_eq!(status, 200, "{text}");
        if i % 3 == 2 {
            drained(&agent).await;
        }
    }
    drained(&agent).await;
    let end_ms = ((t0 + 13 * step) / 1_000_000) as i64;
    let requests = prom.query("copilot_requests_total", end_ms).await;
    let want: Labels = [
        ("__name__", "copilot_requests_total"),
        ("job", "copilot-cli"),
        ("model", "gpt-5"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(
        requests,
        vec![(want, want_requests)],
        "one merged series, the sum"
    );
    let count = prom
        .query("copilot_latency_milliseconds_count", end_ms)
        .await;
    assert_eq!(count.len(), 1, "{count:?}");
    assert_eq!(count[0].1, want_count as f64);
    for name in [
        "copilot_requests_total",
        "copilot_latency_milliseconds_count",
    ] {
        let resets = prom.query(&format!("resets({name}[1h])"), end_ms).await;
        assert_eq!(resets.len(), 1, "{name}: {resets:?}");
        assert_eq!(resets[0].1, 0.0, "{name}: resets");
    }
    let status = agent.status();
    let rw = &status["destinations"][0]["remote_write"];
    // Two sessions' series of each of the two metrics, merged into one each.
    assert_eq!(rw["series_aggregated_away"], 2, "{rw}");
    let url = format!("http://{}/metrics", agent.http_addrs()[0]);
    let text = reqwest::get(url).await.unwrap().text().await.unwrap();
    for sample in [
        "otlp_spool_remote_write_series_aggregated_away{destination=\"prom\"} 2\n",
        "otlp_spool_remote_write_points_ignored_total{destination=\"prom\",reason=\"already_applied\"} 0\n",
    ] {
        assert!(text.contains(sample), "no {sample:?} in\n{text}");
    }
    agent.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// The AI coding CLIs' own metrics (`tests/fixtures/ai-cli/`), three sessions each

/// One capture folder per tool, and the `expected.json` variant whose labels
/// `drop_labels` removes: `session.id`, and for Copilot CLI (no `session.id` on its points; a
/// process is its `service.instance.id`) that too.
const AI_CLI: [(&str, &str); 3] = [
    ("claude-code-2.1.332-http-protobuf", "without_session_id"),
    (
        "copilot-cli-1.0.102-http-protobuf",
        "without_session_id_and_instance",
    ),
    ("gemini-cli-0.61.0-grpc-gzip", "without_session_id"),
];

fn ai_cli_folder(name: &str) -> PathBuf {
    fixture_folder(&format!("ai-cli/{name}"))
}

/// Label text as `expected.py` wrote it: strings, numbers and booleans.
fn json_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `expected.json`'s labels of a series (OpenTelemetry keys, identity resource attributes
/// included) as Prometheus labels.
fn prometheus_labels(labels: &Value, common: &Labels) -> Labels {
    let labels = labels.as_object().unwrap();
    let mut out = common.clone();
    for (k, v) in labels {
        match k.as_str() {
            // An attribute without a value is no label (Prometheus has no empty labels).
            _ if v.is_null() || v == "" => {}
            "service.namespace" => {}
            "service.name" => {
                let job = match labels.get("service.namespace") {
                    Some(ns) => format!("{}/{}", json_text(ns), json_text(v)),
                    None => json_text(v),
                };
                out.insert("job".into(), job);
            }
            "service.instance.id" => {
                out.insert("instance".into(), json_text(v));
            }
            k => {
                out.insert(k.replace('.', "_"), json_text(v));
            }
        }
    }
    out
}

/// The one Prometheus metric name of OpenTelemetry metric `otel` among `names` that ends with
/// `suffix` (the unit suffix in between is the translation's business, checked elsewhere).
fn name_of<'a>(otel: &str, suffix: &str, names: &'a [String]) -> Result<&'a str, String> {
    let base: String = otel
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let found: Vec<&String> = names
        .iter()
        .filter(|n| n.ends_with(suffix) && (**n == base || n.starts_with(&format!("{base}_"))))
        .collect();
    match found[..] {
        [name] => Ok(name),
        _ => Err(format!("{otel}{suffix}: one name expected among {names:?}")),
    }
}

/// Compares what Prometheus holds for `common` at `at_ms` with `expected.json`'s `variant`
/// (`None`: every label kept, series counts only): per metric the number of series, and with a
/// variant each series' total (sums) or count and sum (histograms), to the bit.
/// `Ok`: the number of Prometheus series (target_info left out); `Err`: the first difference.
async fn check_capture(
    prom: &Prometheus,
    expected: &Value,
    variant: Option<&str>,
    common: &Labels,
    at_ms: i64,
) -> Result<usize, String> {
    let selector: Vec<String> = common.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    let got: Vec<(Labels, f64)> = prom
        .query(&format!("{{{}}}", selector.join(",")), at_ms)
        .await
        .into_iter()
        .filter(|(l, _)| l["__name__"] != "target_info")
        .collect();
    let mut names: Vec<String> = got.iter().map(|(l, _)| l["__name__"].clone()).collect();
    names.sort();
    names.dedup();
    let values = |name: &str| -> BTreeMap<Labels, f64> {
        got.iter()
            .filter(|(l, _)| l["__name__"] == name)
            .map(|(l, v)| {
                let mut l = l.clone();
                l.remove("__name__");
                (l, *v)
            })
            .collect()
    };
    let mut claimed = 0;
    for (metric, m) in expected["series"].as_object().unwrap() {
        let histogram = m["kind"] == "histogram";
        let (suffix, fields) = if histogram {
            ("_count", &[("_count", "count"), ("_sum", "sum")][..])
        } else {
            ("_total", &[("_total", "sum")][..])
        };
        let base = name_of(metric, suffix, &names)?;
        let base = &base[..base.len() - suffix.len()];
        for (suffix, field) in fields {
            let got = values(&format!("{base}{suffix}"));
            claimed += got.len();
            let (want, what) = match variant {
                None => (&m["series"], "every label"),
                Some(variant) => (&m[variant]["series"], variant),
            };
            if got.len() as u64 != want.as_u64().unwrap() {
                let n = got.len();
                return Err(format!(
                    "{metric}{suffix}: {n} series with {what}, expected {want}"
                ));
            }
            let Some(variant) = variant else { continue };
            for total in m[variant]["totals"].as_array().unwrap() {
                let labels = prometheus_labels(&total["labels"], common);
                let want = total[*field].as_f64().unwrap();
                let Some(value) = got.get(&labels) else {
                    let has = got.keys().collect::<Vec<_>>();
                    return Err(format!(
                        "{metric}{suffix}: no series {labels:?}; there are {has:?}"
                    ));
                };
                if value.to_bits() != want.to_bits() {
                    return Err(format!(
                        "{metric}{suffix} {labels:?}: {value}, expected {want}"
                    ));
                }
            }
        }
        if histogram {
            // The buckets of each histogram series are there too.
            claimed += got
                .iter()
                .filter(|(l, _)| l["__name__"] == format!("{base}_bucket"))
                .count();
        }
    }
    if claimed != got.len() {
        return Err(format!("series of no expected metric among {names:?}"));
    }
    Ok(got.len())
}

/// Each tool's three captured sessions, replayed as recorded: without `drop_labels` the series
/// are as many as `expected.json` counts with every label; with it, as many as it counts
/// without the dropped ones, and each merged series holds the independent total (sums,
/// histogram counts and sums, bit for bit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ai_cli_captures_merge_sessions_with_drop_labels() {
    let Some(prom) = Prometheus::start_for("ai_cli_captures_merge_sessions_with_drop_labels").await
    else {
        return;
    };
    let mut tools: Vec<_> = AI_CLI
        .iter()
        .map(|(folder, variant)| {
            let (expected, requests) = captured_metrics(&ai_cli_folder(folder));
            (folder, variant, expected, requests)
        })
        .collect();
    // In the order they were recorded: Prometheus takes no sample over an hour older than its
    // newest.
    tools.sort_by_key(|t| t.3[0].newest_ns());
    for (folder, variant, expected, requests) in &tools {
        let dropped: Vec<String> = expected["series"]
            .as_object()
            .unwrap()
            .values()
            .next()
            .unwrap()[variant]["dropped"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| format!("{d}"))
            .collect();
        let at_ms =
            (requests.iter().map(Captured::newest_ns).max().unwrap() / 1_000_000) as i64 + 1000;
        let mut counts = Vec::new();
        for drop in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let run = if drop { "dropped" } else { "all" };
            let mut extra =
                format!("external_labels = {{ tool = \"{folder}\", run = \"{run}\" }}\n");
            if drop {
                extra += &format!(
                    "drop_labels = [{}]\ndrop_labels_gauges = \"keep\"\n",
                    dropped.join(", ")
                );
            }
            let toml = config_toml(dir.path(), &prw_destination(&prom.write_url(), &extra));
            let agent = start_agent(&toml).await;
            for captured in requests {
                captured.post(agent.http_addrs()[0]).await;
            }
            drained(&agent).await;
            let metrics = &agent.status()["destinations"][0]["signals"]["metrics"];
            assert_eq!(metrics["dead_lettered_items"], 0, "{folder}: {metrics}");
            agent.shutdown().await;
            let common: Labels = [
                ("tool".to_string(), folder.to_string()),
                ("run".to_string(), run.to_string()),
            ]
            .into();
            let variant = drop.then_some(**variant);
            let checked = check_capture(&prom, expected, variant, &common, at_ms).await;
            counts.push(checked.unwrap_or_else(|e| panic!("{folder}: {e}")));
        }
        eprintln!(
            "{folder}: {} Prometheus series with every label, {} with drop_labels = [{}]",
            counts[0],
            counts[1],
            dropped.join(", ")
        );
        assert!(counts[1] < counts[0], "{folder}: {counts:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Histograms, summaries, exponential histograms, staleness

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histograms_summaries_and_stale_points_round_trip() {
    let Some(prom) =
        Prometheus::start_for("histograms_summaries_and_stale_points_round_trip").await
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let agent = start_agent(&config_toml(
        dir.path(),
        &prw_destination(&prom.write_url(), ""),
    ))
    .await;
    let addr = agent.http_addrs()[0];
    let t1 = now_ns() - 120_000_000_000;
    let t2 = t1 + 10_000_000_000;
    let t3 = t2 + 10_000_000_000;
    let resource = vec![
        kv("service.name", "shapes"),
        kv("service.instance.id", "i-1"),
    ];
    let attrs = vec![kv("rpc.method", "Get")];
    let hist_point = |start, time, counts: Vec<u64>, sum| HistogramDataPoint {
        attributes: attrs.clone(),
        start_time_unix_nano: start,
        time_unix_nano: time,
        count: counts.iter().sum(),
        sum: Some(sum),
        explicit_bounds: vec![0.1, 1.0, 10.0],
        bucket_counts: counts,
        ..Default::default()
    };
    let histogram = |name: &str, unit: &str, temporality, points| Metric {
        name: name.into(),
        unit: unit.into(),
        data: Some(Data::Histogram(Histogram {
            data_points: points,
            aggregation_temporality: temporality,
        })),
        ..Default::default()
    };
    let gauge = |time, value: f64, flags| Metric {
        name: "room.temperature".into(),
        unit: "Cel".into(),
        data: Some(Data::Gauge(Gauge {
            data_points: vec![NumberDataPoint {
                attributes: vec![kv("room", "lab")],
                time_unix_nano: time,
                value: Some(number_data_point::Value::AsDouble(value)),
                flags,
                ..Default::default()
            }],
        })),
        ..Default::default()
    };
    let first = request(
        resource.clone(),
        vec![
            gauge(t1, 21.5, 0),
            histogram(
                "rpc.duration",
                "s",
                CUMULATIVE,
                vec![hist_point(t1 - 1, t1, vec![1, 2, 3, 4], 55.5)],
            ),
            histogram(
                "rpc.delta_duration",
                "s",
                DELTA,
                vec![hist_point(t1 - 1, t1, vec![1, 0, 1, 0], 5.0)],
            ),
            Metric {
                name: "queue.wait".into(),
                unit: "ms".into(),
                data: Some(Data::Summary(Summary {
                    data_points: vec![SummaryDataPoint {
                        attributes: attrs.clone(),
                        time_unix_nano: t1,
                        count: 20,
                        sum: 100.0,
                        quantile_values: vec![
                            opentelemetry_proto::tonic::metrics::v1::summary_data_point::ValueAtQuantile {
                                quantile: 0.5,
                                value: 3.0,
                            },
                            opentelemetry_proto::tonic::metrics::v1::summary_data_point::ValueAtQuantile {
                                quantile: 0.99,
                                value: 9.0,
                            },
                        ],
                        ..Default::default()
                    }],
                })),
                ..Default::default()
            },
            Metric {
                name: "payload.size".into(),
                unit: "By".into(),
                data: Some(Data::ExponentialHistogram(ExponentialHistogram {
                    aggregation_temporality: CUMULATIVE,
                    data_points: vec![ExponentialHistogramDataPoint {
                        attributes: attrs.clone(),
                        time_unix_nano: t1,
                        scale: 0,
                        count: 6,
                        sum: Some(12.0),
                        zero_count: 1,
                        positive: Some(Buckets {
                            offset: 0,
                            bucket_counts: vec![2, 3],
                        }),
                        ..Default::default()
                    }],
                })),
                ..Default::default()
            },
        ],
    );
    let second = request(
        resource.clone(),
        vec![histogram(
            "rpc.delta_duration",
            "s",
            DELTA,
            vec![hist_point(t1, t2, vec![0, 1, 1, 1], 7.0)],
        )],
    );
    // The gauge stops: a NoRecordedValue point, which must make Prometheus forget it.
    let third = request(resource.clone(), vec![gauge(t3, 0.0, 1)]);
    let mut model = Model::default();
    for r in [&first, &second] {
        model.add(r, &Labels::new());
        let (status, text) = post(addr, "/v1/metrics", &[PROTOBUF], r.encode_to_vec()).await;
        assert_eq!(status, 200, "{text}");
    }
    drained(&agent).await;
    // Written out by hand as well: the buckets are cumulative, +Inf is the count.
    let expect = |name: &str, extra: Option<(&str, &str)>| {
        let mut l: Labels = [
            ("__name__", name),
            ("job", "shapes"),
            ("instance", "i-1"),
            ("rpc_method", "Get"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        if let Some((k, v)) = extra {
            l.insert(k.into(), v.into());
        }
        model.latest.get(&l).copied()
    };
    let b = |le| Some(("le", le));
    assert_eq!(expect("rpc_duration_seconds_bucket", b("0.1")), Some(1.0));
    assert_eq!(expect("rpc_duration_seconds_bucket", b("10")), Some(6.0));
    assert_eq!(expect("rpc_duration_seconds_bucket", b("+Inf")), Some(10.0));
    assert_eq!(
        expect("rpc_delta_duration_seconds_bucket", b("1")),
        Some(2.0)
    );
    assert_eq!(
        expect("rpc_delta_duration_seconds_bucket", b("+Inf")),
        Some(5.0)
    );
    assert_eq!(expect("rpc_delta_duration_seconds_sum", None), Some(12.0));
    assert_eq!(expect("payload_size_bytes_bucket", b("0")), Some(1.0));
    assert_eq!(expect("payload_size_bytes_bucket", b("2")), Some(3.0));
    assert_eq!(expect("payload_size_bytes_bucket", b("4")), Some(6.0));
    assert_eq!(
        expect("queue_wait_milliseconds", Some(("quantile", "0.99"))),
        Some(9.0)
    );
    let at = (t2 / 1_000_000) as i64 + 1000;
    let got = prom.query("{job=\"shapes\"}", at).await;
    assert_matches(got, &model.latest, "shapes");
    let mut sum_of_buckets = prom
        .query("histogram_quantile(0.5, rpc_duration_seconds_bucket)", at)
        .await;
    assert_eq!(sum_of_buckets.len(), 1, "a usable classic histogram");
    assert!(sum_of_buckets.pop().unwrap().1 > 1.0);

    let (status, _) = post(addr, "/v1/metrics", &[PROTOBUF], third.encode_to_vec()).await;
    assert_eq!(status, 200);
    drained(&agent).await;
    let at3 = (t3 / 1_000_000) as i64 + 1000;
    assert!(
        prom.query("room_temperature_celsius", at3).await.is_empty(),
        "a NoRecordedValue point is a stale marker"
    );
    assert_eq!(
        prom.query("room_temperature_celsius", at).await.len(),
        1,
        "before it the gauge had its value"
    );
    agent.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Wire format, retries and dead letters against the fault-injecting sink

#[derive(Clone, PartialEq, prost::Message)]
struct WriteRequest {
    #[prost(message, repeated, tag = "1")]
    timeseries: Vec<TimeSeries>,
}
#[derive(Clone, PartialEq, prost::Message)]
struct TimeSeries {
    #[prost(message, repeated, tag = "1")]
    labels: Vec<Label>,
    #[prost(message, repeated, tag = "2")]
    samples: Vec<Sample>,
}
#[derive(Clone, PartialEq, prost::Message)]
struct Label {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(string, tag = "2")]
    value: String,
}
#[derive(Clone, PartialEq, prost::Message)]
struct Sample {
    #[prost(double, tag = "1")]
    value: f64,
    #[prost(int64, tag = "2")]
    timestamp: i64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_write_wire_format_retries_and_dead_letters() {
    let sink = Sink::start_on(
        "127.0.0.1:0".parse().unwrap(),
        [Reply::Status(503, None), Reply::Status(429, Some(0))],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("{}/workspaces/ws-1/api/v1/remote_write", sink.endpoint());
    let agent = start_agent(&config_toml(dir.path(), &prw_destination(&url, ""))).await;
    let addr = agent.http_addrs()[0];
    let t0 = now_ns();
    let mut rng = rand::rng();
    // Two intervals in one batch, the later one first: samples still go out in time order.
    for r in [
        claude_interval(t0, t0 + 1_000_000_000, &mut rng),
        claude_interval(t0 - 1_000_000_000, t0, &mut rng),
    ] {
        let (status, _) = post(addr, "/v1/metrics", &[PROTOBUF], r.encode_to_vec()).await;
        assert_eq!(status, 200);
    }
    drained(&agent).await;
    let received = sink.received();
    assert!(
        received.len() >= 3,
        "503 and 429 were retried: {received:?}"
    );
    assert!(!received[0].accepted && !received[1].accepted);
    for r in &received {
        assert_eq!(
            r.path, "/workspaces/ws-1/api/v1/remote_write",
            "endpoint used as is"
        );
        assert_eq!(r.headers["content-encoding"], "snappy");
        assert_eq!(r.headers["content-type"], "application/x-protobuf");
        assert_eq!(r.headers["x-prometheus-remote-write-version"], "0.1.0");
        let raw = snap::raw::Decoder::new().decompress_vec(&r.body).unwrap();
        let write = WriteRequest::decode(&raw[..]).unwrap();
        assert!(!write.timeseries.is_empty());
        for ts in &write.timeseries {
            let names: Vec<&str> = ts.labels.iter().map(|l| l.name.as_str()).collect();
            let mut sorted = names.clone();
            sorted.sort();
            assert_eq!(names, sorted, "labels sorted by name");
            assert!(names.contains(&"__name__") && names.contains(&"job"));
            assert!(
                ts.samples
                    .windows(2)
                    .all(|w| w[0].timestamp < w[1].timestamp),
                "samples in time order: {:?}",
                ts.samples
            );
        }
    }
    let last = received.last().unwrap();
    let write = WriteRequest::decode(
        &snap::raw::Decoder::new()
            .decompress_vec(&last.body)
            .unwrap()[..],
    )
    .unwrap();
    assert!(
        write.timeseries.iter().any(|ts| ts.samples.len() == 2),
        "both intervals of a series in one request"
    );

    // A 400 is final: the batch is dead-lettered and the worker moves on.
    sink.set_fallback(Some(Reply::Status(400, None)));
    let r = claude_interval(t0 + 1_000_000_000, t0 + 2_000_000_000, &mut rng);
    let (status, _) = post(addr, "/v1/metrics", &[PROTOBUF], r.encode_to_vec()).await;
    assert_eq!(status, 200);
    drained(&agent).await;
    assert_eq!(agent.spool().usage().dead_letter_records, 1);
    sink.set_fallback(None);
    let r = claude_interval(t0 + 2_000_000_000, t0 + 3_000_000_000, &mut rng);
    let (status, _) = post(addr, "/v1/metrics", &[PROTOBUF], r.encode_to_vec()).await;
    assert_eq!(status, 200);
    drained(&agent).await;
    assert!(sink.received().last().unwrap().accepted);
    assert_eq!(agent.spool().usage().dead_letter_records, 1);
    agent.shutdown().await;
}

#[test]
fn prometheus_remote_write_config_rules() {
    use otlp_spool::config::RawConfig;
    use otlp_spool::otlp::Signal;
    let base = "[[destination]]\nname = \"amp\"\ntype = \"prometheus_remote_write\"\nendpoint = \"http://127.0.0.1:9/api/v1/write\"\n";
    let c = RawConfig::parse(&format!("{base}external_labels = {{ cluster = \"c\", __replica__ = \"r\" }}\nstale_after = \"30m\"\n")).unwrap();
    c.validate("test").unwrap();
    let d = &c.destinations[0];
    assert_eq!(d.signals, vec![Signal::Metrics], "metrics by default");
    assert_eq!(d.external_labels["__replica__"], "r");
    assert_eq!(d.stale_after, Some(Duration::from_secs(1800)));

    let c = RawConfig::parse(&format!("{base}signals = [\"metrics\", \"logs\"]\n")).unwrap();
    let e = c.validate("test").unwrap_err().to_string();
    assert!(e.contains("metrics only") && e.contains("logs"), "{e}");

    let c = RawConfig::parse(&format!(
        "{base}external_labels = {{ \"bad-name\" = \"x\" }}\n"
    ))
    .unwrap();
    let e = c.validate("test").unwrap_err().to_string();
    assert!(e.contains("bad-name"), "{e}");

    let other = "[[destination]]\nname = \"o\"\ntype = \"otlp_http\"\nendpoint = \"http://127.0.0.1:9\"\nexternal_labels = { a = \"b\" }\n";
    let e = RawConfig::parse(other)
        .unwrap()
        .validate("test")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("external_labels applies to type = \"prometheus_remote_write\""),
        "{e}"
    );
    // drop_labels: remote write only, with the gauge choice made, and no label the
    // translation makes.
    let c = RawConfig::parse(&format!(
        "{base}drop_labels = [\"session.id\"]\ndrop_labels_gauges = \"last\"\n"
    ))
    .unwrap();
    c.validate("test").unwrap();
    assert_eq!(
        c.destinations[0].drop_labels,
        vec!["session.id".to_string()]
    );
    for (extra, key, words) in [
        (
            "drop_labels = [\"session.id\"]\n",
            "drop_labels_gauges",
            "\"keep\"",
        ),
        (
            "drop_labels_gauges = \"keep\"\n",
            "drop_labels_gauges",
            "with drop_labels only",
        ),
        (
            "drop_labels = [\"le\"]\ndrop_labels_gauges = \"keep\"\n",
            "drop_labels",
            "made by the translation",
        ),
    ] {
        let e = RawConfig::parse(&format!("{base}{extra}"))
            .unwrap()
            .validate("test")
            .unwrap_err()
            .to_string();
        assert!(e.contains(key) && e.contains(words), "{extra}: {e}");
    }
    let e = RawConfig::parse(&format!("{base}drop_labels_gauges = \"sum\"\n")).unwrap_err();
    assert!(e.to_string().contains("sum"), "{e}");
    let otlp =
        "[[destination]]\nname = \"o\"\ntype = \"otlp_http\"\nendpoint = \"http://127.0.0.1:9\"\n";
    let e = RawConfig::parse(&format!("{otlp}drop_labels = [\"session.id\"]\n"))
        .unwrap()
        .validate("test")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("drop_labels applies to type = \"prometheus_remote_write\""),
        "{e}"
    );
    let all = RawConfig::parse(otlp).unwrap();
    assert_eq!(all.destinations[0].signals, Signal::ALL.to_vec());
}

// ---------------------------------------------------------------------------------------------
// kill -9 mid-stream

/// A request to send: its headers and body.
type Sent = (Vec<(&'static str, &'static str)>, Vec<u8>);

/// Runs the real binary (spool and config in `dir`, one `destination`) once per round: starts
/// it, sends the round's requests, and SIGKILLs it 0–60 ms later (while the worker lingers,
/// sends, or has just been answered). Returns an agent started after the last kill (its log
/// holds every agent's) and the number of kills.
async fn kill_during_delivery(
    dir: &Path,
    destination: &str,
    rounds: &[Vec<Sent>],
) -> (AgentProcess, usize) {
    use rand::Rng;
    let port = free_port();
    let config = dir.join("config.toml");
    let toml = agent_config(port, None, "", &dir.join("spool"), destination);
    std::fs::write(&config, toml).unwrap();
    let log = dir.join("agent.log");
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let start = || AgentProcess::start_retrying(|| agent_command(&config), port, &log);
    let mut rng = rand::rng();
    for round in rounds {
        let agent = start().await;
        for (headers, body) in round {
            let (status, text) = post(addr, "/v1/metrics", headers, body.clone()).await;
            assert_eq!(status, 200, "{text}");
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..60))).await;
        drop(agent);
    }
    (start().await, rounds.len())
}

/// How many batches the agents logging where `agent` does found already counted after a
/// restart.
fn already_counted(agent: &AgentProcess) -> usize {
    agent.log_text().matches("already counted").count()
}

/// The AI CLI captures (nine metrics requests: three sessions of each tool) through the real
/// binary with `drop_labels`, SIGKILLed after each: every merged total bit-exact (nothing
/// counted twice, nothing lost), and no counter reset in Prometheus.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merged_capture_totals_survive_nine_sigkills() {
    let Some(prom) = Prometheus::start_for("merged_capture_totals_survive_nine_sigkills").await
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let variant = "without_session_id_and_instance";
    let mut tools: Vec<(Value, Vec<Captured>)> = AI_CLI
        .iter()
        .map(|(folder, _)| captured_metrics(&ai_cli_folder(folder)))
        .collect();
    tools.sort_by_key(|t| t.1[0].newest_ns());
    let rounds: Vec<Vec<Sent>> = tools
        .iter()
        .flat_map(|(_, requests)| requests)
        .map(|c| vec![(c.headers.clone(), c.body.clone())])
        .collect();
    let destination = prw_destination(
        &prom.write_url(),
        "external_labels = { run = \"kill\" }\ndrop_labels = [\"session.id\", \"service.instance.id\"]\ndrop_labels_gauges = \"keep\"",
    );
    let (agent, kills) = kill_during_delivery(dir.path(), &destination, &rounds).await;
    assert_eq!(kills, 9);
    let deadline = Instant::now() + Duration::from_secs(20);
    for (expected, requests) in &tools {
        let at_ms =
            (requests.iter().map(Captured::newest_ns).max().unwrap() / 1_000_000) as i64 + 1000;
        let service = &expected["series"]
            .as_object()
            .unwrap()
            .values()
            .next()
            .unwrap()[variant]["totals"][0]["labels"]["service.name"];
        let common: Labels = [
            ("run".to_string(), "kill".to_string()),
            ("job".to_string(), json_text(service)),
        ]
        .into();
        // Wait for the last agent to deliver what the killed ones left.
        loop {
            match check_capture(&prom, expected, Some(variant), &common, at_ms).await {
                Ok(_) => break,
                Err(e) if Instant::now() > deadline => panic!("after {kills} kills: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        let got = prom
            .query(
                &format!("{{run=\"kill\",job=\"{}\"}}", common["job"]),
                at_ms,
            )
            .await;
        for (labels, _) in got {
            let name = &labels["__name__"];
            let resets = prom
                .query(&format!("resets({name}{{run=\"kill\"}}[1h])"), at_ms)
                .await;
            assert!(
                resets.iter().all(|(_, v)| *v == 0.0),
                "{name}: counter resets: {resets:?}"
            );
        }
    }
    let resent = already_counted(&agent);
    drop(agent);
    eprintln!("sigkill with drop_labels: {kills} kills, {resent} batches found already counted after a restart");
}

/// The real binary, SIGKILLed at random moments while it forwards a DELTA stream (so some
/// kills land between Prometheus accepting a batch and the cursor moving, and the batch goes
/// again): the totals in Prometheus are still exact and no counter ever resets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_totals_survive_sigkill_at_random_moments() {
    let Some(prom) = Prometheus::start_for("delta_totals_survive_sigkill_at_random_moments").await
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand::rng();
    let step = 5_000_000_000u64;
    let n = 36u64;
    let t0 = now_ns() - (n + 4) * step;
    let intervals: Vec<ExportMetricsServiceRequest> = (0..n)
        .map(|i| claude_interval(t0 + i * step, t0 + (i + 1) * step, &mut rng))
        .collect();
    let mut model = Model::default();
    for r in &intervals {
        model.add(r, &Labels::new());
    }
    let rounds: Vec<Vec<Sent>> = intervals
        .chunks(4)
        .map(|round| {
            round
                .iter()
                .map(|r| (vec![PROTOBUF], r.encode_to_vec()))
                .collect()
        })
        .collect();
    let destination = prw_destination(&prom.write_url(), "");
    let (agent, kills) = kill_during_delivery(dir.path(), &destination, &rounds).await;
    let end_ms = ((t0 + n * step) / 1_000_000) as i64;
    let want: Expected = model
        .latest
        .iter()
        .filter(|(l, _)| l["__name__"] != "target_info")
        .map(|(l, v)| (l.clone(), *v))
        .collect();
    let query = "{__name__=~\"claude_code_.*\"}";
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got: Expected = prom.query(query, end_ms + 1000).await.into_iter().collect();
        if got == want || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let got = prom.query(query, end_ms + 1000).await;
    assert_matches(got.clone(), &want, "after kills");
    assert_eq!(
        got.into_iter().collect::<Expected>(),
        want,
        "the totals are bit-exact: the saved state reads back as written"
    );
    let resets = prom
        .query(&format!("resets({query}[1h])"), end_ms + 1000)
        .await;
    assert_eq!(resets.len(), want.len());
    assert!(
        resets.iter().all(|(_, v)| *v == 0.0),
        "counter resets after kill -9: {resets:?}"
    );
    let resent = already_counted(&agent);
    drop(agent);
    eprintln!(
        "sigkill: {kills} kills, {} series exact, {resent} batches found already counted after a restart",
        want.len()
    );
}

// ---------------------------------------------------------------------------------------------
// SigV4 (`service = "aps"`), re-verified by botocore

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_write_is_sigv4_signed_for_aps_as_botocore_computes() {
    let python = std::env::var("OTLP_SPOOL_TEST_PYTHON").ok().filter(|p| {
        std::process::Command::new(p)
            .args(["-c", "import botocore.auth"])
            .status()
            .is_ok_and(|s| s.success())
    });
    let Some(python) = python else {
        let why = "OTLP_SPOOL_TEST_PYTHON is unset or has no botocore (run scripts/install-test-deps.sh and source .cache/test-env.sh)";
        skip_or_fail("remote write SigV4 check", why);
        return;
    };
    // Static credentials from the environment, and nothing else the chain could find.
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "").unwrap();
    for (k, v) in [
        ("AWS_CONFIG_FILE", empty.display().to_string()),
        ("AWS_SHARED_CREDENTIALS_FILE", empty.display().to_string()),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ("AWS_ACCESS_KEY_ID", "AKIDPRWTEST".into()),
        ("AWS_SECRET_ACCESS_KEY", "secret-prw".into()),
    ] {
        std::env::set_var(k, v);
    }
    std::env::remove_var("AWS_SESSION_TOKEN");
    std::env::remove_var("AWS_PROFILE");
    let sink = Sink::start().await;
    let url = format!("{}/workspaces/ws-123/api/v1/remote_write", sink.endpoint());
    let toml = config_toml(
        dir.path(),
        &prw_destination(
            &url,
            "sigv4 = { region = \"us-west-2\", service = \"aps\" }",
        ),
    );
    let agent = start_agent(&toml).await;
    let r = claude_interval(now_ns() - 1_000_000_000, now_ns(), &mut rand::rng());
    let (status, _) = post(
        agent.http_addrs()[0],
        "/v1/metrics",
        &[PROTOBUF],
        r.encode_to_vec(),
    )
    .await;
    assert_eq!(status, 200);
    drained(&agent).await;
    agent.shutdown().await;
    let received = sink.received();
    assert_eq!(received.len(), 1);
    let r = &received[0];
    let auth = r.headers["authorization"].to_str().unwrap();
    assert!(
        auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDPRWTEST/")
            && auth.contains("/us-west-2/aps/aws4_request"),
        "{auth}"
    );
    let doc = serde_json::json!([{
        "method": "POST",
        "url": format!("{}{}", sink.endpoint(), r.path),
        "headers": r.headers.iter().map(|(k, v)| serde_json::json!([k.as_str(), v.to_str().unwrap()])).collect::<Vec<_>>(),
        "body_hex": hex::encode(&r.body),
        "access_key": "AKIDPRWTEST",
        "secret_key": "secret-prw",
        "token": null,
        "region": "us-west-2",
        "service": "aps",
    }]);
    let file = dir.path().join("requests.json");
    std::fs::write(&file, serde_json::to_vec(&doc).unwrap()).unwrap();
    let out = std::process::Command::new(python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/aws/verify_sigv4.py"))
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "botocore computes another signature: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
