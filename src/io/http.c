/*
 * http.c -- the client-facing HTTP/1.1 server (see http.h).
 *
 * One `struct http_conn` per accepted socket, one `struct http_req` per
 * request on it. A connection reads a request head (a head that is whole
 * in the input is copied out at once and parsed in place, one block for
 * all its lines; one that trickles in is taken line by line), then its
 * body (Content-Length or chunked), hands the request to the handler and
 * reads nothing more until the reply is finished (no pipelining: extra
 * bytes wait in the input buffer, capped by a read watermark). While the
 * handler works the socket stays readable so a client that hangs up is
 * noticed at once.
 *
 * Hardening: a request head and body must arrive within client_timeout of
 * their first byte (a deadline, not an idle timer, so a client trickling a
 * byte a second is cut off: 408); lines are searched for before they are
 * copied, so a line over the limit is refused without being allocated;
 * request lines and headers must be printable, valid UTF-8 (400 otherwise,
 * NUL bytes included); at most HTTP_MAX_HEADERS fields (431); one
 * Content-Length value; chunk sizes are strict hex. Connections beyond a
 * cap are closed at accept, and accept errors (out of descriptors) pause
 * the listeners instead of spinning.
 *
 * Plain connections read the socket themselves: one readv straight into the
 * input buffer per readable event (a bufferevent asks the kernel how much
 * is there with an ioctl before each read); writes go through the
 * bufferevent's output, except a streamed chunk that finds it empty: that
 * one goes to the socket at once (stream_send()). Timers are lazy: a connection has one deadline
 * (first request, request head + body, keep-alive idle, linger) whose
 * moves to later times cost no timer operation (conn_deadline()).
 *
 * TLS listeners wrap each socket in an OpenSSL bufferevent (tls.c gives the
 * SSL from the current certificate). The handshake runs under the same
 * client_timeout deadline as the first request, so a stalled handshake
 * cannot hold a slot; a failed one is counted by reason, and plain HTTP
 * sent to the TLS port gets a plain 400 before the close.
 */
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/event_struct.h>
#include <event2/listener.h>
#include <event2/util.h>
#include <jansson.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "ascii.h"
#include "clock.h"
#include "evmem.h"
#include "http.h"
#include "log.h"
#include "sockread.h"
#include "tls.h"

#define HTTP_MAX_HEADERS    100
#define HTTP_HDR_INLINE     16      /* header fields held in the request itself */
#define HTTP_MAX_LISTENERS  4
#define HTTP_MAX_CONNS      10000   /* also capped by RLIMIT_NOFILE, see below */
#define HTTP_CHUNK_LINE_MAX 1024    /* chunk size line with its extensions */
#define HTTP_LOG_EVERY_MS   10000   /* rate of the "connection limit" log line */
#define HTTP_ACCEPT_PAUSE_MS 200    /* listeners rest this long after EMFILE */
#define HTTP_READ_MAX       4000    /* bytes per read (one 4 KB chain) */
#define HTTP_BODY_INLINE    16384   /* body room in a whole head's block */
#define HTTP_RH_INLINE      320     /* extra response lines held in the request itself */

enum conn_state {
    CONN_READ_HEAD = 0,   /* waiting for / reading a request head */
    CONN_READ_BODY,       /* Content-Length body */
    CONN_READ_CHUNK_SIZE, /* chunked body: size line */
    CONN_READ_CHUNK_DATA, /* chunked body: data + CRLF */
    CONN_READ_TRAILER,    /* chunked body: trailer lines */
    CONN_HANDLING,        /* the handler owns the request */
    CONN_FLUSHING,        /* reply complete, output draining */
    CONN_LINGER,          /* error sent, write side shut, input discarded */
};

#define HTTP_LINGER_MS 2000

struct http_header {
    char  *name;
    size_t nlen;                      /* strlen(name) */
    char  *value;
};

struct http_req {
    struct http_conn   *conn;         /* NULL once detached */
    struct http_server *srv;
    char               *head;         /* the request line (method and target
                                         point into it), or the whole head */
    int                 head_whole;   /* head holds the header lines too */
    const char         *method;
    char               *target;       /* path, NUL at the '?' */
    char               *query;
    int                 minor;        /* HTTP/1.x */
    int                 keepalive;
    struct http_header *hdr;          /* hdr_in, or up to HTTP_MAX_HEADERS */
    size_t              nhdr;
    uint64_t            hmask;        /* header_bit() of each field's name */
    uint8_t             known[HTTP_H_NKNOWN]; /* 1 + index of the first such field, 0: none */
    uint16_t            known_rep;    /* bit h: field h came more than once */
    struct http_header  hdr_in[HTTP_HDR_INLINE];
    char               *body;
    size_t              body_len;
    size_t              body_cap;
    char               *body_in;      /* head_whole: room for the body in the */
    size_t              body_in_cap;  /* request's own block, NUL included */
    size_t              chunk_left;
    char               *rh;           /* extra response header lines, until */
    size_t              rh_len;       /* the head is written */
    size_t              rh_cap;
    int                 streaming;    /* chunked reply started */
    int                 stream_last;  /* the stream's last writes: queued (http_stream_last) */
    http_req_cb         close_cb;
    void               *close_arg;
    http_req_cb         drain_cb;
    void               *drain_arg;
    /* Not cleared by req_init(): the extra response lines' first room. */
    char                rh_in[HTTP_RH_INLINE];
};

struct http_conn {
    struct http_server *srv;
    struct bufferevent *bev;
    evutil_socket_t     fd;           /* bev's socket (no bufferevent_getfd lock) */
    enum conn_state     state;
    struct http_req    *req;
    size_t              head_bytes;
    size_t              line_scan;    /* input bytes known to hold no LF */
    struct event       *deadline;     /* client_timeout for head + body */
    int64_t             expire_ms;    /* the deadline (monotonic ms), 0: none */
    int64_t             timer_ms;     /* when `deadline` fires, 0: not armed */
    int                 in_req;       /* expire_ms is the request's deadline */
    struct sock_reader  rd;           /* plain: the socket is readable */
    int                 close_after;  /* close once output drained */
    int                 linger;       /* ...after discarding unread input */
    int                 loopback;     /* came in on a loopback listener */
    int                 tls;          /* an OpenSSL bufferevent */
    int                 tls_done;     /* handshake finished */
    char                peer[64];
    struct http_conn   *prev, *next;
    struct event        flush_ev;     /* streamed output: one write per loop turn */
};

struct http_server {
    struct event_base     *base;
    http_handler           handler;
    void                  *arg;
    struct evconnlistener *lev[HTTP_MAX_LISTENERS];
    int                    lev_loopback[HTTP_MAX_LISTENERS];
    int                    lev_tls[HTTP_MAX_LISTENERS];
    struct sockaddr_storage lev_addr[HTTP_MAX_LISTENERS]; /* as bound */
    int                    reuseport;     /* listeners share their port */
    size_t                 nlev;
    struct http_limits     lim;
    struct http_conn      *conns;
    /* Counters written by the server's thread only, with atomic stores:
     * other workers read them for status pages. */
    size_t                 nconns;
    size_t                 max_conns;
    size_t                 nreqs;         /* requests owned by the handler */
    int                    stopping;
    struct event          *resume;        /* re-enables paused listeners */
    uint64_t               refused;       /* over max_conns, since last log */
    uint64_t               refused_total;
    int64_t                refused_logged_ms;
    int64_t                accept_err_logged_ms;
};

static const struct http_limits default_limits = {
    16 * 1024, 4 * 1024 * 1024, 60000
};

static void conn_read_cb(struct bufferevent *bev, void *arg);
static void conn_recv_cb(evutil_socket_t fd, short what, void *arg);
static int64_t mono_ms(void);
static void conn_write_cb(struct bufferevent *bev, void *arg);
static void conn_event_cb(struct bufferevent *bev, short what, void *arg);
static void conn_free(struct http_conn *c);

/* --- status text ---------------------------------------------------- */

const char *http_status_text(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 201: return "Created";
    case 204: return "No Content";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 402: return "Payment Required";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 411: return "Length Required";
    case 413: return "Payload Too Large";
    case 415: return "Unsupported Media Type";
    case 422: return "Unprocessable Entity";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default:  return status < 300 ? "OK" : status < 500 ? "Error" : "Server Error";
    }
}

/* --- requests ------------------------------------------------------- */

static void req_init(struct http_req *r, struct http_conn *c)
{
    memset(r, 0, offsetof(struct http_req, rh_in));
    r->conn = c;
    r->srv = c->srv;
    r->hdr = r->hdr_in;
}

static struct http_req *req_new(struct http_conn *c)
{
    struct http_req *r = malloc(sizeof(*r));

    if (r == NULL)
        return NULL;
    req_init(r, c);
    return r;
}

static void req_free(struct http_req *r)
{
    size_t i;

    if (r == NULL)
        return;
    if (!r->head_whole)
        for (i = 0; i < r->nhdr; i++)
            free(r->hdr[i].name);          /* the line; value points into it */
    if (r->hdr != r->hdr_in)
        free(r->hdr);
    if (!r->head_whole)
        free(r->head);                     /* else in r's own block */
    if (r->body != r->body_in)
        free(r->body);
    if (r->rh != r->rh_in)
        free(r->rh);
    if (r->head_whole)
        evmem_block_free(r);               /* head_whole()'s block */
    else
        free(r);
}

