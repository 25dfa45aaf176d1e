#!/usr/bin/env node
// Emit an exact number of spans, metric data points and log records through the
// real OpenTelemetry JS SDK and its real OTLP exporters (installed from the
// pinned package.json / package-lock.json next to this file).
//
//   node emit.mjs --endpoint http://127.0.0.1:4318 --protocol http/protobuf \
//       --compression gzip --spans 7 --metric-points 5 --logs 3 \
//       --header x-api-key=secret --service-name my-svc
//
// Protocols:
//   http/protobuf  @opentelemetry/exporter-{trace,metrics,logs}-otlp-proto
//   http/json      @opentelemetry/exporter-{trace,metrics,logs}-otlp-http
//   grpc           @opentelemetry/exporter-{trace,metrics,logs}-otlp-grpc
//                  (endpoint host:port or http://host:port; headers become metadata)
//
// For HTTP the per-signal path is appended to the base endpoint the way the SDK
// does for OTEL_EXPORTER_OTLP_ENDPOINT: `<endpoint without trailing />/v1/traces`,
// `/v1/metrics`, `/v1/logs`.
//
// How the counts are guaranteed:
//  * spans: N spans span-0..span-N-1; span-i (i>0) is a child of
//    span-floor((i-1)/2) (binary tree rooted at span-0), one trace.
//  * metric points: M distinct series, one data point each: series i goes to
//    instrument kind i % 4 (counter, up-down counter, histogram, gauge) with
//    attribute series=i (a fresh set of 4 instruments every 4000 series, to stay
//    under the SDK's per-instrument cardinality limit of 2000). Temporality is
//    CUMULATIVE, the PeriodicExportingMetricReader's interval is 2^31-1 ms
//    (never fires), and there is exactly ONE collection: MeterProvider.shutdown()
//    (which in the JS SDK does one final collect + export). forceFlush() is
//    deliberately NOT called as well: that would export the cumulative series
//    twice (2*M points at the sink).
//  * logs: L records with bodies log-0..log-L-1 emitted through the
//    @opentelemetry/api-logs logger, even-numbered ones with attributes.
//  * every exporter's export() is wrapped so its result and item count are
//    recorded; the run is ok only if every export succeeded AND the exported
//    totals equal N, M and L.
// A signal whose count is 0 is not set up at all (no request is sent for it).
// OTEL_* environment variables are removed at start so the run is hermetic.
//
// Output: one JSON line on stdout, e.g. {"spans":7,"metric_points":5,"logs":3,"ok":true}
// Exit 0 iff ok; otherwise 1 with the SDK's error(s) on stderr (2 for bad args).

import { parseArgs } from 'node:util';

const USAGE = `usage: emit.mjs --endpoint URL [--protocol http/protobuf|http/json|grpc]
  [--compression gzip|none] [--spans N] [--metric-points M] [--logs L]
  [--header K=V]... [--service-name NAME] [--timeout SECONDS]`;

function die(msg) {
  process.stderr.write(`emit.mjs: ${msg}\n${USAGE}\n`);
  process.exit(2);
}

function parse() {
  let values;
  try {
    ({ values } = parseArgs({
      options: {
        endpoint: { type: 'string' },
        protocol: { type: 'string', default: 'http/protobuf' },
        compression: { type: 'string', default: 'none' },
        spans: { type: 'string', default: '0' },
        'metric-points': { type: 'string', default: '0' },
        logs: { type: 'string', default: '0' },
        header: { type: 'string', multiple: true, default: [] },
        'service-name': { type: 'string', default: 'otlp-spool-test-js' },
        timeout: { type: 'string', default: '10' },
        help: { type: 'boolean', short: 'h', default: false },
      },
      strict: true,
    }));
  } catch (e) {
    die(e.message);
  }
  if (values.help) {
    process.stdout.write(USAGE + '\n');
    process.exit(0);
  }
  if (!values.endpoint) die('--endpoint is required');
  if (!['http/protobuf', 'http/json', 'grpc'].includes(values.protocol)) die(`bad --protocol ${values.protocol}`);
  if (!['gzip', 'none'].includes(values.compression)) die(`bad --compression ${values.compression}`);
  const int = (name) => {
    const v = values[name];
    if (!/^\d+$/.test(v)) die(`--${name} must be a non-negative integer, got ${v}`);
    return Number(v);
  };
  const timeout = Number(values.timeout);
  if (!(timeout > 0)) die(`bad --timeout ${values.timeout}`);
  const headers = {};
  for (const h of values.header) {
    const i = h.indexOf('=');
    if (i <= 0) die(`--header expects K=V, got ${h}`);
    headers[h.slice(0, i).trim()] = h.slice(i + 1);
  }
  return {
    endpoint: values.endpoint.replace(/\/+$/, ''),
    protocol: values.protocol,
    compression: values.compression,
    spans: int('spans'),
    metricPoints: int('metric-points'),
    logs: int('logs'),
    headers,
    serviceName: values['service-name'],
    timeoutMillis: Math.round(timeout * 1000),
  };
}

