/*
 * config_walk.c -- the walker of the configuration loader: where it is in a
 * parsed document (a cursor: file, node, position, json.path), the typed
 * reads of a value (integers, durations, sizes, enums, string lists, with
 * their ranges), the defaults of the table applied through the same reads,
 * and the walk of a mapping against the rows of its scope (unknown keys get
 * a "did you mean"). Every problem is collected, not only the first, as
 * "FILE:LINE:COL: json.path: message"; a secret is never put in a message.
 *
 * The table itself (config_schema.c) comes in through the loader
 * (struct loader .fields), so the walker knows no key by name.
 */
#include "config_int.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- small helpers ----------------------------------------------------- */

static void oom(void)
{
    fputs("infergate: out of memory while loading the configuration\n", stderr);
    abort();
}

void *cfg_xcalloc(size_t n, size_t sz)
{
    void *p = calloc(n ? n : 1, sz ? sz : 1);
    if (p == NULL)
        oom();
    return p;
}

void *cfg_xrealloc(void *p, size_t sz)
{
    p = realloc(p, sz ? sz : 1);
    if (p == NULL)
        oom();
    return p;
}

char *cfg_xstrdup(const char *s)
{
    char *d = strdup(s);
    if (d == NULL)
        oom();
    return d;
}

/* Makes room for element n of an array of `sz`-byte elements. */
void *cfg_grow(void *arr, size_t n, size_t sz)
{
    size_t cap = 8;

    while (cap < n + 1)
        cap *= 2;
    if (n == 0 || (n >= 8 && (n & (n - 1)) == 0))
        arr = cfg_xrealloc(arr, cap * sz);
    return arr;
}

