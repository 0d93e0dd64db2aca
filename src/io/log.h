/*
 * log.h -- error log and access log.
 *
 * One error log (stderr or a file, text or JSON lines, a minimum level) and
 * one optional access log. Both can be reopened on SIGUSR1 for logrotate.
 * Nothing here ever prints an API key: callers pass fingerprints only.
 */
#ifndef INFERGATE_LOG_H
#define INFERGATE_LOG_H

#include <stdint.h>

#include "config.h"

int  log_open(const char *file, enum cfg_log_level level, enum cfg_log_format fmt);
int  log_open_access(const char *file, enum cfg_log_format fmt);   /* NULL = off */
int  log_reopen(void);
void log_close(void);

void log_msg(enum cfg_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#define log_debug(...) log_msg(LOGL_DEBUG, __VA_ARGS__)
#define log_info(...)  log_msg(LOGL_INFO, __VA_ARGS__)
#define log_warn(...)  log_msg(LOGL_WARN, __VA_ARGS__)
#define log_error(...) log_msg(LOGL_ERROR, __VA_ARGS__)

int  log_enabled(enum cfg_log_level level);

/* One access log line; fields may be NULL. */
struct log_access {
    const char *request_id;
    const char *method;
    const char *path;
    const char *route;       /* the route label; NULL = from path */
    const char *model;
    const char *host;
    const char *key_fp;
    const char *peer;
    int         status;
    int         attempts;
    int         stream;
    double      ttfb_ms;     /* time to the first byte sent to the client */
    double      total_ms;
    size_t      bytes_out;
    unsigned    token_have;  /* usage.h USAGE_HAVE_* bits; 0 = no usage seen */
    uint64_t    tokens_in, tokens_out, tokens_cached;
    const char *cache;       /* response cache: HIT, MISS, BYPASS; NULL = not used */
    const char *client;      /* the client's name (clients.h); NULL = none */
};
void log_access(const struct log_access *a);

#endif
