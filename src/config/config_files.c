/*
 * config_files.c -- loads hosts.json, api-keys.json and policies.yaml into
 * one `struct config` (config_load, config.h).
 *
 * The three files are parsed by doc.c into jansson trees with positions;
 * `${NAME}` is expanded in every string value; then each is walked against
 * the one table of keys (config_walk.c, config_schema.c); the cross-checks
 * (config_cross.c) run last, when everything is known. The messages are
 * sorted by file then position.
 *
 * Loading runs at startup and on reload only, never on the request path; out
 * of memory aborts, as in the rest of the daemon.
 */
#include "config_int.h"
#include "route.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const file_names[NFILES] = {
    "hosts.json", "api-keys.json", "policies.yaml", "(built-in defaults)"
};

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
    out = cfg_xcalloc(1, cap);
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
                out = cfg_xrealloc(out, cap *= 2);
            out[n++] = *p++;
            continue;
        }
        need = strlen(val);
        while (n + need + 1 > cap)
            out = cfg_xrealloc(out, cap *= 2);
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
            cfg_cur_member(c, key, v, &cc);
            interpolate(ld, &cc);
        }
    } else if (json_is_array(c->v)) {
        size_t i;
        for (i = 0; i < json_array_size(c->v); i++) {
            struct cur ic;
            cfg_cur_elem(c, i, &ic);
            interpolate(ld, &ic);
        }
    } else if (json_is_string(c->v)) {
        interpolate_string(ld, c);
    }
}

/* ---- policies.yaml ----------------------------------------------------- */

static void load_policies(struct loader *ld)
{
    struct config *cfg = ld->c;
    struct cur root, c;
    char a[32];

    if (ld->state[FILE_POLICIES] != ST_OK || ld->doc[FILE_POLICIES].root == NULL)
        return;
    cfg_cur_root(&root, FILE_POLICIES, &ld->doc[FILE_POLICIES]);
    if (json_is_null(root.v))                   /* "---" alone, or "~" */
        return;
    if (!json_is_object(root.v)) {
        cerr(ld, &root, "expected a mapping of sections (server, routing, models, retry, ...)");
        return;
    }
    cfg_walk(ld, &root, S_POLICY, "", cfg, ~0u, 1);

    if (cfg->retry.backoff_max_ms < cfg->retry.backoff_initial_ms) {
        if (cfg_cur_lookup(&root, "retry.backoff.max", &c))
            cerr(ld, &c, "must not be less than retry.backoff.initial (%s)",
                 cfg_fmt_duration(a, sizeof(a), (double)cfg->retry.backoff_initial_ms));
        else if (cfg_cur_lookup(&root, "retry.backoff.initial", &c))
            cerr(ld, &c, "must not be more than retry.backoff.max (%s)",
                 cfg_fmt_duration(a, sizeof(a), (double)cfg->retry.backoff_max_ms));
    }
    cfg_check_affinity(ld, &root, "routing.sticky", cfg_sticky_by, cfg->routing.sticky,
                   cfg->routing.sticky_header);
    cfg_check_affinity(ld, &root, "routing.hash_key", cfg_hash_by, cfg->routing.hash_key,
                   cfg->routing.hash_header);
    cfg_check_tls(ld, &root);
    for (size_t i = 0; i < cfg->routing.passthrough.n; i++) {
        const char *pre = cfg->routing.passthrough.v[i];
        if ((pre[0] != '/' || strncmp(pre, "/admin", 6) == 0 || strchr(pre, '?'))
            && cfg_cur_lookup(&root, "routing.passthrough", &c))
            cerr(ld, &c, "prefix \"%.60s\" must start with '/', have no '?' and not be"
                 " under /admin", pre);
    }
    cfg->cache.routes_mask = cfg->cache.routes.n ? 0
        : (1u << API_CHAT) | (1u << API_COMPLETIONS) | (1u << API_EMBEDDINGS)
          | (1u << API_RESPONSES);
    for (size_t i = 0; i < cfg->cache.routes.n; i++) {
        int f = route_family_by_name(cfg->cache.routes.v[i]);
        if (f < 0 && cfg_cur_lookup(&root, "cache.routes", &c))
            cerr(ld, &c, "unknown API \"%.60s\" (chat, completions, embeddings,"
                 " responses, audio, images, moderations, rerank, messages)",
                 cfg->cache.routes.v[i]);
        else if (f >= 0)
            cfg->cache.routes_mask |= 1u << f;
    }
    if (cfg->cache.store == STORE_REDIS && cfg->sessions.store != STORE_REDIS
        && cfg_cur_lookup(&root, "cache.store", &c))
        cerr(ld, &c, "redis needs sessions.store: redis (the cache shares its connection)");
    cfg_check_redis(ld, &root);
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

/* host[:port] of an http(s) URL, without user info. */
static char *url_authority(const char *url)
{
    const char *p = url + cfg_http_scheme(url);
    size_t n = strcspn(p, "/?#");
    const char *cfg_at = memchr(p, '@', n);
    char *s;

    if (cfg_at) {
        n -= (size_t)(cfg_at + 1 - p);
        p = cfg_at + 1;
    }
    s = cfg_xcalloc(1, n + 1);
    memcpy(s, p, n);
    return s;
}

/* The URL without trailing slashes (but never into "scheme://"). */
static char *url_base(const char *url)
{
    char *s = cfg_xstrdup(url);
    size_t n = strlen(s), min = cfg_http_scheme(s) + 1;

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
    out = cfg_xcalloc(1, cap);
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
    if (cfg_template_authority_ok(h->url))
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
        if ((msg = cfg_check_http_url(s)) != NULL) {
            cerr(ld, c, "%s", msg);
            return -1;
        }
        h->url = url_base(s);
        h->name = url_authority(s);
        return 0;
    }
    if (!cfg_bare_host_ok(s)) {
        cerr(ld, c, "expected a host name like \"asia\", \"10.0.0.5:4000\" or \"[::1]:4000\","
             " or a URL like \"https://host:port\"");
        return -1;
    }
    h->name = cfg_xstrdup(s);
    h->url = expand_template(ld->c->routing.hosts_template, s);
    return template_url_check(ld, c, h);
}

