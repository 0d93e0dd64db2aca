/*
 * retry.h -- retry policy arithmetic: backoff delays, Retry-After, which
 * outcomes are retryable (and what they mean for the key), retry budget.
 *
 * Pure: no clock, no I/O, no global random state. Time comes in as
 * arguments (`now_ms` on any monotonic millisecond clock for the budget,
 * unix seconds for Retry-After dates); randomness comes in as a uint64
 * value, which retry_rand() can make from a caller-held seed.
 *
 * Numbering: attempt 1 is the first try; retry n (n >= 1) is attempt n + 1,
 * and retry_backoff_ms(p, n, ...) is the pause before it.
 */
#ifndef INFERGATE_RETRY_H
#define INFERGATE_RETRY_H

#include <stdint.h>

#include "config.h"

/* Explicit statuses of retry.on are 400..599, kept as a bitmap. */
#define RETRY_CODE_MIN      400
#define RETRY_CODE_MAX      599
#define RETRY_CODE_WORD_BITS 64
#define RETRY_CODE_WORDS    ((RETRY_CODE_MAX - RETRY_CODE_MIN + RETRY_CODE_WORD_BITS) / \
                             RETRY_CODE_WORD_BITS)

/* The budget's window is this many buckets: a retry or request counts for
 * between window*(1 - 1/RETRY_BUDGET_BUCKETS) and window milliseconds. */
#define RETRY_BUDGET_BUCKETS 10

/* The retry section of struct config, self-contained (no pointers). */
struct retry_params {
    int      max_attempts;          /* total, the first included */
    enum cfg_backoff backoff;       /* exponential | linear | fixed */
    int64_t  initial_ms;
    int64_t  max_ms;
    enum cfg_jitter jitter;         /* full | equal | none */
    unsigned on;                    /* RETRY_ON_* bits */
    uint64_t on_codes[RETRY_CODE_WORDS];    /* bit (status - RETRY_CODE_MIN) */
    int      respect_retry_after;
    double   budget_ratio;          /* retries per request over the window */
    int64_t  budget_window_ms;
    int      budget_min_retries;    /* allowed per window on top of the ratio */
};

/* Fills `p` from the retry section of `c` (codes outside 400..599 are
 * dropped; config validation does not let them through). */
void retry_params_from_config(const struct config *c, struct retry_params *p);

/* Adds one explicit status to p->on_codes (ignored outside 400..599). */
void retry_params_add_code(struct retry_params *p, int status);

/* ---- randomness ---------------------------------------------------------- */

/* xorshift64*: next pseudo-random value from `*state` (a zero state is
 * replaced by a fixed non-zero seed). Good enough for jitter; not crypto. */
uint64_t retry_rand(uint64_t *state);

/* ---- delays -------------------------------------------------------------- */

/*
 * The pause before retry `retry` (1 = the first retry):
 *   exponential  initial * 2^(retry-1)      linear  initial * retry
 *   fixed        initial
 * capped at max_ms, then jittered with `rnd`:
 *   none  the capped value d;  full  uniform in [0, d];
 *   equal uniform in [d/2, d] (d/2 rounded down).
 * Never negative, never above max_ms.
 */
int64_t retry_backoff_ms(const struct retry_params *p, int retry, uint64_t rnd);

/*
 * Parses a Retry-After header value: delta-seconds ("120") or an HTTP-date
 * in any of the three forms of RFC 9110 (IMF-fixdate "Sun, 06 Nov 1994
 * 08:49:37 GMT", RFC 850 "Sunday, 06-Nov-94 08:49:37 GMT", asctime
 * "Sun Nov  6 08:49:37 1994"), relative to `now_unix_s`. Returns the delay
 * in milliseconds (0 for a date in the past), or -1 for NULL, empty or
 * malformed values. Not capped: key cooldowns use the full value;
 * retry_delay_ms() caps it for retries.
 */
int64_t retry_after_parse(const char *value, int64_t now_unix_s);

/*
 * The pause before retry `retry`: when respect_retry_after is set and
 * `retry_after_ms` >= 0 (from retry_after_parse; pass -1 when there was
 * none, or when the retry goes to another host and key), the Retry-After
 * value capped at max_ms; otherwise retry_backoff_ms().
 */
int64_t retry_delay_ms(const struct retry_params *p, int retry, uint64_t rnd,
                       int64_t retry_after_ms);

/* ---- outcomes ------------------------------------------------------------ */

enum retry_fault {
    RETRY_FAULT_NONE = 0,           /* an HTTP response came: see status */
    RETRY_FAULT_NETWORK,            /* connect/DNS/TLS/reset before a response */
    RETRY_FAULT_TIMEOUT             /* per-try timeout (connect + first byte) */
};

struct retry_outcome {
    enum retry_fault fault;
    int      status;                /* HTTP status when fault == NONE */
    int      with_key;              /* a gateway API key was sent */
};

enum retry_key_action {
    RETRY_KEY_KEEP = 0,
    RETRY_KEY_DISABLE,              /* 401, 403: disable until reload */
    RETRY_KEY_COOLDOWN              /* 429, 402: cool down (Retry-After) */
};

struct retry_verdict {
    int      retryable;             /* another attempt may fix it */
    int      host_failure;          /* counts against the host (breaker,
                                       passive health): network, timeout, 5xx */
    enum retry_key_action key;      /* only when with_key */
};

/*
 * Classifies one attempt's outcome. Retryable: a network error or timeout
 * when `on` has the token; a status whose class (5xx, 4xx) is in `on` or
 * that is listed explicitly; and, whatever `on` says, a key-related status
 * (401/402/403/429) when a key was sent, since the retry goes with another
 * key. 1xx-3xx are never retryable and never failures.
 */
struct retry_verdict retry_classify(const struct retry_params *p,
                                    const struct retry_outcome *o);

/* ---- budget -------------------------------------------------------------- */

/*
 * Retries allowed over the last budget_window_ms:
 *   budget_min_retries + floor(budget_ratio * requests in the window).
 * Call retry_budget_note_request() once per client request (not per
 * attempt) and retry_budget_try_spend() before each retry.
 */
struct retry_budget {
    double   ratio;
    int64_t  window_ms;
    int      min_retries;
    int64_t  bucket_ms;             /* window_ms / RETRY_BUDGET_BUCKETS, >= 1 */
    int64_t  newest;                /* bucket number (now / bucket_ms) of the newest */
    int      started;
    uint32_t requests[RETRY_BUDGET_BUCKETS];
    uint32_t retries[RETRY_BUDGET_BUCKETS];
    uint64_t nrequests;             /* sums over the window */
    uint64_t nretries;
    uint64_t denied;                /* retries refused since init (metric) */
};

/* The gateway's budget is shared by the workers: retry_budget_set_params,
 * retry_budget_note_request and retry_budget_try_spend: caller holds the
 * state lock (lock.h; checked by lock_assert_held() in the asan and tsan
 * builds). */
void retry_budget_init(struct retry_budget *b, const struct retry_params *p);

/* New parameters (config reload). Counts are kept if the window length is
 * unchanged, and start over otherwise. */
void retry_budget_set_params(struct retry_budget *b, const struct retry_params *p);

void retry_budget_note_request(struct retry_budget *b, int64_t now_ms);

/* Returns 1 and counts the retry when the budget allows one, 0 when it is
 * exhausted (and counts the refusal in b->denied). */
int  retry_budget_try_spend(struct retry_budget *b, int64_t now_ms);

#endif
