/*
 * test_retry.c -- backoff arithmetic, Retry-After parsing, outcome
 * classification and the retry budget (src/core/retry.c). No clock, no sleep.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <limits.h>
#include <string.h>
#include <cmocka.h>

#include "retry.h"

#define INITIAL_MS   100
#define MAX_MS       5000
#define SAMPLES      10000

/* 1994-11-06 08:49:37 UTC, the RFC's example date. */
#define RFC_EXAMPLE_S   INT64_C(784111777)
/* 2025-01-01 00:00:00 UTC */
#define Y2025_S         INT64_C(1735689600)

static struct retry_params params(enum cfg_backoff type, enum cfg_jitter jitter)
{
    struct retry_params p;

    memset(&p, 0, sizeof(p));
    p.max_attempts = 3;
    p.backoff = type;
    p.initial_ms = INITIAL_MS;
    p.max_ms = MAX_MS;
    p.jitter = jitter;
    p.on = RETRY_ON_NETWORK_ERROR | RETRY_ON_TIMEOUT | RETRY_ON_5XX;
    retry_params_add_code(&p, 429);
    retry_params_add_code(&p, 404);
    p.respect_retry_after = 1;
    p.budget_ratio = 0.2;
    p.budget_window_ms = 10000;
    p.budget_min_retries = 3;
    return p;
}

/* ---- backoff ------------------------------------------------------------- */

static void test_exponential_no_jitter(void **state)
{
    struct retry_params p = params(BACKOFF_EXPONENTIAL, JITTER_NONE);
    static const int64_t want[] = { 100, 200, 400, 800, 1600, 3200, 5000, 5000 };
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(want) / sizeof(want[0]); i++)
        assert_int_equal(retry_backoff_ms(&p, (int)i + 1, 12345), want[i]);
    assert_int_equal(retry_backoff_ms(&p, 63, 0), MAX_MS);
    assert_int_equal(retry_backoff_ms(&p, 64, 0), MAX_MS);
    assert_int_equal(retry_backoff_ms(&p, INT_MAX, 0), MAX_MS);
    assert_int_equal(retry_backoff_ms(&p, 0, 0), INITIAL_MS);      /* < 1 means 1 */
    assert_int_equal(retry_backoff_ms(&p, -5, 0), INITIAL_MS);

    p.max_ms = INT64_MAX;                   /* doubling never overflows */
    assert_true(retry_backoff_ms(&p, 70, 0) > 0);
    assert_int_equal(retry_backoff_ms(&p, 200, 0), INT64_MAX);
}

static void test_linear_no_jitter(void **state)
{
    struct retry_params p = params(BACKOFF_LINEAR, JITTER_NONE);
    int i;

    (void)state;
    for (i = 1; i <= 50; i++)
        assert_int_equal(retry_backoff_ms(&p, i, 999), i * INITIAL_MS < MAX_MS ? i * INITIAL_MS : MAX_MS);
    assert_int_equal(retry_backoff_ms(&p, INT_MAX, 0), MAX_MS);
    p.max_ms = INT64_MAX;
    assert_int_equal(retry_backoff_ms(&p, INT_MAX, 0), (int64_t)INT_MAX * INITIAL_MS);
}

static void test_fixed_no_jitter(void **state)
{
    struct retry_params p = params(BACKOFF_FIXED, JITTER_NONE);
    int i;

    (void)state;
    for (i = 1; i <= 20; i++)
        assert_int_equal(retry_backoff_ms(&p, i, (uint64_t)i * 7919), INITIAL_MS);
    p.initial_ms = 2 * MAX_MS;              /* initial above max: max */
    assert_int_equal(retry_backoff_ms(&p, 1, 0), MAX_MS);
}

static void test_zero_initial(void **state)
{
    struct retry_params p = params(BACKOFF_EXPONENTIAL, JITTER_FULL);

    (void)state;
    p.initial_ms = 0;
    assert_int_equal(retry_backoff_ms(&p, 1, 77), 0);
    assert_int_equal(retry_backoff_ms(&p, 10, 77), 0);
    p.max_ms = 0;
    p.initial_ms = INITIAL_MS;
    assert_int_equal(retry_backoff_ms(&p, 3, 77), 0);
}

