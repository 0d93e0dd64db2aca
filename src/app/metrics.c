/*
 * metrics.c -- the Prometheus registry and its text rendering (see
 * metrics.h).
 *
 * Everything a request touches is preallocated: global counters and
 * per-route histograms are static, per-host series hang off refcounted
 * `struct metrics_host` entries made at snapshot build, model names are
 * copied into a static table the first time they are seen, and the
 * route x code x host x model counters are a static open-addressing table
 * (linear probing; entries of a freed host are removed by backward-shift
 * deletion, so no tombstones). Rendering walks it all family by family,
 * one HELP and one TYPE line each, label values escaped.
 */
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "hash.h"
#include "lock.h"
#include "metrics.h"
#include "route.h"
#include "utf8.h"

/* --- buckets --------------------------------------------------------- */

/* Request and upstream latencies, seconds: 5 ms .. 5 min (LLM calls). */
static const double latency_bounds[] = {
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300
};
/* The gateway's own overhead, seconds: 10 us .. 1 s. */
static const double overhead_bounds[] = {
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025,
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1
};

#define NELEM(a)            (sizeof(a) / sizeof((a)[0]))
#define HIST_MAX_BUCKETS    16
#define MS_PER_SECOND       1000.0

_Static_assert(NELEM(latency_bounds) <= HIST_MAX_BUCKETS, "latency buckets");
_Static_assert(NELEM(latency_bounds) < METRICS_LAT_BUCKETS, "metrics_totals buckets");
_Static_assert(NELEM(overhead_bounds) <= HIST_MAX_BUCKETS, "overhead buckets");

struct hist {
    uint64_t bucket[HIST_MAX_BUCKETS];  /* per bucket, not cumulative */
    uint64_t count;                     /* includes values above the last bound */
    double   sum;                       /* seconds */
};

/* --- registry -------------------------------------------------------- */

struct metrics_host {
    char                *name;
    int                  refs;
    struct metrics_host *next, *prev;   /* registry list, creation order */
    struct metrics_host *hnext;         /* hosts_idx chain */
    uint64_t             attempts[METRICS_OUTCOMES];
    uint64_t             chunks;
    uint64_t             stalls[2];     /* stream_idle_timeout, response_timeout */
    struct hist          ttfb;          /* latency_bounds */
    struct hist          duration;      /* latency_bounds */
    int                  breaker;       /* METRICS_BREAKER_* */
    int                  health;        /* 0 healthy, 1 degraded, 2 unhealthy */
    uint64_t             in_flight;
    struct tok_series   *tok;           /* METRICS_HOST_TOKEN_MODELS + 1, on first use */
};

/* Tokens of one model on one host; the last slot of a host is "other". */
struct tok_series {
    uint16_t model;                     /* model id */
    uint16_t used;
    uint64_t n[METRICS_TOKEN_KINDS];
};

/* Model ids: 0 = "none", 1 = "other", MODEL_FIRST + i = models[i]. */
#define MODEL_NONE          0
#define MODEL_OTHER         1
#define MODEL_FIRST         2
#define MODEL_HASH_SLOTS    512         /* power of two, > 2 x METRICS_MAX_MODELS */

struct model_slot {
    char name[METRICS_MODEL_NAME_MAX];
};

/* One route x code x host x model counter. */
struct req_series {
    struct metrics_host *host;          /* NULL = "none" */
    uint64_t             n;
    uint16_t             model;         /* model id */
    uint16_t             code;
    uint8_t              route;
    uint8_t              used;
};

#define REQ_MASK            (METRICS_REQ_SERIES - 1)
#define REQ_MAX_FILL        (METRICS_REQ_SERIES / 4 * 3)
#define HTTP_CODE_MIN       100
#define HTTP_CODE_MAX       599

enum reload_result { RELOAD_OK = 0, RELOAD_FAILED, RELOAD_RESULTS };
enum key_state_label { KEYS_ACTIVE = 0, KEYS_COOLING, KEYS_DISABLED, KEY_STATES };

static struct {
    struct metrics_host *hosts;
    struct model_slot    models[METRICS_MAX_MODELS];
    size_t               nmodels;
    uint16_t             model_hash[MODEL_HASH_SLOTS];  /* model id, 0 = empty */
    uint16_t             last_model;    /* model_id()'s last answer, 0: none */
    struct req_series    req[METRICS_REQ_SERIES];
    size_t               nreq;
    uint64_t             req_overflow;
    struct hist          route_ttfb[METRICS_ROUTES];
    struct hist          route_duration[METRICS_ROUTES];
    struct hist          overhead;
    uint64_t             retries;
    uint64_t             budget_exhausted;
    uint64_t             panic_tiers;
    uint64_t             panic_picks;
    uint64_t             reloads[RELOAD_RESULTS];
    int                  last_reload_failed;
    uint64_t             generation;
    int64_t              start_unix_ms;
    uint64_t             in_flight;
    uint64_t             keys[KEY_STATES];
    int                  redis_configured;
    int                  redis_up;
    int                  redis_sentinel;
    uint64_t             redis_failovers;
    uint64_t             alerts_firing[METRICS_ALERTS];
    uint64_t             notify_sent[METRICS_CHANNELS];
    uint64_t             notify_failed[METRICS_CHANNELS];
    size_t               tls_ncert;
    char                 tls_listener[METRICS_TLS_MAX][64];
    int64_t              tls_not_after[METRICS_TLS_MAX];
    size_t               tls_nfail;
    const char          *tls_reason[METRICS_TLS_MAX_REASONS];
    uint64_t             tls_fails[METRICS_TLS_MAX_REASONS];
} reg;

