/*
 * log.c -- error log and access log (see log.h).
 *
 * Writes are plain stdio to a line-buffered FILE: the logs are small lines
 * and a local file or pipe; this is the same trade nginx makes for its
 * error log. JSON lines go through jansson so every string is escaped.
 * Threads: a line is formatted by the calling thread, then written whole
 * under a mutex that also guards opening and reopening the files.
 */
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/time.h>

#include <jansson.h>

#include "log.h"
#include "route.h"

struct log_sink {
    FILE               *fp;
    char               *path;      /* NULL = stderr/stdout */
    enum cfg_log_format fmt;
};

static struct log_sink elog = { NULL, NULL, LOGF_TEXT };
static struct log_sink alog = { NULL, NULL, LOGF_TEXT };
static enum cfg_log_level min_level = LOGL_INFO;   /* atomic */
static pthread_mutex_t log_mu = PTHREAD_MUTEX_INITIALIZER;

static const char *level_names[] = { "debug", "info", "warn", "error" };

static void sink_close(struct log_sink *s)
{
    if (s->fp && s->fp != stderr && s->fp != stdout)
        fclose(s->fp);
    s->fp = NULL;
}

static int sink_open(struct log_sink *s, FILE *dflt)
{
    FILE *fp;

    if (s->path == NULL) {
        s->fp = dflt;
        return 0;
    }
    fp = fopen(s->path, "a");
    if (fp == NULL)
        return -1;
    setvbuf(fp, NULL, _IOLBF, 0);
    s->fp = fp;
    return 0;
}

static int sink_set(struct log_sink *s, const char *file, FILE *dflt,
                    enum cfg_log_format fmt)
{
    struct log_sink next = { NULL, NULL, fmt };

    if (file && strcmp(file, "-") != 0)
        next.path = strdup(file);
    if (sink_open(&next, dflt) < 0) {
        free(next.path);
        return -1;
    }
    sink_close(s);
    free(s->path);
    *s = next;
    return 0;
}

int log_open(const char *file, enum cfg_log_level level, enum cfg_log_format fmt)
{
    int rc;

    __atomic_store_n(&min_level, level, __ATOMIC_RELAXED);
    pthread_mutex_lock(&log_mu);
    rc = sink_set(&elog, file, stderr, fmt);
    pthread_mutex_unlock(&log_mu);
    return rc;
}

int log_open_access(const char *file, enum cfg_log_format fmt)
{
    int rc = 0;

    pthread_mutex_lock(&log_mu);
    if (file == NULL) {
        sink_close(&alog);
        free(alog.path);
        alog.path = NULL;
    } else {
        rc = sink_set(&alog, file, stdout, fmt);
    }
    pthread_mutex_unlock(&log_mu);
    return rc;
}

int log_reopen(void)
{
    int rc = 0;

    pthread_mutex_lock(&log_mu);
    if (elog.path) {
        sink_close(&elog);
        if (sink_open(&elog, stderr) < 0) {
            elog.fp = stderr;
            rc = -1;
        }
    }
    if (alog.path) {
        sink_close(&alog);
        if (sink_open(&alog, stdout) < 0)
            rc = -1;
    }
    pthread_mutex_unlock(&log_mu);
    return rc;
}

void log_close(void)
{
    pthread_mutex_lock(&log_mu);
    sink_close(&elog);
    sink_close(&alog);
    free(elog.path);
    free(alog.path);
    elog.path = alog.path = NULL;
    pthread_mutex_unlock(&log_mu);
}

int log_enabled(enum cfg_log_level level)
{
    return level >= (enum cfg_log_level)__atomic_load_n(&min_level, __ATOMIC_RELAXED);
}

/* Writes one formatted line (with its newline) to the sink. */
static void sink_write(struct log_sink *s, FILE *dflt, const char *line)
{
    pthread_mutex_lock(&log_mu);
    if (s->fp || dflt)
        fputs(line, s->fp ? s->fp : dflt);
    pthread_mutex_unlock(&log_mu);
}

/* s with a newline appended (s is taken; NULL when out of memory). */
static char *realloc_line(char *s)
{
    size_t n = strlen(s);
    char *t = realloc(s, n + 2);

    if (t == NULL) {
        free(s);
        return NULL;
    }
    t[n] = '\n';
    t[n + 1] = '\0';
    return t;
}

static void timestamp(char *buf, size_t len)
{
    struct timeval tv;
    struct tm tm;
    size_t n;

    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    n = strftime(buf, len, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf + n, len - n, ".%03dZ", (int)(tv.tv_usec / 1000));
}

