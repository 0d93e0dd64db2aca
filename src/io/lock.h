/*
 * lock.h -- the state lock of a gateway with several worker threads.
 *
 * With `server.workers: N` (N > 1) N threads serve clients, each with its
 * own event loop, listener and upstream connections, and the main thread
 * is the control thread (signals, reload, health probes, alerts, Redis).
 * What they share -- the snapshot pointer and reference counts, host and
 * key state, balancer rotation, breakers, metrics, alert windows, the
 * session store and its Redis connection, the retry budget -- is guarded
 * by one mutex, this lock.
 *
 *   Workers take it around each piece of shared state they touch and
 *   never hold it across socket I/O (proxy.c, gateway.c).
 *   The control thread holds it all the time except while its loop
 *   sleeps, so every one of its callbacks runs under the lock without
 *   each taking it (the way Redis modules hold the GIL except in
 *   beforeSleep). With libevent 2.2 or later lock.c lets go in a
 *   "prepare" watcher and takes it back in a "check" watcher
 *   (event2/watch.h); libevent 2.1 has no such hook, so lock.c defines
 *   epoll_wait(), epoll_pwait() and epoll_pwait2() and calls the C
 *   library's (or a sanitizer's) through dlsym(RTLD_NEXT).
 *   lock_loop_hooked() tells whether the control loop really let go.
 *
 * With one worker (the default) the lock is off and every call here is a
 * test of one flag. The lock is recursive per thread: a function that
 * takes it may call one that takes it again.
 */
#ifndef INFERGATE_LOCK_H
#define INFERGATE_LOCK_H

#include <stdint.h>

/* Turns the lock on; call once, before any other thread starts. */
void lock_enable(void);
int  lock_enabled(void);

void lock_take(void);
void lock_drop(void);
/* How often lock_take() found the lock held by another thread, and the
 * time spent waiting for it, since start (the control thread's wake-ups
 * are not counted). */
void lock_contention(uint64_t *waits, uint64_t *wait_ns);
/* Depth of this thread's hold (0 = not held); for assertions. */
int  lock_depth(void);

/*
 * lock_assert_held(): the contract of a function whose header says "caller
 * holds the state lock", checked at its top. Active when built with
 * INFERGATE_LOCK_CHECKS (make asan, make tsan): aborts naming the function
 * when the lock is on and this thread does not hold it. With the lock off
 * (one worker, unit tests) it always passes; in the release build it is
 * nothing at all.
 */
#ifdef INFERGATE_LOCK_CHECKS
void lock_assert_failed(const char *func, const char *file, int line);
#define lock_assert_held() \
    do { \
        if (lock_enabled() && lock_depth() == 0) \
            lock_assert_failed(__func__, __FILE__, __LINE__); \
    } while (0)
#else
#define lock_assert_held() do { } while (0)
#endif

struct event_base;
/* The calling thread (the control thread) takes the lock and keeps it,
 * except while `base`, the loop it runs, sleeps. Once per process. */
void lock_as_loop_owner(struct event_base *base);
/* Ends that: drops the lock entirely (before joining the workers). */
void lock_loop_owner_end(void);
/* How often a loop-owner thread let go of the lock to sleep. */
uint64_t lock_loop_hooked(void);
/* Marks `base`'s wake-ups and sleeps for the loop's time of clock.h
 * (gw_now_ms() read once per wake-up): prepare/check watchers on `base`
 * with libevent 2.2, nothing to do with the epoll wrappers, which mark
 * every loop of the process. Once per base, before its loop runs. */
int lock_loop_clock(struct event_base *base);
/* The hand-over built in: "libevent prepare/check watchers" or
 * "epoll_wait wrapper". */
const char *lock_loop_mechanism(void);

#endif
