/*
 * test_jscan.c -- src/config/jscan.c against jansson, the parser it replaces on
 * the request path: fixed cases, the malformed-body corpus, and 300,000
 * seeded random mutations of realistic bodies must get the same verdict
 * (valid or not, top-level type) and the same decoded top-level strings.
 * jscan_find() and jscan_value() (prefix scans: session ids, usage
 * objects): no prefix of a valid text is ever NONE, more bytes never
 * change NONE or FOUND, and the whole text finds the member (the value)
 * when jansson does; jscan_object() gives jscan_value()'s word and, once
 * FOUND, jscan_top()'s members. Strings with a special byte at every offset of a long
 * run (the 8-byte skip) and reals of 300-312 integer digits (the strtod
 * shortcut) are checked against jansson too.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <cmocka.h>

#include <jansson.h>

#include "jscan.h"

struct seen {
    char model[256];
    int  has_model;
    int  nmembers;
};

static void on_member(void *arg, const char *key, size_t klen, const struct jscan_val *v)
{
    struct seen *s = arg;

    s->nmembers++;
    if (klen == 5 && memcmp(key, "model", 5) == 0 && v->type == JSCAN_STRING) {
        size_t n;
        char *m = jscan_string(v, &n);
        assert_non_null(m);
        snprintf(s->model, sizeof(s->model), "%s", m);
        s->has_model = 1;
        free(m);
    } else if (klen == 5 && memcmp(key, "model", 5) == 0) {
        s->has_model = 0;         /* the last one wins */
        s->model[0] = '\0';
    }
}

static enum jscan_type type_of(const json_t *j)
{
    switch (json_typeof(j)) {
    case JSON_OBJECT:  return JSCAN_OBJECT;
    case JSON_ARRAY:   return JSCAN_ARRAY;
    case JSON_STRING:  return JSCAN_STRING;
    case JSON_INTEGER:
    case JSON_REAL:    return JSCAN_NUMBER;
    case JSON_TRUE:    return JSCAN_TRUE;
    case JSON_FALSE:   return JSCAN_FALSE;
    case JSON_NULL:    return JSCAN_NULL;
    }
    return JSCAN_INVALID;
}

static int find_consistent(const char *buf, size_t len, const char *key, int verbose);

/* 0 when jscan and jansson agree on buf. */
static int agree(const char *buf, size_t len, int verbose)
{
    struct jscan_error err;
    struct seen s;
    json_error_t jerr;
    json_t *j = json_loadb(buf, len, JSON_DECODE_ANY, &jerr);
    enum jscan_type t;
    int ok = 1;

    memset(&s, 0, sizeof(s));
    t = jscan_top(buf, len, on_member, &s, &err);
    if ((j == NULL) != (t == JSCAN_INVALID))
        ok = 0;
    else if (j && type_of(j) != t)
        ok = 0;
    else if (j && json_is_object(j)) {
        const json_t *m = json_object_get(j, "model");
        if ((size_t)s.nmembers < json_object_size(j))
            ok = 0;
        if (json_is_string(m) != s.has_model)
            ok = 0;
        else if (json_is_string(m) && strlen(json_string_value(m)) < sizeof(s.model) - 1
                 && strcmp(json_string_value(m), s.model) != 0)
            ok = 0;
    }
    if (!ok && verbose)
        fprintf(stderr, "disagree on %zu bytes: jansson %s (%s), jscan %d (%s)\n  %.*s\n",
                len, j ? "valid" : "invalid", j ? "" : jerr.text, (int)t,
                t == JSCAN_INVALID ? err.text : "", (int)(len < 300 ? len : 300), buf);
    json_decref(j);
    return ok ? 0 : -1;
}

