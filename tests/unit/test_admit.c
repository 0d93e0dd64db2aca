/*
 * test_admit.c -- unit tests for admit.c: the pick (retry to another host,
 * sticky host, priorities, breakers open and half-open, max_concurrent),
 * key-related failures rotating keys, the plan (fallback chains, model
 * groups, races, no-retry) and what an outcome leads to.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "admit.h"

#define MAXH 4
#define MAXK 4

static struct config cfg;
static struct cfg_host hosts[MAXH];
static char hname[MAXH][40];
static struct cfg_key keys[MAXK];
static struct host_state *hs[MAXH];
static struct key_state kst[MAXK];
static struct key_state *ks[MAXK];
static struct keys_ring *rings;
static struct balance *bal;
static struct balance_live *live[MAXH];
static struct breaker_params bp;
static struct retry_params rp;
static struct admit_view view;
static struct admit_req req;
static int ntest;                     /* host names differ per test */

/* nh hosts (priority from prio[], NULL = all 0; models from models[i],
 * NULL = any), nk keys, round-robin, breaker after 2 failures in a row,
 * 1 s reset, one half-open trial; 3 attempts, network/timeout/5xx retried. */
static void world(size_t nh, const int *prio, const struct cfg_strlist *models, size_t nk)
{
    struct balance_node_cfg nodes[MAXH];
    size_t i;

    memset(&cfg, 0, sizeof(cfg));
    memset(hosts, 0, sizeof(hosts));
    memset(keys, 0, sizeof(keys));
    memset(kst, 0, sizeof(kst));
    memset(nodes, 0, sizeof(nodes));
    ntest++;
    for (i = 0; i < nh; i++) {
        snprintf(hname[i], sizeof(hname[i]), "h%d-%zu", ntest, i);
        hosts[i].name = hname[i];
        hosts[i].weight = 1;
        hosts[i].priority = prio ? prio[i] : 0;
        if (models)
            hosts[i].models = models[i];
        nodes[i].name = hname[i];
        nodes[i].weight = 1;
        nodes[i].priority = hosts[i].priority;
        nodes[i].models = (const char *const *)hosts[i].models.v;
        nodes[i].nmodels = hosts[i].models.n;
    }
    for (i = 0; i < nk; i++) {
        keys[i].active = 1;
        keys[i].weight = 1;
        ks[i] = &kst[i];
    }
    cfg.hosts = hosts;
    cfg.nhosts = nh;
    cfg.keys = keys;
    cfg.nkeys = nk;
    cfg.routing.strategy = STRAT_ROUND_ROBIN;
    cfg.retry.max_attempts = 3;
    cfg.retry.backoff = BACKOFF_FIXED;
    cfg.retry.backoff_initial_ms = 100;
    cfg.retry.backoff_max_ms = 1000;
    cfg.retry.jitter = JITTER_NONE;
    cfg.retry.on = RETRY_ON_NETWORK_ERROR | RETRY_ON_TIMEOUT | RETRY_ON_5XX;
    cfg.retry.deadline_ms = 10000;
    cfg.breaker.enabled = 1;
    cfg.breaker.failure_threshold = 2;
    cfg.breaker.window_size = 10;
    cfg.breaker.minimum_requests = 100;
    cfg.breaker.reset_timeout_ms = 1000;
    cfg.breaker.half_open_requests = 1;
    cfg.breaker.recovery = RECOVERY_IMMEDIATE;
    breaker_params_from_config(&cfg, &bp);
    retry_params_from_config(&cfg, &rp);
    for (i = 0; i < nh; i++) {
        hs[i] = state_host_get(hname[i], &bp);
        assert_non_null(hs[i]);
        hs[i]->live.usable = 1;
        hs[i]->live.share = 1;
        live[i] = &hs[i]->live;
    }
    rings = keys_build(&cfg);
    assert_non_null(rings);
    bal = balance_new(STRAT_ROUND_ROBIN, nodes, nh, 42);
    assert_non_null(bal);
    view.cfg = &cfg;
    view.hs = hs;
    view.ks = ks;
    view.rings = rings;
    view.bal = bal;
    view.live = live;
    view.bp = &bp;
    view.rp = &rp;
    admit_req_init(&req, NULL, -1);
    assert_int_equal(admit_plan(&view, &req, 0), 0);
}

