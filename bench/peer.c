/*
 * The benchmark's TLS peer in C (OpenSSL, one thread per connection), built
 * by bench/peer.py at bench time:
 *
 *     cc -O2 -o peer bench/peer.c -lssl -lcrypto -lpthread
 *     peer CERT_CHAIN KEY COUNTERS_FILE
 *
 * It listens on two loopback ports and prints "FULL_PORT RESUME_PORT\n":
 *
 * - FULL_PORT never lets a connection resume: no session cache, no tickets;
 * - RESUME_PORT issues TLS 1.3 tickets (OpenSSL's defaults: two stateless
 *   tickets per full handshake) and resumes them.
 *
 * Both are TLS 1.3 only.  COUNTERS_FILE (at least 32 bytes, made by the
 * caller) is mapped shared; per port it holds two native-endian uint64:
 * handshakes completed and handshakes that resumed a session, as the server
 * sees them (SSL_session_reused).  Layout: full.all, full.resumed,
 * resume.all, resume.resumed.
 *
 * Protocol on a connection, the same as the Python peer's: requests of a
 * 9-byte header, op (1 byte) + n (uint64, big-endian):
 *   U: read and discard n bytes, then answer "K";
 *   D: send n zero bytes;
 *   E: read n (<= 256 KiB) bytes and send them back.
 * EOF or an error ends the connection.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <fcntl.h>
#include <unistd.h>

#define CHUNK (256 * 1024)

struct listener {
    int fd;
    SSL_CTX *ctx;
    uint64_t *counters; /* [0] handshakes, [1] resumed */
};

struct conn {
    int fd;
    struct listener *l;
};

static unsigned char zeros[CHUNK];

static int read_exact(SSL *ssl, unsigned char *buf, size_t n)
{
    size_t got = 0;
    while (got < n) {
        int k = SSL_read(ssl, buf + got, (int)(n - got));
        if (k <= 0)
            return 0;
        got += (size_t)k;
    }
    return 1;
}

static int write_all(SSL *ssl, const unsigned char *buf, size_t n)
{
    size_t done = 0;
    while (done < n) {
        int k = SSL_write(ssl, buf + done, (int)(n - done));
        if (k <= 0)
            return 0;
        done += (size_t)k;
    }
    return 1;
}

static void serve(SSL *ssl)
{
    unsigned char head[9];
    unsigned char *buf = NULL;
    while (read_exact(ssl, head, sizeof head)) {
        uint64_t n = 0;
        for (int i = 1; i < 9; i++)
            n = (n << 8) | head[i];
        if (buf == NULL && (buf = malloc(CHUNK)) == NULL)
            break;
        if (head[0] == 'U') {
            while (n) {
                int k = SSL_read(ssl, buf, (int)(n < CHUNK ? n : CHUNK));
                if (k <= 0)
                    goto out;
                n -= (uint64_t)k;
            }
            if (!write_all(ssl, (const unsigned char *)"K", 1))
                break;
        } else if (head[0] == 'D') {
            while (n) {
                size_t k = n < CHUNK ? n : CHUNK;
                if (!write_all(ssl, zeros, k))
                    goto out;
                n -= k;
            }
        } else if (head[0] == 'E') {
            if (n > CHUNK || !read_exact(ssl, buf, n) || !write_all(ssl, buf, n))
                break;
        } else {
            break;
        }
    }
out:
    free(buf);
}

static void *connection(void *arg)
{
    struct conn *c = arg;
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    SSL *ssl = SSL_new(c->l->ctx);
    if (ssl != NULL && SSL_set_fd(ssl, c->fd) == 1 && SSL_accept(ssl) == 1) {
        __atomic_fetch_add(&c->l->counters[0], 1, __ATOMIC_SEQ_CST);
        if (SSL_session_reused(ssl))
            __atomic_fetch_add(&c->l->counters[1], 1, __ATOMIC_SEQ_CST);
        serve(ssl);
    }
    SSL_free(ssl);
    ERR_clear_error();
    close(c->fd);
    free(c);
    return NULL;
}

static void *accept_loop(void *arg)
{
    struct listener *l = arg;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 128 * 1024);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    for (;;) {
        int fd = accept(l->fd, NULL, NULL);
        if (fd < 0)
            continue;
        struct conn *c = malloc(sizeof *c);
        pthread_t t;
        if (c == NULL) {
            close(fd);
            continue;
        }
        c->fd = fd;
        c->l = l;
        if (pthread_create(&t, &attr, connection, c) != 0) {
            close(fd);
            free(c);
        }
    }
    return NULL;
}

static SSL_CTX *context(const char *cert, const char *key, int resume)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL || !SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION)
        || SSL_CTX_use_certificate_chain_file(ctx, cert) != 1
        || SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
        ERR_print_errors_fp(stderr);
        exit(2);
    }
    if (!resume) {
        SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
        SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
        SSL_CTX_set_num_tickets(ctx, 0);
    }
    return ctx;
}

static int listen_loopback(void)
{
    struct sockaddr_in a;
    int one = 1, fd = socket(AF_INET, SOCK_STREAM, 0);
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(fd, 4096) != 0) {
        perror("listen");
        exit(2);
    }
    return fd;
}

static int port_of(int fd)
{
    struct sockaddr_in a;
    socklen_t len = sizeof a;
    getsockname(fd, (struct sockaddr *)&a, &len);
    return ntohs(a.sin_port);
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: %s CERT_CHAIN KEY COUNTERS_FILE\n", argv[0]);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    int cf = open(argv[3], O_RDWR);
    uint64_t *counters = cf < 0 ? MAP_FAILED
        : mmap(NULL, 4 * sizeof(uint64_t), PROT_READ | PROT_WRITE, MAP_SHARED, cf, 0);
    if (counters == MAP_FAILED) {
        perror(argv[3]);
        return 2;
    }
    static struct listener ls[2];
    pthread_t t[2];
    for (int i = 0; i < 2; i++) {
        ls[i].fd = listen_loopback();
        ls[i].ctx = context(argv[1], argv[2], i == 1);
        ls[i].counters = counters + 2 * i;
    }
    printf("%d %d\n", port_of(ls[0].fd), port_of(ls[1].fd));
    fflush(stdout);
    for (int i = 0; i < 2; i++)
        pthread_create(&t[i], NULL, accept_loop, &ls[i]);
    pthread_join(t[0], NULL);
    return 0;
}
