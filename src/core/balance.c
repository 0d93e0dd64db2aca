/*
 * balance.c -- the balancing strategies (contract and costs: balance.h).
 *
 * Build time. Nodes are gathered into pools: one per distinct set of nodes
 * serving a model (models served by the same nodes share one pool), the
 * pool of every node (requests naming no model) and the pool of nodes that
 * list no model (they serve models nobody lists). A pool is cut into
 * priority tiers, and a tier into a group of all its nodes plus one group
 * per region (shared with the tier's group when the tier has one region).
 * Each group carries the strategy's state for exactly its nodes, so a pick
 * never walks nodes that could not serve the request.
 *
 * Pick time. For each tier, lowest priority first: the preferred region's
 * group, then the whole tier. In a group the strategy's fast path looks at
 * up to BALANCE_PROBES candidates; when none of them is eligible, the
 * group is scanned once. The scans ignore `share` (share is soft), so a
 * recovering node still serves when it is the only one left.
 *
 * Everything random draws from one splitmix64 stream seeded by the caller.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "balance.h"
#include "lock.h"

#define NO_POS          ((size_t)-1)

/* FNV-1a, then the splitmix64 finaliser for a good spread of the bits. */
#define FNV_OFFSET      0xcbf29ce484222325ULL
#define FNV_PRIME       0x100000001b3ULL
#define GOLDEN_GAMMA    0x9e3779b97f4a7c15ULL
#define MIX_MUL1        0xbf58476d1ce4e5b9ULL
#define MIX_MUL2        0x94d049bb133111ebULL
#define MIX_SHIFT1      30
#define MIX_SHIFT2      27
#define MIX_SHIFT3      31
#define DOUBLE_BITS     53          /* random doubles in [0,1) */
#define HALF_BITS       32          /* a 64-bit draw gives two 32-bit ones */
#define U32_SPAN        4294967295.0

/* Maps a signed priority onto unsigned keys that sort the same way. */
#define PRIORITY_FLIP   0x80000000u
#define KEY_SHIFT       32

/* EDF: a node's k-th turn is due at (k + phase) / weight; phases spread
 * over (0,1) by position so that light nodes do not all fall due at once. */
#define EDF_PHASE_MID   0.5

/* Consistent hash: ring points walked before the rendezvous scan. */
#define RING_WALK       64

/* Latency: weighted draws of the second candidate that may land on the
 * first before it is drawn uniformly among the others (skewed weights). */
#define DISTINCT_REDRAWS 4

/* Names (models, regions) interned to ids through an open-addressing table. */
struct name_slot {
    char     *name;                 /* NULL = empty */
    uint64_t  hash;
    uint32_t  id;
};

struct name_table {
    struct name_slot *slot;
    size_t            mask;         /* capacity - 1, a power of two */
};

/* Vose's alias method: position p is drawn when a uniform 32-bit u is at
 * most `keep`, else its `alias` is. */
struct alias_entry {
    uint32_t  keep;
    uint32_t  alias;
};

/* EDF: the heap holds its keys inline, so a sift reads one array. */
struct edf_entry {
    double    due;                  /* when the next turn is due */
    uint32_t  pos;                  /* position in the group */
};

struct ring_point {
    uint64_t  hash;
    uint32_t  pos;                  /* position in the group */
};

/* A set of nodes picked from together, with the strategy's state. */
struct group {
    uint32_t *node;                 /* node indices, ascending */
    size_t    n;
    size_t    cursor;               /* round-robin; tie rotation in scans */
    struct alias_entry *alias;      /* weighted draws; NULL = equal */
    double   *current;              /* smooth wrr, nginx (small groups) */
    struct edf_entry *heap;         /* smooth wrr, EDF: min-heap by due */
    uint32_t *slot;                 /* EDF: position -> heap index */
    uint64_t *turns;                /* EDF: turns taken */
    struct ring_point *ring;        /* consistent hash, by hash */
    size_t    nring;
};

struct region_group {
    uint32_t      region;
    struct group *g;
};

struct tier {
    struct group        *all;
    struct region_group *region;    /* ascending region id */
    size_t               nregion;
    int                  panic;     /* balance_panic_update(): too few usable */
    size_t               usable;    /* as of the last balance_panic_update() */
};

struct pool {
    uint32_t    *member;            /* every node, ascending */
    size_t       n;
    uint64_t     sig;               /* hash of member, to share pools */
    struct tier *tier;              /* ascending priority */
    size_t       ntier;
};

struct balance {
    enum cfg_strategy strategy;
    size_t       n;
    uint32_t    *weight;
    int         *priority;
    uint32_t    *region;            /* 0 = none, else an id of `regions` */
    uint64_t    *name_hash;
    uint64_t     rng;
    int64_t      latency_decay_ms;  /* latency: estimates expire after it */
    struct pool *pool;
    size_t       npool;
    size_t       all_pool;
    size_t       any_pool;          /* NO_POS: every node lists models */
    struct name_table models;       /* model -> pool index */
    const struct name_slot *last_model; /* balance_pick()'s last model found */
    struct name_table regions;      /* region -> id (from 1) */
    struct group **group;           /* every group, owned here */
    size_t       ngroup;
    size_t       capgroup;
};

/* One pick's inputs. */
struct pick {
    struct balance             *b;
    struct balance_live *const *live;   /* one pointer per node */
    const struct balance_query *q;
    uint64_t                    key;    /* hash of q->hash_key */
    int                         panic;  /* unusable nodes count as usable */
};

/* ---------------------------------------------------------------- hashing */

static uint64_t mix64(uint64_t x)
{
    x ^= x >> MIX_SHIFT1;
    x *= MIX_MUL1;
    x ^= x >> MIX_SHIFT2;
    x *= MIX_MUL2;
    x ^= x >> MIX_SHIFT3;
    return x;
}

static uint64_t hash_bytes(const void *data, size_t len)
{
    const unsigned char *p = data;
    uint64_t h = FNV_OFFSET;

    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= FNV_PRIME;
    }
    return mix64(h);
}

static uint64_t rng_next(struct balance *b)
{
    b->rng += GOLDEN_GAMMA;
    return mix64(b->rng);
}

