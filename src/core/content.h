/*
 * content.h -- the text of a chat answer, kept for /v1/verify
 * (sessions.keep_content; seed 001: "No cached content for this id" once
 * it is gone).
 *
 * The text is choices[0].message.content of a chat.completion, or the
 * choices[0].delta.content pieces of a chat.completion.chunk stream joined
 * in order. It is kept JSON-encoded (a JSON string, quotes included), so it
 * never holds a NUL and goes into the verify body as it is.
 *
 * Pure: no I/O, no clock.
 */
#ifndef INFERGATE_CONTENT_H
#define INFERGATE_CONTENT_H

#include <stddef.h>

/* The JSON string of a chat answer's text, at most max bytes (the text is
 * cut on a UTF-8 character boundary to fit), malloc'd; NULL when the body
 * holds no text (not JSON, no choices, content null) or max < 3. */
char *content_from_json(const char *body, size_t len, size_t max);

/* The same for a whole SSE stream of chat.completion.chunk events. */
char *content_from_sse(const char *stream, size_t len, size_t max);

/* body (a JSON object) with "content" set to the JSON value `content`,
 * compact, malloc'd; NULL when either does not parse. */
char *content_add_to_body(const char *body, size_t len, const char *content);

#endif
