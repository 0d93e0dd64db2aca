/*
 * cache_sse.h -- the response cache between streams and JSON answers: a
 * complete chat/completions stream becomes the JSON answer it stands for
 * (what the cache stores), and a stored JSON answer becomes a valid SSE
 * stream of the API's shape for a streaming request (one chunk per choice
 * with the whole text, one with the finish_reason, the usage-only chunk
 * when the request asked for it, then `data: [DONE]`).
 *
 * Only chat.completion and text_completion answers; streams carrying what
 * a JSON answer cannot be rebuilt from here (tool calls, function calls,
 * logprobs, refusals) are not converted.
 *
 * Pure: no I/O, no clock.
 */
#ifndef INFERGATE_CACHE_SSE_H
#define INFERGATE_CACHE_SSE_H

#include <stddef.h>

/* The JSON answer of a whole stream (chat = 1: chat.completion.chunk
 * events, 0: text_completion ones), malloc'd; NULL when not convertible. */
char *cache_sse_to_json(int chat, const char *sse, size_t len);

/* The SSE stream of a JSON answer, malloc'd, its length in *outlen; with
 * usage, the usage-only chunk before [DONE] (when the answer has usage).
 * NULL when not convertible. */
char *cache_json_to_sse(int chat, const char *json, size_t len, int usage, size_t *outlen);

/* The request body asks for stream_options.include_usage: true. */
int cache_sse_wants_usage(const char *body, size_t len);

#endif
