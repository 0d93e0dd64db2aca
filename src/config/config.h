/*
 * config.h -- the configuration snapshot.
 *
 * A `struct config` is everything parsed from hosts.json, api-keys.json and
 * policies.yaml: validated, defaults filled, `${ENV}` and `key_file`
 * resolved, host names expanded through routing.hosts_template. It is
 * immutable once built and reference counted: every request holds a
 * reference for its whole life, so a reload never changes the ground under
 * a request in flight. Runtime state (health, breakers, cooldowns) lives
 * elsewhere (state.c), keyed by host name and key id.
 *
 * The list of keys, their types, ranges and defaults is docs/configuration.md;
 * the JSON Schemas in schemas/ say the same thing for editors.
 */
#ifndef INFERGATE_CONFIG_H
#define INFERGATE_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "limiter.h"

/* All durations are milliseconds, all sizes bytes. */

enum cfg_strategy {
    STRAT_ROUND_ROBIN = 0,
    STRAT_WEIGHTED_ROUND_ROBIN,
    STRAT_LEAST_CONNECTIONS,
    STRAT_LATENCY,
    STRAT_LEAST_PENDING,
    STRAT_RANDOM,
    STRAT_CONSISTENT_HASH
};

enum cfg_log_level { LOGL_DEBUG = 0, LOGL_INFO, LOGL_WARN, LOGL_ERROR };
enum cfg_log_format { LOGF_TEXT = 0, LOGF_JSON };

/* How a request is tied to something (routing.sticky, routing.hash_key). */
enum cfg_affinity { AFF_NONE = 0, AFF_USER, AFF_HEADER, AFF_RESPONSE_ID };

enum cfg_backoff { BACKOFF_EXPONENTIAL = 0, BACKOFF_LINEAR, BACKOFF_FIXED };
enum cfg_jitter { JITTER_FULL = 0, JITTER_EQUAL, JITTER_NONE };

/* retry.on tokens, as bits; explicit status codes go in retry.on_codes. */
#define RETRY_ON_NETWORK_ERROR  (1u << 0)
#define RETRY_ON_TIMEOUT        (1u << 1)
#define RETRY_ON_5XX            (1u << 2)
#define RETRY_ON_4XX            (1u << 3)

enum cfg_recovery { RECOVERY_IMMEDIATE = 0, RECOVERY_GRADUAL };
enum cfg_fallback_mode { FALLBACK_SEQUENTIAL = 0, FALLBACK_PARALLEL };
enum cfg_session_store { STORE_MEMORY = 0, STORE_REDIS };
enum cfg_when_full { WHEN_FULL_REJECT = 0, WHEN_FULL_QUEUE };

enum cfg_notify_type {
    NOTIFY_WEBHOOK = 0,     /* generic JSON POST */
    NOTIFY_SLACK,           /* Slack incoming-webhook payload */
    NOTIFY_COMMAND,         /* fork+exec, alert JSON on stdin */
    NOTIFY_EMAIL            /* SMTP via libcurl */
};

/* hosts[].auth: the upstream API key as a Bearer token or as x-api-key. */
enum cfg_host_auth { HOST_AUTH_BEARER = 0, HOST_AUTH_X_API_KEY };

struct cfg_strlist {
    char   **v;
    size_t   n;
};

struct cfg_label {
    char *name;
    char *value;
};

struct cfg_host {
    char   *name;            /* unique; bare Gaia name, URL's host:port, or "name" */
    char   *url;             /* base URL, no trailing slash */
    int     weight;          /* >= 1 */
    int     priority;        /* lower is preferred */
    struct cfg_strlist models;
    struct cfg_strlist containers;
    int     max_concurrent;  /* 0 = unlimited */
    char   *region;          /* NULL when unset */
    char   *address;         /* NULL when unset; echoed in X-Provider-Address */
    char   *keys;            /* key pool name, NULL = keys without a pool */
    struct cfg_label *labels;
    size_t  nlabels;
    enum cfg_host_auth auth; /* how its API key is sent */
    struct cfg_strlist apis; /* endpoint families it serves; empty = all */
    unsigned apis_mask;      /* 1 << enum api_family of each; ~0 = all */
    struct {                 /* https:// upstreams */
        char *ca_file;       /* NULL = the system CA store; resolved path */
        int   verify;        /* 0: certificate not checked (labs only) */
        char *server_name;   /* NULL = the URL's host */
    } tls;
};

