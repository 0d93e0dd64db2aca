/*
 * proxy.c -- one proxied request's life (see proxy.h).
 *
 * A request walks a plan of steps: each step is a model (the request's own,
 * or one a fallback chain or a `models:` group rewrites it to), an optional
 * set of hosts and a time limit. Without fallback chains the plan is one
 * step. An attempt is a "leg": one upstream transfer to one host with one
 * key. The request's states:
 *
 *   ATTEMPT --leg started--> WAITING --2xx SSE head--> STREAMING --> done
 *      ^                        |     \--other head---> BUFFERING --> answer
 *      |                        |
 *      +-- leg failed before any byte went to the client: backoff, then the
 *          next host/key of this step, or the next step; out of attempts,
 *          steps or deadline: the final error
 *
 * In a parallel chain the first `race` steps start at once, one leg each;
 * the first leg with a successful head wins and the others are cancelled
 * (their transfers removed at once). Nothing is retried once the first
 * byte went to the client: a stream that breaks, stalls
 * (retry.stream_idle_timeout) or runs too long (retry.response_timeout)
 * ends with an SSE `event: error` frame, after whole events only (sse.h).
 * Every exit goes through px_done().
 *
 * The decisions -- the plan, each leg's host and key, what an outcome
 * means and what comes next -- are admit.c's (pure, unit-tested); this
 * file does the I/O and what goes with each transition (logs, events,
 * metrics, Redis advice, timers, the when_full queue).
 *
 * Threads: a request lives on the worker that read it (p->w). Shared state
 * -- host and key state, breakers, the balancer, metrics, alerts, the
 * session store, the retry budget, the snapshot's reference count and the
 * when_full queue -- is touched only under the state lock (lock.h), taken
 * in the small functions below and never across socket I/O.
 */
#include <ctype.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/event_struct.h>
#include <jansson.h>

#include "admit.h"
#include "ascii.h"
#include "balance.h"
#include "breaker.h"
#include "cache.h"
#include "cache_sse.h"
#include "content.h"
#include "gw.h"
#include "health.h"
#include "http.h"
#include "keys.h"
#include "alerts.h"
#include "log.h"
#include "metrics.h"
#include "observe.h"
#include "proxy.h"
#include "jscan.h"
#include "lock.h"
#include "retry.h"
#include "route.h"
#include "session.h"
#include "sse.h"
#include "upstream.h"
#include "usage.h"
#include "clients.h"
#include "worker.h"

#ifndef INFERGATE_VERSION
#define INFERGATE_VERSION "0.1.0"
#endif

#define PX_MAX_LEGS         ADMIT_MAX_RACE      /* parallel race width cap */
#define PX_LEGS_IN          1                   /* legs inside struct proxy */
#define PX_MAX_STEPS        ADMIT_MAX_STEPS
#define PX_STREAM_HIGH      (256 * 1024)        /* pause upstream above this */
#define PX_MAX_BUFFERED     (64 * 1024 * 1024)  /* non-streamed response cap */
#define PX_MAX_REQUEST_ID   64
#define PX_SPARE_MAX        16                  /* freed requests a worker keeps */
#define PX_USER_AGENT       "infergate/" INFERGATE_VERSION
#define PX_ID_SCAN          4096                /* stream bytes searched for an id */
#define PX_SSE_HOLD_MAX     (1024 * 1024)       /* an event held back until its end */
#define PX_CHUNKS_BATCH     64                  /* stream chunks counted per lock section */
#define PX_IDLE_TICKS       4                   /* idle checks per stream_idle_timeout */
#define PX_CONTENT_SCAN     (4 * 1024 * 1024)   /* stream bytes read for kept content */

enum px_state {
    PX_LOOKUP = 0, PX_ATTEMPT, PX_WAITING, PX_BUFFERING, PX_STREAMING, PX_DONE
};

/* Why the last attempt failed, for the final answer. */
enum px_fail {
    FAIL_NONE = 0, FAIL_NETWORK, FAIL_TIMEOUT, FAIL_STATUS, FAIL_TOO_LARGE
};

struct proxy;

/* A step's body when its model is rewritten (admit.h has the step). */
struct px_body {
    char        *body;           /* owned, NULL = the client's body */
    size_t       len;
};

/* One upstream attempt. */
struct px_leg {
    struct proxy         *p;
    struct upstream_xfer *xfer;          /* NULL when the leg is idle */
    int                   step;
    struct admit_pick     pk;            /* host, key, breaker tickets (open:
                                          * not yet recorded/released) */
    int                   status;
    int                   streaming;     /* its head started the client stream */
    int                   lat_sampled;   /* latency sample taken (stream head) */
    int64_t               t_try;
    int64_t               t_head;        /* its response head, 0 = none yet */
    int                   has_head;      /* px_on_headers ran for its transfer */
    const char           *ctype;         /* ... and found this Content-Type
                                          * (in the transfer's head), or NULL */
    int                   end_pending;   /* px_leg_end_locked() still to run */
    enum metrics_outcome  end_o;         /* ... with the outcome */
    int                   end_how;       /* ... and enum px_end */
    int64_t               t_end;         /* ... and the time it ended */
    unsigned              reads;         /* reads after the head */
    unsigned              reads_seen;    /* `reads` at the last idle tick */
    unsigned              chunks;        /* streamed chunks not yet in the metrics */
    int                   silent;        /* idle ticks in a row without a read */
    int64_t               tick_at;       /* when the next idle tick is due */
    int                   paused;        /* held for a slow client: not idle */
    struct event         *try_timer;     /* connect + first byte, then the
                                          * answer's idle and total limits */
    struct event          try_ev;        /* try_timer points here: no
                                          * event_new per leg */
    int                   try_on;        /* try_timer added, not yet fired
                                          * or deleted (px_try_off) */
    int64_t               try_due;       /* ... when it fires (gw_now_ms) */
    int                   try_early;     /* ... at the first idle tick, before
                                          * first_due (px_send) */
    int64_t               first_due;     /* the first-byte limit (gw_now_ms) */
    struct evbuffer      *buf;           /* buffered response body */
};

struct proxy {
    struct gateway       *gw;
    struct worker        *w;             /* whose thread runs this request */
    struct snapshot      *snap;          /* one reference, dropped at the end */
    struct http_req      *req;
    struct proxy         *prev, *next;   /* all requests in flight */
    char                 *query;         /* the client's query string, or NULL */
    const struct api_route *route;       /* endpoint family and its rules */
    const char           *body;          /* the client's bytes, owned by req */
    size_t                body_len;
    json_t               *doc;           /* parsed body, only for model rewrites */
    int                   json_body;     /* the body is a valid JSON object */
    char                 *prev_rid;      /* "previous_response_id", decoded */
    char                 *model;         /* NULL when the body has none */
    char                 *user;          /* body's "user", for consistent-hash */
    int                   want_stream;

    enum px_state         st;
    struct admit_req      ad;            /* plan, tried hosts, attempts (admit.h) */
    struct px_body        bodies[PX_MAX_STEPS];
    int                   rewrites;      /* some bodies[i].body is set */
    struct px_leg        *legs[PX_MAX_LEGS]; /* the first PX_LEGS_IN in leg_in, a
                                                race's others allocated (a held
                                                stream keeps one leg, not 16) */
    struct px_leg         leg_in[PX_LEGS_IN];
    int                   nlegs;         /* legs allocated */
    int                   active;        /* legs with a transfer */
    struct px_leg        *winner;        /* the leg answering the client */
    struct event         *deadline_timer;  /* &deadline_ev */
    struct event         *backoff_timer; /* &backoff_ev: wait before the next attempt */
    int                   deadline_on;   /* deadline_timer added, not fired
                                          * or deleted */
    int64_t               t_start, t_head;
    int64_t               t_up;          /* since when a leg has been out */
    int64_t               upstream_ms;   /* time with a leg out, for overhead */
    int                   last_host;     /* host of the last leg, -1 none */
    int                   last_key;      /* key of the last leg, -1 none */

    /* sessions: /v1/verify and routing.sticky */
    int                   verify;        /* POST /v1/verify: only the id's host */
    int                   owned;         /* a response id's request: only its host */
    enum session_kind     lookup_kind;
    char                 *lookup_key;    /* response id or sticky key, NULL none */
    struct session_call  *call;          /* lookup waiting for Redis */
    int                   lookup_sync;   /* inside session_get() */
    char                 *pinned;        /* host the lookup answered, or NULL */
    int                   id_done;       /* response id recorded or not found */
    char                 *rid;           /* the answer's response id, or NULL */
    struct evbuffer      *ctext;         /* keep_content: the stream so far */
    char                 *content;       /* verify: the kept content (JSON) */
    int                   content_done;  /* verify: its lookup answered */

    /* the response cache (cache.h) */
    int                   cache_res;     /* enum cache_result, -1 = not used */
    int                   cache_store;   /* store a 2xx answer under cache_key */
    int                   cache_wait;    /* the lookup out is the cache's (redis) */
    char                 *cache_val;     /* what Redis answered for it */
    struct evbuffer      *idscan;        /* stream prefix searched for the id */

    enum px_fail          fail;          /* last failure */
    int                   fail_status;
    int                   fail_host;

    struct proxy         *wait_next;     /* routing.when_full: queue */
    struct proxy         *wait_prev;
    int                   waiting;
    int64_t               queue_until;   /* 0 = not queued yet */
    uint64_t              freed_seen;    /* px_freed when the last pick failed */

    int                   resp_status;   /* what the client got */
    size_t                bytes_out;

    /* token usage (usage.h) */
    struct usage          usage;         /* what the answer reported */
    struct usage_stream  *ustream;       /* a stream's head and tail */
    int                   strip_usage;   /* drop the usage-only chunk we asked for */
    char                 *body_own;      /* the body with include_usage added */

    /* client limits (clients.h) */
    const struct cfg_client *client;     /* NULL = the gateway is open */
    struct limits_ticket  ticket;
    int                   admitted;      /* ticket holds a reservation */
    int                   accounted;     /* px_account() done */
    int                   admit_shared;  /* ... in Redis (settle there) */
    int                   admit_wait;    /* Redis's admission answer pending */
    char                 *admit_ans;     /* that answer; NULL = failed */
    int64_t               max_out;       /* max_tokens & co in the body; -1 none */

    /* A stream goes to the client in whole SSE events (sse.h). */
    struct sse_track      sse;
    struct evbuffer      *sse_hold;      /* an event's start, until its end */
    int                   sse_mid;       /* part of an oversized event went out */

    /* Strings, kept out of px_new()'s clearing (most of the struct's bytes):
     * each is written there, or emptied (its first byte), before any use. */
    char                  upath[512];    /* upstream path */
    char                  method[8];
    char                  model_in[64];  /* model and user when short (px_string) */
    char                  user_in[64];
    char                  id[PX_MAX_REQUEST_ID + 1];
    char                  peer[64];      /* copied: req may be gone at log time */
    char                  cache_key[CACHE_KEY_LEN + 1];
    char                  fail_msg[160];
    char                  admit_member[160]; /* in the client's in-flight set */

    /* Nor cleared: the timers, in the request (no event_new per request),
     * assigned when its memory is new; a worker's spare keeps them
     * assigned to that worker's loop, for the same request memory. */
    struct event          deadline_ev;
    struct event          backoff_ev;
};

/* Requests waiting for a free host (routing.when_full: queue), from
 * every worker, and how many host slots were freed so far: both under the
 * state lock. A request whose pick found every host full queues only if
 * no slot was freed since (another worker may have freed one meanwhile). */
static struct proxy *waitq, *waitq_tail;

/* px_new() clears all before ad and from bodies on: nothing in between. */
_Static_assert(offsetof(struct proxy, bodies)
               == offsetof(struct proxy, ad) + sizeof(struct admit_req),
               "bodies follows ad");
static uint64_t px_freed;

static void px_attempt(struct proxy *p);

/* The serving snapshot as admit.c sees it; built inside each section of
 * the state lock that calls admit.c (snap->bal is rebuilt on discoveries). */
static struct admit_view px_view(const struct proxy *p)
{
    const struct snapshot *s = p->snap;
    struct admit_view v = { s->cfg, s->hs, s->ks, s->rings, s->bal, s->live,
                            &s->bp, &s->rp };

    lock_assert_held();
    return v;
}
static void px_begin(struct proxy *p);
static void px_lookup_done(void *arg, const char *host);
static void px_cache_store(struct proxy *p, const struct px_leg *l, const char *ctype);
static void px_cache_store_stream(struct proxy *p);
static void px_start_rest(struct proxy *p);
static int px_admit_finish(struct proxy *p);
static void px_start(struct proxy *p);
static int px_cache_resume(struct proxy *p);
static void px_cache_count(struct proxy *p, int res);
static void px_leg_cancel(struct px_leg *l);
static void px_leg_end_locked(struct px_leg *l);
static void px_arm_answer_timer(struct px_leg *l, int64_t now);
static void px_try_off(struct px_leg *l);
static void px_remember(struct proxy *p, const struct px_leg *l, const char *id);
static void px_scan_id(struct proxy *p, const struct px_leg *l,
                       const char *data, size_t len);

static const char *px_cache_label(int r)
{
    return r == CACHE_HIT ? "HIT" : r == CACHE_MISS ? "MISS" : "BYPASS";
}

/* sessions.keep_content applies to this request's answer. */
static int px_keeps_content(const struct proxy *p)
{
    return p->snap->cfg->sessions.keep_content && p->route->family == API_CHAT;
}

/* --- bookkeeping ----------------------------------------------------- */

static void px_access_log(struct proxy *p)
{
    const struct config *c = p->snap->cfg;
    struct log_access a;
    int64_t now = gw_now_ms();

    memset(&a, 0, sizeof(a));
    a.request_id = p->id;
    a.method = p->method;
    a.path = p->upath;
    a.route = metrics_route_name(metrics_route_of_family((int)p->route->family, p->upath));
    a.model = p->model;
    a.host = p->last_host >= 0 ? c->hosts[p->last_host].name : NULL;
    a.key_fp = p->last_key >= 0 ? c->keys[p->last_key].fingerprint : NULL;
    a.peer = p->peer;
    a.status = p->resp_status;
    a.attempts = p->ad.attempts;
    a.stream = p->st == PX_STREAMING;
    a.ttfb_ms = p->t_head ? (double)(p->t_head - p->t_start) : 0;
    a.total_ms = (double)(now - p->t_start);
    a.bytes_out = p->bytes_out;
    a.cache = p->cache_res >= 0 ? px_cache_label(p->cache_res) : NULL;
    a.client = p->client ? p->client->name : NULL;
    a.token_have = p->usage.have;
    a.tokens_in = p->usage.input;
    a.tokens_out = p->usage.output;
    a.tokens_cached = p->usage.cached;
    log_access(&a);
}

