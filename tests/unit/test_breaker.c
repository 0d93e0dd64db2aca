/*
 * test_breaker.c -- every transition of the circuit breaker (src/core/breaker.c),
 * driven with made-up times: no clock, no sleep.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "breaker.h"

#define RESET_MS     1000
#define FAST_MS      10
#define SHARE_EPS    1e-9

/* A breaker that only trips on what each test turns on. */
static struct breaker_params base_params(void)
{
    struct breaker_params p;

    memset(&p, 0, sizeof(p));
    p.enabled = 1;
    p.failure_threshold = 0;
    p.window_size = 10;
    p.minimum_requests = 10;
    p.error_rate = 0;
    p.reset_timeout_ms = RESET_MS;
    p.half_open_requests = 1;
    p.recovery = RECOVERY_IMMEDIATE;
    return p;
}

/* One admitted call with an outcome; fails the test if it is refused. */
static enum breaker_state call(struct breaker *b, int success, int64_t latency_ms, int64_t now)
{
    struct breaker_ticket t;

    assert_int_equal(breaker_allow(b, now, &t), 1);
    return breaker_record(b, t, success, latency_ms, now);
}

static void trip(struct breaker *b, int64_t now)
{
    while (breaker_state(b, now) == BREAKER_CLOSED)
        call(b, 0, FAST_MS, now);
    assert_int_equal(breaker_state(b, now), BREAKER_OPEN);
}

static void test_starts_closed(void **state)
{
    struct breaker_params p = base_params();
    struct breaker b;
    struct breaker_ticket t;
    int i;

    (void)state;
    assert_int_equal(breaker_init(&b, &p), 0);
    assert_int_equal(breaker_state(&b, 0), BREAKER_CLOSED);
    assert_string_equal(breaker_state_name(breaker_state(&b, 0)), "closed");
    assert_float_equal(breaker_share(&b, 0), 1.0, SHARE_EPS);
    assert_int_equal(breaker_open_until(&b), 0);
    for (i = 0; i < 100; i++)
        assert_int_equal(breaker_allow(&b, i, &t), 1);
    breaker_free(&b);
}

static void test_state_names(void **state)
{
    (void)state;
    assert_string_equal(breaker_state_name(BREAKER_CLOSED), "closed");
    assert_string_equal(breaker_state_name(BREAKER_OPEN), "open");
    assert_string_equal(breaker_state_name(BREAKER_HALF_OPEN), "half-open");
}

static void test_consecutive_threshold(void **state)
{
    struct breaker_params p = base_params();
    struct breaker b;
    struct breaker_ticket t;

    (void)state;
    p.failure_threshold = 3;
    p.window_size = 100;
    assert_int_equal(breaker_init(&b, &p), 0);

    assert_int_equal(call(&b, 0, FAST_MS, 1), BREAKER_CLOSED);
    assert_int_equal(call(&b, 0, FAST_MS, 2), BREAKER_CLOSED);
    assert_int_equal(call(&b, 1, FAST_MS, 3), BREAKER_CLOSED);   /* resets the run */
    assert_int_equal(call(&b, 0, FAST_MS, 4), BREAKER_CLOSED);
    assert_int_equal(call(&b, 0, FAST_MS, 5), BREAKER_CLOSED);
    assert_int_equal(b.consecutive, 2);
    assert_int_equal(call(&b, 0, FAST_MS, 6), BREAKER_OPEN);
    assert_int_equal(b.opens, 1);
    assert_int_equal(breaker_allow(&b, 7, &t), 0);
    assert_string_equal(breaker_state_name(breaker_state(&b, 7)), "open");
    assert_float_equal(breaker_share(&b, 7), 0.0, SHARE_EPS);
    breaker_free(&b);
}

static void test_error_rate_needs_minimum(void **state)
{
    struct breaker_params p = base_params();
    struct breaker b;

    (void)state;
    p.window_size = 10;
    p.minimum_requests = 4;
    p.error_rate = 0.5;
    assert_int_equal(breaker_init(&b, &p), 0);

    /* 2 of 3 failed is over the rate, but 3 < minimum_requests */
    assert_int_equal(call(&b, 0, FAST_MS, 1), BREAKER_CLOSED);
    assert_int_equal(call(&b, 1, FAST_MS, 2), BREAKER_CLOSED);
    assert_int_equal(call(&b, 0, FAST_MS, 3), BREAKER_CLOSED);
    /* 2 of 4 = 0.5 reaches the rate */
    assert_int_equal(call(&b, 1, FAST_MS, 4), BREAKER_OPEN);
    breaker_free(&b);
}

