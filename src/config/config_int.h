/*
 * config_int.h -- what the files of the configuration loader share (config.c,
 * config_walk.c, config_schema.c, config_cross.c, config_files.c): the loader
 * and its cursors, the row of the table of keys, and their functions. Not for
 * use outside src/config/.
 */
#ifndef INFERGATE_CONFIG_INT_H
#define INFERGATE_CONFIG_INT_H

#include "config.h"
#include "doc.h"

#include <stddef.h>

#define MAX_FILE_BYTES     (16 * 1024 * 1024)
#define MAX_KEY_FILE_BYTES (64 * 1024)

enum { FILE_HOSTS = 0, FILE_KEYS, FILE_POLICIES, FILE_DEFAULTS, NFILES };

enum file_state { ST_MISSING = 0, ST_FAILED, ST_OK };

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

    const struct field *fields;     /* the table of keys (schema) */
    size_t         nfields;
};

/* Where the walker is: a node of one document, its position and path. */
struct cur {
    int            file;
    struct doc    *doc;
    json_t        *v;
    struct doc_pos pos;
    char           path[DOC_PATH_MAX];
};

/* An error about the value at c; silent when that value is already known to
 * be wrong (an unset ${NAME} in it), so one mistake gives one message. */
#define cerr(ld, c, ...) do {                                                  \
        if (!(doc_flags((c)->doc, (c)->v) & DOC_INVALID))                      \
            cfg_err_at((ld), (c)->file, (c)->pos, (c)->path, __VA_ARGS__);     \
    } while (0)

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
#define ONLY(t)  (1u << (t))

/*
 * Duplicate checks: an open-addressing table of entry indices keyed by a
 * string (host name, key secret), so loading n hosts or keys stays O(n)
 * (100,000 keys took tens of seconds with pairwise compares).
 */
struct nameset {
    size_t *slot;           /* entry index + 1; 0 = empty */
    size_t  mask;
};

/* ---- config.c ---- */

extern struct config_hooks cfg_hooks;
void cfg_listeners_free(struct config *cfg);
void cfg_step_free(struct cfg_fallback_step *s);
void cfg_chain_free(struct cfg_fallback_chain *ch);
void cfg_host_free(struct cfg_host *h);
void cfg_key_free(struct cfg_key *k);
void cfg_client_free(struct cfg_client *c);
void config_free(struct config *c);

/* ---- config_walk.c ---- */

void *cfg_xcalloc(size_t n, size_t sz);
void *cfg_xrealloc(void *p, size_t sz);
char *cfg_xstrdup(const char *s);
void *cfg_grow(void *arr, size_t n, size_t sz);
char *cfg_join_path(const char *dir, const char *name);
const char *cfg_suggest(const char *word, const char *const *cands, size_t n);
const char *cfg_did_you_mean(char *buf, size_t cap, const char *s);
const char *cfg_fmt_duration(char *buf, size_t cap, double ms);
void cfg_err_raw(struct loader *ld, int file, struct doc_pos pos, const char *path,
                 const char *msg);
void cfg_err_at(struct loader *ld, int file, struct doc_pos pos, const char *path,
                const char *fmt, ...) __attribute__((format(printf, 5, 6)));
void cfg_kerr(struct loader *ld, const struct cur *c, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void cfg_unknown_key_err(struct loader *ld, const struct cur *c, const char *key,
                         const char *sug);
void cfg_merr(struct loader *ld, const struct cur *c, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void cfg_cur_root(struct cur *c, int file, struct doc *d);
void cfg_cur_member(const struct cur *p, const char *key, json_t *v, struct cur *out);
int cfg_cur_get(const struct cur *p, const char *key, struct cur *out);
int cfg_cur_lookup(const struct cur *p, const char *dotted, struct cur *out);
void cfg_cur_elem(const struct cur *p, size_t i, struct cur *out);
void cfg_cur_item(const struct cur *p, size_t i, struct cur *out);
const char *cfg_want_map(const struct cur *c);
const char *cfg_want_list(const struct cur *c);
const char *cfg_want_string(const struct cur *c);
json_t *cfg_typed(const struct cur *c);
void cfg_add_ref(struct loader *ld, int kind, const struct cur *c, const char *name);
const struct field *cfg_field_find(const struct loader *ld, enum scope sc, const char *path);
void *cfg_at(void *base, size_t off);
const char *cfg_check_secret(const char *s);
int cfg_enum_lookup(const struct ename *names, const char *s, int *out);
int cfg_parse_strlist(struct loader *ld, const struct cur *c, unsigned flags,
                      struct cfg_strlist *l);
int cfg_parse_leaf(struct loader *ld, const struct field *f, const struct cur *c, void *base);
void cfg_defaults_parse(struct loader *ld);
void cfg_defaults_apply(struct loader *ld, enum scope sc, void *base);
void cfg_walk(struct loader *ld, const struct cur *c, enum scope sc, const char *prefix,
              void *base, unsigned mask, int required);
void cfg_nameset_init(struct nameset *ns, size_t n);
long cfg_nameset_add(struct nameset *ns, const char *s, size_t idx,
                     const char *(*name_of)(const struct config *, size_t),
                     const struct config *c);
int cfg_read_key_file(struct loader *ld, const struct cur *c, const char *name, char **out);

/* ---- config_schema.c ---- */

extern const struct ename cfg_sticky_by[];
extern const struct ename cfg_hash_by[];
extern const struct field cfg_fields[];
extern const size_t cfg_nfields;
size_t cfg_http_scheme(const char *s);
const char *cfg_check_http_url(const char *s);
int cfg_bare_host_ok(const char *s);
int cfg_template_authority_ok(const char *url);
void cfg_ref_hosts(struct loader *ld, const struct cur *c, const struct cfg_strlist *l);
void cfg_sha256_hex(const char *key, char out[65]);

/* ---- config_cross.c ---- */

void cfg_check_affinity(struct loader *ld, const struct cur *root, const char *where,
                        const struct ename *names, enum cfg_affinity by, const char *header);
void cfg_check_tls(struct loader *ld, const struct cur *root);
void cfg_build_tls(struct loader *ld);
void cfg_check_redis(struct loader *ld, const struct cur *root);
void cfg_check_refs(struct loader *ld);
void cfg_redact_errors(struct loader *ld);

#endif
