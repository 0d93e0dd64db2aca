/*
 * alerts.c -- alert rules and notifications (see alerts.h).
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
 * Notifications: one `struct delivery` per event and channel, with its own
 * copy of the payload, retried with backoff. Webhooks go through
 * upstream.c; email through a curl multi owned here (upstream.c only
 * speaks HTTP), glued to libevent the same way; commands are started with
 * posix_spawnp (argv as configured, never a shell), get the JSON on a
 * non-blocking stdin pipe written from a libevent write event, and are
 * reaped by waitpid(WNOHANG) on a short timer, killed (with their process
 * group) at `timeout`.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/types.h>
#include <sys/wait.h>

#include <curl/curl.h>
#include <event2/buffer.h>
#include <event2/event.h>

#include "alerts.h"
#include "log.h"
#include "metrics.h"
#include "upstream.h"

extern char **environ;

/* Latency buckets: bound(i) = threshold * 2^((i - LAT_CENTER) / LAT_STEPS),
 * i = 0..LAT_BOUNDS-1; bucket i holds (bound(i-1), bound(i)], bucket
 * LAT_BOUNDS everything above the last bound. */
#define LAT_STEPS           4       /* buckets per octave */
#define LAT_OCTAVES         10      /* octaves each side of the threshold */
#define LAT_CENTER          (LAT_STEPS * LAT_OCTAVES)
#define LAT_BOUNDS          (2 * LAT_CENTER + 1)
#define LAT_BUCKETS         (LAT_BOUNDS + 1)
#define P99_QUANTILE        0.99

#define MIN_SAMPLES         1       /* fewer observations: no value, not violating */
#define SCOPE_HASH_SLOTS    256     /* power of two */
#define REAP_INTERVAL_MS    50      /* waitpid(WNOHANG) period while a command runs */
#define MS_PER_S            1000
#define US_PER_MS           1000
#define ISO_LEN             32
#define VALUE_LEN           32
#define SUMMARY_LEN         512
#define DEV_NULL            "/dev/null"
#define ENV_PREFIX          "INFERGATE_ALERT"
#define USER_AGENT          "infergate-alerts"
#define DUMP_PRECISION      15      /* significant digits of reals in payloads */

/* --- state ----------------------------------------------------------- */

enum rule_phase { PH_OK = 0, PH_PENDING, PH_FIRING, PH_RESOLVING };

struct rule_state {
    enum rule_phase phase;
    int64_t  since_ms;          /* condition began to hold (monotonic) */
    int64_t  clear_ms;          /* condition cleared while firing */
    int64_t  since_unix_ms;     /* since_ms on the wall clock, once firing */
    int      has_value;         /* as of the last tick */
    double   value;
    double   threshold;         /* as of the last tick the rule was on */
    uint64_t samples;
};

struct scope {
    char         *host;         /* NULL = global */
    struct scope *next;         /* hash chain */
    int64_t       head;         /* slot number of the newest slot; -1 = none yet */
    uint32_t      total[ALERTS_SLOTS];
    uint32_t      ok[ALERTS_SLOTS];
    uint32_t     *lat;          /* [ALERTS_SLOTS * LAT_BUCKETS] when latency_p99 is on */
    uint64_t      sum_total;
    uint64_t      sum_ok;
    uint64_t      sum_lat[LAT_BUCKETS];
    struct rule_state rs[ALERTS_RULES];
};

struct settings {
    int64_t window_ms;
    int64_t for_ms;
    int64_t slot_ms;
    double  availability;       /* < 0 = off */
    double  error_rate;         /* < 0 = off */
    double  p99_ms;             /* 0 = off */
    double  bound[LAT_BOUNDS];  /* latency bucket bounds, ms */
};

/* A copy of one configured notification. */
struct channel {
    enum cfg_notify_type type;
    char    *url;               /* webhook, slack */
    char   **argv;              /* command, NULL-terminated */
    char    *smtp_url;
    char    *from;
    char   **to;                /* NULL-terminated */
    char    *username;
    char    *password;          /* never logged */
    int64_t  timeout_ms;
    char    *where;             /* what the log may say: scheme://host, argv[0] */
};

struct chanset {
    int             refs;
    size_t          n;
    struct channel *v;
};


struct delivery {
    struct alerts        *a;
    struct delivery      *prev, *next;
    struct chanset       *set;      /* one reference */
    const struct channel *ch;
    char                 *body;     /* JSON, Slack JSON or RFC 5322 message */
    size_t                len;
    char                **env;      /* command: our variables, NULL-terminated */
    int                   attempt;  /* 1-based */
    struct event         *retry;
    /* webhook, slack */
    struct upstream_xfer *xfer;
    int                   status;
    /* command */
    pid_t                 pid;
    int                   fd;       /* stdin pipe, -1 when closed */
    size_t                written;
    struct event         *wev;
    struct event         *reap;
    struct event         *kill;
    int                   killed;
    /* email: d->xfer carries the SMTP transfer too */
    struct curl_slist    *rcpt;
    size_t                sent;
};