/* Under the state lock. */
static void px_unqueue(struct proxy *p)
{
    if (!p->waiting)
        return;
    if (p->wait_prev)
        p->wait_prev->wait_next = p->wait_next;
    else
        waitq = p->wait_next;
    if (p->wait_next)
        p->wait_next->wait_prev = p->wait_prev;
    else
        waitq_tail = p->wait_prev;
    p->waiting = 0;
    p->wait_next = p->wait_prev = NULL;
}

/* A host has room again: the oldest waiting request tries now (on the
 * next loop turn of its own worker, not inside the caller's stack).
 * Under the state lock. */
static void px_wake_one(void)
{
    struct proxy *p = waitq;
    struct timeval now = { 0, 0 };

    px_freed++;
    if (p == NULL)
        return;
    px_unqueue(p);
    evtimer_add(p->backoff_timer, &now);    /* thread-safe */
}

/* The client's reservation becomes what was used: the usage the answer
 * reported, else (no usage: failed, cancelled before it came) the input
 * part of the reservation when an upstream was reached, else nothing.
 * Under the state lock. */
static void px_settle(struct proxy *p)
{
    int64_t in = 0, out = 0;

    if (p->usage.have) {
        in = (int64_t)p->usage.input;
        out = (int64_t)p->usage.output;
    } else if (p->last_host >= 0) {
        in = p->ticket.reserved_in;
    }
    if (p->admit_shared)
        clients_settle_shared(p->gw->sess, p->snap->cfg, p->client->name, &p->ticket,
                              p->admit_member, gw_unix_ms(), in, out);
    else
        clients_settle(p->client->name, &p->ticket, p->snap->cfg->limits.window_ms,
                       gw_unix_ms(), in, out);
    p->admitted = 0;
}

/* Frees p: its legs are cancelled, then one section under the state lock
 * ends its shared life (metrics `m` when not NULL, the queue, the session
 * lookup, the snapshot reference), then its own memory goes. */
/* free() for the request's strings, most of them never set: no call for
 * those. */
static inline void px_free_set(void *m)
{
    if (m != NULL)
        free(m);
}

/* Frees p once px_account() has counted it. */
static void px_free(struct proxy *p)
{
    int i;

    for (i = 0; i < p->nlegs; i++)
        px_leg_cancel(p->legs[i]);
    lock_take();
    for (i = 0; i < p->nlegs; i++)
        px_leg_end_locked(p->legs[i]);   /* nothing: each outcome did it */
    session_cancel(p->call);    /* before backoff_timer goes: see px_lookup_done */
    p->call = NULL;
    snapshot_unref(p->snap);
    lock_drop();
    if (p->prev)
        p->prev->next = p->next;
    else
        p->w->inflight = p->next;
    if (p->next)
        p->next->prev = p->prev;
    for (i = 0; i < p->nlegs; i++) {
        px_try_off(p->legs[i]);
        if (p->legs[i]->buf)
            evbuffer_free(p->legs[i]->buf);
        if (i >= PX_LEGS_IN)
            free(p->legs[i]);
    }
    admit_req_free(&p->ad);                /* a plan may have been cut short */
    for (i = 0; p->rewrites && i < PX_MAX_STEPS; i++)  /* most requests: none */
        free(p->bodies[i].body);
    if (p->deadline_on)
        event_del(p->deadline_timer);
    if (evtimer_pending(p->backoff_timer, NULL))   /* added by other workers too */
        event_del(p->backoff_timer);
    if (p->idscan)
        evbuffer_free(p->idscan);
    if (p->ctext)
        evbuffer_free(p->ctext);
    px_free_set(p->rid);
    px_free_set(p->content);
    px_free_set(p->cache_val);
    if (p->sse_hold)
        evbuffer_free(p->sse_hold);
    usage_stream_free(p->ustream);
    px_free_set(p->body_own);
    px_free_set(p->admit_ans);
    px_free_set(p->query);
    px_free_set(p->lookup_key);
    px_free_set(p->pinned);
    json_decref(p->doc);
    px_free_set(p->prev_rid);
    if (p->model != p->model_in)
        free(p->model);
    if (p->user != p->user_in)
        free(p->user);
    /* The worker keeps a few requests' memory for its next ones (5 KB
     * each: a malloc and a free per request fewer); proxy_abort_all()
     * frees them. */
    if (p->w == worker_self() && p->w->px_nspare < PX_SPARE_MAX) {
        p->next = p->w->px_spare;
        p->w->px_spare = p;
        p->w->px_nspare++;
    } else {
        free(p);
    }
}

/* The common exit: the reply was sent (or the client left). */
/*
 * The request's end as others see it: its access log line, metrics and
 * alerts, the client's limits settled, its queue place and in_flight. A
 * reply site calls it just before the answer's last bytes go out (a whole
 * answer leaves with one writev, before the handler returns), so a client
 * that has its answer finds it counted everywhere; px_done() calls it for
 * the others. Once.
 */
static void px_account(struct proxy *p)
{
    int64_t now = gw_now_ms();
    struct metrics_req m;
    int i;

    if (p->accounted)
        return;
    p->accounted = 1;
    if (p->active > 0)
        p->upstream_ms += now - p->t_up;
    memset(&m, 0, sizeof(m));
    m.route = metrics_route_of_family((int)p->route->family, p->upath);
    m.status = p->resp_status;
    m.host = p->last_host >= 0 ? p->snap->mh[p->last_host] : NULL;
    m.model = p->model;
    m.ttfb_ms = p->t_head ? (double)(p->t_head - p->t_start) : -1;
    m.total_ms = (double)(now - p->t_start);
    m.upstream_ms = (double)p->upstream_ms;
    px_access_log(p);
    lock_take();
    if (p->usage.have && p->last_host >= 0) {
        struct host_state *hs = p->snap->hs[p->last_host];
        uint64_t n[METRICS_TOKEN_KINDS] = { p->usage.input, p->usage.output,
                                            p->usage.cached };
        for (i = 0; i < METRICS_TOKEN_KINDS; i++)
            hs->tokens[i] += n[i];
        metrics_tokens(m.host, m.model, p->usage.have, n);
    }
    metrics_request(&m);
    alerts_observe(p->gw->alerts, NULL, m.status < 500,
                   m.ttfb_ms >= 0 ? m.ttfb_ms : m.total_ms, now);
    if (p->admitted)
        px_settle(p);
    else if (p->admit_wait && p->client) {
        struct limits_ticket t = p->ticket;     /* gone before Redis answered */
        t.reserved = -1;
        clients_settle_shared(p->gw->sess, p->snap->cfg, p->client->name, &t,
                              p->admit_member, gw_unix_ms(), 0, 0);
    }
    px_unqueue(p);
    p->gw->active--;
    lock_drop();
}

static void px_done(struct proxy *p)
{
    px_account(p);
    p->st = PX_DONE;
    px_free(p);
}

/* http_resp_header() for one of our own names (nlen bytes, no CR, LF or
 * ':'): only the value is searched; one holding CR or LF is dropped. */
static void px_resp_value(struct proxy *p, const char *name, size_t nlen, const char *value)
{
    size_t vlen = strcspn(value, "\r\n");

    if (value[vlen] == '\0')
        http_resp_header_n(p->req, name, nlen, value, vlen);
}

static void px_add_headers(struct proxy *p)
{
    const struct cfg_host *h = p->last_host >= 0 ? &p->snap->cfg->hosts[p->last_host]
                                                 : NULL;
    const char *cl;
    char n[16];

    /* Our own fields need no CR/LF search: the id passed valid_request_id()
     * or is px_make_id()'s, the rest are digits and constants. */
    http_resp_header_n(p->req, "X-Request-Id", 12, p->id, strlen(p->id));
    if (h) {
        px_resp_value(p, "X-Upstream-Host", 15, h->name);
        if (h->address)
            px_resp_value(p, "X-Provider-Address", 18, h->address);
    }
    if (p->ad.attempts >= 0 && p->ad.attempts < 100) {    /* no printf on every answer */
        n[0] = (char)('0' + p->ad.attempts / 10);
        n[1] = (char)('0' + p->ad.attempts % 10);
        n[2] = '\0';
        http_resp_header_n(p->req, "X-Attempts", 10, n + (p->ad.attempts < 10),
                           1 + (p->ad.attempts >= 10));
    } else {
        snprintf(n, sizeof(n), "%d", p->ad.attempts);
        http_resp_header_n(p->req, "X-Attempts", 10, n, strlen(n));
    }
    if (p->cache_res >= 0) {
        cl = px_cache_label(p->cache_res);
        http_resp_header_n(p->req, "X-Cache", 7, cl, strlen(cl));
    }
}

static void px_error(struct proxy *p, int status, const char *type,
                     const char *code, const char *msg)
{
    int i;

    for (i = 0; i < p->nlegs; i++)
        px_leg_cancel(p->legs[i]);
    p->resp_status = status;
    px_add_headers(p);
    px_account(p);
    if (p->route->flags & API_ANTHROPIC) {
        char *b = route_error_body(p->route->flags, status, type, code, msg);
        if (b)
            http_reply(p->req, status, "application/json", b, strlen(b));
        else
            http_reply(p->req, status, NULL, NULL, 0);
        free(b);
    } else {
        http_reply_error(p->req, status, type, code, "%s", msg);
    }
    px_done(p);
}

/* Seconds until the first of the request's candidate keys is usable. */
static int64_t px_soonest_key_s(const struct proxy *p)
{
    struct admit_view v;
    int64_t best;

    lock_take();
    v = px_view(p);
    best = admit_soonest_key_ms(&v, gw_now_ms());
    lock_drop();
    return best <= 0 ? 1 : (best + 999) / 1000;
}

/* The final answer when no attempt succeeded. */
static void px_fail_final(struct proxy *p)
{
    const struct config *c = p->snap->cfg;
    const char *hname = p->fail_host >= 0 ? c->hosts[p->fail_host].name : "-";
    char msg[320];

    if (p->ad.attempts == 0) {
        size_t i;
        for (i = 0; i < c->nhosts && !config_host_serves_api(&c->hosts[i],
                                                             (int)p->route->family); i++)
            ;
        if (i == c->nhosts && c->nhosts > 0) {
            snprintf(msg, sizeof(msg), "no host serves the %s API (hosts' \"apis\")",
                     route_family_name(p->route->family));
            px_error(p, 404, "invalid_request_error", "api_not_served", msg);
            return;
        }
        if (p->ad.pick_status == BALANCE_NO_MODEL && c->nhosts > 0) {
            snprintf(msg, sizeof(msg), "no host serves model \"%.100s\"",
                     p->model ? p->model : "");
            px_error(p, 404, "invalid_request_error", "model_not_found", msg);
        } else if (p->ad.keys_cooling) {
            snprintf(msg, sizeof(msg), "%lld", (long long)px_soonest_key_s(p));
            http_resp_header(p->req, "Retry-After", msg);
            px_error(p, 429, "rate_limit_error", "keys_cooling_down",
                     "every upstream API key is cooling down; retry later");
        } else if (p->ad.pick_status == BALANCE_ALL_FULL) {
            px_error(p, 429, "rate_limit_error", "hosts_full",
                     "every usable host is at its max_concurrent limit");
        } else {
            px_error(p, 503, "service_unavailable", "no_usable_host",
                     "no usable upstream host (all unhealthy or circuit open)");
        }
        return;
    }
    switch (p->fail) {
    case FAIL_TIMEOUT:
        snprintf(msg, sizeof(msg), "upstream %s timed out after %d attempt(s)",
                 hname, p->ad.attempts);
        px_error(p, 504, "upstream_error", "upstream_timeout", msg);
        return;
    case FAIL_STATUS:
        snprintf(msg, sizeof(msg), "upstream %s answered %d after %d attempt(s)",
                 hname, p->fail_status, p->ad.attempts);
        if (p->fail_status == 429)
            px_error(p, 429, "rate_limit_error", "upstream_rate_limited", msg);
        else
            px_error(p, 502, "upstream_error", "upstream_failed", msg);
        return;
    case FAIL_TOO_LARGE:
        snprintf(msg, sizeof(msg), "upstream %s response exceeds %d bytes",
                 hname, PX_MAX_BUFFERED);
        px_error(p, 502, "upstream_error", "upstream_response_too_large", msg);
        return;
    default:
        snprintf(msg, sizeof(msg), "upstream %s failed after %d attempt(s): %s",
                 hname, p->ad.attempts, p->fail_msg);
        px_error(p, 502, "upstream_error", "upstream_failed", msg);
        return;
    }
}

/* --- legs ------------------------------------------------------------ */

/* The model a leg asks for (its step's, or the request's). */
static const char *px_leg_model(const struct px_leg *l)
{
    const char *m = l->p->ad.steps[l->step].model;

    return m ? m : l->p->model;
}

/* How a leg ended, besides its outcome (px_leg_end). */
enum px_end {
    PX_END_OUTCOME = 0,   /* an outcome follows (px_leg_record, px_leg_failed) */
    PX_END_CANCEL,        /* none does: the breaker tickets go back */
    PX_END_STALL_IDLE,    /* the answer stalled: a stall in metrics */
    PX_END_STALL_TOTAL    /* the answer took too long: likewise */
};

/* The shared half of px_leg_end(): the host's in-flight count, metrics and
 * alert samples for the outcome, the host's latency estimate when the head
 * did not give it (a whole answer; a failed or abandoned attempt only as a
 * lower bound: it may raise the estimate, never lower it), and what the
 * end adds. Nothing when it was done already. Caller holds the state lock. */
static void px_leg_end_locked(struct px_leg *l)
{
    struct proxy *p = l->p;
    struct host_state *hs = p->snap->hs[l->pk.host];
    enum metrics_outcome o = l->end_o;
    int64_t now = l->t_end;
    double ttfb = l->t_head ? (double)(l->t_head - l->t_try) : -1;

    if (!l->end_pending)
        return;
    l->end_pending = 0;
    if (hs->live.in_flight > 0)
        hs->live.in_flight--;
    if (!l->lat_sampled)
        balance_observe_peak(&hs->live, (double)(now - l->t_try), now,
                             p->snap->cfg->routing.latency_decay_ms,
                             o != METRICS_OUTCOME_SUCCESS &&
                             o != METRICS_OUTCOME_CLIENT_ERROR);
    l->lat_sampled = 1;
    px_wake_one();
    metrics_attempt(p->snap->mh[l->pk.host], o, ttfb, (double)(now - l->t_try));
    if (l->chunks) {
        metrics_stream_chunks(p->snap->mh[l->pk.host], l->chunks);
        l->chunks = 0;
    }
    if (o != METRICS_OUTCOME_CANCELLED)
        alerts_observe(p->gw->alerts, p->snap->cfg->hosts[l->pk.host].name,
                       o == METRICS_OUTCOME_SUCCESS || o == METRICS_OUTCOME_CLIENT_ERROR,
                       ttfb >= 0 ? ttfb : (double)(now - l->t_try), now);
    if (l->end_how == PX_END_CANCEL) {
        struct admit_view v = px_view(p);
        admit_release(&v, &l->pk);
    } else if (l->end_how != PX_END_OUTCOME) {
        metrics_upstream_stall(p->snap->mh[l->pk.host], l->end_how == PX_END_STALL_TOTAL);
    }
}

