/*
 * alerts.h -- alert rules over sliding windows, and their notifications.
 *
 * Rules (policies.yaml `alerts`): `availability` (success ratio below the
 * threshold), `error_rate` (error ratio above it), `latency_p99` (99th
 * percentile above it), each evaluated over the last `window` for the
 * global scope and for every host seen. A rule fires once its condition has
 * held for `for`, and resolves once it has been clear for `for` (at least
 * ALERTS_RESOLVE_MIN_MS): one event each way, never a repeat while firing.
 *
 * The rule part is pure: observations and ticks carry the time, so tests
 * need no clock. The notification part (webhook, Slack, command, email)
 * runs on the event loop and never blocks it: HTTP through upstream.c,
 * SMTP through a small curl multi of its own, commands through
 * posix_spawn with a non-blocking stdin pipe and a reaper timer. A failing
 * receiver is retried ALERTS_NOTIFY_ATTEMPTS times with backoff, and each
 * failure is logged (never with a password or a webhook URL's path, which
 * holds Slack's token).
 *
 * Threads: the workers observe, the control thread ticks and notifies.
 * alerts_configure, alerts_observe, alerts_tick, alerts_value,
 * alerts_notify, alerts_status_json, alerts_get_counters and
 * alerts_pending: caller holds the state lock
 * (lock.h; checked by lock_assert_held() in the asan and tsan builds).
 */
#ifndef INFERGATE_ALERTS_H
#define INFERGATE_ALERTS_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "config.h"

struct event_base;
struct upstream;
struct alerts;

#define ALERTS_SLOTS            30      /* a window is this many slots */
#define ALERTS_RESOLVE_MIN_MS   3000    /* resolve needs the condition clear this long, or `for` */
#define ALERTS_NOTIFY_ATTEMPTS  3       /* per notification and channel */
#define ALERTS_RETRY_BASE_MS    1000    /* then doubled */

enum alerts_rule {
    ALERTS_AVAILABILITY = 0,
    ALERTS_ERROR_RATE,
    ALERTS_LATENCY_P99,
    ALERTS_RULES
};

/* One fire or resolve. Pointers are valid during the callback only. */
struct alerts_event {
    enum alerts_rule rule;
    const char *host;           /* NULL: the global scope */
    int         firing;         /* 1 fired, 0 resolved */
    int         has_value;      /* 0: no observation in the window */
    double      value;          /* ratio, or seconds for latency_p99 */
    double      threshold;      /* same unit */
    uint64_t    samples;        /* observations in the window */
    int64_t     since_unix_ms;  /* when the condition began to hold */
    int64_t     at_unix_ms;     /* when this event happened */
    int64_t     window_ms;
    int64_t     for_ms;
};

typedef void (*alerts_event_fn)(void *arg, const struct alerts_event *ev);

/* Where the rules report what is not an event (an allocation failure):
 * log.c's log_msg in the gateway; NULL says nothing. */
typedef void (*alerts_log_fn)(enum cfg_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Counters for metrics and status; channel index is enum cfg_notify_type. */
#define ALERTS_CHANNELS 4
struct alerts_counters {
    uint64_t firing[ALERTS_RULES];      /* alerts firing now, by rule */
    uint64_t fired;                     /* events since start */
    uint64_t resolved;
    uint64_t sent[ALERTS_CHANNELS];     /* notifications delivered */
    uint64_t failed[ALERTS_CHANNELS];   /* given up after every attempt */
    uint64_t retried[ALERTS_CHANNELS];  /* attempts that failed and were retried */
};

/*
 * `base` and `up` may be NULL: rules are evaluated and the hook called,
 * but nothing is sent. Otherwise free the alerts before `up` and `base`.
 * `log_fn` may be NULL (see alerts_log_fn).
 */
struct alerts *alerts_new(struct event_base *base, struct upstream *up,
                          alerts_log_fn log_fn);
/* Cancels pending notifications (kills running commands). NULL is ignored. */
void alerts_free(struct alerts *a);

/*
 * Takes the `alerts` section of cfg (copied: cfg may be freed afterwards).
 * Keeps the state of every rule; a rule turned off resolves at the next
 * tick. A new `window` or `latency_p99` restarts the windows. Returns 0, or
 * -1 when out of memory (the previous settings stay).
 */
int alerts_configure(struct alerts *a, const struct config *cfg);

/* Called for each event, before notifications (the gateway's
 * /admin/events, tests and the driver). */
void alerts_set_hook(struct alerts *a, alerts_event_fn fn, void *arg);

/*
 * One outcome. host NULL is the global scope (call once per client
 * request: ok = answered below 500, latency = total, or time to first byte
 * for streams); a host name is that host's scope (call once per attempt).
 * Allocates only the first time a host is seen. `now_ms` is monotonic.
 */
void alerts_observe(struct alerts *a, const char *host, int ok,
                    double latency_ms, int64_t now_ms);

/* Evaluates every rule (call from a 1 s timer). Returns the number of
 * events; each goes to the hook, the log and the notifications. */
size_t alerts_tick(struct alerts *a, int64_t now_ms, int64_t unix_ms);

/* The rule's current value over the window for host (NULL = global).
 * Returns 1 with *value (and *samples), or 0 when there is no data or the
 * rule is off. */
int alerts_value(struct alerts *a, const char *host, enum alerts_rule rule,
                 int64_t now_ms, double *value, uint64_t *samples);

/* Sends ev through every configured channel (tick does this; exposed for
 * tests and a future "send test alert" admin action). */
void alerts_notify(struct alerts *a, const struct alerts_event *ev);

/* Payloads, for tests: generic webhook JSON and Slack's shape. */
json_t *alerts_event_json(const struct alerts_event *ev);
json_t *alerts_slack_json(const struct alerts_event *ev);

/* Firing alerts: [{alert, scope, host (null for global), value (null
 * without data), threshold, unit ("ratio" or "seconds"), samples, since
 * (ISO 8601 UTC), since_unix (seconds)}], a new reference. */
json_t *alerts_status_json(const struct alerts *a);

void alerts_get_counters(const struct alerts *a, struct alerts_counters *c);
/* Copies counters from alerts_get_counters() into metrics.c's gauges
 * (call before rendering; in alerts_notify.c, at the app layer: the rules
 * do not reach the metrics registry). */
void alerts_export_metrics(const struct alerts_counters *c);
/* Notifications still in progress (for a graceful drain). */
size_t alerts_pending(const struct alerts *a);

const char *alerts_rule_name(enum alerts_rule r);

#endif
