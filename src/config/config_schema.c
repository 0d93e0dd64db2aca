/*
 * config_schema.c -- the table of keys: every key of policies.yaml and of
 * the objects inside hosts.json, api-keys.json, fallback chains,
 * notifications and clients is a row with its type, where it goes, its
 * default (written as it would be in policies.yaml) and its range;
 * docs/configuration.md in C. Beside it: the names of enum values, the
 * checks of string values, and the small handlers of the keys with a shape
 * of their own (server.listen, models, retry.on, fallback.chains,
 * alerts.notifications, access_log, labels, clients).
 */
#include "config_int.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <arpa/inet.h>
#include <sys/socket.h>

#include <openssl/sha.h>

/* ---- the table of keys ------------------------------------------------- */

struct notify_tmp {
    struct cfg_notify n;
    int format;                 /* webhook: 0 json, 1 slack */
};

struct client_tmp {
    struct cfg_client c;
    char *key, *key_file, *key_sha256;
    int rpm, tpm, max_concurrent, per_day, per_month;
};

static const struct ename strategies[] = {
    {"round-robin", STRAT_ROUND_ROBIN}, {"weighted-round-robin", STRAT_WEIGHTED_ROUND_ROBIN},
    {"least-connections", STRAT_LEAST_CONNECTIONS}, {"latency", STRAT_LATENCY},
    {"least-pending", STRAT_LEAST_PENDING}, {"random", STRAT_RANDOM},
    {"consistent-hash", STRAT_CONSISTENT_HASH}, {NULL, 0}
};
static const struct ename log_levels[] = {
    {"debug", LOGL_DEBUG}, {"info", LOGL_INFO}, {"warn", LOGL_WARN}, {"error", LOGL_ERROR}, {NULL, 0}
};
static const struct ename log_formats[] = {{"text", LOGF_TEXT}, {"json", LOGF_JSON}, {NULL, 0}};
const struct ename cfg_sticky_by[] = {
    {"user", AFF_USER}, {"header", AFF_HEADER}, {"response_id", AFF_RESPONSE_ID}, {NULL, 0}
};
const struct ename cfg_hash_by[] = {{"user", AFF_USER}, {"header", AFF_HEADER}, {NULL, 0}};
static const struct ename when_full[] = {
    {"reject", WHEN_FULL_REJECT}, {"queue", WHEN_FULL_QUEUE}, {NULL, 0}
};
static const struct ename backoffs[] = {
    {"exponential", BACKOFF_EXPONENTIAL}, {"linear", BACKOFF_LINEAR}, {"fixed", BACKOFF_FIXED}, {NULL, 0}
};
static const struct ename jitters[] = {
    {"full", JITTER_FULL}, {"equal", JITTER_EQUAL}, {"none", JITTER_NONE}, {NULL, 0}
};
static const struct ename recoveries[] = {
    {"immediate", RECOVERY_IMMEDIATE}, {"gradual", RECOVERY_GRADUAL}, {NULL, 0}
};
static const struct ename modes[] = {
    {"sequential", FALLBACK_SEQUENTIAL}, {"parallel", FALLBACK_PARALLEL}, {NULL, 0}
};
static const struct ename stores[] = {{"memory", STORE_MEMORY}, {"redis", STORE_REDIS}, {NULL, 0}};
static const struct ename notify_types[] = {
    {"webhook", NOTIFY_WEBHOOK}, {"slack", NOTIFY_SLACK}, {"command", NOTIFY_COMMAND},
    {"email", NOTIFY_EMAIL}, {NULL, 0}
};
static const struct ename host_auths[] = {
    {"bearer", HOST_AUTH_BEARER}, {"x-api-key", HOST_AUTH_X_API_KEY}, {NULL, 0}
};
static const struct ename store_failures[] = {
    {"local", LIMITS_FAIL_LOCAL}, {"open", LIMITS_FAIL_OPEN}, {"closed", LIMITS_FAIL_CLOSED}, {NULL, 0}
};
static const struct ename webhook_formats[] = {{"json", 0}, {"slack", 1}, {NULL, 0}};

static const char *check_listen(const char *s);
static const char *check_template(const char *s);
static const char *check_host_name(const char *s);
static const char *check_path(const char *s);
static const char *check_server_name(const char *s);
static const char *check_redis_url(const char *s);
static const char *check_smtp_url(const char *s);
static const char *check_header(const char *s);
static int sp_access_log(struct loader *, const struct field *, const struct cur *, void *);
static int sp_listen(struct loader *, const struct field *, const struct cur *, void *);
static int sp_resolver(struct loader *, const struct field *, const struct cur *, void *);
static int sp_tls_version(struct loader *, const struct field *, const struct cur *, void *);
static int sp_models(struct loader *, const struct field *, const struct cur *, void *);
static int sp_retry_on(struct loader *, const struct field *, const struct cur *, void *);
static int sp_chains(struct loader *, const struct field *, const struct cur *, void *);
static int sp_steps(struct loader *, const struct field *, const struct cur *, void *);
static int sp_notifications(struct loader *, const struct field *, const struct cur *, void *);
static int sp_labels(struct loader *, const struct field *, const struct cur *, void *);
static int sp_clients(struct loader *, const struct field *, const struct cur *, void *);
static const char *check_sha256(const char *s);

#define MS    1.0
#define SEC   1000.0
#define MIN   (60 * SEC)
#define HOUR  (60 * MIN)
#define DAY   (24 * HOUR)
#define KB    1024.0
#define MB    (1024 * KB)
#define GB    (1024 * MB)

#define OFF(m)   offsetof(struct config, m)
#define HOFF(m)  offsetof(struct cfg_host, m)
#define KOFF(m)  offsetof(struct key_tmp, m)
#define COFF(m)  offsetof(struct cfg_fallback_chain, m)
#define SOFF(m)  offsetof(struct cfg_fallback_step, m)
#define NOFF(m)  offsetof(struct notify_tmp, m)
#define CLOFF(m) offsetof(struct client_tmp, m)

/*
 * Every key, its type, default and range: docs/configuration.md in C.
 * Defaults are written as in policies.yaml and go through the same parsing.
 */
