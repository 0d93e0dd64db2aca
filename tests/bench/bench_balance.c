/*
 * bench_balance.c -- time per balance_pick() for each strategy at 10, 1,000
 * and 10,000 nodes. A standalone program; it reports and asserts nothing.
 *
 *   cc -std=c11 -D_GNU_SOURCE -O2 -iquote src/core -iquote src/config -iquote src/io src/core/balance.c \
 *      tests/bench/bench_balance.c -o build/bench_balance -lm
 *   ./build/bench_balance [picks]
 *
 * Four scenarios: every node usable; half of them down (the fast paths
 * still find one in a few probes); 90% down (a scan now and then); a single
 * usable node (every pick ends in a scan of the group: the documented O(n)
 * worst case). Nodes have weights 1..5 and random
 * in-flight, pending and latency values; the consistent-hash key rotates
 * over a set of user ids. Build time of the balancer is shown as well.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "balance.h"

#define MAX_NODES       10000
#define NAME_LEN        32
#define NKEYS           1024
#define KEY_LEN         32
#define DEFAULT_PICKS   1000000
#define WEIGHT_SPREAD   5
#define MAX_IN_FLIGHT   20
#define MAX_PENDING     50
#define MIN_EWMA_MS     50.0
#define EWMA_SPREAD_MS  500.0
#define SEED            1
#define NS_PER_S        1000000000.0
#define NS_PER_MS       1000000.0

static const size_t sizes[] = { 10, 1000, 10000 };
#define NSIZES (sizeof sizes / sizeof sizes[0])

static const struct {
    enum cfg_strategy s;
    const char       *name;
} strategies[] = {
    { STRAT_ROUND_ROBIN,          "round-robin" },
    { STRAT_WEIGHTED_ROUND_ROBIN, "weighted-round-robin" },
    { STRAT_LEAST_CONNECTIONS,    "least-connections" },
    { STRAT_LATENCY,              "latency" },
    { STRAT_LEAST_PENDING,        "least-pending" },
    { STRAT_RANDOM,               "random" },
    { STRAT_CONSISTENT_HASH,      "consistent-hash" },
};
#define NSTRATEGIES (sizeof strategies / sizeof strategies[0])

static const struct {
    const char *name;
    int         down_percent;
} scenarios[] = {
    { "all usable", 0 },
    { "50% down",   50 },
    { "90% down",   90 },
    { "one usable", 100 },              /* worst case: every pick scans */
};
#define NSCENARIOS (sizeof scenarios / sizeof scenarios[0])

static struct balance_node_cfg cfg[MAX_NODES];
static char names[MAX_NODES][NAME_LEN];
static struct balance_live live[MAX_NODES];
static struct balance_live *livep[MAX_NODES];   /* &live[i]: balance_pick takes pointers */

static void livep_init(void)
{
    size_t i;

    for (i = 0; i < MAX_NODES; i++)
        livep[i] = &live[i];
}
static char keys[NKEYS][KEY_LEN];

static double now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * NS_PER_S + ts.tv_nsec;
}

static void setup(size_t n, int down_percent)
{
    srand(SEED);
    balance_live_init(live, n);
    for (size_t i = 0; i < n; i++) {
        snprintf(names[i], sizeof names[i], "node-%zu.example:8080", i);
        memset(&cfg[i], 0, sizeof cfg[i]);
        cfg[i].name = names[i];
        cfg[i].weight = 1 + (int)(i % WEIGHT_SPREAD);
        live[i].in_flight = rand() % MAX_IN_FLIGHT;
        live[i].pending = rand() % MAX_PENDING;
        live[i].ewma_ms = MIN_EWMA_MS + EWMA_SPREAD_MS * rand() / RAND_MAX;
        live[i].usable = rand() % 100 >= down_percent;
    }
    live[n - 1].usable = 1;             /* never none at all */
}

/* ns per pick; *build_ms gets the balance_new() time. */
static double run(enum cfg_strategy s, size_t n, int down, long picks,
                  double *build_ms)
{
    struct balance_query q = { 0 };
    struct balance *b;
    double t0, t1;
    long sink = 0;

    setup(n, down);
    t0 = now_ns();
    b = balance_new(s, cfg, n, SEED);
    t1 = now_ns();
    if (b == NULL) {
        fprintf(stderr, "balance_new failed\n");
        exit(1);
    }
    *build_ms = (t1 - t0) / NS_PER_MS;
    t0 = now_ns();
    for (long i = 0; i < picks; i++) {
        q.hash_key = keys[i % NKEYS];
        q.hash_key_len = strlen(q.hash_key);
        sink += balance_pick(b, livep, &q, NULL);
    }
    t1 = now_ns();
    balance_free(b);
    if (sink < 0)
        printf("(some picks failed)\n");
    return (t1 - t0) / (double)picks;
}

int main(int argc, char **argv)
{
    long picks = argc > 1 ? atol(argv[1]) : DEFAULT_PICKS;
    livep_init();

    if (picks <= 0)
        picks = DEFAULT_PICKS;
    for (int k = 0; k < NKEYS; k++)
        snprintf(keys[k], sizeof keys[k], "user-%d", k);

    printf("balance_pick: ns per pick (%ld picks per cell); build = "
           "balance_new() ms at %zu nodes\n", picks, sizes[NSIZES - 1]);
    for (size_t sc = 0; sc < NSCENARIOS; sc++) {
        printf("\n%-22s %10s %10s %10s %10s\n", scenarios[sc].name,
               "n=10", "n=1000", "n=10000", "build ms");
        for (size_t st = 0; st < NSTRATEGIES; st++) {
            double build_ms = 0.0;

            printf("%-22s", strategies[st].name);
            for (size_t z = 0; z < NSIZES; z++)
                printf(" %10.1f", run(strategies[st].s, sizes[z],
                                      scenarios[sc].down_percent, picks,
                                      &build_ms));
            printf(" %10.2f\n", build_ms);
        }
    }
    return 0;
}
