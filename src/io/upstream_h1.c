/*
 * upstream_h1.c -- a small HTTP/1.1 client for plain http:// upstreams
 * given by IP address, on bufferevents, with a keep-alive pool.
 *
 * Why: libcurl costs about half of a proxied request's CPU (its socket
 * callback churns epoll registrations, it polls pooled connections, builds
 * and parses heads in general-purpose ways) and 20 KB per open stream.
 * Upstreams on a LAN or loopback are mostly plain HTTP/1.1, so those go
 * here: nginx's model. curl keeps https://, host names (its threaded
 * resolver), proxies from the environment and SMTP (upstream.c).
 *
 * A transfer writes one prebuilt request head plus a reference to the
 * caller's body, parses the response head in place into the shared
 * "name\0value\0" form, and passes the body on as it comes: Content-Length,
 * chunked (decoded, trailers dropped) or up to the close. When a response
 * ends cleanly the connection goes back to the idle pool (keyed by the
 * peer's address, LRU-capped, closed after H1_IDLE_TIMEOUT_S or when the
 * peer speaks or hangs up). As curl does, a request that meets a dead
 * pooled connection before any response byte is sent again once on a new
 * connection.
 *
 * Callbacks run with the transfer marked busy: upstream_cancel() on it
 * then only marks it and the transfer is freed when the callback returns.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/event_struct.h>

#include "upstream_int.h"

#define H1_MAX_HEAD        (64 * 1024)   /* response head */
#define H1_MAX_CHUNK_LINE  1024
#define H1_MAX_IDLE        4096          /* pooled connections, all peers */
#define H1_IDLE_TIMEOUT_S  60
#define H1_BUCKETS         4096          /* power of two */

struct h1_conn {
    struct h1_pool     *pool;
    struct bufferevent *bev;
    struct h1_xfer     *x;              /* the transfer on it; NULL when idle */
    uint32_t            hash;
    struct sockaddr_storage sa;         /* the peer: the pool's key */
    socklen_t           salen;
    struct h1_conn     *bnext, *bprev;  /* idle: same bucket */
    struct h1_conn     *lnext, *lprev;  /* idle: least recently used last */
};

struct h1_pool {
    struct event_base *base;
    struct h1_conn    *bucket[H1_BUCKETS];
    struct h1_conn    *lru_head, *lru_tail;
    size_t             nidle;
};

enum h1_state {
    H1_HEAD = 0,      /* waiting for the (final) response head */
    H1_BODY_LEN,      /* Content-Length bytes left in `left` */
    H1_BODY_CLOSE,    /* body until the peer closes */
    H1_CHUNK_SIZE,
    H1_CHUNK_DATA,    /* `left` bytes of this chunk */
    H1_CHUNK_CRLF,
    H1_TRAILERS,
};

struct h1_xfer {
    struct upstream_xfer    x;          /* first: what callers hold */
    struct h1_conn         *conn;
    struct event            timer;      /* connect / total timeout */
    struct sockaddr_storage sa;
    socklen_t               salen;
    char                   *head;       /* request head; holds the key: zeroed */
    size_t                  head_len;
    const char             *body;       /* the caller's: kept alive until done */
    size_t                  body_len;
    int64_t                 t_start_ms;
    int64_t                 connect_ms, total_ms;
    uint64_t                left;
    unsigned char           st;         /* enum h1_state */
    unsigned char           busy;       /* inside a callback */
    unsigned char           connected;
    unsigned char           reused;     /* the connection came from the pool */
    unsigned char           resent;     /* already sent again once */
    unsigned char           got_bytes;  /* a response byte arrived */
    unsigned char           keepalive;  /* the peer lets us reuse it */
};

static void conn_read_cb(struct bufferevent *bev, void *arg);
static void conn_event_cb(struct bufferevent *bev, short what, void *arg);
static void h1_process(struct h1_xfer *hx);

static int64_t mono_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* --- the idle pool ----------------------------------------------------- */

static uint32_t sa_hash(const struct sockaddr_storage *sa, socklen_t len)
{
    const unsigned char *p = (const unsigned char *)sa;
    uint32_t h = 2166136261u;
    socklen_t i;

    for (i = 0; i < len; i++)
        h = (h ^ p[i]) * 16777619u;
    return h;
}

static void conn_close(struct h1_conn *c)
{
    bufferevent_free(c->bev);
    free(c);
}

