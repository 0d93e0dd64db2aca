/*
 * session.c -- the session store's interface and its memory backend (see
 * session.h); the Redis side is session_redis.c.
 *
 * Memory store: each entry is one allocation (header, key, host) on three
 * structures at once:
 *   - a chained hash table keyed by (kind, key), SipHash-2-4 with a random
 *     seed (keys come from clients: no chosen-collision slowdowns). It
 *     grows by doubling with incremental rehashing, Redis-dict style: each
 *     operation moves at most MEM_REHASH_BUCKETS buckets, so no single
 *     operation pays for a whole rehash;
 *   - the LRU list (put and hit move to the front; eviction takes the
 *     back when max_entries is reached);
 *   - the age list, in put order. With one ttl for all entries that is
 *     expiry order, so each operation reclaims up to MEM_SWEEP expired
 *     entries from its back: memory follows the live set, not only
 *     max_entries. (After a reload that changes the ttl the order is
 *     approximate; stragglers expire when looked up or evicted.)
 *
 * The session front answers lookups from memory, or asks session_redis.c
 * and completes the lookup when it answers (session_get_done()).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/random.h>

#include "lock.h"
#include "log.h"
#include "session.h"

#define MEM_MIN_BUCKETS     64      /* power of two */
#define MEM_REHASH_BUCKETS  4       /* non-empty buckets moved per operation */
#define MEM_REHASH_EMPTY    40      /* empty buckets skipped per operation */
#define MEM_SWEEP           4       /* expired entries reclaimed per operation */
#define MEM_NOT_REHASHING   ((size_t)-1)

#define REPLICA_HOST_MAX    48      /* hostname part of a replica id */

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

static void sip_round(uint64_t v[4])
{
    v[0] += v[1]; v[1] = rotl64(v[1], 13); v[1] ^= v[0]; v[0] = rotl64(v[0], 32);
    v[2] += v[3]; v[3] = rotl64(v[3], 16); v[3] ^= v[2];
    v[0] += v[3]; v[3] = rotl64(v[3], 21); v[3] ^= v[0];
    v[2] += v[1]; v[1] = rotl64(v[1], 17); v[1] ^= v[2]; v[2] = rotl64(v[2], 32);
}

static uint64_t load_le64(const unsigned char *p)
{
    uint64_t x = 0;
    int i;

    for (i = 7; i >= 0; i--)
        x = (x << 8) | p[i];
    return x;
}

static uint64_t siphash(const void *data, size_t len, uint64_t k0, uint64_t k1)
{
    const unsigned char *in = data;
    uint64_t v[4] = { SIP_V0 ^ k0, SIP_V1 ^ k1, SIP_V2 ^ k0, SIP_V3 ^ k1 };
    uint64_t m, last = (uint64_t)len << 56;
    size_t i, end = len - len % 8;

    for (i = 0; i < end; i += 8) {
        m = load_le64(in + i);
        v[3] ^= m;
        sip_round(v);
        sip_round(v);
        v[0] ^= m;
    }
    for (i = 0; i < len % 8; i++)
        last |= (uint64_t)in[end + i] << (8 * i);
    v[3] ^= last;
    sip_round(v);
    sip_round(v);
    v[0] ^= last;
    v[2] ^= SIP_FINAL;
    for (i = 0; i < 4; i++)
        sip_round(v);
    return v[0] ^ v[1] ^ v[2] ^ v[3];
}

/* Seed material; getrandom() without blocking, else clock and address. */
static void random_bytes(void *buf, size_t len)
{
    struct timespec ts;
    uint64_t x;
    unsigned char *p = buf;
    size_t i;

    if (getrandom(buf, len, GRND_NONBLOCK) == (ssize_t)len)
        return;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    x = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 32) ^ (uint64_t)(uintptr_t)buf
        ^ ((uint64_t)getpid() << 16);
    for (i = 0; i < len; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;      /* xorshift64 */
        p[i] = (unsigned char)x;
    }
}

/* ---- memory store ---------------------------------------------------------- */

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

