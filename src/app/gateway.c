/*
 * gateway.c -- the wiring: the route table and auth, reload, worker threads
 * and their mailboxes, the 1 s tick (see gateway.h).
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <malloc.h>
#include <unistd.h>
#include <sys/resource.h>

#include <event2/event.h>
#include <jansson.h>

#include "admin.h"
#include "alerts.h"
#include "events.h"
#include "metrics.h"
#include "gateway.h"
#include "health.h"
#include "infernet.h"
#include "http.h"
#include "lock.h"
#include "log.h"
#include "notify.h"
#include "observe.h"
#include "proxy.h"
#include "resolve.h"
#include "route.h"
#include "session.h"
#include "cache.h"
#include "clients.h"
#include "tls.h"
#include "upstream.h"
#include "worker.h"

#define AUTH_NONE   0
#define AUTH_CLIENT 1   /* admin.client_keys, when set */
#define AUTH_ADMIN  2   /* admin.token */
#define AUTH_PAGE   3   /* the dashboard's page: asks for admin.token itself */

typedef void (*route_fn)(struct gateway *gw, struct http_req *req);

struct route {
    const char *method;
    const char *path;
    int         auth;
    route_fn    fn;
};

static const struct route routes[] = {
    { "POST", "/v1/chat/completions", AUTH_CLIENT, proxy_handle },
    { "POST", "/v1/completions",      AUTH_CLIENT, proxy_handle },
    { "POST", "/v1/embeddings",       AUTH_CLIENT, proxy_handle },
    { "POST", "/v1/verify",           AUTH_CLIENT, proxy_handle },
    { "GET",  "/v1/models",           AUTH_CLIENT, admin_models },
    { "GET",  "/health",              AUTH_NONE,   admin_health },
    { "GET",  "/status",              AUTH_NONE,   admin_status },
    { "GET",  "/v1/providers/status", AUTH_CLIENT, admin_status },
    { "GET",  "/admin/providers",     AUTH_ADMIN,  admin_status },
    { "GET",  "/metrics",             AUTH_NONE,   admin_metrics },
    { "POST", "/admin/reload",        AUTH_ADMIN,  admin_reload },
    { "GET",  "/admin/events",        AUTH_ADMIN,  events_serve },
    { "GET",  "/admin/timeseries",    AUTH_ADMIN,  admin_timeseries },
    { "GET",  "/admin/clients",       AUTH_ADMIN,  admin_clients },
    { "GET",  "/dashboard",           AUTH_PAGE,   admin_dashboard },
    { "GET",  "/api/v1/ip",           AUTH_CLIENT, infernet_route },
};

/* Discovered models change the balancer at most this often. */
#define GW_REBALANCE_MS 100

/* --- routing --------------------------------------------------------- */

/* Compares without an early exit, so timing does not tell how much of a
 * guessed token was right. */
static int token_equal(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b), i;
    unsigned char d = la != lb;

    for (i = 0; i < la; i++)
        d |= (unsigned char)(a[i] ^ b[i % (lb ? lb : 1)]);
    return d == 0;
}

/* Index of the upstream key equal to tok, or -1. Every key is compared. */
static long upstream_key_index(const struct config *c, const char *tok)
{
    long hit = -1;
    size_t i;

    for (i = 0; i < c->nkeys; i++)
        if (token_equal(tok, c->keys[i].secret))
            hit = (long)i;
    return hit;
}

/* Once per configuration generation: a client key that is also an
 * upstream key is never accepted; say so in the log. */
static void check_key_overlap(const struct snapshot *s)
{
    static uint64_t checked_gen;
    const struct config *c = s->cfg;
    size_t i;
    long k;

    if (checked_gen == s->generation)
        return;
    checked_gen = s->generation;
    for (i = 0; i < c->admin.client_keys.n; i++)
        if ((k = upstream_key_index(c, c->admin.client_keys.v[i])) >= 0)
            log_warn("admin.client_keys[%zu] is also the upstream API key %s:"
                     " upstream keys are never accepted from clients",
                     i, c->keys[k].fingerprint);
}

/*
 * /admin/...: the Bearer admin.token; without a token configured, allowed
 * only on a listener bound to a loopback address (403 otherwise).
 * /v1/...: when clients (or admin.client_keys) are set, the Bearer key of
 * one of them (401
 * otherwise); an upstream key is refused even if it is listed there too.
 * Returns 0 when allowed, else the status to answer (see deny()). Tokens
 * are never echoed in answers nor logged.
 */
static int authorized(struct gateway *gw, struct http_req *req, int auth)
{
    const struct config *c = gw->snap->cfg;
    const char *tok = clients_bearer(req);
    int ok = 0;
    long k;

    if (auth == AUTH_PAGE)          /* no data in it: the token guards its data */
        return c->admin.token || http_req_local_loopback(req) ? 0 : 403;
    if (auth == AUTH_ADMIN) {
        if (c->admin.token == NULL)
            return http_req_local_loopback(req) ? 0 : 403;
        return tok && token_equal(tok, c->admin.token) ? 0 : 401;
    }
    if (auth != AUTH_CLIENT || c->nclients == 0)
        return 0;
    check_key_overlap(gw->snap);
    if (tok == NULL)                /* a client certificate may name the client */
        return clients_of_req(c, req) ? 0 : 401;
    ok = clients_find(c, tok) != NULL;      /* admin.client_keys among them */
    if ((k = upstream_key_index(c, tok)) >= 0) {
        static uint64_t warned_gen;
        ok = 0;
        if (warned_gen != gw->snap->generation) {
            warned_gen = gw->snap->generation;
            log_warn("client %s presented the upstream API key %s as its client"
                     " key: refused (warned once per configuration)",
                     http_req_peer(req), c->keys[k].fingerprint);
        }
    }
    return ok ? 0 : 401;
}

static void deny(struct http_req *req, int auth, int status)
{
    if (status == 403)
        http_reply_error(req, 403, "permission_error", "admin_disabled",
                         "admin endpoints are disabled: set admin.token"
                         " (or listen on a loopback address)");
    else if (auth == AUTH_ADMIN)
        http_reply_error(req, 401, "authentication_error", "invalid_admin_token",
                         "missing or wrong admin token");
    else
        http_reply_error(req, 401, "authentication_error", "invalid_api_key",
                         "missing or invalid API key: send one of the gateway's"
                         " client keys as Authorization: Bearer");
}

