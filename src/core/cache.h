/*
 * cache.h -- the exact-match response cache (policies.yaml `cache`).
 *
 * A request's key (cache_key()) is the SHA-256 of the route, the model after
 * alias rewriting, the client's name (per_client) and the body in canonical
 * form (object keys sorted, compact) without `stream`, `stream_options` and
 * `user`. The store maps a key to a complete 2xx answer (status, content
 * type, body) until its ttl, bounded by max_bytes (least recently used
 * entries go first) and max_entry_bytes (larger answers are not stored).
 *
 * Pure: no I/O; `now_ms` is the caller's monotonic clock. Not thread-safe:
 * cache_put, cache_get, cache_count and cache_stats: caller holds the
 * state lock (lock.h; checked by lock_assert_held() in the asan and tsan
 * builds).
 */
#ifndef INFERGATE_CACHE_H
#define INFERGATE_CACHE_H

#include <stddef.h>
#include <stdint.h>

#define CACHE_KEY_LEN 64            /* hex SHA-256, without its NUL */

enum cache_result { CACHE_HIT = 0, CACHE_MISS, CACHE_BYPASS, CACHE_RESULTS };

struct cache;

struct cache_hit {
    int         status;
    const char *ctype;
    const char *body;
    size_t      len;
    int64_t     stored_ms;          /* for Age */
};

struct cache_stats {
    uint64_t requests[CACHE_RESULTS];
    uint64_t stores, evictions, expirations;
    size_t   entries, bytes;
};

/* max_bytes >= 1, ttl_ms >= 1. NULL when out of memory. */
struct cache *cache_new(size_t max_bytes, size_t max_entry_bytes, int64_t ttl_ms);
void cache_free(struct cache *c);

/* Stores a copy, replacing an older answer for key; the entry becomes the
 * most recently used and evicts the least recently used ones over
 * max_bytes. Returns -1 (nothing stored) when larger than max_entry_bytes
 * or out of memory. */
int cache_put(struct cache *c, const char *key, int status, const char *ctype,
              const char *body, size_t len, int64_t now_ms);

/* 1 with out filled (valid until the next call that changes c) when key
 * holds an answer younger than the ttl, else 0. A hit becomes the most
 * recently used. */
int cache_get(struct cache *c, const char *key, int64_t now_ms, struct cache_hit *out);

void cache_count(struct cache *c, enum cache_result r);
void cache_stats(const struct cache *c, struct cache_stats *out);
const char *cache_result_name(enum cache_result r);

/* The key of a request, hex into out[CACHE_KEY_LEN + 1]. client may be NULL.
 * *deterministic: the body sets `temperature` to 0 or has a `seed`.
 * Returns -1 when the body is not a JSON object. */
int cache_key(const char *route, const char *model, const char *client,
              const char *body, size_t len, char *out, int *deterministic);

#endif