struct session_mem *session_mem_new(size_t max_entries, int64_t ttl_ms)
{
    struct session_mem *m = calloc(1, sizeof(*m));
    uint64_t seed[2];

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
    random_bytes(seed, sizeof(seed));
    m->k0 = seed[0];
    m->k1 = seed[1];
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

/* ---- response ids ---------------------------------------------------------- */

enum scan_rc { SCAN_OK = 0, SCAN_MORE, SCAN_BAD };

struct scan {
    const char *p, *end;
};

static int is_blank(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static void scan_ws(struct scan *s)
{
    while (s->p < s->end && is_blank(*s->p))
        s->p++;
}

/* s->p is at a '"'; leaves it after the closing one. The body is
 * [*str, *str + *len), raw; *esc says whether it holds a backslash. */
static enum scan_rc scan_string(struct scan *s, const char **str, size_t *len, int *esc)
{
    const char *q = s->p + 1;

    *esc = 0;
    while (q < s->end) {
        if (*q == '\\') {
            *esc = 1;
            q += 2;
            continue;
        }
        if (*q == '"') {
            *str = s->p + 1;
            *len = (size_t)(q - *str);
            s->p = q + 1;
            return SCAN_OK;
        }
        if ((unsigned char)*q < 0x20)
            return SCAN_BAD;
        q++;
    }
    return SCAN_MORE;
}

/* Skips one value of any type (nested ones by counting brackets, strings
 * aware); leaves s->p on what follows it. Lenient: it finds the end, it
 * does not validate. */
static enum scan_rc scan_skip_value(struct scan *s)
{
    const char *str;
    size_t len;
    int esc, depth = 0;
    enum scan_rc rc;
    char c;

    while (s->p < s->end) {
        c = *s->p;
        if (c == '"') {
            rc = scan_string(s, &str, &len, &esc);
            if (rc != SCAN_OK)
                return rc;
            if (depth == 0)
                return SCAN_OK;
            continue;
        }
        if (c == '{' || c == '[') {
            depth++;
        } else if (c == '}' || c == ']') {
            if (depth == 0)
                return SCAN_OK;         /* a scalar ended by its container */
            if (--depth == 0) {
                s->p++;
                return SCAN_OK;
            }
        } else if (depth == 0 && (c == ',' || is_blank(c))) {
            return SCAN_OK;             /* a scalar ended */
        }
        s->p++;
    }
    return SCAN_MORE;
}

/* The top-level "id" string of the JSON object in [p, end). */
static enum session_id_result json_id(const char *p, const char *end, char *out, size_t outlen)
{
    struct scan s = { p, end };
    const char *k, *v;
    size_t klen, vlen;
    int esc;
    enum scan_rc rc;

    scan_ws(&s);
    if (s.p >= s.end)
        return SESSION_ID_MORE;
    if (*s.p != '{')
        return SESSION_ID_NONE;
    s.p++;
    for (;;) {
        scan_ws(&s);
        if (s.p >= s.end)
            return SESSION_ID_MORE;
        if (*s.p != '"')
            return SESSION_ID_NONE;     /* '}' (no id) or not JSON */
        rc = scan_string(&s, &k, &klen, &esc);
        if (rc != SCAN_OK)
            return rc == SCAN_MORE ? SESSION_ID_MORE : SESSION_ID_NONE;
        scan_ws(&s);
        if (s.p >= s.end)
            return SESSION_ID_MORE;
        if (*s.p++ != ':')
            return SESSION_ID_NONE;
        scan_ws(&s);
        if (s.p >= s.end)
            return SESSION_ID_MORE;
        if (!esc && klen == 2 && memcmp(k, "id", 2) == 0) {
            if (*s.p != '"')
                return SESSION_ID_NONE;
            rc = scan_string(&s, &v, &vlen, &esc);
            if (rc != SCAN_OK)
                return rc == SCAN_MORE ? SESSION_ID_MORE : SESSION_ID_NONE;
            if (esc || vlen == 0 || vlen >= outlen)
                return SESSION_ID_NONE;
            memcpy(out, v, vlen);
            out[vlen] = '\0';
            return SESSION_ID_FOUND;
        }
        rc = scan_skip_value(&s);
        if (rc != SCAN_OK)
            return rc == SCAN_MORE ? SESSION_ID_MORE : SESSION_ID_NONE;
        scan_ws(&s);
        if (s.p >= s.end)
            return SESSION_ID_MORE;
        if (*s.p++ != ',')
            return SESSION_ID_NONE;
    }
}

#define SSE_DATA     "data:"
#define SSE_DATA_LEN (sizeof(SSE_DATA) - 1)

/* The id in the JSON of the first `data:` line of an event stream. */
static enum session_id_result sse_id(const char *p, const char *end, char *out, size_t outlen)
{
    const char *eol, *v;
    enum session_id_result r;

    while (p < end) {
        for (eol = p; eol < end && *eol != '\n' && *eol != '\r'; eol++)
            ;
        if ((size_t)(eol - p) >= SSE_DATA_LEN && memcmp(p, SSE_DATA, SSE_DATA_LEN) == 0) {
            v = p + SSE_DATA_LEN;
            if (v < eol && *v == ' ')
                v++;
            r = json_id(v, eol, out, outlen);
            if (r == SESSION_ID_MORE && eol < end)
                return SESSION_ID_NONE; /* a whole line and no id in it */
            return r;
        }
        if (eol >= end)
            return SESSION_ID_MORE;     /* a line not finished yet */
        p = eol + 1;                    /* event:, id:, comments, blank lines */
    }
    return SESSION_ID_MORE;
}

enum session_id_result session_extract_id(const char *buf, size_t len,
                                          char *out, size_t outlen)
{
    const char *p = buf, *end = buf + len;

    if (outlen == 0)
        return SESSION_ID_NONE;
    while (p < end && is_blank(*p))
        p++;
    if (p >= end)
        return SESSION_ID_MORE;
    if (*p == '{')
        return json_id(p, end, out, outlen);
    if (*p == ':' || (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z'))
        return sse_id(p, end, out, outlen);     /* a comment or a field name */
    return SESSION_ID_NONE;                     /* arrays, scalars, binary */
}

/* ---- the session ------------------------------------------------------------ */

struct session {
    struct event_base      *base;
    enum cfg_session_store  store;
    int64_t                 ttl_ms;
    size_t                  max_entries;
    struct session_mem     *mem;
    struct session_mem     *content;    /* SESSION_CONTENT (keep_content) */
    int64_t                 content_ttl_ms;
    struct session_redis   *redis;      /* NULL with the memory store */
    struct session_identity self;
    session_shared_cb       shared_cb;
    void                   *shared_arg;
    struct session_metrics  m;          /* the counters kept here */
};

struct session_call {
    struct session   *s;
    session_get_cb    cb;               /* NULL once cancelled */
    void             *arg;
    enum session_kind kind;
    int64_t           now_ms;
    char              key[];
};

static void replica_id_make(char *out, size_t len)
{
    char host[REPLICA_HOST_MAX + 1];
    uint32_t rnd;

    if (gethostname(host, sizeof(host)) != 0)
        snprintf(host, sizeof(host), "infergate");
    host[REPLICA_HOST_MAX] = '\0';
    random_bytes(&rnd, sizeof(rnd));
    snprintf(out, len, "%s-%ld-%08x", host, (long)getpid(), (unsigned)rnd);
}

static int64_t unix_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Creates, replaces or drops the Redis side to match cfg. */
static void session_get_done(struct session_call *c, enum session_redis_answer a,
                             const char *host);
static void session_shared_received(void *arg, const struct session_shared *ev);

static int apply_redis(struct session *s, const struct config *cfg, char *err, size_t errlen)
{
    struct session_redis_cbs cbs;
    struct session_redis *r;

    if (cfg->sessions.store != STORE_REDIS) {
        session_redis_free(s->redis);
        s->redis = NULL;
        return 0;
    }
    if (s->redis != NULL && session_redis_same(s->redis, cfg)) {
        session_redis_set_timeout(s->redis, cfg->sessions.redis_timeout_ms);
        return 0;
    }
    cbs.get_done = session_get_done;
    cbs.shared_received = session_shared_received;
    cbs.arg = s;
    r = session_redis_new(&cbs, s->base, cfg, &s->self, err, errlen);
    if (r == NULL)
        return -1;
    session_redis_free(s->redis);
    s->redis = r;
    return 0;
}

struct session *session_new(struct event_base *base, const struct config *cfg,
                            uint64_t generation, const char *replica_addr,
                            char *err, size_t errlen)
{
    struct session *s = calloc(1, sizeof(*s));

    if (s == NULL) {
        snprintf(err, errlen, "sessions: out of memory");
        return NULL;
    }
    s->base = base;
    s->store = cfg->sessions.store;
    s->ttl_ms = cfg->sessions.ttl_ms;
    s->max_entries = (size_t)cfg->sessions.max_entries;
    s->mem = session_mem_new(s->max_entries, s->ttl_ms);
    s->content_ttl_ms = cfg->sessions.content_ttl_ms;
    s->content = session_mem_new((size_t)cfg->sessions.content_max_entries, s->content_ttl_ms);
    if (s->content != NULL)
        session_mem_set_value_max(s->content, (size_t)cfg->sessions.content_max_bytes);
    s->self.address = strdup(replica_addr ? replica_addr : "");
    if (s->mem == NULL || s->content == NULL || s->self.address == NULL) {
        snprintf(err, errlen, "sessions: out of memory");
        session_free(s);
        return NULL;
    }
    replica_id_make(s->self.id, sizeof(s->self.id));
    s->self.started_unix_ms = unix_now_ms();
    s->self.generation = generation;
    if (apply_redis(s, cfg, err, errlen) != 0) {
        session_free(s);
        return NULL;
    }
    return s;
}

int session_reconfigure(struct session *s, const struct config *cfg,
                        uint64_t generation, char *err, size_t errlen)
{
    if (apply_redis(s, cfg, err, errlen) != 0)
        return -1;
    s->store = cfg->sessions.store;
    s->ttl_ms = cfg->sessions.ttl_ms;
    s->max_entries = (size_t)cfg->sessions.max_entries;
    session_mem_configure(s->mem, s->max_entries, s->ttl_ms);
    s->content_ttl_ms = cfg->sessions.content_ttl_ms;
    session_mem_configure(s->content, (size_t)cfg->sessions.content_max_entries,
                          s->content_ttl_ms);
    session_mem_set_value_max(s->content, (size_t)cfg->sessions.content_max_bytes);
    s->self.generation = generation;
    return 0;
}

void session_free(struct session *s)
{
    if (s == NULL)
        return;
    session_redis_free(s->redis);       /* answers pending lookups from memory */
    s->redis = NULL;
    session_mem_free(s->mem);
    session_mem_free(s->content);
    free(s->self.address);
    free(s);
}

/* Kept contents live in their own store: their own ttl, size and bound. */
static struct session_mem *store_of(struct session *s, enum session_kind kind)
{
    return kind == SESSION_CONTENT ? s->content : s->mem;
}

int session_put(struct session *s, enum session_kind kind, const char *key,
                const char *host, int64_t now_ms)
{
    lock_assert_held();
    if (session_mem_put(store_of(s, kind), kind, key, host, now_ms) != 0)
        return -1;
    s->m.puts++;
    if (s->redis == NULL)
        return 0;
    if (session_redis_put(s->redis, kind, key, host,
                          kind == SESSION_CONTENT ? s->content_ttl_ms : s->ttl_ms) != 0)
        s->m.fallbacks++;
    return 0;
}

/* Looks key up in memory and answers with a copy of the host. */
static void answer_from_memory(struct session *s, enum session_kind kind, const char *key,
                               int64_t now_ms, session_get_cb cb, void *arg)
{
    char host[SESSION_CONTENT_MAX + 1];
    const char *h = session_mem_get(store_of(s, kind), kind, key, now_ms);

    if (h != NULL) {
        snprintf(host, sizeof(host), "%s", h);
        s->m.hits++;
        cb(arg, host);
        return;
    }
    s->m.misses++;
    cb(arg, NULL);
}

struct session_call *session_get(struct session *s, enum session_kind kind,
                                 const char *key, int64_t now_ms,
                                 session_get_cb cb, void *arg)
{
    size_t klen = strlen(key);
    struct session_call *c;

    lock_assert_held();
    if (s->redis != NULL && klen > 0 && klen <= SESSION_KEY_MAX) {
        if (session_redis_up(s->redis)) {
            c = malloc(sizeof(*c) + klen + 1);
            if (c != NULL) {
                c->s = s;
                c->cb = cb;
                c->arg = arg;
                c->kind = kind;
                c->now_ms = now_ms;
                memcpy(c->key, key, klen + 1);
                if (session_redis_get(s->redis, c, kind, key) == 0)
                    return c;
                free(c);
            }
        }
        s->m.fallbacks++;
    }
    answer_from_memory(s, kind, key, now_ms, cb, arg);
    return NULL;
}

int session_put_shared(struct session *s, enum session_kind kind, const char *key,
                       const char *value, int64_t ttl_ms)
{
    lock_assert_held();
    if (s->redis == NULL || !session_redis_up(s->redis) || strlen(key) > SESSION_KEY_MAX)
        return -1;
    return session_redis_put(s->redis, kind, key, value, ttl_ms);
}

struct session_call *session_get_shared(struct session *s, enum session_kind kind,
                                        const char *key, session_get_cb cb, void *arg)
{
    size_t klen = strlen(key);
    struct session_call *c;

    lock_assert_held();
    if (s->redis != NULL && klen > 0 && klen <= SESSION_KEY_MAX && session_redis_up(s->redis)
        && (c = malloc(sizeof(*c) + klen + 1)) != NULL) {
        c->s = s;
        c->cb = cb;
        c->arg = arg;
        c->kind = kind;
        c->now_ms = 0;
        memcpy(c->key, key, klen + 1);
        if (session_redis_get(s->redis, c, kind, key) == 0)
            return c;
        free(c);
    }
    cb(arg, NULL);
    return NULL;
}

struct session_call *session_eval(struct session *s, const char *script,
                                  int nkeys, const char *const *keys,
                                  int nargs, const char *const *args,
                                  session_get_cb cb, void *arg)
{
    struct session_call *c;

    lock_assert_held();
    if (s != NULL && s->redis != NULL && session_redis_up(s->redis)
        && (c = malloc(sizeof(*c) + 1)) != NULL) {
        c->s = s;
        c->cb = cb;
        c->arg = arg;
        c->kind = SESSION_CACHE;        /* Redis's answer as it is */
        c->now_ms = 0;
        c->key[0] = '\0';
        if (session_redis_eval(s->redis, c, script, nkeys, keys, nargs, args) == 0)
            return c;
        free(c);
    }
    cb(arg, NULL);
    return NULL;
}

int session_eval_write(struct session *s, const char *script, int nkeys,
                       const char *const *keys, int nargs, const char *const *args)
{
    lock_assert_held();
    if (s == NULL || s->redis == NULL || !session_redis_up(s->redis))
        return -1;
    return session_redis_eval(s->redis, NULL, script, nkeys, keys, nargs, args);
}

int session_shared_up(const struct session *s)
{
    return s != NULL && s->redis != NULL && session_redis_up(s->redis);
}

void session_cancel(struct session_call *c)
{
    if (c != NULL)
        c->cb = NULL;
}

static void session_get_done(struct session_call *c, enum session_redis_answer a,
                             const char *host)
{
    struct session *s = c->s;
    char buf[SESSION_CONTENT_MAX + 1];
    const char *h = NULL;
    size_t max = c->kind == SESSION_CONTENT ? SESSION_CONTENT_MAX : SESSION_HOST_MAX;

    if (c->kind == SESSION_CACHE) {     /* Redis only: its answer as it is */
        if (c->cb != NULL)
            c->cb(c->arg, a == SESSION_REDIS_HIT ? host : NULL);
        free(c);
        return;
    }

    if (a == SESSION_REDIS_HIT && host != NULL && host[0] != '\0'
        && strlen(host) <= max) {
        snprintf(buf, sizeof(buf), "%s", host);
        /* Keep a copy: it answers if Redis goes away later. */
        session_mem_put(store_of(s, c->kind), c->kind, c->key, buf, c->now_ms);
        h = buf;
    } else {
        if (a == SESSION_REDIS_FAILED)
            s->m.fallbacks++;
        h = session_mem_get(store_of(s, c->kind), c->kind, c->key, c->now_ms);
        if (h != NULL) {
            snprintf(buf, sizeof(buf), "%s", h);
            h = buf;
        }
    }
    if (h != NULL)
        s->m.hits++;
    else
        s->m.misses++;
    if (c->cb != NULL)
        c->cb(c->arg, h);
    free(c);
}

/* ---- shared state ------------------------------------------------------------ */

static void publish(struct session *s, enum session_shared_type type, const char *name,
                    int64_t until_unix_ms)
{
    struct session_shared ev;

    if (name == NULL || name[0] == '\0' || strlen(name) > SESSION_KEY_MAX) {
        s->m.shared_dropped++;
        return;
    }
    if (until_unix_ms <= unix_now_ms()) {
        if (type != SESSION_KEY_DISABLED) {
            s->m.shared_dropped++;
            return;
        }
        until_unix_ms = unix_now_ms() + SESSION_DISABLED_SHARE_MS;
    }
    ev.type = type;
    ev.name = name;
    ev.until_unix_ms = until_unix_ms;
    ev.replica = s->self.id;
    if (s->redis == NULL || session_redis_publish(s->redis, &ev) != 0) {
        s->m.shared_dropped++;
        return;
    }
    s->m.shared_published++;
}

void session_publish_key(struct session *s, const char *key_id, int disabled,
                         int64_t until_unix_ms)
{
    lock_assert_held();
    publish(s, disabled ? SESSION_KEY_DISABLED : SESSION_KEY_COOLING, key_id, until_unix_ms);
}

void session_publish_breaker(struct session *s, const char *host, int64_t open_until_unix_ms)
{
    lock_assert_held();
    publish(s, SESSION_BREAKER_OPEN, host, open_until_unix_ms);
}

void session_on_shared(struct session *s, session_shared_cb cb, void *arg)
{
    s->shared_cb = cb;
    s->shared_arg = arg;
}

static void session_shared_received(void *arg, const struct session_shared *ev)
{
    struct session *s = arg;

    s->m.shared_received++;
    if (s->shared_cb != NULL)
        s->shared_cb(s->shared_arg, ev);
}

/* ---- status and metrics -------------------------------------------------------- */

void session_metrics_read(const struct session *s, struct session_metrics *out)
{
    struct session_mem_stats ms;
    struct session_redis_counters rc;

    *out = s->m;
    session_mem_stats(s->mem, &ms);
    out->entries = ms.entries;
    out->evictions = ms.evictions;
    out->expirations = ms.expirations;
    out->replicas = 1;
    if (s->redis == NULL)
        return;
    session_redis_counters(s->redis, &rc);
    out->redis_configured = 1;
    out->redis_up = rc.up;
    out->redis_errors = rc.errors;
    out->redis_timeouts = rc.timeouts;
    out->redis_reconnects = rc.connects;
    out->redis_failovers = rc.failovers;
    out->redis_sentinel = rc.sentinel;
    out->replicas = rc.replicas ? rc.replicas : 1;
}

static const char *store_name(enum cfg_session_store st)
{
    return st == STORE_REDIS ? "redis" : "memory";
}

json_t *session_status_json(const struct session *s)
{
    struct session_metrics m;
    json_t *o;

    session_metrics_read(s, &m);
    o = json_pack("{s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I,"
                  " s:I, s:I, s:I, s:{s:s, s:s, s:I, s:I}}",
                  "store", store_name(s->store),
                  "ttl_ms", (json_int_t)s->ttl_ms,
                  "max_entries", (json_int_t)s->max_entries,
                  "entries", (json_int_t)m.entries,
                  "hits", (json_int_t)m.hits,
                  "misses", (json_int_t)m.misses,
                  "puts", (json_int_t)m.puts,
                  "evictions", (json_int_t)m.evictions,
                  "expirations", (json_int_t)m.expirations,
                  "fallbacks", (json_int_t)m.fallbacks,
                  "shared_published", (json_int_t)m.shared_published,
                  "shared_received", (json_int_t)m.shared_received,
                  "shared_dropped", (json_int_t)m.shared_dropped,
                  "replica", "id", s->self.id, "address", s->self.address,
                  "started_unix_ms", (json_int_t)s->self.started_unix_ms,
                  "generation", (json_int_t)s->self.generation);
    if (o == NULL || s->redis == NULL)
        return o;
    json_object_set_new(o, "redis", session_redis_status_json(s->redis));
    json_object_set_new(o, "replicas", session_redis_replicas_json(s->redis));
    return o;
}

const char *session_replica_id(const struct session *s)
{
    return s->self.id;
}