/* A request answered here, not by the proxy: access log and metrics.
 * Called before the answer, which frees req. */
static void note_rejected(struct http_req *req, const char *path, int status)
{
    struct metrics_req m;
    struct log_access a;
    const char *rid = http_req_known(req, HTTP_H_X_REQUEST_ID);

    memset(&m, 0, sizeof(m));
    m.route = metrics_route_of(path);
    m.status = status;
    m.ttfb_ms = 0;
    metrics_request(&m);
    /* The client's id only when proxy.c would keep it too. */
    if (rid && (strlen(rid) > 64 || rid[strspn(rid, "abcdefghijklmnopqrstuvwxyz"
                                             "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-:")]))
        rid = NULL;
    memset(&a, 0, sizeof(a));
    a.request_id = rid;
    a.method = http_req_method(req);
    a.path = path;
    a.peer = http_req_peer(req);
    a.status = status;
    log_access(&a);
}

/* routing.passthrough: path starts with one of its prefixes. */
static int passthrough(const struct config *c, const char *path)
{
    size_t i;

    for (i = 0; i < c->routing.passthrough.n; i++)
        if (strncmp(path, c->routing.passthrough.v[i],
                    strlen(c->routing.passthrough.v[i])) == 0)
            return 1;
    return 0;
}

/* What a pass-through proxies (HEAD, OPTIONS, ... stay the gateway's). */
static int passthrough_method(const char *m)
{
    return strcmp(m, "GET") == 0 || strcmp(m, "POST") == 0 || strcmp(m, "DELETE") == 0
           || strcmp(m, "PUT") == 0 || strcmp(m, "PATCH") == 0;
}

/* The API surface beyond the table above (route.c) and the pass-through
 * prefixes: client auth, then proxy.c. Returns 1 when req was taken (the
 * state lock is still held; proxy_handle runs without it). Anthropic's
 * routes answer in Anthropic's error shape. */
static int proxied_route(struct gateway *gw, struct http_req *req, const char *path,
                         const char *method, int *path_known)
{
    char id[8];
    int known = 0, status;
    const struct api_route *r = route_find(method, path, &known, id, sizeof(id));

    if (r == NULL && (!passthrough(gw->snap->cfg, path) || !passthrough_method(method))) {
        *path_known |= known;
        return 0;
    }
    if ((status = authorized(gw, req, AUTH_CLIENT)) != 0) {
        note_rejected(req, path, status);
        if (r && (r->flags & API_ANTHROPIC)) {
            char *b = route_error_body(r->flags, status, "authentication_error",
                                       "invalid_api_key", "missing or invalid API key");
            http_reply(req, status, "application/json", b, b ? strlen(b) : 0);
            free(b);
        } else {
            deny(req, AUTH_CLIENT, status);
        }
        return 1;
    }
    lock_drop();
    proxy_handle(gw, req);
    lock_take();
    return 1;
}

/* Runs on the worker that read the request. Everything but the proxied
 * routes is answered under the state lock (status pages read all of it);
 * proxy.c takes the lock only around the shared state it touches. */
static void gateway_handle(struct http_req *req, void *arg)
{
    struct worker *w = arg;
    struct gateway *gw = w->gw;
    const char *path = http_req_path(req), *method = http_req_method(req);
    int path_known = 0, status;
    size_t i;

    __atomic_add_fetch(&w->served, 1, __ATOMIC_RELAXED);
    lock_take();
    gw->requests_total++;
    for (i = 0; i < sizeof(routes) / sizeof(routes[0]); i++) {
        if (strcmp(routes[i].path, path) != 0)
            continue;
        path_known = 1;
        if (strcmp(routes[i].method, method) != 0
            && !(strcmp(method, "HEAD") == 0 && strcmp(routes[i].method, "GET") == 0))
            continue;
        if ((status = authorized(gw, req, routes[i].auth)) != 0) {
            note_rejected(req, path, status);
            deny(req, routes[i].auth, status);
            lock_drop();
            return;
        }
        if (routes[i].fn == proxy_handle) {
            lock_drop();
            proxy_handle(gw, req);
            return;
        }
        routes[i].fn(gw, req);
        lock_drop();
        return;
    }
    if (proxied_route(gw, req, path, method, &path_known)) {
        lock_drop();
        return;
    }
    if (path_known) {
        note_rejected(req, path, 405);
        http_reply_error(req, 405, "invalid_request_error", "method_not_allowed",
                         "method %.32s not allowed on %.200s", method, path);
        lock_drop();
        return;
    }
    note_rejected(req, path, 404);
    http_reply_error(req, 404, "invalid_request_error", "not_found",
                     "unknown path %.200s", path);
    lock_drop();
}

/* --- lifecycle ------------------------------------------------------- */

/* Another replica saw a key fail or a breaker open: follow its advice
 * until it expires (our own view stays as it is). */
/* The response cache follows cfg->cache; a reload that leaves its settings
 * as they were keeps it and what it holds. Runs on the control thread,
 * which holds the state lock (lock.h). */
static void gateway_cache_apply(struct gateway *gw, const struct config *old,
                                const struct config *cfg)
{
    if (gw->cache == NULL && !cfg->cache.enabled)
        return;
    if (gw->cache != NULL && old != NULL && cfg->cache.enabled
        && old->cache.store == cfg->cache.store
        && old->cache.ttl_ms == cfg->cache.ttl_ms && old->cache.max_bytes == cfg->cache.max_bytes
        && old->cache.max_entry_bytes == cfg->cache.max_entry_bytes)
        return;
    lock_take();
    cache_free(gw->cache);
    gw->cache = cfg->cache.enabled ? cache_new(cfg->cache.max_bytes,
                                               cfg->cache.max_entry_bytes,
                                               cfg->cache.ttl_ms) : NULL;
    lock_drop();
    if (cfg->cache.enabled && gw->cache == NULL)
        log_error("cache: out of memory; requests go upstream");
}

