/*
 * upstream_h1.c -- a small HTTP/1.1 client for http:// and https://
 * upstreams, given by IP address or host name, on libevent and OpenSSL,
 * with a keep-alive pool.
 *
 * Why: libcurl costs about half of a proxied request's CPU (its socket
 * callback churns epoll registrations, it polls pooled connections, builds
 * and parses heads in general-purpose ways) and 20 KB per open stream.
 * Upstreams on a LAN or loopback are mostly plain HTTP/1.1, so those go
 * here: nginx's model. curl keeps proxies from the environment, SMTP and
 * the few other cases upstream.c lists.
 *
 * A host name is looked up through the loop's resolver (resolve.c: evdns,
 * a cache with TTLs, never a blocking call) before the connect; the
 * lookup counts against the connect timeout. A failed connect goes on to
 * the name's next address. Connections, pooled ones and TLS peers are
 * keyed by the address, so when a name moves new connections go to the
 * new address while pooled ones to the old one live out their idle time.
 *
 * https:// runs on OpenSSL directly (SSL_read / SSL_write on the socket,
 * driven by the connection's own read and write events; see the TLS part
 * below the response parser). Each distinct (address, name, ca_file, verify) is a "TLS
 * peer" with its own cached SSL_SESSION, so new connections resume; the
 * SSL_CTX per (ca_file, verify) is built on first use and rebuilt when
 * the file changes. Certificates are verified by default against the
 * system CA store or ca_file, the name checked with
 * X509_VERIFY_PARAM_set1_host (or _ip for an address), SNI sent for a
 * name: what the curl path did with the same hosts.json `tls`. Idle
 * connections are pooled per TLS peer, so hosts with different TLS
 * settings never share one.
 *
 * A transfer writes one prebuilt request head plus a reference to the
 * caller's body, parses the response head in place into the shared
 * "name\0value\0" form, and passes the body on as it comes: Content-Length,
 * chunked (decoded, trailers dropped; the whole chunks one read brought
 * passed on in one call) or up to the close. When a response
 * ends cleanly the connection goes back to the idle pool (keyed by the
 * peer's address, LRU-capped, closed after H1_IDLE_TIMEOUT_S or when the
 * peer speaks or hangs up). As curl does, a request that meets a dead
 * pooled connection before any response byte is sent again once on a new
 * connection.
 *
 * Connections read their socket with their own read event: plain ones one
 * readv per readable event (sockread.h: no ioctl(FIONREAD) before each
 * read as a socket bufferevent makes; between two chunks of a chunked body
 * with nothing buffered, one recv into a stack buffer whose whole chunks
 * go on from there: recv_chunks), TLS ones every record the socket
 * holds (SSL_read while the SSL has bytes). The bufferevent connects and
 * holds the input; plain requests are written through it, TLS ones with
 * SSL_write at once (a write event only when the socket is full). The
 * pool's idle timeout is one timer, for its least recently used
 * connection, plain and TLS alike.
 *
 * Record buffers: a TLS connection's SSL holds ~33 KB of them (a read and
 * a write buffer). SSL_MODE_RELEASE_BUFFERS frees them after each write
 * and each drained read, which costs ~1.3k instructions a request (setup,
 * malloc and free of 17 KB blocks each time) and saves that memory on an
 * idle stream. So a transfer keeps them unless it streams: one that asks
 * for a stream (upstream_req.streaming) or whose answer turns out not to
 * be length-framed runs with the mode on (tls_lean) and holds none while
 * it waits. A pooled connection keeps them for H1_TLS_WARM_MS, then
 * SSL_free_buffers (the pool's timer, oldest first): only connections
 * used within the last two seconds hold any.
 *
 * Callbacks run with the transfer marked busy: upstream_cancel() on it
 * then only marks it and the transfer is freed when the callback returns.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>

#include <sys/stat.h>
#include <sys/uio.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/event_struct.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "ascii.h"
#include "clock.h"
#include "evmem.h"
#include "resolve.h"
#include "sockread.h"
#include "upstream_int.h"
#include "utf8.h"

#define H1_MAX_HEAD        (64 * 1024)   /* response head */
#define H1_MAX_CHUNK_LINE  1024
#define H1_MAX_IDLE        4096          /* pooled connections, all peers */
#define H1_TLS_WARM_MS     2000          /* idle TLS ones keep record buffers this long */
#define H1_IDLE_TIMEOUT_S  60
#define H1_BUCKETS         4096          /* power of two */
#define H1_TLS_BUCKETS     256           /* TLS peers; power of two */
#define H1_MAX_TLS_PEERS   4096          /* more: curl takes the rest */
#define H1_READ_MAX        16384         /* plain: bytes per read; TLS: a whole record */
#define H1_TLS_RESERVE     (2 * H1_READ_MAX) /* TLS: input space taken per reservation */
#define H1_RUN_MAX         16384         /* chunk data joined for one on_data */
#define H1_JOIN_MAX        16384         /* a body copied into the head's block */

/* An SSL_CTX for one (ca_file, verify): the trust of some TLS peers. */
struct h1_trust {
    struct h1_trust *next;
    char            *ca_file;           /* NULL: the system CA store */
    int              insecure;
    SSL_CTX         *ctx;
    struct timespec  mtime;             /* of ca_file when loaded */
    off_t            size;
};

/* One https:// peer: its address, the name checked (and sent as SNI when
 * it is not an address) and its trust. Its last session resumes the next
 * connection. Kept until the pool is freed; at H1_MAX_TLS_PEERS one that
 * no connection or transfer uses (refs 0) makes room, so a name whose
 * addresses keep changing does not run out of peers. */
struct h1_tls_peer {
    struct h1_tls_peer     *next;
    uint32_t                hash;
    struct sockaddr_storage sa;
    socklen_t               salen;
    char                   *name;       /* server_name, or the URL's address */
    int                     name_is_ip;
    struct h1_trust        *trust;
    SSL_SESSION            *sess;
    size_t                  refs;       /* connections and transfers on it */
};

/* A TLS connection's handshake. */
enum h1_tls_hs { H1_HS_NONE = 0, H1_HS_SHAKING, H1_HS_UP };

struct h1_conn {
    struct h1_pool     *pool;
    struct bufferevent *bev;            /* connects, owns the fd; its input is read into */
    struct h1_xfer     *x;              /* the transfer on it; NULL when idle */
    struct h1_tls_peer *tls;            /* https://: part of the pool's key */
    uint32_t            hash;
    struct sockaddr_storage sa;         /* the peer: the pool's key */
    socklen_t           salen;
    struct h1_conn     *bnext, *bprev;  /* idle: same bucket */
    struct h1_conn     *lnext, *lprev;  /* idle: least recently used last */
    struct sock_reader  rd;             /* the socket is readable (assigned once connecting) */
    int64_t             idle_ms;        /* put in the pool at (mono ms) */
    /* TLS (https://): the SSL on the socket, driven by rd and wev. */
    SSL                *ssl;
    struct event        wev;            /* writable: handshake, a write the socket did not take */
    const char         *wbuf;           /* the request not yet taken by SSL_write */
    size_t              wlen;
    const char         *wnext;          /* then this (a body not joined to the head) */
    size_t              wnext_len;
    unsigned long       end_ssl;        /* the end met (see tls_end): OpenSSL's error code, */
    int                 end_err;        /* errno, */
    short               end_what;       /* BEV_EVENT_* (0: none) */
    unsigned char       hs;             /* enum h1_tls_hs */
    unsigned char       hs_wants_write; /* the handshake waits for writable */
    unsigned char       rd_wants_write; /* SSL_read said WANT_WRITE */
    unsigned char       wr_wants_read;  /* SSL_write said WANT_READ */
    unsigned char       wev_on;
    unsigned char       ev_set;         /* rd (and wev) assigned */
    unsigned char       lean;           /* SSL_MODE_RELEASE_BUFFERS on (tls_lean) */
};

/* The scheme and authority of the last URLs seen, parsed (url_get): a
 * host's URL begins each of its requests' URLs, so it is parsed once, not
 * per request. */
#define H1_URL_SLOTS 16
struct h1_url_slot;

struct h1_pool {
    struct event_base *base;
    struct h1_conn    *bucket[H1_BUCKETS];
    struct h1_conn    *lru_head, *lru_tail;
    struct h1_conn    *warm;            /* the oldest idle one that may hold TLS
                                         * record buffers: all older hold none */
    size_t             nidle;
    struct event       sweep;           /* closes the idle timed out, LRU first;
                                         * frees the buffers of the warm ones */
    int                no_tls;          /* https_proxy set: https:// via curl */
    struct h1_trust   *trusts;
    struct h1_tls_peer *tls_bucket[H1_TLS_BUCKETS];
    size_t             ntls;
    uint64_t           handshakes, resumed;
    struct h1_url_slot *urls[H1_URL_SLOTS];  /* parsed URLs (url_get) */
    unsigned           url_next;        /* the slot a new URL takes */
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
    struct h1_tls_peer     *tls;        /* https://; NULL for http:// */
    /* A URL with a host name: its addresses, the one in use (sa), and
     * what the TLS peer of each address needs. */
    char                   *name;       /* NULL: the URL has an address */
    struct resolve_wait    *wait;       /* the lookup under way */
    struct resolve_addrs    addrs;
    size_t                  ai;         /* addrs.a[ai] is in sa */
    uint16_t                port;
    unsigned char           want_tls, insecure;
    unsigned char           lean;       /* TLS: record buffers freed while waiting */
    char                   *tls_name, *ca_file;
    char                   *fail;       /* fails from the timer (see fail_soon) */
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
    unsigned char           timer_on;   /* timer added, not yet fired or deleted */
};

static void conn_recv_cb(evutil_socket_t fd, short what, void *arg);
static void conn_event_cb(struct bufferevent *bev, short what, void *arg);
static void h1_process(struct h1_xfer *hx);
static void tls_events(struct h1_conn *c);
static void tls_handshake(struct h1_conn *c);
static int tls_send(struct h1_conn *c);
static void tls_err_clear(void);
static void tls_write_cb(evutil_socket_t fd, short what, void *arg);