/* The un-jittered delay of each type, to check jitter bounds against. */
static int64_t no_jitter(enum cfg_backoff type, int retry)
{
    struct retry_params p = params(type, JITTER_NONE);

    return retry_backoff_ms(&p, retry, 0);
}

static void check_jitter_bounds(enum cfg_backoff type, enum cfg_jitter jitter)
{
    struct retry_params p = params(type, jitter);
    uint64_t seed = 42;
    int retry, i;

    for (retry = 1; retry <= 10; retry++) {
        int64_t d = no_jitter(type, retry);
        int64_t lo = jitter == JITTER_EQUAL ? d / 2 : 0;
        int64_t seen_min = INT64_MAX, seen_max = -1;

        for (i = 0; i < SAMPLES; i++) {
            int64_t v = retry_backoff_ms(&p, retry, retry_rand(&seed));

            assert_true(v >= lo);
            assert_true(v <= d);
            assert_true(v <= MAX_MS);
            if (v < seen_min)
                seen_min = v;
            if (v > seen_max)
                seen_max = v;
        }
        /* it really spreads over the range */
        assert_true(seen_min < lo + (d - lo) / 10 + 1);
        assert_true(seen_max > d - (d - lo) / 10 - 1);
        /* the ends are reachable */
        assert_int_equal(retry_backoff_ms(&p, retry, 0), lo);
        assert_int_equal(retry_backoff_ms(&p, retry, (uint64_t)(d - lo)), d);
    }
}

static void test_full_jitter_bounds(void **state)
{
    (void)state;
    check_jitter_bounds(BACKOFF_EXPONENTIAL, JITTER_FULL);
    check_jitter_bounds(BACKOFF_LINEAR, JITTER_FULL);
    check_jitter_bounds(BACKOFF_FIXED, JITTER_FULL);
}

static void test_equal_jitter_bounds(void **state)
{
    (void)state;
    check_jitter_bounds(BACKOFF_EXPONENTIAL, JITTER_EQUAL);
    check_jitter_bounds(BACKOFF_LINEAR, JITTER_EQUAL);
    check_jitter_bounds(BACKOFF_FIXED, JITTER_EQUAL);
}

static void test_jitter_exact_values(void **state)
{
    struct retry_params p = params(BACKOFF_EXPONENTIAL, JITTER_FULL);

    (void)state;
    /* retry 3: d = 400; full: rnd % 401; equal: 200 + rnd % 201 */
    assert_int_equal(retry_backoff_ms(&p, 3, 1000), 1000 % 401);
    assert_int_equal(retry_backoff_ms(&p, 3, UINT64_MAX), (int64_t)(UINT64_MAX % 401));
    p.jitter = JITTER_EQUAL;
    assert_int_equal(retry_backoff_ms(&p, 3, 1000), 200 + 1000 % 201);
    assert_int_equal(retry_backoff_ms(&p, 3, UINT64_MAX), 200 + (int64_t)(UINT64_MAX % 201));
    /* capped before jitter: never above max */
    p.jitter = JITTER_FULL;
    assert_int_equal(retry_backoff_ms(&p, 30, MAX_MS), MAX_MS);
    assert_int_equal(retry_backoff_ms(&p, 30, MAX_MS + 1), 0);
}

static void test_rand(void **state)
{
    uint64_t a = 1, b = 1, c = 2, z = 0;
    uint64_t x, y;
    int i, same = 0;

    (void)state;
    for (i = 0; i < 1000; i++) {
        x = retry_rand(&a);
        y = retry_rand(&b);
        assert_true(x == y);                /* same seed, same sequence */
        if (retry_rand(&c) == x)
            same++;
    }
    assert_true(same < 2);
    x = retry_rand(&z);                     /* zero seed is replaced */
    assert_true(z != 0);
    assert_true(x != 0);
}

