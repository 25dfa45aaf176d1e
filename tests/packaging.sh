#!/usr/bin/env bash
# Packaging tests (issues 6 and 18): the release artifacts, the Debian package, the Homebrew
# formula and the launchd plist.
#
#   release: runs scripts/release.sh VERSION into a temporary dist/ (see packaging/README.md);
#         checks SHA256SUMS, that the source tarball is `git archive` of HEAD under
#         otlp-spool-VERSION/, that the rendered formula's sha256 is `sha256sum` of that tarball
#         and its url names it, that the binary tarball's agent runs and says VERSION, and that
#         `cargo install --path . --root <tmp>` (which reuses the release build in target/, the
#         same profile and features) installs a stripped binary under 40 MiB, byte-identical to
#         the one in the binary tarball and the .deb.
#   deb:  lints the release's .deb with lintian (no errors allowed; warnings printed), installs
#         it with dpkg, checks files, modes, the conffile, the `otlp-spool` user,
#         /var/lib/otlp-spool (0700, otlp-spool), the units (`systemd-analyze verify`, and that
#         neither is enabled), `otlp-spool check` on the installed config, runs the installed
#         binary as the otlp-spool user the way the system unit would (STATE_DIRECTORY set) and
#         posts a span, reinstalls (idempotent maintainer scripts, an edited conffile kept),
#         removes, purges, and checks nothing is left.
#   brew: `ruby -c` on the template and the rendered formula, then runs the rendered formula's
#         `service` and `test` blocks against the released binary with a minimal stand-in for
#         Homebrew's Formula DSL.
#   plist: substitutes __HOME__ as the documented install step does and parses it with plistlib.
#
# Installs what it needs (apt: lintian ruby systemd dpkg-dev curl file binutils; cargo-deb once
# per machine through scripts/cargo-tool.sh). Builds nothing if scripts/test.sh's release build
# is current (release.sh's `cargo build --release` is then a no-op). The .deb part needs root
# and dpkg; it refuses to touch an otlp-spool package that was already installed. A missing tool
# or privilege prints a loud SKIP when CI is unset, and fails when CI is set.
#
# usage: tests/packaging.sh            (scripts/test.sh runs it)
# env:   OTLP_SPOOL_DEB=path.deb  test this .deb instead of the release's
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$PWD"
START=$SECONDS

PASSED=0 FAILED=0 SKIPPED=0
ok()   { PASSED=$((PASSED + 1)); printf '  ok   %s\n' "$*"; }
bad()  { FAILED=$((FAILED + 1)); printf '  FAIL %s\n' "$*" >&2; }
skip() {
  if [ -n "${CI:-}" ]; then
    bad "$* (a SKIP is a failure under CI)"
  else
    SKIPPED=$((SKIPPED + 1))
    printf '\n  ************************************************************\n' >&2
    printf '  SKIP %s\n' "$*" >&2
    printf '  ************************************************************\n\n' >&2
  fi
}
# check DESCRIPTION COMMAND...: runs COMMAND, ok if it succeeds.
check() { local what="$1"; shift; if "$@"; then ok "$what"; else bad "$what"; fi; }
# logged LOG COMMAND...: runs COMMAND with its output in LOG, shown only if it fails.
logged() {
  local log="$1"; shift
  if "$@" >"$log" 2>&1; then return 0; fi
  local rc=$?; sed 's/^/  | /' "$log" >&2; return "$rc"
}
# installed: dpkg has otlp-spool in any state but "not installed".
installed() {
  dpkg-query -W -f='${Status}\n' otlp-spool 2>/dev/null | grep -Eq ' (installed|config-files|half-installed|unpacked|half-configured|triggers-awaited|triggers-pending)$'
}
section() { printf '\n--- %s (%ss)\n' "$*" "$((SECONDS - START))"; }

TMP="$(mktemp -d)"
chmod 755 "$TMP"   # the otlp-spool user and a test user read configs and homes under it
AGENT_PID=""
WE_INSTALLED=0
NEW_USER=""
cleanup() {
  if [ -n "$NEW_USER" ]; then userdel "$NEW_USER" >/dev/null 2>&1 || true; fi
  if [ -n "$AGENT_PID" ] && kill -0 "$AGENT_PID" 2>/dev/null; then
    pkill -KILL -P "$AGENT_PID" 2>/dev/null || true   # the agent, runuser's child
    kill -KILL "$AGENT_PID" 2>/dev/null || true
  fi
  if [ "$WE_INSTALLED" = 1 ] && installed; then
    echo "packaging: cleaning up: purging the otlp-spool package this test installed" >&2
    dpkg --purge otlp-spool >/dev/null 2>&1 || true
  fi
  rm -rf "$TMP"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)"

