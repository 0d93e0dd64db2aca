/*
 * ascii.h -- comparing a header field's name with a known lower-case name,
 * case aside, without a library call: a word (8 bytes) at a time.
 *
 * Exact for any bytes in s (control characters and bytes >= 0x80
 * included): only a letter may differ from `lower` in case, so "\r" never
 * passes for "-" as it would with a plain OR of 0x20. `lower` holds only
 * lower-case letters and bytes below 0x40 (digits, '-', '/', ...: the names
 * of HTTP fields, media types): a byte of it with 0x40 set is a letter.
 */
#ifndef INFERGATE_ASCII_H
#define INFERGATE_ASCII_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* 1 when the n bytes at s are the n bytes of `lower`, case aside. */
static inline int ascii_lower_eq(const char *s, const char *lower, size_t n)
{
    uint64_t a, b;
    size_t i = 0;

    if (n < 8 && n >= 4) {              /* two words of 4, which may overlap */
        uint32_t c, d, e, f;
        memcpy(&c, s, 4);
        memcpy(&d, lower, 4);
        memcpy(&e, s + n - 4, 4);
        memcpy(&f, lower + n - 4, 4);
        return !(((c ^ d) & ~((d & 0x40404040U) >> 1)) | ((e ^ f) & ~((f & 0x40404040U) >> 1)));
    }
    if (n < 8) {
        for (; i < n; i++) {
            unsigned char c = (unsigned char)s[i];
            if (c >= 'A' && c <= 'Z')
                c |= 0x20;
            if (c != (unsigned char)lower[i])
                return 0;
        }
        return 1;
    }
    for (;;) {
        memcpy(&a, s + i, 8);
        memcpy(&b, lower + i, 8);
        /* A byte may differ by 0x20 only where lower has a letter (the
         * only bytes of lower with 0x40 set). */
        if ((a ^ b) & ~((b & 0x4040404040404040ULL) >> 1))
            return 0;
        if (i + 8 == n)
            return 1;
        i = i + 16 <= n ? i + 8 : n - 8;   /* the last word may overlap */
    }
}

#endif
