/*
 * resolve.c -- non-blocking DNS for upstream host names (see resolve.h):
 * evdns A and AAAA queries, whose callbacks carry the answers' TTL, and a
 * per-loop cache of name -> addresses in front of them.
 *
 * A cache entry is PENDING (its queries are out; lookups of the name add
 * a waiter), OK (addresses until `expires`) or FAILED (a message until
 * `expires`). An expired entry asks again in place. /etc/hosts entries are
 * OK forever and outside the LRU. Entries are never evicted while pending
 * or while their waiters are being called back.
 *
 * evdns_base_resolve_ipv4/6 rather than evdns_getaddrinfo: only the former
 * report the TTL. So /etc/hosts is read here (once, when the resolver is
 * set up), as evdns_getaddrinfo would have.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>

#include <event2/dns.h>
#include <event2/event.h>

#include "clock.h"
#include "log.h"
#include "resolve.h"

#define RESOLVE_MAX_NAMES   1024        /* cached names, /etc/hosts apart */
#define RESOLVE_BUCKETS     1024        /* power of two */
#define RESOLVE_ATTEMPTS    2           /* tries per query within timeout_ms */
#define RESOLVE_HOSTS_FILE  "/etc/hosts"
#define RESOLVE_CONF_FILE   "/etc/resolv.conf"

enum { E_PENDING = 0, E_OK, E_FAILED };

struct resolve_entry {
    struct resolver      *r;
    struct resolve_entry *hnext;            /* same bucket */
    struct resolve_entry *lnext, *lprev;    /* LRU, most recent first */
    uint32_t              hash;
    char                 *name;
    unsigned char         state;
    unsigned char         permanent;        /* /etc/hosts */
    unsigned char         busy;             /* calling its waiters back */
    unsigned char         qdone;            /* pending: 1 A answered, 2 AAAA */
    int64_t               expires_ms;
    struct resolve_addrs  addrs;            /* OK */
    char                 *err;              /* FAILED */
    /* pending: the answers so far */
    struct resolve_addrs  got4, got6;
    int                   err4, err6;
    int64_t               ttl_ms;           /* least TTL of the answers */
    struct resolve_wait  *waiters;
};

struct resolve_wait {
    struct resolve_entry *e;
    struct resolve_wait  *next, *prev;
    resolve_cb            cb;
    void                 *arg;
};

struct resolver {
    struct event_base    *base;
    struct evdns_base    *dns;
    struct resolve_entry *bucket[RESOLVE_BUCKETS];
    struct resolve_entry *lru_head, *lru_tail;
    size_t                nnames;
    char                **servers;          /* the settings in use */
    size_t                nservers;
    int64_t               timeout_ms, min_ttl_ms, max_ttl_ms, negative_ttl_ms;
    uint64_t              queries;
};

/* The loop's time (clock.h): one clock read per wake-up. */
static int64_t now_ms(void)
{
    return gw_now_ms();
}

static uint32_t name_hash(const char *s)
{
    uint32_t h = 2166136261u;

    for (; *s; s++)
        h = (h ^ (unsigned char)tolower((unsigned char)*s)) * 16777619u;
    return h;
}

/* --- the cache ------------------------------------------------------------ */

static struct resolve_entry *entry_find(struct resolver *r, const char *name, uint32_t h)
{
    struct resolve_entry *e;

    for (e = r->bucket[h & (RESOLVE_BUCKETS - 1)]; e; e = e->hnext)
        if (e->hash == h && strcasecmp(e->name, name) == 0)
            return e;
    return NULL;
}

static void lru_unlink(struct resolver *r, struct resolve_entry *e)
{
    if (e->lprev)
        e->lprev->lnext = e->lnext;
    else
        r->lru_head = e->lnext;
    if (e->lnext)
        e->lnext->lprev = e->lprev;
    else
        r->lru_tail = e->lprev;
    e->lnext = e->lprev = NULL;
}

static void lru_push(struct resolver *r, struct resolve_entry *e)
{
    e->lnext = r->lru_head;
    e->lprev = NULL;
    if (r->lru_head)
        r->lru_head->lprev = e;
    else
        r->lru_tail = e;
    r->lru_head = e;
}

