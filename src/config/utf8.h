/*
 * utf8.h -- what the two JSON readers (doc.c for the configuration,
 * jscan.c for request bodies) share to decode \uXXXX escapes: the four
 * hex digits (and one hex digit, for the percent-decoders of infernet.c
 * and redis_conn.c) and the UTF-8 encoding of a code point; and the check of a
 * multi-byte UTF-8 sequence (jscan.c, metrics.c labels). Inline: all are
 * built into test drivers that take single objects.
 */
#ifndef INFERGATE_UTF8_H
#define INFERGATE_UTF8_H

#include <stddef.h>
#include <stdint.h>

/* The value of one hex digit, -1 if c is none. */
static inline int utf8_hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* The four hex digits at p (no further than end) into *out; -1 if not. */
static inline int utf8_hex4(const char *p, const char *end, uint32_t *out)
{
    uint32_t v = 0;
    int i, d;

    if (end - p < 4)
        return -1;
    for (i = 0; i < 4; i++) {
        if ((d = utf8_hexval((unsigned char)p[i])) < 0)
            return -1;
        v = (v << 4) | (uint32_t)d;
    }
    *out = v;
    return 0;
}

/* Writes cp (<= 0x10FFFF) to out (4 bytes of room); returns the length. */
static inline size_t utf8_put(char *out, uint32_t cp)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* The length of the valid multi-byte UTF-8 sequence at p (2-4 bytes), or 0
 * (a lone or bad byte, cut short, overlong, a surrogate, above U+10FFFF). */
static inline int utf8_seq_len(const unsigned char *p, const unsigned char *end)
{
    unsigned c = p[0];
    int n, i;
    uint32_t cp;

    if (c >= 0xC2 && c <= 0xDF) {
        n = 2;
        cp = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        cp = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    if (end - p < n)
        return 0;
    for (i = 1; i < n; i++) {
        if ((p[i] & 0xC0) != 0x80)
            return 0;
        cp = (cp << 6) | (p[i] & 0x3F);
    }
    if ((n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000) || cp > 0x10FFFF
        || (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;                       /* overlong, too big, a surrogate */
    return n;
}

#endif
