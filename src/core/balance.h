/*
 * balance.h -- picking the upstream node for one request.
 *
 * A `struct balance` is built once per configuration snapshot from the
 * static facts about each node (weight, priority, region, models) and owns
 * the strategy's own state (round-robin cursors, the weighted round-robin
 * schedule, the consistent-hash rings, its random generator). It is pure:
 * no clock, no I/O. Everything that changes at run time (health and breaker
 * verdict, in-flight and pending counts, latency, recovery share) lives in
 * an array of `struct balance_live` that the caller owns and updates, one
 * entry per node, in the same order as the nodes given to balance_new().
 *
 * What a pick honours, whatever the strategy:
 *   - `usable` (the caller's health + breaker verdict), except in panic
 *     mode (balance_panic_update, below);
 *   - `max_concurrent` (a node with in_flight >= max_concurrent is full);
 *   - the request's model: nodes are indexed per model at build time, so a
 *     request for model M only ever looks at nodes serving M (a node that
 *     lists no models serves any model);
 *   - priority tiers: only the lowest tier holding an eligible node is used;
 *   - prefer_region: within a tier, nodes of that region first, the
 *     tier's other nodes only when none of the region is eligible;
 *   - the exclude set (nodes this request already tried);
 *   - an optional caller predicate (e.g. Infernet containers);
 *   - `share` in [0,1], the fraction of its normal traffic a node takes
 *     while it recovers after its breaker closed. Share is soft: a node is
 *     never refused only for its share when nothing else is eligible.
 *
 * Cost of a pick, n = nodes in the (model, tier, region) group picked from:
 *   round-robin          O(1) typical, from the cursor to the next eligible
 *   weighted-round-robin n <= BALANCE_SCAN_MAX: nginx's smooth algorithm,
 *                        O(n); larger: earliest-deadline-first on a binary
 *                        heap (as Envoy), O(log n)
 *   least-connections,   n <= BALANCE_SCAN_MAX: exact minimum, O(n);
 *   least-pending        larger: power of two random choices, O(1)
 *   latency              power of two distinct choices drawn by weight,
 *                        Peak-EWMA x (in-flight + 1), O(1)
 *   random               by weight (Vose's alias table), O(1)
 *   consistent-hash      binary search on the ring, O(log n)
 * When the fast path meets only ineligible nodes (it tries up to
 * BALANCE_PROBES candidates, 64 ring points for consistent-hash), the group
 * is scanned: worst case O(n) per tier, i.e. a pick costs O(size of the
 * model's pool) when (almost) every node is out, e.g. a whole primary tier
 * down in active-passive setups (about 1-2 ns per node scanned).
 * A `struct balance` is not thread safe: one per worker, or a lock. The
 * gateway shares one per snapshot: callers of balance_pick(),
 * balance_panic_update() and balance_observe_peak() hold the state lock
 * (lock.h; checked by lock_assert_held() in the asan and tsan builds).
 */
#ifndef INFERGATE_BALANCE_H
#define INFERGATE_BALANCE_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"         /* enum cfg_strategy */

/* Groups up to this many nodes use exact O(n) strategies (see above). */
#define BALANCE_SCAN_MAX     64
/* Fast-path candidates tried before falling back to a scan of the group:
 * with 90% of a group down, 0.9^64 = 0.1% of picks end up scanning. */
#define BALANCE_PROBES       64
/* Consistent hash: ring points per unit of weight, and the ring's cap. */
#define BALANCE_VNODES       64
#define BALANCE_RING_MAX     ((size_t)1 << 20)
/* Weights are clamped to 1..BALANCE_WEIGHT_MAX. */
#define BALANCE_WEIGHT_MAX   1000000
/* Latency strategy: the default decay (time constant of the Peak-EWMA,
 * and the age after which an estimate no longer counts), and the least
 * sample (the caller's clock ticks in ms: 0 means "under 1 ms"). */
#define BALANCE_LATENCY_DECAY_MS  10000
#define BALANCE_LATENCY_MIN_MS    0.5

/* The static facts about one node. Strings are copied by balance_new(). */
struct balance_node_cfg {
    const char  *name;           /* consistent-hash identity; NULL = index */
    int          weight;         /* >= 1 */
    int          priority;       /* lower tier is preferred */
    const char  *region;         /* NULL = no region */
    const char *const *models;   /* nmodels == 0: serves any model */
    size_t       nmodels;
};

/* The run-time signals of one node, owned and updated by the caller.
 * Start from balance_live_init(): a zeroed entry has share 0, which only
 * gets traffic when nothing else is eligible. */
struct balance_live {
    int     usable;              /* health + breaker verdict; 0 = never */
    int     in_flight;           /* requests sent and not yet finished */
    int     max_concurrent;      /* 0 = unlimited */
    int     pending;             /* Infernet pending jobs (least-pending) */
    double  ewma_ms;             /* Peak-EWMA latency; <= 0 = no sample */
    int64_t ewma_at_ms;          /* caller's clock at its last sample */
    double  share;               /* 1 = full traffic, 0.3 = ~30% of it */
};

