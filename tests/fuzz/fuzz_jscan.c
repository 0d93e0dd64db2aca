/*
 * fuzz_jscan.c -- libFuzzer harness for src/config/jscan.c, the request-body
 * validator, against jansson as the reference: the same verdict (valid or
 * not, top-level type), every top-level member reported, and each
 * reported string decoded to what jansson decodes. Any difference aborts.
 *
 * Built with clang -fsanitize=fuzzer (make fuzz) or with tests/fuzz/
 * replay.c as main() (the e2e suite replays tests/fuzz/corpus/fuzz_jscan/).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "jscan.h"

#define MAX_SEEN 4096

/* The last string value reported for each key (jansson keeps the last of
 * duplicate keys too). */
struct check {
    json_t *doc;
    size_t  members;
    size_t  nseen;
    char   *key[MAX_SEEN];
    char   *val[MAX_SEEN];      /* NULL: the last value was not a string */
    size_t  vlen[MAX_SEEN];
};

static void on_member(void *arg, const char *key, size_t klen, const struct jscan_val *v)
{
    struct check *c = arg;
    char *k = malloc(klen + 1);
    size_t i;

    c->members++;
    if (k == NULL)
        return;
    memcpy(k, key, klen);
    k[klen] = '\0';
    if (json_object_get(c->doc, k) == NULL)
        abort();                        /* a member jansson does not have */
    for (i = 0; i < c->nseen && strcmp(c->key[i], k) != 0; i++)
        ;
    if (i == MAX_SEEN) {
        free(k);
        return;
    }
    if (i == c->nseen) {
        c->key[c->nseen++] = k;
    } else {
        free(k);
        free(c->val[i]);
    }
    c->val[i] = v->type == JSCAN_STRING ? jscan_string(v, &c->vlen[i]) : NULL;
}

/* Every key's last reported string is jansson's value for it (compare
 * 0: only free what was kept). */
static void check_values(struct check *c, int compare)
{
    size_t i;

    for (i = 0; i < c->nseen; i++) {
        json_t *ref = json_object_get(c->doc, c->key[i]);
        if (compare && c->val[i]
            && (!json_is_string(ref) || json_string_length(ref) != c->vlen[i]
                || memcmp(c->val[i], json_string_value(ref), c->vlen[i]) != 0))
            abort();
        free(c->key[i]);
        free(c->val[i]);
    }
    c->nseen = 0;
}

/* jansson's quirk: it skips a NUL byte right after a number or a literal
 * ("[1\0]", {"a":true\0} parse). jscan follows RFC 8259 and rejects
 * them: such inputs are not compared. */
static int jansson_nul_quirk(const uint8_t *data, size_t size)
{
    size_t i;

    for (i = 1; i < size; i++)
        if (data[i] == '\0' && ((data[i - 1] >= '0' && data[i - 1] <= '9')
                                 || (data[i - 1] >= 'a' && data[i - 1] <= 'z')))
            return 1;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct jscan_error err;
    json_error_t jerr;
    static struct check c;
    enum jscan_type t;

    c.doc = json_loadb((const char *)data, size, JSON_DECODE_ANY, &jerr);
    c.nseen = 0;
    c.members = 0;          /* keys with escapes that decode past 63 bytes are not
                               reported: counted as members only by jansson */
    t = jscan_top((const char *)data, size, c.doc && json_is_object(c.doc) ? on_member : NULL,
                  &c, &err);
    if (jansson_nul_quirk(data, size)) {
        if (t != JSCAN_INVALID)
            abort();                    /* a NUL outside a string is never valid */
        check_values(&c, 0);
        json_decref(c.doc);
        return 0;
    }
    if ((c.doc == NULL) != (t == JSCAN_INVALID))
        abort();
    if (c.doc && json_is_object(c.doc) != (t == JSCAN_OBJECT))
        abort();
    if (c.doc && json_is_object(c.doc) && c.members < json_object_size(c.doc)
        && memchr(data, '\\', size) == NULL)
        abort();
    check_values(&c, 1);
    json_decref(c.doc);
    return 0;
}
