/*
 * test_alerts.c -- alert rules (src/core/alerts.c) with injected time: fire once
 * after `for`, never again while firing, resolve once, no flapping, per
 * host versus global, the p99 estimator's accuracy, reconfiguration, and
 * the payload shapes. No event loop: notifications are not sent (the
 * alerts are made without one), events are caught by the hook.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <cmocka.h>

#include "alerts.h"
#include "metrics.h"

#define SEC         1000
#define MIN         (60 * SEC)
#define UNIX0       1700000000000LL     /* wall clock at monotonic 0 */
#define MAX_EVENTS  64
#define BUCKET_RATIO 1.18920711500272   /* 2^(1/4): one estimator bucket */
#define LAT_RANGE   1024.0              /* the estimator spans threshold / and x this */

struct seen {
    size_t n;
    struct {
        enum alerts_rule rule;
        char host[64];
        int global;
        int firing;
        int has_value;
        double value;
        double threshold;
        int64_t since, at;
    } ev[MAX_EVENTS];
};

static void hook(void *arg, const struct alerts_event *e)
{
    struct seen *s = arg;

    assert_true(s->n < MAX_EVENTS);
    s->ev[s->n].rule = e->rule;
    s->ev[s->n].global = e->host == NULL;
    snprintf(s->ev[s->n].host, sizeof(s->ev[s->n].host), "%s", e->host ? e->host : "");
    s->ev[s->n].firing = e->firing;
    s->ev[s->n].has_value = e->has_value;
    s->ev[s->n].value = e->value;
    s->ev[s->n].threshold = e->threshold;
    s->ev[s->n].since = e->since_unix_ms;
    s->ev[s->n].at = e->at_unix_ms;
    s->n++;
}

static void cfg_init(struct config *c, int64_t window, int64_t for_ms)
{
    memset(c, 0, sizeof(*c));
    c->alerts.window_ms = window;
    c->alerts.for_ms = for_ms;
    c->alerts.availability = -1;
    c->alerts.error_rate = -1;
    c->alerts.latency_p99_ms = 0;
}

static struct alerts *make(const struct config *c, struct seen *s)
{
    struct alerts *a = alerts_new(NULL, NULL, NULL);

    assert_non_null(a);
    assert_int_equal(alerts_configure(a, c), 0);
    memset(s, 0, sizeof(*s));
    alerts_set_hook(a, hook, s);
    return a;
}

static size_t tick(struct alerts *a, int64_t t)
{
    return alerts_tick(a, t, UNIX0 + t);
}

/* n observations at time t for host (NULL = global), ok as given. */
static void observe_n(struct alerts *a, const char *host, int n, int ok,
                      double ms, int64_t t)
{
    int i;

    for (i = 0; i < n; i++)
        alerts_observe(a, host, ok, ms, t);
}

static void test_fires_once_after_for(void **state)
{
    struct config c;
    struct seen s;
    struct alerts *a;
    int64_t t;

    (void)state;
    cfg_init(&c, MIN, 10 * SEC);
    c.alerts.availability = 0.9;
    a = make(&c, &s);
    /* Condition holds from t = 0 on: failing traffic every second. */
    for (t = 0; t < 10 * SEC; t += SEC) {
        observe_n(a, NULL, 5, 0, 10, t);
        assert_int_equal(tick(a, t), 0);
    }
    assert_int_equal(s.n, 0);
    observe_n(a, NULL, 5, 0, 10, t);
    assert_int_equal(tick(a, t), 1);            /* t = 10 s: held for `for` */
    assert_int_equal(s.n, 1);
    assert_int_equal(s.ev[0].rule, ALERTS_AVAILABILITY);
    assert_true(s.ev[0].global);
    assert_true(s.ev[0].firing);
    assert_true(s.ev[0].has_value);
    assert_float_equal(s.ev[0].value, 0.0, 1e-9);
    assert_float_equal(s.ev[0].threshold, 0.9, 1e-9);
    assert_int_equal(s.ev[0].since, UNIX0);      /* when the condition began */
    assert_int_equal(s.ev[0].at, UNIX0 + 10 * SEC);
    /* Still failing for a long time: no second event. */
    for (t = 11 * SEC; t < 10 * MIN; t += SEC) {
        observe_n(a, NULL, 5, 0, 10, t);
        assert_int_equal(tick(a, t), 0);
    }
    assert_int_equal(s.n, 1);
    alerts_free(a);
}

