/*
 * state.c -- the runtime state table (see state.h).
 *
 * Two chained hash tables (hosts, keys) sharing one implementation over
 * `struct state_entry`, grown by doubling. Lookups happen when a snapshot
 * is installed, not per request: a snapshot keeps direct pointers.
 */
#include <stdlib.h>
#include <string.h>

#include "state.h"

#define STATE_INITIAL_SLOTS 64

struct table {
    struct state_entry **slot;
    size_t               size;   /* power of two */
    size_t               count;
    size_t               entry_size;
};

static struct table hosts = { NULL, 0, 0, sizeof(struct host_state) };
static struct table keys  = { NULL, 0, 0, sizeof(struct key_state) };

static uint64_t hash_str(const char *s)
{
    uint64_t h = 1469598103934665603ULL;   /* FNV-1a */

    while (*s) {
        h ^= (unsigned char)*s++;
        h *= 1099511628211ULL;
    }
    return h;
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
            size_t b = hash_str(e->key) & (nsize - 1);
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

static struct state_entry *table_get(struct table *t, const char *key)
{
    struct state_entry *e;
    size_t b;

    if (t->size) {
        for (e = t->slot[hash_str(key) & (t->size - 1)]; e; e = e->next) {
            if (strcmp(e->key, key) == 0) {
                e->refs++;
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
    b = hash_str(key) & (t->size - 1);
    e->next = t->slot[b];
    t->slot[b] = e;
    t->count++;
    return e;
}

static void table_put(struct table *t, struct state_entry *e)
{
    struct state_entry **pp;

    if (e == NULL || --e->refs > 0)
        return;
    for (pp = &t->slot[hash_str(e->key) & (t->size - 1)]; *pp; pp = &(*pp)->next) {
        if (*pp == e) {
            *pp = e->next;
            break;
        }
    }
    t->count--;
    free(e->key);
    free(e);
    if (t->count == 0) {
        free(t->slot);
        t->slot = NULL;
        t->size = 0;
    }
}

struct host_state *state_host_get(const char *name)
{
    return (struct host_state *)table_get(&hosts, name);
}

void state_host_put(struct host_state *h)
{
    table_put(&hosts, h ? &h->e : NULL);
}

struct key_state *state_key_get(const char *id)
{
    return (struct key_state *)table_get(&keys, id);
}

void state_key_put(struct key_state *k)
{
    table_put(&keys, k ? &k->e : NULL);
}

size_t state_hosts_count(void)
{
    return hosts.count;
}