/* limits.on_store_failure (sessions.store: redis) */
enum { LIMITS_FAIL_LOCAL = 0, LIMITS_FAIL_OPEN, LIMITS_FAIL_CLOSED };

/* policies.yaml clients[]: a client key with its name, models and limits.
 * The key itself is kept only as its SHA-256. admin.client_keys become
 * clients named "client_keys[N]" without limits. */
struct cfg_client {
    char    *name;
    char     key_sha256[65];             /* lowercase hex; "" = no key */
    char    *cert_subject;               /* client certificate subject (RFC 2253), or NULL */
    struct cfg_strlist models;           /* empty = any model ("*") */
    struct limits_cfg limits;
    int      has_limits;                 /* else the `default` entry's */
};

struct cfg_key {
    char   *secret;          /* the key itself: never log or print it */
    char   *id;              /* stable hash of the secret (16 hex), for state */
    char   *fingerprint;     /* "sk-…wxyz", safe to show */
    char   *description;     /* "" when unset */
    int     active;          /* isActive */
    char   *pool;            /* NULL = default pool */
    struct cfg_strlist hosts;/* empty = any host of its pool */
    int     weight;          /* >= 1 */
};

struct cfg_model_group {
    char  *name;             /* alias or group name */
    struct cfg_strlist models;  /* one entry for a plain alias */
};

struct cfg_fallback_step {
    char  *model;            /* NULL = keep the request's model */
    struct cfg_strlist hosts;/* empty = any host serving the model */
    int64_t timeout_ms;      /* 0 = retry.per_try_timeout */
};

struct cfg_fallback_chain {
    char  *match;            /* model or alias this chain applies to, "*" = any */
    enum cfg_fallback_mode mode;
    int    race;             /* parallel: race the first N steps */
    int    stop_on_success;
    int64_t timeout_ms;      /* whole chain; 0 = retry.deadline */
    struct cfg_fallback_step *steps;
    size_t nsteps;
};

struct cfg_notify {
    enum cfg_notify_type type;
    char   *url;             /* webhook, slack */
    struct cfg_strlist argv; /* command */
    char   *smtp_url;        /* email */
    char   *from;
    struct cfg_strlist to;
    char   *username;
    char   *password;        /* secret: never print */
    int64_t timeout_ms;
};

#define CFG_MAX_LISTENERS      4
#define CFG_TLS_EXPIRY_WARN_S  (14 * 86400)   /* -t and reloads warn below this */

/* One address the server listens on (server.listen). */
struct cfg_listener {
    char   *address;         /* "ADDR:PORT" */
    int     tls;             /* serves TLS (server.tls) */
};

/* server.tls: the listener's certificate; see tls.h. */
struct cfg_tls {
    char   *cert;            /* PEM, chain allowed; NULL = no TLS */
    char   *key;             /* PEM private key: never log its content */
    char   *client_ca;       /* NULL = no client certificates asked */
    char   *ciphers;         /* TLS 1.2 cipher list, NULL = OpenSSL's */
    char   *ciphersuites;    /* TLS 1.3 suites, NULL = OpenSSL's */
    int     min_version;     /* 12 or 13 */
};

struct tls_ctx;

struct config {
    int      refcnt;         /* owned by config_ref/config_unref */
    uint64_t generation;     /* set by whoever installs the snapshot */
    char    *dir;            /* the -c directory */

    struct cfg_host *hosts;
    size_t   nhosts;
    struct cfg_key  *keys;
    size_t   nkeys;

    struct {
        char    *listen;             /* "ADDR:PORT": the first listener's */
        struct cfg_listener *listeners;  /* server.listen, one or more */
        size_t   nlisteners;
        struct cfg_tls tls;          /* paths resolved against the -c directory */
        struct tls_ctx *tls_ctx;     /* built and checked from tls; NULL without */
        int      workers;
        int      busy_polling;       /* the worker loops poll, never sleep */
        size_t   max_body_bytes;
        size_t   max_header_bytes;
        int64_t  client_timeout_ms;
        int64_t  drain_timeout_ms;
        char    *log_file;           /* NULL = stderr */
        enum cfg_log_level  log_level;
        enum cfg_log_format log_format;
        char    *access_log;         /* NULL = off, "-" = stdout */
        enum cfg_log_format access_log_format;
        struct cfg_strlist resolver; /* nameservers; empty = /etc/resolv.conf's */
        int      resolver_libc;      /* "libc": names through curl's getaddrinfo */
        int64_t  resolver_timeout_ms;
        int64_t  resolver_min_ttl_ms, resolver_max_ttl_ms, resolver_negative_ttl_ms;
    } server;

