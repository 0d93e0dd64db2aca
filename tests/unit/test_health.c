/*
 * Unit tests for health.c and infernet.c: the probe-answer parsers, the
 * threshold and passive logic, the /api/v1/ip query parser and pick, and
 * (on loopback only) the prober on a real event loop against small evhttp
 * servers: spreading, thresholds, discovery, the probe's key, reloads.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <cmocka.h>

#include <curl/curl.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "snapshot.h"
#include "health.h"
#include "infernet.h"
#include "log.h"
#include "upstream.h"

#define S(lit) (lit), (sizeof(lit) - 1)

/* --- helpers ---------------------------------------------------------- */

static struct config *cfg_health(struct config *c, int thr_ok, int thr_bad)
{
    memset(c, 0, sizeof(*c));
    c->health.enabled = 1;
    c->health.passive = 1;
    c->health.healthy_threshold = thr_ok;
    c->health.unhealthy_threshold = thr_bad;
    c->health.interval_ms = 1000;
    c->health.timeout_ms = 500;
    c->health.path = "/v1/models";
    c->health.ejection_base_ms = 1000;
    c->health.ejection_max_ms = 300000;
    return c;
}

static void hs_init(struct host_state *hs)
{
    memset(hs, 0, sizeof(*hs));
    hs->health = HEALTH_HEALTHY;
    balance_live_init(&hs->live, 1);
}

static struct cfg_strlist list_of(char **v, size_t n)
{
    struct cfg_strlist l = { v, n };
    return l;
}

/* --- parsers ---------------------------------------------------------- */

static void test_parse_models(void **st)
{
    struct cfg_strlist l = { NULL, 0 };
    char err[128];

    (void)st;
    assert_int_equal(health_parse_models(S("{\"object\":\"list\",\"data\":["
        "{\"id\":\"llama\",\"object\":\"model\"},{\"object\":\"model\"},"
        "{\"id\":7},\"qwen\",{\"id\":\"\"},{\"id\":\"mistral\"}]}"), &l, err, sizeof(err)), 0);
    assert_int_equal(l.n, 3);
    assert_string_equal(l.v[0], "llama");
    assert_string_equal(l.v[1], "qwen");
    assert_string_equal(l.v[2], "mistral");

    /* errors leave the list as it was */
    assert_int_equal(health_parse_models(S("<<garbage>>"), &l, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "invalid JSON"));
    assert_int_equal(health_parse_models(S("[1,2]"), &l, err, sizeof(err)), -1);
    assert_string_equal(err, "answer is not a JSON object");
    assert_int_equal(health_parse_models(S("{\"data\":{}}"), &l, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "\"data\""));
    assert_int_equal(l.n, 3);

    assert_int_equal(health_parse_models(S("{\"data\":[]}"), &l, err, sizeof(err)), 0);
    assert_int_equal(l.n, 0);
    health_strlist_free(&l);
}

static void test_parse_infernet(void **st)
{
    struct cfg_strlist l = { NULL, 0 };
    int pending = -1;
    char err[128];

    (void)st;
    assert_int_equal(health_parse_infernet(S(
        "{\"containers\":[{\"id\":\"inference-1\",\"image\":\"x\"},{\"id\":\"b\"}],"
        "\"pending\":{\"offchain\":2,\"onchain\":1}}"), &l, &pending, err, sizeof(err)), 0);
    assert_int_equal(l.n, 2);
    assert_string_equal(l.v[0], "inference-1");
    assert_string_equal(l.v[1], "b");
    assert_int_equal(pending, 3);

    /* plain strings and a plain number */
    assert_int_equal(health_parse_infernet(S("{\"containers\":[\"a\",\"b\",\"c\"],"
        "\"pending\":7}"), &l, &pending, err, sizeof(err)), 0);
    assert_int_equal(l.n, 3);
    assert_string_equal(l.v[2], "c");
    assert_int_equal(pending, 7);

    /* nothing pending, no containers; integral reals; a clamp at INT_MAX */
    assert_int_equal(health_parse_infernet(S("{}"), &l, &pending, err, sizeof(err)), 0);
    assert_int_equal(l.n, 0);
    assert_int_equal(pending, 0);
    assert_int_equal(health_parse_infernet(S("{\"pending\":{\"a\":2.0,\"b\":4}}"),
                                           &l, &pending, err, sizeof(err)), 0);
    assert_int_equal(pending, 6);
    assert_int_equal(health_parse_infernet(S("{\"pending\":{\"a\":2147483000,"
        "\"b\":2147483000}}"), &l, &pending, err, sizeof(err)), 0);
    assert_int_equal(pending, 2147483647);

    /* bad shapes fail and leave the outputs alone */
    pending = 42;
    assert_int_equal(health_parse_infernet(S("{\"containers\":[\"x\"],\"pending\":-1}"),
                                           &l, &pending, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "pending"));
    assert_int_equal(health_parse_infernet(S("{\"pending\":{\"offchain\":\"2\"}}"),
                                           &l, &pending, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "pending.offchain"));
    assert_int_equal(health_parse_infernet(S("{\"pending\":1.5}"),
                                           &l, &pending, err, sizeof(err)), -1);
    assert_int_equal(health_parse_infernet(S("{\"containers\":\"a\"}"),
                                           &l, &pending, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "containers"));
    assert_int_equal(health_parse_infernet(S("{\"containers\":"), &l, &pending,
                                           err, sizeof(err)), -1);
    assert_non_null(strstr(err, "invalid JSON"));
    assert_int_equal(pending, 42);
    assert_int_equal(l.n, 0);
    health_strlist_free(&l);

    assert_true(health_path_is_infernet("/info"));
    assert_true(health_path_is_infernet("/api/info"));
    assert_false(health_path_is_infernet("/v1/models"));
    assert_false(health_path_is_infernet("/infox"));
}

