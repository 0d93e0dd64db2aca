/*
 * alerts_driver.c -- drives the notifications of src/core/alerts.c and src/app/alerts_notify.c against real
 * receivers for tests/e2e/test_alert_notifiers.py.
 *
 * It configures an `availability` rule with the channels given on the
 * command line, feeds failures for host "gpu-a" and ticks with made-up
 * times so the alert fires, runs the event loop until every notification
 * is delivered or given up, then lets the window empty and ticks until the
 * alert resolves, and runs the loop again. A 10 ms heartbeat timer measures
 * the longest stall of the loop meanwhile. Prints one JSON object:
 *   {"events": N, "pending": N, "max_gap_ms": X,
 *    "sent": {channel: N}, "failed": {...}, "retried": {...}}
 *
 *   alerts_driver [--fire-only] [--timeout MS]
 *                 [--webhook URL] [--slack URL]
 *                 [--command ARGV... --]
 *                 [--email SMTP_URL FROM TO[,TO...] [USER PASSWORD]]
 * --timeout applies to the channels after it (default 5000 ms).
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <curl/curl.h>
#include <event2/event.h>
#include <jansson.h>

#include "alerts.h"
#include "config.h"
#include "log.h"
#include "upstream.h"

#define MAX_CHANNELS      16
#define MAX_TO            8
#define DEFAULT_TIMEOUT   5000
#define WINDOW_MS         10000
#define HEARTBEAT_MS      10
#define DEADLINE_MS       15000
#define FAILURES          10
#define UNIX0             1700000000000LL

struct driver {
    struct event_base *base;
    struct alerts     *alerts;
    size_t             events;
    double             last_beat_ms;
    double             max_gap_ms;
};

static double mono_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1000 + (double)ts.tv_nsec / 1e6;
}

static void heartbeat(evutil_socket_t fd, short what, void *arg)
{
    struct driver *d = arg;
    double now = mono_ms();

    (void)fd;
    (void)what;
    if (now - d->last_beat_ms > d->max_gap_ms)
        d->max_gap_ms = now - d->last_beat_ms;
    d->last_beat_ms = now;
}

static void on_event(void *arg, const struct alerts_event *ev)
{
    struct driver *d = arg;

    (void)ev;
    d->events++;
}

/* Runs the loop until nothing is pending; 0, or -1 past the deadline. */
static int drain(struct driver *d)
{
    double until = mono_ms() + DEADLINE_MS;

    while (alerts_pending(d->alerts) > 0) {
        if (mono_ms() > until)
            return -1;
        event_base_loop(d->base, EVLOOP_ONCE);
    }
    return 0;
}

static int split_to(char *list, struct cfg_strlist *to, char **store)
{
    char *save = NULL, *p;

    to->v = store;
    to->n = 0;
    for (p = strtok_r(list, ",", &save); p; p = strtok_r(NULL, ",", &save)) {
        if (to->n == MAX_TO)
            return -1;
        store[to->n++] = p;
    }
    return to->n ? 0 : -1;
}

static int usage(void)
{
    fprintf(stderr, "usage: alerts_driver [--fire-only] [--timeout MS] [--webhook URL]"
            " [--slack URL] [--command ARGV... --] [--email URL FROM TO[,TO] [USER PASS]]\n");
    return 2;
}

