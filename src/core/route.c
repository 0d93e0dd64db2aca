/*
 * route.c -- the proxied API surface and its error shapes (see route.h).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>

#include "jscan.h"
#include "route.h"

#define J  API_BODY_JSON
#define F  API_BODY_FORM
#define AJ API_ANSWER_JSON

static const struct api_route routes[] = {
    { "POST",   "/v1/chat/completions",       API_CHAT,        J | AJ | API_RECORD_ID },
    { "POST",   "/v1/completions",            API_COMPLETIONS, J | AJ | API_RECORD_ID },
    { "POST",   "/v1/embeddings",             API_EMBEDDINGS,  J | AJ | API_RECORD_ID },
    { "POST",   "/v1/verify",                 API_VERIFY,      J | AJ | API_RECORD_ID },
    { "POST",   "/v1/responses",              API_RESPONSES,   J | AJ | API_RECORD_ID },
    { "GET",    "/v1/responses/",             API_RESPONSES,   API_ID_IN_PATH },
    { "DELETE", "/v1/responses/",             API_RESPONSES,   API_ID_IN_PATH },
    { "POST",   "/v1/responses/",             API_RESPONSES,   API_ID_IN_PATH },
    { "POST",   "/v1/conversations",          API_RESPONSES,   J | AJ | API_RECORD_ID },
    { "GET",    "/v1/conversations/",         API_RESPONSES,   API_ID_IN_PATH },
    { "POST",   "/v1/conversations/",         API_RESPONSES,   API_ID_IN_PATH },
    { "DELETE", "/v1/conversations/",         API_RESPONSES,   API_ID_IN_PATH },
    { "POST",   "/v1/messages",               API_MESSAGES,    J | AJ | API_ANTHROPIC },
    { "POST",   "/v1/messages/count_tokens",  API_MESSAGES,    J | AJ | API_ANTHROPIC },
    { "POST",   "/v1/audio/transcriptions",   API_AUDIO,       F },
    { "POST",   "/v1/audio/translations",     API_AUDIO,       F },
    { "POST",   "/v1/audio/speech",           API_AUDIO,       J | API_ANSWER_RAW },
    { "POST",   "/v1/images/generations",     API_IMAGES,      J | AJ },
    { "POST",   "/v1/images/edits",           API_IMAGES,      F | AJ },
    { "POST",   "/v1/images/variations",      API_IMAGES,      F | AJ },
    { "POST",   "/v1/moderations",            API_MODERATIONS, J | AJ },
    { "POST",   "/v1/rerank",                 API_RERANK,      J | AJ },
};

static const struct api_route passthrough = { "*", "", API_PASSTHROUGH, 0 };

#undef J
#undef F
#undef AJ

static int id_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
           || c == '_' || c == '-' || c == '.' || c == ':';
}

const struct api_route *route_find(const char *method, const char *path,
                                   int *path_known, char *id, size_t idlen)
{
    size_t i, n;

    *path_known = 0;
    if (idlen)
        id[0] = '\0';
    for (i = 0; i < sizeof(routes) / sizeof(routes[0]); i++) {
        const struct api_route *r = &routes[i];

        if (r->flags & API_ID_IN_PATH) {
            const char *s;
            n = strlen(r->path);
            if (strncmp(path, r->path, n) != 0 || path[n] == '\0' || path[n] == '/')
                continue;
            *path_known = 1;
            if (strcmp(method, r->method) != 0)
                continue;
            for (s = path + n; *s && *s != '/'; s++)
                ;
            if ((size_t)(s - (path + n)) < idlen) {
                memcpy(id, path + n, (size_t)(s - (path + n)));
                id[s - (path + n)] = '\0';
                for (s = id; *s; s++)
                    if (!id_char(*s)) {
                        id[0] = '\0';
                        break;
                    }
            }
            return r;
        }
        if (strcmp(path, r->path) != 0)
            continue;
        *path_known = 1;
        if (strcmp(method, r->method) == 0)
            return r;
    }
    return NULL;
}

const struct api_route *route_passthrough(void)
{
    return &passthrough;
}

/* --- error shapes ------------------------------------------------------ */

