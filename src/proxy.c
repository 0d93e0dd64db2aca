/*
 * proxy.c -- one proxied request's life (see proxy.h).
 *
 * The request is a small state machine:
 *
 *   ATTEMPT --start--> WAIT_HEAD --2xx SSE--> STREAMING --done--> finish
 *      ^                  |   \--other-----> BUFFERING --done--> answer
 *      |                  |                      |
 *      +----- failure before any byte went to the client (and attempts,
 *             deadline left): next host, next key
 *
 * Nothing is retried once the first byte went to the client: a stream
 * that breaks after that ends with an SSE `event: error` frame. Every exit
 * goes through px_finish(), which answers (or ends the stream), writes the
 * access log line and drops the snapshot reference.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <jansson.h>

#include "balance.h"
#include "breaker.h"
#include "gateway.h"
#include "http.h"
#include "keys.h"
#include "log.h"
#include "proxy.h"
#include "retry.h"
#include "upstream.h"

#define PX_MAX_TRIED        32
#define PX_STREAM_HIGH      (256 * 1024)        /* pause upstream above this */
#define PX_MAX_BUFFERED     (64 * 1024 * 1024)  /* non-streamed response cap */
#define PX_MAX_REQUEST_ID   64
#define PX_USER_AGENT       "infergate/" INFERGATE_VERSION

#ifndef INFERGATE_VERSION
#define INFERGATE_VERSION "0.1.0"
#endif

enum px_state { PX_ATTEMPT = 0, PX_WAIT_HEAD, PX_BUFFERING, PX_STREAMING, PX_DONE };

/* Why the last attempt failed, for the final answer. */
enum px_fail {
    FAIL_NONE = 0, FAIL_NETWORK, FAIL_TIMEOUT, FAIL_STATUS, FAIL_TOO_LARGE
};

struct proxy {
    struct gateway       *gw;
    struct snapshot      *snap;          /* one reference, dropped at finish */
    struct http_req      *req;
    struct proxy         *prev, *next;   /* all requests in flight */
    char                  upath[64];     /* upstream path */
    const char           *method;
    const char           *body;          /* the client's bytes, owned by req */
    size_t                body_len;
    char                 *model;         /* NULL when the body has none */
    int                   want_stream;
    char                  id[PX_MAX_REQUEST_ID + 1];
    char                  peer[64];      /* copied: req may be gone at log time */

    enum px_state         st;
    struct upstream_xfer *xfer;
    struct event         *try_timer;     /* connect + first byte */
    struct event         *deadline_timer;
    struct event         *backoff_timer;  /* wait before the next attempt */
    struct breaker_ticket ticket;        /* this attempt's breaker admission */
    int                   ticket_open;   /* ticket not yet recorded/released */
    char                 *user;          /* body's "user", for consistent-hash */
    enum balance_status   pick_status;   /* why the last pick found nothing */
    int64_t               t_start, t_try, t_head;
    int                   host;          /* current attempt's host, -1 none */
    int                   has_key;
    size_t                key;
    int                   attempts;
    int                   tried[PX_MAX_TRIED];
    int                   ntried;
    int                   keys_cooling;  /* a host was skipped: keys cooling */
    int                   status;        /* upstream status of this attempt */
    struct evbuffer      *buf;           /* buffered response body */

    enum px_fail          fail;          /* last failure */
    int                   fail_status;
    int                   fail_host;
    char                  fail_msg[160];

    int                   resp_status;   /* what the client got */
    size_t                bytes_out;
};

static struct proxy *inflight;           /* list head, for proxy_abort_all */

static void px_attempt(struct proxy *p);

/* --- bookkeeping ----------------------------------------------------- */

static const struct cfg_host *px_host(const struct proxy *p)
{
    return p->host >= 0 ? &p->snap->cfg->hosts[p->host] : NULL;
}

