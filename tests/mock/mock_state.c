/*
 * mock_state.c -- the mock's knobs and counters, and the /_mock/ control
 * API that reads and writes them.
 *
 * The knobs live in a struct mock_conf twice: `boot` holds the command-line
 * values, `conf` the current ones. POST /_mock/config replaces the fields
 * it names (validated as a whole first: a bad field changes nothing), POST
 * /_mock/reset copies boot over conf and zeroes the counters, GET
 * /_mock/stats reports them. One table below names every knob, its JSON
 * field and its range, so the command line, the control API and README.md
 * agree.
 *
 * Counters are jansson objects (name -> integer) updated in place, and the
 * last request's headers and body are kept as raw bytes in reused buffers:
 * recording a call costs no allocation once warm, and JSON is only built
 * when /_mock/stats is asked for.
 */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "mock.h"

#define LAST_BODY_MAX (4u << 20)   /* bodies larger than this read as null */

enum field_kind { F_INT, F_BOOL, F_LIST, F_MAP };

struct field {
    const char     *name;
    enum field_kind kind;
    size_t          off;
    int             min, max;
};

#define INT_FIELD(n, lo, hi) { #n, F_INT,  offsetof(struct mock_conf, n), lo, hi }
#define BOOL_FIELD(n)        { #n, F_BOOL, offsetof(struct mock_conf, n), 0, 1 }

static const struct field fields[] = {
    INT_FIELD(status, 200, 599),
    INT_FIELD(retry_after, 0, 86400),
    INT_FIELD(delay_ms, 0, 3600000),
    INT_FIELD(chunks, 0, 1000000),
    INT_FIELD(chunk_interval_ms, 0, 3600000),
    INT_FIELD(content_bytes, 0, 1 << 20),
    INT_FIELD(event_bytes, 0, 1 << 20),
    INT_FIELD(close_after_chunks, 0, 1000000),
    INT_FIELD(stall_after_chunks, 0, 1000000),
    BOOL_FIELD(stall_body),
    INT_FIELD(partial_bytes, 0, 1000000),
    BOOL_FIELD(hang),
    BOOL_FIELD(garbage),
    BOOL_FIELD(drop),
    { "models", F_LIST, offsetof(struct mock_conf, models), 0, 0 },
    { "containers", F_LIST, offsetof(struct mock_conf, containers), 0, 0 },
    INT_FIELD(pending, 0, 2147483647),
    { "fail_keys", F_MAP, offsetof(struct mock_conf, fail_keys), 200, 599 },
    { "fail_models", F_MAP, offsetof(struct mock_conf, fail_models), 200, 599 },
    INT_FIELD(fail_next, 0, 2147483647),
    INT_FIELD(probe_status, 200, 599),
    INT_FIELD(probe_delay_ms, 0, 3600000),
    BOOL_FIELD(strict_models),
    BOOL_FIELD(close_connection),
};

#define NFIELDS (sizeof(fields) / sizeof(fields[0]))

static int *field_int(struct mock_conf *c, const struct field *f)
{
    return (int *)((char *)c + f->off);
}

static json_t **field_json(struct mock_conf *c, const struct field *f)
{
    return (json_t **)((char *)c + f->off);
}

/* ---- knobs ---------------------------------------------------------- */

void mock_conf_defaults(struct mock_conf *c)
{
    memset(c, 0, sizeof(*c));
    c->status = 200;
    c->chunks = 5;
    c->probe_status = 200;
    c->models = json_pack("[s]", "mock-model");
    c->containers = json_array();
    c->fail_keys = json_object();
    c->fail_models = json_object();
}

int mock_conf_copy(struct mock_conf *dst, const struct mock_conf *src)
{
    *dst = *src;
    dst->models = json_deep_copy(src->models);
    dst->containers = json_deep_copy(src->containers);
    dst->fail_keys = json_deep_copy(src->fail_keys);
    dst->fail_models = json_deep_copy(src->fail_models);
    if (dst->models == NULL || dst->containers == NULL || dst->fail_keys == NULL
        || dst->fail_models == NULL) {
        mock_conf_free(dst);
        return -1;
    }
    return 0;
}

void mock_conf_free(struct mock_conf *c)
{
    json_decref(c->models);
    json_decref(c->containers);
    json_decref(c->fail_keys);
    json_decref(c->fail_models);
    c->models = c->containers = c->fail_keys = c->fail_models = NULL;
}