const struct field cfg_fields[] = {
/*   scope     path                                 type       where                                default          lo     hi */
    {S_POLICY, "server.listen",                     T_SPECIAL, 0,                                   "127.0.0.1:8080", 0, 0, .special = sp_listen},
    {S_POLICY, "server.tls.cert",                   T_STR,     OFF(server.tls.cert),                NULL,            0, 0, .flags = FL_NONEMPTY},
    {S_POLICY, "server.tls.key",                    T_STR,     OFF(server.tls.key),                 NULL,            0, 0, .flags = FL_NONEMPTY},
    {S_POLICY, "server.tls.min_version",            T_SPECIAL, 0,                                   "'1.2'",         0, 0, .special = sp_tls_version},
    {S_POLICY, "server.tls.ciphers",                T_STR,     OFF(server.tls.ciphers),             NULL,            0, 0, .flags = FL_NONEMPTY},
    {S_POLICY, "server.tls.ciphersuites",           T_STR,     OFF(server.tls.ciphersuites),        NULL,            0, 0, .flags = FL_NONEMPTY},
    {S_POLICY, "server.tls.client_ca",              T_STR,     OFF(server.tls.client_ca),           NULL,            0, 0, .flags = FL_NONEMPTY},
    {S_POLICY, "server.workers",                    T_INT,     OFF(server.workers),                 "1",             1,     64, .flags = 0},
    {S_POLICY, "server.busy_polling",               T_BOOL,    OFF(server.busy_polling),            "false",         0, 0, .flags = 0},
    {S_POLICY, "server.max_body_bytes",             T_SIZE,    OFF(server.max_body_bytes),          "4MB",           KB,    GB, .flags = 0},
    {S_POLICY, "server.max_header_bytes",           T_SIZE,    OFF(server.max_header_bytes),        "16KB",          KB,    MB, .flags = 0},
    {S_POLICY, "server.client_timeout",             T_DUR,     OFF(server.client_timeout_ms),       "60s",           100 * MS, HOUR, .flags = 0},
    {S_POLICY, "server.drain_timeout",              T_DUR,     OFF(server.drain_timeout_ms),        "30s",           0,     HOUR, .flags = 0},
    {S_POLICY, "server.log.file",                   T_STR,     OFF(server.log_file),                NULL,            0, 0, .flags = FL_NONEMPTY},
    {S_POLICY, "server.log.level",                  T_ENUM,    OFF(server.log_level),               "info",          0, 0, .names = log_levels},
    {S_POLICY, "server.log.format",                 T_ENUM,    OFF(server.log_format),              "text",          0, 0, .names = log_formats},
    {S_POLICY, "server.access_log",                 T_SPECIAL, 0,                                   NULL,            0, 0, .special = sp_access_log},
    {S_POLICY, "server.access_log.file",            T_STR,     OFF(server.access_log),              NULL,            0, 0, .flags = FL_NONEMPTY},
    {S_POLICY, "server.access_log.format",          T_ENUM,    OFF(server.access_log_format),       "text",          0, 0, .names = log_formats},
    {S_POLICY, "server.resolver",                   T_SPECIAL, 0,                                   NULL,            0, 0, .special = sp_resolver},
    {S_POLICY, "server.resolver_timeout",           T_DUR,     OFF(server.resolver_timeout_ms),     "5s",            100 * MS, MIN, .flags = 0},
    {S_POLICY, "server.resolver_min_ttl",           T_DUR,     OFF(server.resolver_min_ttl_ms),     "1s",            0,     DAY, .flags = 0},
    {S_POLICY, "server.resolver_max_ttl",           T_DUR,     OFF(server.resolver_max_ttl_ms),     "5m",            0,     DAY, .flags = 0},
    {S_POLICY, "server.resolver_negative_ttl",      T_DUR,     OFF(server.resolver_negative_ttl_ms), "2s",           0,     HOUR, .flags = 0},

    {S_POLICY, "routing.strategy",                  T_ENUM,    OFF(routing.strategy),               "round-robin",   0, 0, .names = strategies},
    {S_POLICY, "routing.hosts_template",            T_STR,     OFF(routing.hosts_template),         "https://{name}.gaia.domains", 0, 0, .check = check_template},
    {S_POLICY, "routing.prefer_region",             T_STR,     OFF(routing.prefer_region),          NULL,            0, 0, .flags = FL_NONEMPTY},
    {S_POLICY, "routing.sticky.by",                 T_ENUM,    OFF(routing.sticky),                 NULL,            0, 0, .flags = FL_REQ, .names = cfg_sticky_by},
    {S_POLICY, "routing.sticky.header",             T_STR,     OFF(routing.sticky_header),          NULL,            0, 0, .check = check_header},
    {S_POLICY, "routing.hash_key.by",               T_ENUM,    OFF(routing.hash_key),               "user",          0, 0, .flags = FL_REQ, .names = cfg_hash_by},
    {S_POLICY, "routing.hash_key.header",           T_STR,     OFF(routing.hash_header),            NULL,            0, 0, .check = check_header},
    {S_POLICY, "routing.when_full",                 T_ENUM,    OFF(routing.when_full),              "reject",        0, 0, .names = when_full},
    {S_POLICY, "routing.passthrough",               T_STRLIST, OFF(routing.passthrough),            NULL,            0, 0, .flags = 0},
    {S_POLICY, "routing.queue_timeout",             T_DUR,     OFF(routing.queue_timeout_ms),       "5s",            0,     10 * MIN, .flags = 0},
    {S_POLICY, "routing.latency.decay",             T_DUR,     OFF(routing.latency_decay_ms),       "10s",           100 * MS, HOUR, .flags = 0},

    {S_POLICY, "models",                            T_SPECIAL, 0,                                   NULL,            0, 0, .special = sp_models},

    {S_POLICY, "retry.max_attempts",                T_INT,     OFF(retry.max_attempts),             "3",             1,     20, .flags = 0},
    {S_POLICY, "retry.backoff.type",                T_ENUM,    OFF(retry.backoff),                  "exponential",   0, 0, .names = backoffs},
    {S_POLICY, "retry.backoff.initial",             T_DUR,     OFF(retry.backoff_initial_ms),       "100ms",         0,     HOUR, .flags = 0},
    {S_POLICY, "retry.backoff.max",                 T_DUR,     OFF(retry.backoff_max_ms),           "5s",            0,     HOUR, .flags = 0},
    {S_POLICY, "retry.backoff.jitter",              T_ENUM,    OFF(retry.jitter),                   "full",          0, 0, .names = jitters},
    {S_POLICY, "retry.on",                          T_SPECIAL, 0,                                   "[network_error, timeout, 5xx, 429, 404]", 0, 0, .special = sp_retry_on},
    {S_POLICY, "retry.respect_retry_after",         T_BOOL,    OFF(retry.respect_retry_after),      "true",          0, 0, .flags = 0},
    {S_POLICY, "retry.per_try_timeout",             T_DUR,     OFF(retry.per_try_timeout_ms),       "30s",           1 * MS, HOUR, .flags = 0},
    {S_POLICY, "retry.deadline",                    T_DUR,     OFF(retry.deadline_ms),              "60s",           1 * MS, DAY, .flags = 0},
    {S_POLICY, "retry.stream_idle_timeout",         T_DUR,     OFF(retry.stream_idle_timeout_ms),   "60s",           0,     HOUR, .flags = 0},  /* 0 = off */
    {S_POLICY, "retry.response_timeout",            T_DUR,     OFF(retry.response_timeout_ms),      "0",             0,     DAY, .flags = 0},   /* 0 = off */
    {S_POLICY, "retry.budget.ratio",                T_NUM,     OFF(retry.budget_ratio),             "0.2",           0,     1, .flags = 0},
    {S_POLICY, "retry.budget.window",               T_DUR,     OFF(retry.budget_window_ms),         "10s",           SEC,   HOUR, .flags = 0},
    {S_POLICY, "retry.no_retry_header",             T_STR,     OFF(retry.no_retry_header),          NULL,            0, 0, .check = check_header},
    {S_POLICY, "retry.budget.min_retries",          T_INT,     OFF(retry.budget_min_retries),       "100",           0,     1000000, .flags = 0},

    {S_POLICY, "circuit_breaker.enabled",           T_BOOL,    OFF(breaker.enabled),                "true",          0, 0, .flags = 0},
    {S_POLICY, "circuit_breaker.failure_threshold", T_INT,     OFF(breaker.failure_threshold),      "5",             1,     1000, .flags = 0},
    {S_POLICY, "circuit_breaker.window.size",       T_INT,     OFF(breaker.window_size),            "100",           1,     100000, .flags = 0},
    {S_POLICY, "circuit_breaker.window.minimum_requests", T_INT, OFF(breaker.minimum_requests),     "10",            1,     100000, .flags = 0},
    {S_POLICY, "circuit_breaker.error_rate",        T_NUM,     OFF(breaker.error_rate),             "0.5",           0,     1, .flags = FL_EXCL_LO},
    {S_POLICY, "circuit_breaker.slow_call.latency", T_DUR,     OFF(breaker.slow_call_latency_ms),   "0",             0,     HOUR, .flags = 0},
    {S_POLICY, "circuit_breaker.slow_call.rate",    T_NUM,     OFF(breaker.slow_call_rate),         "0.5",           0,     1, .flags = FL_EXCL_LO},
    {S_POLICY, "circuit_breaker.timeout",           T_DUR,     OFF(breaker.timeout_ms),             "0",             0,     HOUR, .flags = 0},
    {S_POLICY, "circuit_breaker.reset_timeout",     T_DUR,     OFF(breaker.reset_timeout_ms),       "30s",           1 * MS, HOUR, .flags = 0},
    {S_POLICY, "circuit_breaker.half_open_requests", T_INT,    OFF(breaker.half_open_requests),     "1",             1,     1000, .flags = 0},
    {S_POLICY, "circuit_breaker.recovery.strategy", T_ENUM,    OFF(breaker.recovery),               "immediate",     0, 0, .names = recoveries},
    {S_POLICY, "circuit_breaker.recovery.duration", T_DUR,     OFF(breaker.recovery_duration_ms),   "5m",            0,     DAY, .flags = 0},
    {S_POLICY, "circuit_breaker.recovery.step",     T_NUM,     OFF(breaker.recovery_step),          "0.1",           0,     1, .flags = FL_EXCL_LO},

    {S_POLICY, "fallback.chains",                   T_SPECIAL, 0,                                   NULL,            0, 0, .special = sp_chains},

    {S_POLICY, "health_check.enabled",              T_BOOL,    OFF(health.enabled),                 "true",          0, 0, .flags = 0},
    {S_POLICY, "health_check.interval",             T_DUR,     OFF(health.interval_ms),             "10s",           100 * MS, HOUR, .flags = 0},
    {S_POLICY, "health_check.timeout",              T_DUR,     OFF(health.timeout_ms),              "2s",            1 * MS, MIN, .flags = 0},
    {S_POLICY, "health_check.path",                 T_STR,     OFF(health.path),                    "/v1/models",    0, 0, .check = check_path},
    {S_POLICY, "health_check.healthy_threshold",    T_INT,     OFF(health.healthy_threshold),       "2",             1,     100, .flags = 0},
    {S_POLICY, "health_check.unhealthy_threshold",  T_INT,     OFF(health.unhealthy_threshold),     "3",             1,     100, .flags = 0},
    {S_POLICY, "health_check.discover_models",      T_BOOL,    OFF(health.discover_models),         "false",         0, 0, .flags = 0},
    {S_POLICY, "health_check.passive",              T_BOOL,    OFF(health.passive),                 "true",          0, 0, .flags = 0},
    {S_POLICY, "health_check.ejection_base",        T_DUR,     OFF(health.ejection_base_ms),        "30s",           1 * MS, HOUR, .flags = 0},
    {S_POLICY, "health_check.ejection_max",         T_DUR,     OFF(health.ejection_max_ms),         "5m",            1 * MS, DAY, .flags = 0},
    {S_POLICY, "health_check.panic_threshold",      T_NUM,     OFF(health.panic_threshold),         "0.5",           0,     1, .flags = 0},

    {S_POLICY, "cache.enabled",                     T_BOOL,    OFF(cache.enabled),                  "false",         0, 0, .flags = 0},
    {S_POLICY, "cache.store",                       T_ENUM,    OFF(cache.store),                    "memory",        0, 0, .names = stores},
    {S_POLICY, "cache.ttl",                         T_DUR,     OFF(cache.ttl_ms),                   "5m",            100 * MS, 30 * DAY, .flags = 0},
    {S_POLICY, "cache.max_bytes",                   T_SIZE,    OFF(cache.max_bytes),                "64MB",          KB,    64 * GB, .flags = 0},
    {S_POLICY, "cache.max_entry_bytes",             T_SIZE,    OFF(cache.max_entry_bytes),          "1MB",           KB,    GB, .flags = 0},
    {S_POLICY, "cache.routes",                      T_STRLIST, OFF(cache.routes),                   NULL,            0, 0, .flags = FL_NONEMPTY},
    {S_POLICY, "cache.only_deterministic",          T_BOOL,    OFF(cache.only_deterministic),       "true",          0, 0, .flags = 0},
    {S_POLICY, "cache.per_client",                  T_BOOL,    OFF(cache.per_client),               "false",         0, 0, .flags = 0},

    {S_POLICY, "sessions.store",                    T_ENUM,    OFF(sessions.store),                 "memory",        0, 0, .names = stores},
    {S_POLICY, "sessions.ttl",                      T_DUR,     OFF(sessions.ttl_ms),                "30m",           SEC,   30 * DAY, .flags = 0},
    {S_POLICY, "sessions.max_entries",              T_INT,     OFF(sessions.max_entries),           "100000",        1,     100000000, .flags = 0},
    {S_POLICY, "sessions.keep_content",             T_BOOL,    OFF(sessions.keep_content),          "false",         0, 0, .flags = 0},
    {S_POLICY, "sessions.content_ttl",              T_DUR,     OFF(sessions.content_ttl_ms),        "10m",           100 * MS, DAY, .flags = 0},
    {S_POLICY, "sessions.content_max_bytes",        T_INT,     OFF(sessions.content_max_bytes),     "16384",         16,    60000, .flags = 0},
    {S_POLICY, "sessions.content_max_entries",      T_INT,     OFF(sessions.content_max_entries),   "10000",         1,     10000000, .flags = 0},
    {S_POLICY, "sessions.redis.url",                T_STR,     OFF(sessions.redis_url),             "redis://127.0.0.1:6379/0", 0, 0, .check = check_redis_url},
    {S_POLICY, "sessions.redis.prefix",             T_STR,     OFF(sessions.redis_prefix),          "'infergate:'",  0, 0, .flags = 0},
    {S_POLICY, "sessions.redis.timeout",            T_DUR,     OFF(sessions.redis_timeout_ms),      "200ms",         1 * MS, 10 * SEC, .flags = 0},
    {S_POLICY, "sessions.redis.username",           T_STR,     OFF(sessions.redis_username),        NULL,            0, 0, .flags = FL_NONEMPTY},
    {S_POLICY, "sessions.redis.password",           T_STR,     OFF(sessions.redis_password),        NULL,            0, 0, .flags = FL_NONEMPTY},
    {S_POLICY, "sessions.redis.sentinels",          T_STRLIST, OFF(sessions.redis_sentinels),       NULL,            0, 0, .flags = FL_NONEMPTY},
    {S_POLICY, "sessions.redis.master_name",        T_STR,     OFF(sessions.redis_master_name),     NULL,            0, 0, .flags = FL_NONEMPTY},
    {S_POLICY, "sessions.redis.sentinel_password",  T_STR,     OFF(sessions.redis_sentinel_password), NULL,          0, 0, .flags = FL_NONEMPTY},

    {S_POLICY, "alerts.window",                     T_DUR,     OFF(alerts.window_ms),               "5m",            SEC,   DAY, .flags = 0},
    {S_POLICY, "alerts.for",                        T_DUR,     OFF(alerts.for_ms),                  "1m",            0,     DAY, .flags = 0},
    {S_POLICY, "alerts.thresholds.availability",    T_NUM,     OFF(alerts.availability),            "-1",            0,     1, .flags = 0},  /* -1 = off */
    {S_POLICY, "alerts.thresholds.error_rate",      T_NUM,     OFF(alerts.error_rate),              "-1",            0,     1, .flags = 0},  /* -1 = off */
    {S_POLICY, "alerts.thresholds.latency_p99",     T_DUR,     OFF(alerts.latency_p99_ms),          "0",             0,     DAY, .flags = 0},/* 0 = off */
    {S_POLICY, "alerts.notifications",              T_SPECIAL, 0,                                   NULL,            0, 0, .special = sp_notifications},

    {S_POLICY, "usage.include_in_stream",           T_BOOL,    OFF(usage.include_in_stream),        "false",         0, 0, .flags = 0},

    {S_POLICY, "admin.token",                       T_STR,     OFF(admin.token),                    NULL,            0, 0, .flags = FL_NONEMPTY},
    {S_POLICY, "admin.client_keys",                 T_STRLIST, OFF(admin.client_keys),              NULL,            0, 0, .flags = 0},
    {S_POLICY, "clients",                           T_SPECIAL, 0,                                   NULL,            0, 0, .special = sp_clients},
    {S_POLICY, "limits.window",                     T_DUR,     OFF(limits.window_ms),               "60s",           100 * MS, HOUR, .flags = 0},
    {S_POLICY, "limits.default_max_tokens",         T_INT,     OFF(limits.default_max_tokens),      "1024",          0,     10000000, .flags = 0},
    {S_POLICY, "limits.on_store_failure",           T_ENUM,    OFF(limits.on_store_failure),        "local",         0, 0, .names = store_failures},

    /* hosts.json: an object in hosts[] */
    {S_HOST,   "name",                              T_STR,     HOFF(name),                          NULL,            0, 0, .check = check_host_name},
    {S_HOST,   "url",                               T_STR,     HOFF(url),                           NULL,            0, 0, .check = cfg_check_http_url},
    {S_HOST,   "weight",                            T_INT,     HOFF(weight),                        "1",             1,     1000, .flags = 0},
    {S_HOST,   "priority",                          T_INT,     HOFF(priority),                      "0",             0,     100, .flags = 0},
    {S_HOST,   "models",                            T_STRLIST, HOFF(models),                        NULL,            0, 0, .flags = 0},
    {S_HOST,   "containers",                        T_STRLIST, HOFF(containers),                    NULL,            0, 0, .flags = 0},
    {S_HOST,   "max_concurrent",                    T_INT,     HOFF(max_concurrent),                "0",             0,     1000000, .flags = 0},
    {S_HOST,   "region",                            T_STR,     HOFF(region),                        NULL,            0, 0, .flags = FL_NONEMPTY},
    {S_HOST,   "address",                           T_STR,     HOFF(address),                       NULL,            0, 0, .flags = FL_NONEMPTY},
    {S_HOST,   "keys",                              T_STR,     HOFF(keys),                          NULL,            0, 0, .flags = FL_NONEMPTY},
    {S_HOST,   "labels",                            T_SPECIAL, 0,                                   NULL,            0, 0, .special = sp_labels},
    {S_HOST,   "auth",                              T_ENUM,    HOFF(auth),                          "bearer",        0, 0, .names = host_auths},
    {S_HOST,   "apis",                              T_STRLIST, HOFF(apis),                          NULL,            0, 0, .flags = 0},
    {S_HOST,   "tls.ca_file",                       T_STR,     HOFF(tls.ca_file),                   NULL,            0, 0, .flags = FL_NONEMPTY},
    {S_HOST,   "tls.verify",                        T_BOOL,    HOFF(tls.verify),                    "true",          0, 0, .flags = 0},
    {S_HOST,   "tls.server_name",                   T_STR,     HOFF(tls.server_name),               NULL,            0, 0, .check = check_server_name},

    /* api-keys.json: an object in apiKeys[] */
    {S_KEY,    "key",                               T_STR,     KOFF(k.secret),                      NULL,            0, 0, .flags = FL_NONEMPTY, .check = cfg_check_secret},
    {S_KEY,    "key_file",                          T_STR,     KOFF(key_file),                      NULL,            0, 0, .flags = FL_NONEMPTY},
    {S_KEY,    "description",                       T_STR,     KOFF(k.description),                 "''",            0, 0, .flags = 0},
    {S_KEY,    "isActive",                          T_BOOL,    KOFF(k.active),                      "true",          0, 0, .flags = 0},
    {S_KEY,    "pool",                              T_STR,     KOFF(k.pool),                        NULL,            0, 0, .flags = FL_NONEMPTY},
    {S_KEY,    "hosts",                             T_STRLIST, KOFF(k.hosts),                       NULL,            0, 0, .flags = 0},
    {S_KEY,    "weight",                            T_INT,     KOFF(k.weight),                      "1",             1,     1000, .flags = 0},

    /* policies.yaml: fallback.chains[] and their steps[] */
    {S_CHAIN,  "match",                             T_STR,     COFF(match),                         NULL,            0, 0, .flags = FL_REQ | FL_NONEMPTY},
    {S_CHAIN,  "mode",                              T_ENUM,    COFF(mode),                          "sequential",    0, 0, .names = modes},
    {S_CHAIN,  "race",                              T_INT,     COFF(race),                          "2",             1,     16, .flags = 0},
    {S_CHAIN,  "stop_on_success",                   T_BOOL,    COFF(stop_on_success),               "true",          0, 0, .flags = 0},
    {S_CHAIN,  "timeout",                           T_DUR,     COFF(timeout_ms),                    "0",             0,     DAY, .flags = 0},
    {S_CHAIN,  "steps",                             T_SPECIAL, 0,                                   NULL,            0, 0, .flags = FL_REQ, .special = sp_steps},
    {S_STEP,   "model",                             T_STR,     SOFF(model),                         NULL,            0, 0, .flags = FL_NONEMPTY},
    {S_STEP,   "hosts",                             T_STRLIST, SOFF(hosts),                         NULL,            0, 0, .flags = 0},
    {S_STEP,   "timeout",                           T_DUR,     SOFF(timeout_ms),                    "0",             0,     HOUR, .flags = 0},

    /* policies.yaml: alerts.notifications[] */
    {S_NOTIFY, "type",                              T_ENUM,    NOFF(n.type),                        NULL,            0, 0, .flags = FL_REQ | FL_FIRST, .names = notify_types},
    {S_NOTIFY, "url",                               T_STR,     NOFF(n.url),                         NULL,            0, 0, .flags = FL_REQ, .only = ONLY(NOTIFY_WEBHOOK) | ONLY(NOTIFY_SLACK), .check = cfg_check_http_url},
    {S_NOTIFY, "format",                            T_ENUM,    NOFF(format),                        "json",          0, 0, .only = ONLY(NOTIFY_WEBHOOK), .names = webhook_formats},
    {S_NOTIFY, "command",                           T_STRLIST, NOFF(n.argv),                        NULL,            0, 0, .flags = FL_REQ | FL_NONEMPTY, .only = ONLY(NOTIFY_COMMAND)},
    {S_NOTIFY, "smtp_url",                          T_STR,     NOFF(n.smtp_url),                    NULL,            0, 0, .flags = FL_REQ, .only = ONLY(NOTIFY_EMAIL), .check = check_smtp_url},
    {S_NOTIFY, "from",                              T_STR,     NOFF(n.from),                        NULL,            0, 0, .flags = FL_REQ | FL_NONEMPTY, .only = ONLY(NOTIFY_EMAIL)},
    {S_NOTIFY, "to",                                T_STRLIST, NOFF(n.to),                          NULL,            0, 0, .flags = FL_REQ | FL_NONEMPTY, .only = ONLY(NOTIFY_EMAIL)},
    {S_NOTIFY, "username",                          T_STR,     NOFF(n.username),                    NULL,            0, 0, .only = ONLY(NOTIFY_EMAIL)},
    {S_NOTIFY, "password",                          T_STR,     NOFF(n.password),                    NULL,            0, 0, .only = ONLY(NOTIFY_EMAIL)},
    {S_NOTIFY, "timeout",                           T_DUR,     NOFF(n.timeout_ms),                  "5s",            1 * MS, 5 * MIN, .flags = 0},
    {S_CLIENT, "name",                              T_STR,     CLOFF(c.name),                       NULL,            0, 0, .flags = FL_REQ | FL_NONEMPTY},
    {S_CLIENT, "key",                               T_STR,     CLOFF(key),                          NULL,            0, 0, .flags = FL_NONEMPTY, .check = cfg_check_secret},
    {S_CLIENT, "key_file",                          T_STR,     CLOFF(key_file),                     NULL,            0, 0, .flags = FL_NONEMPTY},
    {S_CLIENT, "key_sha256",                        T_STR,     CLOFF(key_sha256),                   NULL,            0, 0, .check = check_sha256},
    {S_CLIENT, "cert_subject",                      T_STR,     CLOFF(c.cert_subject),               NULL,            0, 0, .flags = FL_NONEMPTY},
    {S_CLIENT, "models",                            T_STRLIST, CLOFF(c.models),                     NULL,            0, 0, .flags = FL_NONEMPTY},
    {S_CLIENT, "limits.rpm",                        T_INT,     CLOFF(rpm),                          "0",             0,     1000000000, .flags = 0},
    {S_CLIENT, "limits.tpm",                        T_INT,     CLOFF(tpm),                          "0",             0,     2000000000, .flags = 0},
    {S_CLIENT, "limits.max_concurrent",             T_INT,     CLOFF(max_concurrent),               "0",             0,     1000000, .flags = 0},
    {S_CLIENT, "limits.tokens_per_day",             T_INT,     CLOFF(per_day),                      "0",             0,     2000000000, .flags = 0},
    {S_CLIENT, "limits.tokens_per_month",           T_INT,     CLOFF(per_month),                    "0",             0,     2000000000, .flags = 0},
};

