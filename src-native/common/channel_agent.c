/*
 * The agent channel: frames over a Unix stream socket to `kmsbridge agent`.
 *
 * Concurrency design: a small pool of connections, one request in flight per
 * connection. A calling thread takes an idle connection (or opens a new one),
 * writes its frame and waits for the reply on that socket with poll() and its
 * own deadline, then returns the connection to the pool. We chose a pool over
 * one multiplexed connection with a reader thread because a provider must
 * not start threads inside applications that fork (nginx) and because a
 * timed-out request simply closes its own connection: a late reply can never
 * be taken for another request's. The agent multiplexes anyway, so many
 * threads still have many requests in flight at once.
 *
 * Fork safety: pthread_atfork closes every inherited connection in the child
 * (close() only drops the child's descriptor, the parent's socket stays
 * open), and a pid check does the same if a process was forked some other
 * way. A child therefore always opens its own connection.
 *
 * Recovery: a request on a pooled connection the agent has closed (agent
 * restarted) fails at once, before anything is sent (EPIPE), or finds the end
 * before any reply; the pool's other idle connections are then dropped too
 * (they lead to the same agent) and the request is retried once on a fresh
 * one. No check before each use: that was a system call per request, under
 * the pool's lock. Nothing is sticky: every call tries to connect again.
 *
 * Waiting: a caller whose replies have been coming back quickly polls its
 * socket for a short while before it sleeps in poll(); one whose replies
 * take a little longer (RSA) naps on its socket and a timer of its
 * connection, then polls (spin.h says when and why).
 */
#include "channel.h"
#include "log.h"
#include "names.h"
#include "spin.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define MAX_IDLE 4

struct conn {
    int fd;
    int timer_fd; /* for naps (spin.h), made at the first; -1 until then */
    int busy;
    uint32_t max_frame;
    struct conn *next;
};

struct agent_channel {
    struct kb_channel base;
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    unsigned connect_ms;
    unsigned request_ms;
    char peer_name[128];
    pthread_mutex_t lock;
    struct conn *conns; /* all open connections, idle and busy */
    pid_t pid;          /* the process that opened them */
    uint32_t next_id;
    struct kb_spin spin; /* how long replies take, and whether to poll */
    struct agent_channel *next_channel; /* registry, for pthread_atfork */
};

/* ---- fork handling ------------------------------------------------------ */

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static struct agent_channel *registry;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static void conn_free(struct conn *c)
{
    close(c->fd); /* never shutdown(): a forked parent may still use it */
    if (c->timer_fd >= 0)
        close(c->timer_fd);
    free(c);
}

static void conns_drop_all(struct agent_channel *ch)
{
    struct conn *c = ch->conns;
    while (c != NULL) {
        struct conn *next = c->next;
        conn_free(c);
        c = next;
    }
    ch->conns = NULL;
}

static void atfork_prepare(void)
{
    pthread_mutex_lock(&registry_lock);
    for (struct agent_channel *ch = registry; ch != NULL; ch = ch->next_channel)
        pthread_mutex_lock(&ch->lock);
}

static void atfork_parent(void)
{
    for (struct agent_channel *ch = registry; ch != NULL; ch = ch->next_channel)
        pthread_mutex_unlock(&ch->lock);
    pthread_mutex_unlock(&registry_lock);
}

static void atfork_child(void)
{
    for (struct agent_channel *ch = registry; ch != NULL;
         ch = ch->next_channel) {
        conns_drop_all(ch);
        ch->pid = getpid();
        pthread_mutex_unlock(&ch->lock);
    }
    pthread_mutex_unlock(&registry_lock);
}

static void atfork_register(void)
{
    /* glibc removes these handlers when the module is unloaded. */
    pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
}

/* ---- helpers ------------------------------------------------------------ */

static long long now_ms(void)
{
    return kb_now_ns() / 1000000;
}

static int wait_fd(int fd, short events, long long deadline)
{
    for (;;) {
        long long left = deadline - now_ms();
        if (left <= 0)
            return 0;
        struct pollfd p = {fd, events, 0};
        int r = poll(&p, 1, left > 60000 ? 60000 : (int)left);
        if (r > 0)
            return 1;
        if (r < 0 && errno != EINTR)
            return -1;
    }
}

enum io_result { IO_OK, IO_TIMEOUT, IO_ERROR, IO_EOF };

