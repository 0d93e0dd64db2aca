/*
 * main.c -- command line, signals, start, drain and exit codes.
 *
 *   infergate [-c CONF_DIR] [-l ADDR:PORT] [-t] [-p PIDFILE] [-V] [-h]
 *
 * Signals arrive as libevent signal events, so no work happens inside a
 * signal handler: SIGHUP reloads, SIGTERM/SIGINT drain (a second one
 * exits at once), SIGUSR1 reopens the log files.
 */
#include <errno.h>
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/resource.h>

#include <curl/curl.h>
#include <event2/event.h>
#include <event2/thread.h>

#include "config.h"
#include "config_check.h"
#include "evmem.h"
#include "gateway.h"
#include "http.h"
#include "lock.h"
#include "log.h"
#include "notify.h"

#ifndef INFERGATE_VERSION
#define INFERGATE_VERSION "0.1.0"
#endif

#define DEFAULT_CONF_DIR   "/etc/infergate"
#define DRAIN_POLL_MS      20
#define FLUSH_GRACE_MS     1000     /* after drain_timeout: let replies flush */

struct app {
    struct event_base *base;
    struct gateway     gw;
    struct event      *sig_hup, *sig_term, *sig_int, *sig_usr1;
    struct event      *drain_timer;
    int64_t            drain_deadline;
    int                stopping;
    int                aborted;      /* drain_timeout passed: requests ended */
};

static void usage(FILE *fp)
{
    fprintf(fp,
        "usage: infergate [-c CONF_DIR] [-l ADDR:PORT] [-t] [-p PIDFILE] [-V] [-h]\n"
        "  -c DIR   configuration directory with hosts.json, api-keys.json,\n"
        "           policies.yaml (default " DEFAULT_CONF_DIR ")\n"
        "  -l ADDR  listen address, overrides server.listen\n"
        "  -t       check the configuration and exit (0 ok, 1 problems)\n"
        "  -p FILE  write the process id to FILE while running\n"
        "  -V       print the version and exit\n"
        "  -h       this help\n"
        "signals: HUP reload, TERM/INT graceful stop, USR1 reopen logs\n");
}

static void drain_check(evutil_socket_t fd, short what, void *arg)
{
    struct app *a = arg;
    struct timeval tv = { 0, DRAIN_POLL_MS * 1000 };

    (void)fd;
    (void)what;
    /* Done when no request is left and every reply went out. */
    if (gateway_idle(&a->gw) && gateway_connections(&a->gw) == 0) {
        log_info("drained, exiting");
        event_base_loopexit(a->base, NULL);
        return;
    }
    if (gw_now_ms() >= a->drain_deadline) {
        if (a->aborted) {
            event_base_loopexit(a->base, NULL);
            return;
        }
        log_warn("drain_timeout passed with %zu request(s) in flight; ending them",
                 a->gw.active);
        gateway_abort_all(&a->gw);
        a->aborted = 1;
        a->drain_deadline = gw_now_ms() + FLUSH_GRACE_MS;
    }
    evtimer_add(a->drain_timer, &tv);
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    struct app *a = arg;

    (void)what;
    switch (sig) {
    case SIGHUP:
        log_info("SIGHUP: reloading configuration");
        gateway_reload(&a->gw, NULL);
        return;
    case SIGUSR1:
        if (log_reopen() < 0)
            log_error("cannot reopen log files: %s", strerror(errno));
        else
            log_info("log files reopened");
        return;
    default:
        if (a->stopping) {
            log_warn("second stop signal: exiting now");
            gateway_abort_all(&a->gw);
            event_base_loopexit(a->base, NULL);
            return;
        }
        a->stopping = 1;
        notify_send("STOPPING=1\nSTATUS=draining %zu request(s)", a->gw.active);
        log_info("stop signal: no new connections, draining %zu request(s)",
                 a->gw.active);
        gateway_drain(&a->gw);
        a->drain_deadline = gw_now_ms() + a->gw.snap->cfg->server.drain_timeout_ms;
        drain_check(-1, 0, a);
        return;
    }
}

/* With worker threads the main loop must sleep in epoll_wait() (lock.h).
 * Its wake-ups are marked for the loop's time (clock.h). */
static struct event_base *main_base(int threaded)
{
    struct event_config *ec;
    struct event_base *b;

    if (!threaded) {
        b = event_base_new();
    } else {
        if ((ec = event_config_new()) == NULL)
            return NULL;
        event_config_avoid_method(ec, "select");
        event_config_avoid_method(ec, "poll");
        b = event_base_new_with_config(ec);
        event_config_free(ec);
        if (b == NULL)
            fprintf(stderr, "infergate: server.workers > 1 needs libevent's epoll backend\n");
    }
    if (b && lock_loop_clock(b) < 0) {
        event_base_free(b);
        return NULL;
    }
    return b;
}