/* The loop's time (clock.h): one clock read per wake-up. */
static int64_t mono_ms(void)
{
    return gw_now_ms();
}

/* TLS record buffers (see the header): lean, SSL_MODE_RELEASE_BUFFERS on
 * and what is held now freed (SSL_free_buffers refuses, harmlessly, while
 * bytes wait in them: the mode frees them once drained); else the mode
 * off, buffers kept from one record to the next. */
static void tls_lean(struct h1_conn *c, int lean)
{
    if (c->lean == lean)
        return;                         /* SSL_free_buffers costs ~500 */
    c->lean = (unsigned char)lean;
    if (!lean) {
        SSL_clear_mode(c->ssl, SSL_MODE_RELEASE_BUFFERS);
        return;
    }
    SSL_set_mode(c->ssl, SSL_MODE_RELEASE_BUFFERS);
    SSL_free_buffers(c->ssl);
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
    if (c->ssl) {
        /* A close_notify (one write, never waited on): without it
         * SSL_free() marks the session not resumable, and the peer's
         * cached session with it. Not after an error or the peer's end. */
        if (c->hs == H1_HS_UP && !c->end_what)
            SSL_shutdown(c->ssl);
        ERR_clear_error();
        SSL_free(c->ssl);               /* and its socket BIO, not the fd */
    }
    if (c->ev_set) {                    /* also when only made active */
        event_del(&c->rd.ev);
        if (c->tls)
            event_del(&c->wev);
    }
    if (c->tls)
        c->tls->refs--;
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
    if (c == p->warm)
        p->warm = c->lprev;             /* newer; all older hold none */
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

/* Reading on or off: connections have their own read event, one readv
 * (plain) or SSL_reads (TLS) per readable event (a socket bufferevent
 * makes an ioctl(FIONREAD) before each read). A TLS connection's events
 * follow its state (tls_events): it may need to read to write, or be in
 * its handshake. */
static void conn_read_on(struct h1_conn *c)
{
    if (c->tls)
        tls_events(c);
    else
        sock_reader_on(&c->rd, NULL);
}

static void conn_read_off(struct h1_conn *c)
{
    if (c->tls)
        tls_events(c);
    else
        sock_reader_off(&c->rd, NULL);
}

/* The idle timeout of pooled connections is one timer for the pool, set
 * for the least recently used one (or the oldest warm one's
 * H1_TLS_WARM_MS, when sooner): putting a connection back or taking it
 * costs no timer operation. A timer that fires early (its connection was
 * taken) re-arms itself for the new least recently used one. */
static void sweep_arm(struct h1_pool *p, int64_t now)
{
    struct timeval tv;
    int64_t due;

    if (p->lru_tail == NULL)
        return;
    due = p->lru_tail->idle_ms + H1_IDLE_TIMEOUT_S * 1000 - now;
    if (p->warm && p->warm->idle_ms + H1_TLS_WARM_MS - now < due)
        due = p->warm->idle_ms + H1_TLS_WARM_MS - now;
    if (due < 0)
        due = 0;
    tv.tv_sec = (time_t)(due / 1000);
    tv.tv_usec = (suseconds_t)((due % 1000) * 1000);
    evtimer_add(&p->sweep, &tv);
}

static void sweep_cb(evutil_socket_t fd, short what, void *arg)
{
    struct h1_pool *p = arg;
    int64_t now = mono_ms();

    (void)fd;
    (void)what;
    while (p->warm && now - p->warm->idle_ms >= H1_TLS_WARM_MS) {
        if (p->warm->ssl)
            tls_lean(p->warm, 1);
        p->warm = p->warm->lprev;
    }
    while (p->lru_tail && now - p->lru_tail->idle_ms >= H1_IDLE_TIMEOUT_S * 1000) {
        struct h1_conn *c = p->lru_tail;
        pool_unlink(p, c);
        conn_close(c);
    }
    sweep_arm(p, now);
}

static void pool_put(struct h1_pool *p, struct h1_conn *c)
{
    struct h1_conn **b = &p->bucket[c->hash & (H1_BUCKETS - 1)];

    if (p->nidle == H1_MAX_IDLE) {
        struct h1_conn *old = p->lru_tail;
        pool_unlink(p, old);
        conn_close(old);
    }
    c->x = NULL;
    conn_read_on(c);                    /* conn_recv_cb: c->x NULL, idle */
    c->idle_ms = mono_ms();
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
    if (p->warm == NULL && c->ssl && !c->lean) {
        p->warm = c;                    /* sooner than the armed timeout */
        sweep_arm(p, c->idle_ms);
    } else if (!evtimer_pending(&p->sweep, NULL)) {
        sweep_arm(p, c->idle_ms);
    }
}

static struct h1_conn *pool_get(struct h1_pool *p, const struct sockaddr_storage *sa,
                                socklen_t salen, uint32_t hash, const struct h1_tls_peer *tls)
{
    struct h1_conn *c;

    for (c = p->bucket[hash & (H1_BUCKETS - 1)]; c; c = c->bnext)
        if (c->hash == hash && c->tls == tls && c->salen == salen
            && memcmp(&c->sa, sa, salen) == 0) {
            pool_unlink(p, c);
            return c;
        }
    return NULL;
}

/* --- TLS peers and their trust ------------------------------------------ */

static int tls_peer_idx = -1;           /* SSL ex_data: the h1_tls_peer */
static pthread_once_t tls_once = PTHREAD_ONCE_INIT;

static void tls_index_init(void)
{
    tls_peer_idx = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
}

/* A new session of a peer's connection (TLS 1.3: after the handshake):
 * kept for the peer's next connection. 1: we took the reference. */
static int tls_new_session_cb(SSL *ssl, SSL_SESSION *sess)
{
    struct h1_tls_peer *peer = SSL_get_ex_data(ssl, tls_peer_idx);

    if (peer == NULL)
        return 0;
    if (peer->sess)
        SSL_SESSION_free(peer->sess);
    peer->sess = sess;
    return 1;
}

static int file_stat(const char *path, struct timespec *mtime, off_t *size)
{
    struct stat st;

    if (stat(path, &st) != 0)
        return -1;
    *mtime = st.st_mtim;
    *size = st.st_size;
    return 0;
}

static SSL_CTX *trust_ctx_new(const char *ca_file, int insecure)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    static const unsigned char alpn[] = "\x08http/1.1";

    if (ctx == NULL)
        return NULL;
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    /* Not SSL_MODE_RELEASE_BUFFERS: tls_lean() sets it per transfer. */
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_CTX_set_read_ahead(ctx, 1);     /* one read() for many records, see tls_recv */
    /* A peer that closes without close_notify (many do after Connection:
     * close) is a close, as allow_dirty_shutdown says, not a fatal error:
     * that would also mark the session not resumable. Bodies are framed,
     * so a cut one is still seen. */
    SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
    SSL_CTX_set_alpn_protos(ctx, alpn, sizeof(alpn) - 1);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(ctx, tls_new_session_cb);
    if (!insecure) {
        if ((ca_file ? SSL_CTX_load_verify_locations(ctx, ca_file, NULL)
                     : SSL_CTX_set_default_verify_paths(ctx)) != 1) {
            ERR_clear_error();
            SSL_CTX_free(ctx);
            return NULL;
        }
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    } else {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    }
    return ctx;
}

/* The context for (ca_file, insecure), built on first use and again when
 * ca_file changed (a stat per new connection, not per request). NULL when
 * the CA file cannot be loaded: then curl takes the transfer and reports
 * it in its own words. */
static struct h1_trust *trust_get(struct h1_pool *p, const char *ca_file, int insecure)
{
    struct h1_trust *t;
    struct timespec mt = { 0, 0 };
    off_t size = 0;

    if (insecure)
        ca_file = NULL;
    for (t = p->trusts; t; t = t->next)
        if (t->insecure == insecure
            && (ca_file ? t->ca_file && strcmp(t->ca_file, ca_file) == 0 : t->ca_file == NULL))
            break;
    if (ca_file && file_stat(ca_file, &mt, &size) != 0)
        return NULL;
    if (t && (ca_file == NULL || (t->size == size && t->mtime.tv_sec == mt.tv_sec
                                  && t->mtime.tv_nsec == mt.tv_nsec)))
        return t;
    if (t == NULL) {
        if ((t = calloc(1, sizeof(*t))) == NULL)
            return NULL;
        if (ca_file && (t->ca_file = strdup(ca_file)) == NULL) {
            free(t);
            return NULL;
        }
        t->insecure = insecure;
        t->next = p->trusts;
        p->trusts = t;
    }
    if (t->ctx)
        SSL_CTX_free(t->ctx);           /* open connections keep their reference */
    t->mtime = mt;
    t->size = size;
    t->ctx = trust_ctx_new(ca_file, insecure);
    return t->ctx ? t : NULL;
}

static uint32_t str_hash(uint32_t h, const char *s)
{
    for (; s && *s; s++)
        h = (h ^ (unsigned char)*s) * 16777619u;
    return (h ^ 0xff) * 16777619u;
}

static int is_ip(const char *s)
{
    unsigned char buf[sizeof(struct in6_addr)];

    return inet_pton(AF_INET, s, buf) == 1 || inet_pton(AF_INET6, s, buf) == 1;
}

static void url_forget_peer(struct h1_pool *p, const struct h1_tls_peer *peer);

/* At the bound: the first peer nothing uses goes, its session with it.
 * 0 when every one is in use. */
static int tls_peer_evict(struct h1_pool *p)
{
    size_t i;

    for (i = 0; i < H1_TLS_BUCKETS; i++) {
        struct h1_tls_peer **pp = &p->tls_bucket[i];
        for (; *pp; pp = &(*pp)->next)
            if ((*pp)->refs == 0) {
                struct h1_tls_peer *peer = *pp;
                *pp = peer->next;
                url_forget_peer(p, peer);
                if (peer->sess)
                    SSL_SESSION_free(peer->sess);
                free(peer->name);
                free(peer);
                p->ntls--;
                return 1;
            }
    }
    return 0;
}