static void test_error_rate_below_stays_closed(void **state)
{
    struct breaker_params p = base_params();
    struct breaker b;
    int i;

    (void)state;
    p.window_size = 10;
    p.minimum_requests = 10;
    p.error_rate = 0.5;
    assert_int_equal(breaker_init(&b, &p), 0);
    /* 4 failures in every 10 for a long time: 0.4 < 0.5 */
    for (i = 0; i < 1000; i++)
        assert_int_equal(call(&b, i % 10 >= 4, FAST_MS, i), BREAKER_CLOSED);
    assert_int_equal(b.win.count, 10);
    assert_int_equal(b.win.nfail, 4);
    breaker_free(&b);
}

static void test_error_rate_window_slides(void **state)
{
    struct breaker_params p = base_params();
    struct breaker b;
    int i;

    (void)state;
    p.window_size = 4;
    p.minimum_requests = 4;
    p.error_rate = 0.75;
    assert_int_equal(breaker_init(&b, &p), 0);

    assert_int_equal(call(&b, 0, FAST_MS, 1), BREAKER_CLOSED);
    assert_int_equal(call(&b, 0, FAST_MS, 2), BREAKER_CLOSED);
    for (i = 0; i < 4; i++)                 /* pushes both failures out */
        assert_int_equal(call(&b, 1, FAST_MS, 3 + i), BREAKER_CLOSED);
    assert_int_equal(b.win.nfail, 0);
    assert_int_equal(call(&b, 0, FAST_MS, 10), BREAKER_CLOSED);
    assert_int_equal(call(&b, 0, FAST_MS, 11), BREAKER_CLOSED);   /* S S F F: 0.5 */
    assert_int_equal(call(&b, 0, FAST_MS, 12), BREAKER_OPEN);     /* S F F F: 0.75 */
    breaker_free(&b);
}

static void test_minimum_clamped_to_window(void **state)
{
    struct breaker_params p = base_params();
    struct breaker b;

    (void)state;
    p.window_size = 3;
    p.minimum_requests = 10;                /* never reachable: use the window */
    p.error_rate = 0.5;
    assert_int_equal(breaker_init(&b, &p), 0);
    assert_int_equal(call(&b, 0, FAST_MS, 1), BREAKER_CLOSED);
    assert_int_equal(call(&b, 1, FAST_MS, 2), BREAKER_CLOSED);
    assert_int_equal(call(&b, 0, FAST_MS, 3), BREAKER_OPEN);
    breaker_free(&b);
}

static void test_slow_call_rate(void **state)
{
    struct breaker_params p = base_params();
    struct breaker b;

    (void)state;
    p.window_size = 4;
    p.minimum_requests = 4;
    p.slow_call_latency_ms = 500;
    p.slow_call_rate = 0.5;
    assert_int_equal(breaker_init(&b, &p), 0);

    assert_int_equal(call(&b, 1, 100, 1), BREAKER_CLOSED);
    assert_int_equal(call(&b, 1, 600, 2), BREAKER_CLOSED);
    assert_int_equal(call(&b, 1, 499, 3), BREAKER_CLOSED);    /* just under: not slow */
    assert_int_equal(b.win.nslow, 1);
    assert_int_equal(call(&b, 1, 500, 4), BREAKER_OPEN);      /* >= latency is slow: 2/4 */
    assert_int_equal(b.opens, 1);
    breaker_free(&b);
}

static void test_slow_call_off(void **state)
{
    struct breaker_params p = base_params();
    struct breaker b;
    int i;

    (void)state;
    p.window_size = 4;
    p.minimum_requests = 4;
    p.slow_call_latency_ms = 0;             /* off */
    p.slow_call_rate = 0.5;
    assert_int_equal(breaker_init(&b, &p), 0);
    for (i = 0; i < 20; i++)
        assert_int_equal(call(&b, 1, 100000, i), BREAKER_CLOSED);
    assert_int_equal(b.win.nslow, 0);
    breaker_free(&b);
}

