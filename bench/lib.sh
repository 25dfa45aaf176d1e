# shellcheck shell=bash
# shellcheck disable=SC2034 # FAILED, READY_MS, HZ, … are set here for the scripts that source this
# Shared by bench/run.sh and bench/soak.sh (sourced, not run): building the binaries, starting and
# stopping the agent and the sink, and sampling the agent's resources from /proc into a CSV.
#
# The caller sets ROOT, WORK (a fresh work directory), BIN (where otlp-spool, loadgen and sink
# are), HTTP_PORT, GRPC_PORT, SINK_PORT, and FAILED=0; these functions set AGENT_PID, SINK_PID,
# SAMPLER_PID, READY_MS and SINK_COUNT; the caller adds any loadgen it runs in the background to
# LOADGEN_PIDS. Everything listens on 127.0.0.1 only.

log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
fail() { log "FAIL: $*"; FAILED=1; }

# need_tools TOOL…: exits 2 unless every TOOL is on the PATH.
need_tools() {
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null || { echo "bench/$(basename "$0"): needs $tool" >&2; exit 2; }
  done
}

# cleanup: the EXIT trap (trap cleanup EXIT); kills whatever is still running that was started here.
AGENT_PID="" SINK_PID="" SAMPLER_PID="" LOADGEN_PIDS=""
cleanup() {
  local pid
  for pid in $LOADGEN_PIDS $SAMPLER_PID $AGENT_PID $SINK_PID; do kill "$pid" 2>/dev/null || true; done
}

# commit_label [REV]: the short hash of REV (default HEAD); without REV, " + uncommitted changes"
# is added when src/ or Cargo.toml differ from HEAD.
commit_label() {
  local label; label=$(git -C "$ROOT" rev-parse --short "${1:-HEAD}")
  [ -z "${1:-}" ] && ! git -C "$ROOT" diff --quiet HEAD -- src Cargo.toml && label="$label + uncommitted changes"
  echo "$label"
}

# build_bins SRC TARGET PROFILE DEST: cargo build of the agent, loadgen and sink, copied to DEST
# (a copy, so that later edits and builds in the shared tree do not change a running benchmark).
build_bins() {
  local src=$1 target=$2 profile=$3 dest=$4 dir
  case $profile in dev|test) dir=debug ;; release|bench) dir=release ;; *) dir=$profile ;; esac   # cargo's output dir (profiling: target/profiling)
  log "building ($profile) in $src"
  (cd "$src" && CARGO_TARGET_DIR="$target" cargo build --quiet --profile "$profile" \
    --bin otlp-spool --example loadgen --example sink) \
    || { log "the build failed (see above); if another engineer is mid-edit, retry in a minute, or pass --bin DIR"; exit 1; }
  mkdir -p "$dest"
  cp "$target/$dir/otlp-spool" "$target/$dir/examples/loadgen" "$target/$dir/examples/sink" "$dest/"
}

# install_bins PREBUILT SRC TARGET PROFILE DEST: copies otlp-spool, loadgen and sink from the
# directory PREBUILT (--bin DIR; loadgen and sink may be in DIR/examples, as cargo leaves them)
# to DEST, or, with PREBUILT empty, builds them (build_bins).
install_bins() {
  local prebuilt=$1 examples; shift
  if [ -n "$prebuilt" ]; then
    examples=$prebuilt; [ -x "$prebuilt/examples/loadgen" ] && examples=$prebuilt/examples
    # DEST is $4 here: PREBUILT was shifted off (this said $5, so --bin failed under set -u)
    mkdir -p "$4"; cp "$prebuilt/otlp-spool" "$examples/loadgen" "$examples/sink" "$4/"
  else
    build_bins "$@"
  fi
}
# build_label PREBUILT PROFILE: what the reports call the binaries ("profiling build", "dev build",
# or "binaries from DIR" with --bin DIR).
build_label() {
  if [ -n "$1" ]; then echo "binaries from $1"; else echo "$2 build"; fi
}

