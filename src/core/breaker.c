/*
 * breaker.c -- circuit breaker state machine (see breaker.h).
 *
 * Owns the closed/open/half-open transitions, the outcome window and the
 * gradual-recovery ramp of one upstream. Pure: time comes in as `now_ms`,
 * nothing here reads a clock, logs or blocks, so the unit tests drive it
 * with made-up times.
 *
 * The window is two rings of bits (failed, slow) with running counts, so
 * recording an outcome and checking the rates is O(1) and a window of
 * 100000 outcomes costs 25 KB.
 *
 * open -> half-open happens lazily, on the first mutating call at or after
 * opened_at + reset_timeout; breaker_state() reports it without mutating.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "breaker.h"
#include "lock.h"

#define BITS_PER_WORD   64
/* Slack for comparing a count with rate * total in floating point. */
#define RATE_EPSILON    1e-9
#define SHARE_FULL      1.0
#define SHARE_NONE      0.0

/* ---- the window ---------------------------------------------------------- */

static size_t window_words(int size)
{
    return ((size_t)size + BITS_PER_WORD - 1) / BITS_PER_WORD;
}

static int bit_get(const uint64_t *bits, int i)
{
    return (int)((bits[i / BITS_PER_WORD] >> (i % BITS_PER_WORD)) & 1u);
}

static void bit_put(uint64_t *bits, int i, int v)
{
    uint64_t mask = (uint64_t)1 << (i % BITS_PER_WORD);

    if (v)
        bits[i / BITS_PER_WORD] |= mask;
    else
        bits[i / BITS_PER_WORD] &= ~mask;
}

static int window_alloc(struct breaker_window *w, int size)
{
    memset(w, 0, sizeof(*w));
    w->fail = calloc(window_words(size), sizeof(uint64_t));
    w->slow = calloc(window_words(size), sizeof(uint64_t));
    if (!w->fail || !w->slow) {
        free(w->fail);
        free(w->slow);
        memset(w, 0, sizeof(*w));
        return -1;
    }
    w->size = size;
    return 0;
}

static void window_release(struct breaker_window *w)
{
    free(w->fail);
    free(w->slow);
    memset(w, 0, sizeof(*w));
}

static void window_clear(struct breaker_window *w)
{
    memset(w->fail, 0, window_words(w->size) * sizeof(uint64_t));
    memset(w->slow, 0, window_words(w->size) * sizeof(uint64_t));
    w->head = 0;
    w->count = 0;
    w->nfail = 0;
    w->nslow = 0;
}

static void window_push(struct breaker_window *w, int failed, int slow)
{
    if (w->count == w->size) {          /* evict the oldest, at head */
        w->nfail -= bit_get(w->fail, w->head);
        w->nslow -= bit_get(w->slow, w->head);
    } else {
        w->count++;
    }
    bit_put(w->fail, w->head, failed);
    bit_put(w->slow, w->head, slow);
    w->nfail += failed;
    w->nslow += slow;
    w->head = (w->head + 1) % w->size;
}

/* Copies the newest outcomes of `from` (as many as fit) into empty `to`. */
static void window_copy_newest(struct breaker_window *to, const struct breaker_window *from)
{
    int keep = from->count < to->size ? from->count : to->size;
    int start = (from->head - keep + from->size) % from->size;
    int i;

    for (i = 0; i < keep; i++) {
        int at = (start + i) % from->size;
        window_push(to, bit_get(from->fail, at), bit_get(from->slow, at));
    }
}

/* ---- parameters ---------------------------------------------------------- */

void breaker_params_from_config(const struct config *c, struct breaker_params *p)
{
    memset(p, 0, sizeof(*p));
    p->enabled = c->breaker.enabled;
    p->failure_threshold = c->breaker.failure_threshold;
    p->window_size = c->breaker.window_size;
    p->minimum_requests = c->breaker.minimum_requests;
    p->error_rate = c->breaker.error_rate;
    p->slow_call_latency_ms = c->breaker.slow_call_latency_ms;
    p->slow_call_rate = c->breaker.slow_call_rate;
    p->timeout_ms = c->breaker.timeout_ms;
    p->reset_timeout_ms = c->breaker.reset_timeout_ms;
    p->half_open_requests = c->breaker.half_open_requests;
    p->recovery = c->breaker.recovery;
    p->recovery_duration_ms = c->breaker.recovery_duration_ms;
    p->recovery_step = c->breaker.recovery_step;
}

