/*
 * events.c -- the shared ring of event frames and its SSE watchers (see
 * events.h).
 *
 * The ring is a byte buffer written round and round under its own mutex;
 * `head` counts every byte ever appended, so a reader's position is a
 * plain 64-bit offset and "fell behind" is head - off > the ring's size.
 * Watchers live on the worker thread that accepted them, in that worker's
 * hub; the hub's timer reads the ring for each and never blocks on a
 * client: a watcher gets what fits under EVENTS_WATCHER_MAX and the rest
 * on later turns, unless the ring has moved past it meanwhile.
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/event.h>

#include "events.h"
#include "gw.h"
#include "http.h"
#include "log.h"
#include "worker.h"

/* --- the ring -------------------------------------------------------- */

static struct {
    pthread_mutex_t mu;
    char            buf[EVENTS_RING_BYTES];
    uint64_t        head;           /* bytes ever appended (atomic reads) */
    uint64_t        seq;            /* events ever appended */
    uint64_t        watchers;       /* atomic */
    uint64_t        dropped;        /* atomic */
} ring = { .mu = PTHREAD_MUTEX_INITIALIZER };

static void ring_put(const char *p, size_t n)
{
    size_t at = (size_t)(ring.head % EVENTS_RING_BYTES);
    size_t first = n < EVENTS_RING_BYTES - at ? n : EVENTS_RING_BYTES - at;

    memcpy(ring.buf + at, p, first);
    memcpy(ring.buf, p + first, n - first);
    __atomic_store_n(&ring.head, ring.head + n, __ATOMIC_RELEASE);
}

uint64_t events_head(void)
{
    return __atomic_load_n(&ring.head, __ATOMIC_ACQUIRE);
}

long events_read(uint64_t *off, char *buf, size_t max)
{
    uint64_t head;
    size_t n, at, first;

    pthread_mutex_lock(&ring.mu);
    head = ring.head;
    if (*off > head || head - *off > EVENTS_RING_BYTES) {
        pthread_mutex_unlock(&ring.mu);
        return -1;
    }
    n = (size_t)(head - *off) < max ? (size_t)(head - *off) : max;
    at = (size_t)(*off % EVENTS_RING_BYTES);
    first = n < EVENTS_RING_BYTES - at ? n : EVENTS_RING_BYTES - at;
    memcpy(buf, ring.buf + at, first);
    memcpy(buf + first, ring.buf, n - first);
    pthread_mutex_unlock(&ring.mu);
    *off += n;
    return (long)n;
}

void events_stats(struct events_stats *st)
{
    pthread_mutex_lock(&ring.mu);
    st->emitted = ring.seq;
    pthread_mutex_unlock(&ring.mu);
    st->watchers = __atomic_load_n(&ring.watchers, __ATOMIC_RELAXED);
    st->dropped = __atomic_load_n(&ring.dropped, __ATOMIC_RELAXED);
}

