/*
 * doc.c -- configuration documents: JSON and YAML into one jansson tree
 * shape, with a side table of source positions (see doc.h).
 *
 * The position table is an open-addressing hash keyed by (kind, pointer,
 * member name or index): node marks for every non-singleton json_t, member
 * marks for (object, key), element marks for (array, index). Insertion is an
 * upsert, so a node dropped during parsing (a duplicate key's value) whose
 * address is reused later cannot leave a stale mark behind.
 */
#include "doc.h"
#include "utf8.h"

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

enum { MARK_NODE = 1, MARK_MEMBER, MARK_ELEM };

struct doc_mark {
    int          kind;      /* 0 = free slot */
    const void  *ptr;       /* the node, or the container of a slot */
    char        *key;       /* MARK_MEMBER: member name (owned) */
    size_t       index;     /* MARK_ELEM */
    struct doc_pos pos;     /* the value */
    struct doc_pos kpos;    /* MARK_MEMBER: the key */
    unsigned     flags;     /* MARK_NODE: DOC_* bits */
};

static const struct doc_pos nopos = {0, 0};

/* ---- position table ---------------------------------------------------- */

static uint64_t mark_hash(int kind, const void *ptr, const char *key, size_t index)
{
    uint64_t h = 1469598103934665603ULL;
    uintptr_t p = (uintptr_t)ptr;
    size_t i;

    for (i = 0; i < sizeof(p); i++) {
        h ^= (p >> (8 * i)) & 0xff;
        h *= 1099511628211ULL;
    }
    h ^= (uint64_t)kind;
    h *= 1099511628211ULL;
    h ^= (uint64_t)index;
    h *= 1099511628211ULL;
    for (; key && *key; key++) {
        h ^= (unsigned char)*key;
        h *= 1099511628211ULL;
    }
    return h ^ (h >> 31);
}

static int mark_eq(const struct doc_mark *m, int kind, const void *ptr,
                   const char *key, size_t index)
{
    if (m->kind != kind || m->ptr != ptr)
        return 0;
    if (kind == MARK_MEMBER)
        return strcmp(m->key, key) == 0;
    if (kind == MARK_ELEM)
        return m->index == index;
    return 1;
}

/*
 * Marks live in a dense array; the open-addressing table holds 8-byte
 * slots (32 bits of the hash as a tag, the index + 1), so a probe touches
 * a mark only when its tag matches. With a table of whole marks, 1.5
 * million marks (10,000 hosts + 100,000 keys) cost a cache miss per probe
 * step and ~290 MB.
 */
static struct doc_mark *mark_find(const struct doc *d, int kind, const void *ptr,
                                  const char *key, size_t index)
{
    uint64_t h;
    uint32_t tag;
    size_t i;

    if (d->cap == 0 || ptr == NULL)
        return NULL;
    h = mark_hash(kind, ptr, key, index);
    tag = (uint32_t)(h >> 32);
    for (i = h & (d->cap - 1); d->slots[i]; i = (i + 1) & (d->cap - 1)) {
        struct doc_mark *m;
        if ((uint32_t)(d->slots[i] >> 32) != tag)
            continue;
        m = &d->marks[(uint32_t)d->slots[i] - 1];
        if (mark_eq(m, kind, ptr, key, index))
            return m;
    }
    return NULL;
}

static void slot_insert(uint64_t *slots, size_t cap, uint64_t h, size_t idx)
{
    size_t i = h & (cap - 1);

    while (slots[i])
        i = (i + 1) & (cap - 1);
    slots[i] = (h >> 32 << 32) | (uint64_t)(idx + 1);
}

static int mark_grow(struct doc *d)
{
    size_t ncap = d->cap ? d->cap * 2 : 512, i;
    uint64_t *ns = calloc(ncap, sizeof(*ns));

    if (ns == NULL)
        return -1;
    for (i = 0; i < d->nmarks; i++) {
        const struct doc_mark *m = &d->marks[i];
        slot_insert(ns, ncap, mark_hash(m->kind, m->ptr, m->key, m->index), i);
    }
    free(d->slots);
    d->slots = ns;
    d->cap = ncap;
    return 0;
}

/* Finds or adds the mark; NULL when out of memory. The pointer is good
 * until the next mark_put(). */
