/*
 * metrics_driver.c -- fills the metrics registry (src/app/metrics.c) with a
 * sample of everything it can hold and prints the rendered exposition to
 * stdout, for tests/e2e/test_metrics_promtool.py to feed to
 * `promtool check metrics`.
 *
 * Host and model names include the characters the format escapes (\ " and
 * newline) and non-ASCII UTF-8; one model name is not UTF-8 and must come
 * out as "other". With --overflow it also fills the request-series table
 * past its capacity.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "metrics.h"

#define DRIVER_HOSTS      3
#define DRIVER_OVERFLOW   (METRICS_REQ_SERIES + 10)

int main(int argc, char **argv)
{
    static const char *host_names[DRIVER_HOSTS] = {
        "gpu-a", "back\\slash \"quoted\"\nnewline", "h\xc3\xb4te.example:8080"
    };
    struct metrics_host *h[DRIVER_HOSTS];
    struct evbuffer *out = evbuffer_new();
    int overflow = argc > 1 && strcmp(argv[1], "--overflow") == 0;
    size_t i, n;
    int rc = 0;

    if (out == NULL)
        return 1;
    for (i = 0; i < DRIVER_HOSTS; i++) {
        h[i] = metrics_host_get(host_names[i]);
        if (h[i] == NULL)
            return 1;
    }
    metrics_set_start_time(1700000000123);
    metrics_set_generation(3);
    metrics_reload(1);
    metrics_reload(0);
    metrics_set_in_flight(2);
    metrics_set_keys(4, 1, 1);
    metrics_set_redis(1, 1);
    metrics_set_alerts_firing(METRICS_ALERT_AVAILABILITY, 1);
    metrics_set_alert_notifications(METRICS_CHANNEL_WEBHOOK, 2, 1);
    metrics_set_tls_cert(0, "0.0.0.0:8443", 1800000000);
    {
        static const char *const reasons[] = { "timeout", "plain_http" };
        static const uint64_t counts[] = { 3, 1 };
        metrics_set_tls_failures(2, reasons, counts);
    }
    metrics_host_set_state(h[0], METRICS_BREAKER_CLOSED, 0, 3);
    metrics_host_set_state(h[1], METRICS_BREAKER_OPEN, 2, 0);
    metrics_host_set_state(h[2], METRICS_BREAKER_HALF_OPEN, 1, 1);

    metrics_request(&(struct metrics_req){ METRICS_ROUTE_CHAT, 200, h[0],
                    "llama-3.1-8b-instruct", 12.5, 800, 790 });
    metrics_request(&(struct metrics_req){ METRICS_ROUTE_CHAT, 502, h[1],
                    "model \"with\" quotes\\and\nnewline", -1, 40, 39.9 });
    metrics_request(&(struct metrics_req){ METRICS_ROUTE_EMBEDDINGS, 200, h[2],
                    "mod\xc3\xa8le", 3, 4, 3.5 });
    metrics_request(&(struct metrics_req){ METRICS_ROUTE_CHAT, 200, h[0],
                    "bad-\xff-utf8", 2, 3, 2 });
    metrics_request(&(struct metrics_req){ METRICS_ROUTE_HEALTH, 200, NULL,
                    NULL, 0.1, 0.2, 0 });
    metrics_request(&(struct metrics_req){ METRICS_ROUTE_CHAT, 503, NULL,
                    "llama-3.1-8b-instruct", 0.3, 0.4, 0 });
    metrics_attempt(h[0], METRICS_OUTCOME_SUCCESS, 10, 790);
    metrics_attempt(h[1], METRICS_OUTCOME_SERVER_ERROR, 20, 25);
    metrics_attempt(h[1], METRICS_OUTCOME_CONNECT_ERROR, -1, 5);
    metrics_attempt(h[2], METRICS_OUTCOME_SUCCESS, 400000, 500000);
    metrics_retry();
    metrics_retry_budget_exhausted();
    metrics_stream_chunks(h[0], 42);
    metrics_tokens(h[0], "llama-3.1-8b-instruct", 7, (const uint64_t[]){ 120, 30, 64 });
    metrics_tokens(h[0], "llama-3.1-8b-instruct", 3, (const uint64_t[]){ 5, 1, 0 });
    for (int i = 0; i < 20; i++) {      /* past 16 models a host counts "other" */
        char m[24];
        snprintf(m, sizeof(m), "tok-model-%d", i);
        metrics_tokens(h[2], m, 2, (const uint64_t[]){ 0, 1, 0 });
    }
    metrics_upstream_stall(h[0], 0);

    if (overflow) {
        char model[32];
        for (n = 0; n < DRIVER_OVERFLOW; n++) {
            snprintf(model, sizeof(model), "m%zu", n % METRICS_MAX_MODELS);
            metrics_request(&(struct metrics_req){ METRICS_ROUTE_CHAT,
                            200 + (int)(n / METRICS_MAX_MODELS), h[n % DRIVER_HOSTS],
                            model, 1, 2, 1 });
        }
    }

    if (metrics_render(out) < 0)
        rc = 1;
    n = evbuffer_get_length(out);
    if (fwrite(evbuffer_pullup(out, -1), 1, n, stdout) != n)
        rc = 1;
    evbuffer_free(out);
    for (i = 0; i < DRIVER_HOSTS; i++)
        metrics_host_put(h[i]);
    return rc;
}
