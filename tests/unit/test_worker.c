/*
 * test_worker.c -- worker threads and the state lock: messages run on the
 * worker's own thread in the order posted; the lock is recursive per
 * thread; a loop-owner thread lets go of it only while its loop sleeps,
 * whichever hand-over lock.c has (libevent's prepare/check watchers, or
 * the epoll_wait wrapper for libevent 2.1).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>
#include <sys/wait.h>
#include <cmocka.h>

#include <event2/event.h>
#include <event2/thread.h>

#include "lock.h"
#include "worker.h"

struct seen {
    pthread_mutex_t mu;
    int             order[64];
    int             n;
    struct worker  *self[64];
};

struct msg {
    struct seen *s;
    int          i;
};

static struct msg msgs[64];

static void record(void *arg)
{
    struct msg *m = arg;

    pthread_mutex_lock(&m->s->mu);
    m->s->self[m->s->n] = worker_self();
    m->s->order[m->s->n++] = m->i;
    pthread_mutex_unlock(&m->s->mu);
}

static int count(struct seen *s)
{
    int n;

    pthread_mutex_lock(&s->mu);
    n = s->n;
    pthread_mutex_unlock(&s->mu);
    return n;
}

static void sleep_ms(int ms)
{
    struct timespec ts = { 0, ms * 1000000L };

    nanosleep(&ts, NULL);
}

static void test_post_runs_on_the_worker_in_order(void **state)
{
    struct worker w;
    struct seen s;
    int i, waited = 0;

    (void)state;
    memset(&w, 0, sizeof(w));
    memset(&s, 0, sizeof(s));
    pthread_mutex_init(&s.mu, NULL);
    assert_int_equal(worker_init(&w, NULL, 3, NULL), 0);
    assert_int_equal(worker_start(&w), 0);
    for (i = 0; i < 64; i++) {
        msgs[i].s = &s;
        msgs[i].i = i;
        assert_int_equal(worker_post(&w, record, &msgs[i]), 0);
    }
    while (count(&s) < 64 && waited++ < 5000)
        sleep_ms(1);
    assert_int_equal(count(&s), 64);
    for (i = 0; i < 64; i++) {
        assert_int_equal(s.order[i], i);
        assert_ptr_equal(s.self[i], &w);      /* ran on the worker's thread */
    }
    assert_null(worker_self());                /* this thread is no worker */
    worker_free(&w);
    pthread_mutex_destroy(&s.mu);
}

static void test_messages_left_run_at_join(void **state)
{
    struct worker w;
    struct seen s;

    (void)state;
    memset(&w, 0, sizeof(w));
    memset(&s, 0, sizeof(s));
    pthread_mutex_init(&s.mu, NULL);
    assert_int_equal(worker_init(&w, NULL, 0, NULL), 0);   /* never started */
    msgs[0].s = &s;
    msgs[0].i = 7;
    assert_int_equal(worker_post(&w, record, &msgs[0]), 0);
    assert_int_equal(count(&s), 0);
    worker_join(&w);
    assert_int_equal(count(&s), 1);
    assert_int_equal(s.order[0], 7);
    worker_free(&w);
    pthread_mutex_destroy(&s.mu);
}

static int64_t mono_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void never(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
}

/* With busy polling a pass of the loop does not sleep (the poll's timeout
 * is zero), and ends (the timer re-arms, it does not run again within the
 * pass); off again, the pass sleeps until the next event. */
static void test_busy_poll_pass_does_not_sleep(void **state)
{
    struct event_base *base = event_base_new();
    struct event *later = evtimer_new(base, never, NULL);
    struct timeval tv = { 0, 200 * 1000 };
    struct worker w;
    int64_t t0;

    (void)state;
    memset(&w, 0, sizeof(w));
    assert_int_equal(worker_init(&w, NULL, 0, base), 0);
    evtimer_add(later, &tv);
    assert_int_equal(worker_busy_poll(&w, 1), 0);
    assert_int_equal(worker_busy_poll(&w, 1), 0);          /* once is enough */
    t0 = mono_ms();
    for (int i = 0; i < 100; i++)
        event_base_loop(base, EVLOOP_ONCE);
    assert_true(mono_ms() - t0 < 150);
    assert_int_equal(worker_busy_poll(&w, 0), 0);
    assert_null(w.busy_ev);
    t0 = mono_ms();
    event_base_loop(base, EVLOOP_ONCE);                     /* sleeps until `later` */
    assert_true(mono_ms() - t0 >= 20);
    event_free(later);
    worker_free(&w);
    event_base_free(base);
}