static void test_delay_with_retry_after(void **state)
{
    struct retry_params p = params(BACKOFF_EXPONENTIAL, JITTER_NONE);

    (void)state;
    assert_int_equal(retry_delay_ms(&p, 1, 0, 2000), 2000);
    assert_int_equal(retry_delay_ms(&p, 1, 0, 0), 0);
    assert_int_equal(retry_delay_ms(&p, 1, 0, 60000), MAX_MS);     /* capped */
    assert_int_equal(retry_delay_ms(&p, 2, 0, -1), 200);            /* none: backoff */
    p.respect_retry_after = 0;
    assert_int_equal(retry_delay_ms(&p, 2, 0, 2000), 200);
}

/* ---- Retry-After --------------------------------------------------------- */

static void test_retry_after_seconds(void **state)
{
    (void)state;
    assert_int_equal(retry_after_parse("120", 0), 120000);
    assert_int_equal(retry_after_parse("0", 0), 0);
    assert_int_equal(retry_after_parse(" 7 ", 0), 7000);
    assert_int_equal(retry_after_parse("\t3", 0), 3000);
    assert_int_equal(retry_after_parse("007", 0), 7000);
    /* absurd values saturate instead of overflowing */
    assert_true(retry_after_parse("99999999999999999999999999", 0) > 0);
    assert_int_equal(retry_after_parse("99999999999999999999999999", 0) % 1000, 0);
}

static void test_retry_after_dates(void **state)
{
    (void)state;
    assert_int_equal(retry_after_parse("Sun, 06 Nov 1994 08:49:37 GMT", RFC_EXAMPLE_S - 30), 30000);
    assert_int_equal(retry_after_parse("Sunday, 06-Nov-94 08:49:37 GMT", RFC_EXAMPLE_S - 30),
                     30000);
    assert_int_equal(retry_after_parse("Sun Nov  6 08:49:37 1994", RFC_EXAMPLE_S - 30), 30000);
    assert_int_equal(retry_after_parse("Thu Nov 10 08:49:37 1994", RFC_EXAMPLE_S),
                     4 * 86400 * 1000);
    /* now or in the past: no wait */
    assert_int_equal(retry_after_parse("Sun, 06 Nov 1994 08:49:37 GMT", RFC_EXAMPLE_S), 0);
    assert_int_equal(retry_after_parse("Sun, 06 Nov 1994 08:49:37 GMT", RFC_EXAMPLE_S + 1), 0);
    assert_int_equal(retry_after_parse("Sun, 06 Nov 1994 08:49:37 GMT", RFC_EXAMPLE_S + 99), 0);
    /* leap days, year ends, case and surrounding blanks */
    assert_int_equal(retry_after_parse("Thu, 29 Feb 2024 00:00:00 GMT", INT64_C(1709164800) - 5),
                     5000);
    assert_int_equal(retry_after_parse("Tue, 29 Feb 2000 12:00:00 GMT", INT64_C(951825600) - 1),
                     1000);
    assert_int_equal(retry_after_parse("Wed, 01 Jan 2025 00:00:00 GMT", Y2025_S - 1), 1000);
    assert_int_equal(retry_after_parse("  wed, 01 jan 2025 00:00:02 gmt  ", Y2025_S), 2000);
    assert_int_equal(retry_after_parse("SUNDAY, 06-NOV-94 08:49:37 GMT", RFC_EXAMPLE_S - 1), 1000);
    /* the weekday is not checked against the date */
    assert_int_equal(retry_after_parse("Mon, 01 Jan 2025 00:00:03 GMT", Y2025_S), 3000);
}

static void test_retry_after_rfc850_century(void **state)
{
    (void)state;
    /* two-digit years: up to 50 years ahead of now is this century ... */
    assert_int_equal(retry_after_parse("Wednesday, 01-Jan-25 00:01:00 GMT", Y2025_S), 60000);
    assert_int_equal(retry_after_parse("Thursday, 01-Jan-70 00:00:10 GMT", Y2025_S),
                     (INT64_C(3155760010) - Y2025_S) * 1000);
    /* ... further ahead is the last century, so in the past */
    assert_int_equal(retry_after_parse("Tuesday, 01-Jan-80 00:00:10 GMT", Y2025_S), 0);
}