struct alerts {
    struct event_base *base;
    struct upstream   *up;
    struct settings    set;
    struct chanset    *chans;
    struct scope       global;
    struct scope      *hosts[SCOPE_HASH_SLOTS];
    alerts_event_fn    hook;
    void              *hook_arg;
    struct alerts_counters cnt;
    struct delivery   *deliveries;
    size_t             ndeliveries;
    uint64_t           msg_seq;
};

static const char *rule_names[ALERTS_RULES] = {
    "availability", "error_rate", "latency_p99"
};
_Static_assert(NOTIFY_EMAIL + 1 == ALERTS_CHANNELS, "one channel per notify type");

static const char *channel_names[ALERTS_CHANNELS] = {
    "webhook", "slack", "command", "email"
};

const char *alerts_rule_name(enum alerts_rule r)
{
    return (unsigned)r < ALERTS_RULES ? rule_names[r] : "unknown";
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
static void scope_reset(struct scope *s, int want_lat)
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
        if (s->lat == NULL)
            log_error("alerts: out of memory: latency_p99 not evaluated for %s",
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
    scope_reset(s, a->set.p99_ms > 0);
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

    if (s == NULL || !rule_on(&a->set, rule))
        return 0;
    scope_advance(a, s, now_ms);
    if (samples)
        *samples = s->sum_total;
    return rule_eval(&a->set, s, rule, value, &violates);
}

/* --- payloads -------------------------------------------------------- */

static void iso_time(int64_t unix_ms, char *buf, size_t len)
{
    time_t t = (time_t)(unix_ms / MS_PER_S);
    struct tm tm;

    gmtime_r(&t, &tm);
    strftime(buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static void fmt_value(enum alerts_rule r, double v, char *buf, size_t len)
{
    if (r != ALERTS_LATENCY_P99)
        snprintf(buf, len, "%.2f%%", v * 100);
    else if (v < 1)
        snprintf(buf, len, "%.0fms", v * MS_PER_S);
    else
        snprintf(buf, len, "%.2fs", v);
}

static void fmt_duration(int64_t ms, char *buf, size_t len)
{
    static const struct { int64_t ms; const char *unit; } units[] = {
        {3600000, "h"}, {60000, "m"}, {1000, "s"}
    };
    size_t i;

    for (i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
        if (ms >= units[i].ms && ms % units[i].ms == 0) {
            snprintf(buf, len, "%" PRId64 "%s", ms / units[i].ms, units[i].unit);
            return;
        }
    }
    snprintf(buf, len, "%" PRId64 "ms", ms);
}

static const char *rule_op(enum alerts_rule r)
{
    return r == ALERTS_AVAILABILITY ? "<" : ">";
}

static void summary(const struct alerts_event *ev, char *buf, size_t len)
{
    char v[VALUE_LEN], t[VALUE_LEN], w[VALUE_LEN], scope[SUMMARY_LEN / 2];

    fmt_value(ev->rule, ev->value, v, sizeof(v));
    fmt_value(ev->rule, ev->threshold, t, sizeof(t));
    fmt_duration(ev->window_ms, w, sizeof(w));
    if (ev->host)
        snprintf(scope, sizeof(scope), "host %s", ev->host);
    else
        snprintf(scope, sizeof(scope), "all hosts");
    if (ev->firing)
        snprintf(buf, len, "[FIRING] %s on %s: %s %s %s over %s (%" PRIu64 " samples)",
                 rule_names[ev->rule], scope, v, rule_op(ev->rule), t, w, ev->samples);
    else if (ev->has_value)
        snprintf(buf, len, "[RESOLVED] %s on %s: %s (threshold %s, %" PRIu64 " samples over %s)",
                 rule_names[ev->rule], scope, v, t, ev->samples, w);
    else
        snprintf(buf, len, "[RESOLVED] %s on %s: no data (threshold %s)",
                 rule_names[ev->rule], scope, t);
}

static const char *rule_unit(enum alerts_rule r)
{
    return r == ALERTS_LATENCY_P99 ? "seconds" : "ratio";
}

json_t *alerts_event_json(const struct alerts_event *ev)
{
    char since[ISO_LEN], at[ISO_LEN], text[SUMMARY_LEN];

    iso_time(ev->since_unix_ms, since, sizeof(since));
    iso_time(ev->at_unix_ms, at, sizeof(at));
    summary(ev, text, sizeof(text));
    return json_pack("{s:s, s:s, s:s, s:s?, s:o, s:f, s:s, s:I, s:f, s:f,"
                     " s:s, s:f, s:s, s:f, s:s, s:s}",
                     "alert", rule_names[ev->rule],
                     "state", ev->firing ? "firing" : "resolved",
                     "scope", ev->host ? "host" : "global",
                     "host", ev->host,
                     "value", ev->has_value ? json_real(ev->value) : json_null(),
                     "threshold", ev->threshold,
                     "unit", rule_unit(ev->rule),
                     "samples", (json_int_t)ev->samples,
                     "window_seconds", (double)ev->window_ms / MS_PER_S,
                     "for_seconds", (double)ev->for_ms / MS_PER_S,
                     "since", since,
                     "since_unix", (double)ev->since_unix_ms / MS_PER_S,
                     "at", at,
                     "at_unix", (double)ev->at_unix_ms / MS_PER_S,
                     "summary", text,
                     "source", "infergate");
}

json_t *alerts_slack_json(const struct alerts_event *ev)
{
    char since[ISO_LEN], text[SUMMARY_LEN], title[SUMMARY_LEN];
    char v[VALUE_LEN], t[VALUE_LEN];

    iso_time(ev->since_unix_ms, since, sizeof(since));
    summary(ev, text, sizeof(text));
    snprintf(title, sizeof(title), "%s %s on %s", ev->firing ? "Firing:" : "Resolved:",
             rule_names[ev->rule], ev->host ? ev->host : "all hosts");
    if (ev->has_value)
        fmt_value(ev->rule, ev->value, v, sizeof(v));
    else
        snprintf(v, sizeof(v), "no data");
    fmt_value(ev->rule, ev->threshold, t, sizeof(t));
    return json_pack("{s:s, s:[{s:s, s:s, s:s, s:[{s:s, s:s, s:b}, {s:s, s:s, s:b},"
                     " {s:s, s:s, s:b}, {s:s, s:s, s:b}], s:s, s:I}]}",
                     "text", text,
                     "attachments",
                     "color", ev->firing ? "danger" : "good",
                     "title", title,
                     "fallback", text,
                     "fields",
                     "title", "Value", "value", v, "short", 1,
                     "title", "Threshold", "value", t, "short", 1,
                     "title", "Scope", "value", ev->host ? ev->host : "global", "short", 1,
                     "title", "Since", "value", since, "short", 1,
                     "footer", "infergate",
                     "ts", (json_int_t)(ev->since_unix_ms / MS_PER_S));
}

static char *dump(json_t *o, size_t flags, size_t *len)
{
    char *s = o ? json_dumps(o, flags | JSON_REAL_PRECISION(DUMP_PRECISION)) : NULL;

    json_decref(o);
    if (s && len)
        *len = strlen(s);
    return s;
}

/* A header value with CR and LF turned into spaces (no header injection). */
static void put_header(struct evbuffer *b, const char *name, const char *value)
{
    evbuffer_add_printf(b, "%s: ", name);
    for (; *value; value++)
        evbuffer_add(b, *value == '\r' || *value == '\n' ? " " : value, 1);
    evbuffer_add(b, "\r\n", 2);
}

/* "Name <a@b>" or "a@b" -> "<a@b>" (the SMTP envelope form). */
static char *envelope_addr(const char *s)
{
    const char *lt = strrchr(s, '<'), *gt;
    char *out;

    if (lt && (gt = strchr(lt, '>')) != NULL)
        return strndup(lt, (size_t)(gt - lt + 1));
    if (asprintf(&out, "<%s>", s) < 0)
        return NULL;
    return out;
}

static char *email_message(struct alerts *a, const struct channel *ch,
                           const struct alerts_event *ev, size_t *len)
{
    struct evbuffer *b = evbuffer_new();
    char date[64], line[SUMMARY_LEN], subject[SUMMARY_LEN], *json, *out = NULL;
    time_t t = (time_t)(ev->at_unix_ms / MS_PER_S);
    struct tm tm;
    size_t i;

    if (b == NULL)
        return NULL;
    gmtime_r(&t, &tm);
    strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S +0000", &tm);
    put_header(b, "Date", date);
    put_header(b, "From", ch->from);
    for (i = 0; ch->to[i]; i++) {
        evbuffer_add_printf(b, "%s", i ? ", " : "To: ");
        for (const char *p = ch->to[i]; *p; p++)
            evbuffer_add(b, *p == '\r' || *p == '\n' ? " " : p, 1);
    }
    evbuffer_add(b, "\r\n", 2);
    snprintf(subject, sizeof(subject), "[infergate] %s: %s on %s",
             ev->firing ? "FIRING" : "RESOLVED", rule_names[ev->rule],
             ev->host ? ev->host : "all hosts");
    put_header(b, "Subject", subject);
    snprintf(line, sizeof(line), "<%" PRId64 ".%ld.%" PRIu64 "@infergate>",
             ev->at_unix_ms, (long)getpid(), ++a->msg_seq);
    put_header(b, "Message-ID", line);
    put_header(b, "MIME-Version", "1.0");
    put_header(b, "Content-Type", "text/plain; charset=utf-8");
    put_header(b, "Content-Transfer-Encoding", "8bit");
    evbuffer_add(b, "\r\n", 2);
    summary(ev, line, sizeof(line));
    evbuffer_add_printf(b, "%s\r\n\r\n", line);
    json = dump(alerts_event_json(ev), JSON_INDENT(2) | JSON_SORT_KEYS, NULL);
    if (json) {
        for (const char *p = json; *p; p++) {
            if (*p == '\n')
                evbuffer_add(b, "\r\n", 2);
            else
                evbuffer_add(b, p, 1);
        }
        evbuffer_add(b, "\r\n", 2);
        free(json);
    }
    *len = evbuffer_get_length(b);
    out = malloc(*len + 1);
    if (out) {
        evbuffer_remove(b, out, *len);
        out[*len] = '\0';
    }
    evbuffer_free(b);
    return out;
}

/* INFERGATE_ALERT_* variables for a command, NULL-terminated. */
static char **command_env(const struct alerts_event *ev)
{
    char since[ISO_LEN], value[VALUE_LEN] = "", thr[VALUE_LEN], text[SUMMARY_LEN];
    enum { NVARS = 8 };
    char **env = calloc(NVARS + 1, sizeof(*env));
    int i, n = 0;

    if (env == NULL)
        return NULL;
    iso_time(ev->since_unix_ms, since, sizeof(since));
    if (ev->has_value)
        snprintf(value, sizeof(value), "%.6g", ev->value);
    snprintf(thr, sizeof(thr), "%.6g", ev->threshold);
    summary(ev, text, sizeof(text));
    if (asprintf(&env[n++], ENV_PREFIX "=%s", rule_names[ev->rule]) < 0
        || asprintf(&env[n++], ENV_PREFIX "_STATE=%s", ev->firing ? "firing" : "resolved") < 0
        || asprintf(&env[n++], ENV_PREFIX "_SCOPE=%s", ev->host ? "host" : "global") < 0
        || asprintf(&env[n++], ENV_PREFIX "_HOST=%s", ev->host ? ev->host : "") < 0
        || asprintf(&env[n++], ENV_PREFIX "_VALUE=%s", value) < 0
        || asprintf(&env[n++], ENV_PREFIX "_THRESHOLD=%s", thr) < 0
        || asprintf(&env[n++], ENV_PREFIX "_SINCE=%s", since) < 0
        || asprintf(&env[n++], ENV_PREFIX "_SUMMARY=%s", text) < 0) {
        env[n - 1] = NULL;              /* asprintf left it undefined */
        for (i = 0; env[i]; i++)
            free(env[i]);
        free(env);
        return NULL;
    }
    return env;
}

/* --- channels -------------------------------------------------------- */

static char **strv_dup(const struct cfg_strlist *l)
{
    char **v = calloc(l->n + 1, sizeof(*v));
    size_t i;

    if (v == NULL)
        return NULL;
    for (i = 0; i < l->n; i++) {
        if ((v[i] = strdup(l->v[i])) == NULL) {
            while (i--)
                free(v[i]);
            free(v);
            return NULL;
        }
    }
    return v;
}

static void strv_free(char **v)
{
    size_t i;

    for (i = 0; v && v[i]; i++)
        free(v[i]);
    free(v);
}

static char *dup_or_null(const char *s, int *err)
{
    char *d;

    if (s == NULL)
        return NULL;
    d = strdup(s);
    if (d == NULL)
        *err = 1;
    return d;
}

/* "scheme://host[:port]" of a URL: no userinfo, no path (Slack's token). */
static char *url_where(const char *url)
{
    const char *p = strstr(url, "://"), *host, *end, *at;

    if (p == NULL)
        return strdup("?");
    host = p + strlen("://");
    end = host + strcspn(host, "/?#");
    at = memchr(host, '@', (size_t)(end - host));
    if (at)
        host = at + 1;
    {
        size_t sl = (size_t)(p - url) + strlen("://");
        char *w = malloc(sl + (size_t)(end - host) + 1);
        if (w == NULL)
            return NULL;
        memcpy(w, url, sl);
        memcpy(w + sl, host, (size_t)(end - host));
        w[sl + (size_t)(end - host)] = '\0';
        return w;
    }
}

static void channel_free(struct channel *c)
{
    free(c->url);
    strv_free(c->argv);
    free(c->smtp_url);
    free(c->from);
    strv_free(c->to);
    free(c->username);
    if (c->password)
        explicit_bzero(c->password, strlen(c->password));
    free(c->password);
    free(c->where);
}

static int channel_copy(struct channel *c, const struct cfg_notify *n)
{
    int err = 0;

    memset(c, 0, sizeof(*c));
    c->type = n->type;
    c->timeout_ms = n->timeout_ms;
    c->url = dup_or_null(n->url, &err);
    c->smtp_url = dup_or_null(n->smtp_url, &err);
    c->from = dup_or_null(n->from, &err);
    c->username = dup_or_null(n->username, &err);
    c->password = dup_or_null(n->password, &err);
    if (n->type == NOTIFY_COMMAND && (c->argv = strv_dup(&n->argv)) == NULL)
        err = 1;
    if (n->type == NOTIFY_EMAIL && (c->to = strv_dup(&n->to)) == NULL)
        err = 1;
    if (!err) {
        if (n->type == NOTIFY_COMMAND)
            c->where = strdup(c->argv[0] ? c->argv[0] : "?");
        else
            c->where = url_where(n->type == NOTIFY_EMAIL ? c->smtp_url : c->url);
        err = c->where == NULL;
    }
    if (err) {
        channel_free(c);
        return -1;
    }
    return 0;
}

static void chanset_unref(struct chanset *s)
{
    size_t i;

    if (s == NULL || --s->refs > 0)
        return;
    for (i = 0; i < s->n; i++)
        channel_free(&s->v[i]);
    free(s->v);
    free(s);
}

static struct chanset *chanset_new(const struct config *cfg)
{
    struct chanset *s = calloc(1, sizeof(*s));
    size_t i;

    if (s == NULL)
        return NULL;
    s->refs = 1;
    if (cfg->alerts.nnotify) {
        s->v = calloc(cfg->alerts.nnotify, sizeof(*s->v));
        if (s->v == NULL) {
            free(s);
            return NULL;
        }
    }
    for (i = 0; i < cfg->alerts.nnotify; i++) {
        if (channel_copy(&s->v[i], &cfg->alerts.notify[i]) < 0) {
            chanset_unref(s);
            return NULL;
        }
        s->n++;
    }
    return s;
}

/* --- deliveries: common ---------------------------------------------- */

static void attempt_start(struct delivery *d);

static void command_stop_writing(struct delivery *d)
{
    if (d->wev) {
        event_free(d->wev);
        d->wev = NULL;
    }
    if (d->fd >= 0) {
        close(d->fd);
        d->fd = -1;
    }
}

static void command_timers_free(struct delivery *d)
{
    if (d->reap) {
        event_free(d->reap);
        d->reap = NULL;
    }
    if (d->kill) {
        event_free(d->kill);
        d->kill = NULL;
    }
}

static void delivery_free(struct delivery *d)
{
    struct alerts *a = d->a;

    if (d->xfer)
        upstream_cancel(d->xfer);
    curl_slist_free_all(d->rcpt);
    d->rcpt = NULL;
    command_stop_writing(d);
    command_timers_free(d);
    if (d->pid > 0) {                   /* only at alerts_free */
        kill(-d->pid, SIGKILL);
        kill(d->pid, SIGKILL);
        waitpid(d->pid, NULL, 0);       /* SIGKILLed: returns at once */
    }
    if (d->retry)
        event_free(d->retry);
    strv_free(d->env);
    free(d->body);
    chanset_unref(d->set);
    if (d->prev)
        d->prev->next = d->next;
    else
        a->deliveries = d->next;
    if (d->next)
        d->next->prev = d->prev;
    a->ndeliveries--;
    free(d);
}

static void retry_cb(evutil_socket_t fd, short what, void *arg)
{
    struct delivery *d = arg;

    (void)fd;
    (void)what;
    attempt_start(d);
}

/* The end of one attempt: done, retried later, or given up. Frees d
 * unless a retry is scheduled. */
static void attempt_done(struct delivery *d, int ok, const char *why)
{
    struct alerts *a = d->a;
    unsigned type = d->ch->type;
    int64_t delay;
    struct timeval tv;

    if (ok) {
        a->cnt.sent[type]++;
        log_info("alert notification sent via %s %s", channel_names[type], d->ch->where);
        delivery_free(d);
        return;
    }
    if (d->attempt >= ALERTS_NOTIFY_ATTEMPTS) {
        a->cnt.failed[type]++;
        log_error("alert notification via %s %s failed, giving up after %d attempts: %s",
                  channel_names[type], d->ch->where, d->attempt, why);
        delivery_free(d);
        return;
    }
    delay = (int64_t)ALERTS_RETRY_BASE_MS << (d->attempt - 1);
    a->cnt.retried[type]++;
    log_warn("alert notification via %s %s failed (attempt %d of %d): %s; retrying in %" PRId64 " ms",
             channel_names[type], d->ch->where, d->attempt, ALERTS_NOTIFY_ATTEMPTS, why, delay);
    d->attempt++;
    if (d->retry == NULL)
        d->retry = evtimer_new(a->base, retry_cb, d);
    if (d->retry == NULL) {
        a->cnt.failed[type]++;
        log_error("alert notification via %s %s: out of memory", channel_names[type], d->ch->where);
        delivery_free(d);
        return;
    }
    tv.tv_sec = delay / MS_PER_S;
    tv.tv_usec = (delay % MS_PER_S) * US_PER_MS;
    evtimer_add(d->retry, &tv);
}

/* --- webhook, slack: through upstream.c ------------------------------ */

static enum upstream_verdict http_on_headers(void *arg, struct upstream_xfer *x, int status)
{
    struct delivery *d = arg;

    (void)x;
    d->status = status;
    return UPSTREAM_CONTINUE;
}

static void http_on_done(void *arg, enum upstream_result res, const char *errmsg)
{
    struct delivery *d = arg;
    char why[CURL_ERROR_SIZE + 32];
    int ok = res == UPSTREAM_OK && d->status >= 200 && d->status < 300;

    d->xfer = NULL;                     /* freed by upstream.c after this */
    if (res == UPSTREAM_OK)
        snprintf(why, sizeof(why), "HTTP %d", d->status);
    else
        snprintf(why, sizeof(why), "%s: %s", upstream_result_name(res), errmsg ? errmsg : "");
    attempt_done(d, ok, why);
}

static const struct upstream_cbs http_cbs = { http_on_headers, NULL, http_on_done };

static int http_start(struct delivery *d, const char **why)
{
    static const struct upstream_header hdrs[] = {
        {"Content-Type", "application/json"},
        {"User-Agent", USER_AGENT},
    };
    struct upstream_req req;

    memset(&req, 0, sizeof(req));
    req.url = d->ch->url;
    req.method = "POST";
    req.headers = hdrs;
    req.nheaders = sizeof(hdrs) / sizeof(hdrs[0]);
    req.body = d->body;
    req.body_len = d->len;
    req.connect_timeout_ms = d->ch->timeout_ms;
    req.total_timeout_ms = d->ch->timeout_ms;
    d->status = 0;
    d->xfer = upstream_start(d->a->up, &req, &http_cbs, d);
    if (d->xfer == NULL) {
        *why = "could not start the request";
        return -1;
    }
    return 0;
}

/* --- command: posix_spawnp, stdin pipe, reaper ----------------------- */

static void command_write_cb(evutil_socket_t fd, short what, void *arg)
{
    struct delivery *d = arg;

    (void)what;
    while (d->written < d->len) {
        ssize_t n = write(fd, d->body + d->written, d->len - d->written);
        if (n > 0) {
            d->written += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;                     /* wait for room */
        break;                          /* EPIPE: the command closed stdin */
    }
    command_stop_writing(d);            /* EOF for the command */
}

static void command_finish(struct delivery *d, int status)
{
    char why[64];
    int ok = 0;

    d->pid = 0;
    command_stop_writing(d);
    command_timers_free(d);
    if (d->killed)
        snprintf(why, sizeof(why), "timed out after %" PRId64 " ms", d->ch->timeout_ms);
    else if (WIFEXITED(status)) {
        ok = WEXITSTATUS(status) == 0;
        snprintf(why, sizeof(why), "exit status %d", WEXITSTATUS(status));
    } else if (WIFSIGNALED(status))
        snprintf(why, sizeof(why), "killed by signal %d", WTERMSIG(status));
    else
        snprintf(why, sizeof(why), "ended with status %d", status);
    attempt_done(d, ok, why);
}

static void command_reap_cb(evutil_socket_t fd, short what, void *arg)
{
    struct delivery *d = arg;
    int status = 0;
    pid_t r;

    (void)fd;
    (void)what;
    r = waitpid(d->pid, &status, WNOHANG);
    if (r == 0 || (r < 0 && errno == EINTR))
        return;
    if (r < 0) {                        /* someone else reaped it */
        d->pid = 0;
        command_stop_writing(d);
        command_timers_free(d);
        attempt_done(d, 0, "lost the command's exit status");
        return;
    }
    command_finish(d, status);
}

static void command_kill_cb(evutil_socket_t fd, short what, void *arg)
{
    struct delivery *d = arg;

    (void)fd;
    (void)what;
    if (d->pid > 0) {
        d->killed = 1;
        kill(-d->pid, SIGKILL);         /* its process group: children too */
        kill(d->pid, SIGKILL);
    }
}

/* The environment for the command: ours, then the gateway's minus any
 * stale INFERGATE_ALERT* variables. Array only; strings are borrowed. */
static char **command_envp(const struct delivery *d)
{
    size_t n = 0, m = 0, i;
    char **envp;

    for (i = 0; environ && environ[i]; i++)
        n++;
    for (i = 0; d->env[i]; i++)
        m++;
    envp = calloc(n + m + 1, sizeof(*envp));
    if (envp == NULL)
        return NULL;
    for (i = 0; i < m; i++)
        envp[i] = d->env[i];
    for (i = 0; environ && environ[i]; i++)
        if (strncmp(environ[i], ENV_PREFIX, strlen(ENV_PREFIX)) != 0)
            envp[m++] = environ[i];
    return envp;
}

static int command_spawn(struct delivery *d, int in_fd, const char **why)
{
    static const int reset_signals[] = {
        SIGPIPE, SIGHUP, SIGINT, SIGTERM, SIGQUIT, SIGUSR1, SIGUSR2, SIGCHLD
    };
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    sigset_t none, dflt;
    char **envp = command_envp(d);
    size_t i;
    int rc;

    if (envp == NULL) {
        *why = "out of memory";
        return -1;
    }
    sigemptyset(&none);
    sigemptyset(&dflt);
    for (i = 0; i < sizeof(reset_signals) / sizeof(reset_signals[0]); i++)
        sigaddset(&dflt, reset_signals[i]);
    posix_spawn_file_actions_init(&fa);
    posix_spawnattr_init(&attr);
    posix_spawn_file_actions_adddup2(&fa, in_fd, STDIN_FILENO);
    posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, DEV_NULL, O_WRONLY, 0);
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 34))
    posix_spawn_file_actions_addclosefrom_np(&fa, STDERR_FILENO + 1);
#endif
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setsigdefault(&attr, &dflt);
    posix_spawnattr_setpgroup(&attr, 0);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF
                                    | POSIX_SPAWN_SETPGROUP);
    rc = posix_spawnp(&d->pid, d->ch->argv[0], &fa, &attr, d->ch->argv, envp);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    free(envp);
    if (rc != 0) {
        d->pid = 0;
        *why = strerror(rc);
        return -1;
    }
    return 0;
}