static enum io_result write_all(int fd, const uint8_t *p, size_t n,
                                long long deadline)
{
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w > 0) {
            p += w;
            n -= (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            int r = wait_fd(fd, POLLOUT, deadline);
            if (r == 0)
                return IO_TIMEOUT;
            if (r < 0)
                return IO_ERROR;
            continue;
        }
        return IO_ERROR;
    }
    return IO_OK;
}

static enum io_result read_full(int fd, uint8_t *p, size_t n,
                                long long deadline)
{
    while (n > 0) {
        ssize_t r = recv(fd, p, n, MSG_DONTWAIT);
        if (r > 0) {
            p += r;
            n -= (size_t)r;
            continue;
        }
        if (r == 0)
            return IO_EOF;
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            int w = wait_fd(fd, POLLIN, deadline);
            if (w == 0)
                return IO_TIMEOUT;
            if (w < 0)
                return IO_ERROR;
            continue;
        }
        return IO_ERROR;
    }
    return IO_OK;
}

/* Adds what recv() returned to *|got|: IO_OK also when nothing came yet. */
static enum io_result took(ssize_t r, size_t *got)
{
    if (r > 0)
        *got += (size_t)r;
    else if (r == 0)
        return IO_EOF;
    else if (errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK)
        return IO_ERROR;
    return IO_OK;
}

/*
 * A nap (spin.h): sleeps until the reply or |c|'s timer |nap_ns| away,
 * whichever comes first; after the timer, polls for up to |poll_ns|; reads
 * what came into |p| (at most |max|, *|got|). *|woke_ns| says how it went:
 * when the timer woke the caller, -1 when the reply came first, 0 when no
 * nap happened (no timer, the deadline, a signal). Whatever has not come
 * yet, the caller then sleeps for as before.
 */
static enum io_result nap(struct conn *c, uint8_t *p, size_t max, size_t *got,
                          long long deadline, long long nap_ns,
                          long long poll_ns, long long *woke_ns)
{
    *woke_ns = 0;
    if (c->timer_fd == -1) { /* -2: could not be made, no naps on |c| */
        c->timer_fd =
            timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
        if (c->timer_fd < 0)
            c->timer_fd = -2;
    }
    /* A timerfd, not poll()'s own timeout: that one may fire 50 µs late
     * (the thread's timer slack), which is all a nap is to save. */
    struct itimerspec at = {
        .it_value = {nap_ns / 1000000000, nap_ns % 1000000000}};
    long long left = deadline - now_ms();
    if (c->timer_fd < 0 || left <= 0 ||
        timerfd_settime(c->timer_fd, 0, &at, NULL) != 0)
        return IO_OK;
    struct pollfd fds[2] = {{c->fd, POLLIN, 0}, {c->timer_fd, POLLIN, 0}};
    if (poll(fds, 2, left > 60000 ? 60000 : (int)left) <= 0)
        return IO_OK;
    if (fds[0].revents != 0) {
        *woke_ns = -1; /* setting the timer again resets it: no read */
        return took(recv(c->fd, p, max, MSG_DONTWAIT), got); /* no poll */
    }
    *woke_ns = kb_now_ns();
    return took(kb_spin_recv(c->fd, p, max, poll_ns, NULL), got);
}

/* How a caller waits for its reply (spin.h): polls from the start for
 * |spin_ns|, or naps |nap_ns| then polls for |nap_poll_ns|, or sleeps. */
struct wait_plan {
    long long spin_ns;
    long long nap_ns;
    long long nap_poll_ns;
    long long woke_ns; /* out: as nap() says */
};

/*
 * Reads at least |min| and at most |max| bytes into |p|. Without a plan to
 * poll it waits before each read: a reply is never there the moment its
 * request has left, so a read first would only cost a system call to learn
 * that.
 */
