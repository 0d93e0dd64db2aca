/*
 * clients.c -- client keys as tenants: lookup, models, counters kept by
 * name (see clients.h).
 */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/buffer.h>
#include <openssl/sha.h>

#include "clients.h"
#include "hash.h"
#include "http.h"
#include "lock.h"
#include "session.h"

#define CL_BUCKETS 1024

struct cl_entry {
    struct cl_entry    *next;
    char               *name;
    struct limits_state st;
    uint64_t            tok_in, tok_out;   /* since start, for /metrics */
    /* the replicas' totals, as Redis last answered an admission */
    int64_t             sh_day, sh_day_used, sh_month, sh_month_used;
    int                 shared;
};

static struct cl_entry *table[CL_BUCKETS];

/* The counters of a client name, created at first use (NULL: no memory). */
static struct cl_entry *cl_get(const char *name, int create)
{
    size_t b = hash_str(name) % CL_BUCKETS;
    struct cl_entry *e;

    for (e = table[b]; e; e = e->next)
        if (strcmp(e->name, name) == 0)
            return e;
    if (!create || (e = calloc(1, sizeof(*e))) == NULL)
        return NULL;
    if ((e->name = strdup(name)) == NULL) {
        free(e);
        return NULL;
    }
    e->next = table[b];
    table[b] = e;
    return e;
}

const char *clients_bearer(const struct http_req *req)
{
    const char *a = http_req_known(req, HTTP_H_AUTHORIZATION);

    if (a == NULL && (a = http_req_known(req, HTTP_H_X_API_KEY)) != NULL)
        return *a ? a : NULL;       /* Anthropic's clients send their key so */
    if (a == NULL || strncasecmp(a, "Bearer ", 7) != 0)
        return NULL;
    a += 7;
    while (*a == ' ')
        a++;
    return *a ? a : NULL;
}

const struct cfg_client *clients_find(const struct config *c, const char *tok)
{
    unsigned char md[SHA256_DIGEST_LENGTH];
    char hex[65];
    size_t i;

    if (tok == NULL || c->nclients == 0)
        return NULL;
    SHA256((const unsigned char *)tok, strlen(tok), md);
    for (i = 0; i < SHA256_DIGEST_LENGTH; i++) {
        hex[2 * i] = "0123456789abcdef"[md[i] >> 4];
        hex[2 * i + 1] = "0123456789abcdef"[md[i] & 15];
    }
    hex[64] = '\0';
    /* Digests, not keys, are compared: timing tells nothing of a key. */
    for (i = 0; i < c->nclients; i++)
        if (memcmp(c->clients[i].key_sha256, hex, 64) == 0)
            return &c->clients[i];
    return NULL;
}

const struct cfg_client *clients_of_req(const struct config *c, const struct http_req *req)
{
    const char *tok = clients_bearer(req);
    char subject[256];
    size_t i;

    if (tok || c->nclient_certs == 0)
        return clients_find(c, tok);
    if (!http_req_tls_subject(req, subject, sizeof(subject)))
        return NULL;
    for (i = 0; i < c->nclients; i++)
        if (c->clients[i].cert_subject && strcmp(c->clients[i].cert_subject, subject) == 0)
            return &c->clients[i];
    return NULL;
}

int clients_model_allowed(const struct config *c, const struct cfg_client *cl,
                          const char *model)
{
    size_t i, j, k;

    if (cl->models.n == 0)
        return 1;
    for (i = 0; i < cl->models.n; i++) {
        const char *m = cl->models.v[i];
        if (strcmp(m, "*") == 0)
            return 1;
        if (model == NULL)
            continue;
        if (strcmp(m, model) == 0)
            return 1;
        /* an alias allowed allows the models it stands for */
        for (j = 0; j < c->nmodels; j++) {
            if (strcmp(c->models[j].name, m) != 0)
                continue;
            for (k = 0; k < c->models[j].models.n; k++)
                if (strcmp(c->models[j].models.v[k], model) == 0)
                    return 1;
        }
    }
    return 0;
}

enum limits_verdict clients_admit(const struct config *c, const struct cfg_client *cl,
                                  int64_t now_unix_ms, int64_t reserve, int64_t reserve_in,
                                  struct limits_ticket *t, struct limits_view *v)
{
    struct cl_entry *e = cl_get(cl->name, 1);
    struct limits_state tmp;

