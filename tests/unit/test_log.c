/*
 * test_log.c -- log forging (CWE-117) in src/io/log.c: every field of an
 * access log line and every error message, with newlines, CR, tabs, ESC,
 * DEL, C1 controls, U+2028, quotes, backslashes, invalid UTF-8 and very
 * long values, in the text and the JSON formats, written to a temp file:
 * one line each, starting with its timestamp, no raw control character,
 * valid UTF-8, JSON lines that parse and give back the value.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>
#include <jansson.h>

#include "log.h"

#define HOSTILE "x\n2099-01-01T00:00:00.000Z FAKE host=m \"q\" \\ \r\t\x1b[31m\x7f\xc2\x85\xe2\x80\xa8\xff\xc3"

static char path[64];

static char *slurp(const char *p)
{
    FILE *f = fopen(p, "rb");
    char *buf = calloc(1, 1 << 20);
    size_t n;

    assert_non_null(f);
    assert_non_null(buf);
    n = fread(buf, 1, (1 << 20) - 1, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

/* Each line: a timestamp first, no C0/DEL byte, no C1 or U+2028/9, valid
 * UTF-8 (checked by jansson for JSON). Returns the number of lines. */
static size_t check_lines(char *text, int json)
{
    size_t n = 0;
    char *line, *save = NULL;

    assert_true(strlen(text) > 0 && text[strlen(text) - 1] == '\n');
    for (line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        const unsigned char *p;

        n++;
        for (p = (const unsigned char *)line; *p; p++) {
            assert_false(*p < 0x20 || *p == 0x7f);
            assert_false(p[0] == 0xc2 && p[1] >= 0x80 && p[1] < 0xa0);
            assert_false(p[0] == 0xe2 && p[1] == 0x80 && (p[2] == 0xa8 || p[2] == 0xa9));
        }
        if (json) {
            json_error_t err;
            json_t *o = json_loads(line, 0, &err);
            assert_non_null(o);
            assert_int_equal(strncmp(line, "{\"time\":\"", 9), 0);
            json_decref(o);
        } else {
            assert_true(line[4] == '-' && line[10] == 'T' && line[23] == 'Z' && line[24] == ' ');
        }
    }
    return n;
}

static int setup(void **state)
{
    int fd;

    (void)state;
    snprintf(path, sizeof(path), "/tmp/test_log_XXXXXX");
    fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    log_close();
    unlink(path);
    return 0;
}

static void access_line(const char *long_value)
{
    struct log_access a;

    memset(&a, 0, sizeof(a));
    a.request_id = HOSTILE;
    a.method = HOSTILE;
    a.path = long_value ? long_value : "/v1/" HOSTILE;
    a.model = long_value ? long_value : HOSTILE;
    a.host = HOSTILE;
    a.key_fp = HOSTILE;
    a.peer = HOSTILE;
    a.status = 200;
    a.attempts = 1;
    log_access(&a);
}

static void test_access_text(void **state)
{
    char *big = malloc(100001), *text;

    (void)state;
    memset(big, 'L', 100000);
    big[100000] = '\0';
    assert_int_equal(log_open_access(path, LOGF_TEXT), 0);
    access_line(NULL);
    access_line(big);
    log_close();
    text = slurp(path);
    assert_non_null(strstr(text, " model=x\\x0a2099-01-01T00:00:00.000Z\\x20FAKE\\x20host=m\\x20"
                                 "\\x22q\\x22\\x20\\x5c\\x20\\x0d\\x09\\x1b[31m\\x7f\\xc2\\x85"
                                 "\\xe2\\x80\\xa8\\xff\\xc3 host=x\\x0a"));
    assert_non_null(strstr(text, " \"x\\x0a2099-01-01T00:00:00.000Z FAKE host=m \\x22q\\x22 \\x5c "));
    assert_true(strlen(text) < 2 * 4 * 1024 + 8 * 4 * 256 + 2000);    /* bounded */
    assert_non_null(strstr(text, "LLL... "));
    assert_int_equal(check_lines(text, 0), 2);
    free(text);
    free(big);
}

static void test_access_json(void **state)
{
    char *big = malloc(100001), *text, *line;
    json_t *o;
    json_error_t err;

    (void)state;
    memset(big, 'L', 100000);
    big[100000] = '\0';
    assert_int_equal(log_open_access(path, LOGF_JSON), 0);
    access_line(NULL);
    access_line(big);
    log_close();
    text = slurp(path);
    line = strndup(text, (size_t)(strchr(text, '\n') - text));
    o = json_loads(line, 0, &err);
    assert_non_null(o);
    /* the value itself, but for its invalid UTF-8 (as the text \xNN) */
    assert_string_equal(json_string_value(json_object_get(o, "model")),
                        "x\n2099-01-01T00:00:00.000Z FAKE host=m \"q\" \\ \r\t\x1b[31m\x7f\xc2\x85"
                        "\xe2\x80\xa8\\xff\\xc3");
    json_decref(o);
    free(line);
    assert_int_equal(check_lines(text, 1), 2);
    free(text);
    free(big);
}

static void test_error_log(void **state)
{
    char *text;

    (void)state;
    assert_int_equal(log_open(path, LOGL_INFO, LOGF_TEXT), 0);
    log_warn("host m0: breaker for model %s is open", HOSTILE);
    log_close();
    text = slurp(path);
    assert_non_null(strstr(text, "[warn] host m0: breaker for model x\\x0a2099-01-01T00:00:00.000Z"
                                 " FAKE host=m \"q\" \\ \\x0d\\x09\\x1b[31m\\x7f\\xc2\\x85"
                                 "\\xe2\\x80\\xa8\\xff\\xc3 is open\n"));
    assert_int_equal(check_lines(text, 0), 1);
    free(text);

    assert_int_equal(truncate(path, 0), 0);
    assert_int_equal(log_open(path, LOGL_INFO, LOGF_JSON), 0);
    log_warn("model %s", HOSTILE);
    log_close();
    text = slurp(path);
    assert_non_null(strstr(text, "\"msg\":\"model x\\n2099-01-01T00:00:00.000Z FAKE host=m"
                                 " \\\"q\\\" \\\\ \\r\\t\\u001B[31m\\u007f\\u0085"
                                 "\\u2028\\\\xff\\\\xc3\"}\n"));
    assert_int_equal(check_lines(text, 1), 1);
    free(text);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_access_text, setup, teardown),
        cmocka_unit_test_setup_teardown(test_access_json, setup, teardown),
        cmocka_unit_test_setup_teardown(test_error_log, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
