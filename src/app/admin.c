/*
 * admin.c -- status pages, model list, metrics, reload (see admin.h).
 *
 * Pages are built with jansson from the current snapshot and the runtime
 * state. Keys appear only as fingerprint and description.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/buffer.h>
#include <jansson.h>

#include "admin.h"
#include "alerts.h"
#include "cache.h"
#include "clients.h"
#include "events.h"
#include "metrics.h"
#include "gw.h"
#include "health.h"
#include "http.h"
#include "keys.h"
#include "lock.h"
#include "observe.h"
#include "proxy.h"
#include "session.h"
#include "tls.h"
#include "upstream.h"
#include "worker.h"

static json_t *cache_status(const struct gateway *gw);

static json_t *listeners_json(struct gateway *gw);

static void reply_json(struct http_req *req, int status, json_t *o)
{
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;

    if (s == NULL) {
        http_reply_error(req, 500, "server_error", "out_of_memory", "out of memory");
        json_decref(o);
        return;
    }
    http_reply(req, status, "application/json", s, strlen(s));
    free(s);
    json_decref(o);
}

static json_t *strlist(const struct cfg_strlist *l)
{
    json_t *a = json_array();
    size_t i;

    for (i = 0; i < l->n; i++)
        json_array_append_new(a, json_string(l->v[i]));
    return a;
}

static void iso_time(int64_t unix_s, char *buf, size_t len)
{
    time_t t = (time_t)unix_s;
    struct tm tm;

    gmtime_r(&t, &tm);
    strftime(buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* A host is usable when health checks have not marked it down and its
 * breaker is not open. */
static int host_usable(const struct snapshot *s, size_t i)
{
    const struct host_state *hs = s->hs[i];

    return hs->live.usable && hs->health != HEALTH_UNHEALTHY
           && breaker_state(&hs->br, gw_now_ms()) != BREAKER_OPEN;
}

static const char *host_health(const struct snapshot *s, size_t i)
{
    return health_name(health_effective(s->hs[i]));
}

static size_t usable_hosts(const struct snapshot *s)
{
    size_t i, n = 0;

    for (i = 0; i < s->cfg->nhosts; i++)
        n += host_usable(s, i);
    return n;
}

/* Seed 001's /health "loadBalancer" block, for clients of that router. */
static json_t *load_balancer_json(struct gateway *gw, size_t usable)
{
    const struct snapshot *s = gw->snap;
    struct session_metrics sm;
    json_t *providers = json_array();
    int64_t conns = 0;
    size_t i;

    for (i = 0; i < s->cfg->nhosts; i++) {
        const struct cfg_host *h = &s->cfg->hosts[i];
        const struct host_state *hs = s->hs[i];
        const char *model = h->models.n ? h->models.v[0]
                          : hs->models_found.n ? hs->models_found.v[0] : NULL;
        conns += hs->live.in_flight;
        json_array_append_new(providers, json_pack("{s:s, s:s, s:s?, s:b, s:i, s:I}",
            "address", h->address ? h->address : h->name, "endpoint", h->url,
            "model", model, "isHealthy", host_usable(s, i),
            "connections", hs->live.in_flight,
            "lastHealthCheck", (json_int_t)hs->last_check_unix_ms));
    }
    session_metrics_read(gw->sess, &sm);
    return json_pack("{s:i, s:i, s:I, s:I, s:o}",
                     "totalProviders", (int)s->cfg->nhosts, "healthyProviders", (int)usable,
                     "totalConnections", (json_int_t)conns,
                     "activeSessions", (json_int_t)sm.entries, "providers", providers);
}

