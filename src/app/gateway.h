/*
 * gateway.h -- the running gateway, the wiring of the modules: the current
 * snapshot (snapshot.h), reload, worker threads, and routing of client
 * requests to the proxy or the status pages. struct gateway itself is in
 * gw.h, which the route handlers include instead of this.
 */
#ifndef INFERGATE_GATEWAY_H
#define INFERGATE_GATEWAY_H

#include <stddef.h>
#include <stdint.h>

#include "clock.h"
#include "config.h"
#include "snapshot.h"
#include "gw.h"

/* The addresses served: server.listen, or the -l address (TLS when
 * server.tls is set). Fills out[CFG_MAX_LISTENERS]; points into cfg. */
size_t gateway_listeners(const struct gateway *gw, const struct config *cfg,
                         struct cfg_listener *out);

int  gateway_init(struct gateway *gw, struct event_base *base,
                  struct config *cfg, const char *conf_dir,
                  const char *listen_override);
/*
 * Re-reads the three files in a thread (parsing never holds the loop),
 * then installs the new snapshot on the loop; on error keeps the current
 * one and records the problems in gw->reload_errs. `req`, when not NULL
 * (POST /admin/reload), is answered with the outcome as JSON. A reload
 * asked for while one runs is done again right after it.
 */
void gateway_reload(struct gateway *gw, struct http_req *req);
/* Starts the worker threads (server.workers > 1); from then on the main
 * thread holds the state lock except while its loop sleeps. */
int  gateway_start(struct gateway *gw);
void gateway_drain(struct gateway *gw);      /* stop accepting */
int  gateway_idle(const struct gateway *gw); /* nothing in flight */
size_t gateway_connections(const struct gateway *gw);  /* all workers */
/* Ends every request in flight with an error (each on its worker). */
void gateway_abort_all(struct gateway *gw);
void gateway_free(struct gateway *gw);
/* A host's health verdict (live.usable) changed: panic mode is decided
 * again for the current snapshot's tiers (logged on enter and leave).
 * Under the state lock; the 1 s tick calls it too. */
void gateway_health_moved(struct gateway *gw);

#endif