/* --- thresholds -------------------------------------------------------- */

static void test_probe_thresholds(void **st)
{
    struct config c;
    struct host_state hs;

    (void)st;
    cfg_health(&c, 2, 3);
    hs_init(&hs);
    /* two failures: still healthy (degraded), a success ends the streak */
    assert_int_equal(health_record_probe(&c, &hs, 0, "probe /v1/models: HTTP 503", 1000, 1000), 0);
    assert_int_equal(health_record_probe(&c, &hs, 0, "x", 2000, 2000), 0);
    assert_int_equal(health_effective(&hs), HEALTH_DEGRADED);
    assert_int_equal(health_record_probe(&c, &hs, 1, NULL, 3000, 3000), 0);
    assert_int_equal(hs.probe_failures, 0);
    assert_int_equal(health_effective(&hs), HEALTH_HEALTHY);
    assert_int_equal(hs.last_check_unix_ms, 3000);
    assert_string_equal(hs.last_error, "x");        /* the last failure stays */

    /* three in a row: unhealthy, exactly at the third */
    assert_int_equal(health_record_probe(&c, &hs, 0, "a", 4000, 4000), 0);
    assert_int_equal(health_record_probe(&c, &hs, 0, "b", 5000, 5000), 0);
    assert_int_equal(health_record_probe(&c, &hs, 0, "c", 6000, 6000), 1);
    assert_int_equal(hs.health, HEALTH_UNHEALTHY);
    assert_int_equal(hs.live.usable, 0);
    assert_string_equal(hs.last_error, "c");
    assert_int_equal(health_effective(&hs), HEALTH_UNHEALTHY);
    assert_string_equal(health_name(health_effective(&hs)), "unhealthy");
    assert_int_equal(health_record_probe(&c, &hs, 0, "d", 7000, 7000), 0);   /* no re-flip */

    /* back after two successes in a row, not one; a failure resets */
    assert_int_equal(health_record_probe(&c, &hs, 1, NULL, 8000, 8000), 0);
    assert_int_equal(health_record_probe(&c, &hs, 0, "e", 9000, 9000), 0);
    assert_int_equal(health_record_probe(&c, &hs, 1, NULL, 10000, 10000), 0);
    assert_int_equal(hs.health, HEALTH_UNHEALTHY);
    hs.consecutive_failures = 9;
    assert_int_equal(health_record_probe(&c, &hs, 1, NULL, 11000, 11000), 1);
    assert_int_equal(hs.health, HEALTH_HEALTHY);
    assert_int_equal(hs.live.usable, 1);
    assert_int_equal(hs.consecutive_failures, 0);    /* starts over */
    assert_int_equal(health_effective(&hs), HEALTH_HEALTHY);
    assert_int_equal(hs.last_check_unix_ms, 11000);

    /* threshold 1 flips on the first outcome */
    cfg_health(&c, 1, 1);
    assert_int_equal(health_record_probe(&c, &hs, 0, "f", 12000, 12000), 1);
    assert_int_equal(health_record_probe(&c, &hs, 1, NULL, 13000, 13000), 1);
}

static void test_passive(void **st)
{
    struct config c;
    struct host_state hs;

    (void)st;
    cfg_health(&c, 2, 3);
    hs_init(&hs);
    /* the caller counts consecutive_failures; we eject at the threshold */
    hs.consecutive_failures = 1;
    assert_int_equal(health_passive(&c, &hs, 0, "connect_error: refused", 0, 10), 0);
    assert_string_equal(hs.last_error, "connect_error: refused");
    assert_int_equal(health_effective(&hs), HEALTH_DEGRADED);
    hs.consecutive_failures = 2;
    assert_int_equal(health_passive(&c, &hs, 0, NULL, 0, 20), 0);
    assert_string_equal(hs.last_error, "connect_error: refused");
    hs.consecutive_failures = 3;
    assert_int_equal(health_passive(&c, &hs, 0, "HTTP 502", 0, 30), HEALTH_PASSIVE_EJECTED);
    assert_int_equal(hs.health, HEALTH_HEALTHY);          /* probes' verdict */
    assert_int_equal(hs.live.usable, 0);
    assert_int_equal(hs.ejected_until_ms, 30 + 1000);
    assert_int_equal(health_effective(&hs), HEALTH_UNHEALTHY);
    hs.consecutive_failures = 4;
    assert_int_equal(health_passive(&c, &hs, 0, "HTTP 502", 0, 40), 0);   /* already */
    assert_int_equal(hs.ejected_until_ms, 1030);

    /* a success of a request sent before the ejection proves nothing */
    assert_int_equal(health_passive(&c, &hs, 1, NULL, 29, 50), 0);
    assert_int_equal(hs.live.usable, 0);
    /* probes: healthy_threshold good ones in a row end it, a failed
     * request sets them back */
    assert_int_equal(health_record_probe(&c, &hs, 1, NULL, 1, 60), 0);
    assert_int_equal(health_passive(&c, &hs, 0, "late failure", 0, 70), 0);
    assert_int_equal(hs.probe_successes, 0);
    assert_int_equal(health_record_probe(&c, &hs, 1, NULL, 2, 80), 0);
    assert_int_equal(health_record_probe(&c, &hs, 1, NULL, 3, 90), 1);
    assert_int_equal(hs.ejected_until_ms, 0);
    assert_int_equal(hs.ejection_end_ms, 90);
    assert_int_equal(hs.live.usable, 1);
    assert_int_equal(hs.consecutive_failures, 0);

    /* request and probe streaks are apart: a good request does not hide
     * failing probes */
    assert_int_equal(health_record_probe(&c, &hs, 0, "p", 4, 100), 0);
    assert_int_equal(health_record_probe(&c, &hs, 0, "p", 5, 110), 0);
    assert_int_equal(health_passive(&c, &hs, 1, NULL, 100, 120), 0);
    assert_int_equal(health_record_probe(&c, &hs, 0, "p", 6, 130), 1);
    assert_int_equal(hs.live.usable, 0);

    /* passive off, or no probes: never ejects */
    hs_init(&hs);
    hs.consecutive_failures = 100;
    c.health.passive = 0;
    assert_int_equal(health_passive(&c, &hs, 0, "HTTP 500", 0, 10), 0);
    assert_string_equal(hs.last_error, "HTTP 500");
    c.health.passive = 1;
    c.health.enabled = 0;
    assert_int_equal(health_passive(&c, &hs, 0, "HTTP 500", 0, 10), 0);
    assert_int_equal(hs.live.usable, 1);
    c.health.enabled = 1;
    assert_int_equal(health_passive(&c, &hs, 0, "HTTP 500", 0, 10), HEALTH_PASSIVE_EJECTED);
}

