/* Unit tests for timeseries.c (1 s points, quantiles from buckets) and the
 * ring of events.c (offsets, wrap-around, a reader that fell behind). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "events.h"
#include "timeseries.h"

static void test_quantile_interpolates_within_a_bucket(void **state)
{
    size_t nb;
    const double *b = metrics_latency_bounds(&nb);
    uint64_t c[METRICS_LAT_BUCKETS];
    size_t i;

    (void)state;
    memset(c, 0, sizeof(c));
    assert_true(ts_quantile(c, b, nb, 0.5) < 0);        /* no answer */
    for (i = 0; i < nb && b[i] < 0.05; i++)
        ;
    c[i] = 10;                                          /* all in (25 ms, 50 ms] */
    assert_true(b[i - 1] == 0.025 && b[i] == 0.05);
    assert_float_equal(ts_quantile(c, b, nb, 0.5), 37.5, 0.01);
    assert_float_equal(ts_quantile(c, b, nb, 1.0), 50.0, 0.01);
    c[nb] = 1000;                                       /* past the last bound */
    assert_float_equal(ts_quantile(c, b, nb, 0.99), b[nb - 1] * 1000.0, 0.01);
    memset(c, 0, sizeof(c));
    c[0] = 99;
    c[nb - 1] = 1;
    assert_true(ts_quantile(c, b, nb, 0.5) <= b[0] * 1000.0);
    assert_true(ts_quantile(c, b, nb, 0.995) > b[nb - 2] * 1000.0);
}

static void test_points_are_differences_and_the_ring_wraps(void **state)
{
    struct timeseries *ts = calloc(1, sizeof(*ts));
    struct metrics_totals t;
    json_t *j;
    int64_t ms = 1000000;
    size_t i;

    (void)state;
    memset(&t, 0, sizeof(t));
    ts_sample(ts, &t, ms);                  /* the first reading: no point */
    assert_int_equal(ts->n, 0);
    for (i = 0; i < TS_POINTS + 10; i++) {
        t.requests += i;
        t.errors += i % 2;
        t.duration[2] += i;
        ts_sample(ts, &t, ms += 1000);
    }
    assert_int_equal(ts->n, TS_POINTS);
    j = ts_json(ts, 0);
    assert_int_equal(json_array_size(json_object_get(j, "t")), TS_POINTS);
    /* oldest first: the first kept point is the 11th sample (i = 10) */
    assert_int_equal(json_integer_value(json_array_get(json_object_get(j, "requests"), 0)), 10);
    assert_int_equal(json_integer_value(json_array_get(json_object_get(j, "t"), 0)),
                     1000000 + 11 * 1000);
    assert_true(json_is_null(json_array_get(json_object_get(j, "p50_ms"), 0)) == 0);
    json_decref(j);
    j = ts_json(ts, ms - 3000);             /* since: the last three */
    assert_int_equal(json_array_size(json_object_get(j, "t")), 3);
    json_decref(j);
    /* counters that went back (metrics reset) count from zero */
    memset(&t, 0, sizeof(t));
    t.requests = 4;
    ts_sample(ts, &t, ms += 1000);
    assert_int_equal(ts->pts[(ts->next + TS_POINTS - 1) % TS_POINTS].requests, 4);
    free(ts);
}

static void test_event_ring_offsets_and_falling_behind(void **state)
{
    static char buf[EVENTS_RING_BYTES];
    uint64_t start = events_head(), off = start, late;
    long n;
    int i;

    (void)state;
    events_emit("test_one", json_pack("{s:i}", "n", 1));
    n = events_read(&off, buf, sizeof(buf));
    assert_true(n > 0 && off == events_head());
    buf[n] = '\0';
    assert_non_null(strstr(buf, "\"type\":\"test_one\",\"n\":1}\n\n"));
    assert_true(strncmp(buf, "id: ", 4) == 0 && strstr(buf, "\ndata: {\"time\":\""));
    assert_int_equal(events_read(&off, buf, sizeof(buf)), 0);
    /* a small reader gets the rest on later reads */
    late = off;
    events_emit("test_two", NULL);
    n = events_read(&late, buf, 5);
    assert_int_equal(n, 5);
    assert_true(events_read(&late, buf, sizeof(buf)) > 0 && late == events_head());
    /* fill more than the ring: an old offset is gone, a new one is fine */
    for (i = 0; events_head() - off <= EVENTS_RING_BYTES; i++)
        events_emit("filler", json_pack("{s:s}", "pad",
            "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"));
    assert_int_equal(events_read(&off, buf, sizeof(buf)), -1);
    off = events_head() - 100;
    assert_int_equal(events_read(&off, buf, sizeof(buf)), 100);
    /* an event too large keeps its time and type only */
    {
        char *big = malloc(EVENTS_FRAME_MAX + 10);
        memset(big, 'y', EVENTS_FRAME_MAX + 9);
        big[EVENTS_FRAME_MAX + 9] = '\0';
        off = events_head();
        events_emit("big", json_pack("{s:s}", "pad", big));
        free(big);
        n = events_read(&off, buf, sizeof(buf));
        buf[n] = '\0';
        assert_true(n < 200);
        assert_non_null(strstr(buf, "\"type\":\"big\",\"truncated\":true"));
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_quantile_interpolates_within_a_bucket),
        cmocka_unit_test(test_points_are_differences_and_the_ring_wraps),
        cmocka_unit_test(test_event_ring_offsets_and_falling_behind),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
