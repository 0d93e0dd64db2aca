/*
 * snapshot.h -- one generation of configuration as the gateway serves it.
 *
 * A `struct snapshot` wraps one immutable `struct config` with what is
 * derived from it once (key rings, the balancer) and pointers to the
 * runtime state of its hosts and keys. Requests take a reference for their
 * whole life; a reload installs a new snapshot and the old one is freed
 * when its last request ends. With worker threads the reference count is
 * shared state: callers of snapshot_ref/unref/activate hold the state lock
 * (lock.h; checked by lock_assert_held() in the asan and tsan builds).
 */
#ifndef INFERGATE_SNAPSHOT_H
#define INFERGATE_SNAPSHOT_H

#include <stdint.h>

#include "balance.h"
#include "breaker.h"
#include "config.h"
#include "keys.h"
#include "retry.h"
#include "state.h"

struct metrics_host;

struct snapshot {
    int                 refs;
    uint64_t            generation;
    struct config      *cfg;        /* owned */
    struct host_state **hs;         /* [cfg->nhosts], one ref each */
    struct key_state  **ks;         /* [cfg->nkeys], one ref each */
    struct keys_ring   *rings;      /* [cfg->nhosts] */
    struct balance     *bal;        /* built from cfg->hosts */
    struct balance_live **live;     /* [cfg->nhosts] = &hs[i]->live */
    struct metrics_host **mh;       /* [cfg->nhosts], one ref each */
    struct retry_params rp;
    struct breaker_params bp;
};

/* rings: prebuilt by keys_build() (taken over), or NULL to build here. */
struct snapshot *snapshot_new(struct config *cfg, struct keys_ring *rings,
                              uint64_t generation);
void snapshot_ref(struct snapshot *s);
void snapshot_unref(struct snapshot *s);
/* Makes the snapshot the one that serves: the hosts' live entries and
 * breakers follow its configuration (state itself is kept). */
void snapshot_activate(struct snapshot *s);
/* A balancer for cfg's hosts with the models their probes discovered
 * (hs[cfg->nhosts]); NULL when out of memory. */
struct balance *snapshot_balance(const struct config *cfg,
                                 struct host_state *const *hs);

#endif
