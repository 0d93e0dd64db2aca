/*
 * clients.h -- client keys as tenants (policies.yaml `clients`): who a
 * Bearer key is, which models it may use, and its limits' counters.
 *
 * A configuration holds the clients (config.h, keys as SHA-256 only); the
 * counters live here, kept by client name, so they survive reloads: a
 * changed limit applies to the counts already made, a removed client is no
 * longer found (refused at once; its requests in flight still settle).
 * Every call but clients_bearer, clients_find, clients_of_req and
 * clients_model_allowed: caller holds the state lock (lock.h; the ones
 * that reach the counters check it with lock_assert_held() in the asan
 * and tsan builds).
 */
#ifndef INFERGATE_CLIENTS_H
#define INFERGATE_CLIENTS_H

#include <stdint.h>
#include <jansson.h>

#include "config.h"
#include "limiter.h"

struct http_req;

/* The client's key: Authorization: Bearer, or Anthropic's x-api-key
 * (NULL when none). */
const char *clients_bearer(const struct http_req *req);

/* The client whose key is tok, or NULL. */
const struct cfg_client *clients_find(const struct config *c, const char *tok);

/* The client a request comes from: by its key when it sends one, else by
 * the subject of its verified client certificate (mutual TLS, a client's
 * cert_subject). NULL when neither names one. */
const struct cfg_client *clients_of_req(const struct config *c, const struct http_req *req);

/* 1 when cl may use model (its `models`: names, aliases of the models
 * section, "*"; none = any). A request without a model passes only a
 * client allowed any model. */
int clients_model_allowed(const struct config *c, const struct cfg_client *cl,
                          const char *model);

/* Admission of one request of cl (see limits_admit). */
enum limits_verdict clients_admit(const struct config *c, const struct cfg_client *cl,
                                  int64_t now_unix_ms, int64_t reserve, int64_t reserve_in,
                                  struct limits_ticket *t, struct limits_view *v);

/* The request admitted with t ended having used in + out tokens. */
/* The client's x-ratelimit view (this replica's counts), admitting
 * nothing. Caller holds the state lock. */
void clients_view(const struct config *c, const struct cfg_client *cl, int64_t now_unix_ms,
                  struct limits_view *v);

void clients_settle(const char *name, const struct limits_ticket *t, int64_t window_ms,
                    int64_t now_unix_ms, int64_t in, int64_t out);

/*
 * Across replicas (sessions.store: redis): one atomic script per admission
 * and one per settlement. clients_admit_shared sends the admission (cb
 * gets its answer, NULL when Redis failed); clients_shared_verdict reads
 * that answer. clients_settle_shared is fire-and-forget. `member` names
 * the request in the client's in-flight set (unique across replicas). A
 * ticket with reserved < 0 (the request went away before Redis answered
 * its admission) only takes the request out of that set. When Redis fails,
 * clients_admit_local (limits.on_store_failure: local) admits on this
 * process's counters with each limit divided by `share` live replicas.
 */
struct session;
struct session_call;
typedef void (*clients_shared_cb)(void *arg, const char *answer);
struct session_call *clients_admit_shared(struct session *s, const struct config *c,
                                          const struct cfg_client *cl, int64_t now_unix_ms,
                                          int64_t reserve, int64_t reserve_in,
                                          const char *member, struct limits_ticket *t,
                                          clients_shared_cb cb, void *arg);
enum limits_verdict clients_shared_verdict(const struct config *c, const struct cfg_client *cl,
                                           const char *answer, int64_t now_unix_ms,
                                           struct limits_view *v);
void clients_settle_shared(struct session *s, const struct config *c, const char *name,
                           const struct limits_ticket *t, const char *member,
                           int64_t now_unix_ms, int64_t in, int64_t out);
enum limits_verdict clients_admit_local(const struct config *c, const struct cfg_client *cl,
                                        size_t share, int64_t now_unix_ms, int64_t reserve,
                                        int64_t reserve_in, struct limits_ticket *t,
                                        struct limits_view *v);

/* A refusal before admission (a model not allowed) counts as limited. */
void clients_note_refused(const char *name);

/* Each client of c: name, requests, limited, tokens in/out today and this
 * month, in flight, remaining budgets (never the key). */
json_t *clients_json(const struct config *c, int64_t now_unix_ms);

/* Prometheus text: infergate_client_requests_total{client,result} and
 * infergate_client_tokens_total{client,kind} for the first
 * CLIENTS_METRICS_MAX clients of c, the rest as client="other". Returns -1
 * when out of memory. */
#define CLIENTS_METRICS_MAX 100
struct evbuffer;
int clients_metrics(const struct config *c, struct evbuffer *out);

#endif