    lock_assert_held();
    if (e == NULL) {                /* out of memory: admitted, not counted */
        memset(&tmp, 0, sizeof(tmp));
        return limits_admit(&cl->limits, &tmp, now_unix_ms, c->limits.window_ms,
                            reserve, reserve_in, t, v);
    }
    return limits_admit(&cl->limits, &e->st, now_unix_ms, c->limits.window_ms,
                        reserve, reserve_in, t, v);
}

void clients_view(const struct config *c, const struct cfg_client *cl, int64_t now_unix_ms,
                  struct limits_view *v)
{
    struct cl_entry *e = cl_get(cl->name, 1);
    struct limits_state tmp;

    lock_assert_held();
    memset(&tmp, 0, sizeof(tmp));
    limits_peek(&cl->limits, e ? &e->st : &tmp, now_unix_ms, c->limits.window_ms, v);
}

void clients_settle(const char *name, const struct limits_ticket *t, int64_t window_ms,
                    int64_t now_unix_ms, int64_t in, int64_t out)
{
    struct cl_entry *e = cl_get(name, 0);

    lock_assert_held();
    if (e == NULL)
        return;
    limits_settle(&e->st, t, now_unix_ms, window_ms, in, out);
    e->tok_in += (uint64_t)(in > 0 ? in : 0);
    e->tok_out += (uint64_t)(out > 0 ? out : 0);
}

void clients_note_refused(const char *name)
{
    struct cl_entry *e = cl_get(name, 1);

    lock_assert_held();
    if (e)
        e->st.limited++;
}

static json_t *budget(int64_t left)
{
    return left < 0 ? json_null() : json_integer(left);
}

json_t *clients_json(const struct config *c, int64_t now_unix_ms)
{
    json_t *a = json_array();
    size_t i;

    lock_assert_held();
    if (a == NULL)
        return NULL;
    for (i = 0; i < c->nclients; i++) {
        const struct cfg_client *cl = &c->clients[i];
        struct cl_entry *e = cl_get(cl->name, 0);
        struct limits_state st;
        int64_t d, m, day_left, month_left;
        json_t *o;

        memset(&st, 0, sizeof(st));
        if (e)
            st = e->st;
        limits_calendar(now_unix_ms, &d, &m);
        if (st.day != d)
            st.day_in = st.day_out = 0;
        if (st.month != m)
            st.month_in = st.month_out = 0;
        day_left = limits_day_left(&cl->limits, &st, now_unix_ms);
        month_left = limits_month_left(&cl->limits, &st, now_unix_ms);
        if (e && e->shared) {      /* the budgets are the replicas' together */
            int64_t used_d = e->sh_day == d ? e->sh_day_used : 0;
            int64_t used_m = e->sh_month == m ? e->sh_month_used : 0;
            if (day_left >= 0)
                day_left = used_d >= cl->limits.tokens_per_day ? 0 : cl->limits.tokens_per_day - used_d;
            if (month_left >= 0)
                month_left = used_m >= cl->limits.tokens_per_month ? 0
                             : cl->limits.tokens_per_month - used_m;
        }
        o = json_pack("{s:s, s:I, s:I, s:I, s:{s:I, s:I}, s:{s:I, s:I}, s:{s:o, s:o},"
                      " s:{s:I, s:I, s:I, s:I, s:I}}",
                      "name", cl->name,
                      "requests", (json_int_t)st.requests,
                      "limited", (json_int_t)st.limited,
                      "in_flight", (json_int_t)st.inflight,
                      "today", "tokens_in", (json_int_t)st.day_in,
                               "tokens_out", (json_int_t)st.day_out,
                      "this_month", "tokens_in", (json_int_t)st.month_in,
                                    "tokens_out", (json_int_t)st.month_out,
                      "remaining", "tokens_today", budget(day_left),
                                   "tokens_this_month", budget(month_left),
                      "limits", "rpm", (json_int_t)cl->limits.rpm,
                                "tpm", (json_int_t)cl->limits.tpm,
                                "max_concurrent", (json_int_t)cl->limits.max_concurrent,
                                "tokens_per_day", (json_int_t)cl->limits.tokens_per_day,
                                "tokens_per_month", (json_int_t)cl->limits.tokens_per_month);
        if (o)
            json_array_append_new(a, o);
    }
    return a;
}

/* A label value: backslash, quote and newline escaped. */
static int put_label(struct evbuffer *out, const char *s)
{
    for (; *s; s++) {
        const char *e = *s == '\\' ? "\\\\" : *s == '"' ? "\\\"" : *s == '\n' ? "\\n" : NULL;
        if ((e ? evbuffer_add(out, e, 2) : evbuffer_add(out, s, 1)) < 0)
            return -1;
    }
    return 0;
}