/* "data:" JSON with time and type first; NULL when out of memory. */
static char *event_json(const char *type, json_t *fields, int64_t unix_ms)
{
    time_t t = (time_t)(unix_ms / 1000);
    char when[64], *s;
    struct tm tm;
    json_t *o;

    gmtime_r(&t, &tm);
    strftime(when, 32, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(when + strlen(when), 32, ".%03uZ", (unsigned)(unix_ms % 1000));
    o = json_pack("{s:s, s:I, s:s}", "time", when, "time_ms", (json_int_t)unix_ms,
                  "type", type);
    if (o == NULL)
        return NULL;
    if (fields)
        json_object_update(o, fields);
    s = json_dumps(o, JSON_COMPACT);
    if (s && strlen(s) > EVENTS_FRAME_MAX) {
        free(s);
        json_object_clear(o);
        json_object_set_new(o, "time", json_string(when));
        json_object_set_new(o, "time_ms", json_integer((json_int_t)unix_ms));
        json_object_set_new(o, "type", json_string(type));
        json_object_set_new(o, "truncated", json_true());
        s = json_dumps(o, JSON_COMPACT);
    }
    json_decref(o);
    return s;
}

void events_emit(const char *type, json_t *fields)
{
    char id[32], *data;
    size_t n;

    data = event_json(type, fields, gw_unix_ms());
    json_decref(fields);
    if (data == NULL) {
        log_error("out of memory: event %s not sent to watchers", type);
        return;
    }
    n = strlen(data);
    pthread_mutex_lock(&ring.mu);
    snprintf(id, sizeof(id), "id: %" PRIu64 "\n", ++ring.seq);
    ring_put(id, strlen(id));
    ring_put("data: ", 6);
    ring_put(data, n);
    ring_put("\n\n", 2);
    pthread_mutex_unlock(&ring.mu);
    free(data);
}

/* --- watchers -------------------------------------------------------- */

struct watcher {
    struct http_req *req;
    struct hub      *hub;
    uint64_t         off;
    int64_t          last_ms;       /* when something was last sent */
    struct watcher  *prev, *next;
};

/* One per worker with watchers (worker.events). */
struct hub {
    struct worker  *w;
    struct event   *timer;
    struct watcher *list;
    char           *chunk;          /* [EVENTS_WATCHER_MAX] */
};

static void watcher_unlink(struct watcher *wt)
{
    if (wt->prev)
        wt->prev->next = wt->next;
    else
        wt->hub->list = wt->next;
    if (wt->next)
        wt->next->prev = wt->prev;
    __atomic_sub_fetch(&ring.watchers, 1, __ATOMIC_RELAXED);
    if (wt->hub->list == NULL && wt->hub->timer)
        event_del(wt->hub->timer);         /* idle until the next watcher */
}

static void watcher_gone(struct http_req *req, void *arg)
{
    struct watcher *wt = arg;

    watcher_unlink(wt);
    http_stream_end(req);                  /* frees the detached request */
    free(wt);
}

static void watcher_drop(struct watcher *wt, const char *why)
{
    log_warn("events: watcher %s dropped: %s", http_req_peer(wt->req), why);
    __atomic_add_fetch(&ring.dropped, 1, __ATOMIC_RELAXED);
    watcher_unlink(wt);
    http_req_abort(wt->req);
    free(wt);
}

static void watcher_drained(struct http_req *req, void *arg);

/* Sends wt what is new, within its share of output (the rest when that
 * is out, or on the next tick). Returns -1 when wt was dropped. */
static int watcher_feed(struct watcher *wt, uint64_t head, int64_t now)
{
    char *chunk = wt->hub->chunk;
    size_t pending = http_req_pending_output(wt->req);
    long n;

    if (head == wt->off) {
        if (now - wt->last_ms >= EVENTS_PING_MS && pending == 0) {
            http_stream_write(wt->req, ": ping\n\n", 8);
            wt->last_ms = now;
        }
        return 0;
    }
    if (pending >= EVENTS_WATCHER_MAX) {
        if (head - wt->off > EVENTS_RING_BYTES) {
            watcher_drop(wt, "fell a whole ring of events behind");
            return -1;
        }
        return 0;
    }
    n = events_read(&wt->off, chunk, EVENTS_WATCHER_MAX - pending);
    if (n < 0) {
        watcher_drop(wt, "fell a whole ring of events behind");
        return -1;
    }
    if (n > 0) {
        http_stream_write(wt->req, chunk, (size_t)n);
        wt->last_ms = now;
    }
    if (wt->off < events_head())            /* more: as soon as this is out */
        http_req_on_drain(wt->req, watcher_drained, wt);
    return 0;
}

static void watcher_drained(struct http_req *req, void *arg)
{
    (void)req;
    watcher_feed(arg, events_head(), gw_now_ms());
}

static void hub_tick(evutil_socket_t fd, short what, void *arg)
{
    struct hub *h = arg;
    struct watcher *wt, *next;
    uint64_t head = events_head();
    int64_t now = gw_now_ms();

    (void)fd;
    (void)what;
    for (wt = h->list; wt; wt = next) {
        next = wt->next;
        watcher_feed(wt, head, now);
    }
}

static struct hub *hub_of(struct worker *w)
{
    struct hub *h = w->events;

    if (h)
        return h;
    if ((h = calloc(1, sizeof(*h))) == NULL)
        return NULL;
    h->w = w;
    h->timer = event_new(w->base, -1, EV_PERSIST, hub_tick, h);
    h->chunk = malloc(EVENTS_WATCHER_MAX);
    if (h->timer == NULL || h->chunk == NULL) {
        if (h->timer)
            event_free(h->timer);
        free(h->chunk);
        free(h);
        return NULL;
    }
    w->events = h;
    return h;
}

void events_serve(struct gateway *gw, struct http_req *req)
{
    static const char hello[] = ": infergate events\nretry: 3000\n\n";
    struct timeval tv = { 0, EVENTS_POLL_MS * 1000 };
    struct worker *w = worker_self();
    struct watcher *wt;
    struct hub *h;

    if (strcmp(http_req_method(req), "HEAD") == 0) {   /* a head, no stream */
        http_resp_header(req, "Cache-Control", "no-store");
        http_reply(req, 200, "text/event-stream; charset=utf-8", NULL, 0);
        return;
    }
    if (gw->draining) {
        http_reply_error(req, 503, "service_unavailable", "shutting_down",
                         "the gateway is shutting down");
        return;
    }
    if (w == NULL || (h = hub_of(w)) == NULL || (wt = calloc(1, sizeof(*wt))) == NULL) {
        http_reply_error(req, 500, "server_error", "out_of_memory", "out of memory");
        return;
    }
    wt->req = req;
    wt->hub = h;
    wt->off = events_head();
    wt->last_ms = gw_now_ms();
    wt->next = h->list;
    if (h->list)
        h->list->prev = wt;
    h->list = wt;
    if (!evtimer_pending(h->timer, NULL))
        event_add(h->timer, &tv);
    __atomic_add_fetch(&ring.watchers, 1, __ATOMIC_RELAXED);
    http_resp_header(req, "Cache-Control", "no-store");
    http_resp_header(req, "X-Accel-Buffering", "no");
    http_stream_start(req, 200, "text/event-stream; charset=utf-8");
    http_req_set_sndbuf(req, EVENTS_SNDBUF);
    http_req_on_close(req, watcher_gone, wt);
    http_stream_write(req, hello, sizeof(hello) - 1);
}

void events_worker_end(struct worker *w)
{
    struct hub *h = w->events;

    if (h == NULL)
        return;
    while (h->list) {
        struct watcher *wt = h->list;
        if (w->running || !w->threaded)
            watcher_feed(wt, events_head(), gw_now_ms());
        if (h->list != wt)
            continue;                      /* dropped */
        watcher_unlink(wt);
        http_stream_end(wt->req);
        free(wt);
    }
    event_free(h->timer);
    free(h->chunk);
    free(h);
    w->events = NULL;
}
