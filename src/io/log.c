/*
 * log.c -- error log and access log (see log.h).
 *
 * Writes are plain stdio to a line-buffered FILE: the logs are small lines
 * and a local file or pipe; this is the same trade nginx makes for its
 * error log. JSON lines go through jansson so every string is escaped.
 * Log forging (CWE-117): every value a client chose (model, path, method,
 * request id, anything an error message quotes) is escaped before it
 * reaches a text line -- control bytes, DEL and invalid UTF-8 as \xNN --
 * and bounded in length; JSON lines get valid UTF-8 (jansson refuses a
 * string that is not, which would lose the line). One request, one line.
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
#include "utf8.h"

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

/*
 * o as one JSON line with its newline (NULL when out of memory): ASCII
 * only (every non-ASCII character as \uXXXX, so no C1 control or U+2028
 * line separator reaches the file raw) and DEL, which jansson leaves raw,
 * as \u007f (it only occurs inside strings).
 */
static char *json_line(json_t *o)
{
    char *s = o ? json_dumps(o, JSON_COMPACT | JSON_ENSURE_ASCII) : NULL;
    size_t n, ndel = 0, i, j;
    char *t;

    if (s == NULL)
        return NULL;
    for (n = 0; s[n]; n++)
        ndel += s[n] == 0x7f;
    t = malloc(n + 5 * ndel + 2);
    if (t != NULL) {
        for (i = j = 0; i < n; i++) {
            if (s[i] == 0x7f) {
                memcpy(t + j, "\\u007f", 6);
                j += 6;
            } else {
                t[j++] = s[i];
            }
        }
        t[j++] = '\n';
        t[j] = '\0';
    }
    free(s);
    return t;
}

/* How log_escape() treats a value. */
enum esc_mode {
    ESC_MSG,        /* an error log message: control characters (C0, DEL, C1,
                       U+2028/9) and invalid UTF-8 */
    ESC_QUOTED,     /* inside "...": also '"' and '\\' */
    ESC_BARE,       /* a key=value field: also ' ', '"' and '\\' */
    ESC_JSON,       /* a JSON string: invalid UTF-8 only (jansson does the rest) */
};

/*
 * Copies s into out (cap bytes, always terminated) escaped for mode, at
 * most max bytes of s, then "..." when s was longer. An escaped byte
 * takes 4 bytes (\xNN), so cap = 4 * max + 4 always holds the whole
 * value. Returns out.
 */
static char *log_escape(char *out, size_t cap, const char *s, size_t max, enum esc_mode mode)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *p = (const unsigned char *)s, *end;
    size_t n = 0, len;

    if (cap == 0)
        return out;
    len = strlen(s);
    end = p + (len < max ? len : max);
    while (p < end) {
        unsigned c = *p;
        int seq = c < 0x80 ? 1 : utf8_seq_len(p, end);
        int esc = seq == 0
                  || (mode != ESC_JSON && (c < 0x20 || c == 0x7f
                                           || (seq == 2 && c == 0xc2 && p[1] < 0xa0)
                                           || (seq == 3 && c == 0xe2 && p[1] == 0x80
                                               && (p[2] == 0xa8 || p[2] == 0xa9))))
                  || ((mode == ESC_QUOTED || mode == ESC_BARE) && (c == '"' || c == '\\'))
                  || (mode == ESC_BARE && c == ' ');

        if (esc) {                  /* a sequence is escaped byte by byte */
            int k, nb = seq ? seq : 1;
            if (n + 4 * (size_t)nb >= cap)
                break;
            for (k = 0; k < nb; k++) {
                out[n++] = '\\';
                out[n++] = 'x';
                out[n++] = hex[p[k] >> 4];
                out[n++] = hex[p[k] & 15];
            }
            p += nb;
            continue;
        }
        if (n + (size_t)seq >= cap)
            break;
        memcpy(out + n, p, (size_t)seq);
        n += (size_t)seq;
        p += seq;
    }
    if (len > max && n + 3 < cap) {
        memcpy(out + n, "...", 3);
        n += 3;
    }
    out[n] = '\0';
    return out;
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

#define LOG_MSG_MAX 2048