static void entry_free(struct resolver *r, struct resolve_entry *e)
{
    struct resolve_entry **pp = &r->bucket[e->hash & (RESOLVE_BUCKETS - 1)];

    while (*pp != e)
        pp = &(*pp)->hnext;
    *pp = e->hnext;
    if (!e->permanent) {
        lru_unlink(r, e);
        r->nnames--;
    }
    while (e->waiters) {
        struct resolve_wait *w = e->waiters;
        e->waiters = w->next;
        free(w);
    }
    free(e->err);
    free(e->name);
    free(e);
}

static struct resolve_entry *entry_new(struct resolver *r, const char *name, uint32_t h,
                                       int permanent)
{
    struct resolve_entry *e = calloc(1, sizeof(*e));

    if (e == NULL || (e->name = strdup(name)) == NULL) {
        free(e);
        return NULL;
    }
    e->r = r;
    e->hash = h;
    e->permanent = (unsigned char)permanent;
    e->hnext = r->bucket[h & (RESOLVE_BUCKETS - 1)];
    r->bucket[h & (RESOLVE_BUCKETS - 1)] = e;
    if (!permanent) {
        lru_push(r, e);
        r->nnames++;
    }
    return e;
}

/* Room for one more name: the least recently used one that is neither
 * pending nor being called back goes. */
static void cache_trim(struct resolver *r)
{
    struct resolve_entry *e;

    if (r->nnames < RESOLVE_MAX_NAMES)
        return;
    for (e = r->lru_tail; e; e = e->lprev)
        if (e->state != E_PENDING && !e->busy) {
            entry_free(r, e);
            return;
        }
}

/* Forgets every answer (new nameservers): pending and /etc/hosts stay. */
static void cache_flush(struct resolver *r)
{
    struct resolve_entry *e = r->lru_head, *next;

    for (; e; e = next) {
        next = e->lnext;
        if (e->state != E_PENDING && !e->busy)
            entry_free(r, e);
    }
}

static void addrs_add(struct resolve_addrs *as, int family, const void *a)
{
    if (as->n == RESOLVE_MAX_ADDRS)
        return;
    as->a[as->n].family = family;
    memcpy(as->a[as->n].a, a, family == AF_INET ? 4 : 16);
    as->n++;
}

/* --- /etc/hosts ------------------------------------------------------------ */

static void hosts_load(struct resolver *r, const char *path)
{
    FILE *f = fopen(path, "r");
    char line[1024];

    if (f == NULL)
        return;
    while (fgets(line, sizeof(line), f)) {
        char *save = NULL, *tok, *hash = strchr(line, '#');
        unsigned char a[16];
        int family;

        if (hash)
            *hash = '\0';
        if ((tok = strtok_r(line, " \t\r\n", &save)) == NULL)
            continue;
        if (inet_pton(AF_INET, tok, a) == 1)
            family = AF_INET;
        else if (inet_pton(AF_INET6, tok, a) == 1)
            family = AF_INET6;
        else
            continue;
        while ((tok = strtok_r(NULL, " \t\r\n", &save)) != NULL) {
            uint32_t h = name_hash(tok);
            struct resolve_entry *e = entry_find(r, tok, h);
            if (e == NULL && (e = entry_new(r, tok, h, 1)) == NULL)
                continue;
            e->state = E_OK;
            addrs_add(&e->addrs, family, a);
        }
    }
    fclose(f);
}

/* --- nameservers ------------------------------------------------------------- */

static int servers_equal(const struct resolver *r, const struct resolve_conf *c)
{
    size_t i;

    if (r->nservers != (c->servers ? c->nservers : 0) || r->timeout_ms != c->timeout_ms)
        return 0;
    for (i = 0; i < r->nservers; i++)
        if (strcmp(r->servers[i], c->servers[i]) != 0)
            return 0;
    return 1;
}

static void servers_free(struct resolver *r)
{
    size_t i;

    for (i = 0; i < r->nservers; i++)
        free(r->servers[i]);
    free(r->servers);
    r->servers = NULL;
    r->nservers = 0;
}