const size_t cfg_nfields = sizeof(cfg_fields) / sizeof(cfg_fields[0]);

/* ---- string checks ----------------------------------------------------- */

static const char *check_port(const char *p)
{
    long port;
    char *end;

    if (*p < '0' || *p > '9')
        return "expected ADDR:PORT or [V6ADDR]:PORT";
    errno = 0;
    port = strtol(p, &end, 10);
    if (*end != '\0' || errno || port < 1 || port > 65535)
        return "the port must be between 1 and 65535";
    return NULL;
}

static const char *check_listen(const char *s)
{
    const char *colon;

    if (s[0] == '[') {
        const char *rb = strchr(s, ']');
        if (rb == NULL || rb == s + 1 || rb[1] != ':')
            return "expected ADDR:PORT or [V6ADDR]:PORT";
        return check_port(rb + 2);
    }
    colon = strrchr(s, ':');
    if (colon == NULL || colon == s || memchr(s, ':', (size_t)(colon - s)))
        return "expected ADDR:PORT or [V6ADDR]:PORT";
    return check_port(colon + 1);
}

/* Length of the scheme prefix for http:// or https://, else 0. */
size_t cfg_http_scheme(const char *s)
{
    if (strncasecmp(s, "http://", 7) == 0)
        return 7;
    if (strncasecmp(s, "https://", 8) == 0)
        return 8;
    return 0;
}

