#!/usr/bin/env python3
"""Turns bench/run.sh's results (JSON lines, one per run) into markdown tables of medians.

    report.py RESULTS.jsonl [MORE.jsonl …] --machine M --commit C --started T --args A --rotel V  > report.md
    report.py --splice bench/RESULTS.md report.md   # replace the generated part of RESULTS.md

Each figure is the median over the runs, with [min–max] when there was more than one run.
"""
import json
import statistics
import sys

BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"

GOALS = {
    "metrics-1k": ("CPU ≤ 1%, RSS ≤ 40 MB", 1.0, 40),
    "metrics-5k": ("CPU ≤ 3%, RSS ≤ 40 MB", 3.0, 40),
    "metrics-10k": ("CPU ≤ 5%, RSS ≤ 40 MB", 5.0, 40),
    "traces-10k": ("CPU ≤ 4%, RSS ≤ 40 MB; p99 ack ≤ 10 ms", 4.0, 40),
    "traces-10k-grpc": ("(as traces-10k, over gRPC)", 4.0, 40),
    "logs-1k": ("(smoke only)", None, None),
}


def splice(results_md, report_md):
    new = open(report_md).read().strip()
    try:
        old = open(results_md).read()
    except FileNotFoundError:
        old = "# Benchmark results\n"
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        out = head + BEGIN + "\n" + new + "\n" + END + tail
    else:
        out = old.rstrip() + "\n\n" + BEGIN + "\n" + new + "\n" + END + "\n"
    open(results_md, "w").write(out)


def fmt(values, digits=1, unit=""):
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    m = statistics.median(values)
    s = f"{m:,.{digits}f}{unit}"
    if len(values) > 1:
        s += f" [{min(values):,.{digits}f}–{max(values):,.{digits}f}]"
    return s


def col(rows, key):
    return [r.get(key) for r in rows]


