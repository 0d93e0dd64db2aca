/*
 * config.c -- loads hosts.json, api-keys.json and policies.yaml into one
 * immutable, refcounted `struct config` (see config.h).
 *
 * The three files are parsed by doc.c into jansson trees with positions;
 * `${NAME}` is expanded in every string value; then one table, `fields`
 * below, drives validation: every key of policies.yaml and of the objects
 * inside hosts.json, api-keys.json, fallback chains and notifications is a
 * row with its type, where it goes, its default (written as it would be in
 * policies.yaml) and its range. A generic walker checks each mapping against
 * the rows of its scope; the few keys with a shape of their own (models,
 * retry.on, fallback.chains, alerts.notifications, access_log, labels) have
 * a small handler. Cross-references (hosts named by keys and fallback steps,
 * key pools named by hosts) are checked last, when everything is known.
 *
 * Every problem is collected, not only the first, as
 * "FILE:LINE:COL: json.path: message", sorted by file then position. A
 * secret (an API key, a client key, a password) is never put in a message.
 *
 * Loading runs at startup and on reload only, never on the request path; out
 * of memory aborts, as in the rest of the daemon.
 */
#include "config.h"
#include "route.h"
#include "hash.h"
#include "doc.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <openssl/sha.h>

#define MAX_FILE_BYTES     (16 * 1024 * 1024)
#define MAX_KEY_FILE_BYTES (64 * 1024)

enum { FILE_HOSTS = 0, FILE_KEYS, FILE_POLICIES, FILE_DEFAULTS, NFILES };
static const char *const file_names[NFILES] = {
    "hosts.json", "api-keys.json", "policies.yaml", "(built-in defaults)"
};

enum file_state { ST_MISSING = 0, ST_FAILED, ST_OK };

/* Set once at start-up, before the first load (config_hooks_set). */
static struct config_hooks hooks;

void config_hooks_set(const struct config_hooks *h)
{
    hooks = *h;
}

/* ---- small helpers ----------------------------------------------------- */

static void oom(void)
{
    fputs("infergate: out of memory while loading the configuration\n", stderr);
    abort();
}

static void *xcalloc(size_t n, size_t sz)
{
    void *p = calloc(n ? n : 1, sz ? sz : 1);
    if (p == NULL)
        oom();
    return p;
}

static void *xrealloc(void *p, size_t sz)
{
    p = realloc(p, sz ? sz : 1);
    if (p == NULL)
        oom();
    return p;
}

static char *xstrdup(const char *s)
{
    char *d = strdup(s);
    if (d == NULL)
        oom();
    return d;
}

/* Makes room for element n of an array of `sz`-byte elements. */
static void *grow(void *arr, size_t n, size_t sz)
{
    size_t cap = 8;

    while (cap < n + 1)
        cap *= 2;
    if (n == 0 || (n >= 8 && (n & (n - 1)) == 0))
        arr = xrealloc(arr, cap * sz);
    return arr;
}

static char *join_path(const char *dir, const char *name)
{
    size_t dl = strlen(dir);
    char *p;

    if (name[0] == '/')
        return xstrdup(name);
    p = xcalloc(1, dl + strlen(name) + 2);
    sprintf(p, "%s%s%s", dir, dl && dir[dl - 1] == '/' ? "" : "/", name);
    return p;
}

void cfg_strlist_free(struct cfg_strlist *l)
{
    size_t i;

    for (i = 0; i < l->n; i++)
        free(l->v[i]);
    free(l->v);
    l->v = NULL;
    l->n = 0;
}

int cfg_strlist_has(const struct cfg_strlist *l, const char *s)
{
    size_t i;

    for (i = 0; i < l->n; i++)
        if (strcmp(l->v[i], s) == 0)
            return 1;
    return 0;
}

static int levenshtein(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b), i, j;
    int row[65], prev, tmp;

    if (la > 64 || lb > 64)
        return 99;
    for (j = 0; j <= lb; j++)
        row[j] = (int)j;
    for (i = 1; i <= la; i++) {
        prev = row[0];
        row[0] = (int)i;
        for (j = 1; j <= lb; j++) {
            int best = prev + (a[i - 1] != b[j - 1]);
            if (row[j] + 1 < best)
                best = row[j] + 1;
            if (row[j - 1] + 1 < best)
                best = row[j - 1] + 1;
            tmp = row[j];
            row[j] = best;
            prev = tmp;
        }
    }
    return row[lb];
}

/* The candidate nearest to `word` within edit distance 2, or NULL. */
static const char *suggest(const char *word, const char *const *cands, size_t n)
{
    const char *best = NULL;
    int bestd = 3;
    size_t i;

    for (i = 0; i < n; i++) {
        int d = levenshtein(word, cands[i]);
        size_t longest = strlen(word) > strlen(cands[i]) ? strlen(word) : strlen(cands[i]);
        if (d < bestd && (size_t)d < longest && strcmp(word, cands[i]) != 0) {
            best = cands[i];
            bestd = d;
        }
    }
    return best;
}

/* ", did you mean \"x\"?" or "" */
static const char *did_you_mean(char *buf, size_t cap, const char *s)
{
    if (s == NULL)
        return "";
    snprintf(buf, cap, ", did you mean \"%s\"?", s);
    return buf;
}

/* Formats ms the way they are written in the files. */
static const char *fmt_duration(char *buf, size_t cap, double ms)
{
    long long v = (long long)ms;

    if (v != 0 && v % 3600000 == 0)
        snprintf(buf, cap, "%lldh", v / 3600000);
    else if (v != 0 && v % 60000 == 0)
        snprintf(buf, cap, "%lldm", v / 60000);
    else if (v != 0 && v % 1000 == 0)
        snprintf(buf, cap, "%llds", v / 1000);
    else if (v != 0)
        snprintf(buf, cap, "%lldms", v);
    else
        snprintf(buf, cap, "0");
    return buf;
}

static const char *fmt_size(char *buf, size_t cap, double bytes)
{
    long long v = (long long)bytes;

    if (v != 0 && v % (1 << 30) == 0)
        snprintf(buf, cap, "%lldGB", v >> 30);
    else if (v != 0 && v % (1 << 20) == 0)
        snprintf(buf, cap, "%lldMB", v >> 20);
    else if (v != 0 && v % (1 << 10) == 0)
        snprintf(buf, cap, "%lldKB", v >> 10);
    else
        snprintf(buf, cap, "%lld", v);
    return buf;
}

/* ---- durations and sizes ----------------------------------------------- */

int64_t config_parse_duration(const char *s)
{
    int64_t ip = 0, frac = 0, fdiv = 1, unit;
    int nd = 0, nf = 0;

    if (s == NULL)
        return -1;
    for (; *s >= '0' && *s <= '9'; s++, nd++) {
        if (nd >= 12)
            return -1;
        ip = ip * 10 + (*s - '0');
    }
    if (nd == 0)
        return -1;
    if (*s == '.') {
        for (s++; *s >= '0' && *s <= '9'; s++, nf++) {
            if (nf < 9) {
                frac = frac * 10 + (*s - '0');
                fdiv *= 10;
            }
        }
        if (nf == 0)
            return -1;
    }
    if (*s == '\0' || strcmp(s, "s") == 0)
        unit = 1000;
    else if (strcmp(s, "ms") == 0)
        unit = 1;
    else if (strcmp(s, "m") == 0)
        unit = 60 * 1000;
    else if (strcmp(s, "h") == 0)
        unit = 3600 * 1000;
    else
        return -1;
    return ip * unit + (frac * unit + fdiv / 2) / fdiv;
}

int64_t config_parse_size(const char *s)
{
    int64_t n = 0, mult;
    int nd = 0;

    if (s == NULL)
        return -1;
    for (; *s >= '0' && *s <= '9'; s++, nd++) {
        if (nd >= 15)
            return -1;
        n = n * 10 + (*s - '0');
    }
    if (nd == 0)
        return -1;
    if (*s == '\0' || strcmp(s, "B") == 0)
        mult = 1;
    else if (strcmp(s, "K") == 0 || strcmp(s, "KB") == 0)
        mult = 1024;
    else if (strcmp(s, "M") == 0 || strcmp(s, "MB") == 0)
        mult = 1024 * 1024;
    else if (strcmp(s, "G") == 0 || strcmp(s, "GB") == 0)
        mult = 1024 * 1024 * 1024;
    else
        return -1;
    if (n > INT64_MAX / mult)
        return -1;
    return n * mult;
}

/* ---- the loader, cursors and error collection -------------------------- */

struct perr {
    int      file;
    struct doc_pos pos;
    size_t   seq;
    char    *text;              /* "FILE:LINE:COL: path: message" */
};

/* A name to look up once everything is loaded. */
enum { REF_HOST, REF_POOL };
struct ref {
    int      kind;
    int      file;
    struct doc_pos pos;
    char    *path;
    char    *name;
};

struct field;

struct loader {
    const char    *dir;
    char          *path[NFILES];    /* dir/hosts.json, ...; what errors print */
    struct doc     doc[NFILES];     /* FILE_DEFAULTS unused: see defdoc */
    enum file_state state[NFILES];
    struct doc    *defdoc;          /* one per row of `fields` with a default */
    int            in_defaults;     /* applying defaults: no range checks */
    struct config *c;

    struct perr   *errs;
    size_t         nerrs;

    struct ref    *refs;
    size_t         nrefs;

    size_t        *host_index;      /* hosts[i] came from hosts.json hosts[host_index[i]] */
};

/* Where the walker is: a node of one document, its position and path. */
struct cur {
    int            file;
    struct doc    *doc;
    json_t        *v;
    struct doc_pos pos;
    char           path[DOC_PATH_MAX];
};

static void err_at(struct loader *ld, int file, struct doc_pos pos, const char *path,
                   const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/*
 * api-keys.json holds secrets, and in a broken or misshapen file a secret can
 * sit where a key name belongs. So a path there names only the keys of that
 * file and stops before anything else: "apiKeys[2].hosts[0]", never
 * "apiKeys[2].sk-live-...".
 */
static void keys_safe_path(char *path)
{
    static const char *const known[] = {
        "apiKeys", "key", "key_file", "description", "isActive", "pool", "hosts", "weight"
    };
    char *p = path;

    while (*p) {
        const char *name;
        size_t len, i;

        if (p[0] == '[' && p[1] >= '0' && p[1] <= '9') {
            p += strcspn(p, "]");
            p += *p == ']';
            continue;
        }
        if (p[0] == '[')                /* ["quoted"]: never a key of ours */
            break;
        name = p + (*p == '.');
        len = strcspn(name, ".[");
        for (i = 0; i < sizeof(known) / sizeof(known[0]); i++)
            if (strlen(known[i]) == len && strncmp(name, known[i], len) == 0)
                break;
        if (i == sizeof(known) / sizeof(known[0]))
            break;
        p = (char *)name + len;
    }
    *p = '\0';
}

/* Records one message; `path` is printed as given (see err_at). */
static void err_raw(struct loader *ld, int file, struct doc_pos pos, const char *path,
                    const char *msg)
{
    char text[1280];
    struct perr *e;

    if (path == NULL || *path == '\0')
        path = "$";
    if (pos.line > 0)
        snprintf(text, sizeof(text), "%s:%d:%d: %s: %s", ld->path[file], pos.line, pos.col,
                 path, msg);
    else
        snprintf(text, sizeof(text), "%s: %s: %s", ld->path[file], path, msg);

    ld->errs = grow(ld->errs, ld->nerrs, sizeof(*ld->errs));
    e = &ld->errs[ld->nerrs];
    e->file = file;
    e->pos = pos;
    e->seq = ld->nerrs;
    e->text = xstrdup(text);
    ld->nerrs++;
}

static void err_at(struct loader *ld, int file, struct doc_pos pos, const char *path,
                   const char *fmt, ...)
{
    char msg[768], safe[DOC_PATH_MAX];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (file == FILE_KEYS && path != NULL) {
        snprintf(safe, sizeof(safe), "%s", path);
        keys_safe_path(safe);
        path = safe;
    }
    err_raw(ld, file, pos, path, msg);
}

/* An error about the value at c; silent when that value is already known to
 * be wrong (an unset ${NAME} in it), so one mistake gives one message. */
#define cerr(ld, c, ...) do {                                                  \
        if (!(doc_flags((c)->doc, (c)->v) & DOC_INVALID))                      \
            err_at((ld), (c)->file, (c)->pos, (c)->path, __VA_ARGS__);         \
    } while (0)

