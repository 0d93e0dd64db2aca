/*
 * test_balance.c -- unit tests for balance.c: each strategy's distribution,
 * and every eligibility rule (usable, max_concurrent, tiers, model, exclude,
 * region, filter, share) under every strategy, on small groups (exact
 * algorithms) and large ones (EDF, power of two choices, fallback scans).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "balance.h"

#define MAXN        10000
#define SMALL       8
#define LARGE       200             /* > BALANCE_SCAN_MAX */
#define PICKS       2000
#define MANY_PICKS  100000
#define NKEYS       10000
#define SEED        42

static const enum cfg_strategy all_strategies[] = {
    STRAT_ROUND_ROBIN, STRAT_WEIGHTED_ROUND_ROBIN, STRAT_LEAST_CONNECTIONS,
    STRAT_LATENCY, STRAT_LEAST_PENDING, STRAT_RANDOM, STRAT_CONSISTENT_HASH,
};
#define NSTRATEGIES (sizeof all_strategies / sizeof all_strategies[0])
static const size_t sizes[] = { SMALL, LARGE };
#define NSIZES (sizeof sizes / sizeof sizes[0])

static const char *const strategy_label[] = {
    "round-robin", "weighted-round-robin", "least-connections",
    "latency", "least-pending", "random", "consistent-hash",
};

static struct balance_node_cfg cfg[MAXN];
static char names[MAXN][32];
static struct balance_live live[MAXN];
static struct balance_live *livep[MAXN];   /* &live[i]: balance_pick takes pointers */

static void livep_init(void)
{
    size_t i;

    for (i = 0; i < MAXN; i++)
        livep[i] = &live[i];
}
static int counts[MAXN];

/* n nodes "host-i", weight 1, priority 0, no region, any model; all live. */
static void nodes_reset(size_t n)
{
    for (size_t i = 0; i < n; i++) {
        snprintf(names[i], sizeof names[i], "host-%zu", i);
        memset(&cfg[i], 0, sizeof cfg[i]);
        cfg[i].name = names[i];
        cfg[i].weight = 1;
    }
    balance_live_init(live, n);
    memset(counts, 0, sizeof counts);
}

static struct balance *build(enum cfg_strategy s, size_t n)
{
    struct balance *b = balance_new(s, cfg, n, SEED);

    assert_non_null(b);
    return b;
}

/* One pick; a fresh hash key per `i` so consistent-hash spreads too. */
static int pick_i(struct balance *b, struct balance_query *q, int i,
                  enum balance_status *st)
{
    struct balance_query local = { 0 };
    char key[32];
    int r;

    if (q)
        local = *q;
    snprintf(key, sizeof key, "key-%d", i);
    local.hash_key = key;
    local.hash_key_len = strlen(key);
    r = balance_pick(b, livep, &local, st);
    return r;
}

static int pick_ok(struct balance *b, struct balance_query *q, int i)
{
    enum balance_status st;
    int r = pick_i(b, q, i, &st);

    assert_int_equal(st, BALANCE_OK);
    assert_true(r >= 0);
    return r;
}

/* ---------------------------------------------------------- round-robin */

static void test_rr_exact_order(void **state)
{
    struct balance *b;

    (void)state;
    nodes_reset(4);
    b = build(STRAT_ROUND_ROBIN, 4);
    for (int i = 0; i < 12; i++)
        assert_int_equal(balance_pick(b, livep, NULL, NULL), i % 4);
    balance_free(b);
}

static void test_rr_skips_unusable(void **state)
{
    static const int want[] = { 0, 2, 3, 0, 2, 3, 0 };
    struct balance *b;

    (void)state;
    nodes_reset(4);
    b = build(STRAT_ROUND_ROBIN, 4);
    live[1].usable = 0;
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        assert_int_equal(balance_pick(b, livep, NULL, NULL), want[i]);
    balance_free(b);
}

/* ------------------------------------------------- weighted round-robin */

static void expect_sequence(const int *weights, size_t n, const char *want)
{
    struct balance *b;
    size_t len = strlen(want);

    nodes_reset(n);
    for (size_t i = 0; i < n; i++)
        cfg[i].weight = weights[i];
    b = build(STRAT_WEIGHTED_ROUND_ROBIN, n);
    for (int round = 0; round < 3; round++)
        for (size_t i = 0; i < len; i++)
            assert_int_equal(balance_pick(b, livep, NULL, NULL), want[i] - 'a');
    balance_free(b);
}

static void test_swrr_nginx_sequences(void **state)
{
    static const int w511[] = { 5, 1, 1 };
    static const int w421[] = { 4, 2, 1 };
    static const int w32[] = { 3, 2 };

    (void)state;
    expect_sequence(w511, 3, "aabacaa");    /* nginx's own example */
    expect_sequence(w421, 3, "abacaba");
    expect_sequence(w32, 2, "ababa");
}

static void test_swrr_skips_unusable(void **state)
{
    struct balance *b;

    (void)state;
    nodes_reset(3);
    cfg[0].weight = 5;
    b = build(STRAT_WEIGHTED_ROUND_ROBIN, 3);
    live[0].usable = 0;
    for (int i = 0; i < 10; i++)
        assert_int_equal(balance_pick(b, livep, NULL, NULL), 1 + i % 2);
    balance_free(b);
}