/* Anthropic's error type for an HTTP status. */
static const char *anthropic_type(int status)
{
    switch (status) {
    case 400: case 405: case 415: case 422: return "invalid_request_error";
    case 401: return "authentication_error";
    case 403: return "permission_error";
    case 404: return "not_found_error";
    case 409: return "invalid_request_error";
    case 413: return "request_too_large";
    case 429: return "rate_limit_error";
    case 503: case 529: return "overloaded_error";
    case 504: return "timeout_error";
    default: return status >= 500 ? "api_error" : "invalid_request_error";
    }
}

static char *dump(json_t *o)
{
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;

    json_decref(o);
    return s;
}

char *route_error_body(unsigned flags, int status, const char *type,
                       const char *code, const char *msg)
{
    if (flags & API_ANTHROPIC)
        return dump(json_pack("{s:s, s:{s:s, s:s}}", "type", "error", "error",
                              "type", anthropic_type(status), "message", msg));
    return dump(json_pack("{s:{s:s, s:s, s:n, s:s?}}", "error", "message", msg,
                          "type", type, "param", "code", code));
}

char *route_stream_error(enum api_family f, unsigned flags, const char *code,
                         const char *msg)
{
    if (flags & API_ANTHROPIC)
        return dump(json_pack("{s:s, s:{s:s, s:s}}", "type", "error", "error",
                              "type", "api_error", "message", msg));
    if (f == API_RESPONSES)
        return dump(json_pack("{s:s, s:s, s:s, s:n}", "type", "error",
                              "code", code, "message", msg, "param"));
    return dump(json_pack("{s:{s:s, s:s, s:s}}", "error", "message", msg,
                          "type", "upstream_error", "code", code));
}

/* --- Responses stream ids ---------------------------------------------- */

struct rid_ctx {
    struct jscan_val response, id;
};

static void on_top(void *arg, const char *key, size_t klen, const struct jscan_val *v)
{
    struct rid_ctx *c = arg;

    if (klen == 8 && memcmp(key, "response", 8) == 0)
        c->response = *v;
}

static void on_response(void *arg, const char *key, size_t klen, const struct jscan_val *v)
{
    struct rid_ctx *c = arg;

    if (klen == 2 && memcmp(key, "id", 2) == 0)
        c->id = *v;
}

int route_stream_response_id(const char *buf, size_t len, char *out, size_t outlen)
{
    const char *p = buf, *e = buf + len, *nl;
    struct rid_ctx c;
    struct jscan_error err;

    for (;;) {
        if ((nl = memchr(p, '\n', (size_t)(e - p))) == NULL)
            return 0;
        if (nl - p >= 5 && memcmp(p, "data:", 5) == 0)
            break;
        p = nl + 1;
    }
    p += 5;
    if (p < nl && *p == ' ')
        p++;
    memset(&c, 0, sizeof(c));
    if (jscan_top(p, (size_t)(nl - p - (nl > p && nl[-1] == '\r')), on_top, &c, &err)
            != JSCAN_OBJECT || c.response.type != JSCAN_OBJECT)
        return -1;
    if (jscan_top(c.response.start, c.response.len, on_response, &c, &err) != JSCAN_OBJECT
        || c.id.type != JSCAN_STRING || c.id.len < 3 || c.id.len - 2 >= outlen
        || memchr(c.id.start, '\\', c.id.len))
        return -1;
    memcpy(out, c.id.start + 1, c.id.len - 2);
    out[c.id.len - 2] = '\0';
    return 1;
}

/* --- multipart/form-data ------------------------------------------------ */

