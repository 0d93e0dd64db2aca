/*
 * alerts_notify.c -- the notifications of alerts (see alerts.h): payloads,
 * channels and deliveries.
 *
 * One `struct delivery` per event and channel, with its own copy of the
 * payload, retried with backoff. Webhooks go through upstream.c; email
 * through a curl multi owned here (upstream.c only speaks HTTP), glued to
 * libevent the same way; commands are started with posix_spawnp (argv as
 * configured, never a shell), get the JSON on a non-blocking stdin pipe
 * written from a libevent write event, and are reaped by waitpid(WNOHANG)
 * on a short timer, killed (with their process group) at `timeout`.
 *
 * Also the export of the rules' counters (alerts_get_counters(), filled by
 * the caller) into metrics.c's gauges: the rules (alerts.c, core) do not
 * reach the metrics registry themselves.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
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
#include "lock.h"
#include "log.h"
#include "metrics.h"
#include "upstream.h"
#include "alerts_int.h"

extern char **environ;

const char *alerts_rule_names[ALERTS_RULES] = {
    "availability", "error_rate", "latency_p99"
};
_Static_assert(NOTIFY_EMAIL + 1 == ALERTS_CHANNELS, "one channel per notify type");

const char *alerts_channel_names[ALERTS_CHANNELS] = {
    "webhook", "slack", "command", "email"
};

/* --- payloads -------------------------------------------------------- */

void alerts_iso_time(int64_t unix_ms, char *buf, size_t len)
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
                 alerts_rule_names[ev->rule], scope, v, rule_op(ev->rule), t, w, ev->samples);
    else if (ev->has_value)
        snprintf(buf, len, "[RESOLVED] %s on %s: %s (threshold %s, %" PRIu64 " samples over %s)",
                 alerts_rule_names[ev->rule], scope, v, t, ev->samples, w);
    else
        snprintf(buf, len, "[RESOLVED] %s on %s: no data (threshold %s)",
                 alerts_rule_names[ev->rule], scope, t);
}

const char *alerts_rule_unit(enum alerts_rule r)
{
    return r == ALERTS_LATENCY_P99 ? "seconds" : "ratio";
}

json_t *alerts_event_json(const struct alerts_event *ev)
{
    char since[ISO_LEN], at[ISO_LEN], text[SUMMARY_LEN];

    alerts_iso_time(ev->since_unix_ms, since, sizeof(since));
    alerts_iso_time(ev->at_unix_ms, at, sizeof(at));
    summary(ev, text, sizeof(text));
    return json_pack("{s:s, s:s, s:s, s:s?, s:o, s:f, s:s, s:I, s:f, s:f,"
                     " s:s, s:f, s:s, s:f, s:s, s:s}",
                     "alert", alerts_rule_names[ev->rule],
                     "state", ev->firing ? "firing" : "resolved",
                     "scope", ev->host ? "host" : "global",
                     "host", ev->host,
                     "value", ev->has_value ? json_real(ev->value) : json_null(),
                     "threshold", ev->threshold,
                     "unit", alerts_rule_unit(ev->rule),
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

    alerts_iso_time(ev->since_unix_ms, since, sizeof(since));
    summary(ev, text, sizeof(text));
    snprintf(title, sizeof(title), "%s %s on %s", ev->firing ? "Firing:" : "Resolved:",
             alerts_rule_names[ev->rule], ev->host ? ev->host : "all hosts");
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
             ev->firing ? "FIRING" : "RESOLVED", alerts_rule_names[ev->rule],
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
    alerts_iso_time(ev->since_unix_ms, since, sizeof(since));
    if (ev->has_value)
        snprintf(value, sizeof(value), "%.6g", ev->value);
    snprintf(thr, sizeof(thr), "%.6g", ev->threshold);
    summary(ev, text, sizeof(text));
    if (asprintf(&env[n++], ENV_PREFIX "=%s", alerts_rule_names[ev->rule]) < 0
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

void chanset_unref(struct chanset *s)
{
    size_t i;

    if (s == NULL || --s->refs > 0)
        return;
    for (i = 0; i < s->n; i++)
        channel_free(&s->v[i]);
    free(s->v);
    free(s);
}

struct chanset *chanset_new(const struct config *cfg)
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

void delivery_free(struct delivery *d)
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
        log_info("alert notification sent via %s %s", alerts_channel_names[type], d->ch->where);
        delivery_free(d);
        return;
    }
    if (d->attempt >= ALERTS_NOTIFY_ATTEMPTS) {
        a->cnt.failed[type]++;
        log_error("alert notification via %s %s failed, giving up after %d attempts: %s",
                  alerts_channel_names[type], d->ch->where, d->attempt, why);
        delivery_free(d);
        return;
    }
    delay = (int64_t)ALERTS_RETRY_BASE_MS << (d->attempt - 1);
    a->cnt.retried[type]++;
    log_warn("alert notification via %s %s failed (attempt %d of %d): %s; retrying in %" PRId64 " ms",
             alerts_channel_names[type], d->ch->where, d->attempt, ALERTS_NOTIFY_ATTEMPTS, why, delay);
    d->attempt++;
    if (d->retry == NULL)
        d->retry = evtimer_new(a->base, retry_cb, d);
    if (d->retry == NULL) {
        a->cnt.failed[type]++;
        log_error("alert notification via %s %s: out of memory", alerts_channel_names[type], d->ch->where);
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

    lock_assert_held();
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
            log_error("alert notification via %s %s: %s", alerts_channel_names[ch->type],
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

/* --- metrics --------------------------------------------------------- */

void alerts_export_metrics(const struct alerts_counters *c)
{
    static const enum metrics_alert rule_metric[ALERTS_RULES] = {
        METRICS_ALERT_AVAILABILITY, METRICS_ALERT_ERROR_RATE, METRICS_ALERT_LATENCY_P99
    };
    static const enum metrics_channel chan_metric[ALERTS_CHANNELS] = {
        METRICS_CHANNEL_WEBHOOK, METRICS_CHANNEL_SLACK, METRICS_CHANNEL_COMMAND,
        METRICS_CHANNEL_EMAIL
    };
    int i;

    for (i = 0; i < ALERTS_RULES; i++)
        metrics_set_alerts_firing(rule_metric[i], c->firing[i]);
    for (i = 0; i < ALERTS_CHANNELS; i++)
        metrics_set_alert_notifications(chan_metric[i], c->sent[i], c->failed[i]);
}