static double rng_unit(struct balance *b)
{
    return ldexp((double)(rng_next(b) >> (64 - DOUBLE_BITS)), -DOUBLE_BITS);
}

static uint64_t rng_below(struct balance *b, uint64_t n)
{
    return rng_next(b) % n;
}

/* ------------------------------------------------------------ name table */

static int names_init(struct name_table *t, size_t max)
{
    size_t cap = 1;

    while (cap < 2 * max + 1)       /* load factor at most 1/2 */
        cap <<= 1;
    t->slot = calloc(cap, sizeof *t->slot);
    t->mask = cap - 1;
    return t->slot ? 0 : -1;
}

/* The slot holding `name`, or the empty slot where it would go. */
static struct name_slot *names_slot(const struct name_table *t,
                                    const char *name, uint64_t h)
{
    for (size_t i = h & t->mask;; i = (i + 1) & t->mask) {
        struct name_slot *s = &t->slot[i];

        if (s->name == NULL)
            return s;
        if (s->hash == h && strcmp(s->name, name) == 0)
            return s;
    }
}

static const struct name_slot *names_find(const struct name_table *t,
                                          const char *name)
{
    const struct name_slot *s;

    if (t->slot == NULL || name == NULL)
        return NULL;
    s = names_slot(t, name, hash_bytes(name, strlen(name)));
    return s->name ? s : NULL;
}

/* Returns the id of `name`, adding it as `next_id` if new; -1 on OOM. */
static int64_t names_add(struct name_table *t, const char *name,
                         uint32_t next_id)
{
    uint64_t h = hash_bytes(name, strlen(name));
    struct name_slot *s = names_slot(t, name, h);

    if (s->name)
        return s->id;
    s->name = strdup(name);
    if (s->name == NULL)
        return -1;
    s->hash = h;
    s->id = next_id;
    return next_id;
}

static void names_free(struct name_table *t)
{
    if (t->slot == NULL)
        return;
    for (size_t i = 0; i <= t->mask; i++)
        free(t->slot[i].name);
    free(t->slot);
    t->slot = NULL;
}

/* --------------------------------------------------------- live signals */

static int nonneg(int v)
{
    return v > 0 ? v : 0;
}

static double share_of(const struct balance_live *l)
{
    if (!(l->share > 0.0))          /* also NaN */
        return 0.0;
    return l->share < 1.0 ? l->share : 1.0;
}

static int is_full(const struct balance_live *l)
{
    return l->max_concurrent > 0 && l->in_flight >= l->max_concurrent;
}

static int is_excluded(const struct balance_query *q, uint32_t node)
{
    if (q->exclude == NULL)
        return 0;
    for (size_t i = 0; i < q->nexclude; i++)
        if (q->exclude[i] == (int)node)
            return 1;
    return 0;
}

static int passes_filter(const struct balance_query *q, uint32_t node)
{
    return q->filter == NULL || q->filter(q->filter_ctx, (int)node);
}

static int eligible(const struct pick *pk, uint32_t node)
{
    const struct balance_live *l = pk->live[node];

    return (l->usable || pk->panic) && !is_full(l) && !is_excluded(pk->q, node) &&
           passes_filter(pk->q, node);
}

/* The recovery accept test: passes with probability `share`. */
static int takes_share(struct pick *pk, uint32_t node)
{
    double s = share_of(pk->live[node]);

    if (s >= 1.0)
        return 1;
    if (s <= 0.0)
        return 0;
    return rng_unit(pk->b) < s;
}

/* ------------------------------------------------------------ sampling */

/* A uniform index below n (< 2^32), by multiply and shift. */
static size_t below_u32(uint64_t r, size_t n)
{
    return (size_t)(((r >> HALF_BITS) * (uint64_t)n) >> HALF_BITS);
}

/* A position drawn with probability proportional to its weight, O(1). */
static size_t sample_pos(struct pick *pk, const struct group *g)
{
    uint64_t r = rng_next(pk->b);
    size_t p = below_u32(r, g->n);

    if (g->alias == NULL)
        return p;
    return (uint32_t)r <= g->alias[p].keep ? p : g->alias[p].alias;
}

/* Weighted reservoir over the eligible nodes (share ignored). */
static size_t scan_weighted(struct pick *pk, const struct group *g)
{
    uint64_t total = 0;
    size_t best = NO_POS;

    for (size_t p = 0; p < g->n; p++) {
        uint32_t w = pk->b->weight[g->node[p]];

        if (!eligible(pk, g->node[p]))
            continue;
        total += w;
        if (rng_below(pk->b, total) < w)
            best = p;
    }
    return best;
}

/* "a is strictly better than b" for the comparing strategies. */
typedef int (*better_fn)(const struct pick *pk, uint32_t a, uint32_t b);

/* The best eligible node by `better`, ties rotating from the cursor. */
static size_t scan_best(struct pick *pk, struct group *g, better_fn better)
{
    size_t best = NO_POS, p = g->cursor;

    for (size_t i = 0; i < g->n; i++, p = p + 1 == g->n ? 0 : p + 1) {
        if (!eligible(pk, g->node[p]))
            continue;
        if (best == NO_POS || better(pk, g->node[p], g->node[best]))
            best = p;
    }
    if (best != NO_POS)
        g->cursor = best + 1 == g->n ? 0 : best + 1;
    return best;
}

/* Power of two choices, drawn with replacement as in the classic analysis.
 * With `use_share` a candidate must also pass the recovery accept test. */
static size_t pick_two(struct pick *pk, const struct group *g,
                       better_fn better, int use_share)
{
    size_t cand[2], found = 0;

    for (int probe = 0; probe < BALANCE_PROBES && found < 2; probe++) {
        size_t p = sample_pos(pk, g);

        if (!eligible(pk, g->node[p]))
            continue;
        if (use_share && !takes_share(pk, g->node[p]))
            continue;
        cand[found++] = p;
    }
    if (found == 0)
        return NO_POS;
    if (found == 1)
        return cand[0];
    return better(pk, g->node[cand[1]], g->node[cand[0]]) ? cand[1] : cand[0];
}