const a = parse();
for (const k of Object.keys(process.env)) {
  if (k.startsWith('OTEL_')) delete process.env[k];
}

// Import after the env scrub (the SDK reads OTEL_* at construction time).
const api = await import('@opentelemetry/api');
const apiLogs = await import('@opentelemetry/api-logs');
const { ExportResultCode } = await import('@opentelemetry/core');
const { resourceFromAttributes, defaultResource } = await import('@opentelemetry/resources');
const { BasicTracerProvider, BatchSpanProcessor, AlwaysOnSampler } = await import('@opentelemetry/sdk-trace-base');
const { MeterProvider, PeriodicExportingMetricReader, AggregationTemporality } = await import('@opentelemetry/sdk-metrics');
const { LoggerProvider, BatchLogRecordProcessor } = await import('@opentelemetry/sdk-logs');

// SDK diagnostics (export errors etc.) to stderr.
api.diag.setLogger(
  {
    error: (...m) => process.stderr.write(`ERROR ${m.map(String).join(' ')}\n`),
    warn: (...m) => process.stderr.write(`WARN ${m.map(String).join(' ')}\n`),
    info: () => {},
    debug: () => {},
    verbose: () => {},
  },
  api.DiagLogLevel.WARN,
);

const tally = {
  exported: { spans: 0, metric_points: 0, logs: 0 },
  errors: [],
};

function metricPointCount(resourceMetrics) {
  let n = 0;
  for (const sm of resourceMetrics.scopeMetrics) for (const m of sm.metrics) n += m.dataPoints.length;
  return n;
}

// Wrap an exporter instance so that every export() result is recorded.
function recording(exporter, signal, count) {
  const orig = exporter.export.bind(exporter);
  exporter.export = (items, resultCallback) => {
    const n = count(items);
    orig(items, (result) => {
      if (result.code === ExportResultCode.SUCCESS) {
        tally.exported[signal] += n;
      } else {
        const err = result.error;
        tally.errors.push(`${signal}: export of ${n} item(s) failed: ${err ? (err.stack || err.message || String(err)) : 'code ' + result.code}`);
      }
      resultCallback(result);
    });
  };
  return exporter;
}

async function loadExporters() {
  if (a.protocol === 'http/protobuf') {
    const t = await import('@opentelemetry/exporter-trace-otlp-proto');
    const m = await import('@opentelemetry/exporter-metrics-otlp-proto');
    const l = await import('@opentelemetry/exporter-logs-otlp-proto');
    return [t.OTLPTraceExporter, m.OTLPMetricExporter, l.OTLPLogExporter];
  }
  if (a.protocol === 'http/json') {
    const t = await import('@opentelemetry/exporter-trace-otlp-http');
    const m = await import('@opentelemetry/exporter-metrics-otlp-http');
    const l = await import('@opentelemetry/exporter-logs-otlp-http');
    return [t.OTLPTraceExporter, m.OTLPMetricExporter, l.OTLPLogExporter];
  }
  const t = await import('@opentelemetry/exporter-trace-otlp-grpc');
  const m = await import('@opentelemetry/exporter-metrics-otlp-grpc');
  const l = await import('@opentelemetry/exporter-logs-otlp-grpc');
  return [t.OTLPTraceExporter, m.OTLPMetricExporter, l.OTLPLogExporter];
}

