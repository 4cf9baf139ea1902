/*
 * HTTP/1.1 load generator for the billing benchmark: one thread, epoll, raw keep-alive
 * connections, no dependencies (compiled by bench/ with the system C compiler).
 *
 * Open loop: unit i is due at t0 + i/rate whatever happened before it; its latency is
 * measured from that due time, so a slow server cannot hide its queueing by slowing the
 * client down (no coordinated omission). Closed loop (rate 0): `concurrency` units in
 * flight, each started when the previous one finished; that finds the maximum throughput.
 *
 * Scenarios (a unit is what is scheduled):
 *   get        GET <path>
 *   pair       POST authorize, then, on its 200, POST settle for the hold it returned
 *   authorize  segments: <segment> authorizes scheduled and measured, then their holds
 *              settled unmeasured (a tier has a bounded number of slots)
 *   settle     segments: <segment> holds authorized unmeasured, then their settles
 *              scheduled and measured
 *
 * Open loop gives up on a step the server cannot keep up with: once more requests are due
 * than connections can carry by `--give-up-backlog` (default: 2 s worth), the units not yet
 * due are abandoned (counted, never sent), so that an overloaded step ends instead of
 * leaving the server minutes of backlog for the next one.
 *
 * Output: one binary record per request to --out (little-endian, 48 bytes, see record_t)
 * and a JSON summary line on stdout. Times are nanoseconds since the generator started.
 * Pseudo-status codes for requests without an HTTP answer: 0 connection error,
 * 1 timeout, 2 unreadable response or no hold id.
 *
 * Secrets come from the environment: LOADGEN_TOKEN (service token), LOADGEN_API_KEYS
 * (comma-separated customer keys, one per account, used round-robin).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define HOLD_MAX 96
#define RBUF 16384
#define WBUF 4096
#define MAX_KEYS 64

enum { K_GET = 1, K_AUTHORIZE = 2, K_SETTLE = 3 };
enum { ST_CONN_ERROR = 0, ST_TIMEOUT = 1, ST_BAD_RESPONSE = 2 };
enum { S_GET, S_PAIR, S_AUTHORIZE, S_SETTLE };
enum { C_FREE, C_CONNECTING, C_IDLE, C_BUSY };

typedef struct {
    uint8_t kind;
    uint8_t measured;
    uint16_t status;
    uint32_t unit;
    int64_t sched_ns;  /* due time (open loop) or start time (closed loop) */
    int64_t issue_ns;  /* when the generator got round to it: its own lateness */
    int64_t sent_ns;   /* when the request was written */
    int64_t done_ns;   /* when the whole response had been read */
    int64_t origin_ns; /* due time of the unit (a pair's settle: its authorize's) */
} record_t;

typedef struct job {
    struct job *next;
    uint8_t kind, measured, retries;
    uint32_t unit;
    int64_t sched_ns, issue_ns, origin_ns;
    char hold[HOLD_MAX];
} job_t;

typedef struct conn {
    int fd, state, served;
    job_t *job;
    char wbuf[WBUF];
    size_t wlen, woff;
    char rbuf[RBUF];
    size_t rlen;      /* bytes kept in rbuf */
    size_t rtotal;    /* bytes of this response read so far */
    long hdr_len, clen;
    int close_after, status;
    int want_out; /* EPOLLOUT is armed */
    int64_t sent_ns;
    struct conn *next_idle;
} conn_t;

typedef struct {
    int kind; /* K_GET, K_AUTHORIZE, K_SETTLE, or 0 for pairs */
    int measured; /* 0 no, 1 yes, 2 yes once the warm-up is over */
    double rate;  /* > 0: open loop */
    int conc;     /* closed loop */
    long units;   /* -1: until end_ns */
    int64_t end_ns, t0, last_done;
    long issued, done;
    long deferred; /* closed loop: units to start on the next turn of the loop */
} phase_t;

