/*
 * keys.h -- upstream API key rotation.
 *
 * For each host the snapshot holds a rotation ring: the keys usable with
 * that host (active, right pool, host allowed), each repeated in a smooth
 * weighted order. A pick walks the ring from the caller's cursor, skipping
 * keys disabled (401/403 until reload) or cooling down (429/402).
 */
#ifndef INFERGATE_KEYS_H
#define INFERGATE_KEYS_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "state.h"

#define KEYS_DEFAULT_COOLDOWN_MS 60000   /* 429 without Retry-After */

struct keys_ring {
    uint32_t *slot;       /* key indices into config->keys */
    size_t    n;
    int       shared;     /* slot belongs to another host's ring */
};

enum keys_pick_result {
    KEYS_PICKED = 0,
    KEYS_NONE,            /* the host has no usable key: send none */
    KEYS_ALL_COOLING,     /* every key is cooling down or disabled */
};

/* Builds one ring per host; returns NULL on allocation failure. Hosts of
 * the same pool share one ring when no key is restricted to some hosts,
 * so the cost is O(keys x pools), not O(keys x hosts). Pure: it reads
 * only the config, so a reload can build it off the event loop. */
struct keys_ring *keys_build(const struct config *c);
void keys_free(struct keys_ring *rings, size_t nhosts);

/* keys_pick, keys_report and keys_state_name read or change the shared
 * key state and rotation cursors: caller holds the state lock (lock.h;
 * checked by lock_assert_held() in the asan and tsan builds). */

/* Picks a key from a host's ring; *out is the key index. `cursor` is the
 * rotation cursor (advanced; one per host). `ks` is
 * the snapshot's key state array. */
enum keys_pick_result keys_pick(const struct keys_ring *ring,
                                struct key_state *const *ks,
                                uint64_t *cursor, int64_t now_ms,
                                size_t *out);

/* Feeds an upstream answer back: 401/403 disable, 429/402 cool down for
 * retry_after_ms (or the default when <= 0). Returns 1 if the state
 * changed (the caller logs it by fingerprint). */
int keys_report(struct key_state *k, int status, int64_t retry_after_ms,
                int64_t now_ms);

/* "active", "cooling" or "disabled". */
const char *keys_state_name(const struct key_state *k, int active, int64_t now_ms);

#endif
