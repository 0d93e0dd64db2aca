/*
 * health.c -- active probes, passive outcomes, model discovery and
 * Infernet node info (see health.h).
 *
 * The pure half (parsers, threshold logic, verdicts) comes first. The
 * prober keeps one `struct probe` per host of the snapshot it was given:
 * a one-shot timer re-armed every interval, and at most one transfer in
 * flight. On a new snapshot, probes are matched to hosts by their runtime
 * state (the same name gives the same `struct host_state`), so a reload
 * neither restarts the schedule of hosts kept nor loses their probe in
 * flight.
 */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <jansson.h>

#include "clock.h"
#include "snapshot.h"
#include "health.h"
#include "keys.h"
#include "lock.h"
#include "log.h"
#include "upstream.h"

#define HEALTH_USER_AGENT   "infergate-health"
#define HEALTH_AUTH_MAX     4096        /* "Bearer " + key */
#define HEALTH_URL_MAX      2048
#define HEALTH_BODY_INITIAL 4096

/* --- small list helpers ---------------------------------------------- */

void health_strlist_free(struct cfg_strlist *l)
{
    cfg_strlist_free(l);
}

static int strlist_equal(const struct cfg_strlist *a, const struct cfg_strlist *b)
{
    size_t i;

    if (a->n != b->n)
        return 0;
    for (i = 0; i < a->n; i++)
        if (strcmp(a->v[i], b->v[i]) != 0)
            return 0;
    return 1;
}

/* Replaces *dst by *src (taken over); returns 1 if the content changed. */
static int strlist_replace(struct cfg_strlist *dst, struct cfg_strlist *src)
{
    int changed = !strlist_equal(dst, src);

    health_strlist_free(dst);
    *dst = *src;
    src->v = NULL;
    src->n = 0;
    return changed;
}

/* Collects the ids of a JSON array: strings as they are, objects by their
 * string "id"; other items are skipped. Returns 0 or -1 (out of memory). */
static int collect_ids(json_t *arr, struct cfg_strlist *out)
{
    size_t i, n = json_array_size(arr);
    json_t *it;

    out->v = NULL;
    out->n = 0;
    if (n > HEALTH_MAX_ITEMS)
        n = HEALTH_MAX_ITEMS;
    if (n == 0)
        return 0;
    out->v = calloc(n, sizeof(char *));
    if (out->v == NULL)
        return -1;
    for (i = 0; i < n; i++) {
        const char *id = NULL;

        it = json_array_get(arr, i);
        if (json_is_string(it))
            id = json_string_value(it);
        else if (json_is_object(it) && json_is_string(json_object_get(it, "id")))
            id = json_string_value(json_object_get(it, "id"));
        if (id == NULL || *id == '\0')
            continue;
        if ((out->v[out->n] = strdup(id)) == NULL) {
            health_strlist_free(out);
            return -1;
        }
        out->n++;
    }
    return 0;
}

static json_t *load_object(const char *body, size_t len, char *err, size_t errlen)
{
    json_error_t je;
    json_t *root = json_loadb(body, len, 0, &je);

    if (root == NULL) {
        snprintf(err, errlen, "invalid JSON: %s", je.text);
        return NULL;
    }
    if (!json_is_object(root)) {
        snprintf(err, errlen, "answer is not a JSON object");
        json_decref(root);
        return NULL;
    }
    return root;
}

/* --- parsers ---------------------------------------------------------- */

int health_path_is_infernet(const char *path)
{
    return path && (strcmp(path, "/info") == 0 || strcmp(path, "/api/info") == 0);
}

int health_parse_models(const char *body, size_t len, struct cfg_strlist *out,
                        char *err, size_t errlen)
{
    json_t *root = load_object(body, len, err, errlen), *data;
    struct cfg_strlist l;

    if (root == NULL)
        return -1;
    data = json_object_get(root, "data");
    if (!json_is_array(data)) {
        snprintf(err, errlen, "no \"data\" list in the model list");
        json_decref(root);
        return -1;
    }
    if (collect_ids(data, &l) < 0) {
        snprintf(err, errlen, "out of memory");
        json_decref(root);
        return -1;
    }
    json_decref(root);
    health_strlist_free(out);
    *out = l;
    return 0;
}