static struct {
    const char *host, *path, *out, *model, *prefix;
    int port, scenario, concurrency, segment, prep_concurrency, max_conns, give_up_backlog;
    int estimate_seconds;
    double rate, duration_s, warmup_s, timeout_s, settle_seconds;
    char token[512];
    char *keys[MAX_KEYS];
    int nkeys;
} cfg;

static int ep;
static int64_t clock_t0;
static conn_t *conns;
static conn_t *idle_head;
static int nconns_open;
static job_t *pending_head, *pending_tail, *free_jobs;
static long npending, max_pending, abandoned;
static record_t *records;
static size_t nrecords, cap_records;
static char (*holds)[HOLD_MAX];
static long nholds, cap_holds, holds_next;
static phase_t ph;
static int64_t warmup_end_ns;
static long conns_opened, retries, requests_sent;
static int64_t measured_windows[4096][2];
static int nwindows;
static uint32_t next_unit;

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec - clock_t0;
}

static void die(const char *what) {
    perror(what);
    exit(2);
}

static job_t *job_new(void) {
    job_t *j = free_jobs;
    if (j) free_jobs = j->next;
    else if (!(j = malloc(sizeof *j))) die("malloc");
    memset(j, 0, offsetof(job_t, hold) + 1);
    return j;
}

static void job_free(job_t *j) {
    j->next = free_jobs;
    free_jobs = j;
}

static void record_add(job_t *j, int status, int64_t sent, int64_t done) {
    if (nrecords == cap_records) {
        cap_records = cap_records ? cap_records * 2 : 65536;
        records = realloc(records, cap_records * sizeof *records);
        if (!records) die("realloc");
    }
    record_t *r = &records[nrecords++];
    r->kind = j->kind;
    r->measured = j->measured;
    r->status = (uint16_t)status;
    r->unit = j->unit;
    r->sched_ns = j->sched_ns;
    r->issue_ns = j->issue_ns;
    r->sent_ns = sent;
    r->done_ns = done;
    r->origin_ns = j->origin_ns;
}

static void hold_store(const char *id) {
    if (nholds == cap_holds) {
        cap_holds = cap_holds ? cap_holds * 2 : 1024;
        holds = realloc(holds, cap_holds * sizeof *holds);
        if (!holds) die("realloc");
    }
    snprintf(holds[nholds++], HOLD_MAX, "%s", id);
}

/* ---- requests ------------------------------------------------------------------------ */

static size_t request_build(job_t *j, char *buf, size_t cap) {
    char body[1024];
    int blen, n;
    switch (j->kind) {
    case K_GET:
        if (cfg.token[0])
            n = snprintf(buf, cap, "GET %s HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\n\r\n",
                         cfg.path, cfg.host, cfg.token);
        else
            n = snprintf(buf, cap, "GET %s HTTP/1.1\r\nHost: %s\r\n\r\n", cfg.path, cfg.host);
        return (size_t)n;
    case K_AUTHORIZE:
        blen = snprintf(body, sizeof body,
                        "{\"api_key\":\"%s\",\"model\":\"%s\",\"request_id\":\"%s-%010u\","
                        "\"byok\":false,\"auto_scale\":false,\"estimate\":{\"seconds\":%d}}",
                        cfg.keys[j->unit % (uint32_t)cfg.nkeys], cfg.model, cfg.prefix, j->unit,
                        cfg.estimate_seconds);
        n = snprintf(buf, cap,
                     "POST /internal/v1/authorize HTTP/1.1\r\nHost: %s\r\n"
                     "Authorization: Bearer %s\r\nContent-Type: application/json\r\n"
                     "Content-Length: %d\r\n\r\n%s",
                     cfg.host, cfg.token, blen, body);
        return (size_t)n;
    default:
        blen = snprintf(body, sizeof body, "{\"inference_seconds\":%.3f,\"load_seconds\":0}",
                        cfg.settle_seconds);
        n = snprintf(buf, cap,
                     "POST /internal/v1/holds/%s/settle HTTP/1.1\r\nHost: %s\r\n"
                     "Authorization: Bearer %s\r\nContent-Type: application/json\r\n"
                     "Content-Length: %d\r\n\r\n%s",
                     j->hold, cfg.host, cfg.token, blen, body);
        return (size_t)n;
    }
}

