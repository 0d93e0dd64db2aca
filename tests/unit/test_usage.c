/*
 * test_usage.c -- src/core/usage.c: usage of every API family's JSON answer and
 * stream, found in the tail (and a stream's head), whatever the chunking.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "usage.h"

static void test_chat_json(void **st)
{
    const char *b = "{\"id\":\"x\",\"choices\":[{\"message\":{\"content\":\"say \\\"usage\\\"\"}}],"
                    "\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":3,\"total_tokens\":15,"
                    "\"prompt_tokens_details\":{\"cached_tokens\":4}}}";
    struct usage u;

    (void)st;
    assert_int_equal(usage_scan_last(b, strlen(b), &u), 0);
    assert_int_equal(u.input, 12);
    assert_int_equal(u.output, 3);
    assert_int_equal(u.cached, 4);
    assert_int_equal(u.have, USAGE_HAVE_INPUT | USAGE_HAVE_OUTPUT | USAGE_HAVE_CACHED);
}

static void test_embeddings_and_responses(void **st)
{
    const char *e = "{\"data\":[],\"usage\":{\"prompt_tokens\":7,\"total_tokens\":7}}";
    const char *r = "{\"id\":\"resp_1\",\"usage\":{\"input_tokens\":9,\"input_tokens_details\":"
                    "{\"cached_tokens\":2},\"output_tokens\":5},\"user\":null,\"metadata\":{}}";
    struct usage u;

    (void)st;
    assert_int_equal(usage_scan_last(e, strlen(e), &u), 0);
    assert_int_equal(u.input, 7);
    assert_int_equal(u.have, USAGE_HAVE_INPUT);
    assert_int_equal(usage_scan_last(r, strlen(r), &u), 0);
    assert_int_equal(u.input, 9);
    assert_int_equal(u.output, 5);
    assert_int_equal(u.cached, 2);
}

static void test_anthropic_json(void **st)
{
    const char *b = "{\"type\":\"message\",\"usage\":{\"input_tokens\":10,"
                    "\"cache_creation_input_tokens\":1,\"cache_read_input_tokens\":6,"
                    "\"output_tokens\":4}}";
    struct usage u;

    (void)st;
    assert_int_equal(usage_scan_last(b, strlen(b), &u), 0);
    assert_int_equal(u.input, 17);
    assert_int_equal(u.output, 4);
    assert_int_equal(u.cached, 6);
}

static void test_none_and_broken(void **st)
{
    const char *a = "{\"usage\":null}";
    const char *b = "{\"usage\":{\"prompt_tokens\":-1}}";
    const char *c = "{\"usage\":{\"prompt_tokens\":3";       /* cut */
    const char *d = "garbage \"usage\" : [1]";
    struct usage u;

    (void)st;
    assert_int_equal(usage_scan_last(a, strlen(a), &u), -1);
    assert_int_equal(usage_scan_last(b, strlen(b), &u), -1);
    assert_int_equal(usage_scan_last(c, strlen(c), &u), -1);
    assert_int_equal(usage_scan_last(d, strlen(d), &u), -1);
    assert_int_equal(usage_scan_last("", 0, &u), -1);
}

/* The last valid usage object wins, however many keys come after it or
 * before it (the scan keeps the last 16 keys it finds and walks back past
 * them only when none of those is valid). */
static void test_scan_last_many_keys(void **st)
{
    char b[8192];
    size_t n = 0;
    int i, nulls[] = { 0, 3, 15, 16, 17, 40 }, k;
    struct usage u;

    (void)st;
    for (k = 0; k < (int)(sizeof(nulls) / sizeof(nulls[0])); k++) {
        n = (size_t)sprintf(b, "{\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}"
                               "{\"usage\":{\"prompt_tokens\":%d,\"completion_tokens\":2}}",
                            100 + k);
        for (i = 0; i < nulls[k]; i++)
            n += (size_t)sprintf(b + n, "{\"usage\":null}");
        assert_int_equal(usage_scan_last(b, n, &u), 0);
        assert_int_equal(u.input, 100 + k);
        assert_int_equal(u.output, 2);
    }
    /* a key whose closing quote opens the next one */
    n = (size_t)sprintf(b, "\"usage\"usage\":{\"prompt_tokens\":5}");
    assert_int_equal(usage_scan_last(b, n, &u), 0);
    assert_int_equal(u.input, 5);
}

