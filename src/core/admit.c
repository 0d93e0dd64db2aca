/*
 * admit.c -- admission: the plan, the pick and the outcome of a proxied
 * request's attempts (see admit.h). Pure: no clock, no I/O, no lock.
 */
#include <stdlib.h>
#include <string.h>

#include "admit.h"

void admit_req_init(struct admit_req *r, const char *model, int family)
{
    memset(r, 0, sizeof(*r));
    r->model = model;
    r->family = family;
    r->prefer = -1;
    r->race = 1;
    r->nsteps = 1;
    r->max_attempts = 1;
}

void admit_req_free(struct admit_req *r)
{
    int i;

    for (i = 0; i < ADMIT_MAX_STEPS; i++) {
        if (r->steps[i].hosts == NULL)
            continue;                   /* most steps: no set, no call */
        free(r->steps[i].hosts);
        r->steps[i].hosts = NULL;
        r->steps[i].nhosts = 0;
    }
}

/* --- the plan ------------------------------------------------------------ */

const struct cfg_fallback_chain *admit_chain(const struct config *c, const char *model)
{
    size_t i;

    for (i = 0; i < c->fallback.nchains; i++) {
        const char *m = c->fallback.chains[i].match;
        if (strcmp(m, "*") == 0 || (model && strcmp(m, model) == 0))
            return &c->fallback.chains[i];
    }
    return NULL;
}

const char *admit_concrete_model(const struct admit_view *v, const char *name)
{
    const struct cfg_model_group *g = config_model_group(v->cfg, name);
    size_t i;

    if (g == NULL)
        return name;
    for (i = 0; i < g->models.n; i++)
        if (balance_serves(v->bal, g->models.v[i]))
            return g->models.v[i];
    return g->models.n ? g->models.v[0] : name;
}

int admit_plan(const struct admit_view *v, struct admit_req *r, int no_retry)
{
    const struct config *c = v->cfg;
    const struct cfg_fallback_chain *ch = admit_chain(c, r->model);
    const struct cfg_model_group *g = r->model ? config_model_group(c, r->model) : NULL;
    size_t i, j;

    r->race = 1;
    r->nsteps = 0;
    r->max_attempts = c->retry.max_attempts;
    r->deadline_ms = c->retry.deadline_ms;
    if (no_retry) {
        r->max_attempts = 1;          /* the client's call has side effects */
        ch = NULL;
        g = NULL;
    }
    if (ch) {
        for (i = 0; i < ch->nsteps && r->nsteps < ADMIT_MAX_STEPS; i++) {
            const struct cfg_fallback_step *cs = &ch->steps[i];
            struct admit_step *s = &r->steps[r->nsteps++];

            s->timeout_ms = cs->timeout_ms;
            if (cs->model)
                s->model = admit_concrete_model(v, cs->model);
            if (cs->hosts.n) {
                s->hosts = calloc(cs->hosts.n, sizeof(int));
                if (s->hosts == NULL)
                    return -1;
                for (j = 0; j < cs->hosts.n; j++) {
                    const struct cfg_host *h = config_host_by_name(c, cs->hosts.v[j]);
                    if (h)
                        s->hosts[s->nhosts++] = (int)(h - c->hosts);
                }
            }
        }
        if (ch->mode == FALLBACK_PARALLEL)
            r->race = ch->race < ADMIT_MAX_RACE ? ch->race : ADMIT_MAX_RACE;
        if (ch->timeout_ms)
            r->deadline_ms = ch->timeout_ms;
    } else if (g) {
        for (i = 0; i < g->models.n && r->nsteps < ADMIT_MAX_STEPS; i++)
            r->steps[r->nsteps++].model = g->models.v[i];
    }
    if (r->nsteps == 0)
        r->nsteps = 1;                /* the request as it is */
    if (r->max_attempts == 1)
        r->nsteps = 1;
    return 0;
}

int admit_next_step(struct admit_req *r)
{
    if (r->step + 1 >= r->nsteps)
        return 0;
    r->step++;
    r->step_attempts = 0;
    r->ntried = 0;          /* a new model: every host is new to it */
    return 1;
}

void admit_race_lost(struct admit_req *r)
{
    r->step = r->race - 1;
    r->race = 1;
}

/* --- the pick ------------------------------------------------------------ */

/* Hosts serving several models get one breaker per model besides the
 * host's own; NULL when that does not apply. `create` makes it. */
static struct breaker *admit_model_breaker(const struct admit_view *v, int h,
                                           const char *model, int create)
{
    struct host_state *hs = v->hs[h];
    size_t i;

    if (model == NULL || v->cfg->hosts[h].models.n + hs->models_found.n < 2)
        return NULL;
    if (create)
        return state_model_breaker(hs, model, v->bp);
    for (i = 0; i < hs->nmbr; i++)
        if (strcmp(hs->mbr[i]->model, model) == 0)
            return &hs->mbr[i]->br;
    return NULL;
}

static const char *admit_step_model(const struct admit_req *r, const struct admit_step *s)
{
    return s->model ? s->model : r->model;
}

