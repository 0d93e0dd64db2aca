/*
 * fwd.c: the floor of a one-hop proxy, for the bench's latency cells.
 *
 * A single-threaded epoll TCP forwarder that does nothing but move bytes:
 * each accepted connection gets its own connection to one upstream, and
 * whatever one side sends is written to the other (TCP_NODELAY on both).
 * No HTTP parsing, no pooling, no timers. What it adds over talking to the
 * upstream directly is the cost of the extra hop itself on this machine
 * (two more wake-ups, four more syscalls per exchange), which no proxy can
 * go below. scripts/bench/ab.py runs it beside HAProxy and infergate when
 * AB_FLOOR=1.
 *
 *   fwd LISTEN_PORT UPSTREAM_HOST UPSTREAM_PORT     (prints "ready" when listening)
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define FWD_MAXFD 65536
#define FWD_BUF   65536

/* One direction's peer: peer[fd] is the fd its bytes go to (-1: none). */
static int fwd_peer[FWD_MAXFD];

static void fwd_tune(int fd)
{
    int one = 1;

    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

static void fwd_close(int ep, int fd)
{
    int p = fwd_peer[fd];

    epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
    close(fd);
    fwd_peer[fd] = -1;
    if (p >= 0) {
        epoll_ctl(ep, EPOLL_CTL_DEL, p, NULL);
        close(p);
        fwd_peer[p] = -1;
    }
}

/* Moves what fd has to its peer; blocking-style writes are fine for the
 * bench's small request/response exchanges (a full socket is retried). */
static void fwd_relay(int ep, int fd)
{
    static char buf[FWD_BUF];
    ssize_t n = read(fd, buf, sizeof(buf));

    if (n <= 0) {
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            return;
        fwd_close(ep, fd);
        return;
    }
    for (ssize_t off = 0; off < n;) {
        ssize_t w = write(fwd_peer[fd], buf + off, (size_t)(n - off));
        if (w < 0 && (errno == EAGAIN || errno == EINTR))
            continue;
        if (w <= 0) {
            fwd_close(ep, fd);
            return;
        }
        off += w;
    }
}

int main(int argc, char **argv)
{
    struct sockaddr_in la = {0}, ua = {0};
    struct epoll_event ev, evs[256];
    int one = 1, lfd, ep;

    if (argc != 4) {
        fprintf(stderr, "usage: fwd LISTEN_PORT UPSTREAM_HOST UPSTREAM_PORT\n");
        return 2;
    }
    memset(fwd_peer, -1, sizeof(fwd_peer));
    la.sin_family = AF_INET;
    la.sin_port = htons((unsigned short)atoi(argv[1]));
    la.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ua.sin_family = AF_INET;
    ua.sin_port = htons((unsigned short)atoi(argv[3]));
    if (inet_pton(AF_INET, argv[2], &ua.sin_addr) != 1) {
        fprintf(stderr, "fwd: bad upstream address %s\n", argv[2]);
        return 2;
    }
    lfd = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(lfd, (struct sockaddr *)&la, sizeof(la)) < 0 || listen(lfd, 1024) < 0) {
        perror("fwd: listen");
        return 1;
    }
    ep = epoll_create1(0);
    ev.events = EPOLLIN;
    ev.data.fd = lfd;
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    printf("ready\n");
    fflush(stdout);
    for (;;) {
        int n = epoll_wait(ep, evs, 256, -1);

        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;

            if (fd != lfd) {
                if (fwd_peer[fd] >= 0)
                    fwd_relay(ep, fd);
                continue;
            }
            int c = accept(lfd, NULL, NULL), u;
            if (c < 0 || c >= FWD_MAXFD)
                continue;
            u = socket(AF_INET, SOCK_STREAM, 0);
            if (u < 0 || u >= FWD_MAXFD || connect(u, (struct sockaddr *)&ua, sizeof(ua)) < 0) {
                close(c);
                if (u >= 0)
                    close(u);
                continue;
            }
            fwd_tune(c);
            fwd_tune(u);
            fwd_peer[c] = u;
            fwd_peer[u] = c;
            ev.events = EPOLLIN;
            ev.data.fd = c;
            epoll_ctl(ep, EPOLL_CTL_ADD, c, &ev);
            ev.data.fd = u;
            epoll_ctl(ep, EPOLL_CTL_ADD, u, &ev);
        }
    }
}