static void pool_unlink(struct h1_pool *p, struct h1_conn *c)
{
    struct h1_conn **b = &p->bucket[c->hash & (H1_BUCKETS - 1)];

    if (c->bprev)
        c->bprev->bnext = c->bnext;
    else
        *b = c->bnext;
    if (c->bnext)
        c->bnext->bprev = c->bprev;
    if (c->lprev)
        c->lprev->lnext = c->lnext;
    else
        p->lru_head = c->lnext;
    if (c->lnext)
        c->lnext->lprev = c->lprev;
    else
        p->lru_tail = c->lprev;
    c->bnext = c->bprev = c->lnext = c->lprev = NULL;
    p->nidle--;
}

static void idle_read_cb(struct bufferevent *bev, void *arg)
{
    struct h1_conn *c = arg;

    (void)bev;
    pool_unlink(c->pool, c);    /* an idle peer has nothing to say */
    conn_close(c);
}

static void idle_event_cb(struct bufferevent *bev, short what, void *arg)
{
    (void)what;
    idle_read_cb(bev, arg);     /* closed, reset or timed out */
}

static void pool_put(struct h1_pool *p, struct h1_conn *c)
{
    struct h1_conn **b = &p->bucket[c->hash & (H1_BUCKETS - 1)];
    struct timeval idle = { H1_IDLE_TIMEOUT_S, 0 };

    if (p->nidle == H1_MAX_IDLE) {
        struct h1_conn *old = p->lru_tail;
        pool_unlink(p, old);
        conn_close(old);
    }
    c->x = NULL;
    bufferevent_setcb(c->bev, idle_read_cb, NULL, idle_event_cb, c);
    bufferevent_enable(c->bev, EV_READ);
    bufferevent_set_timeouts(c->bev, &idle, NULL);
    c->bnext = *b;
    if (*b)
        (*b)->bprev = c;
    *b = c;
    c->lnext = p->lru_head;
    if (p->lru_head)
        p->lru_head->lprev = c;
    else
        p->lru_tail = c;
    p->lru_head = c;
    p->nidle++;
}

static struct h1_conn *pool_get(struct h1_pool *p, const struct sockaddr_storage *sa,
                                socklen_t salen, uint32_t hash)
{
    struct h1_conn *c;

    for (c = p->bucket[hash & (H1_BUCKETS - 1)]; c; c = c->bnext)
        if (c->hash == hash && c->salen == salen && memcmp(&c->sa, sa, salen) == 0) {
            pool_unlink(p, c);
            bufferevent_set_timeouts(c->bev, NULL, NULL);
            return c;
        }
    return NULL;
}

struct h1_pool *h1_pool_new(struct event_base *base)
{
    struct h1_pool *p = calloc(1, sizeof(*p));

    if (p)
        p->base = base;
    return p;
}

void h1_pool_free(struct h1_pool *p)
{
    if (p == NULL)
        return;
    while (p->lru_head) {
        struct h1_conn *c = p->lru_head;
        pool_unlink(p, c);
        conn_close(c);
    }
    free(p);
}

size_t h1_idle_count(const struct h1_pool *p)
{
    return p ? p->nidle : 0;
}

/* --- URLs and request heads --------------------------------------------- */

/* http://IP[:port][/path]: fills the peer, the authority and the target.
 * 0 when the URL is not one for this client. */