/* An error about the key (not the value) of member `key` of object c. */
static void kerr(struct loader *ld, const struct cur *c, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void kerr(struct loader *ld, const struct cur *c, const char *key, const char *fmt, ...)
{
    char path[DOC_PATH_MAX], msg[768];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    doc_path_key(path, sizeof(path), c->path, key);
    err_at(ld, c->file, doc_key_pos(c->doc, c->v, key), path, "%s", msg);
}

/*
 * "unknown key" about member `key` of object c, at the key, with the key in
 * the path. `sug` is the nearest known key (suggest()) or NULL. In
 * api-keys.json a name in key position may be a secret pasted in the wrong
 * place, so there the key is named only when it is a near miss of a known
 * key (a typo: `apiKeys[0].isactive`); anything else stops at the object.
 */
static void unknown_key_err(struct loader *ld, const struct cur *c, const char *key,
                            const char *sug)
{
    char path[DOC_PATH_MAX], parent[DOC_PATH_MAX], dym[128], msg[160];
    struct doc_pos pos = doc_key_pos(c->doc, c->v, key);

    snprintf(msg, sizeof(msg), "unknown key%s", did_you_mean(dym, sizeof(dym), sug));
    if (c->file != FILE_KEYS) {
        kerr(ld, c, key, "%s", msg);
        return;
    }
    snprintf(parent, sizeof(parent), "%s", c->path);
    keys_safe_path(parent);
    if (sug == NULL || strcmp(parent, c->path) != 0) {
        err_raw(ld, c->file, pos, parent, msg);     /* stops at the object */
        return;
    }
    doc_path_key(path, sizeof(path), parent, key);
    err_raw(ld, c->file, pos, path, msg);
}

/*
 * "missing required key" about member `key` of object c: the path names the
 * missing key, the position is the object's (where the key would go).
 */
static void merr(struct loader *ld, const struct cur *c, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void merr(struct loader *ld, const struct cur *c, const char *key, const char *fmt, ...)
{
    char path[DOC_PATH_MAX], msg[768];
    va_list ap;

    if (doc_flags(c->doc, c->v) & DOC_INVALID)
        return;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    doc_path_key(path, sizeof(path), c->path, key);
    err_at(ld, c->file, c->pos, path, "%s", msg);
}

static void cur_root(struct cur *c, int file, struct doc *d)
{
    memset(c, 0, sizeof(*c));
    c->file = file;
    c->doc = d;
    c->v = d->root;
    c->pos = d->root_pos;
}

static void cur_member(const struct cur *p, const char *key, json_t *v, struct cur *out)
{
    out->file = p->file;
    out->doc = p->doc;
    out->v = v;
    out->pos = doc_member_pos(p->doc, p->v, key);
    doc_path_key(out->path, sizeof(out->path), p->path, key);
}

/* 1 and *out filled when object p has member key. */
static int cur_get(const struct cur *p, const char *key, struct cur *out)
{
    json_t *v = json_is_object(p->v) ? json_object_get(p->v, key) : NULL;

    if (v == NULL)
        return 0;
    cur_member(p, key, v, out);
    return 1;
}

/* Follows a dotted path of object keys from p. */
static int cur_lookup(const struct cur *p, const char *dotted, struct cur *out)
{
    char buf[DOC_PATH_MAX], *tok, *save = NULL;
    struct cur at = *p;

    snprintf(buf, sizeof(buf), "%s", dotted);
    for (tok = strtok_r(buf, ".", &save); tok; tok = strtok_r(NULL, ".", &save)) {
        struct cur next;
        if (!cur_get(&at, tok, &next))
            return 0;
        at = next;
    }
    *out = at;
    return 1;
}

static void cur_elem(const struct cur *p, size_t i, struct cur *out)
{
    out->file = p->file;
    out->doc = p->doc;
    out->v = json_array_get(p->v, i);
    out->pos = doc_elem_pos(p->doc, p->v, i);
    doc_path_index(out->path, sizeof(out->path), p->path, i);
}

static const char *want_map(const struct cur *c)
{
    return c->doc->yaml ? "expected a mapping" : "expected an object";
}

static const char *want_list(const struct cur *c)
{
    return c->doc->yaml ? "expected a list" : "expected an array";
}

/* "expected a string", with a hint when YAML typed an unquoted scalar. */
static const char *want_string(const struct cur *c)
{
    if (c->doc->yaml && (json_is_number(c->v) || json_is_boolean(c->v)))
        return "expected a string (put the value in quotes)";
    return "expected a string";
}

/*
 * The value as a non-string leaf sees it: a plain YAML scalar whose text came
 * out of ${} interpolation is typed now, by the YAML core schema, as if the
 * text had been written in the file. Returns a new reference.
 */
static json_t *typed(const struct cur *c)
{
    json_t *v;

    if (!json_is_string(c->v) || !(doc_flags(c->doc, c->v) & DOC_RETYPE))
        return json_incref(c->v);
    v = doc_yaml_scalar(json_string_value(c->v), json_string_length(c->v));
    if (v == NULL)
        oom();
    return v;
}

static void add_ref(struct loader *ld, int kind, const struct cur *c, const char *name)
{
    struct ref *r;

    if (doc_flags(c->doc, c->v) & DOC_INVALID)
        return;
    ld->refs = grow(ld->refs, ld->nrefs, sizeof(*ld->refs));
    r = &ld->refs[ld->nrefs++];
    r->kind = kind;
    r->file = c->file;
    r->pos = c->pos;
    r->path = xstrdup(c->path);
    r->name = xstrdup(name);
}

/* ---- the table of keys ------------------------------------------------- */

enum ftype { T_INT, T_BOOL, T_NUM, T_DUR, T_SIZE, T_STR, T_ENUM, T_STRLIST, T_SPECIAL };

/* Which object a row belongs to, and so what its `off` is relative to. */
enum scope {
    S_POLICY,   /* struct config, policies.yaml keys as dotted paths */
    S_HOST,     /* struct cfg_host, an object in hosts.json hosts[] */
    S_KEY,      /* struct key_tmp, an object in api-keys.json apiKeys[] */
    S_CHAIN,    /* struct cfg_fallback_chain, fallback.chains[] */
    S_STEP,     /* struct cfg_fallback_step, fallback.chains[].steps[] */
    S_NOTIFY,   /* struct notify_tmp, alerts.notifications[] */
    S_CLIENT    /* struct client_tmp, clients[] */
};

#define FL_REQ       (1u << 0)  /* must be present (when its mapping is) */
#define FL_NONEMPTY  (1u << 1)  /* string or list must not be empty */
#define FL_EXCL_LO   (1u << 2)  /* the lower bound is excluded */
#define FL_FIRST     (1u << 3)  /* read by the caller before the walk */

struct ename {
    const char *name;
    int         value;
};

typedef const char *(*check_fn)(const char *s);
typedef int (*special_fn)(struct loader *ld, const struct field *f, const struct cur *c, void *base);

struct field {
    enum scope   scope;
    const char  *path;          /* dotted, relative to the scope's object */
    enum ftype   type;
    size_t       off;           /* where the value goes in the scope's struct */
    const char  *def;           /* default, as written in policies.yaml; NULL = none */
    double       lo, hi;        /* INT, NUM; DUR in ms; SIZE in bytes */
    unsigned     flags;         /* FL_* */
    unsigned     only;          /* S_NOTIFY: 1 << type it belongs to; 0 = any */
    const struct ename *names;  /* T_ENUM */
    check_fn     check;         /* T_STR: NULL or what is wrong */
    special_fn   special;       /* T_SPECIAL */
};

/* api-keys.json entries and notifications carry a key or two of their own. */
struct key_tmp {
    struct cfg_key k;
    char *key_file;
};

struct notify_tmp {
    struct cfg_notify n;
    int format;                 /* webhook: 0 json, 1 slack */
};

struct client_tmp {
    struct cfg_client c;
    char *key, *key_file, *key_sha256;
    int rpm, tpm, max_concurrent, per_day, per_month;
};

static const struct ename strategies[] = {
    {"round-robin", STRAT_ROUND_ROBIN}, {"weighted-round-robin", STRAT_WEIGHTED_ROUND_ROBIN},
    {"least-connections", STRAT_LEAST_CONNECTIONS}, {"latency", STRAT_LATENCY},
    {"least-pending", STRAT_LEAST_PENDING}, {"random", STRAT_RANDOM},
    {"consistent-hash", STRAT_CONSISTENT_HASH}, {NULL, 0}
};
static const struct ename log_levels[] = {
    {"debug", LOGL_DEBUG}, {"info", LOGL_INFO}, {"warn", LOGL_WARN}, {"error", LOGL_ERROR}, {NULL, 0}
};
static const struct ename log_formats[] = {{"text", LOGF_TEXT}, {"json", LOGF_JSON}, {NULL, 0}};
static const struct ename sticky_by[] = {
    {"user", AFF_USER}, {"header", AFF_HEADER}, {"response_id", AFF_RESPONSE_ID}, {NULL, 0}
};
static const struct ename hash_by[] = {{"user", AFF_USER}, {"header", AFF_HEADER}, {NULL, 0}};
static const struct ename when_full[] = {
    {"reject", WHEN_FULL_REJECT}, {"queue", WHEN_FULL_QUEUE}, {NULL, 0}
};
static const struct ename backoffs[] = {
    {"exponential", BACKOFF_EXPONENTIAL}, {"linear", BACKOFF_LINEAR}, {"fixed", BACKOFF_FIXED}, {NULL, 0}
};
static const struct ename jitters[] = {
    {"full", JITTER_FULL}, {"equal", JITTER_EQUAL}, {"none", JITTER_NONE}, {NULL, 0}
};
static const struct ename recoveries[] = {
    {"immediate", RECOVERY_IMMEDIATE}, {"gradual", RECOVERY_GRADUAL}, {NULL, 0}
};
static const struct ename modes[] = {
    {"sequential", FALLBACK_SEQUENTIAL}, {"parallel", FALLBACK_PARALLEL}, {NULL, 0}
};
static const struct ename stores[] = {{"memory", STORE_MEMORY}, {"redis", STORE_REDIS}, {NULL, 0}};
static const struct ename notify_types[] = {
    {"webhook", NOTIFY_WEBHOOK}, {"slack", NOTIFY_SLACK}, {"command", NOTIFY_COMMAND},
    {"email", NOTIFY_EMAIL}, {NULL, 0}
};
static const struct ename host_auths[] = {
    {"bearer", HOST_AUTH_BEARER}, {"x-api-key", HOST_AUTH_X_API_KEY}, {NULL, 0}
};
static const struct ename store_failures[] = {
    {"local", LIMITS_FAIL_LOCAL}, {"open", LIMITS_FAIL_OPEN}, {"closed", LIMITS_FAIL_CLOSED}, {NULL, 0}
};
static const struct ename webhook_formats[] = {{"json", 0}, {"slack", 1}, {NULL, 0}};

static const char *check_listen(const char *s);
static const char *check_template(const char *s);
static const char *check_http_url(const char *s);
static const char *check_host_name(const char *s);
static const char *check_path(const char *s);
static const char *check_server_name(const char *s);
static const char *check_redis_url(const char *s);
static const char *check_smtp_url(const char *s);
static const char *check_header(const char *s);
static const char *check_secret(const char *s);
static int sp_access_log(struct loader *, const struct field *, const struct cur *, void *);
static int sp_listen(struct loader *, const struct field *, const struct cur *, void *);
static int sp_tls_version(struct loader *, const struct field *, const struct cur *, void *);
static int sp_models(struct loader *, const struct field *, const struct cur *, void *);
static int sp_retry_on(struct loader *, const struct field *, const struct cur *, void *);
static int sp_chains(struct loader *, const struct field *, const struct cur *, void *);
static int sp_steps(struct loader *, const struct field *, const struct cur *, void *);
static int sp_notifications(struct loader *, const struct field *, const struct cur *, void *);
static int sp_labels(struct loader *, const struct field *, const struct cur *, void *);
static int sp_clients(struct loader *, const struct field *, const struct cur *, void *);
static const char *check_sha256(const char *s);

#define MS    1.0
#define SEC   1000.0
#define MIN   (60 * SEC)
#define HOUR  (60 * MIN)
#define DAY   (24 * HOUR)
#define KB    1024.0
#define MB    (1024 * KB)
#define GB    (1024 * MB)

#define OFF(m)   offsetof(struct config, m)
#define HOFF(m)  offsetof(struct cfg_host, m)
#define KOFF(m)  offsetof(struct key_tmp, m)
#define COFF(m)  offsetof(struct cfg_fallback_chain, m)
#define SOFF(m)  offsetof(struct cfg_fallback_step, m)
#define NOFF(m)  offsetof(struct notify_tmp, m)
#define CLOFF(m) offsetof(struct client_tmp, m)
#define ONLY(t)  (1u << (t))

/*
 * Every key, its type, default and range: docs/configuration.md in C.
 * Defaults are written as in policies.yaml and go through the same parsing.
 */
static const struct field fields[] = {
/*   scope     path                                 type       where                                default          lo     hi */
    {S_POLICY, "server.listen",                     T_SPECIAL, 0,                                   "127.0.0.1:8080", 0, 0, .special = sp_listen},
    {S_POLICY, "server.tls.cert",                   T_STR,     OFF(server.tls.cert),                NULL,            0, 0, .flags = FL_NONEMPTY},
    {S_POLICY, "server.tls.key",                    T_STR,     OFF(server.tls.key),                 NULL,            0, 0, .flags = FL_NONEMPTY},
    {S_POLICY, "server.tls.min_version",            T_SPECIAL, 0,                                   "'1.2'",         0, 0, .special = sp_tls_version},
    {S_POLICY, "server.tls.ciphers",                T_STR,     OFF(server.tls.ciphers),             NULL,            0, 0, .flags = FL_NONEMPTY},
    {S_POLICY, "server.tls.ciphersuites",           T_STR,     OFF(server.tls.ciphersuites),        NULL,            0, 0, .flags = FL_NONEMPTY},
    {S_POLICY, "server.tls.client_ca",              T_STR,     OFF(server.tls.client_ca),           NULL,            0, 0, .flags = FL_NONEMPTY},
    {S_POLICY, "server.workers",                    T_INT,     OFF(server.workers),                 "1",             1,     64, .flags = 0},
    {S_POLICY, "server.max_body_bytes",             T_SIZE,    OFF(server.max_body_bytes),          "4MB",           KB,    GB, .flags = 0},
    {S_POLICY, "server.max_header_bytes",           T_SIZE,    OFF(server.max_header_bytes),        "16KB",          KB,    MB, .flags = 0},
    {S_POLICY, "server.client_timeout",             T_DUR,     OFF(server.client_timeout_ms),       "60s",           100 * MS, HOUR, .flags = 0},
    {S_POLICY, "server.drain_timeout",              T_DUR,     OFF(server.drain_timeout_ms),        "30s",           0,     HOUR, .flags = 0},
    {S_POLICY, "server.log.file",                   T_STR,     OFF(server.log_file),                NULL,            0, 0, .flags = FL_NONEMPTY},
    {S_POLICY, "server.log.level",                  T_ENUM,    OFF(server.log_level),               "info",          0, 0, .names = log_levels},
    {S_POLICY, "server.log.format",                 T_ENUM,    OFF(server.log_format),              "text",          0, 0, .names = log_formats},
    {S_POLICY, "server.access_log",                 T_SPECIAL, 0,                                   NULL,            0, 0, .special = sp_access_log},
    {S_POLICY, "server.access_log.file",            T_STR,     OFF(server.access_log),              NULL,            0, 0, .flags = FL_NONEMPTY},
    {S_POLICY, "server.access_log.format",          T_ENUM,    OFF(server.access_log_format),       "text",          0, 0, .names = log_formats},

    {S_POLICY, "routing.strategy",                  T_ENUM,    OFF(routing.strategy),               "round-robin",   0, 0, .names = strategies},
    {S_POLICY, "routing.hosts_template",            T_STR,     OFF(routing.hosts_template),         "https://{name}.gaia.domains", 0, 0, .check = check_template},
    {S_POLICY, "routing.prefer_region",             T_STR,     OFF(routing.prefer_region),          NULL,            0, 0, .flags = FL_NONEMPTY},
    {S_POLICY, "routing.sticky.by",                 T_ENUM,    OFF(routing.sticky),                 NULL,            0, 0, .flags = FL_REQ, .names = sticky_by},
    {S_POLICY, "routing.sticky.header",             T_STR,     OFF(routing.sticky_header),          NULL,            0, 0, .check = check_header},
    {S_POLICY, "routing.hash_key.by",               T_ENUM,    OFF(routing.hash_key),               "user",          0, 0, .flags = FL_REQ, .names = hash_by},
    {S_POLICY, "routing.hash_key.header",           T_STR,     OFF(routing.hash_header),            NULL,            0, 0, .check = check_header},
    {S_POLICY, "routing.when_full",                 T_ENUM,    OFF(routing.when_full),              "reject",        0, 0, .names = when_full},
    {S_POLICY, "routing.passthrough",               T_STRLIST, OFF(routing.passthrough),            NULL,            0, 0, .flags = 0},
    {S_POLICY, "routing.queue_timeout",             T_DUR,     OFF(routing.queue_timeout_ms),       "5s",            0,     10 * MIN, .flags = 0},
    {S_POLICY, "routing.latency.decay",             T_DUR,     OFF(routing.latency_decay_ms),       "10s",           100 * MS, HOUR, .flags = 0},

    {S_POLICY, "models",                            T_SPECIAL, 0,                                   NULL,            0, 0, .special = sp_models},

    {S_POLICY, "retry.max_attempts",                T_INT,     OFF(retry.max_attempts),             "3",             1,     20, .flags = 0},
    {S_POLICY, "retry.backoff.type",                T_ENUM,    OFF(retry.backoff),                  "exponential",   0, 0, .names = backoffs},
    {S_POLICY, "retry.backoff.initial",             T_DUR,     OFF(retry.backoff_initial_ms),       "100ms",         0,     HOUR, .flags = 0},
    {S_POLICY, "retry.backoff.max",                 T_DUR,     OFF(retry.backoff_max_ms),           "5s",            0,     HOUR, .flags = 0},
    {S_POLICY, "retry.backoff.jitter",              T_ENUM,    OFF(retry.jitter),                   "full",          0, 0, .names = jitters},
    {S_POLICY, "retry.on",                          T_SPECIAL, 0,                                   "[network_error, timeout, 5xx, 429, 404]", 0, 0, .special = sp_retry_on},
    {S_POLICY, "retry.respect_retry_after",         T_BOOL,    OFF(retry.respect_retry_after),      "true",          0, 0, .flags = 0},
    {S_POLICY, "retry.per_try_timeout",             T_DUR,     OFF(retry.per_try_timeout_ms),       "30s",           1 * MS, HOUR, .flags = 0},
    {S_POLICY, "retry.deadline",                    T_DUR,     OFF(retry.deadline_ms),              "60s",           1 * MS, DAY, .flags = 0},
    {S_POLICY, "retry.stream_idle_timeout",         T_DUR,     OFF(retry.stream_idle_timeout_ms),   "60s",           0,     HOUR, .flags = 0},  /* 0 = off */
    {S_POLICY, "retry.response_timeout",            T_DUR,     OFF(retry.response_timeout_ms),      "0",             0,     DAY, .flags = 0},   /* 0 = off */
    {S_POLICY, "retry.budget.ratio",                T_NUM,     OFF(retry.budget_ratio),             "0.2",           0,     1, .flags = 0},
    {S_POLICY, "retry.budget.window",               T_DUR,     OFF(retry.budget_window_ms),         "10s",           SEC,   HOUR, .flags = 0},
    {S_POLICY, "retry.no_retry_header",             T_STR,     OFF(retry.no_retry_header),          NULL,            0, 0, .check = check_header},
    {S_POLICY, "retry.budget.min_retries",          T_INT,     OFF(retry.budget_min_retries),       "100",           0,     1000000, .flags = 0},

    {S_POLICY, "circuit_breaker.enabled",           T_BOOL,    OFF(breaker.enabled),                "true",          0, 0, .flags = 0},
    {S_POLICY, "circuit_breaker.failure_threshold", T_INT,     OFF(breaker.failure_threshold),      "5",             1,     1000, .flags = 0},
    {S_POLICY, "circuit_breaker.window.size",       T_INT,     OFF(breaker.window_size),            "100",           1,     100000, .flags = 0},
    {S_POLICY, "circuit_breaker.window.minimum_requests", T_INT, OFF(breaker.minimum_requests),     "10",            1,     100000, .flags = 0},
    {S_POLICY, "circuit_breaker.error_rate",        T_NUM,     OFF(breaker.error_rate),             "0.5",           0,     1, .flags = FL_EXCL_LO},
    {S_POLICY, "circuit_breaker.slow_call.latency", T_DUR,     OFF(breaker.slow_call_latency_ms),   "0",             0,     HOUR, .flags = 0},
    {S_POLICY, "circuit_breaker.slow_call.rate",    T_NUM,     OFF(breaker.slow_call_rate),         "0.5",           0,     1, .flags = FL_EXCL_LO},
    {S_POLICY, "circuit_breaker.timeout",           T_DUR,     OFF(breaker.timeout_ms),             "0",             0,     HOUR, .flags = 0},
    {S_POLICY, "circuit_breaker.reset_timeout",     T_DUR,     OFF(breaker.reset_timeout_ms),       "30s",           1 * MS, HOUR, .flags = 0},
    {S_POLICY, "circuit_breaker.half_open_requests", T_INT,    OFF(breaker.half_open_requests),     "1",             1,     1000, .flags = 0},
    {S_POLICY, "circuit_breaker.recovery.strategy", T_ENUM,    OFF(breaker.recovery),               "immediate",     0, 0, .names = recoveries},
    {S_POLICY, "circuit_breaker.recovery.duration", T_DUR,     OFF(breaker.recovery_duration_ms),   "5m",            0,     DAY, .flags = 0},
    {S_POLICY, "circuit_breaker.recovery.step",     T_NUM,     OFF(breaker.recovery_step),          "0.1",           0,     1, .flags = FL_EXCL_LO},

    {S_POLICY, "fallback.chains",                   T_SPECIAL, 0,                                   NULL,            0, 0, .special = sp_chains},

    {S_POLICY, "health_check.enabled",              T_BOOL,    OFF(health.enabled),                 "true",          0, 0, .flags = 0},
    {S_POLICY, "health_check.interval",             T_DUR,     OFF(health.interval_ms),             "10s",           100 * MS, HOUR, .flags = 0},
    {S_POLICY, "health_check.timeout",              T_DUR,     OFF(health.timeout_ms),              "2s",            1 * MS, MIN, .flags = 0},
    {S_POLICY, "health_check.path",                 T_STR,     OFF(health.path),                    "/v1/models",    0, 0, .check = check_path},
    {S_POLICY, "health_check.healthy_threshold",    T_INT,     OFF(health.healthy_threshold),       "2",             1,     100, .flags = 0},
    {S_POLICY, "health_check.unhealthy_threshold",  T_INT,     OFF(health.unhealthy_threshold),     "3",             1,     100, .flags = 0},
    {S_POLICY, "health_check.discover_models",      T_BOOL,    OFF(health.discover_models),         "false",         0, 0, .flags = 0},
    {S_POLICY, "health_check.passive",              T_BOOL,    OFF(health.passive),                 "true",          0, 0, .flags = 0},
    {S_POLICY, "health_check.ejection_base",        T_DUR,     OFF(health.ejection_base_ms),        "30s",           1 * MS, HOUR, .flags = 0},
    {S_POLICY, "health_check.ejection_max",         T_DUR,     OFF(health.ejection_max_ms),         "5m",            1 * MS, DAY, .flags = 0},
    {S_POLICY, "health_check.panic_threshold",      T_NUM,     OFF(health.panic_threshold),         "0.5",           0,     1, .flags = 0},

    {S_POLICY, "cache.enabled",                     T_BOOL,    OFF(cache.enabled),                  "false",         0, 0, .flags = 0},
    {S_POLICY, "cache.store",                       T_ENUM,    OFF(cache.store),                    "memory",        0, 0, .names = stores},
    {S_POLICY, "cache.ttl",                         T_DUR,     OFF(cache.ttl_ms),                   "5m",            100 * MS, 30 * DAY, .flags = 0},
    {S_POLICY, "cache.max_bytes",                   T_SIZE,    OFF(cache.max_bytes),                "64MB",          KB,    64 * GB, .flags = 0},
    {S_POLICY, "cache.max_entry_bytes",             T_SIZE,    OFF(cache.max_entry_bytes),          "1MB",           KB,    GB, .flags = 0},
    {S_POLICY, "cache.routes",                      T_STRLIST, OFF(cache.routes),                   NULL,            0, 0, .flags = FL_NONEMPTY},
    {S_POLICY, "cache.only_deterministic",          T_BOOL,    OFF(cache.only_deterministic),       "true",          0, 0, .flags = 0},
    {S_POLICY, "cache.per_client",                  T_BOOL,    OFF(cache.per_client),               "false",         0, 0, .flags = 0},

    {S_POLICY, "sessions.store",                    T_ENUM,    OFF(sessions.store),                 "memory",        0, 0, .names = stores},
    {S_POLICY, "sessions.ttl",                      T_DUR,     OFF(sessions.ttl_ms),                "30m",           SEC,   30 * DAY, .flags = 0},
    {S_POLICY, "sessions.max_entries",              T_INT,     OFF(sessions.max_entries),           "100000",        1,     100000000, .flags = 0},
    {S_POLICY, "sessions.keep_content",             T_BOOL,    OFF(sessions.keep_content),          "false",         0, 0, .flags = 0},
    {S_POLICY, "sessions.content_ttl",              T_DUR,     OFF(sessions.content_ttl_ms),        "10m",           100 * MS, DAY, .flags = 0},
    {S_POLICY, "sessions.content_max_bytes",        T_INT,     OFF(sessions.content_max_bytes),     "16384",         16,    60000, .flags = 0},
    {S_POLICY, "sessions.content_max_entries",      T_INT,     OFF(sessions.content_max_entries),   "10000",         1,     10000000, .flags = 0},
    {S_POLICY, "sessions.redis.url",                T_STR,     OFF(sessions.redis_url),             "redis://127.0.0.1:6379/0", 0, 0, .check = check_redis_url},
    {S_POLICY, "sessions.redis.prefix",             T_STR,     OFF(sessions.redis_prefix),          "'infergate:'",  0, 0, .flags = 0},
    {S_POLICY, "sessions.redis.timeout",            T_DUR,     OFF(sessions.redis_timeout_ms),      "200ms",         1 * MS, 10 * SEC, .flags = 0},
    {S_POLICY, "sessions.redis.username",           T_STR,     OFF(sessions.redis_username),        NULL,            0, 0, .flags = FL_NONEMPTY},
    {S_POLICY, "sessions.redis.password",           T_STR,     OFF(sessions.redis_password),        NULL,            0, 0, .flags = FL_NONEMPTY},
    {S_POLICY, "sessions.redis.sentinels",          T_STRLIST, OFF(sessions.redis_sentinels),       NULL,            0, 0, .flags = FL_NONEMPTY},
    {S_POLICY, "sessions.redis.master_name",        T_STR,     OFF(sessions.redis_master_name),     NULL,            0, 0, .flags = FL_NONEMPTY},
    {S_POLICY, "sessions.redis.sentinel_password",  T_STR,     OFF(sessions.redis_sentinel_password), NULL,          0, 0, .flags = FL_NONEMPTY},

    {S_POLICY, "alerts.window",                     T_DUR,     OFF(alerts.window_ms),               "5m",            SEC,   DAY, .flags = 0},
    {S_POLICY, "alerts.for",                        T_DUR,     OFF(alerts.for_ms),                  "1m",            0,     DAY, .flags = 0},
    {S_POLICY, "alerts.thresholds.availability",    T_NUM,     OFF(alerts.availability),            "-1",            0,     1, .flags = 0},  /* -1 = off */
    {S_POLICY, "alerts.thresholds.error_rate",      T_NUM,     OFF(alerts.error_rate),              "-1",            0,     1, .flags = 0},  /* -1 = off */
    {S_POLICY, "alerts.thresholds.latency_p99",     T_DUR,     OFF(alerts.latency_p99_ms),          "0",             0,     DAY, .flags = 0},/* 0 = off */
    {S_POLICY, "alerts.notifications",              T_SPECIAL, 0,                                   NULL,            0, 0, .special = sp_notifications},

    {S_POLICY, "usage.include_in_stream",           T_BOOL,    OFF(usage.include_in_stream),        "false",         0, 0, .flags = 0},

    {S_POLICY, "admin.token",                       T_STR,     OFF(admin.token),                    NULL,            0, 0, .flags = FL_NONEMPTY},
    {S_POLICY, "admin.client_keys",                 T_STRLIST, OFF(admin.client_keys),              NULL,            0, 0, .flags = 0},
    {S_POLICY, "clients",                           T_SPECIAL, 0,                                   NULL,            0, 0, .special = sp_clients},
    {S_POLICY, "limits.window",                     T_DUR,     OFF(limits.window_ms),               "60s",           100 * MS, HOUR, .flags = 0},
    {S_POLICY, "limits.default_max_tokens",         T_INT,     OFF(limits.default_max_tokens),      "1024",          0,     10000000, .flags = 0},
    {S_POLICY, "limits.on_store_failure",           T_ENUM,    OFF(limits.on_store_failure),        "local",         0, 0, .names = store_failures},

    /* hosts.json: an object in hosts[] */
    {S_HOST,   "name",                              T_STR,     HOFF(name),                          NULL,            0, 0, .check = check_host_name},
    {S_HOST,   "url",                               T_STR,     HOFF(url),                           NULL,            0, 0, .check = check_http_url},
    {S_HOST,   "weight",                            T_INT,     HOFF(weight),                        "1",             1,     1000, .flags = 0},
    {S_HOST,   "priority",                          T_INT,     HOFF(priority),                      "0",             0,     100, .flags = 0},
    {S_HOST,   "models",                            T_STRLIST, HOFF(models),                        NULL,            0, 0, .flags = 0},
    {S_HOST,   "containers",                        T_STRLIST, HOFF(containers),                    NULL,            0, 0, .flags = 0},
    {S_HOST,   "max_concurrent",                    T_INT,     HOFF(max_concurrent),                "0",             0,     1000000, .flags = 0},
    {S_HOST,   "region",                            T_STR,     HOFF(region),                        NULL,            0, 0, .flags = FL_NONEMPTY},
    {S_HOST,   "address",                           T_STR,     HOFF(address),                       NULL,            0, 0, .flags = FL_NONEMPTY},
    {S_HOST,   "keys",                              T_STR,     HOFF(keys),                          NULL,            0, 0, .flags = FL_NONEMPTY},
    {S_HOST,   "labels",                            T_SPECIAL, 0,                                   NULL,            0, 0, .special = sp_labels},
    {S_HOST,   "auth",                              T_ENUM,    HOFF(auth),                          "bearer",        0, 0, .names = host_auths},
    {S_HOST,   "apis",                              T_STRLIST, HOFF(apis),                          NULL,            0, 0, .flags = 0},
    {S_HOST,   "tls.ca_file",                       T_STR,     HOFF(tls.ca_file),                   NULL,            0, 0, .flags = FL_NONEMPTY},
    {S_HOST,   "tls.verify",                        T_BOOL,    HOFF(tls.verify),                    "true",          0, 0, .flags = 0},
    {S_HOST,   "tls.server_name",                   T_STR,     HOFF(tls.server_name),               NULL,            0, 0, .check = check_server_name},

    /* api-keys.json: an object in apiKeys[] */
    {S_KEY,    "key",                               T_STR,     KOFF(k.secret),                      NULL,            0, 0, .flags = FL_NONEMPTY, .check = check_secret},
    {S_KEY,    "key_file",                          T_STR,     KOFF(key_file),                      NULL,            0, 0, .flags = FL_NONEMPTY},
    {S_KEY,    "description",                       T_STR,     KOFF(k.description),                 "''",            0, 0, .flags = 0},
    {S_KEY,    "isActive",                          T_BOOL,    KOFF(k.active),                      "true",          0, 0, .flags = 0},
    {S_KEY,    "pool",                              T_STR,     KOFF(k.pool),                        NULL,            0, 0, .flags = FL_NONEMPTY},
    {S_KEY,    "hosts",                             T_STRLIST, KOFF(k.hosts),                       NULL,            0, 0, .flags = 0},
    {S_KEY,    "weight",                            T_INT,     KOFF(k.weight),                      "1",             1,     1000, .flags = 0},

    /* policies.yaml: fallback.chains[] and their steps[] */
    {S_CHAIN,  "match",                             T_STR,     COFF(match),                         NULL,            0, 0, .flags = FL_REQ | FL_NONEMPTY},
    {S_CHAIN,  "mode",                              T_ENUM,    COFF(mode),                          "sequential",    0, 0, .names = modes},
    {S_CHAIN,  "race",                              T_INT,     COFF(race),                          "2",             1,     16, .flags = 0},
    {S_CHAIN,  "stop_on_success",                   T_BOOL,    COFF(stop_on_success),               "true",          0, 0, .flags = 0},
    {S_CHAIN,  "timeout",                           T_DUR,     COFF(timeout_ms),                    "0",             0,     DAY, .flags = 0},
    {S_CHAIN,  "steps",                             T_SPECIAL, 0,                                   NULL,            0, 0, .flags = FL_REQ, .special = sp_steps},
    {S_STEP,   "model",                             T_STR,     SOFF(model),                         NULL,            0, 0, .flags = FL_NONEMPTY},
    {S_STEP,   "hosts",                             T_STRLIST, SOFF(hosts),                         NULL,            0, 0, .flags = 0},
    {S_STEP,   "timeout",                           T_DUR,     SOFF(timeout_ms),                    "0",             0,     HOUR, .flags = 0},

    /* policies.yaml: alerts.notifications[] */
    {S_NOTIFY, "type",                              T_ENUM,    NOFF(n.type),                        NULL,            0, 0, .flags = FL_REQ | FL_FIRST, .names = notify_types},
    {S_NOTIFY, "url",                               T_STR,     NOFF(n.url),                         NULL,            0, 0, .flags = FL_REQ, .only = ONLY(NOTIFY_WEBHOOK) | ONLY(NOTIFY_SLACK), .check = check_http_url},
    {S_NOTIFY, "format",                            T_ENUM,    NOFF(format),                        "json",          0, 0, .only = ONLY(NOTIFY_WEBHOOK), .names = webhook_formats},
    {S_NOTIFY, "command",                           T_STRLIST, NOFF(n.argv),                        NULL,            0, 0, .flags = FL_REQ | FL_NONEMPTY, .only = ONLY(NOTIFY_COMMAND)},
    {S_NOTIFY, "smtp_url",                          T_STR,     NOFF(n.smtp_url),                    NULL,            0, 0, .flags = FL_REQ, .only = ONLY(NOTIFY_EMAIL), .check = check_smtp_url},
    {S_NOTIFY, "from",                              T_STR,     NOFF(n.from),                        NULL,            0, 0, .flags = FL_REQ | FL_NONEMPTY, .only = ONLY(NOTIFY_EMAIL)},
    {S_NOTIFY, "to",                                T_STRLIST, NOFF(n.to),                          NULL,            0, 0, .flags = FL_REQ | FL_NONEMPTY, .only = ONLY(NOTIFY_EMAIL)},
    {S_NOTIFY, "username",                          T_STR,     NOFF(n.username),                    NULL,            0, 0, .only = ONLY(NOTIFY_EMAIL)},
    {S_NOTIFY, "password",                          T_STR,     NOFF(n.password),                    NULL,            0, 0, .only = ONLY(NOTIFY_EMAIL)},
    {S_NOTIFY, "timeout",                           T_DUR,     NOFF(n.timeout_ms),                  "5s",            1 * MS, 5 * MIN, .flags = 0},
    {S_CLIENT, "name",                              T_STR,     CLOFF(c.name),                       NULL,            0, 0, .flags = FL_REQ | FL_NONEMPTY},
    {S_CLIENT, "key",                               T_STR,     CLOFF(key),                          NULL,            0, 0, .flags = FL_NONEMPTY, .check = check_secret},
    {S_CLIENT, "key_file",                          T_STR,     CLOFF(key_file),                     NULL,            0, 0, .flags = FL_NONEMPTY},
    {S_CLIENT, "key_sha256",                        T_STR,     CLOFF(key_sha256),                   NULL,            0, 0, .check = check_sha256},
    {S_CLIENT, "cert_subject",                      T_STR,     CLOFF(c.cert_subject),               NULL,            0, 0, .flags = FL_NONEMPTY},
    {S_CLIENT, "models",                            T_STRLIST, CLOFF(c.models),                     NULL,            0, 0, .flags = FL_NONEMPTY},
    {S_CLIENT, "limits.rpm",                        T_INT,     CLOFF(rpm),                          "0",             0,     1000000000, .flags = 0},
    {S_CLIENT, "limits.tpm",                        T_INT,     CLOFF(tpm),                          "0",             0,     2000000000, .flags = 0},
    {S_CLIENT, "limits.max_concurrent",             T_INT,     CLOFF(max_concurrent),               "0",             0,     1000000, .flags = 0},
    {S_CLIENT, "limits.tokens_per_day",             T_INT,     CLOFF(per_day),                      "0",             0,     2000000000, .flags = 0},
    {S_CLIENT, "limits.tokens_per_month",           T_INT,     CLOFF(per_month),                    "0",             0,     2000000000, .flags = 0},
};

#define NFIELDS (sizeof(fields) / sizeof(fields[0]))

static const struct field *field_find(enum scope sc, const char *path)
{
    size_t i;

    for (i = 0; i < NFIELDS; i++)
        if (fields[i].scope == sc && strcmp(fields[i].path, path) == 0)
            return &fields[i];
    return NULL;
}

/* The rest of f->path after "prefix.", or NULL when f is not under prefix. */
static const char *field_under(const struct field *f, const char *prefix)
{
    size_t n = strlen(prefix);

    if (n == 0)
        return f->path;
    if (strncmp(f->path, prefix, n) != 0 || f->path[n] != '.')
        return NULL;
    return f->path + n + 1;
}

static int field_is_prefix(enum scope sc, const char *path)
{
    size_t i;

    for (i = 0; i < NFIELDS; i++)
        if (fields[i].scope == sc && field_under(&fields[i], path))
            return 1;
    return 0;
}

static void *at(void *base, size_t off)
{
    return (char *)base + off;
}

/* ---- string checks ----------------------------------------------------- */

static const char *check_port(const char *p)
{
    long port;
    char *end;

    if (*p < '0' || *p > '9')
        return "expected ADDR:PORT or [V6ADDR]:PORT";
    errno = 0;
    port = strtol(p, &end, 10);
    if (*end != '\0' || errno || port < 1 || port > 65535)
        return "the port must be between 1 and 65535";
    return NULL;
}

static const char *check_listen(const char *s)
{
    const char *colon;

    if (s[0] == '[') {
        const char *rb = strchr(s, ']');
        if (rb == NULL || rb == s + 1 || rb[1] != ':')
            return "expected ADDR:PORT or [V6ADDR]:PORT";
        return check_port(rb + 2);
    }
    colon = strrchr(s, ':');
    if (colon == NULL || colon == s || memchr(s, ':', (size_t)(colon - s)))
        return "expected ADDR:PORT or [V6ADDR]:PORT";
    return check_port(colon + 1);
}

/* Length of the scheme prefix for http:// or https://, else 0. */
static size_t http_scheme(const char *s)
{
    if (strncasecmp(s, "http://", 7) == 0)
        return 7;
    if (strncasecmp(s, "https://", 8) == 0)
        return 8;
    return 0;
}

static const char *check_http_url(const char *s)
{
    size_t n = http_scheme(s);
    const char *p;

    if (n == 0)
        return "expected an http:// or https:// URL";
    for (p = s; *p; p++)
        if ((unsigned char)*p <= 0x20 || *p == 0x7f)
            return "a URL must not contain spaces or control characters";
    if (s[n] == '\0' || s[n] == '/' || s[n] == '?' || s[n] == '#')
        return "the URL has no host";
    if (strpbrk(s, "?#"))
        return "a base URL must not have a query or a fragment";
    return NULL;
}

static const char *check_template(const char *s)
{
    if (strstr(s, "{name}") == NULL)
        return "must contain \"{name}\"";
    return check_http_url(s);
}

static int host_name_ok(const char *s, int colon)
{
    const char *p;

    if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9')))
        return 0;
    for (p = s; *p; p++) {
        char c = *p;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-' || (colon && c == ':')))
            return 0;
    }
    return 1;
}

/* A decimal port 1..65535, without leading zeros. */
static int port_ok(const char *s, size_t n)
{
    unsigned long v = 0;
    size_t i;

    if (n == 0 || n > 5 || s[0] == '0')
        return 0;
    for (i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return 0;
        v = v * 10 + (unsigned long)(s[i] - '0');
    }
    return v <= 65535;
}

/* "[v6]" or "[v6]:port" over n bytes; 0 when it is not one. */
static int v6_authority_ok(const char *s, size_t n)
{
    const char *end = memchr(s, ']', n), *p;

    if (n < 3 || s[0] != '[' || end == NULL || memchr(s, ':', (size_t)(end - s)) == NULL)
        return 0;
    for (p = s + 1; p < end; p++)
        if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f') || (*p >= 'A' && *p <= 'F')
              || *p == ':' || *p == '.'))
            return 0;
    if (end + 1 == s + n)
        return 1;
    return end[1] == ':' && port_ok(end + 2, (size_t)(s + n - end - 2));
}

