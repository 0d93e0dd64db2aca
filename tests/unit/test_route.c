/*
 * test_route.c -- src/core/route.c: the route table, ids in paths, error shapes,
 * the Responses stream id and the multipart/form-data check.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <jansson.h>

#include "route.h"

static void test_find(void **st)
{
    char id[64];
    int known;
    const struct api_route *r;

    (void)st;
    r = route_find("POST", "/v1/responses", &known, id, sizeof(id));
    assert_non_null(r);
    assert_int_equal(r->family, API_RESPONSES);
    assert_true(r->flags & API_RECORD_ID);
    r = route_find("GET", "/v1/responses/resp_abc-1", &known, id, sizeof(id));
    assert_non_null(r);
    assert_true(r->flags & API_ID_IN_PATH);
    assert_string_equal(id, "resp_abc-1");
    r = route_find("POST", "/v1/responses/resp_x/cancel", &known, id, sizeof(id));
    assert_non_null(r);
    assert_string_equal(id, "resp_x");
    r = route_find("GET", "/v1/responses/bad id", &known, id, sizeof(id));
    assert_non_null(r);
    assert_string_equal(id, "");
    assert_null(route_find("PUT", "/v1/responses/x", &known, id, sizeof(id)));
    assert_true(known);
    assert_null(route_find("GET", "/v1/messages", &known, id, sizeof(id)));
    assert_true(known);
    assert_null(route_find("GET", "/v1/nothing", &known, id, sizeof(id)));
    assert_false(known);
    r = route_find("POST", "/v1/messages/count_tokens", &known, id, sizeof(id));
    assert_true(r->flags & API_ANTHROPIC);
    assert_int_equal(route_family_of_path("/v1/audio/speech"), API_AUDIO);
    assert_int_equal(route_family_of_path("/v1/responsesX"), API_NONE);
    assert_int_equal(route_family_by_name("messages"), API_MESSAGES);
    assert_int_equal(route_family_by_name("video"), -1);
    assert_string_equal(route_family_label(API_PASSTHROUGH), "passthrough");
}

static void test_errors(void **st)
{
    char *a = route_error_body(API_ANTHROPIC, 429, "rate_limit_error", "x", "slow down");
    char *o = route_error_body(0, 404, "invalid_request_error", "not_found", "no \"such\"");
    char *s = route_stream_error(API_RESPONSES, 0, "stream_interrupted", "broken");
    char *t = route_stream_error(0, 0, "stream_timeout", "stalled");
    json_t *j;

    (void)st;
    j = json_loads(a, 0, NULL);
    assert_string_equal(json_string_value(json_object_get(j, "type")), "error");
    assert_string_equal(json_string_value(json_object_get(json_object_get(j, "error"), "type")),
                        "rate_limit_error");
    json_decref(j);
    j = json_loads(o, 0, NULL);
    assert_string_equal(json_string_value(json_object_get(json_object_get(j, "error"), "message")),
                        "no \"such\"");
    json_decref(j);
    j = json_loads(s, 0, NULL);
    assert_string_equal(json_string_value(json_object_get(j, "code")), "stream_interrupted");
    json_decref(j);
    j = json_loads(t, 0, NULL);
    assert_string_equal(json_string_value(json_object_get(json_object_get(j, "error"), "code")),
                        "stream_timeout");
    assert_string_equal(json_string_value(json_object_get(json_object_get(j, "error"), "type")),
                        "upstream_error");
    json_decref(j);
    free(t);
    free(a);
    free(o);
    free(s);
}

static void test_stream_id(void **st)
{
    const char *ev = "event: response.created\ndata: {\"type\":\"response.created\","
                     "\"response\":{\"object\":\"response\",\"id\":\"resp_42\"}}\n\n";
    char id[64];

    (void)st;
    assert_int_equal(route_stream_response_id(ev, 30, id, sizeof(id)), 0);
    assert_int_equal(route_stream_response_id(ev, strlen(ev), id, sizeof(id)), 1);
    assert_string_equal(id, "resp_42");
    assert_int_equal(route_stream_response_id("data: {\"a\":1}\n", 14, id, sizeof(id)), -1);
    assert_int_equal(route_stream_response_id(ev, strlen(ev), id, 4), -1);
}

static void test_form(void **st)
{
    const char *ct = "multipart/form-data; boundary=XyZ";
    const char *ok = "preamble\r\n--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n"
                     "whisper-1\r\n--XyZ\r\nContent-Disposition: form-data; name=\"file\"; "
                     "filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\nRIFF--XyZ\r\n\x00\x01"
                     "\r\n--XyZ--\r\n";
    size_t oklen;
    char model[32];

    (void)st;
    /* strlen stops at the NUL: count the rest by hand. */
    oklen = strlen(ok);
    oklen += 1 + strlen(ok + oklen + 1);
    assert_null(route_form_check(ct, ok, oklen, "model", model, sizeof(model)));
    assert_string_equal(model, "whisper-1");
    assert_non_null(route_form_check("application/json", ok, oklen, "model", model, sizeof(model)));
    assert_non_null(route_form_check("multipart/form-data", ok, oklen, "model", model, sizeof(model)));
    assert_non_null(route_form_check(ct, ok, 60, "model", model, sizeof(model)));  /* cut */
    {
        const char *nd = "--XyZ\r\nname=\"a\"\r\n\r\nx\r\n--XyZ--";   /* no disposition */
        assert_non_null(route_form_check(ct, nd, strlen(nd), "model", model, sizeof(model)));
    }
    assert_non_null(route_form_check(ct, "--XyZ--\r\n", 9, "model", model, sizeof(model)));
    assert_null(route_form_check("multipart/form-data; boundary=\"XyZ\"", ok, oklen, NULL,
                                 model, sizeof(model)));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_find),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_stream_id),
        cmocka_unit_test(test_form),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
