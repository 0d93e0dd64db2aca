/*
 * proxy.h -- one proxied request's life: pick a host and a key, send,
 * classify the outcome, fail over, answer or stream.
 */
#ifndef INFERGATE_PROXY_H
#define INFERGATE_PROXY_H

struct gateway;
struct http_req;
struct worker;

/* Route handler for POST /v1/chat/completions, /v1/completions,
 * /v1/embeddings. Takes over `req`. Called on the worker thread that read
 * req, without the state lock: proxy.c takes it around the shared state
 * it touches (balancer, host and key state, breakers, metrics, sessions)
 * and never holds it across socket I/O. */
void proxy_handle(struct gateway *gw, struct http_req *req);

/* Sends `GET path` through the same machinery (used by /v1/models when
 * no host lists its models). */
void proxy_handle_get(struct gateway *gw, struct http_req *req, const char *path);

/* At exit after the drain timeout: ends every request of worker w still
 * in flight (on w's thread, or after it ended), and frees the memory of a
 * finished one that w kept for its next. */
void proxy_abort_all(struct worker *w);

#endif