/* Ejections last base x n, capped; they end by time; the multiplier
 * forgets one per base spent in service; a breaker's half-open trial
 * passes an ejection and ends it by succeeding. */
static void test_ejection(void **st)
{
    struct config c;
    struct host_state hs;
    struct breaker_params bp;
    struct breaker_ticket t;

    (void)st;
    cfg_health(&c, 2, 3);
    c.health.ejection_base_ms = 1000;
    c.health.ejection_max_ms = 2500;
    assert_int_equal(health_ejection_ms(&c, 0), 1000);
    assert_int_equal(health_ejection_ms(&c, 1), 1000);
    assert_int_equal(health_ejection_ms(&c, 2), 2000);
    assert_int_equal(health_ejection_ms(&c, 3), 2500);
    assert_int_equal(health_ejection_ms(&c, HEALTH_MAX_EJECTIONS), 2500);
    c.health.ejection_max_ms = 500;                  /* max below base caps */
    assert_int_equal(health_ejection_ms(&c, 1), 500);
    c.health.ejection_max_ms = 10000;

    hs_init(&hs);
    hs.consecutive_failures = 3;
    assert_int_equal(health_passive(&c, &hs, 0, "x", 0, 5000), HEALTH_PASSIVE_EJECTED);
    assert_int_equal(hs.ejections, 1);
    assert_int_equal(hs.ejected_until_ms, 6000);
    /* not yet over: nothing changes */
    assert_int_equal(health_refresh(&hs, 5999), 0);
    assert_int_equal(hs.live.usable, 0);
    /* over: back, and usable */
    assert_int_equal(health_refresh(&hs, 6000),
                     HEALTH_REFRESH_RETURNED | HEALTH_REFRESH_USABLE);
    assert_int_equal(hs.live.usable, 1);
    assert_int_equal(hs.ejection_end_ms, 6000);
    assert_int_equal(health_effective(&hs), HEALTH_DEGRADED);   /* streak kept */
    assert_int_equal(health_refresh(&hs, 6001), 0);

    /* its next failure ejects it again, twice as long */
    hs.consecutive_failures = 4;
    assert_int_equal(health_passive(&c, &hs, 0, "x", 6100, 6200), HEALTH_PASSIVE_EJECTED);
    assert_int_equal(hs.ejections, 2);
    assert_int_equal(hs.ejected_until_ms, 8200);
    assert_int_equal(health_refresh(&hs, 8200), HEALTH_REFRESH_RETURNED | HEALTH_REFRESH_USABLE);
    /* 2.5 bases of good service forget two ejections: the next is 1x */
    hs.consecutive_failures = 0;
    assert_int_equal(health_passive(&c, &hs, 1, NULL, 8300, 8400), 0);
    hs.consecutive_failures = 3;
    assert_int_equal(health_passive(&c, &hs, 0, "x", 10600, 10700), HEALTH_PASSIVE_EJECTED);
    assert_int_equal(hs.ejections, 1);
    assert_int_equal(hs.ejected_until_ms, 11700);
    /* one base later: forgets one, then counts this one: 1x again */
    assert_int_equal(health_refresh(&hs, 11700), HEALTH_REFRESH_RETURNED | HEALTH_REFRESH_USABLE);
    assert_int_equal(health_passive(&c, &hs, 0, "x", 12700, 12800), HEALTH_PASSIVE_EJECTED);
    assert_int_equal(hs.ejections, 1);
    assert_int_equal(health_refresh(&hs, 13800) & HEALTH_REFRESH_RETURNED, HEALTH_REFRESH_RETURNED);
    /* ... but half a base later: 2x */
    assert_int_equal(health_passive(&c, &hs, 0, "x", 14200, 14300), HEALTH_PASSIVE_EJECTED);
    assert_int_equal(hs.ejections, 2);
    assert_int_equal(hs.ejected_until_ms, 16300);

    /* a half-open breaker's trial passes an ejection */
    memset(&bp, 0, sizeof(bp));
    bp.enabled = 1;
    bp.failure_threshold = 1;
    bp.window_size = 10;
    bp.minimum_requests = 10;
    bp.reset_timeout_ms = 300;
    bp.half_open_requests = 1;
    bp.recovery_step = 1;
    assert_int_equal(breaker_init(&hs.br, &bp), 0);
    assert_int_equal(breaker_allow(&hs.br, 14300, &t), 1);
    breaker_record(&hs.br, t, 0, 10, 14300);                    /* opens */
    assert_int_equal(health_refresh(&hs, 14500), 0);
    assert_int_equal(hs.live.usable, 0);
    assert_int_equal(health_refresh(&hs, 14600), HEALTH_REFRESH_USABLE);  /* half-open */
    assert_int_equal(hs.live.usable, 1);
    assert_int_equal(health_effective(&hs), HEALTH_UNHEALTHY);  /* still ejected */
    /* a failed trial re-opens the breaker: out again, still ejected */
    assert_int_equal(breaker_allow(&hs.br, 14600, &t), 1);
    breaker_record(&hs.br, t, 0, 10, 14650);
    hs.consecutive_failures++;
    assert_int_equal(health_passive(&c, &hs, 0, "x", 14600, 14650), 0);
    assert_int_equal(hs.live.usable, 0);
    assert_int_equal(hs.ejected_until_ms, 16300);
    /* the next trial succeeds: the ejection ends */
    assert_int_equal(health_refresh(&hs, 14950), HEALTH_REFRESH_USABLE);
    assert_int_equal(breaker_allow(&hs.br, 14950, &t), 1);
    breaker_record(&hs.br, t, 1, 10, 15000);
    hs.consecutive_failures = 0;
    assert_int_equal(health_passive(&c, &hs, 1, NULL, 14950, 15000), HEALTH_PASSIVE_RETURNED);
    assert_int_equal(hs.ejected_until_ms, 0);
    assert_int_equal(hs.ejection_end_ms, 15000);
    assert_int_equal(hs.live.usable, 1);
    assert_int_equal(health_effective(&hs), HEALTH_HEALTHY);

    /* probes' verdict wins over everything */
    hs.health = HEALTH_UNHEALTHY;
    assert_int_equal(health_refresh(&hs, 15100), HEALTH_REFRESH_USABLE);
    assert_int_equal(hs.live.usable, 0);
    breaker_free(&hs.br);
}