const char *http_req_method(const struct http_req *r) { return r->method; }
const char *http_req_path(const struct http_req *r) { return r->target; }
const char *http_req_query(const struct http_req *r) { return r->query; }
size_t http_req_nheaders(const struct http_req *r) { return r->nhdr; }
int http_req_detached(const struct http_req *r) { return r->conn == NULL; }

const char *http_req_peer(const struct http_req *r)
{
    return r->conn ? r->conn->peer : "-";
}

void http_req_header_at(const struct http_req *r, size_t i,
                        const char **name, const char **value)
{
    *name = r->hdr[i].name;
    *value = r->hdr[i].value;
}

/* 1 when field h is called name (n bytes), case aside: the length and
 * the first letter rule out most fields before strcasecmp. */
/* A bit for a field name's length and first letter: a lookup whose bit no
 * field of the request set has nothing to find (most lookups of a request
 * are for fields it does not have). */
static uint64_t header_bit(const char *name, size_t n)
{
    return (uint64_t)1 << ((n * 7 + ((unsigned char)name[0] | 0x20)) & 63);
}

static int header_is(const struct http_header *h, const char *name, size_t n)
{
    return h->nlen == n && (h->name[0] | 0x20) == (name[0] | 0x20)
           && strcasecmp(h->name, name) == 0;
}

const char *http_req_header(const struct http_req *r, const char *name)
{
    size_t i, n = strlen(name);

    if (n == 0 || !(r->hmask & header_bit(name, n)))
        return NULL;
    for (i = 0; i < r->nhdr; i++)
        if (header_is(&r->hdr[i], name, n))
            return r->hdr[i].value;
    return NULL;
}

const char *http_req_known(const struct http_req *r, enum http_known h)
{
    unsigned i = r->known[h];

    return i ? r->hdr[i - 1].value : NULL;
}

static const char *const known_names[HTTP_H_NKNOWN] = {
    [HTTP_H_HOST] = "host", [HTTP_H_CONTENT_LENGTH] = "content-length",
    [HTTP_H_TRANSFER_ENCODING] = "transfer-encoding",
    [HTTP_H_CONNECTION] = "connection", [HTTP_H_EXPECT] = "expect",
    [HTTP_H_CONTENT_TYPE] = "content-type", [HTTP_H_ACCEPT] = "accept",
    [HTTP_H_AUTHORIZATION] = "authorization", [HTTP_H_X_API_KEY] = "x-api-key",
    [HTTP_H_X_REQUEST_ID] = "x-request-id", [HTTP_H_CACHE_CONTROL] = "cache-control",
    [HTTP_H_ANTHROPIC_VERSION] = "anthropic-version",
    [HTTP_H_ANTHROPIC_BETA] = "anthropic-beta",
};

_Static_assert(HTTP_H_NKNOWN <= 16, "known_rep has a bit per known field");

const char *http_known_name(enum http_known h) { return known_names[h]; }

/* Which known field the name (n bytes of tchars) is, or -1. */
static int known_of(const char *name, size_t n)
{
    int h;

    switch (n) {
    case 4:  h = HTTP_H_HOST; break;
    case 6:  h = (name[0] | 0x20) == 'a' ? HTTP_H_ACCEPT : HTTP_H_EXPECT; break;
    case 9:  h = HTTP_H_X_API_KEY; break;
    case 10: h = HTTP_H_CONNECTION; break;
    case 12: h = (name[0] | 0x20) == 'c' ? HTTP_H_CONTENT_TYPE : HTTP_H_X_REQUEST_ID; break;
    case 13: h = (name[0] | 0x20) == 'a' ? HTTP_H_AUTHORIZATION : HTTP_H_CACHE_CONTROL; break;
    case 14: h = (name[0] | 0x20) == 'c' ? HTTP_H_CONTENT_LENGTH : HTTP_H_ANTHROPIC_BETA; break;
    case 17: h = (name[0] | 0x20) == 't' ? HTTP_H_TRANSFER_ENCODING : HTTP_H_ANTHROPIC_VERSION; break;
    default: return -1;
    }
    return ascii_lower_eq(name, known_names[h], n) ? h : -1;
}

const char *http_req_body(const struct http_req *r, size_t *len)
{
    *len = r->body_len;
    return r->body ? r->body : "";
}

void http_req_on_close(struct http_req *r, http_req_cb cb, void *arg)
{
    r->close_cb = cb;
    r->close_arg = arg;
}

void http_req_on_drain(struct http_req *r, http_req_cb cb, void *arg)
{
    r->drain_cb = cb;
    r->drain_arg = arg;
}

size_t http_req_pending_output(const struct http_req *r)
{
    if (r->conn == NULL)
        return 0;
    return evbuffer_get_length(bufferevent_get_output(r->conn->bev));
}

/* --- responses ------------------------------------------------------ */

/* Decimal (base 10) or hexadecimal (16) digits of v into buf[24]; returns the length. */
static size_t head_num(char *buf, unsigned long long v, unsigned base)
{
    char tmp[24];
    size_t n = 0, i;

    do {
        tmp[n++] = "0123456789abcdef"[v % base];
        v /= base;
    } while (v);
    for (i = 0; i < n; i++)
        buf[i] = tmp[n - 1 - i];
    return n;
}

void http_resp_header(struct http_req *r, const char *name, const char *value)
{
    /* CR/LF in a value would split the header: drop such values. */
    size_t nlen = strcspn(name, "\r\n:"), vlen = strcspn(value, "\r\n");

    if (name[nlen] != '\0' || value[vlen] != '\0')
        return;
    http_resp_header_n(r, name, nlen, value, vlen);
}

void http_resp_header_n(struct http_req *r, const char *name, size_t nlen,
                        const char *value, size_t vlen)
{
    size_t need = nlen + 2 + vlen + 2;
    char *w;

    if (r->rh == NULL) {
        r->rh = r->rh_in;                  /* no allocation for the usual few */
        r->rh_cap = sizeof(r->rh_in);
    }
    if (r->rh_len + need > r->rh_cap) {
        size_t cap = 2 * r->rh_cap;
        char *nb;
        while (cap < r->rh_len + need)
            cap *= 2;
        if (r->rh == r->rh_in) {
            if ((nb = malloc(cap)) == NULL)
                return;
            memcpy(nb, r->rh, r->rh_len);
        } else if ((nb = realloc(r->rh, cap)) == NULL) {
            return;
        }
        r->rh = nb;
        r->rh_cap = cap;
    }
    w = r->rh + r->rh_len;
    memcpy(w, name, nlen);
    memcpy(w + nlen, ": ", 2);
    memcpy(w + nlen + 2, value, vlen);
    memcpy(w + nlen + 2 + vlen, "\r\n", 2);
    r->rh_len += need;
}

/* Appends the n bytes at a to the head being built at *w. */
static char *head_put(char *w, const char *a, size_t n)
{
    memcpy(w, a, n);
    return w + n;
}

/*
 * The response head, then `len` bytes of body (clen < 0: none, chunked or
 * to the close), into the output with one reservation: one pass through
 * the output's callbacks and, for a small answer, one chain, where adding
 * the status line, each field and the body one by one took a pass each.
 * Response heads are put together with memcpy: printf-style formatting
 * was a visible share of a proxied request's CPU time.
 */
#define HEAD_MAX   1024         /* room for the head's own lines */
#define HEAD_JOIN  65536        /* a larger body is added on its own */

/* A whole reply on a plain connection with nothing queued: head and body
 * go to the socket with one writev, as stream_send() does, without the
 * output's reservation, copy and evbuffer_write; only what the socket does
 * not take is queued (req_finish()'s conn_flush() goes on with it, a
 * failed write included: the write callback then reports it). */
static void send_whole(struct http_conn *c, struct evbuffer *out, const char *head,
                       size_t n, const char *body, size_t len)
{
    struct iovec v[2] = { { (void *)head, n }, { (void *)body, len } };

    sock_write_direct(c->fd, v, len ? 2 : 1, out, 0);
}

