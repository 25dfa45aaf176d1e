#!/usr/bin/env python3
"""Emit an exact number of spans, metric data points and log records through the
real OpenTelemetry Python SDK and its real OTLP exporters.

Used by the otlp-spool test suite as a "real client": point it at the agent,
then assert the exact counts at the upstream sink.

    emit.py --endpoint http://127.0.0.1:4318 --protocol http/protobuf \
            --compression gzip --spans 7 --metric-points 5 --logs 3 \
            --header x-api-key=secret --service-name my-svc

Protocols:
  http/protobuf  opentelemetry-exporter-otlp-proto-http
  http/json      opentelemetry-exporter-otlp-json-http
  grpc           opentelemetry-exporter-otlp-proto-grpc  (endpoint host:port or http://host:port)

For HTTP the per-signal path is appended to the base endpoint exactly as the
SDK does for OTEL_EXPORTER_OTLP_ENDPOINT: `<endpoint without trailing />/v1/traces`,
`/v1/metrics`, `/v1/logs`.

How the counts are guaranteed:
  * spans: N spans named span-0..span-N-1; span-i (i>0) is a child of
    span-((i-1)//2) (a binary tree rooted at span-0), all in one trace.
  * metric points: M distinct time series, one data point each. Series i goes
    to instrument kind i % 4 (counter, up-down counter, histogram, gauge) with
    attribute series=i (a fresh set of 4 instruments every 4000 series, to stay
    under the SDK's per-instrument cardinality limit of 2000). Temporality is
    CUMULATIVE for every kind, the reader is a PeriodicExportingMetricReader
    with an infinite interval (no background thread, no periodic export), and
    there is exactly ONE collection: a single force_flush(); shutdown() with an
    infinite interval does not collect again.
    One collection of M (instrument, attribute-set) pairs = M data points.
  * logs: L records with bodies log-0..log-L-1 emitted through the SDK Logger
    (logs API), even-numbered ones carrying attributes.
  * every exporter is wrapped so each export() result and the number of items
    it carried is recorded; the run is ok only if every export succeeded AND
    the exported totals equal N, M and L.
A signal whose count is 0 is not set up at all (no request is sent for it).
OTEL_* environment variables are removed at start so the run is hermetic.

Output: one JSON line on stdout, e.g.
  {"spans": 7, "metric_points": 5, "logs": 3, "ok": true}
Exit status 0 iff ok; otherwise 1 with the SDK's error(s) on stderr
(2 for bad arguments).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import threading
import time

# Short, fail-fast defaults (seconds).
DEFAULT_TIMEOUT = 10.0
SERIES_PER_INSTRUMENT = 1000


class Tally:
    """Thread-safe record of what the exporters reported."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.exported = {"spans": 0, "metric_points": 0, "logs": 0}
        self.exports = {"spans": 0, "metric_points": 0, "logs": 0}
        self.errors: list[str] = []

    def record(self, signal: str, items: int, ok: bool, detail: str) -> None:
        with self.lock:
            self.exports[signal] += 1
            if ok:
                self.exported[signal] += items
            else:
                self.errors.append(f"{signal}: export of {items} item(s) failed: {detail}")


TALLY = Tally()


def _metric_points(metrics_data) -> int:
    n = 0
    for rm in metrics_data.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                n += len(m.data.data_points)
    return n


def recording(cls, signal: str, counter):
    """Subclass an SDK exporter so every export() result is recorded."""

    class Recording(cls):  # type: ignore[misc, valid-type]
        def export(self, batch, *args, **kwargs):
            items = counter(batch)
            try:
                result = super().export(batch, *args, **kwargs)
            except Exception as exc:  # pylint: disable=broad-exception-caught
                TALLY.record(signal, items, False, f"{type(exc).__name__}: {exc}")
                raise
            ok = getattr(result, "name", str(result)) == "SUCCESS"
            TALLY.record(signal, items, ok, f"result={result!r}")
            return result

    Recording.__name__ = f"Recording{cls.__name__}"
    return Recording


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--endpoint", required=True,
                   help="base endpoint, e.g. http://127.0.0.1:4318 (grpc: host:port or http://host:port)")
    p.add_argument("--protocol", default="http/protobuf",
                   choices=["http/protobuf", "http/json", "grpc"])
    p.add_argument("--compression", default="none", choices=["gzip", "none"])
    p.add_argument("--spans", type=int, default=0)
    p.add_argument("--metric-points", type=int, default=0)
    p.add_argument("--logs", type=int, default=0)
    p.add_argument("--header", action="append", default=[], metavar="K=V",
                   help="extra request header (gRPC: metadata), repeatable")
    p.add_argument("--service-name", default="otlp-spool-test-python")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                   help="per-export timeout in seconds (default %(default)s)")
    a = p.parse_args(argv)
    for name in ("spans", "metric_points", "logs"):
        if getattr(a, name) < 0:
            p.error(f"--{name.replace('_', '-')} must be >= 0")
    headers = {}
    for h in a.header:
        if "=" not in h:
            p.error(f"--header expects K=V, got {h!r}")
        k, v = h.split("=", 1)
        headers[k.strip()] = v
    a.headers = headers
    return a