static void test_usable_and_serves(void **st)
{
    struct cfg_host h;
    struct host_state hs;
    struct breaker_params bp;
    struct breaker_ticket t;
    static char *conf[] = { "llama" }, *found[] = { "qwen" }, *cont[] = { "c1" };

    (void)st;
    memset(&h, 0, sizeof(h));
    hs_init(&hs);
    assert_true(health_host_serves(&h, &hs, "anything"));
    assert_true(health_host_serves(&h, &hs, NULL));
    hs.models_found = list_of(found, 1);
    assert_true(health_host_serves(&h, &hs, "qwen"));
    assert_false(health_host_serves(&h, &hs, "llama"));
    h.models = list_of(conf, 1);
    assert_true(health_host_serves(&h, &hs, "llama"));
    assert_true(health_host_serves(&h, &hs, "qwen"));
    assert_false(health_host_serves(&h, &hs, "other"));
    assert_false(health_host_runs(&h, &hs, "c1"));
    h.containers = list_of(cont, 1);
    assert_true(health_host_runs(&h, &hs, "c1"));
    hs.models_found.v = NULL;
    hs.models_found.n = 0;

    memset(&bp, 0, sizeof(bp));
    bp.enabled = 1;
    bp.failure_threshold = 1;
    bp.window_size = 10;
    bp.minimum_requests = 10;
    bp.reset_timeout_ms = 1000;
    bp.half_open_requests = 1;
    bp.recovery_step = 1;
    assert_int_equal(breaker_init(&hs.br, &bp), 0);
    assert_true(health_usable(&hs, 0));
    assert_true(breaker_allow(&hs.br, 0, &t));
    breaker_record(&hs.br, t, 0, 1, 0);
    assert_false(health_usable(&hs, 10));           /* breaker open */
    assert_true(health_usable(&hs, 2000));          /* half-open */
    hs.health = HEALTH_UNHEALTHY;
    assert_false(health_usable(&hs, 2000));
    hs.health = HEALTH_HEALTHY;
    hs.live.usable = 0;
    assert_false(health_usable(&hs, 2000));
    breaker_free(&hs.br);
}

/* --- /api/v1/ip --------------------------------------------------------- */

static void test_query_parse(void **st)
{
    struct infernet_query q;
    char err[128], big[2048];
    size_t i, w = 0;

    (void)st;
    assert_int_equal(infernet_parse_query("container=inference-1&x=1&container=my%20c+d"
                                          "&model=a%2Fb&model=llama%2d3&flag&=z",
                                          &q, err, sizeof(err)), 0);
    assert_int_equal(q.ncontainers, 2);
    assert_string_equal(q.containers[0], "inference-1");
    assert_string_equal(q.containers[1], "my c d");
    assert_string_equal(q.model, "llama-3");
    infernet_query_free(&q);

    assert_int_equal(infernet_parse_query(NULL, &q, err, sizeof(err)), 0);
    assert_int_equal(q.ncontainers, 0);
    assert_null(q.model);
    infernet_query_free(&q);
    assert_int_equal(infernet_parse_query("c%6fntainer=x", &q, err, sizeof(err)), 0);
    assert_int_equal(q.ncontainers, 1);                 /* names are decoded too */
    infernet_query_free(&q);

    assert_int_equal(infernet_parse_query("container=a%2", &q, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "percent-escape"));
    assert_int_equal(infernet_parse_query("container=a%zz", &q, err, sizeof(err)), -1);
    assert_int_equal(infernet_parse_query("container=a%00b", &q, err, sizeof(err)), -1);
    assert_int_equal(infernet_parse_query("container=&container=b", &q, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "empty"));
    assert_int_equal(infernet_parse_query("container", &q, err, sizeof(err)), -1);

    for (i = 0; i <= INFERNET_MAX_CONTAINERS; i++)
        w += (size_t)snprintf(big + w, sizeof(big) - w, "%scontainer=c%zu", i ? "&" : "", i);
    assert_int_equal(infernet_parse_query(big, &q, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "more than"));
}

#define NN 5

struct fleet {
    struct cfg_host     h[NN];
    struct host_state   hs[NN];
    struct infernet_node nd[NN];
};

