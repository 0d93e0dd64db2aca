/*
 * mock.c -- infergate-mock's entry point: the command line, the listening
 * socket, SIGTERM/SIGINT, dispatch of each request to /_mock/ control or
 * to the API, and the few reply helpers both sides share.
 *
 * The process prints exactly one line on stdout, `listening HOST:PORT`,
 * once the socket is bound (PORT 0 picks a free port), so a test can start
 * it and read the real port. SIGTERM or SIGINT ends the loop; everything is
 * freed and the exit status is 0.
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <netdb.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "mock.h"

#define LISTEN_BACKLOG   1024
#define IDLE_TIMEOUT_SEC 3600   /* evhttp's own default (50 s) would cut long streams */

struct mock mock;

static const char usage_text[] =
"usage: infergate-mock [options]\n"
"  --listen HOST:PORT         address to listen on (default 127.0.0.1:0, 0 = any free port)\n"
"  --name NAME                X-Mock-Name and id prefix (default mock-PORT)\n"
"  --models m1,m2             models of GET /v1/models (default mock-model)\n"
"  --status N                 answer API calls with status N (default 200)\n"
"  --retry-after SECS         Retry-After on error answers (default none)\n"
"  --delay-ms N               wait N ms before the response headers\n"
"  --chunks N                 SSE data chunks per stream (default 5)\n"
"  --chunk-interval-ms N      pause between SSE chunks (default 0)\n"
"  --content-bytes N          pad a chat answer's content to N bytes (default: no padding)\n"
"  --close-after-chunks N     drop a stream's connection after N chunks (0 = off)\n"
"  --stall-after-chunks N     a stream sends N chunks, then nothing (0 = off)\n"
"  --stall-body               a stream sends its head, a JSON answer half its body, then nothing\n"
"  --partial-bytes N          before a close or stall after chunks: N bytes of the next event\n"
"  --hang                     never answer API calls\n"
"  --garbage                  answer API calls 200 with a non-JSON body\n"
"  --drop                     close API calls' connections without an answer\n"
"  --containers a,b           Infernet containers of GET /info\n"
"  --pending N                Infernet pending offchain jobs of GET /info\n"
"  --fail-key KEY=STATUS      this bearer token gets STATUS (repeatable)\n"
"  --fail-next N              faults apply to the next N API calls only\n"
"  --probe-status N           status of GET /v1/models, /info, /api/info\n"
"  --probe-delay-ms N         delay of the same\n"
"  --strict-models            a model not in --models gets 404 model_not_found\n"
"  --tls-cert FILE            serve HTTPS with this PEM certificate (and --tls-key)\n"
"  --tls-key FILE             its PEM private key\n"
"  --quiet                    nothing on stderr but fatal errors\n"
"  --verbose                  one stderr line per answer\n"
"  -h, --help                 this text\n";

