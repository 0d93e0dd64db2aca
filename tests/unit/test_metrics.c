/*
 * test_metrics.c -- the metrics registry (src/app/metrics.c): what each update
 * adds, how it renders (families, labels, escaping, cumulative histogram
 * buckets, +Inf, _sum, _count), the model cap, the request-series table
 * (overflow, removal of a host's series) and the label helpers.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <event2/buffer.h>

#include "metrics.h"

#define MANY_HOSTS 64

/* The whole exposition as a NUL-terminated string; caller frees. */
static char *render(void)
{
    struct evbuffer *b = evbuffer_new();
    size_t n;
    char *s;

    assert_non_null(b);
    assert_int_equal(metrics_render(b), 0);
    n = evbuffer_get_length(b);
    s = malloc(n + 1);
    assert_non_null(s);
    evbuffer_remove(b, s, n);
    s[n] = '\0';
    evbuffer_free(b);
    return s;
}

/* 1 if `line` is one whole line of `text`. */
static int has_line(const char *text, const char *line)
{
    size_t n = strlen(line);
    const char *p = text;

    while ((p = strstr(p, line)) != NULL) {
        if ((p == text || p[-1] == '\n') && p[n] == '\n')
            return 1;
        p++;
    }
    return 0;
}

static int count_lines_with(const char *text, const char *needle)
{
    int n = 0;
    const char *p = text;

    while ((p = strstr(p, needle)) != NULL) {
        n++;
        p += strlen(needle);
    }
    return n;
}

static void req(enum metrics_route r, int status, struct metrics_host *h,
                const char *model, double ttfb, double total, double up)
{
    struct metrics_req m = { r, status, h, model, ttfb, total, up };
    metrics_request(&m);
}

static int setup(void **state)
{
    (void)state;
    metrics_reset();
    return 0;
}

static void test_every_family_has_help_and_type(void **state)
{
    static const char *fams[][2] = {
        {"infergate_requests_total", "counter"},
        {"infergate_request_duration_seconds", "histogram"},
        {"infergate_request_ttfb_seconds", "histogram"},
        {"infergate_overhead_seconds", "histogram"},
        {"infergate_in_flight_requests", "gauge"},
        {"infergate_upstream_attempts_total", "counter"},
        {"infergate_upstream_ttfb_seconds", "histogram"},
        {"infergate_upstream_duration_seconds", "histogram"},
        {"infergate_upstream_in_flight_requests", "gauge"},
        {"infergate_stream_chunks_total", "counter"},
        {"infergate_upstream_stalls_total", "counter"},
        {"infergate_breaker_state", "gauge"},
        {"infergate_host_health", "gauge"},
        {"infergate_retries_total", "counter"},
        {"infergate_retry_budget_exhausted_total", "counter"},
        {"infergate_upstream_keys", "gauge"},
        {"infergate_config_reloads_total", "counter"},
        {"infergate_config_last_reload_successful", "gauge"},
        {"infergate_config_generation", "gauge"},
        {"infergate_alerts_firing", "gauge"},
        {"infergate_alert_notifications_total", "counter"},
        {"infergate_start_time_seconds", "gauge"},
    };
    char line[256], help[256];
    char *s;
    size_t i;

    (void)state;
    s = render();
    for (i = 0; i < sizeof(fams) / sizeof(fams[0]); i++) {
        snprintf(line, sizeof(line), "# TYPE %s %s", fams[i][0], fams[i][1]);
        assert_true(has_line(s, line));
        snprintf(help, sizeof(help), "# HELP %s ", fams[i][0]);
        assert_int_equal(count_lines_with(s, help), 1);
    }
    /* Redis is hidden until configured. */
    assert_null(strstr(s, "infergate_redis_up"));
    free(s);
    metrics_set_redis(1, 0);
    s = render();
    assert_true(has_line(s, "# TYPE infergate_redis_up gauge"));
    assert_true(has_line(s, "infergate_redis_up 0"));
    free(s);
}

