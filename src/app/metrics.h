/*
 * metrics.h -- the gateway's Prometheus metrics: a fixed registry of
 * counters, gauges and fixed-bucket histograms, rendered as the text
 * exposition format 0.0.4.
 *
 * Hot path: every update is a few integer adds into memory that exists
 * before the request does. Per-host series live in a `struct metrics_host`
 * taken when a snapshot is built (metrics_host_get, reference counted like
 * state.h's entries, keyed by host name) and kept by the snapshot, so a
 * request updates its host's counters through a pointer. Model names are
 * interned into a fixed table of METRICS_MAX_MODELS entries (no malloc);
 * past that, or for names that are too long or not UTF-8, the label is
 * "other". Requests by route/code/host/model go to a fixed open-addressing
 * table of METRICS_REQ_SERIES series; when it is full, new combinations
 * are counted in one series whose labels are all "other".
 *
 * Gauges that mirror state owned elsewhere (breaker, health, in-flight, key
 * states, Redis, alerts) are set right before rendering by whoever renders
 * (admin.c), from the current snapshot.
 *
 * One registry per process, shared by the worker threads: every function
 * that reads or changes it (all but the pure name and route helpers,
 * metrics_route_of*, metrics_*_name, metrics_outcome_of and
 * metrics_latency_bounds): caller holds the state lock (lock.h; checked by
 * lock_assert_held() in the asan and tsan builds), like state.c.
 * A removed host's series vanish when its last reference is put.
 */
#ifndef INFERGATE_METRICS_H
#define INFERGATE_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "upstream.h"

struct evbuffer;
struct metrics_host;

#define METRICS_MAX_MODELS     200    /* distinct model label values */
#define METRICS_MODEL_NAME_MAX 128    /* longer names count as "other" */
#define METRICS_REQ_SERIES     4096   /* route x code x host x model series */

/* The `route` label: what the client asked for. */
enum metrics_route {
    METRICS_ROUTE_CHAT = 0,      /* POST /v1/chat/completions */
    METRICS_ROUTE_COMPLETIONS,   /* POST /v1/completions */
    METRICS_ROUTE_EMBEDDINGS,    /* POST /v1/embeddings */
    METRICS_ROUTE_MODELS,        /* GET /v1/models */
    METRICS_ROUTE_VERIFY,        /* POST /v1/verify */
    METRICS_ROUTE_IP,            /* GET /api/v1/ip */
    METRICS_ROUTE_HEALTH,        /* GET /health */
    METRICS_ROUTE_STATUS,        /* /status, /v1/providers/status, /admin/providers */
    METRICS_ROUTE_METRICS,       /* GET /metrics */
    METRICS_ROUTE_ADMIN,         /* any other path under /admin/ */
    METRICS_ROUTE_RESPONSES,     /* /v1/responses[/{id}[/...]] */
    METRICS_ROUTE_MESSAGES,      /* /v1/messages[/count_tokens] */
    METRICS_ROUTE_AUDIO,         /* /v1/audio/... */
    METRICS_ROUTE_IMAGES,        /* /v1/images/... */
    METRICS_ROUTE_MODERATIONS,   /* /v1/moderations */
    METRICS_ROUTE_RERANK,        /* /v1/rerank */
    METRICS_ROUTE_PASSTHROUGH,   /* routing.passthrough prefixes */
    METRICS_ROUTE_OTHER,         /* anything else (404s) */
    METRICS_ROUTES
};

/* The `kind` label of infergate_tokens_total. */
enum metrics_token_kind {
    METRICS_TOKENS_INPUT = 0, METRICS_TOKENS_OUTPUT, METRICS_TOKENS_CACHED,
    METRICS_TOKEN_KINDS
};
#define METRICS_HOST_TOKEN_MODELS 16  /* models per host in tokens_total, then "other" */

/* The `outcome` label of one upstream attempt. */
enum metrics_outcome {
    METRICS_OUTCOME_SUCCESS = 0, /* 1xx-3xx answer */
    METRICS_OUTCOME_RATE_LIMITED,/* 429 */
    METRICS_OUTCOME_CLIENT_ERROR,/* other 4xx */
    METRICS_OUTCOME_SERVER_ERROR,/* 5xx */
    METRICS_OUTCOME_CONNECT_ERROR,
    METRICS_OUTCOME_TIMEOUT,
    METRICS_OUTCOME_PROTOCOL_ERROR,
    METRICS_OUTCOME_CANCELLED,   /* we stopped it: client gone, race lost */
    METRICS_OUTCOMES
};

/* Values of the infergate_breaker_state gauge (as breaker.h's enum). */
#define METRICS_BREAKER_CLOSED    0
#define METRICS_BREAKER_OPEN      1
#define METRICS_BREAKER_HALF_OPEN 2

/* The `alert` label of infergate_alerts_firing. */
enum metrics_alert {
    METRICS_ALERT_AVAILABILITY = 0,
    METRICS_ALERT_ERROR_RATE,
    METRICS_ALERT_LATENCY_P99,
    METRICS_ALERTS
};

/* The `channel` label of infergate_alert_notifications_total. */
enum metrics_channel {
    METRICS_CHANNEL_WEBHOOK = 0,
    METRICS_CHANNEL_SLACK,
    METRICS_CHANNEL_COMMAND,
    METRICS_CHANNEL_EMAIL,
    METRICS_CHANNELS
};

