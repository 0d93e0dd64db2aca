/*
 * snapshot.c -- building, activating and freeing a configuration
 * generation (see snapshot.h).
 */
#include <stdlib.h>

#include "clock.h"
#include "lock.h"
#include "metrics.h"
#include "snapshot.h"

/* A host's models for routing: configured ones and those its probes
 * discovered (none at all = any model). */
struct balance *snapshot_balance(const struct config *cfg,
                                 struct host_state *const *hs)
{
    struct balance_node_cfg *nodes = calloc(cfg->nhosts ? cfg->nhosts : 1,
                                            sizeof(*nodes));
    const char **names = NULL;
    struct balance *b = NULL;
    size_t i, total = 0, w = 0;

    if (nodes == NULL)
        return NULL;
    for (i = 0; i < cfg->nhosts; i++)
        total += cfg->hosts[i].models.n + hs[i]->models_found.n;
    if (total && (names = calloc(total, sizeof(*names))) == NULL)
        goto out;
    for (i = 0; i < cfg->nhosts; i++) {
        const struct cfg_host *h = &cfg->hosts[i];
        size_t j;
        nodes[i].name = h->name;
        nodes[i].weight = h->weight;
        nodes[i].priority = h->priority;
        nodes[i].region = h->region;
        nodes[i].models = names + w;
        for (j = 0; j < h->models.n; j++)
            names[w++] = h->models.v[j];
        for (j = 0; j < hs[i]->models_found.n; j++)
            names[w++] = hs[i]->models_found.v[j];
        nodes[i].nmodels = (size_t)(names + w - nodes[i].models);
    }
    b = balance_new(cfg->routing.strategy, nodes, cfg->nhosts,
                    (uint64_t)gw_unix_ms() ^ 0x5bd1e995ULL);
    balance_set_latency_decay(b, cfg->routing.latency_decay_ms);
out:
    free(names);
    free(nodes);
    return b;
}

void snapshot_activate(struct snapshot *s)
{
    size_t i;

    lock_assert_held();
    for (i = 0; i < s->cfg->nhosts; i++) {
        s->hs[i]->live.max_concurrent = s->cfg->hosts[i].max_concurrent;
        breaker_set_params(&s->hs[i]->br, &s->bp);
        state_model_breakers_params(s->hs[i], &s->bp);
    }
}

struct snapshot *snapshot_new(struct config *cfg, struct keys_ring *rings,
                              uint64_t generation)
{
    struct snapshot *s = calloc(1, sizeof(*s));
    size_t i;

    if (s == NULL)
        return NULL;
    s->refs = 1;
    s->generation = generation;
    s->cfg = cfg;
    s->hs = calloc(cfg->nhosts ? cfg->nhosts : 1, sizeof(*s->hs));
    s->ks = calloc(cfg->nkeys ? cfg->nkeys : 1, sizeof(*s->ks));
    s->live = calloc(cfg->nhosts ? cfg->nhosts : 1, sizeof(*s->live));
    s->mh = calloc(cfg->nhosts ? cfg->nhosts : 1, sizeof(*s->mh));
    s->rings = rings ? rings : keys_build(cfg);
    if (s->hs == NULL || s->ks == NULL || s->rings == NULL || s->live == NULL
        || s->mh == NULL)
        goto fail;
    retry_params_from_config(cfg, &s->rp);
    breaker_params_from_config(cfg, &s->bp);
    for (i = 0; i < cfg->nhosts; i++) {
        if ((s->hs[i] = state_host_get(cfg->hosts[i].name, &s->bp)) == NULL)
            goto fail;
        s->live[i] = &s->hs[i]->live;
        if ((s->mh[i] = metrics_host_get(cfg->hosts[i].name)) == NULL)
            goto fail;
    }
    if ((s->bal = snapshot_balance(cfg, s->hs)) == NULL)
        goto fail;
    for (i = 0; i < cfg->nkeys; i++)
        if ((s->ks[i] = state_key_get(cfg->keys[i].id)) == NULL)
            goto fail;
    return s;

fail:
    s->cfg = NULL;          /* the caller still owns cfg on failure */
    snapshot_unref(s);
    return NULL;
}

void snapshot_ref(struct snapshot *s)
{
    lock_assert_held();
    s->refs++;
}

void snapshot_unref(struct snapshot *s)
{
    size_t i, nh, nk;

    lock_assert_held();
    if (s == NULL || --s->refs > 0)
        return;
    nh = s->cfg ? s->cfg->nhosts : 0;
    nk = s->cfg ? s->cfg->nkeys : 0;
    for (i = 0; s->hs && i < nh; i++)
        state_host_put(s->hs[i]);
    for (i = 0; s->mh && i < nh; i++)
        metrics_host_put(s->mh[i]);
    free(s->mh);
    for (i = 0; s->ks && i < nk; i++)
        state_key_put(s->ks[i]);
    keys_free(s->rings, nh);
    balance_free(s->bal);
    free(s->live);
    free(s->hs);
    free(s->ks);
    if (s->cfg)
        config_unref(s->cfg);
    free(s);
}

