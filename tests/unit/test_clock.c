/*
 * test_clock.c -- the loop's time (clock.h): inside a loop's callbacks
 * gw_now_ms() and gw_unix_ms() return one reading per wake-up, a new
 * wake-up reads again, and outside a dispatch (and after it returned)
 * every call reads the clock; gw_clock_now_ms() always reads it. On the
 * loop of a worker thread as on the main thread's.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <cmocka.h>

#include <event2/event.h>
#include <event2/thread.h>

#include "clock.h"
#include "lock.h"
#include "worker.h"

#define NAP_MS 30

static void nap(int ms)
{
    struct timespec ts = { 0, ms * 1000000L };

    nanosleep(&ts, NULL);
}

/* What the callbacks saw. */
struct seen {
    struct event_base *base;
    struct event      *second, *later;
    int64_t            first_mono, first_unix;   /* first callback, before its nap */
    int64_t            after_mono, after_unix;   /* first callback, after it */
    int64_t            real_after;               /* gw_clock_now_ms() after it */
    int64_t            second_mono;              /* second callback, same wake-up */
    int64_t            later_mono;               /* a callback of the next wake-up */
    int                done;
};

static void later_cb(evutil_socket_t fd, short what, void *arg)
{
    struct seen *s = arg;

    (void)fd;
    (void)what;
    s->later_mono = gw_now_ms();
    __atomic_store_n(&s->done, 1, __ATOMIC_RELEASE);
}

static void second_cb(evutil_socket_t fd, short what, void *arg)
{
    struct seen *s = arg;
    struct timeval tv = { 0, 1000 };

    (void)fd;
    (void)what;
    s->second_mono = gw_now_ms();
    evtimer_add(s->later, &tv);         /* fires after the next poll */
}

/* Reads the time, works NAP_MS, reads again; the second callback is
 * active in the same wake-up. */
static void first_cb(evutil_socket_t fd, short what, void *arg)
{
    struct seen *s = arg;

    (void)fd;
    (void)what;
    s->first_mono = gw_now_ms();
    s->first_unix = gw_unix_ms();
    nap(NAP_MS);
    s->after_mono = gw_now_ms();
    s->after_unix = gw_unix_ms();
    s->real_after = gw_clock_now_ms();
    event_active(s->second, EV_TIMEOUT, 0);
}

static void seen_check(const struct seen *s)
{
    assert_int_equal(s->done, 1);
    assert_true(s->first_mono > 0);
    /* One reading per wake-up: the callback's own work does not move it. */
    assert_int_equal(s->after_mono, s->first_mono);
    assert_int_equal(s->after_unix, s->first_unix);
    assert_int_equal(s->second_mono, s->first_mono);
    /* ... though the real clock moved. */
    assert_true(s->real_after - s->first_mono >= NAP_MS - 1);
    /* The next wake-up reads the clock again. */
    assert_true(s->later_mono - s->first_mono >= NAP_MS - 1);
}

static void seen_setup(struct seen *s, struct event_base *base)
{
    memset(s, 0, sizeof(*s));
    s->base = base;
    s->second = event_new(base, -1, 0, second_cb, s);
    s->later = evtimer_new(base, later_cb, s);
    assert_non_null(s->second);
    assert_non_null(s->later);
}

static void seen_free(struct seen *s)
{
    event_free(s->second);
    event_free(s->later);
}

static void test_outside_a_loop_reads_the_clock(void **state)
{
    int64_t m0, u0;

    (void)state;
    m0 = gw_now_ms();
    u0 = gw_unix_ms();
    nap(NAP_MS);
    assert_true(gw_now_ms() - m0 >= NAP_MS - 1);
    assert_true(gw_unix_ms() - u0 >= NAP_MS - 1);
    assert_true(gw_clock_now_ms() - m0 >= NAP_MS - 1);
}

static void test_one_reading_per_wake_up(void **state)
{
    struct event_base *base = event_base_new();
    struct event *first;
    struct seen s;
    int64_t m0;

    (void)state;
    assert_non_null(base);
    assert_int_equal(lock_loop_clock(base), 0);
    seen_setup(&s, base);
    first = event_new(base, -1, 0, first_cb, &s);
    event_active(first, EV_TIMEOUT, 0);
    while (!s.done)
        assert_true(event_base_loop(base, EVLOOP_ONCE) >= 0);
    seen_check(&s);
    /* The dispatch returned: the caller ends the loop's time (as main.c
     * does), then every call reads the clock again. */
    gw_clock_loop_left();
    m0 = gw_now_ms();
    nap(NAP_MS);
    assert_true(gw_now_ms() - m0 >= NAP_MS - 1);
    event_free(first);
    seen_free(&s);
    event_base_free(base);
}

/* A worker thread's loop (its own base, marked by worker_init()). */
static void worker_first(void *arg)
{
    struct seen *s = arg;

    first_cb(-1, 0, s);
}

static void test_worker_loop_has_its_own_reading(void **state)
{
    struct worker w;
    struct seen s;
    int waited = 0;

    (void)state;
    memset(&w, 0, sizeof(w));
    assert_int_equal(worker_init(&w, NULL, 1, NULL), 0);
    seen_setup(&s, w.base);
    assert_int_equal(worker_start(&w), 0);
    assert_int_equal(worker_post(&w, worker_first, &s), 0);
    while (!__atomic_load_n(&s.done, __ATOMIC_ACQUIRE) && waited++ < 500)
        nap(10);
    worker_join(&w);
    seen_check(&s);
    seen_free(&s);
    worker_free(&w);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_outside_a_loop_reads_the_clock),
        cmocka_unit_test(test_one_reading_per_wake_up),
        cmocka_unit_test(test_worker_loop_has_its_own_reading),
    };

    evthread_use_pthreads();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
