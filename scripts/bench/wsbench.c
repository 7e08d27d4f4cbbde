// wsbench: a minimal, fast WebSocket echo server and load generator for wstap's benchmark.
// Not a WebSocket library: it speaks just enough RFC 6455 (handshake, masked client frames,
// unmasked server frames) to measure a relay without being the bottleneck.
//
//   wsbench server PORT                       echo server, one thread per connection
//   wsbench load HOST PORT CONNS SIZE WINDOW MESSAGES   throughput: prints msgs/s, MB/s
//   wsbench rtt HOST PORT SIZE MESSAGES       one connection, window 1: prints p50/p99 in us
//   wsbench handshakes HOST PORT SECONDS      connect, upgrade, close in a loop: prints per second
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *what) { perror(what); exit(2); }

// ---- SHA-1 and base64, for Sec-WebSocket-Accept only ----
static uint32_t rol(uint32_t x, int n) { return (x << n) | (x >> (32 - n)); }
static void sha1(const uint8_t *msg, size_t len, uint8_t out[20]) {
    uint32_t h[5] = {0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0};
    size_t total = ((len + 8) / 64 + 1) * 64;
    uint8_t *buf = calloc(total, 1);
    memcpy(buf, msg, len);
    buf[len] = 0x80;
    uint64_t bits = (uint64_t)len * 8;
    for (int i = 0; i < 8; i++) buf[total - 1 - i] = (uint8_t)(bits >> (8 * i));
    for (size_t chunk = 0; chunk < total; chunk += 64) {
        uint32_t w[80];
        for (int i = 0; i < 16; i++)
            w[i] = (uint32_t)buf[chunk + 4 * i] << 24 | (uint32_t)buf[chunk + 4 * i + 1] << 16 |
                   (uint32_t)buf[chunk + 4 * i + 2] << 8 | buf[chunk + 4 * i + 3];
        for (int i = 16; i < 80; i++) w[i] = rol(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
        uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4];
        for (int i = 0; i < 80; i++) {
            uint32_t f, k;
            if (i < 20) { f = (b & c) | (~b & d); k = 0x5A827999; }
            else if (i < 40) { f = b ^ c ^ d; k = 0x6ED9EBA1; }
            else if (i < 60) { f = (b & c) | (b & d) | (c & d); k = 0x8F1BBCDC; }
            else { f = b ^ c ^ d; k = 0xCA62C1D6; }
            uint32_t t = rol(a, 5) + f + e + k + w[i];
            e = d; d = c; c = rol(b, 30); b = a; a = t;
        }
        h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e;
    }
    free(buf);
    for (int i = 0; i < 5; i++) for (int j = 0; j < 4; j++) out[4 * i + j] = (uint8_t)(h[i] >> (24 - 8 * j));
}
static void base64(const uint8_t *in, size_t len, char *out) {
    static const char *t = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t o = 0;
    for (size_t i = 0; i < len; i += 3) {
        uint32_t v = in[i] << 16 | (i + 1 < len ? in[i + 1] << 8 : 0) | (i + 2 < len ? in[i + 2] : 0);
        out[o++] = t[v >> 18 & 63];
        out[o++] = t[v >> 12 & 63];
        out[o++] = i + 1 < len ? t[v >> 6 & 63] : '=';
        out[o++] = i + 2 < len ? t[v & 63] : '=';
    }
    out[o] = 0;
}

// ---- buffered socket reading ----
typedef struct { int fd; uint8_t *buf; size_t cap, start, end; } reader_t;
static void reader_init(reader_t *r, int fd, size_t cap) { r->fd = fd; r->buf = malloc(cap); r->cap = cap; r->start = r->end = 0; }
// Ensures n bytes are buffered; returns 0 on EOF.
static int fill(reader_t *r, size_t n) {
    if (r->end - r->start >= n) return 1;
    if (r->start > 0) { memmove(r->buf, r->buf + r->start, r->end - r->start); r->end -= r->start; r->start = 0; }
    if (n > r->cap) { r->cap = n * 2; r->buf = realloc(r->buf, r->cap); }
    while (r->end - r->start < n) {
        ssize_t got = read(r->fd, r->buf + r->end, r->cap - r->end);
        if (got <= 0) return 0;
        r->end += got;
    }
    return 1;
}
static int write_all(int fd, const uint8_t *p, size_t n) {
    while (n) { ssize_t w = write(fd, p, n); if (w <= 0) return 0; p += w; n -= w; }
    return 1;
}