static void test_requests_by_route_code_host_model(void **state)
{
    struct metrics_host *a = metrics_host_get("gpu-a");
    char *s;

    (void)state;
    req(METRICS_ROUTE_CHAT, 200, a, "llama", 10, 100, 90);
    req(METRICS_ROUTE_CHAT, 200, a, "llama", 10, 100, 90);
    req(METRICS_ROUTE_CHAT, 502, a, "llama", -1, 100, 90);
    req(METRICS_ROUTE_EMBEDDINGS, 200, a, "embed", 1, 2, 1);
    req(METRICS_ROUTE_CHAT, 503, NULL, NULL, 1, 1, 0);
    req(METRICS_ROUTE_OTHER, 42, NULL, NULL, 1, 1, 0);   /* not a status */
    s = render();
    assert_true(has_line(s, "infergate_requests_total{route=\"chat_completions\","
                            "code=\"200\",host=\"gpu-a\",model=\"llama\"} 2"));
    assert_true(has_line(s, "infergate_requests_total{route=\"chat_completions\","
                            "code=\"502\",host=\"gpu-a\",model=\"llama\"} 1"));
    assert_true(has_line(s, "infergate_requests_total{route=\"embeddings\","
                            "code=\"200\",host=\"gpu-a\",model=\"embed\"} 1"));
    assert_true(has_line(s, "infergate_requests_total{route=\"chat_completions\","
                            "code=\"503\",host=\"none\",model=\"none\"} 1"));
    assert_true(has_line(s, "infergate_requests_total{route=\"other\","
                            "code=\"0\",host=\"none\",model=\"none\"} 1"));
    /* The TTFB histogram saw only the requests with a first byte. */
    assert_true(has_line(s, "infergate_request_ttfb_seconds_count{route=\"chat_completions\"} 3"));
    assert_true(has_line(s, "infergate_request_duration_seconds_count{route=\"chat_completions\"} 4"));
    /* Routes never seen render no histogram series. */
    assert_null(strstr(s, "infergate_request_duration_seconds_count{route=\"verify\"}"));
    free(s);
    metrics_host_put(a);
}

static void test_histogram_buckets_cumulative(void **state)
{
    struct metrics_host *h = metrics_host_get("h");
    const char *p;
    char *s;
    uint64_t prev = 0, v;
    int buckets = 0;

    (void)state;
    metrics_attempt(h, METRICS_OUTCOME_SUCCESS, 3, 3);        /* <= 0.005 */
    metrics_attempt(h, METRICS_OUTCOME_SUCCESS, 5, 5);        /* == 0.005: le is inclusive */
    metrics_attempt(h, METRICS_OUTCOME_SUCCESS, 70, 70);      /* <= 0.1 */
    metrics_attempt(h, METRICS_OUTCOME_SUCCESS, 2000, 2000);  /* <= 2.5 */
    metrics_attempt(h, METRICS_OUTCOME_SUCCESS, 900000, 900000); /* above 300: +Inf only */
    metrics_attempt(h, METRICS_OUTCOME_SERVER_ERROR, -1, 1);  /* no head: no ttfb */
    s = render();
    assert_true(has_line(s, "infergate_upstream_duration_seconds_bucket{host=\"h\",le=\"0.005\"} 3"));
    assert_true(has_line(s, "infergate_upstream_duration_seconds_bucket{host=\"h\",le=\"0.05\"} 3"));
    assert_true(has_line(s, "infergate_upstream_duration_seconds_bucket{host=\"h\",le=\"0.1\"} 4"));
    assert_true(has_line(s, "infergate_upstream_duration_seconds_bucket{host=\"h\",le=\"2.5\"} 5"));
    assert_true(has_line(s, "infergate_upstream_duration_seconds_bucket{host=\"h\",le=\"300\"} 5"));
    assert_true(has_line(s, "infergate_upstream_duration_seconds_bucket{host=\"h\",le=\"+Inf\"} 6"));
    assert_true(has_line(s, "infergate_upstream_duration_seconds_count{host=\"h\"} 6"));
    assert_true(has_line(s, "infergate_upstream_duration_seconds_sum{host=\"h\"} 902.079"));
    assert_true(has_line(s, "infergate_upstream_ttfb_seconds_bucket{host=\"h\",le=\"+Inf\"} 5"));
    assert_true(has_line(s, "infergate_upstream_ttfb_seconds_count{host=\"h\"} 5"));
    assert_true(has_line(s, "infergate_upstream_attempts_total{host=\"h\",outcome=\"success\"} 5"));
    assert_true(has_line(s, "infergate_upstream_attempts_total{host=\"h\",outcome=\"server_error\"} 1"));
    assert_true(has_line(s, "infergate_upstream_attempts_total{host=\"h\",outcome=\"timeout\"} 0"));

    /* Every bucket of the series is >= the one before and +Inf is last. */
    for (p = s; (p = strstr(p, "infergate_upstream_duration_seconds_bucket{host=\"h\"")) != NULL; p++) {
        const char *sp = strchr(p, ' ');
        v = strtoull(sp + 1, NULL, 10);
        assert_true(v >= prev);
        prev = v;
        buckets++;
    }
    assert_int_equal(buckets, 16);
    assert_int_equal(prev, 6);
    free(s);
    metrics_host_put(h);
}

