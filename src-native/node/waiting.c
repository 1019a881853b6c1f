/*
 * A readiness set over the agent's connections, so the agent can ask "has
 * any client sent a request I have not read yet?" with one non-blocking
 * epoll_wait. The local backend runs an RSA operation on the event loop when
 * nobody is waiting (cheaper by the pool's two thread hand-offs) and on
 * libuv's pool when someone is (so one agent uses every core). Node reads a
 * socket dry before it emits 'data', so bytes still in a socket are requests
 * that arrived while the agent was busy.
 *
 * JS surface:
 *   waitingSet() -> handle           (an epoll descriptor, closed when
 *                                      the handle is collected)
 *   waitingAdd(handle, fd)           watch a connection (level-triggered);
 *                                      a closed descriptor leaves the set
 *                                      by itself
 *   waitingAny(handle) -> boolean    whether any watched connection has
 *                                      unread bytes (or has hung up)
 */
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "addon.h"

static void set_finalize(napi_env env, void *data, void *hint)
{
    (void)env;
    (void)hint;
    close((int)(intptr_t)data);
}

static int set_fd(napi_env env, napi_value handle)
{
    void *data = NULL;
    if (napi_get_value_external(env, handle, &data) != napi_ok)
        return -1;
    return (int)(intptr_t)data;
}

static napi_value waiting_set(napi_env env, napi_callback_info info)
{
    (void)info;
    int epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0)
        return addon_throw(env, "ERR_WAITING_SET", strerror(errno));
    napi_value handle;
    if (napi_create_external(env, (void *)(intptr_t)epfd, set_finalize, NULL,
                             &handle) != napi_ok) {
        close(epfd);
        return NULL;
    }
    return handle;
}

static napi_value waiting_add(napi_env env, napi_callback_info info)
{
    size_t argc = 2;
    napi_value argv[2];
    int32_t fd = -1;
    int epfd = -1;
    if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok ||
        argc < 2 || (epfd = set_fd(env, argv[0])) < 0 ||
        napi_get_value_int32(env, argv[1], &fd) != napi_ok || fd < 0)
        return addon_throw(env, "ERR_INVALID_ARG",
                           "waitingAdd: expected a waiting set and a socket "
                           "file descriptor");
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
    /* A descriptor number reused after a close is a new file: replace it. */
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) != 0 &&
        (errno != EEXIST || epoll_ctl(epfd, EPOLL_CTL_MOD, fd, &ev) != 0))
        return addon_throw(env, "ERR_WAITING_SET", strerror(errno));
    return NULL;
}

static napi_value waiting_any(napi_env env, napi_callback_info info)
{
    size_t argc = 1;
    napi_value argv[1];
    int epfd = -1;
    if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok ||
        argc < 1 || (epfd = set_fd(env, argv[0])) < 0)
        return addon_throw(env, "ERR_INVALID_ARG",
                           "waitingAny: expected a waiting set");
    struct epoll_event ev;
    int n;
    do
        n = epoll_wait(epfd, &ev, 1, 0);
    while (n < 0 && errno == EINTR);
    napi_value result;
    /* On an error, say "waiting": the pool is the safe choice. */
    napi_get_boolean(env, n != 0, &result);
    return result;
}

napi_status waiting_register(napi_env env, napi_value exports)
{
    const napi_property_descriptor props[] = {
        {"waitingSet", NULL, waiting_set, NULL, NULL, NULL, napi_default, NULL},
        {"waitingAdd", NULL, waiting_add, NULL, NULL, NULL, napi_default, NULL},
        {"waitingAny", NULL, waiting_any, NULL, NULL, NULL, napi_default, NULL},
    };
    return napi_define_properties(env, exports,
                                  sizeof(props) / sizeof(props[0]), props);
}
