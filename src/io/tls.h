/*
 * tls.h -- TLS on the client-facing listeners (OpenSSL).
 *
 * A `struct tls_ctx` is an SSL_CTX built from server.tls and checked once:
 * files readable, the key fits the certificate, the certificate not expired,
 * ciphers known. config_load() builds it, so `infergate -t` and a reload
 * refuse the same problems ("FILE: message"), off the event loop, and the
 * old certificate keeps serving when a reload is refused.
 *
 * Listeners take each new connection's SSL from the *current* context,
 * which an installed reload replaces (tls_current_set): new handshakes use
 * the new certificate, open connections keep their SSL and with it a
 * reference to the context they started with. Taking and swapping happen
 * under one mutex, so worker threads may accept while the control thread
 * installs. ALPN answers "http/1.1"; with client_ca a client certificate
 * signed by it is required.
 *
 * Handshake failures are counted by reason (tls_fail_*), for /metrics.
 * Nothing here ever prints key material: errors name files and reasons.
 */
#ifndef INFERGATE_TLS_H
#define INFERGATE_TLS_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"

/* What /status and /metrics show about a certificate. */
struct tls_cert_info {
    char    subject[256];    /* RFC 2253 */
    char    issuer[256];
    char    serial[80];      /* hex */
    int64_t not_before;      /* unix seconds */
    int64_t not_after;
};

/* Builds the context for t (t->cert set). NULL with "FILE: message" or
 * "server.tls.FIELD: message" in err. `now` is unix seconds (expiry). */
struct tls_ctx *tls_ctx_new(const struct cfg_tls *t, int64_t now, char *err, size_t errlen);
void tls_ctx_free(struct tls_ctx *x);
const struct tls_cert_info *tls_ctx_cert(const struct tls_ctx *x);

/* The context new connections use; x may be NULL (no TLS). Thread-safe. */
void  tls_current_set(const struct tls_ctx *x);
/* A new server-side SSL (an `SSL *`) from the current context, or NULL. */
void *tls_current_new_ssl(void);

/* Why a handshake failed. */
enum tls_fail {
    TLS_FAIL_TIMEOUT = 0,    /* not done within server.client_timeout */
    TLS_FAIL_PLAIN_HTTP,     /* plain HTTP sent to a TLS port */
    TLS_FAIL_NO_CLIENT_CERT, /* client_ca set, no certificate sent */
    TLS_FAIL_BAD_CLIENT_CERT,/* a certificate that client_ca does not sign */
    TLS_FAIL_PROTOCOL,       /* version or cipher mismatch, garbage */
    TLS_FAIL_PEER_ALERT,     /* the client refused us (e.g. unknown CA) */
    TLS_FAIL_CLOSED,         /* the client hung up mid-handshake */
    TLS_FAIL_OTHER,
    TLS_FAILS
};
/* The reason for an OpenSSL error code (ERR_get_error()); 0 = closed. */
enum tls_fail tls_fail_classify(unsigned long err);
void          tls_fail_count(enum tls_fail f);
uint64_t      tls_fail_total(enum tls_fail f);
const char   *tls_fail_name(enum tls_fail f);

/* The subject (RFC 2253, as /status shows certificates) of the client
 * certificate that the handshake of ssl (an `SSL *`) verified against
 * client_ca. 1 when there is one, else 0 (buf ""). */
int tls_peer_subject(void *ssl, char *buf, size_t len);

/* Formats unix seconds as "2026-12-04T14:00:00Z". */
void tls_time_str(int64_t t, char *buf, size_t len);

#endif
