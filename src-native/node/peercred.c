/*
 * peerCredentials(fd) -> { pid, uid, gid } of the process at the other end of
 * a Unix socket. Node exposes no SO_PEERCRED, and the agent's access control
 * depends on it.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>

#include "addon.h"

static napi_value peer_credentials(napi_env env, napi_callback_info info)
{
    size_t argc = 1;
    napi_value argv[1];
    int32_t fd = -1;
    if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok ||
        argc < 1 || napi_get_value_int32(env, argv[0], &fd) != napi_ok ||
        fd < 0)
        return addon_throw(
            env, "ERR_INVALID_ARG",
            "peerCredentials: expected a socket file descriptor");

    struct ucred cred;
    socklen_t len = sizeof(cred);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0)
        return addon_throw(env, "ERR_PEERCRED", strerror(errno));

    napi_value result, v;
    napi_create_object(env, &result);
    napi_create_int32(env, (int32_t)cred.pid, &v);
    napi_set_named_property(env, result, "pid", v);
    napi_create_uint32(env, (uint32_t)cred.uid, &v);
    napi_set_named_property(env, result, "uid", v);
    napi_create_uint32(env, (uint32_t)cred.gid, &v);
    napi_set_named_property(env, result, "gid", v);
    return result;
}

napi_status peercred_register(napi_env env, napi_value exports)
{
    napi_value fn;
    napi_status st = napi_create_function(
        env, "peerCredentials", NAPI_AUTO_LENGTH, peer_credentials, NULL, &fn);
    if (st != napi_ok)
        return st;
    return napi_set_named_property(env, exports, "peerCredentials", fn);
}