/* The params as used: out-of-range counts pulled into range. */
static void params_sanitize(struct breaker_params *p)
{
    if (p->window_size < 1)
        p->window_size = 1;
    if (p->minimum_requests < 1)
        p->minimum_requests = 1;
    if (p->half_open_requests < 1)
        p->half_open_requests = 1;
}

/* ---- transitions --------------------------------------------------------- */

static void to_open(struct breaker *b, int64_t now_ms)
{
    b->state = BREAKER_OPEN;
    b->epoch++;
    b->opened_at = now_ms;
    b->ramping = 0;
    b->consecutive = 0;
    b->probes_in_flight = 0;
    b->probe_successes = 0;
    b->opens++;
    window_clear(&b->win);
}

static void to_half_open(struct breaker *b)
{
    b->state = BREAKER_HALF_OPEN;
    b->epoch++;
    b->probes_in_flight = 0;
    b->probe_successes = 0;
}

static void to_closed(struct breaker *b, int64_t now_ms)
{
    b->state = BREAKER_CLOSED;
    b->epoch++;
    b->closed_at = now_ms;
    b->ramping = b->p.recovery == RECOVERY_GRADUAL;
    b->consecutive = 0;
    b->probes_in_flight = 0;
    b->probe_successes = 0;
    window_clear(&b->win);
}

static int open_expired(const struct breaker *b, int64_t now_ms)
{
    return now_ms - b->opened_at >= b->p.reset_timeout_ms;
}

/* Applies the time-driven transition, open -> half-open. */
static void advance(struct breaker *b, int64_t now_ms)
{
    if (b->state == BREAKER_OPEN && open_expired(b, now_ms))
        to_half_open(b);
}

static int rate_reached(int n, int total, double rate)
{
    return n > 0 && (double)n + RATE_EPSILON >= rate * (double)total;
}

static int should_trip(const struct breaker *b)
{
    const struct breaker_params *p = &b->p;
    const struct breaker_window *w = &b->win;
    int needed = p->minimum_requests < w->size ? p->minimum_requests : w->size;

    if (p->failure_threshold > 0 && b->consecutive >= p->failure_threshold)
        return 1;
    if (w->count < needed)
        return 0;
    if (p->error_rate > 0 && rate_reached(w->nfail, w->count, p->error_rate))
        return 1;
    if (p->slow_call_latency_ms > 0 && rate_reached(w->nslow, w->count, p->slow_call_rate))
        return 1;
    return 0;
}

/* ---- API ----------------------------------------------------------------- */

int breaker_init(struct breaker *b, const struct breaker_params *p)
{
    memset(b, 0, sizeof(*b));
    b->p = *p;
    params_sanitize(&b->p);
    if (window_alloc(&b->win, b->p.window_size) < 0)
        return -1;
    b->state = BREAKER_CLOSED;
    return 0;
}

void breaker_free(struct breaker *b)
{
    window_release(&b->win);
}

int breaker_set_params(struct breaker *b, const struct breaker_params *p)
{
    struct breaker_params np = *p;

    lock_assert_held();
    params_sanitize(&np);
    if (np.window_size != b->win.size) {
        struct breaker_window nw;

        if (window_alloc(&nw, np.window_size) < 0)
            return -1;
        window_copy_newest(&nw, &b->win);
        window_release(&b->win);
        b->win = nw;
    }
    b->p = np;
    if (!np.enabled && b->state != BREAKER_CLOSED) {
        b->state = BREAKER_CLOSED;
        b->epoch++;
        b->ramping = 0;
        b->consecutive = 0;
        b->probes_in_flight = 0;
        b->probe_successes = 0;
        window_clear(&b->win);
    }
    if (!np.enabled || np.recovery != RECOVERY_GRADUAL)
        b->ramping = 0;
    return 0;
}

int breaker_allow(struct breaker *b, int64_t now_ms, struct breaker_ticket *t)
{
    lock_assert_held();
    advance(b, now_ms);
    t->epoch = b->epoch;
    if (!b->p.enabled)
        return 1;

    switch (b->state) {
    case BREAKER_CLOSED:
        return 1;
    case BREAKER_OPEN:
        return 0;
    case BREAKER_HALF_OPEN:
        if (b->probes_in_flight + b->probe_successes >= b->p.half_open_requests)
            return 0;
        b->probes_in_flight++;
        return 1;
    }
    return 0;
}