/* A bare entry of hosts[]: "name", "name:port", "ip:port", "[v6]" or
 * "[v6]:port" (docs/configuration.md; the schema's bareName). */
static int bare_host_ok(const char *s)
{
    const char *colon = strchr(s, ':');

    if (s[0] == '[')
        return v6_authority_ok(s, strlen(s));
    if (colon == NULL)
        return host_name_ok(s, 0);
    return host_name_ok(s, 1) && strchr(colon + 1, ':') == NULL
           && port_ok(colon + 1, strlen(colon + 1));
}

/* The host[:port] of a URL made from hosts_template: a DNS name or IPv4
 * address with an optional port, or a bracketed IPv6 one. */
static int template_authority_ok(const char *url)
{
    const char *p = url + http_scheme(url);
    size_t n = strcspn(p, "/?#");
    const char *at = memchr(p, '@', n), *colon;

    if (at) {
        n -= (size_t)(at + 1 - p);
        p = at + 1;
    }
    if (n > 0 && p[0] == '[')
        return v6_authority_ok(p, n);
    colon = memchr(p, ':', n);
    if (colon == NULL)
        return n > 0;
    return colon > p && memchr(colon + 1, ':', (size_t)(p + n - colon - 1)) == NULL
           && port_ok(colon + 1, (size_t)(p + n - colon - 1));
}

