/*
 * mock_api.c -- the endpoints an upstream serves: the OpenAI ones under
 * /v1/ and the Infernet node's /info, with the injected faults.
 *
 * Every request gets a `struct op` while it is ours: what to answer is
 * decided when the request arrives (faults are sampled then), the answer
 * may wait on a timer (delay, SSE chunk interval) or forever (hang). Ops
 * sit on one list so shutdown can forget them before evhttp_free() frees
 * their requests and connections.
 *
 * Disconnects. evhttp only watches a server connection for close while it
 * writes, so:
 *  - while an op waits before its headers (delay, hang), an EV_READ event
 *    of our own on the socket peeks: EOF means the client gave up, and we
 *    free the connection (which frees the request);
 *  - once writing (SSE), evhttp sees the EOF, detaches the request from the
 *    connection and frees the connection; its close callback tells us, and
 *    the detached request is ours to free.
 * A connection's close callback points at its op only while the op lives.
 *
 * close_after_chunks and drop close the connection on purpose: the last
 * chunk is sent with a "drained" callback, and only once it has left the
 * buffer is the connection freed (a FIN, no terminating chunk).
 * stall_after_chunks and stall_body leave an answer unfinished: what was
 * sent stays sent and the op waits, with nothing scheduled, until the
 * client goes away. partial_bytes puts the start of the next event after
 * the last whole one before such a close or stall (a writer dying
 * mid-event).
 */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/socket.h>
#include <sys/types.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>

#include "mock.h"

#define DEFAULT_MODEL  "mock-model"
#define EMBEDDING_DIM  8
#define GARBAGE_BODY   "<<garbage>>"

enum ep {
    EP_CHAT, EP_COMPLETIONS, EP_EMBEDDINGS, EP_VERIFY, EP_MODELS, EP_INFO,
    EP_RESPONSES, EP_RESP_GET, EP_RESP_DELETE, EP_RESP_CANCEL, EP_RESP_ITEMS,
    EP_MESSAGES, EP_COUNT_TOKENS, EP_TRANSCRIBE, EP_SPEECH, EP_IMAGES, EP_IMAGES_FORM,
    EP_MODERATIONS, EP_RERANK, EP_CONV_CREATE, EP_CONV_ID
};

struct ep_def {
    const char           *path;
    enum ep               ep;
    enum evhttp_cmd_type  method;
};

static const struct ep_def endpoints[] = {
    { "/v1/chat/completions", EP_CHAT,        EVHTTP_REQ_POST },
    { "/v1/completions",      EP_COMPLETIONS, EVHTTP_REQ_POST },
    { "/v1/embeddings",       EP_EMBEDDINGS,  EVHTTP_REQ_POST },
    { "/v1/verify",           EP_VERIFY,      EVHTTP_REQ_POST },
    { "/v1/models",           EP_MODELS,      EVHTTP_REQ_GET },
    { "/info",                EP_INFO,        EVHTTP_REQ_GET },
    { "/api/info",            EP_INFO,        EVHTTP_REQ_GET },
    { "/v1/responses",        EP_RESPONSES,   EVHTTP_REQ_POST },
    { "/v1/messages",         EP_MESSAGES,    EVHTTP_REQ_POST },
    { "/v1/messages/count_tokens", EP_COUNT_TOKENS, EVHTTP_REQ_POST },
    { "/v1/audio/transcriptions", EP_TRANSCRIBE, EVHTTP_REQ_POST },
    { "/v1/audio/translations", EP_TRANSCRIBE, EVHTTP_REQ_POST },
    { "/v1/audio/speech",     EP_SPEECH,      EVHTTP_REQ_POST },
    { "/v1/images/generations", EP_IMAGES,    EVHTTP_REQ_POST },
    { "/v1/images/edits",     EP_IMAGES_FORM, EVHTTP_REQ_POST },
    { "/v1/images/variations", EP_IMAGES_FORM, EVHTTP_REQ_POST },
    { "/v1/moderations",      EP_MODERATIONS, EVHTTP_REQ_POST },
    { "/v1/rerank",           EP_RERANK,      EVHTTP_REQ_POST },
    { "/v1/conversations",    EP_CONV_CREATE, EVHTTP_REQ_POST },
};

/* /v1/responses/{id}[/cancel|/input_items]: filled in by find_ep. */
static struct ep_def resp_ep;
static char resp_path_id[128];

enum stage { ST_NEW, ST_WAIT, ST_STREAM, ST_DROP };

struct op {
    struct op                *prev, *next;
    struct evhttp_request    *req;
    struct evhttp_connection *evcon;
    struct event             *timer;      /* delay, chunk interval, drop */
    struct event             *watch;      /* close detection before headers */
    enum ep                   ep;
    enum stage                stage;
    /* the answer, decided on arrival */
    int   status;                         /* != 200: error answer */
    const char *err_type, *err_code;
    char  err_msg[256];
    int   retry_after;
    int   garbage, drop;
    int   stream, chunks, interval_ms, close_after, sent;
    int   include_usage;                  /* stream_options.include_usage */
    int   stall_after, stall_body, partial;
    int   items;                          /* embeddings: inputs */
    int   prompt_tokens;
    unsigned long long seq;
    char *model_json;                     /* model as a quoted JSON string */
    char *verify_id;
    int   verified;
    char *input_text;                     /* responses/messages: the input, as text */
    char *prev_id;                        /* responses: previous_response_id */
    json_t *resp;                         /* responses: the response being made */
    int   turn;                           /* responses: 1 + turns before */
};

static struct op *ops;
static json_t *store;                     /* Responses made here, see store_put */
static json_t *convs;                     /* conversations: id -> {"turns": n} */

/* ---- op lifecycle --------------------------------------------------- */

static void on_close(struct evhttp_connection *evcon, void *arg);

static struct op *op_new(struct evhttp_request *req, enum ep ep)
{
    struct op *op = calloc(1, sizeof(*op));

    if (op == NULL)
        return NULL;
    op->req = req;
    op->evcon = evhttp_request_get_connection(req);
    op->ep = ep;
    op->status = 200;
    op->next = ops;
    if (ops)
        ops->prev = op;
    ops = op;
    evhttp_connection_set_closecb(op->evcon, on_close, op);
    mock.in_flight++;
    return op;
}

/* Forgets op; its request and connection are left alone. */
static void op_free(struct op *op)
{
    if (op->prev)
        op->prev->next = op->next;
    else
        ops = op->next;
    if (op->next)
        op->next->prev = op->prev;
    if (op->timer)
        event_free(op->timer);
    if (op->watch)
        event_free(op->watch);
    if (op->evcon)
        evhttp_connection_set_closecb(op->evcon, NULL, NULL);
    free(op->model_json);
    free(op->verify_id);
    free(op->input_text);
    free(op->prev_id);
    json_decref(op->resp);
    mock.in_flight--;
    free(op);
}

