/*
 * test_upstream.c -- the plain HTTP/1.1 upstream client (src/io/upstream_h1.c)
 * through upstream.h, against a scripted server on a loopback socket in
 * the same event loop: framing (Content-Length, chunked with extensions
 * and trailers, chunks joined per read, chunks cut anywhere across
 * reads and reads between chunks, until close, 1xx, 204, a head cut in its
 * blank line), keep-alive reuse, a pooled
 * connection that died, garbage and truncation, refused connections,
 * timeouts, pause/resume, cancel from inside a callback, and the curl
 * path for names.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <cmocka.h>

#include <curl/curl.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>

#include "upstream.h"
#include "upstream_int.h"   /* a transfer's kind: which client took it */

/* --- the scripted server ------------------------------------------------ */

struct srv {
    struct event_base     *base;
    struct evconnlistener *lis;
    int                    port;
    const char            *resp;        /* written whole for each request, */
    const char            *rest;        /* or in parts cut at '\001', 30 ms apart */
    struct event          *next;        /* writes the next part */
    struct bufferevent    *bev;         /* ... on this connection */
    const size_t          *watch;       /* the client's byte count, */
    size_t                 seen[8];     /* ... when part i + 1 was written */
    int                    nparts;
    int                    close_after; /* close after each response */
    int                    silent;      /* never answer */
    int                    accepted;
    int                    requests;
    char                   last[4096];  /* the last request, head and body */
    size_t                 body_len;    /* the last request's body length, */
    unsigned long          body_sum;    /* ... and its bytes' weighted sum */
    struct bufferevent    *conns[16];   /* open server sides, freed at the end */
};

static void srv_drop(struct srv *s, struct bufferevent *bev)
{
    size_t i;

    for (i = 0; i < sizeof(s->conns) / sizeof(s->conns[0]); i++)
        if (s->conns[i] == bev)
            s->conns[i] = NULL;
    bufferevent_free(bev);
}

/* Writes the part of s->rest up to the next '\001' (the last: to its end). */
static void srv_part(evutil_socket_t fd, short what, void *arg)
{
    struct srv *s = arg;
    const char *cut = strchr(s->rest, '\001');
    size_t n = cut ? (size_t)(cut - s->rest) : strlen(s->rest);
    struct timeval tv = { 0, 30000 };

    (void)fd;
    (void)what;
    if (s->nparts > 0 && s->nparts <= 8 && s->watch)
        s->seen[s->nparts - 1] = *s->watch;
    s->nparts++;
    bufferevent_write(s->bev, s->rest, n);
    s->rest = cut ? cut + 1 : NULL;
    if (s->rest)
        evtimer_add(s->next, &tv);
}