/* Adds a pending count (a non-negative integer-valued number) to *sum,
 * clamped to INT_MAX. Returns -1 on anything else. */
static int add_pending(json_t *v, int64_t *sum)
{
    double d;

    if (json_is_integer(v)) {
        json_int_t i = json_integer_value(v);
        if (i < 0)
            return -1;
        *sum = (int64_t)i > INT_MAX - *sum ? INT_MAX : *sum + (int64_t)i;
        return 0;
    }
    if (!json_is_real(v))
        return -1;
    d = json_real_value(v);
    if (!(d >= 0) || d != (double)(int64_t)d)     /* NaN, negative, fraction */
        return -1;
    *sum = d > (double)(INT_MAX - *sum) ? INT_MAX : *sum + (int64_t)d;
    return 0;
}

int health_parse_infernet(const char *body, size_t len,
                          struct cfg_strlist *containers, int *pending,
                          char *err, size_t errlen)
{
    json_t *root = load_object(body, len, err, errlen), *c, *p, *v;
    struct cfg_strlist l = { NULL, 0 };
    int64_t sum = 0;
    const char *k;

    if (root == NULL)
        return -1;
    c = json_object_get(root, "containers");
    if (c && !json_is_null(c) && !json_is_array(c)) {
        snprintf(err, errlen, "\"containers\" is not a list");
        goto fail;
    }
    p = json_object_get(root, "pending");
    if (json_is_object(p)) {
        json_object_foreach(p, k, v) {
            if (add_pending(v, &sum) < 0) {
                snprintf(err, errlen, "\"pending.%.40s\" is not a non-negative"
                         " integer", k);
                goto fail;
            }
        }
    } else if (p && !json_is_null(p) && add_pending(p, &sum) < 0) {
        snprintf(err, errlen, "\"pending\" is neither a non-negative integer"
                 " nor an object of them");
        goto fail;
    }
    if (json_is_array(c) && collect_ids(c, &l) < 0) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    json_decref(root);
    health_strlist_free(containers);
    *containers = l;
    *pending = (int)sum;
    return 0;

fail:
    json_decref(root);
    return -1;
}

/* --- verdicts --------------------------------------------------------- */

static void set_error(struct host_state *hs, const char *why)
{
    if (why && *why)
        snprintf(hs->last_error, sizeof(hs->last_error), "%s", why);
}

/* The health verdict balance.c reads: not down by probes, and not
 * ejected, unless the host's breaker is half-open (its trial may pass an
 * ejection). */
static int verdict(const struct host_state *hs, int64_t now_ms)
{
    if (hs->health == HEALTH_UNHEALTHY)
        return 0;
    return hs->ejected_until_ms == 0
           || breaker_state(&hs->br, now_ms) == BREAKER_HALF_OPEN;
}

static void end_ejection(struct host_state *hs, int64_t now_ms)
{
    hs->ejected_until_ms = 0;
    hs->ejection_end_ms = now_ms > 0 ? now_ms : 1;
}

/* Every flip goes through here: streaks start over in the new state. A
 * flip to healthy (healthy_threshold good probes) also ends an ejection. */
static void set_health(struct host_state *hs, enum host_health h, int64_t now_ms)
{
    hs->health = h;
    hs->probe_successes = 0;
    hs->probe_failures = 0;
    if (h == HEALTH_HEALTHY) {
        hs->consecutive_failures = 0;
        if (hs->ejected_until_ms)
            end_ejection(hs, now_ms);
    }
    hs->live.usable = verdict(hs, now_ms);
}