void mock_api_shutdown(void)
{
    while (ops)
        op_free(ops);
    json_decref(store);
    store = NULL;
    json_decref(convs);
    convs = NULL;
}

/* Drops op's connection without (more of) an answer; frees the request. */
static void op_close_conn(struct op *op)
{
    struct evhttp_connection *evcon = op->evcon;

    op_free(op);
    evhttp_connection_free(evcon);
}

/* evhttp is freeing the connection: the client went away mid-answer. */
static void on_close(struct evhttp_connection *evcon, void *arg)
{
    struct op *op = arg;
    struct evhttp_request *req = op->req;

    (void)evcon;
    mock.stats.disconnects++;
    if (mock.verbose)
        mock_notice("client gone: %s", evhttp_request_get_uri(req));
    op_free(op);
    if (evhttp_request_get_connection(req) == NULL)
        evhttp_request_free(req);       /* detached by evhttp: ours */
}

/* Our own EOF watch while nothing is being written. */
static void on_watch(evutil_socket_t fd, short what, void *arg)
{
    struct op *op = arg;
    char c;
    ssize_t n;

    (void)what;
    n = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n > 0)
        return;                         /* pipelined bytes: stop watching */
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
        event_add(op->watch, NULL);
        return;
    }
    mock.stats.disconnects++;
    if (mock.verbose)
        mock_notice("client gone: %s", evhttp_request_get_uri(op->req));
    op_close_conn(op);
}

static void watch_start(struct op *op)
{
    struct bufferevent *bev = evhttp_connection_get_bufferevent(op->evcon);
    evutil_socket_t fd = bev ? bufferevent_getfd(bev) : -1;

    if (fd < 0)
        return;
    op->watch = event_new(mock.base, fd, EV_READ, on_watch, op);
    if (op->watch)
        event_add(op->watch, NULL);
}

static void watch_stop(struct op *op)
{
    if (op->watch) {
        event_free(op->watch);
        op->watch = NULL;
    }
}

static void on_timer(evutil_socket_t fd, short what, void *arg);

static int timer_arm(struct op *op, int ms)
{
    struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };

    if (op->timer == NULL)
        op->timer = evtimer_new(mock.base, on_timer, op);
    return op->timer ? evtimer_add(op->timer, &tv) : -1;
}

/* ---- answers -------------------------------------------------------- */

/* stall_body: the head and the first half of the body already in the
 * output buffer (chunked), then nothing; op stays until the client goes. */
static void op_stall_body(struct op *op, const char *ctype)
{
    struct evhttp_request *req = op->req;
    struct evbuffer *b = evhttp_request_get_output_buffer(req);
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    size_t len = evbuffer_get_length(b);

    evbuffer_drain(mock.scratch, evbuffer_get_length(mock.scratch));
    evbuffer_remove_buffer(b, mock.scratch, len / 2);
    evbuffer_drain(b, evbuffer_get_length(b));
    evhttp_add_header(h, "Content-Type", ctype);
    evhttp_add_header(h, "X-Mock-Name", mock.name);
    mock_count_status(200);
    mock.stats.stalls++;
    op->stage = ST_STREAM;              /* nothing scheduled: it never ends */
    evhttp_send_reply_start(req, 200, NULL);
    evhttp_send_reply_chunk(req, mock.scratch);
}

/* Sends the body already in the output buffer and forgets op. */
static void op_finish(struct op *op, int code, const char *ctype)
{
    struct evhttp_request *req = op->req;

    if (code == 200 && op->stall_body) {
        op_stall_body(op, ctype);
        return;
    }

    if (code != 200 && op->retry_after > 0) {
        char ra[16];
        snprintf(ra, sizeof(ra), "%d", op->retry_after);
        evhttp_add_header(evhttp_request_get_output_headers(req), "Retry-After", ra);
    }
    mock_count_status(code);
    if (mock.verbose)
        mock_notice("%s %d", evhttp_request_get_uri(req), code);
    op_free(op);
    mock_reply(req, code, ctype);
}

static void op_error(struct op *op, int code, const char *msg, const char *type,
                     const char *errcode)
{
    mock_add_error(evhttp_request_get_output_buffer(op->req), msg, type, errcode);
    op_finish(op, code, "application/json");
}

static void set_error(struct op *op, int status, const char *type, const char *code,
                      const char *msg)
{
    op->status = status;
    op->err_type = type;
    op->err_code = code;
    snprintf(op->err_msg, sizeof(op->err_msg), "%s", msg);
}

/* An injected status, shaped as an OpenAI error of that kind. */
static void set_injected(struct op *op, int status, const char *why)
{
    char msg[160];
    const char *type = status < 500 ? "invalid_request_error" : "server_error";
    const char *code = "mock_injected";

    switch (status) {
    case 401: code = "invalid_api_key"; break;
    case 402: type = "insufficient_quota"; code = "insufficient_quota"; break;
    case 403: code = "permission_denied"; break;
    case 404: code = "not_found"; break;
    case 429: type = "rate_limit_error"; code = "rate_limit_exceeded"; break;
    }
    snprintf(msg, sizeof(msg), "mock %s: %s %d", mock.name, why, status);
    set_error(op, status, type, code, msg);
    op->retry_after = mock.conf.retry_after;
}

static void add_usage(struct evbuffer *b, int prompt, int completion)
{
    evbuffer_add_printf(b, ",\"usage\":{\"prompt_tokens\":%d,\"completion_tokens\":%d,"
                        "\"total_tokens\":%d}}", prompt, completion, prompt + completion);
}

static void answer_chat(struct op *op)
{
    struct evbuffer *b = evhttp_request_get_output_buffer(op->req);

    int pad = mock.conf.content_bytes - (int)(sizeof("Hello from ") - 1 + strlen(mock.name));

    op->seq = ++mock.seq;
    evbuffer_add_printf(b, "{\"id\":\"chatcmpl-%s-%llu\",\"object\":\"chat.completion\","
                        "\"created\":%lld,\"model\":%s,\"choices\":[{\"index\":0,"
                        "\"message\":{\"role\":\"assistant\",\"content\":\"Hello from %s",
                        mock.name, op->seq, (long long)time(NULL), op->model_json, mock.name);
    /* --content-bytes: a realistic answer size for benchmarks. */
    for (int i = 0; i < pad; i++)
        evbuffer_add(b, &" lorem ipsum"[i % 12], 1);
    evbuffer_add_printf(b, "\"},\"finish_reason\":\"stop\"}]");
    add_usage(b, op->prompt_tokens, 3);
    op_finish(op, 200, "application/json");
}

static void answer_completion(struct op *op)
{
    struct evbuffer *b = evhttp_request_get_output_buffer(op->req);

    op->seq = ++mock.seq;
    evbuffer_add_printf(b, "{\"id\":\"cmpl-%s-%llu\",\"object\":\"text_completion\","
                        "\"created\":%lld,\"model\":%s,\"choices\":[{\"index\":0,"
                        "\"text\":\"Hello from %s\",\"logprobs\":null,"
                        "\"finish_reason\":\"stop\"}]",
                        mock.name, op->seq, (long long)time(NULL), op->model_json, mock.name);
    add_usage(b, op->prompt_tokens, 3);
    op_finish(op, 200, "application/json");
}

