/*
 * test_session.c -- the session store's memory backend, the response id
 * scanner and the session front with no Redis to talk to (src/app/session.c,
 * src/app/session_redis.c). Time is made up: no clock, no sleep, no network.
 * The Redis backend against a real redis-server is
 * tests/e2e/test_session_redis_store.py.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <event2/event.h>
#include <jansson.h>

#include "session.h"

#define TTL         1000
#define BIG         200000      /* entries for the O(1) checks */
#define SMALL_MAX   1000
#define ID_LEN      64
#define SEED0       0x0123456789abcdefULL   /* the SipHash key: fixed, runs repeat */
#define SEED1       0xfedcba9876543210ULL

/* ---- memory store ----------------------------------------------------------- */

static void test_put_get(void **state)
{
    struct session_mem *m = session_mem_new(10, TTL, SEED0, SEED1);
    struct session_mem_stats st;

    (void)state;
    assert_non_null(m);
    assert_null(session_mem_get(m, SESSION_RID, "chatcmpl-1", 0));
    assert_int_equal(session_mem_put(m, SESSION_RID, "chatcmpl-1", "h1", 0), 0);
    assert_string_equal(session_mem_get(m, SESSION_RID, "chatcmpl-1", 1), "h1");
    /* the kinds are separate name spaces */
    assert_null(session_mem_get(m, SESSION_STICKY, "chatcmpl-1", 1));
    assert_int_equal(session_mem_put(m, SESSION_STICKY, "chatcmpl-1", "h2", 1), 0);
    assert_string_equal(session_mem_get(m, SESSION_STICKY, "chatcmpl-1", 2), "h2");
    assert_string_equal(session_mem_get(m, SESSION_RID, "chatcmpl-1", 2), "h1");
    /* another host replaces the mapping */
    assert_int_equal(session_mem_put(m, SESSION_RID, "chatcmpl-1", "a-much-longer-host:8080", 3), 0);
    assert_string_equal(session_mem_get(m, SESSION_RID, "chatcmpl-1", 4), "a-much-longer-host:8080");
    session_mem_stats(m, &st);
    assert_int_equal(st.entries, 2);
    session_mem_free(m);
}

static void test_rejects_unstorable(void **state)
{
    struct session_mem *m = session_mem_new(10, TTL, SEED0, SEED1);
    char long_key[SESSION_KEY_MAX + 2], long_host[SESSION_HOST_MAX + 2];

    (void)state;
    memset(long_key, 'k', sizeof(long_key) - 1);
    long_key[sizeof(long_key) - 1] = '\0';
    memset(long_host, 'h', sizeof(long_host) - 1);
    long_host[sizeof(long_host) - 1] = '\0';
    assert_int_equal(session_mem_put(m, SESSION_RID, "", "h", 0), -1);
    assert_int_equal(session_mem_put(m, SESSION_RID, "k", "", 0), -1);
    assert_int_equal(session_mem_put(m, SESSION_RID, long_key, "h", 0), -1);
    assert_int_equal(session_mem_put(m, SESSION_RID, "k", long_host, 0), -1);
    assert_null(session_mem_get(m, SESSION_RID, long_key, 0));
    /* the longest allowed ones are fine */
    long_key[SESSION_KEY_MAX] = '\0';
    long_host[SESSION_HOST_MAX] = '\0';
    assert_int_equal(session_mem_put(m, SESSION_RID, long_key, long_host, 0), 0);
    assert_string_equal(session_mem_get(m, SESSION_RID, long_key, 0), long_host);
    session_mem_free(m);
}

static void test_ttl_expiry(void **state)
{
    struct session_mem *m = session_mem_new(10, TTL, SEED0, SEED1);
    struct session_mem_stats st;

    (void)state;
    session_mem_put(m, SESSION_RID, "a", "h1", 0);
    assert_string_equal(session_mem_get(m, SESSION_RID, "a", TTL - 1), "h1");
    assert_null(session_mem_get(m, SESSION_RID, "a", TTL));
    session_mem_stats(m, &st);
    assert_int_equal(st.expirations, 1);
    assert_int_equal(st.entries, 0);

    /* a put refreshes the ttl, a hit does not */
    session_mem_put(m, SESSION_RID, "b", "h1", 0);
    session_mem_put(m, SESSION_RID, "b", "h1", 500);
    assert_string_equal(session_mem_get(m, SESSION_RID, "b", 500 + TTL - 1), "h1");
    assert_null(session_mem_get(m, SESSION_RID, "b", 500 + TTL));

    session_mem_put(m, SESSION_RID, "c", "h1", 0);
    assert_string_equal(session_mem_get(m, SESSION_RID, "c", TTL - 1), "h1");
    assert_null(session_mem_get(m, SESSION_RID, "c", TTL));
    session_mem_free(m);
}