/* Gives dns the nameservers (and, from /etc/resolv.conf, the search list)
 * and the timeouts of c. */
static int servers_apply(struct evdns_base *dns, const struct resolve_conf *c,
                         char *err, size_t errlen)
{
    char v[32];
    size_t i, n = c->servers ? c->nservers : 0;

    evdns_base_search_clear(dns);
    if (n == 0) {
        /* Missing or empty: evdns falls back to 127.0.0.1, as libc does. */
        evdns_base_resolv_conf_parse(dns, DNS_OPTION_NAMESERVERS | DNS_OPTION_SEARCH
                                          | DNS_OPTION_MISC, RESOLVE_CONF_FILE);
    }
    for (i = 0; i < n; i++)
        if (evdns_base_nameserver_ip_add(dns, c->servers[i]) != 0) {
            snprintf(err, errlen, "server.resolver: cannot use nameserver \"%s\"",
                     c->servers[i]);
            return -1;
        }
    if (evdns_base_count_nameservers(dns) == 0) {
        snprintf(err, errlen, "no nameserver (server.resolver is empty and %s names none)",
                 RESOLVE_CONF_FILE);
        return -1;
    }
    snprintf(v, sizeof(v), "%.3f", (double)c->timeout_ms / 1000.0 / RESOLVE_ATTEMPTS);
    evdns_base_set_option(dns, "timeout:", v);
    snprintf(v, sizeof(v), "%d", RESOLVE_ATTEMPTS);
    evdns_base_set_option(dns, "attempts:", v);
    return 0;
}

static int settings_keep(struct resolver *r, const struct resolve_conf *c)
{
    size_t i, n = c->servers ? c->nservers : 0;
    char **s = n ? calloc(n, sizeof(*s)) : NULL;

    if (n && s == NULL)
        return -1;
    for (i = 0; i < n; i++)
        if ((s[i] = strdup(c->servers[i])) == NULL) {
            while (i > 0)
                free(s[--i]);
            free(s);
            return -1;
        }
    servers_free(r);
    r->servers = s;
    r->nservers = n;
    r->timeout_ms = c->timeout_ms;
    r->min_ttl_ms = c->min_ttl_ms;
    r->max_ttl_ms = c->max_ttl_ms < c->min_ttl_ms ? c->min_ttl_ms : c->max_ttl_ms;
    r->negative_ttl_ms = c->negative_ttl_ms;
    return 0;
}

/* evdns's own messages ("Nameserver 10.0.0.2:53 has failed: request timed
 * out") go to the error log, warnings as warnings, the rest at debug. */
static void evdns_log(int is_warning, const char *msg)
{
    if (is_warning)
        log_warn("resolver: %s", msg);
    else
        log_debug("resolver: %s", msg);
}

static pthread_once_t log_once = PTHREAD_ONCE_INIT;

static void log_init(void)
{
    evdns_set_log_fn(evdns_log);
}

struct resolver *resolver_new(struct event_base *base, const struct resolve_conf *conf,
                              char *err, size_t errlen)
{
    struct resolver *r = calloc(1, sizeof(*r));

    pthread_once(&log_once, log_init);

    if (r == NULL || (r->dns = evdns_base_new(base, EVDNS_BASE_DISABLE_WHEN_INACTIVE)) == NULL) {
        snprintf(err, errlen, "resolver: out of memory");
        free(r);
        return NULL;
    }
    r->base = base;
    if (servers_apply(r->dns, conf, err, errlen) < 0) {
        resolver_free(r);
        return NULL;
    }
    if (settings_keep(r, conf) < 0) {
        snprintf(err, errlen, "resolver: out of memory");
        resolver_free(r);
        return NULL;
    }
    hosts_load(r, RESOLVE_HOSTS_FILE);
    return r;
}

