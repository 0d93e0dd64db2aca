/*
 * upstream.c -- libcurl multi on the libevent loop (see upstream.h).
 *
 * The glue follows curl's own multi-event.c/hiperfifo.c examples: curl
 * tells us which sockets to watch (CURLMOPT_SOCKETFUNCTION) and when to
 * wake it (CURLMOPT_TIMERFUNCTION); libevent calls back into
 * curl_multi_socket_action(); finished transfers are collected from
 * curl_multi_info_read() and reported through on_done.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <curl/curl.h>
#include <event2/event.h>

#include "upstream.h"

#define UPSTREAM_MAX_CONNECTS   4096   /* connection cache size */
#define UPSTREAM_MAX_RESP_HDRS  64
#define UPSTREAM_EASY_POOL      256    /* idle easy handles kept */

struct upstream {
    struct event_base *base;
    CURLM             *multi;
    struct event      *timer;
    int                running;
    size_t             active;
    CURL              *pool[UPSTREAM_EASY_POOL];
    size_t             npool;
    int                in_action;   /* inside curl: removal must wait */
    struct upstream_xfer *cancelled;/* waiting for removal, see upstream_cancel */
};

struct sock_watch {
    struct upstream *u;
    curl_socket_t    fd;
    struct event    *ev;
};

struct upstream_xfer {
    struct upstream          *u;
    CURL                     *easy;
    struct curl_slist        *hdrs;
    const struct upstream_cbs *cbs;
    void                     *arg;
    int                       head_done;   /* final head seen */
    int                       raw;         /* not HTTP: no head to wait for */
    int                       cancelled;   /* owner is gone: no more callbacks */
    struct upstream_xfer     *next_cancelled;
    int                       aborted;
    int                       paused;
    size_t                    nresp;
    char                     *resp_name[UPSTREAM_MAX_RESP_HDRS];
    char                     *resp_value[UPSTREAM_MAX_RESP_HDRS];
    char                      errbuf[CURL_ERROR_SIZE];
};

static void check_done(struct upstream *u);
static void xfer_free(struct upstream_xfer *x);

/* Frees the transfers cancelled while curl was running. */
static void free_cancelled(struct upstream *u)
{
    while (u->in_action == 0 && u->cancelled) {
        struct upstream_xfer *x = u->cancelled;
        u->cancelled = x->next_cancelled;
        xfer_free(x);
    }
}

/* Runs curl, then frees the transfers cancelled while it ran. */
static void multi_action(struct upstream *u, curl_socket_t fd, int action)
{
    u->in_action++;
    curl_multi_socket_action(u->multi, fd, action, &u->running);
    u->in_action--;
    check_done(u);
    free_cancelled(u);
}

/* --- libevent <-> curl glue ------------------------------------------ */

static void sock_event_cb(evutil_socket_t fd, short kind, void *arg)
{
    struct upstream *u = arg;
    int action = (kind & EV_READ ? CURL_CSELECT_IN : 0)
               | (kind & EV_WRITE ? CURL_CSELECT_OUT : 0);

    multi_action(u, fd, action);
}

static void timer_event_cb(evutil_socket_t fd, short kind, void *arg)
{
    struct upstream *u = arg;

    (void)fd;
    (void)kind;
    multi_action(u, CURL_SOCKET_TIMEOUT, 0);
}

static int multi_timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
    struct upstream *u = userp;
    struct timeval tv;

    (void)multi;
    if (timeout_ms < 0) {
        evtimer_del(u->timer);
        return 0;
    }
    tv.tv_sec = timeout_ms / 1000;
    tv.tv_usec = (timeout_ms % 1000) * 1000;
    evtimer_add(u->timer, &tv);
    return 0;
}