static void test_overhead_is_total_minus_upstream(void **state)
{
    char *s;

    (void)state;
    req(METRICS_ROUTE_CHAT, 200, NULL, "m", 1, 100.0, 99.95);   /* 50 us */
    req(METRICS_ROUTE_CHAT, 200, NULL, "m", 1, 10.0, 12.0);     /* clamped to 0 */
    req(METRICS_ROUTE_HEALTH, 200, NULL, NULL, 0.2, 0.2, 0);    /* 200 us */
    s = render();
    assert_true(has_line(s, "infergate_overhead_seconds_bucket{le=\"1e-05\"} 1"));
    assert_true(has_line(s, "infergate_overhead_seconds_bucket{le=\"5e-05\"} 2"));
    assert_true(has_line(s, "infergate_overhead_seconds_bucket{le=\"0.00025\"} 3"));
    assert_true(has_line(s, "infergate_overhead_seconds_bucket{le=\"+Inf\"} 3"));
    assert_true(has_line(s, "infergate_overhead_seconds_count 3"));
    free(s);
}

static void test_label_values_escaped(void **state)
{
    struct metrics_host *h = metrics_host_get("a\\b\"c\nd");
    char *s;

    (void)state;
    req(METRICS_ROUTE_CHAT, 200, h, "m\"1\\\n", 1, 1, 1);
    metrics_stream_chunks(h, 7);
    metrics_upstream_stall(h, 0);
    metrics_upstream_stall(h, 1);
    metrics_upstream_stall(h, 1);
    s = render();
    assert_true(has_line(s, "infergate_stream_chunks_total{host=\"a\\\\b\\\"c\\nd\"} 7"));
    assert_true(has_line(s, "infergate_upstream_stalls_total{host=\"a\\\\b\\\"c\\nd\","
                            "timeout=\"idle\"} 1"));
    assert_true(has_line(s, "infergate_upstream_stalls_total{host=\"a\\\\b\\\"c\\nd\","
                            "timeout=\"response\"} 2"));
    assert_true(has_line(s, "infergate_requests_total{route=\"chat_completions\",code=\"200\","
                            "host=\"a\\\\b\\\"c\\nd\",model=\"m\\\"1\\\\\\n\"} 1"));
    /* No raw newline leaked into a sample line. */
    assert_null(strstr(s, "c\nd"));
    free(s);
    metrics_host_put(h);
}

