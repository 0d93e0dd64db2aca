/*
 * session_driver.c -- a line-driven harness around src/app/session.c and
 * src/app/session_redis.c, for tests/e2e/test_session_redis_store.py.
 *
 * One event loop, up to DRV_MAX sessions (think: replicas) against
 * whatever Redis the test runs. Commands come one per line on stdin; each
 * answers with one line on stdout. Commands that wait (get, wait*) answer
 * when done; later commands are read only after that, so the test reads
 * exactly one line per command. The log goes to stderr.
 *
 *   new NAME URL PREFIX TIMEOUT_MS TTL_MS ADDR      -> ok | err MESSAGE
 *   put NAME rid|sticky KEY HOST NOW_MS             -> ok | err
 *   get NAME rid|sticky KEY NOW_MS                  -> get NAME host=H|- ms=N sync=0|1
 *   pubkey NAME KEY_ID disabled|cooling IN_MS       -> ok
 *   pubbreaker NAME HOST IN_MS                      -> ok
 *   events NAME                                     -> JSON list of advice received
 *   status NAME                                     -> session_status_json, one line
 *   metrics NAME                                    -> JSON of session_metrics_read
 *   wait NAME up|down|connecting TIMEOUT_MS         -> ok STATE ms=N | timeout STATE
 *   waitevents NAME COUNT TIMEOUT_MS                -> ok N ms=N | timeout N
 *   waitreplicas NAME COUNT TIMEOUT_MS              -> ok N ms=N | timeout N
 *   free NAME                                       -> ok
 *   quit                                            -> bye (frees everything, exits 0)
 *
 * Built by the test with gcc from this file, src/app/session.c,
 * src/app/session_redis.c and src/io/log.c; not part of the gateway.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <jansson.h>

#include "log.h"
#include "session.h"

#define DRV_MAX       4
#define DRV_NAME_MAX  16
#define DRV_ARGS      8
#define DRV_POLL_MS   10
#define DRV_READ      4096
#define DRV_ERR       256

struct inst {
    char            name[DRV_NAME_MAX];
    struct session *s;
    struct config   cfg;
    char           *url, *prefix;
    json_t         *events;
};

enum wait_kind { WAIT_NONE = 0, WAIT_STATE, WAIT_EVENTS, WAIT_REPLICAS };

static struct event_base *base;
static struct evbuffer   *input;
static struct event      *ev_stdin, *ev_poll, *ev_kick;
static struct inst        insts[DRV_MAX];
static int                busy;         /* a command is waiting */
static int                in_get;       /* inside session_get() */
static int64_t            t_start;

static struct {
    enum wait_kind kind;
    struct inst   *in;
    char           state[DRV_NAME_MAX];
    size_t         count;
    int64_t        deadline;
} waiting;

static void process_lines(void);

static int64_t mono_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void reply(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void reply(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    putchar('\n');
    fflush(stdout);
}

static void reply_json(json_t *o)
{
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;

    reply("%s", s ? s : "null");
    free(s);
    json_decref(o);
}

static struct inst *find(const char *name)
{
    int i;

    for (i = 0; i < DRV_MAX; i++)
        if (insts[i].s != NULL && strcmp(insts[i].name, name) == 0)
            return &insts[i];
    return NULL;
}

static void inst_free(struct inst *in)
{
    session_free(in->s);
    json_decref(in->events);
    free(in->url);
    free(in->prefix);
    memset(in, 0, sizeof(*in));
}

static void on_shared(void *arg, const struct session_shared *ev)
{
    struct inst *in = arg;
    static const char *names[] = { "key_disabled", "key_cooling", "breaker_open" };

    json_array_append_new(in->events,
                          json_pack("{s:s, s:s, s:I, s:s}", "type", names[ev->type],
                                    "name", ev->name, "until", (json_int_t)ev->until_unix_ms,
                                    "replica", ev->replica));
}

static void on_get(void *arg, const char *host)
{
    struct inst *in = arg;

    reply("get %s host=%s ms=%lld sync=%d", in->name, host ? host : "-",
          (long long)(mono_ms() - t_start), in_get);
    if (!in_get) {
        /* Not from here: this runs inside a session callback, and the
         * next command may be "free" or "quit". */
        busy = 0;
        event_active(ev_kick, EV_TIMEOUT, 0);
    }
}

static void on_kick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    process_lines();
}

