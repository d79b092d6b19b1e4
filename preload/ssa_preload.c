/*
 * libssa-preload: the Secure Socket API for unmodified, dynamically linked
 * programs, without a kernel module.
 *
 * Preloaded (LD_PRELOAD, or `ssa run -- COMMAND`), it makes
 * socket(AF_INET | AF_INET6 | AF_HOSTNAME, SOCK_STREAM, IPPROTO_TLS) open a
 * socket in the SSA daemon through its Unix frontend (docs/protocol.md) and
 * serves every later call on that descriptor through the daemon. The
 * descriptor the program gets is the plaintext end the daemon passes back,
 * so read/write/poll/select/epoll work on it natively.
 *
 * Each SSA socket has its own control connection, kept at a high
 * descriptor number (invisible to the program: close() of it fails with
 * EBADF, dup2() onto it moves it away first). The table from plaintext
 * descriptor to socket is guarded by one mutex; a socket is shared by every
 * descriptor that dup() made of it, and its control connection closes (the
 * daemon's close()) when the last one, in every process, is closed.
 * Across exec the table travels in the environment (SSA_PRELOAD_STATE).
 */
#define _GNU_SOURCE
#include <alloca.h>
#include <arpa/inet.h>
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define IPPROTO_TLS 205
#define AF_HOSTNAME 43
#define TLS_TRUSTED_PEER_CERTIFICATES 87
#define TLS_CERTIFICATE_CHAIN 88
#define TLS_PRIVATE_KEY 89

enum { OP_SOCKET = 1, OP_BIND, OP_CONNECT, OP_SETSOCKOPT, OP_GETSOCKOPT,
       OP_LISTEN, OP_ACCEPT, OP_CLOSE };
#define WIRE_VERSION 1
#define HEADER_SIZE 20
#define MAX_FRAME (1u << 20)
#define MAX_FDS 16
#define HOST_MAX 255
#define STATE_VARIABLE "SSA_PRELOAD_STATE"

struct sockaddr_host {
    sa_family_t sh_family;
    unsigned short sh_port;
    unsigned char sh_name[HOST_MAX];
};

/* One SSA socket, shared by the descriptors dup() made of it. */
struct ssa_sock {
    int refs;                   /* descriptors + calls in progress */
    int ctl;                    /* the control connection */
    uint64_t id;
    int family;
    int connected;              /* connect attempted, or accepted */
    int shared;                 /* another process may hold it too (fork) */
    int reuse[2];               /* SO_REUSEADDR, SO_REUSEPORT */
    pthread_mutex_t lock;       /* one request at a time on ctl */
    uint32_t tag;
    unsigned char *buf;         /* bytes read from ctl, not yet framed */
    size_t len, cap;
    int fdq[MAX_FDS * 2];       /* descriptors received, not yet claimed */
    int nfdq;
    struct sockaddr_storage local, peer;
    socklen_t local_len, peer_len;
};

struct reply {
    int32_t err;
    unsigned char *body;        /* the payload after the errno (malloc) */
    size_t len;
    int fds[MAX_FDS];
    int nfds;
};

/* ---- the real functions ---- */

#define REAL(name) real_##name
#define DECLARE(ret, name, ...) static ret (*real_##name)(__VA_ARGS__)
DECLARE(int, socket, int, int, int);
DECLARE(int, connect, int, const struct sockaddr *, socklen_t);
DECLARE(int, bind, int, const struct sockaddr *, socklen_t);
DECLARE(int, listen, int, int);
DECLARE(int, accept4, int, struct sockaddr *, socklen_t *, int);
DECLARE(int, getsockname, int, struct sockaddr *, socklen_t *);
DECLARE(int, getpeername, int, struct sockaddr *, socklen_t *);
DECLARE(int, setsockopt, int, int, int, const void *, socklen_t);
DECLARE(int, getsockopt, int, int, int, void *, socklen_t *);
DECLARE(int, shutdown, int, int);
DECLARE(int, close, int);
DECLARE(int, dup, int);
DECLARE(int, dup2, int, int);
DECLARE(int, dup3, int, int, int);
DECLARE(int, fcntl, int, int, ...);
DECLARE(int, execve, const char *, char *const[], char *const[]);
DECLARE(int, execvpe, const char *, char *const[], char *const[]);

static void resolve(void)
{
#define R(name) if (!real_##name) *(void **)&real_##name = dlsym(RTLD_NEXT, #name)
    R(socket); R(connect); R(bind); R(listen); R(accept4); R(getsockname);
    R(getpeername); R(setsockopt); R(getsockopt); R(shutdown); R(close);
    R(dup); R(dup2); R(dup3); R(fcntl); R(execve); R(execvpe);
#undef R
}

/* ---- the table ---- */

static pthread_mutex_t table_lock = PTHREAD_MUTEX_INITIALIZER;
static struct ssa_sock **table;     /* by plaintext descriptor */
static unsigned char *is_ctl;       /* by descriptor: a control connection */
static int table_size;
static volatile int live;           /* SSA sockets open: 0 = fast path */

/* Grow the arrays to hold fd; table_lock held. */
static int reserve(int fd)
{
    if (fd < table_size)
        return 0;
    int size = table_size ? table_size : 64;
    while (size <= fd)
        size *= 2;
    struct ssa_sock **t = realloc(table, size * sizeof *t);
    if (!t)
        return -1;
    table = t;
    unsigned char *c = realloc(is_ctl, size);
    if (!c)
        return -1;
    is_ctl = c;
    memset(table + table_size, 0, (size - table_size) * sizeof *t);
    memset(is_ctl + table_size, 0, size - table_size);
    table_size = size;
    return 0;
}

static void free_sock(struct ssa_sock *s)
{
    pthread_mutex_lock(&table_lock);
    if (s->ctl >= 0 && s->ctl < table_size)
        is_ctl[s->ctl] = 0;
    pthread_mutex_unlock(&table_lock);
    if (s->ctl >= 0)
        REAL(close)(s->ctl);
    for (int i = 0; i < s->nfdq; i++)
        REAL(close)(s->fdq[i]);
    pthread_mutex_destroy(&s->lock);
    free(s->buf);
    free(s);
}