def build_exporters(a):
    """Return (span_exporter_cls, metric_exporter_cls, log_exporter_cls, kwargs_fn)."""
    if a.protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http import Compression
        from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        comp = Compression.Gzip if a.compression == "gzip" else Compression.NoCompression
    elif a.protocol == "http/json":
        from opentelemetry.exporter.otlp.common.http import Compression
        from opentelemetry.exporter.otlp.json.http._log_exporter import OTLPLogExporter
        from opentelemetry.exporter.otlp.json.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.json.http.trace_exporter import OTLPSpanExporter

        comp = Compression.GZIP if a.compression == "gzip" else Compression.NONE
    else:  # grpc
        from grpc import Compression
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        comp = Compression.Gzip if a.compression == "gzip" else Compression.NoCompression

    base = a.endpoint.rstrip("/")

    def kwargs(path: str) -> dict:
        if a.protocol == "grpc":
            endpoint = base
            insecure = True
            if endpoint.startswith("https://"):
                insecure = False
            return {
                "endpoint": endpoint,
                "insecure": insecure,
                # gRPC metadata keys must be lowercase.
                "headers": {k.lower(): v for k, v in a.headers.items()},
                "timeout": a.timeout,
                "compression": comp,
            }
        return {
            "endpoint": f"{base}/{path}",
            "headers": dict(a.headers),
            "timeout": a.timeout,
            "compression": comp,
        }

    return OTLPSpanExporter, OTLPMetricExporter, OTLPLogExporter, kwargs