static void answer_embeddings(struct op *op)
{
    struct evbuffer *b = evhttp_request_get_output_buffer(op->req);
    int i, j;

    evbuffer_add_printf(b, "{\"object\":\"list\",\"data\":[");
    for (i = 0; i < op->items; i++) {
        evbuffer_add_printf(b, "%s{\"object\":\"embedding\",\"index\":%d,\"embedding\":[",
                            i ? "," : "", i);
        for (j = 0; j < EMBEDDING_DIM; j++)
            evbuffer_add_printf(b, "%s%s0.%d", j ? "," : "", (i + j) % 2 ? "-" : "",
                                (i + j) % 9 + 1);
        evbuffer_add(b, "]}", 2);
    }
    evbuffer_add_printf(b, "],\"model\":%s,\"usage\":{\"prompt_tokens\":%d,"
                        "\"total_tokens\":%d}}", op->model_json, op->prompt_tokens,
                        op->prompt_tokens);
    op_finish(op, 200, "application/json");
}

static void answer_verify(struct op *op)
{
    struct evbuffer *b = evhttp_request_get_output_buffer(op->req);

    if (!op->verified) {
        char msg[160];
        snprintf(msg, sizeof(msg), "mock %s: id not issued here", mock.name);
        op_error(op, 404, msg, "invalid_request_error", "not_found");
        return;
    }
    evbuffer_add(b, "{\"id\":", 6);
    mock_add_json_str(b, op->verify_id);
    evbuffer_add_printf(b, ",\"verified\":true,\"served_by\":\"%s\"}", mock.name);
    op_finish(op, 200, "application/json");
}

static void on_drained(struct evhttp_connection *evcon, void *arg);

/* ---- Responses, Messages and the other APIs --------------------------- */

/* Responses made here: id -> {"response": ..., "items": [...], "turn": n}. */
#define STORE_MAX 10000

static void store_put(const char *id, json_t *resp, const char *input, int turn)
{
    json_t *items = json_pack("[{s:s, s:s+, s:s, s:[{s:s, s:s}]}]", "type", "message",
                              "id", "msg_in_", id, "role", "user", "content",
                              "type", "input_text", "text", input ? input : "");

    if (store == NULL)
        store = json_object();
    if (json_object_size(store) >= STORE_MAX)
        json_object_clear(store);
    json_object_set_new(store, id, json_pack("{s:O, s:o, s:i}", "response", resp,
                                             "items", items, "turn", turn));
}

static json_t *store_get(const char *id)
{
    return store ? json_object_get(json_object_get(store, id), "response") : NULL;
}

static void add_json(struct evbuffer *b, json_t *o)
{
    char *s = json_dumps(o, JSON_COMPACT);

    if (s) {
        evbuffer_add(b, s, strlen(s));
        free(s);
    }
}

static json_t *resp_usage(const struct op *op, int out)
{
    return json_pack("{s:i, s:{s:i}, s:i, s:{s:i}, s:i}", "input_tokens", op->prompt_tokens,
                     "input_tokens_details", "cached_tokens", 0, "output_tokens", out,
                     "output_tokens_details", "reasoning_tokens", 0,
                     "total_tokens", op->prompt_tokens + out);
}

/* The response object of op, status `status`, output text `text`. */
static json_t *resp_object(struct op *op, const char *status, const char *text, int out)
{
    char id[160];
    json_t *model = json_loads(op->model_json, JSON_DECODE_ANY, NULL);

    snprintf(id, sizeof(id), "resp_%s_%llu", mock.name, op->seq);
    return json_pack("{s:s, s:s, s:I, s:s, s:o, s:o, s:[{s:s, s:s+, s:s, s:s, s:[{s:s, s:s, s:[]}]}],"
                     " s:s?, s:o, s:b, s:s, s:[], s:{s:{s:s}}, s:n, s:n, s:n, s:{}, s:f, s:f}",
                     "id", id, "object", "response", "created_at", (json_int_t)time(NULL),
                     "status", status, "model", model ? model : json_string(DEFAULT_MODEL),
                     "usage", strcmp(status, "in_progress") ? resp_usage(op, out) : json_null(),
                     "output", "type", "message", "id", "msg_", id + 5, "status", "completed",
                     "role", "assistant", "content", "type", "output_text", "text", text,
                     "annotations",
                     "previous_response_id", op->prev_id,
                     "served_by", json_string(mock.name),
                     "parallel_tool_calls", 1, "tool_choice", "auto", "tools",
                     "text", "format", "type", "text", "error", "incomplete_details",
                     "instructions", "metadata", "temperature", 1.0, "top_p", 1.0);
}

static void resp_text(const struct op *op, char *out, size_t len)
{
    snprintf(out, len, "Hello from %s (turn %d)", mock.name, op->turn);
}

static void answer_responses(struct op *op)
{
    struct evbuffer *b = evhttp_request_get_output_buffer(op->req);
    char text[160];
    json_t *r;

    op->seq = ++mock.seq;
    resp_text(op, text, sizeof(text));
    r = resp_object(op, "completed", text, 3);
    store_put(json_string_value(json_object_get(r, "id")), r, op->input_text, op->turn);
    add_json(b, r);
    json_decref(r);
    op_finish(op, 200, "application/json");
}

/* GET/DELETE /v1/responses/{id}, .../cancel, .../input_items */
static void answer_resp_id(struct op *op)
{
    struct evbuffer *b = evhttp_request_get_output_buffer(op->req);
    json_t *r = store_get(resp_path_id), *o;
    char msg[200];

    if (r == NULL) {
        snprintf(msg, sizeof(msg), "Response with id '%.100s' not found.", resp_path_id);
        op_error(op, 404, msg, "invalid_request_error", "not_found");
        return;
    }
    switch (op->ep) {
    case EP_RESP_DELETE:
        o = json_pack("{s:s, s:s, s:b}", "id", resp_path_id, "object", "response.deleted",
                      "deleted", 1);
        add_json(b, o);
        json_decref(o);
        json_object_del(store, resp_path_id);
        break;
    case EP_RESP_CANCEL:
        json_object_set_new(r, "status", json_string("cancelled"));
        add_json(b, r);
        break;
    case EP_RESP_ITEMS: {
        json_t *items = json_object_get(json_object_get(store, resp_path_id), "items");
        json_t *first = json_array_get(items, 0);
        o = json_pack("{s:s, s:O, s:O, s:O, s:b}", "object", "list", "data", items,
                      "first_id", json_object_get(first, "id"),
                      "last_id", json_object_get(first, "id"), "has_more", 0);
        add_json(b, o);
        json_decref(o);
        break;
    }
    default:
        add_json(b, r);
        break;
    }
    op_finish(op, 200, "application/json");
}