static struct doc_mark *mark_put(struct doc *d, int kind, const void *ptr,
                                 const char *key, size_t index)
{
    struct doc_mark *m = mark_find(d, kind, ptr, key, index);

    if (m)
        return m;
    if (d->nmarks >= UINT32_MAX - 1)
        return NULL;
    if ((d->nmarks + 1) * 2 > d->cap && mark_grow(d) < 0)
        return NULL;
    if (d->nmarks == d->mcap) {
        size_t ncap = d->mcap ? d->mcap * 2 : 256;
        struct doc_mark *nm = realloc(d->marks, ncap * sizeof(*nm));
        if (nm == NULL)
            return NULL;
        d->marks = nm;
        d->mcap = ncap;
    }
    m = &d->marks[d->nmarks];
    memset(m, 0, sizeof(*m));
    if (kind == MARK_MEMBER && (m->key = strdup(key)) == NULL)
        return NULL;
    m->kind = kind;
    m->ptr = ptr;
    m->index = index;
    slot_insert(d->slots, d->cap, mark_hash(kind, ptr, key, index), d->nmarks);
    d->nmarks++;
    return m;
}

static int is_singleton(const json_t *v)
{
    return json_is_boolean(v) || json_is_null(v);
}

static void mark_node(struct doc *d, const json_t *v, struct doc_pos pos, unsigned flags)
{
    struct doc_mark *m;

    if (v == NULL || is_singleton(v) || (m = mark_put(d, MARK_NODE, v, NULL, 0)) == NULL)
        return;
    m->pos = pos;
    m->flags = flags;
}

static void mark_member(struct doc *d, const json_t *obj, const char *key,
                        struct doc_pos kpos, struct doc_pos pos)
{
    struct doc_mark *m = mark_put(d, MARK_MEMBER, obj, key, 0);

    if (m == NULL)
        return;
    m->kpos = kpos;
    m->pos = pos;
}

static void mark_elem(struct doc *d, const json_t *arr, size_t i, struct doc_pos pos)
{
    struct doc_mark *m = mark_put(d, MARK_ELEM, arr, NULL, i);

    if (m)
        m->pos = pos;
}

struct doc_pos doc_pos(const struct doc *d, const json_t *node)
{
    const struct doc_mark *m;

    if (node != NULL && node == d->root)
        return d->root_pos;
    m = mark_find(d, MARK_NODE, node, NULL, 0);
    return m ? m->pos : nopos;
}

struct doc_pos doc_member_pos(const struct doc *d, const json_t *obj, const char *key)
{
    const struct doc_mark *m = mark_find(d, MARK_MEMBER, obj, key, 0);
    return m ? m->pos : nopos;
}

struct doc_pos doc_key_pos(const struct doc *d, const json_t *obj, const char *key)
{
    const struct doc_mark *m = mark_find(d, MARK_MEMBER, obj, key, 0);
    return m ? m->kpos : nopos;
}

struct doc_pos doc_elem_pos(const struct doc *d, const json_t *arr, size_t i)
{
    const struct doc_mark *m = mark_find(d, MARK_ELEM, arr, NULL, i);
    return m ? m->pos : nopos;
}

unsigned doc_flags(const struct doc *d, const json_t *node)
{
    const struct doc_mark *m = mark_find(d, MARK_NODE, node, NULL, 0);
    return m ? m->flags : 0;
}

void doc_add_flags(struct doc *d, const json_t *node, unsigned flags)
{
    struct doc_mark *m;

    if (node == NULL || is_singleton(node))
        return;
    if ((m = mark_put(d, MARK_NODE, node, NULL, 0)) != NULL)
        m->flags |= flags;
}

/* ---- errors and paths -------------------------------------------------- */

static void doc_err(struct doc *d, struct doc_pos pos, const char *path,
                    const char *fmt, ...)
{
    struct doc_error *ne;
    char msg[512];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);

    ne = realloc(d->errs, (d->nerrs + 1) * sizeof(*ne));
    if (ne == NULL)
        return;
    d->errs = ne;
    ne[d->nerrs].pos = pos;
    ne[d->nerrs].path = strdup(path ? path : "");
    ne[d->nerrs].msg = strdup(msg);
    if (ne[d->nerrs].path == NULL || ne[d->nerrs].msg == NULL) {
        free(ne[d->nerrs].path);
        free(ne[d->nerrs].msg);
        return;
    }
    d->nerrs++;
}

