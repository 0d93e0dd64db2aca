/*
 * test_resolve.c -- the per-loop resolver (src/io/resolve.c) against an
 * evdns server port on a loopback UDP socket in the same event loop:
 * concurrent lookups of a name share one query, answers are kept for their
 * TTL and asked again after it, failures are remembered for negative_ttl,
 * a cancelled lookup gets no callback, the cache stays bounded, /etc/hosts
 * answers at once, new nameservers on reconfigure empty the cache.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <cmocka.h>

#include <event2/dns.h>
#include <event2/dns_struct.h>
#include <event2/event.h>

#include "resolve.h"

/* --- the DNS server ------------------------------------------------------ */

struct dns_srv {
    struct event_base        *base;
    struct evdns_server_port *port;
    evutil_socket_t           fd;
    char                      addr[32];
    int                       ttl;
    int                       silent;       /* answer nothing */
    int                       a_queries, aaaa_queries;
};

/* a.test, b.test, n123.test...: 10.0.0.7 (A only); nx*: NXDOMAIN. */
static void srv_cb(struct evdns_server_request *req, void *arg)
{
    struct dns_srv *s = arg;
    int i;

    if (s->silent) {
        evdns_server_request_drop(req);
        return;
    }
    for (i = 0; i < req->nquestions; i++) {
        const struct evdns_server_question *q = req->questions[i];
        if (q->type == EVDNS_TYPE_A)
            s->a_queries++;
        else if (q->type == EVDNS_TYPE_AAAA)
            s->aaaa_queries++;
        if (strncasecmp(q->name, "nx", 2) == 0) {
            evdns_server_request_respond(req, DNS_ERR_NOTEXIST);
            return;
        }
        if (q->type == EVDNS_TYPE_A) {
            uint32_t a = htonl(0x0a000007);
            evdns_server_request_add_a_reply(req, q->name, 1, &a, s->ttl);
        }
    }
    evdns_server_request_respond(req, 0);
}

static struct dns_srv *srv_new(struct event_base *base)
{
    struct dns_srv *s = calloc(1, sizeof(*s));
    struct sockaddr_in sin;
    socklen_t len = sizeof(sin);

    assert_non_null(s);
    s->base = base;
    s->ttl = 60;
    s->fd = socket(AF_INET, SOCK_DGRAM, 0);
    assert_true(s->fd >= 0);
    memset(&sin, 0, sizeof(sin));
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(s->fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    assert_int_equal(getsockname(s->fd, (struct sockaddr *)&sin, &len), 0);
    evutil_make_socket_nonblocking(s->fd);
    s->port = evdns_add_server_port_with_base(base, s->fd, 0, srv_cb, s);
    assert_non_null(s->port);
    snprintf(s->addr, sizeof(s->addr), "127.0.0.1:%d", ntohs(sin.sin_port));
    return s;
}

static void srv_free(struct dns_srv *s)
{
    evdns_close_server_port(s->port);
    close(s->fd);
    free(s);
}

/* --- fixtures ------------------------------------------------------------ */

struct fx {
    struct event_base *base;
    struct dns_srv    *srv;
    struct resolver   *r;
    const char        *servers[1];
    struct resolve_conf conf;
};

struct got {
    int                  calls, ok;
    struct resolve_addrs addrs;
    char                 msg[512];
};

static void got_cb(void *arg, int ok, const struct resolve_addrs *addrs, const char *msg)
{
    struct got *g = arg;

    g->calls++;
    g->ok = ok;
    if (ok)
        g->addrs = *addrs;
    else
        snprintf(g->msg, sizeof(g->msg), "%s", msg);
}

static int setup(void **state)
{
    struct fx *f = calloc(1, sizeof(*f));
    char err[256];

    f->base = event_base_new();
    f->srv = srv_new(f->base);
    f->servers[0] = f->srv->addr;
    f->conf.servers = f->servers;
    f->conf.nservers = 1;
    f->conf.timeout_ms = 400;
    f->conf.min_ttl_ms = 0;
    f->conf.max_ttl_ms = 60000;
    f->conf.negative_ttl_ms = 60000;
    f->r = resolver_new(f->base, &f->conf, err, sizeof(err));
    assert_non_null(f->r);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fx *f = *state;

    resolver_free(f->r);
    srv_free(f->srv);
    event_base_free(f->base);
    free(f);
    return 0;
}

/* Runs the loop until *calls reaches n (5 s at most). */
static void run_until(struct fx *f, const int *calls, int n)
{
    int i;

    for (i = 0; i < 5000 && *calls < n; i++) {
        struct timeval tv = { 0, 1000 };
        event_base_loopexit(f->base, &tv);
        event_base_dispatch(f->base);
    }
    assert_true(*calls >= n);
}

/* Runs the loop for ms milliseconds. */
static void run_for(struct fx *f, int ms)
{
    struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };

    event_base_loopexit(f->base, &tv);
    event_base_dispatch(f->base);
}

static int lookup(struct fx *f, const char *name, struct got *g, struct resolve_wait **w)
{
    struct resolve_wait *dummy;

    return resolver_lookup(f->r, name, &g->addrs, g->msg, sizeof(g->msg), got_cb, g,
                           w ? w : &dummy);
}

/* --- tests ---------------------------------------------------------------- */

static void test_concurrent_lookups_share_one_query(void **state)
{
    struct fx *f = *state;
    struct got g[5], again;
    int i, calls = 0;

    memset(g, 0, sizeof(g));
    for (i = 0; i < 5; i++)
        assert_int_equal(lookup(f, "a.test", &g[i], NULL), 0);
    for (i = 0; i < 200 && calls < 5; i++) {
        int j;
        run_for(f, 5);
        for (calls = 0, j = 0; j < 5; j++)
            calls += g[j].calls;
    }
    for (i = 0; i < 5; i++) {
        assert_int_equal(g[i].calls, 1);
        assert_int_equal(g[i].ok, 1);
        assert_int_equal(g[i].addrs.n, 1);
        assert_int_equal(g[i].addrs.a[0].family, AF_INET);
        assert_memory_equal(g[i].addrs.a[0].a, "\x0a\x00\x00\x07", 4);
    }
    assert_int_equal(f->srv->a_queries, 1);
    assert_int_equal(f->srv->aaaa_queries, 1);
    /* Cached: answered at once, no query. */
    memset(&again, 0, sizeof(again));
    assert_int_equal(lookup(f, "A.TEST", &again, NULL), 1);
    assert_int_equal(again.addrs.n, 1);
    assert_int_equal(again.calls, 0);
    assert_int_equal(f->srv->a_queries, 1);
}

static void test_answer_kept_for_its_ttl_then_asked_again(void **state)
{
    struct fx *f = *state;
    struct got g;

    f->srv->ttl = 1;
    memset(&g, 0, sizeof(g));
    assert_int_equal(lookup(f, "b.test", &g, NULL), 0);
    run_until(f, &g.calls, 1);
    assert_int_equal(lookup(f, "b.test", &g, NULL), 1);
    assert_int_equal(f->srv->a_queries, 1);
    run_for(f, 1100);
    assert_int_equal(lookup(f, "b.test", &g, NULL), 0);     /* expired: asked again */
    run_until(f, &g.calls, 2);
    assert_int_equal(f->srv->a_queries, 2);
    assert_int_equal(g.ok, 1);
}

static void test_min_ttl_holds_a_short_answer(void **state)
{
    struct fx *f = *state;
    struct got g;
    char err[256];

    f->srv->ttl = 0;
    f->conf.min_ttl_ms = 60000;
    assert_int_equal(resolver_configure(f->r, &f->conf, err, sizeof(err)), 0);
    memset(&g, 0, sizeof(g));
    assert_int_equal(lookup(f, "c.test", &g, NULL), 0);
    run_until(f, &g.calls, 1);
    run_for(f, 50);
    assert_int_equal(lookup(f, "c.test", &g, NULL), 1);
    assert_int_equal(f->srv->a_queries, 1);
}

static void test_failure_named_and_remembered(void **state)
{
    struct fx *f = *state;
    struct got g;

    memset(&g, 0, sizeof(g));
    assert_int_equal(lookup(f, "nxhost.test", &g, NULL), 0);
    run_until(f, &g.calls, 1);
    assert_int_equal(g.ok, 0);
    assert_non_null(strstr(g.msg, "nxhost.test"));
    assert_non_null(strstr(g.msg, "NXDOMAIN"));
    memset(&g, 0, sizeof(g));
    assert_int_equal(lookup(f, "nxhost.test", &g, NULL), -1);  /* negative cache */
    assert_non_null(strstr(g.msg, "NXDOMAIN"));
    assert_int_equal(g.calls, 0);
    assert_int_equal(f->srv->a_queries, 1);
}