static void test_retry_after_garbage(void **state)
{
    static const char *const bad[] = {
        "", "   ", "abc", "-5", "+5", "1.5", "5s", "5 5", "0x10",
        "Sun, 06 Nov 1994 08:49:37 UTC",
        "Sun, 06 Nov 1994 08:49:37",
        "Sun, 06 Nov 1994 08:49:37 GMT junk",
        "Sun, 6 Nov 1994 08:49:37 GMT",
        "Sun, 06 Foo 1994 08:49:37 GMT",
        "Sun, 31 Feb 1994 08:49:37 GMT",
        "Sun, 29 Feb 2023 08:49:37 GMT",
        "Sun, 00 Nov 1994 08:49:37 GMT",
        "Sun, 06 Nov 1994 24:00:00 GMT",
        "Sun, 06 Nov 1994 08:60:00 GMT",
        "Sun, 06 Nov 1994 08:49:61 GMT",
        "Sun, 06 Nov 94 08:49:37 GMT",
        "Sun 06 Nov 1994 08:49:37 GMT",
        "Funday, 06-Nov-94 08:49:37 GMT",
        "Sunday, 06-Nov-1994 08:49:37 GMT",
        "Sun Nov 6 08:49:37 1994",
        "Sun Nov  6 08:49:37 1994 GMT",
        "Sun Nov  6 8:49:37 1994",
        "Sun,",
        "Sun, ",
        "Sun, 0",
        "Sun",
        "Wednesday, 09-Nov-94 08:49:37 GMT and a very long tail after it",
        "2025-01-01T00:00:00Z",
    };
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (retry_after_parse(bad[i], RFC_EXAMPLE_S) != -1)
            fail_msg("accepted \"%s\"", bad[i]);
    }
    assert_int_equal(retry_after_parse(NULL, 0), -1);
}

/* ---- classification ------------------------------------------------------ */

struct class_row {
    enum retry_fault fault;
    int      status;
    int      with_key;
    int      retryable;
    int      host_failure;
    enum retry_key_action key;
};

static void check_rows(const struct retry_params *p, const struct class_row *rows, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++) {
        struct retry_outcome o;
        struct retry_verdict v;

        o.fault = rows[i].fault;
        o.status = rows[i].status;
        o.with_key = rows[i].with_key;
        v = retry_classify(p, &o);
        if (v.retryable != rows[i].retryable || v.host_failure != rows[i].host_failure ||
            v.key != rows[i].key)
            fail_msg("row %zu (fault %d status %d key %d): got retryable %d host %d key %d",
                     i, rows[i].fault, rows[i].status, rows[i].with_key,
                     v.retryable, v.host_failure, (int)v.key);
    }
}

#define NET     RETRY_FAULT_NETWORK
#define TMO     RETRY_FAULT_TIMEOUT
#define HTTP    RETRY_FAULT_NONE
#define KEEP    RETRY_KEY_KEEP
#define DISABLE RETRY_KEY_DISABLE
#define COOL    RETRY_KEY_COOLDOWN

static void test_classify_defaults(void **state)
{
    /* on: [network_error, timeout, 5xx, 429, 404] */
    struct retry_params p = params(BACKOFF_EXPONENTIAL, JITTER_FULL);
    static const struct class_row rows[] = {
        { NET,  0,   0, 1, 1, KEEP },
        { NET,  0,   1, 1, 1, KEEP },
        { TMO,  0,   1, 1, 1, KEEP },
        { HTTP, 200, 1, 0, 0, KEEP },
        { HTTP, 204, 0, 0, 0, KEEP },
        { HTTP, 301, 1, 0, 0, KEEP },
        { HTTP, 100, 1, 0, 0, KEEP },
        { HTTP, 400, 1, 0, 0, KEEP },
        { HTTP, 404, 1, 1, 0, KEEP },
        { HTTP, 404, 0, 1, 0, KEEP },
        { HTTP, 413, 1, 0, 0, KEEP },
        { HTTP, 422, 1, 0, 0, KEEP },
        { HTTP, 429, 1, 1, 0, COOL },
        { HTTP, 429, 0, 1, 0, KEEP },
        { HTTP, 402, 1, 1, 0, COOL },
        { HTTP, 402, 0, 0, 0, KEEP },
        { HTTP, 401, 1, 1, 0, DISABLE },
        { HTTP, 401, 0, 0, 0, KEEP },
        { HTTP, 403, 1, 1, 0, DISABLE },
        { HTTP, 403, 0, 0, 0, KEEP },
        { HTTP, 500, 1, 1, 1, KEEP },
        { HTTP, 502, 0, 1, 1, KEEP },
        { HTTP, 503, 1, 1, 1, KEEP },
        { HTTP, 504, 1, 1, 1, KEEP },
        { HTTP, 599, 1, 1, 1, KEEP },
    };

    (void)state;
    check_rows(&p, rows, sizeof(rows) / sizeof(rows[0]));
}

