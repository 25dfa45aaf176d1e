#!/usr/bin/env bash
# shellcheck disable=SC2119 # start_sink's arguments are optional: most calls have none
# Benchmark runner for otlp-spool (issue 7). Builds the binaries (the `profiling` profile: release
# code with line tables, see Cargo.toml), then for each scenario
# starts a fresh agent (fresh spool) and a fresh sink (examples/sink.rs), drives the agent with
# examples/loadgen.rs, samples the agent's CPU time (utime+stime, /proc/PID/stat) and memory
# (VmRSS sampled every 0.5 s, 0.1 s in the backlog scenario; VmHWM) and writes medians over
# --repeat runs into bench/RESULTS.md (between the "bench:begin" and "bench:end" markers; the rest
# of the file is prose). The backlog scenario measures issue 14's figures (spool storage v2): RSS
# peak of each phase (fill, hold, restart, drain, idle after), ready time after a restart at
# several backlogs, disk at peak and after the drain, drain rate, and the context switches of all
# the agent's threads once it is idle again; raw results go to WORK/results.jsonl.
# Building, process control and the /proc sampler are shared with bench/soak.sh (bench/lib.sh).
#
#   bench/run.sh                      # everything, full length (about 55 minutes)
#   bench/run.sh --only backlog --repeat 1 --no-report   # issue 14's figures: 1 GiB in full,
#                                     # ready time at 64 MiB and 4 GiB (7–8 min on a busy 2-core box)
#   bench/run.sh --smoke              # a few seconds per scenario: checks the harness end to end
#                                     # (items acked == items at the sink); non-zero exit if not
#   bench/run.sh --only metrics,traces --repeat 5 --seconds 30
#
# Options:
#   --smoke             short runs, dev build, no RESULTS.md; exits 1 if any check fails
#   --repeat N          runs per scenario (default 3; the table shows median and [min–max])
#   --seconds S         length of the fixed-rate scenarios (default 60)
#   --max-seconds S     length of the maximum-ingest run (default 20)
#   --idle-seconds S    idle scenario length (default 300)
#   --backlog SIZE      backlog of the backlog scenario, in bytes of OTLP or like 64MiB, 1GiB
#                       (default 1GiB): fill (no destination), hold, restart, drain, disk after,
#                       idle after; RSS peak of each phase, ready time, disk, drain rate (issue 14)
#   --backlog-repeat N  runs of the backlog scenario (default: --repeat)
#   --ready-sizes LIST  more backlogs, comma-separated (default 64MiB,4GiB; "" for none), at which
#                       only fill, hold, restart and ready time are measured, once each (no drain:
#                       at 4 GiB a drain would add minutes and say nothing new)
#   --hold-seconds S    backlog: the agent holds the filled spool this long before the stop (default 10)
#   --drain-idle-seconds S  backlog: the drained agent is left idle this long; context switches of
#                       all its threads and CPU are summed over it (default 60)
#   --only LIST         comma-separated: metrics,traces,grpc,ingest,backlog,idle,rotel
#   --rev REV           benchmark git revision REV (a `git archive` snapshot, with this tree's
#                       examples/ and bench/) instead of the working tree
#   --port-base P       ports P..P+4 on 127.0.0.1 (default 24300; keep it below 32768)
#   --no-report         do not touch bench/RESULTS.md (results stay in the work dir)
#   --profile P         cargo profile to build (default profiling; dev with --smoke)
#   --bin DIR           use otlp-spool, loadgen and sink from DIR (or DIR/examples) instead of
#                       building, e.g. --bin target/release
#
# Everything listens on 127.0.0.1 only, and every process it starts is bounded in time
# (the sink exits by itself; agents are stopped by PID, killed after 20 s if they hang).
# The load generator and the sink run on the same machine as the agent: on a 2-core box they
# compete with it for CPU, so throughput figures are a floor and latency figures a ceiling.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$PWD"
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

