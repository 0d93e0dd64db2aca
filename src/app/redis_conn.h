/*
 * redis_conn.h -- the Redis connection that the shared state rides on
 * (sessions.redis): hiredis async on the libevent loop, the handshake
 * (AUTH, SELECT, ROLE, SUBSCRIBE), timeouts, reconnection with backoff and
 * Sentinel. It owns no data: session_redis.c (the session store) and
 * replicas.c (the replica registry and shared advice) send their commands
 * through it and hear from it only through the callbacks they gave
 * redis_conn_new(); it never calls them by name.
 *
 * Commands: redis_conn_cmd() sends one on the command connection while the
 * connection is up; its callback gets the reply (never an error reply),
 * or NULL when Redis answered with an error, did not answer within
 * sessions.redis.timeout, or the connection went away. The callback runs
 * exactly once, on the loop's thread, maybe on the next loop turn (when
 * the failure happened inside redis_conn_flush()).
 *
 * Keys: every key is under sessions.redis.prefix (redis_conn_key()).
 * Pub/sub: one channel, "<prefix>events:<db>" (channels ignore SELECT);
 * redis_conn_publish() sends to it, messages from it go to cbs->message.
 *
 * Secrets: passwords are never logged nor shown (url shown with ***).
 */
#ifndef INFERGATE_REDIS_CONN_H
#define INFERGATE_REDIS_CONN_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

struct config;
struct event_base;
struct redis_conn;
struct redisReply;

struct redis_conn_cbs {
    /* The connection is up (first time or again): register, catch up. */
    void (*up)(void *arg);
    /* A message on the events channel (ours included). */
    void (*message)(void *arg, const char *msg, size_t len);
    void  *arg;
};

/* reply: the answer (valid during the call), or NULL: failed (see above). */
typedef void (*redis_conn_reply_fn)(void *arg, struct redisReply *reply);

struct redis_conn_counters {
    uint64_t errors, timeouts, connects, failovers;
    int      up;
    int      sentinel;         /* the master is found through sentinels */
};

/* Parses cfg->sessions.redis; NULL with a message in err on a bad one.
 * `who` (the replica id, for the log) must outlive the connection.
 * Nothing is sent before redis_conn_start(). */
struct redis_conn *redis_conn_new(const struct redis_conn_cbs *cbs, struct event_base *base,
                                  const struct config *cfg, const char *who,
                                  char *err, size_t errlen);
/* Starts connecting; never waits. */
void redis_conn_start(struct redis_conn *r);
/* Every pending callback gets NULL, then frees. NULL is fine. */
void redis_conn_free(struct redis_conn *r);
void redis_conn_set_timeout(struct redis_conn *r, int64_t timeout_ms);
int  redis_conn_up(const struct redis_conn *r);
/* 1 when cfg names the same connection (url, prefix, credentials, sentinels). */
int  redis_conn_same(const struct redis_conn *r, const struct config *cfg);

/* "<prefix><a><b>" in a new string (caller frees), or NULL. */
char *redis_conn_key(const struct redis_conn *r, const char *a, const char *b);
/* 0: sent, fn (may be NULL) follows; -1: not up or not sent, nothing follows. */
int  redis_conn_cmd(struct redis_conn *r, int argc, const char **argv, redis_conn_reply_fn fn,
                    void *arg);
/* SET key value PX ms (ms < 1 counts as 1), only errors matter. */
int  redis_conn_set_px(struct redis_conn *r, const char *key, const char *value, int64_t ms);
/* PUBLISH on the events channel. */
int  redis_conn_publish(struct redis_conn *r, const char *msg);
/* Writes what is queued now rather than on the next loop turn (a put is
 * on its way before the caller returns); not from inside a reply callback
 * of the connection (then it does nothing). */
void redis_conn_flush(struct redis_conn *r);

void redis_conn_counters(const struct redis_conn *r, struct redis_conn_counters *out);
/* {url, prefix, state, since_unix_ms, last_error, timeout_ms, errors,
 *  timeouts, connects, master, found_by, failovers_followed, sentinel}
 * (session.h's "redis" object); new reference. */
json_t *redis_conn_status_json(const struct redis_conn *r);

#endif
