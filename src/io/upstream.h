/*
 * upstream.h -- outgoing HTTP transfers: libcurl's multi interface driven
 * by the libevent loop.
 *
 * One `struct upstream` per event loop: http:// and https:// go through
 * the own HTTP/1.1 client (upstream_h1.c, a keep-alive pool), host names
 * resolved by the loop's resolver (resolve.h, evdns: nothing blocks the
 * loop) once upstream_set_resolver() set it up. libcurl's multi handle
 * takes what that client does not do: a proxy set in the environment,
 * SMTP (upstream_start_easy), names before a resolver is set up.
 *
 * Callbacks: on_headers and on_data run inside curl callbacks and must not
 * call upstream_cancel() on their own transfer (return UPSTREAM_ABORT
 * instead); on_done runs outside curl and may do anything. A transfer is
 * freed right after on_done returns, or by upstream_cancel() (then on_done
 * is not called).
 */
#ifndef INFERGATE_UPSTREAM_H
#define INFERGATE_UPSTREAM_H

#include <stddef.h>
#include <stdint.h>

struct event_base;
struct upstream;
struct upstream_xfer;

enum upstream_verdict { UPSTREAM_CONTINUE = 0, UPSTREAM_PAUSE, UPSTREAM_ABORT };

/* How a transfer ended, classified for retry decisions. */
enum upstream_result {
    UPSTREAM_OK = 0,          /* a complete HTTP response (any status) */
    UPSTREAM_ERR_CONNECT,     /* refused, unreachable, DNS */
    UPSTREAM_ERR_TIMEOUT,     /* curl's own timeouts */
    UPSTREAM_ERR_PROTOCOL,    /* garbage, reset, truncated body */
    UPSTREAM_ERR_ABORTED,     /* a callback said UPSTREAM_ABORT */
};

struct upstream_cbs {
    /* The final response head (1xx skipped); status is the HTTP code. */
    enum upstream_verdict (*on_headers)(void *arg, struct upstream_xfer *x,
                                        int status);
    enum upstream_verdict (*on_data)(void *arg, const char *data, size_t len);
    void (*on_done)(void *arg, enum upstream_result res, const char *errmsg);
};

struct upstream_header {
    const char *name;
    const char *value;
};

struct upstream_req {
    const char *url;
    const char *method;           /* "GET" or "POST" */
    const struct upstream_header *headers;  /* copied */
    size_t      nheaders;
    const char *body;             /* not copied: keep alive until done */
    size_t      body_len;
    int64_t     connect_timeout_ms;
    int64_t     total_timeout_ms; /* 0 = none */
    /* https:// only (hosts.json `tls`): certificates are verified against
     * the system CA store unless ca_file names another; insecure = 1 skips
     * the check; server_name replaces the URL's host for SNI, verification
     * and Host, while the connection still goes to the URL's address. */
    const char *ca_file;
    int         insecure;
    const char *server_name;
    /* The method and every header name and value hold no CR or LF: the
     * caller took them from where they were checked as they came in (a
     * parsed request, a checked configuration) or wrote them itself. The
     * plain client then measures them instead of searching each. */
    int         fields_checked;
    /* The answer is expected to stream (an SSE request): a TLS connection
     * then frees its record buffers whenever it waits, as an idle stream
     * may wait long (see upstream_h1.c, "record buffers"). 0: kept for
     * the transfer; an answer that turns out not to be length-framed
     * switches to freeing them at its head. */
    int         streaming;
    /* With fields_checked, optionally: strlen() of header i's name at
     * [2i] and of its value at [2i + 1] where the caller knows them, 0
     * where not (measured then). NULL: all measured. */
    const size_t *header_lens;
};

struct resolve_conf;

struct upstream *upstream_new(struct event_base *base);
/* Sets up (first call) or reconfigures the resolver of u's loop; call it
 * on u's loop thread, never on the request path. -1 with err: the
 * previous settings stay (none: host names go through curl). conf NULL:
 * host names go through curl (its threaded getaddrinfo), a resolver set
 * up before stays for the lookups it still has. */
int upstream_set_resolver(struct upstream *u, const struct resolve_conf *conf,
                          char *err, size_t errlen);
void upstream_free(struct upstream *u);     /* cancels what is left */
size_t upstream_active(const struct upstream *u);

struct upstream_xfer *upstream_start(struct upstream *u,
                                     const struct upstream_req *req,
                                     const struct upstream_cbs *cbs,
                                     void *arg);
/* Starts a transfer on an easy handle the caller set up for another
 * protocol (alerts.c: SMTP). Takes ownership of `easy`; upstream.c sets
 * only PRIVATE, NOSIGNAL and ERRORBUFFER. on_headers/on_data are not used;
 * on_done reports UPSTREAM_OK or the failure. NULL when it cannot start
 * (then `easy` is freed). */
struct upstream_xfer *upstream_start_easy(struct upstream *u, void *easy,
                                          const struct upstream_cbs *cbs,
                                          void *arg);
void upstream_pause(struct upstream_xfer *x);
void upstream_resume(struct upstream_xfer *x);
void upstream_cancel(struct upstream_xfer *x);

/* Inside on_data: 1 when the body's end came with these bytes, so that
 * on_done follows before the next read (the caller may queue its last
 * write to go with what it writes at the end); else 0. */
int upstream_ending(const struct upstream_xfer *x);

/* Response headers of the final head, valid until the transfer is freed. */
const char *upstream_resp_header(const struct upstream_xfer *x, const char *name);
size_t upstream_resp_nheaders(const struct upstream_xfer *x);
void upstream_resp_header_at(const struct upstream_xfer *x, size_t i,
                             const char **name, const char **value);
/* The fields in order, each in one step (_at walks from the first): `it`
 * starts zeroed; returns 0 after the last. *nlen: strlen(*name). */
struct upstream_rh_iter { size_t at, i; };
int upstream_resp_header_next(const struct upstream_xfer *x, struct upstream_rh_iter *it,
                              const char **name, size_t *nlen, const char **value);
const char *upstream_result_name(enum upstream_result r);

#endif