static const char *check_host_name(const char *s)
{
    if (!host_name_ok(s, 1))
        return "a host name is letters, digits, '.', '_', '-' and ':', starting with a letter or digit";
    return NULL;
}

static const char *check_server_name(const char *s)
{
    if (!host_name_ok(s, 0) || strchr(s, '_'))
        return "a DNS name: letters, digits, '.' and '-'";
    return NULL;
}

static const char *check_path(const char *s)
{
    const char *p;

    if (s[0] != '/')
        return "must start with \"/\"";
    for (p = s; *p; p++)
        if ((unsigned char)*p <= 0x20 || *p == 0x7f)
            return "must not contain spaces or control characters";
    return NULL;
}

static const char *check_redis_url(const char *s)
{
    /* one parser for -t and runtime (session_redis.c, through the hooks) */
    return hooks.redis_url_problem ? hooks.redis_url_problem(s) : NULL;
}

static const char *check_smtp_url(const char *s)
{
    if ((strncasecmp(s, "smtp://", 7) == 0 && s[7]) || (strncasecmp(s, "smtps://", 8) == 0 && s[8]))
        return NULL;
    return "expected an smtp:// or smtps:// URL";
}

static const char *check_header(const char *s)
{
    const char *p;

    if (*s == '\0')
        return "must not be empty";
    for (p = s; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              strchr("!#$%&'*+-.^_`|~", *p)))
            return "not a valid HTTP header name";
    return NULL;
}

/* Never quotes the secret. */
static const char *check_secret(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x21 || (unsigned char)*s > 0x7e)
            return "a key must be printable ASCII without spaces or control characters";
    return NULL;
}

/* ---- leaves ------------------------------------------------------------ */

static int range_err(struct loader *ld, const struct field *f, const struct cur *c)
{
    char lo[32], hi[32];

    if (f->type == T_DUR) {
        fmt_duration(lo, sizeof(lo), f->lo);
        fmt_duration(hi, sizeof(hi), f->hi);
    } else if (f->type == T_SIZE) {
        fmt_size(lo, sizeof(lo), f->lo);
        fmt_size(hi, sizeof(hi), f->hi);
    } else {
        snprintf(lo, sizeof(lo), "%.15g", f->lo);
        snprintf(hi, sizeof(hi), "%.15g", f->hi);
    }
    if (f->flags & FL_EXCL_LO)
        cerr(ld, c, "must be greater than %s and at most %s", lo, hi);
    else
        cerr(ld, c, "must be between %s and %s", lo, hi);
    return -1;
}

static int in_range(struct loader *ld, const struct field *f, double x)
{
    if (ld->in_defaults)
        return 1;
    if (f->flags & FL_EXCL_LO)
        return x > f->lo && x <= f->hi;
    return x >= f->lo && x <= f->hi;
}

/* Milliseconds of a duration value; INT64_MIN when it is not one. */
static int64_t duration_of(const json_t *v)
{
    if (json_is_string(v)) {
        int64_t ms = config_parse_duration(json_string_value(v));
        return ms < 0 ? INT64_MIN : ms;
    }
    if (json_is_integer(v)) {
        json_int_t x = json_integer_value(v);
        if (x > 1000000000000LL || x < -1000000000000LL)
            return INT64_MIN;
        return (int64_t)x * 1000;
    }
    if (json_is_real(v)) {
        double x = json_real_value(v) * 1000;
        if (!(x > -1e15 && x < 1e15))
            return INT64_MIN;
        return (int64_t)(x < 0 ? x - 0.5 : x + 0.5);
    }
    return INT64_MIN;
}

static int64_t size_of(const json_t *v)
{
    if (json_is_string(v)) {
        int64_t n = config_parse_size(json_string_value(v));
        return n < 0 ? INT64_MIN : n;
    }
    if (json_is_integer(v))
        return (int64_t)json_integer_value(v);
    return INT64_MIN;
}

static int enum_lookup(const struct ename *names, const char *s, int *out)
{
    for (; names->name; names++) {
        if (strcmp(names->name, s) == 0) {
            *out = names->value;
            return 0;
        }
    }
    return -1;
}

static int enum_err(struct loader *ld, const struct ename *names, const struct cur *c)
{
    const char *cands[16], *s;
    char list[256] = "", dym[128];
    size_t n = 0, len = 0;

    for (; names[n].name && n < 16; n++) {
        cands[n] = names[n].name;
        len += (size_t)snprintf(list + len, len < sizeof(list) ? sizeof(list) - len : 0,
                                "%s%s", n ? ", " : "", names[n].name);
        if (len >= sizeof(list))
            len = sizeof(list) - 1;
    }
    if (json_is_string(c->v) && (s = suggest(json_string_value(c->v), cands, n)) != NULL) {
        cerr(ld, c, "unknown value \"%.64s\"%s", json_string_value(c->v),
             did_you_mean(dym, sizeof(dym), s));
        return -1;
    }
    if (json_is_string(c->v))
        cerr(ld, c, "unknown value \"%.64s\", expected one of: %s", json_string_value(c->v), list);
    else
        cerr(ld, c, "expected one of: %s", list);
    return -1;
}

/* A list of non-empty strings; on any problem *l is left unchanged. */
static int parse_strlist(struct loader *ld, const struct cur *c, unsigned flags,
                         struct cfg_strlist *l)
{
    size_t i, n;
    int bad = 0;

    if (!json_is_array(c->v)) {
        cerr(ld, c, "%s of strings", want_list(c));
        return -1;
    }
    n = json_array_size(c->v);
    if (n == 0 && (flags & FL_NONEMPTY)) {
        cerr(ld, c, "must not be empty");
        return -1;
    }
    for (i = 0; i < n; i++) {
        struct cur ic;
        cur_elem(c, i, &ic);
        if (!json_is_string(ic.v)) {
            cerr(ld, &ic, "%s", want_string(&ic));
            bad = 1;
        } else if (json_string_length(ic.v) == 0) {
            cerr(ld, &ic, "must not be empty");
            bad = 1;
        }
    }
    if (bad)
        return -1;
    cfg_strlist_free(l);
    l->v = xcalloc(n, sizeof(char *));
    for (i = 0; i < n; i++)
        l->v[i] = xstrdup(json_string_value(json_array_get(c->v, i)));
    l->n = n;
    return 0;
}

/* Parses one value into base + f->off. 0 on success, -1 after an error. */
static int parse_leaf(struct loader *ld, const struct field *f, const struct cur *c, void *base)
{
    json_t *v;
    int rc = 0;

    switch (f->type) {
    case T_SPECIAL:
        return f->special(ld, f, c, base);
    case T_STRLIST:
        return parse_strlist(ld, c, f->flags, at(base, f->off));
    case T_STR: {
        char **dst = at(base, f->off);
        const char *msg;
        if (!json_is_string(c->v)) {
            cerr(ld, c, "%s", want_string(c));
            return -1;
        }
        if ((f->flags & FL_NONEMPTY) && json_string_length(c->v) == 0) {
            cerr(ld, c, "must not be empty");
            return -1;
        }
        if (f->check && (msg = f->check(json_string_value(c->v))) != NULL) {
            cerr(ld, c, "%s", msg);
            return -1;
        }
        free(*dst);
        *dst = xstrdup(json_string_value(c->v));
        return 0;
    }
    case T_ENUM: {
        int x;
        if (!json_is_string(c->v) || enum_lookup(f->names, json_string_value(c->v), &x) < 0)
            return enum_err(ld, f->names, c);
        *(int *)at(base, f->off) = x;
        return 0;
    }
    default:
        break;
    }

    v = typed(c);
    switch (f->type) {
    case T_INT:
        if (!json_is_integer(v)) {
            cerr(ld, c, "expected an integer");
            rc = -1;
        } else if (!in_range(ld, f, (double)json_integer_value(v))) {
            rc = range_err(ld, f, c);
        } else {
            *(int *)at(base, f->off) = (int)json_integer_value(v);
        }
        break;
    case T_BOOL:
        if (!json_is_boolean(v)) {
            cerr(ld, c, "expected true or false");
            rc = -1;
        } else {
            *(int *)at(base, f->off) = json_is_true(v);
        }
        break;
    case T_NUM:
        if (!json_is_number(v)) {
            cerr(ld, c, "expected a number");
            rc = -1;
        } else if (!in_range(ld, f, json_number_value(v))) {
            rc = range_err(ld, f, c);
        } else {
            *(double *)at(base, f->off) = json_number_value(v);
        }
        break;
    case T_DUR: {
        int64_t ms = duration_of(v);
        if (ms == INT64_MIN) {
            cerr(ld, c, "expected a duration like \"250ms\" or \"2s\"");
            rc = -1;
        } else if (!in_range(ld, f, (double)ms)) {
            rc = range_err(ld, f, c);
        } else {
            *(int64_t *)at(base, f->off) = ms;
        }
        break;
    }
    case T_SIZE: {
        int64_t n = size_of(v);
        if (n == INT64_MIN) {
            cerr(ld, c, "expected a size like \"64KB\" or \"1MB\"");
            rc = -1;
        } else if (!in_range(ld, f, (double)n)) {
            rc = range_err(ld, f, c);
        } else {
            *(size_t *)at(base, f->off) = (size_t)n;
        }
        break;
    }
    default:
        break;
    }
    json_decref(v);
    return rc;
}

/* ---- defaults ---------------------------------------------------------- */

/* Parses every default of the table once per load (ld->defdoc[i]). */
static void defaults_parse(struct loader *ld)
{
    size_t i;

    ld->defdoc = xcalloc(NFIELDS, sizeof(*ld->defdoc));
    for (i = 0; i < NFIELDS; i++) {
        const char *def = fields[i].def;
        size_t j;
        if (def == NULL)
            continue;
        if (doc_parse_yaml(&ld->defdoc[i], def, strlen(def)) < 0 || ld->defdoc[i].root == NULL)
            err_at(ld, FILE_DEFAULTS, ld->defdoc[i].root_pos, fields[i].path,
                   "bad built-in default");
        for (j = 0; j < ld->defdoc[i].nerrs; j++)
            err_at(ld, FILE_DEFAULTS, ld->defdoc[i].errs[j].pos, fields[i].path, "%s",
                   ld->defdoc[i].errs[j].msg);
    }
}

static void defaults_apply(struct loader *ld, enum scope sc, void *base)
{
    size_t i;

    for (i = 0; i < NFIELDS; i++) {
        struct cur c;
        if (fields[i].scope != sc || fields[i].def == NULL || ld->defdoc[i].root == NULL)
            continue;
        cur_root(&c, FILE_DEFAULTS, &ld->defdoc[i]);
        snprintf(c.path, sizeof(c.path), "%s", fields[i].path);
        ld->in_defaults = 1;
        parse_leaf(ld, &fields[i], &c, base);
        ld->in_defaults = 0;
    }
}

/* ---- the walker -------------------------------------------------------- */

static const char *type_name_of(unsigned mask)
{
    size_t i;

    for (i = 0; notify_types[i].name; i++)
        if (mask == ONLY(notify_types[i].value))
            return notify_types[i].name;
    return "?";
}

static void unknown_key(struct loader *ld, const struct cur *c, const char *key,
                        enum scope sc, const char *prefix, unsigned mask)
{
    const char *cands[64], *s;
    char comp[64][48];
    size_t i, n = 0;

    for (i = 0; i < NFIELDS && n < 64; i++) {
        const char *rest;
        size_t len;
        if (fields[i].scope != sc || (rest = field_under(&fields[i], prefix)) == NULL)
            continue;
        if (fields[i].only && !(fields[i].only & mask))
            continue;
        len = strcspn(rest, ".");
        if (len >= sizeof(comp[0]))
            continue;
        memcpy(comp[n], rest, len);
        comp[n][len] = '\0';
        cands[n] = comp[n];
        n++;
    }
    s = suggest(key, cands, n);
    unknown_key_err(ld, c, key, s);
}

