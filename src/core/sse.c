/*
 * sse.c -- Server-Sent Events framing for relayed streams (see sse.h).
 */
#include <stdlib.h>
#include <string.h>

#include "sse.h"

static int is_eol(unsigned char c)
{
    return c == '\n' || c == '\r';
}

/* Does the byte c, after p1 (and p2 before it), end a blank line? Lines end
 * with CR, LF or CRLF; a blank line is a line end right after another. A CR
 * counts at once (a LF after it only completes the same line end). */
static int ends_blank_line(unsigned char p2, unsigned char p1, unsigned char c)
{
    if (c == '\r')
        return is_eol(p1);
    if (c != '\n')
        return 0;
    if (p1 == '\n')
        return 1;
    return p1 == '\r' && is_eol(p2);    /* CRLF after a line end */
}

size_t sse_event_end(struct sse_track *t, const char *data, size_t len)
{
    const unsigned char *b = (const unsigned char *)data;
    unsigned char p0 = t->prev[0], p1 = t->prev[1];
    size_t i, end = 0;

    if (len == 0)
        return 0;
    /* From the end: the first hit is the last boundary. */
    for (i = len; i-- > 0;) {
        unsigned char c = b[i], q1, q2;
        if (!is_eol(c))
            continue;
        q1 = i >= 1 ? b[i - 1] : p1;
        q2 = i >= 2 ? b[i - 2] : i == 1 ? p1 : p0;
        if (ends_blank_line(q2, q1, c)) {
            end = i + 1;
            break;
        }
    }
    if (len >= 2) {
        t->prev[0] = b[len - 2];
        t->prev[1] = b[len - 1];
    } else {
        t->prev[0] = p1;
        t->prev[1] = b[0];
    }
    return end;
}

char *sse_frame(const char *event, const char *data, size_t *len)
{
    size_t ne = strlen(event), nd = strlen(data);
    char *f = malloc(7 + ne + 7 + nd + 3), *w = f;

    if (f == NULL)
        return NULL;
    memcpy(w, "event: ", 7);
    memcpy(w += 7, event, ne);
    memcpy(w += ne, "\ndata: ", 7);
    memcpy(w += 7, data, nd);
    memcpy(w += nd, "\n\n", 3);
    *len = (size_t)(w + 2 - f);
    return f;
}

int sse_next_data(const char **p, const char *end, const char **val, size_t *vlen)
{
    while (*p < end) {
        const char *d = *p, *eol = memchr(d, '\n', (size_t)(end - d));
        const char *le = eol ? eol : end;

        *p = eol ? eol + 1 : end;
        if (le > d && le[-1] == '\r')
            le--;
        if (le - d < 5 || memcmp(d, "data:", 5) != 0)
            continue;
        d += 5;
        while (d < le && *d == ' ')
            d++;
        *val = d;
        *vlen = (size_t)(le - d);
        return 1;
    }
    return 0;
}