/* Seed 000's /status "instances": the replicas Redis shows, or this one. */
static json_t *instances_json(struct gateway *gw, const json_t *reps, size_t usable)
{
    json_t *out = json_array(), *r;
    int64_t now = gw_unix_ms(), last = 0;
    const char *listen = gw->listen_override ? gw->listen_override
                                             : gw->snap->cfg->server.listen;
    const char *colon;
    size_t i;

    json_array_foreach(reps, i, r) {
        const char *addr = json_string_value(json_object_get(r, "address"));
        int64_t hb = json_integer_value(json_object_get(r, "heartbeat_unix_ms"));
        int64_t st = json_integer_value(json_object_get(r, "started_unix_ms"));
        colon = addr ? strrchr(addr, ':') : NULL;
        json_array_append_new(out, json_pack("{s:O?, s:b, s:i, s:I, s:i, s:I}",
            "id", json_object_get(r, "id"), "healthy", now - hb < 10000,
            "port", colon ? atoi(colon + 1) : 0, "uptime", (json_int_t)(now - st),
            "restartCount", 0, "lastHealthCheck", (json_int_t)hb));
    }
    if (json_array_size(out) > 0)
        return out;
    for (i = 0; i < gw->snap->cfg->nhosts; i++)
        if (gw->snap->hs[i]->last_check_unix_ms > last)
            last = gw->snap->hs[i]->last_check_unix_ms;
    colon = strrchr(listen, ':');
    json_array_append_new(out, json_pack("{s:s, s:b, s:i, s:I, s:i, s:I}",
        "id", session_replica_id(gw->sess), "healthy", usable > 0,
        "port", colon ? atoi(colon + 1) : 0,
        "uptime", (json_int_t)(gw_now_ms() - gw->started_ms),
        "restartCount", 0, "lastHealthCheck", (json_int_t)(last ? last : now)));
    return out;
}

void admin_health(struct gateway *gw, struct http_req *req)
{
    const struct snapshot *s = gw->snap;
    size_t usable = usable_hosts(s);
    /* In panic mode the gateway still serves: a balancer in front must
     * not take it out for that. */
    int panic = balance_panic_list(s->bal, NULL, NULL) > 0;
    json_t *o = json_pack("{s:s, s:{s:i, s:i}, s:I, s:I, s:b}",
                          "status", usable ? "healthy" : panic ? "panic" : "unhealthy",
                          "hosts", "total", (int)s->cfg->nhosts,
                          "usable", (int)usable,
                          "generation", (json_int_t)s->generation,
                          "in_flight", (json_int_t)gw->active,
                          "panic", panic);

    if (o)
        json_object_set_new(o, "loadBalancer", load_balancer_json(gw, usable));
    reply_json(req, usable || panic ? 200 : 503, o);
}

/* ISO 8601 UTC of a wall-clock time in ms, or JSON null for 0. */
static json_t *iso_or_null(int64_t unix_ms)
{
    char buf[32];

    if (unix_ms <= 0)
        return json_null();
    iso_time(unix_ms / 1000, buf, sizeof(buf));
    return json_string(buf);
}

/* A string, or null when empty or not valid UTF-8 (an upstream's error
 * text must not cost the whole page). */
static json_t *text_or_null(const char *t)
{
    json_t *v = t && *t ? json_string(t) : NULL;

    return v ? v : json_null();
}

/* One reason a host is out, and until when (monotonic `until`, 0 =
 * until probes say otherwise). */
static void out_add(json_t *a, const char *reason, int64_t until, int64_t now)
{
    int64_t unix_ms = until ? gw_unix_ms() + until - now : 0;
    json_t *o = json_pack("{s:s, s:o}", "reason", reason, "until", iso_or_null(unix_ms));

    if (o && until)
        json_object_set_new(o, "until_ms", json_integer((json_int_t)unix_ms));
    json_array_append_new(a, o);
}

/* Why a host gets no traffic: probes, a passive ejection, its breaker
 * (or another replica's); [] when none holds it out. */
static json_t *out_json(const struct host_state *hs, int64_t now)
{
    json_t *a = json_array();

    if (a == NULL)
        return NULL;
    if (hs->health == HEALTH_UNHEALTHY)
        out_add(a, "probe", 0, now);
    if (hs->ejected_until_ms)
        out_add(a, "passive", hs->ejected_until_ms, now);
    if (breaker_state(&hs->br, now) == BREAKER_OPEN)
        out_add(a, "breaker", breaker_open_until(&hs->br), now);
    else if (hs->shared_open_until_ms > now)
        out_add(a, "breaker", hs->shared_open_until_ms, now);
    return a;
}