const char *cfg_check_http_url(const char *s)
{
    size_t n = cfg_http_scheme(s);
    const char *p;

    if (n == 0)
        return "expected an http:// or https:// URL";
    for (p = s; *p; p++)
        if ((unsigned char)*p <= 0x20 || *p == 0x7f)
            return "a URL must not contain spaces or control characters";
    if (s[n] == '\0' || s[n] == '/' || s[n] == '?' || s[n] == '#')
        return "the URL has no host";
    if (strpbrk(s, "?#"))
        return "a base URL must not have a query or a fragment";
    return NULL;
}

static const char *check_template(const char *s)
{
    if (strstr(s, "{name}") == NULL)
        return "must contain \"{name}\"";
    return cfg_check_http_url(s);
}

static int host_name_ok(const char *s, int colon)
{
    const char *p;

    if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9')))
        return 0;
    for (p = s; *p; p++) {
        char c = *p;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-' || (colon && c == ':')))
            return 0;
    }
    return 1;
}

/* A decimal port 1..65535, without leading zeros. */
static int port_ok(const char *s, size_t n)
{
    unsigned long v = 0;
    size_t i;

    if (n == 0 || n > 5 || s[0] == '0')
        return 0;
    for (i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return 0;
        v = v * 10 + (unsigned long)(s[i] - '0');
    }
    return v <= 65535;
}