/*
 * Checks object c against the rows of scope sc under `prefix` (a dotted path
 * relative to the scope's object, "" at its top), parsing each member into
 * base. `mask` filters rows by `only`; `required` turns on FL_REQ checks.
 */
static void walk(struct loader *ld, const struct cur *c, enum scope sc, const char *prefix,
                 void *base, unsigned mask, int required)
{
    const char *key;
    json_t *val;
    size_t i;

    if (!json_is_object(c->v)) {
        cerr(ld, c, "%s", want_map(c));
        return;
    }
    json_object_foreach(c->v, key, val) {
        char rel[DOC_PATH_MAX];
        const struct field *f;
        struct cur cc;

        snprintf(rel, sizeof(rel), "%s%s%s", prefix, *prefix ? "." : "", key);
        cur_member(c, key, val, &cc);
        f = strchr(key, '.') ? NULL : field_find(sc, rel);
        if (f != NULL) {
            if (f->flags & FL_FIRST)
                continue;
            if (f->only && !(f->only & mask)) {
                kerr(ld, c, key, "not used by notifications of type \"%s\"", type_name_of(mask));
                continue;
            }
            if (f->type == T_SPECIAL && json_is_null(val))
                continue;
            parse_leaf(ld, f, &cc, base);
        } else if (!strchr(key, '.') && field_is_prefix(sc, rel)) {
            if (!json_is_null(val))     /* an empty section: defaults */
                walk(ld, &cc, sc, rel, base, mask, 1);
        } else {
            unknown_key(ld, c, key, sc, prefix, mask);
        }
    }
    if (!required)
        return;
    for (i = 0; i < NFIELDS; i++) {
        const struct field *f = &fields[i];
        const char *rest;
        if (f->scope != sc || !(f->flags & FL_REQ) || (f->only && !(f->only & mask)))
            continue;
        if ((rest = field_under(f, prefix)) == NULL || strchr(rest, '.'))
            continue;
        if (json_object_get(c->v, rest) == NULL)
            merr(ld, c, rest, "missing required key");
    }
}

/* ---- special shapes ---------------------------------------------------- */

static void listeners_free(struct config *cfg)
{
    size_t i;

    for (i = 0; i < cfg->server.nlisteners; i++)
        free(cfg->server.listeners[i].address);
    free(cfg->server.listeners);
    cfg->server.listeners = NULL;
    cfg->server.nlisteners = 0;
}

/* One entry of server.listen: "ADDR:PORT" or {address, tls}. tls is -1
 * when not given (TLS when server.tls is set, see finish_policies). */
static int listen_entry(struct loader *ld, const struct cur *c, struct cfg_listener *l)
{
    const char *msg = NULL, *key;
    struct cur ac;
    json_t *v;
    int bad = 0;

    l->tls = -1;
    if (json_is_string(c->v)) {
        if ((msg = check_listen(json_string_value(c->v))) != NULL) {
            cerr(ld, c, "%s", msg);
            return -1;
        }
        l->address = xstrdup(json_string_value(c->v));
        return 0;
    }
    if (!json_is_object(c->v)) {
        cerr(ld, c, "%s", want_string(c));    /* the usual mistake: a bare port */
        return -1;
    }
    json_object_foreach(c->v, key, v) {
        if (strcmp(key, "address") != 0 && strcmp(key, "tls") != 0) {
            static const char *const cands[] = {"address", "tls"};
            unknown_key_err(ld, c, key, suggest(key, cands, 2));
            bad = 1;
        }
    }
    if (!cur_get(c, "address", &ac)) {
        merr(ld, c, "address", "missing required key");
        return -1;
    }
    if (!json_is_string(ac.v) || (msg = check_listen(json_string_value(ac.v))) != NULL) {
        cerr(ld, &ac, "%s", json_is_string(ac.v) ? msg : "expected \"ADDR:PORT\"");
        return -1;
    }
    if (cur_get(c, "tls", &ac)) {
        json_t *b = typed(&ac);
        if (!json_is_boolean(b)) {
            cerr(ld, &ac, "expected true or false");
            bad = 1;
        } else {
            l->tls = json_is_true(b);
        }
        json_decref(b);
    }
    if (bad)
        return -1;
    l->address = xstrdup(json_string_value(json_object_get(c->v, "address")));
    return 0;
}

/* server.listen: one entry or a list of them. */
static int sp_listen(struct loader *ld, const struct field *f, const struct cur *c, void *base)
{
    struct config *cfg = base;
    struct cfg_listener *ls;
    size_t i, n = 1;
    int bad = 0;

    (void)f;
    if (json_is_array(c->v)) {
        n = json_array_size(c->v);
        if (n == 0) {
            cerr(ld, c, "must not be empty");
            return -1;
        }
        if (n > CFG_MAX_LISTENERS) {
            cerr(ld, c, "at most %d listeners", CFG_MAX_LISTENERS);
            return -1;
        }
    }
    ls = xcalloc(n, sizeof(*ls));
    for (i = 0; i < n; i++) {
        struct cur ec;
        if (json_is_array(c->v))
            cur_elem(c, i, &ec);
        else
            ec = *c;
        if (listen_entry(ld, &ec, &ls[i]) < 0)
            bad = 1;
    }
    for (i = 0; !bad && i < n; i++) {
        size_t j;
        for (j = 0; j < i; j++)
            if (strcmp(ls[i].address, ls[j].address) == 0) {
                struct cur ec;
                cur_elem(c, i, &ec);
                cerr(ld, &ec, "\"%s\" is listed twice", ls[i].address);
                bad = 1;
            }
    }
    if (bad) {
        for (i = 0; i < n; i++)
            free(ls[i].address);
        free(ls);
        return -1;
    }
    listeners_free(cfg);
    cfg->server.listeners = ls;
    cfg->server.nlisteners = n;
    free(cfg->server.listen);
    cfg->server.listen = xstrdup(ls[0].address);
    return 0;
}

/* server.tls.min_version: "1.2" or "1.3" (a bare YAML number too). */
static int sp_tls_version(struct loader *ld, const struct field *f, const struct cur *c, void *base)
{
    struct config *cfg = base;
    json_t *v = typed(c);
    const char *s = json_is_string(c->v) ? json_string_value(c->v) : NULL;
    int ver = 0;

    (void)f;
    if (s && (strcmp(s, "1.2") == 0 || strcmp(s, "TLSv1.2") == 0))
        ver = 12;
    else if (s && (strcmp(s, "1.3") == 0 || strcmp(s, "TLSv1.3") == 0))
        ver = 13;
    else if (json_is_real(v) && json_real_value(v) == 1.2)
        ver = 12;
    else if (json_is_real(v) && json_real_value(v) == 1.3)
        ver = 13;
    json_decref(v);
    if (ver == 0) {
        cerr(ld, c, "expected \"1.2\" or \"1.3\"");
        return -1;
    }
    cfg->server.tls.min_version = ver;
    return 0;
}

static int sp_access_log(struct loader *ld, const struct field *f, const struct cur *c, void *base)
{
    struct config *cfg = base;

    (void)f;
    if (json_is_string(c->v)) {
        if (json_string_length(c->v) == 0) {
            cerr(ld, c, "must not be empty (write \"off\" to turn the access log off)");
            return -1;
        }
        free(cfg->server.access_log);
        cfg->server.access_log = xstrdup(json_string_value(c->v));
        return 0;
    }
    if (json_is_object(c->v)) {
        /* A mapping without `file` logs to stdout. */
        free(cfg->server.access_log);
        cfg->server.access_log = xstrdup("-");
        walk(ld, c, S_POLICY, "server.access_log", base, ~0u, 1);
        return 0;
    }
    cerr(ld, c, "expected a file name, \"-\", \"off\" or a mapping with file and format");
    return -1;
}

static int sp_models(struct loader *ld, const struct field *f, const struct cur *c, void *base)
{
    struct config *cfg = base;
    const char *name;
    json_t *v;

    (void)f;
    if (!json_is_object(c->v)) {
        cerr(ld, c, "%s of names to a model or a list of models", want_map(c));
        return -1;
    }
    json_object_foreach(c->v, name, v) {
        struct cfg_model_group *g;
        struct cfg_strlist models = {NULL, 0};
        struct cur mc;

        cur_member(c, name, v, &mc);
        if (json_is_string(v)) {
            if (json_string_length(v) == 0) {
                cerr(ld, &mc, "must not be empty");
                continue;
            }
            models.v = xcalloc(1, sizeof(char *));
            models.v[0] = xstrdup(json_string_value(v));
            models.n = 1;
        } else if (json_is_array(v)) {
            if (parse_strlist(ld, &mc, FL_NONEMPTY, &models) < 0)
                continue;
        } else {
            cerr(ld, &mc, "expected a model name or a list of model names");
            continue;
        }
        cfg->models = grow(cfg->models, cfg->nmodels, sizeof(*cfg->models));
        g = &cfg->models[cfg->nmodels++];
        g->name = xstrdup(name);
        g->models = models;
    }
    return 0;
}

static int sp_retry_on(struct loader *ld, const struct field *f, const struct cur *c, void *base)
{
    static const struct { const char *name; unsigned bit; } tokens[] = {
        {"network_error", RETRY_ON_NETWORK_ERROR}, {"timeout", RETRY_ON_TIMEOUT},
        {"5xx", RETRY_ON_5XX}, {"4xx", RETRY_ON_4XX}
    };
    static const char *const names[] = {"network_error", "timeout", "5xx", "4xx"};
    struct config *cfg = base;
    unsigned on = 0;
    int *codes = NULL;
    size_t ncodes = 0, i, k;
    int bad = 0;

    (void)f;
    if (!json_is_array(c->v)) {
        cerr(ld, c, "%s like [network_error, timeout, 5xx, 429]", want_list(c));
        return -1;
    }
    for (i = 0; i < json_array_size(c->v); i++) {
        struct cur ic;
        json_t *v;
        long code = -1;
        char dym[128];

        cur_elem(c, i, &ic);
        v = typed(&ic);
        if (json_is_integer(v)) {
            code = (long)json_integer_value(v);
        } else if (json_is_string(v)) {
            const char *s = json_string_value(v);
            for (k = 0; k < 4; k++)
                if (strcmp(s, tokens[k].name) == 0)
                    break;
            if (k < 4) {
                on |= tokens[k].bit;
            } else if (strlen(s) == 3 && strspn(s, "0123456789") == 3) {
                code = strtol(s, NULL, 10);
            } else {
                const char *sug = suggest(s, names, 4);
                if (sug)
                    cerr(ld, &ic, "unknown value \"%.64s\"%s", s, did_you_mean(dym, sizeof(dym), sug));
                else
                    cerr(ld, &ic, "unknown value \"%.64s\", expected network_error, timeout, 5xx, 4xx or a status code", s);
                bad = 1;
            }
        } else {
            cerr(ld, &ic, "expected network_error, timeout, 5xx, 4xx or a status code");
            bad = 1;
        }
        json_decref(v);
        if (code == -1)
            continue;
        if (code < 400 || code > 599) {
            cerr(ld, &ic, "a status code must be between 400 and 599");
            bad = 1;
            continue;
        }
        for (k = 0; k < ncodes; k++)
            if (codes[k] == code)
                break;
        if (k == ncodes) {
            codes = grow(codes, ncodes, sizeof(*codes));
            codes[ncodes++] = (int)code;
        }
    }
    if (bad) {
        free(codes);
        return -1;
    }
    free(cfg->retry.on_codes);
    cfg->retry.on = on;
    cfg->retry.on_codes = codes;
    cfg->retry.non_codes = ncodes;
    return 0;
}

static void step_free(struct cfg_fallback_step *s)
{
    free(s->model);
    cfg_strlist_free(&s->hosts);
}

static void chain_free(struct cfg_fallback_chain *ch)
{
    size_t i;

    free(ch->match);
    for (i = 0; i < ch->nsteps; i++)
        step_free(&ch->steps[i]);
    free(ch->steps);
}

/* Host names listed at c (an array already parsed into l) to check later. */
static void ref_hosts(struct loader *ld, const struct cur *c, const struct cfg_strlist *l)
{
    size_t i;

    if (!json_is_array(c->v) || json_array_size(c->v) != l->n)
        return;
    for (i = 0; i < l->n; i++) {
        struct cur ic;
        cur_elem(c, i, &ic);
        add_ref(ld, REF_HOST, &ic, l->v[i]);
    }
}

static int sp_steps(struct loader *ld, const struct field *f, const struct cur *c, void *base)
{
    struct cfg_fallback_chain *ch = base;
    size_t i, n;

    (void)f;
    if (!json_is_array(c->v)) {
        cerr(ld, c, "%s of steps", want_list(c));
        return -1;
    }
    if ((n = json_array_size(c->v)) == 0) {
        cerr(ld, c, "must not be empty");
        return -1;
    }
    for (i = 0; i < n; i++) {
        struct cfg_fallback_step st;
        struct cur sc, hc;

        cur_elem(c, i, &sc);
        memset(&st, 0, sizeof(st));
        defaults_apply(ld, S_STEP, &st);
        walk(ld, &sc, S_STEP, "", &st, ~0u, 1);
        if (!json_is_object(sc.v)) {
            step_free(&st);
            continue;
        }
        if (st.model == NULL && st.hosts.n == 0 &&
            !json_object_get(sc.v, "model") && !json_object_get(sc.v, "hosts"))
            cerr(ld, &sc, "a step needs \"model\" or \"hosts\"");
        if (cur_get(&sc, "hosts", &hc))
            ref_hosts(ld, &hc, &st.hosts);
        ch->steps = grow(ch->steps, ch->nsteps, sizeof(*ch->steps));
        ch->steps[ch->nsteps++] = st;
    }
    return 0;
}

static int sp_chains(struct loader *ld, const struct field *f, const struct cur *c, void *base)
{
    struct config *cfg = base;
    size_t i;

    (void)f;
    if (!json_is_array(c->v)) {
        cerr(ld, c, "%s of chains", want_list(c));
        return -1;
    }
    for (i = 0; i < json_array_size(c->v); i++) {
        struct cfg_fallback_chain ch;
        struct cur cc;

        cur_elem(c, i, &cc);
        memset(&ch, 0, sizeof(ch));
        defaults_apply(ld, S_CHAIN, &ch);
        walk(ld, &cc, S_CHAIN, "", &ch, ~0u, 1);
        if (!json_is_object(cc.v)) {
            chain_free(&ch);
            continue;
        }
        cfg->fallback.chains = grow(cfg->fallback.chains, cfg->fallback.nchains,
                                    sizeof(*cfg->fallback.chains));
        cfg->fallback.chains[cfg->fallback.nchains++] = ch;
    }
    return 0;
}

static void notify_free(struct cfg_notify *n)
{
    free(n->url);
    cfg_strlist_free(&n->argv);
    free(n->smtp_url);
    free(n->from);
    cfg_strlist_free(&n->to);
    free(n->username);
    free(n->password);
}

static int sp_notifications(struct loader *ld, const struct field *f, const struct cur *c, void *base)
{
    const struct field *ftype = field_find(S_NOTIFY, "type");
    struct config *cfg = base;
    size_t i;

    (void)f;
    if (!json_is_array(c->v)) {
        cerr(ld, c, "%s of notifications", want_list(c));
        return -1;
    }
    for (i = 0; i < json_array_size(c->v); i++) {
        struct notify_tmp nt;
        struct cur nc, tc;
        unsigned mask = ~0u;
        int known = 0;

        cur_elem(c, i, &nc);
        if (!json_is_object(nc.v)) {
            cerr(ld, &nc, "%s", want_map(&nc));
            continue;
        }
        memset(&nt, 0, sizeof(nt));
        defaults_apply(ld, S_NOTIFY, &nt);
        if (!cur_get(&nc, "type", &tc))
            merr(ld, &nc, "type", "missing required key");
        else if (parse_leaf(ld, ftype, &tc, &nt) == 0)
            known = 1;
        if (known)
            mask = ONLY(nt.n.type);
        walk(ld, &nc, S_NOTIFY, "", &nt, mask, known);
        if (nt.n.type == NOTIFY_WEBHOOK && nt.format == 1)
            nt.n.type = NOTIFY_SLACK;
        cfg->alerts.notify = grow(cfg->alerts.notify, cfg->alerts.nnotify, sizeof(*cfg->alerts.notify));
        cfg->alerts.notify[cfg->alerts.nnotify++] = nt.n;
    }
    return 0;
}