static void test_timeout_is_failure(void **state)
{
    struct breaker_params p = base_params();
    struct breaker b;

    (void)state;
    p.failure_threshold = 2;
    p.timeout_ms = 1000;
    assert_int_equal(breaker_init(&b, &p), 0);

    assert_int_equal(call(&b, 1, 1000, 1), BREAKER_CLOSED);   /* not slower: success */
    assert_int_equal(b.consecutive, 0);
    assert_int_equal(call(&b, 1, 1001, 2), BREAKER_CLOSED);   /* success, but too slow */
    assert_int_equal(b.consecutive, 1);
    assert_int_equal(b.win.nfail, 1);
    assert_int_equal(call(&b, 1, 5000, 3), BREAKER_OPEN);
    breaker_free(&b);
}

static void test_reset_timeout_half_open(void **state)
{
    struct breaker_params p = base_params();
    struct breaker b;
    struct breaker_ticket t, t2;

    (void)state;
    p.failure_threshold = 1;
    assert_int_equal(breaker_init(&b, &p), 0);
    trip(&b, 100);

    assert_int_equal(breaker_open_until(&b), 100 + RESET_MS);
    assert_int_equal(breaker_allow(&b, 100 + RESET_MS - 1, &t), 0);
    assert_int_equal(breaker_state(&b, 100 + RESET_MS - 1), BREAKER_OPEN);
    /* reads as half-open once due, before anyone asks to pass */
    assert_int_equal(breaker_state(&b, 100 + RESET_MS), BREAKER_HALF_OPEN);
    assert_int_equal(b.state, BREAKER_OPEN);
    assert_int_equal(breaker_allow(&b, 100 + RESET_MS, &t), 1);     /* the probe */
    assert_int_equal(b.state, BREAKER_HALF_OPEN);
    assert_int_equal(breaker_open_until(&b), 0);
    assert_int_equal(breaker_allow(&b, 100 + RESET_MS, &t2), 0);    /* probe limit */
    assert_int_equal(breaker_allow(&b, 100 + 5 * RESET_MS, &t2), 0);
    assert_string_equal(breaker_state_name(breaker_state(&b, 2000)), "half-open");
    breaker_free(&b);
}

static void test_probe_success_closes(void **state)
{
    struct breaker_params p = base_params();
    struct breaker b;
    struct breaker_ticket t;
    int i;

    (void)state;
    p.failure_threshold = 1;
    assert_int_equal(breaker_init(&b, &p), 0);
    trip(&b, 0);
    assert_int_equal(breaker_allow(&b, RESET_MS, &t), 1);
    assert_int_equal(breaker_record(&b, t, 1, FAST_MS, RESET_MS + 5), BREAKER_CLOSED);
    assert_int_equal(b.win.count, 0);       /* a fresh window after closing */
    for (i = 0; i < 10; i++)
        assert_int_equal(breaker_allow(&b, RESET_MS + 6, &t), 1);
    assert_float_equal(breaker_share(&b, RESET_MS + 6), 1.0, SHARE_EPS);
    breaker_free(&b);
}

static void test_probe_failure_reopens(void **state)
{
    struct breaker_params p = base_params();
    struct breaker b;
    struct breaker_ticket t;

    (void)state;
    p.failure_threshold = 1;
    assert_int_equal(breaker_init(&b, &p), 0);
    trip(&b, 0);
    assert_int_equal(breaker_allow(&b, RESET_MS, &t), 1);
    assert_int_equal(breaker_record(&b, t, 0, FAST_MS, 1200), BREAKER_OPEN);
    assert_int_equal(b.opens, 2);
    /* the new open period counts from the failed probe */
    assert_int_equal(breaker_open_until(&b), 1200 + RESET_MS);
    assert_int_equal(breaker_allow(&b, 1200 + RESET_MS - 1, &t), 0);
    assert_int_equal(breaker_allow(&b, 1200 + RESET_MS, &t), 1);
    breaker_free(&b);
}

static void test_probe_timeout_reopens(void **state)
{
    struct breaker_params p = base_params();
    struct breaker b;
    struct breaker_ticket t;

    (void)state;
    p.failure_threshold = 1;
    p.timeout_ms = 100;
    assert_int_equal(breaker_init(&b, &p), 0);
    trip(&b, 0);
    assert_int_equal(breaker_allow(&b, RESET_MS, &t), 1);
    assert_int_equal(breaker_record(&b, t, 1, 101, RESET_MS + 101), BREAKER_OPEN);
    breaker_free(&b);
}