    struct {
        enum cfg_strategy strategy;
        char    *hosts_template;     /* contains "{name}" */
        char    *prefer_region;      /* NULL when unset */
        enum cfg_affinity sticky;
        char    *sticky_header;      /* when sticky == AFF_HEADER */
        enum cfg_affinity hash_key;  /* consistent-hash input: USER or HEADER */
        char    *hash_header;
        enum cfg_when_full when_full;
        int64_t  queue_timeout_ms;
        struct cfg_strlist passthrough;  /* path prefixes proxied as they are */
        int64_t  latency_decay_ms;   /* latency strategy: Peak-EWMA decay */
    } routing;

    struct cfg_model_group *models;  /* models: section */
    size_t   nmodels;

    struct {
        int      max_attempts;
        enum cfg_backoff backoff;
        int64_t  backoff_initial_ms;
        int64_t  backoff_max_ms;
        enum cfg_jitter jitter;
        unsigned on;                 /* RETRY_ON_* bits */
        int     *on_codes;           /* explicit statuses, e.g. 429, 404 */
        size_t   non_codes;
        int      respect_retry_after;
        int64_t  per_try_timeout_ms;
        int64_t  deadline_ms;
        int64_t  stream_idle_timeout_ms; /* longest gap between reads of an answer; 0 = off */
        int64_t  response_timeout_ms;    /* longest answer, send to last byte; 0 = off */
        double   budget_ratio;
        int64_t  budget_window_ms;
        int      budget_min_retries;
        char    *no_retry_header;    /* a request carrying it is tried once */
    } retry;

    struct {
        int      enabled;
        int      failure_threshold;
        int      window_size;
        int      minimum_requests;
        double   error_rate;
        int64_t  slow_call_latency_ms;   /* 0 = off */
        double   slow_call_rate;
        int64_t  timeout_ms;             /* 0 = off */
        int64_t  reset_timeout_ms;
        int      half_open_requests;
        enum cfg_recovery recovery;
        int64_t  recovery_duration_ms;
        double   recovery_step;
    } breaker;

    struct {
        struct cfg_fallback_chain *chains;
        size_t   nchains;
    } fallback;

    struct {
        int      enabled;
        int64_t  interval_ms;
        int64_t  timeout_ms;
        char    *path;
        int      healthy_threshold;
        int      unhealthy_threshold;
        int      discover_models;
        int      passive;
        int64_t  ejection_base_ms;   /* passive ejection n lasts base x n */
        int64_t  ejection_max_ms;    /* ... capped at this */
        double   panic_threshold;    /* usable share of a tier; 0 = off */
    } health;

    struct {                             /* the response cache (cache.h) */
        int      enabled;
        enum cfg_session_store store;    /* redis: through the sessions connection */
        int64_t  ttl_ms;
        size_t   max_bytes;
        size_t   max_entry_bytes;
        struct cfg_strlist routes;       /* API family names; empty: the default */
        unsigned routes_mask;            /* 1 << api_family, from routes */
        int      only_deterministic;     /* temperature 0 or a seed */
        int      per_client;             /* the client's name is in the key */
    } cache;

    struct {
        enum cfg_session_store store;
        int64_t  ttl_ms;
        int      max_entries;
        int      keep_content;           /* keep chat answers' text for /v1/verify */
        int64_t  content_ttl_ms;
        int      content_max_bytes;      /* of the JSON-encoded text */
        int      content_max_entries;
        char    *redis_url;
        char    *redis_prefix;
        int64_t  redis_timeout_ms;
        char    *redis_username;         /* NULL: none (or in the url) */
        char    *redis_password;         /* secret; NULL: none (or in the url) */
        struct cfg_strlist redis_sentinels;  /* "host:port"; empty: no Sentinel */
        char    *redis_master_name;      /* with sentinels */
        char    *redis_sentinel_password;    /* secret; NULL: sentinels without AUTH */
    } sessions;