static void px_access_log(struct proxy *p)
{
    struct log_access a;
    const struct cfg_host *h = px_host(p);
    int64_t now = gw_now_ms();

    memset(&a, 0, sizeof(a));
    a.request_id = p->id;
    a.method = p->method;
    a.path = p->upath;
    a.model = p->model;
    a.host = h ? h->name : NULL;
    a.key_fp = p->has_key ? p->snap->cfg->keys[p->key].fingerprint : NULL;
    a.peer = p->peer;
    a.status = p->resp_status;
    a.attempts = p->attempts;
    a.stream = p->st == PX_STREAMING;
    a.ttfb_ms = p->t_head ? (double)(p->t_head - p->t_start) : 0;
    a.total_ms = (double)(now - p->t_start);
    a.bytes_out = p->bytes_out;
    log_access(&a);
}

/* Ends the current attempt's accounting: in-flight count, first-byte
 * timer. Its breaker admission is consumed by px_record(). */
static void px_attempt_end(struct proxy *p)
{
    if (p->host >= 0 && p->snap->hs[p->host]->live.in_flight > 0)
        p->snap->hs[p->host]->live.in_flight--;
    if (p->try_timer)
        evtimer_del(p->try_timer);
}

/* Drops the attempt in flight without an outcome (client gone, deadline,
 * shutdown): the breaker gets its admission back, learns nothing. */
static void px_cancel_attempt(struct proxy *p)
{
    if (p->xfer == NULL)
        return;
    upstream_cancel(p->xfer);
    p->xfer = NULL;
    px_attempt_end(p);
    if (p->ticket_open) {
        breaker_release(&p->snap->hs[p->host]->br, p->ticket);
        p->ticket_open = 0;
    }
}

static void px_free(struct proxy *p)
{
    if (p->prev)
        p->prev->next = p->next;
    else
        inflight = p->next;
    if (p->next)
        p->next->prev = p->prev;
    p->gw->active--;
    if (p->try_timer)
        event_free(p->try_timer);
    if (p->deadline_timer)
        event_free(p->deadline_timer);
    if (p->backoff_timer)
        event_free(p->backoff_timer);
    free(p->user);
    if (p->buf)
        evbuffer_free(p->buf);
    free(p->model);
    snapshot_unref(p->snap);
    free(p);
}

/* The common exit: the reply was sent (or the client left). */
static void px_done(struct proxy *p)
{
    p->st = PX_DONE;
    px_access_log(p);
    px_free(p);
}

static void px_add_headers(struct proxy *p)
{
    const struct cfg_host *h = px_host(p);
    char n[16];

    http_resp_header(p->req, "X-Request-Id", p->id);
    if (h) {
        http_resp_header(p->req, "X-Upstream-Host", h->name);
        if (h->address)
            http_resp_header(p->req, "X-Provider-Address", h->address);
    }
    snprintf(n, sizeof(n), "%d", p->attempts);
    http_resp_header(p->req, "X-Attempts", n);
}

static void px_error(struct proxy *p, int status, const char *type,
                     const char *code, const char *msg)
{
    p->resp_status = status;
    px_add_headers(p);
    http_reply_error(p->req, status, type, code, "%s", msg);
    px_done(p);
}

/* The final answer when no attempt succeeded. */
static void px_fail_final(struct proxy *p)
{
    const struct config *c = p->snap->cfg;
    const char *hname = p->fail_host >= 0 ? c->hosts[p->fail_host].name : "-";
    char msg[320];

    if (p->attempts == 0) {
        if (p->pick_status == BALANCE_NO_MODEL && c->nhosts > 0) {
            snprintf(msg, sizeof(msg), "no host serves model \"%.100s\"",
                     p->model ? p->model : "");
            px_error(p, 404, "invalid_request_error", "model_not_found", msg);
        } else if (p->keys_cooling) {
            px_error(p, 429, "rate_limit_error", "keys_cooling_down",
                     "every upstream API key is cooling down; retry later");
        } else if (p->pick_status == BALANCE_ALL_FULL) {
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
                 hname, p->attempts);
        px_error(p, 504, "upstream_error", "upstream_timeout", msg);
        return;
    case FAIL_STATUS:
        snprintf(msg, sizeof(msg), "upstream %s answered %d after %d attempt(s)",
                 hname, p->fail_status, p->attempts);
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
                 hname, p->attempts, p->fail_msg);
        px_error(p, 502, "upstream_error", "upstream_failed", msg);
        return;
    }
}