static void test_probe_limit_many(void **state)
{
    struct breaker_params p = base_params();
    struct breaker b;
    struct breaker_ticket t[4];

    (void)state;
    p.failure_threshold = 1;
    p.half_open_requests = 3;
    assert_int_equal(breaker_init(&b, &p), 0);
    trip(&b, 0);

    assert_int_equal(breaker_allow(&b, RESET_MS, &t[0]), 1);
    assert_int_equal(breaker_allow(&b, RESET_MS, &t[1]), 1);
    assert_int_equal(breaker_allow(&b, RESET_MS, &t[2]), 1);
    assert_int_equal(breaker_allow(&b, RESET_MS, &t[3]), 0);
    assert_int_equal(b.probes_in_flight, 3);

    /* successes do not open new probe slots: 3 probes in all */
    assert_int_equal(breaker_record(&b, t[0], 1, FAST_MS, RESET_MS + 1), BREAKER_HALF_OPEN);
    assert_int_equal(breaker_allow(&b, RESET_MS + 1, &t[3]), 0);
    assert_int_equal(breaker_record(&b, t[1], 1, FAST_MS, RESET_MS + 2), BREAKER_HALF_OPEN);
    assert_int_equal(breaker_record(&b, t[2], 1, FAST_MS, RESET_MS + 3), BREAKER_CLOSED);
    breaker_free(&b);
}

static void test_one_probe_failure_of_many_reopens(void **state)
{
    struct breaker_params p = base_params();
    struct breaker b;
    struct breaker_ticket t[3];

    (void)state;
    p.failure_threshold = 1;
    p.half_open_requests = 3;
    assert_int_equal(breaker_init(&b, &p), 0);
    trip(&b, 0);
    assert_int_equal(breaker_allow(&b, RESET_MS, &t[0]), 1);
    assert_int_equal(breaker_allow(&b, RESET_MS, &t[1]), 1);
    assert_int_equal(breaker_allow(&b, RESET_MS, &t[2]), 1);
    assert_int_equal(breaker_record(&b, t[0], 1, FAST_MS, RESET_MS + 1), BREAKER_HALF_OPEN);
    assert_int_equal(breaker_record(&b, t[1], 0, FAST_MS, RESET_MS + 2), BREAKER_OPEN);
    /* the last probe ends while open: ignored */
    assert_int_equal(breaker_record(&b, t[2], 1, FAST_MS, RESET_MS + 3), BREAKER_OPEN);
    assert_int_equal(breaker_open_until(&b), RESET_MS + 2 + RESET_MS);
    breaker_free(&b);
}

static void test_release_frees_probe(void **state)
{
    struct breaker_params p = base_params();
    struct breaker b;
    struct breaker_ticket t, t2;

    (void)state;
    p.failure_threshold = 1;
    assert_int_equal(breaker_init(&b, &p), 0);
    trip(&b, 0);
    assert_int_equal(breaker_allow(&b, RESET_MS, &t), 1);
    assert_int_equal(breaker_allow(&b, RESET_MS, &t2), 0);
    breaker_release(&b, t);                 /* lost a race: no outcome */
    assert_int_equal(b.probes_in_flight, 0);
    assert_int_equal(breaker_state(&b, RESET_MS), BREAKER_HALF_OPEN);
    breaker_release(&b, t);                 /* twice is harmless */
    assert_int_equal(b.probes_in_flight, 0);
    assert_int_equal(breaker_allow(&b, RESET_MS, &t2), 1);
    assert_int_equal(breaker_record(&b, t2, 1, FAST_MS, RESET_MS + 1), BREAKER_CLOSED);
    breaker_release(&b, t2);                /* after the outcome: no effect */
    assert_int_equal(breaker_state(&b, RESET_MS + 1), BREAKER_CLOSED);
    breaker_free(&b);
}

/* A call admitted while closed that ends after the breaker went half-open
 * is not a probe: it neither closes the breaker nor frees the probe slot. */