void log_msg(enum cfg_log_level level, const char *fmt, ...)
{
    char msg[2048], ts[40], line[2200];
    enum cfg_log_format f;
    va_list ap;

    if (!log_enabled(level))
        return;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    timestamp(ts, sizeof(ts));
    pthread_mutex_lock(&log_mu);
    f = elog.fmt;
    pthread_mutex_unlock(&log_mu);
    if (f == LOGF_JSON) {
        json_t *o = json_pack("{s:s, s:s, s:s}", "time", ts,
                              "level", level_names[level], "msg", msg);
        char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
        if (s && (s = realloc_line(s)))
            sink_write(&elog, stderr, s);
        free(s);
        json_decref(o);
        return;
    }
    snprintf(line, sizeof(line), "%s [%s] %s\n", ts, level_names[level], msg);
    sink_write(&elog, stderr, line);
}

static const char *dash(const char *s)
{
    return s && *s ? s : "-";
}

static void count_or_dash(char *out, size_t len, int have, uint64_t n)
{
    if (have)
        snprintf(out, len, "%llu", (unsigned long long)n);
    else
        snprintf(out, len, "-");
}

/* The route name of a path, as metrics label it ("/v1/chat/completions"
 * is "chat_completions"); kept here so log.c needs no other module. */
static const char *route_of(const char *path)
{
    static const struct { const char *path, *route; } r[] = {
        {"/v1/chat/completions", "chat_completions"},
        {"/v1/completions", "completions"}, {"/v1/embeddings", "embeddings"},
        {"/v1/models", "models"}, {"/v1/verify", "verify"}, {"/api/v1/ip", "ip"},
        {"/health", "health"}, {"/status", "status"},
        {"/v1/providers/status", "status"}, {"/admin/providers", "status"},
        {"/metrics", "metrics"},
    };
    size_t i;

    if (path == NULL)
        return "other";
    for (i = 0; i < sizeof(r) / sizeof(r[0]); i++)
        if (strcmp(path, r[i].path) == 0)
            return r[i].route;
    if (strncmp(path, "/admin/", 7) == 0)
        return "admin";
    return route_family_label(route_family_of_path(path));
}

void log_access(const struct log_access *a)
{
    char ts[40], line[2048], *big = NULL;
    enum cfg_log_format f;
    int on, n;

    pthread_mutex_lock(&log_mu);
    on = alog.fp != NULL;
    f = alog.fmt;
    pthread_mutex_unlock(&log_mu);
    if (!on)
        return;
    timestamp(ts, sizeof(ts));
    if (f == LOGF_JSON) {
        json_t *o = json_pack("{s:s, s:s?, s:s?, s:s?, s:s, s:s?, s:s?, s:s?, s:s?,"
                              " s:i, s:i, s:b, s:f, s:f, s:I}",
                              "time", ts, "request_id", a->request_id,
                              "method", a->method, "path", a->path,
                              "route", a->route ? a->route : route_of(a->path),
                              "model", a->model, "host", a->host,
                              "key", a->key_fp, "peer", a->peer,
                              "status", a->status, "attempts", a->attempts,
                              "stream", a->stream, "ttfb_ms", a->ttfb_ms,
                              "total_ms", a->total_ms,
                              "bytes", (json_int_t)a->bytes_out);
        if (o && a->token_have) {
            /* USAGE_HAVE_INPUT, _OUTPUT, _CACHED: 1, 2, 4 (usage.h) */
            json_t *t = json_object();
            if (a->token_have & 1)
                json_object_set_new(t, "input", json_integer((json_int_t)a->tokens_in));
            if (a->token_have & 2)
                json_object_set_new(t, "output", json_integer((json_int_t)a->tokens_out));
            if (a->token_have & 4)
                json_object_set_new(t, "cached", json_integer((json_int_t)a->tokens_cached));
            json_object_set_new(o, "tokens", t);
        }
        char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
        if (s && (s = realloc_line(s)))
            sink_write(&alog, NULL, s);
        free(s);
        json_decref(o);
        return;
    }
    char tin[24], tout[24], tcached[24];
    count_or_dash(tin, sizeof(tin), a->token_have & 1, a->tokens_in);
    count_or_dash(tout, sizeof(tout), a->token_have & 2, a->tokens_out);
    count_or_dash(tcached, sizeof(tcached), a->token_have & 4, a->tokens_cached);
#define ACCESS_LINE(buf, len) snprintf(buf, len, \
            "%s %s %s \"%s %s\" %d model=%s host=%s key=%s attempts=%d" \
            " stream=%d ttfb_ms=%.1f total_ms=%.1f bytes=%zu" \
            " tokens_in=%s tokens_out=%s tokens_cached=%s\n", \
            ts, dash(a->peer), dash(a->request_id), dash(a->method), \
            dash(a->path), a->status, dash(a->model), dash(a->host), \
            dash(a->key_fp), a->attempts, a->stream, a->ttfb_ms, a->total_ms, \
            a->bytes_out, tin, tout, tcached)
    n = ACCESS_LINE(line, sizeof(line));
    if (n >= (int)sizeof(line) && (big = malloc((size_t)n + 1)) != NULL)
        ACCESS_LINE(big, (size_t)n + 1);
#undef ACCESS_LINE
    sink_write(&alog, NULL, big ? big : line);
    free(big);
}
