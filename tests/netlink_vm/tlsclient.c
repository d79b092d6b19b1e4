/*
 * A program that uses only the plain socket API on IPPROTO_TLS sockets, as
 * the SSA kernel module lets any program do. Run inside the VM by
 * driver.py; prints one JSON object per run on stdout.
 *
 *   tlsclient echo ADDR PORT HOSTNAME NBYTES      blocking connect, echo, checksums, peer identity
 *   tlsclient connect ADDR PORT HOSTNAME          blocking connect: its errno
 *   tlsclient nonblock ADDR PORT HOSTNAME         nonblocking connect, poll in slices, SO_ERROR, echo
 *   tlsclient serve ADDR PORT CHAIN KEY           bind, listen, accept one, echo until EOF
 *                                                 (CHAIN and KEY are files; it passes their PEM, as a
 *                                                 program should: the daemon reads no private file for it)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define IPPROTO_TLS 205
#define TLS_HOSTNAME 85
#define TLS_CERTIFICATE_CHAIN 88
#define TLS_PRIVATE_KEY 89
#define TLS_PEER_IDENTITY 93

static uint64_t fnv(uint64_t h, const unsigned char *p, size_t n) {
    for (size_t i = 0; i < n; i++) { h ^= p[i]; h *= 1099511628211ULL; }
    return h;
}

static socklen_t address(const char *host, int port, struct sockaddr_storage *ss) {
    memset(ss, 0, sizeof *ss);
    struct sockaddr_in *a = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *b = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, host, &a->sin_addr) == 1) {
        a->sin_family = AF_INET; a->sin_port = htons(port); return sizeof *a;
    }
    if (inet_pton(AF_INET6, host, &b->sin6_addr) == 1) {
        b->sin6_family = AF_INET6; b->sin6_port = htons(port); return sizeof *b;
    }
    fprintf(stderr, "bad address %s\n", host); exit(2);
}

/* The whole of a file, NUL-terminated (exits on failure). */
static char *read_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) { printf("{\"step\":\"read %s\",\"errno\":%d}\n", path, errno); exit(0); }
    size_t size = 0, cap = 4096;
    char *buf = malloc(cap);
    size_t n;
    while (buf && (n = fread(buf + size, 1, cap - size - 1, f)) > 0) {
        size += n;
        if (cap - size < 2) buf = realloc(buf, cap *= 2);
    }
    fclose(f);
    if (!buf) exit(2);
    buf[size] = 0;
    return buf;
}

static int tls_socket(int family, const char *hostname) {
    int fd = socket(family, SOCK_STREAM, IPPROTO_TLS);
    if (fd < 0) { printf("{\"step\":\"socket\",\"errno\":%d}\n", errno); exit(0); }
    if (hostname && setsockopt(fd, IPPROTO_TLS, TLS_HOSTNAME, hostname, strlen(hostname) + 1) < 0) {
        printf("{\"step\":\"setsockopt\",\"errno\":%d}\n", errno); exit(0);
    }
    return fd;
}

/* Write n pseudo-random bytes while reading the echo; half-close; read to EOF. */
static void echo(int fd, size_t n, const char *extra) {
    unsigned char buf[65536];
    uint64_t sent = 1469598103934665603ULL, got = sent;
    size_t out = 0, in = 0;
    unsigned x = 12345;
    int shut = 0, err = 0;
    while (1) {
        struct pollfd p = {fd, POLLIN | (out < n ? POLLOUT : 0), 0};
        if (out == n && !shut) { shutdown(fd, SHUT_WR); shut = 1; }
        if (poll(&p, 1, 30000) <= 0) { err = ETIMEDOUT; break; }
        if (p.revents & POLLIN || p.revents & (POLLHUP | POLLERR)) {
            ssize_t r = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
            if (r == 0) break;
            if (r < 0 && errno != EAGAIN) { err = errno; break; }
            if (r > 0) { got = fnv(got, buf, r); in += r; }
        }
        if (out < n && p.revents & POLLOUT) {
            size_t k = n - out < sizeof buf ? n - out : sizeof buf;
            for (size_t i = 0; i < k; i++) { x = x * 1103515245 + 12345; buf[i] = x >> 16; }
            ssize_t w = send(fd, buf, k, MSG_DONTWAIT | MSG_NOSIGNAL);
            if (w < 0 && errno != EAGAIN) { err = errno; break; }
            if (w > 0) {
                sent = fnv(sent, buf, w); out += w;
                if ((size_t)w < k) { /* rewind the generator for the unsent tail */
                    x = 12345; for (size_t i = 0; i < out; i++) x = x * 1103515245 + 12345;
                }
            }
        }
    }
    printf("{\"errno\":0,\"sent\":%zu,\"received\":%zu,\"sent_hash\":\"%016llx\",\"received_hash\":\"%016llx\","
           "\"io_errno\":%d%s}\n", out, in, (unsigned long long)sent, (unsigned long long)got, err, extra);
}

