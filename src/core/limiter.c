/*
 * limiter.c -- a client's limits, pure (see limiter.h).
 */
#include "limiter.h"

int64_t limits_per_window(int64_t per_minute, int64_t window_ms)
{
    int64_t n;

    if (per_minute <= 0)
        return 0;
    if (window_ms <= 0)
        window_ms = 60000;
    n = per_minute * window_ms / 60000;
    return n > 0 ? n : 1;
}

/* Howard Hinnant's civil_from_days. */
void limits_calendar(int64_t unix_ms, int64_t *day, int64_t *month)
{
    int64_t z, era, doe, yoe, y, doy, mp, m;

    z = unix_ms >= 0 ? unix_ms / 86400000 : -((-unix_ms + 86399999) / 86400000);
    *day = z;
    z += 719468;
    era = (z >= 0 ? z : z - 146096) / 146097;
    doe = z - era * 146097;
    yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    y = yoe + era * 400;
    doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    mp = (5 * doy + 2) / 153;
    m = mp < 10 ? mp + 3 : mp - 9;
    if (m <= 2)
        y++;
    *month = y * 12 + m - 1;
}

/* Moves the state to the current window, day and month. */
static void roll(struct limits_state *s, int64_t now_ms, int64_t window_ms)
{
    int64_t w = now_ms / (window_ms > 0 ? window_ms : 60000), d, m;

    if (w != s->win) {
        s->win = w;
        s->win_req = s->win_tok = 0;
    }
    limits_calendar(now_ms, &d, &m);
    if (d != s->day) {
        s->day = d;
        s->day_in = s->day_out = 0;
    }
    if (m != s->month) {
        s->month = m;
        s->month_in = s->month_out = 0;
    }
}

static int64_t left(int64_t limit, int64_t used)
{
    return used >= limit ? 0 : limit - used;
}

int64_t limits_day_left(const struct limits_cfg *c, const struct limits_state *s, int64_t now_ms)
{
    int64_t d, m;

    if (c->tokens_per_day <= 0)
        return -1;
    limits_calendar(now_ms, &d, &m);
    return d != s->day ? c->tokens_per_day : left(c->tokens_per_day, s->day_in + s->day_out);
}

int64_t limits_month_left(const struct limits_cfg *c, const struct limits_state *s, int64_t now_ms)
{
    int64_t d, m;

    if (c->tokens_per_month <= 0)
        return -1;
    limits_calendar(now_ms, &d, &m);
    return m != s->month ? c->tokens_per_month
                         : left(c->tokens_per_month, s->month_in + s->month_out);
}

static void view_of(const struct limits_cfg *c, const struct limits_state *s,
                    int64_t now_ms, int64_t window_ms, struct limits_view *v)
{
    if (window_ms <= 0)
        window_ms = 60000;
    v->req_limit = limits_per_window(c->rpm, window_ms);
    v->tok_limit = limits_per_window(c->tpm, window_ms);
    v->req_remaining = v->req_limit ? left(v->req_limit, s->win_req) : 0;
    v->tok_remaining = v->tok_limit ? left(v->tok_limit, s->win_tok) : 0;
    v->reset_ms = (s->win + 1) * window_ms - now_ms;
    if (v->reset_ms < 0)
        v->reset_ms = 0;
    v->retry_after_s = (v->reset_ms + 999) / 1000;
    if (v->retry_after_s < 1)
        v->retry_after_s = 1;
}

enum limits_verdict limits_admit(const struct limits_cfg *c, struct limits_state *s,
                                 int64_t now_ms, int64_t window_ms,
                                 int64_t reserve, int64_t reserve_in,
                                 struct limits_ticket *t, struct limits_view *v)
{
    enum limits_verdict r = LIMITS_OK;
    int64_t rl, tl;

    if (window_ms <= 0)
        window_ms = 60000;
    if (reserve < 0)
        reserve = 0;
    roll(s, now_ms, window_ms);
    rl = limits_per_window(c->rpm, window_ms);
    tl = limits_per_window(c->tpm, window_ms);
    if (c->tokens_per_month > 0 && s->month_in + s->month_out >= c->tokens_per_month)
        r = LIMITS_MONTH;
    else if (c->tokens_per_day > 0 && s->day_in + s->day_out >= c->tokens_per_day)
        r = LIMITS_DAY;
    else if (rl && s->win_req >= rl)
        r = LIMITS_RPM;
    else if (tl && s->win_tok > 0 && s->win_tok + reserve > tl)
        r = LIMITS_TPM;
    else if (c->max_concurrent > 0 && s->inflight >= c->max_concurrent)
        r = LIMITS_CONCURRENT;
    if (r == LIMITS_OK) {
        s->win_req++;
        s->win_tok += reserve;
        s->inflight++;
        s->requests++;
        t->win = s->win;
        t->reserved = reserve;
        t->reserved_in = reserve_in < reserve ? reserve_in : reserve;
    } else {
        s->limited++;
    }
    view_of(c, s, now_ms, window_ms, v);
    if (r == LIMITS_CONCURRENT)
        v->retry_after_s = 1;
    else if (r == LIMITS_DAY || r == LIMITS_MONTH) {
        int64_t d, m;
        limits_calendar(now_ms, &d, &m);
        v->retry_after_s = ((d + 1) * 86400000 - now_ms + 999) / 1000;
    }
    return r;
}

void limits_peek(const struct limits_cfg *c, struct limits_state *s, int64_t now_ms,
                 int64_t window_ms, struct limits_view *v)
{
    if (window_ms <= 0)
        window_ms = 60000;
    roll(s, now_ms, window_ms);
    view_of(c, s, now_ms, window_ms, v);
}

void limits_settle(struct limits_state *s, const struct limits_ticket *t,
                   int64_t now_ms, int64_t window_ms, int64_t in, int64_t out)
{
    if (window_ms <= 0)
        window_ms = 60000;
    if (in < 0)
        in = 0;
    if (out < 0)
        out = 0;
    roll(s, now_ms, window_ms);
    if (t->win == s->win) {
        s->win_tok += in + out - t->reserved;
        if (s->win_tok < 0)
            s->win_tok = 0;
    }
    s->day_in += in;
    s->day_out += out;
    s->month_in += in;
    s->month_out += out;
    if (s->inflight > 0)
        s->inflight--;
}

const char *limits_verdict_name(enum limits_verdict v)
{
    switch (v) {
    case LIMITS_OK:         return "ok";
    case LIMITS_RPM:        return "rpm";
    case LIMITS_TPM:        return "tpm";
    case LIMITS_CONCURRENT: return "max_concurrent";
    case LIMITS_DAY:        return "tokens_per_day";
    case LIMITS_MONTH:      return "tokens_per_month";
    }
    return "?";
}
