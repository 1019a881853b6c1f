/*
 * The N-API bridge: a channel (common/channel.h) whose KeyService runs in a
 * worker_thread of the same process.
 *
 * Node calls key hooks synchronously on the main thread during a TLS
 * handshake, so the worker, not the main thread, must answer: the worker owns
 * a threadsafe function; a calling thread queues its frame to it and blocks
 * on a condition variable until the reply arrives or its deadline passes.
 * A call from the worker's own thread would wait for itself, so it fails at
 * once. When the worker ends, its threadsafe function is finalized and every
 * pending call fails immediately.
 *
 * Ownership of a request: the caller holds one reference, the worker side one
 * (first the tsfn queue, then the JS handle object, released by its
 * finalizer). One mutex guards all bridge state; each request has its own
 * condition variable on CLOCK_MONOTONIC. While the worker has been answering
 * quickly, a caller looks for its answer for a short while before it sleeps
 * on that variable (spin.h); and while requests have been following its
 * replies closely, the worker's event loop looks for the next one for a
 * short while before it sleeps (a uv_prepare handle, run just before the
 * loop blocks), so that neither thread pays a wake-up per request.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <uv.h>

#include "addon.h"
#include "channel.h"
#include "spin.h"
#include "wire.h"

enum req_state { REQ_PENDING, REQ_DONE, REQ_FAILED };

struct bridge_req {
    struct bridge_req *prev, *next; /* the pending list */
    uint8_t *frame;
    size_t len;
    atomic_uint state; /* enum req_state; set under the lock */
    struct kb_wire_msg *reply;
    struct kb_err err;
    int refs;
    pthread_cond_t cond;
};

struct bridge {
    struct kb_channel base;
    pthread_mutex_t lock;
    napi_threadsafe_function tsfn; /* NULL while no worker is bound */
    pthread_t worker;
    unsigned timeout_ms;
    uint32_t next_id;
    struct kb_spin spin;       /* how long answers take, and whether to poll */
    struct bridge_req pending; /* list head */
    atomic_uint npending;      /* requests on that list, read while polling */
    struct kb_spin gaps;       /* from the worker's reply to the next request */
    long long replied_at;      /* when the worker last answered all, or 0 */
    struct worker_poll *poll;  /* the bound worker's, or NULL */
};

/* The worker's event-loop hook that looks for the next request. */
struct worker_poll {
    uv_prepare_t prepare;
    napi_async_cleanup_hook_handle cleanup;
};

static struct bridge g_bridge;

static void req_release_locked(struct bridge_req *r)
{
    if (--r->refs > 0)
        return;
    pthread_cond_destroy(&r->cond);
    kb_wire_msg_free(r->reply);
    free(r->frame);
    free(r);
}

/* On the pending list; npending counts it for the polling worker. */
static void req_link_locked(struct bridge_req *r)
{
    struct bridge_req *head = &g_bridge.pending;
    r->next = head->next;
    r->prev = head;
    head->next->prev = r;
    head->next = r;
    atomic_fetch_add(&g_bridge.npending, 1);
}

static void req_unlink_locked(struct bridge_req *r)
{
    if (r->prev != NULL) {
        r->prev->next = r->next;
        r->next->prev = r->prev;
        r->prev = r->next = NULL;
        atomic_fetch_sub(&g_bridge.npending, 1);
    }
}

/* Looks for |r|'s answer for up to |spin_ns| before its caller sleeps;
 * b->lock held on entry and return, not while looking (the caller's
 * reference keeps r alive). */
static void poll_for_answer(struct bridge *b, struct bridge_req *r,
                            long long spin_ns)
{
    pthread_mutex_unlock(&b->lock);
    kb_spin_while(&r->state, REQ_PENDING, kb_now_ns() + spin_ns);
    pthread_mutex_lock(&b->lock);
}

/* Settles a pending request; returns 1 if it did (its caller must be woken). */
static int req_settle_locked(struct bridge_req *r, enum req_state state,
                             int code, const char *msg)
{
    if (r->state != REQ_PENDING)
        return 0;
    r->state = state;
    if (state == REQ_FAILED)
        kb_err_set(&r->err, code, "%s", msg);
    req_unlink_locked(r);
    return 1;
}

static void req_finish_locked(struct bridge_req *r, enum req_state state,
                              int code, const char *msg)
{
    if (req_settle_locked(r, state, code, msg))
        pthread_cond_signal(&r->cond);
}

static int bridge_call(struct kb_channel *ch, struct kb_buf *req,
                       unsigned timeout_ms, struct kb_wire_msg **reply,
                       struct kb_err *err)
{
    struct bridge *b = (struct bridge *)ch;
    struct bridge_req *r;
    pthread_condattr_t attr;
    struct timespec deadline;

