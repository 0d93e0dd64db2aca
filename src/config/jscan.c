/*
 * jscan.c -- one-pass JSON validation with top-level member spans (see
 * jscan.h). Recursive descent over the buffer; nothing is allocated.
 * In prefix mode (jscan_find()) the buffer may stop anywhere: every
 * failure that more bytes could cure goes through cut() and says so.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jscan.h"
#include "utf8.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

struct js {
    const unsigned char *buf, *p, *end;
    int                  depth;
    struct jscan_error  *err;
    int                  prefix;    /* jscan_find(): the text may go on */
    int                  more;      /* prefix: it failed where the bytes ran out */
    int                  stop;      /* prefix: the member was found */
};

static int fail(struct js *s, const unsigned char *at, const char *msg)
{
    const unsigned char *q, *bol = s->buf;
    int line = 1;

    if (at > s->end)
        at = s->end;
    for (q = s->buf; q < at; q++)
        if (*q == '\n') {
            line++;
            bol = q + 1;
        }
    snprintf(s->err->text, sizeof(s->err->text), "%s", msg);
    s->err->line = line;
    s->err->column = (int)(at - bol) + 1;
    return -1;
}

/* A failure that more bytes could cure (the buffer ends in a token). */
static int cut(struct js *s, const unsigned char *at, const char *msg)
{
    if (s->prefix)
        s->more = 1;
    return fail(s, at, msg);
}

/* Skips blanks. Every byte that may follow them in JSON is above ' ', so
 * one compare settles the usual case (none). */