static int teardown(void **st)
{
    size_t i;

    (void)st;
    admit_req_free(&req);
    balance_free(bal);
    keys_free(rings, cfg.nhosts);
    for (i = 0; i < cfg.nhosts; i++)
        state_host_put(hs[i]);
    return 0;
}

/* One pick for the current step; returns the host or -1. */
static int pick(int64_t now, struct admit_pick *pk)
{
    int picks = 0;

    if (admit_pick(&view, &req, req.step, now, &picks, pk) < 0)
        return -1;
    return pk->host;
}

/* An attempt that failed: its outcome recorded as proxy.c does. */
static struct admit_verdict attempt_failed(struct admit_pick *pk, enum retry_fault fault, int status,
                                 int64_t now)
{
    struct admit_verdict v = admit_classify(&rp, &req, pk, fault, status, 0);

    admit_record(&view, pk, v.rv.host_failure, fault == RETRY_FAULT_NONE, 10, now);
    if (v.key_report)
        keys_report(ks[pk->key], status, -1, now);
    admit_unpick(&view, pk);          /* the slot back (proxy: px_leg_end) */
    return v;
}

/* A failed attempt goes to another host: each host once, then (nothing
 * else left) a tried host again; the budget of attempts ends the step. */
static void test_retry_to_another_host(void **st)
{
    struct admit_pick pk;
    struct admit_verdict v;
    int seen[MAXH] = { 0 }, h, i;

    (void)st;
    world(3, NULL, NULL, 0);
    req.max_attempts = 10;
    for (i = 0; i < 3; i++) {
        h = pick(0, &pk);
        assert_true(h >= 0);
        assert_int_equal(seen[h], 0);  /* never one already tried */
        seen[h] = 1;
        assert_int_equal(pk.has_key, 0);
        v = attempt_failed(&pk, RETRY_FAULT_NETWORK, 0, 0);
        assert_int_equal(v.next, ADMIT_RETRY);
        assert_true(v.rv.host_failure);
    }
    assert_int_equal(req.ntried, 3);
    h = pick(0, &pk);                  /* all tried: one of them again */
    assert_true(h >= 0);
    admit_unpick(&view, &pk);
    assert_int_equal(req.attempts, 4);
    /* out of attempts for the step: the next step (or the end) */
    req.max_attempts = req.step_attempts;
    v = admit_classify(&rp, &req, &pk, RETRY_FAULT_TIMEOUT, 0, 0);
    assert_int_equal(v.next, ADMIT_NEXT_STEP);
    /* a 400 is nobody's fault and no retry helps */
    req.max_attempts = 10;
    v = admit_classify(&rp, &req, &pk, RETRY_FAULT_NONE, 400, 0);
    assert_int_equal(v.next, ADMIT_GIVE_UP);
    assert_false(v.rv.host_failure);
    /* a backoff past the deadline gives up */
    assert_int_equal(admit_delay(&rp, &cfg, &req, &v.rv, 0, -1, 0, 0), 100);
    assert_int_equal(admit_delay(&rp, &cfg, &req, &v.rv, 0, -1, 0, 9950), -1);
}

/* 401/403 disable the key, 429 cools it down: each retry takes the next
 * key, even on the same host, and with every key out the host is skipped
 * with keys_cooling set. A 401 without a key is the client's own answer. */
