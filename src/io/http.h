/*
 * http.h -- the client-facing HTTP/1.1 server.
 *
 * A small HTTP/1.1 server on libevent bufferevents: keep-alive, request
 * limits (header bytes, body bytes, idle time) answered with OpenAI-shaped
 * errors, Content-Length and chunked request bodies, `Expect: 100-continue`,
 * and replies that are either whole (Content-Length) or streamed (chunked)
 * with backpressure.
 *
 * Ownership: the server hands each complete request to the handler, which
 * then owns it until it calls exactly one finishing function:
 * http_reply(), http_reply_error() or http_stream_end(). If the client goes
 * away first, the close callback (if set) runs, the request is "detached"
 * and every later write on it is a no-op; the finishing call frees it.
 *
 * Limits: a request's head and body must arrive within client_timeout of
 * its first byte (408, whatever the pace), a new connection must bring one
 * within client_timeout, and an idle keep-alive connection is closed after
 * it. Heads over max_header_bytes or with more than 100 fields get 431,
 * bodies over max_body_bytes 413; request lines and header fields must be
 * well-formed UTF-8 without control characters (400). At most
 * min(10000, (RLIMIT_NOFILE - 32) / 2) connections are open at once; more
 * are closed at accept and logged (at most once per 10 s).
 */
#ifndef INFERGATE_HTTP_H
#define INFERGATE_HTTP_H

#include <stddef.h>
#include <stdint.h>

struct event_base;
struct http_server;
struct http_req;

typedef void (*http_handler)(struct http_req *req, void *arg);
typedef void (*http_req_cb)(struct http_req *req, void *arg);

struct http_limits {
    size_t  max_header_bytes;
    size_t  max_body_bytes;
    int64_t client_timeout_ms;
};

struct http_server *http_server_new(struct event_base *base, http_handler h,
                                    void *arg);

/* Error bodies in another API's shape for some paths (Anthropic's under
 * /v1/messages): returns a malloc'd JSON body, or NULL for the default
 * OpenAI shape. Used by http_reply_error(), including the server's own
 * limits (413, 431, 408, 400). Set once, before serving. */
typedef char *(*http_error_body_fn)(const char *path, int status, const char *type,
                                    const char *code, const char *msg);
void http_set_error_body(http_error_body_fn fn);
/* Binds "ADDR:PORT" or "[V6]:PORT". Returns -1 with a message in err. */
int    http_server_listen(struct http_server *s, const char *addr,
                          char *err, size_t errlen);
/* The same, serving TLS when tls is 1 (each connection's SSL comes from
 * tls_current_new_ssl(): set a context before the first accept). */
int    http_server_listen_tls(struct http_server *s, const char *addr, int tls,
                              char *err, size_t errlen);
/* The port listener i is bound to (-1 when there is none). */
int    http_server_listener_port(const struct http_server *s, size_t i);
/* Binds the addresses `first` listens on (ports as bound), for a worker
 * sharing them through SO_REUSEPORT (both set it before listening). */
int    http_server_listen_like(struct http_server *s, const struct http_server *first,
                               char *err, size_t errlen);
void   http_server_set_reuseport(struct http_server *s, int on);
/* Default: min(10000, (RLIMIT_NOFILE - 32) / 2); workers share that. */
void   http_server_set_max_connections(struct http_server *s, size_t n);
void   http_server_set_limits(struct http_server *s, const struct http_limits *l);
/* Serves an already connected socket as if it had been accepted (tests,
 * fuzzing, socket activation). Takes fd in any case; returns -1 when it
 * was refused (connection cap, memory). */
int    http_server_adopt(struct http_server *s, int fd);
/* Stops accepting; idle keep-alive connections are closed, busy ones
 * are closed after their current response. */
void   http_server_stop(struct http_server *s);
/* Connections open (busy or idle) and requests in the handler's hands.
 * These four may be read from any thread. */
size_t http_server_connections(const struct http_server *s);
size_t http_server_requests(const struct http_server *s);
size_t http_server_max_connections(const struct http_server *s);
/* Connections closed at accept because the cap was reached, since start. */
uint64_t http_server_refused(const struct http_server *s);
void   http_server_free(struct http_server *s);