static void test_fixed_cases(void **state)
{
    static const char *const cases[] = {
        "{}", "[]", "{\"model\":\"m\",\"stream\":true}", " {\"a\" : [1, 2.5e3, -0, true, false, null]} ",
        "\"s\"", "1", "-1.5E+10", "null", "true",
        "{\"model\":\"m\\u00e9\\ud83d\\ude00\\n\\\"x\\\"\"}", "{\"mod\\u0065l\":\"alias\"}",
        "{\"model\":\"a\",\"model\":\"b\"}", "{\"model\":1,\"model\":\"b\"}",
        "{\"model\":\"b\",\"model\":1}",
        "{\"x\":9223372036854775807}", "{\"x\":-9223372036854775808}",
        "{\"x\":9223372036854775808}", "{\"x\":-9223372036854775809}",
        "{\"x\":1e308}", "{\"x\":1e309}", "{\"x\":-1e309}", "{\"x\":1e-400}",
        "{\"x\":01}", "{\"x\":1.}", "{\"x\":.5}", "{\"x\":1e}", "{\"x\":-}", "{\"x\":+1}",
        "{\"x\":\"\\u0000\"}", "{\"x\":\"\\ud800\"}", "{\"x\":\"\\udc00\"}",
        "{\"x\":\"\\ud800\\u0041\"}", "{\"x\":\"\\x\"}", "{\"x\":\"\t\"}",
        "{\"x\":\"\xc3\xa9\"}", "{\"x\":\"\xc3\"}", "{\"x\":\"\xe0\x80\xaf\"}",
        "{\"x\":\"\xed\xa0\x80\"}", "{\"x\":\"\xf4\x90\x80\x80\"}", "{\"x\":\"\xff\"}",
        "{\"a\":1,}", "[1,]", "{\"a\":1}}", "{\"a\":1} x", "", "   ", "{", "[", "{\"a\"",
        "{\"a\":}", "{a:1}", "{'a':1}", "nul", "truex", "[1 2]", "{\"a\" 1}",
        "\xef\xbb\xbf{}", "{\"a\":[{}, {}]}", "/* c */ {}",
    };
    size_t i;
    int bad = 0;

    (void)state;
    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        bad += agree(cases[i], strlen(cases[i]), 1) != 0;
    assert_int_equal(bad, 0);
}

static void test_decoded_key_and_string(void **state)
{
    struct jscan_error err;
    struct seen s;
    const char *doc = "{\"mod\\u0065l\":\"caf\\u00e9 \\ud83d\\ude00 \\\"q\\\"\\/\"}";

    (void)state;
    memset(&s, 0, sizeof(s));
    assert_int_equal(jscan_top(doc, strlen(doc), on_member, &s, &err), JSCAN_OBJECT);
    assert_true(s.has_model);
    assert_string_equal(s.model, "caf\xc3\xa9 \xf0\x9f\x98\x80 \"q\"/");
    assert_int_equal(jscan_top("{\"a\":\n  x}", 10, NULL, NULL, &err), JSCAN_INVALID);
    assert_int_equal(err.line, 2);
    assert_int_equal(err.column, 3);
}

/* Strings are skipped 8 plain bytes at a time: every byte that ends a run
 * (quote, backslash, control byte, DEL, UTF-8 lead, invalid byte), at
 * every offset of a long string, must get jansson's verdict and decoded
 * value, and every prefix jscan_find's consistent word. */
static void test_string_runs(void **state)
{
    static const char *const specials[] = {
        "\"", "\\n", "\\u00e9", "\\ud83d\\ude00", "\\x", "\\", "\x01", "\x1f", "\t", "\x7f",
        "\xc3\xa9", "\xc3", "\xe2\x82\xac", "\xf0\x9f\x98\x80", "\xff", "\x80", " ", "~", "!#",
    };
    static const char text[] = "The quarterly report shows revenue";
    char buf[256];
    size_t i, at, len, n;
    int bad = 0;

    (void)state;
    for (i = 0; i < sizeof(specials) / sizeof(specials[0]); i++) {
        for (at = 0; at <= 24; at++) {
            len = 0;
            memcpy(buf + len, "{\"model\":\"", 10);
            len += 10;
            memcpy(buf + len, text, at);
            len += at;
            n = strlen(specials[i]);
            memcpy(buf + len, specials[i], n);
            len += n;
            memcpy(buf + len, text + at, 24 - at);
            len += 24 - at;
            memcpy(buf + len, "\",\"x\":1}", 9);
            len += 9;
            bad += agree(buf, len, bad < 5) != 0;
            bad += find_consistent(buf, len, "x", bad < 5) != 0;
        }
    }
    assert_int_equal(bad, 0);
}

/* Reals without an exponent skip strtod when they cannot overflow. */
static void test_real_digits(void **state)
{
    char buf[400];
    size_t n;
    int bad = 0;

    (void)state;
    for (n = 300; n <= 312; n++) {
        memset(buf, '9', sizeof(buf));
        memcpy(buf, "[-", 2);
        buf[2 + n] = '.';
        buf[2 + n + 2] = ']';
        bad += agree(buf + 1, n + 3, 1) != 0;     /* 99...9.9 */
        bad += agree(buf, n + 5, 1) != 0;         /* [-99...9.9] */
        buf[2] = '1';
        memset(buf + 3, '0', n - 1);
        bad += agree(buf + 1, n + 3, 1) != 0;     /* 100...0.9 */
    }
    assert_int_equal(bad, 0);
}

