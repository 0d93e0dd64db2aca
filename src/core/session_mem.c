/*
 * session_mem.c -- the memory session store (see session_mem.h): pure, no
 * I/O; time and the hash seed come from the caller.
 *
 * Each entry is one allocation (header, key, value) on three structures
 * at once:
 *   - a chained hash table keyed by (kind, key), SipHash-2-4 with the
 *     caller's random seed (keys come from clients: no chosen-collision
 *     slowdowns). It grows by doubling with incremental rehashing,
 *     Redis-dict style: each operation moves at most MEM_REHASH_BUCKETS
 *     buckets, so no single operation pays for a whole rehash;
 *   - the LRU list (put and hit move to the front; eviction takes the
 *     back when max_entries is reached);
 *   - the age list, in put order. With one ttl for all entries that is
 *     expiry order, so each operation reclaims up to MEM_SWEEP expired
 *     entries from its back: memory follows the live set, not only
 *     max_entries. (After a reload that changes the ttl the order is
 *     approximate; stragglers expire when looked up or evicted.)
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "session_mem.h"

#define MEM_MIN_BUCKETS     64      /* power of two */
#define MEM_REHASH_BUCKETS  4       /* non-empty buckets moved per operation */
#define MEM_REHASH_EMPTY    40      /* empty buckets skipped per operation */
#define MEM_SWEEP           4       /* expired entries reclaimed per operation */
#define MEM_NOT_REHASHING   ((size_t)-1)

/* ---- SipHash-2-4 ---------------------------------------------------------- */

#define SIP_V0 0x736f6d6570736575ULL
#define SIP_V1 0x646f72616e646f6dULL
#define SIP_V2 0x6c7967656e657261ULL
#define SIP_V3 0x7465646279746573ULL
#define SIP_FINAL 0xffU

static uint64_t rotl64(uint64_t x, int b)
{
    return (x << b) | (x >> (64 - b));
}

/* On four locals (kept in registers), not on an array behind a pointer. */
#define SIP_ROUND(v0, v1, v2, v3) do {                                         \
        v0 += v1; v1 = rotl64(v1, 13); v1 ^= v0; v0 = rotl64(v0, 32);         \
        v2 += v3; v3 = rotl64(v3, 16); v3 ^= v2;                               \
        v0 += v3; v3 = rotl64(v3, 21); v3 ^= v0;                               \
        v2 += v1; v1 = rotl64(v1, 17); v1 ^= v2; v2 = rotl64(v2, 32);         \
    } while (0)

static uint64_t load_le64(const unsigned char *p)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    uint64_t x;

    memcpy(&x, p, 8);                   /* one unaligned load */
    return x;
#else
    uint64_t x = 0;
    int i;

    for (i = 7; i >= 0; i--)
        x = (x << 8) | p[i];
    return x;
#endif
}

static uint64_t siphash(const void *data, size_t len, uint64_t k0, uint64_t k1)
{
    const unsigned char *in = data;
    uint64_t v0 = SIP_V0 ^ k0, v1 = SIP_V1 ^ k1, v2 = SIP_V2 ^ k0, v3 = SIP_V3 ^ k1;
    uint64_t m, last = (uint64_t)len << 56;
    size_t i, end = len - len % 8;

    for (i = 0; i < end; i += 8) {
        m = load_le64(in + i);
        v3 ^= m;
        SIP_ROUND(v0, v1, v2, v3);
        SIP_ROUND(v0, v1, v2, v3);
        v0 ^= m;
    }
    for (i = 0; i < len % 8; i++)
        last |= (uint64_t)in[end + i] << (8 * i);
    v3 ^= last;
    SIP_ROUND(v0, v1, v2, v3);
    SIP_ROUND(v0, v1, v2, v3);
    v0 ^= last;
    v2 ^= SIP_FINAL;
    SIP_ROUND(v0, v1, v2, v3);
    SIP_ROUND(v0, v1, v2, v3);
    SIP_ROUND(v0, v1, v2, v3);
    SIP_ROUND(v0, v1, v2, v3);
    return v0 ^ v1 ^ v2 ^ v3;
}

/* ---- the store -------------------------------------------------------------- */

struct mem_node {
    struct mem_node *prev, *next;
};

