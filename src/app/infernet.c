/*
 * infernet.c -- GET /api/v1/ip, the Infernet router's route-only endpoint
 * (see infernet.h).
 *
 * A request scans every host once (this endpoint is not on the proxy's
 * hot path, and a host's containers can change at every probe, so there
 * is no index to keep up to date). The round-robin cursor for ties is per
 * thread: one event loop per worker, no locking.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>

#include "gw.h"
#include "health.h"
#include "http.h"
#include "infernet.h"
#include "utf8.h"

#define INFERNET_NAME_MAX   32      /* longest parameter name we care about */
#define INFERNET_HOSTPORT   300     /* "host:port" of a URL */
#define INFERNET_MSG_MAX    512
#define INFERNET_LIST_MAX   200     /* containers echoed in an error */
#define HTTP_DEFAULT_PORT   "80"
#define HTTPS_DEFAULT_PORT  "443"

static _Thread_local uint64_t infernet_cursor;

/* --- query ------------------------------------------------------------ */

/* Decodes s[0..len) into out (room for len + 1). Returns the decoded
 * length, or -1 on a bad escape or an encoded NUL. */
static long url_decode(const char *s, size_t len, char *out)
{
    size_t i, w = 0;

    for (i = 0; i < len; i++) {
        if (s[i] == '+') {
            out[w++] = ' ';
        } else if (s[i] == '%') {
            int hi, lo;
            if (i + 2 >= len)
                return -1;
            hi = utf8_hexval((unsigned char)s[i + 1]);
            lo = utf8_hexval((unsigned char)s[i + 2]);
            if (hi < 0 || lo < 0 || (hi == 0 && lo == 0))
                return -1;
            out[w++] = (char)(hi * 16 + lo);
            i += 2;
        } else {
            out[w++] = s[i];
        }
    }
    out[w] = '\0';
    return (long)w;
}

