/* Unit tests for keys.c: rotation rings, pools, cooldowns, disables. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "keys.h"

#define NK 4

static struct cfg_host hosts[2];
static struct cfg_key keys[NK];
static struct config cfg;
static struct key_state kst[NK];
static struct key_state *ks[NK];

static void setup_cfg(void)
{
    static char *only_b[] = { "b" };
    size_t i;

    memset(&cfg, 0, sizeof(cfg));
    memset(hosts, 0, sizeof(hosts));
    memset(keys, 0, sizeof(keys));
    memset(kst, 0, sizeof(kst));
    hosts[0].name = "a";
    hosts[1].name = "b";
    for (i = 0; i < NK; i++) {
        keys[i].active = 1;
        keys[i].weight = 1;
        ks[i] = &kst[i];
    }
    keys[2].active = 0;                 /* never used */
    keys[3].hosts.v = only_b;           /* only with host b */
    keys[3].hosts.n = 1;
    cfg.hosts = hosts;
    cfg.nhosts = 2;
    cfg.keys = keys;
    cfg.nkeys = NK;
}

static void test_rotation_skips_inactive_and_foreign(void **st)
{
    struct keys_ring *r;
    uint64_t cur = 0;
    size_t k, seq[6];
    int i;

    (void)st;
    setup_cfg();
    r = keys_build(&cfg);
    assert_non_null(r);
    assert_int_equal(r[0].n, 2);        /* keys 0, 1 */
    assert_int_equal(r[1].n, 3);        /* keys 0, 1, 3 */
    for (i = 0; i < 6; i++) {
        assert_int_equal(keys_pick(&r[0], ks, &cur, 0, &k), KEYS_PICKED);
        seq[i] = k;
    }
    for (i = 0; i < 6; i++)
        assert_int_equal(seq[i], (size_t)(i % 2));
    assert_int_equal(kst[0].uses, 3);
    assert_int_equal(kst[2].uses, 0);
    keys_free(r, cfg.nhosts);
}

static void test_cooldown_and_disable(void **st)
{
    struct keys_ring *r;
    uint64_t cur = 0;
    size_t k;
    int i;

    (void)st;
    setup_cfg();
    r = keys_build(&cfg);
    assert_int_equal(keys_report(ks[0], 429, 5000, 1000), 1);
    for (i = 0; i < 4; i++) {
        assert_int_equal(keys_pick(&r[0], ks, &cur, 2000, &k), KEYS_PICKED);
        assert_int_equal(k, 1);
    }
    assert_string_equal(keys_state_name(ks[0], 1, 2000), "cooling");
    /* cooldown over at 6000 */
    assert_string_equal(keys_state_name(ks[0], 1, 6000), "active");
    assert_int_equal(keys_report(ks[1], 401, 0, 2000), 1);
    assert_int_equal(keys_report(ks[1], 401, 0, 2000), 0);   /* already */
    assert_string_equal(keys_state_name(ks[1], 1, 2000), "disabled");
    assert_int_equal(keys_pick(&r[0], ks, &cur, 3000, &k), KEYS_ALL_COOLING);
    assert_int_equal(keys_pick(&r[0], ks, &cur, 7000, &k), KEYS_PICKED);
    assert_int_equal(k, 0);
    /* default cooldown without Retry-After */
    keys_report(ks[0], 429, 0, 10000);
    assert_int_equal(ks[0]->cooldown_until_ms, 10000 + KEYS_DEFAULT_COOLDOWN_MS);
    /* other statuses change nothing */
    assert_int_equal(keys_report(ks[3], 500, 0, 0), 0);
    keys_free(r, cfg.nhosts);
}

static void test_weighted_ring_is_smooth(void **st)
{
    struct keys_ring *r;
    uint64_t cur = 0;
    size_t k, count[NK] = { 0 };
    int i, run = 0, maxrun = 0;
    size_t prev = 99;

    (void)st;
    setup_cfg();
    keys[0].weight = 3;                 /* host a: keys 0 (w3), 1 (w1) */
    r = keys_build(&cfg);
    assert_int_equal(r[0].n, 4);
    for (i = 0; i < 40; i++) {
        keys_pick(&r[0], ks, &cur, 0, &k);
        count[k]++;
        run = k == prev ? run + 1 : 1;
        if (run > maxrun)
            maxrun = run;
        prev = k;
    }
    assert_int_equal(count[0], 30);
    assert_int_equal(count[1], 10);
    assert_true(maxrun <= 3);
    keys_free(r, cfg.nhosts);
}

static void test_pools(void **st)
{
    struct keys_ring *r;

    (void)st;
    setup_cfg();
    hosts[0].keys = "pool-a";
    keys[1].pool = "pool-a";
    r = keys_build(&cfg);
    assert_int_equal(r[0].n, 1);        /* only key 1 */
    assert_int_equal(r[0].slot[0], 1);
    assert_int_equal(r[1].n, 2);        /* keys 0, 3 (no pool) */
    keys_free(r, cfg.nhosts);
}

static void test_no_keys(void **st)
{
    struct keys_ring *r;
    uint64_t cur = 0;
    size_t k;

    (void)st;
    setup_cfg();
    cfg.nkeys = 0;
    r = keys_build(&cfg);
    assert_non_null(r);
    assert_int_equal(keys_pick(&r[0], ks, &cur, 0, &k), KEYS_NONE);
    keys_free(r, cfg.nhosts);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rotation_skips_inactive_and_foreign),
        cmocka_unit_test(test_cooldown_and_disable),
        cmocka_unit_test(test_weighted_ring_is_smooth),
        cmocka_unit_test(test_pools),
        cmocka_unit_test(test_no_keys),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