/* "[v6]" or "[v6]:port" over n bytes; 0 when it is not one. */
static int v6_authority_ok(const char *s, size_t n)
{
    const char *end = memchr(s, ']', n), *p;

    if (n < 3 || s[0] != '[' || end == NULL || memchr(s, ':', (size_t)(end - s)) == NULL)
        return 0;
    for (p = s + 1; p < end; p++)
        if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f') || (*p >= 'A' && *p <= 'F')
              || *p == ':' || *p == '.'))
            return 0;
    if (end + 1 == s + n)
        return 1;
    return end[1] == ':' && port_ok(end + 2, (size_t)(s + n - end - 2));
}

/* A bare entry of hosts[]: "name", "name:port", "ip:port", "[v6]" or
 * "[v6]:port" (docs/configuration.md; the schema's bareName). */
int cfg_bare_host_ok(const char *s)
{
    const char *colon = strchr(s, ':');

    if (s[0] == '[')
        return v6_authority_ok(s, strlen(s));
    if (colon == NULL)
        return host_name_ok(s, 0);
    return host_name_ok(s, 1) && strchr(colon + 1, ':') == NULL
           && port_ok(colon + 1, strlen(colon + 1));
}

/* The host[:port] of a URL made from hosts_template: a DNS name or IPv4
 * address with an optional port, or a bracketed IPv6 one. */
int cfg_template_authority_ok(const char *url)
{
    const char *p = url + cfg_http_scheme(url);
    size_t n = strcspn(p, "/?#");
    const char *cfg_at = memchr(p, '@', n), *colon;

    if (cfg_at) {
        n -= (size_t)(cfg_at + 1 - p);
        p = cfg_at + 1;
    }
    if (n > 0 && p[0] == '[')
        return v6_authority_ok(p, n);
    colon = memchr(p, ':', n);
    if (colon == NULL)
        return n > 0;
    return colon > p && memchr(colon + 1, ':', (size_t)(p + n - colon - 1)) == NULL
           && port_ok(colon + 1, (size_t)(p + n - colon - 1));
}

static const char *check_host_name(const char *s)
{
    if (!host_name_ok(s, 1))
        return "a host name is letters, digits, '.', '_', '-' and ':', starting with a letter or digit";
    return NULL;
}

static const char *check_server_name(const char *s)
{
    if (!host_name_ok(s, 0) || strchr(s, '_'))
        return "a DNS name: letters, digits, '.' and '-'";
    return NULL;
}

static const char *check_path(const char *s)
{
    const char *p;

    if (s[0] != '/')
        return "must start with \"/\"";
    for (p = s; *p; p++)
        if ((unsigned char)*p <= 0x20 || *p == 0x7f)
            return "must not contain spaces or control characters";
    return NULL;
}

static const char *check_redis_url(const char *s)
{
    /* one parser for -t and runtime (session_redis.c, through the hooks) */
    return cfg_hooks.redis_url_problem ? cfg_hooks.redis_url_problem(s) : NULL;
}

static const char *check_smtp_url(const char *s)
{
    if ((strncasecmp(s, "smtp://", 7) == 0 && s[7]) || (strncasecmp(s, "smtps://", 8) == 0 && s[8]))
        return NULL;
    return "expected an smtp:// or smtps:// URL";
}

static const char *check_header(const char *s)
{
    const char *p;

    if (*s == '\0')
        return "must not be empty";
    for (p = s; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              strchr("!#$%&'*+-.^_`|~", *p)))
            return "not a valid HTTP header name";
    return NULL;
}

/* ---- special shapes ---------------------------------------------------- */

/* One entry of server.listen: "ADDR:PORT" or {address, tls}. tls is -1
 * when not given (TLS when server.tls is set, see finish_policies). */
static int listen_entry(struct loader *ld, const struct cur *c, struct cfg_listener *l)
{
    const char *msg = NULL, *key;
    struct cur ac;
    json_t *v;
    int bad = 0;

    l->tls = -1;
    if (json_is_string(c->v)) {
        if ((msg = check_listen(json_string_value(c->v))) != NULL) {
            cerr(ld, c, "%s", msg);
            return -1;
        }
        l->address = cfg_xstrdup(json_string_value(c->v));
        return 0;
    }
    if (!json_is_object(c->v)) {
        cerr(ld, c, "%s", cfg_want_string(c));    /* the usual mistake: a bare port */
        return -1;
    }
    json_object_foreach(c->v, key, v) {
        if (strcmp(key, "address") != 0 && strcmp(key, "tls") != 0) {
            static const char *const cands[] = {"address", "tls"};
            cfg_unknown_key_err(ld, c, key, cfg_suggest(key, cands, 2));
            bad = 1;
        }
    }
    if (!cfg_cur_get(c, "address", &ac)) {
        cfg_merr(ld, c, "address", "missing required key");
        return -1;
    }
    if (!json_is_string(ac.v) || (msg = check_listen(json_string_value(ac.v))) != NULL) {
        cerr(ld, &ac, "%s", json_is_string(ac.v) ? msg : "expected \"ADDR:PORT\"");
        return -1;
    }
    if (cfg_cur_get(c, "tls", &ac)) {
        json_t *b = cfg_typed(&ac);
        if (!json_is_boolean(b)) {
            cerr(ld, &ac, "expected true or false");
            bad = 1;
        } else {
            l->tls = json_is_true(b);
        }
        json_decref(b);
    }
    if (bad)
        return -1;
    l->address = cfg_xstrdup(json_string_value(json_object_get(c->v, "address")));
    return 0;
}