    struct {
        int64_t  window_ms;
        int64_t  for_ms;
        double   availability;           /* < 0 = rule off */
        double   error_rate;             /* < 0 = rule off */
        int64_t  latency_p99_ms;         /* 0 = rule off */
        struct cfg_notify *notify;
        size_t   nnotify;
    } alerts;

    struct {
        int      include_in_stream;      /* add stream_options.include_usage */
    } usage;

    struct cfg_client *clients;          /* empty = /v1 open (or client_keys) */
    size_t   nclients;
    size_t   nclient_certs;              /* clients with a cert_subject */
    struct {
        int64_t  window_ms;              /* rpm/tpm window (scaled) */
        int      default_max_tokens;     /* reservation without max_tokens */
        int      on_store_failure;       /* LIMITS_FAIL_*: Redis down or slow */
    } limits;

    struct {
        char    *token;                  /* NULL = admin endpoints disabled */
        struct cfg_strlist client_keys;  /* secrets; empty = /v1 open */
    } admin;
};

/* Problems found while loading, each already formatted as
 * "FILE:LINE:COL: json.path: message" (LINE:COL omitted when unknown). */
struct cfg_errors {
    char   **msg;
    size_t   n;
};

/*
 * Loads and validates the three files in `dir`. On success returns a new
 * snapshot with refcnt 1. On any problem returns NULL and appends every
 * problem found (not only the first) to `errs`, which the caller frees with
 * cfg_errors_free(). hosts.json is required; api-keys.json and
 * policies.yaml are optional (missing = no keys / all defaults).
 */
struct config *config_load(const char *dir, struct cfg_errors *errs);

void config_ref(struct config *c);
void config_unref(struct config *c);   /* frees at zero */

void cfg_errors_free(struct cfg_errors *e);

/* Small helpers shared by the modules that keep string lists and tables. */
void     cfg_strlist_free(struct cfg_strlist *l);      /* empties l */
int      cfg_strlist_has(const struct cfg_strlist *l, const char *s);
uint64_t config_hash(const char *s);                   /* FNV-1a, 64 bits */

/* Lookups used on the request path. */
const struct cfg_host *config_host_by_name(const struct config *c, const char *name);
const struct cfg_model_group *config_model_group(const struct config *c, const char *name);
int config_host_serves(const struct cfg_host *h, const char *model);  /* 1 if no models listed */
/* 1 when h serves endpoint family f (route.h; families beyond the listable
 * ones: always), i.e. its `apis` is empty or names f. */
int config_host_serves_api(const struct cfg_host *h, int f);
int config_key_usable(const struct cfg_key *k, const struct cfg_host *h);

/* Names for enum values, as written in the files ("round-robin", ...). */
const char *config_strategy_name(enum cfg_strategy s);

/* Parses "250ms", "2s", "5m", "1h" or a bare number of seconds into ms.
 * Returns -1 on a malformed value. Sizes: "64KB", "1MB", "1GB" or bytes. */
int64_t config_parse_duration(const char *s);
int64_t config_parse_size(const char *s);

/*
 * The checks the loader cannot make itself. server.tls and sessions.redis
 * are understood by modules above config/ (tls.c reads the certificate,
 * key and client CA; session_redis.c parses the Redis URL and options, the
 * same code for -t and at run time). Those modules are not called from here:
 * config_check.c (app/) hands their functions to the loader once, before
 * the first config_load(). A hook left NULL is a check not made (and no
 * server.tls_ctx built).
 */
struct config_hooks {
    /* sessions.redis.url: NULL when fine, else a message (no password) */
    const char *(*redis_url_problem)(const char *url);
    /* sessions.redis as a whole: NULL when fine, else a message and *key
     * the dotted key it is about (NULL: the section) */
    const char *(*redis_problem)(const struct config *c, const char **key);
    /* server.tls: the context, or NULL and a message in err, either
     * "server.tls.KEY: problem" or one that names the file */
    struct tls_ctx *(*tls_new)(const struct cfg_tls *t, int64_t now, char *err, size_t errlen);
    void (*tls_free)(struct tls_ctx *x);
};
void config_hooks_set(const struct config_hooks *h);   /* copies *h */

#endif
