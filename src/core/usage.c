/*
 * usage.c -- token usage from the end of answers and streams (see usage.h).
 */
#include <stdlib.h>
#include <string.h>

#include "jscan.h"
#include "usage.h"

#define KEY "\"usage\""
#define KEYLEN (sizeof(KEY) - 1)

/* --- reading one usage object ----------------------------------------- */

struct usage_fields {
    struct usage *u;
    uint64_t      cache_creation, cache_read;
    unsigned      anthropic;     /* cache_*_input_tokens seen */
};

static int read_count(const struct jscan_val *v, uint64_t *out)
{
    uint64_t n = 0;
    size_t i;

    if (v->type != JSCAN_NUMBER || v->len == 0 || v->len > 18)
        return -1;
    for (i = 0; i < v->len; i++) {
        char c = v->start[i];
        if (c < '0' || c > '9')
            return -1;           /* negative, fraction or exponent: not a count */
        n = n * 10 + (uint64_t)(c - '0');
    }
    *out = n;
    return 0;
}

/* What a usage object's member is for, by its name (the one place that
 * names them); KNOWN: one of the usual others, nothing to read. */
enum slot {
    SLOT_UNKNOWN = -1, SLOT_KNOWN, SLOT_INPUT, SLOT_OUTPUT, SLOT_DETAILS, SLOT_CACHE_READ,
    SLOT_CACHE_CREATION, SLOT_CACHED,
};

/* The slot of member key[0..klen) of a usage object, or (details) of one
 * of its *_tokens_details objects. */
static enum slot slot_of(const char *key, size_t klen, int details)
{
#define IS(name) (klen == sizeof(name) - 1 && memcmp(key, name, sizeof(name) - 1) == 0)
    if (details) {
        if (IS("cached_tokens"))
            return SLOT_CACHED;
        if (IS("audio_tokens") || IS("reasoning_tokens") || IS("accepted_prediction_tokens")
            || IS("rejected_prediction_tokens"))
            return SLOT_KNOWN;
        return SLOT_UNKNOWN;
    }
    if (IS("prompt_tokens") || IS("input_tokens"))
        return SLOT_INPUT;
    if (IS("completion_tokens") || IS("output_tokens"))
        return SLOT_OUTPUT;
    if (IS("total_tokens"))
        return SLOT_KNOWN;
    if (IS("prompt_tokens_details") || IS("input_tokens_details"))
        return SLOT_DETAILS;
    if (IS("completion_tokens_details") || IS("output_tokens_details"))
        return SLOT_KNOWN;
    if (IS("cache_read_input_tokens"))
        return SLOT_CACHE_READ;
    if (IS("cache_creation_input_tokens"))
        return SLOT_CACHE_CREATION;
    return SLOT_UNKNOWN;
#undef IS
}

/* Count n of a member in slot (the others read nothing). */
static void put_count(struct usage_fields *f, enum slot slot, uint64_t n)
{
    struct usage *u = f->u;

    switch (slot) {
    case SLOT_INPUT:
        u->input = n;
        u->have |= USAGE_HAVE_INPUT;
        break;
    case SLOT_OUTPUT:
        u->output = n;
        u->have |= USAGE_HAVE_OUTPUT;
        break;
    case SLOT_CACHED:
        u->cached = n;
        u->have |= USAGE_HAVE_CACHED;
        break;
    case SLOT_CACHE_READ:
        f->cache_read = n;
        f->anthropic |= 1;
        break;
    case SLOT_CACHE_CREATION:
        f->cache_creation = n;
        f->anthropic |= 2;
        break;
    default:
        break;
    }
}

static void on_details(void *arg, const char *key, size_t klen, const struct jscan_val *v)
{
    uint64_t n;

    if (slot_of(key, klen, 1) == SLOT_CACHED && read_count(v, &n) == 0)
        put_count(arg, SLOT_CACHED, n);
}

static void on_usage(void *arg, const char *key, size_t klen, const struct jscan_val *v)
{
    struct jscan_error err;
    enum slot slot = slot_of(key, klen, 0);
    uint64_t n;

    if (slot == SLOT_DETAILS) {
        if (v->type == JSCAN_OBJECT)
            jscan_top(v->start, v->len, on_details, arg, &err);
    } else if (slot > SLOT_KNOWN && read_count(v, &n) == 0) {
        put_count(arg, slot, n);
    }
}