static void gateway_on_shared(void *arg, const struct session_shared *ev)
{
    struct gateway *gw = arg;
    const struct snapshot *s = gw->snap;
    int64_t until = gw_mono_from_unix(ev->until_unix_ms);
    size_t i;

    if (ev->type == SESSION_BREAKER_OPEN) {
        for (i = 0; i < s->cfg->nhosts; i++)
            if (strcmp(s->cfg->hosts[i].name, ev->name) == 0
                && s->hs[i]->shared_open_until_ms < until)
                s->hs[i]->shared_open_until_ms = until;
        return;
    }
    for (i = 0; i < s->cfg->nkeys; i++) {
        if (strcmp(s->cfg->keys[i].id, ev->name) != 0)
            continue;
        if (s->ks[i]->cooldown_until_ms < until) {
            s->ks[i]->cooldown_until_ms = until;
            log_info("key %s: %s on replica %s, skipped here too",
                     s->cfg->keys[i].fingerprint,
                     ev->type == SESSION_KEY_DISABLED ? "disabled" : "cooling",
                     ev->replica ? ev->replica : "?");
        }
    }
}

/* An alert fired or resolved: tell /admin/events. */
static void gateway_alert_event(void *arg, const struct alerts_event *ev)
{
    (void)arg;
    events_emit(ev->firing ? "alert_fired" : "alert_resolved", alerts_event_json(ev));
}

/* Once a second: recovery shares follow the breakers' ramps, ejections
 * whose time is up end, half-open breakers let their trial pass one. */
static void gateway_tick(evutil_socket_t fd, short what, void *arg)
{
    struct gateway *gw = arg;
    const struct snapshot *s = gw->snap;
    int64_t now = gw_now_ms();
    size_t i;

    (void)fd;
    (void)what;
    for (i = 0; i < s->cfg->nhosts; i++) {
        s->hs[i]->live.share = breaker_share(&s->hs[i]->br, now);
        if (health_refresh(s->hs[i], now) & HEALTH_REFRESH_RETURNED)
            log_info("host %s is back after its ejection", s->cfg->hosts[i].name);
    }
    gateway_health_moved(gw);
    alerts_tick(gw->alerts, now, gw_unix_ms());
    if (gw->obs)
        observe_tick(gw->obs, gw);
}

/* Names of a tier's hosts for a log line, cut with "..." when long. */
static void tier_names(const struct snapshot *s, const struct balance_tier *t,
                       char *buf, size_t len)
{
    size_t k, off = 0;

    buf[0] = '\0';
    for (k = 0; k < t->n; k++) {
        int w = snprintf(buf + off, len - off, "%s%s", k ? ", " : "",
                         s->cfg->hosts[t->node[k]].name);
        if (w < 0 || (size_t)w >= len - off) {
            snprintf(buf + (off < len - 4 ? off : len - 4), 4, "...");
            return;
        }
        off += (size_t)w;
    }
}

static void panic_changed(void *ctx, const struct balance_tier *t)
{
    const struct snapshot *s = ctx;
    char names[256];

    tier_names(s, t, names, sizeof(names));
    if (t->panic)
        log_warn("panic mode on for the priority %d tier of %s: %zu of %zu hosts"
                 " usable, below health_check.panic_threshold %g; balancing over"
                 " all of them", t->priority, names, t->usable, t->n,
                 s->cfg->health.panic_threshold);
    else
        log_info("panic mode off for the priority %d tier of %s: %zu of %zu hosts"
                 " usable", t->priority, names, t->usable, t->n);
}

void gateway_health_moved(struct gateway *gw)
{
    struct snapshot *s = gw->snap;

    balance_panic_update(s->bal, s->live, s->cfg->health.panic_threshold,
                         panic_changed, s);
}

#define GW_PANIC_COMPARED 64        /* tiers in panic compared across a rebuild */

/* A tier in panic as its log lines name it. */
struct panic_line {
    int    priority;
    size_t usable, n;
    char   names[256];
};

struct panic_set {
    const struct snapshot *s;
    struct panic_line     *v;
    size_t                 n;
};

static void panic_collect(void *ctx, const struct balance_tier *t)
{
    struct panic_set *ps = ctx;
    struct panic_line *l;

    if (ps->n == GW_PANIC_COMPARED)
        return;
    l = &ps->v[ps->n++];
    l->priority = t->priority;
    l->usable = t->usable;
    l->n = t->n;
    tier_names(ps->s, t, l->names, sizeof(l->names));
}

static int panic_has(const struct panic_set *ps, const struct panic_line *l)
{
    size_t i;

    for (i = 0; i < ps->n; i++)
        if (ps->v[i].priority == l->priority && strcmp(ps->v[i].names, l->names) == 0)
            return 1;
    return 0;
}

/*
 * gw->snap has a new balancer (reload, discovered models), which starts
 * with no tier in panic: decides again and logs only what differs from
 * `old_b` (whose hosts `old_s` names), so a rebuild neither repeats an
 * "on" line nor loses an "off" one.
 */
static void panic_rebuilt(struct gateway *gw, const struct snapshot *old_s,
                          const struct balance *old_b)
{
    struct snapshot *s = gw->snap;
    struct panic_set before = { old_s, calloc(GW_PANIC_COMPARED, sizeof(struct panic_line)), 0 };
    struct panic_set after = { s, calloc(GW_PANIC_COMPARED, sizeof(struct panic_line)), 0 };
    size_t i;

    if (before.v == NULL || after.v == NULL) {
        gateway_health_moved(gw);           /* logs every tier in panic */
        goto out;
    }
    balance_panic_list(old_b, panic_collect, &before);
    balance_panic_update(s->bal, s->live, s->cfg->health.panic_threshold, NULL, NULL);
    balance_panic_list(s->bal, panic_collect, &after);
    for (i = 0; i < after.n; i++)
        if (!panic_has(&before, &after.v[i]))
            log_warn("panic mode on for the priority %d tier of %s: %zu of %zu hosts"
                     " usable, below health_check.panic_threshold %g; balancing over"
                     " all of them", after.v[i].priority, after.v[i].names,
                     after.v[i].usable, after.v[i].n, s->cfg->health.panic_threshold);
    for (i = 0; i < before.n; i++)
        if (!panic_has(&after, &before.v[i]))
            log_info("panic mode off for the priority %d tier of %s (new configuration)",
                     before.v[i].priority, before.v[i].names);
out:
    free(before.v);
    free(after.v);
}