def main():
    if sys.argv[1] == "--splice":
        splice(sys.argv[2], sys.argv[3])
        return
    files = [a for a in sys.argv[1:] if a.endswith(".jsonl")]
    rest = [a for a in sys.argv[1:] if not a.endswith(".jsonl")]
    rows = [json.loads(l) for f in files for l in open(f) if l.strip()]
    opts = dict(zip(rest[0::2], rest[1::2]))
    out = []
    w = out.append
    w("## Measured by `bench/run.sh` (generated; edit the prose outside the markers)")
    w("")
    w(f"- started {opts['--started']}, otlp-spool {opts['--commit']}, release build")
    w(f"- machine: {opts['--machine']}")
    w(f"- run.sh settings: `{opts['--args']}`; reference: {opts['--rotel']}")
    w("- load generator and sink run on the same cores as the agent (they compete with it).")
    w("- figures: median over runs, [min–max] when there was more than one run.")
    loads = [r["load1"] for r in rows if "load1" in r]
    if loads:
        w(f"- 1-minute load average at the end of each run: median {statistics.median(loads):.2f}, "
          f"max {max(loads):.2f} (on 2 cores; above ~2 something else was competing)")
    w("")

    fixed = [r for r in rows if r["scenario"] in GOALS]
    if fixed:
        w("### Fixed rate, 60 s class (OTLP/HTTP protobuf, 100 items per request, forwarded gzip to the sink)")
        w("")
        w("CPU % = agent utime+stime from the start of the load until the sink has every acknowledged item, "
          "divided by the load's duration (percent of one core). RSS peak = highest VmRSS sampled every 0.5 s; "
          "VmHWM = the kernel's peak. Time to ack is measured from when each request was due (open loop).")
        w("")
        w("| scenario | agent | goal | CPU % of one core | RSS peak MB | VmHWM MB | ack p50 ms | ack p99 ms | achieved items/s | acked = at sink | runs |")
        w("|---|---|---|---|---|---|---|---|---|---|---|")
        order = list(GOALS)
        keys = sorted({(r["scenario"], r["agent"]) for r in fixed},
                      key=lambda k: (order.index(k[0]), k[1] != "otlp-spool"))
        for s, a in keys:
            rs = [r for r in fixed if r["scenario"] == s and r["agent"] == a]
            goal = GOALS[s][0] if a == "otlp-spool" else "reference (in-memory)"
            ok = all(r["acked"] == r["delivered"] and r["errors"] == 0 for r in rs)
            w(f"| {s} | {a} | {goal} | {fmt(col(rs, 'cpu_pct'), 2)} | {fmt(col(rs, 'rss_peak_mb'))} | "
              f"{fmt(col(rs, 'hwm_mb'))} | {fmt(col(rs, 'p50_ms'), 2)} | {fmt(col(rs, 'p99_ms'), 2)} | "
              f"{fmt(col(rs, 'items_per_s'), 0)} | {'yes' if ok else '**NO**'} ({sum(r['acked'] for r in rs):,} items) | {len(rs)} |")
        w("")

    ing = [r for r in rows if r["scenario"] == "ingest-max"]
    if ing:
        w("### Maximum durable ingest (HTTP protobuf, 10 spans per request, 64 connections, as fast as acks allow, forwarding to the sink at the same time)")
        w("")
        w("| goal | spans/s acknowledged | requests/s | ack p50 ms | ack p99 ms | agent CPU % of one core | RSS peak MB | VmHWM MB | acked = at sink | runs |")
        w("|---|---|---|---|---|---|---|---|---|---|")
        ok = all(r["acked"] == r["delivered"] for r in ing)
        w(f"| ≥ 150k spans/s | {fmt(col(ing, 'items_per_s'), 0)} | {fmt(col(ing, 'requests_per_s'), 0)} | "
          f"{fmt(col(ing, 'p50_ms'), 2)} | {fmt(col(ing, 'p99_ms'), 2)} | {fmt(col(ing, 'cpu_pct'), 0)} | "
          f"{fmt(col(ing, 'rss_peak_mb'))} | {fmt(col(ing, 'hwm_mb'))} | {'yes' if ok else '**NO**'} | {len(ing)} |")
        w("")

    bl = [r for r in rows if r["scenario"] == "backlog"]
    if bl:
        w("### Backlog: fill (no destination), disk at peak, restart, drain to the sink, disk after")
        w("")
        w("| measure | goal | result | runs |")
        w("|---|---|---|---|")
        n = len(bl)
        lines = [
            ("backlog held (logical, spool.bytes)", "1 GiB", fmt(col(bl, "logical_mb"), 0, " MiB")),
            ("fill rate (100 spans/request, 16 connections)", "–", fmt(col(bl, "fill_items_per_s"), 0, " spans/s")),
            ("spool on disk at peak (du, allocated)", "≤ 1.5 × logical", fmt(col(bl, "disk_alloc_mb"), 0, " MiB")),
            ("… ratio disk / logical", "≤ 1.5", fmt(col(bl, "disk_ratio"), 2)),
            ("… sled's own size_on_disk", "–", fmt(col(bl, "sled_disk_mb"), 0, " MiB")),
            ("clean stop (SIGTERM → exit)", "–", fmt(col(bl, "stop_ms"), 0, " ms")),
            ("restart: spawn → /healthz 200", "≤ 1 s", fmt(col(bl, "ready_ms"), 0, " ms")),
            ("drain time (ready → sink has every item)", "–", fmt(col(bl, "drain_s"), 1, " s")),
            ("drain rate, OTLP bytes (after gunzip)", "≥ 100 MB/s", fmt(col(bl, "drain_mb_s"), 1, " MB/s")),
            ("drain rate, gzip bytes on the wire", "–", fmt(col(bl, "drain_wire_mb_s"), 1, " MB/s")),
            ("RSS while draining (peak sampled)", "≤ 64 MB", fmt(col(bl, "drain_rss_peak_mb"), 1, " MB")),
            ("VmHWM while draining", "≤ 64 MB", fmt(col(bl, "drain_hwm_mb"), 1, " MB")),
            ("spool on disk after draining (du, allocated)", "< 64 MiB", fmt(col(bl, "after_alloc_mb"), 0, " MiB")),
            ("records left after draining", "0", fmt(col(bl, "after_records"), 0)),
        ]
        for what, goal, res in lines:
            w(f"| {what} | {goal} | {res} | {n} |")
        ok = all(r["acked"] == r["delivered"] for r in bl)
        w(f"| every acknowledged span reached the sink | yes | {'yes' if ok else '**NO**'} ({sum(r['acked'] for r in bl):,} spans) | {n} |")
        w("")

    idles = [r for r in rows if r["scenario"].startswith("idle")]
    if idles:
        w("### Idle (a destination configured, no traffic)")
        w("")
        w("`idle` / `idle-fresh`: a new spool, never written. `idle-restarted`: the agent took 1 s of traffic, "
          "delivered it, was restarted on that spool, then left alone (what a laptop sees after each login).")
        w("")
        w("| variant | measured for | goal | CPU in that time | scaled to 5 min | RSS MB | VmHWM MB | runs |")
        w("|---|---|---|---|---|---|---|---|")
        for v in sorted({r["scenario"] for r in idles}):
            idle = [r for r in idles if r["scenario"] == v]
            w(f"| {v} | {fmt(col(idle, 'idle_s'), 0, ' s')} | ≤ 50 ms CPU per 5 min; RSS ≤ 15 MB | {fmt(col(idle, 'cpu_ms'), 0, ' ms')} | "
              f"{fmt(col(idle, 'cpu_ms_per_5min'), 0, ' ms')} | {fmt(col(idle, 'rss_mb'))} | {fmt(col(idle, 'hwm_mb'))} | {len(idle)} |")
        w("")
    print("\n".join(out))


if __name__ == "__main__":
    main()