# wait_http URL SECONDS: until URL answers 2xx.
wait_http() {
  local url=$1 until=$(( $(date +%s) + $2 ))
  until curl -sf -o /dev/null --max-time 1 "$url"; do
    [ "$(date +%s)" -ge "$until" ] && return 1
    sleep 0.05
  done
}

# start_sink [SINK OPTIONS…]: e.g. start_sink --fail-every 60 --fail-for 15
start_sink() {
  "$BIN/sink" --listen "127.0.0.1:$SINK_PORT" --seconds 7200 "$@" 2>>"$WORK/sink.log" &
  SINK_PID=$!
  wait_http "http://127.0.0.1:$SINK_PORT/count" 10 || { fail "sink did not start (see $WORK/sink.log)"; exit 1; }
}
stop_pid() {   # stop_pid PID: SIGTERM, then SIGKILL after 20 s
  local pid=$1 i
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
stop_sink() { stop_pid "$SINK_PID"; SINK_PID=""; }
sink_count() { curl -sf "http://127.0.0.1:$SINK_PORT/count"; }
# wait_delivered SECONDS SIGNAL=N…: until the sink has at least N items of each SIGNAL; returns 1
# (and says so) if that takes longer than SECONDS. Leaves the sink's last /count in SINK_COUNT.
wait_delivered() {
  local until=$(( $(date +%s) + $1 )) pair ok; shift
  while :; do
    SINK_COUNT=$(sink_count || true) ok=1
    for pair in "$@"; do [ "$(jq -r ".${pair%%=*}" <<<"$SINK_COUNT")" -ge "${pair#*=}" ] || ok=0; done
    [ "$ok" = 1 ] && return 0
    [ "$(date +%s)" -ge "$until" ] && { log "not every acknowledged item arrived within the wait: sink $SINK_COUNT, want $*"; return 1; }
    sleep 0.2
  done
}

# write_config FILE DESTINATION(yes|no) SPOOL_DIR MAX_BYTES [EXTRA DESTINATION LINES]
write_config() {
  cat >"$1" <<EOF
[server]
listen = "127.0.0.1:$HTTP_PORT"
grpc_listen = "127.0.0.1:$GRPC_PORT"
[spool]
dir = "$3"
max_bytes = "$4"
EOF
  if [ "$2" = yes ]; then
    cat >>"$1" <<EOF
[[destination]]
name = "sink"
type = "otlp_http"
endpoint = "http://127.0.0.1:$SINK_PORT"
signals = ["traces", "metrics", "logs"]
compression = "gzip"
${5:-}
EOF
  fi
}

# start_agent CONFIG: sets AGENT_PID, AGENT_T0_US (wall clock at the spawn, µs since the epoch),
# READY_US (spawn → first /healthz 200, µs) and READY_MS (the same in whole ms).
# Issue 14's goal is ready ≤ 0.3 s, so the poll must be fine-grained: it speaks HTTP/1.0 through
# bash's /dev/tcp and times with $EPOCHREALTIME (no curl or date process per poll, which cost
# 5–20 ms each on a busy 2-core box), and waits 5 ms between polls. A refused connection (the
# listener not bound yet) fails at once; a bound listener that does not answer gets 1 s.
start_agent() {
  local t0=$EPOCHREALTIME until=$(( EPOCHSECONDS + 600 )) status
  OTLP_SPOOL_LOG=warn "$BIN/otlp-spool" run --config "$1" 2>>"$WORK/agent.log" &
  AGENT_PID=$!
  while :; do
    status=""
    # The braces keep the 2>/dev/null to this connection attempt (exec would make it permanent).
    if { exec {fd}<>"/dev/tcp/127.0.0.1/$HTTP_PORT"; } 2>/dev/null; then
      printf 'GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' 1>&"$fd" 2>/dev/null || true
      read -r -t 1 _ status _ <&"$fd" 2>/dev/null || true
      exec {fd}<&-
    fi
    [ "$status" = 200 ] && break
    kill -0 "$AGENT_PID" 2>/dev/null || { fail "agent exited at start (see $WORK/agent.log)"; tail -3 "$WORK/agent.log" >&2; exit 1; }
    [ "$EPOCHSECONDS" -ge "$until" ] && { fail "agent did not become ready in 600 s"; exit 1; }
    sleep 0.005
  done
  local t1=$EPOCHREALTIME
  AGENT_T0_US=$(us_of "$t0")
  READY_US=$(( $(us_of "$t1") - AGENT_T0_US )) READY_MS=$(( READY_US / 1000 ))
}
# us_of $EPOCHREALTIME: microseconds since the epoch, as an integer (EPOCHREALTIME is "s.µs").
# The separator is the locale's decimal point, hence [.,].
us_of() { echo $(( ${1%[.,]*} * 1000000 + 10#${1#*[.,]} )); }
stop_agent() { stop_pid "$AGENT_PID"; AGENT_PID=""; }

# CPU ticks (utime+stime) of PID; fields after "(comm) " start at field 3.
ticks() {
  local s; s=$(cat "/proc/$1/stat"); s=${s##*) }
  # shellcheck disable=SC2086 # split on purpose: the fields after "(comm) "
  set -- $s; echo $(( ${12} + ${13} ))
}
mem_kb() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }   # mem_kb PID VmRSS|VmHWM
HZ=$(getconf CLK_TCK)
div() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.6f", a / b }'; }   # JSON-safe float
du_bytes() { du -sb "$1" | cut -f1; }             # apparent size
du_alloc() { echo $(( $(du -sk "$1" | cut -f1) * 1024 )); }   # allocated blocks

SAMPLE_COLUMNS="t_ms,phase,cpu_ticks,rss_kb,hwm_kb,rss_anon_kb,rss_file_kb,fds,threads,spool_records,spool_bytes,spool_disk_alloc"
# start_sampler PID FILE INTERVAL_S [SPOOL_DIR]: one CSV row (SAMPLE_COLUMNS) every INTERVAL_S
# until stopped or PID exits. The phase column is the content of $WORK/phase ("-" if absent).
# With SPOOL_DIR it also asks the agent's /status for the spool's records and logical bytes and
# measures the directory's allocated size (du); without, those columns are empty (cheaper, for
# sub-second sampling). Without SPOOL_DIR a sample starts no process but `sleep` (builtins,
# $EPOCHREALTIME and a glob instead of cat, date and ls | wc), so sampling every 0.1 s costs the
# box next to nothing while the agent is being measured.
start_sampler() {
  ( pid=$1 every=$3 spool=${4:-}
    # Not set -e (inherited from the caller): one failed read must not end the sampling. It did:
    # a read of the phase file while a phase change had it truncated and not yet rewritten.
    set +e
    shopt -s nullglob   # an unreadable fd directory counts 0, not 1 (the unmatched pattern)
    echo "$SAMPLE_COLUMNS"
    while [ -r "/proc/$pid/status" ]; do
      read -r s <"/proc/$pid/stat" 2>/dev/null || break
      s=${s##*) }
      # shellcheck disable=SC2086 # split on purpose: the fields after "(comm) "
      set -- $s; t=$(( ${12} + ${13} ))
      rss=0 hwm=0 anon=0 file=0 threads=0
      while read -r k v _; do
        case $k in VmRSS:) rss=$v ;; VmHWM:) hwm=$v ;; RssAnon:) anon=$v ;; RssFile:) file=$v ;; Threads:) threads=$v ;; esac
      done <"/proc/$pid/status"
      fdl=("/proc/$pid/fd/"*); fds=${#fdl[@]}
      records="" bytes="" disk=""
      if [ -n "$spool" ]; then
        st=$(curl -sf --max-time 2 "http://127.0.0.1:$HTTP_PORT/status" || true)
        [ -n "$st" ] && read -r records bytes < <(jq -r '"\(.spool.records) \(.spool.bytes)"' <<<"$st")
        disk=$(du_alloc "$spool" 2>/dev/null || true)
      fi
      phase=-; [ -r "$WORK/phase" ] && { read -r phase <"$WORK/phase" || phase=${phase:--}; }
      now=$EPOCHREALTIME
      echo "$(( ${now%[.,]*} * 1000 + 10#${now#*[.,]} / 1000 )),$phase,$t,$rss,$hwm,$anon,$file,$fds,$threads,$records,$bytes,$disk"
      sleep "$every"
    done ) >"$2" 2>/dev/null &
  SAMPLER_PID=$!
}
# set_phase NAME: what start_sampler writes in its phase column from now on. Written beside and
# renamed into place, so that a sample never reads the file half written.
set_phase() { echo "$1" >"$WORK/phase.new"; mv -f "$WORK/phase.new" "$WORK/phase"; }
stop_sampler() { kill "$SAMPLER_PID" 2>/dev/null || true; wait "$SAMPLER_PID" 2>/dev/null || true; SAMPLER_PID=""; }
# peak_rss_kb CSV [PHASE]: the highest rss_kb sampled (in PHASE only, if given).
peak_rss_kb() { awk -F, -v p="${2:-}" 'NR > 1 && (p == "" || $2 == p) && $4 > m { m = $4 } END { print m + 0 }' "$1"; }

# reset_hwm PID: sets PID's VmHWM back to its current RSS (Linux ≥ 4.0, "echo 5 > clear_refs"; needs
# the same user), so that VmHWM read later is the exact peak since this call — a sampler can miss
# a spike shorter than its interval. Returns 1 where that is not allowed.
reset_hwm() { { echo 5 >"/proc/$1/clear_refs"; } 2>/dev/null; }

# ctxt_snapshot PID FILE: one line per thread, "TID VOLUNTARY NONVOLUNTARY COMM" (comm last: it
# may hold spaces), from /proc/PID/task/*/status; ctxt_delta BEFORE AFTER: the context switches
# between two snapshots as JSON {"total": N, "threads_before": N, "threads_after": N,
# "by_name": {COMM: N, …}} (threads grouped by name, largest first). A thread that exited between
# the snapshots is missing from the total; one created in between counts in full.
ctxt_snapshot() {
  local f k v vol non comm
  for f in /proc/"$1"/task/*/status; do
    vol=0 non=0 comm=""
    while read -r k v; do
      case $k in Name:) comm=$v ;; voluntary_ctxt_switches:) vol=$v ;; nonvoluntary_ctxt_switches:) non=$v ;; esac
    done <"$f" 2>/dev/null || continue
    f=${f%/status}; echo "${f##*/} $vol $non $comm"
  done >"$2"
}
ctxt_delta() {
  awk 'NR == FNR { b[$1] = $2 + $3; nb++; next }
       { n = $2 + $3 - ($1 in b ? b[$1] : 0); name = $4; for (i = 5; i <= NF; i++) name = name " " $i
         d[name] += n; tot += n; na++ }
       END { printf "{\"total\": %d, \"threads_before\": %d, \"threads_after\": %d, \"by_name\": {", tot, nb, na
             sep = ""; for (k in d) { gsub(/["\\]/, "_", k); printf "%s\"%s\": %d", sep, k, d[k]; sep = ", " }
             print "}}" }' "$1" "$2" | jq -c '.by_name |= (to_entries | sort_by(-.value) | from_entries)'
}

# bytes_of 1073741824 | 256MiB | 1GiB | 512KiB: a size in bytes.
bytes_of() {
  case "$1" in
    *[0-9]KiB) echo $(( ${1%KiB} << 10 )) ;; *[0-9]MiB) echo $(( ${1%MiB} << 20 )) ;;
    *[0-9]GiB) echo $(( ${1%GiB} << 30 )) ;;
    *[!0-9]*|"") echo "bench/$(basename "$0"): size '$1': want bytes or e.g. 256MiB, 1GiB" >&2; exit 2 ;;
    *) echo "$1" ;;
  esac
}