void mock_notice(const char *fmt, ...)
{
    va_list ap;

    if (mock.quiet)
        return;
    fprintf(stderr, "infergate-mock %s: ", mock.name[0] ? mock.name : "-");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

/* Appends s as a quoted JSON string. */
void mock_add_json_str(struct evbuffer *b, const char *s)
{
    const char *run = s;
    const char *p;

    evbuffer_add(b, "\"", 1);
    for (p = s; *p; p++) {
        unsigned char c = (unsigned char)*p;
        if (c != '"' && c != '\\' && c >= 0x20)
            continue;
        evbuffer_add(b, run, (size_t)(p - run));
        if (c == '"')
            evbuffer_add(b, "\\\"", 2);
        else if (c == '\\')
            evbuffer_add(b, "\\\\", 2);
        else if (c == '\n')
            evbuffer_add(b, "\\n", 2);
        else
            evbuffer_add_printf(b, "\\u%04x", c);
        run = p + 1;
    }
    evbuffer_add(b, run, (size_t)(p - run));
    evbuffer_add(b, "\"", 1);
}

/* Appends an OpenAI-shaped error object. */
void mock_add_error(struct evbuffer *b, const char *msg, const char *type,
                    const char *code)
{
    evbuffer_add_printf(b, "{\"error\":{\"message\":");
    mock_add_json_str(b, msg);
    evbuffer_add_printf(b, ",\"type\":");
    mock_add_json_str(b, type);
    evbuffer_add_printf(b, ",\"param\":null,\"code\":");
    mock_add_json_str(b, code);
    evbuffer_add_printf(b, "}}");
}

/* Reason phrases libevent 2.1 lacks (it knows 400..417 and 500..505). */
static const char *reason_phrase(int code)
{
    switch (code) {
    case 422: return "Unprocessable Entity";
    case 425: return "Too Early";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 451: return "Unavailable For Legal Reasons";
    case 507: return "Insufficient Storage";
    case 511: return "Network Authentication Required";
    default:  return NULL;              /* libevent's own */
    }
}

/* Sends what is in the request's output buffer; the request is done. */
void mock_reply(struct evhttp_request *req, int code, const char *ctype)
{
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);

    evhttp_add_header(h, "Content-Type", ctype);
    evhttp_add_header(h, "X-Mock-Name", mock.name);
    if (mock.conf.close_connection)
        evhttp_add_header(h, "Connection", "close");
    evhttp_send_reply(req, code, reason_phrase(code), NULL);
}

static void on_request(struct evhttp_request *req, void *arg)
{
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *path = uri ? evhttp_uri_get_path(uri) : NULL;

    (void)arg;
    if (path == NULL || path[0] == '\0')
        path = "/";
    if (strncmp(path, "/_mock/", 7) == 0) {
        mock_control(req, path);
        return;
    }
    mock_api(req, path);
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    (void)what;
    (void)arg;
    mock_notice("signal %d, exiting", (int)sig);
    event_base_loopbreak(mock.base);
}

/* Binds HOST:PORT; writes the bound address into out. Returns the fd or -1. */
static int listen_on(const char *spec, char *out, size_t outlen)
{
    char host[256], port[16], addr[INET6_ADDRSTRLEN];
    const char *colon = strrchr(spec, ':');
    struct addrinfo hints, *res = NULL;
    struct sockaddr_storage ss;
    socklen_t sslen = sizeof(ss);
    int fd, one = 1, rc;
    size_t hl;

    if (colon == NULL) {
        snprintf(host, sizeof(host), "127.0.0.1");
        snprintf(port, sizeof(port), "%s", spec);
    } else {
        hl = (size_t)(colon - spec);
        if (hl >= sizeof(host) || strlen(colon + 1) >= sizeof(port)) {
            fprintf(stderr, "infergate-mock: bad --listen '%s'\n", spec);
            return -1;
        }
        memcpy(host, spec, hl);
        host[hl] = '\0';
        snprintf(port, sizeof(port), "%s", colon + 1);
    }
    hl = strlen(host);
    if (host[0] == '[' && hl > 1 && host[hl - 1] == ']') {
        memmove(host, host + 1, hl - 2);
        host[hl - 2] = '\0';
    }

    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    rc = getaddrinfo(host[0] ? host : NULL, port, &hints, &res);
    if (rc != 0) {
        fprintf(stderr, "infergate-mock: --listen %s: %s\n", spec, gai_strerror(rc));
        return -1;
    }
    fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        fprintf(stderr, "infergate-mock: socket: %s\n", strerror(errno));
        freeaddrinfo(res);
        return -1;
    }
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, res->ai_addr, res->ai_addrlen) < 0 || listen(fd, LISTEN_BACKLOG) < 0) {
        fprintf(stderr, "infergate-mock: listen %s: %s\n", spec, strerror(errno));
        freeaddrinfo(res);
        close(fd);
        return -1;
    }
    freeaddrinfo(res);

    if (getsockname(fd, (struct sockaddr *)&ss, &sslen) < 0) {
        fprintf(stderr, "infergate-mock: getsockname: %s\n", strerror(errno));
        close(fd);
        return -1;
    }
    if (ss.ss_family == AF_INET6) {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
        inet_ntop(AF_INET6, &s6->sin6_addr, addr, sizeof(addr));
        snprintf(out, outlen, "[%s]:%d", addr, ntohs(s6->sin6_port));
    } else {
        struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
        inet_ntop(AF_INET, &s4->sin_addr, addr, sizeof(addr));
        snprintf(out, outlen, "%s:%d", addr, ntohs(s4->sin_port));
    }
    return fd;
}