/* Ends a leg: its first-byte timer and the request's legs out now; the
 * shared half (px_leg_end_locked) goes with the section of the state lock
 * that records the outcome (px_leg_record_locked), or, for a cancelled
 * leg, in one of its own. */
static void px_leg_end(struct px_leg *l, enum metrics_outcome o, enum px_end how)
{
    struct proxy *p = l->p;
    int64_t now = gw_now_ms();

    px_try_off(l);
    if (--p->active == 0)
        p->upstream_ms += now - p->t_up;
    l->end_pending = 1;
    l->end_o = o;
    l->end_how = how;
    l->t_end = now;
    if (how != PX_END_CANCEL)
        return;
    lock_take();
    px_leg_end_locked(l);
    lock_drop();
}

/* Drops a leg's transfer without an outcome (lost race, client gone,
 * deadline, shutdown): the breaker gets its admission back. */
static void px_leg_cancel(struct px_leg *l)
{
    if (l->xfer == NULL)
        return;
    upstream_cancel(l->xfer);
    l->xfer = NULL;
    px_leg_end(l, METRICS_OUTCOME_CANCELLED, PX_END_CANCEL);
}

/*
 * Feeds one finished leg to the breakers and the host's counters
 * (admit_record: a failure that is an HTTP answer -- the host is up, the
 * model may not be -- goes only to the host+model breaker when there is
 * one), then says what changed: logs, events, Redis advice, passive
 * health. Caller holds the state lock.
 */
static void px_leg_record_locked(struct px_leg *l, int failure, int answered)
{
    struct proxy *p = l->p;
    struct host_state *hs = p->snap->hs[l->pk.host];
    const char *hname = p->snap->cfg->hosts[l->pk.host].name;
    int64_t now = gw_now_ms();
    struct admit_view v = px_view(p);
    struct admit_recorded r;
    int was_usable;

    px_leg_end_locked(l);             /* its accounting, in the same section */
    r = admit_record(&v, &l->pk, failure, answered, now - l->t_try, now);
    if (r.host_recorded) {
        if (r.host_after == BREAKER_OPEN && r.host_before != BREAKER_OPEN) {
            log_warn("host %s: circuit breaker opened", hname);
            session_publish_breaker(p->gw->sess, hname,
                                    gw_unix_from_mono(breaker_open_until(&hs->br)));
        }
        observe_breaker(hs, hname, r.host_before, NULL);
        observe_breaker(hs, hname, r.host_after, NULL);
    }
    if (r.model_opened) {
        log_warn("host %s: breaker for model %s is open", hname, px_leg_model(l));
        observe_breaker(hs, hname, BREAKER_OPEN, px_leg_model(l));
    }
    if (!r.counts_for_host)
        return;
    was_usable = hs->live.usable;
    switch (health_passive(p->snap->cfg, hs, !failure, NULL, l->t_try, now)) {
    case HEALTH_PASSIVE_EJECTED:
        log_warn("host %s ejected for %lld ms after %llu failed requests in a row"
                 " (ejection %d in a row)", hname,
                 (long long)(hs->ejected_until_ms - now),
                 (unsigned long long)hs->consecutive_failures, hs->ejections);
        observe_host_out(hs, hname, "passive", hs->last_error);
        break;
    case HEALTH_PASSIVE_RETURNED:
        log_info("host %s is back: a request sent during its ejection succeeded", hname);
        observe_host_back(hs, hname);
        break;
    }
    if (hs->live.usable != was_usable)
        p->gw->health_moved(p->gw);
}

static void px_leg_record(struct px_leg *l, int failure, int answered)
{
    lock_take();
    px_leg_record_locked(l, failure, answered);
    lock_drop();
}

/* Records why a leg failed, for the final answer and the host's status
 * (its logging is px_note_log's). Caller holds the state lock. */
static void px_note_failure_locked(struct px_leg *l, enum px_fail why, int status,
                                   const char *msg)
{
    struct proxy *p = l->p;
    struct host_state *hs = p->snap->hs[l->pk.host];

    lock_assert_held();
    p->fail = why;
    p->fail_status = status;
    p->fail_host = l->pk.host;
    snprintf(p->fail_msg, sizeof(p->fail_msg), "%s", msg);
    snprintf(hs->last_error, sizeof(hs->last_error), "%s", msg);
}

static void px_note_log(const struct px_leg *l, const char *msg)
{
    const struct proxy *p = l->p;

    log_warn("request %s: attempt %d to %s failed: %s", p->id, p->ad.attempts,
             p->snap->cfg->hosts[l->pk.host].name, msg);
}

/* A leg that failed without a retry to follow (a stream cut short, a
 * losing leg's oversized answer): the breakers and the failure, in one
 * section of the state lock. */
static void px_leg_lost(struct px_leg *l, enum px_fail why, const char *msg)
{
    lock_take();
    px_leg_record_locked(l, 1, 0);
    px_note_failure_locked(l, why, 0, msg);
    lock_drop();
    px_note_log(l, msg);
}

/* --- outcome and what comes next ------------------------------------- */

/* After a backoff, a wake-up from the queue, or the queue timeout. */
static void px_backoff_done(evutil_socket_t fd, short what, void *arg)
{
    struct proxy *p = arg;

    (void)fd;
    (void)what;
    lock_take();
    px_unqueue(p);
    lock_drop();
    if (p->st == PX_LOOKUP) {
        px_begin(p);                  /* Redis answered on the main thread */
        return;
    }
    px_attempt(p);
}

/* Moves to the next step of the plan; returns 0 when there is none. */
static int px_next_step(struct proxy *p)
{
    if (!admit_next_step(&p->ad))
        return 0;
    log_info("request %s: falling back to step %d (model %s)", p->id, p->ad.step + 1,
             p->ad.steps[p->ad.step].model ? p->ad.steps[p->ad.step].model : "unchanged");
    return 1;
}

/*
 * A leg failed before any byte went to the client. admit_classify() says
 * what it means; one section of the state lock feeds it to the breakers,
 * the key and the counters (and, for a retry, takes it from the retry
 * budget); then, unless other legs of a race are still running, the next
 * attempt is scheduled (after a backoff), the plan moves to the next
 * fallback step, or the final answer goes.
 */
static void px_leg_failed(struct px_leg *l, enum retry_fault fault, int status,
                          const char *retry_after, const char *msg)
{
    struct proxy *p = l->p;
    const struct config *c = p->snap->cfg;
    struct gateway *gw = p->gw;
    struct admit_verdict v = admit_classify(&p->snap->rp, &p->ad, &l->pk, fault, status,
                                            p->active);
    int64_t now = gw_now_ms(), ra_ms = -1, delay = -1;
    int spent = 0;

    if (retry_after)
        ra_ms = retry_after_parse(retry_after, gw_unix_ms() / 1000);
    lock_take();
    px_leg_record_locked(l, v.rv.host_failure, fault == RETRY_FAULT_NONE);
    if (v.key_report && keys_report(p->snap->ks[l->pk.key], status, ra_ms, now)) {
        const struct key_state *ks = p->snap->ks[l->pk.key];
        log_warn("key %s (%s) %s after upstream %d from %s",
                 c->keys[l->pk.key].fingerprint, c->keys[l->pk.key].description,
                 v.rv.key == RETRY_KEY_DISABLE ? "disabled until reload" : "cooling down",
                 status, c->hosts[l->pk.host].name);
        session_publish_key(gw->sess, c->keys[l->pk.key].id, ks->disabled,
                            ks->disabled ? 0 : gw_unix_from_mono(ks->cooldown_until_ms));
        observe_key(p->snap->ks[l->pk.key], &c->keys[l->pk.key],
                    ks->disabled ? "disabled" : "cooling", status, c->hosts[l->pk.host].name,
                    ks->disabled ? 0 : gw_unix_from_mono(ks->cooldown_until_ms), NULL);
    }
    px_note_failure_locked(l, fault == RETRY_FAULT_TIMEOUT ? FAIL_TIMEOUT
                              : fault == RETRY_FAULT_NETWORK ? FAIL_NETWORK : FAIL_STATUS,
                           status, msg);
    if (v.next == ADMIT_RETRY) {
        uint64_t rnd;

        spent = retry_budget_try_spend(&gw->budget, now);
        if (!spent) {
            gw->budget_exhausted_total++;
            metrics_retry_budget_exhausted();
        }
        rnd = retry_rand(&gw->rnd);
        if (spent)
            delay = admit_delay(&p->snap->rp, c, &p->ad, &v.rv, rnd, ra_ms, p->t_start, now);
        if (delay >= 0) {
            gw->retries_total++;
            metrics_retry();
        }
    }
    lock_drop();
    px_note_log(l, msg);
    switch (v.next) {
    case ADMIT_WAIT:
        return;               /* other legs of the race are still running */
    case ADMIT_RACE_LOST:
        /* The race is lost as a whole: go on with the steps after it. */
        admit_race_lost(&p->ad);
        if (!px_next_step(p)) {
            px_fail_final(p);
            return;
        }
        px_attempt(p);
        return;
    case ADMIT_GIVE_UP:
        px_fail_final(p);
        return;
    case ADMIT_NEXT_STEP:
        if (px_next_step(p)) {
            px_attempt(p);
            return;
        }
        px_fail_final(p);
        return;
    case ADMIT_RETRY:
        break;
    }
    if (!spent) {
        log_warn("request %s: retry budget exhausted (ratio %.2f over %lld ms);"
                 " not retrying", p->id, c->retry.budget_ratio,
                 (long long)c->retry.budget_window_ms);
        px_fail_final(p);
        return;
    }
    if (delay < 0) {              /* the backoff would end past the deadline */
        px_fail_final(p);
        return;
    }
    p->st = PX_ATTEMPT;
    {
        struct timeval tv = { (time_t)(delay / 1000), (suseconds_t)((delay % 1000) * 1000) };
        evtimer_add(p->backoff_timer, &tv);
    }
}

/* --- upstream callbacks ---------------------------------------------- */

/* Fields the answer does not pass on (hop-by-hop, or set by infergate):
 * one compare or two, chosen by the name's length (n bytes). */
static int hop_by_hop(const char *name, size_t n)
{
    switch (n) {
    case 2:  return ascii_lower_eq(name, "te", 2);
    case 4:  return ascii_lower_eq(name, "date", 4);
    case 6:  return ascii_lower_eq(name, "server", 6);
    case 7:  return ascii_lower_eq(name, "trailer", 7) || ascii_lower_eq(name, "upgrade", 7);
    case 10: return ascii_lower_eq(name, "connection", 10)
                    || ascii_lower_eq(name, "keep-alive", 10);
    case 12: return ascii_lower_eq(name, "content-type", 12)
                    || ascii_lower_eq(name, "x-request-id", 12);
    case 14: return ascii_lower_eq(name, "content-length", 14);
    case 16: return ascii_lower_eq(name, "proxy-connection", 16);
    case 17: return ascii_lower_eq(name, "transfer-encoding", 17);
    case 18: return ascii_lower_eq(name, "proxy-authenticate", 18);
    default: return 0;
    }
}

static void px_copy_headers(struct proxy *p, const struct upstream_xfer *x)
{
    struct upstream_rh_iter it = { 0, 0 };
    const char *name, *value;
    size_t n;

    while (upstream_resp_header_next(x, &it, &name, &n, &value)) {
        if (p->client && n >= 12 && ascii_lower_eq(name, "x-ratelimit-", 12))
            continue;                /* the client's own limits say it */
        if (!hop_by_hop(name, n))
            http_resp_header(p->req, name, value);
    }
}

static void px_drain(struct http_req *req, void *arg)
{
    struct px_leg *l = arg;

    (void)req;
    l->paused = 0;                  /* the pause was ours, not the upstream's */
    if (l->xfer)
        upstream_resume(l->xfer);   /* may call px_on_data right away */
}

/* The winner takes the client: every other leg of the race is dropped. */
static void px_take_winner(struct proxy *p, struct px_leg *l)
{
    int i;

    p->winner = l;
    p->last_host = l->pk.host;
    p->last_key = l->pk.has_key ? (int)l->pk.key : -1;
    for (i = 0; i < p->nlegs; i++)
        if (p->legs[i] != l && p->legs[i]->xfer) {
            log_debug("request %s: race won by %s, cancelling %s", p->id,
                      p->snap->cfg->hosts[l->pk.host].name,
                      p->snap->cfg->hosts[p->legs[i]->pk.host].name);
            /* Not from inside l's own curl callback: legs are distinct. */
            px_leg_cancel(p->legs[i]);
        }
}

static enum upstream_verdict px_on_headers(void *arg, struct upstream_xfer *x,
                                           int status)
{
    struct px_leg *l = arg;
    struct proxy *p = l->p;
    const char *ctype = upstream_resp_header(x, "Content-Type");
    struct host_state *hs = p->snap->hs[l->pk.host];
    int64_t now = gw_now_ms();
    /* Passed on as it arrives: an event stream, or a raw answer (audio). */
    int stream = (ctype && strnlen(ctype, 17) == 17
                  && ascii_lower_eq(ctype, "text/event-stream", 17))
                 || (p->route->flags & API_ANSWER_RAW);

    l->status = status;
    l->t_head = now;
    l->has_head = 1;
    l->ctype = ctype;
    l->reads = l->reads_seen = 0;
    l->silent = 0;
    l->paused = 0;
    px_arm_answer_timer(l, now);      /* replaces the first-byte timer */
    if (stream && status >= 200 && status < 300) {
        /* A stream's latency is its first byte, not its length. */
        lock_take();
        balance_observe_peak(&hs->live, (double)(now - l->t_try), now,
                             p->snap->cfg->routing.latency_decay_ms, 0);
        l->lat_sampled = 1;
        lock_drop();
    }
    evbuffer_drain(l->buf, evbuffer_get_length(l->buf));
    if (p->winner || status < 200 || status >= 300)
        return UPSTREAM_CONTINUE;     /* judged when complete */
    px_take_winner(p, l);
    p->t_head = now;
    if (stream) {
        /* The first byte goes to the client now: no retry after this. */
        p->st = PX_STREAMING;
        l->streaming = 1;
        p->deadline_on = 0;
        event_del(p->deadline_timer);
        p->resp_status = status;
        px_add_headers(p);
        px_copy_headers(p, x);
        http_stream_start(p->req, status, ctype ? ctype : "application/octet-stream");
        px_remember(p, l, NULL);
        /* Not in audio, and a retrieved response's was counted already. */
        if (!(p->route->flags & (API_ANSWER_RAW | API_ID_IN_PATH)))
            p->ustream = usage_stream_new();  /* none: not counted */
        if (px_keeps_content(p) || (p->cache_store && status == 200))
            p->ctext = evbuffer_new();
        return UPSTREAM_CONTINUE;
    }
    p->st = PX_BUFFERING;
    return UPSTREAM_CONTINUE;
}