/* The hold id from an authorize body: the string value of "hold_id". */
static int hold_id_parse(const char *body, size_t len, char *out) {
    const char *end = body + len, *p = memmem(body, len, "\"hold_id\"", 9);
    if (!p) return 0;
    p += 9;
    while (p < end && (*p == ' ' || *p == ':')) p++;
    if (p >= end || *p != '"') return 0;
    p++;
    size_t i = 0;
    while (p < end && *p != '"' && i < HOLD_MAX - 1) out[i++] = *p++;
    if (p >= end || *p != '"' || i == 0) return 0;
    out[i] = 0;
    return 1;
}

/* ---- scheduling ---------------------------------------------------------------------- */

static void dispatch(job_t *j);
static void unit_done(void);

static int measured_now(int64_t sched) {
    if (ph.measured == 2) return sched >= warmup_end_ns;
    return ph.measured;
}

static void unit_issue(int64_t sched) {
    job_t *j = job_new();
    j->unit = next_unit++;
    j->sched_ns = j->origin_ns = sched;
    j->issue_ns = now_ns();
    j->measured = (uint8_t)measured_now(sched);
    if (ph.kind == 0) j->kind = K_AUTHORIZE; /* a pair starts with its authorize */
    else j->kind = (uint8_t)ph.kind;
    if (j->kind == K_SETTLE) {
        if (holds_next >= nholds) { /* nothing left to settle: the unit is void */
            job_free(j);
            ph.issued++;
            ph.done++;
            return;
        }
        memcpy(j->hold, holds[holds_next++], HOLD_MAX);
    }
    ph.issued++;
    dispatch(j);
}

static int phase_more(int64_t now) {
    if (ph.units >= 0) return ph.issued < ph.units;
    return now < ph.end_ns;
}

static void phase_start(int kind, int measured, double rate, int conc, long units, int64_t end_ns) {
    memset(&ph, 0, sizeof ph);
    ph.kind = kind;
    ph.measured = measured;
    ph.rate = rate;
    ph.conc = conc;
    ph.units = units;
    ph.end_ns = end_ns;
    ph.t0 = now_ns();
    ph.last_done = ph.t0;
    if (rate <= 0)
        for (int i = 0; i < conc && phase_more(ph.t0); i++) unit_issue(now_ns());
}

static int64_t phase_next_due(void) {
    return ph.t0 + (int64_t)((double)ph.issued * 1e9 / ph.rate);
}

/* Issues the open-loop units that are due; returns when the next one is (or -1). */
static int64_t open_loop_tick(int64_t now) {
    if (ph.rate <= 0) return -1;
    long limit = cfg.give_up_backlog > 0 ? cfg.give_up_backlog : (long)(ph.rate * 2);
    if (limit < 200) limit = 200;
    if (npending > limit && phase_more(now)) { /* the server cannot keep up: stop here */
        if (ph.units >= 0) {
            abandoned += ph.units - ph.issued;
            ph.units = ph.issued;
        } else {
            abandoned += (long)((double)(ph.end_ns - now) * ph.rate / 1e9);
            ph.end_ns = now;
        }
        return -1;
    }
    while (phase_more(now)) {
        int64_t due = phase_next_due();
        if (ph.units < 0 && due >= ph.end_ns) return -1;
        if (due > now) return due;
        unit_issue(due);
    }
    return -1;
}

static void unit_done(void) {
    int64_t now = now_ns();
    ph.done++;
    ph.last_done = now;
    /* Closed loop: the next unit starts on the next turn of the event loop, not here, so
     * that failures answered at once (a refused connection) cannot recurse. */
    if (ph.rate <= 0) ph.deferred++;
}

static int phase_finished(int64_t now) {
    if (phase_more(now) && !(ph.rate > 0 && ph.units < 0 && phase_next_due() >= ph.end_ns))
        return 0;
    return ph.done >= ph.issued;
}