/* ----------------------------------------------------------- strategies */

/* The next eligible node from the cursor; the cursor then moves past it,
 * so eligible nodes alternate evenly whatever is skipped. */
static size_t pick_round_robin(struct pick *pk, struct group *g)
{
    size_t first = NO_POS, chosen = NO_POS, p = g->cursor;

    for (size_t i = 0; i < g->n; i++, p = p + 1 == g->n ? 0 : p + 1) {
        if (!eligible(pk, g->node[p]))
            continue;
        if (takes_share(pk, g->node[p])) {
            chosen = p;
            break;
        }
        if (first == NO_POS)
            first = p;
    }
    if (chosen == NO_POS)
        chosen = first;
    if (chosen != NO_POS)
        g->cursor = chosen + 1 == g->n ? 0 : chosen + 1;
    return chosen;
}

/* nginx's smooth weighted round-robin; share scales the effective weight,
 * which makes recovery deterministic here. */
static size_t pick_smooth(struct pick *pk, struct group *g)
{
    size_t best = NO_POS;
    double total = 0.0;

    for (size_t p = 0; p < g->n; p++) {
        uint32_t node = g->node[p];
        double w;

        if (!eligible(pk, node))
            continue;
        w = pk->b->weight[node] * share_of(pk->live[node]);
        g->current[p] += w;
        total += w;
        if (best == NO_POS || g->current[p] > g->current[best])
            best = p;
    }
    if (best != NO_POS)
        g->current[best] -= total;
    return best;
}

static double edf_due(const struct balance *b, const struct group *g,
                      size_t pos)
{
    double phase = ((double)pos + EDF_PHASE_MID) / (double)g->n;

    return ((double)g->turns[pos] + phase) / b->weight[g->node[pos]];
}

static int edf_before(const struct edf_entry *a, const struct edf_entry *b)
{
    return a->due < b->due || (a->due == b->due && a->pos < b->pos);
}

static void edf_sift_down(struct group *g, size_t i)
{
    struct edf_entry e = g->heap[i];

    for (;;) {
        size_t c = 2 * i + 1;

        if (c >= g->n)
            break;
        if (c + 1 < g->n && edf_before(&g->heap[c + 1], &g->heap[c]))
            c++;
        if (!edf_before(&g->heap[c], &e))
            break;
        g->heap[i] = g->heap[c];
        g->slot[g->heap[i].pos] = (uint32_t)i;
        i = c;
    }
    g->heap[i] = e;
    g->slot[e.pos] = (uint32_t)i;
}

/* A node's turn is spent (taken or skipped): its next one falls due. */
static void edf_advance(const struct balance *b, struct group *g, size_t pos)
{
    size_t i = g->slot[pos];

    g->turns[pos]++;
    g->heap[i].due = edf_due(b, g, pos);
    edf_sift_down(g, i);
}

/* Earliest deadline first (Envoy's scheduler). An ineligible node at the
 * top loses its turn rather than piling up a burst for when it returns. */
static size_t pick_edf(struct pick *pk, struct group *g)
{
    size_t best = NO_POS;

    for (int probe = 0; probe < BALANCE_PROBES; probe++) {
        size_t pos = g->heap[0].pos;
        int ok = eligible(pk, g->node[pos]) && takes_share(pk, g->node[pos]);

        edf_advance(pk->b, g, pos);
        if (ok)
            return pos;
    }
    for (size_t i = 0; i < g->n; i++) {
        const struct edf_entry *e = &g->heap[i];

        if (eligible(pk, g->node[e->pos]) &&
            (best == NO_POS || edf_before(e, &g->heap[g->slot[best]])))
            best = e->pos;
    }
    if (best != NO_POS)
        edf_advance(pk->b, g, best);
    return best;
}

/* Least connections / least pending: load per unit of weight, the share
 * scaling the weight (a rejection test would feed back through the load). */
static double load_score(const struct pick *pk, uint32_t node)
{
    const struct balance_live *l = pk->live[node];
    double load = nonneg(l->in_flight) + 1.0;
    double cap = pk->b->weight[node] * share_of(l);

    /* Pending counts come from polls; adding our own in-flight requests
     * keeps a stale count from drawing every request to one node. */
    if (pk->b->strategy == STRAT_LEAST_PENDING)
        load += nonneg(l->pending);
    return cap > 0.0 ? load / cap : HUGE_VAL;
}

static int load_better(const struct pick *pk, uint32_t a, uint32_t b)
{
    return load_score(pk, a) < load_score(pk, b);
}

static size_t pick_least(struct pick *pk, struct group *g)
{
    size_t pos;

    if (g->n <= BALANCE_SCAN_MAX)
        return scan_best(pk, g, load_better);
    pos = pick_two(pk, g, load_better, 0);
    return pos != NO_POS ? pos : scan_best(pk, g, load_better);
}

/* How long ago the node's last latency sample was taken (>= 0). */
static int64_t latency_age(const struct pick *pk, const struct balance_live *l)
{
    int64_t age = pk->q->now_ms - l->ewma_at_ms;

    return age > 0 ? age : 0;
}

/* 1 when the node has a latency estimate younger than the decay. */
static int latency_known(const struct pick *pk, const struct balance_live *l)
{
    return l->ewma_ms > 0.0 && latency_age(pk, l) < pk->b->latency_decay_ms;
}

/* Peak-EWMA cost: the estimate, faded toward 0 by e^(-age/decay) since the
 * node's last answer (as Finagle reads it: an idle node is tried again
 * sooner the closer it was), times the queue a request would join. A node
 * without a current estimate (new, or not answered for `decay`) is taken
 * to be as fast as the node it is compared with, so it is compared by
 * in-flight only and wins ties: it is tried at once, yet holds no more
 * requests than the other while its first answers are pending. */
