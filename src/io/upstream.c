/*
 * upstream.c -- outgoing transfers (see upstream.h): the facade that sends
 * http:// and https:// through upstream_h1.c (host names resolved by the
 * loop's resolver, resolve.c), and what that client does not do
 * through libcurl's multi interface on the libevent loop: proxies from the
 * environment (http_proxy, https_proxy, all_proxy), host names with
 * server.resolver: libc (curl's threaded getaddrinfo), SMTP for alerts, URLs
 * with user info, methods other than GET/POST/PUT/PATCH/DELETE, a CA file
 * that cannot be read, host names while no resolver is set up.
 *
 * The curl glue follows curl's own multi-event.c/hiperfifo.c examples: curl
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

#include "resolve.h"
#include "upstream_int.h"

#define UPSTREAM_MAX_CONNECTS   4096   /* connection cache size */
#define UPSTREAM_EASY_POOL      256    /* idle easy handles kept */

struct curl_xfer;

struct upstream_curl {
    CURLM             *multi;
    CURLSH            *share;       /* TLS sessions, for every easy handle */
    struct event      *timer;
    int                running;
    CURL              *pool[UPSTREAM_EASY_POOL];
    size_t             npool;
    int                in_action;   /* inside curl: removal must wait */
    struct curl_xfer  *cancelled;   /* waiting for removal, see upstream_cancel */
};

struct sock_watch {
    struct upstream *u;
    curl_socket_t    fd;
    struct event    *ev;
};

struct curl_xfer {
    struct upstream_xfer      x;           /* first: what callers hold */
    CURL                     *easy;
    struct curl_slist        *hdrs;
    struct curl_slist        *connect_to; /* tls.server_name */
    char                     *url;        /* ...and the URL rewritten for it */
    int                       raw;         /* not HTTP: no head to wait for */
    struct curl_xfer         *next_cancelled;
    char                      errbuf[CURL_ERROR_SIZE];
};

static void check_done(struct upstream *u);
static void curl_xfer_free(struct curl_xfer *cx);

/* Frees the transfers cancelled while curl was running. */
static void free_cancelled(struct upstream_curl *uc)
{
    while (uc->in_action == 0 && uc->cancelled) {
        struct curl_xfer *cx = uc->cancelled;
        uc->cancelled = cx->next_cancelled;
        curl_xfer_free(cx);
    }
}

/* Runs curl, then frees the transfers cancelled while it ran. */
static void multi_action(struct upstream *u, curl_socket_t fd, int action)
{
    struct upstream_curl *uc = u->curl;

    uc->in_action++;
    curl_multi_socket_action(uc->multi, fd, action, &uc->running);
    uc->in_action--;
    check_done(u);
    free_cancelled(uc);
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
        evtimer_del(u->curl->timer);
        return 0;
    }
    tv.tv_sec = timeout_ms / 1000;
    tv.tv_usec = (timeout_ms % 1000) * 1000;
    evtimer_add(u->curl->timer, &tv);
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
        curl_multi_assign(u->curl->multi, fd, NULL);
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
        curl_multi_assign(u->curl->multi, fd, w);
    } else {
        /* Same socket, new interest: reuse the event (no allocation). */
        event_del(w->ev);
        event_assign(w->ev, u->base, fd, kind, sock_event_cb, u);
    }
    event_add(w->ev, NULL);
    return 0;
}

/* --- response heads, shared with upstream_h1.c ------------------------- */

int upstream_rh_add(struct upstream_xfer *x, const char *name, size_t nlen,
                    const char *value, size_t vlen)
{
    size_t need = x->rh_len + nlen + vlen + 2;

    if (need > x->rh_cap) {
        size_t cap = x->rh_cap ? x->rh_cap * 2 : 512;
        char *p;
        while (cap < need)
            cap *= 2;
        if ((p = realloc(x->rh, cap)) == NULL)
            return -1;
        x->rh = p;
        x->rh_cap = cap;
    }
    memcpy(x->rh + x->rh_len, name, nlen);
    x->rh[x->rh_len + nlen] = '\0';
    memcpy(x->rh + x->rh_len + nlen + 1, value, vlen);
    x->rh[x->rh_len + nlen + 1 + vlen] = '\0';
    x->rh_len = need;
    upstream_rh_note(x, nlen, vlen);
    x->nresp++;
    return 0;
}

