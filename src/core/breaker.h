/*
 * breaker.h -- a circuit breaker for one upstream (host, or host+model).
 *
 * Pure: no clock, no I/O. Every call that depends on time takes `now_ms`
 * (any monotonic millisecond clock, as long as the caller uses one clock).
 * The caller owns one `struct breaker` per host (or host+model) in its
 * runtime state, so the breaker survives config reloads: a reload calls
 * breaker_set_params() with the new parameters and keeps the state.
 *
 * Breakers live in state.c's shared host state: breaker_set_params,
 * breaker_allow, breaker_record, breaker_release, breaker_state,
 * breaker_open_until and breaker_share: caller holds the state lock
 * (lock.h; checked by lock_assert_held() in the asan and tsan builds).
 *
 * States:
 *   closed     every call passes; outcomes go into a sliding window of the
 *              last `window_size` calls. It opens on `failure_threshold`
 *              consecutive failures, or, once the window holds
 *              `minimum_requests` outcomes, when the failure rate reaches
 *              `error_rate` or the slow-call rate reaches `slow_call_rate`.
 *   open       every call is refused until `reset_timeout_ms` has passed
 *              since it opened; then it is half-open.
 *   half-open  up to `half_open_requests` probes pass. When that many probes
 *              have succeeded it closes; any probe failure re-opens it.
 *
 * A call counts as a failure when the caller says so, or when its latency
 * is greater than `timeout_ms` (if set). It counts as slow when its latency
 * is >= `slow_call_latency_ms` (if set), whether it failed or not.
 *
 * Tickets: breaker_allow() hands out a ticket that the caller gives back to
 * breaker_record() (an outcome) or breaker_release() (cancelled, no
 * outcome). The ticket names the state period the call was admitted in, so
 * a late outcome of a call admitted before the last state change (a slow
 * call admitted while closed that ends while half-open, a probe of an
 * earlier half-open period) is ignored instead of being taken for a probe.
 *
 * Gradual recovery: after closing from half-open, breaker_share() ramps
 * from `recovery_step` up to 1.0: it rises by `recovery_step` at equal
 * intervals and reaches 1.0 exactly `recovery_duration_ms` after closing.
 * The balancer multiplies the host's weight by the share.
 */
#ifndef INFERGATE_BREAKER_H
#define INFERGATE_BREAKER_H

#include <stdint.h>

#include "config.h"

enum breaker_state { BREAKER_CLOSED = 0, BREAKER_OPEN, BREAKER_HALF_OPEN };

struct breaker_params {
    int      enabled;               /* 0: always closed, allows everything */
    int      failure_threshold;     /* consecutive failures; <= 0 = rule off */
    int      window_size;           /* outcomes remembered; < 1 means 1 */
    int      minimum_requests;      /* rates need this many (at most window_size) */
    double   error_rate;            /* 0 < r <= 1; <= 0 = rule off */
    int64_t  slow_call_latency_ms;  /* 0 = slow-call rule off */
    double   slow_call_rate;        /* 0..1 */
    int64_t  timeout_ms;            /* 0 = off; slower calls are failures */
    int64_t  reset_timeout_ms;      /* open -> half-open */
    int      half_open_requests;    /* probes; < 1 means 1 */
    enum cfg_recovery recovery;     /* immediate | gradual */
    int64_t  recovery_duration_ms;
    double   recovery_step;         /* 0 < step <= 1 */
};

/* The outcome window: two rings of bits (failed, slow), oldest evicted. */
struct breaker_window {
    uint64_t *fail;
    uint64_t *slow;
    int       size;                 /* capacity, in outcomes */
    int       head;                 /* next slot written */
    int       count;                /* outcomes held, <= size */
    int       nfail;
    int       nslow;
};

/* Given out by breaker_allow(), given back to breaker_record/release. */
struct breaker_ticket {
    uint64_t  epoch;
};

struct breaker {
    struct breaker_params p;
    enum breaker_state state;       /* as of the last call that changed it */
    uint64_t  epoch;                /* +1 on every state change */
    int64_t   opened_at;            /* when it last opened */
    int64_t   closed_at;            /* when it last closed from half-open */
    int       ramping;              /* gradual recovery runs since closed_at */
    int       consecutive;          /* consecutive failures while closed */
    int       probes_in_flight;     /* half-open */
    int       probe_successes;      /* half-open */
    struct breaker_window win;
    uint64_t  opens;                /* times it opened, for metrics */
};

/* Fills `p` from the circuit_breaker section of `c`. */
void breaker_params_from_config(const struct config *c, struct breaker_params *p);

/* Starts closed with an empty window. Returns 0, or -1 when out of memory
 * (then `b` holds nothing to free). The params are copied. */
int  breaker_init(struct breaker *b, const struct breaker_params *p);
void breaker_free(struct breaker *b);

/* New parameters (config reload), keeping the state, the open timer (now
 * measured against the new reset_timeout), the consecutive count, in-flight
 * probes and the newest outcomes of the window (resized if needed). Nothing
 * is re-evaluated until the next outcome. Disabling resets it to closed.
 * Returns 0, or -1 when out of memory (then the old params stay). */
int  breaker_set_params(struct breaker *b, const struct breaker_params *p);

/* May a call go to this upstream now? Returns 1 and fills `*t` when yes.
 * Open: no, unless reset_timeout has passed, then it turns half-open.
 * Half-open: yes while fewer than half_open_requests probes are in flight
 * or have succeeded. */
int  breaker_allow(struct breaker *b, int64_t now_ms, struct breaker_ticket *t);

/* The outcome of a call admitted with ticket `t`. Returns the state after
 * it (compare with the state before to log a transition). */
enum breaker_state breaker_record(struct breaker *b, struct breaker_ticket t,
                                  int success, int64_t latency_ms, int64_t now_ms);

/* A call admitted with `t` ended without an outcome (cancelled: lost a race,
 * client gone). Frees its probe slot if it was a probe. */
void breaker_release(struct breaker *b, struct breaker_ticket t);

/* The state at `now_ms`: an open breaker whose reset_timeout has passed
 * reads as half-open even before the next breaker_allow(). */
enum breaker_state breaker_state(const struct breaker *b, int64_t now_ms);
const char *breaker_state_name(enum breaker_state s);  /* "closed", "open", "half-open" */

/* When an open breaker turns half-open (a Retry-After hint); 0 otherwise. */
int64_t breaker_open_until(const struct breaker *b);

/* Share of the host's normal traffic: 0.0 while open; 1.0 when closed with
 * immediate recovery or once the ramp is over; the ramp's value while a
 * gradual recovery runs; while half-open, the ramp's first value (the probe
 * limit of breaker_allow() is what throttles half-open traffic). */
double breaker_share(const struct breaker *b, int64_t now_ms);

#endif
