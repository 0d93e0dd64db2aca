/*
 * admin.h -- the gateway's own pages: /health, /status (and its aliases
 * /v1/providers/status, /admin/providers), /v1/models, /metrics and
 * POST /admin/reload, /admin/timeseries and the /dashboard page. They read
 * state and never block.
 */
#ifndef INFERGATE_ADMIN_H
#define INFERGATE_ADMIN_H

struct gateway;
struct http_req;

void admin_health(struct gateway *gw, struct http_req *req);
void admin_status(struct gateway *gw, struct http_req *req);
void admin_models(struct gateway *gw, struct http_req *req);
void admin_metrics(struct gateway *gw, struct http_req *req);
void admin_reload(struct gateway *gw, struct http_req *req);
/* GET /admin/timeseries[?since=UNIX_MS]: the 1 s points of the last
 * 15 minutes (observe.h). */
void admin_timeseries(struct gateway *gw, struct http_req *req);
void admin_clients(struct gateway *gw, struct http_req *req);
/* GET /dashboard: the page built into the binary (dashboard_page.c). */
void admin_dashboard(struct gateway *gw, struct http_req *req);

#endif
