/* A pipelining load client for one connection: keeps WINDOW requests in flight so that the
 * server, not the client, is the bottleneck.
 *
 *   pipeline HOST PORT PROTOCOL COUNT WINDOW LINE...
 *
 * Sends COUNT requests, the LINEs in turn (each followed by "\n"), never more than WINDOW ahead of
 * the replies, and counts replies as PROTOCOL frames them: "lines" (sockrace: one line each) or
 * "resp" (redis-server: "+", "-", ":" one line; "$n" a bulk string of n bytes and its CRLF; "$-1"
 * one line). Prints one line: "replies N errors E seconds S", where errors are replies starting
 * with "ERR"/"#tag ERR" (lines) or "-" (resp). Exit status 1 on a connection error. */
#define _POSIX_C_SOURCE 200809L
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { READ_SIZE = 1 << 16 };

struct counter {
    int resp;           /* RESP framing instead of one reply per line */
    long replies;
    long errors;
    long skip;          /* bytes of a bulk string body (and its CRLF) still to skip */
    int at_line_start;
    int line_is_bulk;   /* the current line starts with '$' */
    long bulk_length;
    int bulk_negative;
    int line_prefix_len;
    char line_prefix[4];
};

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void end_of_line(struct counter *c) {
    if (c->resp && c->line_is_bulk && !c->bulk_negative) {
        c->skip = c->bulk_length + 2;  /* the reply ends after its body */
        if (c->skip == 0) c->replies++;
    } else {
        c->replies++;
        if (c->resp ? c->line_prefix[0] == '-'
                    : (c->line_prefix_len >= 3 && memcmp(c->line_prefix, "ERR", 3) == 0))
            c->errors++;
    }
    c->at_line_start = 1;
    c->line_is_bulk = 0;
    c->bulk_length = 0;
    c->bulk_negative = 0;
    c->line_prefix_len = 0;
}

static void count_replies(struct counter *c, const char *data, long size) {
    long i = 0;
    while (i < size) {
        if (c->skip > 0) {
            long take = size - i < c->skip ? size - i : c->skip;
            i += take;
            c->skip -= take;
            if (c->skip == 0) c->replies++;
            continue;
        }
        if (!c->resp) {  /* one reply per line: find the newlines with memchr */
            const char *newline = memchr(data + i, '\n', (size_t)(size - i));
            long end = newline ? newline - data : size;
            for (long j = i; j < end && c->line_prefix_len < 3; j++) {
                /* a tagged reply's status follows "#tag " */
                if (c->line_prefix_len == 0 && c->at_line_start && data[j] == '#') {
                    const char *space = memchr(data + j, ' ', (size_t)(end - j));
                    if (!space) { j = end; break; }
                    j = space - data;
                    c->at_line_start = 0;
                    continue;
                }
                c->at_line_start = 0;
                c->line_prefix[c->line_prefix_len++] = data[j];
            }
            if (!newline) { c->at_line_start = c->at_line_start && end == i; i = size; continue; }
            end_of_line(c);
            i = end + 1;
            continue;
        }
        char ch = data[i++];
        if (ch == '\n') { end_of_line(c); continue; }
        if (c->at_line_start) {
            c->at_line_start = 0;
            c->line_prefix[0] = ch;
            c->line_prefix_len = 1;
            c->line_is_bulk = ch == '$';
        } else if (c->line_is_bulk) {
            if (ch == '-') c->bulk_negative = 1;
            else if (ch >= '0' && ch <= '9') c->bulk_length = c->bulk_length * 10 + (ch - '0');
        }
    }
}

static int connect_to(const char *host, const char *port) {
    struct addrinfo hints = {0}, *found;
    hints.ai_socktype = SOCK_STREAM;
    if (getaddrinfo(host, port, &hints, &found) != 0) return -1;
    int fd = socket(found->ai_family, found->ai_socktype, found->ai_protocol);
    if (fd >= 0 && connect(fd, found->ai_addr, found->ai_addrlen) != 0) { close(fd); fd = -1; }
    freeaddrinfo(found);
    if (fd >= 0) { int one = 1; setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one); }
    return fd;
}

int main(int argc, char **argv) {
    if (argc < 7) {
        fprintf(stderr, "usage: pipeline HOST PORT lines|resp COUNT WINDOW LINE...\n");
        return 2;
    }
    long count = atol(argv[4]), window = atol(argv[5]);
    int kinds = argc - 6;
    if (count < 1 || window < 1) { fprintf(stderr, "pipeline: COUNT and WINDOW must be positive\n"); return 2; }
    /* Every request of the run laid out once, so that sending is one write per window refill. */
    long *offsets = malloc(sizeof(long) * (size_t)(count + 1));
    size_t total = 0;
    for (long r = 0; r < count; r++) total += strlen(argv[6 + r % kinds]) + 1;
    char *requests = malloc(total);
    if (!offsets || !requests) { fprintf(stderr, "pipeline: out of memory\n"); return 1; }
    size_t at = 0;
    for (long r = 0; r < count; r++) {
        const char *line = argv[6 + r % kinds];
        size_t length = strlen(line);
        offsets[r] = (long)at;
        memcpy(requests + at, line, length);
        requests[at + length] = '\n';
        at += length + 1;
    }
    offsets[count] = (long)at;

    int fd = connect_to(argv[1], argv[2]);
    if (fd < 0) { perror("pipeline: connect"); return 1; }
    struct counter c = {0};
    c.resp = strcmp(argv[3], "resp") == 0;
    c.at_line_start = 1;
    static char buffer[READ_SIZE];
    long sent = 0;
    double start = now();
    while (c.replies < count) {
        long target = c.replies + window < count ? c.replies + window : count;
        if (target > sent) {
            long from = offsets[sent], to = offsets[target];
            while (from < to) {
                ssize_t n = write(fd, requests + from, (size_t)(to - from));
                if (n <= 0) { perror("pipeline: write"); return 1; }
                from += n;
            }
            sent = target;
        }
        ssize_t n = read(fd, buffer, sizeof buffer);
        if (n <= 0) {
            fprintf(stderr, "pipeline: connection closed after %ld of %ld replies\n", c.replies, count);
            return 1;
        }
        count_replies(&c, buffer, n);
    }
    double seconds = now() - start;
    printf("replies %ld errors %ld seconds %.6f\n", c.replies, c.errors, seconds);
    close(fd);
    free(offsets);
    free(requests);
    return 0;
}
