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
  case $profile in dev|test) dir=debug ;; release|bench) dir=release ;; *) dir=$profile ;; esac   # cargo's output dir
  log "building ($profile) in $src"
  (cd "$src" && CARGO_TARGET_DIR="$target" cargo build --quiet --profile "$profile" \
    --bin otlp-spool --example loadgen --example sink) \
    || { log "the build failed (see above); if another engineer is mid-edit, retry in a minute, or pass --bin DIR"; exit 1; }
  mkdir -p "$dest"
  cp "$target/$dir/otlp-spool" "$target/$dir/examples/loadgen" "$target/$dir/examples/sink" "$dest/"
}

# install_bins PREBUILT SRC TARGET PROFILE DEST: copies otlp-spool, loadgen and sink from the
# directory PREBUILT (--bin DIR) to DEST, or, with PREBUILT empty, builds them (build_bins).
install_bins() {
  local prebuilt=$1; shift
  if [ -n "$prebuilt" ]; then
    mkdir -p "$5"; cp "$prebuilt/otlp-spool" "$prebuilt/loadgen" "$prebuilt/sink" "$5/"
  else
    build_bins "$@"
  fi
}
# build_label PREBUILT PROFILE: what the reports call the binaries ("release build", "dev build",
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
  for i in $(seq 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
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

# start_agent CONFIG: sets AGENT_PID and READY_MS (spawn → /healthz 200).
start_agent() {
  local t0; t0=$(date +%s%N)
  OTLP_SPOOL_LOG=warn "$BIN/otlp-spool" run --config "$1" 2>>"$WORK/agent.log" &
  AGENT_PID=$!
  local until=$(( $(date +%s) + 600 ))
  until curl -sf -o /dev/null --max-time 1 "http://127.0.0.1:$HTTP_PORT/healthz"; do
    kill -0 "$AGENT_PID" 2>/dev/null || { fail "agent exited at start (see $WORK/agent.log)"; tail -3 "$WORK/agent.log" >&2; exit 1; }
    [ "$(date +%s)" -ge "$until" ] && { fail "agent did not become ready in 600 s"; exit 1; }
    sleep 0.01
  done
  READY_MS=$(( ($(date +%s%N) - t0) / 1000000 ))
}
stop_agent() { stop_pid "$AGENT_PID"; AGENT_PID=""; }

# CPU ticks (utime+stime) of PID; fields after "(comm) " start at field 3.
ticks() { local s; s=$(cat "/proc/$1/stat"); s=${s##*) }; set -- $s; echo $(( ${12} + ${13} )); }
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
# sub-second sampling).
start_sampler() {
  ( pid=$1 every=$3 spool=${4:-}
    echo "$SAMPLE_COLUMNS"
    while [ -r "/proc/$pid/status" ]; do
      s=$(cat "/proc/$pid/stat" 2>/dev/null) || break; s=${s##*) }; set -- $s; t=$(( ${12} + ${13} ))
      rss=0 hwm=0 anon=0 file=0 threads=0
      while read -r k v _; do
        case $k in VmRSS:) rss=$v ;; VmHWM:) hwm=$v ;; RssAnon:) anon=$v ;; RssFile:) file=$v ;; Threads:) threads=$v ;; esac
      done <"/proc/$pid/status"
      fds=$(ls "/proc/$pid/fd" 2>/dev/null | wc -l)
      records="" bytes="" disk=""
      if [ -n "$spool" ]; then
        st=$(curl -sf --max-time 2 "http://127.0.0.1:$HTTP_PORT/status" || true)
        [ -n "$st" ] && read -r records bytes < <(jq -r '"\(.spool.records) \(.spool.bytes)"' <<<"$st")
        disk=$(du_alloc "$spool" 2>/dev/null || true)
      fi
      phase=$(cat "$WORK/phase" 2>/dev/null || echo -)
      echo "$(( $(date +%s%N) / 1000000 )),$phase,$t,$rss,$hwm,$anon,$file,$fds,$threads,$records,$bytes,$disk"
      sleep "$every"
    done ) >"$2" 2>/dev/null &
  SAMPLER_PID=$!
}
stop_sampler() { kill "$SAMPLER_PID" 2>/dev/null || true; wait "$SAMPLER_PID" 2>/dev/null || true; SAMPLER_PID=""; }
# peak_rss_kb CSV: the highest rss_kb sampled.
peak_rss_kb() { awk -F, 'NR > 1 && $4 > m { m = $4 } END { print m + 0 }' "$1"; }