static void write_head(struct http_req *r, int status, const char *ctype,
                       long long clen, const char *body, size_t len, int whole)
{
    struct evbuffer *out = bufferevent_get_output(r->conn->bev);
    struct evbuffer_iovec v;
    size_t clen_ct = ctype ? strlen(ctype) : 0;
    size_t cap = HEAD_MAX + clen_ct + r->rh_len, n;
    char small[HEAD_MAX + 1024], *head = small, *w, num[24];
    static const char server[] = "\r\nServer: infergate\r\n";

    if (cap > sizeof(small) && (head = malloc(cap)) == NULL) {
        head = small;                       /* drop what does not fit */
        r->rh_len = 0;
        clen_ct = 0;
        ctype = NULL;
    }
    if (status == 200) {                    /* most answers: one copy */
        static const char ok[] = "HTTP/1.1 200 OK\r\nServer: infergate\r\n";
        w = head_put(head, ok, sizeof(ok) - 1);
    } else {
        const char *text = http_status_text(status);

        w = head_put(head, "HTTP/1.1 ", 9);
        w = head_put(w, num, head_num(num, (unsigned)status % 1000, 10));
        w = head_put(w, " ", 1);
        w = head_put(w, text, strnlen(text, 64));
        w = head_put(w, server, sizeof(server) - 1);
    }
    if (ctype) {
        w = head_put(w, "Content-Type: ", 14);
        w = head_put(w, ctype, clen_ct);
        w = head_put(w, "\r\n", 2);
    }
    if (clen >= 0) {
        w = head_put(w, "Content-Length: ", 16);
        w = head_put(w, num, head_num(num, (unsigned long long)clen, 10));
        w = head_put(w, "\r\n", 2);
    } else if (r->minor >= 1) {
        w = head_put(w, "Transfer-Encoding: chunked\r\n", 28);
    }
    if (r->rh_len)
        w = head_put(w, r->rh, r->rh_len);
    if (r->keepalive)
        w = head_put(w, "Connection: keep-alive\r\n\r\n", 26);
    else
        w = head_put(w, "Connection: close\r\n\r\n", 21);
    n = (size_t)(w - head);
    if (whole && !r->conn->tls && evbuffer_get_length(out) == 0) {
        send_whole(r->conn, out, head, n, body, len);
    } else if (len > HEAD_JOIN
        || evbuffer_reserve_space(out, (ev_ssize_t)(n + len), &v, 1) != 1
        || v.iov_len < n + len) {
        evbuffer_add(out, head, n);
        if (len)
            evbuffer_add(out, body, len);
    } else {
        memcpy(v.iov_base, head, n);
        if (len)
            memcpy((char *)v.iov_base + n, body, len);
        v.iov_len = n + len;
        evbuffer_commit_space(out, &v, 1);
    }
    if (head != small)
        free(head);
    if (r->rh != r->rh_in)
        free(r->rh);                        /* later fields would be too late */
    r->rh = NULL;
    r->rh_len = r->rh_cap = 0;
}

/*
 * Sends what is queued right away, in the loop turn that produced it.
 * EV_WRITE stays disabled while the socket takes everything, so a reply
 * costs no write event and no epoll_ctl; only a full socket (a slow
 * reader, a big body) enables it, and the write callback disables it
 * again once the output is empty. Write errors are left to that path.
 */
static void conn_flush(struct http_conn *c)
{
    struct evbuffer *out = bufferevent_get_output(c->bev);

    if (evbuffer_get_length(out) == 0)
        return;
    if (c->tls) {
        /* OpenSSL writes from its own write callback, which disables
         * EV_WRITE again once the output is empty (conn_write_cb). */
        bufferevent_enable(c->bev, EV_WRITE);
        return;
    }
    /* A socket bufferevent keeps the front of its output frozen; its own
     * write callback thaws it around the write, as this does. */
    evbuffer_unfreeze(out, 1);
    evbuffer_write(out, c->fd);
    evbuffer_freeze(out, 1);
    if (evbuffer_get_length(out) > 0)
        bufferevent_enable(c->bev, EV_WRITE);
    else if (c->req && c->req->drain_cb)
        /* Drained without the write callback: it is where a paused
         * stream waits to be resumed. */
        bufferevent_trigger(c->bev, EV_WRITE,
                            BEV_TRIG_IGNORE_WATERMARKS | BEV_TRIG_DEFER_CALLBACKS);
}

/* Streamed chunks are gathered until the loop turn's callbacks are done,
 * then written with one writev. */
static void conn_flush_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    conn_flush(arg);
}

/* The reply is complete: the connection drains its output, then reads the
 * next request or closes. A detached request is simply freed. */
static void req_finish(struct http_req *r)
{
    struct http_conn *c = r->conn;

    __atomic_sub_fetch(&r->srv->nreqs, 1, __ATOMIC_RELAXED);
    if (c == NULL) {
        req_free(r);
        return;
    }
    c->req = NULL;
    if (!r->keepalive || c->srv->stopping)
        c->close_after = 1;
    req_free(r);
    c->state = CONN_FLUSHING;
    conn_flush(c);
    /* All sent: go on (next request, linger or close) from the loop, not
     * from here, which may be deep inside conn_process(). */
    if (evbuffer_get_length(bufferevent_get_output(c->bev)) == 0)
        bufferevent_trigger(c->bev, EV_WRITE,
                            BEV_TRIG_IGNORE_WATERMARKS | BEV_TRIG_DEFER_CALLBACKS);
}

void http_reply(struct http_req *r, int status, const char *ctype,
                const char *body, size_t len)
{
    if (r->conn && !r->streaming)
        write_head(r, status, ctype, (long long)len, body,
                   len && !(r->method[0] == 'H' && strcmp(r->method, "HEAD") == 0) ? len : 0, 1);
    req_finish(r);
}

static http_error_body_fn error_body_fn;

void http_set_error_body(http_error_body_fn fn)
{
    error_body_fn = fn;
}

void http_reply_error(struct http_req *r, int status, const char *type,
                      const char *code, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    json_t *o;
    char *s;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (error_body_fn && r->target
        && (s = error_body_fn(r->target, status, type, code, msg)) != NULL) {
        http_reply(r, status, "application/json", s, strlen(s));
        free(s);
        return;
    }
    o = json_pack("{s:{s:s, s:s, s:s?}}", "error", "message", msg,
                  "type", type, "code", code);
    s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    if (s == NULL) {
        static const char fallback[] =
            "{\"error\":{\"message\":\"internal error\",\"type\":\"server_error\"}}";
        http_reply(r, status, "application/json", fallback, sizeof(fallback) - 1);
    } else {
        http_reply(r, status, "application/json", s, strlen(s));
    }
    free(s);
    json_decref(o);
}

void http_stream_start(struct http_req *r, int status, const char *ctype)
{
    if (r->streaming)
        return;
    r->streaming = 1;
    if (r->minor == 0)
        r->keepalive = 0;   /* HTTP/1.0: the end of the body is the close */
    if (r->conn) {
        write_head(r, status, ctype, -1, NULL, 0, 0);
        event_active(&r->conn->flush_ev, EV_WRITE, 0);
    }
}

/*
 * A streamed chunk on a plain connection with nothing queued goes to the
 * socket at once: one writev of its size line, data and CRLF, instead of a
 * copy into the output, a flush event and a write from there (for a stream
 * that comes an event per read, the output's chain was allocated and freed
 * for each). What the socket does not take (full, or an error the write
 * path meets again) is queued and written as any output. Returns what is
 * queued.
 */
static size_t stream_send(struct http_conn *c, struct evbuffer *out, const char *size,
                          size_t n, const char *data, size_t len)
{
    struct iovec v[3];
    int nv = 0;

    if (n > 0)
        v[nv++] = (struct iovec){ (char *)size, n };
    v[nv++] = (struct iovec){ (char *)data, len };
    if (n > 0)
        v[nv++] = (struct iovec){ (char *)"\r\n", 2 };
    sock_write_direct(c->fd, v, nv, out, 0);
    if (evbuffer_get_length(out) == 0)
        return 0;
    bufferevent_enable(c->bev, EV_WRITE);       /* see conn_flush() */
    return evbuffer_get_length(out);
}

size_t http_stream_write(struct http_req *r, const char *data, size_t len)
{
    struct evbuffer *out;
    struct evbuffer_iovec v;
    char size[24 + 2];
    size_t n = 0;

    if (r->conn == NULL)
        return 0;
    out = bufferevent_get_output(r->conn->bev);
    if (len == 0)
        return evbuffer_get_length(out);
    if (r->minor >= 1) {
        n = head_num(size, len, 16);
        size[n++] = '\r';
        size[n++] = '\n';
    }
    /* A paused stream waiting for the drain callback is left to the
     * usual path, which calls it; so is the stream's last piece, which the
     * flush writes with the end's chunk. */
    if (!r->conn->tls && r->drain_cb == NULL && !r->stream_last
        && evbuffer_get_length(out) == 0)
        return stream_send(r->conn, out, size, n, data, len);
    if (n > 0) {
        /* One reservation for size line, data and CRLF: one pass through
         * the output's callbacks instead of three. */
        if (evbuffer_reserve_space(out, (ev_ssize_t)(n + len + 2), &v, 1) == 1
            && v.iov_len >= n + len + 2) {
            memcpy(v.iov_base, size, n);
            memcpy((char *)v.iov_base + n, data, len);
            memcpy((char *)v.iov_base + n + len, "\r\n", 2);
            v.iov_len = n + len + 2;
            evbuffer_commit_space(out, &v, 1);
        } else {
            evbuffer_add(out, size, n);
            evbuffer_add(out, data, len);
            evbuffer_add(out, "\r\n", 2);
        }
    } else {
        evbuffer_add(out, data, len);
    }
    event_active(&r->conn->flush_ev, EV_WRITE, 0);
    return evbuffer_get_length(out);
}

void http_stream_last(struct http_req *r)
{
    r->stream_last = 1;
}

void http_stream_end(struct http_req *r)
{
    if (r->conn && r->streaming && r->minor >= 1)
        evbuffer_add(bufferevent_get_output(r->conn->bev), "0\r\n\r\n", 5);
    req_finish(r);
}

void http_req_abort(struct http_req *r)
{
    struct http_conn *c = r->conn;

    if (c) {
        r->close_cb = NULL;
        conn_free(c);               /* detaches r */
    }
    req_finish(r);
}

void http_req_set_sndbuf(struct http_req *r, int bytes)
{
    if (r->conn)
        setsockopt(bufferevent_getfd(r->conn->bev), SOL_SOCKET, SO_SNDBUF,
                   &bytes, sizeof(bytes));
}