/* Whether peer is the one for this address, name and trust settings. */
static int tls_peer_is(const struct h1_tls_peer *peer, const struct sockaddr_storage *sa,
                       socklen_t salen, const char *name, const char *ca_file, int insecure)
{
    return peer->salen == salen && memcmp(&peer->sa, sa, salen) == 0
           && strcmp(peer->name, name) == 0 && peer->trust->insecure == insecure
           && (insecure || (ca_file ? peer->trust->ca_file
                                      && strcmp(peer->trust->ca_file, ca_file) == 0
                                    : peer->trust->ca_file == NULL));
}

/* The peer for this address, name and trust settings, made on first use.
 * Its trust context is looked up (and refreshed) for every new connection
 * in send_request; here only the key. memo (may be NULL): the peer this
 * caller found last (a URL's, see url_get), checked first, which spares
 * hashing the name and CA path per request; set to the one returned. */
static struct h1_tls_peer *tls_peer_get(struct h1_pool *p, const struct sockaddr_storage *sa,
                                        socklen_t salen, const char *name,
                                        const char *ca_file, int insecure,
                                        struct h1_tls_peer **memo)
{
    uint32_t h;
    struct h1_tls_peer *peer;
    struct h1_trust *t;

    if (memo && *memo && tls_peer_is(*memo, sa, salen, name, ca_file, insecure))
        return *memo;
    h = str_hash(str_hash(sa_hash(sa, salen), name), insecure ? NULL : ca_file)
        ^ (uint32_t)insecure;
    for (peer = p->tls_bucket[h & (H1_TLS_BUCKETS - 1)]; peer; peer = peer->next)
        if (peer->hash == h && tls_peer_is(peer, sa, salen, name, ca_file, insecure))
            goto found;
    if ((p->ntls >= H1_MAX_TLS_PEERS && !tls_peer_evict(p))
        || (t = trust_get(p, ca_file, insecure)) == NULL)
        return NULL;
    if ((peer = calloc(1, sizeof(*peer))) == NULL || (peer->name = strdup(name)) == NULL) {
        free(peer);
        return NULL;
    }
    peer->hash = h;
    peer->sa = *sa;
    peer->salen = salen;
    peer->name_is_ip = is_ip(name);
    peer->trust = t;
    peer->next = p->tls_bucket[h & (H1_TLS_BUCKETS - 1)];
    p->tls_bucket[h & (H1_TLS_BUCKETS - 1)] = peer;
    p->ntls++;
found:
    if (memo)
        *memo = peer;
    return peer;
}

/* A client SSL for a new connection to peer: name check, SNI, session. */
static SSL *tls_ssl_new(struct h1_pool *p, struct h1_tls_peer *peer)
{
    struct h1_trust *t = trust_get(p, peer->trust->ca_file, peer->trust->insecure);
    SSL *ssl;

    if (t == NULL || (ssl = SSL_new(t->ctx)) == NULL)
        return NULL;
    SSL_set_ex_data(ssl, tls_peer_idx, peer);
    if (!t->insecure) {
        X509_VERIFY_PARAM *vp = SSL_get0_param(ssl);
        X509_VERIFY_PARAM_set_hostflags(vp, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
        if ((peer->name_is_ip ? X509_VERIFY_PARAM_set1_ip_asc(vp, peer->name)
                              : X509_VERIFY_PARAM_set1_host(vp, peer->name, 0)) != 1) {
            SSL_free(ssl);
            return NULL;
        }
    }
    if (!peer->name_is_ip && SSL_set_tlsext_host_name(ssl, peer->name) != 1) {
        SSL_free(ssl);
        return NULL;
    }
    if (peer->sess)
        SSL_set_session(ssl, peer->sess);
    return ssl;
}

static void tls_peers_free(struct h1_pool *p)
{
    size_t i;

    for (i = 0; i < H1_TLS_BUCKETS; i++)
        while (p->tls_bucket[i]) {
            struct h1_tls_peer *peer = p->tls_bucket[i];
            p->tls_bucket[i] = peer->next;
            if (peer->sess)
                SSL_SESSION_free(peer->sess);
            free(peer->name);
            free(peer);
        }
    while (p->trusts) {
        struct h1_trust *t = p->trusts;
        p->trusts = t->next;
        SSL_CTX_free(t->ctx);
        free(t->ca_file);
        free(t);
    }
}

/* curl reads these for https://; with one set, https:// goes through curl
 * so that the proxy is used. */
static int https_proxy_in_env(void)
{
    static const char *const vars[] = { "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY",
                                        NULL };

    return upstream_env_set(vars);
}

struct h1_pool *h1_pool_new(struct event_base *base)
{
    struct h1_pool *p = calloc(1, sizeof(*p));

    if (p == NULL)
        return NULL;
    p->base = base;
    evtimer_assign(&p->sweep, base, sweep_cb, p);
    p->no_tls = https_proxy_in_env();
    pthread_once(&tls_once, tls_index_init);
    if (tls_peer_idx < 0)
        p->no_tls = 1;
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
    event_del(&p->sweep);
    tls_peers_free(p);
    for (size_t i = 0; i < H1_URL_SLOTS; i++)
        free(p->urls[i]);
    free(p);
}

size_t h1_idle_count(const struct h1_pool *p)
{
    return p ? p->nidle : 0;
}

/* --- URLs and request heads --------------------------------------------- */

/* What parse_url() finds in a URL. */
struct h1_url {
    struct sockaddr_storage sa;
    socklen_t               salen;
    int                     tls;        /* https:// */
    char                    host[256];  /* the address or name, without brackets */
    int                     is_name;    /* host is a name: sa not set */
    uint16_t                portnum;
    const char             *auth;       /* host[:port] as written */
    size_t                  auth_len;
    const char             *port;       /* ":port" as written, or "" */
    size_t                  port_len;
    const char             *path;
};

/* A DNS name as resolve.c can ask for it. */
static int host_name_ok(const char *s)
{
    size_t n = strlen(s);

    if (n == 0 || n > 253 || s[0] == '.' || s[0] == '-')
        return 0;
    for (; *s; s++)
        if (!(((*s | 32) >= 'a' && (*s | 32) <= 'z') || (*s >= '0' && *s <= '9')
              || *s == '-' || *s == '.' || *s == '_'))
            return 0;
    return 1;
}

/* http[s]://HOST[:port][/path], HOST an address or a name: fills u. 0
 * when the URL is not one for this client. */
static int parse_url(const char *url, struct h1_url *u)
{
    const char *h, *hend, *p, *port = NULL;
    unsigned long pn;

    memset(&u->sa, 0, sizeof(u->sa));
    u->is_name = 0;
    if (strncasecmp(url, "http://", 7) == 0) {
        h = url + 7;
        u->tls = 0;
        pn = 80;
    } else if (strncasecmp(url, "https://", 8) == 0) {
        h = url + 8;
        u->tls = 1;
        pn = 443;
    } else {
        return 0;
    }
    p = h + strcspn(h, "/?#");
    if (memchr(h, '@', (size_t)(p - h)))
        return 0;                               /* userinfo: curl's job */
    u->auth = h;
    u->auth_len = (size_t)(p - h);
    if (*h == '[') {
        hend = memchr(h, ']', (size_t)(p - h));
        if (hend == NULL)
            return 0;
        if (hend + 1 < p) {
            if (hend[1] != ':')
                return 0;
            port = hend + 2;
        }
        u->port = hend + 1;
        h++;
    } else {
        hend = memchr(h, ':', (size_t)(p - h));
        if (hend)
            port = hend + 1;
        else
            hend = p;
        u->port = hend;
    }
    u->port_len = (size_t)(p - u->port);
    if (hend == h || (size_t)(hend - h) >= sizeof(u->host))
        return 0;
    memcpy(u->host, h, (size_t)(hend - h));
    u->host[hend - h] = '\0';
    if (port && port < p) {
        char *e;
        pn = strtoul(port, &e, 10);
        if (e != p || pn == 0 || pn > 65535)
            return 0;
    }
    if (inet_pton(AF_INET, u->host, &((struct sockaddr_in *)&u->sa)->sin_addr) == 1) {
        struct sockaddr_in *s4 = (struct sockaddr_in *)&u->sa;
        s4->sin_family = AF_INET;
        s4->sin_port = htons((uint16_t)pn);
        u->salen = sizeof(*s4);
    } else if (inet_pton(AF_INET6, u->host, &((struct sockaddr_in6 *)&u->sa)->sin6_addr) == 1) {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&u->sa;
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons((uint16_t)pn);
        u->salen = sizeof(*s6);
    } else if (host_name_ok(u->host)) {
        u->is_name = 1;                         /* resolved by h1_start */
        u->salen = 0;
    } else {
        return 0;
    }
    u->portnum = (uint16_t)pn;
    if (*p == '#')
        return 0;
    u->path = p;
    return 1;
}

/* A URL's scheme and authority, parsed, its pointers into its own copy. */
struct h1_url_slot {
    struct h1_url u;
    int           ok;                   /* parse_url() took it */
    struct h1_tls_peer *peer;           /* https:// to an address: the last request's */
    size_t        len;
    char          url[];                /* "http[s]://HOST[:port]" */
};

/* A peer about to be freed is no URL's memo any more. */
static void url_forget_peer(struct h1_pool *p, const struct h1_tls_peer *peer)
{
    for (size_t i = 0; i < H1_URL_SLOTS; i++)
        if (p->urls[i] && p->urls[i]->peer == peer)
            p->urls[i]->peer = NULL;
}

/* parse_url(url) with the scheme and authority parsed once per pool: a
 * request's URL is its host's URL (the same string request after request)
 * and the request's path. NULL when the URL is not one for this client;
 * else the pool's slot with the parse of the authority, valid until the
 * next call, and *path the URL's path and query. */
static struct h1_url_slot *url_get(struct h1_pool *p, const char *url, const char **path)
{
    struct h1_url_slot *s;
    const char *h;
    size_t i, n;

    for (i = 0; i < H1_URL_SLOTS && (s = p->urls[i]) != NULL; i++)
        if (strncmp(url, s->url, s->len) == 0
            && (url[s->len] == '\0' || url[s->len] == '/' || url[s->len] == '?'
                || url[s->len] == '#'))
            goto found;
    h = strstr(url, "://");
    n = h ? (size_t)(h + 3 - url) + strcspn(h + 3, "/?#") : strlen(url);
    if ((s = malloc(sizeof(*s) + n + 1)) == NULL)
        return NULL;
    memcpy(s->url, url, n);
    s->url[n] = '\0';
    s->len = n;
    s->peer = NULL;
    s->ok = parse_url(s->url, &s->u);
    if (i == H1_URL_SLOTS)
        i = p->url_next++ % H1_URL_SLOTS;
    free(p->urls[i]);
    p->urls[i] = s;
found:
    if (!s->ok || url[s->len] == '#')
        return NULL;
    *path = url + s->len;
    return s;
}

static int has_crlf(const char *s)
{
    return strpbrk(s, "\r\n") != NULL;
}

/* strlen(s), or SIZE_MAX when s holds a CR or LF (it would split the head). */
static size_t field_len(const char *s)
{
    size_t n = strcspn(s, "\r\n");

    return s[n] ? SIZE_MAX : n;
}

/* Methods sent with a body (and its Content-Length): what infergate
 * proxies besides GET (POST, DELETE, PUT, PATCH). */
static int h1_has_body(const char *m)
{
    /* Byte by byte (each test only after the ones before it held, so
     * nothing past the NUL is read), no strcmp() calls. */
    switch (m[0]) {
    case 'P':
        if (m[1] == 'O')
            return m[2] == 'S' && m[3] == 'T' && m[4] == '\0';
        if (m[1] == 'U')
            return m[2] == 'T' && m[3] == '\0';
        return m[1] == 'A' && m[2] == 'T' && m[3] == 'C' && m[4] == 'H' && m[5] == '\0';
    case 'D':
        return m[1] == 'E' && m[2] == 'L' && m[3] == 'E' && m[4] == 'T' && m[5] == 'E'
               && m[6] == '\0';
    default:
        return 0;
    }
}

/* "METHOD target HTTP/1.1" + Host + the caller's headers + Content-Length,
 * then the `body_len` bytes of `body` (the caller's choice: none, or the
 * request body), in one new block after `front` bytes left to the caller
 * (the transfer itself); *lenp: the head's length, body included. NULL on
 * a header that would break the head. */
static char *build_head(size_t front, const struct upstream_req *req, const char *auth,
                        size_t auth_len, const char *port, size_t port_len,
                        const char *path, const char *body, size_t body_len,
                        size_t *lenp)
{
#define FIELD_LEN(s) (req->fields_checked ? strlen(s) : field_len(s))
    size_t mlen = FIELD_LEN(req->method), plen = strcspn(path, "\r\n "), len, i, n, v;
    size_t lens[2 * 16];                /* the first 16 fields' name and value lengths */
    int has_host = 0;
    char clen[40], digits[24];
    size_t clen_len = 0;
    char *buf, *w;

    if (mlen == SIZE_MAX || path[plen] != '\0')
        return NULL;
    len = mlen + 1 + 1 + plen + 11;                     /* " /" " HTTP/1.1\r\n" */
    for (i = 0; i < req->nheaders; i++) {
        const struct upstream_header *hd = &req->headers[i];
        const size_t *known = req->fields_checked && req->header_lens
                              ? req->header_lens + 2 * i : NULL;
        n = known && known[0] ? known[0] : FIELD_LEN(hd->name);
        v = known && known[1] ? known[1] : FIELD_LEN(hd->value);
        if (n == SIZE_MAX || v == SIZE_MAX)
            return NULL;
        if (n == 4 && strcasecmp(hd->name, "Host") == 0)
            has_host = 1;
        if (i < 16) {
            lens[2 * i] = n;
            lens[2 * i + 1] = v;
        }
        len += n + 2 + v + 2;
    }
    if (!has_host)
        len += 6 + auth_len + port_len + 2;
    if (h1_has_body(req->method)) {
        size_t b = req->body_len;
        n = 0;
        do {                                            /* the digits, last first */
            digits[n++] = (char)('0' + b % 10);
            b /= 10;
        } while (b);
        memcpy(clen, "Content-Length: ", 16);
        for (clen_len = 16; n > 0; )
            clen[clen_len++] = digits[--n];
        memcpy(clen + clen_len, "\r\n", 2);
        clen_len += 2;
        len += clen_len;
    }
    len += 2;
    if ((buf = evmem_block(front + len + body_len + 1)) == NULL)
        return NULL;
    w = buf + front;
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
        PUT(port, port_len);            /* after a server_name, see h1_start */
        PUT("\r\n", 2);
    }
    for (i = 0; i < req->nheaders; i++) {
        const struct upstream_header *hd = &req->headers[i];
        PUT(hd->name, i < 16 ? lens[2 * i] : strlen(hd->name));
        PUT(": ", 2);
        PUT(hd->value, i < 16 ? lens[2 * i + 1] : strlen(hd->value));
        PUT("\r\n", 2);
    }
    PUT(clen, clen_len);
    PUT("\r\n", 2);
    if (body_len)
        PUT(body, body_len);
#undef PUT
#undef FIELD_LEN
    *w = '\0';
    *lenp = (size_t)(w - (buf + front));
    return buf;
}