int health_record_probe(const struct config *c, struct host_state *hs, int ok,
                        const char *why, int64_t now_unix_ms, int64_t now_ms)
{
    lock_assert_held();
    hs->last_check_unix_ms = now_unix_ms;
    if (ok) {
        hs->probe_failures = 0;
        if (hs->probe_successes < INT_MAX)
            hs->probe_successes++;
        if (hs->probe_successes < c->health.healthy_threshold)
            return 0;
        if (hs->health == HEALTH_UNHEALTHY) {
            set_health(hs, HEALTH_HEALTHY, now_ms);
            return 1;
        }
        if (hs->ejected_until_ms) {         /* probes end an ejection too */
            end_ejection(hs, now_ms);
            hs->consecutive_failures = 0;
            hs->live.usable = verdict(hs, now_ms);
            return 1;
        }
        return 0;
    }
    set_error(hs, why);
    hs->probe_successes = 0;
    if (hs->probe_failures < INT_MAX)
        hs->probe_failures++;
    if (hs->health != HEALTH_UNHEALTHY
        && hs->probe_failures >= c->health.unhealthy_threshold) {
        set_health(hs, HEALTH_UNHEALTHY, now_ms);
        return 1;
    }
    return 0;
}

int64_t health_ejection_ms(const struct config *c, int n)
{
    int64_t base = c->health.ejection_base_ms, max = c->health.ejection_max_ms;
    int64_t d;

    if (n < 1)
        n = 1;
    d = base > max / n ? max : base * n;
    return d < max ? d : max;
}

int health_passive(const struct config *c, struct host_state *hs, int ok,
                   const char *why, int64_t started_ms, int64_t now_ms)
{
    int64_t base = c->health.ejection_base_ms;

    lock_assert_held();
    if (ok) {
        /* A request sent before the ejection proves nothing new; one sent
         * since (a breaker's half-open trial, panic mode) ends it. */
        if (hs->ejected_until_ms == 0 || started_ms < hs->ejected_at_ms)
            return 0;
        end_ejection(hs, now_ms);
        hs->live.usable = verdict(hs, now_ms);
        return HEALTH_PASSIVE_RETURNED;
    }
    set_error(hs, why);
    if (!c->health.passive || !c->health.enabled)
        return 0;
    /* A failed request also sets back a recovery by probes. */
    hs->probe_successes = 0;
    if (hs->ejected_until_ms
        || hs->consecutive_failures < (uint64_t)c->health.unhealthy_threshold) {
        hs->live.usable = verdict(hs, now_ms);     /* a failed trial */
        return 0;
    }
    /* The multiplier forgets one ejection per ejection_base in service. */
    if (hs->ejections > 0 && hs->ejection_end_ms > 0 && base > 0) {
        int64_t calm = (now_ms - hs->ejection_end_ms) / base;
        hs->ejections = calm >= hs->ejections ? 0 : hs->ejections - (int)calm;
    }
    if (hs->ejections < HEALTH_MAX_EJECTIONS)
        hs->ejections++;
    hs->ejections_total++;
    hs->ejected_at_ms = now_ms;
    hs->ejected_until_ms = now_ms + health_ejection_ms(c, hs->ejections);
    hs->live.usable = verdict(hs, now_ms);
    return HEALTH_PASSIVE_EJECTED;
}

int health_refresh(struct host_state *hs, int64_t now_ms)
{
    int was = hs->live.usable, what = 0;

    lock_assert_held();
    if (hs->ejected_until_ms && now_ms >= hs->ejected_until_ms) {
        end_ejection(hs, now_ms);
        what |= HEALTH_REFRESH_RETURNED;
    }
    hs->live.usable = verdict(hs, now_ms);
    if (hs->live.usable != was)
        what |= HEALTH_REFRESH_USABLE;
    return what;
}

enum host_health health_effective(const struct host_state *hs)
{
    lock_assert_held();
    if (hs->health == HEALTH_UNHEALTHY || hs->ejected_until_ms)
        return HEALTH_UNHEALTHY;
    if (hs->consecutive_failures > 0 || hs->probe_failures > 0)
        return HEALTH_DEGRADED;
    return HEALTH_HEALTHY;
}

const char *health_name(enum host_health h)
{
    switch (h) {
    case HEALTH_HEALTHY:   return "healthy";
    case HEALTH_DEGRADED:  return "degraded";
    case HEALTH_UNHEALTHY: return "unhealthy";
    }
    return "unknown";
}