/* POST /v1/conversations; GET/POST/DELETE /v1/conversations/{id}[/...] */
static void answer_conversation(struct op *op)
{
    struct evbuffer *b = evhttp_request_get_output_buffer(op->req);
    char id[160];
    json_t *c;

    if (op->ep == EP_CONV_CREATE) {
        op->seq = ++mock.seq;
        snprintf(id, sizeof(id), "conv_%s_%llu", mock.name, op->seq);
        if (convs == NULL)
            convs = json_object();
        json_object_set_new(convs, id, json_pack("{s:i}", "turns", 0));
        evbuffer_add_printf(b, "{\"id\":\"%s\",\"object\":\"conversation\",\"created_at\":%lld,"
                            "\"metadata\":{}}", id, (long long)time(NULL));
        op_finish(op, 200, "application/json");
        return;
    }
    c = convs ? json_object_get(convs, resp_path_id) : NULL;
    if (c == NULL) {
        op_error(op, 404, "Conversation not found.", "invalid_request_error", "not_found");
        return;
    }
    if (evhttp_request_get_command(op->req) == EVHTTP_REQ_DELETE) {
        evbuffer_add_printf(b, "{\"id\":\"%s\",\"object\":\"conversation.deleted\","
                            "\"deleted\":true}", resp_path_id);
        json_object_del(convs, resp_path_id);
    } else {
        evbuffer_add_printf(b, "{\"id\":\"%s\",\"object\":\"conversation\",\"created_at\":0,"
                            "\"metadata\":{\"turns\":\"%d\",\"served_by\":\"%s\"}}", resp_path_id,
                            (int)json_integer_value(json_object_get(c, "turns")), mock.name);
    }
    op_finish(op, 200, "application/json");
}

static void answer_messages(struct op *op)
{
    struct evbuffer *b = evhttp_request_get_output_buffer(op->req);

    op->seq = ++mock.seq;
    if (op->ep == EP_COUNT_TOKENS) {
        evbuffer_add_printf(b, "{\"input_tokens\":%d}", op->prompt_tokens);
        op_finish(op, 200, "application/json");
        return;
    }
    evbuffer_add_printf(b, "{\"id\":\"msg_%s_%llu\",\"type\":\"message\",\"role\":\"assistant\","
                        "\"model\":%s,\"content\":[{\"type\":\"text\",\"text\":\"Hello from %s\"}],"
                        "\"stop_reason\":\"end_turn\",\"stop_sequence\":null,\"usage\":"
                        "{\"input_tokens\":%d,\"cache_creation_input_tokens\":0,"
                        "\"cache_read_input_tokens\":2,\"output_tokens\":3}}",
                        mock.name, op->seq, op->model_json, mock.name, op->prompt_tokens);
    op_finish(op, 200, "application/json");
}

static void answer_other(struct op *op)
{
    struct evbuffer *b = evhttp_request_get_output_buffer(op->req);
    int i;

    op->seq = ++mock.seq;
    switch (op->ep) {
    case EP_TRANSCRIBE:
        evbuffer_add_printf(b, "{\"text\":\"Hello from %s\",\"usage\":{\"type\":\"tokens\","
                            "\"input_tokens\":%d,\"output_tokens\":4,\"total_tokens\":%d}}",
                            mock.name, op->prompt_tokens, op->prompt_tokens + 4);
        break;
    case EP_SPEECH:
        /* A fake MP3: an ID3 tag, then bytes that are not JSON. */
        evbuffer_add(b, "ID3\x04\x00\x00\x00\x00\x00\x00", 10);
        for (i = 0; i < 4096; i++)
            evbuffer_add(b, &"\xff\xfb\x90\x00"[i % 4], 1);
        if (op->close_after > 0) {
            /* close_after_chunks: the first 1 KB, chunked, then a cut. */
            struct evkeyvalq *h = evhttp_request_get_output_headers(op->req);
            evbuffer_drain(mock.scratch, evbuffer_get_length(mock.scratch));
            evbuffer_remove_buffer(b, mock.scratch, 1024);
            evbuffer_drain(b, evbuffer_get_length(b));
            evhttp_add_header(h, "Content-Type", "audio/mpeg");
            evhttp_add_header(h, "X-Mock-Name", mock.name);
            mock_count_status(200);
            op->stage = ST_STREAM;
            evhttp_send_reply_start(op->req, 200, NULL);
            evhttp_send_reply_chunk_with_cb(op->req, mock.scratch, on_drained, op);
            return;
        }
        op_finish(op, 200, "audio/mpeg");
        return;
    case EP_IMAGES:
    case EP_IMAGES_FORM:
        evbuffer_add_printf(b, "{\"created\":%lld,\"data\":[{\"b64_json\":\"aGVsbG8=\","
                            "\"revised_prompt\":\"from %s\"}],\"usage\":{\"input_tokens\":%d,"
                            "\"output_tokens\":10,\"total_tokens\":%d}}", (long long)time(NULL),
                            mock.name, op->prompt_tokens, op->prompt_tokens + 10);
        break;
    case EP_MODERATIONS:
        evbuffer_add_printf(b, "{\"id\":\"modr-%s-%llu\",\"model\":%s,\"results\":[{\"flagged\":false,"
                            "\"categories\":{\"violence\":false},\"category_scores\":"
                            "{\"violence\":0.001}}]}", mock.name, op->seq, op->model_json);
        break;
    case EP_RERANK:
        evbuffer_add_printf(b, "{\"id\":\"rerank-%s-%llu\",\"model\":%s,\"results\":[{\"index\":1,"
                            "\"relevance_score\":0.9},{\"index\":0,\"relevance_score\":0.1}],"
                            "\"usage\":{\"prompt_tokens\":%d,\"total_tokens\":%d}}", mock.name,
                            op->seq, op->model_json, op->prompt_tokens, op->prompt_tokens);
        break;
    default:
        break;
    }
    op_finish(op, 200, "application/json");
}

/* ---- SSE ------------------------------------------------------------ */

static void named_end(struct op *op);

static void on_drained(struct evhttp_connection *evcon, void *arg)
{
    struct op *op = arg;

    (void)evcon;
    mock.stats.drops++;
    if (mock.verbose)
        mock_notice("%s dropped after %d chunks", evhttp_request_get_uri(op->req), op->sent);
    op_close_conn(op);
}

static void stream_end(struct op *op)
{
    struct evhttp_request *req = op->req;

    if (op->ep == EP_RESPONSES || op->ep == EP_MESSAGES) {
        named_end(op);
        mock.stats.streams_completed++;
        op_free(op);
        evhttp_send_reply_end(req);
        return;
    }
    if (op->include_usage) {
        /* OpenAI's last chunk: no choices, the whole stream's usage. */
        evbuffer_add_printf(mock.scratch, "data: {\"id\":\"%s-%s-%llu\",\"object\":\"%s\","
                            "\"model\":%s,\"choices\":[],\"usage\":{\"prompt_tokens\":%d,"
                            "\"completion_tokens\":%d,\"total_tokens\":%d}}\n\n",
                            op->ep == EP_CHAT ? "chatcmpl" : "cmpl", mock.name, op->seq,
                            op->ep == EP_CHAT ? "chat.completion.chunk" : "text_completion",
                            op->model_json, op->prompt_tokens, op->chunks,
                            op->prompt_tokens + op->chunks);
    }
    evbuffer_add(mock.scratch, "data: [DONE]\n\n", 14);
    evhttp_send_reply_chunk(req, mock.scratch);
    mock.stats.streams_completed++;
    op_free(op);
    evhttp_send_reply_end(req);
}