static enum io_result read_some(struct conn *c, uint8_t *p, size_t min,
                                size_t max, size_t *got, long long deadline,
                                struct wait_plan *plan)
{
    int fd = c->fd;
    *got = 0;
    plan->woke_ns = 0;
    enum io_result first = IO_OK;
    if (plan->spin_ns > 0)
        first = took(kb_spin_recv(fd, p, max, plan->spin_ns, NULL), got);
    else if (plan->nap_ns > 0)
        first = nap(c, p, max, got, deadline, plan->nap_ns, plan->nap_poll_ns,
                    &plan->woke_ns);
    if (first != IO_OK)
        return first;
    while (*got < min) {
        int w = wait_fd(fd, POLLIN, deadline);
        if (w == 0)
            return IO_TIMEOUT;
        if (w < 0)
            return IO_ERROR;
        enum io_result r =
            took(recv(fd, p + *got, max - *got, MSG_DONTWAIT), got);
        if (r != IO_OK)
            return r;
    }
    return IO_OK;
}

static void no_agent(struct agent_channel *ch, struct kb_err *err, int e)
{
    kb_err_set(err, KB_ERR_NO_AGENT,
               "cannot reach the kmsbridge agent at %s (%s): start it with "
               "`kmsbridge agent` or point KMSBRIDGE_AGENT_SOCK at its socket",
               ch->path, strerror(e));
}

/*
 * One round trip on |c|: writes |frame|, reads the reply with the same id.
 * |retryable| tells whether the request may be sent again on a fresh
 * connection. HELLO, a new connection's first frame, is answered by the
 * agent's JavaScript and says nothing of how long requests take: it is
 * neither polled for nor counted (a short-lived process would otherwise nap
 * for its first signatures).
 */
static int round_trip(struct agent_channel *ch, struct conn *c,
                      const uint8_t *frame, size_t len, long long deadline,
                      unsigned timeout_ms, struct kb_wire_msg **reply,
                      struct kb_err *err, int *retryable)
{
    uint32_t id = ((uint32_t)frame[4] << 24) | ((uint32_t)frame[5] << 16) |
                  ((uint32_t)frame[6] << 8) | frame[7];
    uint16_t type = (uint16_t)((frame[8] << 8) | frame[9]);
    /* Most replies fit here whole: one read for all of it. */
    uint8_t head[4096];
    size_t got = 0;
    enum io_result r;

    *retryable = 0;
    int counted = type != KB_MSG_HELLO;
    struct wait_plan plan = {0, 0, 0, 0};
    if (counted)
        plan.spin_ns = kb_spin_budget(&ch->spin);
    if (counted && plan.spin_ns == 0)
        plan.nap_ns = kb_nap_budget(&ch->spin, &plan.nap_poll_ns);
    long long sent_at = kb_now_ns();
    r = write_all(c->fd, frame, len, deadline);
    if (r == IO_ERROR && (errno == EPIPE || errno == ECONNRESET))
        *retryable = 1;
    if (r == IO_OK) {
        r = read_some(c, head, 4, sizeof(head), &got, deadline, &plan);
        if (r == IO_EOF || (r == IO_ERROR && errno == ECONNRESET))
            *retryable = 1; /* closed before answering anything */
    }
    if (r == IO_OK && counted) {
        long long answered = kb_now_ns();
        kb_spin_record(&ch->spin, answered - sent_at);
        if (plan.woke_ns != 0)
            kb_nap_record(&ch->spin, plan.nap_ns,
                          plan.woke_ns < 0 ? -1 : answered - plan.woke_ns);
    }
    if (r == IO_TIMEOUT) {
        kb_err_set(err, KB_ERR_LOCAL_TIMEOUT,
                   "the kmsbridge agent at %s did not answer within %u ms",
                   ch->path, timeout_ms);
        return 0;
    }
    if (r != IO_OK) {
        kb_err_set(err, KB_ERR_IO,
                   "the connection to the kmsbridge agent at %s broke (%s)",
                   ch->path,
                   r == IO_EOF ? "closed by the agent" : strerror(errno));
        return 0;
    }
    size_t size = kb_wire_frame_size(head);
    if (size == 0 || got > size) {
        /* one request in flight per connection: anything more is garbage */
        explicit_bzero(head, got);
        kb_err_set(err, KB_ERR_PROTOCOL,
                   size == 0 ? "the kmsbridge agent at %s sent a frame of "
                               "invalid length"
                             : "the kmsbridge agent at %s sent more than one "
                               "reply",
                   ch->path);
        return 0;
    }
    uint8_t *buf = malloc(size);
    if (buf == NULL) {
        explicit_bzero(head, got);
        kb_err_set(err, KB_ERR_NOMEM, "out of memory");
        return 0;
    }
    memcpy(buf, head, got);
    explicit_bzero(head, got); /* a reply may carry a plaintext */
    r = read_full(c->fd, buf + got, size - got, deadline);
    if (r != IO_OK) {
        free(buf);
        if (r == IO_TIMEOUT)
            kb_err_set(err, KB_ERR_LOCAL_TIMEOUT,
                       "the kmsbridge agent at %s did not answer within %u ms",
                       ch->path, timeout_ms);
        else
            kb_err_set(err, KB_ERR_IO,
                       "the connection to the kmsbridge agent at %s broke "
                       "mid-reply",
                       ch->path);
        return 0;
    }
    char why[128];
    int ok = kb_wire_decode(buf, size, reply, why, sizeof(why));
    memset(buf, 0, size);
    free(buf);
    if (!ok) {
        kb_err_set(err, KB_ERR_PROTOCOL,
                   "malformed reply from the kmsbridge agent at %s: %s",
                   ch->path, why);
        return 0;
    }
    if ((*reply)->id != id || ((*reply)->type != (type | KB_WIRE_REPLY_BIT))) {
        kb_err_set(err, KB_ERR_PROTOCOL,
                   "unexpected reply from the kmsbridge agent at %s (id %u "
                   "type 0x%04x for id %u type 0x%04x)",
                   ch->path, (*reply)->id, (*reply)->type, id, type);
        kb_wire_msg_free(*reply);
        *reply = NULL;
        return 0;
    }
    return 1;
}

