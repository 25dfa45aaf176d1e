#!/usr/bin/env python3
"""Turns bench/run.sh's results (JSON lines, one per run) into markdown tables of medians, and
bench/soak.sh's samples (CSV, one row per sample) into the soak and drain-memory reports.

    report.py RESULTS.jsonl [MORE.jsonl …] --machine M --commit C --build B --started T --args A --rotel V  > report.md
    report.py --splice bench/RESULTS.md report.md [NAME]   # replace the generated part NAME
                                                          # (default "bench"; soak.sh uses "soak")
    report.py --soak SAMPLES.csv --sink SINK.json --status STATUS.json --command C --commit C --build B \
              --started T --load1 L --warmup S LOADGEN.json…   # exit 1 if items were lost or RSS/fds grew
    report.py --drain SAMPLES.csv --work DIR --command C --commit C --build B --started T

--build is what the binaries were, as bench/lib.sh's build_label says it ("profiling build", "dev build",
"binaries from DIR").

Each run.sh figure is the median over the runs, with [min–max] when there was more than one run.
The soak's pass/fail limits are the constants below; bench/soak.sh's --help states them too.
"""
import argparse
import csv
import json
import statistics
import sys

# Soak limits, after the warm-up soak.sh passes (--warmup): the last quarter of the load against
# the first quarter.
RSS_GROWTH_MB, RSS_GROWTH_FRACTION = 16, 0.25   # judged only with --judge-rss-growth (long runs:
                                                  # each of the first backlogs raises RSS a step)
RSS_MAX_MB = 256        # always judged
FD_GROWTH = 16          # median open descriptors, last quarter vs first
FD_AFTER_SLACK = 16     # descriptors once the clients are gone, vs before the load: pooled
                        # upstream connections (2–8 seen); a per-connection leak under the
                        # churn (thousands of connections a minute) is far above it
SIGNALS = ("traces", "metrics", "logs")

GOALS = {
    "metrics-1k": ("CPU ≤ 1%, RSS ≤ 40 MB", 1.0, 40),
    "metrics-5k": ("CPU ≤ 3%, RSS ≤ 40 MB", 3.0, 40),
    "metrics-10k": ("CPU ≤ 5%, RSS ≤ 40 MB", 5.0, 40),
    "traces-10k": ("CPU ≤ 4%, RSS ≤ 40 MB; p99 ack ≤ 10 ms", 4.0, 40),
    "traces-10k-grpc": ("(as traces-10k, over gRPC)", 4.0, 40),
    "logs-1k": ("(smoke only)", None, None),
}


def splice(results_md, report_md, name="bench"):
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    new = open(report_md).read().strip()
    try:
        old = open(results_md).read()
    except FileNotFoundError:
        old = "# Benchmark results\n"
    if begin in old and end in old:
        head, rest = old.split(begin, 1)
        _, tail = rest.split(end, 1)
        out = head + begin + "\n" + new + "\n" + end + tail
    else:
        out = old.rstrip() + "\n\n" + begin + "\n" + new + "\n" + end + "\n"
    open(results_md, "w").write(out)


def known(values):
    """The values that were measured (None: not measured, or not sampled)."""
    return [v for v in values if v is not None]


def median(values):
    """The median of the known values, None if there are none."""
    values = known(values)
    return statistics.median(values) if values else None


def fmt(values, digits=1, unit=""):
    values = known(values)
    if not values:
        return "–"
    m = statistics.median(values)
    s = f"{m:,.{digits}f}{unit}"
    if len(values) > 1:
        s += f" [{min(values):,.{digits}f}–{max(values):,.{digits}f}]"
    return s


def col(rows, key):
    return [r.get(key) for r in rows]


