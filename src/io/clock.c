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
 * wake-up whose callbacks never ask costs no clock_gettime(). */
int64_t gw_now_ms(void)
{
    if (clock_state & CLOCK_MONO)
        return clock_mono;
    if (!(clock_state & CLOCK_LOOP))
        return clock_read(CLOCK_MONOTONIC);
    clock_mono = clock_read(CLOCK_MONOTONIC);
    clock_state |= CLOCK_MONO;
    return clock_mono;
}

int64_t gw_unix_ms(void)
{
    if (clock_state & CLOCK_UNIX)
        return clock_unix;
    if (!(clock_state & CLOCK_LOOP))
        return clock_read(CLOCK_REALTIME);
    clock_unix = clock_read(CLOCK_REALTIME);
    clock_state |= CLOCK_UNIX;
    return clock_unix;
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
