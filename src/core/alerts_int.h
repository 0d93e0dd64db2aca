/*
 * alerts_int.h -- what alerts.c (the rules over sliding windows, pure, and
 * the module's lifecycle) and alerts_notify.c (the deliveries: webhook,
 * Slack, command, email) share. Not for other modules.
 */
#ifndef INFERGATE_ALERTS_INT_H
#define INFERGATE_ALERTS_INT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "alerts.h"

struct curl_slist;
struct event;
struct event_base;
struct upstream;
struct upstream_xfer;

/* Latency buckets: bound(i) = threshold * 2^((i - LAT_CENTER) / LAT_STEPS),
 * i = 0..LAT_BOUNDS-1; bucket i holds (bound(i-1), bound(i)], bucket
 * LAT_BOUNDS everything above the last bound. */
#define LAT_STEPS           4       /* buckets per octave */
#define LAT_OCTAVES         10      /* octaves each side of the threshold */
#define LAT_CENTER          (LAT_STEPS * LAT_OCTAVES)
#define LAT_BOUNDS          (2 * LAT_CENTER + 1)
#define LAT_BUCKETS         (LAT_BOUNDS + 1)
#define P99_QUANTILE        0.99

#define MIN_SAMPLES         1       /* fewer observations: no value, not violating */
#define SCOPE_HASH_SLOTS    256     /* power of two */
#define REAP_INTERVAL_MS    50      /* waitpid(WNOHANG) period while a command runs */
#define MS_PER_S            1000
#define US_PER_MS           1000
#define ISO_LEN             32
#define VALUE_LEN           32
#define SUMMARY_LEN         512
#define DEV_NULL            "/dev/null"
#define ENV_PREFIX          "INFERGATE_ALERT"
#define USER_AGENT          "infergate-alerts"
#define DUMP_PRECISION      15      /* significant digits of reals in payloads */

/* --- state ----------------------------------------------------------- */

enum rule_phase { PH_OK = 0, PH_PENDING, PH_FIRING, PH_RESOLVING };

struct rule_state {
    enum rule_phase phase;
    int64_t  since_ms;          /* condition began to hold (monotonic) */
    int64_t  clear_ms;          /* condition cleared while firing */
    int64_t  since_unix_ms;     /* since_ms on the wall clock, once firing */
    int      has_value;         /* as of the last tick */
    double   value;
    double   threshold;         /* as of the last tick the rule was on */
    uint64_t samples;
};

struct scope {
    char         *host;         /* NULL = global */
    struct scope *next;         /* hash chain */
    int64_t       head;         /* slot number of the newest slot; -1 = none yet */
    uint32_t      total[ALERTS_SLOTS];
    uint32_t      ok[ALERTS_SLOTS];
    uint32_t     *lat;          /* [ALERTS_SLOTS * LAT_BUCKETS] when latency_p99 is on */
    uint64_t      sum_total;
    uint64_t      sum_ok;
    uint64_t      sum_lat[LAT_BUCKETS];
    struct rule_state rs[ALERTS_RULES];
};

struct settings {
    int64_t window_ms;
    int64_t for_ms;
    int64_t slot_ms;
    double  availability;       /* < 0 = off */
    double  error_rate;         /* < 0 = off */
    double  p99_ms;             /* 0 = off */
    double  bound[LAT_BOUNDS];  /* latency bucket bounds, ms */
};

/* A copy of one configured notification. */
struct channel {
    enum cfg_notify_type type;
    char    *url;               /* webhook, slack */
    char   **argv;              /* command, NULL-terminated */
    char    *smtp_url;
    char    *from;
    char   **to;                /* NULL-terminated */
    char    *username;
    char    *password;          /* never logged */
    int64_t  timeout_ms;
    char    *where;             /* what the log may say: scheme://host, argv[0] */
};

struct chanset {
    int             refs;
    size_t          n;
    struct channel *v;
};


struct delivery {
    struct alerts        *a;
    struct delivery      *prev, *next;
    struct chanset       *set;      /* one reference */
    const struct channel *ch;
    char                 *body;     /* JSON, Slack JSON or RFC 5322 message */
    size_t                len;
    char                **env;      /* command: our variables, NULL-terminated */
    int                   attempt;  /* 1-based */
    struct event         *retry;
    /* webhook, slack */
    struct upstream_xfer *xfer;
    int                   status;
    /* command */
    pid_t                 pid;
    int                   fd;       /* stdin pipe, -1 when closed */
    size_t                written;
    struct event         *wev;
    struct event         *reap;
    struct event         *kill;
    int                   killed;
    /* email: d->xfer carries the SMTP transfer too */
    struct curl_slist    *rcpt;
    size_t                sent;
};

struct alerts {
    struct event_base *base;
    struct upstream   *up;
    struct settings    set;
    struct chanset    *chans;
    struct scope       global;
    struct scope      *hosts[SCOPE_HASH_SLOTS];
    alerts_event_fn    hook;
    void              *hook_arg;
    alerts_log_fn      log;         /* NULL: the rules say nothing */
    struct alerts_counters cnt;
    struct delivery   *deliveries;
    size_t             ndeliveries;
    uint64_t           msg_seq;
};

extern const char *alerts_rule_names[ALERTS_RULES];
extern const char *alerts_channel_names[ALERTS_CHANNELS];

/* alerts_notify.c */
struct chanset *chanset_new(const struct config *cfg);
void chanset_unref(struct chanset *s);
void delivery_free(struct delivery *d);
void alerts_iso_time(int64_t unix_ms, char *buf, size_t len);
const char *alerts_rule_unit(enum alerts_rule r);

#endif