let grpcJs = null;
if (a.protocol === 'grpc') grpcJs = await import('@grpc/grpc-js');

function exporterConfig(path) {
  const common = { timeoutMillis: a.timeoutMillis, compression: a.compression };
  if (a.protocol === 'grpc') {
    const url = /^[a-z][a-z0-9+.-]*:\/\//i.test(a.endpoint) ? a.endpoint : `http://${a.endpoint}`;
    const metadata = new grpcJs.Metadata();
    for (const [k, v] of Object.entries(a.headers)) metadata.set(k.toLowerCase(), v);
    const cfg = { ...common, url, metadata };
    if (url.startsWith('http://')) cfg.credentials = grpcJs.credentials.createInsecure();
    return cfg;
  }
  return { ...common, url: `${a.endpoint}/${path}`, headers: { ...a.headers } };
}

const [TraceExporter, MetricExporter, LogExporter] = await loadExporters();
const resource = defaultResource().merge(resourceFromAttributes({ 'service.name': a.serviceName }));
const flushTimeout = a.timeoutMillis + 2000;

async function emitSpans() {
  const exporter = recording(new TraceExporter(exporterConfig('v1/traces')), 'spans', (s) => s.length);
  const provider = new BasicTracerProvider({
    resource,
    sampler: new AlwaysOnSampler(),
    forceFlushTimeoutMillis: flushTimeout,
    spanProcessors: [
      new BatchSpanProcessor(exporter, {
        maxQueueSize: Math.max(2048, a.spans + 1),
        scheduledDelayMillis: 60_000,
        exportTimeoutMillis: a.timeoutMillis + 1000,
      }),
    ],
  });
  const tracer = provider.getTracer('otlp-spool-test-emitter', '1.0.0');
  const kinds = [api.SpanKind.INTERNAL, api.SpanKind.SERVER, api.SpanKind.CLIENT, api.SpanKind.PRODUCER, api.SpanKind.CONSUMER];
  const spans = [];
  for (let i = 0; i < a.spans; i++) {
    const ctx = i > 0 ? api.trace.setSpan(api.ROOT_CONTEXT, spans[Math.floor((i - 1) / 2)]) : api.ROOT_CONTEXT;
    const span = tracer.startSpan(
      `span-${i}`,
      {
        kind: kinds[i % kinds.length],
        attributes: {
          'test.index': i, // int64
          'test.big_int': 2 ** 40 + i, // int64 beyond int32 (safe integer)
          'test.ratio': i / 4 + 0.125, // double (never an integer)
          'test.flag': i % 2 === 0, // bool
          'test.label': `label-${i}`, // string
          'test.tags': ['a', 'b', `c${i}`], // string array
          'test.ints': [i, i + 1], // int array
        },
      },
      ctx,
    );
    span.addEvent('test-event', { 'event.index': i, 'event.note': 'hello' });
    if (i % 3 === 2) span.setStatus({ code: api.SpanStatusCode.ERROR, message: 'synthetic error' });
    spans.push(span);
  }
  for (const s of [...spans].reverse()) s.end();
  await provider.forceFlush();
  await provider.shutdown();
}

