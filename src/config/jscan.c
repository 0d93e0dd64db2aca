/*
 * jscan.c -- one-pass JSON validation with top-level member spans (see
 * jscan.h). Recursive descent over the buffer; nothing is allocated.
 * The position goes from call to call as a pointer (NULL once the text
 * failed), so it stays in a register; the usual tokens (a string, a short
 * integer, no blank or one) are read inline. In prefix mode (jscan_find())
 * the buffer may stop anywhere: every failure that more bytes could cure
 * goes through cut() and says so.
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
#if defined(__SSE2__) && defined(__x86_64__) && defined(__GNUC__)
#define JSCAN_AVX2 1            /* long strings 32 bytes at a time where the CPU can */
#include <immintrin.h>
#endif

typedef const unsigned char *pos;     /* a place in the text; NULL: it failed */

struct js {
    pos                  buf, end;
    int                  depth;
    struct jscan_error  *err;
    int                  prefix;    /* jscan_find(): the text may go on */
    int                  more;      /* prefix: it failed where the bytes ran out */
    int                  stop;      /* prefix: the member was found */
};

static __attribute__((cold, noinline)) pos fail(struct js *s, pos at, const char *msg)
{
    pos q, bol = s->buf;
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
    return NULL;
}

/* A failure that more bytes could cure (the buffer ends in a token). */
static __attribute__((cold, noinline)) pos cut(struct js *s, pos at, const char *msg)
{
    if (s->prefix)
        s->more = 1;
    return fail(s, at, msg);
}

/* Past the blanks at p. Every byte that may follow them in JSON is above
 * ' ', so one compare settles the usual case (none); a blank is told from
 * the other bytes up to ' ' by one bit test. */
#define WS_BITS ((1ULL << ' ') | (1ULL << '\n') | (1ULL << '\r') | (1ULL << '\t'))

static inline pos ws(pos p, pos end)
{
    while (p < end && *p <= ' ' && ((WS_BITS >> *p) & 1))
        p++;
    return p;
}

/* A byte that a string holds as it is: printable ASCII but '"' and '\\'. */
static int plain_byte(unsigned c)
{
    return c - 0x20 < 0x60 && c != '"' && c != '\\';
}

/* The 8 bytes at p, the first in the low byte of the word (one load on
 * the usual little-endian machine). */
static uint64_t load_le64(pos p)
{
    return (uint64_t)p[0] | (uint64_t)p[1] << 8 | (uint64_t)p[2] << 16
           | (uint64_t)p[3] << 24 | (uint64_t)p[4] << 32 | (uint64_t)p[5] << 40
           | (uint64_t)p[6] << 48 | (uint64_t)p[7] << 56;
}

/* skip_plain() without SSE2, or in a text of fewer than 16 bytes. Eight
 * bytes are looked at at once: per byte x of the word, the high bit of
 * x - 0x20 is set when x < 0x20, that of (x ^ '"') - 1 when x == '"', that
 * of (x ^ '\\') - 1 when x == '\\', and x's own when x >= 0x80. A byte
 * borrows from the next one up only when it is one of these, so the
 * lowest byte flagged is exactly the first byte that is not plain. */