/* Large groups use EDF: exact proportions per cycle, no burst. */
static void test_wrr_large_edf_smooth(void **state)
{
    const size_t n = LARGE;
    int total = 0, run = 0, max_run = 0, prev = -1;
    struct balance *b;

    (void)state;
    nodes_reset(n);
    cfg[0].weight = 50;
    for (size_t i = 1; i < n; i++)
        cfg[i].weight = 1 + (int)(i % 3);
    for (size_t i = 0; i < n; i++)
        total += cfg[i].weight;
    b = build(STRAT_WEIGHTED_ROUND_ROBIN, n);
    for (int cycle = 0; cycle < 3; cycle++) {
        memset(counts, 0, sizeof counts);
        for (int i = 0; i < total; i++) {
            int r = balance_pick(b, livep, NULL, NULL);

            counts[r]++;
            run = r == prev ? run + 1 : 1;
            max_run = run > max_run ? run : max_run;
            prev = r;
        }
        for (size_t i = 0; i < n; i++)
            assert_int_equal(counts[i], cfg[i].weight);
    }
    /* weight 50 of 449: one pick in ~9, never twice in a row */
    assert_int_equal(max_run, 1);
    balance_free(b);
}

/* ---------------------------------------------------- least-connections */

static void test_lc_min_per_weight(void **state)
{
    struct balance *b;

    (void)state;
    nodes_reset(3);
    cfg[1].weight = 2;
    b = build(STRAT_LEAST_CONNECTIONS, 3);
    live[0].in_flight = 3;
    live[1].in_flight = 4;
    live[2].in_flight = 1;
    assert_int_equal(balance_pick(b, livep, NULL, NULL), 2);
    live[2].in_flight = 5;
    assert_int_equal(balance_pick(b, livep, NULL, NULL), 1);    /* 5/2 */
    live[0].in_flight = live[1].in_flight = live[2].in_flight = 1;
    assert_int_equal(balance_pick(b, livep, NULL, NULL), 1);    /* 2/2 */
    balance_free(b);
}

static void test_lc_follows_in_flight(void **state)
{
    struct balance *b;

    (void)state;
    nodes_reset(4);
    b = build(STRAT_LEAST_CONNECTIONS, 4);
    /* The caller counts each pick in; the load stays level. */
    for (int i = 0; i < 400; i++)
        live[balance_pick(b, livep, NULL, NULL)].in_flight++;
    for (int i = 0; i < 4; i++)
        assert_int_equal(live[i].in_flight, 100);
    balance_free(b);
}

static void test_lc_ties_rotate(void **state)
{
    struct balance *b;

    (void)state;
    nodes_reset(3);
    b = build(STRAT_LEAST_CONNECTIONS, 3);
    for (int i = 0; i < 9; i++)
        assert_int_equal(balance_pick(b, livep, NULL, NULL), i % 3);
    balance_free(b);
}

static void test_lc_large_prefers_idle(void **state)
{
    const size_t n = 1000;
    int idle = 0;
    struct balance *b;

    (void)state;
    nodes_reset(n);
    b = build(STRAT_LEAST_CONNECTIONS, n);
    for (size_t i = 0; i < n; i++)
        live[i].in_flight = i % 2 ? 10 : 0;
    for (int i = 0; i < MANY_PICKS; i++)
        idle += balance_pick(b, livep, NULL, NULL) % 2 == 0;
    /* two choices: both busy 1/4 of the time */
    assert_in_range(idle, MANY_PICKS * 72 / 100, MANY_PICKS * 78 / 100);
    balance_free(b);
}

/* -------------------------------------------------------------- latency */

#define SIM_STEP_MS   10            /* simulated time between two picks */
#define SIM_DECAY_MS  10000

/* Simulated traffic, one request at a time: every SIM_STEP_MS a pick, whose
 * host answers in lat_ms[host] (folded into its Peak-EWMA at once). Returns
 * how many of the `picks` went to `watch`; *now moves on. */
static int latency_sim(struct balance *b, const double *lat_ms, int picks,
                       int watch, int64_t *now, int64_t decay_ms)
{
    struct balance_query q = { 0 };
    int got = 0;

    for (int i = 0; i < picks; i++, *now += SIM_STEP_MS) {
        int h;

        q.now_ms = *now;
        h = balance_pick(b, livep, &q, NULL);
        assert_true(h >= 0);
        got += h == watch;
        balance_observe_peak(&live[h], lat_ms[h], *now, decay_ms, 0);
    }
    return got;
}

/* 5 ms against 200 ms: two distinct candidates, so the slow host only gets
 * its first tries (drawn with replacement it kept about a quarter). */
static void test_latency_slow_host_share(void **state)
{
    static const double two[] = { 5.0, 200.0 };
    static const double four[] = { 5.0, 6.0, 7.0, 200.0 };
    struct balance *b;
    int64_t now = 1000;
    int slow;

    (void)state;
    nodes_reset(2);
    b = build(STRAT_LATENCY, 2);
    slow = latency_sim(b, two, 1000, 1, &now, SIM_DECAY_MS);
    if (slow >= 1000 * 5 / 100)
        fail_msg("slow host got %d of 1000 picks", slow);
    balance_free(b);

    nodes_reset(4);
    b = build(STRAT_LATENCY, 4);
    now = 1000;
    slow = latency_sim(b, four, 1000, 3, &now, SIM_DECAY_MS);
    if (slow >= 1000 * 5 / 100)
        fail_msg("slow host got %d of 1000 picks among 4", slow);
    balance_free(b);

    /* weights choose the draws, not the outcome of a pair */
    nodes_reset(2);
    cfg[1].weight = 100;
    b = build(STRAT_LATENCY, 2);
    now = 1000;
    slow = latency_sim(b, two, 1000, 1, &now, SIM_DECAY_MS);
    if (slow >= 1000 * 5 / 100)
        fail_msg("heavy slow host got %d of 1000 picks", slow);
    balance_free(b);
}

/* The pair is two different nodes, also in a large group that is nearly
 * all down (found by the scan after the draws). */
