#!/usr/bin/env bash
# The whole test suite, from a clean checkout: installs what the tests need into .cache/
# (the real OpenTelemetry Python and JS SDKs, cargo-audit), then runs the quality gates and
# every test. `.ci/run` calls exactly this.
#
# Tests that need a tool which is missing print a loud SKIP line when CI is unset, and fail
# when CI is set.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$PWD"
export AWS_EC2_METADATA_DISABLED=true   # nothing may probe the instance metadata service

step() { printf '\n==> %s\n' "$*"; }

step "test dependencies (SDK clients into .cache/)"
scripts/install-test-deps.sh --quiet >/dev/null
# shellcheck disable=SC1091
source .cache/test-env.sh

step "cargo-audit"
AUDIT_ROOT="$ROOT/.cache/cargo-tools"
if ! [ -x "$AUDIT_ROOT/bin/cargo-audit" ]; then
  cargo install --quiet --locked --root "$AUDIT_ROOT" cargo-audit
fi
"$AUDIT_ROOT/bin/cargo-audit" audit --db ../shared/advisory-db --no-fetch --stale

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --all-targets --locked -- -D warnings

step "cargo test"
cargo test --all-targets --locked

step "bench smoke (the benchmark harness end to end: acked items == items at the sink)"
bench/run.sh --smoke

step "soak, short (bench/soak.sh 60s: mixed HTTP/gRPC load through upstream outages; fails on a lost item, RSS or descriptor growth)"
bench/soak.sh 60s

step "packaging (tests/packaging.sh: .deb build/lint/install/purge, Homebrew formula, launchd plist)"
tests/packaging.sh
