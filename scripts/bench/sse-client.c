/*
 * sse-client.c -- a tiny bounded HTTP/1.1 load client for `make bench`
 * that measures what wrk cannot: the time to the first body chunk of a
 * streamed (SSE) response, as well as the time to its end.
 *
 *   sse-client -a HOST:PORT -b BODYFILE [-p PATH] [-c CONNS] [-d SECS]
 *              [-w WARMUP_SECS] [-r RATE] [-n MAX_REQUESTS] [-s EVENTS]
 *
 * Every connection is kept alive and sends `POST PATH` with the body of
 * BODYFILE, again and again. With -r 0 (default) each connection sends its
 * next request as soon as the previous answer ended (closed loop, like wrk);
 * with -r RATE requests start on a fixed schedule of RATE per second over
 * all connections (open loop; a start that finds no free connection waits
 * and is counted as "late"). Requests that start during the first
 * WARMUP_SECS are not recorded. The run stops after SECS (and WARMUP) or
 * MAX_REQUESTS recorded answers, whichever comes first; answers still in
 * flight then are dropped, not counted.
 *
 * ttfb  = request written -> first byte of the first non-empty body chunk
 *         (for an SSE answer: the first `data:` event);
 * total = request written -> end of the body (terminating zero chunk).
 * An answer that is not 200, or a connection that breaks, is an error; a
 * broken connection is reopened 100 ms later.
 *
 * "open_streams" counts the answers that had started (first body byte seen)
 * and had not ended when the run stopped: with a slow upstream (a chunk
 * every 10 s), -c 10000 and no -r, that is how many idle streams were held.
 *
 * -s EVENTS checks every recorded stream's frames: the mock numbers its
 * chat deltas ("content":"tok0 ", "tok1 ", ...), so each `data:` line must
 * carry the next number, EVENTS of them, then `data: [DONE]`. A number
 * skipped (or missing at the end) counts as lost, one lower than expected
 * as reordered; "seq" in the output sums them over the streams checked.
 *
 * Prints one JSON object on stdout. Loopback only by design: HOST must be
 * an IPv4 address. Depends on nothing but libc (Linux epoll).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define MAX_CONNS   16384
#define HEAD_MAX    16384
#define RBUF        65536

enum cstate { C_IDLE = 0, C_CONNECTING, C_SENDING, C_HEAD, C_BODY, C_DEAD };
enum body { B_NONE, B_LENGTH, B_CHUNKED };
enum chunk { K_SIZE, K_DATA, K_DATA_CRLF, K_TRAILER };

struct conn {
    int         fd;
    enum cstate st;
    size_t      sent;
    int64_t     t_send;         /* ns */
    int64_t     t_first;        /* ns, 0 until the first body byte */
    int64_t     t_dead;         /* ns, when it broke (reconnect 100 ms later) */
    int         record;         /* started after the warm-up */
    int         status;
    int         close_after;
    enum body   btype;
    int64_t     remaining;      /* Content-Length left, or chunk bytes left */
    enum chunk  kst;
    char        line[64];       /* chunk-size line being read */
    size_t      nline;
    char        head[HEAD_MAX];
    size_t      nhead;
    char        sline[512];     /* -s: the SSE line being read */
    size_t      nsline;
    int         next_seq;       /* -s: the number the next delta must carry */
    int         done_seen;      /* -s: data: [DONE] arrived */
    uint64_t    lost, reordered;
};

struct lat {
    uint32_t *v;                /* microseconds */
    size_t    n, cap;
};

static struct sockaddr_in addr;
static char  *req;
static size_t req_len;
static struct conn conns[MAX_CONNS];
static int    nconns = 64, epfd;
static struct lat ttfb, total;
static uint64_t n_ok, n_err, n_late, n_connect_err, bytes_in;
static volatile sig_atomic_t stop_flag;
static int    seq_events = -1;                /* -s */
static uint64_t seq_streams, seq_bad, seq_frames, seq_lost, seq_reordered;

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void die(const char *msg)
{
    fprintf(stderr, "sse-client: %s\n", msg);
    exit(2);
}

static void lat_add(struct lat *l, int64_t ns)
{
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 65536;
        l->v = realloc(l->v, l->cap * sizeof(*l->v));
        if (l->v == NULL)
            die("out of memory");
    }
    l->v[l->n++] = (uint32_t)(ns / 1000 > UINT32_MAX ? UINT32_MAX : ns / 1000);
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static double pct(const struct lat *l, double p)
{
    size_t i;
    if (l->n == 0)
        return 0;
    i = (size_t)(p / 100.0 * (double)(l->n - 1) + 0.5);
    return l->v[i];
}