static void busy_off(void *arg)
{
    worker_busy_poll(arg, 0);
}

/* CPU time of w's thread over ~100 ms of wall time, in ms: the best of a
 * few tries in the direction wanted (the machine may be shared). */
static int64_t worker_cpu_ms(struct worker *w, int want_busy)
{
    clockid_t cid;
    int64_t best = want_busy ? 0 : 1000;

    assert_int_equal(pthread_getcpuclockid(w->thread, &cid), 0);
    for (int i = 0; i < 5; i++) {
        struct timespec a, b;
        int64_t d;

        clock_gettime(cid, &a);
        sleep_ms(100);
        clock_gettime(cid, &b);
        d = (int64_t)(b.tv_sec - a.tv_sec) * 1000 + (b.tv_nsec - a.tv_nsec) / 1000000;
        if (want_busy ? d > best : d < best)
            best = d;
        if (want_busy ? best >= 50 : best < 20)
            break;
    }
    return best;
}

/* A busy-polling worker thread spins (its CPU time follows the wall
 * clock), still runs what is posted to it, is switched off by a message
 * and is joined as any other. */
static void test_busy_poll_worker_spins_and_serves(void **state)
{
    struct worker w;
    struct seen s;
    int i, waited = 0;

    (void)state;
    memset(&w, 0, sizeof(w));
    memset(&s, 0, sizeof(s));
    pthread_mutex_init(&s.mu, NULL);
    assert_int_equal(worker_init(&w, NULL, 1, NULL), 0);
    assert_int_equal(worker_busy_poll(&w, 1), 0);          /* before the start */
    assert_int_equal(worker_start(&w), 0);
    assert_true(worker_cpu_ms(&w, 1) >= 50);
    for (i = 0; i < 16; i++) {
        msgs[i].s = &s;
        msgs[i].i = i;
        assert_int_equal(worker_post(&w, record, &msgs[i]), 0);
    }
    while (count(&s) < 16 && waited++ < 5000)
        sleep_ms(1);
    assert_int_equal(count(&s), 16);
    assert_int_equal(worker_post(&w, busy_off, &w), 0);
    waited = 0;
    while (worker_cpu_ms(&w, 0) >= 20 && waited++ < 20)
        ;
    assert_true(worker_cpu_ms(&w, 0) < 20);
    worker_free(&w);
    pthread_mutex_destroy(&s.mu);
}

/* The control thread of the test: owns the lock, runs a loop that sleeps. */
struct owner {
    struct event_base *base;
    volatile int       ticks;
    volatile int       stop;
};

static void owner_tick(evutil_socket_t fd, short what, void *arg)
{
    struct owner *o = arg;

    (void)fd;
    (void)what;
    assert_int_equal(lock_depth(), 1);   /* callbacks run holding the lock */
    __atomic_add_fetch(&o->ticks, 1, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&o->stop, __ATOMIC_SEQ_CST))
        event_base_loopexit(o->base, NULL);
}

static void *owner_main(void *arg)
{
    struct owner *o = arg;
    struct event *ev = event_new(o->base, -1, EV_PERSIST, owner_tick, o);
    struct timeval tv = { 0, 20000 };

    event_add(ev, &tv);
    lock_as_loop_owner(o->base);
    event_base_dispatch(o->base);
    lock_loop_owner_end();
    event_free(ev);
    return NULL;
}

/* A thread that takes the lock once, so the test can wait for it with a
 * deadline instead of hanging when the owner never lets go. */
struct taker {
    volatile int got;
};

static void *taker_main(void *arg)
{
    struct taker *tk = arg;

    lock_take();
    __atomic_store_n(&tk->got, 1, __ATOMIC_SEQ_CST);
    lock_drop();
    return NULL;
}

/* Ends the owner's loop and thread (it then drops the lock for good). */
static void owner_stop(struct owner *o, pthread_t t)
{
    __atomic_store_n(&o->stop, 1, __ATOMIC_SEQ_CST);
    pthread_join(t, NULL);
    event_base_free(o->base);
}

