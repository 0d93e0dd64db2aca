#!/bin/sh
# Installs every Debian package infergate needs to build, run `make demo`,
# `make test` and `make bench`. Idempotent: installs only what is missing,
# and only when run as root; otherwise it names what is missing and fails.
set -eu

PKGS="build-essential pkg-config curl
libevent-dev libssl-dev openssl libcurl4-openssl-dev libjansson-dev libyaml-dev libhiredis-dev
libcmocka-dev python3 python3-pytest python3-jsonschema python3-yaml
redis-server redis-sentinel prometheus nodejs
debhelper dpkg-dev lintian groff-base man-db logrotate systemd iproute2
chromium"

[ "${1:-}" = "--fuzz" ] && PKGS="$PKGS clang-14 libfuzzer-14-dev"

[ "${1:-}" = "--bench" ] && PKGS="$PKGS wrk nginx-light haproxy"

# The official OpenAI and Anthropic SDKs the e2e tests drive, from
# tests/e2e/node/package-lock.json (npm ci; nodejs ships npm).
node_sdks() {
    d="$(cd "$(dirname "$0")/.." && pwd)/tests/e2e/node"
    [ -d "$d/node_modules/openai" ] && return 0
    if ! command -v npm >/dev/null 2>&1; then
        echo "deps: npm is missing (install nodejs with its npm)" >&2
        return 1
    fi
    (cd "$d" && npm ci --no-audit --no-fund --silent)
}

missing=""
for p in $PKGS; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed"; then
        missing="$missing $p"
    fi
done

if [ -z "$missing" ]; then
    node_sdks
    exit 0
fi

if [ "$(id -u)" != 0 ]; then
    echo "deps: missing Debian packages:$missing" >&2
    echo "deps: run 'sudo $0' or install them with apt-get" >&2
    exit 1
fi

echo "deps: installing$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing >/dev/null
node_sdks