static int parse_int(const char *opt, const char *s, int min, int max, int *out)
{
    char *end;
    long v;

    errno = 0;
    v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < min || v > max) {
        fprintf(stderr, "infergate-mock: --%s: want an integer in %d..%d, got '%s'\n",
                opt, min, max, s);
        return -1;
    }
    *out = (int)v;
    return 0;
}

static int valid_name(const char *s)
{
    size_t n = strlen(s);

    if (n == 0 || n >= MOCK_NAME_MAX)
        return 0;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
              (*s >= '0' && *s <= '9') || *s == '.' || *s == '_' || *s == '-'))
            return 0;
    return 1;
}

enum {
    OPT_LISTEN = 256, OPT_NAME, OPT_MODELS, OPT_STATUS, OPT_RETRY_AFTER,
    OPT_DELAY, OPT_CHUNKS, OPT_INTERVAL, OPT_CLOSE_AFTER, OPT_HANG,
    OPT_GARBAGE, OPT_DROP, OPT_CONTAINERS, OPT_PENDING, OPT_FAIL_KEY,
    OPT_FAIL_NEXT, OPT_PROBE_STATUS, OPT_PROBE_DELAY, OPT_STRICT, OPT_QUIET,
    OPT_VERBOSE, OPT_CONTENT_BYTES, OPT_TLS_CERT, OPT_TLS_KEY, OPT_STALL_AFTER,
    OPT_STALL_BODY, OPT_PARTIAL
};

static const struct option long_opts[] = {
    { "listen",             required_argument, NULL, OPT_LISTEN },
    { "name",               required_argument, NULL, OPT_NAME },
    { "models",             required_argument, NULL, OPT_MODELS },
    { "status",             required_argument, NULL, OPT_STATUS },
    { "retry-after",        required_argument, NULL, OPT_RETRY_AFTER },
    { "delay-ms",           required_argument, NULL, OPT_DELAY },
    { "chunks",             required_argument, NULL, OPT_CHUNKS },
    { "chunk-interval-ms",  required_argument, NULL, OPT_INTERVAL },
    { "content-bytes",      required_argument, NULL, OPT_CONTENT_BYTES },
    { "close-after-chunks", required_argument, NULL, OPT_CLOSE_AFTER },
    { "stall-after-chunks", required_argument, NULL, OPT_STALL_AFTER },
    { "stall-body",         no_argument,       NULL, OPT_STALL_BODY },
    { "partial-bytes",      required_argument, NULL, OPT_PARTIAL },
    { "hang",               no_argument,       NULL, OPT_HANG },
    { "garbage",            no_argument,       NULL, OPT_GARBAGE },
    { "drop",               no_argument,       NULL, OPT_DROP },
    { "containers",         required_argument, NULL, OPT_CONTAINERS },
    { "pending",            required_argument, NULL, OPT_PENDING },
    { "fail-key",           required_argument, NULL, OPT_FAIL_KEY },
    { "fail-next",          required_argument, NULL, OPT_FAIL_NEXT },
    { "probe-status",       required_argument, NULL, OPT_PROBE_STATUS },
    { "probe-delay-ms",     required_argument, NULL, OPT_PROBE_DELAY },
    { "strict-models",      no_argument,       NULL, OPT_STRICT },
    { "quiet",              no_argument,       NULL, OPT_QUIET },
    { "verbose",            no_argument,       NULL, OPT_VERBOSE },
    { "tls-cert",           required_argument, NULL, OPT_TLS_CERT },
    { "tls-key",            required_argument, NULL, OPT_TLS_KEY },
    { "help",               no_argument,       NULL, 'h' },
    { NULL, 0, NULL, 0 }
};