static void test_latency_distinct_pair(void **state)
{
    struct balance *b;
    int slow = 0;

    (void)state;
    nodes_reset(LARGE);
    b = build(STRAT_LATENCY, LARGE);
    for (size_t i = 0; i < LARGE; i++)
        live[i].usable = i == 17 || i == 150;
    live[17].ewma_ms = 5.0;
    live[150].ewma_ms = 200.0;
    for (int i = 0; i < PICKS; i++)
        slow += balance_pick(b, livep, NULL, NULL) == 150;
    assert_int_equal(slow, 0);
    balance_free(b);

    nodes_reset(10);
    b = build(STRAT_LATENCY, 10);
    for (int i = 0; i < 10; i++)
        live[i].ewma_ms = 100.0 + i;
    for (int i = 0; i < MANY_PICKS; i++)
        counts[balance_pick(b, livep, NULL, NULL)]++;
    /* the best is in 2 of 10 draws: 0.20 (0.19 with replacement); the
     * worst is never picked (0.01 with replacement) */
    assert_in_range(counts[0], MANY_PICKS * 19 / 100, MANY_PICKS * 21 / 100);
    assert_int_equal(counts[9], 0);
    balance_free(b);
}

/* Cost = estimate x (in-flight + 1): a node that queues loses share while
 * its estimate has not moved. Others: 5 ms with 0, 1, 2 in flight (cost
 * 5, 10, 15); node 0: 4 ms with k in flight (4, 8, 12, 16). */
static void test_latency_in_flight_before_latency(void **state)
{
    static const int want_pct[] = { 50, 33, 17, 0 };
    struct balance *b;

    (void)state;
    nodes_reset(4);
    b = build(STRAT_LATENCY, 4);
    for (int i = 1; i < 4; i++) {
        live[i].ewma_ms = 5.0;
        live[i].in_flight = i - 1;
    }
    live[0].ewma_ms = 4.0;
    for (int k = 0; k < 4; k++) {
        int mine = 0;

        live[0].in_flight = k;
        for (int i = 0; i < MANY_PICKS; i++)
            mine += balance_pick(b, livep, NULL, NULL) == 0;
        if (abs(mine - MANY_PICKS * want_pct[k] / 100) > MANY_PICKS / 50)
            fail_msg("%d in flight: %d%% of the picks, want %d%%", k,
                     mine * 100 / MANY_PICKS, want_pct[k]);
        assert_true(live[0].ewma_ms == 4.0);
    }
    balance_free(b);

    /* and a fast node with 9 in flight loses to an idle slower one */
    nodes_reset(2);
    b = build(STRAT_LATENCY, 2);
    live[0].ewma_ms = 20.0;
    live[0].in_flight = 9;                  /* cost 20 * 10 */
    live[1].ewma_ms = 50.0;                 /* cost 50 * 1 */
    for (int i = 0; i < PICKS; i++)
        assert_int_equal(balance_pick(b, livep, NULL, NULL), 1);
    balance_free(b);
}

/* An idle node's estimate fades by e^(-age/decay): 10 ms answered at 0
 * against 5 ms answered now loses until ln 2 x decay (693 ms) has passed. */
static void test_latency_idle_estimate_fades(void **state)
{
    struct balance_query q = { 0 };
    struct balance *b;

    (void)state;
    nodes_reset(2);
    b = build(STRAT_LATENCY, 2);
    balance_set_latency_decay(b, 1000);
    live[0].ewma_ms = 10.0;
    live[0].ewma_at_ms = 0;
    live[1].ewma_ms = 5.0;
    for (q.now_ms = 0; q.now_ms <= 680; q.now_ms += 20) {
        live[1].ewma_at_ms = q.now_ms;
        for (int i = 0; i < 20; i++)
            assert_int_equal(balance_pick(b, livep, &q, NULL), 1);
    }
    for (q.now_ms = 700; q.now_ms < 1000; q.now_ms += 20) {
        live[1].ewma_at_ms = q.now_ms;
        for (int i = 0; i < 20; i++)
            assert_int_equal(balance_pick(b, livep, &q, NULL), 0);
    }
    balance_free(b);
}

/* A node without a sample is tried within a few picks, and holds no more
 * requests in flight than the node it is compared with until it answers. */
static void test_latency_new_host_tried(void **state)
{
    static const double lat[] = { 5.0, 6.0, 7.0, 8.0 };
    struct balance_query q = { 0 };
    struct balance *b;
    int64_t now = 1000;
    int first = -1;

    (void)state;
    nodes_reset(4);
    b = build(STRAT_LATENCY, 4);
    live[3].usable = 0;                     /* not there yet */
    latency_sim(b, lat, 200, 3, &now, SIM_DECAY_MS);
    live[3].usable = 1;                     /* the new host */
    for (int i = 0; i < 5 && first < 0; i++)
        if (latency_sim(b, lat, 1, 3, &now, SIM_DECAY_MS) == 1)
            first = i;
    if (first < 0)
        fail_msg("a new host was not tried within 5 picks");
    assert_true(live[3].ewma_ms == 8.0);
    balance_free(b);

    nodes_reset(2);
    b = build(STRAT_LATENCY, 2);
    q.now_ms = 1000;
    live[0].ewma_ms = 5.0;
    live[0].ewma_at_ms = 1000;
    live[1].ewma_ms = 0.0;                  /* no sample yet */
    for (int i = 0; i < PICKS; i++)
        assert_int_equal(balance_pick(b, livep, &q, NULL), 1);
    live[1].in_flight = 1;                  /* its first answer pending */
    for (int i = 0; i < PICKS; i++)
        assert_int_equal(balance_pick(b, livep, &q, NULL), 0);
    live[0].in_flight = 3;                  /* fewer than the other */
    for (int i = 0; i < PICKS; i++)
        assert_int_equal(balance_pick(b, livep, &q, NULL), 1);
    balance_free(b);
}

/* A slow host that became fast: its estimate expires `decay` after its last
 * answer, it is tried again and takes its share back. With a decay longer
 * than the run it stays out. */
