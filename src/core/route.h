/*
 * route.h -- the proxied API surface: which method and path is which
 * endpoint family, what its body must be, and how its errors look.
 *
 * gateway.c asks route_find() for every path its own table does not know;
 * proxy.c reads the family's flags to validate the body, pin a request to
 * the host that owns a response id, shape errors (OpenAI or Anthropic) and
 * decide whether a 2xx answer must be JSON. Pure: no I/O.
 */
#ifndef INFERGATE_ROUTE_H
#define INFERGATE_ROUTE_H

#include <stddef.h>
#include <string.h>

/* Endpoint families: the `route` label of metrics and the access log,
 * and what a host's `apis:` list names. */
enum api_family {
    API_CHAT = 0, API_COMPLETIONS, API_EMBEDDINGS, API_RESPONSES, API_AUDIO,
    API_IMAGES, API_MODERATIONS, API_RERANK, API_MESSAGES,
    API_FAMILIES,                 /* the ones a host may list in `apis` */
    API_VERIFY = API_FAMILIES, API_PASSTHROUGH, API_NONE
};

#define API_BODY_JSON    (1u << 0)  /* a JSON object body is required */
#define API_BODY_FORM    (1u << 1)  /* multipart/form-data body is required */
#define API_ID_IN_PATH   (1u << 2)  /* /v1/responses/{id}[/...], /v1/conversations/{id}[/...]:
                                       goes to the host that made it */
#define API_ANSWER_JSON  (1u << 3)  /* a 2xx non-stream answer must be JSON */
#define API_ANSWER_RAW   (1u << 4)  /* a 2xx answer is passed on as it arrives */
#define API_ANTHROPIC    (1u << 5)  /* Anthropic-shaped errors */
#define API_RECORD_ID    (1u << 6)  /* the answer's id is recorded (owner host) */

struct api_route {
    const char     *method;
    const char     *path;        /* exact, or a prefix ending in '/' with API_ID_IN_PATH */
    enum api_family family;
    unsigned        flags;
};

/* The route of method + path (no query), NULL when none; *path_known is
 * set when the path exists with another method (405). The id of an
 * API_ID_IN_PATH route is copied to id (NUL-terminated; "" when it does
 * not fit idlen or holds characters other than [A-Za-z0-9_.:-]). */
const struct api_route *route_find(const char *method, const char *path,
                                   int *path_known, char *id, size_t idlen);

/* The route that stands for a `routing.passthrough` request. */
const struct api_route *route_passthrough(void);

/* "chat_completions", "responses", "messages", ...: metrics route labels.
 * Inline, like route_family_of_path(), so that log.c and metrics.c need
 * no other module. */
static inline const char *route_family_label(enum api_family f)
{
    static const char *labels[] = {
        "chat_completions", "completions", "embeddings", "responses", "audio", "images",
        "moderations", "rerank", "messages", "verify", "passthrough", "other"
    };

    return (unsigned)f <= API_NONE ? labels[f] : "other";
}
/* "chat", "responses", ...: names in a host's `apis:` list (inline: config.c
 * checks them); -1 if unknown. */
static const char *const route_family_names[API_FAMILIES] = {
    "chat", "completions", "embeddings", "responses", "audio", "images",
    "moderations", "rerank", "messages"
};

static inline int route_family_by_name(const char *name)
{
    int i;

    for (i = 0; i < API_FAMILIES; i++)
        if (strcmp(route_family_names[i], name) == 0)
            return i;
    return -1;
}

static inline const char *route_family_name(enum api_family f)
{
    return (unsigned)f < API_FAMILIES ? route_family_names[f] : route_family_label(f);
}

/* The family of a path, for metrics and logs (API_NONE outside the API). */
static inline enum api_family route_family_of_path(const char *path)
{
    static const struct { const char *prefix; size_t n; enum api_family f; } p[] = {
        { "/v1/responses", 13, API_RESPONSES }, { "/v1/conversations", 17, API_RESPONSES },
        { "/v1/messages", 12, API_MESSAGES },
        { "/v1/audio/", 10, API_AUDIO }, { "/v1/images/", 11, API_IMAGES },
        { "/v1/moderations", 15, API_MODERATIONS }, { "/v1/rerank", 10, API_RERANK },
    };
    size_t i;

    for (i = 0; path && i < sizeof(p) / sizeof(p[0]); i++)
        if (strncmp(path, p[i].prefix, p[i].n) == 0
            && (path[p[i].n] == '\0' || path[p[i].n] == '/' || p[i].prefix[p[i].n - 1] == '/'))
            return p[i].f;
    return API_NONE;
}

/*
 * An error body in the family's shape, NUL-terminated, malloc'd (NULL when
 * out of memory): OpenAI's {"error": {"message", "type", "param", "code"}}
 * or Anthropic's {"type": "error", "error": {"type", "message"}} (the type
 * then follows from the status).
 */
char *route_error_body(unsigned flags, int status, const char *type,
                       const char *code, const char *msg);

/* The JSON of an SSE `event: error` that ends a stream broken after its
 * first byte, in the family's shape (Responses: {"type": "error", "code",
 * "message", ...}; Messages: Anthropic's error, which has no code; others
 * OpenAI's, type upstream_error). `code`: e.g. "stream_interrupted". */
char *route_stream_error(enum api_family f, unsigned flags, const char *code,
                         const char *msg);

/* Responses streams: the id of `response.created`, found in the first
 * `data:` line's "response" object. Returns 1 found, 0 need more bytes,
 * -1 none. */
int route_stream_response_id(const char *buf, size_t len, char *out, size_t outlen);

/*
 * multipart/form-data: checks the whole body against the boundary of
 * `ctype` (every part has headers with a Content-Disposition name, the
 * closing delimiter is there) and copies the value of the text field
 * `want` (e.g. "model") into out when it is shorter than outlen. Returns
 * NULL when well-formed, else what is wrong.
 */
const char *route_form_check(const char *ctype, const char *body, size_t len,
                             const char *want, char *out, size_t outlen);

#endif