static void conn_open(struct conn *c)
{
    int one = 1;

    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0)
        die("socket() failed");
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    c->st = C_CONNECTING;
    if (connect(c->fd, (struct sockaddr *)&addr, sizeof(addr)) < 0 && errno != EINPROGRESS) {
        n_connect_err++;
        close(c->fd);
        c->fd = -1;
        c->st = C_DEAD;
        c->t_dead = now_ns();
        return;
    }
    {
        struct epoll_event ev = { .events = EPOLLOUT, .data.ptr = c };
        epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev);
    }
}

static void conn_close(struct conn *c)
{
    if (c->fd >= 0) {
        epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
    }
    c->fd = -1;
    c->st = C_DEAD;
    c->t_dead = now_ns();
}

static void set_events(struct conn *c, uint32_t events)
{
    struct epoll_event ev = { .events = events, .data.ptr = c };
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

static void try_send(struct conn *c)
{
    while (c->sent < req_len) {
        ssize_t w = send(c->fd, req + c->sent, req_len - c->sent, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EAGAIN) {
                set_events(c, EPOLLOUT);
                return;
            }
            n_err++;
            conn_close(c);
            return;
        }
        c->sent += (size_t)w;
    }
    c->st = C_HEAD;
    c->nhead = 0;
    set_events(c, EPOLLIN);
}

/* Starts a request on an idle, connected connection. */
static void start_req(struct conn *c, int64_t t, int record)
{
    c->sent = 0;
    c->t_send = t;
    c->t_first = 0;
    c->record = record;
    c->status = 0;
    c->close_after = 0;
    c->nsline = 0;
    c->next_seq = 0;
    c->done_seen = 0;
    c->lost = c->reordered = 0;
    c->st = C_SENDING;
    try_send(c);
}

static void finish(struct conn *c)
{
    int64_t t = now_ns();

    if (c->record) {
        if (c->status == 200 && seq_events >= 0) {
            if (!c->done_seen && c->next_seq < seq_events)
                c->lost += (uint64_t)(seq_events - c->next_seq);
            seq_streams++;
            seq_lost += c->lost;
            seq_reordered += c->reordered;
            seq_bad += (c->lost || c->reordered || !c->done_seen);
        }
        if (c->status == 200) {
            n_ok++;
            lat_add(&ttfb, (c->t_first ? c->t_first : t) - c->t_send);
            lat_add(&total, t - c->t_send);
        } else {
            n_err++;
        }
    }
    if (c->close_after) {
        conn_close(c);
        return;
    }
    c->st = C_IDLE;
    set_events(c, 0);
}

static void note_first(struct conn *c)
{
    if (c->t_first == 0)
        c->t_first = now_ns();
}

/* Does the header line starting at p (ending before lim) contain word? */
static int line_has(const char *p, const char *lim, const char *word)
{
    const char *e = memchr(p, '\n', (size_t)(lim - p));
    size_t wl = strlen(word);

    if (e == NULL)
        e = lim;
    for (; p + wl <= e; p++)
        if (strncasecmp(p, word, wl) == 0)
            return 1;
    return 0;
}

/* Parses the head in c->head[0..end); returns -1 when malformed. */
static int parse_head(struct conn *c, size_t end)
{
    char *p = c->head, *lim = c->head + end, *nl;

    if (end < 12 || strncmp(p, "HTTP/1.", 7) != 0)
        return -1;
    c->status = atoi(p + 9);
    c->btype = B_NONE;
    c->remaining = 0;
    while ((nl = memchr(p, '\n', (size_t)(lim - p))) != NULL) {
        p = nl + 1;
        if (strncasecmp(p, "content-length:", 15) == 0) {
            c->btype = B_LENGTH;
            c->remaining = strtoll(p + 15, NULL, 10);
        } else if (strncasecmp(p, "transfer-encoding:", 18) == 0) {
            if (line_has(p, lim, "chunked"))
                c->btype = B_CHUNKED;
        } else if (strncasecmp(p, "connection:", 11) == 0) {
            if (line_has(p, lim, "close"))
                c->close_after = 1;
        }
    }
    if (c->btype == B_CHUNKED) {
        c->kst = K_SIZE;
        c->nline = 0;
    }
    return 0;
}