/* The last key is found from the end and tried first; when it starts no
 * valid usage object (a string value "usage", a nested key, a cut tail) the
 * earlier keys are tried as before. 'g's after the usage, a key at the very
 * start or cut at the very end, a "usage" inside a string's escaped quotes. */
static void test_scan_last_from_end(void **st)
{
    static const struct {
        const char *text;
        int ok;
        uint64_t input, output;
    } cases[] = {
        { "{\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1},\"kind\":\"usage\"}", 0, 3, 1 },
        { "{\"usage\":{\"prompt_tokens\":4},\"meta\":{\"usage\":\"n/a\"}}", 0, 4, 0 },
        { "{\"usage\":{\"prompt_tokens\":5},\"tag\":\"gggg\",\"g\":\"usag\"}", 0, 5, 0 },
        { "\"usage\":{\"prompt_tokens\":6}", 0, 6, 0 },
        { "{\"usage\":{\"prompt_tokens\":7}}\"usage\"", 0, 7, 0 },
        { "{\"usage\":{\"prompt_tokens\":8}}\"usa", 0, 8, 0 },
        { "{\"usage\":{\"prompt_tokens\":9}}{\"usage\":{\"prompt_tokens\":10", 0, 9, 0 },
        { "{\"x\":\"say \\\"usage\\\": {\\\"prompt_tokens\\\": 1}\"}", -1, 0, 0 },
        { "{\"usage\" : {\"prompt_tokens\" : 11}, \"x\":\"say \\\"usage\\\"\"}", 0, 11, 0 },
        { "\"usage\"", -1, 0, 0 },
        { "usage\"", -1, 0, 0 },
        { "g", -1, 0, 0 },
    };
    size_t i;

    (void)st;
    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        size_t n = strlen(cases[i].text);
        char *b = malloc(n ? n : 1);            /* exactly the text: no byte past it */
        struct usage u;
        memcpy(b, cases[i].text, n);
        assert_int_equal(usage_scan_last(b, n, &u), cases[i].ok);
        if (cases[i].ok == 0) {
            assert_int_equal(u.input, cases[i].input);
            assert_int_equal(u.output, cases[i].output);
        }
        free(b);
    }
}

/* The usual usage objects are read without the JSON reader (quick_object):
 * OpenAI's pretty-printed one with both details objects, Anthropic's, a
 * compact one; anything else goes through the reader and gets its word:
 * an unknown or escaped name, a string, a negative, a real, 19 digits, a
 * leading zero, an object too deep, a cut. */