static void test_lru_eviction(void **state)
{
    struct session_mem *m = session_mem_new(3, TTL, SEED0, SEED1);
    struct session_mem_stats st;

    (void)state;
    session_mem_put(m, SESSION_RID, "a", "h", 0);
    session_mem_put(m, SESSION_RID, "b", "h", 1);
    session_mem_put(m, SESSION_RID, "c", "h", 2);
    assert_non_null(session_mem_get(m, SESSION_RID, "a", 3));   /* a is now the newest */
    session_mem_put(m, SESSION_RID, "d", "h", 4);               /* evicts b */
    assert_null(session_mem_get(m, SESSION_RID, "b", 5));
    assert_non_null(session_mem_get(m, SESSION_RID, "a", 5));
    assert_non_null(session_mem_get(m, SESSION_RID, "c", 5));
    assert_non_null(session_mem_get(m, SESSION_RID, "d", 5));
    session_mem_stats(m, &st);
    assert_int_equal(st.evictions, 1);
    assert_int_equal(st.entries, 3);

    /* re-putting an existing key never evicts */
    session_mem_put(m, SESSION_RID, "c", "h", 6);
    session_mem_stats(m, &st);
    assert_int_equal(st.evictions, 1);

    /* a smaller max_entries evicts the least recently used at once:
     * use order is now a, d, c (oldest first) */
    session_mem_configure(m, 1, TTL);
    session_mem_stats(m, &st);
    assert_int_equal(st.entries, 1);
    assert_int_equal(st.evictions, 3);
    assert_non_null(session_mem_get(m, SESSION_RID, "c", 7));
    session_mem_free(m);
}

/* Short entries come from slabs, long ones from malloc; a full store
 * churning through both kinds keeps every live entry intact (ASan checks
 * the slots are not shared or leaked). */
static void test_slab_and_malloc_entries_churn(void **state)
{
    struct session_mem *m = session_mem_new(500, TTL, SEED0, SEED1);
    char key[400], host[64];
    int i, j;

    (void)state;
    for (i = 0; i < 5000; i++) {
        int long_key = i % 3 == 0;
        memset(key, 'k', sizeof(key));
        snprintf(key, long_key ? 300 : 40, "%s-%d-", long_key ? "long" : "id", i);
        key[strlen(key)] = long_key ? 'L' : 'S';
        key[long_key ? 299 : 39] = '\0';
        snprintf(host, sizeof(host), "host-%d", i);
        assert_int_equal(session_mem_put(m, SESSION_RID, key, host, 0), 0);
        if (i % 97 == 0) {       /* the last 500 are all there, with their hosts */
            for (j = i > 499 ? i - 499 : 0; j <= i; j++) {
                int lk = j % 3 == 0;
                char want[64];
                memset(key, 'k', sizeof(key));
                snprintf(key, lk ? 300 : 40, "%s-%d-", lk ? "long" : "id", j);
                key[strlen(key)] = lk ? 'L' : 'S';
                key[lk ? 299 : 39] = '\0';
                snprintf(want, sizeof(want), "host-%d", j);
                assert_string_equal(session_mem_get(m, SESSION_RID, key, 0), want);
            }
        }
    }
    session_mem_free(m);
}

static void test_sweep_reclaims_expired(void **state)
{
    struct session_mem *m = session_mem_new(SMALL_MAX, 10, SEED0, SEED1);
    struct session_mem_stats st;
    char key[32];
    int i;

    (void)state;
    for (i = 0; i < 100; i++) {
        snprintf(key, sizeof(key), "old-%d", i);
        session_mem_put(m, SESSION_RID, key, "h", 0);
    }
    /* never looked up again: new traffic reclaims them anyway */
    for (i = 0; i < 100; i++) {
        snprintf(key, sizeof(key), "new-%d", i);
        session_mem_put(m, SESSION_RID, key, "h", 100);
    }
    session_mem_stats(m, &st);
    assert_int_equal(st.expirations, 100);
    assert_int_equal(st.entries, 100);
    assert_int_equal(st.evictions, 0);
    session_mem_free(m);
}