static void test_latency_decay_brings_back(void **state)
{
    static const int64_t decays[] = { 1000, 3600 * 1000 };
    double lat[] = { 5.0, 200.0 };

    (void)state;
    for (size_t d = 0; d < 2; d++) {
        struct balance *b;
        int64_t now = 1000, changed, back = -1;
        int slow, later;

        nodes_reset(2);
        b = build(STRAT_LATENCY, 2);
        balance_set_latency_decay(b, decays[d]);
        lat[1] = 200.0;
        slow = latency_sim(b, lat, 1000, 1, &now, decays[d]);
        assert_true(slow < 1000 * 5 / 100);
        lat[1] = 5.0;                       /* the slow host is fast now */
        changed = now;
        while (back < 0 && now < changed + 2 * decays[0])
            if (latency_sim(b, lat, 1, 1, &now, decays[d]) == 1)
                back = now - changed;
        later = latency_sim(b, lat, 1000, 1, &now, decays[d]);
        if (d == 0) {
            if (back < 0 || back > decays[0] + SIM_STEP_MS)
                fail_msg("the host came back after %lld ms", (long long)back);
            if (later < 1000 * 30 / 100)
                fail_msg("the host that got fast took %d of 1000", later);
        } else {
            assert_true(back < 0);
            assert_int_equal(later, 0);
        }
        balance_free(b);
    }
}

/* -------------------------------------------------------- least-pending *//* -------------------------------------------------------- least-pending */

static void test_least_pending(void **state)
{
    struct balance *b;

    (void)state;
    nodes_reset(4);
    b = build(STRAT_LEAST_PENDING, 4);
    live[0].pending = 5;
    live[1].pending = 2;
    live[2].pending = 9;
    live[3].pending = 3;
    assert_int_equal(balance_pick(b, livep, NULL, NULL), 1);
    live[1].usable = 0;
    assert_int_equal(balance_pick(b, livep, NULL, NULL), 3);
    live[3].in_flight = 4;                  /* ours count too: 3+4 > 5 */
    assert_int_equal(balance_pick(b, livep, NULL, NULL), 0);
    balance_free(b);
}

/* --------------------------------------------------------------- random */

static void test_random_weighted(void **state)
{
    struct balance *b;

    (void)state;
    nodes_reset(3);
    cfg[0].weight = 1;
    cfg[1].weight = 3;
    cfg[2].weight = 6;
    b = build(STRAT_RANDOM, 3);
    for (int i = 0; i < MANY_PICKS; i++)
        counts[balance_pick(b, livep, NULL, NULL)]++;
    assert_in_range(counts[0], MANY_PICKS * 9 / 100, MANY_PICKS * 11 / 100);
    assert_in_range(counts[1], MANY_PICKS * 28 / 100, MANY_PICKS * 32 / 100);
    assert_in_range(counts[2], MANY_PICKS * 58 / 100, MANY_PICKS * 62 / 100);
    balance_free(b);
}

/* Many nodes of mixed weights: each weight class gets its share. */
static void test_random_weighted_large(void **state)
{
    enum { CLASSES = 5 };
    const size_t n = LARGE;
    int by_class[CLASSES] = { 0 }, total = 0;
    struct balance *b;

    (void)state;
    nodes_reset(n);
    for (size_t i = 0; i < n; i++) {
        cfg[i].weight = 1 + (int)(i % CLASSES);
        total += cfg[i].weight;
    }
    b = build(STRAT_RANDOM, n);
    for (int i = 0; i < MANY_PICKS; i++)
        by_class[balance_pick(b, livep, NULL, NULL) % CLASSES]++;
    for (int c = 0; c < CLASSES; c++) {
        double want = (double)MANY_PICKS * (c + 1) * (double)(n / CLASSES) /
                      total;

        assert_in_range(by_class[c], (int)(want * 0.95), (int)(want * 1.05));
    }
    balance_free(b);
}

static void test_random_seed_replays(void **state)
{
    struct balance *a, *b;

    (void)state;
    nodes_reset(50);
    a = build(STRAT_RANDOM, 50);
    b = build(STRAT_RANDOM, 50);
    for (int i = 0; i < PICKS; i++)
        assert_int_equal(balance_pick(a, livep, NULL, NULL),
                         balance_pick(b, livep, NULL, NULL));
    balance_free(a);
    balance_free(b);
}

/* ------------------------------------------------------ consistent-hash */

static int hash_pick(struct balance *b, int key)
{
    return pick_ok(b, NULL, key);
}

static void test_hash_same_key_same_node(void **state)
{
    struct balance *b, *c;

    (void)state;
    nodes_reset(10);
    b = build(STRAT_CONSISTENT_HASH, 10);
    c = balance_new(STRAT_CONSISTENT_HASH, cfg, 10, SEED + 1);
    assert_non_null(c);
    for (int k = 0; k < PICKS; k++) {
        int r = hash_pick(b, k);

        assert_int_equal(hash_pick(b, k), r);
        assert_int_equal(hash_pick(c, k), r);   /* not seed dependent */
        counts[r]++;
    }
    for (int i = 0; i < 10; i++)            /* spread: 10% each, roughly */
        assert_in_range(counts[i], PICKS * 5 / 100, PICKS * 16 / 100);
    balance_free(b);
    balance_free(c);
}

static int before[NKEYS];

static void test_hash_remove_node_moves_its_keys(void **state)
{
    struct balance *b;
    int moved = 0;

    (void)state;
    nodes_reset(10);
    b = build(STRAT_CONSISTENT_HASH, 10);
    for (int k = 0; k < NKEYS; k++)
        before[k] = hash_pick(b, k);
    balance_free(b);

    /* Rebuilt without host-3; indices above 3 shift down by one. */
    memmove(&cfg[3], &cfg[4], 6 * sizeof cfg[0]);
    b = build(STRAT_CONSISTENT_HASH, 9);
    for (int k = 0; k < NKEYS; k++) {
        int r = hash_pick(b, k);
        int was = before[k];

        if (strcmp(cfg[r].name, names[was]) != 0) {
            moved++;
            assert_int_equal(was, 3);       /* only host-3's keys move */
        }
    }
    assert_true(moved > 0 && moved <= NKEYS * 15 / 100);
    balance_free(b);

    /* The same when host-3 is merely unusable. */
    nodes_reset(10);
    b = build(STRAT_CONSISTENT_HASH, 10);
    live[3].usable = 0;
    moved = 0;
    for (int k = 0; k < NKEYS; k++) {
        int r = hash_pick(b, k);

        if (r != before[k]) {
            moved++;
            assert_int_equal(before[k], 3);
        }
    }
    assert_true(moved > 0 && moved <= NKEYS * 15 / 100);
    balance_free(b);
}