static int parse_url(const char *url, struct sockaddr_storage *sa, socklen_t *salen,
                     const char **auth, size_t *auth_len, const char **path)
{
    const char *h = url + 7, *hend, *p, *port = NULL;
    char host[64];
    unsigned long pn = 80;

    memset(sa, 0, sizeof(*sa));
    if (strncasecmp(url, "http://", 7) != 0)
        return 0;
    p = h + strcspn(h, "/?#");
    if (memchr(h, '@', (size_t)(p - h)))
        return 0;                               /* userinfo: curl's job */
    if (*h == '[') {
        hend = memchr(h, ']', (size_t)(p - h));
        if (hend == NULL)
            return 0;
        if (hend + 1 < p) {
            if (hend[1] != ':')
                return 0;
            port = hend + 2;
        }
        h++;
    } else {
        hend = memchr(h, ':', (size_t)(p - h));
        if (hend)
            port = hend + 1;
        else
            hend = p;
    }
    if (hend == h || (size_t)(hend - h) >= sizeof(host))
        return 0;
    memcpy(host, h, (size_t)(hend - h));
    host[hend - h] = '\0';
    if (port && port < p) {
        char *e;
        pn = strtoul(port, &e, 10);
        if (e != p || pn == 0 || pn > 65535)
            return 0;
    }
    if (inet_pton(AF_INET, host, &((struct sockaddr_in *)sa)->sin_addr) == 1) {
        struct sockaddr_in *s4 = (struct sockaddr_in *)sa;
        s4->sin_family = AF_INET;
        s4->sin_port = htons((uint16_t)pn);
        *salen = sizeof(*s4);
    } else if (inet_pton(AF_INET6, host, &((struct sockaddr_in6 *)sa)->sin6_addr) == 1) {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)sa;
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons((uint16_t)pn);
        *salen = sizeof(*s6);
    } else {
        return 0;                               /* a name: curl resolves it */
    }
    if (*p == '#')
        return 0;
    *auth = url + 7;
    *auth_len = (size_t)(p - (url + 7));
    *path = p;
    return 1;
}

static int has_crlf(const char *s)
{
    return strpbrk(s, "\r\n") != NULL;
}

/* Methods sent with a body (and its Content-Length): what infergate
 * proxies besides GET (POST, DELETE, PUT, PATCH). */
static int h1_has_body(const char *method)
{
    return strcmp(method, "POST") == 0 || strcmp(method, "DELETE") == 0
           || strcmp(method, "PUT") == 0 || strcmp(method, "PATCH") == 0;
}

/* "METHOD target HTTP/1.1" + Host + the caller's headers + Content-Length,
 * in one block. NULL on a header that would break the head. */
static char *build_head(const struct upstream_req *req, const char *auth,
                        size_t auth_len, const char *path, size_t *lenp)
{
    size_t mlen = strlen(req->method), plen = strlen(path), len, i;
    int has_host = 0;
    char clen[32] = "";
    char *buf, *w;

    if (has_crlf(req->method) || has_crlf(path) || strchr(path, ' '))
        return NULL;
    len = mlen + 1 + 1 + plen + 11;                     /* " /" " HTTP/1.1\r\n" */
    for (i = 0; i < req->nheaders; i++) {
        const struct upstream_header *hd = &req->headers[i];
        if (has_crlf(hd->name) || has_crlf(hd->value))
            return NULL;
        if (strcasecmp(hd->name, "Host") == 0)
            has_host = 1;
        len += strlen(hd->name) + 2 + strlen(hd->value) + 2;
    }
    if (!has_host)
        len += 6 + auth_len + 2;
    if (h1_has_body(req->method))
        len += (size_t)snprintf(clen, sizeof(clen), "Content-Length: %zu\r\n",
                                req->body_len);
    len += 2;
    if ((buf = malloc(len + 1)) == NULL)
        return NULL;
    w = buf;
#define PUT(s, n) do { memcpy(w, (s), (n)); w += (n); } while (0)
    PUT(req->method, mlen);
    PUT(" ", 1);
    if (*path != '/')
        PUT("/", 1);                    /* "" or "?query": origin form */
    PUT(path, plen);
    PUT(" HTTP/1.1\r\n", 11);
    if (!has_host) {
        PUT("Host: ", 6);
        PUT(auth, auth_len);
        PUT("\r\n", 2);
    }
    for (i = 0; i < req->nheaders; i++) {
        const struct upstream_header *hd = &req->headers[i];
        PUT(hd->name, strlen(hd->name));
        PUT(": ", 2);
        PUT(hd->value, strlen(hd->value));
        PUT("\r\n", 2);
    }
    PUT(clen, strlen(clen));
    PUT("\r\n", 2);
#undef PUT
    *w = '\0';
    *lenp = (size_t)(w - buf);
    return buf;
}

/* --- transfers ------------------------------------------------------------ */

static void xfer_free(struct h1_xfer *hx)
{
    if (hx->conn) {             /* mid-response: the connection cannot be reused */
        conn_close(hx->conn);
        hx->conn = NULL;
    }
    event_del(&hx->timer);
    if (hx->head) {
        explicit_bzero(hx->head, hx->head_len);
        free(hx->head);
    }
    upstream_rh_clear(&hx->x);
    hx->x.u->active--;
    free(hx);
}