/* --- outcome classification ----------------------------------------- */

/* Records why this attempt failed, for the final answer and the logs. */
static void px_note_failure(struct proxy *p, enum px_fail why, int status,
                            const char *msg)
{
    p->fail = why;
    p->fail_status = status;
    p->fail_host = p->host;
    snprintf(p->fail_msg, sizeof(p->fail_msg), "%s", msg);
    snprintf(p->snap->hs[p->host]->last_error,
             sizeof(p->snap->hs[p->host]->last_error), "%s", msg);
    log_warn("request %s: attempt %d to %s failed: %s", p->id, p->attempts,
             p->snap->cfg->hosts[p->host].name, msg);
}

/* Feeds one finished attempt to the breaker and the host's counters. */
static void px_record(struct proxy *p, int host_failure)
{
    struct host_state *hs = p->snap->hs[p->host];
    int64_t now = gw_now_ms();

    if (p->ticket_open) {
        breaker_record(&hs->br, p->ticket, !host_failure, now - p->t_try, now);
        p->ticket_open = 0;
    }
    if (host_failure) {
        hs->failures++;
        hs->consecutive_failures++;
    } else {
        hs->consecutive_failures = 0;
    }
}

static void px_backoff_done(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    px_attempt(arg);
}

/*
 * One attempt failed before any byte went to the client. Classifies it,
 * updates breaker, key and counters, then either schedules the next
 * attempt after a backoff or gives the final answer.
 */
static void px_attempt_failed(struct proxy *p, enum retry_fault fault, int status,
                              const char *retry_after, const char *msg)
{
    const struct config *c = p->snap->cfg;
    struct gateway *gw = p->gw;
    struct retry_outcome o = { fault, status, p->has_key };
    struct retry_verdict v = retry_classify(&p->snap->rp, &o);
    int64_t now = gw_now_ms(), ra_ms = -1, delay;

    px_record(p, v.host_failure);
    if (retry_after)
        ra_ms = retry_after_parse(retry_after, gw_unix_ms() / 1000);
    if (v.key != RETRY_KEY_KEEP
        && keys_report(p->snap->ks[p->key], status, ra_ms, now))
        log_warn("key %s (%s) %s after upstream %d from %s",
                 c->keys[p->key].fingerprint, c->keys[p->key].description,
                 v.key == RETRY_KEY_DISABLE ? "disabled until reload" : "cooling down",
                 status, c->hosts[p->host].name);
    px_note_failure(p, fault == RETRY_FAULT_TIMEOUT ? FAIL_TIMEOUT
                       : fault == RETRY_FAULT_NETWORK ? FAIL_NETWORK : FAIL_STATUS,
                    status, msg);
    if (!v.retryable || p->attempts >= c->retry.max_attempts) {
        px_fail_final(p);
        return;
    }
    if (!retry_budget_try_spend(&gw->budget, now)) {
        gw->budget_exhausted_total++;
        log_warn("request %s: retry budget exhausted (ratio %.2f over %lld ms);"
                 " not retrying", p->id, c->retry.budget_ratio,
                 (long long)c->retry.budget_window_ms);
        px_fail_final(p);
        return;
    }
    delay = retry_delay_ms(&p->snap->rp, p->attempts, retry_rand(&gw->rnd),
                           c->retry.respect_retry_after ? ra_ms : -1);
    if (now + delay >= p->t_start + c->retry.deadline_ms) {
        px_fail_final(p);
        return;
    }
    gw->retries_total++;
    p->st = PX_ATTEMPT;
    {
        struct timeval tv = { (time_t)(delay / 1000), (suseconds_t)((delay % 1000) * 1000) };
        evtimer_add(p->backoff_timer, &tv);
    }
}