SMOKE=0 REPEAT=3 SECONDS_RATE=60 SECONDS_MAX=20 IDLE=300 BACKLOG=1GiB BACKLOG_REPEAT=""
READY_SIZES=64MiB,4GiB HOLD=10 DRAIN_IDLE=60
ONLY="metrics,traces,grpc,ingest,backlog,idle,rotel" REV="" REPORT=1 PROFILE="" PREBUILT=""
PORT_BASE=24300   # below Linux's ephemeral range (32768+), so no outgoing connection holds our ports
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) SMOKE=1 ;;
    --repeat) REPEAT=$2; shift ;;
    --seconds) SECONDS_RATE=$2; shift ;;
    --max-seconds) SECONDS_MAX=$2; shift ;;
    --idle-seconds) IDLE=$2; shift ;;
    --backlog) BACKLOG=$2; shift ;;
    --backlog-repeat) BACKLOG_REPEAT=$2; shift ;;
    --ready-sizes) READY_SIZES=$2; shift ;;
    --hold-seconds) HOLD=$2; shift ;;
    --drain-idle-seconds) DRAIN_IDLE=$2; shift ;;
    --only) ONLY=$2; shift ;;
    --rev) REV=$2; shift ;;
    --port-base) PORT_BASE=$2; shift ;;
    --no-report) REPORT=0 ;;
    --profile) PROFILE=$2; shift ;;
    --bin) PREBUILT=$2; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench/run.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if [ "$SMOKE" = 1 ]; then
  REPEAT=1 SECONDS_RATE=3 SECONDS_MAX=3 IDLE=2 BACKLOG=8MiB READY_SIZES=4MiB HOLD=1 DRAIN_IDLE=2 REPORT=0
  ONLY="metrics,traces,grpc,ingest,backlog,idle"