/* ---- connections --------------------------------------------------------------------- */

static void want_out(conn_t *c, int on) {
    if (c->want_out == on) return; /* a system call saved per request */
    struct epoll_event ev = {.events = EPOLLIN | (on ? EPOLLOUT : 0), .data.ptr = c};
    if (epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev) < 0) die("epoll_ctl mod");
    c->want_out = on;
}

static void conn_close(conn_t *c) {
    if (c->state == C_IDLE) { /* unlink from the idle stack */
        conn_t **pp = &idle_head;
        while (*pp && *pp != c) pp = &(*pp)->next_idle;
        if (*pp) *pp = c->next_idle;
    }
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
    c->state = C_FREE;
    c->job = NULL;
    nconns_open--;
}

static void conn_write(conn_t *c) {
    while (c->woff < c->wlen) {
        ssize_t n = send(c->fd, c->wbuf + c->woff, c->wlen - c->woff, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN) { want_out(c, 1); return; }
            return; /* the read side reports the error */
        }
        c->woff += (size_t)n;
    }
    want_out(c, 0);
}

static void conn_send(conn_t *c, job_t *j) {
    c->job = j;
    c->state = C_BUSY;
    c->wlen = request_build(j, c->wbuf, sizeof c->wbuf);
    c->woff = 0;
    c->rlen = c->rtotal = 0;
    c->hdr_len = c->clen = -1;
    c->close_after = 0;
    c->status = 0;
    c->sent_ns = now_ns();
    requests_sent++;
    conn_write(c);
}

static conn_t *conn_open(void) {
    conn_t *c = NULL;
    for (int i = 0; i < cfg.max_conns; i++)
        if (conns[i].state == C_FREE) { c = &conns[i]; break; }
    if (!c) return NULL;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return NULL;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)cfg.port)};
    inet_pton(AF_INET, cfg.host, &sa.sin_addr);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0 && errno != EINPROGRESS) {
        close(fd);
        return NULL;
    }
    c->fd = fd;
    c->state = C_CONNECTING;
    c->served = 0;
    c->job = NULL;
    c->want_out = 1;
    struct epoll_event ev = {.events = EPOLLOUT | EPOLLIN, .data.ptr = c};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll_ctl add");
    nconns_open++;
    conns_opened++;
    return c;
}

static void job_fail(job_t *j, int status, int64_t sent) {
    record_add(j, status, sent, now_ns());
    job_free(j);
    unit_done();
}

static void dispatch(job_t *j) {
    if (idle_head) {
        conn_t *c = idle_head;
        idle_head = c->next_idle;
        conn_send(c, j);
        return;
    }
    if (nconns_open < cfg.max_conns) {
        conn_t *c = conn_open();
        if (c) { c->job = j; return; } /* sent once connected */
        job_fail(j, ST_CONN_ERROR, now_ns());
        return;
    }
    j->next = NULL;
    if (pending_tail) pending_tail->next = j;
    else pending_head = j;
    pending_tail = j;
    if (++npending > max_pending) max_pending = npending;
}

static job_t *pending_pop(void) {
    job_t *j = pending_head;
    if (j) {
        pending_head = j->next;
        if (!pending_head) pending_tail = NULL;
        npending--;
    }
    return j;
}

/* A connection is free again (idle, or closed): give it the next queued request. */
static void conn_released(conn_t *c) {
    job_t *j = pending_pop();
    if (!j) {
        if (c->state == C_IDLE) { c->next_idle = idle_head; idle_head = c; }
        return;
    }
    if (c->state == C_IDLE) conn_send(c, j);
    else dispatch(j); /* it was closed: dispatch opens a new one */
}