/* Fills mock.boot from argv. Returns 0, 1 for --help, -1 on error. */
static const char *tls_cert, *tls_key;

static int parse_args(int argc, char **argv, const char **listen_spec)
{
    struct mock_conf *c = &mock.boot;
    const char *name = NULL;
    int ch, rc = 0;

    while ((ch = getopt_long(argc, argv, "h", long_opts, NULL)) != -1) {
        const char *o = optarg;
        switch (ch) {
        case OPT_LISTEN:       *listen_spec = o; break;
        case OPT_NAME:         name = o; break;
        case OPT_MODELS:       rc = mock_conf_set_list(&c->models, o); break;
        case OPT_CONTAINERS:   rc = mock_conf_set_list(&c->containers, o); break;
        case OPT_STATUS:       rc = parse_int("status", o, 200, 599, &c->status); break;
        case OPT_RETRY_AFTER:  rc = parse_int("retry-after", o, 0, 86400, &c->retry_after); break;
        case OPT_DELAY:        rc = parse_int("delay-ms", o, 0, 3600000, &c->delay_ms); break;
        case OPT_CHUNKS:       rc = parse_int("chunks", o, 0, 1000000, &c->chunks); break;
        case OPT_INTERVAL:     rc = parse_int("chunk-interval-ms", o, 0, 3600000, &c->chunk_interval_ms); break;
        case OPT_CONTENT_BYTES: rc = parse_int("content-bytes", o, 0, 1 << 20, &c->content_bytes); break;
        case OPT_CLOSE_AFTER:  rc = parse_int("close-after-chunks", o, 0, 1000000, &c->close_after_chunks); break;
        case OPT_STALL_AFTER:  rc = parse_int("stall-after-chunks", o, 0, 1000000, &c->stall_after_chunks); break;
        case OPT_PARTIAL:      rc = parse_int("partial-bytes", o, 0, 1000000, &c->partial_bytes); break;
        case OPT_STALL_BODY:   c->stall_body = 1; break;
        case OPT_PENDING:      rc = parse_int("pending", o, 0, INT_MAX, &c->pending); break;
        case OPT_FAIL_NEXT:    rc = parse_int("fail-next", o, 0, INT_MAX, &c->fail_next); break;
        case OPT_PROBE_STATUS: rc = parse_int("probe-status", o, 200, 599, &c->probe_status); break;
        case OPT_PROBE_DELAY:  rc = parse_int("probe-delay-ms", o, 0, 3600000, &c->probe_delay_ms); break;
        case OPT_FAIL_KEY:     rc = mock_conf_add_fail_key(c, o); break;
        case OPT_HANG:         c->hang = 1; break;
        case OPT_GARBAGE:      c->garbage = 1; break;
        case OPT_DROP:         c->drop = 1; break;
        case OPT_STRICT:       c->strict_models = 1; break;
        case OPT_QUIET:        mock.quiet = 1; break;
        case OPT_VERBOSE:      mock.verbose = 1; break;
        case OPT_TLS_CERT:     tls_cert = o; break;
        case OPT_TLS_KEY:      tls_key = o; break;
        case 'h':              fputs(usage_text, stdout); return 1;
        default:               fputs(usage_text, stderr); return -1;
        }
        if (rc != 0)
            return -1;
    }
    if (optind < argc) {
        fprintf(stderr, "infergate-mock: unexpected argument '%s'\n", argv[optind]);
        return -1;
    }
    if (name != NULL) {
        if (!valid_name(name)) {
            fprintf(stderr, "infergate-mock: --name: want 1..%d of [A-Za-z0-9._-]\n",
                    MOCK_NAME_MAX - 1);
            return -1;
        }
        snprintf(mock.name, sizeof(mock.name), "%s", name);
    }
    return 0;
}

/*
 * One TLS record per reply. evhttp puts a reply's head, body and each SSE
 * chunk into separate chains of the bufferevent's output, and the OpenSSL
 * bufferevent makes one SSL_write, i.e. one record and one send(), of each
 * chain. So output that arrives in an empty buffer is noted here and, still
 * in this loop iteration (before the next epoll tells the socket writable),
 * made contiguous: what the plain mock writes in one write() then leaves as
 * one record in one send(), as from a TLS server that writes whole
 * replies. The noted bufferevents are held by a reference, as evhttp may
 * free one in between.
 */
