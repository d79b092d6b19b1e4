/*
 * Checks of libssa-preload, run under `ssa run` by tests/test_preload.py
 * against a real daemon and a real TLS echo server on 127.0.0.1.
 *
 *   preload_check MODE PORT CA_FILE [ARGS...]
 *
 * Every mode prints "ok MODE" and exits 0 on success; a failed check prints
 * what failed (with errno) and exits 1.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define IPPROTO_TLS 205
#define TLS_HOSTNAME 85
#define TLS_TRUSTED_PEER_CERTIFICATES 87
#define TLS_CERTIFICATE_CHAIN 88
#define TLS_PRIVATE_KEY 89
#define TLS_ID 96
#define TLS_CHOSEN_VERSION 113

static int port;
static const char *ca;
static const char *self_path;

#define CHECK(cond, ...) do { if (!(cond)) { \
    fprintf(stderr, "FAILED at line %d: ", __LINE__); fprintf(stderr, __VA_ARGS__); \
    fprintf(stderr, " (errno %d: %s)\n", errno, strerror(errno)); exit(1); } } while (0)

static struct sockaddr_in server_address(int p)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(p)};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    return a;
}

/* A new SSA socket trusting the test CA, for "localhost". */
static int tls_socket(int type)
{
    int fd = socket(AF_INET, type, IPPROTO_TLS);
    CHECK(fd >= 0, "socket(IPPROTO_TLS)");
    CHECK(setsockopt(fd, IPPROTO_TLS, TLS_TRUSTED_PEER_CERTIFICATES, ca, strlen(ca) + 1) == 0,
          "setsockopt(TLS_TRUSTED_PEER_CERTIFICATES, %s)", ca);
    CHECK(setsockopt(fd, IPPROTO_TLS, TLS_HOSTNAME, "localhost", 10) == 0, "TLS_HOSTNAME");
    return fd;
}

static int connected_socket(void)
{
    int fd = tls_socket(SOCK_STREAM);
    struct sockaddr_in a = server_address(port);
    CHECK(connect(fd, (struct sockaddr *)&a, sizeof a) == 0, "connect");
    return fd;
}

/* Send a message through the echo server and read it back. */
static void echo(int fd, const char *what)
{
    char message[128], back[128];
    int n = snprintf(message, sizeof message, "%s from %d", what, (int)getpid());
    CHECK(write(fd, message, n) == n, "write (%s)", what);
    int got = 0;
    while (got < n) {
        ssize_t r = read(fd, back + got, n - got);
        CHECK(r > 0, "read (%s) after %d bytes", what, got);
        got += r;
    }
    CHECK(memcmp(message, back, n) == 0, "echo mismatch (%s)", what);
}

static uint64_t socket_id(int fd)
{
    uint64_t id = 0;
    socklen_t len = sizeof id;
    CHECK(getsockopt(fd, IPPROTO_TLS, TLS_ID, &id, &len) == 0 && len == 8, "TLS_ID");
    return id;
}

static void mode_client(void)
{
    int fd = connected_socket();
    int version = -1;
    socklen_t len = sizeof version;
    CHECK(getsockopt(fd, IPPROTO_TLS, TLS_CHOSEN_VERSION, &version, &len) == 0 && version >= 2,
          "TLS_CHOSEN_VERSION");
    struct sockaddr_in peer;
    len = sizeof peer;
    CHECK(getpeername(fd, (struct sockaddr *)&peer, &len) == 0 && ntohs(peer.sin_port) == port,
          "getpeername");
    echo(fd, "client");
    CHECK(shutdown(fd, SHUT_WR) == 0, "shutdown(SHUT_WR)");
    char c;
    CHECK(read(fd, &c, 1) == 0, "EOF after close_notify");
    CHECK(close(fd) == 0, "close");
    /* a plain TCP socket is untouched */
    int tcp = socket(AF_INET, SOCK_STREAM, 0);
    int type = 0;
    len = sizeof type;
    CHECK(tcp >= 0 && getsockopt(tcp, SOL_SOCKET, SO_PROTOCOL, &type, &len) == 0
          && type == IPPROTO_TCP, "plain TCP socket");
    close(tcp);
}

