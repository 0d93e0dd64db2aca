/*
 * replicas.c -- the replica registry and shared advice (see replicas.h),
 * on the Redis connection of redis_conn.c. With P the configured prefix:
 *   P replica:<id>                  JSON of one replica, PX REPLICA_TTL_MS,
 *                                   re-SET every HEARTBEAT_MS
 *   P replicas                      SET of replica ids
 *   P shared:<type>:<name>          JSON advice, PX until it expires
 *   P shared                        SET of the <type>:<name> above
 *   P events:<db>                   pub/sub channel (redis_conn.c): advice,
 *                                   "replica_up"
 * The two SETs are indexes, pruned of members whose key has expired when
 * they are read; nothing uses KEYS or SCAN. Advice goes out both ways:
 * PUBLISH reaches running replicas at once, the keys are read back on
 * every (re)connection so a replica that starts late or was cut off
 * catches up on what is still in force. The registry is read after every
 * heartbeat and when a "replica_up" arrives.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <hiredis/hiredis.h>
#include <jansson.h>

#include "clock.h"
#include "redis_conn.h"
#include "replicas.h"

#define HEARTBEAT_MS        2000
#define REPLICA_TTL_MS      (3 * HEARTBEAT_MS)

struct replicas {
    struct redis_conn             *conn;
    const struct session_identity *self;   /* owned by the session */
    void                         (*shared)(void *arg, const struct session_shared *ev);
    void                          *arg;
    struct event                  *ev_beat;   /* heartbeat, while up */
    json_t                        *list;      /* last list read */
    uint64_t                       received, published;
};

/* An MGET of the members of an index SET: the names asked for. */
struct mget {
    struct replicas *g;
    size_t           n;
    char            *names[];
};

static void mget_free(struct mget *m)
{
    size_t i;

    for (i = 0; i < m->n; i++)
        free(m->names[i]);
    free(m);
}

static const char *shared_type_name(enum session_shared_type t)
{
    switch (t) {
    case SESSION_KEY_DISABLED: return "key_disabled";
    case SESSION_KEY_COOLING:  return "key_cooling";
    case SESSION_BREAKER_OPEN: return "breaker_open";
    }
    return "unknown";
}

static int shared_type_parse(const char *s, enum session_shared_type *out)
{
    if (strcmp(s, "key_disabled") == 0)
        *out = SESSION_KEY_DISABLED;
    else if (strcmp(s, "key_cooling") == 0)
        *out = SESSION_KEY_COOLING;
    else if (strcmp(s, "breaker_open") == 0)
        *out = SESSION_BREAKER_OPEN;
    else
        return -1;
    return 0;
}

/* SMEMBERS of an index SET; the reply (fn) drives the MGET. */
static void read_index(struct replicas *g, const char *set, redis_conn_reply_fn fn)
{
    char *k = redis_conn_key(g->conn, set, "");
    const char *argv[2] = { "SMEMBERS", k };

    if (k != NULL)
        redis_conn_cmd(g->conn, 2, argv, fn, g);
    free(k);
}

static void on_replica_ids(void *arg, redisReply *reply);

static void heartbeat(struct replicas *g)
{
    json_t *o;
    char *js, *key, *set;
    const char *argv[3];

    o = json_pack("{s:s, s:s, s:I, s:I, s:I}", "id", g->self->id,
                  "address", g->self->address,
                  "started_unix_ms", (json_int_t)g->self->started_unix_ms,
                  "heartbeat_unix_ms", (json_int_t)gw_unix_ms(),
                  "generation", (json_int_t)g->self->generation);
    js = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    key = redis_conn_key(g->conn, "replica:", g->self->id);
    set = redis_conn_key(g->conn, "replicas", "");
    if (js != NULL && key != NULL && set != NULL) {
        redis_conn_set_px(g->conn, key, js, REPLICA_TTL_MS);
        argv[0] = "SADD";
        argv[1] = set;
        argv[2] = g->self->id;
        redis_conn_cmd(g->conn, 3, argv, NULL, NULL);
    }
    free(js);
    free(key);
    free(set);
    read_index(g, "replicas", on_replica_ids);
}

static void beat_arm(struct replicas *g)
{
    struct timeval tv = { HEARTBEAT_MS / 1000, (HEARTBEAT_MS % 1000) * 1000 };

    evtimer_add(g->ev_beat, &tv);
}

static void on_beat(evutil_socket_t fd, short what, void *arg)
{
    struct replicas *g = arg;

    (void)fd;
    (void)what;
    if (!redis_conn_up(g->conn))
        return;                         /* the next up arms it again */
    heartbeat(g);
    beat_arm(g);
}

