/*
 * sse.h -- Server-Sent Events framing for relayed streams: where the events
 * of a byte stream end, and the frame of an event the gateway adds (the
 * error event that ends a broken stream; its JSON is route.c's).
 *
 * A relayed stream may break, or be cut, at any byte. Appending an error
 * event after a partial event would splice the two into one garbled event,
 * and ending a partial event with a blank line would hand the client its
 * partial data as a complete event. So the relay passes on whole events
 * only: sse_event_end() says how much of a chunk ends on an event boundary
 * (a blank line: CR, LF or CRLF twice, as the SSE spec reads lines) and the
 * caller holds the rest until the event's end arrives. The check looks at
 * the last bytes of the chunk first, so a chunk of whole events (the usual
 * case) costs a couple of compares.
 *
 * Pure: no I/O, no clock.
 */
#ifndef INFERGATE_SSE_H
#define INFERGATE_SSE_H

#include <stddef.h>

/* The last two bytes of the stream so far: the context a boundary check
 * needs at the start of the next chunk. Zeroed = the stream's start. */
struct sse_track {
    unsigned char prev[2];
};

/* Length of the prefix of data[0..len) that ends on an event boundary
 * (the end of a blank line); 0 when no event ends in it. Advances t past
 * the whole chunk. */
size_t sse_event_end(struct sse_track *t, const char *data, size_t len);

/* "event: EVENT\ndata: DATA\n\n", malloc'd and NUL-terminated, its
 * length in *len; NULL when out of memory. DATA must be one line (compact
 * JSON is). */
char *sse_frame(const char *event, const char *data, size_t *len);

/* The next `data:` line of [*p, end): its value (after "data:" and the
 * spaces that follow, without the line end, CR or LF) in *val and *vlen.
 * Advances *p past that line; other lines are skipped. 0 when no data
 * line is left. For readers of a whole stored stream (cache, kept
 * content), not for the relay. */
int sse_next_data(const char **p, const char *end, const char **val, size_t *vlen);

#endif