static size_t px_write(struct proxy *p, const char *data, size_t len)
{
    p->bytes_out += len;
    return http_stream_write(p->req, data, len);
}

/* Writes whole events; with usage.include_in_stream, without the
 * usage-only chunk the client did not ask for. Returns what is queued on
 * the client's socket. */
static size_t px_write_events(struct proxy *p, const char *ev, size_t n)
{
    const char *e = ev + n, *run = ev, *at;
    size_t pending = 0;
    int wrote = 0;

    if (!p->strip_usage)
        return px_write(p, ev, n);
    while ((at = memmem(ev, (size_t)(e - ev), "\n\n", 2)) != NULL) {
        if (usage_only_event(ev, (size_t)(at - ev))) {
            if (ev > run) {
                pending = px_write(p, run, (size_t)(ev - run));
                wrote = 1;
            }
            run = at + 2;
        }
        ev = at + 2;
    }
    if (e > run) {
        pending = px_write(p, run, (size_t)(e - run));
        wrote = 1;
    }
    return wrote ? pending : http_req_pending_output(p->req);
}

/* Writes what p->sse_hold holds (whole events, or at the end what is left
 * as it came) and empties it. */
static size_t px_write_hold(struct proxy *p, int events)
{
    size_t n = evbuffer_get_length(p->sse_hold), pending;
    const char *b = (const char *)evbuffer_pullup(p->sse_hold, -1);

    pending = events ? px_write_events(p, b, n) : px_write(p, b, n);
    evbuffer_drain(p->sse_hold, n);
    return pending;
}

/*
 * Passes stream bytes on in whole SSE events, so that a break at any byte
 * can be followed by a clean error event (sse.h): what follows the last
 * event end of a chunk waits in p->sse_hold for the rest of its event.
 * A chunk of whole events with nothing held, the usual case, is written
 * as it came. Returns the bytes queued for the client.
 */
static size_t px_relay(struct proxy *p, const char *data, size_t len)
{
    size_t end = sse_event_end(&p->sse, data, len), pending = 0;
    size_t held = p->sse_hold ? evbuffer_get_length(p->sse_hold) : 0;

    if (end == len && held == 0)
        return px_write_events(p, data, len);
    if (p->sse_hold == NULL && (p->sse_hold = evbuffer_new()) == NULL) {
        p->sse_mid = end != len;        /* out of memory: pass it all on */
        return px_write(p, data, len);
    }
    if (end > 0) {
        if (held) {
            evbuffer_add(p->sse_hold, data, end);
            pending = px_write_hold(p, 1);
        } else {
            pending = px_write_events(p, data, end);
        }
        p->sse_mid = 0;
        data += end;
        len -= end;
    }
    if (len == 0)
        return pending;
    evbuffer_add(p->sse_hold, data, len);
    if (evbuffer_get_length(p->sse_hold) > PX_SSE_HOLD_MAX) {
        /* An event this large goes on in pieces; a break inside it can
         * only end it with a blank line (px_stream_error). */
        p->sse_mid = 1;
        return px_write_hold(p, 0);
    }
    return end > 0 ? pending : http_req_pending_output(p->req);
}

static enum upstream_verdict px_on_data(void *arg, const char *data, size_t len)
{
    struct px_leg *l = arg;
    struct proxy *p = l->p;

    l->reads++;                       /* the idle check's only cost here */
    if (l->streaming) {
        size_t pending;
        if (!p->id_done && (p->route->flags & API_RECORD_ID))
            px_scan_id(p, l, data, len);
        if (++l->chunks >= PX_CHUNKS_BATCH) {
            lock_take();
            metrics_stream_chunks(p->snap->mh[l->pk.host], l->chunks);
            lock_drop();
            l->chunks = 0;
        }
        if (l->xfer && upstream_ending(l->xfer))
            http_stream_last(p->req);   /* one client write with the end's */
        if (p->ustream)
            usage_stream_feed(p->ustream, data, len);
        if (p->ctext && evbuffer_get_length(p->ctext) + len <= PX_CONTENT_SCAN)
            evbuffer_add(p->ctext, data, len);
        else if (p->ctext) {        /* too long to keep: none of it */
            evbuffer_free(p->ctext);
            p->ctext = NULL;
        }
        pending = (p->route->flags & API_ANSWER_RAW) ? px_write(p, data, len)
                                                     : px_relay(p, data, len);
        if (pending > PX_STREAM_HIGH) {
            /* Slow client: hold the upstream until the socket drains. */
            l->paused = 1;
            http_req_on_drain(p->req, px_drain, l);
            return UPSTREAM_PAUSE;
        }
        return UPSTREAM_CONTINUE;
    }
    if (evbuffer_get_length(l->buf) + len > PX_MAX_BUFFERED)
        return UPSTREAM_ABORT;
    evbuffer_add(l->buf, data, len);
    return UPSTREAM_CONTINUE;
}

/* Ends a stream that cannot go on with an error event in the API's shape
 * (route.c). The start of an event cut short is dropped, never sent: the
 * client's stream ends on an event boundary before the error event. */
static void px_stream_error(struct proxy *p, const char *code, const char *why)
{
    char *data = route_stream_error(p->route->family, p->route->flags, code, why);
    size_t len = 0;
    char *frame = data ? sse_frame("error", data, &len) : NULL;

    if (p->sse_hold)
        evbuffer_drain(p->sse_hold, evbuffer_get_length(p->sse_hold));
    if (p->sse_mid)
        px_write(p, "\n\n", 2);
    p->sse_mid = 0;
    if (frame)
        px_write(p, frame, len);
    free(frame);
    free(data);
}

/* A 2xx answer that is not JSON (an HTML error page, a stray text,
 * whatever its Content-Type says) is an upstream fault like a reset
 * connection: another host
 * may do better. A full parse per response would cost more than the rest
 * of the request path, so this checks the shape only: an object or array
 * from the first to the last non-blank byte (curl already caught bodies
 * cut short of their Content-Length). */
static int px_garbage(const struct px_leg *l)
{
    size_t len = evbuffer_get_length(l->buf);
    const unsigned char *b, *e;

    if (l->status < 200 || l->status >= 300 || !(l->p->route->flags & API_ANSWER_JSON))
        return 0;
    b = evbuffer_pullup(l->buf, -1);
    if (b == NULL)
        return 1;
    e = b + len;
    while (b < e && isspace(*b))
        b++;
    while (e > b && isspace(e[-1]))
        e--;
    return e - b < 2 || !((*b == '{' && e[-1] == '}') || (*b == '[' && e[-1] == ']'));
}

/* The request succeeded on l's host: remember the host for the response
 * id (so /v1/verify finds it) and for the sticky key. */
static void px_remember(struct proxy *p, const struct px_leg *l, const char *id)
{
    const char *host = p->snap->cfg->hosts[l->pk.host].name;
    int sticky = p->lookup_key && p->lookup_kind == SESSION_STICKY && !p->verify && !id;
    int64_t now;

    if (!id && !sticky)
        return;                       /* nothing to remember: no lock */
    now = gw_now_ms();
    if (id && p->rid == NULL)
        p->rid = strdup(id);
    lock_take();
    if (id)
        session_put(p->gw->sess, SESSION_RID, id, host, now);
    if (sticky)
        session_put(p->gw->sess, SESSION_STICKY, p->lookup_key, host, now);
    lock_drop();
}

/* Streams: looks for the response id in the first bytes. */
static void px_scan_id(struct proxy *p, const struct px_leg *l,
                       const char *data, size_t len)
{
    char id[SESSION_KEY_MAX];
    enum session_id_result r;
    const char *buf = data;
    size_t n = len;

    /* Usually the first chunk holds the id: searched where it is, and only
     * kept (to be searched with the next) when it does not. */
    if (p->idscan != NULL) {
        evbuffer_add(p->idscan, data, len);
        n = evbuffer_get_length(p->idscan);
        buf = (const char *)evbuffer_pullup(p->idscan, -1);
    }
    if (p->route->family == API_RESPONSES) {
        /* response.created: the id is in its "response" object. */
        int f = route_stream_response_id(buf, n, id, sizeof(id));
        r = f > 0 ? SESSION_ID_FOUND : f == 0 ? SESSION_ID_MORE : SESSION_ID_NONE;
    } else {
        r = session_extract_id(buf, n, id, sizeof(id));
    }
    if (r == SESSION_ID_FOUND)
        px_remember(p, l, id);
    if (r != SESSION_ID_MORE || n >= PX_ID_SCAN) {
        p->id_done = 1;
    } else if (p->idscan == NULL) {
        if ((p->idscan = evbuffer_new()) == NULL)
            p->id_done = 1;
        else
            evbuffer_add(p->idscan, data, len);
    }
    if (p->id_done && p->idscan != NULL) {
        evbuffer_free(p->idscan);           /* an idle stream keeps nothing */
        p->idscan = NULL;
    }
}

/* sessions.keep_content: a chat answer's text, JSON-encoded, kept with its
 * response id for /v1/verify (content.h). */
static void px_keep_content(struct proxy *p, const char *buf, size_t len, int sse)
{
    size_t max = (size_t)p->snap->cfg->sessions.content_max_bytes;
    char *c;

    if (p->rid == NULL)
        return;
    c = sse ? content_from_sse(buf, len, max) : content_from_json(buf, len, max);
    if (c == NULL)
        return;
    lock_take();
    session_put(p->gw->sess, SESSION_CONTENT, p->rid, c, gw_now_ms());
    lock_drop();
    free(c);
}

/* A whole answer: its response id and the sticky key point at l's host. */
static void px_remember_buffered(struct proxy *p, struct px_leg *l)
{
    char id[SESSION_KEY_MAX];

    if (l->status < 200 || l->status >= 300)
        return;
    if ((p->route->flags & API_RECORD_ID)
        && session_extract_id((const char *)evbuffer_pullup(l->buf, -1),
                           evbuffer_get_length(l->buf), id, sizeof(id))
        == SESSION_ID_FOUND) {
        px_remember(p, l, id);
        if (px_keeps_content(p))
            px_keep_content(p, (const char *)evbuffer_pullup(l->buf, -1),
                            evbuffer_get_length(l->buf), 0);
    }
    px_remember(p, l, NULL);
}

static void px_reply_buffered(struct proxy *p, struct px_leg *l,
                              const struct upstream_xfer *x)
{
    /* The head's own lookup when it was this transfer's (it is: a whole
     * answer had a head), else the search again. */
    const char *ctype = l->has_head ? l->ctype : upstream_resp_header(x, "Content-Type");
    size_t len = evbuffer_get_length(l->buf);

    p->last_host = l->pk.host;
    p->last_key = l->pk.has_key ? (int)l->pk.key : -1;
    p->resp_status = l->status;
    px_add_headers(p);
    px_copy_headers(p, x);
    p->bytes_out = len;
    if (l->status >= 200 && l->status < 300 && !(p->route->flags & API_ID_IN_PATH))
        usage_scan_last((const char *)evbuffer_pullup(l->buf, -1)
                            + (len > USAGE_TAIL ? len - USAGE_TAIL : 0),
                        len > USAGE_TAIL ? USAGE_TAIL : len, &p->usage);
    px_cache_store(p, l, ctype);
    px_account(p);
    http_reply(p->req, l->status, ctype ? ctype : "application/json",
               (const char *)evbuffer_pullup(l->buf, -1), len);
}

static void px_on_done(void *arg, enum upstream_result res, const char *err)
{
    struct px_leg *l = arg;
    struct proxy *p = l->p;
    struct upstream_xfer *x = l->xfer;
    struct retry_verdict v;
    char msg[200];

    px_leg_end(l, metrics_outcome_of(res, l->status), PX_END_OUTCOME);
    l->xfer = NULL;                   /* freed by upstream.c after this */
    if (l->streaming) {
        px_leg_record(l, res != UPSTREAM_OK, 0);
        if (p->ustream)
            usage_stream_result(p->ustream, &p->usage);
        if (res != UPSTREAM_OK && (p->route->flags & API_ANSWER_RAW)) {
            /* Binary (speech): no error event fits in it; the client sees
             * the body cut short. */
            log_warn("request %s: stream from %s broke: %s", p->id,
                     p->snap->cfg->hosts[l->pk.host].name, err);
            px_account(p);
            http_req_abort(p->req);
            px_done(p);
            return;
        }
        if (res != UPSTREAM_OK) {
            log_warn("request %s: stream from %s broke: %s", p->id,
                     p->snap->cfg->hosts[l->pk.host].name, err);
            px_stream_error(p, "stream_interrupted", "upstream stream interrupted");
        } else if (p->sse_hold && evbuffer_get_length(p->sse_hold)) {
            px_write_hold(p, 0);      /* ended cleanly: passed on as it came */
        }
        if (res == UPSTREAM_OK && p->ctext && px_keeps_content(p))
            px_keep_content(p, (const char *)evbuffer_pullup(p->ctext, -1),
                            evbuffer_get_length(p->ctext), 1);
        if (res == UPSTREAM_OK && p->ctext)
            px_cache_store_stream(p);
        px_account(p);
        http_stream_end(p->req);
        px_done(p);
        return;
    }
    if (res == UPSTREAM_ERR_ABORTED && p->winner != l && p->active > 0) {
        /* A losing leg of a race drowned in its error body: just a failure. */
        px_leg_lost(l, FAIL_TOO_LARGE, "response too large");
        return;
    }
    if (res == UPSTREAM_ERR_ABORTED) {
        px_leg_lost(l, FAIL_TOO_LARGE, "response too large");
        px_error(p, 502, "upstream_error", "upstream_response_too_large",
                 "upstream response too large");
        return;
    }
    if (res != UPSTREAM_OK) {
        snprintf(msg, sizeof(msg), "%s: %s", upstream_result_name(res), err);
        if (p->winner == l)
            p->winner = NULL;
        px_leg_failed(l, res == UPSTREAM_ERR_TIMEOUT ? RETRY_FAULT_TIMEOUT
                                                     : RETRY_FAULT_NETWORK,
                      0, NULL, msg);
        return;
    }
    if (px_garbage(l)) {
        if (p->winner == l)
            p->winner = NULL;
        px_leg_failed(l, RETRY_FAULT_NETWORK, 0, NULL,
                      "upstream sent a malformed JSON body");
        return;
    }
    v = admit_answer(&p->snap->rp, &l->pk, l->status,
                     p->owned || (p->route->flags & API_ID_IN_PATH)
                     || p->route->family == API_PASSTHROUGH);
    if (!v.retryable && (p->winner == l || p->active == 0)) {
        /* A success, or an answer no retry can change (e.g. 400). One
         * section of the state lock for both (it is recursive). */
        lock_take();
        px_leg_record_locked(l, v.host_failure, 1);
        px_remember_buffered(p, l);
        lock_drop();
        px_reply_buffered(p, l, x);
        px_done(p);
        return;
    }
    {
        const char *h = upstream_resp_header(x, "Retry-After");
        char ra[64];
        snprintf(ra, sizeof(ra), "%s", h ? h : "");
        snprintf(msg, sizeof(msg), "HTTP %d", l->status);
        px_leg_failed(l, RETRY_FAULT_NONE, l->status, h ? ra : NULL, msg);
    }
}