static void mode_nonblocking(void)
{
    int fd = tls_socket(SOCK_STREAM | SOCK_NONBLOCK);
    struct sockaddr_in a = server_address(port);
    CHECK(connect(fd, (struct sockaddr *)&a, sizeof a) == -1 && errno == EINPROGRESS,
          "nonblocking connect gives EINPROGRESS");
    struct pollfd p = {.fd = fd, .events = POLLOUT};
    CHECK(poll(&p, 1, 20000) == 1 && (p.revents & POLLOUT), "writable when connected");
    int err = -1;
    socklen_t len = sizeof err;
    CHECK(getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == 0, "SO_ERROR %d", err);
    CHECK(fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK) == 0, "blocking again");
    echo(fd, "nonblocking");
    /* a failure is reported the same way: nothing listens on a port we freed */
    int tcp = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in any = server_address(0);
    len = sizeof any;
    bind(tcp, (struct sockaddr *)&any, sizeof any);
    getsockname(tcp, (struct sockaddr *)&any, &len);
    close(tcp);
    int bad = tls_socket(SOCK_STREAM | SOCK_NONBLOCK);
    int rc = connect(bad, (struct sockaddr *)&any, sizeof any);
    if (rc == -1 && errno == EINPROGRESS) {
        p.fd = bad;
        CHECK(poll(&p, 1, 20000) == 1, "writable when failed");
        len = sizeof err;
        CHECK(getsockopt(bad, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == ECONNABORTED,
              "SO_ERROR of a refused connect is ECONNABORTED, got %d", err);
    } else {
        CHECK(rc == -1 && errno == ECONNABORTED, "refused connect");
    }
    close(bad);
    close(fd);
}

/* ---- EINTR: a gate between the daemon and the server ---- */

static int gate_listener, gate_go[2];
static pthread_t main_thread;
static volatile sig_atomic_t interrupted;

static void on_signal(int sig) { (void)sig; }

static void relay(int a, int b)
{
    struct pollfd p[2] = {{.fd = a, .events = POLLIN}, {.fd = b, .events = POLLIN}};
    char buf[16384];
    for (;;) {
        if (poll(p, 2, -1) < 0)
            continue;
        for (int i = 0; i < 2; i++) {
            if (!p[i].revents)
                continue;
            ssize_t n = read(p[i].fd, buf, sizeof buf);
            if (n <= 0)
                return;
            if (write(p[1 - i].fd, buf, n) != n)
                return;
        }
    }
}

/* Accept the daemon's TCP connection, interrupt main until it saw EINTR,
 * then connect to the real server and relay. */
static void *gate(void *arg)
{
    (void)arg;
    int conn = accept(gate_listener, NULL, NULL);
    if (conn < 0)
        return NULL;
    struct pollfd go = {.fd = gate_go[0], .events = POLLIN};
    while (poll(&go, 1, 0) == 0) {
        pthread_kill(main_thread, SIGUSR1);
        poll(NULL, 0, 10);  /* resend until main answers: it may not wait yet */
    }
    int up = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = server_address(port);
    if (connect(up, (struct sockaddr *)&a, sizeof a) == 0)
        relay(conn, up);
    close(up);
    close(conn);
    return NULL;
}