static void response_done(conn_t *c) {
    job_t *j = c->job;
    int64_t done = now_ns();
    int status = c->status;
    c->job = NULL;
    c->served++;
    const char *body = c->rbuf + c->hdr_len;
    size_t blen = c->rlen > (size_t)c->hdr_len ? c->rlen - (size_t)c->hdr_len : 0;
    char hold[HOLD_MAX];
    int follow_up = 0;
    if (j->kind == K_AUTHORIZE && status == 200) {
        if (!hold_id_parse(body, blen, hold)) status = ST_BAD_RESPONSE;
        else if (ph.kind == 0) follow_up = 1;
        else hold_store(hold);
    }
    record_add(j, status, c->sent_ns, done);
    if (c->close_after) conn_close(c);
    else c->state = C_IDLE;
    if (follow_up) { /* the pair's settle goes out at once, on this connection if it can */
        job_t *s = job_new();
        s->kind = K_SETTLE;
        s->unit = j->unit;
        s->measured = j->measured;
        s->origin_ns = j->origin_ns;
        s->sched_ns = s->issue_ns = done;
        memcpy(s->hold, hold, HOLD_MAX);
        job_free(j);
        if (c->state == C_IDLE) conn_send(c, s);
        else dispatch(s);
        return;
    }
    job_free(j);
    unit_done();
    conn_released(c);
}

/* The connection failed: retry a request that met a keep-alive connection the server had
 * just closed (authorize and settle are idempotent), otherwise record the failure. */
static void conn_failed(conn_t *c, int status) {
    job_t *j = c->job;
    int stale = c->served > 0 && c->rtotal == 0;
    int64_t sent = c->sent_ns;
    c->job = NULL;
    conn_close(c);
    if (j) {
        if (stale && j->retries == 0 && status == ST_CONN_ERROR) {
            j->retries++;
            retries++;
            dispatch(j);
            return;
        }
        job_fail(j, status, sent);
    }
    conn_released(c);
}

static void headers_parse(conn_t *c) {
    char *end = memmem(c->rbuf, c->rlen, "\r\n\r\n", 4);
    if (!end) return;
    c->hdr_len = end - c->rbuf + 4;
    if (c->rlen < 12 || memcmp(c->rbuf, "HTTP/1.", 7) != 0) { c->status = -1; return; }
    c->status = atoi(c->rbuf + 9);
    if (c->rbuf[7] == '0') c->close_after = 1;
    for (char *line = memmem(c->rbuf, c->rlen, "\r\n", 2); line && line < end;
         line = memmem(line + 2, (size_t)(end - line), "\r\n", 2)) {
        char *h = line + 2;
        if (!strncasecmp(h, "content-length:", 15)) c->clen = atol(h + 15);
        else if (!strncasecmp(h, "connection:", 11)) {
            char *v = h + 11;
            while (*v == ' ') v++;
            if (!strncasecmp(v, "close", 5)) c->close_after = 1;
        } else if (!strncasecmp(h, "transfer-encoding:", 18)) {
            c->status = -1; /* chunked bodies: not expected from this service */
        }
    }
    if (c->clen < 0) c->close_after = 1; /* body runs to the end of the connection */
}

static void conn_readable(conn_t *c) {
    for (;;) {
        char scratch[RBUF];
        char *dst = c->rlen < RBUF ? c->rbuf + c->rlen : scratch;
        size_t room = c->rlen < RBUF ? RBUF - c->rlen : sizeof scratch;
        ssize_t n = recv(c->fd, dst, room, 0);
        if (n < 0) {
            if (errno == EAGAIN) return;
            if (c->state == C_IDLE) { conn_close(c); return; }
            conn_failed(c, ST_CONN_ERROR);
            return;
        }
        if (n == 0) { /* the server closed the connection */
            if (c->state == C_IDLE || !c->job) { conn_close(c); return; }
            if (c->hdr_len > 0 && c->clen < 0 && c->status > 0) { response_done(c); return; }
            conn_failed(c, ST_CONN_ERROR);
            return;
        }
        if (c->state != C_BUSY || !c->job) continue; /* unsolicited bytes: ignore */
        if (dst == c->rbuf + c->rlen) c->rlen += (size_t)n;
        c->rtotal += (size_t)n;
        if (c->hdr_len < 0) headers_parse(c);
        if (c->status < 0) { conn_failed(c, ST_BAD_RESPONSE); return; }
        if (c->hdr_len > 0 && c->clen >= 0 && c->rtotal >= (size_t)(c->hdr_len + c->clen)) {
            response_done(c);
            return;
        }
    }
}