/* The counts of f's object, read: 0 when it had any. */
static int fields_done(struct usage_fields *f)
{
    struct usage *u = f->u;

    if (f->anthropic) {
        /* Messages: input_tokens leaves out what was read from or written
         * to the cache; `input` counts them all, as OpenAI's does. */
        if (u->have & USAGE_HAVE_INPUT)
            u->input += f->cache_read + f->cache_creation;
        if (f->anthropic & 1) {
            u->cached = f->cache_read;
            u->have |= USAGE_HAVE_CACHED;
        }
    }
    return u->have ? 0 : -1;
}

int usage_parse_object(const char *obj, size_t len, struct usage *u)
{
    struct usage_fields f;
    struct jscan_error err;

    memset(u, 0, sizeof(*u));
    memset(&f, 0, sizeof(f));
    f.u = u;
    if (jscan_top(obj, len, on_usage, &f, &err) != JSCAN_OBJECT) {
        memset(u, 0, sizeof(*u));
        return -1;
    }
    return fields_done(&f);
}

/* --- finding it -------------------------------------------------------- */

static int is_ws(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

static inline __attribute__((always_inline)) const char *skip_ws(const char *p, const char *e)
{
    while (p < e && (unsigned char)*p <= ' ' && is_ws(*p))     /* none: one compare */
        p++;
    return p;
}

/*
 * A usage object read in one pass without the JSON reader when it is one
 * of the usual ones: every member named in slot_of() (no escape), its
 * value a count of up to 18 digits or, for a *_details member, an object
 * of the same kind one level down; blanks anywhere between. Such a text is
 * valid JSON and these are the members jscan_object() reports, so each
 * count goes where on_usage() puts it. p at the '{'; level 0: the usage
 * object, 1: details read, 2: details only checked. Returns the byte past
 * the '}', or NULL when the text is anything else (a name not in the
 * table, another value, cut short): the reader then reads it, from the
 * start.
 */
#define NAME_MAX_LEN 32                 /* longer than every name in slot_of() */

static const char *quick_object(const char *p, const char *e, struct usage_fields *f, int level)
{
    p = skip_ws(p + 1, e);
    if (p < e && *p == '}')
        return p + 1;
    for (;;) {
        const char *k, *q, *lim;
        enum slot slot;
        uint64_t n = 0;

        if (p >= e || *p != '"')
            return NULL;
        k = p + 1;
        lim = e - k > NAME_MAX_LEN ? k + NAME_MAX_LEN : e;
        if ((q = memchr(k, '"', (size_t)(lim - k))) == NULL
            || (slot = slot_of(k, (size_t)(q - k), level != 0)) == SLOT_UNKNOWN)
            return NULL;
        p = skip_ws(q + 1, e);
        if (p >= e || *p != ':')
            return NULL;
        p = skip_ws(p + 1, e);
        if (p >= e)
            return NULL;
        if (*p == '{') {
            if (level != 0 || (slot != SLOT_DETAILS && slot != SLOT_KNOWN)
                || (q = quick_object(p, e, f, slot == SLOT_DETAILS ? 1 : 2)) == NULL)
                return NULL;
        } else {
            if (*p == '0') {
                q = p + 1;
            } else if (*p >= '1' && *p <= '9') {
                lim = e - p > 18 ? p + 18 : e;
                for (q = p; q < lim && *q >= '0' && *q <= '9'; q++)
                    n = n * 10 + (uint64_t)(*q - '0');
            } else {
                return NULL;
            }
            /* what ends a count here: a blank, ',' or '}' (a digit, '.'
             * or 'e' would go on with it) */
            if (q >= e || !(*q == ',' || *q == '}' || is_ws(*q)))
                return NULL;
            if (level != 2)
                put_count(f, slot, n);
        }
        p = skip_ws(q, e);
        if (p < e && *p == ',') {
            p = skip_ws(p + 1, e);
            continue;
        }
        if (p < e && *p == '}')
            return p + 1;
        return NULL;
    }
}

/* The usage object whose key starts at k, if complete and valid: read in
 * the same pass that finds its end (quick_object(), else jscan_object()),
 * into *u only once it proves whole (*u zeroed when it holds no count, as
 * usage_parse_object() does). */
static int try_at(const char *k, const char *e, struct usage *u)
{
    const char *b = k + KEYLEN;
    struct jscan_val v;
    struct usage_fields f;
    struct usage got;

    while (b < e && is_ws(*b))
        b++;
    if (b >= e || *b != ':')
        return -1;
    for (b++; b < e && is_ws(*b); b++)
        ;
    if (b >= e || *b != '{')
        return -1;
    memset(&got, 0, sizeof(got));
    memset(&f, 0, sizeof(f));
    f.u = &got;
    if (quick_object(b, e, &f, 0) == NULL) {
        memset(&got, 0, sizeof(got));
        memset(&f, 0, sizeof(f));
        f.u = &got;
        if (jscan_object(b, (size_t)(e - b), on_usage, &f, &v) != JSCAN_FIND_FOUND)
            return -1;
    }
    if (fields_done(&f) < 0) {
        memset(u, 0, sizeof(*u));
        return -1;
    }
    *u = got;
    return 0;
}

/* The first KEY in [k, e), or NULL. memchr for its 'g' (rarer than the
 * other letters in text and JSON: one per event of a stream, in the model
 * name), then a compare: glibc's memmem is a byte loop behind a 256-byte
 * table set up per call, ~2 instructions a byte. */
#define KEY_PIVOT 4                         /* KEY[4] == 'g' */

static const char *find_key(const char *k, const char *e)
{
    const char *g, *s;

    while (e - k >= (ptrdiff_t)KEYLEN
           && (g = memchr(k + KEY_PIVOT, KEY[KEY_PIVOT], (size_t)(e - k - KEY_PIVOT))) != NULL) {
        s = g - KEY_PIVOT;
        if (e - s >= (ptrdiff_t)KEYLEN && memcmp(s, KEY, KEYLEN) == 0)
            return s;
        k = s + 1;
    }
    return NULL;
}

/* The last KEY in [b, e), or NULL: memrchr for its 'g' from the end (a
 * JSON answer's usage is its last member, a few bytes back). */
static const char *find_last_key(const char *b, const char *e)
{
    const char *g, *lim;

    if (e - b < (ptrdiff_t)KEYLEN)
        return NULL;
    lim = e - (KEYLEN - 1 - KEY_PIVOT);       /* a 'g' from here on ends no key by e */
    while (lim > b + KEY_PIVOT
           && (g = memrchr(b + KEY_PIVOT, KEY[KEY_PIVOT], (size_t)(lim - b - KEY_PIVOT))) != NULL) {
        if (memcmp(g - KEY_PIVOT, KEY, KEYLEN) == 0)
            return g - KEY_PIVOT;
        lim = g;
    }
    return NULL;
}

/* The last key that starts a valid usage object. The last key is found
 * from the end and tried first: in an answer it is the one (its usage is
 * its last member). When it is none, the keys are found going forward
 * with find_key() (a stream's tail usually has none or one; a byte by
 * byte walk back from the end cost ~5 instructions per byte), the last
 * SCAN_KEEP of them tried from the last; with more keys than that and none
 * of those valid, the earlier ones are tried the slow way. */
#define SCAN_KEEP 16

/* usage_scan_last(), also telling whether any key was found (*nkeys 0
 * when none). */
static int scan_last(const char *buf, size_t len, struct usage *u, size_t *nkeys)
{
    const char *at[SCAN_KEEP], *k = buf, *e = buf + len;
    size_t n = 0, i;

    if ((k = find_last_key(buf, e)) == NULL) {
        *nkeys = 0;
        return -1;
    }
    *nkeys = 1;
    if (try_at(k, e, u) == 0)
        return 0;
    /* Not valid: the earlier keys, as if that one had not been tried
     * (trying it again comes to the same). */
    k = buf;
    while (e - k >= (ptrdiff_t)KEYLEN && (k = find_key(k, e)) != NULL) {
        at[n++ % SCAN_KEEP] = k;
        k += KEYLEN - 1;               /* its closing quote may open the next */
    }
    *nkeys = n;
    for (i = 0; i < n && i < SCAN_KEEP; i++)
        if (try_at(at[(n - 1 - i) % SCAN_KEEP], e, u) == 0)
            return 0;
    if (n <= SCAN_KEEP)
        return -1;
    for (k = at[n % SCAN_KEEP] - 1; k >= buf; k--)     /* before the oldest kept */
        if (*k == '"' && memcmp(k, KEY, KEYLEN) == 0 && try_at(k, e, u) == 0)
            return 0;
    return -1;
}

int usage_scan_last(const char *buf, size_t len, struct usage *u)
{
    size_t n;

    return scan_last(buf, len, u, &n);
}

int usage_scan_first(const char *buf, size_t len, struct usage *u)
{
    const char *k = buf, *e = buf + len;

    while (e - k >= (ptrdiff_t)KEYLEN && (k = find_key(k, e)) != NULL) {
        if (try_at(k, e, u) == 0)
            return 0;
        k += KEYLEN;
    }
    return -1;
}

/* --- streams ------------------------------------------------------------ */

struct usage_stream *usage_stream_new(void)
{
    return calloc(1, sizeof(struct usage_stream));
}

void usage_stream_free(struct usage_stream *s)
{
    if (s == NULL)
        return;
    free(s->buf);
    free(s->head);
    free(s);
}

/* buf holds at least `want` bytes (at most USAGE_TAIL); 0 when it could
 * not grow, and the stream is then given up (no counts). */
static int stream_room(struct usage_stream *s, size_t want)
{
    size_t cap = s->cap ? s->cap : USAGE_STREAM_MIN;
    char *nb;

    if (want <= s->cap)
        return 1;
    while (cap < want)
        cap *= 2;
    if (cap > USAGE_TAIL)
        cap = USAGE_TAIL;
    if ((nb = realloc(s->buf, cap)) == NULL) {
        s->failed = 1;
        return 0;
    }
    s->buf = nb;
    s->cap = cap;
    return 1;
}

/*
 * Up to USAGE_TAIL bytes the stream is kept as it came, in a buffer that
 * grows with it (an idle stream holds a few hundred bytes, not 12 KB).
 * Beyond, its first USAGE_HEAD bytes are put aside and the buffer becomes
 * the ring of its last USAGE_TAIL bytes: byte i of the stream at i % TAIL.
 */
void usage_stream_feed(struct usage_stream *s, const char *data, size_t len)
{
    size_t n;

    if (s->failed || len == 0)
        return;
    if (s->total + len <= USAGE_TAIL) {
        if (!stream_room(s, (size_t)s->total + len))
            return;
        memcpy(s->buf + s->total, data, len);
        s->total += len;
        s->pos = (size_t)(s->total % USAGE_TAIL);
        return;
    }
    if (s->head == NULL) {                 /* outgrows the tail now */
        size_t had = (size_t)s->total < USAGE_HEAD ? (size_t)s->total : USAGE_HEAD;
        if ((s->head = malloc(USAGE_HEAD)) == NULL) {
            s->failed = 1;
            return;
        }
        if (had)
            memcpy(s->head, s->buf, had);
        n = USAGE_HEAD - had < len ? USAGE_HEAD - had : len;
        memcpy(s->head + had, data, n);
        s->head_len = had + n;
        if (!stream_room(s, USAGE_TAIL))
            return;
    }
    s->total += len;
    if (len >= USAGE_TAIL) {
        memcpy(s->buf, data + len - USAGE_TAIL, USAGE_TAIL);
        s->pos = 0;
        return;
    }
    n = USAGE_TAIL - s->pos < len ? USAGE_TAIL - s->pos : len;
    memcpy(s->buf + s->pos, data, n);
    memcpy(s->buf, data + n, len - n);
    s->pos = (s->pos + len) % USAGE_TAIL;
}

int usage_stream_result(struct usage_stream *s, struct usage *u)
{
    char tail[USAGE_TAIL];
    const char *t = tail;
    size_t tlen, nkeys;
    struct usage h;

    const char *head;
    size_t hlen;

    memset(u, 0, sizeof(*u));
    if (s->failed || s->total == 0)
        return -1;
    if (s->total <= USAGE_TAIL) {
        tlen = (size_t)s->total;       /* the whole stream, as it came */
        t = s->buf;
        head = s->buf;
        hlen = tlen < USAGE_HEAD ? tlen : USAGE_HEAD;
    } else {
        tlen = USAGE_TAIL;
        memcpy(tail, s->buf + s->pos, USAGE_TAIL - s->pos);
        memcpy(tail + USAGE_TAIL - s->pos, s->buf, s->pos);
        head = s->head;
        hlen = s->head_len;
    }
    scan_last(t, tlen, u, &nkeys);
    /* A short stream is all in the tail: with no key there, the head (its
     * first bytes) has none either. Most streams carry no usage. */
    if (nkeys == 0 && s->total <= USAGE_TAIL)
        return -1;
    if ((u->have & (USAGE_HAVE_INPUT | USAGE_HAVE_OUTPUT))
            != (USAGE_HAVE_INPUT | USAGE_HAVE_OUTPUT)
        && usage_scan_first(head, hlen, &h) == 0) {
        if (!(u->have & USAGE_HAVE_INPUT) && (h.have & USAGE_HAVE_INPUT)) {
            u->input = h.input;
            u->have |= USAGE_HAVE_INPUT;
        }
        if (!(u->have & USAGE_HAVE_CACHED) && (h.have & USAGE_HAVE_CACHED)) {
            u->cached = h.cached;
            u->have |= USAGE_HAVE_CACHED;
        }
        if (!(u->have & USAGE_HAVE_OUTPUT) && (h.have & USAGE_HAVE_OUTPUT)) {
            u->output = h.output;
            u->have |= USAGE_HAVE_OUTPUT;
        }
    }
    return u->have ? 0 : -1;
}

struct chunk_fields {
    int choices_empty, usage_obj;
};

static void on_chunk(void *arg, const char *key, size_t klen, const struct jscan_val *v)
{
    struct chunk_fields *f = arg;
    size_t i;

    if (klen == 7 && memcmp(key, "choices", 7) == 0 && v->type == JSCAN_ARRAY) {
        for (i = 1; i + 1 < v->len && is_ws(v->start[i]); i++)
            ;
        f->choices_empty = i + 1 == v->len;
    } else if (klen == 5 && memcmp(key, "usage", 5) == 0) {
        f->usage_obj = v->type == JSCAN_OBJECT;
    }
}

int usage_only_chunk(const char *data, size_t len)
{
    struct chunk_fields f = { 0, 0 };
    struct jscan_error err;

    if (len < KEYLEN || memmem(data, len, KEY, KEYLEN) == NULL)
        return 0;
    if (jscan_top(data, len, on_chunk, &f, &err) != JSCAN_OBJECT)
        return 0;
    return f.choices_empty && f.usage_obj;
}

int usage_only_event(const char *ev, size_t len)
{
    const char *e = ev + len, *line = ev;

    while (line < e) {
        const char *nl = memchr(line, '\n', (size_t)(e - line));
        const char *end = nl ? nl : e;
        if (end - line >= 5 && memcmp(line, "data:", 5) == 0) {
            const char *d = line + 5;
            if (d < end && *d == ' ')
                d++;
            if (end > d && end[-1] == '\r')
                end--;
            return usage_only_chunk(d, (size_t)(end - d));
        }
        line = nl ? nl + 1 : e;
    }
    return 0;
}

struct ask_fields {
    int asked;
};

static void on_options(void *arg, const char *key, size_t klen, const struct jscan_val *v)
{
    struct ask_fields *f = arg;

    if (klen == 13 && memcmp(key, "include_usage", 13) == 0)
        f->asked = v->type == JSCAN_TRUE;   /* the last one wins */
}

enum usage_ask usage_ask_of(const char *stream_options, size_t len)
{
    struct ask_fields f = { 0 };
    struct jscan_error err;

    if (stream_options == NULL)
        return USAGE_ADD;
    if (jscan_top(stream_options, len, on_options, &f, &err) == JSCAN_OBJECT && f.asked)
        return USAGE_ASKED;
    return USAGE_REWRITE;
}