static const char *route_names[METRICS_ROUTES] = {
    "chat_completions", "completions", "embeddings", "models", "verify", "ip",
    "health", "status", "metrics", "admin", "responses", "messages", "audio",
    "images", "moderations", "rerank", "passthrough", "other"
};
static const char *token_kind_names[METRICS_TOKEN_KINDS] = { "input", "output", "cached" };
static const char *outcome_names[METRICS_OUTCOMES] = {
    "success", "rate_limited", "client_error", "server_error",
    "connect_error", "timeout", "protocol_error", "cancelled"
};
static const char *reload_names[RELOAD_RESULTS] = { "ok", "failed" };
static const char *key_state_names[KEY_STATES] = { "active", "cooling", "disabled" };
static const char *alert_names[METRICS_ALERTS] = {
    "availability", "error_rate", "latency_p99"
};
static const char *channel_names[METRICS_CHANNELS] = {
    "webhook", "slack", "command", "email"
};

const char *metrics_route_name(enum metrics_route r)
{
    return (unsigned)r < METRICS_ROUTES ? route_names[r] : "other";
}

const char *metrics_outcome_name(enum metrics_outcome o)
{
    return (unsigned)o < METRICS_OUTCOMES ? outcome_names[o] : "unknown";
}

enum metrics_route metrics_route_of(const char *path)
{
    static const struct { const char *path; enum metrics_route r; } exact[] = {
        {"/v1/chat/completions", METRICS_ROUTE_CHAT},
        {"/v1/completions", METRICS_ROUTE_COMPLETIONS},
        {"/v1/embeddings", METRICS_ROUTE_EMBEDDINGS},
        {"/v1/models", METRICS_ROUTE_MODELS},
        {"/v1/verify", METRICS_ROUTE_VERIFY},
        {"/api/v1/ip", METRICS_ROUTE_IP},
        {"/health", METRICS_ROUTE_HEALTH},
        {"/status", METRICS_ROUTE_STATUS},
        {"/v1/providers/status", METRICS_ROUTE_STATUS},
        {"/admin/providers", METRICS_ROUTE_STATUS},
        {"/metrics", METRICS_ROUTE_METRICS},
    };
    size_t i;

    if (path == NULL)
        return METRICS_ROUTE_OTHER;
    for (i = 0; i < NELEM(exact); i++)
        if (strcmp(path, exact[i].path) == 0)
            return exact[i].r;
    if (strncmp(path, "/admin/", strlen("/admin/")) == 0)
        return METRICS_ROUTE_ADMIN;
    return metrics_route_of_family(route_family_of_path(path), NULL);
}

enum metrics_route metrics_route_of_family(int family, const char *path)
{
    switch (family) {
    case API_CHAT:        return METRICS_ROUTE_CHAT;
    case API_COMPLETIONS: return METRICS_ROUTE_COMPLETIONS;
    case API_EMBEDDINGS:  return METRICS_ROUTE_EMBEDDINGS;
    case API_VERIFY:      return METRICS_ROUTE_VERIFY;
    case API_RESPONSES:   return METRICS_ROUTE_RESPONSES;
    case API_MESSAGES:    return METRICS_ROUTE_MESSAGES;
    case API_AUDIO:       return METRICS_ROUTE_AUDIO;
    case API_IMAGES:      return METRICS_ROUTE_IMAGES;
    case API_MODERATIONS: return METRICS_ROUTE_MODERATIONS;
    case API_RERANK:      return METRICS_ROUTE_RERANK;
    case API_PASSTHROUGH: return METRICS_ROUTE_PASSTHROUGH;
    default:              return path ? metrics_route_of(path) : METRICS_ROUTE_OTHER;
    }
}

/* --- histograms ------------------------------------------------------ */

static void hist_observe(struct hist *h, const double *bounds, size_t nb,
                         double ms)
{
    double s = ms / MS_PER_SECOND;
    size_t i;

    if (!isfinite(s) || s < 0)  /* negative, NaN or infinite: count as zero */
        s = 0;
    for (i = 0; i < nb; i++) {
        if (s <= bounds[i]) {
            h->bucket[i]++;
            break;
        }
    }
    h->count++;
    h->sum += s;
}

/* --- hosts ----------------------------------------------------------- */

static void req_remove_host(const struct metrics_host *h);

/* Hosts by name: snapshots of 10,000 hosts look every one up on the
 * loop at each reload. Outside `reg`, which metrics_reset() clears. */
static struct {
    struct metrics_host **b;
    size_t                size;     /* 0 or a power of two */
    size_t                count;
    struct metrics_host  *tail;     /* of reg.hosts */
} hosts_idx;