static void test_model_cap_and_invalid_names(void **state)
{
    char name[METRICS_MODEL_NAME_MAX + 8];
    char *s;
    int i;

    (void)state;
    for (i = 0; i < METRICS_MAX_MODELS + 50; i++) {
        snprintf(name, sizeof(name), "model-%03d", i);
        req(METRICS_ROUTE_CHAT, 200, NULL, name, 1, 1, 1);
    }
    memset(name, 'x', METRICS_MODEL_NAME_MAX);          /* too long */
    name[METRICS_MODEL_NAME_MAX] = '\0';
    req(METRICS_ROUTE_CHAT, 200, NULL, name, 1, 1, 1);
    req(METRICS_ROUTE_CHAT, 200, NULL, "model-000", 1, 1, 1);  /* known: still counted */
    s = render();
    assert_true(has_line(s, "infergate_requests_total{route=\"chat_completions\","
                            "code=\"200\",host=\"none\",model=\"model-000\"} 2"));
    assert_true(has_line(s, "infergate_requests_total{route=\"chat_completions\","
                            "code=\"200\",host=\"none\",model=\"model-199\"} 1"));
    assert_null(strstr(s, "model=\"model-200\""));
    assert_true(has_line(s, "infergate_requests_total{route=\"chat_completions\","
                            "code=\"200\",host=\"none\",model=\"other\"} 51"));
    free(s);

    /* Invalid UTF-8 is never a label value, even with room left. */
    metrics_reset();
    req(METRICS_ROUTE_CHAT, 200, NULL, "bad\xc3(", 1, 1, 1);
    req(METRICS_ROUTE_CHAT, 200, NULL, "surrogate\xed\xa0\x80", 1, 1, 1);
    req(METRICS_ROUTE_CHAT, 200, NULL, "ok-\xe2\x82\xac", 1, 1, 1);
    s = render();
    assert_true(has_line(s, "infergate_requests_total{route=\"chat_completions\","
                            "code=\"200\",host=\"none\",model=\"other\"} 2"));
    assert_true(has_line(s, "infergate_requests_total{route=\"chat_completions\","
                            "code=\"200\",host=\"none\",model=\"ok-\xe2\x82\xac\"} 1"));
    free(s);
}

static void test_series_overflow(void **state)
{
    char name[32];
    char *s;
    int i, n = METRICS_REQ_SERIES;

    (void)state;
    /* 200 models x N codes: far more combinations than the table holds. */
    for (i = 0; i < n; i++) {
        snprintf(name, sizeof(name), "m%d", i % METRICS_MAX_MODELS);
        req(METRICS_ROUTE_CHAT, 100 + i / METRICS_MAX_MODELS, NULL, name, 1, 1, 1);
    }
    s = render();
    assert_int_equal(count_lines_with(s, "infergate_requests_total{"),
                     METRICS_REQ_SERIES / 4 * 3 + 1);
    assert_true(has_line(s, "infergate_requests_total{route=\"other\",code=\"other\","
                            "host=\"other\",model=\"other\"} 1024"));
    free(s);
}

/* Putting a host removes its series and leaves every other one intact,
 * whatever the probe chains looked like. */
static void test_host_put_removes_its_series(void **state)
{
    struct metrics_host *h[MANY_HOSTS];
    char name[32], line[256];
    char *s;
    int i, code;

    (void)state;
    for (i = 0; i < MANY_HOSTS; i++) {
        snprintf(name, sizeof(name), "host-%02d", i);
        h[i] = metrics_host_get(name);
        assert_non_null(h[i]);
    }
    /* Same name again: same entry, one more reference. */
    assert_ptr_equal(metrics_host_get("host-00"), h[0]);
    metrics_host_put(h[0]);
    for (i = 0; i < MANY_HOSTS; i++)
        for (code = 200; code < 240; code++)
            req(METRICS_ROUTE_CHAT, code, h[i], "m", 1, 1, 1);
    for (i = 0; i < MANY_HOSTS; i += 2)
        metrics_host_put(h[i]);
    s = render();
    for (i = 0; i < MANY_HOSTS; i++) {
        for (code = 200; code < 240; code++) {
            snprintf(line, sizeof(line), "infergate_requests_total{route=\"chat_completions\","
                     "code=\"%d\",host=\"host-%02d\",model=\"m\"} 1", code, i);
            assert_int_equal(has_line(s, line), i % 2);
        }
        snprintf(line, sizeof(line), "infergate_breaker_state{host=\"host-%02d\"} 0", i);
        assert_int_equal(has_line(s, line), i % 2);
    }
    free(s);
    /* Counting again into the survivors finds every series (no probe
     * chain was broken by the deletions): no duplicates, all at 2. */
    for (i = 1; i < MANY_HOSTS; i += 2)
        for (code = 200; code < 240; code++)
            req(METRICS_ROUTE_CHAT, code, h[i], "m", 1, 1, 1);
    s = render();
    for (i = 1; i < MANY_HOSTS; i += 2) {
        for (code = 200; code < 240; code++) {
            snprintf(line, sizeof(line), "infergate_requests_total{route=\"chat_completions\","
                     "code=\"%d\",host=\"host-%02d\",model=\"m\"} 2", code, i);
            assert_true(has_line(s, line));
        }
    }
    assert_int_equal(count_lines_with(s, "infergate_requests_total{"),
                     MANY_HOSTS / 2 * 40);
    free(s);
    for (i = 1; i < MANY_HOSTS; i += 2)
        metrics_host_put(h[i]);
}

