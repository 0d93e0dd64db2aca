/*
 * observe.h -- the gateway watching itself: the time series behind the
 * dashboard's charts, the history of reloads, and the events of
 * /admin/events (events.h) that concern hosts, breakers, keys, reloads
 * and replicas.
 *
 * Code paths that cause a change announce it at once (a breaker opening,
 * a key cooled down, a reload); the 1 s tick on the control thread
 * (observe_tick, under the state lock) compares what it sees with what was
 * last announced and tells the rest: a breaker turning half-open or
 * closed, a host out or back by its probes, a cooldown over, a replica
 * that joined or left. What was announced is kept in host_state and
 * key_state (ev_*), so each change is told once whichever way it came.
 */
#ifndef INFERGATE_OBSERVE_H
#define INFERGATE_OBSERVE_H

#include <stdint.h>

#include <jansson.h>

#include "breaker.h"
#include "config.h"
#include "state.h"

struct gateway;
struct observe;

#define OBSERVE_RELOADS          8     /* reloads kept for /status */
#define OBSERVE_EVENT_ERRORS     32    /* reload errors carried by an event */

struct observe *observe_new(void);
void observe_free(struct observe *o);

/* Once a second on the control thread, under the state lock. */
void observe_tick(struct observe *o, struct gateway *gw);

/* GET /admin/timeseries: points after since_ms (0: all). */
json_t *observe_timeseries_json(const struct observe *o, int64_t since_ms);
/* The last reloads, newest first: [{time, ok, generation, errors}]. */
json_t *observe_reloads_json(const struct observe *o);

/* A reload ended; errs (when it failed) are FILE:LINE:COL: messages. */
void observe_reload(struct observe *o, int ok, uint64_t generation,
                    const struct cfg_errors *errs);

/* Announcements from the code paths that cause them (state lock held). */
void observe_breaker(struct host_state *hs, const char *host,
                     enum breaker_state st, const char *model);
/* why: "probe", "passive" or "breaker"; host_back tells the same why. */
void observe_host_out(struct host_state *hs, const char *host, const char *why,
                      const char *detail);
void observe_host_back(struct host_state *hs, const char *host);
/* state: "cooling", "disabled" or "active"; status/host: what caused it
 * (0/NULL when unknown); why: free text or NULL. */
void observe_key(struct key_state *ks, const struct cfg_key *k, const char *state,
                 int status, const char *host, int64_t until_unix_ms,
                 const char *why);

#endif