async function emitMetrics() {
  const exporter = recording(
    new MetricExporter({ ...exporterConfig('v1/metrics'), temporalityPreference: AggregationTemporality.CUMULATIVE }),
    'metric_points',
    metricPointCount,
  );
  const reader = new PeriodicExportingMetricReader({
    exporter,
    exportIntervalMillis: 2 ** 31 - 1, // largest setInterval delay: never fires during the run
    exportTimeoutMillis: a.timeoutMillis + 1000,
  });
  const provider = new MeterProvider({ resource, readers: [reader] });
  const meter = provider.getMeter('otlp-spool-test-emitter', '1.0.0');
  // Instruments are created lazily in groups of SERIES_PER_INSTRUMENT series so
  // no instrument gets near the SDK's default cardinality limit (2000), past
  // which series would be folded into an overflow series.
  const SERIES_PER_INSTRUMENT = 1000;
  const instruments = new Map();
  const instrument = (kind, group) => {
    const key = `${kind}/${group}`;
    if (!instruments.has(key)) {
      const sfx = group === 0 ? '' : `.g${group}`;
      const make = [
        () => meter.createCounter(`otlp_spool.test.counter${sfx}`, { unit: '1', description: 'test counter' }),
        () => meter.createUpDownCounter(`otlp_spool.test.updown${sfx}`, { unit: '1' }),
        () => meter.createHistogram(`otlp_spool.test.histogram${sfx}`, { unit: 'ms' }),
        () => meter.createGauge(`otlp_spool.test.gauge${sfx}`, { unit: '1' }),
      ][kind];
      instruments.set(key, make());
    }
    return instruments.get(key);
  };
  const kindNames = ['counter', 'updown', 'histogram', 'gauge'];
  for (let i = 0; i < a.metricPoints; i++) {
    const k = i % 4;
    const inst = instrument(k, Math.floor(i / (4 * SERIES_PER_INSTRUMENT)));
    const attrs = { series: i, kind: kindNames[k] };
    switch (k) {
      case 0: inst.add(i + 1, attrs); break;
      case 1: inst.add(-(i + 1), attrs); break;
      case 2: inst.record(i * 1.5, attrs); inst.record(i * 3 + 7, attrs); break; // same series: one point
      default: inst.record(i + 0.5, attrs);
    }
  }
  // The single collection + export (see header comment).
  await provider.shutdown({ timeoutMillis: flushTimeout });
}

async function emitLogs() {
  const exporter = recording(new LogExporter(exporterConfig('v1/logs')), 'logs', (r) => r.length);
  const provider = new LoggerProvider({
    resource,
    processors: [
      new BatchLogRecordProcessor({
        exporter,
        maxQueueSize: Math.max(2048, a.logs + 1),
        scheduledDelayMillis: 60_000,
        exportTimeoutMillis: a.timeoutMillis + 1000,
      }),
    ],
  });
  apiLogs.logs.setGlobalLoggerProvider(provider);
  const logger = apiLogs.logs.getLogger('otlp-spool-test-emitter', '1.0.0');
  for (let i = 0; i < a.logs; i++) {
    const warn = i % 3 === 0;
    logger.emit({
      body: `log-${i}`,
      severityNumber: warn ? apiLogs.SeverityNumber.WARN : apiLogs.SeverityNumber.INFO,
      severityText: warn ? 'WARN' : 'INFO',
      attributes: i % 2 === 0 ? { 'log.index': i, 'log.ratio': i + 0.25, 'log.ok': true, 'log.tag': `t${i}` } : undefined,
      timestamp: Date.now(),
    });
  }
  await provider.forceFlush();
  await provider.shutdown();
}

for (const [n, fn] of [[a.spans, emitSpans], [a.metricPoints, emitMetrics], [a.logs, emitLogs]]) {
  if (n > 0) {
    try {
      await fn();
    } catch (e) {
      tally.errors.push(`${fn.name}: ${e && e.stack ? e.stack : String(e)}`);
    }
  }
}

const want = { spans: a.spans, metric_points: a.metricPoints, logs: a.logs };
if (tally.errors.length === 0) {
  for (const [sig, n] of Object.entries(want)) {
    if (tally.exported[sig] !== n) tally.errors.push(`${sig}: exporter sent ${tally.exported[sig]} item(s), expected ${n}`);
  }
}
const ok = tally.errors.length === 0;
const summary = { ...want, ok };
if (!ok) summary.exported = tally.exported;
process.stdout.write(JSON.stringify(summary) + '\n');
for (const e of tally.errors) process.stderr.write(`emit.mjs: ${e}\n`);
// Exit explicitly: gRPC channels / keep-alive sockets must not keep us alive.
process.exitCode = ok ? 0 : 1;
setTimeout(() => process.exit(process.exitCode), 50).unref();