static void test_constant_time(void **state)
{
    struct session_mem *m = session_mem_new(BIG, TTL, SEED0, SEED1);
    struct session_mem_stats st;
    char key[32];
    int i;

    (void)state;
    for (i = 0; i < BIG; i++) {
        snprintf(key, sizeof(key), "chatcmpl-%d", i);
        assert_int_equal(session_mem_put(m, SESSION_RID, key, "h", 0), 0);
    }
    for (i = 0; i < BIG; i++) {
        snprintf(key, sizeof(key), "chatcmpl-%d", i);
        assert_non_null(session_mem_get(m, SESSION_RID, key, 1));
    }
    session_mem_stats(m, &st);
    assert_int_equal(st.entries, BIG);
    assert_true(st.buckets >= BIG / 2);
    /* load factor <= 1 and a good hash: a couple of compares per lookup */
    assert_true((double)st.probes / (double)st.lookups < 2.0);
    /* incremental rehash: no operation moved more than a few buckets'
     * worth of entries, while a stop-the-world rehash at this size would
     * move over 100000 at once */
    assert_true(st.max_step_moves <= 64);
    session_mem_free(m);

    /* at max_entries every new key costs exactly one eviction */
    m = session_mem_new(SMALL_MAX, TTL, SEED0, SEED1);
    for (i = 0; i < BIG; i++) {
        snprintf(key, sizeof(key), "u%d", i);
        session_mem_put(m, SESSION_STICKY, key, "h", 0);
    }
    session_mem_stats(m, &st);
    assert_int_equal(st.entries, SMALL_MAX);
    assert_int_equal(st.evictions, BIG - SMALL_MAX);
    assert_true((double)st.probes / (double)st.lookups < 2.0);
    session_mem_free(m);
}

/* ---- response ids ----------------------------------------------------------- */

static enum session_id_result extract(const char *s, char *out)
{
    return session_extract_id(s, strlen(s), out, ID_LEN);
}

static void test_id_json(void **state)
{
    char out[ID_LEN];

    (void)state;
    assert_int_equal(extract("{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion\"}", out),
                     SESSION_ID_FOUND);
    assert_string_equal(out, "chatcmpl-1");
    /* after nested values holding brackets, quotes and an inner "id" */
    assert_int_equal(extract(" \n{ \"choices\" : [ {\"id\": \"inner\", \"t\": \"} ] \\\" {\"}],"
                             " \"n\": -1.5e3, \"ok\": true, \"z\": null,"
                             " \"id\" : \"chatcmpl-2\" }", out), SESSION_ID_FOUND);
    assert_string_equal(out, "chatcmpl-2");
    assert_int_equal(extract("{\"object\":\"x\",\"choices\":[]}", out), SESSION_ID_NONE);
    assert_int_equal(extract("{\"id\":42}", out), SESSION_ID_NONE);
    assert_int_equal(extract("{\"id\":\"a\\\"b\"}", out), SESSION_ID_NONE);
    assert_int_equal(extract("{\"id\":\"\"}", out), SESSION_ID_NONE);
    /* keys are compared decoded (jscan.c), as jansson would */
    assert_int_equal(extract("{\"i\\u0064\":\"x\"}", out), SESSION_ID_FOUND);
    assert_string_equal(out, "x");
    /* checked as strictly as jansson up to the id: invalid before it, no id */
    assert_int_equal(extract("{\"a\":01,\"id\":\"x\"}", out), SESSION_ID_NONE);
    assert_int_equal(extract("{\"a\":\"\xff\",\"id\":\"x\"}", out), SESSION_ID_NONE);
    /* cut inside a token before the id: wait for more */
    assert_int_equal(extract("{\"n\":12", out), SESSION_ID_MORE);
    assert_int_equal(extract("{\"n\":fal", out), SESSION_ID_MORE);
    assert_int_equal(extract("{\"n\":\"\\u00", out), SESSION_ID_MORE);
    assert_int_equal(extract("[1,2]", out), SESSION_ID_NONE);
    assert_int_equal(extract("", out), SESSION_ID_MORE);
    assert_int_equal(extract("  ", out), SESSION_ID_MORE);
    {
        char big[ID_LEN + 32];

        snprintf(big, sizeof(big), "{\"id\":\"%0*d\"}", ID_LEN, 0);
        assert_int_equal(extract(big, out), SESSION_ID_NONE);   /* does not fit */
    }
}