/* Ends the transfer: the connection goes back to the pool when the
 * response ended cleanly, on_done runs, the transfer is freed. */
static void finish(struct h1_xfer *hx, enum upstream_result res, const char *msg)
{
    struct h1_conn *c = hx->conn;

    hx->conn = NULL;
    if (c) {
        if (res == UPSTREAM_OK && hx->keepalive
            && evbuffer_get_length(bufferevent_get_input(c->bev)) == 0
            && evbuffer_get_length(bufferevent_get_output(c->bev)) == 0)
            pool_put(c->pool, c);
        else
            conn_close(c);
    }
    event_del(&hx->timer);
    if (!hx->x.cancelled && hx->x.cbs->on_done) {
        hx->busy++;
        hx->x.cbs->on_done(hx->x.arg, res, msg);
        hx->busy--;
    }
    xfer_free(hx);
}

static void arm_timer(struct h1_xfer *hx)
{
    int64_t now = mono_ms(), due = -1;
    struct timeval tv;

    if (!hx->connected && hx->connect_ms > 0)
        due = hx->t_start_ms + hx->connect_ms;
    if (hx->total_ms > 0 && (due < 0 || hx->t_start_ms + hx->total_ms < due))
        due = hx->t_start_ms + hx->total_ms;
    if (due < 0) {
        event_del(&hx->timer);
        return;
    }
    due = due > now ? due - now : 0;
    tv.tv_sec = (time_t)(due / 1000);
    tv.tv_usec = (suseconds_t)((due % 1000) * 1000);
    evtimer_add(&hx->timer, &tv);
}

static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct h1_xfer *hx = arg;
    char msg[96];

    (void)fd;
    (void)what;
    if (!hx->connected && hx->connect_ms > 0
        && mono_ms() - hx->t_start_ms >= hx->connect_ms)
        snprintf(msg, sizeof(msg), "Connection timed out after %lld milliseconds",
                 (long long)hx->connect_ms);
    else
        snprintf(msg, sizeof(msg), "Operation timed out after %lld milliseconds",
                 (long long)(mono_ms() - hx->t_start_ms));
    finish(hx, UPSTREAM_ERR_TIMEOUT, msg);
}

/* Takes a pooled connection to the peer or opens a new one, and writes
 * the request. -1 when no connection could be started. */
static int send_request(struct h1_xfer *hx)
{
    struct h1_pool *p = hx->x.u->h1;
    uint32_t hash = sa_hash(&hx->sa, hx->salen);
    struct h1_conn *c = hx->resent ? NULL : pool_get(p, &hx->sa, hx->salen, hash);
    struct evbuffer *out;

    hx->reused = c != NULL;
    hx->connected = c != NULL;
    if (c == NULL) {
        evutil_socket_t fd;
        int one = 1;
        if ((c = calloc(1, sizeof(*c))) == NULL)
            return -1;
        c->pool = p;
        c->hash = hash;
        c->sa = hx->sa;
        c->salen = hx->salen;
        c->bev = bufferevent_socket_new(p->base, -1, BEV_OPT_CLOSE_ON_FREE);
        if (c->bev == NULL) {
            free(c);
            return -1;
        }
        bufferevent_setcb(c->bev, conn_read_cb, NULL, conn_event_cb, c);
        if (bufferevent_socket_connect(c->bev, (struct sockaddr *)&hx->sa,
                                       (int)hx->salen) < 0) {
            conn_close(c);
            return -1;
        }
        fd = bufferevent_getfd(c->bev);
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
    } else {
        bufferevent_setcb(c->bev, conn_read_cb, NULL, conn_event_cb, c);
    }
    c->x = hx;
    hx->conn = c;
    out = bufferevent_get_output(c->bev);
    /* A pooled connection is written at once, EV_WRITE off, as http.c's
     * conn_flush() does: no write event unless the socket is full. A new
     * one is written by the bufferevent when the connect completes. */
    if (hx->connected)
        bufferevent_disable(c->bev, EV_WRITE);
    /* Both by reference: the transfer outlives what is queued, or the
     * connection is closed before the transfer is freed. */
    if (evbuffer_add_reference(out, hx->head, hx->head_len, NULL, NULL) < 0
        || (hx->body_len
            && evbuffer_add_reference(out, hx->body, hx->body_len, NULL, NULL) < 0)
        || bufferevent_enable(c->bev, hx->connected ? EV_READ : EV_READ | EV_WRITE) < 0) {
        hx->conn = NULL;
        conn_close(c);
        return -1;
    }
    if (hx->connected) {
        evbuffer_unfreeze(out, 1);              /* see http.c's conn_flush() */
        evbuffer_write(out, bufferevent_getfd(c->bev));
        evbuffer_freeze(out, 1);
        if (evbuffer_get_length(out) > 0)
            bufferevent_enable(c->bev, EV_WRITE);
    }
    arm_timer(hx);
    return 0;
}

