/*
 * notify.c -- the sd_notify(3) protocol in forty lines, so that the
 * systemd unit can be Type=notify without linking libsystemd.
 *
 * The protocol: one datagram of "VAR=value" lines sent to the AF_UNIX
 * socket named by $NOTIFY_SOCKET. "@name" means the Linux abstract
 * namespace (the '@' becomes a leading NUL byte). A fresh nonblocking
 * SOCK_DGRAM socket per message: messages are rare (start, reload, stop),
 * and holding no descriptor means nothing leaks into forked children.
 */
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "notify.h"

#define NOTIFY_MSG_MAX 4096

/* Fills *sa from $NOTIFY_SOCKET; returns the address length, or 0 when
 * there is nowhere to send (unset, empty, unsupported, too long). */
static socklen_t notify_addr(struct sockaddr_un *sa)
{
    const char *e = getenv("NOTIFY_SOCKET");
    size_t n;

    if (e == NULL || e[0] == '\0')
        return 0;
    if (e[0] != '/' && e[0] != '@')
        return 0;                       /* vsock etc.: not supported */
    n = strlen(e);
    if (n >= sizeof(sa->sun_path))
        return 0;
    memset(sa, 0, sizeof(*sa));
    sa->sun_family = AF_UNIX;
    memcpy(sa->sun_path, e, n);
    if (e[0] == '@') {
        sa->sun_path[0] = '\0';         /* abstract: length counts exactly */
        return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n);
    }
    return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
}

void notify_send(const char *fmt, ...)
{
    struct sockaddr_un sa;
    socklen_t salen;
    char msg[NOTIFY_MSG_MAX];
    struct timespec ts;
    va_list ap;
    int n, fd, saved = errno;

    if ((salen = notify_addr(&sa)) == 0)
        return;
    va_start(ap, fmt);
    n = vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof(msg))
        goto out;
    if (strstr(msg, "RELOADING=1") && strstr(msg, "MONOTONIC_USEC=") == NULL
        && clock_gettime(CLOCK_MONOTONIC, &ts) == 0) {
        int m = snprintf(msg + n, sizeof(msg) - (size_t)n, "%sMONOTONIC_USEC=%llu",
                         (n > 0 && msg[n - 1] != '\n') ? "\n" : "",
                         (unsigned long long)ts.tv_sec * 1000000ULL
                         + (unsigned long long)ts.tv_nsec / 1000ULL);
        if (m < 0 || (size_t)m >= sizeof(msg) - (size_t)n)
            goto out;
        n += m;
    }
    fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        goto out;
    /* a full receive queue gives EAGAIN: the message is dropped, the
     * event loop is never held up by the service manager */
    (void)sendto(fd, msg, (size_t)n, MSG_NOSIGNAL, (struct sockaddr *)&sa, salen);
    close(fd);
out:
    errno = saved;
}