static int hosts_idx_grow(void)
{
    size_t nsize = hosts_idx.size ? hosts_idx.size * 2 : 64, i;
    struct metrics_host **nb = calloc(nsize, sizeof(*nb));

    if (nb == NULL)
        return -1;
    for (i = 0; i < hosts_idx.size; i++) {
        struct metrics_host *h = hosts_idx.b[i], *next;
        for (; h; h = next) {
            size_t k = hash_str(h->name) & (nsize - 1);
            next = h->hnext;
            h->hnext = nb[k];
            nb[k] = h;
        }
    }
    free(hosts_idx.b);
    hosts_idx.b = nb;
    hosts_idx.size = nsize;
    return 0;
}

struct metrics_host *metrics_host_get(const char *name)
{
    struct metrics_host *h;
    size_t k;

    lock_assert_held();
    if (hosts_idx.size) {
        for (h = hosts_idx.b[hash_str(name) & (hosts_idx.size - 1)]; h; h = h->hnext)
            if (strcmp(h->name, name) == 0) {
                h->refs++;
                return h;
            }
    }
    if (hosts_idx.count >= hosts_idx.size && hosts_idx_grow() < 0)
        return NULL;
    h = calloc(1, sizeof(*h));
    if (h == NULL)
        return NULL;
    h->name = strdup(name);
    if (h->name == NULL) {
        free(h);
        return NULL;
    }
    h->refs = 1;
    k = hash_str(name) & (hosts_idx.size - 1);
    h->hnext = hosts_idx.b[k];
    hosts_idx.b[k] = h;
    hosts_idx.count++;
    h->prev = hosts_idx.tail;
    if (hosts_idx.tail)
        hosts_idx.tail->next = h;
    else
        reg.hosts = h;
    hosts_idx.tail = h;
    return h;
}

void metrics_host_put(struct metrics_host *h)
{
    struct metrics_host **pp;

    lock_assert_held();
    if (h == NULL || --h->refs > 0)
        return;
    for (pp = &hosts_idx.b[hash_str(h->name) & (hosts_idx.size - 1)]; *pp;
         pp = &(*pp)->hnext)
        if (*pp == h) {
            *pp = h->hnext;
            break;
        }
    hosts_idx.count--;
    if (h->prev)
        h->prev->next = h->next;
    else
        reg.hosts = h->next;
    if (h->next)
        h->next->prev = h->prev;
    else
        hosts_idx.tail = h->prev;
    req_remove_host(h);
    free(h->tok);
    free(h->name);
    free(h);
    if (hosts_idx.count == 0) {
        free(hosts_idx.b);
        memset(&hosts_idx, 0, sizeof(hosts_idx));
    }
}

const char *metrics_host_name(const struct metrics_host *h)
{
    return h->name;
}

/* --- models ---------------------------------------------------------- */

static uint64_t hash_bytes(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ULL;   /* FNV-1a */
    size_t i;

    for (i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ULL;
    }
    return h;
}

/* 1 if s[0..n) is well-formed UTF-8 without NUL (RFC 3629). */
static int utf8_valid(const unsigned char *s, size_t n)
{
    size_t i = 0;

    while (i < n) {
        int len;

        if (s[i] == 0)
            return 0;
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        if ((len = utf8_seq_len(s + i, s + n)) == 0)
            return 0;
        i += (size_t)len;
    }
    return 1;
}

/* The model's id, interning it while there is room. The last model
 * looked up is tried first (a request's metrics ask twice, and traffic
 * mostly runs on few models): one strcmp instead of a hash and a probe. */
static uint16_t model_id(const char *model)
{
    size_t n, b;

    if (model == NULL)
        return MODEL_NONE;
    if (reg.last_model >= MODEL_FIRST
        && strcmp(reg.models[reg.last_model - MODEL_FIRST].name, model) == 0)
        return reg.last_model;
    n = strlen(model);
    if (n >= METRICS_MODEL_NAME_MAX)
        return MODEL_OTHER;
    for (b = hash_bytes(model, n) & (MODEL_HASH_SLOTS - 1);
         reg.model_hash[b] != 0; b = (b + 1) & (MODEL_HASH_SLOTS - 1)) {
        uint16_t id = reg.model_hash[b];
        if (strcmp(reg.models[id - MODEL_FIRST].name, model) == 0)
            return reg.last_model = id;
    }
    if (reg.nmodels == METRICS_MAX_MODELS
        || !utf8_valid((const unsigned char *)model, n))
        return MODEL_OTHER;
    memcpy(reg.models[reg.nmodels].name, model, n + 1);
    reg.model_hash[b] = (uint16_t)(MODEL_FIRST + reg.nmodels);
    reg.nmodels++;
    return reg.last_model = reg.model_hash[b];
}

static const char *model_name(uint16_t id)
{
    if (id == MODEL_NONE)
        return "none";
    if (id == MODEL_OTHER)
        return "other";
    return reg.models[id - MODEL_FIRST].name;
}

/* --- requests by route x code x host x model ------------------------- */

static size_t req_home(const struct metrics_host *h, uint16_t model,
                       uint16_t code, uint8_t route)
{
    uint64_t x = (uint64_t)(uintptr_t)h;

    x ^= ((uint64_t)model << 32) ^ ((uint64_t)code << 16) ^ route;
    x ^= x >> 33;                 /* murmur3's 64-bit finalizer */
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return (size_t)(x & REQ_MASK);
}

