/*
 * cache_sse.c -- streams to JSON answers and back for the response cache
 * (cache_sse.h).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "cache_sse.h"
#include "sse.h"

#define MAX_CHOICES 16

struct acc {
    char  *text;
    size_t len, cap;
    json_t *finish;                 /* borrowed reference kept by incref */
    int    seen;
};

static int acc_add(struct acc *a, const char *s, size_t n)
{
    if (a->len + n + 1 > a->cap) {
        size_t cap = (a->len + n + 1) * 2;
        char *t = realloc(a->text, cap);
        if (t == NULL)
            return -1;
        a->text = t;
        a->cap = cap;
    }
    memcpy(a->text + a->len, s, n);
    a->len += n;
    return 0;
}

/* 1 when a delta (or a completion choice) holds what we cannot rebuild. */
static int unsupported(json_t *choice, json_t *delta)
{
    json_t *lp = json_object_get(choice, "logprobs");

    return (lp && !json_is_null(lp))
           || (delta && (json_object_get(delta, "tool_calls")
                         || json_object_get(delta, "function_call")
                         || (json_object_get(delta, "refusal")
                             && !json_is_null(json_object_get(delta, "refusal")))));
}

char *cache_sse_to_json(int chat, const char *sse, size_t len)
{
    const char *p = sse, *end = sse + len, *d;
    size_t dn;
    struct acc acc[MAX_CHOICES];
    json_t *first = NULL, *usage = NULL, *out = NULL, *choices;
    int done = 0, bad = 0, i;
    char *res = NULL;

    memset(acc, 0, sizeof(acc));
    while (!bad && sse_next_data(&p, end, &d, &dn)) {
        json_t *doc, *ch, *c;
        size_t k;

        if (dn == 6 && memcmp(d, "[DONE]", 6) == 0) {
            done = 1;
            continue;
        }
        if ((doc = json_loadb(d, dn, 0, NULL)) == NULL || !json_is_object(doc)) {
            json_decref(doc);
            bad = 1;
            break;
        }
        if (first == NULL)
            first = json_incref(doc);
        if (json_is_object(json_object_get(doc, "usage"))) {
            json_decref(usage);
            usage = json_incref(json_object_get(doc, "usage"));
        }
        ch = json_object_get(doc, "choices");
        json_array_foreach(ch, k, c) {
            json_t *ix = json_object_get(c, "index"), *delta = json_object_get(c, "delta");
            json_t *text = chat ? json_object_get(delta, "content") : json_object_get(c, "text");
            json_t *fr = json_object_get(c, "finish_reason");
            json_int_t n = json_is_integer(ix) ? json_integer_value(ix) : 0;

            if (n < 0 || n >= MAX_CHOICES || unsupported(c, chat ? delta : NULL)) {
                bad = 1;
                break;
            }
            acc[n].seen = 1;
            if (json_is_string(text)
                && acc_add(&acc[n], json_string_value(text), json_string_length(text)) != 0)
                bad = 1;
            if (fr && !json_is_null(fr)) {
                json_decref(acc[n].finish);
                acc[n].finish = json_incref(fr);
            }
        }
        json_decref(doc);
    }
    if (!bad && done && first != NULL) {
        out = json_object();
        choices = json_array();
        json_object_set(out, "id", json_object_get(first, "id"));
        json_object_set_new(out, "object", json_string(chat ? "chat.completion"
                                                            : "text_completion"));
        if (json_object_get(first, "created"))
            json_object_set(out, "created", json_object_get(first, "created"));
        json_object_set(out, "model", json_object_get(first, "model"));
        if (json_object_get(first, "system_fingerprint"))
            json_object_set(out, "system_fingerprint",
                            json_object_get(first, "system_fingerprint"));
        for (i = 0; i < MAX_CHOICES; i++) {
            json_t *c, *t;
            if (!acc[i].seen)
                continue;
            t = json_stringn(acc[i].text ? acc[i].text : "", acc[i].len);
            if (t == NULL) {
                bad = 1;
                break;
            }
            c = chat ? json_pack("{s:i, s:{s:s, s:o*}}", "index", i, "message",
                                 "role", "assistant", "content", t)
                     : json_pack("{s:i, s:o*}", "index", i, "text", t);
            if (c == NULL) {
                bad = 1;
                break;
            }
            json_object_set(c, "finish_reason", acc[i].finish ? acc[i].finish : json_null());
            json_array_append_new(choices, c);
        }
        json_object_set_new(out, "choices", choices);
        if (usage)
            json_object_set(out, "usage", usage);
        if (!bad && json_array_size(choices) > 0)
            res = json_dumps(out, JSON_COMPACT);
        json_decref(out);
    }
    for (i = 0; i < MAX_CHOICES; i++) {
        free(acc[i].text);
        json_decref(acc[i].finish);
    }
    json_decref(first);
    json_decref(usage);
    return res;
}

