/*
 * limitd: the least an ident server can do, the "limit" column of benchmarks/bench_server.py.
 *
 *   limitd HOST PORT USER one|many
 *
 * One thread, level-triggered epoll, non-blocking sockets (as loadgen.c). Every line
 * "S , C" read on a connection is answered "S,C:USERID:UNIX:USER\r\n" (no lookup, no
 * policy, no limits, no timers, no logging); a line that is not two numbers gets
 * "0,0:ERROR:INVALID-PORT". "one": the connection is closed after its first answer (as
 * ours without --multiple); "many": it stays open until the client closes it, and
 * pipelined queries are answered, those of one read() in one send(). A client that does
 * not read (a send() that would block) is dropped: the load generator always reads.
 *
 * It uses the kernel's help that ours uses (TCP_DEFER_ACCEPT: accept() completes once
 * the query is there) and reads at once after accept(), so that the usual connection
 * is served without an epoll round; in "one" mode such a connection is never
 * registered with epoll at all.
 *
 * What it is for: what the machine allows, not a server to deploy. Its per-connection
 * state is 64 octets in an array indexed by descriptor, touched only for descriptors in
 * use, so its memory per idle connection is the kernel's alone.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

struct conn {
    unsigned char len;
    char buf[63];
};

static struct conn *conns;
static size_t nconns;
static const char *user;
static int one_answer; /* "one": close after the first answer */

static void drop(int fd) {
    close(fd); /* also leaves the epoll set */
    conns[fd].len = 0;
}

/* Parse "S , C" (spaces allowed around both numbers); 0 when it is not that. */
static int parse(const char *p, const char *end, unsigned *s, unsigned *c) {
    unsigned v[2] = {0, 0};
    for (int k = 0; k < 2; k++) {
        while (p < end && (*p == ' ' || *p == '\t')) p++;
        const char *digits = p;
        while (p < end && *p >= '0' && *p <= '9' && v[k] < 100000) v[k] = v[k] * 10 + (unsigned)(*p++ - '0');
        if (p == digits || v[k] < 1 || v[k] > 65535) return 0;
        while (p < end && (*p == ' ' || *p == '\t')) p++;
        if (k == 0 && (p == end || *p++ != ',')) return 0;
    }
    *s = v[0];
    *c = v[1];
    return p == end;
}

/* Read and answer what has arrived; 1 while the connection stays open. */
static int on_readable(int fd) {
    struct conn *c = &conns[fd];
    ssize_t n = read(fd, c->buf + c->len, sizeof c->buf - c->len);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return 1;
    if (n <= 0) {
        drop(fd);
        return 0;
    }
    size_t len = c->len + (size_t)n, used = 0;
    char out[sizeof c->buf / 2 * 64];
    size_t olen = 0;
    for (;;) {
        char *line = c->buf + used;
        char *eol = memchr(line, '\n', len - used);
        if (eol == NULL) break;
        char *end = eol > line && eol[-1] == '\r' ? eol - 1 : eol;
        unsigned sp, cp;
        if (parse(line, end, &sp, &cp))
            olen += (size_t)snprintf(out + olen, sizeof out - olen, "%u,%u:USERID:UNIX:%s\r\n", sp,
                                     cp, user);
        else
            olen += (size_t)snprintf(out + olen, sizeof out - olen, "0,0:ERROR:INVALID-PORT\r\n");
        used = (size_t)(eol - c->buf) + 1;
        if (one_answer) break;
    }
    if (used == 0 && len == sizeof c->buf) { /* a line longer than any query */
        drop(fd);
        return 0;
    }
    memmove(c->buf, c->buf + used, len - used);
    c->len = (unsigned char)(len - used);
    if (olen > 0 && (send(fd, out, olen, MSG_NOSIGNAL | MSG_DONTWAIT) != (ssize_t)olen ||
                     one_answer)) {
        drop(fd);
        return 0;
    }
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 5 || (strcmp(argv[4], "one") != 0 && strcmp(argv[4], "many") != 0)) {
        fprintf(stderr, "usage: %s HOST PORT USER one|many\n", argv[0]);
        return 2;
    }
    user = argv[3];
    one_answer = strcmp(argv[4], "one") == 0;
    if (strlen(user) > 400) {
        fprintf(stderr, "limitd: USER too long\n");
        return 2;
    }
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[2]))};
    if (inet_pton(AF_INET, argv[1], &addr.sin_addr) != 1) {
        fprintf(stderr, "limitd: bad IPv4 address %s\n", argv[1]);
        return 2;
    }
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    nconns = rl.rlim_cur == RLIM_INFINITY ? 1u << 20 : (size_t)rl.rlim_cur;
    conns = calloc(nconns, sizeof *conns); /* pages are touched only by descriptors in use */
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    setsockopt(lfd, IPPROTO_TCP, TCP_DEFER_ACCEPT, &one, sizeof one); /* 1 s, as ours */
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (conns == NULL || lfd < 0 || ep < 0 || bind(lfd, (struct sockaddr *)&addr, sizeof addr) ||
        listen(lfd, 4096)) {
        perror("limitd");
        return 1;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = lfd};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    signal(SIGPIPE, SIG_IGN);
    struct epoll_event evs[256];
    for (;;) {
        int n = epoll_wait(ep, evs, 256, -1);
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd != lfd) {
                on_readable(fd);
                continue;
            }
            int cfd;
            while ((cfd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
                if ((size_t)cfd >= nconns) {
                    close(cfd);
                    continue;
                }
                if (!on_readable(cfd)) continue; /* answered (and closed) at once */
                if (!one_answer) setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                struct epoll_event cev = {.events = EPOLLIN, .data.fd = cfd};
                epoll_ctl(ep, EPOLL_CTL_ADD, cfd, &cev);
            }
        }
    }
}
