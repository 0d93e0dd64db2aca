/*
 * state.h -- runtime state of hosts and keys, kept across reloads.
 *
 * The config snapshot says what hosts and keys exist; this table says how
 * they are doing: in-flight requests, counters, key cooldowns and
 * disables. Entries are keyed by host name and key id (a hash of the
 * secret, never the secret) and reference counted: each snapshot that
 * names an entry holds a reference, so a reload keeps the state of what is
 * still configured and a removed host's state lives until the last
 * snapshot (and so the last request) that knew it is gone.
 */
#ifndef INFERGATE_STATE_H
#define INFERGATE_STATE_H

#include <stddef.h>
#include <stdint.h>

#include "balance.h"
#include "breaker.h"
#include "config.h"

/* Common head of every table entry. */
struct state_entry {
    char               *key;     /* host name or key id */
    int                 refs;
    struct state_entry *next;    /* hash chain */
};

/* A breaker for one model on one host (hosts serving several models:
 * one broken model should not take the others down with it). */
struct model_breaker {
    char          *model;
    struct breaker br;
};

#define STATE_MAX_MODEL_BREAKERS 64

/* Health as probes and request outcomes see it. */
enum host_health { HEALTH_HEALTHY = 0, HEALTH_DEGRADED, HEALTH_UNHEALTHY };

struct host_state {
    struct state_entry e;        /* e.key is the host name */
    /* What balance.c reads: usable, in_flight, max_concurrent, pending,
     * ewma_ms (time to first byte), share. The snapshot points at it. */
    struct balance_live live;
    struct breaker br;           /* breaker_init'ed on creation */
    uint64_t  requests;          /* attempts sent */
    uint64_t  failures;          /* attempts that failed (network, 5xx...) */
    uint64_t  consecutive_failures;
    uint64_t  rr;                /* key rotation cursor, starts per host */
    uint64_t  tokens[3];         /* usage reported: input, output, cached */
    /* health.c */
    enum host_health health;
    int       probe_successes;   /* consecutive, toward healthy_threshold */
    int       probe_failures;    /* consecutive, toward unhealthy_threshold */
    int64_t   last_check_unix_ms;/* 0 = never probed */
    char      last_error[128];   /* last probe or request failure, "" if none */
    struct cfg_strlist models_found;     /* discover_models, owned */
    struct cfg_strlist containers_found; /* Infernet /info, owned */
    /* passive ejection (health.c): out until ejected_until_ms */
    int64_t   ejected_until_ms;  /* monotonic; 0 = not ejected */
    int64_t   ejected_at_ms;     /* when the current or last one began */
    int64_t   ejection_end_ms;   /* when the last ejection ended, 0 = never */
    int       ejections;         /* the multiplier: recent ejections in a row */
    uint64_t  ejections_total;
    int       probe_path_noted;  /* the default probe path's 404/405 was told */
    int64_t   shared_open_until_ms; /* another replica's open breaker (advice) */
    struct model_breaker **mbr;  /* per model, made on first use; stable */
    size_t    nmbr;
    /* observe.c: what /admin/events last said about it */
    int       ev_breaker;        /* enum breaker_state */
    int       ev_out;            /* host_out told (1 probe, 2 passive, 3 breaker) */
};

struct key_state {
    struct state_entry e;        /* e.key is the key id */
    uint64_t  uses;
    int       disabled;          /* until reload */
    int64_t   cooldown_until_ms;
    int       last_status;       /* upstream status that changed its state */
    int       ev_state;          /* observe.c: 0 active, 1 cooling, 2 disabled */
};

/* Every function below: caller holds the state lock (lock.h; checked by
 * lock_assert_held() in the asan and tsan builds). */

/* +1 ref; a new entry starts healthy, idle, with a breaker built from `bp`. */
struct host_state *state_host_get(const char *name, const struct breaker_params *bp);
void state_host_put(struct host_state *h);              /* -1 ref, frees at 0 */
/* The host's breaker for `model`, made on first use with `bp`; NULL when
 * the host has too many already or memory is short. */
struct breaker *state_model_breaker(struct host_state *h, const char *model,
                                    const struct breaker_params *bp);
/* Applies new params to every model breaker of h (reload). */
void state_model_breakers_params(struct host_state *h, const struct breaker_params *bp);
struct key_state *state_key_get(const char *id);
void state_key_put(struct key_state *k);
size_t state_hosts_count(void);

#endif