static int latency_better(const struct pick *pk, uint32_t a, uint32_t b)
{
    const struct balance_live *la = pk->live[a], *lb = pk->live[b];
    int ka = latency_known(pk, la), kb = latency_known(pk, lb);

    if (ka && kb) {
        double ca = la->ewma_ms * (nonneg(la->in_flight) + 1.0);
        double cb = lb->ewma_ms * (nonneg(lb->in_flight) + 1.0);
        int64_t older = latency_age(pk, la) - latency_age(pk, lb);

        if (older != 0)             /* one exp() for the pair */
            cb *= exp((double)older / (double)pk->b->latency_decay_ms);
        return ca < cb;
    }
    if (nonneg(la->in_flight) != nonneg(lb->in_flight))
        return nonneg(la->in_flight) < nonneg(lb->in_flight);
    return !ka && kb;
}

/* The second candidate when draws keep missing: by weight among the
 * eligible nodes other than `first` that pass the share test (a
 * recovering node keeps its share even in a pair). */
static size_t scan_other(struct pick *pk, const struct group *g, size_t first)
{
    uint64_t total = 0;
    size_t best = NO_POS;

    for (size_t p = 0; p < g->n; p++) {
        uint32_t w = pk->b->weight[g->node[p]];

        if (p == first || !eligible(pk, g->node[p]) ||
            !takes_share(pk, g->node[p]))
            continue;
        total += w;
        if (rng_below(pk->b, total) < w)
            best = p;
    }
    return best;
}

/* Power of two choices over two different nodes, drawn by weight (nginx's
 * `random two`). Drawn with replacement, any node however slow keeps about
 * 1/n^2 of the traffic (a quarter with two hosts); distinct, the worse of
 * two eligible nodes never wins on score. A second draw landing on the
 * first is redrawn, uniformly among the others after DISTINCT_REDRAWS
 * tries; the group is scanned for it after as many misses in a small
 * group, BALANCE_PROBES more draws in a large one (nearly all of it out:
 * with 90% of the nodes out, 0.1% of the picks scan). */
static size_t pick_two_distinct(struct pick *pk, const struct group *g)
{
    size_t first = NO_POS, second = NO_POS;
    int misses = 0;

    for (int probe = 0; probe < BALANCE_PROBES && first == NO_POS; probe++) {
        size_t p = sample_pos(pk, g);

        if (eligible(pk, g->node[p]) && takes_share(pk, g->node[p]))
            first = p;
    }
    if (first == NO_POS || g->n < 2)
        return first;
    for (; misses < BALANCE_PROBES && second == NO_POS; misses++) {
        size_t p;

        if (misses >= DISTINCT_REDRAWS && g->n <= BALANCE_SCAN_MAX)
            break;
        p = sample_pos(pk, g);
        if (p == first) {
            if (misses < DISTINCT_REDRAWS)
                continue;
            p = below_u32(rng_next(pk->b), g->n - 1);
            p += p >= first;
        }
        if (eligible(pk, g->node[p]) && takes_share(pk, g->node[p]))
            second = p;
    }
    if (second == NO_POS)
        second = scan_other(pk, g, first);
    if (second == NO_POS)
        return first;
    return latency_better(pk, g->node[second], g->node[first]) ? second : first;
}

static size_t pick_latency(struct pick *pk, struct group *g)
{
    size_t pos = pick_two_distinct(pk, g);

    return pos != NO_POS ? pos : scan_best(pk, g, latency_better);
}

static size_t pick_random(struct pick *pk, struct group *g)
{
    for (int probe = 0; probe < BALANCE_PROBES; probe++) {
        size_t p = sample_pos(pk, g);

        if (eligible(pk, g->node[p]) && takes_share(pk, g->node[p]))
            return p;
    }
    return scan_weighted(pk, g);
}

/* Walks the ring clockwise from the key; past RING_WALK points, highest
 * rendezvous score among the eligible nodes (stable for a given key). */
static size_t pick_hash(struct pick *pk, struct group *g)
{
    size_t lo = 0, hi = g->nring, steps, best = NO_POS;
    uint64_t best_score = 0;

    if (pk->q->hash_key == NULL)
        return pick_random(pk, g);
    while (lo < hi) {               /* first point with hash >= key */
        size_t mid = lo + (hi - lo) / 2;

        if (g->ring[mid].hash < pk->key)
            lo = mid + 1;
        else
            hi = mid;
    }
    steps = g->nring < RING_WALK ? g->nring : RING_WALK;
    for (size_t i = 0; i < steps; i++) {
        size_t pos = g->ring[(lo + i) % g->nring].pos;

        if (eligible(pk, g->node[pos]) && takes_share(pk, g->node[pos]))
            return pos;
    }
    for (size_t p = 0; p < g->n; p++) {
        uint64_t score;

        if (!eligible(pk, g->node[p]))
            continue;
        score = mix64(pk->key ^ pk->b->name_hash[g->node[p]]);
        if (best == NO_POS || score > best_score) {
            best = p;
            best_score = score;
        }
    }
    return best;
}

static size_t pick_group(struct pick *pk, struct group *g)
{
    switch (pk->b->strategy) {
    case STRAT_ROUND_ROBIN:
        return pick_round_robin(pk, g);
    case STRAT_WEIGHTED_ROUND_ROBIN:
        return g->current ? pick_smooth(pk, g) : pick_edf(pk, g);
    case STRAT_LEAST_CONNECTIONS:
    case STRAT_LEAST_PENDING:
        return pick_least(pk, g);
    case STRAT_LATENCY:
        return pick_latency(pk, g);
    case STRAT_RANDOM:
        return pick_random(pk, g);
    case STRAT_CONSISTENT_HASH:
        return pick_hash(pk, g);
    }
    return NO_POS;
}

/* ------------------------------------------------------------ build */

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

    return x < y ? -1 : x > y;
}

static int cmp_point(const void *a, const void *b)
{
    const struct ring_point *x = a, *y = b;

    if (x->hash != y->hash)
        return x->hash < y->hash ? -1 : 1;
    return x->pos < y->pos ? -1 : x->pos > y->pos;
}

static void group_free(struct group *g)
{
    if (g == NULL)
        return;
    free(g->node);
    free(g->alias);
    free(g->current);
    free(g->heap);
    free(g->slot);
    free(g->turns);
    free(g->ring);
    free(g);
}

/* Vose's construction in integers: position p holds weight * n units
 * against a bar of `total`; a light one is topped up from a heavy one. */