/* A pooled connection that died before answering: the peer closed it
 * while it sat idle. Sent again once on a new connection, as curl does. */
static int try_resend(struct h1_xfer *hx)
{
    if (!hx->reused || hx->got_bytes || hx->resent)
        return 0;
    conn_close(hx->conn);
    hx->conn = NULL;
    hx->resent = 1;
    hx->st = H1_HEAD;
    if (send_request(hx) < 0) {
        finish(hx, UPSTREAM_ERR_CONNECT, "Failed to open a new connection");
        return 1;
    }
    return 1;
}

struct upstream_xfer *h1_start(struct upstream *u, const struct upstream_req *req,
                               const struct upstream_cbs *cbs, void *arg,
                               int *mine)
{
    struct h1_xfer *hx;
    const char *auth, *path;
    size_t auth_len;
    struct sockaddr_storage sa;
    socklen_t salen = 0;

    *mine = 0;
    if (!parse_url(req->url, &sa, &salen, &auth, &auth_len, &path))
        return NULL;
    if (strcmp(req->method, "GET") != 0 && !h1_has_body(req->method))
        return NULL;
    *mine = 1;
    if ((hx = calloc(1, sizeof(*hx))) == NULL)
        return NULL;
    upstream_xfer_init(&hx->x, u, cbs, arg, UPSTREAM_KIND_H1);
    hx->sa = sa;
    hx->salen = salen;
    hx->body = req->body;
    hx->body_len = h1_has_body(req->method) ? req->body_len : 0;
    hx->connect_ms = req->connect_timeout_ms;
    hx->total_ms = req->total_timeout_ms;
    hx->t_start_ms = mono_ms();
    evtimer_assign(&hx->timer, u->base, timer_cb, hx);
    hx->head = build_head(req, auth, auth_len, path, &hx->head_len);
    if (hx->head == NULL) {
        free(hx);
        return NULL;
    }
    u->active++;
    if (send_request(hx) < 0) {
        xfer_free(hx);
        return NULL;
    }
    return &hx->x;
}

/* --- the response ---------------------------------------------------------- */

static int token_has(const char *list, const char *tok)
{
    size_t n = strlen(tok);
    const char *p = list;

    while (*p) {
        while (*p == ' ' || *p == '\t' || *p == ',')
            p++;
        if (strncasecmp(p, tok, n) == 0
            && (p[n] == '\0' || p[n] == ',' || p[n] == ' ' || p[n] == '\t'))
            return 1;
        p += strcspn(p, ",");
    }
    return 0;
}

/* Parses head[0..len) (ends with CRLF CRLF) in place into hx->x.rh.
 * Returns the status, or -1 for a malformed head. Sets framing. */