int health_usable(const struct host_state *hs, int64_t now_ms)
{
    lock_assert_held();
    return hs->live.usable && hs->health != HEALTH_UNHEALTHY
           && breaker_state(&hs->br, now_ms) != BREAKER_OPEN;
}

int health_host_serves(const struct cfg_host *h, const struct host_state *hs,
                       const char *model)
{
    lock_assert_held();
    if (model == NULL || (h->models.n == 0 && hs->models_found.n == 0))
        return 1;
    return cfg_strlist_has(&h->models, model) || cfg_strlist_has(&hs->models_found, model);
}

int health_host_runs(const struct cfg_host *h, const struct host_state *hs,
                     const char *id)
{
    lock_assert_held();
    return cfg_strlist_has(&h->containers, id) || cfg_strlist_has(&hs->containers_found, id);
}

/* --- the prober ------------------------------------------------------- */

struct probe {
    struct health        *h;
    struct host_state    *hs;        /* valid while its host is in h->snap */
    size_t                idx;       /* the host's index in h->snap */
    const char           *url;       /* the host URL, owned by h->snap's config */
    struct event         *timer;
    struct upstream_xfer *xfer;      /* the probe in flight, or NULL */
    int                   status;
    int                   want_body;
    int                   too_large;
    char                 *body;
    size_t                len, cap;
    int                   fresh;     /* made by the set_snapshot in progress */
    int                   taken;     /* matched by the set_snapshot in progress */
};

struct health {
    struct event_base *base;
    struct upstream   *up;
    struct snapshot   *snap;         /* one reference, NULL before the first */
    struct probe     **probes;       /* [n], one per host of snap when enabled */
    size_t             n;
    int64_t            interval_ms;  /* of the current schedule */
    health_change_fn   on_change;
    void              *on_change_arg;
    size_t             in_flight;
    uint64_t           sent;
};

static void probe_tick(evutil_socket_t fd, short what, void *arg);

static void arm(struct probe *p, int64_t ms)
{
    struct timeval tv = { (time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000) };

    evtimer_add(p->timer, &tv);
}

static void probe_cancel(struct probe *p)
{
    if (p->xfer == NULL)
        return;
    upstream_cancel(p->xfer);
    p->xfer = NULL;
    p->h->in_flight--;
}

static void probe_free(struct probe *p)
{
    probe_cancel(p);
    if (p->timer)
        event_free(p->timer);
    free(p->body);
    free(p);
}

static struct probe *probe_new(struct health *h, struct host_state *hs)
{
    struct probe *p = calloc(1, sizeof(*p));

    if (p == NULL)
        return NULL;
    p->h = h;
    p->hs = hs;
    p->fresh = 1;
    p->timer = evtimer_new(h->base, probe_tick, p);
    if (p->timer == NULL) {
        free(p);
        return NULL;
    }
    return p;
}

/* The first key of the host's ring that may be used now, or NULL. */
static const char *probe_key(const struct snapshot *s, size_t idx, int64_t now_ms)
{
    const struct keys_ring *r = &s->rings[idx];
    size_t i;

    for (i = 0; i < r->n; i++) {
        size_t k = r->slot[i];
        if (strcmp(keys_state_name(s->ks[k], s->cfg->keys[k].active, now_ms),
                   "active") == 0)
            return s->cfg->keys[k].secret;
    }
    return NULL;
}

static enum upstream_verdict probe_on_headers(void *arg, struct upstream_xfer *x,
                                              int status)
{
    struct probe *p = arg;

    (void)x;
    p->status = status;
    p->len = 0;
    return UPSTREAM_CONTINUE;
}

static enum upstream_verdict probe_on_data(void *arg, const char *data, size_t len)
{
    struct probe *p = arg;

    if (!p->want_body || p->status < 200 || p->status >= 300)
        return UPSTREAM_CONTINUE;                   /* not read: dropped */
    if (p->len + len > HEALTH_MAX_BODY) {
        p->too_large = 1;
        return UPSTREAM_ABORT;
    }
    if (p->len + len + 1 > p->cap) {
        size_t ncap = p->cap ? p->cap : HEALTH_BODY_INITIAL;
        char *nb;
        while (ncap < p->len + len + 1)
            ncap *= 2;
        if ((nb = realloc(p->body, ncap)) == NULL)
            return UPSTREAM_ABORT;
        p->body = nb;
        p->cap = ncap;
    }
    memcpy(p->body + p->len, data, len);
    p->len += len;
    return UPSTREAM_CONTINUE;
}