# ---------------------------------------------------------------------------------------------
section "tools"
IS_ROOT=0; [ "$(id -u)" = 0 ] && IS_ROOT=1
HAVE_DPKG=0; command -v dpkg >/dev/null 2>&1 && command -v dpkg-deb >/dev/null 2>&1 && HAVE_DPKG=1

if [ "$IS_ROOT" = 1 ] && command -v apt-get >/dev/null 2>&1; then
  want=()
  command -v lintian >/dev/null 2>&1 || want+=(lintian)
  command -v ruby >/dev/null 2>&1 || want+=(ruby)
  command -v systemd-analyze >/dev/null 2>&1 || want+=(systemd)
  command -v dpkg-shlibdeps >/dev/null 2>&1 || want+=(dpkg-dev)
  command -v curl >/dev/null 2>&1 || want+=(curl)
  command -v adduser >/dev/null 2>&1 || want+=(adduser)
  command -v python3 >/dev/null 2>&1 || want+=(python3)
  command -v file >/dev/null 2>&1 || want+=(file)
  command -v readelf >/dev/null 2>&1 || want+=(binutils)
  if [ "${#want[@]}" -gt 0 ]; then
    echo "packaging: apt-get install ${want[*]}"
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${want[@]}"; } >"$TMP/apt.log" 2>&1; then
      tail -n 20 "$TMP/apt.log" >&2
      echo "packaging: apt-get install ${want[*]} failed (tests needing them will SKIP/fail)" >&2
    fi
  fi
fi

# ---------------------------------------------------------------------------------------------
section "release artifacts (scripts/release.sh $VERSION)"
DIST="$TMP/dist"
RELEASED=0
SRC_TGZ="$DIST/otlp-spool-$VERSION.tar.gz"
BIN_TGZ="$DIST/otlp-spool-$VERSION-x86_64-unknown-linux-gnu.tar.gz"
RELEASE_DEB="$DIST/otlp-spool_${VERSION}-1_amd64.deb"
FORMULA="$DIST/otlp-spool.rb"
if [ "$HAVE_DPKG" = 0 ] || ! command -v dpkg-shlibdeps >/dev/null 2>&1; then
  skip "dpkg, dpkg-deb or dpkg-shlibdeps not found: scripts/release.sh (cargo-deb) not run (Debian/Ubuntu only; apt-get install dpkg-dev)"
elif [ "$(uname -m)" != x86_64 ]; then
  skip "not x86_64: scripts/release.sh builds the x86_64 Linux artifacts"
else
  t0=$SECONDS
  # --allow-dirty: a developer's run may have uncommitted changes (then the binaries are built
  # from them while the source tarball is HEAD); CI's clone has none.
  if scripts/release.sh "$VERSION" --out "$DIST" --allow-dirty >"$TMP/release.log" 2>&1; then
    RELEASED=1
    ok "scripts/release.sh $VERSION in $((SECONDS - t0))s"
    sed 's/^/  | /' "$TMP/release.log"
  else
    sed 's/^/  | /' "$TMP/release.log" >&2
    bad "scripts/release.sh $VERSION"
  fi
fi