static const char *redis_state(struct inst *in)
{
    static char buf[DRV_NAME_MAX];
    json_t *st = session_status_json(in->s);
    const char *v = json_string_value(json_object_get(json_object_get(st, "redis"), "state"));

    snprintf(buf, sizeof(buf), "%s", v ? v : "none");
    json_decref(st);
    return buf;
}

static size_t replicas_seen(struct inst *in)
{
    json_t *st = session_status_json(in->s);
    size_t n = json_array_size(json_object_get(st, "replicas"));

    json_decref(st);
    return n;
}

/* 1 when the wait is over (and answered). */
static int wait_check(void)
{
    int64_t now = mono_ms(), ms = now - t_start;
    int done = 0, late = now >= waiting.deadline;
    size_t n;

    switch (waiting.kind) {
    case WAIT_STATE: {
        const char *st = redis_state(waiting.in);

        if (strcmp(st, waiting.state) == 0) {
            reply("ok %s ms=%lld", st, (long long)ms);
            done = 1;
        } else if (late) {
            reply("timeout %s", st);
            done = 1;
        }
        break;
    }
    case WAIT_EVENTS:
    case WAIT_REPLICAS:
        n = waiting.kind == WAIT_EVENTS ? json_array_size(waiting.in->events)
                                        : replicas_seen(waiting.in);
        if (n >= waiting.count) {
            reply("ok %zu ms=%lld", n, (long long)ms);
            done = 1;
        } else if (late) {
            reply("timeout %zu", n);
            done = 1;
        }
        break;
    case WAIT_NONE:
        done = 1;
        break;
    }
    if (done)
        waiting.kind = WAIT_NONE;
    return done;
}

static void on_poll(evutil_socket_t fd, short what, void *arg)
{
    struct timeval tv = { 0, DRV_POLL_MS * 1000 };

    (void)fd;
    (void)what;
    (void)arg;
    if (wait_check()) {
        busy = 0;
        process_lines();
        return;
    }
    evtimer_add(ev_poll, &tv);
}

static int parse_kind(const char *s, enum session_kind *k)
{
    if (strcmp(s, "rid") == 0)
        *k = SESSION_RID;
    else if (strcmp(s, "sticky") == 0)
        *k = SESSION_STICKY;
    else
        return -1;
    return 0;
}

static void cmd_new(char **a, int n)
{
    struct inst *in = NULL;
    char err[DRV_ERR];
    int i;

    if (n != 7 || find(a[1]) != NULL || strlen(a[1]) >= DRV_NAME_MAX) {
        reply("err usage");
        return;
    }
    for (i = 0; i < DRV_MAX && in == NULL; i++)
        if (insts[i].s == NULL)
            in = &insts[i];
    if (in == NULL) {
        reply("err full");
        return;
    }
    snprintf(in->name, sizeof(in->name), "%s", a[1]);
    in->url = strdup(a[2]);
    in->prefix = strdup(a[3]);
    in->events = json_array();
    in->cfg.sessions.store = STORE_REDIS;
    in->cfg.sessions.redis_url = in->url;
    in->cfg.sessions.redis_prefix = in->prefix;
    in->cfg.sessions.redis_timeout_ms = atoll(a[4]);
    in->cfg.sessions.ttl_ms = atoll(a[5]);
    in->cfg.sessions.max_entries = 1000;
    in->s = session_new(base, &in->cfg, 1, a[6], err, sizeof(err));
    if (in->s == NULL) {
        inst_free(in);
        reply("err %s", err);
        return;
    }
    session_on_shared(in->s, on_shared, in);
    reply("ok %s", session_replica_id(in->s));
}

static void start_wait(enum wait_kind kind, struct inst *in, const char *arg, int64_t timeout)
{
    waiting.kind = kind;
    waiting.in = in;
    snprintf(waiting.state, sizeof(waiting.state), "%s", arg);
    waiting.count = (size_t)atoll(arg);
    waiting.deadline = mono_ms() + timeout;
    if (wait_check())
        return;
    busy = 1;
    on_poll(-1, 0, NULL);
}