/* "a,b , c" -> ["a","b","c"], replacing *list. */
int mock_conf_set_list(json_t **list, const char *csv)
{
    json_t *arr = json_array();
    const char *p = csv;

    if (arr == NULL)
        return -1;
    while (*p) {
        const char *end = strchr(p, ',');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        const char *s = p;
        size_t k = n;

        while (k > 0 && (*s == ' ' || *s == '\t')) {
            s++;
            k--;
        }
        while (k > 0 && (s[k - 1] == ' ' || s[k - 1] == '\t'))
            k--;
        if (k > 0 && json_array_append_new(arr, json_stringn(s, k)) != 0) {
            fprintf(stderr, "infergate-mock: bad list item in '%s'\n", csv);
            json_decref(arr);
            return -1;
        }
        p += n;
        if (*p == ',')
            p++;
    }
    json_decref(*list);
    *list = arr;
    return 0;
}

/* "KEY=STATUS" from --fail-key. */
int mock_conf_add_fail_key(struct mock_conf *c, const char *spec)
{
    const char *eq = strrchr(spec, '=');
    char *end;
    long st;

    if (eq == NULL || eq == spec) {
        fprintf(stderr, "infergate-mock: --fail-key: want KEY=STATUS, got '%s'\n", spec);
        return -1;
    }
    st = strtol(eq + 1, &end, 10);
    if (*end != '\0' || end == eq + 1 || st < 200 || st > 599) {
        fprintf(stderr, "infergate-mock: --fail-key: want a status in 200..599, got '%s'\n", eq + 1);
        return -1;
    }
    {
        char *key = strndup(spec, (size_t)(eq - spec));
        int rc = key ? json_object_set_new(c->fail_keys, key, json_integer(st)) : -1;
        free(key);
        if (rc != 0) {
            fprintf(stderr, "infergate-mock: --fail-key: bad key in '%s'\n", spec);
            return -1;
        }
    }
    return 0;
}

static json_t *conf_to_json(const struct mock_conf *c)
{
    json_t *o = json_object();
    size_t i;

    json_object_set_new(o, "name", json_string(mock.name));
    for (i = 0; i < NFIELDS; i++) {
        const struct field *f = &fields[i];
        struct mock_conf *mc = (struct mock_conf *)c;
        switch (f->kind) {
        case F_INT:
            json_object_set_new(o, f->name, json_integer(*field_int(mc, f)));
            break;
        case F_BOOL:
            json_object_set_new(o, f->name, json_boolean(*field_int(mc, f)));
            break;
        case F_LIST:
        case F_MAP:
            json_object_set(o, f->name, *field_json(mc, f));
            break;
        }
    }
    return o;
}

/* Sets one field of t from v (null = the command-line value). */
static int field_set(struct mock_conf *t, const struct field *f, json_t *v,
                     char *err, size_t errlen)
{
    json_t **jp;
    json_t *nv;
    const char *k;
    json_t *x;
    size_t i;

    if (json_is_null(v)) {
        if (f->kind == F_INT || f->kind == F_BOOL) {
            *field_int(t, f) = *field_int(&mock.boot, f);
            return 0;
        }
        nv = json_deep_copy(*field_json(&mock.boot, f));
        goto replace;
    }

    switch (f->kind) {
    case F_INT:
        if (!json_is_integer(v) || json_integer_value(v) < f->min ||
            json_integer_value(v) > f->max) {
            snprintf(err, errlen, "%s: want an integer in %d..%d", f->name, f->min, f->max);
            return -1;
        }
        *field_int(t, f) = (int)json_integer_value(v);
        return 0;

    case F_BOOL:
        if (json_is_boolean(v)) {
            *field_int(t, f) = json_is_true(v);
            return 0;
        }
        if (json_is_integer(v) && (json_integer_value(v) == 0 || json_integer_value(v) == 1)) {
            *field_int(t, f) = (int)json_integer_value(v);
            return 0;
        }
        snprintf(err, errlen, "%s: want true or false", f->name);
        return -1;

    case F_LIST:
        if (json_is_string(v)) {
            nv = NULL;
            if (mock_conf_set_list(&nv, json_string_value(v)) != 0) {
                snprintf(err, errlen, "%s: bad list", f->name);
                return -1;
            }
            goto replace;
        }
        if (!json_is_array(v)) {
            snprintf(err, errlen, "%s: want an array of strings", f->name);
            return -1;
        }
        json_array_foreach(v, i, x) {
            if (!json_is_string(x)) {
                snprintf(err, errlen, "%s: want an array of strings", f->name);
                return -1;
            }
        }
        nv = json_deep_copy(v);
        goto replace;

    case F_MAP:
        if (!json_is_object(v)) {
            snprintf(err, errlen, "%s: want an object of key -> status", f->name);
            return -1;
        }
        json_object_foreach(v, k, x) {
            if (!json_is_integer(x) || json_integer_value(x) < f->min ||
                json_integer_value(x) > f->max) {
                snprintf(err, errlen, "%s.%s: want a status in %d..%d", f->name, k,
                         f->min, f->max);
                return -1;
            }
        }
        nv = json_deep_copy(v);
        goto replace;
    }
    return 0;

replace:
    if (nv == NULL) {
        snprintf(err, errlen, "%s: out of memory", f->name);
        return -1;
    }
    jp = field_json(t, f);
    json_decref(*jp);
    *jp = nv;
    return 0;
}

