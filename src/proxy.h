/*
 * proxy.h -- one proxied request's life: pick a host and a key, send,
 * classify the outcome, fail over, answer or stream.
 */
#ifndef INFERGATE_PROXY_H
#define INFERGATE_PROXY_H

struct gateway;
struct http_req;

/* Route handler for POST /v1/chat/completions, /v1/completions,
 * /v1/embeddings. Takes over `req`. */
void proxy_handle(struct gateway *gw, struct http_req *req);

/* Sends `GET path` through the same machinery (used by /v1/models when
 * no host lists its models). */
void proxy_handle_get(struct gateway *gw, struct http_req *req, const char *path);

/* At exit after the drain timeout: ends every request still in flight. */
void proxy_abort_all(struct gateway *gw);

#endif