static int host_from_object(struct loader *ld, const struct cur *c, struct cfg_host *h)
{
    struct cur kc;

    cfg_walk(ld, c, S_HOST, "", h, ~0u, 1);
    if (h->tls.ca_file && cfg_cur_lookup(c, "tls.ca_file", &kc)) {
        char *path = cfg_join_path(ld->dir, h->tls.ca_file);
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
            cfg_merr(ld, c, "name", "missing required key \"name\" (or \"url\")");
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
    if (h->keys && cfg_cur_get(c, "keys", &kc))
        cfg_add_ref(ld, REF_POOL, &kc, h->keys);
    h->apis_mask = h->apis.n ? 0 : ~0u;
    for (size_t i = 0; i < h->apis.n; i++) {
        int f = route_family_by_name(h->apis.v[i]);
        if (f < 0)
            cfg_merr(ld, c, "apis", "unknown API \"%.60s\" (chat, completions, embeddings,"
                 " responses, audio, images, moderations, rerank, messages)", h->apis.v[i]);
        else
            h->apis_mask |= 1u << f;
    }
    return 0;
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
    cfg_cur_root(&root, FILE_HOSTS, &ld->doc[FILE_HOSTS]);
    if (!json_is_object(root.v)) {
        cerr(ld, &root, "expected an object with key \"hosts\"");
        return;
    }
    json_object_foreach(root.v, key, v) {
        if (strcmp(key, "hosts") != 0)
            cfg_unknown_key_err(ld, &root, key, cfg_suggest(key, top, 1));
    }
    if (!cfg_cur_get(&root, "hosts", &hc)) {
        cfg_merr(ld, &root, "hosts", "missing required key");
        return;
    }
    if (!json_is_array(hc.v)) {
        cerr(ld, &hc, "expected an array of host names, URLs or objects");
        return;
    }
    ld->host_index = cfg_xcalloc(json_array_size(hc.v), sizeof(size_t));
    cfg_nameset_init(&seen, json_array_size(hc.v));
    for (i = 0; i < json_array_size(hc.v); i++) {
        struct cfg_host h;
        struct cur ec, nc;
        int rc;

        cfg_cur_elem(&hc, i, &ec);
        memset(&h, 0, sizeof(h));
        cfg_defaults_apply(ld, S_HOST, &h);
        if (json_is_string(ec.v)) {
            rc = host_from_string(ld, &ec, &h);
        } else if (json_is_object(ec.v)) {
            rc = host_from_object(ld, &ec, &h);
        } else {
            cerr(ld, &ec, "expected a host name, a URL or an object");
            rc = -1;
        }
        if (rc < 0) {
            cfg_host_free(&h);
            continue;
        }
        cfg->hosts = cfg_grow(cfg->hosts, cfg->nhosts, sizeof(*cfg->hosts));
        cfg->hosts[cfg->nhosts] = h;      /* visible to host_name_of */
        dup = cfg_nameset_add(&seen, h.name, cfg->nhosts, host_name_of, cfg);
        if (dup >= 0) {
            j = (size_t)dup;
            nc = ec;
            if (json_is_object(ec.v) && !cfg_cur_get(&ec, "name", &nc))
                cfg_cur_get(&ec, "url", &nc);
            cerr(ld, &nc, "duplicate host name \"%s\" (same as hosts[%zu])", h.name,
                 ld->host_index[j]);
            cfg_host_free(&h);
            continue;
        }
        ld->host_index[cfg->nhosts] = i;
        cfg->nhosts++;
    }
    free(seen.slot);
}

/* ---- api-keys.json ----------------------------------------------------- */

/* Fills k->id and k->fingerprint from k->secret (printable ASCII). */
static void key_ident(struct cfg_key *k)
{
    size_t len = strlen(k->secret), pre = 0;
    const char *dash;
    char buf[64];

    snprintf(buf, sizeof(buf), "%016llx", (unsigned long long)config_hash(k->secret));
    k->id = cfg_xstrdup(buf);
    if (len >= 12) {
        dash = memchr(k->secret, '-', 4);
        if (dash)
            pre = (size_t)(dash - k->secret) + 1;
        snprintf(buf, sizeof(buf), "%.*s\xe2\x80\xa6%s", (int)pre, k->secret, k->secret + len - 4);
    } else {
        snprintf(buf, sizeof(buf), "\xe2\x80\xa6%.6s", k->id);
    }
    k->fingerprint = cfg_xstrdup(buf);
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
    cfg_cur_root(&root, FILE_KEYS, &ld->doc[FILE_KEYS]);
    if (!json_is_object(root.v)) {
        cerr(ld, &root, "expected an object with key \"apiKeys\"");
        return;
    }
    json_object_foreach(root.v, key, v) {
        if (strcmp(key, "apiKeys") != 0)
            cfg_unknown_key_err(ld, &root, key, cfg_suggest(key, top, 1));
    }
    if (!cfg_cur_get(&root, "apiKeys", &kc)) {
        cfg_merr(ld, &root, "apiKeys", "missing required key");
        return;
    }
    if (!json_is_array(kc.v)) {
        cerr(ld, &kc, "expected an array of key objects");
        return;
    }
    index = cfg_xcalloc(json_array_size(kc.v), sizeof(size_t));
    cfg_nameset_init(&seen, json_array_size(kc.v));
    for (i = 0; i < json_array_size(kc.v); i++) {
        struct key_tmp kt;
        struct cur ec, fc, hc;
        int has_key, has_file;

        cfg_cur_elem(&kc, i, &ec);
        if (!json_is_object(ec.v)) {
            cerr(ld, &ec, "expected an object with \"key\" or \"key_file\"");
            continue;
        }
        memset(&kt, 0, sizeof(kt));
        cfg_defaults_apply(ld, S_KEY, &kt);
        cfg_walk(ld, &ec, S_KEY, "", &kt, ~0u, 1);
        has_key = json_object_get(ec.v, "key") != NULL;
        has_file = json_object_get(ec.v, "key_file") != NULL;
        if (has_key && has_file) {
            cerr(ld, &ec, "use either \"key\" or \"key_file\", not both");
        } else if (!has_key && !has_file) {
            cfg_merr(ld, &ec, "key", "missing required key \"key\" (or \"key_file\")");
        } else if (kt.key_file && cfg_cur_get(&ec, "key_file", &fc)) {
            cfg_read_key_file(ld, &fc, kt.key_file, &kt.k.secret);
        }
        free(kt.key_file);
        if (has_key && has_file) {
            cfg_key_free(&kt.k);
            continue;
        }
        if (cfg_cur_get(&ec, "hosts", &hc))
            cfg_ref_hosts(ld, &hc, &kt.k.hosts);
        if (cfg_cur_get(&ec, "key", &fc) && (doc_flags(fc.doc, fc.v) & DOC_INVALID)) {
            cfg_key_free(&kt.k);            /* an unset ${NAME}: already reported */
            continue;
        }
        if (kt.k.secret == NULL) {
            cfg_key_free(&kt.k);
            continue;
        }
        cfg->keys = cfg_grow(cfg->keys, cfg->nkeys, sizeof(*cfg->keys));
        cfg->keys[cfg->nkeys] = kt.k;     /* visible to key_secret_of */
        dup = cfg_nameset_add(&seen, kt.k.secret, cfg->nkeys, key_secret_of, cfg);
        if (dup >= 0) {
            j = (size_t)dup;
            /* at the value that gave the key: `key`, or `key_file` */
            if (!cfg_cur_get(&ec, "key", &fc))
                cfg_cur_get(&ec, "key_file", &fc);
            cerr(ld, &fc, "duplicate key (same as apiKeys[%zu])", index[j]);
            cfg_key_free(&kt.k);
            continue;
        }
        key_ident(&cfg->keys[cfg->nkeys]);
        index[cfg->nkeys] = i;
        cfg->nkeys++;
    }
    free(index);
    free(seen.slot);
}

/* admin.client_keys: clients "client_keys[N]" without limits, any model. */
static void finish_clients(struct config *cfg)
{
    size_t i;

    for (i = 0; i < cfg->admin.client_keys.n; i++) {
        struct cfg_client *cl;
        char name[48];

        cfg->clients = cfg_grow(cfg->clients, cfg->nclients, sizeof(*cfg->clients));
        cl = &cfg->clients[cfg->nclients++];
        memset(cl, 0, sizeof(*cl));
        snprintf(name, sizeof(name), "client_keys[%zu]", i);
        cl->name = cfg_xstrdup(name);
        cfg_sha256_hex(cfg->admin.client_keys.v[i], cl->key_sha256);
    }
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
    buf = cfg_xcalloc(1, cap);
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
            buf = cfg_xrealloc(buf, cap *= 2);
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
    char *path = cfg_join_path(ld->dir, "ips.txt"), *raw, *line, *save = NULL;
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
    out = cfg_xcalloc(1, cap);
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
            cfg_err_at(ld, file, d->root_pos, "", "the file is larger than %d MB", MAX_FILE_BYTES >> 20);
        else
            cfg_err_at(ld, file, d->root_pos, "", "cannot read the file: %s", strerror(errno));
        return;
    }
parse:
    rc = file == FILE_POLICIES ? doc_parse_yaml(d, text, len) : doc_parse_json(d, text, len);
    free(text);
    for (i = 0; i < d->nerrs; i++)
        cfg_err_at(ld, file, d->errs[i].pos, d->errs[i].path, "%s", d->errs[i].msg);
    if (rc < 0) {
        ld->state[file] = ST_FAILED;
        return;
    }
    ld->state[file] = ST_OK;
    if (d->root) {
        cfg_cur_root(&root, file, d);
        interpolate(ld, &root);
    }
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
    ld.fields = cfg_fields;
    ld.nfields = cfg_nfields;
    for (i = 0; i < NFILES; i++)
        ld.path[i] = i == FILE_DEFAULTS ? cfg_xstrdup(file_names[i]) : cfg_join_path(dir, file_names[i]);
    c = ld.c = cfg_xcalloc(1, sizeof(*c));
    c->refcnt = 1;
    c->dir = cfg_xstrdup(dir);

    cfg_defaults_parse(&ld);
    cfg_defaults_apply(&ld, S_POLICY, c);

    /* policies.yaml first: hosts_template shapes hosts.json. */
    load_file(&ld, FILE_POLICIES, 0);
    load_file(&ld, FILE_HOSTS, 1);
    load_file(&ld, FILE_KEYS, 0);
    load_policies(&ld);
    finish_policies(c);
    finish_clients(c);
    load_hosts(&ld);
    load_keys(&ld);
    cfg_check_refs(&ld);
    cfg_build_tls(&ld);
    if (ld.nerrs)
        cfg_redact_errors(&ld);

    if (ld.nerrs > 1)
        qsort(ld.errs, ld.nerrs, sizeof(*ld.errs), perr_cmp);
    for (i = 0; i < ld.nerrs; i++) {
        if (errs) {
            errs->msg = cfg_xrealloc(errs->msg, (errs->n + 1) * sizeof(char *));
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
    for (i = 0; i < ld.nfields; i++)
        doc_free(&ld.defdoc[i]);
    free(ld.defdoc);
    for (i = 0; i < NFILES; i++) {
        doc_free(&ld.doc[i]);
        free(ld.path[i]);
    }
    return c;
}
