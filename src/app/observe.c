/*
 * observe.c -- time series, reload history and state-change events (see
 * observe.h).
 */
#include <stdlib.h>
#include <string.h>

#include "events.h"
#include "gw.h"
#include "health.h"
#include "keys.h"
#include "metrics.h"
#include "observe.h"
#include "session.h"
#include "timeseries.h"

struct reload_rec {
    int64_t  unix_ms;
    int      ok;
    uint64_t generation;
    json_t  *errors;                /* array of strings */
};

struct observe {
    struct timeseries ts;
    struct reload_rec reloads[OBSERVE_RELOADS];
    size_t            nreloads, next_reload;
    json_t           *replicas;     /* id -> address, as last announced */
};

struct observe *observe_new(void)
{
    struct observe *o = calloc(1, sizeof(*o));
    struct metrics_totals t;

    if (o && (o->replicas = json_object()) == NULL) {
        free(o);
        return NULL;
    }
    if (o) {                        /* the first point counts from here */
        metrics_totals(&t);
        ts_sample(&o->ts, &t, gw_unix_ms());
    }
    return o;
}

void observe_free(struct observe *o)
{
    size_t i;

    if (o == NULL)
        return;
    for (i = 0; i < OBSERVE_RELOADS; i++)
        json_decref(o->reloads[i].errors);
    json_decref(o->replicas);
    free(o);
}

static const char *breaker_event(enum breaker_state st)
{
    switch (st) {
    case BREAKER_OPEN:      return "breaker_open";
    case BREAKER_HALF_OPEN: return "breaker_half_open";
    case BREAKER_CLOSED:    break;
    }
    return "breaker_closed";
}

static const char *out_why[] = { "", "probe", "passive", "breaker" };

void observe_host_out(struct host_state *hs, const char *host, const char *why,
                      const char *detail)
{
    int code;

    if (hs->ev_out)
        return;
    for (code = 3; code > 1 && strcmp(why, out_why[code]) != 0; code--)
        ;
    hs->ev_out = code;
    events_emit("host_out", json_pack("{s:s, s:s, s:s?}", "host", host, "why", why,
                                      "detail", detail && *detail ? detail : NULL));
}

/* Back in rotation; `why` is what had put it out. */
void observe_host_back(struct host_state *hs, const char *host)
{
    int code = hs->ev_out;

    if (code == 0)
        return;
    hs->ev_out = 0;
    events_emit("host_back", json_pack("{s:s, s:s}", "host", host, "why", out_why[code]));
}

void observe_breaker(struct host_state *hs, const char *host,
                     enum breaker_state st, const char *model)
{
    if (model) {                    /* per host+model: told as it happens */
        events_emit(breaker_event(st), json_pack("{s:s, s:s}", "host", host,
                                                 "model", model));
        return;
    }
    if ((int)st == hs->ev_breaker)
        return;
    hs->ev_breaker = (int)st;
    events_emit(breaker_event(st), json_pack("{s:s}", "host", host));
    /* Out of the rotation while open; back once it closes, unless its
     * health checks still hold it out. */
    if (st == BREAKER_OPEN)
        observe_host_out(hs, host, "breaker", hs->last_error);
    else if (st == BREAKER_CLOSED && health_effective(hs) != HEALTH_UNHEALTHY)
        observe_host_back(hs, host);
}

static int key_code(const char *state)
{
    return state[0] == 'c' ? 1 : state[0] == 'd' ? 2 : 0;
}

void observe_key(struct key_state *ks, const struct cfg_key *k, const char *state,
                 int status, const char *host, int64_t until_unix_ms,
                 const char *why)
{
    static const char *types[] = { "key_back", "key_cooled", "key_disabled" };
    int code = key_code(state);
    json_t *f;

    if (code == ks->ev_state && code != 1)
        return;                     /* a new cooldown is news, a repeat is not */
    ks->ev_state = code;
    f = json_pack("{s:s, s:s}", "key", k->fingerprint, "description", k->description);
    if (f == NULL)
        return;
    if (status)
        json_object_set_new(f, "status", json_integer(status));
    if (host)
        json_object_set_new(f, "host", json_string(host));
    if (code == 1 && until_unix_ms > 0)
        json_object_set_new(f, "until_ms", json_integer(until_unix_ms));
    if (why)
        json_object_set_new(f, "why", json_string(why));
    events_emit(types[code], f);
}