static int command_start(struct delivery *d, const char **why)
{
    struct event_base *base = d->a->base;
    struct timeval reap = { 0, REAP_INTERVAL_MS * US_PER_MS };
    struct timeval tmo;
    int p[2];

    if (pipe2(p, O_CLOEXEC) < 0) {
        *why = strerror(errno);
        return -1;
    }
    if (fcntl(p[1], F_SETFL, O_NONBLOCK) < 0 || command_spawn(d, p[0], why) < 0) {
        if (*why == NULL)
            *why = strerror(errno);
        close(p[0]);
        close(p[1]);
        return -1;
    }
    close(p[0]);
    d->fd = p[1];
    d->written = 0;
    d->killed = 0;
    tmo.tv_sec = d->ch->timeout_ms / MS_PER_S;
    tmo.tv_usec = (d->ch->timeout_ms % MS_PER_S) * US_PER_MS;
    d->wev = event_new(base, d->fd, EV_WRITE | EV_PERSIST, command_write_cb, d);
    d->reap = event_new(base, -1, EV_PERSIST, command_reap_cb, d);
    d->kill = evtimer_new(base, command_kill_cb, d);
    if (d->wev == NULL || d->reap == NULL || d->kill == NULL) {
        /* Out of memory with the command running: stop it here. SIGKILL
         * makes the wait immediate. */
        command_stop_writing(d);
        command_timers_free(d);
        kill(-d->pid, SIGKILL);
        kill(d->pid, SIGKILL);
        waitpid(d->pid, NULL, 0);
        d->pid = 0;
        *why = "out of memory";
        return -1;
    }
    event_add(d->wev, NULL);
    event_add(d->reap, &reap);
    evtimer_add(d->kill, &tmo);
    return 0;
}

