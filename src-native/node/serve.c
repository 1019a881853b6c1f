/*
 * The agent's connections, served by C threads.
 *
 * Node's socket path (a 'data' event, a stream write, the event loop's
 * wake-ups) cost the agent more CPU per request than an ECDSA signature, and
 * three to four times more when the cores are busy (docs/bench/notes.md).
 * So these threads listen on the agent's socket themselves: they accept,
 * read the peer's credentials (SO_PEERCRED), tell JavaScript of the
 * connection, frame its requests and answer, on their own, only what needs no
 * decision: the HELLO of a peer the agent's policy admits (its owner, or a
 * uid or gid some keyring allows; the reply is the agent's own, given at
 * start), PING, and a SIGN or DESCRIBE that a grant covers for this peer's
 * uid and gid (grants.c: the KeyService approved that exact operation before;
 * each use of a signature grant still checks the key file, and every one
 * writes its audit line). Every other frame, and every frame of a connection
 * not greeted, goes to JavaScript in arrival order; its reply comes back
 * through serveReply(). A process per command (openssl, curl) thus waits for
 * JavaScript only where a decision is made.
 *
 * The threads share one epoll set in which each connection is registered
 * edge-triggered, once: a request costs a wake-up, a read and a send, with
 * no epoll_ctl to rearm. One thread serves a connection at a time; an event
 * that finds it served is left to its thread, which serves it once more
 * (|again|), so no edge is lost between threads. Connections are served in
 * parallel. A connection is not read while maxInFlight of its requests are
 * with JavaScript or more than OUT_LIMIT bytes of its replies are unsent, so
 * a peer that does not read its replies holds nothing but its own
 * connection; since no new edge tells that reading may resume, whoever lifts
 * the limit (a reply, a flush) asks for one (settle_locked). Writable is
 * watched only while replies wait to be sent: a peer reading its replies
 * would otherwise wake a thread each time. Frame bounds are the fuzzed
 * codec's (wire.c).
 *
 * Polling: a peer that sends its next request soon after each reply (a
 * signing loop) would cost a wake-up per request. After answering such a
 * peer, with nothing of its with JavaScript, a thread keeps its connection
 * for a short while and reads it without sleeping (spin.h says when). The
 * registration is disabled meanwhile, so that no other thread is woken for
 * it, and enabled again when the thread gives it up; one thread always stays
 * in epoll_wait for everyone else.
 *
 * Locks: the listening socket's mutex, then the server's (the connection
 * table), then a connection's.
 * A connection is freed only with both held and while no thread serves it;
 * everyone else finds it by id under the server's mutex.
 *
 * JS surface:
 *   serveStart(onEvent, { threads, maxInFlight, hello?, helloVersion? })
 *       -> handle; hello: the agent's reply (id 0) to a HELLO of
 *       helloVersion
 *       onEvent(id, frames, reason, peer): peer { pid, uid, gid }: a new
 *       connection (before any of its frames); frames: a Buffer of one or
 *       more whole request frames, back to back; neither: the connection
 *       has closed (reason says why, undefined for the peer's own close)
 *   serveListen(handle, path, { ownUid, uids, gids } | null)
 *                                              makes the listening socket
 *                                              (umask: the caller's); the
 *                                              policy: whom the threads greet
 *   serveUnlisten(handle)                      no more connections
 *   serveIsGreeted(handle, id) -> boolean      the threads accepted its
 *                                              HELLO: PING and grants are
 *                                              answered here
 *   serveReply(handle, id, frame, end)         end: close once it is sent
 *   serveClose(handle, id)
 *   serveQueued(handle) -> boolean             frames handed to JavaScript
 *                                              that it has not taken yet
 *   serveStop(handle) -> boolean               ends the threads, closes all;
 *                                              false: one is stuck in a
 *                                              library (see server_stop)
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "addon.h"
#include "spin.h"
#include "wire.h"

#define MAX_THREADS 16
#define SLOT_BITS 20 /* an id is a slot and that slot's generation */
#define MAX_SLOTS (1u << SLOT_BITS)
#define WAKE_ID UINT64_MAX
#define LISTEN_ID (UINT64_MAX - 1)
#define ACCEPTS_PER_TURN 16    /* then the connections get a turn */
#define ACCEPT_RETRY_MS 100    /* after running out of descriptors */
#define READ_CHUNK 65536u      /* one read, into the thread's own buffer */
#define KEEP_BUFFER 65536u     /* an idle connection keeps at most this */
#define READS_PER_TURN 16      /* then other connections get a turn */
#define OUT_LIMIT (1u << 20)   /* unsent reply bytes before reading stops */
#define BATCH_LIMIT (1u << 20) /* bytes of frames per event to JavaScript */
#define IDLE_CHECK_MS 1000 /* a thread looks for a stop at least this often */
#define JOIN_LIMIT_S 3     /* then a thread counts as stuck in a library */
/* One ready connection per wake-up: a thread holding a batch would keep the
 * rest waiting behind its own request, for as long as a token takes to
 * answer it (forever, if the token hangs). */
#define EVENTS_PER_WAIT 1
#define HELLO_MAX 256 /* the agent's reply to HELLO: three short fields */

struct conn {
    uint32_t id;
    int fd;
    struct kb_peer peer;
    bool may_greet;  /* the policy admits the peer: a good HELLO is ours */
    bool first_read; /* its first frame has been parsed */
    atomic_bool greeted;
    /* Input: touched only by the thread that serves the connection (or,
     * under mu, by whoever finds it not served). */
    uint8_t *in;
    size_t in_len, in_cap;
    bool unread;          /* the socket may hold bytes not read yet */
    bool peer_shut;       /* the peer shut its side: read on to the end */
    struct kb_spin gaps;  /* from a reply to the peer's next request */
    long long replied_at; /* when this thread last answered it all, or 0 */
    /* The rest: under mu. */
    pthread_mutex_t mu;
    uint8_t *out;
    size_t out_off, out_len, out_cap;
    unsigned in_flight; /* frames with JavaScript, not answered yet */
    bool serving;       /* a thread is serving it */
    bool again;         /* an event or a reply came meanwhile: serve again */
    uint32_t pending;   /* the events that found it served */
    bool watching_out;  /* the registration includes writable */
    bool polled;        /* its registration is disabled while polled */
    bool eof;           /* the peer closed its side */
    bool ending;        /* close once the replies are sent (serveReply end) */
    bool closing;       /* close as soon as nobody serves it */
    const char *broken; /* why it must close; static strings only */
};