/* --- transfers ------------------------------------------------------------ */

/* The transfer's timer off; no library call when it is not on (it is not
 * for most transfers' ends: one event_del where there were two or three). */
static void timer_off(struct h1_xfer *hx)
{
    if (hx->timer_on) {
        hx->timer_on = 0;
        event_del(&hx->timer);
    }
}

static void xfer_free(struct h1_xfer *hx)
{
    if (hx->conn) {             /* mid-response: the connection cannot be reused */
        conn_close(hx->conn);
        hx->conn = NULL;
    }
    timer_off(hx);
    resolver_cancel(hx->wait);
    if (hx->tls)
        hx->tls->refs--;
    explicit_bzero(hx->head, hx->head_len);  /* in hx's block (h1_start) */
    free(hx->name);
    free(hx->tls_name);
    free(hx->ca_file);
    free(hx->fail);
    upstream_rh_clear(&hx->x);
    hx->x.u->active--;
    evmem_block_free(hx);                   /* build_head()'s block */
}

/* Ends the transfer: the connection goes back to the pool when the
 * response ended cleanly, on_done runs, the transfer is freed. */
static void finish(struct h1_xfer *hx, enum upstream_result res, const char *msg)
{
    struct h1_conn *c = hx->conn;

    hx->conn = NULL;
    if (c) {
        if (res == UPSTREAM_OK && hx->keepalive && c->wlen == 0 && c->wnext_len == 0
            && !c->end_what
            && !c->rd_wants_write && !c->wr_wants_read      /* TLS: not mid-renegotiation */
            && evbuffer_get_length(bufferevent_get_input(c->bev)) == 0
            && evbuffer_get_length(bufferevent_get_output(c->bev)) == 0)
            pool_put(c->pool, c);
        else
            conn_close(c);
    }
    timer_off(hx);
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
        timer_off(hx);
        return;
    }
    due = due > now ? due - now : 0;
    tv.tv_sec = (time_t)(due / 1000);
    tv.tv_usec = (suseconds_t)((due % 1000) * 1000);
    hx->timer_on = 1;
    evtimer_add(&hx->timer, &tv);
}

static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct h1_xfer *hx = arg;
    char msg[96];

    (void)fd;
    (void)what;
    hx->timer_on = 0;
    if (hx->fail) {
        finish(hx, UPSTREAM_ERR_CONNECT, hx->fail);    /* freed after on_done */
        return;
    }
    if (hx->wait) {
        char m2[400];
        snprintf(m2, sizeof(m2), "Could not resolve host: %s (no answer after %lld milliseconds)",
                 hx->name, (long long)(mono_ms() - hx->t_start_ms));
        finish(hx, UPSTREAM_ERR_CONNECT, m2);
        return;
    }
    /* The deadline arm_timer() set, not the coarse clock's reading: the
     * timer can fire a few ms before CLOCK_MONOTONIC_COARSE shows it due.
     * A TLS handshake is part of the connect. */
    if (!hx->connected && hx->connect_ms > 0
        && (hx->total_ms <= 0 || hx->connect_ms <= hx->total_ms))
        snprintf(msg, sizeof(msg), "Connection timed out after %lld milliseconds",
                 (long long)hx->connect_ms);
    else
        snprintf(msg, sizeof(msg), "Operation timed out after %lld milliseconds",
                 (long long)(mono_ms() - hx->t_start_ms));
    finish(hx, UPSTREAM_ERR_TIMEOUT, msg);
}

/* A kept plain connection: the head and body with one writev; what the
 * socket does not take goes into the bufferevent's output, by reference
 * (the transfer outlives it, or the connection is closed first). 0 when
 * all went, 1 when some is queued (the caller enables EV_WRITE), -1 when
 * it could not be queued. */
static int send_direct(struct h1_conn *c, struct h1_xfer *hx)
{
    struct evbuffer *out = bufferevent_get_output(c->bev);
    struct iovec v[2] = { { hx->head, hx->head_len }, { (void *)hx->body, hx->body_len } };

    /* rd is assigned once connected: its fd, no lock */
    return sock_write_direct(event_get_fd(&c->rd.ev), v, hx->body_len ? 2 : 1, out, 1);
}

/* Takes a pooled connection to the peer or opens a new one, and writes
 * the request. -1 when no connection could be started. */