if [ "$RELEASED" = 1 ]; then
  for f in "$SRC_TGZ" "$BIN_TGZ" "$RELEASE_DEB" "$FORMULA" "$DIST/SHA256SUMS"; do
    check "dist has $(basename "$f")" test -s "$f"
  done
  check "SHA256SUMS lists the four artifacts and matches them" \
    bash -c "cd '$DIST' && test \$(wc -l <SHA256SUMS) = 4 && sha256sum --check --quiet SHA256SUMS"
  tarball_sha="$(sha256sum "$SRC_TGZ" | cut -d' ' -f1)"
  formula_sha="$(sed -n 's/^  sha256 "\([0-9a-f]*\)"$/\1/p' "$FORMULA")"
  check "formula sha256 ($formula_sha) is sha256sum of the source tarball ($tarball_sha)" \
    test "$formula_sha" = "$tarball_sha"
  check "formula url names otlp-spool-$VERSION.tar.gz" \
    grep -qE "^  url \"https://[^\"]+/otlp-spool-$VERSION\.tar\.gz\"$" "$FORMULA"
  # The source tarball is the committed tree, every file under one prefix.
  tar -tzf "$SRC_TGZ" | grep -v '/$' | sort >"$TMP/src-files"
  git ls-tree -r --name-only HEAD | sed "s|^|otlp-spool-$VERSION/|" | sort >"$TMP/git-files"
  check "source tarball holds exactly HEAD's files under otlp-spool-$VERSION/ ($(wc -l <"$TMP/src-files") files)" \
    cmp -s "$TMP/src-files" "$TMP/git-files"
  check "source tarball carries the test fixtures (a clone's tests need nothing beside it)" \
    grep -qx "otlp-spool-$VERSION/tests/fixtures/otlp-http/README.md" "$TMP/src-files"
  # The binary tarball: the agent, its config example, README, licence and man page.
  mkdir -p "$TMP/bin-tgz" && tar -xzf "$BIN_TGZ" -C "$TMP/bin-tgz"
  BIN_TGZ_DIR="$TMP/bin-tgz/otlp-spool-$VERSION-x86_64-unknown-linux-gnu"
  for f in otlp-spool README.md LICENSE config.example.toml otlp-spool.1; do
    check "binary tarball has otlp-spool-$VERSION-x86_64-unknown-linux-gnu/$f" test -s "$BIN_TGZ_DIR/$f"
  done
  check "the released otlp-spool --version says $VERSION" grep -qF "$VERSION" <<<"$("$BIN_TGZ_DIR/otlp-spool" --version 2>&1)"

  # What `cargo install` (and so the Homebrew formula) installs: with --path, cargo builds in this
  # checkout's target directory, so after release.sh's build this is a copy, not a second build.
  t0=$SECONDS
  if logged "$TMP/cargo-install.log" cargo install --locked --path . --root "$TMP/cargo-root"; then
    INSTALLED="$TMP/cargo-root/bin/otlp-spool"
    ok "cargo install --path . --root <tmp> in $((SECONDS - t0))s"
    size="$(stat -c %s "$INSTALLED")"
    check "cargo install's binary is $((size >> 20)) MiB, under 40 MiB (with line tables it was 119 MB)" test "$size" -lt $((40 << 20))
    check "cargo install's binary is stripped (file: $(file -b "$INSTALLED" | grep -oE '(not )?stripped'))" \
      bash -c "file -b '$INSTALLED' | grep -qE ', stripped'"
    check "cargo install's binary has no .debug_* or .symtab section (readelf -S)" \
      bash -c "! readelf -S --wide '$INSTALLED' | grep -qE '\.debug_|\.symtab'"
    check "the binary tarball's agent is the one cargo install produces" cmp -s "$INSTALLED" "$BIN_TGZ_DIR/otlp-spool"
    dpkg-deb -x "$RELEASE_DEB" "$TMP/deb-x"
    check "the .deb's /usr/bin/otlp-spool is the one cargo install produces" cmp -s "$INSTALLED" "$TMP/deb-x/usr/bin/otlp-spool"
  else
    bad "cargo install --locked --path . --root <tmp>"
  fi
fi

# ---------------------------------------------------------------------------------------------
section "homebrew formula"
TEMPLATE=packaging/homebrew/otlp-spool.rb
if ! command -v ruby >/dev/null 2>&1; then
  skip "ruby not found: formula not checked (apt-get install ruby)"
else
  check "ruby -c $TEMPLATE" logged "$TMP/ruby-c-template.log" ruby -c "$TEMPLATE"
  if [ "$RELEASED" = 1 ]; then
    check "ruby -c on the rendered formula (dist/otlp-spool.rb)" logged "$TMP/ruby-c.log" ruby -c "$FORMULA"
    check "the rendered formula differs from the template in url and sha256 only" \
      test "$(diff "$TEMPLATE" "$FORMULA" | grep -E '^[<>] ' | grep -cvE '^[<>]   (url|sha256) "')" = 0
  fi
  for want in 'depends_on "rust" => :build' 'system "cargo", "install", *std_cargo_args' \
      '(etc/"otlp-spool").install "config.example.toml" => "config.toml"' \
      'run [opt_bin/"otlp-spool", "run", "--config", etc/"otlp-spool/config.toml"]' \
      'keep_alive true' 'log_path var/"log/otlp-spool.log"' 'error_log_path var/"log/' \
      'head "https://' 'test do' 'desc "' 'license "Apache-2.0"'; do
    check "formula has: $want" grep -qF -- "$want" "$TEMPLATE"
  done
fi

# ---------------------------------------------------------------------------------------------
section "launchd plist"
PLIST=packaging/macos/io.otlp-spool.agent.plist
if command -v python3 >/dev/null 2>&1; then
  # The documented install step: write the real home in place of __HOME__.
  sed -e "s|__HOME__|/Users/someone|g" "$PLIST" >"$TMP/agent.plist"
  check "plist parses (plistlib) and has the agent's keys" python3 - "$PLIST" "$TMP/agent.plist" <<'PY'
