#!/usr/bin/env bash
# Builds the artifacts of an otlp-spool release into dist/ (packaging/README.md says how a
# release is cut and published):
#
#   scripts/release.sh VERSION [--out DIR] [--allow-dirty]
#
#   otlp-spool-VERSION.tar.gz               the source: `git archive` of HEAD, prefix otlp-spool-VERSION/
#   otlp-spool-VERSION-x86_64-unknown-linux-gnu.tar.gz
#                                           the release binary (stripped), README.md,
#                                           LICENSE, config.example.toml and the man page
#   otlp-spool_VERSION-1_amd64.deb          the Debian package of the same binary (cargo-deb)
#   otlp-spool.rb                           the Homebrew formula (packaging/homebrew/otlp-spool.rb)
#                                           with `url` and `sha256` of the source tarball
#   SHA256SUMS                              `sha256sum` of the four above
#
# Refuses when VERSION is not Cargo.toml's version or the top entry of packaging/deb/changelog,
# when a tag vVERSION exists and is not HEAD, when not on Linux x86_64, and when the working tree
# has uncommitted changes (--allow-dirty builds anyway, for tests: the binaries then come from
# the working tree while the source tarball is HEAD, so such a dist/ is not a release).
#
# Same commit, same toolchain: same bytes. Every archive takes HEAD's commit time as its files'
# time, sorted names and root ownership; the binary depends on the Rust toolchain that builds it
# (rust-version in Cargo.toml is the minimum).
#
# --out DIR     write there instead of dist/ (emptied first)
# env: RELEASE_URL  where the source tarball will be downloadable, without the file name
#                   (default https://github.com/otlp-spool/otlp-spool/releases/download/vVERSION)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$PWD"

usage() { sed -n '5,6p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
fail() { echo "release: FAILED: $*" >&2; exit 1; }
say() { echo "release: $*" >&2; }

VERSION="" OUT="$ROOT/dist" ALLOW_DIRTY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT=$2; shift ;;
    --allow-dirty) ALLOW_DIRTY=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) echo "release: unknown option $1" >&2; usage ;;
    *) [ -z "$VERSION" ] || usage; VERSION=$1 ;;
  esac
  shift
done
[ -n "$VERSION" ] || usage

# ---- what is being released -----------------------------------------------------------------
CARGO_VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)"
[ "$VERSION" = "$CARGO_VERSION" ] \
  || fail "VERSION $VERSION is not Cargo.toml's version ($CARGO_VERSION): set version = \"$VERSION\" in Cargo.toml (and commit) first"
CHANGELOG_VERSION="$(sed -n '1s/^otlp-spool (\([^)]*\)).*/\1/p' packaging/deb/changelog)"
[ "$CHANGELOG_VERSION" = "$VERSION-1" ] \
  || fail "packaging/deb/changelog starts with $CHANGELOG_VERSION, not $VERSION-1: add an entry for $VERSION-1 (lintian checks the .deb's version against it)"
HOST="$(rustc -vV | sed -n 's/^host: //p')"
[ "$HOST" = x86_64-unknown-linux-gnu ] || fail "the binary artifacts are built for x86_64-unknown-linux-gnu; this machine is $HOST"
COMMIT="$(git rev-parse HEAD)"
if TAGGED="$(git rev-parse -q --verify "refs/tags/v$VERSION^{commit}")"; then
  [ "$TAGGED" = "$COMMIT" ] || fail "tag v$VERSION is $TAGGED, HEAD is $COMMIT: check out the tag (git checkout v$VERSION)"
else
  say "no tag v$VERSION yet: tag this commit ($COMMIT) when you publish (packaging/README.md)"
fi
if [ -n "$(git status --porcelain --untracked-files=no)" ]; then
  [ "$ALLOW_DIRTY" = 1 ] || fail "uncommitted changes (git status): commit them, or pass --allow-dirty for a test build that is not a release"
  say "--allow-dirty: binaries from the working tree, source tarball from HEAD $COMMIT: not a release"