static void test_classify_nothing_on(void **state)
{
    struct retry_params p = params(BACKOFF_EXPONENTIAL, JITTER_FULL);
    static const struct class_row rows[] = {
        { NET,  0,   1, 0, 1, KEEP },
        { TMO,  0,   1, 0, 1, KEEP },
        { HTTP, 503, 1, 0, 1, KEEP },
        { HTTP, 404, 1, 0, 0, KEEP },
        { HTTP, 429, 0, 0, 0, KEEP },
        /* key-related: retried with another key whatever `on` says */
        { HTTP, 429, 1, 1, 0, COOL },
        { HTTP, 401, 1, 1, 0, DISABLE },
    };

    (void)state;
    p.on = 0;
    memset(p.on_codes, 0, sizeof(p.on_codes));
    check_rows(&p, rows, sizeof(rows) / sizeof(rows[0]));
}

static void test_classify_classes_and_codes(void **state)
{
    struct retry_params p = params(BACKOFF_EXPONENTIAL, JITTER_FULL);
    static const struct class_row rows_4xx[] = {
        { HTTP, 400, 0, 1, 0, KEEP },
        { HTTP, 418, 0, 1, 0, KEEP },
        { HTTP, 499, 0, 1, 0, KEEP },
        { HTTP, 500, 0, 0, 1, KEEP },
        { NET,  0,   0, 0, 1, KEEP },
    };
    static const struct class_row rows_codes[] = {
        { HTTP, 503, 0, 1, 1, KEEP },
        { HTTP, 502, 0, 0, 1, KEEP },
        { HTTP, 400, 0, 1, 0, KEEP },
        { HTTP, 599, 0, 1, 1, KEEP },
        { HTTP, 401, 0, 0, 0, KEEP },
    };

    (void)state;
    p.on = RETRY_ON_4XX;
    memset(p.on_codes, 0, sizeof(p.on_codes));
    check_rows(&p, rows_4xx, sizeof(rows_4xx) / sizeof(rows_4xx[0]));

    p.on = 0;
    retry_params_add_code(&p, 503);
    retry_params_add_code(&p, 400);         /* the first and last of the bitmap */
    retry_params_add_code(&p, 599);
    retry_params_add_code(&p, 399);         /* out of range: ignored */
    retry_params_add_code(&p, 600);
    check_rows(&p, rows_codes, sizeof(rows_codes) / sizeof(rows_codes[0]));
}

static void test_params_from_config(void **state)
{
    struct config c;
    struct retry_params p;
    int codes[] = { 429, 404, 600, 200 };
    struct retry_outcome o = { RETRY_FAULT_NONE, 404, 0 };

    (void)state;
    memset(&c, 0, sizeof(c));
    c.retry.max_attempts = 4;
    c.retry.backoff = BACKOFF_LINEAR;
    c.retry.backoff_initial_ms = 250;
    c.retry.backoff_max_ms = 4000;
    c.retry.jitter = JITTER_EQUAL;
    c.retry.on = RETRY_ON_TIMEOUT;
    c.retry.on_codes = codes;
    c.retry.non_codes = sizeof(codes) / sizeof(codes[0]);
    c.retry.respect_retry_after = 1;
    c.retry.budget_ratio = 0.3;
    c.retry.budget_window_ms = 20000;
    c.retry.budget_min_retries = 7;
    retry_params_from_config(&c, &p);

    assert_int_equal(p.max_attempts, 4);
    assert_int_equal(p.backoff, BACKOFF_LINEAR);
    assert_int_equal(p.initial_ms, 250);
    assert_int_equal(p.max_ms, 4000);
    assert_int_equal(p.jitter, JITTER_EQUAL);
    assert_int_equal(p.on, RETRY_ON_TIMEOUT);
    assert_int_equal(p.respect_retry_after, 1);
    assert_float_equal(p.budget_ratio, 0.3, 1e-12);
    assert_int_equal(p.budget_window_ms, 20000);
    assert_int_equal(p.budget_min_retries, 7);
    assert_int_equal(retry_classify(&p, &o).retryable, 1);
    o.status = 405;
    assert_int_equal(retry_classify(&p, &o).retryable, 0);
}