import plistlib, sys
raw, installed = sys.argv[1], sys.argv[2]
plistlib.load(open(raw, "rb"))                      # the file as shipped is a valid plist
p = plistlib.load(open(installed, "rb"))
errors = []
def want(cond, msg):
    if not cond:
        errors.append(msg)
want(p.get("Label") == "io.otlp-spool.agent", f"Label is {p.get('Label')!r}")
args = p.get("ProgramArguments", [])
want(len(args) >= 2 and args[0].startswith("/") and args[0].endswith("/otlp-spool") and args[1] == "run",
     f"ProgramArguments is {args!r}")
want(p.get("RunAtLoad") is True, "RunAtLoad is not true")
want(p.get("KeepAlive") is True or isinstance(p.get("KeepAlive"), dict), "KeepAlive missing")
for key in ("StandardErrorPath", "StandardOutPath"):
    path = p.get(key, "")
    want(path == "/Users/someone/Library/Logs/otlp-spool.log", f"{key} is {path!r}")
text = open(installed).read()
want("~" not in text.split("-->")[-1] and "__HOME__" not in text.split("-->")[-1],
     "a ~ or __HOME__ is left after substitution (launchd does not expand them)")
for e in errors:
    print("plist:", e, file=sys.stderr)
sys.exit(1 if errors else 0)
PY
  if command -v plutil >/dev/null 2>&1; then
    check "plutil -lint" logged "$TMP/plutil.log" plutil -lint "$TMP/agent.plist"
  fi
else
  skip "python3 not found: plist not checked"
fi

# ---------------------------------------------------------------------------------------------
section "debian package"
DEB="${OTLP_SPOOL_DEB:-}"
if [ -z "$DEB" ] && [ "$RELEASED" = 1 ]; then
  DEB="$RELEASE_DEB"
fi   # else: already reported (no release, so no .deb)

if [ -n "$DEB" ]; then
  dpkg-deb -c "$DEB" >"$TMP/contents"
  for path in ./usr/bin/otlp-spool ./etc/otlp-spool/config.toml \
      ./usr/lib/systemd/system/otlp-spool.service ./usr/lib/systemd/user/otlp-spool.service \
      ./usr/share/man/man1/otlp-spool.1.gz ./usr/share/doc/otlp-spool/copyright \
      ./usr/share/doc/otlp-spool/changelog.Debian.gz; do
    check "package contains $path" grep -q " $path\$" "$TMP/contents"
  done
  check "package version is $VERSION-1" test "$(dpkg-deb -f "$DEB" Version)" = "$VERSION-1"
  check "package depends on adduser" grep -q adduser <<<"$(dpkg-deb -f "$DEB" Depends)"
  dpkg-deb --ctrl-tarfile "$DEB" | tar -x -C "$TMP" ./conffiles
  check "/etc/otlp-spool/config.toml is a conffile" grep -qx /etc/otlp-spool/config.toml "$TMP/conffiles"

  section "debian package: lintian"
  if command -v lintian >/dev/null 2>&1; then
    t0=$SECONDS
    rc=0; lintian --fail-on error --tag-display-limit 0 "$DEB" >"$TMP/lintian.log" 2>&1 || rc=$?
    grep -v 'running with root privileges' "$TMP/lintian.log" | sed 's/^/  lintian: /'
    if [ "$rc" != 0 ] || grep -q '^E:' "$TMP/lintian.log"; then
      bad "lintian reports errors (exit $rc)"
    else
      ok "lintian: no errors ($(grep -c '^W:' "$TMP/lintian.log" || true) warnings, $((SECONDS - t0))s)"
    fi
  else
    skip "lintian not found (apt-get install lintian)"
  fi
fi

# ---------------------------------------------------------------------------------------------
section "debian package: install"
CAN_INSTALL=0
# One packaging run at a time on a machine: the install part owns the otlp-spool package, user
# and directories while it runs.
if [ "$IS_ROOT" = 1 ] && command -v flock >/dev/null 2>&1; then
  exec 8>/run/lock/otlp-spool-packaging-test.lock 2>/dev/null || exec 8>"${TMPDIR:-/tmp}/otlp-spool-packaging-test.lock"
  flock 8
fi
if [ -z "$DEB" ]; then
  :  # already reported
elif [ "$IS_ROOT" = 0 ]; then
  skip "not root: the .deb is not installed (CI runs as root)"
elif installed; then
  skip "an otlp-spool package is already installed on this machine: not touching it (dpkg --purge otlp-spool to run this part)"
