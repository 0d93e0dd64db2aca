#!/bin/sh
# make bench: direct vs nginx vs infergate on the same mock upstreams, with
# wrk (JSON and SSE, 64 and 256 connections) and a small C client for the
# time to first SSE chunk; then infergate with 10 vs 10,000 hosts, and
# infergate vs nginx in front of HTTPS (TLS) mocks.
# Reports, never asserts. Prints a table, writes bench/results/*.json.
#
#   ./scripts/bench.sh                  full run (~7 min on 2 cores)
#   BENCH_QUICK=1 ./scripts/bench.sh    smoke run (1 x 3 s, < 1 min)
#
# Binaries: INFERGATE_BIN (./infergate), MOCK_BIN (build/release/infergate-mock),
# NGINX_BIN, WRK_BIN. Every other knob: scripts/bench/run.py and docs/benchmarks.md.
# Loopback only; every load run is bounded by -d; everything started here is
# stopped on exit or interrupt.
set -eu
cd "$(dirname "$0")/.."

INFERGATE_BIN=${INFERGATE_BIN:-./infergate}
MOCK_BIN=${MOCK_BIN:-build/release/infergate-mock}
export INFERGATE_BIN MOCK_BIN

missing=""
for b in "$INFERGATE_BIN" "$MOCK_BIN"; do
    [ -x "$b" ] || missing="$missing $b"
done
[ -n "${WRK_BIN:-}" ] || command -v wrk >/dev/null 2>&1 || missing="$missing wrk"
if [ -z "${NGINX_BIN:-}" ] && ! command -v nginx >/dev/null 2>&1; then
    if [ -x /usr/sbin/nginx ]; then NGINX_BIN=/usr/sbin/nginx; export NGINX_BIN
    else missing="$missing nginx"; fi
fi
for c in taskset cc python3; do
    command -v "$c" >/dev/null 2>&1 || missing="$missing $c"
done
if [ -n "$missing" ]; then
    echo "bench: missing:$missing (run 'make bench' as root, or 'make' and ./scripts/deps.sh --bench)" >&2
    exit 1
fi

tmp=$(mktemp -d /tmp/infergate-bench-bin.XXXXXX)
pid=""
cleanup() {
    if [ -n "$pid" ]; then kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'cleanup; trap - EXIT; exit 130' INT TERM HUP

# The idle-stream run wants two descriptors per stream (10,000 streams): the
# soft limit goes up to the hard one, which is said here.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
echo "bench: open files limit $(ulimit -n) (hard $(ulimit -Hn))" >&2

# The time-to-first-chunk client (wrk cannot time the first chunk of a stream).
cc -std=c11 -O2 -Wall -Wextra -o "$tmp/sse-client" scripts/bench/sse-client.c
export SSE_CLIENT="$tmp/sse-client"

PY=python3
[ -x /usr/bin/python3 ] && PY=/usr/bin/python3
"$PY" scripts/bench/run.py &
pid=$!
rc=0
wait "$pid" || rc=$?
pid=""
exit "$rc"