/* Applies a /_mock/config object to mock.conf: all of it or nothing. */
static int conf_apply(json_t *obj, char *err, size_t errlen)
{
    struct mock_conf t;
    const char *key;
    json_t *v;
    size_t i;

    if (!json_is_object(obj)) {
        snprintf(err, errlen, "want a JSON object");
        return -1;
    }
    json_object_foreach(obj, key, v) {
        for (i = 0; i < NFIELDS; i++)
            if (strcmp(key, fields[i].name) == 0)
                break;
        if (i == NFIELDS && strcmp(key, "name") != 0) {
            snprintf(err, errlen, "unknown field '%s'", key);
            return -1;
        }
    }
    if (mock_conf_copy(&t, &mock.conf) != 0) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    for (i = 0; i < NFIELDS; i++) {
        v = json_object_get(obj, fields[i].name);
        if (v != NULL && field_set(&t, &fields[i], v, err, errlen) != 0) {
            mock_conf_free(&t);
            return -1;
        }
    }
    mock_conf_free(&mock.conf);
    mock.conf = t;
    return 0;
}

/* Prebuilds the answers of GET /v1/models and GET /info from mock.conf. */
static int rebuild_bodies(void)
{
    json_t *data = json_array(), *conts = json_array(), *doc;
    char *models_body, *info_body;
    json_t *x;
    size_t i;

    json_array_foreach(mock.conf.models, i, x)
        json_array_append_new(data, json_pack("{s:O, s:s, s:i, s:s}", "id", x,
                                              "object", "model", "created", 0,
                                              "owned_by", mock.name));
    json_array_foreach(mock.conf.containers, i, x)
        json_array_append_new(conts, json_pack("{s:O}", "id", x));

    doc = json_pack("{s:s, s:o}", "object", "list", "data", data);
    models_body = doc ? json_dumps(doc, JSON_COMPACT) : NULL;
    json_decref(doc);
    doc = json_pack("{s:o, s:{s:i, s:i}}", "containers", conts,
                    "pending", "offchain", mock.conf.pending, "onchain", 0);
    info_body = doc ? json_dumps(doc, JSON_COMPACT) : NULL;
    json_decref(doc);
    if (models_body == NULL || info_body == NULL) {
        free(models_body);
        free(info_body);
        return -1;
    }
    free(mock.models_body);
    free(mock.info_body);
    mock.models_body = models_body;
    mock.info_body = info_body;
    return 0;
}

/* ---- counters ------------------------------------------------------- */

static int buf_set(struct mock_buf *b, const void *p, size_t n)
{
    b->len = 0;
    if (n > b->cap) {
        size_t cap = n < 256 ? 256 : n;
        char *np = realloc(b->p, cap);
        if (np == NULL)
            return -1;
        b->p = np;
        b->cap = cap;
    }
    if (n > 0)
        memcpy(b->p, p, n);
    b->len = n;
    return 0;
}

static int buf_add(struct mock_buf *b, const void *p, size_t n)
{
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 256;
        char *np;
        while (cap < b->len + n)
            cap *= 2;
        np = realloc(b->p, cap);
        if (np == NULL)
            return -1;
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->len, p, n);
    b->len += n;
    return 0;
}

