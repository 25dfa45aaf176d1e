#!/usr/bin/env bash
# shellcheck disable=SC2119 # commit_label's REV is optional: the soak always measures HEAD
# Soak and drain-memory runs for otlp-spool (issue 8, item 5). Builds (the `profiling` profile by
# default: release code with line tables), starts the agent and the fast sink (examples/sink.rs),
# and samples the agent's RSS, open descriptors, threads, spool records, logical bytes and
# allocated disk into a CSV (kept in bench/results/ with --record); bench/report.py turns the CSV
# into the report and decides pass/fail.
#
#   bench/soak.sh [DURATION]          # soak: steady mixed load for DURATION (default 30m;
#                                     # 60s, 15m, 1h or plain seconds)
#   bench/soak.sh 60s                 # the short CI variant (~2 min warm)
#   bench/soak.sh --drain 1GiB        # drain memory: fill a backlog with the upstream down, drain
#                                     # it live, fill again, restart on the full spool, drain again
#
# Soak load (five loadgen processes at once, for DURATION): OTLP/HTTP protobuf traces over 64
# kept-alive connections, gzip metrics over 16, gRPC gzip logs over 16, and connection churn —
# HTTP logs and gRPC traces with a new connection per request (about 60 new connections a
# second). The sink refuses everything (503, Retry-After: 1) for the first F seconds of every P
# (P=60, F=15; P=20, F=6 for runs under 5 minutes), so the backlog grows and drains all along.
# After the load: wait until every acknowledged item is at the sink, then sample idle a little.
#
# Exit status (soak): 1 if an acknowledged item did not reach the sink, the sink saw a malformed
# export, RSS went above 256 MB, or, after warm-up (1.5 failure periods, or 20 % of the load up to
# 2 minutes if longer), the median descriptor count of the last quarter of the load exceeds the
# first quarter's by more than 16, or the descriptors after the clients left are more than 16 above
# the count before the load. In runs of 10 minutes or more, also if the median RSS of the last
# quarter exceeds the first quarter's by more than max(16 MB, 25 %) (in shorter runs each of the
# first backlogs still raises RSS a step: growth is shown, not judged). --drain reports and fails
# only on lost items.
#
# Options:
#   --drain SIZE     drain-memory mode (SIZE in bytes, or like 256MiB / 1GiB)
#   --interval S     seconds between samples (default 5; 2 for runs under 5 minutes; 0.5 in --drain)
#   --port-base P    ports P..P+2 on 127.0.0.1 (default 24400; run.sh uses 24300)
#   --bin DIR        use otlp-spool, loadgen and sink from DIR (or DIR/examples) instead of
#                    building, e.g. --bin target/release
#   --profile P      cargo profile to build (default profiling)
#   --record         splice the report into bench/RESULTS.md (between the soak or drain markers)
#                    and keep the samples in bench/results/ (otherwise they stay in the work dir)
#
# The binaries are copied into the work directory before the run, so builds in the shared tree do
# not change a long run. Everything listens on 127.0.0.1; every process started is stopped by PID.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$PWD"
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

DURATION=30m DRAIN="" INTERVAL="" PORT_BASE=24400 PREBUILT="" PROFILE=profiling RECORD=0
while [ $# -gt 0 ]; do
  case "$1" in
    --drain) DRAIN=$2; shift ;;
    --interval) INTERVAL=$2; shift ;;
    --port-base) PORT_BASE=$2; shift ;;
    --bin) PREBUILT=$2; shift ;;
    --profile) PROFILE=$2; shift ;;
    --record) RECORD=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) echo "bench/soak.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) DURATION=$1 ;;
  esac
  shift
done
need_tools curl jq python3

# seconds_of 90 | 60s | 15m | 2h
seconds_of() {
  case "$1" in
    *[0-9]s) echo "${1%s}" ;; *[0-9]m) echo $(( ${1%m} * 60 )) ;; *[0-9]h) echo $(( ${1%h} * 3600 )) ;;
    *[!0-9]*|"") echo "bench/soak.sh: duration '$1': want e.g. 60s, 15m, 1h" >&2; exit 2 ;;
    *) echo "$1" ;;
  esac
}
# bytes_of: bench/lib.sh
SECS=$(seconds_of "$DURATION")
[ -z "$DRAIN" ] || DRAIN_BYTES=$(bytes_of "$DRAIN")

