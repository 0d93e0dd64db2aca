/*
 * test_content.c -- the chat answer text kept for /v1/verify (src/core/content.c):
 * read from a JSON answer and from a stream, JSON-encoded, cut to its bound
 * on a character boundary, and added to a verify body.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "content.h"

#define S(x) x, strlen(x)

static void test_json_answer(void **state)
{
    char *c;

    (void)state;
    c = content_from_json(S("{\"id\":\"x\",\"choices\":[{\"index\":0,\"message\":"
                            "{\"role\":\"assistant\",\"content\":\"Hi \\\"you\\\"\"}}]}"), 100);
    assert_string_equal(c, "\"Hi \\\"you\\\"\"");
    free(c);
    assert_null(content_from_json(S("{\"choices\":[{\"message\":{\"content\":null}}]}"), 100));
    assert_null(content_from_json(S("{\"choices\":[]}"), 100));
    assert_null(content_from_json(S("not json"), 100));
}

static void test_stream_pieces_joined(void **state)
{
    const char *sse =
        "data: {\"id\":\"a\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\"}}]}\n\n"
        "data: {\"id\":\"a\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"tok0 \"}}]}\r\n\r\n"
        ": comment\n\n"
        "data:{\"id\":\"a\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"tok1\"}}]}\n\n"
        "data: {\"id\":\"a\",\"choices\":[],\"usage\":{\"prompt_tokens\":1}}\n\n"
        "data: [DONE]\n\n";
    char *c = content_from_sse(S(sse), 100);

    (void)state;
    assert_string_equal(c, "\"tok0 tok1\"");
    free(c);
    assert_null(content_from_sse(S("data: [DONE]\n\n"), 100));
}

static void test_cut_on_a_character_boundary(void **state)
{
    /* "é" is two bytes: the cut never splits it, the JSON stays valid. */
    char *c = content_from_json(S("{\"choices\":[{\"message\":{\"content\":\"ab\xc3\xa9\xc3\xa9\"}}]}"), 6);

    (void)state;
    assert_string_equal(c, "\"ab\xc3\xa9\"");
    free(c);
    c = content_from_json(S("{\"choices\":[{\"message\":{\"content\":\"\\n\\n\\n\\n\"}}]}"), 7);
    assert_true(strlen(c) <= 7 && strncmp(c, "\"\\n", 3) == 0 && c[strlen(c) - 1] == '"');
    free(c);
}

static void test_added_to_the_body(void **state)
{
    char *b = content_add_to_body(S("{\"id\":\"chatcmpl-1\"}"), "\"Hello\"");

    (void)state;
    assert_string_equal(b, "{\"id\":\"chatcmpl-1\",\"content\":\"Hello\"}");
    free(b);
    assert_null(content_add_to_body(S("[1]"), "\"x\""));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_json_answer),
        cmocka_unit_test(test_stream_pieces_joined),
        cmocka_unit_test(test_cut_on_a_character_boundary),
        cmocka_unit_test(test_added_to_the_body),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