    *reply = NULL;
    /* A signature the KeyService approved before runs on this thread. */
    if (grants_try(req, reply))
        return 1;
    r = calloc(1, sizeof(*r));
    if (r == NULL || (r->frame = malloc(req->len)) == NULL) {
        free(r);
        kb_err_set(err, KB_ERR_NOMEM, "out of memory");
        return 0;
    }
    memcpy(r->frame, req->data, req->len);
    r->len = req->len;
    r->refs = 2;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&r->cond, &attr);
    pthread_condattr_destroy(&attr);

    pthread_mutex_lock(&b->lock);
    if (b->tsfn == NULL) {
        pthread_mutex_unlock(&b->lock);
        r->refs = 1;
        req_release_locked(r);
        kb_err_set(err, KB_ERR_NO_AGENT,
                   "the kmsbridge KeyService worker is not running: await "
                   "kmsbridge.load() before using kms: keys");
        return 0;
    }
    if (pthread_equal(pthread_self(), b->worker)) {
        pthread_mutex_unlock(&b->lock);
        r->refs = 1;
        req_release_locked(r);
        kb_err_set(
            err, KB_ERR_INVALID,
            "a kms: key was used on the KeyService worker thread itself, which "
            "would wait for itself "
            "forever; use kms: keys from the main thread or other workers");
        return 0;
    }
    kb_frame_set_id(r->frame, ++b->next_id);
    req_link_locked(r);
    if (b->replied_at != 0) {
        kb_spin_record(&b->gaps, kb_now_ns() - b->replied_at);
        b->replied_at = 0;
    }
    long long spin_ns = kb_spin_budget(&b->spin);
    long long queued_at = kb_now_ns();
    if (napi_call_threadsafe_function(b->tsfn, r, napi_tsfn_nonblocking) !=
        napi_ok) {
        req_unlink_locked(r);
        r->refs = 1;
        req_release_locked(r);
        pthread_mutex_unlock(&b->lock);
        kb_err_set(err, KB_ERR_NO_AGENT,
                   "the kmsbridge KeyService worker is shutting down");
        return 0;
    }

    unsigned ms = timeout_ms != 0 ? timeout_ms : b->timeout_ms;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += ms / 1000;
    deadline.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (deadline.tv_nsec >= 1000000000L) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000L;
    }
    if (spin_ns > 0)
        poll_for_answer(b, r, spin_ns);
    while (r->state == REQ_PENDING) {
        if (pthread_cond_timedwait(&r->cond, &b->lock, &deadline) ==
                ETIMEDOUT &&
            r->state == REQ_PENDING) {
            char msg[160];
            snprintf(
                msg, sizeof(msg),
                "the kmsbridge KeyService worker did not answer within %u ms",
                ms);
            req_finish_locked(r, REQ_FAILED, KB_ERR_LOCAL_TIMEOUT, msg);
        }
    }
    int ok = r->state == REQ_DONE;
    if (ok) {
        kb_spin_record(&b->spin, kb_now_ns() - queued_at);
        *reply = r->reply;
        r->reply = NULL;
    } else if (err != NULL) {
        *err = r->err;
    }
    req_release_locked(r);
    pthread_mutex_unlock(&b->lock);
    return ok;
}

static void bridge_destroy(struct kb_channel *ch)
{
    (void)ch; /* process-wide and static */
}

static const struct kb_channel_ops bridge_ops = {"napi-bridge", bridge_call,
                                                 bridge_destroy};

/* ---- the worker side ------------------------------------------------------
 */

/* The JS handle of a request was collected: the worker's reference ends. */
static void handle_finalize(napi_env env, void *data, void *hint)
{
    (void)env;
    (void)hint;
    struct bridge_req *r = data;
    pthread_mutex_lock(&g_bridge.lock);
    req_finish_locked(r, REQ_FAILED, KB_STATUS_INTERNAL,
                      "the KeyService worker dropped the request");
    req_release_locked(r);
    pthread_mutex_unlock(&g_bridge.lock);
}

static void call_js(napi_env env, napi_value js_cb, void *context, void *data)
{
    (void)context;
    struct bridge_req *r = data;
    napi_value argv[2], undefined;

    pthread_mutex_lock(&g_bridge.lock);
    if (env == NULL || r->state != REQ_PENDING) {
        /* torn down, or the caller gave up already */
        req_finish_locked(r, REQ_FAILED, KB_ERR_NO_AGENT,
                          "the kmsbridge KeyService worker ended");
        req_release_locked(r);
        pthread_mutex_unlock(&g_bridge.lock);
        return;
    }
    pthread_mutex_unlock(&g_bridge.lock);
    /* r->frame is immutable once queued: read it without the lock */
    if (napi_create_buffer_copy(env, r->len, r->frame, NULL, &argv[0]) !=
            napi_ok ||
        napi_create_external(env, r, handle_finalize, NULL, &argv[1]) !=
            napi_ok) {
        pthread_mutex_lock(&g_bridge.lock);
        req_finish_locked(r, REQ_FAILED, KB_ERR_NOMEM,
                          "out of memory in the KeyService worker");
        req_release_locked(r);
        pthread_mutex_unlock(&g_bridge.lock);
        return;
    }
    napi_get_undefined(env, &undefined);
    napi_call_function(env, undefined, js_cb, 2, argv, NULL);
}