static pos skip_plain_short(pos p, pos end)
{
    const uint64_t ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
    uint64_t x, m;

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

#if defined(__SSE2__)
/* One bit per byte of the 16 at p that is not a plain_byte(): the high
 * bit of x - 0x20 in signed saturating bytes is set exactly when x < 0x20
 * or x >= 0x80, that of the compares when x is '"' or '\\'. */
static inline unsigned special16(pos p)
{
    const __m128i v = _mm_loadu_si128((const __m128i *)(const void *)p);

    return (unsigned)_mm_movemask_epi8(
        _mm_or_si128(_mm_subs_epi8(v, _mm_set1_epi8(0x20)),
                     _mm_or_si128(_mm_cmpeq_epi8(v, _mm_set1_epi8('"')),
                                  _mm_cmpeq_epi8(v, _mm_set1_epi8('\\')))));
}
#endif

/* The first byte in [p, end) that is not a plain_byte(), or end; buf is
 * where the text starts. 16 bytes at a time where SSE2 is (every x86-64);
 * the last fewer than 16 of the text in one more look, at the 16 that end
 * it (those before p left out), never past its end. */
static inline pos skip_plain(pos p, pos end, pos buf)
{
#if defined(__SSE2__)
    unsigned k;

    if (end - p >= 16) {
        pos lim = end - 15;
        do {
            if ((k = special16(p)) != 0)
                return p + __builtin_ctz(k);
            p += 16;
        } while (p < lim);
    }
    if (end - buf >= 16) {
        k = special16(end - 16) >> (16 - (end - p));
        return k != 0 ? p + __builtin_ctz(k) : end;
    }
#endif
    (void)buf;
    return skip_plain_short(p, end);
}

#if JSCAN_AVX2
static int use_avx2;            /* set before main (no thread reads it earlier) */

__attribute__((constructor)) static void jscan_cpu(void)
{
    __builtin_cpu_init();
    use_avx2 = __builtin_cpu_supports("avx2");
}

void jscan_use_avx2(int on)
{
    use_avx2 = on && __builtin_cpu_supports("avx2");
}

/* skip_plain() 32 bytes at a time while 32 are left: the first byte that
 * is not plain, or where fewer than 32 are left (none before it). */
__attribute__((target("avx2"))) static pos skip_plain32(pos p, pos end)
{
    const __m256i lo = _mm256_set1_epi8(0x20), quote = _mm256_set1_epi8('"');
    const __m256i bs = _mm256_set1_epi8('\\');

    for (; end - p >= 32; p += 32) {
        const __m256i v = _mm256_loadu_si256((const __m256i *)(const void *)p);
        unsigned k = (unsigned)_mm256_movemask_epi8(
            _mm256_or_si256(_mm256_subs_epi8(v, lo),
                            _mm256_or_si256(_mm256_cmpeq_epi8(v, quote), _mm256_cmpeq_epi8(v, bs))));
        if (k != 0)
            return p + __builtin_ctz(k);
    }
    return p;
}
#else
void jscan_use_avx2(int on)
{
    (void)on;
}
#endif

/* skip_plain() for the rest of a string that went on for 32 bytes (a
 * message's text): 32 bytes at a time where AVX2 is. */
static __attribute__((noinline)) pos skip_long(pos p, pos end, pos buf)
{
#if JSCAN_AVX2
    if (use_avx2) {
        p = skip_plain32(p, end);
        if (end - p >= 32)
            return p;                   /* stopped at it */
    }
#endif
    return skip_plain(p, end, buf);
}

/* scan_string() past its first run of plain bytes, at p: escapes, UTF-8,
 * the errors. */
static __attribute__((noinline)) pos scan_string_rest(struct js *s, pos p, int *escaped)
{
    pos end = s->end;

    for (;;) {
        unsigned c;
        p = skip_plain(p, end, s->buf);
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
    return p + 1;
}

/* The string whose opening quote is at p: past its closing one. A string
 * of plain bytes only (most) ends here, without a call: its first 32
 * bytes in two looks, its last fewer than 16 before the text's end in one
 * at the 16 that end it (never past the end); only a longer one calls
 * skip_long(). */
static inline __attribute__((always_inline)) pos scan_string(struct js *s, pos p, pos end,
                                                            int *escaped)
{
    pos q = p + 1;

    *escaped = 0;
#if defined(__SSE2__)
    {
        unsigned k;
        if (end - q >= 32) {
            if ((k = special16(q)) != 0 || (k = special16(q + 16) << 16) != 0) {
                q += __builtin_ctz(k);
                goto stop;
            }
            q = skip_long(q + 32, end, s->buf);
            if (q < end && *q == '"')
                return q + 1;
            return scan_string_rest(s, q, escaped);
        }
        if (end - q >= 16) {
            if ((k = special16(q)) != 0) {
                q += __builtin_ctz(k);
                goto stop;
            }
            q += 16;
        }
        if (end - s->buf < 16)
            return scan_string_rest(s, q, escaped);
        k = special16(end - 16) >> (16 - (end - q));
        if (k == 0)
            return scan_string_rest(s, end, escaped);
        q += __builtin_ctz(k);
    }
stop:
    if (*q == '"')
        return q + 1;
#endif
    return scan_string_rest(s, q, escaped);
}

static pos scan_number(struct js *s, pos p)
{
    pos start = p, end = s->end, digits;
    int real = 0;                       /* 1: a fraction, 2: an exponent */
    size_t nd;

    if (*p == '-')
        p++;
    digits = p;
    if (p < end && *p == '0') {
        p++;
    } else if (p < end && *p >= '1' && *p <= '9') {
        while (p < end && *p >= '0' && *p <= '9')
            p++;
    } else {
        return (p >= end ? cut : fail)(s, start, "invalid number");
    }
    nd = (size_t)(p - digits);
    if (p < end && *p == '.') {
        real = 1;
        if (++p >= end || *p < '0' || *p > '9')
            return (p >= end ? cut : fail)(s, start, "invalid number");
        while (p < end && *p >= '0' && *p <= '9')
            p++;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        real = 2;
        p++;
        if (p < end && (*p == '+' || *p == '-'))
            p++;
        if (p >= end || *p < '0' || *p > '9')
            return (p >= end ? cut : fail)(s, start, "invalid number");
        while (p < end && *p >= '0' && *p <= '9')
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
    return p;
}

/* true, false or null (word, n bytes) at p. */
static inline pos literal(struct js *s, pos p, const char *word, size_t n)
{
    size_t have = (size_t)(s->end - p);

    if (have >= n && memcmp(p, word, n) == 0)
        return p + n;
    if (have < n && memcmp(p, word, have) == 0)
        return cut(s, p, "invalid token");
    return fail(s, p, "invalid token");
}

/* Decodes a key with escapes into out[0..cap); -1 when it does not fit. */
static int decode_into(pos q, pos end, char *out, size_t cap, size_t *outlen);

static pos scan_object(struct js *s, pos p, jscan_member_fn fn, void *arg);
static pos scan_object_plain(struct js *s, pos p);
static pos scan_array(struct js *s, pos p, int *all_objects);
static pos scan_value(struct js *s, pos p, struct jscan_val *v, jscan_member_fn fn, void *arg);

/* p past one ' ', if there is one there: the usual blank of ", " and ": ".
 * What else may follow is ws()'s. */
static inline pos sp1(pos p, pos end)
{
    return p < end && *p == ' ' ? p + 1 : p;
}

/* The object or array at p (c, its first byte), with scan_value()'s depth
 * limit and *v. */
static inline __attribute__((always_inline)) pos container(struct js *s, pos p, unsigned c,
                                                         struct jscan_val *v,
                                                         jscan_member_fn fn, void *arg)
{
    pos q;

    v->all_objects = 0;
    v->type = c == '{' ? JSCAN_OBJECT : JSCAN_ARRAY;
    if (++s->depth > JSCAN_MAX_DEPTH)
        q = fail(s, p, "maximum parsing depth reached");
    else if ((q = c == '[' ? scan_array(s, p, &v->all_objects)
                  : fn ? scan_object(s, p, fn, arg) : scan_object_plain(s, p)) != NULL)
        s->depth--;
    v->start = q ? (const char *)p : NULL;
    v->len = q ? (size_t)(q - p) : 0;
    return q;
}

/* The bytes that may go on a number after its digits: a digit, '.', 'e'
 * or 'E' (what may end it is the rest). */
static const unsigned char number_goes_on[256] = {
    ['0'] = 1, ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1,
    ['5'] = 1, ['6'] = 1, ['7'] = 1, ['8'] = 1, ['9'] = 1,
    ['.'] = 1, ['e'] = 1, ['E'] = 1,
};

/* A value in an object or an array, blanks before it skipped: as
 * scan_value() without members. The usual ones are read here without its
 * call: a string, an object or an array (straight to theirs), a number
 * without an exponent whose integer part has at most 18 digits (within
 * int64, far from a real's overflow) that a byte other than a digit, '.',
 * 'e' or 'E' ends; anything else (and every error) through it. */
static inline __attribute__((always_inline)) pos member_value(struct js *s, pos p, pos end,
                                                            struct jscan_val *v)
{
    pos q, lim;
    unsigned c;
    int esc;

    p = sp1(p, end);
    if (p >= end)
        return scan_value(s, p, v, NULL, NULL);
    c = *p;
    if (c <= ' ') {
        p = ws(p, end);
        if (p >= end)
            return scan_value(s, p, v, NULL, NULL);
        c = *p;
    }
    if (c == '"') {
        v->type = JSCAN_STRING;
        v->start = (const char *)p;
        v->all_objects = 0;
        if ((q = scan_string(s, p, end, &esc)) != NULL)
            v->len = (size_t)(q - p);
        return q;
    }
    if (c - '1' < 9) {                          /* the usual: a count */
        lim = end - p > 18 ? p + 18 : end;
        for (q = p + 1; q < lim && (unsigned)*q - '0' < 10; q++)
            ;
        if (q < end && !number_goes_on[*q])
            goto number;
        if (q >= end || *q != '.')
            goto other;
        goto fraction;
    }
    if (c == '-' || c == '0') {
        q = p + (c == '-');
        if (q < end && *q == '0') {
            q++;
        } else if (q < end && (unsigned)*q - '1' < 9) {
            lim = end - q > 18 ? q + 18 : end;
            for (q++; q < lim && (unsigned)*q - '0' < 10; q++)
                ;
        } else {
            goto other;
        }
        if (q < end && *q == '.') {
        fraction:
            if (++q >= end || (unsigned)*q - '0' >= 10)
                goto other;
            while (++q < end && (unsigned)*q - '0' < 10)
                ;
        }
        if (q < end && !number_goes_on[*q]) {
        number:
            v->type = JSCAN_NUMBER;
            v->start = (const char *)p;
            v->len = (size_t)(q - p);
            v->all_objects = 0;
            return q;
        }
    }
    if (c == '{' || c == '[')
        return container(s, p, c, v, NULL, NULL);
other:
    return scan_value(s, p, v, NULL, NULL);
}

/* The object whose '{' is at p: past its '}'; fn (if any) gets each
 * member. Compact text and json.dumps()'s ", " and ": " take no call of
 * ws(): it skips what else may be there when the expected byte is not. */
static inline __attribute__((always_inline)) pos object(struct js *s, pos p, jscan_member_fn fn,
                                                       void *arg)
{
    pos end = s->end, k;
    struct jscan_val child;
    size_t klen;
    int escaped;

    p = ws(p + 1, end);
    if (p < end && *p == '}')
        return p + 1;
    for (;;) {
        if (p >= end || *p != '"') {
            p = ws(p, end);
            if (p >= end || *p != '"')
                return (p >= end ? cut : fail)(s, p, "string or '}' expected");
        }
        k = p;
        if ((p = scan_string(s, p, end, &escaped)) == NULL)
            return NULL;
        klen = (size_t)(p - k) - 2;             /* without the quotes */
        if (p >= end || *p != ':') {
            p = ws(p, end);
            if (p >= end || *p != ':')
                return (p >= end ? cut : fail)(s, p, "':' expected");
        }
        if ((p = member_value(s, p + 1, end, &child)) == NULL)
            return NULL;
        if (p >= end && s->prefix && child.type == JSCAN_NUMBER)
            return cut(s, p, "',' or '}' expected");      /* more digits may follow */
        if (fn) {
            if (!escaped) {
                fn(arg, (const char *)k + 1, klen, &child);
            } else {
                char key[64];
                if (decode_into(k + 1, end, key, sizeof(key), &klen) == 0)
                    fn(arg, key, klen, &child);
            }
            if (s->stop)
                return p;
        }
        if (p >= end || *p != ',') {
            p = ws(p, end);
            if (p < end && *p == '}')
                return p + 1;
            if (p >= end || *p != ',')
                return (p >= end ? cut : fail)(s, p, "',' or '}' expected");
        }
        p = sp1(p + 1, end);
    }
}

static pos scan_object(struct js *s, pos p, jscan_member_fn fn, void *arg)
{
    return object(s, p, fn, arg);
}

/* scan_object() without members to report (every object but the top
 * one): compiled apart, without what only they need. */
static pos scan_object_plain(struct js *s, pos p)
{
    return object(s, p, NULL, NULL);
}

/* The array whose '[' is at p: past its ']'. */
static pos scan_array(struct js *s, pos p, int *all_objects)
{
    pos end = s->end;
    struct jscan_val child;

    *all_objects = 1;
    p = ws(p + 1, end);
    if (p < end && *p == ']')
        return p + 1;
    for (;;) {
        if ((p = member_value(s, p, end, &child)) == NULL)
            return NULL;
        if (child.type != JSCAN_OBJECT)
            *all_objects = 0;
        if (p >= end || *p != ',') {
            p = ws(p, end);
            if (p < end && *p == ']')
                return p + 1;
            if (p >= end || *p != ',')
                return (p >= end ? cut : fail)(s, p, "',' or ']' expected");
        }
        p++;
    }
}

/* The value at p into *v: past it. */
static pos scan_value(struct js *s, pos p, struct jscan_val *v, jscan_member_fn fn, void *arg)
{
    pos start = p, end = s->end;
    int escaped;

    if (p >= end) {
        v->type = JSCAN_INVALID;
        p = cut(s, p, "premature end of input");
        goto done;
    }
    switch (*p) {
    case '{':
    case '[':
        return container(s, p, *p, v, fn, arg);
    case '"':
        v->type = JSCAN_STRING;
        p = scan_string(s, p, end, &escaped);
        break;
    case 't':
        v->type = JSCAN_TRUE;
        p = literal(s, p, "true", 4);
        break;
    case 'f':
        v->type = JSCAN_FALSE;
        p = literal(s, p, "false", 5);
        break;
    case 'n':
        v->type = JSCAN_NULL;
        p = literal(s, p, "null", 4);
        break;
    default:
        if (*p == '-' || (*p >= '0' && *p <= '9')) {
            v->type = JSCAN_NUMBER;
            p = scan_number(s, p);
        } else {
            v->type = JSCAN_INVALID;
            p = fail(s, p, "invalid token");
        }
        break;
    }
done:
    v->all_objects = 0;
    if (p == NULL) {
        v->start = NULL;            /* as a cleared value: no span */
        v->len = 0;
        return NULL;
    }
    v->start = (const char *)start;
    v->len = (size_t)(p - start);
    return p;
}

static void js_init(struct js *s, const char *buf, size_t len, struct jscan_error *err,
                    int prefix)
{
    memset(s, 0, sizeof(*s));
    s->buf = (pos)buf;
    s->end = s->buf + len;
    s->err = err;
    s->prefix = prefix;
}

enum jscan_type jscan_top(const char *buf, size_t len, jscan_member_fn on_member,
                          void *arg, struct jscan_error *err)
{
    struct js s;
    struct jscan_val v;
    pos p;

    js_init(&s, buf, len, err, 0);
    p = ws(s.buf, s.end);
    if (p >= s.end) {
        fail(&s, p, "'[' or '{' expected near end of file");
        return JSCAN_INVALID;
    }
    if ((p = scan_value(&s, p, &v, on_member, arg)) == NULL)
        return JSCAN_INVALID;
    p = ws(p, s.end);
    if (p != s.end) {
        fail(&s, p, "end of file expected");
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

/* jscan_find() when the member is the object's first (an answer's "id"):
 * FOUND with *out when it is whole, else 0 and jscan_find() goes the
 * whole way, from the start (what this looked at comes to the same). */
static int find_first(struct js *s, pos p, const char *key, size_t klen,
                      struct jscan_val *out)
{
    pos end = s->end, q;
    size_t i;
    int escaped;

    p = ws(p + 1, end);
    if (p >= end || *p != '"' || (q = scan_string(s, p, end, &escaped)) == NULL || escaped
        || (size_t)(q - p) - 2 != klen)
        return 0;
    for (i = 0; i < klen; i++)          /* a short key: no call */
        if (p[1 + i] != (unsigned char)key[i])
            return 0;
    q = ws(q, end);
    if (q >= end || *q != ':' || (q = member_value(s, q + 1, end, out)) == NULL
        || (q >= end && out->type == JSCAN_NUMBER))
        return 0;
    return 1;
}

enum jscan_find jscan_find(const char *buf, size_t len, const char *key, struct jscan_val *out)
{
    struct js s;
    struct jscan_val v;
    struct jscan_error err;
    struct find f;
    pos p;

    js_init(&s, buf, len, &err, 1);
    f.s = &s;
    f.key = key;
    f.klen = strlen(key);
    f.out = out;
    p = ws(s.buf, s.end);
    if (p >= s.end)
        return JSCAN_FIND_MORE;
    if (*p != '{')
        return JSCAN_FIND_NONE;
    if (find_first(&s, p, key, f.klen, &v)) {
        *out = v;
        return JSCAN_FIND_FOUND;
    }
    js_init(&s, buf, len, &err, 1);
    if (scan_value(&s, p, &v, find_member, &f) == NULL)
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
    pos p;

    js_init(&s, buf, len, &err, 1);
    p = ws(s.buf, s.end);
    if (p >= s.end)
        return JSCAN_FIND_MORE;
    if ((p = scan_value(&s, p, out, on_member, arg)) == NULL)
        return s.more ? JSCAN_FIND_MORE : JSCAN_FIND_NONE;
    if (out->type == JSCAN_NUMBER && p >= s.end)
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
