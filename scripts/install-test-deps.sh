#!/usr/bin/env bash
# Install what otlp-spool's tests need: the real OpenTelemetry SDK clients they drive
# (tests/clients/python/emit.py, tests/clients/js/emit.mjs), once per machine, and three
# Debian packages:
#
#   Python: a venv from tests/clients/python/requirements.txt (exact pins) in TOOLS/venv-<key>
#   JS:     `npm ci` of tests/clients/js's package.json + package-lock.json (exact pins) in
#           TOOLS/js-<key>; tests/clients/js/node_modules (gitignored) is a link to its
#           node_modules, where Node looks for emit.mjs's imports
#   Prometheus: the Debian package `prometheus` (apt-get, skipped when a `prometheus` is
#           already on PATH) for tests/prometheus.rs, which starts its own server on a loopback
#           port; the package's own service is disabled again.
#   libfaketime: the Debian package, for tests/clock.rs (skipped when already installed).
#   fuse3: the Debian package, for tests/power_cut.rs (a FUSE file system; fuser mounts with
#           the mount syscall as root, else through fusermount3); skipped when installed.
#
# TOOLS is ${OTLP_SPOOL_TOOLS:-${XDG_CACHE_HOME:-~/.cache}/otlp-spool/tools}, where
# scripts/cargo-tool.sh keeps the cargo tools. <key> hashes the pin files and the interpreter's
# version and path: checkouts with the same pins share one install (a new clone's first run
# skips ~25 s of pip and npm), different pins get their own. Sharing is safe: nothing writes to
# an install after it is made, installs are serialized machine-wide (flock), and one is used
# only once its stamp, written last, matches (--force reinstalls it in place: not while tests
# of another checkout run). A warm run finishes in well under a second. Writes
# .cache/test-env.sh (source it) and prints the same exports at the end.
#
# usage: scripts/install-test-deps.sh [--force] [--check] [--quiet]
#   --force  reinstall even if the stamps match
#   --check  install nothing; exit 0 if everything is installed and current, else 1
#   --quiet  print only the final exports (and errors)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="$ROOT/.cache"
TOOLS="${OTLP_SPOOL_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/otlp-spool/tools}"
PY_REQ="$ROOT/tests/clients/python/requirements.txt"
JS_DIR="$ROOT/tests/clients/js"
ENV_FILE="$CACHE/test-env.sh"

FORCE=0 CHECK=0 QUIET=0
for arg in "$@"; do
  case "$arg" in
    --force) FORCE=1 ;;
    --check) CHECK=1 ;;
    --quiet) QUIET=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "install-test-deps: unknown argument: $arg" >&2; exit 2 ;;
  esac
done

log() { [ "$QUIET" = 1 ] || echo "install-test-deps: $*" >&2; }
fail() { echo "install-test-deps: FAILED: $*" >&2; exit 1; }

sha() { sha256sum "$@" | cut -d" " -f1 | sha256sum | cut -c1-64; }   # contents only, not paths

# --- tools ------------------------------------------------------------------
PYTHON_BIN="${OTLP_SPOOL_PYTHON:-python3}"
command -v "$PYTHON_BIN" >/dev/null 2>&1 || fail "python3 not found (needed for the Python test client)"
command -v node >/dev/null 2>&1 || fail "node not found (needed for the JS test client; Node >= 20.6)"
command -v npm >/dev/null 2>&1 || fail "npm not found (needed for the JS test client)"
NODE_BIN="$(command -v node)"
node -e 'const [a,b]=process.versions.node.split(".").map(Number); process.exit(a>20||(a===20&&b>=6)?0:1)' \
  || fail "node $(node --version) is too old: the pinned @opentelemetry 2.12.0/0.223.0 packages need Node >= 20.6"
PY_ID="$("$PYTHON_BIN" -c 'import sys,os; print(sys.version.split()[0], os.path.realpath(sys.executable))')"
NODE_ID="$(node --version)"

mkdir -p "$CACHE" "$TOOLS"

# Serialize concurrent runs, machine-wide (several checkouts, or test binaries calling this at once).
if [ "$CHECK" = 0 ] && command -v flock >/dev/null 2>&1; then
  exec 9>"$TOOLS/install-test-deps.lock"
  flock 9
fi

# --- Python -----------------------------------------------------------------
PY_STAMP_WANT="$(sha "$PY_REQ") $PY_ID"
VENV="$TOOLS/venv-$(echo "$PY_STAMP_WANT" | sha256sum | cut -c1-16)"
PY_STAMP_FILE="$VENV/.otlp-spool-stamp"
py_ok() {
  [ -x "$VENV/bin/python" ] && [ -f "$PY_STAMP_FILE" ] &&
    [ "$(cat "$PY_STAMP_FILE")" = "$PY_STAMP_WANT" ]
}
py_imports() {
  "$VENV/bin/python" - <<'EOF'
import importlib, sys
mods = [
    "opentelemetry.sdk.trace", "opentelemetry.sdk.metrics", "opentelemetry.sdk._logs",
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "opentelemetry.exporter.otlp.proto.grpc.trace_exporter",
    "opentelemetry.exporter.otlp.json.http.trace_exporter",
    "opentelemetry.proto.collector.trace.v1.trace_service_pb2",
    "grpc", "botocore.auth",
]
bad = []
for m in mods:
    try:
        importlib.import_module(m)
    except Exception as e:  # noqa: BLE001
        bad.append(f"{m}: {type(e).__name__}: {e}")
if bad:
    print("\n".join(bad), file=sys.stderr)
    sys.exit(1)
EOF
}