enum breaker_state breaker_record(struct breaker *b, struct breaker_ticket t,
                                  int success, int64_t latency_ms, int64_t now_ms)
{
    const struct breaker_params *p = &b->p;
    int failed, slow;

    lock_assert_held();
    advance(b, now_ms);
    if (!p->enabled || t.epoch != b->epoch)
        return b->state;            /* disabled, or admitted before a change */

    failed = !success || (p->timeout_ms > 0 && latency_ms > p->timeout_ms);
    slow = p->slow_call_latency_ms > 0 && latency_ms >= p->slow_call_latency_ms;

    switch (b->state) {
    case BREAKER_CLOSED:
        window_push(&b->win, failed, slow);
        b->consecutive = failed ? b->consecutive + 1 : 0;
        if (should_trip(b))
            to_open(b, now_ms);
        break;
    case BREAKER_HALF_OPEN:
        if (b->probes_in_flight > 0)
            b->probes_in_flight--;
        if (failed)
            to_open(b, now_ms);
        else if (++b->probe_successes >= p->half_open_requests)
            to_closed(b, now_ms);
        break;
    case BREAKER_OPEN:
        break;                      /* no ticket is ever issued while open */
    }
    return b->state;
}

void breaker_release(struct breaker *b, struct breaker_ticket t)
{
    lock_assert_held();
    if (!b->p.enabled || t.epoch != b->epoch)
        return;
    if (b->state == BREAKER_HALF_OPEN && b->probes_in_flight > 0)
        b->probes_in_flight--;
}

enum breaker_state breaker_state(const struct breaker *b, int64_t now_ms)
{
    lock_assert_held();
    if (!b->p.enabled)
        return BREAKER_CLOSED;
    if (b->state == BREAKER_OPEN && open_expired(b, now_ms))
        return BREAKER_HALF_OPEN;
    return b->state;
}

const char *breaker_state_name(enum breaker_state s)
{
    switch (s) {
    case BREAKER_CLOSED:    return "closed";
    case BREAKER_OPEN:      return "open";
    case BREAKER_HALF_OPEN: return "half-open";
    }
    return "unknown";
}

int64_t breaker_open_until(const struct breaker *b)
{
    lock_assert_held();
    if (!b->p.enabled || b->state != BREAKER_OPEN)
        return 0;
    return b->opened_at + b->p.reset_timeout_ms;
}

/*
 * The ramp: levels step, 2*step, ... below 1.0, each held for an equal part
 * of the duration, then 1.0 from closed_at + duration on. With step 0.25
 * and 90 s: 0.25 for 30 s, 0.5 for 30 s, 0.75 for 30 s, then 1.0.
 */
static double ramp_share(const struct breaker_params *p, int64_t elapsed_ms)
{
    double step = p->recovery_step;
    double levels, level;

    if (step <= 0 || step >= SHARE_FULL || p->recovery_duration_ms <= 0)
        return SHARE_FULL;
    if (elapsed_ms >= p->recovery_duration_ms)
        return SHARE_FULL;
    if (elapsed_ms < 0)
        elapsed_ms = 0;
    levels = ceil(SHARE_FULL / step - RATE_EPSILON) - 1;   /* below 1.0 */
    level = floor((double)elapsed_ms * levels / (double)p->recovery_duration_ms);
    return step * (level + 1) < SHARE_FULL ? step * (level + 1) : SHARE_FULL;
}

double breaker_share(const struct breaker *b, int64_t now_ms)
{
    const struct breaker_params *p = &b->p;

    lock_assert_held();
    if (!p->enabled)
        return SHARE_FULL;
    switch (breaker_state(b, now_ms)) {
    case BREAKER_OPEN:
        return SHARE_NONE;
    case BREAKER_HALF_OPEN:
        return p->recovery == RECOVERY_GRADUAL ? ramp_share(p, 0) : SHARE_FULL;
    case BREAKER_CLOSED:
        break;
    }
    if (!b->ramping)
        return SHARE_FULL;
    return ramp_share(p, now_ms - b->closed_at);
}
