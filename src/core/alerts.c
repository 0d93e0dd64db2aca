/*
 * alerts.c -- alert rules over sliding windows (pure: the time comes in as
 * arguments) and the module's lifecycle and reports (see alerts.h); the
 * notifications are in alerts_notify.c.
 *
 * Windows: each scope (global, and one per host seen) keeps a ring of
 * ALERTS_SLOTS slots of window/ALERTS_SLOTS each, with running sums, so an
 * observation is a few adds and an evaluation reads the sums. Latency goes
 * into log-spaced buckets (four per octave) laid out around the
 * latency_p99 threshold, which is itself a bucket bound: the p99 estimate
 * is within one bucket (19%) of the true value and "estimate > threshold"
 * is exactly "true p99 > threshold".
 *
 * Rules: OK -> PENDING (condition holds) -> FIRING (held for `for`: one
 * event) -> RESOLVING (clear) -> OK (clear for max(for,
 * ALERTS_RESOLVE_MIN_MS): one event). A condition coming back while
 * resolving returns to FIRING silently.
 *
 * Nothing here logs or touches the metrics registry: the transitions go to
 * the hook and alerts_notify() (which logs them), an allocation failure to
 * the log function given to alerts_new(), and the counters are read by
 * alerts_export_metrics() (alerts_notify.c).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alerts.h"
#include "lock.h"
#include "alerts_int.h"

const char *alerts_rule_name(enum alerts_rule r)
{
    return (unsigned)r < ALERTS_RULES ? alerts_rule_names[r] : "unknown";
}

/* --- latency estimator ----------------------------------------------- */

static void bounds_init(struct settings *s)
{
    int i;

    for (i = 0; i < LAT_BOUNDS; i++)
        s->bound[i] = s->p99_ms * exp2((double)(i - LAT_CENTER) / LAT_STEPS);
}

static int lat_bucket(const struct settings *s, double ms)
{
    double r;

    if (!(ms > s->bound[0]))            /* also NaN and <= 0 */
        return 0;
    if (ms > s->bound[LAT_BOUNDS - 1])
        return LAT_BOUNDS;
    r = ceil(LAT_STEPS * log2(ms / s->p99_ms)) + LAT_CENTER;
    if (r < 0)
        return 0;
    if (r > LAT_BOUNDS - 1)
        return LAT_BOUNDS - 1;
    return (int)r;
}

/* Nearest-rank p99 from the window's buckets, interpolated in its bucket. */
static double p99_ms(const struct settings *s, const struct scope *sc)
{
    uint64_t n = 0, rank, cum = 0;
    int i;

    for (i = 0; i < LAT_BUCKETS; i++)
        n += sc->sum_lat[i];
    if (n == 0)
        return 0;
    rank = (uint64_t)ceil(P99_QUANTILE * (double)n);
    if (rank == 0)
        rank = 1;
    for (i = 0; i < LAT_BUCKETS; i++) {
        uint64_t c = sc->sum_lat[i];
        double lo, hi;

        if (cum + c < rank) {
            cum += c;
            continue;
        }
        if (i == LAT_BOUNDS)            /* above every bound: say the last one */
            return s->bound[LAT_BOUNDS - 1];
        lo = i == 0 ? 0 : s->bound[i - 1];
        hi = s->bound[i];
        return lo + (hi - lo) * (double)(rank - cum) / (double)c;
    }
    return s->bound[LAT_BOUNDS - 1];
}

/* --- scopes and windows ---------------------------------------------- */


static size_t slot_index(int64_t slot)
{
    int64_t m = slot % ALERTS_SLOTS;
    return (size_t)(m < 0 ? m + ALERTS_SLOTS : m);
}

static void slot_clear(struct scope *s, size_t i)
{
    int b;

    s->sum_total -= s->total[i];
    s->sum_ok -= s->ok[i];
    s->total[i] = s->ok[i] = 0;
    if (s->lat == NULL)
        return;
    for (b = 0; b < LAT_BUCKETS; b++) {
        s->sum_lat[b] -= s->lat[i * LAT_BUCKETS + b];
        s->lat[i * LAT_BUCKETS + b] = 0;
    }
}

/* Forgets every observation (new window or latency buckets). */
static void scope_reset(const struct alerts *a, struct scope *s, int want_lat)
{
    memset(s->total, 0, sizeof(s->total));
    memset(s->ok, 0, sizeof(s->ok));
    memset(s->sum_lat, 0, sizeof(s->sum_lat));
    s->sum_total = s->sum_ok = 0;
    s->head = -1;
    free(s->lat);
    s->lat = NULL;
    if (want_lat) {
        s->lat = calloc((size_t)ALERTS_SLOTS * LAT_BUCKETS, sizeof(*s->lat));
        if (s->lat == NULL && a->log)
            a->log(LOGL_ERROR, "alerts: out of memory: latency_p99 not evaluated for %s",
                   s->host ? s->host : "the global scope");
    }
}