struct cl_sums {
    uint64_t admitted, limited, in, out;
};

static int put_series(struct evbuffer *out, const char *family, const char *name,
                      const char *label, const char *v1, uint64_t n1,
                      const char *v2, uint64_t n2)
{
    int rc = 0;

    rc |= evbuffer_add_printf(out, "%s{client=\"", family) < 0;
    rc |= put_label(out, name);
    rc |= evbuffer_add_printf(out, "\",%s=\"%s\"} %llu\n", label, v1, (unsigned long long)n1) < 0;
    rc |= evbuffer_add_printf(out, "%s{client=\"", family) < 0;
    rc |= put_label(out, name);
    rc |= evbuffer_add_printf(out, "\",%s=\"%s\"} %llu\n", label, v2, (unsigned long long)n2) < 0;
    return rc ? -1 : 0;
}

int clients_metrics(const struct config *c, struct evbuffer *out)
{
    struct cl_sums *sum;
    size_t i, n = c->nclients < CLIENTS_METRICS_MAX ? c->nclients : CLIENTS_METRICS_MAX;
    int rc = 0, other = c->nclients > CLIENTS_METRICS_MAX;

    lock_assert_held();
    if (c->nclients == 0)
        return 0;
    if ((sum = calloc(n + 1, sizeof(*sum))) == NULL)
        return -1;
    for (i = 0; i < c->nclients; i++) {
        struct cl_entry *e = cl_get(c->clients[i].name, 0);
        struct cl_sums *d = &sum[i < n ? i : n];
        if (e == NULL)
            continue;
        d->admitted += e->st.requests;
        d->limited += e->st.limited;
        d->in += e->tok_in;
        d->out += e->tok_out;
    }
    rc |= evbuffer_add_printf(out, "# HELP infergate_client_requests_total Requests of each client"
                              " (policies.yaml clients; the first %d, then \"other\"), admitted"
                              " or refused by its limits or models.\n"
                              "# TYPE infergate_client_requests_total counter\n",
                              CLIENTS_METRICS_MAX) < 0;
    for (i = 0; i < n + (size_t)other && rc == 0; i++)
        rc |= put_series(out, "infergate_client_requests_total",
                         i < n ? c->clients[i].name : "other", "result",
                         "admitted", sum[i].admitted, "limited", sum[i].limited);
    rc |= evbuffer_add_printf(out, "# HELP infergate_client_tokens_total Tokens charged to each"
                              " client when its requests ended (input, output).\n"
                              "# TYPE infergate_client_tokens_total counter\n") < 0;
    for (i = 0; i < n + (size_t)other && rc == 0; i++)
        rc |= put_series(out, "infergate_client_tokens_total",
                         i < n ? c->clients[i].name : "other", "kind",
                         "input", sum[i].in, "output", sum[i].out);
    free(sum);
    return rc ? -1 : 0;
}

/* --- across replicas -------------------------------------------------- */

/* KEYS: window hash {r, t}, in-flight set (request -> expiry, so a
 * request whose settlement never came leaves it by itself), day total,
 * month total. ARGV: requests and tokens per window, max_concurrent, per
 * day, per month (0 = none), reservation, TTLs (window, in-flight set),
 * now, this request's expiry and its member in the set.
 * Answers "verdict requests tokens day month" (verdict as limiter.h). */
static const char admit_lua[] =
    "local rl,tl,mc,pd,pm,res=tonumber(ARGV[1]),tonumber(ARGV[2]),tonumber(ARGV[3]),"
    "tonumber(ARGV[4]),tonumber(ARGV[5]),tonumber(ARGV[6]) "
    "local req=tonumber(redis.call('HGET',KEYS[1],'r') or '0') "
    "local tok=tonumber(redis.call('HGET',KEYS[1],'t') or '0') "
    "redis.call('ZREMRANGEBYSCORE',KEYS[2],'-inf',ARGV[9]) "
    "local conc=redis.call('ZCARD',KEYS[2]) "
    "local day=tonumber(redis.call('GET',KEYS[3]) or '0') "
    "local mon=tonumber(redis.call('GET',KEYS[4]) or '0') "
    "local v=0 "
    "if pm>0 and mon>=pm then v=5 elseif pd>0 and day>=pd then v=4 "
    "elseif rl>0 and req>=rl then v=1 elseif tl>0 and tok>0 and tok+res>tl then v=2 "
    "elseif mc>0 and conc>=mc then v=3 end "
    "if v==0 then "
    "redis.call('HINCRBY',KEYS[1],'r',1) redis.call('HINCRBY',KEYS[1],'t',res) "
    "redis.call('PEXPIRE',KEYS[1],ARGV[7]) "
    "redis.call('ZADD',KEYS[2],ARGV[10],ARGV[11]) redis.call('PEXPIRE',KEYS[2],ARGV[8]) "
    "req=req+1 tok=tok+res end "
    "return v..' '..req..' '..tok..' '..day..' '..mon";