int resolver_configure(struct resolver *r, const struct resolve_conf *conf,
                       char *err, size_t errlen)
{
    int same = servers_equal(r, conf), rc = 0;

    if (!same) {
        /* Lookups in flight wait, then go to the new nameservers. */
        evdns_base_clear_nameservers_and_suspend(r->dns);
        rc = servers_apply(r->dns, conf, err, errlen);
        evdns_base_resume(r->dns);
        if (rc < 0) {
            /* The old ones back, so that lookups still have somewhere to go. */
            const struct resolve_conf old = { (const char *const *)r->servers, r->nservers,
                                              r->timeout_ms, 0, 0, 0 };
            char e2[64];
            evdns_base_clear_nameservers_and_suspend(r->dns);
            servers_apply(r->dns, &old, e2, sizeof(e2));
            evdns_base_resume(r->dns);
            return -1;
        }
        cache_flush(r);
    }
    if (settings_keep(r, conf) < 0) {
        snprintf(err, errlen, "resolver: out of memory");
        return -1;
    }
    return 0;
}

void resolver_free(struct resolver *r)
{
    size_t i;

    if (r == NULL)
        return;
    if (r->dns)
        evdns_base_free(r->dns, 0);     /* queries dropped, no callbacks */
    for (i = 0; i < RESOLVE_BUCKETS; i++)
        while (r->bucket[i])
            entry_free(r, r->bucket[i]);
    servers_free(r);
    free(r);
}

uint64_t resolver_queries(const struct resolver *r)
{
    return r ? r->queries : 0;
}

size_t resolver_names(const struct resolver *r)
{
    return r ? r->nnames : 0;
}

/* --- lookups ---------------------------------------------------------------- */

static const char *dns_err_name(int e)
{
    switch (e) {
    case DNS_ERR_NOTEXIST:     return "NXDOMAIN: no such name";
    case DNS_ERR_SERVERFAILED: return "SERVFAIL: the nameserver failed";
    case DNS_ERR_REFUSED:      return "REFUSED by the nameserver";
    case DNS_ERR_TIMEOUT:      return "the nameserver did not answer in time";
    case DNS_ERR_NODATA:       return "no address for the name";
    case DNS_ERR_NONE:         return "no address for the name";
    default:                   return evdns_err_to_string(e);
    }
}

/* Both answers are in: the entry becomes OK or FAILED and its waiters are
 * called back, one at a time (a callback may cancel the others). */
static void entry_done(struct resolve_entry *e)
{
    struct resolver *r = e->r;
    int64_t now = now_ms(), ttl = e->ttl_ms;
    size_t i;

    memset(&e->addrs, 0, sizeof(e->addrs));
    for (i = 0; i < e->got4.n; i++)
        addrs_add(&e->addrs, AF_INET, e->got4.a[i].a);
    for (i = 0; i < e->got6.n; i++)
        addrs_add(&e->addrs, AF_INET6, e->got6.a[i].a);
    free(e->err);
    e->err = NULL;
    if (e->addrs.n > 0) {
        if (ttl < r->min_ttl_ms)
            ttl = r->min_ttl_ms;
        if (ttl > r->max_ttl_ms)
            ttl = r->max_ttl_ms;
        e->state = E_OK;
        e->expires_ms = now + ttl;
    } else {
        /* The A query's reason, unless it only found no IPv4 address. */
        int why = (e->err4 == DNS_ERR_NONE || e->err4 == DNS_ERR_NODATA) ? e->err6 : e->err4;
        char msg[512];
        snprintf(msg, sizeof(msg), "Could not resolve host: %s (%s)", e->name, dns_err_name(why));
        e->err = strdup(msg);
        e->state = E_FAILED;
        e->expires_ms = now + r->negative_ttl_ms;
    }
    e->busy = 1;
    while (e->waiters) {
        struct resolve_wait *w = e->waiters;
        e->waiters = w->next;
        if (e->waiters)
            e->waiters->prev = NULL;
        if (e->state == E_OK)
            w->cb(w->arg, 1, &e->addrs, NULL);
        else
            w->cb(w->arg, 0, NULL, e->err ? e->err : "Could not resolve host (out of memory)");
        free(w);
    }
    e->busy = 0;
}

