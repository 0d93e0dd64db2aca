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

#define CL_BUCKETS 1024

struct cl_entry {
    struct cl_entry    *next;
    char               *name;
    struct limits_state st;
    uint64_t            tok_in, tok_out;   /* since start, for /metrics */
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
    const char *a = http_req_header(req, "Authorization");

    if (a == NULL && (a = http_req_header(req, "x-api-key")) != NULL)
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

    if (e == NULL) {                /* out of memory: admitted, not counted */
        memset(&tmp, 0, sizeof(tmp));
        return limits_admit(&cl->limits, &tmp, now_unix_ms, c->limits.window_ms,
                            reserve, reserve_in, t, v);
    }
    return limits_admit(&cl->limits, &e->st, now_unix_ms, c->limits.window_ms,
                        reserve, reserve_in, t, v);
}

void clients_settle(const char *name, const struct limits_ticket *t, int64_t window_ms,
                    int64_t now_unix_ms, int64_t in, int64_t out)
{
    struct cl_entry *e = cl_get(name, 0);

    if (e == NULL)
        return;
    limits_settle(&e->st, t, now_unix_ms, window_ms, in, out);
    e->tok_in += (uint64_t)(in > 0 ? in : 0);
    e->tok_out += (uint64_t)(out > 0 ? out : 0);
}

void clients_note_refused(const char *name)
{
    struct cl_entry *e = cl_get(name, 1);

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

    if (a == NULL)
        return NULL;
    for (i = 0; i < c->nclients; i++) {
        const struct cfg_client *cl = &c->clients[i];
        struct cl_entry *e = cl_get(cl->name, 0);
        struct limits_state st;
        int64_t d, m;
        json_t *o;

        memset(&st, 0, sizeof(st));
        if (e)
            st = e->st;
        limits_calendar(now_unix_ms, &d, &m);
        if (st.day != d)
            st.day_in = st.day_out = 0;
        if (st.month != m)
            st.month_in = st.month_out = 0;
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
                      "remaining", "tokens_today", budget(limits_day_left(&cl->limits, &st, now_unix_ms)),
                                   "tokens_this_month", budget(limits_month_left(&cl->limits, &st, now_unix_ms)),
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