static const struct upstream_cbs px_cbs = { px_on_headers, px_on_data, px_on_done };

/* --- timers and client events ---------------------------------------- */

/* A leg's try_timer on in ms, or off: no library call when it is off
 * already (a request's end would delete it a second time). */
static void px_try_arm(struct px_leg *l, int64_t now, int64_t ms)
{
    struct timeval tv = { (time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000) };

    l->try_on = 1;
    l->try_due = now + ms;
    evtimer_add(l->try_timer, &tv);
}

static void px_try_off(struct px_leg *l)
{
    if (l->try_on) {
        l->try_on = 0;
        evtimer_del(l->try_timer);
    }
}

/* The first-byte limit of an attempt: its step's, or retry.per_try_timeout. */
static int64_t px_per_try_ms(const struct px_leg *l)
{
    const struct admit_step *s = &l->p->ad.steps[l->step];

    return s->timeout_ms ? s->timeout_ms : l->p->snap->cfg->retry.per_try_timeout_ms;
}

/*
 * After a response head, l->try_timer watches the answer: it must keep
 * coming (retry.stream_idle_timeout) and end in time
 * (retry.response_timeout). A read only counts (no clock, no timer call
 * per chunk); the timer ticks PX_IDLE_TICKS times per idle timeout and the
 * answer is idle after that many ticks in a row without a read: never
 * before a silence of the whole timeout, at most a tick after it. The
 * response cap, when sooner, is the next firing. A timer that is on and
 * fires no later stays (px_send arms the first-byte timer for the first
 * idle tick when that is sooner): px_try_timeout() then arms the next
 * firing, so an answer whose head and end come in one read costs no timer
 * operation here.
 */
static void px_arm_answer_timer(struct px_leg *l, int64_t now)
{
    const struct config *c = l->p->snap->cfg;
    int64_t idle = c->retry.stream_idle_timeout_ms, total = c->retry.response_timeout_ms;
    int64_t at = -1;

    if (idle > 0) {
        int64_t tick = idle / PX_IDLE_TICKS;
        at = l->tick_at = now + (tick > 0 ? tick : 1);
    }
    if (total > 0 && (at < 0 || l->t_try + total < at))
        at = l->t_try + total;
    if (at < 0)
        px_try_off(l);
    else if (!l->try_on || l->try_due > at)
        px_try_arm(l, now, at > now ? at - now : 0);
}

/*
 * An answer stalled or took too long. Before the first byte went to the
 * client it is a failed attempt like any timeout (retry, failover); once a
 * stream has started the stream ends with an error event. Both count as a
 * failure of the host (breaker, passive health) and as a stall in metrics.
 */
static void px_answer_expired(struct px_leg *l, int response, const char *msg)
{
    struct proxy *p = l->p;

    upstream_cancel(l->xfer);
    l->xfer = NULL;
    px_leg_end(l, METRICS_OUTCOME_TIMEOUT, response ? PX_END_STALL_TOTAL : PX_END_STALL_IDLE);
    if (!l->streaming) {
        if (p->winner == l)
            p->winner = NULL;
        px_leg_failed(l, RETRY_FAULT_TIMEOUT, 0, NULL, msg);
        return;
    }
    px_leg_lost(l, FAIL_TIMEOUT, msg);
    if (p->route->flags & API_ANSWER_RAW) {
        px_account(p);
        http_req_abort(p->req);       /* binary: cut short, no error event */
    } else {
        px_stream_error(p, "stream_timeout", msg);
        px_account(p);
        http_stream_end(p->req);
    }
    px_done(p);
}

static void px_try_timeout(evutil_socket_t fd, short what, void *arg)
{
    struct px_leg *l = arg;
    const struct config *c;
    int64_t now, total, idle;

    (void)fd;
    (void)what;
    l->try_on = 0;
    if (l->xfer == NULL)
        return;
    c = l->p->snap->cfg;
    now = gw_now_ms();
    total = c->retry.response_timeout_ms;
    idle = c->retry.stream_idle_timeout_ms;
    if (l->status == 0 && l->try_early) {
        /* The first idle tick (px_send), before any head: on to the
         * first-byte limit. */
        l->try_early = 0;
        px_try_arm(l, now, l->first_due > now ? l->first_due - now : 0);
        return;
    }
    if (l->status == 0) {
        if (total > 0 && total < px_per_try_ms(l)) {
            px_answer_expired(l, 1, "no complete answer within retry.response_timeout");
            return;
        }
        upstream_cancel(l->xfer);
        l->xfer = NULL;
        px_leg_end(l, METRICS_OUTCOME_TIMEOUT, PX_END_OUTCOME);  /* breaker: below */
        px_leg_failed(l, RETRY_FAULT_TIMEOUT, 0, NULL,
                      "no response head within the per-try timeout");
        return;
    }
    if (total > 0 && now - l->t_try >= total) {
        px_answer_expired(l, 1, "no complete answer within retry.response_timeout");
        return;
    }
    if (idle > 0 && now >= l->tick_at) {
        if (l->paused || l->reads != l->reads_seen)
            l->silent = 0;
        else if (++l->silent >= PX_IDLE_TICKS) {
            px_answer_expired(l, 0, "no data from the upstream within retry.stream_idle_timeout");
            return;
        }
        l->reads_seen = l->reads;
    } else if (idle > 0) {
        px_try_arm(l, now, l->tick_at - now);   /* woken early */
        return;
    }
    px_arm_answer_timer(l, now);
}

static void px_deadline(evutil_socket_t fd, short what, void *arg)
{
    struct proxy *p = arg;

    (void)fd;
    (void)what;
    p->deadline_on = 0;
    if (p->st == PX_STREAMING || p->st == PX_DONE)
        return;
    px_error(p, 504, "upstream_error", "deadline_exceeded",
             "no upstream answered within the request deadline");
}

static void px_client_gone(struct http_req *req, void *arg)
{
    struct proxy *p = arg;
    int i;

    (void)req;
    log_debug("request %s: client went away", p->id);
    for (i = 0; i < p->nlegs; i++)
        px_leg_cancel(p->legs[i]);
    if (p->resp_status == 0)
        p->resp_status = 499;        /* nginx's "client closed request" */
    px_account(p);
    if (p->st == PX_STREAMING)
        http_stream_end(p->req);     /* frees the detached request */
    else
        http_reply(p->req, 499, NULL, NULL, 0);
    px_done(p);
}

/* --- picking and sending -------------------------------------------- */

static struct px_leg *px_leg_get(struct proxy *p)
{
    struct px_leg *l;
    int i;

    for (i = 0; i < p->nlegs; i++)
        if (p->legs[i]->xfer == NULL && p->legs[i] != p->winner)
            return p->legs[i];
    if (p->nlegs == PX_MAX_LEGS)
        return NULL;
    l = p->nlegs < PX_LEGS_IN ? &p->leg_in[p->nlegs] : malloc(sizeof(*l));
    if (l == NULL)
        return NULL;
    memset(l, 0, sizeof(*l));
    l->p = p;
    l->buf = evbuffer_new();
    if (l->buf == NULL) {
        if (p->nlegs >= PX_LEGS_IN)
            free(l);
        return NULL;
    }
    p->legs[p->nlegs] = l;
    evtimer_assign(&l->try_ev, p->w->base, px_try_timeout, l);
    l->try_timer = &l->try_ev;
    p->nlegs++;
    return l;
}

/*
 * snprintf(dst, size, "%s%s", dst, src) without the format engine (a few
 * hundred instructions a call on the request path) or a variadic call (its
 * va_start saves every argument register): src after the n bytes in dst
 * (n < size), cut at size - 1, always ended. Returns the new length.
 */
static size_t px_append(char *dst, size_t size, size_t n, const char *src)
{
    size_t k = strlen(src);

    if (k > size - 1 - n)
        k = size - 1 - n;
    memcpy(dst + n, src, k);
    dst[n + k] = '\0';
    return n + k;
}

/* src into dst (size bytes, NUL included), cut to fit; its length. */
static size_t px_copy(char *dst, size_t size, const char *src)
{
    return px_append(dst, size, 0, src);
}

static int px_send(struct px_leg *l)
{
    struct proxy *p = l->p;
    const struct config *c = p->snap->cfg;
    const struct admit_step *s = &p->ad.steps[l->step];
    const struct cfg_host *ch = &c->hosts[l->pk.host];
    struct upstream_header hdr[12];
    size_t lens[2 * 12];
    struct upstream_req ur;
    char url[4096], auth[4096];
    const char *accept = http_req_known(p->req, HTTP_H_ACCEPT);
    const char *ctype = http_req_known(p->req, HTTP_H_CONTENT_TYPE);
    const char *av = http_req_known(p->req, HTTP_H_ANTHROPIC_VERSION);
    const char *ab = http_req_known(p->req, HTTP_H_ANTHROPIC_BETA);
    size_t nh = 0, auth_len = 0, n;
    int64_t now = gw_now_ms();
    int64_t per_try = s->timeout_ms ? s->timeout_ms : c->retry.per_try_timeout_ms;
    int64_t first = per_try, tick;

    n = px_append(url, sizeof(url), px_copy(url, sizeof(url), ch->url), p->upath);
    if (p->query)
        px_append(url, sizeof(url), px_append(url, sizeof(url), n, "?"), p->query);
/* A field with a literal name (its length known) and a value of vl bytes
 * (0: build_head() measures it). */
#define PX_HDR(n, v, vl) (lens[2 * nh] = sizeof(n) - 1, lens[2 * nh + 1] = (vl), \
                          hdr[nh++] = (struct upstream_header){ (n), (v) })
    if (l->pk.has_key && ch->auth == HOST_AUTH_X_API_KEY) {
        auth_len = px_copy(auth, sizeof(auth), c->keys[l->pk.key].secret);
        PX_HDR("x-api-key", auth, auth_len);
    } else if (l->pk.has_key) {
        memcpy(auth, "Bearer ", 7);
        auth_len = px_append(auth, sizeof(auth), 7, c->keys[l->pk.key].secret);
        PX_HDR("Authorization", auth, auth_len);
    }
    if (p->body_len) {
        /* JSON routes send JSON; forms and pass-through keep the client's. */
        if ((p->route->flags & API_BODY_JSON) || ctype == NULL)
            PX_HDR("Content-Type", "application/json", 16);
        else
            PX_HDR("Content-Type", ctype, 0);
    }
    if (av)
        PX_HDR("anthropic-version", av, 0);
    if (ab)
        PX_HDR("anthropic-beta", ab, 0);
    if (accept)
        PX_HDR("Accept", accept, 0);
    else
        PX_HDR("Accept", "*/*", 3);
    PX_HDR("X-Request-Id", p->id, 0);
    PX_HDR("User-Agent", PX_USER_AGENT, sizeof(PX_USER_AGENT) - 1);
#undef PX_HDR

    memset(&ur, 0, sizeof(ur));
    ur.url = url;
    ur.method = p->method;
    ur.headers = hdr;
    ur.header_lens = lens;
    ur.nheaders = nh;
    ur.body = p->bodies[l->step].body ? p->bodies[l->step].body : p->body;
    ur.body_len = p->bodies[l->step].body ? p->bodies[l->step].len : p->body_len;
    ur.connect_timeout_ms = per_try;
    ur.ca_file = ch->tls.ca_file;
    ur.insecure = !ch->tls.verify;
    ur.server_name = ch->tls.server_name;
    /* No total timeout of the transfer's own: a whole (non-streamed)
     * answer must come within the request's deadline, and its timer
     * (px_deadline) ends the request then, legs cancelled. A transfer
     * timer for the same moment only repeated it (and was added and
     * deleted on every attempt); it fired second when both were due at
     * once, the usual case (added later for the same time), and first only
     * when the coarse clock had ticked between the two. */
    ur.total_timeout_ms = 0;
    /* No CR or LF anywhere: the method and the client's fields passed
     * http.c's checks (no control characters), keys cfg_check_secret(),
     * the request id valid_request_id() or px_make_id(), the rest is ours. */
    ur.fields_checked = 1;
    ur.streaming = p->want_stream;

    l->status = 0;
    l->streaming = 0;
    l->paused = 0;
    l->lat_sampled = 0;
    l->t_try = now;
    l->t_head = 0;
    l->has_head = 0;
    l->ctype = NULL;
    l->xfer = upstream_start(p->w->up, &ur, &px_cbs, l);
    explicit_bzero(auth, auth_len);       /* the key does not outlive the call */
    if (l->xfer == NULL)
        return -1;
    if (p->active++ == 0)
        p->t_up = now;
    if (c->retry.response_timeout_ms > 0 && c->retry.response_timeout_ms < first)
        first = c->retry.response_timeout_ms;
    /* Armed for the first idle tick when it is sooner than the first-byte
     * limit (fired before a head, it goes on to first_due): a head then
     * finds it due no later than its own first tick and leaves it
     * (px_arm_answer_timer), instead of an event_add per answer. */
    l->first_due = now + first;
    tick = c->retry.stream_idle_timeout_ms / PX_IDLE_TICKS;
    tick = tick > 0 ? tick : 1;
    l->try_early = c->retry.stream_idle_timeout_ms > 0 && tick < first;
    px_try_arm(l, now, l->try_early ? tick : first);
    return 0;
}

/*
 * Starts one leg for step `si`: admit_pick() chooses the host and key
 * (skipping hosts whose keys all cool down or whose half-open breaker has
 * no probe left) and takes the host's slot, then the leg is sent. Returns
 * 0 when a leg is running, -1 when this step has no host.
 */