/* Who the threads greet without asking JavaScript (serveListen): the
 * agent's owner and the uids and gids some keyring allows. */
struct policy {
    bool set;
    unsigned long own_uid;
    unsigned long *uids, *gids;
    size_t nuids, ngids;
};

struct server {
    int epfd, wakefd;
    pthread_t threads[MAX_THREADS];
    int nthreads;
    atomic_int polling; /* threads polling a connection */
    unsigned max_in_flight;
    atomic_bool stopping;
    bool stopped;
    bool abandoned;     /* a thread never came back (a hung token): keep all */
    atomic_long queued; /* frames given to JavaScript and not yet taken */
    napi_threadsafe_function tsfn;
    /* The listening socket, once serveListen made it (-1 before and after):
     * its readiness is one-shot, so one thread accepts at a time. */
    int listenfd;
    pthread_mutex_t listen_mu; /* the listening socket and its policy */
    struct policy policy;
    atomic_llong accept_retry_at; /* ns; 0: accepting */
    /* The agent's reply to a HELLO of |hello_version| (its id 0), for the
     * peers its policy admits. */
    uint8_t hello[HELLO_MAX];
    size_t hello_len; /* 0: JavaScript answers every HELLO */
    uint32_t hello_version;
    pthread_mutex_t mu;
    struct conn **slots;
    uint16_t *gens;
    size_t nslots;
};

/* What the threadsafe function carries to onEvent. */
struct event {
    uint32_t id;
    uint8_t *frames; /* NULL: the connection closed, or opened */
    size_t len;
    long count; /* frames in |frames| */
    const char *reason;
    bool opened; /* the threads accepted it, for |peer| */
    struct kb_peer peer;
};

/* ---- buffers ------------------------------------------------------------ */

static bool reserve(uint8_t **buf, size_t *cap, size_t need)
{
    if (need <= *cap)
        return true;
    size_t cap2 = *cap ? *cap : 4096;
    while (cap2 < need)
        cap2 *= 2;
    uint8_t *p = realloc(*buf, cap2);
    if (p == NULL)
        return false;
    *buf = p;
    *cap = cap2;
    return true;
}

/* Queues reply bytes; a connection that cannot hold them is broken. */
static void out_append_locked(struct conn *c, const uint8_t *p, size_t n)
{
    if (c->broken != NULL || c->eof)
        return;
    if (c->out_off > 0 && c->out_off == c->out_len)
        c->out_off = c->out_len = 0;
    if (!reserve(&c->out, &c->out_cap, c->out_len + n)) {
        c->broken = "out of memory for replies";
        return;
    }
    memcpy(c->out + c->out_len, p, n);
    c->out_len += n;
}

/* Sends what it can without blocking. A peer that has gone will read no
 * replies: the connection is then at its end, with nothing to report. */
static void flush_locked(struct conn *c)
{
    while (c->out_off < c->out_len) {
        ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off,
                         MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            c->out_off += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        c->eof = true;
        c->out_off = c->out_len;
    }
    if (c->out_off == c->out_len) {
        c->out_off = c->out_len = 0;
        if (c->out_cap > KEEP_BUFFER) {
            free(c->out);
            c->out = NULL;
            c->out_cap = 0;
        }
    }
}

static size_t unsent(const struct conn *c)
{
    return c->out_len - c->out_off;
}

/* The size of the next whole frame in the input, 0 if none is complete
 * yet; SIZE_MAX for a length outside the spec's bounds. */
static size_t next_frame(const struct conn *c)
{
    if (c->in_len < 4)
        return 0;
    size_t size = kb_wire_frame_size(c->in);
    if (size == 0)
        return SIZE_MAX;
    return c->in_len >= size ? size : 0;
}

static bool may_read_locked(const struct server *s, const struct conn *c)
{
    return !c->eof && !c->ending && c->in_flight < s->max_in_flight &&
           unsent(c) <= OUT_LIMIT;
}

static bool must_close_locked(const struct conn *c)
{
    return c->broken != NULL || c->closing || c->eof ||
           (c->ending && unsent(c) == 0);
}

/* ---- events to JavaScript ---------------------------------------------- */

static void emit(struct server *s, struct event *ev)
{
    atomic_fetch_add(&s->queued, ev->count);
    if (napi_call_threadsafe_function(s->tsfn, ev, napi_tsfn_nonblocking) !=
        napi_ok) {
        atomic_fetch_sub(&s->queued, ev->count);
        free(ev->frames);
        free(ev);
    }
}

static void emit_opened(struct server *s, uint32_t id,
                        const struct kb_peer *peer)
{
    struct event *ev = calloc(1, sizeof(*ev));
    if (ev == NULL)
        return;
    ev->id = id;
    ev->opened = true;
    ev->peer = *peer;
    emit(s, ev);
}

static void emit_closed(struct server *s, uint32_t id, const char *reason)
{
    struct event *ev = calloc(1, sizeof(*ev));
    if (ev == NULL)
        return;
    ev->id = id;
    ev->reason = reason;
    emit(s, ev);
}