/* Moves the ring to now's slot, dropping what fell out of the window. */
static void scope_advance(const struct alerts *a, struct scope *s, int64_t now_ms)
{
    int64_t slot = now_ms / a->set.slot_ms, steps, k;

    if (s->head < 0) {
        s->head = slot;
        return;
    }
    if (slot <= s->head)
        return;
    steps = slot - s->head;
    if (steps > ALERTS_SLOTS)
        steps = ALERTS_SLOTS;
    for (k = 1; k <= steps; k++)
        slot_clear(s, slot_index(s->head + k));
    s->head = slot;
}

static struct scope *scope_find(struct alerts *a, const char *host)
{
    struct scope *s;

    if (host == NULL)
        return &a->global;
    for (s = a->hosts[config_hash(host) & (SCOPE_HASH_SLOTS - 1)]; s; s = s->next)
        if (strcmp(s->host, host) == 0)
            return s;
    return NULL;
}

static struct scope *scope_get(struct alerts *a, const char *host)
{
    struct scope *s = scope_find(a, host);
    size_t b;

    if (s)
        return s;
    s = calloc(1, sizeof(*s));
    if (s == NULL)
        return NULL;
    s->host = strdup(host);
    if (s->host == NULL) {
        free(s);
        return NULL;
    }
    scope_reset(a, s, a->set.p99_ms > 0);
    b = config_hash(host) & (SCOPE_HASH_SLOTS - 1);
    s->next = a->hosts[b];
    a->hosts[b] = s;
    return s;
}

static void scope_free(struct scope *s)
{
    free(s->lat);
    free(s->host);
    free(s);
}

/* --- rules ----------------------------------------------------------- */

static int rule_on(const struct settings *s, enum alerts_rule r)
{
    switch (r) {
    case ALERTS_AVAILABILITY: return s->availability >= 0;
    case ALERTS_ERROR_RATE:   return s->error_rate >= 0;
    case ALERTS_LATENCY_P99:  return s->p99_ms > 0;
    default:                  return 0;
    }
}

static int any_rule_on(const struct settings *s)
{
    int r;

    for (r = 0; r < ALERTS_RULES; r++)
        if (rule_on(s, (enum alerts_rule)r))
            return 1;
    return 0;
}

/* In the rule's unit: a ratio, or seconds. */
static double rule_threshold(const struct settings *s, enum alerts_rule r)
{
    switch (r) {
    case ALERTS_AVAILABILITY: return s->availability;
    case ALERTS_ERROR_RATE:   return s->error_rate;
    default:                  return s->p99_ms / MS_PER_S;
    }
}

/* Returns 1 with the value (rule unit) and whether it violates the
 * threshold, or 0 when there is nothing to judge. */
static int rule_eval(const struct settings *set, const struct scope *s,
                     enum alerts_rule r, double *value, int *violates)
{
    double p;

    *violates = 0;
    if (s->sum_total < MIN_SAMPLES)
        return 0;
    switch (r) {
    case ALERTS_AVAILABILITY:
        *value = (double)s->sum_ok / (double)s->sum_total;
        *violates = *value < set->availability;
        return 1;
    case ALERTS_ERROR_RATE:
        *value = (double)(s->sum_total - s->sum_ok) / (double)s->sum_total;
        *violates = *value > set->error_rate;
        return 1;
    case ALERTS_LATENCY_P99:
        if (s->lat == NULL)
            return 0;
        p = p99_ms(set, s);
        *violates = p > set->p99_ms;
        *value = p / MS_PER_S;
        return 1;
    default:
        return 0;
    }
}

static int64_t resolve_hold_ms(const struct settings *s)
{
    return s->for_ms > ALERTS_RESOLVE_MIN_MS ? s->for_ms : ALERTS_RESOLVE_MIN_MS;
}

static void emit(struct alerts *a, const struct scope *s, enum alerts_rule r,
                 int firing, int64_t unix_ms)
{
    const struct rule_state *st = &s->rs[r];
    struct alerts_event ev;

    memset(&ev, 0, sizeof(ev));
    ev.rule = r;
    ev.host = s->host;
    ev.firing = firing;
    ev.has_value = st->has_value;
    ev.value = st->value;
    ev.threshold = st->threshold;
    ev.samples = st->samples;
    ev.since_unix_ms = st->since_unix_ms;
    ev.at_unix_ms = unix_ms;
    ev.window_ms = a->set.window_ms;
    ev.for_ms = a->set.for_ms;
    if (firing)
        a->cnt.fired++;
    else
        a->cnt.resolved++;
    if (a->hook)
        a->hook(a->hook_arg, &ev);
    alerts_notify(a, &ev);
}