/* --- upstream callbacks ---------------------------------------------- */

static int hop_by_hop(const char *name)
{
    static const char *const skip[] = {
        "connection", "keep-alive", "transfer-encoding", "content-length",
        "te", "trailer", "upgrade", "proxy-authenticate", "proxy-connection",
        "content-type", "server", "date", "x-request-id",
    };
    size_t i;

    for (i = 0; i < sizeof(skip) / sizeof(skip[0]); i++)
        if (strcasecmp(name, skip[i]) == 0)
            return 1;
    return 0;
}

static void px_copy_headers(struct proxy *p)
{
    size_t i, n = upstream_resp_nheaders(p->xfer);

    for (i = 0; i < n; i++) {
        const char *name, *value;
        upstream_resp_header_at(p->xfer, i, &name, &value);
        if (!hop_by_hop(name))
            http_resp_header(p->req, name, value);
    }
}

static void px_drain(struct http_req *req, void *arg)
{
    struct proxy *p = arg;

    (void)req;
    if (p->xfer)
        upstream_resume(p->xfer);   /* may call px_on_data right away */
}

static enum upstream_verdict px_on_headers(void *arg, struct upstream_xfer *x,
                                           int status)
{
    struct proxy *p = arg;
    const char *ctype = upstream_resp_header(x, "Content-Type");
    struct host_state *hs = p->snap->hs[p->host];
    double ttfb;

    p->status = status;
    p->t_head = gw_now_ms();
    evtimer_del(p->try_timer);
    ttfb = (double)(p->t_head - p->t_try);
    balance_observe_latency(&hs->live.ewma_ms, ttfb, BALANCE_EWMA_ALPHA);

    if (status >= 200 && status < 300 && ctype
        && strncasecmp(ctype, "text/event-stream", 17) == 0) {
        /* The first byte goes to the client now: no retry after this. */
        p->st = PX_STREAMING;
        event_del(p->deadline_timer);
        p->resp_status = status;
        px_add_headers(p);
        px_copy_headers(p);
        http_stream_start(p->req, status, ctype);
        return UPSTREAM_CONTINUE;
    }
    p->st = PX_BUFFERING;
    evbuffer_drain(p->buf, evbuffer_get_length(p->buf));
    return UPSTREAM_CONTINUE;
}

static enum upstream_verdict px_on_data(void *arg, const char *data, size_t len)
{
    struct proxy *p = arg;

    if (p->st == PX_STREAMING) {
        size_t pending = http_stream_write(p->req, data, len);
        p->bytes_out += len;
        if (pending > PX_STREAM_HIGH) {
            /* Slow client: hold the upstream until the socket drains. */
            http_req_on_drain(p->req, px_drain, p);
            return UPSTREAM_PAUSE;
        }
        return UPSTREAM_CONTINUE;
    }
    if (evbuffer_get_length(p->buf) + len > PX_MAX_BUFFERED)
        return UPSTREAM_ABORT;
    evbuffer_add(p->buf, data, len);
    return UPSTREAM_CONTINUE;
}

static void px_stream_error(struct proxy *p, const char *why)
{
    json_t *o = json_pack("{s:{s:s, s:s, s:s}}", "error", "message", why,
                          "type", "upstream_error", "code", "stream_interrupted");
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    struct evbuffer *frame = evbuffer_new();

    if (s && frame) {
        evbuffer_add_printf(frame, "event: error\ndata: %s\n\n", s);
        http_stream_write(p->req, (const char *)evbuffer_pullup(frame, -1),
                          evbuffer_get_length(frame));
    }
    if (frame)
        evbuffer_free(frame);
    free(s);
    json_decref(o);
}