static void test_quick_and_fallback(void **st)
{
    static const struct {
        const char *usage;      /* the value of "usage" */
        int ok;
        uint64_t input, output, cached;
        unsigned have;
    } cases[] = {
        { "{\n    \"prompt_tokens\": 131,\n    \"completion_tokens\": 3,\n    \"total_tokens\": 134,\n"
          "    \"prompt_tokens_details\": {\n      \"cached_tokens\": 5,\n      \"audio_tokens\": 0\n"
          "    },\n    \"completion_tokens_details\": {\n      \"reasoning_tokens\": 0,\n"
          "      \"audio_tokens\": 0,\n      \"accepted_prediction_tokens\": 0,\n"
          "      \"rejected_prediction_tokens\": 0\n    }\n  }", 0, 131, 3, 5, 7 },
        { "{\"input_tokens\":10,\"cache_creation_input_tokens\":1,\"cache_read_input_tokens\":6,"
          "\"output_tokens\":4}", 0, 17, 4, 6, 7 },
        { "{\"input_tokens\":9,\"input_tokens_details\":{\"cached_tokens\":2},\"output_tokens\":5,"
          "\"output_tokens_details\":{\"reasoning_tokens\":1}}", 0, 9, 5, 2, 7 },
        { "{\"prompt_tokens\":0,\"completion_tokens\":123456789012345678}", 0, 0,
          123456789012345678ULL, 0, 3 },
        { "{\"prompt_tokens\":3,\"prompt_tokens\":4,\"prompt_tokens_details\":{\"cached_tokens\":1},"
          "\"prompt_tokens_details\":{\"audio_tokens\":1}}", 0, 4, 0, 1, 5 },
        { "{\"prompt_tokens\":1,\"completion_tokens_details\":{\"cached_tokens\":9}}", 0, 1, 0, 0,
          1 },
        /* through the reader */
        { "{\"prompt_tokens\":7,\"server_tool_use\":{\"web_search_requests\":0}}", 0, 7, 0, 0, 1 },
        { "{\"prompt_\\u0074okens\":8}", 0, 8, 0, 0, 1 },
        { "{\"prompt_tokens\":9,\"service_tier\":\"standard\"}", 0, 9, 0, 0, 1 },
        { "{\"prompt_tokens\":-1,\"completion_tokens\":2}", 0, 0, 2, 0, 2 },
        { "{\"prompt_tokens\":1.5,\"completion_tokens\":2e0}", -1, 0, 0, 0, 0 },
        { "{\"prompt_tokens\":1234567890123456789,\"completion_tokens\":2}", 0, 0, 2, 0, 2 },
        { "{\"prompt_tokens\":01}", -1, 0, 0, 0, 0 },
        { "{\"prompt_tokens_details\":{\"cached_tokens\":{\"x\":1}},\"prompt_tokens\":3}", 0, 3, 0,
          0, 1 },
        { "{\"prompt_tokens\":3,\"completion_tokens\":", -1, 0, 0, 0, 0 },
        { "{\"prompt_tokens\":3 \"completion_tokens\":1}", -1, 0, 0, 0, 0 },
        { "{\"prompt_tokens\":3,}", -1, 0, 0, 0, 0 },
    };
    char b[1024];
    size_t i;

    (void)st;
    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct usage u;
        int n = snprintf(b, sizeof(b), "{\"id\":\"x\",\n  \"usage\": %s\n}", cases[i].usage);
        char *t = malloc((size_t)n);           /* exactly the text: no byte past it */
        memcpy(t, b, (size_t)n);
        assert_int_equal(usage_scan_last(t, (size_t)n, &u), cases[i].ok);
        if (cases[i].ok == 0) {
            assert_int_equal(u.input, cases[i].input);
            assert_int_equal(u.output, cases[i].output);
            assert_int_equal(u.cached, cases[i].cached);
            assert_int_equal(u.have, cases[i].have);
        }
        free(t);
    }
}

/* A new stream reads back only what was fed (its buffers are not zeroed). */
static void test_stream_new_short(void **st)
{
    const char *s = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,"
                    "\"completion_tokens\":4}}\n\ndata: [DONE]\n\n";
    struct usage_stream *us = usage_stream_new();
    struct usage u;

    (void)st;
    assert_non_null(us);
    assert_int_equal(usage_stream_result(us, &u), -1);
    usage_stream_feed(us, s, strlen(s));
    assert_int_equal(usage_stream_result(us, &u), 0);
    assert_int_equal(u.input, 3);
    assert_int_equal(u.output, 4);
    assert_true(us->cap <= USAGE_STREAM_MIN);   /* a short stream holds little */
    assert_null(us->head);
    usage_stream_free(us);
}

/* Feeds s in pieces of `step` bytes. */
static void feed(struct usage_stream *us, const char *s, size_t len, size_t step)
{
    size_t i;

    for (i = 0; i < len; i += step)
        usage_stream_feed(us, s + i, len - i < step ? len - i : step);
}

/* A short stream (all of it in the tail) split at every point in pieces
 * of every size: its usage is found; one without a usage key has none. */
static void test_stream_key_across_feeds(void **st)
{
    struct usage_stream *us = NULL;
    char s[512];
    size_t n, step, i;
    struct usage u;

    (void)st;
    n = (size_t)sprintf(s, "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n"
                           "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,"
                           "\"completion_tokens\":4}}\n\ndata: [DONE]\n\n");
    for (step = 1; step <= 12; step++)
        for (i = 0; i < step; i++) {
            usage_stream_free(us);
            us = usage_stream_new();
            assert_non_null(us);
            usage_stream_feed(us, s, i);
            feed(us, s + i, n - i, step);
            assert_int_equal(usage_stream_result(us, &u), 0);
            assert_int_equal(u.input, 3);
            assert_int_equal(u.output, 4);
        }
    n = (size_t)sprintf(s, "data: {\"choices\":[{\"delta\":{\"content\":\"usage\"}}]}\n\n"
                           "data: [DONE]\n\n");
    for (step = 1; step <= 12; step++) {
        usage_stream_free(us);
        us = usage_stream_new();
        assert_non_null(us);
        feed(us, s, n, step);
        assert_int_equal(usage_stream_result(us, &u), -1);
    }
    n = (size_t)sprintf(s, "data: {\"choices\":[]}\n\n");
    usage_stream_free(us);
    us = usage_stream_new();
    assert_non_null(us);
    feed(us, s, n, 5);
    assert_int_equal(usage_stream_result(us, &u), -1);
    usage_stream_free(us);
}