// Reads one frame header; returns payload length (or -1 on EOF) and sets opcode/mask.
static int64_t read_header(reader_t *r, int *opcode, uint8_t mask[4], int *masked) {
    if (!fill(r, 2)) return -1;
    uint8_t b0 = r->buf[r->start], b1 = r->buf[r->start + 1];
    *opcode = b0 & 15;
    *masked = b1 >> 7;
    uint64_t len = b1 & 127;
    size_t hl = 2 + (len == 126 ? 2 : len == 127 ? 8 : 0) + (*masked ? 4 : 0);
    if (!fill(r, hl)) return -1;
    uint8_t *p = r->buf + r->start + 2;
    if (len == 126) { len = (uint64_t)p[0] << 8 | p[1]; p += 2; }
    else if (len == 127) { len = 0; for (int i = 0; i < 8; i++) len = len << 8 | p[i]; p += 8; }
    if (*masked) memcpy(mask, p, 4);
    r->start += hl;
    return (int64_t)len;
}
static size_t make_header(uint8_t *h, int opcode, uint64_t len, const uint8_t *mask) {
    size_t n = 0;
    h[n++] = 0x80 | opcode;
    uint8_t m = mask ? 0x80 : 0;
    if (len < 126) h[n++] = m | len;
    else if (len < 65536) { h[n++] = m | 126; h[n++] = len >> 8; h[n++] = len; }
    else { h[n++] = m | 127; for (int i = 7; i >= 0; i--) h[n++] = len >> (8 * i); }
    if (mask) { memcpy(h + n, mask, 4); n += 4; }
    return n;
}

// ---- server ----
static void *serve_conn(void *arg) {
    int fd = (int)(intptr_t)arg;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    reader_t r;
    reader_init(&r, fd, 1 << 20);
    // Handshake: read the head, find the key.
    char head[8192]; size_t hn = 0;
    head[0] = 0;
    while (!strstr(head, "\r\n\r\n")) {
        ssize_t got = read(fd, head + hn, sizeof head - 1 - hn);
        if (got <= 0) goto out;
        hn += got; head[hn] = 0;
    }
    char *end = strstr(head, "\r\n\r\n") + 4;
    size_t extra = hn - (end - head);
    memcpy(r.buf, end, extra); r.end = extra;
    char *k = strcasestr(head, "Sec-WebSocket-Key:");
    if (!k) goto out;
    k += 18; while (*k == ' ') k++;
    char key[128]; int kn = 0; while (k[kn] && k[kn] != '\r' && kn < 100) { key[kn] = k[kn]; kn++; }
    memcpy(key + kn, "258EAFA5-E914-47DA-95CA-C5AB0DC85B11", 36);
    uint8_t digest[20]; char accept[40];
    sha1((uint8_t *)key, kn + 36, digest);
    base64(digest, 20, accept);
    char resp[256];
    int rn = snprintf(resp, sizeof resp, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n", accept);
    if (!write_all(fd, (uint8_t *)resp, rn)) goto out;
    // Echo: batch all complete frames of one read into one write.
    uint8_t *out = malloc(1 << 20); size_t cap = 1 << 20;
    for (;;) {
        size_t on = 0;
        do {
            int op, masked; uint8_t mask[4];
            int64_t len = read_header(&r, &op, mask, &masked);
            if (len < 0) { write_all(fd, out, on); free(out); goto out; }
            if (!fill(&r, len)) { free(out); goto out; }
            if (on + len + 14 > cap) { cap = (on + len + 14) * 2; out = realloc(out, cap); }
            on += make_header(out + on, op, len, NULL);
            uint8_t *p = r.buf + r.start;
            for (int64_t i = 0; i < len; i++) out[on + i] = p[i] ^ (masked ? mask[i & 3] : 0);
            on += len; r.start += len;
            if (op == 8) { write_all(fd, out, on); free(out); goto out; }
        } while (r.end - r.start >= 2 && on < (1 << 19));
        if (!write_all(fd, out, on)) { free(out); goto out; }
    }
out:
    close(fd);
    free(r.buf);
    return NULL;
}

static int run_server(int port) {
    int ls = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(ls, (struct sockaddr *)&a, sizeof a) || listen(ls, 1024)) die("listen");
    socklen_t al = sizeof a; getsockname(ls, (struct sockaddr *)&a, &al);
    printf("ready %d\n", ntohs(a.sin_port)); fflush(stdout);
    for (;;) {
        int fd = accept(ls, NULL, NULL);
        if (fd < 0) continue;
        pthread_t t; pthread_attr_t at; pthread_attr_init(&at); pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
        pthread_attr_setstacksize(&at, 256 * 1024);
        pthread_create(&t, &at, serve_conn, (void *)(intptr_t)fd);
    }
}

// ---- client ----
static const char *g_host; static int g_port;
static int connect_ws(reader_t *r) {
    int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(g_port)};
    inet_pton(AF_INET, g_host, &a.sin_addr);
    if (connect(fd, (struct sockaddr *)&a, sizeof a)) die("connect");
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    const char *req = "GET /bench HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    write_all(fd, (const uint8_t *)req, strlen(req));
    reader_init(r, fd, 1 << 20);
    for (;;) {  // read until end of head
        if (!fill(r, r->end - r->start + 1)) die("handshake");
        void *e = memmem(r->buf + r->start, r->end - r->start, "\r\n\r\n", 4);
        if (e) { r->start = (uint8_t *)e + 4 - r->buf; break; }
    }
    return fd;
}