static void call_js(napi_env env, napi_value cb, void *context, void *data)
{
    struct server *s = context;
    struct event *ev = data;
    atomic_fetch_sub(&s->queued, ev->count);
    if (env != NULL && cb != NULL) {
        napi_value argv[4], undefined, v;
        napi_get_undefined(env, &undefined);
        argv[3] = undefined;
        if (ev->opened && napi_create_object(env, &argv[3]) == napi_ok) {
            napi_create_int64(env, ev->peer.pid, &v);
            napi_set_named_property(env, argv[3], "pid", v);
            napi_create_int64(env, (int64_t)ev->peer.uid, &v);
            napi_set_named_property(env, argv[3], "uid", v);
            napi_create_int64(env, (int64_t)ev->peer.gid, &v);
            napi_set_named_property(env, argv[3], "gid", v);
        }
        napi_create_uint32(env, ev->id, &argv[0]);
        if (ev->frames == NULL ||
            napi_create_buffer_copy(env, ev->len, ev->frames, NULL, &argv[1]) !=
                napi_ok)
            napi_get_null(env, &argv[1]);
        if (ev->reason != NULL)
            napi_create_string_utf8(env, ev->reason, NAPI_AUTO_LENGTH,
                                    &argv[2]);
        else
            argv[2] = undefined;
        napi_call_function(env, undefined, cb, 4, argv, NULL);
    }
    free(ev->frames);
    free(ev);
}

/* ---- the connection table ---------------------------------------------- */

static struct conn *lookup_locked(struct server *s, uint64_t id)
{
    size_t slot = (size_t)(id & (MAX_SLOTS - 1));
    if (id > UINT32_MAX || slot >= s->nslots || s->slots[slot] == NULL ||
        s->slots[slot]->id != (uint32_t)id)
        return NULL;
    return s->slots[slot];
}

/* Takes a connection out of the table and closes it; both locks held, and
 * no thread serves it. The caller frees it after unlocking. */