static void conn_event(conn_t *c, uint32_t events) {
    if (c->state == C_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err || (events & (EPOLLERR | EPOLLHUP))) {
            job_t *j = c->job;
            c->job = NULL;
            conn_close(c);
            if (j) job_fail(j, ST_CONN_ERROR, now_ns());
            return;
        }
        if (!(events & EPOLLOUT)) return;
        job_t *j = c->job;
        if (j) conn_send(c, j);
        else { c->state = C_IDLE; conn_released(c); }
        return;
    }
    if (c->state == C_BUSY && (events & EPOLLOUT) && c->woff < c->wlen) conn_write(c);
    if (events & (EPOLLIN | EPOLLERR | EPOLLHUP)) conn_readable(c);
}

/* Requests older than the timeout (from their due time) are given up. */
static void timeouts_check(int64_t now) {
    int64_t limit = (int64_t)(cfg.timeout_s * 1e9);
    for (int i = 0; i < cfg.max_conns; i++) {
        conn_t *c = &conns[i];
        if ((c->state == C_BUSY || c->state == C_CONNECTING) && c->job &&
            now - c->job->sched_ns > limit) {
            job_t *j = c->job;
            int64_t sent = c->state == C_BUSY ? c->sent_ns : now;
            c->job = NULL;
            conn_close(c);
            job_fail(j, ST_TIMEOUT, sent);
            conn_released(c);
        }
    }
    while (pending_head && now - pending_head->sched_ns > limit) job_fail(pending_pop(), ST_TIMEOUT, now);
}

/* ---- main loop ----------------------------------------------------------------------- */

/* Runs the current phase until every unit has been answered or given up. */
static void phase_run(int64_t hard_deadline) {
    struct epoll_event evs[256];
    int64_t last_timeout_check = 0;
    for (;;) {
        int64_t now = now_ns();
        for (; ph.deferred > 0 && phase_more(now); now = now_ns()) {
            ph.deferred--;
            unit_issue(now);
        }
        int64_t due = open_loop_tick(now);
        if (phase_finished(now)) break;
        if (now > hard_deadline) cfg.timeout_s = 0; /* give up on everything left */
        /* Sleep until the next unit is due (nanosecond timeout), at most 20 ms. */
        int64_t wait = 20000000LL;
        if (due >= 0 && due - now < wait) wait = due - now > 0 ? due - now : 0;
        struct timespec tmo = {.tv_sec = 0, .tv_nsec = (long)wait};
        int n = epoll_pwait2(ep, evs, 256, &tmo, NULL);
        if (n < 0 && errno != EINTR) die("epoll_pwait2");
        for (int i = 0; i < n; i++) conn_event(evs[i].data.ptr, evs[i].events);
        now = now_ns();
        if (now - last_timeout_check > 20000000LL) {
            timeouts_check(now);
            last_timeout_check = now;
        }
    }
}

static void window_add(int64_t t0, int64_t t1) {
    if (nwindows < 4096) {
        measured_windows[nwindows][0] = t0;
        measured_windows[nwindows][1] = t1;
        nwindows++;
    }
}

static void usage(void) {
    fprintf(stderr,
            "usage: loadgen --scenario get|pair|authorize|settle --port N [--host IP]\n"
            "  [--rate R | --concurrency C] [--duration S] [--warmup S] [--path P]\n"
            "  [--segment N] [--prep-concurrency C] [--max-conns N] [--timeout S]\n"
            "  [--give-up-backlog N]\n"
            "  [--model ID] [--prefix REQUEST_ID_PREFIX] [--estimate-seconds N]\n"
            "  [--settle-seconds S] --out FILE\n");
    exit(2);
}

