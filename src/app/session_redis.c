/*
 * session_redis.c -- the Redis side of the session store (see session.h):
 * sessions shared by replicas, on the connection of redis_conn.c, with the
 * replica registry and shared advice of replicas.c beside it. It answers
 * its front (session.c) only through the struct session_redis_cbs it was
 * given; never blocks, never fails a request.
 *
 * With P the configured prefix:
 *   P rid:<id>, P sticky:<key>      host, PX sessions.ttl           SET/GET
 *   P content:<id>                  kept content (JSON string), PX
 *                                   sessions.content_ttl            SET/GET
 *   P cache:<sha-256>               response cache answer, PX cache.ttl
 * (the registry's keys and the events channel: replicas.c).
 *
 * Read-your-writes across replicas: Redis orders the commands of one
 * connection, not of different ones. So a put is written to the socket
 * before session_put() returns (redis_conn_flush()), and a lookup that
 * misses asks once more (send_get()): a client answered by replica 1 that
 * at once asks replica 2 finds its session.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>

#include "redis_conn.h"
#include "replicas.h"
#include "session.h"

#define INT_TEXT_MAX        24          /* an int64 in decimal, with its NUL */

struct session_redis {
    struct session_redis_cbs  cbs;      /* the front (session.c) */
    struct redis_conn        *conn;
    struct replicas          *reg;
};

/* A lookup on its way: the front's call, the Redis key (a second look
 * asks it again). */
struct get {
    struct session_redis *r;
    struct session_call  *call;
    int                   recheck;      /* ask once more on a miss */
    char                  key[];
};

static int send_get(struct get *g);

static void on_get(void *arg, redisReply *reply)
{
    struct get *g = arg;
    struct session_redis *r = g->r;

    if (reply == NULL) {
        r->cbs.get_done(g->call, SESSION_REDIS_FAILED, NULL);
    } else if (reply->type == REDIS_REPLY_STRING) {
        r->cbs.get_done(g->call, SESSION_REDIS_HIT, reply->str);
    } else if (g->recheck) {
        g->recheck = 0;
        if (send_get(g) == 0)
            return;                     /* g goes on */
        r->cbs.get_done(g->call, SESSION_REDIS_MISS, NULL);
    } else {
        r->cbs.get_done(g->call, SESSION_REDIS_MISS, NULL);
    }
    free(g);
}

/* GET g->key; 0 when sent (the reply answers g->call). */
static int send_get(struct get *g)
{
    const char *argv[2] = { "GET", g->key };

    return redis_conn_cmd(g->r->conn, 2, argv, on_get, g);
}

static void on_conn_up(void *arg)
{
    struct session_redis *r = arg;

    replicas_conn_up(r->reg);
}

static void on_conn_message(void *arg, const char *msg, size_t len)
{
    struct session_redis *r = arg;

    replicas_conn_message(r->reg, msg, len);
}

/* ---- interface to session.c ------------------------------------------------------ */

struct session_redis *session_redis_new(const struct session_redis_cbs *cbs,
                                        struct event_base *base,
                                        const struct config *cfg,
                                        const struct session_identity *self,
                                        char *err, size_t errlen)
{
    struct session_redis *r = calloc(1, sizeof(*r));
    struct redis_conn_cbs ccbs;

    if (r == NULL) {
        snprintf(err, errlen, "sessions: out of memory");
        return NULL;
    }
    r->cbs = *cbs;
    ccbs.up = on_conn_up;
    ccbs.message = on_conn_message;
    ccbs.arg = r;
    r->conn = redis_conn_new(&ccbs, base, cfg, self->id, err, errlen);
    if (r->conn == NULL) {
        free(r);
        return NULL;
    }
    r->reg = replicas_new(r->conn, base, self, cbs->shared_received, cbs->arg);
    if (r->reg == NULL) {
        snprintf(err, errlen, "sessions: out of memory");
        session_redis_free(r);
        return NULL;
    }
    redis_conn_start(r->conn);
    return r;
}

void session_redis_free(struct session_redis *r)
{
    if (r == NULL)
        return;
    redis_conn_free(r->conn);           /* pending lookups: FAILED, from memory */
    replicas_free(r->reg);
    free(r);
}

void session_redis_set_timeout(struct session_redis *r, int64_t timeout_ms)
{
    redis_conn_set_timeout(r->conn, timeout_ms);
}

int session_redis_up(const struct session_redis *r)
{
    return redis_conn_up(r->conn);
}

int session_redis_same(const struct session_redis *r, const struct config *cfg)
{
    return redis_conn_same(r->conn, cfg);
}