static void unlink_locked(struct server *s, struct conn *c)
{
    s->slots[c->id & (MAX_SLOTS - 1)] = NULL;
    flush_locked(c); /* the last replies, if the peer still takes them */
    epoll_ctl(s->epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
}

static void conn_free(struct conn *c)
{
    pthread_mutex_destroy(&c->mu);
    free(c->in);
    free(c->out);
    free(c);
}

/* Closes |c| (server and connection locks held, nobody serving it) and
 * tells JavaScript; the locks are released. */
static void close_and_unlock(struct server *s, struct conn *c)
{
    const char *reason = c->broken;
    uint32_t id = c->id;
    unlink_locked(s, c);
    pthread_mutex_unlock(&c->mu);
    pthread_mutex_unlock(&s->mu);
    conn_free(c);
    emit_closed(s, id, reason);
}

#define WATCH (EPOLLIN | EPOLLRDHUP | EPOLLET)

/* After a turn or a reply, with nobody serving |c|: keeps the registration
 * in step. Writable is watched while replies wait to be sent. Work left that
 * no edge will announce (bytes not read or frames not parsed while reading
 * was paused, or a turn that ended before the socket was drained) asks for
 * writable once anyway: a modification re-checks readiness, and writable is
 * true at once, so a thread comes back for it. */
static void settle_locked(struct server *s, struct conn *c)
{
    bool work = may_read_locked(s, c) && (c->unread || next_frame(c) != 0);
    bool out = unsent(c) > 0 || work;
    if (!work && out == c->watching_out && !c->polled)
        return;
    struct epoll_event ev = {.events = WATCH | (out ? EPOLLOUT : 0),
                             .data.u64 = c->id};
    if (epoll_ctl(s->epfd, EPOLL_CTL_MOD, c->fd, &ev) != 0)
        c->broken = "could not watch the connection (epoll_ctl)";
    c->watching_out = out;
    c->polled = false;
}

/* What an event says about input; |c| locked. */
static void note_events_locked(struct conn *c, uint32_t events)
{
    if (events & (EPOLLERR | EPOLLHUP))
        /* Both directions are gone: requests still unread have nobody to
         * answer to. */
        c->eof = true;
    if (events & EPOLLRDHUP)
        c->peer_shut = true;
    if (events & (EPOLLIN | EPOLLRDHUP))
        c->unread = true;
}

/* ---- serving one connection -------------------------------------------- */

struct batch {
    uint8_t *data;
    size_t len, cap;
    long count;
};

static void batch_emit(struct server *s, struct conn *c, struct batch *b)
{
    if (b->count == 0)
        return;
    struct event *ev = calloc(1, sizeof(*ev));
    if (ev == NULL) {
        free(b->data);
    } else {
        ev->id = c->id;
        ev->frames = b->data;
        ev->len = b->len;
        ev->count = b->count;
        emit(s, ev);
    }
    memset(b, 0, sizeof(*b));
}

/* The first frame from a peer the policy admits: if it is a HELLO in the
 * agent's version, answers it as the agent would and lets the threads serve
 * the connection. Anything else (another version, a frame the codec refuses)
 * goes to JavaScript, which answers or refuses it by name. */
static int greet_here(struct server *s, struct conn *c, const uint8_t *frame,
                      size_t len)
{
    struct kb_wire_msg *m = NULL;
    char why[64];
    uint32_t version = 0;
    uint8_t reply[HELLO_MAX];
    int good = s->hello_len > 0 &&
               kb_wire_decode(frame, len, &m, why, sizeof(why)) &&
               m->type == KB_MSG_HELLO &&
               kb_wire_get_u32(m, KB_TAG_VERSION, &version) &&
               version == s->hello_version;
    if (good) {
        memcpy(reply, s->hello, s->hello_len);
        kb_frame_set_id(reply, m->id);
    }
    kb_wire_msg_free(m);
    if (!good)
        return 0;
    atomic_store(&c->greeted, true);
    pthread_mutex_lock(&c->mu);
    out_append_locked(c, reply, s->hello_len);
    pthread_mutex_unlock(&c->mu);
    return 1;
}

/* Answers one frame here if it needs no decision; 1 if it did. */
static int answer_here(struct server *s, struct conn *c, const uint8_t *frame,
                       size_t len)
{
    if (!atomic_load(&c->greeted)) {
        bool first = !c->first_read;
        c->first_read = true;
        return first && c->may_greet && greet_here(s, c, frame, len);
    }
    uint16_t type = (uint16_t)((frame[8] << 8) | frame[9]);
    struct kb_buf out = {0};
    int done = 0;
    if (type == KB_MSG_PING) {
        uint32_t id = ((uint32_t)frame[4] << 24) | ((uint32_t)frame[5] << 16) |
                      ((uint32_t)frame[6] << 8) | frame[7];
        kb_frame_begin(&out, id, KB_MSG_PING | KB_WIRE_REPLY_BIT, KB_STATUS_OK);
        done = kb_frame_end(&out);
    } else if (type == KB_MSG_SIGN || type == KB_MSG_DESCRIBE) {
        done = grants_answer(frame, len, &c->peer, &out);
    }
    if (done) {
        pthread_mutex_lock(&c->mu);
        out_append_locked(c, out.data, out.len);
        pthread_mutex_unlock(&c->mu);
    }
    kb_buf_free(&out);
    return done;
}

/* Handles the whole frames in the input; returns false to stop reading. */
static bool parse(struct server *s, struct conn *c, struct batch *b)
{
    size_t off = 0;
    bool more = true;
    while (more) {
        pthread_mutex_lock(&c->mu);
        more = may_read_locked(s, c) && c->broken == NULL;
        pthread_mutex_unlock(&c->mu);
        if (!more || c->in_len - off < 4)
            break;
        size_t size = kb_wire_frame_size(c->in + off);
        if (size == 0) {
            pthread_mutex_lock(&c->mu);
            c->broken = "frame length outside the protocol's bounds";
            pthread_mutex_unlock(&c->mu);
            more = false;
            break;
        }
        if (c->in_len - off < size)
            break;
        const uint8_t *frame = c->in + off;
        off += size;
        if (answer_here(s, c, frame, size))
            continue;
        if (b->len + size > BATCH_LIMIT)
            batch_emit(s, c, b);
        if (!reserve(&b->data, &b->cap, b->len + size)) {
            pthread_mutex_lock(&c->mu);
            c->broken = "out of memory for requests";
            pthread_mutex_unlock(&c->mu);
            more = false;
            break;
        }
        memcpy(b->data + b->len, frame, size);
        b->len += size;
        b->count++;
        pthread_mutex_lock(&c->mu);
        c->in_flight++;
        pthread_mutex_unlock(&c->mu);
    }
    if (off > 0) { /* c->in may be NULL when nothing was read */
        memmove(c->in, c->in + off, c->in_len - off);
        c->in_len -= off;
    }
    return more;
}

/* Reads what has come and handles the whole frames, as far as |c| may read
 * now. A read shorter than the buffer took what had come: stop there rather
 * than pay a system call to learn EAGAIN, since whatever comes later raises
 * a new edge. Not after the peer has shut its side: its one edge has been
 * seen, and the end must be read now or never. */
static void take_input(struct server *s, struct conn *c, struct batch *b,
                       uint8_t *chunk)
{
    for (int turn = 0; parse(s, c, b) && c->unread && turn < READS_PER_TURN;
         turn++) {
        ssize_t n = read(c->fd, chunk, READ_CHUNK);
        if (n > 0 && reserve(&c->in, &c->in_cap, c->in_len + (size_t)n)) {
            memcpy(c->in + c->in_len, chunk, (size_t)n);
            c->in_len += (size_t)n;
            if ((size_t)n < READ_CHUNK && !c->peer_shut)
                c->unread = false;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            c->unread = false;
            break;
        }
        pthread_mutex_lock(&c->mu);
        if (n == 0)
            c->eof = true;
        else
            c->broken = n > 0 ? "out of memory for requests"
                              : "could not read from the connection";
        pthread_mutex_unlock(&c->mu);
        break;
    }
    if (c->in_len == 0 && c->in_cap > KEEP_BUFFER) {
        free(c->in);
        c->in = NULL;
        c->in_cap = 0;
    }
}

/* After a turn that answered everything |c| sent, and while its peer has
 * been sending its next request soon after each reply: reads it without
 * sleeping for a while. True when bytes came (with |c| locked, as on entry);
 * false to give it up. */
static bool poll_next_request(struct server *s, struct conn *c, uint8_t *chunk)
{
    if (c->in_flight > 0 || unsent(c) > 0 || c->unread || c->again ||
        !may_read_locked(s, c))
        return false;
    long long budget = kb_spin_budget(&c->gaps);
    if (budget == 0)
        return false;
    /* One thread always waits in epoll_wait for the other connections. */
    int polling = atomic_load(&s->polling);
    do {
        if (polling + 1 >= s->nthreads)
            return false;
    } while (!atomic_compare_exchange_weak(&s->polling, &polling, polling + 1));
    if (!c->polled) {
        struct epoll_event off = {.events = 0, .data.u64 = c->id};
        c->polled = epoll_ctl(s->epfd, EPOLL_CTL_MOD, c->fd, &off) == 0;
        c->watching_out = false;
    }
    pthread_mutex_unlock(&c->mu);
    ssize_t n = kb_spin_recv(c->fd, chunk, READ_CHUNK, budget, &s->stopping);
    int error = errno;
    atomic_fetch_sub(&s->polling, 1);
    bool came = n > 0 && reserve(&c->in, &c->in_cap, c->in_len + (size_t)n);
    if (came) {
        memcpy(c->in + c->in_len, chunk, (size_t)n);
        c->in_len += (size_t)n;
        c->unread = (size_t)n == READ_CHUNK || c->peer_shut;
    }
    pthread_mutex_lock(&c->mu);
    if (n == 0)
        c->eof = true;
    else if (n > 0 && !came)
        c->broken = "out of memory for requests";
    else if (n < 0 && error != EAGAIN && error != EWOULDBLOCK && error != EINTR)
        c->broken = "could not read from the connection";
    return came;
}

/* Serves |c| after its event, and again while events or replies come
 * meanwhile; then leaves its registration in step or closes it. |chunk|:
 * the thread's read buffer, so that a connection holds only the bytes of a
 * frame still incomplete. */
static void serve(struct server *s, struct conn *c, uint32_t events,
                  uint8_t *chunk)
{
    pthread_mutex_lock(&c->mu);
    note_events_locked(c, events);
    if (c->replied_at != 0)
        kb_spin_record(&c->gaps, kb_now_ns() - c->replied_at);
    for (;;) {
        pthread_mutex_unlock(&c->mu);
        struct batch b = {0};
        take_input(s, c, &b, chunk);
        batch_emit(s, c, &b);
        pthread_mutex_lock(&c->mu);
        flush_locked(c);
        c->replied_at = c->in_flight == 0 && unsent(c) == 0 ? kb_now_ns() : 0;
        if (must_close_locked(c))
            break;
        if (c->again) {
            c->again = false;
            note_events_locked(c, c->pending);
            c->pending = 0;
            continue;
        }
        if (!poll_next_request(s, c, chunk))
            break;
        kb_spin_record(&c->gaps, kb_now_ns() - c->replied_at);
        c->replied_at = 0;
    }
    if (!must_close_locked(c))
        settle_locked(s, c);
    if (!must_close_locked(c)) {
        c->serving = false;
        pthread_mutex_unlock(&c->mu);
        return;
    }
    /* Still marked as served, so nobody frees it while the locks are taken
     * in their order. */
    pthread_mutex_unlock(&c->mu);
    pthread_mutex_lock(&s->mu);
    pthread_mutex_lock(&c->mu);
    c->serving = false;
    close_and_unlock(s, c);
}

static void accept_turn(struct server *s);
static void accept_resume(struct server *s);

static void *serve_thread(void *arg)
{
    struct server *s = arg;
    struct epoll_event evs[EVENTS_PER_WAIT];
    uint8_t *chunk = malloc(READ_CHUNK);
    if (chunk == NULL)
        return NULL; /* the other threads serve */
    while (!atomic_load(&s->stopping)) {
        int n = epoll_wait(s->epfd, evs, EVENTS_PER_WAIT, IDLE_CHECK_MS);
        if (atomic_load(&s->accept_retry_at) != 0)
            accept_resume(s);
        for (int i = 0; i < n && !atomic_load(&s->stopping); i++) {
            if (evs[i].data.u64 == WAKE_ID)
                continue;
            if (evs[i].data.u64 == LISTEN_ID) {
                accept_turn(s);
                continue;
            }
            pthread_mutex_lock(&s->mu);
            struct conn *c = lookup_locked(s, evs[i].data.u64);
            if (c != NULL) {
                pthread_mutex_lock(&c->mu);
                bool taken = c->serving;
                if (taken) { /* its thread serves it once more */
                    c->again = true;
                    c->pending |= evs[i].events;
                }
                c->serving = true;
                pthread_mutex_unlock(&c->mu);
                if (taken)
                    c = NULL;
            }
            pthread_mutex_unlock(&s->mu);
            if (c != NULL)
                serve(s, c, evs[i].events, chunk);
        }
    }
    free(chunk);
    return NULL;
}

/* ---- lifetime ----------------------------------------------------------- */

/* Joins the threads that come back within JOIN_LIMIT_S; false if one did
 * not (inside a PKCS#11 library that does not return). */
static bool join_threads(struct server *s)
{
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline); /* pthread_timedjoin_np's clock */
    deadline.tv_sec += JOIN_LIMIT_S;
    bool all = true;
    for (int i = 0; i < s->nthreads; i++)
        if (pthread_timedjoin_np(s->threads[i], NULL, &deadline) != 0)
            all = false;
    s->nthreads = 0;
    return all;
}