/* server.listen: one entry or a list of them. */
static int sp_listen(struct loader *ld, const struct field *f, const struct cur *c, void *base)
{
    struct config *cfg = base;
    struct cfg_listener *ls;
    size_t i, n = 1;
    int bad = 0;

    (void)f;
    if (json_is_array(c->v)) {
        n = json_array_size(c->v);
        if (n == 0) {
            cerr(ld, c, "must not be empty");
            return -1;
        }
        if (n > CFG_MAX_LISTENERS) {
            cerr(ld, c, "at most %d listeners", CFG_MAX_LISTENERS);
            return -1;
        }
    }
    ls = cfg_xcalloc(n, sizeof(*ls));
    for (i = 0; i < n; i++) {
        struct cur ec;
        cfg_cur_item(c, i, &ec);
        if (listen_entry(ld, &ec, &ls[i]) < 0)
            bad = 1;
    }
    for (i = 0; !bad && i < n; i++) {
        size_t j;
        for (j = 0; j < i; j++)
            if (strcmp(ls[i].address, ls[j].address) == 0) {
                struct cur ec;
                cfg_cur_elem(c, i, &ec);
                cerr(ld, &ec, "\"%s\" is listed twice", ls[i].address);
                bad = 1;
            }
    }
    if (bad) {
        for (i = 0; i < n; i++)
            free(ls[i].address);
        free(ls);
        return -1;
    }
    cfg_listeners_free(cfg);
    cfg->server.listeners = ls;
    cfg->server.nlisteners = n;
    free(cfg->server.listen);
    cfg->server.listen = cfg_xstrdup(ls[0].address);
    return 0;
}

/* One nameserver of server.resolver: "IP", "IP:PORT" or "[V6]:PORT"; NULL
 * when fine, else what is wrong. */
static const char *check_nameserver(const char *s)
{
    char host[64];
    const char *port = NULL, *end;
    unsigned char a[16];
    size_t n;

    if (s[0] == '[') {
        if ((end = strchr(s, ']')) == NULL || (end[1] != '\0' && end[1] != ':'))
            return "expected an IP address, \"IP:PORT\" or \"[V6ADDR]:PORT\"";
        n = (size_t)(end - s - 1);
        s++;
        port = end[1] == ':' ? end + 2 : NULL;
    } else if ((end = strchr(s, ':')) != NULL && strchr(end + 1, ':') == NULL) {
        n = (size_t)(end - s);
        port = end + 1;
    } else {
        n = strlen(s);                  /* "IP", or a bare IPv6 address */
    }
    if (n == 0 || n >= sizeof(host))
        return "expected an IP address, \"IP:PORT\" or \"[V6ADDR]:PORT\" (a nameserver is"
               " given by address, not by name)";
    memcpy(host, s, n);
    host[n] = '\0';
    if (inet_pton(AF_INET, host, a) != 1 && inet_pton(AF_INET6, host, a) != 1)
        return "not an IP address (a nameserver is given by address, not by name)";
    if (port) {
        char *e;
        unsigned long p;
        errno = 0;
        p = strtoul(port, &e, 10);
        if (*port == '\0' || *e != '\0' || errno || p == 0 || p > 65535)
            return "the port must be 1 to 65535";
    }
    return NULL;
}

/* server.resolver: one nameserver or a list of them (at most 8), or
 * "libc": host names through libcurl (getaddrinfo on its thread). */
static int sp_resolver(struct loader *ld, const struct field *f, const struct cur *c, void *base)
{
    struct config *cfg = base;
    size_t i, n = json_is_array(c->v) ? json_array_size(c->v) : 1;
    const char *msg;
    int bad = 0;

    (void)f;
    if (!json_is_array(c->v) && !json_is_string(c->v)) {
        cerr(ld, c, "%s", cfg_want_string(c));
        return -1;
    }
    cfg->server.resolver_libc = json_is_string(c->v)
                                && strcmp(json_string_value(c->v), "libc") == 0;
    if (cfg->server.resolver_libc) {
        cfg_strlist_free(&cfg->server.resolver);
        return 0;
    }
    if (n > 8) {
        cerr(ld, c, "at most 8 nameservers");
        return -1;
    }
    for (i = 0; i < n; i++) {
        struct cur ec;
        cfg_cur_item(c, i, &ec);
        if (!json_is_string(ec.v)) {
            cerr(ld, &ec, "%s", cfg_want_string(&ec));
            bad = 1;
        } else if ((msg = check_nameserver(json_string_value(ec.v))) != NULL) {
            cerr(ld, &ec, "%s", msg);
            bad = 1;
        }
    }
    if (bad)
        return -1;
    cfg_strlist_free(&cfg->server.resolver);
    if (n == 0)
        return 0;
    cfg->server.resolver.v = cfg_xcalloc(n, sizeof(char *));
    for (i = 0; i < n; i++) {
        json_t *v = json_is_array(c->v) ? json_array_get(c->v, i) : c->v;
        cfg->server.resolver.v[i] = cfg_xstrdup(json_string_value(v));
    }
    cfg->server.resolver.n = n;
    return 0;
}

/* server.tls.min_version: "1.2" or "1.3" (a bare YAML number too). */
static int sp_tls_version(struct loader *ld, const struct field *f, const struct cur *c, void *base)
{
    struct config *cfg = base;
    json_t *v = cfg_typed(c);
    const char *s = json_is_string(c->v) ? json_string_value(c->v) : NULL;
    int ver = 0;

    (void)f;
    if (s && (strcmp(s, "1.2") == 0 || strcmp(s, "TLSv1.2") == 0))
        ver = 12;
    else if (s && (strcmp(s, "1.3") == 0 || strcmp(s, "TLSv1.3") == 0))
        ver = 13;
    else if (json_is_real(v) && json_real_value(v) == 1.2)
        ver = 12;
    else if (json_is_real(v) && json_real_value(v) == 1.3)
        ver = 13;
    json_decref(v);
    if (ver == 0) {
        cerr(ld, c, "expected \"1.2\" or \"1.3\"");
        return -1;
    }
    cfg->server.tls.min_version = ver;
    return 0;
}

static int sp_access_log(struct loader *ld, const struct field *f, const struct cur *c, void *base)
{
    struct config *cfg = base;

    (void)f;
    if (json_is_string(c->v)) {
        if (json_string_length(c->v) == 0) {
            cerr(ld, c, "must not be empty (write \"off\" to turn the access log off)");
            return -1;
        }
        free(cfg->server.access_log);
        cfg->server.access_log = cfg_xstrdup(json_string_value(c->v));
        return 0;
    }
    if (json_is_object(c->v)) {
        /* A mapping without `file` logs to stdout. */
        free(cfg->server.access_log);
        cfg->server.access_log = cfg_xstrdup("-");
        cfg_walk(ld, c, S_POLICY, "server.access_log", base, ~0u, 1);
        return 0;
    }
    cerr(ld, c, "expected a file name, \"-\", \"off\" or a mapping with file and format");
    return -1;
}

static int sp_models(struct loader *ld, const struct field *f, const struct cur *c, void *base)
{
    struct config *cfg = base;
    const char *name;
    json_t *v;

    (void)f;
    if (!json_is_object(c->v)) {
        cerr(ld, c, "%s of names to a model or a list of models", cfg_want_map(c));
        return -1;
    }
    json_object_foreach(c->v, name, v) {
        struct cfg_model_group *g;
        struct cfg_strlist models = {NULL, 0};
        struct cur mc;

        cfg_cur_member(c, name, v, &mc);
        if (json_is_string(v)) {
            if (json_string_length(v) == 0) {
                cerr(ld, &mc, "must not be empty");
                continue;
            }
            models.v = cfg_xcalloc(1, sizeof(char *));
            models.v[0] = cfg_xstrdup(json_string_value(v));
            models.n = 1;
        } else if (json_is_array(v)) {
            if (cfg_parse_strlist(ld, &mc, FL_NONEMPTY, &models) < 0)
                continue;
        } else {
            cerr(ld, &mc, "expected a model name or a list of model names");
            continue;
        }
        cfg->models = cfg_grow(cfg->models, cfg->nmodels, sizeof(*cfg->models));
        g = &cfg->models[cfg->nmodels++];
        g->name = cfg_xstrdup(name);
        g->models = models;
    }
    return 0;
}

