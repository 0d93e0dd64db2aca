/*
 * notify.h -- tell the service manager about our state (sd_notify(3)
 * protocol, without libsystemd).
 *
 *   notify_send("READY=1\nSTATUS=serving generation %llu", gen);
 *   notify_send("RELOADING=1");     (MONOTONIC_USEC= is added for you)
 *   notify_send("STOPPING=1");
 *
 * The message goes as one datagram to the AF_UNIX socket named by
 * $NOTIFY_SOCKET (a path, or "@name" for the abstract namespace). When the
 * variable is unset or empty -- not started by systemd with Type=notify,
 * or in a container -- nothing happens. The send never blocks and never
 * fails the caller: errors are ignored, as the manager is only told.
 */
#ifndef INFERGATE_NOTIFY_H
#define INFERGATE_NOTIFY_H

/* printf-style message of NEWLINE-separated VAR=value assignments. A
 * message with "RELOADING=1" and no "MONOTONIC_USEC=" gets
 * "MONOTONIC_USEC=<CLOCK_MONOTONIC in microseconds>" appended, which
 * systemd wants with RELOADING=1 (Type=notify-reload, systemd >= 253). */
void notify_send(const char *fmt, ...)
    __attribute__((format(printf, 1, 2)));

#endif