struct mem_entry {
    struct mem_entry *chain;        /* hash bucket */
    struct mem_node   lru;          /* most recently used at session_mem.lru.next */
    struct mem_node   age;          /* most recently put at session_mem.age.next */
    uint64_t          hash;
    int64_t           expires_ms;
    uint16_t          klen;
    uint16_t          hlen;
    uint8_t           kind;
    uint8_t           slotted;      /* from a slab, not malloc */
    char              data[];       /* key, NUL, host, NUL */
};

/*
 * Entries that fit MEM_SLOT bytes (nearly all: ids and host names are
 * short) come from slabs kept for the store's life and go back to a free
 * list: a full store evicts one entry per new one, and doing that through
 * malloc fragmented the heap of the whole process (malloc was the hottest
 * code of a proxied request).
 */
#define MEM_SLOT        192
#define MEM_SLAB_SLOTS  340         /* ~64 KB per slab */

struct mem_slab {
    struct mem_slab *next;
    char             slots[MEM_SLAB_SLOTS][MEM_SLOT];
};

struct mem_table {
    struct mem_entry **b;
    size_t             size;        /* 0 or a power of two */
    size_t             used;
};

struct session_mem {
    struct mem_table t[2];          /* t[1] only while rehashing */
    size_t           rehash;        /* next t[0] bucket to move */
    struct mem_node  lru, age;      /* list heads */
    size_t           count;
    size_t           max_entries;
    int64_t          ttl_ms;
    size_t           value_max;     /* longest value stored */
    uint64_t         k0, k1;        /* hash seed */
    struct session_mem_stats st;    /* counters; entries/buckets filled on read */
    struct mem_slab *slabs;
    void            *free_slots;    /* each links the next through its start */
};

static struct mem_entry *entry_alloc(struct session_mem *m, size_t size)
{
    struct mem_entry *e;

    if (size > MEM_SLOT) {
        if ((e = malloc(size)) != NULL)
            e->slotted = 0;
        return e;
    }
    if (m->free_slots == NULL) {
        struct mem_slab *sl = malloc(sizeof(*sl));
        size_t i;
        if (sl == NULL)
            return NULL;
        sl->next = m->slabs;
        m->slabs = sl;
        for (i = 0; i < MEM_SLAB_SLOTS; i++) {
            *(void **)sl->slots[i] = m->free_slots;
            m->free_slots = sl->slots[i];
        }
    }
    e = m->free_slots;
    m->free_slots = *(void **)m->free_slots;
    e->slotted = 1;
    return e;
}

static void entry_free(struct session_mem *m, struct mem_entry *e)
{
    if (!e->slotted) {
        free(e);
        return;
    }
    *(void **)e = m->free_slots;
    m->free_slots = e;
}

static void node_init(struct mem_node *n)
{
    n->prev = n->next = n;
}

static void node_unlink(struct mem_node *n)
{
    n->prev->next = n->next;
    n->next->prev = n->prev;
    n->prev = n->next = n;
}

static void node_push_front(struct mem_node *head, struct mem_node *n)
{
    n->next = head->next;
    n->prev = head;
    head->next->prev = n;
    head->next = n;
}

static struct mem_entry *entry_of_lru(struct mem_node *n)
{
    return (struct mem_entry *)(void *)((char *)n - offsetof(struct mem_entry, lru));
}

static struct mem_entry *entry_of_age(struct mem_node *n)
{
    return (struct mem_entry *)(void *)((char *)n - offsetof(struct mem_entry, age));
}

static const char *entry_host(const struct mem_entry *e)
{
    return e->data + e->klen + 1;
}

static uint64_t mem_hash(const struct session_mem *m, enum session_kind kind,
                         const char *key, size_t klen)
{
    return siphash(key, klen, m->k0 + (uint64_t)kind, m->k1);
}

static int mem_rehashing(const struct session_mem *m)
{
    return m->rehash != MEM_NOT_REHASHING;
}