/* Probes changed some host's models: rebuild the balancer (coalesced). */
static void gateway_rebalance(evutil_socket_t fd, short what, void *arg)
{
    struct gateway *gw = arg;
    struct snapshot *s = gw->snap;
    struct balance *b = snapshot_balance(s->cfg, s->hs), *old;

    (void)fd;
    (void)what;
    if (b == NULL) {
        log_error("out of memory rebuilding the balancer for discovered models");
        return;
    }
    old = s->bal;
    s->bal = b;
    panic_rebuilt(gw, s, old);
    balance_free(old);
}

static void gateway_health_changed(void *arg, size_t host, unsigned what)
{
    struct gateway *gw = arg;
    struct timeval tv = { 0, GW_REBALANCE_MS * 1000 };

    (void)host;
    if (what & HEALTH_CHANGED_HEALTH)
        gateway_health_moved(gw);
    if ((what & HEALTH_CHANGED_MODELS) && gw->rebalance
        && !evtimer_pending(gw->rebalance, NULL))
        evtimer_add(gw->rebalance, &tv);
}

/* --- workers --------------------------------------------------------- */

/* Whether w's objects must be reached through its mailbox. */
static int remote(const struct worker *w)
{
    return w->running && w != worker_self();
}

struct limits_msg {
    struct worker     *w;
    struct http_limits lim;
};

static void limits_run(void *arg)
{
    struct limits_msg *m = arg;

    http_server_set_limits(m->w->http, &m->lim);
    free(m);
}

static void apply_limits(struct gateway *gw)
{
    const struct config *c = gw->snap->cfg;
    struct http_limits lim;
    int i;

    lim.max_header_bytes = c->server.max_header_bytes;
    lim.max_body_bytes = c->server.max_body_bytes;
    lim.client_timeout_ms = c->server.client_timeout_ms;
    for (i = 0; i < gw->nworkers; i++) {
        struct worker *w = &gw->workers[i];
        struct limits_msg *m;

        if (w->http == NULL)
            continue;
        if (!remote(w)) {
            http_server_set_limits(w->http, &lim);
            continue;
        }
        if ((m = malloc(sizeof(*m))) != NULL) {
            m->w = w;
            m->lim = lim;
        }
        if (m == NULL || worker_post(w, limits_run, m) < 0) {
            free(m);
            log_error("out of memory: worker %d keeps its old client limits", w->id);
        }
    }
}

/* server.resolver*: the settings of each loop's resolver (resolve.h), at
 * start and at each reload; a worker thread gets its own copy. */
struct resolver_msg {
    struct upstream    *up;
    int                 id;             /* the worker; -1: the main loop */
    struct resolve_conf conf;
    int                 libc;           /* server.resolver: libc */
    char               *servers[8];
};

static void resolver_msg_free(struct resolver_msg *m)
{
    size_t i;

    for (i = 0; i < m->conf.nservers; i++)
        free(m->servers[i]);
    free(m);
}

static struct resolver_msg *resolver_msg_new(const struct config *c, struct upstream *up, int id)
{
    struct resolver_msg *m = calloc(1, sizeof(*m));
    size_t i;

    if (m == NULL)
        return NULL;
    m->up = up;
    m->id = id;
    m->libc = c->server.resolver_libc;
    m->conf.servers = (const char *const *)m->servers;
    m->conf.timeout_ms = c->server.resolver_timeout_ms;
    m->conf.min_ttl_ms = c->server.resolver_min_ttl_ms;
    m->conf.max_ttl_ms = c->server.resolver_max_ttl_ms;
    m->conf.negative_ttl_ms = c->server.resolver_negative_ttl_ms;
    for (i = 0; i < c->server.resolver.n && i < 8; i++) {
        if ((m->servers[i] = strdup(c->server.resolver.v[i])) == NULL) {
            resolver_msg_free(m);
            return NULL;
        }
        m->conf.nservers = i + 1;
    }
    return m;
}

/* On the loop of m->up. -1: it keeps its previous settings. */
static int resolver_set(struct resolver_msg *m)
{
    char err[256];
    int rc = upstream_set_resolver(m->up, m->libc ? NULL : &m->conf, err, sizeof(err));

    if (rc < 0 && m->id >= 0)
        log_error("worker %d: %s", m->id, err);
    else if (rc < 0)
        log_error("%s", err);
    resolver_msg_free(m);
    return rc;
}

static void resolver_run(void *arg)
{
    resolver_set(arg);
}

static int apply_resolver(struct gateway *gw, const struct config *c)
{
    struct resolver_msg *m;
    int i, rc = 0;

    for (i = -1; i < gw->nworkers; i++) {
        struct worker *w = i >= 0 ? &gw->workers[i] : NULL;
        struct upstream *up = w ? w->up : gw->up;
        if (up == NULL || (w && up == gw->up))
            continue;                   /* one worker: the main loop's, done at -1 */
        if ((m = resolver_msg_new(c, up, i)) == NULL) {
            log_error("out of memory: a resolver keeps its old settings");
            rc = -1;
        } else if (w == NULL || !remote(w)) {
            if (resolver_set(m) < 0)
                rc = -1;
        } else if (worker_post(w, resolver_run, m) < 0) {
            resolver_msg_free(m);
            log_error("out of memory: worker %d keeps its old resolver settings", w->id);
        }
    }
    return rc;
}

/* An answer to a request that may belong to another worker's thread. */
struct answer_msg {
    struct http_req *req;
    int              status;
    char            *body;          /* JSON, owned; NULL: an error */
    const char      *type, *code;
    char             msg[128];
};

static void answer_run(void *arg)
{
    struct answer_msg *a = arg;

    if (a->body)
        http_reply(a->req, a->status, "application/json", a->body, strlen(a->body));
    else
        http_reply_error(a->req, a->status, a->type, a->code, "%s", a->msg);
    free(a->body);
    free(a);
}

/* Takes body. type, code and msg make an OpenAI error when body is NULL. */
static void answer(const struct gw_waiter *wt, int status, char *body,
                   const char *type, const char *code, const char *msg)
{
    struct answer_msg *a = calloc(1, sizeof(*a));

    if (a == NULL) {
        free(body);
        if (wt->w && remote(wt->w)) {
            log_error("out of memory: a reload request goes unanswered");
            return;
        }
        http_reply_error(wt->req, 500, "server_error", "out_of_memory", "out of memory");
        return;
    }
    a->req = wt->req;
    a->status = status;
    a->body = body;
    a->type = type;
    a->code = code;
    snprintf(a->msg, sizeof(a->msg), "%s", msg ? msg : "");
    if (wt->w && remote(wt->w)) {
        if (worker_post(wt->w, answer_run, a) == 0)
            return;
        free(a->body);
        free(a);
        log_error("out of memory: a reload request goes unanswered");
        return;
    }
    answer_run(a);
}