/* Reads a 2xx answer's body into the host's state. Returns 1 on success,
 * 0 with `why` filled; *changed gets HEALTH_CHANGED_* bits. */
static int probe_read_body(struct probe *p, const struct config *c, char *why,
                           size_t whylen, unsigned *changed)
{
    struct host_state *hs = p->hs;
    const char *path = c->health.path;
    char err[96];

    if (health_path_is_infernet(path)) {
        struct cfg_strlist l = { NULL, 0 };
        int pending = 0;
        if (health_parse_infernet(p->body ? p->body : "", p->len, &l, &pending,
                                  err, sizeof(err)) < 0) {
            snprintf(why, whylen, "probe %s: %s", path, err);
            return 0;
        }
        if (strlist_replace(&hs->containers_found, &l))
            *changed |= HEALTH_CHANGED_CONTAINERS;
        hs->live.pending = pending;
        return 1;
    }
    if (c->health.discover_models) {
        struct cfg_strlist l = { NULL, 0 };
        if (health_parse_models(p->body ? p->body : "", p->len, &l,
                                err, sizeof(err)) < 0) {
            snprintf(why, whylen, "probe %s: %s", path, err);
            return 0;
        }
        if (strlist_replace(&hs->models_found, &l))
            *changed |= HEALTH_CHANGED_MODELS;
    }
    return 1;
}

static void probe_on_done(void *arg, enum upstream_result res, const char *errmsg)
{
    struct probe *p = arg;
    struct health *h = p->h;
    const struct config *c = h->snap->cfg;
    const char *name = c->hosts[p->idx].name;
    char why[sizeof(p->hs->last_error)];
    unsigned changed = 0;
    int ok = 0, wrong_path = 0;

    p->xfer = NULL;
    h->in_flight--;
    why[0] = '\0';
    if (p->too_large)
        snprintf(why, sizeof(why), "probe %s: answer larger than %d bytes",
                 c->health.path, HEALTH_MAX_BODY);
    else if (res != UPSTREAM_OK)
        snprintf(why, sizeof(why), "probe %s: %s: %s", c->health.path,
                 upstream_result_name(res), errmsg ? errmsg : "");
    else if (p->status >= 200 && p->status < 300)
        ok = probe_read_body(p, c, why, sizeof(why), &changed);
    else if (p->status < 400 || p->status == 401 || p->status == 403
             || p->status == 429)
        ok = 1;                 /* up; our key is refused or throttled */
    else if ((p->status == 404 || p->status == 405)
             && strcmp(c->health.path, HEALTH_DEFAULT_PATH) == 0) {
        /* Many OpenAI-compatible servers have no GET /v1/models. */
        snprintf(why, sizeof(why), "probe path %s answers %d: set health_check.path",
                 c->health.path, p->status);
        wrong_path = 1;
    } else
        snprintf(why, sizeof(why), "probe %s: HTTP %d", c->health.path, p->status);
    free(p->body);                  /* most hosts sit idle: hold no buffer */
    p->body = NULL;
    p->len = p->cap = 0;

    if (wrong_path && !p->hs->probe_path_noted)      /* once per host */
        log_warn("host %s: %s", name, why);
    p->hs->probe_path_noted = wrong_path || (p->hs->probe_path_noted && !ok);
    if (health_record_probe(c, p->hs, ok, why, gw_unix_ms(), gw_now_ms())) {
        changed |= HEALTH_CHANGED_HEALTH;
        if (ok)
            log_info("host %s is healthy again (%d successful probes)", name,
                     c->health.healthy_threshold);
        else
            log_warn("host %s is unhealthy after %d failed probes: %s", name,
                     c->health.unhealthy_threshold, why);
    } else if (!ok) {
        log_debug("host %s failed a probe: %s", name, why);
    }
    if (changed && h->on_change)
        h->on_change(h->on_change_arg, p->idx, changed);
}