static int group_init_alias(const struct balance *b, struct group *g)
{
    uint64_t total = 0, *units;
    uint32_t *light, *heavy;
    size_t nl = 0, nh = 0;
    int equal = 1, rc = -1;

    for (size_t p = 0; p < g->n; p++) {
        total += b->weight[g->node[p]];
        if (b->weight[g->node[p]] != b->weight[g->node[0]])
            equal = 0;
    }
    if (equal)
        return 0;
    g->alias = malloc(g->n * sizeof *g->alias);
    units = malloc(g->n * sizeof *units);
    light = malloc(g->n * sizeof *light);
    heavy = malloc(g->n * sizeof *heavy);
    if (!g->alias || !units || !light || !heavy)
        goto out;
    for (size_t p = 0; p < g->n; p++) {
        units[p] = (uint64_t)b->weight[g->node[p]] * g->n;
        g->alias[p].keep = UINT32_MAX;
        g->alias[p].alias = (uint32_t)p;
        if (units[p] < total)
            light[nl++] = (uint32_t)p;
        else
            heavy[nh++] = (uint32_t)p;
    }
    while (nl > 0 && nh > 0) {
        uint32_t l = light[--nl], h = heavy[nh - 1];

        g->alias[l].keep =
            (uint32_t)((double)units[l] / (double)total * U32_SPAN);
        g->alias[l].alias = h;
        units[h] -= total - units[l];
        if (units[h] < total) {
            nh--;
            light[nl++] = h;
        }
    }
    rc = 0;
out:
    free(units);
    free(light);
    free(heavy);
    return rc;
}

static int group_init_edf(const struct balance *b, struct group *g)
{
    g->heap = malloc(g->n * sizeof *g->heap);
    g->slot = malloc(g->n * sizeof *g->slot);
    g->turns = calloc(g->n, sizeof *g->turns);
    if (!g->heap || !g->slot || !g->turns)
        return -1;
    for (size_t p = 0; p < g->n; p++) {
        g->heap[p].pos = (uint32_t)p;
        g->heap[p].due = edf_due(b, g, p);
        g->slot[p] = (uint32_t)p;
    }
    for (size_t i = g->n / 2; i-- > 0;)
        edf_sift_down(g, i);
    return 0;
}

/* BALANCE_VNODES points per unit of weight, scaled down to fit the cap. A
 * point depends only on its node's name and number, so nodes coming and
 * going move only their own keys (unless the cap rescales the ring). */
static int group_init_ring(const struct balance *b, struct group *g)
{
    uint64_t total = 0;
    double scale = 1.0;
    size_t k = 0;

    for (size_t p = 0; p < g->n; p++)
        total += (uint64_t)b->weight[g->node[p]] * BALANCE_VNODES;
    if (total > BALANCE_RING_MAX)
        scale = (double)BALANCE_RING_MAX / (double)total;
    g->nring = 0;
    for (size_t p = 0; p < g->n; p++) {
        size_t pts = (size_t)(b->weight[g->node[p]] * BALANCE_VNODES * scale);

        g->nring += pts ? pts : 1;
    }
    g->ring = malloc(g->nring * sizeof *g->ring);
    if (g->ring == NULL)
        return -1;
    for (size_t p = 0; p < g->n; p++) {
        uint64_t base = b->name_hash[g->node[p]];
        size_t pts = (size_t)(b->weight[g->node[p]] * BALANCE_VNODES * scale);

        for (size_t j = 0; j < (pts ? pts : 1); j++) {
            g->ring[k].hash = mix64(base + (uint64_t)(j + 1) * GOLDEN_GAMMA);
            g->ring[k].pos = (uint32_t)p;
            k++;
        }
    }
    qsort(g->ring, g->nring, sizeof *g->ring, cmp_point);
    return 0;
}

static int group_init_state(const struct balance *b, struct group *g)
{
    switch (b->strategy) {
    case STRAT_WEIGHTED_ROUND_ROBIN:
        if (g->n > BALANCE_SCAN_MAX)
            return group_init_edf(b, g);
        g->current = calloc(g->n, sizeof *g->current);
        return g->current ? 0 : -1;
    case STRAT_LATENCY:
    case STRAT_RANDOM:
        return group_init_alias(b, g);
    case STRAT_CONSISTENT_HASH:
        if (group_init_alias(b, g) < 0)
            return -1;
        return group_init_ring(b, g);
    case STRAT_ROUND_ROBIN:
    case STRAT_LEAST_CONNECTIONS:
    case STRAT_LEAST_PENDING:
        break;
    }
    return 0;
}

/* A new group over node[0..n-1] (n >= 1), owned by `b`. */
static struct group *group_add(struct balance *b, const uint32_t *node,
                               size_t n)
{
    struct group *g;

    if (b->ngroup == b->capgroup) {
        size_t cap = b->capgroup ? 2 * b->capgroup : BALANCE_PROBES;
        struct group **v = realloc(b->group, cap * sizeof *v);

        if (v == NULL)
            return NULL;
        b->group = v;
        b->capgroup = cap;
    }
    g = calloc(1, sizeof *g);
    if (g == NULL)
        return NULL;
    b->group[b->ngroup++] = g;
    g->node = malloc(n * sizeof *g->node);
    if (g->node == NULL)
        return NULL;
    memcpy(g->node, node, n * sizeof *g->node);
    g->n = n;
    return group_init_state(b, g) < 0 ? NULL : g;
}

/* Region groups of one tier; `node` is the tier's nodes, `key` scratch. */
static int tier_regions(struct balance *b, struct tier *t,
                        const uint32_t *node, size_t n, uint64_t *key,
                        uint32_t *scratch)
{
    size_t nregion = 0;

    for (size_t i = 0; i < n; i++)
        key[i] = (uint64_t)b->region[node[i]] << KEY_SHIFT | node[i];
    qsort(key, n, sizeof *key, cmp_u64);
    for (size_t i = 0; i < n; i++)
        if ((key[i] >> KEY_SHIFT) != 0 &&
            (i == 0 || (key[i] >> KEY_SHIFT) != (key[i - 1] >> KEY_SHIFT)))
            nregion++;
    if (nregion == 0)
        return 0;
    t->region = calloc(nregion, sizeof *t->region);
    if (t->region == NULL)
        return -1;
    for (size_t s = 0, e; s < n; s = e) {
        uint32_t id = (uint32_t)(key[s] >> KEY_SHIFT);
        struct region_group *rg;

        for (e = s; e < n && (key[e] >> KEY_SHIFT) == id; e++)
            scratch[e - s] = (uint32_t)key[e];
        if (id == 0)
            continue;
        rg = &t->region[t->nregion++];
        rg->region = id;
        rg->g = e - s == n ? t->all : group_add(b, scratch, e - s);
        if (rg->g == NULL)
            return -1;
    }
    return 0;
}

