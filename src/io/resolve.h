/*
 * resolve.h -- non-blocking DNS for upstream host names: one resolver per
 * event loop on libevent's evdns, with a cache of name -> addresses.
 *
 * nginx's `resolver` model: the nameservers are the configured ones
 * (server.resolver) or /etc/resolv.conf's; /etc/hosts is read when the
 * resolver is set up and answers first. A name is asked for A and AAAA at
 * once; the answer is kept for its DNS TTL clamped to [min_ttl, max_ttl],
 * a failure (NXDOMAIN, SERVFAIL, timeout) for negative_ttl. Lookups of a
 * name already being asked wait for that one query. The cache is bounded
 * (RESOLVE_MAX_NAMES, least recently used out first).
 *
 * Threads: a resolver is used from its loop's thread only.
 */
#ifndef INFERGATE_RESOLVE_H
#define INFERGATE_RESOLVE_H

#include <stddef.h>
#include <stdint.h>

#define RESOLVE_MAX_ADDRS 8     /* kept per name: IPv4 first, then IPv6 */

struct event_base;
struct resolver;
struct resolve_wait;

/* The settings (server.resolver*). servers == NULL or nservers == 0:
 * the nameservers and search list of /etc/resolv.conf. */
struct resolve_conf {
    const char *const *servers;     /* "IP", "IP:PORT", "[V6]:PORT" */
    size_t      nservers;
    int64_t     timeout_ms;         /* one lookup, all its tries */
    int64_t     min_ttl_ms, max_ttl_ms, negative_ttl_ms;
};

/* An address without its port: family AF_INET or AF_INET6, and its 4 or
 * 16 bytes. */
struct resolve_addr {
    int           family;
    unsigned char a[16];
};

struct resolve_addrs {
    size_t              n;
    struct resolve_addr a[RESOLVE_MAX_ADDRS];
};

/* ok: addrs filled (n >= 1); otherwise msg says why, naming the host. */
typedef void (*resolve_cb)(void *arg, int ok, const struct resolve_addrs *addrs,
                           const char *msg);

/* NULL with err filled when a nameserver is refused or out of memory. */
struct resolver *resolver_new(struct event_base *base, const struct resolve_conf *conf,
                              char *err, size_t errlen);
/* New settings: the nameservers are replaced in place (lookups in flight
 * are sent again to the new ones), the cache is emptied when they change.
 * -1 with err when the new ones cannot be used (the old ones stay). */
int resolver_configure(struct resolver *r, const struct resolve_conf *conf,
                       char *err, size_t errlen);
/* Fails every lookup still waiting (their callbacks are not called). */
void resolver_free(struct resolver *r);

/*
 * Looks name up. 1: answered now from the cache or /etc/hosts (*out
 * filled); -1: a cached failure, msg filled; 0: a query is under way (or
 * joined) and cb(arg, ...) runs later from the loop, unless
 * resolver_cancel(*wait) is called first.
 */
int resolver_lookup(struct resolver *r, const char *name, struct resolve_addrs *out,
                    char *msg, size_t msglen, resolve_cb cb, void *arg,
                    struct resolve_wait **wait);
void resolver_cancel(struct resolve_wait *w);

/* Queries sent so far (A and AAAA count one each), and names cached
 * (/etc/hosts apart): for tests and logs. */
uint64_t resolver_queries(const struct resolver *r);
size_t resolver_names(const struct resolver *r);

#endif