static void test_hash_add_node_moves_few(void **state)
{
    struct balance *b;
    int moved = 0;

    (void)state;
    nodes_reset(11);
    b = build(STRAT_CONSISTENT_HASH, 10);
    for (int k = 0; k < NKEYS; k++)
        before[k] = hash_pick(b, k);
    balance_free(b);
    b = build(STRAT_CONSISTENT_HASH, 11);
    for (int k = 0; k < NKEYS; k++) {
        int r = hash_pick(b, k);

        if (r != before[k]) {
            moved++;
            assert_int_equal(r, 10);        /* only to the newcomer */
        }
    }
    /* 1/11 = 9.1% of the keys, with some slack for ring variance */
    assert_true(moved > 0 && moved <= NKEYS * 14 / 100);
    balance_free(b);
}

static void test_hash_without_key_spreads(void **state)
{
    struct balance *b;

    (void)state;
    nodes_reset(4);
    b = build(STRAT_CONSISTENT_HASH, 4);
    for (int i = 0; i < PICKS; i++)
        counts[balance_pick(b, livep, NULL, NULL)]++;
    for (int i = 0; i < 4; i++)
        assert_true(counts[i] > PICKS / 8);
    balance_free(b);
}

/* ----------------------------------------- eligibility, every strategy */

typedef void (*rule_fn)(enum cfg_strategy s, size_t n);

static void each_strategy(rule_fn fn)
{
    for (size_t i = 0; i < NSTRATEGIES; i++)
        for (size_t j = 0; j < NSIZES; j++)
            fn(all_strategies[i], sizes[j]);
}

static void rule_tiers(enum cfg_strategy s, size_t n)
{
    struct balance *b;

    nodes_reset(n);
    for (size_t i = 0; i < n; i++)
        cfg[i].priority = i < n / 2 ? 0 : 1;
    b = build(s, n);
    for (int i = 0; i < PICKS; i++)
        assert_true((size_t)pick_ok(b, NULL, i) < n / 2);
    for (size_t i = 0; i < n / 2; i++)
        live[i].usable = 0;
    for (int i = 0; i < PICKS; i++)
        assert_true((size_t)pick_ok(b, NULL, i) >= n / 2);
    live[1].usable = 1;                     /* tier 0 is back: only it */
    for (int i = 0; i < PICKS; i++)
        assert_int_equal(pick_ok(b, NULL, i), 1);
    balance_free(b);
}

static void rule_max_concurrent(enum cfg_strategy s, size_t n)
{
    enum balance_status st;
    struct balance *b;

    nodes_reset(n);
    b = build(s, n);
    for (size_t i = 0; i < n; i++) {
        live[i].max_concurrent = 2;
        live[i].in_flight = i == n - 1 ? 1 : 2;
    }
    for (int i = 0; i < PICKS; i++)
        assert_int_equal(pick_ok(b, NULL, i), (int)n - 1);
    live[n - 1].in_flight = 2;
    assert_int_equal(pick_i(b, NULL, 0, &st), -1);
    assert_int_equal(st, BALANCE_ALL_FULL);
    live[0].usable = 0;                     /* some down, the rest full */
    assert_int_equal(pick_i(b, NULL, 0, &st), -1);
    assert_int_equal(st, BALANCE_ALL_FULL);
    live[n - 1].max_concurrent = 0;         /* 0 = unlimited */
    assert_int_equal(pick_ok(b, NULL, 0), (int)n - 1);
    balance_free(b);
}

static void rule_exclude(enum cfg_strategy s, size_t n)
{
    int ex[SMALL];
    struct balance_query q = { .exclude = ex, .nexclude = SMALL - 1 };
    enum balance_status st;
    struct balance *b;

    nodes_reset(n);
    b = build(s, n);
    for (size_t i = SMALL; i < n; i++)
        live[i].usable = 0;
    for (int i = 0; i < SMALL; i++)
        ex[i] = i;
    for (int i = 0; i < PICKS; i++)
        assert_int_equal(pick_ok(b, &q, i), SMALL - 1);
    q.nexclude = SMALL;
    assert_int_equal(pick_i(b, &q, 0, &st), -1);
    assert_int_equal(st, BALANCE_ALL_TRIED);
    q.nexclude = SMALL - 1;                 /* a full one outranks tried */
    live[SMALL - 1].max_concurrent = 1;
    live[SMALL - 1].in_flight = 1;
    assert_int_equal(pick_i(b, &q, 0, &st), -1);
    assert_int_equal(st, BALANCE_ALL_FULL);
    balance_free(b);
}

