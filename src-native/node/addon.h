#ifndef KMSBRIDGE_ADDON_H
#define KMSBRIDGE_ADDON_H

#include <node_api.h>

/* Throws a JS Error with a code property; always returns NULL for `return
 * throw_error(...)`. */
napi_value addon_throw(napi_env env, const char *code, const char *message);

napi_status peercred_register(napi_env env, napi_value exports);
napi_status local_crypto_register(napi_env env, napi_value exports);
napi_status waiting_register(napi_env env, napi_value exports);
napi_status bridge_register(napi_env env, napi_value exports);
napi_status register_register(napi_env env, napi_value exports);
/* A benchmark hook (bench.c): channelPing(count), the bridge's own round trip.
 */
napi_status bench_register(napi_env env, napi_value exports);

struct kb_channel;
/* The process-wide N-API bridge channel; a non-zero timeout replaces its
 * default. */
struct kb_channel *bridge_channel(unsigned timeout_ms);

#endif
