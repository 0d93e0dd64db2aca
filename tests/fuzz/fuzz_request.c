/*
 * fuzz_request.c -- libFuzzer harness for the client side of a request:
 * the HTTP/1.1 parser of src/io/http.c (request line, headers, Content-Length
 * and chunked bodies, limits, pipelining, replies and streams) and the
 * checks the gateway makes on a request before proxying it (route table,
 * Bearer token, the JSON body as proxy_handle() reads it, with jscan.c's
 * verdict checked against jansson's).
 *
 * Each input is one connection: the bytes go into one end of a socketpair
 * whose other end is served by http_server_adopt(), in pieces (so lines
 * and bodies arrive split), then the client half-closes and the loop runs
 * until the server let the connection go. Replies are read and dropped.
 *
 * Built two ways: with clang -fsanitize=fuzzer (make fuzz), or with any
 * compiler and tests/fuzz/replay.c as main(), which runs saved inputs
 * (the e2e suite replays tests/fuzz/corpus/fuzz_request/ that way).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <sys/socket.h>

#include <event2/event.h>
#include <jansson.h>

#include "http.h"
#include "jscan.h"

#define MAX_INPUT      (1024 * 1024)
#define SPLIT_PREFIX   512     /* bytes sent in small pieces, the rest at once */
#define MAX_TURNS      256     /* loop turns after the last byte */

static struct event_base *base;

/* Mirrors gateway.c's route table (method, path, needs a client key). */
static const struct { const char *method, *path; int client; } routes[] = {
    { "POST", "/v1/chat/completions", 1 }, { "POST", "/v1/completions", 1 },
    { "POST", "/v1/embeddings", 1 },       { "POST", "/v1/verify", 1 },
    { "GET",  "/v1/models", 1 },           { "GET",  "/health", 0 },
    { "GET",  "/status", 0 },              { "GET",  "/v1/providers/status", 1 },
    { "GET",  "/admin/providers", 0 },     { "GET",  "/metrics", 0 },
    { "POST", "/admin/reload", 0 },        { "GET",  "/api/v1/ip", 1 },
};

static const char *bearer(const struct http_req *req)
{
    const char *a = http_req_header(req, "Authorization");

    if (a == NULL || strncasecmp(a, "Bearer ", 7) != 0)
        return NULL;
    return a + 7;
}

/* What proxy_handle() checks before a request goes upstream. */
static void body_checks(struct http_req *req, const char *path)
{
    size_t len;
    const char *body = http_req_body(req, &len);
    json_error_t jerr;
    json_t *doc, *v;
    char *out;

    /* As proxy_handle(): jscan.c validates, a tree is built for the
     * rewrite below (fuzz_jscan.c compares jscan with jansson). */
    {
        struct jscan_error serr;
        enum jscan_type t = jscan_top(body, len, NULL, NULL, &serr);
        if (t == JSCAN_INVALID) {
            http_reply_error(req, 400, "invalid_request_error", "invalid_json",
                             "invalid JSON body: %s (line %d, column %d)",
                             serr.text, serr.line, serr.column);
            return;
        }
        if (t != JSCAN_OBJECT) {
            http_reply_error(req, 400, "invalid_request_error", "invalid_json",
                             "the request body must be a JSON object");
            return;
        }
    }
    doc = json_loadb(body, len, 0, &jerr);
    if (doc == NULL) {
        http_reply_error(req, 400, "invalid_request_error", "invalid_json", "%s", jerr.text);
        return;
    }
    v = json_object_get(doc, "model");
    if (v && !json_is_string(v)) {
        json_decref(doc);
        http_reply_error(req, 400, "invalid_request_error", "invalid_model",
                         "\"model\" must be a string");
        return;
    }
    if (strcmp(path, "/v1/verify") == 0) {
        v = json_object_get(doc, "id");
        if (!json_is_string(v) || json_string_length(v) == 0) {
            json_decref(doc);
            http_reply_error(req, 400, "invalid_request_error", "missing_id",
                             "the body needs \"id\"");
            return;
        }
    }
    /* A model rewrite re-serializes the body. */
    json_object_set_new(doc, "model", json_string("fuzz-model"));
    out = json_dumps(doc, JSON_COMPACT);
    if (json_is_true(json_object_get(doc, "stream"))) {
        http_resp_header(req, "X-Request-Id", "fuzz");
        http_stream_start(req, 200, "text/event-stream");
        http_stream_write(req, "data: {}\n\n", 10);
        if (out)
            http_stream_write(req, out, strlen(out));
        http_stream_end(req);
    } else {
        http_reply(req, 200, "application/json", out ? out : "{}",
                   out ? strlen(out) : 2);
    }
    free(out);
    json_decref(doc);
}

