#!/bin/sh
# package-test.sh -- build the Debian package and prove it installs, works
# and purges cleanly on this machine.
#
#   scripts/package-test.sh               build, lintian, install, check, purge
#   scripts/package-test.sh --build-only  build and lintian only (`make deb`)
#
# The .deb lands in build/deb/ (infergate_<version>_<arch>.deb). The build
# runs in a staging copy, build/deb/infergate-<version>/, whose debian/ is
# packaging/debian/. Installing needs root and a machine where infergate is
# not installed already (the package is purged at the end). One line per
# step, "package-test: ok ..." or "package-test: FAIL ..."; exit 0 when all
# passed. Debian packages used: dpkg-dev, debhelper, lintian,
# man-db, groff-base, adduser, curl; systemd and logrotate when present.
set -eu

cd "$(dirname "$0")/.."
ROOT=$(pwd)
OUT=$ROOT/build/deb
BUILD_ONLY=0
[ "${1:-}" = "--build-only" ] && BUILD_ONLY=1

ok()   { echo "package-test: ok    $*"; }
skip() { echo "package-test: skip  $*"; }
fail() { echo "package-test: FAIL  $*" >&2; exit 1; }
step() { echo "package-test: ....  $*"; }

installed=0
smoke_pid=""
cleanup() {
    if [ -n "$smoke_pid" ]; then kill "$smoke_pid" 2>/dev/null || true; fi
    if [ "$installed" = 1 ]; then
        echo "package-test: purging after a failure" >&2
        dpkg --purge infergate >/dev/null 2>&1 || true
    fi
}
trap cleanup EXIT

for tool in dpkg-buildpackage dpkg-parsechangelog dh; do
    command -v "$tool" >/dev/null || fail "$tool not found (apt-get install dpkg-dev debhelper)"
done

VERSION=$(dpkg-parsechangelog -l packaging/debian/changelog -S Version)
ARCH=$(dpkg --print-architecture)
DEB=$OUT/infergate_${VERSION}_${ARCH}.deb
STAGE=$OUT/infergate-$VERSION

# --- build ------------------------------------------------------------------
step "staging the source tree in ${STAGE#"$ROOT"/}"
rm -rf "$OUT"
mkdir -p "$STAGE"
tar -cf - --exclude='*.o' --exclude=__pycache__ \
    Makefile LICENSE README.md src web scripts/embed-page.sh conf schemas docs packaging \
    | tar -xf - -C "$STAGE"
cp -r packaging/debian "$STAGE/debian"

step "dpkg-buildpackage -us -uc -b (log: build/deb/build.log)"
start=$(date +%s)
if ! (cd "$STAGE" && dpkg-buildpackage -us -uc -b -Jauto) >"$OUT/build.log" 2>&1; then
    tail -n 30 "$OUT/build.log" >&2
    fail "dpkg-buildpackage failed"
fi
[ -f "$DEB" ] || fail "no $DEB after the build"
ok "built ${DEB#"$ROOT"/} in $(( $(date +%s) - start ))s"

dpkg-deb -c "$DEB" >"$OUT/contents.txt"
for f in ./usr/sbin/infergate ./etc/infergate/hosts.json ./etc/infergate/api-keys.json \
         ./etc/infergate/policies.yaml ./usr/share/infergate/schemas/hosts.schema.json \
         ./usr/share/man/man8/infergate.8.gz ./lib/systemd/system/infergate.service \
         ./etc/logrotate.d/infergate ./usr/share/doc/infergate/copyright; do
    grep -q " $f\$" "$OUT/contents.txt" || fail "package lacks $f"
done
dpkg-deb -f "$DEB" Depends | grep -q adduser || fail "Depends lacks adduser"
ok "package contents (binary, conffiles, schemas, man page, unit, logrotate)"

