/*
 * hash.h -- the string hash every name-keyed table uses (FNV-1a, 64 bits),
 * inline so that modules built alone (metrics.c in its test driver) need
 * no other object.
 */
#ifndef INFERGATE_HASH_H
#define INFERGATE_HASH_H

#include <stdint.h>

static inline uint64_t hash_str(const char *s)
{
    uint64_t h = 14695981039346656037ULL;

    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ULL;
    }
    return h;
}

#endif