static uint32_t take_id(struct agent_channel *ch)
{
    /* called with ch->lock held */
    if (++ch->next_id == 0)
        ch->next_id = 1;
    return ch->next_id;
}

static void conn_close(struct agent_channel *ch, struct conn *c)
{
    pthread_mutex_lock(&ch->lock);
    for (struct conn **pp = &ch->conns; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == c) {
            *pp = c->next;
            break;
        }
    }
    pthread_mutex_unlock(&ch->lock);
    conn_free(c);
}

/* Opens a connection and says HELLO. Returns NULL with |err| set. */
static struct conn *conn_open(struct agent_channel *ch, struct kb_err *err)
{
    long long deadline = now_ms() + ch->connect_ms;
    struct sockaddr_un sa;
    int fd;

    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    memcpy(sa.sun_path, ch->path, strlen(ch->path) + 1);

    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        kb_err_set(err, KB_ERR_IO, "socket(): %s", strerror(errno));
        return NULL;
    }
    for (;;) {
        if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0)
            break;
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EINPROGRESS) {
            /* the agent's backlog is full: retry until the deadline */
            if (now_ms() >= deadline) {
                close(fd);
                kb_err_set(err, KB_ERR_LOCAL_TIMEOUT,
                           "connecting to the kmsbridge agent at %s timed out "
                           "after %u ms",
                           ch->path, ch->connect_ms);
                return NULL;
            }
            struct timespec ts = {0, 5 * 1000 * 1000};
            nanosleep(&ts, NULL);
            continue;
        }
        int e = errno;
        close(fd);
        no_agent(ch, err, e);
        return NULL;
    }

    struct conn *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        close(fd);
        kb_err_set(err, KB_ERR_NOMEM, "out of memory");
        return NULL;
    }
    c->fd = fd;
    c->timer_fd = -1;
    c->busy = 1;
    c->max_frame = KB_WIRE_MAX_LENGTH + 4;

    struct kb_buf b = {0};
    pthread_mutex_lock(&ch->lock);
    uint32_t id = take_id(ch);
    c->next = ch->conns;
    ch->conns = c;
    pthread_mutex_unlock(&ch->lock);

    kb_frame_begin(&b, id, KB_MSG_HELLO, 0);
    kb_frame_u32(&b, KB_TAG_VERSION, KB_WIRE_VERSION);
    kb_frame_str(&b, KB_TAG_PEER_NAME, ch->peer_name);
    if (!kb_frame_end(&b)) {
        kb_buf_free(&b);
        conn_close(ch, c);
        kb_err_set(err, KB_ERR_NOMEM, "out of memory");
        return NULL;
    }
    struct kb_wire_msg *reply = NULL;
    int retryable;
    int ok = round_trip(ch, c, b.data, b.len, deadline, ch->connect_ms, &reply,
                        err, &retryable);
    kb_buf_free(&b);
    if (!ok) {
        conn_close(ch, c);
        return NULL;
    }
    uint32_t version = 0, max_frame = 0;
    if (reply->status != 0) {
        char *m = kb_wire_get_str(reply, KB_TAG_MESSAGE);
        kb_err_set(err, KB_ERR_PROTOCOL,
                   "the kmsbridge agent at %s refused HELLO: %s", ch->path,
                   m != NULL ? m : kb_wire_status_name(reply->status));
        free(m);
        ok = 0;
    } else if (!kb_wire_get_u32(reply, KB_TAG_VERSION, &version) ||
               version != KB_WIRE_VERSION) {
        kb_err_set(err, KB_ERR_PROTOCOL,
                   "the kmsbridge agent at %s speaks wire version %u, this "
                   "provider speaks %u: update one of them",
                   ch->path, version, KB_WIRE_VERSION);
        ok = 0;
    }
    if (ok && kb_wire_get_u32(reply, KB_TAG_MAX_FRAME, &max_frame) &&
        max_frame >= KB_WIRE_HEADER_LEN)
        c->max_frame = max_frame;
    if (ok) {
        char *peer = kb_wire_get_str(reply, KB_TAG_PEER_NAME);
        KB_LOG("connected to agent %s (%s), max frame %u", ch->path,
               peer != NULL ? peer : "?", c->max_frame);
        free(peer);
    }
    kb_wire_msg_free(reply);
    if (!ok) {
        conn_close(ch, c);
        return NULL;
    }
    return c;
}