static int pool_tiers(struct balance *b, struct pool *p)
{
    size_t n = p->n, ntier = 0;
    uint64_t *key = malloc((n + 1) * sizeof *key);
    uint64_t *rkey = malloc((n + 1) * sizeof *rkey);
    uint32_t *node = malloc((n + 1) * sizeof *node);
    uint32_t *scratch = malloc((n + 1) * sizeof *scratch);
    int rc = -1;

    if (!key || !rkey || !node || !scratch)
        goto out;
    for (size_t i = 0; i < n; i++) {
        uint32_t m = p->member[i];
        uint32_t prio = (uint32_t)b->priority[m] ^ PRIORITY_FLIP;

        key[i] = (uint64_t)prio << KEY_SHIFT | m;
    }
    qsort(key, n, sizeof *key, cmp_u64);
    for (size_t i = 0; i < n; i++)
        if (i == 0 || (key[i] >> KEY_SHIFT) != (key[i - 1] >> KEY_SHIFT))
            ntier++;
    p->tier = calloc(ntier + 1, sizeof *p->tier);
    if (p->tier == NULL)
        goto out;
    for (size_t s = 0, e; s < n; s = e) {
        struct tier *t = &p->tier[p->ntier++];
        uint64_t prio = key[s] >> KEY_SHIFT;

        for (e = s; e < n && (key[e] >> KEY_SHIFT) == prio; e++)
            node[e - s] = (uint32_t)key[e];
        t->all = group_add(b, node, e - s);
        if (t->all == NULL ||
            tier_regions(b, t, node, e - s, rkey, scratch) < 0)
            goto out;
    }
    rc = 0;
out:
    free(key);
    free(rkey);
    free(node);
    free(scratch);
    return rc;
}

/* Adds the pool of `member[0..n-1]` (ascending; ownership taken), or finds
 * the identical pool already built. Returns its index, NO_POS on OOM. */
static size_t pool_add(struct balance *b, uint32_t *member, size_t n)
{
    uint64_t sig = hash_bytes(member, n * sizeof *member);
    struct pool *p;

    for (size_t i = 0; i < b->npool; i++) {
        p = &b->pool[i];
        if (p->sig == sig && p->n == n &&
            memcmp(p->member, member, n * sizeof *member) == 0) {
            free(member);
            return i;
        }
    }
    p = &b->pool[b->npool++];
    p->member = member;
    p->n = n;
    p->sig = sig;
    return pool_tiers(b, p) < 0 ? NO_POS : b->npool - 1;
}

static int build_regions(struct balance *b,
                         const struct balance_node_cfg *nodes)
{
    uint32_t next = 1;

    if (names_init(&b->regions, b->n) < 0)
        return -1;
    for (size_t i = 0; i < b->n; i++) {
        int64_t id;

        if (nodes[i].region == NULL || nodes[i].region[0] == '\0')
            continue;
        id = names_add(&b->regions, nodes[i].region, next);
        if (id < 0)
            return -1;
        if (id == next)
            next++;
        b->region[i] = (uint32_t)id;
    }
    return 0;
}

/* Per model, the nodes listing it plus the nodes listing no model. */
static int build_model_lists(struct balance *b,
                             const struct balance_node_cfg *nodes,
                             uint32_t **list, size_t *len, size_t nmodel,
                             size_t nany)
{
    size_t *cap = calloc(nmodel + 1, sizeof *cap);

    if (cap == NULL)
        return -1;
    for (size_t i = 0; i < b->n; i++)
        for (size_t j = 0; j < nodes[i].nmodels; j++)
            if (nodes[i].models[j])
                cap[names_find(&b->models, nodes[i].models[j])->id]++;
    for (size_t m = 0; m < nmodel; m++) {
        list[m] = malloc((cap[m] + nany) * sizeof *list[m]);
        if (list[m] == NULL) {
            free(cap);
            return -1;
        }
    }
    free(cap);
    for (size_t i = 0; i < b->n; i++) {
        if (nodes[i].nmodels == 0) {
            for (size_t m = 0; m < nmodel; m++)
                list[m][len[m]++] = (uint32_t)i;
            continue;
        }
        for (size_t j = 0; j < nodes[i].nmodels; j++) {
            size_t m;

            if (nodes[i].models[j] == NULL)
                continue;
            m = names_find(&b->models, nodes[i].models[j])->id;
            if (len[m] == 0 || list[m][len[m] - 1] != i)
                list[m][len[m]++] = (uint32_t)i;
        }
    }
    return 0;
}