static void px_reply_buffered(struct proxy *p)
{
    const char *ctype = upstream_resp_header(p->xfer, "Content-Type");
    size_t len = evbuffer_get_length(p->buf);

    p->resp_status = p->status;
    px_add_headers(p);
    px_copy_headers(p);
    p->bytes_out = len;
    http_reply(p->req, p->status, ctype ? ctype : "application/json",
               (const char *)evbuffer_pullup(p->buf, -1), len);
}

/* A 2xx answer that says it is JSON but does not parse is an upstream
 * fault like a reset connection: another host may do better. */
static int px_garbage(struct proxy *p, const struct upstream_xfer *x)
{
    const char *ctype = upstream_resp_header(x, "Content-Type");
    size_t len = evbuffer_get_length(p->buf);
    json_t *doc;

    if (p->status < 200 || p->status >= 300 || ctype == NULL
        || strstr(ctype, "json") == NULL)
        return 0;
    doc = json_loadb((const char *)evbuffer_pullup(p->buf, -1), len, 0, NULL);
    if (doc == NULL)
        return 1;
    json_decref(doc);
    return 0;
}

static void px_on_done(void *arg, enum upstream_result res, const char *err)
{
    struct proxy *p = arg;
    struct upstream_xfer *x = p->xfer;
    const struct config *c = p->snap->cfg;
    struct retry_outcome o = { RETRY_FAULT_NONE, p->status, p->has_key };
    char msg[200];

    if (p->st == PX_STREAMING) {
        px_record(p, res != UPSTREAM_OK);
        px_attempt_end(p);
        p->xfer = NULL;
        if (res != UPSTREAM_OK) {
            log_warn("request %s: stream from %s broke: %s", p->id,
                     c->hosts[p->host].name, err);
            px_stream_error(p, "upstream stream interrupted");
        }
        http_stream_end(p->req);
        px_done(p);
        return;
    }
    if (res == UPSTREAM_OK && px_garbage(p, x)) {
        px_attempt_end(p);
        p->xfer = NULL;
        px_attempt_failed(p, RETRY_FAULT_NETWORK, 0, NULL,
                          "upstream sent a malformed JSON body");
        return;
    }
    if (res == UPSTREAM_OK && !retry_classify(&p->snap->rp, &o).retryable) {
        px_record(p, retry_classify(&p->snap->rp, &o).host_failure);
        px_attempt_end(p);
        px_reply_buffered(p);        /* still needs x for its headers */
        p->xfer = NULL;
        px_done(p);
        return;
    }
    px_attempt_end(p);
    if (res == UPSTREAM_ERR_ABORTED) {
        px_record(p, 1);
        p->xfer = NULL;
        px_note_failure(p, FAIL_TOO_LARGE, 0, "response too large");
        px_fail_final(p);
        return;
    }
    if (res == UPSTREAM_OK) {
        char ra[64] = "";
        const char *h = upstream_resp_header(x, "Retry-After");
        if (h)
            snprintf(ra, sizeof(ra), "%s", h);
        snprintf(msg, sizeof(msg), "HTTP %d", p->status);
        p->xfer = NULL;
        px_attempt_failed(p, RETRY_FAULT_NONE, p->status, h ? ra : NULL, msg);
        return;
    }
    p->xfer = NULL;
    snprintf(msg, sizeof(msg), "%s: %s", upstream_result_name(res), err);
    px_attempt_failed(p, res == UPSTREAM_ERR_TIMEOUT ? RETRY_FAULT_TIMEOUT
                                                     : RETRY_FAULT_NETWORK,
                      0, NULL, msg);
}

static const struct upstream_cbs px_cbs = { px_on_headers, px_on_data, px_on_done };

/* --- timers and client events ---------------------------------------- */