/* KEYS as above, the window the request was admitted in. ARGV: reserved,
 * used, TTLs of day and month, the request's member of the in-flight set. */
static const char settle_lua[] =
    "local used,rsv=tonumber(ARGV[2]),tonumber(ARGV[1]) "
    "if rsv>=0 and redis.call('EXISTS',KEYS[1])==1 then "
    "local t=redis.call('HINCRBY',KEYS[1],'t',used-rsv) "
    "if t<0 then redis.call('HSET',KEYS[1],'t',0) end end "
    "redis.call('ZREM',KEYS[2],ARGV[5]) "
    "if used>0 then redis.call('INCRBY',KEYS[3],used) redis.call('PEXPIRE',KEYS[3],ARGV[3]) "
    "redis.call('INCRBY',KEYS[4],used) redis.call('PEXPIRE',KEYS[4],ARGV[4]) end "
    "return 'ok'";

#define CL_KEY_MAX 600

static void shared_keys(const char *name, int64_t win, int64_t now_unix_ms,
                        char k[4][CL_KEY_MAX])
{
    int64_t d, m;

    limits_calendar(now_unix_ms, &d, &m);
    snprintf(k[0], CL_KEY_MAX, "limits:%s:w:%lld", name, (long long)win);
    snprintf(k[1], CL_KEY_MAX, "limits:%s:c", name);
    snprintf(k[2], CL_KEY_MAX, "limits:%s:d:%lld", name, (long long)d);
    snprintf(k[3], CL_KEY_MAX, "limits:%s:m:%lld", name, (long long)m);
}

static int64_t window_of(const struct config *c)
{
    return c->limits.window_ms > 0 ? c->limits.window_ms : 60000;
}

struct session_call *clients_admit_shared(struct session *s, const struct config *c,
                                          const struct cfg_client *cl, int64_t now_unix_ms,
                                          int64_t reserve, int64_t reserve_in,
                                          const char *member, struct limits_ticket *t,
                                          clients_shared_cb cb, void *arg)
{
    char k[4][CL_KEY_MAX], a[10][24];
    const char *keys[4] = { k[0], k[1], k[2], k[3] }, *args[11];
    int64_t life = c->retry.deadline_ms + 60000;
    int64_t w = window_of(c);
    int i;

    lock_assert_held();
    t->win = now_unix_ms / w;
    t->reserved = reserve;
    t->reserved_in = reserve_in < reserve ? reserve_in : reserve;
    shared_keys(cl->name, t->win, now_unix_ms, k);
    snprintf(a[0], 24, "%lld", (long long)limits_per_window(cl->limits.rpm, w));
    snprintf(a[1], 24, "%lld", (long long)limits_per_window(cl->limits.tpm, w));
    snprintf(a[2], 24, "%lld", (long long)cl->limits.max_concurrent);
    snprintf(a[3], 24, "%lld", (long long)cl->limits.tokens_per_day);
    snprintf(a[4], 24, "%lld", (long long)cl->limits.tokens_per_month);
    snprintf(a[5], 24, "%lld", (long long)reserve);
    snprintf(a[6], 24, "%lld", (long long)(2 * w));
    snprintf(a[7], 24, "%lld", (long long)(2 * life));
    snprintf(a[8], 24, "%lld", (long long)now_unix_ms);
    snprintf(a[9], 24, "%lld", (long long)(now_unix_ms + life));
    for (i = 0; i < 10; i++)
        args[i] = a[i];
    args[10] = member;
    return session_eval(s, admit_lua, 4, keys, 11, args, cb, arg);
}

enum limits_verdict clients_shared_verdict(const struct config *c, const struct cfg_client *cl,
                                           const char *answer, int64_t now_unix_ms,
                                           struct limits_view *v)
{
    long long verdict = 0, req = 0, tok = 0, day = 0, mon = 0;
    struct cl_entry *e = cl_get(cl->name, 1);
    int64_t w = window_of(c), d, m;