/* --- curl transfers ---------------------------------------------------- */

/* tls.server_name: the URL names server_name (SNI, certificate check,
 * Host) and CURLOPT_CONNECT_TO sends the connection to the URL's own
 * host and port. */
static int tls_name(struct curl_xfer *cx, const struct upstream_req *req)
{
    CURLU *cu = curl_url();
    char *host = NULL, *port = NULL, line[600];
    int rc = -1;

    if (cu && curl_url_set(cu, CURLUPART_URL, req->url, 0) == CURLUE_OK
        && curl_url_get(cu, CURLUPART_HOST, &host, 0) == CURLUE_OK
        && curl_url_get(cu, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) == CURLUE_OK
        && curl_url_set(cu, CURLUPART_HOST, req->server_name, 0) == CURLUE_OK
        && curl_url_get(cu, CURLUPART_URL, &cx->url, 0) == CURLUE_OK
        && (size_t)snprintf(line, sizeof(line), "%s:%s:%s:%s", req->server_name, port,
                            host, port) < sizeof(line)
        && (cx->connect_to = curl_slist_append(NULL, line)) != NULL) {
        curl_easy_setopt(cx->easy, CURLOPT_CONNECT_TO, cx->connect_to);
        rc = 0;
    }
    curl_free(host);
    curl_free(port);
    curl_url_cleanup(cu);
    return rc;
}

static void curl_xfer_free(struct curl_xfer *cx)
{
    struct upstream *u = cx->x.u;
    struct upstream_curl *uc = u->curl;

    curl_multi_remove_handle(uc->multi, cx->easy);
    curl_easy_setopt(cx->easy, CURLOPT_SHARE, NULL);
    if (uc->npool < UPSTREAM_EASY_POOL) {
        curl_easy_reset(cx->easy);
        uc->pool[uc->npool++] = cx->easy;
    } else {
        curl_easy_cleanup(cx->easy);
    }
    curl_slist_free_all(cx->hdrs);   /* holds the key: gone with the xfer */
    curl_slist_free_all(cx->connect_to);
    curl_free(cx->url);
    upstream_rh_clear(&cx->x);
    u->active--;
    free(cx);
}

static size_t header_cb(char *buf, size_t size, size_t n, void *userp)
{
    struct curl_xfer *cx = userp;
    struct upstream_xfer *x = &cx->x;
    size_t len = size * n, nlen;
    const char *colon, *end;
    long status = 0;

    if (x->cancelled)
        return 0;
    if (x->head_done)
        return len;                     /* trailers: ignored */
    if (len >= 5 && strncmp(buf, "HTTP/", 5) == 0) {
        upstream_rh_clear(x);           /* a new head (after 1xx) */
        return len;
    }
    if (len <= 2 && (buf[0] == '\r' || buf[0] == '\n')) {
        curl_easy_getinfo(cx->easy, CURLINFO_RESPONSE_CODE, &status);
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
    if (colon == NULL)
        return len;
    nlen = (size_t)(colon - buf);
    colon++;
    while (colon < buf + len && (*colon == ' ' || *colon == '\t'))
        colon++;
    end = buf + len;
    while (end > colon && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' '))
        end--;
    if (upstream_rh_add(x, buf, nlen, colon, (size_t)(end - colon)) < 0)
        return 0;
    return len;
}

/* UPSTREAM_PAUSE means "taken, send no more for now": the data is
 * consumed and the transfer paused from inside the callback, which curl
 * allows (returning CURL_WRITEFUNC_PAUSE would deliver it again). */
static size_t write_cb(char *buf, size_t size, size_t n, void *userp)
{
    struct curl_xfer *cx = userp;
    struct upstream_xfer *x = &cx->x;
    size_t len = size * n;

    if (x->cancelled)
        return 0;
    if (x->cbs->on_data == NULL)
        return len;
    switch (x->cbs->on_data(x->arg, buf, len)) {
    case UPSTREAM_PAUSE:
        if (!x->paused) {
            x->paused = 1;
            curl_easy_pause(cx->easy, CURLPAUSE_RECV);
        }
        return len;
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

    while ((msg = curl_multi_info_read(u->curl->multi, &left)) != NULL) {
        struct curl_xfer *cx;
        enum upstream_result res;

        if (msg->msg != CURLMSG_DONE)
            continue;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&cx);
        if (cx->x.cancelled)
            continue;               /* freed by multi_action */
        res = classify(msg->data.result, cx->x.aborted);
        /* A head that never completed is not a response. */
        if (res == UPSTREAM_OK && !cx->x.head_done && !cx->raw)
            res = UPSTREAM_ERR_PROTOCOL;
        if (cx->x.cbs->on_done)
            cx->x.cbs->on_done(cx->x.arg, res,
                               cx->errbuf[0] ? cx->errbuf
                                   : curl_easy_strerror(msg->data.result));
        curl_xfer_free(cx);
    }
}

