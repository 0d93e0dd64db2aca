/*
 * events.h -- what changes, as a live stream: GET /admin/events (SSE).
 *
 * events_emit() turns one event into one SSE frame ("id: N" and one
 * "data:" line of JSON whose first members are "time", "time_ms" and
 * "type") and appends it to a single ring of frames shared by all
 * watchers; it may be called from any thread. A watcher is a streamed
 * response on the worker that accepted it plus a byte offset into the
 * ring: one timer per worker (while it has watchers) copies what is new
 * to each, at most EVENTS_WATCHER_MAX bytes waiting to be sent per
 * watcher. A watcher that falls more than the ring behind is dropped (its
 * connection closed), so memory is the ring plus a bounded amount per
 * watcher, however many there are and however slowly they read.
 */
#ifndef INFERGATE_EVENTS_H
#define INFERGATE_EVENTS_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

struct gateway;
struct http_req;
struct worker;

#define EVENTS_RING_BYTES   (256 * 1024)  /* frames kept for watchers */
#define EVENTS_FRAME_MAX    (16 * 1024)   /* larger events lose their details */
#define EVENTS_WATCHER_MAX  (64 * 1024)   /* unsent bytes queued per watcher */
#define EVENTS_SNDBUF       (32 * 1024)   /* kernel send buffer of a watcher */
#define EVENTS_POLL_MS      100           /* delivery timer, per worker */
#define EVENTS_PING_MS      15000         /* ": ping" when nothing else was sent */

/* Appends one event. `fields` (an object, taken; may be NULL) follows
 * "time", "time_ms" and "type". Any thread. */
void events_emit(const char *type, json_t *fields);

/* Copies up to `max` bytes of frames from byte offset *off into buf and
 * advances *off. Returns the bytes copied, or -1 when *off is no longer
 * in the ring (overwritten: the reader fell behind). */
long events_read(uint64_t *off, char *buf, size_t max);
uint64_t events_head(void);      /* bytes ever appended: a new reader's offset */

struct events_stats {
    uint64_t emitted;            /* events since start */
    uint64_t watchers;           /* streams open now */
    uint64_t dropped;            /* watchers dropped for falling behind */
};
void events_stats(struct events_stats *st);

/* GET /admin/events on the calling worker's thread. */
void events_serve(struct gateway *gw, struct http_req *req);
/* Sends w's watchers what is left and ends their streams (drain), or, at
 * shutdown after w's thread stopped, frees them. */
void events_worker_end(struct worker *w);

#endif