static int px_start_leg(struct proxy *p, int si)
{
    struct admit_view v;
    struct admit_pick pk;
    struct px_leg *l;
    int picks = 0, got;

    for (;;) {
        l = px_leg_get(p);
        got = -1;
        lock_take();
        v = px_view(p);
        if (l) {
            px_leg_end_locked(l);         /* nothing: its outcome did it */
            got = admit_pick(&v, &p->ad, si, gw_now_ms(), &picks, &pk);
        }
        if (got == 0 && pk.panic)
            metrics_panic_pick();           /* panic mode picked it */
        if (got < 0)
            p->freed_seen = px_freed;
        lock_drop();
        if (got < 0)
            return -1;
        l->pk = pk;
        l->step = si;
        p->last_host = pk.host;
        p->last_key = pk.has_key ? (int)pk.key : -1;
        if (px_send(l) == 0)
            return 0;
        lock_take();
        v = px_view(p);
        admit_unpick(&v, &l->pk);
        px_wake_one();
        px_note_failure_locked(l, FAIL_NETWORK, 0, "cannot start the upstream transfer");
        lock_drop();
        px_note_log(l, "cannot start the upstream transfer");
    }
}

/* routing.when_full: queue. Every usable host is at max_concurrent: wait
 * (FIFO) for one to finish a request, up to queue_timeout (admit_queue()
 * says whether). Returns 1 when the request is now waiting. */
static int px_queue(struct proxy *p)
{
    int64_t now = gw_now_ms();
    struct timeval zero = { 0, 0 };

    if (!admit_queue(p->snap->cfg, &p->ad, &p->queue_until, now))
        return 0;
    p->st = PX_ATTEMPT;
    lock_take();
    if (px_freed != p->freed_seen) {
        /* A slot was freed since the pick (on another worker): try again. */
        p->freed_seen = px_freed;
        lock_drop();
        evtimer_add(p->backoff_timer, &zero);
        return 1;
    }
    p->waiting = 1;
    p->wait_next = NULL;
    p->wait_prev = waitq_tail;
    if (waitq_tail)
        waitq_tail->wait_next = p;
    else
        waitq = p;
    waitq_tail = p;
    lock_drop();
    {
        int64_t left = p->queue_until - now;
        struct timeval tv = { (time_t)(left / 1000), (suseconds_t)((left % 1000) * 1000) };
        evtimer_add(p->backoff_timer, &tv);   /* gives up when it fires */
    }
    return 1;
}

/* Starts the next attempt: the whole race first, then one leg at a time
 * through the steps. */
static void px_attempt(struct proxy *p)
{
    int i;

    p->st = PX_WAITING;
    if (p->ad.race > 1) {
        for (i = 0; i < p->ad.race; i++)
            px_start_leg(p, i < p->ad.nsteps ? i : p->ad.nsteps - 1);
        if (p->active > 0)
            return;
        admit_race_lost(&p->ad);
        if (!px_next_step(p)) {
            px_fail_final(p);
            return;
        }
    }
    for (;;) {
        if (p->ad.step_attempts < p->ad.max_attempts && px_start_leg(p, p->ad.step) == 0)
            return;
        if (px_queue(p))
            return;
        if (!px_next_step(p))
            break;
    }
    px_fail_final(p);
}

/* --- the plan ---------------------------------------------------------- */

/* The body with "model" set to step si's model, for a step that
 * rewrites it. */
static int px_step_rewrite(struct proxy *p, int si)
{
    const char *model = p->ad.steps[si].model;
    struct px_body *b = &p->bodies[si];
    json_t *copy;

    if (model == NULL || !p->json_body || (p->model && strcmp(p->model, model) == 0))
        return 0;
    /* The only place a request body becomes a tree (jscan validated it). */
    if (p->doc == NULL && (p->doc = json_loadb(p->body, p->body_len, 0, NULL)) == NULL)
        return -1;
    copy = json_copy(p->doc);
    if (copy == NULL)
        return -1;
    json_object_set_new(copy, "model", json_string(model));
    b->body = json_dumps(copy, JSON_COMPACT);
    p->rewrites = 1;
    json_decref(copy);
    if (b->body == NULL)
        return -1;
    b->len = strlen(b->body);
    return 0;
}

/*
 * Builds the plan (admit_plan: the matching fallback chain's steps; else,
 * for a model that names a `models:` group, one step per member in order;
 * else one step with the request as it is), then each step's body with
 * its model.
 */
static int px_plan(struct proxy *p)
{
    const struct config *c = p->snap->cfg;
    struct admit_view v;
    int no_retry = 0, rc, i;

    if (c->retry.no_retry_header) {
        const char *h = http_req_header(p->req, c->retry.no_retry_header);
        no_retry = h && strcmp(h, "0") != 0 && strcasecmp(h, "false") != 0;
    }
    p->ad.model = p->model;
    p->ad.family = (int)p->route->family;
    if (c->routing.strategy == STRAT_CONSISTENT_HASH)
        p->ad.hash_key = c->routing.hash_key == AFF_HEADER
                             ? http_req_header(p->req, c->routing.hash_header)
                             : p->user;
    if (admit_chain(c, p->model)) {
        lock_take();                  /* snap->bal is rebuilt on discoveries */
        v = px_view(p);
        rc = admit_plan(&v, &p->ad, no_retry);
        lock_drop();
    } else {
        memset(&v, 0, sizeof(v));     /* no chain: the plan reads the config only */
        v.cfg = c;
        rc = admit_plan(&v, &p->ad, no_retry);
    }
    if (rc < 0)
        return -1;
    for (i = 0; i < p->ad.nsteps; i++)
        if (px_step_rewrite(p, i) < 0)
            return -1;
    return 0;
}

/* --- entry ------------------------------------------------------------ */

static int valid_request_id(const char *s)
{
    size_t n = 0;

    for (; s[n]; n++)
        if (n >= PX_MAX_REQUEST_ID
            || !(isalnum((unsigned char)s[n]) || strchr("._-:", s[n])))
            return 0;
    return n > 0;
}

static void px_make_id(struct proxy *p)
{
    const char *cid = http_req_known(p->req, HTTP_H_X_REQUEST_ID);
    uint64_t z;
    int i;

    if (cid && valid_request_id(cid)) {
        px_copy(p->id, sizeof(p->id), cid);
        return;
    }
    z = p->gw->id_seed + 0x9e3779b97f4a7c15ULL * ++p->gw->next_id;  /* splitmix64 */
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    z ^= z >> 31;
    memcpy(p->id, "req-", 4);                      /* "req-%016llx" */
    for (i = 0; i < 16; i++)
        p->id[4 + i] = "0123456789abcdef"[(z >> (60 - 4 * i)) & 0xf];
    p->id[20] = '\0';
}

/* GET /v1/models when no host lists models: a JSON answer, any host. */
static const struct api_route px_default_route = { "GET", "", API_NONE, API_ANSWER_JSON };

static struct proxy *px_new(struct gateway *gw, struct http_req *req,
                            const char *upath, const char *method)
{
    struct worker *w = worker_self();
    struct proxy *p = w->px_spare;
    int spare = p != NULL;

    if (p != NULL) {
        w->px_spare = p->next;
        w->px_nspare--;
    } else if ((p = malloc(sizeof(*p))) == NULL) {
        return NULL;
    }
    /* All but the legs (most of the struct, usually one used): a leg is
     * cleared when px_leg_get() first hands it out. */
    memset(p, 0, offsetof(struct proxy, ad));     /* ad: admit_req_init() below */
    memset(&p->bodies, 0, offsetof(struct proxy, legs) - offsetof(struct proxy, bodies));
    memset(&p->nlegs, 0, offsetof(struct proxy, upath) - offsetof(struct proxy, nlegs));
    p->model_in[0] = p->user_in[0] = p->cache_key[0] = '\0';
    p->fail_msg[0] = p->admit_member[0] = '\0';   /* upath, method, id, peer: below */
    p->gw = gw;
    p->w = w;
    p->req = req;
    lock_take();
    p->snap = gw->snap;
    snapshot_ref(p->snap);
    gw->active++;
    px_make_id(p);
    lock_drop();
    p->last_host = -1;
    p->cache_res = -1;
    p->last_key = -1;
    p->fail_host = -1;
    admit_req_init(&p->ad, NULL, 0);
    px_copy(p->method, sizeof(p->method), method);
    p->route = &px_default_route;
    p->t_start = gw_now_ms();
    p->max_out = -1;
    px_copy(p->upath, sizeof(p->upath), upath);
    px_copy(p->peer, sizeof(p->peer), http_req_peer(req));
    if (!spare) {                   /* a spare's are this worker's, not pending */
        evtimer_assign(&p->deadline_ev, p->w->base, px_deadline, p);
        evtimer_assign(&p->backoff_ev, p->w->base, px_backoff_done, p);
    }
    p->deadline_timer = &p->deadline_ev;
    p->backoff_timer = &p->backoff_ev;
    p->next = p->w->inflight;
    if (p->next)
        p->next->prev = p;
    p->w->inflight = p;
    http_req_on_close(req, px_client_gone, p);
    return p;
}

static int px_host_index(const struct proxy *p, const char *name)
{
    const struct cfg_host *h = config_host_by_name(p->snap->cfg, name);

    return h ? (int)(h - p->snap->cfg->hosts) : -1;
}

/* body with the kept content added, replacing it (p->body_own). */
static int px_body_add_content(struct proxy *p)
{
    char *b = content_add_to_body(p->body, p->body_len, p->content);
    int i;

    if (b == NULL)
        return -1;
    free(p->body_own);
    p->body = p->body_own = b;
    p->body_len = strlen(b);
    for (i = 0; i < PX_MAX_STEPS; i++) {    /* a model rewrite's copy */
        free(p->bodies[i].body);
        p->bodies[i].body = NULL;
    }
    return 0;
}

/*
 * sessions.keep_content: /v1/verify carries the content kept for its id
 * ({"id", "content"}), looked up after the host. Returns 1 while the
 * lookup waits for Redis (px_begin runs again), -1 once answered, 0 to go on.
 */
static int px_verify_content(struct proxy *p)
{
    if (!p->content_done) {
        int answered;

        p->content_done = 1;
        p->lookup_kind = SESSION_CONTENT;
        p->st = PX_LOOKUP;
        lock_take();
        p->lookup_sync = 1;
        p->call = session_get(p->gw->sess, SESSION_CONTENT, p->lookup_key, gw_now_ms(),
                              px_lookup_done, p);
        p->lookup_sync = 0;
        answered = p->call == NULL;
        lock_drop();
        if (!answered)
            return 1;
    }
    if (p->content == NULL) {
        px_error(p, 404, "invalid_request_error", "no_cached_content",
                 "No cached content for this id");
        return -1;
    }
    if (px_body_add_content(p) != 0) {
        px_error(p, 500, "server_error", "out_of_memory", "out of memory");
        return -1;
    }
    return 0;
}

/* After the session lookup (if any): pins /v1/verify to the host that
 * served the id, points a sticky request at its host, then starts. */
static void px_begin(struct proxy *p)
{
    char msg[300];
    int h;

    if (p->admit_wait) {            /* Redis answered the admission */
        p->admit_wait = 0;
        if (px_admit_finish(p) == 0)
            px_start(p);
        return;
    }
    if (p->cache_wait) {            /* the cache's lookup answered (redis) */
        if (!px_cache_resume(p))
            px_start_rest(p);
        return;
    }
    if (p->verify && p->snap->cfg->sessions.keep_content && px_verify_content(p) != 0)
        return;
    if (p->verify || (p->owned && p->pinned)) {
        if (p->pinned == NULL) {
            snprintf(msg, sizeof(msg), "unknown id \"%.100s\": never served here or expired",
                     p->lookup_key);
            px_error(p, 404, "invalid_request_error", "unknown_id", msg);
            return;
        }
        h = px_host_index(p, p->pinned);
        if (h < 0) {
            snprintf(msg, sizeof(msg), "the host that served this id (%.100s) is no"
                     " longer configured", p->pinned);
            px_error(p, 409, "invalid_request_error", "host_gone", msg);
            return;
        }
        int down;

        struct admit_view v;

        lock_take();
        v = px_view(p);
        down = admit_host_down(&v, h, gw_now_ms());
        lock_drop();
        if (down) {
            snprintf(msg, sizeof(msg), "the host that served this id (%.100s) is"
                     " unavailable; %s must go to it", p->pinned,
                     p->verify ? "verification" : "a request for this response");
            px_error(p, 503, "service_unavailable", "host_unavailable", msg);
            return;
        }
        /* Verification is provider-specific, and a response lives on the
         * host that made it: that host only. */
        p->ad.nsteps = 1;
        p->ad.race = 1;
        free(p->ad.steps[0].hosts);
        p->ad.steps[0].hosts = malloc(sizeof(int));
        if (p->ad.steps[0].hosts == NULL) {
            px_error(p, 500, "server_error", "out_of_memory", "out of memory");
            return;
        }
        p->ad.steps[0].hosts[0] = h;
        p->ad.steps[0].nhosts = 1;
    } else if (p->pinned) {
        p->ad.prefer = px_host_index(p, p->pinned);
    }
    px_attempt(p);
}

/* Under the state lock: on p's worker when the store answers at once,
 * on the main thread when Redis answers later. */
static void px_lookup_done(void *arg, const char *host)
{
    struct proxy *p = arg;
    struct timeval now = { 0, 0 };

    p->call = NULL;
    if (p->admit_wait) {
        if (host)
            p->admit_ans = strdup(host);
    } else if (p->cache_wait) {
        if (host)
            p->cache_val = strdup(host);
    } else if (host && p->lookup_kind == SESSION_CONTENT)
        p->content = strdup(host);
    else if (host)
        p->pinned = strdup(host);
    if (p->lookup_sync)
        return;                       /* px_start goes on */
    if (p->w != worker_self()) {
        /* p belongs to a worker thread: go on there (px_backoff_done). */
        evtimer_add(p->backoff_timer, &now);
        return;
    }
    px_begin(p);
}

/*
 * Answers p from the cache: a JSON answer as it is, or for a streaming
 * request as the stream of the API's shape. Returns 0 (nothing sent; p is
 * then a miss to store) when the answer cannot be a stream.
 */