static int parse_head(struct h1_xfer *hx, char *head, size_t len, int *minor)
{
    char *r = head, *end = head + len, *w;
    int status, have_len = 0, chunked = 0, te = 0, close = 0, keep = 0;
    uint64_t clen = 0;

    if (len < 14 || memcmp(r, "HTTP/1.", 7) != 0
        || (r[7] != '0' && r[7] != '1') || r[8] != ' '
        || r[9] < '1' || r[9] > '5' || r[10] < '0' || r[10] > '9'
        || r[11] < '0' || r[11] > '9' || (r[12] != ' ' && r[12] != '\r'))
        return -1;
    *minor = r[7] - '0';
    status = (r[9] - '0') * 100 + (r[10] - '0') * 10 + (r[11] - '0');
    r = memchr(r, '\n', len);
    if (r == NULL || r[-1] != '\r')
        return -1;
    r++;
    w = head;                   /* pairs are written over what was read */
    hx->x.nresp = 0;
    while (r < end) {
        char *eol = memchr(r, '\n', (size_t)(end - r)), *colon, *v, *ve;
        size_t nlen, vlen;
        if (eol == NULL || eol == r || eol[-1] != '\r')
            return -1;
        if (eol == r + 1)
            break;                              /* the empty line */
        if (*r == ' ' || *r == '\t')
            return -1;                          /* obsolete line folding */
        colon = memchr(r, ':', (size_t)(eol - r));
        if (colon == NULL || colon == r)
            return -1;
        nlen = (size_t)(colon - r);
        if (memchr(r, ' ', nlen) || memchr(r, '\t', nlen))
            return -1;
        v = colon + 1;
        ve = eol - 1;
        while (v < ve && (*v == ' ' || *v == '\t'))
            v++;
        while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
            ve--;
        vlen = (size_t)(ve - v);
        memmove(w, r, nlen);
        w[nlen] = '\0';
        memmove(w + nlen + 1, v, vlen);
        w[nlen + 1 + vlen] = '\0';
        if (strcasecmp(w, "Content-Length") == 0) {
            char *e;
            uint64_t n;
            const char *val = w + nlen + 1;
            if (vlen == 0 || val[0] < '0' || val[0] > '9')
                return -1;
            errno = 0;
            n = strtoull(val, &e, 10);
            if (*e || errno || (have_len && n != clen))
                return -1;
            clen = n;
            have_len = 1;
        } else if (strcasecmp(w, "Transfer-Encoding") == 0) {
            const char *val = w + nlen + 1, *last = strrchr(val, ',');
            last = last ? last + 1 : val;
            while (*last == ' ' || *last == '\t')
                last++;
            te = 1;
            chunked = strncasecmp(last, "chunked", 7) == 0
                      && (last[7] == '\0' || last[7] == ' ' || last[7] == '\t');
        } else if (strcasecmp(w, "Connection") == 0) {
            close |= token_has(w + nlen + 1, "close");
            keep |= token_has(w + nlen + 1, "keep-alive");
        }
        w += nlen + 1 + vlen + 1;
        hx->x.nresp++;
        r = eol + 1;
    }
    hx->x.rh = head;
    hx->x.rh_len = (size_t)(w - head);
    hx->x.rh_cap = len + 1;
    hx->keepalive = !close && (*minor >= 1 || keep);
    if ((status >= 100 && status < 200) || status == 204 || status == 304) {
        hx->st = H1_BODY_LEN;
        hx->left = 0;
    } else if (te) {
        if (!chunked) {
            hx->st = H1_BODY_CLOSE;
            hx->keepalive = 0;
        } else {
            hx->st = H1_CHUNK_SIZE;
        }
    } else if (have_len) {
        hx->st = H1_BODY_LEN;
        hx->left = clen;
    } else {
        hx->st = H1_BODY_CLOSE;
        hx->keepalive = 0;
    }
    return status;
}

/* 1: a head was handled; 0: more bytes needed; -1: the transfer ended
 * (hx is gone). */
static int read_head(struct h1_xfer *hx, struct evbuffer *in)
{
    struct evbuffer_ptr pos = evbuffer_search(in, "\r\n\r\n", 4, NULL);
    size_t len;
    char *head;
    int status, minor;

    if (pos.pos < 0) {
        if (evbuffer_get_length(in) > H1_MAX_HEAD) {
            finish(hx, UPSTREAM_ERR_PROTOCOL, "Response head too large");
            return -1;
        }
        return 0;
    }
    len = (size_t)pos.pos + 4;
    if (len > H1_MAX_HEAD || (head = malloc(len + 1)) == NULL) {
        finish(hx, UPSTREAM_ERR_PROTOCOL, "Response head too large");
        return -1;
    }
    evbuffer_remove(in, head, len);
    head[len] = '\0';
    upstream_rh_clear(&hx->x);
    status = parse_head(hx, head, len, &minor);
    if (status < 0) {
        free(head);
        finish(hx, UPSTREAM_ERR_PROTOCOL, "Malformed response head");
        return -1;
    }
    if (status < 200) {
        if (status == 101) {
            finish(hx, UPSTREAM_ERR_PROTOCOL, "Unexpected 101 Switching Protocols");
            return -1;
        }
        upstream_rh_clear(&hx->x);              /* 1xx: the real head follows */
        hx->st = H1_HEAD;
        return 1;
    }
    hx->x.head_done = 1;
    if (hx->x.cbs->on_headers) {
        enum upstream_verdict v;
        hx->busy++;
        v = hx->x.cbs->on_headers(hx->x.arg, &hx->x, status);
        hx->busy--;
        if (hx->x.cancelled) {
            xfer_free(hx);
            return -1;
        }
        if (v == UPSTREAM_ABORT) {
            hx->x.aborted = 1;
            finish(hx, UPSTREAM_ERR_ABORTED, "Aborted by callback");
            return -1;
        }
    }
    return 1;
}