static void test_depth_limit(void **state)
{
    size_t n = JSCAN_MAX_DEPTH + 1, i;
    char *buf = malloc(2 * n);
    struct jscan_error err;

    (void)state;
    for (i = 0; i < n; i++) {
        buf[i] = '[';
        buf[2 * n - 1 - i] = ']';
    }
    assert_int_equal(jscan_top(buf, 2 * n, NULL, NULL, &err), JSCAN_INVALID);
    assert_int_equal(jscan_top(buf + 1, 2 * n - 2, NULL, NULL, &err), JSCAN_ARRAY);
    free(buf);
}

static void test_malformed_corpus(void **state)
{
    const char *dir = "tests/malformed/body";
    DIR *d = opendir(dir);
    struct dirent *e;
    int files = 0, bad = 0;

    (void)state;
    assert_non_null(d);
    while ((e = readdir(d)) != NULL) {
        char path[512];
        FILE *f;
        char *buf;
        long len;
        if (e->d_name[0] == '.')
            continue;
        snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
        if ((f = fopen(path, "rb")) == NULL)
            continue;
        fseek(f, 0, SEEK_END);
        len = ftell(f);
        fseek(f, 0, SEEK_SET);
        buf = malloc((size_t)len + 1);
        assert_int_equal(fread(buf, 1, (size_t)len, f), (size_t)len);
        fclose(f);
        bad += agree(buf, (size_t)len, 1) != 0;
        files++;
        free(buf);
    }
    closedir(d);
    assert_true(files >= 30);
    assert_int_equal(bad, 0);
}

static uint64_t rng = 0x9e3779b97f4a7c15ULL;

static uint32_t rnd(uint32_t n)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng % n);
}

static void test_random_mutations(void **state)
{
    static const char *const seeds[] = {
        "{\"model\":\"mock-model\",\"messages\":[{\"role\":\"user\",\"content\":\"hi \\u00e9\"}],"
        "\"stream\":true,\"temperature\":0.7,\"max_tokens\":128,\"user\":\"u-1\"}",
        "{\"model\":\"m\",\"input\":[\"a\",\"b\"],\"x\":{\"y\":[1,-2.5e-3,null,false]}}",
        "[{\"a\":\"\\ud83d\\ude00\"},12345678901234567890,1e308]",
        "{\"messages\":[{\"role\":\"user\",\"content\":\"Summarise the following paragraph"
        " in one sentence: the report shows growth \xc3\xa9 in every region\\n\"}],"
        "\"temperature\":12.75}",
    };
    static const char alphabet[] = "{}[]\",:\\u0123456789.eE+-tfnlrsa \n\t\xc3\xa9\xed\xff";
    char buf[512];
    int i, bad = 0;

    (void)state;
    for (i = 0; i < 300000; i++) {
        const char *seed = seeds[rnd(4)];
        size_t len = strlen(seed);
        int k, muts = 1 + (int)rnd(4);
        memcpy(buf, seed, len);
        for (k = 0; k < muts; k++) {
            size_t at = rnd((uint32_t)len);
            char c = alphabet[rnd(sizeof(alphabet) - 1)];
            switch (rnd(3)) {
            case 0:
                buf[at] = c;
                break;
            case 1:
                if (len + 1 < sizeof(buf)) {
                    memmove(buf + at + 1, buf + at, len - at);
                    buf[at] = c;
                    len++;
                }
                break;
            default:
                if (len > 1) {
                    memmove(buf + at, buf + at + 1, len - at - 1);
                    len--;
                }
                break;
            }
        }
        if (agree(buf, len, bad < 5) != 0)
            bad++;
    }
    assert_int_equal(bad, 0);
}

/* ---- jscan_find ------------------------------------------------------------- */