static int write_pidfile(const char *path)
{
    FILE *fp = fopen(path, "w");

    if (fp == NULL)
        return -1;
    fprintf(fp, "%ld\n", (long)getpid());
    return fclose(fp);
}

static void print_errors(const struct cfg_errors *errs)
{
    size_t i;

    for (i = 0; i < errs->n; i++)
        fprintf(stderr, "%s\n", errs->msg[i]);
}

int main(int argc, char **argv)
{
    const char *conf_dir = DEFAULT_CONF_DIR, *listen = NULL, *pidfile = NULL;
    struct cfg_errors errs = { NULL, 0 };
    struct config *cfg;
    struct app a;
    int opt, check = 0, rc = 0;

    while ((opt = getopt(argc, argv, "c:l:tp:Vh")) != -1) {
        switch (opt) {
        case 'c': conf_dir = optarg; break;
        case 'l': listen = optarg; break;
        case 't': check = 1; break;
        case 'p': pidfile = optarg; break;
        case 'V': printf("infergate %s\n", INFERGATE_VERSION); return 0;
        case 'h': usage(stdout); return 0;
        default:  usage(stderr); return 2;
        }
    }
    if (optind != argc) {
        usage(stderr);
        return 2;
    }
    if (check)
        return config_check_main(conf_dir, stdout);

    config_check_init();
    cfg = config_load(conf_dir, &errs);
    if (cfg == NULL) {
        print_errors(&errs);
        fprintf(stderr, "infergate: configuration has %zu problem(s), not starting\n",
                errs.n);
        cfg_errors_free(&errs);
        return 1;
    }
    if (log_open(cfg->server.log_file, cfg->server.log_level,
                 cfg->server.log_format) < 0
        || log_open_access(cfg->server.access_log,
                           cfg->server.access_log_format) < 0) {
        fprintf(stderr, "infergate: cannot open log file: %s\n", strerror(errno));
        config_unref(cfg);
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    malloc_trim(0);                   /* the parse trees' pages, as after a reload */
    {
        /* Each client and upstream connection is a descriptor: use what
         * the hard limit allows (the connection cap follows it). */
        struct rlimit rl;
        if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
            rl.rlim_cur = rl.rlim_max;
            setrlimit(RLIMIT_NOFILE, &rl);
        }
    }
    curl_global_init(CURL_GLOBAL_DEFAULT);
    memset(&a, 0, sizeof(a));
    evmem_init();                     /* before any other libevent call */
    evthread_use_pthreads();          /* reloads parse in a thread; workers */
    a.base = main_base(cfg->server.workers > 1);
    if (a.base == NULL) {
        rc = 1;
        goto out;
    }
    /* Signals are caught before the listener is bound: whoever sees the
     * port accept may send SIGHUP or SIGTERM, and the default action of
     * either would kill the process. They are handled once the loop runs. */
    a.sig_hup = evsignal_new(a.base, SIGHUP, on_signal, &a);
    a.sig_term = evsignal_new(a.base, SIGTERM, on_signal, &a);
    a.sig_int = evsignal_new(a.base, SIGINT, on_signal, &a);
    a.sig_usr1 = evsignal_new(a.base, SIGUSR1, on_signal, &a);
    a.drain_timer = evtimer_new(a.base, drain_check, &a);
    event_add(a.sig_hup, NULL);
    event_add(a.sig_term, NULL);
    event_add(a.sig_int, NULL);
    event_add(a.sig_usr1, NULL);
    if (gateway_init(&a.gw, a.base, cfg, conf_dir, listen) < 0) {
        rc = 1;
        goto out;
    }
    if (pidfile && write_pidfile(pidfile) < 0) {
        log_error("cannot write pid file %s: %s", pidfile, strerror(errno));
        rc = 1;
        goto out;
    }
    if (gateway_start(&a.gw) < 0) {
        rc = 1;
        goto out;
    }
    log_info("infergate %s started (pid %ld)", INFERGATE_VERSION, (long)getpid());
    notify_send("READY=1\nSTATUS=serving configuration generation %llu",
                (unsigned long long)a.gw.snap->generation);

    event_base_dispatch(a.base);
    gw_clock_loop_left();           /* what follows reads the clock */

out:
    if (pidfile)
        unlink(pidfile);
    if (a.gw.http || a.gw.snap)
        gateway_free(&a.gw);
    else if (cfg && a.gw.snap == NULL)
        config_unref(cfg);
    if (a.sig_hup) event_free(a.sig_hup);
    if (a.sig_term) event_free(a.sig_term);
    if (a.sig_int) event_free(a.sig_int);
    if (a.sig_usr1) event_free(a.sig_usr1);
    if (a.drain_timer) event_free(a.drain_timer);
    if (a.base)
        event_base_free(a.base);
    curl_global_cleanup();
    libevent_global_shutdown();
    evmem_release();                  /* after the last libevent free */
    log_close();
    return rc;
}