static const struct upstream_cbs probe_cbs = {
    probe_on_headers, probe_on_data, probe_on_done
};

static void probe_start(struct probe *p)
{
    struct health *h = p->h;
    const struct snapshot *s = h->snap;
    const struct config *c = s->cfg;
    struct upstream_header hdr[3];
    struct upstream_req ur;
    char url[HEALTH_URL_MAX], auth[HEALTH_AUTH_MAX];
    const char *key = probe_key(s, p->idx, gw_now_ms());
    size_t nh = 0;

    snprintf(url, sizeof(url), "%s%s", c->hosts[p->idx].url, c->health.path);
    hdr[nh].name = "Accept";
    hdr[nh++].value = "application/json";
    hdr[nh].name = "User-Agent";
    hdr[nh++].value = HEALTH_USER_AGENT;
    if (key) {
        snprintf(auth, sizeof(auth), "Bearer %s", key);
        hdr[nh].name = "Authorization";
        hdr[nh++].value = auth;
    }
    memset(&ur, 0, sizeof(ur));
    ur.url = url;
    ur.method = "GET";
    ur.headers = hdr;
    ur.nheaders = nh;
    ur.connect_timeout_ms = c->health.timeout_ms;
    ur.total_timeout_ms = c->health.timeout_ms;
    ur.ca_file = c->hosts[p->idx].tls.ca_file;
    ur.insecure = !c->hosts[p->idx].tls.verify;
    ur.server_name = c->hosts[p->idx].tls.server_name;

    p->status = 0;
    p->len = 0;
    p->too_large = 0;
    p->want_body = health_path_is_infernet(c->health.path) || c->health.discover_models;
    p->xfer = upstream_start(h->up, &ur, &probe_cbs, p);
    memset(auth, 0, sizeof(auth));     /* upstream copied it */
    if (p->xfer == NULL) {
        log_warn("host %s: cannot start a health probe", c->hosts[p->idx].name);
        return;
    }
    h->in_flight++;
    h->sent++;
}

static void probe_tick(evutil_socket_t fd, short what, void *arg)
{
    struct probe *p = arg;

    (void)fd;
    (void)what;
    arm(p, p->h->interval_ms);
    if (p->xfer)
        return;             /* the last one still runs: skip this round */
    probe_start(p);
}

/* --- snapshots -------------------------------------------------------- */

static int cmp_probe_hs(const void *a, const void *b)
{
    uintptr_t x = (uintptr_t)(*(struct probe *const *)a)->hs;
    uintptr_t y = (uintptr_t)(*(struct probe *const *)b)->hs;

    return x < y ? -1 : x > y;
}