/* The events before the deltas of a Responses or Messages stream. */
static void named_start(struct op *op)
{
    struct evbuffer *b = mock.scratch;
    json_t *r;

    if (op->ep == EP_MESSAGES) {
        evbuffer_add_printf(b, "event: message_start\ndata: {\"type\":\"message_start\","
                            "\"message\":{\"id\":\"msg_%s_%llu\",\"type\":\"message\","
                            "\"role\":\"assistant\",\"model\":%s,\"content\":[],"
                            "\"stop_reason\":null,\"stop_sequence\":null,\"usage\":"
                            "{\"input_tokens\":%d,\"cache_creation_input_tokens\":0,"
                            "\"cache_read_input_tokens\":2,\"output_tokens\":1}}}\n\n"
                            "event: content_block_start\ndata: {\"type\":\"content_block_start\","
                            "\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n"
                            "event: ping\ndata: {\"type\":\"ping\"}\n\n",
                            mock.name, op->seq, op->model_json, op->prompt_tokens);
        return;
    }
    r = resp_object(op, "in_progress", "", 0);
    json_object_set_new(r, "output", json_array());
    evbuffer_add_printf(b, "event: response.created\ndata: {\"type\":\"response.created\","
                        "\"sequence_number\":0,\"response\":");
    add_json(b, r);
    evbuffer_add_printf(b, "}\n\nevent: response.in_progress\ndata: {\"type\":"
                        "\"response.in_progress\",\"sequence_number\":1,\"response\":");
    add_json(b, r);
    evbuffer_add_printf(b, "}\n\nevent: response.output_item.added\ndata: {\"type\":"
                        "\"response.output_item.added\",\"sequence_number\":2,\"output_index\":0,"
                        "\"item\":{\"type\":\"message\",\"id\":\"msg_%s_%llu\",\"status\":"
                        "\"in_progress\",\"role\":\"assistant\",\"content\":[]}}\n\n"
                        "event: response.content_part.added\ndata: {\"type\":"
                        "\"response.content_part.added\",\"sequence_number\":3,\"item_id\":"
                        "\"msg_%s_%llu\",\"output_index\":0,\"content_index\":0,\"part\":"
                        "{\"type\":\"output_text\",\"text\":\"\",\"annotations\":[]}}\n\n",
                        mock.name, op->seq, mock.name, op->seq);
    json_decref(r);
}

/* The events after the deltas: usage in message_delta / response.completed. */
static void named_end(struct op *op)
{
    struct evbuffer *b = mock.scratch;
    char text[4096];
    size_t n = 0;
    int i, seq = op->chunks + 4;
    json_t *r, *item, *part;

    if (op->ep == EP_MESSAGES) {
        evbuffer_add_printf(b, "event: content_block_stop\ndata: {\"type\":\"content_block_stop\","
                            "\"index\":0}\n\nevent: message_delta\ndata: {\"type\":"
                            "\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\","
                            "\"stop_sequence\":null},\"usage\":{\"output_tokens\":%d}}\n\n"
                            "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
                            op->chunks);
        evhttp_send_reply_chunk(op->req, b);
        return;
    }
    text[0] = '\0';
    for (i = 0; i < op->chunks && n < sizeof(text) - 16; i++)
        n += (size_t)snprintf(text + n, sizeof(text) - n, "tok%d ", i);
    r = resp_object(op, "completed", text, op->chunks);
    item = json_array_get(json_object_get(r, "output"), 0);
    part = json_array_get(json_object_get(item, "content"), 0);
    store_put(json_string_value(json_object_get(r, "id")), r, op->input_text, op->turn);
    evbuffer_add_printf(b, "event: response.output_text.done\ndata: {\"type\":"
                        "\"response.output_text.done\",\"sequence_number\":%d,\"item_id\":"
                        "\"msg_%s_%llu\",\"output_index\":0,\"content_index\":0,\"text\":",
                        seq, mock.name, op->seq);
    mock_add_json_str(b, text);
    evbuffer_add_printf(b, "}\n\nevent: response.content_part.done\ndata: {\"type\":"
                        "\"response.content_part.done\",\"sequence_number\":%d,\"item_id\":"
                        "\"msg_%s_%llu\",\"output_index\":0,\"content_index\":0,\"part\":",
                        seq + 1, mock.name, op->seq);
    add_json(b, part);
    evbuffer_add_printf(b, "}\n\nevent: response.output_item.done\ndata: {\"type\":"
                        "\"response.output_item.done\",\"sequence_number\":%d,"
                        "\"output_index\":0,\"item\":", seq + 2);
    add_json(b, item);
    evbuffer_add_printf(b, "}\n\nevent: response.completed\ndata: {\"type\":"
                        "\"response.completed\",\"sequence_number\":%d,\"response\":", seq + 3);
    add_json(b, r);
    evbuffer_add(b, "}\n\n", 3);
    json_decref(r);
    evhttp_send_reply_chunk(op->req, b);
}

/* Appends event i of op's stream to b ([DONE] after the last). */
static void add_event(struct op *op, struct evbuffer *b, int i)
{
    if (i >= op->chunks)
        evbuffer_add(b, "data: [DONE]\n\n", 14);
    else if (op->ep == EP_RESPONSES)
        evbuffer_add_printf(b, "event: response.output_text.delta\ndata: "
                            "{\"type\":\"response.output_text.delta\",\"sequence_number\":%d,"
                            "\"item_id\":\"msg_%s_%llu\",\"output_index\":0,"
                            "\"content_index\":0,\"delta\":\"tok%d \"}\n\n",
                            i + 4, mock.name, op->seq, i);
    else if (op->ep == EP_MESSAGES)
        evbuffer_add_printf(b, "event: content_block_delta\ndata: "
                            "{\"type\":\"content_block_delta\",\"index\":0,\"delta\":"
                            "{\"type\":\"text_delta\",\"text\":\"tok%d \"}}\n\n", i);
    else if (op->ep == EP_CHAT)
        evbuffer_add_printf(b, "data: {\"id\":\"chatcmpl-%s-%llu\","
                            "\"object\":\"chat.completion.chunk\",\"model\":%s,"
                            "\"choices\":[{\"index\":0,\"delta\":{\"content\":"
                            "\"tok%d %*s\"}}]}\n\n",
                            mock.name, op->seq, op->model_json, i,
                            mock.conf.event_bytes, "");
    else
        evbuffer_add_printf(b, "data: {\"id\":\"cmpl-%s-%llu\","
                            "\"object\":\"text_completion\",\"model\":%s,"
                            "\"choices\":[{\"index\":0,\"text\":\"tok%d \"}]}\n\n",
                            mock.name, op->seq, op->model_json, i);
}