static void policy_free(struct policy *p)
{
    free(p->uids);
    free(p->gids);
    *p = (struct policy){0};
}

/* Closes the listening socket; false if there was none. */
static bool stop_listening(struct server *s)
{
    pthread_mutex_lock(&s->listen_mu);
    int fd = s->listenfd;
    if (fd >= 0) {
        epoll_ctl(s->epfd, EPOLL_CTL_DEL, fd, NULL);
        close(fd);
        s->listenfd = -1;
    }
    policy_free(&s->policy);
    pthread_mutex_unlock(&s->listen_mu);
    return fd >= 0;
}

/* Joins the threads and closes every connection; |release|: give the
 * threadsafe function back (not at the environment's teardown, where Node
 * closes it itself). False if a thread never came back: then the
 * connections, the threadsafe function and the server stay as they are for
 * it, and the agent leaves without Node's cleanup (exitStuck). */
static bool server_stop(struct server *s, bool release)
{
    if (s->stopped)
        return !s->abandoned;
    s->stopped = true;
    stop_listening(s);
    atomic_store(&s->stopping, true);
    uint64_t one = 1;
    ssize_t w = write(s->wakefd, &one, sizeof(one));
    (void)w; /* the threads also look every IDLE_CHECK_MS */
    if (!join_threads(s)) {
        s->abandoned = true;
        return false;
    }
    pthread_mutex_lock(&s->mu);
    for (size_t i = 0; i < s->nslots; i++) {
        struct conn *c = s->slots[i];
        if (c == NULL)
            continue;
        pthread_mutex_lock(&c->mu);
        unlink_locked(s, c);
        pthread_mutex_unlock(&c->mu);
        conn_free(c);
    }
    pthread_mutex_unlock(&s->mu);
    if (release && s->tsfn != NULL)
        napi_release_threadsafe_function(s->tsfn, napi_tsfn_abort);
    s->tsfn = NULL;
    return true;
}

/* The environment is going away: the threads must not outlive the
 * threadsafe function (registered after it, so this hook runs first). */
static void env_cleanup(void *arg)
{
    server_stop(arg, false);
}

static void server_finalize(napi_env env, void *data, void *hint)
{
    (void)hint;
    struct server *s = data;
    napi_remove_env_cleanup_hook(env, env_cleanup, s);
    if (!server_stop(s, true))
        return; /* a thread may still come back to all of it */
    close(s->epfd);
    close(s->wakefd);
    pthread_mutex_destroy(&s->mu);
    pthread_mutex_destroy(&s->listen_mu);
    free(s->slots);
    free(s->gens);
    free(s);
}

static struct server *get_server(napi_env env, napi_value v)
{
    struct server *s = NULL;
    if (napi_get_value_external(env, v, (void **)&s) != napi_ok)
        return NULL;
    return s;
}

static uint32_t get_opt(napi_env env, napi_value obj, const char *name,
                        uint32_t fallback)
{
    napi_value v;
    uint32_t n;
    if (napi_get_named_property(env, obj, name, &v) != napi_ok ||
        napi_get_value_uint32(env, v, &n) != napi_ok || n == 0)
        return fallback;
    return n;
}