static struct curl_xfer *curl_xfer_new(struct upstream *u,
                                       const struct upstream_cbs *cbs,
                                       void *arg, CURL *easy)
{
    struct curl_xfer *cx = calloc(1, sizeof(*cx));

    if (cx == NULL)
        return NULL;
    upstream_xfer_init(&cx->x, u, cbs, arg, UPSTREAM_KIND_CURL);
    cx->easy = easy;
    return cx;
}

static struct upstream_xfer *curl_start(struct upstream *u,
                                        const struct upstream_req *req,
                                        const struct upstream_cbs *cbs,
                                        void *arg)
{
    struct upstream_curl *uc = u->curl;
    CURL *easy = uc->npool ? uc->pool[--uc->npool] : curl_easy_init();
    struct curl_xfer *cx;
    struct curl_slist *l;
    size_t i;

    if (easy == NULL)
        return NULL;
    if ((cx = curl_xfer_new(u, cbs, arg, easy)) == NULL) {
        curl_easy_cleanup(easy);
        return NULL;
    }
    for (i = 0; i < req->nheaders; i++) {
        char line[8192];
        snprintf(line, sizeof(line), "%s: %s", req->headers[i].name,
                 req->headers[i].value);
        l = curl_slist_append(cx->hdrs, line);
        explicit_bzero(line, sizeof(line));     /* may hold an API key */
        if (l == NULL)
            goto fail;
        cx->hdrs = l;
    }
    /* No "Expect: 100-continue" round trip; curl must not add its own. */
    l = curl_slist_append(cx->hdrs, "Expect:");
    if (l == NULL)
        goto fail;
    cx->hdrs = l;

    if (req->server_name && tls_name(cx, req) < 0)
        goto fail;
    curl_easy_setopt(easy, CURLOPT_URL, cx->url ? cx->url : req->url);
    if (req->ca_file)
        curl_easy_setopt(easy, CURLOPT_CAINFO, req->ca_file);
    if (req->insecure) {
        curl_easy_setopt(easy, CURLOPT_SSL_VERIFYPEER, 0L);
        curl_easy_setopt(easy, CURLOPT_SSL_VERIFYHOST, 0L);
    }
    curl_easy_setopt(easy, CURLOPT_PRIVATE, cx);
    curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, cx->errbuf);
    if (uc->share)
        curl_easy_setopt(easy, CURLOPT_SHARE, uc->share);
    curl_easy_setopt(easy, CURLOPT_HTTPHEADER, cx->hdrs);
    curl_easy_setopt(easy, CURLOPT_HEADERFUNCTION, header_cb);
    curl_easy_setopt(easy, CURLOPT_HEADERDATA, cx);
    curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, write_cb);
    curl_easy_setopt(easy, CURLOPT_WRITEDATA, cx);
    curl_easy_setopt(easy, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(easy, CURLOPT_TCP_NODELAY, 1L);
    curl_easy_setopt(easy, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT_MS,
                     (long)req->connect_timeout_ms);
    curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, (long)req->total_timeout_ms);
    if (strcmp(req->method, "GET") != 0) {
        /* POST, or DELETE/PUT/PATCH sent the same way under their name. */
        curl_easy_setopt(easy, CURLOPT_POST, 1L);
        curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE_LARGE,
                         (curl_off_t)req->body_len);
        curl_easy_setopt(easy, CURLOPT_POSTFIELDS, req->body ? req->body : "");
        if (strcmp(req->method, "POST") != 0)
            curl_easy_setopt(easy, CURLOPT_CUSTOMREQUEST, req->method);
    } else {
        curl_easy_setopt(easy, CURLOPT_HTTPGET, 1L);
    }
    if (curl_multi_add_handle(uc->multi, easy) != CURLM_OK)
        goto fail;
    u->active++;
    return &cx->x;

