/*
 * timeseries.c -- 1 s points from metric totals (see timeseries.h).
 */
#include <string.h>

#include "timeseries.h"

double ts_quantile(const uint64_t *counts, const double *bounds, size_t nb,
                   double q)
{
    uint64_t total = 0, seen = 0;
    double rank, lo;
    size_t i;

    for (i = 0; i <= nb; i++)
        total += counts[i];
    if (total == 0)
        return -1;
    rank = q * (double)total;
    for (i = 0; i <= nb; i++) {
        if (counts[i] == 0 || (double)(seen + counts[i]) < rank) {
            seen += counts[i];
            continue;
        }
        if (i == nb)                    /* past the last bound */
            return bounds[nb - 1] * 1000.0;
        lo = i == 0 ? 0 : bounds[i - 1];
        return (lo + (bounds[i] - lo) * ((rank - (double)seen) / (double)counts[i]))
               * 1000.0;
    }
    return bounds[nb - 1] * 1000.0;
}

/* now - before per bucket; a counter that went back (reset) counts whole. */
static uint64_t delta(uint64_t now, uint64_t before)
{
    return now >= before ? now - before : now;
}

void ts_sample(struct timeseries *ts, const struct metrics_totals *now,
               int64_t unix_ms)
{
    uint64_t dur[METRICS_LAT_BUCKETS], ttfb[METRICS_LAT_BUCKETS];
    const double *bounds;
    struct ts_point *p;
    size_t nb, i;

    if (ts->prev_ms == 0 || unix_ms <= ts->prev_ms) {
        ts->prev = *now;
        ts->prev_ms = unix_ms;
        return;
    }
    bounds = metrics_latency_bounds(&nb);
    for (i = 0; i <= nb; i++) {
        dur[i] = delta(now->duration[i], ts->prev.duration[i]);
        ttfb[i] = delta(now->ttfb[i], ts->prev.ttfb[i]);
    }
    p = &ts->pts[ts->next];
    p->unix_ms = unix_ms;
    p->ms = (uint32_t)(unix_ms - ts->prev_ms);
    p->requests = (uint32_t)delta(now->requests, ts->prev.requests);
    p->errors = (uint32_t)delta(now->errors, ts->prev.errors);
    p->p50_ms = (float)ts_quantile(dur, bounds, nb, 0.5);
    p->p99_ms = (float)ts_quantile(dur, bounds, nb, 0.99);
    p->ttfb_p50_ms = (float)ts_quantile(ttfb, bounds, nb, 0.5);
    p->ttfb_p99_ms = (float)ts_quantile(ttfb, bounds, nb, 0.99);
    ts->next = (ts->next + 1) % TS_POINTS;
    if (ts->n < TS_POINTS)
        ts->n++;
    ts->prev = *now;
    ts->prev_ms = unix_ms;
}

static json_t *ms_or_null(float v)
{
    return v < 0 ? json_null() : json_real((double)(int64_t)(v * 10.0f) / 10.0);
}

json_t *ts_json(const struct timeseries *ts, int64_t since_ms)
{
    json_t *t = json_array(), *req = json_array(), *err = json_array();
    json_t *p50 = json_array(), *p99 = json_array();
    json_t *t50 = json_array(), *t99 = json_array();
    size_t i, start = (ts->next + TS_POINTS - ts->n) % TS_POINTS;

    for (i = 0; i < ts->n; i++) {
        const struct ts_point *p = &ts->pts[(start + i) % TS_POINTS];
        if (p->unix_ms <= since_ms)
            continue;
        json_array_append_new(t, json_integer(p->unix_ms));
        json_array_append_new(req, json_integer(p->requests));
        json_array_append_new(err, json_integer(p->errors));
        json_array_append_new(p50, ms_or_null(p->p50_ms));
        json_array_append_new(p99, ms_or_null(p->p99_ms));
        json_array_append_new(t50, ms_or_null(p->ttfb_p50_ms));
        json_array_append_new(t99, ms_or_null(p->ttfb_p99_ms));
    }
    return json_pack("{s:i, s:i, s:o, s:o, s:o, s:o, s:o, s:o, s:o}",
                     "step_ms", 1000, "points", TS_POINTS, "t", t,
                     "requests", req, "errors", err, "p50_ms", p50, "p99_ms", p99,
                     "ttfb_p50_ms", t50, "ttfb_p99_ms", t99);
}