static napi_value serve_start(napi_env env, napi_callback_info info)
{
    size_t argc = 2;
    napi_value argv[2], handle, name;
    napi_valuetype t = napi_undefined;
    if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok ||
        argc < 2 || napi_typeof(env, argv[0], &t) != napi_ok ||
        t != napi_function)
        return addon_throw(env, "ERR_INVALID_ARG",
                           "serveStart(onEvent, { threads, maxInFlight, "
                           "hello?, helloVersion? })");
    struct server *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return addon_throw(env, "ERR_NO_MEMORY", "serveStart: out of memory");
    uint32_t threads = get_opt(env, argv[1], "threads", 2);
    s->max_in_flight = get_opt(env, argv[1], "maxInFlight", 256);
    napi_value hello;
    void *bytes = NULL;
    size_t n = 0;
    if (napi_get_named_property(env, argv[1], "hello", &hello) == napi_ok &&
        napi_get_buffer_info(env, hello, &bytes, &n) == napi_ok &&
        n >= KB_WIRE_HEADER_LEN && n <= HELLO_MAX &&
        (s->hello_version = get_opt(env, argv[1], "helloVersion", 0)) != 0) {
        memcpy(s->hello, bytes, n);
        s->hello_len = n;
    }
    pthread_mutex_init(&s->mu, NULL);
    pthread_mutex_init(&s->listen_mu, NULL);
    s->listenfd = -1;
    s->epfd = epoll_create1(EPOLL_CLOEXEC);
    s->wakefd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    struct epoll_event wake = {.events = EPOLLIN, .data.u64 = WAKE_ID};
    const char *failed = NULL;
    if (s->epfd < 0 || s->wakefd < 0 ||
        epoll_ctl(s->epfd, EPOLL_CTL_ADD, s->wakefd, &wake) != 0)
        failed = strerror(errno);
    else if (napi_create_string_utf8(env, "kmsbridge agent connections",
                                     NAPI_AUTO_LENGTH, &name) != napi_ok ||
             napi_create_threadsafe_function(env, argv[0], NULL, name, 0, 1,
                                             NULL, NULL, s, call_js,
                                             &s->tsfn) != napi_ok)
        failed = "could not create the threadsafe function";
    if (failed == NULL) {
        /* The listening socket keeps the agent alive, not this. */
        napi_unref_threadsafe_function(env, s->tsfn);
        napi_add_env_cleanup_hook(env, env_cleanup, s);
        if (threads > MAX_THREADS)
            threads = MAX_THREADS;
        for (uint32_t i = 0; i < threads; i++) {
            if (pthread_create(&s->threads[i], NULL, serve_thread, s) != 0) {
                failed = "could not start a serving thread";
                break;
            }
            s->nthreads++;
            /* so that top -H, perf and the tests can tell them apart */
            pthread_setname_np(s->threads[i], "kmsbridge-serve");
        }
    }
    if (failed == NULL &&
        napi_create_external(env, s, server_finalize, NULL, &handle) == napi_ok)
        return handle;
    server_stop(s, true);
    napi_remove_env_cleanup_hook(env, env_cleanup, s);
    if (s->epfd >= 0)
        close(s->epfd);
    if (s->wakefd >= 0)
        close(s->wakefd);
    free(s);
    return addon_throw(env, "ERR_SERVE",
                       failed ? failed : "could not create the handle");
}

/* Arguments: handle, then an id (or an fd for adopt). */
static struct server *args(napi_env env, napi_callback_info info, size_t want,
                           napi_value *argv, int64_t *num)
{
    size_t argc = want;
    struct server *s;
    if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok ||
        argc < want || (s = get_server(env, argv[0])) == NULL ||
        napi_get_value_int64(env, argv[1], num) != napi_ok || *num < 0)
        return NULL;
    return s->stopped ? NULL : s;
}

/* The handle, the only argument; NULL if it is not one. */
static struct server *handle_only(napi_env env, napi_callback_info info)
{
    size_t argc = 1;
    napi_value argv[1];
    if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok ||
        argc < 1)
        return NULL;
    return get_server(env, argv[0]);
}

/* Serves |fd| (non-blocking, owned from here on), a connection from |peer|
 * that a thread accepted; tells JavaScript of it before any of its frames
 * can reach it. One that cannot be served is closed. */
static void adopt(struct server *s, int fd, struct kb_peer peer, bool may_greet)
{
    struct conn *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        close(fd);
        return;
    }
    c->fd = fd;
    c->peer = peer;
    c->may_greet = may_greet;
    /* a peer is not polled for until it has shown that it asks quickly */
    atomic_init(&c->gaps.average_ns, KB_SPIN_LIMIT_NS);
    pthread_mutex_init(&c->mu, NULL);
    bool failed = false;
    pthread_mutex_lock(&s->mu);
    size_t slot = 0;
    while (slot < s->nslots && s->slots[slot] != NULL)
        slot++;
    if (slot == s->nslots) {
        size_t n = s->nslots ? s->nslots * 2 : 64;
        struct conn **slots =
            n <= MAX_SLOTS ? realloc(s->slots, n * sizeof(*slots)) : NULL;
        if (slots != NULL)
            s->slots = slots;
        uint16_t *gens = slots ? realloc(s->gens, n * sizeof(*gens)) : NULL;
        if (gens == NULL) {
            failed = true; /* too many connections */
        } else {
            s->gens = gens;
            memset(s->slots + s->nslots, 0,
                   (n - s->nslots) * sizeof(*s->slots));
            memset(s->gens + s->nslots, 0, (n - s->nslots) * sizeof(*gens));
            s->nslots = n;
        }
    }
    if (!failed) {
        s->gens[slot] = (uint16_t)(s->gens[slot] % 0xfff + 1); /* id != 0 */
        c->id = (uint32_t)slot | ((uint32_t)s->gens[slot] << SLOT_BITS);
        struct epoll_event ev = {.events = WATCH, .data.u64 = c->id};
        emit_opened(s, c->id, &peer);
        s->slots[slot] = c;
        if (epoll_ctl(s->epfd, EPOLL_CTL_ADD, c->fd, &ev) != 0) {
            failed = true;
            s->slots[slot] = NULL;
            emit_closed(s, c->id, "could not serve the connection");
        }
    }
    /* From here a serving thread may close and free |c| at any time. */
    pthread_mutex_unlock(&s->mu);
    if (failed) {
        close(c->fd);
        conn_free(c);
    }
}

