/*
 * session.h -- the session store (response id -> host, sticky key -> host)
 * and the state replicas share through Redis.
 *
 * One interface, two backends (sessions.store):
 *   memory  a hash table with incremental rehashing, an LRU list bounded by
 *           sessions.max_entries and a ttl (sessions.ttl) counted from the
 *           last put. O(1) per operation, worst case, not only amortised
 *           (session_mem.h, pure).
 *   redis   the memory store plus Redis (hiredis async on the libevent
 *           loop). Puts go to both; lookups ask Redis first and fall back
 *           to memory. Redis is never on the critical path: every call is
 *           bounded by sessions.redis.timeout; when Redis is down, slow or
 *           refuses us, the session answers from memory, logs once, shows
 *           it in status and metrics, reconnects with exponential backoff
 *           and shares again once Redis is back. Nothing here fails a
 *           request because Redis failed. See session_redis.c
 *           (sessions), replicas.c (registry, advice) and redis_conn.c
 *           (the connection) for the keys and channels they use.
 *
 * With the redis store the session also registers this process as a
 * replica (heartbeat with a TTL, list of the replicas seen) and carries
 * advisory state between replicas: key disabled, key cooling down, host
 * breaker open, each with an expiry.
 *
 * Time: the memory store is pure; `now_ms` is the caller's monotonic clock
 * in milliseconds (gw_now_ms()), the same clock for every call. Times
 * shared between processes are wall-clock unix milliseconds (`*_unix_ms`).
 *
 * Threads: a struct session belongs to one event loop (the main one) and
 * is used from that loop's thread, or from a worker thread holding the
 * state lock while that loop is parked (lock.h); callbacks run on the
 * loop's thread. None of the session callbacks may call
 * session_free() or session_reconfigure().
 *
 * Secrets: the Redis password is never logged, never in status or metrics.
 * Keys are shared by key id (config's hash of the secret), never by secret.
 */
#ifndef INFERGATE_SESSION_H
#define INFERGATE_SESSION_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "config.h"
#include "session_mem.h"    /* enum session_kind, the memory store */

struct event_base;
struct session;

#define SESSION_REPLICA_MAX 96      /* replica id, with its NUL */

/* ---- response ids ---------------------------------------------------- */

enum session_id_result {
    SESSION_ID_NONE  = -1,  /* these bytes settle it: there is no usable id */
    SESSION_ID_MORE  = 0,   /* not in these bytes yet; call again with more */
    SESSION_ID_FOUND = 1    /* the id is in out, NUL-terminated */
};

/*
 * Finds the response id of an upstream answer: the top-level "id" string
 * of a JSON body, or of the JSON in the first SSE `data:` line of a stream
 * (the first chunk). Pass the bytes from the start of the body, as many as
 * have arrived; the scan stops at the id, so a large body costs only the
 * bytes before it (OpenAI-style servers put it first). No allocation.
 * The JSON is read by jscan_find() (jscan.h): checked as strictly as
 * jansson up to the id (invalid before it: SESSION_ID_NONE), keys compared
 * decoded, a text cut inside a token is SESSION_ID_MORE.
 * Which of the two is decided by the first non-blank byte: '{' is JSON,
 * ':' or a letter is SSE, anything else is SESSION_ID_NONE.
 * Ids holding a backslash escape, or needing outlen or more bytes, are
 * SESSION_ID_NONE. For SSE, `data: [DONE]` or a first chunk without an id
 * is SESSION_ID_NONE; only single-line data fields are understood.
 */
enum session_id_result session_extract_id(const char *buf, size_t len,
                                          char *out, size_t outlen);

/* ---- the session ------------------------------------------------------ */

/*
 * Builds the session for cfg->sessions. With the redis store this starts
 * connecting (never waits for it): until Redis answers, everything is
 * served from memory. `generation` is the config generation shown in the
 * replica registry; `replica_addr` the listen address ("host:port") other
 * replicas see, copied. Returns NULL with a message in err on a bad
 * sessions.redis.url or allocation failure.
 */
struct session *session_new(struct event_base *base, const struct config *cfg,
                            uint64_t generation, const char *replica_addr,
                            char *err, size_t errlen);

/*
 * On reload: new ttl and max_entries apply at once; a changed store, url
 * or prefix reconnects (pending lookups are answered from memory); a new
 * timeout applies to calls sent from now on. On error returns -1 with a
 * message in err and keeps the old settings.
 */
int session_reconfigure(struct session *s, const struct config *cfg,
                        uint64_t generation, char *err, size_t errlen);

/* Answers every pending lookup from memory, then frees. NULL is fine. */
void session_free(struct session *s);

/* session_put, session_get, session_put_shared, session_get_shared,
 * session_eval, session_eval_write, session_publish_key and
 * session_publish_breaker: caller holds the state lock (lock.h; checked by lock_assert_held() in the asan and tsan builds). */

