#!/usr/bin/env bash
# Fuzzes otlp-spool's parsers of untrusted input with cargo-fuzz: every target in
# fuzz/fuzz_targets/ (bodies in fuzz/src/lib.rs) for SECONDS_PER_TARGET (default 300), one at a
# time, starting from the committed corpus fuzz/corpus/<target>/ and the reproducers in
# fuzz/regressions/<target>/. The committed corpus is left as it is: new inputs go to
# fuzz/target/corpus/<target>/ (minimize them into the corpus with `cargo fuzz cmin`).
# Fails if any target crashes, panics, hangs (10 s per input) or runs out of memory (2 GiB), and
# says where the reproducer is.
#
# Stable Rust is enough: the targets are built without a sanitizer (`--sanitizer none`; the code
# under test is safe Rust, and AddressSanitizer would need nightly or RUSTC_BOOTSTRAP=1).
# cargo-fuzz is installed into .cache/cargo-tools when missing. Builds go to fuzz/target, away
# from the main target/ directory.
# When the fuzzers cannot be set up (cargo-fuzz cannot be installed, libFuzzer cannot be
# compiled), prints one SKIP line and exits 0 — under CI=true that is a failure instead.
#
# usage: scripts/fuzz.sh [SECONDS_PER_TARGET [TARGET…]]   (default: every target)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SECS="${1:-300}"
shift || true
ONLY=("$@")
case "$SECS" in
  -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  ''|*[!0-9]*) echo "fuzz: SECONDS_PER_TARGET must be a whole number of seconds, not '$SECS'" >&2; exit 2 ;;
esac
TOOLS="$ROOT/.cache/cargo-tools"
LOGS="$ROOT/fuzz/target/logs"
export PATH="$TOOLS/bin:$PATH"
SANITIZER=(--sanitizer none)

skip() {
  if [ "${CI:-}" = true ]; then
    echo "fuzz: FAILED (CI=true, so not skipped): $*" >&2
    exit 1
  fi
  echo "fuzz: SKIP: $*"
  exit 0
}

mkdir -p "$LOGS"
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz into $TOOLS" >&2
  cargo install --locked cargo-fuzz --root "$TOOLS" >"$LOGS/install.log" 2>&1 \
    || skip "cannot install cargo-fuzz (log: $LOGS/install.log)"
fi

cd "$ROOT/fuzz"
echo "fuzz: building the targets ($(cargo fuzz --version))" >&2
if ! cargo fuzz build "${SANITIZER[@]}" >"$LOGS/build.log" 2>&1; then
  # Broken code is a failure everywhere; only a machine that cannot build libFuzzer is a skip.
  if grep -qE '^error(\[E[0-9]+\])?: |could not compile `otlp-spool' "$LOGS/build.log" \
     && ! grep -q 'libfuzzer-sys' "$LOGS/build.log"; then
    grep -E -A12 '^error' "$LOGS/build.log" | head -60 >&2
    echo "fuzz: FAILED: the fuzz targets do not compile (log: $LOGS/build.log)" >&2
    exit 1
  fi
  skip "cannot build the fuzz targets here (log: $LOGS/build.log)"
fi

failed=()
targets=("${ONLY[@]}")
[ "${#targets[@]}" -gt 0 ] || mapfile -t targets < <(cargo fuzz list)
for target in "${targets[@]}"; do
  inputs=("target/corpus/$target" "corpus/$target")
  [ -d "regressions/$target" ] && inputs+=("regressions/$target")
  mkdir -p "target/corpus/$target"
  log="$LOGS/$target.log"
  echo "fuzz: $target for ${SECS}s (log: $log)" >&2
  if cargo fuzz run "${SANITIZER[@]}" "$target" "${inputs[@]}" -- \
       -max_total_time="$SECS" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
    execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")"
    rate="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")"
    echo "fuzz: $target: ok, ${execs:-?} executions (${rate:-?}/s)"
  else
    grep -E -B2 -A20 'panicked at|ERROR: libFuzzer|SUMMARY' "$log" | head -60 >&2
    artifact="$(sed -n 's/.*Test unit written to //p' "$log" | tail -1)"
    echo "fuzz: FAILED: $target: reproducer ${artifact:+$artifact }(replay it: cd fuzz && cargo fuzz run ${SANITIZER[*]} $target <file>; once fixed, copy it into fuzz/regressions/$target/ so tests/fuzz_corpus.rs keeps replaying it)" >&2
    failed+=("$target")
  fi
done

if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzz: FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "fuzz: every target ran ${SECS}s without a failure"