static int send_request(struct h1_xfer *hx)
{
    struct h1_pool *p = hx->x.u->h1;
    uint32_t hash = hx->tls ? hx->tls->hash : sa_hash(&hx->sa, hx->salen);
    struct h1_conn *c = hx->resent ? NULL : pool_get(p, &hx->sa, hx->salen, hash, hx->tls);
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
        c->tls = hx->tls;
        /* TLS: the SSL goes on the socket once the connect completes
         * (conn_event_cb); the handshake is then driven by rd and wev. */
        if (hx->tls && (c->ssl = tls_ssl_new(p, hx->tls)) == NULL) {
            free(c);
            return -1;
        }
        if ((c->bev = bufferevent_socket_new(p->base, -1, BEV_OPT_CLOSE_ON_FREE)) == NULL) {
            if (c->ssl)
                SSL_free(c->ssl);
            free(c);
            return -1;
        }
        if (c->tls)
            c->tls->refs++;             /* conn_close lets go of it */
        bufferevent_setcb(c->bev, NULL, NULL, conn_event_cb, c);
        if (bufferevent_socket_connect(c->bev, (struct sockaddr *)&hx->sa,
                                       (int)hx->salen) < 0) {
            conn_close(c);
            return -1;
        }
        fd = bufferevent_getfd(c->bev);
        /* Added once connected (conn_event_cb). */
        event_assign(&c->rd.ev, p->base, fd, EV_READ | EV_PERSIST, conn_recv_cb, c);
        if (c->tls) {
            event_assign(&c->wev, p->base, fd, EV_WRITE | EV_PERSIST, tls_write_cb, c);
            if (SSL_set_fd(c->ssl, fd) != 1) {
                ERR_clear_error();
                conn_close(c);
                return -1;
            }
        }
        c->ev_set = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
    } else {
        bufferevent_setcb(c->bev, NULL, NULL, conn_event_cb, c);
    }
    c->x = hx;
    hx->conn = c;
    if (c->tls) {
        /* The head (the body in it when small, see h1_start), then a
         * body not joined, written with SSL_write right here on a kept
         * connection, as the plain path writes at once; on a new one after
         * the handshake. A failure is reported from the next read event
         * (tls_events): try_resend then. */
        tls_lean(c, hx->lean);
        c->wbuf = hx->head;
        c->wlen = hx->head_len;
        c->wnext = hx->body;
        c->wnext_len = hx->body_len;
        if (hx->connected) {
            tls_err_clear();
            tls_send(c);
            tls_events(c);
        }
        arm_timer(hx);
        return 0;
    }
    /* A pooled connection is written at once, with one writev and
     * without the bufferevent (as http.c's stream_send()): its output and
     * write event get only what the socket did not take (a failed write
     * queues it all: the bufferevent's own write then reports the error,
     * as before). A new one is written by the bufferevent when the connect
     * completes. */
    if (hx->connected) {
        int r;
        conn_read_on(c);                        /* on since it was pooled */
        r = send_direct(c, hx);
        if (r < 0 || (r > 0 && bufferevent_enable(c->bev, EV_WRITE) < 0)) {
            hx->conn = NULL;
            conn_close(c);
            return -1;
        }
        arm_timer(hx);
        return 0;
    }
    out = bufferevent_get_output(c->bev);
    /* Both by reference: the transfer outlives what is queued, or the
     * connection is closed before the transfer is freed. */
    if (evbuffer_add_reference(out, hx->head, hx->head_len, NULL, NULL) < 0
        || (hx->body_len
            && evbuffer_add_reference(out, hx->body, hx->body_len, NULL, NULL) < 0)
        || bufferevent_enable(c->bev, EV_WRITE) < 0) {
        hx->conn = NULL;
        conn_close(c);
        return -1;
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

/* --- host names ------------------------------------------------------------ */

/* Puts addrs.a[i] in sa; https:// takes the TLS peer of that address, so
 * pooled connections and sessions stay per address when a name moves.
 * -1: too many TLS peers or the CA file went away. */
static int addr_use(struct h1_xfer *hx, size_t i)
{
    const struct resolve_addr *a = &hx->addrs.a[i];

    hx->ai = i;
    memset(&hx->sa, 0, sizeof(hx->sa));
    if (a->family == AF_INET6) {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&hx->sa;
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons(hx->port);
        memcpy(&s6->sin6_addr, a->a, 16);
        hx->salen = sizeof(*s6);
    } else {
        struct sockaddr_in *s4 = (struct sockaddr_in *)&hx->sa;
        s4->sin_family = AF_INET;
        s4->sin_port = htons(hx->port);
        memcpy(&s4->sin_addr, a->a, 4);
        hx->salen = sizeof(*s4);
    }
    if (!hx->want_tls)
        return 0;
    if (hx->tls)
        hx->tls->refs--;                /* the previous address's */
    hx->tls = tls_peer_get(hx->x.u->h1, &hx->sa, hx->salen, hx->tls_name, hx->ca_file,
                           hx->insecure, NULL);
    if (hx->tls == NULL)
        return -1;
    hx->tls->refs++;
    return 0;
}

/* Fails the transfer from its timer, soon: never inside h1_start. */
static void fail_soon(struct h1_xfer *hx, const char *msg)
{
    struct timeval now = { 0, 0 };

    free(hx->fail);
    hx->fail = strdup(msg);
    if (hx->fail == NULL)
        hx->fail = strdup("out of memory");
    hx->timer_on = 1;
    evtimer_add(&hx->timer, &now);
}

/* The first address that takes a connection, from i on: 0, or -1. */
static int connect_from(struct h1_xfer *hx, size_t i)
{
    for (; i < hx->addrs.n; i++)
        if (addr_use(hx, i) == 0 && send_request(hx) == 0)
            return 0;
    return -1;
}

static void on_resolved(void *arg, int ok, const struct resolve_addrs *addrs, const char *msg)
{
    struct h1_xfer *hx = arg;

    hx->wait = NULL;
    if (!ok) {
        finish(hx, UPSTREAM_ERR_CONNECT, msg);
        return;
    }
    hx->addrs = *addrs;
    if (connect_from(hx, 0) < 0)
        finish(hx, UPSTREAM_ERR_CONNECT, "Failed to open a new connection");
}

/* A connect to one of a name's addresses failed: the next one, if any.
 * 1 when the transfer goes on there. */
static int connect_next(struct h1_xfer *hx)
{
    if (hx->name == NULL || hx->ai + 1 >= hx->addrs.n)
        return 0;
    conn_close(hx->conn);
    hx->conn = NULL;
    if (connect_from(hx, hx->ai + 1) < 0) {
        finish(hx, UPSTREAM_ERR_CONNECT, "Failed to open a new connection");
        return 1;
    }
    return 1;
}

/* The URL names a host: its addresses from the cache (then connected at
 * once) or a lookup (connected from on_resolved). -1: out of memory. */
static int start_by_name(struct h1_xfer *hx, const struct h1_url *url,
                         const struct upstream_req *req, const char *tls_name)
{
    char msg[400];
    int rc;

    hx->port = url->portnum;
    hx->want_tls = (unsigned char)url->tls;
    hx->insecure = (unsigned char)(req->insecure != 0);
    if ((hx->name = strdup(url->host)) == NULL
        || (url->tls && (hx->tls_name = strdup(tls_name)) == NULL)
        || (url->tls && req->ca_file && (hx->ca_file = strdup(req->ca_file)) == NULL))
        return -1;
    rc = resolver_lookup(hx->x.u->dns, hx->name, &hx->addrs, msg, sizeof(msg), on_resolved,
                         hx, &hx->wait);
    if (rc < 0)
        fail_soon(hx, msg);
    else if (rc == 0)
        arm_timer(hx);                  /* connect_timeout covers the lookup */
    else if (connect_from(hx, 0) < 0)
        fail_soon(hx, "Failed to open a new connection");
    return 0;
}

struct upstream_xfer *h1_start(struct upstream *u, const struct upstream_req *req,
                               const struct upstream_cbs *cbs, void *arg,
                               int *mine)
{
    struct h1_xfer *hx;
    struct h1_tls_peer *tls = NULL;
    struct h1_url_slot *slot;
    const struct h1_url *url;
    const char *auth, *port = "", *name = NULL, *path;
    size_t auth_len, port_len = 0, body_len, head_len;
    char *block;
    int join;

    *mine = 0;
    if ((slot = url_get(u->h1, req->url, &path)) == NULL)
        return NULL;
    url = &slot->u;
    if (strcmp(req->method, "GET") != 0 && !h1_has_body(req->method))
        return NULL;
    if (url->is_name && (u->dns == NULL || u->names_curl))
        return NULL;                    /* no resolver, or resolver: libc: curl's */
    auth = url->auth;
    auth_len = url->auth_len;
    if (url->tls) {
        name = req->server_name && *req->server_name ? req->server_name : url->host;
        if (u->h1->no_tls || has_crlf(name) || strchr(name, ' '))
            return NULL;
        /* NULL: the CA file cannot be read, too many peers: curl's turn.
         * A name's peers come once its addresses are known. */
        if (url->is_name ? trust_get(u->h1, req->ca_file, req->insecure) == NULL
                        : (tls = tls_peer_get(u->h1, &url->sa, url->salen, name, req->ca_file,
                                              req->insecure, &slot->peer)) == NULL)
            return NULL;
        if (name != url->host) {        /* Host: the name, the URL's port */
            auth = name;
            auth_len = strlen(name);
            port = url->port;
            port_len = url->port_len;
        }
    }
    *mine = 1;
    /* The transfer and its head (the body in it when small: TLS, one
     * SSL_write and one record; plain, one reference in the output
     * instead of two, each a chain allocated and freed) in one block. A
     * larger body is sent after the head from the caller's memory, no
     * copy (TLS: tls_send goes on from wbuf to wnext). */
    body_len = h1_has_body(req->method) ? req->body_len : 0;
    join = body_len <= H1_JOIN_MAX;
    if ((block = build_head(sizeof(*hx), req, auth, auth_len, port, port_len, path,
                            join ? req->body : NULL, join ? body_len : 0, &head_len)) == NULL)
        return NULL;
    hx = (struct h1_xfer *)(void *)block;
    memset(hx, 0, sizeof(*hx));
    hx->head = block + sizeof(*hx);
    hx->head_len = head_len;
    hx->lean = req->streaming != 0;
    upstream_xfer_init(&hx->x, u, cbs, arg, UPSTREAM_KIND_H1);
    hx->sa = url->sa;
    hx->salen = url->salen;
    hx->tls = tls;
    if (tls)
        tls->refs++;
    if (!join) {
        hx->body = req->body;
        hx->body_len = body_len;
    }
    hx->connect_ms = req->connect_timeout_ms;
    hx->total_ms = req->total_timeout_ms;
    hx->t_start_ms = mono_ms();
    evtimer_assign(&hx->timer, u->base, timer_cb, hx);
    u->active++;
    if (url->is_name ? start_by_name(hx, url, req, name) < 0 : send_request(hx) < 0) {
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
        if (nlen == 14 && ascii_lower_eq(w, "content-length", 14)) {
            const char *e;
            uint64_t n;
            const char *val = w + nlen + 1;
            if (vlen == 0 || val[0] < '0' || val[0] > '9')
                return -1;
            n = 0;              /* digits only; strtoull's range */
            for (e = val; *e >= '0' && *e <= '9'; e++) {
                if (n > (UINT64_MAX - (uint64_t)(*e - '0')) / 10)
                    return -1;
                n = n * 10 + (uint64_t)(*e - '0');
            }
            if (*e || (have_len && n != clen))
                return -1;
            clen = n;
            have_len = 1;
        } else if (nlen == 17 && ascii_lower_eq(w, "transfer-encoding", 17)) {
            const char *val = w + nlen + 1, *last = strrchr(val, ',');
            last = last ? last + 1 : val;
            while (*last == ' ' || *last == '\t')
                last++;
            te = 1;
            chunked = strncasecmp(last, "chunked", 7) == 0
                      && (last[7] == '\0' || last[7] == ' ' || last[7] == '\t');
        } else if (nlen == 10 && ascii_lower_eq(w, "connection", 10)) {
            const char *val = w + nlen + 1;
            if (vlen == 10 && ascii_lower_eq(val, "keep-alive", 10)) {
                keep = 1;                       /* the usual one token */
            } else if (vlen == 5 && ascii_lower_eq(val, "close", 5)) {
                close = 1;
            } else {
                close |= token_has(val, "close");
                keep |= token_has(val, "keep-alive");
            }
        }
        w += nlen + 1 + vlen + 1;
        upstream_rh_note(&hx->x, nlen, vlen);
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
    if (hx->st != H1_BODY_LEN && !hx->lean && hx->conn && hx->conn->ssl) {
        hx->lean = 1;                   /* a stream after all */
        tls_lean(hx->conn, 1);
    }
    return status;
}

/* 1: a head was handled; 0: more bytes needed; -1: the transfer ended
 * (hx is gone). */
/* The length of the head (its blank line included) when it ends in the
 * input's first chain, else 0: one memchr per line, where evbuffer_search
 * walks the buffer through its pointer API. *at: the chain's bytes. */
static size_t head_in_first_chain(struct evbuffer *in, const char **at)
{
    struct evbuffer_iovec v;
    const char *p, *e, *q, *nl;

    if (evbuffer_peek(in, -1, NULL, &v, 1) < 1)
        return 0;
    p = v.iov_base;
    e = p + v.iov_len;
    for (q = p; q < e && (nl = memchr(q, '\n', (size_t)(e - q))) != NULL; q = nl + 1)
        if (nl - p >= 3 && nl[-1] == '\r' && nl[-2] == '\n' && nl[-3] == '\r') {
            *at = p;
            return (size_t)(nl + 1 - p);
        }
    return 0;
}

static int read_head(struct h1_xfer *hx, struct evbuffer *in)
{
    const char *at = NULL;
    size_t len = head_in_first_chain(in, &at);
    char *head;
    int status, minor;

    if (len == 0) {
        struct evbuffer_ptr pos = evbuffer_search(in, "\r\n\r\n", 4, NULL);
        if (pos.pos < 0) {
            if (evbuffer_get_length(in) > H1_MAX_HEAD) {
                finish(hx, UPSTREAM_ERR_PROTOCOL, "Response head too large");
                return -1;
            }
            return 0;
        }
        len = (size_t)pos.pos + 4;
    }
    if (len > H1_MAX_HEAD || (head = malloc(len + 1)) == NULL) {
        finish(hx, UPSTREAM_ERR_PROTOCOL, "Response head too large");
        return -1;
    }
    if (at) {
        memcpy(head, at, len);
        evbuffer_drain(in, len);
    } else {
        evbuffer_remove(in, head, len);
    }
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

/* Hands `n` bytes at `data` to on_data, then drains `used` bytes (data is
 * in `in` or a copy of it) from the input. Returns -1 when the transfer
 * ended (cancelled or aborted), else 0. */
static int pass_on(struct h1_xfer *hx, struct evbuffer *in, const char *data, size_t n,
                   size_t used)
{
    enum upstream_verdict verdict = UPSTREAM_CONTINUE;

    if (hx->x.cbs->on_data) {
        hx->busy++;
        verdict = hx->x.cbs->on_data(hx->x.arg, data, n);
        hx->busy--;
    }
    hx->x.ending = 0;
    evbuffer_drain(in, used);
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
    return 0;
}

/* Passes up to `max` bytes from the front of `in` to on_data. Returns -1
 * when the transfer ended (cancelled or aborted), else the bytes passed. */
static ssize_t deliver(struct h1_xfer *hx, struct evbuffer *in, uint64_t max)
{
    struct evbuffer_iovec v;
    size_t n;

    if (evbuffer_peek(in, -1, NULL, &v, 1) < 1 || v.iov_len == 0)
        return 0;
    n = v.iov_len < max ? v.iov_len : (size_t)max;
    return pass_on(hx, in, v.iov_base, n, n) < 0 ? -1 : (ssize_t)n;
}

/* Appends to a plain connection's input, whose end the bufferevent keeps
 * frozen (as sock_read_into()). 0, or -1 when out of memory. */
static int input_add(struct evbuffer *in, const char *p, size_t n)
{
    int r;

    evbuffer_unfreeze(in, 0);
    r = evbuffer_add(in, p, n);
    evbuffer_freeze(in, 0);
    return r;
}

/*
 * A chunked body's usual shape: whole chunks with plain size lines (hex
 * digits, CRLF), as one read brought them. Their data go to on_data in one
 * call (joined in `run` when there are several) instead of a size line, a
 * call and a drain per chunk: an SSE event is usually a chunk of its own,
 * and each call costs a write to the client. Only bytes already here are
 * joined, so nothing waits for a later read. The last chunk without
 * trailers ("0" CRLF CRLF) ends the transfer here. Anything else (a chunk
 * cut by the end of b before any whole one, an extension, trailers, a malformed line, `run`
 * full) stops the run; h1_process's per-chunk path takes it from there.
 *
 * b is either the input's first chain (front: what the run takes is
 * drained) or bytes just read into a buffer of the caller (not front: what
 * the run leaves is appended to the input, before on_data, which may end
 * the transfer). `run` may be b itself when b is writable: the data move
 * down over the size lines. `rest` > 0: b starts with the last `rest` bytes
 * of a chunk a previous read cut (then its CRLF), passed on with the whole
 * chunks after them. A chunk cut by the end of b after whole ones goes
 * with them as far as it came (H1_CHUNK_DATA for the rest). Data followed
 * by the last chunk set x.ending for on_data: the end comes from the next
 * pass, before any read. Returns -1 when the transfer ended, else the
 * chunks passed on (0: none taken).
 */
static int chunk_run(struct h1_xfer *hx, struct evbuffer *in, const char *b, size_t len,
                     int front, char *run, size_t cap, size_t rest)
{
    const char *data = NULL;
    size_t pos = 0, n = 0;
    int chunks = 0;

    if (rest > 0) {
        if (rest > len || len - rest < 2 || b[rest] != '\r' || b[rest + 1] != '\n')
            return 0;
        data = b;
        n = rest;
        chunks = 1;
        pos = rest + 2;
        hx->st = H1_CHUNK_SIZE;
    }

    for (;;) {
        size_t i = pos, size = 0;
        int d;
        while (i < len && i - pos < 15 && (d = utf8_hexval((unsigned char)b[i])) >= 0) {
            size = size << 4 | (size_t)d;
            i++;
        }
        if (i == pos || len - i < 2 || b[i] != '\r' || b[i + 1] != '\n')
            break;
        i += 2;
        if (size == 0) {
            /* The last chunk: the end unless the peer sends trailers. */
            if (len - i < 2 || b[i] != '\r' || b[i + 1] != '\n')
                break;
            if (chunks > 0) {
                hx->x.ending = 1;       /* the data first, the end next pass */
                break;
            }
            i += 2;
            if (front)
                evbuffer_drain(in, i);
            else if (i < len && input_add(in, b + i, len - i) < 0) {
                finish(hx, UPSTREAM_ERR_PROTOCOL, "Out of memory");
                return -1;
            }
            finish(hx, UPSTREAM_OK, "");    /* pooled only when nothing followed */
            return -1;
        }
        if (size > len - i && chunks > 0 && len - i <= cap - n) {
            /* A chunk the end of b cuts, after whole ones: its first
             * bytes go with them; the rest comes as H1_CHUNK_DATA. */
            if (data != run) {
                memmove(run, data, n);
                data = run;
            }
            memmove(run + n, b + i, len - i);
            n += len - i;
            hx->left = size - (len - i);
            hx->st = H1_CHUNK_DATA;
            pos = len;
            break;
        }
        if (size > len - i || len - i - size < 2 || b[i + size] != '\r'
            || b[i + size + 1] != '\n')
            break;
        if (chunks == 0) {
            data = b + i;               /* one chunk: passed where it is */
            n = size;
        } else {
            if (size > cap - n)
                break;
            if (data != run) {
                memmove(run, data, n);
                data = run;
            }
            memmove(run + n, b + i, size);
            n += size;
        }
        chunks++;
        pos = i + size + 2;
    }
    if (!front && pos < len && input_add(in, b + pos, len - pos) < 0) {
        finish(hx, UPSTREAM_ERR_PROTOCOL, "Out of memory");
        return -1;
    }
    if (chunks == 0)
        return 0;
    if (pass_on(hx, in, data, n, front ? pos : 0) < 0)
        return -1;
    return chunks;
}

/* Reads a CRLF-terminated line of at most H1_MAX_CHUNK_LINE into buf.
 * 1: read; 0: more bytes needed; -1: too long. */
static int read_line(struct evbuffer *in, char *buf, size_t cap)
{
    size_t eol_len;
    struct evbuffer_ptr pos;
    struct evbuffer_iovec v;

    /* The usual case, a chunk size line whole in the first chain: a
     * memchr instead of evbuffer_search_eol + remove + drain (~500
     * instructions per chunk, one chunk per SSE event). */
    if (evbuffer_peek(in, -1, NULL, &v, 1) >= 1) {
        const char *b = v.iov_base, *lf = memchr(b, '\n', v.iov_len);
        size_t n = lf ? (size_t)(lf - b) : 0;
        if (n > 0 && b[n - 1] == '\r' && memchr(b, '\r', n - 1) == NULL) {
            if (n - 1 >= cap)
                return -1;
            memcpy(buf, b, n - 1);
            buf[n - 1] = '\0';
            evbuffer_drain(in, n + 1);
            return 1;
        }
    }
    pos = evbuffer_search_eol(in, NULL, &eol_len, EVBUFFER_EOL_CRLF_STRICT);

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
    char run[H1_RUN_MAX];
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
            struct evbuffer_iovec v;
            if (evbuffer_peek(in, -1, NULL, &v, 1) < 1)
                return;
            if ((r = chunk_run(hx, in, v.iov_base, v.iov_len, 1, run, sizeof(run), 0)) < 0)
                return;
            if (r > 0) {
                if (evbuffer_get_length(in) == 0)
                    return;             /* the usual end of a read */
                continue;
            }
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
        case H1_CHUNK_DATA: {
            /* The rest of a chunk a read cut, whole here: passed on with
             * the whole chunks after it, in one call. */
            struct evbuffer_iovec v;
            if (hx->left <= H1_RUN_MAX && evbuffer_peek(in, -1, NULL, &v, 1) >= 1
                && v.iov_len >= hx->left + 2) {
                if ((r = chunk_run(hx, in, v.iov_base, v.iov_len, 1, run, sizeof(run),
                                   (size_t)hx->left)) < 0)
                    return;
                if (r > 0) {
                    if (evbuffer_get_length(in) == 0)
                        return;
                    continue;
                }
            }
            if ((n = deliver(hx, in, hx->left)) <= 0)
                return;
            hx->left -= (uint64_t)n;
            if (hx->left == 0)
                hx->st = H1_CHUNK_CRLF;
            break;
        }
        case H1_CHUNK_CRLF: {
            unsigned char crlf[2];
            struct evbuffer_iovec v;
            if (evbuffer_get_length(in) < 2)
                return;
            /* Looked at in place when the first chain has both bytes (no
             * copy out); the drain below takes them either way. */
            if (evbuffer_peek(in, 2, NULL, &v, 1) >= 1 && v.iov_len >= 2)
                memcpy(crlf, v.iov_base, 2);
            else
                evbuffer_copyout(in, crlf, 2);
            if (crlf[0] != '\r' || crlf[1] != '\n') {
                finish(hx, UPSTREAM_ERR_PROTOCOL, "Malformed chunk end");
                return;
            }
            evbuffer_drain(in, 2);
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

/* --- the connection's I/O ------------------------------------------------ */

/* Where the transfer's peer is, for messages: "IP" and port. */
static unsigned xfer_peer(const struct h1_xfer *hx, char *ip, size_t len)
{
    if (hx->sa.ss_family == AF_INET6) {
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)&hx->sa)->sin6_addr, ip,
                  (socklen_t)len);
        return ntohs(((const struct sockaddr_in6 *)&hx->sa)->sin6_port);
    }
    inet_ntop(AF_INET, &((const struct sockaddr_in *)&hx->sa)->sin_addr, ip, (socklen_t)len);
    return ntohs(((const struct sockaddr_in *)&hx->sa)->sin_port);
}

/* Why a TLS connection failed before it was up: the certificate check
 * (in curl's words, which the docs quote), or OpenSSL's first error. */
static void tls_failure(struct h1_conn *c, const char *ip, unsigned port, short what,
                        int err, unsigned long sslerr, char *msg, size_t len)
{
    /* verify: false runs the check too, and keeps its result: not a cause. */
    long vr = c->ssl && c->hs != H1_HS_NONE && !c->tls->trust->insecure
              ? SSL_get_verify_result(c->ssl) : X509_V_OK;
    const char *why = sslerr ? ERR_reason_error_string(sslerr) : NULL;

    if (vr != X509_V_OK)
        snprintf(msg, len, "SSL certificate problem: %s", X509_verify_cert_error_string(vr));
    else if (sslerr)
        snprintf(msg, len, "TLS handshake with %s port %u failed: %s", ip, port,
                 why ? why : "error");
    else if (what & BEV_EVENT_EOF || err == 0)
        snprintf(msg, len, "TLS handshake with %s port %u failed: connection closed", ip, port);
    else
        snprintf(msg, len, "Failed to connect to %s port %u: %s", ip, port,
                 evutil_socket_error_to_string(err));
}

/* The connection ended (closed, reset, a TLS error) or failed to come up:
 * the transfer on it ends with the matching error, or is sent again once
 * on a new connection (try_resend). sslerr: OpenSSL's error code, 0 for a
 * socket error in err. */
static void conn_failed(struct h1_conn *c, short what, int err, unsigned long sslerr)
{
    struct h1_xfer *hx = c->x;
    char msg[640];

    if (!hx->connected) {
        char ip[INET6_ADDRSTRLEN] = "?", where[INET6_ADDRSTRLEN + 260];
        unsigned port = xfer_peer(hx, ip, sizeof(ip));
        if (hx->name)                   /* "name (address)" */
            snprintf(where, sizeof(where), "%s (%s)", hx->name, ip);
        if (c->tls)
            tls_failure(c, hx->name ? where : ip, port, what, err, sslerr, msg, sizeof(msg));
        else
            snprintf(msg, sizeof(msg), "Failed to connect to %s port %u: %s",
                     hx->name ? where : ip, port,
                     (what & BEV_EVENT_EOF) ? "Connection closed"
                                            : evutil_socket_error_to_string(err));
        /* Not the handshake or the certificate: the name's next address. */
        if (strncmp(msg, "Failed to connect", 17) == 0 && connect_next(hx))
            return;
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
             sslerr && ERR_reason_error_string(sslerr) ? ERR_reason_error_string(sslerr)
                                                       : evutil_socket_error_to_string(err));
    finish(hx, UPSTREAM_ERR_PROTOCOL, msg);
}

/* The bufferevent only connects: the TCP connect's end. A plain connection
 * then reads with its own event and writes through the bufferevent; a TLS
 * one starts its handshake (tls_handshake), both driven by its own events. */
static void conn_event_cb(struct bufferevent *bev, short what, void *arg)
{
    struct h1_conn *c = arg;
    struct h1_xfer *hx = c->x;
    int err = EVUTIL_SOCKET_ERROR();

    if (what & BEV_EVENT_CONNECTED) {
        if (c->tls) {
            bufferevent_disable(bev, EV_READ | EV_WRITE);
            SSL_set_connect_state(c->ssl);
            c->hs = H1_HS_SHAKING;
            tls_handshake(c);
            return;
        }
        hx->connected = 1;
        if (!hx->x.paused)
            conn_read_on(c);
        arm_timer(hx);
        return;
    }
    conn_failed(c, what, err, 0);
}

/*
 * TLS: the SSL reads and writes the socket itself (a socket BIO), driven
 * by the connection's own read event (rd) and write event (wev), which
 * tls_events() keeps to what the SSL waits for. The error queue is
 * emptied once per event or call from outside (SSL_get_error needs it
 * empty), not before every SSL_read: ERR_clear_error costs ~800
 * instructions, one SSL_read per record of ~200 bytes in an SSE stream;
 * a successful SSL call leaves it empty, a failed one is followed by
 * tls_wait(), which empties it.
 */

/* Empties the thread's error queue before SSL calls (SSL_get_error needs
 * it empty): a look first, as it is empty but for another module's
 * leftovers; ERR_clear_error itself walks all its slots. */
static void tls_err_clear(void)
{
    if (ERR_peek_error() != 0)
        ERR_clear_error();
}

/* The read and write events a TLS connection needs now. */
static void tls_events(struct h1_conn *c)
{
    int rd, wr;

    if (!c->ev_set || c->hs == H1_HS_NONE)
        return;                         /* connecting: the bufferevent's */
    if (c->hs == H1_HS_SHAKING) {
        rd = !c->hs_wants_write;
        wr = c->hs_wants_write;
    } else {
        /* Idle: any byte or the end closes it. Busy: reading unless
         * paused, or a write waits on a read. */
        rd = c->x == NULL || !c->x->x.paused || c->wr_wants_read;
        wr = c->rd_wants_write || (c->wlen > 0 && !c->wr_wants_read);
    }
    if (rd && !c->rd.on && event_add(&c->rd.ev, NULL) == 0)
        c->rd.on = 1;
    else if (!rd && c->rd.on) {
        event_del(&c->rd.ev);
        c->rd.on = 0;
    }
    if (wr && !c->wev_on && event_add(&c->wev, NULL) == 0)
        c->wev_on = 1;
    else if (!wr && c->wev_on) {
        event_del(&c->wev);
        c->wev_on = 0;
    }
    /* An end met with records still to pass on: reported from the next
     * read event, once the transfer reads again (see tls_recv). */
    if (rd && c->end_what && c->hs == H1_HS_UP)
        event_active(&c->rd.ev, EV_READ, 1);
}

/* After an SSL call returned r <= 0: 1 when it waits for the socket
 * (*want_write says which way), 0 when the connection ended (c->end_*
 * set: close_notify or a close as EOF, else the error). The error queue
 * is left empty. */
static int tls_wait(struct h1_conn *c, int r, short dir, int *want_write)
{
    int err = errno;                    /* of the failed call, before anything else */
    int e = SSL_get_error(c->ssl, r);
    unsigned long first = 0, l;

    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        *want_write = e == SSL_ERROR_WANT_WRITE;
        ERR_clear_error();
        return 1;
    }
    while ((l = ERR_get_error()) != 0)
        if (first == 0)
            first = l;
    c->end_ssl = e == SSL_ERROR_SSL ? first : 0;
    c->end_err = e == SSL_ERROR_SYSCALL ? err : 0;
    if (e == SSL_ERROR_ZERO_RETURN || (e == SSL_ERROR_SYSCALL && err == 0 && first == 0))
        c->end_what = (short)(dir | BEV_EVENT_EOF);
    else
        c->end_what = (short)(dir | BEV_EVENT_ERROR);
    return 0;
}

/* Reports the end tls_wait() recorded: the transfer ends (c with it). */
static void tls_end(struct h1_conn *c)
{
    conn_failed(c, c->end_what, c->end_err, c->end_ssl);
}

/* The handshake, a step per event; the attempt's connect timeout bounds
 * it (arm_timer: the transfer is not connected until it is done). Once
 * up (certificate verified), the request goes out. */
static void tls_handshake(struct h1_conn *c)
{
    struct h1_xfer *hx = c->x;
    int r, ww = 0;

    tls_err_clear();
    r = SSL_do_handshake(c->ssl);
    if (r != 1) {
        if (!tls_wait(c, r, BEV_EVENT_READING, &ww)) {
            tls_end(c);
            return;
        }
        c->hs_wants_write = (unsigned char)ww;
        tls_events(c);
        return;
    }
    c->hs = H1_HS_UP;
    c->pool->handshakes++;
    if (SSL_session_reused(c->ssl))
        c->pool->resumed++;
    hx->connected = 1;
    arm_timer(hx);
    if (tls_send(c) < 0) {
        tls_end(c);
        return;
    }
    tls_events(c);
}

/* Writes what is left of the request with SSL_write (partial writes on:
 * a record at a time; after WANT_WRITE the same bytes are offered again).
 * 0: all taken, or waiting for an event; -1: the connection ended
 * (c->end_* set). The caller empties the error queue before. */
static int tls_send(struct h1_conn *c)
{
    int n, ww;

    while (c->wlen > 0) {
        n = SSL_write(c->ssl, c->wbuf, c->wlen > INT_MAX ? INT_MAX : (int)c->wlen);
        if (n > 0) {
            c->wbuf += n;
            c->wlen -= (size_t)n;
            if (c->wlen == 0 && c->wnext_len > 0) {
                c->wbuf = c->wnext;             /* the body after the head */
                c->wlen = c->wnext_len;
                c->wnext_len = 0;
            }
            continue;
        }
        if (!tls_wait(c, n, BEV_EVENT_WRITING, &ww))
            return -1;
        c->wr_wants_read = (unsigned char)!ww;
        return 0;
    }
    c->wr_wants_read = 0;
    return 0;
}

/*
 * Every record the socket has, decrypted into the input with one SSL_read
 * each (at least 16 KB of room: a whole record; one reservation of 32 KB
 * for many small ones), then one pass of the response state machine
 * over them. With read-ahead one read() takes what the
 * socket holds; more SSL_reads only while the SSL holds bytes, so no
 * read() that finds the socket empty (the level-triggered read event
 * covers what is left). An end met here after records were read is
 * reported once they are passed on (tls_events re-arms the read event).
 */
static void tls_recv(struct h1_conn *c)
{
    struct evbuffer *in = bufferevent_get_input(c->bev);
    struct evbuffer_iovec v = { NULL, 0 };
    size_t used = 0;
    int r, ww = 0, got = 0;

    evbuffer_unfreeze(in, 0);           /* as sock_read_into() */
    for (;;) {
        /* One reservation for many records (an SSE event is a record of
         * ~200 bytes), committed once: a new one only when less than a
         * whole record's room is left. */
        if (v.iov_len - used < H1_READ_MAX) {
            if (used) {
                v.iov_len = used;
                evbuffer_commit_space(in, &v, 1);
                used = 0;
            }
            if (evbuffer_reserve_space(in, H1_TLS_RESERVE, &v, 1) < 1) {
                c->end_what = BEV_EVENT_READING | BEV_EVENT_ERROR;
                c->end_err = ENOMEM;
                c->end_ssl = 0;
                r = 0;
                break;
            }
        }
        r = SSL_read(c->ssl, (char *)v.iov_base + used,
                     v.iov_len - used > INT_MAX ? INT_MAX : (int)(v.iov_len - used));
        if (r <= 0)
            break;
        used += (size_t)r;
        got = 1;
        if (!SSL_has_pending(c->ssl))
            break;
    }
    if (used) {
        v.iov_len = used;
        evbuffer_commit_space(in, &v, 1);
    }
    evbuffer_freeze(in, 0);
    if (r <= 0 && !c->end_what && tls_wait(c, r, BEV_EVENT_READING, &ww)) {
        if (ww != c->rd_wants_write) {
            c->rd_wants_write = (unsigned char)ww;      /* a renegotiation's write */
            tls_events(c);
        }
    } else if (r > 0 && c->rd_wants_write) {
        c->rd_wants_write = 0;
        tls_events(c);
    }
    if (c->end_what) {
        if (!got) {
            tls_end(c);
            return;
        }
        event_active(&c->rd.ev, EV_READ, 1);            /* after the records */
    }
    if (got)
        h1_process(c->x);               /* may end the transfer: c may be gone */
}

/* A TLS connection's socket is writable: the handshake's next step, the
 * read that waited for it, or the rest of the request. */
static void tls_write_cb(evutil_socket_t fd, short what, void *arg)
{
    struct h1_conn *c = arg;

    (void)fd;
    (void)what;
    if (c->hs == H1_HS_SHAKING) {
        tls_handshake(c);
        return;
    }
    if (c->x == NULL) {                 /* idle: nothing to write */
        pool_unlink(c->pool, c);
        conn_close(c);
        return;
    }
    tls_err_clear();
    if (c->rd_wants_write) {
        tls_recv(c);
        return;
    }
    if (tls_send(c) < 0) {
        tls_end(c);
        return;
    }
    tls_events(c);
}

/* A plain read's result: 0 when bytes came; otherwise 1, the connection
 * failed on an error or the peer's close, or nothing to do (EAGAIN). */
static int read_ended(struct h1_conn *c, ssize_t got)
{
    if (got > 0)
        return 0;
    if (got == 0)
        conn_failed(c, BEV_EVENT_READING | BEV_EVENT_EOF, 0, 0);
    else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
        conn_failed(c, BEV_EVENT_READING | BEV_EVENT_ERROR, errno, 0);
    return 1;
}

/*
 * A plain connection between two chunks with nothing buffered, a stream's
 * usual state between events: the read goes to a buffer on the stack and
 * its whole chunks straight to on_data, joined in place (chunk_run), so no
 * chain of the input is allocated and freed per read; only what they leave
 * (a chunk cut by the read's end, anything unusual) goes into the input,
 * for h1_process.
 */
static void recv_chunks(struct h1_conn *c, evutil_socket_t fd)
{
    char buf[H1_READ_MAX];
    struct h1_xfer *hx = c->x;
    struct evbuffer *in = bufferevent_get_input(c->bev);
    ssize_t got;

    do
        got = recv(fd, buf, sizeof(buf), 0);
    while (got < 0 && errno == EINTR);
    if (read_ended(c, got))
        return;
    if (chunk_run(hx, in, buf, (size_t)got, 0, buf, sizeof(buf), 0) < 0)
        return;
    if (evbuffer_get_length(in) > 0 && !hx->x.paused)
        h1_process(hx);                 /* may end the transfer */
}

/* A connection's socket is readable. An idle one has nothing to say:
 * closed. Plain: one readv into the input (no FIONREAD first); the end of
 * the stream or an error goes to conn_failed as the bufferevent's would.
 * TLS: the handshake's next step, a write that waited for it, the records. */
static void conn_recv_cb(evutil_socket_t fd, short what, void *arg)
{
    struct h1_conn *c = arg;
    ssize_t got;

    (void)what;
    if (c->x == NULL) {
        pool_unlink(c->pool, c);
        conn_close(c);
        return;
    }
    if (c->tls) {
        if (c->hs == H1_HS_SHAKING) {
            tls_handshake(c);
            return;
        }
        if (c->end_what) {
            if (!c->x->x.paused)
                tls_end(c);
            return;
        }
        tls_err_clear();
        if (c->wr_wants_read) {
            if (tls_send(c) < 0) {
                tls_end(c);
                return;
            }
            tls_events(c);
        }
        tls_recv(c);
        return;
    }
    if (c->x->st == H1_CHUNK_SIZE && evbuffer_get_length(bufferevent_get_input(c->bev)) == 0) {
        recv_chunks(c, fd);
        return;
    }
    got = sock_read_into(bufferevent_get_input(c->bev), fd, H1_READ_MAX);
    if (read_ended(c, got))
        return;
    h1_process(c->x);
}

void h1_pause(struct upstream_xfer *x)
{
    struct h1_xfer *hx = (struct h1_xfer *)x;

    if (x->paused)
        return;
    x->paused = 1;
    if (hx->conn)
        conn_read_off(hx->conn);
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
    if (hx->connected || hx->conn->tls)
        conn_read_on(hx->conn);
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