static void drain_run(void *arg)
{
    struct worker *w = arg;

    http_server_stop(w->http);
    events_worker_end(w);           /* watchers would hold the drain up */
}

static void abort_run(void *arg)
{
    proxy_abort_all(arg);
}

/* Runs fn(w) for every worker, on its own thread. */
static void each_worker(struct gateway *gw, worker_fn fn, const char *what)
{
    int i;

    for (i = 0; i < gw->nworkers; i++) {
        struct worker *w = &gw->workers[i];

        if (w->http == NULL)
            continue;
        if (!remote(w))
            fn(w);
        else if (worker_post(w, fn, w) < 0)
            log_error("out of memory: worker %d could not be told to %s", w->id, what);
    }
}

size_t gateway_listeners(const struct gateway *gw, const struct config *cfg,
                         struct cfg_listener *out)
{
    size_t i;

    if (gw->listen_override) {
        out[0].address = (char *)gw->listen_override;
        out[0].tls = cfg->server.tls.cert != NULL;
        return 1;
    }
    for (i = 0; i < cfg->server.nlisteners && i < CFG_MAX_LISTENERS; i++)
        out[i] = cfg->server.listeners[i];
    return i;
}

/* The listeners' certificate: installed for new handshakes, and a warning
 * when it expires soon; a warning for each upstream whose certificate is
 * not checked (tls.verify: false). At start and at each reload. */
static void tls_install(const struct config *cfg)
{
    const struct tls_cert_info *ci = tls_ctx_cert(cfg->server.tls_ctx);
    int64_t now = gw_unix_ms() / 1000;
    char when[32];
    size_t i;

    for (i = 0; i < cfg->nhosts; i++)
        if (!cfg->hosts[i].tls.verify)
            log_warn("host %s: tls.verify is false: its certificate is not checked"
                     " (anyone on the path can read and change its traffic)",
                     cfg->hosts[i].name);
    tls_current_set(cfg->server.tls_ctx);
    if (ci == NULL)
        return;
    tls_time_str(ci->not_after, when, sizeof(when));
    log_info("TLS certificate %s: subject %s, issuer %s, serial %s, expires %s",
             cfg->server.tls.cert, ci->subject, ci->issuer, ci->serial, when);
    if (ci->not_after - now < CFG_TLS_EXPIRY_WARN_S)
        log_warn("TLS certificate %s expires on %s (in %lld days)", cfg->server.tls.cert,
                 when, (long long)((ci->not_after - now) / 86400));
}

static void busy_on_run(void *arg)
{
    struct worker *w = arg;

    if (worker_busy_poll(w, 1) < 0)
        log_error("out of memory: worker %d sleeps between events (server.busy_polling)", w->id);
}

static void busy_off_run(void *arg)
{
    worker_busy_poll(arg, 0);
}

/* server.busy_polling: each loop that serves requests (with one worker,
 * the main loop; with more, the workers', not the control thread's) polls
 * without sleeping, or sleeps again. */
static void apply_busy_polling(struct gateway *gw, int on)
{
    each_worker(gw, on ? busy_on_run : busy_off_run, "change server.busy_polling");
    log_info("server.busy_polling %s: %d event loop(s) %s", on ? "on" : "off",
             gw->nworkers, on ? "poll without sleeping (100% of a core each)" : "sleep when idle");
}

/* server.workers: 1 serves on the main loop as worker 0; more start a
 * loop, listener (SO_REUSEPORT) and upstream per worker thread. */
static int workers_init(struct gateway *gw, const struct config *cfg)
{
    struct cfg_listener ls[CFG_MAX_LISTENERS];
    size_t nls = gateway_listeners(gw, cfg, ls), j;
    int n = cfg->server.workers > 1 ? cfg->server.workers : 1, i;
    char err[256];

    gw->workers = calloc((size_t)n, sizeof(*gw->workers));
    if (gw->workers == NULL)
        return -1;
    gw->nworkers = n;
    gw->threaded = n > 1;
    if (gw->threaded)
        lock_enable();                  /* before any worker thread runs */
    for (i = 0; i < n; i++) {
        struct worker *w = &gw->workers[i];

        if (worker_init(w, gw, i, gw->threaded ? NULL : gw->base) < 0) {
            log_error("cannot set up worker %d's event loop", i);
            return -1;
        }
        w->up = gw->threaded ? upstream_new(w->base) : gw->up;
        w->http = http_server_new(w->base, gateway_handle, w);
        if (w->up == NULL || w->http == NULL) {
            log_error("cannot set up worker %d", i);
            return -1;
        }
        if (gw->threaded) {
            http_server_set_reuseport(w->http, 1);
            http_server_set_max_connections(w->http,
                                            http_server_max_connections(w->http) / (size_t)n);
        }
        if (i > 0 && http_server_listen_like(w->http, gw->workers[0].http,
                                             err, sizeof(err)) < 0) {
            log_error("%s", err);
            return -1;
        }
        for (j = 0; i == 0 && j < nls; j++)
            if (http_server_listen_tls(w->http, ls[j].address, ls[j].tls,
                                       err, sizeof(err)) < 0) {
                log_error("%s", err);
                return -1;
            }
    }
    if (!gw->threaded) {
        gw->http = gw->workers[0].http;
        worker_set_self(&gw->workers[0]);
    }
    return 0;
}

int gateway_start(struct gateway *gw)
{
    int i;

    if (!gw->threaded)
        return 0;
    /* From here on the main thread runs its callbacks under the state
     * lock; check that its loop really lets go of it while it sleeps. */
    lock_as_loop_owner(gw->base);
    event_base_loop(gw->base, EVLOOP_NONBLOCK);
    gw_clock_loop_left();
    if (lock_loop_hooked() == 0) {
        log_error("server.workers: the main loop (libevent method %s) does not let go"
                  " of the state lock while it sleeps (%s), so it cannot share state"
                  " with worker threads", event_base_get_method(gw->base),
                  lock_loop_mechanism());
        return -1;
    }
    for (i = 0; i < gw->nworkers; i++)
        if (worker_start(&gw->workers[i]) < 0) {
            log_error("cannot start worker thread %d", i);
            return -1;
        }
    log_info("%d worker threads serving, sharing the listen address", gw->nworkers);
    return 0;
}