static json_t *host_json(const struct snapshot *s, size_t i)
{
    const struct cfg_host *h = &s->cfg->hosts[i];
    const struct host_state *hs = s->hs[i];
    json_t *labels = json_object(), *mbr = json_object(), *o;
    int64_t now = gw_now_ms();
    size_t j;

    for (j = 0; j < h->nlabels; j++)
        json_object_set_new(labels, h->labels[j].name,
                            json_string(h->labels[j].value));
    for (j = 0; j < hs->nmbr; j++)       /* per host+model breakers */
        json_object_set_new(mbr, hs->mbr[j]->model,
                            json_string(breaker_state_name(breaker_state(&hs->mbr[j]->br, now))));
    o = json_pack("{s:s, s:s, s:s?, s:s?, s:i, s:i, s:i, s:s?, s:o, s:o, s:o,"
                     " s:s, s:s, s:o, s:i, s:f, s:I, s:I, s:I, s:o, s:o, s:{s:I, s:I, s:I}}",
                     "name", h->name, "url", h->url,
                     "region", h->region, "address", h->address,
                     "priority", h->priority, "weight", h->weight,
                     "max_concurrent", h->max_concurrent, "keys", h->keys,
                     "models", strlist(&h->models),
                     "containers", strlist(&h->containers),
                     "labels", labels,
                     "health", host_health(s, i),
                     "breaker", breaker_state_name(breaker_state(&hs->br, now)),
                     "model_breakers", mbr,
                     "in_flight", hs->live.in_flight, "latency_ms", hs->live.ewma_ms,
                     "requests", (json_int_t)hs->requests,
                     "failures", (json_int_t)hs->failures,
                     "consecutive_failures", (json_int_t)hs->consecutive_failures,
                     "last_check", iso_or_null(hs->last_check_unix_ms),
                     "last_error", text_or_null(hs->last_error),
                     "tokens", "input", (json_int_t)hs->tokens[0],
                     "output", (json_int_t)hs->tokens[1],
                     "cached", (json_int_t)hs->tokens[2]);
    if (o) {
        json_object_set_new(o, "out", out_json(hs, now));
        json_object_set_new(o, "ejections", json_integer(hs->ejections));
        json_object_set_new(o, "ejections_total", json_integer((json_int_t)hs->ejections_total));
        json_object_set_new(o, "apis", strlist(&h->apis));     /* [] = every API */
        json_object_set_new(o, "auth", json_string(h->auth == HOST_AUTH_X_API_KEY
                                                   ? "x-api-key" : "bearer"));
    }
    return o;
}

/* Requests answered so far by route label (endpoint family), non-zero only. */
static json_t *routes_json(void)
{
    uint64_t n[METRICS_ROUTES];
    json_t *o = json_object();
    int r;

    metrics_route_requests(n);
    for (r = 0; r < METRICS_ROUTES; r++)
        if (n[r])
            json_object_set_new(o, metrics_route_name((enum metrics_route)r),
                                json_integer((json_int_t)n[r]));
    return o;
}

static json_t *key_json(const struct snapshot *s, size_t i, int64_t now)
{
    const struct cfg_key *k = &s->cfg->keys[i];
    const struct key_state *ks = s->ks[i];
    const char *state = keys_state_name(ks, k->active, now);
    int cooling = strcmp(state, "cooling") == 0;
    int64_t until = cooling ? gw_unix_ms() + ks->cooldown_until_ms - now : 0;
    json_t *o = json_pack("{s:s, s:s, s:s, s:o, s:s?, s:i, s:I}",
                          "fingerprint", k->fingerprint,
                          "description", k->description, "state", state,
                          "until", iso_or_null(until),
                          "pool", k->pool, "weight", k->weight,
                          "uses", (json_int_t)ks->uses);

    if (o && cooling) {
        json_object_set_new(o, "until_ms", json_integer(until));
        json_object_set_new(o, "cooldown_left_ms",
                            json_integer(ks->cooldown_until_ms - now));
    }
    if (o && ks->disabled)
        json_object_set_new(o, "reason", json_sprintf("upstream answered %d",
                                                      ks->last_status));
    return o;
}

/* Client connections over all workers. */
static json_t *connections_json(const struct gateway *gw)
{
    json_int_t open = 0, max = 0, refused = 0;
    int i;

    for (i = 0; i < gw->nworkers; i++) {
        const struct http_server *h = gw->workers[i].http;
        if (h == NULL)
            continue;
        open += (json_int_t)http_server_connections(h);
        max += (json_int_t)http_server_max_connections(h);
        refused += (json_int_t)http_server_refused(h);
    }
    return json_pack("{s:I, s:I, s:I}", "open", open, "max", max, "refused", refused);
}

