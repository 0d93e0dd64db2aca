/*
 * health.h -- is a host fit to take traffic: active probes, passive request
 * outcomes, model discovery and Infernet node info.
 *
 * Active probes: every `health_check.interval` each host gets one
 * `GET <url><path>` with `health_check.timeout`, sent through upstream.c
 * (curl multi on the event loop: a probe never blocks and never delays a
 * request). Host i of n gets its first probe i*interval/n after the
 * snapshot is installed, so probes are spread over the interval instead of
 * hitting every host at once; a host has at most one probe in flight (a
 * round that finds the last probe still running is skipped).
 *
 * A 404 or 405 on the default path (/v1/models) says so plainly in
 * last_error, "probe path /v1/models answers 404: set health_check.path",
 * and in a log line once per host (again only after a good probe).
 *
 * A probe succeeds when the host answers 2xx/3xx, or 401/403/429: those
 * say the host is up and only our credentials are refused or throttled,
 * which keys.c deals with; taking the host out for them would turn a key
 * problem into an outage. On a success with a body to read (Infernet path,
 * or discover_models) the body must parse, else the probe fails with
 * last_error saying why. Anything else (other statuses, connection errors,
 * timeouts) fails. `unhealthy_threshold` consecutive failures flip a
 * healthy host to unhealthy; `healthy_threshold` consecutive successes
 * flip it back. A host starts healthy.
 *
 * Key: a probe carries `Authorization: Bearer` with the first key of the
 * host's rotation ring that is neither disabled nor cooling down (the
 * rotation cursor and the key's use count are left alone), or no
 * Authorization header when the host has no such key. Providers that
 * guard /v1/models with the API key would otherwise answer 401 to every
 * probe and hide discovered models.
 *
 * Passive health (`health_check.passive`, with probes enabled), as
 * Envoy's outlier detection: the proxy reports each finished attempt
 * after updating the host's consecutive_failures (the streak of failed
 * requests: connection errors, timeouts, 5xx; a success ends it). When
 * that streak reaches `unhealthy_threshold` the host is ejected at once
 * for ejection_base x n, capped at ejection_max, where n counts its
 * recent ejections (one is forgotten per ejection_base spent back in
 * service). An ejection ends when its time is up (the 1 s tick calls
 * health_refresh), when `healthy_threshold` probes in a row succeed, or
 * when a request sent during it succeeds: the breaker's half-open trial,
 * which passes an ejection (a failed trial keeps it). A returning host
 * keeps its failure streak: its next failure ejects it again, for longer.
 * Request and probe streaks are counted apart (never added up), so steady
 * good traffic does not hide failing probes nor the reverse. With probes
 * disabled request outcomes eject nothing (the breaker covers that case)
 * and every host reads as healthy.
 *
 * live.usable is the verdict balance.c reads: not down by probes and
 * not ejected (or ejected with its breaker half-open).
 *
 * Discovery: with `discover_models` a probe's OpenAI list
 * `{"data":[{"id":...}]}` becomes the host's models_found (so `path` must
 * answer such a list; it is ignored for Infernet paths). With `path`
 * `/info` or `/api/info` (Infernet node), the answer
 * `{"containers": [{"id": "a"}, ...] | ["a", ...],
 *   "pending": {"offchain": 2, "onchain": 1} | 3}` fills containers_found
 * and live.pending (the sum). Discovered lists that the current
 * configuration no longer asks for are cleared on health_set_snapshot().
 *
 * The parsers and the threshold logic are pure functions (no clock, no
 * I/O), unit-tested on their own; `struct health` is the event-loop part.
 */
#ifndef INFERGATE_HEALTH_H
#define INFERGATE_HEALTH_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "state.h"

struct event_base;
struct upstream;
struct snapshot;
struct health;

/* health_check.path's default; a 404 or 405 there gets a plain hint. */
#define HEALTH_DEFAULT_PATH    "/v1/models"
/* A probe answer larger than this fails the probe. */
#define HEALTH_MAX_BODY        (1024 * 1024)
/* Models or containers kept per host from one answer. */
#define HEALTH_MAX_ITEMS       4096

/* --- pure parts ------------------------------------------------------- */

/* 1 when `path` is an Infernet node info path (/info or /api/info). */
int health_path_is_infernet(const char *path);

/* Parses an OpenAI model list into `*out` (replaced; free with
 * health_strlist_free). Items without a string "id" are skipped, an
 * empty "data" is an empty list. Returns 0, or -1 with a message in
 * err (then `*out` is untouched). */
int health_parse_models(const char *body, size_t len, struct cfg_strlist *out,
                        char *err, size_t errlen);

/* Parses an Infernet node's info answer: containers (objects with a
 * string "id", or strings) into `*containers` (replaced) and the sum of
 * the pending counts into `*pending` (clamped to INT_MAX). A missing
 * "pending" counts 0; a missing "containers" is an empty list. Returns 0,
 * or -1 with a message in err (outputs untouched). */
int health_parse_infernet(const char *body, size_t len,
                          struct cfg_strlist *containers, int *pending,
                          char *err, size_t errlen);

void health_strlist_free(struct cfg_strlist *l);