    sscanf(answer, "%lld %lld %lld %lld %lld", &verdict, &req, &tok, &day, &mon);
    if (verdict < LIMITS_OK || verdict > LIMITS_MONTH)
        verdict = LIMITS_OK;
    memset(v, 0, sizeof(*v));
    v->req_limit = limits_per_window(cl->limits.rpm, w);
    v->tok_limit = limits_per_window(cl->limits.tpm, w);
    v->req_remaining = v->req_limit > req ? v->req_limit - req : 0;
    v->tok_remaining = v->tok_limit > tok ? v->tok_limit - tok : 0;
    v->reset_ms = (now_unix_ms / w + 1) * w - now_unix_ms;
    v->retry_after_s = (v->reset_ms + 999) / 1000;
    if (v->retry_after_s < 1 || verdict == LIMITS_CONCURRENT)
        v->retry_after_s = 1;
    if (verdict == LIMITS_DAY || verdict == LIMITS_MONTH) {
        limits_calendar(now_unix_ms, &d, &m);
        v->retry_after_s = ((d + 1) * 86400000 - now_unix_ms + 999) / 1000;
    }
    if (e) {
        limits_calendar(now_unix_ms, &d, &m);
        e->shared = 1;
        e->sh_day = d;
        e->sh_day_used = day;
        e->sh_month = m;
        e->sh_month_used = mon;
        if (verdict == LIMITS_OK) {
            e->st.requests++;
            e->st.inflight++;
        } else {
            e->st.limited++;
        }
    }
    return (enum limits_verdict)verdict;
}

void clients_settle_shared(struct session *s, const struct config *c, const char *name,
                           const struct limits_ticket *t, const char *member,
                           int64_t now_unix_ms, int64_t in, int64_t out)
{
    char k[4][CL_KEY_MAX], a[4][24];
    const char *keys[4] = { k[0], k[1], k[2], k[3] };
    const char *args[5] = { a[0], a[1], a[2], a[3], member };
    struct cl_entry *e = cl_get(name, 0);
    int64_t d, m;

    lock_assert_held();
    (void)c;
    if (in < 0)
        in = 0;
    if (out < 0)
        out = 0;
    shared_keys(name, t->win, now_unix_ms, k);
    snprintf(a[0], 24, "%lld", (long long)t->reserved);
    snprintf(a[1], 24, "%lld", (long long)(in + out));
    snprintf(a[2], 24, "%lld", 2LL * 86400000);
    snprintf(a[3], 24, "%lld", 32LL * 86400000);
    session_eval_write(s, settle_lua, 4, keys, 5, args);
    if (e == NULL || t->reserved < 0)
        return;
    /* this replica's share, for /status and /metrics */
    limits_calendar(now_unix_ms, &d, &m);
    if (e->st.day != d) {
        e->st.day = d;
        e->st.day_in = e->st.day_out = 0;
    }
    if (e->st.month != m) {
        e->st.month = m;
        e->st.month_in = e->st.month_out = 0;
    }
    e->st.day_in += in;
    e->st.day_out += out;
    e->st.month_in += in;
    e->st.month_out += out;
    if (e->st.inflight > 0)
        e->st.inflight--;
    e->tok_in += (uint64_t)in;
    e->tok_out += (uint64_t)out;
}

enum limits_verdict clients_admit_local(const struct config *c, const struct cfg_client *cl,
                                        size_t share, int64_t now_unix_ms, int64_t reserve,
                                        int64_t reserve_in, struct limits_ticket *t,
                                        struct limits_view *v)
{
    struct limits_cfg l = cl->limits;
    struct cl_entry *e = cl_get(cl->name, 1);
    struct limits_state tmp;
    int64_t n = share > 0 ? (int64_t)share : 1;

    lock_assert_held();
#define SHARE(x) ((x) > 0 ? ((x) / n > 0 ? (x) / n : 1) : 0)
    l.rpm = SHARE(l.rpm);
    l.tpm = SHARE(l.tpm);
    l.max_concurrent = SHARE(l.max_concurrent);
    l.tokens_per_day = SHARE(l.tokens_per_day);
    l.tokens_per_month = SHARE(l.tokens_per_month);
#undef SHARE
    if (e == NULL) {
        memset(&tmp, 0, sizeof(tmp));
        return limits_admit(&l, &tmp, now_unix_ms, c->limits.window_ms, reserve, reserve_in, t, v);
    }
    return limits_admit(&l, &e->st, now_unix_ms, c->limits.window_ms, reserve, reserve_in, t, v);
}
