#!/usr/bin/env bash
# Prints the path of a pinned cargo tool (cargo-audit, cargo-deb), installing it first if this
# machine does not have it yet. Used by scripts/test.sh, tests/packaging.sh and scripts/release.sh.
#
#   scripts/cargo-tool.sh NAME          e.g. "$(scripts/cargo-tool.sh cargo-deb)" --version
#
# Installed once per machine, not per checkout: into
# ${OTLP_SPOOL_TOOLS:-${XDG_CACHE_HOME:-~/.cache}/otlp-spool/tools}/NAME-VERSION-ARCH/bin/NAME
# (`cargo install --locked --version VERSION`, a few minutes each on 2 cores). That is safe to
# share between clones: the tool is a self-contained program keyed by its exact version and the
# machine's architecture; it is checked to run before it is used (a broken one is reinstalled);
# concurrent installs are serialized with flock and land by an atomic rename.
#
# The pins are here, and a new version is a deliberate change: cargo-deb decides unit paths and
# maintainer-script snippets (bump, rerun tests/packaging.sh, read the lintian output).
# What it installs goes to stderr; stdout is only the path.
set -euo pipefail

case "${1:-}" in
  cargo-audit) VERSION=0.22.2 ;;
  cargo-deb) VERSION=3.8.0 ;;
  -h|--help|"") sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
  *) echo "cargo-tool: no pin for '$1' (known: cargo-audit, cargo-deb)" >&2; exit 2 ;;
esac
NAME=$1
CACHE="${OTLP_SPOOL_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/otlp-spool/tools}"
ROOT="$CACHE/$NAME-$VERSION-$(uname -m)"
BIN="$ROOT/bin/$NAME"

works() { "$BIN" "${NAME#cargo-}" --version 2>/dev/null | grep -qF "$VERSION"; }

mkdir -p "$CACHE"
if ! works; then
  exec 9>"$CACHE/$NAME-$VERSION.lock"
  flock 9
  if ! works; then   # another run may have installed it while this one waited
    echo "cargo-tool: installing $NAME $VERSION into $ROOT (once per machine; a few minutes)" >&2
    t0=$SECONDS
    rm -rf "$ROOT.partial"
    # CARGO_TARGET_DIR unset: the tool builds in cargo's temporary directory, not the project's.
    if ! env -u CARGO_TARGET_DIR cargo install --quiet --locked --version "$VERSION" \
        --root "$ROOT.partial" "$NAME" >&2; then
      echo "cargo-tool: FAILED: cargo install --locked --version $VERSION $NAME (see above; crates.io must be reachable)" >&2
      exit 1
    fi
    rm -rf "$ROOT"
    mv "$ROOT.partial" "$ROOT"
    works || { echo "cargo-tool: FAILED: $BIN installed but '$BIN ${NAME#cargo-} --version' does not say $VERSION" >&2; exit 1; }
    echo "cargo-tool: installed $NAME $VERSION in $((SECONDS - t0))s" >&2
  fi
fi
echo "$BIN"