/* Closes the idle connections: after one was found closed by the agent, the
 * others lead to the same (gone) agent. */
static void conns_drop_idle(struct agent_channel *ch)
{
    pthread_mutex_lock(&ch->lock);
    for (struct conn **pp = &ch->conns; *pp != NULL;) {
        struct conn *c = *pp;
        if (c->busy) {
            pp = &c->next;
            continue;
        }
        *pp = c->next;
        conn_free(c);
    }
    pthread_mutex_unlock(&ch->lock);
}

/* Takes an idle connection, or NULL. */
static struct conn *conn_take_idle(struct agent_channel *ch)
{
    struct conn *found = NULL;

    pthread_mutex_lock(&ch->lock);
    if (ch->pid != getpid()) {
        /* forked without pthread_atfork seeing it: drop the parent's */
        conns_drop_all(ch);
        ch->pid = getpid();
    }
    for (struct conn *c = ch->conns; c != NULL; c = c->next) {
        if (!c->busy) {
            found = c;
            break;
        }
    }
    if (found != NULL)
        found->busy = 1;
    pthread_mutex_unlock(&ch->lock);
    return found;
}

/*
 * Returns |c| to the pool, or closes it when enough are idle. The choice and
 * the unlinking happen under the lock: once |c| is marked idle another
 * thread may take it, so it must never be closed after that.
 */
static void conn_release(struct agent_channel *ch, struct conn *c)
{
    size_t idle = 0;
    int drop = 0;

    pthread_mutex_lock(&ch->lock);
    for (struct conn *x = ch->conns; x != NULL; x = x->next)
        if (!x->busy)
            idle++;
    if (idle >= MAX_IDLE) {
        for (struct conn **pp = &ch->conns; *pp != NULL; pp = &(*pp)->next) {
            if (*pp == c) {
                *pp = c->next;
                break;
            }
        }
        drop = 1;
    } else {
        c->busy = 0;
    }
    pthread_mutex_unlock(&ch->lock);
    if (drop)
        conn_free(c);
}

static int agent_call(struct kb_channel *base, struct kb_buf *req,
                      unsigned timeout_ms, struct kb_wire_msg **reply,
                      struct kb_err *err)
{
    struct agent_channel *ch = (struct agent_channel *)base;

    *reply = NULL;
    if (req->len < KB_WIRE_HEADER_LEN) {
        kb_err_set(err, KB_ERR_INVALID, "empty request");
        return 0;
    }
    if (timeout_ms == 0)
        timeout_ms = ch->request_ms;

