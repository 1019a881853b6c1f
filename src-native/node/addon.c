/*
 * kmsbridge.node: the Node addon. Built by node-gyp against Node's own
 * OpenSSL headers and NOT linked with libcrypto: its OpenSSL symbols bind to
 * the copy inside the node binary (DESIGN.md).
 *
 * The N-API surface stays small: each file registers its own functions.
 */
#include <node_api.h>

#include "addon.h"

static napi_value init(napi_env env, napi_value exports)
{
    if (local_crypto_register(env, exports) != napi_ok)
        return NULL;
    if (serve_register(env, exports) != napi_ok)
        return NULL;
    if (bridge_register(env, exports) != napi_ok)
        return NULL;
    if (grants_register(env, exports) != napi_ok)
        return NULL;
    if (pkcs11_sign_register(env, exports) != napi_ok)
        return NULL;
    if (bench_register(env, exports) !=
        napi_ok) /* channelPing, for npm run bench */
        return NULL;
    /* last: it registers the provider, whose calls may need the bridge */
    if (register_register(env, exports) != napi_ok)
        return NULL;
    return exports;
}

NAPI_MODULE_INIT()
{
    return init(env, exports);
}
