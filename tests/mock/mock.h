/*
 * mock.h -- shared state of infergate-mock, the fake OpenAI-compatible
 * upstream that the e2e tests, `make demo` and `make bench` run against.
 *
 * One process is one upstream "host": one thread, one event base, one
 * global `mock` (in the manner of Redis's `server`). The files split it by
 * concern:
 *   mock.c        command line, listening socket, signals, dispatch, replies
 *   mock_state.c  the knobs (command line + /_mock/config) and the counters
 *                 (/_mock/stats), i.e. everything under /_mock/
 *   mock_api.c    the OpenAI endpoints, /info, faults, SSE streams and the
 *                 requests parked on a timer
 * See README.md next to this file for the flags and the control API.
 */
#ifndef INFERGATE_MOCK_H
#define INFERGATE_MOCK_H

#include <stddef.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <jansson.h>

#define MOCK_NAME_MAX      64
#define MOCK_MAP_MAX       10000   /* distinct keys per stats map */
#define MOCK_VERIFY_WINDOW 1000000 /* /v1/verify knows the last N ids */

/* Behaviour knobs: set by the command line, changed by POST /_mock/config. */
struct mock_conf {
    int status;              /* != 200: API calls answer this status */
    int retry_after;         /* seconds; 0 = no Retry-After on errors */
    int delay_ms;            /* wait before the response headers */
    int chunks;              /* SSE data chunks per stream */
    int chunk_interval_ms;   /* pause between two SSE chunks */
    int content_bytes;       /* 0 = "Hello from NAME"; N = padded to N bytes */
    int event_bytes;         /* 0 = "tokI "; N = a chat stream event's delta padded by N */
    int close_after_chunks;  /* 0 = off; K = drop a stream after K chunks */
    int stall_after_chunks;  /* 0 = off; K = a stream goes silent after K chunks */
    int stall_body;          /* an answer goes silent after its head (stream) or
                              * half its body (JSON) */
    int partial_bytes;       /* with a close or stall after K chunks: the first
                              * N bytes of the next event go out before it */
    int hang;                /* never answer API calls */
    int garbage;             /* API calls get 200 with a non-JSON body */
    int drop;                /* API calls get the connection closed, no answer */
    int pending;             /* /info pending.offchain */
    int fail_next;           /* 0 = faults always apply; N = next N calls only */
    int probe_status;        /* status of /v1/models, /info, /api/info */
    int probe_delay_ms;      /* delay of the same */
    int strict_models;       /* a model not in `models` gets 404 */
    int close_connection;    /* answers say Connection: close (no reuse) */
    json_t *models;          /* array of strings */
    json_t *containers;      /* array of strings */
    json_t *fail_keys;       /* object: bearer token -> status */
    json_t *fail_models;     /* object: request model -> status */
};

/* A growable byte buffer that is reused, so recording costs no malloc. */
struct mock_buf {
    char  *p;
    size_t len, cap;
};

/* What /_mock/stats reports; reset by /_mock/reset. */
struct mock_stats {
    long long requests;          /* requests under /v1/, /v1/models included */
    long long streams_completed; /* SSE streams that sent [DONE] */
    long long disconnects;       /* clients gone before their answer ended */
    long long drops;             /* connections closed on purpose */
    long long stalls;            /* answers left unfinished on purpose */
    json_t *paths;               /* path -> n, every path outside /_mock/ */
    json_t *keys;                /* bearer token -> n, API calls */
    json_t *models;              /* body "model" -> n, API calls */
    json_t *statuses;            /* "200" -> n, answers sent */
    struct mock_buf last_path;
    struct mock_buf last_headers; /* "name\0value\0" pairs, names lowercased */
    struct mock_buf last_body;
    int have_last;
};

struct mock {
    struct event_base *base;
    struct evhttp     *http;
    void              *tls;          /* SSL_CTX with --tls-cert, else NULL */
    json_t *tls_snis;                /* object: SNI name ("" = none) -> handshakes */
    char   name[MOCK_NAME_MAX];
    int    quiet;                /* nothing on stderr but fatal errors */
    int    verbose;              /* one stderr line per answer */
    struct mock_conf boot;       /* command-line values, for /_mock/reset */
    struct mock_conf conf;       /* current values */
    struct mock_stats stats;
    long   in_flight;            /* requests accepted and not yet answered */
    unsigned long long seq;      /* number in the last id issued */
    char  *models_body;          /* prebuilt GET /v1/models answer */
    char  *info_body;            /* prebuilt GET /info answer */
    struct evbuffer *scratch;    /* reused to build SSE chunks */
};

extern struct mock mock;

/* mock.c: replies. The body is already in the request's output buffer. */
void mock_reply(struct evhttp_request *req, int code, const char *ctype);
void mock_add_json_str(struct evbuffer *b, const char *s);
void mock_add_error(struct evbuffer *b, const char *msg, const char *type,
                    const char *code);
void mock_notice(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* mock_state.c */
void mock_conf_defaults(struct mock_conf *c);
int  mock_conf_copy(struct mock_conf *dst, const struct mock_conf *src);
void mock_conf_free(struct mock_conf *c);
int  mock_conf_set_list(json_t **list, const char *csv);
int  mock_conf_add_fail_key(struct mock_conf *c, const char *spec);
int  mock_state_init(void);      /* after boot is set: conf, stats, bodies */
void mock_state_free(void);
void mock_count(json_t *map, const char *key);
void mock_count_status(int code);
void mock_record_call(struct evhttp_request *req, const char *path,
                      const char *key, const char *model,
                      const char *body, size_t len);
void mock_control(struct evhttp_request *req, const char *path);

/* mock_api.c */
void mock_api(struct evhttp_request *req, const char *path);
void mock_api_shutdown(void);    /* forget parked requests before evhttp_free */

/* TLS handshakes completed since start, and how many of them resumed a
 * session (0 without --tls-cert). */
long long mock_tls_handshakes(long long *resumed);

#endif