static void fleet_init(struct fleet *f)
{
    static char *ab[] = { "a", "b" }, *abc[] = { "a", "b", "c" }, *a[] = { "a" };
    size_t i;

    memset(f, 0, sizeof(*f));
    for (i = 0; i < NN; i++) {
        hs_init(&f->hs[i]);
        f->nd[i].host = &f->h[i];
        f->nd[i].hs = &f->hs[i];
        f->nd[i].usable = 1;
    }
    f->h[0].containers = list_of(ab, 2);          /* configured */
    f->hs[0].live.pending = 5;
    f->hs[1].containers_found = list_of(abc, 3);  /* discovered */
    f->hs[1].live.pending = 1;
    f->h[2].containers = list_of(a, 1);
    f->hs[2].live.pending = 0;
    f->h[3].containers = list_of(ab, 2);
    f->hs[3].live.pending = 9;
    /* node 4 runs nothing */
}

static int pick(struct fleet *f, const char *query, uint64_t *cur,
                enum infernet_status *st)
{
    struct infernet_query q;
    char err[128];
    int r;

    assert_int_equal(infernet_parse_query(query, &q, err, sizeof(err)), 0);
    r = infernet_pick(f->nd, NN, &q, cur, st);
    infernet_query_free(&q);
    return r;
}

static void test_pick(void **st)
{
    static char *llama[] = { "llama" };
    struct fleet f;
    enum infernet_status s;
    uint64_t cur = 0;
    int seen[NN] = { 0 }, i;

    (void)st;
    fleet_init(&f);
    /* all containers required, then fewest pending */
    assert_int_equal(pick(&f, "container=a&container=b", &cur, &s), 1);
    assert_int_equal(s, INFERNET_OK);
    assert_int_equal(pick(&f, "container=a", &cur, &s), 2);
    assert_int_equal(pick(&f, "container=c&container=a", &cur, &s), 1);
    assert_int_equal(pick(&f, "container=zzz", &cur, &s), -1);
    assert_int_equal(s, INFERNET_NO_MATCH);

    /* an unusable node is skipped; none usable is its own reason */
    f.nd[1].usable = 0;
    assert_int_equal(pick(&f, "container=a&container=b", &cur, &s), 0);
    f.nd[0].usable = 0;
    f.nd[3].usable = 0;
    assert_int_equal(pick(&f, "container=b", &cur, &s), -1);
    assert_int_equal(s, INFERNET_NONE_USABLE);

    /* model: configured, discovered, or any when the node lists none */
    fleet_init(&f);
    f.h[1].models = list_of(llama, 1);
    assert_int_equal(pick(&f, "container=a&container=b&model=qwen", &cur, &s), 0);
    assert_int_equal(pick(&f, "container=a&container=b&model=llama", &cur, &s), 1);
    f.h[1].models.n = 0;
    f.hs[0].models_found = list_of(llama, 1);
    f.hs[1].models_found = list_of(llama, 1);
    f.hs[3].models_found = list_of(llama, 1);
    assert_int_equal(pick(&f, "container=a&container=b&model=qwen", &cur, &s), -1);
    assert_int_equal(s, INFERNET_NO_MATCH);

    /* ties go round-robin */
    fleet_init(&f);
    f.hs[0].live.pending = 1;
    f.hs[3].live.pending = 1;
    for (i = 0; i < 9; i++)
        seen[pick(&f, "container=a&container=b", &cur, &s)]++;
    assert_int_equal(seen[0], 3);
    assert_int_equal(seen[1], 3);
    assert_int_equal(seen[3], 3);
    assert_int_equal(seen[2] + seen[4], 0);
}

static void test_host_port(void **st)
{
    char out[64];

    (void)st;
    assert_int_equal(infernet_host_port("http://10.0.0.5:4000", out, sizeof(out)), 0);
    assert_string_equal(out, "10.0.0.5:4000");
    assert_int_equal(infernet_host_port("https://node.example.com/base/", out, sizeof(out)), 0);
    assert_string_equal(out, "node.example.com:443");
    assert_int_equal(infernet_host_port("http://node", out, sizeof(out)), 0);
    assert_string_equal(out, "node:80");
    assert_int_equal(infernet_host_port("http://u:p@h.io:81/x?y", out, sizeof(out)), 0);
    assert_string_equal(out, "h.io:81");
    assert_int_equal(infernet_host_port("http://[::1]:8080/", out, sizeof(out)), 0);
    assert_string_equal(out, "[::1]:8080");
    assert_int_equal(infernet_host_port("HTTPS://[fe80::1]", out, sizeof(out)), 0);
    assert_string_equal(out, "[fe80::1]:443");
    assert_int_equal(infernet_host_port("node:80", out, sizeof(out)), -1);
    assert_int_equal(infernet_host_port("http:///x", out, sizeof(out)), -1);
    assert_int_equal(infernet_host_port("http://a-very-long-host-name.example:1", out, 8), -1);
}

/* --- the prober on loopback ------------------------------------------- */

#define NSRV 4
#define MAX_HITS 64

struct tsrv {
    struct evhttp *http;
    int      port;
    int      status;
    const char *body;
    int      hang;               /* never answer */
    int      hits;
    int64_t  at[MAX_HITS];       /* arrival, ms since the test's t0 */
    char     auth[128];
    char     path[64];
};

struct tctx {
    struct event_base *base;
    struct upstream   *up;
    struct health     *h;
    struct tsrv        srv[NSRV];
    char               dir[64];
    int64_t            t0;
    struct snapshot   *snap;
    int                changes;
    int                hits_at_change[16];   /* srv[0].hits at each change */
    unsigned           what[16];             /* and what changed */
};

static int64_t mono_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static struct tctx *cur_ctx;