/* The old probe of host state `hs`, if any is left untaken. */
static struct probe *find_probe(struct probe **sorted, size_t n,
                                const struct host_state *hs)
{
    size_t lo = 0, hi = n;

    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        uintptr_t m = (uintptr_t)sorted[mid]->hs;
        if (m == (uintptr_t)hs)
            return sorted[mid]->taken ? NULL : sorted[mid];
        if (m < (uintptr_t)hs)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

/* A host whose URL changed under the same name is another machine. */
static void host_reset(struct host_state *hs)
{
    hs->ejected_until_ms = 0;
    hs->ejection_end_ms = 0;
    hs->ejections = 0;
    hs->probe_path_noted = 0;
    set_health(hs, HEALTH_HEALTHY, gw_now_ms());
    hs->last_check_unix_ms = 0;
    hs->last_error[0] = '\0';
    hs->live.pending = 0;
    health_strlist_free(&hs->models_found);
    health_strlist_free(&hs->containers_found);
}

/* Drops what the new configuration no longer produces; returns the
 * HEALTH_CHANGED_* bits of what it changed. */
static unsigned host_trim(const struct config *c, struct host_state *hs)
{
    int infernet = health_path_is_infernet(c->health.path);
    unsigned what = 0;

    if (!c->health.enabled) {
        if (hs->health == HEALTH_UNHEALTHY || hs->ejected_until_ms)
            what |= HEALTH_CHANGED_HEALTH;
        hs->health = HEALTH_HEALTHY;        /* nothing would bring it back */
        hs->ejected_until_ms = 0;
        hs->live.usable = 1;
        hs->probe_successes = 0;
        hs->probe_failures = 0;
    }
    if ((!c->health.enabled || !c->health.discover_models || infernet)
        && hs->models_found.n) {
        health_strlist_free(&hs->models_found);
        what |= HEALTH_CHANGED_MODELS;
    }
    if ((!c->health.enabled || !infernet) && hs->containers_found.n) {
        health_strlist_free(&hs->containers_found);
        what |= HEALTH_CHANGED_CONTAINERS;
    }
    if (!c->health.enabled || !infernet)
        hs->live.pending = 0;
    return what;
}

int health_set_snapshot(struct health *h, struct snapshot *s)
{
    const struct config *c = s->cfg;
    size_t nn = c->health.enabled ? c->nhosts : 0, i;
    struct probe **np = calloc(nn ? nn : 1, sizeof(*np));
    struct probe **sorted = calloc(h->n ? h->n : 1, sizeof(*sorted));
    struct snapshot *old = h->snap;
    int resched = c->health.interval_ms != h->interval_ms;

    lock_assert_held();
    if (np == NULL || sorted == NULL)
        goto oom;
    if (h->n) {
        memcpy(sorted, h->probes, h->n * sizeof(*sorted));
        qsort(sorted, h->n, sizeof(*sorted), cmp_probe_hs);
    }
    for (i = 0; i < nn; i++) {
        struct probe *p = find_probe(sorted, h->n, s->hs[i]);
        if (p == NULL && (p = probe_new(h, s->hs[i])) == NULL)
            goto oom;
        p->taken = 1;
        np[i] = p;
    }
    /* Committed from here: nothing below can fail. */
    for (i = 0; i < h->n; i++)
        if (!h->probes[i]->taken)
            probe_free(h->probes[i]);
    snapshot_ref(s);
    h->snap = s;
    h->interval_ms = c->health.interval_ms;
    for (i = 0; i < nn; i++) {
        struct probe *p = np[i];
        int moved = !p->fresh && strcmp(p->url, c->hosts[i].url) != 0;

        if (moved) {
            probe_cancel(p);
            host_reset(p->hs);
        }
        p->idx = i;
        p->url = c->hosts[i].url;
        if (p->fresh || moved || resched)
            arm(p, (int64_t)i * c->health.interval_ms / (int64_t)nn);
        p->fresh = 0;
        p->taken = 0;
    }
    free(h->probes);
    free(sorted);
    h->probes = np;
    h->n = nn;
    if (old)
        snapshot_unref(old);
    for (i = 0; i < c->nhosts; i++) {
        unsigned what = host_trim(c, s->hs[i]);
        if (what && h->on_change)
            h->on_change(h->on_change_arg, i, what);
    }
    return 0;

oom:
    for (i = 0; np && i < nn; i++) {
        if (np[i] == NULL)
            break;
        if (np[i]->fresh)
            probe_free(np[i]);
        else
            np[i]->taken = 0;
    }
    free(np);
    free(sorted);
    return -1;
}

/* --- lifecycle -------------------------------------------------------- */

struct health *health_new(struct event_base *base, struct upstream *up)
{
    struct health *h = calloc(1, sizeof(*h));

    if (h == NULL)
        return NULL;
    h->base = base;
    h->up = up;
    return h;
}

void health_set_listener(struct health *h, health_change_fn fn, void *arg)
{
    h->on_change = fn;
    h->on_change_arg = arg;
}

size_t health_in_flight(const struct health *h)
{
    lock_assert_held();
    return h->in_flight;
}

uint64_t health_probes_sent(const struct health *h)
{
    lock_assert_held();
    return h->sent;
}

void health_free(struct health *h)
{
    size_t i;

    if (h == NULL)
        return;
    for (i = 0; i < h->n; i++)
        probe_free(h->probes[i]);
    free(h->probes);
    if (h->snap)
        snapshot_unref(h->snap);
    free(h);
}