if command -v lintian >/dev/null; then
    rc=0
    lintian --allow-root --display-info --pedantic --tag-display-limit 0 "$DEB" >"$OUT/lintian.log" 2>&1 || rc=$?
    # lintian exits 1 for error tags, 2 when it could not run
    [ "$rc" -le 1 ] || { cat "$OUT/lintian.log" >&2; fail "lintian did not run (exit $rc)"; }
    if grep -E '^[EW]: ' "$OUT/lintian.log" >&2; then
        fail "lintian reported errors or warnings (build/deb/lintian.log)"
    fi
    ok "lintian: no errors, no warnings ($(grep -c '^[IPX]: ' "$OUT/lintian.log" || true) info/pedantic tags)"
else
    skip "lintian not installed"
fi

[ "$BUILD_ONLY" = 1 ] && exit 0

# --- install ----------------------------------------------------------------
[ "$(id -u)" = 0 ] || fail "installing needs root"
if dpkg-query -W -f='${Status}' infergate 2>/dev/null | grep -q 'installed\|config-files'; then
    fail "infergate is already installed here; purge it first (dpkg --purge infergate)"
fi
getent passwd infergate >/dev/null && fail "a user infergate exists already"

dpkg -L systemd >/dev/null 2>&1 && systemd_present=1 || systemd_present=0
installed=1
dpkg -i "$DEB" >"$OUT/install.log" 2>&1 || { cat "$OUT/install.log" >&2; fail "dpkg -i"; }
ok "dpkg -i ${DEB#"$ROOT"/}"

getent passwd infergate >/dev/null || fail "system user infergate missing"
[ "$(id -u infergate)" -lt 1000 ] || fail "infergate is not a system user"
ok "system user infergate ($(getent passwd infergate | cut -d: -f3,6,7))"

got=$(/usr/sbin/infergate -V)
[ "$got" = "infergate ${VERSION%%-*}" ] || fail "infergate -V says '$got'"
ok "/usr/sbin/infergate -V: $got"

out=$(/usr/sbin/infergate -t -c /etc/infergate 2>&1) || fail "infergate -t -c /etc/infergate: $out"
ok "infergate -t -c /etc/infergate: $out"

for f in api-keys.json policies.yaml; do
    st=$(stat -c '%a %U %G' /etc/infergate/$f)
    [ "$st" = "640 root infergate" ] || fail "/etc/infergate/$f is '$st', want '640 root infergate'"
done
out=$(setpriv --reuid=infergate --regid=infergate --init-groups \
      /usr/sbin/infergate -t -c /etc/infergate 2>&1) || fail "infergate -t as user infergate: $out"
ok "secrets 0640 root:infergate, readable by the service user"

conff=$(dpkg-query -W -f='${Conffiles}' infergate | awk '{print $1}' | sort | tr '\n' ' ')
for f in /etc/infergate/api-keys.json /etc/infergate/hosts.json /etc/infergate/policies.yaml \
         /etc/logrotate.d/infergate; do
    case " $conff" in *" $f "*) ;; *) fail "$f is not a conffile ($conff)";; esac
done
ok "conffiles: $conff"

unit=/lib/systemd/system/infergate.service
[ -f "$unit" ] || fail "$unit missing"
if [ "$systemd_present" = 1 ] && command -v systemd-analyze >/dev/null; then
    out=$(systemd-analyze verify "$unit" 2>&1) || fail "systemd-analyze verify: $out"
    [ -z "$out" ] || fail "systemd-analyze verify printed: $out"
    ok "systemd-analyze verify $unit"
else
    skip "systemd-analyze not installed"
fi

if command -v man >/dev/null; then
    page=$(man -w infergate 2>/dev/null) || fail "man -w infergate finds no page"
    err=$(LC_ALL=C.UTF-8 MANWIDTH=80 man --warnings -E UTF-8 -l -Tutf8 "$page" 2>&1 >/dev/null)
    [ -z "$err" ] || fail "man -l $page: $err"
    LC_ALL=C.UTF-8 MANWIDTH=80 man -l "$page" 2>/dev/null | grep -q 'SIGHUP' \
        || fail "man -l $page renders no SIGNALS section"
    ok "man -l $page renders without warnings"