/* 0 when jscan_find on every prefix of buf keeps its word (see above). */
static int find_consistent(const char *buf, size_t len, const char *key, int verbose)
{
    json_t *j = json_loadb(buf, len, JSON_DECODE_ANY, NULL);
    enum jscan_find r, whole, wv;
    struct jscan_val v, vw, vv;
    size_t n;
    int ok = 1;

    /* jscan_value: a valid text is one whole value (a number at the very
     * end may go on); every prefix keeps its word too */
    wv = jscan_value(buf, len, &vv);
    if (j != NULL && !(wv == JSCAN_FIND_FOUND
                       || (wv == JSCAN_FIND_MORE && json_is_number(j))))
        ok = 0;
    for (n = 0; ok && n < len; n++) {
        r = jscan_value(buf, n, &v);
        if (r == JSCAN_FIND_NONE && (j != NULL || wv != JSCAN_FIND_NONE))
            ok = 0;
        else if (r == JSCAN_FIND_FOUND
                 && (wv != JSCAN_FIND_FOUND || v.start != vv.start || v.len != vv.len))
            ok = 0;
    }
    /* jscan_object: jscan_value's word and span, and when FOUND the
     * members jscan_top reports for that span */
    for (n = 0; ok && n <= len; n++) {
        struct jscan_error err;
        struct seen a, b;
        struct jscan_val vo, vv2;
        enum jscan_find ro, rv;
        memset(&a, 0, sizeof(a));
        memset(&b, 0, sizeof(b));
        ro = jscan_object(buf, n, on_member, &a, &vo);
        rv = jscan_value(buf, n, &vv2);
        if (ro != rv || (ro == JSCAN_FIND_FOUND && (vo.start != vv2.start || vo.len != vv2.len)))
            ok = 0;
        else if (ro == JSCAN_FIND_FOUND && vo.type == JSCAN_OBJECT
                 && (jscan_top(vo.start, vo.len, on_member, &b, &err) != JSCAN_OBJECT
                     || a.nmembers != b.nmembers || a.has_model != b.has_model
                     || strcmp(a.model, b.model) != 0))
            ok = 0;
    }
    whole = jscan_find(buf, len, key, &vw);
    if (json_is_object(j) && (whole == JSCAN_FIND_FOUND) != (json_object_get(j, key) != NULL))
        ok = 0;
    for (n = 0; ok && n < len; n++) {
        r = jscan_find(buf, n, key, &v);
        if (r == JSCAN_FIND_NONE && (json_is_object(j) || whole != JSCAN_FIND_NONE))
            ok = 0;                     /* NONE too early, or taken back */
        else if (r == JSCAN_FIND_FOUND
                 && (whole != JSCAN_FIND_FOUND || v.start != vw.start || v.len != vw.len))
            ok = 0;
    }
    if (!ok && verbose)
        fprintf(stderr, "jscan_value/jscan_find(%s) inconsistent at %zu of %zu bytes"
                " (whole: %d): %.*s\n",
                key, n, len, (int)whole, (int)(len < 300 ? len : 300), buf);
    json_decref(j);
    return ok ? 0 : -1;
}

static void test_find_fixed(void **state)
{
    struct jscan_val v;

    (void)state;
    assert_int_equal(jscan_find("{\"a\":[1,{\"id\":2}],\"id\":\"x\",", 26, "id", &v),
                     JSCAN_FIND_FOUND);
    assert_int_equal(v.type, JSCAN_STRING);
    assert_int_equal(v.len, 3);
    assert_memory_equal(v.start, "\"x\"", 3);
    assert_int_equal(jscan_find("{\"i\\u0064\":\"y\"}", 16, "id", &v), JSCAN_FIND_FOUND);
    /* cut inside a token: more bytes may mend it */
    assert_int_equal(jscan_find("{\"a\":1", 6, "id", &v), JSCAN_FIND_MORE);
    assert_int_equal(jscan_find("{\"a\":-", 6, "id", &v), JSCAN_FIND_MORE);
    assert_int_equal(jscan_find("{\"a\":1.", 7, "id", &v), JSCAN_FIND_MORE);
    assert_int_equal(jscan_find("{\"a\":1e+", 8, "id", &v), JSCAN_FIND_MORE);
    assert_int_equal(jscan_find("{\"a\":tr", 7, "id", &v), JSCAN_FIND_MORE);
    assert_int_equal(jscan_find("{\"a\":\"\\u00", 10, "id", &v), JSCAN_FIND_MORE);
    assert_int_equal(jscan_find("{\"a\":\"\xc3", 7, "id", &v), JSCAN_FIND_MORE);
    assert_int_equal(jscan_find("{\"id\":12", 8, "id", &v), JSCAN_FIND_MORE);
    assert_int_equal(jscan_find("{\"id\":12}", 9, "id", &v), JSCAN_FIND_FOUND);
    /* settled: not an object, invalid before the member, closed without it */
    assert_int_equal(jscan_find("[1]", 3, "id", &v), JSCAN_FIND_NONE);
    assert_int_equal(jscan_find("{\"a\":tru,", 10, "id", &v), JSCAN_FIND_NONE);
    assert_int_equal(jscan_find("{\"a\":01,\"id\":\"x\"}", 17, "id", &v), JSCAN_FIND_NONE);
    assert_int_equal(jscan_find("{\"a\":\"\xff\",\"id\":\"x\"}", 18, "id", &v),
                     JSCAN_FIND_NONE);
    assert_int_equal(jscan_find("{\"a\":1}", 7, "id", &v), JSCAN_FIND_NONE);
    /* jscan_value: one value, what follows it not looked at */
    assert_int_equal(jscan_value(" {\"a\":[1]} x", 12, &v), JSCAN_FIND_FOUND);
    assert_int_equal(v.type, JSCAN_OBJECT);
    assert_int_equal(v.len, 9);
    assert_int_equal(jscan_value("12", 2, &v), JSCAN_FIND_MORE);
    assert_int_equal(jscan_value("12,", 3, &v), JSCAN_FIND_FOUND);
    assert_int_equal(jscan_value("{\"a\":tru", 8, &v), JSCAN_FIND_MORE);
    assert_int_equal(jscan_value("{\"a\":01}", 8, &v), JSCAN_FIND_NONE);
    assert_int_equal(jscan_value("", 0, &v), JSCAN_FIND_MORE);
}

