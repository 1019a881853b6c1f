/*
 * Registers the kmsbridge provider and the ENGINE kmsbridge in Node's own
 * OpenSSL, once per process however many threads load the addon, and chooses
 * the channel both use: the N-API bridge to the KeyService worker, or an
 * agent socket.
 */
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/provider.h>

#include "addon.h"
#include "channel.h"
#include "errors.h"

OSSL_provider_init_fn kb_provider_init; /* provider/provider.c */
int kb_engine_register(void);           /* engine/engine.c */

static pthread_once_t once = PTHREAD_ONCE_INIT;
static char registration_error[256];
static char engine_error[256];

static void register_once(void)
{
    /*
     * Loading a provider explicitly turns off OpenSSL's automatic loading of
     * the default one, so load it explicitly too: ordinary keys and every
     * public-key operation stay with it.
     */
    if (OSSL_PROVIDER_add_builtin(NULL, "kmsbridge", kb_provider_init) != 1 ||
        OSSL_PROVIDER_load(NULL, "default") == NULL ||
        OSSL_PROVIDER_load(NULL, "kmsbridge") == NULL) {
        unsigned long e = ERR_get_error();
        snprintf(registration_error, sizeof(registration_error),
                 "could not register the kmsbridge provider: %s",
                 e != 0 ? ERR_reason_error_string(e) : "unknown error");
        ERR_clear_error();
    }
    /*
     * The ENGINE route (privateKeyEngine: 'kmsbridge'): Node finds engines by
     * id in OpenSSL's list. Its key operations take the same channel as the
     * provider's, the override useChannel() installs.
     */
    if (!kb_engine_register()) {
        unsigned long e = ERR_get_error();
        snprintf(engine_error, sizeof(engine_error),
                 "could not add the kmsbridge engine: %s",
                 e != 0 ? ERR_reason_error_string(e) : "unknown error");
        ERR_clear_error();
    }
}

/* registration() -> { provider: boolean, engine: boolean, openssl: string,
 * error?: string, engineError?: string } */
static napi_value registration(napi_env env, napi_callback_info info)
{
    (void)info;
    napi_value result, v;
    napi_create_object(env, &result);
    napi_get_boolean(env, registration_error[0] == '\0', &v);
    napi_set_named_property(env, result, "provider", v);
    napi_get_boolean(env, engine_error[0] == '\0', &v);
    napi_set_named_property(env, result, "engine", v);
    if (engine_error[0] != '\0') {
        napi_create_string_utf8(env, engine_error, NAPI_AUTO_LENGTH, &v);
        napi_set_named_property(env, result, "engineError", v);
    }
    napi_create_string_utf8(env, OpenSSL_version(OPENSSL_VERSION),
                            NAPI_AUTO_LENGTH, &v);
    napi_set_named_property(env, result, "openssl", v);
    if (registration_error[0] != '\0') {
        napi_create_string_utf8(env, registration_error, NAPI_AUTO_LENGTH, &v);
        napi_set_named_property(env, result, "error", v);
    }
    return result;
}

/*
 * useChannel("bridge", timeoutMs) | useChannel("agent", timeoutMs, socketPath)
 * | useChannel("none") Agent channels are kept for the life of the process:
 * another thread may still be inside a call on the previous one.
 */
static napi_value use_channel(napi_env env, napi_callback_info info)
{
    size_t argc = 3;
    napi_value argv[3];
    char kind[16] = "", socket_path[256] = "";
    uint32_t timeout_ms = 0;
    size_t len;

    if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok ||
        argc < 1 ||
        napi_get_value_string_utf8(env, argv[0], kind, sizeof(kind), &len) !=
            napi_ok)
        return addon_throw(env, "ERR_INVALID_ARG",
                           "useChannel(kind, timeoutMs, socketPath?)");
    if (argc >= 2)
        napi_get_value_uint32(env, argv[1], &timeout_ms);
    if (strcmp(kind, "none") == 0) {
        kb_channel_set_override(NULL);
    } else if (strcmp(kind, "bridge") == 0) {
        kb_channel_set_override(bridge_channel(timeout_ms));
    } else if (strcmp(kind, "agent") == 0) {
        if (argc < 3 ||
            napi_get_value_string_utf8(env, argv[2], socket_path,
                                       sizeof(socket_path), &len) != napi_ok ||
            len == 0 || len + 1 >= sizeof(socket_path))
            return addon_throw(
                env, "ERR_INVALID_ARG",
                "useChannel('agent', timeoutMs, socketPath): bad socket path");
        struct kb_agent_config cfg = {socket_path, 0, timeout_ms,
                                      "kmsbridge-node (in-process provider)"};
        struct kb_channel *ch = kb_agent_channel_new(&cfg);
        if (ch == NULL)
            return addon_throw(env, "ERR_NO_MEMORY",
                               "could not create the agent channel");
        kb_channel_set_override(ch);
    } else {
        return addon_throw(env, "ERR_INVALID_ARG",
                           "useChannel: kind must be bridge, agent or none");
    }
    return NULL;
}

/* lastError() -> the KeyService's message for the last kmsbridge error on this
 * thread. */
static napi_value last_error(napi_env env, napi_callback_info info)
{
    (void)info;
    napi_value v;
    napi_create_string_utf8(env, kb_last_error_message(), NAPI_AUTO_LENGTH, &v);
    return v;
}

napi_status register_register(napi_env env, napi_value exports)
{
    pthread_once(&once, register_once);
    const napi_property_descriptor props[] = {
        {"registration", NULL, registration, NULL, NULL, NULL, napi_default,
         NULL},
        {"useChannel", NULL, use_channel, NULL, NULL, NULL, napi_default, NULL},
        {"lastError", NULL, last_error, NULL, NULL, NULL, napi_default, NULL},
    };
    return napi_define_properties(env, exports,
                                  sizeof(props) / sizeof(props[0]), props);
}