static void test_pending_that_clears_never_fires(void **state)
{
    struct config c;
    struct seen s;
    struct alerts *a;
    int64_t t;

    (void)state;
    cfg_init(&c, 10 * SEC, 5 * SEC);
    c.alerts.error_rate = 0.5;
    a = make(&c, &s);
    /* Bad for 4 s (less than `for`), then good traffic drowns it. */
    for (t = 0; t < 4 * SEC; t += SEC) {
        observe_n(a, NULL, 2, 0, 10, t);
        tick(a, t);
    }
    for (; t < 2 * MIN; t += SEC) {
        observe_n(a, NULL, 20, 1, 10, t);
        tick(a, t);
    }
    assert_int_equal(s.n, 0);
    alerts_free(a);
}

static void test_resolves_once(void **state)
{
    struct config c;
    struct seen s;
    struct alerts *a;
    int64_t t, cleared = -1;
    double v;

    (void)state;
    cfg_init(&c, 30 * SEC, 5 * SEC);
    c.alerts.availability = 0.9;
    a = make(&c, &s);
    for (t = 0; t <= 5 * SEC; t += SEC) {
        observe_n(a, NULL, 10, 0, 10, t);
        tick(a, t);
    }
    assert_int_equal(s.n, 1);
    /* Recovery: only successes from now on. */
    for (; t < 3 * MIN; t += SEC) {
        observe_n(a, NULL, 10, 1, 10, t);
        tick(a, t);
        if (cleared < 0 && alerts_value(a, NULL, ALERTS_AVAILABILITY, t, &v, NULL) && v >= 0.9)
            cleared = t;
    }
    assert_true(cleared > 0);
    assert_int_equal(s.n, 2);
    assert_false(s.ev[1].firing);
    assert_true(s.ev[1].global);
    assert_true(s.ev[1].has_value);
    assert_true(s.ev[1].value >= 0.9);
    /* Exactly when the condition has been clear for max(for,
     * ALERTS_RESOLVE_MIN_MS), here `for`. */
    assert_true(5 * SEC > ALERTS_RESOLVE_MIN_MS);
    assert_int_equal(s.ev[1].at - UNIX0, cleared + 5 * SEC);
    assert_int_equal(s.ev[1].since, s.ev[0].since);
    alerts_free(a);
}

/* A value hovering on the threshold flips the condition every tick; the
 * alert fires once and neither resolves nor fires again while it does. */
static void test_no_flapping(void **state)
{
    struct config c;
    struct seen s;
    struct alerts *a;
    int64_t t;
    double v;
    int flips = 0, last = -1;

    (void)state;
    cfg_init(&c, SEC, 0);                       /* 1 s window, `for` 0 */
    c.alerts.error_rate = 0.5;
    a = make(&c, &s);
    for (t = 0; t < 5 * MIN; t += SEC) {
        int bad = (t / SEC) % 2 == 0;
        observe_n(a, NULL, 10, !bad, 10, t);
        tick(a, t);
        assert_int_equal(alerts_value(a, NULL, ALERTS_ERROR_RATE, t, &v, NULL), 1);
        if (last >= 0 && (v > 0.5) != last)
            flips++;
        last = v > 0.5;
    }
    assert_true(flips > 100);                   /* it really did flap */
    assert_int_equal(s.n, 1);
    assert_true(s.ev[0].firing);
    /* Once it stays good, one resolve. */
    for (; t < 6 * MIN; t += SEC) {
        observe_n(a, NULL, 10, 1, 10, t);
        tick(a, t);
    }
    assert_int_equal(s.n, 2);
    assert_false(s.ev[1].firing);
    alerts_free(a);
}