/* --- email: a curl multi of our own, for SMTP ------------------------ */

static size_t smtp_read_cb(char *buf, size_t size, size_t n, void *userp)
{
    struct delivery *d = userp;
    size_t room = size * n, left = d->len - d->sent;

    if (room > left)
        room = left;
    memcpy(buf, d->body + d->sent, room);
    d->sent += room;
    return room;
}

static void smtp_done(void *arg, enum upstream_result res, const char *errmsg)
{
    struct delivery *d = arg;

    d->xfer = NULL;                     /* freed by upstream.c */
    curl_slist_free_all(d->rcpt);
    d->rcpt = NULL;
    attempt_done(d, res == UPSTREAM_OK, errmsg);
}

static const struct upstream_cbs smtp_cbs = { NULL, NULL, smtp_done };

static int smtp_start(struct delivery *d, const char **why)
{
    const struct channel *ch = d->ch;
    char *from = envelope_addr(ch->from);
    CURL *easy = curl_easy_init();
    size_t i;

    *why = "out of memory";
    if (from == NULL || easy == NULL)
        goto fail;
    for (i = 0; ch->to[i]; i++) {
        char *rcpt = envelope_addr(ch->to[i]);
        struct curl_slist *l = rcpt ? curl_slist_append(d->rcpt, rcpt) : NULL;
        free(rcpt);
        if (l == NULL)
            goto fail;
        d->rcpt = l;
    }
    d->sent = 0;
    curl_easy_setopt(easy, CURLOPT_URL, ch->smtp_url);
    curl_easy_setopt(easy, CURLOPT_PROTOCOLS_STR, "smtp,smtps");
    curl_easy_setopt(easy, CURLOPT_MAIL_FROM, from);   /* copied by curl */
    curl_easy_setopt(easy, CURLOPT_MAIL_RCPT, d->rcpt);
    curl_easy_setopt(easy, CURLOPT_UPLOAD, 1L);
    curl_easy_setopt(easy, CURLOPT_READFUNCTION, smtp_read_cb);
    curl_easy_setopt(easy, CURLOPT_READDATA, d);
    curl_easy_setopt(easy, CURLOPT_INFILESIZE_LARGE, (curl_off_t)d->len);
    curl_easy_setopt(easy, CURLOPT_USE_SSL, (long)CURLUSESSL_TRY);
    curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT_MS, (long)ch->timeout_ms);
    curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, (long)ch->timeout_ms);
    if (ch->username)
        curl_easy_setopt(easy, CURLOPT_USERNAME, ch->username);
    if (ch->password)
        curl_easy_setopt(easy, CURLOPT_PASSWORD, ch->password);
    free(from);
    d->xfer = upstream_start_easy(d->a->up, easy, &smtp_cbs, d);   /* owns easy */
    if (d->xfer == NULL) {
        curl_slist_free_all(d->rcpt);
        d->rcpt = NULL;
        *why = "could not start the transfer";
        return -1;
    }
    return 0;