/* One entry per worker (server.workers): what each has served. */
static json_t *workers_json(const struct gateway *gw)
{
    json_t *a = json_array();
    int i;

    for (i = 0; a && i < gw->nworkers; i++) {
        const struct worker *w = &gw->workers[i];
        if (w->http == NULL)
            continue;
        json_array_append_new(a, json_pack("{s:i, s:I, s:I, s:b}", "id", w->id,
            "requests", (json_int_t)__atomic_load_n(&w->served, __ATOMIC_RELAXED),
            "connections", (json_int_t)http_server_connections(w->http),
            "thread", w->threaded));
    }
    return a;
}

struct panic_ctx {
    const struct snapshot *s;
    json_t                *tiers;
};

static void panic_tier(void *ctx, const struct balance_tier *t)
{
    struct panic_ctx *pc = ctx;
    json_t *hosts = json_array();
    size_t k;

    for (k = 0; hosts && k < t->n; k++)
        json_array_append_new(hosts, json_string(pc->s->cfg->hosts[t->node[k]].name));
    json_array_append_new(pc->tiers, json_pack("{s:i, s:o, s:I, s:I}",
        "priority", t->priority, "hosts", hosts ? hosts : json_null(),
        "usable", (json_int_t)t->usable, "total", (json_int_t)t->n));
}

/* Panic mode: the tiers balanced over all their hosts as if healthy. */
static json_t *panic_json(const struct snapshot *s)
{
    struct panic_ctx pc = { s, json_array() };

    if (pc.tiers)
        balance_panic_list(s->bal, panic_tier, &pc);
    return json_pack("{s:b, s:f, s:o}", "active", json_array_size(pc.tiers) > 0,
                     "threshold", s->cfg->health.panic_threshold,
                     "tiers", pc.tiers ? pc.tiers : json_array());
}

void admin_status(struct gateway *gw, struct http_req *req)
{
    const struct snapshot *s = gw->snap;
    json_t *hosts = json_array(), *keys = json_array(), *errs = json_array(), *o;
    int64_t now = gw_now_ms();
    size_t i, usable = usable_hosts(s);
    char when[32];

    for (i = 0; i < s->cfg->nhosts; i++)
        json_array_append_new(hosts, host_json(s, i));
    for (i = 0; i < s->cfg->nkeys; i++)
        json_array_append_new(keys, key_json(s, i, now));
    for (i = 0; i < gw->reload_errs.n; i++)
        json_array_append_new(errs, json_string(gw->reload_errs.msg[i]));
    iso_time(gw->reload_unix, when, sizeof(when));
    o = json_pack("{s:s, s:I, s:I, s:s, s:{s:s, s:b, s:o, s:I, s:I}, s:s,"
                  " s:{s:i, s:i}, s:I, s:I, s:o, s:o, s:[]}",
                  "status", usable == s->cfg->nhosts && usable ? "healthy"
                            : usable ? "degraded" : "unhealthy",
                  "generation", (json_int_t)s->generation,
                  "uptime_seconds", (json_int_t)((now - gw->started_ms) / 1000),
                  "version", "0.1.0",
                  "last_reload", "time", when, "ok", gw->reload_ok,
                  "errors", errs, "reloads_ok", (json_int_t)gw->reloads_ok,
                  "reloads_failed", (json_int_t)gw->reloads_failed,
                  "strategy", config_strategy_name(s->cfg->routing.strategy),
                  "counts", "hosts", (int)s->cfg->nhosts, "usable", (int)usable,
                  "in_flight", (json_int_t)gw->active,
                  "requests_total", (json_int_t)gw->requests_total,
                  "hosts", hosts, "keys", keys, "replicas");
    if (o) {
        json_t *sess = session_status_json(gw->sess);
        json_t *reps = json_object_get(sess, "replicas");
        json_t *inst;
        size_t j, healthy = 0;
        if (reps)
            json_object_set(o, "replicas", reps);
        inst = instances_json(gw, reps, usable);
        for (j = 0; j < json_array_size(inst); j++)
            healthy += json_is_true(json_object_get(json_array_get(inst, j), "healthy"));
        json_object_set_new(o, "activeInstances", json_integer((json_int_t)healthy));
        json_object_set_new(o, "totalInstances",
                            json_integer((json_int_t)json_array_size(inst)));
        json_object_set_new(o, "instances", inst);
        json_object_set_new(o, "sessions", sess);
        json_object_set_new(o, "cache", cache_status(gw));
        json_object_set_new(o, "clients", clients_json(s->cfg, gw_unix_ms()));
        json_object_set_new(o, "alerts", alerts_status_json(gw->alerts));
        json_object_set_new(o, "connections", connections_json(gw));
        json_object_set_new(o, "workers", workers_json(gw));
        json_object_set_new(o, "listeners", listeners_json(gw));
        json_object_set_new(o, "reloads", observe_reloads_json(gw->obs));
        {
            struct events_stats es;
            events_stats(&es);
            json_object_set_new(o, "events", json_pack("{s:I, s:I, s:I}",
                "emitted", (json_int_t)es.emitted, "watchers", (json_int_t)es.watchers,
                "dropped", (json_int_t)es.dropped));
        }
        json_object_set_new(o, "routes", routes_json());
        json_object_set_new(o, "time_ms", json_integer(gw_unix_ms()));
        json_object_set_new(o, "panic", panic_json(s));
        if (gw->threaded) {
            uint64_t waits, ns;
            lock_contention(&waits, &ns);
            json_object_set_new(o, "state_lock", json_pack("{s:I, s:f}",
                "waits", (json_int_t)waits, "wait_ms", (double)ns / 1e6));
        }
    }
    reply_json(req, 200, o);
}