static void test_stale_closed_outcome_in_half_open(void **state)
{
    struct breaker_params p = base_params();
    struct breaker b;
    struct breaker_ticket slow_call, probe, other;

    (void)state;
    p.failure_threshold = 2;
    assert_int_equal(breaker_init(&b, &p), 0);
    assert_int_equal(breaker_allow(&b, 0, &slow_call), 1);
    trip(&b, 10);
    assert_int_equal(breaker_allow(&b, 10 + RESET_MS, &probe), 1);

    assert_int_equal(breaker_record(&b, slow_call, 1, 2000, 10 + RESET_MS + 1), BREAKER_HALF_OPEN);
    assert_int_equal(b.probes_in_flight, 1);
    assert_int_equal(breaker_allow(&b, 10 + RESET_MS + 1, &other), 0);
    breaker_release(&b, slow_call);
    assert_int_equal(b.probes_in_flight, 1);
    /* a stale failure does not re-open it either */
    assert_int_equal(breaker_record(&b, slow_call, 0, 2000, 10 + RESET_MS + 2), BREAKER_HALF_OPEN);

    assert_int_equal(breaker_record(&b, probe, 1, FAST_MS, 10 + RESET_MS + 3), BREAKER_CLOSED);
    breaker_free(&b);
}

static void test_outcome_while_open_ignored(void **state)
{
    struct breaker_params p = base_params();
    struct breaker b;
    struct breaker_ticket late;

    (void)state;
    p.failure_threshold = 1;
    assert_int_equal(breaker_init(&b, &p), 0);
    assert_int_equal(breaker_allow(&b, 0, &late), 1);
    trip(&b, 5);
    assert_int_equal(breaker_record(&b, late, 1, FAST_MS, 6), BREAKER_OPEN);
    assert_int_equal(breaker_record(&b, late, 0, FAST_MS, 7), BREAKER_OPEN);
    assert_int_equal(b.opens, 1);
    assert_int_equal(b.win.count, 0);
    assert_int_equal(breaker_open_until(&b), 5 + RESET_MS);
    breaker_free(&b);
}

/* A probe of an earlier half-open period that ends in a later one. */
static void test_stale_probe_from_earlier_period(void **state)
{
    struct breaker_params p = base_params();
    struct breaker b;
    struct breaker_ticket p1, p2, p3;
    int64_t t0 = RESET_MS;

    (void)state;
    p.failure_threshold = 1;
    p.half_open_requests = 2;
    assert_int_equal(breaker_init(&b, &p), 0);
    trip(&b, 0);
    assert_int_equal(breaker_allow(&b, t0, &p1), 1);
    assert_int_equal(breaker_allow(&b, t0, &p2), 1);
    assert_int_equal(breaker_record(&b, p1, 0, FAST_MS, t0 + 1), BREAKER_OPEN);

    /* second half-open period */
    assert_int_equal(breaker_allow(&b, t0 + 1 + RESET_MS, &p3), 1);
    assert_int_equal(breaker_record(&b, p2, 1, FAST_MS, t0 + 2 + RESET_MS), BREAKER_HALF_OPEN);
    assert_int_equal(b.probe_successes, 0);
    breaker_release(&b, p2);
    assert_int_equal(b.probes_in_flight, 1);
    breaker_free(&b);
}