/* Every prefix says MORE until the id's closing quote has arrived. */
static void check_prefixes(const char *body, const char *id)
{
    const char *at = strstr(body, id);
    size_t need, len;
    char out[ID_LEN];
    enum session_id_result r;

    assert_non_null(at);
    need = (size_t)(at - body) + strlen(id) + 1;
    for (len = 0; len <= strlen(body); len++) {
        r = session_extract_id(body, len, out, sizeof(out));
        if (len < need) {
            assert_int_equal(r, SESSION_ID_MORE);
        } else {
            assert_int_equal(r, SESSION_ID_FOUND);
            assert_string_equal(out, id);
        }
    }
}

static void test_id_prefixes(void **state)
{
    (void)state;
    check_prefixes("{\"model\": \"m\", \"usage\": {\"a\": [1, {\"b\": \"}\"}]}, "
                   "\"id\": \"chatcmpl-abc\", \"choices\": []}", "chatcmpl-abc");
    check_prefixes(": keep-alive\r\nevent: message\r\n"
                   "data: {\"id\":\"chatcmpl-s1\",\"choices\":[{\"delta\":{}}]}\r\n\r\n"
                   "data: [DONE]\r\n\r\n", "chatcmpl-s1");
}

static void test_id_sse(void **state)
{
    char out[ID_LEN];

    (void)state;
    assert_int_equal(extract("data: {\"id\":\"c1\"}\n\ndata: {\"id\":\"c2\"}\n\n", out),
                     SESSION_ID_FOUND);
    assert_string_equal(out, "c1");
    assert_int_equal(extract("data:{\"object\":\"x\", \"id\":\"c3\"}\n\n", out), SESSION_ID_FOUND);
    assert_string_equal(out, "c3");
    /* the first chunk has no id: there is none */
    assert_int_equal(extract("data: {\"object\":\"x\"}\n\ndata: {\"id\":\"c4\"}\n\n", out),
                     SESSION_ID_NONE);
    assert_int_equal(extract("data: [DONE]\n\n", out), SESSION_ID_NONE);
    /* a whole line whose JSON is cut short (multi-line data) */
    assert_int_equal(extract("data: {\"object\":\n", out), SESSION_ID_NONE);
    assert_int_equal(extract("event: ping\n", out), SESSION_ID_MORE);
    assert_int_equal(extract("dat", out), SESSION_ID_MORE);
}

/* ---- the session with the memory store ------------------------------------------- */

struct answer {
    int   calls;
    char  host[SESSION_HOST_MAX + 1];
    int   null;
};

static void on_answer(void *arg, const char *host)
{
    struct answer *a = arg;

    a->calls++;
    a->null = host == NULL;
    snprintf(a->host, sizeof(a->host), "%s", host ? host : "");
}

static void base_config(struct config *c)
{
    memset(c, 0, sizeof(*c));
    c->sessions.store = STORE_MEMORY;
    c->sessions.ttl_ms = TTL;
    c->sessions.max_entries = 2;
    c->sessions.redis_url = "redis://127.0.0.1:6379/0";
    c->sessions.redis_prefix = "test:";
    c->sessions.redis_timeout_ms = 200;
}

static void test_session_memory(void **state)
{
    struct config c;
    struct session *s;
    struct session_metrics m;
    struct answer a = { 0, "", 0 };
    char err[256];
    json_t *st;

    (void)state;
    base_config(&c);
    s = session_new(NULL, &c, 7, "127.0.0.1:8080", err, sizeof(err));
    assert_non_null(s);
    assert_int_equal(session_put(s, SESSION_RID, "r1", "h1", 0), 0);
    /* the memory store answers before session_get returns */
    assert_null(session_get(s, SESSION_RID, "r1", 1, on_answer, &a));
    assert_int_equal(a.calls, 1);
    assert_string_equal(a.host, "h1");
    assert_null(session_get(s, SESSION_RID, "r2", 1, on_answer, &a));
    assert_int_equal(a.calls, 2);
    assert_true(a.null);
    assert_null(session_get(s, SESSION_RID, "r1", TTL, on_answer, &a));
    assert_true(a.null);                        /* expired */
    session_publish_key(s, "0123456789abcdef", 1, 0);

    session_metrics_read(s, &m);
    assert_int_equal(m.hits, 1);
    assert_int_equal(m.misses, 2);
    assert_int_equal(m.puts, 1);
    assert_int_equal(m.expirations, 1);
    assert_int_equal(m.shared_dropped, 1);
    assert_int_equal(m.redis_configured, 0);
    assert_int_equal(m.replicas, 1);

    st = session_status_json(s);
    assert_non_null(st);
    assert_string_equal(json_string_value(json_object_get(st, "store")), "memory");
    assert_null(json_object_get(st, "redis"));
    assert_int_equal(json_integer_value(json_object_get(json_object_get(st, "replica"),
                                                        "generation")), 7);
    json_decref(st);

    /* reload: a smaller max_entries applies at once */
    session_put(s, SESSION_RID, "x", "h", 2000);
    session_put(s, SESSION_RID, "y", "h", 2000);
    c.sessions.max_entries = 1;
    assert_int_equal(session_reconfigure(s, &c, 8, err, sizeof(err)), 0);
    session_metrics_read(s, &m);
    assert_int_equal(m.entries, 1);
    session_free(s);
}

