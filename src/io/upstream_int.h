/*
 * upstream_int.h -- what upstream.c (the facade and libcurl) and
 * upstream_h1.c (the own HTTP/1.1 client, plain and TLS) share. Not for other modules.
 *
 * A transfer is a `struct upstream_xfer` as the first member of a
 * backend's own struct; `kind` says which backend owns it. The final
 * response head is kept the same way by both: `rh` holds
 * "name\0value\0" pairs, `nresp` of them, and `rh_lens` the lengths of
 * the first UPSTREAM_RH_LENS pairs' names and values (upstream_rh_note()),
 * so that walking them measures nothing.
 */
#ifndef INFERGATE_UPSTREAM_INT_H
#define INFERGATE_UPSTREAM_INT_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "upstream.h"

struct h1_pool;
struct resolver;
struct upstream_curl;

enum upstream_kind { UPSTREAM_KIND_CURL = 0, UPSTREAM_KIND_H1 };

#define UPSTREAM_RH_LENS 16     /* response fields whose lengths are kept */

struct upstream {
    struct event_base    *base;
    size_t                active;   /* transfers started and not yet freed */
    struct upstream_curl *curl;     /* proxies from the environment, SMTP */
    struct h1_pool       *h1;       /* http(s)://; NULL: all via curl */
    struct resolver      *dns;      /* host names for h1 (resolve.h); NULL: via curl */
    int                   names_curl;  /* server.resolver: libc: names via curl */
};

struct upstream_xfer {
    struct upstream           *u;
    const struct upstream_cbs *cbs;
    void                      *arg;
    unsigned char              kind;       /* enum upstream_kind */
    unsigned char              head_done;  /* final head seen */
    unsigned char              cancelled;  /* owner is gone: no more callbacks */
    unsigned char              aborted;    /* a callback said UPSTREAM_ABORT */
    unsigned char              paused;
    unsigned char              ending;     /* in on_data: the end is in hand, on_done follows */
    char                      *rh;         /* response head, see above (owned) */
    size_t                     rh_len, rh_cap;
    size_t                     nresp;
    uint16_t                   rh_lens[2 * UPSTREAM_RH_LENS]; /* name, value; see above */
};

/* Pair nresp (about to be counted) has a name of nlen bytes and a value of
 * vlen: kept for the walkers (a length that does not fit is measured). */
static inline void upstream_rh_note(struct upstream_xfer *x, size_t nlen, size_t vlen)
{
    if (x->nresp < UPSTREAM_RH_LENS) {
        x->rh_lens[2 * x->nresp] = nlen < UINT16_MAX ? (uint16_t)nlen : UINT16_MAX;
        x->rh_lens[2 * x->nresp + 1] = vlen < UINT16_MAX ? (uint16_t)vlen : UINT16_MAX;
    }
}

/* The length of string j of the pairs (2i: pair i's name, 2i + 1: its
 * value), which starts at s. */
static inline size_t upstream_rh_strlen(const struct upstream_xfer *x, size_t j, const char *s)
{
    if (j < 2 * UPSTREAM_RH_LENS && x->rh_lens[j] != UINT16_MAX)
        return x->rh_lens[j];
    return strlen(s);
}

/* Fills the common part of a new transfer (the rest zeroed by calloc). */
static inline void upstream_xfer_init(struct upstream_xfer *x, struct upstream *u,
                                      const struct upstream_cbs *cbs, void *arg,
                                      enum upstream_kind kind)
{
    x->u = u;
    x->cbs = cbs;
    x->arg = arg;
    x->kind = (unsigned char)kind;
}

/* Appends one response header to x->rh; -1 when out of memory. */
int upstream_rh_add(struct upstream_xfer *x, const char *name, size_t nlen,
                    const char *value, size_t vlen);

/* Forgets the head kept so far (a 1xx, or the transfer ends). Here rather
 * than in upstream.c so that upstream_h1.c never calls up into the facade. */
static inline void upstream_rh_clear(struct upstream_xfer *x)
{
    free(x->rh);
    x->rh = NULL;
    x->rh_len = x->rh_cap = 0;
    x->nresp = 0;
}

/* 1 when one of the NULL-terminated environment variables vars is set
 * and not empty: a proxy curl would use (upstream.c, upstream_h1.c). */
static inline int upstream_env_set(const char *const *vars)
{
    for (; *vars; vars++) {
        const char *v = getenv(*vars);
        if (v && *v)
            return 1;
    }
    return 0;
}

/* upstream_h1.c */
struct h1_pool *h1_pool_new(struct event_base *base);
void h1_pool_free(struct h1_pool *p);
/* NULL with *mine = 0 when the URL is not one for this client (then the
 * caller uses curl); NULL with *mine = 1 when it is but cannot start. */
struct upstream_xfer *h1_start(struct upstream *u, const struct upstream_req *req,
                               const struct upstream_cbs *cbs, void *arg,
                               int *mine);
void h1_pause(struct upstream_xfer *x);
void h1_resume(struct upstream_xfer *x);
void h1_cancel(struct upstream_xfer *x);
size_t h1_idle_count(const struct h1_pool *p);

#endif