static void req_count(struct metrics_host *h, uint16_t model, uint16_t code,
                      uint8_t route)
{
    size_t i;

    for (i = req_home(h, model, code, route); reg.req[i].used;
         i = (i + 1) & REQ_MASK) {
        struct req_series *s = &reg.req[i];
        if (s->host == h && s->model == model && s->code == code
            && s->route == route) {
            s->n++;
            return;
        }
    }
    if (reg.nreq == REQ_MAX_FILL) {
        reg.req_overflow++;
        return;
    }
    reg.req[i] = (struct req_series){ h, 1, model, code, route, 1 };
    reg.nreq++;
}

/* Deletes slot i and shifts later members of its cluster back. */
static void req_delete(size_t i)
{
    size_t j = i;

    for (;;) {
        size_t k;

        j = (j + 1) & REQ_MASK;
        if (!reg.req[j].used)
            break;
        k = req_home(reg.req[j].host, reg.req[j].model, reg.req[j].code,
                     reg.req[j].route);
        /* Stays if its home lies cyclically in (i, j]. */
        if (i <= j ? (i < k && k <= j) : (i < k || k <= j))
            continue;
        reg.req[i] = reg.req[j];
        i = j;
    }
    memset(&reg.req[i], 0, sizeof(reg.req[i]));
    reg.nreq--;
}

static void req_remove_host(const struct metrics_host *h)
{
    size_t i = 0;

    while (i < METRICS_REQ_SERIES) {
        if (reg.req[i].used && reg.req[i].host == h)
            req_delete(i);      /* slot i may now hold another entry */
        else
            i++;
    }
}

void metrics_route_requests(uint64_t out[METRICS_ROUTES])
{
    size_t i;

    lock_assert_held();
    memset(out, 0, sizeof(uint64_t) * METRICS_ROUTES);
    for (i = 0; i < METRICS_REQ_SERIES; i++)
        if (reg.req[i].used && reg.req[i].route < METRICS_ROUTES)
            out[reg.req[i].route] += reg.req[i].n;
}

/* --- hot path -------------------------------------------------------- */

/* Adds r's tokens to its host's series of its model. A host keeps up to
 * METRICS_HOST_TOKEN_MODELS models; more are counted as "other". */
void metrics_tokens(struct metrics_host *h, const char *name, unsigned have,
                    const uint64_t n[METRICS_TOKEN_KINDS])
{
    struct tok_series *t;
    uint16_t model;
    size_t i;

    lock_assert_held();
    if (h == NULL || have == 0)
        return;
    model = model_id(name);
    if (h->tok == NULL
        && (h->tok = calloc(METRICS_HOST_TOKEN_MODELS + 1, sizeof(*h->tok))) == NULL)
        return;
    for (i = 0; i < METRICS_HOST_TOKEN_MODELS; i++)
        if (!h->tok[i].used || h->tok[i].model == model)
            break;
    t = &h->tok[i];
    t->model = i < METRICS_HOST_TOKEN_MODELS ? model : MODEL_OTHER;
    t->used = 1;
    for (i = 0; i < METRICS_TOKEN_KINDS; i++)
        if (have & (1u << i))
            t->n[i] += n[i];
}

void metrics_request(const struct metrics_req *r)
{
    unsigned route = (unsigned)r->route < METRICS_ROUTES ? (unsigned)r->route
                                                         : METRICS_ROUTE_OTHER;
    int code = r->status >= HTTP_CODE_MIN && r->status <= HTTP_CODE_MAX
               ? r->status : 0;
    double overhead = r->total_ms - r->upstream_ms;

    lock_assert_held();
    req_count(r->host, model_id(r->model), (uint16_t)code, (uint8_t)route);
    if (r->ttfb_ms >= 0)
        hist_observe(&reg.route_ttfb[route], latency_bounds,
                     NELEM(latency_bounds), r->ttfb_ms);
    hist_observe(&reg.route_duration[route], latency_bounds,
                 NELEM(latency_bounds), r->total_ms);
    hist_observe(&reg.overhead, overhead_bounds, NELEM(overhead_bounds),
                 overhead > 0 ? overhead : 0);
}

void metrics_attempt(struct metrics_host *h, enum metrics_outcome o,
                     double ttfb_ms, double total_ms)
{
    lock_assert_held();
    if (h == NULL)
        return;
    h->attempts[(unsigned)o < METRICS_OUTCOMES ? o : METRICS_OUTCOME_PROTOCOL_ERROR]++;
    if (ttfb_ms >= 0)
        hist_observe(&h->ttfb, latency_bounds, NELEM(latency_bounds), ttfb_ms);
    hist_observe(&h->duration, latency_bounds, NELEM(latency_bounds), total_ms);
}

enum metrics_outcome metrics_outcome_of(enum upstream_result res, int status)
{
    switch (res) {
    case UPSTREAM_OK:
        if (status == 429)
            return METRICS_OUTCOME_RATE_LIMITED;
        if (status >= 500)
            return METRICS_OUTCOME_SERVER_ERROR;
        if (status >= 400)
            return METRICS_OUTCOME_CLIENT_ERROR;
        return METRICS_OUTCOME_SUCCESS;
    case UPSTREAM_ERR_CONNECT:
        return METRICS_OUTCOME_CONNECT_ERROR;
    case UPSTREAM_ERR_TIMEOUT:
        return METRICS_OUTCOME_TIMEOUT;
    case UPSTREAM_ERR_ABORTED:
        return METRICS_OUTCOME_CANCELLED;
    case UPSTREAM_ERR_PROTOCOL:
        break;
    }
    return METRICS_OUTCOME_PROTOCOL_ERROR;
}

