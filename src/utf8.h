/*
 * utf8.h -- encodes one code point as UTF-8 (doc.c's YAML/JSON escapes,
 * jscan.c's string decoding). Inline: both are built into test drivers
 * that take single objects.
 */
#ifndef INFERGATE_UTF8_H
#define INFERGATE_UTF8_H

#include <stddef.h>
#include <stdint.h>

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