/* Passes up to `max` bytes from the front of `in` to on_data. Returns -1
 * when the transfer ended (cancelled or aborted), else the bytes passed. */
static ssize_t deliver(struct h1_xfer *hx, struct evbuffer *in, uint64_t max)
{
    struct evbuffer_iovec v;
    enum upstream_verdict verdict = UPSTREAM_CONTINUE;
    size_t n;

    if (evbuffer_peek(in, -1, NULL, &v, 1) < 1 || v.iov_len == 0)
        return 0;
    n = v.iov_len < max ? v.iov_len : (size_t)max;
    if (hx->x.cbs->on_data) {
        hx->busy++;
        verdict = hx->x.cbs->on_data(hx->x.arg, v.iov_base, n);
        hx->busy--;
    }
    evbuffer_drain(in, n);
    if (hx->x.cancelled) {
        xfer_free(hx);
        return -1;
    }
    if (verdict == UPSTREAM_ABORT) {
        hx->x.aborted = 1;
        finish(hx, UPSTREAM_ERR_ABORTED, "Aborted by callback");
        return -1;
    }
    if (verdict == UPSTREAM_PAUSE)
        h1_pause(&hx->x);
    return (ssize_t)n;
}

/* Reads a CRLF-terminated line of at most H1_MAX_CHUNK_LINE into buf.
 * 1: read; 0: more bytes needed; -1: too long. */
static int read_line(struct evbuffer *in, char *buf, size_t cap)
{
    size_t eol_len;
    struct evbuffer_ptr pos = evbuffer_search_eol(in, NULL, &eol_len, EVBUFFER_EOL_CRLF_STRICT);

    if (pos.pos < 0)
        return evbuffer_get_length(in) > cap ? -1 : 0;
    if ((size_t)pos.pos >= cap)
        return -1;
    evbuffer_remove(in, buf, (size_t)pos.pos);
    buf[pos.pos] = '\0';
    evbuffer_drain(in, eol_len);
    return 1;
}

/* Runs the response state machine over what is buffered. Every path that
 * ends the transfer returns right away: hx is gone then. */
static void h1_process(struct h1_xfer *hx)
{
    struct evbuffer *in = bufferevent_get_input(hx->conn->bev);
    char line[H1_MAX_CHUNK_LINE + 1];
    ssize_t n;
    int r;

    if (evbuffer_get_length(in))
        hx->got_bytes = 1;
    while (!hx->x.paused) {
        switch (hx->st) {
        case H1_HEAD:
            if (evbuffer_get_length(in) == 0 || read_head(hx, in) <= 0)
                return;
            if (hx->st == H1_HEAD)
                continue;                       /* after a 1xx */
            break;
        case H1_BODY_LEN:
            if (hx->left == 0) {
                finish(hx, UPSTREAM_OK, "");
                return;
            }
            if ((n = deliver(hx, in, hx->left)) < 0)
                return;
            if (n == 0)
                return;
            hx->left -= (uint64_t)n;
            break;
        case H1_BODY_CLOSE:
            if ((n = deliver(hx, in, UINT64_MAX)) <= 0)
                return;
            break;
        case H1_CHUNK_SIZE: {
            char *e;
            if ((r = read_line(in, line, H1_MAX_CHUNK_LINE)) == 0)
                return;
            if (r > 0) {
                line[strcspn(line, "; \t")] = '\0';
                errno = 0;
                hx->left = strtoull(line, &e, 16);
            }
            if (r < 0 || line[0] == '\0' || *e || errno || line[0] == '-'
                || line[0] == '+') {
                finish(hx, UPSTREAM_ERR_PROTOCOL, "Malformed chunk size");
                return;
            }
            hx->st = hx->left ? H1_CHUNK_DATA : H1_TRAILERS;
            break;
        }
        case H1_CHUNK_DATA:
            if ((n = deliver(hx, in, hx->left)) <= 0)
                return;
            hx->left -= (uint64_t)n;
            if (hx->left == 0)
                hx->st = H1_CHUNK_CRLF;
            break;
        case H1_CHUNK_CRLF: {
            unsigned char crlf[2];
            if (evbuffer_get_length(in) < 2)
                return;
            evbuffer_remove(in, crlf, 2);
            if (crlf[0] != '\r' || crlf[1] != '\n') {
                finish(hx, UPSTREAM_ERR_PROTOCOL, "Malformed chunk end");
                return;
            }
            hx->st = H1_CHUNK_SIZE;
            break;
        }
        case H1_TRAILERS:
            if ((r = read_line(in, line, H1_MAX_CHUNK_LINE)) == 0)
                return;
            if (r < 0) {
                finish(hx, UPSTREAM_ERR_PROTOCOL, "Malformed trailer");
                return;
            }
            if (line[0] == '\0') {
                finish(hx, UPSTREAM_OK, "");
                return;
            }
            break;
        }
    }
}