fi
# The files' time in every archive. Given to cargo-deb alone as SOURCE_DATE_EPOCH: the cc
# crate's build scripts (ring's) watch that variable, so cargo build would rebuild ring and
# everything above it whenever it changed.
COMMIT_TIME="$(git log -1 --format=%ct HEAD)"
RELEASE_URL="${RELEASE_URL:-https://github.com/otlp-spool/otlp-spool/releases/download/v$VERSION}"

rm -rf "$OUT"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
# tarball NAME DIR: DIR's contents as NAME.tar.gz in OUT, byte-reproducible (GNU tar, gzip -n).
tarball() {
  tar --sort=name --mtime="@$COMMIT_TIME" --owner=0 --group=0 --numeric-owner \
    -C "$(dirname "$2")" -cf - "$(basename "$2")" | gzip -n -9 >"$OUT/$1.tar.gz"
}

# ---- source ---------------------------------------------------------------------------------
SRC="otlp-spool-$VERSION"
git archive --format=tar --prefix="$SRC/" HEAD | gzip -n -9 >"$OUT/$SRC.tar.gz"
say "source: $SRC.tar.gz (git archive $COMMIT)"

# ---- binary ---------------------------------------------------------------------------------
say "cargo build --release --locked --bin otlp-spool"
cargo build --release --locked --bin otlp-spool
TARGET_DIR="$(cargo metadata --format-version 1 --no-deps --locked | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
BIN="$TARGET_DIR/release/otlp-spool"
"$BIN" --version | grep -qF "$VERSION" || fail "$BIN --version does not say $VERSION"
STAGE="$(mktemp -d)"
trap 'rm -rf "$STAGE"' EXIT
BIN_NAME="$SRC-$HOST"
mkdir "$STAGE/$BIN_NAME"
install -m 755 "$BIN" "$STAGE/$BIN_NAME/otlp-spool"
install -m 644 README.md LICENSE config.example.toml packaging/deb/otlp-spool.1 "$STAGE/$BIN_NAME/"
tarball "$BIN_NAME" "$STAGE/$BIN_NAME"
say "binary: $BIN_NAME.tar.gz ($(du -h "$BIN" | cut -f1) binary)"

# ---- Debian package -------------------------------------------------------------------------
CARGO_DEB="$(scripts/cargo-tool.sh cargo-deb)"
SOURCE_DATE_EPOCH="$COMMIT_TIME" "$CARGO_DEB" deb --locked --no-build --output "$OUT" >"$STAGE/cargo-deb.log" 2>&1 \
  || { cat "$STAGE/cargo-deb.log" >&2; fail "cargo deb --no-build (log above)"; }
DEB="otlp-spool_$VERSION-1_amd64.deb"
[ -f "$OUT/$DEB" ] || { cat "$STAGE/cargo-deb.log" >&2; fail "cargo deb wrote no $DEB in $OUT"; }
say "debian: $DEB"

# ---- Homebrew formula -----------------------------------------------------------------------
SHA="$(sha256sum "$OUT/$SRC.tar.gz" | cut -d' ' -f1)"
FORMULA=packaging/homebrew/otlp-spool.rb
[ "$(grep -cE '^  (url|sha256) "' "$FORMULA")" = 2 ] \
  || fail "$FORMULA must have exactly one '  url \"…\"' and one '  sha256 \"…\"' line (the ones filled in here)"
sed -E -e "s|^  url \"[^\"]*\"|  url \"$RELEASE_URL/$SRC.tar.gz\"|" \
  -e "s|^  sha256 \"[^\"]*\"|  sha256 \"$SHA\"|" "$FORMULA" >"$OUT/otlp-spool.rb"
say "formula: otlp-spool.rb (url $RELEASE_URL/$SRC.tar.gz, sha256 $SHA)"

(cd "$OUT" && sha256sum "$SRC.tar.gz" "$BIN_NAME.tar.gz" "$DEB" otlp-spool.rb >SHA256SUMS)
say "wrote $OUT:"
(cd "$OUT" && ls -l) >&2