/* SMEMBERS answered: MGET the keys of the members; fn gets the MGET. */
static void index_members(struct replicas *g, redisReply *reply, const char *part,
                          redis_conn_reply_fn fn)
{
    const char **argv;
    struct mget *m;
    size_t i, n;

    if (reply == NULL || reply->type != REDIS_REPLY_ARRAY || reply->elements == 0)
        return;
    argv = calloc(reply->elements + 1, sizeof(*argv));
    m = calloc(1, sizeof(*m) + reply->elements * sizeof(m->names[0]));
    if (argv == NULL || m == NULL) {
        free(argv);
        free(m);
        return;
    }
    m->g = g;
    argv[0] = "MGET";
    for (i = 0; i < reply->elements; i++) {
        redisReply *e = reply->element[i];

        if (e->type != REDIS_REPLY_STRING)
            continue;
        m->names[m->n] = strndup(e->str, e->len);
        if (m->names[m->n] == NULL
            || (argv[m->n + 1] = redis_conn_key(g->conn, part, m->names[m->n])) == NULL) {
            free(m->names[m->n]);
            m->names[m->n] = NULL;
            break;
        }
        m->n++;
    }
    n = m->n;
    if (n == 0 || redis_conn_cmd(g->conn, (int)n + 1, argv, fn, m) != 0)
        mget_free(m);                   /* else the call owns it now */
    for (i = 0; i < n; i++)
        free((char *)argv[i + 1]);
    free(argv);
}

/* SREM the members whose keys have expired. */
static void index_prune(struct replicas *g, const char *set, char **gone, size_t n)
{
    const char **argv;
    size_t i;
    char *k;

    if (n == 0)
        return;
    argv = calloc(n + 2, sizeof(*argv));
    k = redis_conn_key(g->conn, set, "");
    if (argv != NULL && k != NULL) {
        argv[0] = "SREM";
        argv[1] = k;
        for (i = 0; i < n; i++)
            argv[i + 2] = gone[i];
        redis_conn_cmd(g->conn, (int)n + 2, argv, NULL, NULL);
    }
    free(k);
    free(argv);
}

/* A replica's JSON from Redis, checked; NULL when malformed. */
static json_t *replica_parse(const char *s, size_t len)
{
    json_t *o = json_loadb(s, len, 0, NULL);

    if (o == NULL || !json_is_object(o) || !json_is_string(json_object_get(o, "id"))) {
        json_decref(o);
        return NULL;
    }
    return o;
}

/* MGET P replica:<id>... answered: the new list; expired ids pruned. */
static void on_replicas(void *arg, redisReply *reply)
{
    struct mget *m = arg;
    struct replicas *g = m->g;
    json_t *list, *o;
    char **gone;
    size_t i, ngone = 0;

    if (reply == NULL || reply->type != REDIS_REPLY_ARRAY) {
        mget_free(m);
        return;
    }
    list = json_array();
    gone = calloc(m->n ? m->n : 1, sizeof(*gone));
    if (list == NULL || gone == NULL) {
        json_decref(list);
        free(gone);
        mget_free(m);
        return;
    }
    for (i = 0; i < reply->elements && i < m->n; i++) {
        redisReply *e = reply->element[i];

        if (e->type == REDIS_REPLY_STRING && (o = replica_parse(e->str, e->len)) != NULL)
            json_array_append_new(list, o);
        else if (e->type == REDIS_REPLY_NIL)
            gone[ngone++] = m->names[i];
    }
    json_decref(g->list);
    g->list = list;
    index_prune(g, "replicas", gone, ngone);
    free(gone);
    mget_free(m);
}

static void on_replica_ids(void *arg, redisReply *reply)
{
    struct replicas *g = arg;

    if (reply != NULL && reply->type == REDIS_REPLY_ARRAY && reply->elements == 0) {
        json_decref(g->list);
        g->list = json_array();
        return;
    }
    index_members(g, reply, "replica:", on_replicas);
}

/* Parses advice or a replica_up; delivers advice from others still in force. */
static void shared_apply(struct replicas *g, const char *s, size_t len)
{
    json_t *o = json_loadb(s, len, 0, NULL);
    const char *type = json_string_value(json_object_get(o, "type"));
    const char *name = json_string_value(json_object_get(o, "name"));
    const char *from = json_string_value(json_object_get(o, "from"));
    json_t *until = json_object_get(o, "until");
    struct session_shared ev;

    if (type == NULL || from == NULL || strcmp(from, g->self->id) == 0) {
        json_decref(o);
        return;
    }
    if (strcmp(type, "replica_up") == 0) {
        if (redis_conn_up(g->conn))
            read_index(g, "replicas", on_replica_ids);
        json_decref(o);
        return;
    }
    if (name == NULL || !json_is_integer(until) || shared_type_parse(type, &ev.type) != 0
        || json_integer_value(until) <= gw_unix_ms()) {
        json_decref(o);
        return;
    }
    ev.name = name;
    ev.until_unix_ms = (int64_t)json_integer_value(until);
    ev.replica = from;
    g->received++;
    g->shared(g->arg, &ev);
    json_decref(o);
}

