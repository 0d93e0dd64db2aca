/*
 * clock.c -- monotonic and wall-clock milliseconds, read once per event
 * loop wake-up inside a loop's dispatch (see clock.h).
 */
#include <time.h>

#include "clock.h"

#define CLOCK_LOOP 1u                       /* between a wake-up and the next sleep */
#define CLOCK_MONO 2u                       /* clock_mono read in this wake-up */
#define CLOCK_UNIX 4u                       /* clock_unix read in this wake-up */

static _Thread_local unsigned clock_state;
static _Thread_local int64_t clock_mono, clock_unix;

static int64_t clock_read(clockid_t id)
{
    struct timespec ts;

    clock_gettime(id, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t gw_clock_now_ms(void)
{
    return clock_read(CLOCK_MONOTONIC);
}

/* The first reading of a wake-up is taken when first asked for: a
 * wake-up whose callbacks never ask costs no clock_gettime(). Outside a
 * loop's dispatch every call reads the clock. */
static inline int64_t clock_cached(unsigned bit, int64_t *v, clockid_t id)
{
    if (clock_state & bit)
        return *v;
    if (!(clock_state & CLOCK_LOOP))
        return clock_read(id);
    *v = clock_read(id);
    clock_state |= bit;
    return *v;
}

int64_t gw_now_ms(void)
{
    return clock_cached(CLOCK_MONO, &clock_mono, CLOCK_MONOTONIC);
}

int64_t gw_unix_ms(void)
{
    return clock_cached(CLOCK_UNIX, &clock_unix, CLOCK_REALTIME);
}

void gw_clock_loop_woke(void)
{
    clock_state = CLOCK_LOOP;
}

void gw_clock_loop_left(void)
{
    clock_state = 0;
}

int64_t gw_mono_from_unix(int64_t until_unix_ms)
{
    return gw_now_ms() + (until_unix_ms - gw_unix_ms());
}

int64_t gw_unix_from_mono(int64_t until_mono_ms)
{
    return gw_unix_ms() + (until_mono_ms - gw_now_ms());
}
