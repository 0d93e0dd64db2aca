/*
 * config_cross.c -- the checks of the configuration that need more than one
 * value: affinity keys and their header, server.tls as a whole (cert and key
 * together, listeners with tls: true, then the context built through the
 * hooks), sessions.redis as a whole (through the hooks), the references
 * between the files (hosts named by keys and fallback steps, key pools
 * named by hosts), checked once everything is read; and the redaction of
 * every known secret from the messages.
 */
#include "config_int.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

void cfg_check_affinity(struct loader *ld, const struct cur *root, const char *where,
                        const struct ename *names, enum cfg_affinity by, const char *header)
{
    json_t *byv;
    struct cur c;
    int x;

    if (!cfg_cur_lookup(root, where, &c) || !json_is_object(c.v))
        return;
    /* Without a valid `by` there is nothing to hold `header` against. */
    byv = json_object_get(c.v, "by");
    if (!json_is_string(byv) || cfg_enum_lookup(names, json_string_value(byv), &x) < 0)
        return;
    if (by == AFF_HEADER && header == NULL && !json_object_get(c.v, "header"))
        cfg_merr(ld, &c, "header", "missing required key (by is \"header\")");
    if (by != AFF_HEADER && header != NULL && json_object_get(c.v, "header"))
        cfg_kerr(ld, &c, "header", "only used when by is \"header\"");
}

/* server.tls needs cert and key together; a listener with tls: true needs
 * them; one that does not say serves TLS when they are set. Paths are
 * resolved against the -c directory here. */
void cfg_check_tls(struct loader *ld, const struct cur *root)
{
    struct config *cfg = ld->c;
    struct cfg_tls *t = &cfg->server.tls;
    char **paths[3] = { &t->cert, &t->key, &t->client_ca };
    struct cur c;
    size_t i;

    if ((t->cert == NULL) != (t->key == NULL) && cfg_cur_lookup(root, "server.tls", &c))
        cfg_merr(ld, &c, t->cert ? "key" : "cert", "missing required key (cert and key go together)");
    else if (t->cert == NULL && t->client_ca && cfg_cur_lookup(root, "server.tls.client_ca", &c))
        cerr(ld, &c, "needs server.tls.cert and server.tls.key");
    for (i = 0; i < 3; i++)
        if (*paths[i]) {
            char *p = cfg_join_path(ld->dir, *paths[i]);
            free(*paths[i]);
            *paths[i] = p;
        }
    for (i = 0; i < cfg->server.nlisteners; i++) {
        struct cfg_listener *l = &cfg->server.listeners[i];
        if (l->tls < 0)
            l->tls = t->cert != NULL;
        else if (l->tls && t->cert == NULL && cfg_cur_lookup(root, "server.listen", &c))
            cerr(ld, &c, "%s: tls: true needs server.tls.cert and server.tls.key", l->address);
    }
}

/* Builds server.tls_ctx once the rest is known good: reads and checks the
 * certificate, key and client CA. Its problems name the file. */
void cfg_build_tls(struct loader *ld)
{
    struct config *cfg = ld->c;
    char err[1024];
    size_t i;

    for (i = 0; i < cfg->server.nlisteners; i++)     /* -l, or no policies.yaml */
        if (cfg->server.listeners[i].tls < 0)
            cfg->server.listeners[i].tls = cfg->server.tls.cert != NULL;
    if (cfg->server.tls.cert == NULL || ld->nerrs || cfg_hooks.tls_new == NULL)
        return;
    cfg->server.tls_ctx = cfg_hooks.tls_new(&cfg->server.tls, (int64_t)time(NULL), err, sizeof(err));
    if (cfg->server.tls_ctx)
        return;
    if (strncmp(err, "server.tls", 10) == 0) {
        char *colon = strchr(err, ':');
        *colon = '\0';
        cfg_err_raw(ld, FILE_POLICIES, (struct doc_pos){0}, err, colon + 2);
        return;
    }
    ld->errs = cfg_grow(ld->errs, ld->nerrs, sizeof(*ld->errs));
    memset(&ld->errs[ld->nerrs], 0, sizeof(ld->errs[0]));
    ld->errs[ld->nerrs].file = FILE_POLICIES;
    ld->errs[ld->nerrs].seq = ld->nerrs;
    ld->errs[ld->nerrs].text = cfg_xstrdup(err);
    ld->nerrs++;
}

/* sessions.redis as a whole: one checker (session_redis.c, through the
 * hooks) for -t and runtime. */
void cfg_check_redis(struct loader *ld, const struct cur *root)
{
    const char *key = NULL, *why;
    struct cur c;

    if (cfg_hooks.redis_problem == NULL)
        return;
    why = cfg_hooks.redis_problem(ld->c, &key);
    if (why == NULL)
        return;
    if (key != NULL && cfg_cur_lookup(root, key, &c))
        cerr(ld, &c, "%s", why);
    else if (cfg_cur_lookup(root, "sessions.redis", &c))
        cerr(ld, &c, "%s", why);
}

/* ---- cross-references -------------------------------------------------- */

void cfg_check_refs(struct loader *ld)
{
    struct config *cfg = ld->c;
    const char **names = cfg_xcalloc(cfg->nhosts + cfg->nkeys + 1, sizeof(char *));
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
                cfg_err_at(ld, r->file, r->pos, r->path, "no host named \"%s\" in hosts.json%s",
                       r->name, cfg_did_you_mean(dym, sizeof(dym), cfg_suggest(r->name, names, n)));
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
                cfg_err_at(ld, r->file, r->pos, r->path, "no key in api-keys.json has pool \"%s\"%s",
                       r->name, cfg_did_you_mean(dym, sizeof(dym), cfg_suggest(r->name, names, n)));
        }
    }
    free(names);
}

/* ---- redaction --------------------------------------------------------- */

static void add_secret(const char ***v, size_t *n, const json_t *s)
{
    if (!json_is_string(s) || json_string_length(s) < 4)
        return;                         /* shorter ones would redact noise */
    *v = cfg_grow(*v, *n, sizeof(**v));
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
    cfg_cur_root(&pr, FILE_POLICIES, &ld->doc[FILE_POLICIES]);
    if (cfg_cur_lookup(&pr, "admin.token", &c))
        add_secret(v, n, c.v);
    if (cfg_cur_lookup(&pr, "admin.client_keys", &c))
        json_array_foreach(c.v, i, e)
            add_secret(v, n, e);
    if (cfg_cur_lookup(&pr, "alerts.notifications", &c))
        json_array_foreach(c.v, i, e)
            add_secret(v, n, json_object_get(e, "password"));
    if (cfg_cur_lookup(&pr, "clients", &c))
        json_array_foreach(c.v, i, e)
            add_secret(v, n, json_object_get(e, "key"));
    if (cfg_cur_lookup(&pr, "sessions.redis.password", &c))
        add_secret(v, n, c.v);
    if (cfg_cur_lookup(&pr, "sessions.redis.sentinel_password", &c))
        add_secret(v, n, c.v);
    for (i = 0; i < ld->c->nkeys; i++) {   /* from key_file too */
        *v = cfg_grow(*v, *n, sizeof(**v));
        (*v)[(*n)++] = ld->c->keys[i].secret;
    }
}

/*
 * The last line of defence: whatever path led a secret into a message (a
 * file misshapen in a way nobody foresaw), it leaves as "[redacted]".
 */
void cfg_redact_errors(struct loader *ld)
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
                t = cfg_xcalloc(1, strlen(ld->errs[i].text) - sl + sizeof("[redacted]"));
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
