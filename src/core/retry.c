/*
 * retry.c -- retry policy arithmetic (see retry.h).
 *
 * Owns the backoff formulas and their jitter, the Retry-After parser, the
 * outcome classification table and the retry budget. Pure: time and
 * randomness are arguments, so the unit tests need no clock and no sleep.
 * The proxy owns the loop that uses them (which host, which key, deadline,
 * first byte already sent).
 *
 * Dates are converted with Howard Hinnant's days-from-civil arithmetic
 * rather than timegm()/strptime(): no locale, no TZ, same answer anywhere.
 */
#include <ctype.h>
#include <stddef.h>
#include <string.h>
#include <strings.h>

#include "lock.h"
#include "retry.h"

#define MS_PER_S            1000
#define S_PER_MIN           60
#define S_PER_HOUR          3600
#define S_PER_DAY           86400
/* A delta-seconds larger than this is taken as this (no overflow in ms). */
#define RETRY_AFTER_MAX_S   (INT64_MAX / MS_PER_S)
#define RATIO_EPSILON       1e-9

#define STATUS_CLASS        100
#define STATUS_4XX          4
#define STATUS_5XX          5
#define HTTP_UNAUTHORIZED       401
#define HTTP_PAYMENT_REQUIRED   402
#define HTTP_FORBIDDEN          403
#define HTTP_TOO_MANY_REQUESTS  429

/* xorshift64* (Vigna, "An experimental exploration of Marsaglia's xorshift
 * generators"): shifts 12, 25, 27 and this multiplier. */
#define XORSHIFT_A          12
#define XORSHIFT_B          25
#define XORSHIFT_C          27
#define XORSHIFT_MULT       UINT64_C(0x2545F4914F6CDD1D)
#define XORSHIFT_SEED       UINT64_C(0x9E3779B97F4A7C15)

/* ---- parameters ---------------------------------------------------------- */

void retry_params_add_code(struct retry_params *p, int status)
{
    int bit;

    if (status < RETRY_CODE_MIN || status > RETRY_CODE_MAX)
        return;
    bit = status - RETRY_CODE_MIN;
    p->on_codes[bit / RETRY_CODE_WORD_BITS] |= (uint64_t)1 << (bit % RETRY_CODE_WORD_BITS);
}

static int code_listed(const struct retry_params *p, int status)
{
    int bit;

    if (status < RETRY_CODE_MIN || status > RETRY_CODE_MAX)
        return 0;
    bit = status - RETRY_CODE_MIN;
    return (int)((p->on_codes[bit / RETRY_CODE_WORD_BITS] >> (bit % RETRY_CODE_WORD_BITS)) & 1u);
}

void retry_params_from_config(const struct config *c, struct retry_params *p)
{
    size_t i;

    memset(p, 0, sizeof(*p));
    p->max_attempts = c->retry.max_attempts;
    p->backoff = c->retry.backoff;
    p->initial_ms = c->retry.backoff_initial_ms;
    p->max_ms = c->retry.backoff_max_ms;
    p->jitter = c->retry.jitter;
    p->on = c->retry.on;
    for (i = 0; i < c->retry.non_codes; i++)
        retry_params_add_code(p, c->retry.on_codes[i]);
    p->respect_retry_after = c->retry.respect_retry_after;
    p->budget_ratio = c->retry.budget_ratio;
    p->budget_window_ms = c->retry.budget_window_ms;
    p->budget_min_retries = c->retry.budget_min_retries;
}

/* ---- randomness ---------------------------------------------------------- */

uint64_t retry_rand(uint64_t *state)
{
    uint64_t x = *state ? *state : XORSHIFT_SEED;

    x ^= x >> XORSHIFT_A;
    x ^= x << XORSHIFT_B;
    x ^= x >> XORSHIFT_C;
    *state = x;
    return x * XORSHIFT_MULT;
}

/* ---- delays -------------------------------------------------------------- */

