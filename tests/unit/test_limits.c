/*
 * test_limits.c -- the pure limiter (src/core/limiter.c): windows, reservations,
 * reconciliation, concurrency and calendar budgets, with made-up times.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "limiter.h"

#define T0 1767225600000LL    /* 2026-01-01T00:00:00Z */
#define W  60000

static struct limits_cfg cfg(int64_t rpm, int64_t tpm, int64_t conc, int64_t day, int64_t month)
{
    struct limits_cfg c = { rpm, tpm, conc, day, month };
    return c;
}

static void test_rpm_window(void **st)
{
    struct limits_cfg c = cfg(3, 0, 0, 0, 0);
    struct limits_state s;
    struct limits_ticket t;
    struct limits_view v;
    int i;

    (void)st;
    memset(&s, 0, sizeof(s));
    for (i = 0; i < 3; i++) {
        assert_int_equal(limits_admit(&c, &s, T0 + 10 + i, W, 0, 0, &t, &v), LIMITS_OK);
        assert_int_equal(v.req_remaining, 2 - i);
        limits_settle(&s, &t, T0 + 20, W, 0, 0);
    }
    assert_int_equal(limits_admit(&c, &s, T0 + 30000, W, 0, 0, &t, &v), LIMITS_RPM);
    assert_int_equal(v.req_limit, 3);
    assert_int_equal(v.reset_ms, 30000);
    assert_int_equal(v.retry_after_s, 30);
    assert_int_equal(s.limited, 1);
    /* the next window starts empty */
    assert_int_equal(limits_admit(&c, &s, T0 + W, W, 0, 0, &t, &v), LIMITS_OK);
    assert_int_equal(v.req_remaining, 2);
}

static void test_short_window_scales(void **st)
{
    (void)st;
    assert_int_equal(limits_per_window(120, 1000), 2);
    assert_int_equal(limits_per_window(120, 60000), 120);
    assert_int_equal(limits_per_window(10, 1000), 1);   /* at least one */
    assert_int_equal(limits_per_window(0, 1000), 0);
}

static void test_tpm_reservation_and_settle(void **st)
{
    struct limits_cfg c = cfg(0, 1000, 0, 0, 0);
    struct limits_state s;
    struct limits_ticket t1, t2;
    struct limits_view v;

    (void)st;
    memset(&s, 0, sizeof(s));
    assert_int_equal(limits_admit(&c, &s, T0, W, 600, 100, &t1, &v), LIMITS_OK);
    assert_int_equal(v.tok_remaining, 400);
    /* 600 reserved: another 600 does not fit */
    assert_int_equal(limits_admit(&c, &s, T0 + 1, W, 600, 100, &t2, &v), LIMITS_TPM);
    /* the first really used 150: room again */
    limits_settle(&s, &t1, T0 + 2, W, 100, 50);
    assert_int_equal(s.win_tok, 150);
    assert_int_equal(limits_admit(&c, &s, T0 + 3, W, 600, 100, &t2, &v), LIMITS_OK);
    /* settled in a later window: that window is not touched */
    limits_settle(&s, &t2, T0 + W + 1, W, 100, 400);
    assert_int_equal(s.win_tok, 0);
    assert_int_equal(s.day_in, 200);
    assert_int_equal(s.day_out, 450);
}

static void test_tpm_big_request_into_empty_window(void **st)
{
    struct limits_cfg c = cfg(0, 100, 0, 0, 0);
    struct limits_state s;
    struct limits_ticket t;
    struct limits_view v;

    (void)st;
    memset(&s, 0, sizeof(s));
    assert_int_equal(limits_admit(&c, &s, T0, W, 500, 10, &t, &v), LIMITS_OK);
    assert_int_equal(limits_admit(&c, &s, T0 + 1, W, 1, 1, &t, &v), LIMITS_TPM);
}

static void test_concurrency(void **st)
{
    struct limits_cfg c = cfg(0, 0, 2, 0, 0);
    struct limits_state s;
    struct limits_ticket a, b, x;
    struct limits_view v;

    (void)st;
    memset(&s, 0, sizeof(s));
    assert_int_equal(limits_admit(&c, &s, T0, W, 0, 0, &a, &v), LIMITS_OK);
    assert_int_equal(limits_admit(&c, &s, T0, W, 0, 0, &b, &v), LIMITS_OK);
    assert_int_equal(limits_admit(&c, &s, T0, W, 0, 0, &x, &v), LIMITS_CONCURRENT);
    assert_int_equal(v.retry_after_s, 1);
    limits_settle(&s, &a, T0 + 5, W, 0, 0);
    assert_int_equal(limits_admit(&c, &s, T0 + 6, W, 0, 0, &x, &v), LIMITS_OK);
}