/* Records that host served key. Redis store: also SET with PX ttl,
 * fire-and-forget but written to the socket before this returns, so call
 * it before the client sees the answer (the response id as soon as it is
 * extracted) and another replica asked right after finds it. Never waits.
 * Returns -1 when key or host is not storable. */
int session_put(struct session *s, enum session_kind kind, const char *key,
                const char *host, int64_t now_ms);

/* host is NULL when unknown; it is valid only during the call, copy it. */
typedef void (*session_get_cb)(void *arg, const char *host);

struct session_call;    /* a lookup waiting for Redis */

/*
 * Looks key up and calls cb exactly once (unless cancelled).
 * Memory store, or Redis not connected: cb runs before session_get
 * returns, and session_get returns NULL.
 * Redis connected: returns a handle and cb runs later from the loop: with
 * Redis's answer, or from memory when Redis fails or does not answer
 * within sessions.redis.timeout. A miss in Redis is asked once more (a put
 * by another replica may still be on its way), so a Redis that answers
 * and then stalls can take up to twice the timeout. The handle is valid
 * until cb runs or session_cancel() is called.
 */
struct session_call *session_get(struct session *s, enum session_kind kind,
                                 const char *key, int64_t now_ms,
                                 session_get_cb cb, void *arg);

/* cb will not be called; the handle is gone. Use it when the request that
 * asked goes away first. */
void session_cancel(struct session_call *c);

/*
 * Values only Redis holds (SESSION_CACHE: the response cache shared by
 * replicas), never the memory store. put: SET PX ttl_ms, fire-and-forget;
 * -1 when Redis is not up (nothing stored). get: as session_get(), but a
 * miss is not asked twice and when Redis is down, slow or failing cb gets
 * NULL (a miss), before session_get_shared returns if Redis is not up.
 * The value passed to cb is valid only during the call.
 */
int session_put_shared(struct session *s, enum session_kind kind, const char *key,
                       const char *value, int64_t ttl_ms);
struct session_call *session_get_shared(struct session *s, enum session_kind kind,
                                        const char *key, session_get_cb cb, void *arg);

/*
 * A Lua script run atomically by Redis (client limits shared by replicas),
 * keys under the store's prefix. eval: cb gets the script's string answer,
 * or NULL when Redis is not up (before this returns), fails or does not
 * answer within sessions.redis.timeout. eval_write: fire-and-forget; -1
 * when Redis is not up.
 */
struct session_call *session_eval(struct session *s, const char *script,
                                  int nkeys, const char *const *keys,
                                  int nargs, const char *const *args,
                                  session_get_cb cb, void *arg);
int session_eval_write(struct session *s, const char *script, int nkeys,
                       const char *const *keys, int nargs, const char *const *args);
/* 1 when the store is Redis and it is up. */
int session_shared_up(const struct session *s);

/* ---- state shared across replicas -------------------------------------- */

enum session_shared_type {
    SESSION_KEY_DISABLED = 0,   /* upstream answered 401/403 for that key */
    SESSION_KEY_COOLING,        /* 429/402: skip until `until_unix_ms` */
    SESSION_BREAKER_OPEN        /* host's breaker open until `until_unix_ms` */
};

struct session_shared {
    enum session_shared_type type;
    const char *name;           /* key id (never the secret) or host name */
    int64_t     until_unix_ms;  /* advice expires then */
    const char *replica;        /* id of the replica that published it */
};

typedef void (*session_shared_cb)(void *arg, const struct session_shared *ev);

#define SESSION_DISABLED_SHARE_MS (10 * 60 * 1000)  /* "disabled" advice, no until given */

/*
 * Tells the other replicas. `until_unix_ms` <= now: for a disabled key,
 * SESSION_DISABLED_SHARE_MS from now; otherwise nothing is published.
 * Memory store, or Redis down: dropped (counted); each replica still
 * keeps its own view. Publishing never waits.
 */
void session_publish_key(struct session *s, const char *key_id, int disabled,
                         int64_t until_unix_ms);
void session_publish_breaker(struct session *s, const char *host,
                             int64_t open_until_unix_ms);

/*
 * cb receives what other replicas publish (never our own): live through
 * pub/sub, and on every (re)connection what is still in force. The same
 * advice may arrive more than once; applying it must be idempotent.
 * The strings in ev are valid only during the call. One subscriber;
 * cb NULL unsubscribes.
 */
void session_on_shared(struct session *s, session_shared_cb cb, void *arg);

/* ---- status and metrics ------------------------------------------------ */

struct session_metrics {
    uint64_t hits;              /* lookups answered with a host */
    uint64_t misses;            /* lookups answered "unknown" */
    uint64_t puts;
    uint64_t evictions;         /* memory store: LRU at max_entries */
    uint64_t expirations;       /* memory store: ttl */
    uint64_t fallbacks;         /* operations served by memory alone because
                                   Redis was down, slow or failing */
    uint64_t redis_errors;      /* error replies, lost or refused connections */
    uint64_t redis_timeouts;    /* calls past sessions.redis.timeout */
    uint64_t redis_reconnects;  /* connections established (first included) */
    uint64_t shared_published;
    uint64_t shared_received;
    uint64_t shared_dropped;    /* not published: Redis down or memory store */
    size_t   entries;           /* gauge: memory store entries */
    size_t   replicas;          /* gauge: replicas seen, this one included */
    uint64_t redis_failovers;   /* Sentinel: moved to a new master */
    int      redis_configured;  /* store is redis */
    int      redis_up;          /* connected and answering */
    int      redis_sentinel;    /* the master is found through sentinels */
};

