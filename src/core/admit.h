/*
 * admit.h -- admission: where one request's attempts go, and what an
 * attempt's outcome means for what comes next.
 *
 * Owns the decisions of a proxied request's life that need no I/O:
 *   the plan     the steps a request walks (its own model; a fallback
 *                chain's steps; a `models:` group's members in order),
 *                how many of them race, attempts per step, the deadline;
 *   the pick     a host for one step (a sticky host first when usable,
 *                then the balancer's choice among the hosts serving the
 *                route's API and the step's model whose breakers let a call
 *                through), a key on it, the breaker tickets (host, and
 *                host+model when the host serves several models) and the
 *                host's in-flight slot (max_concurrent);
 *   the outcome  of one attempt: what counts against the host (breaker,
 *                passive health) or only against its model, what it means
 *                for the key (disable, cool down: the next attempt takes
 *                another key), and what comes next (wait for the rest of a
 *                race, retry after a backoff, fall back to the next step,
 *                give up).
 * proxy.c keeps the I/O and what goes with a transition (logs, events,
 * metrics, Redis advice, timers, the when_full queue).
 *
 * Pure: no I/O library, no clock (time comes in as now_ms, randomness as a
 * value), no lock. Functions marked "caller holds the state lock" read or
 * change shared state (host and key state, breakers, the balancer's
 * rotation) reached through `struct admit_view`: proxy.c takes the lock
 * around the call (lock.h; checked there with lock_assert_held()).
 */
#ifndef INFERGATE_ADMIT_H
#define INFERGATE_ADMIT_H

#include <stddef.h>
#include <stdint.h>

#include "balance.h"
#include "breaker.h"
#include "config.h"
#include "keys.h"
#include "retry.h"
#include "state.h"

#define ADMIT_MAX_STEPS  16
#define ADMIT_MAX_RACE   16          /* parallel race width cap */
#define ADMIT_MAX_TRIED  32

/* The serving snapshot, as admission sees it (arrays of cfg->nhosts and
 * cfg->nkeys entries). */
struct admit_view {
    const struct config          *cfg;
    struct host_state *const     *hs;
    struct key_state *const      *ks;
    const struct keys_ring       *rings;
    struct balance               *bal;
    struct balance_live *const   *live;
    const struct breaker_params  *bp;
    const struct retry_params    *rp;
};

/* One step of the plan. */
struct admit_step {
    const char  *model;          /* NULL = the request's model, unchanged */
    int         *hosts;          /* allowed host indices, NULL = any (owned) */
    size_t       nhosts;
    int64_t      timeout_ms;     /* per attempt; 0 = retry.per_try_timeout */
};

/* One request's admission: its facts, its plan and how far it got. */
struct admit_req {
    /* facts, set by the caller */
    const char  *model;          /* the body's model, NULL when none */
    int          family;         /* enum api_family of its route */
    const char  *hash_key;       /* consistent-hash input, NULL = random */
    int          prefer;         /* sticky host tried first, -1 = none */
    /* the plan (admit_plan) */
    struct admit_step steps[ADMIT_MAX_STEPS];
    int          nsteps;
    int          race;           /* steps raced at once (1 = sequential) */
    int          max_attempts;   /* per step; 1 for no-retry requests */
    int64_t      deadline_ms;
    /* progress */
    int          step;           /* current step (sequential) */
    int          step_attempts;  /* attempts in the current step */
    int          attempts;       /* attempts in all */
    int          tried[ADMIT_MAX_TRIED];
    int          ntried;
    int          keys_cooling;   /* a host was skipped: its keys cool down */
    enum balance_status pick_status;  /* why the last pick found nothing */
};

/* Sets the facts and an empty plan. */
void admit_req_init(struct admit_req *r, const char *model, int family);
/* Frees the steps' host sets. */
void admit_req_free(struct admit_req *r);

/* ---- the plan ----------------------------------------------------------- */

/* The fallback chain for `model` (NULL = none in the body): the first
 * whose match is the model or "*"; NULL when none applies. */
const struct cfg_fallback_chain *admit_chain(const struct config *c, const char *model);

/* A step's model may name a `models:` group: the first member some host
 * serves stands for it (the first member when none does). Caller holds
 * the state lock (the balancer is rebuilt on discoveries). */
const char *admit_concrete_model(const struct admit_view *v, const char *name);

/*
 * Builds r's plan: the matching fallback chain's steps (parallel: `race`
 * of them at once; its timeout is the deadline); else, for a model that
 * names a `models:` group, one step per member in order; else one step
 * with the request as it is. `no_retry` (the client's no-retry header):
 * one attempt, one step. Returns 0, or -1 when out of memory. With a
 * fallback chain (admit_chain), caller holds the state lock (a step's
 * model may name a group: the balancer is read); without one only v->cfg
 * is read.
 */
int admit_plan(const struct admit_view *v, struct admit_req *r, int no_retry);

/* Moves r to the next step (a new model: every host is new to it);
 * returns 0 when there is none. */
int admit_next_step(struct admit_req *r);

/* A race lost as a whole: sequential again, at its last step (the next
 * admit_next_step() goes to the step after it). */
void admit_race_lost(struct admit_req *r);

/* ---- the pick ----------------------------------------------------------- */

/* What admit_pick() took for one attempt; given back by admit_unpick()
 * (the attempt did not start), or by admit_record() / admit_release(). */
