/*
 * sockread.h -- one readv from a socket straight into an evbuffer's
 * reserved space, without the ioctl(FIONREAD) a socket bufferevent makes
 * before each read. Shared by the client (http.c) and the plain upstream
 * (upstream_h1.c) connections, which read their sockets with their own
 * read event and keep the bufferevent for the output, and the switch that
 * turns that reading on and off (struct sock_reader); and the one writev
 * both make of a reply or request when nothing is queued before it.
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

/* Writes the `nv` pieces in `v` to `fd` with one writev (the caller has
 * nothing queued before them); what the socket does not take, a failed
 * write included (the write path meets the error again), goes onto the end
 * of `out`: copied, or by reference when `by_ref` (the memory outlives the
 * output). 0 when all went, 1 when some is queued (the caller enables its
 * write event), -1 when it could not be queued. */
static inline int sock_write_direct(evutil_socket_t fd, const struct iovec *v, int nv,
                                    struct evbuffer *out, int by_ref)
{
    ssize_t w;
    int i, queued = 0;

    do
        w = writev(fd, v, nv);
    while (w < 0 && errno == EINTR);
    if (w < 0)
        w = 0;
    for (i = 0; i < nv; i++) {
        const char *p;
        size_t n;

        if ((size_t)w >= v[i].iov_len) {
            w -= (ssize_t)v[i].iov_len;
            continue;
        }
        p = (const char *)v[i].iov_base + w;
        n = v[i].iov_len - (size_t)w;
        w = 0;
        if ((by_ref ? evbuffer_add_reference(out, p, n, NULL, NULL)
                    : evbuffer_add(out, p, n)) < 0)
            return -1;
        queued = 1;
    }
    return queued;
}

#endif