static void test_gradual_share_ramp(void **state)
{
    struct breaker_params p = base_params();
    struct breaker b;
    struct breaker_ticket t;
    int64_t c;                              /* when it closed */

    (void)state;
    p.failure_threshold = 1;
    p.recovery = RECOVERY_GRADUAL;
    p.recovery_duration_ms = 90000;
    p.recovery_step = 0.25;
    assert_int_equal(breaker_init(&b, &p), 0);
    assert_float_equal(breaker_share(&b, 0), 1.0, SHARE_EPS);  /* never opened */
    trip(&b, 0);
    assert_float_equal(breaker_share(&b, 1), 0.0, SHARE_EPS);
    assert_float_equal(breaker_share(&b, RESET_MS), 0.25, SHARE_EPS);   /* half-open */
    assert_int_equal(breaker_allow(&b, RESET_MS, &t), 1);
    c = RESET_MS + 7;
    assert_int_equal(breaker_record(&b, t, 1, FAST_MS, c), BREAKER_CLOSED);

    assert_float_equal(breaker_share(&b, c), 0.25, SHARE_EPS);
    assert_float_equal(breaker_share(&b, c + 29999), 0.25, SHARE_EPS);
    assert_float_equal(breaker_share(&b, c + 30000), 0.5, SHARE_EPS);
    assert_float_equal(breaker_share(&b, c + 59999), 0.5, SHARE_EPS);
    assert_float_equal(breaker_share(&b, c + 60000), 0.75, SHARE_EPS);
    assert_float_equal(breaker_share(&b, c + 89999), 0.75, SHARE_EPS);
    assert_float_equal(breaker_share(&b, c + 90000), 1.0, SHARE_EPS);
    assert_float_equal(breaker_share(&b, c + 10000000), 1.0, SHARE_EPS);

    /* re-opening during a ramp stops it; the next close starts a new one */
    assert_int_equal(breaker_allow(&b, c + 40000, &t), 1);
    assert_int_equal(breaker_record(&b, t, 0, FAST_MS, c + 40000), BREAKER_OPEN);
    assert_float_equal(breaker_share(&b, c + 40001), 0.0, SHARE_EPS);
    assert_int_equal(breaker_allow(&b, c + 40000 + RESET_MS, &t), 1);
    assert_int_equal(breaker_record(&b, t, 1, FAST_MS, c + 50000), BREAKER_CLOSED);
    assert_float_equal(breaker_share(&b, c + 50000), 0.25, SHARE_EPS);
    assert_float_equal(breaker_share(&b, c + 50000 + 45000), 0.5, SHARE_EPS);
    breaker_free(&b);
}

static void test_gradual_tenth_steps(void **state)
{
    struct breaker_params p = base_params();
    struct breaker b;
    struct breaker_ticket t;
    int i;

    (void)state;
    p.failure_threshold = 1;
    p.recovery = RECOVERY_GRADUAL;
    p.recovery_duration_ms = 90000;         /* 0.1 .. 0.9, 10 s each, then 1.0 */
    p.recovery_step = 0.1;
    assert_int_equal(breaker_init(&b, &p), 0);
    trip(&b, 0);
    assert_int_equal(breaker_allow(&b, RESET_MS, &t), 1);
    assert_int_equal(breaker_record(&b, t, 1, FAST_MS, RESET_MS), BREAKER_CLOSED);
    for (i = 0; i < 9; i++) {
        assert_float_equal(breaker_share(&b, RESET_MS + i * 10000), 0.1 * (i + 1), SHARE_EPS);
        assert_float_equal(breaker_share(&b, RESET_MS + i * 10000 + 9999), 0.1 * (i + 1),
                           SHARE_EPS);
    }
    assert_float_equal(breaker_share(&b, RESET_MS + 90000), 1.0, SHARE_EPS);
    breaker_free(&b);
}

static void test_immediate_share(void **state)
{
    struct breaker_params p = base_params();
    struct breaker b;
    struct breaker_ticket t;

    (void)state;
    p.failure_threshold = 1;
    p.recovery_duration_ms = 90000;
    p.recovery_step = 0.1;
    assert_int_equal(breaker_init(&b, &p), 0);
    trip(&b, 0);
    assert_float_equal(breaker_share(&b, RESET_MS), 1.0, SHARE_EPS);   /* half-open */
    assert_int_equal(breaker_allow(&b, RESET_MS, &t), 1);
    assert_int_equal(breaker_record(&b, t, 1, FAST_MS, RESET_MS), BREAKER_CLOSED);
    assert_float_equal(breaker_share(&b, RESET_MS), 1.0, SHARE_EPS);
    breaker_free(&b);
}

static void test_set_params_keeps_open_state(void **state)
{
    struct breaker_params p = base_params();
    struct breaker b;
    struct breaker_ticket t;

    (void)state;
    p.failure_threshold = 1;
    assert_int_equal(breaker_init(&b, &p), 0);
    trip(&b, 100);
    p.reset_timeout_ms = 5 * RESET_MS;
    assert_int_equal(breaker_set_params(&b, &p), 0);
    assert_int_equal(breaker_state(&b, 100 + RESET_MS), BREAKER_OPEN);
    assert_int_equal(breaker_open_until(&b), 100 + 5 * RESET_MS);
    assert_int_equal(breaker_allow(&b, 100 + 5 * RESET_MS - 1, &t), 0);
    assert_int_equal(breaker_allow(&b, 100 + 5 * RESET_MS, &t), 1);
    /* a probe in flight survives a reload too */
    assert_int_equal(breaker_set_params(&b, &p), 0);
    assert_int_equal(breaker_record(&b, t, 1, FAST_MS, 100 + 5 * RESET_MS + 1), BREAKER_CLOSED);
    breaker_free(&b);
}