int infernet_parse_query(const char *query, struct infernet_query *q,
                         char *err, size_t errlen)
{
    const char *s = query ? query : "";
    size_t w = 0;

    memset(q, 0, sizeof(*q));
    q->buf = malloc(strlen(s) + 1);
    if (q->buf == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    while (*s) {
        const char *amp = strchr(s, '&'), *eq;
        size_t plen = amp ? (size_t)(amp - s) : strlen(s), nlen;
        char name[INFERNET_NAME_MAX + 1];
        long vlen;

        eq = memchr(s, '=', plen);
        nlen = eq ? (size_t)(eq - s) : plen;
        if (plen == 0 || nlen > INFERNET_NAME_MAX
            || url_decode(s, nlen, name) < 0) {
            s += plen + (amp != NULL);
            continue;                       /* not a parameter of ours */
        }
        if (strcmp(name, "container") != 0 && strcmp(name, "model") != 0) {
            s += plen + (amp != NULL);
            continue;
        }
        vlen = eq ? url_decode(eq + 1, plen - nlen - 1, q->buf + w) : 0;
        if (!eq)
            q->buf[w] = '\0';
        if (vlen < 0) {
            snprintf(err, errlen, "%s: bad percent-escape in the value", name);
            goto fail;
        }
        if (vlen == 0) {
            snprintf(err, errlen, "%s: empty value", name);
            goto fail;
        }
        if (strcmp(name, "model") == 0) {
            q->model = q->buf + w;
        } else {
            if (q->ncontainers == INFERNET_MAX_CONTAINERS) {
                snprintf(err, errlen, "more than %d containers asked for",
                         INFERNET_MAX_CONTAINERS);
                goto fail;
            }
            q->containers[q->ncontainers++] = q->buf + w;
        }
        w += (size_t)vlen + 1;
        s += plen + (amp != NULL);
    }
    return 0;

fail:
    infernet_query_free(q);
    return -1;
}

void infernet_query_free(struct infernet_query *q)
{
    free(q->buf);
    memset(q, 0, sizeof(*q));
}

/* --- pick ------------------------------------------------------------- */

static int node_fits(const struct infernet_node *nd, const struct infernet_query *q)
{
    size_t i;

    if (!health_host_serves(nd->host, nd->hs, q->model))
        return 0;
    for (i = 0; i < q->ncontainers; i++)
        if (!health_host_runs(nd->host, nd->hs, q->containers[i]))
            return 0;
    return 1;
}

int infernet_pick(const struct infernet_node *nodes, size_t n,
                  const struct infernet_query *q, uint64_t *cursor,
                  enum infernet_status *status)
{
    size_t i, ties = 0, want;
    int best = 0, matched = 0;
    enum infernet_status dummy;

    if (status == NULL)
        status = &dummy;
    for (i = 0; i < n; i++) {
        int pend = nodes[i].hs->live.pending;
        if (!node_fits(&nodes[i], q))
            continue;
        matched = 1;
        if (!nodes[i].usable)
            continue;
        if (ties == 0 || pend < best) {
            best = pend;
            ties = 1;
        } else if (pend == best) {
            ties++;
        }
    }
    if (ties == 0) {
        *status = matched ? INFERNET_NONE_USABLE : INFERNET_NO_MATCH;
        return -1;
    }
    want = (size_t)((*cursor)++ % ties);
    for (i = 0; i < n; i++) {
        if (!nodes[i].usable || nodes[i].hs->live.pending != best
            || !node_fits(&nodes[i], q))
            continue;
        if (want-- == 0) {
            *status = INFERNET_OK;
            return (int)i;
        }
    }
    *status = INFERNET_NO_MATCH;        /* not reached */
    return -1;
}

/* --- host:port -------------------------------------------------------- */

int infernet_host_port(const char *url, char *out, size_t outlen)
{
    const char *p = strstr(url, "://"), *end, *at, *host, *port = NULL;
    size_t hlen;
    int https;

    if (p == NULL)
        return -1;
    https = (size_t)(p - url) == 5 && strncasecmp(url, "https", 5) == 0;
    p += 3;
    end = p + strcspn(p, "/?#");
    at = memchr(p, '@', (size_t)(end - p));
    host = at ? at + 1 : p;
    if (*host == '[') {
        const char *rb = memchr(host, ']', (size_t)(end - host));
        if (rb == NULL)
            return -1;
        hlen = (size_t)(rb + 1 - host);
        if (rb + 1 < end && rb[1] == ':')
            port = rb + 2;
    } else {
        const char *colon = memchr(host, ':', (size_t)(end - host));
        hlen = colon ? (size_t)(colon - host) : (size_t)(end - host);
        if (colon)
            port = colon + 1;
    }
    if (hlen == 0)
        return -1;
    if (port == NULL || port == end) {
        port = https ? HTTPS_DEFAULT_PORT : HTTP_DEFAULT_PORT;
        end = port + strlen(port);
    }
    if ((size_t)snprintf(out, outlen, "%.*s:%.*s", (int)hlen, host,
                         (int)(end - port), port) >= outlen)
        return -1;
    return 0;
}

/* --- route ------------------------------------------------------------ */

static void reply(struct http_req *req, int status, const char *key, const char *val)
{
    json_t *o = json_pack("{s:s}", key, val);
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;

    http_resp_header(req, "Cache-Control", "no-store");
    if (s == NULL) {
        static const char oom[] = "{\"error\":\"out of memory\"}";
        http_reply(req, 500, "application/json", oom, sizeof(oom) - 1);
    } else {
        http_reply(req, status, "application/json", s, strlen(s));
    }
    free(s);
    json_decref(o);
}

/* "a, b, c" (shortened when long), for error messages. */
static void list_containers(const struct infernet_query *q, char *out, size_t len)
{
    size_t i, w = 0;

    out[0] = '\0';
    for (i = 0; i < q->ncontainers && w < len; i++) {
        int n = snprintf(out + w, len - w, "%s%s", i ? ", " : "", q->containers[i]);
        if (n < 0)
            break;
        w += (size_t)n;
    }
}

void infernet_route(struct gateway *gw, struct http_req *req)
{
    const struct snapshot *s = gw->snap;
    const struct config *c = s->cfg;
    struct infernet_query q;
    struct infernet_node *nodes;
    enum infernet_status st;
    char err[INFERNET_MSG_MAX], list[INFERNET_LIST_MAX], hp[INFERNET_HOSTPORT];
    int64_t now = gw_now_ms();
    size_t i;
    int pick;

    if (infernet_parse_query(http_req_query(req), &q, err, sizeof(err)) < 0) {
        reply(req, 400, "error", err);
        return;
    }
    if (q.ncontainers == 0) {
        infernet_query_free(&q);
        reply(req, 400, "error", "at least one container= parameter is required");
        return;
    }
    nodes = calloc(c->nhosts ? c->nhosts : 1, sizeof(*nodes));
    if (nodes == NULL) {
        infernet_query_free(&q);
        reply(req, 500, "error", "out of memory");
        return;
    }
    for (i = 0; i < c->nhosts; i++) {
        nodes[i].host = &c->hosts[i];
        nodes[i].hs = s->hs[i];
        nodes[i].usable = health_usable(s->hs[i], now);
    }
    pick = infernet_pick(nodes, c->nhosts, &q, &infernet_cursor, &st);
    free(nodes);
    list_containers(&q, list, sizeof(list));
    if (pick < 0) {
        snprintf(err, sizeof(err), "%s node runs container(s) %s%s%s%s",
                 st == INFERNET_NONE_USABLE ? "no usable" : "no", list,
                 q.model ? " and serves model \"" : "", q.model ? q.model : "",
                 q.model ? "\"" : "");
        infernet_query_free(&q);
        reply(req, 503, "error", err);
        return;
    }
    infernet_query_free(&q);
    if (infernet_host_port(c->hosts[pick].url, hp, sizeof(hp)) < 0) {
        snprintf(err, sizeof(err), "host %s has no host:port in its URL",
                 c->hosts[pick].name);
        reply(req, 503, "error", err);
        return;
    }
    reply(req, 200, "ip", hp);
}