def read_samples(path):
    """bench/lib.sh's sampler CSV: numbers as floats (None where empty), `t` in seconds from
    the first row, RSS in MB."""
    rows = []
    for r in csv.DictReader(open(path)):
        row = {k: (v if k == "phase" else (float(v) if v not in ("", None) else None)) for k, v in r.items()}
        for k in ("rss", "hwm", "rss_anon", "rss_file"):
            row[k + "_mb"] = row[k + "_kb"] / 1024
        row["spool_disk_mib"] = row["spool_disk_alloc"] / 1048576 if row["spool_disk_alloc"] is not None else None
        rows.append(row)
    t0 = rows[0]["t_ms"] if rows else 0
    for r in rows:
        r["t"] = (r["t_ms"] - t0) / 1000
    return rows


def soak(argv):
    ap = argparse.ArgumentParser(prog="report.py --soak")
    ap.add_argument("--soak", required=True)
    for o in ("--sink", "--status", "--command", "--commit", "--build", "--started", "--load1"):
        ap.add_argument(o, required=True)
    ap.add_argument("--warmup", type=float, required=True, help="seconds of the load not judged")
    ap.add_argument("--judge-rss-growth", action="store_true")
    ap.add_argument("loadgen", nargs="+")
    a = ap.parse_args(argv)
    rows = read_samples(a.soak)
    sink = json.load(open(a.sink))
    lgs = {f.rsplit("lg-", 1)[-1].removesuffix(".json"): json.load(open(f)) for f in a.loadgen}
    before = [r for r in rows if r["phase"] == "before"]
    load = [r for r in rows if r["phase"] == "load"]
    after = [r for r in rows if r["phase"] == "after"]
    problems = []
    if not (before and load and after):
        print(f"soak report: the samples in {a.soak} lack a before/load/after phase; the run did not finish")
        return 1
    span = load[-1]["t"] - load[0]["t"]
    warm = min(a.warmup, span / 2)
    steady = [r for r in load if r["t"] - load[0]["t"] >= warm]
    q = max(1, len(steady) // 4)
    first, last = steady[:q], steady[-q:]

    out = []
    w = out.append
    w(f"### Soak: `{a.command}`")
    w("")
    w(f"- started {a.started}, otlp-spool {a.commit}, {a.build}; {len(rows)} samples over {rows[-1]['t']:,.0f} s "
      f"(load {span:,.0f} s, warm-up {warm:,.0f} s excluded from the quarters); 1-minute load average at the end {a.load1} (2 cores, shared)")
    w("- start = last sample before the load; median and max over the load; end = last sample after every acknowledged item "
      "was delivered and the clients had gone; quarters = medians of the first and last quarter of the load after warm-up")
    w("")
    w("| measure | start | median | max | end | first quarter | last quarter | growth | limit |")
    w("|---|---|---|---|---|---|---|---|---|")

    def line(label, key, digits=1, limit=None):
        fq, lq = median(col(first, key)), median(col(last, key))
        growth = None if fq is None or lq is None else lq - fq
        mx = max(known(col(load, key)), default=None)
        w(f"| {label} | {fmt([before[-1][key]], digits)} | {fmt([median(col(load, key))], digits)} | {fmt([mx], digits)} | "
          f"{fmt([after[-1][key]], digits)} | {fmt([fq], digits)} | {fmt([lq], digits)} | "
          f"{'–' if growth is None else f'{growth:+,.{digits}f}'} | {limit or '–'} |")
        return fq, lq

    growth_limit = f"+max({RSS_GROWTH_MB} MB, {RSS_GROWTH_FRACTION:.0%})" if a.judge_rss_growth else "not judged (short run)"
    fq, lq = line("RSS MB", "rss_mb", 1, f"{growth_limit}; max ≤ {RSS_MAX_MB} MB")
    if a.judge_rss_growth and lq - fq > max(RSS_GROWTH_MB, RSS_GROWTH_FRACTION * fq):
        problems.append(f"RSS grew from {fq:.1f} MB (first quarter) to {lq:.1f} MB (last quarter)")
    rss_max = max(r["rss_mb"] for r in rows)
    if rss_max > RSS_MAX_MB:
        problems.append(f"RSS reached {rss_max:.1f} MB (limit {RSS_MAX_MB} MB)")
    line("… anonymous MB", "rss_anon_mb")
    line("… file-backed MB", "rss_file_mb")
    fq, lq = line("open descriptors", "fds", 0, f"+{FD_GROWTH}; end ≤ start + {FD_AFTER_SLACK}")
    if lq - fq > FD_GROWTH:
        problems.append(f"open descriptors grew from {fq:.0f} (first quarter) to {lq:.0f} (last quarter)")
    if after[-1]["fds"] - before[-1]["fds"] > FD_AFTER_SLACK:
        problems.append(f"{after[-1]['fds']:.0f} descriptors open after the clients left, {before[-1]['fds']:.0f} before the load")
    line("threads", "threads", 0)
    line("spool records pending", "spool_records", 0)
    line("spool on disk MiB (du, allocated)", "spool_disk_mib", 1)
    w("")

    w("| signal | items sent | acknowledged | delivered to the sink | lost (acked − delivered) | extra deliveries |")
    w("|---|---|---|---|---|---|")
    for sig in SIGNALS:
        mine = [lg for lg in lgs.values() if lg["signal"] == sig]
        sent, acked = sum(lg["items_sent"] for lg in mine), sum(lg["items_ok"] for lg in mine)
        got = sink[sig]
        lost, extra = max(0, acked - got), max(0, got - acked)
        if lost:
            problems.append(f"{lost:,} acknowledged {sig} items never reached the sink")
        w(f"| {sig} | {sent:,} | {acked:,} | {got:,} | {lost:,} | {extra:,} |")
    w("")
    w(f"Sink: {sink['requests']:,} exports accepted, {sink['refused']:,} refused by its failure windows, "
      f"{sink['bad_requests']:,} malformed.")
    if sink["bad_requests"]:
        problems.append(f"the sink received {sink['bad_requests']} malformed exports")
    w("")
    w("| loadgen | connections | acknowledged requests | errors | ack p50 ms | ack p99 ms | ack max ms |")
    w("|---|---|---|---|---|---|---|")
    for name, lg in sorted(lgs.items()):
        conns = f"{lg['concurrency']}" + (" (new per request)" if lg.get("churn") else " kept alive")
        err = f"{lg['errors']:,}" + (f" (first: {lg['first_error']})" if lg["errors"] else "")
        w(f"| {name} ({lg['protocol']}, {lg['signal']}{', gzip' if lg['gzip'] else ''}) | {conns} | "
          f"{lg['requests_ok']:,} | {err} | {lg['ack_ms']['p50']:.2f} | {lg['ack_ms']['p99']:.2f} | {lg['ack_ms']['max']:.1f} |")
    w("")
    w(f"**Verdict: {'FAIL — ' + '; '.join(problems) if problems else 'pass'}.**")
    print("\n".join(out))
    return 1 if problems else 0


def drain(argv):
    ap = argparse.ArgumentParser(prog="report.py --drain")
    ap.add_argument("--drain", required=True)
    for o in ("--work", "--command", "--commit", "--build", "--started"):
        ap.add_argument(o, required=True)
    a = ap.parse_args(argv)
    rows = read_samples(a.drain)
    work = a.work
    drain_ms = dict(l.split() for l in open(f"{work}/drain_ms"))
    ready_ms = int(open(f"{work}/ready_ms").read())
    fills = {n: json.load(open(f"{work}/lg-{n}.json")) for n in ("fill1", "fill2")}
    out = []
    w = out.append
    w(f"### Drain memory: `{a.command}`")
    w("")
    every = statistics.median(b["t"] - a_["t"] for a_, b in zip(rows, rows[1:]))
    w(f"- started {a.started}, otlp-spool {a.commit}, {a.build}; VmRSS, RssAnon and RssFile sampled every "
      f"{every:.1f} s; the upstream was down (nothing listening) during the fills")
    w("")
    w("| phase | what | seconds | RSS MB at start | RSS MB max | … anonymous at max | … file-backed at max | RSS MB at end | spool records at start → end |")
    w("|---|---|---|---|---|---|---|---|---|")
    what = {
        "fill": "fill the backlog, upstream down",
        "drain-live": "upstream up: drain, same process",
        "refill": "fill again, upstream down",
        "restart": "SIGTERM",
        "reopened": "restarted on the full spool, upstream still down",
        "drain-restarted": "drain after a restart on the full spool",
        "after": "drained, idle",
    }
    for phase in what:
        rs = [r for r in rows if r["phase"] == phase]
        if not rs:
            continue
        peak = max(rs, key=lambda r: r["rss_mb"])
        w(f"| {phase} | {what[phase]} | {rs[-1]['t'] - rs[0]['t']:,.0f} | {rs[0]['rss_mb']:,.1f} | {peak['rss_mb']:,.1f} | "
          f"{peak['rss_anon_mb']:,.1f} | {peak['rss_file_mb']:,.1f} | {rs[-1]['rss_mb']:,.1f} | "
          f"{fmt([rs[0]['spool_records']], 0)} → {fmt([rs[-1]['spool_records']], 0)} |")
    w("")
    lost = False
    for name, fill in (("drain-live", "fill1"), ("drain-restarted", "fill2")):
        sink = json.load(open(f"{work}/sink-{name}.json"))
        secs = int(drain_ms[name]) / 1000
        acked = fills[fill]["items_ok"]
        lost |= sink["traces"] < acked
        w(f"- {name}: {fills[fill]['acked_otlp_bytes'] / 1048576:,.0f} MiB ({acked:,} spans) acknowledged in the fill, "
          f"{sink['traces']:,} delivered in {secs:,.1f} s ({sink['otlp_bytes'] / 1e6 / secs:,.1f} MB/s of OTLP, "
          f"{sink['wire_bytes'] / 1e6 / secs:,.1f} MB/s gzip on the wire)")
    w(f"- restart on the full spool: spawn → /healthz 200 in {ready_ms:,} ms")
    for name in ("drain-live", "drain-restarted"):
        smaps = dict(l.split()[:2] for l in open(f"{work}/smaps-{name}.txt") if l.split()[0].endswith(":"))
        w(f"- /proc/PID/smaps_rollup when {name} finished: " + ", ".join(
            f"{k.rstrip(':')} {int(smaps[k]) / 1024:,.0f} MB" for k in ("Rss:", "Anonymous:", "Private_Dirty:", "Private_Clean:") if k in smaps))
    print("\n".join(out))
    return 1 if lost else 0


def pair_ratios(rows, scenario, key):
    """otlp-spool's `key` over rotel's, for each repetition of `scenario` that has both."""
    by = {(r["agent"], r["rep"]): r[key] for r in rows if r["scenario"] == scenario}
    return [by[("otlp-spool", rep)] / by[("rotel", rep)]
            for (a, rep) in sorted(by) if a == "otlp-spool" and by.get(("rotel", rep))]


def issue15_summary(rows):
    """Table rows of issue 15's figures, from whichever scenarios ran with the rotel reference."""
    out = []
    figures = [
        ("CPU at 10k spans/s, durable, vs rotel in memory", "≤ 1.5×", "traces-10k", "cpu_pct"),
        ("CPU at 10k metric points/s vs rotel", "≤ 1.5×", "metrics-10k", "cpu_pct"),
        ("RSS peak at 10k spans/s vs rotel", "≤ 1.0×", "traces-10k", "rss_peak_mb"),
        ("maximum ingest vs rotel's in-memory maximum", "≥ 0.55×", "ingest-max", "items_per_s"),
    ]
    for name, target, scenario, key in figures:
        ratios = pair_ratios(rows, scenario, key)
        if ratios:
            out.append(f"| {name} | {target} | {fmt(ratios, 2, '×')} |")
    if not out:
        return out
    spool = lambda s: [r for r in rows if r["scenario"] == s and r["agent"] == "otlp-spool"]
    if spool("traces-10k"):
        out.append(f"| p99 time-to-ack at 10k spans/s (fsync included) | ≤ 5 ms | {fmt(col(spool('traces-10k'), 'p99_ms'), 2, ' ms')} |")
    if spool("ingest-max"):
        out.append(f"| maximum durable ingest | ≥ 265k spans/s | {fmt(col(spool('ingest-max'), 'items_per_s'), 0, ' spans/s')} |")
    for v in sorted({r["scenario"] for r in rows if r["scenario"].startswith("idle")}):
        idle = [r for r in rows if r["scenario"] == v]
        out.append(f"| idle RSS ({v}) | ≤ 10 MB | {fmt(col(idle, 'rss_mb'), 1, ' MB')} |")
    return out


def main():
    if sys.argv[1] == "--splice":
        splice(*sys.argv[2:5])
        return
    if sys.argv[1] == "--soak":
        sys.exit(soak(sys.argv[1:]))
    if sys.argv[1] == "--drain":
        sys.exit(drain(sys.argv[1:]))
    files = [a for a in sys.argv[1:] if a.endswith(".jsonl")]
    rest = [a for a in sys.argv[1:] if not a.endswith(".jsonl")]
    rows = [json.loads(l) for f in files for l in open(f) if l.strip()]
    opts = dict(zip(rest[0::2], rest[1::2]))
    out = []
    w = out.append
    w("## Measured by `bench/run.sh` (generated; edit the prose outside the markers)")
    w("")
    w(f"- started {opts['--started']}, otlp-spool {opts['--commit']}, {opts.get('--build', 'profiling build')}")
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
        # Rows from before issue 15 carry no shape: they were 10 spans per request on 64 connections.
        shape = {(r.get("batch", 10), r.get("connections", 64)) for r in ing}
        shape = "; ".join(f"{b} spans per request, {c} connections" for b, c in sorted(shape))
        w(f"### Maximum ingest (HTTP protobuf, {shape}, as fast as acks allow, forwarding to the sink at the same time)")
        w("")
        w("otlp-spool acknowledges after fsync; rotel acknowledges from memory. Ratio = otlp-spool's spans/s "
          "over rotel's, per run pair, in the same run.")
        w("")
        w("| agent | goal | spans/s acknowledged | vs rotel | requests/s | ack p50 ms | ack p99 ms | agent CPU % of one core | RSS peak MB | VmHWM MB | acked = at sink | runs |")
        w("|---|---|---|---|---|---|---|---|---|---|---|---|")
        ratio = pair_ratios(ing, "ingest-max", "items_per_s")
        for a in sorted({r["agent"] for r in ing}, key=lambda a: a != "otlp-spool"):
            rs = [r for r in ing if r["agent"] == a]
            goal = "≥ 265k spans/s and ≥ 0.55× rotel" if a == "otlp-spool" else "reference (in-memory)"
            ok = all(r["acked"] == r["delivered"] for r in rs)
            vs = fmt(ratio, 2, "×") if a == "otlp-spool" and ratio else "–"
            w(f"| {a} | {goal} | {fmt(col(rs, 'items_per_s'), 0)} | {vs} | {fmt(col(rs, 'requests_per_s'), 0)} | "
              f"{fmt(col(rs, 'p50_ms'), 2)} | {fmt(col(rs, 'p99_ms'), 2)} | {fmt(col(rs, 'cpu_pct'), 0)} | "
              f"{fmt(col(rs, 'rss_peak_mb'))} | {fmt(col(rs, 'hwm_mb'))} | {'yes' if ok else '**NO**'} | {len(rs)} |")
        w("")

    summary = issue15_summary(rows)
    if summary:
        w("### Against the in-memory reference (issue 15's figures)")
        w("")
        w("Each ratio is otlp-spool's figure over rotel's from the same repetition (both agents under the same "
          "load, one after the other), then the median over repetitions, [min–max].")
        w("")
        w("| figure | target | measured |")
        w("|---|---|---|")
        out.extend(summary)
        w("")

    bl = [r for r in rows if r["scenario"] == "backlog"]
    if bl:
        # Goals are issue 14's (spool storage v2). Rows a run did not measure (older results, from
        # before the per-phase fields) show "–".
        w("### Backlog: fill (no destination), hold, restart, drain to the sink, disk after, idle after")
        w("")
        w("RSS peak of a phase = the larger of VmRSS sampled every 0.1 s in it and VmHWM at its end, VmHWM "
          "reset at its start (`/proc/PID/clear_refs`); the restart's is VmHWM at ready. Logical = OTLP bytes "
          "acknowledged by the agent in the fill (loadgen). Ready = spawn → first `/healthz` 200, polled every 5 ms. "
          "Drain time = ready → the sink's last accepted export. Disk after = once no records are left and "
          "the allocated size stopped changing.")
        w("")
        w("| measure | goal | result | runs |")
        w("|---|---|---|---|")
        n = len(bl)
        idle_s = fmt([median(col(bl, "idle_s"))], 0, " s")
        lines = [
            ("backlog held (logical: OTLP bytes acknowledged)", "1 GiB", fmt(col(bl, "acked_mb"), 0, " MiB")),
            ("… as the agent counts it (`spool.bytes`)", "–", fmt(col(bl, "logical_mb"), 0, " MiB")),
            ("fill rate (100 spans/request, 16 connections)", "–", fmt(col(bl, "fill_items_per_s"), 0, " spans/s")),
            ("RSS peak: fill", "≤ 64 MB", fmt(col(bl, "rss_fill_peak_mb"), 1, " MB")),
            ("RSS peak: hold (idle with the backlog)", "≤ 64 MB", fmt(col(bl, "rss_hold_peak_mb"), 1, " MB")),
            ("RSS peak: restart (spawn → ready)", "≤ 64 MB", fmt(col(bl, "rss_restart_peak_mb"), 1, " MB")),
            ("RSS peak: drain", "≤ 64 MB", fmt(col(bl, "rss_drain_peak_mb") if any(r.get("rss_drain_peak_mb") for r in bl)
                                              else col(bl, "drain_rss_peak_mb"), 1, " MB")),
            ("spool on disk at peak, apparent (du -b)", "–", fmt(col(bl, "disk_app_mb"), 0, " MiB")),
            ("spool on disk at peak, allocated (du)", "–", fmt(col(bl, "disk_alloc_mb"), 0, " MiB")),
            ("… ratio apparent / logical", "≤ 1.05 + one segment per stream", fmt(col(bl, "disk_app_ratio"), 3)),
            ("… ratio allocated / logical", "≤ 1.05 + one segment per stream", fmt(col(bl, "disk_alloc_ratio"), 3)),
            ("… ratio allocated / `spool.bytes`", "–", fmt(col(bl, "disk_ratio"), 3)),
            ("clean stop with the backlog (SIGTERM → exit)", "–", fmt(col(bl, "stop_ms"), 0, " ms")),
            ("restart: spawn → /healthz 200", "≤ 300 ms", fmt(col(bl, "ready_ms"), 1, " ms")),
            ("drain time (ready → last export at the sink)", "–", fmt(col(bl, "drain_s"), 2, " s")),
            ("drain rate, OTLP bytes (after gunzip)", "≥ 200 MB/s", fmt(col(bl, "drain_mb_s"), 1, " MB/s")),
            ("drain rate, gzip bytes on the wire", "–", fmt(col(bl, "drain_wire_mb_s"), 1, " MB/s")),
            ("records left after draining", "0", fmt(col(bl, "after_records"), 0)),
            ("… time until the disk stopped changing (after the last export)", "–", fmt(col(bl, "settle_s"), 1, " s")),
            ("spool on disk after draining, allocated (du), agent running", "≤ 16 MiB", fmt(col(bl, "after_alloc_mb"), 1, " MiB")),
            ("… apparent (du -b)", "–", fmt(col(bl, "after_app_mb"), 1, " MiB")),
            ("… allocated, after the agent stopped", "–", fmt(col(bl, "stopped_alloc_mb"), 1, " MiB")),
            (f"idle after the drain ({idle_s}): context switches, all threads", "0 over 60 s", fmt(col(bl, "idle_ctxt"), 0)),
            ("… CPU in that window", "–", fmt(col(bl, "idle_cpu_ms"), 0, " ms")),
            ("… RSS peak / at its end", "≤ 64 MB", f"{fmt(col(bl, 'rss_idle_peak_mb'), 1)} / {fmt(col(bl, 'rss_idle_end_mb'), 1)} MB"),
        ]
        for what, goal, res in lines:
            w(f"| {what} | {goal} | {res} | {n} |")
        ok = all(r["acked"] == r["delivered"] for r in bl)
        w(f"| every acknowledged span reached the sink | yes | {'yes' if ok else '**NO**'} ({sum(r['acked'] for r in bl):,} spans) | {n} |")
        w("")
        by_name = [r["idle_ctxt_by_name"] for r in bl if r.get("idle_ctxt_by_name")]
        if by_name:
            w("Context switches in the idle window by thread name (sum over threads of that name; first run): "
              + (", ".join(f"`{k}` {v:,}" for k, v in list(by_name[0].items())[:12] if v) or "none") + ".")
            w("")
        if not all(r.get("hwm_exact", True) for r in bl):
            w("VmHWM could not be reset here: hold, drain and idle peaks are sampled only (0.1 s).")
            w("")

    ready = [r for r in rows if r["scenario"] in ("backlog", "backlog-ready") and "size_bytes" in r]
    if ready:
        w("### Restart with a backlog held: ready time by size")
        w("")
        w("`backlog` rows come from the full scenario above; `backlog-ready` rows only fill, hold, stop and "
          "restart (no drain). Page cache warm (the spool was just written).")
        w("")
        w("| held (logical) | scenario | goal | spawn → /healthz 200 | RSS peak: restart | RSS peak: fill | disk allocated / logical | clean stop | runs |")
        w("|---|---|---|---|---|---|---|---|---|")
        for size, scen in sorted({(r["size_bytes"], r["scenario"]) for r in ready}):
            rs = [r for r in ready if r["size_bytes"] == size and r["scenario"] == scen]
            w(f"| {fmt(col(rs, 'acked_mb'), 0, ' MiB')} | {scen} | ≤ 300 ms, RSS ≤ 64 MB | {fmt(col(rs, 'ready_ms'), 1, ' ms')} | "
              f"{fmt(col(rs, 'rss_restart_peak_mb'), 1, ' MB')} | {fmt(col(rs, 'rss_fill_peak_mb'), 1, ' MB')} | "
              f"{fmt(col(rs, 'disk_alloc_ratio'), 3)} | {fmt(col(rs, 'stop_ms'), 0, ' ms')} | {len(rs)} |")
        w("")

    idles = [r for r in rows if r["scenario"].startswith("idle")]
    if idles:
        w("### Idle (a destination configured, no traffic)")
        w("")
        w("`idle` / `idle-fresh`: a new spool, never written. `idle-restarted`: the agent took 1 s of traffic, "
          "delivered it, was restarted on that spool, then left alone (what a laptop sees after each login).")
        w("")
        w("| variant | measured for | goal | CPU in that time | scaled to 5 min | context switches, all threads | RSS MB | VmHWM MB | runs |")
        w("|---|---|---|---|---|---|---|---|---|")
        for v in sorted({r["scenario"] for r in idles}):
            idle = [r for r in idles if r["scenario"] == v]
            w(f"| {v} | {fmt(col(idle, 'idle_s'), 0, ' s')} | ≤ 50 ms CPU per 5 min; RSS ≤ 15 MB; 0 context switches (issue 14) | {fmt(col(idle, 'cpu_ms'), 0, ' ms')} | "
              f"{fmt(col(idle, 'cpu_ms_per_5min'), 0, ' ms')} | {fmt(col(idle, 'ctxt'), 0)} | {fmt(col(idle, 'rss_mb'))} | {fmt(col(idle, 'hwm_mb'))} | {len(idle)} |")
        w("")
    print("\n".join(out))


if __name__ == "__main__":
    main()