void mock_count(json_t *map, const char *key)
{
    json_t *v = json_object_get(map, key);

    if (v == NULL && json_object_size(map) >= MOCK_MAP_MAX) {
        key = "(other)";
        v = json_object_get(map, key);
    }
    if (v != NULL) {
        json_integer_set(v, json_integer_value(v) + 1);
        return;
    }
    json_object_set_new(map, key, json_integer(1));   /* fails quietly on bad UTF-8 */
}

void mock_count_status(int code)
{
    char s[16];

    snprintf(s, sizeof(s), "%d", code);
    mock_count(mock.stats.statuses, s);
}

void mock_record_call(struct evhttp_request *req, const char *path,
                      const char *key, const char *model,
                      const char *body, size_t len)
{
    struct mock_stats *st = &mock.stats;
    struct evkeyvalq *hs = evhttp_request_get_input_headers(req);
    struct evkeyval *h;

    mock_count(st->keys, key);
    if (model != NULL)
        mock_count(st->models, model);

    buf_set(&st->last_path, path, strlen(path) + 1);
    st->last_headers.len = 0;
    for (h = hs->tqh_first; h != NULL; h = h->next.tqe_next) {
        size_t kl = strlen(h->key), i, at = st->last_headers.len;
        if (buf_add(&st->last_headers, h->key, kl + 1) != 0 ||
            buf_add(&st->last_headers, h->value, strlen(h->value) + 1) != 0) {
            st->last_headers.len = at;
            break;
        }
        for (i = 0; i < kl; i++) {
            char c = st->last_headers.p[at + i];
            if (c >= 'A' && c <= 'Z')
                st->last_headers.p[at + i] = (char)(c - 'A' + 'a');
        }
    }
    if (len > LAST_BODY_MAX || buf_set(&st->last_body, body, len) != 0)
        st->last_body.len = 0;
    st->have_last = 1;
}

static int stats_maps_new(struct mock_stats *st)
{
    st->paths = json_object();
    st->keys = json_object();
    st->models = json_object();
    st->statuses = json_object();
    return st->paths && st->keys && st->models && st->statuses ? 0 : -1;
}

static void stats_maps_free(struct mock_stats *st)
{
    json_decref(st->paths);
    json_decref(st->keys);
    json_decref(st->models);
    json_decref(st->statuses);
    st->paths = st->keys = st->models = st->statuses = NULL;
}

static void stats_reset(void)
{
    struct mock_stats *st = &mock.stats;

    json_object_clear(st->paths);
    json_object_clear(st->keys);
    json_object_clear(st->models);
    json_object_clear(st->statuses);
    st->requests = st->streams_completed = st->disconnects = st->drops = st->stalls = 0;
    st->last_path.len = st->last_headers.len = st->last_body.len = 0;
    st->have_last = 0;
}

static json_t *stats_to_json(void)
{
    struct mock_stats *st = &mock.stats;
    json_t *o = json_object(), *h = json_object(), *body = NULL;
    size_t at = 0;

    json_object_set_new(o, "name", json_string(mock.name));
    json_object_set_new(o, "requests", json_integer(st->requests));
    json_object_set(o, "paths", st->paths);
    json_object_set(o, "keys", st->keys);
    json_object_set(o, "models", st->models);
    json_object_set(o, "statuses", st->statuses);
    json_object_set_new(o, "streams_completed", json_integer(st->streams_completed));
    json_object_set_new(o, "disconnects", json_integer(st->disconnects));
    json_object_set_new(o, "drops", json_integer(st->drops));
    json_object_set_new(o, "stalls", json_integer(st->stalls));
    json_object_set_new(o, "in_flight", json_integer(mock.in_flight));
    json_object_set_new(o, "seq", json_integer((json_int_t)mock.seq));
    {
        long long resumed, n = mock_tls_handshakes(&resumed);
        json_object_set_new(o, "tls_handshakes", json_integer(n));
        json_object_set_new(o, "tls_resumed", json_integer(resumed));
        if (mock.tls_snis)
            json_object_set(o, "tls_sni", mock.tls_snis);
    }

    while (at < st->last_headers.len) {
        const char *k = st->last_headers.p + at;
        const char *v = k + strlen(k) + 1;
        json_object_set_new(h, k, json_string(v));
        at = (size_t)(v + strlen(v) + 1 - st->last_headers.p);
    }
    if (st->have_last && st->last_body.len > 0)
        body = json_loadb(st->last_body.p, st->last_body.len, JSON_DECODE_ANY, NULL);
    json_object_set_new(o, "last_path",
                        st->have_last ? json_string(st->last_path.p) : json_null());
    json_object_set_new(o, "last_headers", h);
    json_object_set_new(o, "last_body", body ? body : json_null());
    return o;
}