static void test_key_failures_rotate_keys(void **st)
{
    struct admit_pick pk;
    struct admit_verdict v;
    int used[MAXK] = { 0 };
    static const int status[] = { 401, 429, 403 };
    int i;

    (void)st;
    world(1, NULL, NULL, 3);
    req.max_attempts = 10;
    for (i = 0; i < 3; i++) {
        assert_int_equal(pick(1000, &pk), 0);
        assert_int_equal(pk.has_key, 1);
        assert_int_equal(used[pk.key], 0);
        used[pk.key] = 1;
        v = attempt_failed(&pk, RETRY_FAULT_NONE, status[i], 1000);
        assert_true(v.rv.retryable);  /* retry.on has no 4xx: the key's fault */
        assert_false(v.rv.host_failure);
        assert_int_equal(v.key_report, 1);
        assert_int_equal(v.rv.key, status[i] == 429 ? RETRY_KEY_COOLDOWN : RETRY_KEY_DISABLE);
        assert_int_equal(v.next, ADMIT_RETRY);
    }
    assert_true(kst[0].disabled || kst[1].disabled || kst[2].disabled);
    assert_int_equal(pick(1000, &pk), -1);
    assert_int_equal(req.keys_cooling, 1);
    assert_int_equal(hs[0]->live.in_flight, 0);
    /* the cooling key comes back after its default cooldown */
    assert_int_equal(admit_soonest_key_ms(&view, 1000), KEYS_DEFAULT_COOLDOWN_MS);
    assert_int_equal(pick(1000 + KEYS_DEFAULT_COOLDOWN_MS, &pk), 0);
    assert_int_equal(pk.has_key, 1);
    admit_unpick(&view, &pk);
    /* no key sent: a 401 is the upstream's answer to the client */
    pk.has_key = 0;
    v = admit_classify(&rp, &req, &pk, RETRY_FAULT_NONE, 401, 0);
    assert_int_equal(v.key_report, 0);
    assert_int_equal(v.next, ADMIT_GIVE_UP);
    /* a Retry-After with a key-related answer is the key's, not the delay's */
    cfg.retry.respect_retry_after = 1;
    rp.respect_retry_after = 1;
    v = admit_classify(&rp, &req, &pk, RETRY_FAULT_NONE, 503, 0);
    assert_int_equal(admit_delay(&rp, &cfg, &req, &v.rv, 0, 700, 0, 0), 700);
    pk.has_key = 1;
    v = admit_classify(&rp, &req, &pk, RETRY_FAULT_NONE, 429, 0);
    assert_int_equal(admit_delay(&rp, &cfg, &req, &v.rv, 0, 700, 0, 0), 100);
}

/* A fallback chain: its steps in order, a step's `models:` group reads as
 * the first member a host serves, a step's hosts; a new step has no tried
 * hosts; the no-retry header keeps one step and one attempt. */