/* "data: JSON\n\n" appended to b; -1 when out of memory. */
static int event(json_t *o, char **b, size_t *len, size_t *cap)
{
    char *s = json_dumps(o, JSON_COMPACT);
    size_t n = s ? strlen(s) : 0;

    json_decref(o);
    if (s == NULL)
        return -1;
    if (*len + n + 9 > *cap) {
        size_t c = (*len + n + 9) * 2;
        char *t = realloc(*b, c);
        if (t == NULL) {
            free(s);
            return -1;
        }
        *b = t;
        *cap = c;
    }
    *len += (size_t)sprintf(*b + *len, "data: %s\n\n", s);
    free(s);
    return 0;
}

/* A chunk with the answer's id, created, model and these choices. */
static json_t *chunk(int chat, json_t *doc, json_t *choices)
{
    json_t *o = json_object();

    json_object_set(o, "id", json_object_get(doc, "id"));
    json_object_set_new(o, "object", json_string(chat ? "chat.completion.chunk"
                                                      : "text_completion"));
    if (json_object_get(doc, "created"))
        json_object_set(o, "created", json_object_get(doc, "created"));
    json_object_set(o, "model", json_object_get(doc, "model"));
    if (json_object_get(doc, "system_fingerprint"))
        json_object_set(o, "system_fingerprint", json_object_get(doc, "system_fingerprint"));
    json_object_set_new(o, "choices", choices);
    return o;
}

char *cache_json_to_sse(int chat, const char *json, size_t len, int usage, size_t *outlen)
{
    json_t *doc = json_loadb(json, len, 0, NULL), *choices, *c, *u;
    char *b = NULL;
    size_t n = 0, cap = 0, i;
    int rc = 0;

    choices = json_object_get(doc, "choices");
    if (!json_is_array(choices) || json_array_size(choices) == 0) {
        json_decref(doc);
        return NULL;
    }
    json_array_foreach(choices, i, c) {
        json_t *ix = json_object_get(c, "index"), *msg = json_object_get(c, "message");
        json_t *text = chat ? json_object_get(msg, "content") : json_object_get(c, "text");
        json_t *fr = json_object_get(c, "finish_reason");
        json_t *one, *last;

        if ((chat && (json_object_get(msg, "tool_calls") || json_object_get(msg, "function_call")))
            || (!json_is_string(text) && !json_is_null(text))) {
            rc = -1;
            break;
        }
        ix = json_is_integer(ix) ? json_incref(ix) : json_integer((json_int_t)i);
        one = chat ? json_pack("{s:O, s:{s:s, s:O}, s:n}", "index", ix, "delta", "role",
                               "assistant", "content", text, "finish_reason")
                   : json_pack("{s:O, s:O, s:n}", "index", ix, "text", text, "finish_reason");
        last = chat ? json_pack("{s:O, s:{}, s:O}", "index", ix, "delta", "finish_reason",
                                fr ? fr : json_null())
                    : json_pack("{s:O, s:s, s:O}", "index", ix, "text", "", "finish_reason",
                                fr ? fr : json_null());
        json_decref(ix);
        if (one == NULL || last == NULL
            || event(chunk(chat, doc, json_pack("[o]", one)), &b, &n, &cap) != 0
            || event(chunk(chat, doc, json_pack("[o]", last)), &b, &n, &cap) != 0) {
            rc = -1;
            break;
        }
    }
    u = json_object_get(doc, "usage");
    if (rc == 0 && usage && json_is_object(u)) {
        json_t *o = chunk(chat, doc, json_array());
        json_object_set(o, "usage", u);
        rc = event(o, &b, &n, &cap);
    }
    json_decref(doc);
    if (rc == 0) {
        char *t = realloc(b, n + 15);
        if (t != NULL) {
            b = t;
            n += (size_t)sprintf(b + n, "data: [DONE]\n\n");
            *outlen = n;
            return b;
        }
    }
    free(b);
    return NULL;
}

int cache_sse_wants_usage(const char *body, size_t len)
{
    json_t *doc = json_loadb(body, len, 0, NULL);
    int yes = json_is_true(json_object_get(json_object_get(doc, "stream_options"),
                                           "include_usage"));

    json_decref(doc);
    return yes;
}
