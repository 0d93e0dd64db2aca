/*
 * keys.c -- upstream API key rotation (see keys.h).
 *
 * The ring for a host is built once per snapshot with nginx's smooth
 * weighted round-robin, so weights 3:1 give a b a a ..., never bursts;
 * picking is O(1) unless keys are cooling, then at most one walk of the
 * ring. Rings longer than KEYS_MAX_RING slots fall back to one slot per
 * key (weights ignored) to bound memory with very large key sets.
 */
#include <stdlib.h>
#include <string.h>

#include "keys.h"
#include "lock.h"

#define KEYS_MAX_RING 65536
#define KEYS_POOL_CACHE 256     /* pools whose rings are shared by their hosts */

static void ring_fill(struct keys_ring *r, const struct config *c,
                      const size_t *idx, size_t n, size_t total)
{
    long *cur = calloc(n, sizeof(long));
    size_t s, i;

    if (cur == NULL) {      /* degrade to plain order */
        for (i = 0; i < n; i++)
            r->slot[i] = (uint32_t)idx[i];
        r->n = n;
        return;
    }
    for (s = 0; s < total; s++) {
        size_t best = 0;
        for (i = 0; i < n; i++) {
            cur[i] += c->keys[idx[i]].weight;
            if (cur[i] > cur[best])
                best = i;
        }
        cur[best] -= (long)total;
        r->slot[s] = (uint32_t)idx[best];
    }
    r->n = total;
    free(cur);
}

static int same_pool(const char *a, const char *b)
{
    return (a == NULL && b == NULL) || (a && b && strcmp(a, b) == 0);
}

struct keys_ring *keys_build(const struct config *c)
{
    struct keys_ring *rings = calloc(c->nhosts ? c->nhosts : 1, sizeof(*rings));
    size_t *idx = calloc(c->nkeys ? c->nkeys : 1, sizeof(size_t));
    size_t h, k, owner[KEYS_POOL_CACHE], nowner = 0;
    int restricted = 0;

    if (rings == NULL || idx == NULL)
        goto fail;
    for (k = 0; k < c->nkeys && !restricted; k++)
        restricted = c->keys[k].hosts.n > 0;
    for (h = 0; h < c->nhosts; h++) {
        size_t n = 0, total = 0, o;
        int weighted = 0;

        if (!restricted) {
            /* A host of a pool already built shares that ring. */
            for (o = 0; o < nowner; o++)
                if (same_pool(c->hosts[owner[o]].keys, c->hosts[h].keys))
                    break;
            if (o < nowner) {
                rings[h] = rings[owner[o]];
                rings[h].shared = 1;
                continue;
            }
            if (nowner < KEYS_POOL_CACHE)
                owner[nowner++] = h;
        }

        for (k = 0; k < c->nkeys; k++) {
            if (!config_key_usable(&c->keys[k], &c->hosts[h]))
                continue;
            idx[n++] = k;
            total += (size_t)c->keys[k].weight;
            if (c->keys[k].weight != 1)
                weighted = 1;
        }
        if (n == 0)
            continue;
        if (!weighted || total > KEYS_MAX_RING)
            total = n;
        rings[h].slot = calloc(total, sizeof(uint32_t));
        if (rings[h].slot == NULL)
            goto fail;
        if (total == n) {
            for (k = 0; k < n; k++)
                rings[h].slot[k] = (uint32_t)idx[k];
            rings[h].n = n;
        } else {
            ring_fill(&rings[h], c, idx, n, total);
        }
    }
    free(idx);
    return rings;

fail:
    free(idx);
    keys_free(rings, c->nhosts);
    return NULL;
}

void keys_free(struct keys_ring *rings, size_t nhosts)
{
    size_t h;

    if (rings == NULL)
        return;
    for (h = 0; h < nhosts; h++)
        if (!rings[h].shared)
            free(rings[h].slot);
    free(rings);
}

static int key_available(const struct key_state *k, int64_t now_ms)
{
    return !k->disabled && k->cooldown_until_ms <= now_ms;
}

enum keys_pick_result keys_pick(const struct keys_ring *ring,
                                struct key_state *const *ks,
                                uint64_t *cursor, int64_t now_ms,
                                size_t *out)
{
    size_t i;

    lock_assert_held();
    if (ring->n == 0)
        return KEYS_NONE;
    for (i = 0; i < ring->n; i++) {
        size_t k = ring->slot[(*cursor)++ % ring->n];
        if (key_available(ks[k], now_ms)) {
            ks[k]->uses++;
            *out = k;
            return KEYS_PICKED;
        }
    }
    return KEYS_ALL_COOLING;
}

int keys_report(struct key_state *k, int status, int64_t retry_after_ms,
                int64_t now_ms)
{
    lock_assert_held();
    if (status == 401 || status == 403) {
        if (k->disabled)
            return 0;
        k->disabled = 1;
        k->last_status = status;
        return 1;
    }
    if (status == 429 || status == 402) {
        if (retry_after_ms <= 0)
            retry_after_ms = KEYS_DEFAULT_COOLDOWN_MS;
        k->cooldown_until_ms = now_ms + retry_after_ms;
        k->last_status = status;
        return 1;
    }
    return 0;
}

const char *keys_state_name(const struct key_state *k, int active, int64_t now_ms)
{
    lock_assert_held();
    if (!active || k->disabled)
        return "disabled";
    if (k->cooldown_until_ms > now_ms)
        return "cooling";
    return "active";
}