static void srv_read(struct bufferevent *bev, void *arg)
{
    struct srv *s = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    struct evbuffer_ptr end = evbuffer_search(in, "\r\n\r\n", 4, NULL);
    size_t head, body = 0, n;
    char *cl;

    if (end.pos < 0)
        return;
    head = (size_t)end.pos + 4;
    n = evbuffer_get_length(in) < sizeof(s->last) - 1 ? evbuffer_get_length(in)
                                                      : sizeof(s->last) - 1;
    evbuffer_copyout(in, s->last, n);
    s->last[n] = '\0';
    if ((cl = strcasestr(s->last, "Content-Length: ")) != NULL)
        body = strtoul(cl + 16, NULL, 10);
    if (evbuffer_get_length(in) < head + body)
        return;
    s->last[head + body < n ? head + body : n] = '\0';
    {
        const unsigned char *b = evbuffer_pullup(in, (ssize_t)(head + body));
        size_t i;
        s->body_len = body;
        s->body_sum = 0;
        for (i = 0; i < body; i++)
            s->body_sum += (unsigned long)b[head + i] * (i % 251 + 1);
    }
    evbuffer_drain(in, head + body);
    s->requests++;
    if (s->silent)
        return;
    if (s->close_after) {
        /* The answer is small: send it and hang up without saying so. */
        ssize_t n = send(bufferevent_getfd(bev), s->resp, strlen(s->resp), 0);
        assert_int_equal(n, (ssize_t)strlen(s->resp));
        srv_drop(s, bev);
        return;
    }
    if (strchr(s->resp, '\001')) {
        int one = 1;
        setsockopt(bufferevent_getfd(bev), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        s->rest = s->resp;
        s->bev = bev;
        if (s->next == NULL)
            s->next = evtimer_new(s->base, srv_part, s);
        srv_part(-1, 0, s);
        return;
    }
    bufferevent_write(bev, s->resp, strlen(s->resp));
}

static void srv_event(struct bufferevent *bev, short what, void *arg)
{
    (void)what;
    srv_drop(arg, bev);
}

static void srv_accept(struct evconnlistener *l, evutil_socket_t fd,
                       struct sockaddr *sa, int len, void *arg)
{
    struct srv *s = arg;
    struct bufferevent *bev = bufferevent_socket_new(s->base, fd, BEV_OPT_CLOSE_ON_FREE);

    (void)l;
    (void)sa;
    (void)len;
    s->accepted++;
    for (size_t i = 0; i < sizeof(s->conns) / sizeof(s->conns[0]); i++)
        if (s->conns[i] == NULL) {
            s->conns[i] = bev;
            break;
        }
    bufferevent_setcb(bev, srv_read, NULL, srv_event, s);
    bufferevent_enable(bev, EV_READ);
}

static void srv_start(struct srv *s, struct event_base *base, const char *resp)
{
    struct sockaddr_in sin;
    socklen_t slen = sizeof(sin);

    memset(s, 0, sizeof(*s));
    memset(&sin, 0, sizeof(sin));
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    s->base = base;
    s->resp = resp;
    s->lis = evconnlistener_new_bind(base, srv_accept, s,
                                     LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE, 16,
                                     (struct sockaddr *)&sin, sizeof(sin));
    assert_non_null(s->lis);
    getsockname(evconnlistener_get_fd(s->lis), (struct sockaddr *)&sin, &slen);
    s->port = ntohs(sin.sin_port);
}

/* --- a client transfer ---------------------------------------------------- */

struct got {
    struct event_base     *base;
    struct upstream       *up;
    struct upstream_xfer  *x;
    int                    status;
    char                   ctype[64];
    char                   xa[64];       /* X-A, by name */
    char                   second[64];   /* "name=value" of header 1 */
    size_t                 nh;
    int                    iter_ok;       /* _next gave what _at gives */
    char                   body[8192];
    size_t                 len;
    int                    done;
    enum upstream_result   res;
    int                    ndata;
    int                    nending;       /* on_data calls told the end is here */
    int                    pause_first;   /* PAUSE on the first data */
    int                    cancel_in_data;/* cancel itself from on_data */
    int                    again;         /* start one more from on_done */
    const char            *req_body;      /* NULL: {"a":1} */
    size_t                 req_body_len;
    const char            *url;
    char                   msg[256];      /* on_done's */
};

static void got_start(struct got *g, const char *url);

static enum upstream_verdict on_headers(void *arg, struct upstream_xfer *x, int status)
{
    struct got *g = arg;
    const char *ct = upstream_resp_header(x, "content-type");

    const char *xa = upstream_resp_header(x, "x-a"), *n = NULL, *v = NULL;

    g->status = status;
    snprintf(g->ctype, sizeof(g->ctype), "%s", ct ? ct : "");
    snprintf(g->xa, sizeof(g->xa), "%s", xa ? xa : "");
    g->nh = upstream_resp_nheaders(x);
    if (g->nh > 1)
        upstream_resp_header_at(x, 1, &n, &v);
    snprintf(g->second, sizeof(g->second), "%s=%s", n ? n : "", v ? v : "");
    {
        struct upstream_rh_iter it = { 0, 0 };
        size_t i = 0, inlen;
        const char *in, *iv;
        g->iter_ok = 1;
        while (upstream_resp_header_next(x, &it, &in, &inlen, &iv)) {
            if (i >= g->nh)
                g->iter_ok = 0;
            else {
                upstream_resp_header_at(x, i, &n, &v);
                if (n != in || v != iv || inlen != strlen(in))
                    g->iter_ok = 0;
            }
            i++;
        }
        if (i != g->nh)
            g->iter_ok = 0;
    }
    return UPSTREAM_CONTINUE;
}

static enum upstream_verdict on_data(void *arg, const char *data, size_t len)
{
    struct got *g = arg;

    if (g->len + len < sizeof(g->body)) {
        memcpy(g->body + g->len, data, len);
        g->len += len;
        g->body[g->len] = '\0';
    }
    g->ndata++;
    if (g->x && upstream_ending(g->x))
        g->nending++;
    if (g->cancel_in_data) {
        upstream_cancel(g->x);
        g->x = NULL;
        event_base_loopbreak(g->base);
        return UPSTREAM_CONTINUE;
    }
    if (g->pause_first && g->ndata == 1)
        return UPSTREAM_PAUSE;
    return UPSTREAM_CONTINUE;
}

static void on_done(void *arg, enum upstream_result res, const char *msg)
{
    struct got *g = arg;

    if (getenv("TEST_UPSTREAM_VERBOSE"))
        fprintf(stderr, "done: %d %s\n", (int)res, msg);
    g->x = NULL;
    g->res = res;
    snprintf(g->msg, sizeof(g->msg), "%s", msg ? msg : "");
    g->done++;
    if (g->again) {
        g->again = 0;
        g->len = 0;
        got_start(g, g->url);      /* reuses the connection just released */
        return;
    }
    event_base_loopbreak(g->base);
}

static const struct upstream_cbs cbs = { on_headers, on_data, on_done };

static void got_start(struct got *g, const char *url)
{
    static const struct upstream_header hdrs[] = {
        { "Authorization", "Bearer sk-test" }, { "Content-Type", "application/json" },
    };
    struct upstream_req r;

    memset(&r, 0, sizeof(r));
    r.url = url;
    r.method = "POST";
    r.headers = hdrs;
    r.nheaders = 2;
    r.body = g->req_body ? g->req_body : "{\"a\":1}";
    r.body_len = g->req_body ? g->req_body_len : 7;
    r.connect_timeout_ms = 1000;
    r.total_timeout_ms = 3000;
    g->url = url;
    g->x = upstream_start(g->up, &r, &cbs, g);
    assert_non_null(g->x);
}

/* Runs the loop until the transfer ends (or 5 s pass: then it fails). */
static void run(struct got *g)
{
    struct timeval tv = { 5, 0 };
    int done = g->done;

    event_base_loopexit(g->base, &tv);
    event_base_dispatch(g->base);
    assert_true(g->done > done);
}

struct fix {
    struct event_base *base;
    struct upstream   *up;
    struct srv         srv;
    struct got         g;
    char               url[128];
};

static struct fix *fix_new(const char *resp)
{
    struct fix *f = calloc(1, sizeof(*f));

    f->base = event_base_new();
    f->up = upstream_new(f->base);
    assert_non_null(f->up);
    srv_start(&f->srv, f->base, resp);
    snprintf(f->url, sizeof(f->url), "http://127.0.0.1:%d/v1/chat/completions?x=1",
             f->srv.port);
    f->g.base = f->base;
    f->g.up = f->up;
    return f;
}

static void fix_free(struct fix *f)
{
    if (f->g.x)
        upstream_cancel(f->g.x);
    upstream_free(f->up);
    for (size_t i = 0; i < sizeof(f->srv.conns) / sizeof(f->srv.conns[0]); i++)
        if (f->srv.conns[i])
            bufferevent_free(f->srv.conns[i]);
    if (f->srv.lis)
        evconnlistener_free(f->srv.lis);
    if (f->srv.next)
        event_free(f->srv.next);
    event_base_free(f->base);
    free(f);
}

/* --- tests --------------------------------------------------------------- */

static void test_content_length_and_reuse(void **state)
{
    struct fix *f = fix_new("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                            "X-A:  spaced value  \r\nContent-Length: 11\r\n\r\n{\"ok\":true}");
    int i;

    (void)state;
    for (i = 0; i < 3; i++) {
        f->g.len = 0;
        got_start(&f->g, f->url);
        run(&f->g);
        assert_int_equal(f->g.res, UPSTREAM_OK);
        assert_int_equal(f->g.status, 200);
        assert_string_equal(f->g.ctype, "application/json");
        assert_string_equal(f->g.body, "{\"ok\":true}");
    }
    assert_int_equal(f->srv.requests, 3);
    assert_int_equal(f->srv.accepted, 1);          /* one connection, kept alive */
    assert_non_null(strstr(f->srv.last, "POST /v1/chat/completions?x=1 HTTP/1.1\r\n"));
    assert_non_null(strstr(f->srv.last, "\r\nHost: 127.0.0.1:"));
    assert_non_null(strstr(f->srv.last, "\r\nAuthorization: Bearer sk-test\r\n"));
    assert_non_null(strstr(f->srv.last, "\r\nContent-Length: 7\r\n\r\n{\"a\":1}"));
    fix_free(f);
}

static void test_headers_accessors(void **state)
{
    struct fix *f = fix_new("HTTP/1.1 201 Created\r\nX-A:  spaced value  \r\n"
                            "x-b: 2\r\nContent-Length: 0\r\n\r\n");

    (void)state;
    got_start(&f->g, f->url);
    run(&f->g);
    assert_int_equal(f->g.res, UPSTREAM_OK);
    assert_int_equal(f->g.status, 201);
    assert_int_equal(f->g.nh, 3);
    assert_true(f->g.iter_ok);
    assert_string_equal(f->g.xa, "spaced value");  /* trimmed, found by any case */
    assert_string_equal(f->g.second, "x-b=2");
    assert_int_equal(f->g.len, 0);
    fix_free(f);
}

/* More fields than those whose lengths are kept (UPSTREAM_RH_LENS): the
 * later ones are measured, lookups and both walks still agree. */
static void test_many_fields(void **state)
{
    char resp[2048];
    size_t n;
    struct fix *f;
    int i;

    (void)state;
    n = (size_t)snprintf(resp, sizeof(resp), "HTTP/1.1 200 OK\r\n");
    for (i = 0; i < 40; i++)
        n += (size_t)snprintf(resp + n, sizeof(resp) - n, "X-F%d: value %d\r\n", i, i);
    snprintf(resp + n, sizeof(resp) - n, "x-A: late\r\nContent-Length: 2\r\n\r\nok");
    f = fix_new(resp);
    got_start(&f->g, f->url);
    run(&f->g);
    assert_int_equal(f->g.res, UPSTREAM_OK);
    assert_int_equal(f->g.nh, 42);
    assert_true(f->g.iter_ok);
    assert_string_equal(f->g.xa, "late");
    assert_string_equal(f->g.second, "X-F1=value 1");
    assert_string_equal(f->g.body, "ok");
    fix_free(f);
}

static void test_chunked_extensions_trailers(void **state)
{
    struct fix *f = fix_new("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
                            "Content-Type: text/event-stream\r\n\r\n"
                            "5;ext=1\r\nhello\r\n1\r\n \r\nA\r\n0123456789\r\n"
                            "0\r\nX-Trailer: t\r\n\r\n");

    (void)state;
    got_start(&f->g, f->url);
    run(&f->g);
    assert_int_equal(f->g.res, UPSTREAM_OK);
    assert_string_equal(f->g.body, "hello 0123456789");
    f->g.len = 0;
    got_start(&f->g, f->url);
    run(&f->g);
    assert_string_equal(f->g.body, "hello 0123456789");
    assert_int_equal(f->srv.accepted, 1);
    fix_free(f);
}

/* Whole chunks that arrive together reach on_data in one call, their data
 * joined exactly (hex in either case, leading zeros); a chunk the fast
 * path does not take (an extension) is passed on by itself, the chunks
 * after it joined again. */
static void test_chunks_joined_per_read(void **state)
{
    static char resp[4096];
    char want[2048];
    size_t n = 0, w = 0;
    int i;

    (void)state;
    n += (size_t)snprintf(resp, sizeof(resp), "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
                          "Content-Type: text/event-stream\r\n\r\n");
    for (i = 0; i < 20; i++) {
        char ev[64];
        int len = snprintf(ev, sizeof(ev), "data: {\"n\":%d,\"pad\":\"%.*s\"}\n\n", i, i,
                           "abcdefghijklmnopqrstuvwxyz");
        n += (size_t)snprintf(resp + n, sizeof(resp) - n, i % 2 ? "%X\r\n%s\r\n"
                              : "00%x\r\n%s\r\n", len, ev);
        w += (size_t)snprintf(want + w, sizeof(want) - w, "%s", ev);
    }
    snprintf(resp + n, sizeof(resp) - n, "0\r\n\r\n");
    {
        struct fix *f = fix_new(resp);
        got_start(&f->g, f->url);
        run(&f->g);
        assert_int_equal(f->g.res, UPSTREAM_OK);
        assert_string_equal(f->g.body, want);
        assert_int_equal(f->g.ndata, 1);            /* one read: one call */
        assert_int_equal(f->g.nending, 1);          /* told the end came with it */
        f->g.len = 0;                               /* the connection is reused */
        got_start(&f->g, f->url);
        run(&f->g);
        assert_string_equal(f->g.body, want);
        assert_int_equal(f->srv.accepted, 1);
        fix_free(f);
    }
    {
        struct fix *f = fix_new("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                                "2\r\nab\r\n2\r\ncd\r\n2;e=1\r\nef\r\n2\r\ngh\r\n"
                                "2\r\nij\r\n0\r\n\r\n");
        got_start(&f->g, f->url);
        run(&f->g);
        assert_int_equal(f->g.res, UPSTREAM_OK);
        assert_string_equal(f->g.body, "abcdefghij");
        /* "abcd", then the extension's chunk by itself up to its data,
         * whose rest goes with the whole chunks after it: "efghij". */
        assert_int_equal(f->g.ndata, 2);
        assert_int_equal(f->g.nending, 1);
        fix_free(f);
    }
}

/* A chunked body cut at every kind of place across reads (inside a size
 * line, between its CR and LF, inside data, before and inside the CRLF
 * after data, inside the last chunk): the bytes come out exact, and what
 * each read completed is passed on before the next read arrives. */
static void test_chunks_cut_across_reads(void **state)
{
    struct fix *f = fix_new("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                            "5\r\nhello\r\n1\001" "0\r\n0123456789ABCDEF\r\n3\r\001\n"
                            "abc\r\n4\r\nde\001" "fg\r\n2\r\nhi\001\r\n2\r\njk\r\001\n"
                            "0\r\n\001\r\n");

    (void)state;
    f->srv.watch = &f->g.len;
    got_start(&f->g, f->url);
    run(&f->g);
    assert_int_equal(f->g.res, UPSTREAM_OK);
    assert_string_equal(f->g.body, "hello0123456789ABCDEFabcdefghijk");
    assert_int_equal(f->srv.nparts, 7);
    assert_int_equal(f->srv.seen[0], 5);            /* "hello" */
    assert_int_equal(f->srv.seen[1], 21);           /* + 16 bytes */
    assert_int_equal(f->srv.seen[2], 26);           /* + "abc" "de" */
    assert_int_equal(f->srv.seen[3], 30);           /* + "fg" "hi" */
    assert_int_equal(f->srv.seen[4], 32);           /* + "jk" */
    assert_int_equal(f->srv.seen[5], 32);
    assert_int_equal(f->g.nending, 0);              /* the last chunk came alone */
    fix_free(f);
}

/* The rest of a chunk a read cut goes to on_data with the whole chunks
 * after it and the start of a chunk cut again, in one call per read;
 * when the last chunk follows in the same read, that call is told the end
 * is here (upstream_ending), and a read without the end is not. */
static void test_cut_chunk_rest_joined(void **state)
{
    struct fix *f = fix_new("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                            "6\r\nabc\001def\r\n2\r\ngh\r\n3\r\nij\001k\r\n0\r\n\r\n");

    (void)state;
    f->srv.watch = &f->g.len;
    got_start(&f->g, f->url);
    run(&f->g);
    assert_int_equal(f->g.res, UPSTREAM_OK);
    assert_string_equal(f->g.body, "abcdefghijk");
    assert_int_equal(f->srv.seen[0], 3);            /* "abc" */
    assert_int_equal(f->srv.seen[1], 10);           /* "def" "gh" "ij" */
    /* "abc", "defghij" (the rest, a whole chunk, the start of a cut
     * one: one call), "k" with the end. */
    assert_int_equal(f->g.ndata, 3);
    assert_int_equal(f->g.nending, 1);
    fix_free(f);
}

/* Reads that start between chunks (a stream's usual rhythm) go through a
 * buffer of their own: whole chunks passed on, a chunk the read cuts kept
 * for the next one, the last chunk ending the transfer; the connection is
 * pooled after a clean end and not when bytes followed the last chunk. */
static void test_chunks_read_apart(void **state)
{
    struct fix *f = fix_new("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n\001"
                            "2\r\ncd\r\n3\r\nef\001" "g\r\n2\r\nhi\r\n\001"
                            "2\r\njk\r\n0\r\n\r\n");

    (void)state;
    f->srv.watch = &f->g.len;
    got_start(&f->g, f->url);
    run(&f->g);
    assert_int_equal(f->g.res, UPSTREAM_OK);
    assert_string_equal(f->g.body, "abcdefghijk");
    assert_int_equal(f->srv.seen[0], 2);
    assert_int_equal(f->srv.seen[1], 6);            /* "cd" and the "ef" of "efg" */
    assert_int_equal(f->srv.seen[2], 9);
    f->g.len = 0;
    got_start(&f->g, f->url);
    run(&f->g);
    assert_string_equal(f->g.body, "abcdefghijk");
    assert_int_equal(f->srv.accepted, 1);           /* pooled after the clean end */
    fix_free(f);

    f = fix_new("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n\001"
                "0\r\n\r\nXYZ");
    got_start(&f->g, f->url);
    run(&f->g);
    assert_int_equal(f->g.res, UPSTREAM_OK);
    assert_string_equal(f->g.body, "ab");
    f->g.len = 0;
    got_start(&f->g, f->url);
    run(&f->g);
    assert_int_equal(f->g.res, UPSTREAM_OK);
    assert_int_equal(f->srv.accepted, 2);           /* stray bytes: not pooled */
    fix_free(f);
}

/* A head whose blank line is cut across reads (in its CR LF CR LF, and a
 * 100 Continue in front in the same read): found whatever the cut. */
static void test_head_cut_across_reads(void **state)
{
    static const char *const resps[] = {
        "HTTP/1.1 201 Created\r\nX-A: 1\r\nx-b: 2\r\n\r\001\nContent-Length: 0\r\n\r\n",
        "HTTP/1.1 201 Created\r\nX-A: 1\r\nx-b: 2\r\nContent-Length: 2\r\n\r\001\nhi",
        "HTTP/1.1 201 Created\r\nX-A: 1\r\nx-b: 2\r\nContent-Length: 2\r\n\001\r\nhi",
        "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nX-A: 1\r\nx-b: 2\r\n"
        "Content-Length: 2\r\n\r\001\nhi",
    };
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(resps) / sizeof(resps[0]); i++) {
        struct fix *f = fix_new(resps[i]);
        got_start(&f->g, f->url);
        run(&f->g);
        assert_int_equal(f->g.status, 201);
        assert_string_equal(f->g.xa, "1");
        assert_string_equal(f->g.second, "x-b=2");
        assert_true(f->g.iter_ok);
        if (i == 0) {
            /* the blank line ended the head: the rest is body until close */
            assert_int_equal(f->g.nh, 2);
        } else {
            assert_int_equal(f->g.res, UPSTREAM_OK);
            assert_string_equal(f->g.body, "hi");
        }
        fix_free(f);
    }
}

static void test_until_close(void **state)
{
    struct fix *f = fix_new("HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it");

    (void)state;
    f->srv.close_after = 1;
    got_start(&f->g, f->url);
    run(&f->g);
    assert_int_equal(f->g.res, UPSTREAM_OK);
    assert_string_equal(f->g.body, "all of it");
    f->g.len = 0;
    got_start(&f->g, f->url);
    run(&f->g);
    assert_int_equal(f->srv.accepted, 2);          /* not reused */
    fix_free(f);
}

/* The Connection field decides reuse: its usual one token in any case
 * (taken without a token search), a list (searched), and a value that
 * only looks like the token ("Keep\rAlive": a bare CR is not a '-'). */
static void test_connection_field(void **state)
{
    static const struct { const char *resp; int accepted; } cases[] = {
        { "HTTP/1.1 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 2\r\n\r\nok", 1 },
        { "HTTP/1.1 200 OK\r\nCONNECTION: Close\r\nContent-Length: 2\r\n\r\nok", 2 },
        { "HTTP/1.1 200 OK\r\nconnection: keep-alive, close\r\nContent-Length: 2\r\n\r\nok", 2 },
        { "HTTP/1.0 200 OK\r\nconnection: KEEP-ALIVE\r\nContent-Length: 2\r\n\r\nok", 1 },
        { "HTTP/1.0 200 OK\r\nConnection: Keep\rAlive\r\nContent-Length: 2\r\n\r\nok", 2 },
        { "HTTP/1.0 200 OK\r\nConnection: close, keep-alive\r\nContent-Length: 2\r\n\r\nok", 2 },
        { "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", 2 },
    };
    size_t i;
    int k;

    (void)state;
    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct fix *f = fix_new(cases[i].resp);
        for (k = 0; k < 2; k++) {
            f->g.len = 0;
            got_start(&f->g, f->url);
            run(&f->g);
            assert_int_equal(f->g.res, UPSTREAM_OK);
            assert_string_equal(f->g.body, "ok");
        }
        if (f->srv.accepted != cases[i].accepted)
            fail_msg("case %zu: %d connections", i, f->srv.accepted);
        fix_free(f);
    }
}

static void test_interim_and_no_content(void **state)
{
    struct fix *f = fix_new("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\n"
                            "Link: </a>\r\n\r\nHTTP/1.1 204 No Content\r\nX-Final: 1\r\n\r\n");

    (void)state;
    got_start(&f->g, f->url);
    run(&f->g);
    assert_int_equal(f->g.res, UPSTREAM_OK);
    assert_int_equal(f->g.status, 204);
    assert_int_equal(f->g.len, 0);
    fix_free(f);
}

static void test_garbage_and_truncation(void **state)
{
    static const char *const bad[] = {
        "garbage garbage\r\n\r\n",
        "HTTP/1.1 2000 OK\r\n\r\n",
        "HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
        "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 18446744073709551616\r\n\r\n",   /* 2^64 */
        "HTTP/1.1 200 OK\r\nContent-Length: 5x\r\n\r\nhello",
        "HTTP/1.1 200 OK\r\nContent-Length: 5 5\r\n\r\nhello",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXY",
        "HTTP/1.1 200 OK\r\n Folded: x\r\n\r\n",
    };
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct fix *f = fix_new(bad[i]);
        got_start(&f->g, f->url);
        run(&f->g);
        if (f->g.res != UPSTREAM_ERR_PROTOCOL)
            fail_msg("case %zu: result %d", i, (int)f->g.res);
        fix_free(f);
    }
    {   /* a body cut short by the close */
        struct fix *f = fix_new("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf!");
        f->srv.close_after = 1;
        got_start(&f->g, f->url);
        run(&f->g);
        assert_int_equal(f->g.res, UPSTREAM_ERR_PROTOCOL);
        assert_string_equal(f->g.body, "half!");
        fix_free(f);
    }
    {   /* a hang-up before any byte, on a fresh connection: not sent again */
        struct fix *f = fix_new("");
        f->srv.close_after = 1;
        got_start(&f->g, f->url);
        run(&f->g);
        assert_int_equal(f->g.res, UPSTREAM_ERR_PROTOCOL);
        assert_int_equal(f->srv.requests, 1);
        fix_free(f);
    }
}