/* The breaker's recovery share depends on time, so it is refreshed here,
 * just before balance.c reads it for this candidate. */
int admit_host_eligible(const struct admit_view *v, const struct admit_req *r,
                        const struct admit_step *s, int h, int64_t now_ms)
{
    struct host_state *hs = v->hs[h];
    struct breaker *mb;
    size_t i;

    if (s->hosts) {
        for (i = 0; i < s->nhosts && s->hosts[i] != h; i++)
            ;
        if (i == s->nhosts)
            return 0;
    }
    if (!config_host_serves_api(&v->cfg->hosts[h], r->family))
        return 0;
    mb = admit_model_breaker(v, h, admit_step_model(r, s), 0);
    hs->live.share = breaker_share(&hs->br, now_ms);
    return breaker_state(&hs->br, now_ms) != BREAKER_OPEN
           && (mb == NULL || breaker_state(mb, now_ms) != BREAKER_OPEN)
           && hs->shared_open_until_ms <= now_ms;
}

struct admit_filter_ctx {
    const struct admit_view *v;
    const struct admit_req  *r;
    const struct admit_step *s;
    int64_t                  now_ms;
};

/* balance.c filter: health checks mark unhealthy hosts in live.usable;
 * this adds breakers, the step's host set and the route's API. */
static int admit_filter(void *ctx, int node)
{
    const struct admit_filter_ctx *f = ctx;

    return admit_host_eligible(f->v, f->r, f->s, node, f->now_ms);
}

static int admit_was_tried(const struct admit_req *r, int h)
{
    int i;

    for (i = 0; i < r->ntried; i++)
        if (r->tried[i] == h)
            return 1;
    return 0;
}

/* The balancer's choice for step s. */
static int admit_pick_host(const struct admit_view *v, struct admit_req *r,
                           const struct admit_step *s, int64_t now_ms)
{
    const struct config *c = v->cfg;
    struct admit_filter_ctx f = { v, r, s, now_ms };
    struct balance_query q;
    int h;

    memset(&q, 0, sizeof(q));
    q.model = admit_step_model(r, s);
    q.prefer_region = c->routing.prefer_region;
    q.exclude = r->tried;
    q.nexclude = (size_t)r->ntried;
    q.filter = admit_filter;
    q.filter_ctx = &f;
    q.now_ms = now_ms;
    if (c->routing.strategy == STRAT_CONSISTENT_HASH)
        q.hash_key = r->hash_key;
    h = balance_pick(v->bal, v->live, &q, &r->pick_status);
    if (h < 0 && r->pick_status == BALANCE_ALL_TRIED && r->race == 1
        && r->step_attempts > 0) {
        q.nexclude = 0;
        h = balance_pick(v->bal, v->live, &q, &r->pick_status);
    }
    return h;
}

int admit_pick(const struct admit_view *v, struct admit_req *r, int si,
               int64_t now_ms, int *picks, struct admit_pick *out)
{
    const struct admit_step *s = &r->steps[si];

    while ((*picks)++ <= (int)v->cfg->nhosts) {
        struct host_state *hs;
        size_t k = 0;
        int h = -1;

        memset(out, 0, sizeof(*out));
        /* A sticky request tries its host first, if usable. */
        if (r->prefer >= 0 && r->step_attempts == 0 && r->race == 1
            && !admit_was_tried(r, r->prefer) && v->live[r->prefer]->usable
            && admit_host_eligible(v, r, s, r->prefer, now_ms))
            h = r->prefer;
        if (h < 0)
            h = admit_pick_host(v, r, s, now_ms);
        if (h < 0)
            return -1;
        hs = v->hs[h];
        if (r->ntried < ADMIT_MAX_TRIED && !admit_was_tried(r, h))
            r->tried[r->ntried++] = h;
        switch (keys_pick(&v->rings[h], v->ks, &hs->rr, now_ms, &k)) {
        case KEYS_ALL_COOLING:
            r->keys_cooling = 1;
            continue;
        case KEYS_NONE:
            break;
        case KEYS_PICKED:
            out->has_key = 1;
            out->key = k;
            break;
        }
        if (!breaker_allow(&hs->br, now_ms, &out->ticket))
            continue;                 /* half-open and its probes are out */
        out->ticket_open = 1;
        out->mbr = admit_model_breaker(v, h, admit_step_model(r, s), 1);
        if (out->mbr && !breaker_allow(out->mbr, now_ms, &out->mticket)) {
            breaker_release(&hs->br, out->ticket);
            out->ticket_open = 0;
            continue;
        }
        out->mticket_open = out->mbr != NULL;
        out->host = h;
        out->panic = !hs->live.usable;
        r->attempts++;
        r->step_attempts++;
        /* The host's slot is taken before the lock goes, so that workers
         * picking at the same time respect max_concurrent. */
        hs->live.in_flight++;
        hs->requests++;
        return 0;
    }
    return -1;
}