static void test_per_host_and_global(void **state)
{
    struct config c;
    struct seen s;
    struct alerts *a;
    struct alerts_counters cnt;
    json_t *st;
    int64_t t;

    (void)state;
    cfg_init(&c, MIN, 0);
    c.alerts.availability = 0.8;
    a = make(&c, &s);
    for (t = 0; t < 5 * SEC; t += SEC) {
        observe_n(a, "gpu-a", 10, 0, 10, t);    /* attempts on gpu-a fail */
        observe_n(a, "gpu-b", 10, 1, 10, t);    /* gpu-b is fine */
        observe_n(a, NULL, 10, 1, 10, t);       /* clients still served */
        tick(a, t);
    }
    assert_int_equal(s.n, 1);
    assert_false(s.ev[0].global);
    assert_string_equal(s.ev[0].host, "gpu-a");
    alerts_get_counters(a, &cnt);
    assert_int_equal(cnt.firing[ALERTS_AVAILABILITY], 1);
    assert_int_equal(cnt.fired, 1);

    st = alerts_status_json(a);
    assert_int_equal(json_array_size(st), 1);
    assert_string_equal(json_string_value(json_object_get(json_array_get(st, 0), "host")), "gpu-a");
    assert_string_equal(json_string_value(json_object_get(json_array_get(st, 0), "scope")), "host");
    assert_string_equal(json_string_value(json_object_get(json_array_get(st, 0), "alert")), "availability");
    json_decref(st);

    /* Now the global scope goes bad too: its own alert, once. */
    for (; t < 10 * SEC; t += SEC) {
        observe_n(a, "gpu-a", 10, 0, 10, t);
        observe_n(a, NULL, 100, 0, 10, t);
        tick(a, t);
    }
    assert_int_equal(s.n, 2);
    assert_true(s.ev[1].global);
    alerts_get_counters(a, &cnt);
    assert_int_equal(cnt.firing[ALERTS_AVAILABILITY], 2);
    alerts_export_metrics(&cnt);                /* must not crash; values checked in metrics */
    alerts_free(a);
}

/* A host that stops being seen: its window empties, its alert resolves
 * (no data), and its scope goes away. */
static void test_host_going_quiet_resolves(void **state)
{
    struct config c;
    struct seen s;
    struct alerts *a;
    int64_t t;
    double v;

    (void)state;
    cfg_init(&c, 10 * SEC, 0);
    c.alerts.availability = 0.9;
    a = make(&c, &s);
    observe_n(a, "gone", 10, 0, 10, 0);
    tick(a, 0);
    assert_int_equal(s.n, 1);
    for (t = SEC; t < MIN; t += SEC)
        tick(a, t);
    assert_int_equal(s.n, 2);
    assert_false(s.ev[1].firing);
    assert_false(s.ev[1].has_value);
    assert_int_equal(alerts_value(a, "gone", ALERTS_AVAILABILITY, t, &v, NULL), 0);
    alerts_free(a);
}

static void test_window_slides(void **state)
{
    struct config c;
    struct seen s;
    struct alerts *a;
    uint64_t n;
    double v;

    (void)state;
    cfg_init(&c, 30 * SEC, MIN);
    c.alerts.availability = 0.5;
    a = make(&c, &s);
    observe_n(a, NULL, 30, 0, 10, 0);
    observe_n(a, NULL, 10, 1, 10, 20 * SEC);
    assert_int_equal(alerts_value(a, NULL, ALERTS_AVAILABILITY, 20 * SEC, &v, &n), 1);
    assert_int_equal(n, 40);
    assert_float_equal(v, 0.25, 1e-9);
    /* 35 s later the failures at t = 0 are out, the successes still in. */
    assert_int_equal(alerts_value(a, NULL, ALERTS_AVAILABILITY, 35 * SEC, &v, &n), 1);
    assert_int_equal(n, 10);
    assert_float_equal(v, 1.0, 1e-9);
    assert_int_equal(alerts_value(a, NULL, ALERTS_AVAILABILITY, 2 * MIN, &v, &n), 0);
    alerts_free(a);
}

static int cmp_double(const void *x, const void *y)
{
    double a = *(const double *)x, b = *(const double *)y;
    return a < b ? -1 : a > b;
}

/* Nearest-rank p99 of v[0..n). Sorts v. */
static double true_p99(double *v, size_t n)
{
    size_t rank = (size_t)ceil(0.99 * (double)n);

    qsort(v, n, sizeof(*v), cmp_double);
    return v[rank - 1];
}

static uint64_t lcg(uint64_t *x)
{
    *x = *x * 6364136223846793005ULL + 1442695040888963407ULL;
    return *x >> 33;
}