/* ---- budget -------------------------------------------------------------- */

static void test_budget_min_retries(void **state)
{
    struct retry_params p = params(BACKOFF_EXPONENTIAL, JITTER_FULL);
    struct retry_budget b;

    (void)state;
    retry_budget_init(&b, &p);
    /* no requests yet: min_retries (3) and no more */
    assert_int_equal(retry_budget_try_spend(&b, 0), 1);
    assert_int_equal(retry_budget_try_spend(&b, 1), 1);
    assert_int_equal(retry_budget_try_spend(&b, 2), 1);
    assert_int_equal(retry_budget_try_spend(&b, 3), 0);
    assert_int_equal(retry_budget_try_spend(&b, 4), 0);
    assert_int_equal(b.denied, 2);
}

static void test_budget_ratio(void **state)
{
    struct retry_params p = params(BACKOFF_EXPONENTIAL, JITTER_FULL);
    struct retry_budget b;
    int i, spent = 0;

    (void)state;
    retry_budget_init(&b, &p);
    for (i = 0; i < 1000; i++)
        retry_budget_note_request(&b, 100);
    /* 3 + 0.2 * 1000 */
    while (retry_budget_try_spend(&b, 200))
        spent++;
    assert_int_equal(spent, 203);
    assert_int_equal(b.denied, 1);

    /* each new request earns 0.2 of a retry: one per 5 */
    for (i = 0; i < 4; i++)
        retry_budget_note_request(&b, 300);
    assert_int_equal(retry_budget_try_spend(&b, 300), 0);
    retry_budget_note_request(&b, 300);
    assert_int_equal(retry_budget_try_spend(&b, 300), 1);
    assert_int_equal(retry_budget_try_spend(&b, 300), 0);
}

static void test_budget_window_slides(void **state)
{
    struct retry_params p = params(BACKOFF_EXPONENTIAL, JITTER_FULL);
    struct retry_budget b;
    int i;

    (void)state;
    retry_budget_init(&b, &p);             /* 10 s window in 1 s buckets */
    for (i = 0; i < 10; i++)
        retry_budget_note_request(&b, 0);   /* bucket [0, 1000) */
    for (i = 0; i < 10; i++)
        retry_budget_note_request(&b, 5000);
    for (i = 0; i < 7; i++)                 /* 3 + 0.2 * 20 */
        assert_int_equal(retry_budget_try_spend(&b, 5500), 1);
    assert_int_equal(retry_budget_try_spend(&b, 5500), 0);
    assert_int_equal(retry_budget_try_spend(&b, 9999), 0);

    /* the requests at 0 fall out: 3 + 0.2 * 10 = 5 < 7 spent */
    assert_int_equal(retry_budget_try_spend(&b, 10000), 0);
    assert_int_equal(b.nrequests, 10);
    assert_int_equal(b.nretries, 7);

    /* at 15 s the bucket of 5 s (requests and retries) falls out */
    assert_int_equal(retry_budget_try_spend(&b, 15000), 1);
    assert_int_equal(b.nrequests, 0);
    assert_int_equal(b.nretries, 1);
    assert_int_equal(retry_budget_try_spend(&b, 15001), 1);
    assert_int_equal(retry_budget_try_spend(&b, 15002), 1);
    assert_int_equal(retry_budget_try_spend(&b, 15003), 0);

    /* a long quiet gap empties the window */
    assert_int_equal(retry_budget_try_spend(&b, 1000000), 1);
    assert_int_equal(b.nretries, 1);
    assert_int_equal(b.nrequests, 0);
}

