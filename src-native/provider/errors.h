/*
 * The provider's reason codes. Codes 1..11 mirror the wire status codes so
 * an error reply maps to its reason directly; the rest are local.
 */
#ifndef KMSBRIDGE_ERRORS_H
#define KMSBRIDGE_ERRORS_H

#include <openssl/core.h>
#include <openssl/core_dispatch.h>

#include "channel.h"

struct kb_prov;

enum kb_reason {
    KB_R_NOT_FOUND = 1,
    KB_R_ACCESS_DENIED = 2,
    KB_R_UNSUPPORTED = 3,
    KB_R_BACKEND_UNAVAILABLE = 4,
    KB_R_TIMEOUT = 5,
    KB_R_BAD_REQUEST = 6,
    KB_R_INTERNAL = 7,
    KB_R_ALREADY_EXISTS = 8,
    KB_R_KEY_UNUSABLE = 9,
    KB_R_THROTTLED = 10,
    KB_R_BAD_SIGNATURE = 11,
    KB_R_NO_AGENT = 100,
    KB_R_AGENT_IO = 101,
    KB_R_PROTOCOL = 102,
    KB_R_AGENT_TIMEOUT = 103,
    KB_R_NOMEM = 104,
    KB_R_INVALID_ARGUMENT = 105,
    KB_R_BAD_URI = 110,
    KB_R_PRIVATE_EXPORT = 111,
    KB_R_PRIVATE_IMPORT = 112,
    KB_R_BUFFER_TOO_SMALL = 113,
    KB_R_BAD_PARAMETER = 114,
    KB_R_NO_PRIVATE_KEY = 115,
    KB_R_NOT_INITIALIZED = 116,
};

/* Takes the core's error functions from the provider's |in| dispatch. */
void kb_errors_init(const OSSL_DISPATCH *in);
const OSSL_ITEM *kb_reason_strings(void);

void kb_raise_at(const struct kb_prov *prov, const char *file, int line,
                 const char *func, int reason, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));

/* Raises |reason| with a printf message, prefixed "kmsbridge: ". */
/* The text of the last error raised on the calling thread ("" if none). */
const char *kb_last_error_message(void);

#define kb_raise(prov, reason, ...)                                            \
    kb_raise_at((prov), __FILE__, __LINE__, __func__, (reason), __VA_ARGS__)

/* Raises a channel/KeyService error with its own message. */
#define kb_raise_err(prov, e)                                                  \
    kb_raise_at((prov), __FILE__, __LINE__, __func__, (e)->code, "%s", (e)->msg)

#endif