def emit_spans(a, resource, span_cls, kwargs):
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON
    from opentelemetry.trace import SpanKind, Status, StatusCode

    exporter = recording(span_cls, "spans", len)(**kwargs("v1/traces"))
    provider = TracerProvider(resource=resource, sampler=ALWAYS_ON)
    provider.add_span_processor(
        BatchSpanProcessor(exporter, max_queue_size=max(2048, a.spans + 1),
                           schedule_delay_millis=60_000,
                           export_timeout_millis=int(a.timeout * 1000) + 1000)
    )
    tracer = provider.get_tracer("otlp-spool-test-emitter", "1.0.0")
    kinds = [SpanKind.INTERNAL, SpanKind.SERVER, SpanKind.CLIENT, SpanKind.PRODUCER, SpanKind.CONSUMER]
    spans = []
    for i in range(a.spans):
        ctx = None
        if i > 0:
            ctx = trace.set_span_in_context(spans[(i - 1) // 2])
        span = tracer.start_span(
            f"span-{i}",
            context=ctx,
            kind=kinds[i % len(kinds)],
            attributes={
                "test.index": i,                          # int64
                "test.big_int": 2**40 + i,                # int64 beyond int32
                "test.ratio": i / 4.0 + 0.125,            # double
                "test.flag": i % 2 == 0,                  # bool
                "test.label": f"label-{i}",               # string
                "test.tags": ["a", "b", f"c{i}"],         # string array
                "test.ints": [i, i + 1],                  # int array
            },
        )
        span.add_event("test-event", {"event.index": i, "event.note": "hello"})
        if i % 3 == 2:
            span.set_status(Status(StatusCode.ERROR, "synthetic error"))
        spans.append(span)
    for span in reversed(spans):
        span.end()
    ok = provider.force_flush(timeout_millis=int(a.timeout * 1000) + 2000)
    provider.shutdown()
    if not ok:
        TALLY.errors.append("spans: force_flush timed out")


def emit_metrics(a, resource, metric_cls, kwargs):
    from opentelemetry.sdk.metrics import (
        Counter,
        Histogram,
        MeterProvider,
        ObservableCounter,
        ObservableGauge,
        ObservableUpDownCounter,
        UpDownCounter,
    )
    from opentelemetry.sdk.metrics.export import (
        AggregationTemporality,
        PeriodicExportingMetricReader,
    )

    try:
        from opentelemetry.sdk.metrics import _Gauge as SyncGauge  # SDK class of create_gauge()
    except ImportError:  # pragma: no cover
        SyncGauge = None
    cumulative = {
        k: AggregationTemporality.CUMULATIVE
        for k in (Counter, UpDownCounter, Histogram, ObservableCounter,
                  ObservableUpDownCounter, ObservableGauge)
    }
    if SyncGauge is not None:
        cumulative[SyncGauge] = AggregationTemporality.CUMULATIVE

    exporter = recording(metric_cls, "metric_points", _metric_points)(
        preferred_temporality=cumulative, **kwargs("v1/metrics")
    )
    # Infinite interval: no background thread, no periodic export; the single
    # force_flush() below is the only collection.
    reader = PeriodicExportingMetricReader(
        exporter, export_interval_millis=math.inf,
        export_timeout_millis=a.timeout * 1000 + 1000,
    )
    provider = MeterProvider(resource=resource, metric_readers=[reader])
    meter = provider.get_meter("otlp-spool-test-emitter", "1.0.0")
    # Instruments are created lazily in groups of SERIES_PER_INSTRUMENT series so
    # no instrument gets near the SDK's default cardinality limit (2000), past
    # which series would be folded into an overflow series.
    instruments = {}

    def instrument(kind: int, group: int):
        key = (kind, group)
        if key not in instruments:
            sfx = "" if group == 0 else f".g{group}"
            if kind == 0:
                instruments[key] = meter.create_counter(f"otlp_spool.test.counter{sfx}", unit="1", description="test counter")
            elif kind == 1:
                instruments[key] = meter.create_up_down_counter(f"otlp_spool.test.updown{sfx}", unit="1")
            elif kind == 2:
                instruments[key] = meter.create_histogram(f"otlp_spool.test.histogram{sfx}", unit="ms")
            else:
                instruments[key] = meter.create_gauge(f"otlp_spool.test.gauge{sfx}", unit="1")
        return instruments[key]

    for i in range(a.metric_points):
        k = i % 4
        inst = instrument(k, i // (4 * SERIES_PER_INSTRUMENT))
        attrs = {"series": i, "kind": ["counter", "updown", "histogram", "gauge"][k]}
        if k == 0:
            inst.add(i + 1, attrs)
        elif k == 1:
            inst.add(-(i + 1), attrs)
        elif k == 2:
            inst.record(i * 1.5, attrs)
            inst.record(i * 3.0 + 7.0, attrs)  # same series: still one data point
        else:
            inst.set(i + 0.5, attrs)
    ok = provider.force_flush(timeout_millis=a.timeout * 1000 + 2000)
    provider.shutdown(timeout_millis=5000)
    if not ok:
        TALLY.errors.append("metrics: force_flush failed")


def emit_logs(a, resource, log_cls, kwargs):
    from opentelemetry._logs import SeverityNumber
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor

    exporter = recording(log_cls, "logs", len)(**kwargs("v1/logs"))
    provider = LoggerProvider(resource=resource)
    provider.add_log_record_processor(
        BatchLogRecordProcessor(exporter, max_queue_size=max(2048, a.logs + 1),
                                schedule_delay_millis=60_000,
                                export_timeout_millis=int(a.timeout * 1000) + 1000)
    )
    logger = provider.get_logger("otlp-spool-test-emitter", "1.0.0")
    for i in range(a.logs):
        attrs = None
        if i % 2 == 0:
            attrs = {"log.index": i, "log.ratio": i + 0.25, "log.ok": True, "log.tag": f"t{i}"}
        logger.emit(
            body=f"log-{i}",
            severity_number=SeverityNumber.WARN if i % 3 == 0 else SeverityNumber.INFO,
            severity_text="WARN" if i % 3 == 0 else "INFO",
            attributes=attrs,
            timestamp=time.time_ns(),
        )
    ok = provider.force_flush(timeout_millis=int(a.timeout * 1000) + 2000)
    provider.shutdown()
    if not ok:
        TALLY.errors.append("logs: force_flush timed out")


def main(argv=None) -> int:
    a = parse_args(sys.argv[1:] if argv is None else argv)
    # Hermetic: the SDK would otherwise merge OTEL_EXPORTER_OTLP_HEADERS,
    # OTEL_TRACES_SAMPLER, OTEL_SDK_DISABLED, ... from the caller's environment.
    for k in [k for k in os.environ if k.startswith("OTEL_")]:
        del os.environ[k]
    # SDK / exporter errors go to stderr.
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")

    from opentelemetry.sdk.resources import Resource

    resource = Resource.create({"service.name": a.service_name})
    span_cls, metric_cls, log_cls, kwargs = build_exporters(a)

    for n, fn, cls in ((a.spans, emit_spans, span_cls),
                       (a.metric_points, emit_metrics, metric_cls),
                       (a.logs, emit_logs, log_cls)):
        if n > 0:
            try:
                fn(a, resource, cls, kwargs)
            except Exception as exc:  # pylint: disable=broad-exception-caught
                TALLY.errors.append(f"{fn.__name__}: {type(exc).__name__}: {exc}")

    want = {"spans": a.spans, "metric_points": a.metric_points, "logs": a.logs}
    for sig, n in want.items():
        if not TALLY.errors and TALLY.exported[sig] != n:
            TALLY.errors.append(f"{sig}: exporter sent {TALLY.exported[sig]} item(s), expected {n}")
    ok = not TALLY.errors
    summary = dict(want)
    summary["ok"] = ok
    if not ok:
        summary["exported"] = TALLY.exported
    print(json.dumps(summary), flush=True)
    for e in TALLY.errors:
        print(f"emit.py: {e}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