/* Many hosts: found again by name through the index as it grows and
 * shrinks, listed in creation order, a re-added name goes last. */
static void test_host_index_many(void **state)
{
    enum { N = 5000 };
    struct metrics_host **h = calloc(N, sizeof(*h));
    char name[32];
    char *s, *prev, *cur;
    int i;

    (void)state;
    for (i = 0; i < N; i++) {
        snprintf(name, sizeof(name), "idx-%05d", i);
        assert_non_null(h[i] = metrics_host_get(name));
    }
    for (i = 0; i < N; i += 3)
        metrics_host_put(h[i]);
    for (i = 0; i < N; i++) {
        snprintf(name, sizeof(name), "idx-%05d", i);
        if (i % 3 == 0) {
            h[i] = NULL;
            continue;
        }
        assert_ptr_equal(metrics_host_get(name), h[i]);
        metrics_host_put(h[i]);                 /* back to one reference */
    }
    h[0] = metrics_host_get("idx-00000");      /* gone, so new and last */
    s = render();
    prev = strstr(s, "infergate_breaker_state{host=\"idx-00001\"}");
    assert_non_null(prev);
    for (i = 2; i < N; i++) {
        char line[64];
        snprintf(line, sizeof(line), "infergate_breaker_state{host=\"idx-%05d\"}", i);
        cur = strstr(s, line);
        if (i % 3 == 0) {
            assert_null(cur);
            continue;
        }
        assert_true(cur > prev);
        prev = cur;
    }
    assert_true(strstr(s, "infergate_breaker_state{host=\"idx-00000\"}") > prev);
    free(s);
    for (i = 0; i < N; i++)
        if (h[i])
            metrics_host_put(h[i]);
    free(h);
}

static void test_gauges_and_events(void **state)
{
    struct metrics_host *h = metrics_host_get("gpu-b");
    char *s;

    (void)state;
    metrics_host_set_state(h, METRICS_BREAKER_HALF_OPEN, 1, 5);
    metrics_set_in_flight(9);
    metrics_set_keys(3, 2, 1);
    metrics_set_generation(7);
    metrics_set_start_time(1700000000500);
    metrics_reload(1);
    metrics_reload(1);
    metrics_reload(0);
    metrics_retry();
    metrics_retry();
    metrics_retry_budget_exhausted();
    metrics_set_alerts_firing(METRICS_ALERT_LATENCY_P99, 2);
    metrics_set_alert_notifications(METRICS_CHANNEL_EMAIL, 4, 1);
    s = render();
    assert_true(has_line(s, "infergate_breaker_state{host=\"gpu-b\"} 2"));
    assert_true(has_line(s, "infergate_host_health{host=\"gpu-b\"} 1"));
    assert_true(has_line(s, "infergate_upstream_in_flight_requests{host=\"gpu-b\"} 5"));
    assert_true(has_line(s, "infergate_in_flight_requests 9"));
    assert_true(has_line(s, "infergate_upstream_keys{state=\"active\"} 3"));
    assert_true(has_line(s, "infergate_upstream_keys{state=\"cooling\"} 2"));
    assert_true(has_line(s, "infergate_upstream_keys{state=\"disabled\"} 1"));
    assert_true(has_line(s, "infergate_config_generation 7"));
    assert_true(has_line(s, "infergate_start_time_seconds 1700000000.5"));
    assert_true(has_line(s, "infergate_config_reloads_total{result=\"ok\"} 2"));
    assert_true(has_line(s, "infergate_config_reloads_total{result=\"failed\"} 1"));
    assert_true(has_line(s, "infergate_config_last_reload_successful 0"));
    assert_true(has_line(s, "infergate_retries_total 2"));
    assert_true(has_line(s, "infergate_retry_budget_exhausted_total 1"));
    assert_true(has_line(s, "infergate_alerts_firing{alert=\"latency_p99\"} 2"));
    assert_true(has_line(s, "infergate_alerts_firing{alert=\"availability\"} 0"));
    assert_true(has_line(s, "infergate_alert_notifications_total{channel=\"email\",result=\"sent\"} 4"));
    assert_true(has_line(s, "infergate_alert_notifications_total{channel=\"email\",result=\"failed\"} 1"));
    free(s);
    metrics_reload(1);
    s = render();
    assert_true(has_line(s, "infergate_config_last_reload_successful 1"));
    free(s);
    metrics_host_put(h);
}

