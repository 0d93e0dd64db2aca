/*
 * session.c -- the session store's interface (see session.h): the front
 * that callers use. It keeps the memory stores (session_mem.c) and, with
 * the redis store, its Redis side (session_redis.c), which answers through
 * the callbacks given to session_redis_new().
 *
 * The front answers lookups from memory, or asks session_redis.c and
 * completes the lookup when it answers (session_get_done()). It also
 * finds response ids in upstream answers (session_extract_id()).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/random.h>

#include "clock.h"
#include "jscan.h"
#include "lock.h"
#include "log.h"
#include "session.h"

#define REPLICA_HOST_MAX    48      /* hostname part of a replica id */

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

/* ---- response ids ---------------------------------------------------------- */

static int is_blank(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/* The top-level "id" string of the JSON object in [p, end) (jscan.c). */
static enum session_id_result json_id(const char *p, const char *end, char *out, size_t outlen)
{
    struct jscan_val v;
    size_t vlen;

    switch (jscan_find(p, (size_t)(end - p), "id", &v)) {
    case JSCAN_FIND_MORE:
        return SESSION_ID_MORE;
    case JSCAN_FIND_NONE:
        return SESSION_ID_NONE;
    case JSCAN_FIND_FOUND:
        break;
    }
    if (v.type != JSCAN_STRING)
        return SESSION_ID_NONE;
    vlen = v.len - 2;                   /* without the quotes */
    if (vlen == 0 || vlen >= outlen || memchr(v.start + 1, '\\', vlen) != NULL)
        return SESSION_ID_NONE;
    memcpy(out, v.start + 1, vlen);
    out[vlen] = '\0';
    return SESSION_ID_FOUND;
}

#define SSE_DATA     "data:"
#define SSE_DATA_LEN (sizeof(SSE_DATA) - 1)

/* The id in the JSON of the first `data:` line of an event stream. */
static enum session_id_result sse_id(const char *p, const char *end, char *out, size_t outlen)
{
    const char *eol, *v;
    enum session_id_result r;

    while (p < end) {
        /* The line's end: its first CR or LF (memchr, not a byte loop:
         * the first line is a whole JSON chunk). */
        const char *lf = memchr(p, '\n', (size_t)(end - p));
        eol = memchr(p, '\r', (size_t)((lf ? lf : end) - p));
        if (eol == NULL)
            eol = lf ? lf : end;
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

/* A memory store with a random hash seed of its own. */
static struct session_mem *mem_new(size_t max_entries, int64_t ttl_ms)
{
    uint64_t seed[2];

    random_bytes(seed, sizeof(seed));
    return session_mem_new(max_entries, ttl_ms, seed[0], seed[1]);
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
    s->mem = mem_new(s->max_entries, s->ttl_ms);
    s->content_ttl_ms = cfg->sessions.content_ttl_ms;
    s->content = mem_new((size_t)cfg->sessions.content_max_entries, s->content_ttl_ms);
    if (s->content != NULL)
        session_mem_set_value_max(s->content, (size_t)cfg->sessions.content_max_bytes);
    s->self.address = strdup(replica_addr ? replica_addr : "");
    if (s->mem == NULL || s->content == NULL || s->self.address == NULL) {
        snprintf(err, errlen, "sessions: out of memory");
        session_free(s);
        return NULL;
    }
    replica_id_make(s->self.id, sizeof(s->self.id));
    s->self.started_unix_ms = gw_unix_ms();
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
    if (until_unix_ms <= gw_unix_ms()) {
        if (type != SESSION_KEY_DISABLED) {
            s->m.shared_dropped++;
            return;
        }
        until_unix_ms = gw_unix_ms() + SESSION_DISABLED_SHARE_MS;
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