static void conn_read_cb(struct bufferevent *bev, void *arg)
{
    struct h1_conn *c = arg;

    (void)bev;
    h1_process(c->x);
}

static void conn_event_cb(struct bufferevent *bev, short what, void *arg)
{
    struct h1_conn *c = arg;
    struct h1_xfer *hx = c->x;
    char msg[160];
    int err = EVUTIL_SOCKET_ERROR();

    (void)bev;
    if (what & BEV_EVENT_CONNECTED) {
        hx->connected = 1;
        arm_timer(hx);
        return;
    }
    if (!hx->connected) {
        char ip[INET6_ADDRSTRLEN] = "?";
        unsigned port;
        if (hx->sa.ss_family == AF_INET6) {
            inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&hx->sa)->sin6_addr, ip, sizeof(ip));
            port = ntohs(((struct sockaddr_in6 *)&hx->sa)->sin6_port);
        } else {
            inet_ntop(AF_INET, &((struct sockaddr_in *)&hx->sa)->sin_addr, ip, sizeof(ip));
            port = ntohs(((struct sockaddr_in *)&hx->sa)->sin_port);
        }
        snprintf(msg, sizeof(msg), "Failed to connect to %s port %u: %s", ip, port,
                 (what & BEV_EVENT_EOF) ? "Connection closed"
                                        : evutil_socket_error_to_string(err));
        finish(hx, UPSTREAM_ERR_CONNECT, msg);
        return;
    }
    if (try_resend(hx))
        return;
    if (what & BEV_EVENT_EOF) {
        if (hx->st == H1_BODY_CLOSE) {
            finish(hx, UPSTREAM_OK, "");
            return;
        }
        if (hx->st == H1_HEAD && !hx->got_bytes)
            finish(hx, UPSTREAM_ERR_PROTOCOL, "Empty reply from server");
        else if (hx->st == H1_HEAD)
            finish(hx, UPSTREAM_ERR_PROTOCOL, "Connection closed inside the response head");
        else
            finish(hx, UPSTREAM_ERR_PROTOCOL, "Transfer closed with the response incomplete");
        return;
    }
    snprintf(msg, sizeof(msg), "%s failure: %s",
             (what & BEV_EVENT_WRITING) ? "Send" : "Recv",
             evutil_socket_error_to_string(err));
    finish(hx, UPSTREAM_ERR_PROTOCOL, msg);
}

void h1_pause(struct upstream_xfer *x)
{
    struct h1_xfer *hx = (struct h1_xfer *)x;

    if (x->paused)
        return;
    x->paused = 1;
    if (hx->conn)
        bufferevent_disable(hx->conn->bev, EV_READ);
}

/* Passes on what was held back right away, unless inside a callback. */
void h1_resume(struct upstream_xfer *x)
{
    struct h1_xfer *hx = (struct h1_xfer *)x;

    if (!x->paused)
        return;
    x->paused = 0;
    if (hx->conn == NULL)
        return;
    bufferevent_enable(hx->conn->bev, EV_READ);
    if (!hx->busy)
        h1_process(hx);
}

void h1_cancel(struct upstream_xfer *x)
{
    struct h1_xfer *hx = (struct h1_xfer *)x;

    if (hx->busy) {
        x->cancelled = 1;       /* freed when the callback returns */
        return;
    }
    xfer_free(hx);
}