static void post_close(struct ssa_sock *s);

/*
 * Drop one reference, keeping errno; the last closes the control
 * connection. A socket no other process can hold is closed with CLOSE
 * first: the daemon takes a connection that ends without it for the
 * program's death and resets the peer (docs/protocol.md, "Ends"). After fork another process may still
 * use it, so only the connection's end is left to the daemon.
 */
static void release(struct ssa_sock *s)
{
    int saved = errno;          /* callers return the failure they had */
    pthread_mutex_lock(&table_lock);
    int left = --s->refs;
    if (left == 0)
        live--;
    pthread_mutex_unlock(&table_lock);
    if (left == 0) {
        if (!s->shared && s->id)
            post_close(s);
        free_sock(s);
    }
    errno = saved;
}

/* The socket behind fd, held (release() it), or NULL. */
static struct ssa_sock *hold(int fd)
{
    if (!live || fd < 0)
        return NULL;
    struct ssa_sock *s = NULL;
    pthread_mutex_lock(&table_lock);
    if (fd < table_size && (s = table[fd]))
        s->refs++;
    pthread_mutex_unlock(&table_lock);
    return s;
}

static int is_control(int fd)
{
    if (!live || fd < 0)
        return 0;
    pthread_mutex_lock(&table_lock);
    int yes = fd < table_size && is_ctl[fd];
    pthread_mutex_unlock(&table_lock);
    return yes;
}

/* Put s at fd (a new reference); fd must be free in the table. */
static int attach(int fd, struct ssa_sock *s, int new_sock)
{
    pthread_mutex_lock(&table_lock);
    int ok = reserve(fd) == 0 && reserve(s->ctl) == 0;
    if (ok) {
        table[fd] = s;
        s->refs++;
        is_ctl[s->ctl] = 1;
        if (new_sock)
            live++;
    }
    pthread_mutex_unlock(&table_lock);
    return ok ? 0 : -1;
}

/* Take fd out of the table; return its socket (still referenced) or NULL. */
static struct ssa_sock *detach(int fd)
{
    if (!live || fd < 0)
        return NULL;
    struct ssa_sock *s = NULL;
    pthread_mutex_lock(&table_lock);
    if (fd < table_size) {
        s = table[fd];
        table[fd] = NULL;
    }
    pthread_mutex_unlock(&table_lock);
    return s;
}

/* ---- control connections ---- */

/* Move a new control descriptor out of the program's way (high numbers). */
static int move_high(int fd)
{
    struct rlimit rl;
    int floor = 256;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY
        && rl.rlim_cur > 512)
        floor = rl.rlim_cur > 4096 ? 3072 : (int)rl.rlim_cur - 256;
    int high = REAL(fcntl)(fd, F_DUPFD_CLOEXEC, floor);
    if (high < 0)
        return fd;
    REAL(close)(fd);
    return high;
}

static void daemon_path(char *out, size_t size)
{
    const char *env = getenv("SSA_SOCKET");
    if (env && *env) {
        snprintf(out, size, "%s", env);
        return;
    }
    if (getuid() != 0) {
        const char *runtime = getenv("XDG_RUNTIME_DIR");
        if (runtime && *runtime)
            snprintf(out, size, "%s/ssa/ssa.sock", runtime);
        else
            snprintf(out, size, "/tmp/ssa-%u/ssa.sock", (unsigned)getuid());
        if (access(out, F_OK) == 0)
            return;
    }
    snprintf(out, size, "/run/ssa/ssa.sock");
}

