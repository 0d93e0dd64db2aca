/*
 * redis_conn.c -- the Redis connection of the shared state (see
 * redis_conn.h): sessions.redis parsed and checked, the two hiredis async
 * connections on the libevent loop, their handshake, timeouts,
 * reconnection with backoff, Sentinel and the synchronous credentials
 * check. It knows nothing of sessions or replicas: its users
 * (session_redis.c, replicas.c) send commands with a reply callback and
 * get the connection's up and message events through the callbacks they
 * gave redis_conn_new(). Never blocks, never fails a request.
 *
 * Two connections: `cmd` for commands, `sub` SUBSCRIBEd to the events
 * channel, "<prefix>events:<db>" (pub/sub ignores SELECT, hence the db).
 *
 * Timeouts without a timer per call: replies on a connection come back in
 * the order the commands went out, so the commands awaiting a reply form a
 * FIFO and one watchdog timer follows the oldest. If it is older than
 * sessions.redis.timeout, Redis is slow or gone: the connection goes down
 * at once (every pending call is told it failed) and reconnects.
 *
 * States: CONNECTING (resolve, connect, AUTH, SELECT, ROLE, PING,
 * SUBSCRIBE, all within one timeout) -> UP -> DOWN (backoff timer,
 * BACKOFF_MIN_MS doubling to BACKOFF_MAX_MS) -> CONNECTING ... A server
 * whose ROLE is not master is not used (without sentinels, a user not
 * allowed ROLE is trusted to name the master). One warning
 * when Redis goes away (or is not there at start), one info line when it
 * is back; failed retries in between log at debug level only.
 *
 * Credentials: the url's, or sessions.redis.username/password (AUTH with
 * one or two words: Redis 6 ACL users). session_redis_check_auth() tries
 * them synchronously at start-up and in the reload thread, so that a
 * refused password is a start-up or reload error, not a silent fallback.
 *
 * Sentinel (sessions.redis.sentinels + master_name): CONNECTING first asks
 * the sentinels in turn, starting with the one that answered last, each
 * within the timeout, `SENTINEL get-master-addr-by-name` on a short-lived
 * connection (`ask`); the answer is connected to, and the handshake checks
 * with ROLE that it is the master. A second connection (`watch`) stays
 * SUBSCRIBEd to +switch-master on one sentinel: a switch of our master
 * moves the connection at once (calls waiting on the old one are told
 * they failed). Every connection error asks the sentinels again; a
 * READONLY reply (a master demoted under us) too, so nothing is written
 * to a replica. While no master is known the connection is DOWN. A lost
 * watch moves to the next sentinel (a whole round failed: again after
 * SENTINEL_RETRY_MS) and, once subscribed again while up, asks once more
 * in case a switch passed unwatched. Failovers followed = times the
 * connection came up on another master than before.
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

#include "clock.h"
#include "config.h"
#include "log.h"
#include "redis_conn.h"
#include "session.h"     /* session_redis_url_problem() and the other checks */
#include "utf8.h"

#define BACKOFF_MIN_MS      100
#define BACKOFF_MAX_MS      2000
#define REDIS_DEFAULT_PORT  6379
#define SENTINEL_DEFAULT_PORT 26379
#define REDIS_SCHEME        "redis://"
#define UNIX_SCHEME         "unix:"
#define MAX_DB_DIGITS       6
#define DB_MAX              999999      /* MAX_DB_DIGITS nines */
#define PORT_MAX            65535
#define LAST_ERROR_MAX      200
#define ADDR_MAX            64          /* a numeric IPv4 or IPv6 address */
#define HOST_TEXT_MAX       320         /* a host name or url shown, with a little text */
#define SENTINEL_RETRY_MS   1000        /* a round of sentinels failed while up: again */
#define INT_TEXT_MAX        24          /* an int64 in decimal, with its NUL */
#define SMALL_ARGV          8           /* commands up to this many words use the stack */
#define MS_PER_S            1000
#define US_PER_MS           1000

static const char URL_EXPECTED[] =
    "expected redis://[[user]:password@]host[:port][/db] or unix:/path";