static void conn_timer_arm(struct http_conn *c, int64_t now, int64_t at)
{
    struct timeval tv;
    int64_t ms = at > now ? at - now : 0;

    tv.tv_sec = (time_t)(ms / 1000);
    tv.tv_usec = (suseconds_t)((ms % 1000) * 1000);
    evtimer_add(c->deadline, &tv);
    c->timer_ms = at;
}

/*
 * The connection's deadline becomes `ms` from now (0: none). The timer is
 * only re-armed when the deadline moves earlier than it is set for: a
 * deadline that moves later (the next request's, the next idle period's)
 * is found when the timer fires early, which re-arms it for the rest
 * (conn_deadline_cb). So a keep-alive request costs no timer operation.
 */
static void conn_deadline(struct http_conn *c, int64_t ms)
{
    int64_t now;

    if (ms <= 0) {
        c->expire_ms = 0;
        return;
    }
    now = mono_ms();
    c->expire_ms = now + ms;
    if (c->timer_ms == 0 || c->timer_ms > c->expire_ms)
        conn_timer_arm(c, now, c->expire_ms);
}

static void conn_deadline_stop(struct http_conn *c)
{
    conn_deadline(c, 0);
    c->in_req = 0;
}

/* Reading on or off: plain connections have their own read event. */
static void conn_read_on(struct http_conn *c)
{
    sock_reader_on(&c->rd, c->tls ? c->bev : NULL);
}

static void conn_read_off(struct http_conn *c)
{
    sock_reader_off(&c->rd, c->tls ? c->bev : NULL);
}

/* An error detected while reading a request: answer it and close. */
static void conn_fail(struct http_conn *c, int status, const char *code,
                      const char *msg)
{
    struct http_req *r = c->req;

    conn_deadline_stop(c);
    if (r == NULL) {
        r = req_new(c);
        if (r == NULL) {
            conn_free(c);
            return;
        }
        c->req = r;
    }
    if (r->method == NULL)
        r->method = "GET";
    r->keepalive = 0;
    r->minor = 1;
    c->linger = 1;
    c->state = CONN_HANDLING;
    __atomic_add_fetch(&c->srv->nreqs, 1, __ATOMIC_RELAXED);
    if (log_enabled(LOGL_DEBUG))
        log_debug("client %s: %d %s", c->peer[0] ? c->peer : "-", status, msg);
    http_reply_error(r, status, "invalid_request_error", code, "%s", msg);
}

/* --- request parsing ------------------------------------------------ */

/* RFC 9110's tchar (methods, field names): a table of 256, one load per byte
 * (this runs for every byte of every field name). The set: the visible ASCII
 * characters but the delimiters "(),/:;<=>?@[\]{}. */
static const unsigned char tchar_tab[256] = {
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,   /* 0x00 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,   /* 0x10 */
    0, 1, 0, 1, 1, 1, 1, 1, 0, 0, 1, 1, 0, 1, 1, 0,   /* 0x20 */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0,   /* 0x30 */
    0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,   /* 0x40 */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 1, 1,   /* 0x50 */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,   /* 0x60 */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 0, 1, 0,   /* 0x70 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,   /* 0x80 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,   /* 0x90 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,   /* 0xa0 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,   /* 0xb0 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,   /* 0xc0 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,   /* 0xd0 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,   /* 0xe0 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,   /* 0xf0 */
};

static inline int is_tchar(unsigned char ch)
{
    return tchar_tab[ch];
}

/* Length of the well-formed UTF-8 sequence at s (n bytes left), or 0:
 * no overlong forms, no surrogates, nothing above U+10FFFF. */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];

    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf)
        return n >= 2 && (s[1] & 0xc0) == 0x80 ? 2 : 0;
    if (c >= 0xe0 && c <= 0xef) {
        if (n < 3 || (s[1] & 0xc0) != 0x80 || (s[2] & 0xc0) != 0x80)
            return 0;
        if ((c == 0xe0 && s[1] < 0xa0) || (c == 0xed && s[1] > 0x9f))
            return 0;
        return 3;
    }
    if (c >= 0xf0 && c <= 0xf4) {
        if (n < 4 || (s[1] & 0xc0) != 0x80 || (s[2] & 0xc0) != 0x80
            || (s[3] & 0xc0) != 0x80)
            return 0;
        if ((c == 0xf0 && s[1] < 0x90) || (c == 0xf4 && s[1] > 0x8f))
            return 0;
        return 4;
    }
    return 0;
}

/* The number of bytes from s (n at most) that are printable ASCII (0x20 to
 * 0x7e), 8 at a time: per byte x of a word, the high bit of x - 0x20 is
 * set when x < 0x20, that of x + 1 when x == 0x7f, and x's own when
 * x >= 0x80. A byte borrows or carries into the next one only when it is
 * one of these, so a word with no high bit set is all printable. */
static size_t printable_run(const unsigned char *s, size_t n)
{
    const uint64_t ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
    size_t i = 0;
    uint64_t x;

    while (n - i >= 8) {
        memcpy(&x, s + i, sizeof(x));
        if (((x - ones * 0x20) | (x + ones) | x) & highs)
            break;
        i += 8;
    }
    if (i < n && n >= 8 && n - i < 8) {
        /* The tail in one word that overlaps the last one checked. */
        memcpy(&x, s + n - 8, sizeof(x));
        if (!(((x - ones * 0x20) | (x + ones) | x) & highs))
            return n;
    }
    while (i < n && s[i] >= 0x20 && s[i] < 0x7f)
        i++;
    return i;
}

/* 1 when the n bytes are well-formed UTF-8 without control characters
 * (NUL, CR, DEL...); a tab is allowed when tab_ok. */
static int text_ok(const char *p, size_t n, int tab_ok)
{
    const unsigned char *s = (const unsigned char *)p;
    size_t i = 0, k;

    while (i < n) {
        i += printable_run(s + i, n - i);
        if (i == n)
            break;
        if (s[i] < 0x20 || s[i] == 0x7f) {
            if (!(tab_ok && s[i] == '\t'))
                return 0;
            i++;
            continue;
        }
        if ((k = utf8_seq(s + i, n - i)) == 0)
            return 0;
        i += k;
    }
    return 1;
}

/* Returns NULL, or why the line is refused. */
static const char *parse_request_line(struct http_req *r, char *line, size_t len)
{
    char *sp1, *sp2, *q, *m;

    if (!text_ok(line, len, 0))
        return "request line is not valid UTF-8 or holds control characters";
    sp1 = strchr(line, ' ');
    if (sp1 == NULL || (sp2 = strchr(sp1 + 1, ' ')) == NULL)
        return "malformed request line";
    *sp1 = *sp2 = '\0';
    if (strncmp(sp2 + 1, "HTTP/1.", 7) != 0 || !isdigit((unsigned char)sp2[8])
        || sp2[9] != '\0')
        return "malformed request line";
    r->minor = sp2[8] - '0';
    r->keepalive = r->minor >= 1;
    if (line[0] == '\0' || sp1[1] != '/')
        return "malformed request line";
    for (m = line; *m; m++)
        if (!is_tchar((unsigned char)*m))
            return "malformed request line";
    r->method = line;                   /* the line is r->head */
    r->target = sp1 + 1;
    q = strchr(r->target, '?');
    if (q) {
        *q = '\0';
        r->query = q + 1;
    }
    return NULL;
}

/* Returns NULL, or why the line is refused. */
static const char *parse_header_line(struct http_req *r, char *line, size_t len)
{
    char *colon, *v, *end;
    size_t nlen;

    /* The name: tchars up to the colon (printable ASCII, so text_ok() need
     * only read the value; the NUL at line[len] ends the scan at the
     * latest). A line that fails is judged as a whole, for the same answer
     * as the checks in their order: text, then form. */
    for (nlen = 0; is_tchar((unsigned char)line[nlen]); nlen++)
        ;
    if (nlen == 0 || nlen == len || line[nlen] != ':'
        || !text_ok(line + nlen + 1, len - nlen - 1, 1)) {
        if (!text_ok(line, len, 1))
            return "header line is not valid UTF-8 or holds control characters";
        return "malformed header line";   /* no colon, no name, white space in it */
    }
    colon = line + nlen;
    *colon = '\0';
    v = colon + 1;
    while (*v == ' ' || *v == '\t')
        v++;
    end = line + len;                   /* text_ok: no NUL in the line */
    while (end > v && (end[-1] == ' ' || end[-1] == '\t'))
        *--end = '\0';
    if (r->nhdr == HTTP_HDR_INLINE && r->hdr == r->hdr_in) {
        struct http_header *h = malloc(HTTP_MAX_HEADERS * sizeof(*h));
        if (h == NULL)
            return "out of memory";
        memcpy(h, r->hdr_in, sizeof(r->hdr_in));
        r->hdr = h;
    }
    /* The field keeps the line: its name ends at the colon, its value
     * points into it (no copies). */
    r->hdr[r->nhdr].name = line;
    r->hdr[r->nhdr].nlen = (size_t)(colon - line);
    r->hdr[r->nhdr].value = v;
    r->hmask |= header_bit(line, (size_t)(colon - line));
    {
        int h = known_of(line, (size_t)(colon - line));

        if (h >= 0) {
            if (r->known[h] == 0)
                r->known[h] = (uint8_t)(r->nhdr + 1);
            else
                r->known_rep |= (uint16_t)(1u << h);
        }
    }
    r->nhdr++;
    return NULL;
}