static void px_try_timeout(evutil_socket_t fd, short what, void *arg)
{
    struct proxy *p = arg;

    (void)fd;
    (void)what;
    if (p->xfer == NULL || p->st != PX_WAIT_HEAD)
        return;
    upstream_cancel(p->xfer);
    p->xfer = NULL;
    px_attempt_end(p);      /* the timeout is an outcome: px_record takes it */
    px_attempt_failed(p, RETRY_FAULT_TIMEOUT, 0, NULL,
                      "no response head within per_try_timeout");
}

static void px_deadline(evutil_socket_t fd, short what, void *arg)
{
    struct proxy *p = arg;

    (void)fd;
    (void)what;
    if (p->st == PX_STREAMING || p->st == PX_DONE)
        return;
    px_cancel_attempt(p);
    px_error(p, 504, "upstream_error", "deadline_exceeded",
             "no upstream answered within the request deadline");
}

static void px_client_gone(struct http_req *req, void *arg)
{
    struct proxy *p = arg;

    (void)req;
    log_debug("request %s: client went away", p->id);
    px_cancel_attempt(p);
    if (p->resp_status == 0)
        p->resp_status = 499;        /* nginx's "client closed request" */
    if (p->st == PX_STREAMING)
        http_stream_end(p->req);     /* frees the detached request */
    else
        http_reply(p->req, 499, NULL, NULL, 0);
    px_done(p);
}

/* --- picking and sending -------------------------------------------- */

static int px_was_tried(const struct proxy *p, int h)
{
    int i;

    for (i = 0; i < p->ntried; i++)
        if (p->tried[i] == h)
            return 1;
    return 0;
}

/* balance.c filter: hosts whose breaker is open are out (health checks
 * mark unhealthy hosts in live.usable). The breaker's recovery share
 * depends on time, so it is refreshed here, just before balance.c reads
 * it for this candidate. */
static int px_filter(void *ctx, int node)
{
    struct proxy *p = ctx;
    struct host_state *hs = p->snap->hs[node];
    int64_t now = gw_now_ms();

    hs->live.share = breaker_share(&hs->br, now);
    return breaker_state(&hs->br, now) != BREAKER_OPEN;
}

/* Picks the next host: the strategy's choice among usable hosts serving
 * the model, never one this request already tried unless nothing else is
 * left (then the failed host may be retried, e.g. with another key). */
static int px_pick_host(struct proxy *p)
{
    const struct config *c = p->snap->cfg;
    struct balance_query q;
    int h;

    memset(&q, 0, sizeof(q));
    q.model = p->model;
    q.prefer_region = c->routing.prefer_region;
    q.exclude = p->tried;
    q.nexclude = (size_t)p->ntried;
    q.filter = px_filter;
    q.filter_ctx = p;
    if (c->routing.strategy == STRAT_CONSISTENT_HASH) {
        q.hash_key = c->routing.hash_key == AFF_HEADER
                         ? http_req_header(p->req, c->routing.hash_header)
                         : p->user;
    }
    h = balance_pick(p->snap->bal, p->snap->live, &q, &p->pick_status);
    if (h < 0 && p->pick_status == BALANCE_ALL_TRIED && p->attempts > 0) {
        q.nexclude = 0;
        h = balance_pick(p->snap->bal, p->snap->live, &q, &p->pick_status);
    }
    return h;
}

