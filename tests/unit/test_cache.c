/*
 * test_cache.c -- the response cache's store and key (src/core/cache.c): hits,
 * ttl, replacement, the byte bound with least-recently-used eviction, the
 * entry bound, and a key blind to stream, stream_options and user only.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "cache.h"
#include "cache_sse.h"

static void key_of(int i, char *k)
{
    snprintf(k, CACHE_KEY_LEN + 1, "%064d", i);
}

static void test_hit_ttl_replace(void **state)
{
    struct cache *c = cache_new(1 << 20, 1 << 20, 1000);
    struct cache_hit h;
    char k[CACHE_KEY_LEN + 1];
    struct cache_stats st;

    (void)state;
    key_of(1, k);
    assert_int_equal(cache_get(c, k, 0, &h), 0);
    assert_int_equal(cache_put(c, k, 200, "application/json", "{\"a\":1}", 7, 100), 0);
    assert_int_equal(cache_get(c, k, 1099, &h), 1);
    assert_int_equal(h.status, 200);
    assert_string_equal(h.ctype, "application/json");
    assert_memory_equal(h.body, "{\"a\":1}", 7);
    assert_int_equal(h.stored_ms, 100);
    assert_int_equal(cache_put(c, k, 201, NULL, "x", 1, 500), 0);     /* replaced */
    assert_int_equal(cache_get(c, k, 1499, &h), 1);
    assert_int_equal(h.status, 201);
    assert_null(h.ctype);
    assert_int_equal(cache_get(c, k, 1500, &h), 0);                  /* expired */
    cache_stats(c, &st);
    assert_int_equal(st.entries, 0);
    assert_int_equal(st.bytes, 0);
    assert_int_equal(st.expirations, 1);
    assert_int_equal(cache_put(c, "short", 200, NULL, "x", 1, 0), -1);
    cache_free(c);
}

static void test_lru_bound(void **state)
{
    char body[400], k[CACHE_KEY_LEN + 1];
    struct cache *c;
    struct cache_hit h;
    struct cache_stats st;
    int i;

    (void)state;
    memset(body, 'b', sizeof(body));
    c = cache_new(3 * 600, 1000, 60000);    /* three entries of ~400 B + overhead */
    for (i = 0; i < 3; i++) {
        key_of(i, k);
        assert_int_equal(cache_put(c, k, 200, NULL, body, sizeof(body), i), 0);
    }
    key_of(0, k);
    assert_int_equal(cache_get(c, k, 10, &h), 1);   /* 0 is now the most recent */
    key_of(3, k);
    assert_int_equal(cache_put(c, k, 200, NULL, body, sizeof(body), 11), 0);
    cache_stats(c, &st);
    assert_true(st.bytes <= 3 * 600);
    assert_int_equal(st.evictions, 1);
    key_of(1, k);
    assert_int_equal(cache_get(c, k, 12, &h), 0);   /* the least recently used went */
    key_of(0, k);
    assert_int_equal(cache_get(c, k, 12, &h), 1);
    /* larger than max_entry_bytes: not stored */
    {
        char big[2000];
        memset(big, 'x', sizeof(big));
        key_of(9, k);
        assert_int_equal(cache_put(c, k, 200, NULL, big, sizeof(big), 13), -1);
    }
    /* many entries: the table grows, every one is found */
    cache_free(c);
    c = cache_new(1 << 24, 1000, 60000);
    for (i = 0; i < 5000; i++) {
        key_of(i, k);
        assert_int_equal(cache_put(c, k, 200, NULL, "v", 1, 0), 0);
    }
    for (i = 0; i < 5000; i++) {
        key_of(i, k);
        assert_int_equal(cache_get(c, k, 1, &h), 1);
    }
    cache_free(c);
}