static int open_control(void)
{
    char path[PATH_MAX];
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    daemon_path(path, sizeof path);
    if (strlen(path) >= sizeof sun.sun_path) {
        errno = ENAMETOOLONG;
        return -1;
    }
    strcpy(sun.sun_path, path);
    int fd = REAL(socket)(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    fd = move_high(fd);
    while (REAL(connect)(fd, (struct sockaddr *)&sun, sizeof sun) < 0) {
        if (errno == EINTR)
            continue;
        int e = errno;
        REAL(close)(fd);
        errno = e;
        return -1;
    }
    return fd;
}

static struct ssa_sock *new_sock(int ctl, int family)
{
    struct ssa_sock *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->ctl = ctl;
    s->family = family;
    pthread_mutex_init(&s->lock, NULL);
    return s;
}

static void put_u16(unsigned char *p, uint16_t v) { p[0] = v >> 8; p[1] = v; }
static void put_u32(unsigned char *p, uint32_t v) { put_u16(p, v >> 16); put_u16(p + 2, v); }
static void put_u64(unsigned char *p, uint64_t v) { put_u32(p, v >> 32); put_u32(p + 4, v); }
static uint16_t get_u16(const unsigned char *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static uint32_t get_u32(const unsigned char *p) { return (uint32_t)get_u16(p) << 16 | get_u16(p + 2); }
static uint64_t get_u64(const unsigned char *p) { return (uint64_t)get_u32(p) << 32 | get_u32(p + 4); }

static int send_all(int fd, const unsigned char *data, size_t len);

/* Send CLOSE without waiting for its reply (the connection closes next). */
static void post_close(struct ssa_sock *s)
{
    unsigned char frame[20];
    put_u32(frame, sizeof frame - 4);
    frame[4] = 1;                       /* version */
    frame[5] = OP_CLOSE;
    put_u16(frame + 6, 0);              /* no descriptors */
    put_u32(frame + 8, ++s->tag);
    put_u64(frame + 12, s->id);
    send_all(s->ctl, frame, sizeof frame);
}

static int send_all(int fd, const unsigned char *data, size_t len)
{
    while (len) {
        ssize_t n = send(fd, data, len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        data += n;
        len -= n;
    }
    return 0;
}

/*
 * Read more bytes (and descriptors) from the control connection. With
 * `interruptible`, a signal ends the wait with EINTR.
 */
static int fill(struct ssa_sock *s, int interruptible)
{
    if (interruptible) {
        struct pollfd p = {.fd = s->ctl, .events = POLLIN};
        if (poll(&p, 1, -1) < 0)
            return -1;
    }
    if (s->cap - s->len < 65536) {
        size_t cap = s->cap ? s->cap * 2 : 131072;
        unsigned char *b = realloc(s->buf, cap);
        if (!b)
            return -1;
        s->buf = b;
        s->cap = cap;
    }
    union {
        char space[CMSG_SPACE(MAX_FDS * sizeof(int))];
        struct cmsghdr align;
    } control;
    struct iovec iov = {.iov_base = s->buf + s->len, .iov_len = s->cap - s->len};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1,
                         .msg_control = control.space, .msg_controllen = sizeof control.space};
    ssize_t n;
    do
        n = recvmsg(s->ctl, &msg, MSG_CMSG_CLOEXEC);
    while (n < 0 && errno == EINTR && !interruptible);
    if (n < 0)
        return -1;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
            continue;
        int count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        int *fds = (int *)CMSG_DATA(c);
        for (int i = 0; i < count; i++) {
            if (s->nfdq < MAX_FDS * 2)
                s->fdq[s->nfdq++] = fds[i];
            else
                REAL(close)(fds[i]);
        }
    }
    if (n == 0) {
        errno = ECONNABORTED;
        return -1;
    }
    s->len += n;
    return 0;
}

/*
 * Send one request on s's control connection and wait for its reply
 * (replies to abandoned requests are skipped). Returns 0 with r filled, or
 * -1 with errno (EINTR only when interruptible).
 */
static int request(struct ssa_sock *s, int op, const void *body, size_t blen,
                   struct reply *r, int interruptible)
{
    memset(r, 0, sizeof *r);
    if (blen + HEADER_SIZE - 4 > MAX_FRAME) {
        errno = EINVAL;
        return -1;
    }
    unsigned char *frame = malloc(HEADER_SIZE + blen);
    if (!frame)
        return -1;
    pthread_mutex_lock(&s->lock);
    uint32_t tag = s->tag = s->tag % 0xFFFFFFFFu + 1;
    put_u32(frame, HEADER_SIZE - 4 + blen);
    frame[4] = WIRE_VERSION;
    frame[5] = op;
    put_u16(frame + 6, 0);
    put_u32(frame + 8, tag);
    put_u64(frame + 12, s->id);
    if (blen)
        memcpy(frame + HEADER_SIZE, body, blen);
    int rc = send_all(s->ctl, frame, HEADER_SIZE + blen);
    free(frame);
    if (rc < 0) {
        if (errno == EPIPE || errno == ECONNRESET)
            errno = ECONNABORTED;
        pthread_mutex_unlock(&s->lock);
        return -1;
    }
    for (;;) {
        while (s->len < 4 || s->len < 4 + (size_t)get_u32(s->buf)) {
            if (s->len >= 4 && get_u32(s->buf) > MAX_FRAME) {
                errno = EPROTO;
                goto fail;
            }
            if (fill(s, interruptible) < 0)
                goto fail;
        }
        size_t flen = 4 + get_u32(s->buf);
        if (flen < HEADER_SIZE + 4) {
            errno = EPROTO;
            goto fail;
        }
        int nfds = get_u16(s->buf + 6);
        uint32_t got = get_u32(s->buf + 8);
        if (nfds > s->nfdq || nfds > MAX_FDS) {
            errno = EPROTO;
            goto fail;
        }
        if (got == tag) {
            r->err = (int32_t)get_u32(s->buf + HEADER_SIZE);
            r->len = flen - HEADER_SIZE - 4;
            r->body = malloc(r->len + 1);
            if (r->body) {
                memcpy(r->body, s->buf + HEADER_SIZE + 4, r->len);
                r->body[r->len] = 0;
            }
            memcpy(r->fds, s->fdq, nfds * sizeof(int));
            r->nfds = nfds;
        } else {
            for (int i = 0; i < nfds; i++)
                REAL(close)(s->fdq[i]);
        }
        memmove(s->fdq, s->fdq + nfds, (s->nfdq - nfds) * sizeof(int));
        s->nfdq -= nfds;
        memmove(s->buf, s->buf + flen, s->len - flen);
        s->len -= flen;
        if (got == tag)
            break;
    }
    pthread_mutex_unlock(&s->lock);
    if (!r->body) {
        for (int i = 0; i < r->nfds; i++)
            REAL(close)(r->fds[i]);
        errno = ENOMEM;
        return -1;
    }
    return 0;
fail:
    pthread_mutex_unlock(&s->lock);
    return -1;
}

static void drop_reply(struct reply *r)
{
    for (int i = 0; i < r->nfds; i++)
        REAL(close)(r->fds[i]);
    free(r->body);
    r->body = NULL;
    r->nfds = 0;
}

/* A request whose reply carries no result: 0, or -1 with the errno. */
static int simple_call(struct ssa_sock *s, int op, const void *body, size_t blen,
                       struct reply *r)
{
    if (request(s, op, body, blen, r, 0) < 0)
        return -1;
    if (r->err) {
        int e = r->err;
        drop_reply(r);
        errno = e;
        return -1;
    }
    return 0;
}

/* ---- addresses ---- */

/* Encode addr as the wire's address; returns its length or -1. */
static int encode_address(const struct sockaddr *addr, socklen_t len, unsigned char *out)
{
    char host[HOST_MAX + 1];
    unsigned port;
    if (!addr || len < sizeof(sa_family_t)) {
        errno = EINVAL;
        return -1;
    }
    int family = addr->sa_family;
    if (family == AF_INET && len >= sizeof(struct sockaddr_in)) {
        const struct sockaddr_in *a = (const void *)addr;
        inet_ntop(AF_INET, &a->sin_addr, host, sizeof host);
        port = ntohs(a->sin_port);
    } else if (family == AF_INET6 && len >= sizeof(struct sockaddr_in6)) {
        const struct sockaddr_in6 *a = (const void *)addr;
        inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof host);
        port = ntohs(a->sin6_port);
    } else if (family == AF_HOSTNAME && len > offsetof(struct sockaddr_host, sh_name)) {
        const struct sockaddr_host *a = (const void *)addr;
        size_t n = len - offsetof(struct sockaddr_host, sh_name);
        if (n > HOST_MAX)
            n = HOST_MAX;
        n = strnlen((const char *)a->sh_name, n);
        memcpy(host, a->sh_name, n);
        host[n] = 0;
        port = ntohs(a->sh_port);
    } else if (family == AF_INET || family == AF_INET6 || family == AF_HOSTNAME) {
        errno = EINVAL;
        return -1;
    } else {
        host[0] = 0;
        port = 0;
    }
    size_t hlen = strlen(host);
    put_u16(out, family);
    put_u16(out + 2, port);
    put_u16(out + 4, hlen);
    memcpy(out + 6, host, hlen);
    return 6 + hlen;
}

