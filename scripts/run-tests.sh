#!/bin/sh
# make test: every unit test and every e2e test, once on the release build
# and once on the ASan+UBSan build, then the e2e tests once more on the
# ThreadSanitizer build with two worker threads (server.workers: 2).
# Ends with "N passed, N failed".
set -u
cd "$(dirname "$0")/.."
PYTEST=${PYTEST:-/usr/bin/python3 -m pytest}
passed=0
failed=0
failures=""

record() {  # name rc npassed nfailed
    passed=$((passed + $3))
    failed=$((failed + $4))
    if [ "$2" -ne 0 ] && [ "$4" -eq 0 ]; then failed=$((failed + 1)); fi
    [ "$2" -ne 0 ] && failures="$failures $1"
    return 0
}

export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

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

export TSAN_OPTIONS=halt_on_error=0:second_deadlock_stack=1

for variant in release asan tsan; do
    echo "== e2e ($variant)"
    workers=
    case $variant in
    release) bin=infergate; mock=build/release/infergate-mock; san=0 ;;
    asan)    bin=build/asan/infergate; mock=build/asan/infergate-mock; san=1 ;;
    tsan)    bin=build/tsan/infergate; mock=build/release/infergate-mock; san=1
             workers=2 ;;
    esac
    log=build/e2e-$variant.log
    INFERGATE_BIN=$bin MOCK_BIN=$mock INFERGATE_SANITIZED=$san INFERGATE_TEST_WORKERS=$workers \
        $PYTEST -q -p no:cacheprovider tests/e2e ${PYTEST_ARGS:-} >"$log" 2>&1
    rc=$?
    tail -n 25 "$log"
    np=$(tail -n 1 "$log" | sed -n 's/.* \([0-9][0-9]*\) passed.*/\1/p; s/^\([0-9][0-9]*\) passed.*/\1/p' | head -n 1)
    nf=$(tail -n 1 "$log" | sed -n 's/.* \([0-9][0-9]*\) failed.*/\1/p; s/^\([0-9][0-9]*\) failed.*/\1/p' | head -n 1)
    record "e2e-$variant" $rc "${np:-0}" "${nf:-0}"
done

echo
[ -n "$failures" ] && echo "failing:$failures"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