fail:
    free(from);
    if (easy)
        curl_easy_cleanup(easy);
    curl_slist_free_all(d->rcpt);
    d->rcpt = NULL;
    return -1;
}

/* --- deliveries: start ----------------------------------------------- */

static void attempt_start(struct delivery *d)
{
    const char *why = NULL;
    int rc;

    switch (d->ch->type) {
    case NOTIFY_WEBHOOK:
    case NOTIFY_SLACK:
        rc = http_start(d, &why);
        break;
    case NOTIFY_COMMAND:
        rc = command_start(d, &why);
        break;
    case NOTIFY_EMAIL:
        rc = smtp_start(d, &why);
        break;
    default:
        rc = -1;
        why = "unknown notification type";
        break;
    }
    if (rc < 0)
        attempt_done(d, 0, why ? why : "could not start");
}

static int delivery_payload(struct alerts *a, struct delivery *d,
                            const struct alerts_event *ev)
{
    switch (d->ch->type) {
    case NOTIFY_SLACK:
        d->body = dump(alerts_slack_json(ev), JSON_COMPACT, &d->len);
        return d->body ? 0 : -1;
    case NOTIFY_EMAIL:
        d->body = email_message(a, d->ch, ev, &d->len);
        return d->body ? 0 : -1;
    case NOTIFY_COMMAND:
        d->env = command_env(ev);
        if (d->env == NULL)
            return -1;
        d->body = dump(alerts_event_json(ev), JSON_COMPACT, &d->len);
        if (d->body == NULL)
            return -1;
        d->body[d->len++] = '\n';       /* replaces the NUL: a line for `read` */
        return 0;
    default:
        d->body = dump(alerts_event_json(ev), JSON_COMPACT, &d->len);
        return d->body ? 0 : -1;
    }
}