/* The worker's threadsafe function is gone (unbound or its env torn down). */
static void tsfn_finalize(napi_env env, void *data, void *hint)
{
    (void)env;
    (void)hint;
    struct bridge *b = data;
    grants_clear();
    pthread_mutex_lock(&b->lock);
    b->tsfn = NULL;
    while (b->pending.next != &b->pending)
        req_finish_locked(b->pending.next, REQ_FAILED, KB_ERR_NO_AGENT,
                          "the kmsbridge KeyService worker ended");
    pthread_mutex_unlock(&b->lock);
}

/* How often the worker's loop looked for a request instead of sleeping at
 * once (bridgeStats, for tests and benchmarks). */
static atomic_ulong worker_polls;

unsigned long bridge_worker_polls(void)
{
    return atomic_load_explicit(&worker_polls, memory_order_relaxed);
}

/* Just before the worker's loop blocks: if it answered everything moments
 * ago and requests have been following its replies closely, it looks for the
 * next one for a while (spin.h's policy) instead of sleeping at once. A
 * request found returns at once: its threadsafe function's wake-up is sent
 * with it, so the loop blocks for a moment at most. */
static void worker_poll_before_sleep(uv_prepare_t *handle)
{
    (void)handle;
    struct bridge *b = &g_bridge;
    pthread_mutex_lock(&b->lock);
    long long replied_at = b->replied_at;
    pthread_mutex_unlock(&b->lock);
    if (replied_at == 0 || atomic_load(&b->npending) != 0)
        return;
    long long budget = kb_spin_budget(&b->gaps);
    if (budget <= 0)
        return;
    atomic_fetch_add_explicit(&worker_polls, 1, memory_order_relaxed);
    kb_spin_while(&b->npending, 0, replied_at + budget);
}

static void worker_poll_free(uv_handle_t *handle)
{
    free(handle->data);
}

static void worker_poll_closed(uv_handle_t *handle)
{
    struct worker_poll *wp = handle->data;
    napi_remove_async_cleanup_hook(wp->cleanup);
    free(wp);
}

/* The worker's environment ends: its loop hook is closed on its thread. */
static void worker_poll_cleanup(napi_async_cleanup_hook_handle hook, void *arg)
{
    (void)hook;
    struct worker_poll *wp = arg;
    pthread_mutex_lock(&g_bridge.lock);
    if (g_bridge.poll == wp)
        g_bridge.poll = NULL;
    pthread_mutex_unlock(&g_bridge.lock);
    uv_close((uv_handle_t *)&wp->prepare, worker_poll_closed);
}

/* Hooks the worker's loop; without it the bridge works, only with a wake-up
 * per request. */
static struct worker_poll *worker_poll_start(napi_env env)
{
    uv_loop_t *loop = NULL;
    struct worker_poll *wp = calloc(1, sizeof(*wp));
    if (wp == NULL || napi_get_uv_event_loop(env, &loop) != napi_ok ||
        uv_prepare_init(loop, &wp->prepare) != 0) {
        free(wp);
        return NULL;
    }
    wp->prepare.data = wp;
    if (napi_add_async_cleanup_hook(env, worker_poll_cleanup, wp,
                                    &wp->cleanup) != napi_ok) {
        uv_close((uv_handle_t *)&wp->prepare, worker_poll_free);
        return NULL;
    }
    uv_prepare_start(&wp->prepare, worker_poll_before_sleep);
    uv_unref((uv_handle_t *)&wp->prepare); /* never keeps the worker alive */
    return wp;
}

/* bridgeBind(handler: (frame: Buffer, handle) => void): called on the worker
 * thread. */