/* http.c's error bodies: Anthropic's shape on its routes (also for the
 * server's own 413, 431, 408 and 400 there). */
static char *gw_error_body(const char *path, int status, const char *type,
                           const char *code, const char *msg)
{
    if (route_family_of_path(path) != API_MESSAGES)
        return NULL;
    return route_error_body(API_ANTHROPIC, status, type, code, msg);
}

int gateway_init(struct gateway *gw, struct event_base *base,
                 struct config *cfg, const char *conf_dir,
                 const char *listen_override)
{
    struct cfg_listener ls[CFG_MAX_LISTENERS];
    size_t nls, i;

    memset(gw, 0, sizeof(*gw));
    gw->do_reload = gateway_reload;
    gw->listeners = gateway_listeners;
    gw->health_moved = gateway_health_moved;
    http_set_error_body(gw_error_body);
    gw->base = base;
    gw->conf_dir = conf_dir;
    gw->listen_override = listen_override;
    gw->started_ms = gw_now_ms();
    gw->started_unix = gw_unix_ms() / 1000;
    gw->id_seed = (uint64_t)gw_unix_ms() ^ ((uint64_t)getpid() << 32);
    gw->reload_ok = 1;
    gw->reload_unix = gw->started_unix;
    gw->rnd = (uint64_t)gw_unix_ms() | 1;
    gw->snap = snapshot_new(cfg, NULL, 1);
    if (gw->snap == NULL) {
        log_error("out of memory building the configuration snapshot");
        return -1;
    }
    snapshot_activate(gw->snap);
    retry_budget_init(&gw->budget, &gw->snap->rp);
    gw->tick = event_new(base, -1, EV_PERSIST, gateway_tick, gw);
    if (gw->tick) {
        struct timeval tv = { 1, 0 };
        event_add(gw->tick, &tv);
    }
    {
        char serr[512];
        /* Before the loop runs: a refused Redis password stops the start. */
        if (session_redis_check_auth(cfg, serr, sizeof(serr)) < 0) {
            log_error("%s/policies.yaml: %s", conf_dir, serr);
            return -1;
        }
        gw->sess = session_new(base, cfg, 1,
                               listen_override ? listen_override : cfg->server.listen,
                               serr, sizeof(serr));
        if (gw->sess == NULL) {
            log_error("sessions: %s", serr);
            return -1;
        }
        session_on_shared(gw->sess, gateway_on_shared, gw);
    }
    gateway_cache_apply(gw, NULL, cfg);
    gw->up = upstream_new(base);
    gw->alerts = gw->up ? alerts_new(base, gw->up, log_msg) : NULL;
    gw->health = gw->up ? health_new(base, gw->up) : NULL;
    gw->rebalance = evtimer_new(base, gateway_rebalance, gw);
    gw->obs = observe_new();
    if (gw->up == NULL || gw->alerts == NULL || gw->obs == NULL
        || gw->health == NULL || gw->rebalance == NULL
        || alerts_configure(gw->alerts, cfg) < 0) {
        log_error("cannot set up the event loop");
        return -1;
    }
    alerts_set_hook(gw->alerts, gateway_alert_event, gw);
    health_set_listener(gw->health, gateway_health_changed, gw);
    if (health_set_snapshot(gw->health, gw->snap) < 0) {
        log_error("out of memory setting up health checks");
        return -1;
    }
    metrics_set_start_time(gw_unix_ms());
    metrics_set_generation(1);
    tls_install(cfg);
    if (workers_init(gw, cfg) < 0)
        return -1;
    if (apply_resolver(gw, cfg) < 0)
        return -1;
    apply_limits(gw);
    if (cfg->server.busy_polling)
        apply_busy_polling(gw, 1);      /* the worker threads have not started */
    nls = gateway_listeners(gw, cfg, ls);
    for (i = 0; i < nls; i++)
        log_info("listening on %s%s", ls[i].address, ls[i].tls ? " (TLS)" : "");
    log_info("%zu hosts, %zu keys, strategy %s",
             cfg->nhosts, cfg->nkeys, config_strategy_name(cfg->routing.strategy));
    return 0;
}

/* A reload in flight: the thread parses, the loop installs. */
#define RELOAD_MAX_WAITERS GW_RELOAD_WAITERS

struct reload_job {
    struct gateway    *gw;
    pthread_t          thread;
    struct event      *done;        /* activated by the thread */
    struct config     *cfg;         /* NULL when the files have problems */
    struct keys_ring  *rings;
    struct cfg_errors  errs;
    int64_t            parse_ms;
    int64_t            parse_cpu_ms;  /* the thread's own CPU time */
    struct gw_waiter   waiters[RELOAD_MAX_WAITERS];   /* POST /admin/reload */
    size_t             nwaiters;
};

/* The parse is background work: on a busy core it yields to the loop
 * (nice 10: about a tenth of the core when the loop wants all of it). */
#define RELOAD_NICE 10

/* Off the loop: Redis credentials refused make the reload fail (blocking
 * connects, each bounded by sessions.redis.timeout; unreachable is fine). */
static void reload_check_redis(struct reload_job *job)
{
    char serr[512], msg[1024], **v;

    if (session_redis_check_auth(job->cfg, serr, sizeof(serr)) == 0)
        return;
    snprintf(msg, sizeof(msg), "%s/policies.yaml: %s", job->gw->conf_dir, serr);
    v = realloc(job->errs.msg, (job->errs.n + 1) * sizeof(*v));
    if (v != NULL) {
        job->errs.msg = v;
        if ((v[job->errs.n] = strdup(msg)) != NULL)
            job->errs.n++;
    }
    keys_free(job->rings, job->cfg->nhosts);
    job->rings = NULL;
    config_unref(job->cfg);
    job->cfg = NULL;
}

