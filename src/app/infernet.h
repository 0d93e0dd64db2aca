/*
 * infernet.h -- the route-only endpoint of seed 003 (Infernet Router):
 *
 *   GET /api/v1/ip?container=A&container=B[&model=M]
 *
 * answers 200 {"ip": "host:port"} naming the usable host (not unhealthy,
 * breaker not open) that runs every requested container (configured
 * `containers` or discovered through the /info probe) and serves M when
 * given (configured or discovered models; a host listing none serves any),
 * with the fewest pending jobs (live.pending, from the /info probe); ties
 * go round-robin. 400 {"error": "..."} when no container is given or the
 * query is malformed, 503 {"error": "..."} when no host fits. Error bodies
 * are the seed's plain {"error": string}, not OpenAI-shaped: Infernet
 * clients read them as they are.
 *
 * "host:port" is the host's URL authority without user info; the port is
 * the scheme's default (80, 443) when the URL has none.
 *
 * The query parser and the pick are pure and unit-tested; infernet_route()
 * only glues them to the current snapshot.
 */
#ifndef INFERGATE_INFERNET_H
#define INFERGATE_INFERNET_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "state.h"

struct gateway;
struct http_req;

/* Containers one request may ask for. */
#define INFERNET_MAX_CONTAINERS 64

struct infernet_query {
    char        *buf;                   /* decoded values, owned */
    const char  *containers[INFERNET_MAX_CONTAINERS];   /* into buf */
    size_t       ncontainers;
    const char  *model;                 /* into buf; NULL = any */
};

/*
 * Parses a raw query string ("container=a&container=b&model=m", NULL or
 * "" = nothing asked): values are percent-decoded ('+' is a space),
 * `container` may repeat, the last `model` wins, other parameters are
 * ignored. Returns 0, or -1 with a message in err (bad escape, empty or
 * NUL-bearing value, too many containers, out of memory); then nothing
 * needs freeing. On success free with infernet_query_free().
 */
int  infernet_parse_query(const char *query, struct infernet_query *q,
                          char *err, size_t errlen);
void infernet_query_free(struct infernet_query *q);

/* One candidate, as the pick sees it. */
struct infernet_node {
    const struct cfg_host   *host;
    const struct host_state *hs;        /* containers_found, models_found, live.pending */
    int                      usable;    /* the caller's health + breaker verdict */
};

enum infernet_status {
    INFERNET_OK = 0,
    INFERNET_NO_MATCH,                  /* no host runs them all (and serves M) */
    INFERNET_NONE_USABLE                /* some do, none is usable now */
};

/*
 * Picks among nodes[0..n-1] for `q`: a usable node running every container
 * of q and serving q->model, fewest pending first; among equals the
 * `*cursor`-th (mod their number), and *cursor advances. Returns the
 * index, or -1 with the reason in *status (status may be NULL).
 */
int infernet_pick(const struct infernet_node *nodes, size_t n,
                  const struct infernet_query *q, uint64_t *cursor,
                  enum infernet_status *status);

/* "host:port" of a base URL into out. Returns 0, or -1 when the URL has
 * no authority or out is too small. */
int infernet_host_port(const char *url, char *out, size_t outlen);

/* Route handler for GET /api/v1/ip. Answers `req`. */
void infernet_route(struct gateway *gw, struct http_req *req);

#endif