void alerts_notify(struct alerts *a, const struct alerts_event *ev)
{
    char text[SUMMARY_LEN];
    size_t i;

    summary(ev, text, sizeof(text));
    if (ev->firing)
        log_warn("alert %s", text);
    else
        log_info("alert %s", text);
    if (a->base == NULL || a->chans == NULL)
        return;
    for (i = 0; i < a->chans->n; i++) {
        const struct channel *ch = &a->chans->v[i];
        struct delivery *d = NULL;
        const char *why = NULL;

        if ((ch->type == NOTIFY_WEBHOOK || ch->type == NOTIFY_SLACK) && a->up == NULL)
            why = "no HTTP client";
        else if ((d = calloc(1, sizeof(*d))) == NULL)
            why = "out of memory";
        else {
            d->ch = ch;
            if (delivery_payload(a, d, ev) < 0) {
                strv_free(d->env);
                free(d->body);
                free(d);
                why = "out of memory";
            }
        }
        if (why) {
            a->cnt.failed[ch->type]++;
            log_error("alert notification via %s %s: %s", channel_names[ch->type],
                      ch->where, why);
            continue;
        }
        d->a = a;
        d->set = a->chans;
        a->chans->refs++;
        d->fd = -1;
        d->attempt = 1;
        d->next = a->deliveries;
        if (a->deliveries)
            a->deliveries->prev = d;
        a->deliveries = d;
        a->ndeliveries++;
        attempt_start(d);
    }
}