static void test_stream_chat_long(void **st)
{
    struct usage_stream *us = NULL;
    char *big = malloc(200000);
    size_t n = 0;
    int i;
    struct usage u;
    size_t steps[] = { 1, 7, 100, 5000, 20000 };
    size_t k;

    (void)st;
    assert_non_null(big);
    for (i = 0; i < 1500; i++)
        n += (size_t)sprintf(big + n, "data: {\"choices\":[{\"delta\":{\"content\":\"t%d\"}}],"
                                      "\"usage\":null}\n\n", i);
    n += (size_t)sprintf(big + n, "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":21,"
                                  "\"completion_tokens\":1500}}\n\ndata: [DONE]\n\n");
    for (k = 0; k < sizeof(steps) / sizeof(steps[0]); k++) {
        usage_stream_free(us);
        us = usage_stream_new();
        assert_non_null(us);
        feed(us, big, n, steps[k]);
        assert_int_equal(usage_stream_result(us, &u), 0);
        assert_int_equal(u.input, 21);
        assert_int_equal(u.output, 1500);
    }
    usage_stream_free(us);
    free(big);
}

static void test_stream_anthropic(void **st)
{
    struct usage_stream *us = NULL;
    char big[40000];
    size_t n = 0;
    int i;
    struct usage u;

    (void)st;
    n += (size_t)sprintf(big + n, "event: message_start\ndata: {\"type\":\"message_start\","
                         "\"message\":{\"id\":\"msg_1\",\"usage\":{\"input_tokens\":30,"
                         "\"cache_read_input_tokens\":5,\"output_tokens\":1}}}\n\n");
    for (i = 0; i < 400; i++)
        n += (size_t)sprintf(big + n, "event: content_block_delta\ndata: {\"type\":"
                             "\"content_block_delta\",\"delta\":{\"text\":\"x\"}}\n\n");
    n += (size_t)sprintf(big + n, "event: message_delta\ndata: {\"type\":\"message_delta\","
                         "\"usage\":{\"output_tokens\":42}}\n\nevent: message_stop\n"
                         "data: {\"type\":\"message_stop\"}\n\n");
    us = usage_stream_new();
    assert_non_null(us);
    feed(us, big, n, 33);
    assert_int_equal(usage_stream_result(us, &u), 0);
    assert_int_equal(u.input, 35);
    assert_int_equal(u.cached, 5);
    assert_int_equal(u.output, 42);
    usage_stream_free(us);
}

static void test_usage_only_chunk(void **st)
{
    const char *a = "{\"id\":\"c\",\"choices\":[ ],\"usage\":{\"prompt_tokens\":1}}";
    const char *b = "{\"id\":\"c\",\"choices\":[{\"delta\":{}}],\"usage\":{\"prompt_tokens\":1}}";
    const char *c = "{\"id\":\"c\",\"choices\":[],\"usage\":null}";

    (void)st;
    assert_true(usage_only_chunk(a, strlen(a)));
    assert_false(usage_only_chunk(b, strlen(b)));
    assert_false(usage_only_chunk(c, strlen(c)));
    assert_false(usage_only_chunk("[DONE]", 6));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_chat_json),
        cmocka_unit_test(test_embeddings_and_responses),
        cmocka_unit_test(test_anthropic_json),
        cmocka_unit_test(test_none_and_broken),
        cmocka_unit_test(test_scan_last_many_keys),
        cmocka_unit_test(test_scan_last_from_end),
        cmocka_unit_test(test_quick_and_fallback),
        cmocka_unit_test(test_stream_new_short),
        cmocka_unit_test(test_stream_key_across_feeds),
        cmocka_unit_test(test_stream_chat_long),
        cmocka_unit_test(test_stream_anthropic),
        cmocka_unit_test(test_usage_only_chunk),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
