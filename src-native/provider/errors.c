/* Errors raised on the OpenSSL error queue through the core's functions. */
#include "errors.h"
#include "log.h"
#include "provider.h"

#include <stdarg.h>
#include <stdio.h>

static OSSL_FUNC_core_new_error_fn *core_new_error;
static OSSL_FUNC_core_set_error_debug_fn *core_set_error_debug;
static OSSL_FUNC_core_vset_error_fn *core_vset_error;

static const OSSL_ITEM reason_strings[] = {
    {KB_R_NOT_FOUND, "key not found"},
    {KB_R_ACCESS_DENIED, "access denied"},
    {KB_R_UNSUPPORTED, "not supported for this key"},
    {KB_R_BACKEND_UNAVAILABLE, "key manager unavailable"},
    {KB_R_TIMEOUT, "key manager timed out"},
    {KB_R_BAD_REQUEST, "bad request"},
    {KB_R_INTERNAL, "key service internal error"},
    {KB_R_ALREADY_EXISTS, "key already exists"},
    {KB_R_KEY_UNUSABLE, "key unusable"},
    {KB_R_THROTTLED, "key manager throttled the request"},
    {KB_R_BAD_SIGNATURE, "signature does not verify"},
    {KB_R_NO_AGENT, "agent not running"},
    {KB_R_AGENT_IO, "agent connection broken"},
    {KB_R_PROTOCOL, "agent protocol error"},
    {KB_R_AGENT_TIMEOUT, "agent timed out"},
    {KB_R_NOMEM, "out of memory"},
    {KB_R_INVALID_ARGUMENT, "invalid argument"},
    {KB_R_BAD_URI, "malformed key URI"},
    {KB_R_PRIVATE_EXPORT,
     "private key export refused: the private half stays in the key "
     "manager; only the public key can be exported (pkey -pubout)"},
    {KB_R_PRIVATE_IMPORT, "private key import refused"},
    {KB_R_BUFFER_TOO_SMALL, "output buffer too small"},
    {KB_R_BAD_PARAMETER, "bad parameter"},
    {KB_R_NO_PRIVATE_KEY, "not a key held by kmsbridge"},
    {KB_R_NOT_INITIALIZED, "operation not initialized"},
    {0, NULL},
};

const OSSL_ITEM *kb_reason_strings(void)
{
    return reason_strings;
}

void kb_errors_init(const OSSL_DISPATCH *in)
{
    for (; in->function_id != 0; in++) {
        switch (in->function_id) {
        case OSSL_FUNC_CORE_NEW_ERROR:
            core_new_error = OSSL_FUNC_core_new_error(in);
            break;
        case OSSL_FUNC_CORE_SET_ERROR_DEBUG:
            core_set_error_debug = OSSL_FUNC_core_set_error_debug(in);
            break;
        case OSSL_FUNC_CORE_VSET_ERROR:
            core_vset_error = OSSL_FUNC_core_vset_error(in);
            break;
        default:
            break;
        }
    }
}

static void raise_v(const struct kb_prov *prov, const char *file, int line,
                    const char *func, int reason, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    core_vset_error(prov->handle, (uint32_t)reason, fmt, ap);
    va_end(ap);
    (void)file;
    (void)line;
    (void)func;
}

/*
 * The last message raised on this thread. Applications such as Node show only
 * an error's reason string, not its data; the Node addon reads this to say
 * what the KeyService said.
 */
static _Thread_local char last_message[600];

const char *kb_last_error_message(void)
{
    return last_message;
}

void kb_raise_at(const struct kb_prov *prov, const char *file, int line,
                 const char *func, int reason, const char *fmt, ...)
{
    char *msg = last_message;
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(last_message), fmt, ap);
    va_end(ap);
    KB_LOG("error %d: %s", reason, msg);
    if (prov == NULL || core_new_error == NULL || core_vset_error == NULL)
        return;
    core_new_error(prov->handle);
    if (core_set_error_debug != NULL)
        core_set_error_debug(prov->handle, file, line, func);
    raise_v(prov, file, line, func, reason, "kmsbridge: %s", msg);
}
