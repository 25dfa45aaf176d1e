#!/usr/bin/env bash
# The whole test suite, from a clean checkout; `.ci/run` calls exactly this. It says what it
# installs as it goes, and ends with how long each step took.
#
# Installs: the real OpenTelemetry Python and JS SDK clients and the Debian packages prometheus,
# libfaketime and fuse3 (scripts/install-test-deps.sh), cargo-audit and cargo-deb
# (scripts/cargo-tool.sh); the clients and the cargo tools once per machine, in
# ~/.cache/otlp-spool/tools. The first run on a fresh machine is the long one, most of it
# compiling (README.md, "What the first run costs", has the figures).
#
# One release build (`cargo build --release`: the agent, and the examples loadgen and sink) is
# shared by the benchmark smoke, the soak and the packaging test.
#
# Tests that need a tool which is missing print a loud SKIP line when CI is unset, and fail
# when CI is set.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export AWS_EC2_METADATA_DISABLED=true   # nothing may probe the instance metadata service

# step NAME: starts a step (and ends the one before); the EXIT trap prints every step's time.
STEP_NAMES=() STEP_SECONDS=() STEP="" STEP_T0=$SECONDS START=$SECONDS
end_step() {
  [ -n "$STEP" ] || return 0
  STEP_NAMES+=("$STEP") STEP_SECONDS+=($((SECONDS - STEP_T0)))
  STEP=""
}
step() { end_step; STEP=$1 STEP_T0=$SECONDS; printf '\n==> %s\n' "$1"; }
summary() {
  local rc=$? failed=$STEP i
  end_step
  printf '\n==> step times (s)\n'
  for i in "${!STEP_NAMES[@]}"; do
    printf '%6d  %s%s\n' "${STEP_SECONDS[$i]}" "${STEP_NAMES[$i]}" \
      "$([ "$rc" != 0 ] && [ "${STEP_NAMES[$i]}" = "$failed" ] && echo '   <- FAILED')"
  done
  printf '%6d  total\n' $((SECONDS - START))
}
trap summary EXIT

step "test dependencies (scripts/install-test-deps.sh)"
scripts/install-test-deps.sh >/dev/null   # its log (stderr) says what it installs or finds
# shellcheck disable=SC1091
source .cache/test-env.sh

step "cargo audit"
CARGO_AUDIT="$(scripts/cargo-tool.sh cargo-audit)"
if [ -d ../shared/advisory-db ]; then
  echo "advisory database: ../shared/advisory-db (beside the checkout; not fetched)"
  "$CARGO_AUDIT" audit --db ../shared/advisory-db --no-fetch --stale
else
  echo "advisory database: cargo-audit's own (fetched from the RustSec repository)"
  "$CARGO_AUDIT" audit
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --all-targets --locked -- -D warnings

step "cargo test"
cargo test --all-targets --locked

step "self-contained (tests/self_contained.sh: a clone of HEAD alone runs the fixture tests)"
tests/self_contained.sh

step "release build (shared by the bench smoke, the soak and the packaging test)"
# Two invocations, not one: the agent alone is built with its own dependencies' features, as
# `cargo install` and scripts/release.sh build it (building it together with the examples would
# add the dev-dependencies' features, and the packaging test would build it again).
cargo build --release --locked --bin otlp-spool
cargo build --release --locked --example loadgen --example sink
RELEASE_DIR="$(cargo metadata --format-version 1 --no-deps --locked | jq -r .target_directory)/release"

step "bench smoke (bench/run.sh --smoke: the benchmark harness end to end, acked items == items at the sink)"
bench/run.sh --smoke --bin "$RELEASE_DIR"

step "soak, short (bench/soak.sh 60s: mixed HTTP/gRPC load through upstream outages; fails on a lost item, RSS or descriptor growth)"
bench/soak.sh 60s --bin "$RELEASE_DIR"

step "packaging (tests/packaging.sh: release artifacts, .deb build/lint/install/purge, Homebrew formula, launchd plist)"
tests/packaging.sh