static void mark_panic(void *ctx, const struct balance_tier *t)
{
    char *in_panic = ctx;
    size_t k;

    for (k = 0; k < t->n; k++)
        in_panic[t->node[k]] = 1;
}

void admin_models(struct gateway *gw, struct http_req *req)
{
    const struct config *c = gw->snap->cfg;
    json_t *seen = json_object(), *data = json_array(), *o;
    char *in_panic = calloc(c->nhosts ? c->nhosts : 1, 1);
    const char *name;
    json_t *v;
    size_t i, j;
    int listed = 0;

    /* The union over usable hosts (and hosts that panic mode serves) of
     * configured and discovered models. */
    if (in_panic)
        balance_panic_list(gw->snap->bal, mark_panic, in_panic);
    for (i = 0; i < c->nhosts; i++) {
        const struct host_state *hs = gw->snap->hs[i];
        listed |= c->hosts[i].models.n > 0 || hs->models_found.n > 0;
        if (!host_usable(gw->snap, i)
            && !(in_panic && in_panic[i]
                 && breaker_state(&hs->br, gw_now_ms()) != BREAKER_OPEN))
            continue;
        for (j = 0; j < c->hosts[i].models.n; j++)
            json_object_set_new(seen, c->hosts[i].models.v[j], json_true());
        for (j = 0; j < hs->models_found.n; j++)
            json_object_set_new(seen, hs->models_found.v[j], json_true());
    }
    free(in_panic);
    if (!listed && c->nhosts > 0) {
        /* No host lists its models: ask one. */
        json_decref(seen);
        json_decref(data);
        proxy_handle_get(gw, req, "/v1/models");
        return;
    }
    for (i = 0; i < c->nmodels; i++)
        json_object_set_new(seen, c->models[i].name, json_true());
    json_object_foreach(seen, name, v)
        json_array_append_new(data, json_pack("{s:s, s:s, s:i, s:s}", "id", name,
                                              "object", "model", "created", 0,
                                              "owned_by", "infergate"));
    json_decref(seen);
    o = json_pack("{s:s, s:o}", "object", "list", "data", data);
    reply_json(req, 200, o);
}

static void tls_export_metrics(struct gateway *gw)
{
    const struct tls_cert_info *ci = tls_ctx_cert(gw->snap->cfg->server.tls_ctx);
    struct cfg_listener ls[CFG_MAX_LISTENERS];
    size_t n = gw->listeners(gw, gw->snap->cfg, ls), i, k = 0;
    const char *names[TLS_FAILS];
    uint64_t counts[TLS_FAILS];

    if (ci == NULL)
        return;
    for (i = 0; i < n; i++)
        if (ls[i].tls)
            metrics_set_tls_cert(k++, ls[i].address, ci->not_after);
    for (i = 0; i < TLS_FAILS; i++) {
        names[i] = tls_fail_name((enum tls_fail)i);
        counts[i] = tls_fail_total((enum tls_fail)i);
    }
    metrics_set_tls_failures(TLS_FAILS, names, counts);
}