static const char *kind_part(enum session_kind kind)
{
    return kind == SESSION_STICKY ? "sticky:" : kind == SESSION_CONTENT ? "content:"
         : kind == SESSION_CACHE ? "cache:" : "rid:";
}

/*
 * A miss gets a second look. Redis keeps the order of the commands of one
 * connection, not across connections: a client answered by another
 * replica can ask us while that replica's SET, already written (see
 * redis_conn_flush()), still waits behind our GET on the server. The
 * second GET leaves after the first answer; by then the SET has been
 * read. It costs one round trip, on misses only: a response id
 * (verification must reach the same host) and a sticky key (a miss would
 * rebalance the user and overwrite the binding) are both worth it.
 */
int session_redis_get(struct session_redis *r, struct session_call *c,
                      enum session_kind kind, const char *key)
{
    char *k;
    struct get *g;

    if (!redis_conn_up(r->conn) || (k = redis_conn_key(r->conn, kind_part(kind), key)) == NULL)
        return -1;
    g = malloc(sizeof(*g) + strlen(k) + 1);
    if (g == NULL) {
        free(k);
        return -1;
    }
    g->r = r;
    g->call = c;
    g->recheck = kind != SESSION_CACHE;     /* a cache miss is just a miss */
    memcpy(g->key, k, strlen(k) + 1);
    free(k);
    if (send_get(g) != 0) {
        free(g);
        return -1;
    }
    return 0;
}

/*
 * EVAL script with keys (each under the prefix) and args. With c: the
 * script's string answer goes to get_done as a HIT (anything else is a
 * MISS, an error or timeout FAILED); without: fire-and-forget, written to
 * the socket before this returns.
 */
int session_redis_eval(struct session_redis *r, struct session_call *c, const char *script,
                       int nkeys, const char *const *keys, int nargs, const char *const *args)
{
    const char *argv[3 + SESSION_EVAL_MAX];
    char *owned[SESSION_EVAL_MAX], nk[INT_TEXT_MAX];
    struct get *g = NULL;
    int i, n = 0, ret = -1;

    if (!redis_conn_up(r->conn) || nkeys < 0 || nargs < 0 || nkeys + nargs > SESSION_EVAL_MAX)
        return -1;
    snprintf(nk, sizeof(nk), "%d", nkeys);
    argv[n++] = "EVAL";
    argv[n++] = script;
    argv[n++] = nk;
    for (i = 0; i < nkeys; i++)
        if ((owned[i] = redis_conn_key(r->conn, keys[i], "")) == NULL)
            break;
    if (i < nkeys) {
        while (i-- > 0)
            free(owned[i]);
        return -1;
    }
    for (i = 0; i < nkeys; i++)
        argv[n++] = owned[i];
    for (i = 0; i < nargs; i++)
        argv[n++] = args[i];
    if (c == NULL) {
        ret = redis_conn_cmd(r->conn, n, argv, NULL, NULL);
    } else if ((g = malloc(sizeof(*g) + sizeof("eval"))) != NULL) {
        g->r = r;
        g->call = c;
        g->recheck = 0;
        memcpy(g->key, "eval", sizeof("eval"));
        ret = redis_conn_cmd(r->conn, n, argv, on_get, g);
        if (ret != 0)
            free(g);
    }
    for (i = 0; i < nkeys; i++)
        free(owned[i]);
    redis_conn_flush(r->conn);
    return ret;
}

int session_redis_put(struct session_redis *r, enum session_kind kind,
                      const char *key, const char *host, int64_t ttl_ms)
{
    char *k;
    int rc;

    if (!redis_conn_up(r->conn) || (k = redis_conn_key(r->conn, kind_part(kind), key)) == NULL)
        return -1;
    rc = redis_conn_set_px(r->conn, k, host, ttl_ms);
    free(k);
    redis_conn_flush(r->conn);
    return rc;
}

int session_redis_publish(struct session_redis *r, const struct session_shared *ev)
{
    return replicas_publish(r->reg, ev);
}

void session_redis_counters(const struct session_redis *r, struct session_redis_counters *out)
{
    struct redis_conn_counters cc;

    memset(out, 0, sizeof(*out));
    redis_conn_counters(r->conn, &cc);
    out->errors = cc.errors;
    out->timeouts = cc.timeouts;
    out->connects = cc.connects;
    out->failovers = cc.failovers;
    out->up = cc.up;
    out->sentinel = cc.sentinel;
    replicas_counters(r->reg, &out->received, &out->published, &out->replicas);
}

json_t *session_redis_status_json(const struct session_redis *r)
{
    return redis_conn_status_json(r->conn);
}

json_t *session_redis_replicas_json(const struct session_redis *r)
{
    return replicas_json(r->reg);
}