static int sp_labels(struct loader *ld, const struct field *f, const struct cur *c, void *base)
{
    struct cfg_host *h = base;
    const char *name;
    json_t *v;

    (void)f;
    if (!json_is_object(c->v)) {
        cerr(ld, c, "%s of names to strings", want_map(c));
        return -1;
    }
    json_object_foreach(c->v, name, v) {
        struct cur lc;
        cur_member(c, name, v, &lc);
        if (!json_is_string(v)) {
            cerr(ld, &lc, "%s", want_string(&lc));
            continue;
        }
        h->labels = grow(h->labels, h->nlabels, sizeof(*h->labels));
        h->labels[h->nlabels].name = xstrdup(name);
        h->labels[h->nlabels].value = xstrdup(json_string_value(v));
        h->nlabels++;
    }
    return 0;
}

/* ---- ${NAME} ----------------------------------------------------------- */

static int env_name_ok(const char *s, size_t n)
{
    size_t i;

    if (n == 0 || (s[0] >= '0' && s[0] <= '9'))
        return 0;
    for (i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
              (s[i] >= '0' && s[i] <= '9') || s[i] == '_'))
            return 0;
    return 1;
}

/* Expands one string value in place; reports every unset variable. */
static void interpolate_string(struct loader *ld, const struct cur *c)
{
    const char *s = json_string_value(c->v), *p;
    size_t cap, n = 0;
    char *out;
    int bad = 0;

    if (strchr(s, '$') == NULL)
        return;
    cap = strlen(s) + 1;
    out = xcalloc(1, cap);
    for (p = s; *p; ) {
        const char *val, *end;
        char name[128];
        size_t need;

        if (p[0] == '$' && p[1] == '$' && p[2] == '{') {
            val = "${";
            p += 3;
        } else if (p[0] == '$' && p[1] == '{') {
            if ((end = strchr(p + 2, '}')) == NULL) {
                cerr(ld, c, "unterminated \"${\" (write \"$${\" for a literal \"${\")");
                bad = 1;
                break;
            }
            if (!env_name_ok(p + 2, (size_t)(end - p - 2)) || end - p - 2 >= (long)sizeof(name)) {
                cerr(ld, c, "invalid variable name in \"${...}\" (expected [A-Za-z_][A-Za-z0-9_]*)");
                bad = 1;
                p = end + 1;
                continue;
            }
            memcpy(name, p + 2, (size_t)(end - p - 2));
            name[end - p - 2] = '\0';
            p = end + 1;
            if ((val = getenv(name)) == NULL) {
                cerr(ld, c, "environment variable \"%s\" is not set", name);
                bad = 1;
                continue;
            }
        } else {
            if (n + 2 > cap)
                out = xrealloc(out, cap *= 2);
            out[n++] = *p++;
            continue;
        }
        need = strlen(val);
        while (n + need + 1 > cap)
            out = xrealloc(out, cap *= 2);
        memcpy(out + n, val, need);
        n += need;
    }
    out[n] = '\0';
    if (!bad && json_string_set(c->v, out) < 0) {
        cerr(ld, c, "the value after ${} expansion is not valid UTF-8");
        bad = 1;
    }
    if (bad)
        doc_add_flags(c->doc, c->v, DOC_INVALID);
    else if (doc_flags(c->doc, c->v) & DOC_PLAIN)
        doc_add_flags(c->doc, c->v, DOC_RETYPE);
    free(out);
}

static void interpolate(struct loader *ld, const struct cur *c)
{
    if (json_is_object(c->v)) {
        const char *key;
        json_t *v;
        json_object_foreach(c->v, key, v) {
            struct cur cc;
            cur_member(c, key, v, &cc);
            interpolate(ld, &cc);
        }
    } else if (json_is_array(c->v)) {
        size_t i;
        for (i = 0; i < json_array_size(c->v); i++) {
            struct cur ic;
            cur_elem(c, i, &ic);
            interpolate(ld, &ic);
        }
    } else if (json_is_string(c->v)) {
        interpolate_string(ld, c);
    }
}

/* ---- policies.yaml ----------------------------------------------------- */

static void check_affinity(struct loader *ld, const struct cur *root, const char *where,
                           const struct ename *names, enum cfg_affinity by, const char *header)
{
    json_t *byv;
    struct cur c;
    int x;

    if (!cur_lookup(root, where, &c) || !json_is_object(c.v))
        return;
    /* Without a valid `by` there is nothing to hold `header` against. */
    byv = json_object_get(c.v, "by");
    if (!json_is_string(byv) || enum_lookup(names, json_string_value(byv), &x) < 0)
        return;
    if (by == AFF_HEADER && header == NULL && !json_object_get(c.v, "header"))
        merr(ld, &c, "header", "missing required key (by is \"header\")");
    if (by != AFF_HEADER && header != NULL && json_object_get(c.v, "header"))
        kerr(ld, &c, "header", "only used when by is \"header\"");
}

/* server.tls needs cert and key together; a listener with tls: true needs
 * them; one that does not say serves TLS when they are set. Paths are
 * resolved against the -c directory here. */
static void check_tls(struct loader *ld, const struct cur *root)
{
    struct config *cfg = ld->c;
    struct cfg_tls *t = &cfg->server.tls;
    char **paths[3] = { &t->cert, &t->key, &t->client_ca };
    struct cur c;
    size_t i;

    if ((t->cert == NULL) != (t->key == NULL) && cur_lookup(root, "server.tls", &c))
        merr(ld, &c, t->cert ? "key" : "cert", "missing required key (cert and key go together)");
    else if (t->cert == NULL && t->client_ca && cur_lookup(root, "server.tls.client_ca", &c))
        cerr(ld, &c, "needs server.tls.cert and server.tls.key");
    for (i = 0; i < 3; i++)
        if (*paths[i]) {
            char *p = join_path(ld->dir, *paths[i]);
            free(*paths[i]);
            *paths[i] = p;
        }
    for (i = 0; i < cfg->server.nlisteners; i++) {
        struct cfg_listener *l = &cfg->server.listeners[i];
        if (l->tls < 0)
            l->tls = t->cert != NULL;
        else if (l->tls && t->cert == NULL && cur_lookup(root, "server.listen", &c))
            cerr(ld, &c, "%s: tls: true needs server.tls.cert and server.tls.key", l->address);
    }
}

/* Builds server.tls_ctx once the rest is known good: reads and checks the
 * certificate, key and client CA. Its problems name the file. */
static void build_tls(struct loader *ld)
{
    struct config *cfg = ld->c;
    char err[1024];
    size_t i;

    for (i = 0; i < cfg->server.nlisteners; i++)     /* -l, or no policies.yaml */
        if (cfg->server.listeners[i].tls < 0)
            cfg->server.listeners[i].tls = cfg->server.tls.cert != NULL;
    if (cfg->server.tls.cert == NULL || ld->nerrs || hooks.tls_new == NULL)
        return;
    cfg->server.tls_ctx = hooks.tls_new(&cfg->server.tls, (int64_t)time(NULL), err, sizeof(err));
    if (cfg->server.tls_ctx)
        return;
    if (strncmp(err, "server.tls", 10) == 0) {
        char *colon = strchr(err, ':');
        *colon = '\0';
        err_raw(ld, FILE_POLICIES, (struct doc_pos){0}, err, colon + 2);
        return;
    }
    ld->errs = grow(ld->errs, ld->nerrs, sizeof(*ld->errs));
    memset(&ld->errs[ld->nerrs], 0, sizeof(ld->errs[0]));
    ld->errs[ld->nerrs].file = FILE_POLICIES;
    ld->errs[ld->nerrs].seq = ld->nerrs;
    ld->errs[ld->nerrs].text = xstrdup(err);
    ld->nerrs++;
}

/* sessions.redis as a whole: one checker (session_redis.c, through the
 * hooks) for -t and runtime. */
static void check_redis(struct loader *ld, const struct cur *root)
{
    const char *key = NULL, *why;
    struct cur c;

    if (hooks.redis_problem == NULL)
        return;
    why = hooks.redis_problem(ld->c, &key);
    if (why == NULL)
        return;
    if (key != NULL && cur_lookup(root, key, &c))
        cerr(ld, &c, "%s", why);
    else if (cur_lookup(root, "sessions.redis", &c))
        cerr(ld, &c, "%s", why);
}

static void load_policies(struct loader *ld)
{
    struct config *cfg = ld->c;
    struct cur root, c;
    char a[32];

    if (ld->state[FILE_POLICIES] != ST_OK || ld->doc[FILE_POLICIES].root == NULL)
        return;
    cur_root(&root, FILE_POLICIES, &ld->doc[FILE_POLICIES]);
    if (json_is_null(root.v))                   /* "---" alone, or "~" */
        return;
    if (!json_is_object(root.v)) {
        cerr(ld, &root, "expected a mapping of sections (server, routing, models, retry, ...)");
        return;
    }
    walk(ld, &root, S_POLICY, "", cfg, ~0u, 1);

    if (cfg->retry.backoff_max_ms < cfg->retry.backoff_initial_ms) {
        if (cur_lookup(&root, "retry.backoff.max", &c))
            cerr(ld, &c, "must not be less than retry.backoff.initial (%s)",
                 fmt_duration(a, sizeof(a), (double)cfg->retry.backoff_initial_ms));
        else if (cur_lookup(&root, "retry.backoff.initial", &c))
            cerr(ld, &c, "must not be more than retry.backoff.max (%s)",
                 fmt_duration(a, sizeof(a), (double)cfg->retry.backoff_max_ms));
    }
    check_affinity(ld, &root, "routing.sticky", sticky_by, cfg->routing.sticky,
                   cfg->routing.sticky_header);
    check_affinity(ld, &root, "routing.hash_key", hash_by, cfg->routing.hash_key,
                   cfg->routing.hash_header);
    check_tls(ld, &root);
    for (size_t i = 0; i < cfg->routing.passthrough.n; i++) {
        const char *pre = cfg->routing.passthrough.v[i];
        if ((pre[0] != '/' || strncmp(pre, "/admin", 6) == 0 || strchr(pre, '?'))
            && cur_lookup(&root, "routing.passthrough", &c))
            cerr(ld, &c, "prefix \"%.60s\" must start with '/', have no '?' and not be"
                 " under /admin", pre);
    }
    cfg->cache.routes_mask = cfg->cache.routes.n ? 0
        : (1u << API_CHAT) | (1u << API_COMPLETIONS) | (1u << API_EMBEDDINGS)
          | (1u << API_RESPONSES);
    for (size_t i = 0; i < cfg->cache.routes.n; i++) {
        int f = route_family_by_name(cfg->cache.routes.v[i]);
        if (f < 0 && cur_lookup(&root, "cache.routes", &c))
            cerr(ld, &c, "unknown API \"%.60s\" (chat, completions, embeddings,"
                 " responses, audio, images, moderations, rerank, messages)",
                 cfg->cache.routes.v[i]);
        else if (f >= 0)
            cfg->cache.routes_mask |= 1u << f;
    }
    if (cfg->cache.store == STORE_REDIS && cfg->sessions.store != STORE_REDIS
        && cur_lookup(&root, "cache.store", &c))
        cerr(ld, &c, "redis needs sessions.store: redis (the cache shares its connection)");
    check_redis(ld, &root);
}

/* Settles values whose spelling in the file means "none". */
static void finish_policies(struct config *cfg)
{
    if (cfg->server.log_file && strcmp(cfg->server.log_file, "-") == 0) {
        free(cfg->server.log_file);
        cfg->server.log_file = NULL;
    }
    if (cfg->server.access_log && strcmp(cfg->server.access_log, "off") == 0) {
        free(cfg->server.access_log);
        cfg->server.access_log = NULL;
    }
}

/* ---- hosts.json -------------------------------------------------------- */

static void host_free(struct cfg_host *h)
{
    size_t i;

    free(h->name);
    free(h->url);
    cfg_strlist_free(&h->models);
    cfg_strlist_free(&h->containers);
    cfg_strlist_free(&h->apis);
    free(h->region);
    free(h->address);
    free(h->keys);
    free(h->tls.ca_file);
    free(h->tls.server_name);
    for (i = 0; i < h->nlabels; i++) {
        free(h->labels[i].name);
        free(h->labels[i].value);
    }
    free(h->labels);
}

/* host[:port] of an http(s) URL, without user info. */
static char *url_authority(const char *url)
{
    const char *p = url + http_scheme(url);
    size_t n = strcspn(p, "/?#");
    const char *at = memchr(p, '@', n);
    char *s;

    if (at) {
        n -= (size_t)(at + 1 - p);
        p = at + 1;
    }
    s = xcalloc(1, n + 1);
    memcpy(s, p, n);
    return s;
}

/* The URL without trailing slashes (but never into "scheme://"). */
static char *url_base(const char *url)
{
    char *s = xstrdup(url);
    size_t n = strlen(s), min = http_scheme(s) + 1;

    while (n > min && s[n - 1] == '/')
        s[--n] = '\0';
    return s;
}

static char *expand_template(const char *tmpl, const char *name)
{
    size_t cap = strlen(tmpl) + 1, n = 0, nl = strlen(name);
    const char *p;
    char *out, *u;

    for (p = tmpl; (p = strstr(p, "{name}")) != NULL; p += 6)
        cap += nl;
    out = xcalloc(1, cap);
    for (p = tmpl; *p; ) {
        if (strncmp(p, "{name}", 6) == 0) {
            memcpy(out + n, name, nl);
            n += nl;
            p += 6;
        } else {
            out[n++] = *p++;
        }
    }
    u = url_base(out);
    free(out);
    return u;
}

/* A URL made from hosts_template must still have a valid host[:port]:
 * "10.0.0.5:4000" through the default "https://{name}.gaia.domains" has
 * not. -1 (reported) when it has not. */
static int template_url_check(struct loader *ld, const struct cur *c, const struct cfg_host *h)
{
    if (template_authority_ok(h->url))
        return 0;
    cerr(ld, c, "\"%.100s\" through routing.hosts_template gives \"%.200s\", which has no valid"
         " host[:port]: write a URL, or set a template such as \"http://{name}\"", h->name, h->url);
    return -1;
}

/* A string entry of hosts[]: a bare name or a URL. 0 when h is filled. */
static int host_from_string(struct loader *ld, const struct cur *c, struct cfg_host *h)
{
    const char *s = json_string_value(c->v), *msg;

    if (strstr(s, "://")) {
        if ((msg = check_http_url(s)) != NULL) {
            cerr(ld, c, "%s", msg);
            return -1;
        }
        h->url = url_base(s);
        h->name = url_authority(s);
        return 0;
    }
    if (!bare_host_ok(s)) {
        cerr(ld, c, "expected a host name like \"asia\", \"10.0.0.5:4000\" or \"[::1]:4000\","
             " or a URL like \"https://host:port\"");
        return -1;
    }
    h->name = xstrdup(s);
    h->url = expand_template(ld->c->routing.hosts_template, s);
    return template_url_check(ld, c, h);
}

static int host_from_object(struct loader *ld, const struct cur *c, struct cfg_host *h)
{
    struct cur kc;

    walk(ld, c, S_HOST, "", h, ~0u, 1);
    if (h->tls.ca_file && cur_lookup(c, "tls.ca_file", &kc)) {
        char *path = join_path(ld->dir, h->tls.ca_file);
        FILE *f = fopen(path, "rb");
        if (f == NULL)
            cerr(ld, &kc, "%s: cannot read: %s", path, strerror(errno));
        else
            fclose(f);
        free(h->tls.ca_file);
        h->tls.ca_file = path;
    }
    if (h->url) {
        char *base = url_base(h->url);
        free(h->url);
        h->url = base;
    }
    if (h->name == NULL && h->url == NULL) {
        if (!json_object_get(c->v, "name") && !json_object_get(c->v, "url"))
            merr(ld, c, "name", "missing required key \"name\" (or \"url\")");
        return -1;
    }
    if (h->name == NULL) {
        if (json_object_get(c->v, "name"))
            return -1;                  /* an invalid name, already reported */
        h->name = url_authority(h->url);
    }
    if (h->url == NULL) {
        if (json_object_get(c->v, "url"))
            return -1;
        h->url = expand_template(ld->c->routing.hosts_template, h->name);
        if (template_url_check(ld, c, h) < 0)
            return -1;
    }
    if (h->keys && cur_get(c, "keys", &kc))
        add_ref(ld, REF_POOL, &kc, h->keys);
    h->apis_mask = h->apis.n ? 0 : ~0u;
    for (size_t i = 0; i < h->apis.n; i++) {
        int f = route_family_by_name(h->apis.v[i]);
        if (f < 0)
            merr(ld, c, "apis", "unknown API \"%.60s\" (chat, completions, embeddings,"
                 " responses, audio, images, moderations, rerank, messages)", h->apis.v[i]);
        else
            h->apis_mask |= 1u << f;
    }
    return 0;
}

