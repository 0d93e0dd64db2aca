/*
 * config.c -- the configuration snapshot: one immutable, refcounted
 * `struct config` (see config.h) and what the request path asks of it.
 *
 * The loader is split by layer, lowest first:
 *   config.c         the snapshot's lifetime (config_ref/unref and the frees
 *                    of each entry), the hooks of the modules above config/
 *                    (config_hooks_set), the lookups used per request
 *   config_walk.c    the walker: cursors into a parsed document, typed reads
 *                    of the leaves, defaults, every problem as FILE:LINE:COL
 *   config_schema.c  the table of keys (types, defaults, ranges), the string
 *                    checks and the handlers of the keys with a shape of
 *                    their own
 *   config_cross.c   the cross-checks, once everything is read: references
 *                    between the files, server.tls and sessions.redis (through
 *                    the hooks), the redaction of secrets from messages
 *   config_files.c   the three files (hosts.json, api-keys.json,
 *                    policies.yaml) read and walked with the one table, and
 *                    config_load(), the order of it all
 * config_int.h is what they share. Nothing here calls a module above
 * config/.
 */
#include "config_int.h"
#include "route.h"
#include "hash.h"

#include <stdlib.h>
#include <string.h>

/* Set once at start-up, before the first load (config_hooks_set). */
struct config_hooks cfg_hooks;

void config_hooks_set(const struct config_hooks *h)
{
    cfg_hooks = *h;
}

/* ---- freeing what the loader built ----------------------------------- */

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

void cfg_listeners_free(struct config *cfg)
{
    size_t i;

    for (i = 0; i < cfg->server.nlisteners; i++)
        free(cfg->server.listeners[i].address);
    free(cfg->server.listeners);
    cfg->server.listeners = NULL;
    cfg->server.nlisteners = 0;
}

void cfg_step_free(struct cfg_fallback_step *s)
{
    free(s->model);
    cfg_strlist_free(&s->hosts);
}

void cfg_chain_free(struct cfg_fallback_chain *ch)
{
    size_t i;

    free(ch->match);
    for (i = 0; i < ch->nsteps; i++)
        cfg_step_free(&ch->steps[i]);
    free(ch->steps);
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

void cfg_host_free(struct cfg_host *h)
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

/* Best effort: do not leave a secret lying around in freed memory. */
static void secret_free(char *s)
{
    volatile char *p = s;

    while (p != NULL && *p)
        *p++ = '\0';
    free(s);
}

void cfg_key_free(struct cfg_key *k)
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

void cfg_client_free(struct cfg_client *c)
{
    free(c->name);
    free(c->cert_subject);
    cfg_strlist_free(&c->models);
}

/* ---- the snapshot ------------------------------------------------------ */

void config_free(struct config *c)
{
    size_t i;

    if (c == NULL)
        return;
    free(c->dir);
    for (i = 0; i < c->nhosts; i++)
        cfg_host_free(&c->hosts[i]);
    free(c->hosts);
    for (i = 0; i < c->nkeys; i++)
        cfg_key_free(&c->keys[i]);
    free(c->keys);
    free(c->server.listen);
    cfg_listeners_free(c);
    cfg_strlist_free(&c->server.resolver);
    free(c->server.tls.cert);
    free(c->server.tls.key);
    free(c->server.tls.client_ca);
    free(c->server.tls.ciphers);
    free(c->server.tls.ciphersuites);
    if (c->server.tls_ctx && cfg_hooks.tls_free)
        cfg_hooks.tls_free(c->server.tls_ctx);
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
        cfg_chain_free(&c->fallback.chains[i]);
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
        cfg_client_free(&c->clients[i]);
    free(c->clients);
    free(c);
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