elif getent passwd otlp-spool >/dev/null || [ -e /var/lib/otlp-spool ] || [ -e /etc/otlp-spool ]; then
  skip "an otlp-spool user, /var/lib/otlp-spool or /etc/otlp-spool exists without the package: not touching it"
else
  CAN_INSTALL=1
fi

SYSTEM_UNIT=/usr/lib/systemd/system/otlp-spool.service
USER_UNIT=/usr/lib/systemd/user/otlp-spool.service

mode_owner() { stat -c '%a %U:%G' "$1" 2>/dev/null; }

if [ "$CAN_INSTALL" = 1 ]; then
  WE_INSTALLED=1
  check "dpkg -i" logged "$TMP/dpkg-i.log" dpkg -i "$DEB"
  check "dpkg says installed" test "$(dpkg-query -W -f='${Status}' otlp-spool)" = "install ok installed"

  check "/usr/bin/otlp-spool is 755 root:root" test "$(mode_owner /usr/bin/otlp-spool)" = "755 root:root"
  check "otlp-spool --version says $VERSION" grep -q "$VERSION" <<<"$(/usr/bin/otlp-spool --version)"
  check "/etc/otlp-spool/config.toml is 644 root:root" test "$(mode_owner /etc/otlp-spool/config.toml)" = "644 root:root"
  check "/etc/otlp-spool/config.toml is config.example.toml" cmp -s /etc/otlp-spool/config.toml config.example.toml
  check "dpkg registered the conffile" grep -q /etc/otlp-spool/config.toml <<<"$(dpkg-query -W -f='${Conffiles}' otlp-spool)"
  for f in "$SYSTEM_UNIT" "$USER_UNIT" /usr/share/man/man1/otlp-spool.1.gz; do
    check "$f is 644 root:root" test "$(mode_owner "$f")" = "644 root:root"
  done

  # The user and the state directory.
  pw="$(getent passwd otlp-spool || true)"
  check "user otlp-spool exists" test -n "$pw"
  uid="$(cut -d: -f3 <<<"$pw")"
  check "otlp-spool is a system user (uid $uid < 1000)" test "${uid:-9999}" -lt 1000
  check "otlp-spool has no login shell" grep -Eq ':(/usr/sbin/nologin|/bin/false)$' <<<"$pw"
  check "group otlp-spool exists" getent group otlp-spool >/dev/null
  check "/var/lib/otlp-spool is 700 otlp-spool:otlp-spool" test "$(mode_owner /var/lib/otlp-spool)" = "700 otlp-spool:otlp-spool"

  # The units: exact directives, not enabled, and systemd's own verifier.
  for want in 'User=otlp-spool' 'StateDirectory=otlp-spool' 'StateDirectoryMode=0700' 'Restart=on-failure' \
      'ExecStart=/usr/bin/otlp-spool run --config /etc/otlp-spool/config.toml' 'ProtectSystem=strict' \
      'ProtectHome=true' 'NoNewPrivileges=true' 'PrivateTmp=true' \
      'RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX' 'KillSignal=SIGTERM' 'TimeoutStopSec=10' \
      'ExecReload=/bin/kill -HUP $MAINPID' 'WantedBy=multi-user.target'; do
    check "system unit: $want" grep -qx -- "$want" "$SYSTEM_UNIT"
  done
  for want in 'ExecStart=/usr/bin/otlp-spool run' 'Restart=on-failure' 'KillSignal=SIGTERM' \
      'ExecReload=/bin/kill -HUP $MAINPID' 'TimeoutStopSec=10' 'WantedBy=default.target'; do
    check "user unit: $want" grep -qx -- "$want" "$USER_UNIT"
  done
  check "user unit runs as the user (no User=, no StateDirectory= in the config dir)" \
    bash -c "! grep -Eq '^(User|Group|StateDirectory)=' '$USER_UNIT'"
  check "system unit is not enabled" test ! -e /etc/systemd/system/multi-user.target.wants/otlp-spool.service
  check "user unit is not enabled globally" test ! -e /etc/systemd/user/default.target.wants/otlp-spool.service

  if command -v systemd-analyze >/dev/null 2>&1; then
    systemd-analyze verify "$SYSTEM_UNIT" >"$TMP/verify-system.log" 2>&1 || true
    check "systemd-analyze verify (system unit) is clean" bash -c "! grep -q 'otlp-spool' '$TMP/verify-system.log'"
    sed 's/^/  verify: /' "$TMP/verify-system.log"
    mkdir -p -m 0700 "$TMP/xdg-runtime"
    XDG_RUNTIME_DIR="$TMP/xdg-runtime" systemd-analyze --user verify "$USER_UNIT" >"$TMP/verify-user.log" 2>&1 || true
    check "systemd-analyze --user verify (user unit) is clean" bash -c "! grep -q 'otlp-spool' '$TMP/verify-user.log'"
    sed 's/^/  verify: /' "$TMP/verify-user.log"
    if systemd-analyze security --offline=true "$SYSTEM_UNIT" >"$TMP/security.log" 2>&1; then
      ok "systemd-analyze security: $(grep -o 'Overall exposure level.*' "$TMP/security.log")"
      exposure="$(grep -o 'exposure level for [^:]*: [0-9.]*' "$TMP/security.log" | awk '{print $NF}')"
      check "system unit exposure ${exposure:-?} <= 2.0" awk -v e="${exposure:-99}" 'BEGIN { exit !(e <= 2.0) }'
    fi
  else
    skip "systemd-analyze not found: units not verified (apt-get install systemd)"
  fi

  # `check` on the installed config, as root and as the service would see it.
  check "otlp-spool check --config /etc/otlp-spool/config.toml" \
    logged "$TMP/check.out" /usr/bin/otlp-spool check --config /etc/otlp-spool/config.toml
  runuser -u otlp-spool -- env STATE_DIRECTORY=/var/lib/otlp-spool \
    /usr/bin/otlp-spool check --config /etc/otlp-spool/config.toml >"$TMP/check-svc.out" 2>&1 || true
  check "as the service: check shows the spool in /var/lib/otlp-spool" \
    grep -q '^# spool directory: /var/lib/otlp-spool$' "$TMP/check-svc.out"
  # What the per-user unit's `otlp-spool run` (no --config) resolves to for a new user: the
  # managed /etc config and a spool in the user's XDG state directory.
  NEW_USER="otlpspool-t$$"
  mkdir -p "$TMP/home"
  if useradd --no-create-home --home-dir "$TMP/home/$NEW_USER" --shell /bin/sh "$NEW_USER" 2>"$TMP/useradd.log"; then
    install -d -o "$NEW_USER" -m 0700 "$TMP/home/$NEW_USER"
    runuser -u "$NEW_USER" -- env -i HOME="$TMP/home/$NEW_USER" PATH=/usr/bin:/bin \
      /usr/bin/otlp-spool check >"$TMP/check-user.out" 2>&1 || true
    check "as a new user: check uses /etc/otlp-spool/config.toml" \
      grep -q '^# config: /etc/otlp-spool/config.toml$' "$TMP/check-user.out"
    check "as a new user: spool in ~/.local/state/otlp-spool" \
      grep -q "^# spool directory: $TMP/home/$NEW_USER/.local/state/otlp-spool\$" "$TMP/check-user.out"
    userdel "$NEW_USER" >/dev/null 2>&1 || true
  else
    cat "$TMP/useradd.log" >&2
    bad "useradd $NEW_USER (for the per-user check)"
  fi
  NEW_USER=""

  # Run the installed binary as the otlp-spool user, as the system unit does, and post a span.
  section "debian package: run as otlp-spool"
  PORT="$(free_port)"
  mkdir -p "$TMP/run" && chmod 755 "$TMP" "$TMP/run"
  printf '[server]\nlisten = "127.0.0.1:%s"\ngrpc_listen = ""\n' "$PORT" >"$TMP/run/config.toml"
  chmod 644 "$TMP/run/config.toml"
  runuser -u otlp-spool -- env -i PATH=/usr/bin:/bin STATE_DIRECTORY=/var/lib/otlp-spool NO_COLOR=1 \
    /usr/bin/otlp-spool run --config "$TMP/run/config.toml" >"$TMP/agent.log" 2>&1 &
  AGENT_PID=$!   # runuser, which forks the agent and waits for it
  up=0
  for _ in $(seq 100); do
    if curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1; then up=1; break; fi
    kill -0 "$AGENT_PID" 2>/dev/null || break
    sleep 0.1
  done
  check "agent is up on 127.0.0.1:$PORT" test "$up" = 1
  span='{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"deb-test"}}]},"scopeSpans":[{"spans":[{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","name":"deb-test","kind":1,"startTimeUnixNano":"1700000000000000000","endTimeUnixNano":"1700000001000000000"}]}]}]}'
  code="$(curl -s -o /dev/null -w '%{http_code}' -H 'Content-Type: application/json' --data "$span" "http://127.0.0.1:$PORT/v1/traces" || true)"
  check "POST /v1/traces answers 200 (got $code)" test "$code" = 200
  curl -s "http://127.0.0.1:$PORT/status" >"$TMP/status.json" || true
  check "/status counts the span, spool in /var/lib/otlp-spool" python3 - "$TMP/status.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