static void rule_region(enum cfg_strategy s, size_t n)
{
    struct balance_query q = { .prefer_region = "eu" };
    struct balance *b;

    nodes_reset(n);
    for (size_t i = 0; i < n; i++)
        cfg[i].region = i % 2 ? "us" : "eu";
    b = build(s, n);
    for (int i = 0; i < PICKS; i++)
        assert_int_equal(pick_ok(b, &q, i) % 2, 0);
    for (size_t i = 0; i < n; i += 2)
        live[i].usable = 0;
    for (int i = 0; i < PICKS; i++)
        assert_int_equal(pick_ok(b, &q, i) % 2, 1);
    live[4].usable = 1;                     /* one eu node back: only it */
    for (int i = 0; i < PICKS; i++)
        assert_int_equal(pick_ok(b, &q, i), 4);
    q.prefer_region = "ap";                 /* unknown: no preference */
    memset(counts, 0, sizeof counts);
    for (int i = 0; i < PICKS; i++)
        counts[pick_ok(b, &q, i) == 4]++;
    assert_true(counts[0] > 0);
    balance_free(b);

    /* Priority outranks region: tier 0 is all "us". */
    nodes_reset(n);
    for (size_t i = 0; i < n; i++) {
        cfg[i].region = i % 2 ? "us" : "eu";
        cfg[i].priority = i % 2 ? 0 : 1;
    }
    q.prefer_region = "eu";
    b = build(s, n);
    for (int i = 0; i < PICKS; i++)
        assert_int_equal(pick_ok(b, &q, i) % 2, 1);
    balance_free(b);
}

static const char *m1[] = { "m1" };
static const char *m2[] = { "m2" };
static const char *m12[] = { "m1", "m2", "m1" };

static void set_models(size_t n, int with_any)
{
    for (size_t i = 0; i < n; i++) {
        switch (i % 4) {
        case 0: cfg[i].models = m1;  cfg[i].nmodels = 1; break;
        case 1: cfg[i].models = m2;  cfg[i].nmodels = 1; break;
        case 2: cfg[i].models = m12; cfg[i].nmodels = 3; break;
        default:
            cfg[i].models = with_any ? NULL : m2;
            cfg[i].nmodels = with_any ? 0 : 1;
            break;
        }
    }
}

static void rule_model(enum cfg_strategy s, size_t n)
{
    struct balance_query q = { 0 };
    enum balance_status st;
    struct balance *b;
    int seen[4] = { 0 };

    nodes_reset(n);
    set_models(n, 1);
    b = build(s, n);
    q.model = "m1";
    for (int i = 0; i < PICKS; i++)
        assert_int_not_equal(pick_ok(b, &q, i) % 4, 1);
    q.model = "m2";
    for (int i = 0; i < PICKS; i++)
        assert_int_not_equal(pick_ok(b, &q, i) % 4, 0);
    q.model = "m3";                         /* only nodes listing none */
    for (int i = 0; i < PICKS; i++)
        assert_int_equal(pick_ok(b, &q, i) % 4, 3);
    /* Models that alternate, each in a buffer of its own: the last pick's
     * model is compared by its text, not its address or a prefix. */
    for (int i = 0; i < PICKS; i++) {
        char name[8];
        int h;

        snprintf(name, sizeof(name), "m%d", 1 + i % 3);
        q.model = name;
        h = pick_ok(b, &q, i) % 4;
        if (i % 3 == 0)
            assert_int_not_equal(h, 1);
        else if (i % 3 == 1)
            assert_int_not_equal(h, 0);
        else
            assert_int_equal(h, 3);
        q.model = i % 2 ? "m" : "m12";      /* neither is listed: the nodes listing none */
        assert_int_equal(pick_ok(b, &q, i) % 4, 3);
    }
    q.model = NULL;
    for (int i = 0; i < PICKS; i++)
        seen[pick_ok(b, &q, i) % 4] = 1;
    assert_true(seen[0] && seen[1] && seen[2] && seen[3]);
    assert_true(balance_serves(b, "m3"));
    balance_free(b);

    set_models(n, 0);
    b = build(s, n);
    q.model = "m3";
    assert_int_equal(pick_i(b, &q, 0, &st), -1);
    assert_int_equal(st, BALANCE_NO_MODEL);
    assert_false(balance_serves(b, "m3"));
    assert_true(balance_serves(b, "m1"));
    q.model = "m1";
    for (size_t i = 0; i < n; i++)
        if (i % 4 == 0 || i % 4 == 2)
            live[i].usable = 0;
    assert_int_equal(pick_i(b, &q, 0, &st), -1);
    assert_int_equal(st, BALANCE_NONE_USABLE);
    balance_free(b);
}

static int only_thirds(void *ctx, int node)
{
    (void)ctx;
    return node % 3 == 0;
}

static void rule_filter(enum cfg_strategy s, size_t n)
{
    struct balance_query q = { .filter = only_thirds };
    enum balance_status st;
    struct balance *b;

    nodes_reset(n);
    b = build(s, n);
    for (int i = 0; i < PICKS; i++)
        assert_int_equal(pick_ok(b, &q, i) % 3, 0);
    for (size_t i = 0; i < n; i += 3)
        live[i].usable = 0;
    assert_int_equal(pick_i(b, &q, 0, &st), -1);
    assert_int_equal(st, BALANCE_NONE_USABLE);
    balance_free(b);
}

static void rule_share_is_soft(enum cfg_strategy s, size_t n)
{
    struct balance *b;

    nodes_reset(n);
    b = build(s, n);
    for (size_t i = 0; i < n; i++)
        live[i].usable = i == 5;
    live[5].share = 0.0;
    for (int i = 0; i < PICKS; i++)
        assert_int_equal(pick_ok(b, NULL, i), 5);
    balance_free(b);
}

struct panic_seen {
    int calls, priority, panic;
    size_t usable, n;
};

static void on_panic(void *ctx, const struct balance_tier *t)
{
    struct panic_seen *ps = ctx;

    ps->calls++;
    ps->priority = t->priority;
    ps->panic = t->panic;
    ps->usable = t->usable;
    ps->n = t->n;
}

/* Panic mode: a tier below the threshold is passed over while another
 * tier has usable nodes, then balanced over all its nodes as if usable;
 * the filter still applies; threshold 0 turns it off. */