static void handle(char *line)
{
    char *a[DRV_ARGS], *save = NULL, *tok;
    int n = 0;
    struct inst *in;
    enum session_kind kind;
    struct session_metrics m;

    for (tok = strtok_r(line, " ", &save); tok && n < DRV_ARGS; tok = strtok_r(NULL, " ", &save))
        a[n++] = tok;
    if (n == 0)
        return;
    if (strcmp(a[0], "quit") == 0) {
        for (n = 0; n < DRV_MAX; n++)
            if (insts[n].s)
                inst_free(&insts[n]);
        reply("bye");
        event_base_loopexit(base, NULL);
        busy = 1;               /* read nothing more */
        return;
    }
    if (strcmp(a[0], "new") == 0) {
        cmd_new(a, n);
        return;
    }
    in = n >= 2 ? find(a[1]) : NULL;
    if (in == NULL) {
        reply("err no such session");
        return;
    }
    t_start = mono_ms();
    if (strcmp(a[0], "put") == 0 && n == 6 && parse_kind(a[2], &kind) == 0) {
        reply(session_put(in->s, kind, a[3], a[4], atoll(a[5])) == 0 ? "ok" : "err");
    } else if (strcmp(a[0], "get") == 0 && n == 5 && parse_kind(a[2], &kind) == 0) {
        in_get = 1;
        if (session_get(in->s, kind, a[3], atoll(a[4]), on_get, in) != NULL)
            busy = 1;
        in_get = 0;
    } else if (strcmp(a[0], "pubkey") == 0 && n == 5) {
        session_publish_key(in->s, a[2], strcmp(a[3], "disabled") == 0,
                            (int64_t)time(NULL) * 1000 + atoll(a[4]));
        reply("ok");
    } else if (strcmp(a[0], "pubbreaker") == 0 && n == 4) {
        session_publish_breaker(in->s, a[2], (int64_t)time(NULL) * 1000 + atoll(a[3]));
        reply("ok");
    } else if (strcmp(a[0], "events") == 0) {
        reply_json(json_deep_copy(in->events));
    } else if (strcmp(a[0], "status") == 0) {
        reply_json(session_status_json(in->s));
    } else if (strcmp(a[0], "metrics") == 0) {
        session_metrics_read(in->s, &m);
        reply_json(json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:i}",
                             "hits", (json_int_t)m.hits, "misses", (json_int_t)m.misses,
                             "puts", (json_int_t)m.puts, "fallbacks", (json_int_t)m.fallbacks,
                             "redis_errors", (json_int_t)m.redis_errors,
                             "redis_timeouts", (json_int_t)m.redis_timeouts,
                             "redis_reconnects", (json_int_t)m.redis_reconnects,
                             "shared_published", (json_int_t)m.shared_published,
                             "shared_received", (json_int_t)m.shared_received,
                             "replicas", (json_int_t)m.replicas, "redis_up", m.redis_up));
    } else if (strcmp(a[0], "wait") == 0 && n == 4) {
        start_wait(WAIT_STATE, in, a[2], atoll(a[3]));
    } else if (strcmp(a[0], "waitevents") == 0 && n == 4) {
        start_wait(WAIT_EVENTS, in, a[2], atoll(a[3]));
    } else if (strcmp(a[0], "waitreplicas") == 0 && n == 4) {
        start_wait(WAIT_REPLICAS, in, a[2], atoll(a[3]));
    } else if (strcmp(a[0], "free") == 0) {
        inst_free(in);
        reply("ok");
    } else {
        reply("err usage");
    }
}

static void process_lines(void)
{
    char *line;

    while (!busy && (line = evbuffer_readln(input, NULL, EVBUFFER_EOL_LF)) != NULL) {
        handle(line);
        free(line);
    }
}

static void on_stdin(evutil_socket_t fd, short what, void *arg)
{
    int r;

    (void)what;
    (void)arg;
    r = evbuffer_read(input, fd, DRV_READ);
    if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) {
        event_del(ev_stdin);
        evbuffer_add(input, "\nquit\n", 6);     /* EOF: clean exit */
    }
    process_lines();
}

int main(void)
{
    int i;

    log_open(NULL, LOGL_INFO, LOGF_TEXT);
    base = event_base_new();
    input = evbuffer_new();
    if (base == NULL || input == NULL)
        return 1;
    fcntl(0, F_SETFL, fcntl(0, F_GETFL) | O_NONBLOCK);
    ev_stdin = event_new(base, 0, EV_READ | EV_PERSIST, on_stdin, NULL);
    ev_poll = evtimer_new(base, on_poll, NULL);
    ev_kick = evtimer_new(base, on_kick, NULL);
    event_add(ev_stdin, NULL);
    reply("ready");
    event_base_dispatch(base);
    for (i = 0; i < DRV_MAX; i++)
        if (insts[i].s)
            inst_free(&insts[i]);
    event_free(ev_stdin);
    event_free(ev_poll);
    event_free(ev_kick);
    evbuffer_free(input);
    event_base_free(base);
    log_close();
    return 0;
}