/* Moves a few buckets of t[0] to t[1]; finishes the rehash when t[0] is empty. */
static void mem_rehash_step(struct session_mem *m)
{
    struct mem_table *from = &m->t[0], *to = &m->t[1];
    struct mem_entry *e, *next;
    size_t busy = 0, empty = 0, moved = 0, i;

    if (!mem_rehashing(m))
        return;
    while (busy < MEM_REHASH_BUCKETS && m->rehash < from->size) {
        e = from->b[m->rehash];
        if (e == NULL) {
            m->rehash++;
            if (++empty >= MEM_REHASH_EMPTY)
                break;
            continue;
        }
        for (; e != NULL; e = next) {
            next = e->chain;
            i = e->hash & (to->size - 1);
            e->chain = to->b[i];
            to->b[i] = e;
            from->used--;
            to->used++;
            moved++;
        }
        from->b[m->rehash++] = NULL;
        busy++;
    }
    if (moved > m->st.max_step_moves)
        m->st.max_step_moves = moved;
    if (m->rehash < from->size)
        return;
    free(from->b);
    m->t[0] = m->t[1];
    memset(&m->t[1], 0, sizeof(m->t[1]));
    m->rehash = MEM_NOT_REHASHING;
}

/* Starts doubling when the load factor reaches 1. On allocation failure
 * the table stays as it is: chains get longer, nothing breaks. */
static void mem_maybe_grow(struct session_mem *m)
{
    struct mem_entry **b;
    size_t size = m->t[0].size * 2;

    if (mem_rehashing(m) || m->t[0].used < m->t[0].size)
        return;
    b = calloc(size, sizeof(*b));
    if (b == NULL)
        return;
    m->t[1].b = b;
    m->t[1].size = size;
    m->t[1].used = 0;
    m->rehash = 0;
}

/* The link that points at the entry for (kind, key), or NULL. */
static struct mem_entry **mem_find(struct session_mem *m, enum session_kind kind,
                                   const char *key, size_t klen, uint64_t hash)
{
    struct mem_entry **pp, *e;
    size_t i, t;

    m->st.lookups++;
    for (t = 0; t < 2; t++) {
        if (m->t[t].size == 0)
            continue;
        i = hash & (m->t[t].size - 1);
        if (t == 0 && mem_rehashing(m) && i < m->rehash)
            continue;           /* that bucket has moved to t[1] */
        for (pp = &m->t[t].b[i]; (e = *pp) != NULL; pp = &e->chain) {
            m->st.probes++;
            if (e->hash == hash && e->kind == kind && e->klen == klen
                && memcmp(e->data, key, klen) == 0)
                return pp;
        }
    }
    return NULL;
}

static void mem_remove(struct session_mem *m, struct mem_entry *e)
{
    struct mem_entry **pp;
    size_t t;

    for (t = 0; t < 2; t++) {
        if (m->t[t].size == 0)
            continue;
        for (pp = &m->t[t].b[e->hash & (m->t[t].size - 1)]; *pp; pp = &(*pp)->chain) {
            if (*pp == e) {
                *pp = e->chain;
                m->t[t].used--;
                goto unlinked;
            }
        }
    }
unlinked:
    node_unlink(&e->lru);
    node_unlink(&e->age);
    m->count--;
    entry_free(m, e);
}

/* Reclaims a few expired entries from the oldest end of the age list. */
static void mem_sweep(struct session_mem *m, int64_t now_ms)
{
    struct mem_entry *e;
    int i;

    for (i = 0; i < MEM_SWEEP && m->age.prev != &m->age; i++) {
        e = entry_of_age(m->age.prev);
        if (e->expires_ms > now_ms)
            return;
        mem_remove(m, e);
        m->st.expirations++;
    }
}

static void mem_evict_lru(struct session_mem *m)
{
    if (m->lru.prev == &m->lru)
        return;
    mem_remove(m, entry_of_lru(m->lru.prev));
    m->st.evictions++;
}

struct session_mem *session_mem_new(size_t max_entries, int64_t ttl_ms, uint64_t k0,
                                    uint64_t k1)
{
    struct session_mem *m = calloc(1, sizeof(*m));

    if (m == NULL)
        return NULL;
    m->t[0].b = calloc(MEM_MIN_BUCKETS, sizeof(*m->t[0].b));
    if (m->t[0].b == NULL) {
        free(m);
        return NULL;
    }
    m->t[0].size = MEM_MIN_BUCKETS;
    m->rehash = MEM_NOT_REHASHING;
    node_init(&m->lru);
    node_init(&m->age);
    m->max_entries = max_entries ? max_entries : 1;
    m->ttl_ms = ttl_ms > 0 ? ttl_ms : 1;
    m->value_max = SESSION_HOST_MAX;
    m->k0 = k0;
    m->k1 = k1;
    return m;
}