static void rule_panic(enum cfg_strategy s, size_t n)
{
    struct balance_query q = { .filter = only_thirds };
    struct panic_seen ps = { 0 };
    enum balance_status st;
    struct balance *b;
    size_t half = n / 2, hit = 0;

    nodes_reset(n);
    for (size_t i = 0; i < n; i++)
        cfg[i].priority = i < half ? 0 : 1;
    b = build(s, n);
    assert_int_equal(balance_panic_update(b, livep, 0.5, on_panic, &ps), 0);
    assert_int_equal(ps.calls, 0);

    /* tier 0: one node of `half` usable, below 50%: tier 1 takes it all */
    for (size_t i = 0; i < half; i++)
        live[i].usable = i == 1;
    assert_int_equal(balance_panic_update(b, livep, 0.5, on_panic, &ps), 1);
    assert_int_equal(ps.calls, 1);
    assert_int_equal(ps.priority, 0);
    assert_int_equal(ps.panic, 1);
    assert_int_equal(ps.usable, 1);
    assert_int_equal(ps.n, half);
    assert_int_equal(balance_panic_list(b, NULL, NULL), 1);
    for (int i = 0; i < PICKS; i++)
        assert_true((size_t)pick_ok(b, NULL, i) >= half);

    /* tier 1 down too: tier 0 is balanced over all its nodes */
    for (size_t i = half; i < n; i++)
        live[i].usable = 0;
    assert_int_equal(balance_panic_update(b, livep, 0.5, on_panic, &ps), 2);
    assert_int_equal(ps.calls, 2);
    assert_int_equal(ps.priority, 1);
    assert_int_equal(ps.usable, 0);
    memset(counts, 0, sizeof counts);
    for (int i = 0; i < PICKS; i++)
        counts[pick_ok(b, NULL, i)]++;
    for (size_t i = 0; i < n; i++) {
        assert_true(i < half || counts[i] == 0);
        hit += counts[i] > 0;
    }
    assert_true(hit > 1);                   /* not only the usable node */
    for (int i = 0; i < PICKS; i++)         /* the filter still applies */
        assert_int_equal(pick_ok(b, &q, i) % 3, 0);

    /* exactly at the threshold is no panic; 0 turns it off */
    for (size_t i = half; i < n; i++)
        live[i].usable = i < half + half / 2;
    assert_int_equal(balance_panic_update(b, livep, 0.5, on_panic, &ps), 1);
    assert_int_equal(ps.calls, 3);
    assert_int_equal(ps.panic, 0);
    for (size_t i = half; i < n; i++)
        live[i].usable = 0;
    live[1].usable = 0;
    assert_int_equal(balance_panic_update(b, livep, 0, on_panic, &ps), 0);
    assert_int_equal(ps.calls, 4);
    assert_int_equal(balance_panic_list(b, NULL, NULL), 0);
    assert_int_equal(pick_i(b, NULL, 0, &st), -1);
    assert_int_equal(st, BALANCE_NONE_USABLE);
    balance_free(b);
}

static void test_panic(void **state)
{
    (void)state;
    each_strategy(rule_panic);
}

static void test_tiers(void **state)
{
    (void)state;
    each_strategy(rule_tiers);
}

static void test_max_concurrent(void **state)
{
    (void)state;
    each_strategy(rule_max_concurrent);
}

static void test_exclude(void **state)
{
    (void)state;
    each_strategy(rule_exclude);
}

static void test_region(void **state)
{
    (void)state;
    each_strategy(rule_region);
}

static void test_model(void **state)
{
    (void)state;
    each_strategy(rule_model);
}

static void test_filter(void **state)
{
    (void)state;
    each_strategy(rule_filter);
}

static void test_share_is_soft(void **state)
{
    (void)state;
    each_strategy(rule_share_is_soft);
}

/* The one usable node of 10,000 is found, by the fallback scan. */
static void test_needle_in_large_pool(void **state)
{
    (void)state;
    for (size_t i = 0; i < NSTRATEGIES; i++) {
        struct balance *b;

        nodes_reset(MAXN);
        b = build(all_strategies[i], MAXN);
        for (size_t j = 0; j < MAXN; j++)
            live[j].usable = j == 7777;
        for (int k = 0; k < 50; k++)
            assert_int_equal(pick_ok(b, NULL, k), 7777);
        balance_free(b);
    }
}

/* ---------------------------------------------------------------- share */

static void share_ratio(enum cfg_strategy s, size_t n)
{
    struct balance *b;
    double ratio;

    nodes_reset(n);
    b = build(s, n);
    for (size_t i = 0; i < n; i++)
        live[i].ewma_ms = 100.0;
    live[0].share = 0.3;
    for (int i = 0; i < MANY_PICKS; i++)
        counts[pick_ok(b, NULL, i)]++;
    ratio = counts[0] / ((double)MANY_PICKS / (double)n);
    if (ratio < 0.2 || ratio > 0.45)
        fail_msg("%s n=%zu: share 0.3 gave %.3f of normal traffic",
                 strategy_label[s], n, ratio);
    balance_free(b);
}

static void test_share_ratio(void **state)
{
    static const enum cfg_strategy s[] = {
        STRAT_ROUND_ROBIN, STRAT_WEIGHTED_ROUND_ROBIN, STRAT_LATENCY,
        STRAT_RANDOM, STRAT_CONSISTENT_HASH,
    };

    (void)state;
    for (size_t i = 0; i < sizeof s / sizeof s[0]; i++) {
        share_ratio(s[i], 10);
        share_ratio(s[i], LARGE);
    }
}

/* Least-connections/pending: share scales the weight in the score. */
static void test_share_in_load_score(void **state)
{
    struct balance *b;

    (void)state;
    nodes_reset(2);
    b = build(STRAT_LEAST_CONNECTIONS, 2);
    live[0].share = 0.3;                    /* 1 / 0.3 = 3.3 */
    live[1].in_flight = 2;                  /* 3 / 1 */
    assert_int_equal(balance_pick(b, livep, NULL, NULL), 1);
    live[1].in_flight = 3;                  /* 4 / 1 */
    assert_int_equal(balance_pick(b, livep, NULL, NULL), 0);
    balance_free(b);
}