static int px_cache_serve(struct proxy *p, int status, const char *ctype,
                          const char *body, size_t len, int64_t age_ms)
{
    char age[24];

    snprintf(age, sizeof(age), "%lld", (long long)(age_ms > 0 ? age_ms / 1000 : 0));
    p->resp_status = status;
    p->cache_res = CACHE_HIT;
    if (p->want_stream) {
        size_t n = 0;
        char *sse = cache_json_to_sse(p->route->family == API_CHAT, body, len,
                                      cache_sse_wants_usage(p->body, p->body_len)
                                      && !p->strip_usage, &n);
        if (sse == NULL)
            return 0;
        px_add_headers(p);
        http_resp_header(p->req, "Age", age);
        p->st = PX_STREAMING;
        http_stream_start(p->req, status, "text/event-stream");
        px_write(p, sse, n);
        free(sse);
        px_cache_count(p, CACHE_HIT);
        px_account(p);
        http_stream_end(p->req);
        px_done(p);
        return 1;
    }
    p->bytes_out = len;
    px_add_headers(p);
    http_resp_header(p->req, "Age", age);
    px_cache_count(p, CACHE_HIT);
    px_account(p);
    http_reply(p->req, status, ctype ? ctype : "application/json", body, len);
    px_done(p);
    return 1;
}

/* Counts the request's cache result (a hit, once served). */
static void px_cache_count(struct proxy *p, int res)
{
    p->cache_res = res;
    lock_take();
    if (p->gw->cache)
        cache_count(p->gw->cache, (enum cache_result)res);
    lock_drop();
}

/*
 * cache.store: redis. The value is "STATUS STORED_UNIX_MS CTYPE\nBODY";
 * p->cache_val holds what Redis answered (NULL: a miss, or Redis down).
 * Returns 1 when p was answered from it.
 */
static int px_cache_resume(struct proxy *p)
{
    const char *v = p->cache_val, *nl = v ? strchr(v, '\n') : NULL;
    char ctype[128];
    int status = 0, served = 0, n = 0;
    long long stored = 0;

    p->cache_wait = 0;
    if (nl && sscanf(v, "%d %lld %n", &status, &stored, &n) == 2 && status >= 200
        && status < 300 && n > 0 && v + n <= nl && (size_t)(nl - (v + n)) < sizeof(ctype)) {
        memcpy(ctype, v + n, (size_t)(nl - (v + n)));
        ctype[nl - (v + n)] = '\0';
        p->cache_res = CACHE_HIT;
        served = px_cache_serve(p, status, ctype[0] ? ctype : NULL, nl + 1, strlen(nl + 1),
                                gw_unix_ms() - stored);
    }
    if (served)                   /* p is gone (px_done) */
        return 1;
    free(p->cache_val);
    p->cache_val = NULL;
    p->cache_store = 1;
    px_cache_count(p, CACHE_MISS);
    return 0;
}

/* Streams are cached for chat and completions (cache_sse.h). */
static int px_cache_streams(const struct proxy *p)
{
    return p->route->family == API_CHAT || p->route->family == API_COMPLETIONS;
}

/*
 * The response cache (cache.h), once the model is rewritten: a hit is
 * answered here (returns 1); with the redis store the lookup may wait
 * for Redis (returns 1 too: px_begin() goes on with px_cache_resume()).
 * Otherwise notes whether the answer is to be stored. Not looked up:
 * Cache-Control no-cache (still stored), no-store (nor stored), a
 * non-deterministic body with cache.only_deterministic, a Responses call
 * continuing another (previous_response_id), a stream of another API than
 * chat and completions.
 */
static int px_cache_begin(struct proxy *p)
{
    const struct config *c = p->snap->cfg;
    const char *cc = http_req_known(p->req, HTTP_H_CACHE_CONTROL);
    const char *model = p->ad.steps[0].model ? p->ad.steps[0].model : p->model;
    const char *client = c->cache.per_client ? http_req_known(p->req, HTTP_H_AUTHORIZATION) : NULL;
    struct cache_hit hit;
    char *body = NULL, *ctype = NULL;
    int det = 0, res, found = 0, status = 0, answered;
    size_t len = 0;
    int64_t now = gw_now_ms(), age = 0;

    if (!c->cache.enabled || !p->json_body || strcmp(p->method, "POST") != 0
        || (unsigned)p->route->family >= API_FAMILIES
        || !(c->cache.routes_mask & (1u << p->route->family)))
        return 0;
    if (cache_key(route_family_name(p->route->family), model, client, p->body, p->body_len,
                  p->cache_key, &det) != 0)
        return 0;
    if ((cc && strcasestr(cc, "no-store")) || (p->want_stream && !px_cache_streams(p))
        || (p->prev_rid && *p->prev_rid) || (c->cache.only_deterministic && !det))
        res = CACHE_BYPASS;
    else if (cc && strcasestr(cc, "no-cache"))
        res = CACHE_BYPASS, p->cache_store = 1;
    else
        res = CACHE_MISS, p->cache_store = 1;
    if (c->cache.store == STORE_REDIS) {
        if (res != CACHE_MISS) {
            px_cache_count(p, res);
            return 0;
        }
        p->cache_store = 0;
        p->cache_wait = 1;
        p->st = PX_LOOKUP;
        lock_take();
        p->lookup_sync = 1;
        p->call = session_get_shared(p->gw->sess, SESSION_CACHE, p->cache_key,
                                     px_lookup_done, p);
        p->lookup_sync = 0;
        answered = p->call == NULL;
        lock_drop();
        return answered ? px_cache_resume(p) : 1;
    }
    lock_take();
    if (p->gw->cache == NULL) {
        lock_drop();
        p->cache_store = 0;
        return 0;
    }
    if (res == CACHE_MISS && cache_get(p->gw->cache, p->cache_key, now, &hit)) {
        if ((body = malloc(hit.len ? hit.len : 1)) != NULL
            && (hit.ctype == NULL || (ctype = strdup(hit.ctype)) != NULL)) {
            memcpy(body, hit.body, hit.len);
            len = hit.len;
            status = hit.status;
            age = now - hit.stored_ms;
            found = 1;
        }
    }
    lock_drop();
    if (found) {
        p->cache_store = 0;
        p->cache_res = CACHE_HIT;
        found = px_cache_serve(p, status, ctype, body, len, age);
        if (!found)                 /* not expressible as a stream: go upstream */
            p->cache_store = 1;
    }
    free(body);
    free(ctype);
    if (!found)                     /* a hit was counted, p is gone */
        px_cache_count(p, res);
    return found;
}

/* A complete 2xx answer goes into the cache (memory, or Redis). */
static void px_cache_put(struct proxy *p, int status, const char *ctype,
                         const char *body, size_t len)
{
    const struct config *c = p->snap->cfg;
    char head[160];
    char *v;
    size_t hl;

    if (c->cache.store != STORE_REDIS) {
        lock_take();
        if (p->gw->cache)
            cache_put(p->gw->cache, p->cache_key, status, ctype, body, len, gw_now_ms());
        lock_drop();
        return;
    }
    if (len > c->cache.max_entry_bytes || memchr(body, '\0', len)
        || (ctype && (strlen(ctype) > 100 || strchr(ctype, '\n'))))
        return;
    hl = (size_t)snprintf(head, sizeof(head), "%d %lld %s\n", status,
                          (long long)gw_unix_ms(), ctype ? ctype : "");
    if ((v = malloc(hl + len + 1)) == NULL)
        return;
    memcpy(v, head, hl);
    memcpy(v + hl, body, len);
    v[hl + len] = '\0';
    lock_take();
    session_put_shared(p->gw->sess, SESSION_CACHE, p->cache_key, v, c->cache.ttl_ms);
    lock_drop();
    free(v);
}

/* A complete 2xx answer of a cached request goes into the cache. */
static void px_cache_store(struct proxy *p, const struct px_leg *l, const char *ctype)
{
    if (!p->cache_store || l->status < 200 || l->status >= 300)
        return;
    px_cache_put(p, l->status, ctype, (const char *)evbuffer_pullup(l->buf, -1),
                 evbuffer_get_length(l->buf));
}

/* A stream complete: its JSON answer goes into the cache. */
static void px_cache_store_stream(struct proxy *p)
{
    char *json;

    if (!p->cache_store || p->ctext == NULL)
        return;
    json = cache_sse_to_json(p->route->family == API_CHAT,
                             (const char *)evbuffer_pullup(p->ctext, -1),
                             evbuffer_get_length(p->ctext));
    if (json != NULL)
        px_cache_put(p, 200, "application/json", json, strlen(json));
    free(json);
}

static void px_start(struct proxy *p)
{
    if (px_plan(p) < 0) {
        px_error(p, 500, "server_error", "out_of_memory", "out of memory");
        return;
    }
    if (px_cache_begin(p))
        return;
    px_start_rest(p);
}

/* After the cache: the deadline, then the session lookup if any. */
static void px_start_rest(struct proxy *p)
{
    const struct config *c = p->snap->cfg;
    struct timeval tv;
    int answered;

    tv.tv_sec = (time_t)(p->ad.deadline_ms / 1000);
    tv.tv_usec = (suseconds_t)((p->ad.deadline_ms % 1000) * 1000);
    p->deadline_on = 1;
    evtimer_add(p->deadline_timer, &tv);
    lock_take();
    retry_budget_note_request(&p->gw->budget, p->t_start);
    lock_drop();
    if (!p->verify && p->lookup_key == NULL) {
        const char *key = NULL;
        p->lookup_kind = SESSION_STICKY;
        if (c->routing.sticky == AFF_USER)
            key = p->user;
        else if (c->routing.sticky == AFF_HEADER)
            key = http_req_header(p->req, c->routing.sticky_header);
        else if (c->routing.sticky == AFF_RESPONSE_ID) {
            key = p->prev_rid;
            p->lookup_kind = SESSION_RID;
        }
        if (key && *key)
            p->lookup_key = strdup(key);
    }
    if (p->lookup_key == NULL) {
        px_begin(p);
        return;
    }
    p->st = PX_LOOKUP;
    lock_take();
    p->lookup_sync = 1;
    p->call = session_get(p->gw->sess, p->lookup_kind, p->lookup_key, p->t_start,
                          px_lookup_done, p);
    p->lookup_sync = 0;
    answered = p->call == NULL;
    lock_drop();
    if (answered)
        px_begin(p);                  /* answered already */
}

/* The top-level members a proxied body is read for; the rest is the
 * upstream's to judge. The last of duplicate members wins, as in jansson. */
struct px_fields {
    struct jscan_val model, stream, messages, user, id, prev_rid, stream_options, conversation;
    struct jscan_val max_tokens;     /* max_tokens, max_completion_tokens, max_output_tokens */
};

static void px_field(void *arg, const char *key, size_t klen, const struct jscan_val *v)
{
    struct px_fields *f = arg;
    struct jscan_val *dst = NULL;

    /* By length first: one jump, then at most two compares (most of a
     * body's members are none of these). */
#define IS(name) (memcmp(key, name, sizeof(name) - 1) == 0)
    switch (klen) {
    case 2:  dst = IS("id") ? &f->id : NULL; break;
    case 4:  dst = IS("user") ? &f->user : NULL; break;
    case 5:  dst = IS("model") ? &f->model : NULL; break;
    case 6:  dst = IS("stream") ? &f->stream : NULL; break;
    case 8:  dst = IS("messages") ? &f->messages : NULL; break;
    case 10: dst = IS("max_tokens") ? &f->max_tokens : NULL; break;
    case 12: dst = IS("conversation") ? &f->conversation : NULL; break;
    case 14: dst = IS("stream_options") ? &f->stream_options : NULL; break;
    case 17: dst = IS("max_output_tokens") ? &f->max_tokens : NULL; break;
    case 20: dst = IS("previous_response_id") ? &f->prev_rid : NULL; break;
    case 21: dst = IS("max_completion_tokens") ? &f->max_tokens : NULL; break;
    default: break;
    }
#undef IS
    if (dst)
        *dst = *v;
}

/* usage.include_in_stream: a streamed chat/completions request that does
 * not ask for usage gets stream_options.include_usage, and the client's
 * stream loses the usage-only chunk again (px_write_events). */
static int px_ask_usage(struct proxy *p, const struct jscan_val *opts)
{
    static const char member[] = "\"stream_options\":{\"include_usage\":true}";
    enum usage_ask a = usage_ask_of(opts ? opts->start : NULL, opts ? opts->len : 0);
    const char *b = p->body, *e = p->body + p->body_len, *brace;
    size_t head, n;
    json_t *doc, *o;

    if (a == USAGE_ASKED)
        return 0;
    p->strip_usage = 1;
    if (a == USAGE_ADD) {
        brace = memchr(b, '{', p->body_len);   /* jscan said: an object */
        head = (size_t)(brace + 1 - b);
        n = p->body_len + sizeof(member);     /* the member and a comma */
        if ((p->body_own = malloc(n)) == NULL)
            return -1;
        memcpy(p->body_own, b, head);
        memcpy(p->body_own + head, member, sizeof(member) - 1);
        for (b = brace + 1; b < e && isspace((unsigned char)*b); b++)
            ;
        if (b < e && *b == '}') {             /* {} */
            n--;
        } else {
            p->body_own[head + sizeof(member) - 1] = ',';
        }
        memcpy(p->body_own + n - (p->body_len - head), brace + 1, p->body_len - head);
        p->body = p->body_own;
        p->body_len = n;
        return 0;
    }
    if ((doc = json_loadb(p->body, p->body_len, 0, NULL)) == NULL)
        return -1;
    o = json_object_get(doc, "stream_options");
    if (!json_is_object(o)) {
        o = json_object();
        json_object_set_new(doc, "stream_options", o);
    }
    json_object_set_new(o, "include_usage", json_true());
    p->body_own = json_dumps(doc, JSON_COMPACT);
    json_decref(doc);
    if (p->body_own == NULL)
        return -1;
    p->body = p->body_own;
    p->body_len = strlen(p->body_own);
    return 0;
}

static void px_conv_member(void *arg, const char *key, size_t klen,
                           const struct jscan_val *v)
{
    if (klen == 2 && memcmp(key, "id", 2) == 0)
        *(struct jscan_val *)arg = *v;
}

/* Responses' "conversation": "conv_..." or {"id": "conv_..."}; NULL if
 * neither (the upstream judges). */
static char *px_conversation_id(const struct jscan_val *v)
{
    struct jscan_val id;
    struct jscan_error err;

    if (v->type == JSCAN_STRING)
        return v->len > 2 ? jscan_string(v, NULL) : NULL;
    memset(&id, 0, sizeof(id));
    if (v->type != JSCAN_OBJECT
        || jscan_top(v->start, v->len, px_conv_member, &id, &err) != JSCAN_OBJECT
        || id.type != JSCAN_STRING || id.len <= 2)
        return NULL;
    return jscan_string(&id, NULL);
}

/* A string value decoded into in[cap] when it is short and has no escape
 * (no allocation), else into a new string (jscan_string); NULL when out of
 * memory. */
static char *px_string(const struct jscan_val *v, char *in, size_t cap)
{
    size_t n = v->len - 2;

    if (n < cap && memchr(v->start + 1, '\\', n) == NULL) {
        memcpy(in, v->start + 1, n);
        in[n] = '\0';
        return in;
    }
    return jscan_string(v, NULL);
}