static void test_find_prefixes(void **state)
{
    static const char *const seeds[] = {
        "{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion\",\"choices\":[]}",
        "{\"model\":\"m\",\"usage\":{\"a\":[1,{\"id\":\"}\"}]},\"n\":-1.5e3,\"t\":true,"
        "\"s\":\"\\ud83d\\ude00 \xc3\xa9\",\"id\":\"resp_2\",\"z\":null}",
        "{\"x\":{\"y\":[1,-2.5e-3,null,false]},\"id\":42}",
    };
    static const char alphabet[] = "{}[]\",:\\u0123456789.eE+-tfnlrsa \n\t\xc3\xa9\xed\xff";
    char buf[512];
    int i, bad = 0;

    (void)state;
    for (i = 0; i < 3; i++)
        bad += find_consistent(seeds[i], strlen(seeds[i]), "id", 1) != 0;
    for (i = 0; i < 10000; i++) {
        const char *seed = seeds[rnd(3)];
        size_t len = strlen(seed), at;
        char c;

        memcpy(buf, seed, len);
        at = rnd((uint32_t)len);
        c = alphabet[rnd(sizeof(alphabet) - 1)];
        if (rnd(2) == 0) {
            buf[at] = c;
        } else {
            memmove(buf + at, buf + at + 1, len - at - 1);
            len--;
        }
        bad += find_consistent(buf, len, "id", bad < 5) != 0;
    }
    assert_int_equal(bad, 0);
}


/* ---- the fast paths: errors, 16-byte blocks, blanks, numbers --------------- */

/* The texts and places of errors that 400 answers quote (proxy.c: "invalid
 * JSON body: TEXT (line L, column C)"), pinned: the scanner's fast paths
 * must fail where and as the plain one did. */
static void test_error_texts(void **state)
{
    static const struct {
        const char *in, *text;
        int line, column;
    } cases[] = {
        { "", "'[' or '{' expected near end of file", 1, 1 },
        { "  ", "'[' or '{' expected near end of file", 1, 3 },
        { "{", "string or '}' expected", 1, 2 },
        { "{\"a\"", "':' expected", 1, 5 },
        { "{\"a\" 1}", "':' expected", 1, 6 },
        { "{\"a\":}", "invalid token", 1, 6 },
        { "{\"a\":1,}", "string or '}' expected", 1, 8 },
        { "{\"a\":1 \"b\":2}", "',' or '}' expected", 1, 8 },
        { "[1 2]", "',' or ']' expected", 1, 4 },
        { "[1,]", "invalid token", 1, 4 },
        { "{\"a\":\"x", "premature end of input in a string", 1, 8 },
        { "{\"a\":\"\\", "premature end of input in a string", 1, 7 },
        { "{\"a\":\"\\q\"}", "invalid escape", 1, 7 },
        { "{\"a\":\"\\u12\"}", "invalid escape", 1, 7 },
        { "{\"a\":\"\\u0000\"}", "\\u0000 is not allowed", 1, 7 },
        { "{\"a\":\"\\udc00\"}", "invalid Unicode: a lone low surrogate", 1, 7 },
        { "{\"a\":\"\\ud800\\u0041\"}", "invalid Unicode: a lone high surrogate", 1, 7 },
        { "{\"a\":\"\t\"}", "control character in a string", 1, 7 },
        { "{\"a\":\"\xff\"}", "invalid UTF-8", 1, 7 },
        { "{\"a\":01}", "',' or '}' expected", 1, 7 },
        { "{\"a\":1.}", "invalid number", 1, 6 },
        { "{\"a\":-}", "invalid number", 1, 6 },
        { "{\"a\":1e}", "invalid number", 1, 6 },
        { "{\"a\":9223372036854775808}", "too big integer", 1, 6 },
        { "{\"a\":1e999}", "real number overflow", 1, 6 },
        { "{\"a\":tru}", "invalid token", 1, 6 },
        { "{\"a\":nul", "invalid token", 1, 6 },
        { "{\"a\":x}", "invalid token", 1, 6 },
        { "{\"a\":1} x", "end of file expected", 1, 9 },
        { "{\"a\":1}}", "end of file expected", 1, 8 },
        { "{\n  \"model\": \"m\",\n  \"messages\": [\n    {\"role\": \"user\", \"content\": \"a\tb\"}\n  ]\n}",
          "control character in a string", 4, 35 },
        { "{\"model\": \"llama\", \"messages\": [{\"role\": \"user\", \"content\": "
          "\"0123456789abcdef0123456789\\x\"}]}", "invalid escape", 1, 88 },
        { "{\"model\": \"llama\", \"temperature\": 0.7.1}", "',' or '}' expected", 1, 38 },
        { "{\"model\": \"llama\", \"n\": -01}", "',' or '}' expected", 1, 27 },
    };
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct jscan_error err;
        size_t n = strlen(cases[i].in);
        char *buf = malloc(n + 1);          /* exactly the text: no byte past it to read */
        memcpy(buf, cases[i].in, n);
        memset(&err, 0, sizeof(err));
        assert_int_equal(jscan_top(buf, n, NULL, NULL, &err), JSCAN_INVALID);
        assert_string_equal(err.text, cases[i].text);
        assert_int_equal(err.line, cases[i].line);
        assert_int_equal(err.column, cases[i].column);
        free(buf);
    }
}