/*
 * Duplicate checks: an open-addressing table of entry indices keyed by a
 * string (host name, key secret), so loading n hosts or keys stays O(n)
 * (100,000 keys took tens of seconds with pairwise compares).
 */
struct nameset {
    size_t *slot;           /* entry index + 1; 0 = empty */
    size_t  mask;
};

static void nameset_init(struct nameset *ns, size_t n)
{
    size_t cap = 16;

    while (cap < 2 * n + 1)
        cap *= 2;
    ns->slot = xcalloc(cap, sizeof(size_t));
    ns->mask = cap - 1;
}

/* Returns the index of an entry named s, or adds idx and returns -1.
 * `names` is the array of entry names seen so far (as indices). */
static long nameset_add(struct nameset *ns, const char *s, size_t idx,
                        const char *(*name_of)(const struct config *, size_t),
                        const struct config *c)
{
    size_t b = config_hash(s) & ns->mask;

    for (; ns->slot[b]; b = (b + 1) & ns->mask)
        if (strcmp(name_of(c, ns->slot[b] - 1), s) == 0)
            return (long)(ns->slot[b] - 1);
    ns->slot[b] = idx + 1;
    return -1;
}

static const char *host_name_of(const struct config *c, size_t i)
{
    return c->hosts[i].name;
}

static const char *key_secret_of(const struct config *c, size_t i)
{
    return c->keys[i].secret;
}

static void load_hosts(struct loader *ld)
{
    static const char *const top[] = {"hosts"};
    struct config *cfg = ld->c;
    struct nameset seen = { NULL, 0 };
    struct cur root, hc;
    const char *key;
    json_t *v;
    size_t i, j;
    long dup;

    if (ld->state[FILE_HOSTS] != ST_OK)
        return;
    cur_root(&root, FILE_HOSTS, &ld->doc[FILE_HOSTS]);
    if (!json_is_object(root.v)) {
        cerr(ld, &root, "expected an object with key \"hosts\"");
        return;
    }
    json_object_foreach(root.v, key, v) {
        if (strcmp(key, "hosts") != 0)
            unknown_key_err(ld, &root, key, suggest(key, top, 1));
    }
    if (!cur_get(&root, "hosts", &hc)) {
        merr(ld, &root, "hosts", "missing required key");
        return;
    }
    if (!json_is_array(hc.v)) {
        cerr(ld, &hc, "expected an array of host names, URLs or objects");
        return;
    }
    ld->host_index = xcalloc(json_array_size(hc.v), sizeof(size_t));
    nameset_init(&seen, json_array_size(hc.v));
    for (i = 0; i < json_array_size(hc.v); i++) {
        struct cfg_host h;
        struct cur ec, nc;
        int rc;

        cur_elem(&hc, i, &ec);
        memset(&h, 0, sizeof(h));
        defaults_apply(ld, S_HOST, &h);
        if (json_is_string(ec.v)) {
            rc = host_from_string(ld, &ec, &h);
        } else if (json_is_object(ec.v)) {
            rc = host_from_object(ld, &ec, &h);
        } else {
            cerr(ld, &ec, "expected a host name, a URL or an object");
            rc = -1;
        }
        if (rc < 0) {
            host_free(&h);
            continue;
        }
        cfg->hosts = grow(cfg->hosts, cfg->nhosts, sizeof(*cfg->hosts));
        cfg->hosts[cfg->nhosts] = h;      /* visible to host_name_of */
        dup = nameset_add(&seen, h.name, cfg->nhosts, host_name_of, cfg);
        if (dup >= 0) {
            j = (size_t)dup;
            nc = ec;
            if (json_is_object(ec.v) && !cur_get(&ec, "name", &nc))
                cur_get(&ec, "url", &nc);
            cerr(ld, &nc, "duplicate host name \"%s\" (same as hosts[%zu])", h.name,
                 ld->host_index[j]);
            host_free(&h);
            continue;
        }
        ld->host_index[cfg->nhosts] = i;
        cfg->nhosts++;
    }
    free(seen.slot);
}

/* ---- api-keys.json ----------------------------------------------------- */

/* Best effort: do not leave a secret lying around in freed memory. */
static void secret_free(char *s)
{
    volatile char *p = s;

    while (p != NULL && *p)
        *p++ = '\0';
    free(s);
}

static void key_free(struct cfg_key *k)
{
    secret_free(k->secret);
    free(k->id);
    free(k->fingerprint);
    free(k->description);
    free(k->pool);
    cfg_strlist_free(&k->hosts);
}

uint64_t config_hash(const char *s)
{
    return hash_str(s);
}

/* Fills k->id and k->fingerprint from k->secret (printable ASCII). */
static void key_ident(struct cfg_key *k)
{
    size_t len = strlen(k->secret), pre = 0;
    const char *dash;
    char buf[64];

    snprintf(buf, sizeof(buf), "%016llx", (unsigned long long)config_hash(k->secret));
    k->id = xstrdup(buf);
    if (len >= 12) {
        dash = memchr(k->secret, '-', 4);
        if (dash)
            pre = (size_t)(dash - k->secret) + 1;
        snprintf(buf, sizeof(buf), "%.*s\xe2\x80\xa6%s", (int)pre, k->secret, k->secret + len - 4);
    } else {
        snprintf(buf, sizeof(buf), "\xe2\x80\xa6%.6s", k->id);
    }
    k->fingerprint = xstrdup(buf);
}

/* Reads a key_file into *out, trimmed. On failure reports at c, without
 * echoing the file name: a key pasted into key_file by mistake is a secret. */
