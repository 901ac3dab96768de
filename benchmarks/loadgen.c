/*
 * loadgen: a closed-loop RFC 1413 load generator for benchmarks/bench_server.py.
 *
 * One thread, epoll, non-blocking sockets, CONC queries in flight at any time.
 *
 *   loadgen HOST PORT MODE CONC SECONDS USER [DEPTH]
 *   loadgen HOST PORT list|keeplist CONC SECONDS FILE [DEPTH]
 *   loadgen HOST PORT segment CONC SECONDS USER DEPTH
 *
 * MODE "conn": every query on a new connection: connect, send "P, P\r\n", read one line,
 *              then close with SO_LINGER 0 (an RST: neither end keeps a TIME_WAIT, so
 *              hundreds of thousands of short loopback connections do not run out of
 *              ports). Latency runs from connect() to the answer's end of line.
 * MODE "keep": CONC connections stay open; each keeps DEPTH queries in flight (default 1,
 *              at most MAX_DEPTH): it sends DEPTH queries at once, then as many new ones
 *              (in one send()) as answers arrived in one read. Latency runs from the
 *              query's send() to its answer's end of line.
 * MODE "list": like "conn" (one query per new connection), but the queries and their
 *              answers come from FILE, one "QUERY<TAB>ANSWER" pair a line (both without
 *              CR LF, which is added), taken in turn, round-robin
 *              (benchmarks/bench_daemon.py: real connections and the owner each
 *              server must name).
 * MODE "segment": "keep", but the queries go in segments of DEPTH lines, one send() each,
 *              the next only once every answer to the last has arrived (what a segment
 *              of many lines costs the server per line; the send buffer is made large
 *              enough for a whole segment).
 * MODE "keeplist": "keep" with the queries and answers of "list" (bench_claims.py:
 *              queries about claimed connections on kept-open ident connections).
 *
 * In "conn" and "keep" every answer must be "S,C:USERID:UNIX:USER\r\n" for the ports sent,
 * spaces and tabs aside (RFC 1413 allows them around every token; Twisted and oidentd
 * write "S , C : USERID : UNIX : USER"); in the list modes, exactly the line's ANSWER +
 * CR LF. Answers must come in the order of the queries. Anything else counts as an
 * error (kind and a sample printed). Prints one line of key=value
 * pairs: counts, elapsed wall time, latency percentiles (microseconds) and this
 * program's own CPU time, so the caller can show that it is not the bottleneck.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define QUERY_TIMEOUT 5.0
#define MAX_SAMPLES (8u << 20)
#define MAX_DEPTH 4096

enum state { IDLE, CONNECTING, WAITING };
enum err { E_CONNECT, E_RESET, E_EOF, E_WRONG, E_TIMEOUT, E_OTHER, E_COUNT };
static const char *err_names[E_COUNT] = {"connect", "reset", "eof", "wrong", "timeout", "other"};

struct entry {
    char *query, *answer; /* both with CR LF */
    size_t qlen, alen;
};

struct query {
    double t0;               /* connect() ("conn", "list") or send() (keep modes) */
    unsigned sport, cport;
    const struct entry *ent; /* list modes: the query sent */
};

struct slot {
    int fd;
    enum state st;
    double t0;                  /* connect() */
    struct query q[MAX_DEPTH];  /* in flight, oldest at head */
    unsigned head, count;
    size_t len;
    char buf[8192];
};