void metrics_retry(void)
{
    lock_assert_held();
    reg.retries++;
}

void metrics_retry_budget_exhausted(void)
{
    lock_assert_held();
    reg.budget_exhausted++;
}

void metrics_panic_pick(void)
{
    lock_assert_held();
    reg.panic_picks++;
}

void metrics_set_panic_tiers(uint64_t n)
{
    lock_assert_held();
    reg.panic_tiers = n;
}

void metrics_upstream_stall(struct metrics_host *h, int response)
{
    lock_assert_held();
    if (h)
        h->stalls[response != 0]++;
}

void metrics_stream_chunks(struct metrics_host *h, uint64_t n)
{
    lock_assert_held();
    if (h)
        h->chunks += n;
}

/* --- totals for the time series ------------------------------------- */

static void hist_add(uint64_t *to, const struct hist *h, size_t nb)
{
    uint64_t inb = 0;
    size_t i;

    for (i = 0; i < nb; i++) {
        to[i] += h->bucket[i];
        inb += h->bucket[i];
    }
    to[nb] += h->count - inb;               /* past the last bound */
}

/* The routes whose answers come from upstream inference hosts. */
static int route_inference(unsigned r)
{
    switch (r) {
    case METRICS_ROUTE_CHAT: case METRICS_ROUTE_COMPLETIONS: case METRICS_ROUTE_EMBEDDINGS:
    case METRICS_ROUTE_RESPONSES: case METRICS_ROUTE_MESSAGES: case METRICS_ROUTE_AUDIO:
    case METRICS_ROUTE_IMAGES: case METRICS_ROUTE_MODERATIONS: case METRICS_ROUTE_RERANK:
    case METRICS_ROUTE_PASSTHROUGH:
        return 1;
    default:
        return 0;
    }
}

void metrics_totals(struct metrics_totals *t)
{
    unsigned r;
    size_t i;

    lock_assert_held();
    memset(t, 0, sizeof(*t));
    for (r = 0; r < METRICS_ROUTES; r++) {
        if (!route_inference(r))
            continue;
        t->requests += reg.route_duration[r].count;
        hist_add(t->duration, &reg.route_duration[r], NELEM(latency_bounds));
        hist_add(t->ttfb, &reg.route_ttfb[r], NELEM(latency_bounds));
    }
    for (i = 0; i < METRICS_REQ_SERIES; i++) {
        const struct req_series *e = &reg.req[i];
        if (e->used && route_inference(e->route)
            && (e->code == 429 || e->code >= 500 || e->code == 0))
            t->errors += e->n;
    }
}

const double *metrics_latency_bounds(size_t *n)
{
    *n = NELEM(latency_bounds);
    return latency_bounds;
}

/* --- events and gauges ----------------------------------------------- */

void metrics_reload(int ok)
{
    lock_assert_held();
    reg.reloads[ok ? RELOAD_OK : RELOAD_FAILED]++;
    reg.last_reload_failed = !ok;
}

void metrics_set_generation(uint64_t generation)
{
    lock_assert_held();
    reg.generation = generation;
}

void metrics_set_start_time(int64_t unix_ms)
{
    lock_assert_held();
    reg.start_unix_ms = unix_ms;
}

void metrics_set_in_flight(uint64_t n)
{
    lock_assert_held();
    reg.in_flight = n;
}

void metrics_host_set_state(struct metrics_host *h, int breaker, int health,
                            uint64_t in_flight)
{
    lock_assert_held();
    if (h == NULL)
        return;
    h->breaker = breaker;
    h->health = health;
    h->in_flight = in_flight;
}

void metrics_set_keys(uint64_t active, uint64_t cooling, uint64_t disabled)
{
    lock_assert_held();
    reg.keys[KEYS_ACTIVE] = active;
    reg.keys[KEYS_COOLING] = cooling;
    reg.keys[KEYS_DISABLED] = disabled;
}

void metrics_set_redis_failovers(int sentinel, uint64_t followed)
{
    lock_assert_held();
    reg.redis_sentinel = sentinel;
    reg.redis_failovers = followed;
}

void metrics_set_redis(int configured, int up)
{
    lock_assert_held();
    reg.redis_configured = configured;
    reg.redis_up = up;
}

void metrics_set_alerts_firing(enum metrics_alert a, uint64_t n)
{
    lock_assert_held();
    if ((unsigned)a < METRICS_ALERTS)
        reg.alerts_firing[a] = n;
}

void metrics_set_alert_notifications(enum metrics_channel c, uint64_t sent,
                                     uint64_t failed)
{
    lock_assert_held();
    if ((unsigned)c >= METRICS_CHANNELS)
        return;
    reg.notify_sent[c] = sent;
    reg.notify_failed[c] = failed;
}

void metrics_set_tls_cert(size_t i, const char *listener, int64_t not_after)
{
    lock_assert_held();
    if (i >= METRICS_TLS_MAX)
        return;
    snprintf(reg.tls_listener[i], sizeof(reg.tls_listener[i]), "%s", listener);
    reg.tls_not_after[i] = not_after;
    reg.tls_ncert = i + 1;
}

