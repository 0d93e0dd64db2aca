/*
 * lock.c -- the state lock of a multi-worker gateway (see lock.h), and the
 * hand-over that lets the control thread hold it except while it sleeps:
 * libevent's prepare/check watchers where libevent has them (2.2 and
 * later), else wrappers of epoll_wait(), epoll_pwait() and epoll_pwait2()
 * that call the C library's through dlsym(RTLD_NEXT) (libevent 2.1, the one
 * Debian 12 ships, has no before-sleep hook). The same hooks mark every
 * loop's wake-ups for the loop's time of clock.h (lock_loop_clock()).
 */
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <sys/epoll.h>

#include <event2/event.h>
/* -DINFERGATE_LOCK_WRAP_EPOLL: the wrappers even with libevent 2.2 (to test them) */
#if LIBEVENT_VERSION_NUMBER >= 0x02020000 && !defined(INFERGATE_LOCK_WRAP_EPOLL)
#include <event2/watch.h>
#define LOCK_EVWATCH 1
#endif

#include "clock.h"
#include "lock.h"

static pthread_mutex_t lock_mu = PTHREAD_ADAPTIVE_MUTEX_INITIALIZER_NP;  /* spins a little first */
static int lock_on;                         /* set before threads start */
static _Thread_local int lock_held;         /* this thread's depth */
static _Thread_local int lock_owner;        /* holds it except in epoll_wait */
static _Thread_local int lock_slept;         /* depth let go of for a sleep, 0: none */
static uint64_t lock_hooked;                /* atomic */
static uint64_t lock_waits, lock_wait_ns;   /* atomic: lock_take() found it held */

/* ---- the hand-over: let go before the loop sleeps, take back after ---- */

/* Before the loop polls: the loop owner lets go of the lock entirely. */
static void lock_sleep_begin(void)
{
    if (!lock_owner || lock_held == 0)
        return;
    __atomic_add_fetch(&lock_hooked, 1, __ATOMIC_RELAXED);
    lock_slept = lock_held;
    lock_held = 0;
    pthread_mutex_unlock(&lock_mu);
}

/* After the poll, before any callback runs: takes it back. */
static void lock_sleep_end(void)
{
    if (lock_slept == 0)
        return;
    pthread_mutex_lock(&lock_mu);
    lock_held = lock_slept;
    lock_slept = 0;
}

#ifdef LOCK_EVWATCH
static struct evwatch *lock_prepare, *lock_check;

static void lock_on_prepare(struct evwatch *w, const struct evwatch_prepare_cb_info *i, void *arg)
{
    (void)w;
    (void)i;
    (void)arg;
    lock_sleep_begin();
}

static void lock_on_check(struct evwatch *w, const struct evwatch_check_cb_info *i, void *arg)
{
    (void)w;
    (void)i;
    (void)arg;
    lock_sleep_end();
}

const char *lock_loop_mechanism(void)
{
    return "libevent prepare/check watchers";
}

static void lock_watch(struct event_base *base)
{
    if (base == NULL || lock_prepare != NULL)
        return;
    lock_prepare = evwatch_prepare_new(base, lock_on_prepare, NULL);
    lock_check = evwatch_check_new(base, lock_on_check, NULL);
}

static void lock_unwatch(void)
{
    if (lock_prepare)
        evwatch_free(lock_prepare);
    if (lock_check)
        evwatch_free(lock_check);
    lock_prepare = lock_check = NULL;
}

static void lock_resolve(void)
{
}

static void clock_on_prepare(struct evwatch *w, const struct evwatch_prepare_cb_info *i, void *arg)
{
    (void)w;
    (void)i;
    (void)arg;
    gw_clock_loop_left();
}

static void clock_on_check(struct evwatch *w, const struct evwatch_check_cb_info *i, void *arg)
{
    (void)w;
    (void)i;
    (void)arg;
    gw_clock_loop_woke();
}

int lock_loop_clock(struct event_base *base)
{
    if (evwatch_prepare_new(base, clock_on_prepare, NULL) == NULL
        || evwatch_check_new(base, clock_on_check, NULL) == NULL)
        return -1;
    return 0;                       /* event_base_free() frees the watchers */
}
#else
/*
 * libevent 2.1: its epoll backend sleeps in epoll_wait(), which this file
 * defines; the C library's (or a sanitizer's) is found through
 * dlsym(RTLD_NEXT). epoll_pwait() and epoll_pwait2() are wrapped the same
 * way, so a libevent built to call one of them is not silently missed.
 */
typedef int (*epoll_wait_fn)(int, struct epoll_event *, int, int);
typedef int (*epoll_pwait_fn)(int, struct epoll_event *, int, int, const sigset_t *);
typedef int (*epoll_pwait2_fn)(int, struct epoll_event *, int, const struct timespec *,
                               const sigset_t *);
static void *lock_real[3];                  /* atomic: epoll_wait, _pwait, _pwait2 */
static const char *const lock_real_names[3] = { "epoll_wait", "epoll_pwait", "epoll_pwait2" };

