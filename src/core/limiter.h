/*
 * limiter.h -- a client's limits (limits_*): requests and tokens per
 * window, requests in flight, token budgets per UTC day and month. Named
 * limiter, not limits, so it never stands in for the C library's
 * <limits.h> (GCC's #include_next searches the -iquote folders too).
 *
 * Fixed windows aligned on multiples of the window length since the Unix
 * epoch (so replicas agree on them). A request is admitted when its
 * client has room: fewer than the window's request count, tokens used in
 * the window below its token count (a request that alone exceeds the
 * count is admitted into an empty window: it could never pass otherwise),
 * fewer requests in flight than max_concurrent, and budget left today and
 * this month. Admission reserves the request's estimated tokens in its
 * window; settling replaces the reservation by what was really used (in
 * the window it was admitted in, if that window is still current) and
 * charges the day and month.
 *
 * Pure: time is passed in (Unix milliseconds); no I/O, no locks (the
 * caller holds the state lock).
 */
#ifndef INFERGATE_LIMITS_H
#define INFERGATE_LIMITS_H

#include <stdint.h>

/* 0 = no such limit. rpm and tpm are per minute: a window of window_ms
 * allows rpm * window_ms / 60000 (at least 1). */
struct limits_cfg {
    int64_t rpm, tpm, max_concurrent, tokens_per_day, tokens_per_month;
};

struct limits_state {
    int64_t win;                 /* window index: unix_ms / window_ms */
    int64_t win_req, win_tok;    /* requests, tokens (reserved + used) in it */
    int64_t inflight;
    int64_t day, month;          /* day index since the epoch; year*12+month-1 */
    int64_t day_in, day_out, month_in, month_out;
    uint64_t requests, limited;  /* admitted, refused by a limit: since start */
};

enum limits_verdict {
    LIMITS_OK = 0,
    LIMITS_RPM, LIMITS_TPM, LIMITS_CONCURRENT,   /* 429 rate_limit_exceeded */
    LIMITS_DAY, LIMITS_MONTH                      /* 429 insufficient_quota */
};

/* What the x-ratelimit-* headers say after a decision. limit 0 = none. */
struct limits_view {
    int64_t req_limit, req_remaining;
    int64_t tok_limit, tok_remaining;
    int64_t reset_ms;            /* until the window ends */
    int64_t retry_after_s;       /* when refused */
};

/* A reservation: what settle must undo. */
struct limits_ticket {
    int64_t win, reserved, reserved_in;
};

/* Per window counts of rpm/tpm for a window of window_ms. */
int64_t limits_per_window(int64_t per_minute, int64_t window_ms);

/* Days since the epoch and year*12+month-1 of a Unix time (UTC). */
void limits_calendar(int64_t unix_ms, int64_t *day, int64_t *month);

/* Admits or refuses one request reserving `reserve` tokens (`reserve_in`
 * of them its input). On LIMITS_OK the state holds the reservation and *t
 * what settle needs. *v is always filled. */
enum limits_verdict limits_admit(const struct limits_cfg *c, struct limits_state *s,
                                 int64_t now_ms, int64_t window_ms,
                                 int64_t reserve, int64_t reserve_in,
                                 struct limits_ticket *t, struct limits_view *v);

/* *v as it stands now, without admitting anything (for the headers of
 * an answer that refused the request before its limits were asked). */
void limits_peek(const struct limits_cfg *c, struct limits_state *s, int64_t now_ms,
                 int64_t window_ms, struct limits_view *v);

/* The request ended having used in + out tokens: the reservation is
 * replaced by them, the day and month charged, the request leaves the
 * in-flight count. */
void limits_settle(struct limits_state *s, const struct limits_ticket *t,
                   int64_t now_ms, int64_t window_ms, int64_t in, int64_t out);

/* Budget left today / this month (-1 = no such limit). */
int64_t limits_day_left(const struct limits_cfg *c, const struct limits_state *s, int64_t now_ms);
int64_t limits_month_left(const struct limits_cfg *c, const struct limits_state *s, int64_t now_ms);

/* The verdict's name: "rpm", "tpm", "max_concurrent", "tokens_per_day", ... */
const char *limits_verdict_name(enum limits_verdict v);

#endif