static int body_append(struct http_req *r, struct evbuffer *in, size_t n)
{
    if (r->body == NULL && r->body_in) {
        r->body = r->body_in;
        r->body_cap = r->body_in_cap;
    }
    if (r->body_len + n + 1 > r->body_cap) {
        size_t cap = r->body_cap ? r->body_cap : 1024;
        char *nb;

        while (cap < r->body_len + n + 1)
            cap *= 2;
        if (r->body != NULL && r->body == r->body_in) {
            if ((nb = malloc(cap)) == NULL)     /* out of the request's block */
                return -1;
            memcpy(nb, r->body, r->body_len);
        } else if ((nb = realloc(r->body, cap)) == NULL) {
            return -1;
        }
        r->body = nb;
        r->body_cap = cap;
    }
    evbuffer_remove(in, r->body + r->body_len, n);
    r->body_len += n;
    r->body[r->body_len] = '\0';
    return 0;
}

static void dispatch(struct http_conn *c)
{
    struct http_req *r = c->req;

    /* The handler may take long (upstream time): no deadline now, but
     * keep reading so a hang-up is seen. */
    conn_deadline_stop(c);
    c->state = CONN_HANDLING;
    __atomic_add_fetch(&c->srv->nreqs, 1, __ATOMIC_RELAXED);
    if (r->body == NULL)
        r->body_len = 0;
    c->srv->handler(r, c->srv->arg);
}

/* Every value of header `name` must be the same (a repeated
 * Content-Length that disagrees is how requests get smuggled). */
static int header_unique(const struct http_req *r, enum http_known h)
{
    const char *first = NULL, *name = known_names[h];
    size_t i, n = strlen(name);

    if (!(r->known_rep & (1u << h)))
        return 1;                          /* none, or just one */
    for (i = 0; i < r->nhdr; i++) {
        if (!header_is(&r->hdr[i], name, n))
            continue;
        if (first && strcmp(first, r->hdr[i].value) != 0)
            return 0;
        first = r->hdr[i].value;
    }
    return 1;
}

/* Decides how the body comes, after the head. Returns -1 when c failed. */
static int head_done(struct http_conn *c)
{
    struct http_req *r = c->req;
    const char *te = http_req_known(r, HTTP_H_TRANSFER_ENCODING);
    const char *cl = http_req_known(r, HTTP_H_CONTENT_LENGTH);
    const char *conn = http_req_known(r, HTTP_H_CONNECTION);
    const char *expect = http_req_known(r, HTTP_H_EXPECT);
    size_t max = c->srv->lim.max_body_bytes;

    if (conn) {
        if (strcasecmp(conn, "close") == 0)
            r->keepalive = 0;
        else if (strcasecmp(conn, "keep-alive") == 0)
            r->keepalive = 1;
    }
    if (r->minor == 1 && http_req_known(r, HTTP_H_HOST) == NULL) {
        conn_fail(c, 400, "bad_request", "missing Host header");
        return -1;
    }
    if (te && cl) {
        conn_fail(c, 400, "bad_request",
                  "both Transfer-Encoding and Content-Length");
        return -1;
    }
    if (!header_unique(r, HTTP_H_CONTENT_LENGTH)
        || !header_unique(r, HTTP_H_TRANSFER_ENCODING)) {
        conn_fail(c, 400, "bad_request",
                  "conflicting Content-Length or Transfer-Encoding headers");
        return -1;
    }
    if (te) {
        if (strcasecmp(te, "chunked") != 0) {
            conn_fail(c, 501, "not_implemented", "unsupported Transfer-Encoding");
            return -1;
        }
        c->state = CONN_READ_CHUNK_SIZE;
    } else if (cl) {
        unsigned long long n = 0;
        const char *d = cl;

        /* Digits only, at least one, within unsigned long long (what
         * strtoull() took, without its sign and white space). */
        for (; *d >= '0' && *d <= '9'; d++) {
            if (n > (ULLONG_MAX - (unsigned)(*d - '0')) / 10)
                break;
            n = n * 10 + (unsigned)(*d - '0');
        }
        if (d == cl || *d != '\0') {
            conn_fail(c, 400, "bad_request", "malformed Content-Length");
            return -1;
        }
        if (n > max) {
            char msg[128];
            snprintf(msg, sizeof(msg), "request body exceeds %zu bytes", max);
            conn_fail(c, 413, "request_too_large", msg);
            return -1;
        }
        r->chunk_left = (size_t)n;
        c->state = CONN_READ_BODY;
    } else {
        dispatch(c);
        return 0;
    }
    if (expect && strcasecmp(expect, "100-continue") == 0 && r->minor >= 1) {
        evbuffer_add_printf(bufferevent_get_output(c->bev),
                            "HTTP/1.1 100 Continue\r\n\r\n");
        conn_flush(c);
    }
    return 0;
}

/*
 * Takes one line (ended by LF or CRLF) off `in` once it is complete and at
 * most `max` bytes long, without its end, as a new NUL-terminated string
 * (*len excludes the end; the line itself may hold NUL bytes, which the
 * callers refuse). Returns 1 with the line, 0 when it is not complete yet,
 * -1 when it is (or will be) longer than max. The search resumes where the
 * last one stopped, so a line that trickles in costs linear time, and a
 * line over the limit is never copied.
 */
static int take_line(struct http_conn *c, struct evbuffer *in, size_t max,
                     char **line, size_t *len, size_t *raw)
{
    size_t avail = evbuffer_get_length(in), n;
    struct evbuffer_ptr start, pos;
    char *l;
    const unsigned char *head;

    pos.pos = -1;
    if (c->line_scan > avail)
        c->line_scan = 0;
    if (c->line_scan < avail
        && evbuffer_ptr_set(in, &start, c->line_scan, EVBUFFER_PTR_SET) == 0)
        pos = evbuffer_search(in, "\n", 1, &start);
    if (pos.pos < 0) {
        c->line_scan = avail;
        return avail > max ? -1 : 0;
    }
    n = (size_t)pos.pos;
    if (n > max)
        return -1;
    if ((l = malloc(n + 1)) == NULL)
        return -1;
    /* One drain for the line and its '\n' (evbuffer_remove would copy out
     * and drain, then a second drain: each drain runs the callbacks). The
     * head is usually in one chain, so the pullup moves nothing. */
    if ((head = evbuffer_pullup(in, (ev_ssize_t)n + 1)) == NULL) {
        free(l);
        return -1;
    }
    memcpy(l, head, n);
    evbuffer_drain(in, n + 1);
    c->line_scan = 0;
    *raw = n + 1;
    if (n > 0 && l[n - 1] == '\r')
        n--;
    l[n] = '\0';
    *line = l;
    *len = n;
    return 1;
}

/* A line of the request head or trailer, counted against the head limit. */
static int read_line(struct http_conn *c, struct evbuffer *in, char **line,
                     size_t *len)
{
    size_t max = c->srv->lim.max_header_bytes, raw;
    int rc;

    if (c->head_bytes >= max)
        return -1;
    rc = take_line(c, in, max - c->head_bytes, line, len, &raw);
    if (rc == 1)
        c->head_bytes += raw;
    return rc;
}

/* Reads body bytes into the request; returns -1 when c was freed. */
static int read_body(struct http_conn *c, struct evbuffer *in)
{
    struct http_req *r = c->req;
    size_t n = evbuffer_get_length(in);

    if (n > r->chunk_left)
        n = r->chunk_left;
    if (n == 0)
        return 0;
    c->line_scan = 0;
    if (body_append(r, in, n) < 0) {
        conn_free(c);
        return -1;
    }
    r->chunk_left -= n;
    return 0;
}

/*
 * A request head that is whole in the input's first chain, taken in one
 * block with the request itself and room for what follows the head in that
 * chain (usually the body, see body_append): one allocation, one copy and
 * one drain for all its lines, which are then parsed
 * in place by the same steps as the line-by-line path (read_line), in the
 * same order, so the answers are the same. Returns 0 when the head is not
 * whole there, or is one the line-by-line path should judge (a stray
 * empty line first, a line or the head over the limit, too many fields);
 * 1 when the head was taken (parsed, the body next, or dispatched: see
 * c->state); -1 when the request failed (c answered or freed: hands off).
 */
static int head_whole(struct http_conn *c, struct evbuffer *in)
{
    struct evbuffer_iovec v;
    const char *data, *nl;
    size_t avail, max = c->srv->lim.max_header_bytes, at = 0, n, nlines = 0, room, i;
    size_t ends[HTTP_MAX_HEADERS + 2];      /* each line's LF, the empty line's last */
    struct http_req *r;
    const char *why;
    char *head, *line;

    if (evbuffer_peek(in, -1, NULL, &v, 1) < 1)
        return 0;
    data = v.iov_base;
    avail = v.iov_len;
    if (avail == 0 || data[0] == '\r' || data[0] == '\n')
        return 0;
    for (;;) {
        if (at >= max || (nl = memchr(data + at, '\n', avail - at)) == NULL)
            return 0;
        n = (size_t)(nl - (data + at));
        if (n > max - at)
            return 0;
        ends[nlines] = at + n;                /* nlines <= HTTP_MAX_HEADERS + 1 */
        at += n + 1;
        if (n == 0 || (n == 1 && nl[-1] == '\r'))
            break;                            /* the empty line: the end */
        if (++nlines > HTTP_MAX_HEADERS + 1)
            return 0;
    }
    room = avail - at < HTTP_BODY_INLINE ? avail - at : HTTP_BODY_INLINE;
    if ((r = evmem_block(sizeof(*r) + at + room + 1)) == NULL)
        return 0;                             /* the other path says why */
    req_init(r, c);
    head = (char *)(r + 1);
    memcpy(head, data, at);
    evbuffer_drain(in, at);
    c->line_scan = 0;
    c->head_bytes = at;
    c->req = r;
    r->head = head;
    r->head_whole = 1;
    if (room > 0) {
        r->body_in = head + at;
        r->body_in_cap = room + 1;
    }
    for (i = 0, line = head; ; line = head + ends[i++] + 1) {
        n = (size_t)(head + ends[i] - line);  /* the LFs found above: no search */
        if (n > 0 && line[n - 1] == '\r')
            n--;
        line[n] = '\0';
        if (n == 0)
            break;
        why = line == head ? parse_request_line(r, line, n) : parse_header_line(r, line, n);
        if (why) {
            conn_fail(c, 400, "bad_request", why);
            return -1;
        }
    }
    if (head_done(c) < 0)
        return -1;
    return 1;
}