static void mode_eintr(void)
{
    struct sigaction sa = {.sa_handler = on_signal};  /* no SA_RESTART */
    sigaction(SIGUSR1, &sa, NULL);
    gate_listener = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in g = server_address(0);
    socklen_t len = sizeof g;
    CHECK(bind(gate_listener, (struct sockaddr *)&g, sizeof g) == 0 && listen(gate_listener, 1) == 0
          && getsockname(gate_listener, (struct sockaddr *)&g, &len) == 0, "gate");
    CHECK(pipe(gate_go) == 0, "pipe");
    main_thread = pthread_self();
    pthread_t t;
    pthread_create(&t, NULL, gate, NULL);
    int fd = tls_socket(SOCK_STREAM);
    CHECK(connect(fd, (struct sockaddr *)&g, sizeof g) == -1 && errno == EINTR,
          "blocking connect interrupted by a signal fails with EINTR");
    CHECK(write(gate_go[1], "g", 1) == 1, "go");
    /* POSIX: the connect goes on; a second connect says EALREADY while it does */
    int rc = connect(fd, (struct sockaddr *)&g, sizeof g);
    CHECK(rc == -1 && (errno == EALREADY || errno == EOPNOTSUPP), "connect again");
    struct pollfd p = {.fd = fd, .events = POLLOUT};
    while (poll(&p, 1, 20000) < 0 && errno == EINTR)
        ;
    CHECK(p.revents & POLLOUT, "writable when the interrupted connect is done");
    int err = -1;
    len = sizeof err;
    CHECK(getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == 0, "SO_ERROR %d", err);
    echo(fd, "after EINTR");
    close(fd);
    pthread_join(t, NULL);
}

/* ---- fork ---- */

static void mode_fork(void)
{
    /* the child closes its copy: the parent's socket lives on */
    int fd = connected_socket();
    pid_t pid = fork();
    if (pid == 0) {
        close(fd);
        int own = connected_socket();  /* the child's own sockets work */
        echo(own, "child's own");
        close(own);
        _exit(0);
    }
    int status;
    CHECK(waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0,
          "child 1");
    echo(fd, "parent after child closed its copy");
    socket_id(fd);
    /* the parent closes its copy at once: the child's works */
    pid = fork();
    if (pid == 0) {
        echo(fd, "child after parent closed its copy");
        socket_id(fd);
        close(fd);
        _exit(0);
    }
    close(fd);
    CHECK(waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0,
          "child 2");
}

/* ---- exec ---- */

static void mode_exec(void)
{
    int fd = connected_socket();
    int hidden = tls_socket(SOCK_STREAM | SOCK_CLOEXEC);
    uint64_t id = socket_id(fd);
    int copy = dup(fd);
    char fd_text[16], id_text[32], hidden_text[16], copy_text[16];
    snprintf(fd_text, sizeof fd_text, "%d", fd);
    snprintf(copy_text, sizeof copy_text, "%d", copy);
    snprintf(hidden_text, sizeof hidden_text, "%d", hidden);
    snprintf(id_text, sizeof id_text, "%llu", (unsigned long long)id);
    char port_text[16];
    snprintf(port_text, sizeof port_text, "%d", port);
    if (fork() == 0) {  /* execv in a child, execl here */
        char *argv[] = {(char *)self_path, "exec-child", port_text, (char *)ca, fd_text, id_text,
                        hidden_text, copy_text, NULL};
        execv(self_path, argv);
        CHECK(0, "execv");
    }
    int status;
    CHECK(wait(&status) > 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0, "exec-child by execv");
    execl(self_path, self_path, "exec-child", port_text, ca, fd_text, id_text, hidden_text,
          copy_text, (char *)NULL);
    CHECK(0, "execl");
}

static void mode_exec_child(char **args)
{
    int fd = atoi(args[0]), hidden = atoi(args[2]), copy = atoi(args[3]);
    unsigned long long id = strtoull(args[1], NULL, 10);
    CHECK(socket_id(fd) == id, "the same socket after exec");
    CHECK(socket_id(copy) == id, "its dup after exec");
    CHECK(fcntl(hidden, F_GETFD) == -1 && errno == EBADF, "a SOCK_CLOEXEC socket is gone");
    struct sockaddr_in peer;
    socklen_t len = sizeof peer;
    CHECK(getpeername(fd, (struct sockaddr *)&peer, &len) == 0 && ntohs(peer.sin_port) == port,
          "getpeername after exec");
    close(copy);
    echo(fd, "after exec");
    close(fd);
    int fresh = connected_socket();
    echo(fresh, "new socket after exec");
    close(fresh);
}

/* ---- dup ---- */