static void test_day_budget(void **st)
{
    struct limits_cfg c = cfg(0, 0, 0, 100, 0);
    struct limits_state s;
    struct limits_ticket a, b;
    struct limits_view v;

    (void)st;
    memset(&s, 0, sizeof(s));
    assert_int_equal(limits_admit(&c, &s, T0, W, 50, 10, &a, &v), LIMITS_OK);
    /* in flight: a second is admitted, budget is checked on what was used */
    assert_int_equal(limits_admit(&c, &s, T0, W, 50, 10, &b, &v), LIMITS_OK);
    limits_settle(&s, &a, T0 + 1, W, 10, 80);     /* runs out mid-stream */
    limits_settle(&s, &b, T0 + 2, W, 10, 10);
    assert_int_equal(limits_day_left(&c, &s, T0 + 3), 0);
    assert_int_equal(limits_admit(&c, &s, T0 + 3, W, 1, 1, &a, &v), LIMITS_DAY);
    assert_true(v.retry_after_s > 86000);
    /* the next UTC day has a fresh budget */
    assert_int_equal(limits_day_left(&c, &s, T0 + 86400000), 100);
    assert_int_equal(limits_admit(&c, &s, T0 + 86400000, W, 1, 1, &a, &v), LIMITS_OK);
}

static void test_month_budget_calendar(void **st)
{
    struct limits_cfg c = cfg(0, 0, 0, 0, 100);
    struct limits_state s;
    struct limits_ticket a;
    struct limits_view v;
    int64_t d, m;

    (void)st;
    limits_calendar(T0, &d, &m);
    assert_int_equal(m, 2026 * 12 + 0);
    limits_calendar(T0 - 1, &d, &m);               /* 2025-12-31T23:59:59.999 */
    assert_int_equal(m, 2025 * 12 + 11);
    limits_calendar(1772323200000LL, &d, &m);      /* 2026-03-01 */
    assert_int_equal(m, 2026 * 12 + 2);
    limits_calendar(1772323199999LL, &d, &m);      /* 2026-02-28 end */
    assert_int_equal(m, 2026 * 12 + 1);
    memset(&s, 0, sizeof(s));
    assert_int_equal(limits_admit(&c, &s, T0, W, 0, 0, &a, &v), LIMITS_OK);
    limits_settle(&s, &a, T0, W, 60, 40);
    assert_int_equal(limits_month_left(&c, &s, T0 + 86400000 * 5LL), 0);
    assert_int_equal(limits_admit(&c, &s, T0 + 86400000 * 5LL, W, 0, 0, &a, &v), LIMITS_MONTH);
    assert_int_equal(limits_month_left(&c, &s, 1769904000000LL), 100);   /* 2026-02-01 */
    { struct limits_cfg z = cfg(0, 0, 0, 0, 0); assert_int_equal(limits_month_left(&z, &s, T0), -1); }
}

/* A peek shows the window as it stands and admits nothing. */
static void test_peek_admits_nothing(void **st)
{
    struct limits_cfg c = {.rpm = 2};
    struct limits_state s;
    struct limits_ticket t;
    struct limits_view v;

    (void)st;
    memset(&s, 0, sizeof(s));
    assert_int_equal(limits_admit(&c, &s, 1000, 60000, 1, 1, &t, &v), LIMITS_OK);
    limits_peek(&c, &s, 2000, 60000, &v);
    assert_int_equal(v.req_limit, 2);
    assert_int_equal(v.req_remaining, 1);
    limits_peek(&c, &s, 3000, 60000, &v);
    assert_int_equal(v.req_remaining, 1);
    assert_int_equal(s.requests, 1);
    limits_peek(&c, &s, 61000, 60000, &v);      /* the next window */
    assert_int_equal(v.req_remaining, 2);
}

static void test_changed_limit_applies_at_once(void **st)
{
    struct limits_cfg c = cfg(10, 0, 0, 0, 0);
    struct limits_state s;
    struct limits_ticket t;
    struct limits_view v;
    int i;

    (void)st;
    memset(&s, 0, sizeof(s));
    for (i = 0; i < 5; i++)
        assert_int_equal(limits_admit(&c, &s, T0 + i, W, 0, 0, &t, &v), LIMITS_OK);
    c.rpm = 5;   /* a reload lowers it: the counts kept by name apply */
    assert_int_equal(limits_admit(&c, &s, T0 + 9, W, 0, 0, &t, &v), LIMITS_RPM);
    assert_string_equal(limits_verdict_name(LIMITS_RPM), "rpm");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rpm_window),
        cmocka_unit_test(test_short_window_scales),
        cmocka_unit_test(test_tpm_reservation_and_settle),
        cmocka_unit_test(test_tpm_big_request_into_empty_window),
        cmocka_unit_test(test_concurrency),
        cmocka_unit_test(test_day_budget),
        cmocka_unit_test(test_month_budget_calendar),
        cmocka_unit_test(test_changed_limit_applies_at_once),
        cmocka_unit_test(test_peek_admits_nothing),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