/* What one request asks for. Zero-initialised = no constraint. */
struct balance_query {
    const char  *model;          /* NULL = any node */
    const char  *prefer_region;  /* NULL = none */
    const char  *hash_key;       /* consistent-hash input; NULL = random */
    size_t       hash_key_len;   /* 0 = hash_key is NUL-terminated */
    const int   *exclude;        /* node indices already tried (small) */
    size_t       nexclude;
    int        (*filter)(void *ctx, int node);  /* NULL = all pass */
    void        *filter_ctx;
    int64_t      now_ms;         /* caller's clock (latency: sample ages) */
};

/* Why balance_pick() found nothing; the caller maps it to a status. */
enum balance_status {
    BALANCE_OK = 0,
    BALANCE_NO_MODEL,            /* no node serves the model */
    BALANCE_NONE_USABLE,         /* no usable node (503) */
    BALANCE_ALL_TRIED,           /* every usable node is excluded */
    BALANCE_ALL_FULL             /* usable nodes are all full (429/queue) */
};

struct balance;

/*
 * Builds the balancer for `n` nodes (n may be 0). `seed` seeds the random
 * choices, so a test can replay a sequence. Returns NULL on a bad
 * strategy or out of memory. Does not keep `nodes`.
 */
struct balance *balance_new(enum cfg_strategy strategy,
                            const struct balance_node_cfg *nodes, size_t n,
                            uint64_t seed);
void balance_free(struct balance *b);

/*
 * Picks a node for the request `q` (NULL = no constraint) given the live
 * signals `*live[0..n-1]` (pointers, so the entries can live inside the
 * caller's per-host state). Returns the node's index, or -1 with the reason
 * in `*status` (status may be NULL). Updates the strategy's state; never
 * changes `live`: the caller counts the request in in_flight itself.
 */
int balance_pick(struct balance *b, struct balance_live *const *live,
                 const struct balance_query *q, enum balance_status *status);

/* 1 when some node serves `model` (any node when model is NULL). */
int balance_serves(const struct balance *b, const char *model);
size_t balance_size(const struct balance *b);
const char *balance_status_name(enum balance_status s);

/*
 * Panic mode (as Envoy's): a priority tier of a pool (the nodes serving a
 * model) whose share of `usable` nodes is below `threshold` (0..1; 0 =
 * never) is in panic. balance_pick() passes over tiers in panic first;
 * when no other tier has an eligible node it balances over every node of
 * the first tier in panic that has one, as if all were usable (the rest of
 * what a pick honours still applies: filter, max_concurrent, exclude).
 * balance_panic_update() recomputes the verdicts from `live` (call it
 * whenever `usable` changes; a new balancer starts with none in panic),
 * calls `changed` (may be NULL) for each tier whose verdict flipped, and
 * returns how many tiers are in panic; O(nodes of all pools).
 * balance_panic_list() calls `fn` (may be NULL) for each tier in panic
 * and returns how many there are. A node appears in the tiers of every
 * pool it belongs to, so two pools may report the same set of nodes.
 */
struct balance_tier {
    int              priority;
    const uint32_t  *node;       /* node indices, ascending */
    size_t           n;
    size_t           usable;
    int              panic;
};
typedef void (*balance_tier_fn)(void *ctx, const struct balance_tier *t);

size_t balance_panic_update(struct balance *b, struct balance_live *const *live,
                            double threshold, balance_tier_fn changed, void *ctx);
size_t balance_panic_list(const struct balance *b, balance_tier_fn fn, void *ctx);

/* Sets every entry to usable, idle, unlimited, share 1. */
void balance_live_init(struct balance_live *live, size_t n);

/*
 * The latency strategy's decay in ms (<= 0: BALANCE_LATENCY_DECAY_MS, the
 * default until this is called). A pick reads a node's estimate faded by
 * e^(-age/decay), age = the time since its last sample (the query's now_ms
 * minus ewma_at_ms); one whose last sample is at least `decay` old counts
 * as no estimate: the node is tried again like a new one.
 */
void balance_set_latency_decay(struct balance *b, int64_t decay_ms);

/*
 * Folds one attempt's latency, taken at `now_ms`, into a node's Peak-EWMA
 * (Finagle's): a sample above the estimate replaces it at once; a lower one
 * pulls it down with weight 1 - exp(-elapsed / decay), elapsed = the time
 * since the previous sample, so the estimate follows the last `decay` ms of
 * answers whatever their rate. Without a current estimate (none yet, or
 * older than `decay`) the sample is taken as is. With `peak_only` (failed
 * or abandoned attempts, whose time is a lower bound) the sample can raise
 * a current estimate but never lowers one, nor starts one.
 */
void balance_observe_peak(struct balance_live *l, double sample_ms,
                          int64_t now_ms, int64_t decay_ms, int peak_only);

#endif