/* -s: one complete SSE line of the stream. */
static void seq_line(struct conn *c, const char *l, size_t n)
{
    static const char key[] = "\"content\":\"tok";
    const char *k;
    long v;

    if (n < 6 || memcmp(l, "data: ", 6) != 0)
        return;
    if (n >= 12 && memcmp(l + 6, "[DONE]", 6) == 0) {
        if (c->next_seq < seq_events)
            c->lost += (uint64_t)(seq_events - c->next_seq);
        c->next_seq = seq_events;
        c->done_seen = 1;
        return;
    }
    if ((k = memmem(l, n, key, sizeof(key) - 1)) == NULL)
        return;
    v = strtol(k + sizeof(key) - 1, NULL, 10);
    seq_frames++;
    if (c->done_seen || v < c->next_seq) {
        c->reordered++;
        return;
    }
    if (v > c->next_seq)
        c->lost += (uint64_t)(v - c->next_seq);
    c->next_seq = (int)v + 1;
}

static void seq_bytes(struct conn *c, const char *d, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++) {
        if (d[i] == '\n') {
            seq_line(c, c->sline, c->nsline);
            c->nsline = 0;
        } else if (c->nsline < sizeof(c->sline)) {
            c->sline[c->nsline++] = d[i];
        }
    }
}

/* Consumes body bytes; returns 1 when the answer is complete, -1 on error. */
static int body_bytes(struct conn *c, const char *d, size_t n)
{
    size_t i = 0;

    if (c->btype == B_NONE)
        return 1;
    if (c->btype == B_LENGTH) {
        if (n > 0)
            note_first(c);
        c->remaining -= (int64_t)n;
        return c->remaining <= 0 ? 1 : 0;
    }
    while (i < n) {
        switch (c->kst) {
        case K_SIZE:
        case K_TRAILER:
            if (d[i] == '\n') {
                c->line[c->nline < sizeof(c->line) ? c->nline : sizeof(c->line) - 1] = 0;
                if (c->kst == K_TRAILER) {
                    if (c->nline <= 1)          /* the empty line: done */
                        return 1;
                } else {
                    c->remaining = strtoll(c->line, NULL, 16);
                    c->kst = c->remaining == 0 ? K_TRAILER : K_DATA;
                }
                c->nline = 0;
            } else if (c->nline < sizeof(c->line) - 1) {
                c->line[c->nline++] = d[i];
            }
            i++;
            break;
        case K_DATA: {
            size_t take = (size_t)c->remaining < n - i ? (size_t)c->remaining : n - i;
            note_first(c);
            if (seq_events >= 0)
                seq_bytes(c, d + i, take);
            c->remaining -= (int64_t)take;
            i += take;
            if (c->remaining == 0) {
                c->kst = K_DATA_CRLF;
                c->nline = 0;
            }
            break;
        }
        case K_DATA_CRLF:
            if (d[i] == '\n')
                c->kst = K_SIZE;
            i++;
            break;
        }
    }
    return 0;
}

static void on_read(struct conn *c)
{
    char buf[RBUF];

    for (;;) {
        ssize_t r = recv(c->fd, buf, sizeof(buf), 0);
        size_t off = 0;
        int done = 0;

        if (r < 0 && errno == EAGAIN)
            return;
        if (r <= 0) {
            if (c->record && c->st != C_IDLE)
                n_err++;
            conn_close(c);
            return;
        }
        bytes_in += (uint64_t)r;
        if (c->st == C_HEAD) {
            size_t take = (size_t)r < HEAD_MAX - c->nhead ? (size_t)r : HEAD_MAX - c->nhead;
            char *e;
            memcpy(c->head + c->nhead, buf, take);
            c->nhead += take;
            e = memmem(c->head, c->nhead, "\r\n\r\n", 4);
            if (e == NULL) {
                if (c->nhead == HEAD_MAX) {
                    n_err++;
                    conn_close(c);
                    return;
                }
                continue;
            }
            {
                size_t hend = (size_t)(e - c->head) + 4;
                size_t already = c->nhead - take;      /* head bytes before this read */
                if (parse_head(c, hend) < 0) {
                    n_err++;
                    conn_close(c);
                    return;
                }
                off = hend - already;
                c->st = C_BODY;
            }
        }
        if (c->st == C_BODY) {
            done = body_bytes(c, buf + off, (size_t)r - off);
            if (done < 0) {
                n_err++;
                conn_close(c);
                return;
            }
            if (done) {
                finish(c);
                return;
            }
        }
    }
}