/* A copy of buf[0..len) in a heap block of exactly len bytes (ASan sees a
 * read past the text). */
static char *exact(const char *buf, size_t len)
{
    char *b = malloc(len ? len : 1);
    assert_non_null(b);
    memcpy(b, buf, len);
    return b;
}

/* Strings are read 16 bytes at a time, their last bytes (fewer than 16
 * before the text's end) in one look at the 16 that end the text, and
 * past their first 32 bytes 32 at a time where the CPU has AVX2: every
 * special byte at every place of strings of 0 to 48 bytes (and at places
 * around the block edges of strings up to 150), in an object and as a
 * whole text (the closing quote its last byte), with and without AVX2,
 * gets jansson's word; near the block edges every prefix keeps
 * jscan_find's and jscan_value's. */
static void test_string_blocks(void **state)
{
    static const char *const specials[] = {
        "\"", "\\n", "\\\\", "\\u00e9", "\\ud83d\\ude00", "\\x", "\\", "\x01", "\x1f", "\x7f",
        "\xc3\xa9", "\xc3", "\xe2\x82\xac", "\xf0\x9f\x98\x80", "\xff", "\x80", "\\u0000",
    };
    char text[160], buf[200];
    size_t i, len, at, n, o;
    int bad = 0, avx2;

    (void)state;
    for (i = 0; i < sizeof(text); i++)
        text[i] = (char)('!' + 3 + i % 56);     /* plain bytes, no '"' or '\\' */
    for (avx2 = 1; avx2 >= 0; avx2--) {
        jscan_use_avx2(avx2);
        for (len = 0; len <= 150; len++) {
            for (i = 0; i < sizeof(specials) / sizeof(specials[0]); i++) {
                for (at = 0; at <= len; at++) {
                    int edge = at % 16 <= 1 || at % 16 == 15 || len - at < 2;
                    if (len > 48 && !edge)
                        continue;
                    for (o = 0; o < 2; o++) {
                        const char *head = o ? "\"" : "{\"k\":\"";
                        char *b;
                        n = strlen(head);
                        memcpy(buf, head, n);
                        memcpy(buf + n, text, at);
                        n += at;
                        memcpy(buf + n, specials[i], strlen(specials[i]));
                        n += strlen(specials[i]);
                        memcpy(buf + n, text + at, len - at);
                        n += len - at;
                        buf[n++] = '"';
                        if (!o)
                            buf[n++] = '}';
                        b = exact(buf, n);
                        bad += agree(b, n, bad < 5) != 0;
                        if (!o && avx2 && edge && (len <= 34 || (len % 16 == 0 && at % 32 == 0)))
                            bad += find_consistent(b, n, "k", bad < 5) != 0;
                        free(b);
                    }
                }
            }
        }
    }
    jscan_use_avx2(1);
    assert_int_equal(bad, 0);
}