/* The boundary parameter of a multipart/form-data Content-Type. */
static int form_boundary(const char *ctype, char *out, size_t outlen)
{
    const char *b;
    size_t n;

    if (ctype == NULL || strncasecmp(ctype, "multipart/form-data", 19) != 0)
        return -1;
    if ((b = strcasestr(ctype, "boundary=")) == NULL)
        return -1;
    b += 9;
    if (*b == '"') {
        const char *q = strchr(++b, '"');
        if (q == NULL)
            return -1;
        n = (size_t)(q - b);
    } else {
        n = strcspn(b, "; \t");
    }
    if (n == 0 || n > 70 || n + 1 > outlen)   /* RFC 2046: 1..70 characters */
        return -1;
    memcpy(out, b, n);
    out[n] = '\0';
    return 0;
}

/* A case-insensitive search in h[0..n) for a lowercase needle. */
static const char *strcasestr_n(const char *h, size_t n, const char *needle)
{
    size_t k = strlen(needle), i;

    for (i = 0; i + k <= n; i++)
        if (strncasecmp(h + i, needle, k) == 0)
            return h + i;
    return NULL;
}

/* The value of name="..." in a part's headers, into out. */
static int part_name(const char *h, size_t hlen, char *out, size_t outlen)
{
    const char *e = h + hlen, *p, *q;

    p = memmem(h, hlen, "name=\"", 6);
    while (p && p > h && p[-1] != ' ' && p[-1] != ';')   /* not filename= */
        p = memmem(p + 1, (size_t)(e - p - 1), "name=\"", 6);
    if (p == NULL)
        return -1;
    p += 6;
    if ((q = memchr(p, '"', (size_t)(e - p))) == NULL || (size_t)(q - p) >= outlen)
        return -1;
    memcpy(out, p, (size_t)(q - p));
    out[q - p] = '\0';
    return 0;
}

const char *route_form_check(const char *ctype, const char *body, size_t len,
                             const char *want, char *out, size_t outlen)
{
    char bnd[80], delim[84], name[128];
    const char *p = body, *e = body + len, *next;
    size_t dl;
    int parts = 0;

    if (outlen)
        out[0] = '\0';
    if (form_boundary(ctype, bnd, sizeof(bnd)) < 0)
        return "the body must be multipart/form-data with a boundary";
    dl = (size_t)snprintf(delim, sizeof(delim), "--%s", bnd);
    /* The first delimiter (a preamble before it is allowed). */
    if (len < dl || (p = memmem(body, len, delim, dl)) == NULL)
        return "malformed multipart body: no boundary delimiter";
    for (;;) {
        const char *hend, *data;

        p += dl;
        if (e - p >= 2 && p[0] == '-' && p[1] == '-')
            break;                            /* the closing delimiter */
        if (e - p < 2 || p[0] != '\r' || p[1] != '\n')
            return "malformed multipart body: a delimiter is not followed by CRLF";
        p += 2;
        if ((hend = memmem(p, (size_t)(e - p), "\r\n\r\n", 4)) == NULL)
            return "malformed multipart body: a part has no end of headers";
        if (strcasestr_n(p, (size_t)(hend - p), "content-disposition:") == NULL
            || part_name(p, (size_t)(hend - p), name, sizeof(name)) < 0)
            return "malformed multipart body: a part has no Content-Disposition name";
        data = hend + 4;
        /* The part ends at CRLF + delimiter. */
        for (next = data;; next++) {
            next = memmem(next, (size_t)(e - next), delim, dl);
            if (next == NULL)
                return "malformed multipart body: no closing boundary";
            if (next - data >= 2 && next[-2] == '\r' && next[-1] == '\n')
                break;
            if (next == data)
                return "malformed multipart body: a part is not followed by CRLF";
        }
        if (want && strcmp(name, want) == 0 && (size_t)(next - 2 - data) < outlen) {
            memcpy(out, data, (size_t)(next - 2 - data));
            out[next - 2 - data] = '\0';
        }
        parts++;
        p = next;
    }
    if (parts == 0)
        return "malformed multipart body: no parts";
    return NULL;
}