/* One rule of one scope, one tick. Returns the number of events (0 or 1). */
static size_t rule_step(struct alerts *a, struct scope *s, enum alerts_rule r,
                        int64_t now_ms, int64_t unix_ms)
{
    struct rule_state *st = &s->rs[r];
    int violates = 0;

    if (!rule_on(&a->set, r)) {
        enum rule_phase was = st->phase;
        st->phase = PH_OK;
        st->has_value = 0;
        if (was < PH_FIRING)
            return 0;
        emit(a, s, r, 0, unix_ms);
        return 1;
    }
    st->has_value = rule_eval(&a->set, s, r, &st->value, &violates);
    st->samples = s->sum_total;
    st->threshold = rule_threshold(&a->set, r);
    for (;;) {
        switch (st->phase) {
        case PH_OK:
            if (!violates)
                return 0;
            st->phase = PH_PENDING;
            st->since_ms = now_ms;
            continue;
        case PH_PENDING:
            if (!violates) {
                st->phase = PH_OK;
                return 0;
            }
            if (now_ms - st->since_ms < a->set.for_ms)
                return 0;
            st->phase = PH_FIRING;
            st->since_unix_ms = unix_ms - (now_ms - st->since_ms);
            emit(a, s, r, 1, unix_ms);
            return 1;
        case PH_FIRING:
            if (violates)
                return 0;
            st->phase = PH_RESOLVING;
            st->clear_ms = now_ms;
            continue;
        case PH_RESOLVING:
            if (violates) {
                st->phase = PH_FIRING;
                return 0;
            }
            if (now_ms - st->clear_ms < resolve_hold_ms(&a->set))
                return 0;
            st->phase = PH_OK;
            emit(a, s, r, 0, unix_ms);
            return 1;
        }
    }
}

static int scope_idle(const struct scope *s)
{
    int r;

    if (s->sum_total)
        return 0;
    for (r = 0; r < ALERTS_RULES; r++)
        if (s->rs[r].phase != PH_OK)
            return 0;
    return 1;
}

void alerts_observe(struct alerts *a, const char *host, int ok,
                    double latency_ms, int64_t now_ms)
{
    struct scope *s;
    size_t i;

    lock_assert_held();
    if (a == NULL || !any_rule_on(&a->set))
        return;
    s = host ? scope_get(a, host) : &a->global;
    if (s == NULL)
        return;
    scope_advance(a, s, now_ms);
    i = slot_index(s->head);
    s->total[i]++;
    s->sum_total++;
    if (ok) {
        s->ok[i]++;
        s->sum_ok++;
    }
    if (s->lat) {
        int b = lat_bucket(&a->set, latency_ms);
        s->lat[i * LAT_BUCKETS + b]++;
        s->sum_lat[b]++;
    }
}

size_t alerts_tick(struct alerts *a, int64_t now_ms, int64_t unix_ms)
{
    size_t events = 0, b;
    int r;

    lock_assert_held();
    if (a == NULL)
        return 0;
    scope_advance(a, &a->global, now_ms);
    for (r = 0; r < ALERTS_RULES; r++)
        events += rule_step(a, &a->global, (enum alerts_rule)r, now_ms, unix_ms);
    for (b = 0; b < SCOPE_HASH_SLOTS; b++) {
        struct scope **pp = &a->hosts[b];
        while (*pp) {
            struct scope *s = *pp;
            scope_advance(a, s, now_ms);
            for (r = 0; r < ALERTS_RULES; r++)
                events += rule_step(a, s, (enum alerts_rule)r, now_ms, unix_ms);
            if (scope_idle(s)) {        /* seen again = created again */
                *pp = s->next;
                scope_free(s);
                continue;
            }
            pp = &s->next;
        }
    }
    return events;
}

int alerts_value(struct alerts *a, const char *host, enum alerts_rule rule,
                 int64_t now_ms, double *value, uint64_t *samples)
{
    struct scope *s = scope_find(a, host);
    int violates;

    lock_assert_held();
    if (s == NULL || !rule_on(&a->set, rule))
        return 0;
    scope_advance(a, s, now_ms);
    if (samples)
        *samples = s->sum_total;
    return rule_eval(&a->set, s, rule, value, &violates);
}

/* --- lifecycle and reports ------------------------------------------- */