static int px_send(struct proxy *p, int h)
{
    const struct config *c = p->snap->cfg;
    const struct cfg_host *ch = &c->hosts[h];
    struct upstream_header hdr[8];
    struct upstream_req ur;
    char url[2048], auth[4096];
    const char *accept = http_req_header(p->req, "Accept");
    size_t nh = 0;
    int64_t now = gw_now_ms(), left = p->t_start + c->retry.deadline_ms - now;

    snprintf(url, sizeof(url), "%s%s", ch->url, p->upath);
    if (p->has_key) {
        snprintf(auth, sizeof(auth), "Bearer %s", c->keys[p->key].secret);
        hdr[nh].name = "Authorization";
        hdr[nh++].value = auth;
    }
    if (p->body_len) {
        hdr[nh].name = "Content-Type";
        hdr[nh++].value = "application/json";
    }
    hdr[nh].name = "Accept";
    hdr[nh++].value = accept ? accept : "*/*";
    hdr[nh].name = "X-Request-Id";
    hdr[nh++].value = p->id;
    hdr[nh].name = "User-Agent";
    hdr[nh++].value = PX_USER_AGENT;

    memset(&ur, 0, sizeof(ur));
    ur.url = url;
    ur.method = p->method;
    ur.headers = hdr;
    ur.nheaders = nh;
    ur.body = p->body;
    ur.body_len = p->body_len;
    ur.connect_timeout_ms = c->retry.per_try_timeout_ms;
    /* A whole (non-streamed) answer must come within the deadline. */
    ur.total_timeout_ms = p->want_stream ? 0 : (left > 0 ? left : 1);

    p->status = 0;
    p->st = PX_WAIT_HEAD;
    p->t_try = now;
    p->xfer = upstream_start(p->gw->up, &ur, &px_cbs, p);
    memset(auth, 0, sizeof(auth));
    if (p->xfer == NULL)
        return -1;
    p->snap->hs[h]->live.in_flight++;
    p->snap->hs[h]->requests++;
    {
        struct timeval tv = { (time_t)(c->retry.per_try_timeout_ms / 1000),
                              (suseconds_t)((c->retry.per_try_timeout_ms % 1000) * 1000) };
        evtimer_add(p->try_timer, &tv);
    }
    return 0;
}

static void px_attempt(struct proxy *p)
{
    const struct config *c = p->snap->cfg;
    int64_t now = gw_now_ms();
    int picks = 0;

    p->st = PX_ATTEMPT;
    /* Each loop either starts an attempt or excludes one more host, so it
     * ends after at most nhosts + 1 rounds. */
    while (p->attempts < c->retry.max_attempts && picks++ <= (int)c->nhosts) {
        struct host_state *hs;
        size_t k;
        int h = px_pick_host(p);

        if (h < 0)
            break;
        hs = p->snap->hs[h];
        if (p->ntried < PX_MAX_TRIED && !px_was_tried(p, h))
            p->tried[p->ntried++] = h;
        switch (keys_pick(&p->snap->rings[h], p->snap->ks, &hs->rr, now, &k)) {
        case KEYS_ALL_COOLING:
            p->keys_cooling = 1;
            continue;
        case KEYS_NONE:
            p->has_key = 0;
            break;
        case KEYS_PICKED:
            p->has_key = 1;
            p->key = k;
            break;
        }
        if (!breaker_allow(&hs->br, now, &p->ticket))
            continue;                 /* half-open and its probes are out */
        p->ticket_open = 1;
        p->host = h;
        p->attempts++;
        if (px_send(p, h) == 0)
            return;
        breaker_release(&hs->br, p->ticket);
        p->ticket_open = 0;
        px_note_failure(p, FAIL_NETWORK, 0, "cannot start the upstream transfer");
    }
    px_fail_final(p);
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
    const char *cid = http_req_header(p->req, "X-Request-Id");
    uint64_t z;

    if (cid && valid_request_id(cid)) {
        snprintf(p->id, sizeof(p->id), "%s", cid);
        return;
    }
    z = p->gw->id_seed + 0x9e3779b97f4a7c15ULL * ++p->gw->next_id;  /* splitmix64 */
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    z ^= z >> 31;
    snprintf(p->id, sizeof(p->id), "req-%016llx", (unsigned long long)z);
}