/* MGET P shared:<item>... answered: apply what is in force, prune the rest. */
static void on_shared(void *arg, redisReply *reply)
{
    struct mget *m = arg;
    struct replicas *g = m->g;
    char **gone;
    size_t i, ngone = 0;

    gone = reply != NULL && reply->type == REDIS_REPLY_ARRAY
           ? calloc(m->n ? m->n : 1, sizeof(*gone)) : NULL;
    if (gone == NULL) {
        mget_free(m);
        return;
    }
    for (i = 0; i < reply->elements && i < m->n; i++) {
        redisReply *e = reply->element[i];

        if (e->type == REDIS_REPLY_STRING)
            shared_apply(g, e->str, e->len);
        else if (e->type == REDIS_REPLY_NIL)
            gone[ngone++] = m->names[i];
    }
    index_prune(g, "shared", gone, ngone);
    free(gone);
    mget_free(m);
}

static void on_shared_ids(void *arg, redisReply *reply)
{
    index_members(arg, reply, "shared:", on_shared);
}

static void announce(struct replicas *g)
{
    json_t *o = json_pack("{s:s, s:s}", "type", "replica_up", "from", g->self->id);
    char *js = o ? json_dumps(o, JSON_COMPACT) : NULL;

    if (js != NULL)
        redis_conn_publish(g->conn, js);
    free(js);
    json_decref(o);
}

/* ---- interface ------------------------------------------------------------- */

struct replicas *replicas_new(struct redis_conn *conn, struct event_base *base,
                              const struct session_identity *self,
                              void (*shared)(void *arg, const struct session_shared *ev),
                              void *arg)
{
    struct replicas *g = calloc(1, sizeof(*g));

    if (g == NULL)
        return NULL;
    g->conn = conn;
    g->self = self;
    g->shared = shared;
    g->arg = arg;
    g->list = json_array();
    g->ev_beat = evtimer_new(base, on_beat, g);
    if (g->list == NULL || g->ev_beat == NULL) {
        replicas_free(g);
        return NULL;
    }
    return g;
}

void replicas_free(struct replicas *g)
{
    if (g == NULL)
        return;
    if (g->ev_beat != NULL)
        event_free(g->ev_beat);
    json_decref(g->list);
    free(g);
}

void replicas_conn_up(struct replicas *g)
{
    heartbeat(g);
    beat_arm(g);
    read_index(g, "shared", on_shared_ids);
    announce(g);
}

void replicas_conn_message(struct replicas *g, const char *msg, size_t len)
{
    shared_apply(g, msg, len);
}

int replicas_publish(struct replicas *g, const struct session_shared *ev)
{
    const char *type = shared_type_name(ev->type), *argv[3];
    int64_t ttl = ev->until_unix_ms - gw_unix_ms();
    char *item = NULL, *key = NULL, *set = NULL, *js = NULL;
    json_t *o;
    int rc = -1;

    if (!redis_conn_up(g->conn) || ttl <= 0)
        return -1;
    o = json_pack("{s:s, s:s, s:I, s:s}", "type", type, "name", ev->name,
                  "until", (json_int_t)ev->until_unix_ms, "from", g->self->id);
    js = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    item = malloc(strlen(type) + 1 + strlen(ev->name) + 1);
    if (js == NULL || item == NULL)
        goto out;
    sprintf(item, "%s:%s", type, ev->name);
    key = redis_conn_key(g->conn, "shared:", item);
    set = redis_conn_key(g->conn, "shared", "");
    if (key == NULL || set == NULL || redis_conn_set_px(g->conn, key, js, ttl) != 0)
        goto out;
    argv[0] = "SADD";
    argv[1] = set;
    argv[2] = item;
    redis_conn_cmd(g->conn, 3, argv, NULL, NULL);
    rc = redis_conn_publish(g->conn, js);
    if (rc == 0)
        g->published++;
    redis_conn_flush(g->conn);
out:
    free(js);
    free(item);
    free(key);
    free(set);
    return rc;
}

void replicas_counters(const struct replicas *g, uint64_t *received, uint64_t *published,
                       size_t *seen)
{
    *received = g->received;
    *published = g->published;
    *seen = json_array_size(g->list);
}

json_t *replicas_json(const struct replicas *g)
{
    return json_deep_copy(g->list);
}