#define TLS_COALESCE_MAX 16384          /* one record's worth of plaintext */

static struct {
    struct event *ev;
    struct bufferevent **bev;
    size_t n, cap;
} tls_pend;

static void tls_coalesce(evutil_socket_t fd, short what, void *arg)
{
    size_t i;

    (void)fd;
    (void)what;
    (void)arg;
    for (i = 0; i < tls_pend.n; i++) {
        struct evbuffer *out = bufferevent_get_output(tls_pend.bev[i]);
        size_t len = evbuffer_get_length(out);

        evbuffer_pullup(out, (ev_ssize_t)(len < TLS_COALESCE_MAX ? len : TLS_COALESCE_MAX));
        bufferevent_decref(tls_pend.bev[i]);
    }
    tls_pend.n = 0;
}

static void tls_outbuf_cb(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
    struct bufferevent *bev = arg;

    (void)buf;
    if (info->n_added == 0 || info->orig_size != 0 || tls_pend.ev == NULL)
        return;
    if (tls_pend.n == tls_pend.cap) {
        size_t cap = tls_pend.cap ? tls_pend.cap * 2 : 64;
        struct bufferevent **b = realloc(tls_pend.bev, cap * sizeof(*b));

        if (b == NULL)
            return;                     /* only records split as before */
        tls_pend.bev = b;
        tls_pend.cap = cap;
    }
    bufferevent_incref(bev);
    tls_pend.bev[tls_pend.n++] = bev;
    if (tls_pend.n == 1)
        event_active(tls_pend.ev, 0, 0);
}

/* HTTPS: evhttp asks for each connection's bufferevent (libevent's
 * https-server sample). /_mock/stats counts the handshakes. */
static struct bufferevent *tls_bevcb(struct event_base *base, void *arg)
{
    SSL *ssl = SSL_new(arg);
    struct bufferevent *bev;

    if (ssl == NULL)
        return NULL;
    bev = bufferevent_openssl_socket_new(base, -1, ssl, BUFFEREVENT_SSL_ACCEPTING,
                                         BEV_OPT_CLOSE_ON_FREE);
    if (bev)
        evbuffer_add_cb(bufferevent_get_output(bev), tls_outbuf_cb, bev);
    return bev;
}

/* Counts the handshakes by SNI ("" when none was sent). */
static int tls_sni_cb(SSL *ssl, int *alert, void *arg)
{
    const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);

    json_t *o = mock.tls_snis, *n;

    (void)alert;
    (void)arg;
    if (o == NULL || json_object_size(o) >= 64)
        return SSL_TLSEXT_ERR_OK;
    n = json_object_get(o, name ? name : "");
    json_object_set_new(o, name ? name : "", json_integer(n ? json_integer_value(n) + 1 : 1));
    return SSL_TLSEXT_ERR_OK;
}

static SSL_CTX *tls_setup(void)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());

    if (ctx == NULL || SSL_CTX_use_certificate_chain_file(ctx, tls_cert) != 1
        || SSL_CTX_use_PrivateKey_file(ctx, tls_key, SSL_FILETYPE_PEM) != 1) {
        fprintf(stderr, "infergate-mock: --tls-cert/--tls-key: %s\n",
                ERR_reason_error_string(ERR_get_error()));
        SSL_CTX_free(ctx);
        return NULL;
    }
    SSL_CTX_set_session_id_context(ctx, (const unsigned char *)"mock", 4);
    SSL_CTX_set_tlsext_servername_callback(ctx, tls_sni_cb);
    mock.tls_snis = json_object();
    return ctx;
}

long long mock_tls_handshakes(long long *resumed)
{
    SSL_CTX *ctx = mock.tls;

    *resumed = ctx ? SSL_CTX_sess_hits(ctx) : 0;
    return ctx ? SSL_CTX_sess_accept_good(ctx) : 0;
}