static void test_loop_owner_lets_go_only_while_sleeping(void **state)
{
    struct event_config *ec = event_config_new();
    struct owner o;
    struct taker tk = { 0 };
    pthread_t t, tt;
    uint64_t hooked0 = lock_loop_hooked(), hooked1;
    int i, ticks0;

    (void)state;
    memset(&o, 0, sizeof(o));
    event_config_avoid_method(ec, "select");
    event_config_avoid_method(ec, "poll");
    o.base = event_base_new_with_config(ec);
    event_config_free(ec);
    assert_non_null(o.base);
    assert_int_equal(pthread_create(&t, NULL, owner_main, &o), 0);
    while (__atomic_load_n(&o.ticks, __ATOMIC_SEQ_CST) < 2)
        sleep_ms(1);
    /* Idle, the owner sleeps between its 20 ms ticks and lets go of the
     * lock for each sleep: the count of releases grows with the ticks.
     * Without a working hand-over it stays put (and nothing below could
     * take the lock). */
    ticks0 = __atomic_load_n(&o.ticks, __ATOMIC_SEQ_CST);
    hooked1 = lock_loop_hooked();
    for (i = 0; i < 2000 && __atomic_load_n(&o.ticks, __ATOMIC_SEQ_CST) < ticks0 + 5; i++)
        sleep_ms(1);
    if (lock_loop_hooked() - hooked1 < 5) {
        unsigned long long n = lock_loop_hooked() - hooked1;
        owner_stop(&o, t);
        fail_msg("%s: %llu lock releases in %d idle ticks of the loop owner",
                 lock_loop_mechanism(), n, __atomic_load_n(&o.ticks, __ATOMIC_SEQ_CST) - ticks0);
    }
    /* ... and really lets go: another thread gets it within a deadline. */
    assert_int_equal(pthread_create(&tt, NULL, taker_main, &tk), 0);
    for (i = 0; i < 2000 && !__atomic_load_n(&tk.got, __ATOMIC_SEQ_CST); i++)
        sleep_ms(1);
    if (!__atomic_load_n(&tk.got, __ATOMIC_SEQ_CST)) {
        owner_stop(&o, t);              /* lets go at last: the taker ends */
        pthread_join(tt, NULL);
        fail_msg("%s: another thread did not get the lock in 2 s while the owner idled",
                 lock_loop_mechanism());
    }
    pthread_join(tt, NULL);
    /* The owner sleeps 20 ms at a time: this thread gets the lock, and
     * while it holds it the owner runs no callback. */
    for (i = 0; i < 5; i++) {
        int before;
        lock_take();
        lock_take();                                   /* recursive */
        assert_int_equal(lock_depth(), 2);
        before = __atomic_load_n(&o.ticks, __ATOMIC_SEQ_CST);
        sleep_ms(60);
        assert_int_equal(__atomic_load_n(&o.ticks, __ATOMIC_SEQ_CST), before);
        lock_drop();
        lock_drop();
        assert_int_equal(lock_depth(), 0);
        sleep_ms(30);
    }
    assert_true(lock_loop_hooked() > hooked0);
    owner_stop(&o, t);
}

/* Runs lock_assert_held() in a child, with the lock held (`held`) or not;
 * returns the child's wait status. */
static int assert_in_child(int held)
{
    int status = 0;
    pid_t pid = fork();

    if (pid == 0) {
        int null = open("/dev/null", O_WRONLY);
        if (null >= 0)
            dup2(null, 2);              /* the failure's message */
        if (held)
            lock_take();
        lock_assert_held();
        _exit(0);
    }
    assert_true(pid > 0);
    assert_int_equal(waitpid(pid, &status, 0), pid);
    return status;
}

/* The lock contract is checked where it is built to be (make asan, tsan:
 * INFERGATE_LOCK_CHECKS) and costs nothing elsewhere. */
static void test_lock_assert_held(void **state)
{
    int st;

    (void)state;
    st = assert_in_child(1);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    st = assert_in_child(0);
#ifdef INFERGATE_LOCK_CHECKS
    assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT);
#else
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
#endif
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_post_runs_on_the_worker_in_order),
        cmocka_unit_test(test_messages_left_run_at_join),
        cmocka_unit_test(test_loop_owner_lets_go_only_while_sleeping),
        cmocka_unit_test(test_lock_assert_held),
        cmocka_unit_test(test_busy_poll_pass_does_not_sleep),
        cmocka_unit_test(test_busy_poll_worker_spins_and_serves),
    };

    evthread_use_pthreads();
    lock_enable();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