assert s["received"]["traces"]["items"] == 1, s["received"]
assert s["spool"]["dir"] == "/var/lib/otlp-spool", s["spool"]
PY
  CHILD="$(pgrep -P "$AGENT_PID" | head -n1 || true)"
  check "agent runs as otlp-spool" test "$(ps -o user= -p "${CHILD:-0}" 2>/dev/null)" = otlp-spool
  check "spool files belong to otlp-spool, none readable by others" \
    test -z "$(find /var/lib/otlp-spool \( ! -user otlp-spool -o -perm /077 \) -print)"
  check "spool holds data" test -n "$(find /var/lib/otlp-spool -mindepth 1 -print -quit)"
  # SIGTERM, as KillSignal=SIGTERM: must exit cleanly within TimeoutStopSec=10.
  kill -TERM "${CHILD:-0}" 2>/dev/null || true
  stopped=0
  for _ in $(seq 100); do kill -0 "$AGENT_PID" 2>/dev/null || { stopped=1; break; }; sleep 0.1; done
  check "agent stops on SIGTERM within 10s" test "$stopped" = 1
  rc=0; wait "$AGENT_PID" || rc=$?
  check "agent exit status after SIGTERM is 0 (got $rc)" test "$rc" = 0
  AGENT_PID=""
  [ "$FAILED" = 0 ] || sed 's/^/  agent: /' "$TMP/agent.log" >&2

  # Idempotent maintainer scripts: reinstall the same .deb, and run postinst configure again.
  section "debian package: reinstall, remove, purge"
  uid_before="$(id -u otlp-spool)"
  echo '# edited by the admin' >>/etc/otlp-spool/config.toml
  check "dpkg -i again (reinstall)" logged "$TMP/dpkg-i2.log" dpkg -i "$DEB"
  check "postinst configure again" logged "$TMP/postinst.log" /var/lib/dpkg/info/otlp-spool.postinst configure "$VERSION-1"
  check "same otlp-spool uid after reinstall" test "$(id -u otlp-spool)" = "$uid_before"
  check "edited conffile kept on reinstall" grep -q '^# edited by the admin$' /etc/otlp-spool/config.toml
  check "spool kept on reinstall" test -n "$(find /var/lib/otlp-spool -mindepth 1 -print -quit)"
  check "/var/lib/otlp-spool still 700 otlp-spool:otlp-spool" test "$(mode_owner /var/lib/otlp-spool)" = "700 otlp-spool:otlp-spool"

  check "dpkg -r (remove)" logged "$TMP/dpkg-r.log" dpkg -r otlp-spool
  check "remove: binary gone" test ! -e /usr/bin/otlp-spool
  check "remove: conffile kept" test -e /etc/otlp-spool/config.toml
  check "remove: user kept" getent passwd otlp-spool >/dev/null

  # A file dpkg leaves behind on a conffile conflict, which purge must also take.
  touch /etc/otlp-spool/config.toml.dpkg-old
  check "dpkg --purge" logged "$TMP/dpkg-purge.log" dpkg --purge otlp-spool
  check "purge: dpkg knows nothing of otlp-spool" bash -c "! dpkg-query -W otlp-spool >/dev/null 2>&1"
  for path in /usr/bin/otlp-spool /etc/otlp-spool /var/lib/otlp-spool "$SYSTEM_UNIT" "$USER_UNIT" \
      /lib/systemd/system/otlp-spool.service /usr/share/doc/otlp-spool /usr/share/man/man1/otlp-spool.1.gz \
      /etc/systemd/system/multi-user.target.wants/otlp-spool.service /etc/systemd/system/otlp-spool.service; do
    check "purge: $path is gone" test ! -e "$path"
  done
  check "purge: user otlp-spool is gone" bash -c "! getent passwd otlp-spool >/dev/null"
  check "purge: group otlp-spool is gone" bash -c "! getent group otlp-spool >/dev/null"
  check "purge: no deb-systemd-helper state left" \
    test -z "$(find /var/lib/systemd/deb-systemd-helper-enabled /var/lib/systemd/deb-systemd-helper-masked -name '*otlp-spool*' 2>/dev/null)"
  WE_INSTALLED=0