/* The un-jittered delay, capped at max (max >= 0). */
static int64_t backoff_base(const struct retry_params *p, int retry, int64_t max)
{
    int64_t d = p->initial_ms > 0 ? p->initial_ms : 0;
    int i;

    if (d >= max)
        return max;
    switch (p->backoff) {
    case BACKOFF_EXPONENTIAL:
        for (i = 1; i < retry && d < max; i++)
            d = d > max / 2 ? max : d * 2;
        break;
    case BACKOFF_LINEAR:
        d = d > 0 && retry > max / d ? max : d * retry;
        break;
    case BACKOFF_FIXED:
        break;
    }
    return d < max ? d : max;
}

/* Uniform in [lo, hi] from rnd (modulo bias is irrelevant at these sizes). */
static int64_t uniform(int64_t lo, int64_t hi, uint64_t rnd)
{
    return lo + (int64_t)(rnd % ((uint64_t)(hi - lo) + 1));
}

int64_t retry_backoff_ms(const struct retry_params *p, int retry, uint64_t rnd)
{
    int64_t max = p->max_ms > 0 ? p->max_ms : 0;
    int64_t d;

    if (retry < 1)
        retry = 1;
    d = backoff_base(p, retry, max);
    switch (p->jitter) {
    case JITTER_FULL:
        return uniform(0, d, rnd);
    case JITTER_EQUAL:
        return uniform(d / 2, d, rnd);
    case JITTER_NONE:
        break;
    }
    return d;
}

int64_t retry_delay_ms(const struct retry_params *p, int retry, uint64_t rnd,
                       int64_t retry_after_ms)
{
    int64_t max = p->max_ms > 0 ? p->max_ms : 0;

    if (p->respect_retry_after && retry_after_ms >= 0)
        return retry_after_ms < max ? retry_after_ms : max;
    return retry_backoff_ms(p, retry, rnd);
}

/* ---- Retry-After --------------------------------------------------------- */

#define MONTHS_PER_YEAR     12
#define DAYS_PER_WEEK       7
#define MAX_HOUR            23
#define MAX_MINUTE          59
#define MAX_SECOND          60          /* a leap second is allowed */
#define RFC850_CENTURY      100
#define RFC850_FUTURE_YEARS 50          /* RFC 9110 5.6.7 */

/* Hinnant's civil calendar constants: 400-year eras from 0000-03-01. */
#define DAYS_PER_ERA        146097
#define YEARS_PER_ERA       400
#define EPOCH_SHIFT_DAYS    719468      /* 0000-03-01 to 1970-01-01 */

static const char *const month_names[MONTHS_PER_YEAR] = {
    "Jan", "Feb", "Mar", "Apr", "May", "Jun",
    "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"
};
static const char *const day_names[DAYS_PER_WEEK] = {
    "Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"
};
static const char *const day_names_long[DAYS_PER_WEEK] = {
    "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"
};

static int64_t days_from_civil(int64_t y, int m, int d)
{
    int64_t era, yoe, doy, doe;

    y -= m <= 2;
    era = (y >= 0 ? y : y - (YEARS_PER_ERA - 1)) / YEARS_PER_ERA;
    yoe = y - era * YEARS_PER_ERA;
    doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * DAYS_PER_ERA + doe - EPOCH_SHIFT_DAYS;
}

static int64_t year_from_days(int64_t z)
{
    int64_t era, doe, yoe, doy, mp;

    z += EPOCH_SHIFT_DAYS;
    era = (z >= 0 ? z : z - (DAYS_PER_ERA - 1)) / DAYS_PER_ERA;
    doe = z - era * DAYS_PER_ERA;
    yoe = (doe - doe / 1460 + doe / 36524 - doe / (DAYS_PER_ERA - 1)) / 365;
    doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    mp = (5 * doy + 2) / 153;
    return yoe + era * YEARS_PER_ERA + (mp >= 10);    /* Jan, Feb: next year */
}

static int is_leap(int64_t y)
{
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

static int days_in_month(int64_t y, int m)
{
    static const int days[MONTHS_PER_YEAR] = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };

    return m == 2 && is_leap(y) ? days[1] + 1 : days[m - 1];
}