static inline void ws(struct js *s)
{
    const unsigned char *p = s->p, *end = s->end;

    while (p < end && *p <= ' ' && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t'))
        p++;
    s->p = p;
}

/* A byte that a string holds as it is: printable ASCII but '"' and '\\'. */
static int plain_byte(unsigned c)
{
    return c - 0x20 < 0x60 && c != '"' && c != '\\';
}

/* The 8 bytes at p, the first in the low byte of the word (one load on
 * the usual little-endian machine). */
static uint64_t load_le64(const unsigned char *p)
{
    return (uint64_t)p[0] | (uint64_t)p[1] << 8 | (uint64_t)p[2] << 16
           | (uint64_t)p[3] << 24 | (uint64_t)p[4] << 32 | (uint64_t)p[5] << 40
           | (uint64_t)p[6] << 48 | (uint64_t)p[7] << 56;
}

/* The first byte in [p, end) that is not a plain_byte(), or end. Eight
 * bytes are looked at at once: per byte x of the word, the high bit of
 * x - 0x20 is set when x < 0x20, that of (x ^ '"') - 1 when x == '"', that
 * of (x ^ '\\') - 1 when x == '\\', and x's own when x >= 0x80. A byte
 * borrows from the next one up only when it is one of these, so the
 * lowest byte flagged is exactly the first byte that is not plain. */
static const unsigned char *skip_plain(const unsigned char *p, const unsigned char *end)
{
    const uint64_t ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
    uint64_t x, m;

#if defined(__SSE2__)
    /* 16 at a time where SSE2 is (every x86-64): compared as signed
     * bytes, those >= 0x80 are below 0x20 too. */
    {
        const __m128i lo = _mm_set1_epi8(0x20), q = _mm_set1_epi8('"');
        const __m128i bs = _mm_set1_epi8('\\');
        while (end - p >= 16) {
            __m128i v = _mm_loadu_si128((const __m128i *)(const void *)p);
            int k = _mm_movemask_epi8(_mm_or_si128(_mm_cmplt_epi8(v, lo),
                                                   _mm_or_si128(_mm_cmpeq_epi8(v, q),
                                                                _mm_cmpeq_epi8(v, bs))));
            if (k != 0)
                return p + __builtin_ctz((unsigned)k);
            p += 16;
        }
    }
#endif
    while (end - p >= 8) {
        x = load_le64(p);
        m = ((x - ones * 0x20) | ((x ^ (ones * '"')) - ones) | ((x ^ (ones * '\\')) - ones) | x)
            & highs;
        if (m != 0)
            return p + __builtin_ctzll(m) / 8;
        p += 8;
    }
    while (p < end && plain_byte(*p))
        p++;
    return p;
}

/* scan_string() past its first run of plain bytes, at p: escapes, UTF-8,
 * the errors. */
static __attribute__((noinline)) int scan_string_rest(struct js *s, const unsigned char *p,
                                                     int *escaped)
{
    const unsigned char *end = s->end;

    for (;;) {
        unsigned c;
        p = skip_plain(p, end);
        if (p >= end)
            return cut(s, p, "premature end of input in a string");
        c = *p;
        if (c == '"')
            break;
        if (c == '\\') {
            uint32_t cp, lo;
            *escaped = 1;
            if (p + 1 >= end)
                return cut(s, p, "premature end of input in a string");
            switch (p[1]) {
            case '"': case '\\': case '/': case 'b': case 'f': case 'n': case 'r': case 't':
                p += 2;
                continue;
            case 'u':
                if (utf8_hex4((const char *)p + 2, (const char *)end, &cp) < 0)
                    return (end - p < 6 ? cut : fail)(s, p, "invalid escape");
                if (cp == 0)
                    return fail(s, p, "\\u0000 is not allowed");
                if (cp >= 0xDC00 && cp <= 0xDFFF)
                    return fail(s, p, "invalid Unicode: a lone low surrogate");
                if (cp >= 0xD800 && cp <= 0xDBFF) {
                    if (end - p < 12 || p[6] != '\\' || p[7] != 'u'
                        || utf8_hex4((const char *)p + 8, (const char *)end, &lo) < 0
                        || lo < 0xDC00 || lo > 0xDFFF)
                        return (end - p < 12 ? cut : fail)(s, p,
                                                          "invalid Unicode: a lone high surrogate");
                    p += 12;
                } else {
                    p += 6;
                }
                continue;
            default:
                return fail(s, p, "invalid escape");
            }
        }
        if (c < 0x20)
            return fail(s, p, "control character in a string");
        {
            int n = utf8_seq_len(p, end);      /* c >= 0x80 */
            if (n == 0)
                return (end - p < 4 ? cut : fail)(s, p, "invalid UTF-8");
            p += n;
        }
    }
    s->p = p + 1;
    return 0;
}

/* s->p at the opening quote; leaves it after the closing one. The loop's
 * body sees only the bytes that end a run of plain ones (skip_plain); a
 * string of plain bytes only (most) ends here, without a call. */
static inline int scan_string(struct js *s, int *escaped)
{
    const unsigned char *p = skip_plain(s->p + 1, s->end);

    *escaped = 0;
    if (p < s->end && *p == '"') {
        s->p = p + 1;
        return 0;
    }
    return scan_string_rest(s, p, escaped);
}

static int scan_number(struct js *s)
{
    const unsigned char *p = s->p, *start = p, *digits;
    int real = 0;                       /* 1: a fraction, 2: an exponent */
    size_t nd;

    if (*p == '-')
        p++;
    digits = p;
    if (p < s->end && *p == '0') {
        p++;
    } else if (p < s->end && *p >= '1' && *p <= '9') {
        while (p < s->end && *p >= '0' && *p <= '9')
            p++;
    } else {
        return (p >= s->end ? cut : fail)(s, start, "invalid number");
    }
    nd = (size_t)(p - digits);
    if (p < s->end && *p == '.') {
        real = 1;
        if (++p >= s->end || *p < '0' || *p > '9')
            return (p >= s->end ? cut : fail)(s, start, "invalid number");
        while (p < s->end && *p >= '0' && *p <= '9')
            p++;
    }
    if (p < s->end && (*p == 'e' || *p == 'E')) {
        real = 2;
        p++;
        if (p < s->end && (*p == '+' || *p == '-'))
            p++;
        if (p >= s->end || *p < '0' || *p > '9')
            return (p >= s->end ? cut : fail)(s, start, "invalid number");
        while (p < s->end && *p >= '0' && *p <= '9')
            p++;
    }
    if (!real) {
        /* Within int64, as jansson requires. */
        const char *lim = *start == '-' ? "9223372036854775808" : "9223372036854775807";
        if (nd > 19 || (nd == 19 && memcmp(digits, lim, 19) > 0))
            return fail(s, start, "too big integer");
    } else if (real == 2 || nd > 308) {
        /* A real without an exponent and with at most 308 digits before
         * its point is below 1e308 (DBL_MAX is 1.8e308): it cannot
         * overflow, and strtod is spared. */
        char small[64], *tmp = small;
        size_t n = (size_t)(p - start);
        double d;
        if (n >= sizeof(small) && (tmp = malloc(n + 1)) == NULL)
            return fail(s, start, "out of memory");
        memcpy(tmp, start, n);
        tmp[n] = '\0';
        errno = 0;
        d = strtod(tmp, NULL);
        if (tmp != small)
            free(tmp);
        if (errno == ERANGE && (d > 1.0 || d < -1.0))
            return fail(s, start, "real number overflow");
    }
    s->p = p;
    return 0;
}

static int scan_value(struct js *s, struct jscan_val *v, jscan_member_fn fn, void *arg);

static int literal(struct js *s, const char *word, size_t n)
{
    size_t have = (size_t)(s->end - s->p);

    if (have < n && memcmp(s->p, word, have) == 0)
        return cut(s, s->p, "invalid token");
    if (have < n || memcmp(s->p, word, n) != 0)
        return fail(s, s->p, "invalid token");
    s->p += n;
    return 0;
}

/* Decodes a key with escapes into out[0..cap); -1 when it does not fit. */
static int decode_into(const unsigned char *q, const unsigned char *end, char *out,
                       size_t cap, size_t *outlen);

/* An object member's value: the usual ones, a string or an integer of up
 * to 18 digits (within int64) that a byte other than a digit, '.', 'e' or
 * 'E' ends, without scan_value()'s call; anything else through it. */
static inline int member_value(struct js *s, struct jscan_val *v)
{
    const unsigned char *p = s->p, *q, *lim;
    int esc;

    if (p < s->end && *p == '"') {
        v->type = JSCAN_STRING;
        v->start = (const char *)p;
        v->all_objects = 0;
        if (scan_string(s, &esc) < 0)
            return -1;
        v->len = (size_t)(s->p - p);
        return 0;
    }
    if (p < s->end && *p >= '1' && *p <= '9') {
        lim = s->end - p > 18 ? p + 18 : s->end;
        for (q = p + 1; q < lim && *q >= '0' && *q <= '9'; q++)
            ;
        if (q < s->end && !(*q >= '0' && *q <= '9') && *q != '.' && *q != 'e' && *q != 'E') {
            v->type = JSCAN_NUMBER;
            v->start = (const char *)p;
            v->len = (size_t)(q - p);
            v->all_objects = 0;
            s->p = q;
            return 0;
        }
    }
    return scan_value(s, v, NULL, NULL);
}

static int scan_object(struct js *s, jscan_member_fn fn, void *arg)
{
    struct jscan_val child;

    s->p++;
    ws(s);
    if (s->p < s->end && *s->p == '}') {
        s->p++;
        return 0;
    }
    for (;;) {
        const unsigned char *k;
        size_t kspan;
        int escaped;
        if (s->p >= s->end || *s->p != '"')
            return (s->p >= s->end ? cut : fail)(s, s->p, "string or '}' expected");
        k = s->p;
        if (scan_string(s, &escaped) < 0)
            return -1;
        kspan = (size_t)(s->p - k);             /* quotes included */
        ws(s);
        if (s->p >= s->end || *s->p != ':')
            return (s->p >= s->end ? cut : fail)(s, s->p, "':' expected");
        s->p++;
        ws(s);
        if (member_value(s, &child) < 0)
            return -1;
        if (s->prefix && child.type == JSCAN_NUMBER && s->p >= s->end)
            return cut(s, s->p, "',' or '}' expected");      /* more digits may follow */
        if (fn) {
            if (!escaped) {
                fn(arg, (const char *)k + 1, kspan - 2, &child);
            } else {
                char key[64];
                size_t klen;
                if (decode_into(k + 1, s->end, key, sizeof(key), &klen) == 0)
                    fn(arg, key, klen, &child);
            }
            if (s->stop)
                return 0;
        }
        ws(s);
        if (s->p < s->end && *s->p == ',') {
            s->p++;
            ws(s);
            continue;
        }
        if (s->p < s->end && *s->p == '}') {
            s->p++;
            return 0;
        }
        return (s->p >= s->end ? cut : fail)(s, s->p, "',' or '}' expected");
    }
}

static int scan_array(struct js *s, int *all_objects)
{
    struct jscan_val child;

    *all_objects = 1;
    s->p++;
    ws(s);
    if (s->p < s->end && *s->p == ']') {
        s->p++;
        return 0;
    }
    for (;;) {
        if (scan_value(s, &child, NULL, NULL) < 0)
            return -1;
        if (child.type != JSCAN_OBJECT)
            *all_objects = 0;
        ws(s);
        if (s->p < s->end && *s->p == ',') {
            s->p++;
            ws(s);
            continue;
        }
        if (s->p < s->end && *s->p == ']') {
            s->p++;
            return 0;
        }
        return (s->p >= s->end ? cut : fail)(s, s->p, "',' or ']' expected");
    }
}

static int scan_value(struct js *s, struct jscan_val *v, jscan_member_fn fn, void *arg)
{
    const unsigned char *start = s->p;
    int r, escaped;

    v->all_objects = 0;
    if (s->p >= s->end) {
        v->type = JSCAN_INVALID;
        r = cut(s, s->p, "premature end of input");
        goto failed;
    }
    switch (*s->p) {
    case '{':
    case '[':
        if (++s->depth > JSCAN_MAX_DEPTH) {
            v->type = *s->p == '{' ? JSCAN_OBJECT : JSCAN_ARRAY;
            r = fail(s, s->p, "maximum parsing depth reached");
            goto failed;
        }
        if (*s->p == '{') {
            v->type = JSCAN_OBJECT;
            r = scan_object(s, fn, arg);
        } else {
            v->type = JSCAN_ARRAY;
            r = scan_array(s, &v->all_objects);
        }
        s->depth--;
        break;
    case '"':
        v->type = JSCAN_STRING;
        r = scan_string(s, &escaped);
        break;
    case 't':
        v->type = JSCAN_TRUE;
        r = literal(s, "true", 4);
        break;
    case 'f':
        v->type = JSCAN_FALSE;
        r = literal(s, "false", 5);
        break;
    case 'n':
        v->type = JSCAN_NULL;
        r = literal(s, "null", 4);
        break;
    default:
        if (*s->p == '-' || (*s->p >= '0' && *s->p <= '9')) {
            v->type = JSCAN_NUMBER;
            r = scan_number(s);
        } else {
            v->type = JSCAN_INVALID;
            r = fail(s, s->p, "invalid token");
        }
        break;
    }
    if (r < 0)
        goto failed;
    v->start = (const char *)start;
    v->len = (size_t)(s->p - start);
    return 0;
failed:
    v->start = NULL;            /* as a cleared value: no span */
    v->len = 0;
    return -1;
}

enum jscan_type jscan_top(const char *buf, size_t len, jscan_member_fn on_member,
                          void *arg, struct jscan_error *err)
{
    struct js s;
    struct jscan_val v;

    memset(&s, 0, sizeof(s));
    s.buf = s.p = (const unsigned char *)buf;
    s.end = s.buf + len;
    s.err = err;
    ws(&s);
    if (s.p >= s.end) {
        fail(&s, s.p, "'[' or '{' expected near end of file");
        return JSCAN_INVALID;
    }
    if (scan_value(&s, &v, on_member, arg) < 0)
        return JSCAN_INVALID;
    ws(&s);
    if (s.p != s.end) {
        fail(&s, s.p, "end of file expected");
        return JSCAN_INVALID;
    }
    return v.type;
}

struct find {
    struct js        *s;
    const char       *key;
    size_t            klen;
    struct jscan_val *out;
};

static void find_member(void *arg, const char *key, size_t klen, const struct jscan_val *v)
{
    struct find *f = arg;

    if (klen == f->klen && memcmp(key, f->key, klen) == 0) {
        *f->out = *v;
        f->s->stop = 1;
    }
}

enum jscan_find jscan_find(const char *buf, size_t len, const char *key, struct jscan_val *out)
{
    struct js s;
    struct jscan_val v;
    struct jscan_error err;
    struct find f;

    memset(&s, 0, sizeof(s));
    s.buf = s.p = (const unsigned char *)buf;
    s.end = s.buf + len;
    s.err = &err;
    s.prefix = 1;
    f.s = &s;
    f.key = key;
    f.klen = strlen(key);
    f.out = out;
    ws(&s);
    if (s.p >= s.end)
        return JSCAN_FIND_MORE;
    if (*s.p != '{')
        return JSCAN_FIND_NONE;
    if (scan_value(&s, &v, find_member, &f) < 0)
        return s.more ? JSCAN_FIND_MORE : JSCAN_FIND_NONE;
    return s.stop ? JSCAN_FIND_FOUND : JSCAN_FIND_NONE;
}

enum jscan_find jscan_value(const char *buf, size_t len, struct jscan_val *out)
{
    return jscan_object(buf, len, NULL, NULL, out);
}

enum jscan_find jscan_object(const char *buf, size_t len, jscan_member_fn on_member,
                             void *arg, struct jscan_val *out)
{
    struct js s;
    struct jscan_error err;

    memset(&s, 0, sizeof(s));
    s.buf = s.p = (const unsigned char *)buf;
    s.end = s.buf + len;
    s.err = &err;
    s.prefix = 1;
    ws(&s);
    if (s.p >= s.end)
        return JSCAN_FIND_MORE;
    if (scan_value(&s, out, on_member, arg) < 0)
        return s.more ? JSCAN_FIND_MORE : JSCAN_FIND_NONE;
    if (out->type == JSCAN_NUMBER && s.p >= s.end)
        return JSCAN_FIND_MORE;         /* more digits may follow */
    return JSCAN_FIND_FOUND;
}

/* q just after the opening quote of a valid string. Decoded text is never
 * longer than the escaped one. */
static int decode_into(const unsigned char *q, const unsigned char *end, char *out,
                       size_t cap, size_t *outlen)
{
    size_t n = 0;

    while (q < end && *q != '"') {
        char tmp[4];
        size_t k = 1;
        if (*q != '\\') {
            tmp[0] = (char)*q++;
        } else {
            uint32_t cp = 0, lo = 0xDC00;
            switch (q[1]) {
            case 'b': tmp[0] = '\b'; q += 2; break;
            case 'f': tmp[0] = '\f'; q += 2; break;
            case 'n': tmp[0] = '\n'; q += 2; break;
            case 'r': tmp[0] = '\r'; q += 2; break;
            case 't': tmp[0] = '\t'; q += 2; break;
            case 'u':
                utf8_hex4((const char *)q + 2, (const char *)end, &cp);
                q += 6;
                if (cp >= 0xD800 && cp <= 0xDBFF) {
                    utf8_hex4((const char *)q + 2, (const char *)end, &lo);
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                    q += 6;
                }
                k = utf8_put(tmp, cp);
                break;
            default:  tmp[0] = (char)q[1]; q += 2; break;   /* " \ / */
            }
        }
        if (n + k >= cap)
            return -1;
        memcpy(out + n, tmp, k);
        n += k;
    }
    out[n] = '\0';
    *outlen = n;
    return 0;
}

char *jscan_string(const struct jscan_val *v, size_t *outlen)
{
    const unsigned char *q = (const unsigned char *)v->start;
    char *out;
    size_t n;

    if (v->type != JSCAN_STRING || v->len < 2)
        return NULL;
    if ((out = malloc(v->len)) == NULL)
        return NULL;
    n = v->len - 2;
    if (memchr(q + 1, '\\', n) == NULL) {    /* no escape: the bytes as they are */
        memcpy(out, q + 1, n);
        out[n] = '\0';
    } else {
        decode_into(q + 1, q + v->len, out, v->len, &n);
    }
    if (outlen)
        *outlen = n;
    return out;
}
