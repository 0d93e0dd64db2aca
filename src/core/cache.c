/*
 * cache.c -- the exact-match response cache (cache.h): a chained hash table
 * of answers, a least-recently-used list bounding their bytes, a ttl
 * checked on lookup.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <openssl/sha.h>

#include "cache.h"
#include "hash.h"
#include "lock.h"

struct centry {
    struct centry *chain;
    struct centry *prev, *next;     /* LRU: most recent at cache.head.next */
    uint64_t       hash;
    int64_t        stored_ms;
    int            status;
    size_t         len, size;       /* body length, bytes charged */
    char          *ctype;
    char          *body;
    char           key[CACHE_KEY_LEN + 1];
};

struct cache {
    struct centry **b;
    size_t          nb;             /* power of two */
    struct centry   head;           /* LRU list head */
    size_t          max_bytes, max_entry_bytes;
    int64_t         ttl_ms;
    struct cache_stats st;
};

struct cache *cache_new(size_t max_bytes, size_t max_entry_bytes, int64_t ttl_ms)
{
    struct cache *c = calloc(1, sizeof(*c));

    if (c == NULL)
        return NULL;
    c->nb = 64;
    if ((c->b = calloc(c->nb, sizeof(*c->b))) == NULL) {
        free(c);
        return NULL;
    }
    c->head.prev = c->head.next = &c->head;
    c->max_bytes = max_bytes ? max_bytes : 1;
    c->max_entry_bytes = max_entry_bytes;
    c->ttl_ms = ttl_ms > 0 ? ttl_ms : 1;
    return c;
}

static void entry_free(struct centry *e)
{
    free(e->ctype);
    free(e->body);
    free(e);
}

void cache_free(struct cache *c)
{
    struct centry *e, *next;

    if (c == NULL)
        return;
    for (e = c->head.next; e != &c->head; e = next) {
        next = e->next;
        entry_free(e);
    }
    free(c->b);
    free(c);
}

static struct centry **find(struct cache *c, const char *key, uint64_t h)
{
    struct centry **pp = &c->b[h & (c->nb - 1)];

    for (; *pp; pp = &(*pp)->chain)
        if ((*pp)->hash == h && strcmp((*pp)->key, key) == 0)
            return pp;
    return NULL;
}

static void lru_unlink(struct centry *e)
{
    e->prev->next = e->next;
    e->next->prev = e->prev;
}

static void lru_front(struct cache *c, struct centry *e)
{
    e->next = c->head.next;
    e->prev = &c->head;
    c->head.next->prev = e;
    c->head.next = e;
}

static void remove_entry(struct cache *c, struct centry *e)
{
    struct centry **pp = find(c, e->key, e->hash);

    if (pp)
        *pp = e->chain;
    lru_unlink(e);
    c->st.entries--;
    c->st.bytes -= e->size;
    entry_free(e);
}

static void grow(struct cache *c)
{
    size_t nb = c->nb * 2, i;
    struct centry **b = calloc(nb, sizeof(*b)), *e, *next;

    if (b == NULL)
        return;                     /* longer chains, still correct */
    for (i = 0; i < c->nb; i++)
        for (e = c->b[i]; e; e = next) {
            next = e->chain;
            e->chain = b[e->hash & (nb - 1)];
            b[e->hash & (nb - 1)] = e;
        }
    free(c->b);
    c->b = b;
    c->nb = nb;
}

int cache_put(struct cache *c, const char *key, int status, const char *ctype,
              const char *body, size_t len, int64_t now_ms)
{
    uint64_t h = hash_str(key);
    struct centry **pp, *e;
    size_t size = sizeof(*e) + len + (ctype ? strlen(ctype) + 1 : 0);

    lock_assert_held();
    if (strlen(key) != CACHE_KEY_LEN || size > c->max_entry_bytes || size > c->max_bytes)
        return -1;
    if ((pp = find(c, key, h)) != NULL)
        remove_entry(c, *pp);
    e = calloc(1, sizeof(*e));
    if (e == NULL || (e->body = malloc(len ? len : 1)) == NULL
        || (ctype && (e->ctype = strdup(ctype)) == NULL)) {
        if (e)
            entry_free(e);
        return -1;
    }
    memcpy(e->body, body, len);
    memcpy(e->key, key, CACHE_KEY_LEN + 1);
    e->hash = h;
    e->stored_ms = now_ms;
    e->status = status;
    e->len = len;
    e->size = size;
    while (c->st.bytes + size > c->max_bytes && c->head.prev != &c->head) {
        remove_entry(c, c->head.prev);
        c->st.evictions++;
    }
    if (c->st.entries >= c->nb)
        grow(c);
    e->chain = c->b[h & (c->nb - 1)];
    c->b[h & (c->nb - 1)] = e;
    lru_front(c, e);
    c->st.entries++;
    c->st.bytes += size;
    c->st.stores++;
    return 0;
}

int cache_get(struct cache *c, const char *key, int64_t now_ms, struct cache_hit *out)
{
    struct centry **pp = find(c, key, hash_str(key)), *e;

    lock_assert_held();
    if (pp == NULL)
        return 0;
    e = *pp;
    if (now_ms - e->stored_ms >= c->ttl_ms) {
        remove_entry(c, e);
        c->st.expirations++;
        return 0;
    }
    lru_unlink(e);
    lru_front(c, e);
    out->status = e->status;
    out->ctype = e->ctype;
    out->body = e->body;
    out->len = e->len;
    out->stored_ms = e->stored_ms;
    return 1;
}

void cache_count(struct cache *c, enum cache_result r)
{
    lock_assert_held();
    if ((unsigned)r < CACHE_RESULTS)
        c->st.requests[r]++;
}

void cache_stats(const struct cache *c, struct cache_stats *out)
{
    lock_assert_held();
    *out = c->st;
}

const char *cache_result_name(enum cache_result r)
{
    static const char *names[] = { "hit", "miss", "bypass" };

    return (unsigned)r < CACHE_RESULTS ? names[r] : "?";
}

int cache_key(const char *route, const char *model, const char *client,
              const char *body, size_t len, char *out, int *deterministic)
{
    json_t *doc = json_loadb(body, len, 0, NULL);
    const char *parts[3] = { route, model ? model : "", client ? client : "" };
    char *canon, *all;
    size_t n = 0, k, cl;
    unsigned char md[SHA256_DIGEST_LENGTH];
    int i;

    if (!json_is_object(doc)) {
        json_decref(doc);
        return -1;
    }
    {
        json_t *t = json_object_get(doc, "temperature");
        json_t *seed = json_object_get(doc, "seed");

        *deterministic = (json_is_number(t) && json_number_value(t) == 0)
                         || (seed != NULL && !json_is_null(seed));
    }
    json_object_del(doc, "stream");
    json_object_del(doc, "stream_options");
    json_object_del(doc, "user");
    canon = json_dumps(doc, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(doc);
    if (canon == NULL)
        return -1;
    cl = strlen(canon);
    for (i = 0; i < 3; i++)
        n += strlen(parts[i]) + 1;
    if ((all = malloc(n + cl)) == NULL) {
        free(canon);
        return -1;
    }
    for (i = 0, n = 0; i < 3; i++) {        /* each part ends with its NUL */
        k = strlen(parts[i]) + 1;
        memcpy(all + n, parts[i], k);
        n += k;
    }
    memcpy(all + n, canon, cl);
    SHA256((const unsigned char *)all, n + cl, md);
    free(all);
    free(canon);
    for (i = 0; i < SHA256_DIGEST_LENGTH; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
    return 0;
}