/* Redis configured but unreachable: everything is answered from memory at
 * once, nothing fails, the password never shows. */
static void test_session_redis_unreachable(void **state)
{
    struct event_base *base = event_base_new();
    struct config c;
    struct session *s;
    struct session_metrics m;
    struct answer a = { 0, "", 0 };
    char err[256], *dump;
    json_t *st;

    (void)state;
    assert_non_null(base);
    base_config(&c);
    c.sessions.store = STORE_REDIS;
    c.sessions.redis_url = "redis://:s3cret-pass@127.0.0.1:1/2";
    s = session_new(base, &c, 1, "127.0.0.1:8080", err, sizeof(err));
    assert_non_null(s);
    event_base_loop(base, EVLOOP_NONBLOCK);
    assert_int_equal(session_put(s, SESSION_RID, "r1", "h1", 0), 0);
    assert_null(session_get(s, SESSION_RID, "r1", 1, on_answer, &a));
    assert_int_equal(a.calls, 1);
    assert_string_equal(a.host, "h1");
    session_publish_breaker(s, "h1", INT64_MAX / 2);
    session_metrics_read(s, &m);
    assert_int_equal(m.redis_configured, 1);
    assert_int_equal(m.redis_up, 0);
    assert_true(m.fallbacks >= 2);
    assert_int_equal(m.shared_dropped, 1);

    st = session_status_json(s);
    dump = json_dumps(st, JSON_COMPACT);
    assert_non_null(dump);
    assert_null(strstr(dump, "s3cret"));
    assert_non_null(strstr(dump, "redis://:***@127.0.0.1:1/2"));
    assert_string_not_equal(json_string_value(json_object_get(json_object_get(st, "redis"),
                                                              "state")), "up");
    free(dump);
    json_decref(st);

    /* a bad URL on reload is refused, the old settings stay */
    c.sessions.redis_url = "http://x";
    assert_int_equal(session_reconfigure(s, &c, 2, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "sessions.redis.url"));
    session_free(s);
    event_base_free(base);
}

static void test_url_problems(void **state)
{
    (void)state;
    assert_null(session_redis_url_problem("redis://127.0.0.1:6379/0"));
    assert_null(session_redis_url_problem("redis://localhost"));
    assert_null(session_redis_url_problem("redis://:p%40ss@host:1/15"));
    assert_null(session_redis_url_problem("redis://user:pw@[::1]:6380"));
    assert_null(session_redis_url_problem("unix:/run/redis.sock"));
    assert_null(session_redis_url_problem("unix:///run/redis.sock"));
    assert_non_null(session_redis_url_problem("http://host"));
    assert_non_null(session_redis_url_problem("redis://"));
    assert_non_null(session_redis_url_problem("redis://host:0"));
    assert_non_null(session_redis_url_problem("redis://host:99999"));
    assert_non_null(session_redis_url_problem("redis://host:6379/x"));
    assert_non_null(session_redis_url_problem("redis://nopass@host"));
    assert_non_null(session_redis_url_problem("redis://:@host"));
    assert_non_null(session_redis_url_problem("redis://:%zz@host"));
    assert_non_null(session_redis_url_problem("redis://[::1"));
    assert_non_null(session_redis_url_problem("unix:relative"));
    /* messages never echo a password */
    assert_null(strstr(session_redis_url_problem("redis://:topsecret@host:x"), "topsecret"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_put_get),
        cmocka_unit_test(test_rejects_unstorable),
        cmocka_unit_test(test_ttl_expiry),
        cmocka_unit_test(test_lru_eviction),
        cmocka_unit_test(test_slab_and_malloc_entries_churn),
        cmocka_unit_test(test_sweep_reclaims_expired),
        cmocka_unit_test(test_constant_time),
        cmocka_unit_test(test_id_json),
        cmocka_unit_test(test_id_prefixes),
        cmocka_unit_test(test_id_sse),
        cmocka_unit_test(test_session_memory),
        cmocka_unit_test(test_session_redis_unreachable),
        cmocka_unit_test(test_url_problems),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