static void test_budget_clock_backwards(void **state)
{
    struct retry_params p = params(BACKOFF_EXPONENTIAL, JITTER_FULL);
    struct retry_budget b;

    (void)state;
    retry_budget_init(&b, &p);
    retry_budget_note_request(&b, 50000);
    assert_int_equal(retry_budget_try_spend(&b, 40000), 1);   /* counted, not lost */
    assert_int_equal(b.nretries, 1);
    assert_int_equal(b.nrequests, 1);
    /* and it leaves with the newest bucket */
    assert_int_equal(retry_budget_try_spend(&b, 60000), 1);
    assert_int_equal(b.nretries, 1);
}

static void test_budget_zero(void **state)
{
    struct retry_params p = params(BACKOFF_EXPONENTIAL, JITTER_FULL);
    struct retry_budget b;
    int i;

    (void)state;
    p.budget_ratio = 0;
    p.budget_min_retries = 0;
    retry_budget_init(&b, &p);
    for (i = 0; i < 100; i++)
        retry_budget_note_request(&b, i);
    assert_int_equal(retry_budget_try_spend(&b, 100), 0);

    /* a window under RETRY_BUDGET_BUCKETS ms is taken as that many ms */
    p.budget_window_ms = 0;
    p.budget_min_retries = 1;
    retry_budget_set_params(&b, &p);
    assert_int_equal(b.bucket_ms, 1);
    assert_int_equal(retry_budget_try_spend(&b, 200), 1);
    assert_int_equal(retry_budget_try_spend(&b, 200), 0);
    assert_int_equal(retry_budget_try_spend(&b, 200 + RETRY_BUDGET_BUCKETS - 1), 0);
    assert_int_equal(retry_budget_try_spend(&b, 200 + RETRY_BUDGET_BUCKETS), 1);
}

static void test_budget_set_params(void **state)
{
    struct retry_params p = params(BACKOFF_EXPONENTIAL, JITTER_FULL);
    struct retry_budget b;

    (void)state;
    retry_budget_init(&b, &p);
    assert_int_equal(retry_budget_try_spend(&b, 0), 1);
    assert_int_equal(retry_budget_try_spend(&b, 0), 1);
    assert_int_equal(retry_budget_try_spend(&b, 0), 1);
    assert_int_equal(retry_budget_try_spend(&b, 0), 0);

    /* same window: counts kept, a larger allowance applies at once */
    p.budget_min_retries = 4;
    retry_budget_set_params(&b, &p);
    assert_int_equal(b.nretries, 3);
    assert_int_equal(retry_budget_try_spend(&b, 1), 1);
    assert_int_equal(retry_budget_try_spend(&b, 1), 0);

    /* another window length: counts start over */
    p.budget_window_ms = 20000;
    retry_budget_set_params(&b, &p);
    assert_int_equal(b.nretries, 0);
    assert_int_equal(b.bucket_ms, 2000);
    assert_int_equal(retry_budget_try_spend(&b, 2), 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exponential_no_jitter),
        cmocka_unit_test(test_linear_no_jitter),
        cmocka_unit_test(test_fixed_no_jitter),
        cmocka_unit_test(test_zero_initial),
        cmocka_unit_test(test_full_jitter_bounds),
        cmocka_unit_test(test_equal_jitter_bounds),
        cmocka_unit_test(test_jitter_exact_values),
        cmocka_unit_test(test_rand),
        cmocka_unit_test(test_delay_with_retry_after),
        cmocka_unit_test(test_retry_after_seconds),
        cmocka_unit_test(test_retry_after_dates),
        cmocka_unit_test(test_retry_after_rfc850_century),
        cmocka_unit_test(test_retry_after_garbage),
        cmocka_unit_test(test_classify_defaults),
        cmocka_unit_test(test_classify_nothing_on),
        cmocka_unit_test(test_classify_classes_and_codes),
        cmocka_unit_test(test_params_from_config),
        cmocka_unit_test(test_budget_min_retries),
        cmocka_unit_test(test_budget_ratio),
        cmocka_unit_test(test_budget_window_slides),
        cmocka_unit_test(test_budget_clock_backwards),
        cmocka_unit_test(test_budget_zero),
        cmocka_unit_test(test_budget_set_params),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