/* /status "listeners": each address, whether it serves TLS, and the
 * certificate it serves (never anything of the key). */
static json_t *listeners_json(struct gateway *gw)
{
    const struct config *cfg = gw->snap->cfg;
    const struct tls_cert_info *ci = tls_ctx_cert(cfg->server.tls_ctx);
    struct cfg_listener ls[CFG_MAX_LISTENERS];
    size_t n = gw->listeners(gw, cfg, ls), i;
    json_t *out = json_array();
    int64_t now = gw_unix_ms() / 1000;

    for (i = 0; i < n; i++) {
        json_t *o = json_pack("{s:s, s:b}", "address", ls[i].address, "tls", ls[i].tls);
        if (o && ls[i].tls && ci) {
            char nb[32], na[32];
            tls_time_str(ci->not_before, nb, sizeof(nb));
            tls_time_str(ci->not_after, na, sizeof(na));
            json_object_set_new(o, "certificate", json_pack(
                "{s:s, s:s, s:s, s:s, s:s, s:s, s:I, s:b}",
                "file", cfg->server.tls.cert, "subject", ci->subject, "issuer", ci->issuer,
                "serial", ci->serial, "not_before", nb, "not_after", na,
                "expires_in_days", (json_int_t)((ci->not_after - now) / 86400),
                "client_certificates", cfg->server.tls.client_ca != NULL));
        }
        json_array_append_new(out, o);
    }
    return out;
}

/* The response cache in /status: settings and counters (cache.h). */
static json_t *cache_status(const struct gateway *gw)
{
    const struct config *c = gw->snap->cfg;
    struct cache_stats st;

    if (gw->cache == NULL)
        return json_pack("{s:b}", "enabled", 0);
    cache_stats(gw->cache, &st);
    return json_pack("{s:b, s:s, s:I, s:I, s:I, s:b, s:b, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}",
                     "enabled", 1,
                     "store", c->cache.store == STORE_REDIS ? "redis" : "memory", "ttl_ms", (json_int_t)c->cache.ttl_ms,
                     "max_bytes", (json_int_t)c->cache.max_bytes,
                     "max_entry_bytes", (json_int_t)c->cache.max_entry_bytes,
                     "only_deterministic", c->cache.only_deterministic,
                     "per_client", c->cache.per_client,
                     "entries", (json_int_t)st.entries, "bytes", (json_int_t)st.bytes,
                     "hits", (json_int_t)st.requests[CACHE_HIT],
                     "misses", (json_int_t)st.requests[CACHE_MISS],
                     "bypasses", (json_int_t)st.requests[CACHE_BYPASS],
                     "stores", (json_int_t)st.stores, "evictions", (json_int_t)st.evictions,
                     "expirations", (json_int_t)st.expirations);
}

/* The response cache's families, after metrics_render()'s (Prometheus text). */
static int cache_metrics(const struct gateway *gw, struct evbuffer *b)
{
    struct cache_stats st;
    int r, rc = 0;

    memset(&st, 0, sizeof(st));
    if (gw->cache)
        cache_stats(gw->cache, &st);
    rc |= evbuffer_add_printf(b, "# HELP infergate_cache_requests_total Requests the response"
                              " cache answered (hit), missed or bypassed.\n"
                              "# TYPE infergate_cache_requests_total counter\n") < 0;
    for (r = 0; r < CACHE_RESULTS; r++)
        rc |= evbuffer_add_printf(b, "infergate_cache_requests_total{result=\"%s\"} %llu\n",
                                  cache_result_name((enum cache_result)r),
                                  (unsigned long long)st.requests[r]) < 0;
    rc |= evbuffer_add_printf(b, "# HELP infergate_cache_bytes Bytes the response cache holds.\n"
                              "# TYPE infergate_cache_bytes gauge\n"
                              "infergate_cache_bytes %zu\n"
                              "# HELP infergate_cache_entries Answers the response cache holds.\n"
                              "# TYPE infergate_cache_entries gauge\n"
                              "infergate_cache_entries %zu\n", st.bytes, st.entries) < 0;
    return rc ? -1 : 0;
}