HTTP_PORT=$PORT_BASE GRPC_PORT=$((PORT_BASE + 1)) SINK_PORT=$((PORT_BASE + 2))
MODE=$([ -n "$DRAIN" ] && echo "drain-$DRAIN" || echo "soak-$DURATION")
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
WORK="$ROOT/.cache/soak-$STAMP-$PORT_BASE"   # spool on the same disk as a real one
rm -rf "$WORK"; mkdir -p "$WORK" "$ROOT/bench/results"
# Recorded runs keep their samples beside RESULTS.md; others (CI's) leave them in the work dir.
CSV="$([ "$RECORD" = 1 ] && echo "$ROOT/bench/results" || echo "$WORK")/$STAMP-$MODE.csv"
FAILED=0

install_bins "$PREBUILT" "$ROOT" "${CARGO_TARGET_DIR:-$ROOT/target}" "$PROFILE" "$WORK/bin"
BIN="$WORK/bin"
COMMIT=$(commit_label) BUILD=$(build_label "$PREBUILT" "$PROFILE")

trap cleanup EXIT
phase() { set_phase "$1"; log "phase: $1"; }
# Retries quickly, so the backlog drains soon after each failure window.
DEST_EXTRA='retry = { initial = "200ms", max = "2s" }'

# acked LOADGEN_JSON…: the sum of items_ok.
acked() { jq -s 'map(.items_ok) | add' "$@"; }

# ---- soak ------------------------------------------------------------------------------------
soak() {
  local every=60 fail_for=15
  [ "$SECS" -lt 300 ] && every=20 fail_for=6
  INTERVAL=${INTERVAL:-$([ "$SECS" -lt 300 ] && echo 2 || echo 5)}
  start_sink --fail-every "$every" --fail-for "$fail_for"
  write_config "$WORK/agent.toml" yes "$WORK/spool" 1GiB "$DEST_EXTRA"
  start_agent "$WORK/agent.toml"
  phase before
  start_sampler "$AGENT_PID" "$CSV" "$INTERVAL" "$WORK/spool"
  sleep $(( INTERVAL * 2 + 1 ))

  phase load
  log "soak: $DURATION of mixed load (sink fails ${fail_for}s of every ${every}s); samples → $CSV"
  local name args
  while read -r name args; do
    # shellcheck disable=SC2086 # args are words
    "$BIN/loadgen" $args --seconds "$SECS" --threads 1 --json >"$WORK/lg-$name.json" 2>>"$WORK/loadgen.log" &
    LOADGEN_PIDS="$LOADGEN_PIDS $!"
  done <<EOF
http-traces --addr 127.0.0.1:$HTTP_PORT --signal traces --rate 3000 --batch 30 --concurrency 64
http-metrics-gzip --addr 127.0.0.1:$HTTP_PORT --signal metrics --rate 2000 --batch 50 --concurrency 16 --gzip
grpc-logs-gzip --protocol grpc --addr 127.0.0.1:$GRPC_PORT --signal logs --rate 1000 --batch 20 --concurrency 16 --gzip
http-logs-churn --addr 127.0.0.1:$HTTP_PORT --signal logs --rate 400 --batch 10 --concurrency 8 --churn
grpc-traces-churn --protocol grpc --addr 127.0.0.1:$GRPC_PORT --signal traces --rate 200 --batch 10 --concurrency 4 --churn
EOF
  local pid
  for pid in $LOADGEN_PIDS; do wait "$pid" || fail "a loadgen exited with an error (see $WORK/loadgen.log)"; done
  LOADGEN_PIDS=""

  phase drain
  local lg=("$WORK"/lg-*.json) t l m
  t=$(acked "$WORK/lg-http-traces.json" "$WORK/lg-grpc-traces-churn.json")
  m=$(acked "$WORK/lg-http-metrics-gzip.json")
  l=$(acked "$WORK/lg-grpc-logs-gzip.json" "$WORK/lg-http-logs-churn.json")
  wait_delivered 300 "traces=$t" "metrics=$m" "logs=$l" || true
  phase after
  sleep $(( INTERVAL * 3 + 2 ))   # the clients are gone: descriptors and memory should settle
  curl -sf "http://127.0.0.1:$HTTP_PORT/status" >"$WORK/status.json" || echo '{}' >"$WORK/status.json"
  stop_sampler; stop_agent
  sink_count >"$WORK/sink.json"; stop_sink

  local warmup=$(( SECS / 5 )); [ "$warmup" -le 120 ] || warmup=120
  [ "$warmup" -ge $(( every * 3 / 2 )) ] || warmup=$(( every * 3 / 2 ))
  local judge=""; [ "$SECS" -lt 600 ] || judge=--judge-rss-growth
  local args_line="bench/soak.sh $DURATION (sink fails ${fail_for}s of every ${every}s; sampled every ${INTERVAL}s)"
  python3 "$ROOT/bench/report.py" --soak "$CSV" --sink "$WORK/sink.json" --status "$WORK/status.json" \
    --command "$args_line" --commit "$COMMIT" --build "$BUILD" --started "$STAMP" --load1 "$(cut -d' ' -f1 /proc/loadavg)" \
    --warmup "$warmup" ${judge:+"$judge"} \
    "${lg[@]}" >"$WORK/report.md" || FAILED=1
  cat "$WORK/report.md"
  if [ "$RECORD" = 1 ]; then
    python3 "$ROOT/bench/report.py" --splice "$ROOT/bench/RESULTS.md" "$WORK/report.md" soak
    log "wrote the soak section of bench/RESULTS.md"
  fi
}