/* Runs the read state machine as far as the buffered input allows. */
static void conn_process(struct http_conn *c)
{
    struct evbuffer *in = bufferevent_get_input(c->bev);
    struct http_req *r;
    const char *why;
    char *line;
    size_t len;
    int rc;

    for (;;) {
        switch (c->state) {
        case CONN_READ_HEAD:
            if (c->srv->stopping && c->req == NULL) {
                conn_free(c);
                return;
            }
            /* The first byte of a request starts its deadline. */
            if (!c->in_req && evbuffer_get_length(in) > 0) {
                conn_deadline(c, c->srv->lim.client_timeout_ms);
                c->in_req = 1;
            }
            if (c->req == NULL && c->head_bytes == 0) {
                rc = head_whole(c, in);
                if (rc < 0 || (rc > 0 && c->state == CONN_HANDLING))
                    return;
                if (rc > 0)
                    continue;
            }
            rc = read_line(c, in, &line, &len);
            if (rc <= 0) {
                if (rc < 0)
                    conn_fail(c, 431, "headers_too_large",
                              "request headers too large");
                return;
            }
            if (c->req == NULL) {
                if (len == 0) {            /* stray CRLF between requests */
                    free(line);
                    c->head_bytes = 0;
                    continue;
                }
                c->req = req_new(c);
                if (c->req == NULL) {
                    free(line);
                    conn_free(c);
                    return;
                }
                c->req->head = line;       /* freed with the request */
                why = parse_request_line(c->req, line, len);
                if (why) {
                    conn_fail(c, 400, "bad_request", why);
                    return;
                }
                continue;
            }
            if (len == 0) {
                free(line);
                if (head_done(c) < 0 || c->state == CONN_HANDLING)
                    return;
                continue;
            }
            if (c->req->nhdr == HTTP_MAX_HEADERS) {
                char msg[64];
                free(line);
                snprintf(msg, sizeof(msg), "more than %d header fields",
                         HTTP_MAX_HEADERS);
                conn_fail(c, 431, "too_many_headers", msg);
                return;
            }
            why = parse_header_line(c->req, line, len);
            if (why) {
                free(line);         /* else the request keeps it */
                conn_fail(c, 400, "bad_request", why);
                return;
            }
            continue;

        case CONN_READ_BODY:
            r = c->req;
            if (read_body(c, in) < 0)
                return;
            if (r->chunk_left)
                return;
            dispatch(c);
            return;

        case CONN_READ_CHUNK_SIZE: {
            char *end;
            unsigned long long n;
            size_t raw;

            r = c->req;
            rc = take_line(c, in, HTTP_CHUNK_LINE_MAX, &line, &len, &raw);
            if (rc <= 0) {
                if (rc < 0)
                    conn_fail(c, 400, "bad_request", "malformed chunk size");
                return;
            }
            errno = 0;
            n = strtoull(line, &end, 16);
            while (*end == ' ' || *end == '\t')
                end++;
            if (!isxdigit((unsigned char)line[0]) || errno || strlen(line) != len
                || (*end != '\0' && *end != ';')) {
                free(line);
                conn_fail(c, 400, "bad_request", "malformed chunk size");
                return;
            }
            free(line);
            if (n > c->srv->lim.max_body_bytes
                || r->body_len + n > c->srv->lim.max_body_bytes) {
                char msg[128];
                snprintf(msg, sizeof(msg), "request body exceeds %zu bytes",
                         c->srv->lim.max_body_bytes);
                conn_fail(c, 413, "request_too_large", msg);
                return;
            }
            r->chunk_left = (size_t)n;
            c->state = n ? CONN_READ_CHUNK_DATA : CONN_READ_TRAILER;
            continue;
        }

        case CONN_READ_CHUNK_DATA:
            r = c->req;
            if (read_body(c, in) < 0)
                return;
            if (r->chunk_left)
                return;
            if (evbuffer_get_length(in) < 2)
                return;
            {
                char crlf[2];
                evbuffer_remove(in, crlf, 2);
                c->line_scan = 0;
                if (crlf[0] != '\r' || crlf[1] != '\n') {
                    conn_fail(c, 400, "bad_request",
                              "malformed chunk: no CRLF after its data");
                    return;
                }
            }
            c->state = CONN_READ_CHUNK_SIZE;
            continue;

        case CONN_READ_TRAILER:
            rc = read_line(c, in, &line, &len);
            if (rc <= 0) {
                if (rc < 0)
                    conn_fail(c, 431, "headers_too_large", "trailer too large");
                return;
            }
            free(line);
            if (len == 0) {
                dispatch(c);
                return;
            }
            continue;

        case CONN_LINGER:
            evbuffer_drain(in, evbuffer_get_length(in));
            c->line_scan = 0;
            return;
        case CONN_HANDLING:
        case CONN_FLUSHING:
            return;
        }
    }
}

/* --- connection events ---------------------------------------------- */

/* What a client may have queued while its request is handled. */
static size_t conn_input_cap(const struct http_server *s)
{
    return s->lim.max_header_bytes + s->lim.max_body_bytes + 4096;
}

/* A plain connection's socket is readable: one readv into the input
 * buffer (no FIONREAD first), then the state machine. The end of the
 * stream or an error closes the connection as the bufferevent would. */
static void conn_recv_cb(evutil_socket_t fd, short what, void *arg)
{
    struct http_conn *c = arg;
    struct evbuffer *in = bufferevent_get_input(c->bev);
    size_t len = evbuffer_get_length(in), cap = conn_input_cap(c->srv);
    ssize_t got;

    (void)what;
    if (len >= cap) {                  /* resumed by the next request */
        conn_read_off(c);
        return;
    }
    got = sock_read_into(in, fd, cap - len < HTTP_READ_MAX ? cap - len : HTTP_READ_MAX);
    if (got < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
            return;
        if (errno == ENOMEM) {
            conn_free(c);
            return;
        }
        conn_event_cb(c->bev, BEV_EVENT_READING | BEV_EVENT_ERROR, c);
        return;
    }
    if (got == 0) {
        conn_event_cb(c->bev, BEV_EVENT_READING | BEV_EVENT_EOF, c);
        return;
    }
    conn_process(c);
}

static void conn_read_cb(struct bufferevent *bev, void *arg)
{
    (void)bev;
    conn_process(arg);
}

static void conn_write_cb(struct bufferevent *bev, void *arg)
{
    struct http_conn *c = arg;

    (void)bev;
    /* See conn_flush(); no call (an event_del) when it is off already, as
     * after a reply the socket took at once. */
    if (evbuffer_get_length(bufferevent_get_output(c->bev)) == 0
        && (bufferevent_get_enabled(c->bev) & EV_WRITE))
        bufferevent_disable(c->bev, EV_WRITE);
    if (c->state == CONN_HANDLING) {
        struct http_req *r = c->req;
        if (r && r->drain_cb) {
            http_req_cb cb = r->drain_cb;
            r->drain_cb = NULL;
            cb(r, r->drain_arg);
        }
        return;
    }
    if (c->state != CONN_FLUSHING)
        return;
    if (evbuffer_get_length(bufferevent_get_output(c->bev)) > 0)
        return;
    if (c->close_after && c->linger) {
        /* The client may still be sending the body we refused: read and
         * drop it for a moment so it sees our answer, not a reset. The
         * moment is a deadline too: a trickle does not stretch it. */
        c->state = CONN_LINGER;
        shutdown(bufferevent_getfd(c->bev), SHUT_WR);
        conn_deadline(c, HTTP_LINGER_MS);
        if (c->tls)
            bufferevent_setwatermark(c->bev, EV_READ, 0, 0);
        conn_read_on(c);
        conn_process(c);
        return;
    }
    if (c->close_after) {
        conn_free(c);
        return;
    }
    /* Next request on this keep-alive connection: it must start within
     * client_timeout; its own deadline starts with its first byte. */
    c->state = CONN_READ_HEAD;
    c->head_bytes = 0;
    c->line_scan = 0;
    c->in_req = 0;
    conn_deadline(c, c->srv->lim.client_timeout_ms);
    conn_read_on(c);
    if (evbuffer_get_length(bufferevent_get_input(c->bev)) > 0)
        conn_process(c);
}

/* Either a request too slow to arrive in full (408), a connection that
 * never sent one, or the end of a linger. */