void session_metrics_read(const struct session *s, struct session_metrics *out);

/*
 * New reference, the caller owns it:
 *   {"store", "ttl_ms", "max_entries", "entries", "hits", "misses", ...,
 *    "replica": {id, address, started_unix_ms, generation},
 *    "redis": {url (password shown as ***), state up|connecting|down,
 *              since_unix_ms, last_error, timeout_ms, master (host:port
 *              in use or being connected to), found_by, failovers_followed,
 *              sentinel: {master_name, sentinels, watched, watching,
 *              last_error, errors} (with sentinels)}        (redis store)
 *    "replicas": [{id, address, started_unix_ms, heartbeat_unix_ms,
 *                  generation}, ...]}                        (redis store)
 * "replicas" is the last list read from Redis (kept while it is down).
 */
json_t *session_status_json(const struct session *s);

const char *session_replica_id(const struct session *s);

/* The checks of sessions.redis (redis_conn.c, which owns the connection). */

/* For config.c's check of sessions.redis.url: NULL when url is fine, else
 * a message ("expected ..."). Never echoes a password. */
const char *session_redis_url_problem(const char *url);

/* For config.c: sessions.redis as a whole (url, username and password,
 * sentinels, master_name, sentinel_password). NULL when fine, else a
 * message, and *key the key it is about. Never echoes a password. */
const char *session_redis_conf_problem(const struct config *cfg, const char **key);

/*
 * Start-up and reload: are cfg's Redis credentials accepted? Connects
 * synchronously (blocking, each step bounded by sessions.redis.timeout:
 * call it before the loop runs or off the loop), asks the sentinels for
 * the master if there are any, then AUTHs (or PINGs) there. Returns -1
 * with a message in err only when a server refuses the credentials (or
 * wants some that are not configured); a server that cannot be reached is
 * not an error (the session serves from memory and keeps trying). 0 for
 * the memory store.
 */
int session_redis_check_auth(const struct config *cfg, char *err, size_t errlen);

/* ---- internal: between session.c and session_redis.c (and replicas.c) ---- */

struct session_redis;

struct session_identity {
    char     id[SESSION_REPLICA_MAX];
    char    *address;           /* owned by the session */
    int64_t  started_unix_ms;
    uint64_t generation;
};

enum session_redis_answer {
    SESSION_REDIS_HIT = 0,      /* host found in Redis */
    SESSION_REDIS_MISS,         /* Redis answered: no such key */
    SESSION_REDIS_FAILED        /* error, timeout or gone: use memory */
};

struct session_redis_counters {
    uint64_t errors, timeouts, connects, received, published, failovers;
    size_t   replicas;
    int      up;
    int      sentinel;
};

/* How the backend answers its front: session.c gives these to
 * session_redis_new(); session_redis.c never calls into session.c. */
struct session_redis_cbs {
    /* A session_redis_get() ends: HIT with the value, MISS, or FAILED
     * (error, timeout or gone: the front answers from memory). */
    void (*get_done)(struct session_call *c, enum session_redis_answer a,
                     const char *value);
    /* Another replica published `ev` (session_redis_publish()). */
    void (*shared_received)(void *arg, const struct session_shared *ev);
    void  *arg;
};

/* session_redis.c */
struct session_redis *session_redis_new(const struct session_redis_cbs *cbs,
                                        struct event_base *base,
                                        const struct config *cfg,
                                        const struct session_identity *self,
                                        char *err, size_t errlen);
void session_redis_free(struct session_redis *r);
void session_redis_set_timeout(struct session_redis *r, int64_t timeout_ms);
int  session_redis_up(const struct session_redis *r);
int  session_redis_same(const struct session_redis *r, const struct config *cfg);
/* 0: sent, cbs->get_done() follows; -1: not sent, nothing follows. */
int  session_redis_get(struct session_redis *r, struct session_call *c,
                       enum session_kind kind, const char *key);
#define SESSION_EVAL_MAX 16     /* keys + args of one script */
int  session_redis_eval(struct session_redis *r, struct session_call *c, const char *script,
                        int nkeys, const char *const *keys, int nargs, const char *const *args);
int  session_redis_put(struct session_redis *r, enum session_kind kind,
                       const char *key, const char *host, int64_t ttl_ms);
int  session_redis_publish(struct session_redis *r, const struct session_shared *ev);
void session_redis_counters(const struct session_redis *r, struct session_redis_counters *out);
json_t *session_redis_status_json(const struct session_redis *r);
json_t *session_redis_replicas_json(const struct session_redis *r);

#endif