static napi_value bridge_bind(napi_env env, napi_callback_info info)
{
    size_t argc = 1;
    napi_value argv[1], name;
    napi_threadsafe_function tsfn;

    if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok ||
        argc < 1)
        return addon_throw(env, "ERR_INVALID_ARG", "bridgeBind(handler)");
    pthread_mutex_lock(&g_bridge.lock);
    int bound = g_bridge.tsfn != NULL;
    pthread_mutex_unlock(&g_bridge.lock);
    if (bound)
        return addon_throw(
            env, "ERR_BRIDGE_BOUND",
            "a KeyService worker is already bound in this process");
    napi_create_string_utf8(env, "kmsbridge.keyservice", NAPI_AUTO_LENGTH,
                            &name);
    if (napi_create_threadsafe_function(env, argv[0], NULL, name, 0, 1,
                                        &g_bridge, tsfn_finalize, NULL, call_js,
                                        &tsfn) != napi_ok)
        return addon_throw(env, "ERR_BRIDGE",
                           "could not create the threadsafe function");
    struct worker_poll *wp = worker_poll_start(env);
    pthread_mutex_lock(&g_bridge.lock);
    g_bridge.tsfn = tsfn;
    g_bridge.worker = pthread_self();
    g_bridge.poll = wp;
    g_bridge.replied_at = 0;
    pthread_mutex_unlock(&g_bridge.lock);
    return NULL;
}

/* bridgeUnbind(): called on the worker thread; pending calls fail at once. */
static napi_value bridge_unbind(napi_env env, napi_callback_info info)
{
    (void)info;
    grants_clear(); /* a closed KeyService signs nothing, here either */
    pthread_mutex_lock(&g_bridge.lock);
    napi_threadsafe_function tsfn = g_bridge.tsfn;
    struct worker_poll *wp = g_bridge.poll;
    g_bridge.poll = NULL;
    g_bridge.replied_at = 0;
    pthread_mutex_unlock(&g_bridge.lock);
    if (wp != NULL)
        uv_prepare_stop(&wp->prepare); /* closed when its env ends */
    if (tsfn != NULL)
        napi_release_threadsafe_function(tsfn, napi_tsfn_abort);
    (void)env;
    return NULL;
}

/* bridgeComplete(handle, reply: Buffer): the worker answers a request. */
static napi_value bridge_complete(napi_env env, napi_callback_info info)
{
    size_t argc = 2;
    napi_value argv[2];
    struct bridge_req *r = NULL;
    void *data = NULL;
    size_t len = 0;
    struct kb_wire_msg *msg = NULL;
    char why[128] = "";

    if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok ||
        argc < 2 ||
        napi_get_value_external(env, argv[0], (void **)&r) != napi_ok ||
        r == NULL || napi_get_buffer_info(env, argv[1], &data, &len) != napi_ok)
        return addon_throw(env, "ERR_INVALID_ARG",
                           "bridgeComplete(handle, reply)");
    int decoded = kb_wire_decode(data, len, &msg, why, sizeof(why));
    int settled = 0;
    pthread_mutex_lock(&g_bridge.lock);
    if (r->state == REQ_PENDING && decoded) {
        r->reply = msg;
        msg = NULL;
        settled = req_settle_locked(r, REQ_DONE, 0, NULL);
    } else if (!decoded) {
        settled = req_settle_locked(r, REQ_FAILED, KB_ERR_PROTOCOL, why);
    }
    if (settled && atomic_load(&g_bridge.npending) == 0)
        g_bridge.replied_at = kb_now_ns();
    pthread_mutex_unlock(&g_bridge.lock);
    /* Woken after unlocking, the caller does not block on the lock at once.
     * r outlives this: the worker's reference ends only in handle_finalize,
     * on this thread. */
    if (settled)
        pthread_cond_signal(&r->cond);
    kb_wire_msg_free(msg);
    return NULL;
}

static void bridge_init_once(void)
{
    pthread_mutex_init(&g_bridge.lock, NULL);
    g_bridge.base.ops = &bridge_ops;
    g_bridge.timeout_ms = 30000;
    g_bridge.pending.next = g_bridge.pending.prev = &g_bridge.pending;
    /* the worker polls only once requests are seen to follow replies closely
     */
    atomic_init(&g_bridge.gaps.average_ns, KB_SPIN_LIMIT_NS);
}

static pthread_once_t bridge_once = PTHREAD_ONCE_INIT;

struct kb_channel *bridge_channel(unsigned timeout_ms)
{
    pthread_once(&bridge_once, bridge_init_once);
    pthread_mutex_lock(&g_bridge.lock);
    if (timeout_ms != 0)
        g_bridge.timeout_ms = timeout_ms;
    pthread_mutex_unlock(&g_bridge.lock);
    return &g_bridge.base;
}

napi_status bridge_register(napi_env env, napi_value exports)
{
    pthread_once(&bridge_once, bridge_init_once);
    const napi_property_descriptor props[] = {
        {"bridgeBind", NULL, bridge_bind, NULL, NULL, NULL, napi_default, NULL},
        {"bridgeUnbind", NULL, bridge_unbind, NULL, NULL, NULL, napi_default,
         NULL},
        {"bridgeComplete", NULL, bridge_complete, NULL, NULL, NULL,
         napi_default, NULL},
    };
    return napi_define_properties(env, exports,
                                  sizeof(props) / sizeof(props[0]), props);
}