/* --- hosts (at snapshot build, not per request) ---------------------- */

/* +1 reference on the host's series, created (zeroed) on first use.
 * Returns NULL only when out of memory. */
struct metrics_host *metrics_host_get(const char *name);
/* -1 reference; at zero the host's series (and its requests_total series)
 * are removed. NULL is ignored. */
void metrics_host_put(struct metrics_host *h);
const char *metrics_host_name(const struct metrics_host *h);

/* --- hot path: no allocation, no syscalls ---------------------------- */

/* One finished client request. */
struct metrics_req {
    enum metrics_route   route;
    int                  status;      /* HTTP status sent to the client */
    struct metrics_host *host;        /* host that answered; NULL = none */
    const char          *model;       /* as routed; NULL = none */
    double               ttfb_ms;     /* first byte to the client; < 0 = none */
    double               total_ms;    /* arrival to last byte */
    double               upstream_ms; /* of total_ms, time waiting on upstreams */
};
void metrics_request(const struct metrics_req *r);

/* Tokens an answer of host h for `model` reported; `have` has bit 1 << k
 * set for each kind k (enum metrics_token_kind) it reported. */
void metrics_tokens(struct metrics_host *h, const char *model, unsigned have,
                    const uint64_t n[METRICS_TOKEN_KINDS]);

/* One upstream attempt on host h; ttfb_ms < 0 when no response head came. */
void metrics_attempt(struct metrics_host *h, enum metrics_outcome o,
                     double ttfb_ms, double total_ms);
enum metrics_outcome metrics_outcome_of(enum upstream_result res, int status);
void metrics_retry(void);
void metrics_retry_budget_exhausted(void);
void metrics_stream_chunks(struct metrics_host *h, uint64_t n);
/* An attempt sent in panic mode to a host held out by health. */
void metrics_panic_pick(void);
/* An answer from h cut by retry.stream_idle_timeout (response = 0) or
 * retry.response_timeout (response = 1). */
void metrics_upstream_stall(struct metrics_host *h, int response);

/* --- events and gauges (reload, scrape) ------------------------------ */

void metrics_reload(int ok);                    /* ok: 1 success, 0 failed */
void metrics_set_generation(uint64_t generation);
void metrics_set_start_time(int64_t unix_ms);
void metrics_set_in_flight(uint64_t n);         /* client requests */
void metrics_set_panic_tiers(uint64_t n);       /* tiers in panic mode */
/* breaker: METRICS_BREAKER_*; health: 0 healthy, 1 degraded, 2 unhealthy;
 * in_flight: attempts in flight on h. */
void metrics_host_set_state(struct metrics_host *h, int breaker, int health,
                            uint64_t in_flight);
void metrics_set_keys(uint64_t active, uint64_t cooling, uint64_t disabled);
/* configured = 0 hides infergate_redis_up. */
void metrics_set_redis(int configured, int up);
/* With Sentinel: failovers followed (moves to a new master) since start. */
void metrics_set_redis_failovers(int sentinel, uint64_t followed);
void metrics_set_alerts_firing(enum metrics_alert a, uint64_t n);
void metrics_set_alert_notifications(enum metrics_channel c, uint64_t sent,
                                     uint64_t failed);

/* TLS listeners (set before rendering): certificate expiry of listener i
 * (unix seconds), and handshake failures by reason. Without TLS neither
 * family is shown. */
#define METRICS_TLS_MAX          4
#define METRICS_TLS_MAX_REASONS  8
void metrics_set_tls_cert(size_t i, const char *listener, int64_t not_after);
void metrics_set_tls_failures(size_t n, const char *const *reason, const uint64_t *count);

/* --- output ---------------------------------------------------------- */

/* Appends the whole registry to `out` in text format 0.0.4
 * (Content-Type: METRICS_CONTENT_TYPE). Returns 0, or -1 when out of
 * memory (what was appended is then incomplete). */
#define METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"
int metrics_render(struct evbuffer *out);

/* Totals over the inference routes (those proxied to upstream hosts), for
 * the 1 s samples of the time series: answers, answers with status 429 or
 * 5xx, and the duration and time-to-first-byte histograms (per bucket of
 * metrics_latency_bounds(), the last one past the last bound). Reads the
 * existing counters only. */
#define METRICS_LAT_BUCKETS 16
struct metrics_totals {
    uint64_t requests;
    uint64_t errors;
    uint64_t duration[METRICS_LAT_BUCKETS];
    uint64_t ttfb[METRICS_LAT_BUCKETS];
};
void metrics_totals(struct metrics_totals *t);
/* Upper bounds of the latency buckets, in seconds; *n of them. */
const double *metrics_latency_bounds(size_t *n);

const char *metrics_route_name(enum metrics_route r);
/* Client requests answered so far, by route (for /status). */
void metrics_route_requests(uint64_t out[METRICS_ROUTES]);
const char *metrics_outcome_name(enum metrics_outcome o);
/* The route label for a request path ("/v1/chat/completions" -> chat). */
enum metrics_route metrics_route_of(const char *path);
/* The route label of a proxied request's endpoint family (route.h's enum
 * api_family); API_NONE falls back to metrics_route_of(path). */
enum metrics_route metrics_route_of_family(int family, const char *path);

/* Zeroes every counter and gauge and forgets interned models; hosts keep
 * their references but their series restart at zero. For tests. */
void metrics_reset(void);

#endif