/* ---- listening ------------------------------------------------------- */

static bool listed(const unsigned long *v, size_t n, unsigned long x)
{
    for (size_t i = 0; i < n; i++)
        if (v[i] == x)
            return true;
    return false;
}

/* Whether the agent would let |peer| connect; listen_mu held. */
static bool approved(const struct policy *p, const struct kb_peer *peer)
{
    return p->set &&
           (peer->uid == p->own_uid || listed(p->uids, p->nuids, peer->uid) ||
            listed(p->gids, p->ngids, peer->gid));
}

static void rearm_listen_locked(struct server *s)
{
    struct epoll_event ev = {.events = EPOLLIN | EPOLLONESHOT,
                             .data.u64 = LISTEN_ID};
    if (s->listenfd >= 0)
        epoll_ctl(s->epfd, EPOLL_CTL_MOD, s->listenfd, &ev);
}

/* Accepts the connections waiting (a few per turn), each with the
 * credentials the kernel recorded when the peer connected, and tells
 * JavaScript of it before any of its frames. The registration is one-shot:
 * one thread accepts at a time, and rearms it. Out of descriptors, accepting
 * pauses for ACCEPT_RETRY_MS instead of spinning on the ready socket. */
static void accept_turn(struct server *s)
{
    pthread_mutex_lock(&s->listen_mu);
    bool pause = false;
    for (int i = 0; i < ACCEPTS_PER_TURN && s->listenfd >= 0; i++) {
        int fd = accept4(s->listenfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            pause = errno == EMFILE || errno == ENFILE || errno == ENOBUFS ||
                    errno == ENOMEM;
            break; /* EAGAIN: none left */
        }
        struct ucred cred;
        socklen_t len = sizeof(cred);
        if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
            close(fd); /* whom it serves is unknown: not at all */
            continue;
        }
        struct kb_peer peer = {(long)cred.pid, (unsigned long)cred.uid,
                               (unsigned long)cred.gid};
        adopt(s, fd, peer, approved(&s->policy, &peer));
    }
    if (pause)
        atomic_store(&s->accept_retry_at,
                     kb_now_ns() + ACCEPT_RETRY_MS * 1000000LL);
    else
        rearm_listen_locked(s);
    pthread_mutex_unlock(&s->listen_mu);
}

static void accept_resume(struct server *s)
{
    long long at = atomic_load(&s->accept_retry_at);
    if (at == 0 || kb_now_ns() < at ||
        !atomic_compare_exchange_strong(&s->accept_retry_at, &at, 0))
        return;
    pthread_mutex_lock(&s->listen_mu);
    rearm_listen_locked(s);
    pthread_mutex_unlock(&s->listen_mu);
}

/* Reads the numbers of array |name| of |obj| into |*out| (NULL when
 * empty). */
static bool get_ids(napi_env env, napi_value obj, const char *name,
                    unsigned long **out, size_t *n)
{
    napi_value arr, v;
    uint32_t len = 0;
    bool is_array = false;
    if (napi_get_named_property(env, obj, name, &arr) != napi_ok ||
        napi_is_array(env, arr, &is_array) != napi_ok || !is_array ||
        napi_get_array_length(env, arr, &len) != napi_ok)
        return false;
    *n = 0;
    *out = len > 0 ? calloc(len, sizeof(**out)) : NULL;
    if (len > 0 && *out == NULL)
        return false;
    for (uint32_t i = 0; i < len; i++) {
        int64_t id;
        if (napi_get_element(env, arr, i, &v) != napi_ok ||
            napi_get_value_int64(env, v, &id) != napi_ok || id < 0)
            return false;
        (*out)[(*n)++] = (unsigned long)id;
    }
    return true;
}

/* serveListen(handle, path, { ownUid, uids, gids } | null): makes the
 * listening socket at |path| (the caller chose the umask and checked the
 * directory), and from then on the threads accept. */
static napi_value serve_listen(napi_env env, napi_callback_info info)
{
    size_t argc = 3;
    napi_value argv[3];
    napi_valuetype t = napi_undefined;
    struct server *s = NULL;
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    size_t len = 0;
    struct policy p = {0};
    int64_t own = 0;
    if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok ||
        argc < 3 || (s = get_server(env, argv[0])) == NULL || s->stopped ||
        napi_get_value_string_utf8(env, argv[1], addr.sun_path,
                                   sizeof(addr.sun_path), &len) != napi_ok ||
        napi_typeof(env, argv[2], &t) != napi_ok)
        return addon_throw(env, "ERR_INVALID_ARG",
                           "serveListen(handle, path, { ownUid, uids, gids } "
                           "| null) on a running server");
    if (len >= sizeof(addr.sun_path) - 1)
        return addon_throw(env, "ENAMETOOLONG",
                           "the agent socket path is too long for a Unix "
                           "socket (at most 107 bytes)");
    if (t == napi_object) {
        napi_value v;
        if (napi_get_named_property(env, argv[2], "ownUid", &v) != napi_ok ||
            napi_get_value_int64(env, v, &own) != napi_ok || own < 0 ||
            !get_ids(env, argv[2], "uids", &p.uids, &p.nuids) ||
            !get_ids(env, argv[2], "gids", &p.gids, &p.ngids)) {
            policy_free(&p);
            return addon_throw(env, "ERR_INVALID_ARG",
                               "serveListen: policy { ownUid, uids, gids }");
        }
        p.set = true;
        p.own_uid = (unsigned long)own;
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    struct epoll_event ev = {.events = EPOLLIN | EPOLLONESHOT,
                             .data.u64 = LISTEN_ID};
    if (fd < 0 || bind(fd, (struct sockaddr *)&addr, sizeof(addr)) != 0 ||
        listen(fd, SOMAXCONN) != 0) {
        int error = errno;
        if (fd >= 0)
            close(fd);
        policy_free(&p);
        const char *code = strerrorname_np(error);
        return addon_throw(env, code != NULL ? code : "ERR_SERVE",
                           strerror(error));
    }
    pthread_mutex_lock(&s->listen_mu);
    bool twice = s->listenfd >= 0;
    if (!twice) {
        s->listenfd = fd;
        s->policy = p;
    }
    pthread_mutex_unlock(&s->listen_mu);
    if (twice) {
        close(fd);
        policy_free(&p);
        return addon_throw(env, "ERR_SERVE", "serveListen: already listening");
    }
    /* Listening keeps the agent's process alive, as a server does. */
    napi_ref_threadsafe_function(env, s->tsfn);
    if (epoll_ctl(s->epfd, EPOLL_CTL_ADD, fd, &ev) != 0) {
        int error = errno;
        stop_listening(s);
        napi_unref_threadsafe_function(env, s->tsfn);
        return addon_throw(env, "ERR_SERVE", strerror(error));
    }
    return NULL;
}