char *cfg_join_path(const char *dir, const char *name)
{
    size_t dl = strlen(dir);
    char *p;

    if (name[0] == '/')
        return cfg_xstrdup(name);
    p = cfg_xcalloc(1, dl + strlen(name) + 2);
    sprintf(p, "%s%s%s", dir, dl && dir[dl - 1] == '/' ? "" : "/", name);
    return p;
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
const char *cfg_suggest(const char *word, const char *const *cands, size_t n)
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
const char *cfg_did_you_mean(char *buf, size_t cap, const char *s)
{
    if (s == NULL)
        return "";
    snprintf(buf, cap, ", did you mean \"%s\"?", s);
    return buf;
}

/* Formats ms the way they are written in the files. */
const char *cfg_fmt_duration(char *buf, size_t cap, double ms)
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
void cfg_err_raw(struct loader *ld, int file, struct doc_pos pos, const char *path,
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

    ld->errs = cfg_grow(ld->errs, ld->nerrs, sizeof(*ld->errs));
    e = &ld->errs[ld->nerrs];
    e->file = file;
    e->pos = pos;
    e->seq = ld->nerrs;
    e->text = cfg_xstrdup(text);
    ld->nerrs++;
}

void cfg_err_at(struct loader *ld, int file, struct doc_pos pos, const char *path,
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
    cfg_err_raw(ld, file, pos, path, msg);
}

void cfg_kerr(struct loader *ld, const struct cur *c, const char *key, const char *fmt, ...)
{
    char path[DOC_PATH_MAX], msg[768];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    doc_path_key(path, sizeof(path), c->path, key);
    cfg_err_at(ld, c->file, doc_key_pos(c->doc, c->v, key), path, "%s", msg);
}

/*
 * "unknown key" about member `key` of object c, at the key, with the key in
 * the path. `sug` is the nearest known key (suggest()) or NULL. In
 * api-keys.json a name in key position may be a secret pasted in the wrong
 * place, so there the key is named only when it is a near miss of a known
 * key (a typo: `apiKeys[0].isactive`); anything else stops at the object.
 */
void cfg_unknown_key_err(struct loader *ld, const struct cur *c, const char *key,
                         const char *sug)
{
    char path[DOC_PATH_MAX], parent[DOC_PATH_MAX], dym[128], msg[160];
    struct doc_pos pos = doc_key_pos(c->doc, c->v, key);

    snprintf(msg, sizeof(msg), "unknown key%s", cfg_did_you_mean(dym, sizeof(dym), sug));
    if (c->file != FILE_KEYS) {
        cfg_kerr(ld, c, key, "%s", msg);
        return;
    }
    snprintf(parent, sizeof(parent), "%s", c->path);
    keys_safe_path(parent);
    if (sug == NULL || strcmp(parent, c->path) != 0) {
        cfg_err_raw(ld, c->file, pos, parent, msg);     /* stops at the object */
        return;
    }
    doc_path_key(path, sizeof(path), parent, key);
    cfg_err_raw(ld, c->file, pos, path, msg);
}

void cfg_merr(struct loader *ld, const struct cur *c, const char *key, const char *fmt, ...)
{
    char path[DOC_PATH_MAX], msg[768];
    va_list ap;

    if (doc_flags(c->doc, c->v) & DOC_INVALID)
        return;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    doc_path_key(path, sizeof(path), c->path, key);
    cfg_err_at(ld, c->file, c->pos, path, "%s", msg);
}

void cfg_cur_root(struct cur *c, int file, struct doc *d)
{
    memset(c, 0, sizeof(*c));
    c->file = file;
    c->doc = d;
    c->v = d->root;
    c->pos = d->root_pos;
}

void cfg_cur_member(const struct cur *p, const char *key, json_t *v, struct cur *out)
{
    out->file = p->file;
    out->doc = p->doc;
    out->v = v;
    out->pos = doc_member_pos(p->doc, p->v, key);
    doc_path_key(out->path, sizeof(out->path), p->path, key);
}

/* 1 and *out filled when object p has member key. */
int cfg_cur_get(const struct cur *p, const char *key, struct cur *out)
{
    json_t *v = json_is_object(p->v) ? json_object_get(p->v, key) : NULL;

    if (v == NULL)
        return 0;
    cfg_cur_member(p, key, v, out);
    return 1;
}

/* Follows a dotted path of object keys from p. */
int cfg_cur_lookup(const struct cur *p, const char *dotted, struct cur *out)
{
    char buf[DOC_PATH_MAX], *tok, *save = NULL;
    struct cur cfg_at = *p;

    snprintf(buf, sizeof(buf), "%s", dotted);
    for (tok = strtok_r(buf, ".", &save); tok; tok = strtok_r(NULL, ".", &save)) {
        struct cur next;
        if (!cfg_cur_get(&cfg_at, tok, &next))
            return 0;
        cfg_at = next;
    }
    *out = cfg_at;
    return 1;
}

void cfg_cur_elem(const struct cur *p, size_t i, struct cur *out)
{
    out->file = p->file;
    out->doc = p->doc;
    out->v = json_array_get(p->v, i);
    out->pos = doc_elem_pos(p->doc, p->v, i);
    doc_path_index(out->path, sizeof(out->path), p->path, i);
}

/* A value that may be one entry or a list of entries: entry i (the value
 * itself when it is not a list). */
void cfg_cur_item(const struct cur *p, size_t i, struct cur *out)
{
    if (json_is_array(p->v))
        cfg_cur_elem(p, i, out);
    else
        *out = *p;
}

const char *cfg_want_map(const struct cur *c)
{
    return c->doc->yaml ? "expected a mapping" : "expected an object";
}

const char *cfg_want_list(const struct cur *c)
{
    return c->doc->yaml ? "expected a list" : "expected an array";
}

/* "expected a string", with a hint when YAML typed an unquoted scalar. */
const char *cfg_want_string(const struct cur *c)
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
json_t *cfg_typed(const struct cur *c)
{
    json_t *v;

    if (!json_is_string(c->v) || !(doc_flags(c->doc, c->v) & DOC_RETYPE))
        return json_incref(c->v);
    v = doc_yaml_scalar(json_string_value(c->v), json_string_length(c->v));
    if (v == NULL)
        oom();
    return v;
}

void cfg_add_ref(struct loader *ld, int kind, const struct cur *c, const char *name)
{
    struct ref *r;

    if (doc_flags(c->doc, c->v) & DOC_INVALID)
        return;
    ld->refs = cfg_grow(ld->refs, ld->nrefs, sizeof(*ld->refs));
    r = &ld->refs[ld->nrefs++];
    r->kind = kind;
    r->file = c->file;
    r->pos = c->pos;
    r->path = cfg_xstrdup(c->path);
    r->name = cfg_xstrdup(name);
}

const struct field *cfg_field_find(const struct loader *ld, enum scope sc, const char *path)
{
    size_t i;

    for (i = 0; i < ld->nfields; i++)
        if (ld->fields[i].scope == sc && strcmp(ld->fields[i].path, path) == 0)
            return &ld->fields[i];
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

static int field_is_prefix(const struct loader *ld, enum scope sc, const char *path)
{
    size_t i;

    for (i = 0; i < ld->nfields; i++)
        if (ld->fields[i].scope == sc && field_under(&ld->fields[i], path))
            return 1;
    return 0;
}

void *cfg_at(void *base, size_t off)
{
    return (char *)base + off;
}

/* Never quotes the secret. */
const char *cfg_check_secret(const char *s)
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
        cfg_fmt_duration(lo, sizeof(lo), f->lo);
        cfg_fmt_duration(hi, sizeof(hi), f->hi);
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

int cfg_enum_lookup(const struct ename *names, const char *s, int *out)
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
    if (json_is_string(c->v) && (s = cfg_suggest(json_string_value(c->v), cands, n)) != NULL) {
        cerr(ld, c, "unknown value \"%.64s\"%s", json_string_value(c->v),
             cfg_did_you_mean(dym, sizeof(dym), s));
        return -1;
    }
    if (json_is_string(c->v))
        cerr(ld, c, "unknown value \"%.64s\", expected one of: %s", json_string_value(c->v), list);
    else
        cerr(ld, c, "expected one of: %s", list);
    return -1;
}

/* A list of non-empty strings; on any problem *l is left unchanged. */
int cfg_parse_strlist(struct loader *ld, const struct cur *c, unsigned flags,
                      struct cfg_strlist *l)
{
    size_t i, n;
    int bad = 0;

    if (!json_is_array(c->v)) {
        cerr(ld, c, "%s of strings", cfg_want_list(c));
        return -1;
    }
    n = json_array_size(c->v);
    if (n == 0 && (flags & FL_NONEMPTY)) {
        cerr(ld, c, "must not be empty");
        return -1;
    }
    for (i = 0; i < n; i++) {
        struct cur ic;
        cfg_cur_elem(c, i, &ic);
        if (!json_is_string(ic.v)) {
            cerr(ld, &ic, "%s", cfg_want_string(&ic));
            bad = 1;
        } else if (json_string_length(ic.v) == 0) {
            cerr(ld, &ic, "must not be empty");
            bad = 1;
        }
    }
    if (bad)
        return -1;
    cfg_strlist_free(l);
    l->v = cfg_xcalloc(n, sizeof(char *));
    for (i = 0; i < n; i++)
        l->v[i] = cfg_xstrdup(json_string_value(json_array_get(c->v, i)));
    l->n = n;
    return 0;
}

/* Parses one value into base + f->off. 0 on success, -1 after an error. */
int cfg_parse_leaf(struct loader *ld, const struct field *f, const struct cur *c, void *base)
{
    json_t *v;
    int rc = 0;

    switch (f->type) {
    case T_SPECIAL:
        return f->special(ld, f, c, base);
    case T_STRLIST:
        return cfg_parse_strlist(ld, c, f->flags, cfg_at(base, f->off));
    case T_STR: {
        char **dst = cfg_at(base, f->off);
        const char *msg;
        if (!json_is_string(c->v)) {
            cerr(ld, c, "%s", cfg_want_string(c));
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
        *dst = cfg_xstrdup(json_string_value(c->v));
        return 0;
    }
    case T_ENUM: {
        int x;
        if (!json_is_string(c->v) || cfg_enum_lookup(f->names, json_string_value(c->v), &x) < 0)
            return enum_err(ld, f->names, c);
        *(int *)cfg_at(base, f->off) = x;
        return 0;
    }
    default:
        break;
    }

    v = cfg_typed(c);
    switch (f->type) {
    case T_INT:
        if (!json_is_integer(v)) {
            cerr(ld, c, "expected an integer");
            rc = -1;
        } else if (!in_range(ld, f, (double)json_integer_value(v))) {
            rc = range_err(ld, f, c);
        } else {
            *(int *)cfg_at(base, f->off) = (int)json_integer_value(v);
        }
        break;
    case T_BOOL:
        if (!json_is_boolean(v)) {
            cerr(ld, c, "expected true or false");
            rc = -1;
        } else {
            *(int *)cfg_at(base, f->off) = json_is_true(v);
        }
        break;
    case T_NUM:
        if (!json_is_number(v)) {
            cerr(ld, c, "expected a number");
            rc = -1;
        } else if (!in_range(ld, f, json_number_value(v))) {
            rc = range_err(ld, f, c);
        } else {
            *(double *)cfg_at(base, f->off) = json_number_value(v);
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
            *(int64_t *)cfg_at(base, f->off) = ms;
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
            *(size_t *)cfg_at(base, f->off) = (size_t)n;
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
void cfg_defaults_parse(struct loader *ld)
{
    size_t i;

    ld->defdoc = cfg_xcalloc(ld->nfields, sizeof(*ld->defdoc));
    for (i = 0; i < ld->nfields; i++) {
        const char *def = ld->fields[i].def;
        size_t j;
        if (def == NULL)
            continue;
        if (doc_parse_yaml(&ld->defdoc[i], def, strlen(def)) < 0 || ld->defdoc[i].root == NULL)
            cfg_err_at(ld, FILE_DEFAULTS, ld->defdoc[i].root_pos, ld->fields[i].path,
                   "bad built-in default");
        for (j = 0; j < ld->defdoc[i].nerrs; j++)
            cfg_err_at(ld, FILE_DEFAULTS, ld->defdoc[i].errs[j].pos, ld->fields[i].path, "%s",
                   ld->defdoc[i].errs[j].msg);
    }
}

void cfg_defaults_apply(struct loader *ld, enum scope sc, void *base)
{
    size_t i;

    for (i = 0; i < ld->nfields; i++) {
        struct cur c;
        if (ld->fields[i].scope != sc || ld->fields[i].def == NULL || ld->defdoc[i].root == NULL)
            continue;
        cfg_cur_root(&c, FILE_DEFAULTS, &ld->defdoc[i]);
        snprintf(c.path, sizeof(c.path), "%s", ld->fields[i].path);
        ld->in_defaults = 1;
        cfg_parse_leaf(ld, &ld->fields[i], &c, base);
        ld->in_defaults = 0;
    }
}

/* ---- the walker -------------------------------------------------------- */

static const char *type_name_of(const struct loader *ld, unsigned mask)
{
    size_t i;

    const struct ename *t = cfg_field_find(ld, S_NOTIFY, "type")->names;

    for (i = 0; t[i].name; i++)
        if (mask == ONLY(t[i].value))
            return t[i].name;
    return "?";
}

static void unknown_key(struct loader *ld, const struct cur *c, const char *key,
                        enum scope sc, const char *prefix, unsigned mask)
{
    const char *cands[64], *s;
    char comp[64][48];
    size_t i, n = 0;

    for (i = 0; i < ld->nfields && n < 64; i++) {
        const char *rest;
        size_t len;
        if (ld->fields[i].scope != sc || (rest = field_under(&ld->fields[i], prefix)) == NULL)
            continue;
        if (ld->fields[i].only && !(ld->fields[i].only & mask))
            continue;
        len = strcspn(rest, ".");
        if (len >= sizeof(comp[0]))
            continue;
        memcpy(comp[n], rest, len);
        comp[n][len] = '\0';
        cands[n] = comp[n];
        n++;
    }
    s = cfg_suggest(key, cands, n);
    cfg_unknown_key_err(ld, c, key, s);
}

/*
 * Checks object c against the rows of scope sc under `prefix` (a dotted path
 * relative to the scope's object, "" at its top), parsing each member into
 * base. `mask` filters rows by `only`; `required` turns on FL_REQ checks.
 */
void cfg_walk(struct loader *ld, const struct cur *c, enum scope sc, const char *prefix,
              void *base, unsigned mask, int required)
{
    const char *key;
    json_t *val;
    size_t i;

    if (!json_is_object(c->v)) {
        cerr(ld, c, "%s", cfg_want_map(c));
        return;
    }
    json_object_foreach(c->v, key, val) {
        char rel[DOC_PATH_MAX];
        const struct field *f;
        struct cur cc;

        snprintf(rel, sizeof(rel), "%s%s%s", prefix, *prefix ? "." : "", key);
        cfg_cur_member(c, key, val, &cc);
        f = strchr(key, '.') ? NULL : cfg_field_find(ld, sc, rel);
        if (f != NULL) {
            if (f->flags & FL_FIRST)
                continue;
            if (f->only && !(f->only & mask)) {
                cfg_kerr(ld, c, key, "not used by notifications of type \"%s\"", type_name_of(ld, mask));
                continue;
            }
            if (f->type == T_SPECIAL && json_is_null(val))
                continue;
            cfg_parse_leaf(ld, f, &cc, base);
        } else if (!strchr(key, '.') && field_is_prefix(ld, sc, rel)) {
            if (!json_is_null(val))     /* an empty section: defaults */
                cfg_walk(ld, &cc, sc, rel, base, mask, 1);
        } else {
            unknown_key(ld, c, key, sc, prefix, mask);
        }
    }
    if (!required)
        return;
    for (i = 0; i < ld->nfields; i++) {
        const struct field *f = &ld->fields[i];
        const char *rest;
        if (f->scope != sc || !(f->flags & FL_REQ) || (f->only && !(f->only & mask)))
            continue;
        if ((rest = field_under(f, prefix)) == NULL || strchr(rest, '.'))
            continue;
        if (json_object_get(c->v, rest) == NULL)
            cfg_merr(ld, c, rest, "missing required key");
    }
}

void cfg_nameset_init(struct nameset *ns, size_t n)
{
    size_t cap = 16;

    while (cap < 2 * n + 1)
        cap *= 2;
    ns->slot = cfg_xcalloc(cap, sizeof(size_t));
    ns->mask = cap - 1;
}

/* Returns the index of an entry named s, or adds idx and returns -1.
 * `names` is the array of entry names seen so far (as indices). */
long cfg_nameset_add(struct nameset *ns, const char *s, size_t idx,
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

/* Reads a key_file into *out, trimmed. On failure reports at c, without
 * echoing the file name: a key pasted into key_file by mistake is a secret. */
int cfg_read_key_file(struct loader *ld, const struct cur *c, const char *name, char **out)
{
    char *path = cfg_join_path(ld->dir, name), *buf, *b, *e;
    size_t n;
    FILE *f;
    int rc = -1;

    if ((f = fopen(path, "rb")) == NULL) {
        cerr(ld, c, "cannot read the key_file: %s", strerror(errno));
        free(path);
        return -1;
    }
    buf = cfg_xcalloc(1, MAX_KEY_FILE_BYTES + 1);
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
        } else if (strlen(b) != (size_t)(e - b) || cfg_check_secret(b)) {
            cerr(ld, c, "the key_file's content: %s",
                 strlen(b) != (size_t)(e - b) ? "a key must not contain a NUL byte" : cfg_check_secret(b));
        } else {
            *out = cfg_xstrdup(b);
            rc = 0;
        }
    }
    memset(buf, 0, MAX_KEY_FILE_BYTES + 1);
    free(buf);
    fclose(f);
    free(path);
    return rc;
}