int main(int argc, char **argv)
{
    const char *listen_spec = "127.0.0.1:0";
    char bound[INET6_ADDRSTRLEN + 16];
    struct event *sigterm = NULL, *sigint = NULL;
    sigset_t block;
    int fd, rc, status = 1;

    signal(SIGPIPE, SIG_IGN);
    mock_conf_defaults(&mock.boot);
    rc = parse_args(argc, argv, &listen_spec);
    if (rc != 0) {
        mock_conf_free(&mock.boot);
        return rc > 0 ? 0 : 2;
    }

    fd = listen_on(listen_spec, bound, sizeof(bound));
    if (fd < 0) {
        mock_conf_free(&mock.boot);
        return 1;
    }
    if (mock.name[0] == '\0')
        snprintf(mock.name, sizeof(mock.name), "mock-%s", strrchr(bound, ':') + 1);

    mock.base = event_base_new();
    mock.http = mock.base ? evhttp_new(mock.base) : NULL;
    mock.scratch = evbuffer_new();
    if (mock.http == NULL || mock.scratch == NULL || mock_state_init() != 0) {
        fprintf(stderr, "infergate-mock: out of memory\n");
        close(fd);
        goto out;
    }
    evhttp_set_timeout(mock.http, IDLE_TIMEOUT_SEC);
    evhttp_set_gencb(mock.http, on_request, NULL);
    if ((tls_cert != NULL) != (tls_key != NULL)) {
        fprintf(stderr, "infergate-mock: --tls-cert and --tls-key go together\n");
        close(fd);
        goto out;
    }
    if (tls_cert) {
        if ((mock.tls = tls_setup()) == NULL) {
            close(fd);
            goto out;
        }
        evhttp_set_bevcb(mock.http, tls_bevcb, mock.tls);
        /* accepted sockets inherit it (Linux): an SSE event or a reply
         * is not held back by Nagle behind the previous one's ACK */
        if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &(int){1}, sizeof(int)) != 0
            || (tls_pend.ev = event_new(mock.base, -1, 0, tls_coalesce, NULL)) == NULL) {
            fprintf(stderr, "infergate-mock: TLS setup: %s\n", strerror(errno));
            close(fd);
            goto out;
        }
    }
    if (evhttp_accept_socket_with_handle(mock.http, fd) == NULL) {
        fprintf(stderr, "infergate-mock: cannot accept on %s\n", bound);
        close(fd);
        goto out;
    }

    sigterm = evsignal_new(mock.base, SIGTERM, on_signal, NULL);
    sigint = evsignal_new(mock.base, SIGINT, on_signal, NULL);
    if (sigterm == NULL || sigint == NULL ||
        evsignal_add(sigterm, NULL) != 0 || evsignal_add(sigint, NULL) != 0) {
        fprintf(stderr, "infergate-mock: cannot watch signals\n");
        goto out;
    }

    printf("listening %s\n", bound);
    fflush(stdout);
    mock_notice("listening on %s", bound);

    if (event_base_dispatch(mock.base) == 0 || event_base_got_break(mock.base))
        status = 0;

out:
    /* a second SIGTERM/SIGINT during cleanup must not kill us half-way */
    sigemptyset(&block);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGINT);
    sigprocmask(SIG_BLOCK, &block, NULL);
    mock_api_shutdown();
    tls_coalesce(-1, 0, NULL);          /* the references of a last round */
    if (tls_pend.ev)
        event_free(tls_pend.ev);
    free(tls_pend.bev);
    if (mock.http)
        evhttp_free(mock.http);
    SSL_CTX_free(mock.tls);
    json_decref(mock.tls_snis);
    if (sigterm)
        event_free(sigterm);
    if (sigint)
        event_free(sigint);
    mock_state_free();
    if (mock.scratch)
        evbuffer_free(mock.scratch);
    if (mock.base)
        event_base_free(mock.base);
    mock_conf_free(&mock.boot);
    libevent_global_shutdown();
    return status;
}
