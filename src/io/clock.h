/*
 * clock.h -- the gateway's two clocks: monotonic milliseconds for
 * deadlines and durations, wall-clock milliseconds for what is shown or
 * shared with other processes, and the conversion between them.
 *
 * Pure logic takes time as an argument; these are for the I/O edges that
 * read the time (the loop's tick, a request's start, a log line).
 *
 * The loop's time. Inside an event loop's dispatch, gw_now_ms() and
 * gw_unix_ms() read the clock at most once per wake-up (at the first call
 * after the loop's poll returned: a wake-up that never asks costs nothing)
 * and return that reading for every callback of the wake-up, the way
 * nginx keeps ngx_current_msec and Redis server.mstime (a proxied request
 * asked for the time 11 times, each a clock_gettime()). lock.c marks the
 * wake-ups: gw_clock_loop_woke() when the loop's poll returned, before any
 * callback runs, gw_clock_loop_left() before it sleeps again; whoever runs
 * a dispatch calls gw_clock_loop_left() when it returned. Outside a
 * dispatch (start-up, the reload's parse thread, shutdown, unit tests)
 * every call reads the clock.
 *
 * So, in a callback:
 *   - a deadline checked against gw_now_ms() fires up to one batch of
 *     callbacks late (as in nginx and Redis), and two readings in one
 *     wake-up are equal;
 *   - a piece of synchronous work that measures its own duration
 *     (`gw_clock_now_ms() - t0`) must read the real clock:
 *     gw_clock_now_ms() always does.
 * The cache is per thread: each worker's loop has its own wake-ups.
 */
#ifndef INFERGATE_CLOCK_H
#define INFERGATE_CLOCK_H

#include <stdint.h>

int64_t gw_now_ms(void);      /* monotonic milliseconds (the loop's time) */
int64_t gw_unix_ms(void);     /* wall clock milliseconds (the loop's time) */
int64_t gw_clock_now_ms(void);  /* monotonic milliseconds, read now */
/* Monotonic deadline `until_unix_ms` (wall clock) as monotonic ms. */
int64_t gw_mono_from_unix(int64_t until_unix_ms);
int64_t gw_unix_from_mono(int64_t until_mono_ms);

/* This thread's loop woke up: its callbacks share one reading from now. */
void gw_clock_loop_woke(void);
/* This thread's loop sleeps or its dispatch returned: read the clock again. */
void gw_clock_loop_left(void);

#endif