fi
BACKLOG_REPEAT=${BACKLOG_REPEAT:-$REPEAT}
# Sizes in bytes now, so that a typo stops the run before it has spent minutes on the fills.
BACKLOG=$(bytes_of "$BACKLOG") READY_BYTES=""
for size in ${READY_SIZES//,/ }; do READY_BYTES+=" $(bytes_of "$size")"; done
has() { [[ ",$ONLY," == *",$1,"* ]]; }

need_tools curl jq python3

HTTP_PORT=$PORT_BASE GRPC_PORT=$((PORT_BASE + 1)) SINK_PORT=$((PORT_BASE + 2))
ROTEL_HTTP=$((PORT_BASE + 3)) ROTEL_GRPC=$((PORT_BASE + 4))
# On the same disk as a real spool; one directory per invocation, so earlier results stay.
WORK="${BENCH_WORK:-$ROOT/.cache/bench-run-$(date -u +%Y%m%dT%H%M%SZ)-$PORT_BASE}"
rm -rf "$WORK"; mkdir -p "$WORK/bin"
RESULTS="$WORK/results.jsonl"; : >"$RESULTS"
FAILED=0

# ---- build ---------------------------------------------------------------------------------
SRC="$ROOT" TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
if [ -z "$PREBUILT" ] && [ -n "$REV" ]; then
  SRC="$ROOT/.cache/bench-src" TARGET="$ROOT/.cache/bench-target"
  rm -rf "$SRC"; mkdir -p "$SRC"
  git archive "$REV" | tar -x -C "$SRC"
  cp "$ROOT"/examples/*.rs "$SRC/examples/"
fi
[ -n "$PROFILE" ] || { PROFILE=profiling; [ "$SMOKE" = 1 ] && PROFILE=dev; }
install_bins "$PREBUILT" "$SRC" "$TARGET" "$PROFILE" "$WORK/bin"
BIN="$WORK/bin"
COMMIT=$(commit_label "$REV") BUILD=$(build_label "$PREBUILT" "$PROFILE")

# ---- processes -----------------------------------------------------------------------------
trap cleanup EXIT


start_rotel() {
  "$ROTEL" start --otlp-http-endpoint "127.0.0.1:$ROTEL_HTTP" --otlp-grpc-endpoint "127.0.0.1:$ROTEL_GRPC" \
    --exporter otlp --otlp-exporter-protocol http --otlp-exporter-compression gzip \
    --otlp-exporter-endpoint "http://127.0.0.1:$SINK_PORT" 2>>"$WORK/rotel.log" >&2 &
  AGENT_PID=$!

  for _ in $(seq 200); do
    curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$ROTEL_HTTP/" && return 0
    sleep 0.05
  done
  fail "rotel did not start"; exit 1
}

# record JSON: one result line, with the 1-minute load average at its end (other work on the
# machine shows up here: a benchmark on a busy box is not a benchmark).
record() { jq -c --argjson l "$(cut -d' ' -f1 /proc/loadavg)" '. + {load1: $l}' <<<"$1" >>"$RESULTS"; }

# ---- scenario: fixed rate -------------------------------------------------------------------
# rate_run NAME AGENT(otlp-spool|rotel) SIGNAL RATE PROTOCOL REP
rate_run() {
  local name=$1 who=$2 signal=$3 rate=$4 proto=$5 rep=$6 port
  start_sink
  if [ "$who" = rotel ]; then
    start_rotel
    port=$([ "$proto" = grpc ] && echo "$ROTEL_GRPC" || echo "$ROTEL_HTTP")
  else
    rm -rf "$WORK/spool"; write_config "$WORK/agent.toml" yes "$WORK/spool" 1GiB
    start_agent "$WORK/agent.toml"
    port=$([ "$proto" = grpc ] && echo "$GRPC_PORT" || echo "$HTTP_PORT")
  fi
  sleep 1
  start_sampler "$AGENT_PID" "$WORK/samples" 0.5
  local t0 c0 lg acked delivered c1 t1
  t0=$(date +%s%N); c0=$(ticks "$AGENT_PID")
  lg=$("$BIN/loadgen" --protocol "$proto" --addr "127.0.0.1:$port" --signal "$signal" --rate "$rate" \
        --batch 100 --seconds "$SECONDS_RATE" --concurrency 16 --threads 1 --json 2>>"$WORK/loadgen.log")
  acked=$(jq -r .items_ok <<<"$lg")
  wait_delivered 60 "$signal=$acked" || true; delivered=$(jq -r ".$signal" <<<"$SINK_COUNT")
  c1=$(ticks "$AGENT_PID"); t1=$(date +%s%N)
  local hwm; hwm=$(mem_kb "$AGENT_PID" VmHWM)
  stop_sampler; stop_agent; stop_sink
  if ! { [ "$delivered" = "$acked" ] && [ "$(jq -r .errors <<<"$lg")" = 0 ] && [ "$acked" -gt 0 ]; }; then
    fail "$name/$who rep $rep: acked $acked, at sink $delivered, errors $(jq -r .errors <<<"$lg")"
  fi
  record "$(jq -nc --arg s "$name" --arg who "$who" --argjson rep "$rep" --argjson lg "$lg" \
    --argjson cpu_s "$(div "$((c1 - c0))" "$HZ")" --argjson load_s "$SECONDS_RATE" \
    --argjson window_s "$(( (t1 - t0) / 1000000 ))e-3" --argjson rss "$(peak_rss_kb "$WORK/samples")" \
    --argjson hwm "$hwm" --argjson delivered "$delivered" \
    '{scenario: $s, agent: $who, rep: $rep, cpu_s: $cpu_s, cpu_pct: (100 * $cpu_s / $load_s),
      window_s: $window_s, rss_peak_mb: ($rss / 1024), hwm_mb: ($hwm / 1024),
      acked: $lg.items_ok, delivered: $delivered, errors: $lg.errors,
      items_per_s: $lg.items_per_s, p50_ms: $lg.ack_ms.p50, p99_ms: $lg.ack_ms.p99,
      max_ms: $lg.ack_ms.max, request_bytes: $lg.request_otlp_bytes_mean}')"
  log "$name/$who rep $rep: $(tail -1 "$RESULTS")"
}

# ---- scenario: maximum ingest ----------------------------------------------------------------
# ingest_run AGENT(otlp-spool|rotel) REP: 100-span requests on 8 connections, as fast as acks
# allow, forwarding to the sink at the same time; the agent durable, rotel in memory (issue 15's
# reference: both measured in the same run).
INGEST_BATCH=100 INGEST_CONNECTIONS=8
ingest_run() {
  local who=$1 rep=$2 port=$HTTP_PORT lg acked delivered c0 c1
  start_sink
  if [ "$who" = rotel ]; then
    start_rotel; port=$ROTEL_HTTP
  else
    rm -rf "$WORK/spool"; write_config "$WORK/agent.toml" yes "$WORK/spool" 4GiB
    start_agent "$WORK/agent.toml"
  fi
  sleep 1
  start_sampler "$AGENT_PID" "$WORK/samples" 0.5
  c0=$(ticks "$AGENT_PID")
  lg=$("$BIN/loadgen" --addr "127.0.0.1:$port" --signal traces --batch "$INGEST_BATCH" \
        --concurrency "$INGEST_CONNECTIONS" --seconds "$SECONDS_MAX" --threads 2 --json 2>>"$WORK/loadgen.log")
  c1=$(ticks "$AGENT_PID")
  acked=$(jq -r .items_ok <<<"$lg")
  wait_delivered 120 "traces=$acked" || true; delivered=$(jq -r .traces <<<"$SINK_COUNT")
  local hwm; hwm=$(mem_kb "$AGENT_PID" VmHWM)
  stop_sampler; stop_agent; stop_sink
  if ! { [ "$delivered" = "$acked" ] && [ "$acked" -gt 0 ]; }; then fail "ingest/$who rep $rep: acked $acked, at sink $delivered"; fi
  record "$(jq -nc --arg who "$who" --argjson rep "$rep" --argjson lg "$lg" --argjson delivered "$delivered" \
    --argjson cpu_s "$(div "$((c1 - c0))" "$HZ")" --argjson rss "$(peak_rss_kb "$WORK/samples")" \
    --argjson hwm "$hwm" --argjson batch "$INGEST_BATCH" --argjson conns "$INGEST_CONNECTIONS" \
    '{scenario: "ingest-max", agent: $who, rep: $rep, batch: $batch, connections: $conns,
      items_per_s: $lg.items_per_s,
      requests_per_s: $lg.requests_per_s, p50_ms: $lg.ack_ms.p50, p99_ms: $lg.ack_ms.p99,
      max_ms: $lg.ack_ms.max, cpu_pct: (100 * $cpu_s / $lg.seconds), rss_peak_mb: ($rss / 1024),
      hwm_mb: ($hwm / 1024), acked: $lg.items_ok, delivered: $delivered, errors: $lg.errors,
      request_bytes: $lg.request_otlp_bytes_mean}')"
  log "ingest/$who rep $rep: $(tail -1 "$RESULTS")"
}

# ---- scenario: backlog (issue 14: fill, hold, restart, drain, disk after, idle after) ---------
# Each phase's RSS peak is the larger of the highest VmRSS sampled every 0.1 s in that phase and
# VmHWM at its end, VmHWM having been reset at its start (reset_hwm): VmHWM is the kernel's exact
# peak, so a spike between samples still counts, and a restart that takes 0.2 s has no samples at
# all. The first phase of each process (fill, restart) needs no reset: VmHWM starts at exec.
SAMPLE_EVERY=0.1
# phase_begin PID NAME FIRST: the sampler labels its rows NAME from now on; FIRST=1 for a process's
# first phase. Sets PHASE_HWM_EXACT=1 when VmHWM at the phase's end will be this phase's peak.
phase_begin() {
  set_phase "$2"
  PHASE_HWM_EXACT=$3
  if [ "$3" != 1 ] && reset_hwm "$1"; then PHASE_HWM_EXACT=1; fi
  [ "$PHASE_HWM_EXACT" = 1 ] || HWM_EXACT=false
}
# phase_peak_kb PID CSV NAME: the phase's RSS peak in kB (see above).
phase_peak_kb() {
  local sampled hwm=0; sampled=$(peak_rss_kb "$2" "$3")
  [ "$PHASE_HWM_EXACT" = 1 ] && hwm=$(mem_kb "$1" VmHWM)
  echo $(( hwm > sampled ? hwm : sampled ))
}
now_ms() { local t=$EPOCHREALTIME; echo $(( ${t%[.,]*} * 1000 + 10#${t#*[.,]} / 1000 )); }

# backlog_run REP SIZE FULL: fill SIZE bytes of OTLP with no destination (held), hold it, stop,
# restart with the sink as destination and time /healthz. FULL=1 goes on: drain, let the acks
# settle, measure the disk, leave the agent idle for --drain-idle-seconds (context switches of all
# its threads, RSS), stop, measure the disk again. FULL=0 (the --ready-sizes) stops once ready:
# restart time is what is wanted at those sizes, and a drain would double their cost.
backlog_run() {
  local rep=$1 size=$2 full=$3 lg acked status logical sled_disk t_stop stop_ms label
  label=$([ "$full" = 1 ] && echo backlog || echo backlog-ready)
  local csv1="$WORK/$label-$size-$rep-agent1.csv" csv2="$WORK/$label-$size-$rep-agent2.csv"
  HWM_EXACT=true
  rm -rf "$WORK/spool"
  # Fill with no destination (held), a cap well above the backlog so nothing is evicted.
  write_config "$WORK/hold.toml" no "$WORK/spool" "$(( size * 2 ))"
  start_agent "$WORK/hold.toml"
  phase_begin "$AGENT_PID" fill 1   # before the sampler, so its first row is labelled too
  start_sampler "$AGENT_PID" "$csv1" "$SAMPLE_EVERY"
  local fill0; fill0=$(now_ms)
  lg=$("$BIN/loadgen" --addr "127.0.0.1:$HTTP_PORT" --signal traces --batch 100 --concurrency 16 \
        --seconds 3600 --max-bytes "$size" --threads 2 --json 2>>"$WORK/loadgen.log")
  local fill_s; fill_s=$(div "$(( $(now_ms) - fill0 ))" 1000)
  acked=$(jq -r .items_ok <<<"$lg")
  local rss_fill; rss_fill=$(phase_peak_kb "$AGENT_PID" "$csv1" fill)

  # Hold: the agent keeps the backlog, no traffic. Disk at peak = the larger of the sizes
  # measured at the start and at the end of the hold (a store may still be writing after the acks).
  phase_begin "$AGENT_PID" hold 0
  status=$(curl -sf "http://127.0.0.1:$HTTP_PORT/status")
  logical=$(jq -r .spool.bytes <<<"$status"); sled_disk=$(jq -r '.spool.disk_bytes // 0' <<<"$status")
  local app0 alloc0 disk_app disk_alloc
  app0=$(du_bytes "$WORK/spool"); alloc0=$(du_alloc "$WORK/spool")
  sleep "$HOLD"
  disk_app=$(du_bytes "$WORK/spool"); disk_alloc=$(du_alloc "$WORK/spool")
  disk_app=$(( disk_app > app0 ? disk_app : app0 )) disk_alloc=$(( disk_alloc > alloc0 ? disk_alloc : alloc0 ))
  local rss_hold; rss_hold=$(phase_peak_kb "$AGENT_PID" "$csv1" hold)
  stop_sampler
  t_stop=$(now_ms); stop_agent; stop_ms=$(( $(now_ms) - t_stop ))
  local after_stop_alloc; after_stop_alloc=$(du_alloc "$WORK/spool")

  # Restart with the sink as destination: spawn → /healthz 200 (start_agent), and the restart's
  # RSS peak = VmHWM at that moment (the process's first phase). The drain starts by itself, so
  # VmHWM is read at once, before it adds much.
  start_sink
  write_config "$WORK/drain.toml" yes "$WORK/spool" "$(( size * 2 ))"
  start_agent "$WORK/drain.toml"
  local rss_restart; rss_restart=$(mem_kb "$AGENT_PID" VmHWM)
  local ready_ms; ready_ms=$(div "$READY_US" 1000)
  local ready_at_ms=$(( (AGENT_T0_US + READY_US) / 1000 ))
  local common
  common=$(jq -nc --argjson rep "$rep" --argjson size "$size" --argjson lg "$lg" --argjson logical "$logical" \
    --argjson sled_disk "$sled_disk" --argjson disk_app "$disk_app" --argjson disk_alloc "$disk_alloc" \
    --argjson after_stop_alloc "$after_stop_alloc" --argjson stop_ms "$stop_ms" --argjson ready_ms "$ready_ms" \
    --argjson fill_s "$fill_s" --argjson hold_s "$HOLD" --argjson rss_fill "$rss_fill" --argjson rss_hold "$rss_hold" \
    --argjson rss_restart "$rss_restart" \
    '{agent: "otlp-spool", rep: $rep, size_bytes: $size, acked: $lg.items_ok,
      acked_mb: ($lg.acked_otlp_bytes / 1048576), fill_s: $fill_s, fill_items_per_s: ($lg.items_ok / $fill_s),
      fill_mb_s: ($lg.acked_otlp_bytes / 1e6 / $fill_s), logical_mb: ($logical / 1048576),
      sled_disk_mb: ($sled_disk / 1048576), disk_app_mb: ($disk_app / 1048576),
      disk_alloc_mb: ($disk_alloc / 1048576), disk_ratio: ($disk_alloc / $logical),
      disk_app_ratio: ($disk_app / $lg.acked_otlp_bytes), disk_alloc_ratio: ($disk_alloc / $lg.acked_otlp_bytes),
      hold_s: $hold_s, after_stop_alloc_mb: ($after_stop_alloc / 1048576), stop_ms: $stop_ms,
      ready_ms: $ready_ms, rss_fill_peak_mb: ($rss_fill / 1024), rss_hold_peak_mb: ($rss_hold / 1024),
      rss_restart_peak_mb: ($rss_restart / 1024)}')
  if [ "$full" != 1 ]; then
    stop_agent; stop_sink; rm -rf "$WORK/spool"
    [ "$acked" -gt 0 ] || fail "$label $size: nothing was acknowledged in the fill"
    record "$(jq -c --argjson exact "$HWM_EXACT" '{scenario: "backlog-ready"} + . + {hwm_exact: $exact}' <<<"$common")"
    log "$label $size: $(tail -1 "$RESULTS")"
    return
  fi

  # Drain. Its time runs from ready to the sink's last accepted export (the sink's own clock, ms),
  # not to when a poll noticed.
  phase_begin "$AGENT_PID" drain 0
  start_sampler "$AGENT_PID" "$csv2" "$SAMPLE_EVERY"
  local delivered; wait_delivered 1800 "traces=$acked" || true; delivered=$(jq -r .traces <<<"$SINK_COUNT")
  local sink; sink=$(sink_count)
  local drain_s; drain_s=$(jq -r --argjson r "$ready_at_ms" 'if .last_ms > 0 then (.last_ms - $r) / 1000 else 0 end' <<<"$sink")
  # Settle: disk after the drain is measured once the acks are applied (no records left) and the
  # directory's allocated size stopped changing (two equal readings 1 s apart; at most 60 s).
  local settle0; settle0=$(now_ms)
  local prev=-1 cur recs settled=false
  while [ $(( $(now_ms) - settle0 )) -lt 60000 ]; do
    recs=$(curl -sf "http://127.0.0.1:$HTTP_PORT/status" | jq -r .spool.records) || recs=""
    cur=$(du_alloc "$WORK/spool")
    if [ "$recs" = 0 ] && [ "$cur" = "$prev" ]; then settled=true; break; fi
    prev=$cur; sleep 1
  done
  local settle_s; settle_s=$(div "$(( $(now_ms) - settle0 ))" 1000)
  local after; after=$(curl -sf "http://127.0.0.1:$HTTP_PORT/status")
  local after_app after_alloc; after_app=$(du_bytes "$WORK/spool"); after_alloc=$(du_alloc "$WORK/spool")
  local rss_drain; rss_drain=$(phase_peak_kb "$AGENT_PID" "$csv2" drain)

  # Idle on the drained (empty) spool: context switches of all threads (issue 14: 0 over 60 s).
  # Nothing here talks to the agent during the window (the sampler only reads /proc).
  phase_begin "$AGENT_PID" idle 0
  local c0 c1; c0=$(ticks "$AGENT_PID")
  ctxt_snapshot "$AGENT_PID" "$WORK/ctxt-before"
  sleep "$DRAIN_IDLE"
  ctxt_snapshot "$AGENT_PID" "$WORK/ctxt-after"
  c1=$(ticks "$AGENT_PID")
  local ctxt; ctxt=$(ctxt_delta "$WORK/ctxt-before" "$WORK/ctxt-after")
  local rss_idle rss_idle_end; rss_idle=$(phase_peak_kb "$AGENT_PID" "$csv2" idle); rss_idle_end=$(mem_kb "$AGENT_PID" VmRSS)
  stop_sampler; stop_agent
  local stopped_alloc; stopped_alloc=$(du_alloc "$WORK/spool")
  stop_sink; rm -rf "$WORK/spool"
  [ "$delivered" = "$acked" ] || fail "backlog rep $rep: acked $acked, at sink $delivered"
  record "$(jq -c --argjson delivered "$delivered" --argjson sink "$sink" --argjson drain_s "$drain_s" \
    --argjson settle_s "$settle_s" --argjson settled "$settled" --argjson after "$after" \
    --argjson after_app "$after_app" --argjson after_alloc "$after_alloc" --argjson stopped_alloc "$stopped_alloc" \
    --argjson rss_drain "$rss_drain" --argjson rss_idle "$rss_idle" --argjson rss_idle_end "$rss_idle_end" \
    --argjson idle_s "$DRAIN_IDLE" --argjson ctxt "$ctxt" --argjson cpu_ms "$(( (c1 - c0) * 1000 / HZ ))" \
    --argjson exact "$HWM_EXACT" \
    '{scenario: "backlog"} + . + {delivered: $delivered, drain_s: $drain_s,
      drain_mb_s: (if $drain_s > 0 then $sink.otlp_bytes / 1e6 / $drain_s else null end),
      drain_wire_mb_s: (if $drain_s > 0 then $sink.wire_bytes / 1e6 / $drain_s else null end),
      sink_requests: $sink.requests, rss_drain_peak_mb: ($rss_drain / 1024), drain_rss_peak_mb: ($rss_drain / 1024),
      settle_s: $settle_s, settled: $settled, after_records: $after.spool.records,
      after_logical_mb: ($after.spool.bytes / 1048576), after_app_mb: ($after_app / 1048576),
      after_alloc_mb: ($after_alloc / 1048576), stopped_alloc_mb: ($stopped_alloc / 1048576),
      idle_s: $idle_s, idle_ctxt: $ctxt.total, idle_ctxt_by_name: $ctxt.by_name,
      idle_threads: $ctxt.threads_after, idle_cpu_ms: $cpu_ms, rss_idle_peak_mb: ($rss_idle / 1024),
      rss_idle_end_mb: ($rss_idle_end / 1024), hwm_exact: $exact}' <<<"$common")"
  log "backlog rep $rep: $(tail -1 "$RESULTS")"
}

# ---- scenario: idle --------------------------------------------------------------------------
# idle_run REP VARIANT: "fresh" = a new spool, never written; "restarted" = the agent took a
# second of traffic, delivered it, and was restarted on that spool (what a laptop sees after
# every login), then left alone.
idle_run() {
  local rep=$1 variant=$2 c0 c1
  start_sink
  rm -rf "$WORK/spool"; write_config "$WORK/agent.toml" yes "$WORK/spool" 1GiB
  start_agent "$WORK/agent.toml"
  if [ "$variant" = restarted ]; then
    local lg; lg=$("$BIN/loadgen" --addr "127.0.0.1:$HTTP_PORT" --signal traces --rate 1000 --batch 100 \
          --seconds 1 --threads 1 --json 2>>"$WORK/loadgen.log")
    wait_delivered 30 "traces=$(jq -r .items_ok <<<"$lg")" || true
    stop_agent; start_agent "$WORK/agent.toml"
  fi
  sleep 2
  c0=$(ticks "$AGENT_PID"); ctxt_snapshot "$AGENT_PID" "$WORK/ctxt-before"
  sleep "$IDLE"
  c1=$(ticks "$AGENT_PID"); ctxt_snapshot "$AGENT_PID" "$WORK/ctxt-after"
  local rss hwm; rss=$(mem_kb "$AGENT_PID" VmRSS); hwm=$(mem_kb "$AGENT_PID" VmHWM)
  stop_agent; stop_sink
  record "$(jq -nc --argjson rep "$rep" --argjson ms "$(( (c1 - c0) * 1000 / HZ ))" --arg v "$variant" \
    --argjson s "$IDLE" --argjson rss "$rss" --argjson hwm "$hwm" \
    --argjson ctxt "$(ctxt_delta "$WORK/ctxt-before" "$WORK/ctxt-after")" \
    '{scenario: ("idle-" + $v), agent: "otlp-spool", rep: $rep, idle_s: $s, cpu_ms: $ms,
      cpu_ms_per_5min: ($ms * 300 / $s), rss_mb: ($rss / 1024), hwm_mb: ($hwm / 1024),
      ctxt: $ctxt.total, ctxt_by_name: $ctxt.by_name, threads: $ctxt.threads_after}')"
  log "idle ($variant) rep $rep: $(tail -1 "$RESULTS")"
  [ "$SMOKE" = 1 ] || [ "$(( (c1 - c0) * 1000 * 300 / HZ / IDLE ))" -le 50 ] \
    || log "note: idle ($variant) is over the 50 ms / 5 min goal"
}

# ---- run -------------------------------------------------------------------------------------
ROTEL=""
if has rotel; then
  ROTEL=$(ls "$ROOT"/.cache/rotel/whl/rotel/rotel-agent 2>/dev/null || true)
  if [ -z "$ROTEL" ]; then
    log "rotel: fetching the wheel from PyPI into .cache/rotel"
    mkdir -p "$ROOT/.cache/rotel"
    if python3 -m pip download --quiet --no-deps -d "$ROOT/.cache/rotel/dl" rotel \
       && python3 -m zipfile -e "$ROOT"/.cache/rotel/dl/rotel-*.whl "$ROOT/.cache/rotel/whl"; then
      ROTEL="$ROOT/.cache/rotel/whl/rotel/rotel-agent"; chmod +x "$ROTEL"
    else
      log "rotel: not available; skipping the reference rows"
    fi
  fi
fi

START=$(date -u +%FT%TZ)
for rep in $(seq "$REPEAT"); do
  if has metrics; then
    if [ "$SMOKE" = 1 ]; then rates="1000"; else rates="1000 5000 10000"; fi
    for r in $rates; do rate_run "metrics-$((r / 1000))k" otlp-spool metrics "$r" http "$rep"; done
  fi
  has traces && rate_run traces-10k otlp-spool traces "$([ "$SMOKE" = 1 ] && echo 2000 || echo 10000)" http "$rep"
  has traces && [ "$SMOKE" = 1 ] && rate_run logs-1k otlp-spool logs 1000 http "$rep"
  has grpc && rate_run traces-10k-grpc otlp-spool traces "$([ "$SMOKE" = 1 ] && echo 2000 || echo 10000)" grpc "$rep"
  if has rotel && [ -n "$ROTEL" ]; then
    rate_run metrics-10k rotel metrics 10000 http "$rep"
    rate_run traces-10k rotel traces 10000 http "$rep"
  fi
  if has ingest; then
    ingest_run otlp-spool "$rep"
    if has rotel && [ -n "$ROTEL" ]; then ingest_run rotel "$rep"; fi
  fi
done
if has backlog; then
  for rep in $(seq "$BACKLOG_REPEAT"); do backlog_run "$rep" "$BACKLOG" 1; done
  for size in $READY_BYTES; do
    [ "$size" = "$BACKLOG" ] || backlog_run 1 "$size" 0   # --backlog's ready time is in its own runs
  done
fi
if has idle; then idle_run 1 fresh; idle_run 1 restarted; fi   # one run each: a sum over a long window

# ---- report ----------------------------------------------------------------------------------
MACHINE=$(printf '%s nproc, %s, %s MiB RAM, %s (rotational=%s), kernel %s, %s' \
  "$(nproc)" "$(lscpu | sed -n 's/^Model name: *//p' | head -1)" \
  "$(free -m | awk '/^Mem:/ { print $2 }')" \
  "$(findmnt -n -o FSTYPE,SOURCE --target "$WORK" | tr -s ' ' ' ')" \
  "$(lsblk -dn -o ROTA "$(findmnt -n -o SOURCE --target "$WORK")" 2>/dev/null | tr -d ' ' || echo '?')" \
  "$(uname -r)" "$(rustc --version)")
ARGS="repeat=$REPEAT seconds=$SECONDS_RATE max-seconds=$SECONDS_MAX idle-seconds=$IDLE backlog=$BACKLOG backlog-repeat=$BACKLOG_REPEAT ready-sizes=$READY_SIZES hold-seconds=$HOLD drain-idle-seconds=$DRAIN_IDLE only=$ONLY"
python3 "$ROOT/bench/report.py" "$RESULTS" --machine "$MACHINE" --commit "$COMMIT" --build "$BUILD" \
  --started "$START" --args "$ARGS" --rotel "$([ -n "$ROTEL" ] && "$ROTEL" --version 2>/dev/null || echo none)" \
  >"$WORK/report.md"
if [ "$REPORT" = 1 ]; then
  python3 "$ROOT/bench/report.py" --splice "$ROOT/bench/RESULTS.md" "$WORK/report.md"
  log "wrote bench/RESULTS.md (raw results: $RESULTS)"
else
  cat "$WORK/report.md"
fi
if [ "$FAILED" != 0 ]; then log "some checks FAILED (see above)"; exit 1; fi
log "all checks passed: every acknowledged item reached the sink"