static void on_stop(int sig)
{
    (void)sig;
    stop_flag = 1;
}

static void usage(void)
{
    fprintf(stderr, "usage: sse-client -a HOST:PORT -b BODYFILE [-p PATH] [-c CONNS] [-d SECS]\n"
                    "                  [-w WARMUP_SECS] [-r RATE] [-n MAX_REQUESTS] [-s EVENTS]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    const char *target = NULL, *bodyfile = NULL, *path = "/v1/chat/completions";
    double secs = 5, warm = 0, rate = 0;
    uint64_t max_req = 5000000;
    char *body;
    long blen;
    FILE *fp;
    int opt, i, tfd = -1, scan = 0;
    int64_t t0, t_rec, t_end, next_start;
    uint64_t k = 0;

    while ((opt = getopt(argc, argv, "a:b:p:c:d:w:r:n:s:h")) != -1) {
        switch (opt) {
        case 'a': target = optarg; break;
        case 'b': bodyfile = optarg; break;
        case 'p': path = optarg; break;
        case 'c': nconns = atoi(optarg); break;
        case 'd': secs = atof(optarg); break;
        case 'w': warm = atof(optarg); break;
        case 'r': rate = atof(optarg); break;
        case 'n': max_req = strtoull(optarg, NULL, 10); break;
        case 's': seq_events = atoi(optarg); break;
        default: usage();
        }
    }
    if (!target || !bodyfile || nconns < 1 || nconns > MAX_CONNS || secs <= 0 || secs > 3600
        || warm < 0 || rate < 0)
        usage();
    {
        char host[64];
        const char *colon = strrchr(target, ':');
        if (!colon || (size_t)(colon - target) >= sizeof(host))
            usage();
        memcpy(host, target, (size_t)(colon - target));
        host[colon - target] = 0;
        memset(&addr, 0, sizeof(addr));
        addr.sin_family = AF_INET;
        addr.sin_port = htons((uint16_t)atoi(colon + 1));
        if (inet_pton(AF_INET, host, &addr.sin_addr) != 1)
            die("HOST must be an IPv4 address");
    }
    if ((fp = fopen(bodyfile, "rb")) == NULL)
        die("cannot read the body file");
    fseek(fp, 0, SEEK_END);
    blen = ftell(fp);
    rewind(fp);
    body = malloc((size_t)blen + 1);
    if (body == NULL || fread(body, 1, (size_t)blen, fp) != (size_t)blen)
        die("cannot read the body file");
    fclose(fp);
    req = malloc((size_t)blen + 512);
    if (req == NULL)
        die("out of memory");
    req_len = (size_t)sprintf(req, "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                                   "Accept: text/event-stream\r\nContent-Length: %ld\r\n\r\n",
                              path, target, blen);
    memcpy(req + req_len, body, (size_t)blen);
    req_len += (size_t)blen;

    signal(SIGPIPE, SIG_IGN);
    signal(SIGINT, on_stop);
    signal(SIGTERM, on_stop);
    epfd = epoll_create1(EPOLL_CLOEXEC);
    for (i = 0; i < nconns; i++)
        conn_open(&conns[i]);

    t0 = now_ns();
    t_rec = t0 + (int64_t)(warm * 1e9);
    t_end = t_rec + (int64_t)(secs * 1e9);
    next_start = t0;

    if (rate > 0) {
        struct epoll_event ev = { .events = EPOLLIN, .data.ptr = &tfd };
        tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
        if (tfd < 0 || epoll_ctl(epfd, EPOLL_CTL_ADD, tfd, &ev) < 0)
            die("timerfd failed");
    }
    while (!stop_flag) {
        struct epoll_event evs[256];
        int64_t t = now_ns(), left;
        int timeout_ms, n;

        if (t >= t_end || n_ok + n_err >= max_req)
            break;
        for (i = 0; i < nconns; i++)
            if (conns[i].st == C_DEAD && t - conns[i].t_dead >= 100000000LL)
                conn_open(&conns[i]);
        if (rate > 0) {
            /* Start every request that is due, each on an idle connection;
             * when none is idle, wait for one (the start is then late). */
            while (t >= next_start) {
                struct conn *c = NULL;
                for (i = 0; i < nconns && c == NULL; i++) {
                    struct conn *x = &conns[(scan + i) % nconns];
                    if (x->st == C_IDLE)
                        c = x;
                }
                if (c == NULL)
                    break;
                scan = (int)(c - conns + 1) % nconns;
                if (t - next_start > 1000000 && next_start >= t_rec)
                    n_late++;                     /* > 1 ms behind schedule */
                k++;
                next_start = t0 + (int64_t)((double)k * 1e9 / rate);
                start_req(c, t, t >= t_rec);
            }
            if (t < next_start) {
                struct itimerspec its = { { 0, 0 }, { (time_t)(next_start / 1000000000LL),
                                                      (long)(next_start % 1000000000LL) } };
                timerfd_settime(tfd, TFD_TIMER_ABSTIME, &its, NULL);
            }
        } else {
            for (i = 0; i < nconns; i++)
                if (conns[i].st == C_IDLE) {
                    int64_t tn = now_ns();
                    start_req(&conns[i], tn, tn >= t_rec);
                }
        }
        left = (t_end - t) / 1000000 + 1;
        timeout_ms = left < 100 ? (int)left : 100;
        n = epoll_wait(epfd, evs, 256, timeout_ms);
        for (i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            if ((void *)c == (void *)&tfd) {
                uint64_t exp;
                if (read(tfd, &exp, sizeof(exp)) < 0)
                    (void)0;
                continue;
            }
            if (c->st == C_DEAD || c->fd < 0)
                continue;
            if (c->st == C_CONNECTING) {
                int err = 0;
                socklen_t el = sizeof(err);
                getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el);
                if (err) {
                    n_connect_err++;
                    conn_close(c);
                    continue;
                }
                c->st = C_IDLE;
                set_events(c, 0);
                if (rate == 0) {
                    int64_t tn = now_ns();
                    start_req(c, tn, tn >= t_rec);
                }
                continue;
            }
            if (c->st == C_SENDING && (evs[i].events & EPOLLOUT)) {
                try_send(c);
                continue;
            }
            if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))
                on_read(c);
            if (rate == 0 && c->st == C_IDLE) {
                int64_t tn = now_ns();
                start_req(c, tn, tn >= t_rec);
            }
        }
    }
    {
        double dur = (double)(now_ns() - t_rec) / 1e9;
        int open_streams = 0;
        for (i = 0; i < nconns; i++)
            open_streams += conns[i].st == C_BODY && conns[i].t_first != 0;
        if (dur <= 0)
            dur = 1e-9;
        qsort(ttfb.v, ttfb.n, sizeof(uint32_t), cmp_u32);
        qsort(total.v, total.n, sizeof(uint32_t), cmp_u32);
        printf("{\"requests\":%llu,\"errors\":%llu,\"connect_errors\":%llu,\"late_starts\":%llu,"
               "\"open_streams\":%d,\"seq\":{\"events\":%d,\"streams\":%llu,\"bad_streams\":%llu,"
               "\"frames\":%llu,\"lost\":%llu,\"reordered\":%llu},"
               "\"duration_s\":%.3f,\"rps\":%.1f,\"bytes_in\":%llu,\"conns\":%d,\"rate\":%.1f,"
               "\"ttfb_us\":{\"p50\":%.0f,\"p90\":%.0f,\"p99\":%.0f,\"p99.9\":%.0f},"
               "\"total_us\":{\"p50\":%.0f,\"p90\":%.0f,\"p99\":%.0f,\"p99.9\":%.0f}}\n",
               (unsigned long long)n_ok, (unsigned long long)n_err,
               (unsigned long long)n_connect_err, (unsigned long long)n_late, open_streams,
               seq_events, (unsigned long long)seq_streams, (unsigned long long)seq_bad,
               (unsigned long long)seq_frames, (unsigned long long)seq_lost,
               (unsigned long long)seq_reordered, dur,
               (double)n_ok / dur, (unsigned long long)bytes_in, nconns, rate,
               pct(&ttfb, 50), pct(&ttfb, 90), pct(&ttfb, 99), pct(&ttfb, 99.9),
               pct(&total, 50), pct(&total, 90), pct(&total, 99), pct(&total, 99.9));
    }
    for (i = 0; i < nconns; i++)
        if (conns[i].fd >= 0)
            close(conns[i].fd);
    return 0;
}