static void srv_cb(struct evhttp_request *r, void *arg)
{
    struct tsrv *s = arg;
    const char *auth = evhttp_find_header(evhttp_request_get_input_headers(r),
                                          "Authorization");
    struct evbuffer *b;

    if (s->hits < MAX_HITS)
        s->at[s->hits] = mono_ms() - cur_ctx->t0;
    s->hits++;
    snprintf(s->auth, sizeof(s->auth), "%s", auth ? auth : "");
    snprintf(s->path, sizeof(s->path), "%s", evhttp_request_get_uri(r));
    if (s->hang)
        return;                 /* freed with the connection */
    b = evbuffer_new();
    evbuffer_add(b, s->body, strlen(s->body));
    evhttp_add_header(evhttp_request_get_output_headers(r), "Content-Type",
                      "application/json");
    evhttp_send_reply(r, s->status, "X", b);
    evbuffer_free(b);
}

static void srv_start(struct tctx *t, struct tsrv *s, const char *body)
{
    struct evhttp_bound_socket *bs;
    struct sockaddr_in sin;
    socklen_t sl = sizeof(sin);

    s->status = 200;
    s->body = body;
    s->http = evhttp_new(t->base);
    assert_non_null(s->http);
    evhttp_set_gencb(s->http, srv_cb, s);
    bs = evhttp_bind_socket_with_handle(s->http, "127.0.0.1", 0);
    assert_non_null(bs);
    assert_int_equal(getsockname(evhttp_bound_socket_get_fd(bs),
                                 (struct sockaddr *)&sin, &sl), 0);
    s->port = ntohs(sin.sin_port);
}