static void mode_dup(void)
{
    /* descriptor numbers: the lowest free, as the kernel's */
    int probe = open("/dev/null", O_RDONLY);
    close(probe);
    int fd = connected_socket();
    CHECK(fd == probe, "socket() gave %d, the lowest free is %d", fd, probe);
    uint64_t id = socket_id(fd);
    int a = dup(fd), b = fcntl(fd, F_DUPFD, 100), c = fcntl(fd, F_DUPFD_CLOEXEC, 200);
    CHECK(a > fd && b >= 100 && c >= 200, "dup/F_DUPFD");
    CHECK(dup2(fd, 50) == 50 && dup3(fd, 60, O_CLOEXEC) == 60, "dup2/dup3");
    CHECK(socket_id(a) == id && socket_id(b) == id && socket_id(c) == id && socket_id(50) == id
          && socket_id(60) == id, "every copy is the same socket");
    /* dup2 over a copy replaces it; the socket lives while any copy does */
    int other = connected_socket();
    CHECK(dup2(other, a) == a && socket_id(a) == socket_id(other), "dup2 over a copy");
    close(other);
    close(fd);
    close(b);
    close(c);
    close(50);
    echo(60, "through a dup after the original was closed");
    echo(a, "the other socket through its dup");
    close(60);
    close(a);
    CHECK(getsockopt(60, IPPROTO_TLS, TLS_ID, &id, &(socklen_t){8}) == -1 && errno == EBADF,
          "closed");
    /* the control connection's descriptor (kept at 256 or above) is invisible */
    int s = connected_socket();
    id = socket_id(s);
    int hidden = -1, domain;
    for (int n = 256; n < 65536 && hidden < 0; n++)
        if (fcntl(n, F_GETFD) >= 0 && getsockopt(n, SOL_SOCKET, SO_DOMAIN, &domain,
                                                 &(socklen_t){sizeof domain}) == 0
            && domain == AF_UNIX)
            hidden = n;
    CHECK(hidden > s, "a control descriptor above the program's");
    CHECK(close(hidden) == -1 && errno == EBADF, "close() of the control descriptor is EBADF");
    int probe2 = open("/dev/null", O_RDONLY);
    CHECK(dup2(probe2, hidden) == hidden, "dup2 onto the control descriptor's number");
    close(probe2);
    CHECK(socket_id(s) == id, "the socket still works: its control connection moved");
    echo(s, "after dup2 over its control descriptor");
    close(hidden);
    close(s);
}

/* ---- threads ---- */

static int rounds = 20;

static void *worker(void *arg)
{
    (void)arg;
    for (int i = 0; i < rounds; i++) {
        int fd = connected_socket();
        int copy = dup(fd);
        close(fd);
        echo(copy, "thread");
        close(copy);
    }
    return NULL;
}

static void mode_threads(int count)
{
    pthread_t t[64];
    for (int i = 0; i < count; i++)
        CHECK(pthread_create(&t[i], NULL, worker, NULL) == 0, "pthread_create");
    for (int i = 0; i < count; i++)
        pthread_join(t[i], NULL);
}

/* ---- server: bind, listen, accept ---- */

/* Signal the main thread until it says it saw EINTR. */
static void *interrupter(void *arg)
{
    (void)arg;
    while (!interrupted) {
        pthread_kill(main_thread, SIGUSR1);
        poll(NULL, 0, 10);  /* resend until main answers: it may not wait yet */
    }
    return NULL;
}

