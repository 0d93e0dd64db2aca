#!/bin/sh
# make test: every unit test and every e2e test, once on the release build
# and once on the ASan+UBSan build. Ends with "N passed, N failed".
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

for variant in release asan; do
    echo "== e2e ($variant)"
    if [ $variant = release ]; then
        bin=infergate; mock=build/release/infergate-mock; san=0
    else
        bin=build/asan/infergate; mock=build/asan/infergate-mock; san=1
    fi
    log=build/e2e-$variant.log
    INFERGATE_BIN=$bin MOCK_BIN=$mock INFERGATE_SANITIZED=$san \
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