/* Decode a wire address into a sockaddr; returns its length (0 if bad). */
static socklen_t decode_address(const unsigned char *data, size_t len,
                                struct sockaddr_storage *out)
{
    if (len < 6)
        return 0;
    int family = get_u16(data);
    unsigned port = get_u16(data + 2);
    size_t hlen = get_u16(data + 4);
    char host[HOST_MAX + 1];
    if (hlen > len - 6 || hlen > HOST_MAX)
        return 0;
    memcpy(host, data + 6, hlen);
    host[hlen] = 0;
    memset(out, 0, sizeof *out);
    if (family == AF_INET) {
        struct sockaddr_in *a = (void *)out;
        a->sin_family = AF_INET;
        a->sin_port = htons(port);
        inet_pton(AF_INET, host, &a->sin_addr);
        return sizeof *a;
    }
    if (family == AF_INET6) {
        struct sockaddr_in6 *a = (void *)out;
        a->sin6_family = AF_INET6;
        a->sin6_port = htons(port);
        inet_pton(AF_INET6, host, &a->sin6_addr);
        return sizeof *a;
    }
    struct sockaddr_host *a = (void *)out;
    a->sh_family = family;
    a->sh_port = htons(port);
    memcpy(a->sh_name, host, hlen);
    return sizeof *a;
}

static void copy_address(const struct sockaddr_storage *from, socklen_t from_len,
                         struct sockaddr *to, socklen_t *to_len)
{
    if (!to || !to_len)
        return;
    memcpy(to, from, from_len < *to_len ? from_len : *to_len);
    *to_len = from_len;
}

/* ---- socket() ---- */

static void set_cloexec(int fd, int on)
{
    int flags = REAL(fcntl)(fd, F_GETFD);
    if (flags >= 0)
        REAL(fcntl)(fd, F_SETFD, on ? flags | FD_CLOEXEC : flags & ~FD_CLOEXEC);
}

static void set_nonblocking(int fd)
{
    int flags = REAL(fcntl)(fd, F_GETFL);
    if (flags >= 0)
        REAL(fcntl)(fd, F_SETFL, flags | O_NONBLOCK);
}

/* Take the plaintext descriptor of a SOCKET/ACCEPT reply into the table. */
static int adopt(struct ssa_sock *s, struct reply *r, int flags)
{
    if (r->nfds != 1 || r->len < 8) {
        drop_reply(r);
        errno = EPROTO;
        return -1;
    }
    int fd = r->fds[0];
    r->nfds = 0;
    s->id = get_u64(r->body);
    if (!(flags & SOCK_CLOEXEC))
        set_cloexec(fd, 0);
    if (flags & SOCK_NONBLOCK)
        set_nonblocking(fd);
    if (attach(fd, s, 1) < 0) {
        REAL(close)(fd);
        errno = ENOMEM;
        return -1;
    }
    return fd;
}

int socket(int family, int type, int protocol)
{
    resolve();
    if (protocol != IPPROTO_TLS)
        return REAL(socket)(family, type, protocol);
    int ctl = open_control();
    if (ctl < 0) {
        if (errno != ENOENT && errno != ENAMETOOLONG)
            errno = ECONNREFUSED;
        return -1;
    }
    struct ssa_sock *s = new_sock(ctl, family);
    if (!s) {
        REAL(close)(ctl);
        errno = ENOMEM;
        return -1;
    }
    unsigned char body[12];
    put_u32(body, family);
    put_u32(body + 4, type & ~(SOCK_NONBLOCK | SOCK_CLOEXEC));
    put_u32(body + 8, protocol);
    struct reply r;
    if (simple_call(s, OP_SOCKET, body, sizeof body, &r) < 0) {
        int e = errno;
        free_sock(s);
        errno = e;
        return -1;
    }
    int fd = adopt(s, &r, type);
    free(r.body);
    if (fd < 0) {
        int e = errno;
        free_sock(s);
        errno = e;
    }
    return fd;
}

/* ---- calls the daemon serves ---- */

int bind(int fd, const struct sockaddr *addr, socklen_t len)
{
    resolve();
    struct ssa_sock *s = hold(fd);
    if (!s)
        return REAL(bind)(fd, addr, len);
    unsigned char body[6 + HOST_MAX];
    int n = encode_address(addr, len, body), rc = -1;
    struct reply r;
    if (n >= 0 && simple_call(s, OP_BIND, body, n, &r) == 0) {
        s->local_len = decode_address(r.body, r.len, &s->local);
        drop_reply(&r);
        rc = 0;
    }
    release(s);
    return rc;
}

/* SO_ERROR from the daemon: the outcome of a nonblocking connect. */
static int socket_error(struct ssa_sock *s)
{
    unsigned char body[8];
    struct reply r;
    put_u32(body, SOL_SOCKET);
    put_u32(body + 4, SO_ERROR);
    if (simple_call(s, OP_GETSOCKOPT, body, sizeof body, &r) < 0)
        return errno;
    int value = 0;
    if (r.len >= sizeof value)
        memcpy(&value, r.body, sizeof value);
    drop_reply(&r);
    return value;
}

/*
 * connect(): always a nonblocking CONNECT on the wire. A blocking connect
 * then waits for the plaintext descriptor to turn writable (the daemon
 * keeps it unwritable until the connect ends) and reads SO_ERROR. A signal
 * during that wait fails it with EINTR while the connect goes on, as POSIX
 * says; the descriptor turns writable when it is done.
 */