int main(int argc, char **argv)
{
    static struct cfg_notify notes[MAX_CHANNELS];
    static char *tos[MAX_CHANNELS][MAX_TO];
    static const char *chan[ALERTS_CHANNELS] = { "webhook", "slack", "command", "email" };
    struct config cfg;
    struct driver d;
    struct upstream *up;
    struct event *beat;
    struct alerts_counters c;
    struct timeval tv = { 0, HEARTBEAT_MS * 1000 };
    int64_t timeout = DEFAULT_TIMEOUT, t;
    int fire_only = 0, i, j, rc = 0;
    size_t n = 0;
    json_t *out, *sent, *failed, *retried;

    signal(SIGPIPE, SIG_IGN);           /* as main.c does */
    for (i = 1; i < argc; i++) {
        struct cfg_notify *no = &notes[n];

        if (strcmp(argv[i], "--fire-only") == 0) {
            fire_only = 1;
            continue;
        }
        if (strcmp(argv[i], "--timeout") == 0 && i + 1 < argc) {
            timeout = atoll(argv[++i]);
            continue;
        }
        if (n == MAX_CHANNELS)
            return usage();
        memset(no, 0, sizeof(*no));
        if ((strcmp(argv[i], "--webhook") == 0 || strcmp(argv[i], "--slack") == 0)
            && i + 1 < argc) {
            no->type = argv[i][2] == 'w' ? NOTIFY_WEBHOOK : NOTIFY_SLACK;
            no->url = argv[++i];
        } else if (strcmp(argv[i], "--command") == 0) {
            no->type = NOTIFY_COMMAND;
            no->argv.v = &argv[i + 1];
            for (j = i + 1; j < argc && strcmp(argv[j], "--") != 0; j++)
                no->argv.n++;
            if (j == argc || no->argv.n == 0)
                return usage();
            i = j;
        } else if (strcmp(argv[i], "--email") == 0 && i + 3 < argc) {
            no->type = NOTIFY_EMAIL;
            no->smtp_url = argv[++i];
            no->from = argv[++i];
            if (split_to(argv[++i], &no->to, tos[n]) < 0)
                return usage();
            if (i + 2 < argc && strncmp(argv[i + 1], "--", 2) != 0) {
                no->username = argv[++i];
                no->password = argv[++i];
            }
        } else {
            return usage();
        }
        no->timeout_ms = timeout;
        n++;
    }

    memset(&cfg, 0, sizeof(cfg));
    cfg.alerts.window_ms = WINDOW_MS;
    cfg.alerts.for_ms = 0;
    cfg.alerts.availability = 0.9;
    cfg.alerts.error_rate = -1;
    cfg.alerts.latency_p99_ms = 0;
    cfg.alerts.notify = notes;
    cfg.alerts.nnotify = n;

    curl_global_init(CURL_GLOBAL_DEFAULT);
    memset(&d, 0, sizeof(d));
    d.base = event_base_new();
    up = d.base ? upstream_new(d.base) : NULL;
    d.alerts = up ? alerts_new(d.base, up, log_msg) : NULL;
    if (d.alerts == NULL || alerts_configure(d.alerts, &cfg) < 0) {
        fprintf(stderr, "alerts_driver: setup failed\n");
        return 1;
    }
    alerts_set_hook(d.alerts, on_event, &d);
    beat = event_new(d.base, -1, EV_PERSIST, heartbeat, &d);
    event_add(beat, &tv);
    d.last_beat_ms = mono_ms();

    /* Fire: the host fails every attempt. */
    for (i = 0; i < FAILURES; i++)
        alerts_observe(d.alerts, "gpu-a", 0, 10, 0);
    alerts_tick(d.alerts, 0, UNIX0);
    if (drain(&d) < 0)
        rc = 1;
    /* Resolve: the window empties, then stays clear long enough. */
    if (!fire_only) {
        for (t = WINDOW_MS; t <= WINDOW_MS * 2; t += 1000)
            alerts_tick(d.alerts, t, UNIX0 + t);
        if (drain(&d) < 0)
            rc = 1;
    }

    alerts_get_counters(d.alerts, &c);
    sent = json_object();
    failed = json_object();
    retried = json_object();
    for (i = 0; i < ALERTS_CHANNELS; i++) {
        json_object_set_new(sent, chan[i], json_integer((json_int_t)c.sent[i]));
        json_object_set_new(failed, chan[i], json_integer((json_int_t)c.failed[i]));
        json_object_set_new(retried, chan[i], json_integer((json_int_t)c.retried[i]));
    }
    out = json_pack("{s:I, s:I, s:f, s:o, s:o, s:o}",
                    "events", (json_int_t)d.events,
                    "pending", (json_int_t)alerts_pending(d.alerts),
                    "max_gap_ms", d.max_gap_ms,
                    "sent", sent, "failed", failed, "retried", retried);
    json_dumpf(out, stdout, JSON_COMPACT);
    fputc('\n', stdout);
    json_decref(out);

    event_free(beat);
    alerts_free(d.alerts);
    upstream_free(up);
    event_base_free(d.base);
    curl_global_cleanup();
    return rc;
}
