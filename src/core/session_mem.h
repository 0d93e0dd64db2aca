/*
 * session_mem.h -- the memory session store: (kind, key) -> value, a hash
 * table with incremental rehashing, an LRU list bounded by max_entries and
 * a ttl counted from the last put. O(1) per operation, worst case, not
 * only amortised. Pure: `now_ms` is the caller's monotonic clock in
 * milliseconds (the same clock for every call), the hash seed is the
 * caller's; no I/O, no locks (the session front, session.c, holds the
 * state lock around it).
 */
#ifndef INFERGATE_SESSION_MEM_H
#define INFERGATE_SESSION_MEM_H

#include <stddef.h>
#include <stdint.h>

enum session_kind {
    SESSION_RID = 0,        /* upstream response id -> host (/v1/verify) */
    SESSION_STICKY,         /* routing.sticky key (header, body user) -> host */
    SESSION_CONTENT,        /* response id -> its answer's text, JSON-encoded
                               (sessions.keep_content; its own store, ttl
                               sessions.content_ttl) */
    SESSION_CACHE,          /* response cache key -> answer (cache.store:
                               redis): Redis only, session_*_shared() */
    SESSION_KINDS
};

#define SESSION_KEY_MAX     512     /* longer keys are neither stored nor found */
#define SESSION_HOST_MAX    255     /* longer host names are not stored */
#define SESSION_CONTENT_MAX 60000   /* most bytes of a kept content (its JSON) */

struct session_mem;

struct session_mem_stats {
    size_t   entries;
    size_t   buckets;        /* of the table(s) in use */
    uint64_t evictions;      /* least recently used, at max_entries */
    uint64_t expirations;    /* past their ttl */
    uint64_t lookups;        /* hash lookups done */
    uint64_t probes;         /* entries compared by those lookups */
    size_t   max_step_moves; /* most entries one operation rehashed */
};

/* max_entries >= 1, ttl_ms >= 1; (k0, k1) the SipHash key, random (the
 * keys come from clients). NULL on allocation failure. */
struct session_mem *session_mem_new(size_t max_entries, int64_t ttl_ms, uint64_t k0,
                                    uint64_t k1);
void session_mem_free(struct session_mem *m);

/* New limits; evicts least recently used entries down to max_entries now.
 * The ttl applies to puts from now on. */
void session_mem_configure(struct session_mem *m, size_t max_entries, int64_t ttl_ms);

/* Longest value stored (SESSION_HOST_MAX unless set; at most
 * SESSION_CONTENT_MAX): the content store holds longer values than hosts. */
void session_mem_set_value_max(struct session_mem *m, size_t value_max);

/* Maps (kind, key) to host until now_ms + ttl, replacing any old mapping;
 * the entry becomes the most recently used. The strings are copied.
 * Returns -1 (nothing stored) for an empty or too long key or host, or on
 * allocation failure. */
int session_mem_put(struct session_mem *m, enum session_kind kind,
                    const char *key, const char *host, int64_t now_ms);

/* The host, or NULL when unknown or expired. A hit becomes the most
 * recently used; it does not extend the ttl. The pointer is valid until
 * the next call that changes m. */
const char *session_mem_get(struct session_mem *m, enum session_kind kind,
                            const char *key, int64_t now_ms);

void session_mem_stats(const struct session_mem *m, struct session_mem_stats *out);

#endif