/* ---- lifecycle ------------------------------------------------------ */

int mock_state_init(void)
{
    if (mock_conf_copy(&mock.conf, &mock.boot) != 0)
        return -1;
    if (stats_maps_new(&mock.stats) != 0)
        return -1;
    return rebuild_bodies();
}

void mock_state_free(void)
{
    struct mock_stats *st = &mock.stats;

    mock_conf_free(&mock.conf);
    stats_maps_free(st);
    free(st->last_path.p);
    free(st->last_headers.p);
    free(st->last_body.p);
    memset(st, 0, sizeof(*st));
    free(mock.models_body);
    free(mock.info_body);
    mock.models_body = mock.info_body = NULL;
}

/* ---- /_mock/ -------------------------------------------------------- */

/* Sends o (stolen) as the JSON answer. */
static void send_json(struct evhttp_request *req, int code, json_t *o)
{
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;

    json_decref(o);
    if (s == NULL) {
        evbuffer_add_printf(evhttp_request_get_output_buffer(req),
                            "{\"error\":{\"message\":\"out of memory\"}}");
        mock_reply(req, 500, "application/json");
        return;
    }
    evbuffer_add(evhttp_request_get_output_buffer(req), s, strlen(s));
    free(s);
    mock_reply(req, code, "application/json");
}

static void send_error(struct evhttp_request *req, int code, const char *msg,
                       const char *errcode)
{
    mock_add_error(evhttp_request_get_output_buffer(req), msg,
                   "invalid_request_error", errcode);
    mock_reply(req, code, "application/json");
}

static void control_config(struct evhttp_request *req)
{
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t len = evbuffer_get_length(in);
    json_error_t jerr;
    char err[256];
    json_t *obj;

    if (evhttp_request_get_command(req) == EVHTTP_REQ_GET || len == 0) {
        send_json(req, 200, conf_to_json(&mock.conf));
        return;
    }
    if (evhttp_request_get_command(req) != EVHTTP_REQ_POST) {
        send_error(req, 405, "use GET or POST", "method_not_allowed");
        return;
    }
    obj = json_loadb((const char *)evbuffer_pullup(in, -1), len, 0, &jerr);
    if (obj == NULL) {
        snprintf(err, sizeof(err), "invalid JSON: %s", jerr.text);
        send_error(req, 400, err, "invalid_json");
        return;
    }
    if (conf_apply(obj, err, sizeof(err)) != 0) {
        json_decref(obj);
        send_error(req, 400, err, "invalid_config");
        return;
    }
    if (!mock.quiet) {
        char *s = json_dumps(obj, JSON_COMPACT);
        mock_notice("config %s", s ? s : "?");
        free(s);
    }
    json_decref(obj);
    if (rebuild_bodies() != 0) {
        send_error(req, 500, "out of memory", "internal_error");
        return;
    }
    send_json(req, 200, conf_to_json(&mock.conf));
}

static void control_reset(struct evhttp_request *req)
{
    struct mock_conf t;

    if (evhttp_request_get_command(req) != EVHTTP_REQ_POST) {
        send_error(req, 405, "use POST", "method_not_allowed");
        return;
    }
    if (mock_conf_copy(&t, &mock.boot) != 0) {
        send_error(req, 500, "out of memory", "internal_error");
        return;
    }
    mock_conf_free(&mock.conf);
    mock.conf = t;
    stats_reset();
    if (rebuild_bodies() != 0) {
        send_error(req, 500, "out of memory", "internal_error");
        return;
    }
    mock_notice("reset");
    send_json(req, 200, conf_to_json(&mock.conf));
}

void mock_control(struct evhttp_request *req, const char *path)
{
    if (strcmp(path, "/_mock/config") == 0) {
        control_config(req);
        return;
    }
    if (strcmp(path, "/_mock/reset") == 0) {
        control_reset(req);
        return;
    }
    if (strcmp(path, "/_mock/stats") == 0) {
        if (evhttp_request_get_command(req) != EVHTTP_REQ_GET) {
            send_error(req, 405, "use GET", "method_not_allowed");
            return;
        }
        send_json(req, 200, stats_to_json());
        return;
    }
    send_error(req, 404, "unknown control path", "not_found");
}