fail:
    curl_slist_free_all(cx->hdrs);
    curl_slist_free_all(cx->connect_to);
    curl_free(cx->url);
    curl_easy_cleanup(easy);
    free(cx);
    return NULL;
}

/* --- the facade ---------------------------------------------------------- */

struct upstream_xfer *upstream_start(struct upstream *u,
                                     const struct upstream_req *req,
                                     const struct upstream_cbs *cbs,
                                     void *arg)
{
    if (u->h1) {
        int mine = 0;
        struct upstream_xfer *x = h1_start(u, req, cbs, arg, &mine);
        if (mine)
            return x;
    }
    return curl_start(u, req, cbs, arg);
}

struct upstream_xfer *upstream_start_easy(struct upstream *u, void *easy,
                                          const struct upstream_cbs *cbs,
                                          void *arg)
{
    struct curl_xfer *cx = curl_xfer_new(u, cbs, arg, easy);

    if (cx == NULL) {
        curl_easy_cleanup(easy);
        return NULL;
    }
    cx->raw = 1;
    curl_easy_setopt(easy, CURLOPT_PRIVATE, cx);
    curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, cx->errbuf);
    if (curl_multi_add_handle(u->curl->multi, easy) != CURLM_OK) {
        curl_easy_cleanup(easy);
        free(cx);
        return NULL;
    }
    u->active++;
    return &cx->x;
}

void upstream_pause(struct upstream_xfer *x)
{
    if (x->kind == UPSTREAM_KIND_H1) {
        h1_pause(x);
        return;
    }
    if (!x->paused) {
        x->paused = 1;
        curl_easy_pause(((struct curl_xfer *)x)->easy, CURLPAUSE_RECV);
    }
}

/* May call on_data right away with the data held back. */
void upstream_resume(struct upstream_xfer *x)
{
    struct upstream_curl *uc = x->u->curl;

    if (x->kind == UPSTREAM_KIND_H1) {
        h1_resume(x);
        return;
    }
    if (x->paused) {
        x->paused = 0;
        uc->in_action++;
        curl_easy_pause(((struct curl_xfer *)x)->easy, CURLPAUSE_CONT);
        uc->in_action--;
        free_cancelled(uc);
    }
}

/* Inside a curl callback a handle cannot leave the multi handle
 * (CURLM_RECURSIVE_API_CALL): the transfer then goes quiet at once and is
 * removed as soon as curl returns, in the same loop turn. */
void upstream_cancel(struct upstream_xfer *x)
{
    struct curl_xfer *cx = (struct curl_xfer *)x;
    struct upstream_curl *uc;

    if (x == NULL || x->cancelled)
        return;
    if (x->kind == UPSTREAM_KIND_H1) {
        h1_cancel(x);
        return;
    }
    uc = x->u->curl;
    if (uc->in_action) {
        x->cancelled = 1;
        cx->next_cancelled = uc->cancelled;
        uc->cancelled = cx;
        return;
    }
    curl_xfer_free(cx);
}

/* Walks the "name\0value\0" pairs; returns the value of pair i. */
static const char *rh_at(const struct upstream_xfer *x, size_t i,
                         const char **name)
{
    const char *p = x->rh;
    size_t j;

    for (j = 0; j < i; j++) {
        p += upstream_rh_strlen(x, 2 * j, p) + 1;
        p += upstream_rh_strlen(x, 2 * j + 1, p) + 1;
    }
    *name = p;
    return p + upstream_rh_strlen(x, 2 * i, p) + 1;
}

const char *upstream_resp_header(const struct upstream_xfer *x, const char *name)
{
    const char *p = x->rh;
    size_t i, n = strlen(name), k;

    for (i = 0; i < x->nresp; i++) {
        const char *value = p + (k = upstream_rh_strlen(x, 2 * i, p)) + 1;
        if (k == n && strcasecmp(p, name) == 0)     /* the length first */
            return value;
        p = value + upstream_rh_strlen(x, 2 * i + 1, value) + 1;
    }
    return NULL;
}

int upstream_ending(const struct upstream_xfer *x)
{
    return x->ending;
}

