/*
 * gw.h -- struct gateway, the state of the running gateway that the route
 * handlers (proxy.c, admin.c, events.c, infernet.c, observe.c) are given.
 * gateway.c owns and wires it (gateway.h) and its route table names the
 * handlers; the handlers include this header, not gateway.h, and reach
 * the wiring only through the function pointers at the end of the struct,
 * so no handler depends on gateway.c.
 */
#ifndef INFERGATE_GW_H
#define INFERGATE_GW_H

#include <stddef.h>
#include <stdint.h>

#include "clock.h"
#include "config.h"
#include "retry.h"
#include "snapshot.h"

struct cache;
struct health;
struct event;
struct alerts;
struct event_base;
struct http_req;
struct reload_job;
struct http_server;
struct metrics_host;
struct observe;
struct session;
struct upstream;
struct worker;

#define GW_MAX_RELOAD_ERRORS 64

#define GW_RELOAD_WAITERS 16     /* POST /admin/reload waiting per reload */

/* A request waiting for a reload, and the worker whose thread answers it. */
struct gw_waiter {
    struct http_req *req;
    struct worker   *w;
};

/*
 * Threads (server.workers > 1, `threaded`): the main thread is the control
 * thread (signals, reload, health probes, alerts, sessions and Redis) and
 * owns `base` and `up`; each worker serves clients on its own loop. Every
 * field below `workers` is shared state, guarded by the state lock
 * (lock.h). With one worker the main loop is worker 0 and there are no
 * other threads.
 */
struct gateway {
    struct event_base  *base;
    struct http_server *http;        /* worker 0's, NULL when threaded */
    struct upstream    *up;          /* the main loop's */
    struct worker      *workers;     /* [nworkers] */
    int                 nworkers;
    int                 threaded;
    struct session     *sess;        /* response ids, sticky hosts, replicas */
    struct cache       *cache;       /* response cache; NULL when off (cache.h) */
    struct alerts      *alerts;
    struct snapshot    *snap;        /* current; the gateway holds one ref */
    const char         *conf_dir;
    const char         *listen_override;
    int64_t             started_ms;  /* monotonic */
    int64_t             started_unix;
    uint64_t            rnd;         /* xorshift state for backoff jitter */
    struct retry_budget budget;      /* kept across reloads */
    struct event       *tick;        /* 1 s housekeeping */
    struct health      *health;      /* active probes of the current snapshot */
    struct event       *rebalance;   /* rebuilds snap->bal after model discovery */
    struct observe     *obs;         /* time series, reload history, state events */
    uint64_t            next_id;     /* request id counter */
    uint64_t            id_seed;
    size_t              active;      /* proxied requests in flight */
    int                 draining;
    /* last reload */
    int64_t             reload_unix;
    int                 reload_ok;
    size_t              reloads_ok, reloads_failed;
    struct cfg_errors   reload_errs;
    struct reload_job  *reload;      /* the reload running, NULL when none */
    int                 reload_again;
    /* POST /admin/reload asked while one runs: answered by the next one,
     * which reads the files as they are after the request came. */
    struct gw_waiter    reload_next[GW_RELOAD_WAITERS];
    size_t              nreload_next;
    /* counters */
    uint64_t            requests_total;
    uint64_t            retries_total;
    uint64_t            budget_exhausted_total;
    /* What the route handlers ask of the wiring, set by gateway_init()
     * (gateway.c): they call down through these, never up into it. */
    void   (*do_reload)(struct gateway *gw, struct http_req *req);   /* gateway_reload */
    size_t (*listeners)(const struct gateway *gw, const struct config *cfg,
                        struct cfg_listener *out);                  /* gateway_listeners */
    void   (*health_moved)(struct gateway *gw);                     /* gateway_health_moved */
};

#endif
