/*
 * session_redis.c -- the Redis side of the session store (see session.h):
 * sessions shared by replicas, the replica registry, shared advice about
 * keys and breakers. hiredis async on the libevent loop; never blocks,
 * never fails a request.
 *
 * Two connections: `cmd` for commands, `sub` for SUBSCRIBE. With P the
 * configured prefix:
 *   P rid:<id>, P sticky:<key>      host, PX sessions.ttl           SET/GET
 *   P replica:<id>                  JSON of one replica, PX REPLICA_TTL_MS,
 *                                   re-SET every HEARTBEAT_MS
 *   P replicas                      SET of replica ids
 *   P shared:<type>:<name>          JSON advice, PX until it expires
 *   P shared                        SET of the <type>:<name> above
 *   P events:<db>                   pub/sub channel: advice, "replica_up"
 *                                   (channels ignore SELECT, hence the db)
 * The two SETs are indexes, pruned of members whose key has expired when
 * they are read; nothing uses KEYS or SCAN. Advice goes out both ways:
 * PUBLISH reaches running replicas at once, the keys are read back on
 * every (re)connection so a replica that starts late or was cut off
 * catches up on what is still in force. The registry is read after every
 * heartbeat and when a "replica_up" arrives.
 *
 * Read-your-writes across replicas: Redis orders the commands of one
 * connection, not of different ones. So a put is written to the socket
 * before session_put() returns (flush()), and a lookup that misses asks
 * once more (send_get()): a client answered by replica 1 that at once
 * asks replica 2 finds its session.
 *
 * Timeouts without a timer per call: replies on a connection come back in
 * the order the commands went out, so the commands awaiting a reply form a
 * FIFO and one watchdog timer follows the oldest. If it is older than
 * sessions.redis.timeout, Redis is slow or gone: the session goes down at
 * once (every pending lookup is answered from memory) and reconnects.
 *
 * States: CONNECTING (resolve, connect, AUTH, SELECT, PING, SUBSCRIBE, all
 * within one timeout) -> UP -> DOWN (backoff timer, BACKOFF_MIN_MS doubling
 * to BACKOFF_MAX_MS) -> CONNECTING ... One warning when Redis goes away (or
 * is not there at start), one info line when it is back; failed retries in
 * between log at debug level only.
 *
 * Host names in the URL are resolved with evdns (numeric addresses and
 * /etc/hosts answer at once), never with a blocking getaddrinfo().
 *
 * hiredis 0.14 rules this file keeps: hiredis frees a context itself after
 * onConnect(error), around onDisconnect and whenever a reply callback gets
 * reply == NULL; so those paths drop our pointer and never free it, and we
 * free only contexts we still hold. redisAsyncFree() called inside a reply
 * callback is deferred by hiredis until the callback returns. Our own
 * pointers are cleared before anything is freed, so callbacks of a dying
 * context see that it is no longer ours and only release their call.
 */
#include <arpa/inet.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <event2/dns.h>
#include <event2/event.h>
#include <event2/util.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <hiredis/adapters/libevent.h>
#include <jansson.h>

#include "log.h"
#include "session.h"

#define HEARTBEAT_MS        2000
#define REPLICA_TTL_MS      (3 * HEARTBEAT_MS)
#define BACKOFF_MIN_MS      100
#define BACKOFF_MAX_MS      2000
#define REDIS_DEFAULT_PORT  6379
#define REDIS_SCHEME        "redis://"
#define UNIX_SCHEME         "unix:"
#define MAX_DB_DIGITS       6
#define DB_MAX              999999      /* MAX_DB_DIGITS nines */
#define PORT_MAX            65535
#define LAST_ERROR_MAX      200
#define ADDR_MAX            64          /* a numeric IPv4 or IPv6 address */
#define INT_TEXT_MAX        24          /* an int64 in decimal, with its NUL */
#define SMALL_ARGV          8           /* commands up to this many words use the stack */
#define MS_PER_S            1000
#define US_PER_MS           1000

static const char URL_EXPECTED[] =
    "expected redis://[[user]:password@]host[:port][/db] or unix:/path";

/* ---- clocks ----------------------------------------------------------------- */

static int64_t mono_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * MS_PER_S + ts.tv_nsec / (MS_PER_S * US_PER_MS);
}

static int64_t unix_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * MS_PER_S + ts.tv_nsec / (MS_PER_S * US_PER_MS);
}

static void timer_arm(struct event *ev, int64_t ms)
{
    struct timeval tv;

    if (ms < 0)
        ms = 0;
    tv.tv_sec = (time_t)(ms / MS_PER_S);
    tv.tv_usec = (suseconds_t)((ms % MS_PER_S) * US_PER_MS);
    evtimer_add(ev, &tv);
}

/* ---- URL ----------------------------------------------------------------------- */

struct redis_url {
    char *host;         /* TCP: name or address, without brackets */
    int   port;
    char *path;         /* unix socket, or NULL */
    char *user;         /* NULL: AUTH with the password alone */
    char *pass;         /* NULL: no AUTH */
    int   db;
    char *shown;        /* for logs and status: the password as *** */
};