static struct sockaddr_in addr;
static int ep, keep, segments, depth = 1;
static const char *user;
static struct entry *entries; /* list mode */
static size_t nentries;
static uint64_t seq, ok, errors[E_COUNT];
static float *lat;
static size_t nlat;
static char sample[128];

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double cpu_seconds(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

static void drop(struct slot *s, int abortive) {
    if (s->fd >= 0) {
        if (abortive) {
            struct linger lg = {1, 0};
            setsockopt(s->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        }
        close(s->fd);  /* also removes it from the epoll set */
    }
    s->fd = -1;
    s->st = IDLE;
    s->head = s->count = 0;
    s->len = 0;
}

static void fail(struct slot *s, enum err kind) {
    errors[kind]++;
    drop(s, 1);
}

/* Send k more queries, in one send(), to wait for their answers: 0 sent, 1 not yet
 * connected (nothing sent), -1 failed (the slot is dropped). */
static int send_queries(struct slot *s, unsigned k) {
    static char out[MAX_DEPTH * 16]; /* "65535, 65535\r\n" is 14 */
    size_t olen = 0;
    double t = keep ? now() : s->t0;
    for (unsigned i = 0; i < k; i++) {
        struct query *q = &s->q[(s->head + s->count++) % MAX_DEPTH];
        uint64_t n = seq++;
        q->t0 = t;
        if (entries != NULL) {
            q->ent = &entries[n % nentries];
            if (olen + q->ent->qlen > sizeof out) {
                fail(s, E_OTHER);
                return -1;
            }
            memcpy(out + olen, q->ent->query, q->ent->qlen);
            olen += q->ent->qlen;
        } else {
            q->ent = NULL;
            q->sport = 1 + (unsigned)((n * 7919u) % 65535u);
            q->cport = 1 + (unsigned)(n % 65535u);
            if (olen + 16 > sizeof out) {
                fail(s, E_OTHER);
                return -1;
            }
            olen += (size_t)snprintf(out + olen, sizeof out - olen, "%u, %u\r\n", q->sport,
                                     q->cport);
        }
    }
    ssize_t sent = send(s->fd, out, olen, MSG_NOSIGNAL);
    if (sent < 0 && s->st == CONNECTING && (errno == EAGAIN || errno == ENOTCONN)) {
        s->count -= k; /* the handshake is not done: the same queries again later */
        seq -= k;
        return 1;
    }
    if (sent != (ssize_t)olen) {
        enum err kind = errno == ECONNRESET || errno == EPIPE ? E_RESET : E_OTHER;
        fail(s, s->st == CONNECTING && errno == ECONNREFUSED ? E_CONNECT : kind);
        return -1;
    }
    return 0;
}

static void start(struct slot *s) {
    s->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (s->fd < 0) {
        errors[E_OTHER]++;
        return;
    }
    int one = 1;
    if (keep) setsockopt(s->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one); /* pipelined */
    if (segments) {
        int size = 1 << 20; /* a whole segment in one send() */
        setsockopt(s->fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
    }
    s->t0 = now();
    s->st = CONNECTING;
    if (connect(s->fd, (struct sockaddr *)&addr, sizeof addr) != 0 && errno != EINPROGRESS) {
        fail(s, E_CONNECT);
        return;
    }
    /* On loopback the handshake is usually complete when connect() returns: the queries
     * go out at once, saving this program an epoll round per connection. */
    int rc = send_queries(s, (unsigned)depth);
    if (rc < 0) return;
    struct epoll_event ev = {.events = rc == 0 ? EPOLLIN : EPOLLOUT, .data.ptr = s};
    epoll_ctl(ep, EPOLL_CTL_ADD, s->fd, &ev);
    if (rc == 0) s->st = WAITING;
}

/* The first error's received text, printable, for the report. */
static void record_sample(const char *text, size_t len) {
    if (sample[0] != '\0') return;
    size_t k = 0;
    for (size_t i = 0; i < len && k + 5 < sizeof sample; i++) {
        unsigned char c = (unsigned char)text[i];
        if (c >= 0x20 && c < 0x7f && c != ' ') sample[k++] = (char)c;
        else k += (size_t)snprintf(sample + k, sizeof sample - k, "\\x%02x", c);
    }
    sample[k] = '\0';
}

/* Whether LINE (LEN octets, its LF included) is the answer to Q. */
static int answer_matches(const struct query *q, const char *line, size_t len) {
    if (q->ent != NULL) return len == q->ent->alen && memcmp(line, q->ent->answer, len) == 0;
    char want[128], got[256];
    size_t wlen = (size_t)snprintf(want, sizeof want, "%u,%u:USERID:UNIX:%s\r\n", q->sport,
                                   q->cport, user);
    size_t glen = 0;
    for (size_t i = 0; i < len && glen < sizeof got; i++) {
        if (line[i] != ' ' && line[i] != '\t') got[glen++] = line[i];
    }
    return glen == wlen && memcmp(got, want, wlen) == 0;
}

static void on_event(struct slot *s, uint32_t events) {
    if (s->st == CONNECTING) {
        int err = 0;
        socklen_t elen = sizeof err;
        getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &elen);
        if (err != 0 || (events & (EPOLLERR | EPOLLHUP))) {
            fail(s, E_CONNECT);
            return;
        }
        if (send_queries(s, (unsigned)depth) == 0) {
            struct epoll_event ev = {.events = EPOLLIN, .data.ptr = s};
            epoll_ctl(ep, EPOLL_CTL_MOD, s->fd, &ev);
            s->st = WAITING;
        }
        return;
    }
    if (s->st != WAITING) return;
    ssize_t n = recv(s->fd, s->buf + s->len, sizeof s->buf - 1 - s->len, 0);
    if (n < 0) {
        if (errno == EAGAIN || errno == EINTR) return;
        fail(s, errno == ECONNRESET ? E_RESET : E_OTHER);
        return;
    }
    if (n == 0) {
        fail(s, E_EOF);
        return;
    }
    s->len += (size_t)n;
    s->buf[s->len] = '\0';
    double t1 = now();
    unsigned answered = 0;
    size_t used = 0;
    for (;;) {
        char *line = s->buf + used;
        char *eol = memchr(line, '\n', s->len - used);
        if (eol == NULL) break;
        size_t got = (size_t)(eol - line) + 1;
        if (s->count == 0) { /* an answer to no query */
            record_sample(line, got);
            fail(s, E_WRONG);
            return;
        }
        struct query *q = &s->q[s->head];
        if (!answer_matches(q, line, got)) {
            record_sample(line, s->len - used);
            fail(s, E_WRONG);
            return;
        }
        s->head = (s->head + 1) % MAX_DEPTH;
        s->count--;
        ok++;
        answered++;
        if (nlat < MAX_SAMPLES) lat[nlat++] = (float)((t1 - q->t0) * 1e6);
        used += got;
    }
    if (used > 0) {
        memmove(s->buf, s->buf + used, s->len - used);
        s->len -= used;
    } else if (s->len >= sizeof s->buf - 1) {
        record_sample(s->buf, s->len);
        fail(s, E_WRONG);
        return;
    }
    if (answered == 0) return;
    if (!keep) {
        if (s->len != 0) { /* more than the one answer */
            record_sample(s->buf, s->len);
            fail(s, E_WRONG);
            return;
        }
        drop(s, 1);
        return;
    }
    if (!segments) {
        send_queries(s, answered);
    } else if (s->count == 0) {
        send_queries(s, (unsigned)depth);
    }
}

/* Read FILE's "QUERY<TAB>ANSWER" lines into entries[]; returns 0 on success. */
static int load_entries(const char *path) {
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        perror(path);
        return -1;
    }
    size_t cap = 0;
    char line[1024];
    while (fgets(line, sizeof line, f) != NULL) {
        line[strcspn(line, "\r\n")] = '\0';
        char *tab = strchr(line, '\t');
        if (tab == NULL || tab == line || tab[1] == '\0') {
            if (line[0] == '\0') continue;
            fprintf(stderr, "loadgen: %s: not QUERY<TAB>ANSWER: %s\n", path, line);
            fclose(f);
            return -1;
        }
        *tab = '\0';
        if (nentries == cap) {
            cap = cap ? cap * 2 : 256;
            entries = realloc(entries, cap * sizeof *entries);
            if (entries == NULL) {
                perror("loadgen");
                fclose(f);
                return -1;
            }
        }
        struct entry *e = &entries[nentries++];
        e->qlen = (size_t)asprintf(&e->query, "%s\r\n", line);
        e->alen = (size_t)asprintf(&e->answer, "%s\r\n", tab + 1);
    }
    fclose(f);
    if (nentries == 0) {
        fprintf(stderr, "loadgen: %s: no queries\n", path);
        return -1;
    }
    return 0;
}

static int cmp_float(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

static double pct(double p) {
    if (nlat == 0) return 0.0;
    size_t i = (size_t)(p / 100.0 * (double)(nlat - 1) + 0.5);
    return lat[i];
}

int main(int argc, char **argv) {
    if (argc != 7 && argc != 8) {
        fprintf(stderr, "usage: %s HOST PORT conn|keep CONCURRENCY SECONDS USER [DEPTH]\n"
                        "       %s HOST PORT list|keeplist CONCURRENCY SECONDS FILE [DEPTH]\n"
                        "       %s HOST PORT segment CONCURRENCY SECONDS USER DEPTH\n",
                argv[0], argv[0], argv[0]);
        return 2;
    }
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)atoi(argv[2]));
    if (inet_pton(AF_INET, argv[1], &addr.sin_addr) != 1) {
        fprintf(stderr, "loadgen: bad IPv4 address %s\n", argv[1]);
        return 2;
    }
    int keeplist = strcmp(argv[3], "keeplist") == 0;
    segments = strcmp(argv[3], "segment") == 0;
    keep = strcmp(argv[3], "keep") == 0 || keeplist || segments;
    int list = strcmp(argv[3], "list") == 0 || keeplist;
    if (!keep && !list && strcmp(argv[3], "conn") != 0) {
        fprintf(stderr, "loadgen: mode must be conn, keep, segment, list or keeplist\n");
        return 2;
    }
    int conc = atoi(argv[4]);
    double seconds = atof(argv[5]);
    user = argv[6];
    if (list && load_entries(argv[6]) != 0) return 2;
    if (argc == 8) depth = atoi(argv[7]);
    if (conc < 1 || conc > 4096 || !(seconds > 0)) {
        fprintf(stderr, "loadgen: bad concurrency or duration\n");
        return 2;
    }
    if (depth < 1 || depth > MAX_DEPTH || (depth > 1 && !keep)) {
        fprintf(stderr, "loadgen: DEPTH is 1 to %d, above 1 only in the keep modes\n", MAX_DEPTH);
        return 2;
    }
    lat = malloc(MAX_SAMPLES * sizeof *lat);
    struct slot *slots = calloc((size_t)conc, sizeof *slots);
    struct epoll_event *evs = calloc((size_t)conc, sizeof *evs);
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (lat == NULL || slots == NULL || evs == NULL || ep < 0) {
        perror("loadgen");
        return 1;
    }
    double cpu0 = cpu_seconds();
    double t_start = now();
    double t_end = t_start + seconds;
    double last_sweep = t_start;
    for (int i = 0; i < conc; i++) {
        slots[i].fd = -1;
        start(&slots[i]);
    }
    for (;;) {
        int n = epoll_wait(ep, evs, conc, 50);
        for (int i = 0; i < n; i++) on_event(evs[i].data.ptr, evs[i].events);
        double t = now();
        if (t >= t_end) break;
        if (t - last_sweep > 0.1) {
            last_sweep = t;
            for (int i = 0; i < conc; i++) {
                struct slot *s = &slots[i];
                double since = s->count ? s->q[s->head].t0 : s->t0;
                if (s->st != IDLE && t - since > QUERY_TIMEOUT) fail(s, E_TIMEOUT);
            }
        }
        for (int i = 0; i < conc; i++) {
            if (slots[i].st == IDLE) start(&slots[i]);
        }
    }
    double elapsed = now() - t_start;
    double cpu = cpu_seconds() - cpu0;
    for (int i = 0; i < conc; i++) drop(&slots[i], 1);
    qsort(lat, nlat, sizeof *lat, cmp_float);
    uint64_t nerr = 0;
    for (int k = 0; k < E_COUNT; k++) nerr += errors[k];
    printf("ok=%llu errors=%llu elapsed=%.6f cpu=%.6f p50_us=%.1f p90_us=%.1f p99_us=%.1f "
           "max_us=%.1f",
           (unsigned long long)ok, (unsigned long long)nerr, elapsed, cpu, pct(50), pct(90),
           pct(99), nlat ? lat[nlat - 1] : 0.0);
    for (int k = 0; k < E_COUNT; k++)
        printf(" err_%s=%llu", err_names[k], (unsigned long long)errors[k]);
    printf(" sample=%s\n", sample[0] ? sample : "-");
    return 0;
}