static void test_fallback_steps(void **st)
{
    static char *m_a[] = { "a" }, *m_y[] = { "y" }, *grp_members[] = { "x", "y" };
    static char *step_hosts[] = { NULL };
    struct cfg_strlist models[2] = { { m_a, 1 }, { m_y, 1 } };
    struct cfg_fallback_step steps[2];
    struct cfg_fallback_chain chain;
    struct cfg_model_group grp = { "grp", { grp_members, 2 } };
    struct admit_view cfg_only = { .cfg = &cfg };
    struct admit_pick pk;
    struct admit_verdict v;

    (void)st;
    world(2, NULL, models, 0);
    step_hosts[0] = hname[1];
    memset(steps, 0, sizeof(steps));
    memset(&chain, 0, sizeof(chain));
    steps[0].model = "a";
    steps[1].model = "grp";
    steps[1].hosts.v = step_hosts;
    steps[1].hosts.n = 1;
    steps[1].timeout_ms = 250;
    chain.match = "m";
    chain.mode = FALLBACK_SEQUENTIAL;
    chain.steps = steps;
    chain.nsteps = 2;
    chain.timeout_ms = 5000;
    cfg.fallback.chains = &chain;
    cfg.fallback.nchains = 1;
    cfg.models = &grp;
    cfg.nmodels = 1;

    assert_null(admit_chain(&cfg, "other"));
    assert_ptr_equal(admit_chain(&cfg, "m"), &chain);
    admit_req_free(&req);
    admit_req_init(&req, "m", -1);
    assert_int_equal(admit_plan(&view, &req, 0), 0);
    assert_int_equal(req.nsteps, 2);
    assert_int_equal(req.race, 1);
    assert_int_equal(req.deadline_ms, 5000);
    assert_string_equal(req.steps[0].model, "a");
    assert_string_equal(req.steps[1].model, "y");   /* x: no host serves it */
    assert_int_equal(req.steps[1].nhosts, 1);
    assert_int_equal(req.steps[1].hosts[0], 1);
    assert_int_equal(req.steps[1].timeout_ms, 250);

    req.max_attempts = 1;
    assert_int_equal(pick(0, &pk), 0);              /* step 1: model a */
    v = attempt_failed(&pk, RETRY_FAULT_NONE, 500, 0);
    assert_int_equal(v.next, ADMIT_NEXT_STEP);
    assert_int_equal(admit_next_step(&req), 1);
    assert_int_equal(req.ntried, 0);
    assert_int_equal(req.step_attempts, 0);
    assert_int_equal(pick(0, &pk), 1);              /* step 2: model y, host 1 */
    v = attempt_failed(&pk, RETRY_FAULT_NONE, 500, 0);
    assert_int_equal(admit_next_step(&req), 0);     /* no step after it */

    /* "*" matches any model, none too */
    chain.match = "*";
    assert_ptr_equal(admit_chain(&cfg, NULL), &chain);

    /* the no-retry header: one step, one attempt */
    chain.match = "m";
    admit_req_free(&req);
    admit_req_init(&req, "m", -1);
    assert_int_equal(admit_plan(&view, &req, 1), 0);
    assert_int_equal(req.nsteps, 1);
    assert_int_equal(req.max_attempts, 1);
    assert_null(req.steps[0].model);

    /* a model naming a group, without a chain: one step per member */
    cfg.fallback.nchains = 0;
    admit_req_free(&req);
    admit_req_init(&req, "grp", -1);
    assert_int_equal(admit_plan(&cfg_only, &req, 0), 0);   /* reads only the config */
    assert_int_equal(req.nsteps, 2);
    assert_string_equal(req.steps[0].model, "x");
    assert_string_equal(req.steps[1].model, "y");
    assert_int_equal(pick(0, &pk), -1);             /* nobody serves x */
    assert_int_equal(req.pick_status, BALANCE_NO_MODEL);
}

/* A parallel chain races its first steps: a failed leg waits while others
 * are out; the race lost as a whole goes on with the step after it. Racing
 * legs never fall back on a host already tried. */
static void test_race(void **st)
{
    struct cfg_fallback_step steps[3];
    struct cfg_fallback_chain chain;
    struct admit_pick pk, pk2;
    struct admit_verdict v;

    (void)st;
    world(2, NULL, NULL, 0);
    memset(steps, 0, sizeof(steps));
    memset(&chain, 0, sizeof(chain));
    chain.match = "*";
    chain.mode = FALLBACK_PARALLEL;
    chain.race = 2;
    chain.steps = steps;
    chain.nsteps = 3;
    cfg.fallback.chains = &chain;
    cfg.fallback.nchains = 1;
    admit_req_free(&req);
    admit_req_init(&req, "m", -1);
    req.prefer = 1;
    assert_int_equal(admit_plan(&view, &req, 0), 0);
    assert_int_equal(req.race, 2);
    assert_int_equal(req.nsteps, 3);

    assert_int_equal(pick(0, &pk), 0);     /* the sticky host is not used in a race */
    assert_int_equal(pick(0, &pk2), 1);
    assert_int_equal(pick(0, &pk), -1);    /* both tried: a race does not repeat */
    assert_int_equal(req.pick_status, BALANCE_ALL_TRIED);
    v = admit_classify(&rp, &req, &pk2, RETRY_FAULT_NETWORK, 0, 1);
    assert_int_equal(v.next, ADMIT_WAIT);
    v = admit_classify(&rp, &req, &pk2, RETRY_FAULT_NETWORK, 0, 0);
    assert_int_equal(v.next, ADMIT_RACE_LOST);
    admit_race_lost(&req);
    assert_int_equal(req.race, 1);
    assert_int_equal(req.step, 1);
    assert_int_equal(admit_next_step(&req), 1);
    assert_int_equal(req.step, 2);

    /* without the race the sticky host goes first */
    admit_req_free(&req);
    cfg.fallback.nchains = 0;
    admit_req_init(&req, "m", -1);
    req.prefer = 1;
    assert_int_equal(admit_plan(&view, &req, 0), 0);
    assert_int_equal(pick(0, &pk), 1);
}

