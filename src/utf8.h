/*
 * utf8.h -- what the two JSON readers (doc.c for the configuration,
 * jscan.c for request bodies) share to decode \uXXXX escapes: the four
 * hex digits and the UTF-8 encoding of a code point. Inline: both are
 * built into test drivers that take single objects.
 */
#ifndef INFERGATE_UTF8_H
#define INFERGATE_UTF8_H

#include <stddef.h>
#include <stdint.h>

/* The four hex digits at p (no further than end) into *out; -1 if not. */
static inline int utf8_hex4(const char *p, const char *end, uint32_t *out)
{
    uint32_t v = 0;
    int i;

    if (end - p < 4)
        return -1;
    for (i = 0; i < 4; i++) {
        unsigned char c = (unsigned char)p[i];
        v <<= 4;
        if (c >= '0' && c <= '9')
            v |= (uint32_t)(c - '0');
        else if (c >= 'a' && c <= 'f')
            v |= (uint32_t)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            v |= (uint32_t)(c - 'A' + 10);
        else
            return -1;
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

#endif