/* ---- clocks ----------------------------------------------------------------- */

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
        if (end - p < 3 || (hi = utf8_hexval((unsigned char)p[1])) < 0
            || (lo = utf8_hexval((unsigned char)p[2])) < 0) {
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

/* u->shown for a TCP url: the password as ***. */
static const char *url_show(struct redis_url *u)
{
    size_t len = strlen(REDIS_SCHEME) + strlen(u->user ? u->user : "") + strlen(u->host)
                 + sizeof(":***@[]:65535/") + MAX_DB_DIGITS;
    int v6 = strchr(u->host, ':') != NULL;

    free(u->shown);
    u->shown = malloc(len);
    if (u->shown == NULL)
        return "out of memory";
    snprintf(u->shown, len, "%s%s%s%s%s%s:%d/%d", REDIS_SCHEME,
             u->user ? u->user : "", u->pass ? ":***@" : (u->user ? "@" : ""),
             v6 ? "[" : "", u->host, v6 ? "]" : "", u->port, u->db);
    return NULL;
}

static const char *url_parse_tcp(const char *s, struct redis_url *u)
{
    const char *a = s + strlen(REDIS_SCHEME), *aend, *at = NULL, *h, *hend, *colon, *p;
    long port = REDIS_DEFAULT_PORT, db = 0;

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
    if (u->host == NULL)
        return "out of memory";
    return url_show(u);
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

/* ---- sessions.redis as a whole ------------------------------------------------- */

struct sentinel {
    char *host;         /* name or address, without brackets */
    int   port;
    char *shown;        /* "host:port" */
};

struct redis_conf {
    struct redis_url  url;          /* username/password keys merged in */
    struct sentinel  *sentinels;    /* none: the url names the server */
    size_t            nsentinels;
    char             *master_name;
    char             *sentinel_pass;
};

static void secret_clear(char *s)
{
    if (s != NULL)
        memset(s, 0, strlen(s));
    free(s);
}

static void conf_clear(struct redis_conf *rc)
{
    size_t i;

    url_clear(&rc->url);
    for (i = 0; i < rc->nsentinels; i++) {
        free(rc->sentinels[i].host);
        free(rc->sentinels[i].shown);
    }
    free(rc->sentinels);
    free(rc->master_name);
    secret_clear(rc->sentinel_pass);
    memset(rc, 0, sizeof(*rc));
}

/* "host[:port]" or "[v6addr][:port]"; the port defaults to 26379. */
static const char *sentinel_parse(const char *s, struct sentinel *out)
{
    const char *h = s, *hend, *p;
    long port = SENTINEL_DEFAULT_PORT;
    size_t len;
    int v6;

    if (strpbrk(s, " \t\r\n/@?#") != NULL)
        return "a sentinel is host:port";
    if (*h == '[') {
        hend = strchr(h, ']');
        if (hend == NULL)
            return "unclosed [ in a sentinel address";
        p = hend + 1;
        h++;
    } else {
        hend = strchr(h, ':');
        if (hend != NULL && strchr(hend + 1, ':') != NULL)
            return "a sentinel is host:port ([v6addr]:port for IPv6)";
        if (hend == NULL)
            hend = h + strlen(h);
        p = hend;
    }
    if (hend == h)
        return "missing host in a sentinel address";
    if (*p != '\0' && (*p != ':' || parse_uint(p + 1, p + strlen(p), PORT_MAX, &port) != 0
                       || port == 0))
        return "a sentinel's port must be 1..65535";
    out->host = strndup(h, (size_t)(hend - h));
    out->port = (int)port;
    len = (size_t)(hend - h) + sizeof("[]:65535");
    out->shown = malloc(len);
    if (out->host == NULL || out->shown == NULL)
        return "out of memory";
    v6 = strchr(out->host, ':') != NULL;
    snprintf(out->shown, len, "%s%s%s:%d", v6 ? "[" : "", out->host, v6 ? "]" : "", out->port);
    return NULL;
}

/* NULL and rc filled, or a message, *key the key it is about (rc cleared). */
static const char *conf_parse(const struct config *cfg, struct redis_conf *rc, const char **key)
{
    const struct cfg_strlist *sl = &cfg->sessions.redis_sentinels;
    const char *why;
    size_t i;

    memset(rc, 0, sizeof(*rc));
    *key = "sessions.redis.url";
    if ((why = url_parse(cfg->sessions.redis_url, &rc->url)) != NULL)
        return why;
    if (cfg->sessions.redis_username != NULL && cfg->sessions.redis_password == NULL) {
        *key = "sessions.redis.username";
        why = "needs sessions.redis.password";
        goto fail;
    }
    if (cfg->sessions.redis_password != NULL) {
        *key = "sessions.redis.password";
        if (rc->url.pass != NULL) {
            why = "the url holds a password too: give the credentials in one place";
            goto fail;
        }
        rc->url.pass = strdup(cfg->sessions.redis_password);
        if (cfg->sessions.redis_username != NULL)
            rc->url.user = strdup(cfg->sessions.redis_username);
        if (rc->url.pass == NULL
            || (cfg->sessions.redis_username != NULL && rc->url.user == NULL)) {
            why = "out of memory";
            goto fail;
        }
        if (rc->url.host != NULL && (why = url_show(&rc->url)) != NULL)
            goto fail;
    }
    if (sl->n == 0) {
        *key = cfg->sessions.redis_master_name ? "sessions.redis.master_name"
                                                : "sessions.redis.sentinel_password";
        if (cfg->sessions.redis_master_name != NULL || cfg->sessions.redis_sentinel_password) {
            why = "only used with sessions.redis.sentinels";
            goto fail;
        }
        return NULL;
    }
    *key = "sessions.redis.sentinels";
    if (cfg->sessions.redis_master_name == NULL) {
        why = "needs sessions.redis.master_name (the name the sentinels monitor)";
        goto fail;
    }
    if (rc->url.path != NULL) {
        *key = "sessions.redis.url";
        why = "with sentinels the url must be redis:// (only its database number and"
              " credentials are used; the sentinels name the server)";
        goto fail;
    }
    if (strpbrk(cfg->sessions.redis_master_name, " \t\r\n") != NULL) {
        *key = "sessions.redis.master_name";
        why = "must not contain spaces";
        goto fail;
    }
    rc->sentinels = calloc(sl->n, sizeof(*rc->sentinels));
    if (rc->sentinels == NULL) {
        why = "out of memory";
        goto fail;
    }
    for (i = 0; i < sl->n; i++) {
        rc->nsentinels++;
        if ((why = sentinel_parse(sl->v[i], &rc->sentinels[i])) != NULL)
            goto fail;
    }
    rc->master_name = strdup(cfg->sessions.redis_master_name);
    if (cfg->sessions.redis_sentinel_password != NULL)
        rc->sentinel_pass = strdup(cfg->sessions.redis_sentinel_password);
    if (rc->master_name == NULL
        || (cfg->sessions.redis_sentinel_password != NULL && rc->sentinel_pass == NULL)) {
        why = "out of memory";
        goto fail;
    }
    return NULL;
fail:
    conf_clear(rc);
    return why;
}

const char *session_redis_conf_problem(const struct config *cfg, const char **key)
{
    struct redis_conf rc;
    const char *why = conf_parse(cfg, &rc, key);

    conf_clear(&rc);
    return why;
}

/* Everything that makes a connection different, for redis_conn_same().
 * Holds secrets: wipe it with secret_clear(). */
static char *conf_key(const struct config *cfg)
{
    const char *parts[] = {
        cfg->sessions.redis_url, cfg->sessions.redis_prefix, cfg->sessions.redis_username,
        cfg->sessions.redis_password, cfg->sessions.redis_master_name,
        cfg->sessions.redis_sentinel_password
    };
    const struct cfg_strlist *sl = &cfg->sessions.redis_sentinels;
    size_t len = 1, i, off = 0;
    char *k;

    for (i = 0; i < sizeof(parts) / sizeof(parts[0]); i++)
        len += (parts[i] ? strlen(parts[i]) : 0) + 2;
    for (i = 0; i < sl->n; i++)
        len += strlen(sl->v[i]) + 1;
    if ((k = malloc(len)) == NULL)
        return NULL;
    for (i = 0; i < sizeof(parts) / sizeof(parts[0]); i++)
        off += (size_t)snprintf(k + off, len - off, "%c%s\n", parts[i] ? '=' : '-',
                                parts[i] ? parts[i] : "");
    for (i = 0; i < sl->n; i++)
        off += (size_t)snprintf(k + off, len - off, "%s\n", sl->v[i]);
    return k;
}

/* ---- state --------------------------------------------------------------------- */

enum redis_state { RS_DOWN = 0, RS_CONNECTING, RS_UP };

enum call_type {
    CALL_AUTH = 0,
    CALL_SELECT,
    CALL_ROLE,          /* is it the master? */
    CALL_READY,         /* the PING that ends the handshake */
    CALL_USER           /* a user's command (redis_conn_cmd()) */
};

struct rcall {
    struct rcall         *next;         /* FIFO of the cmd connection */
    struct redis_conn    *r;            /* NULL once abandoned */
    enum call_type        type;
    int64_t               deadline;     /* monotonic ms */
    redis_conn_reply_fn   fn;           /* CALL_USER: called exactly once; NULL once called */
    void                 *arg;
};

/* A failed call whose callback waits for the next loop turn (see flush()). */
struct later {
    struct later        *next;
    redis_conn_reply_fn  fn;
    void                *arg;
};

/*
 * A pending evdns lookup. Giving up on one only clears `r`: the lookup
 * runs to its end (or to evdns_base_free(), which fails it) and its
 * callback frees this. evdns_getaddrinfo_cancel() is not used: its
 * callback comes later and reads the evdns base, which may be gone by then.
 */
struct resolve {
    struct redis_conn    *r;            /* NULL once abandoned */
    struct sen_conn      *sc;           /* a sentinel connection; NULL: the server */
};

/*
 * A connection to one sentinel at a time, trying them in turn: `ask`
 * (SENTINEL get-master-addr-by-name, then closed) or `watch` (SUBSCRIBE
 * +switch-master, kept open).
 */
struct sen_conn {
    struct redis_conn    *r;
    int                   watch;
    redisAsyncContext    *ac;
    struct resolve       *resolving;
    size_t                idx;          /* the sentinel in use */
    size_t                tries;        /* failed in this round */
    int                   ready;        /* watch: subscribed */
    struct event         *ev;           /* the answer's deadline; watch: retry */
};

struct redis_conn {
    struct redis_conn_cbs          cbs;     /* the users (session_redis.c, replicas.c) */
    struct event_base             *base;
    const char                    *who;     /* the replica id, for the log; the caller's */
    char                          *conf_key;   /* conf_key(): holds secrets */
    struct redis_conf              conf;
    char                          *prefix;
    int64_t                        timeout_ms;

    /* The server in use: the url's, or the master the sentinels named. */
    char                          *host;
    int                            port;
    char                           where[HOST_TEXT_MAX];  /* for logs and status */
    char                           found_by[HOST_TEXT_MAX];
    char                           last_master[HOST_TEXT_MAX];  /* "host:port" last up */
    uint64_t                       failovers;

    struct sen_conn                ask, watch;  /* with sentinels */
    char                           sen_error[LAST_ERROR_MAX];
    uint64_t                       sen_errors;
    int                            watch_warned;   /* no sentinel watched: logged */
    char                           last_ctx_error[LAST_ERROR_MAX];  /* open_ctx() */

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
    struct evdns_base             *dns;
    struct resolve                *resolving;
    int                            flushing;   /* inside flush() */
    struct later                  *later;      /* failures deferred by flush() */
    struct event                  *ev_later;

    uint64_t                       errors, timeouts, connects;
};

static void go_down(struct redis_conn *r, const char *why);
static void on_reply(redisAsyncContext *ac, void *reply, void *priv);

static const char *state_name(enum redis_state st)
{
    return st == RS_UP ? "up" : st == RS_CONNECTING ? "connecting" : "down";
}

/* "<prefix><a><b>" in a new string, or NULL. */
static char *rkey(const struct redis_conn *r, const char *a, const char *b)
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
static char *channel(const struct redis_conn *r)
{
    char db[INT_TEXT_MAX];

    snprintf(db, sizeof(db), "%d", r->conf.url.db);
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
static int sub_cmd(struct redis_conn *r, redisCallbackFn *fn, int argc, const char **argv)
{
    size_t small[SMALL_ARGV], *lens = word_lengths(argc, argv, small);
    int rc = lens ? redisAsyncCommandArgv(r->sub, fn, r, argc, argv, lens) : REDIS_ERR;

    if (lens != small)
        free(lens);
    return rc == REDIS_OK ? 0 : -1;
}

/*
 * Sends a command on the cmd connection with its reply expected within the
 * timeout; fn (CALL_USER, may be NULL) gets the reply. NULL when not sent.
 */
static struct rcall *send_cmd(struct redis_conn *r, enum call_type type, int argc,
                              const char **argv, redis_conn_reply_fn fn, void *arg)
{
    size_t small[SMALL_ARGV], *lens = word_lengths(argc, argv, small);
    struct rcall *c;
    int rc;

    c = r->cmd && lens ? calloc(1, sizeof(*c)) : NULL;
    if (c == NULL) {
        if (lens != small)
            free(lens);
        return NULL;
    }
    c->r = r;
    c->type = type;
    c->deadline = gw_now_ms() + r->timeout_ms;
    c->fn = fn;
    c->arg = arg;
    rc = redisAsyncCommandArgv(r->cmd, on_reply, c, argc, argv, lens);
    if (lens != small)
        free(lens);
    if (rc != REDIS_OK) {
        free(c);
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
static int send_write(struct redis_conn *r, int argc, const char **argv)
{
    return send_cmd(r, CALL_USER, argc, argv, NULL, NULL) ? 0 : -1;
}

/* SET key value PX ms */
static int send_set_px(struct redis_conn *r, const char *key, const char *value, int64_t ms)
{
    char px[INT_TEXT_MAX];
    const char *argv[5] = { "SET", key, value, "PX", px };

    snprintf(px, sizeof(px), "%lld", (long long)(ms > 0 ? ms : 1));
    return send_write(r, 5, argv);
}

static void fifo_remove(struct redis_conn *r, struct rcall *c)
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

static void set_error(struct redis_conn *r, const char *what, const char *detail)
{
    snprintf(r->last_error, sizeof(r->last_error), "%s%s%s", what,
             detail && detail[0] ? ": " : "", detail ? detail : "");
}

/* ---- connection life ----------------------------------------------------------- */

/* r->where: the url, or the master and where the sentinels said it is. */
static void where_set(struct redis_conn *r)
{
    int v6 = r->host != NULL && strchr(r->host, ':') != NULL;

    if (r->conf.nsentinels == 0)
        snprintf(r->where, sizeof(r->where), "%s", r->conf.url.shown);
    else if (r->host == NULL)
        snprintf(r->where, sizeof(r->where), "master %s", r->conf.master_name);
    else
        snprintf(r->where, sizeof(r->where), "master %s at %s%s%s:%d", r->conf.master_name,
                 v6 ? "[" : "", r->host, v6 ? "]" : "", r->port);
}

static void go_up(struct redis_conn *r)
{
    char addr[HOST_TEXT_MAX];

    r->state = RS_UP;
    r->since_unix_ms = gw_unix_ms();
    r->backoff_ms = BACKOFF_MIN_MS;
    r->connects++;
    evtimer_del(r->ev_retry);
    snprintf(addr, sizeof(addr), "%s:%d", r->host ? r->host : "", r->port);
    if (r->conf.nsentinels > 0 && r->last_master[0] && strcmp(r->last_master, addr) != 0) {
        r->failovers++;
        log_info("sessions: redis failover followed: %s (was %s; found by %s)",
                 r->where, r->last_master, r->found_by);
    }
    snprintf(r->last_master, sizeof(r->last_master), "%s", addr);
    if (r->warned)
        log_info("sessions: redis %s is back after %lld ms; sharing resumed",
                 r->where, (long long)(gw_now_ms() - r->down_mono_ms));
    else
        log_info("sessions: redis %s connected as replica %s", r->where, r->who);
    r->warned = 0;
    r->last_error[0] = '\0';
    r->cbs.up(r->cbs.arg);
}

static void maybe_up(struct redis_conn *r)
{
    if (r->state == RS_CONNECTING && r->cmd_ready && r->sub_ready)
        go_up(r);
}

static void abandon_resolve(struct redis_conn *r)
{
    if (r->resolving == NULL)
        return;
    r->resolving->r = NULL;             /* its callback frees it */
    r->resolving = NULL;
}

static void answer_later(struct redis_conn *r)
{
    struct later *l;

    while ((l = r->later) != NULL) {
        r->later = l->next;
        l->fn(l->arg, NULL);
        free(l);
    }
}

static void on_later(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    answer_later(arg);
}

/* A call Redis will not answer: its callback gets NULL, now, or on the
 * next loop turn when we are inside flush() (a put must not run other
 * requests' callbacks before it returns). */
static void answer_failed(struct redis_conn *r, struct rcall *c)
{
    redis_conn_reply_fn fn = c->fn;
    struct later *l;

    if (fn == NULL)
        return;
    c->fn = NULL;
    l = r->flushing ? malloc(sizeof(*l)) : NULL;
    if (l == NULL) {
        fn(c->arg, NULL);
        return;
    }
    l->fn = fn;
    l->arg = c->arg;
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
static void flush(struct redis_conn *r)
{
    if (r->state != RS_UP || r->cmd == NULL || (r->cmd->c.flags & REDIS_IN_CALLBACK))
        return;
    r->flushing++;
    redisAsyncHandleWrite(r->cmd);      /* on a write error hiredis drops it */
    r->flushing--;
}

/*
 * Forgets both connections: every call awaiting Redis is told it failed,
 * then the contexts we still hold are freed (their callbacks find the
 * calls abandoned and only release them).
 */
static void drop_connections(struct redis_conn *r)
{
    redisAsyncContext *cmd = r->cmd, *sub = r->sub;
    struct rcall *c, *fifo = r->head;

    r->cmd = r->sub = NULL;
    r->head = r->tail = NULL;
    r->cmd_ready = r->sub_ready = 0;
    evtimer_del(r->ev_watch);
    evtimer_del(r->ev_retry);
    abandon_resolve(r);
    for (c = fifo; c != NULL; c = c->next) {
        c->r = NULL;
        answer_failed(r, c);
    }
    if (cmd != NULL)
        redisAsyncFree(cmd);
    if (sub != NULL)
        redisAsyncFree(sub);
}

static void go_down(struct redis_conn *r, const char *why)
{
    enum redis_state was = r->state;

    if (was == RS_DOWN)
        return;
    r->state = RS_DOWN;
    r->since_unix_ms = gw_unix_ms();
    if (why != NULL)
        set_error(r, why, NULL);
    if (!r->warned) {
        log_warn("sessions: redis %s %s (%s); serving sessions from local memory until it is back",
                 r->where, was == RS_UP ? "lost" : "unavailable", r->last_error);
        r->warned = 1;
        r->down_mono_ms = gw_now_ms();
    } else {
        log_debug("sessions: redis %s still unavailable (%s)", r->where, r->last_error);
    }
    drop_connections(r);
    timer_arm(r->ev_retry, r->backoff_ms);
    r->backoff_ms = r->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : r->backoff_ms * 2;
}

/* One of our two connections failed or closed: hiredis frees it; the
 * calls are told they failed and we reconnect with backoff. */
static void connection_lost(const redisAsyncContext *ac, const char *what)
{
    struct redis_conn *r = ac->data;

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

static int role_is_master(const redisReply *reply)
{
    return reply->type == REDIS_REPLY_ARRAY && reply->elements > 0
           && reply->element[0]->type == REDIS_REPLY_STRING
           && strcmp(reply->element[0]->str, "master") == 0;
}

/* Every reply on the cmd connection. */
static void on_reply(redisAsyncContext *ac, void *reply_, void *priv)
{
    struct rcall *c = priv;
    struct redis_conn *r = c->r;
    redisReply *reply = reply_;

    if (r == NULL) {                    /* abandoned: its callback was told */
        free(c);
        return;
    }
    fifo_remove(r, c);
    if (reply == NULL) {                /* the context is going away */
        if (ac == r->cmd)
            r->cmd = NULL;
        r->errors++;
        set_error(r, "connection lost", ac->errstr);
        answer_failed(r, c);
        free(c);
        go_down(r, NULL);
        return;
    }
    if (reply->type == REDIS_REPLY_ERROR && c->type == CALL_ROLE && r->conf.nsentinels == 0) {
        free(c);                        /* a url's user without +role: trust the url */
        return;
    }
    if (reply->type == REDIS_REPLY_ERROR) {
        r->errors++;
        switch (c->type) {
        case CALL_AUTH:
            set_error(r, "AUTH failed (check the credentials in sessions.redis)", reply->str);
            break;
        case CALL_SELECT:
            set_error(r, "SELECT failed", reply->str);
            break;
        case CALL_ROLE:
            set_error(r, "ROLE failed (with sentinels an ACL user needs +role)", reply->str);
            break;
        case CALL_READY:
            set_error(r, "PING failed", reply->str);
            break;
        case CALL_USER:
            if (strncmp(reply->str, "READONLY", strlen("READONLY")) == 0) {
                /* Demoted under us: never write to a replica; find the master. */
                set_error(r, "the server is a replica now", reply->str);
                answer_failed(r, c);
                free(c);
                go_down(r, NULL);
                return;
            }
            set_error(r, "error reply", reply->str);
            log_debug("sessions: redis error reply: %s", reply->str);
            if (c->fn != NULL)
                c->fn(c->arg, NULL);
            free(c);
            return;
        }
        free(c);
        go_down(r, NULL);
        return;
    }
    switch (c->type) {
    case CALL_ROLE:
        if (!role_is_master(reply)) {
            r->errors++;
            set_error(r, "not the master: ROLE says",
                      reply->type == REDIS_REPLY_ARRAY && reply->elements > 0
                      && reply->element[0]->type == REDIS_REPLY_STRING
                      ? reply->element[0]->str : "?");
            free(c);
            go_down(r, NULL);
            return;
        }
        break;
    case CALL_READY:
        r->cmd_ready = 1;
        maybe_up(r);
        break;
    case CALL_USER:
        if (c->fn != NULL)
            c->fn(c->arg, reply);
        break;
    case CALL_AUTH:
    case CALL_SELECT:
        break;
    }
    free(c);
}

/* The sub connection: its AUTH reply. */
static void on_sub_auth(redisAsyncContext *ac, void *reply_, void *priv)
{
    struct redis_conn *r = priv;
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
    struct redis_conn *r = priv;
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
        r->cbs.message(r->cbs.arg, reply->element[2]->str, reply->element[2]->len);
    }
}

/*
 * A new async context to addr:port (path: a unix socket), attached to the
 * loop with the given callbacks; NULL with *why set.
 */
static redisAsyncContext *open_ctx(struct redis_conn *r, const char *addr, int port,
                                   const char *path, redisConnectCallback *on_conn,
                                   redisDisconnectCallback *on_disc, const char **why)
{
    redisAsyncContext *ac;

    ac = path ? redisAsyncConnectUnix(path) : redisAsyncConnect(addr, port);
    if (ac == NULL) {
        *why = "out of memory";
        return NULL;
    }
    if (ac->err) {
        snprintf(r->last_ctx_error, sizeof(r->last_ctx_error), "%s", ac->errstr);
        *why = r->last_ctx_error;
        redisAsyncFree(ac);
        return NULL;
    }
    ac->data = r;
    if (redisLibeventAttach(ac, r->base) != REDIS_OK) {
        *why = "cannot attach to the event loop";
        redisAsyncFree(ac);
        return NULL;
    }
    redisAsyncSetConnectCallback(ac, on_conn);
    redisAsyncSetDisconnectCallback(ac, on_disc);
    return ac;
}

static int auth_argv(const struct redis_conn *r, const char **argv)
{
    int n = 0;

    argv[n++] = "AUTH";
    if (r->conf.url.user != NULL)
        argv[n++] = r->conf.url.user;
    argv[n++] = r->conf.url.pass;
    return n;
}

/* Opens both connections to addr (NULL for a unix socket) and queues the
 * handshake; hiredis sends it once connected. */
static void connect_to(struct redis_conn *r, const char *addr)
{
    const char *argv[3], *why = NULL;
    char db[INT_TEXT_MAX], *chan;
    int n;

    r->cmd = open_ctx(r, addr, r->port, r->conf.url.path, on_connect, on_disconnect, &why);
    if (r->cmd != NULL)
        r->sub = open_ctx(r, addr, r->port, r->conf.url.path, on_connect, on_disconnect, &why);
    if (r->cmd == NULL || r->sub == NULL) {
        r->errors++;
        set_error(r, "connect", why);
        go_down(r, NULL);
        return;
    }
    if (r->conf.url.pass != NULL) {
        n = auth_argv(r, argv);
        send_cmd(r, CALL_AUTH, n, argv, NULL, NULL);
        sub_cmd(r, on_sub_auth, n, argv);
    }
    if (r->conf.url.db != 0) {
        snprintf(db, sizeof(db), "%d", r->conf.url.db);
        argv[0] = "SELECT";
        argv[1] = db;
        send_cmd(r, CALL_SELECT, 2, argv, NULL, NULL);
    }
    argv[0] = "ROLE";                   /* never write to a replica */
    send_cmd(r, CALL_ROLE, 1, argv, NULL, NULL);
    argv[0] = "PING";
    chan = channel(r);
    if (send_cmd(r, CALL_READY, 1, argv, NULL, NULL) == NULL || chan == NULL) {
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

/* ---- Sentinel ------------------------------------------------------------------ */

static void sen_open(struct sen_conn *sc);
static void resolve(struct redis_conn *r, const char *host, struct sen_conn *sc);
static int is_numeric_host(const char *h);

/* Forgets sc's connection (and any lookup for it). */
static void sen_drop(struct sen_conn *sc)
{
    redisAsyncContext *ac = sc->ac;

    sc->ac = NULL;
    sc->ready = 0;
    evtimer_del(sc->ev);
    if (sc->resolving != NULL) {
        sc->resolving->r = NULL;        /* its callback frees it */
        sc->resolving = NULL;
    }
    if (ac != NULL)
        redisAsyncFree(ac);             /* inside its own callback: deferred by hiredis */
}

static int sen_busy(const struct sen_conn *sc)
{
    return sc->ac != NULL || sc->resolving != NULL;
}

/*
 * The sentinel in use failed: try the next one at once. After a whole
 * round without an answer, a connection still looking for its master goes
 * down (and asks again after its backoff); the watch tries again after
 * SENTINEL_RETRY_MS.
 */
static void sen_failed(struct sen_conn *sc, const char *what, const char *detail)
{
    struct redis_conn *r = sc->r;

    snprintf(r->sen_error, sizeof(r->sen_error), "sentinel %s: %s%s%s",
             r->conf.sentinels[sc->idx].shown, what,
             detail && detail[0] ? ": " : "", detail ? detail : "");
    log_debug("sessions: %s", r->sen_error);
    r->sen_errors++;
    sen_drop(sc);
    sc->idx = (sc->idx + 1) % r->conf.nsentinels;
    if (++sc->tries < r->conf.nsentinels) {
        sen_open(sc);
        return;
    }
    sc->tries = 0;
    if (sc->watch) {
        if (!r->watch_warned)
            log_warn("sessions: no sentinel to watch for +switch-master (%s); a failover is"
                     " noticed only when the master connection breaks", r->sen_error);
        r->watch_warned = 1;
        timer_arm(sc->ev, SENTINEL_RETRY_MS);
        return;
    }
    if (r->state == RS_CONNECTING && r->cmd == NULL && r->resolving == NULL) {
        r->errors++;
        snprintf(r->last_error, sizeof(r->last_error), "no sentinel named the master (last: %.150s)",
                 r->sen_error);
        go_down(r, NULL);
    }
}

static struct sen_conn *sen_of(const redisAsyncContext *ac)
{
    struct redis_conn *r = ac->data;

    return ac == r->ask.ac ? &r->ask : ac == r->watch.ac ? &r->watch : NULL;
}

static void on_sen_connect(const redisAsyncContext *ac, int status)
{
    struct sen_conn *sc = sen_of(ac);

    if (status == REDIS_OK || sc == NULL)
        return;
    sc->ac = NULL;                      /* hiredis frees it */
    sen_failed(sc, "connect", ac->errstr);
}

static void on_sen_disconnect(const redisAsyncContext *ac, int status)
{
    struct sen_conn *sc = sen_of(ac);

    (void)status;
    if (sc == NULL)
        return;
    sc->ac = NULL;                      /* hiredis frees it */
    sen_failed(sc, "connection lost", ac->errstr);
}

/* A reply that makes the connection useless; 1 when it was one. */
static int sen_reply_bad(struct sen_conn *sc, redisAsyncContext *ac, const redisReply *reply,
                         const char *what)
{
    if (reply == NULL) {
        sc->ac = NULL;                  /* hiredis frees it */
        sen_failed(sc, "connection lost", ac->errstr);
        return 1;
    }
    if (reply->type == REDIS_REPLY_ERROR) {
        sen_failed(sc, what, reply->str);
        return 1;
    }
    return 0;
}

static void on_sen_auth(redisAsyncContext *ac, void *reply, void *priv)
{
    struct sen_conn *sc = priv;

    if (ac == sc->ac)
        sen_reply_bad(sc, ac, reply, "AUTH failed (check sessions.redis.sentinel_password)");
}

/* Asks the sentinels for the master, unless that is under way. */
static void ask_start(struct redis_conn *r)
{
    if (sen_busy(&r->ask))
        return;
    r->ask.tries = 0;
    sen_open(&r->ask);
}

/*
 * Sentinel `idx` named the master at host:port (asked, or announced by
 * +switch-master): connect to it unless it is the one in use or being
 * connected to. A connection up on another one moves now.
 */
static void master_named(struct redis_conn *r, const char *host, int port, int switched,
                         size_t idx)
{
    int same = r->host != NULL && strcmp(r->host, host) == 0 && r->port == port;
    char *h;

    if (same && (r->cmd != NULL || r->resolving != NULL))
        return;                         /* in use, or on its way */
    if (!switched && r->state == RS_DOWN)
        return;                         /* the backoff will ask again */
    if ((h = strdup(host)) == NULL)
        return;
    free(r->host);
    r->host = h;
    r->port = port;
    where_set(r);
    snprintf(r->found_by, sizeof(r->found_by), "%s sentinel %s",
             switched ? "+switch-master from" : "get-master-addr-by-name to",
             r->conf.sentinels[idx].shown);
    if (switched)
        log_info("sessions: sentinel %s announced +switch-master: moving to %s",
                 r->conf.sentinels[idx].shown, r->where);
    drop_connections(r);                /* pending calls: failed */
    r->state = RS_CONNECTING;
    r->since_unix_ms = gw_unix_ms();
    timer_arm(r->ev_retry, r->timeout_ms);      /* the whole handshake */
    resolve(r, r->host, NULL);
}

/* The port of a sentinel's answer; 0 when not one. */
static int port_of(const char *s, size_t len)
{
    long port;

    return parse_uint(s, s + len, PORT_MAX, &port) == 0 ? (int)port : 0;
}

/* SENTINEL get-master-addr-by-name: [host, port], or nil when unknown. */
static void on_sen_master(redisAsyncContext *ac, void *reply_, void *priv)
{
    struct sen_conn *sc = priv;
    struct redis_conn *r = sc->r;
    redisReply *reply = reply_;
    size_t idx = sc->idx;
    int port;

    if (ac != sc->ac || sen_reply_bad(sc, ac, reply, "SENTINEL get-master-addr-by-name failed"))
        return;
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2
        || reply->element[0]->type != REDIS_REPLY_STRING
        || reply->element[1]->type != REDIS_REPLY_STRING
        || (port = port_of(reply->element[1]->str, reply->element[1]->len)) == 0) {
        sen_failed(sc, "does not know the master", r->conf.master_name);
        return;
    }
    sen_drop(sc);                       /* the reply lives until we return */
    sc->tries = 0;
    if (!sen_busy(&r->watch) && !evtimer_pending(r->watch.ev, NULL)) {
        r->watch.idx = idx;             /* one that answers */
        r->watch.tries = 0;
        sen_open(&r->watch);
    }
    master_named(r, reply->element[0]->str, port, 0, idx);
}

/* The watch: subscribed, then "<name> <old-ip> <old-port> <new-ip> <new-port>". */
static void on_sen_message(redisAsyncContext *ac, void *reply_, void *priv)
{
    struct sen_conn *sc = priv;
    struct redis_conn *r = sc->r;
    redisReply *reply = reply_, *kind, *msg;
    char *text, *save = NULL, *w[5];
    int i, port;

    if (ac != sc->ac || sen_reply_bad(sc, ac, reply, "SUBSCRIBE failed"))
        return;
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements < 3
        || (kind = reply->element[0])->type != REDIS_REPLY_STRING)
        return;
    if (strcmp(kind->str, "subscribe") == 0) {
        evtimer_del(sc->ev);
        sc->ready = 1;
        sc->tries = 0;
        if (r->watch_warned)
            log_info("sessions: watching +switch-master again on sentinel %s",
                     r->conf.sentinels[sc->idx].shown);
        r->watch_warned = 0;
        if (r->state == RS_UP)
            ask_start(r);               /* a switch may have passed unwatched */
        return;
    }
    msg = reply->element[2];
    if (strcmp(kind->str, "message") != 0 || msg->type != REDIS_REPLY_STRING
        || (text = strndup(msg->str, msg->len)) == NULL)
        return;
    for (i = 0; i < 5; i++)
        if ((w[i] = strtok_r(i == 0 ? text : NULL, " ", &save)) == NULL)
            break;
    if (i == 5 && strcmp(w[0], r->conf.master_name) == 0
        && (port = port_of(w[4], strlen(w[4]))) != 0)
        master_named(r, w[3], port, 1, sc->idx);
    free(text);
}

/* Connecting to sentinel sc->idx at addr: AUTH, then ask or watch. */
static void sen_connect(struct sen_conn *sc, const char *addr)
{
    struct redis_conn *r = sc->r;
    const char *argv[2], *why = NULL;
    size_t lens[2];
    int rc = REDIS_OK;

    sc->ac = open_ctx(r, addr, r->conf.sentinels[sc->idx].port, NULL, on_sen_connect,
                      on_sen_disconnect, &why);
    if (sc->ac == NULL) {
        sen_failed(sc, "connect", why);
        return;
    }
    if (r->conf.sentinel_pass != NULL) {
        argv[0] = "AUTH";
        argv[1] = r->conf.sentinel_pass;
        lens[0] = strlen(argv[0]);
        lens[1] = strlen(argv[1]);
        rc = redisAsyncCommandArgv(sc->ac, on_sen_auth, sc, 2, argv, lens);
    }
    if (rc == REDIS_OK && sc->watch)
        rc = redisAsyncCommand(sc->ac, on_sen_message, sc, "SUBSCRIBE +switch-master");
    else if (rc == REDIS_OK)
        rc = redisAsyncCommand(sc->ac, on_sen_master, sc, "SENTINEL get-master-addr-by-name %s",
                               r->conf.master_name);
    if (rc != REDIS_OK)
        sen_failed(sc, "connect", "cannot queue the commands");
}

/* Opens sc on sentinels[sc->idx]; its answer is due within the timeout. */
static void sen_open(struct sen_conn *sc)
{
    timer_arm(sc->ev, sc->r->timeout_ms);
    resolve(sc->r, sc->r->conf.sentinels[sc->idx].host, sc);
}

/* sc->ev: the sentinel is late, or (watch) it is time to try again. */
static void on_sen_timer(evutil_socket_t fd, short what, void *arg)
{
    struct sen_conn *sc = arg;

    (void)fd;
    (void)what;
    if (sen_busy(sc)) {
        sc->r->timeouts++;
        sen_failed(sc, "no answer within", "sessions.redis.timeout");
    } else {
        sen_open(sc);
    }
}

/* ---- resolving ----------------------------------------------------------------- */

/* Picks an IPv4 answer if there is one, else the first. */
static void on_resolved(int result, struct evutil_addrinfo *res, void *arg)
{
    struct resolve *rs = arg;
    struct redis_conn *r = rs->r;
    struct evutil_addrinfo *ai, *pick = NULL;
    char addr[ADDR_MAX] = "";
    struct sen_conn *sc = rs->sc;

    if (r != NULL) {
        if (sc != NULL)
            sc->resolving = NULL;
        else
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
        const char *why = result ? evutil_gai_strerror(result) : "no address";

        if (sc != NULL) {
            sen_failed(sc, "cannot resolve host", why);
            return;
        }
        r->errors++;
        set_error(r, "cannot resolve host", why);
        go_down(r, NULL);
        return;
    }
    if (sc != NULL)
        sen_connect(sc, addr);
    else
        connect_to(r, addr);
}

static int is_numeric_host(const char *h)
{
    unsigned char buf[sizeof(struct in6_addr)];

    return inet_pton(AF_INET, h, buf) == 1 || inet_pton(AF_INET6, h, buf) == 1;
}

/* Connects to host (the server, or the sentinel of sc) once it has an
 * address: numeric hosts at once, names through evdns. */
static void resolve(struct redis_conn *r, const char *host, struct sen_conn *sc)
{
    struct evutil_addrinfo hints;
    struct resolve *rs;

    if (is_numeric_host(host)) {
        if (sc != NULL)
            sen_connect(sc, host);
        else
            connect_to(r, host);
        return;
    }
    if (r->dns == NULL)
        r->dns = evdns_base_new(r->base, EVDNS_BASE_INITIALIZE_NAMESERVERS
                                         | EVDNS_BASE_DISABLE_WHEN_INACTIVE);
    rs = r->dns ? calloc(1, sizeof(*rs)) : NULL;
    if (rs == NULL) {
        if (sc != NULL) {
            sen_failed(sc, "cannot resolve host", "no resolver");
            return;
        }
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
    rs->sc = sc;
    if (sc != NULL)
        sc->resolving = rs;
    else
        r->resolving = rs;
    /* Numeric hosts and /etc/hosts entries call back before this returns. */
    evdns_getaddrinfo(r->dns, host, NULL, &hints, on_resolved, rs);
}

/*
 * Without sentinels: the url's server. With them: ask them in turn (the
 * one that answered last first); the answer connects (master_named()).
 */
static void start_connect(struct redis_conn *r)
{
    r->state = RS_CONNECTING;
    r->since_unix_ms = gw_unix_ms();
    if (r->conf.nsentinels > 0) {
        sen_drop(&r->ask);
        ask_start(r);
        return;
    }
    timer_arm(r->ev_retry, r->timeout_ms);      /* the whole handshake */
    if (r->conf.url.path != NULL)
        connect_to(r, NULL);
    else
        resolve(r, r->host, NULL);
}

/* ev_retry: DOWN -> try again; CONNECTING -> the handshake took too long. */
static void on_retry(evutil_socket_t fd, short what, void *arg)
{
    struct redis_conn *r = arg;

    (void)fd;
    (void)what;
    if (r->state == RS_DOWN) {
        log_debug("sessions: reconnecting to redis %s", r->where);
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
    struct redis_conn *r = arg;
    int64_t now = gw_now_ms();

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

/* ---- interface to the users ------------------------------------------------------ */

struct redis_conn *redis_conn_new(const struct redis_conn_cbs *cbs, struct event_base *base,
                                  const struct config *cfg, const char *who,
                                  char *err, size_t errlen)
{
    struct redis_conn *r;
    const char *why, *key;
    const char *prefix = cfg->sessions.redis_prefix ? cfg->sessions.redis_prefix : "";

    r = calloc(1, sizeof(*r));
    if (r == NULL) {
        snprintf(err, errlen, "sessions: out of memory");
        return NULL;
    }
    why = conf_parse(cfg, &r->conf, &key);
    if (why != NULL) {
        snprintf(err, errlen, "%s: %s", key, why);
        free(r);
        return NULL;
    }
    r->cbs = *cbs;
    r->base = base;
    r->who = who;
    r->conf_key = conf_key(cfg);
    r->prefix = strdup(prefix);
    r->timeout_ms = cfg->sessions.redis_timeout_ms > 0 ? cfg->sessions.redis_timeout_ms : 1;
    r->backoff_ms = BACKOFF_MIN_MS;
    r->ev_retry = evtimer_new(base, on_retry, r);
    r->ev_watch = evtimer_new(base, on_watch, r);
    r->ask.r = r->watch.r = r;
    r->watch.watch = 1;
    r->ask.ev = evtimer_new(base, on_sen_timer, &r->ask);
    r->watch.ev = evtimer_new(base, on_sen_timer, &r->watch);
    r->ev_later = event_new(base, -1, 0, on_later, r);
    if (r->conf.nsentinels == 0 && r->conf.url.host != NULL) {
        r->host = strdup(r->conf.url.host);
        r->port = r->conf.url.port;
    }
    snprintf(r->found_by, sizeof(r->found_by), "%s",
             r->conf.nsentinels ? "not yet" : "sessions.redis.url");
    where_set(r);
    if (r->conf_key == NULL || r->prefix == NULL
        || r->ev_retry == NULL || r->ev_watch == NULL
        || r->ask.ev == NULL || r->watch.ev == NULL || r->ev_later == NULL
        || (r->conf.nsentinels == 0 && r->conf.url.host != NULL && r->host == NULL)) {
        snprintf(err, errlen, "sessions: out of memory");
        redis_conn_free(r);
        return NULL;
    }
    r->state = RS_DOWN;
    return r;
}

void redis_conn_start(struct redis_conn *r)
{
    start_connect(r);
}

void redis_conn_free(struct redis_conn *r)
{
    if (r == NULL)
        return;
    r->state = RS_DOWN;
    if (r->ask.ev != NULL)
        sen_drop(&r->ask);
    if (r->watch.ev != NULL)
        sen_drop(&r->watch);
    if (r->ev_watch != NULL && r->ev_retry != NULL)
        drop_connections(r);
    abandon_resolve(r);
    answer_later(r);
    if (r->ev_later)
        event_free(r->ev_later);
    if (r->ev_retry)
        event_free(r->ev_retry);
    if (r->ev_watch)
        event_free(r->ev_watch);
    if (r->ask.ev)
        event_free(r->ask.ev);
    if (r->watch.ev)
        event_free(r->watch.ev);
    if (r->dns != NULL)
        evdns_base_free(r->dns, 1);     /* pending lookups fail: their callbacks free them */
    conf_clear(&r->conf);
    secret_clear(r->conf_key);
    free(r->host);
    free(r->prefix);
    free(r);
}

void redis_conn_set_timeout(struct redis_conn *r, int64_t timeout_ms)
{
    r->timeout_ms = timeout_ms > 0 ? timeout_ms : 1;
}

int redis_conn_up(const struct redis_conn *r)
{
    return r->state == RS_UP;
}

int redis_conn_same(const struct redis_conn *r, const struct config *cfg)
{
    char *k = conf_key(cfg);
    int same = k != NULL && strcmp(k, r->conf_key) == 0;

    secret_clear(k);
    return same;
}

char *redis_conn_key(const struct redis_conn *r, const char *a, const char *b)
{
    return rkey(r, a, b);
}

int redis_conn_cmd(struct redis_conn *r, int argc, const char **argv, redis_conn_reply_fn fn,
                   void *arg)
{
    if (r->state != RS_UP)
        return -1;
    return send_cmd(r, CALL_USER, argc, argv, fn, arg) ? 0 : -1;
}

int redis_conn_set_px(struct redis_conn *r, const char *key, const char *value, int64_t ms)
{
    return r->state == RS_UP ? send_set_px(r, key, value, ms) : -1;
}

int redis_conn_publish(struct redis_conn *r, const char *msg)
{
    char *chan;
    const char *argv[3] = { "PUBLISH", NULL, msg };
    int rc;

    if (r->state != RS_UP || (chan = channel(r)) == NULL)
        return -1;
    argv[1] = chan;
    rc = send_write(r, 3, argv);
    free(chan);
    return rc;
}

void redis_conn_flush(struct redis_conn *r)
{
    flush(r);
}

void redis_conn_counters(const struct redis_conn *r, struct redis_conn_counters *out)
{
    memset(out, 0, sizeof(*out));
    out->errors = r->errors;
    out->timeouts = r->timeouts;
    out->connects = r->connects;
    out->failovers = r->failovers;
    out->up = r->state == RS_UP;
    out->sentinel = r->conf.nsentinels > 0;
}

static json_t *sentinel_status_json(const struct redis_conn *r)
{
    json_t *list = json_array();
    size_t i;

    for (i = 0; list != NULL && i < r->conf.nsentinels; i++)
        json_array_append_new(list, json_string(r->conf.sentinels[i].shown));
    return json_pack("{s:s, s:o, s:s, s:b, s:s, s:I}",
                     "master_name", r->conf.master_name, "sentinels", list,
                     "watched", r->conf.sentinels[r->watch.idx].shown,
                     "watching", r->watch.ready,
                     "last_error", r->sen_error, "errors", (json_int_t)r->sen_errors);
}

json_t *redis_conn_status_json(const struct redis_conn *r)
{
    char master[HOST_TEXT_MAX] = "";
    int v6 = r->host != NULL && strchr(r->host, ':') != NULL;
    json_t *o;

    if (r->host != NULL)
        snprintf(master, sizeof(master), "%s%s%s:%d", v6 ? "[" : "", r->host, v6 ? "]" : "",
                 r->port);
    else if (r->conf.url.path != NULL)
        snprintf(master, sizeof(master), "%s", r->conf.url.path);
    o = json_pack("{s:s, s:s, s:s, s:I, s:s, s:I, s:I, s:I, s:I, s:s?, s:s, s:I}",
                  "url", r->conf.url.shown, "prefix", r->prefix,
                  "state", state_name(r->state),
                  "since_unix_ms", (json_int_t)r->since_unix_ms,
                  "last_error", r->last_error,
                  "timeout_ms", (json_int_t)r->timeout_ms,
                  "errors", (json_int_t)r->errors,
                  "timeouts", (json_int_t)r->timeouts,
                  "connects", (json_int_t)r->connects,
                  "master", master[0] ? master : NULL,
                  "found_by", r->found_by,
                  "failovers_followed", (json_int_t)r->failovers);
    if (o != NULL && r->conf.nsentinels > 0)
        json_object_set_new(o, "sentinel", sentinel_status_json(r));
    return o;
}

/* ---- the credentials check (synchronous: start-up and the reload thread) --------- */

static redisContext *sync_connect(const char *host, int port, const char *path,
                                  int64_t timeout_ms)
{
    struct timeval tv;
    redisContext *c;

    tv.tv_sec = (time_t)(timeout_ms / MS_PER_S);
    tv.tv_usec = (suseconds_t)((timeout_ms % MS_PER_S) * US_PER_MS);
    c = path ? redisConnectUnixWithTimeout(path, tv) : redisConnectWithTimeout(host, port, tv);
    if (c != NULL && (c->err || redisSetTimeout(c, tv) != REDIS_OK)) {
        redisFree(c);
        return NULL;
    }
    return c;
}

static redisReply *sync_cmd(redisContext *c, int argc, const char **argv)
{
    size_t small[SMALL_ARGV], *lens = word_lengths(argc, argv, small);
    redisReply *rep = lens ? redisCommandArgv(c, argc, argv, lens) : NULL;

    if (lens != small)
        free(lens);
    return rep;
}

/* Asks the sentinels in turn: 1 with host/port set, 0 when none answered,
 * -1 with err set when one refused the sentinel password. */
static int sync_master(const struct redis_conf *rc, int64_t timeout_ms, char *host,
                       size_t hostlen, int *port, char *err, size_t errlen)
{
    const char *argv[3];
    redisContext *c;
    redisReply *rep;
    size_t i;
    int found = 0, bad = 0;

    for (i = 0; i < rc->nsentinels && !found && !bad; i++) {
        const struct sentinel *sn = &rc->sentinels[i];

        if ((c = sync_connect(sn->host, sn->port, NULL, timeout_ms)) == NULL)
            continue;
        rep = NULL;
        if (rc->sentinel_pass != NULL) {
            argv[0] = "AUTH";
            argv[1] = rc->sentinel_pass;
            rep = sync_cmd(c, 2, argv);
            if (rep != NULL && rep->type == REDIS_REPLY_ERROR) {
                snprintf(err, errlen, "sessions.redis.sentinel_password: sentinel %s refused"
                         " it (%s)", sn->shown, rep->str);
                bad = 1;
            }
            if (rep == NULL)
                bad = -1;
            freeReplyObject(rep);
            rep = NULL;
        }
        if (bad == 0) {
            argv[0] = "SENTINEL";
            argv[1] = "get-master-addr-by-name";
            argv[2] = rc->master_name;
            rep = sync_cmd(c, 3, argv);
        }
        if (rep != NULL && rep->type == REDIS_REPLY_ERROR
            && strncmp(rep->str, "NOAUTH", strlen("NOAUTH")) == 0) {
            snprintf(err, errlen, "sessions.redis.sentinel_password: sentinel %s wants one (%s)",
                     sn->shown, rep->str);
            bad = 1;
        } else if (rep != NULL && rep->type == REDIS_REPLY_ARRAY && rep->elements == 2
                   && rep->element[0]->type == REDIS_REPLY_STRING
                   && rep->element[1]->type == REDIS_REPLY_STRING
                   && (*port = port_of(rep->element[1]->str, rep->element[1]->len)) != 0) {
            snprintf(host, hostlen, "%s", rep->element[0]->str);
            found = 1;
        }
        if (bad < 0)
            bad = 0;
        freeReplyObject(rep);
        redisFree(c);
    }
    return bad ? -1 : found;
}

int session_redis_check_auth(const struct config *cfg, char *err, size_t errlen)
{
    struct redis_conf rc;
    const char *why, *key, *argv[3];
    char host[HOST_TEXT_MAX], where[HOST_TEXT_MAX];
    int64_t timeout = cfg->sessions.redis_timeout_ms > 0 ? cfg->sessions.redis_timeout_ms : 1;
    redisContext *c;
    redisReply *rep;
    int port = 0, n = 0, rc_ = 0;

    if (cfg->sessions.store != STORE_REDIS)
        return 0;
    if ((why = conf_parse(cfg, &rc, &key)) != NULL) {
        snprintf(err, errlen, "%s: %s", key, why);
        return -1;
    }
    if (rc.nsentinels > 0) {
        rc_ = sync_master(&rc, timeout, host, sizeof(host), &port, err, errlen);
        if (rc_ <= 0)
            goto out;                   /* refused, or nobody to ask now */
        rc_ = 0;
        snprintf(where, sizeof(where), "master %.64s at %.200s:%d", rc.master_name, host, port);
    } else if (rc.url.path == NULL) {
        snprintf(host, sizeof(host), "%s", rc.url.host);
        port = rc.url.port;
        snprintf(where, sizeof(where), "%s", rc.url.shown);
    } else {
        snprintf(where, sizeof(where), "%s", rc.url.shown);
    }
    if ((c = sync_connect(host, port, rc.url.path, timeout)) == NULL)
        goto out;                       /* not reachable now: not a config error */
    if (rc.url.pass != NULL) {
        argv[n++] = "AUTH";
        if (rc.url.user != NULL)
            argv[n++] = rc.url.user;
        argv[n++] = rc.url.pass;
    } else {
        argv[n++] = "PING";
    }
    rep = sync_cmd(c, n, argv);
    if (rep != NULL && rep->type == REDIS_REPLY_ERROR
        && (rc.url.pass != NULL || strncmp(rep->str, "NOAUTH", strlen("NOAUTH")) == 0)) {
        if (rc.url.pass != NULL)
            snprintf(err, errlen, "sessions.redis: redis %s refused the credentials%s%s (%s)",
                     where, rc.url.user ? " of user " : "", rc.url.user ? rc.url.user : "",
                     rep->str);
        else
            snprintf(err, errlen, "sessions.redis: redis %s wants a password"
                     " (sessions.redis.password, or in the url): %s", where, rep->str);
        rc_ = -1;
    }
    freeReplyObject(rep);
    redisFree(c);
out:
    conf_clear(&rc);
    return rc_;
}