static void test_silent_nameserver_times_out(void **state)
{
    struct fx *f = *state;
    struct got g;

    f->srv->silent = 1;
    memset(&g, 0, sizeof(g));
    assert_int_equal(lookup(f, "d.test", &g, NULL), 0);
    run_until(f, &g.calls, 1);                  /* within timeout_ms (400) x some */
    assert_int_equal(g.ok, 0);
    assert_non_null(strstr(g.msg, "d.test"));
}

static void test_cancelled_lookup_gets_no_callback(void **state)
{
    struct fx *f = *state;
    struct got g, other;
    struct resolve_wait *w;

    memset(&g, 0, sizeof(g));
    memset(&other, 0, sizeof(other));
    assert_int_equal(lookup(f, "e.test", &g, &w), 0);
    assert_int_equal(lookup(f, "e.test", &other, NULL), 0);
    resolver_cancel(w);
    run_until(f, &other.calls, 1);
    run_for(f, 20);
    assert_int_equal(g.calls, 0);
    assert_int_equal(other.ok, 1);
    assert_int_equal(lookup(f, "e.test", &g, NULL), 1);
}

static void test_cache_is_bounded(void **state)
{
    struct fx *f = *state;
    struct got g;
    char name[32];
    int i;

    memset(&g, 0, sizeof(g));
    for (i = 0; i < 1100; i++) {                /* 100 at a time */
        snprintf(name, sizeof(name), "n%d.test", i);
        assert_int_equal(lookup(f, name, &g, NULL), 0);
        if (i % 100 == 99)
            run_until(f, &g.calls, i + 1);
    }
    assert_true(resolver_names(f->r) <= 1024);
    assert_true(resolver_names(f->r) >= 1000);
    /* The most recent names stay, the oldest went. */
    assert_int_equal(lookup(f, "n1099.test", &g, NULL), 1);
    assert_int_equal(lookup(f, "n0.test", &g, NULL), 0);
    run_until(f, &g.calls, 1101);
}

static void test_hosts_file_answers_at_once(void **state)
{
    struct fx *f = *state;
    struct got g;

    memset(&g, 0, sizeof(g));
    /* localhost is in every /etc/hosts this runs on. */
    assert_int_equal(lookup(f, "localhost", &g, NULL), 1);
    assert_true(g.addrs.n >= 1);
    assert_int_equal(f->srv->a_queries, 0);
}

static void test_new_nameservers_empty_the_cache(void **state)
{
    struct fx *f = *state;
    struct dns_srv *other = srv_new(f->base);
    const char *servers[1] = { other->addr };
    struct resolve_conf c = f->conf;
    struct got g;
    char err[256];

    memset(&g, 0, sizeof(g));
    assert_int_equal(lookup(f, "f.test", &g, NULL), 0);
    run_until(f, &g.calls, 1);
    assert_int_equal(lookup(f, "f.test", &g, NULL), 1);
    c.servers = servers;
    assert_int_equal(resolver_configure(f->r, &c, err, sizeof(err)), 0);
    assert_int_equal(lookup(f, "f.test", &g, NULL), 0);       /* asked again... */
    run_until(f, &g.calls, 2);
    assert_int_equal(other->a_queries, 1);                     /* ...the new one */
    assert_int_equal(f->srv->a_queries, 1);
    /* Same settings again: the cache stays. */
    assert_int_equal(resolver_configure(f->r, &c, err, sizeof(err)), 0);
    assert_int_equal(lookup(f, "f.test", &g, NULL), 1);
    resolver_free(f->r);                        /* before its server goes */
    f->r = NULL;
    srv_free(other);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_concurrent_lookups_share_one_query, setup, teardown),
        cmocka_unit_test_setup_teardown(test_answer_kept_for_its_ttl_then_asked_again, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_min_ttl_holds_a_short_answer, setup, teardown),
        cmocka_unit_test_setup_teardown(test_failure_named_and_remembered, setup, teardown),
        cmocka_unit_test_setup_teardown(test_silent_nameserver_times_out, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancelled_lookup_gets_no_callback, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cache_is_bounded, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hosts_file_answers_at_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_new_nameservers_empty_the_cache, setup, teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