void metrics_set_tls_failures(size_t n, const char *const *reason, const uint64_t *count)
{
    size_t i;

    lock_assert_held();
    reg.tls_nfail = n < METRICS_TLS_MAX_REASONS ? n : METRICS_TLS_MAX_REASONS;
    for (i = 0; i < reg.tls_nfail; i++) {
        reg.tls_reason[i] = reason[i];
        reg.tls_fails[i] = count[i];
    }
}

void metrics_reset(void)
{
    struct metrics_host *h;
    struct metrics_host *hosts = reg.hosts;

    lock_assert_held();
    memset(&reg, 0, sizeof(reg));
    reg.hosts = hosts;
    for (h = hosts; h; h = h->next) {
        memset(h->attempts, 0, sizeof(h->attempts));
        h->chunks = 0;
        memset(h->stalls, 0, sizeof(h->stalls));
        memset(&h->ttfb, 0, sizeof(h->ttfb));
        memset(&h->duration, 0, sizeof(h->duration));
        h->breaker = h->health = 0;
        h->in_flight = 0;
        free(h->tok);                   /* model ids are forgotten too */
        h->tok = NULL;
    }
}

/* --- rendering ------------------------------------------------------- */

struct out {
    struct evbuffer *buf;
    int              err;
};

/* A label set of up to LABELS_MAX pairs; NULL names end it early. */
#define LABELS_MAX 4
struct labels {
    const char *name[LABELS_MAX];
    const char *value[LABELS_MAX];
};

