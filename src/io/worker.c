/*
 * worker.c -- worker threads: one event loop each, and a mailbox other
 * threads post work to (see worker.h).
 */
#include <signal.h>
#include <stdlib.h>

#include <event2/event.h>

#include "clock.h"
#include "lock.h"
#include "worker.h"

struct worker_msg {
    worker_fn          fn;
    void              *arg;
    struct worker_msg *next;
};

static _Thread_local struct worker *worker_cur;

struct worker *worker_self(void)
{
    return worker_cur;
}

void worker_set_self(struct worker *w)
{
    worker_cur = w;
}

static struct worker_msg *mail_take(struct worker *w)
{
    struct worker_msg *m;

    pthread_mutex_lock(&w->mu);
    m = w->mail;
    w->mail = w->mail_tail = NULL;
    pthread_mutex_unlock(&w->mu);
    return m;
}

static void mail_run(struct worker_msg *m)
{
    while (m) {
        struct worker_msg *next = m->next;
        m->fn(m->arg);
        free(m);
        m = next;
    }
}

static void mail_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    mail_run(mail_take(arg));
}

int worker_init(struct worker *w, struct gateway *gw, int id,
                struct event_base *base)
{
    w->id = id;
    w->gw = gw;
    w->threaded = base == NULL;
    w->base = base ? base : event_base_new();
    if (w->base == NULL)
        return -1;
    if (base == NULL && lock_loop_clock(w->base) < 0)
        return -1;
    pthread_mutex_init(&w->mu, NULL);
    w->mail_ev = event_new(w->base, -1, 0, mail_cb, w);
    return w->mail_ev ? 0 : -1;
}

/* Re-armed with a zero timeout in its own callback (never made active
 * from inside it: that would run again within the same pass): each pass
 * of the loop then polls with a null timeout (libevent's timeout_next()). */
static void busy_cb(evutil_socket_t fd, short what, void *arg)
{
    static const struct timeval zero = { 0, 0 };
    struct worker *w = arg;

    (void)fd;
    (void)what;
    if (w->busy_ev)
        event_add(w->busy_ev, &zero);
}

int worker_busy_poll(struct worker *w, int on)
{
    static const struct timeval zero = { 0, 0 };

    if (!on) {
        if (w->busy_ev) {
            event_free(w->busy_ev);
            w->busy_ev = NULL;
        }
        return 0;
    }
    if (w->busy_ev)
        return 0;
    w->busy_ev = evtimer_new(w->base, busy_cb, w);
    if (w->busy_ev == NULL)
        return -1;
    event_add(w->busy_ev, &zero);
    return 0;
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;

    worker_set_self(w);
    event_base_loop(w->base, EVLOOP_NO_EXIT_ON_EMPTY);
    gw_clock_loop_left();
    return NULL;
}

int worker_start(struct worker *w)
{
    sigset_t all, old;
    int rc;

    if (!w->threaded)
        return 0;
    /* Signals go to the main thread: the worker starts with them blocked. */
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    rc = pthread_create(&w->thread, NULL, worker_main, w);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0)
        return -1;
    w->running = 1;
    return 0;
}

int worker_post(struct worker *w, worker_fn fn, void *arg)
{
    struct worker_msg *m = malloc(sizeof(*m));

    if (m == NULL)
        return -1;
    m->fn = fn;
    m->arg = arg;
    m->next = NULL;
    pthread_mutex_lock(&w->mu);
    if (w->mail_tail)
        w->mail_tail->next = m;
    else
        w->mail = m;
    w->mail_tail = m;
    pthread_mutex_unlock(&w->mu);
    event_active(w->mail_ev, EV_READ, 0);     /* wakes w's loop */
    return 0;
}

void worker_join(struct worker *w)
{
    if (w->running) {
        event_base_loopexit(w->base, NULL);     /* thread-safe */
        pthread_join(w->thread, NULL);
        w->running = 0;
    }
    if (w->mail_ev)
        mail_run(mail_take(w));
}

void worker_free(struct worker *w)
{
    worker_join(w);
    worker_busy_poll(w, 0);
    if (w->mail_ev) {
        event_free(w->mail_ev);
        w->mail_ev = NULL;
        pthread_mutex_destroy(&w->mu);
    }
    if (w->threaded && w->base)
        event_base_free(w->base);
    w->base = NULL;
}