void observe_reload(struct observe *o, int ok, uint64_t generation,
                    const struct cfg_errors *errs)
{
    struct reload_rec *r = &o->reloads[o->next_reload];
    json_t *all = json_array(), *some = json_array();
    size_t i, n = errs ? errs->n : 0;

    for (i = 0; i < n; i++) {
        json_array_append_new(all, json_string(errs->msg[i]));
        if (i < OBSERVE_EVENT_ERRORS)
            json_array_append_new(some, json_string(errs->msg[i]));
    }
    json_decref(r->errors);
    r->unix_ms = gw_unix_ms();
    r->ok = ok;
    r->generation = generation;
    r->errors = all;
    o->next_reload = (o->next_reload + 1) % OBSERVE_RELOADS;
    if (o->nreloads < OBSERVE_RELOADS)
        o->nreloads++;
    events_emit(ok ? "reload_ok" : "reload_failed",
                json_pack("{s:I, s:o, s:I}", "generation", (json_int_t)generation,
                          "errors", some, "errors_total", (json_int_t)n));
}

json_t *observe_reloads_json(const struct observe *o)
{
    json_t *a = json_array();
    size_t i;

    for (i = 0; i < o->nreloads; i++) {
        const struct reload_rec *r =
            &o->reloads[(o->next_reload + OBSERVE_RELOADS - 1 - i) % OBSERVE_RELOADS];
        json_array_append_new(a, json_pack("{s:I, s:b, s:I, s:O}",
                                           "time_ms", (json_int_t)r->unix_ms,
                                           "ok", r->ok,
                                           "generation", (json_int_t)r->generation,
                                           "errors", r->errors));
    }
    return a;
}

json_t *observe_timeseries_json(const struct observe *o, int64_t since_ms)
{
    return ts_json(&o->ts, since_ms);
}

/* Replicas sharing Redis that appeared or went since the last look. */
static void observe_replicas(struct observe *o, struct gateway *gw)
{
    struct session_metrics sm;
    json_t *st, *reps, *r, *now, *v;
    const char *id;
    size_t i;
    void *tmp;

    session_metrics_read(gw->sess, &sm);
    if (!sm.redis_configured && json_object_size(o->replicas) == 0)
        return;
    st = session_status_json(gw->sess);
    reps = json_object_get(st, "replicas");
    if ((now = json_object()) == NULL) {
        json_decref(st);
        return;
    }
    json_array_foreach(reps, i, r) {
        const char *rid = json_string_value(json_object_get(r, "id"));
        if (rid)
            json_object_set(now, rid, json_object_get(r, "address")
                                      ? json_object_get(r, "address") : json_null());
    }
    json_object_foreach(now, id, v)
        if (json_object_get(o->replicas, id) == NULL)
            events_emit("replica_joined", json_pack("{s:s, s:O}", "replica", id,
                                                    "address", v));
    json_object_foreach_safe(o->replicas, tmp, id, v)
        if (json_object_get(now, id) == NULL)
            events_emit("replica_left", json_pack("{s:s, s:O}", "replica", id,
                                                  "address", v));
    json_decref(o->replicas);
    o->replicas = now;
    json_decref(st);
}

void observe_tick(struct observe *o, struct gateway *gw)
{
    const struct snapshot *s = gw->snap;
    struct metrics_totals t;
    int64_t now = gw_now_ms();
    size_t i;

    metrics_totals(&t);
    ts_sample(&o->ts, &t, gw_unix_ms());
    for (i = 0; i < s->cfg->nhosts; i++) {
        struct host_state *hs = s->hs[i];
        const char *name = s->cfg->hosts[i].name;
        int out = health_effective(hs) == HEALTH_UNHEALTHY;
        enum breaker_state st = breaker_state(&hs->br, now);

        if ((int)st != hs->ev_breaker)
            observe_breaker(hs, name, st, NULL);
        if (out && !hs->ev_out)
            observe_host_out(hs, name, hs->ejected_until_ms ? "passive" : "probe",
                             hs->last_error);
        else if (!out && hs->ev_out && st == BREAKER_CLOSED)
            observe_host_back(hs, name);
    }
    for (i = 0; i < s->cfg->nkeys; i++) {
        struct key_state *ks = s->ks[i];
        const struct cfg_key *k = &s->cfg->keys[i];
        const char *st = keys_state_name(ks, k->active, now);
        int code = key_code(st);

        if (code == ks->ev_state)
            continue;
        observe_key(ks, k, st, 0, NULL,
                    code == 1 ? gw_unix_from_mono(ks->cooldown_until_ms) : 0,
                    code == 0 ? (ks->ev_state == 2 ? "reload" : "cooldown over")
                    : code == 2 && !k->active ? "configured inactive" : NULL);
    }
    observe_replicas(o, gw);
}
