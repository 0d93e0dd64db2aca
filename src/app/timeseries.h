/*
 * timeseries.h -- the last 15 minutes behind the dashboard's charts: one
 * point per second in a fixed ring, made from the differences between
 * two readings of the metrics totals (metrics_totals()), so the request
 * path pays nothing for it.
 *
 * A point holds the inference answers and errors of its second and the
 * p50/p99 of their duration and time to first byte, estimated from the
 * histogram buckets as Prometheus' histogram_quantile() does (linear
 * within a bucket). Pure: the caller passes the time.
 */
#ifndef INFERGATE_TIMESERIES_H
#define INFERGATE_TIMESERIES_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "metrics.h"

#define TS_POINTS 900                   /* 15 minutes at one per second */

struct ts_point {
    int64_t  unix_ms;                   /* end of the interval */
    uint32_t ms;                        /* its length */
    uint32_t requests, errors;
    float    p50_ms, p99_ms;            /* duration; < 0: no answer */
    float    ttfb_p50_ms, ttfb_p99_ms;
};

struct timeseries {
    struct ts_point       pts[TS_POINTS];
    size_t                n, next;      /* points kept; where the next goes */
    struct metrics_totals prev;
    int64_t               prev_ms;      /* 0: no reading yet */
};

/* Takes one reading; from the second one on, adds a point. */
void ts_sample(struct timeseries *ts, const struct metrics_totals *now,
               int64_t unix_ms);

/* The q-quantile (0..1) in ms of per-bucket counts (nb bounds in seconds,
 * plus one bucket past the last); -1 when the counts are all zero. */
double ts_quantile(const uint64_t *counts, const double *bounds, size_t nb,
                   double q);

/* {"step_ms", "t": [unix ms...], "requests", "errors", "p50_ms",
 *  "p99_ms", "ttfb_p50_ms", "ttfb_p99_ms"} (null for no answer), oldest
 * first, only points after since_ms. */
json_t *ts_json(const struct timeseries *ts, int64_t since_ms);

#endif