int admit_queue(const struct config *c, const struct admit_req *r,
                int64_t *queue_until, int64_t now_ms)
{
    if (r->pick_status != BALANCE_ALL_FULL || c->routing.when_full != WHEN_FULL_QUEUE)
        return 0;
    if (*queue_until == 0)
        *queue_until = now_ms + c->routing.queue_timeout_ms;
    return now_ms < *queue_until;
}

void admit_release(const struct admit_view *v, struct admit_pick *pk)
{
    if (pk->ticket_open) {
        breaker_release(&v->hs[pk->host]->br, pk->ticket);
        pk->ticket_open = 0;
    }
    if (pk->mticket_open) {
        breaker_release(pk->mbr, pk->mticket);
        pk->mticket_open = 0;
    }
}

void admit_unpick(const struct admit_view *v, struct admit_pick *pk)
{
    struct host_state *hs = v->hs[pk->host];

    if (hs->live.in_flight > 0)
        hs->live.in_flight--;
    if (hs->requests > 0)
        hs->requests--;
    admit_release(v, pk);
}

int64_t admit_soonest_key_ms(const struct admit_view *v, int64_t now_ms)
{
    const struct config *c = v->cfg;
    int64_t best = 0;
    size_t i;

    for (i = 0; i < c->nkeys; i++) {
        int64_t left = v->ks[i]->cooldown_until_ms - now_ms;
        if (c->keys[i].active && !v->ks[i]->disabled && left > 0
            && (best == 0 || left < best))
            best = left;
    }
    return best;
}

int admit_host_down(const struct admit_view *v, int h, int64_t now_ms)
{
    const struct host_state *hs = v->hs[h];

    return !hs->live.usable || hs->health == HEALTH_UNHEALTHY
           || breaker_state(&hs->br, now_ms) == BREAKER_OPEN;
}

/* --- the outcome --------------------------------------------------------- */

struct admit_verdict admit_classify(const struct retry_params *rp,
                                    const struct admit_req *r,
                                    const struct admit_pick *pk,
                                    enum retry_fault fault, int status, int active)
{
    struct retry_outcome o = { fault, status, pk->has_key };
    struct admit_verdict v;

    memset(&v, 0, sizeof(v));
    v.rv = retry_classify(rp, &o);
    v.key_report = pk->has_key && v.rv.key != RETRY_KEY_KEEP;
    if (active > 0)
        v.next = ADMIT_WAIT;
    else if (r->race > 1)
        v.next = ADMIT_RACE_LOST;
    else if (!v.rv.retryable)
        v.next = ADMIT_GIVE_UP;
    else if (r->step_attempts >= r->max_attempts)
        v.next = ADMIT_NEXT_STEP;
    else
        v.next = ADMIT_RETRY;
    return v;
}

struct retry_verdict admit_answer(const struct retry_params *rp,
                                  const struct admit_pick *pk, int status, int own_404)
{
    struct retry_outcome o = { RETRY_FAULT_NONE, status, pk->has_key };
    struct retry_verdict v = retry_classify(rp, &o);

    if (status == 404 && own_404) {
        v.retryable = 0;
        v.host_failure = 0;
    }
    return v;
}

struct admit_recorded admit_record(const struct admit_view *v, struct admit_pick *pk,
                                   int failure, int answered,
                                   int64_t latency_ms, int64_t now_ms)
{
    struct host_state *hs = v->hs[pk->host];
    int model_only = failure && answered && pk->mticket_open;
    int host_failure = failure && !model_only;
    struct admit_recorded out;

    memset(&out, 0, sizeof(out));
    if (pk->ticket_open && model_only) {
        breaker_release(&hs->br, pk->ticket);
        pk->ticket_open = 0;
    }
    if (pk->ticket_open) {
        out.host_recorded = 1;
        out.host_before = breaker_state(&hs->br, now_ms);
        out.host_after = breaker_record(&hs->br, pk->ticket, !host_failure,
                                        latency_ms, now_ms);
        pk->ticket_open = 0;
    }
    if (pk->mticket_open) {
        out.model_opened = breaker_record(pk->mbr, pk->mticket, !failure, latency_ms,
                                          now_ms) == BREAKER_OPEN && failure;
        pk->mticket_open = 0;
    }
    if (model_only)
        return out;
    out.counts_for_host = 1;
    if (host_failure) {
        hs->failures++;
        hs->consecutive_failures++;
    } else {
        hs->consecutive_failures = 0;
    }
    return out;
}

int64_t admit_delay(const struct retry_params *rp, const struct config *c,
                    const struct admit_req *r, const struct retry_verdict *rv,
                    uint64_t rnd, int64_t ra_ms, int64_t t_start, int64_t now_ms)
{
    /* A Retry-After that came with a key-related answer is that key's
     * cooldown; the retry goes with another key without waiting for it. */
    int64_t delay = retry_delay_ms(rp, r->step_attempts, rnd,
                                   c->retry.respect_retry_after && rv->key == RETRY_KEY_KEEP
                                       ? ra_ms : -1);

    if (now_ms + delay >= t_start + r->deadline_ms)
        return -1;
    return delay;
}