static void conn_deadline_cb(evutil_socket_t fd, short what, void *arg)
{
    struct http_conn *c = arg;
    char msg[96];
    int64_t now;

    (void)fd;
    (void)what;
    c->timer_ms = 0;
    if (c->expire_ms == 0)
        return;
    now = mono_ms();
    if (now < c->expire_ms) {                 /* moved later meanwhile */
        conn_timer_arm(c, now, c->expire_ms);
        return;
    }
    c->expire_ms = 0;
    if (c->state == CONN_LINGER) {
        conn_free(c);
        return;
    }
    if (c->state == CONN_HANDLING || c->state == CONN_FLUSHING)
        return;
    if (c->req == NULL && evbuffer_get_length(bufferevent_get_input(c->bev)) == 0) {
        if (c->tls && !c->tls_done)
            tls_fail_count(TLS_FAIL_TIMEOUT);
        conn_free(c);
        return;
    }
    conn_read_off(c);
    snprintf(msg, sizeof(msg), "request not received within client_timeout (%lld ms)",
             (long long)c->srv->lim.client_timeout_ms);
    conn_fail(c, 408, "request_timeout", msg);
}

/* A handshake failed: count why; plain HTTP gets a plain answer. */
static void tls_failed(struct http_conn *c, short what)
{
    static const char plain[] =
        "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n"
        "Content-Length: 130\r\nConnection: close\r\n\r\n"
        "{\"error\":{\"message\":\"plain HTTP sent to a TLS port: use https://\","
        "\"type\":\"invalid_request_error\",\"code\":\"plain_http_to_tls_port\"}}";
    unsigned long e, first = 0;
    enum tls_fail f;
    evutil_socket_t fd = bufferevent_getfd(c->bev);

    while ((e = bufferevent_get_openssl_error(c->bev)) != 0)
        if (first == 0)
            first = e;
    f = (what & BEV_EVENT_ERROR) || first ? tls_fail_classify(first) : TLS_FAIL_CLOSED;
    if (f == TLS_FAIL_CLOSED && (what & BEV_EVENT_ERROR) && EVUTIL_SOCKET_ERROR() == 0)
        f = TLS_FAIL_OTHER;
    if (first == 0 && (what & BEV_EVENT_EOF))
        f = TLS_FAIL_CLOSED;
    tls_fail_count(f);
    if (log_enabled(LOGL_DEBUG))
        log_debug("client %s: TLS handshake failed: %s (%s)", c->peer[0] ? c->peer : "-",
                  tls_fail_name(f), first ? ERR_reason_error_string(first) : "closed");
    if (f == TLS_FAIL_PLAIN_HTTP && fd >= 0) {
        char junk[4096];
        int i;
        /* No TLS alert went out (OpenSSL sends none for this): answer in
         * the clear, then read what is left of the request so the close
         * is a FIN, not a reset that could beat the answer. */
        (void)!send(fd, plain, sizeof(plain) - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
        shutdown(fd, SHUT_WR);
        for (i = 0; i < 16 && recv(fd, junk, sizeof(junk), MSG_DONTWAIT) > 0; i++)
            ;
    }
}

static void conn_event_cb(struct bufferevent *bev, short what, void *arg)
{
    struct http_conn *c = arg;

    (void)bev;
    if (what & BEV_EVENT_CONNECTED) {
        c->tls_done = 1;
        return;
    }
    if (c->tls && !c->tls_done) {
        if (what & BEV_EVENT_TIMEOUT)
            tls_fail_count(TLS_FAIL_TIMEOUT);
        else
            tls_failed(c, what);
        conn_free(c);
        return;
    }
    if ((what & BEV_EVENT_TIMEOUT) && (what & BEV_EVENT_READING)
        && c->req && c->state != CONN_HANDLING && c->state != CONN_FLUSHING
        && c->state != CONN_LINGER) {
        /* Slow client in the middle of a request: tell it why. */
        conn_read_off(c);
        conn_fail(c, 408, "request_timeout", "request not received in time");
        return;
    }
    conn_free(c);
}

/* Frees the connection; a request the handler still owns is detached and
 * its owner told through the close callback. */
static void conn_free(struct http_conn *c)
{
    struct http_server *s = c->srv;
    struct http_req *r = c->req;

    if (r) {
        c->req = NULL;
        if (c->state == CONN_HANDLING) {
            r->conn = NULL;
            if (r->close_cb)
                r->close_cb(r, r->close_arg);
        } else {
            req_free(r);
        }
    }
    if (c->prev)
        c->prev->next = c->next;
    else
        s->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    __atomic_sub_fetch(&s->nconns, 1, __ATOMIC_RELAXED);
    if (c->deadline)
        event_free(c->deadline);
    event_del(&c->flush_ev);
    sock_reader_off(&c->rd, NULL);
    bufferevent_free(c->bev);
    free(c);
}

static int sockaddr_loopback(const struct sockaddr *sa)
{
    if (sa->sa_family == AF_UNIX)
        return 1;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        return (ntohl(in->sin_addr.s_addr) >> 24) == 127;
    }
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        const unsigned char *b = in6->sin6_addr.s6_addr;
        if (IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr))
            return 1;
        return IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr) && b[12] == 127;
    }
    return 0;
}

/* The loop's time (clock.h): one clock read per wake-up. */
static int64_t mono_ms(void)
{
    return gw_now_ms();
}

/* Over max_conns: the socket is closed at once, logged at most every
 * HTTP_LOG_EVERY_MS with how many were refused meanwhile. */
static void refuse(struct http_server *s, evutil_socket_t fd)
{
    int64_t now = mono_ms();

    evutil_closesocket(fd);
    s->refused++;
    __atomic_add_fetch(&s->refused_total, 1, __ATOMIC_RELAXED);
    if (s->refused_logged_ms && now - s->refused_logged_ms < HTTP_LOG_EVERY_MS)
        return;
    log_warn("connection limit (%zu) reached: closed %llu new connection(s)",
             s->max_conns, (unsigned long long)s->refused);
    s->refused = 0;
    s->refused_logged_ms = now;
}

static int conn_new(struct http_server *s, evutil_socket_t fd,
                    const struct sockaddr *sa, int loopback, int tls)
{
    struct http_conn *c;
    struct timeval tv;
    int one = 1;

    if (s->nconns >= s->max_conns) {
        refuse(s, fd);
        return -1;
    }
    c = calloc(1, sizeof(*c));
    if (c == NULL) {
        evutil_closesocket(fd);
        return -1;
    }
    evutil_make_socket_nonblocking(fd);
    if (tls) {
        SSL *ssl = tls_current_new_ssl();
        if (ssl == NULL) {
            evutil_closesocket(fd);
            free(c);
            return -1;
        }
        c->tls = 1;
        c->bev = bufferevent_openssl_socket_new(s->base, fd, ssl, BUFFEREVENT_SSL_ACCEPTING,
                                                BEV_OPT_CLOSE_ON_FREE);
        if (c->bev == NULL)
            SSL_free(ssl);
        else
            bufferevent_openssl_set_allow_dirty_shutdown(c->bev, 1);
    } else {
        c->bev = bufferevent_socket_new(s->base, fd, BEV_OPT_CLOSE_ON_FREE);
    }
    if (c->bev == NULL) {
        evutil_closesocket(fd);
        free(c);
        return -1;
    }
    event_assign(&c->flush_ev, s->base, -1, 0, conn_flush_cb, c);
    c->fd = fd;
    event_assign(&c->rd.ev, s->base, fd, EV_READ | EV_PERSIST, conn_recv_cb, c);
    c->deadline = evtimer_new(s->base, conn_deadline_cb, c);
    if (c->deadline == NULL) {
        bufferevent_free(c->bev);
        free(c);
        return -1;
    }
    if (sa->sa_family == AF_INET || sa->sa_family == AF_INET6)
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (sa->sa_family == AF_INET || sa->sa_family == AF_INET6) {
        char ip[INET6_ADDRSTRLEN] = "?";
        int port;
        if (sa->sa_family == AF_INET) {
            const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
            evutil_inet_ntop(AF_INET, &in->sin_addr, ip, sizeof(ip));
            port = ntohs(in->sin_port);
        } else {
            const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
            evutil_inet_ntop(AF_INET6, &in6->sin6_addr, ip, sizeof(ip));
            port = ntohs(in6->sin6_port);
        }
        snprintf(c->peer, sizeof(c->peer), "%s:%d", ip, port);
    }
    c->srv = s;
    c->loopback = loopback;
    c->next = s->conns;
    if (s->conns)
        s->conns->prev = c;
    s->conns = c;
    __atomic_add_fetch(&s->nconns, 1, __ATOMIC_RELAXED);
    bufferevent_setcb(c->bev, conn_read_cb, conn_write_cb, conn_event_cb, c);
    /* Cap what a client may queue while its request is handled (plain
     * connections: conn_recv_cb). */
    if (tls)
        bufferevent_setwatermark(c->bev, EV_READ, 0, conn_input_cap(s));
    /* Reading has the connection's deadline; the write timeout (a client
     * that does not read its answer) is armed only while output waits. */
    tv.tv_sec = s->lim.client_timeout_ms / 1000;
    tv.tv_usec = (s->lim.client_timeout_ms % 1000) * 1000;
    bufferevent_set_timeouts(c->bev, NULL, &tv);
    /* A connection must bring its first request within client_timeout. */
    conn_deadline(c, s->lim.client_timeout_ms);
    conn_read_on(c);                            /* EV_WRITE: see conn_flush() */
    return 0;
}

