#!/bin/sh
# make test: every unit test and every e2e test, once on the release build
# and once on the ASan+UBSan build, then the e2e tests once more on the
# ThreadSanitizer build with two worker threads (server.workers: 2).
# Ends with "N passed, N failed".
#
# The three e2e sessions run side by side, in the background, while the
# unit tests are built (UNIT_TARGETS, from make test) and run: they spend most of their time waiting for timers and
# sockets, not on the CPU. Each has its own log (build/e2e-VARIANT.log,
# shown at the end in the usual order) and its own range of ports for
# conftest.free_port(), below the kernel's ephemeral range, so no session
# picks a port another one is about to bind. E2E_SERIAL=1 runs them one
# after another instead (a machine with one core, or to time one alone).
set -u
cd "$(dirname "$0")/.."
PYTEST=${PYTEST:-/usr/bin/python3 -m pytest}
VARIANTS="release asan tsan"
passed=0
failed=0
failures=""
pids=""

record() {  # name rc npassed nfailed
    passed=$((passed + $3))
    failed=$((failed + $4))
    if [ "$2" -ne 0 ] && [ "$4" -eq 0 ]; then failed=$((failed + 1)); fi
    [ "$2" -ne 0 ] && failures="$failures $1"
    return 0
}

# Ctrl-C reaches the foreground only (background jobs of a script ignore
# SIGINT): the e2e sessions get SIGTERM, which conftest.py turns into an
# interrupt, so their fixtures stop what they started.
stop_e2e() {
    trap - INT TERM HUP
    for p in $pids; do kill -TERM "$p" 2>/dev/null; done
    wait
    echo "interrupted" >&2
    exit 130
}
trap stop_e2e INT TERM HUP

export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export TSAN_OPTIONS=halt_on_error=0:second_deadlock_stack=1

start_e2e() {  # variant: starts its pytest session in the background
    workers=
    case $1 in
    release) bin=infergate; mock=build/release/infergate-mock; san=0
             ports=20000-23999 ;;
    asan)    bin=build/asan/infergate; mock=build/asan/infergate-mock; san=1
             ports=24000-27999 ;;
    tsan)    bin=build/tsan/infergate; mock=build/release/infergate-mock; san=1
             workers=2; ports=28000-31999 ;;
    esac
    INFERGATE_BIN=$bin MOCK_BIN=$mock INFERGATE_SANITIZED=$san INFERGATE_TEST_WORKERS=$workers \
    INFERGATE_TEST_PORTS=$ports \
        $PYTEST -q -p no:cacheprovider tests/e2e ${PYTEST_ARGS:-} >build/e2e-$1.log 2>&1 &
    eval "pid_$1=$!"
    pids="$pids $!"
    e2e_start=${e2e_start:-$(date +%s)}
}

finish_e2e() {  # variant: waits for its session, shows and counts it
    eval "pid=\$pid_$1"
    wait "$pid"
    rc=$?
    log=build/e2e-$1.log
    echo "== e2e ($1)"
    tail -n 25 "$log"
    np=$(tail -n 1 "$log" | sed -n 's/.* \([0-9][0-9]*\) passed.*/\1/p; s/^\([0-9][0-9]*\) passed.*/\1/p' | head -n 1)
    nf=$(tail -n 1 "$log" | sed -n 's/.* \([0-9][0-9]*\) failed.*/\1/p; s/^\([0-9][0-9]*\) failed.*/\1/p' | head -n 1)
    record "e2e-$1" $rc "${np:-0}" "${nf:-0}"
}

mkdir -p build
if [ "${E2E_SERIAL:-0}" != 1 ]; then
    for variant in $VARIANTS; do start_e2e "$variant"; done
fi

# make test passes the unit tests (UNIT_TARGETS) to build here, while the
# e2e sessions run; a failed build counts as a failure (its log:
# build/unit-build.log). The parent make's flags are not passed on.
if [ -n "${UNIT_TARGETS:-}" ]; then
    echo "== build (unit tests)"
    # shellcheck disable=SC2086
    MAKEFLAGS= MFLAGS= make --no-print-directory -j"$(nproc 2>/dev/null || echo 2)" $UNIT_TARGETS \
        >build/unit-build.log 2>&1; rc=$?
    [ $rc -ne 0 ] && tail -n 30 build/unit-build.log
    record unit-build $rc 0 0
fi

for variant in release asan; do
    for t in build/$variant/unit/test_*; do
        [ -x "$t" ] || continue
        echo "== unit ($variant): $t"
        out=$("$t" 2>&1); rc=$?
        echo "$out" | tail -n 3
        np=$(echo "$out" | sed -n 's/.*\[  PASSED  \] \([0-9]*\) test.*/\1/p' | tail -n 1)
        nf=$(echo "$out" | sed -n 's/.*\[  FAILED  \] \([0-9]*\) test.*/\1/p' | tail -n 1)
        record "$t" $rc "${np:-0}" "${nf:-0}"
    done
done

for variant in $VARIANTS; do
    [ "${E2E_SERIAL:-0}" = 1 ] && start_e2e "$variant"
    finish_e2e "$variant"
done
echo "e2e: $(( $(date +%s) - e2e_start )) s"

echo
[ -n "$failures" ] && echo "failing:$failures"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