fi

# ---------------------------------------------------------------------------------------------
# The formula's `service` and `test` blocks, run against the released binary (without release
# artifacts: the template against target/release) with a stand-in for Homebrew's Formula class
# (only the DSL those blocks use).
section "homebrew formula: service and test blocks"
if [ "$RELEASED" = 1 ]; then
  BIN_DIR="$BIN_TGZ_DIR"
else
  FORMULA="$ROOT/$TEMPLATE"
  BIN_DIR="$(cargo metadata --format-version 1 --no-deps 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])' 2>/dev/null || echo "$ROOT/target")/release"
fi
if ! command -v ruby >/dev/null 2>&1; then
  :  # already reported
elif ! [ -x "$BIN_DIR/otlp-spool" ]; then
  skip "no release binary at $BIN_DIR/otlp-spool: formula test block not run"
else
  cat >"$TMP/brew_stub.rb" <<'RUBY'
# A minimal stand-in for Homebrew's Formula DSL: enough to evaluate a formula's `service` and
# `test` blocks outside Homebrew. Not Homebrew; `brew test` and `brew audit` remain the real check.
require "pathname"
require "socket"
require "tmpdir"

class Formula
  class << self
    attr_reader :service_block, :test_block

    %i[desc homepage url sha256 license head depends_on livecheck bottle].each do |m|
      define_method(m) { |*_args, **_kw, &_blk| nil }
    end

    def service(&blk)
      @service_block = blk
    end

    def test(&blk)
      @test_block = blk
    end
  end

  attr_reader :testpath

  def initialize(bin_dir, testpath)
    @bin = Pathname(bin_dir)
    @testpath = Pathname(testpath)
  end

  def bin = @bin
  def opt_bin = Pathname("/opt/homebrew/opt/otlp-spool/bin")
  def etc = Pathname("/opt/homebrew/etc")
  def var = Pathname("/opt/homebrew/var")

  def free_port
    server = TCPServer.new("127.0.0.1", 0)
    server.addr[1]
  ensure
    server&.close
  end

  def shell_output(cmd, result = 0)
    out = `#{cmd}`
    raise "#{cmd}: exit #{$?.exitstatus}, expected #{result}" if result && $?.exitstatus != result

    out
  end

  def quiet_system(*args) = Kernel.system(*args.map(&:to_s), out: File::NULL, err: File::NULL)
  def assert_equal(exp, act) = (exp == act or raise "expected #{exp.inspect}, got #{act.inspect}")
  def assert_match(exp, act)
    ok = exp.is_a?(Regexp) ? exp.match?(act) : act.include?(exp)
    ok or raise "expected #{act.inspect} to match #{exp.inspect}"
  end