static void *real_fn(int i)
{
    void *f = __atomic_load_n(&lock_real[i], __ATOMIC_ACQUIRE);

    if (f == NULL) {
        f = dlsym(RTLD_NEXT, lock_real_names[i]);
        __atomic_store_n(&lock_real[i], f, __ATOMIC_RELEASE);
    }
    return f;
}

const char *lock_loop_mechanism(void)
{
    return "epoll_wait wrapper";
}

static void lock_watch(struct event_base *base)
{
    (void)base;
}

static void lock_unwatch(void)
{
}

static void lock_resolve(void)
{
    for (int i = 0; i < 3; i++)
        real_fn(i);
}

/* The wrappers serve every loop of the process. */
int lock_loop_clock(struct event_base *base)
{
    (void)base;
    return 0;
}

int epoll_pwait2(int epfd, struct epoll_event *events, int maxevents,
                 const struct timespec *timeout, const sigset_t *sigmask);

/* The start of a wrapped sleep: the loop's time ends, the lock let go. */
static void lock_sleep_pre(void)
{
    gw_clock_loop_left();
    lock_sleep_begin();
}

/* The end of a wrapped sleep: the lock taken back, a new loop time
 * (clock.h), the sleep's errno kept. */
static int lock_sleep_ret(int rc)
{
    int err = errno;

    lock_sleep_end();
    gw_clock_loop_woke();
    errno = err;
    return rc;
}

/* libevent's epoll backend sleeps here. On the control thread the state
 * lock is let go for the sleep and taken back before any callback runs;
 * on every thread the loop's time (clock.h) is renewed. */
int epoll_wait(int epfd, struct epoll_event *events, int maxevents, int timeout)
{
    epoll_wait_fn real = (epoll_wait_fn)real_fn(0);

    if (real == NULL) {
        errno = ENOSYS;
        return -1;
    }
    lock_sleep_pre();
    return lock_sleep_ret(real(epfd, events, maxevents, timeout));
}

int epoll_pwait(int epfd, struct epoll_event *events, int maxevents, int timeout,
                const sigset_t *sigmask)
{
    epoll_pwait_fn real = (epoll_pwait_fn)real_fn(1);

    if (real == NULL) {
        errno = ENOSYS;
        return -1;
    }
    lock_sleep_pre();
    return lock_sleep_ret(real(epfd, events, maxevents, timeout, sigmask));
}

int epoll_pwait2(int epfd, struct epoll_event *events, int maxevents,
                 const struct timespec *timeout, const sigset_t *sigmask)
{
    epoll_pwait2_fn real = (epoll_pwait2_fn)real_fn(2);

    if (real == NULL) {
        errno = ENOSYS;
        return -1;
    }
    lock_sleep_pre();
    return lock_sleep_ret(real(epfd, events, maxevents, timeout, sigmask));
}
#endif

void lock_enable(void)
{
    lock_resolve();
    lock_on = 1;
}

int lock_enabled(void)
{
    return lock_on;
}

static int64_t mono_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

void lock_take(void)
{
    int64_t t0;

    if (!lock_on || lock_held++ > 0)
        return;
    if (pthread_mutex_trylock(&lock_mu) == 0)
        return;
    t0 = mono_ns();                 /* contended: count the wait */
    pthread_mutex_lock(&lock_mu);
    __atomic_add_fetch(&lock_waits, 1, __ATOMIC_RELAXED);
    __atomic_add_fetch(&lock_wait_ns, (uint64_t)(mono_ns() - t0), __ATOMIC_RELAXED);
}

void lock_contention(uint64_t *waits, uint64_t *wait_ns)
{
    *waits = __atomic_load_n(&lock_waits, __ATOMIC_RELAXED);
    *wait_ns = __atomic_load_n(&lock_wait_ns, __ATOMIC_RELAXED);
}

void lock_drop(void)
{
    if (!lock_on)
        return;
    if (--lock_held == 0)
        pthread_mutex_unlock(&lock_mu);
}

int lock_depth(void)
{
    return lock_held;
}

#ifdef INFERGATE_LOCK_CHECKS
void lock_assert_failed(const char *func, const char *file, int line)
{
    fprintf(stderr, "%s:%d: %s: the state lock is not held by this thread "
            "(lock.h: caller holds the state lock)\n", file, line, func);
    abort();
}
#endif

void lock_as_loop_owner(struct event_base *base)
{
    lock_take();
    lock_owner = 1;
    lock_watch(base);
}

void lock_loop_owner_end(void)
{
    if (!lock_owner)
        return;
    lock_owner = 0;
    lock_unwatch();
    if (lock_held > 0) {
        lock_held = 0;
        pthread_mutex_unlock(&lock_mu);
    }
}

uint64_t lock_loop_hooked(void)
{
    return __atomic_load_n(&lock_hooked, __ATOMIC_RELAXED);
}