/* Exactly `n` digits at *s; advances past them. */
static int take_digits(const char **s, int n, int *out)
{
    int v = 0, i;

    for (i = 0; i < n; i++) {
        if (!isdigit((unsigned char)(*s)[i]))
            return -1;
        v = v * 10 + ((*s)[i] - '0');
    }
    *s += n;
    *out = v;
    return 0;
}

static int take_char(const char **s, char c)
{
    if (**s != c)
        return -1;
    (*s)++;
    return 0;
}

/* A run of letters equal (ignoring case) to one of `names`: its index. */
static int take_name(const char **s, const char *const *names, int count)
{
    size_t len = 0;
    int i;

    while (isalpha((unsigned char)(*s)[len]))
        len++;
    for (i = 0; i < count; i++) {
        if (strlen(names[i]) == len && strncasecmp(*s, names[i], len) == 0) {
            *s += len;
            return i;
        }
    }
    return -1;
}

static int take_weekday(const char **s)
{
    if (take_name(s, day_names, DAYS_PER_WEEK) >= 0)
        return 0;
    return take_name(s, day_names_long, DAYS_PER_WEEK) >= 0 ? 0 : -1;
}

/* "HH:MM:SS" */
static int take_time(const char **s, int *h, int *mi, int *sec)
{
    if (take_digits(s, 2, h) < 0 || take_char(s, ':') < 0 ||
        take_digits(s, 2, mi) < 0 || take_char(s, ':') < 0 ||
        take_digits(s, 2, sec) < 0)
        return -1;
    if (*h > MAX_HOUR || *mi > MAX_MINUTE || *sec > MAX_SECOND)
        return -1;
    return 0;
}

struct http_date {
    int64_t year;
    int     month;                  /* 1..12 */
    int     day, hour, min, sec;
};

/* "06 Nov 1994 08:49:37 GMT" (after "Sun, ") */
static int parse_imf(const char *s, struct http_date *d)
{
    int y;

    if (take_digits(&s, 2, &d->day) < 0 || take_char(&s, ' ') < 0 ||
        (d->month = take_name(&s, month_names, MONTHS_PER_YEAR) + 1) < 1 ||
        take_char(&s, ' ') < 0 || take_digits(&s, 4, &y) < 0 || take_char(&s, ' ') < 0 ||
        take_time(&s, &d->hour, &d->min, &d->sec) < 0 || take_char(&s, ' ') < 0 ||
        strcasecmp(s, "GMT") != 0)
        return -1;
    d->year = y;
    return 0;
}

/* "06-Nov-94 08:49:37 GMT" (after "Sunday, "); two-digit year per RFC 9110:
 * more than 50 years in the future means the century before. */
static int parse_rfc850(const char *s, struct http_date *d, int64_t now_unix_s)
{
    int64_t now_year = year_from_days(now_unix_s / S_PER_DAY);
    int yy;

    if (take_digits(&s, 2, &d->day) < 0 || take_char(&s, '-') < 0 ||
        (d->month = take_name(&s, month_names, MONTHS_PER_YEAR) + 1) < 1 ||
        take_char(&s, '-') < 0 || take_digits(&s, 2, &yy) < 0 || take_char(&s, ' ') < 0 ||
        take_time(&s, &d->hour, &d->min, &d->sec) < 0 || take_char(&s, ' ') < 0 ||
        strcasecmp(s, "GMT") != 0)
        return -1;
    d->year = now_year - now_year % RFC850_CENTURY + yy;
    if (d->year > now_year + RFC850_FUTURE_YEARS)
        d->year -= RFC850_CENTURY;
    return 0;
}