/* The functions below read or change a host's shared state (state.h) or
 * the prober: health_record_probe, health_passive, health_refresh,
 * health_effective, health_usable, health_host_serves, health_host_runs,
 * health_set_snapshot, health_in_flight and health_probes_sent: caller
 * holds the state lock (lock.h; checked by lock_assert_held() in the asan
 * and tsan builds). The prober's own callbacks run on the control thread,
 * which holds it. */

/* One probe outcome (`why` says what failed; NULL or "" on success) at
 * wall-clock `now_unix_ms` (monotonic `now_ms`): updates the streaks,
 * last_check_unix_ms and last_error, and flips health by the thresholds
 * of `c`. A flip also sets live.usable, and a flip to healthy clears
 * consecutive_failures (the host starts over). `healthy_threshold`
 * successes in a row also end an ejection. Returns 1 when health flipped
 * or an ejection ended, else 0. */
int health_record_probe(const struct config *c, struct host_state *hs, int ok,
                        const char *why, int64_t now_unix_ms, int64_t now_ms);

/* Ejections in a row counted toward the multiplier, at most. */
#define HEALTH_MAX_EJECTIONS   1000

/* How long the n-th ejection in a row lasts: ejection_base x n, capped at
 * ejection_max (n < 1 counts as 1). */
int64_t health_ejection_ms(const struct config *c, int n);

/* What health_passive() did. */
#define HEALTH_PASSIVE_EJECTED   1   /* ejected the host (the caller logs) */
#define HEALTH_PASSIVE_RETURNED  2   /* a success ended its ejection */

/* One finished request attempt sent at `started_ms`, reported at `now_ms`
 * (monotonic) after the caller has updated hs->consecutive_failures (+1
 * on a host failure, 0 on a success). ok = 0 for a host failure
 * (connection error, timeout, 5xx), 1 for any other complete answer; a
 * cancelled attempt is not reported. `why` (may be NULL) goes to
 * last_error on a failure. Ejects nothing unless health_check.passive and
 * health_check.enabled. Returns 0 or a HEALTH_PASSIVE_* value. */
int health_passive(const struct config *c, struct host_state *hs, int ok,
                   const char *why, int64_t started_ms, int64_t now_ms);

/* What health_refresh() did (bits). */
#define HEALTH_REFRESH_RETURNED  (1 << 0)  /* an ejection's time was up */
#define HEALTH_REFRESH_USABLE    (1 << 1)  /* live.usable changed */

/* Ends an ejection whose time is up and recomputes live.usable at
 * `now_ms` (a half-open breaker lets its trial pass an ejection). */
int health_refresh(struct host_state *hs, int64_t now_ms);

/* What status pages show: unhealthy when down by probes or ejected;
 * degraded when healthy but failing lately (a request or probe failure
 * streak not yet at the threshold); else healthy. */
enum host_health health_effective(const struct host_state *hs);
const char *health_name(enum host_health h);   /* "healthy", ... */

/* May the host take traffic at monotonic `now_ms`: not unhealthy, usable,
 * breaker not open. */
int health_usable(const struct host_state *hs, int64_t now_ms);

/* Does the host serve `model` (NULL = any): listed in its configured
 * models or discovered ones; a host with neither serves any model. */
int health_host_serves(const struct cfg_host *h, const struct host_state *hs,
                       const char *model);
/* Does the host run container `id` (configured or discovered). */
int health_host_runs(const struct cfg_host *h, const struct host_state *hs,
                     const char *id);

/* --- the prober ------------------------------------------------------- */

/* What a change notice is about (bits). */
#define HEALTH_CHANGED_HEALTH      (1u << 0)   /* health / live.usable flipped */
#define HEALTH_CHANGED_MODELS      (1u << 1)   /* models_found */
#define HEALTH_CHANGED_CONTAINERS  (1u << 2)   /* containers_found */

/* Called after a probe (or health_set_snapshot dropping discovered lists)
 * changed a host, e.g. to rebuild what depends on its models. `host` is
 * the host's index in the snapshot last given to health_set_snapshot;
 * `what` is a set of HEALTH_CHANGED_* bits. It must not call
 * health_set_snapshot() nor health_free(). */
typedef void (*health_change_fn)(void *arg, size_t host, unsigned what);

/* `up` must outlive the prober: free the prober before upstream_free(). */
struct health *health_new(struct event_base *base, struct upstream *up);

/*
 * Installs the snapshot to probe (at start and after each reload); takes
 * a reference to it, drops the previous one. Hosts kept (same host state)
 * keep their schedule and a probe in flight; probes of removed hosts are
 * cancelled; new hosts are spread over the interval. A change of interval
 * (or of a kept host's URL) reschedules. Returns 0, or -1 when out of
 * memory (then the previous snapshot stays in use).
 */
int  health_set_snapshot(struct health *h, struct snapshot *s);
void health_set_listener(struct health *h, health_change_fn fn, void *arg);

/* Probes in flight, and probes sent since health_new (metrics, tests). */
size_t   health_in_flight(const struct health *h);
uint64_t health_probes_sent(const struct health *h);

/* Cancels every probe, drops the snapshot reference. */
void health_free(struct health *h);

#endif