end

class ServiceRecorder
  attr_reader :fields

  def initialize(formula)
    @formula = formula
    @fields = {}
  end

  def opt_bin = @formula.opt_bin
  def etc = @formula.etc
  def var = @formula.var

  %i[run keep_alive log_path error_log_path working_dir environment_variables run_type].each do |m|
    define_method(m) { |*args| @fields[m] = args.size == 1 ? args.first : args }
  end
end

formula_path, bin_dir = ARGV
load formula_path
klass = Object.const_get(:OtlpSpool)
Dir.mktmpdir("brew-test") do |dir|
  f = klass.new(bin_dir, dir)
  svc = ServiceRecorder.new(f)
  svc.instance_eval(&klass.service_block)
  run = svc.fields[:run].map(&:to_s)
  expected = ["/opt/homebrew/opt/otlp-spool/bin/otlp-spool", "run", "--config", "/opt/homebrew/etc/otlp-spool/config.toml"]
  raise "service run is #{run.inspect}" unless run == expected
  raise "service keep_alive is not true" unless svc.fields[:keep_alive] == true
  raise "service log_path is #{svc.fields[:log_path]}" unless svc.fields[:log_path].to_s == "/opt/homebrew/var/log/otlp-spool.log"
  raise "service error_log_path unset" unless svc.fields[:error_log_path].to_s.start_with?("/opt/homebrew/var/log/")

  Dir.chdir(dir) { f.instance_eval(&klass.test_block) }
end
puts "formula service and test blocks: ok"
RUBY
  t0=$SECONDS
  if ruby "$TMP/brew_stub.rb" "$FORMULA" "$BIN_DIR" >"$TMP/brew.log" 2>&1; then
    ok "formula $(basename "$FORMULA"): service block as required, test block passes against $BIN_DIR/otlp-spool ($((SECONDS - t0))s)"
  else
    sed 's/^/  brew: /' "$TMP/brew.log" >&2
    bad "formula: service/test block"
  fi
fi

# ---------------------------------------------------------------------------------------------
section "done"
echo "packaging: took $((SECONDS - START))s"
echo "packaging: $PASSED passed, $FAILED failed, $SKIPPED skipped"
[ "$FAILED" = 0 ]