static int plain_ident(const char *k)
{
    if (*k == '\0')
        return 0;
    for (; *k; k++) {
        unsigned char c = (unsigned char)*k;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              (c >= '0' && c <= '9') || c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

void doc_path_key(char *buf, size_t cap, const char *base, const char *key)
{
    size_t n;

    if (plain_ident(key)) {
        if (snprintf(buf, cap, "%s%s%s", base, *base ? "." : "", key) >= (int)cap)
            buf[cap - 1] = '\0';
        return;
    }
    n = (size_t)snprintf(buf, cap, "%s[\"", base);
    for (; *key && n + 3 < cap; key++) {
        if (*key == '"' || *key == '\\')
            buf[n++] = '\\';
        buf[n++] = *key;
    }
    if (n + 3 <= cap) {
        buf[n++] = '"';
        buf[n++] = ']';
        buf[n] = '\0';
    } else if (cap > 0) {
        buf[cap - 1] = '\0';
    }
}

void doc_path_index(char *buf, size_t cap, const char *base, size_t i)
{
    if (snprintf(buf, cap, "%s[%zu]", base, i) >= (int)cap)
        buf[cap - 1] = '\0';               /* cut: paths are for people */
}

void doc_free(struct doc *d)
{
    size_t i;

    json_decref(d->root);
    for (i = 0; i < d->nerrs; i++) {
        free(d->errs[i].path);
        free(d->errs[i].msg);
    }
    free(d->errs);
    for (i = 0; i < d->nmarks; i++)
        if (d->marks[i].kind == MARK_MEMBER)
            free(d->marks[i].key);
    free(d->marks);
    free(d->slots);
    memset(d, 0, sizeof(*d));
}

/* ---- JSON -------------------------------------------------------------- */

struct jp {
    struct doc *d;
    const char *p;
    const char *end;
    int line, col;
    int depth;
};

static struct doc_pos jp_pos(const struct jp *j)
{
    struct doc_pos pos = {j->line, j->col};
    return pos;
}

static void jp_adv(struct jp *j)
{
    unsigned char b = (unsigned char)*j->p++;

    if (b == '\n') {
        j->line++;
        j->col = 1;
    } else if ((b & 0xC0) != 0x80) {
        j->col++;
    }
}

static void jp_ws(struct jp *j)
{
    while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r'))
        jp_adv(j);
}

static int jp_peek(const struct jp *j)
{
    return j->p < j->end ? (unsigned char)*j->p : -1;
}

/* Names the byte at the cursor for an error message. */
static const char *jp_what(const struct jp *j, char *buf, size_t cap)
{
    int c = jp_peek(j);

    if (c < 0)
        snprintf(buf, cap, "end of file");
    else if (c >= 0x21 && c < 0x7f)
        snprintf(buf, cap, "'%c'", c);
    else
        snprintf(buf, cap, "byte 0x%02x", (unsigned)c);
    return buf;
}

/*
 * Parses a string at the cursor (on its opening quote). Returns a malloc'd,
 * NUL-terminated UTF-8 buffer, or NULL after recording an error.
 */
/* Bytes from the cursor (an opening quote) to the end of the string's
 * source: its closing quote, or the raw newline or end of input where
 * jp_string() stops with an error. Escapes are skipped whole, as
 * jp_string() consumes them. */
static size_t jp_string_span(const struct jp *j)
{
    const char *p = j->p + 1;

    while (p < j->end && *p != '"' && *p != '\n') {
        if (*p == '\\' && p + 1 < j->end)
            p++;
        p++;
    }
    return (size_t)(p - j->p);
}

static char *jp_string(struct jp *j, const char *path)
{
    /* The decoded string is never longer than its source: allocate that,
     * not the rest of the input (a large allocation per string). */
    char *out = malloc(jp_string_span(j) + 1);
    size_t n = 0;

    if (out == NULL) {
        doc_err(j->d, jp_pos(j), path, "out of memory");
        return NULL;
    }
    jp_adv(j);                              /* opening quote */
    for (;;) {
        int c = jp_peek(j);
        size_t ulen;

        if (c < 0) {
            doc_err(j->d, jp_pos(j), path, "unterminated string");
            goto fail;
        }
        if (c == '"') {
            jp_adv(j);
            break;
        }
        if (c == '\n') {
            doc_err(j->d, jp_pos(j), path, "unterminated string (newline inside a string)");
            goto fail;
        }
        if (c < 0x20) {
            doc_err(j->d, jp_pos(j), path, "control character 0x%02x in a string (escape it)", (unsigned)c);
            goto fail;
        }
        if (c == '\\') {
            struct doc_pos epos = jp_pos(j);
            uint32_t cp, lo;

            jp_adv(j);
            c = jp_peek(j);
            switch (c) {
            case '"': out[n++] = '"'; break;
            case '\\': out[n++] = '\\'; break;
            case '/': out[n++] = '/'; break;
            case 'b': out[n++] = '\b'; break;
            case 'f': out[n++] = '\f'; break;
            case 'n': out[n++] = '\n'; break;
            case 'r': out[n++] = '\r'; break;
            case 't': out[n++] = '\t'; break;
            case 'u':
                if (utf8_hex4(j->p + 1, j->end, &cp) < 0) {
                    doc_err(j->d, epos, path, "invalid \\u escape (expected 4 hex digits)");
                    goto fail;
                }
                if (cp >= 0xDC00 && cp <= 0xDFFF) {
                    doc_err(j->d, epos, path, "invalid \\u escape (lone low surrogate)");
                    goto fail;
                }
                if (cp >= 0xD800 && cp <= 0xDBFF) {
                    if (j->end - j->p < 11 || j->p[5] != '\\' || j->p[6] != 'u' ||
                        utf8_hex4(j->p + 7, j->end, &lo) < 0 || lo < 0xDC00 || lo > 0xDFFF) {
                        doc_err(j->d, epos, path, "invalid \\u escape (lone high surrogate)");
                        goto fail;
                    }
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                    j->p += 6;
                    j->col += 6;
                }
                if (cp == 0) {
                    doc_err(j->d, epos, path, "\\u0000 is not allowed in a string");
                    goto fail;
                }
                n += utf8_put(out + n, cp);
                j->p += 4;
                j->col += 4;
                break;
            default:
                doc_err(j->d, epos, path, "invalid escape in a string");
                goto fail;
            }
            jp_adv(j);
            continue;
        }
        ulen = (unsigned char)*j->p < 0x80 ? 1
               : (size_t)utf8_seq_len((const unsigned char *)j->p,
                                      (const unsigned char *)j->end);
        if (ulen == 0) {
            doc_err(j->d, jp_pos(j), path, "invalid UTF-8 in a string");
            goto fail;
        }
        while (ulen--) {
            out[n++] = *j->p;
            jp_adv(j);
        }
    }
    out[n] = '\0';
    return out;
fail:
    free(out);
    return NULL;
}

static json_t *jp_number(struct jp *j, const char *path)
{
    struct doc_pos pos = jp_pos(j);
    const char *start = j->p;
    int real = 0;
    char buf[64];
    size_t len;
    json_t *v;

#define DIGIT() (jp_peek(j) >= '0' && jp_peek(j) <= '9')
    if (jp_peek(j) == '-')
        jp_adv(j);
    if (jp_peek(j) == '0') {
        jp_adv(j);
    } else if (DIGIT()) {
        while (DIGIT())
            jp_adv(j);
    } else {
        goto bad;
    }
    if (jp_peek(j) == '.') {
        jp_adv(j);
        if (!DIGIT())
            goto bad;
        while (DIGIT())
            jp_adv(j);
        real = 1;
    }
    if (jp_peek(j) == 'e' || jp_peek(j) == 'E') {
        jp_adv(j);
        if (jp_peek(j) == '+' || jp_peek(j) == '-')
            jp_adv(j);
        if (!DIGIT())
            goto bad;
        while (DIGIT())
            jp_adv(j);
        real = 1;
    }
#undef DIGIT
    len = (size_t)(j->p - start);
    if (len >= sizeof(buf)) {
        doc_err(j->d, pos, path, "number too long");
        return NULL;
    }
    memcpy(buf, start, len);
    buf[len] = '\0';
    errno = 0;
    if (real) {
        double x = strtod(buf, NULL);
        if (errno == ERANGE && (x > 1 || x < -1)) {
            doc_err(j->d, pos, path, "number out of range");
            return NULL;
        }
        v = json_real(x);
    } else {
        long long x = strtoll(buf, NULL, 10);
        if (errno == ERANGE) {
            doc_err(j->d, pos, path, "integer out of range");
            return NULL;
        }
        v = json_integer(x);
    }
    if (v == NULL)
        doc_err(j->d, pos, path, "out of memory");
    mark_node(j->d, v, pos, 0);
    return v;
bad:
    doc_err(j->d, jp_pos(j), path, "invalid number");
    return NULL;
}

static json_t *jp_value(struct jp *j, const char *path);

static json_t *jp_object(struct jp *j, const char *path)
{
    struct doc_pos pos = jp_pos(j);
    json_t *obj = json_object();
    char what[32];

    if (obj == NULL) {
        doc_err(j->d, pos, path, "out of memory");
        return NULL;
    }
    mark_node(j->d, obj, pos, 0);
    jp_adv(j);                              /* '{' */
    jp_ws(j);
    if (jp_peek(j) == '}') {
        jp_adv(j);
        return obj;
    }
    for (;;) {
        char cpath[DOC_PATH_MAX];
        struct doc_pos kpos, vpos;
        char *key;
        json_t *v;

        jp_ws(j);
        if (jp_peek(j) != '"') {
            if (jp_peek(j) == '}')
                doc_err(j->d, jp_pos(j), path, "trailing comma before '}'");
            else
                doc_err(j->d, jp_pos(j), path, "expected a string key, found %s",
                        jp_what(j, what, sizeof(what)));
            goto fail;
        }
        kpos = jp_pos(j);
        if ((key = jp_string(j, path)) == NULL)
            goto fail;
        doc_path_key(cpath, sizeof(cpath), path, key);
        jp_ws(j);
        if (jp_peek(j) != ':') {
            doc_err(j->d, jp_pos(j), path, "expected ':' after the key, found %s",
                    jp_what(j, what, sizeof(what)));
            free(key);
            goto fail;
        }
        jp_adv(j);
        jp_ws(j);
        vpos = jp_pos(j);
        if ((v = jp_value(j, cpath)) == NULL) {
            free(key);
            goto fail;
        }
        if (json_object_get(obj, key) != NULL) {
            struct doc_pos first = doc_key_pos(j->d, obj, key);
            doc_err(j->d, kpos, cpath, "duplicate key (first at line %d, column %d)",
                    first.line, first.col);
            json_decref(v);
        } else if (json_object_set_new(obj, key, v) < 0) {
            doc_err(j->d, kpos, cpath, "out of memory");
            free(key);
            goto fail;
        } else {
            mark_member(j->d, obj, key, kpos, vpos);
        }
        free(key);
        jp_ws(j);
        if (jp_peek(j) == ',') {
            jp_adv(j);
            continue;
        }
        if (jp_peek(j) == '}') {
            jp_adv(j);
            return obj;
        }
        doc_err(j->d, jp_pos(j), path, "expected ',' or '}' after an object member, found %s",
                jp_what(j, what, sizeof(what)));
        goto fail;
    }
fail:
    json_decref(obj);
    return NULL;
}

static json_t *jp_array(struct jp *j, const char *path)
{
    struct doc_pos pos = jp_pos(j);
    json_t *arr = json_array();
    char what[32];

    if (arr == NULL) {
        doc_err(j->d, pos, path, "out of memory");
        return NULL;
    }
    mark_node(j->d, arr, pos, 0);
    jp_adv(j);                              /* '[' */
    jp_ws(j);
    if (jp_peek(j) == ']') {
        jp_adv(j);
        return arr;
    }
    for (;;) {
        char cpath[DOC_PATH_MAX];
        size_t i = json_array_size(arr);
        struct doc_pos vpos;
        json_t *v;

        jp_ws(j);
        if (jp_peek(j) == ']') {
            doc_err(j->d, jp_pos(j), path, "trailing comma before ']'");
            goto fail;
        }
        doc_path_index(cpath, sizeof(cpath), path, i);
        vpos = jp_pos(j);
        if ((v = jp_value(j, cpath)) == NULL)
            goto fail;
        if (json_array_append_new(arr, v) < 0) {
            doc_err(j->d, vpos, cpath, "out of memory");
            goto fail;
        }
        mark_elem(j->d, arr, i, vpos);
        jp_ws(j);
        if (jp_peek(j) == ',') {
            jp_adv(j);
            continue;
        }
        if (jp_peek(j) == ']') {
            jp_adv(j);
            return arr;
        }
        doc_err(j->d, jp_pos(j), path, "expected ',' or ']' after an array element, found %s",
                jp_what(j, what, sizeof(what)));
        goto fail;
    }
fail:
    json_decref(arr);
    return NULL;
}

static int jp_word(struct jp *j, const char *w)
{
    size_t n = strlen(w), i;

    if ((size_t)(j->end - j->p) < n || memcmp(j->p, w, n) != 0)
        return 0;
    for (i = 0; i < n; i++)
        jp_adv(j);
    return 1;
}

static json_t *jp_value(struct jp *j, const char *path)
{
    struct doc_pos pos = jp_pos(j);
    int c = jp_peek(j);
    char what[32];
    json_t *v;

    if (c == '{' || c == '[') {
        if (j->depth >= DOC_MAX_DEPTH) {
            doc_err(j->d, pos, path, "nesting deeper than %d levels", DOC_MAX_DEPTH);
            return NULL;
        }
        j->depth++;
        v = c == '{' ? jp_object(j, path) : jp_array(j, path);
        j->depth--;
        return v;
    }
    if (c == '"') {
        char *s = jp_string(j, path);
        if (s == NULL)
            return NULL;
        v = json_string(s);
        free(s);
        if (v == NULL)
            doc_err(j->d, pos, path, "out of memory");
        mark_node(j->d, v, pos, 0);
        return v;
    }
    if (c == '-' || (c >= '0' && c <= '9'))
        return jp_number(j, path);
    if (jp_word(j, "true"))
        return json_true();
    if (jp_word(j, "false"))
        return json_false();
    if (jp_word(j, "null"))
        return json_null();
    if (c < 0)
        doc_err(j->d, pos, path, "unexpected end of file, expected a value");
    else
        doc_err(j->d, pos, path, "expected a value, found %s", jp_what(j, what, sizeof(what)));
    return NULL;
}

int doc_parse_json(struct doc *d, const char *text, size_t len)
{
    struct jp j = {d, text, text + len, 1, 1, 0};
    char what[32];

    d->yaml = 0;
    d->root_pos.line = 1;
    d->root_pos.col = 1;
    if (len >= 3 && memcmp(text, "\xEF\xBB\xBF", 3) == 0)
        j.p += 3;                           /* byte order mark */
    jp_ws(&j);
    if (j.p == j.end) {
        doc_err(d, jp_pos(&j), "", "empty file, expected a JSON object");
        return -1;
    }
    d->root_pos = jp_pos(&j);
    if ((d->root = jp_value(&j, "")) == NULL)
        return -1;
    jp_ws(&j);
    if (j.p != j.end) {
        doc_err(d, jp_pos(&j), "", "unexpected %s after the end of the JSON document",
                jp_what(&j, what, sizeof(what)));
        json_decref(d->root);
        d->root = NULL;
        return -1;
    }
    return 0;
}

/* ---- YAML -------------------------------------------------------------- */

json_t *doc_yaml_scalar(const char *s, size_t len)
{
    char buf[64];
    const char *p;
    int digits = 0;

    if (len == 0 || (len == 1 && s[0] == '~'))
        return json_null();
    if (len >= sizeof(buf) || memchr(s, '\0', len))
        return json_stringn(s, len);
    memcpy(buf, s, len);
    buf[len] = '\0';

    if (!strcmp(buf, "null") || !strcmp(buf, "Null") || !strcmp(buf, "NULL"))
        return json_null();
    if (!strcmp(buf, "true") || !strcmp(buf, "True") || !strcmp(buf, "TRUE"))
        return json_true();
    if (!strcmp(buf, "false") || !strcmp(buf, "False") || !strcmp(buf, "FALSE"))
        return json_false();

    /* 0o17, 0x1F */
    if (len > 2 && buf[0] == '0' && (buf[1] == 'o' || buf[1] == 'x')) {
        int base = buf[1] == 'o' ? 8 : 16;
        const char *ok = base == 8 ? "01234567" : "0123456789abcdefABCDEF";
        if (strspn(buf + 2, ok) == len - 2) {
            long long x;
            errno = 0;
            x = strtoll(buf + 2, NULL, base);
            if (errno != ERANGE)
                return json_integer(x);
        }
        return json_stringn(s, len);
    }

    /* [-+]? ( \.[0-9]+ | [0-9]+ ( \.[0-9]* )? ) ( [eE][-+]?[0-9]+ )? */
    p = buf;
    if (*p == '-' || *p == '+')
        p++;
    while (*p >= '0' && *p <= '9') { p++; digits++; }
    if (*p == '\0' && digits) {
        long long x;
        errno = 0;
        x = strtoll(buf, NULL, 10);
        if (errno != ERANGE)
            return json_integer(x);
        return json_real(strtod(buf, NULL));
    }
    if (*p == '.') {
        int frac = 0;
        p++;
        while (*p >= '0' && *p <= '9') { p++; frac++; }
        if (!digits && !frac)
            return json_stringn(s, len);
        digits += frac;
    }
    if (!digits)
        return json_stringn(s, len);
    if (*p == 'e' || *p == 'E') {
        int exp = 0;
        p++;
        if (*p == '-' || *p == '+')
            p++;
        while (*p >= '0' && *p <= '9') { p++; exp++; }
        if (!exp)
            return json_stringn(s, len);
    }
    if (*p != '\0')
        return json_stringn(s, len);
    return json_real(strtod(buf, NULL));
}

struct yframe {
    json_t *node;               /* object or array */
    int     orphan;             /* not attached anywhere: freed at its end */
    char   *key;                /* object: key waiting for its value (owned) */
    struct doc_pos kpos;
    int     skip;               /* object: drop the next value */
    char    path[DOC_PATH_MAX];
};

struct yl {
    struct doc *d;
    struct yframe *st;          /* DOC_MAX_DEPTH frames */
    int n;
};

static struct doc_pos ymark(yaml_mark_t m)
{
    struct doc_pos pos = {(int)m.line + 1, (int)m.column + 1};
    return pos;
}

static const char *ytop_path(const struct yl *y)
{
    return y->n ? y->st[y->n - 1].path : "";
}

/* Where a syntax error is: the pending key's path, else the container's. */
static void yerr_path(const struct yl *y, char *out, size_t cap)
{
    const struct yframe *t = y->n ? &y->st[y->n - 1] : NULL;

    if (t && json_is_object(t->node) && t->key)
        doc_path_key(out, cap, t->path, t->key);
    else
        snprintf(out, cap, "%s", ytop_path(y));
}

/* The path of the node about to be attached at the current place. */
static void ychild_path(const struct yl *y, char *out, size_t cap)
{
    const struct yframe *t;

    if (y->n == 0) {
        out[0] = '\0';
        return;
    }
    t = &y->st[y->n - 1];
    if (json_is_object(t->node))
        doc_path_key(out, cap, t->path, t->key ? t->key : "?");
    else
        doc_path_index(out, cap, t->path, json_array_size(t->node));
}

/* True when the top frame is a mapping waiting for a key. */
static int ywant_key(const struct yl *y)
{
    const struct yframe *t = y->n ? &y->st[y->n - 1] : NULL;
    return t && json_is_object(t->node) && t->key == NULL && !t->skip;
}

/*
 * Attaches v at the current place. Returns 1 when attached (the parent, or
 * the doc as root, now owns v), 0 when the place is to be dropped (the
 * caller still owns v).
 */
static int yattach(struct yl *y, json_t *v, struct doc_pos pos)
{
    struct yframe *t;

    if (y->n == 0) {
        y->d->root = v;
        y->d->root_pos = pos;
        return 1;
    }
    t = &y->st[y->n - 1];
    if (json_is_object(t->node)) {
        int ok = 0;
        if (!t->skip && t->key && json_object_set_new(t->node, t->key, json_incref(v)) == 0) {
            mark_member(y->d, t->node, t->key, t->kpos, pos);
            json_decref(v);
            ok = 1;
        }
        free(t->key);
        t->key = NULL;
        t->skip = 0;
        return ok;
    }
    if (json_array_append(t->node, v) < 0)
        return 0;
    mark_elem(y->d, t->node, json_array_size(t->node) - 1, pos);
    json_decref(v);
    return 1;
}

/* Anchors and tags: recorded, the node itself kept. */
static void ycheck_props(struct yl *y, struct doc_pos pos, const yaml_char_t *anchor,
                         const yaml_char_t *tag)
{
    char path[DOC_PATH_MAX];

    ychild_path(y, path, sizeof(path));
    if (anchor)
        doc_err(y->d, pos, path, "YAML anchors (&%s) are not supported", (const char *)anchor);
    if (tag)
        doc_err(y->d, pos, path, "YAML tags (%s) are not supported", (const char *)tag);
}

static int ypush(struct yl *y, json_t *node, struct doc_pos pos)
{
    struct yframe *f;
    char path[DOC_PATH_MAX];
    int orphan;

    if (y->n >= DOC_MAX_DEPTH) {
        doc_err(y->d, pos, ytop_path(y), "nesting deeper than %d levels", DOC_MAX_DEPTH);
        json_decref(node);
        return -1;
    }
    ychild_path(y, path, sizeof(path));
    mark_node(y->d, node, pos, 0);
    if (ywant_key(y)) {
        /* A mapping or sequence used as a key: drop it and its value. */
        doc_err(y->d, pos, ytop_path(y), "mapping keys must be scalars");
        y->st[y->n - 1].skip = 1;
        orphan = 1;
    } else {
        orphan = !yattach(y, node, pos);
    }
    f = &y->st[y->n++];
    memset(f, 0, sizeof(*f));
    f->node = node;
    f->orphan = orphan;
    memcpy(f->path, path, sizeof(path));
    return 0;
}

static void ypop(struct yl *y)
{
    struct yframe *f = &y->st[--y->n];

    free(f->key);
    if (f->orphan)
        json_decref(f->node);
}

static void yscalar(struct yl *y, const yaml_event_t *e)
{
    struct doc_pos pos = ymark(e->start_mark);
    const char *s = (const char *)e->data.scalar.value;
    size_t len = e->data.scalar.length;
    char path[DOC_PATH_MAX];
    json_t *v;

    ycheck_props(y, pos, e->data.scalar.anchor, e->data.scalar.tag);
    if (ywant_key(y)) {
        struct yframe *t = &y->st[y->n - 1];
        if (memchr(s, '\0', len)) {
            doc_err(y->d, pos, t->path, "a key must not contain a NUL character");
            t->skip = 1;
            return;
        }
        doc_path_key(path, sizeof(path), t->path, s);
        if (json_object_get(t->node, s)) {
            struct doc_pos first = doc_key_pos(y->d, t->node, s);
            doc_err(y->d, pos, path, "duplicate key (first at line %d, column %d)",
                    first.line, first.col);
            t->skip = 1;
            return;
        }
        if ((t->key = strdup(s)) == NULL) {
            t->skip = 1;
            return;
        }
        t->kpos = pos;
        return;
    }
    ychild_path(y, path, sizeof(path));
    if (memchr(s, '\0', len)) {
        doc_err(y->d, pos, path, "a string must not contain a NUL character");
        v = json_null();
    } else if (e->data.scalar.style == YAML_PLAIN_SCALAR_STYLE && e->data.scalar.tag == NULL) {
        v = doc_yaml_scalar(s, len);
    } else {
        v = json_stringn(s, len);
    }
    if (v == NULL) {
        doc_err(y->d, pos, path, "out of memory");
        v = json_null();
    }
    mark_node(y->d, v, pos, json_is_string(v) && e->data.scalar.style == YAML_PLAIN_SCALAR_STYLE ? DOC_PLAIN : 0);
    if (!yattach(y, v, pos))
        json_decref(v);
}

int doc_parse_yaml(struct doc *d, const char *text, size_t len)
{
    yaml_parser_t parser;
    yaml_event_t e;
    struct yl y = {d, NULL, 0};
    int docs = 0, rc = -1, done = 0;

    d->yaml = 1;
    d->root_pos.line = 1;
    d->root_pos.col = 1;
    if ((y.st = calloc(DOC_MAX_DEPTH, sizeof(*y.st))) == NULL) {
        doc_err(d, d->root_pos, "", "out of memory");
        return -1;
    }
    if (!yaml_parser_initialize(&parser)) {
        doc_err(d, d->root_pos, "", "out of memory");
        free(y.st);
        return -1;
    }
    yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);

    while (!done) {
        struct doc_pos pos;
        char path[DOC_PATH_MAX];
        json_t *node;

        if (!yaml_parser_parse(&parser, &e)) {
            char ctx[160] = "";
            if (parser.context)
                snprintf(ctx, sizeof(ctx), " (%s at line %zu, column %zu)", parser.context,
                         parser.context_mark.line + 1, parser.context_mark.column + 1);
            yerr_path(&y, path, sizeof(path));
            doc_err(d, ymark(parser.problem_mark), path, "YAML syntax error: %s%s",
                    parser.problem ? parser.problem : "unknown problem", ctx);
            goto out;
        }
        pos = ymark(e.start_mark);
        switch (e.type) {
        case YAML_DOCUMENT_START_EVENT:
            if (++docs > 1) {
                doc_err(d, pos, "", "only one YAML document is allowed");
                yaml_event_delete(&e);
                goto out;
            }
            break;
        case YAML_MAPPING_START_EVENT:
        case YAML_SEQUENCE_START_EVENT:
            if (e.type == YAML_MAPPING_START_EVENT) {
                ycheck_props(&y, pos, e.data.mapping_start.anchor, e.data.mapping_start.tag);
                node = json_object();
            } else {
                ycheck_props(&y, pos, e.data.sequence_start.anchor, e.data.sequence_start.tag);
                node = json_array();
            }
            if (node == NULL) {
                doc_err(d, pos, ytop_path(&y), "out of memory");
                yaml_event_delete(&e);
                goto out;
            }
            if (ypush(&y, node, pos) < 0) {
                yaml_event_delete(&e);
                goto out;
            }
            break;
        case YAML_MAPPING_END_EVENT:
        case YAML_SEQUENCE_END_EVENT:
            if (y.n > 0)
                ypop(&y);
            break;
        case YAML_SCALAR_EVENT:
            yscalar(&y, &e);
            break;
        case YAML_ALIAS_EVENT:
            ychild_path(&y, path, sizeof(path));
            doc_err(d, pos, ywant_key(&y) ? ytop_path(&y) : path,
                    "YAML aliases (*%s) are not supported", (const char *)e.data.alias.anchor);
            if (ywant_key(&y))
                y.st[y.n - 1].skip = 1;
            else if (y.n > 0 && json_is_object(y.st[y.n - 1].node)) {
                free(y.st[y.n - 1].key);
                y.st[y.n - 1].key = NULL;
                y.st[y.n - 1].skip = 0;
            }
            break;
        case YAML_STREAM_END_EVENT:
            done = 1;
            break;
        default:
            break;
        }
        yaml_event_delete(&e);
    }
    rc = 0;
out:
    while (y.n > 0)
        ypop(&y);
    if (rc < 0) {
        json_decref(d->root);
        d->root = NULL;
    }
    free(y.st);
    yaml_parser_delete(&parser);
    return rc;
}