static int multi_sock_cb(CURL *easy, curl_socket_t fd, int what, void *userp,
                         void *socketp)
{
    struct upstream *u = userp;
    struct sock_watch *w = socketp;
    short kind;

    (void)easy;
    if (what == CURL_POLL_REMOVE) {
        if (w) {
            event_free(w->ev);
            free(w);
        }
        curl_multi_assign(u->multi, fd, NULL);
        return 0;
    }
    kind = EV_PERSIST | (what & CURL_POLL_IN ? EV_READ : 0)
                      | (what & CURL_POLL_OUT ? EV_WRITE : 0);
    if (w == NULL) {
        w = calloc(1, sizeof(*w));
        if (w == NULL)
            return -1;
        w->u = u;
        w->fd = fd;
        w->ev = event_new(u->base, fd, kind, sock_event_cb, u);
        if (w->ev == NULL) {
            free(w);
            return -1;
        }
        curl_multi_assign(u->multi, fd, w);
    } else {
        /* Same socket, new interest: reuse the event (no allocation). */
        event_del(w->ev);
        event_assign(w->ev, u->base, fd, kind, sock_event_cb, u);
    }
    event_add(w->ev, NULL);
    return 0;
}

/* --- transfers ------------------------------------------------------- */

static void resp_headers_clear(struct upstream_xfer *x)
{
    size_t i;

    for (i = 0; i < x->nresp; i++) {
        free(x->resp_name[i]);
        free(x->resp_value[i]);
    }
    x->nresp = 0;
}

static void xfer_free(struct upstream_xfer *x)
{
    struct upstream *u = x->u;

    curl_multi_remove_handle(u->multi, x->easy);
    if (u->npool < UPSTREAM_EASY_POOL) {
        curl_easy_reset(x->easy);
        u->pool[u->npool++] = x->easy;
    } else {
        curl_easy_cleanup(x->easy);
    }
    curl_slist_free_all(x->hdrs);   /* holds the key: gone with the xfer */
    resp_headers_clear(x);
    u->active--;
    free(x);
}

static size_t header_cb(char *buf, size_t size, size_t n, void *userp)
{
    struct upstream_xfer *x = userp;
    size_t len = size * n, nlen;
    char *colon;
    long status = 0;

    if (x->cancelled)
        return 0;
    if (x->head_done)
        return len;                     /* trailers: ignored */
    if (len >= 5 && strncmp(buf, "HTTP/", 5) == 0) {
        resp_headers_clear(x);          /* a new head (after 1xx) */
        return len;
    }
    if (len <= 2 && (buf[0] == '\r' || buf[0] == '\n')) {
        curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &status);
        if (status >= 100 && status < 200)
            return len;
        x->head_done = 1;
        if (x->cbs->on_headers
            && x->cbs->on_headers(x->arg, x, (int)status) == UPSTREAM_ABORT) {
            x->aborted = 1;
            return 0;
        }
        return len;
    }
    colon = memchr(buf, ':', len);
    if (colon == NULL || x->nresp == UPSTREAM_MAX_RESP_HDRS)
        return len;
    nlen = (size_t)(colon - buf);
    colon++;
    while (colon < buf + len && (*colon == ' ' || *colon == '\t'))
        colon++;
    {
        const char *end = buf + len;
        while (end > colon && (end[-1] == '\r' || end[-1] == '\n'
                               || end[-1] == ' '))
            end--;
        x->resp_name[x->nresp] = strndup(buf, nlen);
        x->resp_value[x->nresp] = strndup(colon, (size_t)(end - colon));
        if (x->resp_name[x->nresp] == NULL || x->resp_value[x->nresp] == NULL) {
            free(x->resp_name[x->nresp]);
            free(x->resp_value[x->nresp]);
            return 0;
        }
        x->nresp++;
    }
    return len;
}

static size_t write_cb(char *buf, size_t size, size_t n, void *userp)
{
    struct upstream_xfer *x = userp;
    size_t len = size * n;

    if (x->cancelled)
        return 0;
    if (x->cbs->on_data == NULL)
        return len;
    switch (x->cbs->on_data(x->arg, buf, len)) {
    case UPSTREAM_PAUSE:
        x->paused = 1;
        return CURL_WRITEFUNC_PAUSE;
    case UPSTREAM_ABORT:
        x->aborted = 1;
        return 0;
    default:
        return len;
    }
}

static enum upstream_result classify(CURLcode rc, int aborted)
{
    if (aborted)
        return UPSTREAM_ERR_ABORTED;
    switch (rc) {
    case CURLE_OK:
        return UPSTREAM_OK;
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
    case CURLE_COULDNT_CONNECT:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
        return UPSTREAM_ERR_CONNECT;
    case CURLE_OPERATION_TIMEDOUT:
        return UPSTREAM_ERR_TIMEOUT;
    default:
        return UPSTREAM_ERR_PROTOCOL;
    }
}