/* Only the best priority tier with an eligible host takes requests. */
static void test_priorities(void **st)
{
    static const int prio[] = { 0, 0, 1 };
    struct admit_pick pk;
    int i, h;

    (void)st;
    world(3, prio, NULL, 0);
    req.max_attempts = 10;
    for (i = 0; i < 6; i++) {
        h = pick(0, &pk);
        assert_true(h == 0 || h == 1);
        admit_unpick(&view, &pk);
        req.ntried = 0;
    }
    hs[0]->live.usable = 0;
    hs[1]->live.usable = 0;
    assert_int_equal(pick(0, &pk), 2);
}

/* Two failures in a row open a host's breaker: it is skipped until
 * reset_timeout; then one half-open trial goes (a second request does
 * not); the trial's success closes it, a failure opens it again. A failed
 * HTTP answer of a host serving several models opens only the model's
 * breaker. */
static void test_breakers(void **st)
{
    static char *two[] = { "m1", "m2" };
    struct cfg_strlist models[1] = { { two, 2 } };
    struct admit_pick pk, pk2;
    struct admit_recorded r;
    int i;

    (void)st;
    world(1, NULL, NULL, 0);
    req.max_attempts = 10;
    for (i = 0; i < 2; i++) {
        assert_int_equal(pick(0, &pk), 0);
        attempt_failed(&pk, RETRY_FAULT_NETWORK, 0, 0);
    }
    assert_int_equal(breaker_state(&hs[0]->br, 0), BREAKER_OPEN);
    assert_false(admit_host_eligible(&view, &req, &req.steps[0], 0, 500));
    assert_true(admit_host_down(&view, 0, 500));
    assert_int_equal(pick(500, &pk), -1);
    /* half-open: one trial */
    assert_int_equal(pick(1000, &pk), 0);
    assert_int_equal(pick(1000, &pk2), -1);
    r = admit_record(&view, &pk, 1, 0, 10, 1010);   /* the trial fails */
    admit_unpick(&view, &pk);
    assert_int_equal(r.host_before, BREAKER_HALF_OPEN);
    assert_int_equal(r.host_after, BREAKER_OPEN);
    assert_int_equal(pick(1500, &pk), -1);
    assert_int_equal(pick(2010, &pk), 0);           /* the next trial */
    r = admit_record(&view, &pk, 0, 0, 10, 2020);
    admit_unpick(&view, &pk);
    assert_int_equal(r.host_after, BREAKER_CLOSED);
    assert_int_equal(hs[0]->consecutive_failures, 0);
    teardown(NULL);

    /* a model breaker takes an answered failure; the host stays closed */
    world(1, NULL, models, 0);
    admit_req_free(&req);
    admit_req_init(&req, "m1", -1);
    assert_int_equal(admit_plan(&view, &req, 0), 0);
    req.max_attempts = 10;
    for (i = 0; i < 2; i++) {
        assert_int_equal(pick(0, &pk), 0);
        assert_non_null(pk.mbr);
        assert_int_equal(pk.mticket_open, 1);
        r = admit_record(&view, &pk, 1, 1, 10, 0);
        admit_unpick(&view, &pk);
        assert_int_equal(r.counts_for_host, 0);
        assert_int_equal(r.host_recorded, 0);
    }
    assert_true(r.model_opened);
    assert_int_equal(breaker_state(&hs[0]->br, 0), BREAKER_CLOSED);
    assert_false(admit_host_eligible(&view, &req, &req.steps[0], 0, 0));
    assert_int_equal(pick(0, &pk), -1);             /* m1 is out on it */
    admit_req_free(&req);
    admit_req_init(&req, "m2", -1);
    assert_int_equal(admit_plan(&view, &req, 0), 0);
    assert_int_equal(pick(0, &pk), 0);              /* m2 is not */
    admit_unpick(&view, &pk);
}