size_t upstream_resp_nheaders(const struct upstream_xfer *x)
{
    return x->nresp;
}

void upstream_resp_header_at(const struct upstream_xfer *x, size_t i,
                             const char **name, const char **value)
{
    *value = rh_at(x, i, name);
}

int upstream_resp_header_next(const struct upstream_xfer *x, struct upstream_rh_iter *it,
                              const char **name, size_t *nlen, const char **value)
{
    const char *p;

    if (it->i >= x->nresp)
        return 0;
    p = x->rh + it->at;
    *name = p;
    *nlen = upstream_rh_strlen(x, 2 * it->i, p);
    *value = p + *nlen + 1;
    it->at = (size_t)(*value - x->rh) + upstream_rh_strlen(x, 2 * it->i + 1, *value) + 1;
    it->i++;
    return 1;
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

/* curl reads these for plain http://; with one set, every transfer goes
 * through curl so that the proxy is used. */
static int proxy_in_env(void)
{
    static const char *const vars[] = { "http_proxy", "all_proxy", "ALL_PROXY", NULL };

    return upstream_env_set(vars);
}

struct upstream *upstream_new(struct event_base *base)
{
    struct upstream *u = calloc(1, sizeof(*u));
    struct upstream_curl *uc;

    if (u == NULL)
        return NULL;
    u->base = base;
    if ((u->curl = uc = calloc(1, sizeof(*uc))) == NULL) {
        free(u);
        return NULL;
    }
    uc->multi = curl_multi_init();
    /* Without a share each pooled easy handle keeps its own TLS sessions,
     * so a new connection resumed only if it happened to get the handle
     * that had one (bench: 42 of 78 upstream handshakes). One loop uses
     * it: no lock callbacks. */
    if ((uc->share = curl_share_init()) != NULL
        && curl_share_setopt(uc->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION) != CURLSHE_OK) {
        curl_share_cleanup(uc->share);
        uc->share = NULL;
    }
    uc->timer = evtimer_new(base, timer_event_cb, u);
    if (!proxy_in_env())
        u->h1 = h1_pool_new(base);
    if (uc->multi == NULL || uc->timer == NULL) {
        upstream_free(u);
        return NULL;
    }
    curl_multi_setopt(uc->multi, CURLMOPT_SOCKETFUNCTION, multi_sock_cb);
    curl_multi_setopt(uc->multi, CURLMOPT_SOCKETDATA, u);
    curl_multi_setopt(uc->multi, CURLMOPT_TIMERFUNCTION, multi_timer_cb);
    curl_multi_setopt(uc->multi, CURLMOPT_TIMERDATA, u);
    curl_multi_setopt(uc->multi, CURLMOPT_MAXCONNECTS, (long)UPSTREAM_MAX_CONNECTS);
    return u;
}

int upstream_set_resolver(struct upstream *u, const struct resolve_conf *conf,
                          char *err, size_t errlen)
{
    if (u->h1 == NULL)
        return 0;                       /* a proxy in the environment: all via curl */
    u->names_curl = conf == NULL;
    if (conf == NULL)
        return 0;
    if (u->dns)
        return resolver_configure(u->dns, conf, err, errlen);
    u->dns = resolver_new(u->base, conf, err, errlen);
    return u->dns ? 0 : -1;
}

size_t upstream_active(const struct upstream *u)
{
    return u->active;
}

void upstream_free(struct upstream *u)
{
    struct upstream_curl *uc;
    size_t i;

    if (u == NULL)
        return;
    uc = u->curl;
    /* Transfers still registered belong to requests being torn down;
     * their owners cancel them first. Idle handles go here. */
    while (uc->cancelled) {
        struct curl_xfer *cx = uc->cancelled;
        uc->cancelled = cx->next_cancelled;
        curl_xfer_free(cx);
    }
    for (i = 0; i < uc->npool; i++)
        curl_easy_cleanup(uc->pool[i]);
    if (uc->multi)
        curl_multi_cleanup(uc->multi);
    if (uc->share)
        curl_share_cleanup(uc->share);  /* after every easy handle is gone */
    if (uc->timer)
        event_free(uc->timer);
    free(uc);
    h1_pool_free(u->h1);
    resolver_free(u->dns);              /* after h1: its transfers are gone */
    free(u);
}