static void check_done(struct upstream *u)
{
    CURLMsg *msg;
    int left;

    while ((msg = curl_multi_info_read(u->multi, &left)) != NULL) {
        struct upstream_xfer *x;
        enum upstream_result res;

        if (msg->msg != CURLMSG_DONE)
            continue;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&x);
        if (x->cancelled)
            continue;               /* freed by multi_action */
        res = classify(msg->data.result, x->aborted);
        /* A head that never completed is not a response. */
        if (res == UPSTREAM_OK && !x->head_done && !x->raw)
            res = UPSTREAM_ERR_PROTOCOL;
        if (x->cbs->on_done)
            x->cbs->on_done(x->arg, res,
                            x->errbuf[0] ? x->errbuf
                                         : curl_easy_strerror(msg->data.result));
        xfer_free(x);
    }
}

struct upstream_xfer *upstream_start(struct upstream *u,
                                     const struct upstream_req *req,
                                     const struct upstream_cbs *cbs,
                                     void *arg)
{
    struct upstream_xfer *x = calloc(1, sizeof(*x));
    struct curl_slist *l;
    size_t i;

    if (x == NULL)
        return NULL;
    x->u = u;
    x->cbs = cbs;
    x->arg = arg;
    x->easy = u->npool ? u->pool[--u->npool] : curl_easy_init();
    if (x->easy == NULL) {
        free(x);
        return NULL;
    }
    for (i = 0; i < req->nheaders; i++) {
        char line[8192];
        snprintf(line, sizeof(line), "%s: %s", req->headers[i].name,
                 req->headers[i].value);
        l = curl_slist_append(x->hdrs, line);
        explicit_bzero(line, sizeof(line));     /* may hold an API key */
        if (l == NULL)
            goto fail;
        x->hdrs = l;
    }
    /* No "Expect: 100-continue" round trip; curl must not add its own. */
    l = curl_slist_append(x->hdrs, "Expect:");
    if (l == NULL)
        goto fail;
    x->hdrs = l;

    curl_easy_setopt(x->easy, CURLOPT_URL, req->url);
    curl_easy_setopt(x->easy, CURLOPT_PRIVATE, x);
    curl_easy_setopt(x->easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(x->easy, CURLOPT_ERRORBUFFER, x->errbuf);
    curl_easy_setopt(x->easy, CURLOPT_HTTPHEADER, x->hdrs);
    curl_easy_setopt(x->easy, CURLOPT_HEADERFUNCTION, header_cb);
    curl_easy_setopt(x->easy, CURLOPT_HEADERDATA, x);
    curl_easy_setopt(x->easy, CURLOPT_WRITEFUNCTION, write_cb);
    curl_easy_setopt(x->easy, CURLOPT_WRITEDATA, x);
    curl_easy_setopt(x->easy, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(x->easy, CURLOPT_TCP_NODELAY, 1L);
    curl_easy_setopt(x->easy, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(x->easy, CURLOPT_CONNECTTIMEOUT_MS,
                     (long)req->connect_timeout_ms);
    curl_easy_setopt(x->easy, CURLOPT_TIMEOUT_MS, (long)req->total_timeout_ms);
    if (strcmp(req->method, "POST") == 0) {
        curl_easy_setopt(x->easy, CURLOPT_POST, 1L);
        curl_easy_setopt(x->easy, CURLOPT_POSTFIELDSIZE_LARGE,
                         (curl_off_t)req->body_len);
        curl_easy_setopt(x->easy, CURLOPT_POSTFIELDS, req->body);
    } else {
        curl_easy_setopt(x->easy, CURLOPT_HTTPGET, 1L);
    }
    if (curl_multi_add_handle(u->multi, x->easy) != CURLM_OK)
        goto fail;
    u->active++;
    return x;

fail:
    curl_slist_free_all(x->hdrs);
    curl_easy_cleanup(x->easy);
    free(x);
    return NULL;
}

struct upstream_xfer *upstream_start_easy(struct upstream *u, void *easy,
                                          const struct upstream_cbs *cbs,
                                          void *arg)
{
    struct upstream_xfer *x = calloc(1, sizeof(*x));

    if (x == NULL) {
        curl_easy_cleanup(easy);
        return NULL;
    }
    x->u = u;
    x->cbs = cbs;
    x->arg = arg;
    x->raw = 1;
    x->easy = easy;
    curl_easy_setopt(x->easy, CURLOPT_PRIVATE, x);
    curl_easy_setopt(x->easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(x->easy, CURLOPT_ERRORBUFFER, x->errbuf);
    if (curl_multi_add_handle(u->multi, x->easy) != CURLM_OK) {
        curl_easy_cleanup(x->easy);
        free(x);
        return NULL;
    }
    u->active++;
    return x;
}

void upstream_pause(struct upstream_xfer *x)
{
    if (!x->paused) {
        x->paused = 1;
        curl_easy_pause(x->easy, CURLPAUSE_RECV);
    }
}

/* May call on_data right away with the data curl held back. */
void upstream_resume(struct upstream_xfer *x)
{
    if (x->paused) {
        x->paused = 0;
        struct upstream *u = x->u;
        u->in_action++;
        curl_easy_pause(x->easy, CURLPAUSE_CONT);
        u->in_action--;
        free_cancelled(u);
    }
}

/* Inside a curl callback a handle cannot leave the multi handle
 * (CURLM_RECURSIVE_API_CALL): the transfer then goes quiet at once and is
 * removed as soon as curl returns, in the same loop turn. */
void upstream_cancel(struct upstream_xfer *x)
{
    if (x == NULL || x->cancelled)
        return;
    if (x->u->in_action) {
        x->cancelled = 1;
        x->next_cancelled = x->u->cancelled;
        x->u->cancelled = x;
        return;
    }
    xfer_free(x);
}

const char *upstream_resp_header(const struct upstream_xfer *x, const char *name)
{
    size_t i;

    for (i = 0; i < x->nresp; i++)
        if (strcasecmp(x->resp_name[i], name) == 0)
            return x->resp_value[i];
    return NULL;
}

size_t upstream_resp_nheaders(const struct upstream_xfer *x)
{
    return x->nresp;
}

void upstream_resp_header_at(const struct upstream_xfer *x, size_t i,
                             const char **name, const char **value)
{
    *name = x->resp_name[i];
    *value = x->resp_value[i];
}

const char *upstream_result_name(enum upstream_result r)
{
    switch (r) {
    case UPSTREAM_OK:           return "ok";
    case UPSTREAM_ERR_CONNECT:  return "connect_error";
    case UPSTREAM_ERR_TIMEOUT:  return "timeout";
    case UPSTREAM_ERR_PROTOCOL: return "protocol_error";
    case UPSTREAM_ERR_ABORTED:  return "aborted";
    }
    return "unknown";
}

/* --- lifecycle ------------------------------------------------------- */

struct upstream *upstream_new(struct event_base *base)
{
    struct upstream *u = calloc(1, sizeof(*u));

    if (u == NULL)
        return NULL;
    u->base = base;
    u->multi = curl_multi_init();
    u->timer = evtimer_new(base, timer_event_cb, u);
    if (u->multi == NULL || u->timer == NULL) {
        upstream_free(u);
        return NULL;
    }
    curl_multi_setopt(u->multi, CURLMOPT_SOCKETFUNCTION, multi_sock_cb);
    curl_multi_setopt(u->multi, CURLMOPT_SOCKETDATA, u);
    curl_multi_setopt(u->multi, CURLMOPT_TIMERFUNCTION, multi_timer_cb);
    curl_multi_setopt(u->multi, CURLMOPT_TIMERDATA, u);
    curl_multi_setopt(u->multi, CURLMOPT_MAXCONNECTS, (long)UPSTREAM_MAX_CONNECTS);
    return u;
}

size_t upstream_active(const struct upstream *u)
{
    return u->active;
}

void upstream_free(struct upstream *u)
{
    size_t i;

    if (u == NULL)
        return;
    /* Transfers still registered belong to requests being torn down;
     * their owners cancel them first. Idle handles go here. */
    while (u->cancelled) {
        struct upstream_xfer *x = u->cancelled;
        u->cancelled = x->next_cancelled;
        xfer_free(x);
    }
    for (i = 0; i < u->npool; i++)
        curl_easy_cleanup(u->pool[i]);
    if (u->multi)
        curl_multi_cleanup(u->multi);
    if (u->timer)
        event_free(u->timer);
    free(u);
}