void session_mem_free(struct session_mem *m)
{
    struct mem_node *n, *next;

    if (m == NULL)
        return;
    for (n = m->lru.next; n != &m->lru; n = next) {
        next = n->next;
        if (!entry_of_lru(n)->slotted)
            free(entry_of_lru(n));
    }
    while (m->slabs) {
        struct mem_slab *sl = m->slabs;
        m->slabs = sl->next;
        free(sl);
    }
    free(m->t[0].b);
    free(m->t[1].b);
    free(m);
}

void session_mem_configure(struct session_mem *m, size_t max_entries, int64_t ttl_ms)
{
    m->max_entries = max_entries ? max_entries : 1;
    m->ttl_ms = ttl_ms > 0 ? ttl_ms : 1;
    while (m->count > m->max_entries)
        mem_evict_lru(m);
}

void session_mem_set_value_max(struct session_mem *m, size_t value_max)
{
    m->value_max = value_max < SESSION_CONTENT_MAX ? value_max : SESSION_CONTENT_MAX;
}

int session_mem_put(struct session_mem *m, enum session_kind kind,
                    const char *key, const char *host, int64_t now_ms)
{
    size_t klen = strlen(key), hlen = strlen(host);
    struct mem_entry **pp, *e;
    uint64_t hash;

    if ((unsigned)kind >= SESSION_KINDS || klen == 0 || klen > SESSION_KEY_MAX
        || hlen == 0 || hlen > m->value_max)
        return -1;
    mem_rehash_step(m);
    mem_sweep(m, now_ms);
    hash = mem_hash(m, kind, key, klen);
    pp = mem_find(m, kind, key, klen, hash);
    if (pp != NULL) {
        e = *pp;
        if (e->hlen == hlen && memcmp(entry_host(e), host, hlen) == 0) {
            e->expires_ms = now_ms + m->ttl_ms;
            node_unlink(&e->lru);
            node_push_front(&m->lru, &e->lru);
            node_unlink(&e->age);
            node_push_front(&m->age, &e->age);
            return 0;
        }
        mem_remove(m, e);       /* another host: replace the entry */
    }
    while (m->count >= m->max_entries)
        mem_evict_lru(m);
    e = entry_alloc(m, sizeof(*e) + klen + 1 + hlen + 1);
    if (e == NULL)
        return -1;
    e->hash = hash;
    e->expires_ms = now_ms + m->ttl_ms;
    e->klen = (uint16_t)klen;
    e->hlen = (uint16_t)hlen;
    e->kind = (uint8_t)kind;
    memcpy(e->data, key, klen + 1);
    memcpy(e->data + klen + 1, host, hlen + 1);
    mem_maybe_grow(m);
    {
        struct mem_table *t = &m->t[mem_rehashing(m) ? 1 : 0];
        size_t i = hash & (t->size - 1);

        e->chain = t->b[i];
        t->b[i] = e;
        t->used++;
    }
    node_push_front(&m->lru, &e->lru);
    node_push_front(&m->age, &e->age);
    m->count++;
    return 0;
}

const char *session_mem_get(struct session_mem *m, enum session_kind kind,
                            const char *key, int64_t now_ms)
{
    size_t klen = strlen(key);
    struct mem_entry **pp, *e;

    if ((unsigned)kind >= SESSION_KINDS || klen == 0 || klen > SESSION_KEY_MAX)
        return NULL;
    mem_rehash_step(m);
    mem_sweep(m, now_ms);
    pp = mem_find(m, kind, key, klen, mem_hash(m, kind, key, klen));
    if (pp == NULL)
        return NULL;
    e = *pp;
    if (e->expires_ms <= now_ms) {
        mem_remove(m, e);
        m->st.expirations++;
        return NULL;
    }
    node_unlink(&e->lru);
    node_push_front(&m->lru, &e->lru);
    return entry_host(e);
}

void session_mem_stats(const struct session_mem *m, struct session_mem_stats *out)
{
    *out = m->st;
    out->entries = m->count;
    out->buckets = m->t[0].size + m->t[1].size;
}