/* The members as a text: key, type and raw value of each. */
struct members {
    char text[2048];
    size_t n;
};

static void on_record(void *arg, const char *key, size_t klen, const struct jscan_val *v)
{
    struct members *m = arg;
    int k = snprintf(m->text + m->n, sizeof(m->text) - m->n, "%.*s=%d:%.*s:%d;", (int)klen, key,
                     (int)v->type, (int)v->len, v->start, v->all_objects);
    if (k > 0 && m->n + (size_t)k < sizeof(m->text))
        m->n += (size_t)k;
}

/* Members of obj with its blanks taken out of the raw values (the same text
 * with other blanks between tokens must report the same). */
static void members_of(const char *obj, struct members *m)
{
    struct jscan_error err;
    char *b = exact(obj, strlen(obj));
    size_t i, j;

    memset(m, 0, sizeof(*m));
    assert_int_equal(jscan_top(b, strlen(obj), on_record, m, &err), JSCAN_OBJECT);
    for (i = j = 0; i < m->n; i++)      /* no blank in the strings of these texts */
        if (m->text[i] != ' ' && m->text[i] != '\n' && m->text[i] != '\t' && m->text[i] != '\r')
            m->text[j++] = m->text[i];
    m->text[j] = '\0';
    m->n = j;
    free(b);
}

/* Compact text, json.dumps()'s ", " and ": ", blanks before ':' and ',',
 * newlines, tabs and CRs: the same members; a blank JSON has not (\f, \v)
 * is an error there as in jansson. */
static void test_blanks(void **state)
{
    static const char *const same[] = {
        "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"},{}],"
        "\"t\":0.7,\"n\":256,\"s\":true,\"o\":{\"a\":[1,-2,null]},\"e\":[]}",
        "{\"model\": \"m\", \"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {}], "
        "\"t\": 0.7, \"n\": 256, \"s\": true, \"o\": {\"a\": [1, -2, null]}, \"e\": []}",
        " { \"model\" : \"m\" , \"messages\" : [ { \"role\" : \"user\" , \"content\" : \"hi\" } , { } ] ,"
        " \"t\" : 0.7 , \"n\" : 256 , \"s\" : true , \"o\" : { \"a\" : [ 1 , -2 , null ] } , \"e\" : [ ] } ",
        "{\n  \"model\": \"m\",\n  \"messages\": [\n    {\n      \"role\": \"user\",\n"
        "      \"content\": \"hi\"\n    },\n    {}\n  ],\n  \"t\": 0.7,\n  \"n\": 256,\n"
        "  \"s\": true,\n  \"o\": {\n    \"a\": [\n      1,\n      -2,\n      null\n    ]\n  },\n"
        "  \"e\": []\n}\n",
        "\r\n{\t\"model\"\t:\t\"m\"\r\n,\"messages\":\t[{\"role\":\r\n\"user\",\"content\":\"hi\"}\t,{\r\n}],"
        "\"t\":\t0.7\t,\"n\":256\r\n,\"s\":true,\"o\":{\"a\":[1\t,\t-2,null\n]\n},\"e\":[\n\n]}\t",
    };
    static const char *const not_blank[] = {
        "{\f\"a\":1}", "{\"a\":\v1}", "{\"a\":1\f}", "[1,\f2]", "\f{}", "{}\v",
    };
    struct members first, m;
    size_t i;

    (void)state;
    members_of(same[0], &first);
    for (i = 1; i < sizeof(same) / sizeof(same[0]); i++) {
        members_of(same[i], &m);
        assert_string_equal(m.text, first.text);
        assert_int_equal(agree(same[i], strlen(same[i]), 1), 0);
    }
    for (i = 0; i < sizeof(not_blank) / sizeof(not_blank[0]); i++) {
        struct jscan_error err;
        assert_int_equal(jscan_top(not_blank[i], strlen(not_blank[i]), NULL, NULL, &err),
                         JSCAN_INVALID);
        assert_int_equal(agree(not_blank[i], strlen(not_blank[i]), 1), 0);
    }
}

/* Numbers in objects and arrays (the inline path: a count, a negative, a
 * fraction; the rest through the full reader): jansson's word, and a valid
 * one's span is the whole number, whatever ends it. */
