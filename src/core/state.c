/*
 * state.c -- the runtime state table (see state.h).
 *
 * Two chained hash tables (hosts, keys) sharing one implementation over
 * `struct state_entry`, grown by doubling. Lookups happen when a snapshot
 * is installed, not per request: a snapshot keeps direct pointers.
 */
#include <stdlib.h>
#include <string.h>

#include "lock.h"
#include "state.h"

#define STATE_INITIAL_SLOTS 64

struct table {
    struct state_entry **slot;
    size_t               size;   /* power of two */
    size_t               count;
    size_t               entry_size;
    void               (*destroy)(struct state_entry *e);  /* may be NULL */
};

static void host_destroy(struct state_entry *e);

static struct table hosts = { NULL, 0, 0, sizeof(struct host_state), host_destroy };
static struct table keys  = { NULL, 0, 0, sizeof(struct key_state), NULL };


static void host_destroy(struct state_entry *e)
{
    struct host_state *h = (struct host_state *)e;

    size_t i;

    breaker_free(&h->br);
    for (i = 0; i < h->nmbr; i++) {
        breaker_free(&h->mbr[i]->br);
        free(h->mbr[i]->model);
        free(h->mbr[i]);
    }
    free(h->mbr);
    cfg_strlist_free(&h->models_found);
    cfg_strlist_free(&h->containers_found);
}


static int table_grow(struct table *t)
{
    size_t nsize = t->size ? t->size * 2 : STATE_INITIAL_SLOTS, i;
    struct state_entry **ns = calloc(nsize, sizeof(*ns));

    if (ns == NULL)
        return -1;
    for (i = 0; i < t->size; i++) {
        struct state_entry *e = t->slot[i], *next;
        for (; e; e = next) {
            size_t b = config_hash(e->key) & (nsize - 1);
            next = e->next;
            e->next = ns[b];
            ns[b] = e;
        }
    }
    free(t->slot);
    t->slot = ns;
    t->size = nsize;
    return 0;
}

/* Returns the entry with an extra reference; *created says it is new. */
static struct state_entry *table_get(struct table *t, const char *key, int *created)
{
    struct state_entry *e;
    size_t b;

    if (t->size) {
        for (e = t->slot[config_hash(key) & (t->size - 1)]; e; e = e->next) {
            if (strcmp(e->key, key) == 0) {
                e->refs++;
                *created = 0;
                return e;
            }
        }
    }
    if (t->count >= t->size && table_grow(t) < 0)
        return NULL;
    e = calloc(1, t->entry_size);
    if (e == NULL)
        return NULL;
    e->key = strdup(key);
    if (e->key == NULL) {
        free(e);
        return NULL;
    }
    e->refs = 1;
    b = config_hash(key) & (t->size - 1);
    e->next = t->slot[b];
    t->slot[b] = e;
    t->count++;
    *created = 1;
    return e;
}

static void table_put(struct table *t, struct state_entry *e)
{
    struct state_entry **pp;

    if (e == NULL || --e->refs > 0)
        return;
    for (pp = &t->slot[config_hash(e->key) & (t->size - 1)]; *pp; pp = &(*pp)->next) {
        if (*pp == e) {
            *pp = e->next;
            break;
        }
    }
    t->count--;
    if (t->destroy)
        t->destroy(e);
    free(e->key);
    free(e);
    if (t->count == 0) {
        free(t->slot);
        t->slot = NULL;
        t->size = 0;
    }
}

struct host_state *state_host_get(const char *name, const struct breaker_params *bp)
{
    int created;
    struct host_state *h;

    lock_assert_held();
    h = (struct host_state *)table_get(&hosts, name, &created);
    if (h && created) {
        balance_live_init(&h->live, 1);
        h->rr = config_hash(name) >> 16;   /* hosts start their key rotation apart */
        h->health = HEALTH_HEALTHY;
        if (breaker_init(&h->br, bp) < 0) {
            state_host_put(h);
            return NULL;
        }
    }
    return h;
}

void state_host_put(struct host_state *h)
{
    lock_assert_held();
    table_put(&hosts, h ? &h->e : NULL);
}

struct breaker *state_model_breaker(struct host_state *h, const char *model,
                                    const struct breaker_params *bp)
{
    struct model_breaker **v, *m;
    size_t i;

    lock_assert_held();
    for (i = 0; i < h->nmbr; i++)
        if (strcmp(h->mbr[i]->model, model) == 0)
            return &h->mbr[i]->br;
    if (h->nmbr == STATE_MAX_MODEL_BREAKERS)
        return NULL;
    v = realloc(h->mbr, (h->nmbr + 1) * sizeof(*v));
    if (v == NULL)
        return NULL;
    h->mbr = v;
    m = calloc(1, sizeof(*m));
    if (m == NULL || (m->model = strdup(model)) == NULL || breaker_init(&m->br, bp) < 0) {
        if (m)
            free(m->model);
        free(m);
        return NULL;
    }
    h->mbr[h->nmbr++] = m;
    return &m->br;
}

void state_model_breakers_params(struct host_state *h, const struct breaker_params *bp)
{
    size_t i;

    lock_assert_held();
    for (i = 0; i < h->nmbr; i++)
        breaker_set_params(&h->mbr[i]->br, bp);
}

struct key_state *state_key_get(const char *id)
{
    int created;

    lock_assert_held();
    return (struct key_state *)table_get(&keys, id, &created);
}

void state_key_put(struct key_state *k)
{
    lock_assert_held();
    table_put(&keys, k ? &k->e : NULL);
}

size_t state_hosts_count(void)
{
    lock_assert_held();
    return hosts.count;
}