typedef struct { int size, window; long messages; double *rtts; long done; } job_t;
static uint8_t g_mask[4] = {0x12, 0x34, 0x56, 0x78};

static void *load_conn(void *arg) {
    job_t *j = arg;
    reader_t r; int fd = connect_ws(&r);
    size_t framelen = 14 + j->size;
    uint8_t *batch = malloc(framelen * j->window);
    uint8_t *one = malloc(framelen);
    uint8_t *payload = malloc(j->size + 1);
    for (int i = 0; i < j->size; i++) payload[i] = 'a' + i % 26;
    size_t hn = make_header(one, j->size <= 64 ? 1 : 2, j->size, g_mask);
    for (int i = 0; i < j->size; i++) one[hn + i] = payload[i] ^ g_mask[i & 3];
    size_t fl = hn + j->size;
    long sent = 0, got = 0;
    int w = j->window < j->messages ? j->window : (int)j->messages;
    for (int i = 0; i < w; i++) memcpy(batch + i * fl, one, fl);
    double *starts = j->rtts ? calloc(j->messages, sizeof(double)) : NULL;
    if (starts) starts[0] = now_s();
    write_all(fd, batch, fl * w); sent = w;
    while (got < j->messages) {
        int op, masked; uint8_t mask[4];
        int64_t len = read_header(&r, &op, mask, &masked);
        if (len < 0 || !fill(&r, len)) die("echo");
        r.start += len; got++;
        if (j->rtts) j->rtts[got - 1] = now_s() - starts[got - 1];
        if (sent < j->messages) {
            if (starts) starts[sent] = now_s();
            write_all(fd, one, fl); sent++;
        }
    }
    uint8_t close_frame[8]; size_t cn = make_header(close_frame, 8, 0, g_mask);
    write_all(fd, close_frame, cn);
    shutdown(fd, SHUT_WR);
    while (fill(&r, r.end - r.start + 1)) r.start = r.end;
    close(fd);
    j->done = got;
    free(batch); free(one); free(payload); free(r.buf); free(starts);
    return NULL;
}

static int cmp(const void *a, const void *b) { double x = *(double *)a, y = *(double *)b; return x < y ? -1 : x > y; }

int main(int argc, char **argv) {
    if (argc >= 3 && !strcmp(argv[1], "server")) return run_server(atoi(argv[2]));
    if (argc >= 8 && !strcmp(argv[1], "load")) {
        g_host = argv[2]; g_port = atoi(argv[3]);
        int conns = atoi(argv[4]); job_t proto = {.size = atoi(argv[5]), .window = atoi(argv[6]), .messages = atol(argv[7])};
        pthread_t *t = calloc(conns, sizeof *t); job_t *jobs = calloc(conns, sizeof *jobs);
        double t0 = now_s();
        for (int i = 0; i < conns; i++) { jobs[i] = proto; pthread_create(&t[i], NULL, load_conn, &jobs[i]); }
        long total = 0;
        for (int i = 0; i < conns; i++) { pthread_join(t[i], NULL); total += jobs[i].done; }
        double dt = now_s() - t0;
        printf("messages %ld seconds %.4f msgs_per_s %.1f mb_per_s %.2f\n", total, dt, total / dt, total * (double)proto.size / dt / 1e6);
        return 0;
    }
    if (argc >= 6 && !strcmp(argv[1], "rtt")) {
        g_host = argv[2]; g_port = atoi(argv[3]);
        job_t j = {.size = atoi(argv[4]), .window = 1, .messages = atol(argv[5])};
        j.rtts = calloc(j.messages, sizeof(double));
        load_conn(&j);
        qsort(j.rtts, j.messages, sizeof(double), cmp);
        printf("p50_us %.1f p99_us %.1f\n", j.rtts[j.messages / 2] * 1e6, j.rtts[(long)(j.messages * 0.99)] * 1e6);
        return 0;
    }
    if (argc >= 5 && !strcmp(argv[1], "handshakes")) {
        g_host = argv[2]; g_port = atoi(argv[3]);
        double secs = atof(argv[4]), t0 = now_s(); long n = 0;
        while (now_s() - t0 < secs) {
            reader_t r; int fd = connect_ws(&r);
            uint8_t close_frame[8]; size_t cn = make_header(close_frame, 8, 0, g_mask);
            write_all(fd, close_frame, cn);
            while (fill(&r, r.end - r.start + 1)) r.start = r.end;
            close(fd); free(r.buf); n++;
        }
        printf("handshakes %ld seconds %.3f per_s %.1f\n", n, now_s() - t0, n / (now_s() - t0));
        return 0;
    }
    fprintf(stderr, "usage: see the comment at the top of wsbench.c\n");
    return 64;
}
