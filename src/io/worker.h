/*
 * worker.h -- a thread with its own event loop and a mailbox.
 *
 * With `server.workers: N` > 1 the gateway runs N of these; each serves
 * clients on its own SO_REUSEPORT listener and talks to upstreams through
 * its own connection pool and curl multi handle (gateway.c sets `http`
 * and `up`). With one worker, the main thread's loop is worker 0 and no
 * thread is started.
 *
 * Threads: a worker's base, server, upstream and requests are used from
 * its own thread only. Other threads reach it through worker_post(), or
 * by adding events to its base (libevent is set up for threads). Shared
 * state is guarded by the state lock (lock.h).
 */
#ifndef INFERGATE_WORKER_H
#define INFERGATE_WORKER_H

#include <pthread.h>
#include <stdint.h>

struct event;
struct event_base;
struct gateway;
struct http_server;
struct upstream;
struct worker_msg;

typedef void (*worker_fn)(void *arg);

struct worker {
    int                 id;          /* 0.. */
    struct gateway     *gw;
    struct event_base  *base;        /* owned when threaded */
    struct http_server *http;        /* set and freed by gateway.c */
    struct upstream    *up;          /* set and freed by gateway.c */
    void               *inflight;    /* proxy.c's requests of this worker */
    void               *px_spare;    /* proxy.c: freed requests' memory, kept */
    int                 px_nspare;   /* ... how many (a list through ->next) */
    void               *events;      /* events.c's watchers of this worker */
    uint64_t            served;      /* requests handed over (atomic) */
    int                 threaded;
    pthread_t           thread;
    int                 running;
    pthread_mutex_t     mu;          /* guards the mailbox */
    struct worker_msg  *mail, *mail_tail;
    struct event       *mail_ev;
    struct event       *busy_ev;     /* busy polling: a zero timer, NULL: off */
};

/* The worker whose thread this is, NULL on a thread that serves none. */
struct worker *worker_self(void);
void worker_set_self(struct worker *w);

/* Sets w up on `base` (NULL: a new base for its own thread). */
int  worker_init(struct worker *w, struct gateway *gw, int id,
                 struct event_base *base);
/* Starts the thread running w's loop (threaded workers only). */
int  worker_start(struct worker *w);
/* Runs fn(arg) on w's thread, soon; from any thread. -1: out of memory
 * (fn is not called). Messages still queued when w is freed are run
 * then, on the freeing thread. */
int  worker_post(struct worker *w, worker_fn fn, void *arg);
/* Busy polling (on: 1) or sleeping (0) in w's loop; on w's thread (or
 * before it starts). On, a timer that re-arms itself with a zero timeout
 * keeps libevent's poll from sleeping: the loop never waits for the
 * wake-up of an idle CPU, and its core runs at 100% even when idle. -1:
 * out of memory (it stays off). */
int  worker_busy_poll(struct worker *w, int on);
/* Ends a threaded worker's loop and waits for its thread; messages left
 * in the mailbox then run on the calling thread. Afterwards w's server,
 * upstream and requests may be freed from the calling thread. */
void worker_join(struct worker *w);
/* Frees the mailbox and, if w owns it, the base (after worker_join). */
void worker_free(struct worker *w);

#endif
