#!/usr/bin/env bash
# Maximum durable ingest of two agent binaries, run in the order A B B A to cancel the drift of
# this shared machine: traces over OTLP/HTTP protobuf, BATCH spans a request, 16 connections,
# 15 s a run, no destination, a fresh spool each run. Prints spans/s acknowledged, the median
# time to ack and how many blob files sled wrote, per run.
#
#   bench/abba.sh BASE_BINARY HEAD_BINARY [BATCH]      (BATCH: default 100, ~36 KB a request)
#
# Uses target/profiling/examples/loadgen (cargo build --profile profiling --example loadgen).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
[ $# -ge 2 ] || { sed -n '2,9p' "$0"; exit 2; }
A=$1 B=$2 BATCH=${3:-100}
LOADGEN=$ROOT/target/profiling/examples/loadgen
PORT=24921
[ -x "$LOADGEN" ] || { echo "abba: build $LOADGEN first" >&2; exit 2; }

run() {
  local bin=$1 label=$2 dir pid out
  dir=$(mktemp -d "$ROOT/.cache/abba-XXXX")
  printf '[server]\nlisten = "127.0.0.1:%s"\ngrpc_listen = ""\n[spool]\ndir = "%s/spool"\n' \
    "$PORT" "$dir" >"$dir/config.toml"
  OTLP_SPOOL_LOG=warn "$bin" run --config "$dir/config.toml" 2>"$dir/agent.log" &
  pid=$!
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break
    sleep 0.1
  done
  out=$("$LOADGEN" --addr "127.0.0.1:$PORT" --signal traces --batch "$BATCH" --concurrency 16 \
    --seconds 15 --json | tail -1)
  echo "$label blobs=$(find "$dir/spool/blobs" -type f 2>/dev/null | wc -l) $(echo "$out" |
    python3 -c 'import json,sys; d=json.load(sys.stdin); print(round(d["items_per_s"]), "spans/s, ack p50", round(d["ack_ms"]["p50"], 2), "ms")')"
  kill -TERM "$pid"
  wait "$pid" || true
  rm -rf "$dir"
}

mkdir -p "$ROOT/.cache"
run "$A" A
run "$B" B
run "$B" B
run "$A" A