install_python() {
  log "Python: creating venv $VENV ($PY_ID)"
  rm -rf "$VENV"
  "$PYTHON_BIN" -m venv "$VENV" || fail "python3 -m venv $VENV (is the venv module available?)"
  local plog="$CACHE/pip-install.log"
  log "Python: pip install -r tests/clients/python/requirements.txt"
  if ! "$VENV/bin/python" -m pip install --disable-pip-version-check --no-input -q \
        -r "$PY_REQ" >"$plog" 2>&1; then
    cat "$plog" >&2
    local pkgs
    pkgs="$(grep -oE '(No matching distribution found for|satisfies the requirement|Failed to build|Cannot install) [^ ]+' "$plog" \
            | awk '{print $NF}' | sort -u | tr '\n' ' ')"
    fail "pip could not install Python package(s): ${pkgs:-see pip ERROR lines above} (log: $plog)"
  fi
  py_imports || fail "Python packages installed but failed to import (see above)"
  echo "$PY_STAMP_WANT" >"$PY_STAMP_FILE"
}

# --- JS ---------------------------------------------------------------------
JS_STAMP_WANT="$(sha "$JS_DIR/package.json" "$JS_DIR/package-lock.json") $NODE_ID"
JS_ENV="$TOOLS/js-$(echo "$JS_STAMP_WANT" | sha256sum | cut -c1-16)"
JS_STAMP_FILE="$JS_ENV/node_modules/.otlp-spool-stamp"
JS_PKGS=(
  @opentelemetry/api @opentelemetry/api-logs @opentelemetry/core @opentelemetry/resources
  @opentelemetry/sdk-trace-base @opentelemetry/sdk-metrics @opentelemetry/sdk-logs
  @opentelemetry/exporter-trace-otlp-http @opentelemetry/exporter-trace-otlp-proto @opentelemetry/exporter-trace-otlp-grpc
  @opentelemetry/exporter-metrics-otlp-http @opentelemetry/exporter-metrics-otlp-proto @opentelemetry/exporter-metrics-otlp-grpc
  @opentelemetry/exporter-logs-otlp-http @opentelemetry/exporter-logs-otlp-proto @opentelemetry/exporter-logs-otlp-grpc
  @grpc/grpc-js
)
js_installed() {
  [ -f "$JS_STAMP_FILE" ] && [ "$(cat "$JS_STAMP_FILE")" = "$JS_STAMP_WANT" ]
}
js_ok() { js_installed && [ "$(readlink "$JS_DIR/node_modules")" = "$JS_ENV/node_modules" ]; }
# js_link: tests/clients/js/node_modules -> the machine's install (replacing a directory an
# older version of this script installed there).
js_link() {
  [ -L "$JS_DIR/node_modules" ] || rm -rf "$JS_DIR/node_modules"
  ln -sfn "$JS_ENV/node_modules" "$JS_DIR/node_modules"
}
js_resolve() {
  (cd "$JS_DIR" && node -e '
    const bad = [];
    for (const p of process.argv.slice(1)) { try { require.resolve(p); } catch (e) { bad.push(p); } }
    if (bad.length) { console.error("cannot resolve: " + bad.join(" ")); process.exit(1); }
  ' "${JS_PKGS[@]}")
}

install_js() {
  local nlog="$CACHE/npm-ci.log"
  log "JS: npm ci of tests/clients/js's packages into $JS_ENV ($NODE_ID)"
  rm -rf "$JS_ENV"
  mkdir -p "$JS_ENV"
  cp "$JS_DIR/package.json" "$JS_DIR/package-lock.json" "$JS_ENV/"
  # --ignore-scripts: nothing here needs an install script (protobufjs' postinstall is a no-op check).
  if ! (cd "$JS_ENV" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error) >"$nlog" 2>&1; then
    grep -v 'Unknown user config' "$nlog" >&2 || true
    local pkgs
    pkgs="$(grep -oE "(404 Not Found - GET [^ ]+|notarget No matching version found for [^ ]+|'[^']+@[^']+' is not in this registry)" "$nlog" \
            | sed -E 's#^404 Not Found - GET .*/##; s#%2[fF]#/#g; s#^notarget No matching version found for ##; s#[.]$##' \
            | sort -u | tr '\n' ' ')"
    fail "npm ci could not install JS package(s): ${pkgs:-see npm error lines above} (log: $nlog)"
  fi
  js_link
  js_resolve || fail "JS packages installed but could not be resolved from tests/clients/js (see above)"
  echo "$JS_STAMP_WANT" >"$JS_STAMP_FILE"
}

# --- Debian packages ----------------------------------------------------------
# tests/prometheus.rs runs a real Prometheus (remote write receiver); the tests start their own
# instance on a free loopback port with a temporary TSDB, so the system service the package sets
# up is stopped and disabled again where systemd runs. tests/clock.rs preloads libfaketime.
# tests/power_cut.rs mounts a FUSE file system (needs /dev/fuse, and root or fusermount3).
FAKETIME_LIB="${OTLP_SPOOL_TEST_FAKETIME:-/usr/lib/$(uname -m)-linux-gnu/faketime/libfaketime.so.1}"
prometheus_ok() { command -v prometheus >/dev/null 2>&1; }
faketime_ok() { [ -f "$FAKETIME_LIB" ]; }
fuse_ok() { command -v fusermount3 >/dev/null 2>&1; }
apt_install() { # package...
  local sudo=""
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null 2>&1 || fail "$* not installed and this is not root (no sudo): apt-get install $*"
    sudo="sudo"
  fi
  command -v apt-get >/dev/null 2>&1 || fail "$* not installed and apt-get is missing: install them by hand"
  local alog="$CACHE/apt-$1.log"
  log "apt-get install -y $*"
  if ! { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@"; } >"$alog" 2>&1; then
    cat "$alog" >&2
    fail "apt-get could not install $* (log: $alog)"
  fi
  if [ "$1" = prometheus ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    $sudo systemctl disable --now prometheus >/dev/null 2>&1 || true
  fi
}

# --- run --------------------------------------------------------------------
if [ "$CHECK" = 1 ]; then
  rc=0
  py_ok || { echo "install-test-deps: Python clients missing or stale" >&2; rc=1; }
  js_ok || { echo "install-test-deps: JS clients missing or stale" >&2; rc=1; }
  [ -n "${OTLP_SPOOL_TEST_PROMETHEUS:-}" ] || prometheus_ok || { echo "install-test-deps: prometheus missing" >&2; rc=1; }
  faketime_ok || { echo "install-test-deps: libfaketime missing ($FAKETIME_LIB)" >&2; rc=1; }
  fuse_ok || { echo "install-test-deps: fuse3 (fusermount3) missing" >&2; rc=1; }
  [ -f "$ENV_FILE" ] || { echo "install-test-deps: $ENV_FILE missing" >&2; rc=1; }
  exit $rc
fi

if [ "$FORCE" = 0 ] && py_ok; then
  log "Python: up to date ($VENV)"
else
  install_python
fi
if [ "$FORCE" = 0 ] && js_ok; then
  log "JS: up to date ($JS_DIR/node_modules -> $JS_ENV/node_modules)"
elif [ "$FORCE" = 0 ] && js_installed; then
  js_link
  log "JS: linked $JS_DIR/node_modules -> $JS_ENV/node_modules (installed by another checkout)"
else
  install_js
fi
if [ -n "${OTLP_SPOOL_TEST_PROMETHEUS:-}" ]; then
  log "Prometheus: $OTLP_SPOOL_TEST_PROMETHEUS (from OTLP_SPOOL_TEST_PROMETHEUS)"
elif prometheus_ok; then
  log "Prometheus: up to date ($(command -v prometheus))"
else
  apt_install prometheus
  prometheus_ok || fail "prometheus installed but not on PATH"
fi
PROMETHEUS_BIN="${OTLP_SPOOL_TEST_PROMETHEUS:-$(command -v prometheus)}"
if faketime_ok; then
  log "libfaketime: up to date ($FAKETIME_LIB)"
else
  apt_install libfaketime
  faketime_ok || fail "libfaketime installed but $FAKETIME_LIB is missing: set OTLP_SPOOL_TEST_FAKETIME"
fi
if fuse_ok; then
  log "fuse3: up to date ($(command -v fusermount3))"
else
  apt_install fuse3
  fuse_ok || fail "fuse3 installed but fusermount3 is not on PATH"
fi
[ -e /dev/fuse ] || log "warning: no /dev/fuse: tests/power_cut.rs will SKIP (fail under CI)"

tmp="$(mktemp "$CACHE/test-env.sh.XXXXXX")"
cat >"$tmp" <<EOF
# Generated by scripts/install-test-deps.sh; source it.
export OTLP_SPOOL_TEST_PYTHON='$VENV/bin/python'
export OTLP_SPOOL_TEST_PY_EMIT='$ROOT/tests/clients/python/emit.py'
export OTLP_SPOOL_TEST_PY_JSON=1
export OTLP_SPOOL_TEST_NODE='$NODE_BIN'
export OTLP_SPOOL_TEST_NODE_MODULES='$JS_DIR/node_modules'
export OTLP_SPOOL_TEST_JS_EMIT='$JS_DIR/emit.mjs'
export OTLP_SPOOL_TEST_PROMETHEUS='$PROMETHEUS_BIN'
export OTLP_SPOOL_TEST_FAKETIME='$FAKETIME_LIB'
EOF
chmod 644 "$tmp"
mv -f "$tmp" "$ENV_FILE"
log "wrote $ENV_FILE"
grep '^export' "$ENV_FILE"
