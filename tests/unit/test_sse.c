/*
 * test_sse.c -- event boundaries of a relayed SSE stream and the frame of
 * an added event (src/core/sse.c).
 *
 * The boundary check is compared with a plain forward reading of the SSE
 * line rules on every way of cutting sample streams into three chunks:
 * after each chunk, what a relay passes on must end exactly at the last
 * event boundary it has seen, so a break at any byte leaves the client
 * with whole events only.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "sse.h"

#define MAXLEN 256

/* ok[i] = 1 when a relay may stop after i bytes: the end of a blank line
 * (for a CRLF one, after its CR too). A blank line at the very start of the
 * stream is not taken (it ends no event). */
static void reference(const char *s, size_t n, unsigned char *ok)
{
    size_t i = 0, line = 0;
    int start = 1;

    memset(ok, 0, n + 1);
    while (i < n) {
        char c = s[i];
        if (c == '\r' || c == '\n') {
            int crlf = c == '\r' && i + 1 < n && s[i + 1] == '\n';
            if (line == 0 && !start) {
                ok[i + 1] = 1;
                if (crlf)
                    ok[i + 2] = 1;
            }
            i += crlf ? 2 : 1;
            line = 0;
            start = 0;
        } else {
            line++;
            i++;
            start = 0;
        }
    }
}

/* The relay of proxy.c in miniature: pass on up to the boundary, hold the
 * rest. Checks after each chunk that what went out ends at the last
 * boundary seen. */
static void relay_check(const char *s, size_t n, const size_t *cuts, size_t ncuts,
                        const unsigned char *ok)
{
    struct sse_track t;
    size_t from = 0, out = 0, k;

    memset(&t, 0, sizeof(t));
    for (k = 0; k <= ncuts; k++) {
        size_t to = k < ncuts ? cuts[k] : n, end, best = 0, i;
        end = sse_event_end(&t, s + from, to - from);
        if (end > 0)
            out = from + end;          /* hold + this chunk up to end */
        for (i = 0; i <= to; i++)
            if (ok[i])
                best = i;
        if (out != best) {
            print_error("stream %.*s cut at", (int)n, s);
            for (i = 0; i < ncuts; i++)
                print_error(" %zu", cuts[i]);
            print_error(": out %zu, want %zu after %zu bytes\n", out, best, to);
            fail();
        }
        from = to;
    }
}

static const char *const streams[] = {
    "data: {\"a\":1}\n\ndata: {\"b\":2}\n\ndata: [DONE]\n\n",
    "data: {\"a\":1}\r\n\r\ndata: {\"b\":2}\r\n\r\n",
    "data: x\r\rdata: y\r\r",
    "event: message\ndata: one\ndata: two\n\n: comment\n\ndata: z\n\n",
    "data: a\r\n\ndata: b\n\r\ndata: c\r\r\ndata: d\n\r",
    "\n\n\r\ndata: lead\n\n",
    "data: no end yet\ndata: more",
    "id: 7\nretry: 10\n\n\n\ndata: after blanks\n\n",
};

static void test_every_three_way_cut(void **state)
{
    unsigned char ok[MAXLEN + 1];
    size_t s, i, j;

    (void)state;
    for (s = 0; s < sizeof(streams) / sizeof(streams[0]); s++) {
        const char *str = streams[s];
        size_t n = strlen(str);
        assert_true(n <= MAXLEN);
        reference(str, n, ok);
        for (i = 0; i <= n; i++)
            for (j = i; j <= n; j++) {
                size_t cuts[2] = { i, j };
                relay_check(str, n, cuts, 2, ok);
            }
    }
}

static void test_byte_by_byte(void **state)
{
    unsigned char ok[MAXLEN + 1];
    size_t cuts[MAXLEN], s, i;

    (void)state;
    for (s = 0; s < sizeof(streams) / sizeof(streams[0]); s++) {
        const char *str = streams[s];
        size_t n = strlen(str);
        reference(str, n, ok);
        for (i = 0; i < n; i++)
            cuts[i] = i + 1;
        relay_check(str, n, cuts, n ? n - 1 : 0, ok);
    }
}

static void test_whole_events_end_at_the_chunk_end(void **state)
{
    struct sse_track t;
    const char *a = "data: {\"x\":1}\n\n", *b = "data: {\"y\":\"2\\n\"}\n\ndata: {\"z\":";

    (void)state;
    memset(&t, 0, sizeof(t));
    assert_int_equal(sse_event_end(&t, a, strlen(a)), strlen(a));
    /* An escaped \n inside JSON is no line end. */
    assert_int_equal(sse_event_end(&t, b, strlen(b)), strlen("data: {\"y\":\"2\\n\"}\n\n"));
    assert_int_equal(sse_event_end(&t, "1}\n", 3), 0);
    assert_int_equal(sse_event_end(&t, "\n", 1), 1);     /* the blank line, alone */
    assert_int_equal(sse_event_end(&t, "", 0), 0);
}

static void test_frame(void **state)
{
    size_t len = 0;
    char *f;

    (void)state;
    f = sse_frame("error", "{\"error\":{\"code\":\"stream_timeout\"}}", &len);
    assert_non_null(f);
    assert_string_equal(f, "event: error\ndata: {\"error\":{\"code\":\"stream_timeout\"}}\n\n");
    assert_int_equal(len, strlen(f));
    free(f);
}

/* The data lines of a stored stream, whatever its line ends and other fields. */
static void test_next_data(void **state)
{
    static const char s[] = "event: x\r\ndata: {\"a\":1}\r\n\r\n: comment\n"
                            "data:[DONE]\n\nid: 7\ndata:   spaced\ndata:";
    const char *p = s, *end = s + sizeof(s) - 1, *v;
    size_t n;

    (void)state;
    assert_true(sse_next_data(&p, end, &v, &n));
    assert_int_equal(n, 7);
    assert_memory_equal(v, "{\"a\":1}", 7);
    assert_true(sse_next_data(&p, end, &v, &n));
    assert_int_equal(n, 6);
    assert_memory_equal(v, "[DONE]", 6);
    assert_true(sse_next_data(&p, end, &v, &n));
    assert_int_equal(n, 6);
    assert_memory_equal(v, "spaced", 6);
    assert_true(sse_next_data(&p, end, &v, &n));  /* "data:" at the very end */
    assert_int_equal(n, 0);
    assert_false(sse_next_data(&p, end, &v, &n));
    assert_ptr_equal(p, end);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_three_way_cut),
        cmocka_unit_test(test_byte_by_byte),
        cmocka_unit_test(test_whole_events_end_at_the_chunk_end),
        cmocka_unit_test(test_frame),
        cmocka_unit_test(test_next_data),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
