/*
 * jscan.h -- a one-pass, allocation-free JSON validator that reports the
 * members of a top-level object.
 *
 * The gateway forwards request bodies untouched and needs only a few
 * top-level fields (model, stream, messages, user, ...). Building a jansson
 * tree for that cost a quarter of a proxied request's CPU. jscan checks the
 * whole text as strictly as jansson does with default flags (RFC 8259,
 * valid UTF-8, no \u0000, no lone surrogates, integers within int64, reals
 * within double, depth <= JSCAN_MAX_DEPTH, nothing after the value) and
 * hands each top-level member's raw span to a callback. A tree is built
 * only when a body must be rewritten (proxy.c). One difference, on the
 * strict side: jansson skips a NUL byte right after a number or a literal
 * ({"a":1\0} parses there); jscan rejects it, as RFC 8259 does.
 */
#ifndef INFERGATE_JSCAN_H
#define INFERGATE_JSCAN_H

#include <stddef.h>

#define JSCAN_MAX_DEPTH 2048    /* as jansson's JSON_PARSER_MAX_DEPTH */

enum jscan_type {
    JSCAN_INVALID = 0,
    JSCAN_OBJECT, JSCAN_ARRAY, JSCAN_STRING, JSCAN_NUMBER,
    JSCAN_TRUE, JSCAN_FALSE, JSCAN_NULL,
};

struct jscan_val {
    enum jscan_type type;
    const char     *start;        /* the raw text of the value in the buffer */
    size_t          len;          /* strings: quotes included */
    int             all_objects;  /* arrays: every element is an object */
};

struct jscan_error {
    char text[160];
    int  line, column;            /* 1-based, of the offending byte */
};

/* Called for each member of a top-level object, keys decoded (a key with
 * escapes that decodes to more than 63 bytes is not reported). */
typedef void (*jscan_member_fn)(void *arg, const char *key, size_t klen,
                                const struct jscan_val *v);

/* Validates buf[0..len) as one JSON text. Returns the type of the
 * top-level value, or JSCAN_INVALID with *err filled. */
enum jscan_type jscan_top(const char *buf, size_t len, jscan_member_fn on_member,
                          void *arg, struct jscan_error *err);

/*
 * Prefix scan: buf[0..len) is the start of a JSON text whose remaining
 * bytes may not have arrived yet. Finds the top-level object's member
 * `key` (keys compared decoded), checking everything before it as strictly
 * as jscan_top; stops there, so a large text costs only the bytes up to
 * it. FOUND: *out is the member's value, whole in buf (a number only once
 * a byte after it has come). MORE: these bytes do not settle it, call again
 * with more. NONE: they do: not an object, invalid before the member, or
 * the object closed without it. Nothing after the member is looked at.
 */
enum jscan_find { JSCAN_FIND_NONE = -1, JSCAN_FIND_MORE = 0, JSCAN_FIND_FOUND = 1 };
enum jscan_find jscan_find(const char *buf, size_t len, const char *key, struct jscan_val *out);

/* The same for the one value that starts buf (after blanks): FOUND with
 * *out its span once it is whole (what follows is not looked at), MORE
 * while it is cut short, NONE when it is not valid JSON. */
enum jscan_find jscan_value(const char *buf, size_t len, struct jscan_val *out);

/* jscan_value() whose top-level object members (when the value is an
 * object) go to on_member as jscan_top() reports them, each once it is
 * whole: the members are the object's only when the answer is FOUND (the
 * rest may still prove cut short or invalid). One pass where jscan_value()
 * then jscan_top() on its span took two. */
enum jscan_find jscan_object(const char *buf, size_t len, jscan_member_fn on_member,
                             void *arg, struct jscan_val *out);

/* Tests: whether long strings may be read 32 bytes at a time (AVX2, where
 * the CPU has it: the default); 0 reads them 16 at a time, as a CPU
 * without it does. */
void jscan_use_avx2(int on);

/* Decodes a string value as jscan_top reported it (quotes included,
 * already valid) into a new NUL-terminated UTF-8 string (caller frees);
 * NULL when out of memory. *outlen may be NULL. */
char *jscan_string(const struct jscan_val *v, size_t *outlen);

#endif