# ---- drain memory ----------------------------------------------------------------------------
# fill NAME: traces, 100 spans a request, 16 connections, until DRAIN_BYTES are acknowledged.
fill() {
  "$BIN/loadgen" --addr "127.0.0.1:$HTTP_PORT" --signal traces --batch 100 --concurrency 16 \
    --seconds 1800 --max-bytes "$DRAIN_BYTES" --threads 2 --json >"$WORK/lg-$1.json" 2>>"$WORK/loadgen.log" \
    || fail "the fill loadgen failed (see $WORK/loadgen.log)"
}
# drain NAME FILL: starts the sink, waits until it has every span FILL acknowledged, stops it.
drain() {
  phase "$1"
  start_sink
  local t0; t0=$(date +%s%N)
  wait_delivered 1800 "traces=$(acked "$WORK/lg-$2.json")" || fail "$1: not every acknowledged span reached the sink"
  echo "$1 $(( ($(date +%s%N) - t0) / 1000000 ))" >>"$WORK/drain_ms"
  cp "/proc/$AGENT_PID/smaps_rollup" "$WORK/smaps-$1.txt"
  sink_count >"$WORK/sink-$1.json"
  stop_sink
}
drain_memory() {
  INTERVAL=${INTERVAL:-0.5}
  # The upstream is down (nothing listens on the sink's port) while the backlog fills.
  write_config "$WORK/agent.toml" yes "$WORK/spool" "$(( DRAIN_BYTES * 2 ))" "$DEST_EXTRA"
  start_agent "$WORK/agent.toml"
  start_sampler "$AGENT_PID" "$CSV" "$INTERVAL" "$WORK/spool"
  phase fill
  fill fill1
  drain drain-live fill1
  phase refill
  fill fill2
  phase restart
  stop_sampler; stop_agent
  start_agent "$WORK/agent.toml"
  phase reopened
  echo "$READY_MS" >"$WORK/ready_ms"
  log "restart on the full spool: ready in $READY_MS ms"
  start_sampler "$AGENT_PID" "$CSV.restarted" "$INTERVAL" "$WORK/spool"
  sleep 3
  drain drain-restarted fill2
  phase after; sleep 3
  stop_sampler; stop_agent
  tail -n +2 "$CSV.restarted" >>"$CSV"; rm "$CSV.restarted"
  python3 "$ROOT/bench/report.py" --drain "$CSV" --work "$WORK" --command "bench/soak.sh --drain $DRAIN" \
    --commit "$COMMIT" --build "$BUILD" --started "$STAMP" >"$WORK/report.md" || FAILED=1
  cat "$WORK/report.md"
  if [ "$RECORD" = 1 ]; then
    python3 "$ROOT/bench/report.py" --splice "$ROOT/bench/RESULTS.md" "$WORK/report.md" drain
    log "wrote the drain section of bench/RESULTS.md"
  fi
}

if [ -n "$DRAIN" ]; then drain_memory; else soak; fi
log "samples: $CSV; work dir (logs, loadgen JSON, smaps): $WORK"
if [ "$FAILED" != 0 ]; then log "FAILED (see above)"; exit 1; fi
log "passed"