/* "Nov  6 08:49:37 1994" (after "Sun ") */
static int parse_asctime(const char *s, struct http_date *d)
{
    int y;

    if ((d->month = take_name(&s, month_names, MONTHS_PER_YEAR) + 1) < 1 ||
        take_char(&s, ' ') < 0)
        return -1;
    if (*s == ' ') {
        s++;
        if (take_digits(&s, 1, &d->day) < 0)
            return -1;
    } else if (take_digits(&s, 2, &d->day) < 0) {
        return -1;
    }
    if (take_char(&s, ' ') < 0 || take_time(&s, &d->hour, &d->min, &d->sec) < 0 ||
        take_char(&s, ' ') < 0 || take_digits(&s, 4, &y) < 0 || *s != '\0')
        return -1;
    d->year = y;
    return 0;
}

/* An HTTP-date (trimmed, NUL-terminated) as unix seconds, or -1. */
static int parse_http_date(const char *s, int64_t now_unix_s, int64_t *out)
{
    struct http_date d;
    int rc;

    memset(&d, 0, sizeof(d));
    if (take_weekday(&s) < 0)
        return -1;
    if (s[0] == ',' && s[1] == ' ') {
        s += 2;
        rc = s[0] && s[1] && s[2] == '-' ? parse_rfc850(s, &d, now_unix_s) : parse_imf(s, &d);
    } else if (s[0] == ' ') {
        rc = parse_asctime(s + 1, &d);
    } else {
        rc = -1;
    }
    if (rc < 0 || d.day < 1 || d.day > days_in_month(d.year, d.month))
        return -1;
    *out = days_from_civil(d.year, d.month, d.day) * S_PER_DAY +
           d.hour * S_PER_HOUR + d.min * S_PER_MIN + d.sec;
    return 0;
}

static int is_ows(char c)
{
    return c == ' ' || c == '\t';
}

/* delta-seconds: 1*DIGIT, saturating. */
static int parse_delta(const char *s, size_t len, int64_t *out)
{
    int64_t v = 0;
    size_t i;

    if (len == 0)
        return -1;
    for (i = 0; i < len; i++) {
        if (!isdigit((unsigned char)s[i]))
            return -1;
        if (v < RETRY_AFTER_MAX_S)
            v = v * 10 + (s[i] - '0');
        if (v > RETRY_AFTER_MAX_S)
            v = RETRY_AFTER_MAX_S;
    }
    *out = v;
    return 0;
}

/* The longest HTTP-date, RFC 850 with "Wednesday", has 33 characters. */
#define HTTP_DATE_MAX       40

int64_t retry_after_parse(const char *value, int64_t now_unix_s)
{
    char buf[HTTP_DATE_MAX + 1];
    int64_t secs, when;
    size_t len;

    if (!value)
        return -1;
    while (is_ows(*value))
        value++;
    len = strlen(value);
    while (len > 0 && is_ows(value[len - 1]))
        len--;
    if (len == 0)
        return -1;

    if (isdigit((unsigned char)value[0])) {
        if (parse_delta(value, len, &secs) < 0)
            return -1;
        return secs * MS_PER_S;
    }

    if (len > HTTP_DATE_MAX)
        return -1;
    memcpy(buf, value, len);
    buf[len] = '\0';
    if (parse_http_date(buf, now_unix_s, &when) < 0)
        return -1;
    if (when <= now_unix_s)
        return 0;
    if (when - now_unix_s > RETRY_AFTER_MAX_S)
        return RETRY_AFTER_MAX_S * MS_PER_S;
    return (when - now_unix_s) * MS_PER_S;
}

/* ---- outcomes ------------------------------------------------------------ */

static enum retry_key_action key_action(int status)
{
    switch (status) {
    case HTTP_UNAUTHORIZED:
    case HTTP_FORBIDDEN:
        return RETRY_KEY_DISABLE;
    case HTTP_PAYMENT_REQUIRED:
    case HTTP_TOO_MANY_REQUESTS:
        return RETRY_KEY_COOLDOWN;
    default:
        return RETRY_KEY_KEEP;
    }
}