/* --- lifecycle and reports ------------------------------------------- */

struct alerts *alerts_new(struct event_base *base, struct upstream *up)
{
    struct alerts *a = calloc(1, sizeof(*a));

    if (a == NULL)
        return NULL;
    a->base = base;
    a->up = up;
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
    scope_reset(&a->global, ns.p99_ms > 0);
    for (b = 0; b < SCOPE_HASH_SLOTS; b++) {
        struct scope *s;
        for (s = a->hosts[b]; s; s = s->next)
            scope_reset(s, ns.p99_ms > 0);
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
        iso_time(st->since_unix_ms, since, sizeof(since));
        json_array_append_new(arr, json_pack(
            "{s:s, s:s, s:s?, s:o, s:f, s:s, s:I, s:s, s:f}",
            "alert", rule_names[r],
            "scope", s->host ? "host" : "global",
            "host", s->host,
            "value", st->has_value ? json_real(st->value) : json_null(),
            "threshold", st->threshold,
            "unit", rule_unit((enum alerts_rule)r),
            "samples", (json_int_t)st->samples,
            "since", since,
            "since_unix", (double)st->since_unix_ms / MS_PER_S));
    }
}

json_t *alerts_status_json(const struct alerts *a)
{
    json_t *arr = json_array();
    size_t b;

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

    *c = a->cnt;
    memset(c->firing, 0, sizeof(c->firing));
    count_firing(&a->global, c->firing);
    for (b = 0; b < SCOPE_HASH_SLOTS; b++) {
        const struct scope *s;
        for (s = a->hosts[b]; s; s = s->next)
            count_firing(s, c->firing);
    }
}

void alerts_export_metrics(const struct alerts *a)
{
    static const enum metrics_alert rule_metric[ALERTS_RULES] = {
        METRICS_ALERT_AVAILABILITY, METRICS_ALERT_ERROR_RATE, METRICS_ALERT_LATENCY_P99
    };
    static const enum metrics_channel chan_metric[ALERTS_CHANNELS] = {
        METRICS_CHANNEL_WEBHOOK, METRICS_CHANNEL_SLACK, METRICS_CHANNEL_COMMAND,
        METRICS_CHANNEL_EMAIL
    };
    struct alerts_counters c;
    int i;

    if (a == NULL)
        return;
    alerts_get_counters(a, &c);
    for (i = 0; i < ALERTS_RULES; i++)
        metrics_set_alerts_firing(rule_metric[i], c.firing[i]);
    for (i = 0; i < ALERTS_CHANNELS; i++)
        metrics_set_alert_notifications(chan_metric[i], c.sent[i], c.failed[i]);
}

size_t alerts_pending(const struct alerts *a)
{
    return a ? a->ndeliveries : 0;
}
