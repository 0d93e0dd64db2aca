/*
 * evmem.c: libevent's allocations (event_set_mem_functions) with a small
 * per-thread list of freed blocks for each of a few large sizes.
 *
 * Each read and most writes take an evbuffer chain (4 KB for a client
 * read, 16 KB for an upstream one) that libevent frees once drained: a
 * malloc and a free of a block beyond glibc's per-thread cache (1 KB), a
 * few hundred instructions each, several times a request. Here a block
 * of more than EVMEM_MIN bytes freed goes onto its thread's list for its
 * exact size (EVMEM_SIZES sizes, EVMEM_KEEP blocks each; an empty list
 * takes the next size freed) and the next allocation of that size takes
 * it back. Every block carries its size in
 * a 16-byte header. A thread's lists are freed when it ends; the main
 * thread's (no destructor runs for it at exit) by evmem_release().
 *
 * evmem_block() gives the gateway's own short-lived blocks (a request's,
 * a transfer's) the same lists: their sizes vary with the request, so
 * they are rounded up to a power of two (2 KB to 32 KB) to share a few.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "evmem.h"

#define EVMEM_HDR   16          /* keeps libevent's blocks 16-byte aligned */
#define EVMEM_MIN   1016        /* up to this, with the header: glibc's per-thread cache (1032) */
#define EVMEM_SIZES 8
#define EVMEM_BLOCK_MIN 2048    /* evmem_block(): the smallest size class, */
#define EVMEM_BLOCK_MAX 32768   /* ... and the largest */
#define EVMEM_KEEP  8

struct evmem_list {
    size_t size;                /* of its blocks; 0: unused */
    int    n;
    void  *blk[EVMEM_KEEP];     /* headers */
};

struct evmem_cache {
    int               keyed;    /* the destructor is set for this thread */
    struct evmem_list l[EVMEM_SIZES];
};

static _Thread_local struct evmem_cache cache;
static pthread_key_t evmem_key;
static pthread_once_t evmem_once = PTHREAD_ONCE_INIT;

static void evmem_drop(void *arg)
{
    struct evmem_cache *c = arg;

    for (int i = 0; i < EVMEM_SIZES; i++) {
        while (c->l[i].n > 0)
            free(c->l[i].blk[--c->l[i].n]);
        c->l[i].size = 0;
    }
    c->keyed = 0;
}

static void evmem_key_init(void)
{
    pthread_key_create(&evmem_key, evmem_drop);
}

static void *evmem_malloc(size_t size)
{
    char *h;

    if (size > EVMEM_MIN)
        for (int i = 0; i < EVMEM_SIZES; i++)
            if (cache.l[i].size == size) {
                if (cache.l[i].n > 0)
                    return (char *)cache.l[i].blk[--cache.l[i].n] + EVMEM_HDR;
                break;
            }
    if (size > (size_t)-1 - EVMEM_HDR || (h = malloc(size + EVMEM_HDR)) == NULL)
        return NULL;
    memcpy(h, &size, sizeof(size));
    return h + EVMEM_HDR;
}

static void evmem_free(void *p)
{
    char *h;
    size_t size;
    struct evmem_list *free_slot = NULL;

    if (p == NULL)
        return;
    h = (char *)p - EVMEM_HDR;
    memcpy(&size, h, sizeof(size));
    if (size > EVMEM_MIN) {
        for (int i = 0; i < EVMEM_SIZES; i++) {
            struct evmem_list *l = &cache.l[i];
            if (l->size == size) {
                if (l->n < EVMEM_KEEP) {
                    l->blk[l->n++] = h;
                    return;
                }
                free_slot = NULL;
                break;
            }
            if (l->n == 0 && free_slot == NULL)
                free_slot = l;          /* unused, or its size kept nothing */
        }
        if (free_slot) {
            if (!cache.keyed) {
                /* The thread's lists are freed when it ends. */
                pthread_once(&evmem_once, evmem_key_init);
                if (pthread_setspecific(evmem_key, &cache) != 0)
                    goto out;
                cache.keyed = 1;
            }
            free_slot->size = size;
            free_slot->blk[free_slot->n++] = h;
            return;
        }
    }
out:
    free(h);
}

static void *evmem_realloc(void *p, size_t size)
{
    char *h, *n;
    size_t old;

    if (p == NULL)
        return evmem_malloc(size);
    h = (char *)p - EVMEM_HDR;
    memcpy(&old, h, sizeof(old));
    if (old > EVMEM_MIN || size > EVMEM_MIN) {
        /* A size the lists may keep: a new block, so that each block's
         * header tells its size. */
        if ((n = evmem_malloc(size)) == NULL)
            return NULL;
        memcpy(n, p, old < size ? old : size);
        evmem_free(p);
        return n;
    }
    if (size > (size_t)-1 - EVMEM_HDR || (n = realloc(h, size + EVMEM_HDR)) == NULL)
        return NULL;
    memcpy(n, &size, sizeof(size));
    return n + EVMEM_HDR;
}

void evmem_init(void)
{
    event_set_mem_functions(evmem_malloc, evmem_realloc, evmem_free);
}

void evmem_release(void)
{
    evmem_drop(&cache);
}

void *evmem_block(size_t size)
{
#if defined(__SANITIZE_ADDRESS__)
    return malloc(size);        /* a use after free stays caught */
#else
    size_t c = EVMEM_BLOCK_MIN;

    if (size <= EVMEM_BLOCK_MAX) {
        while (c < size)
            c <<= 1;
        size = c;
    }
    return evmem_malloc(size);
#endif
}

void evmem_block_free(void *p)
{
#if defined(__SANITIZE_ADDRESS__)
    free(p);
#else
    evmem_free(p);
#endif
}
