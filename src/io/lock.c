/*
 * lock.c -- the state lock of a multi-worker gateway (see lock.h), and
 * the epoll_wait() wrapper that lets the control thread hold it except
 * while it sleeps.
 */
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <sys/epoll.h>

#include "lock.h"

static pthread_mutex_t lock_mu = PTHREAD_ADAPTIVE_MUTEX_INITIALIZER_NP;  /* spins a little first */
static int lock_on;                         /* set before threads start */
static _Thread_local int lock_held;         /* this thread's depth */
static _Thread_local int lock_owner;        /* holds it except in epoll_wait */
static uint64_t lock_hooked;                /* atomic */
static uint64_t lock_waits, lock_wait_ns;   /* atomic: lock_take() found it held */

typedef int (*epoll_wait_fn)(int, struct epoll_event *, int, int);
static epoll_wait_fn lock_real_epoll_wait;

static epoll_wait_fn real_epoll_wait(void)
{
    epoll_wait_fn f = __atomic_load_n(&lock_real_epoll_wait, __ATOMIC_ACQUIRE);

    if (f == NULL) {
        f = (epoll_wait_fn)dlsym(RTLD_NEXT, "epoll_wait");
        __atomic_store_n(&lock_real_epoll_wait, f, __ATOMIC_RELEASE);
    }
    return f;
}

void lock_enable(void)
{
    real_epoll_wait();
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

void lock_as_loop_owner(void)
{
    lock_take();
    lock_owner = 1;
}

void lock_loop_owner_end(void)
{
    if (!lock_owner)
        return;
    lock_owner = 0;
    if (lock_held > 0) {
        lock_held = 0;
        pthread_mutex_unlock(&lock_mu);
    }
}

uint64_t lock_loop_hooked(void)
{
    return __atomic_load_n(&lock_hooked, __ATOMIC_RELAXED);
}

/* libevent's epoll backend sleeps here. On the control thread the state
 * lock is let go for the sleep and taken back before any callback runs. */
int epoll_wait(int epfd, struct epoll_event *events, int maxevents, int timeout)
{
    epoll_wait_fn real = real_epoll_wait();
    int depth, rc, err;

    if (real == NULL) {
        errno = ENOSYS;
        return -1;
    }
    if (!lock_owner || lock_held == 0)
        return real(epfd, events, maxevents, timeout);
    __atomic_add_fetch(&lock_hooked, 1, __ATOMIC_RELAXED);
    depth = lock_held;
    lock_held = 0;
    pthread_mutex_unlock(&lock_mu);
    rc = real(epfd, events, maxevents, timeout);
    err = errno;
    pthread_mutex_lock(&lock_mu);
    lock_held = depth;
    errno = err;
    return rc;
}