static void test_p99_within_a_bucket(void **state)
{
    enum { N = 5000, KINDS = 4 };
    static const int64_t thresholds[] = { 100, 1000, 30000 };
    static double v[N];
    struct config c;
    struct seen s;
    size_t ti, kind, i;
    int checked = 0;

    (void)state;
    for (ti = 0; ti < sizeof(thresholds) / sizeof(thresholds[0]); ti++) {
        for (kind = 0; kind < KINDS; kind++) {
            struct alerts *a;
            uint64_t seed = 42 + kind, n;
            double est, truth;

            cfg_init(&c, MIN, 0);
            c.alerts.latency_p99_ms = thresholds[ti];
            a = make(&c, &s);
            for (i = 0; i < N; i++) {
                double u = (double)(lcg(&seed) % 1000000) / 1000000.0;
                switch (kind) {
                case 0: v[i] = 1 + u * 999; break;                    /* uniform 1..1000 ms */
                case 1: v[i] = -log(1 - u) * 200; break;              /* exponential, mean 200 ms */
                case 2: v[i] = 50 * exp(u * 6); break;                /* log-uniform 50 ms..20 s */
                default: v[i] = i % 100 == 0 ? 5000 : 20; break;      /* 1% slow outliers */
                }
                alerts_observe(a, NULL, 1, v[i], 0);
            }
            assert_int_equal(alerts_value(a, NULL, ALERTS_LATENCY_P99, 0, &est, &n), 1);
            assert_int_equal(n, N);
            est *= 1000;                         /* seconds -> ms */
            truth = true_p99(v, N);
            if (truth <= thresholds[ti] / LAT_RANGE) {
                /* Below the estimator's range: only "small" is known. */
                assert_true(est <= thresholds[ti] / LAT_RANGE + 1e-9);
            } else {
                assert_true(est <= truth * BUCKET_RATIO + 1e-9);
                assert_true(est >= truth / BUCKET_RATIO - 1e-9);
                checked++;
            }
            alerts_free(a);
        }
    }
    assert_true(checked >= 10);
}

/* The threshold is a bucket bound, so the decision is exact: p99 equal to
 * the threshold does not fire, a hair above does. */
static void test_p99_decision_exact_at_threshold(void **state)
{
    struct config c;
    struct seen s;
    struct alerts *a;
    int i;

    (void)state;
    cfg_init(&c, MIN, 0);
    c.alerts.latency_p99_ms = 800;
    a = make(&c, &s);
    for (i = 0; i < 1000; i++)
        alerts_observe(a, "h", 1, i < 980 ? 100 : 800, 0);   /* p99 = 800 exactly */
    tick(a, 0);
    assert_int_equal(s.n, 0);
    for (i = 0; i < 20; i++)
        alerts_observe(a, "h", 1, 800.5, 0);                 /* now p99 = 800.5 */
    tick(a, 0);
    assert_int_equal(s.n, 1);
    assert_int_equal(s.ev[0].rule, ALERTS_LATENCY_P99);
    assert_string_equal(s.ev[0].host, "h");
    assert_true(s.ev[0].value > 0.8);
    assert_true(s.ev[0].value <= 0.8 * BUCKET_RATIO);
    assert_float_equal(s.ev[0].threshold, 0.8, 1e-9);
    alerts_free(a);
}

static void test_error_rate_and_rule_turned_off(void **state)
{
    struct config c;
    struct seen s;
    struct alerts *a;

    (void)state;
    cfg_init(&c, MIN, 0);
    c.alerts.error_rate = 0.1;
    a = make(&c, &s);
    observe_n(a, NULL, 8, 1, 10, 0);
    observe_n(a, NULL, 2, 0, 10, 0);            /* 20% errors */
    tick(a, 0);
    assert_int_equal(s.n, 1);
    assert_int_equal(s.ev[0].rule, ALERTS_ERROR_RATE);
    assert_float_equal(s.ev[0].value, 0.2, 1e-9);
    /* A reload that turns the rule off resolves it at the next tick. */
    c.alerts.error_rate = -1;
    assert_int_equal(alerts_configure(a, &c), 0);
    tick(a, SEC);
    assert_int_equal(s.n, 2);
    assert_false(s.ev[1].firing);
    assert_int_equal(s.ev[1].rule, ALERTS_ERROR_RATE);
    assert_float_equal(s.ev[1].threshold, 0.1, 1e-9);   /* the one it fired on */
    tick(a, 2 * SEC);
    assert_int_equal(s.n, 2);
    alerts_free(a);
}

/* A reload with the same window keeps the data and the firing state. */
static void test_reload_keeps_state(void **state)
{
    struct config c;
    struct seen s;
    struct alerts *a;
    int64_t t;

    (void)state;
    cfg_init(&c, MIN, 0);
    c.alerts.availability = 0.9;
    a = make(&c, &s);
    observe_n(a, NULL, 10, 0, 10, 0);
    tick(a, 0);
    assert_int_equal(s.n, 1);
    c.alerts.availability = 0.95;               /* new threshold, same window */
    assert_int_equal(alerts_configure(a, &c), 0);
    for (t = SEC; t < 30 * SEC; t += SEC) {
        observe_n(a, NULL, 10, 0, 10, t);
        tick(a, t);
    }
    assert_int_equal(s.n, 1);                   /* no re-fire */
    alerts_free(a);
}