static void put(struct out *o, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void put(struct out *o, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    if (evbuffer_add_vprintf(o->buf, fmt, ap) < 0)
        o->err = 1;
    va_end(ap);
}

static void put_raw(struct out *o, const char *s, size_t n)
{
    if (n && evbuffer_add(o->buf, s, n) < 0)
        o->err = 1;
}

/* Label values escape \, " and newline; HELP text escapes \ and newline. */
static void put_escaped(struct out *o, const char *s, int quote)
{
    const char *run = s;

    for (; *s; s++) {
        const char *rep = NULL;

        if (*s == '\\')
            rep = "\\\\";
        else if (*s == '\n')
            rep = "\\n";
        else if (*s == '"' && quote)
            rep = "\\\"";
        if (rep == NULL)
            continue;
        put_raw(o, run, (size_t)(s - run));
        put_raw(o, rep, strlen(rep));
        run = s + 1;
    }
    put_raw(o, run, (size_t)(s - run));
}

static void family(struct out *o, const char *name, const char *type,
                   const char *help)
{
    put(o, "# HELP %s ", name);
    put_escaped(o, help, 0);
    put(o, "\n# TYPE %s %s\n", name, type);
}

/* name[suffix]{labels[,le="..."]} */
static void series(struct out *o, const char *name, const char *suffix,
                   const struct labels *l, const char *le)
{
    int first = 1;
    size_t i;

    put(o, "%s%s", name, suffix);
    for (i = 0; l && i < LABELS_MAX && l->name[i]; i++) {
        put(o, "%s%s=\"", first ? "{" : ",", l->name[i]);
        put_escaped(o, l->value[i], 1);
        put_raw(o, "\"", 1);
        first = 0;
    }
    if (le) {
        put(o, "%sle=\"%s\"", first ? "{" : ",", le);
        first = 0;
    }
    if (!first)
        put_raw(o, "}", 1);
}

static void sample_u64(struct out *o, const char *name, const struct labels *l,
                       uint64_t v)
{
    series(o, name, "", l, NULL);
    put(o, " %" PRIu64 "\n", v);
}

static void sample_f(struct out *o, const char *name, const struct labels *l,
                     double v)
{
    series(o, name, "", l, NULL);
    put(o, " %.15g\n", v);
}

static void hist_render(struct out *o, const char *name, const struct labels *l,
                        const struct hist *h, const double *bounds, size_t nb)
{
    uint64_t cum = 0;
    char le[32];
    size_t i;

    for (i = 0; i < nb; i++) {
        cum += h->bucket[i];
        snprintf(le, sizeof(le), "%g", bounds[i]);
        series(o, name, "_bucket", l, le);
        put(o, " %" PRIu64 "\n", cum);
    }
    series(o, name, "_bucket", l, "+Inf");
    put(o, " %" PRIu64 "\n", h->count);
    series(o, name, "_sum", l, NULL);
    put(o, " %.15g\n", h->sum);
    series(o, name, "_count", l, NULL);
    put(o, " %" PRIu64 "\n", h->count);
}

static struct labels one_label(const char *name, const char *value)
{
    struct labels l = {{ name }, { value }};
    return l;
}

static void render_requests(struct out *o)
{
    static const char *n = "infergate_requests_total";
    char code[8];
    size_t i;

    family(o, n, "counter", "Client requests answered, by route, HTTP status code, "
           "host that answered (\"none\" if none) and model (at most 200 "
           "distinct, then \"other\").");
    for (i = 0; i < METRICS_REQ_SERIES; i++) {
        const struct req_series *s = &reg.req[i];
        struct labels l = {{ "route", "code", "host", "model" }, { 0 }};

        if (!s->used)
            continue;
        snprintf(code, sizeof(code), "%u", (unsigned)s->code);
        l.value[0] = route_names[s->route];
        l.value[1] = code;
        l.value[2] = s->host ? s->host->name : "none";
        l.value[3] = model_name(s->model);
        sample_u64(o, n, &l, s->n);
    }
    if (reg.req_overflow) {
        struct labels l = {{ "route", "code", "host", "model" },
                           { "other", "other", "other", "other" }};
        sample_u64(o, n, &l, reg.req_overflow);
    }
}

static void render_route_hist(struct out *o, const char *n, const char *help,
                              const struct hist *h)
{
    size_t r;

    family(o, n, "histogram", help);
    for (r = 0; r < METRICS_ROUTES; r++) {
        struct labels l = one_label("route", route_names[r]);
        if (h[r].count)
            hist_render(o, n, &l, &h[r], latency_bounds, NELEM(latency_bounds));
    }
}

static void render_hosts(struct out *o)
{
    struct metrics_host *h;
    size_t i;

    family(o, "infergate_upstream_attempts_total", "counter",
           "Attempts sent to upstream hosts, by host and outcome.");
    for (h = reg.hosts; h; h = h->next) {
        for (i = 0; i < METRICS_OUTCOMES; i++) {
            struct labels l = {{ "host", "outcome" }, { h->name, outcome_names[i] }};
            sample_u64(o, "infergate_upstream_attempts_total", &l, h->attempts[i]);
        }
    }
    family(o, "infergate_upstream_ttfb_seconds", "histogram",
           "Per attempt, time from sending the request to the upstream's response head.");
    for (h = reg.hosts; h; h = h->next) {
        struct labels l = one_label("host", h->name);
        hist_render(o, "infergate_upstream_ttfb_seconds", &l, &h->ttfb,
                    latency_bounds, NELEM(latency_bounds));
    }
    family(o, "infergate_upstream_duration_seconds", "histogram",
           "Per attempt, time from sending the request to the end of the upstream's answer.");
    for (h = reg.hosts; h; h = h->next) {
        struct labels l = one_label("host", h->name);
        hist_render(o, "infergate_upstream_duration_seconds", &l, &h->duration,
                    latency_bounds, NELEM(latency_bounds));
    }
    family(o, "infergate_upstream_in_flight_requests", "gauge",
           "Attempts in flight, by host.");
    for (h = reg.hosts; h; h = h->next) {
        struct labels l = one_label("host", h->name);
        sample_u64(o, "infergate_upstream_in_flight_requests", &l, h->in_flight);
    }
    family(o, "infergate_stream_chunks_total", "counter",
           "Streamed (SSE) chunks passed from upstream hosts to clients.");
    for (h = reg.hosts; h; h = h->next) {
        struct labels l = one_label("host", h->name);
        sample_u64(o, "infergate_stream_chunks_total", &l, h->chunks);
    }
    family(o, "infergate_tokens_total", "counter",
           "Tokens the upstream reported in its answers' usage, by host, model (at most "
           "16 per host, then \"other\") and kind (input, output, cached: the part of "
           "input read from a cache).");
    for (h = reg.hosts; h; h = h->next) {
        for (i = 0; h->tok && i <= METRICS_HOST_TOKEN_MODELS; i++) {
            size_t k;
            if (!h->tok[i].used)
                continue;
            for (k = 0; k < METRICS_TOKEN_KINDS; k++) {
                struct labels l = {{ "host", "model", "kind" },
                                   { h->name, model_name(h->tok[i].model),
                                     token_kind_names[k] }};
                sample_u64(o, "infergate_tokens_total", &l, h->tok[i].n[k]);
            }
        }
    }
    family(o, "infergate_upstream_stalls_total", "counter",
           "Upstream answers cut by retry.stream_idle_timeout (timeout idle) or"
           " retry.response_timeout (timeout response), by host.");
    for (h = reg.hosts; h; h = h->next) {
        for (i = 0; i < 2; i++) {
            struct labels l = {{ "host", "timeout" }, { h->name, i ? "response" : "idle" }};
            sample_u64(o, "infergate_upstream_stalls_total", &l, h->stalls[i]);
        }
    }
    family(o, "infergate_breaker_state", "gauge",
           "Circuit breaker state by host: 0 closed, 1 open, 2 half-open.");
    for (h = reg.hosts; h; h = h->next) {
        struct labels l = one_label("host", h->name);
        sample_u64(o, "infergate_breaker_state", &l, (uint64_t)h->breaker);
    }
    family(o, "infergate_host_health", "gauge",
           "Health by host: 0 healthy, 1 degraded, 2 unhealthy.");
    for (h = reg.hosts; h; h = h->next) {
        struct labels l = one_label("host", h->name);
        sample_u64(o, "infergate_host_health", &l, (uint64_t)h->health);
    }
}

static void render_gateway(struct out *o)
{
    size_t i;

    family(o, "infergate_retries_total", "counter",
           "Attempts that were retries or failovers of an earlier attempt.");
    sample_u64(o, "infergate_retries_total", NULL, reg.retries);
    family(o, "infergate_retry_budget_exhausted_total", "counter",
           "Retries not made because the retry budget was spent.");
    sample_u64(o, "infergate_retry_budget_exhausted_total", NULL, reg.budget_exhausted);
    family(o, "infergate_panic_mode", "gauge",
           "Priority tiers in panic mode (health_check.panic_threshold): balanced over all "
           "their hosts as if healthy; 0 = none.");
    sample_u64(o, "infergate_panic_mode", NULL, reg.panic_tiers);
    family(o, "infergate_panic_picks_total", "counter",
           "Attempts sent in panic mode to a host that probes or passive health hold out.");
    sample_u64(o, "infergate_panic_picks_total", NULL, reg.panic_picks);
    family(o, "infergate_upstream_keys", "gauge", "Upstream API keys by state.");
    for (i = 0; i < KEY_STATES; i++) {
        struct labels l = one_label("state", key_state_names[i]);
        sample_u64(o, "infergate_upstream_keys", &l, reg.keys[i]);
    }
    family(o, "infergate_config_reloads_total", "counter",
           "Configuration reloads by result.");
    for (i = 0; i < RELOAD_RESULTS; i++) {
        struct labels l = one_label("result", reload_names[i]);
        sample_u64(o, "infergate_config_reloads_total", &l, reg.reloads[i]);
    }
    family(o, "infergate_config_last_reload_successful", "gauge",
           "1 if the last configuration reload succeeded (or none was tried), else 0.");
    sample_u64(o, "infergate_config_last_reload_successful", NULL,
               reg.last_reload_failed ? 0 : 1);
    family(o, "infergate_config_generation", "gauge",
           "Generation of the configuration in use; bumped by each successful reload.");
    sample_u64(o, "infergate_config_generation", NULL, reg.generation);
    if (reg.redis_configured) {
        family(o, "infergate_redis_up", "gauge",
               "1 if the Redis session store is connected, else 0.");
        sample_u64(o, "infergate_redis_up", NULL, reg.redis_up ? 1 : 0);
    }
    if (reg.redis_configured && reg.redis_sentinel) {
        family(o, "infergate_redis_failovers_followed_total", "counter",
               "Redis failovers followed: moves to a new master named by the sentinels.");
        sample_u64(o, "infergate_redis_failovers_followed_total", NULL, reg.redis_failovers);
    }
    family(o, "infergate_alerts_firing", "gauge", "Alerts firing, by rule.");
    for (i = 0; i < METRICS_ALERTS; i++) {
        struct labels l = one_label("alert", alert_names[i]);
        sample_u64(o, "infergate_alerts_firing", &l, reg.alerts_firing[i]);
    }
    family(o, "infergate_alert_notifications_total", "counter",
           "Alert notifications by channel and result (failed = gave up after retries).");
    for (i = 0; i < METRICS_CHANNELS; i++) {
        struct labels l = {{ "channel", "result" }, { channel_names[i], "sent" }};
        sample_u64(o, "infergate_alert_notifications_total", &l, reg.notify_sent[i]);
        l.value[1] = "failed";
        sample_u64(o, "infergate_alert_notifications_total", &l, reg.notify_failed[i]);
    }
    if (reg.tls_ncert) {
        family(o, "infergate_tls_cert_expiry_timestamp_seconds", "gauge",
               "When the certificate a TLS listener serves expires, since the Unix epoch.");
        for (i = 0; i < reg.tls_ncert; i++) {
            struct labels l = one_label("listener", reg.tls_listener[i]);
            sample_f(o, "infergate_tls_cert_expiry_timestamp_seconds", &l,
                     (double)reg.tls_not_after[i]);
        }
    }
    if (reg.tls_nfail) {
        family(o, "infergate_tls_handshake_failures_total", "counter",
               "TLS handshakes with clients that failed, by reason.");
        for (i = 0; i < reg.tls_nfail; i++) {
            struct labels l = one_label("reason", reg.tls_reason[i]);
            sample_u64(o, "infergate_tls_handshake_failures_total", &l, reg.tls_fails[i]);
        }
    }
    family(o, "infergate_start_time_seconds", "gauge",
           "Start time of the gateway since the Unix epoch, in seconds.");
    sample_f(o, "infergate_start_time_seconds", NULL,
             (double)reg.start_unix_ms / MS_PER_SECOND);
}

int metrics_render(struct evbuffer *buf)
{
    struct out o = { buf, 0 };

    lock_assert_held();
    render_requests(&o);
    render_route_hist(&o, "infergate_request_duration_seconds",
                      "Time from a client request's arrival to its last byte sent, by route.",
                      reg.route_duration);
    render_route_hist(&o, "infergate_request_ttfb_seconds",
                      "Time from a client request's arrival to its first byte sent, by route.",
                      reg.route_ttfb);
    family(&o, "infergate_overhead_seconds", "histogram",
           "The gateway's own share of each request: total time minus time "
           "spent waiting on upstreams.");
    hist_render(&o, "infergate_overhead_seconds", NULL, &reg.overhead,
                overhead_bounds, NELEM(overhead_bounds));
    family(&o, "infergate_in_flight_requests", "gauge", "Client requests in flight.");
    sample_u64(&o, "infergate_in_flight_requests", NULL, reg.in_flight);
    render_hosts(&o);
    render_gateway(&o);
    return o.err ? -1 : 0;
}