    for (int attempt = 0; attempt < 2; attempt++) {
        int reused = 1;
        struct conn *c = conn_take_idle(ch);
        if (c == NULL) {
            reused = 0;
            c = conn_open(ch, err);
            if (c == NULL)
                return 0;
        }
        if (req->len > c->max_frame) {
            conn_release(ch, c);
            kb_err_set(err, KB_ERR_INVALID,
                       "request of %zu bytes is larger than the agent accepts "
                       "(%u)",
                       req->len, c->max_frame);
            return 0;
        }
        pthread_mutex_lock(&ch->lock);
        kb_frame_set_id(req->data, take_id(ch));
        pthread_mutex_unlock(&ch->lock);

        long long deadline = now_ms() + timeout_ms;
        int retryable = 0;
        if (round_trip(ch, c, req->data, req->len, deadline, timeout_ms, reply,
                       err, &retryable)) {
            conn_release(ch, c);
            return 1;
        }
        conn_close(ch, c);
        if (!(reused && retryable))
            return 0;
        conns_drop_idle(ch);
        KB_LOG("stale agent connection, reconnecting to %s", ch->path);
    }
    return 0;
}

static void agent_destroy(struct kb_channel *base)
{
    struct agent_channel *ch = (struct agent_channel *)base;

    if (ch == NULL)
        return;
    pthread_mutex_lock(&registry_lock);
    for (struct agent_channel **pp = &registry; *pp != NULL;
         pp = &(*pp)->next_channel) {
        if (*pp == ch) {
            *pp = ch->next_channel;
            break;
        }
    }
    pthread_mutex_unlock(&registry_lock);
    pthread_mutex_lock(&ch->lock);
    conns_drop_all(ch); /* close() only: a parent keeps its own sockets */
    pthread_mutex_unlock(&ch->lock);
    pthread_mutex_destroy(&ch->lock);
    free(ch);
}

static const struct kb_channel_ops agent_ops = {
    "agent",
    agent_call,
    agent_destroy,
};

void kb_agent_socket_path(char *buf, size_t len)
{
    const char *env = getenv("KMSBRIDGE_AGENT_SOCK");
    const char *xdg = getenv("XDG_RUNTIME_DIR");

    if (env != NULL && env[0] != '\0')
        snprintf(buf, len, "%s", env);
    else if (xdg != NULL && xdg[0] != '\0')
        snprintf(buf, len, "%s/kmsbridge/agent.sock", xdg);
    else
        snprintf(buf, len, "/tmp/kmsbridge-%lu/agent.sock",
                 (unsigned long)getuid());
}

struct kb_channel *kb_agent_channel_new(const struct kb_agent_config *cfg)
{
    struct agent_channel *ch = calloc(1, sizeof(*ch));
    if (ch == NULL)
        return NULL;
    ch->base.ops = &agent_ops;
    if (cfg != NULL && cfg->socket_path != NULL && cfg->socket_path[0] != '\0')
        snprintf(ch->path, sizeof(ch->path), "%s", cfg->socket_path);
    else
        kb_agent_socket_path(ch->path, sizeof(ch->path));
    ch->connect_ms = cfg != NULL && cfg->connect_timeout_ms != 0
                         ? cfg->connect_timeout_ms
                         : KB_AGENT_CONNECT_TIMEOUT_MS;
    ch->request_ms = cfg != NULL && cfg->request_timeout_ms != 0
                         ? cfg->request_timeout_ms
                         : kb_parse_ms(getenv("KMSBRIDGE_TIMEOUT_MS"));
    if (ch->request_ms == 0)
        ch->request_ms = KB_AGENT_REQUEST_TIMEOUT_MS;
    snprintf(ch->peer_name, sizeof(ch->peer_name), "%s",
             cfg != NULL && cfg->peer_name != NULL ? cfg->peer_name
                                                   : "kmsbridge-c");
    if (pthread_mutex_init(&ch->lock, NULL) != 0) {
        free(ch);
        return NULL;
    }
    ch->pid = getpid();
    pthread_once(&atfork_once, atfork_register);
    pthread_mutex_lock(&registry_lock);
    ch->next_channel = registry;
    registry = ch;
    pthread_mutex_unlock(&registry_lock);
    KB_LOG("agent channel: socket %s, connect timeout %u ms, request timeout "
           "%u ms",
           ch->path, ch->connect_ms, ch->request_ms);
    return &ch->base;
}

const char *kb_agent_channel_socket(const struct kb_channel *base)
{
    return ((const struct agent_channel *)base)->path;
}