void admin_metrics(struct gateway *gw, struct http_req *req)
{
    const struct snapshot *s = gw->snap;
    struct evbuffer *b = evbuffer_new();
    struct session_metrics sm;
    struct alerts_counters ac;
    uint64_t nkey[3] = { 0, 0, 0 };
    int64_t now = gw_now_ms();
    size_t i;

    if (b == NULL) {
        http_reply_error(req, 500, "server_error", "out_of_memory", "out of memory");
        return;
    }
    /* Gauges mirror other modules' state: set them just before rendering. */
    for (i = 0; i < s->cfg->nhosts; i++) {
        const struct host_state *hs = s->hs[i];
        int health = !host_usable(s, i) ? HEALTH_UNHEALTHY
                     : strcmp(host_health(s, i), "degraded") == 0 ? HEALTH_DEGRADED
                     : HEALTH_HEALTHY;
        metrics_host_set_state(s->mh[i], breaker_state(&hs->br, now), health,
                               (uint64_t)hs->live.in_flight);
    }
    for (i = 0; i < s->cfg->nkeys; i++) {
        const char *st = keys_state_name(s->ks[i], s->cfg->keys[i].active, now);
        nkey[st[0] == 'a' ? 0 : st[0] == 'c' ? 1 : 2]++;
    }
    metrics_set_keys(nkey[0], nkey[1], nkey[2]);
    metrics_set_in_flight(gw->active);
    metrics_set_panic_tiers(balance_panic_list(s->bal, NULL, NULL));
    metrics_set_generation(s->generation);
    session_metrics_read(gw->sess, &sm);
    metrics_set_redis(sm.redis_configured, sm.redis_up);
    metrics_set_redis_failovers(sm.redis_sentinel, sm.redis_failovers);
    if (gw->alerts) {
        alerts_get_counters(gw->alerts, &ac);
        alerts_export_metrics(&ac);
    }
    tls_export_metrics(gw);
    if (metrics_render(b) < 0 || cache_metrics(gw, b) < 0 || clients_metrics(s->cfg, b) < 0) {
        evbuffer_free(b);
        http_reply_error(req, 500, "server_error", "out_of_memory", "out of memory");
        return;
    }
    http_reply(req, 200, METRICS_CONTENT_TYPE,
               (const char *)evbuffer_pullup(b, -1), evbuffer_get_length(b));
    evbuffer_free(b);
}

void admin_reload(struct gateway *gw, struct http_req *req)
{
    gw->do_reload(gw, req);          /* answers when the reload is done */
}

/* GET /admin/clients: each client's counters and budgets, never its key. */
void admin_clients(struct gateway *gw, struct http_req *req)
{
    json_t *o = json_pack("{s:o}", "clients", clients_json(gw->snap->cfg, gw_unix_ms()));

    reply_json(req, 200, o);
}

void admin_timeseries(struct gateway *gw, struct http_req *req)
{
    const char *q = http_req_query(req), *v;
    long long since = 0;
    char *body;
    json_t *o;

    if (q && (v = strstr(q, "since=")) != NULL && (v == q || v[-1] == '&'))
        since = strtoll(v + 6, NULL, 10);
    o = observe_timeseries_json(gw->obs, (int64_t)since);
    body = o ? json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(6)) : NULL;
    json_decref(o);
    if (body == NULL) {
        http_reply_error(req, 500, "server_error", "out_of_memory", "out of memory");
        return;
    }
    http_reply(req, 200, "application/json", body, strlen(body));
    free(body);
}

/* dashboard_page.c, made from web/dashboard.html by scripts/embed-page.sh */
extern const char dashboard_page[];
extern const size_t dashboard_page_len;

void admin_dashboard(struct gateway *gw, struct http_req *req)
{
    (void)gw;
    /* Nothing but the gateway itself: no script, style, image or
     * connection from anywhere else, and no framing. */
    http_resp_header(req, "Content-Security-Policy",
                     "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline';"
                     " img-src data:; connect-src 'self'; base-uri 'none'; form-action 'none';"
                     " frame-ancestors 'none'");
    http_resp_header(req, "Cache-Control", "no-store");
    http_resp_header(req, "X-Content-Type-Options", "nosniff");
    http_resp_header(req, "Referrer-Policy", "no-referrer");
    http_reply(req, 200, "text/html; charset=utf-8", dashboard_page, dashboard_page_len);
}
