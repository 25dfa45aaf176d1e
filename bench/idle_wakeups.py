#!/usr/bin/env python3
"""Issue 14: context switches, by thread, of an idle otlp-spool over a window (60 s in the
benchmark; tests/idle.rs checks 10 s). Starts BINARY with an empty spool in a temp dir, OTLP/HTTP
on a free loopback port, no gRPC, and either no destination or (--dest) one otlp_http destination
whose upstream is a `python3 -m http.server` on loopback (healthy; nothing is sent while idle);
waits 5 s for start-up to settle, then samples /proc/PID/task/*/status at t and t+WINDOW.
usage: bench/idle_wakeups.py target/profiling/otlp-spool 60 [--dest]"""
import os, socket, subprocess, sys, tempfile, time

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

def sample(pid):
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            comm = open(f"/proc/{pid}/task/{tid}/comm").read().strip()
            st = open(f"/proc/{pid}/task/{tid}/status").read().splitlines()
        except FileNotFoundError:
            continue
        f = dict(l.split(":", 1) for l in st if ":" in l)
        out[tid] = (comm, int(f["voluntary_ctxt_switches"]), int(f["nonvoluntary_ctxt_switches"]))
    return out

binary, window = sys.argv[1], float(sys.argv[2])
dest = "--dest" in sys.argv
d = tempfile.mkdtemp(prefix="idle-")
port = free_port()
extra = ""
upstream = None
if dest:
    up = free_port()
    upstream = subprocess.Popen([sys.executable, "-m", "http.server", str(up), "--bind", "127.0.0.1"],
                                cwd=d, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    extra = f'[[destination]]\nname = "up"\ntype = "otlp_http"\nendpoint = "http://127.0.0.1:{up}"\n'
cfg = f'{d}/config.toml'
open(cfg, "w").write(f'[server]\nlisten = "127.0.0.1:{port}"\ngrpc_listen = ""\n[spool]\ndir = "{d}/spool"\n{extra}')
log = open(f"{d}/agent.log", "w")
agent = subprocess.Popen([binary, "run", "--config", cfg], stdout=log, stderr=log,
                         env=dict(os.environ, OTLP_SPOOL_LOG="info"))
try:
    time.sleep(5)
    a = sample(agent.pid)
    time.sleep(window)
    b = sample(agent.pid)
    total = 0
    print(f"{'tid':>8} {'thread':<18} {'vol':>6} {'invol':>6}")
    for tid in sorted(set(a) | set(b), key=int):
        comm = (b.get(tid) or a.get(tid))[0]
        if tid not in a or tid not in b:
            print(f"{tid:>8} {comm:<18} {'(started)' if tid not in a else '(exited)'}"); continue
        dv, dn = b[tid][1] - a[tid][1], b[tid][2] - a[tid][2]
        total += dv + dn
        print(f"{tid:>8} {comm:<18} {dv:>6} {dn:>6}")
    print(f"threads {len(b)}, window {window:.0f} s, total context switches {total} ({total/window:.2f}/s)")
finally:
    agent.terminate(); agent.wait()
    if upstream: upstream.terminate(); upstream.wait()