/* The server answers without "Connection: close" and hangs up: the next
 * request, started at once from on_done, takes the dead pooled
 * connection, and is sent again on a new one. */
static void test_dead_pooled_connection_resent(void **state)
{
    struct fix *f = fix_new("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");

    (void)state;
    f->srv.close_after = 1;
    f->g.again = 1;
    got_start(&f->g, f->url);
    run(&f->g);                     /* the first, then the second from on_done */
    if (f->g.done < 2)
        run(&f->g);
    assert_int_equal(f->g.done, 2);
    assert_int_equal(f->g.res, UPSTREAM_OK);
    assert_string_equal(f->g.body, "ok");
    assert_int_equal(f->srv.requests, 2);
    assert_int_equal(f->srv.accepted, 2);
    fix_free(f);
}

/* A kept connection is written with one writev; a body the socket cannot
 * take at once goes on from the write event, whole and in order, and the
 * connection is kept for the next request. */
static void test_big_body_on_kept_connection(void **state)
{
    struct fix *f = fix_new("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    size_t n = 8u << 20, i;
    unsigned long sum = 0;
    char *big = malloc(n);

    (void)state;
    assert_non_null(big);
    for (i = 0; i < n; i++) {
        big[i] = (char)('a' + i % 26);
        sum += (unsigned long)(unsigned char)big[i] * (i % 251 + 1);
    }
    got_start(&f->g, f->url);
    run(&f->g);
    assert_int_equal(f->g.res, UPSTREAM_OK);
    f->g.len = 0;
    f->g.req_body = big;
    f->g.req_body_len = n;
    got_start(&f->g, f->url);       /* on the kept connection */
    run(&f->g);
    assert_int_equal(f->g.res, UPSTREAM_OK);
    assert_string_equal(f->g.body, "ok");
    assert_int_equal(f->srv.body_len, n);
    assert_int_equal(f->srv.body_sum, sum);
    f->g.len = 0;
    f->g.req_body = NULL;
    got_start(&f->g, f->url);
    run(&f->g);
    assert_int_equal(f->g.res, UPSTREAM_OK);
    assert_int_equal(f->srv.body_len, 7);
    assert_int_equal(f->srv.requests, 3);
    assert_int_equal(f->srv.accepted, 1);          /* kept all along */
    free(big);
    fix_free(f);
}

/* A CR or LF in a field's name or value would split the head: refused
 * (the plain client only knows methods without them); a caller whose
 * fields were checked where they came in says so (fields_checked: then
 * they are only measured). */
static void test_fields_with_crlf_refused(void **state)
{
    struct fix *f = fix_new("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    static const struct upstream_header bad_value[] = { { "X-A", "1\r\nX-Evil: 1" } };
    static const struct upstream_header bad_name[] = { { "X-A\nX-Evil", "1" } };
    static const struct upstream_header good[] = { { "X-A", "1" } };
    struct upstream_req r;

    (void)state;
    memset(&r, 0, sizeof(r));
    r.url = f->url;
    r.method = "GET";
    r.connect_timeout_ms = 1000;
    r.total_timeout_ms = 3000;
    r.nheaders = 1;
    r.headers = bad_value;
    assert_null(upstream_start(f->up, &r, &cbs, &f->g));
    r.headers = bad_name;
    assert_null(upstream_start(f->up, &r, &cbs, &f->g));
    r.headers = good;
    r.fields_checked = 1;
    f->g.x = upstream_start(f->up, &r, &cbs, &f->g);
    assert_non_null(f->g.x);
    run(&f->g);
    assert_int_equal(f->g.res, UPSTREAM_OK);
    assert_non_null(strstr(f->srv.last, "\r\nX-A: 1\r\n"));
    fix_free(f);
}

/* The methods sent with a body get its Content-Length, GET none. */
static void test_methods_with_body(void **state)
{
    static const char *const methods[] = { "POST", "PUT", "PATCH", "DELETE", "GET" };
    struct fix *f = fix_new("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    struct upstream_req r;
    char line[32];
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(methods) / sizeof(methods[0]); i++) {
        memset(&r, 0, sizeof(r));
        r.url = f->url;
        r.method = methods[i];
        r.body = "{\"a\":1}";
        r.body_len = 7;
        r.connect_timeout_ms = 1000;
        r.total_timeout_ms = 3000;
        f->g.len = 0;
        f->g.x = upstream_start(f->up, &r, &cbs, &f->g);
        assert_non_null(f->g.x);
        run(&f->g);
        assert_int_equal(f->g.res, UPSTREAM_OK);
        snprintf(line, sizeof(line), "%s /v1/chat/", methods[i]);
        assert_true(strncmp(f->srv.last, line, strlen(line)) == 0);
        if (i < 4)
            assert_non_null(strstr(f->srv.last, "\r\nContent-Length: 7\r\n\r\n{\"a\":1}"));
        else
            assert_null(strstr(f->srv.last, "Content-Length"));
    }
    assert_int_equal(f->srv.accepted, 1);          /* all on the own client */
    fix_free(f);
}

/* header_lens: the lengths a caller knows are taken as they are (so a
 * shorter one cuts the field: it is used, not checked), 0 is measured. */
static void test_known_field_lengths(void **state)
{
    struct fix *f = fix_new("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    static const struct upstream_header hdrs[] = {
        { "Authorization", "Bearer sk-test" }, { "X-B", "two" }, { "X-Cut", "abcdef" },
    };
    static const size_t lens[] = { 13, 14, 0, 0, 5, 3 };
    struct upstream_req r;

    (void)state;
    memset(&r, 0, sizeof(r));
    r.url = f->url;
    r.method = "GET";
    r.connect_timeout_ms = 1000;
    r.total_timeout_ms = 3000;
    r.headers = hdrs;
    r.nheaders = 3;
    r.header_lens = lens;
    r.fields_checked = 1;
    f->g.x = upstream_start(f->up, &r, &cbs, &f->g);
    assert_non_null(f->g.x);
    run(&f->g);
    assert_int_equal(f->g.res, UPSTREAM_OK);
    assert_non_null(strstr(f->srv.last, "\r\nAuthorization: Bearer sk-test\r\n"));
    assert_non_null(strstr(f->srv.last, "\r\nX-B: two\r\n"));
    assert_non_null(strstr(f->srv.last, "\r\nX-Cut: abc\r\n"));
    fix_free(f);
}

static void test_refused_and_timeout(void **state)
{
    struct fix *f = fix_new("");
    char url[128];
    int port = f->srv.port;

    (void)state;
    evconnlistener_free(f->srv.lis);               /* nobody listens there now */
    f->srv.lis = NULL;
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/", port);
    got_start(&f->g, url);
    run(&f->g);
    assert_int_equal(f->g.res, UPSTREAM_ERR_CONNECT);
    fix_free(f);

    f = fix_new("");
    f->srv.silent = 1;
    {
        struct upstream_req r;
        memset(&r, 0, sizeof(r));
        r.url = f->url;
        r.method = "GET";
        r.connect_timeout_ms = 1000;
        r.total_timeout_ms = 150;
        f->g.x = upstream_start(f->up, &r, &cbs, &f->g);
        assert_non_null(f->g.x);
    }
    run(&f->g);
    assert_int_equal(f->g.res, UPSTREAM_ERR_TIMEOUT);
    assert_int_equal(f->srv.requests, 1);
    assert_non_null(strstr(f->srv.last, "GET /v1/chat/completions?x=1 HTTP/1.1\r\n"));
    assert_null(strstr(f->srv.last, "Content-Length"));
    fix_free(f);
}

/* A URL with no path, or only a query, still sends an origin-form target. */
static void test_target_without_path(void **state)
{
    struct fix *f = fix_new("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    char url[128];

    (void)state;
    snprintf(url, sizeof(url), "http://127.0.0.1:%d", f->srv.port);
    got_start(&f->g, url);
    run(&f->g);
    assert_int_equal(f->g.res, UPSTREAM_OK);
    assert_non_null(strstr(f->srv.last, "POST / HTTP/1.1\r\n"));
    snprintf(url, sizeof(url), "http://127.0.0.1:%d?a=b", f->srv.port);
    got_start(&f->g, url);
    run(&f->g);
    assert_int_equal(f->g.res, UPSTREAM_OK);
    assert_non_null(strstr(f->srv.last, "POST /?a=b HTTP/1.1\r\n"));
    fix_free(f);
}

/* The scheme and authority of a URL are parsed once and kept: the next
 * URL of that host sends its own path, and a host whose port begins with
 * a kept one's digits is not taken for it. */
static void test_kept_url_parse(void **state)
{
    struct fix *f = fix_new("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    char url[128];

    (void)state;
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/a", f->srv.port);
    got_start(&f->g, url);
    run(&f->g);
    assert_int_equal(f->g.res, UPSTREAM_OK);
    assert_non_null(strstr(f->srv.last, "POST /a HTTP/1.1\r\n"));
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/b?c=d", f->srv.port);
    got_start(&f->g, url);
    run(&f->g);
    assert_int_equal(f->g.res, UPSTREAM_OK);
    assert_non_null(strstr(f->srv.last, "POST /b?c=d HTTP/1.1\r\n"));
    fix_free(f);

    f = fix_new("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/", f->srv.port / 10);
    got_start(&f->g, url);                  /* kept: "http://127.0.0.1:" + 4 digits */
    run(&f->g);
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/c", f->srv.port);
    got_start(&f->g, url);
    run(&f->g);
    assert_int_equal(f->g.res, UPSTREAM_OK);
    assert_non_null(strstr(f->srv.last, "POST /c HTTP/1.1\r\n"));
    fix_free(f);
}

static void resume_cb(evutil_socket_t fd, short what, void *arg)
{
    struct got *g = arg;

    (void)fd;
    (void)what;
    assert_int_equal(g->ndata, 1);                 /* nothing while paused */
    assert_string_equal(g->body, "abc");
    upstream_resume(g->x);
}

static void test_pause_resume(void **state)
{
    struct fix *f = fix_new("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                            "3\r\nabc\r\n3;x=1\r\ndef\r\n3\r\nghi\r\n0\r\n\r\n");
    struct event *ev = evtimer_new(f->base, resume_cb, &f->g);
    struct timeval tv = { 0, 100000 };

    (void)state;
    f->g.pause_first = 1;
    got_start(&f->g, f->url);
    evtimer_add(ev, &tv);
    run(&f->g);
    assert_int_equal(f->g.res, UPSTREAM_OK);
    assert_string_equal(f->g.body, "abcdefghi");   /* nothing lost, nothing twice */
    event_free(ev);
    fix_free(f);
}

static void test_cancel_inside_callback(void **state)
{
    struct fix *f = fix_new("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello");

    (void)state;
    f->g.cancel_in_data = 1;
    got_start(&f->g, f->url);
    {
        struct timeval tv = { 5, 0 };
        event_base_loopexit(f->base, &tv);
        event_base_dispatch(f->base);
    }
    assert_int_equal(f->g.done, 0);                /* no on_done after a cancel */
    assert_int_equal(f->g.ndata, 1);
    assert_int_equal(upstream_active(f->up), 0);
    fix_free(f);
}

/* A name is curl's: the same exchange works through it. */
static void test_names_go_through_curl(void **state)
{
    struct fix *f = fix_new("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    char url[128];

    (void)state;
    snprintf(url, sizeof(url), "http://localhost:%d/v1/x", f->srv.port);
    got_start(&f->g, url);
    run(&f->g);
    if (f->g.res == UPSTREAM_ERR_CONNECT) {        /* localhost is ::1 only here */
        fix_free(f);
        skip();
        return;
    }
    assert_int_equal(f->g.res, UPSTREAM_OK);
    assert_string_equal(f->g.body, "ok");
    assert_non_null(strstr(f->srv.last, "\r\nHost: localhost:"));
    fix_free(f);
}

/* More distinct TLS peers than H1_MAX_TLS_PEERS (4096): the unused ones
 * make room, so the own client keeps taking the transfers (curl took them
 * before). A name whose addresses keep changing makes a peer per address. */
static void test_tls_peers_make_room(void **state)
{
    struct fix *f = fix_new("");
    char url[128], name[32];
    int i, port = f->srv.port;

    (void)state;
    evconnlistener_free(f->srv.lis);               /* refused: quick */
    f->srv.lis = NULL;
    snprintf(url, sizeof(url), "https://127.0.0.1:%d/", port);
    for (i = 0; i < 4200; i++) {
        struct upstream_req r;
        memset(&r, 0, sizeof(r));
        snprintf(name, sizeof(name), "n%d.test", i);
        r.url = url;
        r.method = "GET";
        r.server_name = name;
        r.insecure = 1;
        r.connect_timeout_ms = 1000;
        f->g.x = upstream_start(f->up, &r, &cbs, &f->g);
        assert_non_null(f->g.x);
        if (f->g.x->kind != UPSTREAM_KIND_H1)
            fail_msg("transfer %d went through curl", i);
        run(&f->g);
        assert_int_equal(f->g.res, UPSTREAM_ERR_CONNECT);
    }
    fix_free(f);
}

/* With http_proxy set, plain http:// goes through curl and so through the
 * proxy: the request reaches the proxy in absolute form. */
static void test_proxy_from_environment(void **state)
{
    struct event_base *base = event_base_new();
    struct srv proxy;
    struct upstream *up;
    struct got g;
    char purl[64];

    (void)state;
    srv_start(&proxy, base, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    snprintf(purl, sizeof(purl), "http://127.0.0.1:%d", proxy.port);
    setenv("http_proxy", purl, 1);
    up = upstream_new(base);
    memset(&g, 0, sizeof(g));
    g.base = base;
    g.up = up;
    got_start(&g, "http://127.0.0.2:9/v1/chat/completions");   /* never dialled */
    run(&g);
    unsetenv("http_proxy");         /* curl reads it for each transfer */
    assert_int_equal(g.res, UPSTREAM_OK);
    assert_string_equal(g.body, "ok");
    assert_non_null(strstr(proxy.last, "POST http://127.0.0.2:9/v1/chat/completions HTTP/1.1\r\n"));
    upstream_free(up);
    for (size_t i = 0; i < sizeof(proxy.conns) / sizeof(proxy.conns[0]); i++)
        if (proxy.conns[i])
            bufferevent_free(proxy.conns[i]);
    evconnlistener_free(proxy.lis);
    event_base_free(base);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_content_length_and_reuse),
        cmocka_unit_test(test_headers_accessors),
        cmocka_unit_test(test_many_fields),
        cmocka_unit_test(test_chunked_extensions_trailers),
        cmocka_unit_test(test_chunks_joined_per_read),
        cmocka_unit_test(test_cut_chunk_rest_joined),
        cmocka_unit_test(test_chunks_cut_across_reads),
        cmocka_unit_test(test_chunks_read_apart),
        cmocka_unit_test(test_until_close),
        cmocka_unit_test(test_connection_field),
        cmocka_unit_test(test_interim_and_no_content),
        cmocka_unit_test(test_garbage_and_truncation),
        cmocka_unit_test(test_dead_pooled_connection_resent),
        cmocka_unit_test(test_big_body_on_kept_connection),
        cmocka_unit_test(test_fields_with_crlf_refused),
        cmocka_unit_test(test_known_field_lengths),
        cmocka_unit_test(test_methods_with_body),
        cmocka_unit_test(test_refused_and_timeout),
        cmocka_unit_test(test_target_without_path),
        cmocka_unit_test(test_kept_url_parse),
        cmocka_unit_test(test_pause_resume),
        cmocka_unit_test(test_head_cut_across_reads),
        cmocka_unit_test(test_cancel_inside_callback),
        cmocka_unit_test(test_names_go_through_curl),
        cmocka_unit_test(test_tls_peers_make_room),
        cmocka_unit_test(test_proxy_from_environment),
    };

    signal(SIGPIPE, SIG_IGN);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