static void *reload_thread(void *arg)
{
    struct reload_job *job = arg;
    int64_t t0 = gw_clock_now_ms();

    setpriority(PRIO_PROCESS, (id_t)gettid(), RELOAD_NICE);

    job->cfg = config_load(job->gw->conf_dir, &job->errs);
    if (job->cfg && (job->rings = keys_build(job->cfg)) == NULL) {
        config_unref(job->cfg);
        job->cfg = NULL;
    }
    if (job->cfg)
        reload_check_redis(job);
    /* The parse trees are gone: hand their pages back. They lie below the
     * configuration's own strings, so only a trim returns them (10,000
     * hosts + 100,000 keys: 59 MB idle instead of 120; docs/benchmarks.md). */
    malloc_trim(0);
    job->parse_ms = gw_clock_now_ms() - t0;
    {
        struct timespec ts;
        if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) == 0)
            job->parse_cpu_ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    }
    event_active(job->done, EV_TIMEOUT, 0);   /* the base is thread-aware */
    return NULL;
}

/* Installs job->cfg, or records why not. Returns 0 on success. */
static int reload_apply(struct gateway *gw, struct reload_job *job)
{
    struct cfg_errors errs = job->errs;
    struct config *cfg = job->cfg;
    struct snapshot *s, *old;
    int64_t t0 = gw_clock_now_ms();
    size_t i;

    job->errs.msg = NULL;
    job->errs.n = 0;
    job->cfg = NULL;
    gw->reload_unix = gw_unix_ms() / 1000;
    if (cfg == NULL && errs.n == 0) {
        errs.msg = malloc(sizeof(char *));
        if (errs.msg && (errs.msg[0] = strdup("out of memory loading the configuration")))
            errs.n = 1;
    }
    if (cfg) {
        struct cfg_listener a[CFG_MAX_LISTENERS], b[CFG_MAX_LISTENERS];
        size_t na = gateway_listeners(gw, gw->snap->cfg, a);
        size_t nb = gateway_listeners(gw, cfg, b), k;
        int same = na == nb;

        for (k = 0; same && k < na; k++)
            same = strcmp(a[k].address, b[k].address) == 0 && a[k].tls == b[k].tls;
        if (!same) {
            char msg[512];
            snprintf(msg, sizeof(msg), "%s/policies.yaml: server.listen: changing"
                     " the listen addresses or which serve TLS needs a restart"
                     " (running on %s%s%s)",
                     gw->conf_dir, a[0].address, a[0].tls ? " with TLS" : "",
                     na > 1 ? " and more" : "");
            errs.msg = malloc(sizeof(char *));
            if (errs.msg) {
                errs.msg[0] = strdup(msg);
                errs.n = errs.msg[0] ? 1 : 0;
            }
            keys_free(job->rings, cfg->nhosts);
            job->rings = NULL;
            config_unref(cfg);
            cfg = NULL;
        }
    }
    if (cfg == NULL) {
        for (i = 0; i < errs.n; i++)
            log_error("reload rejected: %s", errs.msg[i]);
        log_error("reload failed with %zu problem(s); still serving generation %llu",
                  errs.n, (unsigned long long)gw->snap->generation);
        cfg_errors_free(&gw->reload_errs);
        gw->reload_errs = errs;
        gw->reload_ok = 0;
        gw->reloads_failed++;
        metrics_reload(0);
        return -1;
    }
    s = snapshot_new(cfg, job->rings, gw->snap->generation + 1);
    job->rings = NULL;                  /* the snapshot has them (or freed them) */
    if (s == NULL) {
        config_unref(cfg);
        log_error("reload failed: out of memory");
        gw->reload_ok = 0;
        gw->reloads_failed++;
        metrics_reload(0);
        return -1;
    }
    gateway_cache_apply(gw, gw->snap->cfg, cfg);
    {
        char serr[256];
        if (session_reconfigure(gw->sess, cfg, s->generation, serr, sizeof(serr)) < 0)
            log_error("reload: sessions kept their old settings: %s", serr);
    }
    old = gw->snap;                     /* unref'd once panic_rebuilt() read it */
    gw->snap = s;
    snapshot_activate(s);
    tls_install(cfg);
    /* SPEC: a key rejected with 401/403 is disabled until the next reload
     * (cooldowns, health and breakers carry over). */
    for (i = 0; i < cfg->nkeys; i++)
        if (s->ks[i]->disabled) {
            s->ks[i]->disabled = 0;
            log_info("key %s (%s) enabled again by the reload",
                     cfg->keys[i].fingerprint, cfg->keys[i].description);
        }
    if (cfg->server.workers != gw->nworkers && (cfg->server.workers > 1 || gw->threaded))
        log_warn("reload: server.workers changes from %d to %d at the next restart",
                 gw->nworkers, cfg->server.workers);
    if (cfg->server.busy_polling != old->cfg->server.busy_polling)
        apply_busy_polling(gw, cfg->server.busy_polling);
    panic_rebuilt(gw, old, old->bal);
    snapshot_unref(old);
    if (health_set_snapshot(gw->health, s) < 0)
        log_error("out of memory: health checks still follow the previous configuration");
    retry_budget_set_params(&gw->budget, &s->rp);
    apply_limits(gw);
    apply_resolver(gw, cfg);
    cfg_errors_free(&gw->reload_errs);
    gw->reload_ok = 1;
    gw->reloads_ok++;
    if (alerts_configure(gw->alerts, cfg) < 0)
        log_error("reload: alerts kept their old settings");
    metrics_reload(1);
    metrics_set_generation(s->generation);
    log_open(cfg->server.log_file, cfg->server.log_level, cfg->server.log_format);
    log_open_access(cfg->server.access_log, cfg->server.access_log_format);
    log_info("reloaded: generation %llu, %zu hosts, %zu keys (parsed in %lld ms,"
             " %lld ms of CPU, off the loop; installed in %lld ms on it)",
             (unsigned long long)s->generation, cfg->nhosts, cfg->nkeys,
             (long long)job->parse_ms, (long long)job->parse_cpu_ms,
             (long long)(gw_clock_now_ms() - t0));
    return 0;
}

static void reload_answer(struct gateway *gw, const struct gw_waiter *wt, int ok)
{
    json_t *errs = json_array(), *o;
    char *body;
    size_t i;

    for (i = 0; i < gw->reload_errs.n; i++)
        json_array_append_new(errs, json_string(gw->reload_errs.msg[i]));
    o = json_pack("{s:b, s:I, s:o}", "ok", ok,
                  "generation", (json_int_t)gw->snap->generation, "errors", errs);
    body = o ? json_dumps(o, JSON_COMPACT) : NULL;
    answer(wt, body ? (ok ? 200 : 422) : 500, body, "server_error", "out_of_memory",
           "out of memory");
    json_decref(o);
}

