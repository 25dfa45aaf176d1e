#!/usr/bin/env bash
# The repository stands on its own: a clone of HEAD, in an empty temporary directory (nothing
# beside it, so none of the files kept outside the repository; the fuzz corpus left out, see
# below), runs the tests that read captured requests there —
# `cargo test --test fixtures` and the OTLP/JSON unit tests of src/otlp/json.rs — and each must
# run at least one test and pass. It tests the committed tree: uncommitted changes are not in
# the clone. scripts/test.sh runs it after `cargo test`.
#
# Cheap: the clone builds into this checkout's target directory, so no dependency from crates.io
# is built again; only otlp-spool and the vendored sled compile, without debug info or
# incremental state (CLONE_BUILD; 13–20 s on an idle 2-core machine, about a minute when others
# compile). That different profile is also what keeps the two checkouts apart: cargo names a path
# package's artifacts by its path relative to the workspace root, the same in a clone, so with
# the same profile the clone's build would replace this checkout's test executables (which would
# then read the fixtures of a deleted clone). The script checks that the two sets are disjoint.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$PWD"
TARGET_DIR="$(cargo metadata --format-version 1 --no-deps --locked | jq -r .target_directory)"
TESTS=(--test fixtures --lib)
CLONE_BUILD=(--config 'profile.dev.package.otlp-spool.debug=false'
  --config 'profile.dev.package.sled.debug=false')

# test_executables [CARGO OPTION…]: the test executables `cargo test TESTS` runs here (building
# them if needed). Not the agent binary built beside them: cargo copies that to one fixed path
# (target/debug/otlp-spool) from whichever checkout built last, and copies it back on this
# checkout's next cargo build or test (the script ends with one).
test_executables() {
  cargo test --locked --no-run --message-format=json-render-diagnostics "$@" "${TESTS[@]}" |
    jq -r 'select(.reason == "compiler-artifact" and .executable != null and .profile.test) | .executable' | sort
}
# passed LOG: the number of tests the cargo test output in LOG says passed (0 if none ran).
passed() { sed -n 's/^test result: ok\. \([0-9]*\) passed.*/\1/p' "$1" | awk '{ n += $1 } END { print n + 0 }'; }

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
CLONE="$TMP/otlp-spool"
COMMIT="$(git rev-parse HEAD)"
git clone --quiet --no-checkout "$ROOT" "$CLONE"
# Everything but fuzz/corpus/: its 9,645 files are not read by these tests, and writing and
# deleting them took 15–30 s of this step on a busy machine.
git -C "$CLONE" sparse-checkout set --no-cone '/*' '!/fuzz/corpus/'
git -C "$CLONE" checkout --quiet --detach "$COMMIT"
echo "self-contained: clone of $COMMIT in $CLONE (a new directory: nothing beside the clone; fuzz/corpus/ not checked out)"

mine="$(test_executables)"
cd "$CLONE"
export CARGO_TARGET_DIR="$TARGET_DIR" CARGO_INCREMENTAL=0
t0=$SECONDS
theirs="$(test_executables "${CLONE_BUILD[@]}")"
echo "self-contained: built the clone's tests in $((SECONDS - t0))s"
if [ -n "$(comm -12 <(echo "$mine") <(echo "$theirs"))" ]; then
  echo "self-contained: FAILED: the clone's test executables are this checkout's (cargo named them alike):" >&2
  comm -12 <(echo "$mine") <(echo "$theirs") >&2
  exit 1
fi

rc=0 t0=$SECONDS
cargo test --locked "${CLONE_BUILD[@]}" --test fixtures >"$TMP/fixtures.log" 2>&1 || rc=1
cargo test --locked "${CLONE_BUILD[@]}" --lib otlp::json:: >"$TMP/json.log" 2>&1 || rc=1
for log in fixtures json; do
  n="$(passed "$TMP/$log.log")"
  echo "self-contained: $log: $n passed"
  [ "$n" -gt 0 ] || rc=1
done
echo "self-contained: ran them in $((SECONDS - t0))s"
if [ "$rc" != 0 ]; then
  cat "$TMP/fixtures.log" "$TMP/json.log" >&2
  echo "self-contained: FAILED: the clone alone did not pass its fixture tests (output above)" >&2
fi
cd "$ROOT"
unset CARGO_INCREMENTAL
test_executables >/dev/null   # puts this checkout's target/debug/otlp-spool back (no build)
exit "$rc"
