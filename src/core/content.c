/*
 * content.c -- the text of a chat answer, kept for /v1/verify (content.h).
 */
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "content.h"
#include "sse.h"

/* choices[0]'s `member` (message or delta) .content, or NULL. */
static const char *content_of(json_t *doc, const char *member, size_t *len)
{
    json_t *choices = json_object_get(doc, "choices"), *c, *text;

    c = json_is_array(choices) ? json_array_get(choices, 0) : NULL;
    if (!json_is_object(c))
        return NULL;
    if (json_is_integer(json_object_get(c, "index"))
        && json_integer_value(json_object_get(c, "index")) != 0)
        return NULL;
    text = json_object_get(json_object_get(c, member), "content");
    if (!json_is_string(text))
        return NULL;
    *len = json_string_length(text);
    return json_string_value(text);
}

/* text[0..len) as a JSON string of at most max bytes. */
static char *encode(const char *text, size_t len, size_t max)
{
    for (;;) {
        json_t *s = json_stringn(text, len);
        char *enc = s ? json_dumps(s, JSON_ENCODE_ANY | JSON_COMPACT) : NULL;
        size_t n = enc ? strlen(enc) : 0;

        json_decref(s);
        if (enc == NULL || n <= max)
            return enc;
        free(enc);
        len -= (n - max < len) ? n - max : len;
        while (len > 0 && ((unsigned char)text[len] & 0xC0) == 0x80)
            len--;                  /* not inside a character */
    }
}

char *content_from_json(const char *body, size_t len, size_t max)
{
    json_t *doc;
    const char *text;
    size_t tlen = 0;
    char *out = NULL;

    if (max < 3 || (doc = json_loadb(body, len, 0, NULL)) == NULL)
        return NULL;
    if ((text = content_of(doc, "message", &tlen)) != NULL)
        out = encode(text, tlen, max);
    json_decref(doc);
    return out;
}

char *content_from_sse(const char *stream, size_t len, size_t max)
{
    const char *p = stream, *end = stream + len, *d;
    char *text = NULL, *out = NULL;
    size_t tlen = 0, cap = 0, dn;
    int any = 0;

    if (max < 3)
        return NULL;
    while (sse_next_data(&p, end, &d, &dn)) {
        if (dn > 0 && *d == '{') {
            json_t *doc = json_loadb(d, dn, 0, NULL);
            size_t n = 0;
            const char *piece = doc ? content_of(doc, "delta", &n) : NULL;

            if (piece != NULL && tlen < max) {  /* more is cut anyway */
                if (tlen + n > cap) {
                    size_t ncap = (tlen + n) * 2 + 64;
                    char *t = realloc(text, ncap);
                    if (t == NULL) {
                        json_decref(doc);
                        free(text);
                        return NULL;
                    }
                    text = t;
                    cap = ncap;
                }
                memcpy(text + tlen, piece, n);
                tlen += n;
            }
            any |= piece != NULL;
            json_decref(doc);
        }
    }
    if (any)
        out = encode(text ? text : "", tlen, max);
    free(text);
    return out;
}

char *content_add_to_body(const char *body, size_t len, const char *content)
{
    json_t *doc = json_loadb(body, len, 0, NULL);
    json_t *c = json_loads(content, JSON_DECODE_ANY, NULL);
    char *out = NULL;

    if (json_is_object(doc) && c != NULL && json_object_set(doc, "content", c) == 0)
        out = json_dumps(doc, JSON_COMPACT);
    json_decref(c);
    json_decref(doc);
    return out;
}