static void test_set_params_keeps_counts_and_window(void **state)
{
    struct breaker_params p = base_params();
    struct breaker b;
    int i;

    (void)state;
    p.failure_threshold = 3;
    p.window_size = 10;
    assert_int_equal(breaker_init(&b, &p), 0);
    /* window, oldest first: F F S S S F F */
    for (i = 0; i < 2; i++)
        call(&b, 0, FAST_MS, i);
    for (i = 0; i < 3; i++)
        call(&b, 1, FAST_MS, 10 + i);
    for (i = 0; i < 2; i++)
        call(&b, 0, FAST_MS, 20 + i);
    assert_int_equal(b.win.count, 7);
    assert_int_equal(b.win.nfail, 4);

    p.window_size = 4;                      /* shrink: keeps S S F F */
    assert_int_equal(breaker_set_params(&b, &p), 0);
    assert_int_equal(b.win.size, 4);
    assert_int_equal(b.win.count, 4);
    assert_int_equal(b.win.nfail, 2);
    assert_int_equal(b.consecutive, 2);

    p.window_size = 100;                    /* grow: keeps all 4 */
    assert_int_equal(breaker_set_params(&b, &p), 0);
    assert_int_equal(b.win.count, 4);
    assert_int_equal(b.win.nfail, 2);
    assert_int_equal(b.state, BREAKER_CLOSED);

    /* the consecutive run carries over: one more failure makes 3 */
    assert_int_equal(call(&b, 0, FAST_MS, 30), BREAKER_OPEN);
    breaker_free(&b);
}

static void test_set_params_shrunk_window_wraps(void **state)
{
    struct breaker_params p = base_params();
    struct breaker b;
    int i;

    (void)state;
    p.window_size = 5;
    assert_int_equal(breaker_init(&b, &p), 0);
    /* 13 outcomes through a ring of 5: holds the last 5, F S F S F */
    for (i = 0; i < 13; i++)
        call(&b, i % 2, FAST_MS, i);
    assert_int_equal(b.win.count, 5);
    assert_int_equal(b.win.nfail, 3);
    p.window_size = 2;                      /* newest two: S F */
    assert_int_equal(breaker_set_params(&b, &p), 0);
    assert_int_equal(b.win.count, 2);
    assert_int_equal(b.win.nfail, 1);
    p.window_size = 1;                      /* newest: F */
    assert_int_equal(breaker_set_params(&b, &p), 0);
    assert_int_equal(b.win.nfail, 1);
    breaker_free(&b);
}

static void test_disabled(void **state)
{
    struct breaker_params p = base_params();
    struct breaker b;
    struct breaker_ticket t;
    int i;

    (void)state;
    p.enabled = 0;
    p.failure_threshold = 1;
    assert_int_equal(breaker_init(&b, &p), 0);
    for (i = 0; i < 50; i++)
        assert_int_equal(call(&b, 0, FAST_MS, i), BREAKER_CLOSED);
    assert_float_equal(breaker_share(&b, 50), 1.0, SHARE_EPS);

    /* enabling starts closed; disabling an open breaker lets everything by */
    p.enabled = 1;
    assert_int_equal(breaker_set_params(&b, &p), 0);
    trip(&b, 100);
    assert_int_equal(breaker_allow(&b, 101, &t), 0);
    p.enabled = 0;
    assert_int_equal(breaker_set_params(&b, &p), 0);
    assert_int_equal(breaker_state(&b, 101), BREAKER_CLOSED);
    assert_int_equal(breaker_allow(&b, 101, &t), 1);
    assert_int_equal(breaker_open_until(&b), 0);
    p.enabled = 1;
    assert_int_equal(breaker_set_params(&b, &p), 0);
    assert_int_equal(breaker_state(&b, 102), BREAKER_CLOSED);
    breaker_free(&b);
}