static void test_key(void **state)
{
    char a[CACHE_KEY_LEN + 1], b[CACHE_KEY_LEN + 1];
    int det = -1;
    const char *j = "{\"b\":1,\"a\":[1,2],\"temperature\":0}";

    (void)state;
    assert_int_equal(cache_key("chat", "m", NULL, j, strlen(j), a, &det), 0);
    assert_int_equal(det, 1);
    assert_int_equal(strlen(a), CACHE_KEY_LEN);
    {
        const char *o = "{\"a\":[1,2], \"stream\":true,\"user\":\"u\",\"stream_options\":{},"
                        "\"temperature\":0,\"b\":1}";
        assert_int_equal(cache_key("chat", "m", NULL, o, strlen(o), b, &det), 0);
    }
    assert_string_equal(a, b);              /* order, spacing, stream, user: same key */
    assert_int_equal(cache_key("chat", "m2", NULL, "{\"b\":1}", 7, b, &det), 0);
    assert_int_equal(det, 0);
    assert_string_not_equal(a, b);
    assert_int_equal(cache_key("chat", "m", NULL, "{\"b\":1}", 7, a, &det), 0);
    assert_string_not_equal(a, b);          /* the model counts */
    assert_int_equal(cache_key("chat", "m", "client", "{\"b\":1}", 7, b, &det), 0);
    assert_string_not_equal(a, b);          /* so does the client */
    assert_int_equal(cache_key("embeddings", "m", NULL, "{\"b\":1}", 7, b, &det), 0);
    assert_string_not_equal(a, b);          /* and the route */
    assert_int_equal(cache_key("chat", "m", NULL, "{\"seed\":3}", 10, b, &det), 0);
    assert_int_equal(det, 1);
    assert_int_equal(cache_key("chat", "m", NULL, "[1]", 3, b, &det), -1);
}

static void test_stream_and_json(void **state)
{
    const char *sse =
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":5,\"model\":\"m\","
        "\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"He\"}}]}\n\n"
        "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"llo\"},"
        "\"finish_reason\":\"stop\"}]}\r\n\r\n"
        "data: {\"id\":\"c1\",\"choices\":[],\"usage\":{\"prompt_tokens\":1}}\n\n"
        "data: [DONE]\n\n";
    char *j, *back, *again;
    size_t n = 0;

    (void)state;
    j = cache_sse_to_json(1, sse, strlen(sse));
    assert_string_equal(j, "{\"id\":\"c1\",\"object\":\"chat.completion\",\"created\":5,"
                        "\"model\":\"m\",\"choices\":[{\"index\":0,\"message\":{\"role\":"
                        "\"assistant\",\"content\":\"Hello\"},\"finish_reason\":\"stop\"}],"
                        "\"usage\":{\"prompt_tokens\":1}}");
    back = cache_json_to_sse(1, j, strlen(j), 1, &n);
    assert_int_equal(n, strlen(back));
    assert_non_null(strstr(back, "\"usage\":{\"prompt_tokens\":1}"));
    assert_int_equal(strcmp(back + n - 14, "data: [DONE]\n\n"), 0);
    again = cache_sse_to_json(1, back, n);      /* the round trip holds */
    assert_string_equal(again, j);
    free(again);
    free(back);
    back = cache_json_to_sse(1, j, strlen(j), 0, &n);
    assert_null(strstr(back, "usage"));
    free(back);
    free(j);
    /* cut short (no [DONE]) or with tool calls: not converted */
    assert_null(cache_sse_to_json(1, sse, strlen(sse) - 14));
    j = "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[]}}]}\n\n"
        "data: [DONE]\n\n";
    assert_null(cache_sse_to_json(1, j, strlen(j)));
    assert_null(cache_json_to_sse(1, "{}", 2, 0, &n));
    j = "{\"stream_options\":{\"include_usage\":true}}";
    assert_int_equal(cache_sse_wants_usage(j, strlen(j)), 1);
    assert_int_equal(cache_sse_wants_usage("{}", 2), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hit_ttl_replace),
        cmocka_unit_test(test_lru_bound),
        cmocka_unit_test(test_key),
        cmocka_unit_test(test_stream_and_json),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