static void answer(struct resolve_entry *e, int v6, int result, int count, int ttl,
                   const void *addrs)
{
    struct resolve_addrs *got = v6 ? &e->got6 : &e->got4;
    int i;

    if (e->qdone & (v6 ? 2 : 1))
        return;
    e->qdone |= (unsigned char)(v6 ? 2 : 1);
    if (v6)
        e->err6 = result;
    else
        e->err4 = result;
    if (result == DNS_ERR_NONE && count > 0) {
        for (i = 0; i < count; i++)
            addrs_add(got, v6 ? AF_INET6 : AF_INET,
                      (const unsigned char *)addrs + (size_t)i * (v6 ? 16 : 4));
        if (ttl >= 0 && (e->ttl_ms < 0 || (int64_t)ttl * 1000 < e->ttl_ms))
            e->ttl_ms = (int64_t)ttl * 1000;
    }
    if (e->qdone == 3)
        entry_done(e);
}

static void answer4(int result, char type, int count, int ttl, void *addrs, void *arg)
{
    (void)type;
    answer(arg, 0, result, type == DNS_IPv4_A ? count : 0, ttl, addrs);
}

static void answer6(int result, char type, int count, int ttl, void *addrs, void *arg)
{
    (void)type;
    answer(arg, 1, result, type == DNS_IPv6_AAAA ? count : 0, ttl, addrs);
}

/* Sends the A and AAAA queries of e. Either may answer before this
 * returns (then e may be done already). */
static void entry_ask(struct resolver *r, struct resolve_entry *e)
{
    int flags = r->nservers ? DNS_QUERY_NO_SEARCH : 0;

    e->state = E_PENDING;
    e->qdone = 0;
    e->err4 = e->err6 = DNS_ERR_NONE;
    e->ttl_ms = -1;
    memset(&e->got4, 0, sizeof(e->got4));
    memset(&e->got6, 0, sizeof(e->got6));
    r->queries += 2;
    if (evdns_base_resolve_ipv4(r->dns, e->name, flags, answer4, e) == NULL)
        answer(e, 0, DNS_ERR_UNKNOWN, 0, -1, NULL);
    if (evdns_base_resolve_ipv6(r->dns, e->name, flags, answer6, e) == NULL)
        answer(e, 1, DNS_ERR_UNKNOWN, 0, -1, NULL);
}

int resolver_lookup(struct resolver *r, const char *name, struct resolve_addrs *out,
                    char *msg, size_t msglen, resolve_cb cb, void *arg,
                    struct resolve_wait **wait)
{
    uint32_t h = name_hash(name);
    struct resolve_entry *e = entry_find(r, name, h);
    struct resolve_wait *w;

    *wait = NULL;
    if (e == NULL) {
        cache_trim(r);
        if ((e = entry_new(r, name, h, 0)) == NULL) {
            snprintf(msg, msglen, "Could not resolve host: %s (out of memory)", name);
            return -1;
        }
        entry_ask(r, e);
    } else if (e->state != E_PENDING && !e->permanent && now_ms() >= e->expires_ms) {
        entry_ask(r, e);
    }
    if (!e->permanent) {
        lru_unlink(r, e);
        lru_push(r, e);
    }
    if (e->state == E_OK) {
        *out = e->addrs;
        return 1;
    }
    if (e->state == E_FAILED) {
        snprintf(msg, msglen, "%s", e->err ? e->err : "Could not resolve host");
        return -1;
    }
    if ((w = calloc(1, sizeof(*w))) == NULL) {
        snprintf(msg, msglen, "Could not resolve host: %s (out of memory)", name);
        return -1;
    }
    w->e = e;
    w->cb = cb;
    w->arg = arg;
    w->next = e->waiters;
    if (e->waiters)
        e->waiters->prev = w;
    e->waiters = w;
    *wait = w;
    return 0;
}

void resolver_cancel(struct resolve_wait *w)
{
    struct resolve_entry *e;

    if (w == NULL)
        return;
    e = w->e;
    if (w->prev)
        w->prev->next = w->next;
    else
        e->waiters = w->next;
    if (w->next)
        w->next->prev = w->prev;
    free(w);
}