static int build_pools(struct balance *b, const struct balance_node_cfg *nodes)
{
    size_t total = 0, nany = 0, nmodel = 0;
    uint32_t **list = NULL, *all = NULL, *any = NULL;
    size_t *len = NULL, *pool_of = NULL;
    int rc = -1;

    for (size_t i = 0; i < b->n; i++) {
        total += nodes[i].nmodels;
        if (nodes[i].nmodels == 0)
            nany++;
    }
    if (names_init(&b->models, total) < 0)
        return -1;
    for (size_t i = 0; i < b->n; i++)
        for (size_t j = 0; j < nodes[i].nmodels; j++) {
            int64_t id;

            if (nodes[i].models[j] == NULL)
                continue;
            id = names_add(&b->models, nodes[i].models[j], (uint32_t)nmodel);
            if (id < 0)
                return -1;
            if ((size_t)id == nmodel)
                nmodel++;
        }
    b->pool = calloc(nmodel + 2, sizeof *b->pool);
    list = calloc(nmodel + 1, sizeof *list);
    len = calloc(nmodel + 1, sizeof *len);
    pool_of = calloc(nmodel + 1, sizeof *pool_of);
    all = malloc((b->n + 1) * sizeof *all);
    any = malloc((nany + 1) * sizeof *any);
    if (!b->pool || !list || !len || !pool_of || !all || !any)
        goto out;
    if (build_model_lists(b, nodes, list, len, nmodel, nany) < 0)
        goto out;

    for (size_t i = 0, k = 0; i < b->n; i++) {
        all[i] = (uint32_t)i;
        if (nodes[i].nmodels == 0)
            any[k++] = (uint32_t)i;
    }
    b->all_pool = pool_add(b, all, b->n);
    all = NULL;
    if (b->all_pool == NO_POS)
        goto out;
    if (nany > 0) {
        b->any_pool = pool_add(b, any, nany);
        any = NULL;
        if (b->any_pool == NO_POS)
            goto out;
    }
    for (size_t m = 0; m < nmodel; m++) {
        pool_of[m] = pool_add(b, list[m], len[m]);
        list[m] = NULL;
        if (pool_of[m] == NO_POS)
            goto out;
    }
    for (size_t i = 0; i <= b->models.mask; i++)
        if (b->models.slot[i].name)
            b->models.slot[i].id = (uint32_t)pool_of[b->models.slot[i].id];
    rc = 0;
out:
    if (list)
        for (size_t m = 0; m < nmodel; m++)
            free(list[m]);
    free(list);
    free(len);
    free(pool_of);
    free(all);
    free(any);
    return rc;
}

/* --------------------------------------------------------------- public */

struct balance *balance_new(enum cfg_strategy strategy,
                            const struct balance_node_cfg *nodes, size_t n,
                            uint64_t seed)
{
    struct balance *b;

    switch (strategy) {
    case STRAT_ROUND_ROBIN:
    case STRAT_WEIGHTED_ROUND_ROBIN:
    case STRAT_LEAST_CONNECTIONS:
    case STRAT_LATENCY:
    case STRAT_LEAST_PENDING:
    case STRAT_RANDOM:
    case STRAT_CONSISTENT_HASH:
        break;
    default:
        return NULL;
    }
    if ((n > 0 && nodes == NULL) || n > (size_t)INT32_MAX)
        return NULL;
    b = calloc(1, sizeof *b);
    if (b == NULL)
        return NULL;
    b->strategy = strategy;
    b->n = n;
    b->rng = seed;
    b->latency_decay_ms = BALANCE_LATENCY_DECAY_MS;
    b->any_pool = NO_POS;
    b->weight = calloc(n + 1, sizeof *b->weight);
    b->priority = calloc(n + 1, sizeof *b->priority);
    b->region = calloc(n + 1, sizeof *b->region);
    b->name_hash = calloc(n + 1, sizeof *b->name_hash);
    if (!b->weight || !b->priority || !b->region || !b->name_hash)
        goto fail;
    for (size_t i = 0; i < n; i++) {
        char idx[sizeof "#18446744073709551615"];
        const char *name = nodes[i].name;
        int w = nodes[i].weight;

        if (w < 1)
            w = 1;
        if (w > BALANCE_WEIGHT_MAX)
            w = BALANCE_WEIGHT_MAX;
        b->weight[i] = (uint32_t)w;
        b->priority[i] = nodes[i].priority;
        if (name == NULL) {
            snprintf(idx, sizeof idx, "#%zu", i);
            name = idx;
        }
        b->name_hash[i] = hash_bytes(name, strlen(name));
    }
    if (build_regions(b, nodes) < 0 || build_pools(b, nodes) < 0)
        goto fail;
    return b;
fail:
    balance_free(b);
    return NULL;
}

void balance_free(struct balance *b)
{
    if (b == NULL)
        return;
    for (size_t i = 0; i < b->ngroup; i++)
        group_free(b->group[i]);
    free(b->group);
    for (size_t i = 0; i < b->npool; i++) {
        for (size_t t = 0; t < b->pool[i].ntier; t++)
            free(b->pool[i].tier[t].region);
        free(b->pool[i].tier);
        free(b->pool[i].member);
    }
    free(b->pool);
    names_free(&b->models);
    names_free(&b->regions);
    free(b->weight);
    free(b->priority);
    free(b->region);
    free(b->name_hash);
    free(b);
}

/* The pool serving `model`: every node for NULL, else the model's own, else
 * the nodes that list no model. */
static size_t pool_for(const struct balance *b, const char *model)
{
    const struct name_slot *s;

    if (model == NULL)
        return b->all_pool;
    s = names_find(&b->models, model);
    return s ? s->id : b->any_pool;
}

/* pool_for() for a pick: the model of the last pick is compared before the
 * table is searched (requests mostly name the same model, and hashing its
 * name byte by byte costs more). The table never changes after
 * balance_new(); the caller holds the state lock. */
static size_t pool_for_pick(struct balance *b, const char *model)
{
    const struct name_slot *s = b->last_model;

    if (model == NULL)
        return b->all_pool;
    if (s != NULL && strcmp(s->name, model) == 0)
        return s->id;
    if ((s = names_find(&b->models, model)) == NULL)
        return b->any_pool;
    b->last_model = s;
    return s->id;
}

static struct group *tier_region(const struct tier *t, uint32_t id)
{
    size_t lo = 0, hi = t->nregion;

    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;

        if (t->region[mid].region < id)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo < t->nregion && t->region[lo].region == id)
        return t->region[lo].g;
    return NULL;
}

/* Called when nothing was eligible: tells full from tried from down. */
static enum balance_status why_none(const struct pick *pk, const struct pool *p)
{
    int full = 0, tried = 0;

    for (size_t i = 0; i < p->n; i++) {
        uint32_t node = p->member[i];
        const struct balance_live *l = pk->live[node];

        if (!(l->usable || pk->panic) || !passes_filter(pk->q, node))
            continue;
        if (is_excluded(pk->q, node))
            tried = 1;
        else if (is_full(l))
            full = 1;
    }
    if (full)
        return BALANCE_ALL_FULL;
    return tried ? BALANCE_ALL_TRIED : BALANCE_NONE_USABLE;
}