struct admit_pick {
    int                   host;
    int                   has_key;
    size_t                key;
    struct breaker_ticket ticket;        /* the host's breaker */
    int                   ticket_open;
    struct breaker       *mbr;           /* host+model breaker, NULL if none */
    struct breaker_ticket mticket;
    int                   mticket_open;
    int                   panic;         /* panic mode picked an unusable host */
};

/*
 * May host h take an attempt for `model` now: it serves the route's API,
 * it is in the step's host set (if any), its breaker (and its model's) is
 * not open and no other replica advises it open. Refreshes the host's
 * recovery share for the balancer. Caller holds the state lock.
 */
int admit_host_eligible(const struct admit_view *v, const struct admit_req *r,
                        const struct admit_step *s, int h, int64_t now_ms);

/*
 * Picks a host and key for step `si` and takes what the attempt needs:
 * the breaker tickets and the host's in-flight slot; counts the attempt.
 * The sticky host first (first attempt of a sequential request, not
 * tried, usable, eligible); then the strategy's choice among eligible
 * hosts, never one this request already tried unless nothing else is left
 * and the step had an attempt (then a tried host may take another key).
 * A host whose keys all cool down, or whose half-open breaker has no probe
 * left, is skipped. `*picks` bounds the hosts looked at over several calls
 * for one attempt (start it at 0). Returns 0 with *out filled, or -1 (the
 * reason in r->pick_status and r->keys_cooling). Caller holds the state
 * lock.
 */
int admit_pick(const struct admit_view *v, struct admit_req *r, int si,
               int64_t now_ms, int *picks, struct admit_pick *out);

/*
 * routing.when_full, after a pick that found every usable host at its
 * max_concurrent (r->pick_status BALANCE_ALL_FULL): 1 when the request is
 * to wait for a slot (`queue`, and its queue_timeout, counted from the
 * first time in *queue_until (0 = not yet), is not over); 0 when it is
 * refused (or the pick failed for another reason).
 */
int admit_queue(const struct config *c, const struct admit_req *r,
                int64_t *queue_until, int64_t now_ms);

/* The attempt admit_pick() admitted did not start: its slot and tickets
 * back, the host's request count too. Caller holds the state lock. */
void admit_unpick(const struct admit_view *v, struct admit_pick *pk);

/* The attempt ended without an outcome (cancelled): tickets still open go
 * back. Caller holds the state lock. */
void admit_release(const struct admit_view *v, struct admit_pick *pk);

/* When the first of the keys usable with some host stops cooling down:
 * ms from now (>= 1), or 0 when none cools. Caller holds the state lock. */
int64_t admit_soonest_key_ms(const struct admit_view *v, int64_t now_ms);

/* A pinned host (a response id's, /v1/verify) cannot take the request:
 * not usable, unhealthy or its breaker open. Caller holds the state lock. */
int admit_host_down(const struct admit_view *v, int h, int64_t now_ms);

/* ---- the outcome -------------------------------------------------------- */

enum admit_next {
    ADMIT_WAIT = 0,              /* other legs of a race are still out */
    ADMIT_RACE_LOST,             /* the race failed as a whole: the steps after it */
    ADMIT_GIVE_UP,               /* the final answer */
    ADMIT_NEXT_STEP,             /* this step is out of attempts: fall back */
    ADMIT_RETRY                  /* another attempt of this step, after a backoff */
};

struct admit_verdict {
    struct retry_verdict rv;     /* retryable, host_failure (the breakers
                                  * and passive health), key action */
    int             key_report;  /* a key was sent and its state changes */
    enum admit_next next;
};

/*
 * Classifies a failed attempt (fault, status; whether the pick `pk` sent a
 * key and holds a model ticket) and says what comes next given r's
 * progress and the legs still out (`active`, this one not counted).
 */
struct admit_verdict admit_classify(const struct retry_params *rp,
                                    const struct admit_req *r,
                                    const struct admit_pick *pk,
                                    enum retry_fault fault, int status, int active);

/*
 * Classifies a complete HTTP answer of the attempt `pk` made. `own_404`:
 * a 404 is the request's own answer (an unknown response id, a path the
 * upstream does not know), neither retried nor a failure (otherwise 404
 * is retried, for unknown models).
 */
struct retry_verdict admit_answer(const struct retry_params *rp,
                                  const struct admit_pick *pk, int status, int own_404);

/* What admit_record() changed, for the caller's logs and events. */
struct admit_recorded {
    int                host_recorded;    /* the host's breaker took an outcome */
    enum breaker_state host_before, host_after;
    int                model_opened;     /* the model breaker is open after a failure */
    int                counts_for_host;  /* passive health and counters apply */
};

/*
 * Feeds one finished attempt to the breakers (failure: it failed;
 * answered: the failure is an HTTP answer, so with a model breaker only
 * that one counts it) and to the host's failure counters; the tickets are
 * closed. latency_ms: since the attempt started. Caller holds the state
 * lock.
 */
struct admit_recorded admit_record(const struct admit_view *v, struct admit_pick *pk,
                                   int failure, int answered,
                                   int64_t latency_ms, int64_t now_ms);

/*
 * The pause before the next attempt of the step: the backoff (or a
 * Retry-After ra_ms when respected and the key is kept; -1 = none), or -1
 * when it would end after the deadline (t_start + r->deadline_ms).
 */
int64_t admit_delay(const struct retry_params *rp, const struct config *c,
                    const struct admit_req *r, const struct retry_verdict *rv,
                    uint64_t rnd, int64_t ra_ms, int64_t t_start, int64_t now_ms);

#endif
