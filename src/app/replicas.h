/*
 * replicas.h -- what replicas of the gateway share through Redis besides
 * sessions: the replica registry (each replica's heartbeat with a TTL, the
 * list of those seen) and shared advice (key disabled, key cooling down,
 * host breaker open, each with an expiry). Rides on a redis_conn.h
 * connection; used by session_redis.c only. Advice from others goes to
 * the callback given to replicas_new(), never up by name.
 */
#ifndef INFERGATE_REPLICAS_H
#define INFERGATE_REPLICAS_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "session.h"    /* struct session_identity, struct session_shared */

struct event_base;
struct redis_conn;
struct replicas;

/* self must outlive the registry; shared gets advice from other replicas
 * (strings valid during the call). NULL on allocation failure. */
struct replicas *replicas_new(struct redis_conn *conn, struct event_base *base,
                              const struct session_identity *self,
                              void (*shared)(void *arg, const struct session_shared *ev),
                              void *arg);
void replicas_free(struct replicas *g);

/* For the connection's callbacks: up (register, catch up) and a message. */
void replicas_conn_up(struct replicas *g);
void replicas_conn_message(struct replicas *g, const char *msg, size_t len);

/* Tells the others (SET with PX until it expires, SADD, PUBLISH); -1 when
 * the connection is not up or the advice has expired. */
int  replicas_publish(struct replicas *g, const struct session_shared *ev);

/* Counters: advice received, published; replicas in the last list read. */
void replicas_counters(const struct replicas *g, uint64_t *received, uint64_t *published,
                       size_t *seen);
/* The last list read from Redis (kept while it is down); new reference. */
json_t *replicas_json(const struct replicas *g);

#endif
