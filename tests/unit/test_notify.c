/*
 * test_notify.c -- notify_send() (src/io/notify.c) against a real AF_UNIX
 * datagram socket standing in for systemd: a path socket, an abstract
 * ('@') socket, the unset variable, MONOTONIC_USEC on RELOADING=1, and a
 * receiver that never reads (the sender must not block).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <cmocka.h>

#include "notify.h"

struct listener {
    int  fd;
    char env[108];              /* the $NOTIFY_SOCKET value */
    char dir[64];               /* temp dir of a path socket, or "" */
};

static void listen_path(struct listener *l)
{
    struct sockaddr_un sa;

    strcpy(l->dir, "/tmp/ig-notify-XXXXXX");
    assert_non_null(mkdtemp(l->dir));
    snprintf(l->env, sizeof(l->env), "%s/notify.sock", l->dir);
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    strcpy(sa.sun_path, l->env);
    l->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    assert_true(l->fd >= 0);
    assert_int_equal(bind(l->fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
}

static void listen_abstract(struct listener *l)
{
    struct sockaddr_un sa;
    size_t n;

    l->dir[0] = '\0';
    snprintf(l->env, sizeof(l->env), "@infergate-test-notify-%ld-%ld",
             (long)getpid(), (long)time(NULL));
    n = strlen(l->env);
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    memcpy(sa.sun_path, l->env, n);
    sa.sun_path[0] = '\0';
    l->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    assert_true(l->fd >= 0);
    assert_int_equal(bind(l->fd, (struct sockaddr *)&sa,
                          (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n)), 0);
}

static void listener_close(struct listener *l)
{
    char path[160];

    close(l->fd);
    if (l->dir[0]) {
        snprintf(path, sizeof(path), "%s/notify.sock", l->dir);
        unlink(path);
        rmdir(l->dir);
    }
    unsetenv("NOTIFY_SOCKET");
}

/* One datagram into buf (NUL-terminated); -1 when none is waiting. */
static ssize_t recv_one(struct listener *l, char *buf, size_t size)
{
    ssize_t n = recv(l->fd, buf, size - 1, MSG_DONTWAIT);

    if (n >= 0)
        buf[n] = '\0';
    return n;
}

static void test_unset_is_noop(void **st)
{
    struct listener l;
    char buf[256];

    (void)st;
    listen_path(&l);
    unsetenv("NOTIFY_SOCKET");
    errno = 1234;
    notify_send("READY=1");
    assert_int_equal(errno, 1234);          /* errno is left alone */
    setenv("NOTIFY_SOCKET", "", 1);
    notify_send("READY=1");
    setenv("NOTIFY_SOCKET", "relative/not-supported", 1);
    notify_send("READY=1");
    assert_int_equal(recv_one(&l, buf, sizeof(buf)), -1);
    assert_int_equal(errno, EAGAIN);
    listener_close(&l);
}

static void test_path_socket(void **st)
{
    struct listener l;
    char buf[256];

    (void)st;
    listen_path(&l);
    setenv("NOTIFY_SOCKET", l.env, 1);
    notify_send("READY=1");
    assert_int_equal(recv_one(&l, buf, sizeof(buf)), 7);
    assert_string_equal(buf, "READY=1");
    notify_send("READY=1\nSTATUS=serving generation %d, %s", 3, "3 hosts");
    assert_true(recv_one(&l, buf, sizeof(buf)) > 0);
    assert_string_equal(buf, "READY=1\nSTATUS=serving generation 3, 3 hosts");
    notify_send("STOPPING=1");
    assert_true(recv_one(&l, buf, sizeof(buf)) > 0);
    assert_string_equal(buf, "STOPPING=1");
    assert_int_equal(recv_one(&l, buf, sizeof(buf)), -1);  /* exactly one each */
    listener_close(&l);
}

static void test_abstract_socket(void **st)
{
    struct listener l;
    char buf[256];

    (void)st;
    listen_abstract(&l);
    setenv("NOTIFY_SOCKET", l.env, 1);
    notify_send("STATUS=%s", "draining 2 request(s)");
    assert_true(recv_one(&l, buf, sizeof(buf)) > 0);
    assert_string_equal(buf, "STATUS=draining 2 request(s)");
    listener_close(&l);
}

static unsigned long long mono_usec(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (unsigned long long)ts.tv_sec * 1000000ULL + (unsigned long long)ts.tv_nsec / 1000ULL;
}

static void test_reloading_gets_monotonic_usec(void **st)
{
    struct listener l;
    char buf[256], *p, *end;
    unsigned long long before, after, usec;

    (void)st;
    listen_path(&l);
    setenv("NOTIFY_SOCKET", l.env, 1);
    before = mono_usec();
    notify_send("RELOADING=1");
    after = mono_usec();
    assert_true(recv_one(&l, buf, sizeof(buf)) > 0);
    assert_true(strncmp(buf, "RELOADING=1\nMONOTONIC_USEC=", 27) == 0);
    p = buf + 27;
    usec = strtoull(p, &end, 10);
    assert_true(end > p);
    assert_int_equal(*end, '\0');
    assert_true(usec >= before && usec <= after);

    /* a message that brings its own MONOTONIC_USEC is sent as it is */
    notify_send("RELOADING=1\nMONOTONIC_USEC=%d\nSTATUS=reloading", 42);
    assert_true(recv_one(&l, buf, sizeof(buf)) > 0);
    assert_string_equal(buf, "RELOADING=1\nMONOTONIC_USEC=42\nSTATUS=reloading");

    /* a trailing newline is not doubled */
    notify_send("RELOADING=1\n");
    assert_true(recv_one(&l, buf, sizeof(buf)) > 0);
    assert_true(strncmp(buf, "RELOADING=1\nMONOTONIC_USEC=", 27) == 0);

    /* READY=1 alone gets nothing added */
    notify_send("READY=1");
    assert_true(recv_one(&l, buf, sizeof(buf)) > 0);
    assert_string_equal(buf, "READY=1");
    listener_close(&l);
}

/* The receiver never reads: its queue fills (net.unix.max_dgram_qlen,
 * usually 10-512) and later sends must be dropped, not block. */
static void test_full_queue_does_not_block(void **st)
{
    struct listener l;
    char buf[256];
    unsigned long long t0, elapsed;
    int i, got = 0;

    (void)st;
    listen_path(&l);
    setenv("NOTIFY_SOCKET", l.env, 1);
    t0 = mono_usec();
    for (i = 0; i < 5000; i++)
        notify_send("STATUS=message %d", i);
    elapsed = mono_usec() - t0;
    assert_true(elapsed < 5000000ULL);     /* would hang forever if blocking */
    while (recv_one(&l, buf, sizeof(buf)) > 0)
        got++;
    assert_true(got > 0 && got < 5000);
    listener_close(&l);
}

static void test_missing_socket_is_ignored(void **st)
{
    (void)st;
    setenv("NOTIFY_SOCKET", "/nonexistent-dir/notify.sock", 1);
    errno = 77;
    notify_send("READY=1");
    assert_int_equal(errno, 77);
    setenv("NOTIFY_SOCKET", "@infergate-test-nobody-listens-here", 1);
    notify_send("READY=1");
    unsetenv("NOTIFY_SOCKET");
}

static void test_too_long_path_is_ignored(void **st)
{
    char path[300];

    (void)st;
    memset(path, 'a', sizeof(path) - 1);
    path[0] = '/';
    path[sizeof(path) - 1] = '\0';
    setenv("NOTIFY_SOCKET", path, 1);
    notify_send("READY=1");               /* must not overflow sun_path */
    unsetenv("NOTIFY_SOCKET");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_unset_is_noop),
        cmocka_unit_test(test_path_socket),
        cmocka_unit_test(test_abstract_socket),
        cmocka_unit_test(test_reloading_gets_monotonic_usec),
        cmocka_unit_test(test_full_queue_does_not_block),
        cmocka_unit_test(test_missing_socket_is_ignored),
        cmocka_unit_test(test_too_long_path_is_ignored),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