int connect(int fd, const struct sockaddr *addr, socklen_t len)
{
    resolve();
    struct ssa_sock *s = hold(fd);
    if (!s)
        return REAL(connect)(fd, addr, len);
    unsigned char body[7 + HOST_MAX];
    int rc = -1, e;
    body[0] = 1;
    int n = encode_address(addr, len, body + 1);
    struct reply r;
    if (n < 0 || request(s, OP_CONNECT, body, n + 1, &r, 0) < 0) {
        e = errno;
        goto out;
    }
    e = r.err;
    drop_reply(&r);
    if (e == 0 || e == EINPROGRESS) {
        s->connected = 1;
        s->peer_len = decode_address(body + 1, n, &s->peer);
    }
    if (e != EINPROGRESS || (REAL(fcntl)(fd, F_GETFL) & O_NONBLOCK)) {
        rc = e ? -1 : 0;
        goto out;
    }
    struct pollfd p = {.fd = fd, .events = POLLOUT};
    if (poll(&p, 1, -1) < 0) {
        e = errno;
        goto out;
    }
    e = socket_error(s);
    rc = e ? -1 : 0;
out:
    release(s);
    errno = e;
    return rc;
}

int listen(int fd, int backlog)
{
    resolve();
    struct ssa_sock *s = hold(fd);
    if (!s)
        return REAL(listen)(fd, backlog);
    unsigned char body[4];
    struct reply r;
    int rc = -1;
    put_u32(body, backlog);
    if (simple_call(s, OP_LISTEN, body, sizeof body, &r) == 0) {
        s->local_len = decode_address(r.body, r.len, &s->local);
        drop_reply(&r);
        rc = 0;
    }
    release(s);
    return rc;
}

int accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags)
{
    resolve();
    struct ssa_sock *listener = hold(fd);
    if (!listener)
        return REAL(accept4)(fd, addr, len, flags);
    int rc = -1, e = 0;
    struct ssa_sock *s = NULL;
    int ctl = open_control();
    if (ctl < 0 || !(s = new_sock(ctl, listener->family))) {
        e = ctl < 0 ? ECONNABORTED : ENOMEM;
        if (ctl >= 0)
            REAL(close)(ctl);
        goto out;
    }
    s->id = listener->id;
    unsigned char body[1] = {(REAL(fcntl)(fd, F_GETFL) & O_NONBLOCK) ? 1 : 0};
    struct reply r;
    if (request(s, OP_ACCEPT, body, 1, &r, 1) < 0 || r.err) {
        e = r.body ? r.err : errno;
        if (r.body)
            drop_reply(&r);
        goto fail;
    }
    if (r.len >= 8)
        s->peer_len = decode_address(r.body + 8, r.len - 8, &s->peer);
    int newfd = adopt(s, &r, flags);
    free(r.body);
    if (newfd < 0) {
        e = errno;
        goto fail;
    }
    s->connected = 1;
    s->local = listener->local;
    s->local_len = listener->local_len;
    copy_address(&s->peer, s->peer_len, addr, len);
    rc = newfd;
    goto out;
fail:
    free_sock(s);
out:
    release(listener);
    errno = e;
    return rc;
}

int accept(int fd, struct sockaddr *addr, socklen_t *len)
{
    return accept4(fd, addr, len, 0);
}

int getsockname(int fd, struct sockaddr *addr, socklen_t *len)
{
    resolve();
    struct ssa_sock *s = hold(fd);
    if (!s)
        return REAL(getsockname)(fd, addr, len);
    if (s->local_len) {
        copy_address(&s->local, s->local_len, addr, len);
    } else {
        /* not bound: the family's any-address, port 0, as the kernel says */
        struct sockaddr_storage any = {0};
        socklen_t n = sizeof(struct sockaddr_in);
        any.ss_family = s->family;
        if (s->family == AF_INET6)
            n = sizeof(struct sockaddr_in6);
        else if (s->family == AF_HOSTNAME)
            n = sizeof(struct sockaddr_host);
        copy_address(&any, n, addr, len);
    }
    release(s);
    return 0;
}

int getpeername(int fd, struct sockaddr *addr, socklen_t *len)
{
    resolve();
    struct ssa_sock *s = hold(fd);
    if (!s)
        return REAL(getpeername)(fd, addr, len);
    int rc = 0;
    if (s->peer_len)
        copy_address(&s->peer, s->peer_len, addr, len);
    else
        rc = -1;
    release(s);
    if (rc)
        errno = ENOTCONN;
    return rc;
}

int shutdown(int fd, int how)
{
    resolve();
    struct ssa_sock *s = hold(fd);
    if (!s)
        return REAL(shutdown)(fd, how);
    int connected = s->connected;
    release(s);
    if (!connected) {
        errno = ENOTCONN;
        return -1;
    }
    return REAL(shutdown)(fd, how);
}

/* ---- options ---- */

static int is_pem_option(int level, int name)
{
    return level == IPPROTO_TLS && (name == TLS_TRUSTED_PEER_CERTIFICATES
                                    || name == TLS_CERTIFICATE_CHAIN
                                    || name == TLS_PRIVATE_KEY);
}

/* Options served on the plaintext descriptor itself. */
static int is_local_option(int level, int name)
{
    return level == SOL_SOCKET && (name == SO_RCVTIMEO || name == SO_SNDTIMEO
                                   || name == SO_RCVLOWAT || name == SO_SNDLOWAT);
}

struct bytes {
    unsigned char *data;
    size_t len, cap;
};

static int append(struct bytes *b, const void *data, size_t len)
{
    if (b->len + len + 1 > b->cap) {
        size_t cap = (b->len + len + 1) * 2;
        unsigned char *d = realloc(b->data, cap);
        if (!d)
            return -1;
        b->data = d;
        b->cap = cap;
    }
    memcpy(b->data + b->len, data, len);
    b->len += len;
    b->data[b->len] = 0;
    return 0;
}