static struct proxy *px_new(struct gateway *gw, struct http_req *req,
                            const char *upath, const char *method)
{
    struct proxy *p = calloc(1, sizeof(*p));

    if (p == NULL)
        return NULL;
    p->gw = gw;
    p->req = req;
    p->snap = gw->snap;
    snapshot_ref(p->snap);
    p->host = -1;
    p->fail_host = -1;
    p->method = method;
    p->t_start = gw_now_ms();
    snprintf(p->upath, sizeof(p->upath), "%s", upath);
    snprintf(p->peer, sizeof(p->peer), "%s", http_req_peer(req));
    p->buf = evbuffer_new();
    p->try_timer = evtimer_new(gw->base, px_try_timeout, p);
    p->deadline_timer = evtimer_new(gw->base, px_deadline, p);
    p->backoff_timer = evtimer_new(gw->base, px_backoff_done, p);
    p->next = inflight;
    if (inflight)
        inflight->prev = p;
    inflight = p;
    gw->active++;
    px_make_id(p);
    if (p->buf == NULL || p->try_timer == NULL || p->deadline_timer == NULL
        || p->backoff_timer == NULL) {
        px_free(p);
        return NULL;
    }
    http_req_on_close(req, px_client_gone, p);
    return p;
}

static void px_start(struct proxy *p)
{
    int64_t d = p->snap->cfg->retry.deadline_ms;
    struct timeval tv = { (time_t)(d / 1000), (suseconds_t)((d % 1000) * 1000) };

    evtimer_add(p->deadline_timer, &tv);
    retry_budget_note_request(&p->gw->budget, p->t_start);
    px_attempt(p);
}

void proxy_handle(struct gateway *gw, struct http_req *req)
{
    struct proxy *p;
    json_error_t jerr;
    json_t *doc, *v;

    p = px_new(gw, req, http_req_path(req), "POST");
    if (p == NULL) {
        http_reply_error(req, 500, "server_error", "out_of_memory", "out of memory");
        return;
    }
    p->body = http_req_body(req, &p->body_len);
    doc = json_loadb(p->body, p->body_len, 0, &jerr);
    if (doc == NULL) {
        char msg[300];
        snprintf(msg, sizeof(msg), "invalid JSON body: %s (line %d, column %d)",
                 jerr.text, jerr.line, jerr.column);
        px_error(p, 400, "invalid_request_error", "invalid_json", msg);
        return;
    }
    if (!json_is_object(doc)) {
        json_decref(doc);
        px_error(p, 400, "invalid_request_error", "invalid_json",
                 "the request body must be a JSON object");
        return;
    }
    v = json_object_get(doc, "model");
    if (v && !json_is_string(v)) {
        json_decref(doc);
        px_error(p, 400, "invalid_request_error", "invalid_model",
                 "\"model\" must be a string");
        return;
    }
    if (v && (p->model = strdup(json_string_value(v))) == NULL) {
        json_decref(doc);
        px_error(p, 500, "server_error", "out_of_memory", "out of memory");
        return;
    }
    v = json_object_get(doc, "stream");
    p->want_stream = json_is_true(v);
    v = json_object_get(doc, "user");
    if (json_is_string(v))
        p->user = strdup(json_string_value(v));
    json_decref(doc);
    px_start(p);
}

void proxy_handle_get(struct gateway *gw, struct http_req *req, const char *path)
{
    struct proxy *p = px_new(gw, req, path, "GET");

    if (p == NULL) {
        http_reply_error(req, 500, "server_error", "out_of_memory", "out of memory");
        return;
    }
    px_start(p);
}

void proxy_abort_all(struct gateway *gw)
{
    (void)gw;
    while (inflight) {
        struct proxy *p = inflight;
        px_cancel_attempt(p);
        if (p->st == PX_STREAMING) {
            px_stream_error(p, "gateway shutting down");
            http_stream_end(p->req);
            px_done(p);
        } else {
            px_error(p, 503, "service_unavailable", "shutting_down",
                     "the gateway is shutting down");
        }
    }
}
