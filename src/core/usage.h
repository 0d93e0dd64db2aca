/*
 * usage.h -- token usage read from upstream answers, without parsing them.
 *
 * Every API family reports usage in a `usage` object near the end of its
 * answer: chat/completions/embeddings (prompt_tokens, completion_tokens,
 * prompt_tokens_details.cached_tokens), Responses (input_tokens,
 * output_tokens, input_tokens_details.cached_tokens) and Anthropic Messages
 * (input_tokens, output_tokens, cache_read_input_tokens,
 * cache_creation_input_tokens). Only the bytes that carry it are looked at:
 * the last USAGE_TAIL bytes of a JSON body; for a stream, a fixed ring of
 * its last USAGE_TAIL bytes plus its first USAGE_HEAD bytes (Anthropic puts
 * the input count in the first event, the output count in the last). The
 * `usage` object found is validated and read with jscan (no tree, no
 * allocation).
 *
 * `input` counts every input token, cached ones included (as OpenAI's
 * prompt_tokens does; for Messages: input_tokens + cache_creation_input_tokens
 * + cache_read_input_tokens); `cached` is the part of it read from a cache.
 *
 * Pure: no I/O, no clock.
 */
#ifndef INFERGATE_USAGE_H
#define INFERGATE_USAGE_H

#include <stddef.h>
#include <stdint.h>

#define USAGE_TAIL  8192
#define USAGE_HEAD  4096

#define USAGE_HAVE_INPUT  1u
#define USAGE_HAVE_OUTPUT 2u
#define USAGE_HAVE_CACHED 4u

struct usage {
    uint64_t input, output, cached;
    unsigned have;               /* USAGE_HAVE_* bits; 0 = nothing found */
};

/* Reads one `usage` object (its raw text, braces included). Returns 0 when
 * it is a valid object with at least one count, else -1. */
int usage_parse_object(const char *obj, size_t len, struct usage *u);

/* The last complete `"usage": {...}` in buf[0..len) (a JSON body's end, a
 * stream's tail). Returns 0 when found. */
int usage_scan_last(const char *buf, size_t len, struct usage *u);

/* The first complete `"usage": {...}` in buf[0..len). */
int usage_scan_first(const char *buf, size_t len, struct usage *u);

/* A stream's head and tail, fed chunk by chunk: kept as it came while it
 * is at most USAGE_TAIL bytes (a buffer that grows from USAGE_STREAM_MIN),
 * then its first USAGE_HEAD bytes and a ring of its last USAGE_TAIL. */
#define USAGE_STREAM_MIN 512
struct usage_stream {
    char    *buf;                /* the stream so far, then the ring */
    size_t   cap;
    char    *head;               /* NULL until the stream outgrows the tail */
    size_t   head_len;
    size_t   pos;                /* ring: next write position (total % TAIL) */
    uint64_t total;              /* bytes fed */
    int      failed;             /* out of memory: no counts */
};

/* An empty one (usage_stream_free() it), or NULL without memory. */
struct usage_stream *usage_stream_new(void);
void usage_stream_free(struct usage_stream *s);

void usage_stream_feed(struct usage_stream *s, const char *data, size_t len);

/* At the end of a stream: the counts of the last usage object in the tail,
 * completed by those of the first usage object in the head (Anthropic's
 * message_start). Returns 0 when anything was found. */
int usage_stream_result(struct usage_stream *s, struct usage *u);

/* 1 when an SSE event's data is an OpenAI chat/completions chunk that only
 * carries usage (`"choices": []` and a `usage` object): the chunk
 * `stream_options.include_usage` adds at the end of a stream. */
int usage_only_chunk(const char *data, size_t len);

/* The same for one whole SSE event (its lines, without the blank line
 * that ends it): 1 when its single `data:` line is such a chunk. */
int usage_only_event(const char *ev, size_t len);

/* Request bodies: `stream_options.include_usage` for a streamed
 * chat/completions request. USAGE_ASKED: the client asked for usage
 * itself; USAGE_ADD: the body has no stream_options (insert one member
 * after the opening brace); USAGE_REWRITE: stream_options is there without
 * include_usage: true (the body must be rewritten). `stream_options` is the
 * raw text of that member's value, NULL when absent. */
enum usage_ask { USAGE_ASKED = 0, USAGE_ADD, USAGE_REWRITE };
enum usage_ask usage_ask_of(const char *stream_options, size_t len);

#endif