/* ----------------------------------------------------------------- misc */

static void test_observe_peak(void **state)
{
    struct balance_live l;

    (void)state;
    balance_live_init(&l, 1);
    balance_observe_peak(&l, 100.0, 1000, 1000, 1);   /* a failure starts none */
    assert_true(l.ewma_ms == 0.0);
    balance_observe_peak(&l, 100.0, 1000, 1000, 0);   /* first: as is */
    assert_true(l.ewma_ms == 100.0);
    assert_int_equal(l.ewma_at_ms, 1000);
    balance_observe_peak(&l, 50.0, 1000, 1000, 0);    /* no time: no weight */
    assert_true(l.ewma_ms == 100.0);
    balance_observe_peak(&l, 300.0, 1010, 1000, 0);   /* a peak: at once */
    assert_true(l.ewma_ms == 300.0);
    balance_observe_peak(&l, 100.0, 1010 + 693, 1000, 0);  /* w = e^-0.693 */
    assert_in_range((long)(l.ewma_ms * 1000), 199900, 200100);
    assert_int_equal(l.ewma_at_ms, 1703);
    balance_observe_peak(&l, 10.0, 1800, 1000, 1);    /* failure: not lower */
    assert_in_range((long)l.ewma_ms, 199, 200);
    assert_int_equal(l.ewma_at_ms, 1703);
    balance_observe_peak(&l, 900.0, 1800, 1000, 1);   /* but higher */
    assert_true(l.ewma_ms == 900.0);
    balance_observe_peak(&l, 7.0, 1800 + 1000, 1000, 0);  /* stale: as is */
    assert_true(l.ewma_ms == 7.0);
    balance_observe_peak(&l, 0.0, 2800 + 5000, 1000, 0);  /* under 1 ms */
    assert_true(l.ewma_ms == BALANCE_LATENCY_MIN_MS);
    balance_observe_peak(&l, -1.0, 9000, 1000, 0);    /* ignored */
    balance_observe_peak(&l, 0.0 / 0.0, 9000, 1000, 0);
    assert_true(l.ewma_ms == BALANCE_LATENCY_MIN_MS);
    balance_observe_peak(&l, 50.0, 9000, 0, 0);       /* 0 = the default */
    assert_true(l.ewma_ms == 50.0);
    balance_observe_peak(&l, 10.0, 9000 + BALANCE_LATENCY_DECAY_MS / 2, 0, 0);
    assert_true(l.ewma_ms > 10.0 && l.ewma_ms < 50.0);
    balance_observe_peak(NULL, 1.0, 0, 1000, 0);
}

static void test_edges(void **state)
{
    enum balance_status st;
    struct balance *b;

    (void)state;
    assert_null(balance_new((enum cfg_strategy)99, cfg, 1, SEED));
    assert_null(balance_new(STRAT_RANDOM, NULL, 3, SEED));

    b = balance_new(STRAT_ROUND_ROBIN, NULL, 0, SEED);
    assert_non_null(b);
    assert_int_equal(balance_size(b), 0);
    assert_int_equal(balance_pick(b, NULL, NULL, &st), -1);
    assert_int_equal(st, BALANCE_NONE_USABLE);
    assert_false(balance_serves(b, "m"));
    balance_free(b);
    balance_free(NULL);

    nodes_reset(3);
    cfg[0].name = NULL;                     /* named by index */
    cfg[1].weight = 0;                      /* clamped to 1 */
    cfg[2].weight = 2000000000;
    b = build(STRAT_CONSISTENT_HASH, 3);
    assert_int_equal(balance_size(b), 3);
    assert_true(pick_ok(b, NULL, 1) >= 0);
    balance_free(b);

    assert_string_equal(balance_status_name(BALANCE_ALL_FULL), "all-full");
    assert_string_equal(balance_status_name(BALANCE_OK), "ok");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rr_exact_order),
        cmocka_unit_test(test_rr_skips_unusable),
        cmocka_unit_test(test_swrr_nginx_sequences),
        cmocka_unit_test(test_swrr_skips_unusable),
        cmocka_unit_test(test_wrr_large_edf_smooth),
        cmocka_unit_test(test_lc_min_per_weight),
        cmocka_unit_test(test_lc_follows_in_flight),
        cmocka_unit_test(test_lc_ties_rotate),
        cmocka_unit_test(test_lc_large_prefers_idle),
        cmocka_unit_test(test_latency_slow_host_share),
        cmocka_unit_test(test_latency_distinct_pair),
        cmocka_unit_test(test_latency_in_flight_before_latency),
        cmocka_unit_test(test_latency_idle_estimate_fades),
        cmocka_unit_test(test_latency_new_host_tried),
        cmocka_unit_test(test_latency_decay_brings_back),
        cmocka_unit_test(test_least_pending),
        cmocka_unit_test(test_random_weighted),
        cmocka_unit_test(test_random_weighted_large),
        cmocka_unit_test(test_random_seed_replays),
        cmocka_unit_test(test_hash_same_key_same_node),
        cmocka_unit_test(test_hash_remove_node_moves_its_keys),
        cmocka_unit_test(test_hash_add_node_moves_few),
        cmocka_unit_test(test_hash_without_key_spreads),
        cmocka_unit_test(test_tiers),
        cmocka_unit_test(test_max_concurrent),
        cmocka_unit_test(test_exclude),
        cmocka_unit_test(test_region),
        cmocka_unit_test(test_model),
        cmocka_unit_test(test_filter),
        cmocka_unit_test(test_share_is_soft),
        cmocka_unit_test(test_panic),
        cmocka_unit_test(test_needle_in_large_pool),
        cmocka_unit_test(test_share_ratio),
        cmocka_unit_test(test_share_in_load_score),
        cmocka_unit_test(test_observe_peak),
        cmocka_unit_test(test_edges),
    };
    livep_init();

    return cmocka_run_group_tests(tests, NULL, NULL);
}
