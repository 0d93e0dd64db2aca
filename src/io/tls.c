/*
 * tls.c -- TLS on the client-facing listeners (see tls.h).
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "tls.h"

struct tls_ctx {
    SSL_CTX             *ssl;
    struct tls_cert_info cert;
};

static pthread_mutex_t cur_mu = PTHREAD_MUTEX_INITIALIZER;
static SSL_CTX        *cur_ctx;               /* one reference held */
static uint64_t        fails[TLS_FAILS];      /* atomic adds */

static const char *const fail_names[TLS_FAILS] = {
    "timeout", "plain_http", "no_client_cert", "bad_client_cert",
    "protocol", "peer_alert", "closed", "other"
};

/* --- certificate details --------------------------------------------- */

void tls_time_str(int64_t t, char *buf, size_t len)
{
    time_t tt = (time_t)t;
    struct tm tm;

    if (gmtime_r(&tt, &tm) == NULL || strftime(buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
        snprintf(buf, len, "%lld", (long long)t);
}

static int64_t asn1_unix(const ASN1_TIME *t)
{
    struct tm tm;

    memset(&tm, 0, sizeof(tm));
    if (t == NULL || ASN1_TIME_to_tm(t, &tm) != 1)
        return 0;
    return (int64_t)timegm(&tm);
}

static void name_str(const X509_NAME *n, char *buf, size_t len)
{
    BIO *b = BIO_new(BIO_s_mem());
    int k = 0;

    buf[0] = '\0';
    if (b == NULL)
        return;
    if (X509_NAME_print_ex(b, n, 0, XN_FLAG_RFC2253 & ~ASN1_STRFLGS_ESC_MSB) >= 0)
        k = BIO_read(b, buf, (int)len - 1);
    buf[k > 0 ? k : 0] = '\0';
    BIO_free(b);
}

int tls_peer_subject(void *ssl, char *buf, size_t len)
{
    X509 *x = ssl ? SSL_get0_peer_certificate(ssl) : NULL;

    buf[0] = '\0';
    if (x == NULL || SSL_get_verify_result(ssl) != X509_V_OK)
        return 0;
    name_str(X509_get_subject_name(x), buf, len);
    return buf[0] != '\0';
}

static void cert_info(X509 *x, struct tls_cert_info *ci)
{
    BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(x), NULL);
    char *hex = bn ? BN_bn2hex(bn) : NULL;

    name_str(X509_get_subject_name(x), ci->subject, sizeof(ci->subject));
    name_str(X509_get_issuer_name(x), ci->issuer, sizeof(ci->issuer));
    snprintf(ci->serial, sizeof(ci->serial), "%s", hex ? hex : "");
    ci->not_before = asn1_unix(X509_get0_notBefore(x));
    ci->not_after = asn1_unix(X509_get0_notAfter(x));
    OPENSSL_free(hex);
    BN_free(bn);
}

/* --- building a context ---------------------------------------------- */

/* The last OpenSSL error's reason, or `dflt`. Clears the queue. */
static const char *ssl_reason(const char *dflt)
{
    unsigned long e = 0, x;
    const char *r;

    while ((x = ERR_get_error()) != 0)
        e = x;
    r = e ? ERR_reason_error_string(e) : NULL;
    return r ? r : dflt;
}

/* An encrypted key must never make OpenSSL prompt on the terminal. */
static int no_password(char *buf, int size, int rw, void *u)
{
    (void)buf;
    (void)size;
    (void)rw;
    (void)u;
    return 0;
}

static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned int inlen, void *arg)
{
    static const unsigned char h11[] = "\x08http/1.1";
    unsigned char *o = NULL;

    (void)ssl;
    (void)arg;
    if (SSL_select_next_proto(&o, outlen, h11, sizeof(h11) - 1, in, inlen)
        != OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_NOACK;        /* go on without ALPN */
    *out = o;
    return SSL_TLSEXT_ERR_OK;
}

/* 0 when `path` can be opened for reading, else -1 with "path: why". */
static int readable(const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");

    if (f == NULL) {
        snprintf(err, errlen, "%s: cannot read: %s", path, strerror(errno));
        return -1;
    }
    fclose(f);
    return 0;
}

/* The first certificate of a PEM file (the leaf), or NULL with err set. */
static X509 *leaf_of(const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    X509 *x;

    if (f == NULL) {
        snprintf(err, errlen, "%s: cannot read: %s", path, strerror(errno));
        return NULL;
    }
    x = PEM_read_X509(f, NULL, no_password, NULL);
    fclose(f);
    if (x == NULL)
        snprintf(err, errlen, "%s: not a PEM certificate (%s)", path,
                 ssl_reason("no certificate found"));
    return x;
}

/* The private key of a PEM file, or NULL with err set (never its content). */
static EVP_PKEY *key_of(const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    EVP_PKEY *k;

    if (f == NULL) {
        snprintf(err, errlen, "%s: cannot read: %s", path, strerror(errno));
        return NULL;
    }
    k = PEM_read_PrivateKey(f, NULL, no_password, NULL);
    fclose(f);
    if (k == NULL)
        snprintf(err, errlen, "%s: not a PEM private key, or an encrypted one (%s)", path,
                 ssl_reason("no key found"));
    return k;
}

static int ctx_setup(struct tls_ctx *x, const struct cfg_tls *t, int64_t now,
                     char *err, size_t errlen)
{
    SSL_CTX *ctx = x->ssl;
    char when[32];
    EVP_PKEY *pkey;
    X509 *leaf;
    int rc;

    SSL_CTX_set_default_passwd_cb(ctx, no_password);
    SSL_CTX_set_min_proto_version(ctx, t->min_version == 13 ? TLS1_3_VERSION : TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_session_id_context(ctx, (const unsigned char *)"infergate", 9);
    SSL_CTX_set_alpn_select_cb(ctx, alpn_select, NULL);

    if ((leaf = leaf_of(t->cert, err, errlen)) == NULL)
        return -1;
    cert_info(leaf, &x->cert);
    if (x->cert.not_after <= now) {
        tls_time_str(x->cert.not_after, when, sizeof(when));
        snprintf(err, errlen, "%s: the certificate expired on %s", t->cert, when);
        X509_free(leaf);
        return -1;
    }
    if (SSL_CTX_use_certificate_chain_file(ctx, t->cert) != 1) {
        snprintf(err, errlen, "%s: cannot use the certificate chain: %s", t->cert,
                 ssl_reason("unknown error"));
        X509_free(leaf);
        return -1;
    }
    pkey = key_of(t->key, err, errlen);
    if (pkey && X509_check_private_key(leaf, pkey) != 1) {
        snprintf(err, errlen, "%s: the key does not match the certificate in %s",
                 t->key, t->cert);
        EVP_PKEY_free(pkey);
        pkey = NULL;
    }
    X509_free(leaf);
    if (pkey == NULL)
        return -1;
    rc = SSL_CTX_use_PrivateKey(ctx, pkey);
    EVP_PKEY_free(pkey);
    ERR_clear_error();
    if (rc != 1) {
        snprintf(err, errlen, "%s: the key does not match the certificate in %s",
                 t->key, t->cert);
        return -1;
    }
    if (t->ciphers && SSL_CTX_set_cipher_list(ctx, t->ciphers) != 1) {
        ERR_clear_error();
        snprintf(err, errlen, "server.tls.ciphers: no known cipher in \"%.200s\"", t->ciphers);
        return -1;
    }
    if (t->ciphersuites && SSL_CTX_set_ciphersuites(ctx, t->ciphersuites) != 1) {
        ERR_clear_error();
        snprintf(err, errlen, "server.tls.ciphersuites: no known TLS 1.3 suite in \"%.200s\"",
                 t->ciphersuites);
        return -1;
    }
    if (t->client_ca) {
        STACK_OF(X509_NAME) *names;

        if (readable(t->client_ca, err, errlen) < 0)
            return -1;
        if (SSL_CTX_load_verify_locations(ctx, t->client_ca, NULL) != 1
            || (names = SSL_load_client_CA_file(t->client_ca)) == NULL) {
            snprintf(err, errlen, "%s: no PEM CA certificate (%s)", t->client_ca,
                     ssl_reason("no certificate found"));
            return -1;
        }
        SSL_CTX_set_client_CA_list(ctx, names);
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    }
    return 0;
}

struct tls_ctx *tls_ctx_new(const struct cfg_tls *t, int64_t now, char *err, size_t errlen)
{
    struct tls_ctx *x = calloc(1, sizeof(*x));

    if (x == NULL || (x->ssl = SSL_CTX_new(TLS_server_method())) == NULL) {
        snprintf(err, errlen, "server.tls: out of memory");
        free(x);
        return NULL;
    }
    if (ctx_setup(x, t, now, err, errlen) < 0) {
        ERR_clear_error();
        tls_ctx_free(x);
        return NULL;
    }
    return x;
}

void tls_ctx_free(struct tls_ctx *x)
{
    if (x == NULL)
        return;
    SSL_CTX_free(x->ssl);
    free(x);
}

const struct tls_cert_info *tls_ctx_cert(const struct tls_ctx *x)
{
    return x ? &x->cert : NULL;
}

/* --- the current context --------------------------------------------- */

void tls_current_set(const struct tls_ctx *x)
{
    SSL_CTX *old;

    if (x)
        SSL_CTX_up_ref(x->ssl);
    pthread_mutex_lock(&cur_mu);
    old = cur_ctx;
    cur_ctx = x ? x->ssl : NULL;
    pthread_mutex_unlock(&cur_mu);
    SSL_CTX_free(old);          /* open connections hold their own reference */
}

void *tls_current_new_ssl(void)
{
    SSL *ssl = NULL;

    pthread_mutex_lock(&cur_mu);
    if (cur_ctx)
        ssl = SSL_new(cur_ctx);     /* takes its own reference on cur_ctx */
    pthread_mutex_unlock(&cur_mu);
    return ssl;
}

/* --- handshake failures ---------------------------------------------- */

enum tls_fail tls_fail_classify(unsigned long err)
{
    int r;

    if (err == 0)
        return TLS_FAIL_CLOSED;
    if (ERR_GET_LIB(err) != ERR_LIB_SSL)
        return TLS_FAIL_OTHER;
    r = ERR_GET_REASON(err);
    switch (r) {
    case SSL_R_HTTP_REQUEST:
    case SSL_R_HTTPS_PROXY_REQUEST:
        return TLS_FAIL_PLAIN_HTTP;
    case SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE:
        return TLS_FAIL_NO_CLIENT_CERT;
    case SSL_R_CERTIFICATE_VERIFY_FAILED:
        return TLS_FAIL_BAD_CLIENT_CERT;
    case SSL_R_UNSUPPORTED_PROTOCOL:
    case SSL_R_WRONG_VERSION_NUMBER:
    case SSL_R_NO_SHARED_CIPHER:
    case SSL_R_NO_PROTOCOLS_AVAILABLE:
    case SSL_R_VERSION_TOO_LOW:
    case SSL_R_UNKNOWN_PROTOCOL:
    case SSL_R_RECORD_LENGTH_MISMATCH:
    case SSL_R_PACKET_LENGTH_TOO_LONG:
    case SSL_R_UNEXPECTED_MESSAGE:
    case SSL_R_UNEXPECTED_RECORD:
        return TLS_FAIL_PROTOCOL;
    default:
        break;
    }
    /* Alerts the client sent: reason codes SSL_AD_REASON_OFFSET + alert. */
    if (r >= SSL_AD_REASON_OFFSET && r < SSL_AD_REASON_OFFSET + 256)
        return TLS_FAIL_PEER_ALERT;
    return TLS_FAIL_OTHER;
}

void tls_fail_count(enum tls_fail f)
{
    if ((unsigned)f < TLS_FAILS)
        __atomic_add_fetch(&fails[f], 1, __ATOMIC_RELAXED);
}

uint64_t tls_fail_total(enum tls_fail f)
{
    return (unsigned)f < TLS_FAILS ? __atomic_load_n(&fails[f], __ATOMIC_RELAXED) : 0;
}

const char *tls_fail_name(enum tls_fail f)
{
    return (unsigned)f < TLS_FAILS ? fail_names[f] : "other";
}