static void reload_job_free(struct reload_job *job)
{
    if (job->cfg) {
        keys_free(job->rings, job->cfg->nhosts);
        config_unref(job->cfg);
    }
    cfg_errors_free(&job->errs);
    if (job->done)
        event_free(job->done);
    free(job);
}

static void reload_start(struct gateway *gw);

static void reload_done(evutil_socket_t fd, short what, void *arg)
{
    struct reload_job *job = arg;
    struct gateway *gw = job->gw;
    size_t i;
    int ok;

    (void)fd;
    (void)what;
    pthread_join(job->thread, NULL);
    gw->reload = NULL;
    ok = reload_apply(gw, job) == 0;
    observe_reload(gw->obs, ok, gw->snap->generation, ok ? NULL : &gw->reload_errs);
    notify_send("READY=1\nSTATUS=%s, serving configuration generation %llu",
                ok ? "reloaded" : "reload rejected",
                (unsigned long long)gw->snap->generation);
    for (i = 0; i < job->nwaiters; i++)
        reload_answer(gw, &job->waiters[i], ok);
    reload_job_free(job);
    if (gw->reload_again) {
        gw->reload_again = 0;
        reload_start(gw);
    }
    for (i = 0; i < gw->nreload_next; i++) {
        if (gw->reload)
            gw->reload->waiters[gw->reload->nwaiters++] = gw->reload_next[i];
        else
            answer(&gw->reload_next[i], 500, NULL, "server_error", "reload_failed",
                   "the reload could not be started");
    }
    gw->nreload_next = 0;
}

static void reload_start(struct gateway *gw)
{
    struct reload_job *job = calloc(1, sizeof(*job));

    if (job == NULL || (job->done = event_new(gw->base, -1, 0, reload_done, job)) == NULL) {
        free(job);
        log_error("reload: out of memory");
        return;
    }
    job->gw = gw;
    notify_send("RELOADING=1\nSTATUS=reloading configuration");
    if (pthread_create(&job->thread, NULL, reload_thread, job) != 0) {
        log_error("reload: cannot start the loader thread");
        reload_job_free(job);
        return;
    }
    gw->reload = job;
}

void gateway_reload(struct gateway *gw, struct http_req *req)
{
    int running = gw->reload != NULL;
    struct gw_waiter wt = { req, worker_self() };

    if (!running)
        reload_start(gw);
    else
        gw->reload_again = 1;      /* the files may have changed since it read them */
    if (req == NULL)
        return;
    if (gw->reload == NULL) {
        http_reply_error(req, 500, "server_error", "reload_failed",
                         "the reload could not be started");
        return;
    }
    if (running) {                 /* answered by the reload that follows */
        if (gw->nreload_next == GW_RELOAD_WAITERS) {
            http_reply_error(req, 409, "conflict", "reload_in_progress",
                             "a reload is already in progress");
            return;
        }
        gw->reload_next[gw->nreload_next++] = wt;
        return;
    }
    gw->reload->waiters[gw->reload->nwaiters++] = wt;
}

void gateway_drain(struct gateway *gw)
{
    gw->draining = 1;
    events_emit("drain_started", json_pack("{s:I}", "in_flight", (json_int_t)gw->active));
    each_worker(gw, drain_run, "stop accepting");
}

void gateway_abort_all(struct gateway *gw)
{
    each_worker(gw, abort_run, "end its requests");
}

int gateway_idle(const struct gateway *gw)
{
    int i;

    if (gw->active)
        return 0;
    for (i = 0; i < gw->nworkers; i++)
        if (gw->workers[i].http && http_server_requests(gw->workers[i].http))
            return 0;
    return 1;
}

size_t gateway_connections(const struct gateway *gw)
{
    size_t n = 0;
    int i;

    for (i = 0; i < gw->nworkers; i++)
        if (gw->workers[i].http)
            n += http_server_connections(gw->workers[i].http);
    return n;
}

/* Stops the worker threads (their loops end; what they still hold is
 * freed here), then frees each worker's server and upstream. */
static void workers_free(struct gateway *gw)
{
    int i;

    if (gw->threaded)
        lock_loop_owner_end();          /* the workers may need it to finish */
    for (i = 0; i < gw->nworkers; i++)
        worker_join(&gw->workers[i]);
    /* Alone now; what follows frees shared state: hold the lock for it
     * as everyone else does (gateway_free() drops it at the end). */
    if (gw->threaded)
        lock_take();
    for (i = 0; i < gw->nworkers; i++) {
        struct worker *w = &gw->workers[i];

        if (w->http)
            proxy_abort_all(w);
        events_worker_end(w);
        http_server_free(w->http);
        w->http = NULL;
        if (gw->threaded)
            upstream_free(w->up);
        w->up = NULL;
        worker_free(w);
    }
    free(gw->workers);
    gw->workers = NULL;
    gw->nworkers = 0;
    gw->http = NULL;
    worker_set_self(NULL);
}

void gateway_free(struct gateway *gw)
{
    if (gw->reload) {
        struct reload_job *job = gw->reload;
        size_t i;

        pthread_join(job->thread, NULL);
        for (i = 0; i < job->nwaiters; i++)
            answer(&job->waiters[i], 503, NULL, "service_unavailable",
                   "shutting_down", "the gateway is shutting down");
        for (i = 0; i < gw->nreload_next; i++)
            answer(&gw->reload_next[i], 503, NULL, "service_unavailable",
                   "shutting_down", "the gateway is shutting down");
        gw->nreload_next = 0;
        reload_job_free(job);
        gw->reload = NULL;
    }
    workers_free(gw);
    if (gw->tick)
        event_free(gw->tick);
    session_free(gw->sess);
    cache_free(gw->cache);
    gw->cache = NULL;
    alerts_free(gw->alerts);
    health_free(gw->health);            /* before upstream_free: cancels probes */
    if (gw->rebalance)
        event_free(gw->rebalance);
    upstream_free(gw->up);
    snapshot_unref(gw->snap);
    tls_current_set(NULL);
    cfg_errors_free(&gw->reload_errs);
    observe_free(gw->obs);
    if (gw->threaded)
        lock_drop();
}