int main(int argc, char **argv) {
    cfg.host = "127.0.0.1";
    cfg.path = "/healthz";
    cfg.concurrency = 8;
    cfg.segment = 300;
    cfg.prep_concurrency = 8;
    cfg.max_conns = 256;
    cfg.duration_s = 5;
    cfg.warmup_s = 1;
    cfg.timeout_s = 10;
    cfg.model = "bench/open-7b";
    cfg.prefix = "bench";
    cfg.estimate_seconds = 30;
    cfg.settle_seconds = 1;
    cfg.scenario = -1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (i + 1 >= argc) usage();
        const char *v = argv[++i];
        if (!strcmp(a, "--scenario")) {
            cfg.scenario = !strcmp(v, "get") ? S_GET : !strcmp(v, "pair") ? S_PAIR
                         : !strcmp(v, "authorize") ? S_AUTHORIZE : !strcmp(v, "settle") ? S_SETTLE : -2;
        } else if (!strcmp(a, "--host")) cfg.host = v;
        else if (!strcmp(a, "--port")) cfg.port = atoi(v);
        else if (!strcmp(a, "--path")) cfg.path = v;
        else if (!strcmp(a, "--rate")) cfg.rate = atof(v);
        else if (!strcmp(a, "--concurrency")) cfg.concurrency = atoi(v);
        else if (!strcmp(a, "--duration")) cfg.duration_s = atof(v);
        else if (!strcmp(a, "--warmup")) cfg.warmup_s = atof(v);
        else if (!strcmp(a, "--segment")) cfg.segment = atoi(v);
        else if (!strcmp(a, "--prep-concurrency")) cfg.prep_concurrency = atoi(v);
        else if (!strcmp(a, "--max-conns")) cfg.max_conns = atoi(v);
        else if (!strcmp(a, "--give-up-backlog")) cfg.give_up_backlog = atoi(v);
        else if (!strcmp(a, "--timeout")) cfg.timeout_s = atof(v);
        else if (!strcmp(a, "--model")) cfg.model = v;
        else if (!strcmp(a, "--prefix")) cfg.prefix = v;
        else if (!strcmp(a, "--estimate-seconds")) cfg.estimate_seconds = atoi(v);
        else if (!strcmp(a, "--settle-seconds")) cfg.settle_seconds = atof(v);
        else if (!strcmp(a, "--out")) cfg.out = v;
        else usage();
    }
    if (cfg.scenario < 0 || !cfg.port || !cfg.out || cfg.max_conns < 1) usage();
    const char *token = getenv("LOADGEN_TOKEN");
    if (token) snprintf(cfg.token, sizeof cfg.token, "%s", token);
    char *keys = getenv("LOADGEN_API_KEYS");
    if (keys) keys = strdup(keys);
    for (char *k = keys ? strtok(keys, ",") : NULL; k && cfg.nkeys < MAX_KEYS; k = strtok(NULL, ","))
        cfg.keys[cfg.nkeys++] = k;
    if (cfg.scenario != S_GET && (!cfg.token[0] || !cfg.nkeys)) {
        fprintf(stderr, "loadgen: LOADGEN_TOKEN and LOADGEN_API_KEYS are required\n");
        return 2;
    }
    if (cfg.rate <= 0 && cfg.max_conns < cfg.concurrency) cfg.max_conns = cfg.concurrency;
    if (cfg.max_conns < cfg.prep_concurrency) cfg.max_conns = cfg.prep_concurrency;

    signal(SIGPIPE, SIG_IGN);
    prctl(PR_SET_TIMERSLACK, 1UL); /* wake up on time, not up to 50 us late */
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    clock_t0 = (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
    struct rusage ru0, ru1;
    getrusage(RUSAGE_SELF, &ru0);

    if ((ep = epoll_create1(EPOLL_CLOEXEC)) < 0) die("epoll_create1");
    conns = calloc((size_t)cfg.max_conns, sizeof *conns);
    if (!conns) die("calloc");
    for (int i = 0; i < cfg.max_conns; i++) conns[i].fd = -1;

    int64_t start = now_ns();
    int64_t warmup_ns = (int64_t)(cfg.warmup_s * 1e9), duration_ns = (int64_t)(cfg.duration_s * 1e9);
    int64_t hard_deadline = start + 4 * (warmup_ns + duration_ns) + 30000000000LL;
    warmup_end_ns = start + warmup_ns;

    if (cfg.scenario == S_GET || cfg.scenario == S_PAIR) {
        int kind = cfg.scenario == S_GET ? K_GET : 0;
        long units = cfg.rate > 0 ? (long)(cfg.rate * (cfg.warmup_s + cfg.duration_s) + 0.5) : -1;
        phase_start(kind, 2, cfg.rate, cfg.concurrency, units, start + warmup_ns + duration_ns);
        phase_run(hard_deadline);
        window_add(warmup_end_ns, ph.last_done);
    } else {
        /* Segments: the first is a warm-up; then until the measured phases add up to the
         * duration. A tier has a bounded number of slots, so holds are settled between. */
        int64_t measured_total = 0;
        for (int seg = 0; measured_total < duration_ns && now_ns() < hard_deadline; seg++) {
            int measured = seg > 0;
            nholds = holds_next = 0;
            if (cfg.scenario == S_AUTHORIZE) {
                phase_start(K_AUTHORIZE, measured, cfg.rate, cfg.concurrency, cfg.segment, 0);
                phase_run(hard_deadline);
                if (measured) { window_add(ph.t0, ph.last_done); measured_total += ph.last_done - ph.t0; }
                phase_start(K_SETTLE, 0, 0, cfg.prep_concurrency, nholds, 0);
                phase_run(hard_deadline);
            } else {
                phase_start(K_AUTHORIZE, 0, 0, cfg.prep_concurrency, cfg.segment, 0);
                phase_run(hard_deadline);
                phase_start(K_SETTLE, measured, cfg.rate, cfg.concurrency, nholds, 0);
                phase_run(hard_deadline);
                if (measured) { window_add(ph.t0, ph.last_done); measured_total += ph.last_done - ph.t0; }
                if (holds_next < nholds) { /* given up: settle the rest, unmeasured */
                    phase_start(K_SETTLE, 0, 0, cfg.prep_concurrency, nholds - holds_next, 0);
                    phase_run(hard_deadline);
                }
            }
            if (abandoned) break; /* the server cannot keep up with this rate */
        }
    }
    int64_t wall = now_ns() - start;
    getrusage(RUSAGE_SELF, &ru1);

    FILE *f = fopen(cfg.out, "wb");
    if (!f) die("fopen");
    if (nrecords && fwrite(records, sizeof *records, nrecords, f) != nrecords) die("fwrite");
    fclose(f);
    int64_t user = (ru1.ru_utime.tv_sec - ru0.ru_utime.tv_sec) * 1000000000LL +
                   (ru1.ru_utime.tv_usec - ru0.ru_utime.tv_usec) * 1000LL;
    int64_t sys = (ru1.ru_stime.tv_sec - ru0.ru_stime.tv_sec) * 1000000000LL +
                  (ru1.ru_stime.tv_usec - ru0.ru_stime.tv_usec) * 1000LL;
    printf("{\"records\":%zu,\"requests_sent\":%ld,\"wall_ns\":%lld,\"cpu_user_ns\":%lld,"
           "\"cpu_sys_ns\":%lld,\"conns_opened\":%ld,\"retries\":%ld,\"max_pending\":%ld,"
           "\"abandoned\":%ld,\"measured_windows\":[",
           nrecords, requests_sent, (long long)wall, (long long)user, (long long)sys,
           conns_opened, retries, max_pending, abandoned);
    for (int i = 0; i < nwindows; i++)
        printf("%s[%lld,%lld]", i ? "," : "", (long long)measured_windows[i][0],
               (long long)measured_windows[i][1]);
    printf("]}\n");
    return 0;
}