void log_msg(enum cfg_log_level level, const char *fmt, ...)
{
    char raw[LOG_MSG_MAX], msg[4 * LOG_MSG_MAX + 4], ts[40], line[4 * LOG_MSG_MAX + 80];
    enum cfg_log_format f;
    va_list ap;

    if (!log_enabled(level))
        return;
    va_start(ap, fmt);
    vsnprintf(raw, sizeof(raw), fmt, ap);
    va_end(ap);
    timestamp(ts, sizeof(ts));
    pthread_mutex_lock(&log_mu);
    f = elog.fmt;
    pthread_mutex_unlock(&log_mu);
    /* the message may quote what a client sent: one line, valid UTF-8 */
    log_escape(msg, sizeof(msg), raw, sizeof(raw), f == LOGF_JSON ? ESC_JSON : ESC_MSG);
    if (f == LOGF_JSON) {
        json_t *o = json_pack("{s:s, s:s, s:s}", "time", ts,
                              "level", level_names[level], "msg", msg);
        char *s = json_line(o);
        if (s)
            sink_write(&elog, stderr, s);
        free(s);
        json_decref(o);
        return;
    }
    snprintf(line, sizeof(line), "%s [%s] %s\n", ts, level_names[level], msg);
    sink_write(&elog, stderr, line);
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

/* Longest part of each client-chosen field a log line keeps (bytes). */
#define LOG_FIELD_MAX  256
#define LOG_PATH_MAX   1024
#define ESC_CAP(max)   (4 * (max) + 4)

/* One field of an access line: NULL stays NULL (JSON) or "-" (text). */
static const char *field(char *buf, size_t cap, const char *s, size_t max, enum esc_mode mode)
{
    if (s == NULL || *s == '\0')
        return mode == ESC_JSON ? s : "-";
    return log_escape(buf, cap, s, max, mode);
}

void log_access(const struct log_access *a)
{
    char ts[40], line[2048], *big = NULL;
    char rid[ESC_CAP(LOG_FIELD_MAX)], method[ESC_CAP(LOG_FIELD_MAX)], path[ESC_CAP(LOG_PATH_MAX)];
    char model[ESC_CAP(LOG_FIELD_MAX)], host[ESC_CAP(LOG_FIELD_MAX)], key[ESC_CAP(LOG_FIELD_MAX)];
    char peer[ESC_CAP(LOG_FIELD_MAX)], client[ESC_CAP(LOG_FIELD_MAX)];
    enum cfg_log_format f;
    enum esc_mode bare, quoted;
    int on, n;

    pthread_mutex_lock(&log_mu);
    on = alog.fp != NULL;
    f = alog.fmt;
    pthread_mutex_unlock(&log_mu);
    if (!on)
        return;
    timestamp(ts, sizeof(ts));
    bare = f == LOGF_JSON ? ESC_JSON : ESC_BARE;
    quoted = f == LOGF_JSON ? ESC_JSON : ESC_QUOTED;
    const char *e_rid = field(rid, sizeof(rid), a->request_id, LOG_FIELD_MAX, bare);
    const char *e_method = field(method, sizeof(method), a->method, LOG_FIELD_MAX, quoted);
    const char *e_path = field(path, sizeof(path), a->path, LOG_PATH_MAX, quoted);
    const char *e_model = field(model, sizeof(model), a->model, LOG_FIELD_MAX, bare);
    const char *e_host = field(host, sizeof(host), a->host, LOG_FIELD_MAX, bare);
    const char *e_key = field(key, sizeof(key), a->key_fp, LOG_FIELD_MAX, bare);
    const char *e_peer = field(peer, sizeof(peer), a->peer, LOG_FIELD_MAX, bare);
    const char *e_client = a->client && *a->client
                           ? field(client, sizeof(client), a->client, LOG_FIELD_MAX, bare) : NULL;
    if (f == LOGF_JSON) {
        json_t *o = json_pack("{s:s, s:s?, s:s?, s:s?, s:s, s:s?, s:s?, s:s?, s:s?,"
                              " s:i, s:i, s:b, s:f, s:f, s:I}",
                              "time", ts, "request_id", e_rid,
                              "method", e_method, "path", e_path,
                              "route", a->route ? a->route : route_of(a->path),
                              "model", e_model, "host", e_host,
                              "key", e_key, "peer", e_peer,
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
        if (o && a->cache)
            json_object_set_new(o, "cache", json_string(a->cache));
        if (o && e_client)
            json_object_set_new(o, "client", json_string(e_client));
        char *s = json_line(o);
        if (s)
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
            " tokens_in=%s tokens_out=%s tokens_cached=%s%s%s%s%s\n", \
            ts, e_peer, e_rid, e_method, \
            e_path, a->status, e_model, e_host, \
            e_key, a->attempts, a->stream, a->ttfb_ms, a->total_ms, \
            a->bytes_out, tin, tout, tcached, a->cache ? " cache=" : "", \
            a->cache ? a->cache : "", e_client ? " client=" : "", \
            e_client ? e_client : "")
    n = ACCESS_LINE(line, sizeof(line));
    if (n >= (int)sizeof(line) && (big = malloc((size_t)n + 1)) != NULL)
        ACCESS_LINE(big, (size_t)n + 1);
#undef ACCESS_LINE
    sink_write(&alog, NULL, big ? big : line);
    free(big);
}