/* Request, valid until the finishing call. Header lookup is case-insensitive. */
const char *http_req_method(const struct http_req *r);
const char *http_req_path(const struct http_req *r);   /* without query */
const char *http_req_query(const struct http_req *r);  /* NULL if none */
const char *http_req_header(const struct http_req *r, const char *name);
/* The fields the gateway itself reads, indexed while the head is parsed
 * (as nginx's headers_in): http_req_known(r, HTTP_H_X) answers what
 * http_req_header(r, "X") answers (the first such field's value, or NULL)
 * without a search. */
enum http_known {
    HTTP_H_HOST, HTTP_H_CONTENT_LENGTH, HTTP_H_TRANSFER_ENCODING,
    HTTP_H_CONNECTION, HTTP_H_EXPECT, HTTP_H_CONTENT_TYPE, HTTP_H_ACCEPT,
    HTTP_H_AUTHORIZATION, HTTP_H_X_API_KEY, HTTP_H_X_REQUEST_ID,
    HTTP_H_CACHE_CONTROL, HTTP_H_ANTHROPIC_VERSION, HTTP_H_ANTHROPIC_BETA,
    HTTP_H_NKNOWN
};
const char *http_req_known(const struct http_req *r, enum http_known h);
/* Its lower-case name ("content-type"). */
const char *http_known_name(enum http_known h);
size_t      http_req_nheaders(const struct http_req *r);
void        http_req_header_at(const struct http_req *r, size_t i,
                               const char **name, const char **value);
const char *http_req_body(const struct http_req *r, size_t *len); /* NUL-terminated */
const char *http_req_peer(const struct http_req *r);
int         http_req_detached(const struct http_req *r);
/* 1 when the request came in on a listener bound to a loopback address
 * (127.0.0.0/8, ::1; an adopted AF_UNIX socket counts too). */
int         http_req_local_loopback(const struct http_req *r);
/* 1 when the request came over TLS. */
int         http_req_tls(const struct http_req *r);
/* 1 with the subject of the client certificate verified on the request's
 * TLS connection (mutual TLS, server.tls.client_ca) in buf; else 0. */
int         http_req_tls_subject(const struct http_req *r, char *buf, size_t len);

void http_req_on_close(struct http_req *r, http_req_cb cb, void *arg);

/* Response. Headers are added before http_reply or http_stream_start. */
void   http_resp_header(struct http_req *r, const char *name, const char *value);
/* The same for a field the caller vouches for: the name (nlen bytes) has no
 * CR, LF or ':', the value (vlen bytes) no CR or LF (the gateway's own
 * fields: request ids checked or made, numbers, constants). */
void   http_resp_header_n(struct http_req *r, const char *name, size_t nlen,
                          const char *value, size_t vlen);
void   http_reply(struct http_req *r, int status, const char *ctype,
                  const char *body, size_t len);
/* {"error": {"message", "type", "code"}} with the given status. */
void   http_reply_error(struct http_req *r, int status, const char *type,
                        const char *code, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

void   http_stream_start(struct http_req *r, int status, const char *ctype);
/* Queues data; returns bytes now waiting to go to the client. */
size_t http_stream_write(struct http_req *r, const char *data, size_t len);
/* The stream's end follows before anything else can arrive: what is
 * written until http_stream_end() is queued instead of written at once,
 * so that it leaves with the end's chunk in one write. */
void   http_stream_last(struct http_req *r);
void   http_stream_end(struct http_req *r);
/* Called once when all queued output has been written. */
void   http_req_on_drain(struct http_req *r, http_req_cb cb, void *arg);
size_t http_req_pending_output(const struct http_req *r);
/* Closes the connection at once, whatever is still queued, and frees r
 * (a finishing call: the close callback does not run). */
void   http_req_abort(struct http_req *r);
/* Caps the kernel's send buffer of r's connection (a long stream to a
 * client that may stop reading). */
void   http_req_set_sndbuf(struct http_req *r, int bytes);

const char *http_status_text(int status);

#endif