/* A host at max_concurrent is skipped; with every host full the pick says
 * BALANCE_ALL_FULL, and when_full says queue (up to queue_timeout) or
 * refuse (proxy.c answers 429 hosts_full); a slot given back
 * makes it eligible again. */
static void test_max_concurrent(void **st)
{
    struct admit_pick a, b, c;
    int64_t until = 0;

    (void)st;
    world(2, NULL, NULL, 0);
    hs[0]->live.max_concurrent = 1;
    hs[1]->live.max_concurrent = 1;
    req.max_attempts = 10;
    assert_int_equal(pick(0, &a), 0);
    assert_int_equal(hs[0]->live.in_flight, 1);
    assert_int_equal(hs[0]->requests, 1);
    admit_req_free(&req);
    admit_req_init(&req, NULL, -1);                /* another request */
    assert_int_equal(admit_plan(&view, &req, 0), 0);
    assert_int_equal(pick(0, &b), 1);              /* 0 is full: skipped */
    admit_req_free(&req);
    admit_req_init(&req, NULL, -1);
    assert_int_equal(admit_plan(&view, &req, 0), 0);
    assert_int_equal(pick(0, &c), -1);
    assert_int_equal(req.pick_status, BALANCE_ALL_FULL);
    /* when_full: reject (the default), or queue until queue_timeout */
    assert_int_equal(admit_queue(&cfg, &req, &until, 100), 0);
    cfg.routing.when_full = WHEN_FULL_QUEUE;
    cfg.routing.queue_timeout_ms = 500;
    assert_int_equal(admit_queue(&cfg, &req, &until, 100), 1);
    assert_int_equal(until, 600);
    assert_int_equal(admit_queue(&cfg, &req, &until, 599), 1);
    assert_int_equal(admit_queue(&cfg, &req, &until, 600), 0);
    until = 0;
    req.pick_status = BALANCE_NONE_USABLE;         /* not full: no queue */
    assert_int_equal(admit_queue(&cfg, &req, &until, 100), 0);
    admit_unpick(&view, &a);
    assert_int_equal(hs[0]->live.in_flight, 0);
    assert_int_equal(hs[0]->requests, 0);
    assert_int_equal(pick(0, &c), 0);
    admit_unpick(&view, &b);
    admit_unpick(&view, &c);
}

/* A 404 is the request's own answer for ids and unknown paths; otherwise
 * it is retried (an unknown model elsewhere). A host outside the route's
 * APIs is never picked. */
static void test_answer_and_apis(void **st)
{
    struct admit_pick pk;
    struct retry_verdict v;

    (void)st;
    world(2, NULL, NULL, 0);
    cfg.retry.on_codes = NULL;
    rp.on_codes[(404 - RETRY_CODE_MIN) / RETRY_CODE_WORD_BITS] |=
        (uint64_t)1 << ((404 - RETRY_CODE_MIN) % RETRY_CODE_WORD_BITS);
    memset(&pk, 0, sizeof(pk));
    v = admit_answer(&rp, &pk, 404, 0);
    assert_true(v.retryable);
    v = admit_answer(&rp, &pk, 404, 1);
    assert_false(v.retryable);
    assert_false(v.host_failure);
    v = admit_answer(&rp, &pk, 200, 0);
    assert_false(v.retryable);

    hosts[0].apis.n = 1;              /* host 0 serves family 1 only */
    hosts[0].apis_mask = 1u << 1;
    req.family = 2;
    assert_int_equal(pick(0, &pk), 1);
    admit_unpick(&view, &pk);
    req.ntried = 0;
    assert_int_equal(pick(0, &pk), 1);
    admit_unpick(&view, &pk);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_retry_to_another_host, teardown),
        cmocka_unit_test_teardown(test_key_failures_rotate_keys, teardown),
        cmocka_unit_test_teardown(test_fallback_steps, teardown),
        cmocka_unit_test_teardown(test_race, teardown),
        cmocka_unit_test_teardown(test_priorities, teardown),
        cmocka_unit_test_teardown(test_breakers, teardown),
        cmocka_unit_test_teardown(test_max_concurrent, teardown),
        cmocka_unit_test_teardown(test_answer_and_apis, teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