static int read_file(const char *path, struct bytes *out)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    char chunk[65536];
    ssize_t n;
    while ((n = read(fd, chunk, sizeof chunk)) != 0) {
        if (n < 0) {
            if (errno == EINTR)
                continue;
            int e = errno;
            REAL(close)(fd);
            errno = e;
            return -1;
        }
        if (append(out, chunk, n) < 0) {
            REAL(close)(fd);
            return -1;
        }
    }
    REAL(close)(fd);
    return 0;
}

static const char *PEM_MARK = "-----BEGIN";

/* DER (what the original also read) as PEM, under the label it must be. */
static int der_to_pem(const struct bytes *der, const char *label, struct bytes *out)
{
    static const char b64[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char line[80];
    int k = snprintf(line, sizeof line, "-----BEGIN %s-----\n", label);
    if (append(out, line, k) < 0)
        return -1;
    int col = 0;
    for (size_t i = 0; i < der->len; i += 3) {
        unsigned v = der->data[i] << 16;
        size_t left = der->len - i;
        if (left > 1)
            v |= der->data[i + 1] << 8;
        if (left > 2)
            v |= der->data[i + 2];
        char q[4] = {b64[v >> 18 & 63], b64[v >> 12 & 63],
                     left > 1 ? b64[v >> 6 & 63] : '=', left > 2 ? b64[v & 63] : '='};
        if (append(out, q, 4) < 0)
            return -1;
        col += 4;
        if (col == 64) {
            append(out, "\n", 1);
            col = 0;
        }
    }
    if (col)
        append(out, "\n", 1);
    k = snprintf(line, sizeof line, "-----END %s-----\n", label);
    return append(out, line, k);
}

static int is_pem(const struct bytes *b)
{
    return b->len && memmem(b->data, b->len, PEM_MARK, strlen(PEM_MARK)) != NULL;
}

static int compare_names(const struct dirent **a, const struct dirent **b)
{
    return strcmp((*a)->d_name, (*b)->d_name);
}

/* The regular files of a directory holding PEM, in name order, each once. */
static int read_directory(const char *path, struct bytes *out)
{
    struct dirent **names;
    int n = scandir(path, &names, NULL, compare_names);
    if (n < 0)
        return -1;
    char **seen = calloc(n + 1, sizeof *seen);
    int nseen = 0;
    for (int i = 0; i < n; i++) {
        char full[PATH_MAX], real[PATH_MAX];
        struct stat st;
        snprintf(full, sizeof full, "%s/%s", path, names[i]->d_name);
        free(names[i]);
        if (stat(full, &st) < 0 || !S_ISREG(st.st_mode) || !realpath(full, real))
            continue;
        int dup_found = 0;
        for (int j = 0; j < nseen && !dup_found; j++)
            dup_found = strcmp(seen[j], real) == 0;
        if (dup_found || !seen)
            continue;
        seen[nseen++] = strdup(real);
        struct bytes file = {0};
        if (read_file(full, &file) == 0 && is_pem(&file)) {
            append(out, file.data, file.len);
            if (file.data[file.len - 1] != '\n')
                append(out, "\n", 1);
        } else if (file.len && file.data[0] == 0x30) {
            der_to_pem(&file, "CERTIFICATE", out);  /* DER, as the original read */
        }
        free(file.data);
    }
    for (int j = 0; j < nseen; j++)
        free(seen[j]);
    free(seen);
    free(names);
    return 0;
}

/*
 * The value of option 87/88/89 to send: inline PEM as it is, else a path
 * read here with the program's own permissions (a file, PEM or DER, or a
 * directory of PEM or DER certificate files). -1 with EINVAL (EBADF for the key) if unreadable.
 */
static int pem_value(int name, const void *value, socklen_t len, struct bytes *out)
{
    int code = name == TLS_PRIVATE_KEY ? EBADF : EINVAL;
    char path[PATH_MAX];
    size_t n = value ? strnlen(value, len) : 0;
    if (n >= strlen(PEM_MARK) && memcmp(value, PEM_MARK, strlen(PEM_MARK)) == 0)
        return append(out, value, len);
    if (n == 0 || n >= sizeof path) {
        errno = code;
        return -1;
    }
    memcpy(path, value, n);
    path[n] = 0;
    struct stat st;
    struct bytes file = {0};
    int rc;
    if (stat(path, &st) < 0)
        rc = -1;
    else if (S_ISDIR(st.st_mode))
        rc = read_directory(path, out) < 0 || out->len == 0 ? -1 : 0;
    else if ((rc = read_file(path, &file)) == 0) {
        /* the daemon reads DER keys itself; DER certificates become PEM */
        if (is_pem(&file) || name == TLS_PRIVATE_KEY || file.len == 0 || file.data[0] != 0x30)
            rc = append(out, file.data, file.len);
        else
            rc = der_to_pem(&file, "CERTIFICATE", out);
    }
    free(file.data);
    if (rc < 0)
        errno = code;
    return rc;
}

int setsockopt(int fd, int level, int name, const void *value, socklen_t len)
{
    resolve();
    struct ssa_sock *s = hold(fd);
    if (!s)
        return REAL(setsockopt)(fd, level, name, value, len);
    int rc = -1, e = 0;
    if (is_local_option(level, name)) {
        rc = REAL(setsockopt)(fd, level, name, value, len);
        e = errno;
        goto out;
    }
    if (level == SOL_SOCKET && (name == SO_REUSEADDR || name == SO_REUSEPORT)) {
        if (!value || len < sizeof(int)) {
            e = EINVAL;
            goto out;
        }
        s->reuse[name == SO_REUSEPORT] = *(const int *)value != 0;
        rc = 0;
        goto out;
    }
    struct bytes body = {0};
    unsigned char head[8];
    put_u32(head, level);
    put_u32(head + 4, name);
    if (append(&body, head, 8) < 0) {
        e = ENOMEM;
        goto out;
    }
    if (is_pem_option(level, name))
        rc = pem_value(name, value, len, &body);
    else
        rc = len ? append(&body, value, len) : 0;
    struct reply r;
    if (rc == 0 && (rc = simple_call(s, OP_SETSOCKOPT, body.data, body.len, &r)) == 0)
        drop_reply(&r);
    e = errno;
    free(body.data);
out:
    release(s);
    errno = e;
    return rc;
}

int getsockopt(int fd, int level, int name, void *value, socklen_t *len)
{
    resolve();
    struct ssa_sock *s = hold(fd);
    if (!s)
        return REAL(getsockopt)(fd, level, name, value, len);
    int rc = 0, e = 0, local = -1;
    if (is_local_option(level, name)) {
        rc = REAL(getsockopt)(fd, level, name, value, len);
        e = errno;
        goto out;
    }
    if (level == SOL_SOCKET) {
        switch (name) {
        case SO_TYPE: local = SOCK_STREAM; break;
        case SO_DOMAIN: local = s->family; break;
        case SO_PROTOCOL: local = IPPROTO_TLS; break;
        case SO_REUSEADDR: local = s->reuse[0]; break;
        case SO_REUSEPORT: local = s->reuse[1]; break;
        case SO_ACCEPTCONN: local = 0; break;
        }
    }
    if (!len || (*len && !value)) {
        rc = -1;
        e = EFAULT;
        goto out;
    }
    if (local >= 0) {
        socklen_t n = *len < sizeof local ? *len : sizeof local;
        memcpy(value, &local, n);
        *len = n;
        goto out;
    }
    unsigned char body[8];
    struct reply r;
    put_u32(body, level);
    put_u32(body + 4, name);
    if (simple_call(s, OP_GETSOCKOPT, body, sizeof body, &r) < 0) {
        rc = -1;
        e = errno;
        goto out;
    }
    socklen_t n = r.len < *len ? r.len : *len;
    memcpy(value, r.body, n);
    *len = n;
    drop_reply(&r);
out:
    release(s);
    errno = e;
    return rc;
}

/* ---- descriptors ---- */

/* If fd is a control connection, move it elsewhere (the program wants fd). */
static void vacate(int fd)
{
    if (!is_control(fd))
        return;
    pthread_mutex_lock(&table_lock);
    for (int i = 0; i < table_size; i++) {
        struct ssa_sock *s = table[i];
        if (s && s->ctl == fd) {
            int moved = REAL(fcntl)(fd, F_DUPFD_CLOEXEC, fd + 1);
            if (moved >= 0 && reserve(moved) == 0) {
                pthread_mutex_lock(&s->lock);
                REAL(close)(fd);
                s->ctl = moved;
                pthread_mutex_unlock(&s->lock);
                is_ctl[fd] = 0;
                is_ctl[moved] = 1;
            }
            break;
        }
    }
    pthread_mutex_unlock(&table_lock);
}

/* After a dup of fd to newfd succeeded: newfd is the same socket. */
static int duplicated(int fd, int newfd)
{
    if (newfd < 0 || newfd == fd)
        return newfd;
    struct ssa_sock *old = detach(newfd);
    if (old)
        release(old);
    struct ssa_sock *s = hold(fd);
    if (s) {
        attach(newfd, s, 0);
        release(s);
    }
    return newfd;
}

int close(int fd)
{
    resolve();
    if (is_control(fd)) {
        errno = EBADF;
        return -1;
    }
    struct ssa_sock *s = detach(fd);
    if (s)
        release(s);
    return REAL(close)(fd);
}

int dup(int fd)
{
    resolve();
    return duplicated(fd, REAL(dup)(fd));
}

int dup2(int fd, int newfd)
{
    resolve();
    if (is_control(fd)) {
        errno = EBADF;
        return -1;
    }
    vacate(newfd);
    return duplicated(fd, REAL(dup2)(fd, newfd));
}

int dup3(int fd, int newfd, int flags)
{
    resolve();
    if (is_control(fd)) {
        errno = EBADF;
        return -1;
    }
    vacate(newfd);
    return duplicated(fd, REAL(dup3)(fd, newfd, flags));
}

static int fcntl_common(int fd, int cmd, void *arg)
{
    resolve();
    if (cmd == F_DUPFD || cmd == F_DUPFD_CLOEXEC)
        return duplicated(fd, REAL(fcntl)(fd, cmd, arg));
    return REAL(fcntl)(fd, cmd, arg);
}

int fcntl(int fd, int cmd, ...)
{
    va_list ap;
    va_start(ap, cmd);
    void *arg = va_arg(ap, void *);
    va_end(ap);
    return fcntl_common(fd, cmd, arg);
}

int fcntl64(int fd, int cmd, ...)
{
    va_list ap;
    va_start(ap, cmd);
    void *arg = va_arg(ap, void *);
    va_end(ap);
    return fcntl_common(fd, cmd, arg);
}

/* ---- fork and exec ---- */

static void before_fork(void) { pthread_mutex_lock(&table_lock); }

/* Both processes now hold every socket (see release()). */
static void mark_shared(void)
{
    for (int i = 0; i < table_size; i++)
        if (table[i])
            table[i]->shared = 1;
}

static void after_fork_parent(void)
{
    mark_shared();
    pthread_mutex_unlock(&table_lock);
}

/* In the child: locks held by other threads of the parent are dead. */
static void after_fork_child(void)
{
    pthread_mutex_init(&table_lock, NULL);
    for (int i = 0; i < table_size; i++)
        if (table[i])
            pthread_mutex_init(&table[i]->lock, NULL);
    mark_shared();
}

/*
 * The environment for exec: envp with SSA_PRELOAD_STATE describing every
 * SSA socket whose descriptor survives exec; their control connections are
 * made to survive too (undone by exec_failed()).
 */
static char **exec_environment(char *const envp[])
{
    size_t count = 0;
    while (envp && envp[count])
        count++;
    char **env = calloc(count + 2, sizeof *env);
    if (!env)
        return NULL;
    size_t k = 0, plen = strlen(STATE_VARIABLE);
    for (size_t i = 0; i < count; i++)
        if (strncmp(envp[i], STATE_VARIABLE "=", plen + 1) != 0)
            env[k++] = envp[i];
    if (!live) {
        env[k] = NULL;
        return env;
    }
    struct bytes state = {0};
    append(&state, STATE_VARIABLE "=", plen + 1);
    pthread_mutex_lock(&table_lock);
    for (int fd = 0; fd < table_size; fd++) {
        struct ssa_sock *s = table[fd];
        int flags;
        if (!s || (flags = REAL(fcntl)(fd, F_GETFD)) < 0 || (flags & FD_CLOEXEC))
            continue;
        set_cloexec(s->ctl, 0);
        char item[128];
        int n = snprintf(item, sizeof item, "%d,%d,%llu,%d,%d,", fd, s->ctl,
                         (unsigned long long)s->id, s->family, s->connected | s->shared << 1);
        append(&state, item, n);
        const unsigned char *a[2] = {(void *)&s->local, (void *)&s->peer};
        socklen_t alen[2] = {s->local_len, s->peer_len};
        for (int j = 0; j < 2; j++) {
            for (socklen_t b = 0; b < alen[j]; b++) {
                n = snprintf(item, sizeof item, "%02x", a[j][b]);
                append(&state, item, n);
            }
            append(&state, j ? ";" : ",", 1);
        }
    }
    pthread_mutex_unlock(&table_lock);
    env[k++] = (char *)state.data;
    env[k] = NULL;
    return env;
}

static void exec_failed(char **env)
{
    pthread_mutex_lock(&table_lock);
    for (int fd = 0; fd < table_size; fd++)
        if (table[fd])
            set_cloexec(table[fd]->ctl, 1);
    pthread_mutex_unlock(&table_lock);
    for (size_t i = 0; env && env[i]; i++)
        if (strncmp(env[i], STATE_VARIABLE "=", strlen(STATE_VARIABLE) + 1) == 0 && live)
            free(env[i]);
    free(env);
}

extern char **environ;

int execve(const char *path, char *const argv[], char *const envp[])
{
    resolve();
    char **env = exec_environment(envp);
    if (!env)
        return REAL(execve)(path, argv, envp);
    REAL(execve)(path, argv, env);
    int e = errno;
    exec_failed(env);
    errno = e;
    return -1;
}

int execvpe(const char *file, char *const argv[], char *const envp[])
{
    resolve();
    char **env = exec_environment(envp);
    if (!env)
        return REAL(execvpe)(file, argv, envp);
    REAL(execvpe)(file, argv, env);
    int e = errno;
    exec_failed(env);
    errno = e;
    return -1;
}

int execv(const char *path, char *const argv[])
{
    return execve(path, argv, environ);
}

int execvp(const char *file, char *const argv[])
{
    return execvpe(file, argv, environ);
}

/* execl, execlp, execle: their argument lists as arrays, through the above. */
#define COLLECT_ARGS(first, last_arg)                                         \
    va_list ap;                                                               \
    size_t n = 0;                                                             \
    va_start(ap, first);                                                      \
    if (first)                                                                \
        for (n = 1; va_arg(ap, char *); n++)                                  \
            ;                                                                 \
    va_end(ap);                                                               \
    char **args = alloca((n + 1) * sizeof *args);                             \
    va_start(ap, first);                                                      \
    args[0] = (char *)(first);                                                \
    for (size_t i = 1; i <= n; i++)                                           \
        args[i] = va_arg(ap, char *);                                         \
    last_arg;                                                                 \
    va_end(ap)

int execl(const char *path, const char *arg, ...)
{
    COLLECT_ARGS(arg, (void)0);
    return execve(path, args, environ);
}

int execlp(const char *file, const char *arg, ...)
{
    COLLECT_ARGS(arg, (void)0);
    return execvpe(file, args, environ);
}

int execle(const char *path, const char *arg, ...)
{
    char **envp;
    COLLECT_ARGS(arg, envp = va_arg(ap, char **));
    return execve(path, args, envp);
}

static socklen_t decode_hex(const char *p, const char *end, struct sockaddr_storage *out)
{
    socklen_t n = 0;
    unsigned char *o = (unsigned char *)out;
    while (p + 1 < end && n < sizeof *out) {
        unsigned v;
        if (sscanf(p, "%2x", &v) != 1)
            return 0;
        o[n++] = v;
        p += 2;
    }
    return n;
}

/* In a program started by exec: take over the sockets described for it. */
static void restore_state(void)
{
    const char *state = getenv(STATE_VARIABLE);
    if (!state)
        return;
    char *copy = strdup(state);
    unsetenv(STATE_VARIABLE);
    for (char *item = copy, *next; copy && item && *item; item = next) {
        next = strchr(item, ';');
        if (next)
            *next++ = 0;
        int fd, ctl, family, connected;
        unsigned long long id;
        if (sscanf(item, "%d,%d,%llu,%d,%d,", &fd, &ctl, &id, &family, &connected) != 5)
            continue;
        if (REAL(fcntl)(fd, F_GETFD) < 0 || REAL(fcntl)(ctl, F_GETFD) < 0)
            continue;
        set_cloexec(ctl, 1);
        pthread_mutex_lock(&table_lock);
        struct ssa_sock *s = ctl < table_size && is_ctl[ctl] ? NULL : (void *)1;
        for (int i = 0; !s && i < table_size; i++)
            if (table[i] && table[i]->ctl == ctl)
                s = table[i];
        pthread_mutex_unlock(&table_lock);
        if (!s)
            s = (void *)1;
        if (s != (void *)1) {   /* another descriptor of a socket seen */
            attach(fd, s, 0);
            continue;
        }
        if (!(s = new_sock(ctl, family)))
            continue;
        s->id = id;
        s->connected = connected & 1;
        s->shared = connected >> 1 & 1;
        char *fields[2] = {NULL, NULL}, *p = item;
        for (int commas = 0; *p; p++)
            if (*p == ',' && ++commas >= 5 && commas <= 6)
                fields[commas - 5] = p + 1;
        if (fields[0] && fields[1]) {
            s->local_len = decode_hex(fields[0], fields[1] - 1, &s->local);
            s->peer_len = decode_hex(fields[1], fields[1] + strlen(fields[1]), &s->peer);
        }
        attach(fd, s, 1);
    }
    free(copy);
}

__attribute__((constructor)) static void setup(void)
{
    resolve();
    pthread_atfork(before_fork, after_fork_parent, after_fork_child);
    restore_state();
}
