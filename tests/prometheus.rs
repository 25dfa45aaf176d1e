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
use std::path::Path;
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
use support::captures::capture_folders;
use support::process::{agent_command, agent_config, free_port, AgentProcess};
use support::prometheus::{require_prometheus, Labels, Prometheus};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixture_metrics_arrive_in_prometheus_as_computed() {
    let Some(bin) = require_prometheus("fixture_metrics_arrive_in_prometheus_as_computed") else {
        return;
    };
    let prom = Prometheus::start(&bin).await;
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
        let addr = agent.http_addrs()[0];
        let expected: Value =
            serde_json::from_slice(&std::fs::read(folder.join("expected.json")).unwrap()).unwrap();
        let mut model = Model::default();
        let common: Labels = [("fixture".to_string(), name.clone())].into();
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
            model.add(&fixture_request(&body, gzip, json), &common);
            let mut headers = vec![(
                "content-type",
                if json {
                    "application/json"
                } else {
                    "application/x-protobuf"
                },
            )];
            if gzip {
                headers.push(("content-encoding", "gzip"));
            }
            let (status, text) = post(addr, "/v1/metrics", &headers, body).await;
            assert_eq!(status, 200, "{name}/{id}: {text}");
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
    let Some(bin) = require_prometheus("claude_code_delta_stream") else {
        return;
    };
    let prom = Prometheus::start(&bin).await;
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
// Histograms, summaries, exponential histograms, staleness

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histograms_summaries_and_stale_points_round_trip() {
    let Some(bin) = require_prometheus("histograms_summaries_and_stale_points_round_trip") else {
        return;
    };
    let prom = Prometheus::start(&bin).await;
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
    let all = RawConfig::parse(
        "[[destination]]\nname = \"o\"\ntype = \"otlp_http\"\nendpoint = \"http://127.0.0.1:9\"\n",
    )
    .unwrap();
    assert_eq!(all.destinations[0].signals, Signal::ALL.to_vec());
}

// ---------------------------------------------------------------------------------------------
// kill -9 mid-stream

/// An agent process, SIGKILLed and reaped when dropped (also when a test panics).
/// The real binary, SIGKILLed at random moments while it forwards a DELTA stream (so some
/// kills land between Prometheus accepting a batch and the cursor moving, and the batch goes
/// again): the totals in Prometheus are still exact and no counter ever resets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_totals_survive_sigkill_at_random_moments() {
    use rand::Rng;
    let Some(bin) = require_prometheus("delta_totals_survive_sigkill_at_random_moments") else {
        return;
    };
    let prom = Prometheus::start(&bin).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("config.toml");
    let spool = dir.path().join("spool");
    let toml = agent_config(
        port,
        None,
        "",
        &spool,
        &prw_destination(&prom.write_url(), ""),
    );
    std::fs::write(&config, toml).unwrap();
    let log = dir.path().join("agent.log");
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let start = || AgentProcess::start_retrying(|| agent_command(&config), port, &log);

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
    let mut kills = 0;
    let mut next = 0;
    while next < intervals.len() {
        let agent = start().await;
        for r in &intervals[next..(next + 4).min(intervals.len())] {
            let (status, text) = post(addr, "/v1/metrics", &[PROTOBUF], r.encode_to_vec()).await;
            assert_eq!(status, 200, "{text}");
            next += 1;
        }
        // Kill while the worker lingers, sends, or has just been answered.
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..60))).await;
        drop(agent);
        kills += 1;
    }
    let agent = start().await;
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
    drop(agent);
    let resent = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .matches("already counted")
        .count();
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
