/*
 * clock.h -- the gateway's two clocks: monotonic milliseconds for
 * deadlines and durations, wall-clock milliseconds for what is shown or
 * shared with other processes, and the conversion between them.
 *
 * Pure logic takes time as an argument; these are for the I/O edges that
 * read the time (the loop's tick, a request's start, a log line).
 */
#ifndef INFERGATE_CLOCK_H
#define INFERGATE_CLOCK_H

#include <stdint.h>

int64_t gw_now_ms(void);      /* monotonic milliseconds */
int64_t gw_unix_ms(void);     /* wall clock milliseconds */
/* Monotonic deadline `until_unix_ms` (wall clock) as monotonic ms. */
int64_t gw_mono_from_unix(int64_t until_unix_ms);
int64_t gw_unix_from_mono(int64_t until_mono_ms);

#endif