static void test_params_from_config(void **state)
{
    struct config c;
    struct breaker_params p;

    (void)state;
    memset(&c, 0, sizeof(c));
    c.breaker.enabled = 1;
    c.breaker.failure_threshold = 5;
    c.breaker.window_size = 100;
    c.breaker.minimum_requests = 10;
    c.breaker.error_rate = 0.5;
    c.breaker.slow_call_latency_ms = 2000;
    c.breaker.slow_call_rate = 0.4;
    c.breaker.timeout_ms = 9000;
    c.breaker.reset_timeout_ms = 30000;
    c.breaker.half_open_requests = 2;
    c.breaker.recovery = RECOVERY_GRADUAL;
    c.breaker.recovery_duration_ms = 300000;
    c.breaker.recovery_step = 0.1;
    breaker_params_from_config(&c, &p);
    assert_int_equal(p.enabled, 1);
    assert_int_equal(p.failure_threshold, 5);
    assert_int_equal(p.window_size, 100);
    assert_int_equal(p.minimum_requests, 10);
    assert_float_equal(p.error_rate, 0.5, SHARE_EPS);
    assert_int_equal(p.slow_call_latency_ms, 2000);
    assert_float_equal(p.slow_call_rate, 0.4, SHARE_EPS);
    assert_int_equal(p.timeout_ms, 9000);
    assert_int_equal(p.reset_timeout_ms, 30000);
    assert_int_equal(p.half_open_requests, 2);
    assert_int_equal(p.recovery, RECOVERY_GRADUAL);
    assert_int_equal(p.recovery_duration_ms, 300000);
    assert_float_equal(p.recovery_step, 0.1, SHARE_EPS);
}

/* The documented defaults: 10 straight connection failures open it. */
static void test_config_defaults_scenario(void **state)
{
    struct breaker_params p;
    struct breaker b;
    struct breaker_ticket t;
    int i;

    (void)state;
    memset(&p, 0, sizeof(p));
    p.enabled = 1;
    p.failure_threshold = 5;
    p.window_size = 100;
    p.minimum_requests = 10;
    p.error_rate = 0.5;
    p.reset_timeout_ms = 30000;
    p.half_open_requests = 1;
    assert_int_equal(breaker_init(&b, &p), 0);
    for (i = 0; i < 4; i++)
        assert_int_equal(call(&b, 0, FAST_MS, i), BREAKER_CLOSED);
    assert_int_equal(call(&b, 0, FAST_MS, 4), BREAKER_OPEN);
    for (i = 5; i < 30004; i += 1000)
        assert_int_equal(breaker_allow(&b, i, &t), 0);
    assert_int_equal(breaker_allow(&b, 30004, &t), 1);
    assert_int_equal(breaker_allow(&b, 30004, &t), 0);
    breaker_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_starts_closed),
        cmocka_unit_test(test_state_names),
        cmocka_unit_test(test_consecutive_threshold),
        cmocka_unit_test(test_error_rate_needs_minimum),
        cmocka_unit_test(test_error_rate_below_stays_closed),
        cmocka_unit_test(test_error_rate_window_slides),
        cmocka_unit_test(test_minimum_clamped_to_window),
        cmocka_unit_test(test_slow_call_rate),
        cmocka_unit_test(test_slow_call_off),
        cmocka_unit_test(test_timeout_is_failure),
        cmocka_unit_test(test_reset_timeout_half_open),
        cmocka_unit_test(test_probe_success_closes),
        cmocka_unit_test(test_probe_failure_reopens),
        cmocka_unit_test(test_probe_timeout_reopens),
        cmocka_unit_test(test_probe_limit_many),
        cmocka_unit_test(test_one_probe_failure_of_many_reopens),
        cmocka_unit_test(test_release_frees_probe),
        cmocka_unit_test(test_stale_closed_outcome_in_half_open),
        cmocka_unit_test(test_outcome_while_open_ignored),
        cmocka_unit_test(test_stale_probe_from_earlier_period),
        cmocka_unit_test(test_gradual_share_ramp),
        cmocka_unit_test(test_gradual_tenth_steps),
        cmocka_unit_test(test_immediate_share),
        cmocka_unit_test(test_set_params_keeps_open_state),
        cmocka_unit_test(test_set_params_keeps_counts_and_window),
        cmocka_unit_test(test_set_params_shrunk_window_wraps),
        cmocka_unit_test(test_disabled),
        cmocka_unit_test(test_params_from_config),
        cmocka_unit_test(test_config_defaults_scenario),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