/* partial_bytes: the first N bytes of event i go after the last whole one. */
static void add_partial(struct op *op, int i)
{
    struct evbuffer *t = evbuffer_new();

    if (t == NULL)
        return;
    add_event(op, t, i);
    evbuffer_remove_buffer(t, mock.scratch, (size_t)op->partial);
    evbuffer_free(t);
}

/* Sends chunks until the stream ends, drops, stalls, or must wait an
 * interval. */
static void stream_next(struct op *op)
{
    for (;;) {
        int close_now, stall_now;

        if (op->sent >= op->chunks) {
            stream_end(op);
            return;
        }
        add_event(op, mock.scratch, op->sent);
        op->sent++;
        close_now = op->close_after > 0 && op->sent == op->close_after;
        stall_now = op->stall_after > 0 && op->sent == op->stall_after;
        if ((close_now || stall_now) && op->partial > 0)
            add_partial(op, op->sent);
        if (close_now) {
            evhttp_send_reply_chunk_with_cb(op->req, mock.scratch, on_drained, op);
            return;
        }
        evhttp_send_reply_chunk(op->req, mock.scratch);
        if (stall_now) {
            mock.stats.stalls++;        /* nothing scheduled: it never ends */
            return;
        }
        if (op->interval_ms > 0 && op->sent < op->chunks) {
            if (timer_arm(op, op->interval_ms) == 0)
                return;
        }
    }
}

static void stream_start(struct op *op)
{
    struct evhttp_request *req = op->req;
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);

    op->seq = ++mock.seq;
    op->stage = ST_STREAM;
    evhttp_add_header(h, "Content-Type", "text/event-stream");
    evhttp_add_header(h, "Cache-Control", "no-cache");
    evhttp_add_header(h, "X-Mock-Name", mock.name);
    if (mock.conf.close_connection)
        evhttp_add_header(h, "Connection", "close");
    mock_count_status(200);
    if (mock.verbose)
        mock_notice("%s 200 stream", evhttp_request_get_uri(req));
    evhttp_send_reply_start(req, 200, NULL);
    if (op->stall_body) {
        mock.stats.stalls++;            /* the head only, then nothing */
        return;
    }
    if (op->ep == EP_RESPONSES || op->ep == EP_MESSAGES)
        named_start(op);
    stream_next(op);
}

/* ---- dispatch ------------------------------------------------------- */

/* Answers op now; it was decided on arrival. */
static void op_respond(struct op *op)
{
    if (op->drop) {
        op->stage = ST_DROP;             /* close from the loop, not from here */
        if (timer_arm(op, 0) != 0)
            op_close_conn(op);
        return;
    }
    if (op->status != 200) {
        op_error(op, op->status, op->err_msg, op->err_type, op->err_code);
        return;
    }
    if (op->garbage) {
        evbuffer_add(evhttp_request_get_output_buffer(op->req), GARBAGE_BODY,
                     sizeof(GARBAGE_BODY) - 1);
        op_finish(op, 200, "application/json");
        return;
    }
    switch (op->ep) {
    case EP_MODELS:
        evbuffer_add(evhttp_request_get_output_buffer(op->req), mock.models_body,
                     strlen(mock.models_body));
        op_finish(op, 200, "application/json");
        return;
    case EP_INFO:
        evbuffer_add(evhttp_request_get_output_buffer(op->req), mock.info_body,
                     strlen(mock.info_body));
        op_finish(op, 200, "application/json");
        return;
    case EP_CHAT:
    case EP_COMPLETIONS:
        if (op->stream)
            stream_start(op);
        else if (op->ep == EP_CHAT)
            answer_chat(op);
        else
            answer_completion(op);
        return;
    case EP_EMBEDDINGS:
        answer_embeddings(op);
        return;
    case EP_VERIFY:
        answer_verify(op);
        return;
    case EP_RESPONSES:
        if (op->stream)
            stream_start(op);
        else
            answer_responses(op);
        return;
    case EP_RESP_GET:
    case EP_RESP_DELETE:
    case EP_RESP_CANCEL:
    case EP_RESP_ITEMS:
        answer_resp_id(op);
        return;
    case EP_CONV_CREATE:
    case EP_CONV_ID:
        answer_conversation(op);
        return;
    case EP_MESSAGES:
    case EP_COUNT_TOKENS:
        if (op->stream)
            stream_start(op);
        else
            answer_messages(op);
        return;
    default:
        answer_other(op);
        return;
    }
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    struct op *op = arg;

    (void)fd;
    (void)what;
    switch (op->stage) {
    case ST_WAIT:
        watch_stop(op);
        op->stage = ST_NEW;
        op_respond(op);
        return;
    case ST_STREAM:
        stream_next(op);
        return;
    case ST_DROP:
        mock.stats.drops++;
        op_close_conn(op);
        return;
    case ST_NEW:
        return;
    }
}

/* Answers now, after delay_ms, or never (hang). */
static void op_start(struct op *op, int delay_ms, int hang)
{
    if (!hang && delay_ms <= 0) {
        op_respond(op);
        return;
    }
    op->stage = ST_WAIT;
    watch_start(op);
    if (!hang && timer_arm(op, delay_ms) != 0)
        op_respond(op);
}

/* Was id issued by this process, within the last MOCK_VERIFY_WINDOW ids? */
static int id_issued(const char *id)
{
    size_t nl = strlen(mock.name);
    unsigned long long n;
    const char *p;
    char *end;

    if (strncmp(id, "chatcmpl-", 9) == 0)
        p = id + 9;
    else if (strncmp(id, "cmpl-", 5) == 0)
        p = id + 5;
    else
        return 0;
    if (strncmp(p, mock.name, nl) != 0 || p[nl] != '-')
        return 0;
    p += nl + 1;
    if (!isdigit((unsigned char)p[0]) || p[0] == '0')
        return 0;
    errno = 0;
    n = strtoull(p, &end, 10);
    if (errno != 0 || *end != '\0')
        return 0;
    return n <= mock.seq && mock.seq - n < MOCK_VERIFY_WINDOW;
}

static int model_known(const char *model)
{
    json_t *x;
    size_t i;

    json_array_foreach(mock.conf.models, i, x)
        if (strcmp(json_string_value(x), model) == 0)
            return 1;
    return 0;
}

/* The Authorization bearer token, "" when there is none. */
static const char *bearer(struct evhttp_request *req)
{
    const char *h = evhttp_find_header(evhttp_request_get_input_headers(req),
                                       "Authorization");

    if (h == NULL)
        return "";
    while (*h == ' ')
        h++;
    if (strncasecmp(h, "Bearer ", 7) == 0)
        for (h += 7; *h == ' '; h++)
            ;
    return h;
}