static void test_observe_without_rules_is_noop(void **state)
{
    struct config c;
    struct seen s;
    struct alerts *a;
    double v;

    (void)state;
    cfg_init(&c, MIN, 0);
    a = make(&c, &s);
    observe_n(a, "x", 10, 0, 10, 0);
    assert_int_equal(tick(a, 0), 0);
    assert_int_equal(alerts_value(a, "x", ALERTS_AVAILABILITY, 0, &v, NULL), 0);
    assert_int_equal(alerts_pending(a), 0);
    alerts_free(a);
}

static void test_payload_shapes(void **state)
{
    struct alerts_event ev;
    json_t *j, *att, *f;

    (void)state;
    memset(&ev, 0, sizeof(ev));
    ev.rule = ALERTS_LATENCY_P99;
    ev.host = "gpu-a";
    ev.firing = 1;
    ev.has_value = 1;
    ev.value = 2.5;
    ev.threshold = 1.0;
    ev.samples = 123;
    ev.since_unix_ms = UNIX0;
    ev.at_unix_ms = UNIX0 + MIN;
    ev.window_ms = 5 * MIN;
    ev.for_ms = MIN;

    j = alerts_event_json(&ev);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "alert")), "latency_p99");
    assert_string_equal(json_string_value(json_object_get(j, "state")), "firing");
    assert_string_equal(json_string_value(json_object_get(j, "scope")), "host");
    assert_string_equal(json_string_value(json_object_get(j, "host")), "gpu-a");
    assert_float_equal(json_real_value(json_object_get(j, "value")), 2.5, 1e-9);
    assert_float_equal(json_real_value(json_object_get(j, "threshold")), 1.0, 1e-9);
    assert_string_equal(json_string_value(json_object_get(j, "unit")), "seconds");
    assert_int_equal(json_integer_value(json_object_get(j, "samples")), 123);
    assert_string_equal(json_string_value(json_object_get(j, "since")), "2023-11-14T22:13:20Z");
    assert_float_equal(json_real_value(json_object_get(j, "window_seconds")), 300, 1e-9);
    assert_non_null(strstr(json_string_value(json_object_get(j, "summary")),
                           "latency_p99 on host gpu-a: 2.50s > 1.00s over 5m"));
    json_decref(j);

    j = alerts_slack_json(&ev);
    assert_non_null(j);
    assert_non_null(strstr(json_string_value(json_object_get(j, "text")), "[FIRING]"));
    att = json_array_get(json_object_get(j, "attachments"), 0);
    assert_non_null(att);
    assert_string_equal(json_string_value(json_object_get(att, "color")), "danger");
    f = json_object_get(att, "fields");
    assert_int_equal(json_array_size(f), 4);
    assert_string_equal(json_string_value(json_object_get(json_array_get(f, 0), "value")), "2.50s");
    json_decref(j);

    /* Resolved with no data in the window; global scope. */
    ev.firing = 0;
    ev.has_value = 0;
    ev.host = NULL;
    ev.rule = ALERTS_AVAILABILITY;
    ev.threshold = 0.99;
    j = alerts_event_json(&ev);
    assert_string_equal(json_string_value(json_object_get(j, "state")), "resolved");
    assert_string_equal(json_string_value(json_object_get(j, "scope")), "global");
    assert_true(json_is_null(json_object_get(j, "host")));
    assert_true(json_is_null(json_object_get(j, "value")));
    assert_string_equal(json_string_value(json_object_get(j, "unit")), "ratio");
    json_decref(j);
    j = alerts_slack_json(&ev);
    att = json_array_get(json_object_get(j, "attachments"), 0);
    assert_string_equal(json_string_value(json_object_get(att, "color")), "good");
    json_decref(j);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fires_once_after_for),
        cmocka_unit_test(test_pending_that_clears_never_fires),
        cmocka_unit_test(test_resolves_once),
        cmocka_unit_test(test_no_flapping),
        cmocka_unit_test(test_per_host_and_global),
        cmocka_unit_test(test_host_going_quiet_resolves),
        cmocka_unit_test(test_window_slides),
        cmocka_unit_test(test_p99_within_a_bucket),
        cmocka_unit_test(test_p99_decision_exact_at_threshold),
        cmocka_unit_test(test_error_rate_and_rule_turned_off),
        cmocka_unit_test(test_reload_keeps_state),
        cmocka_unit_test(test_observe_without_rules_is_noop),
        cmocka_unit_test(test_payload_shapes),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