static void handler(struct http_req *req, void *arg)
{
    const char *path = http_req_path(req), *method = http_req_method(req);
    const char *name, *value;
    size_t i, n = http_req_nheaders(req);
    int known = 0;

    (void)arg;
    for (i = 0; i < n; i++) {
        http_req_header_at(req, i, &name, &value);
        if (strlen(name) == 0)
            abort();                      /* the parser refuses empty names */
    }
    for (i = 0; i < HTTP_H_NKNOWN; i++)     /* the index answers as the search */
        if (http_req_known(req, (enum http_known)i)
            != http_req_header(req, http_known_name((enum http_known)i)))
            abort();
    (void)http_req_query(req);
    (void)http_req_peer(req);
    (void)http_req_local_loopback(req);
    for (i = 0; i < sizeof(routes) / sizeof(routes[0]); i++) {
        if (strcmp(routes[i].path, path) != 0)
            continue;
        known = 1;
        if (strcmp(routes[i].method, method) != 0)
            continue;
        if (routes[i].client && bearer(req) == NULL) {
            http_reply_error(req, 401, "authentication_error", "invalid_api_key",
                             "missing or invalid API key");
            return;
        }
        if (strcmp(method, "POST") == 0 && strncmp(path, "/v1/", 4) == 0) {
            body_checks(req, path);
            return;
        }
        http_reply(req, 200, "application/json", "{}", 2);
        return;
    }
    if (known)
        http_reply_error(req, 405, "invalid_request_error", "method_not_allowed",
                         "method %.32s not allowed on %.200s", method, path);
    else
        http_reply_error(req, 404, "invalid_request_error", "not_found",
                         "unknown path %.200s", path);
}

static void drain(int fd)
{
    char buf[65536];

    while (read(fd, buf, sizeof(buf)) > 0)
        ;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const struct http_limits lim = { 2048, 64 * 1024, 5000 };
    struct http_server *srv;
    size_t off = 0, step = 1 + size % 29;
    int sv[2], turns;

    if (size > MAX_INPUT)
        return 0;
    if (base == NULL && (base = event_base_new()) == NULL)
        abort();
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0)
        abort();
    fcntl(sv[1], F_SETFL, O_NONBLOCK);
    srv = http_server_new(base, handler, NULL);
    if (srv == NULL)
        abort();
    http_server_set_limits(srv, &lim);
    if (http_server_adopt(srv, sv[0]) < 0)
        abort();
    while (off < size) {
        size_t n = off < SPLIT_PREFIX ? step : size - off;
        ssize_t w;
        if (n > size - off)
            n = size - off;
        w = write(sv[1], data + off, n);
        if (w > 0)
            off += (size_t)w;
        else if (w < 0 && errno != EAGAIN && errno != EINTR)
            break;                        /* the server closed on us */
        event_base_loop(base, EVLOOP_NONBLOCK);
        drain(sv[1]);
        if (http_server_connections(srv) == 0)
            break;
    }
    shutdown(sv[1], SHUT_WR);
    for (turns = 0; turns < MAX_TURNS && http_server_connections(srv) > 0; turns++) {
        event_base_loop(base, EVLOOP_NONBLOCK);
        drain(sv[1]);
    }
    http_server_free(srv);
    close(sv[1]);
    return 0;
}