/* op->model_json: the model as a quoted JSON string. */
static int op_set_model(struct op *op, const char *model)
{
    struct evbuffer *b = mock.scratch;
    size_t len;

    evbuffer_drain(b, evbuffer_get_length(b));
    mock_add_json_str(b, model ? model : DEFAULT_MODEL);
    len = evbuffer_get_length(b);
    op->model_json = malloc(len + 1);
    if (op->model_json == NULL)
        return -1;
    evbuffer_remove(b, op->model_json, len);
    op->model_json[len] = '\0';
    return 0;
}

/* The "model" field of a multipart/form-data body (a loose read: the
 * gateway checks forms strictly), NULL when none. */
static char form_model_buf[256];
static const char *form_model(struct evhttp_request *req, const char *body, size_t len,
                              char *out, size_t outlen)
{
    const char *ct = evhttp_find_header(evhttp_request_get_input_headers(req), "Content-Type");
    const char *p, *e = body + len, *end;
    static const char key[] = "name=\"model\"";

    if (ct == NULL || strncasecmp(ct, "multipart/form-data", 19) != 0)
        return NULL;
    if ((p = memmem(body, len, key, sizeof(key) - 1)) == NULL
        || (p = memmem(p, (size_t)(e - p), "\r\n\r\n", 4)) == NULL)
        return NULL;
    p += 4;
    if ((end = memmem(p, (size_t)(e - p), "\r\n", 2)) == NULL || (size_t)(end - p) >= outlen)
        return NULL;
    memcpy(out, p, (size_t)(end - p));
    out[end - p] = '\0';
    return out;
}

/* Reads what the answer needs from the body; may set a 400/404 answer. */
static int op_read_body(struct op *op, json_t *root, const char *model)
{
    json_t *v;

    if (op_set_model(op, model) != 0)
        return -1;

    if (root == NULL) {
        set_error(op, 400, "invalid_request_error", "invalid_json",
                  "request body is not a JSON object");
        return 0;
    }
    switch (op->ep) {
    case EP_CHAT:
    case EP_COMPLETIONS:
        op->stream = json_is_true(json_object_get(root, "stream"));
        op->include_usage = json_is_true(json_object_get(
            json_object_get(root, "stream_options"), "include_usage"));
        break;
    case EP_EMBEDDINGS:
        v = json_object_get(root, "input");
        if (json_is_string(v))
            op->items = 1;
        else if (json_is_array(v) && json_array_size(v) > 0)
            op->items = json_is_integer(json_array_get(v, 0)) ? 1 : (int)json_array_size(v);
        else
            set_error(op, 400, "invalid_request_error", "invalid_input",
                      "input must be a string or a non-empty array");
        break;
    case EP_VERIFY:
        v = json_object_get(root, "id");
        if (!json_is_string(v)) {
            set_error(op, 400, "invalid_request_error", "invalid_id",
                      "body must be {\"id\": \"<chat id>\"}");
            break;
        }
        op->verify_id = strdup(json_string_value(v));
        if (op->verify_id == NULL)
            return -1;
        op->verified = id_issued(op->verify_id);
        break;
    case EP_RESPONSES:
    case EP_MESSAGES:
        op->stream = json_is_true(json_object_get(root, "stream"));
        v = json_object_get(root, op->ep == EP_RESPONSES ? "input" : "messages");
        if (json_is_string(v)) {
            op->input_text = strdup(json_string_value(v));
        } else if (v != NULL) {
            op->input_text = json_dumps(v, JSON_COMPACT);
        } else {
            set_error(op, 400, "invalid_request_error", "missing_input",
                      op->ep == EP_RESPONSES ? "input is required" : "messages is required");
            break;
        }
        op->turn = 1;
        v = json_object_get(root, "previous_response_id");
        if (op->ep == EP_RESPONSES && json_is_string(v)) {
            json_t *e = store ? json_object_get(store, json_string_value(v)) : NULL;
            op->prev_id = strdup(json_string_value(v));
            if (e == NULL) {
                char msg[200];
                snprintf(msg, sizeof(msg), "Previous response with id '%.100s' not found.",
                         json_string_value(v));
                set_error(op, 404, "invalid_request_error", "previous_response_not_found", msg);
                break;
            }
            op->turn = (int)json_integer_value(json_object_get(e, "turn")) + 1;
        }
        v = json_object_get(root, "conversation");
        if (json_is_object(v))
            v = json_object_get(v, "id");
        if (op->ep == EP_RESPONSES && json_is_string(v)) {
            json_t *c = convs ? json_object_get(convs, json_string_value(v)) : NULL;
            if (c == NULL) {
                set_error(op, 404, "invalid_request_error", "conversation_not_found",
                          "Conversation not found.");
                break;
            }
            op->turn = (int)json_integer_value(json_object_get(c, "turns")) + 1;
            json_object_set_new(c, "turns", json_integer(op->turn));
        }
        break;
    default:
        break;
    }
    if (op->status == 200 && mock.conf.strict_models &&
        (op->ep == EP_CHAT || op->ep == EP_COMPLETIONS || op->ep == EP_EMBEDDINGS) &&
        !model_known(model ? model : DEFAULT_MODEL)) {
        char msg[160];
        snprintf(msg, sizeof(msg), "The model `%.100s` does not exist", model ? model : "");
        set_error(op, 404, "invalid_request_error", "model_not_found", msg);
    }
    return 0;
}

/*
 * Samples the faults for an API call. fail_keys first (no delay, never
 * counted by fail_next); then, when fail_next is set, the next N calls get
 * the faults (a plain 500 if none is set) and the faults are cleared after
 * the Nth. Returns the delay to apply; *hang set when it never answers.
 */
static int op_faults(struct op *op, const char *key, const char *model, int *hang)
{
    struct mock_conf *c = &mock.conf;
    json_t *fk = json_object_get(c->fail_keys, key);
    json_t *fm = model ? json_object_get(c->fail_models, model) : NULL;
    int delay, any;

    *hang = 0;
    if (fk != NULL && json_integer_value(fk) != 200) {
        set_injected(op, (int)json_integer_value(fk), "key rejected with");
        return 0;
    }
    if (fm != NULL && json_integer_value(fm) != 200) {
        set_injected(op, (int)json_integer_value(fm), "model failing with");
        return 0;
    }
    any = c->status != 200 || c->delay_ms > 0 || c->hang || c->garbage ||
          c->drop || c->close_after_chunks > 0 || c->stall_after_chunks > 0 || c->stall_body;
    if (c->fail_next == 0 && !any)
        return 0;

    if (c->status != 200 || (c->fail_next > 0 && !any))
        set_injected(op, c->status != 200 ? c->status : 500, "injected status");
    else if (c->garbage)
        op->status = 200;               /* garbage wins over the request's own 400 */
    op->garbage = c->garbage;
    op->drop = c->drop;
    op->close_after = c->close_after_chunks;
    op->stall_after = c->stall_after_chunks;
    op->stall_body = c->stall_body;
    op->partial = c->partial_bytes;
    *hang = c->hang;
    delay = c->delay_ms;

    if (c->fail_next > 0 && --c->fail_next == 0) {
        c->status = 200;
        c->delay_ms = 0;
        c->hang = c->garbage = c->drop = 0;
        c->close_after_chunks = c->stall_after_chunks = c->stall_body = 0;
        mock_notice("fail_next used up: faults cleared");
    }
    return delay;
}