struct alerts *alerts_new(struct event_base *base, struct upstream *up,
                          alerts_log_fn log_fn)
{
    struct alerts *a = calloc(1, sizeof(*a));

    if (a == NULL)
        return NULL;
    a->base = base;
    a->up = up;
    a->log = log_fn;
    a->set.availability = -1;
    a->set.error_rate = -1;
    a->set.slot_ms = 1;
    a->global.head = -1;
    return a;
}

void alerts_free(struct alerts *a)
{
    size_t b;

    if (a == NULL)
        return;
    while (a->deliveries)
        delivery_free(a->deliveries);
    for (b = 0; b < SCOPE_HASH_SLOTS; b++) {
        while (a->hosts[b]) {
            struct scope *s = a->hosts[b];
            a->hosts[b] = s->next;
            scope_free(s);
        }
    }
    free(a->global.lat);
    chanset_unref(a->chans);
    free(a);
}

int alerts_configure(struct alerts *a, const struct config *cfg)
{
    struct chanset *chans = chanset_new(cfg);
    struct settings ns;
    size_t b;
    int reset;

    lock_assert_held();
    if (chans == NULL)
        return -1;
    memset(&ns, 0, sizeof(ns));
    ns.window_ms = cfg->alerts.window_ms;
    ns.for_ms = cfg->alerts.for_ms;
    ns.slot_ms = ns.window_ms / ALERTS_SLOTS > 0 ? ns.window_ms / ALERTS_SLOTS : 1;
    ns.availability = cfg->alerts.availability;
    ns.error_rate = cfg->alerts.error_rate;
    ns.p99_ms = cfg->alerts.latency_p99_ms > 0 ? (double)cfg->alerts.latency_p99_ms : 0;
    if (ns.p99_ms > 0)
        bounds_init(&ns);
    reset = ns.window_ms != a->set.window_ms || ns.p99_ms != a->set.p99_ms;
    a->set = ns;
    chanset_unref(a->chans);
    a->chans = chans;
    if (!reset)
        return 0;
    scope_reset(a, &a->global, ns.p99_ms > 0);
    for (b = 0; b < SCOPE_HASH_SLOTS; b++) {
        struct scope *s;
        for (s = a->hosts[b]; s; s = s->next)
            scope_reset(a, s, ns.p99_ms > 0);
    }
    return 0;
}

void alerts_set_hook(struct alerts *a, alerts_event_fn fn, void *arg)
{
    a->hook = fn;
    a->hook_arg = arg;
}

static void status_scope(const struct scope *s, json_t *arr)
{
    char since[ISO_LEN];
    int r;

    for (r = 0; r < ALERTS_RULES; r++) {
        const struct rule_state *st = &s->rs[r];
        if (st->phase < PH_FIRING)
            continue;
        alerts_iso_time(st->since_unix_ms, since, sizeof(since));
        json_array_append_new(arr, json_pack(
            "{s:s, s:s, s:s?, s:o, s:f, s:s, s:I, s:s, s:f}",
            "alert", alerts_rule_names[r],
            "scope", s->host ? "host" : "global",
            "host", s->host,
            "value", st->has_value ? json_real(st->value) : json_null(),
            "threshold", st->threshold,
            "unit", alerts_rule_unit((enum alerts_rule)r),
            "samples", (json_int_t)st->samples,
            "since", since,
            "since_unix", (double)st->since_unix_ms / MS_PER_S));
    }
}

json_t *alerts_status_json(const struct alerts *a)
{
    json_t *arr = json_array();
    size_t b;

    lock_assert_held();
    if (arr == NULL || a == NULL)
        return arr;
    status_scope(&a->global, arr);
    for (b = 0; b < SCOPE_HASH_SLOTS; b++) {
        const struct scope *s;
        for (s = a->hosts[b]; s; s = s->next)
            status_scope(s, arr);
    }
    return arr;
}

static void count_firing(const struct scope *s, uint64_t *firing)
{
    int r;

    for (r = 0; r < ALERTS_RULES; r++)
        if (s->rs[r].phase >= PH_FIRING)
            firing[r]++;
}

void alerts_get_counters(const struct alerts *a, struct alerts_counters *c)
{
    size_t b;

    lock_assert_held();
    *c = a->cnt;
    memset(c->firing, 0, sizeof(c->firing));
    count_firing(&a->global, c->firing);
    for (b = 0; b < SCOPE_HASH_SLOTS; b++) {
        const struct scope *s;
        for (s = a->hosts[b]; s; s = s->next)
            count_firing(s, c->firing);
    }
}

size_t alerts_pending(const struct alerts *a)
{
    lock_assert_held();
    return a ? a->ndeliveries : 0;
}