else
    skip "man not installed"
fi

if command -v logrotate >/dev/null; then
    out=$(logrotate -d /etc/logrotate.d/infergate 2>&1) || fail "logrotate -d: $out"
    echo "$out" | grep -qi 'error' && fail "logrotate -d: $out"
    ok "logrotate -d /etc/logrotate.d/infergate"
else
    skip "logrotate not installed"
fi

# The installed binary runs as the system user with the installed files and
# answers /health (200 or 503: the example hosts are not running here).
if command -v curl >/dev/null; then
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    setpriv --reuid=infergate --regid=infergate --init-groups \
        /usr/sbin/infergate -c /etc/infergate -l "127.0.0.1:$port" >"$OUT/smoke.log" 2>&1 &
    smoke_pid=$!
    code=000
    i=0
    while [ $i -lt 100 ]; do
        code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/health" || true)
        [ "$code" = 200 ] || [ "$code" = 503 ] && break
        kill -0 "$smoke_pid" 2>/dev/null || break
        sleep 0.1
        i=$((i + 1))
    done
    case $code in 200|503) ;; *) cat "$OUT/smoke.log" >&2; fail "installed infergate: /health answered '$code'";; esac
    kill -TERM "$smoke_pid"
    rc=0
    wait "$smoke_pid" || rc=$?
    smoke_pid=""
    [ "$rc" = 0 ] || { cat "$OUT/smoke.log" >&2; fail "installed infergate exited $rc on SIGTERM"; }
    ok "installed infergate runs as user infergate: /health $code, SIGTERM exit 0"
else
    skip "curl not installed: no run of the installed binary"
fi

# An upgrade (here: the same package again) keeps an administrator's edits
# of a conffile and the owner/mode of the secrets.
printf '\n' >>/etc/infergate/hosts.json
sum=$(md5sum </etc/infergate/hosts.json)
dpkg -i --force-confold "$DEB" </dev/null >"$OUT/reinstall.log" 2>&1 \
    || { cat "$OUT/reinstall.log" >&2; fail "dpkg -i again (upgrade path)"; }
[ "$(md5sum </etc/infergate/hosts.json)" = "$sum" ] || fail "reinstall replaced an edited conffile"
[ "$(stat -c '%a %U %G' /etc/infergate/api-keys.json)" = "640 root infergate" ] \
    || fail "reinstall changed the mode of api-keys.json"
ok "reinstall keeps the edited conffile and the secrets' mode"

# --- purge ------------------------------------------------------------------
files=$(dpkg -L infergate | grep -v '^/\.$')
dpkg --purge infergate >"$OUT/purge.log" 2>&1 || { cat "$OUT/purge.log" >&2; fail "dpkg --purge"; }
installed=0
ok "dpkg --purge infergate"

left=""
for f in $files; do
    # directories shared with other packages stay
    if [ -d "$f" ]; then
        case $f in */infergate|*/infergate/*) ;; *) continue;; esac
    fi
    [ -e "$f" ] || [ -L "$f" ] && left="$left $f"
done
for f in /etc/infergate /var/log/infergate /run/infergate /usr/share/infergate \
         /usr/share/doc/infergate /etc/systemd/system/multi-user.target.wants/infergate.service \
         /var/lib/systemd/deb-systemd-helper-enabled/infergate.service.dsh-also \
         /var/lib/systemd/deb-systemd-helper-enabled/multi-user.target.wants/infergate.service; do
    [ -e "$f" ] || [ -L "$f" ] && left="$left $f"
done
[ -z "$left" ] || fail "left after purge:$left"
getent passwd infergate >/dev/null && fail "user infergate left after purge"
getent group infergate >/dev/null && fail "group infergate left after purge"
dpkg-statoverride --list | grep -q infergate && fail "statoverrides left after purge"
dpkg-query -W infergate >/dev/null 2>&1 && fail "dpkg still knows infergate"
ok "nothing left after purge (files, user, group, statoverrides, unit links)"
echo "package-test: all steps passed"