static void identity(int fd, char *out, size_t size) {
    char id[1024] = "";
    socklen_t len = sizeof id - 1;
    if (getsockopt(fd, IPPROTO_TLS, TLS_PEER_IDENTITY, id, &len) < 0)
        snprintf(out, size, ",\"identity_errno\":%d", errno);
    else {
        id[len] = 0;
        for (char *c = id; *c; c++) if (*c == '"' || *c == '\\') *c = '_';
        snprintf(out, size, ",\"identity\":\"%s\"", id);
    }
}

int main(int argc, char **argv) {
    if (argc < 5) { fprintf(stderr, "usage: see the source\n"); return 2; }
    const char *mode = argv[1];
    struct sockaddr_storage ss;
    socklen_t len = address(argv[2], atoi(argv[3]), &ss);
    char extra[1200] = "";
    if (!strcmp(mode, "echo") || !strcmp(mode, "connect")) {
        int fd = tls_socket(ss.ss_family, argv[4]);
        if (connect(fd, (struct sockaddr *)&ss, len) < 0) {
            printf("{\"step\":\"connect\",\"errno\":%d}\n", errno); return 0;
        }
        if (!strcmp(mode, "connect")) { printf("{\"step\":\"connect\",\"errno\":0}\n"); return 0; }
        identity(fd, extra, sizeof extra);
        echo(fd, argc > 5 ? strtoul(argv[5], 0, 10) : 100000, extra);
        close(fd);
    } else if (!strcmp(mode, "nonblock")) {
        int fd = tls_socket(ss.ss_family, argv[4]);
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
        int r = connect(fd, (struct sockaddr *)&ss, len);
        int first = r < 0 ? errno : 0;
        int slices = 0, ready = 0;
        /* The module can lose the wake-up: poll in 250 ms slices, 60 s in all. */
        while (first == EINPROGRESS && slices < 240 && !ready) {
            struct pollfd p = {fd, POLLOUT, 0};
            ready = poll(&p, 1, 250) > 0 && (p.revents & POLLOUT);
            slices++;
        }
        int soerr = -1;
        socklen_t sl = sizeof soerr;
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl);
        snprintf(extra, sizeof extra, ",\"connect_errno\":%d,\"slices\":%d,\"writable\":%d,\"so_error\":%d",
                 first, slices, ready, soerr);
        echo(fd, 50000, extra);
        close(fd);
    } else if (!strcmp(mode, "serve")) {
        int fd = tls_socket(ss.ss_family, NULL);
        char *chain = read_file(argv[4]), *key = read_file(argv[5]);
        if (setsockopt(fd, IPPROTO_TLS, TLS_CERTIFICATE_CHAIN, chain, strlen(chain) + 1) < 0 ||
            setsockopt(fd, IPPROTO_TLS, TLS_PRIVATE_KEY, key, strlen(key) + 1) < 0) {
            printf("{\"step\":\"credentials\",\"errno\":%d}\n", errno); return 0;
        }
        if (bind(fd, (struct sockaddr *)&ss, len) < 0) { printf("{\"step\":\"bind\",\"errno\":%d}\n", errno); return 0; }
        if (listen(fd, 8) < 0) { printf("{\"step\":\"listen\",\"errno\":%d}\n", errno); return 0; }
        printf("{\"step\":\"listening\"}\n");
        fflush(stdout);
        int c = accept(fd, NULL, NULL);
        if (c < 0) { printf("{\"step\":\"accept\",\"errno\":%d}\n", errno); return 0; }
        unsigned char buf[65536];
        uint64_t h = 1469598103934665603ULL;
        size_t total = 0;
        ssize_t r;
        while ((r = recv(c, buf, sizeof buf, 0)) > 0) {
            h = fnv(h, buf, r); total += r;
            if (send(c, buf, r, MSG_NOSIGNAL) != r) break;
        }
        printf("{\"step\":\"accepted\",\"errno\":%d,\"received\":%zu,\"received_hash\":\"%016llx\"}\n",
               r < 0 ? errno : 0, total, (unsigned long long)h);
        close(c); close(fd);
    }
    return 0;
}