struct retry_verdict retry_classify(const struct retry_params *p,
                                    const struct retry_outcome *o)
{
    struct retry_verdict v;
    int cls;

    memset(&v, 0, sizeof(v));
    switch (o->fault) {
    case RETRY_FAULT_NETWORK:
        v.host_failure = 1;
        v.retryable = (p->on & RETRY_ON_NETWORK_ERROR) != 0;
        return v;
    case RETRY_FAULT_TIMEOUT:
        v.host_failure = 1;
        v.retryable = (p->on & RETRY_ON_TIMEOUT) != 0;
        return v;
    case RETRY_FAULT_NONE:
        break;
    }

    cls = o->status / STATUS_CLASS;
    if (cls == STATUS_5XX) {
        v.host_failure = 1;
        v.retryable = (p->on & RETRY_ON_5XX) != 0 || code_listed(p, o->status);
        return v;
    }
    if (cls != STATUS_4XX)
        return v;                   /* 1xx..3xx: nothing to retry */

    v.retryable = (p->on & RETRY_ON_4XX) != 0 || code_listed(p, o->status);
    if (o->with_key) {
        v.key = key_action(o->status);
        if (v.key != RETRY_KEY_KEEP)
            v.retryable = 1;
    }
    return v;
}

/* ---- budget -------------------------------------------------------------- */

static void budget_reset(struct retry_budget *b)
{
    memset(b->requests, 0, sizeof(b->requests));
    memset(b->retries, 0, sizeof(b->retries));
    b->nrequests = 0;
    b->nretries = 0;
    b->started = 0;
    b->newest = 0;
}

static void budget_params(struct retry_budget *b, const struct retry_params *p)
{
    b->ratio = p->budget_ratio > 0 ? p->budget_ratio : 0;
    b->min_retries = p->budget_min_retries > 0 ? p->budget_min_retries : 0;
    b->window_ms = p->budget_window_ms;
    b->bucket_ms = p->budget_window_ms / RETRY_BUDGET_BUCKETS;
    if (b->bucket_ms < 1)
        b->bucket_ms = 1;
}

void retry_budget_init(struct retry_budget *b, const struct retry_params *p)
{
    memset(b, 0, sizeof(*b));
    budget_params(b, p);
}

void retry_budget_set_params(struct retry_budget *b, const struct retry_params *p)
{
    int64_t old_bucket = b->bucket_ms;

    lock_assert_held();
    budget_params(b, p);
    if (b->bucket_ms != old_bucket)
        budget_reset(b);
}

static int bucket_index(int64_t bucket)
{
    int64_t i = bucket % RETRY_BUDGET_BUCKETS;

    return (int)(i < 0 ? i + RETRY_BUDGET_BUCKETS : i);
}

/* Moves the window to `now_ms`, dropping buckets that fell out of it. A
 * clock that went backwards counts into the newest bucket. */
static int budget_slot(struct retry_budget *b, int64_t now_ms)
{
    int64_t at = now_ms / b->bucket_ms;
    int64_t k;

    if (!b->started) {
        b->started = 1;
        b->newest = at;
    }
    if (at > b->newest) {
        int64_t gap = at - b->newest;

        if (gap >= RETRY_BUDGET_BUCKETS) {
            budget_reset(b);
            b->started = 1;
        } else {
            for (k = 1; k <= gap; k++) {
                int i = bucket_index(b->newest + k);

                b->nrequests -= b->requests[i];
                b->nretries -= b->retries[i];
                b->requests[i] = 0;
                b->retries[i] = 0;
            }
        }
        b->newest = at;
    }
    return bucket_index(b->newest);
}

void retry_budget_note_request(struct retry_budget *b, int64_t now_ms)
{
    int i = budget_slot(b, now_ms);

    lock_assert_held();
    b->requests[i]++;
    b->nrequests++;
}

int retry_budget_try_spend(struct retry_budget *b, int64_t now_ms)
{
    int i = budget_slot(b, now_ms);
    double allowed = b->min_retries + b->ratio * (double)b->nrequests + RATIO_EPSILON;

    lock_assert_held();
    if ((double)(b->nretries + 1) > allowed) {
        b->denied++;
        return 0;
    }
    b->retries[i]++;
    b->nretries++;
    return 1;
}