static int read_key_file(struct loader *ld, const struct cur *c, const char *name, char **out)
{
    char *path = join_path(ld->dir, name), *buf, *b, *e;
    size_t n;
    FILE *f;
    int rc = -1;

    if ((f = fopen(path, "rb")) == NULL) {
        cerr(ld, c, "cannot read the key_file: %s", strerror(errno));
        free(path);
        return -1;
    }
    buf = xcalloc(1, MAX_KEY_FILE_BYTES + 1);
    n = fread(buf, 1, MAX_KEY_FILE_BYTES + 1, f);
    if (ferror(f)) {
        cerr(ld, c, "cannot read the key_file: %s", strerror(errno));
    } else if (n > MAX_KEY_FILE_BYTES) {
        cerr(ld, c, "the key_file is larger than %d bytes", MAX_KEY_FILE_BYTES);
    } else {
        buf[n] = '\0';
        for (b = buf; *b == ' ' || *b == '\t' || *b == '\n' || *b == '\r'; b++)
            ;
        for (e = b + strlen(b); e > b && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\n' || e[-1] == '\r'); e--)
            ;
        *e = '\0';
        if (*b == '\0') {
            cerr(ld, c, "the key_file is empty");
        } else if (strlen(b) != (size_t)(e - b) || check_secret(b)) {
            cerr(ld, c, "the key_file's content: %s",
                 strlen(b) != (size_t)(e - b) ? "a key must not contain a NUL byte" : check_secret(b));
        } else {
            *out = xstrdup(b);
            rc = 0;
        }
    }
    memset(buf, 0, MAX_KEY_FILE_BYTES + 1);
    free(buf);
    fclose(f);
    free(path);
    return rc;
}

static void load_keys(struct loader *ld)
{
    static const char *const top[] = {"apiKeys"};
    struct config *cfg = ld->c;
    struct nameset seen = { NULL, 0 };
    struct cur root, kc;
    const char *key;
    json_t *v;
    size_t i, j, *index;
    long dup;

    if (ld->state[FILE_KEYS] != ST_OK)
        return;
    cur_root(&root, FILE_KEYS, &ld->doc[FILE_KEYS]);
    if (!json_is_object(root.v)) {
        cerr(ld, &root, "expected an object with key \"apiKeys\"");
        return;
    }
    json_object_foreach(root.v, key, v) {
        if (strcmp(key, "apiKeys") != 0)
            unknown_key_err(ld, &root, key, suggest(key, top, 1));
    }
    if (!cur_get(&root, "apiKeys", &kc)) {
        merr(ld, &root, "apiKeys", "missing required key");
        return;
    }
    if (!json_is_array(kc.v)) {
        cerr(ld, &kc, "expected an array of key objects");
        return;
    }
    index = xcalloc(json_array_size(kc.v), sizeof(size_t));
    nameset_init(&seen, json_array_size(kc.v));
    for (i = 0; i < json_array_size(kc.v); i++) {
        struct key_tmp kt;
        struct cur ec, fc, hc;
        int has_key, has_file;

        cur_elem(&kc, i, &ec);
        if (!json_is_object(ec.v)) {
            cerr(ld, &ec, "expected an object with \"key\" or \"key_file\"");
            continue;
        }
        memset(&kt, 0, sizeof(kt));
        defaults_apply(ld, S_KEY, &kt);
        walk(ld, &ec, S_KEY, "", &kt, ~0u, 1);
        has_key = json_object_get(ec.v, "key") != NULL;
        has_file = json_object_get(ec.v, "key_file") != NULL;
        if (has_key && has_file) {
            cerr(ld, &ec, "use either \"key\" or \"key_file\", not both");
        } else if (!has_key && !has_file) {
            merr(ld, &ec, "key", "missing required key \"key\" (or \"key_file\")");
        } else if (kt.key_file && cur_get(&ec, "key_file", &fc)) {
            read_key_file(ld, &fc, kt.key_file, &kt.k.secret);
        }
        free(kt.key_file);
        if (has_key && has_file) {
            key_free(&kt.k);
            continue;
        }
        if (cur_get(&ec, "hosts", &hc))
            ref_hosts(ld, &hc, &kt.k.hosts);
        if (cur_get(&ec, "key", &fc) && (doc_flags(fc.doc, fc.v) & DOC_INVALID)) {
            key_free(&kt.k);            /* an unset ${NAME}: already reported */
            continue;
        }
        if (kt.k.secret == NULL) {
            key_free(&kt.k);
            continue;
        }
        cfg->keys = grow(cfg->keys, cfg->nkeys, sizeof(*cfg->keys));
        cfg->keys[cfg->nkeys] = kt.k;     /* visible to key_secret_of */
        dup = nameset_add(&seen, kt.k.secret, cfg->nkeys, key_secret_of, cfg);
        if (dup >= 0) {
            j = (size_t)dup;
            /* at the value that gave the key: `key`, or `key_file` */
            if (!cur_get(&ec, "key", &fc))
                cur_get(&ec, "key_file", &fc);
            cerr(ld, &fc, "duplicate key (same as apiKeys[%zu])", index[j]);
            key_free(&kt.k);
            continue;
        }
        key_ident(&cfg->keys[cfg->nkeys]);
        index[cfg->nkeys] = i;
        cfg->nkeys++;
    }
    free(index);
    free(seen.slot);
}

/* ---- clients ------------------------------------------------------------ */

static const char *check_sha256(const char *s)
{
    size_t n = strspn(s, "0123456789abcdefABCDEF");

    return n == 64 && s[n] == '\0' ? NULL : "expected the 64 hex digits of a SHA-256";
}

static void sha256_hex(const char *key, char out[65])
{
    unsigned char md[SHA256_DIGEST_LENGTH];
    size_t i;

    SHA256((const unsigned char *)key, strlen(key), md);
    for (i = 0; i < SHA256_DIGEST_LENGTH; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
}

static void client_free(struct cfg_client *c)
{
    free(c->name);
    free(c->cert_subject);
    cfg_strlist_free(&c->models);
}

static const char *client_name_of(const struct config *c, size_t i)
{
    return c->clients[i].name;
}

static const char *client_hash_of(const struct config *c, size_t i)
{
    return c->clients[i].key_sha256;
}

static const char *client_subject_of(const struct config *c, size_t i)
{
    return c->clients[i].cert_subject;
}

/*
 * clients: [{name, key | key_file | key_sha256, cert_subject, models,
 * limits}]: a key, a certificate subject or both. The entry named `default`
 * has neither: its models and limits go to the clients that set none. Keys
 * are kept as SHA-256 only.
 */
static int sp_clients(struct loader *ld, const struct field *f, const struct cur *c, void *base)
{
    struct config *cfg = base;
    struct client_tmp def;
    struct nameset names, hashes, subjects;
    struct cur pr, cac;
    int have_def = 0, have_ca;
    size_t i, j;

    (void)f;
    if (!json_is_array(c->v)) {
        cerr(ld, c, "%s of clients", want_list(c));
        return -1;
    }
    memset(&def, 0, sizeof(def));
    nameset_init(&names, json_array_size(c->v));
    nameset_init(&hashes, json_array_size(c->v));
    nameset_init(&subjects, json_array_size(c->v));
    cur_root(&pr, FILE_POLICIES, &ld->doc[FILE_POLICIES]);
    have_ca = cur_lookup(&pr, "server.tls.client_ca", &cac);
    for (i = 0; i < json_array_size(c->v); i++) {
        struct client_tmp ct;
        struct cur ec, fc;
        int nkeys;

        cur_elem(c, i, &ec);
        if (!json_is_object(ec.v)) {
            cerr(ld, &ec, "%s", want_map(&ec));
            continue;
        }
        memset(&ct, 0, sizeof(ct));
        defaults_apply(ld, S_CLIENT, &ct);
        walk(ld, &ec, S_CLIENT, "", &ct, ~0u, 1);
        ct.c.limits.rpm = ct.rpm;
        ct.c.limits.tpm = ct.tpm;
        ct.c.limits.max_concurrent = ct.max_concurrent;
        ct.c.limits.tokens_per_day = ct.per_day;
        ct.c.limits.tokens_per_month = ct.per_month;
        ct.c.has_limits = json_object_get(ec.v, "limits") != NULL;
        nkeys = (json_object_get(ec.v, "key") != NULL) + (json_object_get(ec.v, "key_file") != NULL)
                + (json_object_get(ec.v, "key_sha256") != NULL);
        if (ct.c.cert_subject && !have_ca && cur_get(&ec, "cert_subject", &fc))
            cerr(ld, &fc, "cert_subject needs server.tls.client_ca (mutual TLS): without it"
                 " no client certificate is asked for");
        if (ct.c.name && strcmp(ct.c.name, "default") == 0) {
            if (nkeys || ct.c.cert_subject)
                cerr(ld, &ec, "the \"default\" entry has no key: it gives its models and"
                     " limits to the clients that set none");
            else if (have_def)
                cerr(ld, &ec, "duplicate client name \"default\"");
            else {
                def = ct;
                have_def = 1;
                ct.c.name = NULL;
                memset(&ct.c.models, 0, sizeof(ct.c.models));
            }
        } else if (nkeys > 1 || (nkeys == 0 && ct.c.cert_subject == NULL)) {
            if (nkeys)
                cerr(ld, &ec, "use one of \"key\", \"key_file\" or \"key_sha256\"");
            else
                merr(ld, &ec, "key", "missing required key \"key\" (or \"key_file\","
                     " \"key_sha256\", \"cert_subject\")");
        } else if (ct.key) {
            sha256_hex(ct.key, ct.c.key_sha256);
        } else if (ct.key_file && cur_get(&ec, "key_file", &fc)) {
            char *secret = NULL;
            if (read_key_file(ld, &fc, ct.key_file, &secret) == 0 && secret)
                sha256_hex(secret, ct.c.key_sha256);
            if (secret)
                memset(secret, 0, strlen(secret));
            free(secret);
        } else if (ct.key_sha256) {
            for (j = 0; j < 64; j++)
                ct.c.key_sha256[j] = (char)tolower((unsigned char)ct.key_sha256[j]);
            ct.c.key_sha256[64] = '\0';
        }
        if (ct.key)
            memset(ct.key, 0, strlen(ct.key));
        free(ct.key);
        free(ct.key_file);
        free(ct.key_sha256);
        if (ct.c.name == NULL || (ct.c.key_sha256[0] == '\0' && ct.c.cert_subject == NULL)
            || (ct.c.cert_subject && !have_ca)) {
            client_free(&ct.c);
            continue;
        }
        cfg->clients = grow(cfg->clients, cfg->nclients, sizeof(*cfg->clients));
        cfg->clients[cfg->nclients] = ct.c;
        if (nameset_add(&names, ct.c.name, cfg->nclients, client_name_of, cfg) >= 0) {
            cur_get(&ec, "name", &fc);
            cerr(ld, &fc, "duplicate client name \"%s\"", ct.c.name);
            client_free(&ct.c);
            continue;
        }
        if (ct.c.key_sha256[0]
            && nameset_add(&hashes, ct.c.key_sha256, cfg->nclients, client_hash_of, cfg) >= 0) {
            cerr(ld, &ec, "client \"%s\" has the same key as another client", ct.c.name);
            client_free(&ct.c);
            continue;
        }
        if (ct.c.cert_subject
            && nameset_add(&subjects, ct.c.cert_subject, cfg->nclients, client_subject_of,
                           cfg) >= 0) {
            cur_get(&ec, "cert_subject", &fc);
            cerr(ld, &fc, "client \"%s\" has the same cert_subject as another client",
                 ct.c.name);
            client_free(&ct.c);
            continue;
        }
        if (ct.c.cert_subject)
            cfg->nclient_certs++;
        cfg->nclients++;
    }
    free(names.slot);
    free(hashes.slot);
    free(subjects.slot);
    if (have_def) {
        for (i = 0; i < cfg->nclients; i++) {
            struct cfg_client *cl = &cfg->clients[i];
            if (!cl->has_limits)
                cl->limits = def.c.limits;
            if (cl->models.n == 0 && def.c.models.n) {
                cl->models.v = xcalloc(def.c.models.n, sizeof(char *));
                for (j = 0; j < def.c.models.n; j++)
                    cl->models.v[j] = xstrdup(def.c.models.v[j]);
                cl->models.n = def.c.models.n;
            }
        }
        client_free(&def.c);
    }
    return 0;
}

/* admin.client_keys: clients "client_keys[N]" without limits, any model. */
static void finish_clients(struct config *cfg)
{
    size_t i;

    for (i = 0; i < cfg->admin.client_keys.n; i++) {
        struct cfg_client *cl;
        char name[48];

        cfg->clients = grow(cfg->clients, cfg->nclients, sizeof(*cfg->clients));
        cl = &cfg->clients[cfg->nclients++];
        memset(cl, 0, sizeof(*cl));
        snprintf(name, sizeof(name), "client_keys[%zu]", i);
        cl->name = xstrdup(name);
        sha256_hex(cfg->admin.client_keys.v[i], cl->key_sha256);
    }
}

/* ---- cross-references -------------------------------------------------- */

static void check_refs(struct loader *ld)
{
    struct config *cfg = ld->c;
    const char **names = xcalloc(cfg->nhosts + cfg->nkeys + 1, sizeof(char *));
    size_t i, j, n;

    for (i = 0; i < ld->nrefs; i++) {
        struct ref *r = &ld->refs[i];
        char dym[128];
        int found = 0;

        n = 0;
        if (r->kind == REF_HOST) {
            if (ld->state[FILE_HOSTS] != ST_OK)
                continue;
            for (j = 0; j < cfg->nhosts && !found; j++) {
                found = strcmp(cfg->hosts[j].name, r->name) == 0;
                names[n++] = cfg->hosts[j].name;
            }
            if (!found)
                err_at(ld, r->file, r->pos, r->path, "no host named \"%s\" in hosts.json%s",
                       r->name, did_you_mean(dym, sizeof(dym), suggest(r->name, names, n)));
        } else {
            if (ld->state[FILE_KEYS] == ST_FAILED)
                continue;
            for (j = 0; j < cfg->nkeys && !found; j++) {
                if (cfg->keys[j].pool == NULL)
                    continue;
                found = strcmp(cfg->keys[j].pool, r->name) == 0;
                names[n++] = cfg->keys[j].pool;
            }
            if (!found)
                err_at(ld, r->file, r->pos, r->path, "no key in api-keys.json has pool \"%s\"%s",
                       r->name, did_you_mean(dym, sizeof(dym), suggest(r->name, names, n)));
        }
    }
    free(names);
}

/* ---- redaction --------------------------------------------------------- */

static void add_secret(const char ***v, size_t *n, const json_t *s)
{
    if (!json_is_string(s) || json_string_length(s) < 4)
        return;                         /* shorter ones would redact noise */
    *v = grow(*v, *n, sizeof(**v));
    (*v)[(*n)++] = json_string_value(s);
}

static void collect_secrets(struct loader *ld, const char ***v, size_t *n)
{
    json_t *root = ld->doc[FILE_KEYS].root, *list, *e;
    struct cur pr, c;
    size_t i;

    list = json_object_get(root, "apiKeys");
    json_array_foreach(list, i, e)
        add_secret(v, n, json_object_get(e, "key"));
    if (ld->doc[FILE_POLICIES].root == NULL)
        return;
    cur_root(&pr, FILE_POLICIES, &ld->doc[FILE_POLICIES]);
    if (cur_lookup(&pr, "admin.token", &c))
        add_secret(v, n, c.v);
    if (cur_lookup(&pr, "admin.client_keys", &c))
        json_array_foreach(c.v, i, e)
            add_secret(v, n, e);
    if (cur_lookup(&pr, "alerts.notifications", &c))
        json_array_foreach(c.v, i, e)
            add_secret(v, n, json_object_get(e, "password"));
    if (cur_lookup(&pr, "clients", &c))
        json_array_foreach(c.v, i, e)
            add_secret(v, n, json_object_get(e, "key"));
    if (cur_lookup(&pr, "sessions.redis.password", &c))
        add_secret(v, n, c.v);
    if (cur_lookup(&pr, "sessions.redis.sentinel_password", &c))
        add_secret(v, n, c.v);
    for (i = 0; i < ld->c->nkeys; i++) {   /* from key_file too */
        *v = grow(*v, *n, sizeof(**v));
        (*v)[(*n)++] = ld->c->keys[i].secret;
    }
}

/*
 * The last line of defence: whatever path led a secret into a message (a
 * file misshapen in a way nobody foresaw), it leaves as "[redacted]".
 */
static void redact_errors(struct loader *ld)
{
    const char **secrets = NULL;
    size_t nsecrets = 0, i, j;

    collect_secrets(ld, &secrets, &nsecrets);
    for (i = 0; i < ld->nerrs; i++) {
        for (j = 0; j < nsecrets; j++) {
            char *hit, *t;
            size_t sl = strlen(secrets[j]);
            while ((hit = strstr(ld->errs[i].text, secrets[j])) != NULL) {
                size_t pre = (size_t)(hit - ld->errs[i].text);
                t = xcalloc(1, strlen(ld->errs[i].text) - sl + sizeof("[redacted]"));
                memcpy(t, ld->errs[i].text, pre);
                strcpy(t + pre, "[redacted]");
                strcat(t, hit + sl);
                free(ld->errs[i].text);
                ld->errs[i].text = t;
            }
        }
    }
    free(secrets);
}

/* ---- files ------------------------------------------------------------- */

/* Reads a whole file. 0 on success; -1 with errno set (EFBIG: too large). */
static int read_file(const char *path, char **out, size_t *len)
{
    FILE *f = fopen(path, "rb");
    size_t cap = 4096, n = 0;
    char *buf;

    if (f == NULL)
        return -1;
    buf = xcalloc(1, cap);
    for (;;) {
        size_t r = fread(buf + n, 1, cap - n, f);
        n += r;
        if (r == 0)
            break;
        if (n == cap) {
            if (cap >= MAX_FILE_BYTES) {
                free(buf);
                fclose(f);
                errno = EFBIG;
                return -1;
            }
            buf = xrealloc(buf, cap *= 2);
        }
    }
    if (ferror(f)) {
        int e = errno ? errno : EIO;
        free(buf);
        fclose(f);
        errno = e;
        return -1;
    }
    fclose(f);
    *out = buf;
    *len = n;
    return 0;
}

/*
 * Seed 003's ips.txt, read when the directory has no hosts.json: one host
 * per line, `ip:port` (http) or a URL; blank lines and `#` comments are
 * skipped. It becomes the hosts.json text {"hosts": [...]} with each entry
 * on the line it had, so problems point at the right ips.txt line.
 */
static int ips_txt(struct loader *ld, char **text, size_t *len)
{
    char *path = join_path(ld->dir, "ips.txt"), *raw, *line, *save = NULL;
    size_t rawlen, out_len = 0, cap;
    int first = 1, saved_errno;
    char *out;

    if (read_file(path, &raw, &rawlen) < 0) {
        saved_errno = errno;
        free(path);
        errno = saved_errno;
        return -1;
    }
    cap = rawlen * 8 + 64;      /* "a\n" (2 bytes) becomes ,"http://a"\n (12) */
    out = xcalloc(1, cap);
    out_len += (size_t)snprintf(out, cap, "{\"hosts\": [");
    for (line = raw; line; line = save) {
        char *nl = strchr(line, '\n'), *p = line, *end;
        save = nl ? nl + 1 : NULL;
        if (nl)
            *nl = '\0';
        while (*p == ' ' || *p == '\t' || *p == '\r')
            p++;
        end = p + strlen(p);
        while (end > p && (end[-1] == ' ' || end[-1] == '\t' || end[-1] == '\r'))
            *--end = '\0';
        if (*p && *p != '#' && strpbrk(p, "\"\\") == NULL) {
            out_len += (size_t)snprintf(out + out_len, cap - out_len, "%s\"%s%s\"",
                                        first ? "" : ",", strstr(p, "://") ? "" : "http://", p);
            first = 0;
        }
        if (save)
            out[out_len++] = '\n';
        if (save == NULL)
            break;
    }
    snprintf(out + out_len, cap - out_len, "]}\n");
    free(raw);
    free(ld->path[FILE_HOSTS]);
    ld->path[FILE_HOSTS] = path;
    *text = out;
    *len = strlen(out);
    return 0;
}

static void load_file(struct loader *ld, int file, int required)
{
    struct doc *d = &ld->doc[file];
    struct cur root;
    char *text;
    size_t len, i;
    int rc;

    errno = 0;
    if (read_file(ld->path[file], &text, &len) < 0) {
        if (errno == ENOENT && file == FILE_HOSTS && ips_txt(ld, &text, &len) == 0)
            goto parse;
        if (errno == ENOENT && !required)
            return;
        ld->state[file] = ST_FAILED;
        if (errno == EFBIG)
            err_at(ld, file, d->root_pos, "", "the file is larger than %d MB", MAX_FILE_BYTES >> 20);
        else
            err_at(ld, file, d->root_pos, "", "cannot read the file: %s", strerror(errno));
        return;
    }
parse:
    rc = file == FILE_POLICIES ? doc_parse_yaml(d, text, len) : doc_parse_json(d, text, len);
    free(text);
    for (i = 0; i < d->nerrs; i++)
        err_at(ld, file, d->errs[i].pos, d->errs[i].path, "%s", d->errs[i].msg);
    if (rc < 0) {
        ld->state[file] = ST_FAILED;
        return;
    }
    ld->state[file] = ST_OK;
    if (d->root) {
        cur_root(&root, file, d);
        interpolate(ld, &root);
    }
}

/* ---- the snapshot ------------------------------------------------------ */

static void config_free(struct config *c)
{
    size_t i;

    if (c == NULL)
        return;
    free(c->dir);
    for (i = 0; i < c->nhosts; i++)
        host_free(&c->hosts[i]);
    free(c->hosts);
    for (i = 0; i < c->nkeys; i++)
        key_free(&c->keys[i]);
    free(c->keys);
    free(c->server.listen);
    listeners_free(c);
    free(c->server.tls.cert);
    free(c->server.tls.key);
    free(c->server.tls.client_ca);
    free(c->server.tls.ciphers);
    free(c->server.tls.ciphersuites);
    if (c->server.tls_ctx && hooks.tls_free)
        hooks.tls_free(c->server.tls_ctx);
    free(c->server.log_file);
    free(c->server.access_log);
    free(c->routing.hosts_template);
    free(c->routing.prefer_region);
    free(c->routing.sticky_header);
    free(c->routing.hash_header);
    cfg_strlist_free(&c->routing.passthrough);
    cfg_strlist_free(&c->cache.routes);
    free(c->retry.no_retry_header);
    for (i = 0; i < c->nmodels; i++) {
        free(c->models[i].name);
        cfg_strlist_free(&c->models[i].models);
    }
    free(c->models);
    free(c->retry.on_codes);
    for (i = 0; i < c->fallback.nchains; i++)
        chain_free(&c->fallback.chains[i]);
    free(c->fallback.chains);
    free(c->health.path);
    free(c->sessions.redis_url);
    free(c->sessions.redis_prefix);
    free(c->sessions.redis_username);
    secret_free(c->sessions.redis_password);
    cfg_strlist_free(&c->sessions.redis_sentinels);
    free(c->sessions.redis_master_name);
    secret_free(c->sessions.redis_sentinel_password);
    for (i = 0; i < c->alerts.nnotify; i++)
        notify_free(&c->alerts.notify[i]);
    free(c->alerts.notify);
    free(c->admin.token);
    cfg_strlist_free(&c->admin.client_keys);
    for (i = 0; i < c->nclients; i++)
        client_free(&c->clients[i]);
    free(c->clients);
    free(c);
}

static int perr_cmp(const void *a, const void *b)
{
    const struct perr *x = a, *y = b;

    if (x->file != y->file)
        return x->file - y->file;
    if (x->pos.line != y->pos.line)
        return x->pos.line - y->pos.line;
    if (x->pos.col != y->pos.col)
        return x->pos.col - y->pos.col;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

struct config *config_load(const char *dir, struct cfg_errors *errs)
{
    struct loader ld;
    struct config *c;
    size_t i;

    memset(&ld, 0, sizeof(ld));
    ld.dir = dir;
    for (i = 0; i < NFILES; i++)
        ld.path[i] = i == FILE_DEFAULTS ? xstrdup(file_names[i]) : join_path(dir, file_names[i]);
    c = ld.c = xcalloc(1, sizeof(*c));
    c->refcnt = 1;
    c->dir = xstrdup(dir);

    defaults_parse(&ld);
    defaults_apply(&ld, S_POLICY, c);

    /* policies.yaml first: hosts_template shapes hosts.json. */
    load_file(&ld, FILE_POLICIES, 0);
    load_file(&ld, FILE_HOSTS, 1);
    load_file(&ld, FILE_KEYS, 0);
    load_policies(&ld);
    finish_policies(c);
    finish_clients(c);
    load_hosts(&ld);
    load_keys(&ld);
    check_refs(&ld);
    build_tls(&ld);
    if (ld.nerrs)
        redact_errors(&ld);

    if (ld.nerrs > 1)
        qsort(ld.errs, ld.nerrs, sizeof(*ld.errs), perr_cmp);
    for (i = 0; i < ld.nerrs; i++) {
        if (errs) {
            errs->msg = xrealloc(errs->msg, (errs->n + 1) * sizeof(char *));
            errs->msg[errs->n++] = ld.errs[i].text;
        } else {
            free(ld.errs[i].text);
        }
    }
    if (ld.nerrs) {
        config_free(c);
        c = NULL;
    }

    free(ld.errs);
    for (i = 0; i < ld.nrefs; i++) {
        free(ld.refs[i].path);
        free(ld.refs[i].name);
    }
    free(ld.refs);
    free(ld.host_index);
    for (i = 0; i < NFIELDS; i++)
        doc_free(&ld.defdoc[i]);
    free(ld.defdoc);
    for (i = 0; i < NFILES; i++) {
        doc_free(&ld.doc[i]);
        free(ld.path[i]);
    }
    return c;
}

void config_ref(struct config *c)
{
    __atomic_add_fetch(&c->refcnt, 1, __ATOMIC_RELAXED);
}

void config_unref(struct config *c)
{
    if (c && __atomic_sub_fetch(&c->refcnt, 1, __ATOMIC_ACQ_REL) == 0)
        config_free(c);
}

void cfg_errors_free(struct cfg_errors *e)
{
    size_t i;

    if (e == NULL)
        return;
    for (i = 0; i < e->n; i++)
        free(e->msg[i]);
    free(e->msg);
    e->msg = NULL;
    e->n = 0;
}

/* ---- lookups ----------------------------------------------------------- */

const struct cfg_host *config_host_by_name(const struct config *c, const char *name)
{
    size_t i;

    for (i = 0; i < c->nhosts; i++)
        if (strcmp(c->hosts[i].name, name) == 0)
            return &c->hosts[i];
    return NULL;
}

const struct cfg_model_group *config_model_group(const struct config *c, const char *name)
{
    size_t i;

    for (i = 0; i < c->nmodels; i++)
        if (strcmp(c->models[i].name, name) == 0)
            return &c->models[i];
    return NULL;
}

int config_host_serves_api(const struct cfg_host *h, int f)
{
    return h->apis.n == 0 || f < 0 || f >= API_FAMILIES || (h->apis_mask & (1u << f));
}

int config_host_serves(const struct cfg_host *h, const char *model)
{
    if (h->models.n == 0 || model == NULL)
        return 1;
    return cfg_strlist_has(&h->models, model);
}

int config_key_usable(const struct cfg_key *k, const struct cfg_host *h)
{
    if (!k->active)
        return 0;
    if ((k->pool == NULL) != (h->keys == NULL))
        return 0;
    if (k->pool && strcmp(k->pool, h->keys) != 0)
        return 0;
    return k->hosts.n == 0 || cfg_strlist_has(&k->hosts, h->name);
}

const char *config_strategy_name(enum cfg_strategy s)
{
    const struct ename *e;

    for (e = strategies; e->name; e++)
        if (e->value == (int)s)
            return e->name;
    return "unknown";
}