int balance_pick(struct balance *b, struct balance_live *const *live,
                 const struct balance_query *q, enum balance_status *status)
{
    static const struct balance_query no_query;
    enum balance_status ignored;
    const struct name_slot *region;
    const struct pool *p;
    struct pick pk;
    size_t pi;

    lock_assert_held();
    if (status == NULL)
        status = &ignored;
    if (q == NULL)
        q = &no_query;
    *status = BALANCE_NONE_USABLE;
    if (b == NULL || (live == NULL && b->n > 0))
        return -1;
    pi = pool_for_pick(b, q->model);
    if (pi == NO_POS) {
        *status = BALANCE_NO_MODEL;
        return -1;
    }
    p = &b->pool[pi];
    pk.b = b;
    pk.live = live;
    pk.q = q;
    pk.panic = 0;
    if (q->hash_key)
        pk.key = hash_bytes(q->hash_key, q->hash_key_len ? q->hash_key_len
                                                         : strlen(q->hash_key));
    else
        pk.key = 0;
    region = names_find(&b->regions, q->prefer_region);

    /* Tiers in panic are passed over first, then balanced over all their
     * nodes as if usable when no other tier had an eligible node. */
    for (int pass = 0, any_panic = 0; pass < 1 + any_panic; pass++)
    for (size_t t = 0; t < p->ntier; t++) {
        const struct tier *tier = &p->tier[t];
        struct group *rg = region ? tier_region(tier, region->id) : NULL;
        size_t pos;

        any_panic |= tier->panic;
        if (tier->panic != pass)
            continue;
        pk.panic = pass;
        if (rg) {
            pos = pick_group(&pk, rg);
            if (pos != NO_POS) {
                *status = BALANCE_OK;
                return (int)rg->node[pos];
            }
            if (rg == tier->all)
                continue;
        }
        pos = pick_group(&pk, tier->all);
        if (pos != NO_POS) {
            *status = BALANCE_OK;
            return (int)tier->all->node[pos];
        }
    }
    *status = why_none(&pk, p);
    return -1;
}

int balance_serves(const struct balance *b, const char *model)
{
    size_t pi;

    if (b == NULL)
        return 0;
    pi = pool_for(b, model);
    return pi != NO_POS && b->pool[pi].n > 0;
}

size_t balance_size(const struct balance *b)
{
    return b ? b->n : 0;
}

const char *balance_status_name(enum balance_status s)
{
    switch (s) {
    case BALANCE_OK:          return "ok";
    case BALANCE_NO_MODEL:    return "no-model";
    case BALANCE_NONE_USABLE: return "none-usable";
    case BALANCE_ALL_TRIED:   return "all-tried";
    case BALANCE_ALL_FULL:    return "all-full";
    }
    return "unknown";
}

void balance_live_init(struct balance_live *live, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        memset(&live[i], 0, sizeof live[i]);
        live[i].usable = 1;
        live[i].share = 1.0;
    }
}

void balance_set_latency_decay(struct balance *b, int64_t decay_ms)
{
    if (b)
        b->latency_decay_ms = decay_ms > 0 ? decay_ms : BALANCE_LATENCY_DECAY_MS;
}

void balance_observe_peak(struct balance_live *l, double sample_ms,
                          int64_t now_ms, int64_t decay_ms, int peak_only)
{
    int64_t age;

    lock_assert_held();
    if (l == NULL || !(sample_ms >= 0.0) || isinf(sample_ms))
        return;
    if (decay_ms <= 0)
        decay_ms = BALANCE_LATENCY_DECAY_MS;
    if (sample_ms < BALANCE_LATENCY_MIN_MS)
        sample_ms = BALANCE_LATENCY_MIN_MS;
    age = now_ms - l->ewma_at_ms;
    if (age < 0)
        age = 0;
    if (!(l->ewma_ms > 0.0) || age >= decay_ms) {    /* no current estimate */
        if (peak_only)
            return;
        l->ewma_ms = sample_ms;
    } else if (sample_ms > l->ewma_ms) {
        l->ewma_ms = sample_ms;                       /* the peak, at once */
    } else if (peak_only) {
        return;
    } else {
        double w = exp(-(double)age / (double)decay_ms);

        l->ewma_ms = l->ewma_ms * w + sample_ms * (1.0 - w);
    }
    l->ewma_at_ms = now_ms;
}

size_t balance_panic_update(struct balance *b, struct balance_live *const *live,
                            double threshold, balance_tier_fn changed, void *ctx)
{
    size_t npanic = 0;

    lock_assert_held();
    if (b == NULL)
        return 0;
    for (size_t i = 0; i < b->npool; i++) {
        for (size_t t = 0; t < b->pool[i].ntier; t++) {
            struct tier *tier = &b->pool[i].tier[t];
            const struct group *g = tier->all;
            size_t usable = 0;
            int panic;

            for (size_t k = 0; k < g->n; k++)
                usable += live[g->node[k]]->usable != 0;
            panic = g->n > 0 && (double)usable < threshold * (double)g->n;
            tier->usable = usable;
            npanic += panic;
            if (panic == tier->panic)
                continue;
            tier->panic = panic;
            if (changed) {
                struct balance_tier bt = { b->priority[g->node[0]], g->node, g->n,
                                           usable, panic };
                changed(ctx, &bt);
            }
        }
    }
    return npanic;
}

size_t balance_panic_list(const struct balance *b, balance_tier_fn fn, void *ctx)
{
    size_t npanic = 0;

    for (size_t i = 0; b && i < b->npool; i++) {
        for (size_t t = 0; t < b->pool[i].ntier; t++) {
            const struct tier *tier = &b->pool[i].tier[t];
            const struct group *g = tier->all;
            struct balance_tier bt = { 0, g->node, g->n, tier->usable, 1 };

            if (!tier->panic)
                continue;
            npanic++;
            bt.priority = b->priority[g->node[0]];
            if (fn)
                fn(ctx, &bt);
        }
    }
    return npanic;
}