/* serveUnlisten(handle): no more connections (the socket file stays for
 * the caller to remove). Those accepted stay served. */
static napi_value serve_unlisten(napi_env env, napi_callback_info info)
{
    struct server *s = handle_only(env, info);
    if (s == NULL)
        return addon_throw(env, "ERR_INVALID_ARG", "serveUnlisten(handle)");
    if (stop_listening(s) && s->tsfn != NULL)
        napi_unref_threadsafe_function(env, s->tsfn);
    return NULL;
}

/* Whether the threads accepted the connection's HELLO (greet_here). */
static napi_value serve_is_greeted(napi_env env, napi_callback_info info)
{
    napi_value argv[2], result;
    int64_t id;
    struct server *s = args(env, info, 2, argv, &id);
    if (s == NULL)
        return NULL;
    pthread_mutex_lock(&s->mu);
    struct conn *c = lookup_locked(s, (uint64_t)id);
    bool greeted = c != NULL && atomic_load(&c->greeted);
    pthread_mutex_unlock(&s->mu);
    napi_get_boolean(env, greeted, &result);
    return result;
}

/* Queues a reply (or, with no frame, only asks to close) and sends what it
 * can now when no thread serves the connection. Returns whether the
 * connection was still there. */
static bool reply(struct server *s, uint64_t id, const uint8_t *frame,
                  size_t len, bool end, bool close_now)
{
    pthread_mutex_lock(&s->mu);
    struct conn *c = lookup_locked(s, id);
    if (c == NULL) {
        pthread_mutex_unlock(&s->mu);
        return false;
    }
    pthread_mutex_lock(&c->mu);
    if (frame != NULL) {
        out_append_locked(c, frame, len);
        if (c->in_flight > 0)
            c->in_flight--;
    }
    c->ending = c->ending || end;
    c->closing = c->closing || close_now;
    if (c->serving) {
        /* Its thread sends, and reads on if it may now. */
        c->again = true;
        pthread_mutex_unlock(&c->mu);
        pthread_mutex_unlock(&s->mu);
        return true;
    }
    flush_locked(c);
    if (!must_close_locked(c))
        settle_locked(s, c);
    if (must_close_locked(c)) {
        close_and_unlock(s, c);
        return true;
    }
    pthread_mutex_unlock(&c->mu);
    pthread_mutex_unlock(&s->mu);
    return true;
}

static napi_value serve_reply(napi_env env, napi_callback_info info)
{
    napi_value argv[4], result;
    int64_t id;
    void *frame = NULL;
    size_t len = 0;
    bool end = false;
    struct server *s = args(env, info, 4, argv, &id);
    if (s == NULL ||
        napi_get_buffer_info(env, argv[2], &frame, &len) != napi_ok ||
        napi_get_value_bool(env, argv[3], &end) != napi_ok)
        return addon_throw(env, "ERR_INVALID_ARG",
                           "serveReply(handle, id, frame, end)");
    napi_get_boolean(env, reply(s, (uint64_t)id, frame, len, end, false),
                     &result);
    return result;
}

static napi_value serve_close(napi_env env, napi_callback_info info)
{
    napi_value argv[2];
    int64_t id;
    struct server *s = args(env, info, 2, argv, &id);
    if (s != NULL)
        reply(s, (uint64_t)id, NULL, 0, false, true);
    return NULL;
}

static napi_value serve_queued(napi_env env, napi_callback_info info)
{
    napi_value result;
    struct server *s = handle_only(env, info);
    if (s == NULL)
        return addon_throw(env, "ERR_INVALID_ARG", "serveQueued(handle)");
    napi_get_boolean(env, atomic_load(&s->queued) > 0, &result);
    return result;
}

static napi_value serve_stop(napi_env env, napi_callback_info info)
{
    struct server *s = handle_only(env, info);
    if (s == NULL)
        return addon_throw(env, "ERR_INVALID_ARG", "serveStop(handle)");
    napi_value joined;
    napi_get_boolean(env, server_stop(s, true), &joined);
    return joined;
}

napi_status serve_register(napi_env env, napi_value exports)
{
    const napi_property_descriptor props[] = {
        {"serveStart", NULL, serve_start, NULL, NULL, NULL, napi_default, NULL},
        {"serveIsGreeted", NULL, serve_is_greeted, NULL, NULL, NULL,
         napi_default, NULL},
        {"serveListen", NULL, serve_listen, NULL, NULL, NULL, napi_default,
         NULL},
        {"serveUnlisten", NULL, serve_unlisten, NULL, NULL, NULL, napi_default,
         NULL},
        {"serveReply", NULL, serve_reply, NULL, NULL, NULL, napi_default, NULL},
        {"serveClose", NULL, serve_close, NULL, NULL, NULL, napi_default, NULL},
        {"serveQueued", NULL, serve_queued, NULL, NULL, NULL, napi_default,
         NULL},
        {"serveStop", NULL, serve_stop, NULL, NULL, NULL, napi_default, NULL},
    };
    return napi_define_properties(env, exports,
                                  sizeof(props) / sizeof(props[0]), props);
}