static int sp_retry_on(struct loader *ld, const struct field *f, const struct cur *c, void *base)
{
    static const struct { const char *name; unsigned bit; } tokens[] = {
        {"network_error", RETRY_ON_NETWORK_ERROR}, {"timeout", RETRY_ON_TIMEOUT},
        {"5xx", RETRY_ON_5XX}, {"4xx", RETRY_ON_4XX}
    };
    static const char *const names[] = {"network_error", "timeout", "5xx", "4xx"};
    struct config *cfg = base;
    unsigned on = 0;
    int *codes = NULL;
    size_t ncodes = 0, i, k;
    int bad = 0;

    (void)f;
    if (!json_is_array(c->v)) {
        cerr(ld, c, "%s like [network_error, timeout, 5xx, 429]", cfg_want_list(c));
        return -1;
    }
    for (i = 0; i < json_array_size(c->v); i++) {
        struct cur ic;
        json_t *v;
        long code = -1;
        char dym[128];

        cfg_cur_elem(c, i, &ic);
        v = cfg_typed(&ic);
        if (json_is_integer(v)) {
            code = (long)json_integer_value(v);
        } else if (json_is_string(v)) {
            const char *s = json_string_value(v);
            for (k = 0; k < 4; k++)
                if (strcmp(s, tokens[k].name) == 0)
                    break;
            if (k < 4) {
                on |= tokens[k].bit;
            } else if (strlen(s) == 3 && strspn(s, "0123456789") == 3) {
                code = strtol(s, NULL, 10);
            } else {
                const char *sug = cfg_suggest(s, names, 4);
                if (sug)
                    cerr(ld, &ic, "unknown value \"%.64s\"%s", s, cfg_did_you_mean(dym, sizeof(dym), sug));
                else
                    cerr(ld, &ic, "unknown value \"%.64s\", expected network_error, timeout, 5xx, 4xx or a status code", s);
                bad = 1;
            }
        } else {
            cerr(ld, &ic, "expected network_error, timeout, 5xx, 4xx or a status code");
            bad = 1;
        }
        json_decref(v);
        if (code == -1)
            continue;
        if (code < 400 || code > 599) {
            cerr(ld, &ic, "a status code must be between 400 and 599");
            bad = 1;
            continue;
        }
        for (k = 0; k < ncodes; k++)
            if (codes[k] == code)
                break;
        if (k == ncodes) {
            codes = cfg_grow(codes, ncodes, sizeof(*codes));
            codes[ncodes++] = (int)code;
        }
    }
    if (bad) {
        free(codes);
        return -1;
    }
    free(cfg->retry.on_codes);
    cfg->retry.on = on;
    cfg->retry.on_codes = codes;
    cfg->retry.non_codes = ncodes;
    return 0;
}

/* Host names listed at c (an array already parsed into l) to check later. */
void cfg_ref_hosts(struct loader *ld, const struct cur *c, const struct cfg_strlist *l)
{
    size_t i;

    if (!json_is_array(c->v) || json_array_size(c->v) != l->n)
        return;
    for (i = 0; i < l->n; i++) {
        struct cur ic;
        cfg_cur_elem(c, i, &ic);
        cfg_add_ref(ld, REF_HOST, &ic, l->v[i]);
    }
}

static int sp_steps(struct loader *ld, const struct field *f, const struct cur *c, void *base)
{
    struct cfg_fallback_chain *ch = base;
    size_t i, n;

    (void)f;
    if (!json_is_array(c->v)) {
        cerr(ld, c, "%s of steps", cfg_want_list(c));
        return -1;
    }
    if ((n = json_array_size(c->v)) == 0) {
        cerr(ld, c, "must not be empty");
        return -1;
    }
    for (i = 0; i < n; i++) {
        struct cfg_fallback_step st;
        struct cur sc, hc;

        cfg_cur_elem(c, i, &sc);
        memset(&st, 0, sizeof(st));
        cfg_defaults_apply(ld, S_STEP, &st);
        cfg_walk(ld, &sc, S_STEP, "", &st, ~0u, 1);
        if (!json_is_object(sc.v)) {
            cfg_step_free(&st);
            continue;
        }
        if (st.model == NULL && st.hosts.n == 0 &&
            !json_object_get(sc.v, "model") && !json_object_get(sc.v, "hosts"))
            cerr(ld, &sc, "a step needs \"model\" or \"hosts\"");
        if (cfg_cur_get(&sc, "hosts", &hc))
            cfg_ref_hosts(ld, &hc, &st.hosts);
        ch->steps = cfg_grow(ch->steps, ch->nsteps, sizeof(*ch->steps));
        ch->steps[ch->nsteps++] = st;
    }
    return 0;
}

static int sp_chains(struct loader *ld, const struct field *f, const struct cur *c, void *base)
{
    struct config *cfg = base;
    size_t i;

    (void)f;
    if (!json_is_array(c->v)) {
        cerr(ld, c, "%s of chains", cfg_want_list(c));
        return -1;
    }
    for (i = 0; i < json_array_size(c->v); i++) {
        struct cfg_fallback_chain ch;
        struct cur cc;

        cfg_cur_elem(c, i, &cc);
        memset(&ch, 0, sizeof(ch));
        cfg_defaults_apply(ld, S_CHAIN, &ch);
        cfg_walk(ld, &cc, S_CHAIN, "", &ch, ~0u, 1);
        if (!json_is_object(cc.v)) {
            cfg_chain_free(&ch);
            continue;
        }
        cfg->fallback.chains = cfg_grow(cfg->fallback.chains, cfg->fallback.nchains,
                                    sizeof(*cfg->fallback.chains));
        cfg->fallback.chains[cfg->fallback.nchains++] = ch;
    }
    return 0;
}

static int sp_notifications(struct loader *ld, const struct field *f, const struct cur *c, void *base)
{
    const struct field *ftype = cfg_field_find(ld, S_NOTIFY, "type");
    struct config *cfg = base;
    size_t i;

    (void)f;
    if (!json_is_array(c->v)) {
        cerr(ld, c, "%s of notifications", cfg_want_list(c));
        return -1;
    }
    for (i = 0; i < json_array_size(c->v); i++) {
        struct notify_tmp nt;
        struct cur nc, tc;
        unsigned mask = ~0u;
        int known = 0;

        cfg_cur_elem(c, i, &nc);
        if (!json_is_object(nc.v)) {
            cerr(ld, &nc, "%s", cfg_want_map(&nc));
            continue;
        }
        memset(&nt, 0, sizeof(nt));
        cfg_defaults_apply(ld, S_NOTIFY, &nt);
        if (!cfg_cur_get(&nc, "type", &tc))
            cfg_merr(ld, &nc, "type", "missing required key");
        else if (cfg_parse_leaf(ld, ftype, &tc, &nt) == 0)
            known = 1;
        if (known)
            mask = ONLY(nt.n.type);
        cfg_walk(ld, &nc, S_NOTIFY, "", &nt, mask, known);
        if (nt.n.type == NOTIFY_WEBHOOK && nt.format == 1)
            nt.n.type = NOTIFY_SLACK;
        cfg->alerts.notify = cfg_grow(cfg->alerts.notify, cfg->alerts.nnotify, sizeof(*cfg->alerts.notify));
        cfg->alerts.notify[cfg->alerts.nnotify++] = nt.n;
    }
    return 0;
}