static void url_clear(struct redis_url *u)
{
    free(u->host);
    free(u->path);
    free(u->user);
    if (u->pass)
        memset(u->pass, 0, strlen(u->pass));
    free(u->pass);
    free(u->shown);
    memset(u, 0, sizeof(*u));
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Percent-decodes [p, end) into a new string; NULL on a bad escape. */
static char *pct_decode(const char *p, const char *end)
{
    char *out = malloc((size_t)(end - p) + 1), *o = out;
    int hi, lo;

    if (out == NULL)
        return NULL;
    while (p < end) {
        if (*p != '%') {
            *o++ = *p++;
            continue;
        }
        if (end - p < 3 || (hi = hexval(p[1])) < 0 || (lo = hexval(p[2])) < 0) {
            free(out);
            return NULL;
        }
        *o++ = (char)(hi * 16 + lo);
        p += 3;
    }
    *o = '\0';
    return out;
}

static int parse_uint(const char *p, const char *end, long max, long *out)
{
    long v = 0;

    if (p >= end)
        return -1;
    for (; p < end; p++) {
        if (*p < '0' || *p > '9')
            return -1;
        v = v * 10 + (*p - '0');
        if (v > max)
            return -1;
    }
    *out = v;
    return 0;
}

static const char *url_parse_unix(const char *s, struct redis_url *u)
{
    const char *path = s + strlen(UNIX_SCHEME);
    struct sockaddr_un sa;

    if (strncmp(path, "///", 3) == 0)
        path += 2;                      /* unix:///path */
    if (path[0] != '/')
        return URL_EXPECTED;
    if (strlen(path) >= sizeof(sa.sun_path))
        return "unix socket path too long";
    u->path = strdup(path);
    u->shown = malloc(strlen(UNIX_SCHEME) + strlen(path) + 1);
    if (u->path == NULL || u->shown == NULL)
        return "out of memory";
    sprintf(u->shown, "%s%s", UNIX_SCHEME, path);
    return NULL;
}

static const char *url_parse_tcp(const char *s, struct redis_url *u)
{
    const char *a = s + strlen(REDIS_SCHEME), *aend, *at = NULL, *h, *hend, *colon, *p;
    long port = REDIS_DEFAULT_PORT, db = 0;
    size_t len;
    int v6;

    aend = a + strcspn(a, "/?#");
    if (*aend == '?' || *aend == '#')
        return URL_EXPECTED;
    for (p = a; p < aend; p++)
        if (*p == '@')
            at = p;                     /* the last '@': passwords may hold one */
    h = a;
    if (at != NULL) {
        colon = memchr(a, ':', (size_t)(at - a));
        if (colon == NULL)
            return "credentials must be [user]:password@";
        if (colon + 1 == at)
            return "empty password";
        if (colon > a && (u->user = pct_decode(a, colon)) == NULL)
            return "bad %-escape in the user name";
        if ((u->pass = pct_decode(colon + 1, at)) == NULL)
            return "bad %-escape in the password";
        h = at + 1;
    }
    if (*h == '[') {
        hend = memchr(h, ']', (size_t)(aend - h));
        if (hend == NULL)
            return "unclosed [ in the host";
        p = hend + 1;
        h++;
    } else {
        colon = memchr(h, ':', (size_t)(aend - h));
        hend = colon ? colon : aend;
        p = hend;
    }
    if (hend == h)
        return "missing host";
    if (p < aend) {
        if (*p != ':' || parse_uint(p + 1, aend, PORT_MAX, &port) != 0 || port == 0)
            return "port must be 1..65535";
    }
    if (*aend == '/' && aend[1] != '\0'
        && parse_uint(aend + 1, aend + strlen(aend), DB_MAX, &db) != 0)
        return "database must be a number";
    u->host = strndup(h, (size_t)(hend - h));
    u->port = (int)port;
    u->db = (int)db;
    len = strlen(REDIS_SCHEME) + strlen(u->user ? u->user : "") + (size_t)(hend - h)
          + sizeof(":***@[]:65535/") + MAX_DB_DIGITS;
    u->shown = malloc(len);
    if (u->host == NULL || u->shown == NULL)
        return "out of memory";
    v6 = strchr(u->host, ':') != NULL;
    snprintf(u->shown, len, "%s%s%s%s%s%s:%d/%d", REDIS_SCHEME,
             u->user ? u->user : "", u->pass ? ":***@" : "",
             v6 ? "[" : "", u->host, v6 ? "]" : "", u->port, u->db);
    return NULL;
}

/* NULL and u filled, or a message (u cleared). */
static const char *url_parse(const char *s, struct redis_url *u)
{
    const char *why;

    memset(u, 0, sizeof(*u));
    if (s == NULL)
        return URL_EXPECTED;
    if (strncmp(s, UNIX_SCHEME, strlen(UNIX_SCHEME)) == 0)
        why = url_parse_unix(s, u);
    else if (strncmp(s, REDIS_SCHEME, strlen(REDIS_SCHEME)) == 0)
        why = url_parse_tcp(s, u);
    else
        why = URL_EXPECTED;
    if (why != NULL)
        url_clear(u);
    return why;
}

const char *session_redis_url_problem(const char *url)
{
    struct redis_url u;
    const char *why = url_parse(url, &u);

    url_clear(&u);
    return why;
}

/* ---- state --------------------------------------------------------------------- */

enum redis_state { RS_DOWN = 0, RS_CONNECTING, RS_UP };

enum call_type {
    CALL_AUTH = 0,
    CALL_SELECT,
    CALL_READY,         /* the PING that ends the handshake */
    CALL_GET,
    CALL_WRITE,         /* SET, SADD, SREM, PUBLISH: only errors matter */
    CALL_REPLICA_IDS,   /* SMEMBERS P replicas */
    CALL_REPLICAS,      /* MGET P replica:<id>... */
    CALL_SHARED_IDS,    /* SMEMBERS P shared */
    CALL_SHARED         /* MGET P shared:<item>... */
};

struct rcall {
    struct rcall         *next;         /* FIFO of the cmd connection */
    struct session_redis *r;            /* NULL once abandoned */
    enum call_type        type;
    int64_t               deadline;     /* monotonic ms */
    struct session_call  *get;          /* CALL_GET, answered exactly once */
    int                   recheck;      /* CALL_GET: ask once more on a miss */
    char                **names;        /* CALL_GET: the Redis key;
                                           CALL_REPLICAS, CALL_SHARED: asked for */
    size_t                nnames;
};

/* A lookup whose answer waits for the next loop turn (see flush()). */
struct later {
    struct later        *next;
    struct session_call *get;
};

/*
 * A pending evdns lookup. Giving up on one only clears `r`: the lookup
 * runs to its end (or to evdns_base_free(), which fails it) and its
 * callback frees this. evdns_getaddrinfo_cancel() is not used: its
 * callback comes later and reads the evdns base, which may be gone by then.
 */
struct resolve {
    struct session_redis *r;            /* NULL once abandoned */
};

struct session_redis {
    struct session                *s;
    struct event_base             *base;
    const struct session_identity *self;   /* owned by the session */
    char                          *url_text;
    struct redis_url               url;
    char                          *prefix;
    int64_t                        timeout_ms;

    enum redis_state               state;
    int64_t                        since_unix_ms;
    int64_t                        down_mono_ms;
    char                           last_error[LAST_ERROR_MAX];
    int                            warned;  /* this outage has been logged */
    int64_t                        backoff_ms;

    redisAsyncContext             *cmd, *sub;
    int                            cmd_ready, sub_ready;
    struct rcall                  *head, *tail;
    struct event                  *ev_retry;   /* DOWN: backoff; CONNECTING: deadline */
    struct event                  *ev_watch;   /* the oldest reply's deadline */
    struct event                  *ev_beat;    /* heartbeat, while UP */
    struct evdns_base             *dns;
    struct resolve                *resolving;
    int                            flushing;   /* inside flush() */
    struct later                  *later;      /* answers deferred by flush() */
    struct event                  *ev_later;

    json_t                        *replicas;   /* last list read */
    uint64_t                       errors, timeouts, connects, received, published;
};

static void go_down(struct session_redis *r, const char *why);
static void on_reply(redisAsyncContext *ac, void *reply, void *priv);
static int send_get(struct session_redis *r, struct session_call *get, const char *key,
                    int recheck);

static const char *state_name(enum redis_state st)
{
    return st == RS_UP ? "up" : st == RS_CONNECTING ? "connecting" : "down";
}

/* "<prefix><a><b>" in a new string, or NULL. */
static char *rkey(const struct session_redis *r, const char *a, const char *b)
{
    size_t pl = strlen(r->prefix), al = strlen(a), bl = strlen(b);
    char *k = malloc(pl + al + bl + 1);

    if (k == NULL)
        return NULL;
    memcpy(k, r->prefix, pl);
    memcpy(k + pl, a, al);
    memcpy(k + pl + al, b, bl + 1);
    return k;
}

/* Pub/sub ignores SELECT: the channel carries the database number, so
 * deployments on other databases of the same server do not hear us. */
static char *channel(const struct session_redis *r)
{
    char db[INT_TEXT_MAX];

    snprintf(db, sizeof(db), "%d", r->url.db);
    return rkey(r, "events:", db);
}

/* hiredis wants lengths; every word here is a C string. Returns lens
 * (`small` or allocated: the caller frees it unless it is `small`). */
static size_t *word_lengths(int argc, const char **argv, size_t *small)
{
    size_t *lens = argc <= SMALL_ARGV ? small : malloc((size_t)argc * sizeof(*lens));
    int i;

    for (i = 0; lens != NULL && i < argc; i++)
        lens[i] = strlen(argv[i]);
    return lens;
}

/* A command on the sub connection, its replies to fn. */
static int sub_cmd(struct session_redis *r, redisCallbackFn *fn, int argc, const char **argv)
{
    size_t small[SMALL_ARGV], *lens = word_lengths(argc, argv, small);
    int rc = lens ? redisAsyncCommandArgv(r->sub, fn, r, argc, argv, lens) : REDIS_ERR;

    if (lens != small)
        free(lens);
    return rc == REDIS_OK ? 0 : -1;
}

static void rcall_free(struct rcall *c)
{
    size_t i;

    for (i = 0; i < c->nnames; i++)
        free(c->names[i]);
    free(c->names);
    free(c);
}

/*
 * Sends a command on the cmd connection with its reply expected within the
 * timeout. Takes ownership of names (also on failure). NULL when not sent;
 * the caller then owns `get`.
 */
static struct rcall *send_cmd(struct session_redis *r, enum call_type type, int argc,
                              const char **argv, char **names, size_t nnames)
{
    size_t small[SMALL_ARGV], *lens = word_lengths(argc, argv, small), i;
    struct rcall *c;
    int rc;

    c = r->cmd && lens ? calloc(1, sizeof(*c)) : NULL;
    if (c == NULL) {
        if (lens != small)
            free(lens);
        for (i = 0; i < nnames; i++)
            free(names[i]);
        free(names);
        return NULL;
    }
    c->r = r;
    c->type = type;
    c->deadline = mono_ms() + r->timeout_ms;
    c->names = names;
    c->nnames = nnames;
    rc = redisAsyncCommandArgv(r->cmd, on_reply, c, argc, argv, lens);
    if (lens != small)
        free(lens);
    if (rc != REDIS_OK) {
        rcall_free(c);
        return NULL;
    }
    if (r->tail)
        r->tail->next = c;
    else
        r->head = c;
    r->tail = c;
    if (!evtimer_pending(r->ev_watch, NULL))
        timer_arm(r->ev_watch, r->timeout_ms);
    return c;
}

/* A command whose answer is only checked for errors. */
static int send_write(struct session_redis *r, int argc, const char **argv)
{
    return send_cmd(r, CALL_WRITE, argc, argv, NULL, 0) ? 0 : -1;
}

/* GET key for a lookup; 0 when sent (the reply answers get). */
static int send_get(struct session_redis *r, struct session_call *get, const char *key,
                    int recheck)
{
    const char *argv[2] = { "GET", key };
    char **names = malloc(sizeof(*names));
    struct rcall *c;

    if (names == NULL || (names[0] = strdup(key)) == NULL) {
        free(names);
        return -1;
    }
    c = send_cmd(r, CALL_GET, 2, argv, names, 1);
    if (c == NULL)
        return -1;
    c->get = get;
    c->recheck = recheck;
    return 0;
}

/* SET key value PX ms */
static int send_set_px(struct session_redis *r, const char *key, const char *value, int64_t ms)
{
    char px[INT_TEXT_MAX];
    const char *argv[5] = { "SET", key, value, "PX", px };

    snprintf(px, sizeof(px), "%lld", (long long)(ms > 0 ? ms : 1));
    return send_write(r, 5, argv);
}

static void fifo_remove(struct session_redis *r, struct rcall *c)
{
    struct rcall **pp, *prev = NULL;

    for (pp = &r->head; *pp; prev = *pp, pp = &(*pp)->next) {
        if (*pp == c) {
            *pp = c->next;
            if (r->tail == c)
                r->tail = prev;
            c->next = NULL;
            return;
        }
    }
}

static void set_error(struct session_redis *r, const char *what, const char *detail)
{
    snprintf(r->last_error, sizeof(r->last_error), "%s%s%s", what,
             detail && detail[0] ? ": " : "", detail ? detail : "");
}

/* ---- registry and shared advice ----------------------------------------------- */

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

/* SMEMBERS of an index SET; the reply drives the MGET. */
static void read_index(struct session_redis *r, const char *set, enum call_type type)
{
    char *k = rkey(r, set, "");
    const char *argv[2] = { "SMEMBERS", k };

    if (k != NULL)
        send_cmd(r, type, 2, argv, NULL, 0);
    free(k);
}

static void heartbeat(struct session_redis *r)
{
    json_t *o;
    char *js, *key, *set;
    const char *argv[3];

    o = json_pack("{s:s, s:s, s:I, s:I, s:I}", "id", r->self->id,
                  "address", r->self->address,
                  "started_unix_ms", (json_int_t)r->self->started_unix_ms,
                  "heartbeat_unix_ms", (json_int_t)unix_ms(),
                  "generation", (json_int_t)r->self->generation);
    js = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    key = rkey(r, "replica:", r->self->id);
    set = rkey(r, "replicas", "");
    if (js != NULL && key != NULL && set != NULL) {
        send_set_px(r, key, js, REPLICA_TTL_MS);
        argv[0] = "SADD";
        argv[1] = set;
        argv[2] = r->self->id;
        send_write(r, 3, argv);
    }
    free(js);
    free(key);
    free(set);
    read_index(r, "replicas", CALL_REPLICA_IDS);
}

static void on_beat(evutil_socket_t fd, short what, void *arg)
{
    struct session_redis *r = arg;

    (void)fd;
    (void)what;
    if (r->state != RS_UP)
        return;
    heartbeat(r);
    timer_arm(r->ev_beat, HEARTBEAT_MS);
}

/* SMEMBERS answered: MGET the keys of the members. */
static void index_members(struct session_redis *r, redisReply *reply, const char *part,
                          enum call_type next)
{
    const char **argv;
    size_t i, n = 0;
    char **names;

    if (reply->type != REDIS_REPLY_ARRAY)
        return;
    if (reply->elements == 0) {
        if (next == CALL_REPLICAS) {
            json_decref(r->replicas);
            r->replicas = json_array();
        }
        return;
    }
    argv = calloc(reply->elements + 1, sizeof(*argv));
    names = calloc(reply->elements, sizeof(*names));
    if (argv == NULL || names == NULL)
        goto out;
    argv[0] = "MGET";
    for (i = 0; i < reply->elements; i++) {
        redisReply *e = reply->element[i];

        if (e->type != REDIS_REPLY_STRING)
            continue;
        names[n] = strndup(e->str, e->len);
        if (names[n] == NULL || (argv[n + 1] = rkey(r, part, names[n])) == NULL) {
            free(names[n]);
            break;
        }
        n++;
    }
    if (n > 0) {
        send_cmd(r, next, (int)n + 1, argv, names, n);
        names = NULL;                   /* the call owns them now */
    }
    for (i = 0; i < n; i++)
        free((char *)argv[i + 1]);
out:
    if (names != NULL) {
        for (i = 0; i < n; i++)
            free(names[i]);
        free(names);
    }
    free(argv);
}

/* SREM the members whose keys have expired. */
static void index_prune(struct session_redis *r, const char *set, char **gone, size_t n)
{
    const char **argv;
    size_t i;
    char *k;

    if (n == 0)
        return;
    argv = calloc(n + 2, sizeof(*argv));
    k = rkey(r, set, "");
    if (argv != NULL && k != NULL) {
        argv[0] = "SREM";
        argv[1] = k;
        for (i = 0; i < n; i++)
            argv[i + 2] = gone[i];
        send_write(r, (int)n + 2, argv);
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

static void replicas_read(struct session_redis *r, struct rcall *c, redisReply *reply)
{
    json_t *list = json_array(), *o;
    char **gone = calloc(c->nnames ? c->nnames : 1, sizeof(*gone));
    size_t i, ngone = 0;

    if (list == NULL || gone == NULL || reply->type != REDIS_REPLY_ARRAY) {
        json_decref(list);
        free(gone);
        return;
    }
    for (i = 0; i < reply->elements && i < c->nnames; i++) {
        redisReply *e = reply->element[i];

        if (e->type == REDIS_REPLY_STRING && (o = replica_parse(e->str, e->len)) != NULL)
            json_array_append_new(list, o);
        else if (e->type == REDIS_REPLY_NIL)
            gone[ngone++] = c->names[i];
    }
    json_decref(r->replicas);
    r->replicas = list;
    index_prune(r, "replicas", gone, ngone);
    free(gone);
}

/* Parses advice or a replica_up; delivers advice from others still in force. */
static void shared_apply(struct session_redis *r, const char *s, size_t len)
{
    json_t *o = json_loadb(s, len, 0, NULL);
    const char *type = json_string_value(json_object_get(o, "type"));
    const char *name = json_string_value(json_object_get(o, "name"));
    const char *from = json_string_value(json_object_get(o, "from"));
    json_t *until = json_object_get(o, "until");
    struct session_shared ev;

    if (type == NULL || from == NULL || strcmp(from, r->self->id) == 0) {
        json_decref(o);
        return;
    }
    if (strcmp(type, "replica_up") == 0) {
        if (r->state == RS_UP)
            read_index(r, "replicas", CALL_REPLICA_IDS);
        json_decref(o);
        return;
    }
    if (name == NULL || !json_is_integer(until) || shared_type_parse(type, &ev.type) != 0
        || json_integer_value(until) <= unix_ms()) {
        json_decref(o);
        return;
    }
    ev.name = name;
    ev.until_unix_ms = (int64_t)json_integer_value(until);
    ev.replica = from;
    r->received++;
    session_shared_received(r->s, &ev);
    json_decref(o);
}

static void shared_read(struct session_redis *r, struct rcall *c, redisReply *reply)
{
    char **gone = calloc(c->nnames ? c->nnames : 1, sizeof(*gone));
    size_t i, ngone = 0;

    if (gone == NULL || reply->type != REDIS_REPLY_ARRAY) {
        free(gone);
        return;
    }
    for (i = 0; i < reply->elements && i < c->nnames; i++) {
        redisReply *e = reply->element[i];

        if (e->type == REDIS_REPLY_STRING)
            shared_apply(r, e->str, e->len);
        else if (e->type == REDIS_REPLY_NIL)
            gone[ngone++] = c->names[i];
    }
    index_prune(r, "shared", gone, ngone);
    free(gone);
}

static int publish_json(struct session_redis *r, const char *js)
{
    char *chan = channel(r);
    const char *argv[3] = { "PUBLISH", chan, js };
    int rc = chan ? send_write(r, 3, argv) : -1;

    free(chan);
    return rc;
}

static void announce(struct session_redis *r)
{
    json_t *o = json_pack("{s:s, s:s}", "type", "replica_up", "from", r->self->id);
    char *js = o ? json_dumps(o, JSON_COMPACT) : NULL;

    if (js != NULL)
        publish_json(r, js);
    free(js);
    json_decref(o);
}

/* ---- connection life ----------------------------------------------------------- */

static void go_up(struct session_redis *r)
{
    r->state = RS_UP;
    r->since_unix_ms = unix_ms();
    r->backoff_ms = BACKOFF_MIN_MS;
    r->connects++;
    evtimer_del(r->ev_retry);
    if (r->warned)
        log_info("sessions: redis %s is back after %lld ms; sharing resumed",
                 r->url.shown, (long long)(mono_ms() - r->down_mono_ms));
    else
        log_info("sessions: redis %s connected as replica %s", r->url.shown, r->self->id);
    r->warned = 0;
    r->last_error[0] = '\0';
    heartbeat(r);
    timer_arm(r->ev_beat, HEARTBEAT_MS);
    read_index(r, "shared", CALL_SHARED_IDS);
    announce(r);
}

static void maybe_up(struct session_redis *r)
{
    if (r->state == RS_CONNECTING && r->cmd_ready && r->sub_ready)
        go_up(r);
}

static void abandon_resolve(struct session_redis *r)
{
    if (r->resolving == NULL)
        return;
    r->resolving->r = NULL;             /* its callback frees it */
    r->resolving = NULL;
}

/*
 * Forgets both connections: answers every lookup awaiting Redis from
 * memory, then frees the contexts we still hold (their callbacks find the
 * calls abandoned and only release them).
 */
static void answer_later(struct session_redis *r)
{
    struct later *l;

    while ((l = r->later) != NULL) {
        r->later = l->next;
        session_get_done(l->get, SESSION_REDIS_FAILED, NULL);
        free(l);
    }
}

static void on_later(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    answer_later(arg);
}

/* A lookup Redis will not answer: answer it from memory, now, or on the
 * next loop turn when we are inside flush() (a put must not run other
 * requests' callbacks before it returns). */
static void answer_failed(struct session_redis *r, struct session_call *get)
{
    struct later *l = r->flushing ? malloc(sizeof(*l)) : NULL;

    if (l == NULL) {
        session_get_done(get, SESSION_REDIS_FAILED, NULL);
        return;
    }
    l->get = get;
    l->next = r->later;
    r->later = l;
    event_active(r->ev_later, EV_TIMEOUT, 0);
}

/*
 * Writes what is queued on the cmd connection now rather than on the next
 * loop turn, so a put is on its way to Redis before session_put() returns:
 * a client that gets its answer and at once asks another replica finds
 * the session there. Not from inside a callback of that connection.
 */
static void flush(struct session_redis *r)
{
    if (r->state != RS_UP || r->cmd == NULL || (r->cmd->c.flags & REDIS_IN_CALLBACK))
        return;
    r->flushing++;
    redisAsyncHandleWrite(r->cmd);      /* on a write error hiredis drops it */
    r->flushing--;
}

static void drop_connections(struct session_redis *r)
{
    redisAsyncContext *cmd = r->cmd, *sub = r->sub;
    struct rcall *c, *fifo = r->head;
    struct session_call *get;

    r->cmd = r->sub = NULL;
    r->head = r->tail = NULL;
    r->cmd_ready = r->sub_ready = 0;
    evtimer_del(r->ev_watch);
    evtimer_del(r->ev_beat);
    evtimer_del(r->ev_retry);
    abandon_resolve(r);
    for (c = fifo; c != NULL; c = c->next) {
        c->r = NULL;
        get = c->get;
        c->get = NULL;
        if (get != NULL)
            answer_failed(r, get);
    }
    if (cmd != NULL)
        redisAsyncFree(cmd);
    if (sub != NULL)
        redisAsyncFree(sub);
}

static void go_down(struct session_redis *r, const char *why)
{
    enum redis_state was = r->state;

    if (was == RS_DOWN)
        return;
    r->state = RS_DOWN;
    r->since_unix_ms = unix_ms();
    if (why != NULL)
        set_error(r, why, NULL);
    if (!r->warned) {
        log_warn("sessions: redis %s %s (%s); serving sessions from local memory until it is back",
                 r->url.shown, was == RS_UP ? "lost" : "unavailable", r->last_error);
        r->warned = 1;
        r->down_mono_ms = mono_ms();
    } else {
        log_debug("sessions: redis %s still unavailable (%s)", r->url.shown, r->last_error);
    }
    drop_connections(r);
    timer_arm(r->ev_retry, r->backoff_ms);
    r->backoff_ms = r->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : r->backoff_ms * 2;
}

/* One of our two connections failed or closed: hiredis frees it; the
 * session answers from memory and reconnects with backoff. */
static void connection_lost(const redisAsyncContext *ac, const char *what)
{
    struct session_redis *r = ac->data;

    if (ac == r->cmd)
        r->cmd = NULL;
    else if (ac == r->sub)
        r->sub = NULL;
    else
        return;
    r->errors++;
    set_error(r, what, ac->errstr);
    go_down(r, NULL);
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    if (status != REDIS_OK)             /* readiness comes with PING/SUBSCRIBE */
        connection_lost(ac, "connect");
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    (void)status;
    connection_lost(ac, "connection lost");
}

/* Every reply on the cmd connection. */
static void on_reply(redisAsyncContext *ac, void *reply_, void *priv)
{
    struct rcall *c = priv;
    struct session_redis *r = c->r;
    redisReply *reply = reply_;
    struct session_call *get = c->get;

    if (r == NULL) {                    /* abandoned: its answer was given */
        rcall_free(c);
        return;
    }
    fifo_remove(r, c);
    c->get = NULL;
    if (reply == NULL) {                /* the context is going away */
        if (ac == r->cmd)
            r->cmd = NULL;
        r->errors++;
        set_error(r, "connection lost", ac->errstr);
        if (get != NULL)
            answer_failed(r, get);
        rcall_free(c);
        go_down(r, NULL);
        return;
    }
    if (reply->type == REDIS_REPLY_ERROR) {
        r->errors++;
        switch (c->type) {
        case CALL_AUTH:
            set_error(r, "AUTH failed (check the password in sessions.redis.url)", reply->str);
            break;
        case CALL_SELECT:
            set_error(r, "SELECT failed", reply->str);
            break;
        case CALL_READY:
            set_error(r, "PING failed", reply->str);
            break;
        default:
            set_error(r, "error reply", reply->str);
            log_debug("sessions: redis error reply: %s", reply->str);
            if (get != NULL)
                session_get_done(get, SESSION_REDIS_FAILED, NULL);
            rcall_free(c);
            return;
        }
        rcall_free(c);
        go_down(r, NULL);
        return;
    }
    switch (c->type) {
    case CALL_READY:
        r->cmd_ready = 1;
        maybe_up(r);
        break;
    case CALL_GET:
        if (get == NULL)
            break;
        if (reply->type == REDIS_REPLY_STRING)
            session_get_done(get, SESSION_REDIS_HIT, reply->str);
        else if (!c->recheck || send_get(r, get, c->names[0], 0) != 0)
            session_get_done(get, SESSION_REDIS_MISS, NULL);
        break;
    case CALL_REPLICA_IDS:
        index_members(r, reply, "replica:", CALL_REPLICAS);
        break;
    case CALL_REPLICAS:
        replicas_read(r, c, reply);
        break;
    case CALL_SHARED_IDS:
        index_members(r, reply, "shared:", CALL_SHARED);
        break;
    case CALL_SHARED:
        shared_read(r, c, reply);
        break;
    case CALL_AUTH:
    case CALL_SELECT:
    case CALL_WRITE:
        break;
    }
    rcall_free(c);
}

/* The sub connection: its AUTH reply. */
static void on_sub_auth(redisAsyncContext *ac, void *reply_, void *priv)
{
    struct session_redis *r = priv;
    redisReply *reply = reply_;

    if (ac != r->sub)
        return;
    if (reply == NULL) {
        r->sub = NULL;                  /* hiredis frees it */
        r->errors++;
        set_error(r, "connection lost", ac->errstr);
        go_down(r, NULL);
    } else if (reply->type == REDIS_REPLY_ERROR) {
        r->errors++;
        set_error(r, "AUTH failed (check the password in sessions.redis.url)", reply->str);
        go_down(r, NULL);
    }
}

/* The sub connection: subscription confirmed, then messages. */
static void on_sub_message(redisAsyncContext *ac, void *reply_, void *priv)
{
    struct session_redis *r = priv;
    redisReply *reply = reply_, *kind;

    if (ac != r->sub)
        return;
    if (reply == NULL) {
        r->sub = NULL;                  /* hiredis frees it */
        r->errors++;
        set_error(r, "subscription lost", ac->errstr);
        go_down(r, NULL);
        return;
    }
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements < 3)
        return;
    kind = reply->element[0];
    if (kind->type != REDIS_REPLY_STRING)
        return;
    if (strcmp(kind->str, "subscribe") == 0) {
        r->sub_ready = 1;
        maybe_up(r);
    } else if (strcmp(kind->str, "message") == 0
               && reply->element[2]->type == REDIS_REPLY_STRING) {
        shared_apply(r, reply->element[2]->str, reply->element[2]->len);
    }
}

static redisAsyncContext *open_ctx(struct session_redis *r, const char *addr)
{
    redisAsyncContext *ac;

    ac = r->url.path ? redisAsyncConnectUnix(r->url.path)
                     : redisAsyncConnect(addr, r->url.port);
    if (ac == NULL) {
        set_error(r, "connect", "out of memory");
        return NULL;
    }
    if (ac->err) {
        set_error(r, "connect", ac->errstr);
        redisAsyncFree(ac);
        return NULL;
    }
    ac->data = r;
    if (redisLibeventAttach(ac, r->base) != REDIS_OK) {
        set_error(r, "connect", "cannot attach to the event loop");
        redisAsyncFree(ac);
        return NULL;
    }
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    return ac;
}

static int auth_argv(const struct session_redis *r, const char **argv)
{
    int n = 0;

    argv[n++] = "AUTH";
    if (r->url.user != NULL)
        argv[n++] = r->url.user;
    argv[n++] = r->url.pass;
    return n;
}

/* Opens both connections to addr (NULL for a unix socket) and queues the
 * handshake; hiredis sends it once connected. */
static void connect_to(struct session_redis *r, const char *addr)
{
    const char *argv[3];
    char db[INT_TEXT_MAX], *chan;
    int n;

    r->cmd = open_ctx(r, addr);
    if (r->cmd != NULL)
        r->sub = open_ctx(r, addr);
    if (r->cmd == NULL || r->sub == NULL) {
        r->errors++;
        go_down(r, NULL);
        return;
    }
    if (r->url.pass != NULL) {
        n = auth_argv(r, argv);
        send_cmd(r, CALL_AUTH, n, argv, NULL, 0);
        sub_cmd(r, on_sub_auth, n, argv);
    }
    if (r->url.db != 0) {
        snprintf(db, sizeof(db), "%d", r->url.db);
        argv[0] = "SELECT";
        argv[1] = db;
        send_cmd(r, CALL_SELECT, 2, argv, NULL, 0);
    }
    argv[0] = "PING";
    chan = channel(r);
    if (send_cmd(r, CALL_READY, 1, argv, NULL, 0) == NULL || chan == NULL) {
        free(chan);
        set_error(r, "connect", "cannot queue the handshake");
        go_down(r, NULL);
        return;
    }
    argv[0] = "SUBSCRIBE";
    argv[1] = chan;
    if (sub_cmd(r, on_sub_message, 2, argv) != 0) {
        free(chan);
        set_error(r, "connect", "cannot subscribe");
        go_down(r, NULL);
        return;
    }
    free(chan);
}

/* Picks an IPv4 answer if there is one, else the first. */
static void on_resolved(int result, struct evutil_addrinfo *res, void *arg)
{
    struct resolve *rs = arg;
    struct session_redis *r = rs->r;
    struct evutil_addrinfo *ai, *pick = NULL;
    char addr[ADDR_MAX] = "";

    if (r != NULL) {
        r->resolving = NULL;
        for (ai = result == 0 ? res : NULL; ai != NULL; ai = ai->ai_next) {
            if (ai->ai_family == AF_INET && pick == NULL)
                pick = ai;
        }
        if (pick == NULL && result == 0)
            pick = res;
        if (pick != NULL && pick->ai_family == AF_INET)
            evutil_inet_ntop(AF_INET, &((struct sockaddr_in *)(void *)pick->ai_addr)->sin_addr,
                             addr, sizeof(addr));
        else if (pick != NULL && pick->ai_family == AF_INET6)
            evutil_inet_ntop(AF_INET6, &((struct sockaddr_in6 *)(void *)pick->ai_addr)->sin6_addr,
                             addr, sizeof(addr));
    }
    if (res != NULL)
        evutil_freeaddrinfo(res);
    free(rs);
    if (r == NULL)
        return;
    if (addr[0] == '\0') {
        r->errors++;
        set_error(r, "cannot resolve host",
                  result ? evutil_gai_strerror(result) : "no address");
        go_down(r, NULL);
        return;
    }
    connect_to(r, addr);
}

static int is_numeric_host(const char *h)
{
    unsigned char buf[sizeof(struct in6_addr)];

    return inet_pton(AF_INET, h, buf) == 1 || inet_pton(AF_INET6, h, buf) == 1;
}

static void start_connect(struct session_redis *r)
{
    struct evutil_addrinfo hints;
    struct resolve *rs;

    r->state = RS_CONNECTING;
    r->since_unix_ms = unix_ms();
    timer_arm(r->ev_retry, r->timeout_ms);      /* the whole handshake */
    if (r->url.path != NULL || is_numeric_host(r->url.host)) {
        connect_to(r, r->url.host);
        return;
    }
    if (r->dns == NULL)
        r->dns = evdns_base_new(r->base, EVDNS_BASE_INITIALIZE_NAMESERVERS
                                         | EVDNS_BASE_DISABLE_WHEN_INACTIVE);
    rs = r->dns ? calloc(1, sizeof(*rs)) : NULL;
    if (rs == NULL) {
        r->errors++;
        set_error(r, "cannot resolve host", "no resolver");
        go_down(r, NULL);
        return;
    }
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_protocol = IPPROTO_TCP;
    rs->r = r;
    r->resolving = rs;
    /* Numeric hosts and /etc/hosts entries call back before this returns. */
    evdns_getaddrinfo(r->dns, r->url.host, NULL, &hints, on_resolved, rs);
}

/* ev_retry: DOWN -> try again; CONNECTING -> the handshake took too long. */
static void on_retry(evutil_socket_t fd, short what, void *arg)
{
    struct session_redis *r = arg;

    (void)fd;
    (void)what;
    if (r->state == RS_DOWN) {
        log_debug("sessions: reconnecting to redis %s", r->url.shown);
        start_connect(r);
    } else if (r->state == RS_CONNECTING) {
        r->timeouts++;
        snprintf(r->last_error, sizeof(r->last_error),
                 "no answer while connecting within %lld ms", (long long)r->timeout_ms);
        go_down(r, NULL);
    }
}

/* ev_watch: is the oldest reply late? */
static void on_watch(evutil_socket_t fd, short what, void *arg)
{
    struct session_redis *r = arg;
    int64_t now = mono_ms();

    (void)fd;
    (void)what;
    if (r->head == NULL)
        return;
    if (r->head->deadline > now) {
        timer_arm(r->ev_watch, r->head->deadline - now);
        return;
    }
    r->timeouts++;
    snprintf(r->last_error, sizeof(r->last_error), "no reply within %lld ms",
             (long long)r->timeout_ms);
    go_down(r, NULL);
}

/* ---- interface to session.c ------------------------------------------------------ */

struct session_redis *session_redis_new(struct session *s, struct event_base *base,
                                        const char *url, const char *prefix,
                                        int64_t timeout_ms,
                                        const struct session_identity *self,
                                        char *err, size_t errlen)
{
    struct session_redis *r;
    const char *why;

    r = calloc(1, sizeof(*r));
    if (r == NULL) {
        snprintf(err, errlen, "sessions: out of memory");
        return NULL;
    }
    why = url_parse(url, &r->url);
    if (why != NULL) {
        snprintf(err, errlen, "sessions.redis.url: %s", why);
        free(r);
        return NULL;
    }
    r->s = s;
    r->base = base;
    r->self = self;
    r->url_text = strdup(url);
    r->prefix = strdup(prefix);
    r->timeout_ms = timeout_ms > 0 ? timeout_ms : 1;
    r->backoff_ms = BACKOFF_MIN_MS;
    r->replicas = json_array();
    r->ev_retry = evtimer_new(base, on_retry, r);
    r->ev_watch = evtimer_new(base, on_watch, r);
    r->ev_beat = evtimer_new(base, on_beat, r);
    r->ev_later = event_new(base, -1, 0, on_later, r);
    if (r->url_text == NULL || r->prefix == NULL || r->replicas == NULL
        || r->ev_retry == NULL || r->ev_watch == NULL || r->ev_beat == NULL
        || r->ev_later == NULL) {
        snprintf(err, errlen, "sessions: out of memory");
        session_redis_free(r);
        return NULL;
    }
    r->state = RS_DOWN;
    start_connect(r);
    return r;
}

void session_redis_free(struct session_redis *r)
{
    if (r == NULL)
        return;
    r->state = RS_DOWN;
    if (r->ev_watch != NULL && r->ev_beat != NULL && r->ev_retry != NULL)
        drop_connections(r);
    abandon_resolve(r);
    answer_later(r);
    if (r->ev_later)
        event_free(r->ev_later);
    if (r->ev_retry)
        event_free(r->ev_retry);
    if (r->ev_watch)
        event_free(r->ev_watch);
    if (r->ev_beat)
        event_free(r->ev_beat);
    if (r->dns != NULL)
        evdns_base_free(r->dns, 1);     /* pending lookups fail: their callbacks free them */
    json_decref(r->replicas);
    url_clear(&r->url);
    free(r->url_text);
    free(r->prefix);
    free(r);
}

void session_redis_set_timeout(struct session_redis *r, int64_t timeout_ms)
{
    r->timeout_ms = timeout_ms > 0 ? timeout_ms : 1;
}

int session_redis_up(const struct session_redis *r)
{
    return r->state == RS_UP;
}

int session_redis_same(const struct session_redis *r, const char *url, const char *prefix)
{
    return url != NULL && strcmp(r->url_text, url) == 0
           && strcmp(r->prefix, prefix ? prefix : "") == 0;
}

static const char *kind_part(enum session_kind kind)
{
    return kind == SESSION_STICKY ? "sticky:" : "rid:";
}

/*
 * A miss gets a second look. Redis keeps the order of the commands of one
 * connection, not across connections: a client answered by another
 * replica can ask us while that replica's SET, already written (see
 * flush()), still waits behind our GET on the server. The second GET
 * leaves after the first answer; by then the SET has been read. It costs
 * one round trip, on misses only: a response id (verification must reach
 * the same host) and a sticky key (a miss would rebalance the user and
 * overwrite the binding) are both worth it.
 */
int session_redis_get(struct session_redis *r, struct session_call *c,
                      enum session_kind kind, const char *key)
{
    char *k;
    int rc;

    if (r->state != RS_UP || (k = rkey(r, kind_part(kind), key)) == NULL)
        return -1;
    rc = send_get(r, c, k, 1);
    free(k);
    return rc;
}

int session_redis_put(struct session_redis *r, enum session_kind kind,
                      const char *key, const char *host, int64_t ttl_ms)
{
    char *k;
    int rc;

    if (r->state != RS_UP || (k = rkey(r, kind_part(kind), key)) == NULL)
        return -1;
    rc = send_set_px(r, k, host, ttl_ms);
    free(k);
    flush(r);
    return rc;
}

int session_redis_publish(struct session_redis *r, const struct session_shared *ev)
{
    const char *type = shared_type_name(ev->type), *argv[3];
    int64_t ttl = ev->until_unix_ms - unix_ms();
    char *item = NULL, *key = NULL, *set = NULL, *js = NULL;
    json_t *o;
    int rc = -1;

    if (r->state != RS_UP || ttl <= 0)
        return -1;
    o = json_pack("{s:s, s:s, s:I, s:s}", "type", type, "name", ev->name,
                  "until", (json_int_t)ev->until_unix_ms, "from", r->self->id);
    js = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    item = malloc(strlen(type) + 1 + strlen(ev->name) + 1);
    if (js == NULL || item == NULL)
        goto out;
    sprintf(item, "%s:%s", type, ev->name);
    key = rkey(r, "shared:", item);
    set = rkey(r, "shared", "");
    if (key == NULL || set == NULL || send_set_px(r, key, js, ttl) != 0)
        goto out;
    argv[0] = "SADD";
    argv[1] = set;
    argv[2] = item;
    send_write(r, 3, argv);
    rc = publish_json(r, js);
    if (rc == 0)
        r->published++;
    flush(r);
out:
    free(js);
    free(item);
    free(key);
    free(set);
    return rc;
}

void session_redis_counters(const struct session_redis *r, struct session_redis_counters *out)
{
    memset(out, 0, sizeof(*out));
    out->errors = r->errors;
    out->timeouts = r->timeouts;
    out->connects = r->connects;
    out->received = r->received;
    out->published = r->published;
    out->replicas = json_array_size(r->replicas);
    out->up = r->state == RS_UP;
}

json_t *session_redis_status_json(const struct session_redis *r)
{
    return json_pack("{s:s, s:s, s:s, s:I, s:s, s:I, s:I, s:I, s:I}",
                     "url", r->url.shown, "prefix", r->prefix,
                     "state", state_name(r->state),
                     "since_unix_ms", (json_int_t)r->since_unix_ms,
                     "last_error", r->last_error,
                     "timeout_ms", (json_int_t)r->timeout_ms,
                     "errors", (json_int_t)r->errors,
                     "timeouts", (json_int_t)r->timeouts,
                     "connects", (json_int_t)r->connects);
}

json_t *session_redis_replicas_json(const struct session_redis *r)
{
    return json_deep_copy(r->replicas);
}
