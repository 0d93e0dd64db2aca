/*
 * sockread.h -- one readv from a socket straight into an evbuffer's
 * reserved space, without the ioctl(FIONREAD) a socket bufferevent makes
 * before each read. Shared by the client (http.c) and the plain upstream
 * (upstream_h1.c) connections, which read their sockets with their own
 * read event and keep the bufferevent for the output, and the switch that
 * turns that reading on and off (struct sock_reader).
 */
#ifndef INFERGATE_SOCKREAD_H
#define INFERGATE_SOCKREAD_H

#include <errno.h>
#include <sys/types.h>
#include <sys/uio.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/event_struct.h>
#include <event2/util.h>

/* A connection's read side: plain sockets are read by their own event
 * (`ev`, set up by the owner with event_assign(), EV_READ | EV_PERSIST);
 * TLS ones through their OpenSSL bufferevent, passed as `tls_bev`
 * (NULL for a plain connection). */
struct sock_reader {
    struct event ev;
    int          on;                    /* ev added */
};

static inline void sock_reader_on(struct sock_reader *r, struct bufferevent *tls_bev)
{
    if (tls_bev != NULL) {
        bufferevent_enable(tls_bev, EV_READ);
        return;
    }
    if (!r->on && event_add(&r->ev, NULL) == 0)
        r->on = 1;
}

static inline void sock_reader_off(struct sock_reader *r, struct bufferevent *tls_bev)
{
    if (tls_bev != NULL) {
        bufferevent_disable(tls_bev, EV_READ);
        return;
    }
    if (r->on)
        event_del(&r->ev);
    r->on = 0;
}

/* Reads at most `want` bytes from `fd` onto the end of `in` (a
 * bufferevent's input: its frozen end is thawed around the read). Returns
 * the bytes read, 0 at the end of the stream, -1 with errno set on an
 * error (EAGAIN included; ENOMEM when no space could be reserved).
 * Inline: the drivers that compile http.c or upstream_h1.c by name need
 * no other file. */
static inline ssize_t sock_read_into(struct evbuffer *in, evutil_socket_t fd, size_t want)
{
    struct evbuffer_iovec v[2];
    size_t left;
    ssize_t got;
    int n, i;

    /* A socket bufferevent keeps the end of its input frozen; its own
     * read callback thaws it around the read, as this does. */
    evbuffer_unfreeze(in, 0);
    n = evbuffer_reserve_space(in, (ev_ssize_t)want, v, 2);
    if (n <= 0) {
        evbuffer_freeze(in, 0);
        errno = ENOMEM;
        return -1;
    }
    for (i = 0, left = want; i < n; i++) {
        if (v[i].iov_len > left)
            v[i].iov_len = left;
        left -= v[i].iov_len;
    }
    got = readv(fd, (struct iovec *)v, n);
    if (got > 0) {
        if ((size_t)got <= v[0].iov_len) {
            v[0].iov_len = (size_t)got;
            n = 1;
        } else {
            v[1].iov_len = (size_t)got - v[0].iov_len;
        }
        evbuffer_commit_space(in, v, n);
    }
    i = errno;
    evbuffer_freeze(in, 0);
    errno = i;
    return got;
}

#endif