static void accept_cb(struct evconnlistener *lev, evutil_socket_t fd,
                      struct sockaddr *sa, int salen, void *arg)
{
    struct http_server *s = arg;
    int loopback = 0, tls = 0;
    size_t i;

    (void)salen;
    for (i = 0; i < s->nlev; i++)
        if (s->lev[i] == lev) {
            loopback = s->lev_loopback[i];
            tls = s->lev_tls[i];
        }
    conn_new(s, fd, sa, loopback, tls);
}

static void resume_cb(evutil_socket_t fd, short what, void *arg)
{
    struct http_server *s = arg;
    size_t i;

    (void)fd;
    (void)what;
    for (i = 0; i < s->nlev; i++)
        evconnlistener_enable(s->lev[i]);
}

/* accept() failed. Out of descriptors or memory would fail again at once
 * (the listening socket stays readable): rest the listeners a moment
 * instead of spinning. */
static void accept_error_cb(struct evconnlistener *lev, void *arg)
{
    struct http_server *s = arg;
    int err = EVUTIL_SOCKET_ERROR();
    int64_t now = mono_ms();
    struct timeval tv = { 0, HTTP_ACCEPT_PAUSE_MS * 1000 };
    size_t i;

    (void)lev;
    if (err != EMFILE && err != ENFILE && err != ENOBUFS && err != ENOMEM)
        return;
    if (!s->accept_err_logged_ms || now - s->accept_err_logged_ms >= HTTP_LOG_EVERY_MS) {
        log_warn("accept: %s: pausing new connections for %d ms (%zu open)",
                 strerror(err), HTTP_ACCEPT_PAUSE_MS, s->nconns);
        s->accept_err_logged_ms = now;
    }
    if (s->resume == NULL)
        return;
    for (i = 0; i < s->nlev; i++)
        evconnlistener_disable(s->lev[i]);
    evtimer_add(s->resume, &tv);
}

/* --- server --------------------------------------------------------- */

/* HTTP_MAX_CONNS, or fewer when descriptors are short: each client may
 * need an upstream connection too, and logs, Redis and the listeners need
 * a few, so clients get half of what is left after 32. */
static size_t conn_cap(void)
{
    struct rlimit rl;
    size_t cap = HTTP_MAX_CONNS;

    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY) {
        size_t fds = (size_t)rl.rlim_cur;
        size_t n = fds > 34 ? (fds - 32) / 2 : 1;
        if (n < cap)
            cap = n;
    }
    return cap;
}

struct http_server *http_server_new(struct event_base *base, http_handler h,
                                    void *arg)
{
    struct http_server *s = calloc(1, sizeof(*s));

    if (s == NULL)
        return NULL;
    s->base = base;
    s->handler = h;
    s->arg = arg;
    s->lim = default_limits;
    s->max_conns = conn_cap();
    s->resume = evtimer_new(base, resume_cb, s);
    if (s->resume == NULL) {
        free(s);
        return NULL;
    }
    return s;
}

void http_server_set_limits(struct http_server *s, const struct http_limits *l)
{
    s->lim = *l;
}

void http_server_set_reuseport(struct http_server *s, int on)
{
    s->reuseport = on;
}

void http_server_set_max_connections(struct http_server *s, size_t n)
{
    s->max_conns = n ? n : 1;
}

static void sockaddr_name(const struct sockaddr *sa, char *buf, size_t len)
{
    char ip[INET6_ADDRSTRLEN] = "?";

    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        evutil_inet_ntop(AF_INET6, &in6->sin6_addr, ip, sizeof(ip));
        snprintf(buf, len, "[%s]:%d", ip, ntohs(in6->sin6_port));
    } else {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        evutil_inet_ntop(AF_INET, &in->sin_addr, ip, sizeof(ip));
        snprintf(buf, len, "%s:%d", ip, ntohs(in->sin_port));
    }
}

static int listen_on(struct http_server *s, const struct sockaddr_storage *ss,
                     int sslen, const char *addr, int tls, char *err, size_t errlen)
{
    struct sockaddr_storage bound;
    socklen_t blen = sizeof(bound);
    struct evconnlistener *lev;
    unsigned flags = LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_EXEC;

    if (s->reuseport)
        flags |= LEV_OPT_REUSEABLE_PORT;
    lev = evconnlistener_new_bind(s->base, accept_cb, s, flags, 1024,
                                  (const struct sockaddr *)ss, sslen);
    if (lev == NULL) {
        snprintf(err, errlen, "cannot listen on %s: %s", addr, strerror(errno));
        return -1;
    }
    evconnlistener_set_error_cb(lev, accept_error_cb);
    memset(&bound, 0, sizeof(bound));
    if (getsockname(evconnlistener_get_fd(lev), (struct sockaddr *)&bound, &blen) < 0)
        memcpy(&bound, ss, sizeof(bound));
    s->lev_loopback[s->nlev] = sockaddr_loopback((struct sockaddr *)&bound);
    s->lev_addr[s->nlev] = bound;
    s->lev_tls[s->nlev] = tls;
    s->lev[s->nlev++] = lev;
    return 0;
}

int http_server_listen(struct http_server *s, const char *addr,
                       char *err, size_t errlen)
{
    return http_server_listen_tls(s, addr, 0, err, errlen);
}

int http_server_listen_tls(struct http_server *s, const char *addr, int tls,
                           char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    int sslen = sizeof(ss);

    if (s->nlev == HTTP_MAX_LISTENERS) {
        snprintf(err, errlen, "too many listeners");
        return -1;
    }
    memset(&ss, 0, sizeof(ss));
    if (evutil_parse_sockaddr_port(addr, (struct sockaddr *)&ss, &sslen) < 0) {
        snprintf(err, errlen, "bad listen address \"%s\"", addr);
        return -1;
    }
    return listen_on(s, &ss, sslen, addr, tls, err, errlen);
}

int http_server_listen_like(struct http_server *s, const struct http_server *first,
                            char *err, size_t errlen)
{
    size_t i;

    for (i = 0; i < first->nlev; i++) {
        const struct sockaddr_storage *ss = &first->lev_addr[i];
        socklen_t len = ss->ss_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                                  : sizeof(struct sockaddr_in);
        char name[INET6_ADDRSTRLEN + 8] = "?";

        if (s->nlev == HTTP_MAX_LISTENERS) {
            snprintf(err, errlen, "too many listeners");
            return -1;
        }
        sockaddr_name((const struct sockaddr *)ss, name, sizeof(name));
        if (listen_on(s, ss, len, name, first->lev_tls[i], err, errlen) < 0)
            return -1;
    }
    return 0;
}

int http_server_adopt(struct http_server *s, int fd)
{
    struct sockaddr_storage local;
    socklen_t len = sizeof(local);

    memset(&local, 0, sizeof(local));
    if (getsockname(fd, (struct sockaddr *)&local, &len) < 0) {
        evutil_closesocket(fd);
        return -1;
    }
    return conn_new(s, fd, (struct sockaddr *)&local,
                    sockaddr_loopback((struct sockaddr *)&local), 0);
}

void http_server_stop(struct http_server *s)
{
    struct http_conn *c, *next;
    size_t i;

    s->stopping = 1;
    for (i = 0; i < s->nlev; i++)
        evconnlistener_free(s->lev[i]);
    s->nlev = 0;
    for (c = s->conns; c; c = next) {
        next = c->next;
        if (c->state == CONN_READ_HEAD && c->req == NULL)
            conn_free(c);
    }
}

size_t http_server_connections(const struct http_server *s)
{
    return __atomic_load_n(&s->nconns, __ATOMIC_RELAXED);
}

size_t http_server_requests(const struct http_server *s)
{
    return __atomic_load_n(&s->nreqs, __ATOMIC_RELAXED);
}

size_t http_server_max_connections(const struct http_server *s) { return s->max_conns; }

uint64_t http_server_refused(const struct http_server *s)
{
    return __atomic_load_n(&s->refused_total, __ATOMIC_RELAXED);
}

int http_server_listener_port(const struct http_server *s, size_t i)
{
    const struct sockaddr_storage *ss;

    if (i >= s->nlev)
        return -1;
    ss = &s->lev_addr[i];
    if (ss->ss_family == AF_INET6)
        return ntohs(((const struct sockaddr_in6 *)ss)->sin6_port);
    return ntohs(((const struct sockaddr_in *)ss)->sin_port);
}

int http_req_tls(const struct http_req *r)
{
    return r->conn ? r->conn->tls : 0;
}

int http_req_tls_subject(const struct http_req *r, char *buf, size_t len)
{
    buf[0] = '\0';
    if (r->conn == NULL || !r->conn->tls)
        return 0;
    return tls_peer_subject(bufferevent_openssl_get_ssl(r->conn->bev), buf, len);
}

int http_req_local_loopback(const struct http_req *r)
{
    return r->conn ? r->conn->loopback : 0;
}

void http_server_free(struct http_server *s)
{
    size_t i;

    if (s == NULL)
        return;
    for (i = 0; i < s->nlev; i++)
        evconnlistener_free(s->lev[i]);
    while (s->conns)
        conn_free(s->conns);
    if (s->resume)
        event_free(s->resume);
    free(s);
}