static void write_file(const char *dir, const char *name, const char *text)
{
    char p[128];
    FILE *f;

    snprintf(p, sizeof(p), "%s/%s", dir, name);
    f = fopen(p, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

/* hosts: "h0=0,h1=1" maps host names to server indices. */
static struct snapshot *load(struct tctx *t, const char *hosts, const char *keys,
                             const char *policies)
{
    char buf[2048], item[128], name[16];
    size_t w = 0;
    const char *p = hosts;
    struct cfg_errors errs = { NULL, 0 };
    struct config *cfg;
    struct snapshot *s;
    int idx, n;

    w += (size_t)snprintf(buf + w, sizeof(buf) - w, "{\"hosts\": [");
    while (sscanf(p, "%15[^=]=%d%n", name, &idx, &n) == 2) {
        snprintf(item, sizeof(item), "%s{\"name\": \"%s\", \"url\": \"http://127.0.0.1:%d\"}",
                 p == hosts ? "" : ",", name, t->srv[idx].port);
        w += (size_t)snprintf(buf + w, sizeof(buf) - w, "%s", item);
        p += n;
        if (*p == ',')
            p++;
    }
    snprintf(buf + w, sizeof(buf) - w, "]}");
    write_file(t->dir, "hosts.json", buf);
    write_file(t->dir, "api-keys.json", keys ? keys : "{\"apiKeys\": []}");
    write_file(t->dir, "policies.yaml", policies);
    cfg = config_load(t->dir, &errs);
    if (cfg == NULL) {
        size_t i;
        for (i = 0; i < errs.n; i++)
            fprintf(stderr, "%s\n", errs.msg[i]);
        cfg_errors_free(&errs);
        fail_msg("config_load failed");
    }
    s = snapshot_new(cfg, NULL, 1);
    assert_non_null(s);
    return s;
}

static void on_change(void *arg, size_t host, unsigned what)
{
    struct tctx *t = arg;

    (void)host;
    if (t->changes < 16) {
        t->hits_at_change[t->changes] = t->srv[0].hits;
        t->what[t->changes] = what;
    }
    t->changes++;
}

static void ctx_init(struct tctx *t, int nsrv, const char *body)
{
    int i;

    memset(t, 0, sizeof(*t));
    cur_ctx = t;
    snprintf(t->dir, sizeof(t->dir), "/tmp/infergate-health-XXXXXX");
    assert_non_null(mkdtemp(t->dir));
    t->base = event_base_new();
    t->up = upstream_new(t->base);
    t->h = health_new(t->base, t->up);
    assert_non_null(t->h);
    health_set_listener(t->h, on_change, t);
    for (i = 0; i < nsrv; i++)
        srv_start(t, &t->srv[i], body);
}

static void install(struct tctx *t, struct snapshot *s)
{
    assert_int_equal(health_set_snapshot(t->h, s), 0);
    if (t->snap)
        snapshot_unref(t->snap);
    t->snap = s;
}

static void ctx_free(struct tctx *t)
{
    char p[128];
    int i;

    health_free(t->h);
    upstream_free(t->up);
    if (t->snap)
        snapshot_unref(t->snap);
    for (i = 0; i < NSRV; i++)
        if (t->srv[i].http)
            evhttp_free(t->srv[i].http);
    event_base_free(t->base);
    snprintf(p, sizeof(p), "%s/hosts.json", t->dir);
    unlink(p);
    snprintf(p, sizeof(p), "%s/api-keys.json", t->dir);
    unlink(p);
    snprintf(p, sizeof(p), "%s/policies.yaml", t->dir);
    unlink(p);
    rmdir(t->dir);
}

static void noop_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
}

/* Runs the loop until cond() or timeout_ms; returns cond(). */
static int run_until(struct tctx *t, int (*cond)(struct tctx *), int64_t timeout_ms)
{
    struct event *tick = event_new(t->base, -1, EV_PERSIST, noop_cb, NULL);
    struct timeval tv = { 0, 1000 };
    int64_t end = mono_ms() + timeout_ms;
    int ok;

    event_add(tick, &tv);
    while (!(ok = cond(t)) && mono_ms() < end)
        event_base_loop(t->base, EVLOOP_ONCE);
    event_free(tick);
    return ok;
}

static int never(struct tctx *t)
{
    (void)t;
    return 0;
}

static int all_hit_once(struct tctx *t)
{
    int i;

    for (i = 0; i < NSRV; i++)
        if (t->srv[i].hits < 1 || t->snap->hs[i]->models_found.n == 0)
            return 0;
    return 1;
}

static int all_hit_twice(struct tctx *t)
{
    int i;

    for (i = 0; i < NSRV; i++)
        if (t->srv[i].hits < 2)
            return 0;
    return 1;
}

static const char MODELS_BODY[] = "{\"object\":\"list\",\"data\":[{\"id\":\"m-1\"},{\"id\":\"m-2\"}]}";

static void test_prober_spreads_discovers_and_sends_key(void **st)
{
    struct tctx t;
    struct snapshot *s;
    int i;

    (void)st;
    ctx_init(&t, NSRV, MODELS_BODY);
    s = load(&t, "a0=0,a1=1,a2=2,a3=3",
             "{\"apiKeys\": [{\"key\": \"sk-off-000000000001\", \"isActive\": false},"
             " {\"key\": \"sk-cool-00000000002\"}, {\"key\": \"sk-good-00000000003\"}]}",
             "health_check:\n  interval: 400ms\n  timeout: 300ms\n"
             "  discover_models: true\n");
    s->ks[1]->cooldown_until_ms = mono_ms() + 60000;    /* cooling: skipped */
    t.t0 = mono_ms();
    install(&t, s);
    assert_true(run_until(&t, all_hit_once, 5000));
    /* host i's first probe comes i * interval / n after the install */
    for (i = 0; i < NSRV; i++) {
        /* libevent's coarse monotonic clock may fire a few ms early */
        assert_true(t.srv[i].at[0] >= i * 100 - 10);
        assert_string_equal(t.srv[i].path, "/v1/models");
        assert_string_equal(t.srv[i].auth, "Bearer sk-good-00000000003");
        assert_int_equal(t.snap->hs[i]->models_found.n, 2);
        assert_string_equal(t.snap->hs[i]->models_found.v[1], "m-2");
        assert_int_equal(t.snap->hs[i]->health, HEALTH_HEALTHY);
        assert_true(t.snap->hs[i]->last_check_unix_ms > 0);
    }
    assert_true(t.srv[3].at[0] - t.srv[0].at[0] >= 200);   /* 300 ideally */
    assert_int_equal(t.snap->ks[2]->uses, 0);             /* rotation untouched */
    assert_int_equal(t.changes, NSRV);                    /* models discovered */
    for (i = 0; i < NSRV; i++)
        assert_int_equal(t.what[i], HEALTH_CHANGED_MODELS);
    /* then every interval, one probe at a time */
    assert_true(run_until(&t, all_hit_twice, 5000));
    for (i = 0; i < NSRV; i++)
        assert_true(t.srv[i].at[1] - t.srv[i].at[0] >= 300);   /* 400, less the jitter of a loaded machine */
    assert_true(health_probes_sent(t.h) >= 2 * NSRV);
    ctx_free(&t);
}

static int h0_unhealthy(struct tctx *t)
{
    return t->snap->hs[0]->health == HEALTH_UNHEALTHY;
}

static int h0_healthy(struct tctx *t)
{
    return t->snap->hs[0]->health == HEALTH_HEALTHY;
}

static void test_prober_thresholds(void **st)
{
    struct tctx t;
    int before;

    (void)st;
    ctx_init(&t, 1, MODELS_BODY);
    t.srv[0].status = 503;
    install(&t, load(&t, "b0=0", NULL,
                     "health_check:\n  interval: 100ms\n  timeout: 100ms\n"
                     "  unhealthy_threshold: 3\n  healthy_threshold: 2\n"));
    assert_true(run_until(&t, h0_unhealthy, 5000));
    assert_int_equal(t.changes, 1);
    assert_int_equal(t.what[0], HEALTH_CHANGED_HEALTH);
    assert_int_equal(t.hits_at_change[0], 3);           /* exactly the third */
    assert_int_equal(t.snap->hs[0]->live.usable, 0);
    assert_string_equal(t.snap->hs[0]->last_error, "probe /v1/models: HTTP 503");

    t.srv[0].status = 200;
    before = t.srv[0].hits;
    assert_true(run_until(&t, h0_healthy, 5000));
    assert_int_equal(t.changes, 2);
    assert_int_equal(t.hits_at_change[1] - before, 2);
    assert_int_equal(t.snap->hs[0]->live.usable, 1);
    assert_int_equal(t.snap->hs[0]->models_found.n, 0);  /* discovery is off */

    /* a 401 says the host is up: our key is the problem, not the host */
    t.srv[0].status = 401;
    before = t.srv[0].hits;
    run_until(&t, never, 450);
    assert_true(t.srv[0].hits - before >= 3);
    assert_int_equal(t.snap->hs[0]->health, HEALTH_HEALTHY);
    assert_int_equal(t.snap->hs[0]->probe_failures, 0);
    assert_string_equal(t.srv[0].auth, "");             /* no key: none sent */
    ctx_free(&t);
}

static void test_prober_bad_bodies_fail(void **st)
{
    struct tctx t;

    (void)st;
    ctx_init(&t, 1, "<<garbage>>");
    install(&t, load(&t, "c0=0", NULL,
                     "health_check:\n  interval: 100ms\n  timeout: 100ms\n"
                     "  unhealthy_threshold: 2\n  discover_models: true\n"));
    assert_true(run_until(&t, h0_unhealthy, 5000));
    assert_non_null(strstr(t.snap->hs[0]->last_error, "probe /v1/models: invalid JSON"));
    ctx_free(&t);
}

static int h0_has_containers(struct tctx *t)
{
    return t->snap->hs[0]->containers_found.n > 0;
}

static void test_prober_infernet(void **st)
{
    struct tctx t;
    const struct host_state *hs;

    (void)st;
    ctx_init(&t, 1, "{\"containers\":[{\"id\":\"inference-1\"},\"b\"],"
                    "\"pending\":{\"offchain\":2,\"onchain\":1}}");
    install(&t, load(&t, "d0=0", NULL,
                     "health_check:\n  path: /api/info\n  interval: 100ms\n"
                     "  timeout: 100ms\n  discover_models: true\n"));
    assert_true(run_until(&t, h0_has_containers, 5000));
    hs = t.snap->hs[0];
    assert_string_equal(t.srv[0].path, "/api/info");
    assert_int_equal(hs->containers_found.n, 2);
    assert_string_equal(hs->containers_found.v[0], "inference-1");
    assert_string_equal(hs->containers_found.v[1], "b");
    assert_int_equal(hs->live.pending, 3);
    assert_int_equal(hs->models_found.n, 0);     /* /info lists no models */
    assert_int_equal(t.changes, 1);
    assert_int_equal(t.what[0], HEALTH_CHANGED_CONTAINERS);

    /* a reload to a non-Infernet path forgets them */
    install(&t, load(&t, "d0=0", NULL, "health_check:\n  interval: 100ms\n"
                                       "  timeout: 100ms\n"));
    assert_int_equal(t.snap->hs[0]->containers_found.n, 0);
    assert_int_equal(t.snap->hs[0]->live.pending, 0);
    assert_int_equal(t.changes, 2);
    assert_int_equal(t.what[1], HEALTH_CHANGED_CONTAINERS);
    ctx_free(&t);
}

static int h1_in_flight(struct tctx *t)
{
    return t->srv[1].hits > 0 && t->snap->hs[0]->probe_successes > 0;
}

static int h0_hit_again;

static int srv0_hit(struct tctx *t)
{
    return t->srv[0].hits > h0_hit_again;
}

static int in_flight_max;

static int track_in_flight(struct tctx *t)
{
    if (health_in_flight(t->h) > (size_t)in_flight_max)
        in_flight_max = (int)health_in_flight(t->h);
    return 0;
}

static void test_prober_reload(void **st)
{
    struct tctx t;
    struct host_state *h0;
    int64_t last;
    int hits;

    (void)st;
    ctx_init(&t, 3, MODELS_BODY);
    t.srv[1].hang = 1;
    install(&t, load(&t, "h0=0,h1=1", NULL,
                     "health_check:\n  interval: 200ms\n  timeout: 200ms\n"));
    assert_true(run_until(&t, h1_in_flight, 5000));
    assert_int_equal(health_in_flight(t.h), 1);
    h0 = t.snap->hs[0];

    /* h1 removed while its probe hangs: cancelled at once; h0 keeps its
     * state and its schedule (the next probe one interval after the last,
     * not right after the reload) */
    h0_hit_again = t.srv[0].hits;
    last = t.srv[0].at[h0_hit_again - 1];
    install(&t, load(&t, "h0=0", NULL,
                     "health_check:\n  interval: 200ms\n  timeout: 200ms\n"));
    assert_ptr_equal(t.snap->hs[0], h0);
    assert_true(h0->probe_successes > 0);
    assert_int_equal(health_in_flight(t.h), 0);
    assert_true(run_until(&t, srv0_hit, 5000));
    assert_true(t.srv[0].at[h0_hit_again] - last >= 190);

    /* same name, another URL: another machine, its state starts over */
    install(&t, load(&t, "h0=2", NULL,
                     "health_check:\n  interval: 200ms\n  timeout: 200ms\n"));
    assert_ptr_equal(t.snap->hs[0], h0);
    assert_int_equal(h0->probe_successes, 0);
    assert_int_equal(h0->last_check_unix_ms, 0);

    /* probes off: everyone healthy again, nothing sent */
    h0->health = HEALTH_UNHEALTHY;
    h0->live.usable = 0;
    install(&t, load(&t, "h0=0", NULL, "health_check:\n  enabled: false\n"));
    assert_int_equal(h0->health, HEALTH_HEALTHY);
    assert_int_equal(h0->live.usable, 1);
    assert_int_equal(health_in_flight(t.h), 0);
    hits = t.srv[0].hits;
    run_until(&t, never, 250);
    assert_int_equal(t.srv[0].hits, hits);

    /* at most one probe in flight per host, even when answers never come
     * and the timeout equals the interval */
    t.srv[2].hang = 1;
    hits = t.srv[2].hits;
    install(&t, load(&t, "h9=2", NULL,
                     "health_check:\n  interval: 100ms\n  timeout: 100ms\n"));
    in_flight_max = 0;
    run_until(&t, track_in_flight, 650);
    assert_int_equal(in_flight_max, 1);
    assert_true(t.srv[2].hits - hits >= 3);
    assert_true(t.srv[2].hits - hits <= 7);
    assert_int_equal(t.snap->hs[0]->health, HEALTH_UNHEALTHY);   /* 3 timeouts */
    assert_non_null(strstr(t.snap->hs[0]->last_error, "timeout"));
    ctx_free(&t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_models),
        cmocka_unit_test(test_parse_infernet),
        cmocka_unit_test(test_probe_thresholds),
        cmocka_unit_test(test_passive),
        cmocka_unit_test(test_ejection),
        cmocka_unit_test(test_usable_and_serves),
        cmocka_unit_test(test_query_parse),
        cmocka_unit_test(test_pick),
        cmocka_unit_test(test_host_port),
        cmocka_unit_test(test_prober_spreads_discovers_and_sends_key),
        cmocka_unit_test(test_prober_thresholds),
        cmocka_unit_test(test_prober_bad_bodies_fail),
        cmocka_unit_test(test_prober_infernet),
        cmocka_unit_test(test_prober_reload),
    };
    int rc;

    log_open(NULL, LOGL_ERROR, LOGF_TEXT);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    rc = cmocka_run_group_tests(tests, NULL, NULL);
    curl_global_cleanup();
    log_close();
    return rc;
}