static const struct ep_def *find_ep(const char *path)
{
    size_t i;

    if (strncmp(path, "/v1/conversations/", 18) == 0 && path[18]) {
        const char *id = path + 18, *slash = strchr(id, '/');
        size_t n = slash ? (size_t)(slash - id) : strlen(id);
        if (n == 0 || n >= sizeof(resp_path_id))
            return NULL;
        memcpy(resp_path_id, id, n);
        resp_path_id[n] = '\0';
        resp_ep.path = path;
        resp_ep.ep = EP_CONV_ID;
        resp_ep.method = EVHTTP_REQ_GET;   /* or DELETE, POST (see mock_api) */
        return &resp_ep;
    }
    if (strncmp(path, "/v1/responses/", 14) == 0 && path[14]) {
        const char *id = path + 14, *slash = strchr(id, '/');
        size_t n = slash ? (size_t)(slash - id) : strlen(id);
        if (n == 0 || n >= sizeof(resp_path_id))
            return NULL;
        memcpy(resp_path_id, id, n);
        resp_path_id[n] = '\0';
        resp_ep.path = path;
        if (slash == NULL) {
            resp_ep.ep = EP_RESP_GET;      /* GET, or DELETE (see mock_api) */
            resp_ep.method = EVHTTP_REQ_GET;
        } else if (strcmp(slash, "/cancel") == 0) {
            resp_ep.ep = EP_RESP_CANCEL;
            resp_ep.method = EVHTTP_REQ_POST;
        } else if (strcmp(slash, "/input_items") == 0) {
            resp_ep.ep = EP_RESP_ITEMS;
            resp_ep.method = EVHTTP_REQ_GET;
        } else {
            return NULL;
        }
        return &resp_ep;
    }
    for (i = 0; i < sizeof(endpoints) / sizeof(endpoints[0]); i++)
        if (strcmp(path, endpoints[i].path) == 0)
            return &endpoints[i];
    return NULL;
}

static void reply_error_now(struct evhttp_request *req, int code, const char *msg,
                            const char *errcode)
{
    mock_add_error(evhttp_request_get_output_buffer(req), msg,
                   "invalid_request_error", errcode);
    mock_count_status(code);
    mock_reply(req, code, "application/json");
}

void mock_api(struct evhttp_request *req, const char *path)
{
    const struct ep_def *d = find_ep(path);
    struct evbuffer *in;
    const char *body, *key, *model = NULL;
    json_t *root = NULL;
    struct op *op;
    size_t len;
    int delay, hang;

    mock_count(mock.stats.paths, path);
    if (strncmp(path, "/v1/", 4) == 0)
        mock.stats.requests++;
    if (d == NULL) {
        /* Recorded with its query: what a pass-through sent. */
        in = evhttp_request_get_input_buffer(req);
        len = evbuffer_get_length(in);
        mock_record_call(req, evhttp_request_get_uri(req), bearer(req), NULL,
                         len ? (const char *)evbuffer_pullup(in, -1) : "", len);
        reply_error_now(req, 404, "unknown path", "not_found");
        return;
    }
    if (d == &resp_ep && d->ep == EP_CONV_ID)
        resp_ep.method = evhttp_request_get_command(req);
    if (d == &resp_ep && d->ep == EP_RESP_GET
        && evhttp_request_get_command(req) == EVHTTP_REQ_DELETE) {
        resp_ep.ep = EP_RESP_DELETE;
        resp_ep.method = EVHTTP_REQ_DELETE;
    }
    if (evhttp_request_get_command(req) != d->method) {
        reply_error_now(req, 405, "method not allowed", "method_not_allowed");
        return;
    }
    op = op_new(req, d->ep);
    if (op == NULL) {
        reply_error_now(req, 500, "out of memory", "internal_error");
        return;
    }

    if (d->ep == EP_MODELS || d->ep == EP_INFO) {
        if (mock.conf.probe_status != 200)
            set_injected(op, mock.conf.probe_status, "probe status");
        op_start(op, mock.conf.probe_delay_ms, 0);
        return;
    }

    in = evhttp_request_get_input_buffer(req);
    len = evbuffer_get_length(in);
    body = len ? (const char *)evbuffer_pullup(in, -1) : "";
    if (len > 0)
        root = json_loadb(body, len, 0, NULL);
    if (root != NULL && !json_is_object(root)) {
        json_decref(root);
        root = NULL;
    }
    if (root != NULL)
        model = json_string_value(json_object_get(root, "model"));
    key = bearer(req);
    if (d->ep == EP_TRANSCRIBE || d->ep == EP_IMAGES_FORM)
        model = form_model(req, body, len, form_model_buf, sizeof(form_model_buf));
    mock_record_call(req, path, key, model, body, len);

    if (d->ep == EP_TRANSCRIBE || d->ep == EP_IMAGES_FORM || d->ep == EP_RESP_GET
        || d->ep == EP_CONV_ID || d->ep == EP_CONV_CREATE
        || d->ep == EP_RESP_DELETE || d->ep == EP_RESP_CANCEL || d->ep == EP_RESP_ITEMS) {
        /* Not JSON: a form (checked loosely), or no body at all. */
        json_decref(root);
        root = NULL;
        if (op_set_model(op, model) != 0) {
            op_free(op);
            reply_error_now(req, 500, "out of memory", "internal_error");
            return;
        }
        if ((d->ep == EP_TRANSCRIBE || d->ep == EP_IMAGES_FORM) && model == NULL)
            set_error(op, 400, "invalid_request_error", "invalid_form",
                      "multipart/form-data body with a \"model\" field required");
        op->prompt_tokens = (int)(len / 4) + 1;
        delay = op_faults(op, key, model, &hang);
        op->chunks = mock.conf.chunks;
        op->interval_ms = mock.conf.chunk_interval_ms;
        op_start(op, delay, hang);
        return;
    }
    if (op_read_body(op, root, model) != 0) {
        json_decref(root);
        op_free(op);
        reply_error_now(req, 500, "out of memory", "internal_error");
        return;
    }
    op->prompt_tokens = (int)(len < 400000 ? len / 4 : 100000) + 1;
    delay = op_faults(op, key, model, &hang);  /* an injected fault wins over a 400/404 */
    json_decref(root);                         /* model pointed into it */
    op->chunks = mock.conf.chunks;
    op->interval_ms = mock.conf.chunk_interval_ms;
    op_start(op, delay, hang);
}