static void test_numbers(void **state)
{
    static const char *const nums[] = {
        "0", "-0", "7", "131", "-12", "0.7", "-0.5", "12.75", "1.0e3", "1e5", "-1E-5", "2e+3",
        "123456789012345678", "999999999999999999", "1234567890123456789",
        "9223372036854775807", "-9223372036854775808", "9223372036854775808",
        "123456789012345678.5", "1234567890123456789.25", "0.000001", "10",
        "01", "-01", "00", "1.", "-", "-.5", ".5", "1..2", "1.2.3", "1e", "1e+", "+1", "0x10",
        "1-2", "--1", "1ee2", "12a", "-a", "0.a", "1.5e",
    };
    static const char *const ends[] = { "}", ",\"x\":1}", " }", "\n}", "\t,\"y\":2}" };
    char buf[128];
    size_t i, j;
    int bad = 0;

    (void)state;
    for (i = 0; i < sizeof(nums) / sizeof(nums[0]); i++) {
        for (j = 0; j < sizeof(ends) / sizeof(ends[0]); j++) {
            struct members m;
            struct jscan_error err;
            char *b;
            int n = snprintf(buf, sizeof(buf), "{\"n\":%s%s", nums[i], ends[j]);
            b = exact(buf, (size_t)n);
            bad += agree(b, (size_t)n, 1) != 0;
            memset(&m, 0, sizeof(m));
            if (jscan_top(b, (size_t)n, on_record, &m, &err) == JSCAN_OBJECT) {
                char want[64];
                snprintf(want, sizeof(want), "n=%d:%s:0;", (int)JSCAN_NUMBER, nums[i]);
                if (strncmp(m.text, want, strlen(want)) != 0) {
                    fprintf(stderr, "%s: %s\n", buf, m.text);
                    bad++;
                }
            }
            bad += find_consistent(b, (size_t)n, "n", bad < 5) != 0;
            free(b);
            n = snprintf(buf, sizeof(buf), "[%s,%s]", nums[i], nums[i]);
            b = exact(buf, (size_t)n);
            bad += agree(b, (size_t)n, 1) != 0;
            free(b);
        }
    }
    assert_int_equal(bad, 0);
}

/* jscan_find() reads a first member that is the key asked for without the
 * whole walk: the same answers as when it comes later, for every prefix. */
static void test_find_first_member(void **state)
{
    static const char *const texts[] = {
        "{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion\"}",
        "{ \"id\" : \"resp_0123456789abcdef0123456789\" , \"x\":1}",
        "{\"id\":12,\"x\":1}", "{\"id\":{\"a\":[1,2]},\"x\":1}", "{\"id\":\"a\\u00e9\"}",
        "{\"i\\u0064\":\"x\"}", "{\"idx\":\"x\",\"id\":\"y\"}", "{\"i\":\"x\",\"id\":\"y\"}",
        "{\"id\":\"\xff\",\"x\":1}", "{\"id\":tru}", "{\"id\":01,\"x\":1}", "{\"id\"\"x\"}",
    };
    struct jscan_val v;
    size_t i;
    int bad = 0;

    (void)state;
    for (i = 0; i < sizeof(texts) / sizeof(texts[0]); i++) {
        char *b = exact(texts[i], strlen(texts[i]));
        bad += find_consistent(b, strlen(texts[i]), "id", 1) != 0;
        free(b);
    }
    assert_int_equal(bad, 0);
    assert_int_equal(jscan_find(texts[1], strlen(texts[1]), "id", &v), JSCAN_FIND_FOUND);
    assert_int_equal(v.type, JSCAN_STRING);
    assert_int_equal(v.len, 33);
    assert_int_equal(jscan_find(texts[3], strlen(texts[3]), "id", &v), JSCAN_FIND_FOUND);
    assert_int_equal(v.type, JSCAN_OBJECT);
    assert_int_equal(v.len, 11);
    assert_int_equal(jscan_find(texts[7], strlen(texts[7]), "id", &v), JSCAN_FIND_FOUND);
    assert_memory_equal(v.start, "\"y\"", 3);
    assert_int_equal(jscan_find(texts[8], strlen(texts[8]), "id", &v), JSCAN_FIND_NONE);
    assert_int_equal(jscan_find("{\"id\":12", 8, "id", &v), JSCAN_FIND_MORE);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fixed_cases),
        cmocka_unit_test(test_decoded_key_and_string),
        cmocka_unit_test(test_string_runs),
        cmocka_unit_test(test_real_digits),
        cmocka_unit_test(test_depth_limit),
        cmocka_unit_test(test_malformed_corpus),
        cmocka_unit_test(test_random_mutations),
        cmocka_unit_test(test_find_fixed),
        cmocka_unit_test(test_find_prefixes),
        cmocka_unit_test(test_error_texts),
        cmocka_unit_test(test_string_blocks),
        cmocka_unit_test(test_blanks),
        cmocka_unit_test(test_numbers),
        cmocka_unit_test(test_find_first_member),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