static int sp_labels(struct loader *ld, const struct field *f, const struct cur *c, void *base)
{
    struct cfg_host *h = base;
    const char *name;
    json_t *v;

    (void)f;
    if (!json_is_object(c->v)) {
        cerr(ld, c, "%s of names to strings", cfg_want_map(c));
        return -1;
    }
    json_object_foreach(c->v, name, v) {
        struct cur lc;
        cfg_cur_member(c, name, v, &lc);
        if (!json_is_string(v)) {
            cerr(ld, &lc, "%s", cfg_want_string(&lc));
            continue;
        }
        h->labels = cfg_grow(h->labels, h->nlabels, sizeof(*h->labels));
        h->labels[h->nlabels].name = cfg_xstrdup(name);
        h->labels[h->nlabels].value = cfg_xstrdup(json_string_value(v));
        h->nlabels++;
    }
    return 0;
}

/* ---- clients ------------------------------------------------------------ */

static const char *check_sha256(const char *s)
{
    size_t n = strspn(s, "0123456789abcdefABCDEF");

    return n == 64 && s[n] == '\0' ? NULL : "expected the 64 hex digits of a SHA-256";
}

void cfg_sha256_hex(const char *key, char out[65])
{
    unsigned char md[SHA256_DIGEST_LENGTH];
    size_t i;

    SHA256((const unsigned char *)key, strlen(key), md);
    for (i = 0; i < SHA256_DIGEST_LENGTH; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
}

static const char *client_name_of(const struct config *c, size_t i)
{
    return c->clients[i].name;
}

static const char *client_hash_of(const struct config *c, size_t i)
{
    return c->clients[i].key_sha256;
}

static const char *client_subject_of(const struct config *c, size_t i)
{
    return c->clients[i].cert_subject;
}

/*
 * clients: [{name, key | key_file | key_sha256, cert_subject, models,
 * limits}]: a key, a certificate subject or both. The entry named `default`
 * has neither: its models and limits go to the clients that set none. Keys
 * are kept as SHA-256 only.
 */
static int sp_clients(struct loader *ld, const struct field *f, const struct cur *c, void *base)
{
    struct config *cfg = base;
    struct client_tmp def;
    struct nameset names, hashes, subjects;
    struct cur pr, cac;
    int have_def = 0, have_ca;
    size_t i, j;

    (void)f;
    if (!json_is_array(c->v)) {
        cerr(ld, c, "%s of clients", cfg_want_list(c));
        return -1;
    }
    memset(&def, 0, sizeof(def));
    cfg_nameset_init(&names, json_array_size(c->v));
    cfg_nameset_init(&hashes, json_array_size(c->v));
    cfg_nameset_init(&subjects, json_array_size(c->v));
    cfg_cur_root(&pr, FILE_POLICIES, &ld->doc[FILE_POLICIES]);
    have_ca = cfg_cur_lookup(&pr, "server.tls.client_ca", &cac);
    for (i = 0; i < json_array_size(c->v); i++) {
        struct client_tmp ct;
        struct cur ec, fc;
        int nkeys;

        cfg_cur_elem(c, i, &ec);
        if (!json_is_object(ec.v)) {
            cerr(ld, &ec, "%s", cfg_want_map(&ec));
            continue;
        }
        memset(&ct, 0, sizeof(ct));
        cfg_defaults_apply(ld, S_CLIENT, &ct);
        cfg_walk(ld, &ec, S_CLIENT, "", &ct, ~0u, 1);
        ct.c.limits.rpm = ct.rpm;
        ct.c.limits.tpm = ct.tpm;
        ct.c.limits.max_concurrent = ct.max_concurrent;
        ct.c.limits.tokens_per_day = ct.per_day;
        ct.c.limits.tokens_per_month = ct.per_month;
        ct.c.has_limits = json_object_get(ec.v, "limits") != NULL;
        nkeys = (json_object_get(ec.v, "key") != NULL) + (json_object_get(ec.v, "key_file") != NULL)
                + (json_object_get(ec.v, "key_sha256") != NULL);
        if (ct.c.cert_subject && !have_ca && cfg_cur_get(&ec, "cert_subject", &fc))
            cerr(ld, &fc, "cert_subject needs server.tls.client_ca (mutual TLS): without it"
                 " no client certificate is asked for");
        if (ct.c.name && strcmp(ct.c.name, "default") == 0) {
            if (nkeys || ct.c.cert_subject)
                cerr(ld, &ec, "the \"default\" entry has no key: it gives its models and"
                     " limits to the clients that set none");
            else if (have_def)
                cerr(ld, &ec, "duplicate client name \"default\"");
            else {
                def = ct;
                have_def = 1;
                ct.c.name = NULL;
                memset(&ct.c.models, 0, sizeof(ct.c.models));
            }
        } else if (nkeys > 1 || (nkeys == 0 && ct.c.cert_subject == NULL)) {
            if (nkeys)
                cerr(ld, &ec, "use one of \"key\", \"key_file\" or \"key_sha256\"");
            else
                cfg_merr(ld, &ec, "key", "missing required key \"key\" (or \"key_file\","
                     " \"key_sha256\", \"cert_subject\")");
        } else if (ct.key) {
            cfg_sha256_hex(ct.key, ct.c.key_sha256);
        } else if (ct.key_file && cfg_cur_get(&ec, "key_file", &fc)) {
            char *secret = NULL;
            if (cfg_read_key_file(ld, &fc, ct.key_file, &secret) == 0 && secret)
                cfg_sha256_hex(secret, ct.c.key_sha256);
            if (secret)
                memset(secret, 0, strlen(secret));
            free(secret);
        } else if (ct.key_sha256) {
            for (j = 0; j < 64; j++)
                ct.c.key_sha256[j] = (char)tolower((unsigned char)ct.key_sha256[j]);
            ct.c.key_sha256[64] = '\0';
        }
        if (ct.key)
            memset(ct.key, 0, strlen(ct.key));
        free(ct.key);
        free(ct.key_file);
        free(ct.key_sha256);
        if (ct.c.name == NULL || (ct.c.key_sha256[0] == '\0' && ct.c.cert_subject == NULL)
            || (ct.c.cert_subject && !have_ca)) {
            cfg_client_free(&ct.c);
            continue;
        }
        cfg->clients = cfg_grow(cfg->clients, cfg->nclients, sizeof(*cfg->clients));
        cfg->clients[cfg->nclients] = ct.c;
        if (cfg_nameset_add(&names, ct.c.name, cfg->nclients, client_name_of, cfg) >= 0) {
            cfg_cur_get(&ec, "name", &fc);
            cerr(ld, &fc, "duplicate client name \"%s\"", ct.c.name);
            cfg_client_free(&ct.c);
            continue;
        }
        if (ct.c.key_sha256[0]
            && cfg_nameset_add(&hashes, ct.c.key_sha256, cfg->nclients, client_hash_of, cfg) >= 0) {
            cerr(ld, &ec, "client \"%s\" has the same key as another client", ct.c.name);
            cfg_client_free(&ct.c);
            continue;
        }
        if (ct.c.cert_subject
            && cfg_nameset_add(&subjects, ct.c.cert_subject, cfg->nclients, client_subject_of,
                           cfg) >= 0) {
            cfg_cur_get(&ec, "cert_subject", &fc);
            cerr(ld, &fc, "client \"%s\" has the same cert_subject as another client",
                 ct.c.name);
            cfg_client_free(&ct.c);
            continue;
        }
        if (ct.c.cert_subject)
            cfg->nclient_certs++;
        cfg->nclients++;
    }
    free(names.slot);
    free(hashes.slot);
    free(subjects.slot);
    if (have_def) {
        for (i = 0; i < cfg->nclients; i++) {
            struct cfg_client *cl = &cfg->clients[i];
            if (!cl->has_limits)
                cl->limits = def.c.limits;
            if (cl->models.n == 0 && def.c.models.n) {
                cl->models.v = cfg_xcalloc(def.c.models.n, sizeof(char *));
                for (j = 0; j < def.c.models.n; j++)
                    cl->models.v[j] = cfg_xstrdup(def.c.models.v[j]);
                cl->models.n = def.c.models.n;
            }
        }
        cfg_client_free(&def.c);
    }
    return 0;
}

const char *config_strategy_name(enum cfg_strategy s)
{
    const struct ename *e;

    for (e = strategies; e->name; e++)
        if (e->value == (int)s)
            return e->name;
    return "unknown";
}