static void test_label_helpers(void **state)
{
    (void)state;
    assert_int_equal(metrics_route_of("/v1/chat/completions"), METRICS_ROUTE_CHAT);
    assert_int_equal(metrics_route_of("/v1/completions"), METRICS_ROUTE_COMPLETIONS);
    assert_int_equal(metrics_route_of("/v1/embeddings"), METRICS_ROUTE_EMBEDDINGS);
    assert_int_equal(metrics_route_of("/v1/providers/status"), METRICS_ROUTE_STATUS);
    assert_int_equal(metrics_route_of("/admin/providers"), METRICS_ROUTE_STATUS);
    assert_int_equal(metrics_route_of("/admin/reload"), METRICS_ROUTE_ADMIN);
    assert_int_equal(metrics_route_of("/api/v1/ip"), METRICS_ROUTE_IP);
    assert_int_equal(metrics_route_of("/nope"), METRICS_ROUTE_OTHER);
    assert_int_equal(metrics_route_of(NULL), METRICS_ROUTE_OTHER);
    assert_string_equal(metrics_route_name(METRICS_ROUTE_CHAT), "chat_completions");
    assert_int_equal(metrics_outcome_of(UPSTREAM_OK, 200), METRICS_OUTCOME_SUCCESS);
    assert_int_equal(metrics_outcome_of(UPSTREAM_OK, 429), METRICS_OUTCOME_RATE_LIMITED);
    assert_int_equal(metrics_outcome_of(UPSTREAM_OK, 404), METRICS_OUTCOME_CLIENT_ERROR);
    assert_int_equal(metrics_outcome_of(UPSTREAM_OK, 503), METRICS_OUTCOME_SERVER_ERROR);
    assert_int_equal(metrics_outcome_of(UPSTREAM_ERR_CONNECT, 0), METRICS_OUTCOME_CONNECT_ERROR);
    assert_int_equal(metrics_outcome_of(UPSTREAM_ERR_TIMEOUT, 0), METRICS_OUTCOME_TIMEOUT);
    assert_int_equal(metrics_outcome_of(UPSTREAM_ERR_PROTOCOL, 200), METRICS_OUTCOME_PROTOCOL_ERROR);
    assert_int_equal(metrics_outcome_of(UPSTREAM_ERR_ABORTED, 200), METRICS_OUTCOME_CANCELLED);
    assert_string_equal(metrics_outcome_name(METRICS_OUTCOME_RATE_LIMITED), "rate_limited");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_every_family_has_help_and_type, setup),
        cmocka_unit_test_setup(test_requests_by_route_code_host_model, setup),
        cmocka_unit_test_setup(test_histogram_buckets_cumulative, setup),
        cmocka_unit_test_setup(test_overhead_is_total_minus_upstream, setup),
        cmocka_unit_test_setup(test_label_values_escaped, setup),
        cmocka_unit_test_setup(test_model_cap_and_invalid_names, setup),
        cmocka_unit_test_setup(test_series_overflow, setup),
        cmocka_unit_test_setup(test_host_put_removes_its_series, setup),
        cmocka_unit_test_setup(test_host_index_many, setup),
        cmocka_unit_test_setup(test_gauges_and_events, setup),
        cmocka_unit_test_setup(test_label_helpers, setup),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