static void mode_server(const char *chain, const char *key)
{
    int listener = socket(AF_INET, SOCK_STREAM, IPPROTO_TLS);
    CHECK(listener >= 0, "socket");
    int one = 1;
    CHECK(setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) == 0, "SO_REUSEADDR");
    CHECK(setsockopt(listener, IPPROTO_TLS, TLS_CERTIFICATE_CHAIN, chain, strlen(chain) + 1) == 0,
          "TLS_CERTIFICATE_CHAIN");
    CHECK(setsockopt(listener, IPPROTO_TLS, TLS_PRIVATE_KEY, key, strlen(key) + 1) == 0,
          "TLS_PRIVATE_KEY");
    CHECK(setsockopt(listener, IPPROTO_TLS, TLS_PRIVATE_KEY, "/nonexistent", 13) == -1
          && errno == EBADF, "an unreadable key path is EBADF");
    struct sockaddr_in a = server_address(0);
    socklen_t len = sizeof a;
    CHECK(bind(listener, (struct sockaddr *)&a, sizeof a) == 0, "bind");
    CHECK(listen(listener, 8) == 0, "listen");
    CHECK(getsockname(listener, (struct sockaddr *)&a, &len) == 0 && a.sin_port != 0,
          "getsockname");
    int flags = fcntl(listener, F_GETFL);
    fcntl(listener, F_SETFL, flags | O_NONBLOCK);
    CHECK(accept(listener, NULL, NULL) == -1 && errno == EAGAIN, "nonblocking accept, none ready");
    fcntl(listener, F_SETFL, flags);
    /* a signal during a blocking accept: EINTR, and the listener goes on */
    struct sigaction sa = {.sa_handler = on_signal};  /* no SA_RESTART */
    sigaction(SIGUSR1, &sa, NULL);
    main_thread = pthread_self();
    interrupted = 0;
    pthread_t t;
    pthread_create(&t, NULL, interrupter, NULL);
    CHECK(accept(listener, NULL, NULL) == -1 && errno == EINTR, "blocking accept interrupted");
    interrupted = 1;
    pthread_join(t, NULL);
    int client = tls_socket(SOCK_STREAM | SOCK_NONBLOCK);
    CHECK(connect(client, (struct sockaddr *)&a, sizeof a) == -1 && errno == EINPROGRESS,
          "connect to ourselves");
    struct sockaddr_in peer;
    len = sizeof peer;
    int conn = accept4(listener, (struct sockaddr *)&peer, &len, SOCK_CLOEXEC);
    CHECK(conn >= 0 && peer.sin_family == AF_INET, "accept4");
    CHECK(fcntl(conn, F_GETFD) & FD_CLOEXEC, "SOCK_CLOEXEC on the accepted socket");
    struct pollfd p = {.fd = client, .events = POLLOUT};
    CHECK(poll(&p, 1, 20000) == 1, "client connected");
    fcntl(client, F_SETFL, fcntl(client, F_GETFL) & ~O_NONBLOCK);
    CHECK(write(client, "ping", 4) == 4, "client write");
    char buf[8];
    CHECK(read(conn, buf, 4) == 4 && memcmp(buf, "ping", 4) == 0, "server read");
    CHECK(write(conn, "pong", 4) == 4, "server write");
    CHECK(read(client, buf, 4) == 4 && memcmp(buf, "pong", 4) == 0, "client read");
    close(conn);
    close(client);
    close(listener);
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IONBF, 0);
    if (argc < 4) {
        fprintf(stderr, "usage: %s MODE PORT CA [ARGS...]\n", argv[0]);
        return 2;
    }
    self_path = argv[0];
    const char *mode = argv[1];
    port = atoi(argv[2]);
    ca = argv[3];
    if (!strcmp(mode, "client"))
        mode_client();
    else if (!strcmp(mode, "nonblocking"))
        mode_nonblocking();
    else if (!strcmp(mode, "eintr"))
        mode_eintr();
    else if (!strcmp(mode, "fork"))
        mode_fork();
    else if (!strcmp(mode, "exec"))
        mode_exec();
    else if (!strcmp(mode, "exec-child") && argc >= 8)
        mode_exec_child(argv + 4);
    else if (!strcmp(mode, "dup"))
        mode_dup();
    else if (!strcmp(mode, "threads"))
        mode_threads(argc > 4 ? atoi(argv[4]) : 8);
    else if (!strcmp(mode, "server") && argc >= 6)
        mode_server(argv[4], argv[5]);
    else {
        fprintf(stderr, "unknown mode %s\n", mode);
        return 2;
    }
    printf("ok %s\n", mode);
    return 0;
}