/* A JSON body: an object, with a string "model" and a boolean "stream"
 * when present (chat: "messages" an array of objects). Returns -1 after
 * answering the error. */
static int px_read_json(struct proxy *p)
{
    struct jscan_error jerr;
    struct px_fields f;
    enum jscan_type top;
    const char *ctype = http_req_known(p->req, HTTP_H_CONTENT_TYPE);

    if (p->route->family != API_CHAT && p->route->family != API_COMPLETIONS
        && p->route->family != API_EMBEDDINGS && p->route->family != API_VERIFY
        && ctype && strncasecmp(ctype, "multipart/", 10) == 0) {
        px_error(p, 415, "invalid_request_error", "unsupported_media_type",
                 "the body must be JSON (Content-Type: application/json), not a form");
        return -1;
    }
    memset(&f, 0, sizeof(f));
    top = jscan_top(p->body, p->body_len, px_field, &f, &jerr);
    if (top == JSCAN_INVALID) {
        char msg[300];
        snprintf(msg, sizeof(msg), "invalid JSON body: %s (line %d, column %d)",
                 jerr.text, jerr.line, jerr.column);
        px_error(p, 400, "invalid_request_error", "invalid_json", msg);
        return -1;
    }
    if (top != JSCAN_OBJECT) {
        px_error(p, 400, "invalid_request_error", "invalid_json",
                 "the request body must be a JSON object");
        return -1;
    }
    p->json_body = 1;
    if (f.model.type && f.model.type != JSCAN_STRING) {
        px_error(p, 400, "invalid_request_error", "invalid_model",
                 "\"model\" must be a string");
        return -1;
    }
    if (f.model.type)
        p->model = px_string(&f.model, p->model_in, sizeof(p->model_in));
    if (f.stream.type && f.stream.type != JSCAN_TRUE && f.stream.type != JSCAN_FALSE
        && f.stream.type != JSCAN_NULL) {
        px_error(p, 400, "invalid_request_error", "invalid_stream",
                 "\"stream\" must be true or false");
        return -1;
    }
    p->want_stream = f.stream.type == JSCAN_TRUE;
    /* Chat: "messages" is an array of objects (what is inside each is the
     * upstream's to judge). */
    if (p->route->family == API_CHAT
        && (f.messages.type != JSCAN_ARRAY || !f.messages.all_objects)) {
        px_error(p, 400, "invalid_request_error", "invalid_messages",
                 "\"messages\" must be an array of message objects");
        return -1;
    }
    if (p->want_stream && p->snap->cfg->usage.include_in_stream
        && (p->route->family == API_CHAT || p->route->family == API_COMPLETIONS)
        && px_ask_usage(p, f.stream_options.type ? &f.stream_options : NULL) < 0) {
        px_error(p, 500, "server_error", "out_of_memory", "out of memory");
        return -1;
    }
    if (f.user.type == JSCAN_STRING)
        p->user = px_string(&f.user, p->user_in, sizeof(p->user_in));
    if (f.max_tokens.type == JSCAN_NUMBER) {
        long long n = strtoll(f.max_tokens.start, NULL, 10);
        p->max_out = n > 0 ? (int64_t)n : 0;
    }
    if (f.prev_rid.type == JSCAN_STRING)
        p->prev_rid = jscan_string(&f.prev_rid, NULL);
    if (p->route->family == API_VERIFY) {
        if (f.id.type != JSCAN_STRING || f.id.len <= 2) {
            px_error(p, 400, "invalid_request_error", "missing_id",
                     "the body needs \"id\": the id of a response to verify");
            return -1;
        }
        p->verify = 1;
        p->lookup_kind = SESSION_RID;
        p->lookup_key = jscan_string(&f.id, NULL);
    } else if (p->route->family == API_RESPONSES && p->prev_rid && *p->prev_rid) {
        /* The upstream keeps the conversation: its host only. */
        p->owned = 1;
        p->lookup_kind = SESSION_RID;
        p->lookup_key = strdup(p->prev_rid);
    } else if (p->route->family == API_RESPONSES && f.conversation.type) {
        p->lookup_key = px_conversation_id(&f.conversation);
        p->owned = p->lookup_key != NULL;
        p->lookup_kind = SESSION_RID;
    }
    return 0;
}

/* A multipart/form-data body (audio, image edits): well-formed, its
 * "model" field read for routing. Returns -1 after answering the error. */
static int px_read_form(struct proxy *p)
{
    char model[256];
    const char *ctype = http_req_known(p->req, HTTP_H_CONTENT_TYPE);
    const char *why;

    if (ctype == NULL || strncasecmp(ctype, "multipart/form-data", 19) != 0) {
        px_error(p, 415, "invalid_request_error", "unsupported_media_type",
                 "the body must be multipart/form-data");
        return -1;
    }
    why = route_form_check(ctype, p->body, p->body_len, "model", model, sizeof(model));
    if (why) {
        px_error(p, 400, "invalid_request_error", "invalid_multipart", why);
        return -1;
    }
    if (model[0] && (p->model = strdup(model)) == NULL) {
        px_error(p, 500, "server_error", "out_of_memory", "out of memory");
        return -1;
    }
    return 0;
}

/* "1s", "6m0s", "250ms": OpenAI's way of writing a reset time. */
static void px_fmt_reset(char *buf, size_t cap, int64_t ms)
{
    if (ms < 1000)
        snprintf(buf, cap, "%lldms", (long long)ms);
    else if (ms < 60000)
        snprintf(buf, cap, "%llds", (long long)((ms + 999) / 1000));
    else
        snprintf(buf, cap, "%lldm%llds", (long long)(ms / 60000),
                 (long long)((ms % 60000 + 999) / 1000));
}

/* x-ratelimit-limit-WHAT, -remaining-WHAT, -reset-WHAT. */
static void px_limit_header(struct proxy *p, const char *what, int64_t limit,
                            int64_t remaining, int64_t reset_ms)
{
    char n[32], name[48];

    snprintf(name, sizeof(name), "x-ratelimit-limit-%s", what);
    snprintf(n, sizeof(n), "%lld", (long long)limit);
    http_resp_header(p->req, name, n);
    snprintf(name, sizeof(name), "x-ratelimit-remaining-%s", what);
    snprintf(n, sizeof(n), "%lld", (long long)remaining);
    http_resp_header(p->req, name, n);
    snprintf(name, sizeof(name), "x-ratelimit-reset-%s", what);
    px_fmt_reset(n, sizeof(n), reset_ms);
    http_resp_header(p->req, name, n);
}

static void px_limit_headers(struct proxy *p, const struct limits_view *v)
{
    if (v->req_limit)
        px_limit_header(p, "requests", v->req_limit, v->req_remaining, v->reset_ms);
    if (v->tok_limit)
        px_limit_header(p, "tokens", v->tok_limit, v->tok_remaining, v->reset_ms);
}

/* Answers a refused admission. Returns -1. */
static int px_refuse(struct proxy *p, enum limits_verdict r, const struct limits_view *v,
                     const char *why)
{
    char msg[200];

    snprintf(msg, sizeof(msg), "%lld", (long long)v->retry_after_s);
    http_resp_header(p->req, "Retry-After", msg);
    if (r == LIMITS_DAY || r == LIMITS_MONTH) {
        snprintf(msg, sizeof(msg), "token budget spent (%s)", limits_verdict_name(r));
        px_error(p, 429, "insufficient_quota", "insufficient_quota", msg);
    } else {
        snprintf(msg, sizeof(msg), "rate limit exceeded (%s): retry after %lld s",
                 why ? why : limits_verdict_name(r), (long long)v->retry_after_s);
        px_error(p, 429, "rate_limit_exceeded", "rate_limit_exceeded", msg);
    }
    return -1;
}

static int64_t px_reserve_in(const struct proxy *p)
{
    return (int64_t)(p->body_len / 4) + 1;
}

static int64_t px_reserve(const struct proxy *p)
{
    return px_reserve_in(p) + (p->max_out >= 0 ? p->max_out
                                               : p->snap->cfg->limits.default_max_tokens);
}

/* Redis answered the admission (p->admit_ans), or failed (NULL): decide
 * as limits.on_store_failure says. 0 = admitted, -1 = answered. */
static int px_admit_finish(struct proxy *p)
{
    const struct config *c = p->snap->cfg;
    struct limits_view v;
    enum limits_verdict r;
    struct session_metrics sm;
    int64_t now = gw_unix_ms();

    memset(&v, 0, sizeof(v));
    lock_take();
    if (p->admit_ans) {
        r = clients_shared_verdict(c, p->client, p->admit_ans, now, &v);
        p->admitted = r == LIMITS_OK;
        p->admit_shared = 1;
    } else if (c->limits.on_store_failure == LIMITS_FAIL_LOCAL) {
        session_metrics_read(p->gw->sess, &sm);
        r = clients_admit_local(c, p->client, sm.replicas, now, px_reserve(p),
                                px_reserve_in(p), &p->ticket, &v);
        p->admitted = r == LIMITS_OK;
    } else {
        r = c->limits.on_store_failure == LIMITS_FAIL_OPEN ? LIMITS_OK : LIMITS_RPM;
        v.retry_after_s = 1;
        if (r != LIMITS_OK)
            clients_note_refused(p->client->name);
    }
    lock_drop();
    px_limit_headers(p, &v);
    if (r == LIMITS_OK)
        return 0;
    return px_refuse(p, r, &v, p->admit_ans || c->limits.on_store_failure != LIMITS_FAIL_CLOSED
                               ? NULL : "the limits store is unavailable");
}

/*
 * Admission before any upstream work (clients.h): the client's model and
 * limits. Reserves the prompt estimate (body bytes / 4) plus max_tokens
 * (limits.default_max_tokens without it). With sessions.store: redis the
 * limits are shared: one script in Redis decides (px_admit_finish when it
 * answers). Returns 0 when admitted (or no clients configured), 1 when
 * Redis's answer is awaited, -1 with the request answered.
 */
static int px_admit(struct proxy *p)
{
    const struct config *c = p->snap->cfg;
    struct limits_view v;
    enum limits_verdict r;
    char msg[200];

    if (c->nclients == 0)
        return 0;
    lock_take();
    p->client = clients_of_req(c, p->req);
    if (p->client == NULL) {       /* removed by a reload since gateway.c looked */
        lock_drop();
        px_error(p, 401, "authentication_error", "invalid_api_key", "missing or invalid API key");
        return -1;
    }
    if (!clients_model_allowed(c, p->client, p->model)) {
        clients_note_refused(p->client->name);
        memset(&v, 0, sizeof(v));
        clients_view(c, p->client, gw_unix_ms(), &v);
        lock_drop();
        px_limit_headers(p, &v);
        snprintf(msg, sizeof(msg), "this key may not use model \"%.100s\"",
                 p->model ? p->model : "");
        px_error(p, 403, "permission_error", "model_not_allowed", msg);
        return -1;
    }
    if (c->sessions.store == STORE_REDIS) {
        p->admit_wait = 1;
        p->st = PX_LOOKUP;
        p->lookup_sync = 1;
        snprintf(p->admit_member, sizeof(p->admit_member), "%s:%s",
                 session_replica_id(p->gw->sess), p->id);
        p->call = clients_admit_shared(p->gw->sess, c, p->client, gw_unix_ms(), px_reserve(p),
                                       px_reserve_in(p), p->admit_member, &p->ticket,
                                       px_lookup_done, p);
        p->lookup_sync = 0;
        if (p->call != NULL) {
            lock_drop();
            return 1;
        }
        p->admit_wait = 0;           /* Redis not up: answered already */
        lock_drop();
        return px_admit_finish(p);
    }
    r = clients_admit(c, p->client, gw_unix_ms(), px_reserve(p), px_reserve_in(p),
                      &p->ticket, &v);
    p->admitted = r == LIMITS_OK;
    lock_drop();
    px_limit_headers(p, &v);
    if (r == LIMITS_OK)
        return 0;
    return px_refuse(p, r, &v, NULL);
}

void proxy_handle(struct gateway *gw, struct http_req *req)
{
    const char *path = http_req_path(req), *query = http_req_query(req);
    char rid[SESSION_KEY_MAX];
    const struct api_route *r;
    struct proxy *p;
    int known;

    r = route_find(http_req_method(req), path, &known, rid, sizeof(rid));
    p = px_new(gw, req, path, http_req_method(req));
    if (p == NULL) {
        http_reply_error(req, 500, "server_error", "out_of_memory", "out of memory");
        return;
    }
    p->route = r ? r : route_passthrough();
    if (strlen(path) >= sizeof(p->upath)) {
        px_error(p, 414, "invalid_request_error", "path_too_long", "request path too long");
        return;
    }
    if (query && *query && (p->query = strdup(query)) == NULL) {
        px_error(p, 500, "server_error", "out_of_memory", "out of memory");
        return;
    }
    p->body = http_req_body(req, &p->body_len);
    if (p->route->flags & API_BODY_JSON) {
        if (px_read_json(p) < 0)
            return;
    } else if (p->route->flags & API_BODY_FORM) {
        if (px_read_form(p) < 0)
            return;
    } else if (p->route->flags & API_ID_IN_PATH) {
        if (rid[0] == '\0') {
            px_error(p, 400, "invalid_request_error", "invalid_id",
                     "the path must name a response id ([A-Za-z0-9_.:-])");
            return;
        }
        p->owned = 1;
        p->lookup_kind = SESSION_RID;
        p->lookup_key = strdup(rid);
    }
    if (px_admit(p) != 0)
        return;
    px_start(p);
}

void proxy_handle_get(struct gateway *gw, struct http_req *req, const char *path)
{
    struct proxy *p = px_new(gw, req, path, "GET");

    if (p == NULL) {
        http_reply_error(req, 500, "server_error", "out_of_memory", "out of memory");
        return;
    }
    if (px_admit(p) != 0)
        return;
    px_start(p);
}

void proxy_abort_all(struct worker *w)
{
    int i;

    while (w->inflight) {
        struct proxy *p = w->inflight;
        for (i = 0; i < p->nlegs; i++)
            px_leg_cancel(p->legs[i]);
        if (p->st == PX_STREAMING) {
            px_stream_error(p, "stream_interrupted", "gateway shutting down");
            px_account(p);
            http_stream_end(p->req);
            px_done(p);
        } else {
            px_error(p, 503, "service_unavailable", "shutting_down",
                     "the gateway is shutting down");
        }
    }
    while (w->px_spare) {               /* the memory px_free() kept */
        struct proxy *p = w->px_spare;
        w->px_spare = p->next;
        free(p);
    }
    w->px_nspare = 0;
}
