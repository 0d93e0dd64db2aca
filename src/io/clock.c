/*
 * clock.c -- monotonic and wall-clock milliseconds (see clock.h).
 */
#include <time.h>

#include "clock.h"

int64_t gw_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t gw_mono_from_unix(int64_t until_unix_ms)
{
    return gw_now_ms() + (until_unix_ms - gw_unix_ms());
}

int64_t gw_unix_from_mono(int64_t until_mono_ms)
{
    return gw_unix_ms() + (until_mono_ms - gw_now_ms());
}

int64_t gw_unix_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}
